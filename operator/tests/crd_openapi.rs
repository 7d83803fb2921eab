//! The CRD's OpenAPI validation (types, enums, ranges, lengths, patterns, unknown fields),
//! checked offline, table-driven: each case with a spec that passes and one that fails.

mod common;

use common::openapi::violations;
use kube::CustomResourceExt;
use serde_json::Value;
use switchboard_operator::api::SignalingCluster;

fn check(spec_yaml: &str) -> Vec<String> {
    let crd = SignalingCluster::crd();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json");
    let manifest = format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata: {{name: demo}}\nspec:\n{spec_yaml}"
    );
    let obj: Value = serde_yaml::from_str(&manifest).expect("yaml");
    violations(&schema, &obj)
}

/// (what, passing spec, failing spec, fragment of the failure)
const CASES: &[(&str, &str, &str, &str)] = &[
    ("replicas range", "  replicas: 0\n", "  replicas: -1\n", ".spec.replicas: -1 is below"),
    ("replicas type", "  replicas: 3\n", "  replicas: three\n", "expected integer"),
    ("STUN URL pattern", "  ice: {stunUrls: ['stuns:s.example.com:5349']}\n", "  ice: {stunUrls: ['turn:s.example.com']}\n", "does not match"),
    ("TURN URL count", "  ice: {turnUrls: ['turn:a']}\n", "  ice: {turnUrls: [turn:1,turn:2,turn:3,turn:4,turn:5,turn:6,turn:7,turn:8,turn:9,turn:10,turn:11,turn:12,turn:13,turn:14,turn:15,turn:16,turn:17]}\n", "more than 16 items"),
    ("credential TTL range", "  ice: {credentialTtlSeconds: 60}\n", "  ice: {credentialTtlSeconds: 59}\n", "below the minimum"),
    ("ICE transport policy enum", "  ice: {iceTransportPolicy: all}\n", "  ice: {iceTransportPolicy: turn-only}\n", "is not one of"),
    ("bundle policy enum", "  ice: {bundlePolicy: max-compat}\n", "  ice: {bundlePolicy: max}\n", "is not one of"),
    ("rtcp mux enum", "  ice: {rtcpMuxPolicy: negotiate}\n", "  ice: {rtcpMuxPolicy: off}\n", "is not one of"),
    ("JWT algorithm enum", "  auth: {algorithm: HS256}\n", "  auth: {algorithm: HS512}\n", "is not one of"),
    ("image pull policy enum", "  imagePullPolicy: Never\n", "  imagePullPolicy: Sometimes\n", "is not one of"),
    ("service type enum", "  service: {type: LoadBalancer}\n", "  service: {type: ExternalName}\n", "is not one of"),
    ("service port range", "  service: {port: 65535}\n", "  service: {port: 70000}\n", "above the maximum"),
    ("max participants range", "  rooms: {maxParticipants: 1}\n", "  rooms: {maxParticipants: 0}\n", "below the minimum"),
    ("presence TTL range", "  rooms: {presenceTtlSeconds: 3600}\n", "  rooms: {presenceTtlSeconds: 2}\n", "below the minimum"),
    ("target CPU range", "  autoscaling: {targetCPUUtilizationPercentage: 100}\n", "  autoscaling: {targetCPUUtilizationPercentage: 101}\n", "above the maximum"),
    ("ingress host pattern", "  ingress: {host: rtc.example.com}\n", "  ingress: {host: 'https://rtc.example.com/'}\n", "does not match"),
    ("redis key prefix pattern", "  redis: {keyPrefix: 'team-a:prod'}\n", "  redis: {keyPrefix: '{room}'}\n", "does not match"),
    ("persistence size quantity", "  redis: {managed: {persistence: {size: 10Gi}}}\n", "  redis: {managed: {persistence: {size: ten}}}\n", "does not match"),
    ("secret ref needs a name", "  auth: {secretRef: {name: k}}\n", "  auth: {secretRef: {key: k}}\n", "missing required field \"name\""),
    ("PDB int-or-string", "  podDisruptionBudget: {maxUnavailable: '10%'}\n", "  podDisruptionBudget: {maxUnavailable: [1]}\n", "integer or a string"),
    ("allowed origin pattern", "  allowedOrigins: ['https://app.example.com', 'http://localhost:3000', '*']\n", "  allowedOrigins: ['app.example.com']\n", "does not match"),
    ("unknown field (typo)", "  allowedOrigins: ['https://a.example']\n", "  allowedOrigin: ['https://a.example']\n", ".spec.allowedOrigin: unknown field"),
];

#[test]
fn each_schema_rule_passes_a_good_spec_and_refuses_a_bad_one() {
    for (what, good, bad, fragment) in CASES {
        assert_eq!(
            check(good),
            Vec::<String>::new(),
            "{what}: good spec refused"
        );
        let found = check(bad);
        assert_eq!(found.len(), 1, "{what}: {found:?}");
        assert!(found[0].contains(fragment), "{what}: {found:?}");
    }
}

#[test]
fn bare_spec_is_valid() {
    assert_eq!(check("  {}\n"), Vec::<String>::new());
}

//! The CRD's CEL `x-kubernetes-validations`, evaluated offline with kube's `cel` feature the way
//! the API server does (schema defaults applied first): each rule with a resource that passes
//! and one that fails with the rule's message. Also: every rule compiles, uses only CRD scope
//! variables and stays inside the API server's cost budget.

use kube::core::cel::{
    analyze_rule, compile_schema, CompiledSchema, ScopeContext, ValidationErrors, Validator,
    WarningKind,
};
use kube::CustomResourceExt;
use serde_json::Value;
use switchboard_operator::api::SignalingCluster;

fn schema() -> Value {
    let crd = SignalingCluster::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

/// Validates a manifest whose `spec` is `spec_yaml` (indented by two spaces).
fn validate(spec_yaml: &str) -> Result<(), ValidationErrors> {
    let manifest = format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata:\n  name: demo\n  namespace: x\nspec:\n{spec_yaml}"
    );
    let obj: Value = serde_yaml::from_str(&manifest).expect("test manifest is YAML");
    Validator::new().validate(&schema(), &obj, None)
}

fn messages(spec_yaml: &str) -> Vec<String> {
    match validate(spec_yaml) {
        Ok(()) => vec![],
        Err(e) => e.as_slice().iter().map(|e| e.message.clone()).collect(),
    }
}

/// (rule description, passing spec, failing spec, message of the failure)
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "exactly one of managed/external (both)",
        "  redis: {managed: {}}\n",
        "  redis: {managed: {}, external: {secretRef: {name: r}}}\n",
        "redis: set exactly one of redis.managed and redis.external",
    ),
    (
        "exactly one of managed/external (neither)",
        "  redis: {external: {secretRef: {name: r}}}\n",
        "  redis: {keyPrefix: x}\n",
        "redis: set exactly one of redis.managed and redis.external",
    ),
    (
        "external redis needs a secretRef",
        "  redis: {external: {secretRef: {name: redis-url}}}\n",
        "  redis: {external: {}}\n",
        "redis.external.secretRef is required: name the Secret (and key, default \"url\") holding the redis:// or rediss:// URL",
    ),
    (
        "TURN URLs start with turn: or turns:",
        "  ice: {turnUrls: ['turn:t.example.com:3478', 'turns:t.example.com:5349']}\n",
        "  ice: {turnUrls: ['turn:t.example.com:3478', 'stun:t.example.com:3478']}\n",
        "ice.turnUrls: every TURN URL must start with turn: or turns: (e.g. turns:turn.example.com:5349)",
    ),
    (
        "turnSecretRef needs turnUrls",
        "  ice: {turnUrls: ['turn:t:3478'], turnSecretRef: {name: coturn}}\n",
        "  ice: {turnSecretRef: {name: coturn}}\n",
        "ice.turnSecretRef is set but ice.turnUrls is empty: add the TURN server URLs",
    ),
    (
        "relay needs TURN URLs",
        "  ice: {iceTransportPolicy: relay, turnUrls: ['turns:t.example.com:5349']}\n",
        "  ice: {iceTransportPolicy: relay}\n",
        "ice.iceTransportPolicy relay needs ice.turnUrls: with relay only, clients can connect only through TURN",
    ),
    (
        "RS256 needs a secretRef",
        "  auth: {algorithm: RS256, secretRef: {name: jwt-public-key}}\n",
        "  auth: {algorithm: RS256}\n",
        "auth.secretRef is required for RS256/ES256: name the Secret holding the PEM public key (key default \"public.pem\")",
    ),
    (
        "ES256 needs a secretRef",
        "  auth: {algorithm: ES256, secretRef: {name: jwt-public-key, key: key.pem}}\n",
        "  auth: {algorithm: ES256, issuer: https://issuer}\n",
        "auth.secretRef is required for RS256/ES256: name the Secret holding the PEM public key (key default \"public.pem\")",
    ),
    (
        "autoscaling min <= max",
        "  autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 3}\n",
        "  autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 3}\n",
        "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
    ),
    (
        "autoscaling min <= max against the default max (10)",
        "  autoscaling: {minReplicas: 10}\n",
        "  autoscaling: {minReplicas: 11}\n",
        "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas",
    ),
    (
        "pdb minAvailable xor maxUnavailable",
        "  podDisruptionBudget: {enabled: true, maxUnavailable: '25%'}\n",
        "  podDisruptionBudget: {enabled: true, minAvailable: 1, maxUnavailable: 1}\n",
        "podDisruptionBudget: set only one of minAvailable and maxUnavailable",
    ),
    (
        "resume.secretRef needs resume on",
        "  resume: {graceSeconds: 10, secretRef: {name: resume-key}}\n",
        "  resume: {graceSeconds: 0, secretRef: {name: resume-key}}\n",
        "resume.secretRef is set but resume.graceSeconds is 0 (resume off): remove resume.secretRef or set resume.graceSeconds above 0",
    ),
    (
        "resume.secretRef with the default grace",
        "  resume: {secretRef: {name: resume-key}}\n",
        "  resume: {graceSeconds: 0, inboxMessages: 10, secretRef: {name: resume-key, key: k}}\n",
        "resume.secretRef is set but resume.graceSeconds is 0 (resume off): remove resume.secretRef or set resume.graceSeconds above 0",
    ),
    (
        "ingress needs a host",
        "  ingress: {enabled: true, host: rtc.example.com}\n",
        "  ingress: {enabled: true, className: nginx}\n",
        "ingress.host is required when ingress.enabled is true",
    ),
];

#[test]
fn each_rule_passes_a_good_resource_and_refuses_a_bad_one_with_its_message() {
    for (what, good, bad, message) in CASES {
        assert_eq!(
            messages(good),
            Vec::<String>::new(),
            "{what}: good spec refused"
        );
        assert_eq!(
            messages(bad),
            vec![(*message).to_owned()],
            "{what}: bad spec"
        );
    }
}

#[test]
fn bare_spec_passes_thanks_to_the_defaults() {
    assert_eq!(messages("  {}\n"), Vec::<String>::new());
}

#[test]
fn several_violations_are_all_reported() {
    let m = messages(
        "  redis: {external: {}}\n  auth: {algorithm: ES256}\n  ingress: {enabled: true}\n",
    );
    assert_eq!(m.len(), 3, "{m:?}");
}

#[test]
fn typed_validation_agrees_with_the_raw_one() {
    let good: SignalingCluster = serde_yaml::from_str(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata: {name: a}\nspec: {}\n",
    )
    .unwrap();
    assert!(good.validate_cel().is_ok());
    let mut bad = good.clone();
    bad.spec.autoscaling.min_replicas = 20;
    let err = bad.validate_cel().unwrap_err();
    assert_eq!(
        err.as_slice()[0].message,
        "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"
    );
}

fn walk<'a>(node: &'a CompiledSchema, path: String, out: &mut Vec<(String, &'a CompiledSchema)>) {
    out.push((path.clone(), node));
    for (k, child) in &node.properties {
        walk(child, format!("{path}.{k}"), out);
    }
    if let Some(items) = &node.items {
        walk(items, format!("{path}[]"), out);
    }
    if let Some(ap) = &node.additional_properties {
        walk(ap, format!("{path}{{}}"), out);
    }
}

#[test]
fn every_rule_compiles_is_in_scope_and_within_the_cost_budget() {
    let compiled = compile_schema(&schema());
    let mut nodes = Vec::new();
    walk(&compiled, String::new(), &mut nodes);
    let mut rules = 0;
    for (path, node) in nodes {
        assert!(
            !node.has_errors(),
            "{path}: {:?}",
            node.compilation_errors()
        );
        for v in node.validations.iter().flatten() {
            rules += 1;
            let rule = &v.rule.rule;
            let warnings: Vec<_> = analyze_rule(rule, node, ScopeContext::CrdValidation)
                .into_iter()
                // kube-cel 0.8's scope check does not know comprehension variables
                // (`list.all(u, ...)` binds `u`): drop exactly those false positives.
                .filter(|w| {
                    let bound = w
                        .message
                        .strip_prefix("variable '")
                        .and_then(|rest| rest.split('\'').next())
                        .is_some_and(|var| rule.contains(&format!("({var},")));
                    !(w.kind == WarningKind::WrongScope && bound)
                })
                .collect();
            assert!(warnings.is_empty(), "{path}: {rule}: {warnings:?}");
            let message = v.rule.message.as_deref().unwrap_or_default();
            assert!(
                message.len() > 20,
                "{path}: rule {} needs a readable message",
                v.rule.rule
            );
        }
    }
    // One per CEL rule declared in api.rs; update when adding a rule (and add a CASE above).
    assert_eq!(rules, 10);
}

/// The operator enforces the same rules itself (Kubernetes before 1.25 ignores CEL), with the
/// same messages.
#[test]
fn check_spec_mirrors_every_cel_rule() {
    let typed = |spec: &str| -> SignalingCluster {
        serde_yaml::from_str(&format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata: {{name: demo}}\nspec:\n{spec}"
        ))
        .expect("parses")
    };
    for (what, good, bad, message) in CASES {
        assert_eq!(
            switchboard_operator::resolve::check_spec(&typed(good).spec),
            Ok(()),
            "{what}"
        );
        let err = switchboard_operator::resolve::check_spec(&typed(bad).spec).unwrap_err();
        assert_eq!(err.reason.as_str(), "InvalidSpec", "{what}");
        assert_eq!(err.message, *message, "{what}");
    }
}

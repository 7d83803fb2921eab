//! docs/operator.md documents every field of the CRD schema, and mentions no field that does
//! not exist. Adding a spec field without documenting it fails here.

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use serde_json::Value;
use switchboard_operator::api::SignalingCluster;

/// Fields whose type is a standard Kubernetes one (documented upstream) or a free-form map:
/// the doc describes the field, not its sub-fields.
const OPAQUE: &[&str] = &[
    "spec.resources",
    "spec.redis.managed.resources",
    "spec.affinity",
    "spec.tolerations",
    "spec.topologySpreadConstraints",
    "spec.imagePullSecrets",
    "spec.nodeSelector",
    "spec.service.annotations",
    "spec.ingress.annotations",
    "status.conditions",
];

fn schema_paths() -> BTreeSet<String> {
    fn walk(node: &Value, path: &str, out: &mut BTreeSet<String>) {
        out.insert(path.to_owned());
        if OPAQUE.contains(&path) {
            return;
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, child) in props {
                walk(child, &format!("{path}.{k}"), out);
            }
        }
    }
    let crd = serde_json::to_value(SignalingCluster::crd()).expect("json");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut out = BTreeSet::new();
    walk(&root["spec"], "spec", &mut out);
    walk(&root["status"], "status", &mut out);
    out
}

fn doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operator.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_schema_field_is_documented() {
    let doc = doc();
    let missing: Vec<String> = schema_paths()
        .into_iter()
        .filter(|p| p != "spec" && p != "status")
        .filter(|p| !doc.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operator.md does not mention these fields (write them as `path`): {missing:#?}"
    );
}

#[test]
fn every_documented_field_exists() {
    let known = schema_paths();
    let doc = doc();
    let mut unknown = Vec::new();
    for chunk in doc.split('`').skip(1).step_by(2) {
        let is_path = (chunk.starts_with("spec.") || chunk.starts_with("status."))
            && chunk.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
        if !is_path {
            continue;
        }
        let under_opaque = OPAQUE.iter().any(|o| chunk.starts_with(&format!("{o}.")));
        if !known.contains(chunk) && !under_opaque {
            unknown.push(chunk.to_owned());
        }
    }
    assert!(
        unknown.is_empty(),
        "docs/operator.md mentions fields the CRD does not have: {unknown:?}"
    );
}

#[test]
fn every_example_is_linked_from_the_doc() {
    let doc = doc();
    for name in [
        "minimal.yaml",
        "production.yaml",
        "external-redis.yaml",
        "external-redis-cluster.yaml",
    ] {
        assert!(
            doc.contains(&format!("examples/{name}")),
            "{name} not linked"
        );
    }
}

/// Every condition type and reason the status calculator can produce is explained in the doc.
#[test]
fn every_condition_reason_is_documented() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use switchboard_operator::conditions::{compute_status, DeploymentFacts, Facts, RedisFacts};
    use switchboard_operator::resolve::{ConfigError, ConfigErrorReason};

    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let servers = |desired, ready, updated| DeploymentFacts {
        desired,
        replicas: desired,
        ready,
        updated,
        observed_current: true,
        failure: None,
    };
    let mut deployments = vec![
        None,
        Some(servers(2, 2, 2)),
        Some(servers(2, 0, 2)),
        Some(servers(2, 2, 1)),
        Some(servers(0, 0, 0)),
    ];
    deployments.push(Some(DeploymentFacts {
        failure: Some(("ProgressDeadlineExceeded".into(), "m".into())),
        ..servers(2, 0, 0)
    }));
    let config_errors = [
        None,
        Some(ConfigErrorReason::SecretNotFound),
        Some(ConfigErrorReason::SecretKeyMissing),
        Some(ConfigErrorReason::SecretValueInvalid),
        Some(ConfigErrorReason::InvalidSpec),
        Some(ConfigErrorReason::ObjectNotOwned),
        Some(ConfigErrorReason::ApiUnavailable),
    ];
    let redis = [
        RedisFacts::External,
        RedisFacts::ManagedMissing,
        RedisFacts::Managed { ready_replicas: 0 },
        RedisFacts::Managed { ready_replicas: 1 },
    ];
    let mut seen = BTreeSet::new();
    for paused in [false, true] {
        for d in &deployments {
            for e in &config_errors {
                for r in &redis {
                    let facts = Facts {
                        name: "demo".into(),
                        namespace: "x".into(),
                        generation: Some(1),
                        paused,
                        config_error: e.map(|reason| ConfigError {
                            reason,
                            message: "m".into(),
                        }),
                        redis: r.clone(),
                        servers: d.clone(),
                        endpoint: None,
                    };
                    for c in compute_status(None, &facts, &now).conditions {
                        seen.insert(c.type_);
                        seen.insert(c.reason);
                    }
                }
            }
        }
    }
    let doc = doc();
    let missing: Vec<&String> = seen
        .iter()
        .filter(|r| !doc.contains(&format!("`{r}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "condition types/reasons missing from docs/operator.md: {missing:?}"
    );
    // The matrix reaches every documented outcome (so the check above is not vacuous).
    assert!(seen.len() >= 20, "{seen:?}");
}

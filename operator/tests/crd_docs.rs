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
    for name in ["minimal.yaml", "production.yaml", "external-redis.yaml"] {
        assert!(
            doc.contains(&format!("examples/{name}")),
            "{name} not linked"
        );
    }
}

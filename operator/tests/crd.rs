//! The committed CRD YAML matches what the Rust types generate.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/switchboard.dev_signalingclusters.yaml")
}

#[test]
fn committed_crd_matches_the_types() {
    let generated = switchboard_operator::try_crd_yaml().expect("the CRD serializes");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(committed_path(), &generated).expect("write CRD");
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/switchboard.dev_signalingclusters.yaml is out of date; regenerate it with\n  \
         UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test crd\n\
         (or: cargo run -p switchboard-operator -- crd > crds/switchboard.dev_signalingclusters.yaml)"
    );
}

fn crd_json() -> serde_json::Value {
    use kube::CustomResourceExt;
    serde_json::to_value(switchboard_operator::api::SignalingCluster::crd()).expect("json")
}

fn nulls(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Null => out.push(path.to_owned()),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                nulls(x, &format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                nulls(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Kubernetes 1.20 refuses a CRD with a JSON null inside its schema (e.g. in an `enum`): its
/// conversion compares the schema with itself and fails ("per-version schemas may not all be
/// set to identical values").
#[test]
fn crd_contains_no_json_null() {
    let mut found = Vec::new();
    nulls(&crd_json(), "", &mut found);
    assert!(found.is_empty(), "nulls at {found:?}");
}

#[test]
fn crd_names_scope_subresources_and_columns() {
    let crd = crd_json();
    let spec = &crd["spec"];
    assert_eq!(crd["metadata"]["name"], "signalingclusters.switchboard.dev");
    assert_eq!(spec["group"], "switchboard.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "SignalingCluster");
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["sigc"]));
    assert_eq!(
        spec["names"]["categories"],
        serde_json::json!(["switchboard"])
    );
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(
        (v["served"].clone(), v["storage"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(v["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<(String, String)> = v["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["jsonPath"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("Ready", r#".status.conditions[?(@.type=="Ready")].status"#),
        ("Replicas", ".status.replicas"),
        ("Ready Replicas", ".status.readyReplicas"),
        ("Endpoint", ".status.endpoint"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(columns, expected);
}

//! The committed CRD YAML matches what the Rust types generate.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/switchboard.dev_signalingclusters.yaml")
}

#[test]
fn committed_crd_matches_the_types() {
    let generated = switchboard_operator::crd_yaml();
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

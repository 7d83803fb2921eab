//! The committed `docs/openapi.json` is the document the server generates and serves at
//! `/webrtc/api/v1/openapi.json`: a change to the server API that does not regenerate it fails
//! here. Regenerate with `UPDATE_GOLDEN=1 cargo test -p switchboard-server --test openapi`.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = switchboard_server::api::openapi_text();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(committed_path(), &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the server generates; regenerate it with\n\
         UPDATE_GOLDEN=1 cargo test -p switchboard-server --test openapi\n\
         and commit the result"
    );
}

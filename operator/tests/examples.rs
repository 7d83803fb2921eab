//! Every manifest under docs/examples/ parses as a SignalingCluster, has no unknown or
//! out-of-range field (offline OpenAPI check), passes the CEL rules offline, and builds a full
//! set of children once its referenced Secrets exist. (The runtime's e2e also server-side
//! dry-runs them against a real API server.)

mod common;

use std::path::PathBuf;

use common::openapi::violations;
use common::{secret, secrets_for};
use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::Value;
use switchboard_operator::api::{JwtAlgorithm, SignalingCluster};
use switchboard_operator::resources::desired_children;
use switchboard_operator::{config, names, resolve};

fn examples() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    out.sort();
    out
}

fn schema() -> Value {
    let crd = SignalingCluster::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("json")
}

#[test]
fn the_documented_examples_exist() {
    let names: Vec<String> = examples().into_iter().map(|(n, _)| n).collect();
    for expected in [
        "external-redis.yaml",
        "external-redis-cluster.yaml",
        "minimal.yaml",
        "production.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
}

#[test]
fn every_example_is_a_valid_signaling_cluster() {
    let schema = schema();
    for (name, text) in examples() {
        let raw: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(raw["apiVersion"], "switchboard.dev/v1alpha1", "{name}");
        assert_eq!(raw["kind"], "SignalingCluster", "{name}");
        let found = violations(&schema, &raw);
        assert!(found.is_empty(), "{name}: {found:#?}");
        if let Err(e) = Validator::new().validate(&schema, &raw, None) {
            panic!("{name} fails CEL: {e:?}");
        }
        let typed: SignalingCluster =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        typed
            .validate_cel()
            .unwrap_or_else(|e| panic!("{name} (typed) fails CEL: {e:?}"));
    }
}

#[test]
fn every_example_builds_its_children_once_its_secrets_exist() {
    for (name, text) in examples() {
        let sc = common::cluster_from_yaml(&text);
        // The Secrets the example's comments tell the user to create.
        let mut extra = Vec::new();
        if let Some(r) = &sc.spec.auth.secret_ref {
            let key = r.key_or(match sc.spec.auth.algorithm {
                JwtAlgorithm::HS256 => names::SECRET_KEY,
                _ => resolve::PUBLIC_KEY_KEY,
            });
            extra.push(secret(
                &r.name,
                &[(
                    key,
                    "-----BEGIN PUBLIC KEY-----\nAA\n-----END PUBLIC KEY-----\n",
                )],
            ));
        }
        if let Some(r) = &sc.spec.ice.turn_secret_ref {
            extra.push(secret(&r.name, &[(r.key_or(names::SECRET_KEY), "turn")]));
        }
        if let Some(r) = sc
            .spec
            .redis
            .external
            .as_ref()
            .and_then(|e| e.secret_ref.as_ref())
        {
            extra.push(secret(
                &r.name,
                &[(r.key_or(resolve::REDIS_URL_KEY), "redis://:pw@redis:6379")],
            ));
        }
        let secrets = secrets_for(&sc, extra);
        let resolved = resolve::resolve(&sc, &secrets).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rendered = config::render(&sc, &resolved).expect("renders");
        desired_children(&sc, &rendered).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

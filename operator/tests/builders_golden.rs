//! Golden YAML snapshots of everything the operator builds for a few representative specs.
//! A diff fails the test; `UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test
//! builders_golden` rewrites the files (review the diff before committing).

mod common;

use std::path::PathBuf;

use common::{cluster_from_yaml, secret, secrets_for};
use serde::Serialize;
use switchboard_operator::names::generated_secrets_needed;
use switchboard_operator::resources::{desired_children, endpoint};
use switchboard_operator::{config, resolve};

fn doc<T: Serialize>(out: &mut String, obj: &T) {
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(obj).expect("serializes"));
}

/// Every object (generated Secrets, config Secret, children) for `manifest`, as one
/// multi-document YAML, preceded by the rendered config in plain text for easy review.
fn snapshot(manifest: &str, extra: Vec<k8s_openapi::api::core::v1::Secret>) -> String {
    let sc = cluster_from_yaml(manifest);
    let secrets = secrets_for(&sc, extra);
    let resolved = resolve::resolve(&sc, &secrets).expect("resolves");
    let rendered = config::render(&sc, &resolved).expect("renders");
    let children = desired_children(&sc, &rendered).expect("builds");
    let mut out = format!(
        "# endpoint: {}\n# config hash: {}\n# config.yaml:\n{}",
        endpoint(&sc).expect("endpoint"),
        rendered.hash,
        rendered
            .yaml
            .lines()
            .map(|l| format!("#   {l}\n"))
            .collect::<String>()
    );
    for g in generated_secrets_needed(&sc) {
        doc(&mut out, &secrets[&g.secret_name("demo")]);
    }
    doc(&mut out, &children.config_secret);
    doc(&mut out, &children.deployment);
    doc(&mut out, &children.service);
    for o in children.ingress.iter() {
        doc(&mut out, o);
    }
    for o in children.hpa.iter() {
        doc(&mut out, o);
    }
    for o in children.pdb.iter() {
        doc(&mut out, o);
    }
    for o in children.network_policy.iter() {
        doc(&mut out, o);
    }
    for o in children.redis_statefulset.iter() {
        doc(&mut out, o);
    }
    for o in children.redis_service.iter() {
        doc(&mut out, o);
    }
    out
}

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test builders_golden",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from what the builders produce (first difference at line {}):\n  expected: {:?}\n  actual:   {:?}\n\
             If the change is intended: UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test builders_golden",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn bare_spec() {
    check(
        "bare",
        &snapshot(
            "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata:\n  name: demo\nspec: {}\n",
            vec![],
        ),
    );
}

#[test]
fn everything_on() {
    let manifest = r#"
apiVersion: switchboard.dev/v1alpha1
kind: SignalingCluster
metadata:
  name: demo
spec:
  replicas: 3
  image: ghcr.io/switchboard-dev/switchboard-server:9.9.9
  imagePullPolicy: IfNotPresent
  imagePullSecrets: [{name: regcred}]
  resources:
    requests: {cpu: 250m, memory: 128Mi}
    limits: {memory: 256Mi}
  redis:
    keyPrefix: prod
    managed:
      image: redis:7.2-alpine
      resources:
        requests: {cpu: 100m, memory: 128Mi}
      persistence: {size: 2Gi, storageClassName: fast}
  ice:
    stunUrls: ["stun:stun.example.com:3478"]
    turnUrls: ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
    turnSecretRef: {name: coturn, key: static-auth-secret}
    credentialTtlSeconds: 3600
    iceTransportPolicy: relay
    bundlePolicy: max-bundle
    rtcpMuxPolicy: require
  auth:
    algorithm: ES256
    secretRef: {name: jwt-public-key}
    issuer: https://auth.example.com
    audience: switchboard
  rooms: {maxParticipants: 12, presenceTtlSeconds: 20}
  limits: {maxMessageBytes: 32768, ratePerSecond: 100, maxConnectionsPerIp: 40}
  resume: {graceSeconds: 60, inboxMessages: 1024, inboxBytes: 4194304}
  service:
    type: LoadBalancer
    port: 443
    annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}
  ingress:
    enabled: true
    className: nginx
    host: rtc.example.com
    tlsSecretName: rtc-example-com-tls
    annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: "7200", cert-manager.io/cluster-issuer: letsencrypt}
  autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 12, targetCPUUtilizationPercentage: 60}
  podDisruptionBudget: {enabled: true, minAvailable: 2}
  networkPolicy: {enabled: true}
  allowedOrigins: ["https://app.example.com"]
  nodeSelector: {kubernetes.io/os: linux}
  tolerations: [{key: dedicated, operator: Equal, value: rtc, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: node-role, operator: In, values: [rtc]}]
  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector:
      matchLabels: {app.kubernetes.io/instance: demo, app.kubernetes.io/component: server}
"#;
    let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEexample\n-----END PUBLIC KEY-----\n";
    check(
        "everything-on",
        &snapshot(
            manifest,
            vec![
                secret("coturn", &[("static-auth-secret", "coturn-shared-secret")]),
                secret("jwt-public-key", &[("public.pem", pem)]),
            ],
        ),
    );
}

#[test]
fn external_redis() {
    let manifest = r#"
apiVersion: switchboard.dev/v1alpha1
kind: SignalingCluster
metadata:
  name: demo
spec:
  redis:
    external:
      secretRef: {name: redis-url}
  ice:
    turnUrls: ["turns:turn.example.com:5349"]
"#;
    check(
        "external-redis",
        &snapshot(
            manifest,
            vec![secret(
                "redis-url",
                &[("url", "rediss://:pw@redis.example.com:6380/0")],
            )],
        ),
    );
}

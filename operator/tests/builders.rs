//! Unit tests of the pure `desired_*` builders: names, labels, owner references, pod hardening,
//! probes, config hash behaviour and optional parts present or absent.

mod common;

use std::collections::BTreeMap;

use common::{bare, cluster_from_yaml, fake_random, secrets_for, NAMESPACE, UID};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchboard_operator::api::SignalingCluster;
use switchboard_operator::config::{self, RenderedConfig};
use switchboard_operator::names::{self, generated_secrets_needed, GeneratedSecret, FIELD_MANAGER};
use switchboard_operator::resolve;
use switchboard_operator::resources::{
    desired_children, desired_config_secret, desired_deployment, desired_generated_secret,
    desired_hpa, desired_ingress, desired_network_policy, desired_pdb, desired_redis_service,
    desired_redis_statefulset, desired_service, endpoint, BuildError, Children,
    CONFIG_HASH_ANNOTATION, GENERATED_ANNOTATION,
};

fn rendered(sc: &SignalingCluster) -> RenderedConfig {
    let secrets = secrets_for(sc, vec![]);
    let resolved = resolve::resolve(sc, &secrets).expect("resolves");
    config::render(sc, &resolved).expect("renders")
}

fn children(sc: &SignalingCluster) -> Children {
    desired_children(sc, &rendered(sc)).expect("builds")
}

fn with(yaml_spec: &str) -> SignalingCluster {
    cluster_from_yaml(&format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: SignalingCluster\nmetadata:\n  name: demo\nspec:\n{yaml_spec}"
    ))
}

/// Every metadata block of every object built for `sc`, with its kind.
fn all_metadata(sc: &SignalingCluster) -> Vec<(String, ObjectMeta)> {
    let c = children(sc);
    let mut out = vec![
        ("Secret".to_owned(), c.config_secret.metadata),
        ("Deployment".to_owned(), c.deployment.metadata),
        ("Service".to_owned(), c.service.metadata),
    ];
    out.extend(c.ingress.map(|o| ("Ingress".to_owned(), o.metadata)));
    out.extend(c.hpa.map(|o| ("HPA".to_owned(), o.metadata)));
    out.extend(c.pdb.map(|o| ("PDB".to_owned(), o.metadata)));
    out.extend(
        c.network_policy
            .map(|o| ("NetworkPolicy".to_owned(), o.metadata)),
    );
    out.extend(
        c.redis_statefulset
            .map(|o| ("StatefulSet".to_owned(), o.metadata)),
    );
    out.extend(
        c.redis_service
            .map(|o| ("RedisService".to_owned(), o.metadata)),
    );
    for g in generated_secrets_needed(sc) {
        let s = desired_generated_secret(sc, g, &fake_random(1)).expect("builds");
        out.push((format!("{g:?}"), s.metadata));
    }
    out
}

const ALL_ON: &str = "  ingress: {enabled: true, host: rtc.example.com}\n  autoscaling: {enabled: true}\n  podDisruptionBudget: {enabled: true}\n  ice: {turnUrls: ['turn:t.example.com:3478']}\n";

#[test]
fn every_child_has_its_contract_name_labels_and_controller_owner_reference() {
    let sc = with(ALL_ON);
    let metas = all_metadata(&sc);
    let names_by_kind: BTreeMap<_, _> = metas
        .iter()
        .map(|(k, m)| (k.as_str(), m.name.clone().unwrap()))
        .collect();
    assert_eq!(
        names_by_kind,
        BTreeMap::from([
            ("Secret", "demo-config".to_owned()),
            ("Deployment", "demo-server".to_owned()),
            ("Service", "demo-server".to_owned()),
            ("Ingress", "demo-server".to_owned()),
            ("HPA", "demo-server".to_owned()),
            ("PDB", "demo-server".to_owned()),
            ("NetworkPolicy", "demo-redis".to_owned()),
            ("StatefulSet", "demo-redis".to_owned()),
            ("RedisService", "demo-redis".to_owned()),
            ("Jwt", "demo-jwt".to_owned()),
            ("Turn", "demo-turn".to_owned()),
            ("RedisPassword", "demo-redis-auth".to_owned()),
        ])
    );
    for (kind, m) in &metas {
        assert_eq!(m.namespace.as_deref(), Some(NAMESPACE), "{kind}");
        let labels = m.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "switchboard", "{kind}");
        assert_eq!(labels["app.kubernetes.io/instance"], "demo", "{kind}");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"], FIELD_MANAGER,
            "{kind}"
        );
        let component = &labels["app.kubernetes.io/component"];
        let expected = if matches!(
            kind.as_str(),
            "NetworkPolicy" | "StatefulSet" | "RedisService" | "RedisPassword"
        ) {
            "redis"
        } else {
            "server"
        };
        assert_eq!(component, expected, "{kind}");
        let owners = m.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1, "{kind}");
        let o = &owners[0];
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str(),
                o.controller,
                o.block_owner_deletion
            ),
            (
                "switchboard.dev/v1alpha1",
                "SignalingCluster",
                "demo",
                UID,
                Some(true),
                Some(true)
            ),
            "{kind}"
        );
    }
}

#[test]
fn builders_refuse_a_cluster_without_server_set_metadata() {
    let mut sc = bare("demo");
    sc.metadata.uid = None;
    let cfg = RenderedConfig {
        yaml: String::new(),
        hash: String::new(),
        extra_files: BTreeMap::new(),
    };
    assert_eq!(
        desired_children(&sc, &cfg).unwrap_err(),
        BuildError::MissingMetadata("uid")
    );
    sc.metadata.namespace = None;
    assert_eq!(
        desired_service(&sc).unwrap_err(),
        BuildError::MissingMetadata("namespace")
    );
}

#[test]
fn deployment_runs_the_server_hardened_with_probes_and_the_config_mounted() {
    let sc = bare("demo");
    let cfg = rendered(&sc);
    let d = desired_deployment(&sc, &cfg).unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let selector = spec.selector.match_labels.unwrap();
    assert_eq!(
        selector.keys().collect::<Vec<_>>(),
        [
            "app.kubernetes.io/component",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/name"
        ]
    );
    let template = spec.template;
    let tmeta = template.metadata.unwrap();
    // Only the config hash: no operator version, no timestamps.
    assert_eq!(
        tmeta.annotations.unwrap(),
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), cfg.hash.clone())])
    );
    // The selector must match the template's labels.
    let tlabels = tmeta.labels.unwrap();
    for (k, v) in &selector {
        assert_eq!(tlabels.get(k), Some(v), "template lacks selector label {k}");
    }
    let pod = template.spec.unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.enable_service_links, Some(false));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.name, "server");
    assert_eq!(
        c.image.as_deref(),
        Some(
            format!(
                "ghcr.io/switchboard-dev/switchboard-server:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    assert_eq!(
        c.args.clone().unwrap(),
        ["--config", "/etc/switchboard/config.yaml"]
    );
    let port = &c.ports.clone().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    let live = c.liveness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(live.path.as_deref(), Some("/webrtc/health/live"));
    assert_eq!(live.port, IntOrString::String("http".into()));
    let ready = c.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(ready.path.as_deref(), Some("/webrtc/health/ready"));
    let sec = c.security_context.clone().unwrap();
    assert_eq!(sec.run_as_non_root, Some(true));
    assert_eq!(sec.read_only_root_filesystem, Some(true));
    assert_eq!(sec.allow_privilege_escalation, Some(false));
    assert_eq!(sec.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    assert_eq!(
        sec.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    let mount = c
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "config")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only, mount.sub_path),
        ("/etc/switchboard", Some(true), None)
    );
    let vol = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "config")
        .unwrap();
    assert_eq!(
        vol.secret.unwrap().secret_name.as_deref(),
        Some("demo-config")
    );
    let tsc = &pod.topology_spread_constraints.unwrap()[0];
    assert_eq!(
        (
            tsc.topology_key.as_str(),
            tsc.max_skew,
            tsc.when_unsatisfiable.as_str()
        ),
        ("kubernetes.io/hostname", 1, "ScheduleAnyway")
    );
    assert!(pod.termination_grace_period_seconds.unwrap() > 25);
}

#[test]
fn pod_template_does_not_depend_on_the_operator_version() {
    let sc = with("  image: example.com/switchboard-server:custom\n");
    let d = desired_deployment(&sc, &rendered(&sc)).unwrap();
    let template = serde_yaml::to_string(&d.spec.unwrap().template).unwrap();
    assert!(
        !template.contains(env!("CARGO_PKG_VERSION")),
        "the pod template mentions the operator version:\n{template}"
    );
}

#[test]
fn config_hash_changes_iff_the_config_bytes_change() {
    let sc = bare("demo");
    let a = rendered(&sc);
    let hash_of = |cfg: &RenderedConfig| {
        desired_deployment(&sc, cfg)
            .unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_eq!(hash_of(&a), a.hash);
    assert_eq!(hash_of(&rendered(&sc)), a.hash);
    // A rotated JWT secret (different random bytes) changes the config and the hash.
    let mut secrets = secrets_for(&sc, vec![]);
    let rotated = desired_generated_secret(&sc, GeneratedSecret::Jwt, &fake_random(99)).unwrap();
    secrets.insert("demo-jwt".into(), rotated);
    let b = config::render(&sc, &resolve::resolve(&sc, &secrets).unwrap()).unwrap();
    assert_ne!(hash_of(&b), a.hash);
    // Scaling does not touch the config, so pods do not roll.
    let mut scaled = sc.clone();
    scaled.spec.replicas = 5;
    assert_eq!(rendered(&scaled).hash, a.hash);
}

#[test]
fn config_secret_holds_exactly_the_rendered_bytes() {
    let sc = bare("demo");
    let cfg = rendered(&sc);
    let s = desired_config_secret(&sc, &cfg).unwrap();
    let data = s.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["config.yaml"]);
    assert_eq!(data["config.yaml"].0, cfg.yaml.as_bytes());
    assert_eq!(config::sha256_hex(&data["config.yaml"].0), cfg.hash);
}

#[test]
fn scheduling_knobs_reach_the_pod() {
    let sc = with(
        "  nodeSelector: {disk: ssd}\n  tolerations: [{key: k, operator: Exists}]\n  imagePullSecrets: [{name: regcred}]\n  imagePullPolicy: Always\n  topologySpreadConstraints: []\n",
    );
    let pod = desired_deployment(&sc, &rendered(&sc))
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("k"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    // An explicit empty list turns the default spread off.
    assert_eq!(pod.topology_spread_constraints, None);
}

#[test]
fn autoscaling_hands_replicas_to_the_hpa() {
    let sc = with("  replicas: 4\n  autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 9, targetCPUUtilizationPercentage: 55}\n");
    let d = desired_deployment(&sc, &rendered(&sc)).unwrap();
    assert_eq!(d.spec.unwrap().replicas, None);
    let hpa = desired_hpa(&sc).unwrap().unwrap().spec.unwrap();
    assert_eq!(
        (
            hpa.scale_target_ref.kind.as_str(),
            hpa.scale_target_ref.name.as_str()
        ),
        ("Deployment", "demo-server")
    );
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 9));
    let metric = &hpa.metrics.unwrap()[0];
    let resource = metric.resource.clone().unwrap();
    assert_eq!(resource.name, "cpu");
    assert_eq!(resource.target.average_utilization, Some(55));
    assert_eq!(desired_hpa(&bare("demo")).unwrap(), None);
}

#[test]
fn pdb_defaults_to_one_unavailable_and_passes_bounds_through() {
    assert_eq!(desired_pdb(&bare("demo")).unwrap(), None);
    let pdb = desired_pdb(&with("  podDisruptionBudget: {enabled: true}\n"))
        .unwrap()
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        (pdb.min_available, pdb.max_unavailable),
        (None, Some(IntOrString::Int(1)))
    );
    let pdb = desired_pdb(&with(
        "  podDisruptionBudget: {enabled: true, minAvailable: '50%'}\n",
    ))
    .unwrap()
    .unwrap()
    .spec
    .unwrap();
    assert_eq!(
        (pdb.min_available, pdb.max_unavailable),
        (Some(IntOrString::String("50%".into())), None)
    );
    assert_eq!(
        pdb.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
        "server"
    );
}

#[test]
fn ingress_routes_the_host_to_the_service_with_websocket_timeouts() {
    assert_eq!(desired_ingress(&bare("demo")).unwrap(), None);
    // Enabled without a host is refused by CEL; the builder makes nothing rather than a bad object.
    assert_eq!(
        desired_ingress(&with("  ingress: {enabled: true}\n")).unwrap(),
        None
    );
    let sc = with("  ingress: {enabled: true, host: rtc.example.com, className: nginx, tlsSecretName: tls, annotations: {nginx.ingress.kubernetes.io/proxy-send-timeout: '60', x: y}}\n");
    let ing = desired_ingress(&sc).unwrap().unwrap();
    let ann = ing.metadata.annotations.unwrap();
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    assert_eq!(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"], "60");
    assert_eq!(ann["x"], "y");
    let spec = ing.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("rtc.example.com"));
    let path = &rule.http.clone().unwrap().paths[0];
    assert_eq!(
        (path.path.as_deref(), path.path_type.as_str()),
        (Some("/"), "Prefix")
    );
    let backend = path.backend.service.clone().unwrap();
    assert_eq!(backend.name, "demo-server");
    assert_eq!(backend.port.unwrap().name.as_deref(), Some("http"));
    let tls = &spec.tls.unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("tls"));
    assert_eq!(tls.hosts.clone().unwrap(), ["rtc.example.com"]);
    assert_eq!(endpoint(&sc).unwrap(), "https://rtc.example.com");
}

#[test]
fn endpoint_without_ingress_is_the_service_url() {
    assert_eq!(
        endpoint(&bare("demo")).unwrap(),
        "http://demo-server.media.svc"
    );
    assert_eq!(
        endpoint(&with("  service: {port: 8443}\n")).unwrap(),
        "http://demo-server.media.svc:8443"
    );
    assert_eq!(
        endpoint(&with("  ingress: {enabled: true, host: a.example.com}\n")).unwrap(),
        "http://a.example.com"
    );
}

#[test]
fn service_exposes_http_with_type_port_and_annotations() {
    let sc = with("  service: {type: NodePort, port: 8080, annotations: {a: b}}\n");
    let svc = desired_service(&sc).unwrap();
    assert_eq!(svc.metadata.annotations.unwrap()["a"], "b");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (8080, Some(IntOrString::String("http".into())))
    );
    assert_eq!(
        spec.selector.unwrap()["app.kubernetes.io/component"],
        "server"
    );
}

#[test]
fn network_policy_lets_only_server_pods_reach_redis() {
    let np = desired_network_policy(&bare("demo")).unwrap().unwrap();
    let spec = np.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/component"],
        "redis"
    );
    assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 1);
    let from = rules[0].from.clone().unwrap();
    assert_eq!(from.len(), 1);
    let peer = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
    assert_eq!(peer["app.kubernetes.io/component"], "server");
    assert_eq!(peer["app.kubernetes.io/instance"], "demo");
    assert_eq!(from[0].namespace_selector, None);
    assert_eq!(
        rules[0].ports.clone().unwrap()[0].port,
        Some(IntOrString::Int(6379))
    );
    assert_eq!(
        desired_network_policy(&with("  networkPolicy: {enabled: false}\n")).unwrap(),
        None
    );
    assert_eq!(
        desired_network_policy(&with("  redis: {external: {secretRef: {name: r}}}\n")).unwrap(),
        None
    );
}

#[test]
fn managed_redis_uses_the_generated_password_and_optional_persistence() {
    let sts = desired_redis_statefulset(&bare("demo")).unwrap().unwrap();
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("demo-redis"));
    assert_eq!(spec.volume_claim_templates, None);
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("redis:7-alpine"));
    let args = c.args.clone().unwrap();
    assert_eq!(&args[..2], ["--requirepass", "$(REDIS_PASSWORD)"]);
    let env = c.env.clone().unwrap();
    let pw = env.iter().find(|e| e.name == "REDIS_PASSWORD").unwrap();
    let sel = pw.value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (sel.name.as_str(), sel.key.as_str()),
        ("demo-redis-auth", "password")
    );
    assert!(
        env.iter().all(|e| e.value.is_none()),
        "no literal secrets in env"
    );
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    assert_eq!(
        c.security_context
            .clone()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
    assert!(pod.volumes.unwrap().iter().any(|v| v.empty_dir.is_some()));

    let sc = with("  redis: {managed: {image: redis:7.4, persistence: {size: 5Gi, storageClassName: fast}}}\n");
    let spec = desired_redis_statefulset(&sc)
        .unwrap()
        .unwrap()
        .spec
        .unwrap();
    let claim = &spec.volume_claim_templates.unwrap()[0];
    let cspec = claim.spec.clone().unwrap();
    assert_eq!(cspec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        cspec.resources.unwrap().requests.unwrap()["storage"].0,
        "5Gi"
    );
    assert!(spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap()
        .windows(2)
        .any(|w| w == ["--appendonly", "yes"]));

    let svc = desired_redis_service(&bare("demo")).unwrap().unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 6379);
}

#[test]
fn external_redis_builds_no_redis_objects() {
    let sc = with("  redis: {external: {secretRef: {name: r}}}\n");
    assert_eq!(desired_redis_statefulset(&sc).unwrap(), None);
    assert_eq!(desired_redis_service(&sc).unwrap(), None);
    assert!(!generated_secrets_needed(&sc).contains(&GeneratedSecret::RedisPassword));
}

#[test]
fn generated_secrets_needed_follows_the_spec() {
    let cases: [(&str, &[GeneratedSecret]); 8] = [
        ("  {}\n", &[GeneratedSecret::Jwt, GeneratedSecret::RedisPassword]),
        (
            "  ice: {turnUrls: ['turn:t:3478']}\n",
            &[GeneratedSecret::Jwt, GeneratedSecret::Turn, GeneratedSecret::RedisPassword],
        ),
        (
            "  ice: {turnUrls: ['turn:t:3478'], turnSecretRef: {name: t}}\n  auth: {secretRef: {name: j}}\n",
            &[GeneratedSecret::RedisPassword],
        ),
        // A public JWT key leaves the servers nothing to derive a shared resume key from.
        (
            "  auth: {algorithm: RS256, secretRef: {name: k}}\n  redis: {external: {secretRef: {name: r}}}\n",
            &[GeneratedSecret::Resume],
        ),
        (
            "  auth: {algorithm: ES256, secretRef: {name: k}}\n",
            &[GeneratedSecret::RedisPassword, GeneratedSecret::Resume],
        ),
        (
            "  auth: {algorithm: RS256, secretRef: {name: k}}\n  resume: {secretRef: {name: rk}}\n",
            &[GeneratedSecret::RedisPassword],
        ),
        (
            "  auth: {algorithm: RS256, secretRef: {name: k}}\n  resume: {graceSeconds: 0}\n",
            &[GeneratedSecret::RedisPassword],
        ),
        ("  redis: {external: {secretRef: {name: r}}}\n", &[GeneratedSecret::Jwt]),
    ];
    for (spec, expected) in cases {
        assert_eq!(generated_secrets_needed(&with(spec)), expected, "{spec}");
    }
}

#[test]
fn generated_secret_is_hex_of_the_random_bytes_and_marked_generated() {
    let sc = bare("demo");
    for (kind, name, key) in [
        (GeneratedSecret::Jwt, "demo-jwt", "secret"),
        (GeneratedSecret::Turn, "demo-turn", "secret"),
        (
            GeneratedSecret::RedisPassword,
            "demo-redis-auth",
            "password",
        ),
        (GeneratedSecret::Resume, "demo-resume", "secret"),
    ] {
        let s = desired_generated_secret(&sc, kind, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some(name));
        assert_eq!(kind.secret_name("demo"), name);
        assert_eq!(
            s.metadata.annotations.unwrap()[GENERATED_ANNOTATION],
            "true"
        );
        let data = s.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [key]);
        assert_eq!(data[key].0, b"deadbeef");
        assert_eq!(s.string_data, None);
    }
    assert_eq!(GeneratedSecret::RANDOM_BYTES, 32);
}

#[test]
fn config_path_is_mount_dir_plus_file() {
    assert_eq!(
        switchboard_operator::resources::CONFIG_PATH,
        format!("{}/{}", config::MOUNT_DIR, config::CONFIG_FILE)
    );
}

#[test]
fn names_follow_the_contract() {
    assert_eq!(names::server("a"), "a-server");
    assert_eq!(names::config("a"), "a-config");
    assert_eq!(names::redis("a"), "a-redis");
    assert_eq!(names::redis_auth("a"), "a-redis-auth");
    assert_eq!(names::jwt("a"), "a-jwt");
    assert_eq!(names::turn("a"), "a-turn");
    assert_eq!(names::resume("a"), "a-resume");
}

#[test]
fn optional_parts_are_absent_from_a_bare_spec_and_present_when_asked() {
    let c = children(&bare("demo"));
    assert!(c.ingress.is_none() && c.hpa.is_none() && c.pdb.is_none());
    assert!(
        c.network_policy.is_some() && c.redis_statefulset.is_some() && c.redis_service.is_some()
    );
    let c = children(&with(ALL_ON));
    assert!(c.ingress.is_some() && c.hpa.is_some() && c.pdb.is_some());
}

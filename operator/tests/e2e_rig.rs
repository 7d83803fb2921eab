//! End to end against a real kube-apiserver 1.20 + kube-controller-manager started from
//! `tests/k8s-rig.sh` on free loopback ports (one rig for the whole binary run, stopped at the
//! end). The operator binary runs as the Helm chart's ServiceAccount with the chart's RBAC and
//! the chart's container args, so this also proves the chart and the binary agree.
//!
//! One scenario of named steps, run in order (each builds on the state the previous ones
//! left); a failure names its step. The rig, the operator processes and the observers live in
//! `tests/common/` (`rig.rs`, `operator.rs`, `observe.rs`).
//!
//! Needs: `tests/k8s-rig.sh ensure` (kube binaries + etcd) and `tests/tools.sh` (helm).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_operator::api::SignalingCluster;
use switchboard_operator::names::FIELD_MANAGER;
use tokio::io::AsyncReadExt;

mod common;
// The e2e's own parts of tests/common/ (other test binaries do not compile them).
#[path = "common/observe.rs"]
mod observe;
#[path = "common/operator.rs"]
mod operator;
#[path = "common/rig.rs"]
mod rig;

use observe::{
    base64, cluster_events, condition, config_hash, ensure_status_applied, expect_event,
    lease_holder, make_pods_ready, managed_by_operator, operator_fields, owned_by, sc1_children,
    set_lease_holder, snapshot,
};
use operator::Operator;
use rig::{
    create, create_cluster_scoped, dry_run_examples, eventually, install_chart_rbac, install_crd,
    service_account_kubeconfig, Rig, LEASE_SECS, NS, OPERATOR_NS,
};

/// Helm release name of the operator the scenario installs.
const RELEASE: &str = "sb";

/// What the steps share: the rig and its admin client, the operator processes, and what
/// earlier steps set up or learnt.
struct World<'r> {
    rig: &'r Rig,
    admin: Client,
    ops: Vec<Operator>,
    /// The operator container args the chart renders (and the Lease name among them).
    args: Vec<String>,
    lease_name: String,
    /// Authenticates as the chart's ServiceAccount.
    sa_kubeconfig: PathBuf,
    /// uid of the cluster sc1.
    uid: String,
    /// Indices into `ops`: the first leader, the first follower, the restarted standby.
    leader: usize,
    follower: usize,
    standby: usize,
    /// resourceVersion of the user's TURN Secret after the test rotated it.
    user_rv: Option<String>,
}

impl World<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), NS)
    }
    fn clusters(&self) -> Api<SignalingCluster> {
        self.api()
    }
    fn secrets(&self) -> Api<Secret> {
        self.api()
    }
    fn deployments(&self) -> Api<Deployment> {
        self.api()
    }
    fn netpols(&self) -> Api<NetworkPolicy> {
        self.api()
    }

    /// Merge-patches sc1's spec as a user's `kubectl patch` would.
    async fn patch_spec(&self, spec: serde_json::Value) -> Result<()> {
        self.clusters()
            .patch(
                "sc1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await?;
        Ok(())
    }

    /// `switchboard_operator_reconciles_total` of operator `i`, if it serves metrics.
    async fn reconcile_count(&self, i: usize) -> Option<f64> {
        self.ops[i]
            .metric("switchboard_operator_reconciles_total")
            .await
    }

    /// [`Self::reconcile_count`], 0 when it serves none yet.
    async fn reconciles(&self, i: usize) -> f64 {
        self.reconcile_count(i).await.unwrap_or(0.0)
    }

    /// Waits (bounded by `limit`) until `holder` holds the operator's Lease.
    async fn wait_for_holder(&self, what: &str, holder: &str, limit: Duration) -> Result<()> {
        eventually(what, limit, || async {
            Ok((lease_holder(&self.admin, &self.lease_name)
                .await?
                .as_deref()
                == Some(holder))
            .then_some(()))
        })
        .await
    }
}

/// Runs each step in order, printing its summary; the first failure is returned with the
/// step's name.
macro_rules! run_steps {
    ($world:expr, $t0:expr; $($step:ident),+ $(,)?) => {{
        $(
            let summary = $step($world)
                .await
                .with_context(|| format!("e2e step `{}` failed", stringify!($step)))?;
            eprintln!(
                "[e2e {:>6.1}s] {}: {summary}",
                $t0.elapsed().as_secs_f64(),
                stringify!($step)
            );
        )+
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_api_server() -> Result<()> {
    let started = Instant::now();
    let rig = Rig::start()?;
    eprintln!(
        "[e2e {:>6.1}s] rig started",
        started.elapsed().as_secs_f64()
    );
    let mut world = World {
        admin: rig.admin().await?,
        rig: &rig,
        ops: Vec::new(),
        args: Vec::new(),
        lease_name: String::new(),
        sa_kubeconfig: PathBuf::new(),
        uid: String::new(),
        leader: 0,
        follower: 0,
        standby: 0,
        user_rv: None,
    };
    // Every wait inside is bounded; this bounds the whole run too (a hung API call included).
    let result =
        match tokio::time::timeout(Duration::from_secs(300), scenario(&mut world, started)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("the e2e scenario did not finish within 300 s")),
        };
    if result.is_err() {
        for op in &world.ops {
            eprintln!(
                "---- operator {} log tail ({}):\n{}",
                op.name,
                op.log.display(),
                op.log_tail()
            );
        }
        eprintln!(
            "rig logs: {}/logs (set E2E_KEEP_RIG_DIR=1 to keep them)",
            rig.run_dir.display()
        );
    }
    drop(world);
    drop(rig);
    eprintln!("[e2e {:>6.1}s] done", started.elapsed().as_secs_f64());
    result
}

async fn scenario(w: &mut World<'_>, t0: Instant) -> Result<()> {
    run_steps!(w, t0;
        without_the_crd_the_operator_exits_naming_the_install_command,
        install_the_crd_and_namespaces,
        pretty_logs_to_a_pipe_carry_no_colour_codes,
        install_the_charts_service_account_and_rbac,
        create_a_cluster_and_start_two_operators,
        every_child_is_owned_and_written_by_the_operator,
        one_leader_alone_reconciles,
        servers_ready_is_false_while_pods_are_pending,
        ready_pods_make_the_cluster_ready,
        sigterm_hands_over_and_the_new_leader_writes_nothing,
        sigkill_lets_the_standby_take_over_when_the_lease_expires,
        a_lost_lease_stops_the_controller_until_given_back,
        a_deleted_deployment_comes_back,
        a_replicas_change_reaches_the_deployment,
        rotating_the_turn_secret_rolls_the_pods,
        a_missing_secret_is_reported_and_what_runs_is_untouched,
        autoscaling_on_1_20_is_a_readable_api_unavailable,
        optional_parts_turned_off_are_deleted,
        the_users_secret_is_never_written,
        spec_resume_renders_its_settings_and_one_key_every_replica_shares,
        paused_reconciles_nothing_and_unpausing_clears_paused,
        deleting_the_cluster_collects_every_child,
        namespace_scope_needs_only_a_role,
        every_example_is_accepted_by_the_api_server,
    );
    Ok(())
}

async fn without_the_crd_the_operator_exits_naming_the_install_command(
    w: &mut World<'_>,
) -> Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
            .args(["run", "--metrics-addr=127.0.0.1:0", "--leader-elect=false"])
            .env("KUBECONFIG", &w.rig.kubeconfig)
            .output(),
    )
    .await
    .context("operator without CRD did not exit within 30 s")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "exit code without CRD: {:?}; stderr: {stderr}",
        out.status
    );
    ensure!(
        stderr.contains("kubectl apply --server-side -f crds/switchboard.dev_signalingclusters.yaml")
            && stderr.contains(
                "Kubernetes < 1.25: kubectl create --validate=false -f crds/switchboard.dev_signalingclusters.yaml"
            )
            && stderr.lines().count() == 1,
        "stderr without CRD does not name the install command: {stderr}"
    );
    Ok("exit 1 with the install command".to_owned())
}

async fn install_the_crd_and_namespaces(w: &mut World<'_>) -> Result<String> {
    install_crd(&w.admin).await?;
    for ns in [OPERATOR_NS, NS] {
        create_cluster_scoped::<Namespace>(
            &w.admin,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    Ok(format!("CRD Established; namespaces {OPERATOR_NS}, {NS}"))
}

async fn pretty_logs_to_a_pipe_carry_no_colour_codes(w: &mut World<'_>) -> Result<String> {
    let mut pretty = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
        .args([
            "run",
            "--metrics-addr=127.0.0.1:0",
            "--leader-elect=false",
            "--log-format=pretty",
        ])
        .env("KUBECONFIG", &w.rig.kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning switchboard-operator")?;
    let mut pretty_err = pretty
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let mut logged = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&logged).contains("serving /metrics") {
            let n = pretty_err.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            logged.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let _ = pretty.kill().await;
    let logged = String::from_utf8_lossy(&logged).into_owned();
    ensure!(
        matches!(read, Ok(Ok(()))) && logged.contains("serving /metrics"),
        "the operator logged no 'serving /metrics' line within 20 s: {logged}"
    );
    ensure!(
        !logged.contains('\u{1b}'),
        "pretty logs to a pipe contain ANSI escape codes: {logged:?}"
    );
    Ok("no ANSI escape codes".to_owned())
}

async fn install_the_charts_service_account_and_rbac(w: &mut World<'_>) -> Result<String> {
    let (sa, args) = install_chart_rbac(&w.admin, RELEASE, OPERATOR_NS, &[]).await?;
    w.lease_name = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .ok_or_else(|| anyhow!("chart args have no --lease-name=: {args:?}"))?
        .to_owned();
    w.sa_kubeconfig = service_account_kubeconfig(&w.admin, w.rig, &sa, OPERATOR_NS).await?;
    w.args = args;
    Ok(format!(
        "ServiceAccount {sa} with its token; args {:?}",
        w.args
    ))
}

async fn create_a_cluster_and_start_two_operators(w: &mut World<'_>) -> Result<String> {
    // The user's TURN secret and the cluster (HPA/PDB off: 1.20 lacks their APIs).
    create::<Secret>(
        &w.admin,
        NS,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "turn-user"},
               "data": {"secret": base64("first-turn-secret")}}),
    )
    .await?;
    let sc: SignalingCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
        "metadata": {"name": "sc1", "namespace": NS},
        "spec": {
            "replicas": 2,
            "ice": {"turnUrls": ["turn:turn.example.com:3478"], "turnSecretRef": {"name": "turn-user"}},
            "autoscaling": {"enabled": false},
            "podDisruptionBudget": {"enabled": false}
        }
    }))?;
    let sc = w.clusters().create(&PostParams::default(), &sc).await?;
    w.uid = sc
        .uid()
        .ok_or_else(|| anyhow!("created cluster has no uid"))?;
    let log_dir = w.rig.run_dir.clone();
    for name in ["op-a", "op-b"] {
        w.ops
            .push(Operator::spawn(name, &w.sa_kubeconfig, &w.args, &log_dir)?);
    }
    Ok("sc1 created; op-a and op-b started as the chart's ServiceAccount".to_owned())
}

async fn every_child_is_owned_and_written_by_the_operator(w: &mut World<'_>) -> Result<String> {
    let uid = w.uid.clone();
    eventually("every child of sc1", Duration::from_secs(60), || async {
        let mut metas = Vec::new();
        for (what, meta) in sc1_children(&w.admin).await? {
            let Some(meta) = meta else { return Ok(None) };
            metas.push((what, meta));
        }
        for (what, meta) in &metas {
            ensure!(
                owned_by(meta, &uid),
                "{what} has no controller owner reference to sc1"
            );
            ensure!(
                managed_by_operator(meta),
                "{what} has no managedFields entry of {FIELD_MANAGER}"
            );
        }
        Ok(Some(()))
    })
    .await?;
    ensure!(
        w.secrets().get_opt("sc1-turn").await?.is_none(),
        "a TURN secret was generated although the spec references the user's"
    );
    Ok("all children exist with owner references and the operator's field manager".to_owned())
}

async fn one_leader_alone_reconciles(w: &mut World<'_>) -> Result<String> {
    let leader = eventually("a lease holder", Duration::from_secs(20), || async {
        lease_holder(&w.admin, &w.lease_name).await
    })
    .await?;
    (w.leader, w.follower) = if leader == "op-a" { (0, 1) } else { (1, 0) };
    let (li, fi) = (w.leader, w.follower);
    ensure!(
        w.ops[li].name == leader,
        "lease held by unknown identity {leader}"
    );
    // The counter moves when a reconcile ends (after status and events), a little after the
    // children appear.
    eventually(
        "the leader's reconcile counter",
        Duration::from_secs(10),
        || async { Ok((w.reconciles(li).await >= 1.0).then_some(())) },
    )
    .await?;
    ensure!(
        w.reconcile_count(fi).await == Some(0.0),
        "the follower reconciled (or serves no metrics)"
    );
    ensure!(
        w.ops[fi].metric("switchboard_operator_leader").await == Some(0.0),
        "follower reports leader=1"
    );
    ensure!(
        common::http::get(w.ops[fi].metrics, "/readyz").await?.0 == 200,
        "follower is not ready"
    );
    Ok(format!("{leader} leads and alone reconciles"))
}

async fn servers_ready_is_false_while_pods_are_pending(w: &mut World<'_>) -> Result<String> {
    let clusters = w.clusters();
    // Conditions carry observedGeneration; ServersReady=False while pods are Pending.
    let pending = eventually(
        "ServersReady=False/PodsPending",
        Duration::from_secs(30),
        || async {
            let sc = clusters.get("sc1").await?;
            let generation = sc.metadata.generation;
            let Some(status) = sc.status.as_ref() else {
                return Ok(None);
            };
            if status.observed_generation != generation {
                return Ok(None);
            }
            for t in ["Ready", "ConfigValid", "RedisReady", "ServersReady"] {
                let Some(c) = condition(&sc, t) else {
                    return Ok(None);
                };
                ensure!(
                    c.observed_generation == generation,
                    "{t} has observedGeneration {:?}",
                    c.observed_generation
                );
            }
            let servers = condition(&sc, "ServersReady").cloned();
            Ok(servers.filter(|c| c.status == "False" && c.reason == "PodsPending"))
        },
    )
    .await?;
    ensure!(
        pending.message.contains("kubectl"),
        "ServersReady message gives no command to act on: {}",
        pending.message
    );
    let sc_now = clusters.get("sc1").await?;
    ensure!(
        condition(&sc_now, "ConfigValid").is_some_and(|c| c.status == "True"),
        "ConfigValid not True"
    );
    ensure!(
        condition(&sc_now, "Ready").is_some_and(|c| c.status == "False"),
        "Ready while pods Pending"
    );
    // The status is the operator's server-side apply (not an update), on 1.20 too.
    ensure_status_applied(&sc_now)?;
    Ok("ServersReady=False (PodsPending) while pods are Pending; status applied".to_owned())
}

async fn ready_pods_make_the_cluster_ready(w: &mut World<'_>) -> Result<String> {
    let clusters = w.clusters();
    // Pods become ready (as a kubelet would report): ServersReady and Ready turn True.
    eventually(
        "ServersReady=True and Ready=True",
        Duration::from_secs(60),
        || async {
            make_pods_ready(&w.admin).await?;
            let sc = clusters.get("sc1").await?;
            let ok = |t| condition(&sc, t).is_some_and(|c| c.status == "True");
            Ok((ok("ServersReady")
                && ok("RedisReady")
                && ok("Ready")
                && sc.status.as_ref().and_then(|s| s.ready_replicas) == Some(2))
            .then_some(()))
        },
    )
    .await?;
    Ok("ServersReady=True, Ready=True, readyReplicas=2".to_owned())
}

async fn sigterm_hands_over_and_the_new_leader_writes_nothing(w: &mut World<'_>) -> Result<String> {
    // Graceful handover: SIGTERM the leader; the follower takes over at once (Lease
    // released), reconciles everything again and writes nothing; generated Secrets survive.
    let (li, fi) = (w.leader, w.follower);
    let secrets = w.secrets();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = snapshot(&w.admin).await?;
    let events_before = cluster_events(&w.admin).await?;
    ensure!(
        events_before
            .iter()
            .any(|e| e.type_ == "Normal" && e.reason == "Applied"),
        "no Applied event: {events_before:?}"
    );
    // Each generated Secret has its own event, with its own note (not folded into the first).
    for secret in ["sc1-jwt", "sc1-redis-auth"] {
        let note = format!("generated Secret {secret}");
        ensure!(
            events_before
                .iter()
                .any(|e| e.reason == "SecretGenerated" && e.note == note),
            "no SecretGenerated event with note {note:?}: {events_before:?}"
        );
    }
    let jwt_before = secrets.get("sc1-jwt").await?.data;
    w.ops[li].terminate()?;
    let new_leader = w.ops[fi].name.clone();
    w.wait_for_holder(
        "the follower to take over the released Lease",
        &new_leader,
        Duration::from_secs(10),
    )
    .await?;
    eventually(
        "the new leader to reconcile",
        Duration::from_secs(20),
        || async { Ok((w.reconciles(fi).await >= 1.0).then_some(())) },
    )
    .await?;
    // A few seconds for any write a reconcile would make to land.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = snapshot(&w.admin).await?;
    ensure!(
        before == after,
        "a reconcile of an unchanged cluster wrote:\nbefore {before:#?}\nafter {after:#?}"
    );
    ensure!(
        secrets.get("sc1-jwt").await?.data == jwt_before,
        "generated JWT secret changed across restart"
    );
    let events_after = cluster_events(&w.admin).await?;
    ensure!(
        events_after == events_before,
        "a reconcile without transitions published events:\nbefore {events_before:?}\nafter {events_after:?}"
    );
    Ok(format!(
        "SIGTERM {} → {new_leader} took over; re-reconcile wrote nothing",
        w.ops[li].name
    ))
}

async fn sigkill_lets_the_standby_take_over_when_the_lease_expires(
    w: &mut World<'_>,
) -> Result<String> {
    // The restarted first operator takes over once the killed leader's Lease expires.
    let fi = w.follower;
    let restarted = format!("{}-2", w.ops[w.leader].name);
    let log_dir = w.rig.run_dir.clone();
    w.ops.push(Operator::spawn(
        &restarted,
        &w.sa_kubeconfig,
        &w.args,
        &log_dir,
    )?);
    let ri = w.ops.len() - 1;
    w.standby = ri;
    eventually("the standby's /readyz", Duration::from_secs(15), || async {
        Ok(common::http::get(w.ops[ri].metrics, "/readyz")
            .await
            .ok()
            .filter(|(code, _)| *code == 200))
    })
    .await?;
    // Two election rounds: a standby that wrongly took the Lease would have reconciled by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        w.reconcile_count(ri).await == Some(0.0),
        "a second replica reconciles while another leads"
    );
    w.ops[fi].kill();
    let took = Instant::now();
    w.wait_for_holder(
        "the standby to take over after SIGKILL",
        &restarted,
        Duration::from_secs(LEASE_SECS * 5),
    )
    .await?;
    Ok(format!(
        "SIGKILL {} → {restarted} took over in {:.1}s",
        w.ops[fi].name,
        took.elapsed().as_secs_f64()
    ))
}

async fn a_lost_lease_stops_the_controller_until_given_back(w: &mut World<'_>) -> Result<String> {
    // Another holder writes the Lease: the leader stops its controller at its next round and
    // reconciles nothing; given back, it resumes.
    let ri = w.standby;
    let restarted = w.ops[ri].name.clone();
    set_lease_holder(&w.admin, &w.lease_name, Some("intruder")).await?;
    eventually(
        "the ousted leader to report leader=0",
        Duration::from_secs(10),
        || async {
            Ok((w.ops[ri].metric("switchboard_operator_leader").await == Some(0.0)).then_some(()))
        },
    )
    .await?;
    let count = w.reconcile_count(ri).await;
    w.clusters()
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        w.reconcile_count(ri).await == count,
        "a replica that lost the Lease still reconciles"
    );
    set_lease_holder(&w.admin, &w.lease_name, None).await?;
    eventually(
        "the replica to lead again",
        Duration::from_secs(10),
        || async {
            Ok(
                (w.ops[ri].metric("switchboard_operator_leader").await == Some(1.0)
                    && lease_holder(&w.admin, &w.lease_name).await?.as_deref()
                        == Some(restarted.as_str()))
                .then_some(()),
            )
        },
    )
    .await?;
    Ok("Lease taken away → controller stopped; given back → leading again".to_owned())
}

async fn a_deleted_deployment_comes_back(w: &mut World<'_>) -> Result<String> {
    let deployments = w.deployments();
    let old = deployments.get("sc1-server").await?;
    deployments
        .delete("sc1-server", &DeleteParams::foreground())
        .await?;
    let old_uid = old.uid();
    eventually(
        "the deleted Deployment to come back",
        Duration::from_secs(60),
        || async {
            Ok(deployments
                .get_opt("sc1-server")
                .await?
                .filter(|d| d.uid() != old_uid && owned_by(&d.metadata, &w.uid))
                .map(|_| ()))
        },
    )
    .await?;
    Ok("deleted Deployment recreated".to_owned())
}

async fn a_replicas_change_reaches_the_deployment(w: &mut World<'_>) -> Result<String> {
    let deployments = w.deployments();
    w.patch_spec(json!({"replicas": 3})).await?;
    eventually("Deployment replicas 3", Duration::from_secs(30), || async {
        Ok((deployments
            .get("sc1-server")
            .await?
            .spec
            .and_then(|s| s.replicas)
            == Some(3))
        .then_some(()))
    })
    .await?;
    expect_event(
        &w.admin,
        "Normal",
        "Applied",
        "updated Deployment sc1-server",
    )
    .await?;
    Ok("spec.replicas=3 applied (+ Applied event: updated Deployment)".to_owned())
}

async fn rotating_the_turn_secret_rolls_the_pods(w: &mut World<'_>) -> Result<String> {
    let (deployments, secrets) = (w.deployments(), w.secrets());
    let hash_before = config_hash(&deployments.get("sc1-server").await?)
        .ok_or_else(|| anyhow!("no config-hash annotation on the pod template"))?;
    let rotated = secrets
        .patch(
            "turn-user",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"secret": base64("second-turn-secret")}})),
        )
        .await?;
    w.user_rv = rotated.resource_version();
    let hash_after = eventually(
        "the config hash to change after TURN rotation",
        Duration::from_secs(30),
        || async {
            let h = config_hash(&deployments.get("sc1-server").await?);
            Ok(h.filter(|h| *h != hash_before))
        },
    )
    .await?;
    let config = secrets.get("sc1-config").await?;
    let yaml = config
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    ensure!(
        yaml.contains("second-turn-secret"),
        "config.yaml does not carry the rotated TURN secret"
    );
    ensure!(
        switchboard_operator::config::sha256_hex(yaml.as_bytes()) == hash_after,
        "config-hash is not the sha256 of config.yaml"
    );
    Ok("new config-hash (= sha256 of config.yaml)".to_owned())
}

async fn a_missing_secret_is_reported_and_what_runs_is_untouched(
    w: &mut World<'_>,
) -> Result<String> {
    let (clusters, deployments, secrets) = (w.clusters(), w.deployments(), w.secrets());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dep_before = deployments.get("sc1-server").await?;
    let cfg_before = secrets.get("sc1-config").await?;
    w.patch_spec(json!({"ice": {"turnSecretRef": {"name": "does-not-exist"}}}))
        .await?;
    let invalid = eventually("ConfigValid=False", Duration::from_secs(30), || async {
        let sc = clusters.get("sc1").await?;
        Ok(condition(&sc, "ConfigValid")
            .filter(|c| c.status == "False" && c.observed_generation == sc.metadata.generation)
            .cloned())
    })
    .await?;
    ensure!(
        invalid.reason == "SecretNotFound",
        "reason {}",
        invalid.reason
    );
    ensure!(
        invalid.message.contains("does-not-exist") && invalid.message.contains(NS),
        "message does not name the Secret and namespace: {}",
        invalid.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dep_after = deployments.get("sc1-server").await?;
    ensure!(
        dep_after.spec == dep_before.spec
            && operator_fields(&dep_after.metadata) == operator_fields(&dep_before.metadata),
        "the Deployment was changed while the config is invalid"
    );
    ensure!(
        secrets.get("sc1-config").await?.resource_version() == cfg_before.resource_version(),
        "the config Secret was changed while the config is invalid"
    );
    expect_event(&w.admin, "Warning", "SecretNotFound", "does-not-exist").await?;
    Ok(format!(
        "ConfigValid=False ({}) + Warning event: {}",
        invalid.reason, invalid.message
    ))
}

async fn autoscaling_on_1_20_is_a_readable_api_unavailable(w: &mut World<'_>) -> Result<String> {
    // No autoscaling/v2 on 1.20: a readable ApiUnavailable, not a retry loop.
    let clusters = w.clusters();
    w.patch_spec(json!({
        "ice": {"turnSecretRef": {"name": "turn-user"}},
        "autoscaling": {"enabled": true}
    }))
    .await?;
    let no_hpa = eventually(
        "ConfigValid=False/ApiUnavailable for autoscaling",
        Duration::from_secs(30),
        || async {
            let sc = clusters.get("sc1").await?;
            Ok(condition(&sc, "ConfigValid")
                .filter(|c| {
                    c.reason == "ApiUnavailable" && c.observed_generation == sc.metadata.generation
                })
                .cloned())
        },
    )
    .await?;
    ensure!(
        no_hpa.message.contains("autoscaling/v2"),
        "{}",
        no_hpa.message
    );
    // ConfigValid stayed False (SecretNotFound → ApiUnavailable): still a Warning event.
    expect_event(&w.admin, "Warning", "ApiUnavailable", "autoscaling/v2").await?;

    // Back to valid.
    w.patch_spec(json!({"autoscaling": {"enabled": false}}))
        .await?;
    eventually(
        "ConfigValid=True again",
        Duration::from_secs(30),
        || async {
            let sc = clusters.get("sc1").await?;
            Ok(condition(&sc, "ConfigValid")
                .filter(|c| c.status == "True")
                .map(|_| ()))
        },
    )
    .await?;
    Ok(format!(
        "ConfigValid=False (ApiUnavailable): {}; valid again once off",
        no_hpa.message
    ))
}

async fn optional_parts_turned_off_are_deleted(w: &mut World<'_>) -> Result<String> {
    // An Ingress switched on, then off together with the Redis NetworkPolicy (on by
    // default): both objects go.
    let (clusters, netpols) = (w.clusters(), w.netpols());
    let ingresses: Api<Ingress> = w.api();
    w.patch_spec(json!({"ingress": {"enabled": true, "host": "signal.example.com"}}))
        .await?;
    eventually(
        "the Ingress sc1-server and its endpoint",
        Duration::from_secs(30),
        || async {
            let endpoint = clusters.get("sc1").await?.status.and_then(|s| s.endpoint);
            Ok((ingresses.get_opt("sc1-server").await?.is_some()
                && endpoint.as_deref() == Some("http://signal.example.com"))
            .then_some(()))
        },
    )
    .await?;
    ensure!(
        netpols.get_opt("sc1-redis").await?.is_some(),
        "no NetworkPolicy sc1-redis before turning it off"
    );
    w.patch_spec(json!({
        "ingress": {"enabled": false},
        "networkPolicy": {"enabled": false}
    }))
    .await?;
    eventually(
        "the Ingress and the NetworkPolicy to be deleted, the endpoint the Service's again",
        Duration::from_secs(30),
        || async {
            let endpoint = clusters.get("sc1").await?.status.and_then(|s| s.endpoint);
            Ok((ingresses.get_opt("sc1-server").await?.is_none()
                && netpols.get_opt("sc1-redis").await?.is_none()
                && endpoint.as_deref() == Some("http://sc1-server.e2e.svc"))
            .then_some(()))
        },
    )
    .await?;
    Ok("ingress on → Ingress created (endpoint its host); ingress and networkPolicy off → both deleted".to_owned())
}

async fn the_users_secret_is_never_written(w: &mut World<'_>) -> Result<String> {
    let user = w.secrets().get("turn-user").await?;
    ensure!(
        user.resource_version() == w.user_rv,
        "the user's TURN Secret was modified"
    );
    ensure!(
        !managed_by_operator(&user.metadata),
        "the operator wrote to the user's TURN Secret"
    );
    Ok("resourceVersion unchanged since the test's rotation, no operator field manager".to_owned())
}

/// config.yaml of the config Secret `name`, or "" while it does not exist.
async fn config_yaml(secrets: &Api<Secret>, name: &str) -> Result<String> {
    Ok(secrets
        .get_opt(name)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("config.yaml").map(|b| b.0.clone()))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default())
}

async fn spec_resume_renders_its_settings_and_one_key_every_replica_shares(
    w: &mut World<'_>,
) -> Result<String> {
    // A cluster with a public JWT key: its servers have no shared HS256 secret to derive the
    // resume key from, so the operator generates one into `rs-resume` and renders it with the
    // spec's settings; the key survives reconciles, and a bad resume spec is a readable
    // condition (1.20 ignores CEL) or an API refusal (ranges), never a rendered config.
    let (clusters, secrets) = (w.clusters(), w.secrets());
    let pem = std::fs::read_to_string(switchboard_e2e::token::rsa_public_key_path())?;
    create::<Secret>(
        &w.admin,
        NS,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rs-jwt-pub"},
               "data": {"public.pem": base64(&pem)}}),
    )
    .await?;
    let sc: SignalingCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
        "metadata": {"name": "rs", "namespace": NS},
        "spec": {
            "replicas": 2,
            "auth": {"algorithm": "RS256", "secretRef": {"name": "rs-jwt-pub"}},
            "resume": {"graceSeconds": 45, "inboxMessages": 512, "inboxBytes": 2097152},
            "autoscaling": {"enabled": false},
            "podDisruptionBudget": {"enabled": false}
        }
    }))?;
    let uid = clusters
        .create(&PostParams::default(), &sc)
        .await?
        .uid()
        .ok_or_else(|| anyhow!("created cluster rs has no uid"))?;
    let (key, generated) = eventually(
        "rs-resume and a config carrying the spec's resume settings and that key",
        Duration::from_secs(60),
        || async {
            let Some(generated) = secrets.get_opt("rs-resume").await? else {
                return Ok(None);
            };
            let key = generated
                .data
                .as_ref()
                .and_then(|d| d.get("secret"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            let yaml = config_yaml(&secrets, "rs-config").await?;
            let want = format!(
                "\nresume:\n  grace_secs: 45\n  inbox_messages: 512\n  inbox_bytes: 2097152\n  secret: {key}\n"
            );
            Ok((!key.is_empty() && yaml.ends_with(&want)).then_some((key, generated)))
        },
    )
    .await?;
    ensure!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "the generated resume key is not 32 random bytes in hex ({} characters)",
        key.len()
    );
    ensure!(
        owned_by(&generated.metadata, &uid)
            && generated
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("switchboard.dev/generated"))
                .map(String::as_str)
                == Some("true"),
        "rs-resume is not owned by rs or not marked generated"
    );

    // A settings change re-renders the config with the same key; the key is never rewritten.
    clusters
        .patch(
            "rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resume": {"graceSeconds": 60}}})),
        )
        .await?;
    eventually(
        "the config to carry graceSeconds 60 and the same key",
        Duration::from_secs(30),
        || async {
            let yaml = config_yaml(&secrets, "rs-config").await?;
            Ok((yaml.contains("\nresume:\n  grace_secs: 60\n")
                && yaml.ends_with(&format!("  secret: {key}\n")))
            .then_some(()))
        },
    )
    .await?;
    ensure!(
        secrets.get("rs-resume").await?.resource_version() == generated.resource_version(),
        "a reconcile rewrote the generated resume key"
    );

    // Out of range: the API server refuses it (the schema's maximum), naming the field.
    let refused = clusters
        .patch(
            "rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resume": {"graceSeconds": 7200}}})),
        )
        .await;
    match refused {
        Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("graceSeconds") => {}
        other => {
            return Err(anyhow!(
                "graceSeconds 7200 was not refused with 422: {other:?}"
            ))
        }
    }
    // A key with resume off: CEL on 1.25+; here the operator reports it and renders nothing.
    let cfg_before = secrets.get("rs-config").await?;
    clusters
        .patch(
            "rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resume": {"graceSeconds": 0, "secretRef": {"name": "rs-jwt-pub"}}}})),
        )
        .await?;
    let invalid = eventually(
        "rs ConfigValid=False for a resume key with resume off",
        Duration::from_secs(30),
        || async {
            let sc = clusters.get("rs").await?;
            Ok(condition(&sc, "ConfigValid")
                .filter(|c| c.status == "False" && c.observed_generation == sc.metadata.generation)
                .cloned())
        },
    )
    .await?;
    ensure!(
        invalid.reason == "InvalidSpec"
            && invalid
                .message
                .starts_with(switchboard_operator::api::MSG_RESUME_SECRET_WITHOUT_RESUME),
        "ConfigValid=False {}: {}",
        invalid.reason,
        invalid.message
    );
    ensure!(
        secrets.get("rs-config").await?.resource_version() == cfg_before.resource_version(),
        "the config Secret was changed while the resume spec is invalid"
    );
    // Resume off without the reference: valid, rendered as 0 and without a key.
    clusters
        .patch(
            "rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resume": {"secretRef": null}}})),
        )
        .await?;
    eventually(
        "rs valid again with resume off, its config without a key",
        Duration::from_secs(30),
        || async {
            let sc = clusters.get("rs").await?;
            let valid = condition(&sc, "ConfigValid").is_some_and(|c| {
                c.status == "True" && c.observed_generation == sc.metadata.generation
            });
            let yaml = config_yaml(&secrets, "rs-config").await?;
            Ok((valid
                && yaml.ends_with(
                    "\nresume:\n  grace_secs: 0\n  inbox_messages: 512\n  inbox_bytes: 2097152\n",
                ))
            .then_some(()))
        },
    )
    .await?;
    ensure!(
        secrets.get("rs-resume").await?.resource_version() == generated.resource_version(),
        "turning resume off rewrote or deleted the generated key"
    );
    for op in &w.ops {
        let log = std::fs::read_to_string(&op.log).unwrap_or_default();
        ensure!(
            !log.contains(&key),
            "operator {} logged the resume key",
            op.name
        );
    }
    clusters.delete("rs", &DeleteParams::background()).await?;
    Ok("rs-resume generated once (64 hex), rendered with the settings; kept across a settings change and resume off; 7200 s refused by the API server; key with resume off → ConfigValid=False InvalidSpec; key never logged".to_owned())
}

async fn paused_reconciles_nothing_and_unpausing_clears_paused(
    w: &mut World<'_>,
) -> Result<String> {
    // Paused condition, nothing is reconciled (a deleted Deployment stays gone) until
    // unpaused; then the Deployment is back and the Paused condition is gone from the
    // (server-side applied) status.
    let (clusters, deployments) = (w.clusters(), w.deployments());
    w.patch_spec(json!({"paused": true})).await?;
    eventually("Paused=True", Duration::from_secs(30), || async {
        let sc = clusters.get("sc1").await?;
        Ok(condition(&sc, "Paused")
            .filter(|c| c.status == "True")
            .map(|_| ()))
    })
    .await?;
    deployments
        .delete("sc1-server", &DeleteParams::background())
        .await?;
    eventually(
        "the Deployment to be gone",
        Duration::from_secs(30),
        || async {
            Ok(deployments
                .get_opt("sc1-server")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        deployments.get_opt("sc1-server").await?.is_none(),
        "a paused cluster was reconciled (Deployment recreated)"
    );
    w.patch_spec(json!({"paused": false})).await?;
    eventually(
        "the Deployment back and Paused gone after unpausing",
        Duration::from_secs(30),
        || async {
            let sc = clusters.get("sc1").await?;
            Ok((deployments.get_opt("sc1-server").await?.is_some()
                && condition(&sc, "Paused").is_none())
            .then_some(()))
        },
    )
    .await?;
    let sc = clusters.get("sc1").await?;
    let types: Vec<&str> = sc
        .status
        .as_ref()
        .map(|s| s.conditions.iter().map(|c| c.type_.as_str()).collect())
        .unwrap_or_default();
    ensure!(
        types == ["Ready", "ConfigValid", "RedisReady", "ServersReady"],
        "conditions after unpausing: {types:?}"
    );
    ensure_status_applied(&sc)?;
    Ok("paused: Paused=True, no reconcile; unpaused: Deployment back, Paused removed".to_owned())
}

async fn deleting_the_cluster_collects_every_child(w: &mut World<'_>) -> Result<String> {
    // KCM's garbage collector deletes what the cluster owns.
    let secrets = w.secrets();
    w.clusters()
        .delete("sc1", &DeleteParams::background())
        .await?;
    eventually(
        "every child to be garbage-collected",
        Duration::from_secs(90),
        || async {
            let children = sc1_children(&w.admin).await?;
            Ok(children
                .iter()
                .all(|(_, meta)| meta.is_none())
                .then_some(()))
        },
    )
    .await?;
    ensure!(
        secrets.get_opt("turn-user").await?.is_some(),
        "the user's Secret was deleted with the cluster"
    );
    for op in w.ops.iter_mut() {
        if op.pid().is_some() {
            op.terminate()?;
        }
    }
    Ok("all children garbage-collected, user Secret kept; operators stopped".to_owned())
}

async fn namespace_scope_needs_only_a_role(w: &mut World<'_>) -> Result<String> {
    // The chart's namespace scope: Role-only RBAC, the operator watches its namespace only.
    let scoped_ns = "e2e-scoped";
    create_cluster_scoped::<Namespace>(
        &w.admin,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": scoped_ns}}),
    )
    .await?;
    let (ns_sa, ns_args) =
        install_chart_rbac(&w.admin, "sbns", scoped_ns, &["rbac.scope=namespace"]).await?;
    ensure!(
        ns_args
            .iter()
            .any(|a| a == &format!("--namespace={scoped_ns}")),
        "namespace-scoped chart does not pass --namespace={scoped_ns}: {ns_args:?}"
    );
    let ns_kubeconfig = service_account_kubeconfig(&w.admin, w.rig, &ns_sa, scoped_ns).await?;
    let scoped: Api<SignalingCluster> = Api::namespaced(w.admin.clone(), scoped_ns);
    let outside = w.clusters();
    for (api, ns) in [(&scoped, scoped_ns), (&outside, NS)] {
        let sc: SignalingCluster = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "scoped", "namespace": ns},
            "spec": {"replicas": 1}
        }))?;
        api.create(&PostParams::default(), &sc).await?;
    }
    let log_dir = w.rig.run_dir.clone();
    w.ops.push(Operator::spawn(
        "ns-op",
        &ns_kubeconfig,
        &ns_args,
        &log_dir,
    )?);
    let scoped_deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), scoped_ns);
    eventually(
        "the namespace-scoped operator to reconcile its namespace",
        Duration::from_secs(60),
        || async {
            let sc = scoped.get("scoped").await?;
            let valid = condition(&sc, "ConfigValid").is_some_and(|c| c.status == "True");
            let deployed = scoped_deployments.get_opt("scoped-server").await?.is_some();
            Ok((valid && deployed).then_some(()))
        },
    )
    .await?;
    ensure!(
        outside.get("scoped").await?.status.is_none()
            && w.deployments().get_opt("scoped-server").await?.is_none(),
        "the namespace-scoped operator touched a cluster outside its namespace"
    );
    let last = w.ops.len() - 1;
    w.ops[last].terminate()?;
    Ok("Role-only RBAC suffices, other namespaces untouched".to_owned())
}

async fn every_example_is_accepted_by_the_api_server(w: &mut World<'_>) -> Result<String> {
    let examples = dry_run_examples(&w.admin).await?;
    Ok(format!(
        "{examples} docs/examples documents accepted (server-side dry run)"
    ))
}

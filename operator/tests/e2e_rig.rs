//! End to end against a real kube-apiserver 1.20 + kube-controller-manager started from
//! `tests/k8s-rig.sh` on free loopback ports (one rig for the whole binary run, stopped at the
//! end). The operator binary runs as the Helm chart's ServiceAccount with the chart's RBAC and
//! the chart's container args, so this also proves the chart and the binary agree.
//!
//! Needs: `tests/k8s-rig.sh ensure` (kube binaries + etcd) and `tests/tools.sh` (helm).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use switchboard_operator::api::SignalingCluster;
use tokio::io::AsyncReadExt;

mod common;

const OPERATOR_NS: &str = "switchboard-system";
const NS: &str = "e2e";
const RELEASE: &str = "sb";
const FIELD_MANAGER: &str = "switchboard-operator";
const LEASE_SECS: u64 = 4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn rig_dir() -> PathBuf {
    if let Ok(d) = std::env::var("RIG_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("switchboard-k8s-rig")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port p with p+1 free too (etcd's peer port).
fn free_port_pair() -> Result<u16> {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no two adjacent free ports found")
}

/// One rig (etcd + kube-apiserver + KCM) in its own run dir; stopped on drop.
struct Rig {
    env: Vec<(String, String)>,
    run_dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Rig {
    fn start() -> Result<Rig> {
        let bin = rig_dir().join("bin");
        ensure!(
            bin.join("kube-apiserver").exists() && bin.join("kube-controller-manager").exists(),
            "no kube-apiserver/kube-controller-manager in {}: run tests/k8s-rig.sh ensure",
            bin.display()
        );
        let run_dir =
            std::env::temp_dir().join(format!("switchboard-e2e-rig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir)?;
        let env = vec![
            ("RIG_RUN_DIR".to_owned(), run_dir.display().to_string()),
            ("RIG_APISERVER_PORT".to_owned(), free_port()?.to_string()),
            ("RIG_ETCD_PORT".to_owned(), free_port_pair()?.to_string()),
            ("RIG_KCM_PORT".to_owned(), free_port()?.to_string()),
            ("RIG_WITH_KCM".to_owned(), "1".to_owned()),
            // The rig is thrown away: no graceful shutdowns needed.
            ("RIG_FAST_STOP".to_owned(), "1".to_owned()),
        ];
        let mut rig = Rig {
            env,
            run_dir: run_dir.clone(),
            kubeconfig: run_dir.join("kubeconfig"),
        };
        let out = rig.script("start")?;
        ensure!(
            out.status.success(),
            "tests/k8s-rig.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        rig.kubeconfig = PathBuf::from(printed);
        Ok(rig)
    }

    fn script(&self, cmd: &str) -> Result<std::process::Output> {
        Command::new("bash")
            .arg(repo_root().join("tests/k8s-rig.sh"))
            .arg(cmd)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .with_context(|| format!("running tests/k8s-rig.sh {cmd}"))
    }

    async fn admin(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.script("stop");
        if std::env::var("E2E_KEEP_RIG_DIR").is_err() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// An operator process; SIGKILLed on drop.
struct Operator {
    name: String,
    child: Option<Child>,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Operator {
    fn spawn(name: &str, kubeconfig: &Path, args: &[String], log_dir: &Path) -> Result<Operator> {
        let port = free_port()?;
        let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("--metrics-addr") {
                    format!("--metrics-addr={metrics}")
                } else {
                    a.clone()
                }
            })
            .chain([format!("--lease-duration-secs={LEASE_SECS}")])
            .collect();
        // The chart sets POD_NAMESPACE from the downward API: the release namespace.
        let pod_namespace = args
            .iter()
            .find_map(|a| a.strip_prefix("--lease-namespace="))
            .unwrap_or(OPERATOR_NS)
            .to_owned();
        let log = log_dir.join(format!(
            "operator-{name}-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = unique(log);
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", pod_namespace)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("spawning switchboard-operator")?;
        Ok(Operator {
            name: name.to_owned(),
            child: Some(child),
            metrics,
            log,
        })
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = common::http::get(self.metrics, "/metrics").await.ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (graceful: releases the Lease) and wait.
    fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait()? {
                ensure!(
                    st.success(),
                    "operator {} exited with {st} after SIGTERM",
                    self.name
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("operator {} did not stop within 15 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no chance to release the Lease.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unique(p: PathBuf) -> PathBuf {
    if !p.exists() {
        return p;
    }
    let mut i = 1;
    loop {
        let c = p.with_extension(format!("{i}.log"));
        if !c.exists() {
            return c;
        }
        i += 1;
    }
}

/// Polls `f` every 250 ms until it returns `Some`, or fails after `limit` with what it saw last.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn helm() -> Result<PathBuf> {
    let p = std::env::var("SWITCHBOARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/switchboard-tools/helm")
        });
    ensure!(p.exists(), "no helm at {}: run tests/tools.sh", p.display());
    Ok(p)
}

async fn create<K>(client: &Client, ns: &str, v: Value) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v)?;
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating {} {}", K::kind(&()), obj.name_any()))?;
    Ok(())
}

async fn create_cluster_scoped<K>(client: &Client, v: Value) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v)?;
    Api::<K>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating {} {}", K::kind(&()), obj.name_any()))?;
    Ok(())
}

/// Renders the chart, creates its ServiceAccount and RBAC, returns the operator container args.
async fn install_chart_rbac(
    client: &Client,
    release: &str,
    namespace: &str,
    sets: &[&str],
) -> Result<(String, Vec<String>)> {
    let chart = repo_root().join("charts/switchboard-operator");
    let mut helm_cmd = Command::new(helm()?);
    helm_cmd.args(["template", release]).arg(&chart);
    for s in sets {
        helm_cmd.args(["--set", s]);
    }
    let out = helm_cmd
        .args(["-n", namespace, "--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/deployment.yaml"])
        .output()
        .context("running helm template")?;
    ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sa_name = None;
    let mut args = None;
    for doc in yaml_docs(&String::from_utf8_lossy(&out.stdout))? {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "ServiceAccount" => {
                sa_name = doc["metadata"]["name"].as_str().map(str::to_owned);
                create::<ServiceAccount>(client, namespace, doc).await?;
            }
            "ClusterRole" => create_cluster_scoped::<ClusterRole>(client, doc).await?,
            "ClusterRoleBinding" => {
                create_cluster_scoped::<ClusterRoleBinding>(client, doc).await?
            }
            "Role" => {
                let ns = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(namespace)
                    .to_owned();
                create::<Role>(client, &ns, doc).await?
            }
            "RoleBinding" => {
                let ns = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(namespace)
                    .to_owned();
                create::<RoleBinding>(client, &ns, doc).await?
            }
            "Deployment" => {
                let a = doc["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array()
                    .ok_or_else(|| anyhow!("chart Deployment has no container args"))?;
                args = Some(
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect::<Vec<_>>(),
                );
            }
            other => bail!("unexpected kind {other} in the chart's RBAC templates"),
        }
    }
    let sa = sa_name.ok_or_else(|| anyhow!("chart rendered no ServiceAccount"))?;
    let args = args.ok_or_else(|| anyhow!("chart rendered no Deployment"))?;
    Ok((sa, args))
}

/// A kubeconfig that authenticates as the ServiceAccount (1.20: a legacy token Secret the
/// token controller fills).
async fn service_account_kubeconfig(
    client: &Client,
    rig: &Rig,
    sa: &str,
    namespace: &str,
) -> Result<PathBuf> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = format!("{sa}-e2e-token");
    create::<Secret>(
        client,
        namespace,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": sa}},
            "type": "kubernetes.io/service-account-token"
        }),
    )
    .await?;
    let token = eventually(
        "the ServiceAccount token",
        Duration::from_secs(30),
        || async {
            let s = secrets.get(&name).await?;
            Ok(s.data
                .and_then(|d| d.get("token").cloned())
                .map(|t| String::from_utf8_lossy(&t.0).into_owned()))
        },
    )
    .await?;
    let admin = Kubeconfig::read_from(&rig.kubeconfig)?;
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("admin kubeconfig has no cluster"))?;
    let doc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "rig", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "rig", "user": sa}}],
        "current-context": "sa"
    });
    let path = rig.run_dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
    Ok(path)
}

async fn install_crd(client: &Client) -> Result<()> {
    let path = repo_root().join("crds/switchboard.dev_signalingclusters.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.create(&PostParams::default(), &crd)
        .await
        .with_context(|| format!("the API server refused {}", path.display()))?;
    eventually(
        "the CRD to be Established",
        Duration::from_secs(30),
        || async {
            let c = api.get("signalingclusters.switchboard.dev").await?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await
}

/// Every docs/examples/*.yaml document is accepted by the API server (server-side dry run).
async fn dry_run_examples(client: &Client) -> Result<usize> {
    let dir = repo_root().join("docs/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no docs/examples/*.yaml");
    let mut n = 0;
    for file in files {
        for mut doc in yaml_docs(&std::fs::read_to_string(&file)?)? {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let ar = match kind.as_str() {
                "SignalingCluster" => ApiResource::erase::<SignalingCluster>(&()),
                "Secret" => ApiResource::erase::<Secret>(&()),
                other => bail!(
                    "{}: unsupported kind {other:?} in an example",
                    file.display()
                ),
            };
            doc["metadata"]["namespace"] = json!(NS);
            let obj: DynamicObject = serde_json::from_value(doc)?;
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
            let pp = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            api.create(&pp, &obj).await.with_context(|| {
                format!(
                    "{}: {kind} {} refused by the API server",
                    file.display(),
                    obj.name_any()
                )
            })?;
            n += 1;
        }
    }
    Ok(n)
}

fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid && o.kind == "SignalingCluster" && o.controller == Some(true))
}

fn managed_by_operator(meta: &ObjectMeta) -> bool {
    meta.managed_fields
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
}

/// The operator's own managedFields entry (what it last wrote), for "untouched" checks that
/// must ignore writes by the controller-manager (Deployment status, etc.).
fn operator_fields(meta: &ObjectMeta) -> Value {
    let entries: Vec<Value> = meta
        .managed_fields
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .map(|m| json!({"op": m.operation, "time": m.time.as_ref().map(|t| t.0.to_string()), "sub": m.subresource, "fields": m.fields_v1.as_ref().map(|f| f.0.clone())}))
        .collect();
    Value::Array(entries)
}

fn condition<'a>(
    sc: &'a SignalingCluster,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    sc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

async fn lease_holder(client: &Client, lease: &str) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    Ok(api
        .get_opt(lease)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

/// Writes the Lease as another candidate would (`None` releases it), retrying on conflicts
/// with the operator's own renewals.
async fn set_lease_holder(client: &Client, lease: &str, holder: Option<&str>) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    eventually("writing the Lease", Duration::from_secs(10), || async {
        let mut l = api.get(lease).await?;
        let spec = l.spec.get_or_insert_with(Default::default);
        spec.holder_identity = holder.map(str::to_owned);
        spec.lease_duration_seconds = Some(if holder.is_some() { 3600 } else { 1 });
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        match api.replace(lease, &PostParams::default(), &l).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Resource versions of the cluster and everything it owns (plus the user's TURN Secret).
async fn snapshot(client: &Client) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    async fn rv<K>(client: &Client, name: &str, out: &mut BTreeMap<String, String>) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), NS);
        let obj = api
            .get(name)
            .await
            .with_context(|| format!("get {} {name}", K::kind(&())))?;
        out.insert(
            format!("{}/{name}", K::kind(&())),
            obj.resource_version().unwrap_or_default(),
        );
        Ok(())
    }
    rv::<SignalingCluster>(client, "sc1", &mut out).await?;
    rv::<Deployment>(client, "sc1-server", &mut out).await?;
    rv::<Service>(client, "sc1-server", &mut out).await?;
    rv::<StatefulSet>(client, "sc1-redis", &mut out).await?;
    rv::<Service>(client, "sc1-redis", &mut out).await?;
    rv::<NetworkPolicy>(client, "sc1-redis", &mut out).await?;
    for s in ["sc1-config", "sc1-jwt", "sc1-redis-auth", "turn-user"] {
        rv::<Secret>(client, s, &mut out).await?;
    }
    Ok(out)
}

/// Marks the cluster's pods Running and Ready, as a kubelet would (there is none in the rig).
async fn make_pods_ready(client: &Client) -> Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sc1"))
        .await?;
    let mut n = 0;
    for p in list {
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}
        ]}});
        pods.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
        n += 1;
    }
    Ok(n)
}

/// One Event about sc1.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ClusterEvent {
    type_: String,
    reason: String,
    note: String,
    count: i32,
}

/// Events about sc1, sorted.
async fn cluster_events(client: &Client) -> Result<Vec<ClusterEvent>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let mut out: Vec<ClusterEvent> = api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("SignalingCluster") && r.name.as_deref() == Some("sc1")
            })
        })
        .map(|e| ClusterEvent {
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            note: e.note.unwrap_or_default(),
            count: e.series.map(|s| s.count).unwrap_or(1),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Waits until an event of this type and reason whose note contains `needle` exists.
async fn expect_event(client: &Client, type_: &str, reason: &str, needle: &str) -> Result<()> {
    eventually(
        &format!("a {type_} {reason} event whose note contains {needle:?}"),
        Duration::from_secs(20),
        || async {
            Ok(cluster_events(client)
                .await?
                .iter()
                .any(|e| e.type_ == type_ && e.reason == reason && e.note.contains(needle))
                .then_some(()))
        },
    )
    .await
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("switchboard.dev/config-hash")
        .cloned()
}

fn step(name: &str, started: Instant) {
    eprintln!("[e2e {:>6.1}s] {name}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_api_server() -> Result<()> {
    let started = Instant::now();
    let rig = Rig::start()?;
    step("rig started", started);
    let mut operators: Vec<Operator> = Vec::new();
    // Every wait inside is bounded; this bounds the whole run too (a hung API call included).
    let result = match tokio::time::timeout(
        Duration::from_secs(300),
        scenario(&rig, &mut operators, started),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(anyhow!("the e2e scenario did not finish within 300 s")),
    };
    if result.is_err() {
        for op in &operators {
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
    drop(operators);
    drop(rig);
    step("done", started);
    result
}

async fn scenario(rig: &Rig, ops: &mut Vec<Operator>, t0: Instant) -> Result<()> {
    let admin = rig.admin().await?;

    // 1. Without the CRD the operator exits at once, naming the install command.
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
            .args(["run", "--metrics-addr=127.0.0.1:0", "--leader-elect=false"])
            .env("KUBECONFIG", &rig.kubeconfig)
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
    step("missing CRD: exit 1 with the install command", t0);

    // 2. CRD, namespaces, examples (server-side dry run).
    install_crd(&admin).await?;
    for ns in [OPERATOR_NS, NS] {
        create_cluster_scoped::<Namespace>(
            &admin,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    step("CRD installed", t0);

    // Pretty logs to a pipe (not a terminal) carry no ANSI colour codes.
    let mut pretty = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
        .args([
            "run",
            "--metrics-addr=127.0.0.1:0",
            "--leader-elect=false",
            "--log-format=pretty",
        ])
        .env("KUBECONFIG", &rig.kubeconfig)
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
    step("pretty logs to a pipe: no ANSI colour codes", t0);

    // 3. The chart's ServiceAccount + RBAC; two operators with the chart's args as that SA.
    let (sa, args) = install_chart_rbac(&admin, RELEASE, OPERATOR_NS, &[]).await?;
    let lease_name = args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name="))
        .ok_or_else(|| anyhow!("chart args have no --lease-name=: {args:?}"))?
        .to_owned();
    let sa_kubeconfig = service_account_kubeconfig(&admin, rig, &sa, OPERATOR_NS).await?;
    step("chart RBAC installed, ServiceAccount token ready", t0);

    // The user's TURN secret and the cluster (HPA/PDB off: 1.20 lacks their APIs).
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    create::<Secret>(
        &admin,
        NS,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "turn-user"},
               "data": {"secret": base64("first-turn-secret")}}),
    )
    .await?;
    let clusters: Api<SignalingCluster> = Api::namespaced(admin.clone(), NS);
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
    let sc = clusters.create(&PostParams::default(), &sc).await?;
    let uid = sc
        .uid()
        .ok_or_else(|| anyhow!("created cluster has no uid"))?;

    let log_dir = rig.run_dir.clone();
    ops.push(Operator::spawn("op-a", &sa_kubeconfig, &args, &log_dir)?);
    ops.push(Operator::spawn("op-b", &sa_kubeconfig, &args, &log_dir)?);

    // 4. Every child exists, owned by the cluster, written by the operator's field manager.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    let netpols: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NS);
    eventually("every child of sc1", Duration::from_secs(60), || async {
        let mut metas: Vec<(String, ObjectMeta)> = Vec::new();
        macro_rules! get {
            ($api:expr, $name:expr, $kind:expr) => {
                match $api.get_opt($name).await? {
                    Some(o) => metas.push((format!("{} {}", $kind, $name), o.metadata)),
                    None => return Ok(None),
                }
            };
        }
        get!(deployments, "sc1-server", "Deployment");
        get!(services, "sc1-server", "Service");
        get!(statefulsets, "sc1-redis", "StatefulSet");
        get!(services, "sc1-redis", "Service");
        get!(netpols, "sc1-redis", "NetworkPolicy");
        get!(secrets, "sc1-config", "Secret");
        get!(secrets, "sc1-jwt", "Secret");
        get!(secrets, "sc1-redis-auth", "Secret");
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
        secrets.get_opt("sc1-turn").await?.is_none(),
        "a TURN secret was generated although the spec references the user's"
    );
    step(
        "all children exist with owner references and the operator's field manager",
        t0,
    );

    // 5. Only one operator reconciles; it holds the Lease.
    let leader = eventually("a lease holder", Duration::from_secs(20), || async {
        lease_holder(&admin, &lease_name).await
    })
    .await?;
    let (li, fi) = if leader == "op-a" { (0, 1) } else { (1, 0) };
    ensure!(
        ops[li].name == leader,
        "lease held by unknown identity {leader}"
    );
    // The counter moves when a reconcile ends (after status and events), a little after the
    // children appear.
    eventually(
        "the leader's reconcile counter",
        Duration::from_secs(10),
        || async {
            Ok((ops[li]
                .metric("switchboard_operator_reconciles_total")
                .await
                .unwrap_or(0.0)
                >= 1.0)
                .then_some(()))
        },
    )
    .await?;
    ensure!(
        ops[fi]
            .metric("switchboard_operator_reconciles_total")
            .await
            == Some(0.0),
        "the follower reconciled (or serves no metrics)"
    );
    ensure!(
        ops[fi].metric("switchboard_operator_leader").await == Some(0.0),
        "follower reports leader=1"
    );
    ensure!(
        common::http::get(ops[fi].metrics, "/readyz").await?.0 == 200,
        "follower is not ready"
    );
    step(&format!("{leader} leads and alone reconciles"), t0);

    // 6. Status: conditions with observedGeneration; ServersReady=False while pods are Pending.
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
    step(
        "status: ServersReady=False (PodsPending) while pods are Pending",
        t0,
    );

    // 7. Pods become ready (as a kubelet would report): ServersReady and Ready turn True.
    eventually(
        "ServersReady=True and Ready=True",
        Duration::from_secs(60),
        || async {
            make_pods_ready(&admin).await?;
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
    step(
        "pods ready → ServersReady=True, Ready=True, readyReplicas=2",
        t0,
    );

    // 8. Graceful handover: SIGTERM the leader; the follower takes over at once (Lease
    //    released), reconciles everything again and writes nothing; generated Secrets survive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = snapshot(&admin).await?;
    let events_before = cluster_events(&admin).await?;
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
    ops[li].terminate()?;
    let new_leader = ops[fi].name.clone();
    eventually(
        "the follower to take over the released Lease",
        Duration::from_secs(10),
        || async {
            Ok(
                (lease_holder(&admin, &lease_name).await?.as_deref() == Some(new_leader.as_str()))
                    .then_some(()),
            )
        },
    )
    .await?;
    eventually(
        "the new leader to reconcile",
        Duration::from_secs(20),
        || async {
            Ok((ops[fi]
                .metric("switchboard_operator_reconciles_total")
                .await
                .unwrap_or(0.0)
                >= 1.0)
                .then_some(()))
        },
    )
    .await?;
    // A few seconds for any write a reconcile would make to land.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = snapshot(&admin).await?;
    ensure!(
        before == after,
        "a reconcile of an unchanged cluster wrote:\nbefore {before:#?}\nafter {after:#?}"
    );
    ensure!(
        secrets.get("sc1-jwt").await?.data == jwt_before,
        "generated JWT secret changed across restart"
    );
    let events_after = cluster_events(&admin).await?;
    ensure!(
        events_after == events_before,
        "a reconcile without transitions published events:\nbefore {events_before:?}\nafter {events_after:?}"
    );
    step(
        &format!("SIGTERM {leader} → {new_leader} took over; re-reconcile wrote nothing"),
        t0,
    );

    // 9. Kill -9 the leader: the restarted first operator takes over once the Lease expires.
    let restarted = format!("{leader}-2");
    ops.push(Operator::spawn(
        &restarted,
        &sa_kubeconfig,
        &args,
        &log_dir,
    )?);
    let ri = ops.len() - 1;
    let standby_ready = eventually("the standby's /readyz", Duration::from_secs(15), || async {
        Ok(common::http::get(ops[ri].metrics, "/readyz")
            .await
            .ok()
            .filter(|(code, _)| *code == 200))
    });
    standby_ready.await?;
    // Two election rounds: a standby that wrongly took the Lease would have reconciled by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        ops[ri]
            .metric("switchboard_operator_reconciles_total")
            .await
            == Some(0.0),
        "a second replica reconciles while another leads"
    );
    ops[fi].kill();
    let took = Instant::now();
    eventually(
        "the standby to take over after SIGKILL",
        Duration::from_secs(LEASE_SECS * 5),
        || async {
            Ok(
                (lease_holder(&admin, &lease_name).await?.as_deref() == Some(restarted.as_str()))
                    .then_some(()),
            )
        },
    )
    .await?;
    step(
        &format!(
            "SIGKILL {new_leader} → {restarted} took over in {:.1}s",
            took.elapsed().as_secs_f64()
        ),
        t0,
    );

    // 9b. Leadership taken away (another holder writes the Lease): the leader stops its
    //     controller at its next round and reconciles nothing; given back, it resumes.
    set_lease_holder(&admin, &lease_name, Some("intruder")).await?;
    eventually(
        "the ousted leader to report leader=0",
        Duration::from_secs(10),
        || async {
            Ok((ops[ri].metric("switchboard_operator_leader").await == Some(0.0)).then_some(()))
        },
    )
    .await?;
    let count = ops[ri]
        .metric("switchboard_operator_reconciles_total")
        .await;
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        ops[ri]
            .metric("switchboard_operator_reconciles_total")
            .await
            == count,
        "a replica that lost the Lease still reconciles"
    );
    set_lease_holder(&admin, &lease_name, None).await?;
    eventually(
        "the replica to lead again",
        Duration::from_secs(10),
        || async {
            Ok(
                (ops[ri].metric("switchboard_operator_leader").await == Some(1.0)
                    && lease_holder(&admin, &lease_name).await?.as_deref()
                        == Some(restarted.as_str()))
                .then_some(()),
            )
        },
    )
    .await?;
    step(
        "Lease taken away → controller stopped; given back → leading again",
        t0,
    );

    // 10. Drift: a deleted Deployment comes back.
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
                .filter(|d| d.uid() != old_uid && owned_by(&d.metadata, &uid))
                .map(|_| ()))
        },
    )
    .await?;
    step("deleted Deployment recreated", t0);

    // 11. spec.replicas change reaches the Deployment.
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
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
    expect_event(&admin, "Normal", "Applied", "updated Deployment sc1-server").await?;
    step(
        "spec.replicas=3 applied to the Deployment (+ Applied event: updated Deployment)",
        t0,
    );

    // 12. Rotating the referenced TURN Secret rolls the pods (config hash changes).
    let hash_before = config_hash(&deployments.get("sc1-server").await?)
        .ok_or_else(|| anyhow!("no config-hash annotation on the pod template"))?;
    let rotated = secrets
        .patch(
            "turn-user",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"secret": base64("second-turn-secret")}})),
        )
        .await?;
    let user_rv = rotated.resource_version();
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
    step(
        "TURN Secret rotation → new config-hash (= sha256 of config.yaml)",
        t0,
    );

    // 13. A reference to a missing Secret: ConfigValid=False with a readable message; what
    //     runs is left untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dep_before = deployments.get("sc1-server").await?;
    let cfg_before = secrets.get("sc1-config").await?;
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ice": {"turnSecretRef": {"name": "does-not-exist"}}}})),
        )
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
    expect_event(&admin, "Warning", "SecretNotFound", "does-not-exist").await?;
    step(
        &format!(
            "missing Secret → ConfigValid=False ({}) + Warning event: {}",
            invalid.reason, invalid.message
        ),
        t0,
    );

    // An HPA on 1.20 (no autoscaling/v2): a readable ApiUnavailable, not a retry loop.
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "ice": {"turnSecretRef": {"name": "turn-user"}},
                "autoscaling": {"enabled": true}
            }})),
        )
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
    expect_event(&admin, "Warning", "ApiUnavailable", "autoscaling/v2").await?;
    step(
        &format!(
            "autoscaling on 1.20 → ConfigValid=False (ApiUnavailable): {}",
            no_hpa.message
        ),
        t0,
    );

    // Back to valid.
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": {"enabled": false}}})),
        )
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

    // Turning optional parts off deletes them: an Ingress switched on, then off together with
    // the Redis NetworkPolicy (on by default) — both objects go.
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), NS);
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"ingress": {"enabled": true, "host": "signal.example.com"}}}),
            ),
        )
        .await?;
    eventually(
        "the Ingress sc1-server",
        Duration::from_secs(30),
        || async { Ok(ingresses.get_opt("sc1-server").await?.map(|_| ())) },
    )
    .await?;
    ensure!(
        netpols.get_opt("sc1-redis").await?.is_some(),
        "no NetworkPolicy sc1-redis before turning it off"
    );
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "ingress": {"enabled": false},
                "networkPolicy": {"enabled": false}
            }})),
        )
        .await?;
    eventually(
        "the Ingress and the NetworkPolicy to be deleted",
        Duration::from_secs(30),
        || async {
            Ok((ingresses.get_opt("sc1-server").await?.is_none()
                && netpols.get_opt("sc1-redis").await?.is_none())
            .then_some(()))
        },
    )
    .await?;
    step(
        "ingress on → Ingress created; ingress and networkPolicy off → both deleted",
        t0,
    );

    // 14. The user's Secret was never written by the operator.
    let user = secrets.get("turn-user").await?;
    ensure!(
        user.resource_version() == user_rv,
        "the user's TURN Secret was modified"
    );
    ensure!(
        !managed_by_operator(&user.metadata),
        "the operator wrote to the user's TURN Secret"
    );
    step("the user's Secret was never modified", t0);

    // 15. spec.paused: Paused condition, nothing is reconciled (a deleted Deployment stays
    //     gone) until unpaused.
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await?;
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
    clusters
        .patch(
            "sc1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await?;
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
    step(
        "paused: Paused=True, no reconcile; unpaused: Deployment back",
        t0,
    );

    // 16. Deleting the cluster garbage-collects every child (KCM's garbage collector).
    clusters.delete("sc1", &DeleteParams::background()).await?;
    eventually(
        "every child to be garbage-collected",
        Duration::from_secs(90),
        || async {
            let gone = deployments.get_opt("sc1-server").await?.is_none()
                && services.get_opt("sc1-server").await?.is_none()
                && services.get_opt("sc1-redis").await?.is_none()
                && statefulsets.get_opt("sc1-redis").await?.is_none()
                && netpols.get_opt("sc1-redis").await?.is_none()
                && secrets.get_opt("sc1-config").await?.is_none()
                && secrets.get_opt("sc1-jwt").await?.is_none()
                && secrets.get_opt("sc1-redis-auth").await?.is_none();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    ensure!(
        secrets.get_opt("turn-user").await?.is_some(),
        "the user's Secret was deleted with the cluster"
    );
    step(
        "cluster deleted → all children garbage-collected, user Secret kept",
        t0,
    );

    for op in ops.iter_mut() {
        if op.pid().is_some() {
            op.terminate()?;
        }
    }

    // 17. The chart's namespace scope: Role-only RBAC, the operator watches its namespace only.
    let scoped_ns = "e2e-scoped";
    create_cluster_scoped::<Namespace>(
        &admin,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": scoped_ns}}),
    )
    .await?;
    let (ns_sa, ns_args) =
        install_chart_rbac(&admin, "sbns", scoped_ns, &["rbac.scope=namespace"]).await?;
    ensure!(
        ns_args
            .iter()
            .any(|a| a == &format!("--namespace={scoped_ns}")),
        "namespace-scoped chart does not pass --namespace={scoped_ns}: {ns_args:?}"
    );
    let ns_kubeconfig = service_account_kubeconfig(&admin, rig, &ns_sa, scoped_ns).await?;
    let scoped: Api<SignalingCluster> = Api::namespaced(admin.clone(), scoped_ns);
    let outside = clusters.clone();
    for (api, ns) in [(&scoped, scoped_ns), (&outside, NS)] {
        let sc: SignalingCluster = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingCluster",
            "metadata": {"name": "scoped", "namespace": ns},
            "spec": {"replicas": 1}
        }))?;
        api.create(&PostParams::default(), &sc).await?;
    }
    ops.push(Operator::spawn(
        "ns-op",
        &ns_kubeconfig,
        &ns_args,
        &log_dir,
    )?);
    let scoped_deployments: Api<Deployment> = Api::namespaced(admin.clone(), scoped_ns);
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
            && deployments.get_opt("scoped-server").await?.is_none(),
        "the namespace-scoped operator touched a cluster outside its namespace"
    );
    let last = ops.len() - 1;
    ops[last].terminate()?;
    step(
        "namespace scope: Role-only RBAC suffices, other namespaces untouched",
        t0,
    );

    // 18. Every example manifest is accepted by the API server (server-side dry run).
    let examples = dry_run_examples(&admin).await?;
    step(
        &format!("{examples} docs/examples documents accepted (server-side dry run)"),
        t0,
    );
    Ok(())
}

fn base64(s: &str) -> Value {
    serde_json::to_value(ByteString(s.as_bytes().to_vec())).unwrap_or(Value::Null)
}

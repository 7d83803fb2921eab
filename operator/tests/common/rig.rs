//! The e2e rig: a real kube-apiserver 1.20 + kube-controller-manager (+ etcd) started by
//! `tests/k8s-rig.sh` on free loopback ports, and what a test installs into it: the CRD, the
//! Helm chart's ServiceAccount and RBAC (with the container args the chart renders), a
//! kubeconfig for that ServiceAccount, and the docs' examples as a server-side dry run.
//! Declared by `e2e_rig.rs` only (other test binaries do not compile it).

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use switchboard_operator::api::SignalingCluster;

/// Namespace of the operator (its ServiceAccount, RBAC and Lease).
pub const OPERATOR_NS: &str = "switchboard-system";
/// Namespace of the clusters the scenario creates.
pub const NS: &str = "e2e";
/// Lease duration given to every operator, so a SIGKILLed leader is replaced quickly.
pub const LEASE_SECS: u64 = 4;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

pub fn rig_dir() -> PathBuf {
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

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port p with p+1 free too (etcd's peer port).
pub fn free_port_pair() -> Result<u16> {
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
pub struct Rig {
    env: Vec<(String, String)>,
    /// Logs, kubeconfigs and the operators' logs.
    pub run_dir: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Rig {
    pub fn start() -> Result<Rig> {
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

    pub async fn admin(&self) -> Result<Client> {
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

/// Polls `f` every 250 ms until it returns `Some`, or fails after `limit` with what it saw last.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> Result<T>
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

pub fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

pub fn helm() -> Result<PathBuf> {
    let p = std::env::var("SWITCHBOARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/switchboard-tools/helm")
        });
    ensure!(p.exists(), "no helm at {}: run tests/tools.sh", p.display());
    Ok(p)
}

/// What [`create`] needs of an object type.
pub trait Object:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug
{
}
impl<K> Object for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug
{
}

/// Creates the object `v` (JSON of a `K`) in namespace `ns`.
pub async fn create<K>(client: &Client, ns: &str, v: Value) -> Result<()>
where
    K: Object + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    create_with(Api::<K>::namespaced(client.clone(), ns), v).await
}

/// Creates the cluster-scoped object `v` (JSON of a `K`).
pub async fn create_cluster_scoped<K>(client: &Client, v: Value) -> Result<()>
where
    K: Object + Resource<Scope = k8s_openapi::ClusterResourceScope>,
{
    create_with(Api::<K>::all(client.clone()), v).await
}

async fn create_with<K: Object>(api: Api<K>, v: Value) -> Result<()> {
    let obj: K = serde_json::from_value(v)?;
    api.create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating {} {}", K::kind(&()), obj.name_any()))?;
    Ok(())
}

/// Renders the chart, creates its ServiceAccount and RBAC, returns the operator container args.
pub async fn install_chart_rbac(
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
        // Roles may name their own namespace (the Lease's); everything else is the release's.
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or(namespace)
            .to_owned();
        match kind.as_str() {
            "ServiceAccount" => {
                sa_name = doc["metadata"]["name"].as_str().map(str::to_owned);
                create::<ServiceAccount>(client, namespace, doc).await?;
            }
            "ClusterRole" => create_cluster_scoped::<ClusterRole>(client, doc).await?,
            "ClusterRoleBinding" => {
                create_cluster_scoped::<ClusterRoleBinding>(client, doc).await?
            }
            "Role" => create::<Role>(client, &ns, doc).await?,
            "RoleBinding" => create::<RoleBinding>(client, &ns, doc).await?,
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
pub async fn service_account_kubeconfig(
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

pub async fn install_crd(client: &Client) -> Result<()> {
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
pub async fn dry_run_examples(client: &Client) -> Result<usize> {
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

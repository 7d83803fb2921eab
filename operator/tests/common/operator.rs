//! An operator process of the e2e: the real binary with the chart's container args, as the
//! chart's ServiceAccount, its metrics on a free loopback port, its log in the rig's run dir;
//! SIGTERM (graceful: releases the Lease) or SIGKILL, and SIGKILLed on drop.
//! Declared by `e2e_rig.rs` only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};

use crate::common;
use crate::rig::{free_port, LEASE_SECS, OPERATOR_NS};

/// An operator process; SIGKILLed on drop.
pub struct Operator {
    /// Its identity (`POD_NAME`, the Lease holder).
    pub name: String,
    child: Option<Child>,
    /// Where it serves /metrics, /healthz and /readyz.
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    pub fn spawn(
        name: &str,
        kubeconfig: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Operator> {
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

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = common::http::get(self.metrics, "/metrics").await.ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM (graceful: releases the Lease) and wait.
    pub fn terminate(&mut self) -> Result<()> {
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
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

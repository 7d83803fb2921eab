//! `switchboard-operator`: `run` starts the controller (with leader election, metrics and
//! health endpoints), `crd` prints the CustomResourceDefinition. Wiring only; the logic lives
//! in the library.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_operator::controller::{self, CrdState, OperatorSettings};
use switchboard_operator::http::{self, AppState};
use switchboard_operator::leader::LeaseSettings;
use switchboard_operator::metrics::Metrics;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "switchboard-operator",
    version,
    about = "Kubernetes operator for Switchboard signaling clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the SignalingCluster CustomResourceDefinition (YAML) to stdout.
    Crd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz. Not 8080: that is the server's default
    /// port, and both often run on one developer machine.
    #[arg(long, default_value = "0.0.0.0:8090")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so that only one replica reconciles.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "switchboard-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else --namespace, else "default").
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_duration_secs: u64,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: captured logs and log collectors showed escape sequences.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes the CRD YAML for `crd`. A reader that closed the pipe early (`crd | head`) got
/// what it wanted: that is success, not a panic. A CRD that cannot be serialized is an error
/// (exit 1), never an empty success.
fn write_crd(out: &mut impl Write, yaml: Result<String, serde_yaml::Error>) -> Result<(), String> {
    let yaml = yaml.map_err(|e| format!("cannot serialize the CRD: {e}"))?;
    match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("cannot write the CRD to stdout: {e}")),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.is_empty() {
            return pod;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "switchboard-operator".to_owned());
    // The pid keeps two processes on one host (tests, local runs) distinct.
    format!("{host}-{}", std::process::id())
}

/// The one line printed when the CRD is missing: the commands of docs/operator.md "Install"
/// (server-side apply needs Kubernetes 1.25+, where the CRD's CEL rules are known; before
/// that only a create without client validation accepts the file).
const MISSING_CRD: &str = "the SignalingCluster CRD (signalingclusters.switchboard.dev) is not installed; install it with: kubectl apply --server-side -f crds/switchboard.dev_signalingclusters.yaml (Kubernetes < 1.25: kubectl create --validate=false -f crds/switchboard.dev_signalingclusters.yaml), or install the Helm chart (crds.create=true, the default); see docs/operator.md#install";

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client (KUBECONFIG / in-cluster service account)",
    )?;

    match controller::crd_state(&client, args.namespace.as_deref()).await {
        Ok(CrdState::Installed) => {}
        Ok(CrdState::Missing) => {
            eprintln!("{}", MISSING_CRD);
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e).context("cannot reach the Kubernetes API server"),
    }

    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(metrics.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot bind --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");

    let (stop_tx, stop_rx) = watch::channel(false);
    let http_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let http_task = tokio::spawn(http::serve(listener, state.clone(), http_stop));
    tokio::spawn(async move {
        termination().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let lease = args.leader_elect.then(|| {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        LeaseSettings::with_duration(
            args.lease_name.clone(),
            namespace,
            identity(),
            Duration::from_secs(args.lease_duration_secs),
        )
    });
    let settings = OperatorSettings {
        namespace: args.namespace.clone(),
        lease,
    };
    state.ready.store(true, Ordering::Relaxed);
    controller::run_operator(client, settings, metrics, stop_rx).await;
    state.ready.store(false, Ordering::Relaxed);
    // The HTTP server got the same stop signal; wait briefly so a final scrape completes.
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            match write_crd(
                &mut std::io::stdout().lock(),
                switchboard_operator::try_crd_yaml(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(args) => match run(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["switchboard-operator", "run"].iter().chain(args).copied())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Run(a) => a,
            Command::Crd => panic!("parsed as crd"),
        }
    }

    #[test]
    fn defaults_elect_a_leader_and_watch_all_namespaces() {
        let a = run_args(&[]);
        assert!(a.leader_elect);
        assert_eq!(a.lease_name, "switchboard-operator");
        assert_eq!(a.metrics_addr, "0.0.0.0:8090".parse().unwrap());
        assert_eq!(a.lease_duration_secs, 15);
    }

    #[test]
    fn the_charts_arguments_parse() {
        let a = run_args(&[
            "--namespace=rtc",
            "--metrics-addr=0.0.0.0:8090",
            "--leader-elect",
            "--lease-name=sb-switchboard-operator",
            "--lease-namespace=rtc",
            "--log-format=json",
        ]);
        assert_eq!(a.namespace.as_deref(), Some("rtc"));
        assert!(a.leader_elect);
        assert_eq!(a.lease_name, "sb-switchboard-operator");
        assert_eq!(a.lease_namespace.as_deref(), Some("rtc"));
        assert!(matches!(a.log_format, LogFormat::Json));
    }

    #[test]
    fn leader_election_can_be_turned_off() {
        assert!(!run_args(&["--leader-elect=false"]).leader_elect);
        assert!(run_args(&["--leader-elect=true"]).leader_elect);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--metrics-addr=nope"][..],
            &["--lease-duration-secs=1"],
            &["--log-format=xml"],
            &["--leader-elect=maybe"],
        ] {
            let argv = ["switchboard-operator", "run"].iter().chain(bad).copied();
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn crd_output_to_a_closed_pipe_is_success_and_a_failed_crd_is_an_error() {
        struct Closed(std::io::ErrorKind);
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(self.0.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let yaml = || switchboard_operator::try_crd_yaml();
        let mut out = Vec::new();
        assert_eq!(write_crd(&mut out, yaml()), Ok(()));
        assert_eq!(String::from_utf8(out).ok(), yaml().ok());
        assert_eq!(
            write_crd(&mut Closed(std::io::ErrorKind::BrokenPipe), yaml()),
            Ok(())
        );
        let other = write_crd(&mut Closed(std::io::ErrorKind::PermissionDenied), yaml());
        assert!(
            other
                .as_ref()
                .is_err_and(|e| e.starts_with("cannot write the CRD to stdout")),
            "{other:?}"
        );
        let broken = serde_yaml::from_str::<u32>("not a number").map(|_| String::new());
        let mut out = Vec::new();
        let failed = write_crd(&mut out, broken);
        assert!(
            failed
                .as_ref()
                .is_err_and(|e| e.starts_with("cannot serialize the CRD")),
            "{failed:?}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn crd_subcommand_parses() {
        assert!(matches!(
            Cli::try_parse_from(["switchboard-operator", "crd"]).map(|c| c.command),
            Ok(Command::Crd)
        ));
    }
}

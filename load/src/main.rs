//! `switchboard-load`: points participants at a Switchboard deployment,
//! runs one scenario (or all of them against their ceilings) and prints a
//! text report and one JSON object. This file wires the CLI to the
//! scenarios; the logic lives in the modules.
#![forbid(unsafe_code)]

mod ceiling;
mod cli;
mod client;
mod latency;
mod progress;
mod redis_bench;
mod report;
mod scenario;
mod token;
mod track;
mod usage;
mod wire;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use rand::Rng as _;

use crate::cli::{Cli, Compared, JwtAlgorithm, Knobs, Scenario};
use crate::client::Target;
use crate::report::{Machine, Ratio, Report, Run};
use crate::scenario::exchange::Ctx;
use crate::scenario::{churn, connections, fanout, relay};
use crate::token::{Minter, SigningKey};
use crate::usage::Source;

/// Exit status for wrong results (loss, reordering, failed joins).
const EXIT_WRONG: u8 = 2;
/// Token lifetime: longer than any run.
const TOKEN_TTL_SECS: u64 = 6 * 3600;

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    // The multi-threaded runtime with its I/O and time drivers.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Scenario::ServeCeiling { listen } = cli.scenario {
        let secret = std::env::var("SWITCHBOARD_LOAD_CEILING_SECRET")
            .ok()
            .and_then(|s| ceiling::unhex(&s));
        let Some(secret) = secret else {
            eprintln!("error: serve-ceiling needs SWITCHBOARD_LOAD_CEILING_SECRET (hex)");
            return ExitCode::FAILURE;
        };
        return match runtime.block_on(ceiling::serve(listen, secret)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(cli)) {
        Ok((report, json_out)) => match emit(&report, json_out.as_deref()) {
            Ok(()) if report.ok => ExitCode::SUCCESS,
            Ok(()) => ExitCode::from(EXIT_WRONG),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ten thousand participants need ten thousand sockets: lift the soft
/// descriptor limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn emit(report: &Report, json_out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string(report)?;
    if let Some(path) = json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", report::render_text(report))?;
    writeln!(out, "{json}")?;
    out.flush()?;
    Ok(())
}

fn signing_key(t: &cli::TargetArgs) -> anyhow::Result<SigningKey> {
    match t.jwt_algorithm {
        JwtAlgorithm::Hs256 => {
            let secret = match (&t.jwt_secret, &t.jwt_secret_file) {
                (Some(_), Some(_)) => bail!("give --jwt-secret or --jwt-secret-file, not both"),
                (Some(s), None) => s.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .trim()
                    .to_string(),
                (None, None) => bail!(
                    "no JWT key: give --jwt-secret / JWT_SECRET or --jwt-secret-file (the servers' HS256 secret), or --jwt-algorithm RS256/ES256 with --jwt-private-key-file"
                ),
            };
            Ok(SigningKey::Hs256(secret.into_bytes()))
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            let path = t
                .jwt_private_key_file
                .as_ref()
                .context("--jwt-algorithm RS256/ES256 needs --jwt-private-key-file")?;
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(if t.jwt_algorithm == JwtAlgorithm::Rs256 {
                SigningKey::Rs256(pem)
            } else {
                SigningKey::Es256(pem)
            })
        }
    }
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        load_average: read("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
    }
}

/// Where each target's usage comes from: a given pid, the local listener,
/// else its `/metrics`.
fn sources(targets: &[Target], pids: &[u32]) -> anyhow::Result<Vec<Source>> {
    if !pids.is_empty() && pids.len() != targets.len() {
        bail!(
            "--server-pid lists {} pids for {} URLs; give one per URL, in order",
            pids.len(),
            targets.len()
        );
    }
    Ok(targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(pid) = pids.get(i) {
                return Source::Proc(*pid);
            }
            if t.is_loopback() {
                if let Some(pid) = t.port().and_then(usage::find_listener) {
                    return Source::Proc(pid);
                }
            }
            Source::Metrics(t.metrics_url())
        })
        .collect())
}

fn size(k: &Knobs) -> anyhow::Result<scenario::exchange::SizeRange> {
    cli::parse_size(k.size.as_deref().unwrap_or("ice"))
}

fn connections_params(k: &Knobs) -> connections::ConnectionsParams {
    let participants = k.participants.unwrap_or(1000);
    connections::ConnectionsParams {
        participants,
        rooms: k.rooms.unwrap_or(participants.div_ceil(20).max(1)),
        hold: Duration::from_secs_f64(k.hold_secs.unwrap_or(2.0).max(0.0)),
    }
}

fn relay_params(k: &Knobs) -> anyhow::Result<relay::RelayParams> {
    Ok(relay::RelayParams {
        pairs: k.pairs.unwrap_or(50),
        messages: k.messages.unwrap_or(2000),
        rate: k.rate.unwrap_or(0.0),
        window: k.window.unwrap_or(32),
        size: size(k)?,
    })
}

fn fanout_params(k: &Knobs) -> anyhow::Result<fanout::FanoutParams> {
    Ok(fanout::FanoutParams {
        rooms: k.rooms.unwrap_or(4),
        room_size: k.room_size.unwrap_or(10).max(2),
        messages: k.messages.unwrap_or(200),
        rate: k.rate.unwrap_or(0.0),
        window: k.window,
        size: size(k)?,
    })
}

fn churn_params(k: &Knobs) -> anyhow::Result<churn::ChurnParams> {
    Ok(churn::ChurnParams {
        rooms: k.rooms.unwrap_or(4),
        churners: k.churners.unwrap_or(2),
        cycles: k.cycles.unwrap_or(20),
        rate: k.rate.unwrap_or(200.0),
        size: size(k)?,
    })
}

async fn run_one(ctx: &Ctx, which: Compared, k: &Knobs) -> anyhow::Result<Run> {
    match which {
        Compared::Connections => connections::run(ctx, &connections_params(k)).await,
        Compared::Relay => relay::run(ctx, &relay_params(k)?).await,
        Compared::Fanout => fanout::run(ctx, &fanout_params(k)?).await,
        Compared::Churn => churn::run(ctx, &churn_params(k)?).await,
    }
}

/// The same-run ratios of a scenario's run against its ceiling run.
fn ratios(which: Compared, ours: &Run, ceiling: &Run) -> Vec<Ratio> {
    let mut out = Vec::new();
    match which {
        Compared::Connections => {
            out.push(Ratio::new(
                "connections: joins/s",
                ours.joins.per_sec,
                ceiling.joins.per_sec,
            ));
            if let (Some(a), Some(b)) = (ours.rss_per_participant(), ceiling.rss_per_participant())
            {
                out.push(Ratio::new(
                    "connections: RSS bytes per participant (lower is better)",
                    a,
                    b,
                ));
            }
        }
        Compared::Relay | Compared::Fanout | Compared::Churn => {
            out.push(Ratio::new(
                format!("{}: delivered msg/s", ours.scenario),
                ours.delivered_per_sec,
                ceiling.delivered_per_sec,
            ));
            if let (Some(a), Some(b)) = (ours.cpu_us_per_message(), ceiling.cpu_us_per_message()) {
                out.push(Ratio::new(
                    format!(
                        "{}: server CPU µs per message (lower is better)",
                        ours.scenario
                    ),
                    a,
                    b,
                ));
            }
            if which == Compared::Churn {
                out.push(Ratio::new(
                    "churn: joins/s",
                    ours.joins.per_sec,
                    ceiling.joins.per_sec,
                ));
            }
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<(Report, Option<std::path::PathBuf>)> {
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let machine = machine();
    let t = &cli.target;
    let minter = Arc::new(Minter::new(
        signing_key(t)?,
        t.jwt_issuer.clone(),
        t.jwt_audience.clone(),
        TOKEN_TTL_SECS,
    )?);
    let targets = t
        .urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if targets.is_empty() {
        bail!("no --url given");
    }
    let prefix = t
        .room_prefix
        .clone()
        .unwrap_or_else(|| format!("load-{:06x}", rand::rng().random_range(0..0x100_0000u32)));
    let epoch = Instant::now();
    let ctx = Ctx {
        sources: sources(&targets, &t.server_pids)?,
        targets: targets.clone(),
        minter: minter.clone(),
        prefix: prefix.clone(),
        epoch,
        progress: t.progress,
        concurrency: t.concurrency,
        join_timeout: Duration::from_secs(t.join_timeout_secs.max(1)),
        // A PeerJS server measured with the same load is named as such.
        target_name: if targets.iter().all(|t| t.dialect == wire::Dialect::PeerJs) {
            "peerjs".into()
        } else {
            "switchboard".into()
        },
    };
    let k = &cli.knobs;
    let mut runs = Vec::new();
    let mut all_ratios = Vec::new();
    let mut redis_benchmark = None;
    match &cli.scenario {
        Scenario::Connections => runs.push(run_one(&ctx, Compared::Connections, k).await?),
        Scenario::Relay => runs.push(run_one(&ctx, Compared::Relay, k).await?),
        Scenario::Fanout => runs.push(run_one(&ctx, Compared::Fanout, k).await?),
        Scenario::Churn => runs.push(run_one(&ctx, Compared::Churn, k).await?),
        Scenario::Ceiling => {
            let list = if k.compare.is_empty() {
                vec![
                    Compared::Connections,
                    Compared::Relay,
                    Compared::Fanout,
                    Compared::Churn,
                ]
            } else {
                k.compare.clone()
            };
            // The ceiling verifies the same HS256 tokens; with RS256/ES256 it
            // verifies HS256 tokens of its own secret instead.
            let secret = match minter.hs256_secret() {
                Some(s) => s.to_vec(),
                None => (0..32).map(|_| rand::rng().random::<u8>()).collect(),
            };
            let relay_proc = ceiling::CeilingProcess::start(&secret).await?;
            let ceiling_target = Target::parse(&format!("http://{}", relay_proc.addr))?;
            let ceiling_ctx = Ctx {
                targets: vec![ceiling_target],
                sources: vec![relay_proc.pid().map_or(Source::None, Source::Proc)],
                minter: Arc::new(Minter::new(
                    SigningKey::Hs256(secret),
                    None,
                    None,
                    TOKEN_TTL_SECS,
                )?),
                prefix: format!("{prefix}-ceiling"),
                epoch,
                progress: t.progress,
                concurrency: t.concurrency,
                join_timeout: ctx.join_timeout,
                target_name: "ceiling".into(),
            };
            for which in list.iter().copied() {
                let ours = run_one(&ctx, which, k).await?;
                let theirs = run_one(&ceiling_ctx, which, k).await?;
                all_ratios.extend(ratios(which, &ours, &theirs));
                runs.push(ours);
                runs.push(theirs);
            }
            let cross = runs
                .iter()
                .find(|r| r.scenario == "relay" && r.target == ctx.target_name)
                .map(|r| r.delivered_per_sec);
            if targets.len() > 1 && list.contains(&Compared::Relay) {
                // Across instances against one instance, in the same run.
                let single_ctx = Ctx {
                    targets: vec![targets[0].clone()],
                    sources: vec![ctx.sources[0].clone()],
                    minter: minter.clone(),
                    prefix: format!("{prefix}-single"),
                    epoch,
                    progress: t.progress,
                    concurrency: t.concurrency,
                    join_timeout: ctx.join_timeout,
                    target_name: "switchboard-one-instance".into(),
                };
                let single = run_one(&single_ctx, Compared::Relay, k).await?;
                if let Some(cross) = cross {
                    all_ratios.push(Ratio::new(
                        "relay: across instances / one instance, msg/s",
                        cross,
                        single.delivered_per_sec,
                    ));
                }
                runs.push(single);
            }
            if let Some(url) = &k.redis_url {
                let params = redis_bench::RedisBenchParams {
                    requests: k.redis_requests.unwrap_or(1_000_000),
                    pipeline: k.redis_pipeline.unwrap_or(16),
                    clients: 50,
                    payload_bytes: 200,
                };
                let bench = redis_bench::run(url, &params).await?;
                if let Some(cross) = cross {
                    all_ratios.push(Ratio::new(
                        "relay msg/s / redis-benchmark PUBLISH requests/s",
                        cross,
                        bench.requests_per_sec,
                    ));
                }
                redis_benchmark = Some(bench);
            }
            drop(relay_proc);
        }
        Scenario::ServeCeiling { .. } => bail!("serve-ceiling is handled before"),
    }
    let problems: Vec<String> = runs.iter().flat_map(Run::problems).collect();
    let settings = serde_json::json!({
        "urls": targets.iter().map(Target::label).collect::<Vec<_>>(),
        "concurrency": t.concurrency,
        "jwt_algorithm": format!("{:?}", t.jwt_algorithm),
        "room_prefix": prefix,
        "knobs": k,
    });
    let report = Report {
        tool: "switchboard-load".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        scenario: cli.scenario.name().into(),
        started_at,
        machine,
        settings,
        runs,
        ratios: all_ratios,
        redis_benchmark,
        ok: problems.is_empty(),
        problems,
    };
    Ok((report, t.json_out.clone()))
}

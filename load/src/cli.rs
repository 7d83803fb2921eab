//! Command line: which scenario, which deployment (URLs, JWT key, server
//! processes) and the scenario knobs, with per-scenario defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::progress;
use crate::scenario::exchange::SizeRange;

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-load",
    version,
    about = "Load generator for Switchboard deployments: joins, relay, fan-out, churn, and the same scenarios against a trivial relay on the same stack",
    after_help = "Ends with a text report on stdout and, as its last line, one JSON object. Exit status: 0 correct results, 2 wrong results (loss, reordering, duplicates, failed joins), 1 could not run.\n\nLift the servers' rate limit for benchmarks (WEBRTC_RATE_LIMIT_PER_SECOND, WEBRTC_RATE_LIMIT_BURST)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub knobs: Knobs,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Ramp to N idle participants: joins/s, failures by reason, server RSS per participant.
    Connections,
    /// Pairs exchange targeted messages: msg/s, latency, loss and reordering.
    Relay,
    /// Rooms broadcast chat-message to everyone: deliveries/s and latency.
    Fanout,
    /// Participants join and leave while pairs relay: presence seen exactly once, its latency.
    Churn,
    /// The scenarios against the given servers and a trivial tokio-tungstenite relay, plus redis-benchmark PUBLISH: same-run ratios.
    Ceiling,
    /// Internal: the ceiling relay process the `ceiling` scenario starts.
    #[command(hide = true)]
    ServeCeiling {
        #[arg(long)]
        listen: SocketAddr,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Connections => "connections",
            Scenario::Relay => "relay",
            Scenario::Fanout => "fanout",
            Scenario::Churn => "churn",
            Scenario::Ceiling => "ceiling",
            Scenario::ServeCeiling { .. } => "serve-ceiling",
        }
    }
}

/// The scenarios `ceiling` can compare.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compared {
    Connections,
    Relay,
    Fanout,
    Churn,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// Server base URLs (http://host:port), comma-separated or repeated; participants are spread over them.
    #[arg(
        long = "url",
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080",
        env = "SWITCHBOARD_LOAD_URLS"
    )]
    pub urls: Vec<String>,
    /// HS256 secret the servers verify tokens with.
    #[arg(long, global = true, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (surrounding whitespace stripped).
    #[arg(long, global = true, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Token algorithm: HS256 (secret) or RS256/ES256 (--jwt-private-key-file).
    #[arg(long, global = true, value_enum, default_value = "HS256")]
    pub jwt_algorithm: JwtAlgorithm,
    /// PEM private key for RS256/ES256 tokens.
    #[arg(long, global = true)]
    pub jwt_private_key_file: Option<PathBuf>,
    /// `iss` claim, when the servers require one.
    #[arg(long, global = true, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// `aud` claim, when the servers require one.
    #[arg(long, global = true, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Server process ids, in --url order, for RSS/CPU from /proc (default: found by listening port for loopback URLs, else /metrics).
    #[arg(long = "server-pid", global = true, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Joins in flight at once.
    #[arg(long, global = true, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds one join may take (connect to room-state).
    #[arg(long, global = true, default_value_t = 10)]
    pub join_timeout_secs: u64,
    /// Progress display on stderr.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub progress: progress::Mode,
    /// Also write the JSON report to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
    /// Room names start with this (default: load-<random>), so runs never share rooms.
    #[arg(long, global = true)]
    pub room_prefix: Option<String>,
}

/// Scenario knobs; unset ones take the scenario's default.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct Knobs {
    /// connections: idle participants to ramp to [default 1000].
    #[arg(long, global = true)]
    pub participants: Option<usize>,
    /// connections: rooms to spread them over [default: participants/20]; fanout, churn: rooms [default 4].
    #[arg(long, global = true)]
    pub rooms: Option<usize>,
    /// connections: seconds everyone stays before memory is read [default 2].
    #[arg(long, global = true)]
    pub hold_secs: Option<f64>,
    /// relay: pairs, each in its own room [default 50].
    #[arg(long, global = true)]
    pub pairs: Option<usize>,
    /// relay: messages per sender [default 2000]; fanout: broadcasts per participant [default 200].
    #[arg(long, global = true)]
    pub messages: Option<u64>,
    /// relay, fanout: offered messages per second over all senders, 0 = as fast as possible [default 0]; churn: the pairs' rate [default 200].
    #[arg(long, global = true)]
    pub rate: Option<f64>,
    /// relay, fanout: messages of one sender that its slowest recipient may lack [relay 32;
    /// fanout: 128/(room size-1), so a reader's queue stays under the server's default bound].
    #[arg(long, global = true)]
    pub window: Option<u64>,
    /// Message size: `ice` (200 B), `sdp` (1-4 KiB), a byte count, or MIN-MAX [default ice].
    #[arg(long, global = true)]
    pub size: Option<String>,
    /// fanout: participants per room [default 10].
    #[arg(long, global = true)]
    pub room_size: Option<usize>,
    /// churn: churning participants per room [default 2].
    #[arg(long, global = true)]
    pub churners: Option<usize>,
    /// churn: join/leave cycles per churner [default 20].
    #[arg(long, global = true)]
    pub cycles: Option<usize>,
    /// ceiling: scenarios to compare, comma-separated [default: all four].
    #[arg(long = "run", global = true, value_enum, value_delimiter = ',')]
    pub compare: Vec<Compared>,
    /// ceiling: the Redis the servers use, for redis-benchmark PUBLISH (redis://[:password@]host:port).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOAD_REDIS_URL",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// ceiling: redis-benchmark requests [default 1000000].
    #[arg(long, global = true)]
    pub redis_requests: Option<u64>,
    /// ceiling: redis-benchmark pipeline depth [default 16].
    #[arg(long, global = true)]
    pub redis_pipeline: Option<u32>,
}

/// `ice`, `sdp`, `N` or `MIN-MAX` (bytes of message text).
pub fn parse_size(text: &str) -> anyhow::Result<SizeRange> {
    let range = match text {
        "ice" => SizeRange { min: 200, max: 200 },
        "sdp" => SizeRange {
            min: 1024,
            max: 4096,
        },
        _ => match text.split_once('-') {
            Some((a, b)) => SizeRange {
                min: a.trim().parse()?,
                max: b.trim().parse()?,
            },
            None => {
                let n = text.trim().parse()?;
                SizeRange { min: n, max: n }
            }
        },
    };
    if range.min > range.max || range.max > 1 << 20 {
        bail!("--size {text}: expected MIN <= MAX <= 1 MiB");
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("ice").unwrap(), SizeRange { min: 200, max: 200 });
        assert_eq!(
            parse_size("sdp").unwrap(),
            SizeRange {
                min: 1024,
                max: 4096
            }
        );
        assert_eq!(parse_size("512").unwrap(), SizeRange { min: 512, max: 512 });
        assert_eq!(
            parse_size("100-300").unwrap(),
            SizeRange { min: 100, max: 300 }
        );
        assert!(parse_size("300-100").is_err());
        assert!(parse_size("big").is_err());
    }

    #[test]
    fn global_flags_go_after_the_scenario() {
        let cli = Cli::try_parse_from([
            "switchboard-load",
            "relay",
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--pairs",
            "3",
            "--size",
            "sdp",
        ])
        .unwrap();
        assert_eq!(cli.scenario, Scenario::Relay);
        assert_eq!(cli.target.urls.len(), 2);
        assert_eq!(cli.knobs.pairs, Some(3));
    }

    #[test]
    fn ceiling_takes_a_list_of_scenarios() {
        let cli =
            Cli::try_parse_from(["switchboard-load", "ceiling", "--run", "relay,connections"])
                .unwrap();
        assert_eq!(
            cli.knobs.compare,
            vec![Compared::Relay, Compared::Connections]
        );
        assert!(Cli::try_parse_from(["switchboard-load", "ceiling", "--run", "nope"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

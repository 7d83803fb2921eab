//! The Redis ceiling: `redis-benchmark` PUBLISH with pipelining against the
//! given Redis, parsed from its CSV output.

use anyhow::{bail, Context as _};
use url::Url;

use crate::report::RedisBenchmark;

/// How to run the benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedisBenchParams {
    pub requests: u64,
    pub pipeline: u32,
    pub clients: u32,
    pub payload_bytes: usize,
}

/// `redis-benchmark` arguments for `url` (password, if any, as `-a`).
pub fn arguments(url: &str, p: &RedisBenchParams) -> anyhow::Result<Vec<String>> {
    let u = Url::parse(url).with_context(|| "--redis-url is not a URL".to_string())?;
    if u.scheme() != "redis" {
        bail!("--redis-url: only redis:// is supported by redis-benchmark here");
    }
    let host = u.host_str().context("--redis-url has no host")?;
    let mut args = vec![
        "-h".to_string(),
        host.to_string(),
        "-p".to_string(),
        u.port().unwrap_or(6379).to_string(),
    ];
    if let Some(password) = u.password() {
        if !u.username().is_empty() {
            args.extend(["--user".to_string(), u.username().to_string()]);
        }
        args.extend(["-a".to_string(), password.to_string()]);
    }
    args.extend([
        "-n".into(),
        p.requests.to_string(),
        "-c".into(),
        p.clients.to_string(),
        "-P".into(),
        p.pipeline.to_string(),
        "--csv".into(),
        "PUBLISH".into(),
        "switchboard-load-bench".into(),
        "x".repeat(p.payload_bytes),
    ]);
    Ok(args)
}

/// Requests per second from `redis-benchmark --csv` output.
pub fn parse_csv(output: &str) -> Option<f64> {
    let line = output.lines().find(|l| l.starts_with("\"PUBLISH"))?;
    let fields: Vec<&str> = line.split("\",\"").collect();
    fields.get(1)?.trim_matches('"').parse().ok()
}

/// Runs the benchmark (it must be on PATH).
pub async fn run(url: &str, p: &RedisBenchParams) -> anyhow::Result<RedisBenchmark> {
    let args = arguments(url, p)?;
    let out = tokio::process::Command::new("redis-benchmark")
        .args(&args)
        .output()
        .await
        .context("cannot run redis-benchmark: install it (Debian: apt-get install redis-tools)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(rps) = parse_csv(&stdout) else {
        bail!(
            "redis-benchmark gave no result (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    Ok(RedisBenchmark {
        command: format!("PUBLISH <channel> <{} bytes>", p.payload_bytes),
        requests: p.requests,
        pipeline: p.pipeline,
        clients: p.clients,
        payload_bytes: p.payload_bytes,
        requests_per_sec: rps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RedisBenchParams = RedisBenchParams {
        requests: 1000,
        pipeline: 16,
        clients: 10,
        payload_bytes: 3,
    };

    #[test]
    fn arguments_carry_host_port_and_password() {
        let a = arguments("redis://:s3cret@10.0.0.5:7000/0", &P).unwrap();
        assert_eq!(&a[..6], ["-h", "10.0.0.5", "-p", "7000", "-a", "s3cret"]);
        assert_eq!(a.last().map(String::as_str), Some("xxx"));
        assert!(a.contains(&"-P".to_string()) && a.contains(&"16".to_string()));
        let plain = arguments("redis://127.0.0.1:45000", &P).unwrap();
        assert!(!plain.contains(&"-a".to_string()));
        assert!(arguments("rediss://x", &P).is_err());
    }

    #[test]
    fn csv_rate() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"PUBLISH switchboard-load-bench xxx\",\"689655.19\",\"0.210\"\n";
        assert_eq!(parse_csv(out), Some(689655.19));
        assert_eq!(parse_csv("nothing"), None);
    }
}

//! Smoke test of every scenario: a second or so each with a handful of
//! participants, against real `switchboard-server` processes (and a real
//! `redis-server` for the cross-instance and ceiling runs), through the
//! `switchboard-load` binary itself. It asserts exact delivery counts, zero
//! loss, reordering and duplicates, and a well-formed report; never timing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_e2e::redis::RedisProcess;
use switchboard_e2e::server::{ServerOptions, ServerProcess};

const SECRET: &str = "load-smoke-test-secret-0123456789abcdef";
/// Bound on one load generator run; the scenarios here take a second or two.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A server with the rate limits lifted, as the benchmarks need.
fn options() -> ServerOptions {
    ServerOptions::with_secret(SECRET).args([
        "--rate-limit-per-second",
        "1000000",
        "--rate-limit-burst",
        "1000000",
        "--rate-limit-bytes-per-second",
        "1000000000000",
        "--rate-limit-bytes-burst",
        "1000000000000",
    ])
}

struct Outcome {
    code: Option<i32>,
    report: Value,
    stdout: String,
}

/// Runs `switchboard-load <args>` (whitespace-separated) plus `extra`,
/// bounded, and parses the JSON object on its last stdout line.
fn load(secret: &str, args: &str, extra: &[&str]) -> Outcome {
    let args: Vec<&str> = args
        .split_whitespace()
        .chain(extra.iter().copied())
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-load"))
        .args(&args)
        .args(["--progress", "none"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("JWT_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard-load");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("switchboard-load {args:?} still running after {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "last stdout line is not the JSON report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"
        )
    });
    Outcome {
        code: out.status.code(),
        report,
        stdout,
    }
}

fn url(s: &ServerProcess) -> String {
    s.http_url("")
}

/// The run's delivery is exactly `expected` with nothing lost, reordered or duplicated.
fn assert_delivered(run: &Value, expected: u64) {
    let d = &run["delivery"];
    assert_eq!(d["expected"], expected, "{run:#}");
    assert_eq!(d["delivered"], expected, "{run:#}");
    for field in ["lost", "reordered", "duplicated", "out_of_range"] {
        assert_eq!(d[field], 0, "{field} in {run:#}");
    }
    assert_eq!(run["latency"]["count"], expected, "{run:#}");
    assert!(run["latency"]["p50_us"].as_u64().is_some(), "{run:#}");
    assert_eq!(run["errors"], serde_json::json!({}), "{run:#}");
    assert_eq!(run["closes"], serde_json::json!({}), "{run:#}");
}

fn assert_ok(o: &Outcome, scenario: &str) {
    assert_eq!(o.code, Some(0), "stdout:\n{}", o.stdout);
    assert_eq!(o.report["tool"], "switchboard-load");
    assert_eq!(o.report["scenario"], scenario);
    assert_eq!(o.report["ok"], true);
    assert_eq!(o.report["problems"], serde_json::json!([]));
    assert!(o.stdout.contains("result: OK"), "{}", o.stdout);
}

#[test]
fn relay_pairs_on_one_server_lose_nothing_and_report_its_memory() {
    let server = options().start();
    let o = load(
        SECRET,
        "relay --pairs 2 --messages 200",
        &["--url", &url(&server)],
    );
    assert_ok(&o, "relay");
    let run = &o.report["runs"][0];
    assert_eq!(run["target"], "switchboard");
    assert_eq!(run["joins"]["joined"], 4);
    // Two pairs, both directions, 200 each.
    assert_delivered(run, 800);
    let s = &run["servers"][0];
    assert_eq!(s["source"], "proc");
    assert_eq!(s["pid"], server.pid());
    assert!(s["rss_after_bytes"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn relay_across_two_instances_on_one_redis_with_sdp_sizes() {
    let redis = RedisProcess::start();
    let a = options().env("REDIS_URL", redis.url()).start();
    let b = options().env("REDIS_URL", redis.url()).start();
    let urls = format!("{},{}", url(&a), url(&b));
    let o = load(
        SECRET,
        "relay --pairs 2 --messages 100 --size sdp",
        &["--url", &urls],
    );
    assert_ok(&o, "relay");
    let run = &o.report["runs"][0];
    assert_eq!(run["urls"].as_array().unwrap().len(), 2);
    assert_delivered(run, 400);
    assert_eq!(run["servers"].as_array().unwrap().len(), 2);
}

#[test]
fn fanout_delivers_every_broadcast_to_every_other_member() {
    let server = options().start();
    let o = load(
        SECRET,
        "fanout --rooms 2 --room-size 3 --messages 50",
        &["--url", &url(&server)],
    );
    assert_ok(&o, "fanout");
    // 2 rooms × 3 senders × 50 broadcasts × 2 recipients.
    assert_delivered(&o.report["runs"][0], 600);
}

#[test]
fn connections_ramp_reports_joins_and_memory_per_participant() {
    let server = options().start();
    let o = load(
        SECRET,
        "connections --participants 40 --rooms 4 --hold-secs 0.2",
        &["--url", &url(&server)],
    );
    assert_ok(&o, "connections");
    let run = &o.report["runs"][0];
    assert_eq!(run["joins"]["attempted"], 40);
    assert_eq!(run["joins"]["joined"], 40);
    assert_eq!(run["joins"]["failed"], 0);
    assert_eq!(run["joins"]["latency"]["count"], 40);
    let s = &run["servers"][0];
    assert_eq!(s["participants"], 40);
    assert!(s["rss_per_participant_bytes"].is_u64(), "{s}");
}

#[test]
fn connections_count_failures_by_reason_and_exit_2() {
    let server = options()
        .arg("--max-participants-per-room")
        .arg("2")
        .start();
    let o = load(
        SECRET,
        "connections --participants 5 --rooms 1 --concurrency 1 --hold-secs 0",
        &["--url", &url(&server)],
    );
    assert_eq!(o.code, Some(2), "{}", o.stdout);
    assert_eq!(o.report["ok"], false);
    let joins = &o.report["runs"][0]["joins"];
    assert_eq!(joins["joined"], 2);
    assert_eq!(joins["failed"], 3);
    assert_eq!(
        joins["failures"],
        serde_json::json!({"close_1013_room_full": 3})
    );
    assert!(o.stdout.contains("result: WRONG RESULTS"), "{}", o.stdout);
}

#[test]
fn a_wrong_key_is_reported_as_refused_joins() {
    let server = options().start();
    let o = load(
        "another-secret-that-the-server-does-not-know",
        "relay --pairs 1 --messages 1",
        &["--url", &url(&server)],
    );
    assert_eq!(o.code, Some(2), "{}", o.stdout);
    let joins = &o.report["runs"][0]["joins"];
    assert_eq!(
        joins["failures"],
        serde_json::json!({"close_1008_invalid_token": 2})
    );
}

#[test]
fn churn_presence_is_seen_exactly_once_while_pairs_relay() {
    let server = options().start();
    let o = load(
        SECRET,
        "churn --rooms 2 --churners 2 --cycles 3 --rate 200",
        &["--url", &url(&server)],
    );
    assert_ok(&o, "churn");
    let run = &o.report["runs"][0];
    let p = &run["presence"];
    // 2 rooms × 2 churners × 3 cycles, each seen by the room's 2 observers.
    assert_eq!(p["joins_expected"], 24, "{p}");
    assert_eq!(p["joins_seen_once"], 24, "{p}");
    assert_eq!(p["leaves_expected"], 24, "{p}");
    assert_eq!(p["leaves_seen_once"], 24, "{p}");
    assert_eq!(p["unexpected"], 0, "{p}");
    assert_eq!(p["join_latency"]["count"], 24, "{p}");
    assert_eq!(run["joins"]["joined"], 12);
    let d = &run["delivery"];
    assert_eq!(d["lost"], 0, "{d}");
    assert_eq!(d["delivered"], d["expected"], "{d}");
}

#[test]
fn ceiling_runs_both_targets_and_redis_benchmark_in_one_report() {
    let redis = RedisProcess::start();
    let server = options().start();
    let o = load(
        SECRET,
        "ceiling --run relay,connections --pairs 2 --messages 100 \
         --participants 20 --hold-secs 0 --redis-requests 20000",
        &["--url", &url(&server), "--redis-url", &redis.url()],
    );
    assert_ok(&o, "ceiling");
    let runs = o.report["runs"].as_array().unwrap();
    let kinds: Vec<(String, String)> = runs
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap().into(),
                r["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect = |s: &str, t: &str| (s.to_string(), t.to_string());
    assert_eq!(
        kinds,
        [
            expect("relay", "switchboard"),
            expect("relay", "ceiling"),
            expect("connections", "switchboard"),
            expect("connections", "ceiling"),
        ]
    );
    assert_delivered(&runs[0], 400);
    assert_delivered(&runs[1], 400);
    assert_eq!(runs[3]["joins"]["joined"], 20);
    assert_eq!(runs[1]["servers"][0]["source"], "proc");
    let ratios: Vec<&str> = o.report["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["what"].as_str().unwrap())
        .collect();
    assert!(ratios.contains(&"relay: delivered msg/s"), "{ratios:?}");
    assert!(ratios.contains(&"connections: joins/s"), "{ratios:?}");
    assert!(
        ratios.contains(&"relay msg/s / redis-benchmark PUBLISH requests/s"),
        "{ratios:?}"
    );
    let bench = &o.report["redis_benchmark"];
    assert_eq!(bench["requests"], 20000);
    assert!(bench["requests_per_sec"].as_f64().unwrap() > 0.0, "{bench}");
}

//! The report: one JSON object (every figure, for scripts and plots) and
//! its text rendering (for a person), plus the correctness verdict. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::latency::LatencySummary;
use crate::track::{Delivery, PresenceOutcome};

/// The whole output of one invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub scenario: String,
    /// Unix seconds at start.
    pub started_at: u64,
    pub machine: Machine,
    /// The settings the run used.
    pub settings: serde_json::Value,
    pub runs: Vec<Run>,
    #[serde(default)]
    pub ratios: Vec<Ratio>,
    #[serde(default)]
    pub redis_benchmark: Option<RedisBenchmark>,
    /// Wrong results found (loss, reordering, duplicates, failed joins...).
    pub problems: Vec<String>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    /// The 1-minute load average when the run started.
    pub load_average: f64,
}

/// One scenario against one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub scenario: String,
    /// `switchboard` (the given URLs) or `ceiling` (the built-in relay).
    pub target: String,
    pub urls: Vec<String>,
    pub participants: u64,
    pub rooms: u64,
    pub duration_secs: f64,
    pub joins: Joins,
    #[serde(default)]
    pub delivery: Option<Delivery>,
    /// Offered rate (messages per second summed over senders; 0 = as fast as possible).
    #[serde(default)]
    pub offered_per_sec: f64,
    #[serde(default)]
    pub delivered_per_sec: f64,
    #[serde(default)]
    pub latency: Option<LatencySummary>,
    #[serde(default)]
    pub presence: Option<PresenceOutcome>,
    pub servers: Vec<ServerUsage>,
    /// `error` frames received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Connections closed by the server while the run needed them, by `code reason`.
    pub closes: BTreeMap<String, u64>,
    /// Other wrong results (senders that stalled, recipients never seen).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Joins {
    pub attempted: u64,
    pub joined: u64,
    pub failed: u64,
    /// Joined participants per second of ramp (upgrade, JWT, room-state).
    pub per_sec: f64,
    pub failures: BTreeMap<String, u64>,
    pub latency: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerUsage {
    pub url: String,
    /// `proc`, `metrics` or `none`.
    pub source: String,
    pub pid: Option<u32>,
    /// Before the participants joined.
    pub rss_before_bytes: u64,
    /// With every participant joined (connections) or after the traffic.
    pub rss_after_bytes: u64,
    pub participants: u64,
    pub rss_per_participant_bytes: Option<u64>,
    /// CPU time spent during the measured phase.
    pub cpu_seconds: f64,
}

/// A figure against its same-run ceiling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub what: String,
    pub value: f64,
    pub ceiling: f64,
    pub ratio: f64,
}

impl Ratio {
    pub fn new(what: impl Into<String>, value: f64, ceiling: f64) -> Self {
        Ratio {
            what: what.into(),
            value,
            ceiling,
            ratio: if ceiling > 0.0 { value / ceiling } else { 0.0 },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisBenchmark {
    pub command: String,
    pub requests: u64,
    pub pipeline: u32,
    pub clients: u32,
    pub payload_bytes: usize,
    pub requests_per_sec: f64,
}

impl Run {
    /// Server CPU µs per delivered message, over all servers that report CPU.
    pub fn cpu_us_per_message(&self) -> Option<f64> {
        let delivered = self.delivery?.delivered;
        let cpu: f64 = self.servers.iter().map(|s| s.cpu_seconds).sum();
        (delivered > 0 && cpu > 0.0).then(|| cpu * 1e6 / delivered as f64)
    }

    /// Bytes of server RSS per participant, over all servers that report it.
    pub fn rss_per_participant(&self) -> Option<f64> {
        let with: Vec<&ServerUsage> = self
            .servers
            .iter()
            .filter(|s| s.rss_per_participant_bytes.is_some())
            .collect();
        let participants: u64 = with.iter().map(|s| s.participants).sum();
        let grown: u64 = with
            .iter()
            .map(|s| s.rss_after_bytes.saturating_sub(s.rss_before_bytes))
            .sum();
        (participants > 0).then(|| grown as f64 / participants as f64)
    }

    /// What is wrong with this run's results (empty = correct).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let tag = format!("{} on {}", self.scenario, self.target);
        if self.joins.failed > 0 {
            out.push(format!(
                "{tag}: {} of {} joins failed ({})",
                self.joins.failed,
                self.joins.attempted,
                join_map(&self.joins.failures)
            ));
        }
        if let Some(d) = &self.delivery {
            if !d.is_clean() {
                out.push(format!(
                    "{tag}: {} lost, {} reordered, {} duplicated, {} out of range of {} expected",
                    d.lost, d.reordered, d.duplicated, d.out_of_range, d.expected
                ));
            }
        }
        if let Some(p) = &self.presence {
            if !p.is_clean() {
                out.push(format!(
                    "{tag}: presence joins {} missing / {} duplicated, leaves {} missing / {} duplicated, {} unexpected",
                    p.joins_missing, p.joins_duplicated, p.leaves_missing, p.leaves_duplicated, p.unexpected
                ));
            }
        }
        if !self.errors.is_empty() {
            out.push(format!(
                "{tag}: error frames received: {}",
                join_map(&self.errors)
            ));
        }
        if !self.closes.is_empty() {
            out.push(format!(
                "{tag}: connections closed by the server: {}",
                join_map(&self.closes)
            ));
        }
        out.extend(self.notes.iter().map(|n| format!("{tag}: {n}")));
        out
    }
}

fn join_map(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn latency_line(out: &mut String, label: &str, l: &LatencySummary) {
    let _ = writeln!(
        out,
        "  {label:<16} p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  ({} samples)",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.max_us),
        l.count
    );
}

/// The text report.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "switchboard-load {} — scenario {} — {} CPUs, kernel {}, load {:.2} at start",
        r.version, r.scenario, r.machine.cpus, r.machine.kernel, r.machine.load_average
    );
    for run in &r.runs {
        let _ = writeln!(
            out,
            "\n[{} on {}] {} participants in {} rooms via {} ({:.2} s)",
            run.scenario,
            run.target,
            run.participants,
            run.rooms,
            run.urls.join(", "),
            run.duration_secs
        );
        let j = &run.joins;
        let _ = writeln!(
            out,
            "  joins            {} of {} ok, {:.0}/s{}",
            j.joined,
            j.attempted,
            j.per_sec,
            if j.failed > 0 {
                format!(", failed: {}", join_map(&j.failures))
            } else {
                String::new()
            }
        );
        if j.latency.count > 0 {
            latency_line(&mut out, "join latency", &j.latency);
        }
        if let Some(d) = &run.delivery {
            let offered = if run.offered_per_sec > 0.0 {
                format!("offered {:.0}/s", run.offered_per_sec)
            } else {
                "as fast as possible".to_string()
            };
            let _ = writeln!(
                out,
                "  delivered        {} of {} ({:.0} msg/s, {offered}); lost {}, reordered {}, duplicated {}",
                d.delivered, d.expected, run.delivered_per_sec, d.lost, d.reordered, d.duplicated
            );
        }
        if let Some(l) = &run.latency {
            latency_line(&mut out, "latency", l);
        }
        if let Some(p) = &run.presence {
            let _ = writeln!(
                out,
                "  presence         joins seen once {}/{}, leaves seen once {}/{}, unexpected {}",
                p.joins_seen_once,
                p.joins_expected,
                p.leaves_seen_once,
                p.leaves_expected,
                p.unexpected
            );
            latency_line(&mut out, "user-joined", &p.join_latency);
            latency_line(&mut out, "user-left", &p.leave_latency);
        }
        for s in &run.servers {
            let per = s
                .rss_per_participant_bytes
                .map(|b| format!(", {:.1} KiB per participant", b as f64 / 1024.0))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  server {} ({}{}): RSS {} → {}{per}, CPU {:.2} s",
                s.url,
                s.source,
                s.pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
                mib(s.rss_before_bytes),
                mib(s.rss_after_bytes),
                s.cpu_seconds
            );
        }
        if let Some(cpu) = run.cpu_us_per_message() {
            let _ = writeln!(out, "  server CPU       {cpu:.2} µs per delivered message");
        }
        if !run.errors.is_empty() {
            let _ = writeln!(out, "  error frames     {}", join_map(&run.errors));
        }
        if !run.closes.is_empty() {
            let _ = writeln!(out, "  closed by server {}", join_map(&run.closes));
        }
    }
    if let Some(b) = &r.redis_benchmark {
        let _ = writeln!(
            out,
            "\n[redis-benchmark] {} ×{} pipeline {} clients {}: {:.0} requests/s",
            b.command, b.requests, b.pipeline, b.clients, b.requests_per_sec
        );
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(out, "\nratios (same run):");
        for x in &r.ratios {
            let _ = writeln!(
                out,
                "  {:<48} {:>12.1} / {:>12.1} = {:.2}",
                x.what, x.value, x.ceiling, x.ratio
            );
        }
    }
    if r.ok {
        let _ = writeln!(out, "\nresult: OK (no loss, no reordering, no duplicates)");
    } else {
        let _ = writeln!(out, "\nresult: WRONG RESULTS");
        for p in &r.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        let mut delivery = Delivery::default();
        delivery.add_sent(1000, 1);
        delivery.delivered = 1000;
        delivery.settle();
        let run = Run {
            scenario: "relay".into(),
            target: "switchboard".into(),
            urls: vec!["http://127.0.0.1:8080".into()],
            participants: 2,
            rooms: 1,
            duration_secs: 0.5,
            joins: Joins {
                attempted: 2,
                joined: 2,
                per_sec: 400.0,
                ..Joins::default()
            },
            delivery: Some(delivery),
            delivered_per_sec: 2000.0,
            latency: Some(LatencySummary {
                count: 1000,
                p50_us: 250,
                p90_us: 400,
                p99_us: 900,
                max_us: 1500,
                mean_us: 300,
            }),
            servers: vec![ServerUsage {
                url: "http://127.0.0.1:8080".into(),
                source: "proc".into(),
                pid: Some(42),
                rss_before_bytes: 10 << 20,
                rss_after_bytes: 11 << 20,
                participants: 2,
                rss_per_participant_bytes: Some(512 << 10),
                cpu_seconds: 0.01,
            }],
            ..Run::default()
        };
        Report {
            tool: "switchboard-load".into(),
            version: "0.1.0".into(),
            scenario: "relay".into(),
            started_at: 1,
            machine: Machine {
                cpus: 2,
                kernel: "6.1".into(),
                load_average: 0.5,
            },
            settings: serde_json::json!({"pairs": 1}),
            runs: vec![run],
            ratios: vec![Ratio::new("relay msg/s", 2000.0, 4000.0)],
            redis_benchmark: None,
            problems: Vec::new(),
            ok: true,
        }
    }

    #[test]
    fn text_report_shows_the_figures() {
        let text = render_text(&sample_report());
        assert!(text.contains("[relay on switchboard] 2 participants in 1 rooms"));
        assert!(text.contains("delivered        1000 of 1000 (2000 msg/s, as fast as possible); lost 0, reordered 0, duplicated 0"));
        assert!(text.contains("p50 0.250 ms  p90 0.400 ms  p99 0.900 ms  max 1.500 ms"));
        assert!(text.contains("RSS 10.0 MiB → 11.0 MiB, 512.0 KiB per participant"));
        assert!(text.contains("server CPU       10.00 µs per delivered message"));
        assert!(text.contains("relay msg/s"));
        assert!(text.contains("= 0.50"));
        assert!(text.ends_with("result: OK (no loss, no reordering, no duplicates)\n"));
    }

    #[test]
    fn json_round_trips() {
        let r = sample_report();
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.runs[0].delivery, r.runs[0].delivery);
        assert_eq!(back.ratios[0].ratio, 0.5);
    }

    #[test]
    fn problems_name_every_wrong_result() {
        let mut run = sample_report().runs.remove(0);
        assert!(run.problems().is_empty());
        let d = run.delivery.as_mut().unwrap();
        d.delivered = 990;
        d.reordered = 2;
        d.settle();
        run.joins.failed = 1;
        run.joins.failures.insert("close_1013_room_full".into(), 1);
        run.closes.insert("1013 slow_consumer".into(), 1);
        let p = run.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("1 of 2 joins failed (close_1013_room_full ×1)"));
        assert!(p[1].contains("10 lost, 2 reordered"));
        assert!(p[2].contains("1013 slow_consumer ×1"));
    }

    #[test]
    fn ratio_of_zero_ceiling_is_zero() {
        assert_eq!(Ratio::new("x", 5.0, 0.0).ratio, 0.0);
        assert_eq!(Ratio::new("x", 3.0, 4.0).ratio, 0.75);
    }

    #[test]
    fn rss_per_participant_sums_servers() {
        let mut run = sample_report().runs.remove(0);
        let mut second = run.servers[0].clone();
        second.rss_after_bytes = second.rss_before_bytes + 3 * 1024;
        second.participants = 1;
        run.servers[0].rss_after_bytes = run.servers[0].rss_before_bytes + 1024;
        run.servers[0].participants = 1;
        run.servers.push(second);
        assert_eq!(run.rss_per_participant(), Some(2048.0));
    }
}

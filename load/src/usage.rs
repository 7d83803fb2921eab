//! Server resource usage: resident memory and CPU time of a server process,
//! read from `/proc/<pid>` when the server runs on this machine (found by its
//! listening port, or given), else from the standard `process_*` series of
//! its `/metrics`. Parsing is pure; reading is at the edge.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a server's figures come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Proc(u32),
    Metrics(String),
    None,
}

impl Source {
    pub fn label(&self) -> &'static str {
        match self {
            Source::Proc(_) => "proc",
            Source::Metrics(_) => "metrics",
            Source::None => "none",
        }
    }
}

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// utime + stime of `/proc/<pid>/stat`, in clock ticks. The command name
/// (field 2) may hold spaces and parentheses, so fields count from the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The socket inodes listening on `port` in a `/proc/net/tcp{,6}` table.
pub fn parse_listen_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == LISTEN)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// `process_resident_memory_bytes` and `process_cpu_seconds_total` from a
/// Prometheus text exposition.
pub fn parse_metrics(text: &str) -> Option<Sample> {
    let value = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rss = value("process_resident_memory_bytes")?;
    Some(Sample {
        rss_bytes: rss as u64,
        cpu_seconds: value("process_cpu_seconds_total").unwrap_or(0.0),
    })
}

/// The process listening on `port` on this machine, if we can see it.
pub fn find_listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(parse_listen_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        // USER_HZ is 100 on every Linux ABI.
        _ => 100.0,
    }
}

fn read_proc(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        rss_bytes: parse_status_rss(&status)?,
        cpu_seconds: parse_stat_ticks(&stat)? as f64 / clock_ticks_per_second(),
    })
}

fn read_metrics(url: &str) -> Option<Sample> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let text = agent
        .get(url)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    parse_metrics(&text)
}

/// Reads a sample now (blocking work runs off the async threads).
pub async fn sample(source: &Source) -> Option<Sample> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || match source {
        Source::Proc(pid) => read_proc(pid),
        Source::Metrics(url) => read_metrics(&url),
        Source::None => None,
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_from_status() {
        let status = "Name:\tswitchboard\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(2048 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn ticks_from_stat_with_a_hostile_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn listening_inodes_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(parse_listen_inodes(table, 8080), vec![12345]);
        assert_eq!(parse_listen_inodes(table, 8081), vec![777]);
        assert!(parse_listen_inodes(table, 9).is_empty());
    }

    #[test]
    fn process_series_from_metrics() {
        let text =
            "# HELP process_resident_memory_bytes x\n# TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes 1.048576e7\nprocess_cpu_seconds_total 12.5\n";
        assert_eq!(
            parse_metrics(text),
            Some(Sample {
                rss_bytes: 10_485_760,
                cpu_seconds: 12.5
            })
        );
        assert_eq!(parse_metrics("switchboard_connections 3\n"), None);
    }
}

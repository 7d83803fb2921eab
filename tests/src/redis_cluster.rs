//! A real Redis Cluster for the end-to-end tests: `redis-server` processes in cluster mode on
//! loopback ports (each below 55535 so that its cluster bus port, +10000, exists and is free
//! too), joined by `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`, with a
//! short `cluster-node-timeout` so that a killed master fails over within a few seconds. Plus
//! what the tests ask of it: a key's slot (`CLUSTER KEYSLOT`), the master serving a slot,
//! killing a master and waiting for its replica's promotion, and moving slots with
//! `redis-cli --cluster reshard`. Every process is killed when the cluster is dropped.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::redis::{send_command, RedisProcess, Reply};

/// `cluster-node-timeout` of the test clusters once formed: a master silent this long is
/// suspected, and its replica takes over about two timeouts later.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// `cluster-node-timeout` while the cluster forms: a handshake that takes longer than the
/// timeout is dropped, and on a loaded machine (many tests, other jobs) 1 s is not enough.
const FORMING_TIMEOUT_MS: u64 = 10_000;

/// How long forming the cluster, a failover or a reshard may take before a test fails.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// One slot range of the cluster: `(first, last, master port, replica ports)`.
pub type SlotRange = (u16, u16, u16, Vec<u16>);

/// A Redis Cluster of real processes.
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A loopback port in 20000..50000 that is free, with its cluster bus port (+10000) free too.
pub fn free_cluster_port() -> u16 {
    // Spread test processes apart; then walk.
    let base = 20_000 + (std::process::id() * 7_919) % 30_000;
    for _ in 0..30_000 {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base + n * 7) % 30_000;
        let port = port as u16;
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair (p, p+10000) below 60000 on 127.0.0.1");
}

fn node_args(timeout_ms: u64) -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &timeout_ms.to_string(),
        // The other shards keep serving while one has no master (what production should run).
        "--cluster-require-full-coverage",
        "no",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs `redis-cli` with `args` and panics with its output unless it succeeds.
pub fn run_redis_cli(args: &[String]) {
    let out = redis_cli(args);
    assert!(
        out.status.success(),
        "redis-cli {} failed: {}{}",
        args.iter().take(2).cloned().collect::<Vec<_>>().join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `redis-cli --cluster create` while introducing every node to the first one again
/// every second (`CLUSTER MEET` is idempotent): redis-cli meets each node once and then waits
/// for the cluster to agree, forever if a handshake was lost, which a loaded machine does.
/// Bounded by [`CLUSTER_TIMEOUT`].
fn redis_cli_introducing(args: &[String], ports: &[u16]) -> std::process::Output {
    let child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-cli not found in PATH: install redis-tools (tests/run.sh does)")
        }
        Err(e) => panic!("cannot run redis-cli: {e}"),
    };
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    // Not before redis-cli checked that every node is still alone (it refuses otherwise).
    let mut next_meet = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => panic!("waiting for redis-cli: {e}"),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            panic!(
                "redis-cli --cluster create did not finish within {CLUSTER_TIMEOUT:?}: {}",
                out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            );
        }
        if Instant::now() >= next_meet {
            next_meet = Instant::now() + Duration::from_secs(1);
            if let Some((first, rest)) = ports.split_first() {
                for port in rest {
                    let _ =
                        send_command(*first, &["CLUSTER", "MEET", "127.0.0.1", &port.to_string()]);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match child.wait_with_output() {
        Ok(out) => out,
        Err(e) => panic!("reading redis-cli's output: {e}"),
    }
}

fn redis_cli(args: &[String]) -> std::process::Output {
    match Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-cli not found in PATH: install redis-server (tests/run.sh does: \
             apt-get install -y redis-server), it carries redis-cli"
        ),
        Err(e) => panic!("cannot run redis-cli: {e}"),
    }
}

fn bulk(r: &Reply) -> Option<&str> {
    match r {
        Reply::Bulk(Some(s)) | Reply::Status(s) => Some(s),
        _ => None,
    }
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each, creates the cluster and waits
    /// until every node reports `cluster_state:ok` and every replica is in sync.
    pub fn start(masters: usize, replicas: usize) -> Self {
        let args = node_args(FORMING_TIMEOUT_MS);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let nodes: Vec<RedisProcess> = (0..masters * (1 + replicas))
            .map(|_| RedisProcess::start_on(&args, free_cluster_port))
            .collect();
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        create.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let ports: Vec<u16> = nodes.iter().map(RedisProcess::port).collect();
        let out = redis_cli_introducing(&create, &ports);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(masters);
        // Formed: now the short timeout that makes failovers quick.
        for port in cluster.ports() {
            let reply = cluster.command_on(
                port,
                &[
                    "CONFIG",
                    "SET",
                    "cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                ],
            );
            assert_eq!(reply, Reply::Status("OK".into()), "CONFIG SET on {port}");
        }
        cluster
    }

    /// Waits until every running node says `cluster_state:ok`, knows `masters` masters
    /// serving all slots, and every replica's link to its master is up.
    pub fn wait_healthy(&self, masters: usize) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let mut problems = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let info = self.info(node.port(), &["CLUSTER", "INFO"]);
                if !info.contains("cluster_state:ok") {
                    problems.push(format!("{} not ok", node.port()));
                }
                let replication = self.info(node.port(), &["INFO", "replication"]);
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    problems.push(format!("{} replica not in sync", node.port()));
                }
            }
            match self.try_slots() {
                Some(slots) => {
                    let covered: u32 = slots.iter().map(|r| u32::from(r.1 - r.0) + 1).sum();
                    let mut ms: Vec<u16> = slots.iter().map(|r| r.2).collect();
                    ms.sort_unstable();
                    ms.dedup();
                    if covered != 16384 || ms.len() != masters {
                        problems.push(format!("slot map {slots:?}"));
                    }
                }
                None => problems.push("no node answers CLUSTER SLOTS".into()),
            }
            if problems.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis cluster not healthy within {CLUSTER_TIMEOUT:?}: {problems:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn info(&self, port: u16, args: &[&str]) -> String {
        match send_command(port, args) {
            Ok(Reply::Bulk(Some(s))) => s,
            Ok(other) => panic!("unexpected {args:?} reply from {port}: {other:?}"),
            Err(e) => panic!("{args:?} on {port} failed: {e}"),
        }
    }

    /// The seed URLs for `REDIS_CLUSTER_URLS`: the first three running nodes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .take(3)
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port, masters and replicas.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisProcess::port).collect()
    }

    /// One command on the node at `port`.
    pub fn command_on(&self, port: u16, args: &[&str]) -> Reply {
        match send_command(port, args) {
            Ok(reply) => reply,
            Err(e) => panic!("redis command {:?} on {port} failed: {e}", args.first()),
        }
    }

    fn any_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(RedisProcess::port)
            .expect("a running cluster node")
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        match self.command_on(self.any_port(), &["CLUSTER", "KEYSLOT", key]) {
            Reply::Integer(n) => u16::try_from(n).expect("slot in range"),
            other => panic!("unexpected CLUSTER KEYSLOT reply: {other:?}"),
        }
    }

    fn try_slots(&self) -> Option<Vec<SlotRange>> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let Ok(Reply::Array(entries)) = send_command(node.port(), &["CLUSTER", "SLOTS"]) else {
                continue;
            };
            let mut out = Vec::new();
            for entry in entries {
                let Reply::Array(fields) = entry else {
                    return None;
                };
                let int = |r: Option<&Reply>| match r {
                    Some(Reply::Integer(n)) => u16::try_from(*n).ok(),
                    _ => None,
                };
                let port = |r: &Reply| match r {
                    Reply::Array(node) => int(node.get(1)),
                    _ => None,
                };
                let (first, last) = (int(fields.first())?, int(fields.get(1))?);
                let master = port(fields.get(2)?)?;
                let replicas = fields[3..].iter().filter_map(port).collect();
                out.push((first, last, master, replicas));
            }
            out.sort();
            return Some(out);
        }
        None
    }

    /// The slot map as a running node reports it, sorted by first slot.
    pub fn slots(&self) -> Vec<SlotRange> {
        self.try_slots()
            .expect("a running node answers CLUSTER SLOTS")
    }

    /// The port of the master serving `slot`.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.slots()
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Ports of the masters, sorted.
    pub fn masters(&self) -> Vec<u16> {
        let mut ms: Vec<u16> = self.slots().iter().map(|r| r.2).collect();
        ms.sort_unstable();
        ms.dedup();
        ms
    }

    /// SIGKILLs the node at `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        node.kill();
    }

    /// SIGKILLs every node at once and starts each again on its port, empty but with its
    /// cluster configuration (`nodes.conf`), as after a power cut without persistence; waits
    /// until the cluster is healthy again.
    pub fn restart_all(&mut self) {
        let masters = self.masters().len();
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            node.restart_same_port();
        }
        self.wait_healthy(masters);
    }

    /// Waits until a node other than `old` serves `slot` as master and the cluster is ok
    /// again; returns the new master's port.
    pub fn wait_failover(&self, slot: u16, old: u16) -> u16 {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            if let Some(slots) = self.try_slots() {
                if let Some(r) = slots.iter().find(|r| r.0 <= slot && slot <= r.1) {
                    if r.2 != old
                        && self
                            .info(r.2, &["CLUSTER", "INFO"])
                            .contains("cluster_state:ok")
                    {
                        return r.2;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot} from {old} within {CLUSTER_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `CLUSTER MYID` of the node at `port`.
    pub fn node_id(&self, port: u16) -> String {
        bulk(&self.command_on(port, &["CLUSTER", "MYID"]))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no CLUSTER MYID from {port}"))
    }

    /// The `redis-cli` arguments that move `count` slots (redis-cli takes the lowest-numbered
    /// first) from master `from` to master `to`, keys included: run them with
    /// [`run_redis_cli`] (on a thread of its own to keep traffic going meanwhile).
    pub fn reshard_args(&self, from: u16, to: u16, count: u16) -> Vec<String> {
        vec![
            "--cluster".into(),
            "reshard".into(),
            format!("127.0.0.1:{to}"),
            "--cluster-from".into(),
            self.node_id(from),
            "--cluster-to".into(),
            self.node_id(to),
            "--cluster-slots".into(),
            count.to_string(),
            "--cluster-yes".into(),
        ]
    }

    /// Every key matching `pattern` on every running master, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut all = Vec::new();
        for port in self.masters() {
            if let Reply::Array(items) = self.command_on(port, &["KEYS", pattern]) {
                all.extend(items.iter().filter_map(bulk).map(str::to_owned));
            }
        }
        all.sort();
        all
    }
}

/// The Redis a multi-instance test runs on: one `redis-server`, or a 3-master, 3-replica
/// cluster. The tests that hold for both are written once against this and run on each.
pub enum RedisEngine {
    One(RedisProcess),
    Cluster(RedisCluster),
}

impl RedisEngine {
    /// One fresh `redis-server`.
    pub fn one() -> Self {
        RedisEngine::One(RedisProcess::start())
    }

    /// A fresh 3-master, 3-replica Redis Cluster.
    pub fn cluster() -> Self {
        RedisEngine::Cluster(RedisCluster::start(3, 1))
    }

    /// Points a server at this Redis: `REDIS_URL` or `REDIS_CLUSTER_URLS`.
    pub fn configure(&self, options: crate::server::ServerOptions) -> crate::server::ServerOptions {
        match self {
            RedisEngine::One(redis) => options.env("REDIS_URL", redis.url()),
            RedisEngine::Cluster(cluster) => options.env("REDIS_CLUSTER_URLS", cluster.urls()),
        }
    }

    /// Every key matching `pattern` (on every master of a cluster), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self {
            RedisEngine::One(redis) => redis.keys(pattern),
            RedisEngine::Cluster(cluster) => cluster.keys(pattern),
        }
    }

    /// One command about `key`, sent to the node holding it.
    pub fn command_for_key(&self, key: &str, args: &[&str]) -> Reply {
        match self {
            RedisEngine::One(redis) => redis.command(args),
            RedisEngine::Cluster(cluster) => {
                cluster.command_on(cluster.master_of(cluster.keyslot(key)), args)
            }
        }
    }

    /// How many connections subscribe to `channel`: `PUBSUB NUMSUB` on one Redis, `PUBSUB
    /// SHARDNUMSUB` on the master of the channel's slot in a cluster (where the bus uses
    /// sharded pub/sub).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let reply = match self {
            RedisEngine::One(redis) => redis.command(&["PUBSUB", "NUMSUB", channel]),
            RedisEngine::Cluster(cluster) => cluster.command_on(
                cluster.master_of(cluster.keyslot(channel)),
                &["PUBSUB", "SHARDNUMSUB", channel],
            ),
        };
        match reply {
            Reply::Array(items) => match items.get(1) {
                Some(Reply::Integer(n)) => *n,
                other => panic!("subscriber count of {channel}: {other:?}"),
            },
            other => panic!("subscriber count of {channel}: {other:?}"),
        }
    }
}

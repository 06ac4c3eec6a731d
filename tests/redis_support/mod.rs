//! Redis servers for the tests (standalone, a 3-master Cluster, a Sentinel
//! group), all on free loopback ports, and a conformance [`Harness`] over
//! them.
//!
//! Servers shared by a whole test binary are "tied" to it: each runs under a
//! tiny shell that kills it (and removes its directory) when the test
//! process's end of a pipe closes, which happens however the process ends.
#![allow(dead_code)]

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use redis::{
    AsyncCommands,
    cluster::ClusterClient,
    sentinel::{SentinelClient, SentinelServerType},
};
use tower_lock::{
    Locker,
    redis::{RedisBackend, RedisClient},
};

use crate::support::{free_port, wait_for_port};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// Arguments for a throwaway server: loopback only, nothing written to disk.
pub fn server_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A server that lives as long as the test process.
pub struct Tied {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
    /// Closing this (at process exit) makes the shell kill the server.
    _lifeline: ChildStdin,
}

impl Tied {
    /// Runs `redis-server <args> <extra>` (with `server_args` first unless
    /// `args` is given whole by `sentinel`).
    pub fn start(port: u16, args: Vec<String>) -> Tied {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-lock-redis-{}-{}-{}",
            std::process::id(),
            port,
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("server dir");
        let mut full = server_args(port, &dir);
        full.extend(args);
        Tied::spawn(port, dir, full)
    }

    fn spawn(port: u16, dir: PathBuf, args: Vec<String>) -> Tied {
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"dir="$1"; shift; "$@" & pid=$!; read -r _; kill -9 "$pid"; rm -rf "$dir""#)
            .arg("sh")
            .arg(&dir)
            .arg(REDIS_SERVER)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        let lifeline = child.stdin.take().expect("piped stdin");
        wait_for_port(port, Duration::from_secs(15));
        Tied {
            port,
            dir,
            child,
            _lifeline: lifeline,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Tied {
    fn drop(&mut self) {
        // Statics are never dropped; a Tied dropped early stops its server.
        let _ = self._lifeline.write_all(b"\n");
        let _ = self.child.wait();
    }
}

/// Runs `redis-cli -p port args…` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(REDIS_CLI)
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 3-master Cluster with no replicas.
pub struct Cluster {
    pub nodes: Vec<Tied>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Tied> = (0..3)
            .map(|_| {
                let port = free_port();
                Tied::start(
                    port,
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        "nodes.conf".into(),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new(REDIS_CLI)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while !cli(node.port, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Tied::url).collect()
    }
}

/// A master and one Sentinel watching it as `mymaster`.
pub struct SentinelGroup {
    pub master: Tied,
    pub sentinel: Tied,
}

pub const MASTER_NAME: &str = "mymaster";

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        SentinelGroup::watch(Tied::start(free_port(), Vec::new()), 2000)
    }

    /// A Sentinel that declares `master` down after `down_after_ms`.
    pub fn watch(master: Tied, down_after_ms: u64) -> SentinelGroup {
        let port = free_port();
        let dir = master.dir.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n",
                dir.display(),
                master.port
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Tied::spawn(
            port,
            dir,
            vec![conf.display().to_string(), "--sentinel".into()],
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cli(port, &["sentinel", "get-master-addr-by-name", MASTER_NAME])
            .contains(&master.port.to_string())
        {
            assert!(Instant::now() < deadline, "sentinel did not see the master");
            std::thread::sleep(Duration::from_millis(50));
        }
        SentinelGroup { master, sentinel }
    }

    pub fn client(&self) -> SentinelClient {
        SentinelClient::build(
            vec![self.sentinel.url()],
            String::from(MASTER_NAME),
            None,
            SentinelServerType::Master,
        )
        .expect("sentinel client")
    }
}

/// How a harness reaches its store.
#[derive(Clone)]
pub enum Deployment {
    Standalone(String),
    Cluster(Vec<String>),
    Sentinel { sentinel: String },
}

impl Deployment {
    pub fn client(&self) -> RedisClient {
        match self {
            Deployment::Standalone(url) => {
                redis::Client::open(url.as_str()).expect("client").into()
            }
            Deployment::Cluster(urls) => ClusterClient::new(urls.clone()).expect("cluster").into(),
            Deployment::Sentinel { sentinel } => SentinelClient::build(
                vec![sentinel.clone()],
                String::from(MASTER_NAME),
                None,
                SentinelServerType::Master,
            )
            .expect("sentinel client")
            .into(),
        }
    }
}

/// The conformance harness: every locker gets its own backend (its own
/// connections); every harness its own prefix, so tests sharing a server
/// never see each other's keys.
///
/// Each prefix's store counts as established: the suite's elections (with
/// ttls of 30 s) run on servers the tests have just started, where a first
/// election would otherwise wait one ttl for the store's epoch (see the
/// Redis module docs); the tests of that hold-back make their own stores.
pub struct RedisHarness {
    pub deployment: Deployment,
    /// Standalone servers whose keys `stored_locks` scans (each master of a
    /// Cluster; the master of a Sentinel group).
    pub scan: Vec<String>,
    pub prefix: String,
    established: tokio::sync::OnceCell<()>,
}

impl RedisHarness {
    pub fn new(deployment: Deployment, scan: Vec<String>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        RedisHarness {
            deployment,
            scan,
            prefix: format!("lock:t{}:", NEXT.fetch_add(1, Ordering::Relaxed)),
            established: tokio::sync::OnceCell::new(),
        }
    }

    /// The key of the prefix's epoch.
    pub fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// Runs `cmd` on the deployment: routed by key on a Cluster, on the
    /// master otherwise.
    pub async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match &self.deployment {
            Deployment::Cluster(urls) => {
                let client = ClusterClient::new(urls.clone()).expect("cluster");
                let mut conn = client.get_async_connection().await.expect("connect");
                cmd.query_async(&mut conn).await.expect("command")
            }
            _ => {
                let mut conn = admin(&self.scan[0]).await;
                cmd.query_async(&mut conn).await.expect("command")
            }
        }
    }

    pub async fn backend(&self) -> RedisBackend {
        self.established
            .get_or_init(|| async {
                let mut set = redis::cmd("SET");
                set.arg(self.epoch_key()).arg(0).arg("NX");
                let _: Option<String> = self.command(&set).await;
            })
            .await;
        RedisBackend::builder(self.deployment.client())
            .prefix(self.prefix.clone())
            .build()
            .await
            .expect("connect to the test's Redis")
    }
}

pub async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Every key under `pattern` on the standalone server at `url`.
pub async fn scan_keys(url: &str, pattern: &str) -> Vec<Vec<u8>> {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut keys = Vec::new();
    let mut iter: redis::AsyncIter<Vec<u8>> = conn.scan_match(pattern).await.expect("scan");
    while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
        keys.push(key.expect("key"));
    }
    keys
}

impl crate::conformance::Harness for RedisHarness {
    async fn locker(&self) -> Locker {
        Locker::new(self.backend().await)
    }

    async fn stored_locks(&self) -> usize {
        let backend = self.backend().await;
        let mut count = 0;
        for url in &self.scan {
            count += scan_keys(url, &backend.key_pattern())
                .await
                .iter()
                .filter(|key| backend.is_lock_key(key))
                .count();
        }
        count
    }

    /// Waiter queues (kept only while a backend waits), the holders of
    /// shared and counted leases, their fences, turns given to queued
    /// backends (250 ms at most) and writers' claims (1 s at most): all but
    /// fence counters.
    async fn leftovers(&self) -> Vec<String> {
        let backend = self.backend().await;
        let mut left = Vec::new();
        for url in &self.scan {
            for key in scan_keys(url, &backend.key_pattern()).await {
                if !backend.is_lock_key(&key)
                    && !key.ends_with(b":fence")
                    && key != self.epoch_key().as_bytes()
                {
                    left.push(String::from_utf8_lossy(&key).into_owned());
                }
            }
        }
        left
    }

    /// Every channel a backend of the prefix listens to (as the servers
    /// list them, plus the key event channels and a turn channel of a
    /// backend nobody runs), with what the scripts publish (the lock key:
    /// replays of a release's or a grant's message), lock keys of other
    /// keys, of a key nobody waits for and under another prefix, queue
    /// entries and lock values naming backends, huge and non-UTF-8
    /// payloads; each but the huge ones sent twice.
    async fn forge(&self, key: &str) -> usize {
        let backend = self.backend().await;
        let lock = backend.redis_key(key);
        let mut channels = std::collections::BTreeSet::new();
        let pattern = format!("{}*", backend.prefix());
        for url in &self.scan {
            let mut conn = admin(url).await;
            let listed: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .expect("PUBSUB CHANNELS");
            channels.extend(listed);
        }
        let released = format!("{}released:", backend.prefix());
        let ids: Vec<String> = channels
            .iter()
            .filter_map(|channel| channel.strip_prefix(&released).map(str::to_owned))
            .collect();
        assert!(!ids.is_empty(), "no backend listens on {released}*");
        channels.insert(format!("{released}{}", tower_lock::backend::Token::new()));
        channels.insert(format!("{}changed", backend.prefix()));
        channels.insert("__keyevent@0__:expired".to_owned());
        channels.insert("__keyevent@0__:del".to_owned());
        let tagged = |bytes: &[u8]| {
            let mut payload = format!("{}{{", backend.prefix()).into_bytes();
            payload.extend_from_slice(bytes);
            payload.push(b'}');
            payload
        };
        let mut payloads: Vec<Vec<u8>> = vec![
            lock.clone().into_bytes(),
            backend.redis_key(&format!("{key}-other")).into_bytes(),
            backend
                .redis_key(&format!(
                    "nobody-waits-{}",
                    tower_lock::backend::Token::new()
                ))
                .into_bytes(),
            lock.replacen(backend.prefix(), "lock:other:", 1)
                .into_bytes(),
            format!("{lock}:queue").into_bytes(),
            format!("{lock} {}", ids[0]).into_bytes(),
            tagged(&[0xff, 0xfe, 0x00]),
            tagged(b"%FF%FE"),
            b"shared".to_vec(),
            b"permits:1".to_vec(),
            Vec::new(),
        ];
        for id in &ids {
            payloads.push(format!("next:{id}").into_bytes());
            payloads.push(format!("{id}:c:1").into_bytes());
            payloads.push(format!("{id}:s").into_bytes());
        }
        let huge = [
            backend.redis_key(&"x".repeat(256 * 1024)).into_bytes(),
            vec![0xff; 256 * 1024],
        ];
        let mut pipe = redis::pipe();
        let mut sent = 0;
        for channel in &channels {
            for payload in &payloads {
                for _ in 0..2 {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    sent += 1;
                }
            }
            for payload in &huge {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                sent += 1;
            }
        }
        // Classic pub/sub reaches every node of a Cluster from any one.
        let mut conn = admin(&self.scan[0]).await;
        let () = pipe.query_async(&mut conn).await.expect("PUBLISH");
        sent
    }
}

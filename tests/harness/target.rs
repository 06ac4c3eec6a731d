//! How a store enters the harness: one small trait, and the stores that
//! implement it. A new backend (Postgres) adds an implementation here and
//! a line to `connect`; the workload, nemesis and oracle stay as they are.

use std::{future::Future, sync::Arc, time::Duration};

use tower_lock::{Locker, memory::MemoryBackend};

use super::workload::Keys;

/// A fault the nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL a child process while it holds and waits (a new one starts).
    Kill,
    /// SIGSTOP a child process for 0.2 to 3 ttls, then SIGCONT.
    Pause,
    /// Block one thread of this process's runtime a while (a pause of the
    /// in-process lockers that shares their renewal scheduler's fate).
    Stall,
    /// Freeze the store's server a while: requests hang, then time out.
    PauseStore,
    /// The store loses acknowledged writes: a restart without persistence,
    /// `FLUSHALL`, a bucket deleted and created again.
    LoseState,
    /// Forged messages on every channel or subject the backends listen to.
    Forge,
    /// Kill one node of a replicated store, and start it again a while
    /// later.
    KillNode,
    /// A replica is promoted in the master's place (Sentinel's `FAILOVER`):
    /// what had not reached it is lost.
    Failover,
    /// The in-process lockers' link to the store turns slow, blackholed or
    /// half-open a while, or every connection is reset.
    Link,
}

impl Fault {
    /// Faults after which plain leases are protected by their fences alone
    /// (DESIGN semantic 13).
    pub fn loses_writes(self) -> bool {
        matches!(self, Fault::LoseState | Fault::Failover)
    }
}

/// A store under the harness.
pub trait Target: Send + Sync + 'static {
    fn name(&self) -> String;

    /// A new locker over the store, in this process.
    fn locker(&self) -> impl Future<Output = Locker> + Send;

    /// How a child process reaches the store ([`connect`] reads it); `None`
    /// for a store inside this process.
    fn child_spec(&self) -> Option<String> {
        None
    }

    /// The store-side faults that make sense for it.
    fn faults(&self) -> Vec<Fault>;

    /// Injects `fault`, returning when it is over; `keys` are the
    /// history's, for forged messages.
    fn inject(
        &self,
        fault: Fault,
        keys: &Keys,
        rng: &mut fastrand::Rng,
        ttl: Duration,
    ) -> impl Future<Output = String> + Send;

    /// How many lock entries the store holds.
    fn stored_locks(&self) -> impl Future<Output = usize> + Send;

    /// What those entries are, where the store can say.
    fn stored_names(&self) -> impl Future<Output = Vec<String>> + Send {
        async { Vec::new() }
    }

    /// How long the store may take to serve again after a fault, beyond
    /// the ttl and the hold-back (a restart, a failover).
    fn recovery(&self) -> Duration {
        Duration::ZERO
    }

    /// Starts again what crashed by itself (a bug of the server, not a fault
    /// the nemesis injected), as soon as the harness looks.
    fn revive(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The store's own crashes so far, each started again by
    /// [`revive`](Self::revive).
    fn crashes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A child process's locker, from the spec its parent's target gave it.
pub async fn connect(spec: &str) -> Locker {
    let parts: Vec<&str> = spec.split(' ').collect();
    match parts[..] {
        #[cfg(feature = "redis")]
        ["redis", url, prefix] => {
            let client = redis::Client::open(url).expect("redis url");
            redis_locker(client.into(), prefix).await
        }
        #[cfg(feature = "redis")]
        ["redis-cluster", urls, prefix] => {
            let urls: Vec<&str> = urls.split(',').collect();
            let client = redis::cluster::ClusterClient::new(urls).expect("cluster client");
            redis_locker(client.into(), prefix).await
        }
        #[cfg(feature = "redis")]
        ["redis-sentinel", url, prefix] => {
            let client = redis::sentinel::SentinelClient::build(
                vec![url.to_owned()],
                crate::redis_support::MASTER_NAME,
                None,
                redis::sentinel::SentinelServerType::Master,
            )
            .expect("sentinel client");
            redis_locker(client.into(), prefix).await
        }
        #[cfg(feature = "nats")]
        ["nats", ports, bucket, replicas] => {
            let ports: Vec<u16> = ports.split(',').map(|p| p.parse().expect("port")).collect();
            let replicas = replicas.parse().expect("replicas");
            let backend = nats_backend_on(&ports, bucket, replicas).await;
            Locker::new(backend.expect("open the bucket"))
        }
        _ => panic!("no store for the spec {spec:?}"),
    }
}

#[cfg(feature = "redis")]
async fn redis_locker(client: tower_lock::redis::RedisClient, prefix: &str) -> Locker {
    let backend = tower_lock::redis::RedisBackend::builder(client)
        .prefix(prefix.to_owned())
        .build()
        .await;
    Locker::new(backend.expect("connect to Redis"))
}

/// Blocks the thread this runs on: whatever task shares it waits.
fn stall(rng: &mut fastrand::Rng, ttl: Duration) -> impl Future<Output = String> + Send {
    let pause = ttl.mul_f64(rng.f64() * 0.5);
    async move {
        tokio::spawn(async move { std::thread::sleep(pause) })
            .await
            .expect("stall");
        format!("stall {pause:?}")
    }
}

/// Disturbs `proxy`'s link a while: latency, a blackhole, a half-open
/// link, or a reset of every connection.
async fn disturb(proxy: &super::proxy::Proxy, rng: &mut fastrand::Rng, ttl: Duration) -> String {
    use super::proxy::Mode;
    let mode = [Mode::Slow, Mode::Blackhole, Mode::HalfOpen, Mode::Pass][rng.usize(0..4)];
    if mode == Mode::Pass {
        proxy.reset();
        return "link reset".into();
    }
    let lasts = ttl.mul_f64(0.2 + rng.f64() * 1.3);
    proxy.set(mode);
    tokio::time::sleep(lasts).await;
    proxy.set(Mode::Pass);
    format!("link {mode:?} {lasts:?}")
}

/// One in-memory table, shared by every locker of the process.
pub struct Memory(pub Arc<MemoryBackend>);

impl Target for Memory {
    fn name(&self) -> String {
        "memory".into()
    }

    async fn locker(&self) -> Locker {
        Locker::from_arc(self.0.clone())
    }

    fn faults(&self) -> Vec<Fault> {
        vec![Fault::Stall]
    }

    async fn inject(&self, _: Fault, _: &Keys, rng: &mut fastrand::Rng, ttl: Duration) -> String {
        stall(rng, ttl).await
    }

    async fn stored_locks(&self) -> usize {
        self.0.len()
    }
}

/// Nodes on one bus, a node per locker, each behind a link the nemesis
/// can cut.
#[derive(Default)]
pub struct Bus {
    bus: tower_lock::bus::LocalBus,
    nodes: std::sync::Mutex<Vec<(MemoryBackend, Partitionable)>>,
}

/// A node's way to the bus. While cut, what the node publishes and what the
/// bus sends it wait, as over a partitioned network that heals: the node
/// decides nothing meanwhile, and learns what it missed once it heals.
#[derive(Clone, Debug)]
pub struct Partitionable {
    bus: tower_lock::bus::LocalBus,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Partitionable {
    async fn healed(cut: &mut tokio::sync::watch::Receiver<bool>) {
        let _ = cut.wait_for(|cut| !cut).await;
    }
}

#[async_trait::async_trait]
impl tower_lock::bus::Bus for Partitionable {
    async fn publish(
        &self,
        command: tower_lock::bus::Command,
    ) -> Result<(), tower_lock::LockError> {
        Partitionable::healed(&mut self.cut.subscribe()).await;
        self.bus.publish(command).await
    }

    fn subscribe(&self) -> tower_lock::bus::Feed {
        let mut feed = self.bus.subscribe();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut cut = self.cut.subscribe();
        tokio::spawn(async move {
            while let Some(event) = feed.events.recv().await {
                Partitionable::healed(&mut cut).await;
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        tower_lock::bus::Feed {
            snapshot: feed.snapshot,
            events,
        }
    }
}

impl Target for Bus {
    fn name(&self) -> String {
        "memory-bus".into()
    }

    async fn locker(&self) -> Locker {
        let link = Partitionable {
            bus: self.bus.clone(),
            cut: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        let node = MemoryBackend::with_bus(link.clone());
        self.nodes.lock().expect("nodes").push((node.clone(), link));
        Locker::new(node)
    }

    fn faults(&self) -> Vec<Fault> {
        vec![Fault::Stall, Fault::Link]
    }

    async fn inject(
        &self,
        fault: Fault,
        _: &Keys,
        rng: &mut fastrand::Rng,
        ttl: Duration,
    ) -> String {
        if fault == Fault::Stall {
            return stall(rng, ttl).await;
        }
        let link = {
            let nodes = self.nodes.lock().expect("nodes");
            nodes[rng.usize(0..nodes.len())].1.clone()
        };
        let lasts = ttl.mul_f64(0.2 + rng.f64() * 1.8);
        link.cut.send_replace(true);
        tokio::time::sleep(lasts).await;
        link.cut.send_replace(false);
        format!("partition a node {lasts:?}")
    }

    async fn stored_locks(&self) -> usize {
        let nodes: Vec<MemoryBackend> = self
            .nodes
            .lock()
            .expect("nodes")
            .iter()
            .map(|(node, _)| node.clone())
            .collect();
        // Nodes apply the bus's events on their own tasks: one may lag.
        nodes.iter().map(MemoryBackend::len).max().unwrap_or(0)
    }
}

/// The last messages the backends sent, kept to be sent again.
#[derive(Clone, Default)]
struct Replays(Arc<std::sync::Mutex<std::collections::VecDeque<Message>>>);

/// A channel or subject, and what was sent on it.
type Message = (String, Vec<u8>);

impl Replays {
    fn keep(&self, channel: String, payload: Vec<u8>) {
        let mut kept = self.0.lock().expect("replays");
        if kept.len() == 64 {
            kept.pop_front();
        }
        kept.push_back((channel, payload));
    }

    fn all(&self) -> Vec<Message> {
        self.0.lock().expect("replays").iter().cloned().collect()
    }
}

/// Payloads a publisher who holds nothing sends: empty, garbage, huge,
/// not UTF-8, and every name of the history's entries it can guess.
fn forged_payloads(keys: &Keys, names: &[String]) -> Vec<Vec<u8>> {
    let mut payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"0".to_vec(),
        b"*".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        vec![b'a'; 64 * 1024],
    ];
    for key in keys.locks().iter().chain([&keys.election]) {
        payloads.push(key.as_bytes().to_vec());
    }
    for name in names {
        payloads.push(name.as_bytes().to_vec());
        // Slots past the count, slots of another count, names that are no
        // slot: each would be a grant if a hint were trusted.
        let permits = super::workload::PERMITS;
        for suffix in [
            ".r.x".to_owned(),
            ".w".to_owned(),
            ":0".to_owned(),
            format!(".p.{permits}.evil"),
            format!(".p.{}.0", permits + 1),
            format!(".p.{permits}.{permits}"),
            format!(".p.{permits}.{}", permits + 7),
        ] {
            payloads.push(format!("{name}{suffix}").into_bytes());
        }
    }
    payloads
}

#[cfg(feature = "redis")]
pub use self::redis_target::Redis;

#[cfg(feature = "redis")]
mod redis_target {
    use std::sync::Mutex;

    use super::{super::proxy::Proxy, *};
    use crate::{
        conformance::Harness,
        redis_support::{
            Cluster, Deployment, MASTER_NAME, RedisHarness, SentinelGroup, Tied, cli, server_args,
        },
        support::{ServerProcess, free_port},
    };

    /// A Redis deployment of the history's own, without persistence.
    pub struct Redis {
        name: &'static str,
        /// Its lockers' backends; it counts entries on `nodes` directly.
        harness: RedisHarness,
        /// Every master, reached directly.
        nodes: Vec<String>,
        /// How a child process reaches it.
        spec: String,
        /// A standalone server (restartable), and the proxy in front of it.
        standalone: Option<(Mutex<ServerProcess>, Proxy, tempfile::TempDir)>,
        /// The Sentinel's port, for failovers.
        sentinel: Option<u16>,
        replays: Replays,
        listening: std::sync::atomic::AtomicBool,
        /// The Cluster or Sentinel group, kept running.
        _deployment: Option<Box<dyn Send + Sync>>,
    }

    impl Redis {
        /// A standalone server, and a proxy in front of it for the
        /// in-process lockers (inside a tokio runtime).
        pub fn standalone() -> Redis {
            let (port, dir) = (free_port(), tempfile::tempdir().expect("dir"));
            let server = ServerProcess::start(
                crate::redis_support::REDIS_SERVER,
                server_args(port, dir.path()),
                port,
            );
            let proxy = Proxy::start(port);
            let url = format!("redis://127.0.0.1:{port}/");
            let proxied = format!("redis://127.0.0.1:{}/", proxy.port);
            let harness = RedisHarness::new(Deployment::Standalone(proxied), vec![url.clone()]);
            Redis {
                name: "redis",
                spec: format!("redis {url} {}", harness.prefix),
                harness,
                nodes: vec![url],
                standalone: Some((Mutex::new(server), proxy, dir)),
                replays: Replays::default(),
                listening: Default::default(),
                sentinel: None,
                _deployment: None,
            }
        }

        /// Three masters.
        pub fn cluster() -> Redis {
            let cluster = Cluster::start();
            let urls = cluster.urls();
            let harness = RedisHarness::new(Deployment::Cluster(urls.clone()), urls.clone());
            Redis {
                name: "redis-cluster",
                spec: format!("redis-cluster {} {}", urls.join(","), harness.prefix),
                harness,
                nodes: urls,
                standalone: None,
                replays: Replays::default(),
                listening: Default::default(),
                sentinel: None,
                _deployment: Some(Box::new(cluster)),
            }
        }

        /// A master and its replica, watched by a Sentinel.
        pub fn sentinel() -> Redis {
            let master = Tied::start(free_port(), Vec::new());
            let replica = Tied::start(
                free_port(),
                vec![
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    master.port.to_string(),
                ],
            );
            let group = SentinelGroup::watch(master, 2000);
            // Sentinel learns of the replica from the master's INFO.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !cli(group.sentinel.port, &["sentinel", "replicas", MASTER_NAME])
                .contains(&replica.port.to_string())
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "sentinel never saw the replica"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let sentinel = group.sentinel.url();
            let harness = RedisHarness::new(
                Deployment::Sentinel {
                    sentinel: sentinel.clone(),
                },
                vec![group.master.url()],
            );
            Redis {
                name: "redis-sentinel",
                spec: format!("redis-sentinel {sentinel} {}", harness.prefix),
                nodes: vec![group.master.url()],
                harness,
                standalone: None,
                replays: Replays::default(),
                listening: Default::default(),
                sentinel: Some(group.sentinel.port),
                _deployment: Some(Box::new((group, replica))),
            }
        }

        async fn connection(url: &str) -> Option<redis::aio::MultiplexedConnection> {
            let client = redis::Client::open(url).ok()?;
            client.get_multiplexed_async_connection().await.ok()
        }

        async fn on_a_node(&self, rng: &mut fastrand::Rng, command: redis::Cmd) -> String {
            let url = &self.nodes[rng.usize(0..self.nodes.len())];
            if let Some(mut conn) = Redis::connection(url).await {
                let _: Result<redis::Value, _> = command.query_async(&mut conn).await;
            }
            url.clone()
        }

        /// Records what the backends publish on every node, to replay it.
        async fn listen(&self) {
            for url in &self.nodes {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    continue;
                };
                let Ok(mut pubsub) = client.get_async_pubsub().await else {
                    continue;
                };
                if pubsub.psubscribe("*").await.is_err() {
                    continue;
                }
                let replays = self.replays.clone();
                tokio::spawn(async move {
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                        replays.keep(
                            message.get_channel_name().to_owned(),
                            message.get_payload_bytes().to_vec(),
                        );
                    }
                });
            }
        }

        async fn forge(&self, keys: &Keys) -> String {
            let mut sent = 0;
            for url in &self.nodes {
                let Some(mut conn) = Redis::connection(url).await else {
                    continue;
                };
                for (channel, payload) in self.replays.all() {
                    let published: Result<i64, _> = redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async(&mut conn)
                        .await;
                    sent += usize::from(published.is_ok());
                }
            }
            let names: Vec<String> = keys
                .locks()
                .iter()
                .chain([&keys.election])
                .map(|k| format!("{}{k}", self.harness.prefix))
                .collect();
            let payloads = forged_payloads(keys, &names);
            for url in &self.nodes {
                let Some(mut conn) = Redis::connection(url).await else {
                    continue;
                };
                let channels: Vec<Vec<u8>> = redis::cmd("PUBSUB")
                    .arg("CHANNELS")
                    .arg("*")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                for channel in &channels {
                    for payload in &payloads {
                        let published: Result<i64, _> = redis::cmd("PUBLISH")
                            .arg(channel)
                            .arg(payload)
                            .query_async(&mut conn)
                            .await;
                        sent += usize::from(published.is_ok());
                        // One at a time: a waiter acts on each before the next.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            format!("forge {sent}")
        }
    }

    impl Target for Redis {
        fn name(&self) -> String {
            self.name.into()
        }

        async fn locker(&self) -> Locker {
            if !self
                .listening
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                self.listen().await;
            }
            self.harness.locker().await
        }

        fn child_spec(&self) -> Option<String> {
            Some(self.spec.clone())
        }

        fn faults(&self) -> Vec<Fault> {
            let mut faults = vec![Fault::PauseStore, Fault::LoseState, Fault::Forge];
            if self.standalone.is_some() {
                faults.push(Fault::Link);
            }
            if self.sentinel.is_some() {
                faults.push(Fault::Failover);
            }
            faults
        }

        async fn inject(
            &self,
            fault: Fault,
            keys: &Keys,
            rng: &mut fastrand::Rng,
            ttl: Duration,
        ) -> String {
            let pause = ttl.mul_f64(0.2 + rng.f64());
            match (fault, &self.standalone) {
                (Fault::Link, Some((_, proxy, _))) => disturb(proxy, rng, ttl).await,
                (Fault::PauseStore, Some((server, ..))) => {
                    server.lock().expect("server").pause();
                    tokio::time::sleep(pause).await;
                    server.lock().expect("server").resume();
                    format!("pause-store {pause:?}")
                }
                // A node that answers nobody a while (its clients wait).
                (Fault::PauseStore, None) => {
                    let mut pause_clients = redis::cmd("CLIENT");
                    pause_clients
                        .arg("PAUSE")
                        .arg(pause.as_millis() as u64)
                        .arg("ALL");
                    let node = self.on_a_node(rng, pause_clients).await;
                    tokio::time::sleep(pause).await;
                    format!("client-pause {node} {pause:?}")
                }
                (Fault::LoseState, Some((server, ..))) if rng.bool() => {
                    if let Ok(mut server) = server.lock() {
                        server.restart();
                    }
                    "restart".into()
                }
                (Fault::LoseState, _) => {
                    let node = self.on_a_node(rng, redis::cmd("FLUSHALL")).await;
                    format!("flushall {node}")
                }
                (Fault::Failover, _) => {
                    let Some(port) = self.sentinel else {
                        return "no failover".into();
                    };
                    // The loss lasts until the old master has been demoted:
                    // until then it acknowledges writes its replica may never
                    // see. The fault ends only once both have switched.
                    let answer = tokio::task::spawn_blocking(move || {
                        let master =
                            || cli(port, &["sentinel", "get-master-addr-by-name", MASTER_NAME]);
                        let old = master();
                        let old_port = old.lines().nth(1).unwrap_or_default().trim().to_owned();
                        let answer = cli(port, &["sentinel", "failover", MASTER_NAME]);
                        let deadline = std::time::Instant::now() + Duration::from_secs(20);
                        while std::time::Instant::now() < deadline {
                            let demoted = old_port
                                .parse()
                                .is_ok_and(|old: u16| cli(old, &["role"]).starts_with("slave"));
                            if master() != old && demoted {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        answer
                    })
                    .await
                    .unwrap_or_default();
                    format!("failover: {}", answer.trim())
                }
                _ => self.forge(keys).await,
            }
        }

        async fn stored_locks(&self) -> usize {
            self.harness.stored_locks().await
        }

        fn recovery(&self) -> Duration {
            Duration::from_secs(2)
        }
    }
}

/// Opens the bucket, trying again for a while: a loaded machine or a node
/// the nemesis just restarted may time a first request out.
#[cfg(feature = "nats")]
async fn nats_backend_on(
    ports: &[u16],
    bucket: &str,
    replicas: usize,
) -> Result<tower_lock::nats::NatsBackend, tower_lock::LockError> {
    let js = crate::support::nats::jetstream(
        crate::support::nats::connect(ports).await,
        Duration::from_secs(2),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let opened = tower_lock::nats::NatsBackend::builder(js.clone(), bucket)
            .replicas(replicas)
            .request_timeout(Duration::from_secs(2))
            .build()
            .await;
        match opened {
            Err(tower_lock::LockError::Unavailable { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            opened => return opened,
        }
    }
}

#[cfg(feature = "nats")]
pub use self::nats_target::Nats;

#[cfg(feature = "nats")]
mod nats_target {
    use std::sync::Mutex;

    use futures_util::TryStreamExt;

    use super::{super::proxy::Proxy, *};
    use crate::support::ServerProcess;

    const BUCKET: &str = "locks";

    /// JetStream servers of the history's own: one (behind a proxy for the
    /// in-process lockers) or three with an R3 bucket.
    pub struct Nats {
        servers: Mutex<Vec<ServerProcess>>,
        ports: Vec<u16>,
        proxy: Option<Proxy>,
        replays: Replays,
        listening: std::sync::atomic::AtomicBool,
        crashes: Mutex<Vec<String>>,
    }

    impl Nats {
        /// One server, and the proxy in front of it (inside a tokio
        /// runtime).
        pub fn start() -> Nats {
            let server = crate::support::nats::server();
            Nats {
                ports: vec![server.port],
                proxy: Some(Proxy::start(server.port)),
                servers: Mutex::new(vec![server]),
                replays: Replays::default(),
                listening: Default::default(),
                crashes: Mutex::default(),
            }
        }

        /// Three clustered servers; the bucket is replicated on all three.
        pub async fn cluster() -> Nats {
            let servers = tokio::task::spawn_blocking(crate::support::nats::cluster)
                .await
                .expect("start the cluster");
            let nats = Nats {
                ports: servers.iter().map(|s| s.port).collect(),
                proxy: None,
                servers: Mutex::new(servers),
                replays: Replays::default(),
                listening: Default::default(),
                crashes: Mutex::default(),
            };
            // Right after start-up the cluster may still elect its leader.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while nats.open(&nats.ports).await.is_err() {
                assert!(std::time::Instant::now() < deadline, "no R3 bucket");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            nats
        }

        fn replicas(&self) -> usize {
            self.ports.len()
        }

        async fn open(
            &self,
            ports: &[u16],
        ) -> Result<tower_lock::nats::NatsBackend, tower_lock::LockError> {
            nats_backend_on(ports, BUCKET, self.replicas()).await
        }

        async fn client(&self) -> async_nats::Client {
            crate::support::nats::connect(&self.ports).await
        }

        /// Records what the backends announce, to replay it.
        async fn listen(&self) {
            let client = self.client().await;
            let Ok(mut announcements) = client.subscribe("tower-lock.>").await else {
                return;
            };
            let replays = self.replays.clone();
            tokio::spawn(async move {
                let _client = client;
                while let Some(message) = futures_util::StreamExt::next(&mut announcements).await {
                    replays.keep(message.subject.to_string(), message.payload.to_vec());
                }
            });
        }

        async fn forge(&self, keys: &Keys) -> String {
            let client = self.client().await;
            let mut sent = 0;
            for (subject, payload) in self.replays.all() {
                sent += usize::from(client.publish(subject, payload.into()).await.is_ok());
            }
            let names: Vec<String> = keys
                .locks()
                .iter()
                .chain([&keys.election])
                .map(|k| tower_lock::nats::encode_key(k))
                .collect();
            let payloads = forged_payloads(keys, &names);
            for name in &names {
                let subject = format!("tower-lock.{BUCKET}.released.{name}");
                for payload in &payloads {
                    let payload = bytes::Bytes::from(payload.clone());
                    sent += usize::from(client.publish(subject.clone(), payload).await.is_ok());
                    // One at a time: a waiter acts on each before the next.
                    let _ = client.flush().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            format!("forge {sent}")
        }
    }

    impl Target for Nats {
        fn name(&self) -> String {
            if self.replicas() == 1 {
                "nats"
            } else {
                "nats-r3"
            }
            .into()
        }

        async fn locker(&self) -> Locker {
            self.revive().await;
            if !self
                .listening
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                self.listen().await;
            }
            let ports = match &self.proxy {
                Some(proxy) => vec![proxy.port],
                None => self.ports.clone(),
            };
            match self.open(&ports).await {
                Ok(backend) => Locker::new(backend),
                Err(err) => {
                    // Which part failed: the proxy or the server.
                    let direct = self.open(&self.ports).await.map(|_| ());
                    let log = self.servers.lock().expect("servers")[0].log();
                    // A crashed server's panic and the frames under it.
                    let from = log.find("panic:").unwrap_or(log.len().saturating_sub(4000));
                    let tail: String = log[from..].lines().take(40).collect::<Vec<_>>().join("\n");
                    panic!("open the bucket: {err:?}; directly: {direct:?}; server log:\n{tail}")
                }
            }
        }

        fn child_spec(&self) -> Option<String> {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            Some(format!(
                "nats {} {BUCKET} {}",
                ports.join(","),
                self.replicas()
            ))
        }

        fn faults(&self) -> Vec<Fault> {
            let mut faults = vec![Fault::PauseStore, Fault::LoseState, Fault::Forge];
            faults.push(if self.proxy.is_some() {
                Fault::Link
            } else {
                Fault::KillNode
            });
            faults
        }

        async fn inject(
            &self,
            fault: Fault,
            keys: &Keys,
            rng: &mut fastrand::Rng,
            ttl: Duration,
        ) -> String {
            let node = rng.usize(0..self.ports.len());
            let pause = ttl.mul_f64(0.2 + rng.f64());
            match (fault, &self.proxy) {
                (Fault::Link, Some(proxy)) => disturb(proxy, rng, ttl).await,
                (Fault::PauseStore, _) => {
                    self.servers.lock().expect("servers")[node].pause();
                    tokio::time::sleep(pause).await;
                    self.servers.lock().expect("servers")[node].resume();
                    format!("pause node {node} {pause:?}")
                }
                // The others keep a quorum; it comes back with its store.
                (Fault::KillNode, _) => {
                    self.servers.lock().expect("servers")[node].kill();
                    tokio::time::sleep(pause * 2).await;
                    let servers = std::mem::take(&mut *self.servers.lock().expect("servers"));
                    let servers = tokio::task::spawn_blocking(move || {
                        let mut servers = servers;
                        servers[node].restart();
                        servers
                    })
                    .await
                    .expect("restart");
                    *self.servers.lock().expect("servers") = servers;
                    format!("kill node {node} {:?}", pause * 2)
                }
                (Fault::LoseState, _) => {
                    let js = async_nats::jetstream::new(self.client().await);
                    let deleted = js.delete_key_value(BUCKET).await.is_ok();
                    // The backends find the bucket gone; one made now
                    // creates it again.
                    let created = self.open(&self.ports).await.is_ok();
                    format!("recreate-bucket (deleted: {deleted}, created: {created})")
                }
                _ => self.forge(keys).await,
            }
        }

        async fn stored_locks(&self) -> usize {
            self.stored_names().await.len()
        }

        async fn stored_names(&self) -> Vec<String> {
            let js = async_nats::jetstream::new(self.client().await);
            let Ok(store) = js.get_key_value(BUCKET).await else {
                return Vec::new();
            };
            match store.keys().await {
                Ok(keys) => keys.try_collect::<Vec<_>>().await.unwrap_or_default(),
                Err(_) => Vec::new(),
            }
        }

        /// Starts again a server that crashed. nats-server 2.9.10 crashes
        /// (a nil pointer in `jsMsgGetRequest`) when a stream is deleted
        /// while a `STREAM.MSG.GET` on it is under way: the nemesis's
        /// re-created bucket sometimes meets a backend's leader read so.
        async fn revive(&self) {
            let servers = std::mem::take(&mut *self.servers.lock().expect("servers"));
            let (servers, crashed) = tokio::task::spawn_blocking(move || {
                let mut servers = servers;
                let crashed: Vec<String> = servers
                    .iter_mut()
                    .filter_map(|server| server.revive_if_crashed())
                    .collect();
                (servers, crashed)
            })
            .await
            .expect("revive");
            *self.servers.lock().expect("servers") = servers;
            if crashed.is_empty() {
                return;
            }
            for crash in crashed {
                eprintln!("THE NATS SERVER CRASHED (its own bug), started again: {crash}");
                self.crashes.lock().expect("crashes").push(crash);
            }
            // It may have crashed between deleting the bucket and creating it
            // again: the backends would find no bucket for ever.
            if let Err(err) = self.open(&self.ports).await {
                eprintln!("the bucket could not be made again after the crash: {err}");
            }
        }

        fn crashes(&self) -> Vec<String> {
            self.crashes.lock().expect("crashes").clone()
        }

        fn recovery(&self) -> Duration {
            // A new stream leader on the cluster.
            Duration::from_secs(if self.replicas() == 1 { 2 } else { 6 })
        }
    }
}

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
    /// The in-process lockers' link to the store turns slow, blackholed or
    /// half-open a while, or every connection is reset.
    Link,
}

impl Fault {
    /// Faults after which plain leases are protected by their fences alone
    /// (DESIGN semantic 13).
    pub fn loses_writes(self) -> bool {
        self == Fault::LoseState
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

    /// How long the store may take to serve again after a fault, beyond
    /// the ttl and the hold-back (a restart, a failover).
    fn recovery(&self) -> Duration {
        Duration::ZERO
    }
}

/// A child process's locker, from the spec its parent's target gave it.
pub async fn connect(spec: &str) -> Locker {
    let parts: Vec<&str> = spec.split(' ').collect();
    match parts[..] {
        #[cfg(feature = "redis")]
        ["redis", url, prefix] => Locker::new(
            tower_lock::redis::RedisBackend::builder(tower_lock::redis::RedisClient::from(
                redis::Client::open(url).expect("redis url"),
            ))
            .prefix(prefix.to_owned())
            .build()
            .await
            .expect("connect to Redis"),
        ),
        #[cfg(feature = "nats")]
        ["nats", port, bucket] => {
            let port: u16 = port.parse().expect("port");
            Locker::new(nats_backend(port, bucket).await)
        }
        _ => panic!("no store for the spec {spec:?}"),
    }
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

/// Nodes on one bus, a node per locker.
#[derive(Default)]
pub struct Bus {
    bus: tower_lock::bus::LocalBus,
    nodes: std::sync::Mutex<Vec<MemoryBackend>>,
}

impl Target for Bus {
    fn name(&self) -> String {
        "memory-bus".into()
    }

    async fn locker(&self) -> Locker {
        let node = MemoryBackend::with_bus(self.bus.clone());
        self.nodes.lock().expect("nodes").push(node.clone());
        Locker::new(node)
    }

    fn faults(&self) -> Vec<Fault> {
        vec![Fault::Stall]
    }

    async fn inject(&self, _: Fault, _: &Keys, rng: &mut fastrand::Rng, ttl: Duration) -> String {
        stall(rng, ttl).await
    }

    async fn stored_locks(&self) -> usize {
        let nodes = self.nodes.lock().expect("nodes").clone();
        // Nodes apply the bus's events on their own tasks: one may lag.
        nodes.iter().map(MemoryBackend::len).max().unwrap_or(0)
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
        redis_support::{Deployment, RedisHarness, server_args},
        support::{ServerProcess, free_port},
    };

    /// A standalone redis-server of the history's own, without persistence.
    pub struct Redis {
        server: Mutex<ServerProcess>,
        dir: tempfile::TempDir,
        /// Its lockers reach the server through the proxy; it counts
        /// entries on the server itself.
        harness: RedisHarness,
        proxy: Proxy,
    }

    impl Redis {
        /// Starts the server, and the proxy in front of it (inside a tokio
        /// runtime).
        pub fn start() -> Redis {
            let (port, dir) = (free_port(), tempfile::tempdir().expect("dir"));
            let server = ServerProcess::start(
                crate::redis_support::REDIS_SERVER,
                server_args(port, dir.path()),
                port,
            );
            let proxy = Proxy::start(port);
            let (url, proxied) = (
                format!("redis://127.0.0.1:{port}/"),
                format!("redis://127.0.0.1:{}/", proxy.port),
            );
            Redis {
                server: Mutex::new(server),
                dir,
                harness: RedisHarness::new(Deployment::Standalone(proxied), vec![url]),
                proxy,
            }
        }

        fn url(&self) -> &str {
            &self.harness.scan[0]
        }

        async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
            let client = redis::Client::open(self.url()).ok()?;
            client.get_multiplexed_async_connection().await.ok()
        }
    }

    impl Target for Redis {
        fn name(&self) -> String {
            "redis".into()
        }

        async fn locker(&self) -> Locker {
            self.harness.locker().await
        }

        fn child_spec(&self) -> Option<String> {
            Some(format!("redis {} {}", self.url(), self.harness.prefix))
        }

        fn faults(&self) -> Vec<Fault> {
            vec![
                Fault::PauseStore,
                Fault::LoseState,
                Fault::Forge,
                Fault::Link,
            ]
        }

        async fn inject(
            &self,
            fault: Fault,
            keys: &Keys,
            rng: &mut fastrand::Rng,
            ttl: Duration,
        ) -> String {
            let _ = &self.dir;
            match fault {
                Fault::Link => disturb(&self.proxy, rng, ttl).await,
                Fault::PauseStore => {
                    let pause = ttl.mul_f64(0.2 + rng.f64());
                    self.server.lock().expect("server").pause();
                    tokio::time::sleep(pause).await;
                    self.server.lock().expect("server").resume();
                    format!("pause-store {pause:?}")
                }
                Fault::LoseState if rng.bool() => {
                    if let Ok(mut server) = self.server.lock() {
                        server.restart();
                    }
                    "restart".into()
                }
                Fault::LoseState => {
                    if let Some(mut conn) = self.connection().await {
                        let _: Result<(), _> = redis::cmd("FLUSHALL").query_async(&mut conn).await;
                    }
                    "flushall".into()
                }
                _ => {
                    let Some(mut conn) = self.connection().await else {
                        return "forge (no connection)".into();
                    };
                    let channels: Vec<Vec<u8>> = redis::cmd("PUBSUB")
                        .arg("CHANNELS")
                        .arg("*")
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_default();
                    let names: Vec<String> = keys
                        .locks()
                        .iter()
                        .chain([&keys.election])
                        .map(|k| format!("{}{k}", self.harness.prefix))
                        .collect();
                    let payloads = forged_payloads(keys, &names);
                    let mut sent = 0;
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
                    format!("forge {sent} on {} channels", channels.len())
                }
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

#[cfg(feature = "nats")]
async fn nats_backend(port: u16, bucket: &str) -> tower_lock::nats::NatsBackend {
    let js = async_nats::jetstream::new(crate::support::nats::connect(&[port]).await);
    tower_lock::nats::NatsBackend::builder(js, bucket)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("open the bucket")
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

    /// A JetStream server of the history's own.
    pub struct Nats {
        server: Mutex<ServerProcess>,
        port: u16,
        /// The in-process lockers' way to the server.
        proxy: Proxy,
    }

    impl Nats {
        /// Starts the server, and the proxy in front of it (inside a tokio
        /// runtime).
        pub fn start() -> Nats {
            let server = crate::support::nats::server();
            Nats {
                port: server.port,
                proxy: Proxy::start(server.port),
                server: Mutex::new(server),
            }
        }

        async fn client(&self) -> async_nats::Client {
            crate::support::nats::connect(&[self.port]).await
        }
    }

    impl Target for Nats {
        fn name(&self) -> String {
            "nats".into()
        }

        async fn locker(&self) -> Locker {
            Locker::new(nats_backend(self.proxy.port, BUCKET).await)
        }

        fn child_spec(&self) -> Option<String> {
            Some(format!("nats {} {BUCKET}", self.port))
        }

        fn faults(&self) -> Vec<Fault> {
            vec![
                Fault::PauseStore,
                Fault::LoseState,
                Fault::Forge,
                Fault::Link,
            ]
        }

        async fn inject(
            &self,
            fault: Fault,
            keys: &Keys,
            rng: &mut fastrand::Rng,
            ttl: Duration,
        ) -> String {
            match fault {
                Fault::Link => disturb(&self.proxy, rng, ttl).await,
                Fault::PauseStore => {
                    let pause = ttl.mul_f64(0.2 + rng.f64());
                    self.server.lock().expect("server").pause();
                    tokio::time::sleep(pause).await;
                    self.server.lock().expect("server").resume();
                    format!("pause-store {pause:?}")
                }
                Fault::LoseState => {
                    let js = async_nats::jetstream::new(self.client().await);
                    let deleted = js.delete_key_value(BUCKET).await.is_ok();
                    // The backends of this process and the children find the
                    // bucket gone; one made now creates it again.
                    let _ = nats_backend(self.port, BUCKET).await;
                    format!("recreate-bucket (deleted: {deleted})")
                }
                _ => {
                    let client = self.client().await;
                    let names: Vec<String> = keys
                        .locks()
                        .iter()
                        .chain([&keys.election])
                        .map(|k| tower_lock::nats::encode_key(k))
                        .collect();
                    let payloads = forged_payloads(keys, &names);
                    let mut sent = 0;
                    for name in &names {
                        let subject = format!("tower-lock.{BUCKET}.released.{name}");
                        for payload in &payloads {
                            let payload = bytes::Bytes::from(payload.clone());
                            sent +=
                                usize::from(client.publish(subject.clone(), payload).await.is_ok());
                            // One at a time: a waiter acts on each before the next.
                            let _ = client.flush().await;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    let _ = client.flush().await;
                    format!("forge {sent}")
                }
            }
        }

        async fn stored_locks(&self) -> usize {
            let js = async_nats::jetstream::new(self.client().await);
            let Ok(store) = js.get_key_value(BUCKET).await else {
                return 0;
            };
            match store.keys().await {
                Ok(keys) => keys
                    .try_collect::<Vec<_>>()
                    .await
                    .map_or(0, |keys| keys.len()),
                Err(_) => 0,
            }
        }

        fn recovery(&self) -> Duration {
            Duration::from_secs(2)
        }
    }
}

//! The clients a [`RedisBackend`](super::RedisBackend) can be built from,
//! and the reconnecting command connection made from each.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{
    Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    sentinel::SentinelClient,
};

/// A Redis client of any deployment, for
/// [`RedisBackend::new`](super::RedisBackend::new).
///
/// redis-rs has one client type per deployment and no common trait, so this
/// enum gathers them; each converts with `From`, so `RedisBackend::new`
/// takes any of them directly.
///
/// ```
/// use tower_lock::redis::RedisClient;
///
/// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let client: RedisClient = client.into();
/// assert!(matches!(client, RedisClient::Standalone(_)));
/// # Ok::<_, redis::RedisError>(())
/// ```
#[non_exhaustive]
pub enum RedisClient {
    /// One Redis server (commands through a
    /// [`ConnectionManager`], which reconnects by itself).
    Standalone(Client),
    /// A Redis Cluster (commands routed by slot; wake-ups from one node).
    ///
    /// The backend sets its connections' response and connection timeouts
    /// to its request deadline, but redis-rs cannot read or replace the
    /// overall timeout of a client built with
    /// `ClusterClientBuilder::response_timeout` or `overall_response_timeout`:
    /// set those no shorter than the backend's
    /// [`request_timeout`](super::RedisBackendBuilder::request_timeout), or
    /// requests fail at them instead, or leave them unset.
    Cluster(ClusterClient),
    /// The master of a Sentinel-monitored group, looked up again after a
    /// failover or a dropped connection.
    Sentinel(SentinelClient),
}

impl From<Client> for RedisClient {
    fn from(client: Client) -> Self {
        RedisClient::Standalone(client)
    }
}

impl From<ClusterClient> for RedisClient {
    fn from(client: ClusterClient) -> Self {
        RedisClient::Cluster(client)
    }
}

impl From<SentinelClient> for RedisClient {
    fn from(client: SentinelClient) -> Self {
        RedisClient::Sentinel(client)
    }
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Connection details may carry passwords: name the kind only.
        f.write_str(match self {
            RedisClient::Standalone(_) => "RedisClient::Standalone",
            RedisClient::Cluster(_) => "RedisClient::Cluster",
            RedisClient::Sentinel(_) => "RedisClient::Sentinel",
        })
    }
}

/// The command connection: cheap to clone, reconnecting by itself, and
/// giving up on a request after its deadline.
#[derive(Clone)]
pub(crate) struct Conn {
    link: Link,
    deadline: Duration,
}

#[derive(Clone)]
enum Link {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

impl Conn {
    /// Connects, so that a wrong address fails construction; each request
    /// then fails once `deadline` has passed without an answer.
    pub(crate) async fn connect(
        client: RedisClient,
        deadline: Duration,
    ) -> RedisResult<(Conn, PubSubSource)> {
        let connecting = tokio::time::timeout(deadline, Link::connect(client, deadline));
        let (link, source) = connecting.await.map_err(|_| timed_out(deadline))??;
        Ok((Conn { link, deadline }, source))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self.link {
            Link::Standalone(_) => "standalone",
            Link::Cluster(_) => "cluster",
            Link::Sentinel(_) => "sentinel",
        }
    }

    /// How long any one request may go unanswered.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }
}

/// The error of a request that had no answer by its deadline: an I/O
/// timeout, so that callers treat its outcome as unknown.
pub(crate) fn timed_out(deadline: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from Redis within {deadline:?}"),
    ))
}

/// A `ConnectionManager` whose own timeouts are the backend's deadline:
/// redis-rs's defaults (500 ms for a response, 1 s to connect) would fail
/// requests long before it under load.
fn manager_config(deadline: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(deadline))
        .set_connection_timeout(Some(deadline))
}

impl Link {
    async fn connect(client: RedisClient, deadline: Duration) -> RedisResult<(Link, PubSubSource)> {
        match client {
            RedisClient::Standalone(client) => {
                let manager =
                    ConnectionManager::new_with_config(client.clone(), manager_config(deadline))
                        .await?;
                Ok((
                    Link::Standalone(manager),
                    PubSubSource::Client(Box::new(client)),
                ))
            }
            RedisClient::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_response_timeout(deadline)
                    .set_connection_timeout(deadline);
                let conn = client.get_async_connection_with_config(config).await?;
                let source = PubSubSource::Cluster {
                    conn: conn.clone(),
                    attempts: Arc::new(AtomicUsize::new(0)),
                };
                Ok((Link::Cluster(conn), source))
            }
            RedisClient::Sentinel(client) => {
                let sentinel = Arc::new(SentinelConn {
                    sentinel: tokio::sync::Mutex::new(client),
                    current: Mutex::new(None),
                    db: AtomicI64::new(0),
                    deadline,
                });
                sentinel.manager().await?;
                Ok((
                    Link::Sentinel(sentinel.clone()),
                    PubSubSource::Sentinel(sentinel),
                ))
            }
        }
    }
}

/// `request`, failed as timed out if it takes longer than `deadline`.
fn bounded<'a, T: Send + 'a>(
    deadline: Duration,
    request: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    Box::pin(async move {
        tokio::time::timeout(deadline, request)
            .await
            .map_err(|_| timed_out(deadline))?
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        bounded(self.deadline, self.link.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let request = self.link.req_packed_commands(pipeline, offset, count);
        bounded(self.deadline, request)
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
            Link::Sentinel(sentinel) => Box::pin(async move {
                let mut conn = sentinel.manager().await?;
                let reply = conn.req_packed_command(cmd).await;
                sentinel.check(&reply);
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(sentinel) => Box::pin(async move {
                let mut conn = sentinel.manager().await?;
                let reply = conn.req_packed_commands(pipeline, offset, count).await;
                sentinel.check(&reply);
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
            Link::Sentinel(sentinel) => sentinel.db.load(Ordering::Relaxed),
        }
    }
}

/// The current master's connection, replaced when it stops being one.
pub(crate) struct SentinelConn {
    /// Also serialises reconnects, so a burst of requests after a failover
    /// opens one connection, not one each.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// `None` until connected, and after an error that says the master moved.
    current: Mutex<Option<ConnectionManager>>,
    db: AtomicI64,
    deadline: Duration,
}

impl SentinelConn {
    fn cached(&self) -> Option<ConnectionManager> {
        crate::sync::lock(&self.current).clone()
    }

    async fn master(&self) -> RedisResult<Client> {
        self.sentinel.lock().await.async_get_client().await
    }

    async fn manager(&self) -> RedisResult<ConnectionManager> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let mut sentinel = self.sentinel.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let client = sentinel.async_get_client().await?;
        self.db.store(
            client.get_connection_info().redis_settings().db(),
            Ordering::Relaxed,
        );
        let conn =
            ConnectionManager::new_with_config(client, manager_config(self.deadline)).await?;
        *crate::sync::lock(&self.current) = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error meaning the master may have
    /// moved, so that the next request asks the sentinels again.
    fn check<T>(&self, reply: &RedisResult<T>) {
        if let Err(err) = reply
            && master_may_have_moved(err)
        {
            tracing::debug!(error = %err, "asking the sentinels for the master again");
            *crate::sync::lock(&self.current) = None;
        }
    }
}

fn master_may_have_moved(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(
            err.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Where the wake-up connection goes: opened again after every drop.
#[derive(Clone)]
pub(crate) enum PubSubSource {
    // Boxed: a `Client` is large, and the enum is moved into a task once.
    Client(Box<Client>),
    Sentinel(Arc<SentinelConn>),
    /// Classic pub/sub messages reach every node of a Cluster, so any master
    /// will do; successive attempts go round the masters in case one is down.
    Cluster {
        conn: ClusterConnection,
        attempts: Arc<AtomicUsize>,
    },
}

impl PubSubSource {
    pub(crate) async fn open(&self) -> RedisResult<PubSub> {
        match self {
            PubSubSource::Client(client) => client.get_async_pubsub().await,
            PubSubSource::Sentinel(sentinel) => sentinel.master().await?.get_async_pubsub().await,
            PubSubSource::Cluster { conn, attempts } => {
                let masters = cluster_masters(&mut conn.clone()).await?;
                let Some(count) = std::num::NonZeroUsize::new(masters.len()) else {
                    return Err(RedisError::from((
                        ErrorKind::ClusterConnectionNotFound,
                        "CLUSTER SLOTS named no master",
                    )));
                };
                let pick = attempts.fetch_add(1, Ordering::Relaxed) % count;
                Client::open(masters[pick].clone())?
                    .get_async_pubsub()
                    .await
            }
        }
    }
}

/// The masters' addresses, from `CLUSTER SLOTS` (`[start, end, [host, port,
/// ..], replicas..]` per range).
async fn cluster_masters(conn: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let ranges: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut masters = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(node)) = parts.get(2) else {
            continue;
        };
        let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
            continue;
        };
        let host: String = redis::from_redis_value_ref(host)?;
        let port: u16 = redis::from_redis_value_ref(port)?;
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Ok(masters)
}

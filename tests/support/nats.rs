//! nats-server processes for the NATS backend's tests and benches.

use std::time::Duration;

use super::{ServerProcess, free_port};

/// The Debian package's binary; `nats-server` on `PATH` otherwise.
pub fn program() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

/// A standalone JetStream server on a free loopback port, storing in
/// `store/` under its temp dir (so a restart keeps the buckets).
pub fn server() -> ServerProcess {
    let (args, port) = server_args();
    ServerProcess::start(program(), args, port)
}

/// The arguments and port of a standalone server.
fn server_args() -> (Vec<String>, u16) {
    let port = free_port();
    let args = [
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-sd",
        "store",
    ];
    (args.map(String::from).to_vec(), port)
}

/// Three JetStream servers clustered over loopback routes.
pub fn cluster() -> Vec<ServerProcess> {
    cluster_args()
        .into_iter()
        .map(|(args, port)| ServerProcess::start(program(), args, port))
        .collect()
}

/// The arguments and client port of each of three clustered servers.
fn cluster_args() -> Vec<(Vec<String>, u16)> {
    let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = route_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (0..3)
        .map(|n| {
            let args = [
                "-js".to_owned(),
                "-a".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                client_ports[n].to_string(),
                "-sd".to_owned(),
                "store".to_owned(),
                "-n".to_owned(),
                format!("node-{n}"),
                "--cluster_name".to_owned(),
                "locks".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", route_ports[n]),
                "--routes".to_owned(),
                routes.clone(),
            ];
            (args.to_vec(), client_ports[n])
        })
        .collect()
}

/// A client of the servers on `ports`, reconnecting for ever.
pub async fn connect(ports: &[u16]) -> async_nats::Client {
    let urls: Vec<async_nats::ServerAddr> = ports
        .iter()
        .map(|p| {
            format!("nats://127.0.0.1:{p}")
                .parse()
                .expect("server address")
        })
        .collect();
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls)
        .await
        .expect("connect to nats-server")
}

/// A JetStream context whose requests give up after `timeout`, so tests
/// around outages move on quickly.
pub fn jetstream(client: async_nats::Client, timeout: Duration) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(timeout);
    js
}

/// Records what the backends announce on `bucket`'s release subjects, for
/// [`forge`] to replay.
pub struct Recorder {
    heard: std::sync::Arc<std::sync::Mutex<Vec<(String, bytes::Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(client: &async_nats::Client, bucket: &str) -> Self {
        use futures_util::StreamExt;
        let mut subscriber = client
            .subscribe(format!("tower-lock.{bucket}.>"))
            .await
            .expect("subscribe to the announcements");
        client.flush().await.expect("flush");
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let heard = heard.clone();
            async move {
                while let Some(message) = subscriber.next().await {
                    let mut heard = heard.lock().expect("heard");
                    if heard.len() < 256 {
                        heard.push((message.subject.to_string(), message.payload));
                    }
                }
            }
        });
        Recorder { heard, task }
    }

    fn heard(&self) -> Vec<(String, bytes::Bytes)> {
        self.heard.lock().expect("heard").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Plays someone who may publish anything on the server but holds nothing:
/// sends forged and replayed messages about `key` on every subject the
/// backends of `bucket` listen to (release announcements and the slot
/// hints they carry, and the deliver subjects of the bucket's watches),
/// and returns how many it sent.
pub async fn forge(
    client: &async_nats::Client,
    bucket: &str,
    key: &str,
    recorded: &Recorder,
) -> usize {
    use bytes::Bytes;
    use futures_util::TryStreamExt;

    let k = tower_lock::nats::encode_key(key);
    let token = uuid::Uuid::new_v4();
    let payloads: Vec<Bytes> = [
        String::new(),
        format!("{k}.p.1.evil"),
        format!("{k}.p.1.1"),
        format!("{k}.p.1.+0"),
        format!("{k}.p.+1.0"),
        format!("{k}.p.01.0"),
        format!("{k}.p.1.0"),
        format!("{k}.p.1.0.x"),
        format!("{k}.p.2.1"),
        format!("{k}.p.4294967295.7"),
        format!("{k}.p.0.0"),
        k.clone(),
        format!("{k}.w"),
        format!("{k}.r.{token}"),
        "other.p.1.0".to_owned(),
        format!("{k}x.p.1.0"),
        format!("v1 {token} 1"),
        format!("{k}.p.1.0 ").repeat(1 << 16),
    ]
    .into_iter()
    .map(Bytes::from)
    .chain([
        Bytes::from_static(b"\xff\xfe\x00"),
        Bytes::from(vec![b'.'; 1 << 20]),
    ])
    .collect();
    let subjects = [
        format!("tower-lock.{bucket}.released.{k}"),
        format!("tower-lock.{bucket}.released.{k}.p.1.0"),
        format!("tower-lock.{bucket}.released.{k}.w"),
        format!("tower-lock.{bucket}.released.{k}x"),
        format!("tower-lock.other.released.{k}"),
        format!("tower-lock.{bucket}-other.released.{k}"),
    ];
    let mut sent = 0;
    for (i, subject) in subjects.iter().enumerate() {
        for payload in &payloads {
            if client
                .publish(subject.clone(), payload.clone())
                .await
                .is_ok()
            {
                sent += 1;
            }
            if i == 0 {
                // One at a time, so that each is the hint a woken waiter
                // acts on, not only the last of a burst.
                let _ = client.flush().await;
                tokio::time::sleep(std::time::Duration::from_millis(60)).await;
            }
        }
    }
    // Replays of what the backends sent, as they were and aimed at `key`.
    let announced = format!("tower-lock.{bucket}.released.{k}");
    for (subject, payload) in recorded.heard() {
        for subject in [subject, announced.clone()] {
            if client.publish(subject, payload.clone()).await.is_ok() {
                sent += 1;
            }
        }
    }
    // The watches' deliver subjects, with what a watch event about `key`
    // would carry but no JetStream metadata.
    let js = async_nats::jetstream::new(client.clone());
    if let Ok(stream) = js.get_stream(format!("KV_{bucket}")).await {
        let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap_or_default();
        for consumer in consumers {
            let Some(deliver) = consumer.config.deliver_subject else {
                continue;
            };
            for payload in payloads.iter().take(4) {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("KV-Operation", "DEL");
                let reply = format!("$JS.ACK.KV_{bucket}.{}.1.1.1.1.0", consumer.name);
                let forged = client
                    .publish_with_reply_and_headers(
                        deliver.clone(),
                        reply,
                        headers,
                        payload.clone(),
                    )
                    .await;
                if forged.is_ok() {
                    sent += 1;
                }
            }
        }
    }
    let _ = client.flush().await;
    sent
}

/// A nats-server that lives as long as the test process, shared by its
/// tests: a shell stays beside it and kills it (and removes its store) when
/// the process exits, however it exits, since its stdin closes then.
pub struct Lasting {
    pub port: u16,
    /// Never waited for: it ends after the test process, which holds the
    /// other end of its stdin.
    _shell: std::process::Child,
}

fn lasting(args: Vec<String>, port: u16) -> Lasting {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let quoted: Vec<String> = std::iter::once(program().to_owned())
        .chain(args)
        .map(|arg| format!("'{arg}'"))
        .collect();
    let script = format!(
        "cd '{dir}' && {server} >server.log 2>&1 & pid=$!; read _; kill $pid; wait $pid; \
         rm -rf '{dir}'",
        dir = dir.display(),
        server = quoted.join(" "),
    );
    let shell = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("start sh");
    super::wait_for_port(port, Duration::from_secs(15));
    Lasting {
        port,
        _shell: shell,
    }
}

/// [`server`], for the whole test process.
pub fn lasting_server() -> Lasting {
    let (args, port) = server_args();
    lasting(args, port)
}

/// [`cluster`], for the whole test process.
pub fn lasting_cluster() -> Vec<Lasting> {
    cluster_args()
        .into_iter()
        .map(|(args, port)| lasting(args, port))
        .collect()
}

/// Buckets older than the conformance checks' longest ttl, one per check,
/// on servers shared by the test process.
///
/// On a stream younger than a lease's ttl, a lease with a value waits out
/// the rest of it (the bucket may have been created again while leaders of
/// the old one still act): the election checks, with their 30 s leases,
/// would wait as long on a bucket created for them.
pub struct AgedBuckets {
    pub ports: Vec<u16>,
    _servers: Vec<Lasting>,
    names: std::sync::Mutex<std::vec::IntoIter<String>>,
    ready: std::time::Instant,
}

impl AgedBuckets {
    /// Creates `count` buckets of `replicas` on `servers`, old enough
    /// `age` after the last one was made.
    pub fn new(servers: Vec<Lasting>, count: usize, replicas: usize, age: Duration) -> Self {
        let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
        let names: Vec<String> = (0..count).map(|n| format!("aged-{n}")).collect();
        let made = {
            let (ports, names) = (ports.clone(), names.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let js = jetstream(connect(&ports).await, Duration::from_secs(2));
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    for name in &names {
                        let built = loop {
                            let built = tower_lock::nats::NatsBackend::builder(js.clone(), name)
                                .replicas(replicas)
                                .build()
                                .await;
                            match built {
                                Ok(backend) => break backend,
                                Err(err) => {
                                    assert!(
                                        std::time::Instant::now() < deadline,
                                        "bucket {name}: {err}"
                                    );
                                    tokio::time::sleep(Duration::from_millis(250)).await;
                                }
                            }
                        };
                        drop(built);
                    }
                });
            })
        };
        made.join().expect("create the buckets");
        AgedBuckets {
            ports,
            _servers: servers,
            names: std::sync::Mutex::new(names.into_iter()),
            ready: std::time::Instant::now() + age,
        }
    }

    /// A bucket nobody else uses, once it is old enough.
    pub async fn take(&self) -> String {
        let name = self.names.lock().expect("names").next();
        let name = name.expect("more checks than aged buckets: raise their count");
        let ready = tokio::time::Instant::from_std(self.ready);
        tokio::time::sleep_until(ready).await;
        name
    }
}

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
    let port = free_port();
    let args = [
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-sd",
        "store",
    ]
    .map(String::from)
    .to_vec();
    ServerProcess::start(program(), args, port)
}

/// Three JetStream servers clustered over loopback routes.
pub fn cluster() -> Vec<ServerProcess> {
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
            ServerProcess::start(program(), args.to_vec(), client_ports[n])
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
        format!("other.p.1.0"),
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

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

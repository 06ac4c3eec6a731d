//! A TCP proxy between the in-process lockers and the store, for
//! connection faults: added latency, a blackhole (connections stay open,
//! nothing arrives), a half-open link (requests arrive, answers do not),
//! and a reset of every connection.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the link does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// Each chunk waits 50 ms.
    Slow = 1,
    /// Nothing goes through either way until the mode changes.
    Blackhole = 2,
    /// Requests go through, answers wait until the mode changes.
    HalfOpen = 3,
}

impl Mode {
    fn of(code: u8) -> Mode {
        match code {
            1 => Mode::Slow,
            2 => Mode::Blackhole,
            3 => Mode::HalfOpen,
            _ => Mode::Pass,
        }
    }
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    resets: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`. Must be
    /// called inside a tokio runtime.
    pub fn start(upstream: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("address").port();
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let (resets, _) = watch::channel(0);
        let proxy = Proxy {
            port,
            mode: mode.clone(),
            resets: resets.clone(),
        };
        tokio::spawn(async move {
            loop {
                // An accept error (out of descriptors, say) must not end
                // the proxy for the rest of the soak.
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (mode, reset) = (mode.clone(), resets.subscribe());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        link(client, server, mode, reset).await;
                    }
                });
            }
        });
        proxy
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Closes every connection open now.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

async fn link(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    mut reset: watch::Receiver<u64>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone(), false);
    let down = pump(server_read, client_write, mode, true);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = reset.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    answers: bool,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held, not dropped, as TCP would: what a partition kept arrives
        // late once it heals.
        loop {
            match Mode::of(mode.load(Ordering::SeqCst)) {
                Mode::Pass => break,
                Mode::Slow => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                Mode::HalfOpen if !answers => break,
                Mode::Blackhole | Mode::HalfOpen => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

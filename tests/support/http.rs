//! HTTP pieces shared by the tests that drive `LockLayer` over loopback.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
};
use tokio::sync::mpsc;

/// Serves `app` on a free loopback port until the test ends.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A client that never goes through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A handler for one request whose body streams whatever the returned
/// sender sends, and ends when the sender is dropped.
pub fn one_stream() -> (
    mpsc::Sender<Bytes>,
    impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Body> + Send>> + Clone + Send + Sync + 'static,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let handler = move || {
        let rx = rx.clone();
        Box::pin(async move {
            let rx = rx.lock().expect("rx").take().expect("one request");
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
            });
            Body::from_stream(stream)
        }) as std::pin::Pin<Box<dyn Future<Output = Body> + Send>>
    };
    (tx, handler)
}

/// Counts the handlers running at once, and the most seen.
#[derive(Debug, Default)]
pub struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Concurrency {
    /// A handler's run: counted in, `hold` long, counted out.
    pub async fn run(&self, hold: Duration) {
        let inside = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(inside, Ordering::SeqCst);
        tokio::time::sleep(hold).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    /// The most handlers that ran at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

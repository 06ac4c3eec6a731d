//! The tower-lock demo: a ledger API that loses money without a lock, and
//! stops losing it behind `LockLayer`.
//!
//! ```text
//! cargo run --release --example demo                      # drive it, print a report
//! cargo run --release --example demo -- --accounts 4 --requests 500 --concurrency 128
//! cargo run --release --example demo -- --serve 127.0.0.1:3000   # serve it for curl/wrk
//! ```
//!
//! `POST /accounts/{id}/deposit?amount=N` reads the balance, awaits (as a
//! real handler would await a database or another service), then writes
//! `balance + N`: two deposits that interleave lose one of them. The locked
//! ledger runs each account's deposits one at a time with
//! `LockLayer` keyed by the `{id}` path parameter; different accounts still
//! run at once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde_json::{Value, json};
use tower_lock::{LockLayer, Locker, middleware::key};

#[path = "common/backend.rs"]
mod backend;
use backend::connect;

const AMOUNT: u64 = 10;

struct Options {
    backend: String,
    serve: Option<SocketAddr>,
    accounts: usize,
    requests: usize,
    concurrency: usize,
}

const USAGE: &str = "\
usage: demo [--backend memory|redis://HOST:PORT|nats://HOST:PORT] [--accounts N] [--requests N] [--concurrency N]
       demo --serve ADDR [--backend URL]

  --backend      lock store: memory (default), redis://HOST:PORT (feature redis),
                 nats://HOST:PORT (feature nats)
  --accounts     accounts to deposit into (default 8)
  --requests     deposits per account (default 200)
  --concurrency  requests in flight at once (default 64)
  --serve ADDR   serve the locked ledger on ADDR until Ctrl-C, without driving it";

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        backend: "memory".to_owned(),
        serve: None,
        accounts: 8,
        requests: 200,
        concurrency: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let count = || -> anyhow::Result<usize> {
            match value.parse() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("{flag} wants a positive number, not {value:?}"),
            }
        };
        match flag.as_str() {
            "--backend" => options.backend = value.clone(),
            "--serve" => {
                options.serve = Some(value.parse().with_context(|| format!("--serve {value}"))?)
            }
            "--accounts" => options.accounts = count()?,
            "--requests" => options.requests = count()?,
            "--concurrency" => options.concurrency = count()?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    Ok(options)
}

// ---------------------------------------------------------------- the ledger

#[derive(Default)]
struct Ledger {
    accounts: Mutex<HashMap<String, Account>>,
    /// The most deposit handlers ever inside one account's read-await-write.
    most_inside: AtomicUsize,
}

#[derive(Default)]
struct Account {
    balance: u64,
    inside: usize,
}

impl Ledger {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Account) -> T) -> T {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        f(accounts.entry(id.to_owned()).or_default())
    }
}

/// Counts a handler inside an account's critical section while it lives.
struct Inside<'a>(&'a Ledger, &'a str);

impl<'a> Inside<'a> {
    fn enter(ledger: &'a Ledger, id: &'a str) -> Self {
        let now = ledger.with(id, |account| {
            account.inside += 1;
            account.inside
        });
        ledger.most_inside.fetch_max(now, Ordering::Relaxed);
        Inside(ledger, id)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.with(self.1, |account| account.inside -= 1);
    }
}

async fn deposit(
    State(ledger): State<Arc<Ledger>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, (StatusCode, &'static str)> {
    let amount: u64 = query
        .get("amount")
        .and_then(|amount| amount.parse().ok())
        .ok_or((StatusCode::BAD_REQUEST, "amount must be a whole number"))?;
    let _inside = Inside::enter(&ledger, &id);
    let before = ledger.with(&id, |account| account.balance);
    // Deliberately not atomic: an await between the read and the write, as
    // when the handler checks a limit in another service.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let after = before
        .checked_add(amount)
        .ok_or((StatusCode::UNPROCESSABLE_ENTITY, "balance overflow"))?;
    ledger.with(&id, |account| account.balance = after);
    Ok(Json(json!({ "balance": after })))
}

async fn balance(State(ledger): State<Arc<Ledger>>, Path(id): Path<String>) -> Json<Value> {
    Json(json!({ "balance": ledger.with(&id, |account| account.balance) }))
}

/// The ledger's routes; with a locker, deposits run one at a time per account.
fn ledger_app(ledger: Arc<Ledger>, locker: Option<Locker>) -> Router {
    let mut deposits = Router::new().route("/accounts/{id}/deposit", post(deposit));
    if let Some(locker) = locker {
        // `route_layer`: the `{id}` parameter is known once axum has routed.
        deposits = deposits.route_layer(LockLayer::new(
            locker,
            key::path_param("id").prefixed("account:"),
        ));
    }
    deposits
        .route("/accounts/{id}", get(balance))
        .with_state(ledger)
}

// ----------------------------------------------------------------- the drive

struct Report {
    expected: u64,
    actual: u64,
    most_inside: usize,
    refused: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn lost_updates(&self) -> u64 {
        self.expected.saturating_sub(self.actual) / AMOUNT
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied().unwrap_or_default()
    }
}

async fn start(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

async fn drive(label: &str, locker: Option<Locker>, options: &Options) -> anyhow::Result<Report> {
    let ledger = Arc::new(Ledger::default());
    let addr = start(ledger_app(ledger.clone(), locker)).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(options.concurrency)
        .build()?;
    let total = options.accounts * options.requests;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let progress = tokio::spawn({
        let (done, label) = (done.clone(), label.to_owned());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  {label}: {}/{total} deposits",
                    done.load(Ordering::Relaxed)
                );
            }
        }
    });
    let workers = (0..options.concurrency.min(total)).map(|_| {
        let (client, next, done) = (client.clone(), next.clone(), done.clone());
        let accounts = options.accounts;
        tokio::spawn(async move {
            let (mut latencies, mut refused) = (Vec::new(), 0);
            loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= total {
                    break;
                }
                let url = format!(
                    "http://{addr}/accounts/{}/deposit?amount={AMOUNT}",
                    job % accounts
                );
                let sent = Instant::now();
                let response = client.post(url).send().await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                latencies.push(sent.elapsed());
                refused += usize::from(!ok);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((latencies, refused))
        })
    });
    let mut latencies = Vec::with_capacity(total);
    let mut refused = 0;
    for worker in futures_util::future::join_all(workers).await {
        let (mine, refusals) = worker??;
        latencies.extend(mine);
        refused += refusals;
    }
    let elapsed = started.elapsed();
    progress.abort();

    let mut actual = 0;
    for account in 0..options.accounts {
        let body: Value = client
            .get(format!("http://{addr}/accounts/{account}"))
            .send()
            .await?
            .json_or_text()
            .await?;
        actual += body["balance"]
            .as_u64()
            .context("GET answered no balance")?;
    }
    Ok(Report {
        expected: (total - refused) as u64 * AMOUNT,
        actual,
        most_inside: ledger.most_inside.load(Ordering::Relaxed),
        refused,
        elapsed,
        latencies,
    })
}

/// `reqwest`'s `json` needs a feature; the body is small enough to parse here.
trait JsonOrText {
    async fn json_or_text(self) -> anyhow::Result<Value>;
}

impl JsonOrText for reqwest::Response {
    async fn json_or_text(self) -> anyhow::Result<Value> {
        let text = self.text().await?;
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text:?}"))
    }
}

fn print_reports(options: &Options, unlocked: &Report, locked: &Report) {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let rows: [(&str, String, String); 8] = [
        (
            "expected balance (all accounts)",
            unlocked.expected.to_string(),
            locked.expected.to_string(),
        ),
        (
            "actual balance",
            unlocked.actual.to_string(),
            locked.actual.to_string(),
        ),
        (
            "lost updates",
            unlocked.lost_updates().to_string(),
            locked.lost_updates().to_string(),
        ),
        (
            "most handlers inside one account",
            unlocked.most_inside.to_string(),
            locked.most_inside.to_string(),
        ),
        (
            "refused requests (423/503)",
            unlocked.refused.to_string(),
            locked.refused.to_string(),
        ),
        (
            "throughput",
            format!("{:.0} req/s", unlocked.throughput()),
            format!("{:.0} req/s", locked.throughput()),
        ),
        (
            "latency p50",
            ms(unlocked.percentile(0.50)),
            ms(locked.percentile(0.50)),
        ),
        (
            "latency p99",
            ms(unlocked.percentile(0.99)),
            ms(locked.percentile(0.99)),
        ),
    ];
    println!();
    println!(
        "{} accounts x {} deposits of {AMOUNT}, {} in flight, lock backend: {}",
        options.accounts, options.requests, options.concurrency, options.backend
    );
    println!();
    println!("{:<34}{:>16}{:>18}", "", "without lock", "with LockLayer");
    for (name, without, with) in rows {
        println!("{name:<34}{without:>16}{with:>18}");
    }
    println!();
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// With `--features metrics`, what the locker reported through the
/// `metrics` facade, recorded with metrics-util's `DebuggingRecorder` (a
/// real service installs an exporter instead: Prometheus, StatsD, ...).
#[cfg(feature = "metrics")]
mod lock_metrics {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    pub fn install() -> Option<Snapshotter> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().ok().map(|()| snapshotter)
    }

    pub fn print(snapshotter: &Snapshotter) {
        let mut lines: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels: Vec<String> = key
                    .labels()
                    .map(|label| format!("{}={}", label.key(), label.value()))
                    .collect();
                let name = format!("{}{{{}}}", key.name(), labels.join(","));
                let value = match value {
                    DebugValue::Counter(count) => count.to_string(),
                    DebugValue::Gauge(gauge) => gauge.to_string(),
                    DebugValue::Histogram(values) => {
                        let mut ms: Vec<f64> =
                            values.iter().map(|v| v.into_inner() * 1e3).collect();
                        ms.sort_by(f64::total_cmp);
                        let at = |p: f64| ms[((ms.len() - 1) as f64 * p) as usize];
                        if ms.is_empty() {
                            "no values".to_owned()
                        } else {
                            format!(
                                "n={} p50={:.2} ms p99={:.2} ms",
                                ms.len(),
                                at(0.5),
                                at(0.99)
                            )
                        }
                    }
                };
                format!("  {name:<62} {value}")
            })
            .collect();
        lines.sort();
        println!("lock metrics (feature metrics, read with DebuggingRecorder):");
        for line in lines {
            println!("{line}");
        }
        println!();
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let options = parse_options()?;
    #[cfg(feature = "metrics")]
    let metrics = lock_metrics::install();
    let locker = connect(&options.backend, "demo").await?;

    if let Some(addr) = options.serve {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let app = ledger_app(Arc::new(Ledger::default()), Some(locker.clone()));
        println!("serving the locked ledger on http://{addr} (Ctrl-C to stop)");
        println!("  curl -X POST 'http://{addr}/accounts/1/deposit?amount=10'");
        println!("  curl http://{addr}/accounts/1");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        // Drained: give back whatever is still held, at once.
        locker.shutdown().await?;
        return Ok(ExitCode::SUCCESS);
    }

    println!("tower-lock demo: a ledger whose deposits read the balance, await, then write it.");
    println!("Driving it over HTTP on loopback, first without a lock, then behind LockLayer...");
    let unlocked = drive("without lock", None, &options).await?;
    let locked = drive("with LockLayer", Some(locker), &options).await?;
    print_reports(&options, &unlocked, &locked);
    #[cfg(feature = "metrics")]
    if let Some(metrics) = &metrics {
        lock_metrics::print(metrics);
    }

    if locked.lost_updates() == 0 && locked.most_inside <= 1 && locked.refused == 0 {
        println!(
            "With LockLayer: no lost update, one handler per account at a time ({} lost without it).",
            unlocked.lost_updates()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("With LockLayer the ledger still went wrong: this is a bug, please report it.");
        Ok(ExitCode::FAILURE)
    }
}

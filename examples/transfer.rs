//! Transfers between accounts, each locking both accounts: without locks
//! money is created and destroyed; with them, none, and `A→B` and `B→A`
//! running at once never deadlock.
//!
//! ```text
//! cargo run --release --example transfer
//! cargo run --release --features redis --example transfer -- --backend redis://127.0.0.1:6379
//! cargo run --release --features nats --example transfer -- --backend nats://127.0.0.1:4222
//! ```
//!
//! `POST /transfers/{from}/{to}?amount=N` reads both balances, awaits (as a
//! real handler awaits its database), then writes both; `POST
//! /accounts/{id}/deposit?amount=N` does the same for one account. The
//! locked ledger puts transfers behind `LockLayer` keyed by both path
//! parameters (`key::path_params`, taken together in one order, all or
//! nothing) and deposits behind the same lock of their one account, so a
//! deposit and a transfer touching one account exclude each other too.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use axum::{
    Router,
    extract::{Path, Query, State},
    routing::post,
};
use tower_lock::{LockLayer, Locker, middleware::key};

#[path = "common/backend.rs"]
mod backend;

const START: i64 = 1_000;
const AMOUNT: i64 = 10;

const USAGE: &str = "\
usage: transfer [--backend memory|redis://HOST:PORT|nats://HOST:PORT] [--accounts N] [--requests N]

  --backend   lock store: memory (default), redis://HOST:PORT (feature redis),
              nats://HOST:PORT (feature nats)
  --accounts  accounts (default 6)
  --requests  transfers and deposits in all (default 600), 64 in flight";

struct Options {
    backend: String,
    accounts: u32,
    requests: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        backend: "memory".to_owned(),
        accounts: 6,
        requests: 600,
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
        let count = |at_least: usize| -> anyhow::Result<usize> {
            match value.parse() {
                Ok(n) if n >= at_least => Ok(n),
                _ => bail!("{flag} wants a number of at least {at_least}, not {value:?}"),
            }
        };
        match flag.as_str() {
            "--backend" => options.backend = value.clone(),
            "--accounts" => options.accounts = u32::try_from(count(2)?)?,
            "--requests" => options.requests = count(1)?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    Ok(options)
}

/// Balances, read and written in separate steps with an await between, as
/// a handler over a database does.
#[derive(Default)]
struct Ledger {
    balances: Mutex<HashMap<u32, i64>>,
}

impl Ledger {
    fn read(&self, account: u32) -> i64 {
        let balances = self.balances.lock().expect("ledger");
        balances.get(&account).copied().unwrap_or(START)
    }

    fn write(&self, account: u32, balance: i64) {
        self.balances
            .lock()
            .expect("ledger")
            .insert(account, balance);
    }

    fn total(&self, accounts: u32) -> i64 {
        (0..accounts).map(|account| self.read(account)).sum()
    }
}

fn amount(query: &HashMap<String, String>) -> i64 {
    query
        .get("amount")
        .and_then(|a| a.parse().ok())
        .unwrap_or(AMOUNT)
}

async fn transfer(
    State(ledger): State<Arc<Ledger>>,
    Path((from, to)): Path<(u32, u32)>,
    Query(query): Query<HashMap<String, String>>,
) -> &'static str {
    let amount = amount(&query);
    let (a, b) = (ledger.read(from), ledger.read(to));
    tokio::time::sleep(Duration::from_millis(1)).await;
    ledger.write(from, a - amount);
    ledger.write(to, b + amount);
    "moved"
}

async fn deposit(
    State(ledger): State<Arc<Ledger>>,
    Path(id): Path<u32>,
    Query(query): Query<HashMap<String, String>>,
) -> &'static str {
    let balance = ledger.read(id);
    tokio::time::sleep(Duration::from_millis(1)).await;
    ledger.write(id, balance + amount(&query));
    "deposited"
}

/// The ledger's API; with a locker, every account is locked by what
/// touches it.
fn app(ledger: Arc<Ledger>, locker: Option<Locker>) -> Router {
    let transfers = Router::new().route("/transfers/{from}/{to}", post(transfer));
    let deposits = Router::new().route("/accounts/{id}/deposit", post(deposit));
    let (transfers, deposits) = match locker {
        Some(locker) => {
            let wait = Duration::from_secs(30);
            // One `route_layer` per router: it covers the routes before it.
            let both = key::path_params(["from", "to"]).prefixed("account:");
            let one = key::path_param("id").prefixed("account:");
            (
                transfers.route_layer(LockLayer::new(locker.clone(), both).wait_timeout(wait)),
                deposits.route_layer(LockLayer::new(locker, one).wait_timeout(wait)),
            )
        }
        None => (transfers, deposits),
    };
    transfers.merge(deposits).with_state(ledger)
}

async fn start(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

struct Report {
    /// Money made (positive) or lost (negative) against what the requests
    /// should have left.
    drift: i64,
    failed: usize,
    elapsed: Duration,
}

/// Sends the requests, 64 at a time: every third a deposit, the others
/// transfers, half of them `B→A` for some `A→B`.
async fn drive(locker: Option<Locker>, options: &Options) -> anyhow::Result<Report> {
    let ledger = Arc::new(Ledger::default());
    let addr = start(app(ledger.clone(), locker)).await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (requests, accounts) = (options.requests, options.accounts);
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                let (mut deposits, mut failed) = (0, 0);
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= requests {
                        return (deposits, failed);
                    }
                    let a = u32::try_from(n).unwrap_or(0) % accounts;
                    let b = (a + 1) % accounts;
                    let path = match n % 3 {
                        0 => format!("/accounts/{a}/deposit"),
                        1 => format!("/transfers/{a}/{b}"),
                        _ => format!("/transfers/{b}/{a}"),
                    };
                    let sent = client.post(format!("http://{addr}{path}")).send().await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            deposits += usize::from(n % 3 == 0);
                        }
                        _ => failed += 1,
                    }
                }
            })
        })
        .collect();
    let (mut deposits, mut failed) = (0, 0);
    for worker in workers {
        let (d, f) = worker.await?;
        (deposits, failed) = (deposits + d, failed + f);
    }
    let expected = START * i64::from(accounts) + AMOUNT * i64::try_from(deposits)?;
    Ok(Report {
        drift: ledger.total(accounts) - expected,
        failed,
        elapsed: started.elapsed(),
    })
}

fn print(label: &str, report: &Report) {
    let drift = match report.drift {
        0 => "no money created or destroyed".to_owned(),
        d if d > 0 => format!("{d} created from nothing"),
        d => format!("{} destroyed", -d),
    };
    println!(
        "  {label:<10} {drift}; {} failed requests; {:.2?}",
        report.failed, report.elapsed
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("transfer: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let options = parse_options()?;
    let locker = backend::connect(&options.backend, "transfer").await?;
    println!(
        "{} accounts, {} transfers and deposits, 64 in flight, lock backend: {}",
        options.accounts, options.requests, options.backend
    );
    let unlocked = drive(None, &options).await?;
    print("unlocked:", &unlocked);
    let locked = drive(Some(locker), &options).await?;
    print("locked:", &locked);
    if locked.drift != 0 || locked.failed != 0 {
        println!("the locked ledger went wrong");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

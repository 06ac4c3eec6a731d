//! Locking inside an axum handler with the `Locked<K>` extractor, instead of
//! a layer: the key comes from the request's path, the `Locker` from the
//! router's state, and the lock is held for the handler's run.
//!
//! ```text
//! cargo run --example locked_handler
//! cargo run --example locked_handler --features redis -- --backend redis://127.0.0.1:6379
//! cargo run --example locked_handler --features nats -- --backend nats://127.0.0.1:4222
//! ```
//!
//! It serves a small bank on a loopback port, sends it requests itself, and
//! exits: 20 concurrent withdrawals of 10 from an account holding 100 (each
//! reads the balance, awaits its "database", then writes with the lock's
//! fence, which the database checks as `WHERE fence < $1` would), then a
//! fail-fast endpoint asked while another holder has the account (`423`
//! with `Retry-After`) and once it is free.

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{FromRef, FromRequestParts, Path, State},
    http::{StatusCode, request::Parts},
    routing::{get, post},
};
use futures_util::future::join_all;
use tower_lock::{
    Locker,
    extract::{LockKey, Locked},
};

#[path = "common/backend.rs"]
mod backend;

const USAGE: &str = "\
usage: locked_handler [--backend memory|redis://HOST:PORT|nats://HOST:PORT]

  --backend   lock store: memory (default), redis://HOST:PORT (feature redis),
              nats://HOST:PORT (feature nats)";

const OPENING: i64 = 100;
const AMOUNT: i64 = 10;
const WITHDRAWALS: usize = 20;

/// Stands in for the database: a balance per account, and the last fence
/// that wrote it.
#[derive(Default)]
struct Bank {
    accounts: Mutex<HashMap<u64, Row>>,
}

#[derive(Clone, Copy)]
struct Row {
    balance: i64,
    fence: u64,
}

impl Bank {
    fn read(&self, id: u64) -> Result<Row, StatusCode> {
        let accounts = self
            .accounts
            .lock()
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        accounts.get(&id).copied().ok_or(StatusCode::NOT_FOUND)
    }

    /// `UPDATE accounts SET balance = $2, fence = $1 WHERE id = $3 AND
    /// fence < $1`: a writer whose lease ran out (and whose key someone
    /// else took since) carries a smaller fence and changes nothing.
    fn write(&self, id: u64, balance: i64, fence: u64) -> Result<(), StatusCode> {
        let mut accounts = self
            .accounts
            .lock()
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        match accounts.get_mut(&id) {
            Some(row) if row.fence < fence => {
                *row = Row { balance, fence };
                Ok(())
            }
            Some(_) => Err(StatusCode::CONFLICT),
            None => Err(StatusCode::NOT_FOUND),
        }
    }
}

#[derive(Clone)]
struct AppState {
    locker: Locker,
    bank: Arc<Bank>,
}

impl FromRef<AppState> for Locker {
    fn from_ref(state: &AppState) -> Locker {
        state.locker.clone()
    }
}

/// The account of the `{id}` path parameter; waits up to 5 s for it.
struct Account;

impl<S: Send + Sync> LockKey<S> for Account {
    type Rejection = axum::extract::rejection::PathRejection;
    const WAIT: Duration = Duration::from_secs(5);

    async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
        let Path(id) = Path::<u64>::from_request_parts(parts, state).await?;
        Ok(account_key(id))
    }
}

/// The same lock, refused at once (`423`) when busy.
struct AccountNow;

impl<S: Send + Sync> LockKey<S> for AccountNow {
    type Rejection = axum::extract::rejection::PathRejection;
    const WAIT: Duration = Duration::ZERO;

    async fn lock_key(parts: &mut Parts, state: &S) -> Result<String, Self::Rejection> {
        Account::lock_key(parts, state).await
    }
}

fn account_key(id: u64) -> String {
    format!("locked-handler:account:{id}")
}

/// `POST /accounts/{id}/withdraw`: read, await, write; `409` when the
/// balance would go below zero.
async fn withdraw(
    lock: Locked<Account>,
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<String, StatusCode> {
    let row = state.bank.read(id)?;
    tokio::time::sleep(Duration::from_millis(2)).await; // the database round trip
    if row.balance < AMOUNT {
        return Err(StatusCode::CONFLICT);
    }
    state.bank.write(id, row.balance - AMOUNT, lock.fence())?;
    Ok(format!("withdrew {AMOUNT} under fence {}", lock.fence()))
}

/// `GET /accounts/{id}/statement`: a consistent read, or `423` at once.
async fn statement(
    _lock: Locked<AccountNow>,
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<String, StatusCode> {
    let row = state.bank.read(id)?;
    Ok(format!("balance {}", row.balance))
}

async fn run() -> anyhow::Result<()> {
    let backend = backend::from_args(USAGE)?;
    let locker = backend::connect(&backend, "locked_handler").await?;
    let bank = Arc::new(Bank::default());
    bank.accounts
        .lock()
        .map_err(|_| anyhow::anyhow!("bank poisoned"))?
        .insert(
            1,
            Row {
                balance: OPENING,
                fence: 0,
            },
        );
    let app = Router::new()
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route("/accounts/{id}/statement", get(statement))
        .with_state(AppState {
            locker: locker.clone(),
            bank: bank.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("a bank on http://{addr}, locks in {backend}");

    let client = reqwest::Client::builder().no_proxy().build()?;
    let withdrawals = (0..WITHDRAWALS).map(|_| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{addr}/accounts/1/withdraw"))
                .send()
                .await?;
            anyhow::Ok(response.status())
        }
    });
    let mut statuses: HashMap<StatusCode, usize> = HashMap::new();
    for status in join_all(withdrawals).await {
        *statuses.entry(status?).or_default() += 1;
    }
    let balance = bank
        .read(1)
        .map_err(|status| anyhow::anyhow!("{status}"))?
        .balance;
    let (paid, refused) = (
        statuses.get(&StatusCode::OK).copied().unwrap_or(0),
        statuses.get(&StatusCode::CONFLICT).copied().unwrap_or(0),
    );
    println!(
        "{WITHDRAWALS} concurrent withdrawals of {AMOUNT} from {OPENING}: {paid} paid, \
         {refused} refused for want of funds, balance {balance}"
    );

    // Another holder (a batch job, here the same locker) has the account.
    let statement_url = format!("http://{addr}/accounts/1/statement");
    let batch = locker
        .acquire(&account_key(1), Duration::from_secs(10))
        .await?;
    let busy = client.get(&statement_url).send().await?;
    let (busy_status, retry_after) = (
        busy.status(),
        busy.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    println!(
        "statement while a batch job holds the account: {busy_status}, Retry-After: {}",
        retry_after.as_deref().unwrap_or("-")
    );
    batch.release().await?;
    let free = client.get(&statement_url).send().await?;
    let free_status = free.status();
    println!(
        "statement once it is free: {free_status}, {}",
        free.text().await?
    );

    server.abort();
    locker.shutdown().await?;
    let expected_paid = usize::try_from(OPENING / AMOUNT)?;
    anyhow::ensure!(
        paid == expected_paid && refused == WITHDRAWALS - expected_paid && balance == 0,
        "withdrawals overlapped: {statuses:?}, balance {balance}"
    );
    anyhow::ensure!(busy_status == StatusCode::LOCKED && retry_after.is_some());
    anyhow::ensure!(free_status == StatusCode::OK);
    println!("every withdrawal ran alone: no overdraft, no lost update");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("locked_handler: {err:#}");
            ExitCode::FAILURE
        }
    }
}

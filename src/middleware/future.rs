//! [`ResponseFuture`]: waits for the lock, then for the inner service, and
//! stops the service when the lock is lost.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::held::Holding;
use super::{
    HeldLock, LockBody, LockRejection,
    body::Refusal,
    hold::{Hold, poll_stop},
    layer::RejectionHook,
};
use crate::locker::scope::Held;

pub(crate) type Acquire =
    Pin<Box<dyn Future<Output = Result<Holding, LockRejection>> + Send + 'static>>;

pin_project! {
    /// The response future of [`LockService`](super::LockService).
    ///
    /// Dropping it while it waits for the lock (the client went away) leaves
    /// no lock and no waiter behind: the wait is cancel safe. While the
    /// service runs, a lost lease or a hold past the layer's `max_hold`
    /// drops the service's future and answers `503`.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, S::Future>,
        on_rejection: Option<RejectionHook>,
        max_hold: Duration,
        // The request's lock, for lockers asked from inside it: entered
        // for every poll of the service.
        held: Option<Held>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, F> {
        Acquiring {
            acquire: Acquire,
            // `Some` until the lock is taken: the service and the request
            // it will be called with.
            call: Option<(S, Request<ReqBody>)>,
        },
        // The lock is held; the service is not ready yet. Waiting for the
        // lock held none of its capacity.
        Readying {
            service: S,
            request: Option<Request<ReqBody>>,
            guard: Option<Holding>,
            hold: Option<Hold>,
        },
        Calling {
            #[pin]
            future: F,
            // `Some` until the response is out: they move into the body.
            guard: Option<Holding>,
            hold: Option<Hold>,
        },
        Refused {
            response: Option<Response<Refusal>>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn acquiring(
        acquire: Acquire,
        service: S,
        request: Request<ReqBody>,
        on_rejection: RejectionHook,
        max_hold: Duration,
        held: Held,
    ) -> Self {
        ResponseFuture {
            state: State::Acquiring {
                acquire,
                call: Some((service, request)),
            },
            on_rejection: Some(on_rejection),
            max_hold,
            held: Some(held),
        }
    }

    /// Calls `service` without a lock, once it is ready.
    pub(crate) fn passed_through(service: S, request: Request<ReqBody>) -> Self {
        ResponseFuture {
            state: State::Readying {
                service,
                request: Some(request),
                guard: None,
                hold: None,
            },
            on_rejection: None,
            max_hold: Duration::ZERO,
            held: None,
        }
    }

    pub(crate) fn refused(response: Response<Refusal>) -> Self {
        ResponseFuture {
            state: State::Refused {
                response: Some(response),
            },
            on_rejection: None,
            max_hold: Duration::ZERO,
            held: None,
        }
    }
}

/// The response to answer with once the request must stop (its lease was
/// lost, or it held its key too long). `arm`: what runs under the lock has
/// to wait, so the watch must be able to wake this task.
fn stopped(
    guard: &Option<Holding>,
    hold: &mut Option<Hold>,
    arm: bool,
    hook: Option<&RejectionHook>,
    cx: &mut Context<'_>,
) -> Option<Response<Refusal>> {
    let Poll::Ready(rejection) = poll_stop(guard, hold, arm, cx) else {
        return None;
    };
    Some(refuse(hook, rejection))
}

/// Polls `inner` under the request's stop watch: checked before, and armed
/// when `inner` has to wait.
fn watched<T>(
    guard: &Option<Holding>,
    hold: &mut Option<Hold>,
    hook: Option<&RejectionHook>,
    cx: &mut Context<'_>,
    inner: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Watched<T> {
    if let Some(stopped) = stopped(guard, hold, false, hook, cx) {
        return Watched::Stop(stopped);
    }
    match inner(cx) {
        Poll::Ready(value) => Watched::Ready(value),
        Poll::Pending => match stopped(guard, hold, true, hook, cx) {
            Some(stopped) => Watched::Stop(stopped),
            None => Watched::Pending,
        },
    }
}

/// What [`watched`] saw.
enum Watched<T> {
    Ready(T),
    Pending,
    /// The request must stop: answer with this.
    Stop(Response<Refusal>),
}

/// Runs `f` inside the request's scope, if it holds a lock.
fn within<R>(held: Option<&Held>, f: impl FnOnce() -> R) -> R {
    match held {
        Some(held) => held.scope(f),
        None => f(),
    }
}

fn refuse(hook: Option<&RejectionHook>, rejection: LockRejection) -> Response<Refusal> {
    match hook {
        Some(hook) => hook(rejection),
        None => rejection.into_http_response().map(Refusal::Bytes),
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Output = Result<Response<LockBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        let hook = this.on_rejection.as_ref();
        let held = this.held.as_ref();
        loop {
            match state.as_mut().project() {
                StateProj::Acquiring { acquire, call } => match ready!(acquire.as_mut().poll(cx)) {
                    Ok(guard) => {
                        let Some((service, mut request)) = call.take() else {
                            panic!("ResponseFuture polled after completion");
                        };
                        request.extensions_mut().insert(HeldLock::new(&guard));
                        let hold = Hold::new(*this.max_hold, &guard);
                        state.set(State::Readying {
                            service,
                            request: Some(request),
                            guard: Some(guard),
                            hold: Some(hold),
                        });
                    }
                    Err(rejection) => {
                        log_refusal(&rejection);
                        let response = refuse(hook, rejection);
                        state.set(State::Refused {
                            response: Some(response),
                        });
                    }
                },
                StateProj::Readying {
                    service,
                    request,
                    guard,
                    hold,
                } => {
                    match watched(guard, hold, hook, cx, |cx| service.poll_ready(cx)) {
                        Watched::Stop(refusal) => {
                            state.set(State::Refused {
                                response: Some(refusal),
                            });
                            continue;
                        }
                        Watched::Pending => return Poll::Pending,
                        Watched::Ready(ready) => ready?,
                    }
                    let Some(request) = request.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let future = within(held, || service.call(request));
                    let (guard, hold) = (guard.take(), hold.take());
                    state.set(State::Calling {
                        future,
                        guard,
                        hold,
                    });
                }
                StateProj::Calling {
                    future,
                    guard,
                    hold,
                } => {
                    // Dropping the future stops the handler at its next
                    // await; dropping the guard releases what is left. An
                    // error or a panic drops the guard with the future,
                    // which releases the lock.
                    let polled =
                        watched(guard, hold, hook, cx, |cx| within(held, || future.poll(cx)));
                    let response = match polled {
                        Watched::Stop(refusal) => {
                            state.set(State::Refused {
                                response: Some(refusal),
                            });
                            continue;
                        }
                        Watched::Pending => return Poll::Pending,
                        Watched::Ready(response) => response?,
                    };
                    let (guard, hold) = (guard.take(), hold.take());
                    return Poll::Ready(Ok(response.map(|body| match (guard, hold) {
                        (Some(guard), Some(hold)) => {
                            LockBody::locked(body, guard, hold, this.held.take())
                        }
                        _ => LockBody::unlocked(body),
                    })));
                }
                StateProj::Refused { response } => {
                    let Some(response) = response.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    return Poll::Ready(Ok(response.map(LockBody::refusal)));
                }
            }
        }
    }
}

fn log_refusal(rejection: &LockRejection) {
    match rejection {
        LockRejection::Busy { key, retry_after } => {
            tracing::debug!(?key, ?retry_after, "request refused: lock busy");
        }
        LockRejection::Unavailable { .. } | LockRejection::Failed { .. } => {
            tracing::error!(error = %rejection, "request refused: lock not taken");
        }
        _ => tracing::debug!(error = %rejection, "request refused"),
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

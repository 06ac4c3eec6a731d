//! [`ResponseFuture`]: waits for the lock, then for the inner service.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{HeldLock, LockBody, LockRejection, layer::RejectionHook};
use crate::LockGuard;

pub(crate) type Acquire =
    Pin<Box<dyn Future<Output = Result<LockGuard, LockRejection>> + Send + 'static>>;

pin_project! {
    /// The response future of [`LockService`](super::LockService).
    ///
    /// Dropping it while it waits for the lock (the client went away) leaves
    /// no lock and no waiter behind: the wait is cancel safe.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, F> {
        Acquiring {
            acquire: Acquire,
            // `Some` until the lock is taken: the ready service and the
            // request it will be called with.
            call: Option<(S, Request<ReqBody>)>,
            on_rejection: RejectionHook,
        },
        Calling {
            #[pin]
            future: F,
            // `Some` until the response is out: it moves into the body.
            guard: Option<LockGuard>,
        },
        Refused {
            response: Option<Response<Bytes>>,
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
    ) -> Self {
        ResponseFuture {
            state: State::Acquiring {
                acquire,
                call: Some((service, request)),
                on_rejection,
            },
        }
    }

    pub(crate) fn unlocked(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                guard: None,
            },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Output = Result<Response<LockBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Acquiring {
                    acquire,
                    call,
                    on_rejection,
                } => match ready!(acquire.as_mut().poll(cx)) {
                    Ok(guard) => {
                        let Some((mut service, mut request)) = call.take() else {
                            panic!("ResponseFuture polled after completion");
                        };
                        request.extensions_mut().insert(HeldLock::new(&guard));
                        let future = service.call(request);
                        state.set(State::Calling {
                            future,
                            guard: Some(guard),
                        });
                    }
                    Err(rejection) => {
                        log_refusal(&rejection);
                        let response = on_rejection(rejection);
                        state.set(State::Refused {
                            response: Some(response),
                        });
                    }
                },
                StateProj::Calling { future, guard } => {
                    // An error or a panic drops the guard with the future,
                    // which releases the lock.
                    let response = ready!(future.poll(cx))?;
                    let guard = guard.take();
                    return Poll::Ready(Ok(response.map(|body| match guard {
                        Some(guard) => LockBody::locked(body, guard),
                        None => LockBody::unlocked(body),
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
            tracing::debug!(%key, ?retry_after, "request refused: lock busy");
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

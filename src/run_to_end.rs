//! Store requests that finish even when their caller stops waiting.
//!
//! Dropping an `acquire` or `release` future must leave no lock behind. A
//! request already on its way to the store cannot be recalled, so when the
//! caller drops it the rest of the request runs on the captured runtime, and
//! a cleanup step undoes what the caller no longer wants (an acquisition
//! nobody will hold).

use std::{
    future::Future,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::runtime::Handle;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub(crate) struct RunToEnd<T, C, F>
where
    T: Send + 'static,
    C: FnOnce(T) -> F + Send + Unpin + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    /// `Some` until the request completes.
    request: Option<BoxFuture<T>>,
    /// What to do with the outcome if the caller dropped us first.
    cleanup: Option<C>,
    runtime: Handle,
    _cleanup_future: PhantomData<fn() -> F>,
}

impl<T, C, F> RunToEnd<T, C, F>
where
    T: Send + 'static,
    C: FnOnce(T) -> F + Send + Unpin + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    pub(crate) fn new(
        runtime: Handle,
        request: impl Future<Output = T> + Send + 'static,
        cleanup: C,
    ) -> Self {
        RunToEnd {
            request: Some(Box::pin(request)),
            cleanup: Some(cleanup),
            runtime,
            _cleanup_future: PhantomData,
        }
    }
}

impl<T, C, F> Future for RunToEnd<T, C, F>
where
    T: Send + 'static,
    C: FnOnce(T) -> F + Send + Unpin + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(request) = self.request.as_mut() else {
            // Polled after completion: the request has nothing more to give.
            return Poll::Pending;
        };
        let output = std::task::ready!(request.as_mut().poll(cx));
        self.request = None;
        Poll::Ready(output)
    }
}

impl<T, C, F> Drop for RunToEnd<T, C, F>
where
    T: Send + 'static,
    C: FnOnce(T) -> F + Send + Unpin + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    fn drop(&mut self) {
        if let (Some(request), Some(cleanup)) = (self.request.take(), self.cleanup.take()) {
            // A runtime that has shut down drops the task instead of running
            // it; the store's ttl then ends the lease.
            self.runtime
                .spawn(async move { cleanup(request.await).await });
        }
    }
}

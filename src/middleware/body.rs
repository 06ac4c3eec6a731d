//! [`LockBody`]: a response body that holds the lock until it has been sent.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{
    LockRejection,
    held::Holding,
    hold::{Hold, poll_stop},
};
use crate::locker::scope::Held;

/// The error a [`LockBody`] ends with: the inner body's, or the
/// [`LockRejection`](super::LockRejection) that cut it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The response body of [`LockService`](super::LockService).
    ///
    /// It holds the request's lock until the body is done: at its last frame
    /// (the inner body reports [`is_end_stream`](Body::is_end_stream), or
    /// ends), at an error, or when the body is dropped unfinished (the
    /// client went away). A body that is empty from the start (`HEAD`,
    /// `204`) releases at once.
    ///
    /// A body still streaming when its lease is lost, or when the layer's
    /// `max_hold` passes, ends with an error (a
    /// [`LockRejection`](super::LockRejection)) at its next poll, however
    /// ready the inner body is, and releases the key: hyper then resets the
    /// stream or closes the connection, so the client cannot mistake a cut
    /// body for a whole one. A body nobody polls (its client stopped
    /// reading) keeps the key at most `max_hold` plus one ttl: the lease is
    /// not renewed past `max_hold`.
    pub struct LockBody<B> {
        #[pin]
        kind: Kind<B>,
        // `Some` until the body is done; dropping it releases the lock.
        guard: Option<Holding>,
        // `Some` while the guard is.
        hold: Option<Hold>,
        // Set once the body was cut: it ends there.
        cut: bool,
        // The request's lock, entered for every poll of the inner body.
        held: Option<Held>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Refusal { data: Option<Bytes> },
        Shaped { body: BoxedBody },
    }
}

type BoxedBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// The body of a refusal: the default one's bytes, or whatever body an
/// application's rejection hook answered with.
pub(crate) enum Refusal {
    Bytes(Bytes),
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    Shaped(BoxedBody),
}

impl Refusal {
    /// A hook's own body.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn shaped<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        Refusal::Shaped(Box::pin(ErrorInto(body)))
    }
}

/// A body whose errors are boxed.
struct ErrorInto<B>(B);

impl<B> Body for ErrorInto<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.0).poll_frame(cx));
        Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl<B: Body> LockBody<B> {
    pub(crate) fn locked(body: B, guard: Holding, hold: Hold, held: Option<Held>) -> Self {
        // Dropping the guard releases on the spot when the store answers at
        // once (the in-memory one does), else in the background.
        let (guard, hold) = if body.is_end_stream() {
            drop(guard);
            (None, None)
        } else {
            (Some(guard), Some(hold))
        };
        LockBody {
            kind: Kind::Inner { body },
            guard,
            hold,
            cut: false,
            held,
        }
    }

    pub(crate) fn unlocked(body: B) -> Self {
        LockBody {
            kind: Kind::Inner { body },
            guard: None,
            hold: None,
            cut: false,
            held: None,
        }
    }
}

impl<B> LockBody<B> {
    pub(crate) fn refusal(refusal: Refusal) -> Self {
        let kind = match refusal {
            Refusal::Bytes(data) => Kind::Refusal {
                data: (!data.is_empty()).then_some(data),
            },
            Refusal::Shaped(body) => Kind::Shaped { body },
        };
        LockBody {
            kind,
            guard: None,
            hold: None,
            cut: false,
            held: None,
        }
    }

    /// Whether this body still holds its request's lock.
    pub fn holds_lock(&self) -> bool {
        self.guard.is_some()
    }
}

impl<B> Body for LockBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.cut {
            return Poll::Ready(None);
        }
        match this.kind.project() {
            KindProj::Inner { mut body } => {
                if let Poll::Ready(rejection) = poll_stop(this.guard, this.hold, false, cx) {
                    return cut(this.cut, this.guard, this.hold, rejection);
                }
                let frame = match this.held.as_ref() {
                    Some(held) => held.scope(|| body.as_mut().poll_frame(cx)),
                    None => body.as_mut().poll_frame(cx),
                };
                let Poll::Ready(frame) = frame else {
                    // Waiting on the inner body: the watch must be able to
                    // wake us.
                    return match poll_stop(this.guard, this.hold, true, cx) {
                        Poll::Ready(rejection) => cut(this.cut, this.guard, this.hold, rejection),
                        Poll::Pending => Poll::Pending,
                    };
                };
                // A client that knows the length stops polling after the last
                // data frame, so "ended" must be noticed here and not only at
                // `None`.
                let done = match &frame {
                    Some(Ok(_)) => body.is_end_stream(),
                    None | Some(Err(_)) => true,
                };
                if done {
                    drop(this.hold.take());
                    drop(this.guard.take());
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            KindProj::Refusal { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Shaped { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.cut {
            return true;
        }
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Refusal { data } => data.is_none(),
            Kind::Shaped { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Refusal { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Shaped { body } => body.size_hint(),
        }
    }
}

/// Ends a body whose lock must be let go: with the reason as its error,
/// and the lock released.
fn cut<D>(
    cut: &mut bool,
    guard: &mut Option<Holding>,
    hold: &mut Option<Hold>,
    rejection: LockRejection,
) -> Poll<Option<Result<Frame<D>, BoxError>>> {
    *cut = true;
    drop(hold.take());
    drop(guard.take());
    Poll::Ready(Some(Err(Box::new(rejection))))
}

impl<B> std::fmt::Debug for LockBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockBody")
            .field("holds_lock", &self.holds_lock())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    use super::*;
    use crate::Locker;

    fn locked<B: Body>(body: B, guard: crate::LockGuard) -> LockBody<B> {
        let guard = Holding::One(guard);
        let hold = Hold::new(Duration::from_secs(600), &guard);
        LockBody::locked(body, guard, hold, None)
    }

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn releases_after_the_last_data_frame_of_a_sized_body() {
        let locker = Locker::in_memory();
        let guard = locker.acquire("k", TTL).await.expect("lock");
        let mut body = locked(Full::new(Bytes::from_static(b"hello")), guard);
        assert!(body.holds_lock());
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "hello");
        // No `None` polled yet: the exact-length body already said it ended.
        assert!(!body.holds_lock());
    }

    #[tokio::test]
    async fn empty_bodies_release_at_once() {
        let locker = Locker::in_memory();
        let guard = locker.acquire("k", TTL).await.expect("lock");
        let body = locked(Empty::<Bytes>::new(), guard);
        assert!(!body.holds_lock());
    }

    #[tokio::test]
    async fn streams_hold_until_their_end_and_drops_release() {
        let locker = Locker::in_memory();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let guard = locker.acquire("k", TTL).await.expect("lock");
        let mut body = locked(StreamBody::new(Box::pin(stream)), guard);
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .expect("send");
        body.frame().await.expect("frame").expect("data");
        assert!(body.holds_lock(), "released before the stream ended");
        drop(tx);
        assert!(body.frame().await.is_none());
        assert!(!body.holds_lock());

        let guard = locker.acquire("k", TTL).await.expect("lock");
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        drop(locked(StreamBody::new(Box::pin(stream)), guard));
        let next = tokio::time::timeout(Duration::from_secs(5), locker.acquire("k", TTL))
            .await
            .expect("a dropped body releases")
            .expect("lock");
        drop(next);
    }

    /// An endless body that never has to wait.
    fn always_ready() -> impl Body<Data = Bytes, Error = std::io::Error> {
        let chunks =
            futures_util::stream::repeat_with(|| Ok(Frame::data(Bytes::from_static(b"x"))));
        StreamBody::new(chunks)
    }

    fn rejection(error: BoxError) -> LockRejection {
        *error.downcast::<LockRejection>().expect("a rejection")
    }

    #[tokio::test]
    async fn an_always_ready_body_is_cut_at_its_first_poll_after_the_lease_is_over() {
        let locker = Locker::in_memory();
        let guard = locker.acquire("k", TTL).await.expect("lock");
        let mut body = locked(always_ready(), guard);
        body.frame().await.expect("frame").expect("data");
        locker.release("k").await.expect("release");
        let cut = body.frame().await.expect("frame").expect_err("cut");
        assert!(matches!(rejection(cut), LockRejection::Lost { .. }));
        assert!(!body.holds_lock());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_always_ready_body_is_cut_at_its_first_poll_past_max_hold() {
        let locker = Locker::in_memory();
        let guard = Holding::One(locker.acquire("k", TTL).await.expect("lock"));
        let hold = Hold::new(Duration::from_millis(50), &guard);
        let mut body = LockBody::locked(always_ready(), guard, hold, None);
        body.frame().await.expect("frame").expect("data");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let cut = body.frame().await.expect("frame").expect_err("cut");
        assert!(matches!(rejection(cut), LockRejection::HeldTooLong { .. }));
        assert!(!body.holds_lock());
        assert!(locker.try_lock("k", TTL).await.expect("try").is_some());
    }

    #[tokio::test]
    async fn errors_release() {
        let locker = Locker::in_memory();
        let guard = locker.acquire("k", TTL).await.expect("lock");
        let stream =
            futures_util::stream::iter([Err::<Frame<Bytes>, _>(std::io::Error::other("x"))]);
        let mut body = locked(StreamBody::new(Box::pin(stream)), guard);
        assert!(body.frame().await.expect("item").is_err());
        assert!(!body.holds_lock());
    }
}

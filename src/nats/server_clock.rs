//! How old the stream is on the server's clock, for the hold-back of
//! leases with a value after a re-creation (see [Fences](super#fences)).

use std::time::Duration;

use super::{NatsBackend, lease::LeaseValue};
use crate::{LockError, backend::Token};

/// Where a backend writes the message whose time tells it the server's
/// clock: never a lock's key nor one of its entries (`=` alone is no
/// encoded key), and removed as soon as it is read.
pub(super) const CLOCK_KEY: &str = "=.clock";

impl NatsBackend {
    /// How much longer a lease with a value of length `ttl` must wait
    /// because the stream is younger than `ttl`: it may be a bucket created
    /// again, whose old leaders still count on their leases (see
    /// [Fences](self#fences)). The stream's age is read on the server's
    /// clock alone: its creation time against the time of a message this
    /// backend writes for it ([`read_server_clock`](Self::read_server_clock)),
    /// once per stream, then on this backend's monotonic clock.
    pub(super) async fn young_stream(&self, ttl: Duration) -> Result<Option<Duration>, LockError> {
        let fences = &self.inner.fences;
        fences.created(&self.inner.store.stream).await?;
        let age = match fences.stream_age() {
            Some(age) => age,
            None => {
                self.read_server_clock().await?;
                fences.stream_age().unwrap_or_default()
            }
        };
        Ok(ttl.checked_sub(age).filter(|left| !left.is_zero()))
    }

    /// Reads the server's clock: writes [`CLOCK_KEY`], reads back when the
    /// server stored it, and removes it. Any message stored there is as
    /// good (it was stored before the read): concurrent readers may read
    /// each other's.
    pub(super) async fn read_server_clock(&self) -> Result<(), LockError> {
        let token = Token::new();
        let value = LeaseValue {
            token,
            ttl: Duration::from_millis(1),
            fence: None,
            value: None,
        }
        .encode();
        if let Err(err) = self.inner.store.put(CLOCK_KEY, value).await {
            self.inner.fences.suspect();
            return Err(LockError::unavailable(err));
        }
        if let Some(stored) = self.inner.leader.last(CLOCK_KEY).await? {
            self.inner.fences.server_read(stored.time);
        }
        if let Err(err) = self.remove_held(CLOCK_KEY, token).await {
            tracing::debug!(error = %err, "clock reading not removed");
        }
        Ok(())
    }
}

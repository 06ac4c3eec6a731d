//! Release announcements: what this backend publishes so that waiters on
//! every backend try again (they only ever wake; see the module docs).

use bytes::Bytes;

use super::NatsBackend;

impl NatsBackend {
    /// Wakes the waiters and observers of `key` on every backend of the
    /// bucket: after a release, and after a grant of a lease with a value.
    /// The stream's message deletes emit no watch event, so releases are
    /// announced on a plain NATS subject; one lost announcement costs a
    /// waiter one backoff step.
    ///
    /// Waiters of this backend are woken by the echo too, not at once:
    /// waking them first would let the releasing process win most races for
    /// the key, starving waiters elsewhere.
    ///
    /// `flush`: wait until the announcement has left for the server. The
    /// client sends it in the background otherwise, which a process that
    /// exits right after (a leader resigning at shutdown) may never do.
    pub(super) async fn announce(&self, key: &str, flush: bool) {
        self.announce_entry(key, flush, None).await;
    }

    /// [`announce`](Self::announce), naming the entry a counted holder
    /// freed: that backend's next waiter tries that slot first.
    pub(super) async fn announce_entry(&self, key: &str, flush: bool, freed: Option<&str>) {
        let subject = format!("{}{key}", self.inner.released_prefix);
        let client = self.inner.js.client();
        let payload = freed.map_or_else(Bytes::new, |entry| Bytes::from(entry.to_owned()));
        let sent = match client.publish(subject, payload).await {
            Ok(()) if flush => client.flush().await.map_err(|err| err.to_string()),
            Ok(()) => Ok(()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = sent {
            tracing::debug!(%key, error = %err, "release announcement not sent");
            // Then at least the waiters here learn of it.
            self.inner.wakeups.notify(key);
        }
    }
}

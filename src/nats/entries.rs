//! The few writes and reads of bucket entries every lease kind is built
//! from: a write at an expected revision, an exact delete, and the proofs
//! by token and stream that every delete and renewal makes first.

use async_nats::{
    HeaderMap, HeaderValue,
    jetstream::{
        self,
        context::PublishErrorKind,
        kv::{Entry, UpdateErrorKind},
        response::Response,
        stream::DeleteStatus,
    },
};
use bytes::Bytes;

use super::{Conflict, NatsBackend, ROUNDS, own::Own};
use crate::{LockError, backend::Token};

impl NatsBackend {
    /// Writes `value` at `key` if its last revision is `expected` (0: the
    /// key has no message at all).
    pub(super) async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: u64,
    ) -> Result<Result<u64, Conflict>, LockError> {
        match self.inner.store.update(key, value, expected).await {
            Ok(revision) => Ok(Ok(revision)),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(Err(Conflict)),
            Err(err) => {
                // The bucket may be gone, and the next one a new stream.
                self.inner.fences.suspect();
                Err(LockError::unavailable(err))
            }
        }
    }

    /// Removes the message at `revision` if it is still stored: an exact,
    /// replicated delete of one holder's lease. `Err(Conflict)` when it is
    /// gone (replaced by a renewal or a takeover, or already released).
    pub(super) async fn remove(&self, revision: u64) -> Result<Result<(), Conflict>, LockError> {
        /// `Stream::delete_message` asks for a secure erase (the message's
        /// bytes overwritten on disk), which costs milliseconds; a lease
        /// holds nothing secret.
        #[derive(serde::Serialize)]
        struct DeleteRequest {
            seq: u64,
            no_erase: bool,
        }
        let subject = format!("STREAM.MSG.DELETE.{}", self.inner.store.stream_name);
        let request = DeleteRequest {
            seq: revision,
            no_erase: true,
        };
        let response: Response<DeleteStatus> = self
            .inner
            .js
            .request(subject, &request)
            .await
            .map_err(LockError::unavailable)?;
        match response {
            Response::Ok(DeleteStatus { success: true }) => Ok(Ok(())),
            Response::Ok(DeleteStatus { success: false }) => Ok(Err(Conflict)),
            // Servers answer a missing message with any of these (2.9:
            // "delete failed: no message found"); callers confirm by reading
            // the key before they conclude anything.
            Response::Err { error }
                if [
                    jetstream::ErrorCode::NO_MESSAGE_FOUND,
                    jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED,
                    jetstream::ErrorCode::SEQUENCE_NOT_FOUND,
                ]
                .contains(&error.error_code()) =>
            {
                Ok(Err(Conflict))
            }
            Response::Err { error } => Err(LockError::unavailable(error)),
        }
    }

    /// Writes a delete marker at `key` if its last revision is `expected`,
    /// returning the marker's revision (which `Store::delete_expect_revision`
    /// does not give). Only for buckets that forbid deleting messages.
    pub(super) async fn mark_deleted(
        &self,
        key: &str,
        expected: u64,
    ) -> Result<Result<u64, Conflict>, LockError> {
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        let subject = format!("{}{key}", self.inner.subject_prefix);
        let ack = match self
            .inner
            .js
            .publish_with_headers(subject, headers, Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match ack {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Err(Conflict)),
            Err(err) => Err(LockError::unavailable(err)),
        }
    }

    /// The key's last entry (a lease, or a delete marker).
    pub(super) async fn entry(&self, key: &str) -> Result<Option<Entry>, LockError> {
        let store = &self.inner.store;
        store.entry(key).await.map_err(LockError::unavailable)
    }

    /// The revision of `key`'s last message when it carries `token`'s
    /// lease, as the stream leader has it: the proof every delete and
    /// compare-and-set of a lease makes first. A stream sequence or a
    /// revision alone proves nothing: a re-created bucket numbers from 1
    /// again, and anyone watching the bucket sees them.
    pub(super) async fn held_by(&self, key: &str, token: Token) -> Result<Option<u64>, LockError> {
        let stored = self.inner.leader.last(key).await?;
        // Not `Fences::saw`: a stored lease's revision is below later writes
        // of the stream, and would make the stream look new.
        Ok(stored
            .filter(|stored| stored.carries(token))
            .map(|stored| stored.revision))
    }

    /// Removes `token`'s message at `key`, once proven there
    /// ([`held_by`](Self::held_by)): `false` when the key does not carry
    /// it (any more). Which revision the caller last knew does not matter:
    /// a renewal whose answer was lost moves it on, and the token decides.
    pub(super) async fn remove_held(&self, key: &str, token: Token) -> Result<bool, LockError> {
        for _ in 0..ROUNDS {
            let Some(revision) = self.held_by(key, token).await? else {
                return Ok(false);
            };
            if self.inner.exact_delete {
                if self.remove(revision).await?.is_ok() {
                    // What this backend saw of the key is over.
                    self.inner.seen.forget(key);
                    return Ok(true);
                }
            } else if let Ok(marker) = self.mark_deleted(key, revision).await? {
                self.inner.seen.free(key, marker);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the stream is still the one `own` was granted in (by its
    /// creation time): a lease of a deleted bucket is lost, whatever the
    /// new one holds at its key.
    pub(super) async fn same_stream(&self, own: &Own) -> Result<bool, LockError> {
        let created = self.inner.fences.created(&self.inner.store.stream).await?;
        Ok(created == own.created)
    }
}

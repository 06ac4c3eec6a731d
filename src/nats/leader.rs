//! Reads answered by the bucket stream's leader, for the checks that decide
//! whether a shared, counted or exclusive lease may stand.
//!
//! A direct get may be answered by any replica, and a replica may lag: it
//! could miss an entry written just before. `STREAM.MSG.GET` and
//! `STREAM.INFO` are answered by the stream leader only, which acknowledges
//! a write only once it has applied it, so a read sent after a write's
//! acknowledgement sees that write and every write before it in the
//! stream's order.

use std::collections::HashMap;

use async_nats::jetstream::{
    self,
    response::Response,
    stream::{RawMessageErrorKind, Stream},
};
use bytes::Bytes;

use crate::LockError;

/// One stored message, as the leader has it.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// The KV key (the subject without the bucket's prefix).
    pub(crate) key: String,
    pub(crate) revision: u64,
    pub(crate) value: Bytes,
    /// Whether it is a delete or purge marker rather than a value.
    pub(crate) marker: bool,
    /// When the server stored it, on the server's clock, in microseconds
    /// since the Unix epoch.
    pub(crate) time: u64,
}

impl Stored {
    /// Whether this is a lease of `token` (not a marker, nor a value this
    /// crate did not write).
    pub(crate) fn carries(&self, token: crate::backend::Token) -> bool {
        !self.marker
            && super::lease::LeaseValue::decode(&self.value)
                .is_some_and(|lease| lease.token == token)
    }
}

/// The leader's reads of one bucket's stream.
#[derive(Clone, Debug)]
pub(crate) struct Leader {
    js: jetstream::Context,
    stream: Stream,
    /// `$KV.<bucket>.`
    prefix: String,
}

impl Leader {
    pub(crate) fn new(js: jetstream::Context, stream: Stream, prefix: String) -> Self {
        Leader { js, stream, prefix }
    }

    /// The last message of `key`.
    pub(crate) async fn last(&self, key: &str) -> Result<Option<Stored>, LockError> {
        let subject = format!("{}{key}", self.prefix);
        let found = self.stream.get_last_raw_message_by_subject(&subject).await;
        self.stored(found)
    }

    /// The first message at or after `from` whose key matches `filter` (a
    /// KV key with wildcards).
    pub(crate) async fn first(&self, filter: &str, from: u64) -> Result<Option<Stored>, LockError> {
        let subject = format!("{}{filter}", self.prefix);
        let found = self
            .stream
            .get_first_raw_message_by_subject(&subject, from.max(1))
            .await;
        self.stored(found)
    }

    /// The keys matching `filter` that have a message.
    ///
    /// `Stream::info_with_subjects` asks for a second page even when the
    /// first one held every subject: one request here.
    pub(crate) async fn keys(&self, filter: &str) -> Result<Vec<String>, LockError> {
        #[derive(serde::Serialize)]
        struct InfoRequest<'a> {
            subjects_filter: &'a str,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            state: State,
        }
        #[derive(serde::Deserialize)]
        struct State {
            #[serde(default)]
            subjects: Option<HashMap<String, u64>>,
        }
        let subject = format!("STREAM.INFO.{}", self.stream.cached_info().config.name);
        let filter = format!("{}{filter}", self.prefix);
        let request = InfoRequest {
            subjects_filter: &filter,
        };
        let response: Response<Info> = self
            .js
            .request(subject, &request)
            .await
            .map_err(LockError::unavailable)?;
        match response {
            Response::Ok(info) => Ok(info
                .state
                .subjects
                .unwrap_or_default()
                .into_keys()
                .filter_map(|subject| subject.strip_prefix(&self.prefix).map(str::to_owned))
                .collect()),
            Response::Err { error } => Err(LockError::unavailable(error)),
        }
    }

    fn stored(
        &self,
        found: Result<
            async_nats::jetstream::message::StreamMessage,
            async_nats::jetstream::stream::RawMessageError,
        >,
    ) -> Result<Option<Stored>, LockError> {
        let message = match found {
            Ok(message) => message,
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(err) => return Err(LockError::unavailable(err)),
        };
        let marker = message
            .headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let Some(key) = message.subject.as_str().strip_prefix(&self.prefix) else {
            return Ok(None);
        };
        let time = crate::backend::wall_clock::micros(std::time::SystemTime::from(message.time));
        Ok(Some(Stored {
            key: key.to_owned(),
            revision: message.sequence,
            value: message.payload,
            marker,
            time,
        }))
    }
}

//! Opening the lock bucket, creating it when absent, on nats-server 2.9 and
//! later.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{CreateStreamErrorKind, KeyValueErrorKind},
    kv::Store,
    stream::{self, DiscardPolicy, StorageType},
};

use crate::LockError;

/// What a bucket this backend creates is made with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) replicas: usize,
    /// How long a message may stay unchanged: the longest lease accepted,
    /// and how long a crashed holder's entry can outstay it.
    pub(crate) max_age: Duration,
}

/// Opens `bucket`, creating it with `settings` when it is absent.
///
/// `Context::create_key_value` cannot be used: it first reads the account
/// info, whose reply from a 2.9 server the current async-nats fails to
/// parse. The stream is created directly instead, with the settings a KV
/// bucket has (the ones async-nats and the `nats` CLI use), then opened
/// with `get_key_value`, which only reads the stream's info.
pub(crate) async fn open_or_create(
    js: &jetstream::Context,
    bucket: &str,
    settings: Settings,
) -> Result<Store, LockError> {
    match js.get_key_value(bucket).await {
        Ok(store) => return Ok(store),
        Err(err) if err.kind() == KeyValueErrorKind::InvalidStoreName => {
            return Err(LockError::unavailable(format!(
                "invalid NATS KV bucket name {bucket:?}: use only letters, digits, `-` and `_`"
            )));
        }
        // Most likely absent: create it below.
        Err(_) => {}
    }
    let config = stream_config(bucket, settings);
    match js.create_stream(config.clone()).await {
        Ok(_) => {}
        // Somebody created it first (with other settings: an identical
        // request succeeds); theirs is as good as ours once checked. A
        // server creating the same stream for a concurrent request may
        // also answer that the subjects overlap (seen on 2.9.10 just after
        // it started): then the stream must be there with our subjects.
        Err(err)
            if matches!(err.kind(), CreateStreamErrorKind::JetStream(ref js_err)
                if [
                    jetstream::ErrorCode::STREAM_NAME_EXIST,
                    jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP,
                ]
                .contains(&js_err.error_code())) =>
        {
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|_| LockError::unavailable(err))?;
            if store.stream.cached_info().config.subjects != config.subjects {
                return Err(LockError::unavailable(format!(
                    "another stream already takes the subjects of bucket {bucket:?}"
                )));
            }
            return Ok(store);
        }
        Err(err) => return Err(LockError::unavailable(err)),
    }
    js.get_key_value(bucket)
        .await
        .map_err(LockError::unavailable)
}

/// Refuses a bucket whose stream could drop a live lease, or keep an old
/// one in its place, at any ttl. A `max_age` is allowed: leases longer than
/// it are refused when asked for.
pub(crate) fn check(config: &stream::Config) -> Result<(), LockError> {
    let refuse = |setting, reason: String| Err(LockError::Misconfigured { setting, reason });
    if config.max_messages_per_subject != 1 {
        return refuse(
            "history",
            format!(
                "bucket {:?} keeps {} values per key; locks need exactly 1, or a released \
                 lease's older value would stand in for it",
                config.name, config.max_messages_per_subject
            ),
        );
    }
    let limited = config.max_messages > 0 || config.max_bytes > 0;
    if config.discard == DiscardPolicy::Old && limited {
        return refuse(
            "discard",
            format!(
                "bucket {:?} discards its oldest messages at its limits (max_msgs {}, \
                 max_bytes {}): those can be live leases; use discard new, or no limits",
                config.name, config.max_messages, config.max_bytes
            ),
        );
    }
    Ok(())
}

/// The stream behind a KV bucket with history 1.
fn stream_config(bucket: &str, settings: Settings) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("tower-lock locks".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        // One entry per key: the lease, or the marker of its release.
        max_messages_per_subject: 1,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        // A release deletes exactly its holder's message (by sequence) and
        // leaves the key without any message, so that the next acquisition
        // is a create on an empty key: the one compare-and-set that
        // replicated streams serialise on every server version (before
        // 2.9.21 the others are only checked by the leader before
        // replication, nats-server#4320). KV's own buckets forbid this.
        deny_delete: false,
        deny_purge: false,
        // Direct gets (2.9+) let any replica answer reads; every decision
        // taken on a read is confirmed by a compare-and-set, so a stale
        // answer costs a retry, never exclusion.
        allow_direct: true,
        num_replicas: settings.replicas.max(1),
        max_age: settings.max_age,
        storage: StorageType::File,
        ..Default::default()
    }
}

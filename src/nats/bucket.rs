//! Opening the lock bucket, creating it when absent, on nats-server 2.9 and
//! later.

use async_nats::jetstream::{
    self,
    context::{CreateStreamErrorKind, KeyValueErrorKind},
    kv::Store,
    stream::{self, DiscardPolicy, StorageType},
};

use crate::LockError;

/// Opens `bucket`, creating it with `replicas` replicas when it is absent.
///
/// `Context::create_key_value` cannot be used: it first reads the account
/// info, whose reply from a 2.9 server the current async-nats fails to
/// parse. The stream is created directly instead, with the settings a KV
/// bucket has (the ones async-nats and the `nats` CLI use), then opened
/// with `get_key_value`, which only reads the stream's info.
pub(crate) async fn open_or_create(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
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
    match js.create_stream(stream_config(bucket, replicas)).await {
        Ok(_) => {}
        // Somebody created it first (with other settings: an identical
        // request succeeds); theirs is as good as ours.
        Err(err)
            if matches!(err.kind(), CreateStreamErrorKind::JetStream(ref js_err)
                if js_err.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) => {}
        Err(err) => return Err(LockError::unavailable(err)),
    }
    js.get_key_value(bucket)
        .await
        .map_err(LockError::unavailable)
}

/// The stream behind a KV bucket with history 1.
fn stream_config(bucket: &str, replicas: usize) -> stream::Config {
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
        num_replicas: replicas.max(1),
        storage: StorageType::File,
        ..Default::default()
    }
}

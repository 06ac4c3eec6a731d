//! The check at construction that the server will never evict a lock: see
//! [Configuration that is refused](super#configuration-that-is-refused).

use super::client::Conn;
use crate::LockError;

/// Refuses a server whose `maxmemory-policy` can evict keys; see
/// [`RedisBackendBuilder::allow_eviction`].
pub(super) async fn check_eviction_policy(conn: &Conn) -> Result<(), LockError> {
    let reply: redis::RedisResult<redis::Value> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn.clone())
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(err) if err.kind() == redis::ErrorKind::Io || err.is_timeout() => {
            return Err(LockError::unavailable(err));
        }
        Err(err) => {
            tracing::warn!(
                error = %err,
                "CONFIG GET maxmemory-policy refused: cannot check that Redis never evicts locks"
            );
            return Ok(());
        }
    };
    // A Cluster answers per node; any node that may evict is refused.
    let mut policies = Vec::new();
    collect_policies(&reply, &mut policies);
    if policies.is_empty() {
        tracing::warn!(?reply, "no maxmemory-policy in the CONFIG GET reply");
    }
    match policies.into_iter().find(|policy| policy != "noeviction") {
        Some(policy) => Err(LockError::Misconfigured {
            setting: "maxmemory-policy",
            reason: format!(
                "`{policy}` can evict live locks and fence counters; set it to `noeviction`, \
                 or opt in with RedisBackendBuilder::allow_eviction"
            ),
        }),
        None => Ok(()),
    }
}

/// The values that follow a `maxmemory-policy` name anywhere in a reply
/// (a flat `[name, value]` array, a map, or one of those per node).
fn collect_policies(reply: &redis::Value, into: &mut Vec<String>) {
    use redis::Value;
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    match reply {
        Value::Array(items) | Value::Set(items) => {
            for pair in items.windows(2) {
                if text(&pair[0]).as_deref() == Some("maxmemory-policy")
                    && let Some(policy) = text(&pair[1])
                {
                    into.push(policy);
                }
            }
            for item in items {
                collect_policies(item, into);
            }
        }
        Value::Map(entries) => {
            for (name, value) in entries {
                match text(name) {
                    Some(name) if name == "maxmemory-policy" => into.extend(text(value)),
                    _ => collect_policies(value, into),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_policies_are_found_in_every_reply_shape() {
        use redis::Value;
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = Value::Array(vec![text("maxmemory-policy"), text("allkeys-lru")]);
        let map = Value::Map(vec![(text("maxmemory-policy"), text("noeviction"))]);
        let per_node = Value::Array(vec![map.clone(), flat.clone()]);
        for (reply, expected) in [
            (&flat, vec!["allkeys-lru"]),
            (&map, vec!["noeviction"]),
            (&per_node, vec!["noeviction", "allkeys-lru"]),
        ] {
            let mut found = Vec::new();
            collect_policies(reply, &mut found);
            assert_eq!(found, expected, "{reply:?}");
        }
    }
}

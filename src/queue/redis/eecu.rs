//! The EECU window on Redis (see [`crate::queue::eecu`]): a hash of buckets and a sorted set of
//! the operations already counted, each changed by one script.

use std::sync::LazyLock;

use redis::Script;

use super::RedisQueue;
use super::scripts::{NOW_LUA, script};
use crate::queue::QueueError;

/// Counts an operation's EECU once: marks it, drops marks older than the keep time, and adds
/// its use to the bucket of now. Returns 1 when counted now, 0 when it was counted before.
/// KEYS: 1 buckets, 2 counted. ARGV: 1 operation, 2 milli-EECU-s, 3 bucket ms, 4 keep ms.
const RECORD_LUA: &str = r#"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], now, ARGV[1])
local bucket = tonumber(ARGV[3])
local start = math.floor(now / bucket) * bucket
redis.call('HINCRBY', KEYS[1], string.format('%d', start), tonumber(ARGV[2]))
return 1
"#;

/// Drops the buckets whose end is a window old and returns `{now, start, milli, start, milli…}`.
/// KEYS: 1 buckets. ARGV: 1 bucket ms, 2 window ms.
const BUCKETS_LUA: &str = r#"
local out = {now}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local start = tonumber(all[i])
  if start + tonumber(ARGV[1]) + tonumber(ARGV[2]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, start)
    table.insert(out, tonumber(all[i + 1]))
  end
end
return out
"#;

static RECORD: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, RECORD_LUA]));
static BUCKETS: LazyLock<Script> = LazyLock::new(|| script(&[NOW_LUA, BUCKETS_LUA]));

impl RedisQueue {
    fn eecu_key(&self, part: &str) -> String {
        format!("{}:eecu:{part}", self.namespace)
    }

    /// As [`crate::queue::Queue::record_eecu`].
    pub(in crate::queue) async fn record_eecu(
        &self,
        operation: &str,
        milli: u64,
        bucket_ms: u64,
        keep_ms: u64,
    ) -> Result<bool, QueueError> {
        let n: u64 = RECORD
            .key(self.eecu_key("buckets"))
            .key(self.eecu_key("counted"))
            .arg(operation)
            .arg(milli)
            .arg(bucket_ms)
            .arg(keep_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// The queue's clock and the buckets still in the window.
    pub(in crate::queue) async fn eecu_buckets(
        &self,
        bucket_ms: u64,
        window_ms: u64,
    ) -> Result<(u64, Vec<(u64, u64)>), QueueError> {
        let flat: Vec<u64> = BUCKETS
            .key(self.eecu_key("buckets"))
            .arg(bucket_ms)
            .arg(window_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let Some((now, rest)) = flat.split_first() else {
            return Err(QueueError::Reply {
                script: "eecu buckets",
                detail: "empty reply".into(),
            });
        };
        Ok((*now, rest.chunks_exact(2).map(|p| (p[0], p[1])).collect()))
    }
}

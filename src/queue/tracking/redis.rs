//! Tracking state in Redis: per submission a string (`{ns}:tracking:{name}:submission`), a hash
//! with a field per order (`…:orders`) and a per-state tally hash (`…:counts`) kept in step by
//! [`SET_STATUS`]; a dirty set (`{ns}:tracking:dirty`) and a sorted index of names
//! (`{ns}:trackings`, by submission time).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{EECU_FIELD, OrderState, OrderStatus, Submission, TrackingError, order_key, stored};
use crate::order::Order;
use crate::queue::redis::script;

/// Sets an order's status and keeps the per-state tally and the EECU sum in step, atomically;
/// refuses to move an order backwards unless forced. Returns 1 when written, 0 when refused.
///
/// KEYS: orders hash, counts hash, dirty set. ARGV: order key, status (stored form), new state,
/// new rank, force ("1"/"0"), tracking name, the new status's EECU in ms. `__RANKS__` is
/// replaced by the rank of every state. The old status may be in the short or the long form
/// (`stored.rs`).
const SET_STATUS: &str = r#"
local ranks = {__RANKS__}
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_eecu = 0
if old then
  local d = cjson.decode(old)
  local old_state = d['s'] or d['state']
  if ARGV[5] ~= '1' and tonumber(ARGV[4]) < (ranks[old_state] or 0) then return 0 end
  redis.call('HINCRBY', KEYS[2], old_state, -1)
  local e = d['eecu'] or d['eecu_seconds']
  if type(e) == 'number' then old_eecu = math.floor(e * 1000 + 0.5) end
else
  -- No field yet: the order was QUEUED (submit records none per order).
  redis.call('HINCRBY', KEYS[2], 'QUEUED', -1)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
-- The sum exists from `create` on; one recorded before it was kept is summed on demand.
local eecu = tonumber(ARGV[7]) - old_eecu
if eecu ~= 0 and redis.call('HEXISTS', KEYS[2], EECU_FIELD) == 1 then
  redis.call('HINCRBY', KEYS[2], EECU_FIELD, eecu)
end
redis.call('SADD', KEYS[3], ARGV[6])
return 1
"#;

/// Tracking state in Redis, under a namespace.
#[derive(Clone)]
pub(super) struct RedisTracker {
    conn: ConnectionManager,
    pub(super) ns: String,
}

impl RedisTracker {
    pub(super) fn new(conn: ConnectionManager, namespace: &str) -> Self {
        RedisTracker {
            conn,
            ns: namespace.to_string(),
        }
    }

    fn orders_key(&self, name: &str) -> String {
        format!("{}:tracking:{name}:orders", self.ns)
    }
    fn counts_key(&self, name: &str) -> String {
        format!("{}:tracking:{name}:counts", self.ns)
    }
    fn submission_key(&self, name: &str) -> String {
        format!("{}:tracking:{name}:submission", self.ns)
    }
    fn index_key(&self) -> String {
        format!("{}:trackings", self.ns)
    }
    fn dirty_key(&self) -> String {
        format!("{}:tracking:dirty", self.ns)
    }

    /// `SET NX` on the submission decides who creates it.
    pub(super) async fn create(&self, sub: &Submission) -> Result<(), TrackingError> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(sub).expect("submission serializes");
        let created: bool = c.set_nx(self.submission_key(&sub.name), json).await?;
        if !created {
            return Err(TrackingError::Exists(sub.name.clone()));
        }
        // The tally starts with every order QUEUED; no field is written per order.
        let _: () = redis::pipe()
            .hset(self.counts_key(&sub.name), "QUEUED", sub.order_count())
            .ignore()
            .hset(self.counts_key(&sub.name), EECU_FIELD, 0)
            .ignore()
            .zadd(
                self.index_key(),
                &sub.name,
                sub.submitted.timestamp_millis(),
            )
            .ignore()
            .sadd(self.dirty_key(), &sub.name)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    pub(super) async fn submission(&self, name: &str) -> Result<Submission, TrackingError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.get(self.submission_key(name)).await?;
        let raw = raw.ok_or_else(|| TrackingError::Unknown(name.to_string()))?;
        serde_json::from_str(&raw).map_err(|e| TrackingError::corrupt(name, e))
    }

    pub(super) async fn submitted_ms(&self, name: &str) -> Result<Option<i64>, TrackingError> {
        let mut c = self.conn.clone();
        let score: Option<f64> = c.zscore(self.index_key(), name).await?;
        Ok(score.map(|s| s as i64))
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, TrackingError> {
        let mut c = self.conn.clone();
        Ok(c.zrange(self.index_key(), 0, -1).await?)
    }

    pub(super) async fn raw_statuses(
        &self,
        name: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<String>>, TrackingError> {
        let mut c = self.conn.clone();
        Ok(redis::cmd("HMGET")
            .arg(self.orders_key(name))
            .arg(&keys)
            .query_async(&mut c)
            .await?)
    }

    /// One [`SET_STATUS`] call.
    pub(super) async fn set(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> Result<bool, TrackingError> {
        let written: i64 = self
            .set_status(name, order, status, force)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(written == 1)
    }

    /// [`Self::set`] for many orders, pipelined: one round trip, the script loaded in it (a
    /// pipeline does not load a script Redis does not know yet, e.g. after a restart).
    pub(super) async fn set_many(
        &self,
        name: &str,
        items: &[(Order, OrderStatus)],
        force: bool,
    ) -> Result<Vec<bool>, TrackingError> {
        let mut pipe = redis::pipe();
        pipe.load_script(&SET_STATUS_SCRIPT).ignore();
        for (order, status) in items {
            pipe.invoke_script(&self.set_status(name, order, status, force));
        }
        let written: Vec<i64> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(written.into_iter().map(|w| w == 1).collect())
    }

    /// The [`SET_STATUS`] call that writes `status` for `order` of `name`.
    fn set_status(
        &self,
        name: &str,
        order: &Order,
        status: &OrderStatus,
        force: bool,
    ) -> redis::ScriptInvocation<'static> {
        let mut call = SET_STATUS_SCRIPT.prepare_invoke();
        call.key(self.orders_key(name))
            .key(self.counts_key(name))
            .key(self.dirty_key())
            .arg(order_key(order))
            .arg(stored::encode(status))
            .arg(status.state.as_str())
            .arg(status.state.rank())
            .arg(if force { "1" } else { "0" })
            .arg(name)
            .arg(stored::eecu_ms(status));
        call
    }

    pub(super) async fn counts(
        &self,
        name: &str,
    ) -> Result<BTreeMap<OrderState, u64>, TrackingError> {
        let mut c = self.conn.clone();
        let raw: BTreeMap<String, i64> = c.hgetall(self.counts_key(name)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((OrderState::parse(&k)?, v.max(0) as u64)))
            .filter(|(_, v)| *v > 0)
            .collect())
    }

    /// The EECU-seconds sum SET_STATUS keeps, in ms; `None` for a submission recorded before it
    /// was kept.
    pub(super) async fn eecu_ms(&self, name: &str) -> Result<Option<i64>, TrackingError> {
        let mut c = self.conn.clone();
        Ok(c.hget(self.counts_key(name), EECU_FIELD).await?)
    }

    /// Streams the orders hash through HSCAN, so a large campaign is read in pages.
    pub(super) async fn all(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, OrderStatus>, TrackingError> {
        let mut c = self.conn.clone();
        let mut out = BTreeMap::new();
        let mut iter: redis::AsyncIter<(String, String)> = c.hscan(self.orders_key(name)).await?;
        let mut bad = None;
        while let Some(item) = iter.next_item().await {
            let (k, v) = item?;
            match stored::decode(&v) {
                Ok(s) => {
                    out.insert(k, s);
                }
                Err(e) => bad = Some(e),
            }
        }
        if let Some(e) = bad {
            return Err(TrackingError::corrupt(name, e));
        }
        Ok(out)
    }

    /// `SPOP` hands each name to one caller.
    pub(super) async fn take_dirty(&self, n: usize) -> Result<Vec<String>, TrackingError> {
        let mut c = self.conn.clone();
        let names: Vec<String> = redis::cmd("SPOP")
            .arg(self.dirty_key())
            .arg(n)
            .query_async(&mut c)
            .await?;
        Ok(names)
    }

    pub(super) async fn mark_dirty(&self, name: &str) -> Result<(), TrackingError> {
        let mut c = self.conn.clone();
        let _: () = c.sadd(self.dirty_key(), name).await?;
        Ok(())
    }

    pub(super) async fn forget(&self, name: &str) -> Result<(), TrackingError> {
        let mut c = self.conn.clone();
        let _: () = redis::pipe()
            .del(self.orders_key(name))
            .ignore()
            .del(self.counts_key(name))
            .ignore()
            .del(self.submission_key(name))
            .ignore()
            .zrem(self.index_key(), name)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }
}

static SET_STATUS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&[&set_status_script()]));

/// [`SET_STATUS`] with the rank table filled in from [`OrderState::rank`].
fn set_status_script() -> String {
    let ranks: Vec<String> = OrderState::ALL
        .iter()
        .map(|s| format!("{}={}", s.as_str(), s.rank()))
        .collect();
    SET_STATUS
        .replace("__RANKS__", &ranks.join(","))
        .replace("EECU_FIELD", &format!("'{EECU_FIELD}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_embeds_every_rank() {
        let s = set_status_script();
        for st in OrderState::ALL {
            assert!(s.contains(&format!("{}={}", st.as_str(), st.rank())));
        }
        assert!(!s.contains("__RANKS__"));
        assert!(s.contains("redis.call('HINCRBY', KEYS[2], 'eecu_ms', eecu)"));
    }
}

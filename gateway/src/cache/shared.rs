//! The shared L2 of the prediction cache (`cache.shared`): complete answers in Redis, so an
//! answer stored by one gateway instance is a hit on every other.
//!
//! moka stays the L1. An L1 miss whose request leads its coalesced flight looks here before
//! going upstream (waiters wait for the leader either way, so coalescing stays per
//! instance); a hit is copied into the L1 and answered. A stored answer is written to both
//! levels, with the same remaining TTL. The key is the L1's BLAKE3 key (tenant scope
//! included), under `P:l2:{model, hex}:{key}` so that a purge by model or by key can find
//! its entries with `SCAN` (on the admin task, never on the request path).
//!
//! Redis errors and slowness never fail a request: every call has `cache.shared.timeout`
//! (5 ms by default) and an error or timeout is a miss (counted as `error`). Entries larger
//! than `max_entry_bytes` stay L1-only.
//!
//! Value layout (big-endian): `SYL2` magic, status u16, stored-at unix ms u64, expires-at
//! unix ms u64, header count u16, per header (name len u16, name, value len u32, value),
//! then the body.

use super::key::CacheKey;
use super::store::Stored;
use crate::policy::tenancy::SharedCacheSettings;
use crate::redis::{Pool, RedisError};
use crate::telemetry as t;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"SYL2";

/// After a failed call the L2 is skipped for this long (lookups go straight upstream), so
/// an unreachable Redis costs one timeout a second, not one per request.
const AWAY_FOR_MS: u64 = 1000;

/// The L2 store.
pub struct L2 {
    pool: Pool,
    prefix: String,
    max_entry_bytes: usize,
    /// Unix ms before which the L2 is not asked (0: ask).
    away_until: AtomicU64,
    /// Whether the last call succeeded (to log an outage once, and its end).
    up: AtomicBool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl L2 {
    pub fn new(settings: &SharedCacheSettings) -> Result<L2, RedisError> {
        Ok(L2 {
            pool: Pool::new(&settings.redis_url, settings.timeout)?,
            prefix: settings.prefix.clone(),
            max_entry_bytes: settings.max_entry_bytes,
            away_until: AtomicU64::new(0),
            up: AtomicBool::new(true),
        })
    }

    fn key(&self, model: &str, key: &CacheKey) -> String {
        format!(
            "{}:l2:{}:{}",
            self.prefix,
            hex(model.as_bytes()),
            key.to_hex()
        )
    }

    /// Look `key` up. `None` on a miss, an error or a timeout (counted); the entry comes back
    /// ready for the L1 (`generation` is the caller's current one for the model).
    pub async fn get(&self, model: &str, key: &CacheKey, generation: u64) -> Option<Arc<Stored>> {
        if !self.available() {
            metrics::counter!(t::CACHE_L2_LOOKUPS, "result" => "skipped").increment(1);
            return None;
        }
        let k = self.key(model, key);
        let result = self.pool.cmd(&[b"GET", k.as_bytes()]).await;
        let (outcome, entry) = match result {
            Ok(v) => {
                self.succeeded();
                match v.as_bytes().and_then(|b| decode(b, model, key, generation)) {
                    Some(entry) => ("hit", Some(entry)),
                    None => ("miss", None),
                }
            }
            Err(e) => {
                self.failed(&e);
                ("error", None)
            }
        };
        metrics::counter!(t::CACHE_L2_LOOKUPS, "result" => outcome).increment(1);
        entry.map(Arc::new)
    }

    /// Store `entry` (called on a task after the answer was written; errors are logged at
    /// debug level and otherwise ignored: the L1 has it).
    pub async fn put(&self, key: &CacheKey, entry: &Stored) {
        if entry.body.len() > self.max_entry_bytes || !self.available() {
            return;
        }
        let ttl_ms = entry.ttl.as_millis() as u64;
        if ttl_ms == 0 {
            return;
        }
        let value = encode(entry, unix_ms(), ttl_ms);
        let k = self.key(&entry.model, key);
        let ttl = ttl_ms.to_string();
        if let Err(e) = self
            .pool
            .cmd(&[b"SET", k.as_bytes(), &value, b"PX", ttl.as_bytes()])
            .await
        {
            self.failed(&e);
        } else {
            self.succeeded();
        }
    }

    fn available(&self) -> bool {
        unix_ms() >= self.away_until.load(Ordering::Acquire)
    }

    fn failed(&self, e: &RedisError) {
        self.away_until
            .store(unix_ms() + AWAY_FOR_MS, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, "L2 cache unreachable; going upstream (retried every second)");
        }
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("L2 cache reachable again");
        }
    }

    /// Delete the entries a purge names: every entry, one model's, or one key (on any
    /// model). Returns how many were deleted, or `None` if Redis could not be reached.
    pub async fn purge(&self, model: Option<&str>, key: Option<&CacheKey>) -> Option<usize> {
        let pattern = format!(
            "{}:l2:{}:{}",
            self.prefix,
            model.map_or("*".to_string(), |m| hex(m.as_bytes())),
            key.map_or("*".to_string(), |k| k.to_hex())
        );
        let patience = Duration::from_secs(2);
        let mut cursor = "0".to_string();
        let mut deleted = 0;
        loop {
            let reply = self
                .pool
                .cmd_within(
                    &[
                        b"SCAN",
                        cursor.as_bytes(),
                        b"MATCH",
                        pattern.as_bytes(),
                        b"COUNT",
                        b"500",
                    ],
                    patience,
                )
                .await
                .map_err(|e| tracing::warn!(error = %e, "L2 cache purge failed"))
                .ok()?;
            let mut parts = reply.into_array().into_iter();
            cursor = parts
                .next()
                .and_then(|c| c.as_str().map(String::from))
                .unwrap_or_else(|| "0".into());
            let keys: Vec<Vec<u8>> = parts
                .next()
                .map(|k| k.into_array())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec))
                .collect();
            if !keys.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"DEL"];
                args.extend(keys.iter().map(Vec::as_slice));
                let n = self
                    .pool
                    .cmd_within(&args, patience)
                    .await
                    .ok()
                    .and_then(|v| v.as_int())
                    .unwrap_or(0);
                deleted += n.max(0) as usize;
            }
            if cursor == "0" {
                return Some(deleted);
            }
        }
    }
}

fn encode(entry: &Stored, now_ms: u64, ttl_ms: u64) -> Vec<u8> {
    let headers: usize = entry
        .headers
        .iter()
        .map(|(k, v)| 6 + k.as_str().len() + v.len())
        .sum();
    let mut out = BytesMut::with_capacity(24 + headers + entry.body.len());
    out.put_slice(MAGIC);
    out.put_u16(entry.status);
    let stored_ms = now_ms.saturating_sub(entry.stored_at.elapsed().as_millis() as u64);
    out.put_u64(stored_ms);
    out.put_u64(stored_ms + ttl_ms);
    out.put_u16(entry.headers.len().min(u16::MAX as usize) as u16);
    for (name, value) in entry.headers.iter().take(u16::MAX as usize) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(&entry.body);
    out.to_vec()
}

/// Parse a stored value; anything malformed or already expired is a miss.
fn decode(bytes: &[u8], model: &str, key: &CacheKey, generation: u64) -> Option<Stored> {
    let mut b = bytes;
    if b.len() < 24 || &b[..4] != MAGIC {
        return None;
    }
    b.advance(4);
    let status = b.get_u16();
    let stored_ms = b.get_u64();
    let expires_ms = b.get_u64();
    let count = b.get_u16();
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16() as usize;
        if b.remaining() < n + 4 {
            return None;
        }
        let name = HeaderName::from_bytes(&b[..n]).ok()?;
        b.advance(n);
        let v = b.get_u32() as usize;
        if b.remaining() < v {
            return None;
        }
        let value = HeaderValue::from_bytes(&b[..v]).ok()?;
        b.advance(v);
        headers.push((name, value));
    }
    let now = unix_ms();
    let ttl = Duration::from_millis(expires_ms.checked_sub(now).filter(|ms| *ms > 0)?);
    let age = Duration::from_millis(now.saturating_sub(stored_ms));
    Some(Stored {
        status,
        headers,
        body: Bytes::copy_from_slice(b),
        stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        ttl,
        model: model.to_string(),
        generation,
        key_header: HeaderValue::from_str(&key.to_hex()).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_expired_ones_are_misses() {
        let key = CacheKey([7; 32]);
        let entry = Stored {
            status: 200,
            headers: vec![(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::from_static(b"{\"ok\":true}"),
            stored_at: Instant::now(),
            ttl: Duration::from_secs(60),
            model: "m".into(),
            generation: 0,
            key_header: HeaderValue::from_static("x"),
        };
        let now = unix_ms();
        let back = decode(&encode(&entry, now, 60_000), "m", &key, 3).unwrap();
        assert_eq!(back.status, 200);
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.body, entry.body);
        assert_eq!(back.generation, 3);
        assert!(back.ttl <= Duration::from_secs(60) && back.ttl > Duration::from_secs(50));
        assert!(decode(&encode(&entry, now - 120_000, 60_000), "m", &key, 0).is_none());
        assert!(decode(b"SYL2\0", "m", &key, 0).is_none());
    }
}

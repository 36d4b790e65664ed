//! The store: a moka `future::Cache` of complete responses, bounded by bytes.
//!
//! Each entry is weighed as the memory it holds: its body (stored at exact size), its header
//! list (capacity, names, values, each stored as its own copy), model name and key header,
//! the `Stored` struct and its `Arc`, plus a fixed [`ENTRY_OVERHEAD`] for the key and moka's
//! per-entry bookkeeping (measured; `tests/cache_memory.rs` checks that a full cache grows the
//! process by at most `max_bytes` × 1.2). So `cache.max_bytes` bounds memory rather than an
//! entry count. Every
//! entry carries its own time to live (the route's `ttl`, shortened by an upstream
//! `max-age`), applied through moka's [`Expiry`]; an optional idle timeout (`cache.idle`)
//! drops entries nobody reads. Evictions for size and expiry are counted by the eviction
//! listener.
//!
//! Moka does its bookkeeping (admission, eviction, expiry) in batches on the threads that use
//! the cache; between batches the weighted size may briefly exceed the bound by the entries
//! inserted since the last batch. [`Store::settle`] runs the pending work, which the admin
//! API does before reporting sizes.

use super::key::CacheKey;
use crate::telemetry as t;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use moka::notification::RemovalCause;
use moka::Expiry;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes an entry costs beyond what [`Stored::weight`] counts field by field: the key and
/// moka's node, deque and timer entries and hash-table slot, the shared-buffer headers the
/// `Bytes` of body, key header and values get when a hit clones them, and allocator rounding.
/// Measured with `tests/cache_memory.rs` (mimalloc, moka 0.12).
pub const ENTRY_OVERHEAD: usize = 384;

/// A stored response.
#[derive(Debug)]
pub struct Stored {
    pub status: u16,
    /// The content headers to answer with (`content-type`, `content-encoding`, …), without
    /// `content-length`, which is written from the body.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub stored_at: Instant,
    pub ttl: Duration,
    /// For purge by model: the model and the purge generation the key was made with.
    pub model: String,
    pub generation: u64,
    /// The key as a header value, made once so a hit does not hex-encode again.
    pub key_header: HeaderValue,
}

impl Stored {
    /// The entry's weight in bytes, for the cache bound.
    pub fn weight(&self) -> usize {
        use std::mem::size_of;
        // Names are counted as if all were custom (standard ones are static): a few bytes
        // over, never under.
        let headers: usize = self.headers.capacity() * size_of::<(HeaderName, HeaderValue)>()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum::<usize>();
        ENTRY_OVERHEAD
            + 2 * size_of::<usize>() // the Arc's counts
            + size_of::<Stored>()
            + self.body.len()
            + headers
            + self.model.capacity()
            + self.key_header.len()
    }

    /// Whole seconds since the entry was stored, for the `Age` header.
    pub fn age_secs(&self) -> u64 {
        self.stored_at.elapsed().as_secs()
    }
}

/// Per-entry time to live: the one the entry was stored with, from its creation or its
/// latest replacement (a `no-cache` refresh restarts the clock).
struct PerEntryTtl;

impl Expiry<CacheKey, Arc<Stored>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Stored>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Stored>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The bounded store.
pub struct Store {
    cache: moka::future::Cache<CacheKey, Arc<Stored>>,
    max_bytes: u64,
}

impl Store {
    pub fn new(max_bytes: u64, idle: Option<Duration>) -> Store {
        let mut builder = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Stored>| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .eviction_listener(|_k, _v, cause| {
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    // Purges and replacements are not evictions.
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                metrics::counter!(t::CACHE_EVICTIONS, "cause" => cause).increment(1);
            });
        if let Some(idle) = idle {
            builder = builder.time_to_idle(idle);
        }
        Store {
            cache: builder.build(),
            max_bytes,
        }
    }

    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Stored>> {
        self.cache.get(key).await
    }

    /// Whether an unexpired entry exists, without counting as a read.
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.cache.contains_key(key)
    }

    pub async fn insert(&self, key: CacheKey, value: Arc<Stored>) {
        self.cache.insert(key, value).await;
    }

    pub async fn invalidate(&self, key: &CacheKey) -> bool {
        self.cache.remove(key).await.is_some()
    }

    /// Every entry is unreadable from now on; memory is reclaimed by the next bookkeeping.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Drop, in the background of the caller, entries of `model` made before `generation`.
    /// Walks the whole store: control plane only.
    pub async fn invalidate_model(&self, model: &str, generation: u64) -> usize {
        let doomed: Vec<Arc<CacheKey>> = self
            .cache
            .iter()
            .filter(|(_, v)| v.model == model && v.generation < generation)
            .map(|(k, _)| k)
            .collect();
        for key in &doomed {
            self.cache.invalidate(key.as_ref()).await;
        }
        doomed.len()
    }

    /// Run moka's pending bookkeeping (admission, eviction, expiry) now.
    pub async fn settle(&self) {
        self.cache.run_pending_tasks().await;
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

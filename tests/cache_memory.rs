//! The prediction cache's `max_bytes` bound is a bound on memory: a cache filled well past
//! `max_bytes` with unique ~1 KB entries (through the real capture path, see
//! `support::cache_fill`) grows the process's resident set by at most
//! `max_bytes` × 1.2.
//!
//! Its own test binary, with one test, so that nothing else allocates while it measures; the
//! gateway's allocator (mimalloc), so that what is measured is what the product does. Linux
//! only (it reads `VmRSS` from `/proc/self/status`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
#[path = "support/cache_fill.rs"]
mod cache_fill;

use cache_fill::{rss_bytes, Filler};

const MAX_BYTES: u64 = 16 * 1024 * 1024;

#[tokio::test(flavor = "current_thread")]
async fn a_full_cache_holds_no_more_memory_than_max_bytes_allows() {
    let Some(_) = rss_bytes() else {
        eprintln!("note: no /proc/self/status here; skipping the cache memory check");
        return;
    };
    let filler = Filler::new("16MiB").expect("policy compiles");
    let cache = filler.cache().clone();
    // A ~700 B answer, as a small chat completion is.
    let answer = Bytes::from(format!(
        r#"{{"id":"x","object":"chat.completion","choices":[{{"message":{{"role":"assistant","content":"{}"}}}}]}}"#,
        "ok ".repeat(200)
    ));
    // Warm up everything that is allocated once (runtime, classifier, moka's internals),
    // then let it go, so the baseline is the empty cache's.
    for i in 0..200u64 {
        filler.store(u64::MAX - i, &answer).await.expect("store");
        tokio::task::yield_now().await;
    }
    cache.purge(&switchyard_gateway::cache::Purge::All).await;
    cache.settle().await;
    let baseline = rss_bytes().unwrap_or(0);

    // About three times what fits.
    let n = 3 * MAX_BYTES / 1_000;
    for i in 0..n {
        filler.store(i, &answer).await.expect("store");
        tokio::task::yield_now().await;
        if i % 1024 == 0 {
            cache.settle().await;
        }
    }
    cache.settle().await;
    let grown = rss_bytes().unwrap_or(0).saturating_sub(baseline);
    let entries = cache.entries().max(1);
    eprintln!(
        "cache: {entries} entries, weighed {} B ({} B/entry); RSS grew {grown} B ({} B/entry); max_bytes {MAX_BYTES}",
        cache.bytes(),
        cache.bytes() / entries,
        grown / entries
    );
    assert!(
        cache.bytes() <= MAX_BYTES,
        "the weighed size keeps the bound"
    );
    assert!(
        cache.bytes() >= MAX_BYTES * 8 / 10,
        "the cache was filled: {} of {MAX_BYTES} bytes",
        cache.bytes()
    );
    assert!(
        grown <= MAX_BYTES * 12 / 10,
        "RSS grew {grown} B for a cache of max_bytes {MAX_BYTES} ({} entries, {} B/entry really held vs {} B/entry weighed)",
        entries,
        grown / entries,
        cache.bytes() / entries
    );
}

//! The TLS listener (`listeners.tls`): the certificate it serves, reloading that
//! certificate without a restart, and the readiness probe that talks TLS to it.
//!
//! Pingora terminates TLS (its `rustls` feature: no C TLS library to build). Its listener
//! takes a rustls certificate resolver (`TlsSettings::set_cert_resolver`), so the gateway
//! hands it [`ServingCert`]: one `ArcSwap` of the certified key, read once per handshake
//! (never a lock the reload can hold). [`CertWatcher`] polls the certificate and key files
//! like the policy watcher polls the policy (same `Fingerprint`, same interval); a changed
//! pair is loaded and checked (PEM parses, the key signs, it matches the leaf certificate)
//! before it replaces the old one. A bad pair is refused: logged, counted
//! (`switchyard_tls_cert_reloads_total{result="error"}`) and shown in `/admin/policy`,
//! while the old certificate keeps serving. New connections get the new certificate;
//! established ones keep theirs.
//!
//! The listen address itself is fixed at start-up (a change is reported as needing a
//! restart, like the other listeners). TLS towards pools lives in [`upstream`].

use crate::serving::reload::Fingerprint;
use crate::serving::resources::ServingCert;
use crate::serving::Snapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

/// Background service: reloads the TLS certificate when its files change (or when a policy
/// reload names other files).
pub struct CertWatcher {
    pub serving: Arc<ServingCert>,
    pub snapshot: Snapshot,
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        let paths = |s: &Snapshot| {
            s.load()
                .tls_listener
                .as_ref()
                .map(|l| (l.cert.path.clone(), l.key.path.clone()))
        };
        let print = |(c, k): &(PathBuf, PathBuf)| (Fingerprint::of(c), Fingerprint::of(k));
        let mut watched = paths(&self.snapshot);
        let mut seen = watched.as_ref().map(print);
        let mut ticker =
            crate::serving::ticker::Ticker::new(crate::serving::reload::POLL, shutdown);
        loop {
            if !ticker.tick().await {
                break;
            }
            let now_paths = paths(&self.snapshot);
            let Some(current) = now_paths.clone() else {
                continue; // the policy dropped `tls`: the listener stays until a restart
            };
            let now = Some(print(&current));
            let files_missing = now
                .as_ref()
                .is_some_and(|(c, k)| c.is_none() || k.is_none());
            if (now_paths == watched && now == seen) || files_missing {
                continue;
            }
            // Let a writer that needs several writes (cert, then key) finish.
            tokio::time::sleep(crate::serving::reload::DEBOUNCE).await;
            seen = Some(print(&current));
            watched = now_paths;
            let serving = self.serving.clone();
            let _ =
                tokio::task::spawn_blocking(move || serving.reload(&current.0, &current.1)).await;
        }
    }
}

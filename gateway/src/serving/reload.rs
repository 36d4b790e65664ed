//! Reload triggers: the policy file changing on disk, `SIGHUP`, and (in `admin`) `POST
//! /admin/reload`. All three end in [`ControlPlane::reload_by`], which parses, validates and
//! compiles the file and swaps the snapshot only when that succeeds.
//!
//! The file watcher polls instead of using inotify: every [`POLL`] it stats the policy path
//! *following symlinks* and compares length, modification time, inode and device of the
//! resolved target. That one check covers editors that save by writing a temporary file and
//! renaming it over the original (new inode), in-place writes (new length or mtime) and
//! Kubernetes ConfigMap updates, where `policy.yaml → ..data/policy.yaml` and the `..data`
//! symlink is swapped to a new directory (new target inode). After a change it waits
//! [`DEBOUNCE`] for the writer to finish, then reloads only if the content hash differs from
//! the serving version, so a `touch` or a rewrite with the same text is not a reload.
//!
//! Nothing here runs on the request path, and nothing here decides what a valid policy is:
//! that is `compile`'s job. This module must not swap the snapshot itself.
//!
//! Pingora handles SIGTERM, SIGINT and SIGQUIT itself (`pingora-core` `server/mod.rs`) but
//! not SIGHUP, whose default action would terminate the process; [`HangupReloader`] installs
//! the handler when its service starts and reports that in [`ReloadStatus::sighup_armed`].

use crate::policy::compile::{content_version, RoutingTable};
use crate::serving::control::ControlPlane;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often the watcher stats the policy file. A `stat` is a few microseconds, so a short
/// interval costs nothing measurable and keeps file-change-to-serving latency low.
pub const POLL: Duration = Duration::from_millis(20);
/// How long the file must stay unchanged after a change before it is read, so that a
/// writer that needs several system calls has finished (the wait restarts while the file
/// keeps changing, up to [`DEBOUNCE_MAX`]).
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// The longest the watcher keeps waiting for a file that never stops changing.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(1000);

/// What asked for a reload (logged, and shown by `GET /admin/policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Admin,
    File,
    Signal,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Admin => "admin",
            Trigger::File => "file",
            Trigger::Signal => "sighup",
        }
    }
}

/// Settings that only take effect at start-up. A reload that changes them still applies
/// everything else and reports these as needing a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupSettings {
    pub proxy_listener: SocketAddr,
    pub admin_listener: SocketAddr,
    pub threads: Option<usize>,
    /// The prediction cache is built once: `cache.max_bytes` and `cache.idle`.
    pub cache_size: (u64, Option<Duration>),
    /// Pingora's grace period on SIGTERM is fixed when the server is built.
    pub shutdown_grace: Duration,
    /// The access log's writer is started once.
    pub access_log: (
        crate::policy::compile::LogTarget,
        crate::policy::compile::LogFormat,
    ),
    /// So is the decision log's (file, rotation size).
    pub decision_log: Option<(std::path::PathBuf, u64)>,
    /// Where tenant limits are kept (`limits.backend`, Redis) and the L2 cache.
    pub shared_state: (
        crate::policy::tenancy::LimitsBackend,
        Option<crate::policy::tenancy::SharedCacheSettings>,
    ),
    /// `listeners.tls.listen` and whether the plain listener runs (the certificate itself
    /// reloads: `tls`).
    pub tls_listener: (Option<SocketAddr>, bool),
    /// `listeners.keda`: the KEDA scaler's listener is bound at start-up.
    pub keda_listener: Option<SocketAddr>,
}

impl StartupSettings {
    pub fn of(table: &RoutingTable) -> Self {
        StartupSettings {
            proxy_listener: table.proxy_listener,
            admin_listener: table.admin_listener,
            threads: table.threads,
            cache_size: (table.cache.max_bytes, table.cache.idle),
            shutdown_grace: table.shutdown_grace,
            access_log: table.access_log.clone(),
            decision_log: table.decision_log.clone(),
            shared_state: (
                table.limits.admission.backend.clone(),
                table.cache.shared.clone(),
            ),
            tls_listener: (
                table.tls_listener.as_ref().map(|l| l.listen),
                table.plain_listener,
            ),
            keda_listener: table.keda_listener,
        }
    }

    /// What differs between the settings the process started with (`self`) and `new`.
    pub fn restart_required(&self, new: &StartupSettings) -> Vec<String> {
        let mut out = Vec::new();
        if self.proxy_listener != new.proxy_listener {
            out.push(format!(
                "listeners.proxy: serving on {}, policy says {}",
                self.proxy_listener, new.proxy_listener
            ));
        }
        if self.admin_listener != new.admin_listener {
            out.push(format!(
                "listeners.admin: serving on {}, policy says {}",
                self.admin_listener, new.admin_listener
            ));
        }
        if self.keda_listener != new.keda_listener {
            let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
            out.push(format!(
                "listeners.keda: {}, policy says {}",
                show(self.keda_listener),
                show(new.keda_listener)
            ));
        }
        if self.tls_listener != new.tls_listener {
            let show = |(tls, plain): (Option<SocketAddr>, bool)| {
                let tls = tls.map_or("no TLS".to_string(), |a| format!("TLS on {a}"));
                format!("{tls}, plain listener {}", if plain { "on" } else { "off" })
            };
            out.push(format!(
                "listeners.tls: serving {}, policy says {}",
                show(self.tls_listener),
                show(new.tls_listener)
            ));
        }
        if self.threads != new.threads {
            let show = |t: Option<usize>| t.map_or("default".to_string(), |n| n.to_string());
            out.push(format!(
                "listeners.threads: running with {}, policy says {}",
                show(self.threads),
                show(new.threads)
            ));
        }
        if self.cache_size != new.cache_size {
            let show = |(bytes, idle): (u64, Option<Duration>)| match idle {
                Some(idle) => format!("max_bytes {bytes}, idle {idle:?}"),
                None => format!("max_bytes {bytes}, no idle timeout"),
            };
            out.push(format!(
                "cache: running with {}, policy says {}",
                show(self.cache_size),
                show(new.cache_size)
            ));
        }
        if self.shutdown_grace != new.shutdown_grace {
            out.push(format!(
                "listeners.shutdown_grace: running with {:?}, policy says {:?}",
                self.shutdown_grace, new.shutdown_grace
            ));
        }
        if self.access_log != new.access_log {
            out.push(format!(
                "observe.access_log: writing {:?}, policy says {:?}",
                self.access_log, new.access_log
            ));
        }
        if self.decision_log != new.decision_log {
            out.push(format!(
                "observe.decision_log: writing {:?}, policy says {:?}",
                self.decision_log, new.decision_log
            ));
        }
        if self.shared_state.0 != new.shared_state.0 {
            out.push("limits: backend or Redis settings changed".to_string());
        }
        if self.shared_state.1 != new.shared_state.1 {
            out.push("cache.shared: changed".to_string());
        }
        out
    }
}

/// The last reload attempt, for the admin API.
#[derive(Debug, Clone)]
pub struct LastReload {
    pub trigger: Trigger,
    pub at: SystemTime,
    pub ok: bool,
}

/// Reload bookkeeping shared by the triggers and the admin API. Control plane only: the
/// request path never touches it.
#[derive(Debug)]
pub struct ReloadStatus {
    /// What the process started with; see [`StartupSettings`].
    pub started: StartupSettings,
    /// Changes in the serving policy that are not in effect until a restart.
    pub restart_required: Mutex<Vec<String>>,
    pub last: Mutex<Option<LastReload>>,
    /// Set once the file watcher runs.
    pub watching: AtomicBool,
    /// Set once the SIGHUP handler is installed.
    pub sighup_armed: AtomicBool,
    /// Held for the whole load → compile → swap, so that two triggers firing together can
    /// never publish an older file after a newer one.
    pub serialize: Mutex<()>,
}

impl ReloadStatus {
    pub fn new(started: StartupSettings) -> Self {
        ReloadStatus {
            started,
            restart_required: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            watching: AtomicBool::new(false),
            sighup_armed: AtomicBool::new(false),
            serialize: Mutex::new(()),
        }
    }

    pub fn restart_required(&self) -> Vec<String> {
        self.restart_required
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// The identity of the file a path resolves to right now: enough to notice a rename over
/// it, a symlink swap, or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl Fingerprint {
    /// Stat `path`, following symlinks. `None` while the file is missing (between an unlink
    /// and a rename, for example).
    pub fn of(path: &Path) -> Option<Fingerprint> {
        let m = std::fs::metadata(path).ok()?;
        Some(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

/// Outcome of one watcher check.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchOutcome {
    /// The file's content hash equals the serving version.
    Unchanged,
    Reloaded(String),
    Rejected,
    /// The file could not be read; nothing was attempted.
    Unreadable,
}

/// Read the policy file and reload if its content differs from the serving version.
pub fn reload_if_changed(control: &ControlPlane, path: &Path) -> WatchOutcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the policy file; will retry");
            return WatchOutcome::Unreadable;
        }
    };
    if content_version(&text) == control.snapshot.load().version {
        return WatchOutcome::Unchanged;
    }
    match control.reload_by(Trigger::File) {
        Ok(v) => WatchOutcome::Reloaded(v),
        Err(_) => WatchOutcome::Rejected,
    }
}

/// Background service: polls the policy file and reloads it when it changes.
pub struct PolicyWatcher {
    pub control: Arc<ControlPlane>,
    pub path: PathBuf,
}

#[async_trait]
impl BackgroundService for PolicyWatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut seen = Fingerprint::of(&self.path);
        self.control
            .reload_status
            .watching
            .store(true, Ordering::Relaxed);
        tracing::info!(path = %self.path.display(), "watching the policy file for changes");
        // The file may have changed between start-up's load and now.
        let (control, path) = (self.control.clone(), self.path.clone());
        let _ = tokio::task::spawn_blocking(move || reload_if_changed(&control, &path)).await;
        let mut ticker = crate::serving::ticker::Ticker::new(POLL, shutdown);
        loop {
            if !ticker.tick().await {
                break;
            }
            let now = Fingerprint::of(&self.path);
            if now.is_none() || now == seen {
                continue;
            }
            // Wait until the file has been quiet for one debounce interval.
            let started = tokio::time::Instant::now();
            let mut last = now;
            loop {
                tokio::time::sleep(DEBOUNCE).await;
                let again = Fingerprint::of(&self.path);
                if again == last || started.elapsed() >= DEBOUNCE_MAX {
                    break;
                }
                last = again;
            }
            // Remember what we are about to read; a write after this is seen next tick.
            seen = Fingerprint::of(&self.path);
            let control = self.control.clone();
            let path = self.path.clone();
            // Compiling reads files and resolves names: keep it off the async workers.
            let outcome =
                tokio::task::spawn_blocking(move || reload_if_changed(&control, &path)).await;
            if let Ok(WatchOutcome::Unchanged) = outcome {
                tracing::debug!("policy file touched but its content is unchanged");
            }
        }
    }
}

/// Background service: reloads the policy on SIGHUP.
pub struct HangupReloader {
    pub control: Arc<ControlPlane>,
}

#[async_trait]
impl BackgroundService for HangupReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGHUP handler; reload by file or admin API");
                return;
            }
        };
        self.control
            .reload_status
            .sighup_armed
            .store(true, Ordering::Relaxed);
        loop {
            tokio::select! {
                got = hangup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    tracing::info!("SIGHUP received; reloading the policy");
                    let control = self.control.clone();
                    let _ = tokio::task::spawn_blocking(move || control.reload_by(Trigger::Signal)).await;
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_sees_rename_and_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let link = dir.path().join("policy.yaml");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = Fingerprint::of(&link).unwrap();
        assert_eq!(Fingerprint::of(&link), Some(first));
        // Swap the symlink atomically, as Kubernetes does with `..data`.
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        let second = Fingerprint::of(&link).unwrap();
        assert_ne!(first.ino, second.ino);
        // Rename a new file over the target, as editors do.
        let c = dir.path().join("c");
        std::fs::write(&c, "two").unwrap();
        std::fs::rename(&c, &b).unwrap();
        assert_ne!(Fingerprint::of(&link), Some(second));
        std::fs::remove_file(&b).unwrap();
        assert_eq!(Fingerprint::of(&link), None);
    }

    #[test]
    fn restart_required_lists_listener_and_thread_changes() {
        let a = StartupSettings {
            proxy_listener: "127.0.0.1:8080".parse().unwrap(),
            admin_listener: "127.0.0.1:9090".parse().unwrap(),
            threads: None,
            cache_size: (1024, None),
            shutdown_grace: Duration::from_secs(5),
            access_log: (
                crate::policy::compile::LogTarget::Default,
                Default::default(),
            ),
            decision_log: None,
            shared_state: (crate::policy::tenancy::LimitsBackend::Local, None),
            tls_listener: (None, true),
            keda_listener: None,
        };
        assert!(a.restart_required(&a.clone()).is_empty());
        let b = StartupSettings {
            proxy_listener: "127.0.0.1:8081".parse().unwrap(),
            threads: Some(4),
            ..a.clone()
        };
        let r = a.restart_required(&b);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].starts_with("listeners.proxy"));
        assert!(r[1].starts_with("listeners.threads"));
        let c = StartupSettings {
            keda_listener: Some("127.0.0.1:9091".parse().unwrap()),
            ..a.clone()
        };
        let r = a.restart_required(&c);
        assert_eq!(r, ["listeners.keda: off, policy says 127.0.0.1:9091"]);
    }
}

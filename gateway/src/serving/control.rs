//! The control plane: the serving policy snapshot (which attaches every table it publishes
//! to the live fleet: `crate::serving`), and the two ways a new table is published (a reload of the policy file, a refresh of
//! endpoint addresses), one at a time.
//!
//! It lives in `policy`, not in `admin`, so that the dependency runs one way: the admin
//! listener, the file watcher and SIGHUP (`serving::reload`) and the address refresher
//! (`policy::resolve`) all drive it, and `policy` never imports `admin`
//! (`crate::admin::ControlPlane` re-exports it for existing callers).

use super::reload::{LastReload, ReloadStatus, StartupSettings, Trigger};
use crate::policy;
use crate::serving::Snapshot;
use crate::telemetry as t;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Shared by the admin listener and whatever reloads the policy.
pub struct ControlPlane {
    pub snapshot: Snapshot,
    pub policy_path: Option<PathBuf>,
    pub last_error: Mutex<Option<String>>,
    /// Restart-only changes, the last trigger, which triggers are armed (see `serving::reload`).
    pub reload_status: ReloadStatus,
    /// The TLS listener's certificate, when there is one (`tls`).
    pub tls: Option<Arc<crate::serving::resources::ServingCert>>,
}

impl ControlPlane {
    /// The control plane for a gateway that starts serving `snapshot`.
    pub fn new(snapshot: Snapshot, policy_path: Option<PathBuf>) -> Self {
        let started = StartupSettings::of(&snapshot.load());
        ControlPlane {
            snapshot,
            policy_path,
            last_error: Mutex::new(None),
            reload_status: ReloadStatus::new(started),
            tls: None,
        }
    }

    /// Reload the policy from its file. A policy that fails to load never replaces the one
    /// serving; the error is kept for `GET /admin/policy` and counted.
    pub fn reload(&self) -> Result<String, policy::PolicyErrors> {
        self.reload_by(Trigger::Admin)
    }

    /// [`reload`](Self::reload), saying what asked for it (file watcher, SIGHUP, admin API).
    pub fn reload_by(&self, trigger: Trigger) -> Result<String, policy::PolicyErrors> {
        // One reload at a time: a slow compile must not publish after a newer one.
        let _serial = self
            .reload_status
            .serialize
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let result = self.reload_locked(trigger);
        if let Ok(mut last) = self.reload_status.last.lock() {
            *last = Some(LastReload {
                trigger,
                at: std::time::SystemTime::now(),
                ok: result.is_ok(),
            });
        }
        result
    }

    fn reload_locked(&self, trigger: Trigger) -> Result<String, policy::PolicyErrors> {
        let Some(path) = &self.policy_path else {
            return Err(policy::PolicyErrors(vec![policy::PolicyError {
                file: PathBuf::from("(embedded)"),
                line: 0,
                column: 0,
                message: "this gateway runs an embedded policy; there is no file to reload".into(),
            }]));
        };
        let published = policy::load_file(path, self.snapshot.gateway_region()).and_then(|table| {
            let restart = self
                .reload_status
                .started
                .restart_required(&StartupSettings::of(&table));
            let version = table.version.clone();
            self.snapshot.publish(table)?;
            Ok((version, restart))
        });
        match published {
            Ok((version, restart)) => {
                for change in &restart {
                    tracing::warn!(%change, "policy change is not applied until a restart");
                }
                if let Ok(mut r) = self.reload_status.restart_required.lock() {
                    *r = restart;
                }
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                metrics::counter!(t::POLICY_RELOADS, "result" => "ok").increment(1);
                tracing::info!(%version, trigger = trigger.as_str(), "policy reloaded");
                Ok(version)
            }
            Err(errors) => {
                if let Ok(mut e) = self.last_error.lock() {
                    *e = Some(errors.to_string());
                }
                metrics::counter!(t::POLICY_RELOADS, "result" => "error").increment(1);
                tracing::error!(%errors, trigger = trigger.as_str(), "policy rejected; the previous policy keeps serving");
                Err(errors)
            }
        }
    }
}

impl ControlPlane {
    /// Publish the serving policy again with fresh endpoint addresses (`policy::resolve`):
    /// the same text compiled again, which looks every host name up (a failed lookup keeps
    /// its last good addresses). Skipped when `generation` is no longer serving (a reload
    /// came first and resolved the names itself). Returns whether a new table was stored.
    pub fn refresh_addresses(&self, generation: u64) -> bool {
        let _serial = self
            .reload_status
            .serialize
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load_full();
        if current.generation != generation {
            return false;
        }
        let cx = policy::compile::CompileContext {
            file: &current.source,
            gateway_region: self.snapshot.gateway_region(),
        };
        let compiled = policy::compile::compile_str(&current.text, &cx);
        match compiled.and_then(|table| {
            let names: Vec<_> = table
                .host_names
                .iter()
                .map(|n| (n.name.clone(), n.addrs.len()))
                .collect();
            self.snapshot.publish(table).map(|()| names)
        }) {
            Ok(names) => {
                for (endpoint, addresses) in names {
                    tracing::info!(%endpoint, addresses, "endpoint host name resolved");
                }
                true
            }
            Err(errors) => {
                // Only files the policy names (the GeoIP database) can fail here.
                tracing::error!(%errors, "cannot refresh endpoint addresses; the current table keeps serving");
                false
            }
        }
    }
}

//! Endpoint host names looked up again every `upstream.resolve_every`: when an address set
//! changes, a new generation of the table is published (`ControlPlane::refresh_addresses`),
//! its live state carried over by name. The look-ups themselves are `policy::resolve`'s.

use super::control::ControlPlane;
use crate::policy::resolve::{changed, lookup, system_lookup};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

/// Background service: every `upstream.resolve_every` (read from the serving table), look
/// every host name up again and, when an address set changed, publish a new generation.
pub struct Resolver {
    pub control: Arc<ControlPlane>,
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self.control.snapshot.load().upstream.resolve_every;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => break,
            }
            let table = self.control.snapshot.load_full();
            if table.host_names.is_empty() {
                continue;
            }
            let names: Vec<String> = table.host_names.iter().map(|n| n.name.clone()).collect();
            let Ok(fresh) = tokio::task::spawn_blocking(move || {
                names
                    .iter()
                    .map(|n| lookup(n, system_lookup))
                    .collect::<Vec<_>>()
            })
            .await
            else {
                continue;
            };
            for (old, new) in table.host_names.iter().zip(&fresh) {
                if let Some(error) = &new.error {
                    if new.addrs.is_empty() {
                        tracing::warn!(endpoint = %new.name, %error, "endpoint host name still does not resolve; it stays down");
                    } else if old.error.is_none() {
                        tracing::warn!(endpoint = %new.name, %error, "cannot re-resolve endpoint host name; keeping its last addresses");
                    }
                }
            }
            if !changed(&table.host_names, &fresh) {
                continue;
            }
            let control = self.control.clone();
            let generation = table.generation;
            let _ =
                tokio::task::spawn_blocking(move || control.refresh_addresses(generation)).await;
        }
    }
}

//! Logs written off the request path: the access log (one line per request, text or JSON
//! lines) through a bounded queue to a writer thread.
//!
//! The request thread only moves a small [`access::AccessRecord`] (indices into the snapshot
//! it already holds, a refcounted URI, the model string it no longer needs) into a bounded
//! channel: no formatting, no lock a writer holds, no system call. The writer thread formats
//! records and writes them in batches through one buffer, flushing when the queue runs dry,
//! so a busy gateway makes one `write` per batch instead of one per request. When the queue
//! is full (the log's destination cannot keep up) a record is dropped and counted
//! (`switchyard_access_log_dropped_total`), never waited for: the log must not slow the
//! requests it describes.

pub mod access;
pub mod decision;

use crate::telemetry as t;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// Records waiting for the writer at most; beyond it they are dropped.
const QUEUE: usize = 16 * 1024;

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// No `observe.access_log` in the policy: stderr, unless `RUST_LOG` turns the
    /// `switchyard::access` target off (as in `RUST_LOG=info,switchyard::access=off`).
    Default,
    Off,
    Stderr,
    Stdout,
    /// Appended to this file (relative paths are resolved against the policy's directory).
    File(PathBuf),
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `key=value` pairs after a timestamp, like the rest of the gateway's log.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The sending side of the access log, held by the proxy.
pub struct AccessLog {
    tx: SyncSender<access::AccessRecord>,
}

impl AccessLog {
    /// Start the writer thread. `None` when the log is off (by the policy, or by
    /// `RUST_LOG=…,switchyard::access=off` when the policy names no destination).
    pub fn start(target: &LogTarget, format: LogFormat) -> std::io::Result<Option<AccessLog>> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Off => return Ok(None),
            LogTarget::Default if !tracing::enabled!(target: "switchyard::access", tracing::Level::INFO) => {
                return Ok(None)
            }
            LogTarget::Default | LogTarget::Stderr => Box::new(std::io::stderr()),
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_all(rx, out, format))?;
        Ok(Some(AccessLog { tx }))
    }

    /// Queue `record` for the writer; dropped (and counted) when the queue is full.
    pub fn record(&self, record: access::AccessRecord) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(record) {
            metrics::counter!(t::ACCESS_LOG_DROPPED).increment(1);
        }
    }
}

/// The writer thread: format and write records in batches until every sender is gone.
fn write_all(rx: Receiver<access::AccessRecord>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            line.clear();
            record.format(format, &mut line);
            if out.write_all(line.as_bytes()).is_err() {
                metrics::counter!(t::ACCESS_LOG_DROPPED).increment(1);
            }
            next = rx.try_recv().ok();
        }
        // The queue ran dry: what was written reaches its destination now.
        let _ = out.flush();
    }
    let _ = out.flush();
}

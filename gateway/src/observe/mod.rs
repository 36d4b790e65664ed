//! Logs written off the request path: the access log (one line per request, text or JSON
//! lines) through a bounded queue to a writer thread.
//!
//! The request thread only moves a small [`access::AccessRecord`] (indices into the snapshot
//! it already holds, a refcounted URI, the model string it no longer needs) into a bounded
//! channel: no formatting, no lock a writer holds, no system call (the writer is never
//! waiting on the channel, so a send wakes nobody). Every 10 ms the writer thread formats
//! what has queued up and writes it through one buffer with one flush, so a busy gateway
//! makes one `write` per batch instead of one per request. When the queue
//! is full (the log's destination cannot keep up) a record is dropped and counted
//! (`switchyard_access_log_dropped_total`), never waited for: the log must not slow the
//! requests it describes.

pub mod access;
pub mod decision;
pub mod spend;
pub mod status;
pub mod text;

use crate::telemetry as t;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

/// Records waiting for the writer at most; beyond it they are dropped (at 20k requests/s a
/// batch is ~200 records).
const QUEUE: usize = 16 * 1024;
/// How often the writer drains the queue: lines reach their destination at most this late.
const BATCH_EVERY: Duration = Duration::from_millis(10);

pub use crate::policy::compile::{DecisionHeaders, LogFormat, LogTarget};

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

/// The writer thread: every [`BATCH_EVERY`], format and write what has queued up, then flush
/// once. It never blocks on the queue, so a request's send never has to wake it (a futex
/// wake per request cost more than the line itself): the queue is simply drained on a clock.
fn write_all(rx: Receiver<access::AccessRecord>, out: Box<dyn Write + Send>, format: LogFormat) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    loop {
        std::thread::sleep(BATCH_EVERY);
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    line.clear();
                    record.format(format, &mut line);
                    if out.write_all(line.as_bytes()).is_err() {
                        metrics::counter!(t::ACCESS_LOG_DROPPED).increment(1);
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
    }
}

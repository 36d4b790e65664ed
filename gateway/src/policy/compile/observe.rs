//! The `observe:` section: where the access log goes and its format, the decision log, and
//! which decision headers answers carry, and where traces go. The types are the policy's; `observe` writes the logs.

use super::{parse_size, Problems};
use crate::policy::raw::{self, LogFormat};
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};

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

/// The decision log's rotation size when `observe.decision_log_max` is not written.
pub const DEFAULT_DECISION_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// The `observe:` section's access log.
pub(super) fn compile_access_log(
    p: &mut Problems,
    node: Option<&Spanned<raw::Observe>>,
    file: &Path,
) -> (LogTarget, LogFormat) {
    let Some(node) = node else {
        return (LogTarget::Default, Default::default());
    };
    let format = node.value.access_log_format.unwrap_or_default();
    let target = match node.value.access_log.as_ref() {
        None => LogTarget::Default,
        Some(t) => match t.value.trim() {
            "stderr" => LogTarget::Stderr,
            "stdout" => LogTarget::Stdout,
            "off" => LogTarget::Off,
            "" => {
                p.on(
                    t,
                    "observe.access_log: expected stderr, stdout, off or a file path".to_string(),
                );
                LogTarget::Stderr
            }
            path => LogTarget::File(file.parent().unwrap_or_else(|| Path::new(".")).join(path)),
        },
    };
    (target, format)
}

/// The `observe:` section's decision log: its file and rotation size (`None`: off).
pub(super) fn compile_decision_log(
    p: &mut Problems,
    node: Option<&Spanned<raw::Observe>>,
    file: &Path,
) -> Option<(PathBuf, u64)> {
    let o = &node?.value;
    let max = match &o.decision_log_max {
        None => DEFAULT_DECISION_LOG_BYTES,
        Some(n) => match parse_size(&n.value) {
            Some(s) if s >= 4096 => s as u64,
            _ => {
                p.on(
                    n,
                    "observe.decision_log_max: expected a size of at least 4KiB, e.g. 64MiB"
                        .to_string(),
                );
                DEFAULT_DECISION_LOG_BYTES
            }
        },
    };
    let path = o.decision_log.as_ref()?;
    if path.value.trim().is_empty() {
        p.on(
            path,
            "observe.decision_log: expected a file path".to_string(),
        );
        return None;
    }
    Some((
        file.parent()
            .unwrap_or_else(|| Path::new("."))
            .join(path.value.trim()),
        max,
    ))
}

/// `observe.traces`, compiled: read by the request (sampling) and the trace exporter from
/// the snapshot they hold, so every setting applies on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's `host:port` and the path spans are POSTed to.
    pub host: String,
    pub port: u16,
    pub path: String,
    pub sample_ratio: f64,
    pub service_name: String,
    pub batch_max: usize,
    pub batch_every: std::time::Duration,
    pub max_queue: usize,
    pub max_attempts: u8,
}

/// The `observe:` section's traces (`None`: off).
pub(super) fn compile_traces(
    p: &mut Problems,
    node: Option<&Spanned<raw::Observe>>,
) -> Option<TraceSettings> {
    let node = node?.value.traces.as_ref()?;
    let t = &node.value;
    let endpoint = t.otlp_endpoint.value.trim();
    let (host, port, path) = match split_http_url(endpoint) {
        Some(parts) => parts,
        None => {
            p.on(
                &t.otlp_endpoint,
                "observe.traces.otlp_endpoint: expected http://host:port[/path]",
            );
            return None;
        }
    };
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.on(
            node,
            "observe.traces.sample_ratio: expected a number from 0 to 1",
        );
    }
    let batch_every = match &t.batch_every {
        None => std::time::Duration::from_secs(1),
        Some(d) => match super::parse_duration(&d.value) {
            Some(d) if !d.is_zero() => d,
            _ => {
                p.on(
                    d,
                    "observe.traces.batch_every: expected a duration, e.g. 1s",
                );
                std::time::Duration::from_secs(1)
            }
        },
    };
    let batch_max = t.batch_max.unwrap_or(512) as usize;
    let max_queue = t.max_queue.unwrap_or(4096) as usize;
    let max_attempts = t.max_attempts.unwrap_or(3);
    if batch_max == 0 || max_queue == 0 || max_attempts == 0 {
        p.on(
            node,
            "observe.traces: batch_max, max_queue and max_attempts must be at least 1",
        );
    }
    Some(TraceSettings {
        host,
        port,
        path,
        sample_ratio,
        service_name: t
            .service_name
            .clone()
            .unwrap_or_else(|| "switchyard".to_string()),
        batch_max,
        batch_every,
        max_queue,
        max_attempts,
    })
}

/// `http://host[:port][/path]` as host, port (80) and path (`/v1/traces` when none: OTLP's
/// signal path under a base URL).
fn split_http_url(text: &str) -> Option<(String, u16, String)> {
    let url = crate::policy::url::parse_url(text)?;
    let path = match url.path.as_str() {
        "/" => "/v1/traces".to_string(),
        _ => url.path,
    };
    Some((url.host, url.port, path))
}

#[cfg(test)]
mod tests {
    use super::split_http_url;

    #[test]
    fn an_otlp_endpoint_without_a_path_posts_to_v1_traces() {
        let url = |s| split_http_url(s);
        assert_eq!(
            url("http://127.0.0.1:4318"),
            Some(("127.0.0.1".into(), 4318, "/v1/traces".into()))
        );
        assert_eq!(
            url("http://collector/otlp/v1/traces"),
            Some(("collector".into(), 80, "/otlp/v1/traces".into()))
        );
        assert_eq!(url("https://collector:4318"), None);
        assert_eq!(url("http://user@collector:4318"), None);
        assert_eq!(url("http://:4318"), None);
    }
}

//! The `observe:` section: where the access log goes and its format, the decision log, and
//! which decision headers answers carry. The types are the policy's; `observe` writes the logs.

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

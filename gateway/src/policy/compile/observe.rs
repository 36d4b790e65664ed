//! The `observe:` section: where the access log goes and its format, and the decision log.

use super::{parse_size, Problems};
use crate::policy::raw;
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};

/// The `observe:` section's access log.
pub(super) fn compile_access_log(
    p: &mut Problems,
    node: Option<&Spanned<raw::Observe>>,
    file: &Path,
) -> (crate::observe::LogTarget, crate::observe::LogFormat) {
    use crate::observe::LogTarget;
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
        None => crate::observe::decision::DEFAULT_MAX_BYTES,
        Some(n) => match parse_size(&n.value) {
            Some(s) if s >= 4096 => s as u64,
            _ => {
                p.on(
                    n,
                    "observe.decision_log_max: expected a size of at least 4KiB, e.g. 64MiB"
                        .to_string(),
                );
                crate::observe::decision::DEFAULT_MAX_BYTES
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

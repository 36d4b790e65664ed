//! The `observe:` section: where the access log goes and its format.

use super::Problems;
use crate::policy::raw;
use serde_saphyr::Spanned;
use std::path::Path;

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

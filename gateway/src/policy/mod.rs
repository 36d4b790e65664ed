//! The control plane: the operator's YAML policy, from text to the immutable routing table
//! the request path reads.
//!
//! `raw` mirrors the file, `compile` validates it and resolves references into a
//! [`RoutingTable`]. The table is pure data: nothing under `policy` holds or imports live
//! state. `crate::serving` publishes a table together with its live state
//! (`serving::state::Live`, attached by pool and endpoint name, so measurements survive a
//! reload that keeps the names) with one atomic pointer swap. A request loads that once, at
//! its start, and uses the same table and state to the end, so a reload never changes the
//! rules under a request in flight. A policy that fails to parse or validate never replaces
//! the one serving.
//!
//! `compile` is split per section (`compile/`), and [`control::ControlPlane`] (reload,
//! address refresh) lives here so that `policy` never imports `admin`.

pub mod compile;
pub mod hosted;
pub mod raw;
pub mod resolve;
#[cfg(feature = "schema")]
pub mod schema;
pub mod secret;
pub mod tenancy;
pub mod url;

pub use compile::{RoutingTable, INSPECT_LIMIT};

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a policy file, at a line and column (1-based; 0 when not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem found in a policy file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl PolicyErrors {
    fn single(file: &Path, line: u64, column: u64, message: String) -> Self {
        PolicyErrors(vec![PolicyError {
            file: file.to_path_buf(),
            line,
            column,
            message,
        }])
    }
}

/// Largest policy file accepted; a policy is configuration, not data.
const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// Parse policy text into its as-written form. Errors carry the file, line and column.
pub fn parse(text: &str, file: &Path) -> Result<raw::Policy, PolicyErrors> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyErrors::single(
            file,
            0,
            0,
            format!("policy is larger than {MAX_POLICY_BYTES} bytes"),
        ));
    }
    serde_saphyr::from_str::<raw::Policy>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        PolicyErrors::single(file, line, column, yaml_message(&e))
    })
}

/// serde-saphyr renders a snippet with its messages; keep the first line, which says what
/// was expected, since the location is reported separately.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let mut first = full.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop a "line X column Y: " prefix or " at line X, column Y" suffix that would repeat
    // the location reported beside it.
    if first.starts_with("line ") {
        if let Some(i) = first.find(": ") {
            first = &first[i + 2..];
        }
    }
    match first.find(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// Read, parse, validate and compile a policy file. `gateway_region` is the start-up
/// `--region` override, if any (see [`compile::CompileContext`]).
pub fn load_file(
    path: &Path,
    gateway_region: Option<String>,
) -> Result<RoutingTable, PolicyErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyErrors::single(path, 0, 0, format!("cannot read policy file: {e}")))?;
    compile::compile_str(
        &text,
        &compile::CompileContext {
            file: path,
            gateway_region,
        },
    )
}

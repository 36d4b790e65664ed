//! The control plane: the operator's YAML policy, from text to the immutable routing table
//! the request path reads.
//!
//! `raw` mirrors the file, `compile` validates it and resolves references into a
//! [`RoutingTable`], and [`Snapshot`] publishes the current table with one atomic pointer
//! swap. A request loads the snapshot once, at its start, and uses that table to the end, so
//! a reload never changes the rules under a request in flight. A policy that fails to parse
//! or validate never replaces the one serving.
//!
//! `compile` is split per section (`compile/`), and [`control::ControlPlane`] (reload,
//! address refresh) lives here so that `policy` never imports `admin`.
//!
//! Not done yet (issue 16, item 10): the compiled table still holds live state
//! (`Pool::state`, `Endpoint::state`, `Upstream::budget`, attached from the
//! `route::state::Fleet` by name at compile time), so `policy` imports `route::state`. The
//! plan, kept as one change because it touches every reader of that state:
//! 1. `RoutingTable` becomes pure data: drop `Pool::state`, `Endpoint::state` and
//!    `Upstream::budget`. `CompileContext` takes `gateway_region: Option<String>` (the
//!    start-up `--region` override) instead of `fleet`; `resolve::endpoints` stops attaching
//!    state (an unresolved placeholder is recognised by `Endpoint::resolved`).
//! 2. `route::state` gains `Live { pools: Vec<Arc<PoolState>>, endpoints:
//!    Vec<Vec<Arc<EndpointState>>>, budget: Arc<RetryBudget> }`, indexed like the table
//!    (`PoolId`, endpoint index), built by `Fleet::attach(&RoutingTable) -> Live` by name,
//!    so state still survives a reload that keeps the pool and endpoint names; unresolved
//!    endpoints get `EndpointState::unresolved()`.
//! 3. A new top-level `serving` module owns `Serving { table: RoutingTable, live: Live }` and
//!    the `Snapshot` (`ArcSwap<Serving>`): one pointer load per request still gives a table
//!    and its state together. `ControlPlane` publishes `Serving`; `policy::load_file` and
//!    `compile_str` return the bare table.
//! 4. Readers change mechanically: `pool.state` → `live.pool(pool_id)`, `ep.state` →
//!    `live.endpoint(pool_id, ep_idx)`, `table.upstream.budget` → `live.budget`. Signatures
//!    that take `&RoutingTable` and read state take `&Serving` (or `(&RoutingTable, &Live)`):
//!    `route::decide`, `route::network`, `route::health`, `hedge`, `proxy` and
//!    `proxy::buffered`, `queue::dispatcher`, `admin` (metrics, status, explain), `admit`,
//!    `grpc`, `discovery`, `demo`, `scenario`, `tools`, and the tests that build a table by
//!    hand. Nothing else in `policy` needs `route::state` after that.

pub mod compile;
pub mod control;
pub mod hosted;
pub mod raw;
pub mod reload;
pub mod resolve;
pub mod secret;
pub mod tenancy;

pub use compile::{RoutingTable, INSPECT_LIMIT};

use crate::route::state::Fleet;
use arc_swap::ArcSwap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Read, parse, validate and compile a policy file.
pub fn load_file(path: &Path, fleet: &Fleet) -> Result<RoutingTable, PolicyErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyErrors::single(path, 0, 0, format!("cannot read policy file: {e}")))?;
    compile::compile_str(&text, &compile::CompileContext { file: path, fleet })
}

/// The routing table currently serving, swapped atomically on reload.
pub type Snapshot = Arc<ArcSwap<RoutingTable>>;

/// Make a snapshot holding `table`.
pub fn snapshot(table: RoutingTable) -> Snapshot {
    Arc::new(ArcSwap::from_pointee(table))
}

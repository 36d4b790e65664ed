//! What the gateway serves: a compiled [`RoutingTable`] (pure data, `policy`) and its
//! [`Live`] state (estimates, in-flight counts, ejections, the retry budget: `route::state`),
//! published together as one [`Serving`] behind one `ArcSwap`.
//!
//! A request loads the [`Snapshot`] once, at its start, and uses that table and its state to
//! the end: one pointer load, no lock, no lookup by name (the live state is indexed like the
//! table). Publishing is the only place the two meet: [`ServingSlot::publish`] attaches the
//! table to the fleet's live state by pool and endpoint name (`route::state::Fleet::attach`),
//! so measurements survive a reload that keeps the names, and a table is never served
//! without its state. The control plane (`policy::control`) publishes through it, so `policy`
//! itself stays free of live state.

use crate::policy::RoutingTable;
use crate::route::state::{Fleet, Live};
use arc_swap::{ArcSwap, Guard};
use std::ops::Deref;
use std::sync::Arc;

/// A routing table and the live state of its pools and endpoints.
pub struct Serving {
    pub table: RoutingTable,
    pub live: Live,
}

impl Serving {
    /// `table` with its live state from `fleet` (by pool and endpoint name).
    pub fn attach(table: RoutingTable, fleet: &Fleet) -> Self {
        let live = fleet.attach(&table);
        Serving { table, live }
    }
}

/// A `Serving` reads as its table: code that only needs the policy takes `&RoutingTable` and
/// is handed the serving one unchanged.
impl Deref for Serving {
    type Target = RoutingTable;
    fn deref(&self) -> &RoutingTable {
        &self.table
    }
}

/// The table serving now (with its state), and the fleet that new tables are attached to.
pub struct ServingSlot {
    current: ArcSwap<Serving>,
    fleet: Arc<Fleet>,
}

impl ServingSlot {
    /// The serving table and its state, for the duration of the guard (the request path).
    pub fn load(&self) -> Guard<Arc<Serving>> {
        self.current.load()
    }

    /// The serving table and its state, held as long as needed.
    pub fn load_full(&self) -> Arc<Serving> {
        self.current.load_full()
    }

    /// Serve `table` from now on, with its live state attached from the fleet.
    pub fn publish(&self, table: RoutingTable) {
        self.current
            .store(Arc::new(Serving::attach(table, &self.fleet)));
    }

    /// The instance's region as given at start-up (`--region`, `SWITCHYARD_REGION`), which
    /// every table published here is compiled with.
    pub fn gateway_region(&self) -> Option<String> {
        self.fleet.gateway_region()
    }
}

/// The table currently serving, swapped atomically on reload.
pub type Snapshot = Arc<ServingSlot>;

/// Make a snapshot serving `table`, its live state attached from `fleet`.
pub fn snapshot(table: RoutingTable, fleet: Arc<Fleet>) -> Snapshot {
    Arc::new(ServingSlot {
        current: ArcSwap::from_pointee(Serving::attach(table, &fleet)),
        fleet,
    })
}

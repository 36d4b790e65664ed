//! What the gateway serves: a compiled [`RoutingTable`] (pure data, `policy`) and its
//! [`Live`] state (estimates, in-flight counts, ejections, the retry budget: `serving::state`),
//! published together as one [`Serving`] behind one `ArcSwap`.
//!
//! A request loads the [`Snapshot`] once, at its start, and uses that table and its state to
//! the end: one pointer load, no lock, no lookup by name (the live state is indexed like the
//! table). Publishing is the only place the two meet: [`ServingSlot::publish`] attaches the
//! table to the fleet's live state by pool and endpoint name (`serving::state::Fleet::attach`),
//! so measurements survive a reload that keeps the names, and a table is never served
//! without its state. The control plane (`serving::control`) publishes through it, so `policy`
//! itself stays free of live state.

pub mod budget;
pub mod by_name;
pub mod control;
pub mod geo;
pub mod reload;
pub mod resolve;
pub mod resources;
pub mod state;
pub mod ticker;

use crate::policy::{PolicyErrors, RoutingTable};
use arc_swap::{ArcSwap, Guard};
use resources::Resources;
use state::{Fleet, Live};
use std::ops::Deref;
use std::sync::Arc;

/// A routing table, the live state of its pools and endpoints, and the resources it names.
pub struct Serving {
    pub table: RoutingTable,
    pub live: Live,
    pub resources: Resources,
}

impl Serving {
    /// `table` with its resources loaded ([`Resources::load`]: an error names the policy
    /// line) and its live state attached from `fleet` (by pool and endpoint name).
    pub fn load(table: RoutingTable, fleet: &Fleet) -> Result<Self, PolicyErrors> {
        let resources = Resources::load(&table)?;
        Ok(Self::new(table, resources, fleet))
    }

    /// `table` with `resources` already loaded for it.
    pub fn new(table: RoutingTable, resources: Resources, fleet: &Fleet) -> Self {
        let live = fleet.attach(&table);
        Serving {
            table,
            live,
            resources,
        }
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

    /// Serve `table` from now on, with its resources loaded and its live state attached
    /// from the fleet; a resource that does not load leaves the serving table in place.
    pub fn publish(&self, table: RoutingTable) -> Result<(), PolicyErrors> {
        let serving = Serving::load(table, &self.fleet)?;
        self.current.store(Arc::new(serving));
        Ok(())
    }

    /// The instance's region as given at start-up (`--region`, `SWITCHYARD_REGION`), which
    /// every table published here is compiled with.
    pub fn gateway_region(&self) -> Option<String> {
        self.fleet.gateway_region()
    }
}

/// The table currently serving, swapped atomically on reload.
pub type Snapshot = Arc<ServingSlot>;

/// Make a snapshot serving `table`, its resources loaded and its live state attached from
/// `fleet`.
pub fn snapshot(table: RoutingTable, fleet: Arc<Fleet>) -> Result<Snapshot, PolicyErrors> {
    let serving = Serving::load(table, &fleet)?;
    Ok(Arc::new(ServingSlot {
        current: ArcSwap::from_pointee(serving),
        fleet,
    }))
}

//! State kept by name beside the table and across reloads (a tenant's limits, a model's
//! rollout, a model's shadow counters): read on every request, written when a name is first
//! seen. Readers load the map lock-free; a writer copies it (copy on write), which happens
//! once per name.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// The map: name → its state.
pub type ByName<V> = ArcSwap<HashMap<String, Arc<V>>>;

/// The state of `name`: the one kept if `keep` accepts it, else a new one from `make`, put
/// in the map (`make` may run more than once when writers race; one result is kept).
pub fn get_or_make<V>(
    map: &ByName<V>,
    name: &str,
    keep: impl Fn(&V) -> bool,
    make: impl Fn() -> V,
) -> Arc<V> {
    if let Some(v) = map.load().get(name) {
        if keep(v) {
            return v.clone();
        }
    }
    let mut out = None;
    map.rcu(|m| {
        let mut m = HashMap::clone(m);
        let v = match m.get(name) {
            Some(v) if keep(v) => v.clone(),
            _ => {
                let v = Arc::new(make());
                m.insert(name.to_string(), v.clone());
                v
            }
        };
        out = Some(v);
        m
    });
    out.unwrap_or_else(|| Arc::new(make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_made_once_kept_and_made_again_when_refused() {
        let map: ByName<u32> = ArcSwap::from_pointee(HashMap::new());
        let a = get_or_make(&map, "m", |_| true, || 1);
        let b = get_or_make(&map, "m", |_| true, || 2);
        assert!(Arc::ptr_eq(&a, &b), "kept, not made again");
        let c = get_or_make(&map, "m", |v| *v == 2, || 2);
        assert_eq!(*c, 2, "refused by keep: made again");
        assert_eq!(**map.load().get("m").expect("in the map"), 2);
    }
}

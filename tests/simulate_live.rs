//! The simulator validated against reality: the live `fleet-faults` scenario (real Pingora,
//! real mock backends, real time) and the simulated one on the same seeded traffic agree per
//! phase — the same requests, Switchyard's real-time SLO attainment within 3 points and its
//! spend (the same bill on both sides: capacity over the phase, usage, egress, priced by
//! `route::cost`) within 10%, round-robin's attainment within 6 points. Alone in its own test binary
//! so that no sibling test competes with the live run for the CPU (its real-time tier has
//! ~10 ms of slack in the slow phases, which a busy 2-core machine can eat).

mod support;

use support::report::{json, realtime, run, spend, system};

#[test]
fn the_simulated_scenario_agrees_with_the_live_one() {
    // One after the other: the live run gets the machine to itself.
    let live = json(&run(&[
        "demo",
        "--scenario",
        "fleet-faults",
        "--phase-secs",
        "6",
        "--json",
    ]));
    let sim = json(&run(&["simulate", "--phase-secs", "6", "--json"]));
    assert_eq!(sim["simulated"], true);
    let (sim_phases, live_phases) = (
        sim["phases"].as_array().expect("phases"),
        live["phases"].as_array().expect("phases"),
    );
    assert_eq!(sim_phases.len(), 4);
    assert_eq!(live_phases.len(), 4);
    for (s, l) in sim_phases.iter().zip(live_phases) {
        assert_eq!(s["phase"], l["phase"]);
        let ctx = format!("phase {}\nsimulated: {s:#}\nlive: {l:#}", s["phase"]);
        for name in ["switchyard", "round-robin", "always-gpu"] {
            assert_eq!(
                system(s, name)["requests"],
                system(l, name)["requests"],
                "same traffic; {ctx}"
            );
        }
        let (ss, ls) = (system(s, "switchyard"), system(l, "switchyard"));
        assert!(
            (realtime(ss) - realtime(ls)).abs() <= 3.0,
            "switchyard real-time SLO {} simulated vs {} live; {ctx}",
            realtime(ss),
            realtime(ls)
        );
        assert!(
            (spend(ss) - spend(ls)).abs() <= 0.10 * spend(ls),
            "switchyard spend {} simulated vs {} live; {ctx}",
            spend(ss),
            spend(ls)
        );
        let (sr, lr) = (system(s, "round-robin"), system(l, "round-robin"));
        assert!(
            (realtime(sr) - realtime(lr)).abs() <= 6.0,
            "round-robin real-time SLO {} simulated vs {} live; {ctx}",
            realtime(sr),
            realtime(lr)
        );
    }
}

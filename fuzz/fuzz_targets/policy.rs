//! Any bytes as a policy file: parse, validate and compile must return a table or located
//! errors, never panic (the bounded version is in tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use switchyard_gateway::policy::compile::{compile_str, CompileContext};
use switchyard_gateway::serving::state::Fleet;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fleet = Fleet::default();
    let cx = CompileContext {
        file: Path::new("fuzz.yaml"),
        fleet: &fleet,
    };
    if let Err(errors) = compile_str(&text, &cx) {
        assert!(errors.0.iter().all(|e| e.line >= 1 && e.column >= 1));
    }
});

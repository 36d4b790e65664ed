//! Any bytes as a cacheable body: canonicalised or refused, never a panic; what is accepted
//! canonicalises to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_gateway::cache::key::canonical_json;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if canonical_json(data, &mut out).is_ok() {
        let mut again = Vec::new();
        assert!(canonical_json(&out, &mut again).is_ok());
        assert_eq!(again, out);
    }
});

//! Any bytes as a GeoIP (MMDB) database: refused at load, or every lookup answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_gateway::serving::geo::GeoDb;

fuzz_target!(|data: &[u8]| {
    if let Ok(db) = GeoDb::from_bytes(data.to_vec(), "fuzz".into()) {
        for ip in ["8.8.8.8", "192.0.2.10", "::1", "2001:db8::1", "10.0.0.1"] {
            if let Ok(ip) = ip.parse() {
                let _ = db.lookup(ip);
            }
        }
    }
});

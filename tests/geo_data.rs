//! The committed test GeoIP database is exactly what the writer builds from the test
//! entries, so nobody edits one without the other, and it answers the documentation ranges
//! the way tests and docs assume.

use maxminddb::{geoip2, Reader};
use std::net::IpAddr;
use switchyard_testkit::mmdb::{build, test_entries};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geo-data/switchyard-test.mmdb");

fn committed() -> Vec<u8> {
    std::fs::read(COMMITTED).unwrap()
}

#[test]
fn committed_database_equals_a_fresh_build() {
    let fresh = build(&test_entries()).unwrap();
    // Not assert_eq!: a diff of two byte vectors of a few KB helps nobody.
    assert!(
        committed() == fresh,
        "geo-data/switchyard-test.mmdb differs from build(&test_entries()) \
         ({} vs {} bytes); regenerate it with `cargo run --example gen_geo_db`",
        committed().len(),
        fresh.len()
    );
}

#[test]
fn committed_database_maps_the_documentation_ranges() {
    let reader = Reader::from_source(committed()).unwrap();
    reader.verify().unwrap();
    for (ip, country, continent) in [
        ("192.0.2.7", "DE", "EU"),
        ("198.51.100.7", "US", "NA"),
        ("203.0.113.7", "JP", "AS"),
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        let record = reader
            .lookup(ip)
            .unwrap()
            .decode::<geoip2::Country>()
            .unwrap()
            .unwrap_or_else(|| panic!("{ip} not found"));
        assert_eq!(record.country.iso_code, Some(country), "{ip}");
        assert_eq!(record.continent.code, Some(continent), "{ip}");
    }
    let private = reader.lookup("10.0.0.1".parse().unwrap()).unwrap();
    assert!(!private.has_data());
}

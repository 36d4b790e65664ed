//! Client IP → country and continent, through a MaxMind (MMDB) country database.
//!
//! The database is opened once per policy compile and shared read-only; a lookup is a walk
//! of the search tree, plus decoding two short strings when the record is not remembered
//! yet (below), with no allocation. A missing or
//! corrupt database is an error at start-up or reload, never a panic on the request path.
//!
//! Decoding the record was two thirds of a lookup (`cargo bench --bench hot_path`,
//! `geoip_lookup`), and a country database has only a few hundred distinct records that
//! millions of networks point at. So each decoded record is remembered by its offset in the
//! data section, in a small direct-mapped table of atomics ([`Decoded`]): lock-free, no
//! allocation, shared by every thread, and a miss (a slot taken by another record) only
//! costs the decode it would have cost anyway.

use maxminddb::Reader;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The reproducible test database from `geo-data/`, compiled in so that the demo and a
/// policy without `geoip.database` run with no files at all.
static EMBEDDED: &[u8] = include_bytes!("../../../geo-data/switchyard-test.mmdb");

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read GeoIP database {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid MaxMind DB: {source}")]
    Invalid {
        path: String,
        source: maxminddb::MaxMindDbError,
    },
}

/// What a lookup found: ISO country code and continent code, either may be missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GeoInfo {
    pub country: Option<[u8; 2]>,
    pub continent: Option<[u8; 2]>,
}

impl GeoInfo {
    pub fn country_str(&self) -> Option<&str> {
        self.country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
    pub fn continent_str(&self) -> Option<&str> {
        self.continent
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
}

pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    decoded: Decoded,
    /// Where it came from, for the admin API.
    pub description: String,
}

/// Slots in the decoded-record table (32 KiB; a country database has a few hundred records).
const DECODED_SLOTS: usize = 4096;

/// Decoded records by data offset: each slot packs `offset + 1` (high 32 bits; 0 = empty) and
/// the record's two codes (low 32 bits, a zero byte pair for a missing code, which ISO codes
/// never contain). A slot is one atomic word, so a reader sees a whole entry or another one,
/// never a torn mix.
struct Decoded(Box<[AtomicU64]>);

impl Decoded {
    fn new() -> Decoded {
        Decoded((0..DECODED_SLOTS).map(|_| AtomicU64::new(0)).collect())
    }

    fn slot(&self, offset: usize) -> &AtomicU64 {
        // Records are a few dozen bytes apart: the low bits of the offset spread them well.
        &self.0[offset % DECODED_SLOTS]
    }

    fn get(&self, offset: usize) -> Option<GeoInfo> {
        let tag = u32::try_from(offset).ok()?.checked_add(1)?;
        let word = self.slot(offset).load(Ordering::Relaxed);
        ((word >> 32) as u32 == tag).then(|| {
            let b = (word as u32).to_be_bytes();
            let code = |c: [u8; 2]| (c != [0, 0]).then_some(c);
            GeoInfo {
                country: code([b[0], b[1]]),
                continent: code([b[2], b[3]]),
            }
        })
    }

    fn put(&self, offset: usize, info: GeoInfo) {
        let Some(tag) = u32::try_from(offset).ok().and_then(|o| o.checked_add(1)) else {
            return;
        };
        let [c0, c1] = info.country.unwrap_or([0, 0]);
        let [k0, k1] = info.continent.unwrap_or([0, 0]);
        let codes = u32::from_be_bytes([c0, c1, k0, k1]);
        self.slot(offset)
            .store(u64::from(tag) << 32 | u64::from(codes), Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Code<'a>>,
    #[serde(borrow, default)]
    continent: Option<Code<'a>>,
}

#[derive(Deserialize)]
struct Code<'a> {
    #[serde(default)]
    iso_code: Option<&'a str>,
    #[serde(default)]
    code: Option<&'a str>,
}

fn two(s: Option<&str>) -> Option<[u8; 2]> {
    s.and_then(|s| s.as_bytes().try_into().ok())
}

impl GeoDb {
    /// Open an MMDB file, validating it by reading its metadata.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| GeoError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_bytes(bytes, shown)
    }

    /// The database compiled into the binary.
    pub fn embedded() -> Result<GeoDb, GeoError> {
        Self::from_bytes(EMBEDDED.to_vec(), "embedded test database".into())
    }

    pub fn from_bytes(bytes: Vec<u8>, description: String) -> Result<GeoDb, GeoError> {
        let reader = Reader::from_source(bytes).map_err(|source| GeoError::Invalid {
            path: description.clone(),
            source,
        })?;
        // A file can have valid metadata and a broken tree; probe one lookup now so that
        // corruption is found at load time rather than on traffic.
        reader
            .lookup(IpAddr::from([8, 8, 8, 8]))
            .and_then(|r| r.decode::<Record>().map(|_| ()))
            .map_err(|source| GeoError::Invalid {
                path: description.clone(),
                source,
            })?;
        Ok(GeoDb {
            reader,
            decoded: Decoded::new(),
            description,
        })
    }

    /// Look an address up. Unknown, private and undecodable addresses give an empty result.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let Ok(result) = self.reader.lookup(ip) else {
            return GeoInfo::default();
        };
        let Some(offset) = result.offset() else {
            return GeoInfo::default();
        };
        if let Some(info) = self.decoded.get(offset) {
            return info;
        }
        let info = match result.decode::<Record>() {
            Ok(Some(rec)) => GeoInfo {
                country: two(rec.country.and_then(|c| c.iso_code)),
                continent: two(rec.continent.and_then(|c| c.code)),
            },
            _ => GeoInfo::default(),
        };
        self.decoded.put(offset, info);
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_database_maps_documentation_ranges() {
        let db = GeoDb::embedded().unwrap();
        let de = db.lookup("192.0.2.10".parse().unwrap());
        assert_eq!(de.country_str(), Some("DE"));
        assert_eq!(de.continent_str(), Some("EU"));
        let us = db.lookup("::ffff:198.51.100.1".parse().unwrap());
        assert_eq!(us.country_str(), Some("US"));
        assert_eq!(db.lookup("10.0.0.1".parse().unwrap()), GeoInfo::default());
    }

    #[test]
    fn remembered_records_answer_like_decoded_ones() {
        let db = GeoDb::embedded().unwrap();
        let ips = [
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.9",
            "10.0.0.1",
            "2001:db8::1",
        ];
        let first: Vec<GeoInfo> = ips
            .iter()
            .map(|ip| db.lookup(ip.parse().unwrap()))
            .collect();
        // The second round is answered from the decoded-record table.
        let again: Vec<GeoInfo> = ips
            .iter()
            .map(|ip| db.lookup(ip.parse().unwrap()))
            .collect();
        assert_eq!(first, again);
        assert!(first.iter().any(|g| g.country.is_some()));
        // A record with one code missing survives the packing.
        let d = Decoded::new();
        let half = GeoInfo {
            country: None,
            continent: Some(*b"EU"),
        };
        d.put(4100, half);
        assert_eq!(d.get(4100), Some(half));
        assert_eq!(d.get(4), None, "another offset in the same slot is a miss");
    }

    #[test]
    fn corrupt_database_is_an_error_not_a_panic() {
        assert!(GeoDb::from_bytes(b"not an mmdb".to_vec(), "x".into()).is_err());
        let mut bytes = EMBEDDED.to_vec();
        let len = bytes.len();
        bytes[..len / 2].fill(0xff);
        assert!(GeoDb::from_bytes(bytes, "x".into()).is_err());
        let missing = GeoDb::open(Path::new("/nonexistent/geo.mmdb"));
        assert!(matches!(missing, Err(GeoError::Read { .. })));
    }
}

//! Client IP → country and continent, through a MaxMind (MMDB) country database.
//!
//! The database is opened once per policy compile and shared read-only; a lookup is a walk
//! of the search tree plus decoding two short strings, with no allocation. A missing or
//! corrupt database is an error at start-up or reload, never a panic on the request path.

use maxminddb::Reader;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

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
    /// Where it came from, for the admin API.
    pub description: String,
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
        match result.decode::<Record>() {
            Ok(Some(rec)) => GeoInfo {
                country: two(rec.country.and_then(|c| c.iso_code)),
                continent: two(rec.continent.and_then(|c| c.code)),
            },
            _ => GeoInfo::default(),
        }
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

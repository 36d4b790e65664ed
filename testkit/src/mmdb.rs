//! A small writer for MaxMind DB (MMDB) country databases, so that the tests and the demo
//! use a GeoIP database we build ourselves, the same bytes on every run, instead of a
//! downloaded file with its own licence and release cycle. `geo-data/switchyard-test.mmdb`
//! is `build(&test_entries())`, and `tests/geo_data.rs` checks that the two agree.
//!
//! It writes format 2.0 the way GeoLite2-Country does and `maxminddb` reads it: an IPv6
//! search tree in which IPv4 networks live under `::/96` and `::ffff:0:0/96` is an alias of
//! that subtree, the 16-byte separator, one data record per distinct country, then the
//! metadata. Records have the GeoLite2-Country shape (`country.iso_code`, `continent.code`,
//! English names), so `maxminddb::geoip2::Country` decodes them. The record size is the
//! smallest of 24, 28 and 32 bits that fits.
//!
//! Nested networks are allowed and the most specific one wins, as in a real database. The
//! same network twice is an error, and so is an IPv6 network that overlaps the IPv4 space
//! (`::/96` or `::ffff:0:0/96`): give those as IPv4 networks. Host bits are ignored
//! (`192.0.2.7/24` is `192.0.2.0/24`). This is not a general MMDB writer: one record shape,
//! no pointers in the data section. Nothing here is on the request path.
//!
//! Why not a writer crate (measured for issue 16, 2026-12, on `test_entries()`): neither
//! reproduces the committed 3,108-byte `geo-data/switchyard-test.mmdb`, which
//! `tests/geo_data.rs` holds to. `mmdb-writer` 0.1.0 writes 2,686 bytes (IPv4 aliasing off)
//! or 2,841–2,842 bytes (aliasing on: it also aliases 6to4 and Teredo), `maxminddb-writer`
//! 0.1.3 writes 3,276 bytes (metadata in struct order, no IPv4-mapped alias); all differ from
//! byte 5, in the search tree. `mmdb-writer` would also add 8 crates (`bon`, `darling`
//! proc macros), `maxminddb-writer` 1.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The `database_type` in the metadata.
pub const DATABASE_TYPE: &str = "Switchyard-Test-Country";

/// Fixed, so that a rebuild gives the same bytes: 2025-01-01T00:00:00Z.
const BUILD_EPOCH: u64 = 1_735_689_600;

const DESCRIPTION: &str = "Switchyard test country database: documentation ranges and a few \
     sample networks. Built by switchyard::testkit::mmdb; not real geolocation data.";

const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
const DATA_SECTION_SEPARATOR: [u8; 16] = [0; 16];

/// Where IPv4 networks are stored in the IPv6 tree (`::a.b.c.d`), and its IPv4-mapped alias.
const IPV4_SUBTREE: (u128, u8) = (0, 96);
const IPV4_MAPPED_ALIAS: (u128, u8) = (0xffff_u128 << 32, 96);

/// One network and the country/continent it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoEntry {
    pub network: IpNet,
    /// ISO 3166-1 alpha-2 code, e.g. "DE".
    pub country: &'static str,
    /// English name, e.g. "Germany".
    pub country_name: &'static str,
    /// Continent code as MaxMind uses them: AF, AN, AS, EU, NA, OC, SA.
    pub continent: &'static str,
    /// English name, e.g. "Europe".
    pub continent_name: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MmdbWriteError {
    #[error("network {0} is listed more than once")]
    DuplicateNetwork(IpNet),
    #[error(
        "IPv6 network {0} overlaps ::/96 or ::ffff:0:0/96, where IPv4 networks are stored; \
         give it as an IPv4 network instead"
    )]
    OverlapsIpv4Space(IpNet),
    #[error("a value of length {0} is too long for an MMDB data field")]
    TooLong(usize),
    #[error("the database is too large for 32-bit search tree records")]
    TooLarge,
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    // `new_assert` in a const: a bad prefix length fails the build, not a caller.
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(segments: [u16; 3], len: u8) -> IpNet {
    let [a, b, c] = segments;
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0),
        len,
    ))
}

const fn entry(
    network: IpNet,
    country: &'static str,
    country_name: &'static str,
    continent: &'static str,
    continent_name: &'static str,
) -> GeoEntry {
    GeoEntry {
        network,
        country,
        country_name,
        continent,
        continent_name,
    }
}

/// The shipped test database. The documentation ranges (RFC 5737, RFC 3849) are what tests
/// and examples should use; the real-world blocks are where the registry or operator that
/// holds them is based, for demos with familiar addresses, and are not authoritative.
const TEST_ENTRIES: &[GeoEntry] = &[
    // Documentation ranges: never routed, safe in tests and docs.
    entry(v4(192, 0, 2, 0, 24), "DE", "Germany", "EU", "Europe"),
    entry(
        v4(198, 51, 100, 0, 24),
        "US",
        "United States",
        "NA",
        "North America",
    ),
    entry(v4(203, 0, 113, 0, 24), "JP", "Japan", "AS", "Asia"),
    entry(
        v6([0x2001, 0x0db8, 0], 32),
        "GB",
        "United Kingdom",
        "EU",
        "Europe",
    ),
    // Real-world blocks, at least one per inhabited continent.
    entry(
        v4(8, 8, 8, 0, 24),
        "US",
        "United States",
        "NA",
        "North America",
    ),
    entry(
        v6([0x2001, 0x4860, 0], 32),
        "US",
        "United States",
        "NA",
        "North America",
    ),
    entry(v4(193, 0, 0, 0, 21), "NL", "Netherlands", "EU", "Europe"),
    entry(
        v6([0x2001, 0x067c, 0x02e8], 48),
        "NL",
        "Netherlands",
        "EU",
        "Europe",
    ),
    entry(
        v4(200, 160, 0, 0, 20),
        "BR",
        "Brazil",
        "SA",
        "South America",
    ),
    entry(
        v4(200, 3, 12, 0, 22),
        "UY",
        "Uruguay",
        "SA",
        "South America",
    ),
    entry(v4(202, 12, 29, 0, 24), "AU", "Australia", "OC", "Oceania"),
    entry(v4(196, 216, 2, 0, 24), "MU", "Mauritius", "AF", "Africa"),
];

/// The networks in the shipped test database (documentation ranges + a few real-world ranges).
pub fn test_entries() -> Vec<GeoEntry> {
    TEST_ENTRIES.to_vec()
}

/// `build(&test_entries())` written to `path`, creating its directory if needed.
pub fn write_test_db(path: &Path) -> Result<(), MmdbWriteError> {
    let bytes = build(&test_entries())?;
    let io = |source| MmdbWriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

/// Serialise entries into MMDB bytes. Deterministic: the same set of entries gives the same
/// bytes, whatever order they come in.
pub fn build(entries: &[GeoEntry]) -> Result<Vec<u8>, MmdbWriteError> {
    build_with_record_size(entries, None)
}

/// `build`, optionally forcing a record size (24, 28 or 32) so tests can cover all three.
fn build_with_record_size(
    entries: &[GeoEntry],
    forced_record_size: Option<u16>,
) -> Result<Vec<u8>, MmdbWriteError> {
    // Shorter prefixes first: a more specific network is then always inserted after the
    // networks containing it and overwrites its part of them. Sorting also makes the
    // output independent of the input order.
    let mut keyed = Vec::with_capacity(entries.len());
    for entry in entries {
        let network = entry.network.trunc();
        keyed.push((tree_key(network)?, network, entry));
    }
    keyed.sort_by_key(|&((key, len), _, entry)| (len, key, record_fields(entry)));
    for pair in keyed.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(MmdbWriteError::DuplicateNetwork(pair[1].1));
        }
    }

    // One data record per distinct country, in order of first use.
    let mut data = Vec::new();
    let mut record_offsets = Vec::new();
    let mut seen = BTreeMap::new();
    let mut tree = Tree::new();
    let mut has_ipv4 = false;
    for &((key, len), network, entry) in &keyed {
        let record = match seen.get(&record_fields(entry)) {
            Some(&index) => index,
            None => {
                let index = record_offsets.len();
                record_offsets.push(data.len());
                encode_record(&mut data, entry)?;
                seen.insert(record_fields(entry), index);
                index
            }
        };
        tree.insert(key, len, Slot::Data(record));
        has_ipv4 |= matches!(network, IpNet::V4(_));
    }
    if has_ipv4 {
        // As in GeoLite2: `::ffff:a.b.c.d` finds the same record as `a.b.c.d`.
        let ipv4_root = tree.slot(IPV4_SUBTREE.0, IPV4_SUBTREE.1);
        tree.insert(IPV4_MAPPED_ALIAS.0, IPV4_MAPPED_ALIAS.1, ipv4_root);
    }

    let (order, numbers) = tree.number_nodes();
    let node_count = order.len();
    let largest_record = node_count + DATA_SECTION_SEPARATOR.len() + data.len();
    let record_size = match forced_record_size {
        Some(size) => size,
        None => [24, 28, 32]
            .into_iter()
            .find(|&bits| (largest_record as u64) < (1_u64 << bits))
            .ok_or(MmdbWriteError::TooLarge)?,
    };
    if (largest_record as u64) >= (1_u64 << record_size) {
        return Err(MmdbWriteError::TooLarge);
    }
    let node_count_u32 = u32::try_from(node_count).map_err(|_| MmdbWriteError::TooLarge)?;

    let record_value = |slot: Slot| -> u32 {
        // Casts are in range: every value is at most `largest_record`, checked above.
        match slot {
            Slot::Empty => node_count as u32,
            Slot::Node(index) => numbers[index] as u32,
            Slot::Data(record) => {
                (node_count + DATA_SECTION_SEPARATOR.len() + record_offsets[record]) as u32
            }
        }
    };
    let mut out = Vec::with_capacity(node_count * usize::from(record_size) / 4 + data.len() + 512);
    for &index in &order {
        let [left, right] = tree.nodes[index].map(record_value);
        write_node(&mut out, record_size, left, right);
    }
    out.extend_from_slice(&DATA_SECTION_SEPARATOR);
    out.extend_from_slice(&data);
    out.extend_from_slice(METADATA_MARKER);
    encode_metadata(&mut out, node_count_u32, record_size)?;
    Ok(out)
}

/// What makes two records the same record.
fn record_fields(entry: &GeoEntry) -> (&'static str, &'static str, &'static str, &'static str) {
    (
        entry.country,
        entry.country_name,
        entry.continent,
        entry.continent_name,
    )
}

/// The network as a 128-bit key and prefix length in the IPv6 tree.
fn tree_key(network: IpNet) -> Result<(u128, u8), MmdbWriteError> {
    match network {
        IpNet::V4(net) => Ok((
            u128::from(u32::from(net.network())),
            IPV4_SUBTREE.1 + net.prefix_len(),
        )),
        IpNet::V6(net) => {
            let key = (u128::from(net.network()), net.prefix_len());
            if overlaps(key, IPV4_SUBTREE) || overlaps(key, IPV4_MAPPED_ALIAS) {
                return Err(MmdbWriteError::OverlapsIpv4Space(network));
            }
            Ok(key)
        }
    }
}

/// Two prefixes overlap exactly when one contains the other.
fn overlaps((a, a_len): (u128, u8), (b, b_len): (u128, u8)) -> bool {
    let shorter = u32::from(a_len.min(b_len));
    let mask = u128::MAX.checked_shl(128 - shorter).unwrap_or(0);
    (a ^ b) & mask == 0
}

fn bit_at(key: u128, depth: u8) -> usize {
    ((key >> (127 - u32::from(depth))) & 1) as usize
}

/// One side of a search tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// No data: the lookup ends "not found".
    Empty,
    /// Index of a data record.
    Data(usize),
    /// Index of a node in `Tree::nodes` (not its number in the file).
    Node(usize),
}

/// The search tree while it is built. Node 0 is the root. After the IPv4 alias is added it
/// is a DAG rather than a tree, which is why nodes are numbered by a walk, not by index.
struct Tree {
    nodes: Vec<[Slot; 2]>,
}

impl Tree {
    fn new() -> Tree {
        Tree {
            nodes: vec![[Slot::Empty; 2]],
        }
    }

    /// Set the record for `key/len` (`len` ≥ 1), creating nodes on the way down. A record met
    /// on the way belongs to a shorter network: it is pushed down to both children, so it
    /// keeps covering everything except the part being overwritten.
    fn insert(&mut self, key: u128, len: u8, value: Slot) {
        let (node, side) = self.descend(key, len);
        self.nodes[node][side] = value;
    }

    /// The record for `key/len` (`len` ≥ 1), as `insert` would leave the path to it.
    fn slot(&mut self, key: u128, len: u8) -> Slot {
        let (node, side) = self.descend(key, len);
        self.nodes[node][side]
    }

    fn descend(&mut self, key: u128, len: u8) -> (usize, usize) {
        let mut node = 0;
        for depth in 0..len.saturating_sub(1) {
            let side = bit_at(key, depth);
            node = match self.nodes[node][side] {
                Slot::Node(next) => next,
                inherited => {
                    let next = self.nodes.len();
                    self.nodes.push([inherited; 2]);
                    self.nodes[node][side] = Slot::Node(next);
                    next
                }
            };
        }
        (node, bit_at(key, len.saturating_sub(1)))
    }

    /// Node indices in file order (pre-order, zero side first, each node once) and each
    /// index's number in the file.
    fn number_nodes(&self) -> (Vec<usize>, Vec<usize>) {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut numbers = vec![usize::MAX; self.nodes.len()];
        let mut stack = vec![0];
        while let Some(index) = stack.pop() {
            if numbers[index] != usize::MAX {
                continue; // reached again through the alias
            }
            numbers[index] = order.len();
            order.push(index);
            for slot in self.nodes[index].iter().rev() {
                if let Slot::Node(child) = *slot {
                    stack.push(child);
                }
            }
        }
        (order, numbers)
    }
}

fn write_node(out: &mut Vec<u8>, record_size: u16, left: u32, right: u32) {
    let (l, r) = (left.to_be_bytes(), right.to_be_bytes());
    match record_size {
        24 => {
            out.extend_from_slice(&l[1..]);
            out.extend_from_slice(&r[1..]);
        }
        28 => {
            // [left low 24][left high 4 | right high 4][right low 24]
            out.extend_from_slice(&l[1..]);
            out.push((l[0] << 4) | (r[0] & 0x0f));
            out.extend_from_slice(&r[1..]);
        }
        _ => {
            out.extend_from_slice(&l);
            out.extend_from_slice(&r);
        }
    }
}

// Data section type numbers (spec section "Output Data Section").
const TYPE_UTF8_STRING: u8 = 2;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;

/// A control byte (plus extended type byte and size bytes) for a field of `size`.
fn encode_control(out: &mut Vec<u8>, type_num: u8, size: usize) -> Result<(), MmdbWriteError> {
    let (size_bits, size_bytes): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, Vec::new()),
        29..285 => (29, vec![(size - 29) as u8]),
        285..65_821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        65_821..16_843_037 => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
        _ => return Err(MmdbWriteError::TooLong(size)),
    };
    if type_num <= TYPE_MAP {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits); // type 0 = extended: the type follows, less 7
        out.push(type_num - 7);
    }
    out.extend_from_slice(&size_bytes);
    Ok(())
}

fn encode_str(out: &mut Vec<u8>, s: &str) -> Result<(), MmdbWriteError> {
    encode_control(out, TYPE_UTF8_STRING, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Unsigned integers are stored big-endian without leading zero bytes.
fn encode_uint(out: &mut Vec<u8>, type_num: u8, value: u64) -> Result<(), MmdbWriteError> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    encode_control(out, type_num, bytes.len() - skip)?;
    out.extend_from_slice(&bytes[skip..]);
    Ok(())
}

/// `{"code"|"iso_code": code, "names": {"en": name}}`
fn encode_place(
    out: &mut Vec<u8>,
    code_key: &str,
    code: &str,
    name: &str,
) -> Result<(), MmdbWriteError> {
    encode_control(out, TYPE_MAP, 2)?;
    encode_str(out, code_key)?;
    encode_str(out, code)?;
    encode_str(out, "names")?;
    encode_control(out, TYPE_MAP, 1)?;
    encode_str(out, "en")?;
    encode_str(out, name)
}

/// The GeoLite2-Country shape, reduced to what a country lookup needs.
fn encode_record(out: &mut Vec<u8>, entry: &GeoEntry) -> Result<(), MmdbWriteError> {
    encode_control(out, TYPE_MAP, 2)?;
    encode_str(out, "continent")?;
    encode_place(out, "code", entry.continent, entry.continent_name)?;
    encode_str(out, "country")?;
    encode_place(out, "iso_code", entry.country, entry.country_name)
}

/// `maxminddb` checks the type of each field, so the integer types here are the spec's.
fn encode_metadata(
    out: &mut Vec<u8>,
    node_count: u32,
    record_size: u16,
) -> Result<(), MmdbWriteError> {
    encode_control(out, TYPE_MAP, 9)?;
    encode_str(out, "binary_format_major_version")?;
    encode_uint(out, TYPE_UINT16, 2)?;
    encode_str(out, "binary_format_minor_version")?;
    encode_uint(out, TYPE_UINT16, 0)?;
    encode_str(out, "build_epoch")?;
    encode_uint(out, TYPE_UINT64, BUILD_EPOCH)?;
    encode_str(out, "database_type")?;
    encode_str(out, DATABASE_TYPE)?;
    encode_str(out, "description")?;
    encode_control(out, TYPE_MAP, 1)?;
    encode_str(out, "en")?;
    encode_str(out, DESCRIPTION)?;
    encode_str(out, "ip_version")?;
    encode_uint(out, TYPE_UINT16, 6)?;
    encode_str(out, "languages")?;
    encode_control(out, TYPE_ARRAY, 1)?;
    encode_str(out, "en")?;
    encode_str(out, "node_count")?;
    encode_uint(out, TYPE_UINT32, u64::from(node_count))?;
    encode_str(out, "record_size")?;
    encode_uint(out, TYPE_UINT16, u64::from(record_size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use maxminddb::{geoip2, Reader};
    use std::net::IpAddr;

    /// First, middle and last address of a network, for tests that probe its edges.
    fn probe_addresses(network: IpNet) -> [IpAddr; 3] {
        match network.trunc() {
            IpNet::V4(net) => {
                let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
                [first, first + (last - first) / 2, last].map(|a| IpAddr::V4(a.into()))
            }
            IpNet::V6(net) => {
                let (first, last) = (u128::from(net.network()), u128::from(net.broadcast()));
                [first, first + (last - first) / 2, last].map(|a| IpAddr::V6(a.into()))
            }
        }
    }

    fn open(bytes: Vec<u8>) -> Reader<Vec<u8>> {
        let reader = Reader::from_source(bytes).unwrap();
        reader.verify().unwrap();
        reader
    }

    /// (country, continent, English country name, English continent name), or None.
    fn lookup(reader: &Reader<Vec<u8>>, ip: &str) -> Option<(String, String, String, String)> {
        let ip: IpAddr = ip.parse().unwrap();
        let found = reader.lookup(ip).unwrap();
        let record = found.decode::<geoip2::Country>().unwrap()?;
        Some((
            record.country.iso_code.unwrap().to_owned(),
            record.continent.code.unwrap().to_owned(),
            record.country.names.english.unwrap().to_owned(),
            record.continent.names.english.unwrap().to_owned(),
        ))
    }

    fn place(country: &'static str, network: &str) -> GeoEntry {
        entry(network.parse().unwrap(), country, country, "EU", "Europe")
    }

    fn assert_round_trip(reader: &Reader<Vec<u8>>, entries: &[GeoEntry]) {
        for e in entries {
            for ip in probe_addresses(e.network) {
                let expected = (
                    e.country.to_owned(),
                    e.continent.to_owned(),
                    e.country_name.to_owned(),
                    e.continent_name.to_owned(),
                );
                assert_eq!(lookup(reader, &ip.to_string()), Some(expected), "{ip}");
                let found = reader.lookup(ip).unwrap();
                assert_eq!(found.network().unwrap().to_string(), e.network.to_string());
            }
        }
    }

    #[test]
    fn every_test_entry_round_trips_at_first_middle_and_last_address() {
        let entries = test_entries();
        let reader = open(build(&entries).unwrap());
        assert_round_trip(&reader, &entries);
        let m = reader.metadata();
        assert_eq!(m.database_type, DATABASE_TYPE);
        assert_eq!((m.ip_version, m.record_size), (6, 24));
        assert_eq!(m.binary_format_major_version, 2);
        assert_eq!(m.build_epoch, BUILD_EPOCH);
        assert_eq!(m.languages, ["en"]);
        assert!(m.description["en"].contains("Switchyard"));
    }

    #[test]
    fn every_record_size_decodes() {
        let entries = test_entries();
        for bits in [24, 28, 32] {
            let reader = open(build_with_record_size(&entries, Some(bits)).unwrap());
            assert_eq!(reader.metadata().record_size, bits);
            assert_round_trip(&reader, &entries);
        }
    }

    #[test]
    fn node_layouts_follow_the_spec() {
        // The spec's 28-bit example: each record's high nibble shares the middle byte.
        let (left, right) = (0x0123_4567, 0x089A_BCDE);
        let mut out = Vec::new();
        write_node(&mut out, 28, left, right);
        assert_eq!(out, [0x23, 0x45, 0x67, 0x18, 0x9A, 0xBC, 0xDE]);
        out.clear();
        write_node(&mut out, 24, 0x12_3456, 0xAB_CDEF);
        assert_eq!(out, [0x12, 0x34, 0x56, 0xAB, 0xCD, 0xEF]);
        out.clear();
        write_node(&mut out, 32, left, right);
        assert_eq!(out, [0x01, 0x23, 0x45, 0x67, 0x08, 0x9A, 0xBC, 0xDE]);
    }

    #[test]
    fn addresses_outside_every_network_are_not_found() {
        let reader = open(build(&test_entries()).unwrap());
        for ip in [
            "10.0.0.1",
            "192.0.1.255",
            "192.0.3.0",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "2001:db9::1",
            "2001:67c:2e9::1",
            "ffff::1",
        ] {
            let result = reader.lookup(ip.parse().unwrap()).unwrap();
            assert!(!result.has_data(), "{ip}");
            assert_eq!(lookup(&reader, ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_lookups_and_the_ipv4_mapped_alias() {
        let reader = open(build(&test_entries()).unwrap());
        assert_eq!(lookup(&reader, "2001:db8::1").unwrap().0, "GB");
        assert_eq!(lookup(&reader, "2001:db8:ffff::7").unwrap().0, "GB");
        assert_eq!(
            lookup(&reader, "2001:67c:2e8:22::c100:68b").unwrap().0,
            "NL"
        );
        // IPv4 networks are also found through IPv6: ::a.b.c.d and ::ffff:a.b.c.d.
        assert_eq!(lookup(&reader, "::192.0.2.7").unwrap().0, "DE");
        assert_eq!(lookup(&reader, "::ffff:192.0.2.7").unwrap().0, "DE");
        assert_eq!(lookup(&reader, "::ffff:203.0.113.200").unwrap().1, "AS");
        assert_eq!(lookup(&reader, "::ffff:10.0.0.1"), None);
        // The alias is not listed twice when iterating.
        let networks = reader
            .networks(Default::default())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(networks.len(), test_entries().len());
    }

    #[test]
    fn build_is_deterministic_and_independent_of_input_order() {
        let entries = test_entries();
        let first = build(&entries).unwrap();
        assert_eq!(first, build(&entries).unwrap());
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(first, build(&reversed).unwrap());
    }

    #[test]
    fn nested_networks_resolve_to_the_most_specific() {
        // Given in an order where containers come after what they contain.
        let entries = [
            place("CC", "10.1.2.0/24"),
            place("AA", "10.0.0.0/8"),
            place("BB", "10.1.0.0/16"),
            place("FF", "2001:db8:1::/48"),
            place("EE", "2001:db8::/32"),
        ];
        let reader = open(build(&entries).unwrap());
        for (ip, country) in [
            ("10.0.0.1", "AA"),
            ("10.255.255.255", "AA"),
            ("10.1.0.1", "BB"),
            ("10.1.2.0", "CC"),
            ("10.1.2.255", "CC"),
            ("10.1.3.0", "BB"),
            ("10.1.255.255", "BB"),
            ("2001:db8::1", "EE"),
            ("2001:db8:1::1", "FF"),
            ("2001:db8:2::1", "EE"),
        ] {
            assert_eq!(lookup(&reader, ip).unwrap().0, country, "{ip}");
        }
        assert_eq!(lookup(&reader, "11.0.0.1"), None);
        let found = reader.lookup("10.1.3.0".parse().unwrap()).unwrap();
        assert_eq!(found.network().unwrap().to_string(), "10.1.3.0/24");
    }

    #[test]
    fn an_ipv4_default_route_covers_all_ipv4_but_no_ipv6() {
        let reader = open(build(&[place("ZZ", "0.0.0.0/0")]).unwrap());
        assert_eq!(lookup(&reader, "1.2.3.4").unwrap().0, "ZZ");
        assert_eq!(lookup(&reader, "::ffff:1.2.3.4").unwrap().0, "ZZ");
        assert_eq!(lookup(&reader, "2001:db8::1"), None);
    }

    #[test]
    fn an_empty_database_finds_nothing() {
        let reader = open(build(&[]).unwrap());
        assert_eq!(lookup(&reader, "192.0.2.1"), None);
        assert_eq!(lookup(&reader, "2001:db8::1"), None);
    }

    #[test]
    fn duplicates_are_rejected_and_host_bits_ignored() {
        let err = build(&[place("AA", "192.0.2.0/24"), place("BB", "192.0.2.7/24")]);
        assert!(
            matches!(err, Err(MmdbWriteError::DuplicateNetwork(n)) if n.to_string() == "192.0.2.0/24")
        );
        let reader = open(build(&[place("AA", "192.0.2.7/24")]).unwrap());
        assert_eq!(lookup(&reader, "192.0.2.200").unwrap().0, "AA");
    }

    #[test]
    fn ipv6_networks_over_the_ipv4_space_are_rejected() {
        for net in [
            "::ffff:192.0.2.0/120",
            "::/0",
            "::/64",
            "::192.0.2.0/120",
            "::ffff:0:0/96",
        ] {
            let err = build(&[place("AA", net)]);
            assert!(
                matches!(err, Err(MmdbWriteError::OverlapsIpv4Space(_))),
                "{net}"
            );
        }
        // Neighbours of the IPv4 space are fine.
        let reader =
            open(build(&[place("AA", "::1:0:0:0/96"), place("BB", "::fffe:0:0/96")]).unwrap());
        assert_eq!(lookup(&reader, "::1:0:0:5").unwrap().0, "AA");
        assert_eq!(lookup(&reader, "::fffe:1.2.3.4").unwrap().0, "BB");
    }

    #[test]
    fn long_strings_use_the_extended_size_encodings() {
        for len in [28, 29, 284, 285, 65_820, 65_821, 70_000] {
            let name: &'static str = Box::leak("y".repeat(len).into_boxed_str());
            let e = entry("192.0.2.0/24".parse().unwrap(), "DE", name, "EU", "Europe");
            let reader = open(build(&[e]).unwrap());
            let found = reader.lookup("192.0.2.1".parse().unwrap()).unwrap();
            let record = found.decode::<geoip2::Country>().unwrap().unwrap();
            assert_eq!(record.country.names.english.map(str::len), Some(len));
        }
    }
}

//! The `regions:`, `rtt_ms:`, `gateway_region:` and `geoip:` sections: region names, the
//! country and continent maps, residency rules, the symmetric RTT matrix and the GeoIP
//! database that places clients.

use super::{Problems, RegionId};
use crate::policy::raw;
use serde_saphyr::{Location, Spanned};
use std::collections::HashMap;
use std::path::Path;

/// The compiled region sections, moved into the [`RoutingTable`](super::RoutingTable).
pub(super) struct Regions {
    pub names: Vec<String>,
    pub country: HashMap<[u8; 2], RegionId>,
    pub continent: HashMap<[u8; 2], RegionId>,
    pub default: RegionId,
    pub gateway: Option<RegionId>,
    pub residency: Vec<Option<Vec<RegionId>>>,
    /// `rtt_ms[from * regions + to]`.
    pub rtt_ms: Vec<f64>,
}

impl Regions {
    /// The region `node` names; an unknown name is reported (as `what`) and reads as 0.
    pub fn id(&self, p: &mut Problems, node: &Spanned<String>, what: &str) -> RegionId {
        region_id(&self.names, p, node, what)
    }
}

fn region_id(regions: &[String], p: &mut Problems, node: &Spanned<String>, what: &str) -> RegionId {
    match regions.iter().position(|r| *r == node.value) {
        Some(i) => i as RegionId,
        None => {
            p.on(
                node,
                format!(
                    "{what}: unknown region `{}` (regions: {})",
                    node.value,
                    regions.join(", ")
                ),
            );
            0
        }
    }
}

/// `regions:`, `gateway_region:` (or the start-up override, `gateway_region`) and `rtt_ms:`.
pub(super) fn compile(
    p: &mut Problems,
    raw: &raw::Policy,
    gateway_region: Option<&str>,
) -> Regions {
    let mut regions: Vec<String> = Vec::new();
    let mut country_region = HashMap::new();
    let mut continent_region = HashMap::new();
    for def in &raw.regions.map {
        let name = &def.value.name;
        if regions.contains(&name.value) {
            p.on(name, format!("duplicate region name `{}`", name.value));
            continue;
        }
        let id = regions.len() as RegionId;
        regions.push(name.value.clone());
        for (codes, table, what) in [
            (&def.value.countries, &mut country_region, "country"),
            (&def.value.continents, &mut continent_region, "continent"),
        ] {
            for code in codes {
                let key: Option<[u8; 2]> = code.value.as_bytes().try_into().ok();
                match key {
                    Some(k) if k.iter().all(u8::is_ascii_uppercase) => {
                        if let Some(other) = table.insert(k, id) {
                            p.on(
                                code,
                                format!(
                                    "{what} `{}` is in two regions: `{}` and `{}`",
                                    code.value, regions[other as usize], name.value
                                ),
                            );
                        }
                    }
                    _ => p.on(
                        code,
                        format!(
                            "expected a two-letter upper-case {what} code such as `DE` or `EU`, found `{}`",
                            code.value
                        ),
                    ),
                }
            }
        }
    }
    let default_region = region_id(&regions, p, &raw.regions.default, "regions.default");
    let gateway_region = compile_gateway_region(p, raw, &regions, gateway_region);
    let mut residency = Vec::with_capacity(regions.len());
    for def in &raw.regions.map {
        if regions.get(residency.len()) != Some(&def.value.name.value) {
            continue; // a duplicate region name, already reported
        }
        residency.push(def.value.residency.as_ref().map(|allowed| {
            if allowed.is_empty() {
                p.on(
                    &def.value.name,
                    format!(
                        "region `{}`: `residency: []` would refuse every request; omit it to allow any region",
                        def.value.name.value
                    ),
                );
            }
            allowed
                .iter()
                .map(|r| region_id(&regions, p, r, "residency"))
                .collect::<Vec<_>>()
        }));
    }

    let rtt_ms = compile_rtt(p, raw, &regions);
    Regions {
        names: regions,
        country: country_region,
        continent: continent_region,
        default: default_region,
        gateway: gateway_region,
        residency,
        rtt_ms,
    }
}

/// `rtt_ms:`: every unordered pair at least once, symmetric.
fn compile_rtt(p: &mut Problems, raw: &raw::Policy, regions: &[String]) -> Vec<f64> {
    let n = regions.len();
    let mut rtt_ms = vec![f64::NAN; n * n];
    for (from, row) in &raw.rtt_ms {
        for (to, ms) in row {
            let (Some(a), Some(b)) = (
                regions.iter().position(|r| r == from),
                regions.iter().position(|r| r == to),
            ) else {
                p.on(
                    ms,
                    format!("rtt_ms: unknown region in pair `{from}` → `{to}`"),
                );
                continue;
            };
            if !(ms.value.is_finite() && ms.value >= 0.0) {
                p.on(ms, "rtt_ms: expected a non-negative number of milliseconds");
                continue;
            }
            rtt_ms[a * n + b] = ms.value;
            if rtt_ms[b * n + a].is_nan() {
                rtt_ms[b * n + a] = ms.value;
            }
        }
    }
    let mut missing = Vec::new();
    for a in 0..n {
        for b in a..n {
            if rtt_ms[a * n + b].is_nan() {
                if a == b {
                    // A region's distance to itself defaults to zero.
                    rtt_ms[a * n + a] = 0.0;
                } else {
                    missing.push(format!("{} ↔ {}", regions[a], regions[b]));
                }
            }
        }
    }
    if !missing.is_empty() {
        p.at(
            &Location::UNKNOWN,
            format!("rtt_ms: missing pairs: {}", missing.join(", ")),
        );
    }
    rtt_ms
}

/// The instance's region: the start-up override (`--region`,
/// `SWITCHYARD_REGION`) or the policy's `gateway_region:`; either must name a region.
fn compile_gateway_region(
    p: &mut Problems,
    raw: &raw::Policy,
    regions: &[String],
    gateway_region: Option<&str>,
) -> Option<RegionId> {
    let known = |name: &str| {
        regions
            .iter()
            .position(|r| r == name)
            .map(|i| i as RegionId)
    };
    if let Some(name) = gateway_region {
        let id = known(name);
        if id.is_none() {
            p.at(
                &Location::UNKNOWN,
                format!(
                    "--region / SWITCHYARD_REGION: unknown region `{name}` (regions: {})",
                    regions.join(", ")
                ),
            );
        }
        return id;
    }
    let node = raw.gateway_region.as_ref()?;
    let id = known(&node.value);
    if id.is_none() {
        p.on(
            node,
            format!(
                "gateway_region: unknown region `{}` (regions: {})",
                node.value,
                regions.join(", ")
            ),
        );
    }
    id
}

/// `geoip:`: the embedded database or a file beside the policy (opened when the table is
/// published, `serving::resources`).
pub(super) fn geo_source(raw: &raw::Policy, file: &Path) -> super::GeoSource {
    match &raw.geoip.database {
        None => super::GeoSource::Embedded(None),
        Some(node) if node.value == "embedded" => {
            super::GeoSource::Embedded(Some(super::FileRef::beside(file, "", &node.referenced)))
        }
        Some(node) => {
            super::GeoSource::File(super::FileRef::beside(file, &node.value, &node.referenced))
        }
    }
}

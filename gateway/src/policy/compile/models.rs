//! The `models:` section: a model's declared version (part of its cache keys), or its
//! versions served side by side (a canary split) with their weights, pools, upstream names
//! and what keeps a caller on one version.
//!
//! Only data: which version a request gets is `classify::version`, a pure function of the
//! request and this table.

use super::{header_value, PoolId, Problems};
use crate::policy::raw;
use http::{HeaderName, HeaderValue};
use std::collections::{HashMap, HashSet};

/// Index of a split in `RoutingTable::splits`.
pub type SplitId = u16;

/// A model served in several versions at once.
#[derive(Debug, Clone)]
pub struct Split {
    pub model: String,
    pub versions: Vec<Version>,
    /// The sum of the weights (at least 1).
    pub total: u32,
    pub sticky: Sticky,
    /// Mirrored traffic to one of the versions (`models.NAME.shadow`).
    pub shadow: Option<ShadowRule>,
    /// Progressive delivery of one version (`models.NAME.rollout`).
    pub rollout: Option<RolloutRule>,
}

/// `models.NAME.rollout`, compiled.
#[derive(Debug, Clone)]
pub struct RolloutRule {
    /// The canary's and the stable version's index in `versions`.
    pub canary: u16,
    pub stable: u16,
    /// The canary's name: the rollout's identity. State kept for another canary (in memory
    /// across a reload, in the state file, in Redis) is another rollout's, never resumed.
    pub canary_name: String,
    /// The canary's share at each step, in millionths (rising, the last 1,000,000).
    pub steps: Vec<u32>,
    pub min_requests: u32,
    pub max_error_increase: f64,
    pub max_slo_miss_increase: f64,
    pub max_cost_increase: f64,
    /// Where the state is kept (`None`: nowhere, as in the simulator).
    pub state_file: Option<std::path::PathBuf>,
}

/// `models.NAME.shadow`, compiled.
#[derive(Debug, Clone)]
pub struct ShadowRule {
    /// The version (index in `versions`) the copies go to.
    pub version: u16,
    /// Share of requests mirrored, in millionths.
    pub per_million: u32,
    /// Only these tenants (empty: every caller).
    pub tenants: Vec<super::TenantId>,
    pub max_in_flight: u32,
    /// Daily cap on the copies' estimated spend, in nano-USD.
    pub budget_nanousd: Option<u64>,
    pub compare: Compare,
    pub timeout: std::time::Duration,
}

/// How a copy's answer is compared with the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    Status,
    Exact,
    /// The value at this JSON pointer.
    Label(String),
}

/// One version of a [`Split`].
#[derive(Debug, Clone)]
pub struct Version {
    pub name: String,
    pub weight: u32,
    /// The pools that serve it (sorted, unique).
    pub pools: Vec<PoolId>,
    pub upstream_model: Option<String>,
    pub upstream_version: Option<String>,
    /// `x-switchyard-version`'s value, made once.
    pub header: HeaderValue,
}

/// What keeps a caller on one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The tenant, else the API key's digest, else the client address.
    Tenant,
    /// The OpenAI body's `user`, else as `Tenant`.
    User,
    /// This header's value, else as `Tenant`.
    Header(HeaderName),
}

impl Sticky {
    pub fn describe(&self) -> String {
        match self {
            Sticky::Tenant => "tenant".into(),
            Sticky::User => "user".into(),
            Sticky::Header(h) => format!("header:{h}"),
        }
    }
}

impl Split {
    /// The version a sticky key's hash falls on, by weight.
    pub fn by_hash(&self, hash: u64) -> u16 {
        let mut point = (hash % u64::from(self.total)) as u32;
        for (i, v) in self.versions.iter().enumerate() {
            if point < v.weight {
                return i as u16;
            }
            point -= v.weight;
        }
        0
    }

    pub fn by_name(&self, name: &str) -> Option<u16> {
        self.versions
            .iter()
            .position(|v| v.name == name)
            .map(|i| i as u16)
    }
}

/// The compiled `models:` section.
#[derive(Debug, Default)]
pub(super) struct Models {
    /// Model → its one declared version.
    pub versions: HashMap<String, String>,
    pub splits: Vec<Split>,
}

pub(super) fn compile(
    p: &mut Problems,
    raw: &raw::Policy,
    pools: &[super::Pool],
    tenants: &[super::Tenant],
    file: &std::path::Path,
) -> Models {
    let mut out = Models::default();
    let pool_id = |name: &str| pools.iter().position(|pool| pool.name == name);
    for (model, def) in &raw.models {
        let d = &def.value;
        match (&d.version, d.versions.is_empty()) {
            (Some(version), true) => {
                let v = version.value.trim();
                if v.is_empty() {
                    p.on(
                        version,
                        format!("models.{model}.version: must not be empty"),
                    );
                }
                if !pools.iter().any(|pool| pool.models.serves(model)) {
                    p.on(def, format!("models: no pool serves model `{model}`"));
                }
                if let Some(s) = &d.sticky {
                    p.on(s, format!("models.{model}.sticky: only with `versions`"));
                }
                if let Some(s) = &d.shadow {
                    p.on(s, format!("models.{model}.shadow: only with `versions`"));
                }
                if let Some(s) = &d.rollout {
                    p.on(s, format!("models.{model}.rollout: only with `versions`"));
                }
                out.versions.insert(model.clone(), v.to_string());
            }
            (Some(version), false) => p.on(
                version,
                format!("models.{model}: give either `version` or `versions`, not both"),
            ),
            (None, true) => p.on(
                def,
                format!("models.{model}: expected `version` or `versions`"),
            ),
            (None, false) => {
                if let Some(mut split) = compile_split(p, model, d, &pool_id) {
                    if let Some(shadow) = &d.shadow {
                        split.shadow = compile_shadow(p, model, shadow, &split, tenants);
                    }
                    if let Some(rollout) = &d.rollout {
                        split.rollout = compile_rollout(p, model, rollout, &split, file);
                    }
                    out.splits.push(split);
                }
            }
        }
    }
    out
}

fn compile_split(
    p: &mut Problems,
    model: &str,
    d: &raw::ModelDef,
    pool_id: &dyn Fn(&str) -> Option<usize>,
) -> Option<Split> {
    let sticky = match &d.sticky {
        None => Sticky::Tenant,
        Some(s) => match s.value.trim() {
            "tenant" => Sticky::Tenant,
            "user" => Sticky::User,
            other => match other
                .strip_prefix("header:")
                .and_then(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
            {
                Some(h) => Sticky::Header(h),
                None => {
                    p.on(
                        s,
                        format!(
                            "models.{model}.sticky: expected `tenant`, `user` or `header:NAME`, found `{other}`"
                        ),
                    );
                    Sticky::Tenant
                }
            },
        },
    };
    let mut names = HashSet::new();
    let mut versions = Vec::new();
    for v in &d.versions {
        let r = &v.value;
        let name = r.name.value.trim().to_string();
        if name.is_empty() || name.contains('/') {
            p.on(
                &r.name,
                format!("models.{model}.versions: a name must be non-empty, without `/`"),
            );
        } else if !names.insert(name.clone()) {
            p.on(
                &r.name,
                format!("models.{model}: version `{name}` named twice"),
            );
        }
        if r.pools.is_empty() {
            p.on(
                v,
                format!("models.{model}.versions.{name}: `pools` is empty"),
            );
        }
        let mut ids = Vec::new();
        for pool in &r.pools {
            match pool_id(&pool.value) {
                Some(id) => ids.push(id as PoolId),
                None => p.on(
                    pool,
                    format!(
                        "models.{model}.versions.{name}: unknown pool `{}`",
                        pool.value
                    ),
                ),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let text = |s: &Option<serde_saphyr::Spanned<String>>| {
            s.as_ref()
                .map(|s| s.value.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        versions.push(Version {
            header: header_value(&name),
            name,
            weight: r.weight.value,
            pools: ids,
            upstream_model: text(&r.upstream_model),
            upstream_version: text(&r.upstream_version),
        });
    }
    let total: u32 = versions.iter().map(|v| v.weight).sum();
    if total == 0 {
        if let Some(first) = d.versions.first() {
            p.on(
                &first.value.weight,
                format!("models.{model}: the versions' weights add up to 0"),
            );
        }
        return None;
    }
    Some(Split {
        model: model.to_string(),
        versions,
        total,
        sticky,
        shadow: None,
        rollout: None,
    })
}

fn compile_rollout(
    p: &mut Problems,
    model: &str,
    node: &serde_saphyr::Spanned<raw::Rollout>,
    split: &Split,
    file: &std::path::Path,
) -> Option<RolloutRule> {
    let r = &node.value;
    let at = format!("models.{model}.rollout");
    if split.versions.len() != 2 {
        p.on(
            node,
            format!("{at}: a rollout needs exactly two versions (stable and canary)"),
        );
        return None;
    }
    let Some(canary) = split.by_name(r.canary.value.trim()) else {
        p.on(
            &r.canary,
            format!(
                "{at}.canary: `{}` is not one of the model's versions",
                r.canary.value
            ),
        );
        return None;
    };
    let steps: Vec<u32> = if r.steps.is_empty() {
        vec![50_000, 250_000, 500_000, 1_000_000]
    } else {
        let mut prev = 0.0;
        for s in &r.steps {
            if !(s.value > prev && s.value <= 100.0) {
                p.on(
                    s,
                    format!("{at}.steps: percentages must rise, above 0, up to 100"),
                );
            }
            prev = s.value;
        }
        if prev != 100.0 {
            if let Some(last) = r.steps.last() {
                p.on(last, format!("{at}.steps: the last step must be 100"));
            }
        }
        r.steps
            .iter()
            .map(|s| (s.value.clamp(0.0, 100.0) * 10_000.0).round() as u32)
            .collect()
    };
    let fraction = |n: &Option<serde_saphyr::Spanned<f64>>,
                    default: f64,
                    what: &str,
                    p: &mut Problems| {
        match n {
            Some(n) if !(n.value >= 0.0 && n.value.is_finite()) => {
                p.on(n, format!("{at}.{what}: a non-negative number"));
                default
            }
            Some(n) => n.value,
            None => default,
        }
    };
    let max_error_increase = fraction(&r.max_error_increase, 0.02, "max_error_increase", p);
    let max_slo_miss_increase =
        fraction(&r.max_slo_miss_increase, 0.05, "max_slo_miss_increase", p);
    let max_cost_increase = fraction(&r.max_cost_increase, 0.2, "max_cost_increase", p);
    let name = match &r.state_file {
        Some(f) => f.value.clone(),
        None => format!("switchyard-rollout-{model}.json"),
    };
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    Some(RolloutRule {
        canary,
        stable: 1 - canary,
        canary_name: split.versions[canary as usize].name.clone(),
        steps,
        min_requests: r.min_requests.as_ref().map_or(200, |n| n.value.max(1)),
        max_error_increase,
        max_slo_miss_increase,
        max_cost_increase,
        state_file: Some(base.join(name)),
    })
}

fn compile_shadow(
    p: &mut Problems,
    model: &str,
    node: &serde_saphyr::Spanned<raw::Shadow>,
    split: &Split,
    tenants: &[super::Tenant],
) -> Option<ShadowRule> {
    let s = &node.value;
    let at = format!("models.{model}.shadow");
    let version = split.by_name(s.version.value.trim());
    if version.is_none() {
        p.on(
            &s.version,
            format!(
                "{at}.version: `{}` is not one of the model's versions",
                s.version.value
            ),
        );
    }
    let percent = s.percent.as_ref().map_or(100.0, |n| n.value);
    if !(0.0..=100.0).contains(&percent) {
        if let Some(n) = &s.percent {
            p.on(n, format!("{at}.percent: expected 0 to 100"));
        }
    }
    let mut ids = Vec::new();
    for t in &s.tenants {
        match tenants.iter().position(|x| x.name == t.value) {
            Some(i) => ids.push(i as super::TenantId),
            None => p.on(t, format!("{at}.tenants: unknown tenant `{}`", t.value)),
        }
    }
    let max_in_flight = s.max_in_flight.as_ref().map_or(16, |n| n.value);
    if max_in_flight == 0 {
        if let Some(n) = &s.max_in_flight {
            p.on(n, format!("{at}.max_in_flight: at least 1"));
        }
    }
    let budget_nanousd = match &s.budget_per_day_usd {
        Some(n) if n.value < 0.0 || !n.value.is_finite() => {
            p.on(n, format!("{at}.budget_per_day_usd: a non-negative amount"));
            None
        }
        Some(n) => Some((n.value * 1e9) as u64),
        None => None,
    };
    let compare = match &s.compare {
        None => Compare::Status,
        Some(c) => match c.value.trim() {
            "status" => Compare::Status,
            "exact" => Compare::Exact,
            other => match other.strip_prefix("label:") {
                Some(ptr) if ptr.is_empty() || ptr.starts_with('/') => {
                    Compare::Label(ptr.to_string())
                }
                _ => {
                    p.on(
                        c,
                        format!("{at}.compare: expected `status`, `exact` or `label:/json/pointer`, found `{other}`"),
                    );
                    Compare::Status
                }
            },
        },
    };
    let timeout = s
        .timeout
        .as_ref()
        .map_or(std::time::Duration::from_secs(10), |t| {
            super::duration_field(p, t, &format!("{at}.timeout"))
        });
    Some(ShadowRule {
        version: version?,
        per_million: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        tenants: ids,
        max_in_flight: max_in_flight.max(1),
        budget_nanousd,
        compare,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{compile_str, CompileContext, PolicyErrors, RoutingTable};
    use super::*;

    fn compile(models: &str) -> Result<RoutingTable, PolicyErrors> {
        let text = format!(
            "regions: {{ default: us, map: [{{ name: us, continents: [NA] }}] }}\n\
             rtt_ms: {{ us: {{ us: 5 }} }}\n\
             tiers: {{ t: {{ deadline: 1s, pools: [edge] }} }}\n\
             pools:\n  - {{ name: a, kind: edge, region: us, endpoints: [127.0.0.1:1], models: [x], concurrency: 4, service_time: 10ms }}\n  - {{ name: b, kind: edge, region: us, endpoints: [127.0.0.1:2], models: [y], concurrency: 4, service_time: 10ms }}\n\
             routes:\n  - {{ name: c, match: /v1/chat/completions, protocol: openai, tier: t }}\n\
             models:\n{models}"
        );
        let cx = CompileContext {
            file: std::path::Path::new("p.yaml"),
            gateway_region: None,
        };
        compile_str(&text, &cx)
    }

    #[test]
    fn a_split_compiles_with_pools_and_sticky_header() {
        let t = compile(
            "  chat:\n    sticky: \"header:x-session\"\n    versions:\n      - { name: v1, weight: 90, pools: [a], upstream_model: llama }\n      - { name: v2, weight: 10, pools: [b, a] }\n",
        )
        .unwrap();
        let s = &t.splits[t.split_of["chat"] as usize];
        assert_eq!(s.total, 100);
        assert_eq!(
            s.sticky,
            Sticky::Header(HeaderName::from_static("x-session"))
        );
        assert_eq!(s.versions[0].upstream_model.as_deref(), Some("llama"));
        assert_eq!(s.versions[1].pools, vec![0, 1]);
        // Hash points below 90 fall on v1, the rest on v2.
        assert_eq!(s.by_hash(89), 0);
        assert_eq!(s.by_hash(90), 1);
        assert_eq!(s.by_hash(199), 1);
    }

    #[test]
    fn every_split_problem_is_reported_with_its_line() {
        let e = compile(
            "  chat:\n    sticky: session\n    versions:\n      - { name: v1, weight: 0, pools: [nope] }\n      - { name: v1, weight: 0, pools: [] }\n  other:\n    version: \"1\"\n    versions: [ { name: v, weight: 1, pools: [a] } ]\n  bare: {}\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        for (want, line) in [
            (
                "expected `tenant`, `user` or `header:NAME`, found `session`",
                11,
            ),
            ("unknown pool `nope`", 13),
            ("version `v1` named twice", 14),
            ("`pools` is empty", 14),
            ("weights add up to 0", 13),
            ("either `version` or `versions`, not both", 16),
            ("expected `version` or `versions`", 18),
        ] {
            let at = format!("p.yaml:{line}:");
            assert!(
                e.lines().any(|l| l.starts_with(&at) && l.contains(want)),
                "missing `{want}` at line {line} in:\n{e}"
            );
        }
    }

    #[test]
    fn a_shadow_names_a_version_and_a_known_comparison() {
        let t = compile(
            "  chat:\n    versions: [ { name: v1, weight: 1, pools: [a] }, { name: v2, weight: 0, pools: [b] } ]\n    shadow: { version: v2, percent: 25, compare: \"label:/outputs/0\" }\n",
        )
        .ok()
        .unwrap();
        let rule = t.splits[0].shadow.as_ref().unwrap();
        assert_eq!((rule.version, rule.per_million), (1, 250_000));
        assert_eq!(rule.compare, Compare::Label("/outputs/0".into()));
        let e = compile(
            "  chat:\n    versions: [ { name: v1, weight: 1, pools: [a] } ]\n    shadow: { version: v9, percent: 101, compare: fuzzy }\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        for want in [
            "p.yaml:12:24: models.chat.shadow.version: `v9` is not one of",
            "shadow.percent: expected 0 to 100",
            "shadow.compare: expected `status`, `exact` or `label:/json/pointer`, found `fuzzy`",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
    }
}

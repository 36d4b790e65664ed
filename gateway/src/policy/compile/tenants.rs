//! The `tenants:` section: each tenant's name, tier, key digest and limits (the limits
//! themselves compile in `policy::tenancy`).

use super::tiers::Tiers;
use super::{Problems, TenantId, TierId};
use crate::policy::raw;
use std::collections::{HashMap, HashSet};

pub struct Tenant {
    pub name: String,
    pub tier: TierId,
    /// Rate, concurrency and spend limits (`None`: unlimited).
    pub limits: Option<crate::policy::tenancy::TenantLimits>,
}

/// The compiled tenants and their index by key digest.
pub(super) struct Tenants {
    pub list: Vec<Tenant>,
    pub by_key: HashMap<[u8; 32], TenantId>,
}

/// `tenants:`; tier names resolve against `tiers`.
pub(super) fn compile(p: &mut Problems, raw: &raw::Policy, tiers: &Tiers) -> Tenants {
    let mut tenants = Vec::new();
    let mut tenant_by_key = HashMap::new();
    let mut tenant_names = HashSet::new();
    for tenant in &raw.tenants {
        let t = &tenant.value;
        if !tenant_names.insert(t.name.value.clone()) {
            p.on(&t.name, format!("duplicate tenant name `{}`", t.name.value));
        }
        let tier = tiers.id(p, &t.tier, "tenant tier");
        let key = &t.key_sha256.value;
        match decode_sha256_hex(key) {
            Some(hash) => {
                if tenant_by_key
                    .insert(hash, tenants.len() as TenantId)
                    .is_some()
                {
                    p.on(&t.key_sha256, "two tenants have the same key_sha256");
                }
            }
            None => p.on(
                &t.key_sha256,
                "key_sha256: expected 64 lower-case hex characters (the SHA-256 of the API key, \
                 e.g. from `printf %s \"$KEY\" | sha256sum`)",
            ),
        }
        let mut found = crate::policy::tenancy::Found::default();
        let limits = t.limits.as_ref().map(|l| {
            let what = format!("tenant `{}`: limits", t.name.value);
            crate::policy::tenancy::compile_tenant_limits(&mut found, l, &what, &|n: &str| {
                tiers.by_name.get(n).copied()
            })
        });
        for (loc, msg) in found.0 {
            p.at(&loc, msg);
        }
        tenants.push(Tenant {
            name: t.name.value.clone(),
            tier,
            limits,
        });
    }
    Tenants {
        list: tenants,
        by_key: tenant_by_key,
    }
}

fn decode_sha256_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hi = hex_digit(pair[0])?;
        let lo = hex_digit(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex() {
        let hex = "a".repeat(64);
        assert_eq!(decode_sha256_hex(&hex), Some([0xaa; 32]));
        assert_eq!(decode_sha256_hex(&"A".repeat(64)), None);
        assert_eq!(decode_sha256_hex("abc"), None);
    }
}

//! One access log record: what the proxy hands the writer, and its two written forms.
//!
//! A record is cheap to build on the request thread: the snapshot the request already holds
//! (an `Arc` bump) with indices into it for route, tier, region and pool, the URI (its bytes
//! are refcounted), the model string moved out of the classification, numbers. Names are
//! looked up and the line is formatted on the writer thread.
//!
//! Text: `2026-12-01T18:06:14.123456Z INFO switchyard::access: request method=POST
//! path=/v1/chat/completions status=200 ms=1.234 client=192.0.2.1 route=chat tier=standard
//! region=eu model=llama-3-8b pool=edge-eu reason=meets-deadline attempts=1` (one line).
//! JSON: the same fields as one object per line, `"ts"` first, numbers as numbers, absent
//! values as `null`.

use super::text::{push_decimal, push_ip};
use super::LogFormat;
use crate::policy::compile::RoutingTable;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// "None" for an index: the request got no classification or no pool.
pub const NONE: u16 = u16::MAX;

/// What is logged about one request.
pub struct AccessRecord {
    pub at: SystemTime,
    pub table: Option<Arc<crate::serving::Serving>>,
    pub method: http::Method,
    pub uri: http::Uri,
    pub status: u16,
    pub elapsed: Duration,
    pub client: Option<IpAddr>,
    pub route: u16,
    pub tier: u16,
    pub region: u16,
    pub pool: u16,
    pub model: String,
    pub reason: &'static str,
    pub attempts: u8,
    pub error: Option<String>,
}

impl AccessRecord {
    fn name<'t>(&self, table: Option<&'t RoutingTable>, of: Of, i: u16) -> &'t str {
        let name = table.and_then(|t| match of {
            Of::Route => t.routes.get(i as usize).map(|r| r.name.as_str()),
            Of::Tier => t.tiers.get(i as usize).map(|r| r.name.as_str()),
            Of::Region => t.regions.get(i as usize).map(String::as_str),
            Of::Pool => t.pools.get(i as usize).map(|p| p.name.as_str()),
        });
        name.unwrap_or("none")
    }

    /// Append the record, newline-terminated, to `out`.
    pub fn format(&self, format: LogFormat, out: &mut String) {
        let table = self.table.as_deref().map(|s| &s.table);
        let route = self.name(table, Of::Route, self.route);
        let tier = self.name(table, Of::Tier, self.tier);
        let region = self.name(table, Of::Region, self.region);
        let pool = self.name(table, Of::Pool, self.pool);
        // Milliseconds with three decimals: whole microseconds.
        let micros = u64::try_from(self.elapsed.as_micros()).unwrap_or(u64::MAX);
        let ms = |out: &mut String| {
            push_decimal(out, micros / 1000, 1);
            out.push('.');
            push_decimal(out, micros % 1000, 3);
        };
        match format {
            LogFormat::Text => {
                timestamp(self.at, out);
                out.push_str(" INFO switchyard::access: request method=");
                out.push_str(self.method.as_str());
                out.push_str(" path=");
                out.push_str(self.uri.path());
                out.push_str(" status=");
                push_decimal(out, u64::from(self.status), 1);
                out.push_str(" ms=");
                ms(out);
                out.push_str(" client=");
                match self.client {
                    Some(ip) => push_ip(out, ip),
                    None => out.push_str("none"),
                }
                let model = if self.model.is_empty() {
                    "none"
                } else {
                    &self.model
                };
                for (key, value) in [
                    (" route=", route),
                    (" tier=", tier),
                    (" region=", region),
                    (" model=", model),
                    (" pool=", pool),
                    (" reason=", self.reason),
                ] {
                    out.push_str(key);
                    out.push_str(value);
                }
                out.push_str(" attempts=");
                push_decimal(out, u64::from(self.attempts), 1);
                if let Some(e) = &self.error {
                    let _ = write!(out, " error={e:?}");
                }
            }
            LogFormat::Json => {
                out.push_str("{\"ts\":\"");
                timestamp(self.at, out);
                out.push_str("\",\"method\":");
                json_str(self.method.as_str(), out);
                out.push_str(",\"path\":");
                json_str(self.uri.path(), out);
                out.push_str(",\"status\":");
                push_decimal(out, u64::from(self.status), 1);
                out.push_str(",\"ms\":");
                ms(out);
                out.push_str(",\"client\":");
                match self.client {
                    Some(ip) => {
                        out.push('"');
                        push_ip(out, ip);
                        out.push('"');
                    }
                    None => out.push_str("null"),
                }
                for (key, value) in [
                    (",\"route\":", route),
                    (",\"tier\":", tier),
                    (",\"region\":", region),
                    (",\"model\":", &self.model),
                    (",\"pool\":", pool),
                    (",\"reason\":", self.reason),
                ] {
                    out.push_str(key);
                    json_str(value, out);
                }
                out.push_str(",\"attempts\":");
                push_decimal(out, u64::from(self.attempts), 1);
                out.push_str(",\"error\":");
                match &self.error {
                    Some(e) => json_str(e, out),
                    None => out.push_str("null"),
                }
                out.push('}');
            }
        }
        out.push('\n');
    }
}

#[derive(Clone, Copy)]
enum Of {
    Route,
    Tier,
    Region,
    Pool,
}

fn json_str(s: &str, out: &mut String) {
    // serde_json escapes exactly as JSON requires; writing into a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-12-01T18:06:14.123456Z`.
pub(crate) fn timestamp(at: SystemTime, out: &mut String) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    // `{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{micros:06}Z`, without `core::fmt`.
    push_decimal(out, u64::try_from(y).unwrap_or(0), 4);
    let (month, day) = (u64::from(m), u64::from(d));
    for (sep, n) in [
        ('-', month),
        ('-', day),
        ('T', rem / 3600),
        (':', rem / 60 % 60),
        (':', rem % 60),
    ] {
        out.push(sep);
        push_decimal(out, n, 2);
    }
    out.push('.');
    push_decimal(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            at: UNIX_EPOCH + Duration::from_micros(1_764_612_374_123_456),
            table: None,
            method: http::Method::POST,
            uri: "/v1/chat/completions?x=1".parse().unwrap(),
            status: 200,
            elapsed: Duration::from_micros(1234),
            client: Some("192.0.2.1".parse().unwrap()),
            route: NONE,
            tier: NONE,
            region: NONE,
            pool: NONE,
            model: "llama \"3\"".into(),
            reason: "meets-deadline",
            attempts: 1,
            error: None,
        }
    }

    #[test]
    fn text_and_json_lines() {
        let mut text = String::new();
        record().format(LogFormat::Text, &mut text);
        assert_eq!(
            text,
            "2025-12-01T18:06:14.123456Z INFO switchyard::access: request method=POST path=/v1/chat/completions status=200 ms=1.234 client=192.0.2.1 route=none tier=none region=none model=llama \"3\" pool=none reason=meets-deadline attempts=1\n"
        );
        let mut json = String::new();
        record().format(LogFormat::Json, &mut json);
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["ts"], "2025-12-01T18:06:14.123456Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["model"], "llama \"3\"");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["error"], serde_json::Value::Null);
        assert!(json.ends_with("}\n"));
    }

    #[test]
    fn timestamps_match_the_format_spec_they_replace() {
        for micros in [
            0u64,
            1,
            999_999,
            951_782_400_000_001,
            1_764_612_374_123_456,
            4_102_444_799_999_999,
        ] {
            let at = UNIX_EPOCH + Duration::from_micros(micros);
            let mut out = String::new();
            timestamp(at, &mut out);
            let secs = micros / 1_000_000;
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            let expected = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60,
                micros % 1_000_000
            );
            assert_eq!(out, expected);
        }
        let mut json = String::new();
        record().format(LogFormat::Json, &mut json);
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["ms"], 1.234);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
    }
}

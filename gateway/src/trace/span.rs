//! One finished request as an OTLP span: the record the request hands over (numbers, indices
//! into its snapshot, refcounted header values) and its conversion to the official protobuf
//! types, done on the exporter's thread.
//!
//! Attributes: the HTTP server conventions (`http.request.method`, `url.path`,
//! `http.response.status_code`, `server.address`, `client.address`, `http.route`), the GenAI
//! conventions where the request is an inference (`gen_ai.operation.name`,
//! `gen_ai.request.model`, `gen_ai.usage.input_tokens` / `output_tokens` from the answer's
//! `usage`, `gen_ai.provider.name` for a hosted API the gateway recognises), and the
//! gateway's decision as `switchyard.*`. Semantic conventions v1.37 (GenAI: development).

use super::context::TraceContext;
use crate::policy::raw::Protocol;
use crate::route::Estimate;
use crate::serving::Serving;
use http::{HeaderValue, Method, Uri};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span, Status};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the request hands to the exporter about itself.
pub struct SpanRecord {
    pub context: TraceContext,
    /// The caller's `tracestate`, as it came.
    pub trace_state: Option<HeaderValue>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub table: Arc<Serving>,
    pub method: Method,
    pub uri: Uri,
    /// The request's `Host` (`server.address`).
    pub host: Option<HeaderValue>,
    pub client: Option<std::net::IpAddr>,
    /// Indices into `table` (`u16::MAX`: none).
    pub route: u16,
    pub region: u16,
    pub tier: u16,
    pub pool: u16,
    pub model: String,
    pub status: u16,
    pub reason: Option<&'static str>,
    pub cache: Option<&'static str>,
    pub estimate: Option<Estimate>,
    pub attempts: u8,
    pub spend_usd: f64,
    /// Input and output tokens from the answer's `usage` (not estimates).
    pub tokens: Option<(u64, u64)>,
    /// A stream's time to its first event.
    pub ttft: Option<Duration>,
    pub error: Option<String>,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `gen_ai.operation.name` for an inference request, from its protocol and path.
fn operation(protocol: Protocol, path: &str) -> Option<&'static str> {
    match protocol {
        Protocol::OpenAi if path.ends_with("/chat/completions") => Some("chat"),
        Protocol::OpenAi if path.ends_with("/completions") => Some("text_completion"),
        Protocol::OpenAi if path.ends_with("/embeddings") => Some("embeddings"),
        _ => None,
    }
}

/// `gen_ai.provider.name` for a pool whose endpoint is a hosted API the gateway knows.
fn provider(authority: &str) -> Option<&'static str> {
    let host = authority.split(':').next().unwrap_or(authority);
    [
        ("api.openai.com", "openai"),
        ("api.anthropic.com", "anthropic"),
        ("api.mistral.ai", "mistral_ai"),
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("api.x.ai", "x_ai"),
        ("generativelanguage.googleapis.com", "gcp.gemini"),
    ]
    .iter()
    .find(|(h, _)| host == *h)
    .map(|(_, name)| *name)
    .or_else(|| {
        host.ends_with(".openai.azure.com")
            .then_some("azure.ai.openai")
    })
}

/// `Host` as name and port: `name`, `name:port`, `[v6]`, `[v6]:port`.
fn split_host(host: &str) -> (&str, Option<i64>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':').map(|(n, p)| (n, p.parse())) {
        Some((name, Ok(port))) => (name, Some(port)),
        _ => (host, None),
    }
}

impl SpanRecord {
    /// The OTLP span.
    pub fn to_proto(&self) -> Span {
        let t = &*self.table;
        let route = t.routes.get(usize::from(self.route));
        let pool = t.pools.get(usize::from(self.pool));
        let path = self.uri.path();
        let op = route.and_then(|r| operation(r.protocol, path));
        let mut attrs = Vec::with_capacity(28);
        attrs.push(text("http.request.method", self.method.as_str()));
        attrs.push(text("url.path", path));
        attrs.push(kv(
            "http.response.status_code",
            Value::IntValue(i64::from(self.status)),
        ));
        if let Some(host) = self.host.as_ref().and_then(|h| h.to_str().ok()) {
            let (name, port) = split_host(host);
            attrs.push(text("server.address", name));
            if let Some(port) = port {
                attrs.push(kv("server.port", Value::IntValue(port)));
            }
        }
        if let Some(ip) = self.client {
            attrs.push(text("client.address", ip.to_string()));
        }
        if let Some(op) = op {
            attrs.push(text("gen_ai.operation.name", op));
        }
        if !self.model.is_empty() {
            attrs.push(text("gen_ai.request.model", self.model.as_str()));
        }
        if let Some(name) = pool
            .and_then(|p| p.endpoints.first())
            .and_then(|e| provider(&e.authority))
        {
            attrs.push(text("gen_ai.provider.name", name));
        }
        if let Some((input, output)) = self.tokens {
            let n = |v: u64| Value::IntValue(i64::try_from(v).unwrap_or(i64::MAX));
            attrs.push(kv("gen_ai.usage.input_tokens", n(input)));
            attrs.push(kv("gen_ai.usage.output_tokens", n(output)));
        }
        let name_of = |list: Option<&str>| list.unwrap_or("none").to_string();
        if let Some(r) = route {
            attrs.push(text("http.route", r.name.as_str()));
            attrs.push(text("switchyard.route", r.name.as_str()));
        }
        attrs.push(text(
            "switchyard.region",
            name_of(t.regions.get(usize::from(self.region)).map(String::as_str)),
        ));
        attrs.push(text(
            "switchyard.tier",
            name_of(t.tiers.get(usize::from(self.tier)).map(|x| x.name.as_str())),
        ));
        attrs.push(text(
            "switchyard.pool",
            name_of(pool.map(|p| p.name.as_str())),
        ));
        if let Some(reason) = self.reason {
            attrs.push(text("switchyard.reason", reason));
        }
        if let Some(e) = &self.estimate {
            attrs.push(kv(
                "switchyard.estimate_ms",
                Value::DoubleValue(e.latency.as_secs_f64() * 1e3),
            ));
            attrs.push(kv(
                "switchyard.estimate_usd",
                Value::DoubleValue(e.cost_usd),
            ));
        }
        attrs.push(kv(
            "switchyard.cost_usd",
            Value::DoubleValue(self.spend_usd),
        ));
        attrs.push(kv(
            "switchyard.attempts",
            Value::IntValue(i64::from(self.attempts)),
        ));
        if let Some(cache) = self.cache {
            attrs.push(text("switchyard.cache", cache));
        }
        if let Some(ttft) = self.ttft {
            attrs.push(kv(
                "switchyard.ttft_ms",
                Value::DoubleValue(ttft.as_secs_f64() * 1e3),
            ));
        }
        // HTTP server spans: 5xx is an error, 4xx is the client's (left unset).
        let status = if self.status >= 500 || self.status == 0 {
            Some(Status {
                code: StatusCode::Error as i32,
                message: self.error.clone().unwrap_or_default(),
            })
        } else {
            None
        };
        if self.status >= 500 {
            attrs.push(text("error.type", self.status.to_string()));
        }
        let name = match (op, self.model.is_empty(), route) {
            (Some(op), false, _) => format!("{op} {}", self.model),
            (_, _, Some(r)) => format!("{} {}", self.method, r.name),
            _ => self.method.to_string(),
        };
        Span {
            trace_id: self.context.trace_id.to_vec(),
            span_id: self.context.span_id.to_vec(),
            parent_span_id: self.context.parent.map(|p| p.to_vec()).unwrap_or_default(),
            trace_state: self
                .trace_state
                .as_ref()
                .and_then(|s| s.to_str().ok())
                .unwrap_or("")
                .to_string(),
            // W3C flags (sampled: exported spans always are); bit 8: the parent's context
            // is known, bit 9: it came from another process.
            flags: 1
                | 0x100
                | if self.context.parent.is_some() {
                    0x200
                } else {
                    0
                },
            name,
            kind: SpanKind::Server as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(self.end),
            attributes: attrs,
            status,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_and_provider_names() {
        assert_eq!(
            operation(Protocol::OpenAi, "/v1/chat/completions"),
            Some("chat")
        );
        assert_eq!(
            operation(Protocol::OpenAi, "/v1/completions"),
            Some("text_completion")
        );
        assert_eq!(
            operation(Protocol::OpenAi, "/v1/embeddings"),
            Some("embeddings")
        );
        assert_eq!(operation(Protocol::OipV2, "/v2/models/m/infer"), None);
        assert_eq!(provider("api.openai.com:443"), Some("openai"));
        assert_eq!(provider("x.openai.azure.com"), Some("azure.ai.openai"));
        assert_eq!(provider("127.0.0.1:8000"), None);
        assert_eq!(split_host("gw.example:8080"), ("gw.example", Some(8080)));
        assert_eq!(split_host("gw.example"), ("gw.example", None));
        assert_eq!(split_host("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host("[::1]"), ("::1", None));
    }
}

//! The W3C Trace Context (`traceparent`, version 00) of one request: continued from the
//! caller's header when it has a valid one, else a new trace with a random id. The sampling
//! decision is parent-based: a caller's sampled flag is followed; a new trace is sampled
//! with the policy's `sample_ratio`. Either way the gateway's span gets a new random id,
//! which the backend receives as its parent.

use http::HeaderValue;

/// `traceparent` as it is written: `00-` trace id (32 hex) `-` parent id (16 hex) `-` flags.
const LEN: usize = 55;

/// One request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's span.
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with a `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceContext {
    /// The context for a request whose `traceparent` header is `header`; `ratio`: the share
    /// of new traces sampled.
    pub fn start(header: Option<&HeaderValue>, ratio: f64) -> TraceContext {
        let span_id = nonzero_u64().to_be_bytes();
        match header.and_then(|h| parse(h.as_bytes())) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent: Some(parent),
                sampled: flags & 1 == 1,
            },
            None => TraceContext {
                trace_id: (u128::from(nonzero_u64()) << 64 | u128::from(fastrand::u64(..)))
                    .to_be_bytes(),
                span_id,
                parent: None,
                sampled: ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio),
            },
        }
    }

    /// The `traceparent` the backend gets: this trace, the gateway's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; LEN];
        out[..3].copy_from_slice(b"00-");
        hex(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex(&[u8::from(self.sampled)], &mut out[53..55]);
        // Only hex digits and dashes: always a valid header value.
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A `traceparent` (W3C Trace Context §3.2): trace id, parent id, flags. Lower-case hex only;
/// all-zero ids and version `ff` are invalid; a later version may append fields after a dash.
fn parse(text: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = text.trim_ascii();
    if text.len() < LEN || (text.len() > LEN && (text[..2] == *b"00" || text[LEN] != b'-')) {
        return None;
    }
    let version: [u8; 1] = unhex(&text[..2])?;
    if version[0] == 0xff || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let trace: [u8; 16] = unhex(&text[3..35])?;
    let parent: [u8; 8] = unhex(&text[36..52])?;
    let flags: [u8; 1] = unhex(&text[53..55])?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_callers_traceparent_is_continued_with_a_new_span() {
        let h = HeaderValue::from_static(CALLER);
        let cx = TraceContext::start(Some(&h), 0.0);
        assert!(cx.sampled, "the caller's sampled flag wins over the ratio");
        assert_eq!(
            cx.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let out = cx.traceparent();
        let out = out.to_str().unwrap();
        assert_eq!(&out[..36], &CALLER[..36], "same version and trace id");
        assert_ne!(&out[36..52], &CALLER[36..52], "the gateway's own span id");
        assert!(out.ends_with("-01"));
        assert_eq!(parse(out.as_bytes()).map(|p| p.1), Some(cx.span_id));
    }

    #[test]
    fn an_unsampled_caller_is_followed_and_invalid_headers_start_a_new_trace() {
        let h = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!TraceContext::start(Some(&h), 1.0).sampled);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473",
        ] {
            let cx = TraceContext::start(Some(&HeaderValue::from_static(bad)), 1.0);
            assert_eq!(cx.parent, None, "{bad}");
            assert!(cx.sampled);
        }
        // A later version may carry more fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(
            TraceContext::start(Some(&HeaderValue::from_static(v1)), 0.0)
                .parent
                .is_some()
        );
    }

    #[test]
    fn new_traces_are_sampled_by_ratio() {
        assert!(!TraceContext::start(None, 0.0).sampled);
        assert!(TraceContext::start(None, 1.0).sampled);
        let n = (0..4000)
            .filter(|_| TraceContext::start(None, 0.25).sampled)
            .count();
        assert!((800..1200).contains(&n), "{n} of 4000 at 0.25");
        let a = TraceContext::start(None, 1.0);
        let b = TraceContext::start(None, 1.0);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, [0; 16]);
    }
}

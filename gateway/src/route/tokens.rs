//! Per-token spend for pools priced `per_1k_input_tokens` / `per_1k_output_tokens` (hosted
//! LLM APIs bill that way, not by GPU time).
//!
//! Two halves:
//! - [`Meter`] watches one answer on its way to the client and finds its OpenAI-shaped
//!   `usage` (`prompt_tokens`, `completion_tokens`): in the JSON body of a plain answer, or
//!   in the final `data:` event of a streamed (SSE) one that carries it (OpenAI sends it when
//!   the request asks `stream_options.include_usage`). When an answer has none, the tokens are
//!   estimated from bytes (about 4 bytes per token) and the spend is labelled `estimated`.
//!   It copies only what it must: a plain answer up to [`MAX_JSON`], a streamed one line by
//!   line (one line at a time), and nothing at all for pools not priced per token.
//! - [`TokenAverage`] is the pool's moving average of tokens per request, which is what the
//!   routing estimate charges before an answer is known (atomics; no lock on the hot path).

/// Largest plain JSON answer searched for `usage` (a bigger one is estimated).
pub const MAX_JSON: usize = 1024 * 1024;
/// Longest SSE line kept while looking for the `usage` event.
const MAX_LINE: usize = 64 * 1024;
/// Bytes per token for the estimate when an answer reports no `usage`.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Tokens of one answer, and whether they were reported or estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub estimated: bool,
}

impl Usage {
    /// The metric label: `usage` (reported by the pool) or `estimated` (from bytes).
    pub fn source(&self) -> &'static str {
        if self.estimated {
            "estimated"
        } else {
            "usage"
        }
    }
}

/// Finds the `usage` of one answer.
#[derive(Debug, Default)]
pub struct Meter {
    streaming: bool,
    /// Plain: the body so far (until [`MAX_JSON`]); streaming: the current line.
    buf: Vec<u8>,
    overflow: bool,
    found: Option<(u64, u64)>,
    request_bytes: u64,
    response_bytes: u64,
}

impl Meter {
    /// A meter for an answer whose `content-type` is `content_type`, to a request whose
    /// body was `request_bytes` long.
    pub fn new(content_type: &[u8], request_bytes: usize) -> Self {
        Meter {
            streaming: content_type.starts_with(b"text/event-stream"),
            request_bytes: request_bytes as u64,
            ..Meter::default()
        }
    }

    /// A piece of the answer's body.
    pub fn on_body(&mut self, chunk: &[u8]) {
        self.response_bytes += chunk.len() as u64;
        if !self.streaming {
            if self.overflow || self.buf.len() + chunk.len() > MAX_JSON {
                self.overflow = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if !self.overflow && self.buf.len() + nl <= MAX_LINE {
                self.buf.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.buf);
                self.on_line(&line);
                self.buf = line;
            }
            self.buf.clear();
            self.overflow = false;
            rest = &rest[nl + 1..];
        }
        if self.buf.len() + rest.len() > MAX_LINE {
            self.overflow = true;
            self.buf.clear();
        } else if !self.overflow {
            self.buf.extend_from_slice(rest);
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Only the (usually last) event that carries a usage object is parsed.
        if !contains(data, b"\"usage\"") {
            return;
        }
        if let Some(u) = parse_usage(data) {
            self.found = Some(u);
        }
    }

    /// The answer is complete: its usage, reported or estimated.
    pub fn finish(&mut self) -> Usage {
        if self.streaming && !self.buf.is_empty() && !self.overflow {
            let line = std::mem::take(&mut self.buf);
            self.on_line(&line);
        } else if !self.streaming && !self.overflow && self.found.is_none() {
            self.found = parse_usage(&self.buf);
        }
        self.buf = Vec::new();
        match self.found {
            Some((input, output)) => Usage {
                input,
                output,
                estimated: false,
            },
            None => Usage {
                input: self.request_bytes.div_ceil(BYTES_PER_TOKEN),
                output: self.response_bytes.div_ceil(BYTES_PER_TOKEN),
                estimated: true,
            },
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of an OpenAI-shaped JSON object.
pub fn parse_usage(json: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<UsageJson>,
    }
    #[derive(serde::Deserialize)]
    struct UsageJson {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    let answer: Answer = serde_json::from_slice(json).ok()?;
    answer.usage.map(|u| (u.prompt_tokens, u.completion_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_answer_usage_is_read_from_the_body() {
        let mut m = Meter::new(b"application/json", 100);
        m.on_body(br#"{"id":"x","choices":[],"usa"#);
        m.on_body(br#"ge":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#);
        let u = m.finish();
        assert_eq!((u.input, u.output, u.estimated), (12, 34, false));
    }

    #[test]
    fn streamed_usage_comes_from_the_final_event_split_across_chunks() {
        let mut m = Meter::new(b"text/event-stream", 100);
        m.on_body(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n");
        m.on_body(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,");
        m.on_body(b"\"completion_tokens\":9}}\n\ndata: [DONE]\n\n");
        let u = m.finish();
        assert_eq!((u.input, u.output, u.estimated), (7, 9, false));
    }

    #[test]
    fn without_usage_tokens_are_estimated_from_bytes() {
        let mut m = Meter::new(b"text/event-stream", 40);
        m.on_body(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
        let u = m.finish();
        assert!(u.estimated);
        assert_eq!(u.input, 10);
        assert_eq!(u.source(), "estimated");
    }
}

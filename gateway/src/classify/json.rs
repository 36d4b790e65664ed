//! A fast, strict JSON scan for the body peek: one pass that validates a body as JSON and
//! picks out the few top-level members classification reads, without `serde`'s per-token
//! machinery (which was ~19 instructions per byte of a chat body, half of classifying it).
//!
//! It is an accelerator, not the authority. It accepts only what it is sure of: UTF-8 text
//! (RFC 8259 grammar), an object at the top, keys without escapes, known members of the
//! expected types and nesting up to [`MAX_DEPTH`]. Anything else — every malformed body, but
//! also valid oddities such as an escaped key, a `\u` surrogate or a duplicate known member
//! — makes it answer `None`, and the caller parses with `serde_json`, which then gives the
//! answer or the error message. So the scan can refuse too much, never accept what
//! `serde_json` refuses; `tests/properties.rs` holds it to that on random and mutated bodies.

use serde::Deserialize;
use std::borrow::Cow;

/// Deeper nesting goes to `serde_json` (whose own limit is 128).
pub const MAX_DEPTH: usize = 100;

/// The members of an OpenAI-style body that routing and caching read. Deserialising into it
/// with `serde_json` ([`openai_fields_serde`]) validates the whole body as JSON while
/// allocating only for a model name with escapes.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct OpenAiFields<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub n: Option<u32>,
}

/// The OpenAI members as `serde_json` reads them: the authority, and its error message.
pub fn openai_fields_serde(body: &[u8]) -> Result<OpenAiFields<'_>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The OpenAI members of `body`, if it is certainly valid JSON with an object on top whose
/// known members have the expected types; `None` means "ask `serde_json`".
pub fn openai_fields(body: &[u8]) -> Option<OpenAiFields<'_>> {
    let mut s = Scan { b: body, i: 0 };
    let mut fields = OpenAiFields::default();
    let mut seen = [false; 4];
    s.ws();
    if s.peek()? != b'{' {
        return None;
    }
    s.items(b'}', |s| {
        let key = &body[s.plain_string()?];
        s.ws();
        s.eat(b':')?;
        s.ws();
        let slot = match key {
            b"model" => 0,
            b"stream" => 1,
            b"temperature" => 2,
            b"n" => 3,
            _ => return s.value(0),
        };
        // `serde` refuses a repeated field.
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        if s.b[s.i..].starts_with(b"null") {
            s.i += 4;
            return Some(());
        }
        match slot {
            0 => {
                let name = &body[s.plain_string()?];
                fields.model = Some(Cow::Borrowed(std::str::from_utf8(name).ok()?));
            }
            1 => fields.stream = Some(s.boolean()?),
            2 => fields.temperature = Some(s.float()?),
            _ => fields.n = Some(s.small_uint()?),
        }
        Some(())
    })?;
    s.ws();
    (s.i == body.len()).then_some(fields)
}

/// Whether `body` is certainly valid JSON (any value on top); `false` means "ask
/// `serde_json`".
pub fn is_valid(body: &[u8]) -> bool {
    let mut s = Scan { b: body, i: 0 };
    s.ws();
    if s.value(0).is_none() {
        return false;
    }
    s.ws();
    s.i == body.len()
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Any value, nested at most [`MAX_DEPTH`] deep.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' if depth < MAX_DEPTH => self.items(b'}', |s| {
                s.string()?;
                s.ws();
                s.eat(b':')?;
                s.ws();
                s.value(depth + 1)
            }),
            b'[' if depth < MAX_DEPTH => self.items(b']', |s| s.value(depth + 1)),
            b'{' | b'[' => None,
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    /// The members of an object or the items of an array, each read by `item`, separated by
    /// commas up to `close`. Positioned on the opening bracket.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => None,
        }
    }

    /// A string, escapes checked. Positioned on the opening quote.
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        let start = self.i;
        let mut ascii = true;
        loop {
            ascii &= self.skip_plain();
            match self.next()? {
                b'"' => return self.utf8(start, ascii),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.b.get(self.i..self.i + 4)?;
                        let mut unit = 0u32;
                        for &h in hex {
                            unit = unit * 16 + (h as char).to_digit(16)?;
                        }
                        // Surrogates (paired or not) are `serde_json`'s to judge.
                        if (0xD800..0xE000).contains(&unit) {
                            return None;
                        }
                        self.i += 4;
                    }
                    _ => return None,
                },
                // A control character.
                _ => return None,
            }
        }
    }

    /// A string without escapes: where its bytes are (between the quotes).
    fn plain_string(&mut self) -> Option<std::ops::Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        let ascii = self.skip_plain();
        let end = self.i;
        self.eat(b'"')?;
        self.utf8(start, ascii)?;
        Some(start..end)
    }

    /// Whether the string that started at `start` and just ended (on its closing quote) is
    /// UTF-8. Only strings can hold bytes over 0x7f (anywhere else the grammar refuses
    /// them), so checking these, and only when `skip_plain` saw one, checks the body.
    fn utf8(&self, start: usize, ascii: bool) -> Option<()> {
        (ascii || std::str::from_utf8(&self.b[start..self.i - 1]).is_ok()).then_some(())
    }

    /// Past the bytes a string holds as they are: up to a quote, a backslash or a control
    /// character. Returns whether every byte skipped was ASCII. Eight bytes at a time as one
    /// `u64` (SWAR: the bit tricks in [`Scan::skip_run`] flag a word holding a wanted byte,
    /// and the lowest flag is the first such byte, since borrows only run upwards), so a
    /// short string takes a step or two and a 5 MiB base64 image one long run.
    fn skip_plain(&mut self) -> bool {
        // ASCII runs (nearly all) stop at a byte over 0x7f as well; a string with one goes
        // on without that stop, and is then checked as UTF-8 when it ends.
        if self.skip_run(true) {
            return true;
        }
        self.skip_run(false);
        false
    }

    /// Skips up to a quote, backslash or control character, or also a byte over 0x7f when
    /// `stop_high`. Returns false only if it stopped at such a byte.
    fn skip_run(&mut self, stop_high: bool) -> bool {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
        let high = if stop_high { HIGHS } else { 0 };
        let rest = &self.b[self.i..];
        let mut skipped = 0;
        for word in rest.chunks_exact(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            let x = u64::from_le_bytes(bytes);
            let found = (x.wrapping_sub(ONES * 0x20) & !x
                | zero_byte(x ^ (ONES * u64::from(b'"')))
                | zero_byte(x ^ (ONES * u64::from(b'\\')))
                | x & high)
                & HIGHS;
            if found != 0 {
                let n = found.trailing_zeros() as usize / 8;
                self.i += skipped + n;
                return bytes[n] < 0x80;
            }
            skipped += 8;
        }
        self.i += skipped;
        while let Some(c) = self.peek() {
            if c < 0x20 || c == b'"' || c == b'\\' {
                return true;
            }
            if c >= 0x80 && stop_high {
                return false;
            }
            self.i += 1;
        }
        true
    }

    /// A number (RFC 8259 grammar); returns whether it has a fraction or an exponent.
    fn number(&mut self) -> Option<bool> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.first_digit()?;
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.first_digit()?;
            float = true;
        }
        Some(float)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn first_digit(&mut self) -> Option<()> {
        if !self.next()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        Some(())
    }

    /// A number as `f64`. Out of range (which `serde_json` refuses) and underflow to zero
    /// (where a rounding difference would matter: a temperature of 0 is what makes a request
    /// deterministic) go to `serde_json`; elsewhere the two may differ in the last bit.
    fn float(&mut self) -> Option<f64> {
        let start = self.i;
        self.number()?;
        let digits = &self.b[start..self.i];
        // The bytes are ASCII digits, signs, dots and exponents.
        let v: f64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let mantissa = digits.split(|&c| c == b'e' || c == b'E').next()?;
        let nonzero = mantissa.iter().any(|c| (b'1'..=b'9').contains(c));
        (v.is_finite() && (v != 0.0 || !nonzero)).then_some(v)
    }

    /// A non-negative integer that fits a `u32` (what `serde` takes for `n`).
    fn small_uint(&mut self) -> Option<u32> {
        let start = self.i;
        if self.number()? {
            return None;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        text.parse::<u32>().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(s: &str) -> Option<OpenAiFields<'_>> {
        openai_fields(s.as_bytes())
    }

    #[test]
    fn picks_the_members_of_a_chat_body() {
        let f = fields(
            r#" {"messages":[{"role":"user","content":"a \"quoted\" \u00e9 word\n"}],
                "model":"llama-3-8b","temperature":0,"n":1,"stream":false,"top_p":1.5e-3} "#,
        )
        .unwrap();
        assert_eq!(f.model.as_deref(), Some("llama-3-8b"));
        assert_eq!(
            (f.stream, f.temperature, f.n),
            (Some(false), Some(0.0), Some(1))
        );
        let f = fields(r#"{"model":null,"temperature":0.7,"stream":null}"#).unwrap();
        assert_eq!(
            f,
            OpenAiFields {
                temperature: Some(0.7),
                ..Default::default()
            }
        );
        assert_eq!(fields("{}"), Some(OpenAiFields::default()));
    }

    #[test]
    fn refuses_what_it_is_not_sure_of() {
        for body in [
            "",
            "[]",
            "{",
            r#"{"model":"m",}"#,
            r#"{"model":"m"} x"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"mod\u0065l":"m"}"#,
            r#"{"model":"a\nb"}"#,
            r#"{"model":7}"#,
            r#"{"n":1.0}"#,
            r#"{"n":-1}"#,
            r#"{"n":4294967296}"#,
            r#"{"temperature":1e400}"#,
            r#"{"temperature":1e-400}"#,
            r#"{"stream":"yes"}"#,
            r#"{"x":01}"#,
            r#"{"x":1.}"#,
            r#"{"x":-}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":"\x"}"#,
            "{\"x\":\"tab\there\"}",
            r#"{"x":tru}"#,
            r#"{"x":[1,]}"#,
            r#"{"x" 1}"#,
        ] {
            assert_eq!(fields(body), None, "{body:?}");
        }
        assert_eq!(openai_fields(b"{\"x\":\"\xff\"}"), None);
        // A member's value nests at most MAX_DEPTH deep.
        let nested = |n: usize| format!("{{\"x\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert_eq!(fields(&nested(MAX_DEPTH + 1)), None);
        let ok = nested(MAX_DEPTH);
        assert!(fields(&ok).is_some());
    }

    #[test]
    fn validates_any_value() {
        for ok in [
            "1",
            "-0.5e+3",
            "\"s\"",
            "null",
            " [true, false, {}] ",
            "{\"a\":{\"b\":[]}}",
        ] {
            assert!(is_valid(ok.as_bytes()), "{ok:?}");
        }
        for bad in ["", "1 2", "[", "{\"a\"}", "nul", "+1", ".5", "\"\u{1}\""] {
            assert!(!is_valid(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn every_byte_that_ends_a_run_is_found_wherever_it_sits() {
        // Escapes and characters that need none, and raw control characters (refused), at
        // every position around the 8-byte words.
        let cases = [
            ("\\\"", true),
            ("\\\\", true),
            ("\\u00e9", true),
            (" ", true),
            ("~", true),
            ("\u{7f}", true),
            ("é", true),
            ("€", true),
            ("😀", true),
            ("\u{0}", false),
            ("\u{1f}", false),
            ("\n", false),
        ];
        for (piece, valid) in cases {
            for at in 0..24 {
                let text = format!("{}{piece}{}", "a".repeat(at), "b".repeat(24 - at));
                let body = format!(r#"{{"x":"{text}","model":"m","n":1}}"#);
                let fast = fields(&body);
                let serde = openai_fields_serde(body.as_bytes()).ok();
                assert_eq!(fast.is_some(), valid, "{body:?}");
                if let Some(f) = fast {
                    assert_eq!(Some(f), serde, "{body:?}");
                }
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_wherever_they_sit() {
        for bad in [&b"\xff"[..], b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80"] {
            for at in 0..20 {
                let mut text = b"a".repeat(at);
                text.extend_from_slice(bad);
                text.extend_from_slice(&b"b".repeat(20 - at));
                for (key, value) in [(&b"x"[..], &text[..]), (&text[..], &b"v"[..])] {
                    let mut body = b"{\"model\":\"m\",\"".to_vec();
                    body.extend_from_slice(key);
                    body.extend_from_slice(b"\":\"");
                    body.extend_from_slice(value);
                    body.extend_from_slice(b"\"}");
                    assert_eq!(openai_fields(&body), None, "{body:?}");
                    assert!(!is_valid(&body), "{body:?}");
                }
                let mut body = b"{\"model\":\"".to_vec();
                body.extend_from_slice(&text);
                body.extend_from_slice(b"\"}");
                assert_eq!(openai_fields(&body), None, "{body:?}");
            }
        }
    }

    #[test]
    fn long_strings_are_skipped_whole() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 1000] {
            let body = format!(r#"{{"x":"{}","model":"m"}}"#, "a".repeat(len));
            assert_eq!(fields(&body).unwrap().model.as_deref(), Some("m"));
            let body = format!(r#"{{"x":"{}\"","model":"m"}}"#, "a".repeat(len));
            assert_eq!(fields(&body).unwrap().model.as_deref(), Some("m"));
        }
    }
}

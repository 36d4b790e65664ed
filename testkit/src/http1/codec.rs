//! The HTTP/1.1 codec, apart from any I/O: it parses heads and chunked bodies from bytes a
//! caller has already read, and encodes requests into a buffer the caller will write. Nothing
//! here touches a socket or a clock, so every rule is unit-tested on byte strings (the
//! connection code around it is in [`super::io`]; the mock backend drives the same parser and
//! decoder from its own server loop).
//!
//! The framing rules follow RFC 9112 §6 and are written once, here: which header fields end
//! a body (`Content-Length`, `Transfer-Encoding` whose last coding is `chunked`, or the end of
//! the connection), which statuses never carry one, and when a connection stays open. Every
//! limit is explicit ([`Limits`]) and every refusal is a typed [`Error`].

use bytes::{Buf, Bytes, BytesMut};
use std::fmt::Display;
use std::io::Write as _;

/// Header fields a head may carry at most (the size of httparse's array; see
/// [`Limits::max_headers`]).
pub const MAX_HEADERS: usize = 64;

/// Request bodies up to this size go out in the same write as their head (one segment);
/// larger ones are written after it, uncopied.
pub const INLINE_BODY: usize = 64 * 1024;

/// Size limits of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head: start line, header fields and the empty line that ends them. Also the
    /// largest trailer section of a chunked body.
    pub max_head: usize,
    /// Most header fields in a head (at most [`MAX_HEADERS`]).
    pub max_headers: usize,
    /// Largest body, after chunked decoding.
    pub max_body: usize,
    /// Longest chunk-size line (the size and any extensions, without the CRLF).
    pub max_chunk_line: usize,
}

impl Limits {
    /// 64 KiB heads of at most 64 fields, 4 KiB chunk-size lines, and bodies up to `max_body`.
    pub const fn with_max_body(max_body: usize) -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_headers: MAX_HEADERS,
            max_body,
            max_chunk_line: 4096,
        }
    }
}

/// Why bytes are not an acceptable HTTP/1.1 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed head: {0}")]
    BadHead(httparse::Error),
    #[error("head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    #[error("conflicting content-length headers")]
    ConflictingContentLength,
    /// A request whose transfer coding is not (or does not end in) `chunked`.
    #[error("unsupported transfer-encoding {0:?}")]
    UnsupportedTransferEncoding(String),
    /// A request with both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1 lets a
    /// server refuse it; a request smuggler would rely on it).
    #[error("both content-length and transfer-encoding")]
    LengthAndChunked,
    #[error("chunked body in HTTP/1.0")]
    ChunkedInHttp10,
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("invalid chunk size")]
    BadChunkSize,
    #[error("chunk-size line longer than {0} bytes")]
    ChunkLineTooLong(usize),
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
    #[error("trailer section larger than {0} bytes")]
    TrailersTooLarge(usize),
}

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// There is none.
    None,
    /// After this many bytes.
    Length(usize),
    /// With the last chunk and the trailer section.
    Chunked,
    /// With the connection (responses only).
    UntilClose,
}

/// `value` of a `Content-Length` field: digits only (no sign, no list), at most 19 of them.
#[inline]
pub fn parse_content_length(value: &[u8]) -> Option<usize> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a comma-separated field value (`Connection`, ...) lists `token` (any case).
#[inline]
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the last transfer coding of a `Transfer-Encoding` value is `chunked`.
#[inline]
pub fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked")
}

fn lossy(value: &[u8]) -> String {
    String::from_utf8_lossy(value).trim().to_string()
}

/// httparse's result for a head of at most `limits`: `Ok(None)` when more bytes are needed.
#[inline]
fn head_len(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
    limits: &Limits,
    max_headers: usize,
) -> Result<Option<usize>, Error> {
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buffered > limits.max_head => {
            return Err(Error::HeadTooLarge(limits.max_head))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders(max_headers)),
        Err(e) => return Err(Error::BadHead(e)),
    };
    if len > limits.max_head {
        return Err(Error::HeadTooLarge(limits.max_head));
    }
    Ok(Some(len))
}

/// What decides how a request's body is read and whether its connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'b> {
    /// Bytes of the head, the empty line included: where the body starts.
    pub len: usize,
    pub method: &'b str,
    /// The request target as sent (path and query).
    pub target: &'b str,
    pub http11: bool,
    pub keep_alive: bool,
    /// `None`, `Length` or `Chunked` (a request body never ends with the connection).
    pub framing: Framing,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Parse the request head at the start of `buf`: `Ok(None)` when more bytes are needed.
/// `on_header` sees every header field in order (framing fields included) once the head is
/// complete. A server refuses what this refuses: a bad or conflicting `Content-Length`, a
/// transfer coding other than `chunked` last, both framings at once, chunked HTTP/1.0, a body
/// over [`Limits::max_body`].
#[inline]
pub fn parse_request_head<'b>(
    buf: &'b [u8],
    limits: &Limits,
    mut on_header: impl FnMut(&'b str, &'b [u8]),
) -> Result<Option<RequestHead<'b>>, Error> {
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers[..max_headers]);
    let parsed = req.parse(buf);
    let Some(len) = head_len(parsed, buf.len(), limits, max_headers)? else {
        return Ok(None);
    };
    let http11 = req.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)
                .ok_or_else(|| Error::BadContentLength(lossy(h.value)))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::ConflictingContentLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !ends_chunked(h.value) {
                return Err(Error::UnsupportedTransferEncoding(lossy(h.value)));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        on_header(name, h.value);
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(Error::LengthAndChunked),
        (true, None) if !http11 => return Err(Error::ChunkedInHttp10),
        (true, None) => Framing::Chunked,
        (false, Some(n)) if n > limits.max_body => {
            return Err(Error::BodyTooLarge(limits.max_body))
        }
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    Ok(Some(RequestHead {
        len,
        method: req.method.unwrap_or(""),
        target: req.path.unwrap_or("/"),
        http11,
        keep_alive,
        framing,
        expect_continue,
    }))
}

/// What decides how a response's body is read and whether its connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head, the empty line included: where the body starts.
    pub len: usize,
    pub status: u16,
    pub http11: bool,
    pub framing: Framing,
    /// The connection can carry the next request: not `101`, not closed by `Connection`
    /// (HTTP/1.1) or kept by it (HTTP/1.0), and the body does not end with the connection.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// An interim answer (`1xx` but `101`): the final one follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parse the response head at the start of `buf`: `Ok(None)` when more bytes are needed.
/// `head_request`: the request was `HEAD`, so the answer has no body whatever it says.
/// `on_header` sees every header field of a final answer in order; an interim answer's
/// fields are not reported (see [`ResponseHead::is_interim`]).
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    limits: &Limits,
    mut on_header: impl FnMut(&str, &[u8]),
) -> Result<Option<ResponseHead>, Error> {
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers[..max_headers]);
    let parsed = resp.parse(buf);
    let Some(len) = head_len(parsed, buf.len(), limits, max_headers)? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut head = ResponseHead {
        len,
        status,
        http11,
        framing: Framing::None,
        keep_alive: true,
    };
    if head.is_interim() {
        return Ok(Some(head));
    }
    let mut chunked: Option<bool> = None;
    // A bad length only matters when no transfer coding overrides it.
    let mut length: Result<Option<usize>, Error> = Ok(None);
    let (mut close, mut keep) = (false, false);
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(ends_chunked(h.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            if let Ok(seen) = length {
                length = match parse_content_length(h.value) {
                    None => Err(Error::BadContentLength(lossy(h.value))),
                    Some(n) if seen.is_some_and(|l| l != n) => Err(Error::ConflictingContentLength),
                    Some(n) => Ok(Some(n)),
                };
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close |= has_token(h.value, "close");
            keep |= has_token(h.value, "keep-alive");
        }
        on_header(name, h.value);
    }
    // RFC 9112 §6.3, in its order.
    head.framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else if let Some(chunked) = chunked {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length? {
            Some(0) => Framing::None,
            Some(n) if n > limits.max_body => return Err(Error::BodyTooLarge(limits.max_body)),
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    head.keep_alive = status != 101
        && (if http11 { !close } else { keep })
        && head.framing != Framing::UntilClose;
    Ok(Some(head))
}

/// One step of [`ChunkedDecoder::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// The data of one whole chunk (never empty).
    Data(Bytes),
    /// Read at least this many more bytes, then call again.
    NeedMore(usize),
    /// The last chunk and the trailer section have been consumed; what follows in the
    /// buffer is the next message.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk of this many bytes (its size line consumed).
    Data(usize),
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    Done,
}

/// Decodes a chunked body (RFC 9112 §7.1) from the front of a buffer, one whole chunk at a
/// time, consuming exactly the body's bytes. Chunk extensions are skipped and trailer fields
/// dropped. The decoder keeps its place between calls, so input may stop anywhere.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Data bytes so far.
    total: usize,
    /// Trailer section bytes so far.
    trailers: usize,
    limits: Limits,
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl ChunkedDecoder {
    pub fn new(limits: Limits) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            total: 0,
            trailers: 0,
            limits,
        }
    }

    /// Data bytes decoded so far.
    pub fn decoded(&self) -> usize {
        self.total
    }

    /// Consume what `buf` holds of the body, up to the next whole chunk or the end.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, Error> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Chunk::Done),
                ChunkState::Size => {
                    let max = self.limits.max_chunk_line;
                    let Some(line) = find_crlf(buf) else {
                        // Without a CRLF in max + 2 bytes the line is longer than max.
                        return if buf.len() > max + 1 {
                            Err(Error::ChunkLineTooLong(max))
                        } else {
                            Ok(Chunk::NeedMore(1))
                        };
                    };
                    if line > max {
                        return Err(Error::ChunkLineTooLong(max));
                    }
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 2);
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                        continue;
                    }
                    match self.total.checked_add(size) {
                        Some(t) if t <= self.limits.max_body => {}
                        _ => return Err(Error::BodyTooLarge(self.limits.max_body)),
                    }
                    self.state = ChunkState::Data(size);
                }
                ChunkState::Data(size) => {
                    if buf.len() < size + 2 {
                        return Ok(Chunk::NeedMore(size + 2 - buf.len()));
                    }
                    if &buf[size..size + 2] != b"\r\n" {
                        return Err(Error::BadChunkEnd);
                    }
                    let data = buf.split_to(size).freeze();
                    buf.advance(2);
                    self.total += size;
                    self.state = ChunkState::Size;
                    return Ok(Chunk::Data(data));
                }
                ChunkState::Trailers => {
                    let max = self.limits.max_head;
                    let Some(line) = find_crlf(buf) else {
                        // The line still to come needs at least one more byte.
                        return if self.trailers + buf.len() + 1 > max {
                            Err(Error::TrailersTooLarge(max))
                        } else {
                            Ok(Chunk::NeedMore(1))
                        };
                    };
                    self.trailers += line + 2;
                    if self.trailers > max {
                        return Err(Error::TrailersTooLarge(max));
                    }
                    buf.advance(line + 2);
                    if line == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// The size of a chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<usize, Error> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(Error::BadChunkSize);
    }
    let text = std::str::from_utf8(digits).map_err(|_| Error::BadChunkSize)?;
    usize::from_str_radix(text, 16).map_err(|_| Error::BadChunkSize)
}

/// `parts` in chunked transfer encoding (empty parts skipped, as an empty chunk would end
/// the body), to send with `Transfer-Encoding: chunked`.
pub fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        let _ = write!(out, "{:x}\r\n", p.len());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A request to encode. `Host` is added unless given; `Content-Length` is added for a body
/// (and for POST, PUT and PATCH) unless `Content-Length` or `Transfer-Encoding` is given, in
/// which case `body` is sent exactly as it is (see [`chunked`]).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            headers: Vec::new(),
            body: &[],
        }
    }

    pub fn get(path: &'a str) -> Request<'a> {
        Request::new("GET", path)
    }

    pub fn post(path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request::new("POST", path).body(body)
    }

    /// Add a header (repeats are sent as repeats).
    pub fn header(mut self, name: &'a str, value: impl AsRef<str>) -> Request<'a> {
        self.headers.push((name, value.as_ref().to_string()));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Request<'a> {
        self.body = body;
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// Whether [`encode`](Self::encode) puts the body after the head (else the caller writes
    /// it next).
    pub fn body_inline(&self) -> bool {
        self.body.len() <= INLINE_BODY
    }

    /// Replace `out` with the request in wire format: the head (with `host` unless a `Host`
    /// header is given, and `Connection: close` when `close` and none is given), then the body
    /// when [`body_inline`](Self::body_inline).
    pub fn encode(&self, host: impl Display, close: bool, out: &mut Vec<u8>) {
        out.clear();
        for part in [self.method, " ", self.path, " HTTP/1.1\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        if !self.has_header("host") {
            let _ = write!(out, "host: {host}\r\n");
        }
        let framed = self.has_header("content-length") || self.has_header("transfer-encoding");
        let wants_length = !self.body.is_empty()
            || ["POST", "PUT", "PATCH"]
                .iter()
                .any(|m| self.method.eq_ignore_ascii_case(m));
        if !framed && wants_length {
            let _ = write!(out, "content-length: {}\r\n", self.body.len());
        }
        if close && !self.has_header("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        for (k, v) in &self.headers {
            for part in [k, ": ", v.as_str(), "\r\n"] {
                out.extend_from_slice(part.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        if self.body_inline() {
            out.extend_from_slice(self.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits::with_max_body(1024);

    fn response(raw: &[u8]) -> Result<Option<ResponseHead>, Error> {
        parse_response_head(raw, false, &LIMITS, |_, _| {})
    }

    fn request(raw: &[u8]) -> Result<Option<RequestHead<'_>>, Error> {
        parse_request_head(raw, &LIMITS, |_, _| {})
    }

    /// Decode `wire` fed in the given pieces: the chunks' data, and what is left after.
    fn decode_in(pieces: &[&[u8]], limits: Limits) -> Result<(Vec<Bytes>, Vec<u8>), Error> {
        let mut dec = ChunkedDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut chunks = Vec::new();
        let mut next = pieces.iter();
        loop {
            match dec.decode(&mut buf)? {
                Chunk::Data(d) => {
                    assert!(!d.is_empty());
                    chunks.push(d);
                }
                Chunk::NeedMore(n) => {
                    assert!(n >= 1);
                    match next.next() {
                        Some(p) => buf.extend_from_slice(p),
                        None => panic!("ran out of input; decoded {chunks:?}"),
                    }
                }
                Chunk::Done => {
                    // Whatever was not fed yet follows the body too.
                    let mut rest = buf.to_vec();
                    for p in next {
                        rest.extend_from_slice(p);
                    }
                    return Ok((chunks, rest));
                }
            }
        }
    }

    fn decode_all(wire: &[u8]) -> Result<(Vec<Bytes>, Vec<u8>), Error> {
        decode_in(&[wire], LIMITS)
    }

    fn joined(chunks: &[Bytes]) -> Vec<u8> {
        chunks.concat()
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_split() {
        let wire: &[u8] = b"4;ext=1;q=\"a;b\"\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0;last\r\nTrailer: x\r\nOther: y\r\n\r\nNEXT";
        let want: &[u8] = b"Wikipedia in\r\n\r\nchunks.";
        // One split at every position, and every byte alone.
        for at in 0..=wire.len() {
            let (chunks, rest) = decode_in(&[&wire[..at], &wire[at..]], LIMITS).unwrap();
            assert_eq!(joined(&chunks), want, "split at {at}");
            assert_eq!(chunks.len(), 3, "split at {at}: whole chunks only");
            assert_eq!(rest, b"NEXT", "split at {at}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let (chunks, rest) = decode_in(&bytes, LIMITS).unwrap();
        assert_eq!((joined(&chunks), rest), (want.to_vec(), b"NEXT".to_vec()));
        // Two splits at every pair of positions of a shorter body.
        let wire: &[u8] = b"3\r\nabc\r\n0\r\n\r\n";
        for a in 0..=wire.len() {
            for b in a..=wire.len() {
                let (chunks, rest) =
                    decode_in(&[&wire[..a], &wire[a..b], &wire[b..]], LIMITS).unwrap();
                assert_eq!((joined(&chunks), rest.len()), (b"abc".to_vec(), 0));
            }
        }
    }

    /// (The mock backend's decoder test from before the codec, its assertions kept.)
    #[test]
    fn chunked_bodies_decode_across_partial_input() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        // Feed the bytes one at a time: the decoder must only ever ask for more.
        let mut buf = BytesMut::new();
        let mut body = BytesMut::new();
        let mut decoder = ChunkedDecoder::new(LIMITS);
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf).unwrap() {
                Chunk::Done => break,
                Chunk::Data(data) => body.extend_from_slice(&data),
                Chunk::NeedMore(_) => {
                    buf.extend_from_slice(&wire[fed..fed + 1]);
                    fed += 1;
                }
            }
        }
        assert_eq!(&body[..], b"Wikipedia");
        assert_eq!(&buf[..], b"");
        assert_eq!(&wire[fed..], b"NEXT");
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(ChunkedDecoder::new(LIMITS).decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"3\r\nabcX\r\n"[..]);
        assert!(ChunkedDecoder::new(LIMITS).decode(&mut buf).is_err());
    }

    /// (The client's framing test from before the codec, its assertions kept.)
    #[test]
    fn framing_follows_the_rfc() {
        let framing = |status: u16, head_request: bool, fields: &str| {
            let raw = format!("HTTP/1.1 {status} X\r\n{fields}\r\n");
            parse_response_head(raw.as_bytes(), head_request, &LIMITS, |_, _| {})
                .map(|head| head.map(|h| h.framing))
        };
        assert_eq!(framing(204, false, ""), Ok(Some(Framing::None)));
        assert_eq!(
            framing(200, true, "content-length: 5\r\n"),
            Ok(Some(Framing::None))
        );
        assert_eq!(
            framing(200, false, "Content-Length: 5\r\n"),
            Ok(Some(Framing::Length(5)))
        );
        assert_eq!(
            framing(
                200,
                false,
                "Transfer-Encoding: chunked\r\ncontent-length: 5\r\n"
            ),
            Ok(Some(Framing::Chunked))
        );
        assert_eq!(framing(200, false, ""), Ok(Some(Framing::UntilClose)));
        assert!(framing(200, false, "content-length: x\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_without_data_or_with_upper_case_and_zero_padded_sizes() {
        assert_eq!(decode_all(b"0\r\n\r\n").unwrap(), (vec![], vec![]));
        let (chunks, _) = decode_all(b"0000000000000A\r\n0123456789\r\n00\r\n\r\n").unwrap();
        assert_eq!(joined(&chunks), b"0123456789");
        let mut dec = ChunkedDecoder::new(LIMITS);
        let mut buf = BytesMut::from(&b"2\r\nab\r\n0\r\n\r\n"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Chunk::Data(Bytes::from_static(b"ab")))
        );
        assert_eq!(dec.decoded(), 2);
        assert_eq!(dec.decode(&mut buf), Ok(Chunk::Done));
        // Done stays done and consumes nothing more.
        buf.extend_from_slice(b"GET");
        assert_eq!(dec.decode(&mut buf), Ok(Chunk::Done));
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn bad_chunk_sizes_and_ends_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
            b"0x5\r\nhello\r\n",
            b"4\nWiki\r\n0\r\n\r\n",
            b"1 2\r\n",
            b"11111111111111111\r\n", // 17 digits
        ] {
            assert_eq!(
                decode_all(bad),
                Err(Error::BadChunkSize),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(decode_all(b"3\r\nabcX\r\n"), Err(Error::BadChunkEnd));
        assert_eq!(decode_all(b"3\r\nabc\n0\r\n\r\n"), Err(Error::BadChunkEnd));
        // 16 digits that overflow nothing on 64 bits but exceed any limit.
        assert_eq!(
            decode_all(b"FFFFFFFFFFFFFFFF\r\n"),
            Err(Error::BodyTooLarge(1024))
        );
    }

    #[test]
    fn chunked_bodies_stop_at_their_limits() {
        // The body limit counts data across chunks, before the data arrives.
        let limits = Limits::with_max_body(8);
        assert_eq!(
            decode_in(&[b"5\r\nhello\r\n4\r\n"], limits),
            Err(Error::BodyTooLarge(8))
        );
        assert!(decode_in(&[b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"], limits).is_ok());
        // A size line may be max_chunk_line long, not longer, CRLF or not yet.
        let limits = Limits {
            max_chunk_line: 8,
            ..LIMITS
        };
        assert!(decode_in(&[b"1;abcdef\r\nx\r\n0\r\n\r\n"], limits).is_ok());
        assert!(decode_in(&[b"1;abcdef\r", b"\nx\r\n0\r\n\r\n"], limits).is_ok());
        assert_eq!(
            decode_in(&[b"1;abcdefg\r\n"], limits),
            Err(Error::ChunkLineTooLong(8))
        );
        assert_eq!(
            decode_in(&[b"1;abcdefgh"], limits),
            Err(Error::ChunkLineTooLong(8))
        );
        // Trailers count towards max_head, complete or not.
        let limits = Limits {
            max_head: 16,
            ..LIMITS
        };
        assert!(decode_in(&[b"0\r\nA: 1\r\nB: 2\r\n\r\n"], limits).is_ok());
        assert_eq!(
            decode_in(&[b"0\r\nA: 123456\r\nB: 2\r\n\r\n"], limits),
            Err(Error::TrailersTooLarge(16))
        );
        assert_eq!(
            decode_in(&[b"0\r\nA: 1234567890123456"], limits),
            Err(Error::TrailersTooLarge(16))
        );
    }

    #[test]
    fn response_heads_decide_framing_by_the_rfc() {
        let h = |raw: &[u8]| response(raw).unwrap().unwrap();
        let ok = h(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!((ok.len, ok.status), (38, 200));
        assert_eq!(ok.framing, Framing::Length(5));
        assert!(ok.keep_alive && ok.http11 && !ok.is_interim());
        assert_eq!(
            h(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").framing,
            Framing::None
        );
        assert_eq!(h(b"HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::None);
        assert_eq!(
            h(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n").framing,
            Framing::None
        );
        // Transfer-Encoding wins over Content-Length, even a bad one.
        assert_eq!(
            h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\ncontent-length: x\r\n\r\n")
                .framing,
            Framing::Chunked
        );
        let gz = h(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!((gz.framing, gz.keep_alive), (Framing::UntilClose, false));
        let eof = h(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((eof.framing, eof.keep_alive), (Framing::UntilClose, false));
        // HEAD: no body whatever the head says.
        let head = parse_response_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
            true,
            &LIMITS,
            |_, _| {},
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.framing, head.keep_alive), (Framing::None, true));
        // Interim answers: reported as such, their fields not.
        let mut seen: Vec<(String, String)> = Vec::new();
        let cont = parse_response_head(
            b"HTTP/1.1 100 Continue\r\nX: 1\r\n\r\nHTTP/1.1 200 OK\r\n",
            false,
            &LIMITS,
            |n, v| seen.push((n.to_string(), lossy(v))),
        )
        .unwrap()
        .unwrap();
        assert!(cont.is_interim());
        assert_eq!(cont.len, 31);
        assert!(seen.is_empty());
        let switch = h(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n");
        assert!(!switch.is_interim() && !switch.keep_alive);
        assert_eq!(switch.framing, Framing::None);
    }

    #[test]
    fn response_heads_report_fields_and_keep_alive() {
        let mut seen = Vec::new();
        let head = parse_response_head(
            b"HTTP/1.1 201 Created\r\nX-Served-By:  a \r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n",
            false,
            &LIMITS,
            |n, v| seen.push((n.to_string(), lossy(v))),
        )
        .unwrap()
        .unwrap();
        assert!(!head.keep_alive);
        assert_eq!(seen[0], ("X-Served-By".to_string(), "a".to_string()));
        assert_eq!(seen.len(), 3);
        let h = |raw: &[u8]| response(raw).unwrap().unwrap().keep_alive;
        assert!(!h(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(h(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn response_heads_that_are_partial_bad_or_too_large() {
        assert_eq!(response(b""), Ok(None));
        assert_eq!(response(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert!(matches!(
            response(b"GARBAGE\r\n\r\n"),
            Err(Error::BadHead(_))
        ));
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"),
            Err(Error::BadContentLength("x".into()))
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n"),
            Err(Error::BadContentLength("+5".into()))
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
            Err(Error::ConflictingContentLength)
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n")
                .unwrap()
                .unwrap()
                .framing,
            Framing::Length(5)
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: 1025\r\n\r\n"),
            Err(Error::BodyTooLarge(1024))
        );
        let small = Limits {
            max_head: 32,
            max_headers: 2,
            ..LIMITS
        };
        let parse = |raw: &[u8]| parse_response_head(raw, false, &small, |_, _| {});
        // Too large whether complete or not.
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nX-A: 1234567890123"),
            Err(Error::HeadTooLarge(32))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nX-A: 123456789012\r\n\r\n"),
            Err(Error::HeadTooLarge(32))
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nX-A: 12345\r\n\r\n").is_ok());
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            Err(Error::TooManyHeaders(2))
        );
    }

    #[test]
    fn request_heads_decide_framing_and_refuse_ambiguity() {
        let mut seen = Vec::new();
        let raw = b"POST /v1/embeddings?x=1 HTTP/1.1\r\nContent-Length: 5\r\nX-Request-Id: abc\r\nExpect: 100-Continue\r\n\r\nhello";
        let h = parse_request_head(raw, &LIMITS, |n, v| seen.push((n, v)))
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            RequestHead {
                len: 96,
                method: "POST",
                target: "/v1/embeddings?x=1",
                http11: true,
                keep_alive: true,
                framing: Framing::Length(5),
                expect_continue: true,
            }
        );
        assert_eq!(seen[1], ("X-Request-Id", &b"abc"[..]));
        assert_eq!(seen.len(), 3);
        let h = |raw: &'static [u8]| request(raw).unwrap().unwrap();
        assert!(!h(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(h(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!h(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
        assert_eq!(h(b"GET / HTTP/1.1\r\n\r\n").framing, Framing::None);
        assert_eq!(
            h(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").framing,
            Framing::None
        );
        assert_eq!(
            h(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        assert_eq!(request(b"POST / HTTP/1.1\r\nContent-Le"), Ok(None));
        let err = |raw: &[u8]| request(raw).unwrap_err();
        assert!(matches!(err(b"GARBAGE\r\n\r\n"), Error::BadHead(_)));
        assert_eq!(
            err(b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            Error::ConflictingContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\ncontent-length: 1025\r\n\r\n"),
            Error::BodyTooLarge(1024)
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n"),
            Error::UnsupportedTransferEncoding("gzip".into())
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            Error::LengthAndChunked
        );
        assert_eq!(
            err(b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            Error::ChunkedInHttp10
        );
        let many: String = (0..70).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            err(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Error::TooManyHeaders(MAX_HEADERS)
        );
    }

    #[test]
    fn requests_encode_with_host_length_and_close() {
        let mut out = Vec::new();
        Request::post("/p", b"{}")
            .header("X-A", "1")
            .encode("127.0.0.1:9", true, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /p HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-length: 2\r\nconnection: close\r\nX-A: 1\r\n\r\n{}"
        );
        Request::get("/g").encode("h", false, &mut out);
        assert_eq!(out, b"GET /g HTTP/1.1\r\nhost: h\r\n\r\n");
        Request::new("PUT", "/u")
            .header("Host", "given")
            .header("Connection", "keep-alive")
            .encode("h", true, &mut out);
        assert_eq!(
            out,
            b"PUT /u HTTP/1.1\r\ncontent-length: 0\r\nHost: given\r\nConnection: keep-alive\r\n\r\n"
        );
        let body = chunked(&[b"ab", b"", b"cde"]);
        assert_eq!(body, b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n");
        let req = Request::post("/c", &body).header("transfer-encoding", "chunked");
        req.encode("h", false, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
        assert!(out.ends_with(&body));
        // A large body is left for the caller to write after the head.
        let big = vec![b'x'; INLINE_BODY + 1];
        let req = Request::post("/big", &big);
        req.encode("h", false, &mut out);
        assert!(!req.body_inline());
        assert!(out.ends_with(format!("content-length: {}\r\n\r\n", big.len()).as_bytes()));
        // What the encoder writes, the parser reads back, and the chunks decode.
        let req = Request::post("/c", &body).header("transfer-encoding", "chunked");
        req.encode("h", false, &mut out);
        let head = request(&out).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let (chunks, rest) = decode_all(&out[head.len..]).unwrap();
        assert_eq!((joined(&chunks), rest.len()), (b"abcde".to_vec(), 0));
    }

    #[test]
    fn field_helpers() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"keep-alive-ish", "keep-alive"));
        assert!(ends_chunked(b"gzip , Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
    }
}

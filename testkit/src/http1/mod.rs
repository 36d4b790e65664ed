//! HTTP/1.1, written once for the whole mock fleet: the test client (`client`), the traffic
//! generator (`traffic`), the mock backend's request reading (`mock`) and the open-loop load
//! generator (`examples/openloop.rs`) all frame messages with this module, so a framing rule
//! (what ends a body, when a connection stays open, what is too large) is fixed in one place.
//!
//! Two layers, as mini-redis splits `frame.rs` from `connection.rs`:
//! * [`codec`] is pure: it parses request and response heads (httparse underneath, plus the
//!   RFC 9112 framing rules), decodes chunked bodies incrementally ([`ChunkedDecoder`], the only
//!   chunked decoder in the kit) and encodes requests ([`Request`]). Bytes in, values or a typed
//!   [`Error`] out, under explicit [`Limits`]; unit-tested on byte strings.
//! * [`io`] is the client side of one connection over any byte stream (TCP or TLS): write a
//!   request, read a whole response piece by piece. It adds what only I/O has: the
//!   connection closing early ([`ConnError::Closed`]) and time limits ([`within`]).
//!
//! The mock backend is a server and keeps its own loop (early `100 Continue`, refusals that
//! drain, stalls), but reads with [`parse_request_head`] and [`ChunkedDecoder`] from here.
//! Responses are written by the mock itself: one response encoder there, one request encoder
//! here.

pub mod codec;
pub mod io;

pub use codec::{
    chunked, ends_chunked, has_token, parse_content_length, parse_request_head,
    parse_response_head, Chunk, ChunkedDecoder, Error, Framing, Limits, Request, RequestHead,
    ResponseHead, INLINE_BODY, MAX_HEADERS,
};
pub use io::{within, ClientConn, ConnError};

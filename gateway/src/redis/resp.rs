//! A minimal Redis (RESP2) client: one TCP connection, commands as arrays of bulk strings,
//! replies parsed into [`Value`]. Enough for the job store's commands (strings, hashes,
//! streams, sorted sets, scripts); no pub/sub, no cluster, no TLS.
//!
//! Why not the `redis` crate (measured for issue 16, 2026-12): `redis` 0.32 with only
//! `tokio-comp` adds 27 crates to the tree (`url` with the `idna`/ICU stack, `combine`) and
//! ~24 s of debug build, plus its own connection manager, where the queue, the shared limits
//! and the L2 cache need ~15 commands on a handful of connections. This file is the whole
//! protocol; it is bounded (bulk and array sizes) and never panics on bad input.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest bulk string accepted (a job record with its result body).
const MAX_BULK: usize = 64 * 1024 * 1024;
/// Most elements in one array reply.
const MAX_ARRAY: usize = 1_000_000;

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    /// A simple-string reply (`+OK`).
    Status(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(_) | Value::Status(_) => self.as_str()?.parse().ok(),
            _ => None,
        }
    }
    pub fn into_array(self) -> Vec<Value> {
        match self {
            Value::Array(a) => a,
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("redis i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis protocol: {0}")]
    Protocol(String),
    /// An error reply (`-ERR …`).
    #[error("redis: {0}")]
    Server(String),
}

/// Host, port and database of a `redis://host:port[/db]` URL.
pub fn parse_url(url: &str) -> Option<(String, u16, u32)> {
    let rest = url.strip_prefix("redis://")?;
    let (authority, db) = match rest.split_once('/') {
        Some((a, "")) => (a, 0),
        Some((a, d)) => (a, d.parse().ok()?),
        None => (rest, 0),
    };
    if authority.contains('@') {
        return None; // AUTH is not supported here
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 6379),
    };
    (!host.is_empty()).then(|| (host.to_string(), port, db))
}

/// One connection.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    pub async fn connect(url: &str) -> Result<Connection, RespError> {
        let (host, port, db) =
            parse_url(url).ok_or_else(|| RespError::Protocol(format!("bad redis URL `{url}`")))?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Connection {
            stream: BufReader::new(tcp),
        };
        if db != 0 {
            conn.cmd(&[b"SELECT", db.to_string().as_bytes()]).await?;
        }
        Ok(conn)
    }

    /// Send one command and read its reply; an error reply is `Err(RespError::Server)`.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Value, RespError> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        read_reply(&mut self.stream).await
    }
}

/// Capacity reserved up front for an array reply: the declared length is untrusted, so at
/// most this many slots are allocated before the elements actually arrive.
const ARRAY_PREALLOC: usize = 1024;

async fn line<R: AsyncBufRead + Unpin>(stream: &mut R) -> Result<String, RespError> {
    let mut line = Vec::new();
    let n = stream.take(64 * 1024).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RespError::Protocol("line too long or unterminated".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RespError::Protocol("non-UTF-8 line".into()))
}

/// Read one reply from `stream`. Public for the property tests, which feed it arbitrary
/// bytes: it returns an error, never panics, and never allocates more than the bounds
/// ([`MAX_BULK`], [`ARRAY_PREALLOC`] per array level before its elements arrive) allow.
pub async fn read_reply<R: AsyncBufRead + Unpin>(stream: &mut R) -> Result<Value, RespError> {
    // Iterative over nested arrays: a stack of (remaining, collected).
    let mut stack: Vec<(usize, Vec<Value>)> = Vec::new();
    loop {
        let line = line(stream).await?;
        // The type byte; a line starting with a multi-byte character has none.
        let (kind, rest) = match (line.get(..1), line.get(1..)) {
            (Some(kind), Some(rest)) => (kind, rest),
            _ => ("", line.as_str()),
        };
        let int = || {
            rest.parse::<i64>()
                .map_err(|_| RespError::Protocol(format!("bad integer `{rest}`")))
        };
        let mut value = match kind {
            "+" => Value::Status(rest.to_string()),
            "-" => return Err(RespError::Server(rest.to_string())),
            ":" => Value::Int(int()?),
            "$" => {
                let n = int()?;
                if n < 0 {
                    Value::Nil
                } else if n as usize > MAX_BULK {
                    return Err(RespError::Protocol("bulk string too large".into()));
                } else {
                    let mut buf = vec![0u8; n as usize + 2];
                    stream.read_exact(&mut buf).await?;
                    buf.truncate(n as usize);
                    Value::Bytes(buf)
                }
            }
            "*" => {
                let n = int()?;
                if n < 0 {
                    Value::Nil
                } else if n as usize > MAX_ARRAY {
                    return Err(RespError::Protocol("array too large".into()));
                } else if n == 0 {
                    Value::Array(Vec::new())
                } else {
                    let n = n as usize;
                    stack.push((n, Vec::with_capacity(n.min(ARRAY_PREALLOC))));
                    continue;
                }
            }
            _ => return Err(RespError::Protocol(format!("unexpected reply `{line}`"))),
        };
        loop {
            match stack.last_mut() {
                None => return Ok(value),
                Some((left, items)) => {
                    items.push(value);
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    let (_, items) = stack.pop().unwrap_or_default();
                    value = Value::Array(items);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_bad_replies() {
        let read = |bytes: &[u8]| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut input = bytes;
            rt.block_on(read_reply(&mut input))
        };
        assert_eq!(
            read(b"*2\r\n$3\r\nabc\r\n:7\r\n").unwrap(),
            Value::Array(vec![Value::Bytes(b"abc".to_vec()), Value::Int(7)])
        );
        // A line that starts with a multi-byte character has no type byte: an error (it
        // used to split inside the character and panic).
        assert!(matches!(
            read("é\r\n".as_bytes()),
            Err(RespError::Protocol(_))
        ));
        // A huge declared array allocates nothing up front and ends at EOF.
        assert!(matches!(read(b"*999999\r\n"), Err(RespError::Io(_))));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("redis://127.0.0.1:6390"),
            Some(("127.0.0.1".into(), 6390, 0))
        );
        assert_eq!(parse_url("redis://h/2"), Some(("h".into(), 6379, 2)));
        assert_eq!(parse_url("redis://u:p@h"), None);
        assert_eq!(parse_url("http://h"), None);
    }
}

//! Plain `http://` URLs the policy or a client names for the gateway to call (job
//! callbacks, the OTLP trace endpoint), parsed and checked: no TLS, no user info, no
//! whitespace in the path. Those requests go through the upstream connector.

/// A parsed `http://host[:port]/path` URL (callbacks are plain HTTP, like upstreams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_url(text: &str) -> Option<Url> {
    let rest = text.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        // [v6]:port
        let end = h.find(']')?;
        let port = match &h[end + 1..] {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (&h[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 80),
        }
    };
    if host.is_empty() || path.contains(['\r', '\n', ' ']) {
        return None;
    }
    Some(Url {
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://Example.com:8080/hook?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 8080, "/hook?x=1")
        );
        assert_eq!(parse_url("http://127.0.0.1").unwrap().path, "/");
        assert_eq!(parse_url("http://[::1]:9/a").unwrap().host, "::1");
        assert!(parse_url("https://x/").is_none());
        assert!(parse_url("http://user@x/").is_none());
        assert!(parse_url("http://:80/").is_none());
    }
}

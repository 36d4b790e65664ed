//! The affinity keys of a request, for pools with `affinity:` (`route::pick_endpoint` sends
//! requests with one key to the same endpoint, within a load bound): a session key (a
//! session header a pool names, else OpenAI's `user` field) and a prompt-prefix key (the
//! messages up to and including the first user message, at most [`MAX_PREFIX`] bytes of
//! them: what every turn of a conversation repeats, and what the server has cached).
//!
//! Computed only when some pool has `affinity:`, and then the body is parsed once more
//! (serde_json, the authority on OpenAI bodies): an allocation per message, deliberate on
//! the request path of an LLM pool, whose answers take orders of magnitude longer.
//! Keys are BLAKE3, so every gateway instance maps a conversation to the same key.

use crate::serving::Serving;
use http::HeaderMap;

/// The most bytes of leading messages hashed into the prefix key.
pub const MAX_PREFIX: usize = 4096;

/// A request's affinity keys; 0: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AffinityKeys {
    pub session: u64,
    pub prefix: u64,
}

#[derive(serde::Deserialize)]
struct Chat {
    #[serde(default)]
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    user: Option<String>,
}

fn key(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b).max(1)
}

/// The keys of a request with `headers` and `body` (`openai`: an OpenAI-shaped body).
pub fn keys(
    table: &Serving,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    openai: bool,
) -> AffinityKeys {
    // A handful of pools at most: no table field needed to know whether any asks.
    if !table.pools.iter().any(|p| p.affinity.is_some()) {
        return AffinityKeys::default();
    }
    let mut keys = AffinityKeys::default();
    for a in table.pools.iter().filter_map(|p| p.affinity.as_ref()) {
        if let Some(v) = a.session_header.as_ref().and_then(|h| headers.get(h)) {
            keys.session = key(v.as_bytes());
            break;
        }
    }
    let Some(chat) = body
        .filter(|_| openai)
        .and_then(|b| serde_json::from_slice::<Chat>(b).ok())
    else {
        return keys;
    };
    if keys.session == 0 {
        if let Some(user) = chat.user.filter(|u| !u.is_empty()) {
            keys.session = key(user.as_bytes());
        }
    }
    let mut prefix = Vec::new();
    for m in &chat.messages {
        if serde_json::to_writer(&mut prefix, m).is_err() || prefix.len() >= MAX_PREFIX {
            break;
        }
        if m.get("role").and_then(|r| r.as_str()) == Some("user") {
            break;
        }
    }
    if !prefix.is_empty() {
        prefix.truncate(MAX_PREFIX);
        keys.prefix = key(&prefix);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_of_a_conversation_share_the_prefix_key_and_others_do_not() {
        let mut chat = Chat {
            messages: serde_json::from_str(
                r#"[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]"#,
            )
            .unwrap(),
            user: None,
        };
        let prefix = |c: &Chat| {
            let mut p = Vec::new();
            for m in &c.messages {
                serde_json::to_writer(&mut p, m).unwrap();
                if m["role"] == "user" {
                    break;
                }
            }
            key(&p)
        };
        let first = prefix(&chat);
        chat.messages
            .push(serde_json::json!({"role":"assistant","content":"hello"}));
        chat.messages
            .push(serde_json::json!({"role":"user","content":"more"}));
        assert_eq!(prefix(&chat), first);
        chat.messages[1] = serde_json::json!({"role":"user","content":"other"});
        assert_ne!(prefix(&chat), first);
        assert_ne!(key(b""), 0);
    }
}

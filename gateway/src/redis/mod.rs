//! Redis for the parts of the gateway that several instances share: the job queue
//! (`queue::redis`), the tenant limits (`admit::shared`), the prediction cache's L2
//! (`cache::shared`), the capacity demand (`capacity::shared`) and the rollouts' state
//! (`rollout::shared`).
//!
//! [`resp`] is the protocol (one connection, RESP2). [`Pool`] adds what the request path
//! needs on top: a few idle connections reused, and a hard timeout on every call (connect
//! included), after which the connection is dropped because its state is unknown. Callers
//! on the request path treat any error as "Redis is away" and fall back; they never wait
//! longer than the timeout.

pub mod resp;

use resp::{Connection, RespError, Value};
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept per pool.
const MAX_IDLE: usize = 32;

/// A small pool of connections to one Redis, with a timeout on every call.
pub struct Pool {
    url: String,
    timeout: Duration,
    // A plain mutex held only to pop or push one connection (never across an await): the
    // control plane never takes it.
    idle: Mutex<Vec<Connection>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl Pool {
    /// Connections are made lazily: a gateway starts while Redis is down.
    pub fn new(url: &str, timeout: Duration) -> Result<Pool, RedisError> {
        resp::parse_url(url)
            .ok_or_else(|| RespError::Protocol(format!("bad redis URL `{url}`")))?;
        Ok(Pool {
            url: url.to_string(),
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Run one command within the pool's timeout. A server error leaves the connection
    /// reusable; an I/O error or a timeout drops it.
    pub async fn cmd(&self, args: &[&[u8]]) -> Result<Value, RedisError> {
        self.cmd_within(args, self.timeout).await
    }

    /// [`Pool::cmd`] with another timeout (control-plane calls such as purges).
    pub async fn cmd_within(&self, args: &[&[u8]], timeout: Duration) -> Result<Value, RedisError> {
        let work = async {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match idle {
                Some(c) => c,
                None => Connection::connect(&self.url).await?,
            };
            let result = conn.cmd(args).await;
            if matches!(result, Ok(_) | Err(RespError::Server(_))) {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
            }
            result.map_err(RedisError::from)
        };
        // On timeout the future (and the connection it holds) is dropped.
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| RedisError::Timeout(timeout))?
    }

    /// `EVALSHA` of a script loaded once, falling back to `EVAL` (which caches it on the
    /// server again) when Redis forgot it (a restart): one round trip in the steady state.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value, RedisError> {
        let sha = match script.sha.get() {
            Some(sha) => sha.as_str(),
            None => {
                let loaded = self
                    .cmd(&[b"SCRIPT", b"LOAD", script.text.as_bytes()])
                    .await?;
                let sha = loaded.as_str().unwrap_or_default().to_string();
                script.sha.get_or_init(|| sha).as_str()
            }
        };
        let n = keys.len().to_string();
        let mut all: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        all.push(b"EVALSHA");
        all.push(sha.as_bytes());
        all.push(n.as_bytes());
        all.extend_from_slice(keys);
        all.extend_from_slice(args);
        match self.cmd(&all).await {
            Err(RedisError::Resp(RespError::Server(e))) if e.starts_with("NOSCRIPT") => {
                all[0] = b"EVAL";
                all[1] = script.text.as_bytes();
                self.cmd(&all).await
            }
            other => other,
        }
    }
}

/// A Lua script, and its SHA-1 once Redis has told it (`SCRIPT LOAD`, on first use).
pub struct Script {
    pub text: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Script {
    pub const fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: std::sync::OnceLock::new(),
        }
    }
}

//! Errors a client can see, and their one mapping to an HTTP status and JSON body.
//!
//! Every refusal the gateway makes itself — bad input, no capacity, upstream trouble — goes
//! through [`GatewayError`], so the status codes, the `Retry-After` header and the body shape
//! (`{"error": {"type", "message", "status"}}`, close to what OpenAI-compatible clients
//! expect) are decided in exactly one place.

use crate::classify::ClassifyError;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches `{0}`")]
    NoRoute(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body is larger than this route's limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error(transparent)]
    BadRequest(#[from] ClassifyError),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("no pool can meet the {deadline_ms} ms deadline of tier `{tier}`; request shed")]
    Shed { tier: String, deadline_ms: u128 },
    #[error("no healthy pool serves model `{model}` for tier `{tier}`")]
    NoCandidate { model: String, tier: String },
    #[error(
        "every pool that can serve tier `{tier}` is at its concurrency limit; try again shortly"
    )]
    Overloaded { tier: String },
    /// The request bodies the gateway holds in memory (`limits.max_buffered_bytes`) leave no
    /// room for this one: a refusal of the gateway's, not of a pool.
    #[error(
        "the gateway's memory for request bodies is full (limits.max_buffered_bytes = {limit} bytes); try again shortly"
    )]
    BodyMemoryFull { limit: u64 },
    #[error("upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
    #[error("no upstream could be reached: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream failed: {0}")]
    UpstreamFailed(String),
    /// The pool's TLS handshake failed (untrusted or wrong-name certificate, refused client
    /// certificate): a configuration problem, so 502 and no `Retry-After`.
    #[error("{0}")]
    UpstreamTls(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the job queue is full ({max_jobs} unfinished jobs); try again later")]
    QueueFull { max_jobs: u64 },
    #[error("the job queue is unavailable: {0}")]
    QueueUnavailable(String),
    #[error("no such job")]
    JobNotFound,
    #[error("the job is {0} and can no longer be cancelled")]
    JobNotCancellable(&'static str),
    #[error("the job is {0} and has no result yet")]
    JobNotFinished(&'static str),
    #[error("x-switchyard-callback-url: {0}")]
    BadCallback(String),
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    /// `GET /v1/models/{id}` for a model the caller's tier cannot reach: answered in
    /// OpenAI's own error shape (see [`GatewayError::body`]), which its SDKs parse.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// `auth: required` and no known tenant key (`missing_key` / `unknown_key`). gRPC:
    /// UNAUTHENTICATED.
    #[error("a valid API key is required (Authorization: Bearer KEY)")]
    Unauthenticated(&'static str),
    /// Over the tenant's rate or concurrency limit. gRPC: RESOURCE_EXHAUSTED.
    #[error("tenant `{tenant}` is over its limit of {what}; retry after {retry_after}s")]
    RateLimited {
        tenant: String,
        what: &'static str,
        retry_after: u32,
    },
    /// Over the tenant's daily spend with `on_budget: reject`. gRPC: RESOURCE_EXHAUSTED.
    #[error("tenant `{tenant}` has spent its budget of {budget_usd} USD for today (UTC)")]
    BudgetExceeded {
        tenant: String,
        budget_usd: f64,
        retry_after: u32,
    },
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::NoRoute(_) => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::BadRequest(_) | GatewayError::BodyRead(_) => 400,
            GatewayError::Shed { .. }
            | GatewayError::NoCandidate { .. }
            | GatewayError::Overloaded { .. }
            | GatewayError::BodyMemoryFull { .. }
            | GatewayError::UpstreamUnavailable(_) => 503,
            GatewayError::UpstreamTimeout(_) => 504,
            GatewayError::UpstreamFailed(_) | GatewayError::UpstreamTls(_) => 502,
            GatewayError::Internal(_) => 500,
            GatewayError::QueueFull { .. } | GatewayError::QueueUnavailable(_) => 503,
            GatewayError::JobNotFound => 404,
            GatewayError::JobNotCancellable(_) | GatewayError::JobNotFinished(_) => 409,
            GatewayError::BadCallback(_) | GatewayError::BadIdempotencyKey => 400,
            GatewayError::ModelNotFound(_) => 404,
            GatewayError::Unauthenticated(_) => 401,
            GatewayError::RateLimited { .. } | GatewayError::BudgetExceeded { .. } => 429,
        }
    }

    /// Machine-readable error type.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NoRoute(_) => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::BadRequest(ClassifyError::UnknownTier(_)) => "unknown_tier",
            GatewayError::BadRequest(ClassifyError::BadJson(_)) => "invalid_json",
            GatewayError::BadRequest(_) | GatewayError::BodyRead(_) => "invalid_request",
            GatewayError::Shed { .. } => "slo_unattainable",
            GatewayError::NoCandidate { .. } => "no_capacity",
            GatewayError::Overloaded { .. } | GatewayError::BodyMemoryFull { .. } => "overloaded",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamFailed(_) => "upstream_failed",
            GatewayError::UpstreamTls(_) => "upstream_tls",
            GatewayError::Internal(_) => "internal",
            GatewayError::QueueFull { .. } => "queue_full",
            GatewayError::QueueUnavailable(_) => "queue_unavailable",
            GatewayError::JobNotFound => "not_found",
            GatewayError::JobNotCancellable(_) | GatewayError::JobNotFinished(_) => "conflict",
            GatewayError::BadCallback(_) | GatewayError::BadIdempotencyKey => "invalid_request",
            GatewayError::ModelNotFound(_) => "invalid_request_error",
            GatewayError::Unauthenticated(_) => "authentication_error",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::BudgetExceeded { .. } => "budget_exceeded",
        }
    }

    /// Seconds a client should wait before retrying, for the errors where that helps.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            GatewayError::Shed { .. } => Some(1),
            GatewayError::NoCandidate { .. } => Some(5),
            GatewayError::Overloaded { .. } | GatewayError::BodyMemoryFull { .. } => Some(1),
            GatewayError::UpstreamUnavailable(_) => Some(5),
            GatewayError::QueueFull { .. } => Some(30),
            GatewayError::QueueUnavailable(_) => Some(5),
            GatewayError::RateLimited { retry_after, .. }
            | GatewayError::BudgetExceeded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The gRPC status code for this error, for requests that came in as gRPC (which get
    /// HTTP 200 and a trailers-only response with `grpc-status` instead of a JSON body).
    pub fn grpc_status(&self) -> u32 {
        const INVALID_ARGUMENT: u32 = 3;
        const DEADLINE_EXCEEDED: u32 = 4;
        const NOT_FOUND: u32 = 5;
        const FAILED_PRECONDITION: u32 = 9;
        const RESOURCE_EXHAUSTED: u32 = 8;
        const UNIMPLEMENTED: u32 = 12;
        const INTERNAL: u32 = 13;
        const UNAVAILABLE: u32 = 14;
        const UNAUTHENTICATED: u32 = 16;
        match self {
            GatewayError::Unauthenticated(_) => UNAUTHENTICATED,
            GatewayError::RateLimited { .. } | GatewayError::BudgetExceeded { .. } => {
                RESOURCE_EXHAUSTED
            }
            GatewayError::NoRoute(_) | GatewayError::MethodNotAllowed(_) => UNIMPLEMENTED,
            GatewayError::PayloadTooLarge { .. } => RESOURCE_EXHAUSTED,
            GatewayError::BadRequest(
                ClassifyError::GrpcCompressed | ClassifyError::GrpcUnimplemented(_),
            ) => UNIMPLEMENTED,
            GatewayError::BadRequest(_) | GatewayError::BodyRead(_) => INVALID_ARGUMENT,
            GatewayError::NoCandidate { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::JobNotFound => NOT_FOUND,
            GatewayError::Shed { .. }
            | GatewayError::Overloaded { .. }
            | GatewayError::BodyMemoryFull { .. }
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::UpstreamFailed(_)
            | GatewayError::UpstreamTls(_)
            | GatewayError::QueueFull { .. }
            | GatewayError::QueueUnavailable(_) => UNAVAILABLE,
            GatewayError::UpstreamTimeout(_) => DEADLINE_EXCEEDED,
            GatewayError::Internal(_) => INTERNAL,
            GatewayError::JobNotCancellable(_) | GatewayError::JobNotFinished(_) => {
                FAILED_PRECONDITION
            }
            GatewayError::BadCallback(_) | GatewayError::BadIdempotencyKey => INVALID_ARGUMENT,
        }
    }

    pub fn body(&self) -> Bytes {
        match self {
            GatewayError::ModelNotFound(_) => {
                openai_error(self.kind(), &self.to_string(), "model_not_found")
            }
            GatewayError::Unauthenticated(_) => {
                openai_error(self.kind(), &self.to_string(), "invalid_api_key")
            }
            _ => json_error(self.status(), self.kind(), &self.to_string()),
        }
    }
}

/// The JSON error body used for every error response.
pub fn json_error(status: u16, kind: &str, message: &str) -> Bytes {
    let v = serde_json::json!({
        "error": { "type": kind, "message": message, "status": status }
    });
    Bytes::from(v.to_string())
}

/// An error body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for
/// answers the official OpenAI SDKs read field by field (`NotFoundError.code`).
pub fn openai_error(kind: &str, message: &str, code: &str) -> Bytes {
    let v = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    Bytes::from(v.to_string())
}

//! The one place where errors become HTTP responses.
//!
//! Every error a client can see is an OpenAI error object,
//! `{"error":{"message","type","param","code"}}`, with the status the OpenAI
//! SDKs map to the right exception class (400 `BadRequestError`, 404
//! `NotFoundError`, 429 `RateLimitError`, 5xx `InternalServerError`, ...).
//! Library errors carry no HTTP knowledge; their `From` conversions here
//! decide status and code.

use std::time::Duration;

use aibox_limits::{Denied, LimitKind, Scope};
use aibox_router::RouterError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error on its way to a client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
    retry_after: Option<Duration>,
    www_authenticate: bool,
}

impl ApiError {
    /// Builds an error.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
            www_authenticate: false,
        }
    }

    /// 400 with a parameter name.
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        );
        e.param = param;
        e
    }

    /// 401: the credential is missing or not valid. The client learns the
    /// reason code (`expired`, `issuer_mismatch`, ...), never token contents.
    pub fn unauthorized(reason: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            format!(
                "authentication failed ({reason}); send a valid access token or gateway API key as `Authorization: Bearer`"
            ),
        );
        e.www_authenticate = true;
        e
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "permission_denied",
            message,
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The OpenAI error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The OpenAI error type (`invalid_request_error`, `server_error`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The client-safe message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error object as JSON bytes.
    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        v.to_string().into_bytes()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.www_authenticate {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of an oversized body is not read, so the connection
            // cannot carry another request; say so, or a client reuses it
            // and sees a disconnect instead of its next answer.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        let message = e.to_string();
        match e {
            RouterError::BadRequest { param, .. } => ApiError::bad_request(message, param),
            RouterError::ModelNotFound { .. } => {
                let mut a = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    message,
                );
                a.param = Some("model");
                a
            }
            ref u @ RouterError::Unavailable { .. } if u.all_timed_out() => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
                message,
            ),
            RouterError::Unavailable { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unavailable",
                message,
            ),
            RouterError::Protocol { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_invalid_response",
                message,
            ),
            RouterError::Discovery { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_error",
                "upstream_unavailable",
                message,
            ),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        let who = match d.scope {
            Scope::Tenant => "tenant",
            Scope::User => "user",
        };
        let what = match d.kind {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        };
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!(
                "rate limit reached: {} {what} per minute for this {who}; retry after {} s (limits.{who}.{what}_per_minute)",
                d.limit,
                d.retry_after.as_secs().max(1)
            ),
        );
        e.retry_after = Some(d.retry_after);
        e
    }
}

impl From<aibox_store::vault::VaultStoreError> for ApiError {
    fn from(e: aibox_store::vault::VaultStoreError) -> Self {
        use aibox_store::vault::VaultStoreError as E;
        use aibox_vault::VaultError as V;
        match &e {
            E::Vault(V::BadName(_)) => {
                let mut out = ApiError::bad_request(e.to_string(), None);
                out.code = "invalid_secret_name";
                out
            }
            E::Vault(V::TooLarge(_)) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "secret_too_large",
                e.to_string(),
            ),
            E::Store(_) => {
                tracing::error!(error = %e, "the vault's store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "vault_unavailable",
                    "the vault cannot answer right now; retry later",
                )
            }
            // Key and integrity failures are the operator's to fix; the
            // message names the key version and the fix, never a value.
            _ => {
                tracing::error!(error = %e, "a vault secret cannot be opened");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "vault_key_error",
                    e.to_string(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_an_openai_error_object() {
        let e = ApiError::bad_request("bad \"thing\"", Some("model"));
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "bad \"thing\"");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "invalid_request");
    }

    #[test]
    fn router_errors_map_to_sdk_statuses() {
        let nf: ApiError = RouterError::ModelNotFound { model: "x".into() }.into();
        assert_eq!(nf.status(), StatusCode::NOT_FOUND);
        let timeout: ApiError = RouterError::Unavailable {
            attempts: vec![aibox_router::AttemptFailure {
                upstream: "a".into(),
                reason: "slow".into(),
                timed_out: true,
            }],
        }
        .into();
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let down: ApiError = RouterError::Unavailable {
            attempts: vec![aibox_router::AttemptFailure {
                upstream: "a".into(),
                reason: "refused".into(),
                timed_out: false,
            }],
        }
        .into();
        assert_eq!(down.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn rate_limit_sets_retry_after() {
        let e: ApiError = Denied {
            scope: Scope::User,
            kind: LimitKind::Requests,
            limit: 5,
            retry_after: Duration::from_millis(1500),
        }
        .into();
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }
}

//! The HTTP API's errors: a status and a JSON body `{"error": {kind, code, message, …}}`
//! that says what went wrong and what to do, for every request the API refuses.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// A refused request: nothing ran.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
    /// `Retry-After`, in seconds (429).
    retry_after: Option<u64>,
    /// Answer with `WWW-Authenticate: Bearer` (401).
    challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            code,
            message,
            extra: Map::new(),
            retry_after: None,
            challenge: false,
        }
    }

    /// 401: no token, or one that belongs to nobody.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            challenge: true,
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unauthorized",
                message.into(),
            )
        }
    }

    /// 403: a known caller asking for something its token does not cover.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forbidden",
            message.into(),
        )
    }

    /// 429: a quota is spent; `retry_after` says when to try again.
    pub(crate) fn over_quota(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource",
                "quota-exceeded",
                message.into(),
            )
        }
    }

    /// 429: the tenant has as many sessions as it may; one expires within the idle expiry.
    pub(crate) fn too_many_sessions(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(60),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource",
                weir::codes::TOO_MANY_SESSIONS,
                message.into(),
            )
        }
    }

    /// 403 with a code saying why (the open API's refusals).
    pub(crate) fn forbidden_because(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", code, message.into())
    }

    /// 415: the body is not of a type the API takes.
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "validation",
            "unsupported-media-type",
            message.into(),
        )
    }

    /// 408: the client took too long to send its request's body.
    pub(crate) fn body_timeout(limit: Duration) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "body-timeout",
            format!(
                "the request body did not arrive within {} s; send it at once",
                limit.as_secs_f64()
            ),
        )
    }

    /// The error's code.
    #[cfg(test)]
    pub(crate) fn code(&self) -> &'static str {
        self.code
    }

    /// 429: too many of something open at once (event streams); try again after
    /// `retry_after`.
    pub(crate) fn too_many(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource",
                "capacity-exceeded",
                message.into(),
            )
        }
    }

    /// 409: the request clashes with an earlier one (an idempotency key sent again with
    /// another request).
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", code, message.into())
    }

    /// 429 with `code`: a bound of the caller's was hit; try again after `retry_after`.
    pub(crate) fn bound_hit(
        code: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resource",
                code,
                message.into(),
            )
        }
    }

    /// 400: the request itself is malformed.
    /// 422: the request was well formed but what it carries cannot be used.
    pub(crate) fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            code,
            message.into(),
        )
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "validation", code, message.into())
    }

    /// 400 for a query string that does not parse, with axum's reason.
    pub(crate) fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request("invalid-query", rejection.body_text())
    }

    /// A page size from `?limit=`: 50 when absent, else 1 to `max`, or a 400 saying so.
    pub(crate) fn page_limit(asked: Option<usize>, max: usize) -> Result<usize, Self> {
        match asked.unwrap_or(50) {
            n if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid-query",
                format!("`limit` must be between 1 and {max}"),
            )),
        }
    }

    /// 404: nothing by that name.
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", code, message.into())
    }

    /// 405: the path exists, not with this method.
    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "method-not-allowed",
            message.into(),
        )
    }

    /// 413: the body is over the server's limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "validation",
            "body-too-large",
            format!(
                "the request body is over the server's limit of {limit} bytes (an operator can \
                 raise it with `weir serve --max-body-bytes`)"
            ),
        )
    }

    /// 503: the runtime is not accepting work (starting or stopping) or its backend is
    /// unreachable.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "unavailable",
            message.into(),
        )
    }

    /// Adds a member beside `kind`, `code` and `message` (e.g. `available`).
    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("kind".into(), json!(self.kind));
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.extend(self.extra);
        let mut response = (self.status, Json(json!({ "error": body }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"weir\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answers_with_its_status_and_a_json_body() {
        let error = ApiError::not_found("plugin-not-found", "no plugin named `x`")
            .with("available", json!(["a"]));
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "errors are JSON"
        );
        assert_eq!(
            ApiError::too_large(10).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}

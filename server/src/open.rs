//! What keeps an open API (no tenants, no operator token) from being reached through a web
//! browser: a page on another site must not run work (cross-site request forgery) nor, by
//! making its own name resolve to `127.0.0.1` (DNS rebinding), read or install anything.
//!
//! In open mode every request must name, in `Host`, an IP address, `localhost` or a name
//! the operator allowed (`ServerConfig::allowed_hosts`), so a rebound name is refused; a
//! request that carries an `Origin` must come from the server's own origin; and a body sent
//! with `POST` must be `application/json`, which no cross-site form or simple request can
//! send without the browser asking first. Refusals are `403` (`host-not-allowed`,
//! `origin-not-allowed`) and `415` (`unsupported-media-type`), and nothing runs.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The open API's checks, with the host names the operator allowed.
#[derive(Debug, Clone)]
pub(super) struct OpenGuard {
    allowed_hosts: Arc<Vec<String>>,
}

impl OpenGuard {
    pub(super) fn new(allowed_hosts: &[String]) -> Self {
        OpenGuard {
            allowed_hosts: Arc::new(
                allowed_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            ),
        }
    }

    /// Why `parts` may not reach the open API, if it may not.
    fn refuse(&self, method: &Method, headers: &axum::http::HeaderMap) -> Option<ApiError> {
        let host = headers
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}").to_ascii_lowercase());
        if let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Some(ApiError::forbidden_because(
                "host-not-allowed",
                format!(
                    "this API has no tenants configured, so it answers only requests addressed to \
                     an IP address or `localhost`, not `{host}`; configure tenants (--config) or \
                     allow the name with --allow-host"
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = host.as_deref().is_some_and(|host| {
                let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
                origin == format!("http://{host}") || origin == format!("https://{host}")
            });
            if !same {
                return Some(ApiError::forbidden_because(
                    "origin-not-allowed",
                    "this API has no tenants configured, so it answers web pages of its own \
                     origin only; configure tenants (--config) to call it from elsewhere",
                ));
            }
        }
        if method == Method::POST && has_body(headers) && !is_json(headers) {
            return Some(ApiError::unsupported_media_type(
                "a request body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        None
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        name == "localhost"
            || name.parse::<IpAddr>().is_ok()
            || self.allowed_hosts.iter().any(|allowed| allowed == name)
    }
}

/// The name in a `Host` value, without its port (and without the brackets of an IPv6
/// address).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

fn has_body(headers: &axum::http::HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) => length > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The middleware: refuses what [`OpenGuard`] refuses, before any handler runs.
pub(super) async fn guard(
    State(guard): State<OpenGuard>,
    request: Request,
    next: Next,
) -> Response {
    match guard.refuse(request.method(), request.headers()) {
        Some(refusal) => refusal.into_response(),
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn code(
        guard: &OpenGuard,
        method: Method,
        pairs: &[(&'static str, &'static str)],
    ) -> Option<&'static str> {
        guard.refuse(&method, &headers(pairs)).map(|e| e.code())
    }

    #[test]
    fn hosts_must_be_ip_addresses_localhost_or_allowed_names() {
        let guard = OpenGuard::new(&["weir.internal".to_string()]);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "10.0.0.5",
            "LOCALHOST",
            "weir.internal:80",
        ] {
            let pairs = [("host", host)];
            assert_eq!(code(&guard, Method::GET, &pairs), None, "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
        ] {
            let pairs = [("host", host)];
            assert_eq!(
                code(&guard, Method::GET, &pairs),
                Some("host-not-allowed"),
                "{host}"
            );
        }
        assert_eq!(
            code(&guard, Method::GET, &[]),
            None,
            "HTTP/1.0 sends no Host"
        );
    }

    #[test]
    fn an_origin_must_be_the_servers_own() {
        let guard = OpenGuard::new(&[]);
        let own = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ];
        assert_eq!(code(&guard, Method::GET, &own), None);
        let foreign = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(
            code(&guard, Method::POST, &foreign),
            Some("origin-not-allowed")
        );
        let null = [("host", "127.0.0.1:8080"), ("origin", "null")];
        assert_eq!(
            code(&guard, Method::POST, &null),
            Some("origin-not-allowed")
        );
    }

    #[test]
    fn a_posted_body_must_be_json() {
        let guard = OpenGuard::new(&[]);
        let host = ("host", "127.0.0.1:8080");
        let plain = [
            host,
            ("content-type", "text/plain"),
            ("content-length", "7"),
        ];
        assert_eq!(
            code(&guard, Method::POST, &plain),
            Some("unsupported-media-type")
        );
        let none = [host, ("content-length", "7")];
        assert_eq!(
            code(&guard, Method::POST, &none),
            Some("unsupported-media-type")
        );
        let json = [
            host,
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "7"),
        ];
        assert_eq!(code(&guard, Method::POST, &json), None);
        let empty = [host, ("content-length", "0")];
        assert_eq!(
            code(&guard, Method::POST, &empty),
            None,
            "no body, nothing to judge"
        );
    }
}

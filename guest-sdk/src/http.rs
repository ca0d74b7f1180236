//! Outbound HTTP requests from a processor, through the host's `wasi:http` (WASI 0.2).
//!
//! One job: send a request and read its whole response, blocking, with failures reported as
//! typed [`Error`]s. Enable it with the `http` feature:
//!
//! ```toml
//! [dependencies]
//! weir-sdk = { version = "0.1", features = ["http"] }
//! ```
//!
//! ```no_run
//! use weir_sdk::http::{self, Request};
//! use std::time::Duration;
//!
//! # fn demo() -> Result<(), weir_sdk::Error> {
//! let rate: serde_json::Value = http::get("https://api.example.com/rates?base=EUR")?.json()?;
//!
//! let created = Request::post("https://api.example.com/orders")
//!     .header("authorization", "Bearer s3cret")
//!     .json(&serde_json::json!({ "sku": "A-1", "quantity": 2 }))?
//!     .timeout(Duration::from_secs(5))
//!     .send()?;
//! if created.status() != 201 {
//!     return Err(weir_sdk::Error::network(format!("the order API answered {}", created.status())));
//! }
//! # Ok(()) }
//! ```
//!
//! # The operator grants the hosts
//!
//! Every request is denied unless the operator allows its origin (and method) in the plugin's
//! manifest, `NAME.toml` beside `NAME.wasm`:
//!
//! ```toml
//! [capabilities.http]
//! allow = ["https://api.example.com", { origin = "http://127.0.0.1:8080", methods = ["GET", "POST"] }]
//! timeout_ms = 10000            # the whole request: connect, response and body
//! max_response_bytes = 1048576
//! ```
//!
//! A plugin cannot grant itself anything: a request to any other origin, with a method the
//! rule does not list, or from a plugin without `[capabilities.http]`, fails with an
//! [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) error coded
//! `capability-denied` and nothing leaves the host. [`Request::timeout`] can only shorten
//! the grant's `timeout_ms`, never extend it.
//!
//! # Responses and errors
//!
//! Any response the server sends, `404` and `500` included, is an `Ok` [`Response`]: the
//! status is yours to judge. The body is read whole into memory, up to the grant's
//! `max_response_bytes`. A request that gets no response is an `Err` with a code:
//!
//! | code | kind | retryable | when |
//! |---|---|---|---|
//! | `invalid-url` | validation | no | the URL is not `http://` or `https://` with a host |
//! | `invalid-method`, `invalid-header`, `forbidden-header` | validation | no | the method or a header is not valid HTTP, or a header only the host may set (`host`) |
//! | `capability-denied` | configuration | no | the manifest does not allow the origin and method, or the host name resolves to an internal address the grant does not name |
//! | `http-timeout` | timeout | yes | connecting, the response or its body took longer than the timeout |
//! | `http-response-too-large` | resource | no | the response body is larger than `max_response_bytes` |
//! | `http-error` | network | yes | anything else: DNS, connection refused or reset, TLS, protocol errors |
//!
//! [`Response::text`] and [`Response::json`] fail with an
//! [`ErrorKind::Execution`](crate::ErrorKind::Execution) error coded `http-invalid-body` when
//! the body is not UTF-8 or not the expected JSON.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, HeaderError, IncomingBody, IncomingResponse, Method,
    OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::Error;

/// The largest write `blocking-write-and-flush` accepts at once.
const WRITE_CHUNK: usize = 4096;
/// How much of the response body to ask for per read.
const READ_CHUNK: u64 = 64 * 1024;

/// Sends `GET url` and reads the whole response.
///
/// ```no_run
/// let page = weir_sdk::http::get("https://example.com/")?.text()?;
/// # Ok::<(), weir_sdk::Error>(())
/// ```
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

/// An HTTP request being built; [`send`](Request::send) sends it.
///
/// Mistakes (a bad URL, method or header) are remembered and returned by `send`, so the
/// builder methods chain without `?`.
#[derive(Clone)]
pub struct Request {
    method: String,
    url: String,
    target: Result<Target, Error>,
    headers: Vec<(String, String)>,
    invalid_header: Option<Error>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request with `method` (upper-cased, e.g. `get` becomes `GET`) to `url`, which must
    /// be `http://` or `https://`, a host, an optional port and an optional path and query.
    pub fn new(method: &str, url: &str) -> Self {
        let method = method.to_ascii_uppercase();
        let target = check_method(&method).and_then(|()| parse_url(url));
        Request {
            method,
            url: url.to_string(),
            target,
            headers: Vec::new(),
            invalid_header: None,
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` request to `url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request to `url`.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header. Calling it twice with the same name sends both values.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        if self.invalid_header.is_none() {
            self.invalid_header = check_header(&name, &value).err();
        }
        self.headers.push((name, value));
        self
    }

    /// Sets the request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON and, unless a `content-type` header is already set,
    /// `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, Error> {
        self.body = serde_json::to_vec(value).map_err(|e| {
            Error::execution(format!(
                "the JSON body of {} {} could not be serialized: {e}",
                self.method, self.url
            ))
        })?;
        if !self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            self.headers
                .push(("content-type".into(), "application/json".into()));
        }
        Ok(self)
    }

    /// Limits how long connecting, waiting for the response and each wait between body bytes
    /// may take. The host clamps it to the operator's `timeout_ms`, which also bounds the
    /// request as a whole.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response. See the [module docs](self) for the
    /// errors.
    pub fn send(self) -> Result<Response, Error> {
        let Request {
            method,
            url,
            target,
            headers,
            invalid_header,
            body,
            timeout,
        } = self;
        let target = target?;
        if let Some(err) = invalid_header {
            return Err(err);
        }
        let fail = |code: ErrorCode| error_from_code(&method, &url, &code);

        let request = OutgoingRequest::new(to_fields(&headers)?);
        request
            .set_method(&to_wasi_method(&method))
            .map_err(|()| invalid_method(&method, "the host refused it"))?;
        let scheme = if target.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .and_then(|()| request.set_authority(Some(&target.authority)))
            .and_then(|()| request.set_path_with_query(Some(&target.path_with_query)))
            .map_err(|()| invalid_url(&url, "the host refused its scheme, host or path"))?;
        let outgoing_body = request.body().map_err(|()| {
            Error::execution(format!(
                "{method} {url}: the host gave the request no body to write"
            ))
        })?;

        let future =
            outgoing_handler::handle(request, Some(request_options(timeout))).map_err(fail)?;

        // The body is written after `handle`: the host streams it to the server as it comes.
        if let Err(failure) = write_body(&outgoing_body, &body) {
            drop(outgoing_body);
            // A write usually fails because the request did; its own error says why.
            return Err(match wait_for(&future) {
                Some(Err(code)) => fail(code),
                _ => stream_error(&method, &url, "writing the request body", failure),
            });
        }
        OutgoingBody::finish(outgoing_body, None).map_err(fail)?;

        let response = match wait_for(&future) {
            Some(Ok(response)) => response,
            Some(Err(code)) => return Err(fail(code)),
            None => {
                return Err(Error::execution(format!(
                    "{method} {url}: the host had already handed out this response"
                )));
            }
        };
        drop(future);

        let status = response.status();
        let headers = {
            let fields = response.headers();
            let entries = fields.entries();
            drop(fields);
            entries
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect()
        };
        let incoming_body = response.consume().map_err(|()| {
            Error::execution(format!(
                "{method} {url}: the host gave the response no body to read"
            ))
        })?;
        let body = read_body(&incoming_body)
            .map_err(|failure| stream_error(&method, &url, "reading the response", failure))?;
        drop(IncomingBody::finish(incoming_body));
        drop(response);

        Ok(Response {
            method,
            url,
            status,
            headers,
            body,
        })
    }
}

/// Shows header names and the body's size, not their contents, which may be secrets.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A response, read whole: status, headers and body.
#[derive(Clone)]
pub struct Response {
    method: String,
    url: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code, e.g. `200`.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Every header in the order received; names are lower case.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name` (compared case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body's bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body's bytes, taken out of the response.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as text; an error when it is not UTF-8.
    pub fn text(&self) -> Result<String, Error> {
        String::from_utf8(self.body.clone()).map_err(|e| {
            Error::execution(format!(
                "the response to {} {} is not UTF-8 text: {e}",
                self.method, self.url
            ))
            .with_code("http-invalid-body")
        })
    }

    /// The body parsed as JSON into `T`; an error when it is not JSON of that shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::execution(format!(
                "the response to {} {} is not the expected JSON: {e}",
                self.method, self.url
            ))
            .with_code("http-invalid-body")
        })
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Where a request goes: what `wasi:http` wants instead of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    authority: String,
    path_with_query: String,
}

fn invalid_url(url: &str, why: &str) -> Error {
    Error::validation(format!("`{url}` is not a usable HTTP URL: {why}")).with_code("invalid-url")
}

fn invalid_method(method: &str, why: &str) -> Error {
    Error::validation(format!("`{method}` is not a usable HTTP method: {why}"))
        .with_code("invalid-method")
}

/// Splits an `http://` or `https://` URL into scheme, authority and path with query (`/`
/// when absent). The fragment, which is never sent, is dropped.
fn parse_url(url: &str) -> Result<Target, Error> {
    let invalid = |why: &str| invalid_url(url, why);
    if url.is_empty() {
        return Err(invalid("it is empty"));
    }
    if let Some(c) = url
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err(invalid(&format!(
            "it contains {c:?}; percent-encode spaces, control and non-ASCII characters"
        )));
    }
    let Some((scheme, rest)) = url.split_once("://").filter(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    }) else {
        return Err(invalid("it must start with http:// or https://"));
    };
    let https = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(invalid(&format!(
            "the scheme `{scheme}` is not supported; use http or https"
        )));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    check_authority(authority).map_err(|why| invalid(&why))?;
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    let path_with_query = if tail.is_empty() {
        "/".to_string()
    } else if tail.starts_with('?') {
        format!("/{tail}")
    } else {
        tail.to_string()
    };
    Ok(Target {
        https,
        authority: authority.to_string(),
        path_with_query,
    })
}

/// Checks `host[:port]`, where the host is a name, an IPv4 address or `[IPv6]`.
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("the host is missing".into());
    }
    if authority.contains('@') {
        return Err(
            "user info (`user:password@`) is not supported; send credentials in a \
                    header such as `authorization`"
                .into(),
        );
    }
    let port = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("the IPv6 address has no closing `]`".into());
        };
        if address.is_empty()
            || !address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("`[{address}]` is not an IPv6 address"));
        }
        match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected `{after}` after the IPv6 address")),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err("the host is missing".into());
        }
        if let Some(c) = host
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "-._~".contains(c)))
        {
            return Err(format!("the host `{host}` contains `{c}`"));
        }
        port
    };
    match port {
        Some(port) if !matches!(port.parse::<u16>(), Ok(1..)) => {
            Err(format!("the port `{port}` is not a number from 1 to 65535"))
        }
        _ => Ok(()),
    }
}

/// RFC 9110 `tchar`: what a method or header name may contain.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

fn check_method(method: &str) -> Result<(), Error> {
    if is_token(method) {
        Ok(())
    } else if method.is_empty() {
        Err(invalid_method(method, "it is empty"))
    } else {
        Err(invalid_method(
            method,
            "it may contain only letters, digits and !#$%&'*+-.^_`|~",
        ))
    }
}

fn check_header(name: &str, value: &str) -> Result<(), Error> {
    if !is_token(name) {
        return Err(Error::validation(format!(
            "the header name `{name}` is not valid HTTP: it must be non-empty and contain only \
             letters, digits and !#$%&'*+-.^_`|~"
        ))
        .with_code("invalid-header"));
    }
    if let Some(c) = value.chars().find(|&c| matches!(c, '\r' | '\n' | '\0')) {
        return Err(Error::validation(format!(
            "the value of header `{name}` contains {c:?}, which HTTP does not allow"
        ))
        .with_code("invalid-header"));
    }
    Ok(())
}

fn to_wasi_method(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// The request's headers as `wasi:http` fields; a refused header is named in the error.
fn to_fields(headers: &[(String, String)]) -> Result<Fields, Error> {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone().into_bytes()))
        .collect();
    Fields::from_list(&entries).map_err(|err| {
        // `from-list` does not say which header it refused: find it by trying each alone.
        let culprit = entries.iter().find_map(|entry| {
            Fields::from_list(std::slice::from_ref(entry))
                .err()
                .map(|e| (entry, e))
        });
        match culprit {
            Some(((name, _), err)) => header_error(name, err),
            None => Error::validation(format!("the host refused the request headers: {err:?}"))
                .with_code("invalid-header"),
        }
    })
}

fn header_error(name: &str, err: HeaderError) -> Error {
    match err {
        HeaderError::Forbidden => Error::validation(format!(
            "the header `{name}` is forbidden: only the host may set it"
        ))
        .with_code("forbidden-header"),
        HeaderError::InvalidSyntax => Error::validation(format!(
            "the header `{name}` or its value is not valid HTTP"
        ))
        .with_code("invalid-header"),
        HeaderError::Immutable => Error::execution(format!(
            "the header `{name}` could not be set: the host says the headers are immutable"
        )),
    }
}

fn request_options(timeout: Option<Duration>) -> RequestOptions {
    let options = RequestOptions::new();
    if let Some(timeout) = timeout {
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // A host that does not support a timeout refuses it; its grant's own timeout still
        // bounds the request, so the request goes ahead without it.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
    }
    options
}

/// Why a body stream failed.
enum StreamFailure {
    /// The stream was closed (by the host) before the operation finished.
    Closed,
    /// The host would not hand out the stream at all.
    Unavailable,
    /// The operation failed; `code` is the `wasi:http` error when the host gave one.
    Failed {
        code: Option<ErrorCode>,
        debug: String,
    },
}

impl From<StreamError> for StreamFailure {
    fn from(err: StreamError) -> Self {
        match err {
            StreamError::Closed => StreamFailure::Closed,
            StreamError::LastOperationFailed(err) => StreamFailure::Failed {
                code: wasip2::http::types::http_error_code(&err),
                debug: err.to_debug_string(),
            },
        }
    }
}

fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), StreamFailure> {
    let stream = body.write().map_err(|()| StreamFailure::Unavailable)?;
    for chunk in bytes.chunks(WRITE_CHUNK) {
        // Waits until the host can take the chunk (`check-write`), writes and flushes it.
        stream.blocking_write_and_flush(chunk)?;
    }
    drop(stream);
    Ok(())
}

/// Reads the whole body; the stream is dropped before returning, as `finish` requires.
fn read_body(body: &IncomingBody) -> Result<Vec<u8>, StreamFailure> {
    let stream = body.stream().map_err(|()| StreamFailure::Unavailable)?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(err) => return Err(err.into()),
        }
    }
    drop(stream);
    Ok(bytes)
}

/// Blocks until the response (or its error) arrives. `None` if it was already taken.
fn wait_for(future: &FutureIncomingResponse) -> Option<Result<IncomingResponse, ErrorCode>> {
    let ready = future.subscribe();
    loop {
        match future.get() {
            Some(result) => return result.ok(),
            None => ready.block(),
        }
    }
}

fn stream_error(method: &str, url: &str, doing: &str, failure: StreamFailure) -> Error {
    match failure {
        StreamFailure::Failed {
            code: Some(code), ..
        } => error_from_code(method, url, &code),
        StreamFailure::Failed { code: None, debug } => {
            Error::network(format!("{method} {url} failed while {doing}: {debug}"))
                .with_code("http-error")
        }
        StreamFailure::Closed => Error::network(format!(
            "{method} {url} failed while {doing}: the stream closed early"
        ))
        .with_code("http-error"),
        StreamFailure::Unavailable => Error::execution(format!(
            "{method} {url} failed while {doing}: the host gave no stream"
        )),
    }
}

/// Turns a `wasi:http` error code into the SDK's typed error.
fn error_from_code(method: &str, url: &str, code: &ErrorCode) -> Error {
    let name = code_name(code);
    let details = serde_json::json!({ "method": method, "url": url, "errorCode": name });
    match code {
        ErrorCode::HttpRequestDenied => Error::configuration(format!(
            "weir denied {method} {url}: this plugin's manifest does not allow that origin and \
             method (the operator grants hosts in [capabilities.http] allow)"
        ))
        .with_code("capability-denied"),
        ErrorCode::DestinationIpProhibited => Error::configuration(format!(
            "weir refused {method} {url}: its host resolves to an internal address (loopback, \
             private, link-local…) that this plugin's grant does not name (the operator grants \
             an internal address by writing it in [capabilities.http] allow)"
        ))
        .with_code("capability-denied"),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout => {
            Error::timeout(format!("{method} {url} timed out ({name})")).with_code("http-timeout")
        }
        ErrorCode::HttpResponseBodySize(limit) => {
            let limit = match limit {
                Some(bytes) => format!("this plugin's limit of {bytes} bytes"),
                None => "this plugin's limit".to_string(),
            };
            Error::resource(format!(
                "the response to {method} {url} is larger than {limit} (max_response_bytes in \
                 [capabilities.http])"
            ))
            .with_code("http-response-too-large")
        }
        other => Error::network(format!("{method} {url} failed: {}", describe(other)))
            .with_code("http-error"),
    }
    .with_details(&details)
}

/// The error code's name in the `wasi:http` WIT, e.g. `connection-refused`.
fn code_name(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::DnsTimeout => "DNS-timeout",
        ErrorCode::DnsError(_) => "DNS-error",
        ErrorCode::DestinationNotFound => "destination-not-found",
        ErrorCode::DestinationUnavailable => "destination-unavailable",
        ErrorCode::DestinationIpProhibited => "destination-IP-prohibited",
        ErrorCode::DestinationIpUnroutable => "destination-IP-unroutable",
        ErrorCode::ConnectionRefused => "connection-refused",
        ErrorCode::ConnectionTerminated => "connection-terminated",
        ErrorCode::ConnectionTimeout => "connection-timeout",
        ErrorCode::ConnectionReadTimeout => "connection-read-timeout",
        ErrorCode::ConnectionWriteTimeout => "connection-write-timeout",
        ErrorCode::ConnectionLimitReached => "connection-limit-reached",
        ErrorCode::TlsProtocolError => "TLS-protocol-error",
        ErrorCode::TlsCertificateError => "TLS-certificate-error",
        ErrorCode::TlsAlertReceived(_) => "TLS-alert-received",
        ErrorCode::HttpRequestDenied => "HTTP-request-denied",
        ErrorCode::HttpRequestLengthRequired => "HTTP-request-length-required",
        ErrorCode::HttpRequestBodySize(_) => "HTTP-request-body-size",
        ErrorCode::HttpRequestMethodInvalid => "HTTP-request-method-invalid",
        ErrorCode::HttpRequestUriInvalid => "HTTP-request-URI-invalid",
        ErrorCode::HttpRequestUriTooLong => "HTTP-request-URI-too-long",
        ErrorCode::HttpRequestHeaderSectionSize(_) => "HTTP-request-header-section-size",
        ErrorCode::HttpRequestHeaderSize(_) => "HTTP-request-header-size",
        ErrorCode::HttpRequestTrailerSectionSize(_) => "HTTP-request-trailer-section-size",
        ErrorCode::HttpRequestTrailerSize(_) => "HTTP-request-trailer-size",
        ErrorCode::HttpResponseIncomplete => "HTTP-response-incomplete",
        ErrorCode::HttpResponseHeaderSectionSize(_) => "HTTP-response-header-section-size",
        ErrorCode::HttpResponseHeaderSize(_) => "HTTP-response-header-size",
        ErrorCode::HttpResponseBodySize(_) => "HTTP-response-body-size",
        ErrorCode::HttpResponseTrailerSectionSize(_) => "HTTP-response-trailer-section-size",
        ErrorCode::HttpResponseTrailerSize(_) => "HTTP-response-trailer-size",
        ErrorCode::HttpResponseTransferCoding(_) => "HTTP-response-transfer-coding",
        ErrorCode::HttpResponseContentCoding(_) => "HTTP-response-content-coding",
        ErrorCode::HttpResponseTimeout => "HTTP-response-timeout",
        ErrorCode::HttpUpgradeFailed => "HTTP-upgrade-failed",
        ErrorCode::HttpProtocolError => "HTTP-protocol-error",
        ErrorCode::LoopDetected => "loop-detected",
        ErrorCode::ConfigurationError => "configuration-error",
        ErrorCode::InternalError(_) => "internal-error",
    }
}

/// The error code's name with whatever detail it carries.
fn describe(code: &ErrorCode) -> String {
    let name = code_name(code);
    match code {
        ErrorCode::DnsError(payload) => format!("{name} {payload:?}"),
        ErrorCode::TlsAlertReceived(payload) => format!("{name} {payload:?}"),
        ErrorCode::InternalError(Some(message))
        | ErrorCode::HttpResponseTransferCoding(Some(message))
        | ErrorCode::HttpResponseContentCoding(Some(message)) => format!("{name}: {message}"),
        ErrorCode::HttpRequestBodySize(Some(n)) => format!("{name} (limit {n} bytes)"),
        ErrorCode::HttpRequestHeaderSectionSize(Some(n))
        | ErrorCode::HttpRequestTrailerSectionSize(Some(n))
        | ErrorCode::HttpResponseHeaderSectionSize(Some(n))
        | ErrorCode::HttpResponseTrailerSectionSize(Some(n)) => {
            format!("{name} (limit {n} bytes)")
        }
        ErrorCode::HttpRequestHeaderSize(Some(field))
        | ErrorCode::HttpRequestTrailerSize(field)
        | ErrorCode::HttpResponseHeaderSize(field)
        | ErrorCode::HttpResponseTrailerSize(field) => format!("{name} {field:?}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn target(https: bool, authority: &str, path_with_query: &str) -> Target {
        Target {
            https,
            authority: authority.into(),
            path_with_query: path_with_query.into(),
        }
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let cases = [
            (
                "http://127.0.0.1:8080",
                target(false, "127.0.0.1:8080", "/"),
            ),
            (
                "https://api.example.com/",
                target(true, "api.example.com", "/"),
            ),
            (
                "HTTPS://api.example.com/v1/rates?base=EUR&x=1",
                target(true, "api.example.com", "/v1/rates?base=EUR&x=1"),
            ),
            (
                "http://example.com?q=1",
                target(false, "example.com", "/?q=1"),
            ),
            (
                "http://example.com/a#frag",
                target(false, "example.com", "/a"),
            ),
            ("http://example.com#frag", target(false, "example.com", "/")),
            ("http://[::1]:9/x", target(false, "[::1]:9", "/x")),
            ("http://[::1]/", target(false, "[::1]", "/")),
            (
                "http://my_host.internal/%20a",
                target(false, "my_host.internal", "/%20a"),
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(parse_url(url).unwrap(), expected, "{url}");
        }
    }

    #[test]
    fn bad_urls_are_validation_errors_that_say_why() {
        let cases = [
            ("", "empty"),
            ("example.com/x", "must start with http:// or https://"),
            ("ftp://example.com/", "scheme `ftp` is not supported"),
            ("http://", "host is missing"),
            ("http:///path", "host is missing"),
            ("http://:80/", "host is missing"),
            ("http://user:pw@example.com/", "user info"),
            ("http://example.com:0/", "port `0`"),
            ("http://example.com:99999/", "port `99999`"),
            ("http://example.com:/", "port ``"),
            ("http://example.com:http/", "port `http`"),
            ("http://exa mple.com/", "contains ' '"),
            ("http://example.com/a\nb", "contains '\\n'"),
            ("http://bücher.de/", "non-ASCII"),
            ("http://[::1/", "no closing `]`"),
            ("http://[zz]/", "not an IPv6 address"),
            ("http://[::1]x/", "after the IPv6 address"),
            ("http://a:b:c/", "contains `:`"),
            ("http://exa!mple.com/", "contains `!`"),
        ];
        for (url, why) in cases {
            let err = parse_url(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation, "{url}");
            assert_eq!(err.code(), Some("invalid-url"), "{url}");
            assert!(err.message().contains(why), "{url}: {}", err.message());
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn mistakes_in_the_builder_are_returned_by_send() {
        let err = Request::get("ftp://example.com/").send().unwrap_err();
        assert_eq!(err.code(), Some("invalid-url"));

        let err = Request::new("GE T", "http://example.com/")
            .send()
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid-method"));

        let err = Request::get("http://example.com/")
            .header("x-ok", "1")
            .header("bad name", "v")
            .header("x-worse", "a\r\nb")
            .send()
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid-header"));
        assert!(err.message().contains("`bad name`"), "{}", err.message());

        let err = Request::get("http://example.com/")
            .header("x-evil", "a\r\nInjected: yes")
            .send()
            .unwrap_err();
        assert!(err.message().contains("`x-evil`"), "{}", err.message());
    }

    #[test]
    fn methods_are_upper_cased_and_mapped() {
        let request = Request::new("post", "http://example.com/");
        assert_eq!(request.method, "POST");
        assert!(matches!(to_wasi_method(&request.method), Method::Post));
        assert!(matches!(to_wasi_method("PROPFIND"), Method::Other(m) if m == "PROPFIND"));
    }

    #[test]
    fn json_sets_the_body_and_content_type_once() {
        let request = Request::post("http://example.com/")
            .json(&serde_json::json!({"a": 1}))
            .unwrap();
        assert_eq!(request.body, br#"{"a":1}"#);
        assert_eq!(
            request.headers,
            [("content-type".to_string(), "application/json".to_string())]
        );
        let request = Request::post("http://example.com/")
            .header("Content-Type", "application/vnd.api+json")
            .json(&[1, 2])
            .unwrap();
        assert_eq!(request.headers.len(), 1);
        assert_eq!(request.headers[0].1, "application/vnd.api+json");
    }

    #[test]
    fn denied_requests_are_configuration_errors() {
        let err = error_from_code("GET", "http://127.0.0.1:9/x", &ErrorCode::HttpRequestDenied);
        assert_eq!(err.kind(), ErrorKind::Configuration);
        assert_eq!(err.code(), Some("capability-denied"));
        assert!(!err.is_retryable());
        assert_eq!(
            err.message(),
            "weir denied GET http://127.0.0.1:9/x: this plugin's manifest does not allow that \
             origin and method (the operator grants hosts in [capabilities.http] allow)"
        );
        assert_eq!(
            err.details().unwrap()["errorCode"],
            serde_json::json!("HTTP-request-denied")
        );
    }

    #[test]
    fn timeouts_are_retryable_timeout_errors() {
        for code in [
            ErrorCode::ConnectionTimeout,
            ErrorCode::ConnectionReadTimeout,
            ErrorCode::ConnectionWriteTimeout,
            ErrorCode::HttpResponseTimeout,
            ErrorCode::DnsTimeout,
        ] {
            let err = error_from_code("POST", "https://api.example.com/a", &code);
            assert_eq!(err.kind(), ErrorKind::Timeout, "{code:?}");
            assert_eq!(err.code(), Some("http-timeout"));
            assert!(err.is_retryable());
            assert!(
                err.message()
                    .starts_with("POST https://api.example.com/a timed out"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn oversized_responses_are_resource_errors_naming_the_limit() {
        let err = error_from_code(
            "GET",
            "http://h/big",
            &ErrorCode::HttpResponseBodySize(Some(1_048_576)),
        );
        assert_eq!(err.kind(), ErrorKind::Resource);
        assert_eq!(err.code(), Some("http-response-too-large"));
        assert!(!err.is_retryable());
        assert!(err.message().contains("http://h/big"), "{}", err.message());
        assert!(err.message().contains("1048576 bytes"), "{}", err.message());

        let err = error_from_code(
            "GET",
            "http://h/big",
            &ErrorCode::HttpResponseBodySize(None),
        );
        assert_eq!(err.code(), Some("http-response-too-large"));
        assert!(err.message().contains("larger than this plugin's limit ("));
    }

    #[test]
    fn other_failures_are_retryable_network_errors_naming_the_code() {
        let err = error_from_code("GET", "http://127.0.0.1:9/", &ErrorCode::ConnectionRefused);
        assert_eq!(err.kind(), ErrorKind::Network);
        assert_eq!(err.code(), Some("http-error"));
        assert!(err.is_retryable());
        assert_eq!(
            err.message(),
            "GET http://127.0.0.1:9/ failed: connection-refused"
        );

        let err = error_from_code(
            "GET",
            "http://h/",
            &ErrorCode::InternalError(Some("boom".into())),
        );
        assert!(
            err.message().ends_with("internal-error: boom"),
            "{}",
            err.message()
        );
        assert_eq!(err.details().unwrap()["errorCode"], "internal-error");
    }

    #[test]
    fn responses_decode_text_and_json_or_say_why_not() {
        let response = Response {
            method: "GET".into(),
            url: "http://h/".into(),
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"n":3}"#.to_vec(),
        };
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.header("etag"), None);
        assert_eq!(response.text().unwrap(), r#"{"n":3}"#);
        let value: serde_json::Value = response.json().unwrap();
        assert_eq!(value["n"], 3);
        let err = response.json::<Vec<u8>>().unwrap_err();
        assert_eq!(err.code(), Some("http-invalid-body"));
        assert!(err.message().contains("GET http://h/"), "{}", err.message());

        let binary = Response {
            body: vec![0xff, 0xfe],
            ..response
        };
        assert_eq!(binary.text().unwrap_err().code(), Some("http-invalid-body"));
        assert_eq!(binary.into_body(), [0xff, 0xfe]);
    }
}

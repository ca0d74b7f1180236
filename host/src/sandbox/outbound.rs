//! Outbound HTTP for plugins: the `wasi:http` hooks that check every request a guest sends
//! against the operator's grant ([`HttpGrant`], parsed in `crate::contract::http_grant`), bound its
//! time and cap the size of its response.
//!
//! The host reads a response's whole body (within the cap and the timeout) before the guest
//! sees the response, so a timeout or an oversized body is the request's own `error-code`
//! (`HTTP-response-timeout`, `HTTP-response-body-size` with the cap), never a broken stream.
//!
//! Without a grant, or for any origin or method it does not allow, the guest's request fails
//! with `wasi:http`'s `HTTP-request-denied` and nothing leaves the host.
//!
//! Host names are matched as the guest wrote them. The host then resolves a granted name
//! itself and checks every address it gets: an internal one (loopback, private, link-local,
//! carrier-grade NAT, unique-local, unspecified, multicast, broadcast, or an IPv4 one of
//! those mapped into IPv6; cloud metadata at 169.254.169.254 is link-local) is refused with
//! `wasi:http`'s `destination-IP-prohibited` unless the grant names that very address as
//! its host. The connection goes to the address that was checked, so a name that resolves
//! elsewhere a moment later (DNS rebinding) reaches nothing new. The guest cannot set the
//! `Host` header itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::contract::http_grant::HttpGrant;

/// Requests one sandbox may have in flight or unread at once: each holds a connection and,
/// once answered, up to `max_response_bytes` of host memory until the guest drops it.
pub const MAX_REQUESTS_PER_SANDBOX: usize = 8;

/// The `wasi:http` hooks of one sandbox: every outgoing request goes through
/// [`WasiHttpHooks::send_request`] here, which refuses what the grant does not allow.
pub(crate) struct OutboundHttp {
    grant: Option<Arc<HttpGrant>>,
    processor: Arc<str>,
    /// Places for requests in flight or unread, made with the first allowed request.
    places: Option<Arc<tokio::sync::Semaphore>>,
    /// Whether this sandbox already logged a denial (later ones log at debug level).
    denied_once: bool,
}

impl OutboundHttp {
    pub(crate) fn new(grant: Option<Arc<HttpGrant>>, processor: Arc<str>) -> Self {
        OutboundHttp {
            grant,
            processor,
            places: None,
            denied_once: false,
        }
    }

    /// Whether no request is in flight or holding an unread response: only then may the
    /// instance wait idle for another execution.
    pub(crate) fn idle(&self) -> bool {
        self.places
            .as_ref()
            .is_none_or(|p| p.available_permits() == MAX_REQUESTS_PER_SANDBOX)
    }

    fn deny(&mut self, request: &http::Request<WasiBody>, reason: &str) {
        // The origin and path only: a query string may carry secrets.
        let uri = request.uri();
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map_or("?", |a| a.as_str()),
            uri.path()
        );
        if std::mem::replace(&mut self.denied_once, true) {
            tracing::debug!(target: "weir::http", processor = %self.processor, method = %request.method(), uri = %shown, "outbound request denied: {reason}");
        } else {
            tracing::warn!(target: "weir::http", processor = %self.processor, method = %request.method(), uri = %shown, "outbound request denied: {reason}");
        }
    }
}

/// What [`WasiHttpHooks::send_request`] returns: the response and the connection's driver.
type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let grant = match &self.grant {
            None => Err("the plugin has no [capabilities.http] grant".to_string()),
            Some(grant) => grant
                .check(request.method(), request.uri())
                .map(|()| grant.clone()),
        };
        let grant = match grant {
            Ok(grant) => grant,
            Err(reason) => {
                self.deny(&request, &reason);
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
        };
        let places = self
            .places
            .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_PER_SANDBOX)));
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!(target: "weir::http", processor = %self.processor, "outbound request refused: {MAX_REQUESTS_PER_SANDBOX} already in flight or unread");
            return Box::new(async { Err(HttpError::ConnectionLimitReached) });
        };
        Box::new(async move { send(request, options, &grant, place).await })
    }
}

/// Sends an allowed request within the grant's timeout, and reads its whole response body
/// (up to the size cap) before the guest sees the response. Reading it here, rather than
/// as the guest streams it, makes a timeout or an oversized body the request's own
/// `error-code`, which every guest language can read.
async fn send(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    grant: &HttpGrant,
    place: tokio::sync::OwnedSemaphorePermit,
) -> Sent {
    // A response to HEAD, or a 204 or 304, has no body whatever its `content-length` says.
    let head_only = request.method() == http::Method::HEAD;
    let timeout = grant.timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    // The guest may ask for shorter timeouts, never longer ones.
    let clamp = |asked: Option<Duration>| Some(asked.map_or(timeout, |d| d.min(timeout)));
    let options = options.unwrap_or_default();
    let options = RequestOptions {
        connect_timeout: clamp(options.connect_timeout),
        first_byte_timeout: clamp(options.first_byte_timeout),
        between_bytes_timeout: clamp(options.between_bytes_timeout),
    };
    let sent = tokio::time::timeout_at(deadline, send_checked(request, options, grant)).await;
    let (response, connection) = match sent {
        Ok(sent) => sent?,
        Err(_) => return Err(HttpError::HttpResponseTimeout),
    };
    let cap = grant.max_response_bytes;
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bodiless = head_only
        || matches!(
            response.status(),
            http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
        );
    if !bodiless && declared.is_some_and(|len| len > cap) {
        return Err(HttpError::HttpResponseBodySize(Some(cap)));
    }
    let (head, body) = response.into_parts();
    let capped = CappedBody {
        inner: body.boxed_unsync(),
        received: 0,
        cap,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
    };
    let collected = capped.collect().await?;
    let trailers = collected.trailers().cloned();
    let body = http_body_util::Full::new(collected.to_bytes())
        .map_err(HttpError::from)
        // The place is held until the guest has read the body or dropped it.
        .with_trailers(async move {
            drop(place);
            trailers.map(Ok)
        })
        .boxed_unsync();
    Ok((http::Response::from_parts(head, body), connection))
}

/// Whether `ip` is an address inside the host's networks rather than on the internet:
/// loopback, private (RFC 1918), link-local (cloud metadata lives there), carrier-grade NAT,
/// unique-local IPv6, unspecified, multicast, broadcast, documentation and benchmarking
/// ranges, and IPv4 ones of those written as IPv4-mapped or -compatible IPv6.
pub(crate) fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                // 100.64.0.0/10, carrier-grade NAT; 198.18.0.0/15, benchmarking; 240/4.
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4() {
                // ::ffff:a.b.c.d and ::a.b.c.d (but `::` and `::1` are themselves).
                if !v6.is_loopback() && !v6.is_unspecified() {
                    return is_internal(IpAddr::V4(v4));
                }
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (first & 0xffc0) == 0xfe80 // fe80::/10, link-local
                || (first & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
        }
    }
}

/// The TLS settings outbound requests share: the Mozilla roots (as `wasi:http`'s own
/// client), built once.
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// Sends an allowed request: resolves its host once, refuses internal addresses the grant
/// does not name, connects to a checked address (TLS verifying the name the guest used),
/// and returns the response head with the connection's driver running in a task of its
/// own (stopped when the returned future is dropped: the guest gave up, or its execution
/// ended).
async fn send_checked(
    mut request: http::Request<WasiBody>,
    options: RequestOptions,
    grant: &HttpGrant,
) -> Sent {
    use http_body_util::BodyExt as _;
    let uri = request.uri().clone();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(600));
    let addresses: Vec<std::net::SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
        Err(_) => {
            match tokio::time::timeout(connect_timeout, tokio::net::lookup_host((bare, port))).await
            {
                Err(_) => return Err(HttpError::DnsTimeout),
                Ok(Err(error)) => {
                    return Err(HttpError::DnsError {
                        rcode: Some(error.to_string()),
                        info_code: None,
                    });
                }
                Ok(Ok(found)) => found.collect(),
            }
        }
    };
    let (allowed, refused): (Vec<_>, Vec<_>) = addresses
        .into_iter()
        .partition(|a| !is_internal(a.ip()) || grant.names_address(a.ip()));
    if allowed.is_empty() {
        let Some(first) = refused.first() else {
            return Err(HttpError::DestinationNotFound);
        };
        tracing::warn!(
            target: "weir::http",
            host = %host,
            address = %first.ip(),
            "outbound request refused: the host resolves to an internal address, which the \
             grant does not name (grant the address itself to reach it)"
        );
        return Err(HttpError::DestinationIpProhibited);
    }
    // The first checked address that answers.
    let mut last_error = HttpError::ConnectionRefused;
    let mut stream = None;
    for address in allowed {
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(connected)) => {
                stream = Some(connected);
                break;
            }
            Ok(Err(error)) => last_error = HttpError::Connect(error),
            Err(_) => last_error = HttpError::ConnectionTimeout,
        }
    }
    let Some(stream) = stream else {
        return Err(last_error);
    };
    let handshake = async {
        let io: Box<dyn Stream> = if https {
            let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let tls = tls_connector()
                .connect(name, stream)
                .await
                .map_err(HttpError::Tls)?;
            Box::new(tls)
        } else {
            Box::new(stream)
        };
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(HttpError::from)
    };
    let (mut sender, connection) = tokio::time::timeout(connect_timeout, handshake)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let connection = wasmtime_wasi::runtime::spawn(connection);
    // The request line carries the path alone (the authority is in `Host`, set by wasi:http).
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let first_byte = options
        .first_byte_timeout
        .unwrap_or(Duration::from_secs(600));
    let response = tokio::time::timeout(first_byte, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
    let driver = async move {
        match connection.await {
            Ok(()) => Ok(()),
            Err(error) if error.is_timeout() => Err(HttpError::HttpResponseTimeout),
            Err(error) => Err(HttpError::from(error)),
        }
    };
    Ok((response, Box::new(driver)))
}

/// A connection outbound requests are sent on: plain TCP or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A response body that fails once it exceeds the grant's size cap or its request's
/// deadline passes, rather than being truncated or waited on forever.
struct CappedBody {
    inner: WasiBody,
    received: u64,
    cap: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(data)) = &frame
            && let Some(data) = data.data_ref()
        {
            this.received += data.len() as u64;
            if this.received > this.cap {
                return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(this.cap)))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_told_from_public_ones() {
        let internal = [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ];
        for ip in internal {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "93.184.216.34",
        ];
        for ip in public {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// `body` behind a cap of `cap` bytes and a deadline a minute away.
    fn capped(body: &'static [u8], cap: u64) -> CappedBody {
        CappedBody {
            inner: http_body_util::Full::new(Bytes::from_static(body))
                .map_err(HttpError::from)
                .boxed_unsync(),
            received: 0,
            cap,
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(60))),
        }
    }

    #[tokio::test]
    async fn a_capped_body_fails_past_its_limit() {
        let err = capped(b"xxxxxxxxxx", 9)
            .collect()
            .await
            .expect_err("over the cap");
        assert!(
            matches!(err, HttpError::HttpResponseBodySize(Some(9))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_capped_body_within_its_limit_arrives_whole() {
        let bytes = capped(b"hello", 5)
            .collect()
            .await
            .expect("within the cap")
            .to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }
}

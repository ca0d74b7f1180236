//! A plugin's outbound HTTP grant, as the operator writes it in `[capabilities.http]`:
//! parsed, checked, and matched against a request's method and URI. What the grant allows is
//! enforced, at run time, by the sandbox's `wasi:http` hooks (`crate::sandbox::outbound`).
//!
//! ```toml
//! [capabilities.http]
//! allow = [
//!     "https://api.example.com",                                  # any method, port 443
//!     { origin = "http://127.0.0.1:8080", methods = ["GET", "POST"] },
//!     "https://*.example.org:*",                                  # any subdomain, any port
//! ]
//! timeout_ms = 10000            # the whole request: connect, response head and body
//! max_response_bytes = 1048576  # a larger response fails instead of being truncated
//! ```
//!
//! An origin is `SCHEME://HOST[:PORT]`: the scheme is `http`, `https` or `*`; the host a name,
//! an IP address (`[…]` for IPv6), `*.suffix` for any subdomain, or `*`; the port a number or
//! `*`, and the scheme's own (80 or 443) when left out. Host names are matched as the guest
//! wrote them.

use std::time::Duration;

use serde::Serialize;

/// Default `timeout_ms` of a grant.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default `max_response_bytes` of a grant: 1 MiB.
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// The largest `timeout_ms` a grant may set: 5 minutes.
const MAX_TIMEOUT_MS: u64 = 300_000;
/// The largest `max_response_bytes` a grant may set: 64 MiB (the host holds a response
/// whole before the guest reads it).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// A plugin's outbound HTTP grant: which origins and methods it may reach, how long one
/// request may take and how large a response may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGrant {
    /// The origins (and methods) the plugin may send requests to.
    pub allow: Vec<HttpRule>,
    /// Milliseconds one request may take, from connecting to the end of its response body.
    pub timeout_ms: u64,
    /// The largest response body the plugin may receive, in bytes.
    pub max_response_bytes: u64,
}

/// One allowed origin, optionally limited to some methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRule {
    /// The origin as the operator wrote it.
    pub origin: String,
    /// The methods allowed (upper case), or none for any method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip)]
    scheme: SchemeMatch,
    #[serde(skip)]
    host: HostMatch,
    #[serde(skip)]
    port: PortMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemeMatch {
    Http,
    Https,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// This host exactly (lower case; IPv6 addresses in brackets).
    Exact(String),
    /// Any host ending in this suffix, which starts with a dot.
    Subdomains(String),
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    /// The scheme's own port: 80 for `http`, 443 for `https`.
    SchemeDefault,
    Exact(u16),
    Any,
}

impl HttpGrant {
    /// Parses the `[capabilities.http]` table of a manifest. The error says what to fix.
    pub(crate) fn from_toml(table: &toml::Table) -> Result<HttpGrant, String> {
        let mut allow = Vec::new();
        let mut timeout_ms = DEFAULT_TIMEOUT_MS;
        let mut max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES;
        for (key, value) in table {
            match key.as_str() {
                "allow" => {
                    let entries = value
                        .as_array()
                        .ok_or("`allow` must be a list of origins")?;
                    for entry in entries {
                        allow.push(HttpRule::from_toml(entry)?);
                    }
                }
                "timeout_ms" => timeout_ms = integer(value, key, 1, MAX_TIMEOUT_MS)?,
                "max_response_bytes" => {
                    max_response_bytes = integer(value, key, 1, MAX_RESPONSE_BYTES)?;
                }
                other => {
                    return Err(format!(
                        "unknown field `{other}`; expected `allow`, `timeout_ms` or \
                         `max_response_bytes`"
                    ));
                }
            }
        }
        Ok(HttpGrant {
            allow,
            timeout_ms,
            max_response_bytes,
        })
    }

    /// How long one request may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Whether the grant lets a guest send `method` to `uri`; the error says why not.
    pub fn check(&self, method: &http::Method, uri: &http::Uri) -> Result<(), String> {
        let (Some(scheme), Some(host), Some(authority)) =
            (uri.scheme_str(), uri.host(), uri.authority())
        else {
            return Err("the request has no scheme or host".to_string());
        };
        if authority.as_str().contains('@') {
            return Err(
                "the URL carries user information (`user@`); send credentials in a header"
                    .to_string(),
            );
        }
        let scheme = scheme.to_ascii_lowercase();
        let host = canonical_host(host);
        let port = match (uri.port_u16(), scheme.as_str()) {
            (Some(port), _) => port,
            (None, "https") => 443,
            (None, _) => 80,
        };
        let mut origin_allowed = false;
        for rule in &self.allow {
            if rule.matches_origin(&scheme, &host, port) {
                origin_allowed = true;
                if rule.allows_method(method) {
                    return Ok(());
                }
            }
        }
        if origin_allowed {
            Err(format!(
                "{method} is not among the methods granted for {scheme}://{host}:{port}"
            ))
        } else {
            Err(format!(
                "{scheme}://{host}:{port} is not in its [capabilities.http] allow list"
            ))
        }
    }
}

fn integer(value: &toml::Value, key: &str, min: u64, max: u64) -> Result<u64, String> {
    value
        .as_integer()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("`{key}` must be a whole number from {min} to {max}"))
}

impl HttpRule {
    fn from_toml(entry: &toml::Value) -> Result<HttpRule, String> {
        match entry {
            toml::Value::String(origin) => HttpRule::parse(origin, None),
            toml::Value::Table(table) => {
                let mut origin = None;
                let mut methods = None;
                for (key, value) in table {
                    match key.as_str() {
                        "origin" => {
                            origin = Some(value.as_str().ok_or("`origin` must be a string")?);
                        }
                        "methods" => {
                            let list = value
                                .as_array()
                                .ok_or("`methods` must be a list of method names")?;
                            let mut names = Vec::with_capacity(list.len());
                            for name in list {
                                names.push(method_name(name)?);
                            }
                            if names.is_empty() {
                                return Err("`methods` must name at least one method (leave it \
                                            out to allow any)"
                                    .to_string());
                            }
                            methods = Some(names);
                        }
                        other => {
                            return Err(format!(
                                "unknown field `{other}` in an `allow` entry; expected `origin` \
                                 or `methods`"
                            ));
                        }
                    }
                }
                let origin = origin.ok_or("an `allow` entry needs an `origin`")?;
                HttpRule::parse(origin, methods)
            }
            _ => Err(
                "each `allow` entry is an origin such as \"https://api.example.com\", or \
                 { origin = \"…\", methods = [\"GET\"] }"
                    .to_string(),
            ),
        }
    }

    /// Parses `SCHEME://HOST[:PORT]`.
    fn parse(origin: &str, methods: Option<Vec<String>>) -> Result<HttpRule, String> {
        let bad = |why: &str| format!("origin `{origin}`: {why}");
        let (scheme, rest) = origin
            .split_once("://")
            .ok_or_else(|| bad("write it as SCHEME://HOST[:PORT], e.g. https://api.example.com"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => SchemeMatch::Http,
            "https" => SchemeMatch::Https,
            "*" => SchemeMatch::Any,
            _ => return Err(bad("the scheme must be `http`, `https` or `*`")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "grants name an origin (scheme, host and port), not a path, query or user",
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|why| bad(&why))?;
        let port = match port {
            None => PortMatch::SchemeDefault,
            Some("*") => PortMatch::Any,
            Some(p) => PortMatch::Exact(
                p.parse()
                    .map_err(|_| bad(&format!("`{p}` is not a port number or `*`")))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            valid_host(suffix).map_err(|why| bad(&why))?;
            HostMatch::Subdomains(format!(".{suffix}"))
        } else {
            valid_host(&host).map_err(|why| bad(&why))?;
            HostMatch::Exact(canonical_host(&host))
        };
        Ok(HttpRule {
            origin: origin.to_string(),
            methods,
            scheme,
            host,
            port,
        })
    }

    fn matches_origin(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme {
            SchemeMatch::Http => scheme == "http",
            SchemeMatch::Https => scheme == "https",
            SchemeMatch::Any => true,
        };
        let host_ok = match &self.host {
            HostMatch::Exact(h) => h == host,
            HostMatch::Subdomains(suffix) => host.ends_with(suffix.as_str()),
            HostMatch::Any => true,
        };
        let port_ok = match self.port {
            PortMatch::SchemeDefault => match scheme {
                "https" => port == 443,
                _ => port == 80,
            },
            PortMatch::Exact(p) => p == port,
            PortMatch::Any => true,
        };
        scheme_ok && host_ok && port_ok
    }

    fn allows_method(&self, method: &http::Method) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|names| names.iter().any(|m| m == method.as_str()))
    }
}

/// Splits `host[:port]`, with IPv6 addresses in brackets.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or("an IPv6 address must end with `]`")?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => rest
                .strip_prefix(':')
                .map(|port| (host, Some(port)))
                .ok_or_else(|| "expected `:PORT` after the IPv6 address".to_string()),
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// A host as compared: lower case, and an IPv6 address in its one canonical form, so that
/// `[0::1]` and `[::1]` are the same host.
fn canonical_host(host: &str) -> String {
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    match bracketed.and_then(|h| h.parse::<std::net::Ipv6Addr>().ok()) {
        Some(ip) => format!("[{ip}]"),
        None => host.to_ascii_lowercase(),
    }
}

fn valid_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') {
        return host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("`{host}` is not an IPv6 address"));
    }
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name (letters, digits, `-` and `.`; `*.` may start it)"
        ))
    }
}

fn method_name(value: &toml::Value) -> Result<String, String> {
    let name = value.as_str().ok_or("each method must be a string")?;
    let upper = name.to_ascii_uppercase();
    http::Method::from_bytes(upper.as_bytes())
        .map_err(|_| format!("`{name}` is not an HTTP method"))?;
    Ok(upper)
}

impl HttpGrant {
    /// Whether a rule names `ip` itself as its host (not a name that resolves to it, and
    /// not `*`): the operator's explicit leave to reach an internal address.
    pub(crate) fn names_address(&self, ip: std::net::IpAddr) -> bool {
        self.allow.iter().any(|rule| match &rule.host {
            HostMatch::Exact(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|named| named == ip),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rule_naming_the_address_itself_grants_an_internal_one() {
        let grant = grant(
            "allow = [\"http://localhost:8080\", \"http://10.0.0.7:*\", \"https://[fd00::1]\", \"*://*:*\"]",
        )
        .unwrap();
        assert!(grant.names_address("10.0.0.7".parse().unwrap()));
        assert!(grant.names_address("fd00::1".parse().unwrap()));
        assert!(
            !grant.names_address("127.0.0.1".parse().unwrap()),
            "a name is not the address"
        );
        assert!(
            !grant.names_address("10.0.0.8".parse().unwrap()),
            "`*` names nothing"
        );
    }

    fn grant(text: &str) -> Result<HttpGrant, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        HttpGrant::from_toml(&table)
    }

    fn verdict(grant: &HttpGrant, method: &str, uri: &str) -> Result<(), String> {
        let method = http::Method::from_bytes(method.as_bytes()).expect("a method");
        let uri: http::Uri = uri.parse().expect("a URI");
        grant.check(&method, &uri)
    }

    fn allows(grant: &HttpGrant, method: &str, uri: &str) -> bool {
        verdict(grant, method, uri).is_ok()
    }

    #[test]
    fn an_origin_allows_its_scheme_host_and_default_port_only() {
        let g = grant(r#"allow = ["https://api.example.com"]"#).expect("valid");
        assert!(allows(&g, "GET", "https://api.example.com/v1/x?q=1"));
        assert!(allows(&g, "POST", "https://API.example.com:443/"));
        assert!(!allows(&g, "GET", "http://api.example.com/"));
        assert!(!allows(&g, "GET", "https://api.example.com:8443/"));
        assert!(!allows(&g, "GET", "https://evil.example.com/"));
        assert!(!allows(&g, "GET", "https://api.example.com.evil.net/"));
    }

    #[test]
    fn methods_limit_an_origin() {
        let g =
            grant(r#"allow = [{ origin = "http://127.0.0.1:8080", methods = ["get", "POST"] }]"#)
                .expect("valid");
        assert!(allows(&g, "GET", "http://127.0.0.1:8080/a"));
        assert!(allows(&g, "POST", "http://127.0.0.1:8080/a"));
        let why = verdict(&g, "DELETE", "http://127.0.0.1:8080/a").expect_err("denied");
        assert!(why.contains("DELETE is not among the methods"), "{why}");
    }

    #[test]
    fn wildcards_cover_subdomains_ports_and_schemes() {
        let g = grant(r#"allow = ["*://*.example.org:*", "http://[::1]:9000"]"#).expect("valid");
        assert!(allows(&g, "GET", "https://a.example.org/"));
        assert!(allows(&g, "GET", "http://a.b.example.org:1234/"));
        assert!(!allows(&g, "GET", "https://example.org/"));
        assert!(!allows(&g, "GET", "https://badexample.org/"));
        assert!(allows(&g, "GET", "http://[::1]:9000/"));
        assert!(!allows(&g, "GET", "http://[::1]:9001/"));
    }

    #[test]
    fn user_information_and_other_spellings_cannot_slip_through() {
        let g =
            grant(r#"allow = ["https://api.example.com", "http://[::1]:9000"]"#).expect("valid");
        assert!(!allows(&g, "GET", "https://x@api.example.com/"));
        assert!(!allows(&g, "GET", "https://api.example.com@evil.net/"));
        assert!(!allows(&g, "GET", "https://api.example.com.evil.net/"));
        assert!(allows(&g, "GET", "HTTPS://api.example.com:0443/"));
        assert!(allows(&g, "GET", "http://[0:0::1]:9000/"));
        let g = grant(r#"allow = ["http://[0::1]:9000"]"#).expect("valid");
        assert!(allows(&g, "GET", "http://[::1]:9000/"));
    }

    #[test]
    fn an_empty_grant_denies_everything_and_says_why() {
        let g = grant("").expect("valid");
        assert_eq!(g.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(g.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
        let why = verdict(&g, "GET", "http://127.0.0.1:1/").expect_err("denied");
        assert!(why.contains("http://127.0.0.1:1 is not in its"), "{why}");
    }

    #[test]
    fn bad_grants_say_what_to_fix() {
        for (text, expected) in [
            (r#"allow = ["api.example.com"]"#, "SCHEME://HOST"),
            (r#"allow = ["ftp://x.org"]"#, "scheme must be"),
            (r#"allow = ["https://x.org/path"]"#, "not a path"),
            (r#"allow = ["https://x.org:http"]"#, "not a port"),
            (r#"allow = ["https://x y.org"]"#, "not a host name"),
            (r#"allow = ["https://[::1"]"#, "must end with `]`"),
            (
                r#"allow = [{ origin = "https://x.org", methods = ["GE T"] }]"#,
                "not an HTTP method",
            ),
            (
                r#"allow = [{ origin = "https://x.org", methods = [] }]"#,
                "at least one",
            ),
            (r#"allow = [{ methods = ["GET"] }]"#, "needs an `origin`"),
            (r#"allow = [3]"#, "each `allow` entry"),
            ("timeout_ms = 0", "from 1 to"),
            ("max_response_bytes = -1", "from 1 to"),
            ("allowed = []", "unknown field `allowed`"),
        ] {
            let why = grant(text).expect_err(text);
            assert!(why.contains(expected), "{text}: {why}");
        }
    }
}

//! Per-route policies (`max-body`, `timeout`, `buffering`, `health`, `headers.*`, `proto`,
//! `redirect`, `www`; `auth` and `rate` in `access.rs`): their validated value types and the
//! [`Policy`] a location carries. Like `grammar.rs`, each value can only be built by its parser
//! and renders as one nginx token; a header value or a redirect target, which may hold characters
//! nginx reads specially, only through [`nginx_literal`].

use std::fmt;

use serde::Serialize;
use thiserror::Error;

use super::grammar::{parse_bool, show, DomainName, Host, PathPrefix, Port, ValueError};

/// What each policy value allows, in words (error messages, the label schema, the JSON Schema).
pub mod allowed {
    pub const SIZE: &str =
        "a size in bytes with an optional unit k, m or g (50m, 10g), at most 1024g; 0 means unlimited";
    pub const TIMEOUT: &str = "a duration of 1s to 24h with a unit s, m or h (300s, 5m, 1h)";
    pub const HEALTH: &str = "a path like /health (letters, digits and / . _ ~ -), or off";
    pub const ON_OFF: &str = "on or off (also true/false)";
    pub const BALANCE: &str = "round-robin, least-conn, ip-hash or random";
    pub const HSTS: &str =
        "off, or a max-age in seconds with optional flags: 63072000 or 63072000,includeSubDomains,preload";
    pub const HEADER_NAME: &str = "letters, digits and '-', starting with a letter or digit, at most 64 characters";
    pub const HEADER_VALUE: &str =
        "printable ASCII characters (quotes, ';', '$' and spaces included), at most 4096; empty removes the header";
    pub const PROTO: &str = "http, https, h2c, grpc, grpcs, fastcgi or uwsgi";
    pub const BACKEND_VERIFY: &str =
        "off, on (the certificate must name the service's host), or the host name the certificate must name";
    pub const REDIRECT: &str = "an http:// or https:// URL with a host, an optional port, path and query, at most 2048 characters, without spaces, quotes, '#', '{', '}', '\\', '<', '>', '^', '`', '|' or control characters";
    pub const REDIRECT_CODE: &str = "301, 302, 307 or 308";
    pub const WWW: &str = "to-apex or to-www";
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("size {value:?} is not allowed; must be {}", allowed::SIZE)]
    Size { value: String },
    #[error("timeout {value:?} is not allowed; must be {}", allowed::TIMEOUT)]
    Timeout { value: String },
    #[error("health {value:?} is not allowed: {reason}; must be {}", allowed::HEALTH)]
    Health { value: String, reason: String },
    #[error("{value:?} is not allowed; must be {}", allowed::ON_OFF)]
    OnOff { value: String },
    #[error("lb {value:?} is not allowed; must be {}", allowed::BALANCE)]
    Balance { value: String },
    #[error("hsts {value:?} is not allowed: {reason}; must be {}", allowed::HSTS)]
    Hsts { value: String, reason: String },
    #[error("header name {value:?} is not allowed: {reason}; a header name uses {}", allowed::HEADER_NAME)]
    HeaderName { value: String, reason: String },
    #[error("header value {value:?} is not allowed: {reason}; a value uses {}", allowed::HEADER_VALUE)]
    HeaderValue { value: String, reason: String },
    #[error("proto {value:?} is not allowed; must be {}", allowed::PROTO)]
    Proto { value: String },
    #[error("backend-verify {value:?} is not allowed: {reason}; must be {}", allowed::BACKEND_VERIFY)]
    BackendVerify { value: String, reason: String },
    #[error("redirect {value:?} is not allowed: {reason}; must be {}", allowed::REDIRECT)]
    Redirect { value: String, reason: String },
    #[error("redirect code {value:?} is not allowed; must be {}", allowed::REDIRECT_CODE)]
    RedirectCode { value: String },
    #[error("www {value:?} is not allowed; must be {}", allowed::WWW)]
    Www { value: String },
    #[error("www cannot apply to {domain}: {reason}")]
    WwwDomain { domain: String, reason: String },
}

/// A body size for `client_max_body_size`: a number with an optional unit, kept as nginx reads it
/// (`0`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size {
    number: u64,
    unit: Option<char>,
}

impl Size {
    pub fn parse(input: &str) -> Result<Size, PolicyError> {
        let text = input.trim().to_ascii_lowercase();
        let bad = || PolicyError::Size { value: show(input.trim()) };
        let (digits, unit) = match text.char_indices().last() {
            Some((i, c @ ('k' | 'm' | 'g'))) => (&text[..i], Some(c)),
            _ => (text.as_str(), None),
        };
        if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let size = Size { number, unit };
        if size.bytes() > 1024 << 30 {
            return Err(bad());
        }
        Ok(size)
    }

    pub fn bytes(&self) -> u64 {
        let shift = match self.unit {
            Some('k') => 10,
            Some('m') => 20,
            Some('g') => 30,
            _ => 0,
        };
        self.number.saturating_mul(1 << shift)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number)?;
        match self.unit {
            Some(unit) => write!(f, "{unit}"),
            None => Ok(()),
        }
    }
}

/// A proxy read/send timeout, 1 s to 24 h, rendered in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeout {
    seconds: u32,
}

impl Timeout {
    pub fn parse(input: &str) -> Result<Timeout, PolicyError> {
        let text = input.trim().to_ascii_lowercase();
        let bad = || PolicyError::Timeout { value: show(input.trim()) };
        let (digits, scale) = match text.char_indices().last() {
            Some((i, 's')) => (&text[..i], 1),
            Some((i, 'm')) => (&text[..i], 60),
            Some((i, 'h')) => (&text[..i], 3600),
            _ => return Err(bad()),
        };
        if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let seconds = digits.parse::<u32>().map_err(|_| bad())? * scale;
        if !(1..=24 * 3600).contains(&seconds) {
            return Err(bad());
        }
        Ok(Timeout { seconds })
    }

    pub fn seconds(&self) -> u32 {
        self.seconds
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.seconds)
    }
}

/// The proxy's own health answer on a domain: `200 healthy` at this exact path, or none.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    At(PathPrefix),
    Off,
}

impl Default for Health {
    fn default() -> Self {
        Health::At(PathPrefix::parse("/health").expect("a valid path"))
    }
}

impl Health {
    pub fn parse(input: &str) -> Result<Health, PolicyError> {
        let text = input.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Health::Off);
        }
        let bad = |reason: String| PolicyError::Health { value: show(text), reason };
        if text == "/" {
            return Err(bad("'/' would hide the whole site".into()));
        }
        match PathPrefix::parse(text) {
            Ok(path) => Ok(Health::At(path)),
            Err(ValueError::BadPath { reason, .. }) => Err(bad(reason)),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// The path, or `None` when off.
    pub fn path(&self) -> Option<&str> {
        match self {
            Health::At(path) => Some(path.as_str()),
            Health::Off => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path().unwrap_or("off"))
    }
}

/// Which way a header goes: to the app (`headers.request.<Name>`) or to the client
/// (`headers.response.<Name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Request,
    Response,
}

/// Request headers the proxy itself sets for every route (see the template): a label cannot
/// replace them.
const PROXY_REQUEST_HEADERS: &[&str] = &[
    "host",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "https",
    "upgrade",
    "connection",
];

/// A header name: an HTTP token, restricted to letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(input: &str, direction: Direction) -> Result<HeaderName, PolicyError> {
        let bad = |reason: &str| PolicyError::HeaderName { value: show(input), reason: reason.to_string() };
        let name = HeaderName::parse_any(input)?;
        let lower = input.to_ascii_lowercase();
        if direction == Direction::Request && PROXY_REQUEST_HEADERS.contains(&lower.as_str()) {
            return Err(bad("the proxy sets it for every route"));
        }
        if direction == Direction::Response && lower == "strict-transport-security" {
            return Err(bad("the proxy sets it on HTTPS"));
        }
        Ok(name)
    }

    /// Any header name, also one the proxy sets (a header whose value is read, not set: the
    /// `rate.key` header).
    pub fn parse_any(input: &str) -> Result<HeaderName, PolicyError> {
        let bad = |reason: &str| PolicyError::HeaderName { value: show(input), reason: reason.to_string() };
        if input.is_empty() || input.len() > 64 {
            return Err(bad("it must be 1 to 64 characters long"));
        }
        if !input.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("it must start with a letter or a digit"));
        }
        if let Some(c) = input.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }
        Ok(HeaderName(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A header value: printable ASCII, trimmed; empty removes the header.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HeaderValue(String);

impl HeaderValue {
    pub fn parse(input: &str) -> Result<HeaderValue, PolicyError> {
        let value = input.trim_matches(' ');
        let bad = |reason: String| PolicyError::HeaderValue { value: show(value), reason };
        if value.len() > 4096 {
            return Err(bad(format!("it is {} characters long", value.len())));
        }
        if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(bad(format!("it contains the character {c:?}")));
        }
        Ok(HeaderValue(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One header a route sets (or removes, with an empty value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderValue,
}

/// The variable the rendered config defines as a literal `$` (a `geo` value is not parsed for
/// variables), so that a value's `$` is never read as the start of an nginx variable.
pub const DOLLAR_VARIABLE: &str = "smartproxy_dollar";

/// `value` as one nginx string that nginx reads back as exactly `value`: in double quotes, with
/// `\` and `"` escaped (nginx's config reader unescapes them, and turns `\t`, `\n`, `\r` into
/// control characters, which escaping every backslash prevents) and each `$` written as
/// `${smartproxy_dollar}` (nginx expands variables in these values; `$` has no escape). Only
/// printable ASCII reaches here ([`HeaderValue`]).
pub fn nginx_literal(value: &str) -> String {
    nginx_literal_then(value, &[])
}

/// [`nginx_literal`] of `value` followed, inside the same quotes, by `then`: nginx syntax of the
/// template's own (variables such as `$request_uri`), never input.
pub fn nginx_literal_then(value: &str, then: &[&'static str]) -> String {
    let mut out = String::with_capacity(value.len() + 64);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => {
                out.push_str("${");
                out.push_str(DOLLAR_VARIABLE);
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out.extend(then.iter().copied());
    out.push('"');
    out
}

/// `lb`: how an upstream spreads requests over its servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    IpHash,
    Random,
}

impl Balance {
    pub fn parse(input: &str) -> Result<Balance, PolicyError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "round-robin" => Ok(Balance::RoundRobin),
            "least-conn" => Ok(Balance::LeastConn),
            "ip-hash" => Ok(Balance::IpHash),
            "random" => Ok(Balance::Random),
            _ => Err(PolicyError::Balance { value: show(input.trim()) }),
        }
    }

    /// The upstream block's directive; none for round-robin (nginx's default).
    pub fn directive(self) -> Option<&'static str> {
        match self {
            Balance::RoundRobin => None,
            Balance::LeastConn => Some("least_conn"),
            Balance::IpHash => Some("ip_hash"),
            Balance::Random => Some("random"),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::IpHash => "ip-hash",
            Balance::Random => "random",
        })
    }
}

impl Serialize for Balance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `hsts`: the `Strict-Transport-Security` header of a domain's HTTPS server, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hsts {
    Off,
    MaxAge { seconds: u32, include_subdomains: bool, preload: bool },
}

impl Default for Hsts {
    /// Two years, the header the proxy always sent.
    fn default() -> Self {
        Hsts::MaxAge { seconds: 63_072_000, include_subdomains: false, preload: false }
    }
}

impl Hsts {
    pub fn parse(input: &str) -> Result<Hsts, PolicyError> {
        let text = input.trim();
        let bad = |reason: &str| PolicyError::Hsts { value: show(text), reason: reason.to_string() };
        if text.eq_ignore_ascii_case("off") {
            return Ok(Hsts::Off);
        }
        let mut parts = text.split(',').map(str::trim);
        let seconds = parts.next().unwrap_or_default();
        if seconds.is_empty() || seconds.len() > 10 || !seconds.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("it must start with a number of seconds"));
        }
        let seconds = seconds.parse::<u32>().map_err(|_| bad("the number of seconds is too large"))?;
        let (mut include_subdomains, mut preload) = (false, false);
        for flag in parts {
            match flag.to_ascii_lowercase().as_str() {
                "includesubdomains" => include_subdomains = true,
                "preload" => preload = true,
                _ => return Err(bad(&format!("{:?} is not a flag (includeSubDomains, preload)", show(flag)))),
            }
        }
        Ok(Hsts::MaxAge { seconds, include_subdomains, preload })
    }

    /// The header's value (`max-age=63072000; includeSubDomains`), or `None` when off.
    pub fn header_value(&self) -> Option<String> {
        let Hsts::MaxAge { seconds, include_subdomains, preload } = *self else { return None };
        let mut value = format!("max-age={seconds}");
        if include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if preload {
            value.push_str("; preload");
        }
        Some(value)
    }
}

impl fmt::Display for Hsts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Hsts::Off => f.write_str("off"),
            Hsts::MaxAge { seconds, include_subdomains, preload } => {
                write!(f, "{seconds}")?;
                if include_subdomains {
                    f.write_str(",includeSubDomains")?;
                }
                if preload {
                    f.write_str(",preload")?;
                }
                Ok(())
            }
        }
    }
}

impl Serialize for Hsts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `proto`: how nginx talks to a service's servers. One per service: an upstream's kept-alive
/// connections are of one protocol, so two routes of one service share it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    #[default]
    Http,
    Https,
    /// Plain-text HTTP/2 (prior knowledge): nginx's only HTTP/2 client is its gRPC module, so an
    /// h2c app is reached through `grpc_pass` like a gRPC one.
    H2c,
    Grpc,
    Grpcs,
    Fastcgi,
    Uwsgi,
}

/// The nginx module that passes a request on, which names its directives (`grpc_read_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Proxy,
    Grpc,
    Fastcgi,
    Uwsgi,
}

impl Module {
    /// The directives' prefix: `proxy`, `grpc`, `fastcgi`, `uwsgi`.
    pub fn prefix(self) -> &'static str {
        match self {
            Module::Proxy => "proxy",
            Module::Grpc => "grpc",
            Module::Fastcgi => "fastcgi",
            Module::Uwsgi => "uwsgi",
        }
    }
}

impl Proto {
    pub fn parse(input: &str) -> Result<Proto, PolicyError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(Proto::Http),
            "https" => Ok(Proto::Https),
            "h2c" => Ok(Proto::H2c),
            "grpc" => Ok(Proto::Grpc),
            "grpcs" => Ok(Proto::Grpcs),
            "fastcgi" => Ok(Proto::Fastcgi),
            "uwsgi" => Ok(Proto::Uwsgi),
            _ => Err(PolicyError::Proto { value: show(input.trim()) }),
        }
    }

    pub fn module(self) -> Module {
        match self {
            Proto::Http | Proto::Https => Module::Proxy,
            Proto::H2c | Proto::Grpc | Proto::Grpcs => Module::Grpc,
            Proto::Fastcgi => Module::Fastcgi,
            Proto::Uwsgi => Module::Uwsgi,
        }
    }

    /// The scheme of the `*_pass` address (none for FastCGI and uwsgi, whose pass takes none).
    pub fn scheme(self) -> &'static str {
        match self {
            Proto::Http => "http://",
            Proto::Https => "https://",
            Proto::H2c | Proto::Grpc => "grpc://",
            Proto::Grpcs => "grpcs://",
            Proto::Fastcgi | Proto::Uwsgi => "",
        }
    }

    /// The connection to the app is TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Proto::Https | Proto::Grpcs)
    }

    /// Why `policy` cannot apply to a route of this protocol, if it cannot: nginx's gRPC module
    /// has no buffering to turn on or off (it always passes responses on as they come).
    pub fn rejects(self, policy: &Policy) -> Option<String> {
        if self.module() == Module::Grpc && policy.buffering.is_some() {
            return Some(format!(
                "buffering has no effect with proto {self}: nginx passes HTTP/2 and gRPC responses on as they come; remove buffering"
            ));
        }
        None
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Http => "http",
            Proto::Https => "https",
            Proto::H2c => "h2c",
            Proto::Grpc => "grpc",
            Proto::Grpcs => "grpcs",
            Proto::Fastcgi => "fastcgi",
            Proto::Uwsgi => "uwsgi",
        })
    }
}

impl Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `backend-verify`: whether nginx checks the certificate of an `https`/`grpcs` app, and against
/// which name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendVerify {
    /// Encrypted, not verified (Docker networks: apps with self-signed certificates).
    #[default]
    Off,
    /// Verified against the service's host name (a static service given by name).
    On,
    /// Verified against this name (a container is reached by its address, which nginx cannot
    /// check a certificate against).
    Name(DomainName),
}

impl BackendVerify {
    pub fn parse(input: &str) -> Result<BackendVerify, PolicyError> {
        let text = input.trim();
        match text.to_ascii_lowercase().as_str() {
            "off" | "false" => return Ok(BackendVerify::Off),
            "on" | "true" => return Ok(BackendVerify::On),
            _ => {}
        }
        let bad = |reason: String| PolicyError::BackendVerify { value: show(text), reason };
        let name = DomainName::parse(text).map_err(|e| bad(e.to_string()))?;
        if name.is_wildcard() {
            return Err(bad("a certificate is checked against one name, not a wildcard".into()));
        }
        Ok(BackendVerify::Name(name))
    }
}

impl fmt::Display for BackendVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendVerify::Off => f.write_str("off"),
            BackendVerify::On => f.write_str("on"),
            BackendVerify::Name(name) => write!(f, "{name}"),
        }
    }
}

/// How nginx reaches a service: its `proto`, the certificate check of a TLS one and the document
/// root of a FastCGI one. One per service (the first definition that sets it decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol {
    pub proto: Proto,
    pub verify: BackendVerify,
    /// `fastcgi.root`: the app's document root in its own container (`SCRIPT_FILENAME`).
    pub fastcgi_root: Option<PathPrefix>,
}

/// The document root a FastCGI app gets when `fastcgi.root` is not set: the official PHP images'.
pub const FASTCGI_ROOT: &str = "/var/www/html";

impl Protocol {
    /// Checks the settings against each other; `host` is the service's static host when it has
    /// one (a container's address is not one). The message names the key at fault.
    pub fn check(&self, host: Option<&Host>) -> Result<(), (&'static str, String)> {
        if self.verify != BackendVerify::Off && !self.proto.is_tls() {
            return Err((
                "backend-verify",
                format!("backend-verify applies to proto https or grpcs; this service's proto is {}", self.proto),
            ));
        }
        if self.verify == BackendVerify::On && !matches!(host, Some(Host::Name(_))) {
            return Err((
                "backend-verify",
                "on checks the certificate against the service's host name, and this service is reached by an IP \
                 address; name the host its certificate is for instead, as in backend-verify=app.internal"
                    .to_string(),
            ));
        }
        if self.fastcgi_root.is_some() && self.proto != Proto::Fastcgi {
            return Err((
                "fastcgi.root",
                format!("fastcgi.root applies to proto fastcgi; this service's proto is {}", self.proto),
            ));
        }
        Ok(())
    }

    /// `proto=grpcs, backend-verify=on`, for the route table and messages.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("proto={}", self.proto)];
        if self.verify != BackendVerify::Off {
            parts.push(format!("backend-verify={}", self.verify));
        }
        if let Some(root) = &self.fastcgi_root {
            parts.push(format!("fastcgi.root={root}"));
        }
        parts.join(", ")
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `grpcs, backend-verify=on`: the proto, then the other settings that differ from the defaults.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let described = self.describe();
        f.write_str(described.strip_prefix("proto=").unwrap_or(&described))
    }
}

/// A `redirect` target: an absolute http(s) URL, normalised (scheme and host in lowercase).
/// Its only characters nginx reads specially inside a quoted string are `$` and `;`, and it
/// reaches the config through [`nginx_literal`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RedirectUrl(String);

impl RedirectUrl {
    pub fn parse(input: &str) -> Result<RedirectUrl, PolicyError> {
        let text = input.trim();
        let bad = |reason: &str| PolicyError::Redirect { value: show(text), reason: reason.to_string() };
        if text.len() > 2048 {
            return Err(bad("it is longer than 2048 characters"));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_graphic()) || "\"'#{}\\<>^`|".contains(*c)) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }
        let lower = text.to_ascii_lowercase();
        let (scheme, rest) = match (lower.strip_prefix("https://"), lower.strip_prefix("http://")) {
            (Some(_), _) => ("https://", &text["https://".len()..]),
            (_, Some(_)) => ("http://", &text["http://".len()..]),
            _ => return Err(bad("it must start with http:// or https://")),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("user names and passwords in a redirect are not allowed"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((ip, "")) => (&authority[..ip.len() + 2], None),
                Some((ip, port)) => (
                    &authority[..ip.len() + 2],
                    Some(port.strip_prefix(':').ok_or_else(|| bad("a ':' must follow the IPv6 address' ']'"))?),
                ),
                None => return Err(bad("an IPv6 address must end with ']'")),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let host = Host::parse(host).map_err(|e| bad(&e.to_string()))?;
        if matches!(&host, Host::Name(n) if n.contains('*')) {
            return Err(bad("a wildcard is not a host"));
        }
        let port = match port {
            Some(port) => format!(":{}", Port::parse(port).map_err(|e| bad(&e.to_string()))?),
            None => String::new(),
        };
        let tail = if tail.starts_with('?') { format!("/{tail}") } else { tail.to_string() };
        Ok(RedirectUrl(format!("{scheme}{host}{port}{tail}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL has a query (`?`): a path appended to it would land inside the query.
    pub fn has_query(&self) -> bool {
        self.0.contains('?')
    }
}

impl fmt::Display for RedirectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `redirect.code`: the status of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RedirectCode(u16);

impl RedirectCode {
    pub const MOVED_PERMANENTLY: RedirectCode = RedirectCode(301);

    pub fn parse(input: &str) -> Result<RedirectCode, PolicyError> {
        match input.trim() {
            "301" => Ok(RedirectCode(301)),
            "302" => Ok(RedirectCode(302)),
            "307" => Ok(RedirectCode(307)),
            "308" => Ok(RedirectCode(308)),
            other => Err(PolicyError::RedirectCode { value: show(other) }),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl Default for RedirectCode {
    fn default() -> Self {
        RedirectCode::MOVED_PERMANENTLY
    }
}

impl fmt::Display for RedirectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a redirecting domain sends its clients.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RedirectTo {
    /// `redirect`: a URL.
    Url(RedirectUrl),
    /// `www`: the canonical name of the domain, on this proxy (its scheme and port).
    Canonical(DomainName),
}

/// A whole domain redirecting: every request but the ACME challenge and the health answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Redirect {
    pub to: RedirectTo,
    pub code: RedirectCode,
    /// The request's path and query are appended to the target.
    pub keep_path: bool,
}

impl Redirect {
    /// A `redirect` label's or field's target with its options; a target with a query cannot
    /// keep the path (it would land in the query).
    pub fn to_url(url: RedirectUrl, code: Option<RedirectCode>, keep_path: Option<bool>) -> Result<Redirect, String> {
        let keep_path = keep_path.unwrap_or(true);
        if keep_path && url.has_query() {
            return Err(format!(
                "redirect {:?} has a query, and the request's path would be appended after it; set redirect.keep-path=false, or drop the query",
                show(url.as_str())
            ));
        }
        Ok(Redirect { to: RedirectTo::Url(url), code: code.unwrap_or_default(), keep_path })
    }

    /// The canonical-name redirect of `www` (301, path and query kept).
    pub fn to_canonical(name: DomainName) -> Redirect {
        Redirect { to: RedirectTo::Canonical(name), code: RedirectCode::MOVED_PERMANENTLY, keep_path: true }
    }

    /// The `Location` as one nginx string: the target (`base`: the URL, or the canonical name's
    /// `scheme://name:port`), without a trailing `/` when the path is kept, then `$request_uri`.
    pub fn location(&self, base: &str) -> String {
        let base = if self.keep_path { base.trim_end_matches('/') } else { base };
        let mut literal = nginx_literal(base);
        if self.keep_path {
            literal.insert_str(literal.len() - 1, "$request_uri");
        }
        literal
    }
}

impl fmt::Display for Redirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.to {
            RedirectTo::Url(url) => write!(f, "{url}")?,
            RedirectTo::Canonical(name) => write!(f, "{name}")?,
        }
        write!(f, " ({}, {})", self.code, if self.keep_path { "path kept" } else { "path dropped" })
    }
}

impl Serialize for Redirect {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `www`: which of a name and its `www.` twin is canonical; the other redirects to it (301).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Www {
    ToApex,
    ToWww,
}

impl Www {
    pub fn parse(input: &str) -> Result<Www, PolicyError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "to-apex" => Ok(Www::ToApex),
            "to-www" => Ok(Www::ToWww),
            _ => Err(PolicyError::Www { value: show(input.trim()) }),
        }
    }

    /// `(canonical, other)` for `domain`, whichever of the two it is: `example.com` and
    /// `www.example.com` in the order this setting puts them.
    pub fn names(self, domain: &DomainName) -> Result<(DomainName, DomainName), PolicyError> {
        let bad = |reason: &str| PolicyError::WwwDomain { domain: domain.to_string(), reason: reason.to_string() };
        if domain.is_wildcard() {
            return Err(bad("a wildcard has no www twin"));
        }
        let apex = domain.as_str().strip_prefix("www.").unwrap_or(domain.as_str());
        if !apex.contains('.') {
            return Err(bad("its apex would be a single label"));
        }
        let apex = DomainName::parse(apex).map_err(|e| bad(&e.to_string()))?;
        let www = DomainName::parse(&format!("www.{apex}")).map_err(|e| bad(&e.to_string()))?;
        Ok(match self {
            Www::ToApex => (apex, www),
            Www::ToWww => (www, apex),
        })
    }
}

impl fmt::Display for Www {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Www::ToApex => "to-apex",
            Www::ToWww => "to-www",
        })
    }
}

impl Serialize for Www {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The regular expression of a `rewrite` that removes the location prefix `path` (`/api/` or
/// `/api`): `/api` → `/`, `/api/x` → `/x`; `/apix` does not match and passes unchanged. A path
/// holds only letters, digits and `/ . _ ~ -`, of which only `.` means something in a regex.
pub fn strip_prefix_regex(path: &str) -> String {
    format!("^{}(?:/(.*))?$", path.trim_end_matches('/').replace('.', "\\."))
}

/// `buffering`: `on`/`off` (the yes/no spellings too).
pub fn parse_on_off(input: &str) -> Result<bool, PolicyError> {
    parse_bool(input).map_err(|_| PolicyError::OnOff { value: show(input.trim()) })
}

/// What a location does beyond routing; `None` fields keep nginx's defaults as the template
/// writes them (1m bodies, 60 s timeouts, buffering on), empty header lists add nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Policy {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display_opt")]
    pub max_body: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display_opt")]
    pub timeout: Option<Timeout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffering: Option<bool>,
    /// The location prefix is removed before the request reaches the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    /// Sent to the app (`proxy_set_header`), by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<Header>,
    /// Sent to the client (`add_header … always`; an empty value hides the app's), by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<Header>,
    /// `error-pages`: false leaves nginx's own pages for the errors nginx itself answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_pages: Option<bool>,
    /// `auth`: basic or forward, with the paths that bypass it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<super::access::Auth>,
    /// `rate`: `limit_req` per client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<super::access::RateLimit>,
}

impl Policy {
    pub fn is_default(&self) -> bool {
        *self == Policy::default()
    }

    /// `max-body=50m, timeout=300s`, for the route table and messages; empty when default.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(size) = self.max_body {
            parts.push(format!("max-body={size}"));
        }
        if let Some(timeout) = self.timeout {
            parts.push(format!("timeout={timeout}"));
        }
        if let Some(on) = self.buffering {
            parts.push(format!("buffering={}", if on { "on" } else { "off" }));
        }
        if let Some(on) = self.strip_prefix {
            parts.push(format!("strip-prefix={on}"));
        }
        if let Some(on) = self.error_pages {
            parts.push(format!("error-pages={}", if on { "on" } else { "off" }));
        }
        for (direction, headers) in [("request", &self.request_headers), ("response", &self.response_headers)] {
            for h in headers {
                parts.push(format!("headers.{direction}.{}={:?}", h.name.as_str(), show(h.value.as_str())));
            }
        }
        if let Some(auth) = &self.auth {
            parts.push(auth.describe());
        }
        if let Some(rate) = &self.rate {
            parts.push(rate.to_string());
        }
        parts.join(", ")
    }
}

fn display_opt<T: fmt::Display, S: serde::Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl Serialize for Health {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, shown, bytes) in [
            ("0", "0", 0),
            ("512", "512", 512),
            ("50m", "50m", 50 << 20),
            (" 10G ", "10g", 10 << 30),
            ("1k", "1k", 1024),
        ] {
            let size = Size::parse(text).unwrap();
            assert_eq!((size.to_string().as_str(), size.bytes()), (shown, bytes), "{text}");
        }
        assert_eq!(Size::parse("1024g").unwrap().bytes(), 1024 << 30);
        for bad in ["", "m", "-1", "1.5m", "10t", "1025g", "1m;", "1 m", "99999999999999999", "10mb", "$x"] {
            let e = Size::parse(bad).unwrap_err();
            assert!(e.to_string().contains("0 means unlimited"), "{bad}: {e}");
        }
    }

    #[test]
    fn timeouts() {
        for (text, shown) in [("300s", "300s"), ("5m", "300s"), ("1h", "3600s"), ("24h", "86400s"), (" 1S ", "1s")] {
            assert_eq!(Timeout::parse(text).unwrap().to_string(), shown, "{text}");
        }
        for bad in ["", "0s", "25h", "300", "1.5s", "10ms", "1d", "s", "5m;", "999999999h"] {
            let e = Timeout::parse(bad).unwrap_err();
            assert!(e.to_string().contains("1s to 24h"), "{bad}: {e}");
        }
    }

    #[test]
    fn health() {
        assert_eq!(Health::default().to_string(), "/health");
        assert_eq!(Health::parse("/healthz").unwrap().path(), Some("/healthz"));
        assert_eq!(Health::parse("OFF").unwrap(), Health::Off);
        for bad in ["/", "health", "/a b", "/x;", "/.well-known/acme-challenge/x", "/a/../b"] {
            let e = Health::parse(bad).unwrap_err();
            assert!(e.to_string().contains("or off"), "{bad}: {e}");
        }
    }

    #[test]
    fn header_names_and_values() {
        assert_eq!(HeaderName::parse("X-Frame-Options", Direction::Response).unwrap().as_str(), "X-Frame-Options");
        for bad in ["", "-x", "X Y", "X:Y", "X_Y", "Ä", &"a".repeat(65)] {
            assert!(HeaderName::parse(bad, Direction::Request).is_err(), "{bad:?}");
        }
        let e = HeaderName::parse("X-Forwarded-For", Direction::Request).unwrap_err();
        assert!(e.to_string().contains("the proxy sets it"), "{e}");
        assert!(HeaderName::parse("X-Forwarded-For", Direction::Response).is_ok());
        assert!(HeaderName::parse("Strict-Transport-Security", Direction::Response).is_err());

        let csp = r#"default-src 'self'; script-src "nonce-$abc" \x {}#"#;
        assert_eq!(HeaderValue::parse(&format!("  {csp} ")).unwrap().as_str(), csp);
        assert_eq!(HeaderValue::parse("").unwrap().as_str(), "");
        for bad in ["a\nb", "tab\there", "caf\u{e9}", "\u{7f}"] {
            let e = HeaderValue::parse(bad).unwrap_err();
            assert!(e.to_string().contains("printable ASCII"), "{bad:?}: {e}");
        }
        assert!(HeaderValue::parse(&"x".repeat(4097)).is_err());
    }

    #[test]
    fn balance_methods() {
        assert_eq!(Balance::parse(" Least-Conn ").unwrap().directive(), Some("least_conn"));
        assert_eq!(Balance::parse("round-robin").unwrap().directive(), None);
        assert_eq!(Balance::parse("ip-hash").unwrap().to_string(), "ip-hash");
        let e = Balance::parse("ip_hash").unwrap_err();
        assert!(e.to_string().contains("least-conn, ip-hash or random"), "{e}");
    }

    #[test]
    fn hsts_values() {
        assert_eq!(Hsts::default().header_value().as_deref(), Some("max-age=63072000"));
        let h = Hsts::parse("31536000, includeSubDomains ,PRELOAD").unwrap();
        assert_eq!(h.header_value().as_deref(), Some("max-age=31536000; includeSubDomains; preload"));
        assert_eq!(h.to_string(), "31536000,includeSubDomains,preload");
        assert_eq!(Hsts::parse("Off").unwrap().header_value(), None);
        for bad in ["", "1y", "63072000;preload", "63072000,includeSubdomains;x", "-1", "99999999999", "600,nosniff"] {
            let e = Hsts::parse(bad).unwrap_err();
            assert!(e.to_string().contains("optional flags"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn strip_prefix_regexes() {
        assert_eq!(strip_prefix_regex("/api/"), r"^/api(?:/(.*))?$");
        assert_eq!(strip_prefix_regex("/v1.2"), r"^/v1\.2(?:/(.*))?$");
    }

    #[test]
    fn literals_escape_quotes_backslashes_and_dollars() {
        assert_eq!(nginx_literal("plain; text {x}"), r#""plain; text {x}""#);
        assert_eq!(nginx_literal(r#"a"b\c$d"#), r#""a\"b\\c${smartproxy_dollar}d""#);
        assert_eq!(nginx_literal(r"\t$"), r#""\\t${smartproxy_dollar}""#);
        assert_eq!(nginx_literal(""), r#""""#);
    }

    #[test]
    fn protos_their_modules_and_checks() {
        assert_eq!(Proto::parse(" GRPCS ").unwrap(), Proto::Grpcs);
        assert_eq!((Proto::H2c.module(), Proto::H2c.scheme()), (Module::Grpc, "grpc://"));
        assert_eq!((Proto::Fastcgi.module().prefix(), Proto::Fastcgi.scheme()), ("fastcgi", ""));
        assert!(Proto::parse("http2").unwrap_err().to_string().contains("h2c, grpc, grpcs, fastcgi or uwsgi"));
        let unbuffered = Policy { buffering: Some(false), ..Policy::default() };
        assert!(Proto::Grpc.rejects(&unbuffered).is_some() && Proto::Uwsgi.rejects(&unbuffered).is_none());

        assert_eq!(BackendVerify::parse("ON").unwrap(), BackendVerify::On);
        assert_eq!(BackendVerify::parse("App.Internal").unwrap().to_string(), "app.internal");
        for bad in ["*.internal", "a b", "x;y"] {
            assert!(BackendVerify::parse(bad).unwrap_err().to_string().contains("or the host name"), "{bad}");
        }
        let https = |verify| Protocol { proto: Proto::Https, verify, fastcgi_root: None };
        let name = Host::parse("api.example.com").unwrap();
        let ip = Host::parse("10.0.0.5").unwrap();
        assert!(https(BackendVerify::On).check(Some(&name)).is_ok());
        assert_eq!(https(BackendVerify::On).check(Some(&ip)).unwrap_err().0, "backend-verify");
        assert_eq!(https(BackendVerify::On).check(None).unwrap_err().0, "backend-verify", "a container");
        let plain = Protocol { verify: BackendVerify::On, ..Protocol::default() };
        assert!(plain.check(Some(&name)).unwrap_err().1.contains("https or grpcs"));
        let root = Protocol { fastcgi_root: PathPrefix::parse("/app").ok(), ..Protocol::default() };
        assert_eq!(root.check(None).unwrap_err().0, "fastcgi.root");
        assert_eq!(https(BackendVerify::On).to_string(), "https, backend-verify=on");
    }

    #[test]
    fn redirect_targets_codes_and_locations() {
        for (text, normal) in [
            ("HTTPS://New.Example.com", "https://new.example.com"),
            ("http://example.org:8080/a/b;c?d=$e&f", "http://example.org:8080/a/b;c?d=$e&f"),
            ("https://[2001:db8::1]:8443/x", "https://[2001:db8::1]:8443/x"),
            ("https://example.org?q", "https://example.org/?q"),
        ] {
            assert_eq!(RedirectUrl::parse(text).unwrap().as_str(), normal, "{text}");
        }
        for bad in [
            "example.org",
            "ftp://example.org",
            "https://",
            "https://a b",
            "https://x/\"y",
            "https://x/'y",
            "https://x/{y}",
            "https://x/#top",
            "https://x/\ny",
            "https://u:p@x",
            "https://x:99999",
            "https://*.x",
            "https://x/\\",
            "https://bücher.example/",
        ] {
            let e = RedirectUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("must be an http:// or https:// URL"), "{bad:?}: {e}");
        }
        assert!(RedirectUrl::parse(&format!("https://x/{}", "a".repeat(2048))).is_err());
        assert_eq!(RedirectCode::parse("308").unwrap().get(), 308);
        assert!(RedirectCode::parse("303").unwrap_err().to_string().contains("301, 302, 307 or 308"));

        let url = |u: &str| RedirectUrl::parse(u).unwrap();
        let kept = Redirect::to_url(url("https://new.example/base/"), None, None).unwrap();
        assert_eq!(kept.location("https://new.example/base/"), r#""https://new.example/base$request_uri""#);
        let exact = Redirect::to_url(url("https://x/a$b"), RedirectCode::parse("302").ok(), Some(false)).unwrap();
        assert_eq!(exact.location("https://x/a$b"), r#""https://x/a${smartproxy_dollar}b""#);
        assert_eq!(exact.to_string(), "https://x/a$b (302, path dropped)");
        assert!(Redirect::to_url(url("https://x/?a=1"), None, None).unwrap_err().contains("keep-path=false"));
        assert!(Redirect::to_url(url("https://x/?a=1"), None, Some(false)).is_ok());
    }

    #[test]
    fn www_pairs() {
        let d = |s: &str| DomainName::parse(s).unwrap();
        let names = |www: Www, domain: &str| www.names(&d(domain)).map(|(a, b)| (a.to_string(), b.to_string()));
        let pair = |a: &str, b: &str| Ok((a.to_string(), b.to_string()));
        assert_eq!(names(Www::ToApex, "example.com"), pair("example.com", "www.example.com"));
        assert_eq!(names(Www::ToApex, "www.example.com"), pair("example.com", "www.example.com"));
        assert_eq!(names(Www::ToWww, "example.com"), pair("www.example.com", "example.com"));
        assert_eq!(names(Www::ToWww, "www.shop.example.com"), pair("www.shop.example.com", "shop.example.com"));
        assert!(names(Www::ToApex, "*.example.com").is_err());
        assert!(names(Www::ToApex, "www.localhost").is_err(), "no single-label apex");
        assert_eq!(Www::parse(" TO-WWW ").unwrap(), Www::ToWww);
        assert!(Www::parse("apex").unwrap_err().to_string().contains("to-apex or to-www"));
    }

    #[test]
    fn on_off_and_description() {
        assert_eq!(parse_on_off("off"), Ok(false));
        assert_eq!(parse_on_off("on"), Ok(true));
        assert!(parse_on_off("maybe").unwrap_err().to_string().contains("on or off"));
        let policy = Policy { max_body: Size::parse("10g").ok(), buffering: Some(false), ..Policy::default() };
        assert_eq!(policy.describe(), "max-body=10g, buffering=off");
        assert!(Policy::default().is_default() && Policy::default().describe().is_empty());
    }
}

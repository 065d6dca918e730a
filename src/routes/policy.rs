//! Per-route policies (`max-body`, `timeout`, `buffering`, `health`, `headers.*`): their
//! validated value types and the [`Policy`] a location carries. Like `grammar.rs`, each value can
//! only be built by its parser and renders as one nginx token; a header value, which may hold any
//! printable character, only through [`nginx_literal`].

use std::fmt;

use serde::Serialize;
use thiserror::Error;

use super::grammar::{parse_bool, show, PathPrefix, ValueError};

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
        if input.is_empty() || input.len() > 64 {
            return Err(bad("it must be 1 to 64 characters long"));
        }
        if !input.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("it must start with a letter or a digit"));
        }
        if let Some(c) = input.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }
        let lower = input.to_ascii_lowercase();
        if direction == Direction::Request && PROXY_REQUEST_HEADERS.contains(&lower.as_str()) {
            return Err(bad("the proxy sets it for every route"));
        }
        if direction == Direction::Response && lower == "strict-transport-security" {
            return Err(bad("the proxy sets it on HTTPS"));
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
    let mut out = String::with_capacity(value.len() + 2);
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
    fn on_off_and_description() {
        assert_eq!(parse_on_off("off"), Ok(false));
        assert_eq!(parse_on_off("on"), Ok(true));
        assert!(parse_on_off("maybe").unwrap_err().to_string().contains("on or off"));
        let policy = Policy { max_body: Size::parse("10g").ok(), buffering: Some(false), ..Policy::default() };
        assert_eq!(policy.describe(), "max-body=10g, buffering=off");
        assert!(Policy::default().is_default() && Policy::default().describe().is_empty());
    }
}

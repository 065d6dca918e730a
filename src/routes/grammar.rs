//! Strict grammars for every value that reaches the nginx config.
//!
//! Each type here can only be built through its parser, so holding one is proof that the value
//! contains nothing but the characters nginx will read as a single token. The renderer trusts these
//! types and nothing else.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;
use thiserror::Error;

/// What each value type allows, in words: the one text that error messages, the label schema
/// (`sources/label_schema.rs`: `check`'s explanations) and the JSON Schema of the config file use.
pub mod allowed {
    pub const DOMAIN: &str = "letters, digits and '-' in dot-separated labels of 1-63 characters (253 in all), an optional leading '*.' wildcard, or an international name";
    pub const PORT: &str = "a whole number from 1 to 65535";
    pub const PATH: &str = "starts with '/' and uses only letters, digits and / . _ ~ -";
    pub const CIDR: &str = "an IP address or CIDR range (like 10.0.0.0/8 or 2001:db8::/32)";
    pub const SERVICE: &str =
        "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 128 characters";
    pub const TLS: &str = "'auto' or 'off'";
    pub const BOOL: &str = "true or false";
    pub const HOST: &str = "a host name or an IP address (an IPv6 address may be in brackets)";
}

/// What was wrong with one value, and what is allowed instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("empty domain name")]
    EmptyDomain,
    #[error("domain {value:?} is not a valid host name: {reason}; allowed: {}", allowed::DOMAIN)]
    BadDomain { value: String, reason: String },
    #[error("host {value:?} is not a valid host name or IP address: {reason}")]
    BadHost { value: String, reason: String },
    #[error("port {value:?} is not a number; must be {}", allowed::PORT)]
    PortNotNumber { value: String },
    #[error("port {value} is out of range; must be 1-65535")]
    PortOutOfRange { value: String },
    #[error("path {value:?} is not allowed: {reason}; a path {}", allowed::PATH)]
    BadPath { value: String, reason: String },
    #[error("{value:?} is not {}", allowed::CIDR)]
    BadCidr { value: String },
    #[error("service name {value:?} is not allowed: {reason}; use {}", allowed::SERVICE)]
    BadServiceName { value: String, reason: String },
    #[error("tls {value:?} is not allowed; must be {}", allowed::TLS)]
    BadTls { value: String },
    #[error("{value:?} is not a boolean; must be {}", allowed::BOOL)]
    BadBool { value: String },
}

/// A value as error messages echo it: at most 80 characters, with the full length said.
pub fn show(value: &str) -> String {
    // Error messages echo the value, but never a 10k-character blob.
    const MAX: usize = 80;
    if value.chars().count() > MAX {
        let head: String = value.chars().take(MAX).collect();
        format!("{head}… ({} characters)", value.chars().count())
    } else {
        value.to_string()
    }
}

/// A validated, lowercase ASCII host name (IDN converted to punycode), optionally with a leading
/// `*.` wildcard label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ValueError::EmptyDomain);
        }
        let bad = |reason: &str| ValueError::BadDomain { value: show(trimmed), reason: reason.to_string() };
        let (wildcard, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if rest.contains('*') {
            return Err(bad("a wildcard is only allowed as the whole leftmost label, as in *.example.com"));
        }
        if rest.parse::<IpAddr>().is_ok() {
            return Err(bad("an IP address is not a domain name"));
        }
        let ascii = to_ascii_host(rest).map_err(|reason| bad(&reason))?;
        let name = if wildcard { format!("*.{ascii}") } else { ascii };
        if name.len() > 253 {
            return Err(bad("longer than 253 characters"));
        }
        Ok(DomainName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// The directory name of this domain's certificate under `live/` (certbot's layout); a
    /// wildcard `*.example.com` is stored as `_.example.com` (same length, so it always fits a
    /// file name).
    pub fn cert_name(&self) -> String {
        match self.0.strip_prefix("*.") {
            Some(rest) => format!("_.{rest}"),
            None => self.0.clone(),
        }
    }

    /// A file name stem for this domain's logs: the cert name, or for very long names a prefix
    /// plus a stable hash, so `<stem>.access.log` stays within the 255-byte file name limit.
    pub fn file_stem(&self) -> String {
        let name = self.cert_name();
        if name.len() <= 200 {
            return name;
        }
        // FNV-1a: stable across Rust versions and runs, unlike std's hasher.
        let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        format!("{}-{hash:016x}", &name[..180])
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Converts a (possibly international) host name to lowercase ASCII and checks RFC 1123.
fn to_ascii_host(input: &str) -> Result<String, String> {
    let input = input.strip_suffix('.').unwrap_or(input);
    if input.is_empty() {
        return Err("it has no labels".into());
    }
    if let Some(c) = input.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("it contains the character {c:?}"));
    }
    if input.len() > 1024 {
        return Err("far longer than 253 characters".into());
    }
    let ascii = if input.is_ascii() {
        input.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(input).map_err(|_| "it is not a valid international domain name".to_string())?
    };
    if ascii.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label {:?} is longer than 63 characters", show(label)));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(format!("it contains the character {c:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label {label:?} starts or ends with '-'"));
        }
    }
    Ok(ascii)
}

/// A backend host: an IP address or a validated host name (never a wildcard).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let trimmed = input.trim();
        let unbracketed = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if trimmed.is_empty() {
            return Err(ValueError::BadHost { value: String::new(), reason: "it is empty".into() });
        }
        to_ascii_host(trimmed).map(Host::Name).map_err(|reason| ValueError::BadHost { value: show(trimmed), reason })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A TCP port, 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    pub fn new(value: u16) -> Option<Self> {
        (value != 0).then_some(Port(value))
    }

    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let trimmed = input.trim();
        if trimmed.is_empty() || !trimmed.chars().all(|c| c.is_ascii_digit()) {
            return Err(ValueError::PortNotNumber { value: show(trimmed) });
        }
        match trimmed.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(Port(n as u16)),
            _ => Err(ValueError::PortOutOfRange { value: show(trimmed) }),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A location prefix: `/`, `/api/`, `/static/v1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn root() -> Self {
        PathPrefix("/".into())
    }

    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let trimmed = input.trim();
        let bad = |reason: &str| ValueError::BadPath { value: show(trimmed), reason: reason.into() };
        if !trimmed.starts_with('/') {
            return Err(bad("it does not start with '/'"));
        }
        if trimmed.len() > 1024 {
            return Err(bad("it is longer than 1024 characters"));
        }
        if let Some(c) = trimmed.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._~-".contains(*c))) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }
        if trimmed.split('/').any(|seg| seg == "." || seg == "..") || trimmed.contains("//") {
            return Err(bad("it contains '.', '..' or '//' segments"));
        }
        if trimmed.starts_with("/.well-known/acme-challenge") {
            return Err(bad("/.well-known/acme-challenge/ is reserved for certificate validation"));
        }
        Ok(PathPrefix(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IP address or CIDR range for `allow`, normalised (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let trimmed = input.trim();
        if let Ok(net) = IpNet::from_str(trimmed) {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(ip) = IpAddr::from_str(trimmed) {
            return Ok(Cidr(IpNet::from(ip)));
        }
        Err(ValueError::BadCidr { value: show(trimmed) })
    }

    /// Parses a comma list, skipping empty entries.
    pub fn parse_list(input: &str) -> Result<Vec<Self>, ValueError> {
        let mut out: Vec<Cidr> =
            input.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Cidr::parse).collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A single address is written without its /32 or /128.
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A service (upstream) name as users write it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let trimmed = input.trim();
        let bad = |reason: &str| ValueError::BadServiceName { value: show(trimmed), reason: reason.into() };
        if trimmed.is_empty() {
            return Err(bad("it is empty"));
        }
        if trimmed.len() > 128 {
            return Err(bad("it is longer than 128 characters"));
        }
        if !trimmed.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("it does not start with a letter or digit"));
        }
        if let Some(c) = trimmed.chars().find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c))) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }
        Ok(ServiceName(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a route is served over HTTPS (production) or plain HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Auto,
    Off,
}

impl TlsMode {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(TlsMode::Auto),
            "off" => Ok(TlsMode::Off),
            _ => Err(ValueError::BadTls { value: show(input.trim()) }),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Auto => "auto",
            TlsMode::Off => "off",
        })
    }
}

pub fn parse_bool(input: &str) -> Result<bool, ValueError> {
    match input.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ValueError::BadBool { value: show(input.trim()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(DomainName::parse(" App1.Example.COM ").unwrap().as_str(), "app1.example.com");
        assert_eq!(DomainName::parse("*.example.com").unwrap().cert_name(), "_.example.com");
        assert_eq!(DomainName::parse("bücher.example").unwrap().as_str(), "xn--bcher-kva.example");
        assert_eq!(DomainName::parse("example.com.").unwrap().as_str(), "example.com");
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a.*.com",
            "*",
            "**.a.com",
            "a b.com",
            "a;b",
            "1.2.3.4",
            "a.com;\nx",
        ] {
            assert!(DomainName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let label63 = "a".repeat(63);
        let long = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(long.len(), 253);
        assert!(DomainName::parse(&long).is_ok());
        assert!(DomainName::parse(&format!("{long}a")).is_err());
        let stem = DomainName::parse(&long).unwrap().file_stem();
        assert!(stem.len() + ".access.log".len() <= 255 && stem.starts_with("aaaa"), "{stem}");
        assert!(DomainName::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(Port::parse("8080").unwrap().get(), 8080);
        assert!(matches!(Port::parse("invalid"), Err(ValueError::PortNotNumber { .. })));
        assert!(matches!(Port::parse("99999"), Err(ValueError::PortOutOfRange { .. })));
        assert!(matches!(Port::parse("0"), Err(ValueError::PortOutOfRange { .. })));
        assert!(matches!(Port::parse("-1"), Err(ValueError::PortNotNumber { .. })));
    }

    #[test]
    fn paths_hosts_cidrs() {
        assert!(PathPrefix::parse("/api/v1/").is_ok());
        for bad in ["api", "/a b", "/a;", "/a{", "/../x", "/a//b", "/$x", "/.well-known/acme-challenge/"] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Host::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1");
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
        assert_eq!(Host::parse("App1").unwrap().to_string(), "app1");
        assert!(Host::parse("app_1").is_err());
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("192.168.1.5").unwrap().to_string(), "192.168.1.5");
        assert_eq!(Cidr::parse("2001:db8::1/32").unwrap().to_string(), "2001:db8::/32");
        assert!(Cidr::parse("all").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let msg = DomainName::parse(&"x;".repeat(5000)).unwrap_err().to_string();
        assert!(msg.len() < 600, "{msg}");
        assert!(msg.contains("10000 characters"));
    }
}

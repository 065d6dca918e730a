//! How nginx meets clients, agent-wide: IPv6 listening (`IPV6`) and the real client address
//! behind trusted proxies (`TRUSTED_PROXIES`, `REAL_IP_HEADER`).

use std::fmt;

use crate::routes::policy::{Direction, HeaderName};
use crate::routes::Cidr;

use super::{ConfigPath, RenderError};

/// Cloudflare's published edge ranges (https://www.cloudflare.com/ips/, as of [`CLOUDFLARE_IPS_DATE`]),
/// what `TRUSTED_PROXIES=cloudflare` means.
pub const CLOUDFLARE_IPS: &[&str] = &[
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
];

/// When [`CLOUDFLARE_IPS`] was taken from Cloudflare's list.
pub const CLOUDFLARE_IPS_DATE: &str = "2024-09";

/// Cloudflare's ranges as published at `CLOUDFLARE_IPS_URL`: its API's answer
/// (`{"success":true,"result":{"ipv4_cidrs":[…],"ipv6_cidrs":[…]}}`) or a list with one range per
/// line (`https://www.cloudflare.com/ips-v4`). An answer with anything else, or no range, is
/// refused whole: a partial list would stop trusting Cloudflare's other edges.
pub fn parse_ip_list(body: &str) -> Result<Vec<Cidr>, String> {
    let entries: Vec<String> = if body.trim_start().starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        if json.get("success") != Some(&serde_json::Value::Bool(true)) {
            return Err("the answer does not say success: true".into());
        }
        let mut entries = Vec::new();
        for key in ["ipv4_cidrs", "ipv6_cidrs"] {
            let list = json.pointer(&format!("/result/{key}")).and_then(|v| v.as_array());
            let list = list.ok_or_else(|| format!("result.{key} is not a list"))?;
            for v in list {
                entries.push(v.as_str().ok_or_else(|| format!("result.{key} holds {v}, not a string"))?.to_string());
            }
        }
        entries
    } else {
        body.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    };
    if entries.is_empty() {
        return Err("it lists no range".into());
    }
    if entries.len() > 10_000 {
        return Err(format!("it lists {} ranges, more than 10,000", entries.len()));
    }
    entries
        .iter()
        .map(|e| Cidr::parse(e).map_err(|_| format!("{:?} is not an IP range", crate::routes::grammar::show(e))))
        .collect()
}

/// `IPV6`: whether nginx also listens on `[::]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// On when the kernel has IPv6 (`/proc/net/if_inet6` exists); nginx fails to start on a
    /// `[::]` listener of a kernel booted without it.
    Auto,
    On,
    Off,
}

/// Where the client's address comes from when the peer is a trusted proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealIpHeader {
    Header(HeaderName),
    /// The PROXY protocol header: every listener expects it.
    ProxyProtocol,
}

impl RealIpHeader {
    pub fn parse(input: &str) -> Result<RealIpHeader, RenderError> {
        let text = input.trim();
        if text.eq_ignore_ascii_case("proxy_protocol") {
            return Ok(RealIpHeader::ProxyProtocol);
        }
        HeaderName::parse(text, Direction::Response).map(RealIpHeader::Header).map_err(|e| RenderError::Setting {
            setting: "REAL_IP_HEADER",
            value: text.to_string(),
            reason: format!("{e}; or proxy_protocol"),
        })
    }
}

impl fmt::Display for RealIpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RealIpHeader::Header(name) => f.write_str(name.as_str()),
            RealIpHeader::ProxyProtocol => f.write_str("proxy_protocol"),
        }
    }
}

/// nginx's realip setup: the client address of a request from one of `trusted` is read from
/// `header` (the right-most address not itself trusted), so `allow`, rate limits, logs and the
/// app's `X-Real-IP` see the client; from any other peer, the header is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealIp {
    pub trusted: Vec<Cidr>,
    pub header: RealIpHeader,
    /// The ranges `TRUSTED_PROXIES` names itself, and whether it names `cloudflare`.
    own: Vec<Cidr>,
    cloudflare: bool,
}

impl RealIp {
    /// `TRUSTED_PROXIES` (comma list of `cloudflare`, IPs and CIDR ranges; empty: none) with
    /// `REAL_IP_HEADER` (default `X-Forwarded-For`; `CF-Connecting-IP` when the list is only
    /// `cloudflare`).
    pub fn from_settings(trusted: &str, header: Option<&str>) -> Result<Option<RealIp>, RenderError> {
        let mut cidrs = Vec::new();
        let mut cloudflare = false;
        for entry in trusted.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.eq_ignore_ascii_case("cloudflare") {
                cloudflare = true;
                continue;
            }
            cidrs.push(Cidr::parse(entry).map_err(|_| RenderError::Setting {
                setting: "TRUSTED_PROXIES",
                value: trusted.to_string(),
                reason: format!("{entry:?} is neither an IP, a CIDR range nor cloudflare"),
            })?);
        }
        let header = header.map(str::trim).filter(|h| !h.is_empty());
        if cidrs.is_empty() && !cloudflare {
            return match header {
                Some(h) => Err(RenderError::Setting {
                    setting: "REAL_IP_HEADER",
                    value: h.to_string(),
                    reason: "it needs TRUSTED_PROXIES: the header is believed only from those peers".into(),
                }),
                None => Ok(None),
            };
        }
        let default = if cidrs.is_empty() { "CF-Connecting-IP" } else { "X-Forwarded-For" };
        let header = RealIpHeader::parse(header.unwrap_or(default))?;
        let shipped = CLOUDFLARE_IPS.iter().map(|c| Cidr::parse(c).expect("a valid shipped range")).collect();
        let mut real_ip = RealIp { trusted: Vec::new(), header, own: cidrs, cloudflare };
        real_ip.set_cloudflare(shipped);
        Ok(Some(real_ip))
    }

    /// Whether `TRUSTED_PROXIES` names `cloudflare` (whose list can be refreshed).
    pub fn trusts_cloudflare(&self) -> bool {
        self.cloudflare
    }

    /// Trusts `ranges` as Cloudflare's (when `cloudflare` is trusted at all); true when that
    /// changed the trusted list.
    pub fn set_cloudflare(&mut self, ranges: Vec<Cidr>) -> bool {
        let mut trusted = self.own.clone();
        if self.cloudflare {
            trusted.extend(ranges);
        }
        trusted.sort();
        trusted.dedup();
        let changed = trusted != self.trusted;
        self.trusted = trusted;
        changed
    }

    pub fn proxy_protocol(&self) -> bool {
        self.header == RealIpHeader::ProxyProtocol
    }
}

/// The status codes the proxy has its own page for: the errors nginx answers itself (no app:
/// 502/504, no service: 503, a rate limit: 429, no route for the path: 404).
pub const ERROR_CODES: [u16; 5] = [404, 429, 502, 503, 504];

/// `ERROR_PAGES_DIR`: branded pages `<code>.html` for [`ERROR_CODES`]; a code without a file gets
/// the built-in plain text naming the domain. nginx reads the files itself (in the companion
/// setup the directory is mounted in both containers at the same path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPages {
    pub dir: Option<ConfigPath>,
    /// The codes with a file in `dir`.
    pub files: Vec<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_and_their_header() {
        assert_eq!(RealIp::from_settings("", None).unwrap(), None);
        let cf = RealIp::from_settings("cloudflare", None).unwrap().unwrap();
        assert_eq!(cf.trusted.len(), CLOUDFLARE_IPS.len());
        assert_eq!(cf.header.to_string(), "CF-Connecting-IP");
        let mixed = RealIp::from_settings(" 10.0.0.0/8, cloudflare,192.168.1.7 ", None).unwrap().unwrap();
        assert_eq!(mixed.trusted.len(), CLOUDFLARE_IPS.len() + 2);
        assert_eq!(mixed.header.to_string(), "X-Forwarded-For");
        let pp = RealIp::from_settings("10.0.0.1", Some("PROXY_PROTOCOL")).unwrap().unwrap();
        assert!(pp.proxy_protocol());

        let e = RealIp::from_settings("10.0.0.0/8,cludflare", None).unwrap_err().to_string();
        assert!(e.contains("TRUSTED_PROXIES") && e.contains("\"cludflare\" is neither"), "{e}");
        let e = RealIp::from_settings("", Some("X-Forwarded-For")).unwrap_err().to_string();
        assert!(e.contains("needs TRUSTED_PROXIES"), "{e}");
        let e = RealIp::from_settings("10.0.0.1", Some("X-Real-IP; deny all")).unwrap_err().to_string();
        assert!(e.contains("REAL_IP_HEADER") && e.contains("proxy_protocol"), "{e}");
    }

    #[test]
    fn cloudflare_lists_are_read_whole_or_refused() {
        let api = r#"{"result":{"ipv4_cidrs":["173.245.48.0/20","103.21.244.0/22"],"ipv6_cidrs":["2400:cb00::/32"],"etag":"x"},"success":true,"errors":[],"messages":[]}"#;
        assert_eq!(parse_ip_list(api).unwrap().len(), 3);
        assert_eq!(parse_ip_list("173.245.48.0/20\n103.21.244.0/22\n\n").unwrap().len(), 2);
        for (bad, why) in [
            ("", "no range"),
            ("173.245.48.0/20\nset_real_ip_from 0.0.0.0/0;", "is not an IP range"),
            (r#"{"success":false,"result":null}"#, "success: true"),
            (r#"{"success":true,"result":{"ipv4_cidrs":[1]}}"#, "not a string"),
            ("<html>", "is not an IP range"),
        ] {
            let e = parse_ip_list(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let mut real_ip = RealIp::from_settings("cloudflare,10.0.0.1", None).unwrap().unwrap();
        assert!(real_ip.trusts_cloudflare());
        assert!(real_ip.set_cloudflare(parse_ip_list("198.51.100.0/24").unwrap()));
        assert_eq!(
            real_ip.trusted.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1", "198.51.100.0/24"]
        );
        assert!(!real_ip.set_cloudflare(parse_ip_list("198.51.100.0/24").unwrap()), "the same list changes nothing");
        let mut own = RealIp::from_settings("10.0.0.1", None).unwrap().unwrap();
        assert!(!own.trusts_cloudflare() && !own.set_cloudflare(parse_ip_list("198.51.100.0/24").unwrap()));
    }
}

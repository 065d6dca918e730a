//! This server's public addresses, for `DNS_CHECK`: `PUBLIC_IP` when it is set, else detected
//! the ways `PUBLIC_IP_DETECT` names (the host's global interface addresses, a DNS "what is my
//! address" query, an HTTP echo URL). Every way is asked and the answers are joined: behind NAT
//! the interfaces know only private addresses, and a DNS query over IPv4 learns only the IPv4
//! address. The result is cached for an hour (a failure for five minutes) and logged when it
//! changes, so a batch of orders asks once and the log says once what was found and how.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::dns;

/// How long detected addresses are trusted before they are detected again.
pub const DETECT_TTL: Duration = Duration::from_secs(3600);
/// How long after a failed detection it is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);
/// The bound on one HTTP echo request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// OpenDNS answers an A (AAAA) query for this name with the address the query came from.
pub const OPENDNS_NAME: &str = "myip.opendns.com";
/// resolver1.opendns.com, over IPv4 and IPv6 (each learns the address of its own family).
pub const OPENDNS_SERVERS: [IpAddr; 2] =
    [IpAddr::V4(Ipv4Addr::new(208, 67, 222, 222)), IpAddr::V6(Ipv6Addr::new(0x2620, 0x119, 0x35, 0, 0, 0, 0, 0x35))];

/// One way to learn this server's public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// The host's global interface addresses (see [`is_global`]).
    Interfaces,
    /// An A and AAAA query for `name` at `server`, which answers with the asker's address.
    Dns { name: String, server: SocketAddr },
    /// A GET whose body is the asker's address.
    Http { url: String },
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Interfaces => f.write_str("interface addresses"),
            Method::Dns { name, server } => write!(f, "DNS query {name} @{server}"),
            Method::Http { url } => write!(f, "HTTP GET {url}"),
        }
    }
}

/// `PUBLIC_IP_DETECT`: `off`, or a comma-separated list of `interfaces`, `dns` (OpenDNS:
/// `myip.opendns.com` at 208.67.222.222 and 2620:119:35::35), `dns:NAME@SERVER` (SERVER `ip` or
/// `ip:port`) and `http://` or `https://` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIpDetect {
    pub methods: Vec<Method>,
}

pub const DETECT_DEFAULT: &str = "interfaces,dns";

const DETECT_USAGE: &str = "PUBLIC_IP_DETECT must be off or a comma-separated list of interfaces, dns (OpenDNS), \
     dns:NAME@SERVER (SERVER ip or ip:port, e.g. dns:myip.opendns.com@208.67.222.222) and http(s)://URL";

impl FromStr for PublicIpDetect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |entry: &str, why: &str| format!("{DETECT_USAGE}; {:?} {why}", crate::routes::grammar::show(entry));
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(PublicIpDetect { methods: Vec::new() });
        }
        let mut methods = Vec::new();
        for entry in s.split(',').map(str::trim) {
            let lower = entry.to_ascii_lowercase();
            if lower == "interfaces" {
                methods.push(Method::Interfaces);
            } else if lower == "dns" {
                methods.extend(
                    OPENDNS_SERVERS
                        .iter()
                        .map(|ip| Method::Dns { name: OPENDNS_NAME.into(), server: SocketAddr::new(*ip, 53) }),
                );
            } else if lower.starts_with("dns:") {
                let (name, server) = entry[4..].split_once('@').ok_or_else(|| bad(entry, "names no @SERVER"))?;
                let name = name.trim().trim_end_matches('.');
                let valid_name = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    });
                if !valid_name {
                    return Err(bad(entry, "has no valid DNS name before @"));
                }
                let server = dns::parse_server(server).map_err(|_| bad(entry, "has no ip or ip:port after @"))?;
                methods.push(Method::Dns { name: name.to_ascii_lowercase(), server });
            } else if lower.starts_with("http://") || lower.starts_with("https://") {
                let url = reqwest::Url::parse(entry).map_err(|e| bad(entry, &format!("is not a URL ({e})")))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad(entry, "has no host"));
                }
                methods.push(Method::Http { url: entry.to_string() });
            } else if lower == "off" {
                return Err(bad(entry, "must stand alone"));
            } else {
                return Err(bad(entry, "is none of these"));
            }
        }
        methods.dedup();
        Ok(PublicIpDetect { methods })
    }
}

impl PublicIpDetect {
    pub fn is_off(&self) -> bool {
        self.methods.is_empty()
    }
}

/// Pure: whether `ip` can be this server's address on the internet: not loopback, unspecified,
/// private (RFC 1918), shared (100.64/10, carrier-grade NAT), link-local, documentation,
/// benchmarking, reserved, broadcast or multicast; for IPv6, global unicast (2000::/3) outside
/// documentation (2001:db8::/32), so no ULA (fc00::/7), link-local (fe80::/10) or v4-mapped.
pub fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(&IpAddr::V4(v4));
            }
            let s = v6.segments();
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The host's global interface addresses (sorted, without duplicates).
pub fn interface_addresses() -> Result<Vec<IpAddr>, String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs failed: {e}"))?;
    let mut found: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(is_global)
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// What one method found: addresses, or why not.
async fn ask(method: &Method) -> Result<Vec<IpAddr>, String> {
    match method {
        Method::Interfaces => {
            let found = interface_addresses()?;
            if found.is_empty() {
                Err("no global address on any interface".into())
            } else {
                Ok(found)
            }
        }
        Method::Dns { name, server } => {
            let found = dns::whoami(name, *server).await?;
            if found.is_empty() {
                Err("no A or AAAA record in the answer".into())
            } else {
                Ok(found)
            }
        }
        Method::Http { url } => http_echo(url).await,
    }
}

async fn http_echo(url: &str) -> Result<Vec<IpAddr>, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("nginx-smart-proxy/", env!("CARGO_PKG_VERSION")))
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let body = response.text().await.map_err(|e| e.without_url().to_string())?;
    let text = body.trim();
    text.parse::<IpAddr>()
        .map(|ip| vec![ip])
        .map_err(|_| format!("the answer is not an IP address: {:?}", crate::routes::grammar::show(text)))
}

/// Where the addresses came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    PublicIp,
    /// The methods that found addresses (with their share when several did).
    Detected {
        via: String,
    },
}

/// This server's public addresses and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub addrs: Vec<IpAddr>,
    pub source: Source,
}

impl Known {
    pub fn list(&self) -> String {
        self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// For messages: `PUBLIC_IP (203.0.113.7)`, or `this server's 203.0.113.7 (detected via DNS
    /// query myip.opendns.com @208.67.222.222:53)`.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::PublicIp => format!("PUBLIC_IP ({})", self.list()),
            Source::Detected { via } => format!("this server's {} (detected via {via})", self.list()),
        }
    }
}

/// `PUBLIC_IP`, or the detected addresses, cached.
pub struct PublicIps {
    explicit: Vec<IpAddr>,
    detect: PublicIpDetect,
    /// The last detection's outcome (None: it failed) and when it is to be repeated.
    cache: Mutex<Option<(Option<Known>, Instant)>>,
}

impl PublicIps {
    pub fn new(explicit: Vec<IpAddr>, detect: PublicIpDetect) -> Self {
        PublicIps { explicit, detect, cache: Mutex::new(None) }
    }

    /// Neither `PUBLIC_IP` nor a way to detect it.
    pub fn detection_off(&self) -> bool {
        self.explicit.is_empty() && self.detect.is_off()
    }

    /// This server's addresses: `PUBLIC_IP` if set (nothing is asked), else the cached detection,
    /// detected again once stale. `None`: neither set nor detected; the caller skips the check.
    /// What was found is logged when it changes; a failure once until a detection succeeds.
    pub async fn get(&self) -> Option<Known> {
        if !self.explicit.is_empty() {
            return Some(Known { addrs: self.explicit.clone(), source: Source::PublicIp });
        }
        if self.detect.is_off() {
            return None;
        }
        // Held while detecting: concurrent orders wait for one detection and share it.
        let mut cache = self.cache.lock().await;
        if let Some((known, until)) = cache.as_ref() {
            if Instant::now() < *until {
                return known.clone();
            }
        }
        let detected = self.detect_now().await;
        let previous = cache.take().map(|(known, _)| known);
        match (&detected, previous) {
            (Ok(now), Some(Some(before))) if now.addrs == before.addrs => {
                debug!("public addresses unchanged: {}", now.describe())
            }
            (Ok(now), _) => {
                let via = match &now.source {
                    Source::Detected { via } => via.as_str(),
                    Source::PublicIp => "PUBLIC_IP",
                };
                info!("public addresses detected via {via}: {}", now.list())
            }
            (Err(why), Some(None)) => debug!("public address detection failed again: {why}"),
            (Err(why), _) => warn!(
                "public address detection found nothing ({why}); DNS checks are skipped until it succeeds \
                 (tried again every {}): set PUBLIC_IP to this server's public addresses, or PUBLIC_IP_DETECT to a \
                 way that works here (DNS_CHECK=off to not check)",
                humantime::format_duration(RETRY_AFTER_FAILURE)
            ),
        }
        let known = detected.ok();
        let ttl = if known.is_some() { DETECT_TTL } else { RETRY_AFTER_FAILURE };
        *cache = Some((known.clone(), Instant::now() + ttl));
        known
    }

    /// Asks every method at once and joins what they found; or each method's reason for nothing.
    async fn detect_now(&self) -> Result<Known, String> {
        let answers = futures::future::join_all(self.detect.methods.iter().map(ask)).await;
        let (mut addrs, mut sources, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        for (method, answer) in self.detect.methods.iter().zip(answers) {
            match answer {
                Ok(found) => {
                    let list: Vec<String> = found.iter().map(ToString::to_string).collect();
                    sources.push((method.to_string(), list.join(", ")));
                    addrs.extend(found);
                }
                Err(why) => {
                    debug!("public address detection via {method} found nothing: {why}");
                    failures.push(format!("{method}: {why}"));
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        let via = match sources.as_slice() {
            [] => return Err(failures.join("; ")),
            [(method, _)] => method.clone(),
            several => several.iter().map(|(m, list)| format!("{m} ({list})")).collect::<Vec<_>>().join(", "),
        };
        Ok(Known { addrs, source: Source::Detected { via } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_global_addresses_count_as_public() {
        for public in ["203.0.114.7", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2a01:4f8::1", "2606:4700::1111"] {
            assert!(is_global(&ip(public)), "{public} is global");
        }
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "172.17.0.2",
            "192.168.1.10",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.7",
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "fec0::1",
        ] {
            assert!(!is_global(&ip(local)), "{local} is not global");
        }
        assert!(is_global(&ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn interface_addresses_are_global_only() {
        // Whatever this machine has: loopback is always there and never listed.
        let found = interface_addresses().unwrap();
        assert!(found.iter().all(is_global), "{found:?}");
    }

    #[test]
    fn detect_settings() {
        let parse = |s: &str| s.parse::<PublicIpDetect>();
        assert!(parse("off").unwrap().is_off());
        assert!(parse(" OFF ").unwrap().is_off());
        let default = parse(DETECT_DEFAULT).unwrap();
        assert_eq!(default.methods[0], Method::Interfaces);
        assert_eq!(
            default.methods[1],
            Method::Dns { name: "myip.opendns.com".into(), server: "208.67.222.222:53".parse().unwrap() }
        );
        assert_eq!(default.methods[2].to_string(), "DNS query myip.opendns.com @[2620:119:35::35]:53");
        assert_eq!(
            parse("dns:myip.example.@127.0.0.1:8053,https://ip.example/").unwrap().methods,
            vec![
                Method::Dns { name: "myip.example".into(), server: "127.0.0.1:8053".parse().unwrap() },
                Method::Http { url: "https://ip.example/".into() },
            ]
        );
        for bad in [
            "",
            "dns:",
            "dns:myip.opendns.com",
            "dns:@1.1.1.1",
            "dns:a b@1.1.1.1",
            "dns:x@resolver1.opendns.com",
            "ftp://x",
            "interfaces,off",
            "stun",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("PUBLIC_IP_DETECT must be off or"), "{bad}: {e}");
        }
        assert!(parse("dns:x@host.example").unwrap_err().contains("no ip or ip:port after @"));
    }

    /// An HTTP echo on 127.0.0.1 answering `body`; counts the requests it gets.
    fn echo(body: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn concurrent_checks_share_one_cached_detection() {
        let (url, count) = echo("203.0.114.7\n");
        let ips = PublicIps::new(Vec::new(), url.parse().unwrap());
        let (a, b, c) = tokio::join!(ips.get(), ips.get(), ips.get());
        let want =
            Known { addrs: vec![ip("203.0.114.7")], source: Source::Detected { via: format!("HTTP GET {url}") } };
        assert_eq!((a.as_ref(), b.as_ref(), c.as_ref()), (Some(&want), Some(&want), Some(&want)));
        assert_eq!(ips.get().await, Some(want));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1, "detected once");
        assert_eq!(
            ips.get().await.unwrap().describe(),
            format!("this server's 203.0.114.7 (detected via HTTP GET {url})")
        );
    }

    #[tokio::test]
    async fn an_echo_that_answers_no_address_is_a_failure_and_public_ip_asks_nothing() {
        let (url, count) = echo("<html>hello</html>");
        let detect: PublicIpDetect = url.parse().unwrap();
        let failed = PublicIps::new(Vec::new(), detect.clone());
        assert!(failed.detect_now().await.unwrap_err().contains("the answer is not an IP address"));
        assert_eq!(failed.get().await, None);
        assert_eq!(failed.get().await, None, "cached");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2, "one for detect_now, one for get");

        let explicit = PublicIps::new(vec![ip("203.0.114.7")], detect);
        assert_eq!(explicit.get().await.unwrap().describe(), "PUBLIC_IP (203.0.114.7)");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2, "PUBLIC_IP: nothing asked");
        assert!(PublicIps::new(Vec::new(), "off".parse().unwrap()).get().await.is_none());
    }
}

//! DNS lookups for certificates (hickory-resolver): does a domain point at this server, what
//! address a "what is my address" server sees us at, and has a DNS-01 TXT record reached every
//! authoritative name server of its zone.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use thiserror::Error;

use crate::backoff::Backoff;

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("DNS resolver setup failed: {0}")]
    Setup(String),
    #[error("{value:?} is not a name server address; use ip or ip:port")]
    BadServer { value: String },
    #[error("the TXT record {name} did not reach {pending} within {waited:?} (the zone's name servers still serve other values)")]
    NotPropagated { name: String, pending: String, waited: Duration },
}

/// What a domain's A/AAAA records say about this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    PointsHere,
    /// Records exist but none is one of this server's addresses.
    Elsewhere {
        found: Vec<IpAddr>,
    },
    NoRecords,
}

/// Pure: compares the resolved addresses with this server's.
pub fn verdict(found: &[IpAddr], public: &[IpAddr]) -> Verdict {
    if found.is_empty() {
        Verdict::NoRecords
    } else if found.iter().any(|ip| public.contains(ip)) {
        Verdict::PointsHere
    } else {
        Verdict::Elsewhere { found: found.to_vec() }
    }
}

/// `DNS_CHECK`: before ordering, whether a domain's A/AAAA records must point at this server:
/// `strict` (skip the domain), `warn` (say so, go on) or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsCheck {
    Strict,
    Warn,
    Off,
}

/// Parses `ip` or `ip:port` (`[v6]:port`), port 53 by default.
pub fn parse_server(value: &str) -> Result<SocketAddr, DnsError> {
    let value = value.trim();
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    value.parse::<SocketAddr>().map_err(|_| DnsError::BadServer { value: value.to_string() })
}

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// The configured servers (empty: the system's), also used when a zone's own name servers
    /// cannot be found.
    servers: Vec<SocketAddr>,
}

/// Asks `server` for the A and AAAA records of `name`, which a "what is my address" server
/// (OpenDNS's `myip.opendns.com`) answers with the address the query came from. Empty: the name
/// has no such records; an error: the server did not answer (timed out, refused, unreachable).
pub async fn whoami(name: &str, server: SocketAddr) -> Result<Vec<IpAddr>, String> {
    let mut config = ResolverConfig::default();
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut ns.connections {
        connection.port = server.port();
    }
    config.name_servers.push(ns);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    let resolver = builder.build().map_err(|e| e.to_string())?;
    let name = format!("{}.", name.trim_end_matches('.'));
    let (v4, v6) =
        futures::join!(resolver.lookup(name.as_str(), RecordType::A), resolver.lookup(name.as_str(), RecordType::AAAA));
    let mut found = BTreeSet::new();
    let mut errors = Vec::new();
    for answer in [v4, v6] {
        match answer {
            Ok(lookup) => found.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    match errors.first() {
        // Both queries failed: the server is not answering.
        Some(e) if errors.len() == 2 => Err(e.clone()),
        _ => Ok(found.into_iter().collect()),
    }
}

fn resolver_for(servers: &[SocketAddr]) -> Result<TokioResolver, DnsError> {
    let setup = |e: &dyn std::fmt::Display| DnsError::Setup(e.to_string());
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| setup(&e))?
    } else {
        let mut config = ResolverConfig::default();
        for server in servers {
            let mut ns = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut ns.connections {
                connection.port = server.port();
            }
            config.name_servers.push(ns);
        }
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    // Propagation checks must see fresh answers.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    builder.build().map_err(|e| setup(&e))
}

impl Dns {
    pub fn new(servers: Vec<SocketAddr>) -> Result<Self, DnsError> {
        Ok(Dns { resolver: resolver_for(&servers)?, servers })
    }

    /// The A and AAAA addresses of `domain` (empty when it has none or does not exist).
    pub async fn addresses(&self, domain: &str) -> Vec<IpAddr> {
        let name = format!("{}.", domain.trim_end_matches('.'));
        let mut found = BTreeSet::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            if let Ok(lookup) = self.resolver.lookup(name.as_str(), rtype).await {
                for record in lookup.answers() {
                    match &record.data {
                        RData::A(a) => {
                            found.insert(IpAddr::V4(a.0));
                        }
                        RData::AAAA(a) => {
                            found.insert(IpAddr::V6(a.0));
                        }
                        _ => {}
                    }
                }
            }
        }
        found.into_iter().collect()
    }

    /// The TXT values at `name` as `resolver` sees them.
    async fn txt_with(resolver: &TokioResolver, name: &str) -> Vec<String> {
        let name = format!("{}.", name.trim_end_matches('.'));
        match resolver.lookup(name.as_str(), RecordType::TXT).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => {
                        Some(txt.txt_data.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    }
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The name servers of the zone holding `domain`: the NS records of the closest enclosing
    /// name that has them, resolved to addresses. Falls back to the configured servers.
    pub async fn authoritative_servers(&self, domain: &str) -> Vec<SocketAddr> {
        let labels: Vec<&str> = domain.trim_start_matches("*.").trim_end_matches('.').split('.').collect();
        for start in 0..labels.len().saturating_sub(1) {
            let zone = format!("{}.", labels[start..].join("."));
            let Ok(lookup) = self.resolver.lookup(zone.as_str(), RecordType::NS).await else { continue };
            let hosts: Vec<String> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NS(ns) => Some(ns.0.to_string()),
                    _ => None,
                })
                .collect();
            let mut servers = Vec::new();
            for host in hosts {
                for ip in self.addresses(&host).await {
                    servers.push(SocketAddr::new(ip, 53));
                }
            }
            if !servers.is_empty() {
                return servers;
            }
        }
        self.servers.clone()
    }

    /// Polls every authoritative server of `name`'s zone until each serves `value` at `name`,
    /// for at most `timeout`.
    pub async fn wait_for_txt(&self, name: &str, value: &str, timeout: Duration) -> Result<(), DnsError> {
        let started = tokio::time::Instant::now();
        let servers = self.authoritative_servers(name).await;
        let resolvers: Vec<(String, TokioResolver)> = if servers.is_empty() {
            vec![("the system resolver".to_string(), self.resolver.clone())]
        } else {
            servers.iter().map(|s| Ok((s.to_string(), resolver_for(&[*s])?))).collect::<Result<_, DnsError>>()?
        };
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            let mut pending = Vec::new();
            for (label, resolver) in &resolvers {
                if !Self::txt_with(resolver, name).await.iter().any(|v| v == value) {
                    pending.push(label.clone());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            let delay = backoff.next_delay();
            if started.elapsed() + delay > timeout {
                return Err(DnsError::NotPropagated {
                    name: name.to_string(),
                    pending: pending.join(", "),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_servers() {
        let here: IpAddr = "203.0.113.5".parse().unwrap();
        let other: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(verdict(&[here], &[here]), Verdict::PointsHere);
        assert_eq!(verdict(&[other], &[here]), Verdict::Elsewhere { found: vec![other] });
        assert_eq!(verdict(&[], &[here]), Verdict::NoRecords);
        assert_eq!(parse_server("127.0.0.1").unwrap(), "127.0.0.1:53".parse().unwrap());
        assert_eq!(parse_server("127.0.0.1:8053").unwrap(), "127.0.0.1:8053".parse().unwrap());
        assert_eq!(parse_server("[::1]:8053").unwrap(), "[::1]:8053".parse().unwrap());
        assert!(parse_server("dns.example").is_err());
    }
}

//! The benign twin of a table: every validated value that reaches the template swapped for a fixed benign value of its kind.

use super::*;

/// The same kind of origin, with benign text.
pub(super) fn twin_origin(origin: &Origin) -> Origin {
    match origin {
        Origin::Env { var, entry, .. } => Origin::Env { var, entry: *entry, text: "twin".into() },
        Origin::File { .. } => Origin::File { path: "/twin.json".into(), field: "twin".into() },
        Origin::Container { .. } => Origin::Container { name: "twin".into(), label: None },
    }
}

/// A copy of `table` with every value swapped for a benign one of the same kind (wildcard or not,
/// IP or host name, `/` or another path), and the substitutions made for the values the template
/// prints. Values the template does not print today (origins, service and network names) are
/// swapped too, without a substitution: if a template ever printed them, the comparison fails.
pub(super) fn twin(table: &RouteTable) -> (RouteTable, Subs) {
    let mut subs = Subs::default();
    let mut twin = table.clone();
    twin.diagnostics.clear();
    let mut ids = BTreeMap::new();
    let mut n = 0u32;
    for (i, u) in twin.upstreams.iter_mut().enumerate() {
        let id = format!("sp_twin{i:04}u");
        subs.add(&id, &u.id);
        ids.insert(u.id.clone(), id.clone());
        u.id = id;
        u.service = ServiceName::parse(&format!("twin{i:04}s")).unwrap();
        for b in &mut u.backends {
            n += 1;
            b.origin = twin_origin(&b.origin);
            if let Some(network) = &mut b.network {
                *network = NetworkChoice { name: "twinnet".into(), reason: "twin".into() };
            }
            let host = match b.host {
                Host::Ip(IpAddr::V4(_)) => Host::Ip(IpAddr::V4(Ipv4Addr::from(0x6440_0000 + n))),
                Host::Ip(IpAddr::V6(_)) => {
                    Host::Ip(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x7777, n as u16)))
                }
                Host::Name(_) => Host::parse(&format!("twinhost{n:04}h.example")).unwrap(),
            };
            let original = b.address();
            // A TLS backend's host name is printed alone too (`proxy_ssl_name`).
            subs.add(host.to_string(), b.host.to_string());
            b.host = host;
            subs.add(b.address(), original);
        }
    }
    let mut p = 0u32;
    let mut a = 0u32;
    for (i, site) in twin.sites.iter_mut().enumerate() {
        let name = format!("{}twin{i:04}d.example", if site.domain.is_wildcard() { "*." } else { "" });
        let domain = DomainName::parse(&name).unwrap();
        for (benign, accepted) in [
            (domain.as_str().to_string(), site.domain.as_str().to_string()),
            (domain.cert_name(), site.domain.cert_name()),
            (domain.file_stem(), site.domain.file_stem()),
        ] {
            subs.add(benign, accepted);
        }
        site.domain = domain;
        for loc in &mut site.locations {
            loc.origin = twin_origin(&loc.origin);
            if loc.path.as_str() != "/" {
                p += 1;
                let path = PathPrefix::parse(&format!("/twin{p:04}p")).unwrap();
                subs.add(path.as_str(), loc.path.as_str());
                loc.path = path;
            }
            if let Some(id) = &mut loc.upstream {
                *id = ids[id.as_str()].clone();
            }
            for cidr in &mut loc.allow {
                a += 1;
                let benign = Cidr::parse(&Ipv4Addr::from(0xc612_0000 + a).to_string()).unwrap();
                subs.add(benign.to_string(), cidr.to_string());
                *cidr = benign;
            }
        }
    }
    (twin, subs)
}

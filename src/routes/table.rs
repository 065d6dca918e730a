//! Merging the sources into one table, deterministically.
//!
//! Precedence: labels first (containers in name order), then `DOMAINS`/`SERVICES`, then JSON files.
//! A later source only fills in (domain, path) pairs that no earlier one claimed.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::{
    policy::{Balance, Hsts, Protocol, Redirect},
    Backend, Cidr, Diagnostic, DomainName, Health, Namespace, Origin, PathPrefix, Policy, RouteDef, ServiceDef,
    ServiceKey, ServiceName, SourceOutput, TlsMode,
};

/// The validated, merged routes: what gets rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    pub upstreams: Vec<Upstream>,
    pub sites: Vec<Site>,
    pub diagnostics: Vec<Diagnostic>,
}

/// One nginx upstream: a service and its servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    /// The nginx upstream name: `sp_` + service name (+ `_N` when two namespaces share a name).
    /// The underscore keeps it apart from every valid host name.
    pub id: String,
    pub service: ServiceName,
    pub namespace: Namespace,
    pub backends: Vec<Backend>,
    /// `lb`: how nginx spreads requests over the servers.
    pub balance: Balance,
    /// `proto`: how nginx talks to the servers.
    pub protocol: Protocol,
}

/// Everything served for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub domain: DomainName,
    pub tls: TlsMode,
    pub health: Health,
    /// The HSTS header of its HTTPS server.
    pub hsts: Hsts,
    /// The whole domain redirects (`redirect`, or the other name of a `www` pair); it then has
    /// no locations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Who set the redirect: the redirecting route, or the route that set `www`.
    #[serde(skip)]
    pub redirect_by: Option<Origin>,
    pub locations: Vec<Location>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: PathPrefix,
    /// The [`Upstream::id`], or `None` for a domain without a service (503).
    pub upstream: Option<String>,
    pub allow: Vec<Cidr>,
    #[serde(skip_serializing_if = "Policy::is_default")]
    pub policy: Policy,
    pub origin: Origin,
}

impl RouteTable {
    /// Merges source outputs given in precedence order.
    pub fn build(sources: Vec<SourceOutput>) -> RouteTable {
        let mut diagnostics = Vec::new();
        let mut routes = Vec::new();
        let mut defs = Vec::new();
        let mut rejected: BTreeMap<ServiceKey, Origin> = BTreeMap::new();
        for source in sources {
            diagnostics.extend(source.diagnostics);
            routes.extend(source.routes);
            defs.extend(source.services);
            for (key, origin) in source.rejected_services {
                rejected.entry(key).or_insert(origin);
            }
        }

        let services = merge_services(defs, &mut diagnostics);
        let available: Vec<&str> =
            services.keys().filter(|k| k.namespace == Namespace::Static).map(|k| k.name.as_str()).collect();

        let mut claimed: BTreeMap<(DomainName, PathPrefix), RouteDef> = BTreeMap::new();
        let mut site_tls = PerDomain::new("tls", "one TLS mode");
        let mut site_health = PerDomain::new("health", "one health answer");
        let mut site_hsts = PerDomain::new("hsts", "one HSTS header");
        let mut site_redirect = PerDomain::new("redirect", "one redirect");
        let mut site_www = PerDomain::new("www", "one canonical name");
        for mut route in routes {
            // `www`: a route on either name of the pair serves the canonical one.
            let mut renamed = false;
            if let Some(Ok((canonical, _))) = route.www.map(|www| www.names(&route.domain)) {
                renamed = canonical != route.domain;
                route.domain = canonical;
            }
            if let Some(key) = &route.service {
                if !services.contains_key(key) {
                    let message = if let Some(at) = rejected.get(key) {
                        format!(
                            "service {:?} is left out because of the error at {at}; this route is served once that is fixed",
                            key.name.as_str()
                        )
                    } else if available.is_empty() {
                        format!(
                            "unknown service {:?}. No services are defined (set SERVICES or a services file)",
                            key.name.as_str()
                        )
                    } else {
                        format!("unknown service {:?}. Available services: {}", key.name.as_str(), available.join(", "))
                    };
                    diagnostics.push(Diagnostic::error(route.origin.clone(), message));
                    continue;
                }
                if let Some(reason) = services[key].2.proto.rejects(&route.policy) {
                    diagnostics.push(Diagnostic::error(route.origin.clone(), reason));
                    continue;
                }
            }
            let slot = (route.domain.clone(), route.path.clone());
            if let Some(first) = claimed.get_mut(&slot) {
                // Both names of a `www` pair listed: one route, on the canonical name.
                if renamed && first.service == route.service && first.www == route.www {
                    continue;
                }
                if let Some(diagnostic) = conflict(first, &route) {
                    diagnostics.push(diagnostic);
                }
                continue;
            }
            site_tls.note(&route, Some(&route.tls), &mut diagnostics);
            site_health.note(&route, route.health.as_ref(), &mut diagnostics);
            site_hsts.note(&route, route.hsts.as_ref(), &mut diagnostics);
            site_redirect.note(&route, route.redirect.as_ref(), &mut diagnostics);
            site_www.note(&route, route.www.as_ref(), &mut diagnostics);
            claimed.insert(slot, route);
        }

        // A redirecting domain serves none of its routes.
        claimed.retain(|(domain, _), route| {
            let Some((redirect, by)) = site_redirect.values.get(domain) else { return true };
            if route.service.is_some() {
                diagnostics.push(Diagnostic::warning(
                    route.origin.clone(),
                    format!(
                        "{domain}{} is not served: the whole domain redirects to {redirect}, set by {by}",
                        route.path
                    ),
                ));
            }
            route.redirect.is_some()
        });
        // `www`: the other name of each pair redirects to the canonical one, unless a route
        // of its own serves it.
        let mut aliases: Vec<(DomainName, DomainName, Origin)> = Vec::new();
        for (canonical, (www, by)) in &site_www.values {
            let Ok((_, other)) = www.names(canonical) else { continue };
            match claimed.iter().find(|((domain, _), _)| *domain == other) {
                Some((_, route)) => diagnostics.push(Diagnostic::warning(
                    by.clone(),
                    format!(
                        "www {www}: {other} is routed by {}, which keeps it; it does not redirect to {canonical}",
                        route.origin
                    ),
                )),
                None => aliases.push((other, canonical.clone(), by.clone())),
            }
        }

        let used: BTreeSet<&ServiceKey> = claimed.values().filter_map(|r| r.service.as_ref()).collect();
        let mut ids: BTreeMap<ServiceKey, String> = BTreeMap::new();
        let mut taken: HashSet<String> = HashSet::new();
        let mut upstreams = Vec::new();
        for key in used {
            let base = format!("sp_{}", key.name);
            let mut id = base.clone();
            let mut n = 2;
            while !taken.insert(id.to_ascii_lowercase()) {
                id = format!("{base}_{n}");
                n += 1;
            }
            ids.insert(key.clone(), id.clone());
            upstreams.push(Upstream {
                id,
                service: key.name.clone(),
                namespace: key.namespace,
                backends: services[key].0.clone(),
                balance: services[key].1,
                protocol: services[key].2.clone(),
            });
        }

        let mut sites: Vec<Site> = Vec::new();
        for ((domain, path), route) in claimed {
            if route.redirect.is_some() {
                let site = Site {
                    tls: site_tls.get(&domain).unwrap_or_default(),
                    health: site_health.get(&domain).unwrap_or_default(),
                    hsts: site_hsts.get(&domain).unwrap_or_default(),
                    redirect: route.redirect,
                    redirect_by: Some(route.origin),
                    domain,
                    locations: Vec::new(),
                };
                sites.push(site);
                continue;
            }
            let location = Location {
                path,
                upstream: route.service.as_ref().map(|k| ids[k].clone()),
                allow: route.allow,
                policy: route.policy,
                origin: route.origin,
            };
            match sites.last_mut() {
                Some(site) if site.domain == domain => site.locations.push(location),
                _ => {
                    let tls = site_tls.get(&domain).unwrap_or_default();
                    let health = site_health.get(&domain).unwrap_or_default();
                    let hsts = site_hsts.get(&domain).unwrap_or_default();
                    sites.push(Site {
                        domain,
                        tls,
                        health,
                        hsts,
                        redirect: None,
                        redirect_by: None,
                        locations: vec![location],
                    });
                }
            }
        }
        for (other, canonical, by) in aliases {
            let site = Site {
                domain: other,
                tls: site_tls.get(&canonical).unwrap_or_default(),
                health: site_health.get(&canonical).unwrap_or_default(),
                hsts: site_hsts.get(&canonical).unwrap_or_default(),
                redirect: Some(Redirect::to_canonical(canonical)),
                redirect_by: Some(by),
                locations: Vec::new(),
            };
            let at = sites.partition_point(|s| s.domain < site.domain);
            sites.insert(at, site);
        }

        RouteTable { upstreams, sites, diagnostics }
    }

    pub fn has_static_errors(&self) -> bool {
        self.errors().any(|d| d.origin.is_static())
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == super::Severity::Error)
    }

    pub fn upstream(&self, id: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.id == id)
    }

    /// The domains served over HTTPS (tls `auto`): the ones that need certificates.
    pub fn tls_domains(&self) -> Vec<DomainName> {
        self.sites.iter().filter(|s| s.tls == TlsMode::Auto).map(|s| s.domain.clone()).collect()
    }

    /// The table without one domain's site (and without upstreams only it used).
    pub fn without_site(&self, domain: &DomainName) -> RouteTable {
        self.retain_sites(|site| &site.domain != domain)
    }

    /// The table with only the given domains' sites.
    pub fn only_sites(&self, domains: &[DomainName]) -> RouteTable {
        self.retain_sites(|site| domains.contains(&site.domain))
    }

    fn retain_sites(&self, keep: impl Fn(&Site) -> bool) -> RouteTable {
        let sites: Vec<Site> = self.sites.iter().filter(|s| keep(s)).cloned().collect();
        let used: HashSet<&str> =
            sites.iter().flat_map(|s| &s.locations).filter_map(|l| l.upstream.as_deref()).collect();
        let upstreams = self.upstreams.iter().filter(|u| used.contains(u.id.as_str())).cloned().collect();
        RouteTable { upstreams, sites, diagnostics: self.diagnostics.clone() }
    }
}

/// Merges definitions of the same service: replicas of a Docker service add servers; two static
/// definitions of one name are an error (the first wins).
/// A merged service: its servers, how they share the load and how nginx talks to them (for each,
/// the first definition that sets it decides; a replica asking for another gets a warning).
struct Merged {
    origin: Origin,
    backends: Vec<Backend>,
    balance: Option<(Balance, Origin)>,
    protocol: Option<(Protocol, Origin)>,
}

/// A merged service's servers, `lb` and `proto`.
type MergedService = (Vec<Backend>, Balance, Protocol);

/// Keeps the first value a service definition sets (`have`); a later definition asking for
/// another one gets a warning.
fn settle<T: PartialEq + std::fmt::Display>(
    have: &mut Option<(T, Origin)>,
    wanted: Option<T>,
    def: &ServiceDef,
    (key, what): (&str, &str),
    diagnostics: &mut Vec<Diagnostic>,
) {
    match (&*have, wanted) {
        (None, Some(value)) => *have = Some((value, def.origin.clone())),
        (Some((value, by)), Some(wanted)) if *value != wanted => diagnostics.push(Diagnostic::warning(
            def.origin.clone(),
            format!(
                "{key} {wanted} conflicts with {key} {value} set for service {} by {by}; a service has one {what}, keeping {value}",
                def.key.name.as_str()
            ),
        )),
        _ => {}
    }
}

fn merge_services(defs: Vec<ServiceDef>, diagnostics: &mut Vec<Diagnostic>) -> BTreeMap<ServiceKey, MergedService> {
    let mut services: BTreeMap<ServiceKey, Merged> = BTreeMap::new();
    for def in defs {
        match services.get_mut(&def.key) {
            None => {
                let balance = def.balance.map(|b| (b, def.origin.clone()));
                let protocol = def.protocol.clone().map(|p| (p, def.origin.clone()));
                services.insert(def.key, Merged { origin: def.origin, backends: def.backends, balance, protocol });
            }
            Some(merged) if def.key.namespace == Namespace::Docker => {
                merged.backends.extend(def.backends.iter().cloned());
                settle(&mut merged.balance, def.balance, &def, ("lb", "method"), diagnostics);
                settle(&mut merged.protocol, def.protocol.clone(), &def, ("proto", "protocol"), diagnostics);
            }
            Some(merged) => diagnostics.push(Diagnostic::error(
                def.origin,
                format!(
                    "duplicate service {:?}: already defined by {}; keeping that one",
                    def.key.name.as_str(),
                    merged.origin
                ),
            )),
        }
    }
    services
        .into_iter()
        .map(|(key, mut merged)| {
            merged.backends.sort();
            merged.backends.dedup_by(|a, b| a.host == b.host && a.port == b.port);
            let protocol = merged.protocol.map(|(p, _)| p).unwrap_or_default();
            (key, (merged.backends, merged.balance.map(|(b, _)| b).unwrap_or_default(), protocol))
        })
        .collect()
}

/// A setting a domain has once (`tls`, `health`, `hsts`): the first route that sets it decides; a
/// later route asking for another value gets a warning.
struct PerDomain<T> {
    values: BTreeMap<DomainName, (T, Origin)>,
    key: &'static str,
    /// "one TLS mode", for the warning.
    one: &'static str,
}

impl<T: Clone + PartialEq + std::fmt::Display> PerDomain<T> {
    fn new(key: &'static str, one: &'static str) -> Self {
        PerDomain { values: BTreeMap::new(), key, one }
    }

    /// `route` asks for `wanted` (`None`: it sets nothing).
    fn note(&mut self, route: &RouteDef, wanted: Option<&T>, diagnostics: &mut Vec<Diagnostic>) {
        let Some(wanted) = wanted else { return };
        match self.values.get(&route.domain) {
            Some((have, by)) if have != wanted => diagnostics.push(Diagnostic::warning(
                route.origin.clone(),
                format!(
                    "{key} {wanted} conflicts with {key} {have} set for {} by {by}; a domain has {}, keeping {have}",
                    route.domain,
                    self.one,
                    key = self.key
                ),
            )),
            Some(_) => {}
            None => {
                self.values.insert(route.domain.clone(), (wanted.clone(), route.origin.clone()));
            }
        }
    }

    fn get(&self, domain: &DomainName) -> Option<T> {
        self.values.get(domain).map(|(value, _)| value.clone())
    }
}

/// A policy in messages: its settings, or "the defaults".
fn describe(policy: &Policy) -> String {
    if policy.is_default() {
        "the defaults".to_string()
    } else {
        policy.describe()
    }
}

/// What to say when `route` claims a (domain, path) that `first` already holds.
fn conflict(first: &mut RouteDef, route: &RouteDef) -> Option<Diagnostic> {
    let same_target = first.service == route.service && first.tls == route.tls;
    let domain = &route.domain;
    let path = &route.path;
    let target = |r: &RouteDef| match &r.service {
        Some(k) => format!("service {}", k.name),
        None => "no service".to_string(),
    };
    match (first.origin.is_static(), route.origin.is_static()) {
        // Replicas of one service declare the same domains: that is load balancing, not a conflict.
        (false, false) if same_target => {
            let mut notes = Vec::new();
            if first.policy != route.policy {
                notes.push(format!(
                    "policy for {domain}{path} ({}) differs from {} set by {}; replicas share one policy, keeping the first",
                    describe(&route.policy),
                    describe(&first.policy),
                    first.origin
                ));
            }
            if first.allow != route.allow {
                let union: BTreeSet<Cidr> = first.allow.iter().chain(&route.allow).copied().collect();
                first.allow = union.into_iter().collect();
                notes.push(format!(
                    "allow list for {domain}{path} differs from {}; using both lists together",
                    first.origin
                ));
            }
            (!notes.is_empty()).then(|| Diagnostic::warning(route.origin.clone(), notes.join("; ")))
        }
        (false, false) => Some(Diagnostic::warning(
            route.origin.clone(),
            format!(
                "{domain}{path} is already routed to {} by {}; this container's {} is ignored (the container whose name sorts first wins)",
                target(first),
                first.origin,
                target(route)
            ),
        )),
        (false, true) => Some(Diagnostic::warning(
            route.origin.clone(),
            format!(
                "{domain} is already routed by {} (labels take precedence over env and files); this entry is ignored",
                first.origin
            ),
        )),
        (true, _) => Some(Diagnostic::error(
            route.origin.clone(),
            format!("duplicate domain {domain}: already defined by {}; keeping that one", first.origin),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{BackendState, Host, Port};

    fn key(ns: Namespace, name: &str) -> ServiceKey {
        ServiceKey { namespace: ns, name: ServiceName::parse(name).unwrap() }
    }

    fn container(name: &str) -> Origin {
        Origin::Container { name: name.into(), label: None }
    }

    fn route(domain: &str, service: Option<ServiceKey>, origin: Origin) -> RouteDef {
        RouteDef {
            domain: DomainName::parse(domain).unwrap(),
            path: PathPrefix::root(),
            service,
            allow: vec![],
            tls: TlsMode::Auto,
            health: None,
            hsts: None,
            redirect: None,
            www: None,
            policy: Policy::default(),
            origin,
        }
    }

    fn service(k: ServiceKey, ip: &str, origin: Origin) -> ServiceDef {
        ServiceDef {
            key: k,
            backends: vec![Backend {
                host: Host::parse(ip).unwrap(),
                port: Port::parse("80").unwrap(),
                state: BackendState::Up,
                network: None,
                origin: origin.clone(),
            }],
            balance: None,
            protocol: None,
            origin,
        }
    }

    #[test]
    fn replicas_share_one_upstream_and_labels_win_over_env() {
        let web = key(Namespace::Docker, "web");
        let docker = SourceOutput {
            routes: vec![
                route("a.com", Some(web.clone()), container("web-1")),
                route("a.com", Some(web.clone()), container("web-2")),
            ],
            services: vec![
                service(web.clone(), "10.0.0.2", container("web-1")),
                service(web, "10.0.0.3", container("web-2")),
            ],
            ..Default::default()
        };
        let env_origin = Origin::Env { var: "DOMAINS", entry: 1, text: "a.com".into() };
        let env = SourceOutput { routes: vec![route("a.com", None, env_origin)], ..Default::default() };
        let table = RouteTable::build(vec![docker, env]);
        assert_eq!(table.upstreams.len(), 1);
        assert_eq!(table.upstreams[0].backends.len(), 2);
        assert_eq!(table.sites.len(), 1);
        assert_eq!(table.diagnostics.len(), 1, "{:?}", table.diagnostics);
        assert!(table.diagnostics[0].message.contains("labels take precedence"));
        assert!(!table.has_static_errors());
    }

    #[test]
    fn same_name_in_two_namespaces_gets_two_ids() {
        let d = key(Namespace::Docker, "app");
        let s = key(Namespace::Static, "app");
        let env = |n| Origin::Env { var: "DOMAINS", entry: n, text: String::new() };
        let out = SourceOutput {
            routes: vec![route("a.com", Some(d.clone()), container("c")), route("b.com", Some(s.clone()), env(1))],
            services: vec![service(d, "10.0.0.2", container("c")), service(s, "10.0.0.3", env(1))],
            ..Default::default()
        };
        let table = RouteTable::build(vec![out]);
        let ids: Vec<_> = table.upstreams.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["sp_app", "sp_app_2"]);
    }
}

//! The route table as people (text) and programs (JSON) read it: `nginx-smart-proxy check`.

use std::fmt::Write;

use serde::Serialize;

use crate::routes::{BackendState, Diagnostic, DomainName, Origin, RouteTable, Severity};
use crate::sources::label_schema;

#[derive(Serialize)]
pub struct Report<'a> {
    pub routes: Vec<RouteRow>,
    pub errors: Vec<&'a Diagnostic>,
    pub warnings: Vec<&'a Diagnostic>,
    /// TLS domains without a certificate: a self-signed placeholder is (or would be) written.
    pub placeholders: Vec<String>,
    /// The Swarm services read, with the routing mode each uses and why, and their tasks (also
    /// those with no task running, whose routes have no server to show it on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub swarm_services: Vec<crate::sources::swarm::SwarmSummary>,
    /// The label prefix, when the text explains the label keys its diagnostics name
    /// ([`Report::explaining_labels`]).
    #[serde(skip)]
    pub label_prefix: Option<String>,
}

#[derive(Serialize)]
pub struct RouteRow {
    pub domain: String,
    pub path: String,
    pub service: Option<String>,
    pub upstream: Option<String>,
    pub servers: Vec<ServerRow>,
    pub source: String,
    pub tls: String,
    pub allow: Vec<String>,
    /// The location's policy (`max-body`, `timeout`, `buffering`, `strip-prefix`, headers); left
    /// out when all are default.
    #[serde(skip_serializing_if = "crate::routes::Policy::is_default")]
    pub policy: crate::routes::Policy,
    /// The domain's health path (`off` when turned off); left out when it is the default `/health`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The domain's `hsts` (`off`, or seconds and flags); left out when it is the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    /// The service's `lb`; left out when it is the default round-robin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// The service's `proto` and its settings; left out when it is plain `http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Where the whole domain redirects (`redirect`, or the other name of a `www` pair), with
    /// the code and whether the path is kept; such a domain has this one row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<String>,
}

#[derive(Serialize)]
pub struct ServerRow {
    pub address: String,
    pub state: BackendState,
    pub network: Option<String>,
    pub network_reason: Option<String>,
    pub source: String,
}

impl<'a> Report<'a> {
    pub fn new(table: &'a RouteTable, local: bool, placeholders: &[DomainName]) -> Self {
        let mut routes = Vec::new();
        for site in &table.sites {
            if let Some(redirect) = &site.redirect {
                routes.push(RouteRow {
                    domain: site.domain.to_string(),
                    path: "/".to_string(),
                    service: None,
                    upstream: None,
                    servers: Vec::new(),
                    source: site.redirect_by.as_ref().map(Origin::source).unwrap_or_default(),
                    tls: if local { "off (LOCAL)".into() } else { site.tls.to_string() },
                    allow: Vec::new(),
                    policy: Default::default(),
                    health: (site.health != crate::routes::Health::default()).then(|| site.health.to_string()),
                    hsts: (site.hsts != Default::default()).then(|| site.hsts.to_string()),
                    lb: None,
                    proto: None,
                    redirect: Some(redirect.to_string()),
                });
            }
            for loc in &site.locations {
                let upstream = loc.upstream.as_ref().and_then(|id| table.upstream(id));
                routes.push(RouteRow {
                    domain: site.domain.to_string(),
                    path: loc.path.to_string(),
                    service: upstream.map(|u| u.service.to_string()),
                    upstream: loc.upstream.clone(),
                    servers: upstream
                        .map(|u| {
                            u.backends
                                .iter()
                                .map(|b| ServerRow {
                                    address: b.address(),
                                    state: b.state,
                                    network: b.network.as_ref().map(|n| n.name.clone()),
                                    network_reason: b.network.as_ref().map(|n| n.reason.clone()),
                                    source: b.origin.source(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    source: loc.origin.source(),
                    tls: if local { "off (LOCAL)".into() } else { site.tls.to_string() },
                    allow: loc.allow.iter().map(ToString::to_string).collect(),
                    policy: loc.policy.clone(),
                    health: (site.health != crate::routes::Health::default()).then(|| site.health.to_string()),
                    hsts: (site.hsts != Default::default()).then(|| site.hsts.to_string()),
                    lb: upstream.filter(|u| u.balance != Default::default()).map(|u| u.balance.to_string()),
                    proto: upstream.filter(|u| u.protocol != Default::default()).map(|u| u.protocol.to_string()),
                    redirect: None,
                });
            }
        }
        Report {
            routes,
            errors: table.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect(),
            warnings: table.diagnostics.iter().filter(|d| d.severity == Severity::Warning).collect(),
            placeholders: placeholders.iter().map(ToString::to_string).collect(),
            swarm_services: Vec::new(),
            label_prefix: None,
        }
    }

    /// With the Swarm services read (`pipeline::Gathered::swarm`).
    pub fn with_swarm(mut self, services: &[crate::sources::swarm::SwarmSummary]) -> Self {
        self.swarm_services = services.to_vec();
        self
    }

    /// After the diagnostics, the text explains each label key they name (labels with `prefix`):
    /// its meaning, what it allows and its default, from the label schema.
    pub fn explaining_labels(mut self, prefix: &str) -> Self {
        self.label_prefix = Some(prefix.to_string());
        self
    }

    /// The label keys the diagnostics name, in schema order, each explained on one line.
    fn label_explanations(&self) -> Vec<String> {
        let Some(prefix) = &self.label_prefix else { return Vec::new() };
        let named: Vec<&label_schema::LabelKey> = self
            .errors
            .iter()
            .chain(&self.warnings)
            .filter_map(|d| match &d.origin {
                Origin::Container { label: Some(label), .. } => label_schema::key_of_label(prefix, label),
                _ => None,
            })
            .collect();
        label_schema::KEYS
            .iter()
            .filter(|k| named.iter().any(|n| n.key == k.key))
            .map(|k| label_schema::explain(prefix, k))
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let header = ["DOMAIN", "PATH", "SERVICE", "SERVERS", "TLS", "ALLOW", "SOURCE"];
        let rows: Vec<[String; 7]> = self
            .routes
            .iter()
            .map(|r| {
                let servers = match (&r.service, r.servers.is_empty()) {
                    (None, _) if r.redirect.is_some() => "- (redirects)".to_string(),
                    (None, _) => "- (answers 503)".to_string(),
                    (Some(_), true) => "none (answers 502)".to_string(),
                    (Some(_), false) => r
                        .servers
                        .iter()
                        .map(|s| match s.state {
                            BackendState::Up => s.address.clone(),
                            BackendState::Starting => format!("{} (starting, left out)", s.address),
                            BackendState::Unhealthy => format!("{} (unhealthy, left out)", s.address),
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                let allow = if r.allow.is_empty() { "any".to_string() } else { r.allow.join(" ") };
                [
                    r.domain.clone(),
                    r.path.clone(),
                    r.service.clone().unwrap_or("-".into()),
                    servers,
                    r.tls.clone(),
                    allow,
                    r.source.clone(),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("No routes.\n");
        } else {
            let mut widths = header.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let mut line = |cells: &[&str]| {
                let text: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
                let _ = writeln!(out, "{}", text.join("  ").trim_end());
            };
            line(&header);
            for row in &rows {
                line(&row.each_ref().map(String::as_str));
            }
        }
        let mut networks: Vec<String> = self
            .routes
            .iter()
            .flat_map(|r| &r.servers)
            .filter_map(|s| {
                Some(format!(
                    "  {} ({}): network {}: {}",
                    s.source,
                    s.address,
                    s.network.as_ref()?,
                    s.network_reason.as_ref()?
                ))
            })
            .collect();
        networks.sort();
        networks.dedup();
        if !networks.is_empty() {
            let _ = writeln!(out, "\nNetworks:\n{}", networks.join("\n"));
        }
        if !self.swarm_services.is_empty() {
            let _ = writeln!(out, "\nSwarm services:");
            for s in &self.swarm_services {
                let heal = if s.heal_ignored {
                    "; heal=restart has no effect on a service (Swarm replaces failed tasks)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  {}: {}; {} of {} tasks running{heal}", s.service, s.mode, s.running, s.tasks);
            }
        }
        // Policies that differ from the defaults; the health path (one per domain) on its first row.
        let mut policies: Vec<String> = Vec::new();
        let mut health_told = std::collections::BTreeSet::new();
        for r in &self.routes {
            let mut parts = Vec::new();
            if !r.policy.is_default() {
                parts.push(r.policy.describe());
            }
            parts.extend(r.lb.as_ref().map(|lb| format!("lb={lb}")));
            parts.extend(r.proto.as_ref().map(|proto| format!("proto={proto}")));
            parts.extend(r.redirect.as_ref().map(|to| format!("redirect to {to}")));
            if health_told.insert(&r.domain) {
                parts.extend(r.health.as_ref().map(|health| format!("health={health}")));
                parts.extend(r.hsts.as_ref().map(|hsts| format!("hsts={hsts}")));
            }
            if !parts.is_empty() {
                policies.push(format!("  {}{}: {}", r.domain, r.path, parts.join(", ")));
            }
        }
        if !policies.is_empty() {
            let _ = writeln!(out, "\nPolicies (the rest use the defaults):\n{}", policies.join("\n"));
        }
        if !self.placeholders.is_empty() {
            let _ = writeln!(
                out,
                "\nNo certificate yet (a self-signed placeholder is written until one is issued):\n  {}",
                self.placeholders.join("\n  ")
            );
        }
        for (title, list) in [("Errors", &self.errors), ("Warnings", &self.warnings)] {
            if !list.is_empty() {
                let _ = writeln!(out, "\n{title} ({}):", list.len());
                for d in list {
                    let _ = writeln!(out, "  {d}");
                }
            }
        }
        let explanations = self.label_explanations();
        if !explanations.is_empty() {
            let _ =
                writeln!(out, "\nLabels named above (every label: docs/labels.md):\n  {}", explanations.join("\n  "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::labels::{routes, Container, LabelSettings, NetworkAddress};

    fn table(labels: &[(&str, &str)]) -> RouteTable {
        let container = |name: &str| Container {
            id: name.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            networks: [("proxy".to_string(), NetworkAddress { ipv4: Some([172, 18, 0, 2].into()), ipv6: None })].into(),
            running: true,
            ..Container::default()
        };
        let settings = LabelSettings { prefix: "sp".into(), nginx_networks: None };
        RouteTable::build(vec![routes(&[container("a"), container("b")], &settings)])
    }

    #[test]
    fn check_explains_the_label_keys_its_errors_name_once_each() {
        let table = table(&[
            ("sp.domains", "a.com"),
            ("sp.tls", "on"),
            ("sp.admin.tls", "x"),
            ("sp.admin.domains", "b.com"),
            ("sp.port", "http"),
        ]);
        let text = Report::new(&table, false, &[]).explaining_labels("sp").to_text();
        let explained = text.split_once("Labels named above (every label: docs/labels.md):\n").expect(&text).1;
        assert_eq!(
            explained,
            format!(
                "  {}\n  {}\n",
                label_schema::explain("sp", label_schema::get("port").unwrap()),
                label_schema::explain("sp", label_schema::get("tls").unwrap())
            ),
            "{text}"
        );
        assert!(explained.contains("sp.port (and sp.<route>.port): backend port, 1–65535; allowed: a whole number"));
    }

    /// The dotted keys too, on a named route: `sp.api.auth.users` is `auth.users`.
    #[test]
    fn check_explains_the_auth_and_rate_keys() {
        let table = table(&[
            ("sp.domains", "a.com"),
            ("sp.api.domains", "b.com"),
            ("sp.api.auth", "basic"),
            ("sp.api.auth.users", "alice:secret"),
            ("sp.rate.burst", "5"),
        ]);
        let text = Report::new(&table, false, &[]).explaining_labels("sp").to_text();
        let explained = text.split_once("Labels named above (every label: docs/labels.md):\n").expect(&text).1;
        assert!(
            explained.contains("  sp.auth.users (and sp.<route>.auth.users): with auth=basic: htpasswd lines"),
            "{text}"
        );
        assert!(explained.contains("  sp.rate.burst (and sp.<route>.rate.burst): requests over the rate"), "{text}");
        assert!(!text.contains("secret"), "the clear password is not shown: {text}");
    }

    #[test]
    fn check_explains_proto_redirect_and_www() {
        let table = table(&[
            ("sp.domains", "a.com"),
            ("sp.proto", "http2"),
            ("sp.old.domains", "b.com"),
            ("sp.old.redirect", "https://a.com"),
            ("sp.old.redirect.code", "303"),
            ("sp.www", "apex"),
        ]);
        let text = Report::new(&table, false, &[]).explaining_labels("sp").to_text();
        let explained = text.split_once("Labels named above (every label: docs/labels.md):\n").expect(&text).1;
        let keys: Vec<&str> = explained.lines().map(|l| l.trim().split(' ').next().unwrap()).collect();
        assert_eq!(keys, ["sp.proto", "sp.redirect.code", "sp.www"], "{text}");
        assert!(
            explained.contains("allowed: http, https, h2c, grpc, grpcs, fastcgi or uwsgi; default: http"),
            "{text}"
        );
        assert!(explained.contains("allowed: 301, 302, 307 or 308; default: 301"), "{text}");
    }

    #[test]
    fn no_explanations_without_label_errors_or_unless_asked() {
        let bad = table(&[("sp.domains", "a.com"), ("sp.port", "http")]);
        assert!(!Report::new(&bad, false, &[]).to_text().contains("Labels named above"));
        let unknown = table(&[("sp.domains", "a.com"), ("sp.prot", "80")]);
        assert!(!Report::new(&unknown, false, &[]).explaining_labels("sp").to_text().contains("Labels named above"));
        let good = table(&[("sp.domains", "a.com")]);
        let report = Report::new(&good, false, &[]).explaining_labels("sp");
        assert!(!report.to_text().contains("Labels named above"));
        assert!(!report.to_json().contains("label_prefix"));
    }
}

//! The route table as people (text) and programs (JSON) read it: `nginx-smart-proxy check`.

use std::fmt::Write;

use serde::Serialize;

use crate::routes::{BackendState, Diagnostic, DomainName, RouteTable, Severity};

#[derive(Serialize)]
pub struct Report<'a> {
    pub routes: Vec<RouteRow>,
    pub errors: Vec<&'a Diagnostic>,
    pub warnings: Vec<&'a Diagnostic>,
    /// TLS domains without a certificate: a self-signed placeholder is (or would be) written.
    pub placeholders: Vec<String>,
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
                });
            }
        }
        Report {
            routes,
            errors: table.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect(),
            warnings: table.diagnostics.iter().filter(|d| d.severity == Severity::Warning).collect(),
            placeholders: placeholders.iter().map(ToString::to_string).collect(),
        }
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
        out
    }
}

//! The seed-era environment format:
//! `DOMAINS="app1.com:app1,app2.com:app2,status.com"` and `SERVICES="app1:app1:8080,app2:app2:8081"`.

use crate::routes::{
    Backend, BackendState, Diagnostic, DomainName, Host, Namespace, Origin, PathPrefix, Port, RouteDef, ServiceDef,
    ServiceKey, ServiceName, SourceOutput, TlsMode,
};

/// Parses both variables. Entries are numbered from 1 in the order written; empty entries are
/// skipped but still counted, so "entry N" is the Nth comma-separated piece.
pub fn parse(domains: Option<&str>, services: Option<&str>) -> SourceOutput {
    let mut out = SourceOutput::default();
    for (entry, text) in entries(services.unwrap_or("")) {
        let origin = Origin::Env { var: "SERVICES", entry, text: text.to_string() };
        match parse_service(text) {
            Ok((name, host, port)) => out.services.push(ServiceDef {
                balance: None,
                protocol: None,
                key: ServiceKey { namespace: Namespace::Static, name },
                backends: vec![Backend { host, port, state: BackendState::Up, network: None, origin: origin.clone() }],
                origin,
            }),
            Err(message) => {
                // The name may be fine where the host or port is not: routes naming it then
                // point at this error instead of calling the service unknown.
                let name = text.split_once(':').map_or(text, |(name, _)| name).trim();
                if let Ok(name) = ServiceName::parse(name) {
                    out.rejected_services.push((ServiceKey { namespace: Namespace::Static, name }, origin.clone()));
                }
                out.diagnostics.push(Diagnostic::error(origin, message))
            }
        }
    }
    for (entry, text) in entries(domains.unwrap_or("")) {
        let origin = Origin::Env { var: "DOMAINS", entry, text: text.to_string() };
        match parse_domain(text) {
            Ok((domain, service)) => out.routes.push(RouteDef {
                domain,
                path: PathPrefix::root(),
                service: service.map(|name| ServiceKey { namespace: Namespace::Static, name }),
                allow: Vec::new(),
                tls: TlsMode::Auto,
                health: None,
                hsts: None,
                redirect: None,
                www: None,
                policy: Default::default(),
                origin,
            }),
            Err(message) => out.diagnostics.push(Diagnostic::error(origin, message)),
        }
    }
    out
}

fn entries(value: &str) -> impl Iterator<Item = (usize, &str)> {
    value.split(',').map(str::trim).enumerate().map(|(i, s)| (i + 1, s)).filter(|(_, s)| !s.is_empty())
}

/// `domain` or `domain:service`, split on the first ':'.
fn parse_domain(text: &str) -> Result<(DomainName, Option<ServiceName>), String> {
    let (domain, service) = match text.split_once(':') {
        Some((d, s)) => (d.trim(), Some(s.trim())),
        None => (text, None),
    };
    let domain = DomainName::parse(domain).map_err(|e| e.to_string())?;
    let service = match service {
        None => None,
        Some("") => {
            return Err(format!(
                "empty service name after ':'; write {:?} for a domain without a service, or name a service",
                domain.as_str()
            ))
        }
        Some(s) => Some(ServiceName::parse(s).map_err(|e| e.to_string())?),
    };
    Ok((domain, service))
}

/// `name:host:port`; an IPv6 host is written in brackets: `api:[2001:db8::5]:8080`.
fn parse_service(text: &str) -> Result<(ServiceName, Host, Port), String> {
    const FORMAT: &str = "expected name:host:port, like app1:app1:8080";
    let (name, rest) = text.split_once(':').ok_or_else(|| format!("missing host and port; {FORMAT}"))?;
    let (host, port) = if rest.trim_start().starts_with('[') {
        let close = rest.find(']').ok_or_else(|| format!("unclosed '[' in the host; {FORMAT}"))?;
        let port =
            rest[close + 1..].strip_prefix(':').ok_or_else(|| format!("missing port after the host; {FORMAT}"))?;
        (&rest[..=close], port)
    } else {
        match rest.split(':').collect::<Vec<_>>()[..] {
            [host, port] => (host, port),
            [_] => return Err(format!("missing port; {FORMAT}")),
            _ => return Err(format!("too many ':' separators; {FORMAT} (write an IPv6 host in brackets)")),
        }
    };
    let name = ServiceName::parse(name).map_err(|e| e.to_string())?;
    let host = Host::parse(host).map_err(|e| e.to_string())?;
    let port = Port::parse(port).map_err(|e| e.to_string())?;
    Ok((name, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;

    #[test]
    fn seed_example() {
        let out = parse(
            Some(" app1.com:app1, app2.com : app2 ,,status.com"),
            Some("app1:app1:8080,app2:10.0.0.7:8081,v6:[::1]:9000"),
        );
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert_eq!(out.routes.len(), 3);
        assert_eq!(out.services.len(), 3);
        assert_eq!(out.routes[2].service, None);
        assert_eq!(out.services[2].backends[0].address(), "[::1]:9000");
    }

    #[test]
    fn errors_name_the_entry() {
        let out =
            parse(Some("ok.com:app1,:app1,bad_domain.com:app1,x.com:"), Some("app1:app1:invalid,app2:h:99999,api"));
        let messages: Vec<String> = out.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 6, "{messages:#?}");
        assert!(
            messages[0].starts_with("error: SERVICES entry 1 \"app1:app1:invalid\": port \"invalid\" is not a number")
        );
        assert!(messages[1].contains("SERVICES entry 2") && messages[1].contains("must be 1-65535"));
        assert!(messages[2].contains("SERVICES entry 3") && messages[2].contains("expected name:host:port"));
        assert!(messages[3].contains("DOMAINS entry 2") && messages[3].contains("empty domain name"));
        assert!(messages[4].contains("DOMAINS entry 3") && messages[4].contains("'_'"));
        assert!(messages[5].contains("DOMAINS entry 4") && messages[5].contains("empty service name"));
    }

    #[test]
    fn a_route_to_a_rejected_service_points_at_its_error() {
        let table = RouteTable::build(vec![parse(Some("app1.com:app1"), Some("app1:app1:80800"))]);
        let messages: Vec<String> = table.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            messages,
            [
                "error: SERVICES entry 1 \"app1:app1:80800\": port 80800 is out of range; must be 1-65535",
                "error: DOMAINS entry 1 \"app1.com:app1\": service \"app1\" is left out because of the error at \
                 SERVICES entry 1 \"app1:app1:80800\"; this route is served once that is fixed",
            ]
        );
        assert!(table.sites.is_empty());
    }

    #[test]
    fn unknown_service_lists_the_available_ones() {
        let out = parse(Some("a.com:nope"), Some("app1:app1:8080,app2:app2:8081,api:api:80"));
        let table = RouteTable::build(vec![out]);
        let msg = table.diagnostics[0].to_string();
        assert_eq!(
            msg,
            "error: DOMAINS entry 1 \"a.com:nope\": unknown service \"nope\". Available services: api, app1, app2"
        );
        assert!(table.sites.is_empty());
        assert!(table.has_static_errors());
    }
}

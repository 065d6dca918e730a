//! `DOMAINS` / `SERVICES`.

use super::*;

/// Parses the env vars, merges, checks, and classifies DOMAINS entry outcomes: every DOMAINS entry
/// is either rejected (an error names it) or routed, never both, never neither.
fn env_case(ctx: &Ctx, domains: &str, services: &str, hostile: &str) -> Outcome {
    let table = RouteTable::build(vec![smart_proxy::sources::env::parse(Some(domains), Some(services))]);
    ctx.check(&table, &[hostile]);
    let (rejected, routed) = (rejected(&table), routed(&table));
    for (k, text) in env_entries(domains) {
        let e = Entry::Env("DOMAINS", k);
        assert!(
            rejected.contains(&e) != routed.contains(&e),
            "DOMAINS entry {k} {text:?}: rejected={} routed={}; diagnostics: {:#?}",
            rejected.contains(&e),
            routed.contains(&e),
            table.diagnostics
        );
    }
    let errors = table.errors().count();
    assert_eq!(table.sites.len(), routed.len(), "one site per accepted DOMAINS entry here");
    if errors > 0 {
        Outcome::Rejected
    } else {
        Outcome::Accepted
    }
}

#[test]
fn env_domain_part() {
    let ctx = Ctx::new();
    run("DOMAINS domain", (hostile(DOMAIN_OK), any::<bool>()), |(h, with_service)| {
        let domains = if *with_service { format!("{h}:app") } else { h.to_string() };
        env_case(&ctx, &domains, "app:10.0.0.5:8080", h)
    });
}

#[test]
fn env_service_part() {
    let ctx = Ctx::new();
    // The service is named in both variables, so an accepted name is also a defined one.
    run("DOMAINS service", (hostile(SERVICE_OK), any::<bool>()), |(h, defined)| {
        let services = if *defined { format!("{h}:10.0.0.5:8080") } else { "app:10.0.0.5:8080".to_string() };
        env_case(&ctx, &format!("svc.example.com:{h}"), &services, h)
    });
}

#[test]
fn env_services_name() {
    let ctx = Ctx::new();
    run("SERVICES name", hostile(SERVICE_OK), |h| {
        env_case(&ctx, &format!("svc.example.com:{}", h.trim()), &format!("{h}:10.0.0.5:8080"), h)
    });
}

#[test]
fn env_services_host() {
    let ctx = Ctx::new();
    run("SERVICES host", hostile(HOST_OK), |h| env_case(&ctx, "svc.example.com:app", &format!("app:{h}:8080"), h));
}

#[test]
fn env_services_port() {
    let ctx = Ctx::new();
    run("SERVICES port", hostile(PORT_OK), |h| {
        env_case(&ctx, "svc.example.com:app,v6.example.com:v6", &format!("app:10.0.0.5:{h},v6:[::1]:{h}"), h)
    });
}

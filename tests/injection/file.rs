//! JSON route files.

use super::*;

#[derive(Debug, Clone, Copy)]
enum JsonField {
    DomainName,
    DomainService,
    DomainTls,
    DomainAllowItem,
    DomainAllowString,
    ServiceName,
    ServiceHost,
    ServicePort,
    /// `redirect` on a domain without service or allow list.
    DomainRedirect,
    DomainWww,
    ServiceProto,
    /// `backend-verify` of a `proto=https` service with a host name.
    ServiceBackendVerify,
    /// `fastcgi.root` of a `proto=fastcgi` service.
    ServiceFastcgiRoot,
    /// An `auth`/`rate` field of the domain (with the fields it is used with).
    DomainAccess(&'static str),
    /// The value of header `X-Test` in `headers.request` or `headers.response`.
    DomainHeaderValue(&'static str),
    /// A header's name in `headers.response`.
    DomainHeaderName,
}

/// A combined file with one domain and one service, the hostile string in `field`.
fn json_case(ctx: &Ctx, field: JsonField, h: &str) -> Outcome {
    let mut domain = json!({ "name": "svc.example.com", "service": "app", "tls": "auto", "allow": ["10.8.0.0/24"] });
    let mut service = json!({ "name": "app", "host": "10.0.0.5", "port": 8080 });
    match field {
        JsonField::DomainName => domain["name"] = json!(h),
        JsonField::DomainService => {
            domain["service"] = json!(h);
            service["name"] = json!(h.trim());
        }
        JsonField::DomainTls => domain["tls"] = json!(h),
        JsonField::DomainAllowItem => domain["allow"] = json!(["192.168.0.0/16", h]),
        JsonField::DomainAllowString => domain["allow"] = json!(h),
        JsonField::ServiceName => {
            service["name"] = json!(h);
            domain["service"] = json!(h.trim());
        }
        JsonField::ServiceHost => service["host"] = json!(h),
        JsonField::ServicePort => service["port"] = json!(h),
        JsonField::DomainRedirect => domain = json!({ "name": "svc.example.com", "redirect": h }),
        JsonField::DomainWww => domain["www"] = json!(h),
        JsonField::ServiceProto => service["proto"] = json!(h),
        JsonField::ServiceBackendVerify => {
            service =
                json!({ "name": "app", "host": "api.internal", "port": 8443, "proto": "https", "backend-verify": h });
        }
        JsonField::ServiceFastcgiRoot => service["fastcgi.root"] = json!(h),
        JsonField::DomainAccess(key) => {
            for (k, v) in companions(key) {
                domain[*k] = json!(v);
            }
            domain[key] = json!(h);
        }
        JsonField::DomainHeaderValue(direction) => domain["headers"] = json!({ direction: { "X-Test": h } }),
        JsonField::DomainHeaderName => domain["headers"] = json!({ "response": { h: "v" } }),
    }
    if let JsonField::ServiceFastcgiRoot = field {
        service["proto"] = json!("fastcgi");
    }
    // Serialised by serde_json, so the hostile string is always a valid JSON string.
    let text = serde_json::to_string_pretty(&json!({ "domains": [domain], "services": [service] })).unwrap();
    let path = Path::new("/etc/smart-proxy/routes.json");
    let table = RouteTable::build(vec![smart_proxy::sources::file::parse(path, &text, FileKind::Combined)]);
    ctx.check(&table, &[h]);
    let (rejected, routed) = (rejected(&table), routed(&table));
    let d = Entry::File("domains[0]".into());
    assert!(
        rejected.contains(&d) != routed.contains(&d),
        "domains[0]: rejected and routed must differ: {:#?}",
        table.diagnostics
    );
    if rejected.is_empty() {
        match field {
            JsonField::DomainRedirect => {
                assert_eq!(table.sites.len(), 1);
                assert!(table.sites[0].redirect.is_some() && table.upstreams.is_empty(), "{table:#?}");
            }
            JsonField::DomainWww => assert_eq!(table.sites.len(), 2, "the name and its www twin"),
            _ => {
                assert_eq!(table.sites.len(), 1);
                assert_eq!(table.upstreams.len(), 1, "the service is used");
            }
        }
        Outcome::Accepted
    } else {
        // The error names the field (or the route that names the rejected service).
        let expected = match field {
            JsonField::ServiceName
            | JsonField::ServiceHost
            | JsonField::ServicePort
            | JsonField::ServiceProto
            | JsonField::ServiceBackendVerify
            | JsonField::ServiceFastcgiRoot => "services[0].",
            _ => "domains[0].",
        };
        assert!(
            table.errors().any(|d| matches!(&d.origin, Origin::File { field, .. } if field.starts_with(expected))),
            "no error names {expected}*: {:#?}",
            table.diagnostics
        );
        Outcome::Rejected
    }
}

#[test]
fn json_domain_fields() {
    let fields: &[(&str, &'static [&'static str], JsonField)] = &[
        ("file domains[].name", DOMAIN_OK, JsonField::DomainName),
        ("file domains[].service", SERVICE_OK, JsonField::DomainService),
        ("file domains[].tls", TLS_OK, JsonField::DomainTls),
        ("file domains[].allow[]", CIDR_OK, JsonField::DomainAllowItem),
        ("file domains[].allow (string)", CIDR_OK, JsonField::DomainAllowString),
        ("file domains[].redirect", REDIRECT_OK, JsonField::DomainRedirect),
        ("file domains[].www", WWW_OK, JsonField::DomainWww),
    ];
    for (name, valid, field) in fields {
        let ctx = Ctx::new();
        run(name, hostile(valid), |h| json_case(&ctx, *field, h));
    }
}

/// The `auth` and `rate` fields, as strings (the list fields also take one comma-separated string).
#[test]
fn json_access_fields() {
    let fields: &[(&'static str, &'static [&'static str])] = &[
        ("auth", AUTH_OK),
        ("auth.users", USERS_OK),
        ("auth.users-file", USERS_FILE_OK),
        ("auth.url", URL_OK),
        ("auth.signin", URL_OK),
        ("auth.headers", HEADER_NAMES_OK),
        ("auth.bypass", BYPASS_OK),
        ("rate", RATE_OK),
        ("rate.burst", BURST_OK),
        ("rate.key", RATE_KEY_OK),
    ];
    for (key, valid) in fields {
        let ctx = Ctx::new();
        run(&format!("file domains[].{key}"), hostile(valid), |h| json_case(&ctx, JsonField::DomainAccess(key), h));
    }
}

/// The `headers` object: any value is taken literally or refused, and so is any name.
#[test]
fn json_headers() {
    const VALUES: &[&str] = &["default-src 'self'", "a;b", "x$y", "", "\"q\" \\ {}#"];
    const NAMES: &[&str] = &["X-Frame-Options", "x-1"];
    for direction in ["request", "response"] {
        let ctx = Ctx::new();
        let name = format!("file domains[].headers.{direction}.X-Test");
        run(&name, hostile(VALUES), |h| json_case(&ctx, JsonField::DomainHeaderValue(direction), h));
    }
    // A JSON key is not trimmed, so hostile padding is refused: valid names join the mix, for the
    // structural check to run on enough accepted names.
    let names = prop_oneof![3 => hostile(NAMES), 1 => "[A-Za-z0-9][A-Za-z0-9-]{0,40}".prop_map(Hostile).boxed()];
    let ctx = Ctx::new();
    run("file domains[].headers.response (a name)", names, |h| json_case(&ctx, JsonField::DomainHeaderName, h));
}

#[test]
fn json_service_fields() {
    let ctx = Ctx::new();
    run("file services[].name", hostile(SERVICE_OK), |h| json_case(&ctx, JsonField::ServiceName, h));
    let ctx = Ctx::new();
    run("file services[].host", hostile(HOST_OK), |h| json_case(&ctx, JsonField::ServiceHost, h));
    let ctx = Ctx::new();
    run("file services[].proto", hostile(PROTO_OK), |h| json_case(&ctx, JsonField::ServiceProto, h));
    let ctx = Ctx::new();
    run("file services[].backend-verify", hostile(VERIFY_OK), |h| json_case(&ctx, JsonField::ServiceBackendVerify, h));
    let ctx = Ctx::new();
    run("file services[].fastcgi.root", hostile(PATH_OK), |h| json_case(&ctx, JsonField::ServiceFastcgiRoot, h));
}

/// `port` must be a JSON number, so every string is rejected; the message must stay bounded.
#[test]
fn json_service_port_strings() {
    let ctx = Ctx::new();
    let accepted_numbers = AtomicUsize::new(0);
    let cases = cases();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&hostile(PORT_OK), |h| {
            assert_eq!(
                json_case(&ctx, JsonField::ServicePort, &h),
                Outcome::Rejected,
                "the string {h:?} was taken as a port"
            );
            Ok(())
        })
        .unwrap();
    // JSON numbers: only whole numbers 1-65535 are ports.
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let numbers = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        (0i64..70_000).prop_map(|n| json!(n))
    ];
    runner
        .run(&numbers, |n| {
            let text = json!({ "domains": [{ "name": "svc.example.com", "service": "app" }], "services": [{ "name": "app", "host": "10.0.0.5", "port": n }] }).to_string();
            let table = RouteTable::build(vec![smart_proxy::sources::file::parse(Path::new("r.json"), &text, FileKind::Combined)]);
            ctx.check(&table, &[]);
            let whole = n.as_u64().filter(|p| (1..=65535).contains(p));
            match whole {
                Some(p) => {
                    accepted_numbers.fetch_add(1, Ordering::Relaxed);
                    assert_eq!(table.upstreams[0].backends[0].port.get() as u64, p);
                }
                None => assert!(table.sites.is_empty() && table.errors().count() > 0, "port {n} accepted"),
            }
            Ok(())
        })
        .unwrap();
    assert!(accepted_numbers.into_inner() > 0);
}

/// Hostile key names: an unknown field or top-level key is refused, and the printed diagnostic
/// that names it stays one bounded line.
#[test]
fn json_hostile_keys() {
    let ctx = Ctx::new();
    run_expecting("file unknown key", hostile(&["x", "extra", "Name"]), false, true, |h| {
        if ["name", "service", "allow", "tls", "domains", "services"].contains(&h.trim()) {
            return Outcome::Ignored;
        }
        let mut domain = serde_json::Map::new();
        domain.insert("name".into(), json!("svc.example.com"));
        domain.insert(h.to_string(), json!("1"));
        let mut root = serde_json::Map::new();
        root.insert("domains".into(), json!([domain]));
        root.insert(h.to_string(), json!(1));
        let text = serde_json::Value::Object(root).to_string();
        let path = Path::new("/etc/smart-proxy/routes.json");
        let table = RouteTable::build(vec![smart_proxy::sources::file::parse(path, &text, FileKind::Combined)]);
        ctx.check(&table, &[h]);
        assert!(table.sites.is_empty() && table.errors().count() >= 2, "{:#?}", table.diagnostics);
        Outcome::Rejected
    });
}

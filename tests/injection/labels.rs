//! Container labels.

use super::*;

/// One container `web` with `labels`; the hostile string `h` is somewhere in them.
fn label_case(ctx: &Ctx, labels: &[(String, String)], extra_network: Option<&str>, h: &str) -> (Outcome, RouteTable) {
    let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut c: Container = container("web", [172, 20, 0, 5], &refs);
    if let Some(net) = extra_network {
        c.networks.insert(net.to_string(), NetworkAddress { ipv4: Some(Ipv4Addr::new(10, 9, 0, 5)), ipv6: None });
    }
    let table = RouteTable::build(vec![smart_proxy::sources::labels::routes(&[c], &label_settings())]);
    ctx.check(&table, &[h]);
    let errors = table.errors().count();
    let outcome = match (errors, table.sites.len()) {
        (0, 0) => Outcome::Ignored,
        (0, _) => Outcome::Accepted,
        (_, 0) => {
            assert!(table.upstreams.is_empty());
            Outcome::Rejected
        }
        (_, _) => panic!("a container with errors is routed: {table:#?}"),
    };
    for d in table.errors() {
        assert!(matches!(&d.origin, Origin::Container { name, .. } if name == "web"), "error for another origin: {d}");
    }
    (outcome, table)
}

/// The value labels (of the container, and of each named route), with valid values of each.
const VALUE_KEYS: &[(&str, &[&str])] = &[
    ("domains", DOMAIN_OK),
    ("port", PORT_OK),
    ("path", PATH_OK),
    ("service", SERVICE_OK),
    ("allow", CIDR_OK),
    ("tls", TLS_OK),
    ("network", NETWORK_OK),
    ("max-body", SIZE_OK),
    ("timeout", TIMEOUT_OK),
    ("buffering", BOOL_OK),
    ("error-pages", BOOL_OK),
    ("health", HEALTH_OK),
    ("strip-prefix", BOOL_OK),
    ("hsts", HSTS_OK),
    ("lb", &["round-robin", "least-conn", "IP-HASH", "random"]),
    ("proto", PROTO_OK),
    ("headers.response.X-Test", &["default-src 'self'", "a;b", "x$y", ""]),
    ("headers.request.X-Test", &["on", "\"q\" \\ {}#"]),
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

/// Keys of the container only (no `<route>.` form), with valid values.
const CONTAINER_VALUE_KEYS: &[(&str, &[&str])] = &[("heal", &["restart", "off"]), ("swarm.lb", &["tasks", "vip"])];

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The hostile string as the value of each container-wide label.
#[test]
fn label_values() {
    for (key, valid) in VALUE_KEYS.iter().chain(CONTAINER_VALUE_KEYS) {
        let ctx = Ctx::new();
        run(&format!("label {P}.{key}"), hostile(valid), |h| {
            let mut ls = labels(&[("smart-proxy.domains", "app.example.com")]);
            ls.extend(companions(key).iter().map(|(k, v)| (format!("{P}.{k}"), v.to_string())));
            ls.retain(|(k, _)| k != &format!("{P}.{key}"));
            ls.push((format!("{P}.{key}"), h.to_string()));
            let (outcome, table) = label_case(&ctx, &ls, None, h);
            assert_ne!(outcome, Outcome::Ignored, "{table:#?}");
            if outcome == Outcome::Rejected {
                let label = format!("{P}.{key}");
                assert!(
                    table.errors().any(|d| matches!(&d.origin, Origin::Container { label: l, .. } if l.as_deref() == Some(label.as_str()) || l.is_none())),
                    "no error names {label}: {:#?}",
                    table.diagnostics
                );
            }
            if outcome == Outcome::Accepted {
                // The shape the twin mirrors is the expected one: no value adds a site, a
                // location or a server.
                let got: BTreeSet<String> = table.sites.iter().map(|s| s.domain.to_string()).collect();
                let expected: BTreeSet<String> = if *key == "domains" {
                    h.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| DomainName::parse(s).unwrap().to_string())
                        .collect()
                } else {
                    ["app.example.com".to_string()].into()
                };
                assert_eq!(got, expected, "one site per listed domain");
                assert!(table.sites.iter().all(|s| s.locations.len() == 1));
                assert_eq!(table.upstreams.len(), 1);
                assert_eq!(table.upstreams[0].backends.len(), 1);
            }
            outcome
        });
    }
}

/// Keys that refine another one (set beside them with a valid value) or change what a route
/// becomes: `redirect*` (a site without locations or upstreams), `www` (two sites),
/// `backend-verify` and `fastcgi.root` (the upstream's protocol). The hostile string is the
/// value of `key`.
#[test]
fn label_redirect_www_and_protocol_values() {
    /// A key, its valid values, and the labels it needs beside it.
    type KeyCase = (&'static str, &'static [&'static str], &'static [(&'static str, &'static str)]);
    let keys: &[KeyCase] = &[
        ("redirect", REDIRECT_OK, &[]),
        ("redirect.code", REDIRECT_CODE_OK, &[("smart-proxy.redirect", "https://example.org")]),
        ("redirect.keep-path", BOOL_OK, &[("smart-proxy.redirect", "https://example.org/a")]),
        ("www", WWW_OK, &[]),
        ("backend-verify", VERIFY_OK, &[("smart-proxy.proto", "https")]),
        ("fastcgi.root", PATH_OK, &[("smart-proxy.proto", "fastcgi")]),
    ];
    for (key, valid, beside) in keys {
        let ctx = Ctx::new();
        run(&format!("label {P}.{key}"), hostile(valid), |h| {
            let mut ls = labels(&[("smart-proxy.domains", "app.example.com")]);
            ls.extend(labels(beside));
            ls.push((format!("{P}.{key}"), h.to_string()));
            let (outcome, table) = label_case(&ctx, &ls, None, h);
            assert_ne!(outcome, Outcome::Ignored, "{table:#?}");
            let label = format!("{P}.{key}");
            if outcome == Outcome::Rejected {
                assert!(
                    table
                        .errors()
                        .any(|d| matches!(&d.origin, Origin::Container { label: Some(l), .. } if *l == label)),
                    "no error names {label}: {:#?}",
                    table.diagnostics
                );
            }
            if outcome == Outcome::Accepted {
                let domains: Vec<&str> = table.sites.iter().map(|s| s.domain.as_str()).collect();
                if key.starts_with("redirect") {
                    assert_eq!(domains, ["app.example.com"]);
                    assert!(table.sites[0].redirect.is_some() && table.sites[0].locations.is_empty());
                    assert!(table.upstreams.is_empty(), "a redirect has no service");
                } else if *key == "www" {
                    assert_eq!(domains, ["app.example.com", "www.app.example.com"]);
                    assert_eq!(table.upstreams.len(), 1);
                } else {
                    assert_eq!(domains, ["app.example.com"]);
                    assert_eq!(table.upstreams.len(), 1);
                }
            }
            outcome
        });
    }
}

/// `enable` and `nginx` take booleans; `enable=false` and `nginx=true` leave the container out.
#[test]
fn label_switches() {
    for key in ["enable", "nginx"] {
        let ctx = Ctx::new();
        let ignored = AtomicUsize::new(0);
        run(&format!("label {P}.{key}"), hostile(BOOL_OK), |h| {
            let ls = labels(&[("smart-proxy.domains", "app.example.com"), (&format!("{P}.{key}"), h)]);
            let (outcome, _) = label_case(&ctx, &ls, None, h);
            let expected_off = match key {
                "enable" => parse_bool(h) == Ok(false),
                _ => parse_bool(h) == Ok(true),
            };
            if expected_off {
                ignored.fetch_add(1, Ordering::Relaxed);
                assert_eq!(outcome, Outcome::Ignored);
            } else {
                assert_ne!(outcome, Outcome::Ignored);
            }
            // `enable` is validated; `nginx` only matters when it says true.
            if key == "enable" && parse_bool(h).is_err() {
                assert_eq!(outcome, Outcome::Rejected);
            }
            outcome
        });
        assert!(ignored.into_inner() > 0, "{key}: the switch never took effect");
    }
}

/// The hostile string as the value of each named-route label, and as the route name itself.
#[test]
fn label_named_routes() {
    for (key, valid) in VALUE_KEYS {
        let ctx = Ctx::new();
        run(&format!("label {P}.api.{key}"), hostile(valid), |h| {
            let mut ls =
                labels(&[("smart-proxy.domains", "app.example.com"), ("smart-proxy.api.domains", "api.example.com")]);
            ls.extend(companions(key).iter().map(|(k, v)| (format!("{P}.api.{k}"), v.to_string())));
            ls.retain(|(k, _)| k != &format!("{P}.api.{key}"));
            ls.push((format!("{P}.api.{key}"), h.to_string()));
            label_case(&ctx, &ls, None, h).0
        });
    }
    let ctx = Ctx::new();
    // Route names are not trimmed, so plain valid names are mixed in for the accepted side.
    let route = prop_oneof![3 => hostile(ROUTE_OK), 1 => "[a-z0-9-]{1,63}".prop_map(Hostile)];
    run("label <route> name", route, |h| {
        let ls = labels(&[
            ("smart-proxy.domains", "app.example.com"),
            (&format!("{P}.{h}.domains"), "api.example.com"),
            (&format!("{P}.{h}.port"), "9000"),
        ]);
        label_case(&ctx, &ls, None, h).0
    });
    let ctx = Ctx::new();
    // Label names are matched exactly: anything but a known key is an unknown label.
    run_expecting("label <key> name", hostile(&["domains", "port", "x"]), false, true, |h| {
        let ls = labels(&[
            ("smart-proxy.domains", "app.example.com"),
            (&format!("{P}.{h}"), "1"),
            (&format!("{P}.api.{h}"), "1"),
        ]);
        let (outcome, _) = label_case(&ctx, &ls, None, h);
        // (With a known key the value "1" is only valid for `domains`; a route `api` with
        // another key and no domains is rejected too.)
        assert_eq!(outcome == Outcome::Rejected, **h != *"domains", "{h:?}");
        outcome
    });
}

/// A network of that (hostile) name exists on the container, so the choice is accepted; the
/// network name never reaches the config.
#[test]
fn label_network_that_exists() {
    let ctx = Ctx::new();
    run_expecting("label network (existing)", hostile(NETWORK_OK), true, false, |h| {
        let ls = labels(&[("smart-proxy.domains", "app.example.com"), ("smart-proxy.network", h)]);
        let (outcome, table) = label_case(&ctx, &ls, Some(h.trim()), h);
        if outcome == Outcome::Accepted {
            let backend = &table.upstreams[0].backends[0];
            assert_eq!(backend.network.as_ref().unwrap().name, h.trim());
        }
        outcome
    });
}

/// The compose project/service labels make the default service (upstream) name.
#[test]
fn label_compose_names() {
    let ctx = Ctx::new();
    run("compose project/service", (hostile(SERVICE_OK), any::<bool>()), |(h, project)| {
        let key = if *project { "com.docker.compose.project" } else { "com.docker.compose.service" };
        let ls = labels(&[
            ("smart-proxy.domains", "app.example.com"),
            ("com.docker.compose.project", "demo"),
            ("com.docker.compose.service", "web"),
        ]);
        let mut ls: Vec<(String, String)> = ls.into_iter().filter(|(k, _)| k != key).collect();
        ls.push((key.to_string(), h.to_string()));
        label_case(&ctx, &ls, None, h).0
    });
}

/// Several hostile values at once, in every label.
#[test]
fn label_everything_at_once() {
    let ctx = Ctx::new();
    // Each value is hostile one time in three, so that a fair share of cases is accepted too.
    fn mostly_valid(valid: &'static [&'static str]) -> BoxedStrategy<Hostile> {
        prop_oneof![1 => hostile(valid), 2 => select(valid).prop_map(|v| Hostile(v.to_string()))].boxed()
    }
    let s = (
        mostly_valid(DOMAIN_OK),
        mostly_valid(PORT_OK),
        mostly_valid(PATH_OK),
        mostly_valid(SERVICE_OK),
        mostly_valid(CIDR_OK),
        mostly_valid(TLS_OK),
        mostly_valid(ROUTE_OK),
    );
    let accepted = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    runner
        .run(&s, |(d, port, path, service, allow, tls, route)| {
            let ls = vec![
                (format!("{P}.domains"), d.to_string()),
                (format!("{P}.port"), port.to_string()),
                (format!("{P}.path"), path.to_string()),
                (format!("{P}.service"), service.to_string()),
                (format!("{P}.allow"), allow.to_string()),
                (format!("{P}.tls"), tls.to_string()),
                (format!("{P}.{route}.domains"), d.to_string()),
                (format!("{P}.{route}.path"), path.to_string()),
            ];
            let all = [&d, &port, &path, &service, &allow, &tls, &route].map(|s| &**s).concat();
            let (outcome, _) = label_case(&ctx, &ls, None, &all);
            if outcome == Outcome::Accepted {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    eprintln!("labels all at once: {accepted} accepted");
    assert!(accepted > 0, "no case was accepted");
}

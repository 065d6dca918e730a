//! Fixed nasty examples through the real `nginx -t`.

use super::*;

/// Accepted-after-normalisation values of every kind, next to rejected injection attempts, load
/// in the real nginx; none of the rejected text reaches the config.
#[test]
fn nasty_examples_load_in_nginx() {
    let label63 = "a".repeat(63);
    let long = format!("{label63}.{label63}.{label63}.{}", "b".repeat(61));
    let injections = [
        "a.com;include /etc/passwd",
        "b.com}\nserver{listen 81;}",
        "c.com\"",
        "d.com'",
        "$host.com",
        "e.com#",
        "f.com\\",
        "g.com\0",
        "h\u{202e}moc.com",
        "j.com\r\nx",
        "k\u{ff1b}.com",
    ];
    let accepted = [
        "  UPPER.Example.COM.  ",
        "\u{3000}bücher.example\u{2028}",
        "مثال.إختبار",
        "sof\u{ad}t.example",
        "x\u{3002}dot.example",
        "ｆｕｌｌ.example",
        // UTS 46 ignores zero-width space and soft hyphen: the name is the plain ASCII one.
        "zero\u{200b}width.example",
        "*.Wild.Example.com",
        long.as_str(),
    ];
    let mut domains: Vec<String> = accepted.iter().map(|d| format!("{d}:app")).collect();
    domains.extend(injections.iter().map(|d| format!("{d}:app")));
    domains.push("svc-v6.example:v6".into());
    domains.push("svc-dyn.example:dyn".into());
    domains.push("svc-odd.example:x.".into());
    let services =
        "app:10.0.0.5:0080,v6:[::FFFF:10.0.0.7]:65535,dyn:Backend-1.Internal.:1,x.:10.0.0.9:80,bad:h;x:80,bad2:h:80;";
    let env = smart_proxy::sources::env::parse(Some(&domains.join(",")), Some(services));

    let file = json!({
        "domains": [
            { "name": " File.Example ", "service": "filesvc", "tls": " OFF ", "allow": [" 10.1.2.3/8 ", "FD00::1/8", "::1"] },
            { "name": "inj.example", "service": "filesvc", "allow": ["10.0.0.0/8; allow all"] },
            { "name": "inj2.example", "tls": "off;" },
        ],
        "services": [ { "name": "filesvc", "host": "[2001:DB8::5]", "port": 8443 }, { "name": "inj", "host": "h\n}", "port": 80 } ]
    });
    let file =
        smart_proxy::sources::file::parse(Path::new("/etc/sp/routes.json"), &file.to_string(), FileKind::Combined);

    let good = container(
        "good",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", " Label.Example , www.label.example ,"),
            ("smart-proxy.path", " /A-b_c.d~e/ "),
            ("smart-proxy.allow", " 192.168.1.7 , 10.8.0.0/24,fd00:8::/64 "),
            ("smart-proxy.port", " 08080 "),
            ("smart-proxy.tls", " Off "),
            ("smart-proxy.api.domains", "label.example"),
            ("smart-proxy.api.path", "/api/"),
            ("smart-proxy.api.port", "9000"),
            ("smart-proxy.api.tls", "off"),
            ("smart-proxy.api.allow", "0.0.0.0/0"),
        ],
    );
    let bad =
        container("bad", [172, 20, 0, 6], &[("smart-proxy.domains", "bad.example"), ("smart-proxy.path", "/x;{}")]);
    let bad_route = container(
        "bad-route",
        [172, 20, 0, 7],
        &[("smart-proxy.domains", "br.example"), ("smart-proxy.a;b.domains", "c.example")],
    );
    let labels = smart_proxy::sources::labels::routes(&[good, bad, bad_route], &label_settings());

    let table = RouteTable::build(vec![labels, env, file]);
    let domains: Vec<&str> = table.sites.iter().map(|s| s.domain.as_str()).collect();
    for expected in [
        "upper.example.com",
        "xn--bcher-kva.example",
        "xn--mgbh0fb.xn--kgbechtv",
        "soft.example",
        "x.dot.example",
        "full.example",
        "zerowidth.example",
        "*.wild.example.com",
        long.as_str(),
        "file.example",
        "label.example",
        "www.label.example",
    ] {
        assert!(domains.contains(&expected), "{expected} missing from {domains:?}");
    }
    assert_eq!(table.sites.len(), 15, "{domains:?}\n{:#?}", table.diagnostics);
    let ctx = Ctx::new();
    ctx.check(&table, &[]);
    for local in [false, true] {
        let config = NginxSandbox::new().render_and_test(&table, local);
        for bad in [
            "passwd",
            "listen 81",
            "pwned",
            "\0",
            "\r",
            "\u{202e}",
            "\u{200b}",
            "\u{ff1b}",
            "allow all",
            "bad.example",
            "c.example",
            "br.example",
            "inj",
        ] {
            assert!(!config.contains(bad), "{bad:?} reached the config");
        }
    }
}

/// Wildcard, 253-character, IDN and IPv6 edge values, one per site, each loaded alone.
#[test]
fn edge_values_each_load_in_nginx() {
    let cases = [
        ("*.a.example", "app:[::1]:1"),
        ("xn--bcher-kva.example", "app:localhost.:65535"),
        ("a.b.c.d.e.f.g.h.example", "app:1.2.3:80"),
        ("1.example", "app:[::ffff:1.2.3.4]:80"),
    ];
    for (domain, services) in cases {
        let table =
            RouteTable::build(vec![smart_proxy::sources::env::parse(Some(&format!("{domain}:app")), Some(services))]);
        assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
        NginxSandbox::new().render_and_test(&table, false);
    }
}

/// A label path equal to the template's own ACME location, on a plain-HTTP (tls=off) site, would
/// make nginx -t fail with `duplicate location`: the path is reserved and refused with a clear
/// error, and the other containers still render and load.
#[test]
fn acme_challenge_path_is_reserved() {
    let c = container(
        "acme",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", "a.example"),
            ("smart-proxy.tls", "off"),
            ("smart-proxy.path", "/.well-known/acme-challenge/"),
        ],
    );
    let other =
        container("other", [172, 20, 0, 6], &[("smart-proxy.domains", "b.example"), ("smart-proxy.tls", "off")]);
    let table = crate::support::label_table(&[c, other]);
    assert_eq!(table.diagnostics.len(), 1, "{:?}", table.diagnostics);
    assert!(
        table.diagnostics[0].to_string().contains("reserved for certificate validation"),
        "{}",
        table.diagnostics[0]
    );
    assert_eq!(table.sites.len(), 1);
    NginxSandbox::new().render_and_test(&table, false);
}

/// `auth` and `rate` values full of what nginx reads as syntax (quotes, `;`, braces, `$`,
/// backslashes in URLs) load in the real nginx in both modes, on a wildcard domain and a long
/// path too; rejected ones (a rate with a directive after it, a URL with a newline, a clear
/// password) never reach the config.
#[test]
fn nasty_access_values_load_in_nginx() {
    let url = r#"https://auth.example/check?a="b";c={d}&e=$host\x\"#;
    let good = container(
        "good",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", "*.Wild.Example, access.example"),
            ("smart-proxy.path", "/A-b_c.d~e/"),
            ("smart-proxy.auth", "forward"),
            ("smart-proxy.auth.url", url),
            ("smart-proxy.auth.signin", "https://login.example/?next=';}{$x"),
            ("smart-proxy.auth.headers", "Remote-User,X-1"),
            ("smart-proxy.auth.bypass", "/A-b_c.d~e/x.y/,/A-b_c.d~e/z"),
            ("smart-proxy.rate", "1000000r/m"),
            ("smart-proxy.rate.key", "header:X-Api-Key"),
            ("smart-proxy.basic.domains", "basic.example"),
            ("smart-proxy.basic.path", "/"),
            ("smart-proxy.basic.auth", "basic"),
            ("smart-proxy.basic.auth.users", "a.b@c+d:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
            ("smart-proxy.basic.rate", "1r/s"),
            ("smart-proxy.basic.rate.burst", "0"),
        ],
    );
    let bad = [
        ("rate", "rate", "10r/s; limit_req_status 200"),
        ("url", "auth.url", "http://auth/\nproxy_pass http://evil"),
        ("clear", "auth.users", "root:pwned-password"),
    ]
    .map(|(name, key, value)| {
        let auth = if key == "auth.url" { "forward" } else { "basic" };
        container(
            name,
            [172, 20, 0, 6],
            &[
                ("smart-proxy.domains", &format!("{name}.bad.example")),
                ("smart-proxy.auth", auth),
                ("smart-proxy.auth.users", "a:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
                (&format!("smart-proxy.{key}"), value),
            ],
        )
    });
    let mut containers = vec![good];
    containers.extend(bad);
    let table = crate::support::label_table(&containers);
    assert_eq!(table.sites.len(), 3, "{:#?}", table.diagnostics);
    assert_eq!(table.errors().count(), 3, "{:#?}", table.diagnostics);
    Ctx::new().check(&table, &[url]);
    for local in [false, true] {
        let config = NginxSandbox::new().render_and_test(&table, local);
        for leaked in ["limit_req_status 200", "evil", "pwned", "bad.example"] {
            assert!(!config.contains(leaked), "{leaked:?} reached the config");
        }
        assert!(config.contains(r#""https://auth.example/check?a=\"b\";c={d}&e=${smartproxy_dollar}host\\x\\""#));
    }
}

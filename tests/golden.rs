//! Golden configs: each case is rendered, checked with the real `nginx -t`, and compared with its
//! snapshot in `tests/snapshots/` (review changes with `cargo insta review`).

use crate::support::{container, env_table, label_table, stable, NginxSandbox};
use smart_proxy::routes::RouteTable;

fn golden(name: &str, table: &RouteTable, local: bool) {
    assert!(table.diagnostics.is_empty(), "{name}: unexpected diagnostics {:#?}", table.diagnostics);
    let sandbox = NginxSandbox::new();
    let config = sandbox.render_and_test(table, local);
    insta::assert_snapshot!(name, stable(&config, &sandbox));
}

#[test]
fn production() {
    let table = env_table(
        "app1.example.com:app1,app2.example.com:app2,api.example.com:api",
        "app1:10.0.0.11:8080,app2:10.0.0.12:8081,api:api:3000",
    );
    golden("production", &table, false);
}

#[test]
fn local_mode_is_http_only() {
    let table = env_table("app1.localhost:app1,app2.localhost:app2", "app1:10.0.0.11:8080,app2:10.0.0.12:8081");
    golden("local", &table, true);
    let config = NginxSandbox::new().render_and_test(&table, true);
    assert!(!config.contains("ssl"), "LOCAL must render no ssl directive");
    assert!(!config.contains("443"));
    assert!(config.contains("proxy_set_header HTTPS off;"));
}

#[test]
fn allowlist() {
    let c = container(
        "vpn-app",
        [172, 20, 0, 5],
        &[
            ("smart-proxy.domains", "internal.example.com"),
            ("smart-proxy.allow", "10.8.0.0/24, 192.168.1.7, fd00:8::/64"),
        ],
    );
    golden("allowlist", &label_table(&[c]), false);
}

#[test]
fn domain_without_service() {
    let table = env_table("status.example.com", "");
    golden("no_service", &table, false);
}

#[test]
fn replicas_are_one_upstream() {
    let labels = [
        ("smart-proxy.domains", "web.example.com"),
        ("com.docker.compose.project", "shop"),
        ("com.docker.compose.service", "web"),
    ];
    let table = label_table(&[
        container("shop-web-1", [172, 20, 0, 2], &labels),
        container("shop-web-2", [172, 20, 0, 3], &labels),
        container("shop-web-3", [172, 20, 0, 4], &labels),
    ]);
    assert_eq!(table.upstreams.len(), 1);
    assert_eq!(table.upstreams[0].backends.len(), 3);
    golden("replicas", &table, false);
}

#[test]
fn multi_route_container() {
    let c = container(
        "shop",
        [172, 20, 0, 9],
        &[
            ("smart-proxy.domains", "shop.example.com"),
            ("smart-proxy.api.domains", "shop.example.com"),
            ("smart-proxy.api.path", "/api/"),
            ("smart-proxy.api.port", "9000"),
            ("smart-proxy.admin.domains", "admin.shop.example.com"),
            ("smart-proxy.admin.port", "9100"),
            ("smart-proxy.admin.tls", "off"),
        ],
    );
    golden("multi_route", &label_table(&[c]), false);
}

#[test]
fn wildcard() {
    let c = container("tenant-app", [172, 20, 0, 6], &[("smart-proxy.domains", "*.tenants.example.com")]);
    let table = label_table(&[c]);
    golden("wildcard", &table, false);
}

#[test]
fn idn_is_punycode() {
    let table = env_table("bücher.example:shop,münchen.example", "shop:10.0.0.5:80");
    assert_eq!(table.sites[0].domain.as_str(), "xn--bcher-kva.example");
    golden("idn", &table, false);
}

#[test]
fn unresolvable_static_host_still_loads() {
    // nginx resolves a static service's host name per request, so a host that does not resolve
    // cannot stop nginx from loading; that domain answers 502 and the others serve.
    let table = env_table("a.example.com:gone,b.example.com:ok", "gone:no-such-host.invalid:80,ok:10.0.0.5:80");
    let config = NginxSandbox::new().render_and_test(&table, false);
    assert!(config.contains("set $smartproxy_backend no-such-host.invalid:80;"));
}

#[test]
fn upstream_with_no_live_server_still_loads() {
    let mut c = container("sick", [172, 20, 0, 7], &[("smart-proxy.domains", "sick.example.com")]);
    c.health = Some(smart_proxy::sources::labels::Health::Unhealthy);
    let table = label_table(&[c]);
    let config = NginxSandbox::new().render_and_test(&table, false);
    assert!(config.contains("server 127.0.0.1:9 down;"));
}

#[test]
fn ten_thousand_domains_and_a_253_character_name_load() {
    let label = "a".repeat(63);
    let long = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    assert_eq!(long.len(), 253);
    let mut domains: Vec<String> = (0..10_000).map(|i| format!("site{i}.example.com:app")).collect();
    domains.push(format!("{long}:app"));
    let table = env_table(&domains.join(","), "app:10.0.0.5:80");
    assert_eq!(table.sites.len(), 10_001);
    // Above ERROR_LOGS_MAX domains there are no per-domain error logs, so the open-file limit is
    // not in play; LOCAL keeps the test fast (no 10,000 placeholders), the hash sizing is the same.
    let config = NginxSandbox::new().render_and_test(&table, true);
    assert!(!config.contains(".error.log"), "no per-domain error logs above ERROR_LOGS_MAX");
}

#[test]
fn http2_directive_follows_the_nginx_version() {
    use smart_proxy::render::{NginxVersion, RenderSettings, Renderer};
    let table = env_table("a.example.com:app", "app:10.0.0.5:80");
    let sandbox = NginxSandbox::new();
    let render = |v| {
        Renderer::builtin().render(&table, &RenderSettings { nginx_version: v, ..sandbox.settings(false) }).unwrap()
    };
    let old = render(NginxVersion(1, 22, 1));
    assert!(old.contains("listen 443 ssl http2;") && !old.contains("http2 on;"));
    let new = render(NginxVersion(1, 27, 3));
    assert!(new.contains("listen 443 ssl;\n    listen [::]:443 ssl;\n    http2 on;") && !new.contains("ssl http2"));
}

/// `AUTH_CACHE`: the Lua functions once in the http context; in a basic-auth location the realm
/// set before the strip-prefix rewrite (whose `break` would skip it), and the log phase's call; a
/// bypass location checks nothing; a route without basic auth is as without the cache.
#[test]
fn auth_cache() {
    let admin = container(
        "admin",
        [172, 20, 0, 9],
        &[
            ("smart-proxy.domains", "admin.example.com"),
            ("smart-proxy.path", "/admin/"),
            ("smart-proxy.strip-prefix", "true"),
            ("smart-proxy.auth", "basic"),
            ("smart-proxy.auth.users", "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
            ("smart-proxy.auth.bypass", "/admin/public/"),
            ("smart-proxy.rate", "600r/m"),
        ],
    );
    let open = container("open", [172, 20, 0, 10], &[("smart-proxy.domains", "open.example.com")]);
    let table = label_table(&[admin, open]);
    let sandbox = NginxSandbox::new();
    let settings =
        smart_proxy::render::RenderSettings { auth_cache: Some("0123456789abcdef".into()), ..sandbox.settings(true) };
    let config = sandbox.render_and_test_with(&table, settings);
    insta::assert_snapshot!("auth_cache", stable(&config, &sandbox));
    assert_eq!(config.matches("init_by_lua_block").count(), 1, "{config}");
    assert_eq!(config.matches("log_by_lua_block").count(), 1, "{config}");
    let realm = config.find("set_by_lua_block $smartproxy_auth_realm").expect("the realm");
    let rewrite = config.find("rewrite ^/admin").expect("the strip-prefix rewrite");
    assert!(realm < rewrite, "{config}");
}

#[test]
fn policies() {
    let files = container(
        "files",
        [172, 20, 0, 7],
        &[
            ("smart-proxy.domains", "files.example.com"),
            ("smart-proxy.max-body", "10g"),
            ("smart-proxy.timeout", "1h"),
            ("smart-proxy.buffering", "off"),
            ("smart-proxy.health", "/healthz"),
            ("smart-proxy.api.domains", "files.example.com"),
            ("smart-proxy.api.path", "/api/"),
            ("smart-proxy.api.max-body", "0"),
            ("smart-proxy.api.strip-prefix", "true"),
            ("smart-proxy.hsts", "31536000,includeSubDomains,preload"),
            ("smart-proxy.lb", "least-conn"),
        ],
    );
    let app = container(
        "app",
        [172, 20, 0, 8],
        &[("smart-proxy.domains", "app.example.com"), ("smart-proxy.health", "off"), ("smart-proxy.hsts", "off")],
    );
    let secure = container(
        "secure",
        [172, 20, 0, 9],
        &[
            ("smart-proxy.domains", "secure.example.com"),
            ("smart-proxy.proto", "https"),
            ("smart-proxy.backend-verify", "app.internal"),
            ("smart-proxy.port", "8443"),
        ],
    );
    let grpc = container(
        "grpc",
        [172, 20, 0, 10],
        &[
            ("smart-proxy.domains", "grpc.example.com"),
            ("smart-proxy.proto", "grpc"),
            ("smart-proxy.timeout", "1h"),
            ("smart-proxy.headers.request.X-Tenant", "a"),
            ("smart-proxy.headers.response.Server", ""),
        ],
    );
    let php = container(
        "php",
        [172, 20, 0, 11],
        &[
            ("smart-proxy.domains", "php.example.com"),
            ("smart-proxy.proto", "fastcgi"),
            ("smart-proxy.port", "9000"),
            ("smart-proxy.fastcgi.root", "/app/public/"),
            ("smart-proxy.buffering", "off"),
            ("smart-proxy.headers.request.X-Tenant", "a$b"),
            ("smart-proxy.py.domains", "py.example.com"),
            ("smart-proxy.py.proto", "uwsgi"),
            ("smart-proxy.py.port", "3031"),
            // auth over FastCGI and uwsgi: copied headers as CGI params, bypass locations with
            // their module's pass.
            ("smart-proxy.auth", "basic"),
            ("smart-proxy.auth.users", "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
            ("smart-proxy.auth.bypass", "/public/"),
            ("smart-proxy.py.auth", "forward"),
            ("smart-proxy.py.auth.url", "http://10.0.0.9:4180/oauth2/auth"),
            ("smart-proxy.py.auth.headers", "Remote-User"),
            ("smart-proxy.py.auth.bypass", "/static/"),
        ],
    );
    let moved = container(
        "moved",
        [172, 20, 0, 12],
        &[
            ("smart-proxy.domains", "moved.example.com"),
            ("smart-proxy.redirect", "https://new.example.com/a;b$c"),
            ("smart-proxy.redirect.code", "308"),
            ("smart-proxy.www", "to-www"),
        ],
    );
    // auth and rate: basic with a bypass path and a header-keyed rate; forward with a sign-in
    // page, copied headers and a URL holding quotes and a '$'.
    let admin = container(
        "admin",
        [172, 20, 0, 9],
        &[
            ("smart-proxy.domains", "admin.example.com"),
            ("smart-proxy.auth", "basic"),
            ("smart-proxy.auth.users", "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
            ("smart-proxy.auth.bypass", "/public/"),
            ("smart-proxy.rate", "600r/m"),
            ("smart-proxy.rate.burst", "5"),
            ("smart-proxy.rate.key", "header:X-Api-Key"),
            ("smart-proxy.sso.domains", "sso.example.com"),
            ("smart-proxy.sso.auth", "forward"),
            ("smart-proxy.sso.auth.url", "http://authelia:9091/api/verify?x=\"$a\""),
            ("smart-proxy.sso.auth.signin", "https://auth.example.com/login"),
            ("smart-proxy.sso.auth.headers", "Remote-User,Remote-Groups"),
            ("smart-proxy.sso.rate", "10r/s"),
        ],
    );
    let table = label_table(&[files, app, secure, grpc, php, moved, admin]);
    golden("policies", &table, false);
    let config = NginxSandbox::new().render_and_test(&table, true);
    assert_eq!(config.matches("location = /healthz {").count(), 1, "{config}");
    assert_eq!(config.matches("location = /health {").count(), table.sites.len() - 2, "not files, not app: {config}");
    for line in [
        "proxy_pass https://sp_secure;",
        "proxy_ssl_name app.internal;",
        "proxy_ssl_verify on;",
        "grpc_pass grpc://sp_grpc;",
        "grpc_read_timeout 3600s;",
        "grpc_set_header X-Tenant \"a\";",
        "grpc_hide_header Server;",
        "fastcgi_param SCRIPT_FILENAME /app/public$smartproxy_fastcgi_script;",
        "fastcgi_buffering off;",
        "fastcgi_param HTTP_X_TENANT \"a${smartproxy_dollar}b\";",
        "uwsgi_param HTTP_REMOTE_USER $smartproxy_auth_1;",
        "return 308 \"https://new.example.com/a;b${smartproxy_dollar}c$request_uri\";",
        "return 301 \"http://www.moved.example.com$request_uri\";",
    ] {
        assert_eq!(config.matches(line).count(), 1, "{line}: {config}");
    }
    assert_eq!(config.matches("fastcgi_pass sp_php;").count(), 2, "the route and its bypass location: {config}");
    assert_eq!(config.matches("uwsgi_pass sp_php-py;").count(), 2, "the route and its bypass location: {config}");
    assert_eq!(config.matches("client_max_body_size 10g;").count(), 1, "{config}");
    assert_eq!(config.matches("client_max_body_size 0;").count(), 1, "{config}");
    assert_eq!(config.matches("proxy_read_timeout 3600s;").count(), 2, "both routes of files: {config}");
    assert_eq!(config.matches("proxy_request_buffering off;").count(), 2, "{config}");
    assert_eq!(config.matches("rewrite ^/api(?:/(.*))?$ /$1 break;").count(), 1, "{config}");
    assert_eq!(config.matches("    least_conn;\n").count(), 2, "both upstreams of files (lb is inherited): {config}");
    // auth and rate: the zones in the http context, limit_req and auth in the locations; the
    // bypass location keeps the rate limit (inherited) and the proxying.
    assert_eq!(config.matches("limit_req_zone ").count(), 2, "{config}");
    assert!(config.contains("limit_req zone=sp_rate_admin.example.com/@x_api_key burst=5 nodelay;"), "{config}");
    assert!(
        config.contains("location /public/ {\n            auth_basic off;\n            proxy_pass http://sp_admin;")
    );
    assert_eq!(config.matches("auth_request /.smart-proxy/auth/1;").count(), 2, "sso and py: {config}");
    assert!(
        config.contains(r#"set $smartproxy_auth_url "http://authelia:9091/api/verify?x=\"${smartproxy_dollar}a\"";"#)
    );
    let production = NginxSandbox::new().render_and_test(&table, false);
    assert_eq!(production.matches("max-age=31536000; includeSubDomains; preload").count(), 1, "{production}");
    assert_eq!(production.matches("Strict-Transport-Security").count(), table.sites.len() - 1, "not app: {production}");
}

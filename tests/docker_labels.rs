//! Label discovery against the real Docker daemon: containers started from a locally built
//! busybox image, read back through `DockerClient`, turned into routes and checked with `nginx -t`.
//!
//! Each test owns a `TestDocker` guard with its own label prefix (`sptest<run_id>`), so it only
//! ever sees its own containers, whatever else runs on the daemon.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::Value;
use smart_proxy::routes::{BackendState, RouteTable, Site, Upstream};
use smart_proxy::sources::docker::DockerClient;
use smart_proxy::sources::labels::{self, Container, LabelSettings};

use crate::support::docker::{http_get, TestDocker, APP_PORT};
use crate::support::NginxSandbox;

/// Lists this test's running containers through the library and builds the route table, as the
/// pipeline does.
async fn discover(d: &TestDocker, nginx_networks: Option<BTreeSet<String>>) -> (Vec<Container>, RouteTable) {
    let containers = containers(d).await;
    let table = table(d, &containers, nginx_networks);
    (containers, table)
}

async fn containers(d: &TestDocker) -> Vec<Container> {
    let client = DockerClient::connect().await.expect("connect to the Docker daemon");
    let containers = client.labelled_containers(&d.prefix()).await.expect("list labelled containers");
    for c in &containers {
        assert!(d.owns(&c.name), "prefix {} matched a container this test did not start: {}", d.prefix(), c.name);
    }
    containers
}

fn table(d: &TestDocker, containers: &[Container], nginx_networks: Option<BTreeSet<String>>) -> RouteTable {
    let out = labels::routes(containers, &LabelSettings { prefix: d.prefix(), nginx_networks });
    RouteTable::build(vec![out])
}

fn upstream<'a>(table: &'a RouteTable, service: &str) -> &'a Upstream {
    table.upstreams.iter().find(|u| u.service.as_str() == service).unwrap_or_else(|| {
        let have: Vec<&str> = table.upstreams.iter().map(|u| u.service.as_str()).collect();
        panic!("no upstream for service {service}; upstreams: {have:?}")
    })
}

fn site<'a>(table: &'a RouteTable, domain: &str) -> &'a Site {
    table
        .sites
        .iter()
        .find(|s| s.domain.as_str() == domain)
        .unwrap_or_else(|| panic!("no site {domain}; sites: {:?}", domains(table)))
}

fn domains(table: &RouteTable) -> Vec<&str> {
    table.sites.iter().map(|s| s.domain.as_str()).collect()
}

fn messages(table: &RouteTable) -> Vec<String> {
    table.diagnostics.iter().map(ToString::to_string).collect()
}

/// The `upstream <id> { ... }` block of a rendered config.
fn upstream_block<'a>(config: &'a str, id: &str) -> &'a str {
    let start = config.find(&format!("upstream {id} {{\n")).unwrap_or_else(|| panic!("no upstream {id} in:\n{config}"));
    let end = config[start..].find('}').expect("upstream block ends") + start;
    &config[start..=end]
}

fn server_lines(block: &str) -> Vec<&str> {
    block.lines().map(str::trim).filter(|l| l.starts_with("server ")).collect()
}

fn address(ip: Ipv4Addr) -> String {
    format!("{ip}:{APP_PORT}")
}

#[tokio::test]
async fn labels_become_routes_to_the_container_addresses() {
    require_docker!();
    let d = TestDocker::new();
    let net = d.network("net");
    let names = d.start(vec![
        d.app("app1").network(&net).label("domains", "app1.test"),
        d.app("app2").network(&net).label("domains", "app2.test").label("port", "8080"),
        d.app("shop")
            .network(&net)
            .label("domains", "shop.test")
            .label("api.domains", "shop.test")
            .label("api.path", "/api/"),
    ]);
    let (app1, app2, shop) = (&names[0], &names[1], &names[2]);

    let (containers, table) = discover(&d, None).await;
    assert_eq!(containers.len(), 3, "{containers:#?}");
    for c in &containers {
        assert_eq!(c.exposed_ports, [APP_PORT], "{}: the image's EXPOSE", c.name);
        assert_eq!(c.health, None, "{}: the image has no HEALTHCHECK", c.name);
    }
    assert!(table.diagnostics.is_empty(), "{:#?}", messages(&table));
    assert_eq!(domains(&table), ["app1.test", "app2.test", "shop.test"]);

    // Every service has one server: the container's real address on its network, port 8080
    // (the only exposed port for app1 and shop; the port label for app2).
    let expected = [(app1.clone(), app1), (app2.clone(), app2), (shop.clone(), shop), (format!("{shop}-api"), shop)];
    for (service, container) in &expected {
        let ip = d.ip(container);
        let u = upstream(&table, service);
        assert_eq!(u.backends.len(), 1, "{service}: {:#?}", u.backends);
        let b = &u.backends[0];
        assert_eq!(b.address(), address(ip), "{service}: docker inspect says {container} is at {ip}");
        assert_eq!(b.state, BackendState::Up);
        let network = b.network.as_ref().expect("a label backend records its network");
        assert_eq!(network.name, net);
        assert_eq!(network.reason, "the container's only network");
    }
    assert_eq!(table.upstreams.len(), 4);

    // The multi-route container: `/` goes to its default route, `/api/` to the named one.
    let shop_site = site(&table, "shop.test");
    let locations: Vec<(&str, Option<&str>)> =
        shop_site.locations.iter().map(|l| (l.path.as_str(), l.upstream.as_deref())).collect();
    let (shop_id, api_id) = (upstream(&table, shop).id.as_str(), upstream(&table, &format!("{shop}-api")).id.as_str());
    assert_eq!(locations, [("/", Some(shop_id)), ("/api/", Some(api_id))]);

    // The addresses really are the apps: each answers with its own name.
    for (short, name) in [("app1", app1), ("app2", app2), ("shop", shop)] {
        assert_eq!(http_get(d.ip(name).into(), APP_PORT), format!("{short}\n"), "GET / on {name}");
    }

    let config = NginxSandbox::new().render_and_test(&table, false);
    for (service, container) in &expected {
        let id = &upstream(&table, service).id;
        let servers = server_lines(upstream_block(&config, id));
        assert_eq!(servers, [format!("server {};", address(d.ip(container)))], "upstream {id}");
    }
    for domain in ["app1.test", "app2.test", "shop.test"] {
        assert!(config.contains(&format!("server_name {domain};")), "no server for {domain}:\n{config}");
    }
    assert!(config.contains(&format!("location /api/ {{\n        proxy_pass http://{api_id};")), "{config}");
}

#[tokio::test]
async fn replicas_share_one_upstream() {
    require_docker!();
    let d = TestDocker::new();
    let net = d.network("net");
    let project = d.prefix();
    let compose = |short: &str| {
        d.app(short)
            .network(&net)
            .label("domains", "web.test")
            .raw_label("com.docker.compose.project", &project)
            .raw_label("com.docker.compose.service", "web")
    };
    let pool = |short: &str| d.app(short).network(&net).label("domains", "pool.test").label("service", "pool");
    let names = d.start(vec![compose("web-1"), compose("web-2"), pool("pool-a"), pool("pool-b")]);

    let (_, table) = discover(&d, None).await;
    assert!(table.diagnostics.is_empty(), "replicas are load balancing, not conflicts: {:#?}", messages(&table));
    assert_eq!(domains(&table), ["pool.test", "web.test"]);
    assert_eq!(table.upstreams.len(), 2, "{:#?}", table.upstreams);

    let config = NginxSandbox::new().render_and_test(&table, false);
    for (service, replicas) in [(format!("{project}-web"), &names[0..2]), ("pool".to_string(), &names[2..4])] {
        let u = upstream(&table, &service);
        let mut want: Vec<String> = replicas.iter().map(|n| address(d.ip(n))).collect();
        want.sort();
        let mut have: Vec<String> = u.backends.iter().map(|b| b.address()).collect();
        have.sort();
        assert_eq!(have, want, "upstream of {service}");
        let mut servers = server_lines(upstream_block(&config, &u.id));
        servers.sort();
        let want_lines: Vec<String> = want.iter().map(|a| format!("server {a};")).collect();
        assert_eq!(servers, want_lines, "upstream {} in the config", u.id);
        let s = site(&table, if service == "pool" { "pool.test" } else { "web.test" });
        assert_eq!(s.locations.len(), 1);
        assert_eq!(s.locations[0].upstream.as_deref(), Some(u.id.as_str()));
    }
}

#[tokio::test]
async fn bad_labels_are_reported_and_skip_only_their_container() {
    require_docker!();
    let d = TestDocker::new();
    let net = d.network("net");
    let names = d.start(vec![
        d.app("badport").network(&net).label("domains", "badport.test").label("port", "invalid"),
        d.app("bigport").network(&net).label("domains", "bigport.test").label("port", "99999"),
        d.app("baddomain").network(&net).label("domains", "bad_domain!"),
        d.app("typo").network(&net).label("domains", "typo.test").label("domian", "x"),
        d.app("good").network(&net).label("domains", "good.test"),
    ]);
    let (badport, bigport, baddomain, typo, good) = (&names[0], &names[1], &names[2], &names[3], &names[4]);
    let p = d.prefix();

    let (containers, table) = discover(&d, None).await;
    assert_eq!(containers.len(), 5);
    let messages = messages(&table);
    let expected = [
        format!("error: container {badport}, label {p}.port: port \"invalid\" is not a number; must be a whole number from 1 to 65535"),
        format!("error: container {bigport}, label {p}.port: port 99999 is out of range; must be 1-65535"),
        format!("error: container {baddomain}, label {p}.domains: domain \"bad_domain!\" is not a valid host name"),
        format!("error: container {typo}, label {p}.domian: unknown label; known labels: {p}.{{domains,"),
    ];
    assert_eq!(messages.len(), expected.len(), "{messages:#?}");
    for want in &expected {
        assert!(
            messages.iter().any(|m| m.starts_with(want.as_str())),
            "no message starting with\n  {want}\nin {messages:#?}"
        );
    }
    assert!(!table.has_static_errors(), "label errors must not fail the run as static errors do");

    // Only the good container is routed, and its config passes nginx -t.
    assert_eq!(domains(&table), ["good.test"]);
    assert_eq!(table.upstreams.len(), 1);
    assert_eq!(upstream(&table, good).backends[0].address(), address(d.ip(good)));
    let config = NginxSandbox::new().render_and_test(&table, false);
    assert!(config.contains("server_name good.test;"));
    for bad in ["badport.test", "bigport.test", "bad_domain", "typo.test"] {
        assert!(!config.contains(bad), "{bad} is in the config:\n{config}");
    }
}

#[tokio::test]
async fn network_choice_on_two_networks() {
    require_docker!();
    let d = TestDocker::new();
    let (a, b) = (d.network("a"), d.network("b"));
    let p = d.prefix();
    let names = d.start(vec![
        // Attached to b first: the choice must not depend on attach order.
        d.app("multi").network(&b).network(&a).label("domains", "multi.test"),
        d.app("pinned").network(&a).network(&b).label("domains", "pinned.test").label("network", &b),
        d.app("lonely").network(&a).label("domains", "lonely.test"),
        d.app("nginx").network(&b).label("nginx", "true"),
    ]);
    let (multi, pinned, lonely, nginx) = (&names[0], &names[1], &names[2], &names[3]);
    for name in [multi, pinned] {
        assert_eq!(d.ips(name).keys().collect::<Vec<_>>(), [&a, &b], "{name} is on both networks");
    }
    let chosen = |table: &RouteTable, service: &str| {
        let b = &upstream(table, service).backends[0];
        let n = b.network.clone().expect("network recorded");
        (n.name, n.reason, b.address())
    };

    // nginx's networks unknown: the first network by name, unless the label says otherwise.
    let (containers, table) = discover(&d, None).await;
    assert_eq!(containers.len(), 4);
    assert!(table.diagnostics.is_empty(), "{:#?}", messages(&table));
    assert_eq!(domains(&table), ["lonely.test", "multi.test", "pinned.test"], "the nginx container is not routed");
    assert_eq!(
        chosen(&table, multi),
        (
            a.clone(),
            format!("first (by name) of {a}, {b}; nginx's networks are unknown, set NGINX_CONTAINER or {p}.network"),
            address(d.ip_on(multi, &a))
        )
    );
    assert_eq!(chosen(&table, pinned), (b.clone(), format!("set by {p}.network"), address(d.ip_on(pinned, &b))));
    assert_eq!(chosen(&table, lonely), (a.clone(), "the container's only network".to_string(), address(d.ip(lonely))));
    NginxSandbox::new().render_and_test(&table, false);

    // nginx's networks known (the container labelled nginx=true, or NGINX_CONTAINER): the shared one.
    let client = DockerClient::connect().await.unwrap();
    let nginx_networks: BTreeSet<String> = [b.clone()].into();
    assert_eq!(smart_proxy::pipeline::nginx_container(None, &p, &containers), Ok(Some(nginx.to_string())));
    assert_eq!(client.nginx_state(nginx).await.unwrap().networks, nginx_networks);
    let table = self::table(&d, &containers, Some(nginx_networks));
    assert_eq!(
        chosen(&table, multi),
        (b.clone(), "the network shared with nginx".to_string(), address(d.ip_on(multi, &b)))
    );
    assert_eq!(chosen(&table, pinned), (b.clone(), format!("set by {p}.network"), address(d.ip_on(pinned, &b))));
    assert_eq!(
        messages(&table),
        [format!(
            "error: container {lonely}: no network shared with nginx: the container is on {a}; nginx is on {b}. Connect them to a common network or set {p}.network"
        )]
    );
    assert_eq!(domains(&table), ["multi.test", "pinned.test"]);
    NginxSandbox::new().render_and_test(&table, false);
}

#[tokio::test]
async fn a_stopped_container_keeps_its_routes_without_servers_until_removed() {
    require_docker!();
    let d = TestDocker::new();
    let net = d.network("net");
    let replica = |short: &str| d.app(short).network(&net).label("domains", "web.test").label("service", "web");
    let names =
        d.start(vec![replica("web-1"), replica("web-2"), d.app("solo").network(&net).label("domains", "solo.test")]);
    let (web1, web2, solo) = (&names[0], &names[1], &names[2]);

    let (_, table) = discover(&d, None).await;
    assert_eq!(domains(&table), ["solo.test", "web.test"]);
    assert_eq!(upstream(&table, "web").backends.len(), 2);
    assert_eq!(upstream(&table, solo).backends.len(), 1);

    // Stopped: still listed (not running); a stopped replica leaves its upstream, a stopped only
    // container leaves its domain routed to an upstream without servers (502, not 503).
    d.stop(web2);
    d.stop(solo);
    assert_eq!(d.status(solo), "exited");
    let (containers, table) = discover(&d, None).await;
    let mut running: Vec<(&str, bool)> = containers.iter().map(|c| (c.name.as_str(), c.running)).collect();
    running.sort();
    let mut want = [(web1.as_str(), true), (web2.as_str(), false), (solo.as_str(), false)];
    want.sort();
    assert_eq!(running, want);
    assert!(table.diagnostics.is_empty(), "{:#?}", messages(&table));
    assert_eq!(domains(&table), ["solo.test", "web.test"]);
    let web = upstream(&table, "web");
    assert_eq!(web.backends.iter().map(|b| b.address()).collect::<Vec<_>>(), [address(d.ip(web1))]);
    let solo_upstream = upstream(&table, solo);
    assert!(solo_upstream.backends.is_empty(), "{:#?}", solo_upstream.backends);
    let config = NginxSandbox::new().render_and_test(&table, false);
    assert_eq!(server_lines(upstream_block(&config, &solo_upstream.id)), ["server 127.0.0.1:9 down;"]);
    assert_eq!(server_lines(upstream_block(&config, &web.id)), [format!("server {};", address(d.ip(web1)))]);

    // Removed: gone from the routes.
    d.remove(solo);
    let (containers, table) = discover(&d, None).await;
    assert_eq!(containers.len(), 2);
    assert_eq!(domains(&table), ["web.test"]);
}

/// The binary with a clean environment: only this test's settings apply.
fn cli(d: &TestDocker, certs: &std::path::Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("nginx-smart-proxy").expect("the nginx-smart-proxy binary");
    // Every setting's env var (from the CLI definition itself), and the log filter.
    let settings = <smart_proxy::cli::Cli as clap::CommandFactory>::command();
    for arg in settings.get_arguments() {
        if let Some(var) = arg.get_env() {
            cmd.env_remove(var);
        }
    }
    cmd.env_remove("LOG_LEVEL");
    cmd.env("LABEL_PREFIX", d.prefix())
        .env("CERTS_DIR", certs)
        .env("NGINX_VERSION", "1.22.1")
        .env("RESOLVER", "127.0.0.11");
    cmd.timeout(std::time::Duration::from_secs(60));
    cmd
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cli_check_and_dry_run_read_labels_unless_no_docker() {
    require_docker!();
    let d = TestDocker::new();
    let net = d.network("net");
    let names = d.start(vec![
        d.app("web").network(&net).label("domains", "web.test"),
        d.app("broken").network(&net).label("domains", "broken.test").label("port", "invalid"),
    ]);
    let (web, broken) = (&names[0], &names[1]);
    let web_address = address(d.ip(web));
    let p = d.prefix();
    let certs = tempfile::tempdir().unwrap();

    // check --format json: the label route with its real server, and the bad container's error.
    let output = cli(&d, certs.path()).args(["check", "--format", "json"]).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "label errors do not fail check; stderr:\n{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("check --format json: {e}\n{}", stdout(&output)));
    let source = format!("container {web}");
    let expected = serde_json::json!({
        "routes": [{
            "domain": "web.test",
            "path": "/",
            "service": web,
            "upstream": format!("sp_{web}"),
            "servers": [{
                "address": web_address,
                "state": "up",
                "network": net,
                "network_reason": "the container's only network",
                "source": source,
            }],
            "source": source,
            "tls": "auto",
            "allow": [],
        }],
        "errors": [{
            "severity": "error",
            "origin": format!("container {broken}, label {p}.port"),
            "message": "port \"invalid\" is not a number; must be a whole number from 1 to 65535",
        }],
        "warnings": [],
        "placeholders": ["web.test"],
    });
    assert_eq!(report, expected, "check --format json:\n{}", stdout(&output));
    assert!(!stderr(&output).contains("labels were not read"), "{}", stderr(&output));

    // The text table says the same.
    let output = cli(&d, certs.path()).arg("check").output().unwrap();
    let text = stdout(&output);
    assert!(text.lines().any(|l| l.starts_with("web.test") && l.contains(&web_address)), "{text}");
    assert!(text.contains(&format!("container {broken}, label {p}.port: port \"invalid\"")), "{text}");
    // ... and explains the key from the label schema.
    let explained = format!("\n  {p}.port (and {p}.<route>.port): backend port, 1–65535; allowed: a whole number");
    assert!(text.contains(&explained), "{text}");

    // --dry-run renders the label routes next to the env ones; --no-docker leaves labels out.
    let output = cli(&d, certs.path()).arg("--dry-run").env("DOMAINS", "static.test").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = stdout(&output);
    assert!(config.contains("server_name web.test;") && config.contains(&format!("server {web_address};")), "{config}");
    assert!(config.contains("server_name static.test;"), "{config}");

    let output =
        cli(&d, certs.path()).args(["--dry-run", "--no-docker"]).env("DOMAINS", "static.test").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let config = stdout(&output);
    assert!(config.contains("server_name static.test;"), "{config}");
    assert!(
        !config.contains("web.test") && !config.contains(&web_address),
        "--no-docker must ignore labels:\n{config}"
    );
    assert!(
        !stderr(&output).contains(broken.as_str()),
        "--no-docker must not report label errors:\n{}",
        stderr(&output)
    );
}

/// Since `labelled_containers` also lists stopped containers, a stopped old nginx container
/// labelled `nginx=true` must not count as (another) nginx container.
#[tokio::test]
async fn a_stopped_nginx_container_is_not_the_nginx_container() {
    require_docker!();
    let d = TestDocker::new();
    let (a, b) = (d.network("a"), d.network("b"));
    let names = d.start(vec![
        d.app("nginx-old").network(&a).label("nginx", "true"),
        d.app("nginx").network(&b).label("nginx", "true"),
        d.app("multi").network(&a).network(&b).label("domains", "multi.test"),
    ]);
    d.stop(&names[0]);
    let containers = containers(&d).await;
    let client = DockerClient::connect().await.unwrap();
    let nginx = smart_proxy::pipeline::nginx_container(None, &d.prefix(), &containers);
    assert_eq!(nginx, Ok(Some(names[1].clone())), "the running nginx container, not the stopped one");
    let nginx_networks = Some(client.nginx_state(&names[1]).await.unwrap().networks);
    assert_eq!(nginx_networks, Some([b.clone()].into()), "the running nginx container's networks");
    let table = table(&d, &containers, nginx_networks);
    let network = upstream(&table, &names[2]).backends[0].network.clone().unwrap();
    assert_eq!((network.name, network.reason), (b, "the network shared with nginx".to_string()));
}

/// A container that only redirects needs no network (here: none at all, while nginx's networks
/// are known) and no port: its domains redirect, and the config loads.
#[tokio::test]
async fn a_redirect_only_container_needs_no_network() {
    require_docker!();
    let d = TestDocker::new();
    let net = d.network("net");
    d.start(vec![
        d.app("moved").network("none").label("domains", "old.test").label("redirect", "https://new.test/"),
        d.app("app").network(&net).label("domains", "app.test").label("www", "to-www"),
    ]);
    let (_, table) = discover(&d, Some([net.clone()].into())).await;
    assert!(table.diagnostics.is_empty(), "{:#?}", messages(&table));
    assert_eq!(domains(&table), ["app.test", "old.test", "www.app.test"]);
    assert_eq!(
        site(&table, "old.test").redirect.as_ref().map(ToString::to_string).as_deref(),
        Some("https://new.test/ (301, path kept)")
    );
    assert_eq!(
        site(&table, "app.test").redirect.as_ref().map(ToString::to_string).as_deref(),
        Some("www.app.test (301, path kept)")
    );
    assert_eq!(table.upstreams.len(), 1, "the redirect has no upstream");
    NginxSandbox::new().render_and_test(&table, false);
}

//! How nginx meets clients, through the real nginx: the client address behind trusted proxies
//! (`TRUSTED_PROXIES`, `REAL_IP_HEADER`, the PROXY protocol) and IPv6 listening (`IPV6`).

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use smart_proxy::render::edge::RealIp;
use smart_proxy::routes::RouteTable;

use crate::policies::Served;
use crate::support::agent::Agent;
use crate::support::container;
use crate::support::label_table;
use crate::support::stub_http::StubHttp;

/// An app on loopback answering with the client address nginx gave it (`X-Real-IP`) and the
/// `X-Forwarded-For` it got.
fn app() -> StubHttp {
    StubHttp::start(0, |request| {
        Some(format!(
            "real={} xff={}",
            request.header("x-real-ip").unwrap_or("-"),
            request.header("x-forwarded-for").unwrap_or("-")
        ))
    })
}

/// Routes `ip.test` to the app, `vpn.test` to it only for 203.0.113.0/24, and `limited.test`
/// to it at one request a minute per client.
fn table(app: &StubHttp) -> RouteTable {
    let port = app.port().to_string();
    let c = container(
        "app",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "ip.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.vpn.domains", "vpn.test"),
            ("smart-proxy.vpn.allow", "203.0.113.0/24"),
            ("smart-proxy.limited.domains", "limited.test"),
            ("smart-proxy.limited.rate", "1r/m"),
            ("smart-proxy.limited.rate.burst", "0"),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    table
}

/// Sends `prefix` (a PROXY protocol line, or nothing) and a GET with `headers` to 127.0.0.1:port;
/// returns the status and the body.
fn request(port: u16, prefix: &str, host: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let text = format!("{prefix}GET / HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn served(app: &StubHttp, trusted: &str, header: Option<&str>) -> Served {
    let real_ip = RealIp::from_settings(trusted, header).unwrap();
    Served::start_with(&table(app), |s| s.real_ip = real_ip)
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let app = app();
    let spoof = "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n";

    // Nobody trusted (the default): the header is the client's word, the address is the peer's.
    let nginx = served(&app, "", None);
    assert_eq!(request(nginx.port, "", "ip.test", spoof).1, "real=127.0.0.1 xff=198.51.100.1, 203.0.113.9, 127.0.0.1");
    assert_eq!(request(nginx.port, "", "vpn.test", spoof).0, 403, "allow sees the peer, not the header");
    // The rate limit counts the peer: a new address in the header does not get a new count.
    let from = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    assert_eq!(request(nginx.port, "", "limited.test", &from("198.51.100.1")).0, 200);
    assert_eq!(request(nginx.port, "", "limited.test", &from("198.51.100.2")).0, 429, "the header dodges no limit");
    drop(nginx);

    // Another network trusted: loopback is not, so its header is ignored.
    let nginx = served(&app, "10.0.0.0/8,cloudflare", None);
    assert_eq!(request(nginx.port, "", "ip.test", spoof).1.split(' ').next(), Some("real=127.0.0.1"));
    assert_eq!(request(nginx.port, "", "vpn.test", spoof).0, 403);
    drop(nginx);

    // Loopback trusted: the right-most untrusted address is the client, for the app and `allow`.
    let nginx = served(&app, "127.0.0.1", None);
    assert_eq!(request(nginx.port, "", "ip.test", spoof).1.split(' ').next(), Some("real=203.0.113.9"));
    assert_eq!(request(nginx.port, "", "vpn.test", spoof).0, 200, "allow sees the client");
    assert_eq!(request(nginx.port, "", "vpn.test", "").0, 403, "no header: the peer's own address");
    // The rate limit counts each client behind the trusted proxy on its own.
    assert_eq!(request(nginx.port, "", "limited.test", &from("203.0.113.1")).0, 200);
    assert_eq!(request(nginx.port, "", "limited.test", &from("203.0.113.1")).0, 429);
    assert_eq!(request(nginx.port, "", "limited.test", &from("203.0.113.2")).0, 200, "another client, its own count");
}

#[test]
fn another_header_or_the_proxy_protocol_carries_the_client() {
    let app = app();
    let nginx = served(&app, "127.0.0.0/8", Some("CF-Connecting-IP"));
    let (_, body) =
        request(nginx.port, "", "ip.test", "CF-Connecting-IP: 203.0.113.7\r\nX-Forwarded-For: 10.1.1.1\r\n");
    assert!(body.starts_with("real=203.0.113.7 "), "{body}");
    drop(nginx);

    let nginx = served(&app, "127.0.0.1", Some("proxy_protocol"));
    let proxy_line = "PROXY TCP4 203.0.113.8 127.0.0.1 51000 80\r\n";
    let (status, body) = request(nginx.port, proxy_line, "vpn.test", "X-Forwarded-For: 10.9.9.9\r\n");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("real=203.0.113.8 "), "the PROXY header's source, not X-Forwarded-For: {body}");
    assert_eq!(request(nginx.port, "", "ip.test", "").0, 0, "a listener expecting the PROXY protocol drops plain HTTP");
}

#[test]
fn nginx_listens_on_ipv6_unless_turned_off() {
    if !std::path::Path::new("/proc/net/if_inet6").exists() {
        panic!("this host's kernel has no IPv6: the test needs ::1");
    }
    let app = app();
    let v6 = |port: u16| {
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(|mut s| {
            s.write_all(b"GET / HTTP/1.1\r\nHost: ip.test\r\nConnection: close\r\n\r\n").unwrap();
            let mut response = String::new();
            let _ = s.read_to_string(&mut response);
            response
        })
    };
    let nginx = Served::start_with(&table(&app), |s| s.ipv6 = true);
    let response = v6(nginx.port).expect("nginx answers on [::1]");
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("real=::1"), "{response}");
    drop(nginx);

    let nginx = Served::start_with(&table(&app), |s| s.ipv6 = false);
    assert!(v6(nginx.port).is_err(), "IPV6=off: nothing listens on [::1]");
}

#[test]
fn nginx_errors_get_the_proxy_pages_unless_a_route_turns_them_off() {
    let dead = crate::support::free_port().to_string();
    // An app that answers after 2.5 s: past `timeout=1s`, nginx answers 504.
    let slow = StubHttp::start(0, |_| {
        std::thread::sleep(Duration::from_millis(2500));
        Some("late".into())
    });
    let slow_port = slow.port().to_string();
    let c = container(
        "down",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "down.test"),
            ("smart-proxy.port", &dead),
            ("smart-proxy.path", "/app/"),
            ("smart-proxy.own.domains", "own.test"),
            ("smart-proxy.own.path", "/"),
            ("smart-proxy.own.error-pages", "off"),
            ("smart-proxy.limited.domains", "limited.test"),
            ("smart-proxy.limited.rate", "1r/m"),
            ("smart-proxy.limited.rate.burst", "0"),
        ],
    );
    let s = container(
        "slow",
        [127, 0, 0, 1],
        &[("smart-proxy.domains", "slow.test"), ("smart-proxy.port", &slow_port), ("smart-proxy.timeout", "1s")],
    );
    // And a domain without a service (the seed's `DOMAINS` form): 503.
    use smart_proxy::sources::{env, labels};
    let settings = labels::LabelSettings { prefix: "smart-proxy".into(), nginx_networks: None };
    let table = RouteTable::build(vec![labels::routes(&[c, s], &settings), env::parse(Some("none.test"), Some(""))]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let get = |port: u16, host: &str, path: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let text = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(text.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    };
    // The status and body of each error nginx answers itself (the rate limit's second request
    // within its minute is the 429; `limited` takes the container's `path`).
    let errors = |port: u16| -> Vec<(u16, String)> {
        let first = get(port, "limited.test", "/app/");
        assert!(first.starts_with("HTTP/1.1 502"), "the first request passes the limit: {first}");
        [("down.test", "/"), ("down.test", "/app/x"), ("none.test", "/"), ("slow.test", "/"), ("limited.test", "/app/")]
            .iter()
            .map(|(host, path)| {
                let response = get(port, host, path);
                let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
            })
            .collect()
    };

    // Built in: plain text naming the domain, with nginx's status.
    let nginx = Served::start_with(&table, |_| {});
    assert_eq!(
        errors(nginx.port),
        [
            (404, "down.test has no page at this address\n".into()),
            (502, "down.test is starting or down\n".into()),
            (503, "Service not configured for this domain\n".into()),
            (504, "slow.test did not answer in time\n".into()),
            (429, "Too many requests to limited.test: wait a moment and try again\n".into()),
        ]
    );
    let own = get(nginx.port, "own.test", "/");
    assert!(own.starts_with("HTTP/1.1 502") && own.contains("<h1>502 Bad Gateway</h1>"), "error-pages=off: {own}");
    drop(nginx);

    // Branded pages from ERROR_PAGES_DIR (read by nginx's workers); a code without a file (404)
    // keeps the built-in text.
    use std::os::unix::fs::PermissionsExt;
    let pages = tempfile::tempdir().unwrap();
    std::fs::set_permissions(pages.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for code in [429, 502, 503, 504] {
        std::fs::write(pages.path().join(format!("{code}.html")), format!("<h1>Brand {code}</h1>\n")).unwrap();
    }
    let error_pages = smart_proxy::config::read_error_pages(Some(pages.path())).unwrap();
    let nginx = Served::start_with(&table, |s| s.error_pages = error_pages);
    let branded = get(nginx.port, "down.test", "/app/x");
    assert!(branded.starts_with("HTTP/1.1 502") && branded.contains("Content-Type: text/html"), "{branded}");
    assert_eq!(
        errors(nginx.port),
        [
            (404, "down.test has no page at this address\n".into()),
            (502, "<h1>Brand 502</h1>\n".into()),
            (503, "<h1>Brand 503</h1>\n".into()),
            (504, "<h1>Brand 504</h1>\n".into()),
            (429, "<h1>Brand 429</h1>\n".into()),
        ]
    );
    assert!(get(nginx.port, "own.test", "/").contains("<h1>502 Bad Gateway</h1>"));
    assert_eq!(
        get(nginx.port, "down.test", "/.smartproxy-error/502.html").split(' ').nth(1),
        Some("404"),
        "internal only"
    );
}

/// The agent refreshes `TRUSTED_PROXIES=cloudflare` from `CLOUDFLARE_IPS_URL`: a good list is
/// trusted at once (here loopback, so a request from 127.0.0.1 carries its client in
/// `CF-Connecting-IP`), a bad answer leaves the last good list (the shipped one) in place.
#[test]
fn the_cloudflare_list_is_refreshed_and_a_bad_answer_keeps_the_last_good_one() {
    let app = app();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    let json = format!(
        r#"{{"domains":[{{"name":"ip.test","service":"app"}}],"services":[{{"name":"app","host":"127.0.0.1","port":{}}}]}}"#,
        app.port()
    );
    std::fs::write(&routes, json).unwrap();
    let ips = StubHttp::start(0, |request| match request.path {
        "/good" => Some("173.245.48.0/20\n127.0.0.0/8\n".to_string()),
        _ => Some("<html>maintenance</html>".to_string()),
    });
    let client = "CF-Connecting-IP: 203.0.113.5\r\n";
    let run = |list: &str| {
        let url = format!("http://127.0.0.1:{}/{list}", ips.port());
        Agent::start(&[
            ("NO_DOCKER", "true"),
            ("CONFIG_FILE", routes.to_str().unwrap()),
            ("TRUSTED_PROXIES", "cloudflare"),
            ("CLOUDFLARE_IPS_URL", &url),
        ])
    };

    let agent = run("good");
    agent.wait_for("the refreshed list to be trusted", Duration::from_secs(15), || {
        request(agent.port, "", "ip.test", client).1.starts_with("real=203.0.113.5 ")
    });
    assert!(agent.log().contains("Cloudflare's IP ranges changed: trusting the new list ranges=2"), "{}", agent.log());
    drop(agent);

    let agent = run("bad");
    agent.wait_for("the refusal to be logged", Duration::from_secs(15), || {
        agent.log().contains("keeping the last good list")
    });
    assert!(agent.log().contains("\"<html>maintenance</html>\" is not an IP range"), "{}", agent.log());
    assert!(request(agent.port, "", "ip.test", client).1.starts_with("real=127.0.0.1 "), "loopback is not Cloudflare");
}

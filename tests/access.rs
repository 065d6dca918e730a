//! `auth` and `rate` through the real nginx, by their effect on requests: basic auth with each
//! hash scheme it accepts (made by `openssl passwd` and apache2-utils' `htpasswd`: 401 without or
//! with a wrong password, 200 with the right one), bypass paths that keep the route's other
//! policies, forward auth against a stub auth service answering 200, 401, 403 or 302 (sign-in
//! redirect with `rd`, copied headers that a client cannot spoof, no request body sent to it),
//! rate limits counted exactly (1r/m: nothing is refilled while a test runs, so the burst decides
//! how many pass), and the agent itself: users-files copied 0640 for nginx's workers, edits
//! applied at once, an unreadable one leaving its route out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use proptest::prelude::*;

use crate::policies::Served;
use crate::support::agent::{write_file, Agent};
use crate::support::stub_http::{StubHttp, StubReply};
use crate::support::{container, label_table};

/// An answer from nginx: status, head (status line and headers) and body.
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    /// The value of header `name` (any case).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request to nginx on 127.0.0.1:`port`.
fn request(port: u16, method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Response { status, head: head.to_string(), body: body.to_string() }
}

fn get(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", host, path, headers, "")
}

/// `Authorization: Basic …` for `user` and `password`.
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// The htpasswd line `user:<hash of password>` in `scheme`, made by the tools the messages
/// recommend: `openssl passwd` (apr1, 1, 5, 6) and apache2-utils' `htpasswd` (bcrypt, {SHA}).
fn hashed(scheme: &str, user: &str, password: &str) -> String {
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {cmd:?}: {e} (openssl and apache2-utils' htpasswd are needed: .ci/run installs them)")
        });
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    match scheme {
        "apr1" | "1" | "5" | "6" => {
            format!("{user}:{}", run(Command::new("openssl").args(["passwd", &format!("-{scheme}"), password])))
        }
        // Cost 4, the lowest: bcrypt is slow on purpose.
        "2y" => run(Command::new("htpasswd").args(["-nbB", "-C", "4", user, password])),
        // The same bcrypt under the prefixes other tools write (crypt(3) verifies all three).
        "2b" | "2a" => hashed("2y", user, password).replacen("$2y$", &format!("${scheme}$"), 1),
        "sha" => run(Command::new("htpasswd").args(["-nbs", user, password])),
        _ => unreachable!("{scheme}"),
    }
}

/// A stub app on loopback that answers `app <path>`, and the requests it got.
fn app() -> (StubHttp, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = StubHttp::start(0, move |r| {
        log.lock().unwrap().push(r.path.to_string());
        let header = |name: &str| r.header(name).unwrap_or("none").to_string();
        Some(format!(
            "app {} user={} groups={} secret={}",
            r.path,
            header("remote-user"),
            header("remote-groups"),
            header("x-secret")
        ))
    });
    (app, seen)
}

#[test]
fn basic_auth_verifies_each_hash_scheme_it_accepts() {
    let (app, _) = app();
    let port = app.port().to_string();
    let schemes = ["apr1", "1", "5", "6", "2y", "2b", "2a", "sha"];
    let containers: Vec<_> = schemes
        .iter()
        .map(|scheme| {
            let users = format!(
                "{},other:{}",
                hashed(scheme, "user", &format!("pw-{scheme}")),
                hashed(scheme, "other", "other-pw").split_once(':').unwrap().1
            );
            let domain = format!("h{scheme}.test");
            container(
                &format!("c{scheme}"),
                [127, 0, 0, 1],
                &[
                    ("smart-proxy.domains", &domain),
                    ("smart-proxy.port", &port),
                    ("smart-proxy.auth", "basic"),
                    ("smart-proxy.auth.users", &users),
                ],
            )
        })
        .collect();
    let table = label_table(&containers);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    for scheme in schemes {
        let host = format!("h{scheme}.test");
        let none = get(nginx.port, &host, "/", &[]);
        assert_eq!(none.status, 401, "{scheme}, no credentials: {}", none.head);
        assert_eq!(none.header("WWW-Authenticate"), Some(format!("Basic realm=\"{host}\"").as_str()));
        let wrong = get(nginx.port, &host, "/", &[("Authorization", &basic("user", "pw-wrong"))]);
        assert_eq!(wrong.status, 401, "{scheme}, a wrong password");
        let right = get(nginx.port, &host, "/x", &[("Authorization", &basic("user", &format!("pw-{scheme}")))]);
        assert_eq!((right.status, right.body.as_str()), (200, "app /x user=none groups=none secret=none"), "{scheme}");
        let other = get(nginx.port, &host, "/", &[("Authorization", &basic("other", "other-pw"))]);
        assert_eq!(other.status, 200, "{scheme}: the second user of the list");
        let swapped = get(nginx.port, &host, "/", &[("Authorization", &basic("other", &format!("pw-{scheme}")))]);
        assert_eq!(swapped.status, 401, "{scheme}: another user's password");
    }
}

#[test]
fn bypass_paths_skip_the_login_and_keep_the_route_s_other_policies() {
    let (app, seen) = app();
    let port = app.port().to_string();
    let c = container(
        "admin",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "admin.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.path", "/app/"),
            ("smart-proxy.strip-prefix", "true"),
            ("smart-proxy.headers.response.X-Policy", "kept"),
            ("smart-proxy.auth", "basic"),
            ("smart-proxy.auth.users", &hashed("apr1", "alice", "alice-pw")),
            ("smart-proxy.auth.bypass", "/app/public/,/app/healthz"),
            // A named route with a rate: its bypass path is limited like the rest of it.
            ("smart-proxy.limited.domains", "limited.test"),
            ("smart-proxy.limited.path", "/"),
            ("smart-proxy.limited.strip-prefix", "false"),
            ("smart-proxy.limited.auth.bypass", "/open/"),
            ("smart-proxy.limited.rate", "1r/m"),
            ("smart-proxy.limited.rate.burst", "1"),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let alice = basic("alice", "alice-pw");

    let private = get(nginx.port, "admin.test", "/app/private", &[]);
    assert_eq!(private.status, 401);
    let public = get(nginx.port, "admin.test", "/app/public/doc?x=1", &[]);
    assert_eq!(public.status, 200, "{}", public.head);
    assert!(public.body.starts_with("app /public/doc?x=1 "), "strip-prefix still applies: {}", public.body);
    assert_eq!(public.header("X-Policy"), Some("kept"), "the response header still applies");
    assert_eq!(get(nginx.port, "admin.test", "/app/healthz", &[]).status, 200);
    assert_eq!(get(nginx.port, "admin.test", "/app/publicity", &[]).status, 401, "a prefix, not a word");
    let logged_in = get(nginx.port, "admin.test", "/app/private", &[("Authorization", &alice)]);
    assert!(logged_in.body.starts_with("app /private "), "{}", logged_in.body);
    assert!(!seen.lock().unwrap().iter().any(|p| p == "/app/private" || p == "/private?x"), "no 401 reached the app");

    // limited.test inherits the login and its own bypass path keeps the rate limit (burst 1:
    // two requests pass, whether logged in or bypassing).
    let statuses: Vec<u16> = (0..3).map(|_| get(nginx.port, "limited.test", "/open/a", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(get(nginx.port, "limited.test", "/x", &[("Authorization", &alice)]).status, 429);
    assert_eq!(get(nginx.port, "limited.test", "/x", &[]).status, 429, "rate limits count before the login");
}

/// What the stub auth service saw of each check: its URI and the headers the proxy sets.
#[derive(Debug, Clone)]
struct Check {
    uri: String,
    original_uri: String,
    original_method: String,
    original_url: String,
    forwarded_host: String,
    body: usize,
}

#[test]
fn forward_auth_asks_the_auth_service_and_passes_its_headers_on() {
    let checks: Arc<Mutex<Vec<Check>>> = Arc::default();
    let log = checks.clone();
    let auth = StubHttp::start_replies(0, move |r| {
        let header = |name: &str| r.header(name).unwrap_or("").to_string();
        log.lock().unwrap().push(Check {
            uri: r.path.to_string(),
            original_uri: header("x-original-uri"),
            original_method: header("x-original-method"),
            original_url: header("x-original-url"),
            forwarded_host: header("x-forwarded-host"),
            body: r.body.len() + header("content-length").parse::<usize>().unwrap_or(0),
        });
        match r.header("authorization") {
            Some("Bearer good") => StubReply::new(
                200,
                &[("Remote-User", "alice"), ("Remote-Groups", "admins,dev"), ("X-Secret", "not for the app")],
                "",
            ),
            Some("Bearer forbidden") => StubReply::new(403, &[], ""),
            Some("Bearer elsewhere") => StubReply::new(302, &[("Location", "https://elsewhere.test/")], ""),
            _ => StubReply::new(401, &[("WWW-Authenticate", "Bearer realm=\"stub\"")], ""),
        }
    });
    let (app, seen) = app();
    let (port, auth_port) = (app.port().to_string(), auth.port());
    let closed = crate::support::free_port().to_string();
    // A '$' in the URL is sent literally, never read as an nginx variable.
    let url = format!("http://127.0.0.1:{auth_port}/check?from=$host");
    let c = container(
        "sso",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "sso.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.auth", "forward"),
            ("smart-proxy.auth.url", &url),
            ("smart-proxy.auth.signin", "https://login.test/start?x=1"),
            ("smart-proxy.auth.headers", "Remote-User,Remote-Groups"),
            ("smart-proxy.auth.bypass", "/public/"),
            ("smart-proxy.plain.domains", "plain.test"),
            ("smart-proxy.plain.auth", "forward"),
            ("smart-proxy.plain.auth.url", &url),
            // Inherits the sign-in; its app is down.
            ("smart-proxy.down.domains", "down.test"),
            ("smart-proxy.down.port", &closed),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let app_requests = || seen.lock().unwrap().len();

    // Not signed in: the browser is sent to the sign-in page with the original URL.
    let out = get(nginx.port, "sso.test", "/private?a=1", &[]);
    assert_eq!(out.status, 302, "{}", out.head);
    assert_eq!(out.header("Location"), Some("https://login.test/start?x=1&rd=http://sso.test/private?a=1"));
    // Without auth.signin the 401 and its WWW-Authenticate reach the client.
    let out = get(nginx.port, "plain.test", "/private", &[]);
    assert_eq!((out.status, out.header("WWW-Authenticate")), (401, Some("Bearer realm=\"stub\"")), "{}", out.head);
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert_eq!(check.uri, "/check?from=$host", "the URL as written");
    assert_eq!((check.original_uri.as_str(), check.original_method.as_str()), ("/private", "GET"));
    assert_eq!(
        (check.original_url.as_str(), check.forwarded_host.as_str()),
        ("http://plain.test/private", "plain.test")
    );
    assert_eq!(app_requests(), 0, "no unauthenticated request reached the app");

    // Signed in: the auth service's user and groups reach the app, a client's own never do.
    let good = [("Authorization", "Bearer good"), ("Remote-User", "mallory"), ("X-Secret", "client")];
    let out = get(nginx.port, "sso.test", "/private", &good);
    assert_eq!((out.status, out.body.as_str()), (200, "app /private user=alice groups=admins,dev secret=client"));
    let out = request(nginx.port, "POST", "sso.test", "/form", &good, "a=1&b=2");
    assert_eq!(out.status, 200, "{}", out.head);
    let check = checks.lock().unwrap().last().cloned().unwrap();
    assert_eq!((check.original_uri.as_str(), check.original_method.as_str(), check.body), ("/form", "POST", 0));

    // 403 is the answer; any other answer of the auth service (here a redirect) is a 500.
    let before = app_requests();
    assert_eq!(get(nginx.port, "sso.test", "/private", &[("Authorization", "Bearer forbidden")]).status, 403);
    assert_eq!(get(nginx.port, "sso.test", "/private", &[("Authorization", "Bearer elsewhere")]).status, 500);
    assert_eq!(app_requests(), before, "refused requests do not reach the app");

    // The sign-in's own error_page keeps the proxy's error pages in that location.
    let down = get(nginx.port, "down.test", "/", &[("Authorization", "Bearer good")]);
    assert_eq!((down.status, down.body.as_str()), (502, "down.test is starting or down\n"), "{}", down.head);

    // A bypass path is not checked, and a client's Remote-User does not pass there either.
    let asked = checks.lock().unwrap().len();
    let out = get(nginx.port, "sso.test", "/public/doc", &[("Remote-User", "mallory")]);
    assert_eq!((out.status, out.body.as_str()), (200, "app /public/doc user=none groups=none secret=none"));
    assert_eq!(checks.lock().unwrap().len(), asked, "the auth service was not asked");
}

#[test]
fn rate_limits_let_the_burst_through_and_answer_429_past_it() {
    let (app, _) = app();
    let port = app.port().to_string();
    // 1r/m and 2r/m refill one request per 60 s and 30 s: within a test, the burst alone decides.
    let c = container(
        "api",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "rate.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.rate", "1r/m"),
            ("smart-proxy.rate.burst", "3"),
            ("smart-proxy.keyed.domains", "keyed.test"),
            ("smart-proxy.keyed.rate", "1r/m"),
            ("smart-proxy.keyed.rate.burst", "0"),
            ("smart-proxy.keyed.rate.key", "header:X-Api-Key"),
            ("smart-proxy.dflt.domains", "default.test"),
            ("smart-proxy.dflt.rate", "2r/m"),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let statuses = |host: &str, n: usize, headers: &[(&str, &str)]| -> Vec<u16> {
        (0..n).map(|_| get(nginx.port, host, "/", headers).status).collect()
    };

    // The first request and a burst of 3 pass, the other 6 get 429.
    let got = statuses("rate.test", 10, &[]);
    assert_eq!(got, [200, 200, 200, 200, 429, 429, 429, 429, 429, 429]);
    // The burst defaults to the rate's number: 2r/m lets 1 + 2 through.
    assert_eq!(statuses("default.test", 5, &[]), [200, 200, 200, 429, 429]);
    // Keyed by a header: each key has its own count; without the header, the address counts.
    assert_eq!(statuses("keyed.test", 2, &[("X-Api-Key", "a")]), [200, 429]);
    assert_eq!(statuses("keyed.test", 2, &[("X-Api-Key", "b")]), [200, 429]);
    assert_eq!(statuses("keyed.test", 2, &[]), [200, 429]);
    assert_eq!(statuses("keyed.test", 1, &[("X-Api-Key", "c")]), [200], "a new key, after the address's count ran out");
}

/// A path and query an `auth.url` or `auth.signin` may hold: any printable character but `#`,
/// heavy on the ones nginx reads specially (`$`, `;`, quotes, braces, backslashes).
fn url_tail() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '$', ';', '(', ')', '{', '}', '"', '\'', '\\', '*', '+', ',', '!', '=', '&', '%', '~', '@', ':', '[', ']', '?',
    ]);
    let plain = prop::sample::select(('a'..='z').chain('0'..='9').chain(['-', '.', '_', '/']).collect::<Vec<_>>());
    prop::collection::vec(prop_oneof![1 => plain, 1 => special], 0..40).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Any accepted `auth.url` is exactly what the auth service is asked for, and any accepted
    /// `auth.signin` exactly the start of the `Location` a 401 sends the client to, through the
    /// real nginx: nothing in them is read as syntax or a variable.
    #[test]
    fn any_auth_url_and_signin_reach_the_wire_byte_for_byte(tails in prop::collection::vec((url_tail(), url_tail()), 8)) {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = asked.clone();
        let auth = StubHttp::start_replies(0, move |r| {
            log.lock().unwrap().push(r.path.to_string());
            StubReply::new(401, &[], "")
        });
        let (app, _) = app();
        let port = app.port().to_string();
        let urls: Vec<(String, String)> = tails
            .iter()
            .map(|(a, b)| (format!("http://127.0.0.1:{}/{a}", auth.port()), format!("https://login.example/{b}")))
            .collect();
        let containers: Vec<_> = urls
            .iter()
            .enumerate()
            .map(|(i, (url, signin))| {
                container(&format!("c{i}"), [127, 0, 0, 1], &[
                    ("smart-proxy.domains", &format!("v{i}.test")),
                    ("smart-proxy.port", &port),
                    ("smart-proxy.auth", "forward"),
                    ("smart-proxy.auth.url", url),
                    ("smart-proxy.auth.signin", signin),
                ])
            })
            .collect();
        let table = label_table(&containers);
        prop_assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
        let nginx = Served::start(&table);
        for (i, (tail, signin)) in tails.iter().map(|(a, _)| a).zip(urls.iter().map(|(_, s)| s)).enumerate() {
            asked.lock().unwrap().clear();
            let response = get(nginx.port, &format!("v{i}.test"), "/", &[]);
            prop_assert_eq!(response.status, 302, "{}", response.head);
            let rd = if signin.contains('?') { "&rd=" } else { "?rd=" };
            let expected = format!("{signin}{rd}http://v{i}.test/");
            prop_assert_eq!(response.header("Location"), Some(expected.as_str()), "{}", response.head);
            prop_assert_eq!(asked.lock().unwrap().clone(), vec![format!("/{tail}")], "what the auth service was asked");
        }
    }
}

/// Under wrk's concurrent load the count holds: 1r/m with a burst of 5 lets exactly 1 + 5
/// requests through, whatever the concurrency, and every other one is a 429.
#[test]
fn under_concurrent_load_the_burst_is_honoured_exactly() {
    if !crate::support::wrk::have_wrk() {
        return;
    }
    let (app, seen) = app();
    let port = app.port().to_string();
    let c = container(
        "api",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "crowd.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.rate", "1r/m"),
            ("smart-proxy.rate.burst", "5"),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    use crate::support::wrk::{Report, Wrk};
    let wrk = Wrk::start(([127, 0, 0, 1], nginx.port).into(), "crowd.test", 16, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let text = wrk.finish();
    let report = Report::parse(&text);
    assert_eq!(report.socket_errors, None, "{text}");
    assert!(report.requests >= 100, "wrk made too few requests to test concurrency:\n{text}");
    assert_eq!(report.requests - report.non_2xx, 6, "1 + burst 5 passed, the rest got 429:\n{text}");
    assert_eq!(seen.lock().unwrap().len(), 6, "the app got exactly the requests that passed");
    // What wrk counted as refused were 429s (a request after the run sees the limit too).
    assert_eq!(get(nginx.port, "crowd.test", "/", &[]).status, 429);
}

/// The group id of `name` in /etc/group.
fn gid(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut fields = l.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.parse().ok()).flatten()
    })
}

#[test]
fn the_agent_copies_users_files_for_nginx_follows_their_edits_and_leaves_out_an_unreadable_one() {
    let (app, _) = app();
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team.htpasswd");
    write_file(&team, &format!("# the team\n{}\n", hashed("2y", "alice", "alice-pw")));
    let missing = dir.path().join("missing.htpasswd");
    let routes = dir.path().join("routes.json");
    let config = serde_json::json!({
        "services": [{ "name": "app", "host": "127.0.0.1", "port": app.port() }],
        "domains": [
            { "name": "team.test", "service": "app", "auth": "basic", "auth.users-file": team.to_str().unwrap() },
            { "name": "inline.test", "service": "app", "auth": "basic", "auth.users": [hashed("6", "bob", "bob-pw")] },
            { "name": "gone.test", "service": "app", "auth": "basic", "auth.users-file": missing.to_str().unwrap() },
            { "name": "open.test", "service": "app" },
        ],
    });
    std::fs::write(&routes, config.to_string()).unwrap();
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", routes.to_str().unwrap())]);
    agent.wait_for_status("open.test", 200, Some("app /"));
    let port = agent.port;
    let status = |host: &str, user: &str, password: &str| {
        get(port, host, "/", &[("Authorization", &basic(user, password))]).status
    };
    assert_eq!(get(port, "team.test", "/", &[]).status, 401);
    assert_eq!(status("team.test", "alice", "alice-pw"), 200);
    assert_eq!(status("inline.test", "bob", "bob-pw"), 200);
    assert_eq!(status("inline.test", "bob", "alice-pw"), 401);

    // The copies nginx reads: 0640 in a 0750 directory that passes on its group (setgid), the
    // group nginx's workers run as (nogroup, for an nginx started by root without `user`).
    let auth_dir = agent.path("conf.d/smart-proxy-htpasswd");
    let meta = std::fs::metadata(&auth_dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o2750);
    let files: Vec<std::fs::Metadata> =
        std::fs::read_dir(&auth_dir).unwrap().map(|e| e.unwrap().metadata().unwrap()).collect();
    assert_eq!(files.len(), 2, "the users-file's copy and the inline list's file");
    for file in &files {
        assert_eq!(file.permissions().mode() & 0o777, 0o640);
    }
    let running_as_root = std::fs::metadata(&team).unwrap().uid() == 0;
    if running_as_root {
        let workers = gid("nogroup").or_else(|| gid("nobody")).unwrap();
        assert!(files.iter().chain([&meta]).all(|m| m.gid() == workers), "group {workers}");
    }
    let log = agent.log();
    assert!(!log.contains("$2y$") && !log.contains("$6$"), "no hash is logged:\n{log}");

    // A users-file that cannot be read leaves its domain out, saying why.
    let (_, routes_json) = agent.status_get("/routes");
    let json: serde_json::Value = serde_json::from_str(&routes_json).unwrap();
    let gone = json["left_out"].as_array().unwrap().iter().find(|e| e["domain"] == "gone.test").cloned();
    let reason = gone.unwrap_or_else(|| panic!("gone.test is not left out: {json}"))["reason"].to_string();
    assert!(reason.contains("missing.htpasswd: cannot read it: No such file"), "{reason}");
    assert_ne!(get(port, "gone.test", "/", &[]).status, 200);

    // An edit of the users-file reaches nginx at once (the agent watches it): carol in, alice out.
    write_file(&team, &format!("{}\n", hashed("apr1", "carol", "carol-pw")));
    agent
        .wait_for("carol's login to work", Duration::from_secs(15), || status("team.test", "carol", "carol-pw") == 200);
    assert_eq!(status("team.test", "alice", "alice-pw"), 401);
    // A bad line (a clear password) fails closed: the domain is left out, the others stay.
    write_file(&team, "carol:carol-pw\n");
    // The agent logs why after nginx's reload, so the log is polled too.
    agent.wait_for("team.test to be left out, saying why", Duration::from_secs(15), || {
        status("team.test", "carol", "carol-pw") != 200
            && agent.log().contains("line 1: the password of user \"carol\" is not a hash")
    });
    assert_eq!(status("inline.test", "bob", "bob-pw"), 200);
    assert!(!agent.log().contains("carol-pw"), "the clear password is never logged");
}

/// `AUTH_CACHE`: nginx (with its Lua module) checks a login's hash once and then remembers it.
/// Shown by what only a remembered login survives: the htpasswd copy nginx reads, emptied behind
/// the agent's back, still lets alice in but no longer carol (valid, never used). A wrong password
/// is never remembered, nor one a rate limit refused before auth_basic checked it; an edited
/// users-file is a new generation, so a removed user is out once the agent has applied it.
#[test]
fn auth_cache_remembers_only_checked_logins_and_forgets_them_when_the_users_change() {
    let (app, _) = app();
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team.htpasswd");
    write_file(&team, &format!("{}\n{}\n", hashed("2y", "alice", "alice-pw"), hashed("6", "carol", "carol-pw")));
    let routes = dir.path().join("routes.json");
    let config = serde_json::json!({
        "services": [{ "name": "app", "host": "127.0.0.1", "port": app.port() }],
        "domains": [
            { "name": "team.test", "service": "app", "auth": "basic", "auth.users-file": team.to_str().unwrap(),
              "auth.bypass": "/public/" },
            { "name": "limited.test", "service": "app", "auth": "basic", "auth.users": [hashed("2y", "bob", "bob-pw")],
              "rate": "1r/m", "rate.burst": 0, "rate.key": "header:X-Key" },
            { "name": "open.test", "service": "app" },
            // nginx reads the realm `off` as no auth.
            { "name": "off", "service": "app", "auth": "basic", "auth.users": [hashed("2y", "bob", "bob-pw")] },
        ],
    });
    std::fs::write(&routes, config.to_string()).unwrap();
    let agent =
        Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", routes.to_str().unwrap()), ("AUTH_CACHE", "true")]);
    agent.wait_for_status("open.test", 200, Some("app /"));
    let port = agent.port;
    let config = std::fs::read_to_string(agent.path("conf.d/default.conf")).unwrap();
    assert!(config.contains("init_by_lua_block"), "{config}");
    let login =
        |host: &str, user: &str, password: &str| get(port, host, "/", &[("Authorization", &basic(user, password))]);

    let off = get(port, "off", "/", &[]);
    assert_eq!((off.status, off.header("WWW-Authenticate")), (401, Some("Basic realm=\"off.\"")), "{}", off.head);
    assert_eq!(login("off", "bob", "bob-pw").status, 200);
    let asked = get(port, "team.test", "/", &[]);
    assert_eq!(asked.status, 401);
    assert_eq!(asked.header("WWW-Authenticate"), Some("Basic realm=\"team.test\""));
    assert_eq!(login("team.test", "alice", "wrong").status, 401);
    assert_eq!(login("team.test", "alice", "alice-pw").status, 200, "checked, then remembered");
    assert_eq!(login("team.test", "alice", "alice-pw").body, "app / user=none groups=none secret=none");
    assert_eq!(login("team.test", "alice", "wrong").status, 401, "a wrong password is never remembered");
    assert_eq!(get(port, "team.test", "/public/x", &[]).status, 200, "the bypass path needs no login");
    // The bypass location inherits the log phase's call, not the check: a wrong password it let
    // through (unchecked) is not remembered.
    let wrong = basic("alice", "guess");
    assert_eq!(get(port, "team.test", "/public/x", &[("Authorization", &wrong)]).status, 200);
    assert_eq!(get(port, "team.test", "/", &[("Authorization", &wrong)]).status, 401);

    // The copy nginx reads, emptied (the agent does not watch its own copies): only the
    // remembered login still passes.
    let auth_dir = agent.path("conf.d/smart-proxy-htpasswd");
    let copy = std::fs::read_dir(&auth_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().contains("carol:"))
        .expect("the users-file's copy");
    std::fs::write(&copy, "").unwrap();
    assert_eq!(login("team.test", "alice", "alice-pw").status, 200, "alice's login is remembered");
    assert_ne!(login("team.test", "carol", "carol-pw").status, 200, "carol's is checked against the empty copy");

    // A request a rate limit refuses (before auth_basic) is not remembered: the same wrong
    // password under another key is checked, and refused.
    let with_key = |key: &str, password: &str| {
        get(port, "limited.test", "/", &[("Authorization", &basic("bob", password)), ("X-Key", key)]).status
    };
    assert_eq!(with_key("k1", "wrong"), 401, "k1's one request, checked");
    assert_eq!(with_key("k1", "wrong"), 429, "refused before the check");
    assert_eq!(with_key("k2", "wrong"), 401, "still checked, never remembered");
    assert_eq!(with_key("k3", "bob-pw"), 200);

    // An edit of the users-file (alice out, dave in) is a new generation: a new config, applied as
    // any other (nginx -t, swap, reload), in which alice's login is checked again, and refused.
    write_file(&team, &format!("{}\n", hashed("2y", "dave", "dave-pw")));
    agent.wait_for("dave in and alice out", Duration::from_secs(15), || {
        login("team.test", "dave", "dave-pw").status == 200 && login("team.test", "alice", "alice-pw").status == 401
    });
    // Logged once the reload returned, which may be after the new workers answer.
    agent.wait_for("the edit's apply to be logged", Duration::from_secs(10), || {
        agent.log().matches("config applied").count() == 2
    });
    let log = agent.log();
    assert!(!log.contains("alice-pw") && !log.contains("$2y$"), "no password or hash is logged:\n{log}");
    let errors = std::fs::read_to_string(agent.path("logs/nginx-error.log")).unwrap_or_default();
    assert!(!errors.contains("[lua]") && !errors.contains("lua entry thread aborted"), "{errors}");
}

/// `AUTH_CACHE` where nginx has no Lua module: `nginx -t` refuses the config, so the basic-auth
/// route is left out (never served without its check) saying what to install; every other route
/// is served. (`on`, not `true`: the test harness loads the module only for `true`.)
#[test]
fn auth_cache_without_the_lua_module_leaves_out_only_the_basic_auth_routes() {
    let (app, _) = app();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    let config = serde_json::json!({
        "services": [{ "name": "app", "host": "127.0.0.1", "port": app.port() }],
        "domains": [
            { "name": "team.test", "service": "app", "auth": "basic", "auth.users": [hashed("2y", "bob", "bob-pw")] },
            { "name": "open.test", "service": "app" },
        ],
    });
    std::fs::write(&routes, config.to_string()).unwrap();
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", routes.to_str().unwrap()), ("AUTH_CACHE", "on")]);
    agent.wait_for_status("open.test", 200, Some("app /"));
    let (_, routes_json) = agent.status_get("/routes");
    let json: serde_json::Value = serde_json::from_str(&routes_json).unwrap();
    let left = json["left_out"].as_array().unwrap().iter().find(|e| e["domain"] == "team.test").cloned();
    let reason = left.unwrap_or_else(|| panic!("team.test is not left out: {json}"))["reason"].to_string();
    assert!(reason.contains("AUTH_CACHE needs nginx's Lua module"), "{reason}");
    assert_ne!(get(agent.port, "team.test", "/", &[("Authorization", &basic("bob", "bob-pw"))]).status, 200);
}

/// The companion setup: the htpasswd files reach nginx's own container on the volume it shares
/// with the agent (beside the config), and the test script, run there by `docker exec`, gives
/// them to its workers' group (`user www-data;` in the test image): the login works through it.
#[test]
fn basic_auth_works_in_the_companion_setup() {
    use crate::companion::{Companion, Options};
    use crate::support::docker::{docker as cli, TestDocker};
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    let users = hashed("apr1", "alice", "alice-pw");
    let app = docker.app("web").label("domains", "web.test").label("auth", "basic").label("auth.users", &users);
    docker.start(vec![app.network(&c.net)]);
    // Polled as a whole: right after a reload, nginx's old worker (the image's config, 200 to
    // anything) may still take a connection or two.
    let (right, wrong) = (basic("alice", "alice-pw"), basic("alice", "wrong"));
    c.wait_for("web.test to ask for a login, refuse a wrong one and take alice's", Duration::from_secs(30), || {
        get(c.port(), "web.test", "/", &[]).status == 401
            && get(c.port(), "web.test", "/", &[("Authorization", &wrong)]).status == 401
            && get(c.port(), "web.test", "/", &[("Authorization", &right)]).status == 200
    });
    let modes = cli(&[
        "exec",
        &c.nginx,
        "sh",
        "-c",
        "stat -c '%a %G' /etc/nginx/conf.d/smart-proxy-htpasswd /etc/nginx/conf.d/smart-proxy-htpasswd/*",
    ]);
    let modes: Vec<&str> = modes.lines().collect();
    assert_eq!(modes, ["2750 www-data", "640 www-data"], "as nginx's container sees them");
}

/// nginx refuses a reload that gives a rate zone another key (`nginx -t` passes it: the check
/// runs against the running zone), so a changed `rate.key` must be a new zone: the agent's
/// reload succeeds and the new key counts from zero.
#[test]
fn a_changed_rate_key_reloads() {
    let (app, _) = app();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.json");
    let write = |key: &str| {
        let config = serde_json::json!({
            "services": [{ "name": "app", "host": "127.0.0.1", "port": app.port() }],
            "domains": [{ "name": "rate.test", "service": "app", "rate": "1r/m", "rate.burst": 0, "rate.key": key }],
        });
        write_file(&routes, &config.to_string());
    };
    write("ip");
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", routes.to_str().unwrap())]);
    agent.wait_for_status("rate.test", 200, Some("app /"));
    assert_eq!(get(agent.port, "rate.test", "/", &[]).status, 429, "this address's one request is used");
    write("header:X-Key");
    let mut n = 0;
    agent.wait_for("a new key to be let through", Duration::from_secs(15), || {
        n += 1;
        get(agent.port, "rate.test", "/", &[("X-Key", &format!("key-{n}"))]).status == 200
    });
    assert!(!agent.log().contains("reload failed"), "{}", agent.log());
}

//! What a person sees (issue 12): the dashboard on the status endpoint's `/`, rendered by a real
//! headless Chromium against a real agent after known traffic through its nginx; `STATUS_TOKEN`
//! on a wildcard address (bearer, the login cookie, the 401s, `/healthz` open); and `top`, once
//! and live in a tmux pane, sorted by keys.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::agent::{free_port, write_file, Agent};
use crate::support::stub_http::{StubHttp, StubReply};

/// A tool the test needs (`chromium`, `tmux`): `None` (a loud skip) outside CI when it is
/// missing; under CI a failure naming the package (.ci/run installs both).
pub(crate) fn tool(name: &str, version_flag: &str, package: &str) -> Option<PathBuf> {
    match Command::new(name).arg(version_flag).output() {
        Ok(_) => Some(PathBuf::from(name)),
        Err(e) => {
            assert!(
                !crate::support::in_ci(),
                "{name} is required under CI ({e}): apt-get install {package} (.ci/run does this)"
            );
            eprintln!("\n*** SKIPPED: {name} is missing ({e}); apt-get install {package} ***\n");
            None
        }
    }
}

/// An agent (production mode without ACME: TLS domains get placeholder certificates) routing
/// `shop.test` (TLS) to an app answering 200, and `down.test` (plain) to a dead port.
fn agent(extra: &[(&str, &str)]) -> (Agent, StubHttp, tempfile::TempDir) {
    let app = StubHttp::start_replies(0, |_| StubReply::new(200, &[], "ok"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.json");
    let json = serde_json::json!({
        "domains": [
            {"name": "shop.test", "service": "app", "tls": "auto"},
            {"name": "down.test", "service": "dead", "tls": "off"},
        ],
        "services": [
            {"name": "app", "host": "127.0.0.1", "port": app.port()},
            {"name": "dead", "host": "127.0.0.1", "port": free_port()},
        ],
    });
    write_file(&config, &json.to_string());
    let config_path = config.display().to_string();
    let https = free_port().to_string();
    let mut env = vec![
        ("NO_DOCKER", "true"),
        ("LOCAL", "false"),
        ("ACME", "off"),
        ("HTTPS_PORT", https.as_str()),
        ("CONFIG_FILE", config_path.as_str()),
    ];
    env.extend_from_slice(extra);
    let agent = Agent::start(&env);
    (agent, app, dir)
}

/// Waits until `down.test` answers 502, sends `n` more requests, and waits until `/insight`'s last
/// minute and total hold exactly the 502s sent; returns their number.
fn traffic_to_down(agent: &Agent, n: usize, auth: &[(&str, &str)]) -> u64 {
    // Every 502 is one request nginx logged for down.test (before its route is live, other
    // answers come from other servers): count them all, the wait's own included.
    let mut sent = 0u64;
    agent.wait_for("down.test to answer 502", Duration::from_secs(15), || {
        let ok = agent.get("down.test", "/").0 == 502;
        sent += u64::from(ok);
        ok
    });
    for _ in 0..n {
        assert_eq!(agent.get("down.test", "/").0, 502);
        sent += 1;
    }
    agent.wait_for("the traffic to show in /insight", Duration::from_secs(30), || {
        let (status, body) = request(agent.status_port(), "/insight", auth);
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
        let down = doc["domains"].as_array().unwrap().iter().find(|d| d["domain"] == "down.test").unwrap();
        down["last_minute"]["requests"] == sent && down["total"]["requests"] == sent
    });
    sent
}

/// GET `path` on 127.0.0.1:`port` with `headers`: (status, the whole response).
fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: status\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    (response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), response)
}

/// Headless Chromium: the DOM of `url` after its fetches (5 s of virtual time).
pub(crate) fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = chromium_run(chromium, profile.path(), &["--virtual-time-budget=5000", "--dump-dom", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium_run(chromium: &Path, profile: &Path, args: &[&str]) -> Output {
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A screenshot of `url` in a window of `size` (`width,height`), kept as `target/tmp/<name>`,
/// the test's artifact (docs/testing.md).
fn screenshot(chromium: &Path, url: &str, size: &str, name: &str) {
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let profile = tempfile::tempdir().unwrap();
    let (window, arg) = (format!("--window-size={size}"), format!("--screenshot={}", shot.display()));
    chromium_run(chromium, profile.path(), &["--virtual-time-budget=5000", &window, &arg, url]);
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 1000).unwrap_or(false), "no screenshot at {}", shot.display());
    println!("dashboard screenshot: {}", shot.display());
}

/// The text of the first element after `marker` in `html` up to its closing `</td>`.
fn cell<'a>(html: &'a str, row: &str, class: &str) -> &'a str {
    let start = html.find(row).unwrap_or_else(|| panic!("{row} missing from the DOM:\n{html}"));
    let rest = &html[start..];
    let at = rest.find(&format!("class=\"{class}")).unwrap_or_else(|| panic!("{class} missing in {row}"));
    let rest = &rest[at..];
    let open = rest.find('>').unwrap() + 1;
    &rest[open..open + rest[open..].find("</td>").unwrap()]
}

#[test]
fn the_dashboard_shows_routes_certificates_traffic_and_decisions_in_chromium() {
    let Some(chromium) = tool("chromium", "--version", "chromium") else { return };
    let (agent, _app, _dir) = agent(&[]);
    let port = agent.status_port();
    let sent = traffic_to_down(&agent, 7, &[]);
    let url = format!("http://127.0.0.1:{port}/");

    // The page shows exactly the requests sent (all in the last minute's completed slots).
    let html = dump_dom(&chromium, &url);
    let shown = cell(&html, "<tr data-domain=\"down.test\"", "num requests");
    assert_eq!(shown, sent.to_string(), "the page's requests for down.test, against the {sent} sent");
    // Traffic: every request to down.test was a 502 (upstream refused).
    let traffic = &html[html.find("id=\"traffic\"").unwrap()..html.find("id=\"routes\"").unwrap()];
    assert!(traffic.contains("<tr data-domain=\"shop.test\""), "{traffic}");
    assert_eq!(cell(traffic, "data-domain=\"down.test\"", "num errors"), "100.0 %", "{traffic}");
    assert!(traffic.contains("<svg class=\"spark\""), "{traffic}");
    // Routes, with their servers and sources.
    let routes = &html[html.find("id=\"routes\"").unwrap()..html.find("id=\"left-out\"").unwrap()];
    for name in ["shop.test", "down.test"] {
        assert!(routes.contains(&format!("<tr data-domain=\"{name}\"")), "{name}: {routes}");
    }
    assert!(routes.contains("routes.json"), "the source: {routes}");
    // Certificates: shop.test's placeholder until a real one exists.
    let certs = &html[html.find("id=\"certs\"").unwrap()..html.find("id=\"events\"").unwrap()];
    assert!(certs.contains("<tr data-domain=\"shop.test\""), "{certs}");
    assert!(certs.contains(">placeholder<"), "{certs}");
    assert!(!certs.contains("down.test"), "{certs}");
    // Decisions: the first apply.
    assert!(html.contains("config applied: 2 domains live"), "{html}");
    assert!(html.contains("data-loaded=\"true\""), "{html}");
    assert!(html.contains("<span id=\"health\" class=\"ok\">healthy</span>"), "/healthz: {html}");

    // A phone-sized screenshot, kept as the test's artifact.
    screenshot(&chromium, &url, "412,1600", "dashboard.png");
}

#[test]
fn status_token_on_a_wildcard_address_guards_all_but_healthz() {
    const TOKEN: &str = "dash-token-5c1e-never-shown";
    let addr = format!("0.0.0.0:{}", free_port());
    let (agent, _app, _dir) = agent(&[("STATUS_ADDR", &addr), ("STATUS_TOKEN", TOKEN)]);
    let port = agent.status_port();
    agent.wait_for("/healthz without a token", Duration::from_secs(15), || request(port, "/healthz", &[]).0 == 200);
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/routes", "/metrics", "/insight", "/certs", "/events"] {
        let (status, response) = request(port, path, &[]);
        assert_eq!(status, 401, "{path}: {response}");
        assert!(response.contains("Authorization: Bearer <token>"), "{response}");
        assert_eq!(request(port, path, &[("Authorization", "Bearer wrong")]).0, 401, "{path}");
        assert_eq!(request(port, path, &[("Authorization", &bearer)]).0, 200, "{path}");
    }
    let (status, login) = request(port, "/login", &[("Authorization", &bearer)]);
    assert_eq!(status, 204, "{login}");
    let set_cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {login}"));
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(TOKEN), "the cookie holds a digest: {set_cookie}");
    let cookie = set_cookie.split_once(':').unwrap().1.split(';').next().unwrap().trim().to_string();
    assert_eq!(request(port, "/routes", &[("Cookie", &cookie)]).0, 200);
    // `health` and `top` on the same settings.
    assert!(agent.cli(&["health"]).status.success());
    let top = agent.cli(&["top", "--once"]);
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    assert!(String::from_utf8_lossy(&top.stdout).contains("shop.test"));
    let mut no_token = agent.cli_command(&["top", "--once"]);
    no_token.env_remove("STATUS_TOKEN");
    let out = no_token.output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("set STATUS_TOKEN here"), "{out:?}");
    assert!(!agent.log().contains(TOKEN), "the token is never logged");

    // In a browser without the cookie: the login form, no data.
    if let Some(chromium) = tool("chromium", "--version", "chromium") {
        let html = dump_dom(&chromium, &format!("http://127.0.0.1:{port}/"));
        assert!(html.contains("<section id=\"login\">"), "the login form shows: {html}");
        assert!(html.contains("<main id=\"main\" hidden=\"\">"), "{html}");
        assert!(!html.contains("data-domain"), "{html}");
    }
}

#[test]
fn a_wildcard_address_without_a_token_refuses_all_but_healthz() {
    let addr = format!("0.0.0.0:{}", free_port());
    let (agent, _app, _dir) = agent(&[("STATUS_ADDR", &addr)]);
    let port = agent.status_port();
    agent.wait_for("/healthz", Duration::from_secs(15), || request(port, "/healthz", &[]).0 == 200);
    let (status, response) = request(port, "/", &[]);
    assert_eq!(status, 401, "{response}");
    assert!(response.contains("STATUS_TOKEN is unset: set STATUS_TOKEN"), "{response}");
    assert!(agent.log().contains("is not a loopback address and STATUS_TOKEN is unset"), "{}", agent.log());
}

#[test]
fn top_prints_a_table_once_and_sorts_live_under_tmux() {
    let (agent, _app, _dir) = agent(&[]);
    agent.wait_for_status("shop.test", 301, None);
    traffic_to_down(&agent, 6, &[]);
    let once = agent.cli(&["top", "--once", "--sort", "name"]);
    assert!(once.status.success(), "{once:?}");
    let text = String::from_utf8_lossy(&once.stdout).into_owned();
    println!("top --once --sort name:\n{text}");
    let rows: Vec<Vec<&str>> = text.lines().skip(3).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), ["down.test", "shop.test"], "{text}");
    // DOMAIN REQ/S 2XX 3XX 4XX 5XX: down.test's requests are all 5xx.
    assert_eq!(rows[0][2..5], ["0", "0", "0"], "{text}");
    assert!(rows[0][5].parse::<u64>().unwrap() > 6, "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with("dropped log lines: 0 malformed"), "{text}");

    // Unreachable: a message naming STATUS_ADDR.
    let free = format!("127.0.0.1:{}", free_port());
    let out = agent.cli_command(&["top", "--once"]).env("STATUS_ADDR", &free).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the agent") && err.contains(&format!("STATUS_ADDR={free}")), "{err}");

    // Not a terminal and not --once: a plain table each second.
    let mut piped = agent.cli_command(&["top"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut stdout = piped.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("\n\n") || text.matches("DOMAIN").count() < 2 {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let started = std::time::Instant::now();
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = piped.kill();
    let _ = piped.wait();
    let text = reader.join().unwrap();
    assert!(text.matches("DOMAIN").count() >= 2, "two tables within 10 s: {text}");
    assert!(!text.contains('\x1b'), "no escape sequences when stdout is not a terminal: {text:?}");

    let Some(tmux) = tool("tmux", "-V", "tmux") else { return };
    let socket = format!("smart-proxy-test-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new(&tmux).arg("-L").arg(&socket).args(args).output().expect("tmux");
    let env: String = agent.env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let command = format!("env -i TERM=screen {env} {} top", env!("CARGO_BIN_EXE_nginx-smart-proxy"));
    let started = tmux(&["new-session", "-d", "-s", "top", "-x", "100", "-y", "20", &command]);
    assert!(started.status.success(), "{started:?}");
    let pane = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
    let first_row = |pane: &str| -> Option<String> {
        let lines: Vec<&str> = pane.lines().collect();
        let header = lines.iter().position(|l| l.starts_with("DOMAIN"))?;
        lines.get(header + 1).and_then(|l| l.split_whitespace().next()).map(str::to_string)
    };
    let wait = |what: &str, check: &dyn Fn(&str) -> bool| {
        let context = || format!("--- pane ---\n{}", pane());
        crate::support::poll(
            what,
            Duration::from_secs(10),
            Duration::from_millis(100),
            || check(&pane()),
            || None,
            context,
        );
    };
    wait("top to draw", &|p| p.contains("sort: req/s"));
    tmux(&["send-keys", "-t", "top", "n"]);
    wait("sort by name", &|p| p.contains("sort: name") && first_row(p).as_deref() == Some("down.test"));
    tmux(&["send-keys", "-t", "top", "e"]);
    wait("sort by errors", &|p| p.contains("sort: errors") && first_row(p).as_deref() == Some("down.test"));
    tmux(&["send-keys", "-t", "top", "p"]);
    wait("sort by p95", &|p| p.contains("sort: p95"));
    let widths = pane();
    assert!(widths.lines().all(|l| l.chars().count() <= 100), "{widths}");
    tmux(&["send-keys", "-t", "top", "q"]);
    crate::support::poll(
        "top to quit on q",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || !tmux(&["has-session", "-t", "top"]).status.success(),
        || None,
        String::new,
    );
    let _ = tmux(&["kill-server"]);
}

/// A stub status endpoint: the dashboard's own page, script and style (from the binary), the four
/// documents given, `/healthz` answering 503, and `/phone`: the page in a frame 412 CSS pixels
/// wide (a phone's width with the page's `width=device-width`), which measures its layout once
/// the page says it is loaded and writes the figures as JSON into `<pre id="layout">`.
fn fixed_dashboard(insight: String, routes: String, certs: String, events: String) -> StubHttp {
    StubHttp::start_replies(0, move |req| {
        let (kind, body) = match req.path {
            "/" => ("text/html", smart_proxy::dashboard::INDEX_HTML.to_string()),
            "/dashboard.js" => ("text/javascript", smart_proxy::dashboard::SCRIPT.to_string()),
            "/dashboard.css" => ("text/css", smart_proxy::dashboard::STYLE.to_string()),
            "/insight" => ("application/json", insight.clone()),
            "/routes" => ("application/json", routes.clone()),
            "/certs" => ("application/json", certs.clone()),
            "/events" => ("application/json", events.clone()),
            "/phone" => ("text/html", PHONE.to_string()),
            "/healthz" => return StubReply::new(503, &[], "last apply failed: disk full"),
            _ => return StubReply::new(404, &[], "no"),
        };
        StubReply::new(200, &[("Content-Type", kind)], &body)
    })
}

/// The frame `/phone` serves (see [`fixed_dashboard`]). The frame's width for the page (without
/// a scrollbar); per section (`.scroll` box), its content's width against its box's; the page's
/// width; the smallest font size of any visible text, the columns' labels (`::before`) included;
/// the visible elements that reach past the frame's usable width; the table rows drawn; and
/// whether the page shows trouble (a failed fetch).
const PHONE: &str = r##"<!doctype html>
<html><body style="margin:0">
<iframe id="f" src="/" style="width:412px;height:1200px;border:0"></iframe>
<pre id="layout">pending</pre>
<script>
function measure() {
  const d = document.getElementById("f").contentDocument;
  if (!d || !d.body || d.body.dataset.loaded !== "true") { setTimeout(measure, 100); return; }
  const w = d.defaultView;
  const width = d.documentElement.clientWidth;
  const visible = (e) => e.getClientRects().length > 0 && w.getComputedStyle(e).visibility !== "hidden";
  const boxes = {};
  for (const b of d.querySelectorAll(".scroll")) boxes[b.id] = [b.scrollWidth, b.clientWidth];
  let smallest = 1000, smallestAt = "";
  const past = [];
  for (const e of d.body.querySelectorAll("*")) {
    if (!visible(e)) continue;
    if (!e.closest(".scroll") && e.getBoundingClientRect().right > width + 0.5) past.push(e.tagName + (e.id ? "#" + e.id : ""));
    const sizes = [];
    if ([...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) sizes.push(["", w.getComputedStyle(e).fontSize]);
    const before = w.getComputedStyle(e, "::before");
    if (before.content !== "none" && before.content !== "normal" && before.display !== "none") sizes.push(["::before", before.fontSize]);
    for (const [pseudo, size] of sizes) {
      if (parseFloat(size) < smallest) { smallest = parseFloat(size); smallestAt = e.tagName + "." + e.className + pseudo; }
    }
  }
  document.getElementById("layout").textContent = JSON.stringify({
    width, page: d.documentElement.scrollWidth, boxes, smallest, smallestAt, past,
    rows: d.querySelectorAll("tr[data-domain]").length, trouble: !d.getElementById("trouble").hidden });
}
measure();
</script>
</body></html>"##;

/// The page's drawing on fixed data (what a live agent rarely shows in a test's time): anomaly
/// flags with their figures, a sparkline's points, a left-out route with nginx's reason, an
/// unhealthy server, a failing certificate, events newest first; and markup in a domain or a reason
/// shown as text, never run. The assets are the binary's own, served by a stub.
#[test]
fn the_dashboard_draws_flags_sparklines_and_left_out_routes_from_fixed_data() {
    let Some(chromium) = tool("chromium", "--version", "chromium") else { return };
    let mut spark = vec![0u32; 60];
    spark[59] = 120;
    spark[30] = 60;
    let insight = serde_json::json!({
        "at_ms": 1, "dropped": {"malformed": 2, "oversized": 0, "unrouted": 9},
        "domains": [{
            "domain": "api.test",
            "last_minute": {"requests": 600, "requests_per_second": 10.0, "error_ratio": 0.25,
                "by_class": {"2xx": 450, "5xx": 150}, "request_time_ms": {"p50": 20.0, "p95": 480.0}},
            "requests_per_minute": spark,
            "anomalies": [
                {"kind": "error_ratio", "since_ms": 1, "raised": {"observed": 0.25, "baseline": 0.01, "requests": 600},
                 "latest": {"observed": 0.25, "baseline": 0.01, "requests": 600}},
                {"kind": "latency", "since_ms": 1, "raised": {"observed": 480.0, "baseline": 40.0, "requests": 600},
                 "latest": {"observed": 480.0, "baseline": 40.0, "requests": 600}}
            ]
        }]
    })
    .to_string();
    let routes = serde_json::json!({
        "routes": [{"domain": "api.test", "path": "/", "servers": [
            {"address": "10.0.0.5:80", "state": "up", "source": "container api"},
            {"address": "10.0.0.6:80", "state": "unhealthy", "source": "container api-2"}],
            "source": "container api", "tls": "auto", "allow": []}],
        "left_out": [{"domain": "bad.test", "sources": ["container bad"], "reason": "nginx -t fails with it: <b>unknown directive</b>"}],
        "errors": [{"severity": "error", "origin": "container x, label smart-proxy.port", "message": "port must be 1..65535"}],
        "warnings": []
    })
    .to_string();
    let certs = serde_json::json!({"certificates": [
        {"domain": "api.test", "issuer": "R11", "not_after": null, "days_left": 3, "status": "failing",
         "last_error": "rate limited", "next_try": null}]})
    .to_string();
    let events = serde_json::json!({"events": [
        {"id": 1, "at_ms": 1_764_972_000_000u64, "kind": "reload", "text": "config applied: 1 domain live"},
        {"id": 2, "at_ms": 1_764_972_060_000u64, "kind": "anomaly", "text": "api.test: error_ratio up"}]})
    .to_string();
    let stub = fixed_dashboard(insight, routes, certs, events);
    // Once, in CI with many tests at once, every fetch of the page from the stub failed ("Failed
    // to fetch"): that says nothing of the page (it showed the failure, as it should). Load it
    // again then.
    let mut html = String::new();
    for attempt in 1..=3 {
        html = dump_dom(&chromium, &format!("http://127.0.0.1:{}/", stub.port()));
        if !html.contains("Failed to fetch") {
            break;
        }
        println!("the stub missed a fetch of the page (attempt {attempt}); loading it again");
    }
    assert!(html.contains("data-loaded=\"true\""), "{html}");
    assert!(html.contains("unhealthy: last apply failed: disk full"), "{html}");
    // Flags with the figures that raised them.
    assert!(html.contains("error_ratio: 25.0 % vs baseline 1.0 % (600 requests)"), "{html}");
    assert!(html.contains("latency: 480 ms vs baseline 40 ms (600 requests)"), "{html}");
    assert_eq!(cell(&html, "<tr data-domain=\"api.test\"", "num p95"), "480");
    assert!(html.contains("25.0 %"), "{html}");
    // The sparkline: 60 points, the last minute at the top (the hour's peak), the first at the bottom.
    let points = html.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
    let points: Vec<&str> = points.split(' ').collect();
    assert_eq!(points.len(), 60, "{points:?}");
    assert_eq!((points[0], points[59]), ("0.0,23.0", "90.0,1.0"), "{points:?}");
    assert!(html.contains("dropped log lines: 2 malformed, 0 oversized, 9 unrouted"), "{html}");
    // Routes: the unhealthy server marked; the left-out route with nginx's reason, as text.
    assert!(html.contains("10.0.0.6:80 (unhealthy)"), "{html}");
    assert!(html.contains("nginx -t fails with it: &lt;b&gt;unknown directive&lt;/b&gt;"), "{html}");
    assert!(html.contains("error: container x, label smart-proxy.port: port must be 1..65535"), "{html}");
    // Certificates and events (newest first).
    assert!(html.contains(">failing<") && html.contains(">rate limited<"), "{html}");
    assert_eq!(cell(&html, "id=\"certs\"", "num days bad"), "3", "3 days left, marked");
    let events = &html[html.find("id=\"events\"").unwrap()..];
    assert!(events.find("error_ratio up").unwrap() < events.find("config applied").unwrap(), "{events}");

    screenshot(&chromium, &format!("http://127.0.0.1:{}/", stub.port()), "412,1400", "dashboard-fixed.png");
}

/// `/events` on a real agent: the first apply, then a domain removed from the routes file and
/// another added show as decisions, newest last, with increasing ids.
#[test]
fn events_record_the_applies_and_the_domains_routed_and_removed() {
    let (agent, app, dir) = agent(&[]);
    let events = || -> Vec<(String, String)> {
        let (status, body) = agent.status_get("/events");
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = doc["events"].as_array().unwrap();
        let ids: Vec<u64> = list.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        list.iter().map(|e| (e["kind"].as_str().unwrap().into(), e["text"].as_str().unwrap().into())).collect()
    };
    let first = &events()[0];
    assert!(first.0 == "reload" && first.1.starts_with("config applied: 2 domains live"), "{first:?}");
    let json = serde_json::json!({
        "domains": [
            {"name": "shop.test", "service": "app", "tls": "auto"},
            {"name": "new.test", "service": "app", "tls": "off"},
        ],
        "services": [{"name": "app", "host": "127.0.0.1", "port": app.port()}],
    });
    write_file(&dir.path().join("routes.json"), &json.to_string());
    agent.wait_for("the new routes' events", Duration::from_secs(15), || {
        let list = events();
        list.contains(&("route_added".into(), "new.test routed".into()))
            && list.contains(&("route_removed".into(), "down.test no longer routed".into()))
    });
    let list = events();
    assert!(list.iter().filter(|(kind, _)| kind == "reload").count() >= 2, "{list:?}");
}

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// JSON messages ending in NUL on fds 3 and 4), for what `--dump-dom` cannot do: typing and
/// waiting.
struct Browser {
    child: std::process::Child,
    commands: std::fs::File,
    replies: std::sync::mpsc::Receiver<serde_json::Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(chromium: &Path, url: &str) -> Browser {
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let (command_read, command_write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let (reply_read, reply_write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let (cr, rw) = (command_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only dup2 between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::dup2(cr, 3)?;
                nix::unistd::dup2(rw, 4)?;
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((command_read, reply_write));
        let (tx, replies) = std::sync::mpsc::channel();
        let mut reader = std::fs::File::from(reply_read);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice(&message[..message.len() - 1]) {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: std::fs::File::from(command_write),
            replies,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", serde_json::json!({"url": url})).unwrap();
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached =
            browser.call("Target.attachToTarget", serde_json::json!({"targetId": target, "flatten": true})).unwrap();
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// One command; its result, or the protocol's error (panics after 10 s without a reply).
    fn call(&mut self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, serde_json::Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        loop {
            let reply = self.replies.recv_timeout(Duration::from_secs(10)).expect("a reply from chromium");
            if reply["id"] == id {
                return match reply.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    /// The value of a JavaScript expression in the page (`null` while a navigation replaces it).
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        self.call("Runtime.evaluate", params).map(|r| r["result"]["value"].clone()).unwrap_or_default()
    }

    fn wait_for(&mut self, what: &str, expression: &str) {
        let started = std::time::Instant::now();
        while self.eval(expression) != serde_json::Value::Bool(true) {
            let body = self.eval("document.body.innerText");
            assert!(started.elapsed() < Duration::from_secs(15), "timed out waiting for {what}; the page: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The login form in a real browser: a wrong token is refused with the endpoint's message, the
/// right one sets the cookie (HttpOnly: the page's script cannot read it) and the page's own
/// fetches then show the routes; a reload stays logged in.
#[test]
fn the_login_form_sets_a_cookie_the_page_fetches_with() {
    let Some(chromium) = tool("chromium", "--version", "chromium") else { return };
    const TOKEN: &str = "login-token-8d2f";
    let addr = format!("0.0.0.0:{}", free_port());
    let (agent, _app, _dir) = agent(&[("STATUS_ADDR", &addr), ("STATUS_TOKEN", TOKEN)]);
    let port = agent.status_port();
    agent.wait_for("/routes", Duration::from_secs(15), || {
        request(port, "/routes", &[("Authorization", &format!("Bearer {TOKEN}"))]).0 == 200
    });
    let mut browser = Browser::open(&chromium, &format!("http://127.0.0.1:{port}/"));
    browser.wait_for("the login form", "!document.getElementById('login').hidden");
    let submit = |token: &str| {
        format!(
            "document.getElementById('token').value = {token:?}; document.getElementById('login-form').requestSubmit(); true"
        )
    };
    browser.eval(&submit("wrong"));
    browser.wait_for("the refusal", "document.getElementById('login-error').textContent.startsWith('wrong token')");
    browser.eval(&submit(TOKEN));
    browser.wait_for(
        "the routes after logging in",
        "!document.getElementById('main').hidden && document.querySelectorAll('#routes tr[data-domain]').length === 2",
    );
    assert_eq!(browser.eval("document.cookie"), "", "the cookie is HttpOnly");
    assert_eq!(browser.eval("document.getElementById('token').value"), "", "the field is emptied");
    browser.eval("window.beforeReload = true; location.reload(); true");
    browser.wait_for(
        "the routes after a reload",
        "!window.beforeReload && document.body.dataset.loaded === 'true' && document.querySelectorAll('#routes tr[data-domain]').length === 2",
    );
}

/// "Readable on a phone": the page in a frame 412 CSS pixels wide, with long names (a
/// 63-character label with nothing to break it at among them), large figures, flags and long
/// reasons. The page never scrolls sideways, nothing reaches past the frame's edge, every table
/// fits whole (a row shows as a card, its figures visible without scrolling), and no text, the
/// columns' labels included, is smaller than 11 px.
#[test]
fn the_dashboard_fits_a_phone_with_long_names_and_large_figures() {
    let Some(chromium) = tool("chromium", "--version", "chromium") else { return };
    assert!(smart_proxy::dashboard::INDEX_HTML.contains(r#"content="width=device-width, initial-scale=1""#));
    let long = "customer-portal-staging.eu-west-1.internal-applications.example-company.com";
    // A label as long as DNS allows, with nothing to break it at.
    let unbroken = format!("{}.example.com", "customerportalstaging".repeat(3));
    let mut spark = vec![0u32; 60];
    spark[59] = 999_999;
    let mut domains: Vec<serde_json::Value> = ["a.test", "shop.example.com", long, unbroken.as_str()]
        .iter()
        .map(|d| {
            serde_json::json!({"domain": d, "requests_per_minute": spark,
                "last_minute": {"requests": 59_999_940u64, "requests_per_second": 999_999.0, "error_ratio": 0.999,
                    "request_time_ms": {"p50": 59_999.0, "p95": 59_999.0}}})
        })
        .collect();
    let figures = serde_json::json!({"observed": 0.999, "baseline": 0.001, "requests": 59_999_940u64});
    domains[2]["anomalies"] = serde_json::json!([
        {"kind": "error_ratio", "since_ms": 1, "raised": figures, "latest": figures},
        {"kind": "latency", "since_ms": 1, "raised": {"observed": 59_999.0, "baseline": 12.0, "requests": 59_999_940u64}},
        {"kind": "traffic_drop", "since_ms": 1, "raised": {"observed": 0.0, "baseline": 999.0, "requests": 0}}
    ]);
    let insight = serde_json::json!({"at_ms": 1, "domains": domains,
        "dropped": {"malformed": 123_456_789u64, "oversized": 123_456_789u64, "unrouted": 123_456_789u64}})
    .to_string();
    let servers: Vec<serde_json::Value> = (1..=3)
        .map(|n| {
            serde_json::json!({"address": format!("[2001:db8:1234:5678:9abc:def0:1234:567{n}]:65535"),
            "state": if n == 2 { "unhealthy" } else { "up" }, "source": format!("container {long}-web-{n}")})
        })
        .collect();
    let routes = serde_json::json!({
        "routes": [{"domain": long, "path": "/api/v2/customers/exports", "servers": servers, "health": "/healthz/ready",
            "source": format!("container {long}-web-1, label smart-proxy.admin.domains"), "tls": "auto", "allow": []}],
        "left_out": [{"domain": long, "sources": [format!("container {long}-web-1")],
            "reason": format!("nginx -t fails with it: nginx: [emerg] host not found in upstream \"{long}:8080\" in /etc/nginx/conf.d/smart-proxy/{long}.conf:17")}],
        "errors": [{"severity": "error", "origin": format!("container {unbroken}, label smart-proxy.admin.rate-limit"),
            "message": "rate-limit must be like 10r/s or 600r/m with an optional burst (10r/s burst=20)"}],
        "warnings": []
    })
    .to_string();
    let certs = serde_json::json!({"certificates": [
        {"domain": long, "issuer": "(STAGING) Pretend Pear X1 Intermediate", "not_after": null, "days_left": 3,
         "status": "failing", "last_error": format!("acme: urn:ietf:params:acme:error:rateLimited: too many certificates already issued for {long}"),
         "next_try": null}]})
    .to_string();
    let events = serde_json::json!({"events": [
        {"id": 1, "at_ms": 1_764_972_000_000u64, "kind": "anomaly",
         "text": format!("{unbroken}: 5xx share up: 99.9 % of 59999940 requests (baseline 0.1 %)")}]})
    .to_string();
    let stub = fixed_dashboard(insight, routes, certs, events);

    // The page as a phone shows it, kept as an artifact beside the other two.
    screenshot(&chromium, &format!("http://127.0.0.1:{}/", stub.port()), "412,1400", "dashboard-phone.png");

    // As in the fixed-data test, a load whose fetches all failed is tried again: an empty page
    // would fit anything.
    let mut layout = serde_json::Value::Null;
    for attempt in 1..=3 {
        let html = dump_dom(&chromium, &format!("http://127.0.0.1:{}/phone", stub.port()));
        let text = html.split("<pre id=\"layout\">").nth(1).and_then(|r| r.split("</pre>").next()).unwrap();
        layout = serde_json::from_str(text).unwrap_or_else(|e| panic!("the frame's figures ({e}): {text}"));
        if layout["trouble"] == false {
            break;
        }
        println!("the page in the frame showed trouble (attempt {attempt}); loading it again");
    }
    println!("412 px frame: {layout}");
    assert_eq!(
        (&layout["trouble"], &layout["rows"]),
        (&false.into(), &7.into()),
        "4 traffic rows, 1 each else: {layout}"
    );
    let width = layout["width"].as_u64().unwrap();
    assert!((380..=412).contains(&width), "the page's width in the frame, a scrollbar aside: {layout}");
    assert!(layout["page"].as_u64().unwrap() <= width, "the page scrolls sideways: {layout}");
    assert_eq!(layout["past"], serde_json::json!([]), "past the right edge: {layout}");
    for section in ["traffic", "routes", "left-out", "certs"] {
        let [content, box_] = [0, 1].map(|i| layout["boxes"][section][i].as_u64().unwrap());
        assert!(content <= box_, "{section}: {content} px of table in a {box_} px box: {layout}");
    }
    assert!(layout["smallest"].as_f64().unwrap() >= 11.0, "text under 11 px: {layout}");
}

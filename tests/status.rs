//! The status endpoint (`/healthz`, `/metrics`, `/routes` on `STATUS_ADDR`) and the `health`
//! command: against the agent as a process (nginx its child), and on the real daemon in the
//! companion setup, where stopping the nginx container must turn `/healthz` to 503.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::companion::{started_app, Companion, Options, NGINX_STARTED_AGAIN};
use crate::support::agent::{free_port, write_file, Agent};
use crate::support::docker::{docker as cli, docker_output, TestDocker};
use crate::support::images::AGENT_BIN;

/// A fake Cloudflare token: it must never show in an endpoint (or the log).
const SECRET: &str = "cf-fake-token-7f3a9c-must-never-show";

/// `nginx-smart-proxy args...` with only `env` (and PATH) set.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {l:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number in {l:?}")))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} missing from /metrics: {samples:#?}"))
}

/// `promtool check metrics` (Debian's prometheus package, installed by .ci/run): the exposition
/// parses and follows the naming conventions. Without promtool: a failure under CI, else a loud skip.
pub(crate) fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                !crate::support::in_ci(),
                "promtool is required under CI ({e}): apt-get install prometheus (.ci/run does this)"
            );
            eprintln!("\n*** SKIPPED the promtool check: {e} (apt-get install prometheus) ***\n");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejects /metrics:\n{}{}\n--- /metrics ---\n{text}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw request to the status endpoint: (status, the whole response).
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    (response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), response)
}

fn routes_file(path: &Path, backend: u16, domains: &[(&str, &str)]) {
    let domains: Vec<serde_json::Value> =
        domains.iter().map(|(name, tls)| serde_json::json!({"name": name, "service": "app", "tls": tls})).collect();
    let json = serde_json::json!({
        "domains": domains,
        "services": [{"name": "app", "host": "127.0.0.1", "port": backend}],
    });
    write_file(path, &json.to_string());
}

#[test]
fn healthz_metrics_and_routes_of_a_production_agent() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("routes.json");
    let backend = free_port();
    routes_file(&config, backend, &[("app.test", "auto"), ("plain.test", "off")]);
    let https = free_port().to_string();
    let config_path = config.display().to_string();
    let agent = Agent::start(&[
        ("NO_DOCKER", "true"),
        ("LOCAL", "false"),
        ("HTTPS_PORT", &https),
        ("CONFIG_FILE", &config_path),
        ("CLOUDFLARE_API_TOKEN", SECRET),
    ]);
    let port = agent.status_port();
    agent.wait_for("/healthz to answer 200", Duration::from_secs(15), || {
        agent.status_get("/healthz") == (200, "ok\n".into())
    });

    // /metrics: valid exposition, every metric, sane values.
    let (status, text) = agent.status_get("/metrics");
    assert_eq!(status, 200, "{text}");
    promtool_check(&text);
    // (The follower families show once a follower polls: tests/follow.rs.)
    for name in smart_proxy::metrics::NAMES.iter().filter(|n| !n.contains("_follower_")) {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from /metrics:\n{text}");
    }
    let before = samples(&text);
    assert_eq!(sample(&before, r#"smart_proxy_routes{source="file"}"#), 2.0);
    assert_eq!(sample(&before, r#"smart_proxy_routes{source="labels"}"#), 0.0);
    assert_eq!(sample(&before, "smart_proxy_routes_left_out"), 0.0);
    assert!(sample(&before, "smart_proxy_config_test_duration_seconds_count") >= 1.0);
    assert_eq!(sample(&before, "smart_proxy_config_test_failures_total"), 0.0);
    assert_eq!(sample(&before, r#"smart_proxy_reloads_total{result="failure"}"#), 0.0);
    assert_eq!(sample(&before, "smart_proxy_docker_events_total"), 0.0);
    assert_eq!(sample(&before, r#"smart_proxy_acme_orders_total{result="success"}"#), 0.0);
    // app.test got a placeholder (7 days); plain.test has no TLS, so no certificate.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let expiry =
        sample(&before, r#"smart_proxy_certificate_expiry_timestamp_seconds{domain="app.test",placeholder="true"}"#);
    assert!(expiry > now + 6.0 * 86400.0 && expiry < now + 8.0 * 86400.0, "expiry {expiry}, now {now}");
    assert!(!text.contains("domain=\"plain.test\""), "{text}");

    // A change: one more route, tested and reloaded.
    routes_file(&config, backend, &[("app.test", "auto"), ("plain.test", "off"), ("new.test", "off")]);
    agent.wait_for("/routes to show new.test", Duration::from_secs(15), || {
        agent.status_get("/routes").1.contains("new.test")
    });
    let after = samples(&agent.status_get("/metrics").1);
    assert_eq!(sample(&after, r#"smart_proxy_routes{source="file"}"#), 3.0);
    let reloads = r#"smart_proxy_reloads_total{result="success"}"#;
    assert!(sample(&after, reloads) >= sample(&before, reloads) + 1.0, "a reload is counted");
    assert!(sample(&after, "smart_proxy_reload_duration_seconds_count") >= 1.0);
    let tests = "smart_proxy_config_test_duration_seconds_count";
    assert!(sample(&after, tests) > sample(&before, tests), "the nginx -t is counted");

    // /routes: the live routes as JSON.
    let (status, body) = agent.status_get("/routes");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let routes = json["routes"].as_array().unwrap();
    let route =
        |domain: &str| routes.iter().find(|r| r["domain"] == domain).unwrap_or_else(|| panic!("{domain}: {body}"));
    assert_eq!(route("app.test")["tls"], "auto");
    assert_eq!(route("plain.test")["tls"], "off");
    assert_eq!(route("app.test")["path"], "/");
    assert_eq!(route("app.test")["servers"][0]["address"], format!("127.0.0.1:{backend}"));
    assert!(route("new.test")["source"].as_str().unwrap().contains("routes.json"), "{body}");
    assert_eq!(json["left_out"], serde_json::json!([]));

    // HEAD, unknown paths, other methods.
    let (status, response) = raw(port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "{response}");
    assert!(response.ends_with("\r\n\r\n"), "HEAD has no body: {response:?}");
    assert_eq!(agent.status_get("/nope").0, 404);
    assert_eq!(agent.status_get("/healthz/").0, 404);
    let (status, response) =
        raw(port, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405, "{response}");

    // No secret anywhere: every path the status endpoint answers.
    let paths = ["/", "/dashboard.js", "/dashboard.css", "/login", "/healthz", "/metrics", "/routes"];
    for path in paths.into_iter().chain(["/insight", "/events", "/certs", "/followers"]) {
        assert!(!agent.status_get(path).1.contains(SECRET), "{path} shows the Cloudflare token");
    }
    assert!(!agent.log().contains(SECRET), "the log shows the Cloudflare token");

    // `health`: 0 with the reason on stdout; a wildcard STATUS_ADDR is asked on loopback.
    for addr in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let out = run_cli(&["health"], &[("STATUS_ADDR", &addr)]);
        assert_eq!(out.status.code(), Some(0), "health with STATUS_ADDR={addr}: {}", stdout(&out));
        assert_eq!(stdout(&out), "ok\n");
    }
}

#[test]
fn healthz_says_why_the_last_apply_failed() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("nginx.conf.j2");
    write_file(&template, smart_proxy::render::BUILTIN_TEMPLATE);
    let template_path = template.display().to_string();
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("DOMAINS", "a.test"), ("NGINX_TEMPLATE", &template_path)]);
    let addr = format!("127.0.0.1:{}", agent.status_port());
    agent.wait_for("/healthz to answer 200", Duration::from_secs(15), || agent.status_get("/healthz").0 == 200);

    // A template nginx rejects even without routes: the last good config stays live, and
    // /healthz says why in one line.
    write_file(&template, &format!("no_such_directive on;\n{}", smart_proxy::render::BUILTIN_TEMPLATE));
    agent.wait_for("/healthz to answer 503", Duration::from_secs(15), || agent.status_get("/healthz").0 == 503);
    let (_, body) = agent.status_get("/healthz");
    assert!(body.starts_with("last apply failed: nginx -t rejects even a config without routes"), "{body:?}");
    assert_eq!(body.lines().count(), 1, "one line: {body:?}");
    let out = run_cli(&["health"], &[("STATUS_ADDR", &addr)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("unhealthy: 503 Service Unavailable: {body}"));
    let metrics = samples(&agent.status_get("/metrics").1);
    assert!(sample(&metrics, "smart_proxy_config_test_failures_total") >= 1.0);
    assert_eq!(agent.get("a.test", "/").0, 503, "the last good config still serves a.test");

    write_file(&template, smart_proxy::render::BUILTIN_TEMPLATE);
    agent.wait_for("/healthz to answer 200 again", Duration::from_secs(15), || agent.status_get("/healthz").0 == 200);
    assert_eq!(run_cli(&["health"], &[("STATUS_ADDR", &addr)]).status.code(), Some(0));
}

/// TCP sockets `pid` listens on (its fds matched against /proc/net/tcp{,6} in LISTEN state).
fn listening_sockets(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(String::from))
        .collect();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                found.push(fields[1].to_string());
            }
        }
    }
    found
}

/// The parent of `pid` (from /proc/<pid>/stat).
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn status_addr_off_serves_nothing() {
    let on = Agent::start(&[("NO_DOCKER", "true"), ("DOMAINS", "a.test")]);
    let off = Agent::start(&[("NO_DOCKER", "true"), ("DOMAINS", "a.test"), ("STATUS_ADDR", "off")]);
    on.wait_for("/healthz to answer 200", Duration::from_secs(15), || on.status_get("/healthz").0 == 200);
    // The agent is nginx's parent: with the endpoint on it listens on one socket, off on none.
    assert_eq!(listening_sockets(parent_of(on.nginx_pid())).len(), 1, "{}", on.log());
    assert_eq!(listening_sockets(parent_of(off.nginx_pid())), Vec::<String>::new(), "{}", off.log());
    assert!(!off.log().contains("status endpoint"), "{}", off.log());

    let out = run_cli(&["health"], &[("STATUS_ADDR", "off")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("unhealthy: the status endpoint is off (STATUS_ADDR=off)"), "{}", stdout(&out));
}

#[test]
fn health_fails_clearly_when_nothing_answers() {
    let port = free_port();
    let out = run_cli(&["health"], &[("STATUS_ADDR", &format!("127.0.0.1:{port}"))]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("unhealthy: cannot reach http://127.0.0.1:{port}/healthz: ")), "{text}");
    assert!(text.contains("is the agent running with STATUS_ADDR="), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn a_bad_status_addr_is_a_usage_error_naming_the_setting() {
    for bad in ["localhost:9180", "9180", "127.0.0.1:99999"] {
        let out = run_cli(&["--dry-run"], &[("NO_DOCKER", "true"), ("STATUS_ADDR", bad)]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("STATUS_ADDR must be ip:port") && stderr.contains(bad), "{bad}: {stderr}");
    }
}

#[test]
fn healthz_follows_the_companion_nginx_container() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    started_app(&docker, &c, "app1");
    c.wait_for_status("app1.test", 200, Some("app1"));
    // `health` as Docker's HEALTHCHECK runs it: inside the agent container, default STATUS_ADDR.
    let health = || {
        let out = docker_output(&["exec", &c.agent, AGENT_BIN, "health"]);
        (out.status.code(), stdout(&out))
    };
    c.wait_for("health to pass", Duration::from_secs(20), || health().0 == Some(0));
    assert_eq!(health().1, "ok\n");

    let seen = c.count(NGINX_STARTED_AGAIN);
    cli(&["stop", "--time", "5", &c.nginx]);
    c.wait_for("health to fail", Duration::from_secs(20), || health().0 == Some(1));
    let (_, text) = health();
    assert!(
        text.starts_with(&format!(
            "unhealthy: 503 Service Unavailable: nginx unreachable: container {} is exited",
            c.nginx
        )),
        "{text}"
    );

    cli(&["start", &c.nginx]);
    c.refresh_port();
    c.wait_for_reapply(seen + 1);
    c.wait_for("health to pass again", Duration::from_secs(20), || health().0 == Some(0));
    c.wait_for_status("app1.test", 200, Some("app1"));

    let metrics = docker_output(&["exec", &c.agent, "wget", "-qO-", "http://127.0.0.1:9180/metrics"]);
    let metrics = samples(&stdout(&metrics));
    assert!(sample(&metrics, "smart_proxy_docker_events_total") >= 3.0, "app1 start, nginx stop and start");
    assert!(sample(&metrics, r#"smart_proxy_reloads_total{result="success"}"#) >= 2.0);
    assert_eq!(sample(&metrics, r#"smart_proxy_routes{source="labels"}"#), 1.0);
}

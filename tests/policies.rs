//! Route policies through the real nginx: the agent (nginx as its child, no Docker) serves JSON
//! file routes to a stub app on loopback, and each policy is checked by its effect on requests:
//! `max-body` (413 just over, 200 at the limit), `timeout` (504 past it), `buffering=off` (the
//! app gets a request while its body is still on the way), and the proxy's own `/health` answer
//! in every kind of server (LOCAL, `tls=off`, HTTPS and its redirecting HTTP server).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use crate::support::agent::Agent;
use crate::support::free_port;
use crate::support::stub_http::StubHttp;

/// A stub app on 127.0.0.1 (`support::stub_http`): `/size` answers the body length it read,
/// `/sleep/<ms>` answers after that long, anything else answers `app <path>`. Each request's path
/// is told to `requests` as soon as its headers are read, before its body.
struct App {
    port: u16,
    requests: Mutex<mpsc::Receiver<String>>,
    _server: StubHttp,
}

impl App {
    fn start() -> App {
        let (tell, requests) = mpsc::channel();
        let seen = move |path: &str| {
            let _ = tell.send(path.to_string());
        };
        let server = StubHttp::start_seen(0, seen, |request| {
            Some(if request.path == "/size" {
                format!("got {}", request.body.len())
            } else if let Some(ms) = request.path.strip_prefix("/sleep/") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
                "slept".to_string()
            } else {
                format!("app {}", request.path)
            })
        });
        App { port: server.port(), requests: Mutex::new(requests), _server: server }
    }

    /// Waits for a request for `path` to reach the app (its headers; the body may still come).
    fn wait_for_request(&self, path: &str, timeout: Duration) -> bool {
        let requests = self.requests.lock().unwrap();
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match requests.recv_timeout(left) {
                Ok(p) if p == path => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// The stub app and the JSON routes file (in `dir`, for the test's life) for `domains`, with one
/// service, `app`: the stub app. Returns the file's path.
fn app_with_routes(dir: &tempfile::TempDir, domains: serde_json::Value) -> (App, String) {
    let app = App::start();
    let path = dir.path().join("routes.json");
    let config = serde_json::json!({
        "services": [{ "name": "app", "host": "127.0.0.1", "port": app.port }],
        "domains": domains,
    });
    std::fs::write(&path, config.to_string()).unwrap();
    (app, path.display().to_string())
}

/// `curl` to nginx on loopback with `Host: host`; extra arguments as given.
fn curl(port: u16, host: &str, path: &str, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Host: {host}")])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl")
}

/// (status, body) of a curl run.
fn status_body(out: &Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// POSTs `size` bytes.
fn post(port: u16, host: &str, size: usize) -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, vec![b'x'; size]).unwrap();
    let data = format!("@{}", file.display());
    status_body(&curl(port, host, "/size", &["--data-binary", &data]))
}

#[test]
fn max_body_timeout_and_buffering_act_on_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (app, file) = app_with_routes(
        &dir,
        serde_json::json!([
            { "name": "small.test", "service": "app", "max-body": "1k" },
            { "name": "big.test", "service": "app", "max-body": "0" },
            { "name": "default.test", "service": "app" },
            { "name": "quick.test", "service": "app", "timeout": "1s" },
            { "name": "stream.test", "service": "app", "buffering": "off" },
        ]),
    );
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", &file)]);
    agent.wait_for_status("stream.test", 200, Some("app /"));
    let port = agent.port;

    assert_eq!(post(port, "small.test", 1024), (200, "got 1024".into()), "at the limit");
    assert_eq!(post(port, "small.test", 1025).0, 413, "one byte over 1k");
    assert_eq!(post(port, "default.test", 1 << 20), (200, format!("got {}", 1 << 20)), "nginx's 1m by default");
    assert_eq!(post(port, "default.test", (1 << 20) + 1).0, 413, "one byte over the default 1m");
    assert_eq!(post(port, "big.test", 3 << 20), (200, format!("got {}", 3 << 20)), "0: unlimited");

    assert_eq!(status_body(&curl(port, "quick.test", "/sleep/200", &[])), (200, "slept".into()));
    assert_eq!(status_body(&curl(port, "quick.test", "/sleep/2500", &[])).0, 504, "past timeout=1s");
    assert_eq!(status_body(&curl(port, "default.test", "/sleep/2500", &[])), (200, "slept".into()));

    // Unbuffered, a request reaches the app while its body is still on the way (buffered,
    // nginx reads the whole body first: the app would see nothing until the upload ends).
    let upload = |host: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello");
        stream.write_all(head.as_bytes()).unwrap();
        let reached = app.wait_for_request("/upload", Duration::from_secs(3));
        stream.write_all(b"world").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        reached
    };
    assert!(upload("stream.test"), "buffering=off: the app got the request before its body was complete");
    assert!(!upload("default.test"), "buffered by default: the app saw nothing while the body was incomplete");
}

#[test]
fn the_proxy_answers_health_on_every_domain_in_local_mode_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, file) = app_with_routes(
        &dir,
        serde_json::json!([
            { "name": "plain.test", "service": "app" },
            { "name": "moved.test", "service": "app", "health": "/healthz" },
            { "name": "app-owns-it.test", "service": "app", "health": "off" },
            { "name": "no-service.test" },
        ]),
    );
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", &file)]);
    agent.wait_for_status("plain.test", 200, Some("app /"));
    assert_eq!(agent.get("plain.test", "/health"), (200, "healthy\n".into()));
    assert_eq!(agent.get("no-service.test", "/health"), (200, "healthy\n".into()));
    assert_eq!(agent.get("moved.test", "/healthz"), (200, "healthy\n".into()));
    assert_eq!(agent.get("moved.test", "/health"), (200, "app /health".into()), "the app's own path");
    assert_eq!(agent.get("app-owns-it.test", "/health"), (200, "app /health".into()));
}

#[test]
fn the_proxy_answers_health_over_https_and_on_plain_http_routes_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let (_app, file) = app_with_routes(
        &dir,
        serde_json::json!([
            { "name": "secure.test", "service": "app" },
            { "name": "plain.test", "service": "app", "tls": "off" },
        ]),
    );
    // No ACME: the placeholder certificates are enough for nginx to serve HTTPS.
    let mut agent = Agent::production(free_port(), &[("ACME", "off"), ("CONFIG_FILE", &file)]);
    agent.launch();
    agent.wait_for_status("plain.test", 200, Some("app /"));
    let https = |path: &str| {
        let resolve = format!("secure.test:{}:127.0.0.1", agent.https_port);
        let url = format!("https://secure.test:{}{path}", agent.https_port);
        let out = Command::new("curl")
            .args(["-sSk", "--max-time", "10", "--resolve", &resolve, "-o", "-", "-w", "\n%{http_code}", &url])
            .output()
            .expect("run curl");
        status_body(&out)
    };
    agent.wait_for("HTTPS to answer", Duration::from_secs(15), || https("/").0 == 200);
    assert_eq!(https("/health"), (200, "healthy\n".into()), "HTTPS server");
    assert_eq!(https("/"), (200, "app /".into()));
    assert_eq!(agent.get("secure.test", "/health"), (200, "healthy\n".into()), "its HTTP server, not redirected");
    assert_eq!(agent.get("secure.test", "/").0, 301);
    assert_eq!(agent.get("plain.test", "/health"), (200, "healthy\n".into()), "a tls=off server");
}

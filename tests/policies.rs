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

use proptest::prelude::*;
use smart_proxy::render::{RenderSettings, Renderer};
use smart_proxy::routes::RouteTable;

use crate::support::agent::Agent;
use crate::support::stub_http::StubHttp;
use crate::support::{container, free_port, label_table, nginx_bin, nginx_version, NginxSandbox};

/// A stub app on 127.0.0.1 (`support::stub_http`): `/size` answers the body length it read,
/// `/sleep/<ms>` answers after that long, `/echo` the `X-Echo` header it got (in brackets),
/// anything else answers `app <path>`. Each request's path
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
            Some(if request.path == "/echo" {
                request.header("x-echo").map_or_else(|| "(no X-Echo)".to_string(), |v| format!("[{v}]"))
            } else if request.path == "/size" {
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

/// `buffering=off` streams responses too: the app's writes go at the client's pace (a server-sent
/// event reaches the client at once, a download is not spooled). Buffered (the default), nginx
/// takes the whole response from the app, to its temp files, however slowly the client reads.
#[test]
fn buffering_off_passes_responses_at_the_clients_pace() {
    // An app that answers /events with one event and holds the response for 3 s, and anything
    // else with 64 MiB, counting the bytes it managed to write.
    const SIZE: usize = 64 << 20;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = listener.local_addr().unwrap().port().to_string();
    let counter = written.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let (mut head, mut byte) = (Vec::new(), [0u8]);
                while !head.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                    head.push(byte[0]);
                }
                if head.starts_with(b"GET /events ") {
                    let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
                    let head =
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
                    let _ = stream.write_all(format!("{head}{}", chunk("data: first\n\n")).as_bytes());
                    std::thread::sleep(Duration::from_secs(3));
                    let _ = stream.write_all(format!("{}0\r\n\r\n", chunk("data: last\n\n")).as_bytes());
                    return;
                }
                counter.store(0, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes());
                let block = vec![b'x'; 64 << 10];
                for _ in 0..SIZE / block.len() {
                    if stream.write_all(&block).is_err() {
                        return;
                    }
                    counter.fetch_add(block.len(), std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let c = container(
        "events",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "buffered.test"),
            ("smart-proxy.port", &app_port),
            ("smart-proxy.stream.domains", "stream.test"),
            ("smart-proxy.stream.buffering", "off"),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let ask = |host: &str, path: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        stream
    };

    // The event arrives while the app holds the response.
    let mut stream = ask("stream.test", "/events");
    let (started, mut got, mut buf) = (std::time::Instant::now(), Vec::new(), [0u8; 4096]);
    while started.elapsed() < Duration::from_millis(1500) {
        if let Ok(n) = stream.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("data: first") && !got.contains("data: last"), "buffering=off: {got:?}");

    // A client that reads nothing: what the app can write, sampled every 500 ms until it stops
    // growing (or all is written), at most 20 s.
    let stalled = |host: &str| -> usize {
        let _client = ask(host, "/download");
        let (started, mut last) = (std::time::Instant::now(), usize::MAX);
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = written.load(std::sync::atomic::Ordering::SeqCst);
            if now == SIZE || now == last || started.elapsed() > Duration::from_secs(20) {
                return now;
            }
            last = now;
        }
    };
    assert_eq!(stalled("buffered.test"), SIZE, "buffered: nginx took the whole response");
    let streamed = stalled("stream.test");
    assert!(streamed < SIZE, "buffering=off: the app waits for the client ({streamed} of {SIZE} bytes written)");
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
            { "name": "preload.test", "service": "app", "hsts": "31536000,includeSubDomains,preload" },
            { "name": "nohsts.test", "service": "app", "hsts": "off" },
            { "name": "shop.test", "service": "app", "www": "to-www" },
            { "name": "moved.test", "redirect": "https://example.org", "tls": "off" },
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

    // hsts: the HTTPS answer's Strict-Transport-Security, per domain.
    // The head of an HTTPS answer for `host` and `path`.
    let head = |host: &str, path: &str| {
        let resolve = format!("{host}:{}:127.0.0.1", agent.https_port);
        let url = format!("https://{host}:{}{path}", agent.https_port);
        let out = Command::new("curl")
            .args(["-sSk", "--max-time", "10", "--resolve", &resolve, "-D", "-", "-o", "/dev/null", &url])
            .output()
            .expect("run curl");
        let head = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(head.starts_with("HTTP/"), "{host}: {head} {}", String::from_utf8_lossy(&out.stderr));
        head
    };
    let sts = |host: &str| {
        head(host, "/")
            .lines()
            .find_map(|l| {
                l.strip_prefix("strict-transport-security: ").or(l.strip_prefix("Strict-Transport-Security: "))
            })
            .map(|v| v.trim_end().to_string())
    };
    assert_eq!(sts("secure.test").as_deref(), Some("max-age=63072000"), "the default");
    assert_eq!(sts("preload.test").as_deref(), Some("max-age=31536000; includeSubDomains; preload"));
    assert_eq!(sts("nohsts.test"), None, "hsts=off");

    // www over HTTPS: the other name has a certificate of its own (a placeholder until one is
    // issued) and redirects there; the canonical name is served.
    let redirected = head("shop.test", "/cart?id=3");
    assert!(redirected.starts_with("HTTP/2 301"), "{redirected}");
    let to = format!("https://www.shop.test:{}/cart?id=3", agent.https_port);
    assert!(redirected.lines().any(|l| l.eq_ignore_ascii_case(&format!("location: {to}"))), "{redirected}");
    assert!(head("www.shop.test", "/").starts_with("HTTP/2 200"));
    for name in ["shop.test", "www.shop.test"] {
        assert!(agent.path(&format!("certs/live/{name}/fullchain.pem")).is_file(), "{name} has its certificate");
    }
    // A redirecting domain still answers the ACME challenge (and its health) itself.
    std::fs::create_dir_all(agent.path("webroot/.well-known/acme-challenge")).unwrap();
    std::fs::write(agent.path("webroot/.well-known/acme-challenge/token1"), "key-authorization").unwrap();
    assert_eq!(agent.get("moved.test", "/.well-known/acme-challenge/token1"), (200, "key-authorization".into()));
    assert_eq!(agent.get("moved.test", "/health"), (200, "healthy\n".into()));
    assert_eq!(agent.get("moved.test", "/x").0, 301);
}

#[test]
fn strip_prefix_removes_the_route_path_before_the_app() {
    let app = App::start();
    let port = app.port.to_string();
    let c = container(
        "api",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "strip.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.path", "/api/"),
            ("smart-proxy.strip-prefix", "true"),
            ("smart-proxy.v1.domains", "strip.test"),
            ("smart-proxy.v1.path", "/v1.0"),
            ("smart-proxy.keep.domains", "strip.test"),
            ("smart-proxy.keep.path", "/keep/"),
            ("smart-proxy.keep.strip-prefix", "false"),
        ],
    );
    let table = label_table(&[c]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let body = |path: &str| nginx.get("strip.test", path).split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    assert_eq!(body("/api/users?page=2").as_deref(), Some("app /users?page=2"), "prefix gone, query kept");
    assert_eq!(body("/api/").as_deref(), Some("app /"));
    // A path with a '.': the regex escapes it (v1x0 is not v1.0), and the named route inherits.
    assert_eq!(body("/v1.0/x").as_deref(), Some("app /x"));
    assert_eq!(body("/v1.0").as_deref(), Some("app /"));
    assert_eq!(body("/v1x0/x").map(|b| b.contains("app")), Some(false), "{:?}", body("/v1x0/x"));
    assert_eq!(body("/keep/x").as_deref(), Some("app /keep/x"), "strip-prefix=false keeps it");
}

/// nginx serving `table` (LOCAL mode, the built-in template) on a free loopback port, in its own
/// sandbox (kept until nginx has stopped); stopped when dropped.
pub(crate) struct Served {
    _sandbox: NginxSandbox,
    child: std::process::Child,
    pub(crate) port: u16,
}

impl Served {
    pub(crate) fn start(table: &RouteTable) -> Served {
        Served::start_with(table, |_| {})
    }

    /// [`Served::start`] with the render settings changed by `adjust`.
    pub(crate) fn start_with(table: &RouteTable, adjust: impl FnOnce(&mut RenderSettings)) -> Served {
        use std::os::unix::fs::PermissionsExt;
        let sandbox = NginxSandbox::new();
        // nginx's workers (nobody, when the tests run as root) write the access logs.
        std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(sandbox.path("logs"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let mut settings = RenderSettings { http_port: port, nginx_version: nginx_version(), ..sandbox.settings(true) };
        adjust(&mut settings);
        let config = Renderer::builtin().render(table, &settings).expect("render");
        Served::run(sandbox, &config, port, Some((table, &settings)))
    }

    /// nginx running `config` (an http-context file as is, not rendered: a test's backend) until
    /// dropped; `port` is one it listens on, to wait for.
    fn raw(config: &str, port: u16) -> Served {
        use std::os::unix::fs::PermissionsExt;
        let sandbox = NginxSandbox::new();
        std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Served::run(sandbox, config, port, None)
    }

    /// Runs nginx on `config`; with the table and settings it was rendered from, with the
    /// htpasswd files of its basic-auth routes.
    fn run(sandbox: NginxSandbox, config: &str, port: u16, rendered: Option<(&RouteTable, &RenderSettings)>) -> Served {
        if let Err(e) = sandbox.test(config) {
            panic!("nginx -t rejected the rendered config:\n{e}\n--- config ---\n{config}");
        }
        if let Some((table, settings)) = rendered {
            write_auth_files(&sandbox, table, settings);
        }
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(sandbox.dir.path())
            .arg("-c")
            .arg(sandbox.path("nginx.conf"))
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        let served = Served { _sandbox: sandbox, child, port };
        crate::support::poll(
            "nginx to listen",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || None,
            String::new,
        );
        served
    }

    /// GET `path` with `Host: host`: the raw response (headers and body).
    pub(crate) fn get(&self, host: &str, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        String::from_utf8(response).expect("printable ASCII in, ASCII out")
    }
}

/// The htpasswd files of `table`'s basic-auth routes, written as the agent's apply writes them and
/// handed to nginx's workers' group by the agent's own test script (run on the sandbox).
fn write_auth_files(sandbox: &NginxSandbox, table: &RouteTable, settings: &RenderSettings) {
    use smart_proxy::apply::{auth_files::AuthFiles, nginx::LocalNginx, Nginx};
    let files = AuthFiles::of(table);
    assert!(files.unusable.is_empty(), "{:?}", files.unusable);
    if files.write(settings.auth_dir.as_path()).expect("write the htpasswd files") == 0 {
        return;
    }
    let nginx = Nginx::Local(LocalNginx { bin: nginx_bin(), main_conf: sandbox.path("nginx.conf"), child: None });
    let target = sandbox.path("conf.d/default.conf");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(nginx.test(&target, &target)).expect("the agent's test script passes");
}

impl Drop for Served {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would leave them running).
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// The value of response header `name` exactly as nginx wrote it (`Name: value\r\n`).
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.strip_prefix(' ').unwrap_or(v))
    })
}

/// Printable ASCII, heavy on what nginx's config reader and its variables treat specially.
fn header_value() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec!['"', '\'', '\\', '$', ';', '{', '}', '#', ' ', 't', 'n', 'r', '(', ')']);
    let any = (0x20u8..=0x7e).prop_map(char::from);
    prop::collection::vec(prop_oneof![1 => any, 1 => special], 1..120)
        .prop_map(|chars| chars.into_iter().collect::<String>().trim_matches(' ').to_string())
        .prop_filter("not empty once trimmed", |v| !v.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Any printable value in `headers.response.*` and `headers.request.*` renders to a config
    /// `nginx -t` accepts, and through the real nginx the client gets exactly that value as the
    /// response header and the app exactly that value as the request header: nothing in it is
    /// read as syntax, an escape or a variable.
    #[test]
    fn any_printable_header_value_is_passed_on_byte_for_byte(values in prop::collection::vec(header_value(), 24)) {
        let app = App::start();
        let port = app.port.to_string();
        let containers: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let domain = format!("v{i}.test");
                container(&format!("c{i}"), [127, 0, 0, 1], &[
                    ("smart-proxy.domains", domain.as_str()),
                    ("smart-proxy.port", port.as_str()),
                    ("smart-proxy.headers.response.X-Test", value.as_str()),
                    ("smart-proxy.headers.request.X-Echo", value.as_str()),
                ])
            })
            .collect();
        let table = label_table(&containers);
        prop_assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
        let nginx = Served::start(&table);
        for (i, value) in values.iter().enumerate() {
            let response = nginx.get(&format!("v{i}.test"), "/echo");
            prop_assert_eq!(header(&response, "X-Test"), Some(value.as_str()), "response header; {}", response);
            let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            prop_assert_eq!(body, format!("[{value}]"), "request header as the app got it");
        }
    }
}

/// A path and query a redirect target may hold: every character `redirect` accepts after the
/// host, heavy on the ones nginx reads specially (`$`, `;`, `(`, `)`).
fn redirect_tail() -> impl Strategy<Value = String> {
    let special =
        prop::sample::select(vec!['$', ';', '(', ')', '*', '+', ',', '!', '=', '&', '%', '~', '@', ':', '[', ']']);
    let plain = prop::sample::select(('a'..='z').chain('0'..='9').chain(['-', '.', '_', '/']).collect::<Vec<_>>());
    prop::collection::vec(prop_oneof![1 => plain, 1 => special], 0..60).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Any accepted `redirect` target renders to a config `nginx -t` accepts, and through the real
    /// nginx the `Location` is exactly the target (with `keep-path`, the target and the request's
    /// path): nothing in it is read as syntax or a variable.
    #[test]
    fn any_redirect_target_is_the_location_byte_for_byte(tails in prop::collection::vec(redirect_tail(), 16)) {
        let containers: Vec<_> = tails
            .iter()
            .enumerate()
            .flat_map(|(i, tail)| {
                let target = format!("https://new.example/{tail}");
                let kept = format!("https://new.example/{tail}");
                [
                    container(&format!("c{i}"), [127, 0, 0, 1], &[
                        ("smart-proxy.domains", &format!("v{i}.test")),
                        ("smart-proxy.redirect", &target),
                        ("smart-proxy.redirect.keep-path", "false"),
                    ]),
                    container(&format!("k{i}"), [127, 0, 0, 1], &[
                        ("smart-proxy.domains", &format!("k{i}.test")),
                        ("smart-proxy.redirect", &kept),
                    ]),
                ]
            })
            .collect();
        let table = label_table(&containers);
        prop_assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
        let nginx = Served::start(&table);
        for (i, tail) in tails.iter().enumerate() {
            let response = nginx.get(&format!("v{i}.test"), "/ignored?x=1");
            let target = format!("https://new.example/{tail}");
            prop_assert_eq!(location(&response), Some(target.as_str()), "{}", response);
            let response = nginx.get(&format!("k{i}.test"), "/p$1?q=%24");
            let kept = format!("https://new.example/{tail}");
            let expected = format!("{}/p$1?q=%24", kept.trim_end_matches('/'));
            prop_assert_eq!(location(&response), Some(expected.as_str()), "{}", response);
        }
    }
}

#[test]
fn headers_are_set_removed_and_keep_hsts_on_https() {
    let app = App::start();
    let port = app.port.to_string();
    let c = container(
        "web",
        [127, 0, 0, 1],
        &[
            ("smart-proxy.domains", "web.test"),
            ("smart-proxy.port", &port),
            ("smart-proxy.headers.response.Content-Security-Policy", "default-src 'self'; script-src 'nonce-$x'"),
            ("smart-proxy.headers.response.X-Stub", ""),
            ("smart-proxy.headers.request.X-Echo", ""),
            ("smart-proxy.api.domains", "web.test"),
            ("smart-proxy.api.path", "/echo"),
            ("smart-proxy.api.headers.request.x-echo", "from the label"),
        ],
    );
    let plain =
        container("plain", [127, 0, 0, 1], &[("smart-proxy.domains", "plain.test"), ("smart-proxy.port", &port)]);
    let table = label_table(&[c, plain]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let root = nginx.get("web.test", "/");
    assert_eq!(header(&root, "Content-Security-Policy"), Some("default-src 'self'; script-src 'nonce-$x'"), "{root}");
    assert_eq!(header(&root, "X-Stub"), None, "an empty value removes the app's header: {root}");
    assert_eq!(header(&nginx.get("plain.test", "/"), "X-Stub"), Some("1"), "the app sends it");
    // The named route inherits the response header and replaces the request header (names are
    // case-insensitive).
    let echo = nginx.get("web.test", "/echo");
    assert!(echo.ends_with("[from the label]"), "{echo}");
    assert!(header(&echo, "Content-Security-Policy").is_some(), "{echo}");

    // In production the HTTPS server keeps its HSTS header in a location that adds headers.
    let sandbox = NginxSandbox::new();
    let config = sandbox.render_and_test(&table, false);
    let web = config.split("# --- web.test").nth(1).and_then(|s| s.split("# --- ").next()).expect("web.test's servers");
    assert_eq!(web.matches("Strict-Transport-Security").count(), 3, "the HTTPS server and both its locations: {web}");
}

#[test]
fn lb_chooses_how_replicas_share_requests() {
    let (one, two) = (StubHttp::body("one"), StubHttp::body("two"));
    let replica = |name: &str, domain: &str, service: &str, app: &StubHttp, lb: Option<&str>| {
        let port = app.port().to_string();
        let mut labels = vec![
            ("smart-proxy.domains", domain.to_string()),
            ("smart-proxy.service", service.to_string()),
            ("smart-proxy.port", port),
        ];
        labels.extend(lb.map(|lb| ("smart-proxy.lb", lb.to_string())));
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        container(name, [127, 0, 0, 1], &labels)
    };
    let table = label_table(&[
        replica("hash-1", "hash.test", "hash", &one, Some("ip-hash")),
        replica("hash-2", "hash.test", "hash", &two, None),
        replica("rr-1", "rr.test", "rr", &one, None),
        replica("rr-2", "rr.test", "rr", &two, None),
    ]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let seen = |host: &str| -> std::collections::BTreeSet<String> {
        (0..20).filter_map(|_| nginx.get(host, "/").split_once("\r\n\r\n").map(|(_, b)| b.to_string())).collect()
    };
    assert_eq!(seen("rr.test").len(), 2, "round-robin (the default) uses both replicas");
    assert_eq!(seen("hash.test").len(), 1, "ip-hash keeps one client on one replica (set by one replica's label)");
}

/// `least-conn` sends requests past a replica that is busy; `random` uses every replica.
#[test]
fn least_conn_avoids_a_busy_replica_and_random_uses_all() {
    // Replicas that hold a request for /hold for 3 s and answer their name at once otherwise;
    // `held` is set once a replica has the /hold request.
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holding = |name: &'static str| {
        let held = held.clone();
        let seen = move |path: &str| {
            if path == "/hold" {
                held.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        };
        StubHttp::start_seen(0, seen, move |request| {
            if request.path == "/hold" {
                std::thread::sleep(Duration::from_secs(3));
            }
            Some(name.to_string())
        })
    };
    let (one, two) = (holding("one"), holding("two"));
    let replica = |name: &str, domain: &str, app: &StubHttp, lb: &str| {
        let port = app.port().to_string();
        let service = domain.trim_end_matches(".test");
        let labels = [
            ("smart-proxy.domains", domain),
            ("smart-proxy.service", service),
            ("smart-proxy.port", port.as_str()),
            ("smart-proxy.lb", lb),
        ];
        container(name, [127, 0, 0, 1], &labels)
    };
    let table = label_table(&[
        replica("lc-1", "lc.test", &one, "least-conn"),
        replica("lc-2", "lc.test", &two, "least-conn"),
        replica("rnd-1", "rnd.test", &one, "random"),
        replica("rnd-2", "rnd.test", &two, "random"),
    ]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let body = |response: String| response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();

    // One request held by a replica: each of the next ten goes to the other one.
    let port = nginx.port;
    let holder = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(b"GET /hold HTTP/1.1\r\nHost: lc.test\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    let started = std::time::Instant::now();
    while !held.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(10), "no replica got /hold");
        std::thread::sleep(Duration::from_millis(10));
    }
    let others: std::collections::BTreeSet<String> = (0..10).map(|_| body(nginx.get("lc.test", "/"))).collect();
    let busy = body(holder.join().unwrap());
    assert_eq!(others.len(), 1, "least-conn: every request to the replica that is not busy: {others:?}");
    assert!(!others.contains(&busy), "least-conn: {busy} held a request and got none of the others");

    let seen: std::collections::BTreeSet<String> = (0..30).map(|_| body(nginx.get("rnd.test", "/"))).collect();
    assert_eq!(seen.len(), 2, "random uses both replicas (all 30 on one: a chance of 2 in 2^30)");
}

// --- proto: real backends of each protocol

/// A process the test started (an app server), stopped with SIGTERM and reaped when dropped.
struct Daemon(std::process::Child);

impl Daemon {
    /// Starts `command` and waits until it listens on `port` (127.0.0.1).
    fn start(mut command: Command, port: u16, log: &std::path::Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e} (bash .ci/run installs it)"));
        let daemon = Daemon(child);
        crate::support::poll(
            "the app server to listen",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || None,
            String::new,
        );
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A container on loopback whose app listens on `port`, with `labels` beside its domains.
fn app_container(
    name: &str,
    domains: &str,
    port: u16,
    labels: &[(&str, &str)],
) -> smart_proxy::sources::labels::Container {
    let port = port.to_string();
    let mut all = vec![("smart-proxy.domains", domains), ("smart-proxy.port", port.as_str())];
    all.extend_from_slice(labels);
    container(name, [127, 0, 0, 1], &all)
}

/// The status and the body of a raw response.
fn split(response: &str) -> (u16, String) {
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// `https`, `grpcs`, `h2c` and `grpc` against a second nginx that says which protocol it was
/// spoken to in (`$server_protocol`): HTTP/2 for h2c/grpc (plain text, prior knowledge) and grpcs
/// (TLS, ALPN h2), HTTP/1.1 over TLS for https, with the client's host as SNI; a certificate that
/// backend-verify cannot check (self-signed, not in the system's CA bundle) gets 502.
#[test]
fn https_h2c_grpc_and_grpcs_backends_are_spoken_to_in_their_protocol() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["app.internal".to_string()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (h2c, tls) = (free_port(), free_port());
    let _backend = Served::raw(
        &format!(
            r#"server {{
    listen 127.0.0.1:{h2c} http2;
    location / {{
        default_type text/plain;
        return 200 "$server_protocol host=$host tenant=$http_x_tenant proto=$http_x_forwarded_proto\n";
    }}
}}
server {{
    listen 127.0.0.1:{tls} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
        default_type text/plain;
        return 200 "$server_protocol sni=$ssl_server_name host=$host\n";
    }}
}}
"#,
            cert = cert_file.display(),
            key = key_file.display()
        ),
        h2c,
    );
    let table = label_table(&[
        app_container(
            "h2c",
            "h2c.test",
            h2c,
            &[("smart-proxy.proto", "h2c"), ("smart-proxy.headers.request.X-Tenant", "t1")],
        ),
        app_container("grpc", "grpc.test", h2c, &[("smart-proxy.proto", "grpc"), ("smart-proxy.timeout", "5m")]),
        app_container("https", "https.test", tls, &[("smart-proxy.proto", "https")]),
        app_container("grpcs", "grpcs.test", tls, &[("smart-proxy.proto", "grpcs")]),
        app_container(
            "verified",
            "verified.test",
            tls,
            &[("smart-proxy.proto", "https"), ("smart-proxy.backend-verify", "app.internal")],
        ),
    ]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let get = |host: &str| split(&nginx.get(host, "/"));
    assert_eq!(get("h2c.test"), (200, "HTTP/2.0 host=h2c.test tenant=t1 proto=http\n".into()));
    assert_eq!(get("grpc.test"), (200, "HTTP/2.0 host=grpc.test tenant= proto=http\n".into()));
    assert_eq!(get("https.test"), (200, "HTTP/1.1 sni=https.test host=https.test\n".into()));
    assert_eq!(get("grpcs.test"), (200, "HTTP/2.0 sni=grpcs.test host=grpcs.test\n".into()));
    assert_eq!(get("verified.test").0, 502, "a self-signed certificate does not pass backend-verify");
}

/// `backend-verify` against `BACKEND_CA`, an internal CA: an app whose certificate that CA signed
/// for the name passes (200, the name sent as SNI); the same app checked against another name, and
/// an app whose self-signed certificate names the right host, get 502.
#[test]
fn backend_verify_passes_an_app_certificate_that_backend_ca_signed_for_the_name() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    use smart_proxy::render::ConfigPath;
    use std::path::Path;
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "smart-proxy test internal CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", ca_cert.pem());
    let signed_key = KeyPair::generate().unwrap();
    let signed =
        CertificateParams::new(vec!["app.internal".to_string()]).unwrap().signed_by(&signed_key, &issuer).unwrap();
    let self_key = KeyPair::generate().unwrap();
    let self_signed = CertificateParams::new(vec!["app.internal".to_string()]).unwrap().self_signed(&self_key).unwrap();
    let (signed_port, self_port) = (free_port(), free_port());
    let server = |port: u16, cert: String, key: String| {
        format!(
            "server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    location / {{\n        default_type text/plain;\n        return 200 \"sni=$ssl_server_name\\n\";\n    }}\n}}\n"
        )
    };
    let _backends = Served::raw(
        &(server(signed_port, write("signed.pem", signed.pem()), write("signed.key", signed_key.serialize_pem()))
            + &server(self_port, write("self.pem", self_signed.pem()), write("self.key", self_key.serialize_pem()))),
        signed_port,
    );
    fn verify(name: &str) -> [(&str, &str); 2] {
        [("smart-proxy.proto", "https"), ("smart-proxy.backend-verify", name)]
    }
    let table = label_table(&[
        app_container("signed", "signed.test", signed_port, &verify("app.internal")),
        app_container("wrong-name", "wrong-name.test", signed_port, &verify("other.internal")),
        app_container("self-signed", "self-signed.test", self_port, &verify("app.internal")),
    ]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start_with(&table, |s| {
        s.backend_ca = ConfigPath::parse("BACKEND_CA", Path::new(&ca_file)).unwrap();
    });
    let get = |host: &str| split(&nginx.get(host, "/"));
    assert_eq!(get("signed.test"), (200, "sni=app.internal\n".into()), "the CA signed it for app.internal");
    assert_eq!(get("wrong-name.test").0, 502, "the certificate does not name other.internal");
    assert_eq!(get("self-signed.test").0, 502, "a self-signed certificate, though it names app.internal");
}

/// FastCGI through the real php-fpm: a path naming a script runs it (with its PATH_INFO), every
/// other path the front controller `index.php` with the original URI; the body, the request
/// headers the proxy and the route set, and the timeout reach PHP.
#[test]
fn fastcgi_runs_php_scripts_and_the_front_controller_in_php_fpm() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("index.php"),
        r#"<?php header('Content-Type: text/plain');
echo 'index ', $_SERVER['REQUEST_URI'], ' script=', $_SERVER['SCRIPT_NAME'], ' file=', $_SERVER['SCRIPT_FILENAME'],
  ' fwd=', $_SERVER['HTTP_X_FORWARDED_PROTO'] ?? '-', ' tenant=', $_SERVER['HTTP_X_TENANT'] ?? '-',
  ' body=', file_get_contents('php://input');
"#,
    )
    .unwrap();
    std::fs::write(
        www.join("info.php"),
        "<?php header('Content-Type: text/plain'); echo 'info path_info=', $_SERVER['PATH_INFO'] ?? '', ' query=', $_SERVER['QUERY_STRING'];\n",
    )
    .unwrap();
    let port = free_port();
    let conf = dir.path().join("php-fpm.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nerror_log = {log}\ndaemonize = no\npid = {pid}\n[app]\nlisten = 127.0.0.1:{port}\npm = static\npm.max_children = 2\ncatch_workers_output = yes\n",
            log = dir.path().join("fpm-error.log").display(),
            pid = dir.path().join("fpm.pid").display()
        ),
    )
    .unwrap();
    let binary = std::fs::read_dir("/usr/sbin")
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("php-fpm")))
        })
        .expect("php-fpm in /usr/sbin: apt-get install php-fpm (bash .ci/run does)");
    let mut command = Command::new(binary);
    command.arg("--allow-to-run-as-root").arg("--nodaemonize").arg("--fpm-config").arg(&conf);
    let _fpm = Daemon::start(command, port, &dir.path().join("fpm.log"));

    let root = www.display().to_string();
    let table = label_table(&[app_container(
        "php",
        "php.test",
        port,
        &[
            ("smart-proxy.proto", "fastcgi"),
            ("smart-proxy.fastcgi.root", &root),
            ("smart-proxy.headers.request.X-Tenant", "t$2"),
            ("smart-proxy.timeout", "30s"),
        ],
    )]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let index = |uri: &str, body: &str| {
        format!("index {uri} script=/index.php file={root}/index.php fwd=http tenant=t$2 body={body}")
    };
    assert_eq!(status_body(&curl(nginx.port, "php.test", "/users/7?tab=a", &[])), (200, index("/users/7?tab=a", "")));
    assert_eq!(status_body(&curl(nginx.port, "php.test", "/", &[])), (200, index("/", "")));
    assert_eq!(
        status_body(&curl(nginx.port, "php.test", "/info.php/extra/path?q=2", &[])),
        (200, "info path_info=/extra/path query=q=2".into())
    );
    let posted = status_body(&curl(nginx.port, "php.test", "/form", &["--data-binary", "a=1&b=2"]));
    assert_eq!(posted, (200, index("/form", "a=1&b=2")));
}

/// uwsgi through the real uWSGI server and a Python WSGI app: the method, the path, the query,
/// the body and the proxy's headers reach it.
#[test]
fn uwsgi_reaches_a_python_app_in_uwsgi() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(
        &app,
        r#"def application(env, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    body = env['wsgi.input'].read(int(env.get('CONTENT_LENGTH') or 0)).decode()
    return [('wsgi %s %s?%s fwd=%s tenant=%s proxy=%s body=%s' % (env['REQUEST_METHOD'], env['PATH_INFO'],
             env['QUERY_STRING'], env.get('HTTP_X_FORWARDED_PROTO'), env.get('HTTP_X_TENANT'), env.get('HTTP_PROXY'),
             body)).encode()]
"#,
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new("uwsgi");
    command
        .args(["--plugin", "python3", "--master", "--processes", "1", "--die-on-term"])
        .args(["--socket", &format!("127.0.0.1:{port}"), "--wsgi-file"])
        .arg(&app);
    let _uwsgi = Daemon::start(command, port, &dir.path().join("uwsgi.log"));

    let table = label_table(&[app_container(
        "py",
        "py.test",
        port,
        &[
            ("smart-proxy.proto", "uwsgi"),
            ("smart-proxy.headers.request.X-Tenant", "t3"),
            ("smart-proxy.buffering", "off"),
        ],
    )]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    assert_eq!(
        status_body(&curl(nginx.port, "py.test", "/a/b?c=1", &[])),
        (200, "wsgi GET /a/b?c=1 fwd=http tenant=t3 proxy=None body=".into())
    );
    // httpoxy: a client's Proxy header never becomes the app's HTTP_PROXY (PHP drops it itself).
    let posted =
        status_body(&curl(nginx.port, "py.test", "/post", &["--data-binary", "x=y", "-H", "Proxy: http://evil"]));
    assert_eq!(posted, (200, "wsgi POST /post? fwd=http tenant=t3 proxy=None body=x=y".into()));
}

// --- redirect and www

/// The `Location` of a raw response.
fn location(response: &str) -> Option<&str> {
    header(response, "Location")
}

/// Each code, with and without the path kept; www to-apex and to-www; the health answer of a
/// redirecting domain stays the proxy's.
#[test]
fn redirect_and_www_answer_with_their_code_and_location() {
    let (apex, site) = (StubHttp::body("apex"), StubHttp::body("site"));
    let redirect = |name: &str, domain: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("smart-proxy.domains", domain)];
        all.extend_from_slice(labels);
        // A redirect-only container: no network, no port.
        let mut c = container(name, [127, 0, 0, 1], &all);
        c.networks.clear();
        c
    };
    let table = label_table(&[
        redirect("old", "old.test", &[("smart-proxy.redirect", "https://new.example/base")]),
        redirect(
            "r302",
            "r302.test",
            &[
                ("smart-proxy.redirect", "https://new.example/x/"),
                ("smart-proxy.redirect.code", "302"),
                ("smart-proxy.redirect.keep-path", "false"),
            ],
        ),
        redirect(
            "r307",
            "r307.test",
            &[("smart-proxy.redirect", "https://new.example/"), ("smart-proxy.redirect.code", "307")],
        ),
        redirect(
            "r308",
            "r308.test",
            &[
                ("smart-proxy.redirect", "http://new.example:8080/$x;y"),
                ("smart-proxy.redirect.code", "308"),
                ("smart-proxy.redirect.keep-path", "false"),
            ],
        ),
        app_container("apex", "apex.test", apex.port(), &[("smart-proxy.www", "to-apex")]),
        app_container("site", "site.test", site.port(), &[("smart-proxy.www", "to-www")]),
    ]);
    assert!(table.diagnostics.is_empty(), "{:?}", table.diagnostics);
    let nginx = Served::start(&table);
    let answer = |host: &str, path: &str| {
        let response = nginx.get(host, path);
        (split(&response).0, location(&response).map(str::to_string))
    };
    let to = |url: &str| Some(url.to_string());
    assert_eq!(answer("old.test", "/a/b?c=1"), (301, to("https://new.example/base/a/b?c=1")), "301, path kept");
    assert_eq!(answer("old.test", "/"), (301, to("https://new.example/base/")));
    assert_eq!(answer("r302.test", "/a?b=1"), (302, to("https://new.example/x/")), "302, path dropped");
    assert_eq!(answer("r307.test", "/p?q=1"), (307, to("https://new.example/p?q=1")), "307, path kept");
    assert_eq!(answer("r308.test", "/p"), (308, to("http://new.example:8080/$x;y")), "308 taken literally");
    assert_eq!(split(&nginx.get("old.test", "/health")), (200, "healthy\n".into()), "the proxy's health answer");

    let port = nginx.port;
    assert_eq!(answer("www.apex.test", "/x?y=1"), (301, Some(format!("http://apex.test:{port}/x?y=1"))));
    assert_eq!(split(&nginx.get("apex.test", "/")), (200, "apex".into()), "the canonical name is served");
    assert_eq!(answer("site.test", "/x"), (301, Some(format!("http://www.site.test:{port}/x"))));
    assert_eq!(split(&nginx.get("www.site.test", "/")), (200, "site".into()));
}

/// `headers` in the JSON file: the app gets the request header, the client the response header,
/// both byte for byte (quotes, `;` and `$` included), and an empty value removes one.
#[test]
fn json_file_headers_reach_the_app_and_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let csp = r#"default-src 'self'; script-src "nonce-$abc""#;
    let (_app, file) = app_with_routes(
        &dir,
        serde_json::json!([{
            "name": "headers.test",
            "service": "app",
            "headers": { "request": { "X-Echo": "from \"the\" proxy $1" }, "response": { "Content-Security-Policy": csp, "X-Stub": "" } },
        }]),
    );
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", &file)]);
    agent.wait_for_status("headers.test", 200, Some("app /"));
    let out = curl(agent.port, "headers.test", "/echo", &["-D", "-", "-H", "X-Echo: from the client"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("\r\n\r\n[from \"the\" proxy $1]"), "the app got the proxy's X-Echo:\n{text}");
    assert_eq!(header(&text, "Content-Security-Policy"), Some(csp), "{text}");
    assert_eq!(header(&text, "X-Stub"), None, "an empty value removes the app's header:\n{text}");
}

//! What `auth` and `rate` cost nginx (issue 11: "a rate-limited or auth-checked route costs nginx
//! ≤ 10 % throughput against the same route without it, wrk, same run").
//!
//! One nginx (Debian's, one worker) serves the config the built-in template renders for a table
//! of label routes to one backend: a server of the same nginx answering `200 ok` (so the backend
//! costs the same for every route and is not the bottleneck). The routes:
//! - `plain`: no policy, the baseline;
//! - `rate`: `rate=1000000r/s` (never reached, so every request is counted and let through);
//! - `basic` with one user, once per hash scheme: apr1, {SHA}, SHA-512-crypt (5000 rounds) and
//!   bcrypt (cost 5, `htpasswd -B`'s default); wrk sends the right `Authorization` header, so each
//!   request is verified (nginx keeps no cache of verified passwords);
//! - `forward`: `auth_request` to `/auth` on the backend server (a subrequest per request).
//!
//! A second nginx (one worker too, on its own backend) serves the same routes with `AUTH_CACHE`
//! (nginx's Lua module loaded: Debian's `libnginx-mod-http-lua`): its `plain` and each `basic`
//! route, whose login nginx checks once and then remembers, are measured in the same rounds.
//!
//! `wrk -t1 -c32` runs on each route for 3 s, the routes alternating, `BENCH_ROUNDS` times (5);
//! the median requests per second of each route, the median (and range) of its ratio to `plain`
//! in the same round, and the responses that were not 2xx (there must be none) are printed.
//! `BENCH_QUICK=1`: one short round (a smoke run). Run with `cargo bench --bench access` (needs nginx and wrk: `.ci/run` installs them).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smart_proxy::apply::{auth_files::AuthFiles, nginx::LocalNginx, Nginx};
use smart_proxy::render::{RenderSettings, Renderer};

#[path = "../tests/support/mod.rs"]
mod support;

use support::{container, free_port, label_table, nginx_bin, nginx_version, NginxSandbox};

/// The user and password wrk sends (`Authorization: Basic YmVuY2g6YmVuY2gtcHc=`), and its hash
/// in each scheme (made with `htpasswd -nbm`, `-nbs`, `-nbB -C 5` and `openssl passwd -6`).
const AUTHORIZATION: &str = "Basic YmVuY2g6YmVuY2gtcHc=";
const HASHES: &[(&str, &str)] = &[
    ("apr1", "bench:$apr1$5T77tCma$rBKXsVbzicYP937x97Ds8."),
    ("sha", "bench:{SHA}Wcw2Vw3CBX9dErpMvhcE+Oc7vOc="),
    (
        "sha512",
        "bench:$6$benchsalt$0pUTNbLPue/fI/MR/eViT03YlCmAt7Teny0pK/6f5M7/ELn0sNpFq5HzEd0.pSnBGDF2e4SWtmATR4lMgQ7hu/",
    ),
    ("bcrypt", "bench:$2y$05$e/wcrwqnQDptVqgNHJmug.3jKUs9Co.2qqSTeJIizIiEYB889562m"),
];

/// One route measured: its name in the output, its domain, the header wrk adds.
struct Route {
    name: String,
    host: String,
    authorization: bool,
    /// The port of the nginx that serves it.
    port: u16,
}

/// nginx serving the rendered routes and the backend; stopped when dropped.
struct Nginx1 {
    child: Child,
    _sandbox: NginxSandbox,
}

impl Drop for Nginx1 {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// nginx on `port` with its backend on `backend`, serving the routes; with `cache`, `AUTH_CACHE`
/// (and no rate or forward route: those are measured without it).
fn start_nginx(port: u16, backend: u16, cache: bool) -> (Nginx1, Vec<Route>) {
    use std::os::unix::fs::PermissionsExt;
    let backend_port = backend.to_string();
    let mut labels: Vec<(String, String)> = vec![
        ("smart-proxy.domains".into(), "plain.bench".into()),
        ("smart-proxy.port".into(), backend_port.clone()),
        ("smart-proxy.limited.domains".into(), "rate.bench".into()),
        ("smart-proxy.limited.rate".into(), "1000000r/s".into()),
        ("smart-proxy.forward.domains".into(), "forward.bench".into()),
        ("smart-proxy.forward.auth".into(), "forward".into()),
        ("smart-proxy.forward.auth.url".into(), format!("http://127.0.0.1:{backend}/auth")),
    ];
    let route = |name: &str, host: &str, authorization: bool| Route {
        name: if cache { format!("{name}, AUTH_CACHE") } else { name.to_string() },
        host: host.to_string(),
        authorization,
        port,
    };
    let mut routes = vec![route("plain", "plain.bench", false)];
    if !cache {
        routes.push(route("rate (1000000r/s, ip)", "rate.bench", false));
    }
    for (scheme, line) in HASHES {
        labels.push((format!("smart-proxy.{scheme}.domains"), format!("{scheme}.bench")));
        labels.push((format!("smart-proxy.{scheme}.auth"), "basic".into()));
        labels.push((format!("smart-proxy.{scheme}.auth.users"), line.to_string()));
        routes.push(route(&format!("basic ({scheme})"), &format!("{scheme}.bench"), true));
    }
    if !cache {
        routes.push(route("forward (auth_request)", "forward.bench", false));
    }
    let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let table = label_table(&[container("bench", [127, 0, 0, 1], &refs)]);
    assert!(table.diagnostics.is_empty(), "{:#?}", table.diagnostics);

    let sandbox = NginxSandbox::new();
    std::fs::set_permissions(sandbox.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(sandbox.path("logs"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let settings = RenderSettings { http_port: port, nginx_version: nginx_version(), ..sandbox.settings(true) };
    let files = AuthFiles::of(&table);
    let settings = RenderSettings { auth_cache: cache.then(|| files.generation()), ..settings };
    let config = Renderer::builtin().render(&table, &settings).expect("render");
    let target = sandbox.path("conf.d/default.conf");
    std::fs::write(&target, config).unwrap();
    let main = sandbox.path("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "{modules}pid {pid};\nerror_log {log} warn;\nworker_processes 1;\nevents {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n    include {conf};\n    server {{\n        listen 127.0.0.1:{backend};\n        access_log off;\n        location = /auth {{ return 204; }}\n        location / {{ return 200 \"ok\\n\"; }}\n    }}\n}}\n",
            modules = if cache { support::lua_modules() } else { String::new() },
            pid = sandbox.path("nginx.pid").display(),
            log = sandbox.path("logs/error.log").display(),
            conf = target.display(),
        ),
    )
    .unwrap();
    // The htpasswd files, as the agent writes them, given to the workers' group by its test script
    // (which also runs nginx -t on the config).
    files.write(settings.auth_dir.as_path()).unwrap();
    let nginx = Nginx::Local(LocalNginx { bin: nginx_bin(), main_conf: main.clone(), child: None });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(nginx.test(&target, &target)).expect("nginx -t accepts the bench config");

    let child = Command::new(nginx_bin())
        .arg("-p")
        .arg(sandbox.dir.path())
        .arg("-c")
        .arg(&main)
        .args(["-e", "stderr", "-g", "daemon off;"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx1 { child, _sandbox: sandbox };
    support::poll(
        "nginx to listen",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || None,
        String::new,
    );
    (nginx, routes)
}

/// One wrk run: requests per second and the responses that were not 2xx or 3xx.
fn wrk(route: &Route, seconds: u64) -> (f64, u64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c32", &format!("-d{seconds}s"), "-H", &format!("Host: {}", route.host)]);
    if route.authorization {
        cmd.args(["-H", &format!("Authorization: {AUTHORIZATION}")]);
    }
    let out = cmd.arg(format!("http://127.0.0.1:{}/", route.port)).output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<&str> {
        text.lines().find_map(|l| l.trim().strip_prefix(name)).map(|rest| rest.trim_start_matches(':').trim())
    };
    let rps: f64 = field("Requests/sec").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("wrk said:\n{text}"));
    let failed = field("Non-2xx or 3xx responses").and_then(|v| v.parse().ok()).unwrap_or(0);
    (rps, failed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    // cargo bench passes `--bench`; anything else (a filter) is ignored.
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let (rounds, seconds) = if quick { (1, 1) } else { (rounds, 3) };
    let (_nginx, mut routes) = start_nginx(free_port(), free_port(), false);
    let (_cached, more) = start_nginx(free_port(), free_port(), true);
    routes.extend(more);
    for route in &routes {
        // Warm up (and check that the route answers 2xx through the whole stack; the cache
        // remembers the login here).
        let (_, failed) = wrk(route, 1);
        assert_eq!(failed, 0, "{} answers errors", route.name);
    }
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); routes.len()];
    let mut failed = vec![0u64; routes.len()];
    for round in 0..rounds {
        // Alternating: each round measures every route once, in a rotated order.
        for i in 0..routes.len() {
            let r = (i + round) % routes.len();
            let (value, bad) = wrk(&routes[r], seconds);
            rps[r].push(value);
            failed[r] += bad;
        }
    }
    // Each round's ratio to a plain route of the same round (the machine's speed drifts between
    // rounds, not within one): the median of those, and its range. Against the first nginx's plain
    // route, and against the plain route of the route's own nginx (the same config without auth).
    let of_plain = |i: usize, base: usize| -> Vec<f64> { rps[i].iter().zip(&rps[base]).map(|(v, p)| v / p).collect() };
    // Each nginx's routes start with its plain route.
    let own_plain = |i: usize| routes.iter().position(|r| r.port == routes[i].port).unwrap_or(0);
    let ratios: Vec<Vec<f64>> = (0..routes.len()).map(|i| of_plain(i, 0)).collect();
    let own: Vec<f64> = (0..routes.len()).map(|i| median(&mut of_plain(i, own_plain(i)))).collect();
    let medians: Vec<f64> = rps.iter_mut().map(|v| median(v)).collect();
    println!("auth and rate through nginx ({rounds} rounds of {seconds} s per route, wrk -t1 -c32, nginx 1 worker)");
    println!(
        "{:<38} {:>12} {:>9} {:>13} {:>12} {:>8}  bar (>= 0.90 of its plain)",
        "route", "median req/s", "vs plain", "(range)", "vs its plain", "non-2xx"
    );
    println!("{:<38} {:>12.0} {:>9.3} {:>13} {:>12.3} {:>8}", routes[0].name, medians[0], 1.0, "", 1.0, failed[0]);
    for (i, route) in routes.iter().enumerate().skip(1) {
        let mut of_round = ratios[i].clone();
        let (low, high) = of_round.iter().fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let ratio = median(&mut of_round);
        let bar = if own[i] >= 0.90 { "met" } else { "not met" };
        let range = format!("{low:.3}-{high:.3}");
        println!(
            "{:<38} {:>12.0} {:>9.3} {:>13} {:>12.3} {:>8}  {bar}",
            route.name, medians[i], ratio, range, own[i], failed[i]
        );
    }
    println!(
        "basic auth costs what its hash costs: nginx verifies the password on every request, without a cache \
         ({{SHA}}: one SHA-1; apr1: 1,000 MD5 rounds; SHA-512-crypt: 5,000 rounds; bcrypt cost 5: 32 Blowfish \
         key setups); forward auth is a second request per request (to a URL, so without keepalive); with \
         AUTH_CACHE, a login is checked once and remembered"
    );
}

//! Test support: a real nginx to `nginx -t` rendered configs, and builders for route inputs.
#![allow(dead_code)]

/// The guard of every real-daemon test, first in its body: `require_docker!();` (or
/// `require_docker!(value)` in a function that returns one). Without a Docker daemon it fails
/// under CI (`CI=true`: the tests must run there) and otherwise prints a loud SKIPPED line and
/// returns from the function. See [`docker::require_docker`].
#[allow(unused_macros)]
macro_rules! require_docker {
    () => {
        if !$crate::support::docker::require_docker() {
            return;
        }
    };
    ($skipped:expr) => {
        if !$crate::support::docker::require_docker() {
            return $skipped;
        }
    };
}

pub mod agent;
pub mod cloudflare_fake;
pub mod compose;
pub mod docker;
pub mod docker_faults;
pub mod images;
pub mod pebble;
pub mod stub_http;
pub mod swarm;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;

use smart_proxy::certs::placeholder;
use smart_proxy::render::{ConfigPath, NginxVersion, RenderSettings, Renderer};
use smart_proxy::routes::RouteTable;

/// True when running under CI (`CI=true`): missing real components are failures there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The nginx binary. Debian's `nginx` package (installed by `.ci/run`).
pub fn nginx_bin() -> PathBuf {
    let path = PathBuf::from(std::env::var("TEST_NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into()));
    assert!(
        path.exists(),
        "nginx is required for these tests and was not found at {} (install Debian's nginx: apt-get install nginx; .ci/run does this)",
        path.display()
    );
    path
}

/// The version of the nginx the tests run.
pub fn nginx_version() -> NginxVersion {
    smart_proxy::config::detect_nginx_version(&nginx_bin())
}

/// The `load_module` lines of nginx's Lua module (`AUTH_CACHE`), Debian's `libnginx-mod-http-lua`
/// (`.ci/run` installs it), for a main config of the tests' own; panics naming the package when it
/// is missing.
pub fn lua_modules() -> String {
    let dir = Path::new("/usr/lib/nginx/modules");
    let modules = ["ndk_http_module.so", "ngx_http_lua_module.so"];
    let mut lines = String::new();
    for module in modules {
        let path = dir.join(module);
        assert!(path.exists(), "{} is missing: install Debian's libnginx-mod-http-lua (.ci/run does)", path.display());
        lines.push_str(&format!("load_module {};\n", path.display()));
    }
    lines
}

/// A scratch nginx prefix: certs, webroot and log directories, and a main `nginx.conf` that
/// includes the rendered file in its http context (as `conf.d/*.conf` is in real setups).
pub struct NginxSandbox {
    pub dir: tempfile::TempDir,
}

impl NginxSandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["certs", "webroot", "logs", "conf.d"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        NginxSandbox { dir }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Render settings pointing into this sandbox (production mode unless `local`).
    pub fn settings(&self, local: bool) -> RenderSettings {
        RenderSettings {
            local,
            http_port: 80,
            https_port: 443,
            certs_dir: ConfigPath::parse("CERTS_DIR", &self.path("certs")).unwrap(),
            acme_webroot: ConfigPath::parse("ACME_WEBROOT", &self.path("webroot")).unwrap(),
            log_dir: ConfigPath::parse("LOG_DIR", &self.path("logs")).unwrap(),
            // Snapshots are rendered for a fixed version; `render_and_test` tests with the real one.
            nginx_version: NginxVersion(1, 22, 1),
            resolver: vec!["127.0.0.11".parse().unwrap()],
            error_logs_max: 1000,
            ipv6: true,
            real_ip: None,
            error_pages: Default::default(),
            auth_dir: ConfigPath::parse("NGINX_CONF", &self.path("conf.d/smart-proxy-htpasswd")).unwrap(),
            insight_log: None,
            access_log_files: true,
            backend_ca: smart_proxy::render::ConfigPath::parse(
                "BACKEND_CA",
                std::path::Path::new(smart_proxy::render::BACKEND_CA),
            )
            .unwrap(),
            insight_from_access_logs: false,
            auth_cache: None,
        }
    }

    /// Writes placeholder certificates for every TLS domain that has none.
    pub fn placeholders(&self, table: &RouteTable) {
        for domain in placeholder::missing(&self.path("certs"), table) {
            placeholder::write(&self.path("certs"), &domain).unwrap();
        }
    }

    /// Runs the real `nginx -t` on `config` included in a minimal main config.
    pub fn test(&self, config: &str) -> Result<(), String> {
        let conf_d = self.path("conf.d/default.conf");
        std::fs::write(&conf_d, config).unwrap();
        let main = self.path("nginx.conf");
        let modules = if config.contains("init_by_lua_block") { lua_modules() } else { String::new() };
        std::fs::write(
            &main,
            format!(
                "{modules}pid {pid};\nerror_log stderr;\nevents {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n    include {conf};\n}}\n",
                pid = self.path("nginx.pid").display(),
                conf = conf_d.display()
            ),
        )
        .unwrap();
        let output = Command::new(nginx_bin())
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&main)
            .arg("-e")
            .arg("stderr")
            .output()
            .expect("run nginx -t");
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Renders `table` with the built-in template, writes placeholders, and `nginx -t`s it.
    pub fn render_and_test(&self, table: &RouteTable, local: bool) -> String {
        self.render_and_test_with(table, self.settings(local))
    }

    /// [`NginxSandbox::render_and_test`] with these settings (the version tested is the real one).
    pub fn render_and_test_with(&self, table: &RouteTable, settings: RenderSettings) -> String {
        let renderer = Renderer::builtin();
        let tested = RenderSettings { nginx_version: nginx_version(), ..settings.clone() };
        let config = renderer.render(table, &tested).expect("render");
        if !settings.local {
            self.placeholders(table);
        }
        if let Err(e) = self.test(&config) {
            panic!("nginx -t rejected the rendered config:\n{e}\n--- config ---\n{config}");
        }
        renderer.render(table, &settings).expect("render")
    }
}

/// Replaces the sandbox's temporary directory with a stable name, for snapshots.
pub fn stable(config: &str, sandbox: &NginxSandbox) -> String {
    config.replace(&sandbox.dir.path().display().to_string(), "/SANDBOX")
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

/// A running container as the Docker client would report it, on one network.
pub fn container(name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> smart_proxy::sources::labels::Container {
    use smart_proxy::sources::labels::{Container, NetworkAddress};
    Container {
        id: format!("{name}-id"),
        name: name.to_string(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        exposed_ports: vec![8080],
        networks: [("proxy".to_string(), NetworkAddress { ipv4: Some(ip.into()), ipv6: None })].into(),
        health: None,
        running: true,
        swarm: None,
    }
}

/// Routes from containers, as the agent builds them.
pub fn label_table(containers: &[smart_proxy::sources::labels::Container]) -> RouteTable {
    use smart_proxy::sources::labels::{routes, LabelSettings};
    RouteTable::build(vec![routes(containers, &LabelSettings { prefix: "smart-proxy".into(), nginx_networks: None })])
}

/// Routes from the seed env format.
pub fn env_table(domains: &str, services: &str) -> RouteTable {
    RouteTable::build(vec![smart_proxy::sources::env::parse(Some(domains), Some(services))])
}

/// A free TCP port (free when asked, on every address: bound, then released; the caller binds it
/// soon after). The one definition for the tests and the benches (which include this module).
///
/// Taken below the kernel's ephemeral range (32768-60999 by default), in turn from a start of the
/// process's own: a port the kernel hands out (`:0`) is one the next outgoing connection may take
/// as its source port before the caller binds it (nginx then fails with "Address already in use").
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % COUNT,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % COUNT) as u16;
        let free = |ip: [u8; 4]| std::net::TcpListener::bind(std::net::SocketAddr::from((ip, port))).is_ok();
        if free([0, 0, 0, 0]) && free([127, 0, 0, 1]) {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every `every` until it holds and returns how long that took; after `timeout`
/// panics with "timed out after .. waiting for `what`" and what `context` says (logs). `abort`
/// is asked every 20 polls: `Some(reason)` fails at once (a process that died will not recover).
pub fn poll(
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> bool,
    mut abort: impl FnMut() -> Option<String>,
    context: impl Fn() -> String,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    for round in 0u32.. {
        if check() {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", context());
        }
        if round % 20 == 19 {
            if let Some(reason) = abort() {
                panic!("{reason} while waiting for {what}\n{}", context());
            }
        }
        std::thread::sleep(every);
    }
    unreachable!()
}

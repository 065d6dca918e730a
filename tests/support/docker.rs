//! Real-daemon test support: a tiny locally built backend image, and [`TestDocker`], a guard that
//! owns the networks and containers of one test and removes them when dropped (also on panic).
//!
//! Nothing is pulled: no registry is reachable, so the backend image is assembled from the host's
//! static busybox (Debian's `busybox-static`) with `docker import`.
//!
//! Isolation: every object is named `sptest-<run_id>-...` and labelled `smart-proxy-test=<run_id>`,
//! and each guard has its own label prefix (`sptest<run_id>`), so tests running in parallel (or a
//! real agent on the same daemon) never see each other's containers.
//!
//! Set `SPTEST_KEEP=1` to leave a failed test's objects in place for inspection.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The backend image every test container runs.
pub const APP_IMAGE: &str = "smart-proxy-test-app:latest";
/// The port the backend listens on (and the image EXPOSEs).
pub const APP_PORT: u16 = 8080;
/// Label on every object the tests create; its value is the guard's run id.
pub const TEST_LABEL: &str = "smart-proxy-test";
/// Label on the image: a hash of its content, so an up-to-date image is not rebuilt.
const IMAGE_LABEL: &str = "smart-proxy-test.image";
const BUSYBOX: &str = "/bin/busybox";

/// The container's command. It writes `$APP_NAME` into the index page (so a test can tell which
/// app answered), then serves it on 8080. The shell stays PID 1 so `docker stop` (SIGTERM) ends
/// the container at once, and `timeout` stops a container leaked by a killed test run after
/// `$APP_LIFETIME` seconds (default 15 minutes).
const APP_CMD: &str = r#"["/bin/busybox","sh","-c","echo \"${APP_NAME:-app}\" > /www/index.html; trap 'exit 0' TERM INT; /bin/busybox timeout ${APP_LIFETIME:-900} /bin/busybox httpd -f -p 8080 -h /www & wait"]"#;

// ---------------------------------------------------------------------------------------------
// The docker CLI

/// Runs `docker args...` and returns its output, whatever the exit status.
pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker args...`; panics with its stderr unless it succeeds. Returns stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let output = docker_output(args);
    if !output.status.success() {
        panic!(
            "`docker {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The daemon's version, or why it cannot be reached. Asked once per test process.
fn daemon() -> &'static Result<String, String> {
    static DAEMON: OnceLock<Result<String, String>> = OnceLock::new();
    DAEMON.get_or_init(|| {
        let output = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
        let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if output.status.success() && !version.is_empty() {
            Ok(version)
        } else {
            Err(format!(
                "`docker version` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    })
}

/// True when the Docker daemon answers.
pub fn docker_available() -> bool {
    daemon().is_ok()
}

/// Whether the daemon answers; the [`require_docker!`] macro, first in every real-daemon test,
/// returns from the test when it does not.
///
/// Without a daemon this panics under CI (the tests must run there) and otherwise prints a loud
/// SKIPPED line and returns false.
pub fn require_docker() -> bool {
    let reason = match daemon() {
        Ok(_) => return true,
        Err(reason) => reason,
    };
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    if crate::support::in_ci() {
        panic!(
            "{test}: the Docker daemon is unreachable ({reason}). Under CI (CI=true) the real-daemon tests must run: \
             start dockerd (e.g. `service docker start`), make /var/run/docker.sock usable by the test user \
             (or set DOCKER_HOST), and check that `docker version` shows a Server section."
        );
    }
    eprintln!("\n*** SKIPPED {test}: no Docker daemon ({reason}). Start Docker to run the real-daemon tests. ***\n");
    false
}

// ---------------------------------------------------------------------------------------------
// The backend image

/// Builds the backend image once per test process (skipped when the daemon already has the same
/// content) and returns its name.
pub fn app_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(build_app_image).clone()
}

fn build_app_image() -> String {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!(
            "the real-daemon tests build their backend image from a static busybox at {BUSYBOX}, which cannot be read ({e}); \
             install Debian's busybox-static package (apt-get install busybox-static; .ci/run does this)"
        )
    });
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (busybox.as_slice(), APP_CMD, APP_PORT).hash(&mut hasher);
    let content = format!("{:016x}", hasher.finish());

    let existing = docker_output(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{IMAGE_LABEL}\"}}}}"),
        APP_IMAGE,
    ]);
    if existing.status.success() && String::from_utf8_lossy(&existing.stdout).trim() == content {
        return APP_IMAGE.to_string();
    }

    let root = tempfile::tempdir().expect("tempdir for the image root");
    let at = |p: &str| root.path().join(p);
    for dir in ["bin", "www", "tmp"] {
        std::fs::create_dir_all(at(dir)).unwrap();
    }
    std::fs::write(at("bin/busybox"), &busybox).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(at("bin/busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("busybox", at("bin/sh")).unwrap();
    std::fs::write(at("www/index.html"), "app\n").unwrap();
    import(root.path(), &content);
    APP_IMAGE.to_string()
}

/// `tar -C root -c . | docker import -c CMD -c EXPOSE -c LABEL - APP_IMAGE`.
fn import(root: &Path, content: &str) {
    let mut tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar to pack the image root");
    let import = Command::new("docker")
        .args(["import", "-c", &format!("CMD {APP_CMD}"), "-c", &format!("EXPOSE {APP_PORT}")])
        .args(["-c", &format!("LABEL {IMAGE_LABEL}={content}"), "-", APP_IMAGE])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("run docker import");
    let tar_status = tar.wait().expect("wait for tar");
    assert!(tar_status.success(), "tar failed packing the image root ({tar_status})");
    assert!(
        import.status.success(),
        "docker import of {APP_IMAGE} failed: {}",
        String::from_utf8_lossy(&import.stderr).trim()
    );
}

/// Removes test objects leaked by killed test runs (older than an hour: nothing a live run owns).
fn sweep_stale() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        for kind in ["container", "network"] {
            let _ = docker_output(&[
                kind,
                "prune",
                "--force",
                "--filter",
                &format!("label={TEST_LABEL}"),
                "--filter",
                "until=1h",
            ]);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The per-test guard

/// Owns the networks and containers of one test. Dropping it force-removes every container and
/// network labelled with its run id, also when the test panicked.
pub struct TestDocker {
    run_id: String,
}

/// A container to start: see [`TestDocker::app`].
#[derive(Debug, Clone)]
pub struct App {
    short: String,
    prefix: String,
    labels: Vec<(String, String)>,
    networks: Vec<String>,
    env: Vec<(String, String)>,
    /// More `docker create` options (`--health-cmd`, ...).
    args: Vec<String>,
}

impl App {
    /// A routing label relative to the test's prefix: `label("domains", ..)` sets `<prefix>.domains`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((format!("{}.{key}", self.prefix), value.to_string()));
        self
    }

    /// A label with its full name, e.g. `com.docker.compose.service`.
    pub fn raw_label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Attaches the container to `network` (a full name, as [`TestDocker::network`] returns it).
    /// Several calls attach it to several networks; none leaves it on Docker's default bridge.
    pub fn network(mut self, network: &str) -> Self {
        self.networks.push(network.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// A further `docker create` option, e.g. `--health-cmd=true`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }
}

impl TestDocker {
    /// A new guard with a unique run id. Builds the backend image if needed.
    pub fn new() -> Self {
        if let Err(reason) = daemon() {
            panic!("TestDocker needs a Docker daemon ({reason}); call `require_docker!()` first");
        }
        sweep_stale();
        app_image();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let run_id =
            format!("{:x}{:03x}{}", std::process::id(), (nanos >> 10) & 0xfff, COUNTER.fetch_add(1, Ordering::Relaxed));
        TestDocker { run_id }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// This test's label prefix (`sptest<run_id>`): pass it as `LABEL_PREFIX` / `LabelSettings::prefix`.
    pub fn prefix(&self) -> String {
        format!("sptest{}", self.run_id)
    }

    /// `<prefix>.<key>`.
    pub fn label(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix())
    }

    /// The full Docker name of this test's object `short`: `sptest-<run_id>-<short>`.
    pub fn name(&self, short: &str) -> String {
        format!("sptest-{}-{short}", self.run_id)
    }

    /// True when `name` belongs to this guard.
    pub fn owns(&self, name: &str) -> bool {
        name.starts_with(&self.name(""))
    }

    fn owner_label(&self) -> String {
        format!("{TEST_LABEL}={}", self.run_id)
    }

    /// Creates the bridge network `sptest-<run_id>-<short>` and returns its full name.
    pub fn network(&self, short: &str) -> String {
        let name = self.name(short);
        docker(&["network", "create", "--label", &self.owner_label(), &name]);
        name
    }

    /// A container to start with [`TestDocker::start`]; it runs the backend image with
    /// `APP_NAME=<short>`, so its page answers `<short>`.
    pub fn app(&self, short: &str) -> App {
        App {
            short: short.to_string(),
            prefix: self.prefix(),
            labels: Vec::new(),
            networks: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Starts the containers in parallel; returns their full names, in order. When this returns
    /// every container is running and on all of its networks.
    pub fn start(&self, apps: Vec<App>) -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = apps.iter().map(|app| s.spawn(|| self.start_one(app))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    }

    /// Starts one container `sptest-<run_id>-<short>` with `labels` (full label names) on
    /// `networks` (full names); returns its full name.
    pub fn run(&self, short: &str, labels: &[(&str, &str)], networks: &[&str]) -> String {
        let mut app = self.app(short);
        for (k, v) in labels {
            app = app.raw_label(k, v);
        }
        for n in networks {
            app = app.network(n);
        }
        self.start_one(&app)
    }

    /// create (on the first network) → connect (the others) → start: the container comes up on
    /// all of its networks at once.
    fn start_one(&self, app: &App) -> String {
        let name = self.create(app);
        docker(&["start", &name]);
        name
    }

    /// Creates the container of `app` on its networks without starting it; returns its full name.
    pub fn create(&self, app: &App) -> String {
        let name = self.name(&app.short);
        let owner = self.owner_label();
        let app_name = format!("APP_NAME={}", app.short);
        let mut args: Vec<String> = vec!["create".into(), "--name".into(), name.clone(), "--label".into(), owner];
        for (k, v) in &app.labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.extend(["--env".into(), app_name]);
        for (k, v) in &app.env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        if let Some(first) = app.networks.first() {
            args.extend(["--network".into(), first.clone()]);
        }
        args.extend(app.args.iter().cloned());
        args.push(app_image());
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for network in app.networks.iter().skip(1) {
            docker(&["network", "connect", network, &name]);
        }
        name
    }

    /// The full id of a container.
    pub fn id(&self, name: &str) -> String {
        docker(&["inspect", "--format", "{{.Id}}", name]).trim().to_string()
    }

    /// Stops a container (it stays, exited, until the guard is dropped).
    pub fn stop(&self, name: &str) {
        docker(&["stop", "--time", "5", name]);
    }

    /// Removes a container now (rather than when the guard is dropped).
    pub fn remove(&self, name: &str) {
        docker(&["rm", "--force", "--volumes", name]);
    }

    /// The container's IPv4 address on each of its networks, from `docker inspect`.
    pub fn ips(&self, name: &str) -> BTreeMap<String, Ipv4Addr> {
        let json = docker(&["inspect", "--format", "{{json .NetworkSettings.Networks}}", name]);
        let networks: BTreeMap<String, serde_json::Value> = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("docker inspect {name}: unexpected networks JSON ({e}): {json}"));
        networks
            .into_iter()
            .filter_map(|(net, endpoint)| {
                let ip = endpoint.get("IPAddress")?.as_str()?.parse().ok()?;
                Some((net, ip))
            })
            .collect()
    }

    /// The container's IPv4 address on `network`.
    pub fn ip_on(&self, name: &str, network: &str) -> Ipv4Addr {
        let ips = self.ips(name);
        *ips.get(network).unwrap_or_else(|| panic!("container {name} has no IPv4 address on {network}; it has {ips:?}"))
    }

    /// The address of a container on its only network, as
    /// `docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}'` shows it.
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        let text = docker(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]);
        text.parse()
            .unwrap_or_else(|_| panic!("container {name}: expected one IPv4 address, docker inspect shows {text:?}"))
    }

    /// The container's state (`running`, `exited`, ...).
    pub fn status(&self, name: &str) -> String {
        docker(&["inspect", "--format", "{{.State.Status}}", name])
    }
}

impl Default for TestDocker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        let filter = format!("label={}", self.owner_label());
        if std::thread::panicking() && std::env::var_os("SPTEST_KEEP").is_some() {
            eprintln!("SPTEST_KEEP is set: leaving the Docker objects with {filter} in place");
            return;
        }
        // Never panic here: a panic while unwinding aborts the whole test process.
        let run = |args: &[&str]| Command::new("docker").args(args).stdin(Stdio::null()).output();
        let list = |args: &[&str]| -> Vec<String> {
            match run(args) {
                Ok(out) => String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect(),
                Err(_) => Vec::new(),
            }
        };
        let remove = |what: &str, command: &[&str], ids: &[String]| {
            if ids.is_empty() {
                return;
            }
            let args: Vec<&str> = command.iter().copied().chain(ids.iter().map(String::as_str)).collect();
            match run(&args) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "warning: removing test {what} ({filter}) failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("warning: removing test {what} ({filter}): cannot run docker: {e}"),
            }
        };
        let containers = list(&["ps", "--all", "--quiet", "--filter", &filter]);
        remove("containers", &["rm", "--force", "--volumes"], &containers);
        let networks = list(&["network", "ls", "--quiet", "--filter", &filter]);
        remove("networks", &["network", "rm"], &networks);
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to the backends (only ever to containers the test created)

/// `GET /` on `ip:port` over plain HTTP/1.0; returns the body. Retries for up to five seconds
/// while the server is coming up.
pub fn http_get(ip: IpAddr, port: u16) -> String {
    let address = SocketAddr::new(ip, port);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_get(address) {
            Ok(body) => return body,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("GET http://{address}/ failed: {e}"),
        }
    }
}

fn try_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("unexpected response: {response:?}"))),
    }
}

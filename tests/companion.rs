//! The companion setup end to end on the real daemon: nginx in its own container (from
//! `nginx_image()`), the agent in another (from `agent_image(..)`) with the Docker socket mounted,
//! both sharing a named volume at `/etc/nginx/conf.d`. The agent writes its candidate there and
//! `docker exec`s `nginx -t` (on a copy of /etc/nginx) and `nginx -s reload` in the nginx
//! container. Requests go to nginx's port 80, published on 127.0.0.1 only.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use crate::support::agent::{http_get, strip_ansi};
use crate::support::docker::{docker as cli, docker_output, TestDocker, TEST_LABEL};
use crate::support::images::{agent_image, nginx_image};

/// Where the agent container finds a custom template (copied in with `docker cp`).
const TEMPLATE_IN_AGENT: &str = "/root/custom.conf.j2";
pub(crate) const NGINX_STARTED_AGAIN: &str = "the nginx container started again";
const APPLIED_AND_RELOADED: &str = "config applied and nginx reloaded";
const APPLIED: &str = "config applied";

/// A named volume owned by one test. Dropping it removes the test's containers that still use it
/// (the volume cannot go before them) and then the volume; [`TestDocker`] only removes containers
/// and networks.
struct Volume {
    name: String,
    owner: String,
}

/// Label with a test volume's creation time (unix seconds), for [`sweep_stale_volumes`].
const CREATED_LABEL: &str = "smart-proxy-test.created";

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Removes test volumes leaked by killed test runs (older than an hour: nothing a live run owns;
/// one still in use is left alone by Docker).
fn sweep_stale_volumes() {
    static SWEPT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    SWEPT.get_or_init(|| {
        let format = format!("{{{{.Name}}}} {{{{.Label \"{CREATED_LABEL}\"}}}}");
        let out = docker_output(&["volume", "ls", "--filter", &format!("label={TEST_LABEL}"), "--format", &format]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(created)) = (parts.next(), parts.next().and_then(|c| c.parse::<u64>().ok())) else {
                continue;
            };
            if unix_now().saturating_sub(created) > 3600 {
                let _ = docker_output(&["volume", "rm", name]);
            }
        }
    });
}

impl Volume {
    fn create(docker: &TestDocker, short: &str) -> Volume {
        sweep_stale_volumes();
        let name = docker.name(short);
        let owner = format!("{TEST_LABEL}={}", docker.run_id());
        let created = format!("{CREATED_LABEL}={}", unix_now());
        cli(&["volume", "create", "--label", &owner, "--label", &created, &name]);
        Volume { name, owner }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SPTEST_KEEP").is_some() {
            eprintln!("SPTEST_KEEP is set: leaving volume {} in place", self.name);
            return;
        }
        // Never panic here (a panic while unwinding aborts the test process).
        let users = docker_output(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("volume={}", self.name),
            "--filter",
            &format!("label={}", self.owner),
        ]);
        let users: Vec<String> = String::from_utf8_lossy(&users.stdout).split_whitespace().map(String::from).collect();
        if !users.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(users.iter().map(String::as_str));
            let _ = docker_output(&args);
        }
        let out = docker_output(&["volume", "rm", "--force", &self.name]);
        if !out.status.success() {
            eprintln!("warning: removing volume {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr).trim());
        }
    }
}

#[derive(Default)]
pub(crate) struct Options {
    /// Find nginx by the label `<prefix>.nginx=true` instead of `NGINX_CONTAINER`.
    by_label: bool,
    /// A custom template (its text), copied into the agent container as `NGINX_TEMPLATE`.
    template: Option<String>,
    /// The socket mounted as the agent's `/var/run/docker.sock` (a proxy's): the daemon's own by
    /// default.
    docker_socket: Option<String>,
    /// A second volume at `/var/log/nginx` in both containers (as the compose files mount it):
    /// the agent reads the per-domain access logs for insight.
    shared_logs: bool,
}

impl Options {
    /// The agent reaches Docker through `socket` (a proxy's), mounted as its
    /// `/var/run/docker.sock`.
    pub(crate) fn docker_socket(socket: &str) -> Options {
        Options { docker_socket: Some(socket.to_string()), ..Default::default() }
    }

    /// `/var/log/nginx` on a volume in both containers.
    pub(crate) fn shared_logs() -> Options {
        Options { shared_logs: true, ..Default::default() }
    }
}

/// One companion setup: a test network, the shared volume, the nginx and agent containers.
pub(crate) struct Companion<'d> {
    docker: &'d TestDocker,
    pub(crate) net: String,
    volume: Volume,
    /// `/var/log/nginx` in both containers ([`Options::shared_logs`]).
    logs: Option<Volume>,
    pub(crate) nginx: String,
    pub(crate) agent: String,
    by_label: bool,
    docker_socket: Option<String>,
    /// nginx's published port on 127.0.0.1 (changes when the container restarts).
    port: Cell<u16>,
}

impl<'d> Companion<'d> {
    /// Starts nginx, waits until it answers, then starts the agent.
    pub(crate) fn start(docker: &'d TestDocker, options: Options) -> Companion<'d> {
        let net = docker.network("net");
        let volume = Volume::create(docker, "confd");
        let logs = options.shared_logs.then(|| Volume::create(docker, "logs"));
        let c = Companion {
            docker,
            net,
            volume,
            logs,
            nginx: docker.name("nginx"),
            agent: docker.name("agent"),
            by_label: options.by_label,
            docker_socket: options.docker_socket,
            port: Cell::new(0),
        };
        c.start_nginx();
        c.start_agent(options.template.as_deref());
        c
    }

    fn owner(&self) -> String {
        format!("{TEST_LABEL}={}", self.docker.run_id())
    }

    /// `docker run` of the nginx container (also used to re-create it with the same name); waits
    /// until nginx answers on its published port.
    fn start_nginx(&self) {
        let mount = format!("{}:/etc/nginx/conf.d", self.volume.name);
        let owner = self.owner();
        let nginx_label = format!("{}=true", self.docker.label("nginx"));
        let image = nginx_image();
        let mut args = vec!["run", "--detach", "--name", &self.nginx, "--label", &owner];
        if self.by_label {
            args.extend(["--label", &nginx_label]);
        }
        let logs = self.logs_mount();
        if let Some(logs) = &logs {
            args.extend(["--volume", logs]);
        }
        args.extend(["--network", &self.net, "--publish", "127.0.0.1::80", "--volume", &mount, &image]);
        cli(&args);
        self.refresh_port();
        self.wait_for("nginx to answer on its published port", Duration::from_secs(20), || {
            self.get("x.invalid").0 != 0
        });
    }

    /// `docker create` + `docker cp` (the template) + `docker start` of the agent container.
    fn start_agent(&self, template: Option<&str>) {
        let agent_image = agent_image(Path::new(env!("CARGO_BIN_EXE_nginx-smart-proxy")));
        let owner = self.owner();
        let mount = format!("{}:/etc/nginx/conf.d", self.volume.name);
        let mut env = vec![
            format!("LABEL_PREFIX={}", self.docker.prefix()),
            "LOCAL=true".to_string(),
            "NGINX_MAIN_CONF=/etc/nginx/nginx.conf".to_string(),
            "NGINX_CONF=/etc/nginx/conf.d/default.conf".to_string(),
        ];
        if !self.by_label {
            env.push(format!("NGINX_CONTAINER={}", self.nginx));
        }
        if template.is_some() {
            env.push(format!("NGINX_TEMPLATE={TEMPLATE_IN_AGENT}"));
        }
        let mut args: Vec<&str> = vec!["create", "--name", &self.agent, "--label", &owner, "--network", &self.net];
        let socket =
            format!("{}:/var/run/docker.sock", self.docker_socket.as_deref().unwrap_or("/var/run/docker.sock"));
        args.extend(["--volume", &socket, "--volume", &mount]);
        let logs = self.logs_mount();
        if let Some(logs) = &logs {
            args.extend(["--volume", logs]);
        }
        for e in &env {
            args.extend(["--env", e]);
        }
        args.extend([agent_image.as_str(), "run"]);
        cli(&args);
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = template {
            let file = dir.path().join("custom.conf.j2");
            std::fs::write(&file, text).unwrap();
            cli(&["cp", &file.display().to_string(), &format!("{}:{TEMPLATE_IN_AGENT}", self.agent)]);
        }
        cli(&["start", &self.agent]);
    }

    /// The `--volume` of [`Options::shared_logs`].
    fn logs_mount(&self) -> Option<String> {
        self.logs.as_ref().map(|v| format!("{}:/var/log/nginx", v.name))
    }

    /// Reads nginx's published port again (`docker port`).
    pub(crate) fn refresh_port(&self) {
        let out = cli(&["port", &self.nginx, "80/tcp"]);
        let line = out
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("nginx's port 80 is not published on 127.0.0.1: `docker port` shows {out:?}"));
        let port = line.rsplit(':').next().unwrap().trim().parse().expect("a port number");
        self.port.set(port);
    }

    /// Waits until nginx runs no worker of an earlier config: after a reload, a worker of the
    /// old config may still accept a connection until it handles its signal (a moment, longer on
    /// a loaded machine), and its answer is the old config's.
    pub(crate) fn wait_for_old_workers(&self) {
        std::thread::sleep(Duration::from_millis(300));
        self.wait_for("nginx's old workers to stop", Duration::from_secs(30), || {
            !cli(&["top", &self.nginx]).contains("shutting down")
        });
    }

    /// nginx's published port on 127.0.0.1.
    pub(crate) fn port(&self) -> u16 {
        self.port.get()
    }

    /// GET / with `Host: host` through nginx: (status, body), status 0 when nothing answers.
    fn get(&self, host: &str) -> (u16, String) {
        http_get(self.port.get(), host, "/")
    }

    fn logs(name: &str) -> String {
        let out = docker_output(&["logs", name]);
        strip_ansi(&(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)))
    }

    /// The config the agent rendered, as its container sees it.
    pub(crate) fn agent_config(&self) -> String {
        let out = docker_output(&["exec", &self.agent, "cat", "/etc/nginx/conf.d/default.conf"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The agent container's log (`docker logs`).
    pub(crate) fn agent_log(&self) -> String {
        Self::logs(&self.agent)
    }

    fn diagnostics(&self) -> String {
        let status = |name: &str| {
            let out = docker_output(&["inspect", "--format", "{{.State.Status}} (exit {{.State.ExitCode}})", name]);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let conf = docker_output(&["exec", &self.nginx, "cat", "/etc/nginx/conf.d/default.conf"]);
        format!(
            "--- agent {} log ---\n{}\n--- nginx {} log ---\n{}\n--- live default.conf ---\n{}",
            status(&self.agent),
            self.agent_log(),
            status(&self.nginx),
            Self::logs(&self.nginx),
            String::from_utf8_lossy(&conf.stdout)
        )
    }

    /// Polls `check` every 50 ms until it holds; panics with both containers' logs after `timeout`.
    pub(crate) fn wait_for(&self, what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
        // The agent never exits on its own: fail at once rather than at the timeout.
        let exited = || self.agent_exited().then(|| "the agent container exited".to_string());
        crate::support::poll(what, timeout, Duration::from_millis(50), check, exited, || self.diagnostics())
    }

    /// Waits until `host` answers `status` (and, when given, a body equal to `<body>\n`).
    pub(crate) fn wait_for_status(&self, host: &str, status: u16, body: Option<&str>) {
        self.wait_for(&format!("{host} to answer {status} {body:?}"), Duration::from_secs(20), || {
            let (s, b) = self.get(host);
            s == status && body.is_none_or(|want| b == format!("{want}\n"))
        });
    }

    fn assert_answers(&self, host: &str, status: u16, body: Option<&str>) {
        let (s, b) = self.get(host);
        if s != status || body.is_some_and(|want| b != format!("{want}\n")) {
            panic!("{host}: expected {status} {body:?}, got {s} {b:?}\n{}", self.diagnostics());
        }
    }

    /// True when the agent container exists and is not running.
    fn agent_exited(&self) -> bool {
        let out = docker_output(&["inspect", "--format", "{{.State.Running}}", &self.agent]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "false"
    }

    /// Occurrences of `needle` in the agent's log.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.agent_log().matches(needle).count()
    }

    /// Waits for the `n`-th "nginx container started again" line and an applied config after it.
    /// (The agent may also log one for nginx's first start: its event stream starts a second
    /// before it subscribes; count the lines before restarting nginx.)
    pub(crate) fn wait_for_reapply(&self, n: usize) {
        self.wait_for(
            &format!("the agent to notice nginx starting again (#{n}) and to apply the config to it"),
            Duration::from_secs(20),
            || {
                let log = self.agent_log();
                log.match_indices(NGINX_STARTED_AGAIN).nth(n - 1).is_some_and(|(at, _)| log[at..].contains(APPLIED))
            },
        );
    }
}

pub(crate) fn started_app(docker: &TestDocker, c: &Companion, short: &str) {
    docker.start(vec![docker.app(short).label("domains", &format!("{short}.test")).network(&c.net)]);
}

#[test]
fn three_apps_stop_and_start() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    let apps = ["app1", "app2", "api"].map(|a| docker.app(a).label("domains", &format!("{a}.test")).network(&c.net));
    docker.start(apps.to_vec());
    for app in ["app1", "app2", "api"] {
        c.wait_for_status(&format!("{app}.test"), 200, Some(app));
    }
    // Waited for: just after a reload nginx's old worker may still take a connection for a moment,
    // and the config before the agent's first one (the image's) answers any host name with 200.
    c.wait_for_status("nobody.test", 503, None);
    assert!(
        c.agent_log().contains(&format!("nginx container {}", c.nginx)),
        "the agent uses the companion nginx:\n{}",
        c.diagnostics()
    );

    docker.stop(&docker.name("app1"));
    c.wait_for_status("app1.test", 502, None);
    c.assert_answers("app2.test", 200, Some("app2"));
    c.assert_answers("api.test", 200, Some("api"));

    cli(&["start", &docker.name("app1")]);
    c.wait_for_status("app1.test", 200, Some("app1"));
    c.assert_answers("app2.test", 200, Some("app2"));
    c.assert_answers("api.test", 200, Some("api"));

    // The candidate never stays behind in nginx's config directory.
    let listing = cli(&["exec", &c.nginx, "ls", "-a", "/etc/nginx/conf.d"]);
    assert!(!listing.contains(".smart-proxy-candidate"), "candidate left in conf.d: {listing}");

    // The log: nginx did not "start again" on the agent's first start, and every cause of a pass
    // names its container (network events carry no name: it comes from the cache).
    let log = c.agent_log();
    assert!(!log.contains(NGINX_STARTED_AGAIN), "{}", c.diagnostics());
    let causes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config applied"))
        .filter_map(|l| l.split_once("cause=")?.1.split(" added=").next())
        .flat_map(|c| c.split("; "))
        .collect();
    assert!(causes.iter().any(|c| c.contains(&docker.name("app1"))), "{causes:?}");
    for cause in causes {
        let who = cause.split(": ").next().unwrap_or("");
        assert!(
            !(who.len() == 12 && who.chars().all(|c| c.is_ascii_hexdigit())),
            "a cause names a container id instead of its name: {cause}\n{}",
            c.diagnostics()
        );
    }
}

#[test]
fn nginx_restarted_or_recreated_gets_the_config_again() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    started_app(&docker, &c, "first");
    c.wait_for_status("first.test", 200, Some("first"));

    // Restart: nginx comes back with the config on the volume; the agent sees the start event,
    // applies (tests and reloads) again, and keeps following the containers.
    let seen = c.count(NGINX_STARTED_AGAIN);
    cli(&["restart", "--time", "5", &c.nginx]);
    c.refresh_port();
    c.wait_for_reapply(seen + 1);
    c.wait_for_status("first.test", 200, Some("first"));
    started_app(&docker, &c, "second");
    c.wait_for_status("second.test", 200, Some("second"));

    // Removed and created again with the same name (a new container id): its conf.d is the same
    // volume, and the agent execs into the new container for the next changes.
    let seen = c.count(NGINX_STARTED_AGAIN);
    cli(&["rm", "--force", &c.nginx]);
    c.start_nginx();
    c.wait_for_reapply(seen + 1);
    c.wait_for_status("first.test", 200, Some("first"));
    c.assert_answers("second.test", 200, Some("second"));
    started_app(&docker, &c, "third");
    c.wait_for_status("third.test", 200, Some("third"));
    let log = c.agent_log();
    assert!(!log.contains("apply failed"), "no failed apply expected:\n{}", c.diagnostics());
}

/// A change costs one Docker exec in the nginx container: `nginx -t` on a copy, the rename over
/// the live file and `nginx -s reload` run in one script (two execs, six API calls, before).
#[test]
fn each_change_is_one_exec_that_tests_swaps_and_reloads() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    started_app(&docker, &c, "first");
    c.wait_for_status("first.test", 200, Some("first"));
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    // Whatever the first apply left in flight has landed before the window opens.
    std::thread::sleep(Duration::from_secs(1));
    let reloads_before = c.count(APPLIED_AND_RELOADED);
    let since = format!("{:.3}", now());
    for app in ["second", "third"] {
        started_app(&docker, &c, app);
        c.wait_for_status(&format!("{app}.test"), 200, Some(app));
    }
    std::thread::sleep(Duration::from_secs(1));
    let until = format!("{:.3}", now());
    let reloads = c.count(APPLIED_AND_RELOADED) - reloads_before;
    let events = cli(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={}", c.nginx),
        "--filter",
        "event=exec_start",
        "--format",
        "{{.Action}}",
    ]);
    // An exec's action carries its command, the script's lines included.
    let execs: Vec<&str> = events.lines().filter(|l| l.starts_with("exec_start: ")).collect();
    assert!(reloads >= 2, "two new apps, {reloads} reloads\n{}", c.diagnostics());
    assert_eq!(execs.len(), reloads, "execs in nginx for {reloads} reloads: {execs:#?}\n{}", c.diagnostics());
    assert!(execs.iter().all(|e| e.starts_with("exec_start: sh -c nginx_master()")), "{execs:#?}");
    // The candidate was renamed away, and the live file has all three.
    let listing = cli(&["exec", &c.nginx, "ls", "-a", "/etc/nginx/conf.d"]);
    assert!(!listing.contains(".smart-proxy-candidate"), "candidate left in conf.d: {listing}");
    let live = cli(&["exec", &c.nginx, "cat", "/etc/nginx/conf.d/default.conf"]);
    assert!(["first.test", "second.test", "third.test"].iter().all(|d| live.contains(d)), "{live}");
}

/// Once the agent says a config is applied, only that config answers: the reload in the nginx
/// container waits for nginx's new workers and asks the old ones to finish, as the agent does with
/// its own nginx (a worker that missed the master's message goes on accepting with the old
/// config: seen right after the first apply, the image's own config answering a third of the
/// requests).
#[test]
fn once_applied_only_the_new_config_answers() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    for app in ["first", "second", "third"] {
        let applied = c.count(APPLIED_AND_RELOADED);
        started_app(&docker, &c, app);
        c.wait_for(&format!("the apply that routes {app}.test"), Duration::from_secs(20), || {
            c.count(APPLIED_AND_RELOADED) > applied && c.get(&format!("{app}.test")).0 == 200
        });
        for i in 0..40 {
            let (status, body) = c.get(&format!("{app}.test"));
            assert!(
                status == 200 && body == format!("{app}\n"),
                "request {i} after the apply: {status} {body:?}\n{}",
                c.diagnostics()
            );
        }
    }
}

/// `check` on the host and the running agent's `/routes` show the same table, network choices and
/// reasons included, with nginx on one network and then (joined while the agent runs) on two.
#[test]
fn check_and_the_running_agent_agree_on_routes_and_networks() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    let second = docker.network("second");
    let elsewhere = docker.network("elsewhere");
    docker.start(vec![
        docker.app("first").label("domains", "first.test").network(&c.net),
        docker.app("second").label("domains", "second.test").network(&second),
        docker.app("both").label("domains", "both.test").network(&second).network(&c.net),
        docker.app("pinned").label("domains", "pinned.test").label("network", &second).network(&c.net).network(&second),
        docker.app("apart").label("domains", "apart.test").network(&elsewhere),
    ]);
    c.wait_for_status("first.test", 200, Some("first"));
    let agent_routes = || {
        let out = docker_output(&["exec", &c.agent, "wget", "-qO-", "http://127.0.0.1:9180/routes"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let check = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"));
        cmd.env_clear().args(["check", "--format", "json"]);
        cmd.envs([("LABEL_PREFIX", docker.prefix()), ("NGINX_CONTAINER", c.nginx.clone())]);
        cmd.envs([("LOCAL", "true"), ("NGINX_VERSION", "1.22.1"), ("CERTS_DIR", "/nonexistent")]);
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        let out = cmd.output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("check --format json: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let reason = |routes: &serde_json::Value, domain: &str| {
        routes["routes"].as_array().and_then(|r| r.iter().find(|r| r["domain"] == domain)).map(|r| {
            let server = &r["servers"][0];
            (
                server["network"].as_str().unwrap_or("").to_string(),
                server["network_reason"].as_str().unwrap_or("").to_string(),
            )
        })
    };
    // The agent's /routes is its last pass; a pass for an event just handled may still be coming,
    // so the two are compared until they agree (or for 10 s, then the difference is shown).
    let agree = |phase: &str| {
        let same = |live: &serde_json::Value, shown: &serde_json::Value| {
            ["routes", "errors", "warnings"].iter().all(|key| live[key] == shown[key])
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (live, shown) = (agent_routes(), check());
            if same(&live, &shown) {
                return shown;
            }
            if std::time::Instant::now() > deadline {
                for key in ["routes", "errors", "warnings"] {
                    assert_eq!(
                        live[key],
                        shown[key],
                        "{phase}: /routes and check differ in {key:?}\n{}",
                        c.diagnostics()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let routed = |n: usize| move || agent_routes()["routes"].as_array().is_some_and(|r| r.len() == n);
    let errors_naming = |shown: &serde_json::Value, app: &str| {
        shown["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|d| d["origin"].as_str().is_some_and(|o| o.contains(&docker.name(app)))))
    };
    c.wait_for("three routes in /routes", Duration::from_secs(20), routed(3));
    let shown = agree("nginx on one network");
    assert_eq!(reason(&shown, "first.test").unwrap(), (c.net.clone(), "the network shared with nginx".into()));
    assert_eq!(reason(&shown, "both.test").unwrap(), (c.net.clone(), "the network shared with nginx".into()));
    assert_eq!(reason(&shown, "pinned.test").unwrap(), (second.clone(), format!("set by {}", docker.label("network"))));
    assert!(reason(&shown, "second.test").is_none() && errors_naming(&shown, "second"), "{shown:#}");
    assert!(reason(&shown, "apart.test").is_none() && errors_naming(&shown, "apart"), "{shown:#}");

    // nginx joins the second network while the agent runs: the agent reads its networks again.
    cli(&["network", "connect", &second, &c.nginx]);
    c.wait_for("the agent to see nginx on the second network", Duration::from_secs(10), routed(4));
    let shown = agree("nginx on two networks");
    assert_eq!(reason(&shown, "second.test").unwrap(), (second.clone(), "the network shared with nginx".into()));
    assert!(reason(&shown, "apart.test").is_none() && errors_naming(&shown, "apart"), "{shown:#}");
    c.wait_for_status("second.test", 200, Some("second"));
}

#[test]
fn a_route_that_fails_nginx_t_in_the_nginx_container_is_left_out() {
    require_docker!();
    let docker = TestDocker::new();
    // A directive nginx does not know, only in bad.test's server.
    let template = smart_proxy::render::BUILTIN_TEMPLATE.replacen(
        "    server_name {{ site.domain }};\n",
        "    server_name {{ site.domain }};\n{% if site.domain == \"bad.test\" %}    no_such_directive on;\n{% endif %}",
        1,
    );
    assert_ne!(template, smart_proxy::render::BUILTIN_TEMPLATE, "the template edit applies");
    let c = Companion::start(&docker, Options { template: Some(template), ..Default::default() });
    let apps = ["good1", "bad", "good2"].map(|a| docker.app(a).label("domains", &format!("{a}.test")).network(&c.net));
    docker.start(apps.to_vec());
    c.wait_for_status("good1.test", 200, Some("good1"));
    c.wait_for_status("good2.test", 200, Some("good2"));
    // Waited for: the image's config, live before the agent's first, answers any host with 200.
    c.wait_for_status("bad.test", 503, None);

    c.wait_for("the dropped route to be logged", Duration::from_secs(10), || {
        c.agent_log().lines().any(|l| l.contains("route left out") && l.contains("bad.test"))
    });
    let log = c.agent_log();
    let line = log.lines().find(|l| l.contains("route left out") && l.contains("bad.test")).unwrap();
    assert!(
        line.contains("unknown directive \"no_such_directive\""),
        "the log line carries nginx's message: {line}\n{}",
        c.diagnostics()
    );
    assert!(!line.contains("good1.test") && !line.contains("good2.test"), "only bad.test is dropped: {line}");
    let live = cli(&["exec", &c.nginx, "cat", "/etc/nginx/conf.d/default.conf"]);
    assert!(!live.contains("no_such_directive"), "the live config is one nginx accepted:\n{live}");
    assert!(live.contains("good1.test") && live.contains("good2.test"), "{live}");

    // Later passes keep the isolation: a new route goes live, the bad one stays out.
    started_app(&docker, &c, "good3");
    c.wait_for_status("good3.test", 200, Some("good3"));
    c.assert_answers("bad.test", 503, None);
    c.assert_answers("good1.test", 200, Some("good1"));
}

#[test]
fn the_nginx_container_is_found_by_its_label() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options { by_label: true, ..Default::default() });
    started_app(&docker, &c, "web");
    c.wait_for_status("web.test", 200, Some("web"));
    assert!(
        c.agent_log().contains(&format!("nginx container {}", c.nginx)),
        "the agent chose the labelled nginx container:\n{}",
        c.diagnostics()
    );
    // Its restart is recognised too (by the chosen container's name).
    let seen = c.count(NGINX_STARTED_AGAIN);
    cli(&["restart", "--time", "5", &c.nginx]);
    c.refresh_port();
    c.wait_for_reapply(seen + 1);
    started_app(&docker, &c, "late");
    c.wait_for_status("late.test", 200, Some("late"));
    c.assert_answers("web.test", 200, Some("web"));
}

#[test]
fn a_stopped_container_labelled_nginx_is_not_chosen() {
    require_docker!();
    let docker = TestDocker::new();
    // An old nginx container that is not running (exited) still carries the label.
    let old = docker.start(vec![docker.app("old-nginx").label("nginx", "true")]).remove(0);
    docker.stop(&old);
    let c = Companion::start(&docker, Options { by_label: true, ..Default::default() });
    started_app(&docker, &c, "web");
    c.wait_for_status("web.test", 200, Some("web"));
    assert!(c.agent_log().contains(&format!("nginx container {}", c.nginx)), "{}", c.diagnostics());
    // The agent's default server replaced the image's (which answers any host with 200).
    c.wait_for_status("x.invalid", 503, None);
}

#[test]
fn an_apply_that_fails_while_nginx_is_unreachable_is_retried() {
    require_docker!();
    let docker = TestDocker::new();
    let c = Companion::start(&docker, Options::default());
    started_app(&docker, &c, "first");
    c.wait_for_status("first.test", 200, Some("first"));

    // While nginx is paused, `docker exec` fails: the pass for the new container cannot test or
    // reload, and the last good config stays live.
    cli(&["pause", &c.nginx]);
    started_app(&docker, &c, "second");
    c.wait_for("the failed apply to be logged", Duration::from_secs(15), || c.agent_log().contains("apply failed"));
    // Every event of the new container (connect, start) has had its (failing) pass: DEBOUNCE_MAX
    // is 1 s by default.
    std::thread::sleep(Duration::from_millis(2000));
    cli(&["unpause", &c.nginx]);
    c.assert_answers("first.test", 200, Some("first"));
    // No further event concerns this agent's containers: the agent must retry by itself rather
    // than wait for the next resync (RESYNC_INTERVAL, 5 min). (Every container event on the
    // daemon triggers a pass, so on a busy daemon another test's containers can hide a missing
    // retry; on a quiet one this fails without it.)
    c.wait_for("second.test to be served after nginx is reachable again", Duration::from_secs(10), || {
        c.get("second.test") == (200, "second\n".to_string())
    });
}

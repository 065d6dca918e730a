//! The agent as a real process: `nginx-smart-proxy run` on this machine with nginx as its child,
//! in a scratch prefix, listening on a free loopback port. Requests go to 127.0.0.1 only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::free_port;

/// The agent binary as a host process with nginx as its child, in a scratch prefix; stopped
/// (with its nginx) when dropped. [`Agent::start`] runs it in LOCAL mode on a port it picks;
/// [`Agent::production`] prepares production mode (`ACME=on`, no Docker) on a given HTTP port
/// (pebble validates HTTP-01 on its own fixed port, so nginx must listen there) and a free HTTPS
/// port, to [`Agent::launch`] (and launch again after [`Agent::kill`] or [`Agent::stop`]).
pub struct Agent {
    pub dir: tempfile::TempDir,
    /// `HTTP_PORT`.
    pub port: u16,
    /// `HTTPS_PORT` (production mode).
    pub https_port: u16,
    /// The whole environment of the agent (and of [`Agent::cli`]).
    pub env: Vec<(String, String)>,
    /// The command [`Agent::spawn`] runs, split at spaces: `run`, or `follow` (`follow --beside`)
    /// for a follower.
    pub command: &'static str,
    child: Option<Child>,
}

/// The email the production agent registers its ACME account with.
pub const ACME_EMAIL: &str = "test@example.com";

/// How the agent's scratch prefix is laid out and its nginx tuned.
#[derive(Debug, Clone, Copy)]
pub struct Prefix {
    /// The directory of `nginx.conf` and `conf.d/` under the prefix (`""`: the prefix itself): the
    /// directory the agent's `nginx -t` copies with the candidate.
    pub config_dir: &'static str,
    /// The level of nginx's own error log, `logs/nginx-error.log`.
    pub error_log_level: &'static str,
    pub worker_connections: u32,
}

impl Prefix {
    /// The tests': everything at the top of the prefix, nginx's error log at `info`.
    pub const TEST: Prefix = Prefix { config_dir: "", error_log_level: "info", worker_connections: 1024 };
    /// Laid out like a host (the benches): `etc/` holds only nginx's config, so the agent's
    /// `nginx -t` copies no logs; 4096 connections (thousands of sites and probes), error log at
    /// `notice`.
    pub const HOST: Prefix = Prefix { config_dir: "etc", error_log_level: "notice", worker_connections: 4096 };
}

impl Agent {
    /// Starts the agent in LOCAL mode with its own nginx on a free port; `env` adds settings
    /// (e.g. `LABEL_PREFIX`). Waits until nginx answers.
    pub fn start(env: &[(&str, &str)]) -> Agent {
        let mut agent = Agent::local(Prefix::TEST, env);
        agent.launch();
        agent
    }

    /// Prepares the agent in LOCAL mode on a free port in a `prefix` laid out as it says (with
    /// this process's `DOCKER_HOST`, if set); [`Agent::launch`] or [`Agent::spawn`] runs it.
    pub fn local(prefix: Prefix, env: &[(&str, &str)]) -> Agent {
        let mut agent = Agent::prepare(prefix, free_port(), &[("LOCAL", "true")], env);
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            agent.env.push(("DOCKER_HOST".into(), host));
        }
        agent
    }

    /// Prepares the agent in production mode (`LOCAL=false`, `NO_DOCKER`, `ACME=on` with an
    /// email, `DNS_CHECK=off`) on `http_port`; `env` overrides these. [`Agent::launch`] runs it.
    pub fn production(http_port: u16, env: &[(&str, &str)]) -> Agent {
        let https_port = free_port().to_string();
        let defaults = [
            ("LOCAL", "false"),
            ("NO_DOCKER", "true"),
            ("HTTPS_PORT", https_port.as_str()),
            ("ACME", "on"),
            ("ACME_EMAIL", ACME_EMAIL),
            ("DNS_CHECK", "off"),
        ];
        Agent::prepare(Prefix::TEST, http_port, &defaults, env)
    }

    fn prepare(prefix: Prefix, port: u16, defaults: &[(&str, &str)], env: &[(&str, &str)]) -> Agent {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join(prefix.config_dir);
        for sub in
            [conf_dir.join("conf.d"), dir.path().join("logs"), dir.path().join("certs"), dir.path().join("webroot")]
        {
            std::fs::create_dir_all(sub).unwrap();
        }
        // As root, nginx's workers run as `nobody`: they must reach the webroot (HTTP-01 tokens)
        // and write the per-site access logs. tempfile creates 0700 directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path().join("logs"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = |s: &str| dir.path().join(s);
        std::fs::write(
            conf_dir.join("nginx.conf"),
            format!(
                "{modules}pid {pid};\nerror_log {err} {level};\nworker_processes 1;\nevents {{ worker_connections {connections}; }}\nhttp {{\n    access_log off;\n    include {confd}/*.conf;\n}}\n",
                // Only for `true`: a test of `AUTH_CACHE` without the module sets `on`.
                modules = if env.contains(&("AUTH_CACHE", "true")) { super::lua_modules() } else { String::new() },
                pid = p("nginx.pid").display(),
                err = p("logs/nginx-error.log").display(),
                level = prefix.error_log_level,
                connections = prefix.worker_connections,
                confd = conf_dir.join("conf.d").display()
            ),
        )
        .unwrap();
        let s = |p: PathBuf| p.display().to_string();
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HTTP_PORT".into(), port.to_string()),
            ("NGINX_BIN".into(), s(super::nginx_bin())),
            ("NGINX_MAIN_CONF".into(), s(conf_dir.join("nginx.conf"))),
            ("NGINX_CONF".into(), s(conf_dir.join("conf.d/default.conf"))),
            ("LOG_DIR".into(), s(p("logs"))),
            ("CERTS_DIR".into(), s(p("certs"))),
            ("ACME_WEBROOT".into(), s(p("webroot"))),
            ("RESOLVER".into(), "127.0.0.11".into()),
            ("LOG_LEVEL".into(), "info".into()),
            // Agents run in parallel: each its own status endpoint, never the shared default.
            ("STATUS_ADDR".into(), format!("127.0.0.1:{}", free_port())),
        ];
        for (k, v) in defaults.iter().chain(env) {
            vars.retain(|(key, _)| key != k);
            vars.push((k.to_string(), v.to_string()));
        }
        let https_port = vars.iter().find(|(k, _)| k == "HTTPS_PORT").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        Agent { dir, port, https_port, env: vars, command: "run", child: None }
    }

    /// Runs the agent (again) and waits until nginx answers on `HTTP_PORT`. The log starts
    /// afresh; the previous run's is kept as `agent.log.<n>`.
    pub fn launch(&mut self) {
        self.spawn();
        let port = self.port;
        self.wait_for("nginx to answer", Duration::from_secs(20), || http_get(port, "unknown.invalid", "/").0 != 0);
    }

    /// Runs the agent (again) without waiting for anything (as [`Agent::launch`]).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log_path = self.path("agent.log");
        if log_path.exists() {
            let n = (1..).find(|n| !self.path(&format!("agent.log.{n}")).exists()).unwrap();
            std::fs::rename(&log_path, self.path(&format!("agent.log.{n}"))).unwrap();
        }
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"))
            .args(self.command.split(' '))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.child = Some(child);
    }

    /// The pid of the agent process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the agent dies mid-whatever; its nginx (a child) may live on. Waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_kill(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    /// Stops the nginx a killed agent left behind (QUIT through its pid file) and waits until its
    /// port is free.
    pub fn stop_nginx(&self) {
        self.signal_nginx("QUIT");
        let port = self.port;
        self.wait_for("the old nginx to exit", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }

    /// Runs the CLI with the agent's environment (same CERTS_DIR, DOMAINS...).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args).output().expect("run the CLI")
    }

    /// The CLI with the agent's environment, to spawn.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"));
        cmd.args(args).env_clear().envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        cmd
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// The agent's log so far (ANSI colours removed).
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.path("agent.log")).unwrap_or_default();
        strip_ansi(&raw)
    }

    /// GET http://127.0.0.1:<port><path> with `Host: host`: (status, body); status 0 when nginx
    /// does not answer.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        http_get(self.port, host, path)
    }

    /// The status endpoint's port on 127.0.0.1 (`STATUS_ADDR`; 0 when it is off).
    pub fn status_port(&self) -> u16 {
        let addr = self.env.iter().rev().find(|(k, _)| k == "STATUS_ADDR").map(|(_, v)| v.as_str());
        addr.and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// GET http://127.0.0.1:<status port><path> (the status endpoint): (status, body).
    pub fn status_get(&self, path: &str) -> (u16, String) {
        http_get(self.status_port(), "127.0.0.1", path)
    }

    /// Polls `check` every 20 ms until it holds; panics with the agent's log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
        let log = || format!("--- agent log ---\n{}", self.log());
        super::poll(what, timeout, Duration::from_millis(20), check, || None, log)
    }

    /// Waits until `host` answers `status` (and, when given, a body containing `body`).
    pub fn wait_for_status(&self, host: &str, status: u16, body: Option<&str>) -> Duration {
        self.wait_for(&format!("{host} to answer {status} {body:?}"), Duration::from_secs(15), || {
            let (s, b) = self.get(host, "/");
            s == status && body.is_none_or(|want| b.contains(want))
        })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe_kill(child.id(), "TERM");
        child.wait().unwrap()
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The pid of the agent's nginx master.
    pub fn nginx_pid(&self) -> u32 {
        self.nginx_pid_now().expect("nginx's pid file")
    }

    /// The pid in nginx's pid file, if there is one.
    pub fn nginx_pid_now(&self) -> Option<u32> {
        std::fs::read_to_string(self.nginx_pid_file()).ok()?.trim().parse().ok()
    }

    /// nginx's pid file.
    pub fn nginx_pid_file(&self) -> PathBuf {
        self.path("nginx.pid")
    }

    fn signal_nginx(&self, signal: &str) {
        if let Some(pid) = self.nginx_pid_now() {
            unsafe_kill(pid, signal);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; then `nginx_signal` to an nginx a killed agent
    /// left behind (QUIT: graceful, TERM: at once). What dropping the agent does, with 5 s and QUIT.
    pub fn shutdown(&mut self, grace: Duration, nginx_signal: &str) {
        if let Some(mut child) = self.child.take() {
            unsafe_kill(child.id(), "TERM");
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // nginx may outlive a killed agent (or still be finishing a graceful stop): stop it
        // through its pid file, which nginx removes when it exits; then its process group (the
        // agent starts nginx in one of its own), so that no worker outlives the test.
        let Some(pid) = self.nginx_pid_now() else { return };
        unsafe_kill(pid, nginx_signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.nginx_pid_now() == Some(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5), "QUIT");
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (Connection: close).
pub fn http_get(port: u16, host: &str, path: &str) -> (u16, String) {
    http_get_within(port, host, path, Duration::from_secs(10))
}

/// [`http_get`] with a read timeout (status 0 when it expires).
pub fn http_get_within(port: u16, host: &str, path: &str, timeout: Duration) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(timeout)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn write_file(path: &Path, text: &str) {
    // Replace by rename, like editors and ConfigMaps do.
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

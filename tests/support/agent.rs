//! The agent as a real process: `nginx-smart-proxy run` on this machine with nginx as its child,
//! in a scratch prefix, listening on a free loopback port. Requests go to 127.0.0.1 only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One running agent; killed (with its nginx) when dropped.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Agent {
    /// Starts the agent in LOCAL mode with its own nginx on a free port; `env` adds settings
    /// (e.g. `LABEL_PREFIX`). Waits until nginx answers.
    pub fn start(env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["conf.d", "logs", "certs", "webroot"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let port = free_port();
        let p = |s: &str| dir.path().join(s);
        std::fs::write(
            p("nginx.conf"),
            format!(
                "pid {pid};\nerror_log {err} info;\nevents {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n    include {confd}/*.conf;\n}}\n",
                pid = p("nginx.pid").display(),
                err = p("logs/nginx-error.log").display(),
                confd = p("conf.d").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(p("agent.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOCAL", "true")
            .env("HTTP_PORT", port.to_string())
            .env("NGINX_BIN", super::nginx_bin())
            .env("NGINX_MAIN_CONF", p("nginx.conf"))
            .env("NGINX_CONF", p("conf.d/default.conf"))
            .env("LOG_DIR", p("logs"))
            .env("CERTS_DIR", p("certs"))
            .env("ACME_WEBROOT", p("webroot"))
            .env("RESOLVER", "127.0.0.11")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the agent");
        let agent = Agent { dir, port, child: Some(child) };
        agent.wait_for("nginx to answer", Duration::from_secs(20), || agent.get("unknown.invalid", "/").0 != 0);
        agent
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

    /// Polls `check` every 20 ms until it holds; panics with the agent's log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        loop {
            if check() {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n--- agent log ---\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        std::fs::read_to_string(self.path("nginx.pid")).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe_kill(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // nginx may outlive a killed agent: stop it through its pid file.
        if let Ok(pid) = std::fs::read_to_string(self.path("nginx.pid")) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                unsafe_kill(pid, "QUIT");
            }
        }
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (Connection: close).
pub fn http_get(port: u16, host: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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

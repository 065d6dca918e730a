//! docker-compose (v1) projects of the files in `compose/`, run for real with the images passed
//! in through the files' image variables. Each project has its own name (`-p`), the test's label
//! prefix (`LABEL_PREFIX`) and network name, and loopback-only published ports, and is torn down
//! (`down -v`) when dropped, also on failure. Used by `tests/compose.rs` (on the local images) and
//! `tests/dockerfile.rs` (on the image built from the Dockerfile).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::agent::{http_get, strip_ansi};
use super::docker::{docker_output, TestDocker, TEST_LABEL};
use super::images::local_images;

/// One `docker-compose -p <name> -f compose/<setup>/docker-compose.yml` project.
pub struct Project<'d> {
    docker: &'d TestDocker,
    name: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    /// An empty `--env-file`: no `.env` next to the compose file is read.
    env_file: tempfile::NamedTempFile,
}

impl<'d> Project<'d> {
    /// `up -d --no-build` of `compose/<setup>` with the local images, loopback-only ports, the
    /// test's label prefix and network name, and `env` (the agent settings the file passes
    /// through).
    pub fn up(docker: &'d TestDocker, setup: &str, env: &[(&str, &str)]) -> Project<'d> {
        let images = local_images(Some(Path::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"))));
        Project::up_with(docker, setup, &images.compose_env(), env)
    }

    /// [`Project::up`] with the given image variables (`NGINX_IMAGE`, `AGENT_IMAGE`, ...).
    pub fn up_with(
        docker: &'d TestDocker,
        setup: &str,
        images: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Project<'d> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose").join(setup).join("docker-compose.yml");
        Project::up_file(docker, setup, file, images, env)
    }

    /// `up -d --no-build` of the compose file `file` as project `sptest<run><name>`, with the
    /// variables [`Project::up_with`] sets.
    pub fn up_file(
        docker: &'d TestDocker,
        name: &str,
        file: PathBuf,
        images: &[(&str, String)],
        env: &[(&str, &str)],
    ) -> Project<'d> {
        assert!(file.is_file(), "{} is missing", file.display());
        let mut vars: Vec<(String, String)> = images.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        vars.extend([
            // `127.0.0.1::80`: a free port on loopback.
            ("HTTP_PUBLISH".to_string(), "127.0.0.1:".to_string()),
            ("HTTPS_PUBLISH".to_string(), "127.0.0.1:".to_string()),
            ("LABEL_PREFIX".to_string(), docker.prefix()),
            ("PROXY_NETWORK".to_string(), docker.name("proxy")),
        ]);
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env_file = tempfile::NamedTempFile::new().expect("empty env file");
        let project = Project { docker, name: format!("sptest{}{name}", docker.run_id()), file, env: vars, env_file };
        let out = project.compose(&["up", "--detach", "--no-build"]);
        if !out.status.success() {
            panic!("docker-compose up failed ({}):\n{}\n{}", out.status, text(&out), project.logs());
        }
        project
    }

    /// Runs `docker-compose -p <name> -f <file> --env-file <empty> <args>` with only this
    /// project's variables (nothing from the developer's environment or a `.env` file).
    pub fn compose(&self, args: &[&str]) -> Output {
        self.compose_with(&[], args)
    }

    /// [`Project::compose`] with some of the project's variables changed (`None`: unset).
    pub fn compose_with(&self, changes: &[(&str, Option<&str>)], args: &[&str]) -> Output {
        let mut cmd = Command::new("docker-compose");
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        cmd.envs(self.env.iter().filter(|(k, _)| !changes.iter().any(|(c, _)| c == k)).map(|(k, v)| (k, v)))
            .envs(changes.iter().filter_map(|(k, v)| Some((k, (*v)?))))
            .args(["--ansi", "never", "-p", &self.name, "-f"])
            .arg(&self.file)
            .arg("--env-file")
            .arg(self.env_file.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run docker-compose (install Debian's docker-compose; .ci/run does): {e}")
            })
    }

    /// The loopback port `service`'s `port` is published on.
    pub fn port(&self, service: &str, port: u16) -> u16 {
        let out = self.compose(&["port", service, &port.to_string()]);
        let shown = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(shown.starts_with("127.0.0.1:"), "{service}:{port} is not published on loopback: {shown:?}");
        shown.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("a port number in {shown:?}"))
    }

    /// The logs of every service (colours removed).
    pub fn logs(&self) -> String {
        strip_ansi(&text(&self.compose(&["logs", "--no-color", "--timestamps"])))
    }

    /// The full name of one service's container.
    pub fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    /// Polls `check` every 100 ms; panics with the project's logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, check: impl FnMut() -> bool) {
        let logs = || format!("--- logs ---\n{}", self.logs());
        super::poll(what, timeout, Duration::from_millis(100), check, || None, logs);
    }

    /// Waits until `host` answers `status` on `port` (and, when given, the body `<body>\n`).
    pub fn wait_for_status(&self, port: u16, host: &str, status: u16, body: Option<&str>) {
        self.wait_for(&format!("{host} to answer {status} {body:?}"), Duration::from_secs(30), || {
            let (s, b) = http_get(port, host, "/");
            s == status && body.is_none_or(|want| b == format!("{want}\n"))
        });
    }

    pub fn assert_answers(&self, port: u16, host: &str, status: u16, body: Option<&str>) {
        let (s, b) = http_get(port, host, "/");
        if s != status || body.is_some_and(|want| b != format!("{want}\n")) {
            panic!("{host}: expected {status} {body:?}, got {s} {b:?}\n--- logs ---\n{}", self.logs());
        }
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SPTEST_KEEP").is_some() {
            eprintln!("SPTEST_KEEP is set: leaving compose project {} in place", self.name);
            return;
        }
        // Never panic here (a panic while unwinding aborts the test process). The test's own
        // containers go first: the project's network cannot be removed while they use it.
        let filter = format!("label={TEST_LABEL}={}", self.docker.run_id());
        let ours = docker_output(&["ps", "--all", "--quiet", "--filter", &filter]);
        let ids: Vec<String> = String::from_utf8_lossy(&ours.stdout).split_whitespace().map(String::from).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker_output(&args);
        }
        let out = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        if !out.status.success() {
            eprintln!("warning: docker-compose down of {} failed: {}", self.name, text(&out));
        }
    }
}

/// stdout then stderr of a finished command, as text.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

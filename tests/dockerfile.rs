//! The `Dockerfile` built for real and its image run in both setups: its COPY and RUN steps,
//! entrypoint and command, stop signal, volumes and health check.
//!
//! A test binary of its own (`[[test]] z_dockerfile` in Cargo.toml; `cargo test --test
//! z_dockerfile`): cargo runs test binaries one after another in name order, so the release build
//! inside `docker build` (minutes on two cores) runs after the timing-sensitive tests of
//! `tests/tests.rs`, never beside them.
//!
//! No registry is reachable here, so the base images come from `scripts/stand-in-base-images`:
//! `rust:1-bookworm` and `nginx:1.27-bookworm` made from Debian's packages (debootstrap) in the
//! official images' layout, each only when that tag does not exist yet (a real image is used as
//! it is) or is a stand-in of an older version. The first run takes minutes: two debootstraps
//! (about 1.5 min each), then the release build. Later runs reuse the stand-ins and Docker's layer
//! cache (seconds when the sources did not change).
//!
//! What stays on disk: the stand-ins, the built image tagged `smart-proxy-test-dockerfile:latest`
//! and its build stage `smart-proxy-test-dockerfile:build` (the layer cache of the next run).
//! Each build removes the untagged images left by earlier builds on the stand-ins
//! (`docker image prune --filter label=org.nginx-smart-proxy.stand-in`). The containers, networks
//! and volumes of the tests are removed when each test ends, also on failure.
//!
//! Without a Docker daemon, or without debootstrap when a stand-in must be made, the tests fail
//! under CI (`CI=true`) and are skipped with a loud message otherwise.

#[macro_use]
mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::compose::{text, Project};
use support::docker::{docker, docker_output, TestDocker};

/// The repository the built image is tagged in: `:latest` and `:build` (its build stage).
const TAG: &str = "smart-proxy-test-dockerfile";
/// The label `scripts/stand-in-base-images` puts on the images it makes (and that images built on
/// them inherit).
const STAND_IN_LABEL: &str = "org.nginx-smart-proxy.stand-in";
/// The Dockerfile's base images.
const RUST_BASE: &str = "rust:1-bookworm";
const NGINX_BASE: &str = "nginx:1.27-bookworm";
/// The volumes the Dockerfile declares.
const VOLUMES: [&str; 3] = ["/etc/letsencrypt", "/etc/nginx/conf.d", "/var/www/certbot"];

/// Writes to the test process's stderr past the harness's capture: CI's log says what the
/// minutes of building are.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "dockerfile: {message}");
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The value of `label` on `image`: `None` when there is no such image, `Some("")` when the image
/// has no such label.
fn image_label(image: &str, label: &str) -> Option<String> {
    let out =
        docker_output(&["image", "inspect", "--format", &format!("{{{{ index .Config.Labels \"{label}\" }}}}"), image]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Call first: the Docker daemon, and debootstrap unless both base images are real ones. Panics
/// under CI when something is missing; otherwise prints a loud SKIPPED line and returns false.
fn require_tools() -> bool {
    require_docker!(false);
    let real = |tag: &str| image_label(tag, STAND_IN_LABEL).is_some_and(|v| v.is_empty());
    if real(RUST_BASE) && real(NGINX_BASE) {
        return true;
    }
    let debootstrap = Command::new("sh")
        .args(["-c", "command -v debootstrap || test -x /usr/sbin/debootstrap"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if debootstrap {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    let reason = format!(
        "debootstrap is not installed, and {RUST_BASE} / {NGINX_BASE} must be made from Debian's packages \
         (scripts/stand-in-base-images): apt-get install debootstrap (.ci/run installs it)"
    );
    if support::in_ci() {
        panic!("{test}: {reason}. Under CI (CI=true) the Dockerfile must be built.");
    }
    eprintln!("\n*** SKIPPED {test}: {reason}. ***\n");
    false
}

/// The image built from the Dockerfile.
struct Built {
    /// Its id (`sha256:...`): what the tests run, whatever `:latest` points at meanwhile.
    id: String,
    /// The `org.nginx-smart-proxy.stand-in` label it inherited from its base (empty on the real
    /// `nginx:1.27-bookworm`).
    stand_in: String,
}

/// Makes the stand-ins if needed and builds the Dockerfile, once per test process (the tests
/// wait for one build). Panics with the end of the build's log when it fails.
fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(built) => built,
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<Built, String> {
    let started = Instant::now();
    say("making the stand-in base images where needed (scripts/stand-in-base-images; the first run debootstraps two Debian root filesystems)");
    let status = Command::new("bash")
        .arg(repo().join("scripts/stand-in-base-images"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run scripts/stand-in-base-images: {e}"))?;
    if !status.success() {
        return Err(format!("scripts/stand-in-base-images failed ({status}); its messages are above"));
    }
    let stand_ins = started.elapsed();

    let log_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dockerfile-build.log");
    let iid_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dockerfile-build.iid");
    let _ = std::fs::remove_file(&iid_path);
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    say(&format!("docker build of the Dockerfile (the release build takes minutes; log: {})", log_path.display()));
    let building = Instant::now();
    // The build stage is tagged too: it is the layer cache of the next run, which the prune
    // below must not remove. The classic builder (what Engine 20.10 has without buildx);
    // --force-rm: a failed step leaves no container behind.
    let build_tag = format!("{TAG}:build");
    let latest_tag = format!("{TAG}:latest");
    let iid = iid_path.display().to_string();
    let steps: [Vec<&str>; 2] = [
        vec!["build", "--force-rm", "--target", "build", "--tag", &build_tag, "."],
        vec!["build", "--force-rm", "--iidfile", &iid, "--tag", &latest_tag, "."],
    ];
    for args in steps {
        let status = Command::new("docker")
            .args(&args)
            .current_dir(repo())
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log.try_clone().map_err(|e| e.to_string())?)
            .status()
            .map_err(|e| format!("cannot run docker build: {e}"))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            return Err(format!(
                "`docker {}` of the Dockerfile failed ({status}); the end of {}:\n{tail}",
                args.join(" "),
                log_path.display()
            ));
        }
    }
    let building = building.elapsed();
    let id = std::fs::read_to_string(&iid_path).map_err(|e| format!("{}: {e}", iid_path.display()))?.trim().to_string();
    // Untagged images of earlier builds (and stand-ins replaced since) built on the stand-ins.
    let _ = docker_output(&["image", "prune", "--force", "--filter", &format!("label={STAND_IN_LABEL}")]);
    let size = docker(&["image", "inspect", "--format", "{{.Size}}", &id]).parse::<u64>().unwrap_or(0);
    say(&format!(
        "built {latest_tag} ({id}, {} MB) in {:.0} s; stand-ins checked or made in {:.0} s",
        size / 1_000_000,
        building.as_secs_f64(),
        stand_ins.as_secs_f64()
    ));
    let stand_in = image_label(&id, STAND_IN_LABEL).unwrap_or_default();
    Ok(Built { id, stand_in })
}

/// `docker inspect --format FORMAT NAME`, trimmed.
fn inspect(name: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, name])
}

/// `docker exec CONTAINER ARGS...`: its stdout, trimmed; panics unless it succeeds.
fn exec(container: &str, args: &[&str]) -> String {
    let mut all = vec!["exec", container];
    all.extend_from_slice(args);
    docker(&all)
}

/// The users (names) of the processes in `container` whose command line begins with `prefix`.
fn process_users(container: &str, prefix: &str) -> Vec<String> {
    let script = format!(
        "for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in '{prefix}'*) stat -c %U $p;; esac; done"
    );
    exec(container, &["sh", "-c", &script]).lines().map(String::from).collect()
}

/// Waits for the container's own HEALTHCHECK (the image's interval and start period: the first
/// check runs 30 s after the start) to report `healthy`.
fn wait_healthy(project: &Project, container: &str) -> Duration {
    let started = Instant::now();
    project.wait_for(&format!("{container} to be healthy"), Duration::from_secs(100), || {
        let health = inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}");
        assert_ne!(health, "unhealthy", "{}", inspect(container, "{{json .State.Health}}"));
        health == "healthy"
    });
    started.elapsed()
}

/// `docker stop` with the image's stop signal: returns how long it took; asserts exit code 0.
fn stop(project: &Project, container: &str) -> Duration {
    let started = Instant::now();
    let out = docker_output(&["stop", "--time", "10", container]);
    let took = started.elapsed();
    assert!(out.status.success(), "docker stop {container}: {}", text(&out));
    let exit = inspect(container, "{{.State.ExitCode}}");
    assert_eq!(exit, "0", "exit code of {container} after docker stop\n{}", project.logs());
    took
}

#[test]
fn the_image_has_the_dockerfiles_config() {
    if !require_tools() {
        return;
    }
    let built = built();
    let config = |format: &str| inspect(&built.id, format);
    assert_eq!(config("{{.Config.StopSignal}}"), "SIGTERM", "the agent's stop signal, not the base's SIGQUIT");
    assert_eq!(config("{{json .Config.Entrypoint}}"), r#"["/usr/local/bin/nginx-smart-proxy"]"#);
    assert_eq!(config("{{json .Config.Cmd}}"), r#"["run"]"#);
    let volumes = config("{{range $v, $_ := .Config.Volumes}}{{$v}} {{end}}");
    assert_eq!(volumes.split_whitespace().collect::<Vec<_>>(), VOLUMES, "VOLUMEs");
    let ports = config("{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}");
    assert_eq!(ports.split_whitespace().collect::<Vec<_>>(), ["443/tcp", "80/tcp"], "EXPOSEd ports");
    assert_eq!(config("{{json .Config.Healthcheck.Test}}"), r#"["CMD","nginx-smart-proxy","health"]"#, "HEALTHCHECK");
    // The binary runs in the image (it links the base's glibc) and is the one built from here.
    let out = docker_output(&["run", "--rm", &built.id, "--version"]);
    assert!(out.status.success(), "the agent in the image does not run: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("nginx-smart-proxy {}", env!("CARGO_PKG_VERSION")));
    // The runtime stage is the nginx image: its nginx runs, as root's child, with its config.
    let out = docker_output(&["run", "--rm", "--entrypoint", "nginx", &built.id, "-t"]);
    assert!(out.status.success(), "nginx -t in the image: {}", text(&out));
    if built.stand_in.is_empty() {
        say("built on the real base images");
    } else {
        say(&format!("built on stand-ins: {}", built.stand_in));
    }
}

#[test]
fn single_container_serves_reports_healthy_and_stops_gracefully() {
    if !require_tools() {
        return;
    }
    let built = built();
    let docker = TestDocker::new();
    let project = Project::up_with(&docker, "single", &[("AGENT_IMAGE", built.id.clone())], &[("LOCAL", "true")]);
    let container = project.container("proxy");
    let port = project.port("proxy", 80);
    docker.start(vec![docker.app("web").label("domains", "web.test").network(&docker.name("proxy"))]);
    project.wait_for_status(port, "web.test", 200, Some("web"));
    project.assert_answers(port, "nobody.test", 503, None);
    assert!(project.logs().contains("local nginx"), "the agent runs nginx itself:\n{}", project.logs());

    // The agent's config is in the conf.d volume; the three VOLUMEs are mounted.
    let mounts = inspect(&container, "{{range .Mounts}}{{.Destination}} {{end}}");
    for volume in VOLUMES {
        assert!(mounts.split_whitespace().any(|m| m == volume), "{volume} is not a volume of {container}: {mounts}");
    }
    let conf = exec(&container, &["cat", "/etc/nginx/conf.d/default.conf"]);
    assert!(conf.contains("web.test"), "the agent's config in /etc/nginx/conf.d:\n{conf}");
    // nginx's master runs as root, its workers as the base image's `nginx` user.
    let workers = process_users(&container, "nginx: worker process");
    assert!(!workers.is_empty() && workers.iter().all(|u| u == "nginx"), "nginx workers' users: {workers:?}");
    assert_eq!(process_users(&container, "nginx: master process"), ["root"]);

    let healthy = wait_healthy(&project, &container);
    say(&format!("single: healthy {:.0} s after the app answered", healthy.as_secs_f64()));

    // `docker stop` sends the image's SIGTERM: the agent stops nginx with SIGQUIT, which lets its
    // workers finish, and exits 0.
    let took = stop(&project, &container);
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}: SIGTERM was not handled\n{}", project.logs());
    let logs = project.logs();
    assert!(logs.contains("shutting down"), "the agent's graceful stop:\n{logs}");
    assert!(logs.contains("gracefully shutting down"), "nginx's graceful stop (its error log is stderr):\n{logs}");
    say(&format!("single: docker stop took {:.1} s, exit code 0", took.as_secs_f64()));
}

#[test]
fn companion_agent_drives_the_nginx_base_image() {
    if !require_tools() {
        return;
    }
    let built = built();
    let docker = TestDocker::new();
    let secret_dir = tempfile::tempdir().unwrap();
    let token_file = secret_dir.path().join("cloudflare_api_token");
    std::fs::write(&token_file, "sptest-not-a-token\n").unwrap();
    let token_file = token_file.display().to_string();
    // nginx is the Dockerfile's runtime base itself (the stand-in here, or the real image where
    // it exists), in its own container: the agent execs `nginx -t` and reloads through the socket.
    let project = Project::up_with(
        &docker,
        "companion",
        &[("NGINX_IMAGE", NGINX_BASE.to_string()), ("AGENT_IMAGE", built.id.clone())],
        &[("LOCAL", "true"), ("CLOUDFLARE_TOKEN_SECRET", &token_file)],
    );
    let nginx = project.container("nginx");
    let agent = project.container("agent");
    let port = project.port("nginx", 80);
    docker.start(vec![docker.app("shop").label("domains", "shop.test").network(&docker.name("proxy"))]);
    project.wait_for_status(port, "shop.test", 200, Some("shop"));
    project.assert_answers(port, "nobody.test", 503, None);
    let logs = project.logs();
    assert!(logs.contains(&format!("nginx container {nginx}")), "companion mode:\n{logs}");
    // The config reached nginx through the shared conf.d volume.
    let conf = exec(&nginx, &["cat", "/etc/nginx/conf.d/default.conf"]);
    assert!(conf.contains("shop.test"), "the agent's config in nginx's /etc/nginx/conf.d:\n{conf}");
    let workers = process_users(&nginx, "nginx: worker process");
    assert!(!workers.is_empty() && workers.iter().all(|u| u == "nginx"), "nginx workers' users: {workers:?}");

    let healthy = wait_healthy(&project, &agent);
    say(&format!("companion: agent healthy {:.0} s after the app answered", healthy.as_secs_f64()));

    // The agent stops alone, gracefully; nginx goes on serving the last config.
    let took = stop(&project, &agent);
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}\n{}", project.logs());
    assert!(project.logs().contains("shutting down"), "{}", project.logs());
    project.assert_answers(port, "shop.test", 200, Some("shop"));
    say(&format!("companion: agent stopped in {:.1} s, nginx still serves", took.as_secs_f64()));
}

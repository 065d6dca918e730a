//! The shell scripts a new user's machine runs before anything else: `scripts/setup-host` (called
//! by `.ci/run` and `compose/demo/run`) and `scripts/local-images` (the demo's and the tests'
//! images).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::docker::docker_output;
use crate::support::in_ci;

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Another apt run (unattended-upgrades on a fresh VM) holds the package lists' lock for a few
/// seconds: setup-host says so and waits, then installs, instead of failing with apt's output.
/// Installs Debian's tiny `hello` package for real (and removes it again), so it needs root.
#[test]
fn setup_host_waits_while_another_apt_run_holds_the_lock() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        assert!(!in_ci(), "CI runs as root on Debian: this test must run there");
        eprintln!("\n*** SKIPPED setup_host_waits_while_another_apt_run_holds_the_lock: needs root and apt-get ***\n");
        return;
    }
    let installed = || {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "hello"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let purge = || {
        let out = Command::new("apt-get").args(["purge", "-y", "-qq", "hello"]).output().unwrap();
        assert!(out.status.success(), "apt-get purge hello: {}", String::from_utf8_lossy(&out.stderr));
    };
    if installed() {
        purge();
    }
    // apt takes its locks with fcntl(F_SETLK); Python's lockf is the same lock.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl, sys, time\n\
             f = open('/var/lib/apt/lists/lock', 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True); time.sleep(6)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "locked\n");
    let started = Instant::now();
    let out = Command::new("bash").arg(script("setup-host")).arg("hello").env("APT_LOCK_WAIT", "120").output().unwrap();
    let waited = started.elapsed();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let was_installed = installed();
    if was_installed {
        purge();
    }
    assert!(out.status.success(), "setup-host failed ({}):\n{stderr}", out.status);
    assert!(
        stderr.contains("another apt or dpkg run holds the package lists' lock (held by process")
            && stderr.contains("(python3)); waiting up to 120s"),
        "{stderr}"
    );
    assert!(!stderr.contains("E: "), "apt's raw error reached the user:\n{stderr}");
    assert!(waited >= Duration::from_secs(4), "did not wait for the lock: {waited:?}");
    assert!(was_installed, "hello was not installed after the wait:\n{stderr}");
}

/// Two builds of the agent image with different binaries leave one agent image, not two; the
/// nginx and app images, unchanged, are reused (the same tag both times).
#[test]
fn local_images_keep_one_image_per_repository() {
    require_docker!();
    let prefix = format!("smart-proxy-test-gc{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let run = |binary: &str| {
        let agent = dir.path().join("agent");
        std::fs::copy(binary, &agent).unwrap();
        let out = Command::new("bash")
            .arg(script("local-images"))
            .arg("--agent")
            .arg(&agent)
            .env("IMAGE_PREFIX", &prefix)
            .env("IMAGE_KEEP_RECENT", "0")
            .env("NGINX_BIN", crate::support::nginx_bin())
            .output()
            .unwrap();
        assert!(out.status.success(), "local-images: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let images = || {
        let out = docker_output(&["images", "--format", "{{.Repository}}:{{.Tag}}", &format!("{prefix}-*")]);
        let mut refs: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        refs.sort();
        refs
    };
    let first = run("/bin/true");
    let second = run("/bin/false");
    let left = images();
    for image in &left {
        let _ = docker_output(&["rmi", image]);
    }
    assert_ne!(first, second, "a different agent binary must give a new agent tag");
    let agent_line = |out: &str| out.lines().find(|l| l.starts_with("AGENT_IMAGE=")).unwrap()[12..].to_string();
    let mut expected: Vec<String> = second.lines().map(|l| l.split_once('=').unwrap().1.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected, "images left after two builds (first run printed:\n{first})");
    assert!(!left.contains(&agent_line(&first)));
    for name in ["NGINX_IMAGE", "APP_IMAGE"] {
        let line = |out: &str| out.lines().find(|l| l.starts_with(name)).map(String::from);
        assert_eq!(line(&first), line(&second), "{name} was rebuilt although unchanged");
    }
}

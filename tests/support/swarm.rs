//! A Docker engine of the test's own, made a Swarm manager, so that Swarm tests never turn the
//! shared test daemon into one (docs: /work/shared/notes/testing.md, "A real multi-node Swarm").
//!
//! [`SwarmEngine::start`] creates a network namespace with a veth pair whose host end sits on a
//! bridge of its own (a /24 of 10.213.0.0/16: the bridge .1, the namespace .2), allows the bridge
//! to forward to itself (Docker's FORWARD policy is DROP), starts `dockerd` inside the namespace
//! (`nsenter --net`, not `ip netns exec`, which remounts /sys) with an empty config file, the
//! main engine's storage driver and its own data root, exec root, pid file and unix socket, runs
//! `swarm init` on the namespace's address, and loads images from the main engine (`docker save |
//! docker -H … load`). Dropping it leaves the swarm, stops the engine, unmounts what it left,
//! deletes the namespace, the bridge and the iptables rule, also when the test failed. Set
//! `SPTEST_KEEP=1` to leave a failed test's engine running.
//!
//! Starting one takes about a second and a half here (engine 0.6 s, `swarm init` 0.6 s), so each
//! test has its own. A published port of a container in the engine is reached from the host at
//! [`SwarmEngine::address`].

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A registry host where nothing listens: a pull from it fails at once.
const UNPULLABLE: &str = "127.0.0.1:9";

/// The private range the engines' bridges take their /24s from.
const RANGE: [u8; 2] = [10, 213];

pub struct SwarmEngine {
    /// `spsw<n>`: the namespace's and the bridge's name.
    name: String,
    n: u8,
    dir: tempfile::TempDir,
    /// The iptables rule was inserted (and must be deleted).
    forward_rule: bool,
    dockerd: Option<Child>,
    pub startup: Duration,
}

/// Whether a Swarm engine can be started (root, for the network namespace); like
/// `require_docker!()`, a failure under CI and a loud SKIPPED line elsewhere.
pub fn require_root() -> bool {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() == Some("0") {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    assert!(
        !crate::support::in_ci(),
        "{test}: the Swarm tests start a Docker engine in a network namespace of their own, which needs root (run the tests as root, as .ci/run does)"
    );
    eprintln!("\n*** SKIPPED {test}: the Swarm tests need root (a network namespace for their own engine). ***\n");
    false
}

impl SwarmEngine {
    /// A fresh engine, a Swarm manager, with `images` loaded from the main engine.
    pub fn start(images: &[&str]) -> SwarmEngine {
        let began = Instant::now();
        let dir = tempfile::Builder::new().prefix("spsw-").tempdir_in("/tmp").expect("a scratch directory");
        let (n, name) = claim_bridge();
        let mut engine = SwarmEngine { name, n, dir, forward_rule: false, dockerd: None, startup: Duration::ZERO };
        engine.plumb();
        engine.start_dockerd();
        let addr = engine.address().to_string();
        engine.docker(&["swarm", "init", "--advertise-addr", &addr]);
        engine.startup = began.elapsed();
        for image in images {
            engine.load(image);
        }
        engine
    }

    /// The namespace's address: the engine's published ports are reached here from the host.
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::new(RANGE[0], RANGE[1], self.n, 2)
    }

    /// `DOCKER_HOST` for this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// A directory of the test's own (removed with the engine).
    pub fn scratch(&self, sub: &str) -> PathBuf {
        let path = self.dir.path().join(sub);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// `docker -H <engine> args...`, whatever the exit status.
    pub fn docker_output(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
    }

    /// `docker -H <engine> args...`; panics with its stderr unless it succeeds. Stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_output(args);
        assert!(
            out.status.success(),
            "`docker {}` on the Swarm engine failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The name `image` has in this engine: [`SwarmEngine::start`] tags each image it loads with
    /// a registry that refuses at once (`127.0.0.1:9/`), since Swarm tries to pull a task's image
    /// before using the local one, and with no registry reachable that try takes 20 s per task.
    pub fn image(image: &str) -> String {
        format!("{UNPULLABLE}/{image}")
    }

    /// Copies `image` from the main engine (also as [`SwarmEngine::image`]).
    pub fn load(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("docker save");
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(["load", "--quiet"])
            .stdin(save.stdout.take().expect("piped"))
            .output()
            .expect("docker load");
        let saved = save.wait().expect("docker save");
        assert!(saved.success(), "`docker save {image}` failed ({saved})");
        assert!(
            load.status.success(),
            "loading {image} into the Swarm engine: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        self.docker(&["tag", image, &SwarmEngine::image(image)]);
    }

    fn plumb(&mut self) {
        let (ns, bridge, host_end, ns_end) =
            (self.name.clone(), self.name.clone(), format!("{}h", self.name), format!("{}n", self.name));
        let net = |last: u8| format!("{}.{}.{}.{last}/24", RANGE[0], RANGE[1], self.n);
        run("ip", &["netns", "add", &ns]);
        run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end]);
        run("ip", &["link", "set", &ns_end, "netns", &ns]);
        run("ip", &["link", "set", &host_end, "master", &bridge]);
        run("ip", &["addr", "add", &net(1), "dev", &bridge]);
        run("ip", &["link", "set", &bridge, "up"]);
        run("ip", &["link", "set", &host_end, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec![format!("--net=/var/run/netns/{ns}"), "ip".into()];
            all.extend(args.iter().map(|s| s.to_string()));
            run("nsenter", &all.iter().map(String::as_str).collect::<Vec<_>>());
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &net(2), "dev", &ns_end]);
        inside(&["link", "set", &ns_end, "up"]);
        inside(&["route", "add", "default", "via", &format!("{}.{}.{}.1", RANGE[0], RANGE[1], self.n)]);
        run("iptables", &["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
        self.forward_rule = true;
    }

    fn start_dockerd(&mut self) {
        let d = self.dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let driver = crate::support::docker::docker(&["info", "--format", "{{.Driver}}"]);
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        // nsenter execs dockerd: the child is the engine.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("dockerd")
            .args(["--config-file", &p("daemon.json"), "--storage-driver", &driver])
            .args(["--data-root", &p("data"), "--exec-root", &p("exec"), "--pidfile", &p("dockerd.pid")])
            .args(["-H", &self.host()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd (is docker.io installed?)");
        self.dockerd = Some(child);
        let began = Instant::now();
        while !self.docker_output(&["version"]).status.success() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "the Swarm test engine did not answer within 30 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the kernel has IPVS, which Swarm's virtual IPs need (some VM kernels lack it).
    pub fn has_ipvs(&self) -> bool {
        let ns = format!("--net=/var/run/netns/{}", self.name);
        quiet("nsenter", &[&ns, "test", "-e", "/proc/net/ip_vs"]).status.success()
    }

    /// The engine's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Stops the engine (TERM, then KILL after 20 s) and unmounts what it left under its dir.
    fn stop(&mut self) {
        let Some(mut dockerd) = self.dockerd.take() else { return };
        let _ = self.docker_output(&["swarm", "leave", "--force"]);
        let _ = Command::new("kill").arg("-TERM").arg(dockerd.id().to_string()).status();
        let began = Instant::now();
        while matches!(dockerd.try_wait(), Ok(None)) && began.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(dockerd.try_wait(), Ok(None)) {
            let _ = dockerd.kill();
            let _ = dockerd.wait();
        }
        let dir = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&dir)).collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

impl Drop for SwarmEngine {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SPTEST_KEEP").is_some() {
            eprintln!("SPTEST_KEEP is set: leaving the Swarm engine at {} running", self.host());
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()));
            return;
        }
        // Never panic here (a panic while unwinding aborts the test process).
        self.stop();
        if self.forward_rule {
            let _ = quiet("iptables", &["-D", "FORWARD", "-i", &self.name, "-o", &self.name, "-j", "ACCEPT"]);
        }
        let _ = quiet("ip", &["netns", "del", &self.name]);
        let _ = quiet("ip", &["link", "del", &self.name]);
    }
}

/// Creates a bridge `spsw<n>` for the first `n` whose bridge does not exist (creating it is the
/// claim: parallel tests and processes never share one). Bridges left by a killed run stay
/// claimed; `ip link del spsw<n>` frees them.
fn claim_bridge() -> (u8, String) {
    let start = (std::process::id() % 200) as u8;
    for i in 0..200u16 {
        let n = 10 + ((u16::from(start) + i) % 200) as u8;
        let name = format!("spsw{n}");
        if quiet("ip", &["link", "add", &name, "type", "bridge"]).status.success() {
            return (n, name);
        }
    }
    panic!("no free bridge spsw10..spsw209 for a Swarm test engine (left by killed runs? `ip link del spswN`)");
}

fn quiet(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (iproute2, iptables, util-linux: .ci/run installs them): {e}"))
}

fn run(program: &str, args: &[&str]) {
    let out = quiet(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

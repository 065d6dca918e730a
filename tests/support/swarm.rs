//! A Swarm of the test's own, so that Swarm tests never turn the shared test daemon into a
//! manager (docs/testing.md, "Swarm tests").
//!
//! [`SwarmEngine::start`] (one node) and [`SwarmEngine::start_nodes`] claim a bridge of their own
//! (`spsw<n>`, a /24 of 10.213.0.0/16, the bridge at .1), allow it to forward to itself (Docker's
//! FORWARD policy is DROP), and for each node create a network namespace with a veth pair whose
//! host end sits on the bridge (node `i` at .2+i), start `dockerd` inside it (`nsenter --net`,
//! not `ip netns exec`, which remounts /sys) with an empty config file, the main engine's storage
//! driver and its own data root, exec root, pid file and unix socket; node 0 runs `swarm init` on
//! its address and the others join it as workers over the bridge. Images are loaded from the main
//! engine (`docker save | docker -H … load`). Dropping it leaves the swarm, stops the engines,
//! unmounts what they left, deletes the namespaces, the bridge and the iptables rule, also when
//! the test failed. Set `SPTEST_KEEP=1` to leave a failed test's engines running.
//!
//! Starting a node takes about 1.2 s here (engine 0.6 s, `swarm init` 0.6 s), so each test has its
//! own Swarm. A published port of a container on node 0 is reached from the host at
//! [`SwarmEngine::address`].

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A registry host where nothing listens: a pull from it fails at once.
const UNPULLABLE: &str = "127.0.0.1:9";

/// The private range the bridges take their /24s from.
const RANGE: [u8; 2] = [10, 213];

pub struct SwarmEngine {
    /// `spsw<n>`: the bridge's name; node `i`'s namespace is `spsw<n>n<i>`.
    name: String,
    n: u8,
    dir: tempfile::TempDir,
    /// The iptables rule was inserted (and must be deleted).
    forward_rule: bool,
    /// Each node's namespace, and its engine while it runs.
    nodes: Vec<(String, Option<Child>)>,
    /// How long the first node took to be a Swarm manager.
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
    /// A one-node Swarm (a manager) with `images` loaded from the main engine.
    pub fn start(images: &[&str]) -> SwarmEngine {
        SwarmEngine::start_nodes(1, images)
    }

    /// A Swarm of `count` nodes: node 0 the manager, the others workers, each with `images`.
    pub fn start_nodes(count: usize, images: &[&str]) -> SwarmEngine {
        let began = Instant::now();
        let dir = tempfile::Builder::new().prefix("spsw-").tempdir_in("/tmp").expect("a scratch directory");
        let (n, name) = claim_bridge();
        let mut engine = SwarmEngine { name, n, dir, forward_rule: false, nodes: Vec::new(), startup: Duration::ZERO };
        engine.plumb_bridge();
        for i in 0..count {
            engine.add_node(i);
            if i == 0 {
                let addr = engine.address().to_string();
                engine.docker(&["swarm", "init", "--advertise-addr", &addr]);
                engine.startup = began.elapsed();
            } else {
                let token = engine.docker(&["swarm", "join-token", "--quiet", "worker"]);
                let manager = format!("{}:2377", engine.node_address(0));
                let addr = engine.node_address(i).to_string();
                engine.node_docker(i, &["swarm", "join", "--advertise-addr", &addr, "--token", &token, &manager]);
            }
            for image in images {
                engine.load(i, image);
            }
        }
        engine
    }

    /// Node 0's address: its published ports are reached here from the host.
    pub fn address(&self) -> Ipv4Addr {
        self.node_address(0)
    }

    pub fn node_address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(RANGE[0], RANGE[1], self.n, 2 + i as u8)
    }

    /// `DOCKER_HOST` for node 0 (the manager).
    pub fn host(&self) -> String {
        self.node_host(0)
    }

    fn node_host(&self, i: usize) -> String {
        format!("unix://{}", self.node_dir(i).join("docker.sock").display())
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// A directory of the test's own (removed with the engine).
    pub fn scratch(&self, sub: &str) -> PathBuf {
        let path = self.dir.path().join(sub);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// `docker -H <manager> args...`, whatever the exit status.
    pub fn docker_output(&self, args: &[&str]) -> Output {
        self.node_docker_output(0, args)
    }

    pub fn node_docker_output(&self, i: usize, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.node_host(i))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
    }

    /// `docker -H <manager> args...`; panics with its stderr unless it succeeds. Stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        self.node_docker(0, args)
    }

    /// `docker args...` on node `i`, as [`SwarmEngine::docker`].
    pub fn node_docker(&self, i: usize, args: &[&str]) -> String {
        let out = self.node_docker_output(i, args);
        assert!(
            out.status.success(),
            "`docker {}` on Swarm node {i} failed ({}):\n{}",
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

    /// Copies `image` from the main engine to node `i` (also as [`SwarmEngine::image`]).
    fn load(&self, i: usize, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("docker save");
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.node_host(i))
            .args(["load", "--quiet"])
            .stdin(save.stdout.take().expect("piped"))
            .output()
            .expect("docker load");
        let saved = save.wait().expect("docker save");
        assert!(saved.success(), "`docker save {image}` failed ({saved})");
        assert!(
            load.status.success(),
            "loading {image} into Swarm node {i}: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        self.node_docker(i, &["tag", image, &SwarmEngine::image(image)]);
    }

    fn plumb_bridge(&mut self) {
        let bridge = self.name.clone();
        run("ip", &["addr", "add", &format!("{}.{}.{}.1/24", RANGE[0], RANGE[1], self.n), "dev", &bridge]);
        run("ip", &["link", "set", &bridge, "up"]);
        run("iptables", &["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
        self.forward_rule = true;
    }

    /// Node `i`: its namespace on the bridge, and its engine started.
    fn add_node(&mut self, i: usize) {
        let ns = format!("{}n{i}", self.name);
        let (host_end, ns_end) = (format!("{ns}h"), format!("{ns}v"));
        run("ip", &["netns", "add", &ns]);
        self.nodes.push((ns.clone(), None));
        // A pair left by an engine that had this bridge's number and was killed: this engine
        // holds the number now (the bridge), so the names are its own.
        let _ = quiet("ip", &["link", "del", &host_end]);
        run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end]);
        run("ip", &["link", "set", &ns_end, "netns", &ns]);
        run("ip", &["link", "set", &host_end, "master", &self.name]);
        run("ip", &["link", "set", &host_end, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec![format!("--net=/var/run/netns/{ns}"), "ip".into()];
            all.extend(args.iter().map(|s| s.to_string()));
            run("nsenter", &all.iter().map(String::as_str).collect::<Vec<_>>());
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{}/24", self.node_address(i)), "dev", &ns_end]);
        inside(&["link", "set", &ns_end, "up"]);
        inside(&["route", "add", "default", "via", &format!("{}.{}.{}.1", RANGE[0], RANGE[1], self.n)]);

        let d = self.node_dir(i);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let driver = crate::support::docker::docker(&["info", "--format", "{{.Driver}}"]);
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let p = |s: &str| d.join(s).display().to_string();
        // nsenter execs dockerd: the child is the engine.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg("dockerd")
            .args(["--config-file", &p("daemon.json"), "--storage-driver", &driver])
            .args(["--data-root", &p("data"), "--exec-root", &p("exec"), "--pidfile", &p("dockerd.pid")])
            .args(["-H", &self.node_host(i)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd (is docker.io installed?)");
        self.nodes[i].1 = Some(child);
        let began = Instant::now();
        while !self.node_docker_output(i, &["version"]).status.success() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "Swarm node {i}'s engine did not answer within 30 s; its log:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the kernel has IPVS, which Swarm's virtual IPs need (some VM kernels lack it).
    pub fn has_ipvs(&self) -> bool {
        let ns = format!("--net=/var/run/netns/{}", self.nodes[0].0);
        quiet("nsenter", &[&ns, "test", "-e", "/proc/net/ip_vs"]).status.success()
    }

    /// Node `i`'s engine log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("dockerd.log")).unwrap_or_default()
    }

    /// Stops node `i`'s engine (its containers stop with it), as a node that fails; the swarm
    /// is not told.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(dockerd) = self.nodes[i].1.take() {
            stop_engine(dockerd, &self.node_dir(i));
        }
    }

    /// Leaves the swarm and stops every engine (node 0 last).
    fn stop(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            if self.nodes[i].1.is_some() {
                let _ = self.node_docker_output(i, &["swarm", "leave", "--force"]);
            }
            self.stop_node(i);
        }
    }
}

impl Drop for SwarmEngine {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SPTEST_KEEP").is_some() {
            eprintln!("SPTEST_KEEP is set: leaving the Swarm engines (manager at {}) running", self.host());
            std::mem::forget(std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()));
            for (_, dockerd) in &mut self.nodes {
                std::mem::forget(dockerd.take());
            }
            return;
        }
        // Never panic here (a panic while unwinding aborts the test process).
        self.stop();
        for (ns, _) in &self.nodes {
            // The veth pair first, at once: a namespace is destroyed later, in the kernel's own
            // time, with the pair in it, and by then another engine may have this bridge's number
            // and want the same names.
            let _ = quiet("ip", &["link", "del", &format!("{ns}h")]);
            let _ = quiet("ip", &["netns", "del", ns]);
        }
        if self.forward_rule {
            let _ = quiet("iptables", &["-D", "FORWARD", "-i", &self.name, "-o", &self.name, "-j", "ACCEPT"]);
        }
        let _ = quiet("ip", &["link", "del", &self.name]);
    }
}

/// Stops an engine (TERM, then KILL after 20 s) and unmounts what it left under `dir`.
fn stop_engine(mut dockerd: Child, dir: &Path) {
    let _ = Command::new("kill").arg("-TERM").arg(dockerd.id().to_string()).status();
    let began = Instant::now();
    while matches!(dockerd.try_wait(), Ok(None)) && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(dockerd.try_wait(), Ok(None)) {
        let _ = dockerd.kill();
        let _ = dockerd.wait();
    }
    let dir = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut ours: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&dir)).collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = Command::new("umount").arg("-l").arg(m).status();
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

/// GET / on `addr` with `Host: host` (HTTP/1.1, Connection: close).
pub fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

//! End-to-end benchmark of the live agent on the real Docker daemon and the real nginx.
//!
//! `cargo bench --bench agent` (a plain `fn main`, harness = false). The agent binary is the one
//! Cargo builds for benches (`CARGO_BIN_EXE_nginx-smart-proxy`, the release build under the bench
//! profile); it runs as a host process with nginx as its child in LOCAL mode on a free loopback
//! port, launched by the tests' `support::agent::Agent` (in a prefix laid out like a host,
//! `Prefix::HOST`). The backend image is the tests' one (`support::docker::app_image`), the
//! companion phase's images come from `scripts/local-images` (`support::images`). Requests go to
//! 127.0.0.1 and to containers this program creates, nothing else.
//!
//! Figures, in one run:
//! 1. reaction: `docker start` of a labelled, stopped container → first 200 with its body through
//!    nginx (from invoking `docker start` and from its return), beside a floor measured in the same
//!    run (a hand-written server block + `nginx -s reload` on a separate nginx → first 200);
//! 2. idle: the agent's CPU time and RSS over a quiet window; then three agents without Docker
//!    watching a JSON CONFIG_FILE, a custom NGINX_TEMPLATE, and both, over one window;
//! 3. event storm: N labelled containers started at once from several threads → all answer 200,
//!    and how many reloads the agent did;
//! 4. scale: the agent's start-up resync over many labelled containers, and its RSS;
//! 5. 10,000 routes from a JSON CONFIG_FILE: one added domain → it answers, split into the
//!    agent's render / nginx -t / reload and nginx's own reload. First with the built-in template;
//!    when nginx's reload fails there (it did here: one `error_log` file per site exhausts
//!    RLIMIT_NOFILE during a reload), again with the built-in template minus that line.
//!
//! 6. companion: the agent and nginx in containers (exec through the Docker API), isolated
//!    starts and one start a second, beside a floor of the same image in the same run
//!    (`benches/agent_phases/companion.rs`).
//!
//! Percentiles are nearest-rank (with 30 samples p99 is the maximum). Reaction is reported from
//! invoking `docker start`, from its return, and from the daemon's own `start` event.
//!
//! Settings (environment):
//! - `BENCH_QUICK=1`: small N and short windows, for a smoke run (about a minute);
//! - `BENCH_ONLY=reaction,floor,idle,storm,scale,routes,companion`: run only these phases;
//! - `BENCH_REACTION_N` (30), `BENCH_FLOOR_N` (40), `BENCH_IDLE_SECS` (60),
//!   `BENCH_STORM_N` (200), `BENCH_STORM_THREADS` (8), `BENCH_SCALE_N` (1000),
//!   `BENCH_SCALE_START=1` (start the scale containers instead of only creating them),
//!   `BENCH_ROUTES_N` (10000), `BENCH_ROUTE_CHANGES` (3), `BENCH_POLL_MS` (5, the poll period
//!   of the HTTP probes, i.e. the resolution of the reaction figures);
//! - `BENCH_NGINX_BIN` (/usr/sbin/nginx);
//! - `BENCH_SWEEP=1`: only remove the Docker objects left by killed runs, then exit.
//!
//! Cleanup: every container and network is named `spbench-<run>-...` and labelled
//! `spbench.run=<run>` and `spbench.pid=<pid of this program>`. They are removed at the end, on a
//! panic, and on SIGINT/SIGTERM/SIGHUP; objects of runs whose process is gone (killed with -9) are
//! swept at the next start. By hand: `docker rm -f $(docker ps -aq --filter label=spbench.run)`.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

#[path = "../tests/support/mod.rs"]
mod support;

use support::agent::{http_get, http_get_within, write_file, Prefix};
use support::docker::{app_image, docker, docker_output, APP_PORT};
use support::free_port;

const AGENT_BIN: &str = env!("CARGO_BIN_EXE_nginx-smart-proxy");
const RUN_LABEL: &str = "spbench.run";
const PID_LABEL: &str = "spbench.pid";
/// How long a backend container lives at most (`APP_LIFETIME` of the tests' backend image): a
/// container leaked by a killed run ends after it.
const APP_LIFETIME_SECS: u32 = 1200;
const APPLIED_RELOADED: &str = "config applied and nginx reloaded";
/// The agent's defaults, which this benchmark does not override.
const DEBOUNCE_MS: f64 = 100.0;

// =============================================================================================
// Settings

struct Cfg {
    quick: bool,
    only: Option<BTreeSet<String>>,
    reaction_n: usize,
    floor_n: usize,
    idle_secs: u64,
    paced_n: usize,
    storm_n: usize,
    storm_threads: usize,
    scale_n: usize,
    scale_start: bool,
    routes_n: usize,
    route_changes: usize,
    poll: Duration,
    nginx_bin: PathBuf,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl Cfg {
    fn from_env() -> Cfg {
        let quick = env_flag("BENCH_QUICK");
        let q = |full: usize, small: usize| if quick { small } else { full };
        Cfg {
            quick,
            only: std::env::var("BENCH_ONLY")
                .ok()
                .map(|s| s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()),
            reaction_n: env_num("BENCH_REACTION_N", q(30, 5)),
            floor_n: env_num("BENCH_FLOOR_N", q(40, 5)),
            idle_secs: env_num("BENCH_IDLE_SECS", if quick { 5 } else { 60 }),
            paced_n: env_num("BENCH_PACED_N", q(20, 5)),
            storm_n: env_num("BENCH_STORM_N", q(200, 20)),
            storm_threads: env_num("BENCH_STORM_THREADS", 8),
            scale_n: env_num("BENCH_SCALE_N", q(1000, 40)),
            scale_start: env_flag("BENCH_SCALE_START"),
            routes_n: env_num("BENCH_ROUTES_N", q(10_000, 500)).max(1),
            route_changes: env_num("BENCH_ROUTE_CHANGES", q(3, 2)).max(1),
            poll: Duration::from_millis(env_num("BENCH_POLL_MS", 5)),
            nginx_bin: PathBuf::from(std::env::var("BENCH_NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into())),
        }
    }

    fn runs(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|set| set.contains(phase))
    }
}

// =============================================================================================
// Cleanup registry: what a signal or a panic must still clean up.

#[derive(Default)]
struct Registry {
    run_id: Option<String>,
    /// Processes we started, with the nginx pid file they own (if any).
    procs: Vec<(u32, Option<PathBuf>)>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { run_id: None, procs: Vec::new(), dirs: Vec::new() });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn register_proc(pid: u32, nginx_pid_file: Option<PathBuf>) {
    registry().procs.push((pid, nginx_pid_file));
}

fn unregister_proc(pid: u32) {
    registry().procs.retain(|(p, _)| *p != pid);
}

fn register_dir(dir: &Path) {
    registry().dirs.push(dir.to_path_buf());
}

fn unregister_dir(dir: &Path) {
    registry().dirs.retain(|d| d != dir);
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn nginx_pid_from(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Stops every process still registered, removes the temp dirs and this run's Docker objects.
/// Idempotent; never panics.
fn cleanup_all() {
    let (run_id, procs, dirs) = {
        let mut r = registry();
        (r.run_id.take(), std::mem::take(&mut r.procs), std::mem::take(&mut r.dirs))
    };
    for (pid, _) in &procs {
        signal(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs.iter().any(|(p, _)| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, pid_file) in &procs {
        if alive(*pid) {
            signal(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(nginx) = pid_file.as_deref().and_then(nginx_pid_from) {
            if alive(nginx) {
                signal(nginx, nix::sys::signal::Signal::SIGQUIT);
            }
        }
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Some(run_id) = run_id {
        remove_docker_objects(&format!("label={RUN_LABEL}={run_id}"));
    }
}

/// Force-removes the containers and networks matching a `docker ... --filter` expression.
fn remove_docker_objects(filter: &str) {
    let list = |args: &[&str]| -> Vec<String> {
        let out = docker_output(args);
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
    };
    let networks = list(&["network", "ls", "--quiet", "--filter", filter]);
    // Disconnect running containers one by one first: removing hundreds of running containers
    // of one network in parallel leaves the daemon's endpoint count of the network too high
    // (Docker 20.10, moby/moby#42119), and then the network cannot be removed until dockerd
    // restarts.
    for network in &networks {
        let out = docker_output(&[
            "network",
            "inspect",
            "--format",
            "{{range $k, $v := .Containers}}{{$v.Name}} {{end}}",
            network,
        ]);
        for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker_output(&["network", "disconnect", "--force", network, name]);
        }
    }
    let containers = list(&["ps", "--all", "--quiet", "--filter", filter]);
    if !containers.is_empty() {
        eprintln!("[cleanup] removing {} containers ({filter})", containers.len());
        let chunks: Vec<Vec<String>> = containers.chunks(25).map(<[String]>::to_vec).collect();
        par_map(&chunks, 8, |chunk| {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(chunk.iter().map(String::as_str));
            let out = docker_output(&args);
            if !out.status.success() {
                eprintln!("[cleanup] warning: docker rm failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        });
    }
    if !networks.is_empty() {
        let mut args = vec!["network", "rm"];
        args.extend(networks.iter().map(String::as_str));
        let out = docker_output(&args);
        if !out.status.success() {
            eprintln!(
                "[cleanup] warning: docker network rm failed: {}\n[cleanup] (an empty network that still \"has active endpoints\" is moby/moby#42119: it goes away with `docker network rm` after dockerd restarts)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Removes objects of earlier runs whose benchmark process is gone (killed with -9).
fn sweep_leftovers() {
    let mut dead = BTreeSet::new();
    for args in [
        vec![
            "ps",
            "--all",
            "--filter",
            "label=spbench.run",
            "--format",
            "{{.Label \"spbench.run\"}} {{.Label \"spbench.pid\"}}",
        ],
        vec![
            "network",
            "ls",
            "--filter",
            "label=spbench.run",
            "--format",
            "{{.Label \"spbench.run\"}} {{.Label \"spbench.pid\"}}",
        ],
    ] {
        let out = docker_output(&args);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut parts = line.split_whitespace();
            let (Some(run), pid) = (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok())) else { continue };
            let owner_alive = pid.is_some_and(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("agent"))
                    && alive(p)
            });
            if !owner_alive {
                dead.insert(run.to_string());
            }
        }
    }
    for run in dead {
        eprintln!("[sweep] removing leftovers of killed run {run}");
        remove_docker_objects(&format!("label={RUN_LABEL}={run}"));
    }
}

/// SIGINT/SIGTERM/SIGHUP: clean up, then exit. Must run before any other thread is spawned, so
/// every thread inherits the blocked mask (child processes get a clean mask from std).
fn install_signal_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().expect("block signals");
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("\n[bench] {sig:?}: cleaning up");
            cleanup_all();
            std::process::exit(128 + sig as i32);
        }
    });
}

// =============================================================================================
// Small helpers

fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return;
                }
                let r = f(&items[i]);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.expect("every item ran")).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wall_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Wall-clock time (unix seconds) of an `Instant` in the past.
fn wall_of(at: Instant) -> f64 {
    wall_now() - at.elapsed().as_secs_f64()
}

/// Nearest-rank percentile of sorted data.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

/// "p50 x  p90 y  p99 z  min a  max b (n=..)" in ms.
fn dist(v: &[f64]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    let s = sorted(v.to_vec());
    format!(
        "p50 {:7.1}  p90 {:7.1}  p99 {:7.1}  min {:7.1}  max {:7.1} ms (n={})",
        pct(&s, 50.0),
        pct(&s, 90.0),
        pct(&s, 99.0),
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
        s.len()
    )
}

fn median(v: &[f64]) -> f64 {
    pct(&sorted(v.to_vec()), 50.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn uptime() -> String {
    Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| format!("load average: {}", loadavg()))
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench {:>7.1}s] {}", started_at().elapsed().as_secs_f64(), msg.as_ref());
}

fn started_at() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Polls `check` every `every` until it holds; the instant it held, or None after `timeout`.
fn poll_until(timeout: Duration, every: Duration, mut check: impl FnMut() -> bool) -> Option<Instant> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(Instant::now());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

fn ok_with(port: u16, host: &str, body: &str) -> bool {
    let (s, b) = http_get(port, host, "/");
    s == 200 && b.trim_end() == body
}

/// (VmRSS, VmHWM) in kB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// (utime + stime, cutime + cstime) in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    // After the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    (get(10) + get(11), get(12) + get(13))
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// `2026-05-07T21:13:21.123456Z` → unix seconds (UTC; an offset suffix is ignored).
fn parse_ts(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let time = time.split(['+', '-']).next()?;
    let mut t = time.split(':');
    let (h, mi) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = if y2 >= 0 { y2 } else { y2 - 399 } / 400;
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60) as f64 + sec)
}

// =============================================================================================
// Docker (the CLI; objects owned by this run)

/// This run's Docker objects; removed when dropped (also on panic).
struct BenchDocker {
    run_id: String,
}

impl BenchDocker {
    fn new() -> BenchDocker {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let run_id = format!("{:x}{:03x}", std::process::id(), (nanos >> 10) & 0xfff);
        registry().run_id = Some(run_id.clone());
        BenchDocker { run_id }
    }

    /// A label prefix for one phase's agent: `spbench<run><tag>`.
    fn prefix(&self, tag: &str) -> String {
        format!("spbench{}{tag}", self.run_id)
    }

    fn name(&self, short: &str) -> String {
        format!("spbench-{}-{short}", self.run_id)
    }

    fn owner_args(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{RUN_LABEL}={}", self.run_id),
            "--label".into(),
            format!("{PID_LABEL}={}", std::process::id()),
        ]
    }

    fn network(&self, short: &str) -> String {
        let name = self.name(short);
        let mut args: Vec<String> = vec!["network".into(), "create".into()];
        args.extend(self.owner_args());
        args.push(name.clone());
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        name
    }

    /// `docker create` of a backend answering `short`, with `<prefix>.domains=<domain>` when given.
    fn create(&self, short: &str, route: Option<(&str, &str)>, network: &str) -> String {
        let name = self.name(short);
        let mut args: Vec<String> = vec!["create".into(), "--name".into(), name.clone()];
        args.extend(self.owner_args());
        if let Some((prefix, domain)) = route {
            args.extend(["--label".into(), format!("{prefix}.domains={domain}")]);
        }
        args.extend(["--env".into(), format!("APP_NAME={short}"), "--network".into(), network.into()]);
        args.extend(["--env".into(), format!("APP_LIFETIME={APP_LIFETIME_SECS}")]);
        args.extend(["--stop-timeout".into(), "1".into(), app_image()]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        name
    }

    fn start(&self, name: &str) {
        docker(&["start", name]);
    }

    fn stop(&self, name: &str) {
        docker(&["stop", "--time", "1", name]);
    }

    fn ip(&self, name: &str) -> String {
        docker(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name])
    }
}

impl Drop for BenchDocker {
    fn drop(&mut self) {
        registry().run_id = None;
        remove_docker_objects(&format!("label={RUN_LABEL}={}", self.run_id));
    }
}

/// Docker events of the kinds the agent subscribes to between two unix times: (all, those about
/// objects whose name starts with `own_prefix`).
fn subscribed_events(since: f64, until: f64, own_prefix: &str) -> (usize, usize) {
    let mut args: Vec<String> = vec![
        "events".into(),
        "--since".into(),
        format!("{since:.3}"),
        "--until".into(),
        format!("{until:.3}"),
        "--format".into(),
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}".into(),
    ];
    for t in ["container", "network"] {
        args.extend(["--filter".into(), format!("type={t}")]);
    }
    for e in ["start", "die", "stop", "destroy", "rename", "health_status", "connect", "disconnect"] {
        args.extend(["--filter".into(), format!("event={e}")]);
    }
    let out = docker_output(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    let all = text.lines().count();
    let own = text.lines().filter(|l| l.split_whitespace().nth(2).is_some_and(|n| n.starts_with(own_prefix))).count();
    (all, own)
}

// =============================================================================================
// The agent's log (JSON lines)

#[derive(Clone, Debug)]
struct LogLine {
    /// When the benchmark read it.
    seen: Instant,
    /// The line's own timestamp (unix seconds).
    ts: Option<f64>,
    msg: String,
    fields: Value,
}

impl LogLine {
    fn num(&self, key: &str) -> f64 {
        self.fields.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
    }

    fn str(&self, key: &str) -> String {
        self.fields.get(key).and_then(Value::as_str).unwrap_or("").to_string()
    }

    fn is_applied(&self) -> bool {
        self.msg.starts_with("config applied")
    }

    fn is_reload(&self) -> bool {
        self.msg == APPLIED_RELOADED
    }

    /// The line's timestamp, or when it was read.
    fn wall(&self) -> f64 {
        self.ts.unwrap_or_else(|| wall_of(self.seen))
    }
}

struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    lines: Vec<LogLine>,
}

impl LogTail {
    fn new(path: PathBuf) -> LogTail {
        LogTail { path, offset: 0, partial: String::new(), lines: Vec::new() }
    }

    fn refresh(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = file.read_to_end(&mut buf) else { return };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let now = Instant::now();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parsed = match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    let fields = v.get("fields").cloned().unwrap_or(Value::Null);
                    LogLine {
                        seen: now,
                        ts: v.get("timestamp").and_then(Value::as_str).and_then(parse_ts),
                        msg: fields.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
                        fields,
                    }
                }
                Err(_) => LogLine { seen: now, ts: None, msg: line.to_string(), fields: Value::Null },
            };
            self.lines.push(parsed);
        }
    }

    fn applied_count(&mut self) -> usize {
        self.refresh();
        self.lines.iter().filter(|l| l.is_applied()).count()
    }

    fn nth_applied(&self, n: usize) -> Option<LogLine> {
        self.lines.iter().filter(|l| l.is_applied()).nth(n).cloned()
    }

    fn find(&mut self, msg: &str) -> Option<LogLine> {
        self.refresh();
        self.lines.iter().find(|l| l.msg.starts_with(msg)).cloned()
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

// =============================================================================================
// The agent as a process (nginx its child): the tests' launcher in a prefix laid out like a host
// (`etc/` is nginx's config directory, which the agent's `nginx -t` copies; logs and certs live
// outside it), JSON logs tailed, registered for the signal cleanup.

struct Agent {
    agent: support::agent::Agent,
    port: u16,
    pid: u32,
    spawned: Instant,
    tail: LogTail,
}

impl Agent {
    fn spawn(cfg: &Cfg, env: &[(&str, String)]) -> Agent {
        let nginx_bin = cfg.nginx_bin.display().to_string();
        let mut vars: Vec<(&str, &str)> = vec![("NGINX_BIN", &nginx_bin), ("LOG_FORMAT", "json")];
        vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut agent = support::agent::Agent::local(Prefix::HOST, &vars);
        register_dir(agent.dir.path());
        let spawned = Instant::now();
        agent.spawn();
        let pid = agent.pid().expect("running");
        register_proc(pid, Some(agent.nginx_pid_file()));
        let tail = LogTail::new(agent.path("agent.log"));
        Agent { port: agent.port, agent, pid, spawned, tail }
    }

    fn get(&self, host: &str) -> (u16, String) {
        http_get(self.port, host, "/")
    }

    /// Waits until nginx answers at all.
    fn wait_ready(&mut self, timeout: Duration) {
        let port = self.port;
        if poll_until(timeout, Duration::from_millis(10), || http_get(port, "unknown.invalid", "/").0 != 0).is_none() {
            self.fail("nginx to answer");
        }
    }

    fn wait_status(&mut self, host: &str, status: u16, body: Option<&str>, timeout: Duration) -> Instant {
        let port = self.port;
        match poll_until(timeout, Duration::from_millis(10), || {
            let (s, b) = http_get(port, host, "/");
            s == status && body.is_none_or(|want| b.trim_end() == want)
        }) {
            Some(at) => at,
            None => self.fail(&format!("{host} to answer {status} {body:?} (it answers {:?})", self.get(host))),
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let log = self.tail.text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("timed out waiting for {what}\n--- agent log (last 60 lines) ---\n{}", tail.join("\n"));
    }

    fn nginx_pid(&self) -> Option<u32> {
        self.agent.nginx_pid_now()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent stops nginx gracefully (SIGQUIT), which waits for open connections; a request
        // left hanging on a vanished backend would hold it: give it 3 s, then stop nginx fast.
        self.agent.shutdown(Duration::from_secs(3), "TERM");
        unregister_proc(self.pid);
        unregister_dir(self.agent.dir.path());
    }
}

fn agent_env(prefix: &str) -> Vec<(&'static str, String)> {
    vec![("LABEL_PREFIX", prefix.to_string())]
}

// =============================================================================================
// The floor: a separate nginx, a hand-written server block, `nginx -s reload`.

struct FloorNginx {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    pid: u32,
    bin: PathBuf,
}

impl FloorNginx {
    fn start(cfg: &Cfg) -> FloorNginx {
        let dir = tempfile::Builder::new().prefix("spbench-floor-").tempdir().unwrap();
        register_dir(dir.path());
        std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
        let port = free_port();
        let p = |s: &str| dir.path().join(s);
        std::fs::write(
            p("nginx.conf"),
            format!(
                "pid {pid};\nerror_log {err} notice;\nworker_processes 1;\nevents {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n    server {{ listen {port} default_server; server_name _; return 404; }}\n    include {confd}/*.conf;\n}}\n",
                pid = p("nginx.pid").display(),
                err = p("error.log").display(),
                confd = p("conf.d").display()
            ),
        )
        .unwrap();
        let child = Command::new(&cfg.nginx_bin)
            .arg("-c")
            .arg(p("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the floor nginx");
        let pid = child.id();
        register_proc(pid, None);
        let floor = FloorNginx { dir, port, child: Some(child), pid, bin: cfg.nginx_bin.clone() };
        if poll_until(Duration::from_secs(10), Duration::from_millis(10), || http_get(port, "x.invalid", "/").0 != 0)
            .is_none()
        {
            panic!("the floor nginx does not answer");
        }
        floor
    }

    fn nginx(&self, args: &[&str]) {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nginx");
        assert!(out.status.success(), "nginx {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for FloorNginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        unregister_proc(self.pid);
        unregister_dir(self.dir.path());
    }
}

// =============================================================================================
// Results

#[derive(Default)]
struct Results {
    lines: Vec<String>,
    targets: Vec<(String, bool, String)>,
    reaction_invoke: Vec<f64>,
    reaction_return: Vec<f64>,
    reaction_event: Vec<f64>,
    floor: Vec<f64>,
}

impl Results {
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("{line}");
        self.lines.push(line);
    }

    fn target(&mut self, what: impl Into<String>, met: bool, detail: impl Into<String>) {
        self.targets.push((what.into(), met, detail.into()));
    }
}

// =============================================================================================
// Phase 1: reaction (+ the agent reused for the idle phase)

struct ReactionSetup {
    agent: Agent,
}

fn phase_reaction(cfg: &Cfg, d: &BenchDocker, net: &str, res: &mut Results) -> ReactionSetup {
    let prefix = d.prefix("r");
    progress("reaction: creating 3 running apps and the stopped `react` container");
    let idle: Vec<String> = (0..3).map(|i| format!("idle{i}")).collect();
    par_map(&idle, 3, |s| {
        let name = d.create(s, Some((&prefix, &format!("{s}.test"))), net);
        d.start(&name);
    });
    let react = d.create("react", Some((&prefix, "react.test")), net);
    let mut agent = Agent::spawn(cfg, &agent_env(&prefix));
    agent.wait_ready(Duration::from_secs(30));
    agent.wait_status("idle0.test", 200, Some("idle0"), Duration::from_secs(30));
    agent.wait_status("react.test", 502, None, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));

    let load_before = loadavg();
    progress(format!("reaction: {} starts (load {load_before})", cfg.reaction_n));
    let port = agent.port;
    let (mut invoke, mut ret, mut ret_to_line, mut line_to_200, mut render, mut test) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut start_cli = Vec::new();
    let react_id: String = docker(&["inspect", "--format", "{{.Id}}", &react]).chars().take(12).collect();
    // (foreign causes in the pass that made react.test answer, latency from the start's return)
    let mut by_foreign: Vec<(usize, f64)> = Vec::new();
    let mut cycle = Vec::new();
    let mut walls: Vec<(f64, f64)> = Vec::new();
    let since = wall_now();
    for i in 0..cfg.reaction_n {
        let t_cycle = Instant::now();
        let before = agent.tail.applied_count();
        let name = react.clone();
        let t0 = Instant::now();
        let starter = std::thread::spawn(move || {
            let out = docker_output(&["start", &name]);
            (Instant::now(), out)
        });
        let t200 = poll_until(Duration::from_secs(30), cfg.poll, || ok_with(port, "react.test", "react"))
            .unwrap_or_else(|| agent.fail("react.test to answer 200 after docker start"));
        let (t_ret, out) = starter.join().unwrap();
        assert!(out.status.success(), "docker start failed: {}", String::from_utf8_lossy(&out.stderr));
        invoke.push(ms(t200 - t0));
        ret.push(ms(t200.saturating_duration_since(t_ret)));
        walls.push((wall_of(t0), wall_of(t200)));
        start_cli.push(ms(t_ret - t0));
        if poll_until(Duration::from_secs(10), Duration::from_millis(5), || agent.tail.applied_count() > before)
            .is_some()
        {
            if let Some(line) = agent.tail.nth_applied(before) {
                ret_to_line.push((line.wall() - wall_of(t_ret)) * 1000.0);
                line_to_200.push((wall_of(t200) - line.wall()) * 1000.0);
                render.push(line.num("render_ms"));
                test.push(line.num("test_ms"));
                let foreign = line
                    .str("cause")
                    .split("; ")
                    .filter(|c| {
                        let who = c.split(": ").next().unwrap_or("");
                        !who.is_empty() && who != react && who != react_id
                    })
                    .count();
                by_foreign.push((foreign, ms(t200.saturating_duration_since(t_ret))));
            }
        }
        // Back to the precondition: stopped, answering 502, the agent's pass for the stop done.
        let before = agent.tail.applied_count();
        let t_stop = Instant::now();
        d.stop(&react);
        let stop_cli = t_stop.elapsed().as_secs_f64();
        // Until the agent applies the stop, nginx still proxies to the vanished address and a
        // request hangs (proxy_connect_timeout): wait for the pass first, then for the 502.
        if poll_until(Duration::from_secs(10), Duration::from_millis(10), || agent.tail.applied_count() > before)
            .is_none()
        {
            agent.fail("the agent to apply the stop");
        }
        let wait_applied = t_stop.elapsed().as_secs_f64() - stop_cli;
        if poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
            http_get_within(port, "react.test", "/", Duration::from_millis(500)).0 == 502
        })
        .is_none()
        {
            agent.fail("react.test to answer 502 after docker stop");
        }
        let wait_502 = t_stop.elapsed().as_secs_f64() - stop_cli - wait_applied;
        std::thread::sleep(Duration::from_millis(300));
        cycle.push(t_cycle.elapsed().as_secs_f64());
        if (i + 1) % 10 == 0 || cfg.reaction_n <= 10 {
            progress(format!(
                "reaction: {}/{} (last: {:.0} ms from invoke, {:.0} ms from return; docker stop {:.1} s, then stop applied after {:.1} s, 502 after {:.1} s; cycle {:.1} s)",
                i + 1,
                cfg.reaction_n,
                invoke[i],
                ret[i],
                stop_cli,
                wait_applied,
                wait_502,
                cycle[i]
            ));
        }
    }
    let (events, own) = subscribed_events(since, wall_now(), &d.name(""));
    let window = wall_now() - since;
    // The daemon's own event times for `react`: its network connect (first) and its start.
    let full_id = docker(&["inspect", "--format", "{{.Id}}", &react]);
    let times = |args: &[&str], want: Option<&str>| -> Vec<f64> {
        let mut all = vec!["events", "--since", &format!("{since:.3}"), "--until", &format!("{:.3}", wall_now())]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        all.extend(args.iter().map(|a| a.to_string()));
        let out = docker_output(&all.iter().map(String::as_str).collect::<Vec<_>>());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let t = parts.next()?.parse::<f64>().ok()? / 1e9;
                match want {
                    Some(w) if parts.next() != Some(w) => None,
                    _ => Some(t),
                }
            })
            .collect()
    };
    let starts = times(
        &["--filter", &format!("container={full_id}"), "--filter", "event=start", "--format", "{{.TimeNano}}"],
        None,
    );
    let connects = times(
        &[
            "--filter",
            "type=network",
            "--filter",
            "event=connect",
            "--format",
            "{{.TimeNano}} {{.Actor.Attributes.container}}",
        ],
        Some(&full_id),
    );
    let first_in =
        |ts: &[f64], (a, b): (f64, f64)| ts.iter().copied().filter(|t| *t >= a - 0.05 && *t <= b).reduce(f64::min);
    let mut from_connect = Vec::new();
    let mut from_start = Vec::new();
    for w in &walls {
        if let Some(t) = first_in(&connects, *w) {
            from_connect.push((w.1 - t) * 1000.0);
        }
        if let Some(t) = first_in(&starts, *w) {
            from_start.push((w.1 - t) * 1000.0);
        }
    }
    res.say(format!(
        "\n== 1. Reaction: docker start → first 200 with the app's body (load before {load_before}, after {})",
        loadavg()
    ));
    res.say(format!("   from invoking `docker start`: {}", dist(&invoke)));
    res.say(format!("   from its return:              {}", dist(&ret)));
    res.say(format!(
        "   from the daemon's network-connect event of the container (its first): {}",
        dist(&from_connect)
    ));
    res.say(format!("   from the daemon's start event:                                         {}", dist(&from_start)));
    res.say(format!("   (`docker start` CLI itself:   {})", dist(&start_cli)));
    res.say(format!("   split (agent log timestamps): start returned → 'config applied' line {}", dist(&ret_to_line)));
    res.say(format!("                                 line → first 200 (nginx's reload)      {}", dist(&line_to_200)));
    res.say(format!(
        "                                 agent render_ms median {:.0}, test_ms median {:.0} (p99 {:.0}); DEBOUNCE 100ms is inside the first",
        median(&render),
        median(&test),
        pct(&sorted(test.clone()), 99.0)
    ));
    let quiet: Vec<f64> = by_foreign.iter().filter(|(f, _)| *f == 0).map(|(_, v)| *v).collect();
    let noisy: Vec<f64> = by_foreign.iter().filter(|(f, _)| *f > 0).map(|(_, v)| *v).collect();
    res.say(format!(
        "   Docker events the agent received meanwhile: {events} in {window:.0} s, {} of them about other users' containers ({:.1}/s)",
        events - own,
        (events - own) as f64 / window
    ));
    res.say(format!("   from return, passes whose cause lists no foreign container: {}", dist(&quiet)));
    res.say(format!("   from return, passes whose cause lists foreign containers:   {}", dist(&noisy)));
    res.say(format!(
        "   probe period {} ms (resolution of these figures); start+stop cycle median {:.1} s",
        cfg.poll.as_millis(),
        median(&cycle)
    ));
    res.reaction_invoke = invoke;
    res.reaction_return = ret;
    res.reaction_event = from_start;
    ReactionSetup { agent }
}

// =============================================================================================
// Floor

fn phase_floor(cfg: &Cfg, d: &BenchDocker, net: &str, res: &mut Results) {
    let backend = d.create("floorapp", None, net);
    d.start(&backend);
    let ip = d.ip(&backend);
    let floor = FloorNginx::start(cfg);
    let site = floor.dir.path().join("conf.d/site.conf");
    let port = floor.port;
    let block = |host: &str| {
        format!(
            "server {{\n    listen {port};\n    server_name {host};\n    location / {{\n        proxy_pass http://{ip}:{APP_PORT};\n        proxy_http_version 1.1;\n        proxy_set_header Host $host;\n    }}\n}}\n"
        )
    };
    // Warm up (the backend is up, nginx has opened its files).
    write_file(&site, &block("warm.test"));
    floor.nginx(&["-s", "reload"]);
    poll_until(Duration::from_secs(10), cfg.poll, || ok_with(port, "warm.test", "floorapp")).expect("floor warm-up");

    let load_before = loadavg();
    progress(format!(
        "floor: {} × (write + nginx -s reload), and {} × (write + nginx -t + reload)",
        cfg.floor_n, cfg.floor_n
    ));
    let mut plain = Vec::new();
    let mut with_test = Vec::new();
    for i in 0..cfg.floor_n * 2 {
        let tested = i % 2 == 1;
        let host = format!("floor{i}.test");
        let text = block(&host);
        let t0 = Instant::now();
        write_file(&site, &text);
        if tested {
            floor.nginx(&["-t", "-q"]);
        }
        floor.nginx(&["-s", "reload"]);
        let t200 = poll_until(Duration::from_secs(10), cfg.poll, || ok_with(port, &host, "floorapp"))
            .unwrap_or_else(|| panic!("the floor nginx never answered {host}"));
        if tested {
            with_test.push(ms(t200 - t0));
        } else {
            plain.push(ms(t200 - t0));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    res.say(format!(
        "\n== Floor: hand-written server block + `nginx -s reload` → first 200 (load before {load_before}, after {})",
        loadavg()
    ));
    res.say(format!("   write + reload:           {}", dist(&plain)));
    res.say(format!("   write + nginx -t + reload {}", dist(&with_test)));
    res.floor = plain;
}

// =============================================================================================
// Idle

fn phase_idle(cfg: &Cfg, setup: &mut ReactionSetup, res: &mut Results) {
    let agent = &mut setup.agent;
    std::thread::sleep(Duration::from_secs(3));
    agent.tail.refresh();
    let lines_before = agent.tail.lines.len();
    let tck = clock_ticks_per_sec();
    progress(format!("idle: {} s with nothing happening (load {})", cfg.idle_secs, loadavg()));
    let since = wall_now();
    let (cpu0, ccpu0) = cpu_ticks(agent.pid);
    let (rss0, _) = rss_kb(agent.pid);
    std::thread::sleep(Duration::from_secs(cfg.idle_secs));
    let (cpu1, ccpu1) = cpu_ticks(agent.pid);
    let (rss1, hwm1) = rss_kb(agent.pid);
    let until = wall_now();
    agent.tail.refresh();
    let lines_during = agent.tail.lines.len() - lines_before;
    // Events the agent subscribes to, from anyone on this daemon, during the window.
    let (n_events, _) = subscribed_events(since, until, "");
    let nginx_rss = agent.nginx_pid().map(|p| rss_kb(p).0).unwrap_or(0);
    let cpu_ms = (cpu1 - cpu0) as f64 * 1000.0 / tck as f64;
    let ccpu_ms = (ccpu1 - ccpu0) as f64 * 1000.0 / tck as f64;
    res.say(format!(
        "\n== 4. Idle: {} s, agent with 3 running + 1 stopped labelled containers (load {})",
        cfg.idle_secs,
        loadavg()
    ));
    res.say(format!(
        "   agent CPU (utime+stime): {} ticks = {cpu_ms:.0} ms ({:.3}% of one core); children (nginx -t): {ccpu_ms:.0} ms",
        cpu1 - cpu0,
        cpu_ms / (cfg.idle_secs as f64 * 10.0)
    ));
    res.say(format!(
        "   agent RSS: {:.1} MB at start, {:.1} MB at end (peak VmHWM {:.1} MB); nginx master RSS {:.1} MB",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        hwm1 as f64 / 1024.0,
        nginx_rss as f64 / 1024.0
    ));
    res.say(format!(
        "   during the window: {n_events} Docker events the agent subscribes to (other users of the daemon), {lines_during} agent log lines"
    ));
    if n_events > 0 {
        res.say(format!("   ≈ {:.2} ms of agent CPU per received event", cpu_ms / n_events as f64));
    }
    res.target(
        "idle: no measurable CPU",
        cpu1 == cpu0,
        format!(
            "{} ticks ({cpu_ms:.0} ms) over {} s; {n_events} foreign Docker events in the window",
            cpu1 - cpu0,
            cfg.idle_secs
        ),
    );
    res.target("idle: RSS ≤ 20 MB", rss1 <= 20 * 1024, format!("{:.1} MB", rss1 as f64 / 1024.0));
}

/// The seed's configuration mode, idle: three agents without Docker, watching a JSON
/// `CONFIG_FILE`, a custom `NGINX_TEMPLATE` (with `DOMAINS`), and both, over one window.
fn phase_idle_files(cfg: &Cfg, res: &mut Results) {
    let dir = tempfile::Builder::new().prefix("spbench-files-").tempdir().unwrap();
    let json = dir.path().join("routes.json");
    std::fs::write(
        &json,
        r#"{"domains":[{"name":"a.test","service":"web"},{"name":"b.test","service":"web"}],"services":[{"name":"web","host":"127.0.0.1","port":9}]}"#,
    )
    .unwrap();
    let template = dir.path().join("custom.conf.j2");
    std::fs::write(&template, smart_proxy::render::BUILTIN_TEMPLATE).unwrap();
    let (json, template) = (json.display().to_string(), template.display().to_string());
    let setups: [(&str, Vec<(&str, String)>); 3] = [
        ("JSON config", vec![("CONFIG_FILE", json.clone())]),
        ("template", vec![("NGINX_TEMPLATE", template.clone()), ("DOMAINS", "a.test,b.test".into())]),
        ("both", vec![("CONFIG_FILE", json), ("NGINX_TEMPLATE", template)]),
    ];
    let mut agents: Vec<(&str, Agent)> = setups
        .iter()
        .map(|(what, env)| {
            let mut env = env.clone();
            env.push(("NO_DOCKER", "true".into()));
            let mut agent = Agent::spawn(cfg, &env);
            agent.wait_ready(Duration::from_secs(30));
            (*what, agent)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    progress(format!("idle with watched files: {} s, three agents at once (load {})", cfg.idle_secs, loadavg()));
    let before: Vec<(u64, usize)> = agents
        .iter_mut()
        .map(|(_, a)| {
            a.tail.refresh();
            (cpu_ticks(a.pid).0, a.tail.lines.len())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(cfg.idle_secs));
    res.say(format!("\n== 4b. Idle with watched files (no Docker): {} s (load {})", cfg.idle_secs, loadavg()));
    let tck = clock_ticks_per_sec();
    for ((what, agent), (cpu0, lines0)) in agents.iter_mut().zip(before) {
        agent.tail.refresh();
        let ticks = cpu_ticks(agent.pid).0 - cpu0;
        let lines = agent.tail.lines.len() - lines0;
        let rss = rss_kb(agent.pid).0;
        res.say(format!(
            "   {what:<12} agent CPU {ticks} ticks = {:.0} ms, {lines} log lines, RSS {:.1} MB",
            ticks as f64 * 1000.0 / tck as f64,
            rss as f64 / 1024.0
        ));
        res.target(
            format!("idle with watched files ({what}): no measurable CPU, nothing logged"),
            ticks == 0 && lines == 0,
            format!("{ticks} ticks, {lines} log lines over {} s", cfg.idle_secs),
        );
    }
}

// =============================================================================================
// Event storm

fn phase_storm(cfg: &Cfg, d: &BenchDocker, net: &str, res: &mut Results) -> Vec<String> {
    let prefix = d.prefix("s");
    let n = cfg.storm_n;
    let shorts: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    progress(format!("storm: creating {n} labelled containers"));
    let t = Instant::now();
    let names = par_map(&shorts, 8, |s| d.create(s, Some((&prefix, &format!("{s}.test"))), net));
    progress(format!("storm: created in {:.1} s; starting the agent", t.elapsed().as_secs_f64()));
    let mut agent = Agent::spawn(cfg, &agent_env(&prefix));
    agent.wait_ready(Duration::from_secs(60));
    let port = agent.port;
    let all_502 = poll_until(Duration::from_secs(120), Duration::from_millis(50), || {
        shorts.iter().all(|s| http_get(port, &format!("{s}.test"), "/").0 == 502)
    });
    if all_502.is_none() {
        agent.fail("every storm domain to answer 502 before the storm");
    }
    std::thread::sleep(Duration::from_secs(1));
    agent.tail.refresh();
    let lines_before = agent.tail.lines.len();

    let load_before = loadavg();
    progress(format!("storm: starting {n} containers from {} threads (load {load_before})", cfg.storm_threads));
    let next = AtomicUsize::new(0);
    let returns: Mutex<Vec<(Instant, bool)>> = Mutex::new(Vec::new());
    let t_first = Instant::now();
    let mut pending: Vec<&String> = shorts.iter().collect();
    let mut t_all = None;
    std::thread::scope(|s| {
        for _ in 0..cfg.storm_threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= names.len() {
                    return;
                }
                let out = docker_output(&["start", &names[i]]);
                if !out.status.success() {
                    eprintln!("docker start {} failed: {}", names[i], String::from_utf8_lossy(&out.stderr).trim());
                }
                returns.lock().unwrap().push((Instant::now(), out.status.success()));
            });
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|s| !ok_with(port, &format!("{s}.test"), s));
            if pending.is_empty() {
                t_all = Some(Instant::now());
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let returns = returns.into_inner().unwrap();
    let failed = returns.iter().filter(|(_, ok)| !ok).count();
    let t_last = returns.iter().map(|(t, _)| *t).max().expect("some starts");
    let Some(t_all) = t_all else {
        agent.fail(&format!("all storm domains to answer 200 ({} still pending)", pending.len()));
    };
    // Trailing passes (DEBOUNCE_MAX is 1 s).
    std::thread::sleep(Duration::from_secs(3));
    let (events, own) = subscribed_events(wall_of(t_first), wall_now(), &d.name(""));
    agent.tail.refresh();
    let passes: Vec<LogLine> = agent.tail.lines[lines_before..].iter().filter(|l| l.is_applied()).cloned().collect();
    let reloads: Vec<&LogLine> = passes.iter().filter(|l| l.is_reload()).collect();
    let last_reload_to_all = reloads.last().map(|l| (wall_of(t_all) - l.wall()) * 1000.0);
    let after_all = reloads.iter().filter(|l| l.wall() > wall_of(t_all)).count();
    let storm_secs = (t_last - t_first).as_secs_f64();
    let from_last = (t_all.saturating_duration_since(t_last)).as_secs_f64();
    res.say(format!(
        "\n== 2. Event storm: {n} labelled containers started from {} threads (load before {load_before}, after {})",
        cfg.storm_threads,
        loadavg()
    ));
    res.say(format!(
        "   the starts took {storm_secs:.2} s (first invoked → last returned; {failed} failed); all {n} answered 200 {:.2} s after the first invoke",
        (t_all - t_first).as_secs_f64()
    ));
    res.say(format!("   last `docker start` returned → all {n} domains answer 200: {from_last:.2} s"));
    res.say(format!(
        "   Docker events the agent received from the storm on: {own} about this run's containers, {} about others'",
        events - own
    ));
    res.say(format!(
        "   reloads by the agent after the storm began: {} ({} after all answered); last reload line → all 200: {}",
        reloads.len(),
        after_all,
        last_reload_to_all.map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "-".into())
    ));
    let gaps: Vec<f64> = reloads.windows(2).map(|w| (w[1].wall() - w[0].wall()) * 1000.0).collect();
    if !gaps.is_empty() {
        res.say(format!("   gap between reloads: {} (DEBOUNCE_MAX is 1 s)", dist(&gaps)));
    }
    for (i, l) in reloads.iter().enumerate() {
        res.say(format!(
            "     reload {:>2} at +{:6.2} s: render {:>4} ms, nginx -t {:>5} ms, reload {:>3} ms, sites {}, added {}",
            i + 1,
            l.wall() - wall_of(t_first),
            l.num("render_ms"),
            l.num("test_ms"),
            l.num("reload_ms"),
            l.num("sites"),
            l.str("added").chars().take(60).collect::<String>()
        ));
    }
    res.target(
        "storm: last start → all answer ≤ 5 s",
        from_last <= 5.0,
        format!("{from_last:.2} s ({n} containers; the starts themselves took {storm_secs:.1} s)"),
    );
    res.target(
        "storm: ≤ 5 reloads",
        reloads.len() <= 5,
        format!("{} reloads over a {storm_secs:.1} s storm", reloads.len()),
    );
    drop(agent);
    names
}

// =============================================================================================
// Scale: start-up resync over many labelled containers

fn phase_scale(cfg: &Cfg, d: &BenchDocker, net: &str, existing: usize, res: &mut Results) {
    let prefix = d.prefix("s");
    let n = cfg.scale_n;
    let more: Vec<String> = (existing..n.max(existing)).map(|i| format!("c{i}")).collect();
    progress(format!("scale: creating {} more labelled containers ({} exist)", more.len(), existing));
    let t = Instant::now();
    let names = par_map(&more, 8, |s| d.create(s, Some((&prefix, &format!("{s}.test"))), net));
    if cfg.scale_start {
        par_map(&names, 8, |name| d.start(name));
    }
    progress(format!("scale: ready in {:.1} s; starting the agent", t.elapsed().as_secs_f64()));
    std::thread::sleep(Duration::from_secs(2));

    let load_before = loadavg();
    let spawn_wall = wall_now();
    let mut agent = Agent::spawn(cfg, &agent_env(&prefix));
    let spawned = agent.spawned;
    let port = agent.port;
    let mut first_answer = None;
    let applied = poll_until(Duration::from_secs(300), Duration::from_millis(2), || {
        if first_answer.is_none() && http_get(port, "unknown.invalid", "/").0 != 0 {
            first_answer = Some(Instant::now());
        }
        agent.tail.applied_count() > 0
    });
    if applied.is_none() {
        agent.fail("the first 'config applied'");
    }
    if first_answer.is_none() {
        agent.wait_ready(Duration::from_secs(60));
        first_answer = Some(Instant::now());
    }
    let sample_running = if existing > 0 { Some("s0") } else { None };
    let sample_created = more.last().cloned();
    let mut served_at = None;
    if let Some(s) = sample_running {
        served_at = Some(agent.wait_status(&format!("{s}.test"), 200, Some(s), Duration::from_secs(60)));
    }
    if let Some(c) = &sample_created {
        let at = agent.wait_status(
            &format!("{c}.test"),
            if cfg.scale_start { 200 } else { 502 },
            if cfg.scale_start { Some(c.as_str()) } else { None },
            Duration::from_secs(60),
        );
        served_at = Some(served_at.map_or(at, |s: Instant| s.max(at)));
    }
    let at = |msg: &str, agent: &mut Agent| agent.tail.find(msg).map(|l| (l.wall() - spawn_wall) * 1000.0);
    let starting = at("starting", &mut agent);
    let listed_line = agent.tail.find("listed labelled containers");
    let listed = listed_line.as_ref().map(|l| (l.wall() - spawn_wall) * 1000.0);
    let listed_n = listed_line.as_ref().map(|l| l.num("containers")).unwrap_or(f64::NAN);
    let first = agent.tail.nth_applied(0).expect("applied");
    let applied_ms = (first.wall() - spawn_wall) * 1000.0;
    let nginx_started = at("nginx started", &mut agent);
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = rss_kb(agent.pid);
    let nginx_rss = agent.nginx_pid().map(|p| rss_kb(p).0).unwrap_or(0);
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.0} ms")).unwrap_or_else(|| "-".into());
    res.say(format!(
        "\n== 3a. Scale: agent start with {} labelled containers ({} running, {} {}) (load before {load_before}, after {})",
        existing + more.len(),
        if cfg.scale_start { existing + more.len() } else { existing },
        more.len(),
        if cfg.scale_start { "created then started" } else { "created, not started" },
        loadavg()
    ));
    res.say(format!("   spawn → 'starting' (after choose_nginx's own list+inspect):  {}", opt(starting)));
    res.say(format!("   spawn → 'listed labelled containers' (containers={listed_n}):   {}", opt(listed)));
    res.say(format!(
        "   spawn → first 'config applied' (render {} ms, nginx -t {} ms): {applied_ms:.0} ms",
        first.num("render_ms"),
        first.num("test_ms")
    ));
    res.say(format!(
        "   spawn → 'nginx started': {}; nginx first answered at {}; sample domains served at {}",
        opt(nginx_started),
        opt(first_answer.map(|t| ms(t - spawned))),
        opt(served_at.map(|t| ms(t - spawned)))
    ));
    res.say(format!(
        "   agent RSS after it settled: {:.1} MB (peak VmHWM {:.1} MB); nginx master RSS {:.1} MB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        nginx_rss as f64 / 1024.0
    ));
}

// =============================================================================================
// 10,000 routes from a JSON CONFIG_FILE

fn routes_json(n: usize, added: &[String], ip: &str) -> String {
    let mut domains = Vec::with_capacity(n + added.len());
    let mut services = Vec::with_capacity(n);
    for i in 0..n {
        domains.push(format!(r#"{{"name":"r{i}.test","service":"r{i}"}}"#));
        services.push(format!(r#"{{"name":"r{i}","host":"{ip}","port":{APP_PORT}}}"#));
    }
    for a in added {
        domains.push(format!(r#"{{"name":"{a}","service":"r0"}}"#));
    }
    format!("{{\"domains\":[\n{}\n],\n\"services\":[\n{}\n]}}\n", domains.join(",\n"), services.join(",\n"))
}

fn phase_routes(cfg: &Cfg, d: &BenchDocker, net: &str, res: &mut Results) {
    let backend = d.name("floorapp");
    let exists = docker_output(&["inspect", "--format", "{{.State.Running}}", &backend]);
    if !exists.status.success() {
        d.create("floorapp", None, net);
        d.start(&backend);
    } else if String::from_utf8_lossy(&exists.stdout).trim() != "true" {
        d.start(&backend);
    }
    let ip = d.ip(&backend);
    // First the built-in template as it is. Each site has its own `error_log` file, which nginx
    // opens in every process; a reload opens the new set while the old one is still open.
    let done = routes_attempt(cfg, d, &ip, None, cfg.route_changes, res);
    if !done {
        // Then the same template without the per-site error_log, to measure the pipeline.
        let builtin = smart_proxy::render::BUILTIN_TEMPLATE;
        let per_site = "    error_log {{ log_dir }}/{{ site.log_name }}.error.log;\n";
        if builtin.contains(per_site) {
            routes_attempt(cfg, d, &ip, Some(builtin.replacen(per_site, "", 1)), cfg.route_changes, res);
        } else {
            res.say("   (the built-in template has no per-site error_log line to drop; no second attempt)");
        }
    }
}

/// Emerg/alert lines of an nginx error log.
fn emerg_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("[emerg]") || l.contains("[alert]"))
        .map(String::from)
        .collect()
}

/// One agent with `routes_n` routes; `changes` edits. False when a reload failed.
fn routes_attempt(
    cfg: &Cfg,
    d: &BenchDocker,
    ip: &str,
    template: Option<String>,
    changes: usize,
    res: &mut Results,
) -> bool {
    let n = cfg.routes_n;
    let files = tempfile::Builder::new().prefix("spbench-routes-").tempdir().unwrap();
    register_dir(files.path());
    let file = files.path().join("routes.json");
    write_file(&file, &routes_json(n, &[], ip));
    let which =
        if template.is_some() { "built-in template without the per-site error_log" } else { "built-in template" };
    progress(format!("routes: agent with {n} routes from CONFIG_FILE ({which})"));
    let spawn_wall = wall_now();
    let mut env = agent_env(&d.prefix("f"));
    env.push(("NO_DOCKER", "true".into()));
    env.push(("CONFIG_FILE", file.display().to_string()));
    if let Some(t) = &template {
        let path = files.path().join("custom.conf.j2");
        write_file(&path, t);
        env.push(("NGINX_TEMPLATE", path.display().to_string()));
    }
    let mut agent = Agent::spawn(cfg, &env);
    agent.wait_ready(Duration::from_secs(300));
    let served = agent.wait_status("r0.test", 200, Some("floorapp"), Duration::from_secs(300));
    let startup_ms = ms(served - agent.spawned);
    agent.tail.refresh();
    let first = agent.tail.nth_applied(0);
    agent.wait_status(&format!("r{}.test", n - 1), 200, Some("floorapp"), Duration::from_secs(60));
    let nginx_pid = agent.nginx_pid();
    let limit = nginx_pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/limits")).ok())
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join("/"))
        })
        .unwrap_or_else(|| "?".into());
    let fds = nginx_pid.and_then(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok()).map(|d| d.count()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));

    let error_log = agent.agent.path("logs/nginx-error.log");
    let load_before = loadavg();
    progress(format!("routes: {changes} edits adding one domain each (load {load_before})"));
    let mut added: Vec<String> = Vec::new();
    let (mut total, mut pre, mut render, mut test, mut reload, mut nginx_side) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failure: Option<(String, Option<LogLine>)> = None;
    let port = agent.port;
    for k in 0..changes {
        let before = agent.tail.applied_count();
        let emerg_before = emerg_lines(&error_log).len();
        let domain = format!("new{k}.test");
        added.push(domain.clone());
        let text = routes_json(n, &added, ip);
        let t0 = Instant::now();
        write_file(&file, &text);
        let mut emerg = None;
        let t200 = poll_until(Duration::from_secs(180), cfg.poll.max(Duration::from_millis(20)), || {
            if ok_with(port, &domain, "floorapp") {
                return true;
            }
            emerg = emerg_lines(&error_log).into_iter().nth(emerg_before);
            emerg.is_some()
        });
        // The agent logs the pass once nginx confirmed the reload (new workers), which with 10,000
        // sites may be a while after the first 200 from a new worker.
        if emerg.is_none() {
            poll_until(Duration::from_secs(60), Duration::from_millis(20), || agent.tail.applied_count() > before);
        }
        let line = agent.tail.nth_applied(before);
        if let Some(e) = emerg {
            failure = Some((e, line));
            break;
        }
        let Some(t200) = t200 else { agent.fail(&format!("{domain} to answer after the file edit")) };
        total.push(ms(t200 - t0));
        if let Some(line) = line {
            let (r, t, rl) = (line.num("render_ms"), line.num("test_ms"), line.num("reload_ms"));
            render.push(r);
            test.push(t);
            reload.push(rl);
            nginx_side.push((wall_of(t200) - line.wall()) * 1000.0);
            pre.push((line.wall() - wall_of(t0)) * 1000.0 - r - t - rl);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (rss, hwm) = rss_kb(agent.pid);
    let nginx_rss = nginx_pid.map(|p| rss_kb(p).0).unwrap_or(0);
    res.say(format!(
        "\n== 3b. {n} routes from a JSON CONFIG_FILE, services with IP hosts, {which} (load before {load_before}, after {})",
        loadavg()
    ));
    if let Some(f) = &first {
        res.say(format!(
            "   start-up: spawn → first 'config applied' {:.0} ms (render {} ms, nginx -t {} ms); → r0.test answers {startup_ms:.0} ms",
            (f.wall() - spawn_wall) * 1000.0,
            f.num("render_ms"),
            f.num("test_ms")
        ));
    }
    res.say(format!("   nginx master: {fds} open files, RLIMIT_NOFILE (soft/hard) {limit}"));
    if let Some((emerg, line)) = &failure {
        res.say(format!("   RELOAD FAILED after the first edit: nginx kept the old config: {}", emerg.trim()));
        match line {
            Some(l) => res.say(format!(
                "   yet the agent logged {:?} (render {} ms, nginx -t {} ms) and treats the new config as live",
                l.msg,
                l.num("render_ms"),
                l.num("test_ms")
            )),
            None => res.say("   (the agent logged no apply for it)"),
        }
        res.target(
            format!("{n} routes: an added domain answers (built-in template)"),
            false,
            format!("nginx's reload fails: {}", emerg.rsplit("] ").next().unwrap_or(emerg).trim()),
        );
    }
    if !total.is_empty() {
        res.say(format!("   file edit (one domain added) → it answers 200: {}", dist(&total)));
        res.say(format!(
            "     file watch + debounce + load/build (the rest before the apply): median {:.0} ms",
            median(&pre)
        ));
        res.say(format!("     render_ms:  {}", dist(&render)));
        res.say(format!("     test_ms:    {}", dist(&test)));
        res.say(format!("     reload_ms:  {}  (the agent's SIGHUP only)", dist(&reload)));
        res.say(format!("     nginx applying the reload ('config applied' line → first 200): {}", dist(&nginx_side)));
    }
    res.say(format!(
        "   agent RSS {:.1} MB (peak {:.1} MB); nginx master RSS {:.1} MB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        nginx_rss as f64 / 1024.0
    ));
    drop(agent);
    unregister_dir(files.path());
    failure.is_none()
}

// =============================================================================================

fn main() {
    started_at();
    install_signal_cleanup();
    let cfg = Cfg::from_env();
    if Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("the agent benchmark needs a Docker daemon (`docker version` fails); nothing measured");
        std::process::exit(1);
    }
    sweep_leftovers();
    if env_flag("BENCH_SWEEP") {
        return;
    }
    assert!(cfg.nginx_bin.exists(), "nginx not found at {} (apt-get install nginx)", cfg.nginx_bin.display());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&cfg)));
    cleanup_all();
    match outcome {
        Ok(results) => print_report(&cfg, &results),
        Err(_) => {
            eprintln!("[bench] failed (see the panic above); everything was cleaned up");
            std::process::exit(101);
        }
    }
}

fn run(cfg: &Cfg) -> Results {
    let mut res = Results::default();
    let nginx_version = Command::new(&cfg.nginx_bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    res.say(format!("agent binary: {AGENT_BIN}"));
    res.say(format!(
        "nginx: {} ({nginx_version}); docker {}",
        cfg.nginx_bin.display(),
        docker(&["version", "--format", "{{.Server.Version}}"])
    ));
    res.say(format!(
        "machine: {} cores; at start: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        uptime()
    ));
    res.say(format!(
        "mode: {} (reaction {}, floor {}, idle {} s, storm {}, scale {}{}, routes {}); agent defaults DEBOUNCE=100ms DEBOUNCE_MAX=1s",
        if cfg.quick { "QUICK" } else { "full" },
        cfg.reaction_n,
        cfg.floor_n,
        cfg.idle_secs,
        cfg.storm_n,
        cfg.scale_n,
        if cfg.scale_start { " started" } else { " created" },
        cfg.routes_n
    ));
    if !AGENT_BIN.contains("/release/") {
        res.say("WARNING: the agent binary is not a release build; run `cargo bench --bench agent`");
    }
    progress("building the backend image (if needed)");
    app_image();
    let d = BenchDocker::new();
    let net = d.network("net");

    if cfg.runs("reaction") || cfg.runs("idle") {
        let mut setup = phase_reaction(cfg, &d, &net, &mut res);
        if cfg.runs("floor") {
            phase_floor(cfg, &d, &net, &mut res);
        }
        if cfg.runs("idle") {
            phase_idle(cfg, &mut setup, &mut res);
            phase_idle_files(cfg, &mut res);
        }
    } else if cfg.runs("floor") {
        phase_floor(cfg, &d, &net, &mut res);
    }
    let mut storm_names = Vec::new();
    if cfg.runs("storm") {
        storm_names = phase_storm(cfg, &d, &net, &mut res);
    }
    if cfg.runs("scale") {
        phase_scale(cfg, &d, &net, storm_names.len(), &mut res);
    }
    if cfg.runs("routes") {
        phase_routes(cfg, &d, &net, &mut res);
    }
    if cfg.runs("companion") {
        phase_companion(cfg, &d, &net, &mut res);
    }
    progress("removing the containers");
    let t = Instant::now();
    drop(d);
    progress(format!("removed in {:.1} s", t.elapsed().as_secs_f64()));
    res.say(format!("\nat the end: {}", uptime()));
    res
}

fn print_report(cfg: &Cfg, res: &Results) {
    let mut res_targets = res.targets.clone();
    if !res.reaction_invoke.is_empty() {
        let floor50 = pct(&sorted(res.floor.clone()), 50.0);
        for (label, v) in [
            ("from invoking docker start", &res.reaction_invoke),
            ("from docker start's return", &res.reaction_return),
            ("from the daemon's start event", &res.reaction_event),
        ] {
            if v.is_empty() {
                continue;
            }
            let s = sorted(v.clone());
            let (p50, p99) = (pct(&s, 50.0), pct(&s, 99.0));
            res_targets.push((format!("reaction ({label}): p50 ≤ 300 ms"), p50 <= 300.0, format!("{p50:.0} ms")));
            res_targets.push((format!("reaction ({label}): p99 ≤ 1 s"), p99 <= 1000.0, format!("{p99:.0} ms")));
            if !res.floor.is_empty() {
                let bound = 2.0 * (floor50 + DEBOUNCE_MS);
                res_targets.push((
                    format!("reaction ({label}): p50 ≤ 2 × (floor p50 + debounce)"),
                    p50 <= bound,
                    format!(
                        "{p50:.0} ms vs 2 × ({floor50:.0} + 100) = {bound:.0} ms; ratio p50 / (floor + debounce) = {:.2}",
                        p50 / (floor50 + DEBOUNCE_MS)
                    ),
                ));
            }
        }
    }
    println!(
        "\n================ nginx-smart-proxy agent benchmark ({}) ================",
        if cfg.quick { "QUICK" } else { "full" }
    );
    for line in &res.lines {
        println!("{line}");
    }
    println!("\n== Targets");
    for (what, met, detail) in &res_targets {
        println!("   [{}] {what}: {detail}", if *met { " met " } else { "MISS " });
    }
}

#[path = "agent_phases/companion.rs"]
mod companion;
use companion::phase_companion;

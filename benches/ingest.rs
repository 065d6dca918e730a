//! What insight costs nginx, and the agent's memory under traffic (issue 12: "nginx throughput
//! with ingestion on ≥ 95 % of the same nginx with access logging to files only (wrk, same run);
//! agent RSS stays bounded under 10,000 req/s for 60 s").
//!
//! Four agents, as users run them (LOCAL, nginx their child with one worker), route `bench.test`
//! to the same backend (an nginx of its own answering `200 ok`, so the app costs the same and is
//! not the bottleneck): one with `INSIGHT=off` (the per-domain JSON file only: the baseline), a
//! second one the same (A/A: the ratio the machine's noise alone gives), one with
//! `ACCESS_LOG_FILES=off` (the agent's insight file only), one with the defaults (both
//! files). `wrk -t1 -c32` runs against each for
//! `SECONDS`, alternating, `ROUNDS` times; the medians, each round's ratio to the mean of the
//! two files-only runs of that round (the A/A row: the second to the first), with a 95 % interval
//! of the median ratio and every round's ratio (to pool runs), and the lines the agent counted
//! against the requests wrk made are printed. Then wrk runs against the insight agent for
//! `SOAK` seconds while the agent's RSS is sampled each second. Then the companion setup, as the
//! compose files run it: nginx in its container (the local nginx image) shares conf.d and
//! `/var/log/nginx` with the agent in another container, so nginx writes one line per request
//! to the domain's file, which the agent reads; four such pairs, `INSIGHT=off` twice, the defaults,
//! and the defaults without the shared `/var/log/nginx` (nginx then writes the insight file on the
//! conf.d volume too), route `bench.test` to a fifth nginx container, and wrk
//! sends to each nginx container's address on the bench's network, alternating (skipped without a
//! Docker daemon; `BENCH_ONLY=local` or `companion` runs one part). `BENCH_QUICK=1`: short runs (a
//! smoke run); `BENCH_ROUNDS=n`: n rounds (the companion setup is noisier: more rounds steady its
//! medians), run in `BENCH_BLOCKS` blocks (default 3 from 6 rounds) that each start every setup
//! anew, so that one process's luck (where the kernel put it) does not make a setup's figure. Run with `cargo bench --bench ingest` (needs nginx and wrk: `.ci/run` installs them).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use support::agent::{Agent, Prefix};
use support::docker::{docker as cli, docker_available, TestDocker, TEST_LABEL};
use support::{free_port, nginx_bin};

/// The backend: an nginx answering `200 ok` on `port`; stopped when dropped.
struct Backend {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn backend(port: u16) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {pid};\nerror_log {dir}/error.log warn;\nworker_processes 1;\nevents {{ worker_connections 4096; }}\nhttp {{\n    access_log off;\n    server {{\n        listen 127.0.0.1:{port};\n        location / {{ return 200 \"ok\\n\"; }}\n    }}\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let child = Command::new(nginx_bin())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr", "-g", "daemon off;"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start the backend nginx");
    support::poll(
        "the backend to listen",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || None,
        String::new,
    );
    Backend { child, _dir: dir }
}

/// The four setups compared: the baseline first, then the same again (A/A).
const SETUPS: [(&str, bool, bool); 4] = [
    ("files only (INSIGHT=off)", false, true),
    ("files only again (A/A)", false, true),
    ("insight only (ACCESS_LOG_FILES=off)", true, false),
    ("files + insight (default)", true, true),
];

fn agent(backend: u16, insight: bool, files: bool) -> Agent {
    let services = format!("app:127.0.0.1:{backend}");
    let nginx = nginx_bin().display().to_string();
    let on = |b: bool| if b { "on" } else { "off" };
    let env = [
        ("NO_DOCKER", "true"),
        ("NGINX_BIN", nginx.as_str()),
        ("DOMAINS", "bench.test:app"),
        ("SERVICES", services.as_str()),
        ("INSIGHT", on(insight)),
        ("ACCESS_LOG_FILES", on(files)),
    ];
    let mut agent = Agent::local(Prefix::HOST, &env);
    agent.launch();
    agent.wait_for_status("bench.test", 200, Some("ok"));
    agent
}

/// One wrk run: requests per second, requests made, and the responses that were not 2xx or 3xx.
fn wrk(port: u16, seconds: u64) -> (f64, u64, u64) {
    wrk_url(&format!("http://127.0.0.1:{port}/"), seconds)
}

/// [`wrk`] against any address.
fn wrk_url(url: &str, seconds: u64) -> (f64, u64, u64) {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "-H", "Host: bench.test"])
        .arg(url)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<&str> {
        text.lines().find_map(|l| l.trim().strip_prefix(name)).map(|rest| rest.trim_start_matches(':').trim())
    };
    let rps: f64 = field("Requests/sec").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("wrk said:\n{text}"));
    let made = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk said:\n{text}"));
    let failed = field("Non-2xx or 3xx responses").and_then(|v| v.parse().ok()).unwrap_or(0);
    (rps, made, failed)
}

/// The pause before each wrk run: nginx flushes its buffered log lines within 1 s (`flush=1s`),
/// the agent reads them within 100 ms after that, so no run carries the work the previous one
/// left (within a round, the rotation puts the same setup after each one).
const SETTLE: Duration = Duration::from_millis(1500);

/// What the rounds measured, per setup (the baseline first): each round's requests per second,
/// the requests made, and the CPU seconds of nginx and of the agent.
struct Runs {
    rps: Vec<Vec<f64>>,
    made: Vec<u64>,
    nginx_cpu: Vec<f64>,
    agent_cpu: Vec<f64>,
    /// wrk's CPU seconds, and the machine's busy and idle CPU seconds (all cores).
    wrk_cpu: Vec<f64>,
    busy: Vec<f64>,
    idle: Vec<f64>,
}

impl Runs {
    fn new(n: usize) -> Runs {
        let zeros = vec![0.0; n];
        Runs {
            rps: vec![Vec::new(); n],
            made: vec![0; n],
            nginx_cpu: zeros.clone(),
            agent_cpu: zeros.clone(),
            wrk_cpu: zeros.clone(),
            busy: zeros.clone(),
            idle: zeros,
        }
    }

    /// Runs wrk through setup `which` (`wrk()` gives its result) and adds it, with the CPU the
    /// processes `agent` and `nginx` (and their children) spent meanwhile. It first waits
    /// [`SETTLE`], so that what the setup measured before still does (nginx's buffered lines,
    /// flushed within a second; the agent reading them) is done and weighs on neither.
    fn measure(&mut self, which: usize, (agent, nginx): (u32, u32), wrk: impl FnOnce() -> (f64, u64, u64)) {
        std::thread::sleep(SETTLE);
        let (cpu0, nginx0, wrk0, machine0) = (cpu_of_tree(agent), cpu_of_tree(nginx), children_cpu(), machine_cpu());
        let (value, made, failed) = wrk();
        self.agent_cpu[which] += cpu_of_tree(agent) - cpu0;
        self.nginx_cpu[which] += cpu_of_tree(nginx) - nginx0;
        self.wrk_cpu[which] += children_cpu() - wrk0;
        let machine = machine_cpu();
        self.busy[which] += machine.0 - machine0.0;
        self.idle[which] += machine.1 - machine0.1;
        assert_eq!(failed, 0, "errors under load");
        self.rps[which].push(value);
        self.made[which] += made;
    }

    /// Per setup (name, insight on): its median rate and ratio to files only, its CPU per
    /// request and, with insight, the lines the agent counted (`counted(setup)`). The first two
    /// setups are the same (files only, run twice): the A/A row shows what the machine's noise
    /// alone gives, and an insight setup is held against both ([`paired_ratios`]).
    fn print(mut self, setups: &[(&str, bool)], counted: impl Fn(usize) -> u64) {
        let paired = paired_ratios(&self.rps);
        let medians: Vec<f64> = self.rps.iter_mut().map(|r| median(r)).collect();
        let per = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
        for (which, &(name, insight)) in setups.iter().enumerate() {
            let Paired { ratios, quartiles: (low, ratio, high), interval: (from, to) } = &paired[which];
            let verdict = match (which, *ratio >= 0.95) {
                (0, _) => String::from("(files only: the reference, with the row below)"),
                (1, _) => format!(
                    "{ratio:.3} of the row above (the same setup again: the machine's noise; quartiles {low:.3}..{high:.3}; 95 % interval of the median {from:.3}..{to:.3})"
                ),
                (_, met) => format!(
                    "{ratio:.3} of files only (median of the rounds' ratios to both files-only runs, quartiles {low:.3}..{high:.3}; 95 % interval of the median {from:.3}..{to:.3}; bar >= 0.95: {})",
                    if met { "met" } else { "not met" }
                ),
            };
            assert!(which > 1 || !insight, "the first two setups are files only");
            let made = self.made[which];
            println!("{name:<36} {:>8.0} req/s (median) {verdict}", medians[which]);
            if which > 0 {
                // Every round's ratio, in order, so that runs can be pooled.
                let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
                println!("{:<36} ratios: {}", "", listed.join(" "));
            }
            println!(
                "{:<36} CPU per request: nginx {:.1} µs, agent {:.1} µs, wrk {:.1} µs, the machine {:.1} µs ({:.1} % idle)",
                "",
                per(self.nginx_cpu[which], made),
                per(self.agent_cpu[which], made),
                per(self.wrk_cpu[which], made),
                per(self.busy[which], made),
                self.idle[which] * 100.0 / (self.busy[which] + self.idle[which]).max(1e-9)
            );
            if insight {
                let lines = counted(which);
                println!(
                    "{:<36} lines the agent counted: {lines} of the {made} requests wrk made ({:.2} %; wrk counts only answers it read)",
                    "",
                    lines as f64 * 100.0 / made.max(1) as f64
                );
            }
        }
    }
}

/// Each setup's throughput against files only in the same round (the setups run back to back in
/// each round, so a slow minute of the machine weighs on all): the lower quartile, median and
/// upper quartile of those ratios. Files only ran twice in each round (setups 0 and 1), and the
/// reference is the mean of the two, which halves its share of the noise; the second run's own
/// ratio is to the first (A/A).
fn paired_ratios(rps: &[Vec<f64>]) -> Vec<Paired> {
    rps.iter()
        .enumerate()
        .map(|(which, runs)| {
            let reference = |round: usize| match which {
                0 | 1 => rps[0][round],
                _ => (rps[0][round] + rps[1][round]) / 2.0,
            };
            let ratios: Vec<f64> = runs.iter().enumerate().map(|(round, r)| r / reference(round)).collect();
            let mut sorted = ratios.clone();
            sorted.sort_by(f64::total_cmp);
            let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
            let n = sorted.len();
            let median = (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0;
            Paired { quartiles: (at(0.25), median, at(0.75)), interval: median_interval(&sorted), ratios }
        })
        .collect()
}

/// A setup's ratios to files only, one per round (in the rounds' order), with their quartiles (the
/// median of an even number the mean of the two middle ones) and [`median_interval`].
struct Paired {
    ratios: Vec<f64>,
    quartiles: (f64, f64, f64),
    interval: (f64, f64),
}

/// A 95 % interval for the median of `sorted` that assumes nothing of the noise's shape: the
/// order statistics x(j) and x(n+1-j) for the largest j with 2 P(B < j) <= 0.05, B the number of
/// values below the true median, binomial(n, 1/2). It says how far the median could move were the
/// rounds run again on a machine as noisy as this one was. Under 6 rounds no such j exists and
/// this is the whole range.
fn median_interval(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    // P(B = i) for i = 0, 1, ...: C(n, i) / 2^n.
    let (mut term, mut below, mut j) = (0.5f64.powi(n as i32), 0.0, 1);
    for i in 0..n / 2 {
        below += term;
        if 2.0 * below > 0.05 {
            break;
        }
        j = i + 1;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    (sorted[j - 1], sorted[n - j])
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// The CPU seconds of the bench's children that ended (each wrk run, once waited for).
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

/// The machine's busy and idle (with I/O wait) CPU seconds since boot, all cores.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - idle;
    (busy / 100.0, idle / 100.0)
}

/// The process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// CPU time (user + system, seconds) of `pid` and its children so far: the agent with its
/// threads, or nginx's master with its workers.
fn cpu_of_tree(pid: u32) -> f64 {
    let ticks = |stat: &str| -> Option<(u32, f64)> {
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let t: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((ppid, t / 100.0))
    };
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Some((ppid, t)) = std::fs::read_to_string(format!("/proc/{p}/stat")).ok().as_deref().and_then(ticks) else {
            continue;
        };
        if p == pid || ppid == pid {
            total += t;
        }
    }
    total
}

fn nginx_pid(agent: &Agent) -> u32 {
    std::fs::read_to_string(agent.nginx_pid_file()).unwrap().trim().parse().unwrap()
}

/// The requests the agent counted for bench.test since it started.
fn counted(agent: &Agent) -> u64 {
    let (_, body) = agent.status_get("/insight");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let domains = doc["domains"].as_array().cloned().unwrap_or_default();
    domains.iter().find(|d| d["domain"] == "bench.test").and_then(|d| d["total"]["requests"].as_u64()).unwrap_or(0)
}

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let (rounds, seconds, soak) = if quick { (1, 1, 5) } else { (5, 3, 60) };
    let rounds = std::env::var("BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(rounds);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "companion" {
        local(rounds, seconds, soak);
    }
    if only == "local" {
        return;
    }
    if !docker_available() {
        println!("companion: SKIPPED, no Docker daemon answers");
        return;
    }
    companion(rounds, seconds);
}

/// How many blocks `rounds` are run in, and the rounds of each: every block starts its setups
/// anew (`BENCH_BLOCKS`, default 3 from 6 rounds), so that no one process's luck (where the
/// kernel placed it, what it shares a core with) decides a setup's figure.
fn blocks(rounds: usize) -> Vec<usize> {
    let default = if rounds >= 6 { 3 } else { 1 };
    let n = std::env::var("BENCH_BLOCKS").ok().and_then(|b| b.parse().ok()).unwrap_or(default).clamp(1, rounds);
    (0..n).map(|b| rounds / n + usize::from(b < rounds % n)).collect()
}

/// Nginx as the agent's child: files only (twice), insight only, both; then the soak.
fn local(rounds: usize, seconds: u64, soak: u64) {
    let backend_port = free_port();
    let _backend = backend(backend_port);
    let n = SETUPS.len();
    let mut runs = Runs::new(n);
    let mut lines = vec![0u64; n];
    let mut agents = Vec::new();
    let blocks = blocks(rounds);
    for (block, &block_rounds) in blocks.iter().enumerate() {
        drop(std::mem::take(&mut agents));
        agents = SETUPS.iter().map(|&(_, insight, files)| agent(backend_port, insight, files)).collect();
        for a in &agents {
            assert_eq!(wrk(a.port, 1).2, 0, "the route answers errors");
        }
        // The warm-up's last lines reach the figures (nginx's flush, the agent's next look)
        // before the count starts.
        std::thread::sleep(Duration::from_millis(1500));
        let before: Vec<u64> = agents.iter().map(counted).collect();
        for round in 0..block_rounds {
            for i in 0..n {
                let which = (i + round + block) % n;
                let a = &agents[which];
                runs.measure(which, (a.pid().unwrap(), nginx_pid(a)), || wrk(a.port, seconds));
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        for (which, a) in agents.iter().enumerate() {
            lines[which] += counted(a) - before[which];
        }
    }
    println!(
        "insight through nginx ({rounds} rounds of {seconds} s per agent in {} blocks, wrk -t1 -c32, nginx 1 worker)",
        blocks.len()
    );
    let setups: Vec<(&str, bool)> = SETUPS.iter().map(|&(name, insight, _)| (name, insight)).collect();
    runs.print(&setups, |which| lines[which]);

    // Soak: the agent's memory under sustained traffic.
    let insight = agents.into_iter().next_back().expect("files + insight");
    let pid = insight.pid().expect("running");
    let start_rss = rss_kib(pid);
    let soaker = std::thread::spawn(move || wrk(insight.port, soak));
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(soak) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(rss_kib(pid));
    }
    let (soak_rps, _, failed) = soaker.join().unwrap();
    assert_eq!(failed, 0, "errors under the soak");
    let peak = samples.iter().copied().max().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    println!(
        "agent RSS over {soak} s at {soak_rps:.0} req/s: {start_rss} KiB before, peak {peak} KiB, {last} KiB at the end"
    );
}

/// The companion pairs compared: name, `INSIGHT`, `/var/log/nginx` on a volume in both
/// containers (as the compose files have it). The baseline first.
const PAIRS: [(&str, bool, bool); 4] = [
    ("files only (INSIGHT=off)", false, true),
    ("files only again (A/A)", false, true),
    ("files + insight (default, compose)", true, true),
    ("files + insight, LOG_DIR not shared", true, false),
];

/// One companion pair: nginx and the agent in their containers, sharing conf.d (and LOG_DIR).
struct Pair {
    nginx: String,
    agent: String,
    /// nginx's address on the bench's network.
    url: String,
    volumes: Vec<String>,
}

impl Drop for Pair {
    /// The containers, then their named volumes (`docker rm --volumes` keeps named ones).
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "--force", "--volumes", &self.nginx, &self.agent]).output();
        for v in &self.volumes {
            let _ = Command::new("docker").args(["volume", "rm", "--force", v]).output();
        }
    }
}

impl Pair {
    fn start(docker: &TestDocker, net: &str, short: &str, (insight, logs): (bool, bool), images: (&str, &str)) -> Pair {
        let owner = format!("{TEST_LABEL}={}", docker.run_id());
        let volume = docker.name(&format!("{short}-conf"));
        cli(&["volume", "create", "--label", &owner, &volume]);
        let mount = format!("{volume}:/etc/nginx/conf.d");
        let logs_volume = docker.name(&format!("{short}-logs"));
        let logs_mount = format!("{logs_volume}:/var/log/nginx");
        if logs {
            cli(&["volume", "create", "--label", &owner, &logs_volume]);
        }
        let (nginx, agent) = (docker.name(&format!("{short}-nginx")), docker.name(&format!("{short}-agent")));
        let mut args = vec!["run", "-d", "--name", &nginx, "--label", &owner, "--network", net, "-v", &mount];
        if logs {
            args.extend(["-v", &logs_mount]);
        }
        args.push(images.0);
        cli(&args);
        let env = [
            format!("LABEL_PREFIX={}{short}", docker.prefix()),
            "LOCAL=true".into(),
            format!("NGINX_CONTAINER={nginx}"),
            format!("INSIGHT={}", if insight { "on" } else { "off" }),
        ];
        let mut args: Vec<&str> = vec!["run", "-d", "--name", &agent, "--label", &owner, "--network", net];
        args.extend(["-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", &mount]);
        if logs {
            args.extend(["-v", &logs_mount]);
        }
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        args.extend([images.1, "run"]);
        cli(&args);
        let ip =
            cli(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"), &nginx]);
        let volumes = if logs { vec![volume, logs_volume] } else { vec![volume] };
        Pair { nginx, agent, url: format!("http://{ip}/"), volumes }
    }

    fn pid(container: &str) -> u32 {
        cli(&["inspect", "-f", "{{.State.Pid}}", container]).parse().expect("a pid")
    }

    /// Waits until the agent routes bench.test (its default server answers unknown names 503,
    /// bench.test 200), and checks the route under load.
    fn wait_routed(&self) {
        let host = |name: &str| {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-m",
                    "2",
                    "-H",
                    &format!("Host: {name}"),
                    &self.url,
                ])
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        support::poll(
            "the companion pair to route bench.test",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || host("x.invalid") == "503" && host("bench.test") == "200",
            || None,
            || cli(&["logs", &self.agent]),
        );
        assert_eq!(wrk_url(&self.url, 1).2, 0, "the route answers errors");
    }

    /// The requests the agent counted for bench.test.
    fn counted(&self) -> u64 {
        let out = Command::new("docker")
            .args(["exec", &self.agent, "wget", "-qO-", "http://127.0.0.1:9180/insight"])
            .output()
            .expect("docker exec");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let domains = doc["domains"].as_array().cloned().unwrap_or_default();
        domains.iter().find(|d| d["domain"] == "bench.test").and_then(|d| d["total"]["requests"].as_u64()).unwrap_or(0)
    }
}

/// The companion setup: files only against files + insight, nginx and the agent in containers.
fn companion(rounds: usize, seconds: u64) {
    let images = support::images::local_images(Some(std::path::Path::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"))));
    let agent_image = images.agent.clone().expect("built with the agent");
    let docker = TestDocker::new();
    let net = docker.network("ingest");
    // The backend: the nginx image's own page, labelled for both pairs.
    let owner = format!("{TEST_LABEL}={}", docker.run_id());
    let backend = docker.name("backend");
    let mut args: Vec<String> =
        ["run", "-d", "--name", &backend, "--label", &owner, "--network", &net].map(String::from).to_vec();
    let shorts = ["files", "again", "insight", "unshared"];
    for short in shorts {
        args.extend(["--label".into(), format!("{}{short}.domains=bench.test", docker.prefix())]);
        args.extend(["--label".into(), format!("{}{short}.port=80", docker.prefix())]);
    }
    args.push(images.nginx.clone());
    cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let n = PAIRS.len();
    let mut runs = Runs::new(n);
    let mut lines = vec![0u64; n];
    let blocks = blocks(rounds);
    for (block, &block_rounds) in blocks.iter().enumerate() {
        let pairs: Vec<Pair> = PAIRS
            .iter()
            .zip(shorts)
            .map(|(&(_, insight, logs), short)| {
                Pair::start(&docker, &net, short, (insight, logs), (&images.nginx, &agent_image))
            })
            .collect();
        for p in &pairs {
            p.wait_routed();
        }
        std::thread::sleep(Duration::from_millis(1500));
        let before: Vec<u64> = pairs.iter().map(Pair::counted).collect();
        for round in 0..block_rounds {
            for i in 0..n {
                let which = (i + round + block) % n;
                let p = &pairs[which];
                runs.measure(which, (Pair::pid(&p.agent), Pair::pid(&p.nginx)), || wrk_url(&p.url, seconds));
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        for (which, p) in pairs.iter().enumerate() {
            lines[which] += p.counted() - before[which];
        }
    }
    println!(
        "companion setup (nginx and the agent in containers, {rounds} rounds of {seconds} s in {} blocks, wrk -t1 -c32 to nginx's address)",
        blocks.len()
    );
    let setups: Vec<(&str, bool)> = PAIRS.iter().map(|&(name, insight, _)| (name, insight)).collect();
    runs.print(&setups, |which| lines[which]);
}

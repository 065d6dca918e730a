//! What insight costs nginx, and the agent's memory under traffic (issue 12: "nginx throughput
//! with ingestion on ≥ 95 % of the same nginx with access logging to files only (wrk, same run);
//! agent RSS stays bounded under 10,000 req/s for 60 s").
//!
//! Two agents, as users run them (LOCAL, nginx their child with one worker), route `bench.test`
//! to the same backend (an nginx of its own answering `200 ok`, so the app costs the same and is
//! not the bottleneck): one with `INSIGHT=off` (the per-domain JSON file only: the baseline), one
//! with `ACCESS_LOG_FILES=off` (the agent's socket only), one with the defaults (the file and the
//! socket). `wrk -t1 -c32` runs against each for
//! `SECONDS`, alternating, `ROUNDS` times; the medians, their ratio and the lines the agent
//! counted against the requests wrk made are printed. Then wrk runs against the insight agent for
//! `SOAK` seconds while the agent's RSS is sampled each second. `BENCH_QUICK=1`: short runs (a
//! smoke run). Run with `cargo bench --bench ingest` (needs nginx and wrk: `.ci/run` installs them).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use support::agent::{Agent, Prefix};
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

/// The three setups compared: the baseline first.
const SETUPS: [(&str, bool, bool); 3] = [
    ("files only (INSIGHT=off)", false, true),
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
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "-H", "Host: bench.test"])
        .arg(format!("http://127.0.0.1:{port}/"))
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
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
    let backend_port = free_port();
    let _backend = backend(backend_port);
    let agents: Vec<Agent> = SETUPS.iter().map(|&(_, insight, files)| agent(backend_port, insight, files)).collect();
    for a in &agents {
        assert_eq!(wrk(a.port, 1).2, 0, "the route answers errors");
    }
    let before: Vec<u64> = agents.iter().map(counted).collect();
    let n = agents.len();
    let (mut rps, mut made) = (vec![Vec::new(); n], vec![0u64; n]);
    // CPU seconds of each agent and of its nginx during its runs.
    let (mut agent_cpu, mut nginx_cpu) = (vec![0.0f64; n], vec![0.0f64; n]);
    for round in 0..rounds {
        for i in 0..n {
            let which = (i + round) % n;
            let a = &agents[which];
            let (pid, nginx) = (a.pid().unwrap(), nginx_pid(a));
            let (cpu0, nginx0) = (cpu_of_tree(pid), cpu_of_tree(nginx));
            let (value, made_now, failed) = wrk(a.port, seconds);
            agent_cpu[which] += cpu_of_tree(pid) - cpu0;
            nginx_cpu[which] += cpu_of_tree(nginx) - nginx0;
            assert_eq!(failed, 0, "errors under load");
            rps[which].push(value);
            made[which] += made_now;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let medians: Vec<f64> = rps.iter_mut().map(|r| median(r)).collect();
    println!("insight through nginx ({rounds} rounds of {seconds} s per agent, wrk -t1 -c32, nginx 1 worker)");
    let per = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
    for (which, (name, insight, _)) in SETUPS.iter().enumerate() {
        let ratio = medians[which] / medians[0];
        let verdict = match (which, ratio >= 0.95) {
            (0, _) => String::from("(the baseline)"),
            (_, met) => format!("{ratio:.3} of files only (bar >= 0.95: {})", if met { "met" } else { "not met" }),
        };
        println!("{name:<36} {:>8.0} req/s (median) {verdict}", medians[which]);
        println!(
            "{:<36} CPU per request: nginx {:.1} µs, agent {:.1} µs",
            "",
            per(nginx_cpu[which], made[which]),
            per(agent_cpu[which], made[which])
        );
        if *insight {
            let lines = counted(&agents[which]) - before[which];
            println!(
                "{:<36} lines the agent counted: {lines} of the {} requests wrk made ({:.2} %; wrk counts only answers it read)",
                "",
                made[which],
                lines as f64 * 100.0 / made[which].max(1) as f64
            );
        }
    }
    let queue = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").unwrap_or_default();
    println!("net.unix.max_dgram_qlen here: {}", queue.trim());

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

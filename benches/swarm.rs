//! Issue 13's first figure: from `docker service create` returning to the first 200 through a
//! follower on another node, over `SERVICES` services created one after another.
//!
//! A two-node Swarm of the tests' own (`support::swarm::SwarmEngine`: engines in network
//! namespaces), compose/swarm/docker-stack.yml deployed on it (the agent on the manager, a
//! follower on each node), then each service (the tests' busybox app, 1 task, labelled through
//! its service labels as a stack's `deploy.labels` does) is created and polled through the
//! follower on node 1 (the worker) every 20 ms until it answers with its page. Printed: each
//! time, the median and the slowest.
//!
//! Then scale: `BENCH_SCALE` more services (default 40: an overlay network is a /24 by default,
//! about 250 addresses, and each service takes one for its virtual IP besides one per task; with
//! 60, 161 of the 180 tasks got an address) of 3 tasks each; once every task runs,
//! the agent's task is replaced (`docker service update --force`), and its log gives the time
//! from its start to its first config applied (a full resync: services and tasks listed,
//! rendered, tested, reloaded), and its memory after that (VmRSS of the agent, PID 1 of its
//! container). Needs root and Docker (as the Swarm tests); `BENCH_QUICK=1` creates 3 services
//! and scales to 10. Run with `cargo bench --bench swarm`.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use support::swarm::{get, SwarmEngine};

/// Creates service `name` (its page says `name`) and waits for it through `addr`.
fn create_and_wait(engine: &SwarmEngine, image: &str, name: &str, addr: SocketAddr) -> Duration {
    let (domains, app) = (format!("smart-proxy.domains={name}.test"), format!("APP_NAME={name}"));
    let args = ["service", "create", "--detach", "--name", name, "--network", "proxy_proxy"];
    let labels = ["--label", &domains, "--label", "smart-proxy.port=8080", "--env", &app, image];
    engine.docker(&[&args[..], &labels[..]].concat());
    let created = Instant::now();
    let (host, want) = (format!("{name}.test"), format!("{name}\n"));
    while get(addr, &host) != (200, want.clone()) {
        assert!(created.elapsed() < Duration::from_secs(180), "{host} not served through the follower within 180 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    created.elapsed()
}

fn main() {
    if !support::docker::docker_available() || !support::swarm::require_root() {
        println!("swarm: SKIPPED (needs Docker and root)");
        return;
    }
    let count = if std::env::var_os("BENCH_QUICK").is_some() { 3 } else { 20 };
    let agent = support::images::agent_image(std::path::Path::new(env!("CARGO_BIN_EXE_nginx-smart-proxy")));
    let app = support::docker::app_image();
    let engine = SwarmEngine::start_nodes(2, &[&agent, &app]);
    let key = engine.scratch("secrets").join("follower_key");
    let mut random = [0u8; 48];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
    std::fs::write(&key, random.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
    let stack = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/swarm/docker-stack.yml");
    let out = std::process::Command::new("docker")
        .args(["-H", &engine.host(), "stack", "deploy", "-c", stack, "proxy"])
        .env("AGENT_IMAGE", SwarmEngine::image(&agent))
        .env("DOCKER_SOCKET", engine.host().trim_start_matches("unix://"))
        .env("FOLLOWER_KEY", &key)
        .env("LOCAL", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "docker stack deploy: {}", String::from_utf8_lossy(&out.stderr));
    // Services come once the agent runs (one deployed before it listens waits for the resync).
    let started = Instant::now();
    loop {
        let out = engine.docker_output(&["service", "logs", "--raw", "proxy_agent"]);
        if String::from_utf8_lossy(&out.stdout).contains("config applied")
            || String::from_utf8_lossy(&out.stderr).contains("config applied")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the agent applied no config within 120 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let image = SwarmEngine::image(&app);
    // Through the follower on the worker; the first service also waits for the followers.
    let addr = SocketAddr::from((engine.node_address(1), 80));
    let warm = create_and_wait(&engine, &image, "warmup", addr);
    println!("stack up and a first service served through node 1's follower after {warm:.2?}");
    let mut times: Vec<Duration> =
        (0..count).map(|i| create_and_wait(&engine, &image, &format!("s{i}"), addr)).collect();
    println!("service create -> first 200 through the follower on node 1, {count} services one after another:");
    println!(
        "  {}",
        times.iter().map(|t| format!("{:.0} ms", t.as_secs_f64() * 1000.0)).collect::<Vec<_>>().join(", ")
    );
    times.sort();
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms (the slowest of {count})",
        p(0.5).as_secs_f64() * 1000.0,
        p(0.99).as_secs_f64() * 1000.0
    );

    let scale: usize =
        std::env::var("BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(if count == 3 { 10 } else { 40 });
    resync(&engine, &image, scale);
}

/// `scale` services of 3 tasks, then a new agent task: its time to the first apply, and its RSS.
fn resync(engine: &SwarmEngine, image: &str, scale: usize) {
    let began = Instant::now();
    for i in 0..scale {
        let (name, domains) = (format!("scale{i}"), format!("smart-proxy.domains=scale{i}.test"));
        let args = ["service", "create", "--detach", "--name", &name, "--network", "proxy_proxy", "--replicas", "3"];
        engine.docker(&[&args[..], &["--label", &domains, "--label", "smart-proxy.port=8080", image][..]].concat());
    }
    let expected = scale * 3;
    loop {
        let running = engine.docker(&["ps", "-q", "--filter", "name=scale"]).lines().count()
            + engine.node_docker(1, &["ps", "-q", "--filter", "name=scale"]).lines().count();
        if running >= expected {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(900), "{running} of {expected} tasks running after 15 min");
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("{scale} services x 3 tasks running after {:.1?}", began.elapsed());
    let old = engine.docker(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=proxy_agent"]);
    engine.docker(&["service", "update", "--detach", "--force", "proxy_agent"]);
    let started = Instant::now();
    let (container, log) = loop {
        let id = engine.docker(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=proxy_agent"]);
        if !id.is_empty() && id != old {
            let out = engine.docker_output(&["logs", id.trim()]);
            let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            if log.contains("config applied") {
                break (id, log);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the new agent applied nothing within 300 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    // RFC 3339 times of the agent's own lines: its start and its first apply.
    let at = |needle: &str| -> f64 {
        let line = log.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} in:\n{log}"));
        let time = line.split_whitespace().next().unwrap();
        let hms = time.split('T').nth(1).unwrap().trim_end_matches('Z');
        let mut parts = hms.split(':').map(|p| p.parse::<f64>().unwrap());
        parts.next().unwrap() * 3600.0 + parts.next().unwrap() * 60.0 + parts.next().unwrap()
    };
    let first = log.lines().find(|l| l.contains("config applied")).unwrap_or_default().to_string();
    let status = engine.docker(&["exec", container.trim(), "cat", "/proc/1/status"]);
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap_or("?").trim().to_string();
    println!(
        "a new agent with {scale} services x 3 tasks: start -> first config applied {:.0} ms; agent RSS then {rss}",
        (at("config applied") - at("smart_proxy::agent: starting")) * 1000.0
    );
    println!("  {}", first.split("INFO").nth(1).unwrap_or(&first).trim());
}

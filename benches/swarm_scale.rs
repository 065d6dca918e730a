//! Issue 13's scale figure: "1,000 services × 3 tasks: resync time and agent RSS".
//!
//! This machine cannot run 3,000 tasks (2 cores, and Swarm's overlay networks are /24s by
//! default): the agent reads them from a stand-in Swarm manager instead. The fault proxy of the
//! tests (tests/support/docker_faults.rs), in front of the tests' own daemon, answers
//! `GET …/services`, `…/tasks` and `…/networks` itself, with `SERVICES` services (default 1,000)
//! of `TASKS` running tasks each (default 3) in the shapes of Docker's API, and passes everything
//! else (version, containers, the event stream) to the daemon. So the agent does all its own work
//! (three calls over the Docker socket, JSON decoding, labels, routes, render, `nginx -t`,
//! reload); only the manager's own time to answer is not measured. The agent runs in LOCAL mode
//! with its nginx (`SWARM=on`); each service routes `svc<i>.scale.test` to its tasks' addresses on
//! network `proxy` (10.201.0.0/16, never dialled: neither `nginx -t` nor a reload connects to an
//! upstream).
//!
//! Printed: the time from the agent's start to its first config applied, with the log's own split
//! (render, `nginx -t`, reload); then `ROUNDS` resyncs (default 5), each after one service's
//! tasks changed: the event stream is cut, the agent reconnects and resyncs, and the time from its
//! "resyncing" line to its "config applied" line is a full pass over every service; the agent's
//! RSS after the first apply and after the last resync. Needs Docker and nginx; run with
//! `cargo bench --bench swarm_scale` (`BENCH_QUICK=1`: 100 services, 2 resyncs).

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use support::agent::{Agent, Prefix};
use support::docker::docker_available;
use support::docker_faults::DockerFaults;

const NETWORK_ID: &str = "scalenet00000000000000001";

/// `GET /services`: `count` services labelled for the agent.
fn services(count: usize) -> Vec<u8> {
    let list: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            serde_json::json!({
                "ID": service_id(i),
                "Version": {"Index": 10 + i},
                "Spec": {
                    "Name": format!("svc{i}"),
                    "Labels": {
                        "smart-proxy.domains": format!("svc{i}.scale.test"),
                        "smart-proxy.port": "8080",
                    },
                    "Mode": {"Replicated": {"Replicas": 3}},
                },
                "Endpoint": {"VirtualIPs": [{"NetworkID": NETWORK_ID, "Addr": format!("10.200.{}.{}/16", i / 250, i % 250 + 2)}]},
            })
        })
        .collect();
    serde_json::to_vec(&list).unwrap()
}

fn service_id(i: usize) -> String {
    format!("svc{i:022}")
}

/// `GET /tasks`: `tasks` running tasks of each of `count` services; `generation` moves service
/// 0's tasks to other addresses (a change for the resync to apply).
fn tasks(count: usize, tasks: usize, generation: usize) -> Vec<u8> {
    let mut list = Vec::new();
    let mut n = 0usize;
    for i in 0..count {
        for slot in 1..=tasks {
            let shift = if i == 0 { generation * 16 } else { 0 };
            let host = n + shift + 2;
            list.push(serde_json::json!({
                "ID": format!("task{:021}", n),
                "ServiceID": service_id(i),
                "NodeID": "node0000000000000000000001",
                "Slot": slot,
                "Status": {"State": "running", "Message": "started"},
                "DesiredState": "running",
                "NetworksAttachments": [{
                    "Network": {"ID": NETWORK_ID, "Spec": {"Name": "proxy"}},
                    "Addresses": [format!("10.201.{}.{}/16", host / 250, host % 250 + 1)],
                }],
            }));
            n += 1;
        }
    }
    serde_json::to_vec(&list).unwrap()
}

fn networks() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([{"Id": NETWORK_ID, "Name": "proxy", "Driver": "overlay", "Scope": "swarm"}]))
        .unwrap()
}

/// Seconds since midnight of a log line's RFC 3339 time (`2026-12-06T04:05:06.123456Z …`).
fn at(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// A `key=value` field of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn applied_lines(agent: &Agent) -> Vec<String> {
    agent.log().lines().filter(|l| l.contains("config applied")).map(str::to_string).collect()
}

fn wait_applied(agent: &Agent, count: usize, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let lines = applied_lines(agent);
        if lines.len() >= count {
            return lines[count - 1].clone();
        }
        assert!(started.elapsed() < within, "no config applied #{count} within {within:?}:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    if !docker_available() {
        println!("swarm_scale: SKIPPED, no Docker daemon answers");
        return;
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let number = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let count = number("SERVICES", if quick { 100 } else { 1000 });
    let per = number("TASKS", 3);
    let rounds = number("ROUNDS", if quick { 2 } else { 5 });

    let proxy = DockerFaults::start();
    let (services_json, networks_json) = (services(count), networks());
    proxy.reply("/services", services_json.clone());
    proxy.reply("/networks", networks_json);
    let first_tasks = tasks(count, per, 0);
    let tasks_bytes = first_tasks.len();
    proxy.reply("/tasks", first_tasks);
    let host = proxy.host();
    let env = [("DOCKER_HOST", host.as_str()), ("SWARM", "on"), ("LABEL_PREFIX", "smart-proxy")];
    let mut agent = Agent::local(Prefix::HOST, &env);
    let started = Instant::now();
    agent.spawn();
    let first = wait_applied(&agent, 1, Duration::from_secs(300));
    let to_first = started.elapsed();
    let pid = agent.pid().expect("the agent runs");
    let rss_first = rss_kib(pid);
    println!(
        "{count} services x {per} tasks (Docker's answers: services {} KB, tasks {} KB)",
        services_json.len() / 1000,
        tasks_bytes / 1000
    );
    println!(
        "start -> first config applied: {:.0} ms (sites={}, upstreams={}; render {} ms, nginx -t {} ms, reload {} ms); agent RSS {} KiB",
        to_first.as_secs_f64() * 1000.0,
        field(&first, "sites").unwrap_or("?"),
        field(&first, "upstreams").unwrap_or("?"),
        field(&first, "render_ms").unwrap_or("?"),
        field(&first, "test_ms").unwrap_or("?"),
        field(&first, "reload_ms").unwrap_or("?"),
        rss_first
    );
    assert_eq!(field(&first, "sites"), Some(count.to_string().as_str()), "every service routed: {first}");

    let mut passes = Vec::new();
    for round in 1..=rounds {
        // One service's tasks move; the event stream is cut: the agent resyncs and applies.
        proxy.reply("/tasks", tasks(count, per, round));
        let resyncs_before = agent.log().matches("resyncing").count();
        proxy.down();
        std::thread::sleep(Duration::from_millis(100));
        proxy.up();
        let line = wait_applied(&agent, 1 + round, Duration::from_secs(120));
        let log = agent.log();
        let resync = log
            .lines()
            .filter(|l| l.contains("resyncing"))
            .nth(resyncs_before)
            .unwrap_or_else(|| panic!("no resync line:\n{log}"))
            .to_string();
        let pass = at(&line).unwrap() - at(&resync).unwrap();
        println!(
            "resync {round}: {:.0} ms from the reconnect to config applied (render {} ms, nginx -t {} ms, reload {} ms)",
            pass * 1000.0,
            field(&line, "render_ms").unwrap_or("?"),
            field(&line, "test_ms").unwrap_or("?"),
            field(&line, "reload_ms").unwrap_or("?")
        );
        passes.push(pass);
    }
    passes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if !passes.is_empty() {
        println!(
            "resync over {count} services x {per} tasks: median {:.0} ms, slowest {:.0} ms; agent RSS {} KiB after",
            passes[passes.len() / 2] * 1000.0,
            passes[passes.len() - 1] * 1000.0,
            rss_kib(pid)
        );
    }
}

//! The Docker API calls each setup makes (docs/docker-api.md), behind a socket proxy that records
//! every request and refuses every method but GET and HEAD, as operators run one in front of the
//! socket: the agent that reads labels (nginx its child) needs nothing else, and a refused
//! `heal=restart` is logged and changes nothing else; the companion setup needs exec, and a proxy
//! that refuses it leaves nginx on the config it has, with an error that says so.

use std::time::Duration;

use crate::companion::{started_app, Companion, Options};
use crate::support::agent::Agent;
use crate::support::docker::TestDocker;
use crate::support::docker_faults::DockerFaults;

/// `/v1.41/containers/3f0a…/json` → `/containers/{id}/json`: the API version dropped, and the
/// object after a collection named by `{id}`.
fn endpoint(path: &str) -> String {
    let mut out = Vec::new();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        let version = i == 0 && segment.starts_with('v') && segment[1..].starts_with(|c: char| c.is_ascii_digit());
        if version {
            continue;
        }
        let after_collection =
            i > 0 && ["containers", "exec", "services", "tasks", "networks", "nodes"].contains(&segments[i - 1]);
        out.push(if after_collection && *segment != "json" { "{id}" } else { segment });
    }
    format!("/{}", out.join("/"))
}

/// docs/docker-api.md's table: (method, path) → the setups that need it.
fn documented() -> Vec<(String, String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/docker-api.md")).unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells[0].to_string(), cells[1].to_string(), cells[3].to_string())
        })
        .collect()
}

/// Every request `faults` saw is in docs/docker-api.md for one of `setups`; the ones not refused
/// are returned as endpoints.
fn assert_documented(faults: &DockerFaults, setups: &[&str]) -> Vec<(String, String)> {
    let table = documented();
    assert!(table.len() >= 5, "docs/docker-api.md's table: {table:?}");
    let mut calls: Vec<(String, String)> = faults.requests().iter().map(|(m, p, _)| (m.clone(), endpoint(p))).collect();
    calls.sort();
    calls.dedup();
    for (method, path) in &calls {
        let row = table.iter().find(|(m, p, _)| m == method && p == path);
        let row = row.unwrap_or_else(|| panic!("{method} {path} is not in docs/docker-api.md: {table:#?}"));
        assert!(setups.contains(&row.2.as_str()), "{method} {path} is documented for {:?}, seen for {setups:?}", row.2);
    }
    calls
}

#[test]
fn behind_a_read_only_socket_proxy_the_agent_serves_labels_and_only_heal_is_refused() {
    require_docker!();
    let faults = DockerFaults::start();
    faults.read_only();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![
        docker.app("one").label("domains", "one.test").network(&net),
        docker.app("wedged").label("domains", "wedged.test").label("port", "9").label("heal", "restart").network(&net),
    ]);
    let (prefix, host) = (docker.prefix(), faults.host());
    let agent =
        Agent::start(&[("LABEL_PREFIX", prefix.as_str()), ("DOCKER_HOST", host.as_str()), ("HEAL_AFTER", "1s")]);
    agent.wait_for_status("one.test", 200, Some("one"));
    // Events come through: a container started now is served.
    docker.start(vec![docker.app("two").label("domains", "two.test").network(&net)]);
    agent.wait_for_status("two.test", 200, Some("two"));
    assert_eq!(agent.status_get("/healthz").0, 200);
    let refused = || faults.requests().into_iter().filter(|r| r.2).collect::<Vec<_>>();
    assert!(refused().is_empty(), "reading labels needs only GETs: {:?}", refused());

    // heal=restart needs a POST: refused, logged, and nothing else changes.
    agent.wait_for("the refused restart", Duration::from_secs(60), || {
        agent.get("wedged.test", "/");
        std::thread::sleep(Duration::from_millis(100));
        agent.log().contains("heal: the restart failed")
    });
    let wedged = docker.id(&docker.name("wedged"));
    assert!(
        refused()
            .iter()
            .all(|(m, p, _)| m == "POST" && endpoint(p) == "/containers/{id}/restart" && p.contains(&wedged)),
        "{:?}",
        refused()
    );
    assert!(agent.log().contains("403"), "the log says what Docker answered:\n{}", agent.log());
    agent.wait_for_status("one.test", 200, Some("one"));
    let calls = assert_documented(&faults, &["labels", "heal"]);
    // And every call the table gives these setups was made: the table holds nothing stale.
    for (method, path, setup) in documented() {
        if setup == "labels" || setup == "heal" {
            assert!(calls.contains(&(method.clone(), path.clone())), "{method} {path} ({setup}) not seen: {calls:?}");
        }
    }
}

#[test]
fn the_companion_setup_needs_exec_and_a_read_only_proxy_keeps_the_config_nginx_has() {
    require_docker!();
    let faults = DockerFaults::start();
    let docker = TestDocker::new();
    let socket = faults.host().trim_start_matches("unix://").to_string();
    let c = Companion::start(&docker, Options::docker_socket(&socket));
    started_app(&docker, &c, "first");
    c.wait_for_status("first.test", 200, Some("first"));
    // nginx answers once the exec reloaded it; the agent reads the exec's exit code after that.
    c.wait_for("the apply to finish", Duration::from_secs(20), || c.agent_log().contains("config applied"));
    let calls = assert_documented(&faults, &["labels", "companion"]);
    for (method, path, setup) in documented() {
        if setup == "companion" {
            assert!(calls.contains(&(method.clone(), path.clone())), "{method} {path} ({setup}) not seen: {calls:?}");
        }
    }

    // Read-only from now on: the next change cannot be tested or applied in nginx's container.
    faults.read_only();
    started_app(&docker, &c, "second");
    c.wait_for("the refused exec in the agent's log", Duration::from_secs(30), || {
        let log = c.agent_log();
        log.contains("cannot run docker exec") && log.contains("403")
    });
    c.wait_for_status("first.test", 200, Some("first"));
    let (status, _) = crate::support::agent::http_get(c.port(), "second.test", "/");
    assert_eq!(status, 503, "nginx keeps the config it has (second.test is not routed)");
    let refused: Vec<String> =
        faults.requests().into_iter().filter(|r| r.2).map(|(m, p, _)| format!("{m} {}", endpoint(&p))).collect();
    assert!(!refused.is_empty() && refused.iter().all(|r| r == "POST /containers/{id}/exec"), "{refused:?}");
}

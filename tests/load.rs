//! Load while reloading: `wrk` (Debian's package; `.ci/run` installs it) sends requests through
//! the agent's nginx (the host-process agent, nginx as its child) to a stable domain with two
//! replicas, while other labelled containers are stopped, started (and renamed) again and again,
//! so the config is tested and nginx reloaded 50+ times. Not one request may fail.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::agent::Agent;
use crate::support::docker::{docker as cli, TestDocker};
use crate::support::wrk::{have_wrk, Report, Wrk};

const RELOADED: &str = "config applied and nginx reloaded";
/// Reloads to reach during the load (the test asks for 50+): the churn stops there.
const TARGET_RELOADS: usize = 55;
/// The longest the churn (and the load) runs: the whole test stays under ~60 s.
const MAX_CHURN: Duration = Duration::from_secs(40);
/// Labelled containers stopped, started and renamed again and again.
const CHURNERS: usize = 3;
/// Renames of a churn container after each stop and start (the last restores its name).
const RENAMES: usize = 4;

#[test]
fn no_request_fails_while_nginx_reloads_50_times() {
    require_docker!();
    if !have_wrk() {
        return;
    }
    let started = Instant::now();
    let docker = TestDocker::new();
    let net = docker.network("net");
    let stable = |n: u32| {
        docker.app(&format!("stable{n}")).label("domains", "stable.test").label("service", "stable").network(&net)
    };
    let churn = |n: usize| docker.app(&format!("churn{n}")).label("domains", &format!("churn{n}.test")).network(&net);
    let mut apps = vec![stable(1), stable(2)];
    apps.extend((1..=CHURNERS).map(churn));
    docker.start(apps);
    let prefix = docker.prefix();
    // The access logs (one line per request) go outside nginx's config directory, which the
    // agent copies for every `nginx -t`.
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().display().to_string();
    let agent = Agent::start(&[
        ("LABEL_PREFIX", &prefix),
        ("DEBOUNCE", "10ms"),
        ("DEBOUNCE_MAX", "50ms"),
        ("LOG_DIR", &log_dir),
    ]);
    agent.wait_for("both stable replicas to answer", Duration::from_secs(20), || {
        let seen: std::collections::BTreeSet<String> = (0..20).map(|_| agent.get("stable.test", "/").1).collect();
        seen.contains("stable1\n") && seen.contains("stable2\n")
    });
    for n in 1..=CHURNERS {
        agent.wait_for_status(&format!("churn{n}.test"), 200, Some(&format!("churn{n}")));
    }
    let reloads = || agent.log().matches(RELOADED).count();
    let before = reloads();

    let addr = SocketAddr::from(([127, 0, 0, 1], agent.port));
    let wrk = Wrk::start(addr, "stable.test", 16, MAX_CHURN + Duration::from_secs(5));
    let load_started = Instant::now();
    // One change at a time, round robin over the churn containers; each goes round: stopped (its
    // domain loses its live server), started again (a new address), renamed a few times and back
    // (its upstream is named after the container). Every step is a config change and a reload. Docker
    // takes up to a second or more to stop or start a container on a busy host; a rename is
    // instant, so the renames keep the reload count up there. One change at a time because a
    // pass that inspects a container while Docker is still stopping or starting it waits for
    // that operation: parallel changes mostly merge into fewer passes; after a rename the churn
    // waits for the reload, so that the next rename is a pass of its own. No request goes to
    // the churned domains: for a moment after a change nginx's old workers still proxy them to
    // an address that is gone, which is slow to fail.
    let names: Vec<String> = (1..=CHURNERS).map(|n| docker.name(&format!("churn{n}"))).collect();
    let done = AtomicBool::new(false);
    let changes = std::thread::scope(|s| {
        let churn = s.spawn(|| {
            let mut changes = 0;
            while !done.load(Ordering::Relaxed) {
                let name = names[changes % CHURNERS].as_str();
                // Its name after rename `n` of a round: the last one restores the real name.
                let alias =
                    |n: usize| if n.is_multiple_of(RENAMES) { name.to_string() } else { format!("{name}-r{n}") };
                let step = (changes / CHURNERS) % (2 + RENAMES);
                let (from, to) = (alias(step.saturating_sub(2)), alias(step.saturating_sub(1)));
                let args = match step {
                    0 => vec!["stop", "--time", "2", name],
                    1 => vec!["start", name],
                    _ => vec!["rename", &from, &to],
                };
                let seen = reloads();
                cli(&args);
                if step >= 2 {
                    agent.wait_for("a reload after a rename", Duration::from_secs(10), || reloads() > seen);
                }
                changes += 1;
            }
            changes
        });
        while reloads() - before < TARGET_RELOADS && load_started.elapsed() < MAX_CHURN && !churn.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
        }
        done.store(true, Ordering::Relaxed);
        churn.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    let reloaded = reloads() - before;
    // A moment of load on the final config, then wrk's summary.
    std::thread::sleep(Duration::from_millis(500));
    let load_time = load_started.elapsed();
    let text = wrk.finish();
    let report = Report::parse(&text);
    eprintln!(
        "load: {} requests in {:.1} s, {:.0} requests/s (wrk), {reloaded} reloads, {changes} container stops, starts and renames; test total {:.1} s",
        report.requests,
        load_time.as_secs_f64(),
        report.per_second,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{text}");

    assert!(report.requests > 0, "wrk sent no request:\n{text}");
    assert!(report.failures().is_none(), "requests failed while nginx reloaded ({:?}):\n{text}", report.failures());
    assert!(
        reloaded >= 50,
        "only {reloaded} reloads in {load_time:?} ({changes} container stops, starts and renames); 50+ expected\n{}",
        agent.log()
    );
    assert_eq!(agent.get("stable.test", "/").0, 200);
}

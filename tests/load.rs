//! Load while reloading: `wrk` (Debian's package; `.ci/run` installs it) sends requests through
//! the agent's nginx (the host-process agent, nginx as its child) to a stable domain with two
//! replicas, while other labelled containers are stopped, started (and renamed) again and again,
//! so the config is tested and nginx reloaded 50+ times. Not one request may fail.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::agent::Agent;
use crate::support::docker::{docker as cli, TestDocker};

const RELOADED: &str = "config applied and nginx reloaded";
/// Reloads to reach during the load (the test asks for 50+): the churn stops there.
const TARGET_RELOADS: usize = 55;
/// The longest the churn (and the load) runs: the whole test stays under ~60 s.
const MAX_CHURN: Duration = Duration::from_secs(40);
/// Labelled containers stopped, started and renamed again and again.
const CHURNERS: usize = 3;
/// Renames of a churn container after each stop and start (the last restores its name).
const RENAMES: usize = 4;

/// True when `wrk` can be run. Missing: a failure under CI, else a loud skip.
fn have_wrk() -> bool {
    match Command::new("wrk").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => true,
        Err(e) => {
            let test = std::thread::current().name().unwrap_or("this test").to_string();
            if crate::support::in_ci() {
                panic!("{test}: wrk is required under CI and cannot be run ({e}); install Debian's wrk (apt-get install wrk; .ci/run does this)");
            }
            eprintln!(
                "\n*** SKIPPED {test}: wrk cannot be run ({e}); install Debian's wrk (apt-get install wrk). ***\n"
            );
            false
        }
    }
}

/// A running wrk; interrupted (SIGINT: wrk stops and prints its summary) when finished or dropped.
struct Wrk {
    child: Option<Child>,
}

impl Wrk {
    /// `wrk -t2 -c16 -d<max> --timeout 10s --latency -H 'Host: <host>' -H 'Connection: close'
    /// http://127.0.0.1:<port>/`.
    ///
    /// `--timeout 10s` (wrk's default is 2 s): on a busy host a request can take that long without
    /// anything failing; a request that hangs still counts as an error.
    ///
    /// `Connection: close`: a new connection per request. On persistent connections a reload
    /// makes nginx's old workers close their idle keep-alive connections, and a request the client
    /// sent at that instant is lost with the connection (the race every HTTP/1.1 client must
    /// handle by retrying; wrk counts it as a read error instead). That is nginx's and the
    /// client's business, not the agent's: here every failure would be the agent's.
    fn start(port: u16, host: &str, max: Duration) -> Wrk {
        let child = Command::new("wrk")
            .args(["-t2", "-c16", &format!("-d{}s", max.as_secs()), "-H", &format!("Host: {host}")])
            .args(["--timeout", "10s", "--latency", "-H", "Connection: close"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wrk");
        Wrk { child: Some(child) }
    }

    /// Stops wrk and returns its report (stdout and stderr).
    fn finish(mut self) -> String {
        let child = self.child.take().unwrap();
        interrupt(&child);
        let out = child.wait_with_output().expect("wait for wrk");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn interrupt(child: &Child) {
    let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
}

/// What wrk reported.
#[derive(Debug)]
struct Report {
    requests: u64,
    per_second: f64,
}

fn parse(report: &str) -> Report {
    let requests = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    let per_second = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's report:\n{report}"));
    Report { requests, per_second }
}

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

    let wrk = Wrk::start(agent.port, "stable.test", MAX_CHURN + Duration::from_secs(5));
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
    let report = parse(&text);
    eprintln!(
        "load: {} requests in {:.1} s, {:.0} requests/s (wrk), {reloaded} reloads, {changes} container stops, starts and renames; test total {:.1} s",
        report.requests,
        load_time.as_secs_f64(),
        report.per_second,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{text}");

    assert!(report.requests > 0, "wrk sent no request:\n{text}");
    assert!(!text.contains("Socket errors"), "requests failed at the socket level while nginx reloaded:\n{text}");
    assert!(!text.contains("Non-2xx or 3xx responses"), "requests answered with errors while nginx reloaded:\n{text}");
    assert!(
        reloaded >= 50,
        "only {reloaded} reloads in {load_time:?} ({changes} container stops, starts and renames); 50+ expected\n{}",
        agent.log()
    );
    assert_eq!(agent.get("stable.test", "/").0, 200);
}

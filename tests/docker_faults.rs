//! The agent against a Docker daemon that misbehaves: calls that fail, hang or answer garbage,
//! and a daemon that goes away and comes back. The faults come from a proxy in front of the real
//! socket (support::docker_faults); the containers and nginx are real.

use std::time::Duration;

use crate::support::agent::Agent;
use crate::support::docker::TestDocker;
use crate::support::docker_faults::{DockerFaults, Fault};

/// The agent reaching Docker through the fault proxy, a test's containers on the network `net`,
/// and `one.test` already routed to the container `one`. Dropped in this order: the agent first.
struct Setup {
    agent: Agent,
    net: String,
    docker: TestDocker,
    faults: DockerFaults,
}

fn setup() -> Setup {
    let faults = DockerFaults::start();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![docker.app("one").label("domains", "one.test").network(&net)]);
    let (prefix, host) = (docker.prefix(), faults.host());
    let agent = Agent::start(&[("LABEL_PREFIX", prefix.as_str()), ("DOCKER_HOST", host.as_str())]);
    agent.wait_for_status("one.test", 200, Some("one"));
    Setup { agent, net, docker, faults }
}

impl Setup {
    /// Starts the container `short` for `domain`, its inspect answered with `fault`; its name.
    fn start_with_fault(&self, short: &str, domain: &str, fault: Fault) -> String {
        let name = self.docker.create(&self.docker.app(short).label("domains", domain).network(&self.net));
        self.faults.add(&format!("/containers/{}/json", self.docker.id(&name)), fault);
        crate::support::docker::docker(&["start", &name]);
        name
    }
}

fn metric(agent: &Agent, name: &str) -> Option<f64> {
    let (_, text) = agent.status_get("/metrics");
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// An inspect that fails (an error answer, then garbage) is retried with backoff until it works;
/// meanwhile `/healthz` and `/metrics` say Docker is degraded, and other routes keep changing.
#[test]
fn a_failed_inspect_is_retried_until_it_succeeds() {
    require_docker!();
    let setup = setup();
    let Setup { agent, net, docker, faults } = &setup;
    assert_eq!(agent.status_get("/healthz"), (200, "ok\n".into()));

    for fault in [Fault::Error, Fault::Garbage] {
        let short = format!("flaky{}", if fault == Fault::Error { "error" } else { "garbage" });
        let domain = format!("{short}.test");
        setup.start_with_fault(&short, &domain, fault);
        agent.wait_for("/healthz to report a degraded Docker", Duration::from_secs(15), || {
            let (status, body) = agent.status_get("/healthz");
            status == 503 && body.starts_with("Docker degraded: 1 container cannot be inspected")
        });
        assert_eq!(metric(agent, "smart_proxy_docker_degraded"), Some(1.0));
        assert_eq!(agent.get(&domain, "/").0, 503, "not routed while its inspect fails");
        // Another container still gets routed meanwhile.
        let other = format!("other{short}");
        docker.start(vec![docker.app(&other).label("domains", &format!("{other}.test")).network(net)]);
        agent.wait_for_status(&format!("{other}.test"), 200, Some(&other));

        faults.clear();
        agent.wait_for_status(&domain, 200, Some(&short));
        agent.wait_for("/healthz to be ok again", Duration::from_secs(10), || {
            agent.status_get("/healthz") == (200, "ok\n".into())
        });
        assert_eq!(metric(agent, "smart_proxy_docker_degraded"), Some(0.0));
    }
    let log = agent.log();
    assert!(log.contains("Docker is degraded: 1 container cannot be inspected"), "{log}");
    assert!(log.contains("Docker calls succeed again"), "{log}");
}

/// One inspect that never answers holds up nothing but its own container: it times out, is
/// retried, and a container started meanwhile is routed.
#[test]
fn a_hung_inspect_does_not_freeze_other_route_changes() {
    require_docker!();
    let setup = setup();
    let Setup { agent, net, docker, faults } = &setup;

    setup.start_with_fault("hung", "hung.test", Fault::Hang);
    // Before the fix the pass waited for the library's 120 s timeout and nothing else changed.
    docker.start(vec![docker.app("next").label("domains", "next.test").network(net)]);
    agent.wait_for_status("next.test", 200, Some("next"));
    agent.wait_for("/healthz to report the hung inspect", Duration::from_secs(15), || {
        let (status, body) = agent.status_get("/healthz");
        status == 503 && body.contains("got no answer within 5 s")
    });
    faults.clear();
    agent.wait_for_status("hung.test", 200, Some("hung"));
    assert_eq!(agent.get("one.test", "/"), (200, "one\n".into()));
}

/// While Docker is away the agent tries again at least every second (the backoff used to double
/// to 30 s, leaving routes stale that long after Docker came back), and once Docker answers a
/// container started during the outage is routed.
#[test]
fn after_an_outage_docker_is_retried_every_second_and_routes_catch_up() {
    require_docker!();
    let setup = setup();
    let Setup { agent, net, docker, faults } = &setup;

    faults.down();
    docker.start(vec![docker.app("during").label("domains", "during.test").network(net)]);
    std::thread::sleep(Duration::from_secs(9));
    let attempts = faults.attempts_while_down();
    assert_eq!(agent.get("one.test", "/"), (200, "one\n".into()), "the last good config stays live");
    faults.up();

    // The agent's own attempts (the status endpoint was not asked meanwhile): ping after ping.
    assert!(attempts.len() >= 5, "only {} attempts to reach Docker in 9 s", attempts.len());
    let widest = attempts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(widest <= Duration::from_millis(1500), "{widest:?} between two attempts to reach Docker");
    agent.wait_for_status("during.test", 200, Some("during"));
    assert!(agent.log().contains("Docker is reachable again"), "{}", agent.log());
}

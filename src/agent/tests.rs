//! The controller without a daemon: what passes do for a sequence of Docker events (with
//! [`FakeDocker`] behind the real event watcher). The run loop's timing is tested in `run.rs`.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;

use super::fake::FakeDocker;
use super::store::tests::app;
use super::watch::{watch_docker, Converging};
use super::{Controller, Trigger};
use crate::apply::nginx::CompanionNginx;
use crate::apply::{Applier, Nginx};
use crate::config::Config;
use crate::render::Renderer;
use crate::routes::RouteTable;
use crate::settings::Settings;
use crate::sources::docker::NginxState;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    settings: Settings,
}

/// The defaults (no environment is read that a test could have set: none of these are set here),
/// with nginx's version given rather than asked, and Swarm off (the Swarm test turns it on).
fn config() -> Config {
    let args = Args::try_parse_from(["test", "--nginx-version", "1.27.0", "--swarm", "off"]).expect("defaults parse");
    Config::from_settings(&args.settings).expect("the defaults are valid")
}

/// A controller driving a companion nginx container named `nginx` (on network `net`), reading
/// `docker`, with the real Docker watcher sending it triggers.
struct Harness {
    docker: Arc<FakeDocker>,
    controller: Controller,
    rx: mpsc::Receiver<Trigger>,
}

impl Harness {
    async fn new(docker: FakeDocker) -> Harness {
        Harness::with_swarm(docker, true).await
    }

    /// A harness whose Docker watcher follows Swarm services' tasks (`SWARM` auto or on) or not.
    async fn with_swarm(docker: FakeDocker, follow_swarm: bool) -> Harness {
        let docker = Arc::new(docker);
        docker.set_nginx(NginxState {
            id: "id-nginx".into(),
            name: "nginx".into(),
            networks: ["net".to_string()].into(),
            run: Some("id-nginx@1".into()),
        });
        let config = config();
        // Never used: the tests stop before apply (bollard connects lazily).
        let client = bollard::Docker::connect_with_defaults().expect("a client");
        let nginx =
            CompanionNginx { docker: client, container: "nginx".into(), main_conf: config.nginx.main_conf.clone() };
        let applier = Applier::new(Nginx::Companion(nginx), config.nginx.conf.clone(), config.certs_dir.clone());
        let (tx, rx) = mpsc::channel(1024);
        let mut controller = Controller::new(config, tx.clone(), applier, Renderer::builtin());
        controller.docker = Some(docker.clone());
        let converging = follow_swarm.then(|| Converging::new(docker.clone(), tx.clone(), "smart-proxy".into()));
        controller.converging = converging.clone();
        tokio::spawn(watch_docker(docker.clone(), tx, "smart-proxy".into(), converging));
        let mut harness = Harness { docker, controller, rx };
        // The watcher asks for a resync once its event stream is open.
        assert!(matches!(harness.recv().await, Trigger::Resync));
        assert_eq!(harness.docker.streams(), 1);
        harness
    }

    async fn recv(&mut self) -> Trigger {
        let trigger = tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await;
        trigger.expect("a trigger within 5 s").expect("the channel is open")
    }

    /// Notes the next `n` triggers; whether each asked for a pass.
    async fn note(&mut self, n: usize) -> Vec<bool> {
        let mut asked = Vec::new();
        for _ in 0..n {
            let trigger = self.recv().await;
            asked.push(self.controller.note(trigger));
        }
        asked
    }

    /// A pass up to the table (apply is the `Applier`'s, tested on its own): `None` when no config
    /// may be rendered yet.
    async fn pass(&mut self) -> Option<RouteTable> {
        if !self.controller.refresh().await {
            return None;
        }
        Some(self.controller.table())
    }

    /// The first pass: lists, and the table.
    async fn first_pass(&mut self) -> RouteTable {
        self.controller.note(Trigger::Resync);
        let table = self.pass().await.expect("the first list is complete");
        self.docker.calls();
        self.controller.causes.clear();
        table
    }

    fn degraded(&self) -> Option<&str> {
        self.controller.docker_trouble.as_ref().map(|(t, _)| t.as_str())
    }
}

/// The routes of a table: each site's domain and how many servers its upstreams have.
fn routes(table: &RouteTable) -> Vec<String> {
    table
        .sites
        .iter()
        .map(|site| {
            let servers: usize = site
                .locations
                .iter()
                .filter_map(|l| l.upstream.as_ref())
                .filter_map(|id| table.upstreams.iter().find(|u| u.id == *id))
                .map(|u| u.backends.len())
                .sum();
            format!("{} ({servers} servers)", site.domain)
        })
        .collect()
}

fn running(docker: &FakeDocker, name: &str, domain: &str) {
    docker.run(app(name, domain));
}

#[tokio::test]
async fn no_docker_route_is_rendered_before_the_first_complete_list() {
    let docker = FakeDocker::default();
    running(&docker, "a", "a.com");
    running(&docker, "b", "b.com");
    docker.fail_inspect("id-b", true);
    let mut h = Harness::new(docker).await;

    assert!(h.pass().await.is_none(), "b's inspect failed: the picture is partial");
    assert_eq!(h.docker.calls(), ["list", "inspect id-a", "inspect id-b"]);
    assert!(h.degraded().unwrap().starts_with("1 container cannot be inspected"));
    assert_eq!(h.controller.next_retry(), Some(Duration::from_millis(250)));

    h.controller.retry_due();
    assert!(h.pass().await.is_none());
    assert_eq!(h.docker.calls(), ["list", "inspect id-a", "inspect id-b", "inspect id-b"]);
    assert_eq!(h.controller.next_retry(), Some(Duration::from_millis(500)), "backoff doubles");

    h.docker.fail_inspect("id-b", false);
    h.controller.retry_due();
    let table = h.pass().await.expect("complete now");
    assert_eq!(routes(&table), ["a.com (1 servers)", "b.com (1 servers)"]);
    assert_eq!(h.docker.calls(), ["list", "inspect id-a", "inspect id-b", "nginx_state nginx"]);
    assert_eq!(h.degraded(), None);
    assert_eq!(h.controller.next_retry(), None);
}

#[tokio::test]
async fn a_started_container_is_inspected_and_routed_and_a_removed_one_leaves() {
    let mut h = Harness::new(FakeDocker::default()).await;
    assert_eq!(routes(&h.first_pass().await), Vec::<String>::new());

    running(&h.docker, "a", "a.com");
    assert_eq!(h.note(1).await, [true]);
    let table = h.pass().await.unwrap();
    assert_eq!(routes(&table), ["a.com (1 servers)"]);
    assert_eq!(h.docker.calls(), ["inspect id-a"], "only what the event named");
    let config = h.controller.renderer.render(&table, &h.controller.config.render).expect("renders");
    assert!(config.contains("server_name a.com;") && config.contains("server 172.18.0.5:8080"), "{config}");

    h.docker.remove("id-a");
    assert_eq!(h.note(1).await, [true]);
    assert_eq!(routes(&h.pass().await.unwrap()), Vec::<String>::new());
    assert_eq!(h.docker.calls(), ["inspect id-a"]);
}

#[tokio::test]
async fn a_failing_inspect_keeps_the_last_known_state_and_is_retried_until_it_answers() {
    let docker = FakeDocker::default();
    running(&docker, "a", "a.com");
    let mut h = Harness::new(docker).await;
    assert_eq!(routes(&h.first_pass().await), ["a.com (1 servers)"]);

    // a stops while Docker does not answer its inspect: its last known state (running) stays.
    h.docker.fail_inspect("id-a", true);
    h.docker.stop("id-a");
    assert_eq!(h.note(2).await, [true, true], "die, stop");
    assert_eq!(routes(&h.pass().await.unwrap()), ["a.com (1 servers)"]);
    assert_eq!(h.docker.calls(), ["inspect id-a"], "two events, one inspect");
    assert!(h.degraded().unwrap().contains("inspect container id-a got no answer"));
    assert_eq!(h.controller.next_retry(), Some(Duration::from_millis(250)));

    h.controller.retry_due();
    assert_eq!(routes(&h.pass().await.unwrap()), ["a.com (1 servers)"]);
    assert_eq!(h.docker.calls(), ["inspect id-a"], "retried, without a list");
    assert_eq!(h.controller.next_retry(), Some(Duration::from_millis(500)));

    h.docker.fail_inspect("id-a", false);
    h.controller.retry_due();
    assert_eq!(routes(&h.pass().await.unwrap()), ["a.com (0 servers)"], "stopped: no live server");
    assert_eq!(h.docker.calls(), ["inspect id-a"]);
    assert_eq!(h.degraded(), None, "recovered");
    assert_eq!(h.controller.next_retry(), None);
}

#[tokio::test]
async fn an_event_about_an_unlabelled_unknown_container_asks_for_no_pass() {
    let mut h = Harness::new(FakeDocker::default()).await;
    h.first_pass().await;
    let mut plain = app("plain", "x.com");
    plain.labels.clear();
    h.docker.run(plain);
    assert_eq!(h.note(1).await, [false]);
    assert!(h.controller.causes.is_empty());
    assert!(h.controller.store.take_dirty().is_empty(), "nothing to inspect");
}

#[tokio::test]
async fn a_network_change_of_the_nginx_container_reads_its_networks_again() {
    let docker = FakeDocker::default();
    let mut a = app("a", "a.com");
    // On two networks: the one nginx shares is chosen.
    a.networks.insert(
        "other".into(),
        crate::sources::labels::NetworkAddress { ipv4: Some([10, 0, 0, 9].into()), ipv6: None },
    );
    docker.run(a);
    let mut h = Harness::new(docker).await;
    let table = h.first_pass().await;
    let server = |t: &RouteTable| t.upstreams[0].backends[0].host.to_string();
    assert_eq!(server(&table), "172.18.0.5", "nginx is on net");

    // nginx leaves net for other (network events name no container, only its id).
    h.docker.connect_nginx("other");
    assert_eq!(h.note(1).await, [true]);
    assert!(h.controller.nginx_changed);
    let table = h.pass().await.unwrap();
    // Read again without a list (and nginx's container inspected like any container an event names).
    assert_eq!(h.docker.calls(), ["nginx_state nginx", "inspect id-nginx"]);
    let networks = &h.controller.nginx.as_ref().unwrap().networks;
    assert_eq!(networks.iter().map(String::as_str).collect::<Vec<_>>(), ["net", "other"]);
    assert_eq!(server(&table), "172.18.0.5", "net is still shared and first by name");
}

#[tokio::test]
async fn a_start_of_the_nginx_container_lists_again_and_reads_its_new_run() {
    let docker = FakeDocker::default();
    running(&docker, "a", "a.com");
    let mut h = Harness::new(docker).await;
    h.first_pass().await;
    assert_eq!(h.controller.nginx_run().map(String::as_str), Some("id-nginx@1"));

    h.docker.restart_nginx();
    assert_eq!(h.note(1).await, [true], "unlabelled, but nginx's");
    assert_eq!(routes(&h.pass().await.unwrap()), ["a.com (1 servers)"]);
    assert_eq!(h.docker.calls(), ["list", "inspect id-a", "nginx_state nginx"], "a resync");
    assert_eq!(h.controller.nginx_run().map(String::as_str), Some("id-nginx@2"));
}

#[tokio::test]
async fn a_lost_event_stream_is_reopened_and_its_resync_repairs_a_missed_removal() {
    let docker = FakeDocker::default();
    running(&docker, "a", "a.com");
    running(&docker, "b", "b.com");
    let mut h = Harness::new(docker).await;
    assert_eq!(routes(&h.first_pass().await), ["a.com (1 servers)", "b.com (1 servers)"]);

    h.docker.end_streams();
    // Removed while no stream is open: its destroy event is lost.
    h.docker.remove("id-b");
    assert!(matches!(h.recv().await, Trigger::Resync), "the watcher reconnects and asks for a resync");
    assert_eq!(h.docker.streams(), 1);
    assert!(h.controller.note(Trigger::Resync));
    assert_eq!(routes(&h.pass().await.unwrap()), ["a.com (1 servers)"]);
    assert_eq!(h.docker.calls(), ["list", "inspect id-a", "nginx_state nginx"]);
}

/// A service `shop` (id `svc-shop`) routing shop.com on port 8080, with `tasks`: (id, state,
/// desired state), each at its own address on `net`.
fn shop(tasks: &[(&str, &str, &str)]) -> crate::sources::swarm::SwarmService {
    use crate::sources::swarm::{SwarmService, SwarmTask};
    SwarmService {
        id: "svc-shop".into(),
        name: "shop".into(),
        labels: [
            ("smart-proxy.domains".to_string(), "shop.com".to_string()),
            ("smart-proxy.port".to_string(), "8080".to_string()),
        ]
        .into(),
        vips: [("net".to_string(), [10, 0, 1, 2].into())].into(),
        tasks: tasks
            .iter()
            .enumerate()
            .map(|(i, (id, state, desired))| SwarmTask {
                id: id.to_string(),
                slot: i as i64 + 1,
                state: state.to_string(),
                desired_state: desired.to_string(),
                networks: [("net".to_string(), [10, 0, 1, 10 + i as u8].into())].into(),
            })
            .collect(),
    }
}

impl Harness {
    /// Notes triggers and runs passes until the table's routes are `expected`; the causes seen.
    async fn until(&mut self, expected: &[&str]) -> Vec<String> {
        let mut causes = Vec::new();
        loop {
            let trigger = self.recv().await;
            causes.push(self.controller.describe(self.controller.cause_of(&trigger)));
            if self.controller.note(trigger) && routes(&self.pass().await.expect("listed")) == expected {
                return causes;
            }
        }
    }
}

#[tokio::test]
async fn swarm_services_are_routed_by_task_and_followed_until_their_tasks_converge() {
    let docker = FakeDocker::default();
    docker.swarm_init();
    running(&docker, "a", "a.com");
    let mut h = Harness::new(docker).await;
    h.controller.store.set_swarm(None);
    h.controller.note(Trigger::Resync);
    assert_eq!(routes(&h.pass().await.expect("listed")), ["a.com (1 servers)"]);
    assert_eq!(
        h.docker.calls(),
        ["list", "inspect id-a", "nginx_state nginx", "info", "services"],
        "SWARM=auto asks once"
    );

    // Created: the event, then the watch of its tasks.
    h.docker.set_service(shop(&[("t1", "running", "running")]));
    let causes = h.until(&["a.com (1 servers)", "shop.com (1 servers)"]).await;
    assert_eq!(causes[0], "service shop: create");
    // Scaled (an update event, then tasks change without events): a task serves once it runs.
    h.docker.set_service(shop(&[("t1", "running", "running"), ("t2", "preparing", "running")]));
    h.until(&["a.com (1 servers)", "shop.com (1 servers)"]).await;
    h.docker.set_tasks("svc-shop", shop(&[("t1", "running", "running"), ("t2", "running", "running")]).tasks);
    let causes = h.until(&["a.com (1 servers)", "shop.com (2 servers)"]).await;
    assert!(causes.iter().all(|c| c == "service shop: tasks changed"), "{causes:?}");
    // Scaled down: the task Swarm stops leaves the upstream while it still runs.
    h.docker.set_service(shop(&[("t1", "running", "running"), ("t2", "running", "shutdown")]));
    h.until(&["a.com (1 servers)", "shop.com (1 servers)"]).await;
    // A node went down: Swarm sets its tasks' desired state to shutdown without a service event;
    // the node event starts a watch of every service.
    h.docker.set_service(shop(&[("t1", "running", "running"), ("t3", "running", "running")]));
    h.until(&["a.com (1 servers)", "shop.com (2 servers)"]).await;
    h.docker.node_down("node-2");
    h.docker.set_tasks("svc-shop", shop(&[("t1", "running", "running"), ("t3", "running", "shutdown")]).tasks);
    let causes = h.until(&["a.com (1 servers)", "shop.com (1 servers)"]).await;
    assert!(causes.iter().all(|c| c.starts_with("node node-2: ")), "{causes:?}");
    // Removed: its route is gone.
    h.docker.remove_service("svc-shop");
    let causes = h.until(&["a.com (1 servers)"]).await;
    assert_eq!(causes.last().map(String::as_str), Some("service shop: remove"));
    assert!(!h.docker.calls().contains(&"info".to_string()), "asked once");
}

#[tokio::test]
async fn a_service_still_converging_when_the_agent_starts_is_followed_without_an_event() {
    let docker = FakeDocker::default();
    docker.swarm_init();
    // Created before the agent listened: its event is gone, one task is still starting.
    docker.set_service(shop(&[("t1", "running", "running"), ("t2", "preparing", "running")]));
    let mut h = Harness::new(docker).await;
    h.controller.store.set_swarm(Some(true));
    assert_eq!(routes(&h.first_pass().await), ["shop.com (1 servers)"]);
    // The task starts: no event says so, the watch the list started sees it.
    h.docker.set_tasks("svc-shop", shop(&[("t1", "running", "running"), ("t2", "running", "running")]).tasks);
    let causes = h.until(&["shop.com (2 servers)"]).await;
    assert!(causes.iter().all(|c| c == "service shop: tasks changed"), "{causes:?}");
    // Converged: the watch ends, and a list of converged services starts none.
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.docker.calls();
    h.controller.note(Trigger::Resync);
    h.pass().await.expect("listed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let calls = h.docker.calls();
    assert!(!calls.iter().any(|c| c.starts_with("tasks")), "{calls:?}");
}

#[tokio::test]
async fn a_service_a_watch_gave_up_on_is_watched_again_only_once_its_tasks_change() {
    let (tx, _rx) = mpsc::channel(16);
    let converging = Converging::new(Arc::new(FakeDocker::default()), tx, "smart-proxy".into());
    // A task Swarm cannot place: the watch gave up after a minute.
    let stuck = shop(&[("t1", "pending", "running")]);
    converging.give_up(&stuck);
    converging.watch_unsettled(std::slice::from_ref(&stuck));
    assert!(!converging.watching("svc-shop"), "the next resync finds it as it was: no new watch");
    let moved = shop(&[("t1", "failed", "shutdown"), ("t2", "pending", "running")]);
    converging.watch_unsettled(std::slice::from_ref(&moved));
    assert!(converging.watching("svc-shop"), "its tasks changed: watched again");
}

#[tokio::test]
async fn with_swarm_off_services_are_not_read_even_on_a_manager() {
    let docker = FakeDocker::default();
    docker.swarm_init();
    running(&docker, "a", "a.com");
    let mut h = Harness::with_swarm(docker, false).await;
    let table = h.first_pass().await;
    assert_eq!(routes(&table), ["a.com (1 servers)"]);
    h.docker.set_service(shop(&[("t1", "running", "running")]));
    assert_eq!(h.note(1).await, [false], "a service event asks for no pass");
    // Nor does it start a watch of the service's tasks.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(routes(&h.pass().await.expect("listed")), ["a.com (1 servers)"]);
    let calls = h.docker.calls();
    assert!(!calls.iter().any(|c| c == "info" || c == "services" || c.starts_with("tasks")), "{calls:?}");
}

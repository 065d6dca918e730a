//! Docker Swarm services → [`Container`]s. Pure: `docker.rs` reads services and their tasks into
//! [`SwarmService`]s, and this module turns each into the containers the label builder
//! (`labels.rs`) already knows, so every `<prefix>.*` key works on a service's `deploy.labels`
//! unchanged.
//!
//! A service routes by `<prefix>.swarm.lb`: `tasks` (the default) is one container per task
//! whose desired state is `running` (a task Swarm is about to stop leaves the upstream at once,
//! before it stops), with the task's addresses on its networks; `vip` is one container whose
//! addresses are the service's virtual IPs (Swarm balances). Either way the containers share the
//! service's name as their default service (one upstream), and remember which mode was used and
//! why, for `check`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::label_schema::{Heal, SwarmLb};
use super::labels::{Container, NetworkAddress};

/// One Swarm service with a label of the prefix, and its tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    /// The service's own labels (`deploy.labels`), not its containers'.
    pub labels: BTreeMap<String, String>,
    /// Its virtual IPs, by network name (networks whose name is unknown are left out).
    pub vips: BTreeMap<String, IpAddr>,
    pub tasks: Vec<SwarmTask>,
}

/// One task of a service, as the manager knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmTask {
    pub id: String,
    /// The replica's slot (0 for a global service's tasks).
    pub slot: i64,
    /// `new`, `pending`, ..., `running`, `complete`, `shutdown`, `failed`, ...
    pub state: String,
    /// `running`, `shutdown`, ...
    pub desired_state: String,
    /// Its address on each network it is attached to, by network name.
    pub networks: BTreeMap<String, IpAddr>,
}

/// The task states after which a task does not run again.
const TERMINAL: &[&str] = &["complete", "shutdown", "failed", "rejected", "orphaned", "remove"];

impl SwarmTask {
    /// Whether Swarm wants this task to run (a task being stopped no longer is).
    pub fn wanted(&self) -> bool {
        self.desired_state == "running"
    }

    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// Whether the task is where Swarm wants it: running when it should run, ended when not.
    pub fn settled(&self) -> bool {
        if self.wanted() {
            self.running()
        } else {
            TERMINAL.contains(&self.state.as_str())
        }
    }
}

/// Whether every task of a service is where Swarm wants it (a rolling update, a scale, a
/// restart is over).
pub fn converged(tasks: &[SwarmTask]) -> bool {
    tasks.iter().all(SwarmTask::settled)
}

/// The tasks that serve requests: wanted and running, by id (what a pass depends on).
pub fn serving(tasks: &[SwarmTask]) -> Vec<String> {
    let mut ids: Vec<String> = tasks.iter().filter(|t| t.wanted() && t.running()).map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

/// How a Swarm service's containers came about: its name (the default upstream name), the
/// routing mode and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmOrigin {
    pub service: String,
    pub lb: SwarmLb,
    /// `default`, or the label that chose it.
    pub why: String,
}

impl SwarmOrigin {
    /// For `check`: `swarm tasks (default)`, `swarm vip (label smart-proxy.swarm.lb=vip)`.
    pub fn describe(&self) -> String {
        format!("swarm {} ({})", self.lb, self.why)
    }
}

/// The containers one service routes through, in task-slot order: one per task Swarm wants
/// running (`tasks`), or one at the virtual IPs (`vip`). A service with no such task still
/// yields one container, not running, so its domains stay routed (502 until a task runs)
/// instead of falling to the default server. A bad `swarm.lb` value routes by tasks here; the
/// label builder reports it and skips the service.
pub fn containers(service: &SwarmService, prefix: &str) -> Vec<Container> {
    let origin = origin(service, prefix);
    let lb = origin.lb;
    let container = |id: String, name: String, networks: &BTreeMap<String, IpAddr>, running: bool| Container {
        id,
        name,
        labels: service.labels.clone(),
        exposed_ports: Vec::new(),
        networks: networks.iter().map(|(name, ip)| (name.clone(), address(*ip))).collect(),
        health: None,
        running,
        swarm: Some(origin.clone()),
    };
    let any_running = service.tasks.iter().any(|t| t.wanted() && t.running());
    match lb {
        SwarmLb::Vip => vec![container(service.id.clone(), service.name.clone(), &service.vips, any_running)],
        SwarmLb::Tasks => {
            let mut tasks: Vec<&SwarmTask> = service.tasks.iter().filter(|t| t.wanted()).collect();
            tasks.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.id.cmp(&b.id)));
            let out: Vec<Container> = tasks
                .into_iter()
                .map(|t| container(t.id.clone(), task_name(service, t), &t.networks, t.running()))
                .collect();
            if out.is_empty() {
                vec![container(service.id.clone(), service.name.clone(), &service.vips, false)]
            } else {
                out
            }
        }
    }
}

/// The service's routing mode and why.
fn origin(service: &SwarmService, prefix: &str) -> SwarmOrigin {
    let label = format!("{prefix}.swarm.lb");
    let (lb, why) = match service.labels.get(&label).map(|v| SwarmLb::parse(v)) {
        Some(Ok(lb)) => (lb, format!("label {label}={lb}")),
        _ => (SwarmLb::Tasks, "default".to_string()),
    };
    SwarmOrigin { service: service.name.clone(), lb, why }
}

/// What `check` says of a Swarm service, whether or not a task runs: its routing mode and why,
/// and its tasks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwarmSummary {
    pub service: String,
    /// `swarm tasks (default)`, `swarm vip (label smart-proxy.swarm.lb=vip)`.
    pub mode: String,
    /// Tasks Swarm wants running, and those running.
    pub tasks: usize,
    pub running: usize,
    /// The service asks for `heal=restart`, which the agent does not do for a service: Swarm
    /// replaces failed tasks itself (its health check, `--restart-condition`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub heal_ignored: bool,
}

pub fn summary(service: &SwarmService, prefix: &str) -> SwarmSummary {
    let wanted = service.tasks.iter().filter(|t| t.wanted());
    SwarmSummary {
        service: service.name.clone(),
        mode: origin(service, prefix).describe(),
        tasks: wanted.clone().count(),
        running: wanted.filter(|t| t.running()).count(),
        heal_ignored: service.labels.get(&format!("{prefix}.heal")).and_then(|v| Heal::parse(v).ok())
            == Some(Heal::Restart),
    }
}

/// `<service>.<slot>.<task id>`, as Docker names a task's container.
fn task_name(service: &SwarmService, task: &SwarmTask) -> String {
    format!("{}.{}.{}", service.name, task.slot, task.id)
}

fn address(ip: IpAddr) -> NetworkAddress {
    match ip {
        IpAddr::V4(v4) => NetworkAddress { ipv4: Some(v4), ipv6: None },
        IpAddr::V6(v6) => NetworkAddress { ipv4: None, ipv6: Some(v6) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::labels::{routes, LabelSettings};

    fn task(id: &str, slot: i64, state: &str, desired: &str, ip: [u8; 4]) -> SwarmTask {
        SwarmTask {
            id: id.into(),
            slot,
            state: state.into(),
            desired_state: desired.into(),
            networks: [("proxy".to_string(), IpAddr::from(ip)), ("ingress".to_string(), IpAddr::from([10, 255, 0, 9]))]
                .into(),
        }
    }

    fn service(labels: &[(&str, &str)], tasks: Vec<SwarmTask>) -> SwarmService {
        SwarmService {
            id: "svc-id".into(),
            name: "shop_web".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            vips: [("proxy".to_string(), IpAddr::from([10, 0, 1, 2]))].into(),
            tasks,
        }
    }

    fn settings() -> LabelSettings {
        LabelSettings { prefix: "smart-proxy".into(), nginx_networks: Some(["proxy".to_string()].into()) }
    }

    /// The upstream servers the label builder makes of a service: (service, address).
    fn servers(s: &SwarmService) -> Vec<(String, String)> {
        let out = routes(&containers(s, "smart-proxy"), &settings());
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        out.services
            .iter()
            .flat_map(|def| def.backends.iter().map(move |b| (def.key.name.to_string(), b.address())))
            .collect()
    }

    /// `check` names each service's mode and its tasks, also with none running (its routes have
    /// no server to show the mode on).
    #[test]
    fn the_summary_names_the_mode_without_a_running_task() {
        let starting = service(
            &[("smart-proxy.domains", "shop.example.com")],
            vec![
                task("t1", 1, "preparing", "running", [10, 0, 1, 5]),
                task("t0", 1, "shutdown", "shutdown", [10, 0, 1, 4]),
            ],
        );
        let summary = super::summary(&starting, "smart-proxy");
        assert_eq!((summary.mode.as_str(), summary.tasks, summary.running), ("swarm tasks (default)", 1, 0));
        let vip = service(
            &[("smart-proxy.domains", "shop.example.com"), ("smart-proxy.swarm.lb", "vip")],
            vec![task("t1", 1, "running", "running", [10, 0, 1, 5])],
        );
        let summary = super::summary(&vip, "smart-proxy");
        assert_eq!(summary.mode, "swarm vip (label smart-proxy.swarm.lb=vip)");
        assert_eq!((summary.tasks, summary.running), (1, 1));
    }

    /// `heal=restart` on a service is valid (it routes) but not acted on: `check` says so.
    #[test]
    fn the_summary_says_heal_is_ignored_on_a_service() {
        let running = vec![task("t1", 1, "running", "running", [10, 0, 1, 5])];
        let healing = service(&[("smart-proxy.domains", "shop.example.com"), ("smart-proxy.heal", "restart")], running);
        assert!(super::summary(&healing, "smart-proxy").heal_ignored);
        assert_eq!(servers(&healing), [("shop_web".to_string(), "10.0.1.5:80".to_string())]);
        let plain = service(&[("smart-proxy.domains", "shop.example.com"), ("smart-proxy.heal", "off")], vec![]);
        assert!(!super::summary(&plain, "smart-proxy").heal_ignored);
    }

    #[test]
    fn tasks_mode_is_one_server_per_task_swarm_wants_running_on_the_network_nginx_shares() {
        let s = service(
            &[("smart-proxy.domains", "shop.example.com"), ("smart-proxy.port", "8080")],
            vec![
                task("t2", 2, "running", "running", [10, 0, 1, 4]),
                task("t1", 1, "running", "running", [10, 0, 1, 3]),
                // Not running yet: no server until it runs.
                task("t3", 3, "starting", "running", [10, 0, 1, 5]),
                // Being stopped (scale down, rolling update): gone at once, before it stops.
                task("t0", 4, "running", "shutdown", [10, 0, 1, 6]),
                task("old", 1, "failed", "shutdown", [10, 0, 1, 7]),
            ],
        );
        assert_eq!(
            servers(&s),
            [
                ("shop_web".to_string(), "10.0.1.3:8080".to_string()),
                ("shop_web".to_string(), "10.0.1.4:8080".to_string())
            ]
        );
        let names: Vec<String> = containers(&s, "smart-proxy").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["shop_web.1.t1", "shop_web.2.t2", "shop_web.3.t3"]);
        let out = routes(&containers(&s, "smart-proxy"), &settings());
        let network = out.services[0].backends[0].network.clone().unwrap();
        assert_eq!(network.name, "proxy");
        assert_eq!(network.reason, "swarm tasks (default); the network shared with nginx");
    }

    #[test]
    fn vip_mode_is_the_virtual_ip_and_says_which_label_chose_it() {
        let s = service(
            &[("smart-proxy.domains", "shop.example.com"), ("smart-proxy.swarm.lb", "vip")],
            vec![
                task("t1", 1, "running", "running", [10, 0, 1, 3]),
                task("t2", 2, "running", "running", [10, 0, 1, 4]),
            ],
        );
        assert_eq!(servers(&s), [("shop_web".to_string(), "10.0.1.2:80".to_string())]);
        let out = routes(&containers(&s, "smart-proxy"), &settings());
        assert_eq!(
            out.services[0].backends[0].network.as_ref().unwrap().reason,
            "swarm vip (label smart-proxy.swarm.lb=vip); the network shared with nginx"
        );
    }

    #[test]
    fn a_service_without_a_running_task_keeps_its_route_without_a_server() {
        let s = service(
            &[("smart-proxy.domains", "shop.example.com")],
            vec![task("t1", 1, "shutdown", "shutdown", [0; 4])],
        );
        let out = routes(&containers(&s, "smart-proxy"), &settings());
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert_eq!(out.routes.len(), 1, "the domain stays routed (502, not the default server)");
        assert!(out.services[0].backends.is_empty());
    }

    #[test]
    fn the_service_label_and_named_routes_work_as_on_containers() {
        let s = service(
            &[
                ("smart-proxy.domains", "shop.example.com"),
                ("smart-proxy.api.domains", "api.example.com"),
                ("smart-proxy.api.port", "9000"),
            ],
            vec![task("t1", 1, "running", "running", [10, 0, 1, 3])],
        );
        assert_eq!(
            servers(&s),
            [
                ("shop_web".to_string(), "10.0.1.3:80".to_string()),
                ("shop_web-api".to_string(), "10.0.1.3:9000".to_string())
            ]
        );
    }

    #[test]
    fn a_bad_lb_value_is_reported_at_its_label_and_skips_the_service() {
        let s = service(
            &[("smart-proxy.domains", "shop.example.com"), ("smart-proxy.swarm.lb", "dns")],
            vec![task("t1", 1, "running", "running", [10, 0, 1, 3])],
        );
        let out = routes(&containers(&s, "smart-proxy"), &settings());
        assert!(out.services.is_empty());
        let d = &out.diagnostics[0];
        assert_eq!(d.origin.to_string(), "container shop_web.1.t1, label smart-proxy.swarm.lb");
        assert!(d.message.contains("allowed: tasks or vip"), "{}", d.message);
    }

    #[test]
    fn convergence_waits_for_every_task_to_reach_its_desired_state() {
        let mut tasks = vec![task("t1", 1, "running", "running", [0; 4]), task("t0", 1, "running", "shutdown", [0; 4])];
        assert!(!converged(&tasks), "a task still running although it should stop");
        tasks[1].state = "shutdown".into();
        assert!(converged(&tasks));
        tasks.push(task("t2", 2, "preparing", "running", [0; 4]));
        assert!(!converged(&tasks));
        assert_eq!(serving(&tasks), ["t1"]);
        tasks.push(task("t3", 3, "failed", "shutdown", [0; 4]));
        tasks[2].state = "running".into();
        assert!(converged(&tasks), "a failed task that should stop has settled");
        assert_eq!(serving(&tasks), ["t1", "t2"]);
    }
}

//! An in-memory Docker for the controller's tests: containers that can be added, started,
//! stopped, removed and made to fail, events sent to every open event stream, and a log of the
//! calls made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use futures::channel::mpsc::{unbounded, UnboundedSender};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::sources::docker::{ContainerEvent, DockerApi, DockerError, EventKind, NginxState};
use crate::sources::labels::Container;
use crate::sources::swarm::{SwarmService, SwarmTask};

#[derive(Debug, Default)]
pub(super) struct FakeDocker {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<String, Container>,
    /// Containers whose inspect times out.
    failing: BTreeSet<String>,
    list_fails: bool,
    /// The nginx container, by name.
    nginx: Option<NginxState>,
    calls: Vec<String>,
    /// The Swarm services by id; `None`: the daemon is not a Swarm manager.
    services: Option<BTreeMap<String, SwarmService>>,
    streams: Vec<UnboundedSender<Result<ContainerEvent, DockerError>>>,
}

impl Inner {
    fn emit(&mut self, container: &str, name: Option<String>, action: &str, labelled: bool) {
        let event = ContainerEvent {
            container: container.to_string(),
            name,
            action: action.to_string(),
            labelled,
            kind: EventKind::Container,
        };
        self.streams.retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
    }

    /// A Swarm service event: its id and name, no labels (as the daemon sends them).
    fn emit_service(&mut self, id: &str, name: &str, action: &str) {
        let event = ContainerEvent {
            container: id.to_string(),
            name: Some(name.to_string()),
            action: action.to_string(),
            labelled: false,
            kind: EventKind::Service,
        };
        self.streams.retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
    }

    /// A container event: it carries the container's name and labels.
    fn emit_about(&mut self, id: &str, action: &str) {
        let c = &self.containers[id];
        let (name, labelled) = (c.name.clone(), c.has_prefix_labels("smart-proxy"));
        self.emit(id, Some(name), action, labelled);
    }
}

impl FakeDocker {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    /// Creates a container (stopped, no event: `create` is not among the events watched).
    pub(super) fn add(&self, mut container: Container) {
        container.running = false;
        self.with(|d| d.containers.insert(container.id.clone(), container));
    }

    pub(super) fn start(&self, id: &str) {
        self.with(|d| {
            d.containers.get_mut(id).expect("known").running = true;
            d.emit_about(id, "start");
        })
    }

    /// Adds and starts a container.
    pub(super) fn run(&self, container: Container) {
        let id = container.id.clone();
        self.add(container);
        self.start(&id);
    }

    pub(super) fn stop(&self, id: &str) {
        self.with(|d| {
            d.containers.get_mut(id).expect("known").running = false;
            d.emit_about(id, "die");
            d.emit_about(id, "stop");
        })
    }

    pub(super) fn remove(&self, id: &str) {
        self.with(|d| {
            d.emit_about(id, "destroy");
            d.containers.remove(id);
        })
    }

    /// Makes inspecting `id` time out (or answer again).
    pub(super) fn fail_inspect(&self, id: &str, fail: bool) {
        self.with(|d| if fail { d.failing.insert(id.to_string()) } else { d.failing.remove(id) });
    }

    pub(super) fn set_nginx(&self, nginx: NginxState) {
        self.with(|d| d.nginx = Some(nginx));
    }

    /// Connects the nginx container to `network`: a network event, which names no container.
    pub(super) fn connect_nginx(&self, network: &str) {
        self.with(|d| {
            let nginx = d.nginx.as_mut().expect("nginx set");
            nginx.networks.insert(network.to_string());
            let id = nginx.id.clone();
            d.emit(&id, None, "connect", false);
        })
    }

    /// The nginx container starts again (a new run): a container event with its name.
    pub(super) fn restart_nginx(&self) {
        self.with(|d| {
            let nginx = d.nginx.as_mut().expect("nginx set");
            nginx.run = Some(format!("{}@2", nginx.id));
            let (id, name) = (nginx.id.clone(), nginx.name.clone());
            d.emit(&id, Some(name), "start", false);
        })
    }

    /// Makes the daemon a Swarm manager.
    pub(super) fn swarm_init(&self) {
        self.with(|d| d.services = Some(BTreeMap::new()));
    }

    /// Creates or updates a service (an event, as `docker service create/update`).
    pub(super) fn set_service(&self, service: SwarmService) {
        self.with(|d| {
            let services = d.services.as_mut().expect("a Swarm manager");
            let action = if services.contains_key(&service.id) { "update" } else { "create" };
            let (id, name) = (service.id.clone(), service.name.clone());
            services.insert(id.clone(), service);
            d.emit_service(&id, &name, action);
        })
    }

    /// Changes a service's tasks without an event (as Swarm does).
    pub(super) fn set_tasks(&self, id: &str, tasks: Vec<SwarmTask>) {
        self.with(|d| d.services.as_mut().and_then(|s| s.get_mut(id)).expect("known service").tasks = tasks)
    }

    /// A node event (a node went down): no service event, the tasks change on their own.
    pub(super) fn node_down(&self, node: &str) {
        self.with(|d| {
            let event = ContainerEvent {
                container: format!("id-{node}"),
                name: Some(node.to_string()),
                action: "update".into(),
                labelled: false,
                kind: EventKind::Node,
            };
            d.streams.retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
        })
    }

    pub(super) fn remove_service(&self, id: &str) {
        self.with(|d| {
            let service = d.services.as_mut().and_then(|s| s.remove(id)).expect("known service");
            d.emit_service(id, &service.name, "remove");
        })
    }

    /// Ends every open event stream (as a daemon restart does).
    pub(super) fn end_streams(&self) {
        self.with(|d| d.streams.clear());
    }

    /// The calls made since the last time this was asked.
    pub(super) fn calls(&self) -> Vec<String> {
        self.with(|d| std::mem::take(&mut d.calls))
    }

    /// How many event streams are open.
    pub(super) fn streams(&self) -> usize {
        self.with(|d| d.streams.iter().filter(|tx| !tx.is_closed()).count())
    }

    fn inspect(d: &mut Inner, id: &str) -> Result<Container, DockerError> {
        d.calls.push(format!("inspect {id}"));
        if d.failing.contains(id) {
            return Err(DockerError::Timeout { call: format!("inspect container {id}") });
        }
        d.containers.get(id).cloned().ok_or_else(|| super::store::tests::not_found(id))
    }
}

impl DockerApi for FakeDocker {
    fn labelled_ids<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, DockerError>> {
        let result = self.with(|d| {
            d.calls.push("list".into());
            if d.list_fails {
                return Err(DockerError::Timeout { call: "list containers".into() });
            }
            Ok(d.containers.values().filter(|c| c.has_prefix_labels(prefix)).map(|c| c.id.clone()).collect())
        });
        Box::pin(async move { result })
    }

    fn inspect_all<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Vec<Result<Container, DockerError>>> {
        let results = self.with(|d| ids.iter().map(|id| Self::inspect(d, id)).collect());
        Box::pin(async move { results })
    }

    fn nginx_state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<NginxState, DockerError>> {
        let result = self.with(|d| {
            d.calls.push(format!("nginx_state {name}"));
            d.nginx.clone().filter(|n| n.name == name).ok_or_else(|| super::store::tests::not_found(name))
        });
        Box::pin(async move { result })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DockerError>> {
        Box::pin(async { Ok(()) })
    }

    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DockerError>> {
        self.with(|d| d.calls.push(format!("restart {id}")));
        Box::pin(async { Ok(()) })
    }

    fn events(&self, _since: i64, _prefix: &str) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let (tx, rx) = unbounded();
        self.with(|d| d.streams.push(tx));
        rx.boxed()
    }

    fn swarm_manager(&self) -> BoxFuture<'_, Result<bool, DockerError>> {
        let manager = self.with(|d| {
            d.calls.push("info".into());
            d.services.is_some()
        });
        Box::pin(async move { Ok(manager) })
    }

    fn swarm_services<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<SwarmService>, DockerError>> {
        let dotted = format!("{prefix}.");
        let services = self.with(|d| {
            d.calls.push("services".into());
            d.services
                .iter()
                .flat_map(|s| s.values())
                .filter(|s| s.labels.keys().any(|k| k.starts_with(&dotted)))
                .cloned()
                .collect()
        });
        Box::pin(async move { Ok(services) })
    }

    fn service_tasks<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Vec<SwarmTask>, DockerError>> {
        let tasks = self.with(|d| {
            d.calls.push(format!("tasks {service}"));
            d.services.as_ref().and_then(|s| s.get(service)).map(|s| s.tasks.clone()).unwrap_or_default()
        });
        Box::pin(async move { Ok(tasks) })
    }
}

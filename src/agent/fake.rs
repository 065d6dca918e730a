//! An in-memory Docker for the controller's tests: containers that can be added, started,
//! stopped, removed and made to fail, events sent to every open event stream, and a log of the
//! calls made.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use futures::channel::mpsc::{unbounded, UnboundedSender};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::sources::docker::{ContainerEvent, DockerApi, DockerError, NginxState};
use crate::sources::labels::Container;

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
    streams: Vec<UnboundedSender<Result<ContainerEvent, DockerError>>>,
}

impl Inner {
    fn emit(&mut self, container: &str, name: Option<String>, action: &str, labelled: bool) {
        let event = ContainerEvent { container: container.to_string(), name, action: action.to_string(), labelled };
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
}

//! The narrow slice of the Docker API the agent uses, turning daemon objects into [`Container`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use thiserror::Error;

use super::labels::{Container, Health, NetworkAddress};
use super::swarm::{SwarmService, SwarmTask};

#[derive(Debug, Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon at {host}: {source}; is the socket mounted and readable? (set DOCKER_HOST, or pass --no-docker to use env/file routes only)")]
    Unreachable {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API call {call} failed: {source}")]
    Api {
        call: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API call {call} got no answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout { call: String },
    /// A call bollard does not model (the task list: its network attachments), made by hand.
    #[error("Docker API call {call} failed: {message}")]
    Raw { call: String, message: String },
    #[error("nginx container {name:?} not found: {source}; set NGINX_CONTAINER to the name or id of the running nginx container")]
    NginxNotFound {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The longest any one Docker call (ping, list, inspect) may take. The exec of `nginx -t` and the
/// reload and the event stream have their own bounds. A daemon that does not answer in this time
/// is treated like one that failed: what is known is applied and the call is retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How many inspects run at once (a resync of 1,000 containers does not fire 1,000 requests).
pub const INSPECT_CONCURRENCY: usize = 16;

/// Runs one Docker call with [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl FnOnce() -> String,
    future: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(DockerError::Timeout { call: call() }),
    }
}

/// One event that may change routes: which container, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container: String,
    /// The container's name (container events only).
    pub name: Option<String>,
    /// `start`, `die`, `health_status: healthy`, `connect`, ...
    pub action: String,
    /// The event carries a label with the prefix (container events carry the labels).
    pub labelled: bool,
    /// What the event is about.
    pub kind: EventKind,
}

/// What a [`ContainerEvent`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A container, or a network (connect, disconnect) naming the container.
    Container,
    /// A Swarm service (`create`, `update`, `remove`): `container` is its id, `name` its name.
    Service,
    /// A Swarm node (`update`: it went down or came back, was drained...): `container` is its
    /// id, `name` its host name; its tasks may have to leave or join.
    Node,
}

impl DockerError {
    /// True for "no such container" (removed meanwhile).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DockerError::Api { source: bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }, .. }
        )
    }
}

/// What the agent's controller and its watchers ask of Docker: implemented by [`DockerClient`]
/// (bollard) and, in the agent's tests, by an in-memory fake. The exec calls of the companion
/// nginx are not part of it (they go through [`DockerClient::raw`]).
pub trait DockerApi: Send + Sync + std::fmt::Debug {
    /// The ids of every container (running or stopped) that carries a label with `prefix.`.
    fn labelled_ids<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, DockerError>>;
    /// Inspects `ids`; the results in the order of `ids`.
    fn inspect_all<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Vec<Result<Container, DockerError>>>;
    /// The named nginx container's networks and the start of its current run.
    fn nginx_state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<NginxState, DockerError>>;
    fn ping(&self) -> BoxFuture<'_, Result<(), DockerError>>;
    /// Restarts a container (`heal=restart`): stop (SIGTERM, 3 s to exit), then start.
    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DockerError>>;
    /// The events that can change routes, from `since` (unix seconds) on.
    fn events(&self, since: i64, prefix: &str) -> BoxStream<'static, Result<ContainerEvent, DockerError>>;
    /// Whether the daemon is a Swarm manager (`docker info`'s `Swarm.ControlAvailable`).
    fn swarm_manager(&self) -> BoxFuture<'_, Result<bool, DockerError>>;
    /// Every Swarm service with a label `prefix.` on the service (`deploy.labels`), with its
    /// tasks and virtual IPs.
    fn swarm_services<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<SwarmService>, DockerError>>;
    /// One service's tasks (Swarm sends no task events: the agent polls them while a service
    /// converges).
    fn service_tasks<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Vec<SwarmTask>, DockerError>>;
}

impl DockerApi for DockerClient {
    fn labelled_ids<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, DockerError>> {
        Box::pin(DockerClient::labelled_ids(self, prefix))
    }

    fn inspect_all<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Vec<Result<Container, DockerError>>> {
        Box::pin(DockerClient::inspect_all(self, ids))
    }

    fn nginx_state<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<NginxState, DockerError>> {
        Box::pin(DockerClient::nginx_state(self, name))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), DockerError>> {
        Box::pin(DockerClient::ping(self))
    }

    fn restart<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DockerError>> {
        Box::pin(async move {
            let options = bollard::query_parameters::RestartContainerOptionsBuilder::default().t(3).build();
            let restart = async {
                self.docker
                    .restart_container(id, Some(options))
                    .await
                    .map_err(|source| DockerError::Api { call: format!("restart container {id}"), source })
            };
            bounded(|| format!("restart container {id}"), restart).await
        })
    }

    fn events(&self, since: i64, prefix: &str) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        Box::pin(DockerClient::events(self, since, prefix))
    }

    fn swarm_manager(&self) -> BoxFuture<'_, Result<bool, DockerError>> {
        Box::pin(DockerClient::swarm_manager(self))
    }

    fn swarm_services<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<SwarmService>, DockerError>> {
        Box::pin(DockerClient::swarm_services(self, prefix))
    }

    fn service_tasks<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Vec<SwarmTask>, DockerError>> {
        Box::pin(async move {
            let tasks = self.tasks(&[service.to_string()]).await?;
            Ok(tasks.into_iter().map(|(_, task)| task).collect())
        })
    }
}

/// A connected Docker client (version negotiated).
#[derive(Debug, Clone)]
pub struct DockerClient {
    docker: Docker,
}

pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

impl DockerClient {
    /// Connects using `DOCKER_HOST` (or the local socket) and negotiates the API version.
    pub async fn connect() -> Result<Self, DockerError> {
        let unreachable = |source| DockerError::Unreachable { host: docker_host(), source };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let docker =
            bounded(|| "version".into(), async { docker.negotiate_version().await.map_err(unreachable) }).await?;
        Ok(DockerClient { docker })
    }

    /// The underlying client, for the exec calls of the companion nginx.
    pub fn raw(&self) -> &Docker {
        &self.docker
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        let ping = async {
            self.docker
                .ping()
                .await
                .map(|_| ())
                .map_err(|source| DockerError::Unreachable { host: docker_host(), source })
        };
        bounded(|| "ping".into(), ping).await
    }

    /// The events that can change routes, from `since` (unix seconds) on: container start, die,
    /// stop, destroy, rename, health_status, network connect/disconnect (filtered by the daemon),
    /// Swarm service create, update and remove, and node changes.
    pub fn events(
        &self,
        since: i64,
        prefix: &str,
    ) -> impl futures::Stream<Item = Result<ContainerEvent, DockerError>> + use<> {
        let dotted = format!("{prefix}.");
        use futures::StreamExt;
        let filters: HashMap<String, Vec<String>> = [
            ("type".to_string(), ["container", "network", "service", "node"].map(String::from).to_vec()),
            ("event".to_string(), CONTAINER_EVENTS.iter().chain(SERVICE_EVENTS).map(|e| e.to_string()).collect()),
        ]
        .into();
        let options = bollard::query_parameters::EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        self.docker.events(Some(options)).filter_map(move |item| {
            let event = (|| {
                let message = item.map_err(|source| DockerError::Api { call: "events".into(), source })?;
                let attributes = message.actor.as_ref().and_then(|a| a.attributes.clone()).unwrap_or_default();
                use bollard::models::EventMessageTypeEnum as Type;
                let swarm = match message.typ {
                    Some(Type::SERVICE) => Some(EventKind::Service),
                    Some(Type::NODE) => Some(EventKind::Node),
                    _ => None,
                };
                let action = message.action.clone().unwrap_or_default();
                // The filter is type AND action: a container's `create` or `update` passes it too.
                if swarm.is_some() != SERVICE_EVENTS.contains(&action.as_str()) {
                    return Ok(None);
                }
                if let Some(kind) = swarm {
                    return Ok(Some(ContainerEvent {
                        container: message.actor.as_ref().and_then(|a| a.id.clone()).unwrap_or_default(),
                        name: attributes.get("name").cloned(),
                        action,
                        labelled: false,
                        kind,
                    }));
                }
                let is_network = matches!(message.typ, Some(bollard::models::EventMessageTypeEnum::NETWORK));
                let container = if is_network {
                    attributes.get("container").cloned().unwrap_or_default()
                } else {
                    message.actor.as_ref().and_then(|a| a.id.clone()).unwrap_or_default()
                };
                Ok(Some(ContainerEvent {
                    container,
                    name: if is_network { None } else { attributes.get("name").cloned() },
                    action,
                    labelled: attributes.keys().any(|k| k.starts_with(&dotted)),
                    kind: EventKind::Container,
                }))
            })();
            std::future::ready(event.transpose())
        })
    }

    /// Whether the daemon is a Swarm manager.
    pub async fn swarm_manager(&self) -> Result<bool, DockerError> {
        let info =
            async { self.docker.info().await.map_err(|source| DockerError::Api { call: "info".into(), source }) };
        let info = bounded(|| "info".into(), info).await?;
        Ok(info.swarm.and_then(|s| s.control_available) == Some(true))
    }

    /// Every service with a label `prefix.` (on the service, not its containers), with its tasks
    /// and virtual IPs: three calls (services, their tasks, the networks' names).
    pub async fn swarm_services(&self, prefix: &str) -> Result<Vec<SwarmService>, DockerError> {
        let list = async {
            self.docker
                .list_services(None::<bollard::query_parameters::ListServicesOptions>)
                .await
                .map_err(|source| DockerError::Api { call: "list services".into(), source })
        };
        let dotted = format!("{prefix}.");
        let mut services: Vec<SwarmService> = bounded(|| "list services".into(), list)
            .await?
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec?;
                let labels: BTreeMap<String, String> = spec.labels.unwrap_or_default().into_iter().collect();
                if !labels.keys().any(|k| k.starts_with(&dotted)) {
                    return None;
                }
                let vips = s.endpoint.and_then(|e| e.virtual_ips).unwrap_or_default();
                // Network ids for now; named below.
                let vips =
                    vips.into_iter().filter_map(|v| Some((v.network_id?, strip_prefix_len(&v.addr?)?))).collect();
                Some(SwarmService { id: s.id?, name: spec.name.unwrap_or_default(), labels, vips, tasks: Vec::new() })
            })
            .collect();
        if services.is_empty() {
            return Ok(services);
        }
        let ids: Vec<String> = services.iter().map(|s| s.id.clone()).collect();
        let tasks = self.tasks(&ids).await?;
        let networks = async {
            self.docker
                .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
                .await
                .map_err(|source| DockerError::Api { call: "list networks".into(), source })
        };
        let names: HashMap<String, String> = bounded(|| "list networks".into(), networks)
            .await?
            .into_iter()
            .filter_map(|n| Some((n.id?, n.name?)))
            .collect();
        for service in &mut services {
            service.vips = std::mem::take(&mut service.vips)
                .into_iter()
                .filter_map(|(id, ip)| Some((names.get(&id)?.clone(), ip)))
                .collect();
            service.tasks = tasks.iter().filter(|(of, _)| *of == service.id).map(|(_, t)| t.clone()).collect();
        }
        Ok(services)
    }

    /// The tasks of `services`, each with its service's id. bollard's `Task` has no
    /// `NetworksAttachments` (the API documents none, the daemon sends them), so the list is
    /// asked by hand over `DOCKER_HOST` and read into our own types.
    async fn tasks(&self, services: &[String]) -> Result<Vec<(String, SwarmTask)>, DockerError> {
        let filters = serde_json::json!({ "service": services }).to_string();
        let path = format!("/v{}/tasks?filters={}", self.docker.client_version(), percent_encode(&filters));
        let body = bounded(|| "list tasks".into(), raw_get(&path)).await?;
        let tasks: Vec<raw::Task> = serde_json::from_slice(&body)
            .map_err(|e| DockerError::Raw { call: "list tasks".into(), message: format!("unexpected answer: {e}") })?;
        Ok(tasks.into_iter().map(raw::Task::into_task).collect())
    }

    /// The ids of every container (running or stopped) that carries a label with `prefix.`.
    pub async fn labelled_ids(&self, prefix: &str) -> Result<Vec<String>, DockerError> {
        let list = async {
            self.docker
                .list_containers(Some(ListContainersOptions { all: true, ..Default::default() }))
                .await
                .map_err(|source| DockerError::Api { call: "list containers".into(), source })
        };
        let summaries = bounded(|| "list containers".into(), list).await?;
        let dotted = format!("{prefix}.");
        Ok(summaries
            .into_iter()
            .filter(|s| s.labels.as_ref().is_some_and(|l| l.keys().any(|k| k.starts_with(&dotted))))
            .filter_map(|s| s.id)
            .collect())
    }

    /// Inspects `ids`, at most [`INSPECT_CONCURRENCY`] at once; the results in the order of `ids`.
    pub async fn inspect_all(&self, ids: &[String]) -> Vec<Result<Container, DockerError>> {
        use futures::StreamExt;
        // Owned ids: boxed as `DockerApi`'s `Send` future, a closure taking `&String` fails the
        // compiler's higher-ranked lifetime check ("FnOnce is not general enough").
        let inspects = ids.iter().cloned().map(|id| async move { self.inspect(&id).await });
        futures::stream::iter(inspects).buffered(INSPECT_CONCURRENCY).collect().await
    }

    /// Every container (running or stopped) that carries a label with `prefix.`, inspected.
    pub async fn labelled_containers(&self, prefix: &str) -> Result<Vec<Container>, DockerError> {
        let ids = self.labelled_ids(prefix).await?;
        let mut containers = Vec::new();
        for result in self.inspect_all(&ids).await {
            match result {
                Ok(c) => containers.push(c),
                // A container removed between list and inspect is simply gone.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(containers)
    }

    /// Inspects one container.
    pub async fn inspect(&self, id: &str) -> Result<Container, DockerError> {
        let inspect = async {
            self.docker
                .inspect_container(id, None)
                .await
                .map_err(|source| DockerError::Api { call: format!("inspect container {id}"), source })
        };
        Ok(container_from(bounded(|| format!("inspect container {id}"), inspect).await?))
    }

    /// The named nginx container's networks and the start of its current run.
    pub async fn nginx_state(&self, name: &str) -> Result<NginxState, DockerError> {
        let inspect = async {
            self.docker
                .inspect_container(name, None)
                .await
                .map_err(|source| DockerError::NginxNotFound { name: name.into(), source })
        };
        let response = bounded(|| format!("inspect container {name}"), inspect).await?;
        Ok(NginxState {
            id: response.id.clone().unwrap_or_default(),
            name: response.name.as_deref().unwrap_or_default().trim_start_matches('/').to_string(),
            networks: response
                .network_settings
                .and_then(|n| n.networks)
                .map(|n| n.into_keys().collect())
                .unwrap_or_default(),
            run: response.id.zip(response.state.and_then(|s| s.started_at)).map(|(id, at)| format!("{id}@{at}")),
        })
    }
}

/// The kinds of container and network events that can change routes.
const CONTAINER_EVENTS: &[&str] =
    &["start", "die", "stop", "destroy", "rename", "health_status", "unpause", "connect", "disconnect"];
/// The kinds of Swarm service and node events that can.
const SERVICE_EVENTS: &[&str] = &["create", "update", "remove"];

/// Every byte but letters and digits as `%XX`, for a query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `10.0.1.2/24` → `10.0.1.2`.
fn strip_prefix_len(cidr: &str) -> Option<std::net::IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

/// `GET path` on the daemon at `DOCKER_HOST` (`unix://` or `tcp://`, plain HTTP); the body of a
/// 2xx answer.
async fn raw_get(path: &str) -> Result<Vec<u8>, DockerError> {
    use http_body_util::BodyExt;
    let fail = |message: String| DockerError::Raw { call: "list tasks".into(), message };
    let host = docker_host();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    async fn send<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
        stream: S,
        request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    let response = if let Some(socket) = host.strip_prefix("unix://") {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| fail(format!("{host}: {e}")))?;
        send(stream, request).await
    } else if let Some(addr) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(format!("{host}: {e}")))?;
        send(stream, request).await
    } else {
        return Err(fail(format!("Swarm tasks are read over unix:// or tcp:// (plain HTTP); DOCKER_HOST is {host}")));
    };
    let response = response.map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err(fail(format!("{status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    Ok(body.to_vec())
}

/// The fields of the daemon's task list the agent reads.
mod raw {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub(super) struct Task {
        #[serde(rename = "ID")]
        id: String,
        #[serde(rename = "ServiceID", default)]
        service_id: String,
        #[serde(default)]
        slot: i64,
        #[serde(default)]
        status: Status,
        #[serde(default)]
        desired_state: String,
        #[serde(default)]
        networks_attachments: Vec<Attachment>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Status {
        #[serde(default)]
        state: String,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Attachment {
        network: Network,
        #[serde(default)]
        addresses: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Network {
        spec: NetworkSpec,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct NetworkSpec {
        name: String,
    }

    impl Task {
        pub(super) fn into_task(self) -> (String, super::SwarmTask) {
            let networks = self
                .networks_attachments
                .into_iter()
                .filter_map(|a| Some((a.network.spec.name, super::strip_prefix_len(a.addresses.first()?)?)))
                .collect();
            let task = super::SwarmTask {
                id: self.id,
                slot: self.slot,
                state: self.status.state,
                desired_state: self.desired_state,
                networks,
            };
            (self.service_id, task)
        }
    }
}

/// What the agent needs to know of the nginx container on each resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxState {
    /// The container's full id, and its name.
    pub id: String,
    pub name: String,
    pub networks: BTreeSet<String>,
    /// Its id and when its current run started (`State.StartedAt`): a start event of nginx whose
    /// run is the one the last apply went to changes nothing (the event stream replays the last
    /// second, so nginx's own first start arrives after the agent's first apply).
    pub run: Option<String>,
}

fn container_from(response: ContainerInspectResponse) -> Container {
    let state = response.state.unwrap_or_default();
    let config = response.config.unwrap_or_default();
    let labels: BTreeMap<String, String> = config.labels.unwrap_or_default().into_iter().collect();
    let mut exposed_ports: Vec<u16> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.strip_suffix("/tcp").unwrap_or(p).parse().ok())
        .collect();
    exposed_ports.sort_unstable();
    exposed_ports.dedup();
    let networks: HashMap<String, bollard::models::EndpointSettings> =
        response.network_settings.and_then(|n| n.networks).unwrap_or_default();
    let networks = networks
        .into_iter()
        .map(|(name, endpoint)| {
            let address = NetworkAddress {
                ipv4: endpoint.ip_address.as_deref().and_then(|s| s.parse().ok()),
                ipv6: endpoint.global_ipv6_address.as_deref().and_then(|s| s.parse().ok()),
            };
            (name, address)
        })
        .collect();
    let health = state.health.and_then(|h| h.status).and_then(|s| match s {
        HealthStatusEnum::STARTING => Some(Health::Starting),
        HealthStatusEnum::HEALTHY => Some(Health::Healthy),
        HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    });
    Container {
        id: response.id.unwrap_or_default(),
        name: response.name.unwrap_or_default().trim_start_matches('/').to_string(),
        labels,
        exposed_ports,
        networks,
        health,
        running: state.running == Some(true),
        swarm: None,
    }
}

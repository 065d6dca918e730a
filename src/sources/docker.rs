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
    /// stop, destroy, rename, health_status, and network connect/disconnect (filtered by the daemon).
    pub fn events(
        &self,
        since: i64,
        prefix: &str,
    ) -> impl futures::Stream<Item = Result<ContainerEvent, DockerError>> + use<> {
        let dotted = format!("{prefix}.");
        use futures::StreamExt;
        let filters: HashMap<String, Vec<String>> = [
            ("type".to_string(), vec!["container".to_string(), "network".to_string()]),
            (
                "event".to_string(),
                ["start", "die", "stop", "destroy", "rename", "health_status", "unpause", "connect", "disconnect"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]
        .into();
        let options = bollard::query_parameters::EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        self.docker.events(Some(options)).map(move |item| {
            let message = item.map_err(|source| DockerError::Api { call: "events".into(), source })?;
            let attributes = message.actor.as_ref().and_then(|a| a.attributes.clone()).unwrap_or_default();
            let is_network = matches!(message.typ, Some(bollard::models::EventMessageTypeEnum::NETWORK));
            let container = if is_network {
                attributes.get("container").cloned().unwrap_or_default()
            } else {
                message.actor.as_ref().and_then(|a| a.id.clone()).unwrap_or_default()
            };
            Ok(ContainerEvent {
                container,
                name: if is_network { None } else { attributes.get("name").cloned() },
                action: message.action.unwrap_or_default(),
                labelled: attributes.keys().any(|k| k.starts_with(&dotted)),
            })
        })
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
    }
}

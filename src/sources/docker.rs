//! The narrow slice of the Docker API the agent uses, turning daemon objects into [`Container`]s.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
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
    #[error("nginx container {name:?} not found: {source}; set NGINX_CONTAINER to the name or id of the running nginx container")]
    NginxNotFound {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A connected Docker client (version negotiated).
#[derive(Clone)]
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
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        Ok(DockerClient { docker })
    }

    /// Every running container that carries a label with `prefix.`, inspected.
    pub async fn labelled_containers(&self, prefix: &str) -> Result<Vec<Container>, DockerError> {
        let summaries = self
            .docker
            .list_containers(Some(ListContainersOptions { all: false, ..Default::default() }))
            .await
            .map_err(|source| DockerError::Api { call: "list containers".into(), source })?;
        let dotted = format!("{prefix}.");
        let ids: Vec<String> = summaries
            .into_iter()
            .filter(|s| s.labels.as_ref().is_some_and(|l| l.keys().any(|k| k.starts_with(&dotted))))
            .filter_map(|s| s.id)
            .collect();
        let inspections = futures::future::join_all(ids.iter().map(|id| self.inspect(id))).await;
        let mut containers = Vec::new();
        for result in inspections {
            match result {
                Ok(Some(c)) => containers.push(c),
                Ok(None) => {}
                // A container removed between list and inspect is simply gone.
                Err(DockerError::Api {
                    source: bollard::errors::Error::DockerResponseServerError { status_code: 404, .. },
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(containers)
    }

    /// Inspects one container; `None` when it is not running.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, DockerError> {
        let response = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|source| DockerError::Api { call: format!("inspect container {id}"), source })?;
        Ok(container_from(response))
    }

    /// The networks the named nginx container is on.
    pub async fn networks_of(&self, name: &str) -> Result<BTreeSet<String>, DockerError> {
        let response = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|source| DockerError::NginxNotFound { name: name.into(), source })?;
        Ok(response.network_settings.and_then(|n| n.networks).map(|n| n.into_keys().collect()).unwrap_or_default())
    }

    /// The networks of the running container labelled `<prefix>.nginx=true`, if exactly one is.
    pub async fn labelled_nginx_networks(&self, containers: &[Container], prefix: &str) -> Option<BTreeSet<String>> {
        let nginx: Vec<&Container> = containers.iter().filter(|c| c.is_nginx(prefix)).collect();
        match nginx[..] {
            [one] => Some(one.networks.keys().cloned().collect()),
            _ => None,
        }
    }
}

fn container_from(response: ContainerInspectResponse) -> Option<Container> {
    let state = response.state.unwrap_or_default();
    if state.running != Some(true) {
        return None;
    }
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
    Some(Container {
        id: response.id.unwrap_or_default(),
        name: response.name.unwrap_or_default().trim_start_matches('/').to_string(),
        labels,
        exposed_ports,
        networks,
        health,
    })
}

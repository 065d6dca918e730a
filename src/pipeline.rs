//! Sources → route table, once for everyone: the CLI's `--dry-run` and `check`, the live agent and
//! its `/routes` all build the table with [`build`] and find nginx (whose networks decide which
//! container address is used) with [`nginx_container`], so `check` shows what the agent does.

use std::collections::BTreeSet;

use crate::config::Config;
use crate::routes::{RouteTable, SourceOutput};
use crate::settings::SwarmMode;
use crate::sources::docker::{DockerClient, DockerError};
use crate::sources::labels::{self, Container, LabelSettings};
use crate::sources::swarm;

/// The route table from the labels of `containers` (`None`: Docker is not read), given nginx's
/// networks (`None`: unknown), then the static sources (`DOMAINS`/`SERVICES`, JSON files).
/// Pure: the same inputs give the same table.
pub fn build(
    containers: Option<&[Container]>,
    nginx_networks: Option<BTreeSet<String>>,
    statics: SourceOutput,
    prefix: &str,
) -> RouteTable {
    let mut sources = Vec::new();
    if let Some(containers) = containers {
        let label_settings = LabelSettings { prefix: prefix.to_string(), nginx_networks };
        sources.push(labels::routes(containers, &label_settings));
    }
    sources.push(statics);
    RouteTable::build(sources)
}

/// The container nginx runs in when it is not the agent's own: `NGINX_CONTAINER` (`configured`), else the one
/// running container labelled `<prefix>.nginx=true`; `Ok(None)` when there is none (nginx runs
/// beside the agent). Several labelled ones are an error: which to drive is the user's choice.
pub fn nginx_container(
    configured: Option<&str>,
    prefix: &str,
    containers: &[Container],
) -> Result<Option<String>, String> {
    if let Some(name) = configured {
        return Ok(Some(name.to_string()));
    }
    let nginx: Vec<&Container> = containers.iter().filter(|c| c.running && c.is_nginx(prefix)).collect();
    match nginx[..] {
        [] => Ok(None),
        [one] => Ok(Some(one.name.clone())),
        _ => Err(format!(
            "several running containers are labelled {prefix}.nginx=true ({}); set NGINX_CONTAINER to the one to use",
            nginx.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// This process's own container, where nginx runs beside the agent (Docker sets the host name to
/// the container id); outside a container the name matches no container and nothing is known.
pub fn own_container() -> Option<String> {
    std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

/// The route table, plus what kept the Docker part from being complete.
pub struct Gathered {
    pub table: RouteTable,
    /// Why container labels were not read at all.
    pub docker_unavailable: Option<DockerError>,
    /// Why nginx's networks are unknown although labels were read (several labelled nginx
    /// containers, or NGINX_CONTAINER cannot be inspected): addresses are chosen without them.
    pub nginx_unknown: Option<String>,
    /// The Swarm services read, each with its routing mode (none without Swarm).
    pub swarm: Vec<swarm::SwarmSummary>,
}

/// Reads every source once and builds the table, as the agent's first pass would.
pub async fn gather(config: &Config) -> Gathered {
    let statics = config.statics.load();
    let prefix = &config.label_prefix;
    if !config.docker {
        return Gathered {
            table: build(None, None, statics, prefix),
            docker_unavailable: None,
            nginx_unknown: None,
            swarm: Vec::new(),
        };
    }
    let containers = match read_containers(config).await {
        Ok(containers) => containers,
        Err(e) => {
            return Gathered {
                table: build(None, None, statics, prefix),
                docker_unavailable: Some(e),
                nginx_unknown: None,
                swarm: Vec::new(),
            }
        }
    };
    let (client, containers, swarm) = containers;
    let (nginx_networks, nginx_unknown) = match nginx_container(config.nginx.container.as_deref(), prefix, &containers)
    {
        Err(e) => (None, Some(e)),
        Ok(Some(name)) => match client.nginx_state(&name).await {
            Ok(state) => (Some(state.networks), None),
            Err(e) => (None, Some(e.to_string())),
        },
        Ok(None) => match own_container() {
            Some(own) => (client.nginx_state(&own).await.ok().map(|s| s.networks), None),
            None => (None, None),
        },
    };
    Gathered {
        table: build(Some(&containers), nginx_networks, statics, prefix),
        docker_unavailable: None,
        nginx_unknown,
        swarm,
    }
}

/// The labelled containers, with the Swarm services' (and what `check` says of each service).
async fn read_containers(
    config: &Config,
) -> Result<(DockerClient, Vec<Container>, Vec<swarm::SwarmSummary>), DockerError> {
    let prefix = &config.label_prefix;
    let client = DockerClient::connect().await?;
    let mut containers = client.labelled_containers(prefix).await?;
    let swarm = match config.swarm {
        SwarmMode::Off => false,
        SwarmMode::On => true,
        SwarmMode::Auto => client.swarm_manager().await?,
    };
    let mut summaries = Vec::new();
    if swarm {
        for service in client.swarm_services(prefix).await? {
            containers.extend(swarm::containers(&service, prefix));
            summaries.push(swarm::summary(&service, prefix));
        }
    }
    Ok((client, containers, summaries))
}

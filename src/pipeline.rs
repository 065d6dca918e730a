//! One pass of the pipeline: sources → route table. The CLI's `--dry-run` and `check` and the live
//! agent all go through here, so they always agree on what the routes are.

use crate::routes::RouteTable;
use crate::settings::Settings;
use crate::sources::docker::{DockerClient, DockerError};
use crate::sources::labels::{self, LabelSettings};

/// The route table, plus why Docker labels were not read (when they were not).
pub struct Gathered {
    pub table: RouteTable,
    pub docker_unavailable: Option<DockerError>,
}

/// Reads every source and merges them.
pub async fn gather(settings: &Settings) -> Gathered {
    let mut docker_unavailable = None;
    let mut sources = Vec::new();
    if !settings.no_docker {
        match docker_routes(settings).await {
            Ok(out) => sources.push(out),
            Err(e) => docker_unavailable = Some(e),
        }
    }
    sources.push(settings.static_config().load());
    Gathered { table: RouteTable::build(sources), docker_unavailable }
}

async fn docker_routes(settings: &Settings) -> Result<crate::routes::SourceOutput, DockerError> {
    let client = DockerClient::connect().await?;
    let containers = client.labelled_containers(&settings.label_prefix).await?;
    let nginx_networks = match &settings.nginx_container {
        Some(name) => Some(client.networks_of(name).await?),
        None => client.labelled_nginx_networks(&containers, &settings.label_prefix).await,
    };
    let label_settings = LabelSettings { prefix: settings.label_prefix.clone(), nginx_networks };
    Ok(labels::routes(&containers, &label_settings))
}

//! The controller's side of nginx: which nginx it drives (`choose_nginx`), nginx's container
//! state and its events, and the local child's start, stop and exit.

use anyhow::Context as _;
use std::time::Duration;

use tracing::info;

use super::Controller;
use crate::apply::nginx::{CompanionNginx, LocalNginx};
use crate::apply::Nginx;
use crate::config::Config;
use crate::pipeline;
use crate::sources::docker::{DockerApi, DockerClient};

impl Controller {
    /// Whether an event is about the container nginx runs in (the companion's, or in the single
    /// container setup the agent's own): network events name no container, only its id.
    pub(super) fn is_about_nginx(&self, id: &str, name: Option<&str>) -> bool {
        self.nginx.as_ref().is_some_and(|n| n.id == id) || self.is_nginx_container(id, name)
    }

    pub(super) fn is_nginx_container(&self, id: &str, name: Option<&str>) -> bool {
        match (&self.applier.nginx, &self.config.nginx.container) {
            (Nginx::Companion(_), Some(wanted)) => name == Some(wanted.as_str()) || id.starts_with(wanted.as_str()),
            (Nginx::Companion(c), None) => id.starts_with(&c.container) || name == Some(c.container.as_str()),
            _ => false,
        }
    }

    pub(super) fn nginx_run(&self) -> Option<&String> {
        self.nginx.as_ref().and_then(|n| n.run.as_ref())
    }

    /// After a start event of the nginx container: unless its run is the one the last config
    /// went to (nginx's own first start, replayed after the agent's first apply), the next apply
    /// writes, tests and reloads even identical bytes.
    pub(super) fn nginx_started(&mut self) {
        if self.nginx_run().is_some() && self.nginx_run() == self.applied_run.as_ref() {
            return;
        }
        if self.applier.live().is_some() {
            info!("the nginx container started again: applying the current config");
        }
        self.applier.invalidate();
    }

    /// nginx's container (networks, run): the companion container's, or this container's own (same
    /// container setup, where the host name is the container id), or unknown.
    pub(super) async fn nginx_state(&self, client: &dyn DockerApi) -> Option<crate::sources::docker::NginxState> {
        let container = match &self.applier.nginx {
            Nginx::Companion(c) => c.container.clone(),
            Nginx::Local(_) => pipeline::own_container()?,
        };
        client.nginx_state(&container).await.ok()
    }

    pub(super) async fn start_nginx_if_local(&mut self) -> anyhow::Result<()> {
        if let Nginx::Local(local) = &mut self.applier.nginx {
            if local.child.is_none() && (self.store.listed() || !self.config.docker || self.config.nginx.conf.exists())
            {
                local.start()?;
                self.status.nginx_started(local.child.as_ref().and_then(tokio::process::Child::id));
                info!("nginx started");
            }
        }
        self.publish_tls();
        Ok(())
    }

    /// Hands the TLS domains of the last apply to the certificate task once nginx runs: HTTP-01
    /// validation needs nginx answering on the HTTP port, and the first pass runs before nginx
    /// is started.
    pub(super) fn publish_tls(&mut self) {
        let running = match &self.applier.nginx {
            Nginx::Local(local) => local.child.is_some(),
            Nginx::Companion(_) => true,
        };
        if !running {
            return;
        }
        if let Some(tls) = self.tls_pending.take() {
            self.tls_domains.send_if_modified(|current| {
                let changed = *current != tls;
                *current = tls;
                changed
            });
        }
    }

    pub(super) async fn stop_nginx(&mut self) {
        if let Nginx::Local(local) = &mut self.applier.nginx {
            local.stop(Duration::from_secs(10)).await;
        }
    }

    /// Resolves when the local nginx child exits; never for a companion.
    pub(super) async fn nginx_exited(&mut self) -> String {
        match &mut self.applier.nginx {
            Nginx::Local(LocalNginx { child: Some(child), .. }) => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            },
            _ => std::future::pending().await,
        }
    }
}

/// Companion when `NGINX_CONTAINER` is set or a running container is labelled `<prefix>.nginx=true`;
/// else nginx is our child.
pub async fn choose_nginx(config: &Config, docker: Option<&DockerClient>) -> anyhow::Result<Nginx> {
    let mut container = config.nginx.container.clone();
    if container.is_none() {
        if let Some(client) = docker {
            if let Ok(list) = client.labelled_containers(&config.label_prefix).await {
                container = pipeline::nginx_container(None, &config.label_prefix, &list).map_err(anyhow::Error::msg)?;
            }
        }
    }
    Ok(match container {
        Some(name) => {
            let client = docker.context("NGINX_CONTAINER is set but Docker is disabled (NO_DOCKER)")?;
            Nginx::Companion(CompanionNginx {
                docker: client.raw().clone(),
                container: name,
                main_conf: config.nginx.main_conf.clone(),
            })
        }
        None => Nginx::Local(LocalNginx {
            bin: config.nginx.bin.clone(),
            main_conf: config.nginx.main_conf.clone(),
            child: None,
        }),
    })
}

//! The live agent: one controller that owns the order of side effects.
//!
//! Watchers (the Docker event stream, the file watcher, the resync timer) only *trigger* passes.
//! A pass rebuilds the whole desired config from the whole current state (the container cache plus
//! the static sources) and hands it to the `Applier`. Nothing is rendered from Docker before the
//! first complete list of containers.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::apply::{Applied, Applier, ApplyError};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::pipeline;
use crate::render::Renderer;
use crate::routes::{Diagnostic, RouteTable};
use crate::sources::docker::{DockerApi, DockerClient};
use crate::sources::labels::Container;
use crate::sources::StaticState;

mod cloudflare_ips;
mod insight;
mod nginx;
mod run;
mod schedule;
mod store;
mod watch;

pub use nginx::choose_nginx;
use run::run_loop;
use schedule::Scheduler;
use store::Store;
use watch::{watch_docker, watch_files, Converging};

/// One cause of a pass, for its log line.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// A container event: its name when the event carried one (network events do not).
    Container {
        id: String,
        name: Option<String>,
        action: String,
    },
    Other(String),
}

/// Why a pass may be needed. The controller never applies these as deltas.
#[derive(Debug)]
enum Trigger {
    /// Inspect this container again (it started, stopped, changed health or networks...).
    /// `labelled`: the event showed a label with the prefix.
    Container { id: String, name: Option<String>, action: String, labelled: bool },
    /// A Swarm service was created, updated or removed, a node changed (`id` "*", `name`
    /// "node <host>"), or (`action` "tasks changed") the set of serving tasks changed while the
    /// service (or every service, after a node event) converges: list the services again.
    Service { id: String, name: Option<String>, action: String },
    /// List and inspect everything: at start, after a reconnect, on the safety timer.
    Resync,
    /// A static config file or the template changed.
    Files,
    /// Docker answered for the first time (it was down when the agent started).
    Connected(Arc<dyn DockerApi>),
    /// Certificates were issued: nginx must reload (once per batch) to serve them.
    CertsIssued(Vec<crate::routes::DomainName>),
    /// Cloudflare's ranges as `CLOUDFLARE_IPS_URL` published them.
    CloudflareIps(Vec<crate::routes::Cidr>),
}

impl Trigger {
    /// Whether the trigger alone can change routes, so a pass may run at once. A network
    /// connect comes just before a container's start, whose own event follows within
    /// milliseconds: it waits for DEBOUNCE like every event in a burst.
    fn is_decisive(&self) -> bool {
        !matches!(self, Trigger::Container { action, .. } if action == "connect" || action == "disconnect")
    }
}

/// Runs until `shutdown` resolves (then stops nginx gracefully) or nginx dies (an error).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::apply::nginx::raise_open_files_limit();
    let (tx, rx) = mpsc::channel::<Trigger>(1024);
    let mut controller = Controller::start(config, tx).await?;
    if !controller.config.docker {
        // Env/file routes only: the first pass needs no Docker list.
        controller.pass().await;
    }
    controller.start_nginx_if_local().await?;
    let schedule = Scheduler::new(controller.config.timing.debounce, controller.config.timing.debounce_max);
    run_loop(&mut controller, rx, schedule, shutdown).await
}

/// Follows Docker's events (reconnecting as needed), and returns the watches of converging Swarm
/// services' tasks it shares with the controller (none with `SWARM=off`).
fn spawn_docker_watch(config: &Config, client: Arc<dyn DockerApi>, tx: &mpsc::Sender<Trigger>) -> Option<Converging> {
    let prefix = config.label_prefix.clone();
    let converging = (config.swarm != crate::settings::SwarmMode::Off)
        .then(|| Converging::new(client.clone(), tx.clone(), prefix.clone()));
    tokio::spawn(watch_docker(client, tx.clone(), prefix, converging.clone()));
    converging
}

/// Docker, or `None` while it does not answer: then a task keeps trying (with backoff) and sends
/// [`Trigger::Connected`] once it does.
async fn connect_docker(tx: &mpsc::Sender<Trigger>) -> Option<DockerClient> {
    match DockerClient::connect().await {
        Ok(client) => Some(client),
        Err(e) => {
            warn!("{e}; retrying with backoff, serving the config on disk meanwhile");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut backoff = Backoff::new(DOCKER_RECONNECT_FIRST, DOCKER_RECONNECT_MAX);
                loop {
                    tokio::time::sleep(backoff.next_delay()).await;
                    if let Ok(client) = DockerClient::connect().await {
                        let _ = tx.send(Trigger::Connected(Arc::new(client))).await;
                        return;
                    }
                }
            });
            None
        }
    }
}

/// Sends [`Trigger::Resync`] every `every`.
fn spawn_resync_timer(tx: mpsc::Sender<Trigger>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tick.tick().await;
            if tx.send(Trigger::Resync).await.is_err() {
                return;
            }
        }
    });
}

/// The first retry of a failed Docker call, and the longest wait between retries.
const DOCKER_RETRY_FIRST: Duration = Duration::from_millis(250);
const DOCKER_RETRY_MAX: Duration = Duration::from_secs(5);
/// The first and the longest wait between two attempts to reach Docker while it is down: a ping
/// is cheap, a stale route is not, so the routes are current within about a second of Docker
/// answering.
const DOCKER_RECONNECT_FIRST: Duration = Duration::from_millis(250);
const DOCKER_RECONNECT_MAX: Duration = Duration::from_secs(1);
/// The first retry of a failed apply (nginx unreachable, a write failing), and the longest wait.
const APPLY_RETRY_FIRST: Duration = Duration::from_secs(1);
const APPLY_RETRY_MAX: Duration = Duration::from_secs(30);

fn load_renderer(config: &Config) -> anyhow::Result<Renderer> {
    Ok(Renderer::for_template(config.template.as_deref())?)
}

struct Controller {
    tx: mpsc::Sender<Trigger>,
    config: Config,
    renderer: Renderer,
    docker: Option<Arc<dyn DockerApi>>,
    applier: Applier,
    /// Kept alive: dropping it stops watching the static files and the template.
    _file_watcher: Option<notify::RecommendedWatcher>,
    /// The `auth.users-file`s the last table named, and the watcher of their directories.
    users_files: (BTreeSet<std::path::PathBuf>, Option<notify::RecommendedWatcher>),
    /// The labelled containers, what to inspect, what fails.
    store: Store,
    statics: StaticState,
    last_diagnostics: Vec<Diagnostic>,
    /// nginx's container (its networks, and the companion's current run), read on each resync.
    nginx: Option<crate::sources::docker::NginxState>,
    /// The run the last written config went to.
    applied_run: Option<String>,
    /// A start event of the nginx container arrived: the next pass checks whether it is a new run.
    nginx_start_seen: bool,
    /// An event about the nginx container arrived: the next pass reads its networks again.
    nginx_changed: bool,
    /// What triggered the coming pass, for the log.
    causes: BTreeSet<Cause>,
    /// Docker calls failing, as told to the log and the status endpoint, and the retry delay.
    docker_trouble: Option<(String, Backoff)>,
    /// A lasting error of the config itself (a template that does not load or render, nginx -t
    /// failing without routes): logged when it begins and when it ends, not on every pass.
    config_error: Option<String>,
    /// The template file's load error, while it lasts.
    template_error: Option<String>,
    /// The domains served after the last apply, to log what changed.
    served: BTreeSet<String>,
    /// The TLS domains served, for the certificate task (new routes are ordered right away).
    tls_domains: tokio::sync::watch::Sender<Vec<crate::routes::DomainName>>,
    /// The TLS domains of the last apply, handed to the certificate task once nginx runs.
    tls_pending: Option<Vec<crate::routes::DomainName>>,
    /// After an apply failed for a reason that may pass (nginx unreachable, a write error): the
    /// last error and the delay before the next try (1 s doubling to 30 s).
    retry: Option<(String, Backoff)>,
    /// What the status endpoint shows (`/healthz`, `/routes`).
    status: std::sync::Arc<crate::status::State>,
    /// Followers (`FOLLOWER_KEY_FILE`): the revision they are served, and the watcher of the
    /// HTTP-01 tokens they must answer too.
    follow: Option<(Arc<crate::follow::server::Publisher>, Option<notify::RecommendedWatcher>)>,
    /// The watches of converging Swarm services' tasks (none with `SWARM=off`), shared with the
    /// Docker watcher.
    converging: Option<Converging>,
}

/// Whether insight can read the per-domain access logs rather than have nginx write a second
/// line per request: the agent must see `LOG_DIR` as nginx does (its child's; a companion
/// container's when a volume mounts it in both). Said once, with what to do otherwise.
pub async fn reads_access_logs(config: &Config, nginx: &crate::apply::Nginx) -> bool {
    let render = &config.render;
    if render.insight_log.is_none() || !render.access_log_files {
        return false;
    }
    let shared = nginx.shares_dir(render.log_dir.as_path()).await;
    if shared {
        info!(log_dir = %render.log_dir.as_path().display(), "insight: nginx sees LOG_DIR as the agent does: the per-domain access logs carry each request's figures (one line per request)");
    } else {
        info!(
            log_dir = %render.log_dir.as_path().display(),
            "insight: nginx's container does not share LOG_DIR with the agent, so nginx writes each request's figures to the insight file too; mount LOG_DIR in both containers to save that line"
        );
    }
    shared
}

/// What went live of `table`: without the routes nginx refused.
fn live_table(table: &RouteTable, applied: &Applied) -> RouteTable {
    let mut live = table.clone();
    for dropped in &applied.dropped {
        live = live.without_site(&dropped.domain);
    }
    live
}

impl Controller {
    /// Connects what the agent needs (Docker, nginx, the status endpoint, the certificates task,
    /// the watchers and the resync timer, all sending to `tx`) and returns the controller.
    async fn start(mut config: Config, tx: mpsc::Sender<Trigger>) -> anyhow::Result<Controller> {
        let renderer = load_renderer(&config)?;
        let docker = if config.docker { connect_docker(&tx).await } else { None };
        let nginx = choose_nginx(&config, docker.as_ref()).await?;
        config.render.insight_from_access_logs = reads_access_logs(&config, &nginx).await;
        info!(nginx = %nginx.describe(), conf = %config.nginx.conf.display(), "starting");
        let applier = Applier::new(nginx, config.nginx.conf.clone(), config.certs_dir.clone());
        let status = Arc::new(crate::status::State::default());
        crate::status::start(&config, status.clone(), &applier.nginx, docker.as_ref()).await;

        let follow = match &config.follow {
            Some(setup) => {
                let publisher = Arc::new(crate::follow::server::Publisher::new(setup.key.clone()));
                crate::follow::server::start(setup.addr, publisher.clone()).await;
                status.set_follow(publisher.clone());
                let watcher =
                    crate::follow::server::watch_challenges(config.render.acme_webroot.as_path(), publisher.clone());
                Some((publisher, watcher))
            }
            None => None,
        };
        let (tls_domains, tls_domains_rx) = tokio::sync::watch::channel(Vec::new());
        if let (Some(mut manager), Some(acme)) = (config.cert_manager()?, &config.acme) {
            if let Some((publisher, _)) = &follow {
                // HTTP-01 tokens reach the followers before the CA is told.
                manager = manager.with_token_sync(publisher.clone());
            }
            info!(challenge = %manager.challenge(), "certificates: ordering from {}", acme.account.directory);
            let interval = acme.renewal_interval;
            tokio::spawn(manager.serve(tls_domains_rx, tx.clone(), Trigger::CertsIssued, interval));
        }
        let file_watcher = watch_files(&config, tx.clone());
        let docker = docker.map(|client| Arc::new(client) as Arc<dyn DockerApi>);
        let converging = docker.clone().and_then(|client| spawn_docker_watch(&config, client, &tx));
        // Before nginx starts (in the first pass): the agent makes the file and reads it from its end.
        if let Some(file) = &config.render.insight_log {
            insight::start(file.as_path(), status.clone(), docker.clone(), config.timing)?;
        }
        spawn_resync_timer(tx.clone(), config.timing.resync);
        if let Some(url) = &config.cloudflare_ips_url {
            if config.render.real_ip.as_ref().is_some_and(|r| r.trusts_cloudflare()) {
                cloudflare_ips::spawn(url.clone(), tx.clone());
            }
        }
        Ok(Controller {
            docker,
            converging,
            status,
            follow,
            tls_domains,
            _file_watcher: file_watcher,
            ..Controller::new(config, tx, applier, renderer)
        })
    }

    /// A controller that has not connected anything yet: no Docker, no file watcher, a status
    /// and a channel of TLS domains nobody reads.
    fn new(config: Config, tx: mpsc::Sender<Trigger>, applier: Applier, renderer: Renderer) -> Controller {
        Controller {
            tx,
            store: {
                let mut store = Store::new(&config.label_prefix);
                store.set_swarm(match config.swarm {
                    _ if !config.docker => Some(false),
                    crate::settings::SwarmMode::Off => Some(false),
                    crate::settings::SwarmMode::On => Some(true),
                    crate::settings::SwarmMode::Auto => None,
                });
                store
            },
            config,
            renderer,
            docker: None,
            applier,
            _file_watcher: None,
            users_files: (BTreeSet::new(), None),
            statics: StaticState::default(),
            last_diagnostics: Vec::new(),
            nginx: None,
            applied_run: None,
            nginx_start_seen: false,
            nginx_changed: false,
            causes: BTreeSet::new(),
            docker_trouble: None,
            config_error: None,
            template_error: None,
            served: BTreeSet::new(),
            tls_domains: tokio::sync::watch::channel(Vec::new()).0,
            tls_pending: None,
            retry: None,
            status: Arc::default(),
            follow: None,
            converging: None,
        }
    }

    /// Takes a trigger into account; false when it cannot change anything (an event about a
    /// container that has no labels with the prefix and is neither cached nor nginx).
    fn note(&mut self, trigger: Trigger) -> bool {
        if let Trigger::Container { id, name, labelled: false, .. } = &trigger {
            if self.store.get(id).is_none() && !self.is_about_nginx(id, name.as_deref()) {
                return false;
            }
        }
        let cause = self.cause_of(&trigger);
        if self.causes.len() < 20 {
            self.causes.insert(cause);
        }
        match trigger {
            Trigger::Container { id, name, action, .. } => {
                if self.is_about_nginx(&id, name.as_deref()) {
                    // Its networks may have changed (connect, disconnect): read again next pass.
                    self.nginx_changed = true;
                }
                if (action == "start" || action == "unpause") && self.is_nginx_container(&id, name.as_deref()) {
                    // Whether this is a new run is known after the resync it asks for.
                    // (Forgotten until then: if the resync fails, the config is applied again.)
                    self.nginx_start_seen = true;
                    if let Some(nginx) = &mut self.nginx {
                        nginx.run = None;
                    }
                    self.store.resync();
                }
                self.store.changed(id);
            }
            Trigger::Service { .. } => {
                if self.store.swarm_on() == Some(false) {
                    return false;
                }
                self.store.service_changed();
            }
            Trigger::Resync => {
                if self.config.docker && self.config.swarm == crate::settings::SwarmMode::Auto {
                    // Docker may have joined or left a Swarm since: asked again before the list.
                    self.store.recheck_swarm();
                }
                self.store.resync();
                // Something outside the candidate (nginx's own config) may have been fixed.
                self.applier.retest();
            }
            Trigger::CertsIssued(_) => self.applier.invalidate(),
            Trigger::CloudflareIps(ranges) => {
                let count = ranges.len();
                let changed = self.config.render.real_ip.as_mut().is_some_and(|r| r.set_cloudflare(ranges));
                if !changed {
                    return false;
                }
                info!(ranges = count, "Cloudflare's IP ranges changed: trusting the new list");
            }
            Trigger::Connected(client) => {
                info!("connected to Docker");
                self.converging = spawn_docker_watch(&self.config, client.clone(), &self.tx);
                self.docker = Some(client);
                self.store.resync();
            }
            Trigger::Files => {
                if let Some(path) = &self.config.template {
                    let (renderer, error) = match Renderer::from_file(path) {
                        Ok(r) => (Some(r), None),
                        Err(e) => (None, Some(format!("{e}; keeping the last good template"))),
                    };
                    if let Some(renderer) = renderer {
                        self.renderer = renderer;
                    }
                    lasting(&mut self.template_error, error, "the template loads again");
                }
            }
        }
        true
    }

    /// What the log will say caused the pass `trigger` asks for.
    fn cause_of(&self, trigger: &Trigger) -> Cause {
        match trigger {
            Trigger::Container { id, name, action, .. } => {
                let name = name.clone().or_else(|| self.store.get(id).map(|c| c.name.clone()));
                Cause::Container { id: id.clone(), name, action: action.clone() }
            }
            // A node event (and the watch it started) names the node.
            Trigger::Service { id, name: Some(name), action } if id == watch::EVERY_SERVICE => {
                Cause::Other(format!("{name}: {action}"))
            }
            Trigger::Service { id, name, action } => Cause::Other(format!(
                "service {}: {action}",
                name.clone().unwrap_or_else(|| id.chars().take(12).collect())
            )),
            Trigger::Resync => Cause::Other("resync".to_string()),
            Trigger::CloudflareIps(_) => Cause::Other("Cloudflare's IP ranges changed".to_string()),
            Trigger::Files => Cause::Other("config file, template or users-file changed".to_string()),
            Trigger::Connected(_) => Cause::Other("connected to Docker".to_string()),
            Trigger::CertsIssued(domains) => Cause::Other(format!(
                "certificates issued for {}",
                domains.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            )),
        }
    }

    /// Brings the cache up to date, rebuilds the table, and applies it.
    async fn pass(&mut self) {
        if !self.refresh().await {
            return;
        }
        let table = self.table();
        self.report_diagnostics(&table);
        let users_files = crate::apply::auth_files::users_files(&table);
        if users_files != self.users_files.0 {
            let watcher = watch::watch_users_files(&users_files, self.tx.clone());
            self.users_files = (users_files, watcher);
        }

        let causes: Vec<String> = std::mem::take(&mut self.causes).into_iter().map(|c| self.describe(c)).collect();
        // Where insight starts reading the access logs this apply may route: after what they
        // hold now (nginx -t and the reload make the missing ones; every line in those is new).
        let starts = insight::file_starts(&self.renderer.insight_access_logs(&table, &self.config.render));
        let result = self.applier.apply(&self.renderer, &self.config.render, &table).await;
        self.status.applied(&table, &result);
        if let Ok(applied) = &result {
            let targets = insight::heal_targets(self.store.containers(), &table, &self.config.label_prefix);
            self.status.set_heal_targets(targets);
            let files = self.renderer.insight_access_logs(&live_table(&table, applied), &self.config.render);
            self.status.set_insight_files(insight::with_starts(files, &starts));
        }
        if let (Ok(applied), Some((publisher, _))) = (&result, &self.follow) {
            self.publish_follow(publisher.clone(), &table, applied);
        }
        match result {
            Ok(applied) if !applied.changed => {
                if applied.auth_files > 0 {
                    info!(files = applied.auth_files, "an auth.users-file changed: its copy for nginx is updated");
                }
            }
            Ok(applied) => self.applied(&table, &applied, &causes),
            Err(e) => return self.apply_failed(e),
        }
        if self.retry.take().is_some() {
            info!("apply succeeded again");
        }
        self.config_error(None);
    }

    /// Hands what went live to the followers' publisher: the table without the routes nginx
    /// refused, and the config the agent's nginx runs. Unchanged bytes: only the files are read
    /// again when a users-file changed.
    fn publish_follow(&self, publisher: Arc<crate::follow::server::Publisher>, table: &RouteTable, applied: &Applied) {
        if !applied.changed {
            if applied.auth_files > 0 {
                publisher.refresh();
            }
            return;
        }
        let Some(config) = self.applier.live() else { return };
        publisher.publish(crate::follow::server::Source {
            table: live_table(table, applied),
            renderer: self.renderer.clone(),
            settings: self.config.render.clone(),
            config: config.to_string(),
        });
    }

    /// The whole table from the cache and the static sources.
    fn table(&mut self) -> RouteTable {
        let containers: Vec<Container> = self.store.containers().cloned().collect();
        self.renderer.fit(pipeline::build(
            self.config.docker.then_some(&containers[..]),
            self.nginx.as_ref().map(|n| n.networks.clone()),
            self.statics.load(&self.config.statics),
            &self.config.label_prefix,
        ))
    }

    /// Brings the container cache and nginx's state up to date; false when no config may be
    /// rendered yet (Docker wanted but not answering, or its first list incomplete).
    async fn refresh(&mut self) -> bool {
        let Some(client) = self.docker.clone() else {
            // Docker has not answered yet: keep the config on disk until it does.
            return !self.config.docker;
        };
        if self.store.wants_list() {
            self.relist(&*client).await;
        } else if std::mem::take(&mut self.nginx_changed) {
            self.nginx = self.nginx_state(&*client).await;
        }
        if std::mem::take(&mut self.nginx_start_seen) {
            self.nginx_started();
        }
        let ids = self.store.take_dirty();
        if !ids.is_empty() {
            let results = client.inspect_all(&ids).await;
            self.store.inspected_all(ids, results);
        }
        self.refresh_services(&*client).await;
        self.publish_docker_trouble();
        // Never render Docker routes from a partial picture.
        self.store.listed()
    }

    /// Asks Docker whether it is a Swarm manager (`SWARM=auto`, once it answers), then lists the
    /// services when a service changed or a resync is due.
    async fn refresh_services(&mut self, client: &dyn DockerApi) {
        if self.store.swarm_to_ask() {
            match client.swarm_manager().await {
                Ok(manager) => {
                    match (self.store.swarm_on(), manager) {
                        (Some(true), true) | (Some(false) | None, false) => {}
                        (_, true) => info!("Docker is a Swarm manager: reading the labelled services too (SWARM=auto)"),
                        (Some(true), false) => {
                            info!("Docker is no longer a Swarm manager: services are not read (SWARM=auto)")
                        }
                    }
                    self.store.set_swarm(Some(manager));
                }
                Err(e) => return self.store.swarm_unknown(&e),
            }
        }
        if self.store.wants_services() {
            let result = client.swarm_services(&self.config.label_prefix).await;
            // A service created or updated before the watcher listened has sent its event already.
            if let (Ok(services), Some(converging)) = (&result, &self.converging) {
                converging.watch_unsettled(services);
            }
            self.store.services_listed(result);
        }
    }

    /// Lists the labelled containers and inspects them all (see [`Store::listed_all`]); reads
    /// nginx's state again once the list is taken.
    async fn relist(&mut self, client: &dyn DockerApi) {
        let ids = match client.labelled_ids(&self.config.label_prefix).await {
            Ok(ids) => ids,
            Err(e) => return self.store.list_failed(&e),
        };
        let results = client.inspect_all(&ids).await;
        if self.store.listed_all(ids, results) {
            self.nginx = self.nginx_state(client).await;
            self.nginx_changed = false;
        }
    }

    /// Logs a changed config that went live (what was added and removed, why, how long it took)
    /// and hands its TLS domains to the certificates task.
    fn applied(&mut self, table: &RouteTable, applied: &Applied, causes: &[String]) {
        self.applied_run = self.nginx_run().cloned();
        let left_out = |domain: &crate::routes::DomainName| applied.dropped.iter().any(|x| x.domain == *domain);
        let served: BTreeSet<String> =
            table.sites.iter().filter(|s| !left_out(&s.domain)).map(|s| s.domain.to_string()).collect();
        let added: Vec<&String> = served.difference(&self.served).collect();
        let removed: Vec<&String> = self.served.difference(&served).collect();
        for d in &applied.dropped {
            error!(domain = %d.domain, source = %d.sources.join(", "), "route left out: {}", d.reason);
        }
        if !applied.placeholders.is_empty() {
            let list: Vec<String> = applied.placeholders.iter().map(ToString::to_string).collect();
            info!("placeholder certificates written for: {}", list.join(", "));
        }
        let t = applied.timings;
        info!(
            cause = %causes.join("; "),
            added = %list(&added),
            removed = %list(&removed),
            sites = table.sites.len() - applied.dropped.len(),
            upstreams = table.upstreams.len(),
            render_ms = t.render.as_millis() as u64,
            test_ms = t.test.as_millis() as u64,
            tests = t.tests_run,
            reload_ms = t.reload.as_millis() as u64,
            "{}",
            if applied.reloaded { "config applied and nginx reloaded" } else { "config applied" }
        );
        self.served = served;
        let tls = if self.config.serves_tls() {
            table.tls_domains().into_iter().filter(|d| !left_out(d)).collect()
        } else {
            Vec::new()
        };
        self.tls_pending = Some(tls);
    }

    /// A failed apply: the last good config stays live. A config nginx or the template rejects
    /// is a lasting error (logged when it begins and ends); anything else is retried with backoff.
    fn apply_failed(&mut self, error: ApplyError) {
        match error {
            ApplyError::NotRouteRelated { output } => self.config_error(Some(format!(
                "nginx -t fails even without routes; the last good config stays live:\n{output}"
            ))),
            // The same template renders the same way: retried when a file or a route changes.
            ApplyError::Render(e) => self.config_error(Some(format!("{e}; the last good config stays live"))),
            e => {
                let message = e.to_string();
                let backoff = match self.retry.take() {
                    Some((last, mut backoff)) => {
                        if last != message {
                            error!("apply failed; the last good config stays live, retrying with backoff: {message}");
                        }
                        backoff.advance();
                        backoff
                    }
                    None => {
                        error!("apply failed; the last good config stays live, retrying with backoff: {message}");
                        Backoff::new(APPLY_RETRY_FIRST, APPLY_RETRY_MAX)
                    }
                };
                self.retry = Some((message, backoff));
            }
        }
    }

    fn config_error(&mut self, error: Option<String>) {
        lasting(&mut self.config_error, error, "nginx accepts the config again");
    }

    /// A cause as the log shows it: containers by name (known from the cache or, for nginx's,
    /// from its state when the event had none), an unknown container by its short id.
    fn describe(&self, cause: Cause) -> String {
        match cause {
            Cause::Container { id, name, action } => {
                let name = name
                    .or_else(|| self.store.get(&id).map(|c| c.name.clone()))
                    .or_else(|| self.nginx.as_ref().filter(|n| n.id == id).map(|n| n.name.clone()));
                format!("{}: {action}", name.unwrap_or_else(|| id.chars().take(12).collect()))
            }
            Cause::Other(text) => text,
        }
    }

    /// Logs a change of Docker's state (failing calls begin or end) once, tells the status
    /// endpoint, and sets the backoff of the next retry.
    fn publish_docker_trouble(&mut self) {
        let trouble = self.store.trouble();
        match (&trouble, &self.docker_trouble) {
            (Some(now), before) if before.as_ref().map(|(t, _)| t) != Some(now) => {
                warn!("Docker is degraded: {now}; applying what is known and retrying with backoff")
            }
            (None, Some(_)) => info!("Docker calls succeed again"),
            _ => {}
        }
        self.docker_trouble = trouble.map(|t| {
            let backoff = match self.docker_trouble.take() {
                Some((_, mut backoff)) => {
                    backoff.advance();
                    backoff
                }
                None => Backoff::new(DOCKER_RETRY_FIRST, DOCKER_RETRY_MAX),
            };
            (t, backoff)
        });
        self.status.docker_degraded(self.docker_trouble.as_ref().map(|(t, _)| t.clone()));
    }

    /// The delay before the next retry: of a failed apply, or of failed Docker calls.
    fn next_retry(&self) -> Option<Duration> {
        let apply = self.retry.as_ref().map(|(_, b)| b.current());
        let docker = self.docker_trouble.as_ref().map(|(_, b)| b.current());
        apply.into_iter().chain(docker).min()
    }

    /// A retry is due: list again after a failed apply or list, inspect again what failed.
    fn retry_due(&mut self) {
        self.store.retry_due(self.retry.is_some());
        if self.causes.len() < 20 {
            self.causes.insert(Cause::Other("retry".into()));
        }
    }

    /// Logs diagnostics when they change (quiet when nothing happens).
    fn report_diagnostics(&mut self, table: &RouteTable) {
        if table.diagnostics == self.last_diagnostics {
            return;
        }
        for d in table.diagnostics.iter().filter(|d| !self.last_diagnostics.contains(d)) {
            match d.severity {
                crate::routes::Severity::Error => error!("{}: {}", d.origin, d.message),
                crate::routes::Severity::Warning => warn!("{}: {}", d.origin, d.message),
            }
        }
        self.last_diagnostics = table.diagnostics.clone();
    }
}

/// Logs a lasting error when it begins or changes, and its end once (`ended`), never per pass.
fn lasting(slot: &mut Option<String>, now: Option<String>, ended: &str) {
    match (&now, &*slot) {
        (Some(now), before) if before.as_ref() != Some(now) => error!("{now}"),
        (None, Some(_)) => info!("{ended}"),
        _ => {}
    }
    *slot = now;
}

/// A short list for log lines: at most 10 names, then a count.
fn list(names: &[&String]) -> String {
    match names.len() {
        0 => "-".to_string(),
        n if n <= 10 => names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
        n => format!("{} and {} more", names[..10].iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","), n - 10),
    }
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

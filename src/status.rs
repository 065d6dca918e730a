//! The status endpoint on `STATUS_ADDR`: `/healthz`, `/metrics`, `/routes`, `/certs`, `/events`,
//! `/followers` and the dashboard on `/` (GET and HEAD only; every path but `/healthz` behind
//! `STATUS_TOKEN` as [`crate::dashboard::auth`] says).
//!
//! A small hyper 1 server on the agent's runtime. The controller publishes what it did into
//! [`State`] (a short lock per pass, never held across an await); everything else is read when a
//! request comes, in the server's own tasks, so a slow or stuck client never delays a pass.
//!
//! `/healthz` asks, in this order: Docker answers a ping (when Docker is used); nginx is reachable
//! (the local child's process exists, or the companion container is running, by a Docker inspect);
//! the last apply succeeded. Each check has a short timeout, and the first that fails is the
//! answer: 503 with one line a person can act on.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tracing::{error, info};

use crate::apply::{Applied, ApplyError, Dropped, Nginx};
use crate::dashboard::auth::Guard;
pub use crate::dashboard::events::EventKind;
use crate::dashboard::events::Events;
use crate::routes::{Diagnostic, DomainName, RouteTable};
pub use crate::settings::StatusAddr;
use crate::sources::docker::DockerClient;

/// What the controller publishes for the status endpoint.
/// The access logs insight reads.
pub type InsightFiles = Vec<InsightFile>;

/// A domain's access log that carries insight's figures, and where its reading starts when the
/// reader does not read it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsightFile {
    pub domain: String,
    pub path: PathBuf,
    pub start: FileStart,
}

/// Where a file new to the reader is read from: what it held before the apply that routed its
/// domain is an earlier run's (or another config's) traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStart {
    /// The file as it was before the apply: from this offset while it is the same file (inode).
    At { ino: u64, offset: u64 },
    /// It did not exist before the apply: nginx made it since, every line is new.
    Beginning,
}

impl FileStart {
    /// What `path` holds now, to be read after it.
    pub fn of(path: &std::path::Path) -> FileStart {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => FileStart::At { ino: m.ino(), offset: m.len() },
            Err(_) => FileStart::Beginning,
        }
    }
}

#[derive(Default)]
pub struct State {
    inner: Mutex<Inner>,
    /// The traffic figures of the routed domains (`INSIGHT`), fed by `agent::insight`.
    insight: Mutex<crate::insight::Insight>,
    /// The access logs `agent::insight` reads (domain, file), and their revision.
    insight_files: Mutex<(u64, Arc<InsightFiles>)>,
    /// The containers with `heal=restart`, each with a server address nginx logs for it.
    heal: Mutex<Vec<HealTarget>>,
    /// Recent decisions, for `/events` (see [`State::event`]).
    events: Events,
    /// The followers' publisher, when `FOLLOWER_KEY_FILE` is set (`/followers`).
    follow: Mutex<Option<Arc<crate::follow::server::Publisher>>>,
}

/// A container the agent may restart (`heal=restart`), at one of its upstream addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealTarget {
    pub id: String,
    pub name: String,
    /// `ip:port`, or the upstream's name when no server of it is left, as nginx logs
    /// `$upstream_addr`.
    pub server: String,
    /// Docker's health status, when the container has a health check.
    pub docker_healthy: Option<bool>,
}

#[derive(Default, Clone)]
struct Inner {
    /// `None` until the first apply; then the last one's outcome (`Err`: its reason, one line).
    apply: Option<Result<(), String>>,
    /// The routes of the last successful apply.
    live: Option<Arc<Live>>,
    /// The local nginx child's pid, once started.
    nginx_pid: Option<u32>,
    /// Docker calls failing (inspects or lists), while they do.
    docker_degraded: Option<String>,
}

/// The live route table and the routes left out of it.
struct Live {
    table: RouteTable,
    left_out: Vec<Dropped>,
}

impl State {
    /// Records an event for the dashboard (`/events`, the last 200): one line naming the domain,
    /// with no setting or secret in it, e.g. `state.event(EventKind::Anomaly, format!(...))`.
    pub fn event(&self, kind: EventKind, text: String) {
        self.events.push(now_ms(), kind, text);
    }

    /// Records an apply's outcome (and, on success, the table it made live).
    pub fn applied(&self, table: &RouteTable, result: &Result<Applied, ApplyError>) {
        let before = self.snapshot();
        let outcome = match result {
            Ok(_) => Ok(()),
            Err(ApplyError::NotRouteRelated { .. }) => Err(
                "nginx -t rejects even a config without routes (the template or nginx's own config; see the agent's log)"
                    .to_string(),
            ),
            Err(e) => Err(one_line(&e.to_string())),
        };
        self.record_apply(&before, table, result, &outcome);
        let live = match result {
            Ok(applied) => {
                let left_out = if applied.changed { Some(applied.dropped.clone()) } else { None };
                Some((table.clone(), left_out))
            }
            Err(_) => None,
        };
        let Some((table, left_out)) = live else {
            self.inner.lock().expect("status lock").apply = Some(outcome);
            return;
        };
        // Unchanged bytes: the routes left out before still are (only this controller writes).
        let left_out = left_out.unwrap_or_else(|| self.snapshot().live.map(|l| l.left_out.clone()).unwrap_or_default());
        let domains: Vec<DomainName> = left_out.iter().map(|d| d.domain.clone()).collect();
        crate::metrics::global().routes_applied(&table, &domains);
        let served = table.sites.iter().map(|s| &s.domain).filter(|d| !domains.contains(d));
        self.insight().set_domains(served.map(|d| d.as_str()));
        let live = Arc::new(Live { table, left_out });
        let mut inner = self.inner.lock().expect("status lock");
        inner.apply = Some(outcome);
        inner.live = Some(live);
    }

    /// The events of an apply: a failure (once per new reason), a reload, the domains routed,
    /// no longer routed or left out since the last successful apply.
    fn record_apply(
        &self,
        before: &Inner,
        table: &RouteTable,
        result: &Result<Applied, ApplyError>,
        outcome: &Result<(), String>,
    ) {
        use std::collections::BTreeSet;
        let applied = match (result, outcome) {
            (_, Err(reason)) => {
                if before.apply.as_ref() != Some(outcome) {
                    self.event(
                        EventKind::ApplyFailed,
                        format!("apply failed, nginx keeps its last good config: {reason}"),
                    );
                }
                return;
            }
            (Ok(applied), _) if applied.changed => applied,
            _ => return,
        };
        let live = |table: &RouteTable, left_out: &[Dropped]| -> BTreeSet<String> {
            let out: BTreeSet<&DomainName> = left_out.iter().map(|d| &d.domain).collect();
            table.sites.iter().filter(|s| !out.contains(&s.domain)).map(|s| s.domain.to_string()).collect()
        };
        let now = live(table, &applied.dropped);
        let reloaded = if applied.reloaded { ", nginx reloaded" } else { "" };
        let plural = if now.len() == 1 { "" } else { "s" };
        self.event(EventKind::Reload, format!("config applied: {} domain{plural} live{reloaded}", now.len()));
        let Some(previous) = &before.live else { return };
        let was = live(&previous.table, &previous.left_out);
        let listed = |kind: EventKind, domains: Vec<&String>, what: &str| {
            if domains.len() <= 10 {
                for d in domains {
                    self.event(kind, format!("{d} {what}"));
                }
            } else {
                let first: Vec<&str> = domains.iter().take(5).map(|d| d.as_str()).collect();
                self.event(kind, format!("{} domains {what}: {}, …", domains.len(), first.join(", ")));
            }
        };
        listed(EventKind::RouteAdded, now.difference(&was).collect(), "routed");
        listed(EventKind::RouteRemoved, was.difference(&now).collect(), "no longer routed");
        for d in applied.dropped.iter().filter(|d| !previous.left_out.iter().any(|p| p.domain == d.domain)).take(10) {
            self.event(EventKind::LeftOut, format!("{} left out: {}", d.domain, one_line(&d.reason)));
        }
    }

    /// Docker calls fail (`Some`: what fails) or succeed again (`None`).
    pub fn docker_degraded(&self, trouble: Option<String>) {
        crate::metrics::global().docker_degraded(trouble.is_some());
        self.inner.lock().expect("status lock").docker_degraded = trouble;
    }

    /// The local nginx child started.
    pub fn nginx_started(&self, pid: Option<u32>) {
        self.inner.lock().expect("status lock").nginx_pid = pid;
    }

    /// The traffic figures, to feed or read (held briefly: nginx's lines wait meanwhile).
    pub fn insight(&self) -> std::sync::MutexGuard<'_, crate::insight::Insight> {
        self.insight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The containers the agent may restart, as of the last pass.
    pub fn set_heal_targets(&self, targets: Vec<HealTarget>) {
        *self.heal.lock().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    /// The containers the agent may restart (a copy).
    pub fn heal_targets(&self) -> Vec<HealTarget> {
        self.heal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The domains' access logs that carry insight's figures, as of the last apply (empty when
    /// nginx writes them to the insight file).
    pub fn set_insight_files(&self, files: InsightFiles) {
        let mut current = self.insight_files.lock().unwrap_or_else(|p| p.into_inner());
        let same = |a: &InsightFile, b: &InsightFile| (&a.domain, &a.path) == (&b.domain, &b.path);
        if current.1.len() != files.len() || current.1.iter().zip(&files).any(|(a, b)| !same(a, b)) {
            *current = (current.0 + 1, Arc::new(files));
        }
    }

    /// The access-log list and its revision, when it changed since `revision`.
    pub fn insight_files_since(&self, revision: u64) -> Option<(u64, Arc<InsightFiles>)> {
        let current = self.insight_files.lock().unwrap_or_else(|p| p.into_inner());
        (current.0 != revision).then(|| (current.0, current.1.clone()))
    }

    /// The traffic figures if nobody holds them right now.
    pub fn try_insight(&self) -> Option<std::sync::MutexGuard<'_, crate::insight::Insight>> {
        match self.insight.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Shows the followers on `/followers`.
    pub fn set_follow(&self, publisher: Arc<crate::follow::server::Publisher>) {
        *self.follow.lock().expect("status lock") = Some(publisher);
    }

    /// `/followers`: the current revision and each follower (node, revision served, last seen,
    /// error); `{"enabled": false}` without `FOLLOWER_KEY_FILE`.
    fn followers_json(&self) -> String {
        match self.follow.lock().expect("status lock").as_ref() {
            Some(publisher) => publisher.followers_json(),
            None => "{\"enabled\":false}\n".to_string(),
        }
    }

    /// A copy of what was published (the route table is shared, not copied).
    fn snapshot(&self) -> Inner {
        self.inner.lock().expect("status lock").clone()
    }
}

/// How `/healthz` reaches Docker and nginx.
struct Probe {
    /// Docker is used (not NO_DOCKER).
    docker_wanted: bool,
    /// The agent's client; `None` when Docker was down at start (a client is made per request).
    docker: Option<bollard::Docker>,
    nginx: NginxProbe,
}

enum NginxProbe {
    Local,
    Companion { docker: bollard::Docker, container: String },
}

/// Everything the server's handlers read.
struct Server {
    state: Arc<State>,
    probe: Probe,
    certs_dir: PathBuf,
    /// `CERT_RENEWAL_THRESHOLD`, for `/certs`' statuses.
    renew_days: i64,
    local: bool,
    /// Who may read what (`STATUS_TOKEN`).
    guard: Guard,
    /// One `/metrics` at a time (it refreshes the certificate gauges before encoding).
    scrape: tokio::sync::Mutex<()>,
}

/// How long each `/healthz` check may take.
const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);
/// At most this many connections at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;

/// Listens on `config.status_addr` and serves until the process ends. A failed bind is logged
/// and the agent goes on without the endpoint: the status endpoint never takes routing down.
pub async fn start(config: &crate::config::Config, state: Arc<State>, nginx: &Nginx, docker: Option<&DockerClient>) {
    let StatusAddr::At(addr) = config.status_addr else { return };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on STATUS_ADDR {addr}: {e}; /healthz, /metrics and /routes are unavailable (set STATUS_ADDR to a free ip:port, or off)");
            return;
        }
    };
    let guard = Guard::new(addr, config.status_token.as_ref());
    if let Guard::Refuse { .. } = guard {
        error!("STATUS_ADDR {addr} is not a loopback address and STATUS_TOKEN is unset: every path but /healthz answers 401 (set STATUS_TOKEN)");
    }
    let docker = docker.map(|c| c.raw().clone());
    let nginx = match nginx {
        Nginx::Local(_) => NginxProbe::Local,
        Nginx::Companion(c) => NginxProbe::Companion { docker: c.docker.clone(), container: c.container.clone() },
    };
    let server = Arc::new(Server {
        state,
        probe: Probe { docker_wanted: config.docker, docker, nginx },
        certs_dir: config.certs_dir.clone(),
        renew_days: config.renew_days,
        local: config.mode.is_local(),
        guard,
        scrape: tokio::sync::Mutex::new(()),
    });
    info!("status endpoint on http://{addr} (the dashboard on /; /healthz, /metrics, /routes, /certs, /events)");
    tokio::spawn(serve(listener, server));
}

async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(io, service);
            // A client that stalls mid-request is dropped after the header timeout; one that
            // stalls reading the response after this.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            drop(slot);
        });
    }
}

impl Server {
    async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if let Err(denied) = self.guard.check(req.uri().path(), req.headers()) {
            let mut response = text(StatusCode::UNAUTHORIZED, format!("{denied}\n"));
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
        match req.uri().path() {
            "/" => page(crate::dashboard::INDEX_HTML, "text/html; charset=utf-8"),
            "/dashboard.js" => page(crate::dashboard::SCRIPT, "text/javascript; charset=utf-8"),
            "/dashboard.css" => page(crate::dashboard::STYLE, "text/css; charset=utf-8"),
            "/login" => self.login(req.headers()),
            "/certs" => {
                let body = self.certs().await;
                respond(StatusCode::OK, "application/json", body)
            }
            "/events" => respond(StatusCode::OK, "application/json", self.state.events.to_json()),
            "/followers" => respond(StatusCode::OK, "application/json", self.state.followers_json()),
            "/healthz" => match self.health().await {
                Ok(()) => text(StatusCode::OK, "ok\n".into()),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            "/metrics" => {
                let body = self.metrics().await;
                respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, body)
            }
            "/insight" => {
                // A snapshot of 10,000 busy domains takes some 80 ms: off the runtime's threads.
                let state = self.state.clone();
                let json = tokio::task::spawn_blocking(move || {
                    let snapshot = state.insight().snapshot(now_ms());
                    serde_json::to_string(&snapshot).expect("the snapshot serializes")
                })
                .await;
                match json {
                    Ok(json) => respond(StatusCode::OK, "application/json", json + "\n"),
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot take the traffic snapshot ({e}); see the agent's log\n"),
                    ),
                }
            }
            "/routes" => match self.routes() {
                Some(json) => respond(StatusCode::OK, "application/json", json),
                None => text(StatusCode::SERVICE_UNAVAILABLE, "no config applied yet\n".into()),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /, /healthz, /metrics, /routes, /insight, /certs, /events or /followers
"
                .into(),
            ),
        }
    }

    /// `Ok` when Docker (if used) and nginx are reachable and the last apply succeeded; else why not.
    async fn health(&self) -> Result<(), String> {
        if self.probe.docker_wanted {
            let host = crate::sources::docker::docker_host();
            let docker = match &self.probe.docker {
                Some(docker) => docker.clone(),
                None => bollard::Docker::connect_with_defaults()
                    .map_err(|e| one_line(&format!("Docker unreachable at {host}: {e}")))?,
            };
            match tokio::time::timeout(CHECK_TIMEOUT, docker.ping()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(one_line(&format!("Docker unreachable at {host}: {e}"))),
                Err(_) => {
                    return Err(format!("Docker unreachable at {host}: no answer to a ping within {CHECK_TIMEOUT:?}"))
                }
            }
        }
        let Inner { apply, nginx_pid: pid, docker_degraded, .. } = self.state.snapshot();
        if let Some(trouble) = docker_degraded.filter(|_| self.probe.docker_wanted) {
            return Err(one_line(&format!("Docker degraded: {trouble}")));
        }
        match &self.probe.nginx {
            NginxProbe::Local => local_nginx(pid)?,
            NginxProbe::Companion { docker, container } => companion_nginx(docker, container).await?,
        }
        match apply {
            None => Err("no config applied yet (waiting for the first pass)".to_string()),
            Some(Err(reason)) => Err(format!("last apply failed: {reason}")),
            Some(Ok(())) => Ok(()),
        }
    }

    async fn metrics(&self) -> String {
        let _one = self.scrape.lock().await;
        let domains: Vec<DomainName> = match (self.local, self.state.snapshot().live) {
            (false, Some(live)) => {
                live.table.tls_domains().into_iter().filter(|d| !live.left_out.iter().any(|x| x.domain == *d)).collect()
            }
            _ => Vec::new(),
        };
        let store = crate::certs::store::CertStore::new(&self.certs_dir);
        let follow = self.state.follow.lock().expect("status lock").clone();
        // Reading certificates is file IO: off the runtime's worker threads.
        tokio::task::spawn_blocking(move || {
            let certs: Vec<_> = domains
                .into_iter()
                .filter_map(|domain| {
                    let info = store.info(&domain)?;
                    Some(crate::metrics::CertExpiry {
                        domain,
                        not_after: info.not_after,
                        placeholder: info.placeholder,
                    })
                })
                .collect();
            let metrics = crate::metrics::global();
            metrics.certificates(&certs);
            if let Some(publisher) = follow {
                let revision = publisher.revision();
                let seen: Vec<crate::metrics::FollowerSeen> = publisher
                    .followers()
                    .into_iter()
                    .map(|f| crate::metrics::FollowerSeen {
                        current: f.revision == revision,
                        last_seen_unix: (f.last_seen_ms / 1000) as i64,
                        node: f.node,
                    })
                    .collect();
                metrics.followers(&seen);
            }
            metrics.encode()
        })
        .await
        .map(|mut text| {
            self.state.insight().encode(&mut text);
            text
        })
        .unwrap_or_else(|e| format!("# cannot encode the metrics: {e}\n"))
    }

    /// `GET /login` with the bearer token: sets the dashboard's cookie (204), or 401.
    fn login(&self, headers: &http::HeaderMap) -> Response<Full<Bytes>> {
        let Some(cookie) = self.guard.set_cookie() else {
            return respond(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", String::new());
        };
        if !self.guard.bearer_ok(headers) {
            let denied = crate::dashboard::auth::Denied::Wrong;
            return text(StatusCode::UNAUTHORIZED, format!("{denied}\n"));
        }
        let mut response = respond(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", String::new());
        if let Ok(value) = header::HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
    }

    /// `/certs`: the live TLS domains' certificates, as `certs list` shows them (none in local mode).
    async fn certs(&self) -> String {
        let domains: Vec<DomainName> = match (self.local, self.state.snapshot().live) {
            (false, Some(live)) => {
                live.table.tls_domains().into_iter().filter(|d| !live.left_out.iter().any(|x| x.domain == *d)).collect()
            }
            _ => Vec::new(),
        };
        let store = crate::certs::store::CertStore::new(&self.certs_dir);
        let renew_days = self.renew_days;
        // File IO: off the runtime's worker threads.
        tokio::task::spawn_blocking(move || {
            crate::dashboard::certs_json(&store.status(&domains, renew_days, time::OffsetDateTime::now_utc()))
        })
        .await
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}\n", e.to_string()))
    }

    fn routes(&self) -> Option<String> {
        let live = self.state.snapshot().live?;
        Some(routes_json(&live.table, &live.left_out, self.local))
    }
}

/// The `/routes` document: the live routes (as `check --format json` shows them), the routes left
/// out with nginx's reason, and the diagnostics. Holds no setting, so no secret.
fn routes_json(table: &RouteTable, left_out: &[Dropped], local: bool) -> String {
    #[derive(Serialize)]
    struct LeftOut<'a> {
        domain: &'a DomainName,
        sources: &'a [String],
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct View<'a> {
        routes: Vec<crate::report::RouteRow>,
        left_out: Vec<LeftOut<'a>>,
        errors: Vec<&'a Diagnostic>,
        warnings: Vec<&'a Diagnostic>,
    }
    let report = crate::report::Report::new(table, local, &[]);
    let view = View {
        routes: report.routes.into_iter().filter(|r| !left_out.iter().any(|d| d.domain.as_str() == r.domain)).collect(),
        left_out: left_out
            .iter()
            .map(|d| LeftOut { domain: &d.domain, sources: &d.sources, reason: &d.reason })
            .collect(),
        errors: report.errors,
        warnings: report.warnings,
    };
    serde_json::to_string_pretty(&view).expect("the route view serializes") + "\n"
}

fn local_nginx(pid: Option<u32>) -> Result<(), String> {
    let Some(pid) = pid else {
        return Err("nginx not started yet (it starts after the first complete list of containers)".into());
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("nginx unreachable: its process {pid} is gone ({e})")),
    }
}

async fn companion_nginx(docker: &bollard::Docker, container: &str) -> Result<(), String> {
    let inspect = match tokio::time::timeout(CHECK_TIMEOUT, docker.inspect_container(container, None)).await {
        Err(_) => {
            return Err(format!(
                "nginx unreachable: Docker did not answer an inspect of container {container} within {CHECK_TIMEOUT:?}"
            ))
        }
        Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })) => {
            return Err(format!(
                "nginx unreachable: container {container} does not exist (start it, or set NGINX_CONTAINER)"
            ))
        }
        Ok(Err(e)) => return Err(one_line(&format!("nginx unreachable: cannot inspect container {container}: {e}"))),
        Ok(Ok(inspect)) => inspect,
    };
    let state = inspect.state.unwrap_or_default();
    if state.running == Some(true) && state.paused != Some(true) && state.restarting != Some(true) {
        return Ok(());
    }
    let status = state.status.map(|s| s.to_string()).unwrap_or_else(|| "not running".into());
    let exit = state.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
    Err(format!("nginx unreachable: container {container} is {status}{exit}; start it (docker start {container})"))
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// A page of the dashboard, with its Content-Security-Policy.
fn page(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::OK, content_type, body.to_string());
    let headers = response.headers_mut();
    headers.insert("content-security-policy", header::HeaderValue::from_static(crate::dashboard::CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", header::HeaderValue::from_static("no-referrer"));
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// The first line of a message, bounded: `/healthz` answers one line.
fn one_line(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.chars().count() > 300 {
        line.chars().take(300).collect::<String>() + "…"
    } else {
        line.to_string()
    }
}

/// `nginx-smart-proxy health`: GET /healthz on `STATUS_ADDR` (loopback for a wildcard address)
/// within `timeout`. `Ok(body)` on 200, else `Err(why)`, one line each.
pub async fn check_health(addr: StatusAddr, timeout: Duration) -> Result<String, String> {
    use http_body_util::BodyExt as _;
    let Some(target) = addr.connect_addr() else {
        return Err("the status endpoint is off (STATUS_ADDR=off); set STATUS_ADDR to ask it".into());
    };
    let url = format!("http://{target}/healthz");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let request = async {
        let response = client.get(url.parse().map_err(|e| format!("{e}"))?).await.map_err(|e| {
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            format!("{e}{cause}")
        })?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).trim().to_string()))
    };
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(format!("no answer from {url} within {timeout:?}")),
        Ok(Err(e)) => {
            Err(one_line(&format!("cannot reach {url}: {e} (is the agent running with STATUS_ADDR={addr}?)")))
        }
        Ok(Ok((StatusCode::OK, body))) => Ok(one_line(&body)),
        Ok(Ok((status, body))) => Err(one_line(&format!("{status}: {body}"))),
    }
}

/// Unix time in milliseconds (the insight windows are aligned to it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_addr_parses_and_connects_on_loopback() {
        assert_eq!("off".parse::<StatusAddr>(), Ok(StatusAddr::Off));
        assert_eq!(" OFF ".parse::<StatusAddr>(), Ok(StatusAddr::Off));
        let at = |s: &str| s.parse::<StatusAddr>().unwrap().connect_addr().unwrap().to_string();
        assert_eq!(at("127.0.0.1:9180"), "127.0.0.1:9180");
        assert_eq!(at("0.0.0.0:9180"), "127.0.0.1:9180");
        assert_eq!(at("[::]:9180"), "[::1]:9180");
        assert_eq!(at("10.1.2.3:80"), "10.1.2.3:80");
        for bad in ["", "9180", "localhost:9180", "127.0.0.1", "127.0.0.1:99999", "on"] {
            let e = bad.parse::<StatusAddr>().unwrap_err();
            assert!(e.starts_with("STATUS_ADDR must be ip:port"), "{bad}: {e}");
        }
    }

    fn server(docker: Option<bollard::Docker>, nginx: NginxProbe) -> Server {
        Server {
            state: Arc::default(),
            probe: Probe { docker_wanted: docker.is_some(), docker, nginx },
            certs_dir: PathBuf::from("/nonexistent"),
            renew_days: 30,
            local: true,
            guard: Guard::Open,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    #[tokio::test]
    async fn healthz_names_what_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file nobody listens on: connections are refused.
        let socket = dir.path().join("no-docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let docker =
            bollard::Docker::connect_with_unix(&socket.display().to_string(), 2, bollard::API_DEFAULT_VERSION).unwrap();
        let s = server(Some(docker.clone()), NginxProbe::Local);
        let reason = s.health().await.unwrap_err();
        assert!(reason.starts_with("Docker unreachable at "), "{reason}");
        assert!(!reason.contains('\n'), "{reason}");

        let s = server(None, NginxProbe::Companion { docker, container: "web-nginx".into() });
        let reason = s.health().await.unwrap_err();
        assert!(reason.starts_with("nginx unreachable: cannot inspect container web-nginx: "), "{reason}");

        let s = server(None, NginxProbe::Local);
        assert!(s.health().await.unwrap_err().starts_with("nginx not started yet"));
        s.state.nginx_started(Some(std::process::id()));
        assert_eq!(s.health().await.unwrap_err(), "no config applied yet (waiting for the first pass)");
        let table = RouteTable::default();
        s.state.applied(&table, &Ok(Applied::default()));
        assert_eq!(s.health().await, Ok(()));

        let get = |path: &str, method: Method| Request::builder().method(method).uri(path).body(()).unwrap();
        assert_eq!(s.handle(get("/healthz", Method::GET)).await.status(), StatusCode::OK);
        assert_eq!(s.handle(get("/routes", Method::HEAD)).await.status(), StatusCode::OK);
        assert_eq!(s.handle(get("/nope", Method::GET)).await.status(), StatusCode::NOT_FOUND);
        let post = s.handle(get("/healthz", Method::POST)).await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn the_token_guards_every_path_but_healthz_and_login_sets_the_cookie() {
        let mut s = server(None, NginxProbe::Local);
        s.state.nginx_started(Some(std::process::id()));
        s.state.applied(&RouteTable::default(), &Ok(Applied::default()));
        s.guard = Guard::new("0.0.0.0:9180".parse().unwrap(), Some(&crate::secret::Secret::new("tok")));
        let get = |path: &str, auth: Option<&str>| {
            let mut r = Request::builder().uri(path);
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            r.body(()).unwrap()
        };
        let body = |r: Response<Full<Bytes>>| async move {
            use http_body_util::BodyExt as _;
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        };
        assert_eq!(s.handle(get("/healthz", None)).await.status(), StatusCode::OK);
        let denied = s.handle(get("/routes", None)).await;
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(denied.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(body(denied).await.contains("Authorization: Bearer"));
        assert_eq!(s.handle(get("/events", Some("Bearer nope"))).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(s.handle(get("/events", Some("Bearer tok"))).await.status(), StatusCode::OK);
        let page = s.handle(get("/", None)).await;
        assert_eq!(page.status(), StatusCode::OK, "the login form");
        assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
        assert_eq!(s.handle(get("/login", Some("Bearer nope"))).await.status(), StatusCode::UNAUTHORIZED);
        let login = s.handle(get("/login", Some("Bearer tok"))).await;
        assert_eq!(login.status(), StatusCode::NO_CONTENT);
        let cookie = login.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();
        let with_cookie = Request::builder().uri("/certs").header(header::COOKIE, cookie).body(()).unwrap();
        let certs = s.handle(with_cookie).await;
        assert_eq!(certs.status(), StatusCode::OK);
        assert_eq!(body(certs).await.trim(), "{\n  \"certificates\": []\n}");

        s.guard = Guard::new("0.0.0.0:9180".parse().unwrap(), None);
        let refused = s.handle(get("/", Some("Bearer tok"))).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(body(refused).await.contains("STATUS_TOKEN is unset: set STATUS_TOKEN"));
        assert_eq!(s.handle(get("/healthz", None)).await.status(), StatusCode::OK);
    }

    #[test]
    fn applies_record_reloads_routes_added_removed_and_left_out() {
        let state = State::default();
        let kinds = |state: &State| -> Vec<(EventKind, String)> {
            state.events.list().into_iter().map(|e| (e.kind, e.text)).collect()
        };
        let changed = |dropped: Vec<Dropped>| Applied { changed: true, reloaded: true, dropped, ..Default::default() };
        let ab = RouteTable::build(vec![crate::sources::env::parse(Some("a.com,b.com"), None)]);
        state.applied(&ab, &Ok(changed(vec![])));
        assert_eq!(kinds(&state), [(EventKind::Reload, "config applied: 2 domains live, nginx reloaded".to_string())]);
        state.applied(&ab, &Ok(Applied::default()));
        assert_eq!(kinds(&state).len(), 1, "an unchanged pass records nothing");

        let bc = RouteTable::build(vec![crate::sources::env::parse(Some("b.com,c.com"), None)]);
        let c = DomainName::parse("c.com").unwrap();
        let left_out =
            Dropped { domain: c, sources: vec!["DOMAINS entry 2".into()], reason: "nginx: [emerg] x".into() };
        state.applied(&bc, &Ok(changed(vec![left_out])));
        let error = ApplyError::Write { path: "/x".into(), source: std::io::Error::other("disk full") };
        state.applied(&bc, &Err(error));
        let error = ApplyError::Write { path: "/x".into(), source: std::io::Error::other("disk full") };
        state.applied(&bc, &Err(error));
        assert_eq!(
            kinds(&state)[1..],
            [
                (EventKind::Reload, "config applied: 1 domain live, nginx reloaded".to_string()),
                (EventKind::RouteRemoved, "a.com no longer routed".to_string()),
                (EventKind::LeftOut, "c.com left out: nginx: [emerg] x".to_string()),
                (
                    EventKind::ApplyFailed,
                    "apply failed, nginx keeps its last good config: cannot write /x: disk full".to_string()
                ),
            ]
        );
    }

    #[test]
    fn one_line_keeps_the_first_line() {
        assert_eq!(one_line("\n first \nsecond"), "first");
        assert_eq!(one_line(&"x".repeat(400)).chars().count(), 301);
    }

    #[test]
    fn health_reports_the_apply_and_routes_hide_left_out_ones() {
        let state = State::default();
        let table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com,b.com"), None)]);
        let b = DomainName::parse("b.com").unwrap();
        let applied = Applied {
            changed: true,
            dropped: vec![Dropped {
                domain: b.clone(),
                sources: vec!["DOMAINS entry 2".into()],
                reason: "nginx: [emerg] no".into(),
            }],
            ..Default::default()
        };
        state.applied(&table, &Ok(applied));
        let Inner { apply, live, .. } = state.snapshot();
        assert_eq!(apply, Some(Ok(())));
        let live = live.unwrap();
        let json: serde_json::Value = serde_json::from_str(&routes_json(&live.table, &live.left_out, true)).unwrap();
        assert_eq!(json["routes"].as_array().unwrap().len(), 1, "{json}");
        assert_eq!(json["routes"][0]["domain"], "a.com");
        assert_eq!(json["left_out"][0]["domain"], "b.com");
        assert_eq!(json["left_out"][0]["sources"][0], "DOMAINS entry 2");

        // Unchanged bytes: the routes left out before stay left out.
        state.applied(&table, &Ok(Applied::default()));
        assert_eq!(state.snapshot().live.unwrap().left_out.len(), 1);

        let error = ApplyError::Write { path: "/x".into(), source: std::io::Error::other("disk full\nmore") };
        state.applied(&table, &Err(error));
        let Inner { apply, live, .. } = state.snapshot();
        assert_eq!(apply, Some(Err("cannot write /x: disk full".to_string())));
        assert!(live.is_some(), "the last good routes stay");
        assert_eq!(
            local_nginx(None).unwrap_err(),
            "nginx not started yet (it starts after the first complete list of containers)"
        );
        assert!(local_nginx(Some(std::process::id())).is_ok());
    }
}

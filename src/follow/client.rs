//! `nginx-smart-proxy follow`: the parent of a local nginx that serves the agent's config.
//!
//! Start: the last good bundle kept on disk (if any) is checked and applied, then nginx starts,
//! so a restarted follower serves before the agent answers. Then, forever: long-poll the agent
//! with the revision served; a bundle is verified (signature, then the seal, then the nonce of
//! this very request), its files written (keys 0600), its config tested with `nginx -t`, swapped
//! in and nginx reloaded, all through `apply::Applier` as the agent does; then it is kept on
//! disk. A bundle that fails any step is refused, logged, and reported on the next poll, and the
//! last good one stays. While the agent does not answer, nginx goes on serving and the poll is
//! retried with backoff (0.25 s doubling to 5 s).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use ring::rand::SecureRandom;
use tracing::{error, info, warn};

use super::bundle::{self, Bundle, Layout};
use super::seal::{hex, PROOF_HEADER, SIGNATURE_HEADER, TIME_HEADER};
use super::server::{now_ms, LONG_POLL, REVISION_HEADER};
use super::FollowSetup;
use crate::apply::nginx::LocalNginx;
use crate::apply::{Applier, Nginx};
use crate::backoff::Backoff;
use crate::render::RenderSettings;

/// What `follow` needs: the follower settings and this node's own nginx.
pub struct Options {
    pub setup: FollowSetup,
    /// This node's render settings (ports, paths, nginx version): its layout.
    pub render: RenderSettings,
    /// `NGINX_CONF`, `NGINX_BIN`, `NGINX_MAIN_CONF`, `CERTS_DIR`.
    pub conf: PathBuf,
    pub bin: PathBuf,
    pub main_conf: PathBuf,
    pub certs_dir: PathBuf,
    /// `STATUS_ADDR`: where `/healthz` answers (the image's `HEALTHCHECK`, `health`).
    pub health_addr: Option<std::net::SocketAddr>,
    /// `follow --beside`: nginx runs already (started by someone else, with `NGINX_MAIN_CONF`);
    /// the follower reloads it with `nginx -s reload` instead of starting it as its child.
    pub beside: bool,
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct Follower {
    setup: FollowSetup,
    url: reqwest::Url,
    layout: Layout,
    applier: Applier,
    state_file: PathBuf,
    client: Client,
    /// The revision served (0: none).
    revision: u64,
    /// The last revision refused and why, reported on the next poll.
    refused: Option<(u64, String)>,
    /// The nonce of the poll in flight: its answer must carry it.
    nonce: Option<String>,
    /// No answer from the agent yet: the first poll asks for the current revision whatever is
    /// served (the bundle kept on disk may have been rendered for other settings of this node).
    fresh: bool,
    /// The revision served, for `/healthz`.
    served: Arc<AtomicU64>,
    /// nginx is not our child: reloaded through its pid file (`nginx -s reload`).
    beside: bool,
}

/// Runs until `shutdown` resolves (then stops nginx gracefully) or nginx dies (an error).
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::apply::nginx::raise_open_files_limit();
    let url =
        options.setup.url.clone().ok_or_else(|| {
            anyhow::anyhow!("follow needs FOLLOW_URL (the agent's FOLLOW_ADDR, e.g. http://agent:9181)")
        })?;
    let layout = Layout::of(&options.render, &options.conf)?;
    let nginx =
        Nginx::Local(LocalNginx { bin: options.bin.clone(), main_conf: options.main_conf.clone(), child: None });
    let mut follower = Follower {
        url: url.join("bundle")?,
        layout,
        applier: Applier::new(nginx, options.conf.clone(), options.certs_dir.clone()),
        // In the certificate store, not beside NGINX_CONF: `nginx -t` copies that directory.
        state_file: crate::certs::layout::Layout::new(&options.certs_dir).follow_bundle(),
        client: client(),
        revision: 0,
        refused: None,
        nonce: None,
        fresh: true,
        served: Arc::default(),
        beside: options.beside,
        setup: options.setup,
    };
    if let Some(addr) = options.health_addr {
        serve_health(addr, follower.served.clone()).await;
    }
    info!(node = %follower.setup.node, agent = %url, conf = %options.conf.display(), "following");
    follower.restore().await;
    if !follower.beside {
        let Nginx::Local(local) = &mut follower.applier.nginx else { unreachable!("a follower's nginx is local") };
        local.start()?;
        info!("nginx started");
    }
    tokio::pin!(shutdown);
    let mut backoff: Option<Backoff> = None;
    loop {
        let nonce = new_nonce();
        follower.nonce = Some(nonce.clone());
        let query = follower.query(&nonce);
        let polled = tokio::select! {
            polled = poll(&follower.client, &query, &follower.setup) => polled,
            status = exited(&mut follower.applier.nginx) => {
                anyhow::bail!("nginx exited ({status}); exiting so that it is restarted");
            }
            () = &mut shutdown => break,
        };
        match polled {
            Ok(None) => {
                if backoff.take().is_some() {
                    info!("the agent answers again");
                }
            }
            Ok(Some((body, signature, hint))) => {
                if backoff.take().is_some() {
                    info!("the agent answers again");
                }
                follower.fresh = false;
                follower.received(&body, &signature, hint).await;
                if follower.refused.is_some() {
                    // The agent answers at once while it has nothing else: never spin on it.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = &mut shutdown => break,
                    }
                }
            }
            Err(e) => {
                let delay = match &mut backoff {
                    Some(b) => {
                        b.advance();
                        b.current()
                    }
                    None => {
                        warn!(
                            "cannot poll the agent: {e}; serving revision {} meanwhile, retrying with backoff",
                            follower.revision
                        );
                        backoff.insert(Backoff::new(Duration::from_millis(250), Duration::from_secs(5))).current()
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut shutdown => break,
                }
            }
        }
    }
    if let Nginx::Local(local) = &mut follower.applier.nginx {
        local.stop(Duration::from_secs(10)).await;
    }
    Ok(())
}

impl Follower {
    /// Applies the bundle kept on disk, if there is one that verifies.
    async fn restore(&mut self) {
        let Ok(saved) = std::fs::read(&self.state_file) else { return };
        let Some(split) = saved.iter().position(|b| *b == b'\n') else { return };
        let (signature, body) = (String::from_utf8_lossy(&saved[..split]).into_owned(), &saved[split + 1..]);
        match self.open(body, &signature, None) {
            Ok(bundle) => {
                let revision = bundle.revision;
                match self.apply(&bundle).await {
                    Ok(()) => info!(revision, "serving the last good bundle kept on disk"),
                    Err(e) => warn!(revision, "the bundle kept on disk does not apply ({e}); waiting for the agent"),
                }
            }
            Err(e) => warn!("the bundle kept on disk is refused ({e}); waiting for the agent"),
        }
    }

    /// A bundle from the agent: verified, applied, kept; or refused, logged, and reported.
    async fn received(&mut self, body: &[u8], signature: &str, hint: u64) {
        let nonce = self.nonce.take();
        let outcome = match self.open(body, signature, nonce.as_deref()) {
            Ok(bundle) => {
                let revision = bundle.revision;
                self.apply(&bundle).await.map(|()| revision).map_err(|e| (revision, e))
            }
            Err(e) => Err((hint, e)),
        };
        match outcome {
            Ok(_) => {
                let mut saved = signature.as_bytes().to_vec();
                saved.push(b'\n');
                saved.extend_from_slice(body);
                if let Some(dir) = self.state_file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                if let Err(e) = crate::fsutil::write_atomic(&self.state_file, &saved, 0o600) {
                    warn!("cannot keep the bundle at {}: {e}", self.state_file.display());
                }
                self.refused = None;
            }
            Err((revision, e)) => {
                error!(revision, serving = self.revision, "bundle refused, the last good one stays: {e}");
                self.refused = Some((revision, e));
            }
        }
    }

    fn open(&self, body: &[u8], signature: &str, nonce: Option<&str>) -> Result<Bundle, String> {
        let plain = self.setup.key.open(body, signature).map_err(|e| e.to_string())?;
        let bundle: Bundle = serde_json::from_slice(&plain).map_err(|e| format!("the bundle does not parse: {e}"))?;
        if nonce.is_some_and(|n| n != bundle.nonce) {
            return Err("the bundle answers another request (replayed)".into());
        }
        Ok(bundle)
    }

    /// Writes the files, then tests, swaps and reloads the config.
    async fn apply(&mut self, bundle: &Bundle) -> Result<(), String> {
        let written = bundle::write_files(&bundle.files, &self.layout.dirs())?;
        if written.contains(&bundle::FileKind::Cert) {
            // nginx reads certificates when it loads its config: new ones need a test and a
            // reload even when the config is the same (htpasswd files, pages and tokens are read
            // per request).
            self.applier.invalidate();
        }
        let written = written.len();
        let applied =
            self.applier.apply_rendered(&bundle.config).await.map_err(|e| e.to_string().replace('\n', " "))?;
        if self.beside && applied.changed {
            // Tested and swapped in; nginx is not our child: tell it through its pid file.
            if let Err(e) = self.applier.nginx.reload_running().await {
                self.applier.invalidate();
                return Err(format!("the config is in place but nginx did not reload: {e}").replace('\n', " "));
            }
        }
        let previous = std::mem::replace(&mut self.revision, bundle.revision);
        self.served.store(bundle.revision, Ordering::Relaxed);
        if applied.changed || written > 0 {
            info!(
                revision = bundle.revision,
                previous,
                files_written = written,
                test_ms = applied.timings.test.as_millis() as u64,
                reload_ms = applied.timings.reload.as_millis() as u64,
                "{}",
                if applied.reloaded { "bundle applied and nginx reloaded" } else { "bundle applied" }
            );
        }
        Ok(())
    }
}

/// Resolves when our nginx child exits (with how); never beside an nginx we did not start.
async fn exited(nginx: &mut Nginx) -> String {
    match nginx {
        Nginx::Local(LocalNginx { child: Some(child), .. }) => {
            child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string())
        }
        _ => std::future::pending().await,
    }
}

/// One long-poll of `url` (with its query): `Ok(None)` when no new revision came in time;
/// `Ok(Some((body, signature, revision hint)))` for a bundle.
async fn poll(
    client: &Client,
    url: &reqwest::Url,
    setup: &FollowSetup,
) -> Result<Option<(Vec<u8>, String, u64)>, String> {
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let time = now_ms() / 1000;
    let request = http::Request::get(url.as_str())
        .header(TIME_HEADER, time.to_string())
        .header(PROOF_HEADER, setup.key.prove(&path_and_query, time))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(LONG_POLL + Duration::from_secs(15), client.request(request))
        .await
        .map_err(|_| "no answer within the long-poll time".to_string())?
        .map_err(|e| connect_error(&e))?;
    let status = response.status();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let signature = header(SIGNATURE_HEADER).unwrap_or_default();
    let hint = header(REVISION_HEADER).and_then(|r| r.parse().ok()).unwrap_or(0);
    let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .map_err(|_| "the bundle did not arrive within 60 s".to_string())?
        .map_err(|e| format!("reading the bundle: {e}"))?
        .to_bytes();
    match status {
        http::StatusCode::OK => Ok(Some((body.to_vec(), signature, hint))),
        http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED => Ok(None),
        other => Err(format!("the agent answers {other}: {}", super::one_line(&String::from_utf8_lossy(&body), 300))),
    }
}

/// The HTTP client of the polls. A connection that does not open within [`CONNECT_TIMEOUT`] is
/// given up, and the next try (after the backoff) resolves the agent's name again: an agent's old
/// address, or a SYN lost on an overlay network not yet ready on a new node, no longer holds a poll
/// for the kernel's SYN retransmissions (a minute and more).
fn client() -> Client {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn connect_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random numbers");
    hex(&bytes)
}

impl Follower {
    /// The poll's URL: the revision served, the one refused and why, this node, the nonce, and
    /// this node's layout.
    fn query(&self, nonce: &str) -> reqwest::Url {
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("after", &if self.fresh { 0 } else { self.revision }.to_string());
            q.append_pair("node", &self.setup.node);
            q.append_pair("nonce", nonce);
            if let Some((revision, error)) = &self.refused {
                q.append_pair("refused", &revision.to_string());
                q.append_pair("error", &super::one_line(error, 300));
            }
            for (name, value) in self.layout.to_query() {
                q.append_pair(name, &value);
            }
        }
        url
    }
}

/// `/healthz` on `addr` (loopback by default, like the agent's): `200 ok` once a bundle is
/// served (nginx runs: `follow` exits when it dies), else `503` saying it waits for the agent.
/// A follower that cannot reach the agent but serves its last good bundle is healthy: it serves.
/// A failed bind is logged and the follower goes on without it.
async fn serve_health(addr: std::net::SocketAddr, served: Arc<AtomicU64>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on STATUS_ADDR {addr}: {e}; /healthz is unavailable (set STATUS_ADDR to a free ip:port, or off)");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let served = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let revision = served.load(Ordering::Relaxed);
                    let (status, body) = match (req.uri().path(), revision) {
                        ("/healthz", 0) => (503, "no bundle applied yet: waiting for the agent\n".to_string()),
                        ("/healthz", r) => (200, format!("ok: serving revision {r}\n")),
                        _ => (404, "not found; a follower answers /healthz only\n".to_string()),
                    };
                    let mut response = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
                    *response.status_mut() = http::StatusCode::from_u16(status).expect("a status");
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
            });
        }
    });
}

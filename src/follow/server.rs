//! The agent's side: the current revision ([`Publisher`]) and the follower endpoint on
//! `FOLLOW_ADDR`, `GET /bundle?after=<rev>&node=<name>&nonce=<hex>&<layout>`.
//!
//! A poll answers at once when the current revision differs from the one the follower serves
//! (`after`; after an agent restart the revision may even be lower) and from the one it refused
//! (`refused`), else waits up to [`LONG_POLL`] for a new one and answers 204. Every request proves
//! the shared key ([`FollowerKey::check_proof`]); every bundle is sealed and signed. Each poll
//! records the follower: its node name, the revision it serves, the error it reports, when it was
//! last seen (`/followers` on the status endpoint).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::bundle::{self, BundleFile, BundleRef, Layout};
use super::seal::{FollowerKey, PROOF_HEADER, SIGNATURE_HEADER, TIME_HEADER};
use crate::render::{RenderSettings, Renderer};
use crate::routes::RouteTable;

/// How long a poll waits for a new revision before it answers 204.
pub const LONG_POLL: Duration = Duration::from_secs(30);
/// The header that carries a bundle's revision (also outside the seal, as a hint only).
pub const REVISION_HEADER: &str = "x-smart-proxy-revision";
const MAX_CONNECTIONS: usize = 1024;

/// What the agent made live, to render followers' bundles from.
pub struct Source {
    /// The live table: without the routes nginx refused.
    pub table: RouteTable,
    pub renderer: Renderer,
    pub settings: RenderSettings,
    /// The bytes the agent's own nginx runs (for the digest).
    pub config: String,
}

/// The current revision and the followers seen. Shared by the controller (which publishes),
/// the endpoint and the status endpoint.
pub struct Publisher {
    key: FollowerKey,
    current: Mutex<Current>,
    revision: watch::Sender<u64>,
    followers: Mutex<BTreeMap<String, Follower>>,
    /// The last refusal logged per peer address: a follower with the wrong key polls on, and
    /// the log says so once, not on every poll.
    refusals: Mutex<HashMap<std::net::IpAddr, String>>,
}

#[derive(Default)]
struct Current {
    revision: u64,
    digest: String,
    source: Option<Arc<Source>>,
    files: Arc<Vec<BundleFile>>,
    /// The config rendered per follower layout, for the current revision.
    rendered: HashMap<String, Arc<Result<String, String>>>,
}

/// A follower as its last poll showed it.
#[derive(Debug, Clone, Serialize)]
pub struct Follower {
    pub node: String,
    /// The revision it serves (0: none yet).
    pub revision: u64,
    pub last_seen_ms: u64,
    /// The last bundle it refused and why, until it applies one.
    pub error: Option<String>,
    pub address: String,
}

impl Publisher {
    pub fn new(key: FollowerKey) -> Publisher {
        Publisher {
            key,
            current: Mutex::default(),
            revision: watch::channel(0).0,
            followers: Mutex::default(),
            refusals: Mutex::default(),
        }
    }

    /// Logs a refused request once per peer and reason (figures aside: a clock skew grows).
    fn refused(&self, peer: SocketAddr, reason: &str) {
        let kind: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
        let mut refusals = self.refusals.lock().expect("follow lock");
        if refusals.get(&peer.ip()).is_some_and(|last| *last == kind) {
            return;
        }
        if refusals.len() >= 1000 {
            refusals.clear();
        }
        refusals.insert(peer.ip(), kind);
        warn!(peer = %peer.ip(), "follower request refused: {reason}");
    }

    /// Takes what the agent made live; the revision moves on when its contents (the agent's
    /// config and the files read now) differ from the current one's.
    pub fn publish(&self, source: Source) {
        let files = bundle::collect(&source.table, &source.settings);
        self.update(Arc::new(source), files);
    }

    /// Reads the files again (HTTP-01 tokens came or went, a users-file changed): a new revision
    /// when they differ.
    pub fn refresh(&self) {
        let source = self.current.lock().expect("follow lock").source.clone();
        if let Some(source) = source {
            let files = bundle::collect(&source.table, &source.settings);
            self.update(source, files);
        }
    }

    fn update(&self, source: Arc<Source>, files: Vec<BundleFile>) {
        let digest = bundle::digest(&source.config, &files);
        let mut current = self.current.lock().expect("follow lock");
        if current.digest == digest {
            return;
        }
        // Monotonic across restarts too: at least the time in ms.
        current.revision = (current.revision + 1).max(now_ms());
        current.digest = digest;
        current.source = Some(source);
        current.files = Arc::new(files);
        current.rendered.clear();
        let revision = current.revision;
        drop(current);
        self.revision.send_replace(revision);
    }

    /// The current revision (0 before the first apply).
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// The followers seen within [`FORGET_MS`], by node name (one not seen longer, a node that
    /// was removed or renamed, is forgotten, and logged once).
    pub fn followers(&self) -> Vec<Follower> {
        let mut followers = self.followers.lock().expect("follow lock");
        forget_gone(&mut followers, now_ms());
        followers.values().cloned().collect()
    }

    /// `/followers` on the status endpoint: the current revision and each follower, with its age.
    pub fn followers_json(&self) -> String {
        #[derive(Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            follower: &'a Follower,
            current: bool,
            age_s: u64,
        }
        let now = now_ms();
        let revision = self.revision();
        let followers = self.followers();
        let rows: Vec<Row> = followers
            .iter()
            .map(|f| Row {
                follower: f,
                current: f.revision == revision,
                age_s: now.saturating_sub(f.last_seen_ms) / 1000,
            })
            .collect();
        serde_json::json!({ "revision": revision, "followers": rows }).to_string() + "\n"
    }

    /// The bundle of the current revision for `layout`, sealed: (body, signature, revision);
    /// `None` before the first apply.
    pub async fn sealed(&self, layout: &Layout, nonce: &str) -> Option<Result<(Vec<u8>, String, u64), String>> {
        let (revision, digest, source, files, cached) = {
            let current = self.current.lock().expect("follow lock");
            let source = current.source.clone()?;
            let cached = current.rendered.get(&layout.key()).cloned();
            (current.revision, current.digest.clone(), source, current.files.clone(), cached)
        };
        let config = match cached {
            Some(config) => config,
            None => {
                let (source2, layout2) = (source.clone(), layout.clone());
                let rendered = tokio::task::spawn_blocking(move || {
                    let settings = layout2.settings(&source2.settings).map_err(|e| e.to_string())?;
                    source2.renderer.render(&source2.table, &settings).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("rendering failed: {e}")));
                let rendered = Arc::new(rendered);
                let mut current = self.current.lock().expect("follow lock");
                if current.revision == revision {
                    current.rendered.insert(layout.key(), rendered.clone());
                }
                rendered
            }
        };
        let config = match config.as_ref() {
            Ok(config) => config,
            Err(e) => return Some(Err(e.clone())),
        };
        let plain = serde_json::to_vec(&BundleRef { revision, digest: &digest, nonce, config, files: &files })
            .expect("a bundle serializes");
        let (body, signature) = self.key.seal(&plain);
        Some(Ok((body, signature, revision)))
    }

    fn seen(&self, poll: &Poll, address: String) {
        let mut followers = self.followers.lock().expect("follow lock");
        let before = followers.get(&poll.node).map(|f| (f.revision, f.error.clone()));
        if before.is_none() {
            info!(node = %poll.node, revision = poll.after, "follower seen for the first time");
        }
        if let (Some(error), Some((_, last))) = (&poll.error, &before) {
            if last.as_ref() != Some(error) {
                warn!(node = %poll.node, "follower refused a bundle: {error}");
            }
        }
        followers.insert(
            poll.node.clone(),
            Follower {
                node: poll.node.clone(),
                revision: poll.after,
                last_seen_ms: now_ms(),
                error: poll.error.clone(),
                address,
            },
        );
    }
}

/// A follower not seen for this long is forgotten: `/followers`, the metrics and the dashboard
/// stop showing it. A live follower polls at least every [`LONG_POLL`].
const FORGET_MS: u64 = 24 * 3600 * 1000;

fn forget_gone(followers: &mut BTreeMap<String, Follower>, now: u64) {
    followers.retain(|node, f| {
        let keep = now.saturating_sub(f.last_seen_ms) < FORGET_MS;
        if !keep {
            info!(node = %node, revision = f.revision, "follower not seen for 24 h: forgotten");
        }
        keep
    });
}

/// Followers seen within this long count for [`TokenSync`]: one gone longer does not delay
/// certificate orders.
const RECENT_MS: u64 = 60_000;

/// HTTP-01 through followers: an order tells the CA only once every follower seen lately serves
/// a revision that holds the token (or after the timeout, with a warning naming those behind).
impl crate::certs::manager::TokenSync for Publisher {
    fn ready(&self, timeout: Duration) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            // The token was just written: a revision with it, without waiting for the watcher.
            self.refresh();
            let wanted = self.revision();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let now = now_ms();
                let behind: Vec<String> = self
                    .followers()
                    .into_iter()
                    .filter(|f| now.saturating_sub(f.last_seen_ms) < RECENT_MS && f.revision < wanted)
                    .map(|f| f.node)
                    .collect();
                if behind.is_empty() {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    warn!(
                        followers = %behind.join(","),
                        "followers do not serve the new HTTP-01 token after {timeout:?}; telling the CA anyway"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

/// A poll's parameters, checked.
#[derive(Debug)]
struct Poll {
    after: u64,
    refused: Option<u64>,
    node: String,
    nonce: String,
    error: Option<String>,
    layout: Layout,
}

impl Poll {
    fn parse(path_and_query: &str) -> Result<Poll, String> {
        let url = reqwest::Url::parse(&format!("http://follower{path_and_query}")).map_err(|e| e.to_string())?;
        let pairs: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        let get = |name: &str| pairs.get(name).cloned();
        let node = get("node").ok_or("the parameter node is missing")?;
        super::check_node_name(&node)?;
        let nonce = get("nonce").unwrap_or_default();
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("nonce must be 16 to 64 hex digits".into());
        }
        let number = |name: &str| -> Result<Option<u64>, String> {
            get(name).map(|v| v.parse().map_err(|_| format!("{name} must be a revision number"))).transpose()
        };
        Ok(Poll {
            after: number("after")?.unwrap_or(0),
            refused: number("refused")?,
            node,
            nonce,
            error: get("error").map(|e| super::one_line(&e, 300)).filter(|e| !e.is_empty()),
            layout: Layout::from_query(get)?,
        })
    }
}

/// Listens on `addr` and serves polls until the process ends; a failed bind is logged (the
/// agent goes on routing without followers).
pub async fn start(addr: SocketAddr, publisher: Arc<Publisher>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on FOLLOW_ADDR {addr}: {e}; followers cannot reach this agent (set FOLLOW_ADDR to a free ip:port)");
            return;
        }
    };
    info!("follower endpoint on http://{addr}/bundle");
    tokio::spawn(serve(listener, publisher));
}

async fn serve(listener: tokio::net::TcpListener, publisher: Arc<Publisher>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let publisher = publisher.clone();
                async move { Ok::<_, Infallible>(handle(&publisher, req, peer).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(io, service);
            let _ = tokio::time::timeout(LONG_POLL + Duration::from_secs(60), conn).await;
            drop(slot);
        });
    }
}

async fn handle<B>(publisher: &Publisher, req: Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if req.uri().path() != "/bundle" {
        return text(StatusCode::NOT_FOUND, "not found; followers poll /bundle\n");
    }
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/bundle");
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let time: u64 = header(TIME_HEADER).parse().unwrap_or(0);
    if let Err(e) = publisher.key.check_proof(path_and_query, time, header(PROOF_HEADER), now_ms() / 1000) {
        publisher.refused(peer, &e.to_string());
        return text(StatusCode::UNAUTHORIZED, &format!("{e}\n"));
    }
    let poll = match Poll::parse(path_and_query) {
        Ok(poll) => poll,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad poll: {e}\n")),
    };
    publisher.refusals.lock().expect("follow lock").remove(&peer.ip());
    publisher.seen(&poll, peer.to_string());
    let mut revisions = publisher.revision.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        let current = *revisions.borrow_and_update();
        if current != 0 && current != poll.after && Some(current) != poll.refused {
            break;
        }
        match tokio::time::timeout_at(deadline, revisions.changed()).await {
            Ok(Ok(())) => continue,
            _ => return text(StatusCode::NO_CONTENT, ""),
        }
    }
    match publisher.sealed(&poll.layout, &poll.nonce).await {
        None => text(StatusCode::NO_CONTENT, ""),
        Some(Err(e)) => {
            error!(node = %poll.node, "cannot render the bundle for this follower's layout: {e}");
            text(StatusCode::UNPROCESSABLE_ENTITY, &format!("cannot render the bundle for this follower: {e}\n"))
        }
        Some(Ok((body, signature, revision))) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
            headers.insert(SIGNATURE_HEADER, header::HeaderValue::from_str(&signature).expect("hex"));
            headers.insert(REVISION_HEADER, header::HeaderValue::from(revision));
            response
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Watches the webroot's HTTP-01 directory (created if missing) and re-reads the bundle's files
/// when a token comes or goes, so that followers answer a challenge that reaches them. Kept alive
/// by the caller; `None` (with a warning) when the directory cannot be watched.
pub fn watch_challenges(webroot: &std::path::Path, publisher: Arc<Publisher>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = webroot.join(bundle::CHALLENGE_DIR);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!("cannot create {} ({e}); followers get HTTP-01 tokens only with the next apply", dir.display());
        return None;
    }
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            publisher.refresh();
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch {} ({e}); followers get HTTP-01 tokens only with the next apply", dir.display());
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!("cannot watch {} ({e}); followers get HTTP-01 tokens only with the next apply", dir.display());
        return None;
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::bundle::Bundle;
    use crate::render::{ConfigPath, NginxVersion};

    const RAW: &[u8] = b"unit-test-key-0123456789abcdef-0123456789";

    fn settings(root: &str) -> RenderSettings {
        let p = |s: &str| ConfigPath::parse("TEST", std::path::Path::new(&format!("{root}/{s}"))).unwrap();
        RenderSettings {
            local: true,
            http_port: 80,
            https_port: 443,
            certs_dir: p("certs"),
            acme_webroot: p("webroot"),
            log_dir: p("logs"),
            error_logs_max: 1000,
            auth_dir: p("conf/smart-proxy-htpasswd"),
            insight_log: Some(p("conf/smart-proxy-insight.log")),
            access_log_files: true,
            backend_ca: crate::render::ConfigPath::parse("BACKEND_CA", std::path::Path::new(crate::render::BACKEND_CA))
                .unwrap(),
            insight_from_access_logs: false,
            auth_cache: None,
            nginx_version: NginxVersion::ASSUMED,
            resolver: vec!["127.0.0.11".parse().unwrap()],
            ipv6: false,
            real_ip: None,
            error_pages: Default::default(),
        }
    }

    fn publisher_with(domains: &str) -> Publisher {
        let publisher = Publisher::new(FollowerKey::from_bytes(RAW));
        publish(&publisher, domains);
        publisher
    }

    fn publish(publisher: &Publisher, domains: &str) {
        let table = RouteTable::build(vec![crate::sources::env::parse(Some(domains), Some("app:127.0.0.1:8080"))]);
        let renderer = Renderer::builtin();
        let settings = settings("/agent");
        let config = renderer.render(&table, &settings).unwrap();
        publisher.publish(Source { table, renderer, settings, config });
    }

    /// A signed poll by node `node` serving `after`, for a follower laid out under /f on port 8080.
    fn poll(key: &[u8], node: &str, after: u64, time: u64) -> Request<()> {
        let mut mine = settings("/f");
        mine.http_port = 8080;
        let layout = Layout::of(&mine, std::path::Path::new("/f/conf/default.conf")).unwrap();
        let mut url = reqwest::Url::parse("http://agent/bundle").unwrap();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("after", &after.to_string());
            q.append_pair("node", node);
            q.append_pair("nonce", "00112233445566778899aabbccddeeff");
            for (k, v) in layout.to_query() {
                q.append_pair(k, &v);
            }
        }
        let path_and_query = format!("{}?{}", url.path(), url.query().unwrap());
        let proof = FollowerKey::from_bytes(key).prove(&path_and_query, time);
        Request::get(path_and_query).header(TIME_HEADER, time.to_string()).header(PROOF_HEADER, proof).body(()).unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    async fn body(response: Response<Full<Bytes>>) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        response.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_poll_gets_the_bundle_rendered_for_its_layout_sealed_and_signed() {
        let publisher = publisher_with("a.test:app");
        let revision = publisher.revision();
        assert!(revision > 1_600_000_000_000, "revisions start at the time in ms: {revision}");
        let response = handle(&publisher, poll(RAW, "node-1", 0, now_ms() / 1000), peer()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let signature = response.headers()[SIGNATURE_HEADER].to_str().unwrap().to_string();
        let sealed = body(response).await;
        let plain = FollowerKey::from_bytes(RAW).open(&sealed, &signature).unwrap();
        let bundle: Bundle = serde_json::from_slice(&plain).unwrap();
        assert_eq!(bundle.revision, revision);
        assert_eq!(bundle.nonce, "00112233445566778899aabbccddeeff");
        assert!(bundle.config.contains("a.test"), "{}", bundle.config);
        assert!(bundle.config.contains("listen 8080"), "rendered for the follower's port: {}", bundle.config);
        assert!(bundle.config.contains("/f/logs/") && !bundle.config.contains("/agent/"), "{}", bundle.config);
        assert!(!bundle.config.contains("insight"), "no insight file on a follower: {}", bundle.config);
        // The follower is recorded, with the revision it serves.
        let followers = publisher.followers();
        assert_eq!((followers[0].node.as_str(), followers[0].revision), ("node-1", 0));
        assert!(publisher.followers_json().contains("\"current\":false"));
    }

    #[tokio::test]
    async fn a_follower_not_seen_for_a_day_is_forgotten() {
        let publisher = publisher_with("a.test:app");
        let now = now_ms() / 1000;
        for node in ["gone", "here"] {
            assert_eq!(handle(&publisher, poll(RAW, node, 0, now), peer()).await.status(), StatusCode::OK);
        }
        publisher.followers.lock().unwrap().get_mut("gone").unwrap().last_seen_ms -= FORGET_MS;
        let nodes: Vec<String> = publisher.followers().into_iter().map(|f| f.node).collect();
        assert_eq!(nodes, ["here"]);
        assert!(!publisher.followers_json().contains("gone"));
    }

    #[tokio::test]
    async fn without_the_key_or_with_a_stale_clock_a_poll_is_refused() {
        let publisher = publisher_with("a.test:app");
        let now = now_ms() / 1000;
        let wrong = handle(&publisher, poll(b"another-key-0123456789abcdef-0123456789", "n", 0, now), peer()).await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        let text = String::from_utf8(body(wrong).await).unwrap();
        assert!(text.contains("proof of the key does not verify"), "{text}");
        let stale = handle(&publisher, poll(RAW, "n", 0, now - 600), peer()).await;
        assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
        let bare = Request::get("/bundle?after=0&node=n").body(()).unwrap();
        assert_eq!(handle(&publisher, bare, peer()).await.status(), StatusCode::UNAUTHORIZED);
        assert!(publisher.followers().is_empty(), "refused polls record nothing");
        let bad_node = handle(&publisher, poll(RAW, "no spaces", 0, now), peer()).await;
        assert_eq!(bad_node.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_waits_for_a_newer_revision_and_answers_204_after_the_long_poll() {
        let publisher = Arc::new(publisher_with("a.test:app"));
        let revision = publisher.revision();
        // The time in the proof is the wall clock's; the wait is tokio's paused clock.
        let now = now_ms() / 1000;
        let started = tokio::time::Instant::now();
        let response = handle(&publisher, poll(RAW, "n", revision, now), peer()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(started.elapsed(), LONG_POLL);
        // Same contents again: no new revision. New contents: the waiting poll answers at once.
        publish(&publisher, "a.test:app");
        assert_eq!(publisher.revision(), revision);
        let waiting = tokio::spawn({
            let publisher = publisher.clone();
            async move { handle(&publisher, poll(RAW, "n", revision, now), peer()).await }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        publish(&publisher, "a.test:app,b.test:app");
        let response = waiting.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(publisher.revision() > revision);
        assert!(started.elapsed() < LONG_POLL + Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_waits_until_the_followers_serve_the_token_or_times_out() {
        use crate::certs::manager::TokenSync;
        let publisher = Arc::new(publisher_with("a.test:app"));
        // No follower: nothing to wait for.
        let started = tokio::time::Instant::now();
        publisher.ready(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A follower behind: the order waits for it, up to the timeout.
        let now = now_ms() / 1000;
        let _ = handle(&publisher, poll(RAW, "slow", 1, now), peer()).await;
        let started = tokio::time::Instant::now();
        publisher.ready(Duration::from_secs(5)).await;
        assert!(started.elapsed() >= Duration::from_secs(5));
        // It reports the current revision meanwhile: the order goes on at once.
        let current = publisher.revision();
        let waiting = tokio::spawn({
            let publisher = publisher.clone();
            async move {
                let started = tokio::time::Instant::now();
                publisher.ready(Duration::from_secs(5)).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = publisher.clone();
        let poller = tokio::spawn(async move { handle(&p, poll(RAW, "slow", current, now), peer()).await });
        let waited = waiting.await.unwrap();
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        poller.abort();
    }
}

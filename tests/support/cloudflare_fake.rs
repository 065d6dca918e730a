//! A fake Cloudflare API v4 on 127.0.0.1, as strict as the real one is documented to be: exact
//! auth headers, JSON content type on writes, validated record fields, the real envelope with
//! `result_info` on lists and `page`/`per_page` pagination. Tests can make it fail the next N
//! requests (5xx, 429 with `Retry-After`, a slow answer), read every request it saw (without the
//! secret header values), and hook TXT changes (e.g. to mirror them into pebble-challtestsrv).
//!
//! Error codes follow Cloudflare's where they are known (9109 invalid token, 9103 unknown key,
//! 6003 invalid headers, 10000 authentication error, 81044 unknown record, 81058 duplicate, 971
//! throttled, 7003/7000 no route); the validation errors use 1004 "DNS Validation Error" with a
//! message naming the field.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Path prefix of the API, as on api.cloudflare.com.
pub const API_PREFIX: &str = "/client/v4";

/// Called after every change of the TXT records at a name: first with `None` (clear the name),
/// then with `Some(value)` for each value now present there (unquoted). Awaited before the API
/// answers, so a mirror is up to date when the client sees the record.
pub type TxtHook = Arc<dyn Fn(String, Option<String>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a set of credentials may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Zone:Read and Zone:DNS:Edit on every zone.
    Edit,
    /// Zone:Read and DNS:Read only: writes get 403 with code 10000.
    ReadOnly,
}

/// A failure to inject into the next requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// This 5xx status with an envelope carrying an internal error.
    Server(u16),
    /// 502 with an HTML page, as Cloudflare's edge answers when the API behind it is down.
    HtmlBadGateway,
    /// 429 with code 971, and `Retry-After: <seconds>` when given.
    RateLimited { retry_after: Option<u64> },
    /// Waits this long, then answers normally (for timeouts).
    Delay(Duration),
}

/// Which auth headers a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthSeen {
    None,
    Bearer,
    Key,
    Both,
}

/// One request as the fake saw it. `headers` leaves out `Authorization` and `X-Auth-Key`: only
/// `auth` (which kind was present) and `authorized` (whether it was accepted) are kept.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub auth: AuthSeen,
    pub authorized: bool,
    pub body: String,
    pub status: u16,
}

impl RecordedRequest {
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeZone {
    pub id: String,
    pub name: String,
    pub status: String,
}

/// A record as stored; `content` is exactly what the client sent (TXT usually quoted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRecord {
    pub id: String,
    pub zone_id: String,
    pub record_type: String,
    pub name: String,
    pub content: String,
    pub ttl: u64,
    pub proxied: bool,
}

struct State {
    tokens: Vec<(String, Access)>,
    keys: Vec<(String, String, Access)>,
    zones: Vec<FakeZone>,
    records: Vec<FakeRecord>,
    next_id: u64,
    failures: VecDeque<Failure>,
    requests: Vec<RecordedRequest>,
    records_max_per_page: u64,
}

pub struct FakeCloudflareBuilder {
    tokens: Vec<(String, Access)>,
    keys: Vec<(String, String, Access)>,
    zones: Vec<FakeZone>,
    records_max_per_page: u64,
    hook: Option<TxtHook>,
}

impl FakeCloudflareBuilder {
    /// Accepts `Authorization: Bearer <token>` with DNS edit rights.
    pub fn token(mut self, token: &str) -> Self {
        self.tokens.push((token.to_string(), Access::Edit));
        self
    }

    /// Accepts the token for reads; writes are refused with 403 / 10000.
    pub fn read_only_token(mut self, token: &str) -> Self {
        self.tokens.push((token.to_string(), Access::ReadOnly));
        self
    }

    /// Accepts `X-Auth-Email: <email>` with `X-Auth-Key: <key>`.
    pub fn global_key(mut self, email: &str, key: &str) -> Self {
        self.keys.push((email.to_string(), key.to_string(), Access::Edit));
        self
    }

    /// An active zone.
    pub fn zone(self, id: &str, name: &str) -> Self {
        self.zone_with_status(id, name, "active")
    }

    pub fn zone_with_status(mut self, id: &str, name: &str, status: &str) -> Self {
        self.zones.push(FakeZone { id: id.into(), name: name.into(), status: status.into() });
        self
    }

    /// The largest `per_page` the records listing honours (larger asks are clamped, as the real
    /// API clamps); default 5000.
    pub fn max_per_page(mut self, n: u64) -> Self {
        self.records_max_per_page = n;
        self
    }

    /// See [`TxtHook`].
    pub fn on_txt_change<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(String, Option<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |name, value| Box::pin(hook(name, value))));
        self
    }

    /// Starts serving on a free port of 127.0.0.1 (in the current tokio runtime).
    pub async fn start(self) -> FakeCloudflare {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Cloudflare API");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            tokens: self.tokens,
            keys: self.keys,
            zones: self.zones,
            records: Vec::new(),
            next_id: 1,
            failures: VecDeque::new(),
            requests: Vec::new(),
            records_max_per_page: self.records_max_per_page,
        }));
        let server = Server { state: state.clone(), hook: self.hook };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeCloudflare { addr, state, task }
    }
}

/// The running fake; stops serving when dropped.
pub struct FakeCloudflare {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCloudflare {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCloudflare {
    pub fn builder() -> FakeCloudflareBuilder {
        FakeCloudflareBuilder {
            tokens: Vec::new(),
            keys: Vec::new(),
            zones: Vec::new(),
            records_max_per_page: 5000,
            hook: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL to give the client: `http://127.0.0.1:<port>/client/v4`.
    pub fn base_url(&self) -> String {
        format!("http://{}{API_PREFIX}", self.addr)
    }

    /// The next `n` requests get `failure` (before auth is checked, like an edge failure).
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut state = self.state.lock().unwrap();
        state.failures.extend(std::iter::repeat_n(failure, n));
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// Every record in every zone, in creation order.
    pub fn records(&self) -> Vec<FakeRecord> {
        self.state.lock().unwrap().records.clone()
    }

    /// The unquoted values of the TXT records named `name`.
    pub fn txt_values(&self, name: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        txt_values_at(&state.records, name)
    }

    /// Adds a record directly (no validation, no hook), e.g. to fill a zone for pagination.
    pub fn add_record(&self, zone_id: &str, record_type: &str, name: &str, content: &str) -> String {
        let mut state = self.state.lock().unwrap();
        let id = new_id(&mut state);
        state.records.push(FakeRecord {
            id: id.clone(),
            zone_id: zone_id.into(),
            record_type: record_type.into(),
            name: name.into(),
            content: content.into(),
            ttl: 1,
            proxied: false,
        });
        id
    }
}

#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    hook: Option<TxtHook>,
}

/// An answer before it is encoded; `txt_changed` names a TXT name whose records changed.
struct Answer {
    status: StatusCode,
    body: Value,
    headers: Vec<(&'static str, String)>,
    html: Option<&'static str>,
    txt_changed: Option<String>,
}

impl Answer {
    fn ok(result: Value) -> Self {
        Answer::json(StatusCode::OK, json!({ "success": true, "errors": [], "messages": [], "result": result }))
    }

    fn list(result: Vec<Value>, page: u64, per_page: u64, total: u64) -> Self {
        let count = result.len();
        let total_pages = total.div_ceil(per_page.max(1));
        Answer::json(
            StatusCode::OK,
            json!({
                "success": true, "errors": [], "messages": [], "result": result,
                "result_info": { "page": page, "per_page": per_page, "count": count, "total_count": total, "total_pages": total_pages }
            }),
        )
    }

    fn error(status: u16, errors: Value) -> Self {
        Answer::json(
            StatusCode::from_u16(status).unwrap(),
            json!({ "success": false, "errors": errors, "messages": [], "result": null }),
        )
    }

    fn invalid(message: &str) -> Self {
        Answer::error(400, json!([{ "code": 1004, "message": format!("DNS Validation Error: {message}") }]))
    }

    fn json(status: StatusCode, body: Value) -> Self {
        Answer { status, body, headers: Vec::new(), html: None, txt_changed: None }
    }
}

fn new_id(state: &mut State) -> String {
    state.next_id += 1;
    format!("{:032x}", 0x3c1f_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(state.next_id))
}

fn txt_values_at(records: &[FakeRecord], name: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.record_type == "TXT" && r.name.eq_ignore_ascii_case(name))
        .map(|r| unquote(&r.content))
        .collect()
}

/// `"a" "b"` → `ab`, `\"` → `"`; unquoted content is kept as it is.
fn unquote(content: &str) -> String {
    let content = content.trim();
    if !content.starts_with('"') {
        return content.to_string();
    }
    let mut out = String::new();
    let mut inside = false;
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        match (inside, c) {
            (false, '"') => inside = true,
            (false, _) => {}
            (true, '"') => inside = false,
            (true, '\\') => out.extend(chars.next()),
            (true, c) => out.push(c),
        }
    }
    out
}

fn zone_json(zone: &FakeZone) -> Value {
    json!({
        "id": zone.id, "name": zone.name, "status": zone.status, "paused": false, "type": "full",
        "development_mode": 0, "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "original_name_servers": null, "original_registrar": null,
        "created_on": "2024-01-01T00:00:00.000000Z", "modified_on": "2024-01-01T00:00:00.000000Z",
        "activated_on": "2024-01-01T00:00:00.000000Z",
        "meta": { "step": 2, "phishing_detected": false }, "owner": { "id": null, "type": "user", "email": null },
        "account": { "id": "0123456789abcdef0123456789abcdef", "name": "Test account" },
        "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
        "plan": { "id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0, "currency": "USD" }
    })
}

fn record_json(record: &FakeRecord, zone_name: &str) -> Value {
    let mut value = json!({
        "id": record.id, "zone_id": record.zone_id, "zone_name": zone_name, "name": record.name,
        "type": record.record_type, "content": record.content, "proxiable": record.record_type != "TXT",
        "ttl": record.ttl, "locked": false, "settings": {}, "meta": { "auto_added": false, "source": "primary" },
        "comment": null, "tags": [], "created_on": "2024-01-01T00:00:00.000000Z", "modified_on": "2024-01-01T00:00:00.000000Z"
    });
    // Cloudflare documents `proxied` as optional; leave it out of TXT records so clients must
    // default it.
    if record.record_type != "TXT" {
        value["proxied"] = json!(record.proxied);
    }
    value
}

/// `page` and `per_page` from the query: positive integers, `per_page` clamped to `min..=max`.
fn pagination(query: &[(String, String)], default: u64, min: u64, max: u64) -> Result<(u64, u64), Answer> {
    let get = |name: &str, default: u64| -> Result<u64, Answer> {
        match query.iter().find(|(k, _)| k == name) {
            None => Ok(default),
            Some((_, v)) => match v.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(Answer::error(
                    400,
                    json!([{ "code": 1001, "message": format!("Invalid {name}: {v:?} is not a positive integer") }]),
                )),
            },
        }
    };
    let page = get("page", 1)?;
    let per_page = get("per_page", default)?.clamp(min, max);
    Ok((page, per_page))
}

fn page_of<T: Clone>(items: &[T], page: u64, per_page: u64) -> Vec<T> {
    let start = ((page - 1).saturating_mul(per_page)) as usize;
    items.iter().skip(start).take(per_page as usize).cloned().collect()
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn valid_record_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b))
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query: Vec<(String, String)> = req
            .uri()
            .query()
            .map(|q| {
                reqwest::Url::parse(&format!("http://fake/?{q}"))
                    .unwrap()
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let header = |name: &str| req.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let authorization = header("authorization");
        let auth_email = header("x-auth-email");
        let auth_key = header("x-auth-key");
        let content_type = header("content-type");
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter(|(name, _)| *name != "authorization" && *name != "x-auth-key")
            .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let auth = match (authorization.is_some(), auth_email.is_some() || auth_key.is_some()) {
            (false, false) => AuthSeen::None,
            (true, false) => AuthSeen::Bearer,
            (false, true) => AuthSeen::Key,
            (true, true) => AuthSeen::Both,
        };
        let body = match req.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };

        let failure = self.state.lock().unwrap().failures.pop_front();
        let mut authorized = false;
        let answer = match failure {
            Some(Failure::Server(status)) => Some(Answer::error(
                status,
                json!([{ "code": 10001, "message": "Internal server error, please try again later" }]),
            )),
            Some(Failure::HtmlBadGateway) => Some(Answer {
                status: StatusCode::BAD_GATEWAY,
                body: Value::Null,
                headers: Vec::new(),
                html: Some("<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>"),
                txt_changed: None,
            }),
            Some(Failure::RateLimited { retry_after }) => {
                let mut answer = Answer::error(429, json!([{ "code": 971, "message": "Please wait and consider throttling your request speed" }]));
                if let Some(seconds) = retry_after {
                    answer.headers.push(("retry-after", seconds.to_string()));
                }
                Some(answer)
            }
            Some(Failure::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                None
            }
            None => None,
        };
        let answer = match answer {
            Some(answer) => answer,
            None => match self.authenticate(authorization.as_deref(), auth_email.as_deref(), auth_key.as_deref()) {
                Err(answer) => answer,
                Ok(access) => {
                    authorized = true;
                    self.route(&method, &path, &query, content_type.as_deref(), &body, access)
                }
            },
        };

        if let (Some(name), Some(hook)) = (&answer.txt_changed, &self.hook) {
            let values = self.state.lock().unwrap().records.clone();
            hook(name.clone(), None).await;
            for value in txt_values_at(&values, name) {
                hook(name.clone(), Some(value)).await;
            }
        }

        self.state.lock().unwrap().requests.push(RecordedRequest {
            method: method.to_string(),
            path,
            query,
            headers,
            auth,
            authorized,
            body: String::from_utf8_lossy(&body).into_owned(),
            status: answer.status.as_u16(),
        });

        let mut builder = Response::builder().status(answer.status);
        for (name, value) in &answer.headers {
            builder = builder.header(*name, value);
        }
        match answer.html {
            Some(html) => {
                builder.header("content-type", "text/html").body(Full::new(Bytes::from_static(html.as_bytes())))
            }
            None => {
                builder.header("content-type", "application/json").body(Full::new(Bytes::from(answer.body.to_string())))
            }
        }
        .unwrap()
    }

    fn authenticate(
        &self,
        authorization: Option<&str>,
        email: Option<&str>,
        key: Option<&str>,
    ) -> Result<Access, Answer> {
        let invalid_headers = |code: u32, message: &str| {
            Answer::error(
                400,
                json!([{ "code": 6003, "message": "Invalid request headers", "error_chain": [{ "code": code, "message": message }] }]),
            )
        };
        let state = self.state.lock().unwrap();
        match (authorization, email, key) {
            (None, None, None) => Err(Answer::error(
                400,
                json!([{ "code": 9106, "message": "Missing X-Auth-Key, X-Auth-Email or Authorization headers" }]),
            )),
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(invalid_headers(
                6100,
                "Send either an Authorization header or X-Auth-Email with X-Auth-Key, not both",
            )),
            (Some(value), None, None) => {
                let Some(token) = value.strip_prefix("Bearer ").filter(|t| !t.is_empty() && !t.contains(' ')) else {
                    return Err(invalid_headers(6111, "Invalid format for Authorization header"));
                };
                match state.tokens.iter().find(|(t, _)| t == token) {
                    Some((_, access)) => Ok(*access),
                    None => Err(Answer::error(403, json!([{ "code": 9109, "message": "Invalid access token" }]))),
                }
            }
            (None, None, Some(_)) => Err(invalid_headers(6102, "Invalid format for X-Auth-Email header")),
            (None, Some(_), None) => Err(invalid_headers(6103, "Invalid format for X-Auth-Key header")),
            (None, Some(email), Some(key)) => match state.keys.iter().find(|(e, k, _)| e == email && k == key) {
                Some((_, _, access)) => Ok(*access),
                None => {
                    Err(Answer::error(403, json!([{ "code": 9103, "message": "Unknown X-Auth-Key or X-Auth-Email" }])))
                }
            },
        }
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        content_type: Option<&str>,
        body: &[u8],
        access: Access,
    ) -> Answer {
        let no_route = || Answer::error(400, json!([{ "code": 7000, "message": "No route for that URI" }]));
        let Some(rest) = path.strip_prefix(API_PREFIX) else { return no_route() };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let write = *method != Method::GET;
        if write && access == Access::ReadOnly {
            return Answer::error(403, json!([{ "code": 10000, "message": "Authentication error" }]));
        }
        let mut state = self.state.lock().unwrap();
        if segments == ["zones"] {
            if *method != Method::GET {
                return Answer::error(405, json!([{ "code": 10405, "message": "Method not allowed for this route" }]));
            }
            return list_zones(&state, query);
        }
        let ["zones", zone_id, tail @ ..] = segments.as_slice() else { return no_route() };
        let Some(zone) = state.zones.iter().find(|z| z.id == *zone_id).cloned() else {
            return Answer::error(
                400,
                json!([
                    { "code": 7003, "message": format!("Could not route to {rest}, perhaps your object identifier is invalid?") },
                    { "code": 7000, "message": "No route for that URI" }
                ]),
            );
        };
        match (method.as_str(), tail) {
            ("GET", []) => Answer::ok(zone_json(&zone)),
            ("GET", ["dns_records"]) => list_records(&state, &zone, query),
            ("POST", ["dns_records"]) => create_record(&mut state, &zone, content_type, body),
            ("GET", ["dns_records", record_id]) => {
                match state.records.iter().find(|r| r.zone_id == zone.id && r.id == *record_id) {
                    Some(record) => Answer::ok(record_json(record, &zone.name)),
                    None => Answer::error(404, json!([{ "code": 81044, "message": "Record does not exist." }])),
                }
            }
            ("DELETE", ["dns_records", record_id]) => {
                match state.records.iter().position(|r| r.zone_id == zone.id && r.id == *record_id) {
                    Some(index) => {
                        let record = state.records.remove(index);
                        let mut answer = Answer::ok(json!({ "id": record.id }));
                        if record.record_type == "TXT" {
                            answer.txt_changed = Some(record.name);
                        }
                        answer
                    }
                    None => Answer::error(404, json!([{ "code": 81044, "message": "Record does not exist." }])),
                }
            }
            (_, [] | ["dns_records"] | ["dns_records", _]) => {
                Answer::error(405, json!([{ "code": 10405, "message": "Method not allowed for this route" }]))
            }
            _ => no_route(),
        }
    }
}

fn list_zones(state: &State, query: &[(String, String)]) -> Answer {
    let (page, per_page) = match pagination(query, 20, 5, 50) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let name = query.iter().find(|(k, _)| k == "name").map(|(_, v)| v.to_ascii_lowercase());
    let status = query.iter().find(|(k, _)| k == "status").map(|(_, v)| v.as_str());
    let matching: Vec<&FakeZone> = state
        .zones
        .iter()
        .filter(|z| name.as_deref().is_none_or(|n| z.name == n))
        .filter(|z| status.is_none_or(|s| z.status == s))
        .collect();
    let shown = page_of(&matching, page, per_page).into_iter().map(zone_json).collect();
    Answer::list(shown, page, per_page, matching.len() as u64)
}

fn list_records(state: &State, zone: &FakeZone, query: &[(String, String)]) -> Answer {
    let (page, per_page) = match pagination(query, 100, 5, state.records_max_per_page) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let record_type = get("type");
    if let Some(t) = &record_type {
        if !["A", "AAAA", "CNAME", "TXT", "MX", "NS", "SRV", "CAA"].contains(&t.as_str()) {
            return Answer::invalid(&format!("type {t:?} is not a DNS record type"));
        }
    }
    let name = get("name").or_else(|| get("name.exact")).map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let content = get("content");
    let matching: Vec<&FakeRecord> = state
        .records
        .iter()
        .filter(|r| r.zone_id == zone.id)
        .filter(|r| record_type.as_deref().is_none_or(|t| r.record_type == t))
        .filter(|r| name.as_deref().is_none_or(|n| r.name == n))
        .filter(|r| content.as_deref().is_none_or(|c| r.content == c))
        .collect();
    let shown = page_of(&matching, page, per_page).into_iter().map(|r| record_json(r, &zone.name)).collect();
    Answer::list(shown, page, per_page, matching.len() as u64)
}

fn create_record(state: &mut State, zone: &FakeZone, content_type: Option<&str>, body: &[u8]) -> Answer {
    let essence = content_type.and_then(|c| c.split(';').next()).map(|c| c.trim().to_ascii_lowercase());
    if essence.as_deref() != Some("application/json") {
        return Answer::error(
            400,
            json!([{ "code": 6003, "message": "Invalid request headers", "error_chain": [
                { "code": 6105, "message": "Invalid Content-Type header, valid values are application/json,multipart/form-data" }
            ] }]),
        );
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Answer::error(400, json!([{ "code": 9207, "message": "Request body is invalid." }]));
    };
    let record_type = match fields.get("type") {
        Some(Value::String(t)) if ["A", "AAAA", "CNAME", "TXT"].contains(&t.as_str()) => t.clone(),
        Some(other) => return Answer::invalid(&format!("type {other} is not supported (A, AAAA, CNAME or TXT)")),
        None => return Answer::invalid("type is required"),
    };
    let name = match fields.get("name") {
        Some(Value::String(n)) => n.trim_end_matches('.').to_ascii_lowercase(),
        Some(_) => return Answer::invalid("name must be a string"),
        None => return Answer::invalid("name is required"),
    };
    if !valid_record_name(&name) {
        return Answer::invalid(&format!("name {name:?} is not a valid DNS name"));
    }
    if !in_zone(&name, &zone.name) {
        return Answer::invalid(&format!("name {name:?} is not in zone {}", zone.name));
    }
    let content = match fields.get("content") {
        Some(Value::String(c)) if !c.is_empty() => c.clone(),
        Some(Value::String(_)) | None => return Answer::invalid("content is required"),
        Some(_) => return Answer::invalid("content must be a string"),
    };
    let content_ok = match record_type.as_str() {
        "A" => content.parse::<Ipv4Addr>().is_ok(),
        "AAAA" => content.parse::<Ipv6Addr>().is_ok(),
        "CNAME" => valid_record_name(content.trim_end_matches('.')),
        _ => content.len() <= 2048,
    };
    if !content_ok {
        return Answer::invalid(&format!("content is not valid for a {record_type} record"));
    }
    let ttl = match fields.get("ttl") {
        None => 1,
        Some(value) => match value.as_u64() {
            Some(t) if t == 1 || (60..=86400).contains(&t) => t,
            _ => return Answer::invalid(&format!("ttl {value} must be 1 (automatic) or between 60 and 86400")),
        },
    };
    let proxied = match fields.get("proxied") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(p)) => *p,
        Some(_) => return Answer::invalid("proxied must be a boolean"),
    };
    if proxied && record_type == "TXT" {
        return Answer::error(400, json!([{ "code": 9004, "message": "This record type cannot be proxied." }]));
    }
    if state
        .records
        .iter()
        .any(|r| r.zone_id == zone.id && r.record_type == record_type && r.name == name && r.content == content)
    {
        return Answer::error(400, json!([{ "code": 81058, "message": "An identical record already exists." }]));
    }
    let id = new_id(state);
    let record = FakeRecord { id, zone_id: zone.id.clone(), record_type, name, content, ttl, proxied };
    let mut answer = Answer::ok(record_json(&record, &zone.name));
    if record.record_type == "TXT" {
        answer.txt_changed = Some(record.name.clone());
    }
    state.records.push(record);
    answer
}

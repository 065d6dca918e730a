//! A small Cloudflare API v4 client: exactly what DNS-01 needs (find the zone of a name, create,
//! list and delete TXT records), nothing else.
//!
//! Decoding is lenient: only the fields we use are read and everything else is ignored, so a new
//! field in Cloudflare's answers cannot break issuance. The v4 envelope (`success`, `errors`,
//! `result`, `result_info`) is checked on every answer, and Cloudflare's own error codes and
//! messages are carried into our errors.
//!
//! Secrets: the API token and the Global API Key live in [`Secret`], whose `Debug` and `Display`
//! print `[redacted]`; they only leave it as header values marked sensitive. Error messages are
//! built from the status, Cloudflare's error list and our own description of the operation, never
//! from request headers, and any echo of a secret in a response is replaced by `[redacted]`.
//!
//! TLS is rustls with the ring provider and Mozilla's roots (`webpki-roots`), so the agent needs no
//! CA bundle in its image and never mixes crypto backends.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// Cloudflare's API base URL; a setting, so tests can point the client at a fake.
pub const DEFAULT_API_BASE: &str = "https://api.cloudflare.com/client/v4";
/// Upper bound for one request, from connecting to the last byte of the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for establishing the connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Records asked for per page when listing.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// A listing longer than this many pages is treated as a broken answer, not followed forever.
const MAX_PAGES: u32 = 1000;
/// Answers larger than this are refused; the API's answers for our calls are a few kilobytes.
const MAX_BODY: usize = 8 * 1024 * 1024;

pub const TOKEN_VAR: &str = "CLOUDFLARE_API_TOKEN";
pub const TOKEN_FILE_VAR: &str = "CLOUDFLARE_API_TOKEN_FILE";
pub const EMAIL_VAR: &str = "CLOUDFLARE_EMAIL";
pub const KEY_VAR: &str = "CLOUDFLARE_API_KEY";
pub const KEY_FILE_VAR: &str = "CLOUDFLARE_API_KEY_FILE";

/// Cloudflare error codes that mean "these credentials are not accepted here", whatever the HTTP
/// status: malformed X-Auth-Email / X-Auth-Key / Authorization header (6102, 6103, 6111, nested
/// under the generic 6003), unknown key or email (9103), missing auth headers (9106), invalid
/// token (9109), authentication error (10000, also a token without the permission).
const AUTH_CODES: &[i64] = &[6102, 6103, 6111, 9103, 9106, 9109, 10000];

pub use crate::secret::Secret;

mod credentials;
mod error;
mod records;

pub use credentials::*;
pub use error::*;
pub use records::*;

/// A Cloudflare v4 API client (cheap to clone: the HTTP client is shared).
#[derive(Clone)]
pub struct Cloudflare {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
    timeout: Duration,
    page_size: u32,
}

impl fmt::Debug for Cloudflare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api_base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .field("page_size", &self.page_size)
            .finish()
    }
}

impl Cloudflare {
    /// A client for the API at `api_base` (normally [`DEFAULT_API_BASE`]). The base must be
    /// `https`, except on a loopback address (a local test server), where `http` is accepted.
    pub fn new(api_base: &str, credentials: Credentials) -> Result<Self, CloudflareError> {
        let base = parse_api_base(api_base)?;
        let headers = credentials.headers()?;
        let tls = tls_config()?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .default_headers(headers)
            .user_agent(concat!("nginx-smart-proxy/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|e| CloudflareError::HttpClient { reason: error_chain(&e.without_url()) })?;
        Ok(Cloudflare { http, base, credentials, timeout: DEFAULT_TIMEOUT, page_size: DEFAULT_PAGE_SIZE })
    }

    /// Sets the bound for each request (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many records to ask for per page when listing (default [`DEFAULT_PAGE_SIZE`]).
    pub fn with_page_size(mut self, per_page: u32) -> Self {
        self.page_size = per_page.max(1);
        self
    }

    /// The API base URL in use.
    pub fn api_base(&self) -> &str {
        self.base.as_str()
    }

    /// The active zone that holds `domain`: tries the domain itself, then each parent
    /// (`a.b.example.com`, `b.example.com`, `example.com`); the first match wins. A wildcard
    /// `*.a.example.com` starts from `a.example.com`.
    pub async fn find_zone(&self, domain: &str) -> Result<Zone, CloudflareError> {
        let name = normalize_domain(domain)?;
        let candidates = zone_candidates(&name);
        for candidate in &candidates {
            let operation = format!("looking up zone {candidate}");
            let url = self.url(&["zones"], &[("name", candidate), ("status", "active")]);
            let reply = self.call(Method::GET, url, None, &operation).await?;
            let zones: Vec<ZoneWire> = decode(reply, &operation)?;
            let found = zones
                .into_iter()
                .find(|z| z.name.eq_ignore_ascii_case(candidate) && (z.status.is_empty() || z.status == "active"));
            if let Some(zone) = found {
                if zone.id.is_empty() {
                    return Err(CloudflareError::UnexpectedResponse {
                        operation,
                        status: 200,
                        reason: "the zone has no id".into(),
                    });
                }
                tracing::debug!(domain = %name, zone = %zone.name, zone_id = %zone.id, "found Cloudflare zone");
                return Ok(Zone { id: zone.id, name: zone.name.to_ascii_lowercase() });
            }
        }
        Err(CloudflareError::ZoneNotFound { domain: name, tried: candidates })
    }

    /// Creates a TXT record `name` (a full name inside `zone`) holding `content`; `ttl` is in
    /// seconds, 1 meaning automatic. The content is sent quoted, as Cloudflare documents for TXT
    /// records (see [`quote_txt`]).
    pub async fn create_txt(
        &self,
        zone: &Zone,
        name: &str,
        content: &str,
        ttl: u32,
    ) -> Result<RecordId, CloudflareError> {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name != zone.name && !name.ends_with(&format!(".{}", zone.name)) {
            return Err(CloudflareError::NameOutsideZone { name, zone: zone.name.clone() });
        }
        let operation = format!("creating TXT record {name} in zone {}", zone.name);
        let body = json!({ "type": "TXT", "name": name, "content": quote_txt(content), "ttl": ttl });
        let url = self.url(&["zones", &zone.id, "dns_records"], &[]);
        let reply = self.call(Method::POST, url, Some(body), &operation).await?;
        let created: IdOnly = decode(reply, &operation)?;
        if created.id.is_empty() {
            return Err(CloudflareError::UnexpectedResponse {
                operation,
                status: 200,
                reason: "the new record has no id".into(),
            });
        }
        tracing::debug!(zone = %zone.name, record = %name, record_id = %created.id, "created TXT record");
        Ok(RecordId(created.id))
    }

    /// Deletes the record `id` from `zone`.
    pub async fn delete_record(&self, zone: &Zone, id: &RecordId) -> Result<(), CloudflareError> {
        let operation = format!("deleting DNS record {id} in zone {}", zone.name);
        let url = self.url(&["zones", &zone.id, "dns_records", id.as_str()], &[]);
        self.call(Method::DELETE, url, None, &operation).await?;
        tracing::debug!(zone = %zone.name, record_id = %id, "deleted DNS record");
        Ok(())
    }

    /// The records of `record_type` (e.g. `TXT`) named `name` in `zone`, all pages.
    pub async fn records(&self, zone: &Zone, name: &str, record_type: &str) -> Result<Vec<DnsRecord>, CloudflareError> {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let operation = format!("listing {record_type} records named {name} in zone {}", zone.name);
        let per_page = self.page_size.to_string();
        let mut out = Vec::new();
        let mut page: u32 = 1;
        loop {
            let page_text = page.to_string();
            let url = self.url(
                &["zones", &zone.id, "dns_records"],
                &[("type", record_type), ("name", &name), ("page", &page_text), ("per_page", &per_page)],
            );
            let reply = self.call(Method::GET, url, None, &operation).await?;
            let info = reply.result_info.clone();
            let items: Vec<DnsRecord> = decode(reply, &operation)?;
            let count = items.len();
            out.extend(items);
            if !more_pages(info.as_ref(), page, out.len(), count, self.page_size) {
                return Ok(out);
            }
            page += 1;
            if page > MAX_PAGES {
                return Err(CloudflareError::UnexpectedResponse {
                    operation,
                    status: 200,
                    reason: format!("the listing goes on past {MAX_PAGES} pages"),
                });
            }
        }
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in Cloudflare::new").pop_if_empty().extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends one request and checks the envelope; the `Reply` holds `result` and `result_info`.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
        operation: &str,
    ) -> Result<Reply, CloudflareError> {
        let mut request = self.http.request(method.clone(), url.clone()).timeout(self.timeout);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let transport = |e: reqwest::Error| {
            let timed_out = e.is_timeout();
            CloudflareError::Transport {
                api: self.base.as_str().trim_end_matches('/').to_string(),
                operation: operation.to_string(),
                reason: self.redact(&error_chain(&e.without_url())),
                timed_out,
            }
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        tracing::debug!(
            method = %method,
            path = url.path(),
            query = url.query().unwrap_or(""),
            status = status.as_u16(),
            "Cloudflare API"
        );
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(CloudflareError::UnexpectedResponse {
                    operation: operation.to_string(),
                    status: status.as_u16(),
                    reason: format!("the answer is larger than {} MiB", MAX_BODY / 1024 / 1024),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let envelope: Option<Envelope> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            let Some(envelope) = envelope else {
                return Err(CloudflareError::UnexpectedResponse {
                    operation: operation.to_string(),
                    status: status.as_u16(),
                    reason: self.redact(&format!("the answer is not a Cloudflare API envelope: {}", snippet(&bytes))),
                });
            };
            return match envelope.success {
                Some(true) => Ok(Reply { result: envelope.result, result_info: envelope.result_info }),
                Some(false) => Err(self.api_error(status, None, operation, Some(&envelope), &bytes, is_json)),
                None => Err(CloudflareError::UnexpectedResponse {
                    operation: operation.to_string(),
                    status: status.as_u16(),
                    reason: "the answer has no \"success\" field".into(),
                }),
            };
        }
        Err(self.api_error(status, retry_after, operation, envelope.as_ref(), &bytes, is_json))
    }

    fn api_error(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        operation: &str,
        envelope: Option<&Envelope>,
        body: &[u8],
        is_json: bool,
    ) -> CloudflareError {
        let messages = envelope.map(|e| api_messages(&e.errors)).unwrap_or_default();
        let mut codes = Vec::new();
        collect_codes(&messages, &mut codes);
        let detail = if !messages.is_empty() {
            messages.iter().map(ApiMessage::to_string).collect::<Vec<_>>().join("; ")
        } else if envelope.is_some() {
            "the answer gives no error details".to_string()
        } else if body.is_empty() {
            "the answer is empty".to_string()
        } else if is_json {
            format!("the answer is not a Cloudflare API envelope: {}", snippet(body))
        } else {
            format!("the answer is not JSON: {}", snippet(body))
        };
        let detail = self.redact(&detail);
        let operation = operation.to_string();
        let code = status.as_u16();
        if status == StatusCode::TOO_MANY_REQUESTS {
            CloudflareError::RateLimited { operation, retry_after, detail, codes }
        } else if status.is_server_error() {
            CloudflareError::Server { operation, status: code, detail, codes }
        } else if code == 401 || code == 403 || codes.iter().any(|c| AUTH_CODES.contains(c)) {
            CloudflareError::Auth { operation, status: code, detail, codes, hint: self.credentials.auth_hint() }
        } else {
            CloudflareError::Api { operation, status: code, detail, codes }
        }
    }

    /// Replaces any echo of the secret in text that came from outside.
    fn redact(&self, text: &str) -> String {
        let secret = self.credentials.secret().expose();
        if secret.len() >= 4 {
            text.replace(secret, "[redacted]")
        } else {
            text.to_string()
        }
    }
}

fn parse_api_base(api_base: &str) -> Result<Url, CloudflareError> {
    let invalid = |shown: String, reason: &str| CloudflareError::InvalidApiBase { url: shown, reason: reason.into() };
    let mut url = Url::parse(api_base.trim())
        .map_err(|e| invalid(api_base.trim().to_string(), &format!("{e}; expected a URL like {DEFAULT_API_BASE}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("");
        let _ = url.set_password(None);
        return Err(invalid(url.to_string(), "it must not contain a user name or password"));
    }
    let shown = url.to_string();
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid(shown, "it has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(shown, "it must not have a query or fragment"));
    }
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(invalid(shown, "it must use https (plain http is only accepted for a loopback test server)"))
        }
        _ => return Err(invalid(shown, "it must be an https URL")),
    }
    Ok(url)
}

pub(crate) fn tls_config() -> Result<rustls::ClientConfig, CloudflareError> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| CloudflareError::HttpClient { reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// `domain` as lowercase ASCII without a trailing dot or leading wildcard label.
fn normalize_domain(domain: &str) -> Result<String, CloudflareError> {
    let invalid = |reason: &str| CloudflareError::InvalidDomain { domain: domain.to_string(), reason: reason.into() };
    let trimmed = domain.trim().trim_end_matches('.');
    let trimmed = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let ascii = idna::domain_to_ascii(trimmed).map_err(|_| invalid("it is not a valid international domain name"))?;
    if ascii.split('.').any(str::is_empty) {
        return Err(invalid("it has an empty label"));
    }
    if !ascii.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
        return Err(invalid("only letters, digits, '-', '_' and '.' are allowed (and one leading '*.')"));
    }
    Ok(ascii)
}

/// The names that may be the zone of `name`, longest first; never a bare top-level label unless
/// `name` is one.
fn zone_candidates(name: &str) -> Vec<String> {
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return vec![name.to_string()];
    }
    (0..labels.len() - 1).map(|i| labels[i..].join(".")).collect()
}

/// Whether a listing goes on after `page`, from `result_info` (`total_pages`, else `total_count`,
/// else a full page means maybe more).
fn more_pages(info: Option<&Value>, page: u32, seen: usize, in_page: usize, asked_per_page: u32) -> bool {
    if in_page == 0 {
        return false;
    }
    let Some(info) = info else { return false };
    let field = |name: &str| info.get(name).and_then(Value::as_u64);
    if let Some(total_pages) = field("total_pages") {
        return u64::from(page) < total_pages;
    }
    if let Some(total_count) = field("total_count") {
        return (seen as u64) < total_count;
    }
    let per_page = field("per_page").unwrap_or(u64::from(asked_per_page));
    in_page as u64 >= per_page
}

/// The envelope of every v4 answer; `errors` is read leniently by [`api_messages`].
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    errors: Value,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: Option<Value>,
}

struct Reply {
    result: Value,
    result_info: Option<Value>,
}

#[derive(Deserialize)]
struct ZoneWire {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: String,
}

fn decode<T: DeserializeOwned>(reply: Reply, operation: &str) -> Result<T, CloudflareError> {
    serde_json::from_value(reply.result).map_err(|e| CloudflareError::UnexpectedResponse {
        operation: operation.to_string(),
        status: 200,
        reason: format!("the result does not have the documented shape: {e}"),
    })
}

/// One entry of Cloudflare's `errors` list, with its nested `error_chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiMessage {
    code: Option<i64>,
    message: String,
    chain: Vec<ApiMessage>,
}

impl fmt::Display for ApiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cloudflare's messages often end with a period; ours never do.
        let message = self.message.trim().trim_end_matches('.');
        match self.code {
            Some(code) => write!(f, "{code} {message}")?,
            None => f.write_str(message)?,
        }
        if !self.chain.is_empty() {
            let inner: Vec<String> = self.chain.iter().map(ApiMessage::to_string).collect();
            write!(f, " ({})", inner.join("; "))?;
        }
        Ok(())
    }
}

fn api_messages(errors: &Value) -> Vec<ApiMessage> {
    let Some(list) = errors.as_array() else { return Vec::new() };
    list.iter()
        .filter_map(|entry| match entry {
            Value::String(s) => Some(ApiMessage { code: None, message: s.clone(), chain: Vec::new() }),
            Value::Object(map) => Some(ApiMessage {
                code: map.get("code").and_then(|c| c.as_i64().or_else(|| c.as_str().and_then(|s| s.parse().ok()))),
                message: map.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
                chain: map.get("error_chain").map(api_messages).unwrap_or_default(),
            }),
            _ => None,
        })
        .collect()
}

fn collect_codes(messages: &[ApiMessage], out: &mut Vec<i64>) {
    for m in messages {
        out.extend(m.code);
        collect_codes(&m.chain, out);
    }
}

/// The start of a body, on one line, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let cleaned: String = one_line.chars().filter(|c| !c.is_control()).collect();
    if cleaned.chars().count() > 200 {
        format!("{}...", cleaned.chars().take(200).collect::<String>())
    } else {
        cleaned
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let token = Credentials::Token(Secret::new("tok-SECRET-123"));
        let key = Credentials::Key { email: "a@example.com".into(), key: Secret::new("key-SECRET-456") };
        for text in [format!("{token:?}"), format!("{key:?}"), format!("{}", Secret::new("tok-SECRET-123"))] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
        let client = Cloudflare::new(DEFAULT_API_BASE, token).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("SECRET") && text.contains("api.cloudflare.com"), "{text}");
    }

    #[test]
    fn client_builds_with_ring_tls() {
        // The preconfigured rustls config must be recognised by reqwest (else `build` fails).
        Cloudflare::new(DEFAULT_API_BASE, Credentials::Token(Secret::new("t0ken"))).unwrap();
    }

    #[test]
    fn api_base_must_be_https_except_on_loopback() {
        let creds = || Credentials::Token(Secret::new("t0ken"));
        assert!(Cloudflare::new("http://127.0.0.1:8080/client/v4", creds()).is_ok());
        assert!(Cloudflare::new("http://localhost:8080", creds()).is_ok());
        assert!(Cloudflare::new("http://[::1]:8080/", creds()).is_ok());
        let err = Cloudflare::new("http://api.cloudflare.com/client/v4", creds()).unwrap_err();
        assert!(err.to_string().contains("must use https"), "{err}");
        let err = Cloudflare::new("https://user:pa55word@api.cloudflare.com/client/v4", creds()).unwrap_err();
        assert!(!err.to_string().contains("pa55word"), "{err}");
        assert!(Cloudflare::new("not a url", creds()).is_err());
        assert!(Cloudflare::new("https://api.cloudflare.com/client/v4?x=1", creds()).is_err());
    }

    #[test]
    fn urls_join_the_base_path() {
        let client =
            Cloudflare::new("https://api.cloudflare.com/client/v4/", Credentials::Token(Secret::new("t0ken"))).unwrap();
        let url = client.url(&["zones", "abc", "dns_records"], &[("name", "a b.example.com")]);
        assert_eq!(url.as_str(), "https://api.cloudflare.com/client/v4/zones/abc/dns_records?name=a+b.example.com");
        let url = client.url(&["zones", "../x"], &[]);
        assert_eq!(url.path(), "/client/v4/zones/..%2Fx");
    }

    #[test]
    fn zone_candidates_walk_up_the_labels() {
        assert_eq!(zone_candidates("a.b.example.com"), ["a.b.example.com", "b.example.com", "example.com"]);
        assert_eq!(zone_candidates("example.com"), ["example.com"]);
        assert_eq!(zone_candidates("localhost"), ["localhost"]);
        assert_eq!(normalize_domain("*.A.Example.com.").unwrap(), "a.example.com");
        assert_eq!(normalize_domain("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert!(normalize_domain("a..b").is_err());
        assert!(normalize_domain("*").is_err());
        assert!(normalize_domain("a/b.com").is_err());
    }

    #[test]
    fn txt_quoting_round_trips() {
        assert_eq!(quote_txt("abc-_"), "\"abc-_\"");
        assert_eq!(quote_txt("\"already\""), "\"already\"");
        assert_eq!(quote_txt("a\"b\\c"), "\"a\\\"b\\\\c\"");
        for value in ["abc", "a\"b\\c", "with space", ""] {
            assert_eq!(unquote_txt(&quote_txt(value)), value);
        }
        assert_eq!(unquote_txt("\"ab\" \"cd\""), "abcd");
        assert_eq!(unquote_txt("plain"), "plain");
        assert_eq!(unquote_txt("\"a\\065\""), "aA");
    }

    #[test]
    fn pagination_follows_result_info() {
        let info = |v: Value| Some(v);
        assert!(more_pages(info(json!({"page":1,"total_pages":3})).as_ref(), 1, 50, 50, 50));
        assert!(!more_pages(info(json!({"page":3,"total_pages":3})).as_ref(), 3, 120, 20, 50));
        assert!(more_pages(info(json!({"page":1,"per_page":50,"total_count":120})).as_ref(), 1, 50, 50, 50));
        assert!(!more_pages(info(json!({"page":3,"per_page":50,"total_count":120})).as_ref(), 3, 120, 20, 50));
        assert!(more_pages(info(json!({"page":1,"per_page":50})).as_ref(), 1, 50, 50, 100));
        assert!(!more_pages(info(json!({"page":2,"per_page":50})).as_ref(), 2, 60, 10, 100));
        assert!(!more_pages(None, 1, 100, 100, 100));
        assert!(!more_pages(info(json!({"total_pages":9})).as_ref(), 1, 0, 0, 100));
    }

    #[test]
    fn error_messages_are_lenient_and_nested() {
        let errors = json!([
            {"code": 6003, "message": "Invalid request headers", "error_chain": [{"code": 6111, "message": "Invalid format for Authorization header"}]},
            "plain text",
            {"code": "81058", "message": "An identical record already exists."}
        ]);
        let messages = api_messages(&errors);
        let text: Vec<String> = messages.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "6003 Invalid request headers (6111 Invalid format for Authorization header)",
                "plain text",
                "81058 An identical record already exists"
            ]
        );
        let mut codes = Vec::new();
        collect_codes(&messages, &mut codes);
        assert_eq!(codes, [6003, 6111, 81058]);
    }

    #[test]
    fn records_decode_leniently() {
        let record: DnsRecord = serde_json::from_value(json!({
            "id": "r1", "type": "TXT", "name": "_acme-challenge.example.com", "content": "\"v\"",
            "proxied": null, "ttl": 60, "settings": {}, "meta": {"auto_added": false}, "tags": []
        }))
        .unwrap();
        assert_eq!(record.id, RecordId("r1".into()));
        assert!(!record.proxied);
        assert_eq!(record.txt_value(), "v");
        let record: DnsRecord = serde_json::from_value(json!({"id": "r2"})).unwrap();
        assert_eq!(record.content, "");
    }
}

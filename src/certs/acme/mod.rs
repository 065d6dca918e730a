//! The ACME client layer (RFC 8555, via instant-acme): accounts persisted on disk, one order per
//! domain, challenges presented through a [`Solver`], and the result written in certbot's layout.
//!
//! This module does not know how a challenge is presented: the certificate manager implements
//! [`Solver`] (DNS-01 through a DNS provider, HTTP-01 through nginx's webroot).
//!
//! Secrets (the account key inside the credentials file, the EAB HMAC key, issued private keys)
//! never appear in logs, errors or `Debug` output; files holding them are written 0600.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use instant_acme::{
    AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    HttpClient, Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use thiserror::Error;
use tracing::{debug, info, warn};

pub use instant_acme::Problem;

/// The EAB HMAC key and issued private keys are [`Secret`]s: never in Debug, Display or logs.
pub use crate::secret::Secret;

use crate::fsutil::{write_atomic, write_atomic_many};
use crate::routes::DomainName;

mod account;
mod ca_http;
mod certificate;
mod error;
mod journal;

pub use account::*;
use ca_http::*;
pub use certificate::*;
pub use error::*;
pub use journal::*;

/// Let's Encrypt's production directory (the name `letsencrypt` in [`AcmeSettings::directory`]).
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (the name `letsencrypt-staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The problem type a CA uses for rate limits (RFC 8555 section 6.7).
pub const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

/// Longest wait for one HTTP exchange with the CA.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Polling while the CA validates the challenges (delays 0.25 s, ×1.5, up to 3 minutes in all).
const READY_POLICY: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(180));
/// Polling while the CA signs the certificate.
const CERT_POLICY: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(120));

/// Where and how to talk to the ACME CA.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The directory URL (`https://...`), or `letsencrypt` / `letsencrypt-staging`.
    pub directory: String,
    /// Contact address registered with the account (`mailto:` is added).
    pub email: Option<String>,
    /// External account binding: key id and the base64url HMAC key, as the CA shows them.
    pub eab: Option<(String, Secret)>,
    /// A PEM file with the root(s) to trust for the CA's own TLS certificate (test CAs); the
    /// system's roots otherwise.
    pub ca_root: Option<PathBuf>,
}

impl AcmeSettings {
    /// The directory URL, with the Let's Encrypt names resolved.
    pub fn directory_url(&self) -> Result<String, AcmeError> {
        let value = self.directory.trim();
        match value {
            "letsencrypt" => Ok(LETSENCRYPT.to_string()),
            "letsencrypt-staging" => Ok(LETSENCRYPT_STAGING.to_string()),
            url if url.starts_with("https://")
                && url.len() > "https://".len()
                && !url.contains(char::is_whitespace) =>
            {
                Ok(url.to_string())
            }
            _ => Err(AcmeError::Directory { value: self.directory.clone() }),
        }
    }
}

/// The challenge types a [`Solver`] can present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    Http01,
    Dns01,
}

impl ChallengeKind {
    fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "HTTP-01",
            ChallengeKind::Dns01 => "DNS-01",
        })
    }
}

/// What a solver must put in place (and later remove) for one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeResponse {
    /// Serve `key_authorization` as the body of `http://<domain>/.well-known/acme-challenge/<token>`.
    Http01 { domain: String, token: String, key_authorization: String },
    /// Publish a TXT record `record` (`_acme-challenge.<domain>`, without trailing dot) holding
    /// `value`. For a wildcard `*.example.com`, `domain` is `example.com`.
    Dns01 { domain: String, record: String, value: String },
}

impl ChallengeResponse {
    pub fn kind(&self) -> ChallengeKind {
        match self {
            ChallengeResponse::Http01 { .. } => ChallengeKind::Http01,
            ChallengeResponse::Dns01 { .. } => ChallengeKind::Dns01,
        }
    }

    /// The name the CA validates (without any `*.`).
    pub fn domain(&self) -> &str {
        match self {
            ChallengeResponse::Http01 { domain, .. } | ChallengeResponse::Dns01 { domain, .. } => domain,
        }
    }

    /// For HTTP-01: the request path the CA fetches.
    pub fn http_path(&self) -> Option<String> {
        match self {
            ChallengeResponse::Http01 { token, .. } => Some(format!("/.well-known/acme-challenge/{token}")),
            ChallengeResponse::Dns01 { .. } => None,
        }
    }
}

/// A solver's failure to present or remove a challenge response.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct SolverError {
    message: String,
}

impl SolverError {
    pub fn new(message: impl Into<String>) -> Self {
        SolverError { message: message.into() }
    }
}

/// Presents challenge responses: DNS-01 through a DNS provider, HTTP-01 through the webroot.
///
/// `present` returns once the response is visible to the CA (for DNS-01: propagated). `cleanup`
/// is called for every response `present` was called for, also when `present` failed or
/// validation failed, so it must tolerate a response that is not (fully) in place.
pub trait Solver: Send + Sync {
    fn kind(&self) -> ChallengeKind;
    fn present(&self, challenge: &ChallengeResponse) -> impl Future<Output = Result<(), SolverError>> + Send;
    fn cleanup(&self, challenge: &ChallengeResponse) -> impl Future<Output = Result<(), SolverError>> + Send;
}

/// An issued certificate, not yet on disk.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf first, then the intermediates, as the CA sent them.
    pub fullchain_pem: String,
    /// The certificate's private key (PKCS#8 PEM), generated locally.
    pub key_pem: Secret,
    pub not_after: time::OffsetDateTime,
}

/// Fails before any order is placed when `kind` cannot validate `domain` (HTTP-01 and wildcards).
pub fn check_solver(domain: &DomainName, kind: ChallengeKind) -> Result<(), AcmeError> {
    if kind == ChallengeKind::Http01 && domain.is_wildcard() {
        return Err(AcmeError::WildcardNeedsDns { domain: domain.clone() });
    }
    Ok(())
}

/// Obtains a certificate for `domain` (a wildcard as `*.example.com`): one order, the solver's
/// challenge presented for each pending authorization and always cleaned up, bounded polling,
/// a fresh private key, and the chain checked to name `domain`.
///
/// Do not drop the future midway: cleanup would not run. It bounds its own time.
pub async fn issue(account: &Account, domain: &DomainName, solver: &impl Solver) -> Result<Issued, AcmeError> {
    issue_with(account, domain, solver, &IssueOptions::default()).await
}

/// Options of [`issue_with`].
#[derive(Debug, Clone, Default)]
pub struct IssueOptions {
    /// ACME Renewal Information: the identifier of the certificate this order replaces
    /// (`replaces`, RFC 9773 section 5). Sent only when the CA offers ARI.
    pub replaces: Option<String>,
    /// A directory journaling the order in progress (`<stem>.json`, 0600: the order URL and
    /// the key of its CSR, written before finalization). An order found there from an earlier process
    /// that died is resumed when it got past validation, so no second order is placed and
    /// no key is lost. The caller removes the journal ([`clear_journal`]) once the
    /// certificate is written.
    pub journal: Option<PathBuf>,
}

/// [`issue`] with `replaces` and a journal that survives the process (see [`IssueOptions`]).
pub async fn issue_with(
    account: &Account,
    domain: &DomainName,
    solver: &impl Solver,
    options: &IssueOptions,
) -> Result<Issued, AcmeError> {
    let kind = solver.kind();
    check_solver(domain, kind)?;
    with_capture(async {
        let journal_dir = options.journal.as_deref();
        let (mut order, mut key_pem) = match resume(account, domain, journal_dir).await {
            Some(resumed) => resumed,
            None => {
                let identifiers = [Identifier::Dns(domain.as_str().to_string())];
                let replaces = options.replaces.as_deref().and_then(certificate_identifier);
                let order = match replaces {
                    Some(id) => match account.inner.new_order(&NewOrder::new(&identifiers).replaces(id)).await {
                        // The CA has no ARI: instant-acme refuses `replaces` before sending anything.
                        Err(instant_acme::Error::Unsupported(_)) => {
                            account.inner.new_order(&NewOrder::new(&identifiers)).await
                        }
                        other => other,
                    },
                    None => account.inner.new_order(&NewOrder::new(&identifiers)).await,
                }
                .map_err(|e| ca_error(format!("create an order for {domain}"), e))?;
                // Journaled only once validated (below, with its key): a pending order is never
                // resumed, and each durable write costs an fsync.
                debug!(%domain, order = order.url(), "created an ACME order");
                (order, None)
            }
        };

        if order.state().status == OrderStatus::Pending {
            let mut presented = Vec::new();
            let validated = authorize(&mut order, domain, solver, &mut presented).await;
            for challenge in &presented {
                if let Err(e) = solver.cleanup(challenge).await {
                    warn!(%domain, kind = %kind, error = %e, "cannot clean up the ACME challenge response");
                }
            }
            validated?;
        }

        if order.state().status == OrderStatus::Ready {
            let key = match key_pem.take() {
                Some(key) => key,
                None => Secret::new(
                    rcgen::KeyPair::generate()
                        .map_err(|e| AcmeError::BadCertificate {
                            domain: domain.clone(),
                            reason: format!("cannot generate its key: {e}"),
                        })?
                        .serialize_pem(),
                ),
            };
            // The key is on disk (0600) before the CA can sign for it: a process killed from
            // here on loses nothing.
            if let Some(dir) = journal_dir {
                let (dir, domain, url, key) = (dir.to_path_buf(), domain.clone(), order.url().to_string(), key.clone());
                blocking(move || write_journal(&dir, &domain, &url, &key)).await?;
            }
            let csr = csr_der(domain, &key)?;
            order.finalize_csr(&csr).await.map_err(|e| ca_error(format!("finalize the order for {domain}"), e))?;
            key_pem = Some(key);
        }
        let Some(key_pem) = key_pem else {
            return Err(AcmeError::Authorization {
                domain: domain.clone(),
                reason: "the order is past finalization but its key is unknown; the next attempt starts a new order"
                    .to_string(),
            });
        };
        let fullchain_pem = order
            .poll_certificate(&CERT_POLICY)
            .await
            .map_err(|e| ca_error(format!("download the certificate for {domain}"), e))?;
        let not_after = check_chain(domain, &fullchain_pem)?;
        check_key(domain, &fullchain_pem, &key_pem)?;
        info!(%domain, not_after = %not_after, "issued a certificate");
        Ok(Issued { fullchain_pem, key_pem, not_after })
    })
    .await
}

/// The order journaled by an earlier process, when it can be taken up where it was left:
/// validated (ready), or finalized with its key journaled (processing, valid). An order still
/// pending is given up (its validation starts afresh with a new order); so is one that is gone,
/// failed or unreadable.
async fn resume(account: &Account, domain: &DomainName, dir: Option<&Path>) -> Option<(Order, Option<Secret>)> {
    let dir = dir?;
    let journal = read_journal(dir, domain)?;
    let key = journal.key_pem.map(Secret::new);
    match account.inner.order(journal.order.clone()).await {
        Ok(mut order) => {
            let status = order.state().status;
            let usable = match status {
                OrderStatus::Ready => true,
                OrderStatus::Processing | OrderStatus::Valid => key.is_some(),
                _ => false,
            };
            if usable {
                info!(%domain, order = %journal.order, status = ?status, "resuming the ACME order left by an earlier run");
                return Some((order, key));
            }
            debug!(%domain, order = %journal.order, status = ?status, "not resuming the journaled ACME order");
        }
        Err(e) => debug!(%domain, order = %journal.order, error = %ca_text(&e), "the journaled ACME order is gone"),
    }
    clear_journal(dir, domain);
    None
}

/// An RFC 9773 identifier (`aki.serial`) as instant-acme's type.
fn certificate_identifier(id: &str) -> Option<CertificateIdentifier<'static>> {
    let (aki, serial) = id.split_once('.')?;
    Some(CertificateIdentifier { authority_key_identifier: aki.to_string().into(), serial: serial.to_string().into() })
}

// --- ACME Renewal Information (RFC 9773)

/// A suggested renewal window, as the CA sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestedWindow {
    pub start: time::OffsetDateTime,
    pub end: time::OffsetDateTime,
    pub explanation_url: Option<String>,
}

/// The CA's suggested renewal window for the certificate `cert_id` (`aki.serial`) and how long
/// to cache it (the CA's Retry-After). `Ok(None)` when the CA does not offer ARI.
pub async fn renewal_info(account: &Account, cert_id: &str) -> Result<Option<(SuggestedWindow, Duration)>, AcmeError> {
    let step = || format!("fetch the renewal information of certificate {cert_id}");
    let Some(id) = certificate_identifier(cert_id) else {
        return Err(ca_error(step(), instant_acme::Error::Other("not an ARI certificate identifier".into())));
    };
    with_capture(async {
        match account.inner.renewal_info(&id).await {
            Ok((info, retry_after)) => Ok(Some((
                SuggestedWindow {
                    start: info.suggested_window.start,
                    end: info.suggested_window.end,
                    explanation_url: info.explanation_url,
                },
                retry_after,
            ))),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(ca_error(step(), e)),
        }
    })
    .await
}

/// Presents and readies each pending authorization's challenge, then waits for the order to be
/// ready. Every response handed to the solver is pushed to `presented` first.
async fn authorize(
    order: &mut Order,
    domain: &DomainName,
    solver: &impl Solver,
    presented: &mut Vec<ChallengeResponse>,
) -> Result<(), AcmeError> {
    let kind = solver.kind();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| ca_error(format!("fetch the authorization for {domain}"), e))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            status => {
                let reason = format!("it is {status:?}; the next attempt starts a new order").to_lowercase();
                return Err(AcmeError::Authorization { domain: domain.clone(), reason });
            }
        }
        let name = match &authz.identifier().identifier {
            Identifier::Dns(name) => name.clone(),
            other => {
                let reason = format!("it is for {other:?}, not a DNS name");
                return Err(AcmeError::Authorization { domain: domain.clone(), reason });
            }
        };
        let offered = authz.challenges.iter().map(|c| challenge_name(&c.r#type)).collect::<Vec<_>>().join(", ");
        let Some(mut challenge) = authz.challenge(kind.acme_type()) else {
            return Err(AcmeError::NoChallenge { domain: domain.clone(), kind, offered });
        };
        let key_authorization = challenge.key_authorization();
        let response = match kind {
            ChallengeKind::Http01 => ChallengeResponse::Http01 {
                domain: name,
                token: challenge.token.clone(),
                key_authorization: key_authorization.as_str().to_string(),
            },
            ChallengeKind::Dns01 => ChallengeResponse::Dns01 {
                record: format!("_acme-challenge.{name}"),
                domain: name,
                value: key_authorization.dns_value(),
            },
        };
        presented.push(response.clone());
        solver.present(&response).await.map_err(|source| AcmeError::Present {
            domain: domain.clone(),
            kind,
            source,
        })?;
        challenge.set_ready().await.map_err(|e| ca_error(format!("start the {kind} validation of {domain}"), e))?;
    }

    match order.poll_ready(&READY_POLICY).await {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(_) => Err(validation_error(order, domain, kind, None).await),
        Err(instant_acme::Error::Api(problem)) => Err(validation_error(order, domain, kind, Some(problem)).await),
        Err(e) => Err(ca_error(format!("wait for the {kind} validation of {domain}"), e)),
    }
}

/// The order is invalid: find what the CA said about the challenge (more precise than the
/// order's problem, if it has one).
async fn validation_error(
    order: &mut Order,
    domain: &DomainName,
    kind: ChallengeKind,
    order_problem: Option<Problem>,
) -> AcmeError {
    let mut problem = None;
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            problem = state.challenges.iter().find_map(|c| c.error.clone());
            if problem.is_some() {
                break;
            }
        }
    }
    AcmeError::Validation { domain: domain.clone(), kind, problem: problem.or(order_problem) }
}

fn challenge_name(kind: &ChallengeType) -> String {
    match kind {
        ChallengeType::Http01 => "http-01".to_string(),
        ChallengeType::Dns01 => "dns-01".to_string(),
        ChallengeType::TlsAlpn01 => "tls-alpn-01".to_string(),
        ChallengeType::DeviceAttest01 => "device-attest-01".to_string(),
        ChallengeType::Unknown(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// Runs blocking file work (fsyncs) on tokio's blocking pool, so that it never stalls the
/// runtime's few worker threads and with them every other order's HTTP exchanges.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(directory: &str) -> AcmeSettings {
        AcmeSettings { directory: directory.into(), email: None, eab: None, ca_root: None }
    }

    #[test]
    fn directory_names_and_urls() {
        assert_eq!(settings("letsencrypt").directory_url().unwrap(), LETSENCRYPT);
        assert_eq!(settings(" letsencrypt-staging ").directory_url().unwrap(), LETSENCRYPT_STAGING);
        assert_eq!(settings("https://ca.test/dir").directory_url().unwrap(), "https://ca.test/dir");
        for bad in ["", "http://ca.test/dir", "https://", "lets-encrypt", "https://a b"] {
            let err = settings(bad).directory_url().unwrap_err();
            assert!(matches!(err, AcmeError::Directory { .. }), "{bad:?}");
            assert!(err.to_string().contains("letsencrypt-staging"), "{err}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let hmac = "c2VjcmV0LWhtYWMta2V5LXZhbHVl";
        let mut s = settings("letsencrypt");
        s.eab = Some(("kid-1".into(), Secret::new(hmac)));
        assert!(!format!("{s:?}").contains(hmac));
        let err = eab_key("kid-1", &Secret::new("not base64!")).err().unwrap();
        assert!(!format!("{err} {err:?}").contains("not base64!"));
        assert!(eab_key("kid-1", &Secret::new(hmac)).is_ok());
        assert!(eab_key("kid-1", &Secret::new(format!("{hmac}=="))).is_ok(), "padding is tolerated");
        let issued = Issued {
            fullchain_pem: "CHAIN".into(),
            key_pem: Secret::new("PRIVATE KEY"),
            not_after: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn account_path_is_stable_and_distinct() {
        let dir = Path::new("/store/accounts");
        let a = account_path(dir, LETSENCRYPT, Some("a@example.com"));
        assert_eq!(a, account_path(dir, LETSENCRYPT, Some("a@example.com")));
        assert_eq!(a.parent().unwrap(), Path::new("/store/accounts"));
        assert_ne!(a, account_path(dir, LETSENCRYPT, Some("b@example.com")));
        assert_ne!(a, account_path(dir, LETSENCRYPT_STAGING, Some("a@example.com")));
        assert_ne!(a, account_path(dir, LETSENCRYPT, None));
        // Pinned: changing the hash would register new accounts on upgrade.
        assert_eq!(account_path(dir, LETSENCRYPT, None), account_path(dir, LETSENCRYPT, Some("")));
        assert_eq!(account_path(dir, LETSENCRYPT, None), Path::new("/store/accounts/379e4423237a4d94.json"));
    }

    #[test]
    fn corrupt_credentials_do_not_echo_content() {
        let path = Path::new("/store/accounts/x.json");
        let secret_like =
            r#"{"id":"https://ca/acct/1","key_pkcs8":{"oops":"SECRETVALUE"},"directory":"https://ca/dir"}"#;
        let err = parse_credentials(path, secret_like.as_bytes(), "https://ca/dir").err().unwrap();
        assert!(!format!("{err} {err:?}").contains("SECRETVALUE"), "{err}");
        assert!(err.to_string().contains("move it away"), "{err}");
        let other = r#"{"id":"x","key_pkcs8":"AAAA","directory":"https://other/dir"}"#;
        let err = parse_credentials(path, other.as_bytes(), "https://ca/dir").err().unwrap();
        assert!(err.to_string().contains("https://other/dir"), "{err}");
    }

    #[test]
    fn wildcards_need_dns() {
        let wildcard = DomainName::parse("*.example.com").unwrap();
        let err = check_solver(&wildcard, ChallengeKind::Http01).unwrap_err();
        assert_eq!(
            err.to_string(),
            "*.example.com: HTTP-01 cannot validate a wildcard name; use DNS-01 for wildcard domains"
        );
        assert!(check_solver(&wildcard, ChallengeKind::Dns01).is_ok());
        assert!(check_solver(&DomainName::parse("example.com").unwrap(), ChallengeKind::Http01).is_ok());
    }

    fn problem(kind: &str, status: u16) -> Problem {
        Problem {
            r#type: Some(kind.into()),
            detail: Some("too many certificates".into()),
            status: Some(status),
            subproblems: vec![],
        }
    }

    #[test]
    fn rate_limits_and_retry_after() {
        let at = SystemTime::now() + Duration::from_secs(3600);
        let err = AcmeError::Ca {
            step: "create an order for a.test".into(),
            source: instant_acme::Error::Api(problem(RATE_LIMITED, 429)),
            status: Some(429),
            retry_at: Some(at),
        };
        assert!(err.is_rate_limited());
        let wait = err.retry_after().unwrap();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600), "{wait:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot create an order for a.test at the ACME CA: "), "{msg}");
        assert!(
            msg.contains("too many certificates") && msg.contains(RATE_LIMITED) && msg.contains("retry after"),
            "{msg}"
        );
        assert!(!msg.ends_with('.'), "{msg}");

        let other = AcmeError::Ca {
            step: "x".into(),
            source: instant_acme::Error::Api(problem("urn:ietf:params:acme:error:malformed", 400)),
            status: Some(400),
            retry_at: None,
        };
        assert!(!other.is_rate_limited());
        assert_eq!(other.retry_after(), None);
        let bare_429 = AcmeError::Ca { step: "x".into(), source: "no JSON".into(), status: Some(429), retry_at: None };
        assert!(bare_429.is_rate_limited());
    }

    #[test]
    fn retry_after_header_forms() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        let at = parse_retry_after(&headers).unwrap();
        let secs = at.duration_since(SystemTime::now()).unwrap().as_secs();
        assert!((118..=120).contains(&secs), "{secs}");
        headers.insert(http::header::RETRY_AFTER, "Sat, 06 Nov 2094 08:49:37 GMT".parse().unwrap());
        assert!(parse_retry_after(&headers).unwrap() > SystemTime::now());
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[tokio::test]
    async fn the_last_error_response_reaches_the_error() {
        let response = |status: u16, retry_after: Option<&str>| {
            let mut builder = http::Response::builder().status(status);
            if let Some(value) = retry_after {
                builder = builder.header(http::header::RETRY_AFTER, value);
            }
            Ok(BytesResponse::from(builder.body(BodyWrapper::<Bytes>::default()).unwrap()))
        };
        let api = || instant_acme::Error::Api(problem(RATE_LIMITED, 429));
        let err = with_capture(async {
            record(&response(200, None));
            record(&response(429, Some("30")));
            ca_error("create an order for a.test", api())
        })
        .await;
        assert!(matches!(err, AcmeError::Ca { status: Some(429), retry_at: Some(_), .. }), "{err:?}");
        let wait = err.retry_after().unwrap();
        assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30), "{wait:?}");
        assert!(err.is_rate_limited());

        // A later successful response clears it: the error that follows did not come from HTTP.
        let err = with_capture(async {
            record(&response(429, Some("30")));
            record(&response(200, Some("30")));
            ca_error("x", "broken".into())
        })
        .await;
        assert!(matches!(err, AcmeError::Ca { status: None, retry_at: None, .. }), "{err:?}");
        // Outside a capture scope nothing is recorded and nothing panics.
        record(&response(429, Some("30")));
        assert!(matches!(ca_error("x", api()), AcmeError::Ca { status: None, retry_at: None, .. }));
    }

    struct Nothing;
    impl Solver for Nothing {
        fn kind(&self) -> ChallengeKind {
            ChallengeKind::Dns01
        }
        async fn present(&self, _: &ChallengeResponse) -> Result<(), SolverError> {
            Ok(())
        }
        async fn cleanup(&self, _: &ChallengeResponse) -> Result<(), SolverError> {
            Ok(())
        }
    }

    /// Compile-time check: the futures can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(account: &Account, domain: &DomainName, settings: &AcmeSettings) {
        fn send<T: Send>(_: &T) {}
        send(&issue(account, domain, &Nothing));
        send(&self::account(Path::new("/"), settings));
    }
}

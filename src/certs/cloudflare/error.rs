//! What can go wrong talking to Cloudflare or reading its settings; never with a credential.

use super::*;

/// Everything that can go wrong talking to Cloudflare or reading its settings.
#[derive(Debug, Error)]
pub enum CloudflareError {
    #[error("{first} and {second} are both set; set only one of them")]
    BothSet { first: &'static str, second: &'static str },
    #[error(
        "both an API token (CLOUDFLARE_API_TOKEN or CLOUDFLARE_API_TOKEN_FILE) and a Global API Key (CLOUDFLARE_EMAIL, \
         CLOUDFLARE_API_KEY or CLOUDFLARE_API_KEY_FILE) are set; set only one kind (a token with Zone:DNS:Edit is recommended)"
    )]
    MixedCredentials,
    #[error(
        "{set} is set but {missing} is not; the Global API Key needs both CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY \
         (or CLOUDFLARE_API_KEY_FILE), or use a scoped CLOUDFLARE_API_TOKEN instead"
    )]
    MissingPair { set: &'static str, missing: &'static str },
    /// (`reason` is in the message, so it is not also a `source`: a chain would say it twice.)
    #[error("cannot read the file named by {variable} ({path}): {reason}")]
    ReadSecretFile { variable: &'static str, path: PathBuf, reason: io::Error },
    #[error("the file named by {variable} ({path}) is empty; it must hold the credential")]
    EmptySecretFile { variable: &'static str, path: PathBuf },
    #[error("{variable} is not usable: {reason}")]
    InvalidValue { variable: String, reason: String },
    #[error("the Cloudflare API base URL {url:?} is not usable: {reason}")]
    InvalidApiBase { url: String, reason: String },
    #[error("cannot set up the HTTP client for Cloudflare: {reason}")]
    HttpClient { reason: String },
    #[error("{domain:?} is not a domain name Cloudflare can hold: {reason}")]
    InvalidDomain { domain: String, reason: String },
    #[error(
        "TXT record name {name:?} is not inside zone {zone}; Cloudflare would append the zone name, so pass a name \
         that ends with .{zone}"
    )]
    NameOutsideZone { name: String, zone: String },
    #[error(
        "no active Cloudflare zone found for {domain}; tried {}; check that the domain's zone is active in the Cloudflare \
         account and that the credentials can see it (an API token needs Zone:Zone:Read and Zone:DNS:Edit for that zone)",
        tried.join(", ")
    )]
    ZoneNotFound { domain: String, tried: Vec<String> },
    #[error("cannot reach the Cloudflare API at {api}{} while {operation}: {reason}", if *timed_out { " (timed out)" } else { "" })]
    Transport { api: String, operation: String, reason: String, timed_out: bool },
    #[error("Cloudflare rejected the credentials (HTTP {status}) while {operation}: {detail}; {hint}")]
    Auth { operation: String, status: u16, detail: String, codes: Vec<i64>, hint: &'static str },
    #[error(
        "Cloudflare is rate limiting this client (HTTP 429) while {operation}: {detail}; {}",
        match retry_after { Some(d) => format!("retry after {} s", d.as_secs()), None => "retry later".to_string() }
    )]
    RateLimited { operation: String, retry_after: Option<Duration>, detail: String, codes: Vec<i64> },
    #[error("Cloudflare had a server error (HTTP {status}) while {operation}: {detail}; this is usually temporary, retry later")]
    Server { operation: String, status: u16, detail: String, codes: Vec<i64> },
    #[error("Cloudflare refused the request (HTTP {status}) while {operation}: {detail}")]
    Api { operation: String, status: u16, detail: String, codes: Vec<i64> },
    #[error("unexpected answer from Cloudflare (HTTP {status}) while {operation}: {reason}")]
    UnexpectedResponse { operation: String, status: u16, reason: String },
}

impl CloudflareError {
    /// True when the same request may succeed later: network trouble, timeouts, HTTP 5xx, 429.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CloudflareError::Transport { .. } | CloudflareError::RateLimited { .. } | CloudflareError::Server { .. }
        )
    }

    /// How long Cloudflare asked us to wait (`Retry-After` on a 429), when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudflareError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when Cloudflare rejected the credentials.
    pub fn is_auth(&self) -> bool {
        matches!(self, CloudflareError::Auth { .. })
    }

    /// Cloudflare's error codes in the answer (including nested `error_chain` codes), e.g. 81058
    /// "An identical record already exists".
    pub fn api_codes(&self) -> &[i64] {
        match self {
            CloudflareError::Auth { codes, .. }
            | CloudflareError::RateLimited { codes, .. }
            | CloudflareError::Server { codes, .. }
            | CloudflareError::Api { codes, .. } => codes,
            _ => &[],
        }
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudflareError::Auth { status, .. }
            | CloudflareError::Server { status, .. }
            | CloudflareError::Api { status, .. }
            | CloudflareError::UnexpectedResponse { status, .. } => Some(*status),
            CloudflareError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }
}

//! The errors of the ACME layer: what failed, the CA's problem document, its rate limits.

use super::*;

#[derive(Debug, Error)]
pub enum AcmeError {
    #[error("the ACME directory {value:?} is neither an https:// URL nor one of: letsencrypt, letsencrypt-staging")]
    Directory { value: String },
    #[error("cannot use {path} as the ACME CA root: {reason}")]
    CaRoot { path: PathBuf, reason: String },
    #[error(
        "cannot load the system's trusted root certificates ({reason}); install the ca-certificates package or set the ACME CA root"
    )]
    SystemRoots { reason: String },
    #[error("the EAB HMAC key for key id {kid:?} is not base64url; copy it exactly as the CA shows it")]
    EabKey { kid: String },
    #[error("cannot {action} the ACME account file {path}: {source}")]
    AccountStore {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the ACME account file {path} is unusable ({reason}); move it away to register a new account")]
    AccountFile { path: PathBuf, reason: String },
    #[error("cannot {step} at the ACME CA: {}{}", ca_text(.source), rate_hint(*.status, *.retry_at))]
    Ca {
        step: String,
        #[source]
        source: instant_acme::Error,
        /// The HTTP status of the CA's last response, when it was an error.
        status: Option<u16>,
        /// When the CA said to try again (Retry-After), if it did.
        retry_at: Option<SystemTime>,
    },
    #[error("{domain}: HTTP-01 cannot validate a wildcard name; use DNS-01 for wildcard domains")]
    WildcardNeedsDns { domain: DomainName },
    #[error("the ACME CA offers no {kind} challenge for {domain} (offered: {offered})")]
    NoChallenge { domain: DomainName, kind: ChallengeKind, offered: String },
    #[error("cannot complete the ACME authorization for {domain}: {reason}")]
    Authorization { domain: DomainName, reason: String },
    #[error("cannot present the {kind} challenge for {domain}: {source}")]
    Present {
        domain: DomainName,
        kind: ChallengeKind,
        #[source]
        source: SolverError,
    },
    #[error("the ACME CA could not validate the {kind} challenge for {domain}: {}", describe(.problem.as_ref()))]
    Validation { domain: DomainName, kind: ChallengeKind, problem: Option<Problem> },
    #[error("the ACME CA returned an unusable certificate for {domain}: {reason}")]
    BadCertificate { domain: DomainName, reason: String },
    #[error("cannot {action} the journal of the order in progress for {domain} ({path}): {source}")]
    Journal {
        domain: DomainName,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the certificate for {domain} in {dir}: {source}")]
    Write {
        domain: DomainName,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(super) fn rate_hint(status: Option<u16>, retry_at: Option<SystemTime>) -> String {
    match (status, retry_at) {
        (_, Some(at)) => format!(" (retry after {})", humantime::format_rfc3339_seconds(at)),
        (Some(429), None) => " (rate limited)".to_string(),
        _ => String::new(),
    }
}

pub(super) fn ca_text(error: &instant_acme::Error) -> String {
    match error {
        instant_acme::Error::Api(problem) => describe(Some(problem)),
        other => {
            // hyper's "client error (Connect)" hides the cause ("Connection refused") in its source
            // chain; name it.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

pub(super) fn describe(problem: Option<&Problem>) -> String {
    let Some(problem) = problem else {
        return "the authorization is invalid and the CA gave no reason".to_string();
    };
    let mut text = problem.detail.clone().unwrap_or_else(|| "no detail given".to_string());
    if let Some(kind) = &problem.r#type {
        text.push_str(&format!(" ({kind})"));
    }
    for sub in &problem.subproblems {
        text.push_str(&format!("; {sub}"));
    }
    text
}

impl AcmeError {
    /// The CA's problem document, when the error came from the CA.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            AcmeError::Ca { source: instant_acme::Error::Api(problem), .. } => Some(problem),
            AcmeError::Validation { problem, .. } => problem.as_ref(),
            _ => None,
        }
    }

    /// When the CA asked to be tried again, if it did.
    pub fn retry_at(&self) -> Option<SystemTime> {
        match self {
            AcmeError::Ca { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    /// How long the CA asked to wait before trying again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Ca { retry_at: Some(at), .. } => {
                Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
            }
            _ => None,
        }
    }

    /// True when the CA refused because of a rate limit: back off (see [`AcmeError::retry_after`]).
    pub fn is_rate_limited(&self) -> bool {
        let status_429 = matches!(self, AcmeError::Ca { status: Some(429), .. });
        let problem =
            self.problem().is_some_and(|p| p.r#type.as_deref() == Some(RATE_LIMITED) || p.status == Some(429));
        status_429 || problem
    }
}

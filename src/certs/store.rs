//! The certificate store: certbot's layout (`live/<name>/fullchain.pem`, `privkey.pem`) plus the
//! agent's own state under `smart-proxy/`: per-domain renewal state (failures, backoff, last error)
//! persisted across restarts, and per-domain lock files so that one order per domain runs at a
//! time, also across two agents sharing the store.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use super::placeholder::PLACEHOLDER_ORG;
use crate::fsutil::write_atomic;
use crate::routes::DomainName;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the certificate on disk says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub issuer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// A self-signed placeholder written by the agent, not a real certificate.
    pub placeholder: bool,
}

impl CertInfo {
    /// Whole days left (negative when expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }
}

/// Per-domain renewal state, persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    /// Consecutive failed attempts (0 after a success).
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds before which no new attempt is made.
    pub next_try: Option<i64>,
    pub last_attempt: Option<i64>,
}

/// Backoff after `failures` consecutive failures: 5 min doubling up to 24 h; a CA's Retry-After
/// wins when longer.
pub fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let base = Duration::from_secs(300).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    base.min(Duration::from_secs(24 * 3600)).max(retry_after.unwrap_or_default())
}

#[derive(Debug, Clone)]
pub struct CertStore {
    pub dir: PathBuf,
}

/// A held per-domain lock; released when dropped (and by the kernel if the process dies, so a
/// lock can never go stale).
pub struct DomainLock {
    _file: nix::fcntl::Flock<File>,
}

impl CertStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertStore { dir: dir.into() }
    }

    pub fn live_dir(&self, domain: &DomainName) -> PathBuf {
        self.dir.join("live").join(domain.cert_name())
    }

    fn state_path(&self, domain: &DomainName) -> PathBuf {
        self.dir.join("smart-proxy/state").join(format!("{}.json", domain.file_stem()))
    }

    /// Reads the certificate at the domain's certbot path, if any.
    pub fn info(&self, domain: &DomainName) -> Option<CertInfo> {
        let pem = std::fs::read(self.live_dir(domain).join("fullchain.pem")).ok()?;
        parse_info(&pem)
    }

    pub fn state(&self, domain: &DomainName) -> DomainState {
        std::fs::read(self.state_path(domain)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save_state(&self, domain: &DomainName, state: &DomainState) -> Result<(), StoreError> {
        let path = self.state_path(domain);
        let io = |action, source| StoreError::Io { action, path: path.clone(), source };
        std::fs::create_dir_all(path.parent().expect("state path has a parent")).map_err(|e| io("create", e))?;
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomic(&path, &bytes, 0o600).map_err(|e| io("write", e))
    }

    /// Takes the domain's lock without waiting; `None` when another order for it is running.
    pub fn try_lock(&self, domain: &DomainName) -> Result<Option<DomainLock>, StoreError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.lock_path(domain);
        let io = |action, source| StoreError::Io { action, path: path.clone(), source };
        std::fs::create_dir_all(path.parent().expect("lock path has a parent")).map_err(|e| io("create", e))?;
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io("open", e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(DomainLock { _file: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io("lock", std::io::Error::from(errno))),
        }
    }

    /// True while another order holds the domain's lock. Creates nothing (for `certs list`).
    pub fn is_locked(&self, domain: &DomainName) -> bool {
        use nix::fcntl::{Flock, FlockArg};
        let Ok(file) = File::open(self.lock_path(domain)) else { return false };
        matches!(Flock::lock(file, FlockArg::LockExclusiveNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK)))
    }

    fn lock_path(&self, domain: &DomainName) -> PathBuf {
        self.dir.join("smart-proxy/locks").join(format!("{}.lock", domain.file_stem()))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Issuer, expiry and placeholder-ness of the first certificate in a PEM chain.
pub fn parse_info(pem: &[u8]) -> Option<CertInfo> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()?;
    let placeholder = cert.subject().iter_organization().any(|o| o.as_str().ok() == Some(PLACEHOLDER_ORG));
    Some(CertInfo { issuer: cert.issuer().to_string(), not_after, placeholder })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        assert_eq!(backoff(1, None), Duration::from_secs(300));
        assert_eq!(backoff(2, None), Duration::from_secs(600));
        assert_eq!(backoff(30, None), Duration::from_secs(86400));
        assert_eq!(backoff(1, Some(Duration::from_secs(3600))), Duration::from_secs(3600));
    }

    #[test]
    fn placeholder_info_state_round_trip_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        let domain = DomainName::parse("a.example.com").unwrap();
        assert_eq!(store.info(&domain), None);
        super::super::placeholder::write(dir.path(), &domain).unwrap();
        let info = store.info(&domain).unwrap();
        assert!(info.placeholder);
        assert!((6..=7).contains(&info.days_left(OffsetDateTime::now_utc())));

        let state =
            DomainState { failures: 2, last_error: Some("boom".into()), next_try: Some(1), last_attempt: Some(0) };
        store.save_state(&domain, &state).unwrap();
        assert_eq!(store.state(&domain), state);

        assert!(!store.is_locked(&domain));
        let held = store.try_lock(&domain).unwrap().expect("free");
        assert!(store.try_lock(&domain).unwrap().is_none(), "held by us: a second taker waits");
        assert!(store.is_locked(&domain));
        drop(held);
        assert!(!store.is_locked(&domain));
        assert!(store.try_lock(&domain).unwrap().is_some(), "released on drop");
    }
}

/// One line of `certs list`.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub domain: String,
    pub issuer: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    pub days_left: Option<i64>,
    /// `valid`, `renew-due`, `placeholder`, `missing`, `renewing` or `failing`.
    pub status: &'static str,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_try: Option<OffsetDateTime>,
}

impl CertStore {
    /// The status of each domain's certificate, for `certs list`.
    pub fn status(&self, domains: &[DomainName], renew_days: i64, now: OffsetDateTime) -> Vec<CertStatus> {
        domains
            .iter()
            .map(|domain| {
                let info = self.info(domain);
                let state = self.state(domain);
                let renewing = self.is_locked(domain);
                let days_left = info.as_ref().map(|i| i.days_left(now));
                let status = match (&info, renewing, state.failures) {
                    (_, true, _) => "renewing",
                    (_, false, f) if f > 0 => "failing",
                    (None, ..) => "missing",
                    (Some(i), ..) if i.placeholder => "placeholder",
                    (Some(_), ..) if days_left.unwrap_or(0) <= renew_days => "renew-due",
                    _ => "valid",
                };
                CertStatus {
                    domain: domain.to_string(),
                    issuer: info.as_ref().map(|i| i.issuer.clone()),
                    not_after: info.as_ref().map(|i| i.not_after),
                    days_left,
                    status,
                    last_error: state.last_error.filter(|_| state.failures > 0),
                    next_try: state.next_try.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
                }
            })
            .collect()
    }
}

/// `certs list` as a table.
pub fn status_table(rows: &[CertStatus]) -> String {
    use std::fmt::Write;
    if rows.is_empty() {
        return "No TLS domains.\n".into();
    }
    let fmt_time = |t: &Option<OffsetDateTime>| {
        t.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_else(|| "-".into())
    };
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let mut status = r.status.to_string();
            if let Some(e) = &r.last_error {
                let _ = write!(status, ": {e} (next try {})", fmt_time(&r.next_try));
            }
            [
                r.domain.clone(),
                r.issuer.clone().unwrap_or_else(|| "-".into()),
                fmt_time(&r.not_after),
                r.days_left.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                status,
            ]
        })
        .collect();
    let header = ["DOMAIN", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATUS"];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(String::from)).chain(cells) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

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

use crate::certs::layout::Layout;

use super::placeholder::PLACEHOLDER_ORG;
use crate::fsutil::{write_atomic, write_atomic_unsynced};
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

/// What the CA's ACME Renewal Information (RFC 9773) said about one certificate, cached until
/// the CA's Retry-After. Persisted per domain next to its renewal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriState {
    /// The certificate this is about (see [`CertInfo::ari_id`]); stale once the certificate on
    /// disk is another one.
    pub cert_id: String,
    /// Unix seconds after which the window is fetched again.
    pub next_fetch: i64,
    /// The suggested window; `None` when the CA answered but has none for this certificate
    /// (it did not issue it).
    pub window: Option<RenewalWindow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalWindow {
    /// Unix seconds.
    pub start: i64,
    pub end: i64,
    /// The random point in the window chosen for this certificate (RFC 9773 section 4.2): the
    /// renewal starts once it has passed.
    pub renew_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<String>,
}

impl RenewalWindow {
    /// A window from `start` to `end` with `renew_at` chosen uniformly in it by `random`
    /// (a uniform `u64`). A window that ends before it starts is treated as its start.
    pub fn new(start: i64, end: i64, explanation_url: Option<String>, random: u64) -> Self {
        let span = end.saturating_sub(start).max(0) as u64;
        let offset = if span == 0 { 0 } else { random % (span + 1) };
        RenewalWindow { start, end: end.max(start), renew_at: start + offset as i64, explanation_url }
    }

    /// The same window, keeping the point already chosen when the CA's window did not change.
    pub fn keep_point(self, previous: Option<&RenewalWindow>) -> Self {
        match previous {
            Some(p) if p.start == self.start && p.end == self.end => RenewalWindow { renew_at: p.renew_at, ..self },
            _ => self,
        }
    }
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

    /// The store's paths.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.dir)
    }

    pub fn live_dir(&self, domain: &DomainName) -> PathBuf {
        self.layout().live_dir(domain)
    }

    fn state_path(&self, domain: &DomainName) -> PathBuf {
        self.layout().state_file(domain)
    }

    fn ari_path(&self, domain: &DomainName) -> PathBuf {
        self.layout().ari_file(domain)
    }

    /// Where an order in progress is journaled (its URL, then the key of its CSR), so that a
    /// restarted agent resumes it instead of placing another.
    pub fn pending_dir(&self) -> PathBuf {
        self.layout().pending_dir()
    }

    /// The cached renewal information of the domain's certificate, if any (for whichever
    /// certificate it was fetched: compare `cert_id` with [`CertStore::ari_id`]).
    pub fn ari(&self, domain: &DomainName) -> Option<AriState> {
        std::fs::read(self.ari_path(domain)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The cached renewal information, only when it is about the certificate on disk now.
    pub fn current_ari(&self, domain: &DomainName) -> Option<AriState> {
        let ari = self.ari(domain)?;
        (self.ari_id(domain).as_deref() == Some(ari.cert_id.as_str())).then_some(ari)
    }

    /// The RFC 9773 identifier of the domain's certificate on disk (`None` for a placeholder, or
    /// a certificate without an authority key identifier).
    pub fn ari_id(&self, domain: &DomainName) -> Option<String> {
        let pem = std::fs::read(self.layout().fullchain(domain)).ok()?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        let placeholder = cert.subject().iter_organization().any(|o| o.as_str().ok() == Some(PLACEHOLDER_ORG));
        if placeholder {
            return None;
        }
        ari_id(&cert)
    }

    pub fn save_ari(&self, domain: &DomainName, ari: &AriState) -> Result<(), StoreError> {
        let path = self.ari_path(domain);
        let io = |action, source| StoreError::Io { action, path: path.clone(), source };
        std::fs::create_dir_all(path.parent().expect("ari path has a parent")).map_err(|e| io("create", e))?;
        let bytes = serde_json::to_vec_pretty(ari).expect("ARI state serializes");
        write_atomic(&path, &bytes, 0o644).map_err(|e| io("write", e))
    }

    /// Reads the certificate at the domain's certbot path, if any.
    pub fn info(&self, domain: &DomainName) -> Option<CertInfo> {
        let pem = std::fs::read(self.layout().fullchain(domain)).ok()?;
        parse_info(&pem)
    }

    pub fn state(&self, domain: &DomainName) -> DomainState {
        std::fs::read(self.state_path(domain)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Saves the domain's renewal state, durably (a backoff must survive a crash).
    pub fn save_state(&self, domain: &DomainName, state: &DomainState) -> Result<(), StoreError> {
        self.write_state(domain, state, true)
    }

    /// Saves a state whose loss in a crash is harmless (no failure recorded, none cleared: only
    /// `last_attempt` would be lost): atomically, without an fsync.
    pub fn save_state_unsynced(&self, domain: &DomainName, state: &DomainState) -> Result<(), StoreError> {
        self.write_state(domain, state, false)
    }

    fn write_state(&self, domain: &DomainName, state: &DomainState, durable: bool) -> Result<(), StoreError> {
        let path = self.state_path(domain);
        let io = |action, source| StoreError::Io { action, path: path.clone(), source };
        std::fs::create_dir_all(path.parent().expect("state path has a parent")).map_err(|e| io("create", e))?;
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        let write = if durable { write_atomic } else { write_atomic_unsynced };
        write(&path, &bytes, 0o600).map_err(|e| io("write", e))
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
        self.layout().lock_file(domain)
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

/// The RFC 9773 certificate identifier: the authority key identifier's `keyIdentifier` and the
/// DER serial number, each base64url without padding, joined by a dot.
pub fn ari_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use base64::Engine as _;
    use x509_parser::extensions::ParsedExtension;
    let aki = cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
        _ => None,
    })?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Some(format!("{}.{}", b64.encode(aki), b64.encode(cert.tbs_certificate.raw_serial())))
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
        let clean = DomainState { last_attempt: Some(5), ..Default::default() };
        store.save_state_unsynced(&domain, &clean).unwrap();
        assert_eq!(store.state(&domain), clean);

        assert!(!store.is_locked(&domain));
        let held = store.try_lock(&domain).unwrap().expect("free");
        assert!(store.try_lock(&domain).unwrap().is_none(), "held by us: a second taker waits");
        assert!(store.is_locked(&domain));
        drop(held);
        assert!(!store.is_locked(&domain));
        assert!(store.try_lock(&domain).unwrap().is_some(), "released on drop");
    }

    #[test]
    fn a_lock_left_by_a_killed_process_does_not_block() {
        use std::os::unix::process::CommandExt as _;
        // Another process (util-linux's flock(1)) takes the domain's lock and is killed with
        // SIGKILL: its lock file stays behind, the lock itself goes with the process.
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        let domain = DomainName::parse("stale.example.com").unwrap();
        drop(store.try_lock(&domain).unwrap());
        // In a process group of its own, so that SIGKILL reaches flock(1) and the `sleep` that
        // inherited the locked descriptor, like a killed agent and everything it started.
        let mut holder = std::process::Command::new("flock")
            .arg(store.lock_path(&domain))
            .args(["sleep", "60"])
            .process_group(0)
            .spawn()
            .expect("run flock(1) from util-linux");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.is_locked(&domain) {
            assert!(std::time::Instant::now() < deadline, "flock(1) did not take the lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(store.try_lock(&domain).unwrap().is_none(), "held by the other process");
        let group = nix::unistd::Pid::from_raw(holder.id() as i32);
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
        holder.wait().unwrap();
        // The group's last member (the sleep) may outlive flock(1) by a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.is_locked(&domain) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(store.lock_path(&domain).exists(), "the lock file is left behind");
        assert!(!store.is_locked(&domain));
        assert!(store.try_lock(&domain).unwrap().is_some(), "a stale lock file does not block");
    }

    #[test]
    fn renewal_window_point_is_inside_and_kept_while_the_window_stays() {
        for random in [0, 1, 599, 600, 601, u64::MAX] {
            let w = RenewalWindow::new(1000, 1600, None, random);
            assert!((1000..=1600).contains(&w.renew_at), "{w:?}");
        }
        assert_eq!(RenewalWindow::new(1000, 900, None, 7).renew_at, 1000, "an inverted window is its start");
        let first = RenewalWindow::new(1000, 1600, None, 5);
        let again = RenewalWindow::new(1000, 1600, None, 400).keep_point(Some(&first));
        assert_eq!(again.renew_at, first.renew_at);
        let moved = RenewalWindow::new(0, 10, None, 3).keep_point(Some(&first));
        assert_eq!(moved.renew_at, 3, "a new window gets a new point");

        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::new(dir.path());
        let domain = DomainName::parse("a.example.com").unwrap();
        assert_eq!(store.ari(&domain), None);
        let ari = AriState { cert_id: "aki.serial".into(), next_fetch: 5, window: Some(first) };
        store.save_ari(&domain, &ari).unwrap();
        assert_eq!(store.ari(&domain), Some(ari));
    }

    #[test]
    fn status_reads_the_same_in_json_and_text() {
        use Status::*;
        for status in [Valid, RenewDue, Placeholder, Missing, Renewing, Failing] {
            assert_eq!(serde_json::to_value(status).unwrap(), serde_json::Value::String(status.to_string()));
        }
        assert_eq!(RenewDue.to_string(), "renew-due");
    }
}

/// Where a domain's certificate stands, as `certs list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// A certificate from the CA with more than `CERT_RENEWAL_THRESHOLD` days left.
    Valid,
    /// A certificate from the CA that is due for renewal.
    RenewDue,
    /// The agent's self-signed placeholder: no certificate from the CA yet.
    Placeholder,
    /// No certificate at all (nginx has not been given the domain yet).
    Missing,
    /// An order for the domain is running (its lock is held).
    Renewing,
    /// The last order failed; the next try is scheduled (backoff).
    Failing,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Valid => "valid",
            Status::RenewDue => "renew-due",
            Status::Placeholder => "placeholder",
            Status::Missing => "missing",
            Status::Renewing => "renewing",
            Status::Failing => "failing",
        })
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
    pub status: Status,
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
                    (_, true, _) => Status::Renewing,
                    (_, false, f) if f > 0 => Status::Failing,
                    (None, ..) => Status::Missing,
                    (Some(i), ..) if i.placeholder => Status::Placeholder,
                    (Some(_), ..) if days_left.unwrap_or(0) <= renew_days => Status::RenewDue,
                    _ => Status::Valid,
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

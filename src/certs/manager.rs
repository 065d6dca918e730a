//! Issuance and renewal: plan → (lock, DNS check, order, write, record state) per domain with
//! bounded concurrency. The caller reloads nginx once after a batch that issued anything.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use super::acme::{self, AcmeSettings, ChallengeKind, ChallengeResponse, Solver, SolverError};
use super::cloudflare::{Cloudflare, Credentials, RecordId, Zone};
use super::dns::{self, Dns, DnsCheck, Verdict};
use super::plan::{plan, Challenge, Plan, PlanSettings, Reason};
use super::public_ip::{PublicIpDetect, PublicIps};
use super::store::{backoff, AriState, CertStore, DomainState, RenewalWindow};
use crate::routes::DomainName;

/// Expiry warnings start this many days before a certificate expires.
pub const WARN_DAYS: i64 = 14;

/// A CA's Retry-After for renewal information is clamped to this range (RFC 9773 section 4.3.3
/// asks clients to bound it).
const ARI_MIN_REFETCH: Duration = Duration::from_secs(60);
const ARI_MAX_REFETCH: Duration = Duration::from_secs(24 * 3600);

/// A random `u64` from the operating system, for the point chosen in a renewal window (RFC 9773
/// asks for a uniformly random point, so that many clients do not renew at once).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The kernel's generator does not fail once the system has booted; the window's start is
    // still a valid point if it ever did.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// When to try again after `error`, the `failures`-th in a row: (the wait, unix seconds). A CA's
/// rate limit with a Retry-After is waited out exactly (the CA said when; waiting longer only
/// delays the certificate); other failures back off exponentially, at least until any
/// Retry-After. The time is rounded up to the second, so no attempt comes before Retry-After.
fn retry_plan(failures: u32, error: &acme::AcmeError) -> (Duration, i64) {
    let now = std::time::SystemTime::now();
    let retry_at = error.retry_at();
    let wait = match retry_at.and_then(|at| at.duration_since(now).ok()) {
        Some(retry_after) if error.is_rate_limited() => retry_after.max(Duration::from_secs(1)),
        retry_after => backoff(failures, retry_after),
    };
    let at = (now + wait).max(retry_at.unwrap_or(now));
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() as i64 + i64::from(since_epoch.subsec_nanos() > 0);
    (wait, secs)
}

/// How one planned order ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ordered {
    Issued,
    /// Another order for the domain holds its lock; it finishes there.
    Busy,
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub issued: Vec<DomainName>,
    pub failed: Vec<(DomainName, String)>,
    /// Not ordered here: another order for the domain holds its lock (another task or process
    /// sharing the store), and that order finishes there.
    pub busy: Vec<DomainName>,
    pub plan: Plan,
}

/// The certificate settings, checked together.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA (its directory URL checked), the account's email, EAB and a private root.
    pub account: AcmeSettings,
    pub concurrency: usize,
    pub renewal_interval: Duration,
    /// DNS-01 through Cloudflare, when credentials are set (their files read); HTTP-01 otherwise.
    pub dns01: Option<Dns01>,
    /// Name servers for the DNS checks; empty: the system's.
    pub dns_servers: Vec<SocketAddr>,
    pub dns_check: DnsCheck,
    pub public_ip: Vec<IpAddr>,
    pub public_ip_detect: PublicIpDetect,
    /// Where HTTP-01 answers are written.
    pub webroot: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dns01 {
    pub api_base: String,
    pub credentials: Credentials,
    pub propagation_timeout: Duration,
}

pub struct CertManager {
    store: CertStore,
    acme: AcmeSettings,
    solver: AnySolver,
    dns: Dns,
    cloudflare: Option<Cloudflare>,
    dns_check: DnsCheck,
    public_ips: PublicIps,
    renew_days: i64,
    concurrency: usize,
    account: OnceCell<acme::Account>,
}

impl CertManager {
    /// Orders certificates for the TLS domains `domains` holds: when they change (new routes right
    /// away), every `interval`, and when a domain's backoff ends. Each batch of issued
    /// certificates is sent to `issued` (wrapped by `wrap`), so that nginx reloads once per batch.
    pub async fn serve<T: Send + 'static>(
        self,
        mut domains: tokio::sync::watch::Receiver<Vec<DomainName>>,
        issued: tokio::sync::mpsc::Sender<T>,
        wrap: fn(Vec<DomainName>) -> T,
        interval: Duration,
    ) {
        if domains.changed().await.is_err() {
            return;
        }
        loop {
            let current = domains.borrow_and_update().clone();
            let report = self.run(&current, &[]).await;
            if !report.issued.is_empty() && issued.send(wrap(report.issued)).await.is_err() {
                return;
            }
            let now = time::OffsetDateTime::now_utc();
            let retry = self
                .next_retry(&current)
                .filter(|t| *t > now)
                .map(|t| Duration::try_from(t - now).unwrap_or_default() + Duration::from_secs(1));
            let wake = retry.map_or(interval, |r| r.min(interval));
            tokio::select! {
                changed = domains.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// The manager for `acme` (the certificate settings, already checked): builds the
    /// DNS resolver and, for DNS-01, the Cloudflare client.
    pub fn new(acme: &AcmeConfig, certs_dir: &Path, renew_days: i64) -> anyhow::Result<Self> {
        let dns = Dns::new(acme.dns_servers.clone())?;
        let (cloudflare, solver) = match &acme.dns01 {
            Some(dns01) => {
                let cloudflare = Cloudflare::new(&dns01.api_base, dns01.credentials.clone())?;
                let solver = AnySolver::Dns(Box::new(CloudflareSolver {
                    cloudflare: cloudflare.clone(),
                    dns: dns.clone(),
                    timeout: dns01.propagation_timeout,
                    created: Mutex::new(HashMap::new()),
                }));
                (Some(cloudflare), solver)
            }
            None => (None, AnySolver::Http(WebrootSolver { webroot: acme.webroot.clone(), sync: None })),
        };
        Ok(CertManager {
            store: CertStore::new(certs_dir),
            acme: acme.account.clone(),
            solver,
            dns,
            cloudflare,
            dns_check: acme.dns_check,
            public_ips: PublicIps::new(acme.public_ip.clone(), acme.public_ip_detect.clone()),
            renew_days,
            concurrency: acme.concurrency,
            account: OnceCell::new(),
        })
    }

    /// With HTTP-01: each token is also handed to `sync` (the followers) before the CA is told.
    pub fn with_token_sync(mut self, sync: Arc<dyn TokenSync>) -> Self {
        if let AnySolver::Http(solver) = &mut self.solver {
            solver.sync = Some(sync);
        }
        self
    }

    pub fn challenge(&self) -> Challenge {
        match self.solver {
            AnySolver::Dns(_) => Challenge::Dns01,
            AnySolver::Http(_) => Challenge::Http01,
        }
    }

    /// What would be ordered now (for `--dry-run` and the batch itself).
    pub fn plan(&self, domains: &[DomainName], forced: &[DomainName]) -> Plan {
        let settings = PlanSettings { renew_days: self.renew_days, dns01: self.challenge() == Challenge::Dns01 };
        let lookup = |d: &DomainName| (self.store.info(d), self.store.state(d), self.store.current_ari(d));
        plan(domains, lookup, forced, settings, OffsetDateTime::now_utc())
    }

    /// The earliest time something is due: a domain in backoff may be tried again, the point
    /// chosen in a CA's renewal window (ARI) arrives, or a cached window must be fetched again.
    pub fn next_retry(&self, domains: &[DomainName]) -> Option<OffsetDateTime> {
        // Only future times: a stale `next_try` in the past (a domain whose certificate is fine
        // again) must not hide another domain's coming retry.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        domains
            .iter()
            .flat_map(|d| {
                let ari = self.store.current_ari(d);
                let renew_at = ari.as_ref().and_then(|a| a.window.as_ref()).map(|w| w.renew_at);
                [self.store.state(d).next_try, renew_at, ari.map(|a| a.next_fetch)]
            })
            .flatten()
            .filter(|t| *t > now)
            .min()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
    }

    /// ACME Renewal Information: fetches the CA's suggested window for each real certificate
    /// whose cached window is missing, stale (another certificate) or past its Retry-After. A CA
    /// without ARI, or one that cannot be reached, leaves the days-left threshold alone to decide.
    async fn refresh_ari(&self, domains: &[DomainName]) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let due: Vec<(DomainName, String, Option<AriState>)> = domains
            .iter()
            .filter_map(|d| {
                let id = self.store.ari_id(d)?;
                let cached = self.store.ari(d);
                let fresh = cached.as_ref().is_some_and(|a| a.cert_id == id && a.next_fetch > now);
                (!fresh).then(|| (d.clone(), id, cached))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let account = match self.account().await {
            Ok(account) => account,
            Err(e) => {
                debug!("renewal information not fetched: {e}");
                return;
            }
        };
        let _ = futures::stream::iter(due)
            .map(|(domain, id, cached)| async move {
                let now = OffsetDateTime::now_utc().unix_timestamp();
                let ari = match acme::renewal_info(account, &id).await {
                    // No ARI at this CA: nothing to cache, the threshold decides.
                    Ok(None) => return false,
                    Ok(Some((window, retry_after))) => {
                        let retry_after = retry_after.clamp(ARI_MIN_REFETCH, ARI_MAX_REFETCH);
                        let previous = cached.as_ref().filter(|a| a.cert_id == id).and_then(|a| a.window.as_ref());
                        let window = RenewalWindow::new(
                            window.start.unix_timestamp(),
                            window.end.unix_timestamp(),
                            window.explanation_url,
                            random_u64(),
                        )
                        .keep_point(previous);
                        debug!(%domain, start = window.start, end = window.end, renew_at = window.renew_at, "renewal window from the CA");
                        AriState { cert_id: id, next_fetch: now + retry_after.as_secs() as i64, window: Some(window) }
                    }
                    // The CA answered but knows no window for this certificate (another CA
                    // issued it): ask again later.
                    Err(e) if e.problem().is_some() => {
                        debug!(%domain, "no renewal window: {e}");
                        AriState { cert_id: id, next_fetch: now + ARI_MAX_REFETCH.as_secs() as i64, window: None }
                    }
                    Err(e) => {
                        debug!(%domain, "renewal information not fetched: {e}");
                        return true;
                    }
                };
                if let Err(e) = self.store.save_ari(&domain, &ari) {
                    warn!("{e}");
                }
                true
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect::<Vec<bool>>()
            .await;
    }

    /// Orders what the plan says, at most `concurrency` at a time.
    pub async fn run(&self, domains: &[DomainName], forced: &[DomainName]) -> BatchReport {
        let now = OffsetDateTime::now_utc();
        for domain in domains {
            if let Some(info) = self.store.info(domain).filter(|i| !i.placeholder) {
                let days = info.days_left(now);
                if days <= WARN_DAYS {
                    warn!(%domain, days_left = days, not_after = %info.not_after, "certificate expires soon");
                }
            }
        }
        self.refresh_ari(domains).await;
        let plan = self.plan(domains, forced);
        for (domain, skip) in &plan.skipped {
            if let super::plan::Skip::WildcardNeedsDns01 = skip {
                warn!(%domain, "a wildcard certificate needs DNS-01: set CLOUDFLARE_API_TOKEN");
            }
        }
        let results: Vec<(DomainName, Result<Ordered, String>)> = futures::stream::iter(plan.orders.clone())
            .map(|order| async move {
                info!(domain = %order.domain, reason = %order.reason, challenge = %order.challenge, "ordering a certificate");
                let result = self.order(&order.domain, &order.reason).await;
                (order.domain, result)
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut report = BatchReport { plan, ..Default::default() };
        for (domain, result) in results {
            match result {
                Ok(Ordered::Issued) => {
                    crate::metrics::global().acme_order(true);
                    report.issued.push(domain);
                }
                // Not an order of ours: nothing to count.
                Ok(Ordered::Busy) => report.busy.push(domain),
                Err(e) => {
                    crate::metrics::global().acme_order(false);
                    report.failed.push((domain, e));
                }
            }
        }
        report
    }

    async fn account(&self) -> Result<&acme::Account, acme::AcmeError> {
        let dir = self.store.layout().accounts_dir();
        self.account.get_or_try_init(|| async move { acme::account(&dir, &self.acme).await }).await
    }

    /// One domain: lock, DNS check, order, write, record the outcome.
    async fn order(&self, domain: &DomainName, reason: &Reason) -> Result<Ordered, String> {
        let lock = match self.store.try_lock(domain) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                info!(%domain, "another order for this domain is running (lock held); it will finish there");
                return Ok(Ordered::Busy);
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut state = self.store.state(domain);
        let had_failures = state != DomainState { last_attempt: state.last_attempt, ..Default::default() };
        state.last_attempt = Some(OffsetDateTime::now_utc().unix_timestamp());
        if let Err(reason) = self.check_dns(domain).await {
            // Like a failed order: logged, shown by `certs list`, and tried again after the
            // backoff (the DNS may be fixed meanwhile), not only at the next RENEWAL_INTERVAL.
            state.failures += 1;
            let wait = backoff(state.failures, None);
            state.next_try = Some(OffsetDateTime::now_utc().unix_timestamp() + wait.as_secs() as i64);
            state.last_error = Some(reason.clone());
            warn!(%domain, failures = state.failures, retry_in = %humantime::format_duration(wait), "certificate not ordered: {reason}");
            let (store, domain_owned, saved) = (self.store.clone(), domain.clone(), state.clone());
            if let Err(e) = acme::blocking(move || store.save_state(&domain_owned, &saved)).await {
                warn!("{e}");
            }
            return Err(reason);
        }
        // ARI: a renewal names the certificate it replaces, when the CA gave a window for it.
        let replaces = match reason {
            Reason::Missing | Reason::Placeholder => None,
            _ => self.store.current_ari(domain).filter(|a| a.window.is_some()).map(|a| a.cert_id),
        };
        let journal = self.store.pending_dir();
        let options = acme::IssueOptions { replaces, journal: Some(journal.clone()) };
        let result = async {
            let account = self.account().await?;
            let issued = match &self.solver {
                AnySolver::Dns(s) => acme::issue_with(account, domain, s.as_ref(), &options).await?,
                AnySolver::Http(s) => acme::issue_with(account, domain, s, &options).await?,
            };
            // Durable before it is reported; the journal goes only once it is.
            let (dir, domain_owned, journal) = (self.store.dir.clone(), domain.clone(), journal.clone());
            acme::blocking(move || {
                acme::write_certificate(&dir, &domain_owned, &issued)?;
                acme::clear_journal(&journal, &domain_owned);
                Ok::<_, acme::AcmeError>(issued)
            })
            .await
        }
        .await;
        let outcome = match result {
            Ok(issued) => {
                info!(%domain, not_after = %issued.not_after, "certificate issued");
                state = DomainState { last_attempt: state.last_attempt, ..Default::default() };
                Ok(Ordered::Issued)
            }
            Err(e) => {
                state.failures += 1;
                let (wait, next_try) = retry_plan(state.failures, &e);
                state.next_try = Some(next_try);
                state.last_error = Some(e.to_string());
                let rate = if e.is_rate_limited() { " (rate limited by the CA)" } else { "" };
                warn!(%domain, failures = state.failures, retry_in = %humantime::format_duration(wait), "certificate order failed{rate}: {e}; an existing certificate stays in use");
                Err(e.to_string())
            }
        };
        // A failure (its backoff) and the reset of earlier failures are durable; a success after
        // successes only moves `last_attempt`, not worth an fsync.
        let durable = outcome.is_err() || had_failures;
        let (store, domain_owned) = (self.store.clone(), domain.clone());
        let saved = acme::blocking(move || {
            if durable {
                store.save_state(&domain_owned, &state)
            } else {
                store.save_state_unsynced(&domain_owned, &state)
            }
        })
        .await;
        if let Err(e) = saved {
            warn!("{e}");
        }
        drop(lock);
        outcome
    }

    /// `DNS_CHECK`: does the domain point here? With Cloudflare, the zone's record content is
    /// checked instead (a proxied record resolves to Cloudflare's addresses).
    async fn check_dns(&self, domain: &DomainName) -> Result<(), String> {
        if self.dns_check == DnsCheck::Off || domain.is_wildcard() {
            return Ok(());
        }
        let Some(public) = self.public_ips.get().await else {
            // A failed detection has said so once, with what to set.
            if self.public_ips.detection_off() {
                warn!(%domain, "DNS check skipped: set PUBLIC_IP to this server's public addresses");
            } else {
                debug!(%domain, "DNS check skipped: this server's public addresses are not known");
            }
            return Ok(());
        };
        let (found, via) = match &self.cloudflare {
            Some(cf) => match cf.find_zone(domain.as_str()).await {
                Ok(zone) => {
                    let mut found = Vec::new();
                    for rtype in ["A", "AAAA"] {
                        if let Ok(records) = cf.records(&zone, domain.as_str(), rtype).await {
                            found.extend(records.iter().filter_map(|r| r.content.parse::<IpAddr>().ok()));
                        }
                    }
                    (found, "the Cloudflare zone's records")
                }
                Err(_) => (self.dns.addresses(domain.as_str()).await, "DNS"),
            },
            None => (self.dns.addresses(domain.as_str()).await, "DNS"),
        };
        let here = public.describe();
        let problem = match dns::verdict(&found, &public.addrs) {
            Verdict::PointsHere => return Ok(()),
            Verdict::NoRecords => format!("{domain} has no A/AAAA record (checked {via})"),
            Verdict::Elsewhere { found } => {
                let list: Vec<String> = found.iter().map(ToString::to_string).collect();
                format!("{domain} points at {} (checked {via}), not at {here}", list.join(", "))
            }
        };
        match self.dns_check {
            DnsCheck::Strict => Err(format!("{problem}; skipped (DNS_CHECK=strict)")),
            _ => {
                warn!("{problem}; ordering anyway (DNS_CHECK=warn)");
                Ok(())
            }
        }
    }
}

enum AnySolver {
    Http(WebrootSolver),
    Dns(Box<CloudflareSolver>),
}

/// HTTP-01: the key authorization as a file under the webroot nginx serves on port 80.
pub struct WebrootSolver {
    pub webroot: PathBuf,
    /// Others that serve the webroot too (followers): told of each token, and waited for before
    /// the CA is.
    pub sync: Option<Arc<dyn TokenSync>>,
}

/// Something else that answers HTTP-01 for this webroot (the agent's followers): `ready` returns
/// once it serves the tokens now in the webroot, or after `timeout` (then the CA is told anyway:
/// nginx beside the agent answers, and a retry follows a failure).
pub trait TokenSync: Send + Sync {
    fn ready(&self, timeout: Duration) -> futures::future::BoxFuture<'_, ()>;
}

/// How long an order waits for followers to hold a new HTTP-01 token.
pub const TOKEN_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

impl WebrootSolver {
    fn path(&self, challenge: &ChallengeResponse) -> Option<PathBuf> {
        match challenge {
            ChallengeResponse::Http01 { token, .. } => {
                Some(self.webroot.join(".well-known/acme-challenge").join(token))
            }
            ChallengeResponse::Dns01 { .. } => None,
        }
    }
}

impl Solver for WebrootSolver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    async fn present(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        let (Some(path), ChallengeResponse::Http01 { key_authorization, .. }) = (self.path(challenge), challenge)
        else {
            return Err(SolverError::new("the webroot solver only answers HTTP-01"));
        };
        let dir = path.parent().expect("challenge path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| SolverError::new(format!("cannot create {}: {e}", dir.display())))?;
        // Atomic (nginx never serves half a token) but not fsynced: the token only lives for the
        // validation, and an fsync costs more than the rest of our part of an order.
        let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::write(&tmp, key_authorization.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| SolverError::new(format!("cannot write {}: {e}", path.display())))?;
        if let Some(sync) = &self.sync {
            sync.ready(TOKEN_SYNC_TIMEOUT).await;
        }
        Ok(())
    }

    async fn cleanup(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        if let Some(path) = self.path(challenge) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }
}

/// DNS-01 through Cloudflare: create the TXT record, wait until the zone's authoritative name
/// servers serve it, delete it afterwards.
pub struct CloudflareSolver {
    cloudflare: Cloudflare,
    dns: Dns,
    timeout: Duration,
    created: Mutex<HashMap<(String, String), (Zone, RecordId)>>,
}

impl Solver for CloudflareSolver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Dns01
    }

    async fn present(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        let ChallengeResponse::Dns01 { domain, record, value } = challenge else {
            return Err(SolverError::new("the Cloudflare solver only answers DNS-01"));
        };
        let zone = self.cloudflare.find_zone(domain).await.map_err(|e| SolverError::new(e.to_string()))?;
        let id =
            self.cloudflare.create_txt(&zone, record, value, 60).await.map_err(|e| SolverError::new(e.to_string()))?;
        self.created.lock().expect("not poisoned").insert((record.clone(), value.clone()), (zone, id));
        self.dns.wait_for_txt(record, value, self.timeout).await.map_err(|e| SolverError::new(e.to_string()))
    }

    async fn cleanup(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        let ChallengeResponse::Dns01 { record, value, .. } = challenge else { return Ok(()) };
        let created = self.created.lock().expect("not poisoned").remove(&(record.clone(), value.clone()));
        if let Some((zone, id)) = created {
            self.cloudflare.delete_record(&zone, &id).await.map_err(|e| SolverError::new(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn ca_error(status: u16, kind: &str, retry_at: Option<SystemTime>) -> acme::AcmeError {
        acme::AcmeError::Ca {
            step: "create an order for a.test".into(),
            source: instant_acme::Error::Api(acme::Problem {
                r#type: Some(kind.into()),
                detail: None,
                status: Some(status),
                subproblems: vec![],
            }),
            status: Some(status),
            retry_at,
        }
    }

    #[test]
    fn a_rate_limit_is_waited_out_exactly_and_never_cut_short() {
        let at = SystemTime::now() + Duration::from_millis(2500);
        let (wait, next_try) = retry_plan(1, &ca_error(429, acme::RATE_LIMITED, Some(at)));
        assert!(wait <= Duration::from_millis(2500) && wait >= Duration::from_secs(2), "{wait:?}");
        let at_secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(next_try as f64 >= at_secs && (next_try as f64) < at_secs + 1.0, "{next_try} vs {at_secs}");

        // Other failures back off exponentially; a Retry-After is a floor.
        let (wait, _) = retry_plan(1, &ca_error(500, "urn:ietf:params:acme:error:serverInternal", Some(at)));
        assert_eq!(wait, Duration::from_secs(300));
        // A rate limit without Retry-After backs off like any failure.
        let (wait, _) = retry_plan(2, &ca_error(429, acme::RATE_LIMITED, None));
        assert_eq!(wait, Duration::from_secs(600));
    }
}

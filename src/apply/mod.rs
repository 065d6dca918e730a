//! Apply: render → unchanged? → placeholders → `nginx -t` on a candidate → atomic swap → reload
//! (in the companion setup the three in one Docker exec; isolation only when nginx rejects it).
//!
//! Architecture invariant: the file at `NGINX_CONF` is only ever replaced (by rename) with a
//! config that `nginx -t` accepted, so a crash at any point leaves the last good config. When the
//! test fails, the routes that broke it are found (by the error's line, by a certificate path, or
//! by bisection) and the config goes live without them.

pub mod auth_files;
pub mod nginx;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::certs::placeholder;
use crate::fsutil::write_atomic;
use crate::render::{RenderError, RenderSettings, Renderer};
use crate::routes::{DomainName, RouteTable};
use auth_files::AuthFiles;
pub use nginx::{Nginx, NginxError, Swap};

/// Marker the built-in template writes before each domain's servers; error lines map back to a
/// domain through it. Custom templates that keep it get precise isolation, others bisection.
pub const SITE_MARKER: &str = "# --- ";

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nginx(#[from] NginxError),
    #[error("nginx -t rejects even a config without any route, so the problem is outside the routes (template header or nginx's own config); the last good config stays live:\n{output}")]
    NotRouteRelated { output: String },
}

/// A route left out because nginx refused the config with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub domain: DomainName,
    /// Where the route came from: `container app1`, `DOMAINS entry 2`, `routes.json domains[0]`.
    pub sources: Vec<String>,
    /// Why: nginx's first error line for this route's own servers (`nginx -t fails with it:
    /// …`), or its users-file that cannot be used.
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Applied {
    /// False when the rendered bytes equal what is live (nothing done).
    pub changed: bool,
    /// nginx was told to reload (false before the local nginx has started).
    pub reloaded: bool,
    pub dropped: Vec<Dropped>,
    pub placeholders: Vec<DomainName>,
    /// htpasswd files written (a new list of users, or a users-file whose contents changed).
    pub auth_files: usize,
    pub timings: Timings,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub render: Duration,
    pub test: Duration,
    pub reload: Duration,
    pub tests_run: u32,
}

/// Owns the live config file and the order of side effects on it.
pub struct Applier {
    pub nginx: Nginx,
    pub target: PathBuf,
    pub certs_dir: PathBuf,
    /// The bytes of the config nginx runs (after a successful apply).
    live: Option<String>,
    /// The last candidate rendered from a whole table that nginx rejected, and what came of it.
    /// The same candidate again is neither re-tested nor reloaded: while a route is left out,
    /// every pass would otherwise bisect and reload anew.
    rejected: Option<Rejected>,
}

struct Rejected {
    config: String,
    /// The routes left out, or nginx's output when it rejected even a config without routes.
    outcome: Result<Vec<Dropped>, String>,
}

impl Applier {
    pub fn new(nginx: Nginx, target: PathBuf, certs_dir: PathBuf) -> Self {
        Applier { nginx, target, certs_dir, live: None, rejected: None }
    }

    /// The config currently live, if the agent applied one.
    pub fn live(&self) -> Option<&str> {
        self.live.as_deref()
    }

    /// Forgets what is live, so the next apply reloads even for identical bytes (nginx restarted).
    pub fn invalidate(&mut self) {
        self.live = None;
        self.rejected = None;
    }

    /// Forgets which candidate nginx rejected, so that the next apply tests it again (something
    /// outside the candidate, such as nginx's own config or a certificate file, may have changed).
    pub fn retest(&mut self) {
        self.rejected = None;
    }

    fn candidate_path(&self) -> PathBuf {
        let dir = self.target.parent().unwrap_or(Path::new("."));
        dir.join(".smart-proxy-candidate")
    }

    /// Renders and applies `table`. On an error the previous config stays live.
    pub async fn apply(
        &mut self,
        renderer: &Renderer,
        settings: &RenderSettings,
        table: &RouteTable,
    ) -> Result<Applied, ApplyError> {
        let mut timings = Timings::default();
        // The htpasswd files first: nginx reads them per request, and a users-file's contents
        // may change while the config stays the same.
        let auth = AuthFiles::of(table);
        let cached = auth.settings(settings);
        let settings = cached.as_ref().unwrap_or(settings);
        let auth_dir = settings.auth_dir.as_path();
        let auth_files =
            auth.write(auth_dir).map_err(|source| ApplyError::Write { path: auth_dir.to_path_buf(), source })?;
        let mut unusable = Vec::new();
        let reduced;
        let table = if auth.unusable.is_empty() {
            table
        } else {
            let mut left = table.clone();
            for (domain, reason) in &auth.unusable {
                unusable.push(Dropped {
                    domain: domain.clone(),
                    sources: sources_of(&left, domain),
                    reason: reason.clone(),
                });
                left = left.without_site(domain);
            }
            reduced = left;
            &reduced
        };
        let started = Instant::now();
        let mut config = renderer.render(table, settings)?;
        timings.render += started.elapsed();
        if self.live.as_deref() == Some(config.as_str()) {
            return Ok(Applied { auth_files, timings, ..Default::default() });
        }
        if let Some(rejected) = self.rejected.as_ref().filter(|r| r.config == config) {
            return match &rejected.outcome {
                Ok(dropped) => Ok(Applied { dropped: dropped.clone(), auth_files, timings, ..Default::default() }),
                Err(output) => Err(ApplyError::NotRouteRelated { output: output.clone() }),
            };
        }
        let full = config.clone();

        let mut placeholders = Vec::new();
        if !settings.local {
            for domain in placeholder::missing(&self.certs_dir, table) {
                if let Err(e) = placeholder::write(&self.certs_dir, &domain) {
                    tracing::warn!("{e}");
                }
                placeholders.push(domain);
            }
        }

        // The companion's fast path: the first candidate tested, swapped in and reloaded by one
        // exec; only a rejected one goes on to isolation below.
        let mut first = match self.test_swap_reload(&config, &mut timings).await? {
            Some(Swap::Reloaded { .. }) => {
                self.rejected = None;
                self.live = Some(config);
                auth.remove_unused(auth_dir);
                return Ok(Applied {
                    changed: true,
                    reloaded: true,
                    dropped: unusable,
                    placeholders,
                    auth_files,
                    timings,
                });
            }
            Some(Swap::Rejected(output)) => Some(output),
            None => None,
        };
        let mut current = table.clone();
        let mut dropped = unusable;
        loop {
            let tested = match first.take() {
                Some(output) => Some(output),
                None => self.test(&config, &mut timings).await?,
            };
            let Some(output) = tested else { break };
            let culprits = match culprit(&output, &config, &current, self.target_name()) {
                Some(domain) => vec![(domain, output.clone())],
                None => match self.bisect(renderer, settings, &current, &output, &mut timings).await {
                    Err(ApplyError::NotRouteRelated { output }) => {
                        self.rejected = Some(Rejected { config: full, outcome: Err(output.clone()) });
                        return Err(ApplyError::NotRouteRelated { output });
                    }
                    other => other?,
                },
            };
            for (domain, reason) in culprits {
                let sources = sources_of(&current, &domain);
                current = current.without_site(&domain);
                let line = first_error_line(&reason);
                let reason =
                    if settings.auth_cache.is_some() && line.contains("unknown directive \"init_by_lua_block\"") {
                        format!(
                            "AUTH_CACHE needs nginx's Lua module, which this nginx has not loaded (Debian: install \
                         libnginx-mod-http-lua; or use OpenResty), so this basic-auth route is left out: {line}"
                        )
                    } else {
                        format!("nginx -t fails with it: {line}")
                    };
                dropped.push(Dropped { domain, sources, reason });
            }
            let started = Instant::now();
            config = renderer.render(&current, settings)?;
            timings.render += started.elapsed();
        }

        let reloaded = self.swap_and_reload(&mut timings).await?;
        self.rejected = (!dropped.is_empty()).then(|| Rejected { config: full, outcome: Ok(dropped.clone()) });
        self.live = Some(config);
        auth.remove_unused(auth_dir);
        Ok(Applied { changed: true, reloaded, dropped, placeholders, auth_files, timings })
    }

    /// Renames the tested candidate over the target (the directory synced) and reloads nginx:
    /// whether nginx was running to reload.
    async fn swap_and_reload(&mut self, timings: &mut Timings) -> Result<bool, ApplyError> {
        let candidate = self.candidate_path();
        std::fs::rename(&candidate, &self.target)
            .map_err(|source| ApplyError::Write { path: self.target.clone(), source })?;
        if let Some(dir) = self.target.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        let started = Instant::now();
        let reloaded = self.nginx.reload().await;
        crate::metrics::global().reloaded(&reloaded, started.elapsed());
        let reloaded = reloaded?;
        timings.reload = started.elapsed();
        Ok(reloaded)
    }

    /// Applies a config rendered elsewhere (a follower's bundle): identical to what is live,
    /// nothing; else the candidate is tested with `nginx -t` together with nginx's own config,
    /// renamed over the target and nginx reloaded. A rejected candidate is an error
    /// ([`NginxError::TestFailed`]) and the last good config stays; there are no routes to
    /// isolate here (the agent isolated them before rendering).
    pub async fn apply_rendered(&mut self, config: &str) -> Result<Applied, ApplyError> {
        let mut timings = Timings::default();
        if self.live.as_deref() == Some(config) {
            return Ok(Applied { timings, ..Default::default() });
        }
        if let Some(output) = self.test(config, &mut timings).await? {
            return Err(NginxError::TestFailed { output }.into());
        }
        let reloaded = self.swap_and_reload(&mut timings).await?;
        self.live = Some(config.to_string());
        Ok(Applied { changed: true, reloaded, timings, ..Default::default() })
    }

    fn target_name(&self) -> &str {
        self.target.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }

    /// Writes the candidate, then tests, swaps and reloads it in one step where nginx offers that
    /// ([`Nginx::test_swap_reload`]); `None` where it does not (nothing written then).
    async fn test_swap_reload(&self, config: &str, timings: &mut Timings) -> Result<Option<Swap>, ApplyError> {
        if !self.nginx.swaps_in_one_exec() {
            return Ok(None);
        }
        let candidate = self.candidate_path();
        write_atomic(&candidate, config.as_bytes(), 0o644)
            .map_err(|source| ApplyError::Write { path: candidate.clone(), source })?;
        let started = Instant::now();
        let result = self.nginx.test_swap_reload(&self.target, &candidate).await;
        let total = started.elapsed();
        let metrics = crate::metrics::global();
        let tested = match &result {
            Ok(Swap::Rejected(_)) => {
                metrics.config_tested(total, true);
                total
            }
            Ok(Swap::Reloaded { tested }) => {
                metrics.config_tested(*tested, false);
                metrics.reloaded(&Ok::<bool, ()>(true), total - *tested);
                timings.reload = total - *tested;
                if let Some(dir) = self.target.parent() {
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                *tested
            }
            Err(e) => {
                if matches!(e, NginxError::ReloadFailed { .. }) {
                    // Swapped (the test passed), then the reload failed.
                    metrics.config_tested(total, false);
                    metrics.reloaded(&Err::<bool, ()>(()), total);
                }
                total
            }
        };
        timings.test += tested;
        timings.tests_run += 1;
        Ok(Some(result?))
    }

    /// Writes the candidate and tests it: `None` when nginx accepts it, else nginx's output.
    async fn test(&self, config: &str, timings: &mut Timings) -> Result<Option<String>, ApplyError> {
        let candidate = self.candidate_path();
        write_atomic(&candidate, config.as_bytes(), 0o644)
            .map_err(|source| ApplyError::Write { path: candidate.clone(), source })?;
        let started = Instant::now();
        let result = self.nginx.test(&self.target, &candidate).await;
        timings.test += started.elapsed();
        crate::metrics::global().config_tested(started.elapsed(), matches!(result, Err(NginxError::TestFailed { .. })));
        timings.tests_run += 1;
        match result {
            Ok(()) => Ok(None),
            Err(NginxError::TestFailed { output }) => Ok(Some(output)),
            Err(e) => Err(e.into()),
        }
    }

    /// Finds one site whose removal makes the config pass, by halving the set of sites.
    async fn bisect(
        &self,
        renderer: &Renderer,
        settings: &RenderSettings,
        table: &RouteTable,
        output: &str,
        timings: &mut Timings,
    ) -> Result<Vec<(DomainName, String)>, ApplyError> {
        let empty = table.only_sites(&[]);
        if self.test(&renderer.render(&empty, settings)?, timings).await?.is_some() {
            return Err(ApplyError::NotRouteRelated { output: output.to_string() });
        }
        // Invariant: the sites in `suspects` hold at least one that fails on its own merits when
        // added to `kept` (which passes).
        let mut suspects: Vec<DomainName> = table.sites.iter().map(|s| s.domain.clone()).collect();
        let mut kept: Vec<DomainName> = Vec::new();
        // nginx's output for `kept` + `suspects`, once that exact set was tested: the culprit's
        // own message, not the first error of the whole config (which may be another route's).
        let mut message: Option<String> = None;
        while suspects.len() > 1 {
            let half: Vec<DomainName> = suspects[..suspects.len() / 2].to_vec();
            let trial: Vec<DomainName> = kept.iter().chain(&half).cloned().collect();
            let fails = self.test(&renderer.render(&table.only_sites(&trial), settings)?, timings).await?;
            if fails.is_some() {
                suspects = half;
                message = fails;
            } else {
                kept = trial;
                suspects.drain(..suspects.len() / 2);
                message = None;
            }
        }
        if message.is_none() && !kept.is_empty() {
            let trial: Vec<DomainName> = kept.iter().chain(&suspects).cloned().collect();
            message = self.test(&renderer.render(&table.only_sites(&trial), settings)?, timings).await?;
        }
        let message = message.unwrap_or_else(|| output.to_string());
        Ok(suspects.into_iter().map(|d| (d, message.clone())).collect())
    }
}

/// Maps nginx's error to the domain whose servers contain it: by `<file>:<line>` and the site
/// marker above that line, or by a certificate path `live/<name>/`.
fn culprit(output: &str, config: &str, table: &RouteTable, target_name: &str) -> Option<DomainName> {
    let needle = format!("{target_name}:");
    for (i, _) in output.match_indices(&needle) {
        let digits: String = output[i + needle.len()..].chars().take_while(char::is_ascii_digit).collect();
        let Ok(line) = digits.parse::<usize>() else { continue };
        let marker = config.lines().take(line).filter_map(|l| l.strip_prefix(SITE_MARKER)).last();
        if let Some(domain) = marker.and_then(|m| table.sites.iter().find(|s| s.domain.as_str() == m.trim())) {
            return Some(domain.domain.clone());
        }
    }
    for name in crate::certs::layout::name_in_live_path(output) {
        if let Some(site) = table.sites.iter().find(|s| s.domain.cert_name() == name) {
            return Some(site.domain.clone());
        }
    }
    None
}

/// Where a domain's routes came from (`container app1`, `routes.json domains[0]`).
fn sources_of(table: &RouteTable, domain: &DomainName) -> Vec<String> {
    let mut sources: Vec<String> = table
        .sites
        .iter()
        .filter(|s| s.domain == *domain)
        .flat_map(|s| s.locations.iter().map(|l| l.origin.source()))
        .collect();
    sources.dedup();
    sources
}

fn first_error_line(output: &str) -> String {
    output
        .lines()
        .find(|l| l.contains("[emerg]") || l.contains("[crit]"))
        .unwrap_or(output.lines().next().unwrap_or(""))
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprit_by_line_and_by_certificate() {
        let table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com,b.com,*.c.com"), None)]);
        let config = "header\n# --- a.com\nserver a\n# --- b.com\nbad line\n# --- *.c.com\n";
        let out = "nginx: [emerg] unknown directive \"bad\" in /tmp/x/conf.d/default.conf:5\n";
        assert_eq!(culprit(out, config, &table, "default.conf").unwrap().as_str(), "b.com");
        let out = "nginx: [emerg] cannot load certificate \"/etc/letsencrypt/live/_.c.com/fullchain.pem\": PEM_read_bio_X509_AUX() failed";
        assert_eq!(culprit(out, config, &table, "default.conf").unwrap().as_str(), "*.c.com");
        assert_eq!(culprit("nginx: [emerg] in /tmp/x/conf.d/default.conf:1", config, &table, "default.conf"), None);
    }
}

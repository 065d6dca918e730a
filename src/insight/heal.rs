//! When to restart a container whose server fails every request (`smart-proxy.heal=restart`):
//! the pure decision. The caller feeds the outcome of each upstream attempt, asks which of the
//! healable containers to restart, and does the restart.
//!
//! A server qualifies once every attempt against it failed for [`HealConfig::failing_for_ms`] with
//! at least [`HealConfig::min_requests`] of them, the last within that time: one success starts the
//! count over, and so do a minute (or a window, if longer) without a try and a restart decision
//! (the container gets the same time to come back). A container is restarted at
//! most [`HealConfig::max_per_hour`] times in any hour, and never while Docker's own health check
//! says it is healthy.

use std::collections::{HashMap, VecDeque};

/// The healer's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealConfig {
    /// How long every attempt must have failed (default 60 s).
    pub failing_for_ms: u64,
    /// Failed attempts needed in that time (default 5): a server that got two requests in a
    /// minute is not judged on them.
    pub min_requests: u32,
    /// Restarts of one container in any hour (default 3): a container that does not come back is
    /// left to its operator rather than restarted forever.
    pub max_per_hour: usize,
}

impl Default for HealConfig {
    fn default() -> Self {
        HealConfig { failing_for_ms: 60_000, min_requests: 5, max_per_hour: 3 }
    }
}

/// A container the caller may restart, and the server address that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// What the caller restarts (a container id or name); the hourly cap counts per container.
    pub container: &'a str,
    /// The upstream server address nginx logs for it (`10.0.0.5:8080`), or the name of its
    /// upstream, which nginx logs when no server of it is left to try.
    pub server: &'a str,
    /// Docker's health status if the container has a health check: `Some(true)` (healthy) vetoes
    /// a restart.
    pub docker_healthy: Option<bool>,
}

/// A restart to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub container: String,
    pub server: String,
    /// For the log: what failed, for how long.
    pub cause: String,
}

/// The current run of failures of one server.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// When the first failure of the run happened; `None` right after a restart.
    since_ms: Option<u64>,
    failures: u32,
    last_ms: u64,
}

/// A silence after which a failure starts a new run (or the window, if longer). Not the window
/// itself: lines reach the healer in nginx's buffered batches, so a short `HEAL_AFTER` would cut
/// one run into many.
const SILENCE_MS: u64 = 60_000;

/// Servers tracked at most: addresses come from nginx's config, but a resolver may hand out new
/// ones; past this the oldest silent ones are forgotten.
const MAX_SERVERS: usize = 4096;

/// The healer's state: one failure run per server, the recent restarts per container.
#[derive(Debug, Clone, Default)]
pub struct Healer {
    config: HealConfig,
    runs: HashMap<Box<str>, Run>,
    restarts: HashMap<Box<str>, VecDeque<u64>>,
}

impl Healer {
    pub fn new(config: HealConfig) -> Healer {
        Healer { config, ..Healer::default() }
    }

    pub fn config(&self) -> HealConfig {
        self.config
    }

    /// One attempt against `server`.
    pub fn observe(&mut self, server: &str, failed: bool, now_ms: u64) {
        if !failed {
            // A success ends the server's run: a server without one has not failed since. With
            // no server failing (the usual case), without a lookup.
            if !self.runs.is_empty() {
                self.runs.remove(server);
            }
            return;
        }
        if !self.runs.contains_key(server) {
            if self.runs.len() >= MAX_SERVERS {
                self.forget_before(now_ms.saturating_sub(self.config.failing_for_ms));
                if self.runs.len() >= MAX_SERVERS {
                    return;
                }
            }
            self.runs.insert(server.into(), Run { since_ms: None, failures: 0, last_ms: now_ms });
        }
        let Some(run) = self.runs.get_mut(server) else { return };
        if now_ms.saturating_sub(run.last_ms) > self.config.failing_for_ms.max(SILENCE_MS) {
            // No try for a while: what failed before is not this failure's run (a server no
            // success is ever logged for, such as an upstream's name, would otherwise carry
            // failures from days ago).
            *run = Run { since_ms: None, failures: 0, last_ms: now_ms };
        }
        run.last_ms = now_ms;
        run.since_ms.get_or_insert(now_ms);
        run.failures = run.failures.saturating_add(1);
    }

    fn forget_before(&mut self, cutoff_ms: u64) {
        self.runs.retain(|_, run| run.last_ms >= cutoff_ms && run.since_ms.is_some());
    }

    /// The restarts to make now among `candidates`; each is recorded against the hourly cap.
    pub fn decide(&mut self, candidates: &[Candidate<'_>], now_ms: u64) -> Vec<Restart> {
        const HOUR: u64 = 3_600_000;
        let config = self.config;
        let mut out = Vec::new();
        for c in candidates {
            // Once per pass: a container reached under two names (its address, its upstream's)
            // may qualify under both.
            if out.iter().any(|r: &Restart| r.container == c.container) {
                continue;
            }
            let Some(run) = self.runs.get(c.server) else { continue };
            let Some(since) = run.since_ms else { continue };
            let failing_for = now_ms.saturating_sub(since);
            // A run whose server has had no request for a whole window is stale, not failing.
            let stale = now_ms.saturating_sub(run.last_ms) > config.failing_for_ms;
            if failing_for < config.failing_for_ms || run.failures < config.min_requests || stale {
                continue;
            }
            if c.docker_healthy == Some(true) {
                continue;
            }
            let recent = self.restarts.entry(c.container.into()).or_default();
            while recent.front().is_some_and(|&t| now_ms.saturating_sub(t) >= HOUR) {
                recent.pop_front();
            }
            if recent.len() >= config.max_per_hour {
                continue;
            }
            recent.push_back(now_ms);
            out.push(Restart {
                container: c.container.to_string(),
                server: c.server.to_string(),
                cause: format!(
                    "all {} requests to {} failed for {} s{} (restart {} of at most {} per hour)",
                    run.failures,
                    c.server,
                    failing_for / 1000,
                    if c.docker_healthy == Some(false) { ", Docker reports it unhealthy" } else { "" },
                    recent.len(),
                    config.max_per_hour
                ),
            });
        }
        // A restarted container gets a full window to come back, under each of its names. The
        // runs are reset only now, so that the containers behind one upstream's name (all out
        // of it, Docker calling each unhealthy) are restarted together, not one a window.
        for c in candidates.iter().filter(|c| out.iter().any(|r| r.container == c.container)) {
            if let Some(run) = self.runs.get_mut(c.server) {
                *run = Run { since_ms: None, failures: 0, last_ms: now_ms };
            }
        }
        self.restarts.retain(|_, r| r.back().is_some_and(|&t| now_ms.saturating_sub(t) < HOUR));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "10.0.0.5:8080";

    fn candidate(docker_healthy: Option<bool>) -> [Candidate<'static>; 1] {
        [Candidate { container: "app-1", server: SERVER, docker_healthy }]
    }

    /// One failed attempt every `every_ms` from `from_ms` to `to_ms` (excluded).
    fn fail(h: &mut Healer, from_ms: u64, to_ms: u64, every_ms: u64) {
        let mut t = from_ms;
        while t < to_ms {
            h.observe(SERVER, true, t);
            t += every_ms;
        }
    }

    #[test]
    fn the_window_and_the_request_count() {
        let mut h = Healer::new(HealConfig::default());
        fail(&mut h, 0, 59_001, 1000);
        assert!(h.decide(&candidate(None), 59_000).is_empty(), "59 s of failures");
        let r = h.decide(&candidate(None), 60_000);
        assert_eq!(r.len(), 1, "60 s");
        assert!(r[0].cause.starts_with("all 60 requests to 10.0.0.5:8080 failed for 60 s"), "{}", r[0].cause);
        assert!(h.decide(&candidate(None), 61_000).is_empty(), "a restart starts the count over");
        // A single success resets the run.
        fail(&mut h, 100_000, 150_000, 1000);
        h.observe(SERVER, false, 150_000);
        fail(&mut h, 150_001, 200_000, 1000);
        assert!(h.decide(&candidate(None), 200_000).is_empty());
        // Too few requests.
        let mut few = Healer::new(HealConfig::default());
        fail(&mut few, 0, 120_000, 30_000);
        assert!(few.decide(&candidate(None), 120_000).is_empty(), "4 requests");
        // Failures long ago, nothing since: stale.
        let mut stale = Healer::new(HealConfig::default());
        fail(&mut stale, 0, 10_000, 1000);
        let mut current = stale.clone();
        assert!(stale.decide(&candidate(None), 70_001).is_empty());
        assert_eq!(current.decide(&candidate(None), 60_000).len(), 1, "still current at 60 s");
    }

    #[test]
    fn a_failure_after_a_silent_window_starts_a_new_run() {
        let mut h = Healer::new(HealConfig::default());
        fail(&mut h, 0, 10_000, 1000);
        // Days later (a server no success is logged for, such as an upstream's name).
        let later = 86_400_000;
        fail(&mut h, later, later + 59_001, 1000);
        assert!(h.decide(&candidate(None), later + 59_000).is_empty(), "59 s of this run, not a day");
        let r = h.decide(&candidate(None), later + 60_000);
        assert!(r[0].cause.starts_with("all 60 requests to 10.0.0.5:8080 failed for 60 s"), "{}", r[0].cause);
    }

    #[test]
    fn a_container_is_restarted_once_a_pass() {
        let mut h = Healer::new(HealConfig::default());
        fail(&mut h, 0, 70_000, 1000);
        let mut t = 0;
        while t < 70_000 {
            h.observe("sp_app", true, t);
            t += 1000;
        }
        let both = [
            Candidate { container: "app-1", server: SERVER, docker_healthy: Some(false) },
            Candidate { container: "app-1", server: "sp_app", docker_healthy: Some(false) },
        ];
        assert_eq!(h.decide(&both, 70_000).len(), 1);
        // Both of its runs start over: no second restart a pass later under the other name.
        assert!(h.decide(&both, 71_000).is_empty());
    }

    #[test]
    fn the_containers_behind_an_upstreams_name_are_restarted_together() {
        let mut h = Healer::new(HealConfig::default());
        let mut t = 0;
        while t < 70_000 {
            h.observe("sp_app", true, t);
            t += 1000;
        }
        let replicas = [
            Candidate { container: "app-1", server: "sp_app", docker_healthy: Some(false) },
            Candidate { container: "app-2", server: "sp_app", docker_healthy: Some(false) },
        ];
        let restarted: Vec<String> = h.decide(&replicas, 70_000).into_iter().map(|r| r.container).collect();
        assert_eq!(restarted, ["app-1", "app-2"]);
        assert!(h.decide(&replicas, 71_000).is_empty(), "each gets a full window to come back");
    }

    #[test]
    fn docker_healthy_vetoes() {
        let mut h = Healer::new(HealConfig::default());
        fail(&mut h, 0, 70_000, 1000);
        assert!(h.decide(&candidate(Some(true)), 70_000).is_empty());
        let r = h.decide(&candidate(Some(false)), 70_000);
        assert!(r[0].cause.contains("unhealthy"), "{}", r[0].cause);
    }

    #[test]
    fn at_most_three_per_hour() {
        let mut h = Healer::new(HealConfig::default());
        let mut restarts = Vec::new();
        let mut t = 0;
        while t < 2 * 3_600_000 {
            h.observe(SERVER, true, t);
            restarts.extend(h.decide(&candidate(None), t).into_iter().map(|_| t));
            t += 1000;
        }
        // Every minute until the cap, then again an hour after the first.
        assert_eq!(&restarts[..4], &[60_000, 121_000, 182_000, 3_660_000]);
        for w in restarts.windows(4) {
            assert!(w[3] - w[0] >= 3_600_000, "{restarts:?}");
        }
    }
}

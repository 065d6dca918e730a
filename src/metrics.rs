//! The agent's Prometheus metrics (prometheus-client), all prefixed `smart_proxy_`.
//!
//! One process-wide set, [`global`], so that the code that does the work records it in one line
//! (`metrics::global().reloaded(..)`) without handles threaded through every call. Everything here
//! is atomics: recording never blocks. `/metrics` (see `status.rs`) encodes it in the Prometheus
//! text format after refreshing the certificate expiry gauges from the store.

use std::sync::atomic::AtomicI64;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::routes::{DomainName, Origin, RouteTable};

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Where a route came from.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Source {
    labels,
    env,
    file,
}

impl Source {
    const ALL: [Source; 3] = [Source::labels, Source::env, Source::file];

    fn of(origin: &Origin) -> Source {
        match origin {
            Origin::Container { .. } => Source::labels,
            Origin::Env { .. } => Source::env,
            Origin::File { .. } => Source::file,
        }
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    success,
    failure,
}

impl Outcome {
    fn of(ok: bool) -> Outcome {
        if ok {
            Outcome::success
        } else {
            Outcome::failure
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: Source,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    domain: String,
    /// "true" for the agent's self-signed placeholder (no real certificate yet).
    placeholder: String,
}

/// One certificate's expiry, for the gauge (read from the store by the status endpoint).
pub struct CertExpiry {
    pub domain: DomainName,
    pub not_after: time::OffsetDateTime,
    /// A self-signed placeholder written by the agent, not a real certificate.
    pub placeholder: bool,
}

/// Every metric the agent exports, as `/metrics` names them (the certificate expiry family
/// appears once a certificate is read). The README's metrics table lists the same.
pub const NAMES: &[&str] = &[
    "smart_proxy_routes",
    "smart_proxy_routes_left_out",
    "smart_proxy_reloads_total",
    "smart_proxy_reload_duration_seconds",
    "smart_proxy_config_test_duration_seconds",
    "smart_proxy_config_test_failures_total",
    "smart_proxy_docker_events_total",
    "smart_proxy_docker_reconnects_total",
    "smart_proxy_docker_degraded",
    "smart_proxy_certificate_expiry_timestamp_seconds",
    "smart_proxy_acme_orders_total",
    "smart_proxy_follower_current",
    "smart_proxy_follower_last_seen_timestamp_seconds",
];

pub struct Metrics {
    registry: Registry,
    routes: Family<SourceLabels, Gauge>,
    routes_left_out: Gauge,
    reloads: Family<ResultLabels, Counter>,
    reload_seconds: Histogram,
    test_seconds: Histogram,
    test_failures: Counter,
    docker_events: Counter,
    docker_reconnects: Counter,
    docker_degraded: Gauge,
    cert_expiry: Family<CertLabels, Gauge<i64, AtomicI64>>,
    acme_orders: Family<ResultLabels, Counter>,
    follower_current: Family<NodeLabels, Gauge>,
    follower_seen: Family<NodeLabels, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// One follower as `/metrics` shows it (read from the publisher at scrape time).
pub struct FollowerSeen {
    pub node: String,
    /// It serves the agent's current revision.
    pub current: bool,
    pub last_seen_unix: i64,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // 5 ms to ~41 s: a reload of 10,000 routes takes seconds, a small one milliseconds.
        let seconds = || Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let mut m = Metrics {
            registry: Registry::with_prefix("smart_proxy"),
            routes: Family::default(),
            routes_left_out: Gauge::default(),
            reloads: Family::default(),
            reload_seconds: seconds(),
            test_seconds: seconds(),
            test_failures: Counter::default(),
            docker_events: Counter::default(),
            docker_reconnects: Counter::default(),
            docker_degraded: Gauge::default(),
            cert_expiry: Family::default(),
            acme_orders: Family::default(),
            follower_current: Family::default(),
            follower_seen: Family::default(),
        };
        // Every label value from the start, so a series never appears out of nowhere.
        for source in Source::ALL {
            let _ = m.routes.get_or_create(&SourceLabels { source });
        }
        for result in [Outcome::success, Outcome::failure] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
            let _ = m.acme_orders.get_or_create(&ResultLabels { result });
        }
        let r = &mut m.registry;
        r.register("routes", "Routes (domain and path) in the live config, by source", m.routes.clone());
        r.register(
            "routes_left_out",
            "Routes left out of the live config because nginx -t fails with them or their auth.users-file cannot be used (see the log)",
            m.routes_left_out.clone(),
        );
        r.register("reloads", "nginx reloads, by result", m.reloads.clone());
        r.register_with_unit("reload_duration", "Time an nginx reload took", Unit::Seconds, m.reload_seconds.clone());
        r.register_with_unit(
            "config_test_duration",
            "Time an nginx -t of a candidate config took",
            Unit::Seconds,
            m.test_seconds.clone(),
        );
        r.register("config_test_failures", "Candidate configs nginx -t rejected", m.test_failures.clone());
        r.register("docker_events", "Docker events received", m.docker_events.clone());
        r.register(
            "docker_reconnects",
            "Times the Docker event stream was established again after it was lost",
            m.docker_reconnects.clone(),
        );
        r.register(
            "docker_degraded",
            "1 while Docker calls (list, inspect) fail or time out and are being retried, else 0",
            m.docker_degraded.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (not after) of each TLS domain's certificate on disk, in unix seconds",
            m.cert_expiry.clone(),
        );
        r.register("acme_orders", "ACME certificate orders, by result", m.acme_orders.clone());
        r.register(
            "follower_current",
            "1 while the follower serves the agent's current revision, else 0 (FOLLOWER_KEY_FILE)",
            m.follower_current.clone(),
        );
        r.register(
            "follower_last_seen_timestamp_seconds",
            "When each follower last polled the agent, in unix seconds",
            m.follower_seen.clone(),
        );
        m
    }

    pub fn docker_degraded(&self, degraded: bool) {
        self.docker_degraded.set(i64::from(degraded));
    }

    /// The routes of the live config (`left_out`: domains nginx -t failed with, or whose
    /// users-file cannot be used).
    pub fn routes_applied(&self, table: &RouteTable, left_out: &[DomainName]) {
        let mut counts = [0i64; 3];
        let mut dropped = 0i64;
        for site in &table.sites {
            let out = left_out.contains(&site.domain);
            for location in &site.locations {
                if out {
                    dropped += 1;
                } else {
                    counts[Source::of(&location.origin) as usize] += 1;
                }
            }
        }
        for (source, count) in Source::ALL.into_iter().zip(counts) {
            self.routes.get_or_create(&SourceLabels { source }).set(count);
        }
        self.routes_left_out.set(dropped);
    }

    /// An attempted reload: `Ok(false)` (nginx not started yet, nothing reloaded) is not counted.
    pub fn reloaded<E>(&self, result: &Result<bool, E>, took: Duration) {
        if let Ok(false) = result {
            return;
        }
        self.reloads.get_or_create(&ResultLabels { result: Outcome::of(result.is_ok()) }).inc();
        self.reload_seconds.observe(took.as_secs_f64());
    }

    /// One `nginx -t` of a candidate; `rejected` when nginx refused the config.
    pub fn config_tested(&self, took: Duration, rejected: bool) {
        self.test_seconds.observe(took.as_secs_f64());
        if rejected {
            self.test_failures.inc();
        }
    }

    pub fn docker_event(&self) {
        self.docker_events.inc();
    }

    pub fn docker_reconnected(&self) {
        self.docker_reconnects.inc();
    }

    pub fn acme_order(&self, issued: bool) {
        self.acme_orders.get_or_create(&ResultLabels { result: Outcome::of(issued) }).inc();
    }

    /// Replaces the certificate expiry gauges with these (domains without a certificate have none).
    pub fn certificates(&self, certs: &[CertExpiry]) {
        self.cert_expiry.clear();
        for cert in certs {
            let labels = CertLabels { domain: cert.domain.to_string(), placeholder: cert.placeholder.to_string() };
            self.cert_expiry.get_or_create(&labels).set(cert.not_after.unix_timestamp());
        }
    }

    /// Replaces the follower gauges with these.
    pub fn followers(&self, followers: &[FollowerSeen]) {
        self.follower_current.clear();
        self.follower_seen.clear();
        for f in followers {
            let labels = NodeLabels { node: f.node.clone() };
            self.follower_current.get_or_create(&labels).set(i64::from(f.current));
            self.follower_seen.get_or_create(&labels).set(f.last_seen_unix);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_metric_is_exposed_with_the_prefix() {
        let m = Metrics::new();
        let text = m.encode();
        for name in NAMES.iter().filter(|n| !n.contains("certificate_expiry") && !n.contains("follower_")) {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
        }
        assert_eq!(value(&text, "smart_proxy_reloads_total{result=\"failure\"}"), Some(0.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_routes{source=\"file\"}"), Some(0.0), "{text}");
        // No certificate, no series (the family shows once a certificate is read).
        assert!(!text.contains("certificate_expiry"), "{text}");
    }

    #[test]
    fn the_readme_table_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let listed: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("| `smart_proxy_"))
            .map(|rest| rest.split(['`', '{']).next().unwrap_or_default())
            .collect();
        let all = NAMES.iter().chain(crate::insight::METRIC_NAMES);
        let named: Vec<&str> = all.map(|n| n.trim_start_matches("smart_proxy_")).collect();
        assert_eq!(listed, named, "README's /metrics table and metrics::NAMES differ");
    }

    #[test]
    fn recording() {
        let m = Metrics::new();
        let table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com,b.com,c.com"), None)]);
        m.routes_applied(&table, &[DomainName::parse("b.com").unwrap()]);
        m.reloaded::<()>(&Ok(true), Duration::from_millis(30));
        m.reloaded::<()>(&Ok(false), Duration::from_millis(30));
        m.reloaded(&Err(()), Duration::from_millis(30));
        m.config_tested(Duration::from_millis(10), true);
        m.config_tested(Duration::from_millis(10), false);
        m.acme_order(true);
        let not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let cert = |name| CertExpiry { domain: DomainName::parse(name).unwrap(), not_after, placeholder: false };
        m.certificates(&[cert("*.a.com")]);
        m.certificates(&[cert("a.com")]);
        let text = m.encode();
        assert_eq!(value(&text, "smart_proxy_routes{source=\"env\"}"), Some(2.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_routes_left_out"), Some(1.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_reloads_total{result=\"success\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_reloads_total{result=\"failure\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_reload_duration_seconds_count"), Some(2.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_config_test_duration_seconds_count"), Some(2.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_config_test_failures_total"), Some(1.0), "{text}");
        assert_eq!(value(&text, "smart_proxy_acme_orders_total{result=\"success\"}"), Some(1.0), "{text}");
        let expiry = "smart_proxy_certificate_expiry_timestamp_seconds";
        assert_eq!(value(&text, &format!("{expiry}{{domain=\"a.com\",placeholder=\"false\"}}")), Some(2e9), "{text}");
        assert!(!text.contains("*.a.com"), "a domain no longer routed loses its series:\n{text}");
    }
}

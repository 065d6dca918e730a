//! The figures `/insight` serves (JSON) and `top` reads: field names are part of the interface.

use serde::Serialize;

use super::anomaly::{Active, Baseline};
use super::{
    epoch, hist, window, Server, ServerCounts, Sum, Traffic, COARSE_MS, COARSE_WINDOW, FINE_MS, FINE_WINDOW,
    SPARK_WINDOW,
};

/// Every routed domain's figures at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// When it was taken, unix milliseconds.
    pub at_ms: u64,
    /// Lines dropped since start.
    pub dropped: Dropped,
    /// One per routed domain, sorted by name (those without traffic too, with zeros).
    pub domains: Vec<DomainSnapshot>,
}

/// Lines dropped since start, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Not a line of the insight format (or a value out of range).
    pub malformed: u64,
    /// Over `MAX_LINE` bytes (`MAX_ACCESS_LINE` in a domain's access log).
    pub oversized: u64,
    /// For a `$server_name` that is not a routed domain (nginx's default server, a stale name).
    pub unrouted: u64,
}

impl Dropped {
    pub(super) fn count(&mut self, why: super::Malformed) {
        match why {
            super::Malformed::Oversized => self.oversized += 1,
            _ => self.malformed += 1,
        }
    }
}

/// One domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainSnapshot {
    pub domain: String,
    /// The last full minute: 12 slots of 5 s, up to the last 5 s boundary.
    pub last_minute: WindowSnapshot,
    /// The last 15 full minutes, up to the last minute boundary.
    pub last_15_minutes: WindowSnapshot,
    /// Since the agent started (or since the domain was routed again).
    pub total: Totals,
    /// Upstream servers as nginx logs them, by address, sorted.
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Requests of each of the last 60 full minutes, oldest first.
    pub requests_per_minute: Vec<u32>,
    /// The anomaly flags that are up, with the figures that raised them.
    pub anomalies: Vec<Active>,
    /// The learned baselines the flags compare with.
    pub baseline: Baseline,
}

/// One window's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSnapshot {
    /// The window's length.
    pub seconds: u32,
    pub requests: u64,
    pub requests_per_second: f64,
    pub by_class: Classes,
    /// 5xx / requests (0 without requests).
    pub error_ratio: f64,
    /// `$bytes_sent`: response bytes, headers included.
    pub bytes: u64,
    /// `$request_time`, from the first byte read to the last byte sent.
    pub request_time_ms: Percentiles,
    /// The answering attempt's `$upstream_response_time`, for requests that reached an upstream.
    pub upstream_time_ms: Percentiles,
}

/// Requests by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl Classes {
    fn of(c: [u64; 5]) -> Classes {
        Classes { c1xx: c[0], c2xx: c[1], c3xx: c[2], c4xx: c[3], c5xx: c[4] }
    }
}

/// Quantiles in milliseconds (within 12.3 %: see docs/insight.md); `null` without requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(counts: &[u64; hist::BUCKETS]) -> Percentiles {
        Percentiles {
            p50: hist::quantile_ms(counts, 0.50),
            p95: hist::quantile_ms(counts, 0.95),
            p99: hist::quantile_ms(counts, 0.99),
        }
    }
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub by_class: Classes,
    pub bytes: u64,
}

/// One upstream server of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamSnapshot {
    /// The address nginx logged (`10.0.0.5:8080`, `unix:/run/app.sock`), or `other` for the
    /// servers past the per-domain cap.
    pub server: String,
    pub last_minute: UpstreamCounts,
    pub last_15_minutes: UpstreamCounts,
    pub total: UpstreamCounts,
}

/// Attempts against one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamCounts {
    /// Every try, retries included.
    pub attempts: u64,
    /// Tries that failed: moved on from (retried elsewhere), or answered 502 or 504.
    pub errors: u64,
    /// Of the errors, the 504s (upstream timeouts).
    pub timeouts: u64,
}

impl From<ServerCounts> for UpstreamCounts {
    fn from(c: ServerCounts) -> UpstreamCounts {
        UpstreamCounts { attempts: u64::from(c.attempts), errors: u64::from(c.errors), timeouts: u64::from(c.timeouts) }
    }
}

fn window_snapshot(sum: &Sum, seconds: u32) -> WindowSnapshot {
    let requests = sum.requests();
    WindowSnapshot {
        seconds,
        requests,
        requests_per_second: requests as f64 / f64::from(seconds),
        by_class: Classes::of(sum.classes),
        error_ratio: if requests == 0 { 0.0 } else { sum.classes[4] as f64 / requests as f64 },
        bytes: sum.bytes,
        request_time_ms: Percentiles::of(&sum.request),
        upstream_time_ms: Percentiles::of(&sum.upstream),
    }
}

fn empty() -> Sum {
    Sum { classes: [0; 5], bytes: 0, request: [0; hist::BUCKETS], upstream: [0; hist::BUCKETS] }
}

pub(super) fn domain(name: &str, traffic: Option<&Traffic>, now_ms: u64) -> DomainSnapshot {
    let minute = (FINE_MS * FINE_WINDOW / 1000) as u32;
    let quarter = (COARSE_MS * COARSE_WINDOW / 1000) as u32;
    let Some(t) = traffic else {
        return DomainSnapshot {
            domain: name.to_string(),
            last_minute: window_snapshot(&empty(), minute),
            last_15_minutes: window_snapshot(&empty(), quarter),
            total: Totals::default(),
            upstreams: Vec::new(),
            requests_per_minute: vec![0; SPARK_WINDOW as usize],
            anomalies: Vec::new(),
            baseline: Baseline::default(),
        };
    };
    let current = epoch(now_ms, COARSE_MS);
    let requests_per_minute = (0..SPARK_WINDOW)
        .map(|i| {
            let Some(e) = (u64::from(current) + i).checked_sub(SPARK_WINDOW) else { return 0 };
            let (epoch, count) = t.spark[(e % t.spark.len() as u64) as usize];
            if u64::from(epoch) == e {
                count
            } else {
                0
            }
        })
        .collect();
    let (fine, coarse) = (epoch(now_ms, FINE_MS), current);
    let mut upstreams: Vec<UpstreamSnapshot> = t
        .servers
        .iter()
        .map(|s| UpstreamSnapshot {
            server: s.addr.to_string(),
            last_minute: Server::sum(window(&s.fine, fine, FINE_WINDOW, |x| x.0)).into(),
            last_15_minutes: Server::sum(window(&s.coarse, coarse, COARSE_WINDOW, |x| x.0)).into(),
            total: s.total.into(),
        })
        .collect();
    upstreams.sort_by(|a, b| a.server.cmp(&b.server));
    DomainSnapshot {
        domain: name.to_string(),
        last_minute: window_snapshot(&t.last_minute(now_ms), minute),
        last_15_minutes: window_snapshot(&t.last_15_minutes(now_ms), quarter),
        total: Totals {
            requests: t.totals.classes.iter().sum(),
            by_class: Classes::of(t.totals.classes),
            bytes: t.totals.bytes,
        },
        upstreams,
        requests_per_minute,
        anomalies: t.detector.active().copied().collect(),
        baseline: t.detector.baseline,
    }
}

//! The `smart_proxy_http_*` families in the Prometheus text format (0.0.4), appended to what
//! `metrics.rs` encodes. Labels are bounded: the routed domain, the status class, the upstream
//! server (at most `MAX_SERVERS` per domain), the anomaly kind, the drop reason.

use std::fmt::Write;

use super::anomaly::AnomalyKind;
use super::{hist, Insight, Traffic};

/// The internal buckets whose upper bounds are the histogram's `le` bounds: every sixth, 0.5 ms
/// times powers of 4 (0.0005, 0.002, 0.008, 0.032, 0.128, 0.512, 2.048, 8.192, 32.768, 131.072 s),
/// so a domain costs 11 bucket series rather than 56.
const LE_BUCKETS: [usize; 10] = [0, 6, 12, 18, 24, 30, 36, 42, 48, 54];

/// A histogram's buckets and its sum in microseconds, from a domain's totals.
type Histogram = fn(&super::Total) -> (&[u64; hist::BUCKETS], u64);

/// Every family, as exposed.
pub const NAMES: &[&str] = &[
    "smart_proxy_http_requests_total",
    "smart_proxy_http_response_bytes_total",
    "smart_proxy_http_request_duration_seconds",
    "smart_proxy_http_upstream_duration_seconds",
    "smart_proxy_http_upstream_attempts_total",
    "smart_proxy_http_upstream_errors_total",
    "smart_proxy_http_upstream_timeouts_total",
    "smart_proxy_http_anomaly",
    "smart_proxy_http_log_lines_dropped_total",
];

fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

pub(super) fn encode(insight: &Insight, out: &mut String) {
    let mut domains: Vec<(&str, &Traffic)> =
        insight.domains.iter().filter_map(|(d, t)| Some((&**d, t.as_deref()?))).collect();
    domains.sort_unstable_by_key(|(d, _)| *d);
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    let name = NAMES[0];
    header(out, name, "counter", "Requests nginx logged for each routed domain, by status class");
    for (d, t) in &domains {
        let d = escape(d);
        for (class, n) in classes.iter().zip(t.totals.classes) {
            let _ = writeln!(out, "{name}{{domain=\"{d}\",class=\"{class}\"}} {n}");
        }
    }

    let name = NAMES[1];
    header(out, name, "counter", "Response bytes sent ($bytes_sent) for each routed domain");
    for (d, t) in &domains {
        let _ = writeln!(out, "{name}{{domain=\"{}\"}} {}", escape(d), t.totals.bytes);
    }

    let histograms: [(&str, &str, Histogram); 2] = [
        (NAMES[2], "Request time ($request_time) for each routed domain", |t| (&t.request, t.request_sum_us)),
        (
            NAMES[3],
            "Upstream time (the last try's $upstream_response_time) for each routed domain, of the requests nginx passed to an upstream",
            |t| (&t.upstream, t.upstream_sum_us),
        ),
    ];
    for (name, help, of) in histograms {
        header(out, name, "histogram", help);
        for (d, t) in &domains {
            let d = escape(d);
            let (buckets, sum_us) = of(&t.totals);
            let mut cumulative = 0u64;
            let mut from = 0;
            for b in LE_BUCKETS {
                cumulative += buckets[from..=b].iter().sum::<u64>();
                from = b + 1;
                let le = hist::UPPER_US[b] as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{domain=\"{d}\",le=\"{le}\"}} {cumulative}");
            }
            let count: u64 = buckets.iter().sum();
            let _ = writeln!(out, "{name}_bucket{{domain=\"{d}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{domain=\"{d}\"}} {}", sum_us as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{{domain=\"{d}\"}} {count}");
        }
    }

    type Field = fn(&super::ServerCounts) -> u32;
    let upstream: [(&str, &str, Field); 3] = [
        (NAMES[4], "Tries of each upstream server, retries included", |c| c.attempts),
        (NAMES[5], "Tries of each upstream server that failed (retried elsewhere, or 502 or 504)", |c| c.errors),
        (NAMES[6], "Tries of each upstream server that timed out (504)", |c| c.timeouts),
    ];
    for (name, help, field) in upstream {
        header(out, name, "counter", help);
        for (d, t) in &domains {
            let d = escape(d);
            for s in &t.servers {
                let _ = writeln!(out, "{name}{{domain=\"{d}\",upstream=\"{}\"}} {}", escape(&s.addr), field(&s.total));
            }
        }
    }

    let name = NAMES[7];
    header(out, name, "gauge", "1 while an anomaly flag is up for the domain (see /insight), else 0");
    for (d, t) in &domains {
        let d = escape(d);
        for kind in AnomalyKind::ALL {
            let up = u8::from(t.detector.is_active(kind));
            let _ = writeln!(out, "{name}{{domain=\"{d}\",kind=\"{}\"}} {up}", kind.as_str());
        }
    }

    let name = NAMES[8];
    header(out, name, "counter", "Access-log lines the agent dropped, by reason");
    let dropped = insight.dropped;
    for (reason, n) in
        [("malformed", dropped.malformed), ("oversized", dropped.oversized), ("unrouted", dropped.unrouted)]
    {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

//! What the criterion benches share: the seed-env routes they measure, and CPU time from /proc
//! (a module of `benches/render.rs` and `benches/dry_run.rs`).

use std::time::Duration;

/// `DOMAINS` and `SERVICES` values for `n` domains over `n / 10` services (at least 3, at most
/// 1,000): services by IP (upstream blocks), by host name (resolved per request, no upstream
/// block) and by IPv6 address; one domain in ten has no service (503).
pub fn env_vars(n: usize) -> (String, String) {
    let services = (n / 10).clamp(3, 1000);
    let services_var: Vec<String> = (0..services)
        .map(|i| match i % 3 {
            0 => format!("svc{i}:10.{}.{}.{}:8080", i / 65536 % 256, i / 256 % 256, i % 256),
            1 => format!("svc{i}:svc{i}.internal:80"),
            _ => format!("svc{i}:[fd00::{i:x}]:9000"),
        })
        .collect();
    let domains_var: Vec<String> = (0..n)
        .map(|i| {
            if i % 10 == 9 {
                format!("site{i}.example.com")
            } else {
                format!("site{i}.example.com:svc{}", i % services)
            }
        })
        .collect();
    (domains_var.join(","), services_var.join(","))
}

/// Two clock-tick fields of a /proc `stat` file added up: the fields `at` and `at + 1` after the
/// command name, counted from 0 for the state (utime is 11, cutime 13; `man proc` counts from 1
/// and from the pid). Linux, clock ticks of 1/100 s; `None` elsewhere.
pub fn stat_cpu(path: &str, at: usize) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(at)?.parse::<u64>().ok()? + fields.get(at + 1)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

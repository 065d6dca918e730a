//! What the criterion benches share: the seed-env routes they measure (a module of
//! `benches/render.rs` and `benches/dry_run.rs`).

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

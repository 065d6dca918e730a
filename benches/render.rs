//! Rendering cost: the route table → nginx config step, for 10, 1,000 and 10,000 routes, and the
//! route building (parse + merge) for 10,000 `DOMAINS` entries.
//!
//! Target (issue): 10,000 routes rendered in under 50 ms.
//!
//! Routes come from the seed env format, as `DOMAINS`/`SERVICES` would give them: a mix of
//! services by IP (upstream blocks), by host name (resolved per request, no upstream block) and
//! by IPv6 address; one domain in ten has no service (503). Tables are built once, outside the
//! timed loop. Run with `cargo bench --bench render`; `RENDER_ONCE=policies` (or `production`)
//! renders one table of 10,000 routes (`RENDER_TIMES` times, default once) and exits, for
//! `valgrind --tool=callgrind`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use smart_proxy::render::{ConfigPath, NginxVersion, RenderSettings, Renderer};
use smart_proxy::routes::RouteTable;
use smart_proxy::sources::env;

mod common;
use common::env_vars;

/// The binary's allocator (src/main.rs), so that the figures are the agent's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Production settings (HTTPS, redirects, certificates), as the agent builds them.
fn settings(local: bool) -> RenderSettings {
    RenderSettings {
        local,
        http_port: 80,
        https_port: 443,
        certs_dir: ConfigPath::parse("CERTS_DIR", Path::new("/etc/letsencrypt")).unwrap(),
        acme_webroot: ConfigPath::parse("ACME_WEBROOT", Path::new("/var/www/certbot")).unwrap(),
        log_dir: ConfigPath::parse("LOG_DIR", Path::new("/var/log/nginx")).unwrap(),
        nginx_version: NginxVersion(1, 27, 0),
        resolver: vec!["127.0.0.11".parse().unwrap()],
        error_logs_max: 1000,
        ipv6: true,
        real_ip: None,
        error_pages: Default::default(),
        auth_dir: ConfigPath::parse("NGINX_CONF", Path::new("/etc/nginx/conf.d/smart-proxy-htpasswd")).unwrap(),
        insight_log: Some(
            ConfigPath::parse("NGINX_CONF", Path::new("/etc/nginx/conf.d/smart-proxy-insight.log")).unwrap(),
        ),
        access_log_files: true,
        backend_ca: ConfigPath::parse("BACKEND_CA", Path::new(smart_proxy::render::BACKEND_CA)).unwrap(),
        insight_from_access_logs: false,
        auth_cache: None,
    }
}

fn table(n: usize) -> RouteTable {
    let (domains, services) = env_vars(n);
    let table = RouteTable::build(vec![env::parse(Some(&domains), Some(&services))]);
    assert!(table.diagnostics.is_empty(), "{:?}", &table.diagnostics[..1]);
    assert_eq!(table.sites.len(), n);
    table
}

/// [`table`] with a policy on four routes in five, as labels would set them: body size, timeout
/// and a rate limit; streaming with two response headers (a CSP holding quotes and a `$`) and a
/// request header; HSTS with flags, a health path and basic auth with a bypass path; forward
/// auth with a sign-in URL, a copied header and a bypass path.
fn policy_table(n: usize) -> RouteTable {
    use smart_proxy::routes::access::{
        parse_paths, Auth, AuthMethod, BasicUsers, Forward, Rate, RateLimit, Url, Users,
    };
    use smart_proxy::routes::policy::{Direction, Header, HeaderName, HeaderValue, Hsts, Size, Timeout};
    use smart_proxy::routes::Health;
    let header = |name: &str, value: &str, direction| Header {
        name: HeaderName::parse(name, direction).unwrap(),
        value: HeaderValue::parse(value).unwrap(),
    };
    let mut table = table(n);
    for (i, site) in table.sites.iter_mut().enumerate() {
        let policy = &mut site.locations[0].policy;
        match i % 5 {
            0 => {
                policy.max_body = Some(Size::parse("10g").unwrap());
                policy.timeout = Some(Timeout::parse("5m").unwrap());
                let rate = Rate::parse("10r/s").unwrap().unwrap();
                policy.rate = Some(RateLimit { rate, burst: 20, key: Default::default() });
            }
            1 => {
                policy.buffering = Some(false);
                policy.response_headers = vec![
                    header("Content-Security-Policy", "default-src 'self'; script-src 'nonce-$x'", Direction::Response),
                    header("X-Frame-Options", "DENY", Direction::Response),
                ];
                policy.request_headers = vec![header("X-Tenant", "t1", Direction::Request)];
            }
            2 => {
                site.hsts = Hsts::parse("31536000,includeSubDomains,preload").unwrap();
                site.health = Health::parse("/healthz").unwrap();
                let users = Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
                let bypass = parse_paths("/public/").unwrap();
                policy.auth = Some(Auth { method: AuthMethod::Basic(BasicUsers::Inline(users)), bypass });
            }
            3 => {
                let forward = Forward {
                    url: Url::parse("http://authelia:9091/api/authz/auth-request").unwrap(),
                    signin: Some(Url::parse("https://auth.example.com/").unwrap()),
                    headers: vec![HeaderName::parse("Remote-User", Direction::Response).unwrap()],
                };
                policy.auth =
                    Some(Auth { method: AuthMethod::Forward(forward), bypass: parse_paths("/api/").unwrap() });
            }
            _ => {}
        }
    }
    table
}

/// CPU time (user + system) of the whole process so far, every thread's (a render uses one
/// thread per core for its sites).
fn process_cpu() -> Option<Duration> {
    common::stat_cpu("/proc/self/stat", 11)
}

/// CPU time per call of `f`, averaged over calls for about `budget` of CPU time: unlike wall
/// time, it hardly moves when other work shares the machine. Also the median wall time of the
/// calls (what a pass waits for), which does.
fn cpu_per_call<T>(budget: Duration, mut f: impl FnMut() -> T) -> Option<(Duration, Duration)> {
    let start = process_cpu()?;
    let (mut calls, mut batch) = (0u32, 1u32);
    let mut walls = Vec::new();
    // /proc is read between batches only, so reading it does not weigh on short calls.
    while calls < 3 || process_cpu()? - start < budget {
        for _ in 0..batch {
            let t = std::time::Instant::now();
            black_box(f());
            walls.push(t.elapsed());
        }
        calls += batch;
        batch = batch.saturating_mul(2);
    }
    walls.sort();
    Some(((process_cpu()? - start) / calls, walls[walls.len() / 2]))
}

/// `what`: CPU time and median wall time per render, in ms.
fn report(what: &str, figures: Option<(Duration, Duration)>) {
    if let Some((cpu, wall)) = figures {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        eprintln!("{what}: CPU time per render {:.3} ms, median wall time {:.3} ms", ms(cpu), ms(wall));
    }
}

fn render(c: &mut Criterion) {
    let renderer = Renderer::builtin();
    let production = settings(false);
    // `RENDER_ONCE=production` or `policies`: build that table of 10,000 routes, render it `n`
    // times (`RENDER_TIMES`, default 1) and exit. For `valgrind --tool=callgrind`, whose
    // instruction counts do not move with the machine's noise as times do: a render's count is the
    // difference between `RENDER_TIMES=2` and `1`.
    if let Ok(which) = std::env::var("RENDER_ONCE") {
        let table = match which.as_str() {
            "policies" => policy_table(10_000),
            "production" => table(10_000),
            other => panic!("RENDER_ONCE={other:?}: production or policies"),
        };
        let times = std::env::var("RENDER_TIMES").map_or(1, |t| t.parse().expect("RENDER_TIMES: a number"));
        for _ in 0..times {
            black_box(renderer.render(&table, &production).unwrap());
        }
        std::process::exit(0);
    }
    let mut group = c.benchmark_group("render");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for n in [10usize, 1_000, 10_000] {
        let table = table(n);
        let bytes = renderer.render(&table, &production).unwrap().len();
        eprintln!("render/{n}: config of {bytes} bytes, {} upstreams", table.upstreams.len());
        report(
            &format!("render/production/{n}"),
            cpu_per_call(Duration::from_millis(1500), || renderer.render(&table, &production).unwrap()),
        );
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("production", n), &table, |b, table| {
            b.iter(|| renderer.render(black_box(table), &production).unwrap())
        });
    }
    // Another template on the same table and machine, e.g. an earlier built-in one
    // (`git show <commit>:templates/nginx.conf.j2`): a baseline measured in the same run.
    if let Some(path) = std::env::var_os("RENDER_BASELINE_TEMPLATE") {
        let baseline = Renderer::from_file(std::path::Path::new(&path)).unwrap();
        let table = table(10_000);
        report(
            &format!("render/baseline/10000 ({})", path.to_string_lossy()),
            cpu_per_call(Duration::from_millis(1500), || baseline.render(&table, &production).unwrap()),
        );
        let mixed = policy_table(10_000);
        report(
            &format!("render/baseline/policies/10000 ({})", path.to_string_lossy()),
            cpu_per_call(Duration::from_millis(1500), || baseline.render(&mixed, &production).unwrap()),
        );
    }
    // The same 10,000 routes with a mix of policies (issue 11's bar: at most 50 ms).
    let mixed = policy_table(10_000);
    eprintln!("render/policies/10000: config of {} bytes", renderer.render(&mixed, &production).unwrap().len());
    report(
        "render/policies/10000",
        cpu_per_call(Duration::from_millis(1500), || renderer.render(&mixed, &production).unwrap()),
    );
    group.throughput(Throughput::Elements(10_000));
    group.bench_with_input(BenchmarkId::new("policies", 10_000), &mixed, |b, table| {
        b.iter(|| renderer.render(black_box(table), &production).unwrap())
    });
    // LOCAL renders one server per domain instead of two: the lower bound of the same template.
    let local = settings(true);
    let table = table(10_000);
    group.throughput(Throughput::Elements(10_000));
    group.bench_with_input(BenchmarkId::new("local", 10_000), &table, |b, table| {
        b.iter(|| renderer.render(black_box(table), &local).unwrap())
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let (domains, services) = env_vars(10_000);
    if let Some((cpu, _)) = cpu_per_call(Duration::from_millis(1500), || {
        RouteTable::build(vec![env::parse(Some(&domains), Some(&services))])
    }) {
        eprintln!("build/env_parse_and_merge/10000: CPU time per build {:.3} ms", cpu.as_secs_f64() * 1e3);
    }
    let mut group = c.benchmark_group("build");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("env_parse/10000", |b| {
        b.iter(|| env::parse(Some(black_box(&domains)), Some(black_box(&services))))
    });
    group.bench_function("env_parse_and_merge/10000", |b| {
        b.iter(|| RouteTable::build(vec![env::parse(Some(black_box(&domains)), Some(black_box(&services)))]))
    });
    group.finish();
}

criterion_group!(benches, render, build);
criterion_main!(benches);

//! Traffic insight: access-log lines parsed and aggregated per second on one core, the snapshot of
//! 10,000 domains, and the memory per domain.
//!
//! Target (issue 12): at least 50,000 lines per second.
//!
//! Lines are what nginx's syslog sends for 1,000 routed domains (a few busy, most quiet: domain
//! `i` drawn with weight 1/(i+1)): 90 % 2xx, 3xx, 4xx and 5xx besides, one in twenty retried on a
//! second server, one in a hundred with no upstream, request times from 1 ms to seconds. Every
//! datagram is built once, outside the timed loop. Run with `cargo bench --bench insight`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smart_proxy::insight::{parse, parse_access, Insight};

#[allow(dead_code)]
mod common;

/// 2026-12-05 22:00 UTC.
const T0: u64 = 1_764_972_000_000;

/// A small deterministic generator (xorshift), so every run measures the same lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn domain(i: usize) -> String {
    format!("site{i}.example.com")
}

/// `count` datagrams over `domains` domains.
fn datagrams(domains: usize, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Zipf-like weights: the cumulative sum of 1/(i+1).
    let weights: Vec<f64> = (0..domains)
        .scan(0.0, |sum, i| {
            *sum += 1.0 / (i as f64 + 1.0);
            Some(*sum)
        })
        .collect();
    let total = weights[domains - 1];
    (0..count)
        .map(|_| {
            let pick = rng.below(1 << 30) as f64 / f64::from(1 << 30) * total;
            let d = weights.partition_point(|&w| w < pick).min(domains - 1);
            let server = |k: u64| format!("10.{}.{}.{}:8080", d / 256 % 256, d % 256, k);
            let roll = rng.below(100);
            let status = match roll {
                0..=89 => 200,
                90..=93 => 304,
                94..=96 => 404,
                97 => 499,
                98 => 502,
                _ => 503,
            };
            let ms = match rng.below(10) {
                0..=6 => 1 + rng.below(50),
                7 | 8 => 50 + rng.below(500),
                _ => 500 + rng.below(5000),
            };
            let up_ms = ms.saturating_sub(1);
            let (ua, us, ut) = match rng.below(100) {
                0 => ("-".to_string(), "-".to_string(), "-".to_string()),
                1..=5 => (
                    format!("{}, {}", server(1), server(2)),
                    format!("502, {status}"),
                    format!("0.001, {}.{:03}", up_ms / 1000, up_ms % 1000),
                ),
                _ => (server(1 + rng.below(3)), status.to_string(), format!("{}.{:03}", up_ms / 1000, up_ms % 1000)),
            };
            format!(
                r#"<190>Dec  5 22:00:00 smartproxy: {{"d":"{}","s":{status},"b":{},"t":{}.{:03},"ua":"{ua}","us":"{us}","ut":"{ut}"}}"#,
                domain(d),
                200 + rng.below(50_000),
                ms / 1000,
                ms % 1000
            )
            .into_bytes()
        })
        .collect()
}

/// A datagram's request as its domain's access log line (`insight::ACCESS_LOG_FORMAT`): its domain's
/// index and the line.
fn access_line(i: usize, datagram: &[u8]) -> (usize, Vec<u8>) {
    let json = &datagram[datagram.iter().position(|&b| b == b'{').unwrap()..];
    let e = parse(json).unwrap();
    let d: usize = e.domain.trim_start_matches("site").split('.').next().unwrap().parse().unwrap();
    let ms = e.request_us / 1000;
    let line = format!(
        r#"{{"time":"2026-12-05T22:00:00+00:00","remote_addr":"203.0.113.{}","request":"GET /products/{i}?page={} HTTP/1.1","status":{},"bytes_sent":{},"domain":"{}","upstream":"{}","request_time":{}.{:03},"upstream_status":"{}","upstream_response_time":"{}"}}"#,
        i % 250,
        i % 7,
        e.status,
        e.bytes,
        e.domain,
        e.upstream_addr,
        ms / 1000,
        ms % 1000,
        e.upstream_status,
        e.upstream_time
    );
    (d, line.into_bytes())
}

/// CPU time (user + system) of the calling thread so far (utime and stime).
fn thread_cpu() -> Option<Duration> {
    common::stat_cpu("/proc/thread-self/stat", 11)
}

/// CPU time per call of `f`, averaged over calls for about `budget` of CPU time: unlike wall
/// time, it hardly moves when other work shares the machine (the pattern of benches/render.rs).
fn cpu_per_call<T>(budget: Duration, mut f: impl FnMut() -> T) -> Option<Duration> {
    let start = thread_cpu()?;
    let (mut calls, mut batch) = (0u32, 1u32);
    while calls < 3 || thread_cpu()? - start < budget {
        for _ in 0..batch {
            black_box(f());
        }
        calls += batch;
        batch = batch.saturating_mul(2);
    }
    Some((thread_cpu()? - start) / calls)
}

/// The median of `runs` measurements of lines per second of CPU time.
fn lines_per_second(runs: usize, lines: usize, mut f: impl FnMut()) -> Option<(f64, f64, f64)> {
    let mut rates: Vec<f64> = Vec::new();
    for _ in 0..runs {
        let t = cpu_per_call(Duration::from_millis(500), &mut f)?;
        rates.push(lines as f64 / t.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Some((rates[0], rates[runs / 2], rates[runs - 1]))
}

fn ingest(c: &mut Criterion) {
    let names: Vec<String> = (0..1000).map(domain).collect();
    let lines = datagrams(1000, 100_000);
    let bytes: usize = lines.iter().map(Vec::len).sum();
    eprintln!("insight/lines: {} datagrams, {} bytes on average", lines.len(), bytes / lines.len());

    let parsed = || lines.iter().filter(|l| parse(black_box(l)).is_ok()).count();
    assert_eq!(parsed(), lines.len());
    if let Some((low, median, high)) = lines_per_second(7, lines.len(), || {
        black_box(parsed());
    }) {
        eprintln!("insight/parse: {median:.0} lines/s of CPU time (median of 7; {low:.0} .. {high:.0})");
    }

    // 20,000 lines per second of log time: the windows roll while the bench runs.
    let mut insight = Insight::new();
    insight.set_domains(&names);
    let mut now = T0;
    let mut batch = || {
        for line in &lines {
            now += 1; // One line per 50 µs, counted in ms: 20 lines share each millisecond.
            insight.ingest(black_box(line), now / 20);
        }
    };
    if let Some((low, median, high)) = lines_per_second(7, lines.len(), &mut batch) {
        eprintln!("insight/ingest/1000 domains: {median:.0} lines/s of CPU time (median of 7; {low:.0} .. {high:.0})");
    }
    // The same requests as the per-domain access logs carry them (the default where the agent
    // reads nginx's LOG_DIR): the seed's fields, a request line and the client, the domain
    // taken from the file.
    let access: Vec<(usize, Vec<u8>)> = lines.iter().enumerate().map(|(i, l)| access_line(i, l)).collect();
    let bytes: usize = access.iter().map(|(_, l)| l.len()).sum();
    eprintln!("insight/access lines: {} bytes on average", bytes / access.len());
    let parsed_access = || access.iter().filter(|(_, l)| matches!(parse_access(black_box(l)), Ok(Some(_)))).count();
    assert_eq!(parsed_access(), access.len());
    if let Some((low, median, high)) = lines_per_second(7, access.len(), || {
        black_box(parsed_access());
    }) {
        eprintln!("insight/parse_access: {median:.0} lines/s of CPU time (median of 7; {low:.0} .. {high:.0})");
    }
    let mut access_insight = Insight::new();
    access_insight.set_domains(&names);
    let mut now = T0;
    let mut access_batch = || {
        for (d, line) in &access {
            now += 1;
            access_insight.ingest_access(&names[*d], [black_box(&line[..])], now / 20);
        }
    };
    if let Some((low, median, high)) = lines_per_second(7, access.len(), &mut access_batch) {
        eprintln!(
            "insight/ingest_access/1000 domains: {median:.0} lines/s of CPU time (median of 7; {low:.0} .. {high:.0})"
        );
    }
    let dropped = access_insight.dropped();
    assert_eq!((dropped.malformed, dropped.unrouted, dropped.oversized), (0, 0, 0));
    let mut group = c.benchmark_group("insight");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse/100000", |b| b.iter(|| black_box(parsed())));
    group.bench_function("ingest/100000", |b| b.iter(&mut batch));
    group.finish();
    let dropped = insight.dropped();
    assert_eq!((dropped.malformed, dropped.unrouted, dropped.oversized), (0, 0, 0));
}

fn snapshot(c: &mut Criterion) {
    let n = 10_000;
    let names: Vec<String> = (0..n).map(domain).collect();
    let mut insight = Insight::new();
    insight.set_domains(&names);
    // Every domain with traffic for 15 minutes: a line in each 5 s slot, 3 servers each, so every
    // slot of every window holds its histograms (the snapshot's heaviest work).
    let mut rng = Rng(7);
    let mut line = String::new();
    for slot in 0..180u64 {
        let now = T0 + slot * 5_000;
        for (i, name) in names.iter().enumerate() {
            use std::fmt::Write;
            line.clear();
            let ms = 1 + rng.below(300);
            let status = if rng.below(50) == 0 { 502 } else { 200 };
            let _ = write!(
                line,
                r#"{{"d":"{name}","s":{status},"b":512,"t":0.{ms:03},"ua":"10.0.{}.{}:80","us":"{status}","ut":"0.{ms:03}"}}"#,
                i % 256,
                rng.below(3)
            );
            insight.ingest(line.as_bytes(), now);
        }
        if slot % 12 == 11 {
            insight.tick(now);
        }
    }
    let now = T0 + 180 * 5_000;
    let busy = insight.memory_bytes();
    eprintln!(
        "insight/memory/{n} domains, a request every 5 s: {:.1} MiB, {} bytes per domain",
        busy as f64 / (1 << 20) as f64,
        busy / n
    );
    let snap = insight.snapshot(now);
    assert_eq!(snap.domains.len(), n);
    assert!(snap.domains.iter().all(|d| d.last_15_minutes.requests == 180));
    let json = serde_json::to_vec(&snap).unwrap();
    eprintln!("insight/snapshot/{n}: {} bytes of JSON ({} per domain)", json.len(), json.len() / n);
    if let Some(t) = cpu_per_call(Duration::from_millis(1500), || insight.snapshot(now)) {
        eprintln!("insight/snapshot/{n}: CPU time per snapshot {:.1} ms", t.as_secs_f64() * 1e3);
    }
    if let Some(t) = cpu_per_call(Duration::from_millis(1500), || serde_json::to_vec(&insight.snapshot(now)).unwrap()) {
        eprintln!("insight/snapshot/{n}: CPU time per snapshot and JSON {:.1} ms", t.as_secs_f64() * 1e3);
    }
    let mut text = String::new();
    insight.encode(&mut text);
    eprintln!(
        "insight/prometheus/{n}: {} bytes, {} series",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    if let Some(t) = cpu_per_call(Duration::from_millis(1500), || {
        let mut out = String::new();
        insight.encode(&mut out);
        out
    }) {
        eprintln!("insight/prometheus/{n}: CPU time per encode {:.1} ms", t.as_secs_f64() * 1e3);
    }
    if let Some(t) = cpu_per_call(Duration::from_millis(1500), || insight.tick(now)) {
        eprintln!("insight/tick/{n}: CPU time per tick {:.1} ms", t.as_secs_f64() * 1e3);
    }
    let mut group = c.benchmark_group("insight");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.bench_function("snapshot/10000", |b| b.iter(|| black_box(insight.snapshot(now))));
    group.finish();

    // 100 domains at 60 requests per second each for 15 minutes: the busy slots' counts widen.
    let mut heavy = Insight::new();
    heavy.set_domains(&names[..100]);
    let lines: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"d":"{}","s":200,"b":512,"t":0.0{:02},"ua":"10.0.0.1:80","us":"200","ut":"0.0{:02}"}}"#,
                names[i],
                i % 90 + 10,
                i % 90 + 5
            )
        })
        .collect();
    for second in 0..900u64 {
        for line in &lines {
            for _ in 0..60 {
                heavy.ingest(line.as_bytes(), T0 + second * 1000);
            }
        }
    }
    eprintln!("insight/memory/100 domains at 60 req/s: {} bytes per domain", heavy.memory_bytes() / 100);

    // An hour later, with no traffic: the windows' histograms are freed.
    insight.tick(now + 3_600_000);
    let idle = insight.memory_bytes();
    eprintln!(
        "insight/memory/{n} idle domains: {:.1} MiB, {} bytes per domain",
        idle as f64 / (1 << 20) as f64,
        idle / n
    );
}

criterion_group!(benches, ingest, snapshot);
criterion_main!(benches);

//! 50 domains issued against Debian's pebble with challenge delays off (`PEBBLE_VA_NOSLEEP=1`),
//! HTTP-01 answered from the webroot by the tests' stub HTTP server on pebble's validation port.
//!
//! Two clients in the same run, alternating, on the same pebble:
//! - **ours**: `CertManager::run` (the agent's code: plan, per-domain lock and state, webroot
//!   solver, journal, certbot-layout write) ordering 50 missing certificates;
//! - **baseline**: a minimal direct instant-acme loop with the same concurrency and the same
//!   polling delays (0.25 s, ×1.5), presenting tokens from memory and writing nothing: what
//!   the CA itself takes.
//!
//! Printed per concurrency: median total time of a batch over the rounds, the ratio ours /
//! baseline (target: ≤ 1.10, the order time dominated by the CA), the median per-order time
//! of the baseline, and the peak number of orders in flight (ours: domain locks held, sampled
//! every 10 ms; baseline: counted). Run with `cargo bench --bench acme` (needs Debian's pebble).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use smart_proxy::certs::manager::CertManager;
use smart_proxy::certs::store::CertStore;
use smart_proxy::config::Config;
use smart_proxy::routes::DomainName;

#[path = "../tests/support/mod.rs"]
mod support;

use support::pebble;
use support::stub_http::StubHttp;

const DOMAINS: usize = 50;
const ROUNDS: usize = 3;
const CONCURRENCIES: [usize; 2] = [4, 16];

/// The same polling as `smart_proxy::certs::acme`.
const READY_POLICY: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(180));
const CERT_POLICY: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(120));

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    settings: smart_proxy::settings::Settings,
}

/// Serves HTTP-01 tokens on `port` with the stub HTTP server: from `tokens` (baseline), else
/// from `webroot` (ours).
fn serve_tokens(port: u16, webroot: PathBuf, tokens: Arc<Mutex<HashMap<String, String>>>) -> StubHttp {
    StubHttp::start(port, move |request| {
        let token = request.path.strip_prefix("/.well-known/acme-challenge/")?;
        if token.contains('/') || token.contains("..") {
            return None;
        }
        let from_memory = tokens.lock().unwrap().get(token).cloned();
        from_memory.or_else(|| std::fs::read_to_string(webroot.join(".well-known/acme-challenge").join(token)).ok())
    })
}

fn names(prefix: &str) -> Vec<DomainName> {
    (0..DOMAINS).map(|i| DomainName::parse(&format!("{prefix}-{i}.bench.test")).unwrap()).collect()
}

/// Ours: one `CertManager` batch of 50 missing certificates. Returns (total, peak in flight).
async fn ours(manager: &CertManager, store: &CertStore, domains: &[DomainName]) -> (Duration, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, store, domains) = (stop.clone(), store.clone(), domains.to_vec());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(domains.iter().filter(|d| store.is_locked(d)).count());
                // Each probe takes a free lock for an instant (and costs three syscalls per
                // domain on a 2-core machine): every 10 ms is enough for orders of ~0.5 s.
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let started = Instant::now();
    let report = manager.run(domains, &[]).await;
    let total = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(report.issued.len(), domains.len(), "failed: {:?}, busy: {:?}", report.failed, report.busy);
    (total, peak)
}

/// Baseline: instant-acme alone. Returns (total, per-order times, peak in flight).
async fn baseline(
    account: &Account,
    tokens: &Mutex<HashMap<String, String>>,
    domains: &[DomainName],
    concurrency: usize,
) -> (Duration, Vec<Duration>, usize) {
    let in_flight = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let started = Instant::now();
    let times: Vec<Duration> = futures::stream::iter(domains)
        .map(|domain| {
            let (in_flight, peak) = (&in_flight, &peak);
            // Bounded like ours (60 s per request there): a stuck exchange fails the run
            // instead of hanging it.
            async move {
                tokio::time::timeout(Duration::from_secs(180), async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let started = Instant::now();
                    let identifiers = [Identifier::Dns(domain.as_str().to_string())];
                    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.expect("new order");
                    let mut presented = Vec::new();
                    let mut authorizations = order.authorizations();
                    while let Some(authz) = authorizations.next().await {
                        let mut authz = authz.expect("authorization");
                        if authz.status != AuthorizationStatus::Pending {
                            continue;
                        }
                        let mut challenge = authz.challenge(ChallengeType::Http01).expect("http-01");
                        let key_authorization = challenge.key_authorization().as_str().to_string();
                        tokens.lock().unwrap().insert(challenge.token.clone(), key_authorization);
                        presented.push(challenge.token.clone());
                        challenge.set_ready().await.expect("set ready");
                    }
                    assert_eq!(order.poll_ready(&READY_POLICY).await.expect("ready"), OrderStatus::Ready);
                    for token in presented {
                        tokens.lock().unwrap().remove(&token);
                    }
                    order.finalize().await.expect("finalize");
                    order.poll_certificate(&CERT_POLICY).await.expect("certificate");
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    started.elapsed()
                })
                .await
                .expect("a baseline order within 180 s")
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (started.elapsed(), times, peak.load(Ordering::SeqCst))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    // `cargo test --benches` runs benches with `--bench` absent: compile-only checks stay cheap.
    if !std::env::args().any(|a| a == "--bench") {
        println!("acme bench: run with `cargo bench --bench acme`");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pebble = pebble::Pebble::start();
    let webroot = tempfile::tempdir().unwrap();
    let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let _tokens_server = serve_tokens(pebble.http_port(), webroot.path().to_path_buf(), tokens.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let account = runtime.block_on(async {
        let new = NewAccount { contact: &[], terms_of_service_agreed: true, only_return_existing: false };
        Account::builder_with_root(pebble.ca_root_path())
            .unwrap()
            .create(&new, pebble.directory_url(), None)
            .await
            .expect("baseline account")
            .0
    });

    println!("acme: {DOMAINS} domains per batch against pebble (PEBBLE_VA_NOSLEEP=1), HTTP-01, {ROUNDS} rounds");
    for concurrency in CONCURRENCIES {
        let certs = tempfile::tempdir().unwrap();
        let args = [
            "bench".to_string(),
            format!("--certs-dir={}", certs.path().display()),
            format!("--acme-webroot={}", webroot.path().display()),
            "--local=false".into(),
            "--acme=on".into(),
            "--acme-email=bench@example.com".into(),
            format!("--acme-directory={}", pebble.directory_url()),
            format!("--acme-ca-root={}", pebble.ca_root_path().display()),
            format!("--acme-concurrency={concurrency}"),
            "--dns-check=off".into(),
        ];
        let config = Config::from_settings(&Cli::try_parse_from(args).expect("settings").settings).expect("config");
        let manager = config.cert_manager().unwrap().expect("ACME on");
        let store = CertStore::new(certs.path());
        // Warm-up (not measured): registers our account, opens connections, on both sides.
        runtime.block_on(async {
            ours(&manager, &store, &names(&format!("warm-ours-c{concurrency}"))[..2]).await;
            baseline(&account, &tokens, &names(&format!("warm-base-c{concurrency}"))[..2], concurrency).await;
        });

        let (mut ours_totals, mut base_totals, mut base_orders) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_peak, mut base_peak) = (0, 0);
        for round in 0..ROUNDS {
            runtime.block_on(async {
                let (total, times, peak) =
                    baseline(&account, &tokens, &names(&format!("base-c{concurrency}-r{round}")), concurrency).await;
                base_totals.push(total);
                base_orders.extend(times);
                base_peak = base_peak.max(peak);
                let (total, peak) = ours(&manager, &store, &names(&format!("ours-c{concurrency}-r{round}"))).await;
                ours_totals.push(total);
                ours_peak = ours_peak.max(peak);
            });
        }
        let (ours_median, base_median) = (median(ours_totals.clone()), median(base_totals.clone()));
        println!(
            "concurrency {concurrency:>2}: ours {:>6.0} ms (rounds {:?}), baseline {:>6.0} ms (rounds {:?}), ratio {:.3}; \
             baseline per order {:.0} ms (median); peak in flight ours {ours_peak}, baseline {base_peak}",
            ours_median.as_secs_f64() * 1000.0,
            ours_totals.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
            base_median.as_secs_f64() * 1000.0,
            base_totals.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
            ours_median.as_secs_f64() / base_median.as_secs_f64(),
            median(base_orders).as_secs_f64() * 1000.0,
        );
    }
}

//! Followers (issue 13): what a bundle of 1,000 TLS routes costs the agent and a follower.
//!
//! In one process, on the library's own code paths: the agent side is `follow::server::Publisher`
//! (publish: read every certificate and key, digest; then the first poll of a revision: render
//! for the follower's layout, serialise, seal and sign); the follower side opens the bundle,
//! checks and writes its files (`bundle::write_files`) and applies the config through
//! `Applier::apply_rendered`, whose cost is the real `nginx -t` of Debian's nginx on a copy of
//! the follower's config directory (nginx is not running, so no reload is measured; a reload is
//! the agent's own cost, see `benches/agent.rs`). Each round alternates a table of 1,000 and one
//! of 1,001 routes, so that every publish is a new revision and every apply a change.
//!
//! Prints the medians and the bundle's size (plain JSON and sealed). `BENCH_QUICK=1`: 3 rounds.
//! Run with `cargo bench --bench follow` (needs nginx).

use std::time::{Duration, Instant};

use smart_proxy::apply::{nginx::LocalNginx, Applier, Nginx};
use smart_proxy::follow::bundle::{self, Bundle, Layout};
use smart_proxy::follow::server::{Publisher, Source};
use smart_proxy::follow::FollowerKey;
use smart_proxy::render::{RenderSettings, Renderer};
use smart_proxy::routes::RouteTable;

#[path = "../tests/support/mod.rs"]
mod support;

use support::{env_table, nginx_bin, nginx_version, NginxSandbox};

const ROUTES: usize = 1000;

fn table(n: usize) -> RouteTable {
    let domains: Vec<String> = (0..n).map(|i| format!("site{i}.bench.test:app")).collect();
    env_table(&domains.join(","), "app:127.0.0.1:8080")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds = if std::env::var_os("BENCH_QUICK").is_some() { 3 } else { 15 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let key = FollowerKey::from_bytes(b"bench-key-0123456789abcdef-0123456789abcdef");

    // The agent: production mode, a placeholder certificate for each domain.
    let agent = NginxSandbox::new();
    let settings = RenderSettings { nginx_version: nginx_version(), ..agent.settings(false) };
    let tables = [table(ROUTES), table(ROUTES + 1)];
    for t in &tables {
        agent.placeholders(t);
    }
    let renderer = Renderer::builtin();
    let publisher = Publisher::new(key.clone());

    // The follower: its own directories and main config, a different port.
    let node = NginxSandbox::new();
    let conf = node.path("conf.d/default.conf");
    let main = node.path("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {};\nerror_log {} notice;\nevents {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n    include {}/*.conf;\n}}\n",
            node.path("nginx.pid").display(),
            node.path("logs/error.log").display(),
            node.path("conf.d").display()
        ),
    )
    .unwrap();
    let mine = RenderSettings { http_port: 18080, https_port: 18443, ..node.settings(false) };
    let layout = Layout::of(&RenderSettings { nginx_version: nginx_version(), ..mine }, &conf).unwrap();
    let nginx = Nginx::Local(LocalNginx { bin: nginx_bin(), main_conf: main, child: None });
    let mut applier = Applier::new(nginx, conf.clone(), node.path("certs"));

    let (mut publish, mut first_poll, mut apply, mut open) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut plain_size, mut sealed_size, mut files, mut first_apply) = (0, 0, 0, None);
    for round in 0..=rounds {
        let t = &tables[round % 2];
        let config = renderer.render(t, &settings).unwrap();
        let started = Instant::now();
        publisher.publish(Source { table: t.clone(), renderer: renderer.clone(), settings: settings.clone(), config });
        let published = started.elapsed();

        let started = Instant::now();
        let (body, signature, _) = runtime
            .block_on(publisher.sealed(&layout, "00112233445566778899aabbccddeeff"))
            .expect("published")
            .expect("renders");
        let polled = started.elapsed();

        let started = Instant::now();
        let plain = key.open(&body, &signature).unwrap();
        let got: Bundle = serde_json::from_slice(&plain).unwrap();
        let opened = started.elapsed();
        let written = bundle::write_files(&got.files, &layout.dirs()).unwrap().len();
        let applied = runtime.block_on(applier.apply_rendered(&got.config)).expect("nginx -t accepts the bundle");
        assert!(applied.changed);
        let took = started.elapsed();
        if round == 0 {
            // The first apply writes every file: reported apart.
            first_apply = Some((took, written));
            continue;
        }
        publish.push(published);
        first_poll.push(polled);
        open.push(opened);
        apply.push(took);
        plain_size = plain.len();
        sealed_size = body.len();
        files = got.files.len();
    }
    let (first, first_written) = first_apply.unwrap();
    println!("follow bench: {ROUTES} TLS routes, {rounds} rounds (medians)");
    println!(
        "  bundle: {files} files, {:.1} MB plain JSON, {:.1} MB sealed",
        plain_size as f64 / 1e6,
        sealed_size as f64 / 1e6
    );
    println!("  agent: publish (read certificates and keys, digest) {:?}", median(publish));
    println!(
        "  agent: first poll of a revision (render for the layout, serialise, seal, sign) {:?}",
        median(first_poll)
    );
    println!("  follower: verify + open + parse {:?}", median(open));
    println!("  follower: apply a change (verify, open, write changed files, nginx -t, swap) {:?}", median(apply));
    println!("  follower: first apply ({first_written} files written) {first:?}");
}

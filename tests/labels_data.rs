//! Label behaviour as data: each `tests/testdata/labels/*.txt` is a set of containers (labels,
//! networks, exposed ports, state, health), optionally nginx's networks and `DOMAINS`/`SERVICES`,
//! run through `pipeline::build` as the agent does; the resulting route table and every diagnostic
//! are compared with the case's snapshot in `tests/testdata/labels/snapshots/`. The format is in
//! `tests/testdata/labels/README.md`. No Docker and no nginx: labels are pure.
//!
//! A new or changed case: `cargo insta test --test tests -- labels_data` then `cargo insta review`
//! (or `INSTA_UPDATE=always`). Under `CI=true` insta writes nothing and a missing or different
//! snapshot fails the test.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use smart_proxy::pipeline;
use smart_proxy::routes::{BackendState, Namespace, RouteTable, SourceOutput};
use smart_proxy::sources::env;
use smart_proxy::sources::labels::{Container, Health, NetworkAddress};

const PREFIX: &str = "smart-proxy";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/labels")
}

/// Snapshots live beside the cases, named after them (`<case>.snap`); relative to this file.
const SNAPSHOTS: &str = "testdata/labels/snapshots";

/// The case files, sorted by name.
fn cases() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/testdata/labels exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir().display());
    files
}

/// One case file, parsed.
#[derive(Default)]
struct Case {
    containers: Vec<Container>,
    nginx_networks: Option<BTreeSet<String>>,
    domains: Option<String>,
    services: Option<String>,
}

impl Case {
    fn parse(file: &Path) -> Case {
        let text = std::fs::read_to_string(file).unwrap();
        let mut case = Case::default();
        for (n, raw) in text.lines().enumerate() {
            let fail = |message: &str| -> ! { panic!("{}:{}: {message}: {raw:?}", file.display(), n + 1) };
            let line = raw.trim_start();
            if n == 0 && !line.starts_with("# ") {
                fail("a case starts with a '# ' line saying what it shows");
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            if raw.starts_with(char::is_whitespace) {
                let Some(c) = case.containers.last_mut() else { fail("an indented line belongs to a container") };
                container_line(c, word, rest).unwrap_or_else(|e| fail(&e));
                continue;
            }
            match word {
                "container" if !rest.trim().is_empty() => case.containers.push(Container {
                    id: rest.trim().to_string(),
                    name: rest.trim().to_string(),
                    running: true,
                    ..Container::default()
                }),
                "nginx-networks" => case.nginx_networks = Some(rest.split_whitespace().map(str::to_string).collect()),
                "env" => match rest.split_once('=') {
                    Some(("DOMAINS", value)) if case.domains.is_none() => case.domains = Some(value.to_string()),
                    Some(("SERVICES", value)) if case.services.is_none() => case.services = Some(value.to_string()),
                    _ => fail("expected env DOMAINS=... or env SERVICES=..., each at most once"),
                },
                _ => fail("expected container <name>, nginx-networks [<name>...] or env <VAR>=<value>"),
            }
        }
        case
    }

    /// The table as the agent builds it: labels, then the env source when the case has one.
    fn table(&self) -> RouteTable {
        let statics = if self.domains.is_some() || self.services.is_some() {
            env::parse(self.domains.as_deref(), self.services.as_deref())
        } else {
            SourceOutput::default()
        };
        pipeline::build(Some(&self.containers), self.nginx_networks.clone(), statics, PREFIX)
    }
}

/// One indented line of a container.
fn container_line(c: &mut Container, word: &str, rest: &str) -> Result<(), String> {
    match word {
        "label" => {
            let (name, value) = rest.split_once('=').ok_or("expected label <name>=<value>")?;
            if c.labels.insert(name.to_string(), value.to_string()).is_some() {
                return Err(format!("label {name} is set twice"));
            }
        }
        "network" => {
            let mut words = rest.split_whitespace();
            let name = words.next().ok_or("expected network <name> [<address>...]")?;
            let mut address = NetworkAddress::default();
            for word in words {
                match word.parse::<IpAddr>().map_err(|_| format!("{word:?} is not an IP address"))? {
                    IpAddr::V4(ip) => address.ipv4 = Some(ip),
                    IpAddr::V6(ip) => address.ipv6 = Some(ip),
                }
            }
            c.networks.insert(name.to_string(), address);
        }
        "expose" => {
            for port in rest.split_whitespace() {
                c.exposed_ports.push(port.parse().map_err(|_| format!("{port:?} is not a port"))?);
            }
            c.exposed_ports.sort();
            c.exposed_ports.dedup();
        }
        "state" => {
            c.running = match rest.trim() {
                "running" => true,
                "stopped" => false,
                _ => return Err("expected state running|stopped".into()),
            }
        }
        "health" => {
            c.health = Some(match rest.trim() {
                "healthy" => Health::Healthy,
                "starting" => Health::Starting,
                "unhealthy" => Health::Unhealthy,
                _ => return Err("expected health healthy|starting|unhealthy".into()),
            })
        }
        _ => return Err("expected label, network, expose, state or health".into()),
    }
    Ok(())
}

/// The table as the snapshot shows it: each site with its locations, each upstream with its
/// servers (and why each network was chosen), then every diagnostic exactly as printed.
fn render(table: &RouteTable) -> String {
    let mut out = String::new();
    let none = |list_empty: bool| if list_empty { " none" } else { "" };
    let _ = writeln!(out, "sites:{}", none(table.sites.is_empty()));
    for site in &table.sites {
        // Health and hsts are shown only when they are not the defaults, a policy only when set,
        // so cases without them read as before.
        let mut health =
            if site.health == Default::default() { String::new() } else { format!(", health {}", site.health) };
        if site.hsts != Default::default() {
            health.push_str(&format!(", hsts {}", site.hsts));
        }
        if let Some(redirect) = &site.redirect {
            health.push_str(&format!(", redirects to {redirect}"));
        }
        let _ = writeln!(out, "  {} (tls {}{health})", site.domain, site.tls);
        for l in &site.locations {
            let target = match &l.upstream {
                Some(id) => format!("upstream {id}"),
                None => "no service (answers 503)".to_string(),
            };
            let allow = match &l.allow[..] {
                [] => "any".to_string(),
                list => list.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            };
            let policy = if l.policy.is_default() { String::new() } else { format!(", {}", l.policy.describe()) };
            let _ = writeln!(out, "    {}: {target}, allow {allow}{policy}, from {}", l.path, l.origin.source());
        }
    }
    let _ = writeln!(out, "upstreams:{}", none(table.upstreams.is_empty()));
    for u in &table.upstreams {
        let namespace = match u.namespace {
            Namespace::Docker => "docker",
            Namespace::Static => "static",
        };
        let mut lb = if u.balance == Default::default() { String::new() } else { format!(", lb {}", u.balance) };
        if u.protocol != Default::default() {
            lb.push_str(&format!(", {}", u.protocol.describe()));
        }
        let _ = writeln!(out, "  {} ({namespace} service {}{lb})", u.id, u.service);
        if u.backends.is_empty() {
            let _ = writeln!(out, "    no server (answers 502)");
        }
        for b in &u.backends {
            let state = match b.state {
                BackendState::Up => "up",
                BackendState::Starting => "starting, left out",
                BackendState::Unhealthy => "unhealthy, left out",
            };
            let network = b.network.as_ref().map(|n| format!(", network {}: {}", n.name, n.reason)).unwrap_or_default();
            let _ = writeln!(out, "    {} {state}{network}, from {}", b.address(), b.origin.source());
        }
    }
    let _ = writeln!(out, "diagnostics:{}", none(table.diagnostics.is_empty()));
    for d in &table.diagnostics {
        let _ = writeln!(out, "  {d}");
    }
    out
}

#[test]
fn every_case_matches_its_snapshot() {
    let mut failed = Vec::new();
    for file in cases() {
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        let case = Case::parse(&file);
        let rendered = render(&case.table());
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(SNAPSHOTS);
        settings.set_prepend_module_to_snapshot(false);
        // Shown by `cargo insta review` with the snapshot (the case says what it shows).
        settings.set_input_file(&file);
        settings.set_omit_expression(true);
        // Every case is compared (and, outside CI, a `.snap.new` written) before the test fails.
        let compare = || settings.bind(|| insta::assert_snapshot!(name.as_str(), rendered));
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(compare)).is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "cases whose snapshot is missing or differs: {failed:?}");
}

/// A snapshot whose case was renamed or removed would otherwise stay behind unnoticed.
#[test]
fn every_snapshot_has_a_case() {
    let cases: BTreeSet<String> =
        cases().iter().map(|f| f.file_stem().unwrap().to_str().unwrap().to_string()).collect();
    let snapshots = dir().join("snapshots");
    let stale: Vec<String> = std::fs::read_dir(&snapshots)
        .unwrap_or_else(|e| panic!("{}: {e}", snapshots.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.strip_suffix(".snap").is_some_and(|stem| !cases.contains(stem)))
        .collect();
    assert!(stale.is_empty(), "snapshots without a case in {}: {stale:?}", dir().display());
}

/// The hostile cases rely on a value reaching the parser exactly as written.
#[test]
fn the_case_format_keeps_values_exactly_and_rejects_typos() {
    let mut c = Container::default();
    container_line(&mut c, "label", "smart-proxy.domains= a.com ;x").unwrap();
    container_line(&mut c, "network", "proxy 172.18.0.2 fd00::2").unwrap();
    container_line(&mut c, "expose", "9090 8080 9090").unwrap();
    assert_eq!(c.labels["smart-proxy.domains"], " a.com ;x", "a value is kept exactly");
    assert_eq!(c.networks["proxy"].ipv6, Some("fd00::2".parse().unwrap()));
    assert_eq!(c.exposed_ports, [8080, 9090]);
    assert!(container_line(&mut c, "label", "smart-proxy.domains=b.com").is_err(), "set twice");
    assert!(container_line(&mut c, "network", "proxy 172.18.0.300").is_err());
    assert!(container_line(&mut c, "state", "paused").is_err());
    assert!(container_line(&mut c, "lable", "x=y").is_err());
}

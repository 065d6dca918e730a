//! The whole process: `nginx-smart-proxy --dry-run --no-docker` with 1,000 `DOMAINS` entries,
//! config written to /dev/null. Target (issue): under 100 ms.
//!
//! Baselines measured in the same run, so the figures can be read as ratios on any machine:
//! - `--version`: process start and exit, nothing else (the floor);
//! - `--dry-run` with no routes at all: the fixed cost of a dry run (runtime, settings, template).
//!
//! `--nginx-version` and `--resolver` are given so the agent spawns no `nginx -v` and reads no
//! /etc/resolv.conf; the environment is cleared so no setting leaks in from the shell.
//! Run with `cargo bench --bench dry_run`.

use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

mod common;
use common::env_vars;

const BIN: &str = env!("CARGO_BIN_EXE_nginx-smart-proxy");

fn dry_run(domains: &str, services: &str) -> Command {
    dry_run_to(domains, services, "/dev/null")
}

fn dry_run_to(domains: &str, services: &str, output: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("DOMAINS", domains)
        .env("SERVICES", services)
        .args(["--dry-run", "--no-docker", "--nginx-version", "1.27.0", "--resolver", "127.0.0.11", "--output", output])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn version() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().arg("--version").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// CPU time (user + system) of this process's waited-for children so far (cutime and cstime).
fn children_cpu() -> Option<Duration> {
    common::stat_cpu("/proc/self/stat", 13)
}

/// The CPU time one run of `cmd` costs, averaged over `n` runs: unlike wall time, it hardly
/// moves when other work shares the machine.
fn cpu_per_run(mut cmd: Command, n: u32) -> Option<Duration> {
    let before = children_cpu()?;
    for _ in 0..n {
        assert!(cmd.status().unwrap().success());
    }
    Some((children_cpu()? - before) / n)
}

/// Runs `cmd` once and checks it succeeded (outside the timing, so a broken setup fails loudly).
fn check(mut cmd: Command, what: &str) {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().expect("run nginx-smart-proxy");
    assert!(out.status.success(), "{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn bench(c: &mut Criterion) {
    let (domains, services) = env_vars(1_000);
    check(version(), "--version");
    check(dry_run("", ""), "--dry-run with no routes");
    check(dry_run(&domains, &services), "--dry-run with 1,000 domains");
    {
        // The run really renders 1,000 sites (to stdout here).
        let out = dry_run_to(&domains, &services, "/dev/stdout").stdout(Stdio::piped()).output().unwrap();
        let config = String::from_utf8(out.stdout).unwrap();
        assert_eq!(config.matches("# --- site").count(), 1_000, "expected 1,000 sites in the config");
        eprintln!("dry_run: config of {} bytes", config.len());
    }

    // CPU time per process, printed beside criterion's wall-clock figures (the figures to trust
    // on a busy machine).
    let cpu = [
        ("baseline_version", cpu_per_run(version(), 100)),
        ("baseline_dry_run_0_domains", cpu_per_run(dry_run("", ""), 100)),
        ("dry_run_1000_domains", cpu_per_run(dry_run(&domains, &services), 40)),
    ];
    for (name, t) in &cpu {
        match t {
            Some(t) => eprintln!("process/{name}: CPU time per run {:.1} ms", t.as_secs_f64() * 1e3),
            None => eprintln!("process/{name}: CPU time not available (no /proc)"),
        }
    }
    if let (Some(base), Some(run)) = (cpu[0].1, cpu[2].1) {
        eprintln!(
            "process: dry run with 1,000 domains = {:.1} x the --version floor (CPU time)",
            run.as_secs_f64() / base.as_secs_f64()
        );
    }

    let mut group = c.benchmark_group("process");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let run = |mut cmd: Command| move || assert!(cmd.status().unwrap().success());
    group.bench_function("baseline_version", |b| b.iter(run(version())));
    group.bench_function("baseline_dry_run_0_domains", |b| b.iter(run(dry_run("", ""))));
    group.bench_function("dry_run_1000_domains", |b| b.iter(run(dry_run(&domains, &services))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

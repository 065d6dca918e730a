//! Load with `wrk` (Debian's package; `.ci/run` installs it): requests through nginx while the
//! agent changes its config, and wrk's own summary of what failed.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// True when `wrk` can be run. Missing: a failure under CI, else a loud skip.
pub fn have_wrk() -> bool {
    match Command::new("wrk").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => true,
        Err(e) => {
            let test = std::thread::current().name().unwrap_or("this test").to_string();
            if super::in_ci() {
                panic!("{test}: wrk is required under CI and cannot be run ({e}); install Debian's wrk (apt-get install wrk; .ci/run does this)");
            }
            eprintln!(
                "\n*** SKIPPED {test}: wrk cannot be run ({e}); install Debian's wrk (apt-get install wrk). ***\n"
            );
            false
        }
    }
}

/// A running wrk; interrupted (SIGINT: wrk stops and prints its summary) when finished, killed
/// when dropped.
pub struct Wrk {
    child: Option<Child>,
}

impl Wrk {
    /// `wrk -t2 -c<connections> -d<max> --timeout 10s --latency -H 'Host: <host>' -H 'Connection:
    /// close' http://<addr>/`.
    ///
    /// `--timeout 10s` (wrk's default is 2 s): on a busy host a request can take that long without
    /// anything failing; a request that hangs still counts as an error.
    ///
    /// `Connection: close`: a new connection per request. On persistent connections a reload
    /// makes nginx's old workers close their idle keep-alive connections, and a request the client
    /// sent at that instant is lost with the connection (the race every HTTP/1.1 client must
    /// handle by retrying; wrk counts it as a read error instead). That is nginx's and the
    /// client's business, not the agent's: here every failure would be the agent's.
    pub fn start(addr: SocketAddr, host: &str, connections: u32, max: Duration) -> Wrk {
        let child = Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{}s", max.as_secs()),
                "-H",
                &format!("Host: {host}"),
            ])
            .args(["--timeout", "10s", "--latency", "-H", "Connection: close"])
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wrk");
        Wrk { child: Some(child) }
    }

    /// Stops wrk and returns its report (stdout and stderr).
    pub fn finish(mut self) -> String {
        let child = self.child.take().unwrap();
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        let out = child.wait_with_output().expect("wait for wrk");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What wrk reported.
#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub per_second: f64,
    /// `Socket errors: connect …` (absent: none).
    pub socket_errors: Option<String>,
    /// `Non-2xx or 3xx responses: N` (absent: none).
    pub non_2xx: u64,
}

impl Report {
    /// Parses wrk's summary; panics (with it) when it has no request count.
    pub fn parse(report: &str) -> Report {
        let line = |prefix: &str| report.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim));
        let requests = report
            .lines()
            .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
        let per_second = line("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk's report:\n{report}"));
        let non_2xx = line("Non-2xx or 3xx responses:").map_or(0, |v| {
            v.parse().unwrap_or_else(|_| panic!("a count of non-2xx responses in wrk's report:\n{report}"))
        });
        Report { requests, per_second, socket_errors: line("Socket errors:").map(String::from), non_2xx }
    }

    /// Nothing failed: no socket error (connect, read, write, timeout) and no answer but 2xx or 3xx.
    pub fn failures(&self) -> Option<String> {
        match (&self.socket_errors, self.non_2xx) {
            (None, 0) => None,
            (errors, n) => {
                Some(format!("socket errors: {}; non-2xx or 3xx answers: {n}", errors.as_deref().unwrap_or("none")))
            }
        }
    }
}

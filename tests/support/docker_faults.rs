//! A fault-injecting proxy in front of the real Docker socket: the agent talks to Docker through
//! it (`DOCKER_HOST=unix://…`) and a test makes chosen calls fail, hang or return garbage, or cuts
//! Docker off entirely. Everything else passes through to the real daemon unchanged.
//!
//! Each request is forwarded on a fresh daemon connection with `Connection: close`, so every
//! request is seen here (the client cannot reuse a connection past a rule). Upgraded connections
//! (exec attach) and streams (events) are spliced as they are.
//!
//! It also plays a read-only socket proxy (as operators put in front of the socket): with
//! [`DockerFaults::read_only`], every method but GET and HEAD gets `403 Forbidden`. Every request
//! is recorded (method and path), so a test can say which API calls a setup makes. And it can
//! answer chosen GETs itself ([`DockerFaults::reply`]): a bench plays a Swarm manager with 1,000
//! services that way.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do with a request whose path contains a rule's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `500 Internal Server Error` with a JSON message.
    Error,
    /// Holds the request without answering until the rule is removed (then closes).
    Hang,
    /// `200 OK` with a truncated JSON body.
    Garbage,
}

#[derive(Default)]
struct Shared {
    rules: Vec<(String, Fault)>,
    /// Docker is "down": connections are closed at once, open ones were cut.
    down: bool,
    open: Vec<UnixStream>,
    /// When each connection arrived while Docker was down (a client trying to reach it).
    attempts_while_down: Vec<Instant>,
    /// Only GET and HEAD pass.
    read_only: bool,
    /// Every request seen: method, path (without the query), and whether it was refused.
    seen: Vec<(String, String, bool)>,
    /// Canned answers: a GET whose path (without the query) ends with the text gets the body.
    replies: Vec<(String, Arc<Vec<u8>>)>,
    /// The daemon's socket that requests go on to.
    daemon: PathBuf,
}

pub struct DockerFaults {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

/// The real daemon's socket (the tests' daemon).
fn upstream() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

impl DockerFaults {
    /// In front of the tests' daemon.
    pub fn start() -> DockerFaults {
        DockerFaults::start_to(upstream())
    }

    /// In front of the daemon at `daemon` (a unix socket: another engine, such as a Swarm
    /// test's own).
    pub fn start_to(daemon: PathBuf) -> DockerFaults {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let shared = Arc::new(Mutex::new(Shared { daemon, ..Shared::default() }));
        let accept = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let shared = accept.clone();
                std::thread::spawn(move || handle(client, &shared));
            }
        });
        DockerFaults { _dir: dir, socket, shared }
    }

    /// The `DOCKER_HOST` value that reaches Docker through this proxy.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Requests whose path contains `path` get `fault` until [`DockerFaults::clear`].
    pub fn add(&self, path: &str, fault: Fault) {
        self.shared.lock().unwrap().rules.push((path.to_string(), fault));
    }

    /// Removes every rule (hung requests are released).
    pub fn clear(&self) {
        self.shared.lock().unwrap().rules.clear();
    }

    /// Docker goes away: open connections (the event stream among them) are cut and new ones
    /// closed at once, until [`DockerFaults::up`].
    pub fn down(&self) {
        let mut shared = self.shared.lock().unwrap();
        shared.down = true;
        for c in shared.open.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.shared.lock().unwrap().down = false;
    }

    /// GETs whose path (without the query) ends with `path_end` are answered `200 OK` with
    /// `json` (the last given for it), without asking the daemon.
    pub fn reply(&self, path_end: &str, json: Vec<u8>) {
        let mut shared = self.shared.lock().unwrap();
        shared.replies.retain(|(end, _)| end != path_end);
        shared.replies.push((path_end.to_string(), Arc::new(json)));
    }

    /// From now on, refuse every method but GET and HEAD with `403 Forbidden`.
    pub fn read_only(&self) {
        self.shared.lock().unwrap().read_only = true;
    }

    /// Every request so far: (method, path without the query, refused).
    pub fn requests(&self) -> Vec<(String, String, bool)> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// When clients tried to connect while Docker was down.
    pub fn attempts_while_down(&self) -> Vec<Instant> {
        self.shared.lock().unwrap().attempts_while_down.clone()
    }
}

fn handle(mut client: UnixStream, shared: &Mutex<Shared>) {
    {
        let mut s = shared.lock().unwrap();
        if s.down {
            s.attempts_while_down.push(Instant::now());
            return;
        }
        if let Ok(c) = client.try_clone() {
            s.open.push(c);
        }
    }
    let Some(head) = read_head(&mut client) else { return };
    let text = String::from_utf8_lossy(&head).into_owned();
    let method = text.split_whitespace().next().unwrap_or("").to_string();
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let refused = {
        let mut s = shared.lock().unwrap();
        let refused = s.read_only && method != "GET" && method != "HEAD";
        let bare = path.split('?').next().unwrap_or("").to_string();
        s.seen.push((method.clone(), bare, refused));
        refused
    };
    if refused {
        let body = format!(r#"{{"message":"read-only socket proxy: {method} refused"}}"#);
        let _ = write!(
            client,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let canned = {
        let bare = path.split('?').next().unwrap_or("");
        let s = shared.lock().unwrap();
        s.replies.iter().find(|(end, _)| method == "GET" && bare.ends_with(end.as_str())).map(|(_, b)| b.clone())
    };
    if let Some(body) = canned {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = client.write_all(head.as_bytes()).and_then(|()| client.write_all(&body));
        return;
    }
    let fault = shared.lock().unwrap().rules.iter().find(|(p, _)| path.contains(p.as_str())).map(|(_, f)| *f);
    match fault {
        Some(Fault::Error) => {
            let body = r#"{"message":"injected fault"}"#;
            let _ = write!(
                client,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        Some(Fault::Garbage) => {
            let body = r#"{"Id": "abc", "Config": {"Labels": "#;
            let _ = write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        Some(Fault::Hang) => {
            while shared.lock().unwrap().rules.iter().any(|(p, f)| path.contains(p.as_str()) && *f == Fault::Hang) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        None => {}
    }
    let socket = shared.lock().unwrap().daemon.clone();
    let Ok(mut daemon) = UnixStream::connect(socket) else { return };
    let upgrade = text.lines().any(|l| l.to_ascii_lowercase().starts_with("upgrade:"));
    let head = if upgrade {
        text
    } else {
        let mut lines: Vec<&str> =
            text.trim_end().lines().filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
        lines.push("Connection: close");
        lines.join("\r\n") + "\r\n\r\n"
    };
    if daemon.write_all(head.as_bytes()).is_err() {
        return;
    }
    if let Ok(c) = daemon.try_clone() {
        shared.lock().unwrap().open.push(c);
    }
    let (Ok(mut from_client), Ok(mut to_daemon)) = (client.try_clone(), daemon.try_clone()) else { return };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_daemon);
        let _ = to_daemon.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut daemon, &mut client);
    let _ = client.shutdown(Shutdown::Both);
}

/// Reads up to the end of the request head (the body, if any, is forwarded by the copy).
fn read_head(client: &mut UnixStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// Whether a log reports a Docker call the proxy refused: its answer's message (`read-only
/// socket proxy: POST refused`, which bollard's error carries), or the status with its reason.
/// Not the digits alone: they turn up in ports, durations (`test_ms=403`) and ids.
pub fn mentions_refusal(log: &str) -> bool {
    ["read-only socket proxy", "status code 403", "403 Forbidden"].iter().any(|m| log.contains(m))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_is_found_by_its_message_not_by_digits() {
        let refused = "cannot run docker exec nginx sh: Docker responded with status code 403: read-only socket proxy: POST refused";
        assert!(super::mentions_refusal(refused));
        assert!(!super::mentions_refusal("follower endpoint on http://127.0.0.1:33403/bundle test_ms=403 id k403a"));
    }
}

//! One small stub HTTP/1.1 server for the tests and benches: a backend that answers every
//! request with a fixed body, an HTTP-01 responder that serves tokens, an app whose answer depends
//! on the path and the body it read, an auth service answering 200, 401 or 302 with headers. It
//! reads the request head (telling `seen`, if given, the path at once), then the body
//! (`Content-Length`), asks `answer` and replies `200 text/plain` (with `X-Stub: 1`, a header of
//! the app's own) with the body it returns, or `404` for `None` (with [`StubHttp::start_replies`]:
//! the [`StubReply`] it returns), then closes the connection. Each connection has its own thread.
//! (The strict Cloudflare fake, `cloudflare_fake.rs`, and `AcmeProxy` in `pebble.rs` are servers
//! of their own.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What `answer` gets: the request's method, path, head (request line and headers) and body.
pub struct StubRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub head: &'a str,
    pub body: &'a [u8],
}

impl StubRequest<'_> {
    /// The value of header `name` (any case), surrounding spaces removed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim_matches([' ', '\r']))
        })
    }
}

/// A reply of any status with headers of its own (an auth service's 401 with `WWW-Authenticate`,
/// a 302 with `Location`, a 200 with `Remote-User`), for [`StubHttp::start_replies`].
pub struct StubReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl StubReply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &str) -> StubReply {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        StubReply { status, headers, body: body.to_string() }
    }
}

/// A running stub server on 127.0.0.1; it stops accepting when dropped (or never: [`StubHttp::detach`]).
pub struct StubHttp {
    port: u16,
    stop: Arc<AtomicBool>,
}

type Answer = dyn Fn(&StubRequest) -> StubReply + Send + Sync;
type Seen = dyn Fn(&str) + Send + Sync;

impl StubHttp {
    /// Serves on 127.0.0.1:`port` (0: a free port) with `answer` deciding each reply.
    pub fn start(port: u16, answer: impl Fn(&StubRequest) -> Option<String> + Send + Sync + 'static) -> StubHttp {
        StubHttp::start_seen(port, |_| {}, answer)
    }

    /// [`StubHttp::start`], telling `seen` each request's path as soon as its head is read,
    /// before its body.
    pub fn start_seen(
        port: u16,
        seen: impl Fn(&str) + Send + Sync + 'static,
        answer: impl Fn(&StubRequest) -> Option<String> + Send + Sync + 'static,
    ) -> StubHttp {
        StubHttp::serve(port, seen, move |request| match answer(request) {
            Some(body) => StubReply::new(200, &[("Content-Type", "text/plain"), ("X-Stub", "1")], &body),
            None => StubReply::new(404, &[], ""),
        })
    }

    /// Serves on 127.0.0.1:`port` (0: a free port), `answer` choosing each reply's status,
    /// headers and body.
    pub fn start_replies(port: u16, answer: impl Fn(&StubRequest) -> StubReply + Send + Sync + 'static) -> StubHttp {
        StubHttp::serve(port, |_| {}, answer)
    }

    fn serve(
        port: u16,
        seen: impl Fn(&str) + Send + Sync + 'static,
        answer: impl Fn(&StubRequest) -> StubReply + Send + Sync + 'static,
    ) -> StubHttp {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("the stub HTTP server cannot bind 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answer> = Arc::new(answer);
        let seen: Arc<Seen> = Arc::new(seen);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let (seen, answer) = (seen.clone(), answer.clone());
                    std::thread::spawn(move || reply(stream, &*seen, &*answer));
                }
            }
        });
        StubHttp { port, stop }
    }

    /// A backend on a free port answering `200 <body>` to every request.
    pub fn body(body: &str) -> StubHttp {
        let body = body.to_string();
        StubHttp::start(0, move |_| Some(body.clone()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Keeps serving for the rest of the process; returns the port.
    pub fn detach(self) -> u16 {
        let port = self.port;
        std::mem::forget(self);
        port
    }
}

impl Drop for StubHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag and closes the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn reply(mut stream: TcpStream, seen: &Seen, answer: &Answer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(n) if n > 0 && request.len() < 64 * 1024 => request.extend_from_slice(&buf[..n]),
            _ if request.is_empty() => return,
            _ => break request.len(),
        }
    };
    let mut body = request.split_off(head_end);
    let head = String::from_utf8_lossy(&request);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    seen(path);
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    let reply = answer(&StubRequest { method, path, head: &head, body: &body });
    let reason = match reply.status {
        200 => "OK",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    };
    let mut response = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{}", reply.body.len(), reply.body));
    let _ = stream.write_all(response.as_bytes());
}

//! One small stub HTTP/1.1 server for the tests and benches: a backend that answers every
//! request with a fixed body, or an HTTP-01 responder that serves tokens. It reads the request
//! head, asks `answer` for the path and replies `200 text/plain` with the body it returns, or
//! `404` for `None`, then closes the connection. Each connection has its own thread. (The strict
//! Cloudflare fake, `cloudflare_fake.rs`, and `AcmeProxy` in `pebble.rs` are servers of their own.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What `answer` gets: the request's method and path.
pub struct StubRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// A running stub server on 127.0.0.1; it stops accepting when dropped (or never: [`StubHttp::detach`]).
pub struct StubHttp {
    port: u16,
    stop: Arc<AtomicBool>,
}

type Answer = dyn Fn(&StubRequest) -> Option<String> + Send + Sync;

impl StubHttp {
    /// Serves on 127.0.0.1:`port` (0: a free port) with `answer` deciding each reply.
    pub fn start(port: u16, answer: impl Fn(&StubRequest) -> Option<String> + Send + Sync + 'static) -> StubHttp {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("the stub HTTP server cannot bind 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answer> = Arc::new(answer);
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let answer = answer.clone();
                    std::thread::spawn(move || reply(stream, &*answer));
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

fn reply(mut stream: TcpStream, answer: &Answer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if request.is_empty() {
        return;
    }
    let head = String::from_utf8_lossy(&request);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let response = match answer(&StubRequest { method, path }) {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    let _ = stream.write_all(response.as_bytes());
}

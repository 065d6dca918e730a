//! `nginx-smart-proxy top`: the running agent's traffic, one line per domain, from its `/insight`
//! on `STATUS_ADDR` (with `STATUS_TOKEN` as a bearer token when set).
//!
//! The JSON is read into [`View`], this module's own small structs with only the fields shown,
//! each defaulted when absent, rather than into `insight::Snapshot`: `top` of one version then
//! reads another version's `/insight` (a field added or removed on the agent's side costs
//! nothing here), and the snapshot types stay serialize-only.
//!
//! [`table`] is pure (view, sort, width → text); [`run`] does the IO: one table for `--once` or
//! when stdout is not a terminal (then one table a second, plain), else a full-screen view on the
//! alternate screen in raw mode (crossterm), restored on every way out.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;

use crate::secret::Secret;
use crate::settings::StatusAddr;

/// What `/insight` holds that `top` shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct View {
    #[serde(default)]
    pub dropped: ViewDropped,
    #[serde(default)]
    pub domains: Vec<ViewDomain>,
}

/// Lines dropped since start.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ViewDropped {
    #[serde(default)]
    pub malformed: u64,
    #[serde(default)]
    pub oversized: u64,
    #[serde(default)]
    pub unrouted: u64,
}

/// One domain.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewDomain {
    pub domain: String,
    #[serde(default)]
    pub last_minute: ViewWindow,
    #[serde(default)]
    pub upstreams: Vec<ViewUpstream>,
    #[serde(default)]
    pub anomalies: Vec<ViewAnomaly>,
}

/// The last minute.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ViewWindow {
    #[serde(default)]
    pub requests_per_second: f64,
    #[serde(default)]
    pub by_class: ViewClasses,
    #[serde(default)]
    pub request_time_ms: ViewPercentiles,
}

/// Requests by status class.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ViewClasses {
    #[serde(default, rename = "2xx")]
    pub c2xx: u64,
    #[serde(default, rename = "3xx")]
    pub c3xx: u64,
    #[serde(default, rename = "4xx")]
    pub c4xx: u64,
    #[serde(default, rename = "5xx")]
    pub c5xx: u64,
}

/// Request time quantiles, ms (`None` without requests).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ViewPercentiles {
    #[serde(default)]
    pub p50: Option<f64>,
    #[serde(default)]
    pub p95: Option<f64>,
}

/// One upstream server: its failed tries of the last minute.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ViewUpstream {
    #[serde(default)]
    pub last_minute: ViewUpstreamCounts,
}

/// Failed tries.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ViewUpstreamCounts {
    #[serde(default)]
    pub errors: u64,
}

/// A flag that is up (`error_ratio`, `latency`, `traffic_drop`, or a newer kind, shown as is).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewAnomaly {
    #[serde(default)]
    pub kind: String,
}

impl ViewDomain {
    fn upstream_errors(&self) -> u64 {
        self.upstreams.iter().map(|u| u.last_minute.errors).sum()
    }

    fn flags(&self) -> String {
        let short: Vec<&str> = self
            .anomalies
            .iter()
            .map(|a| match a.kind.as_str() {
                "error_ratio" => "5XX!",
                "latency" => "SLOW!",
                "traffic_drop" => "DROP!",
                other => other,
            })
            .collect();
        short.join(" ")
    }
}

/// How the lines are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Requests per second, busiest first (key `r`).
    #[value(alias = "r")]
    Rate,
    /// 5xx responses, then upstream errors, most first (key `e`).
    #[value(alias = "e")]
    Errors,
    /// p95 request time, slowest first (key `p`).
    #[value(alias = "p")]
    P95,
    /// Domain name (key `n`).
    #[value(alias = "n")]
    Name,
}

impl Sort {
    /// The key that selects it in the live view.
    pub fn of_key(c: char) -> Option<Sort> {
        match c {
            'r' => Some(Sort::Rate),
            'e' => Some(Sort::Errors),
            'p' => Some(Sort::P95),
            'n' => Some(Sort::Name),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::Rate => "req/s",
            Sort::Errors => "errors",
            Sort::P95 => "p95",
            Sort::Name => "name",
        }
    }
}

/// The fixed columns after the domain: REQ/S 2XX 3XX 4XX 5XX P50 P95 UPERR, then the flags.
const FIXED: usize = 8 + 4 * 7 + 2 * 9 + 7 + 1;
const MIN_DOMAIN: usize = 12;

/// The view as text, `width` columns at most per line: two header lines (totals, dropped lines,
/// the sort), the column names, one line per domain. Pure.
pub fn table(view: &View, sort: Sort, width: usize) -> String {
    let mut domains: Vec<&ViewDomain> = view.domains.iter().collect();
    let by_name = |a: &&ViewDomain, b: &&ViewDomain| a.domain.cmp(&b.domain);
    match sort {
        Sort::Name => domains.sort_by(by_name),
        Sort::Rate => domains.sort_by(|a, b| {
            b.last_minute.requests_per_second.total_cmp(&a.last_minute.requests_per_second).then(by_name(a, b))
        }),
        Sort::Errors => domains.sort_by(|a, b| {
            let key = |d: &ViewDomain| (d.last_minute.by_class.c5xx, d.upstream_errors());
            key(b).cmp(&key(a)).then(by_name(a, b))
        }),
        Sort::P95 => domains.sort_by(|a, b| {
            let p95 = |d: &ViewDomain| d.last_minute.request_time_ms.p95.unwrap_or(-1.0);
            p95(b).total_cmp(&p95(a)).then(by_name(a, b))
        }),
    }
    let rate: f64 = view.domains.iter().map(|d| d.last_minute.requests_per_second).sum();
    let c5xx: u64 = view.domains.iter().map(|d| d.last_minute.by_class.c5xx).sum();
    let flagged = view.domains.iter().filter(|d| !d.anomalies.is_empty()).count();
    let d = view.dropped;
    let flags_width = view.domains.iter().map(|d| d.flags().chars().count()).max().unwrap_or(0).max(5);
    let domain_width = width.saturating_sub(FIXED + flags_width).max(MIN_DOMAIN);
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&fit(text.trim_end(), width));
        out.push('\n');
    };
    line(format!(
        "{} domains  {:.1} req/s  {} 5xx  {} flagged  (last minute)  sort: {} [r e p n, q quits]",
        view.domains.len(),
        rate,
        c5xx,
        flagged,
        sort.label()
    ));
    line(format!("dropped log lines: {} malformed, {} oversized, {} unrouted", d.malformed, d.oversized, d.unrouted));
    line(format!(
        "{:<dw$} {:>7} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} FLAGS",
        "DOMAIN",
        "REQ/S",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "P50 MS",
        "P95 MS",
        "UPERR",
        dw = domain_width
    ));
    let ms = |v: Option<f64>| match v {
        Some(v) if v < 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    };
    for d in domains {
        let w = &d.last_minute;
        line(format!(
            "{:<dw$} {:>7.1} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {}",
            fit(&d.domain, domain_width),
            w.requests_per_second,
            w.by_class.c2xx,
            w.by_class.c3xx,
            w.by_class.c4xx,
            w.by_class.c5xx,
            ms(w.request_time_ms.p50),
            ms(w.request_time_ms.p95),
            d.upstream_errors(),
            d.flags(),
            dw = domain_width
        ));
    }
    if view.domains.is_empty() {
        line("no routed domain yet".into());
    }
    out
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Why `top` cannot show the agent's traffic.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(
        "the status endpoint is off (STATUS_ADDR=off); top reads /insight there: set STATUS_ADDR on the agent and here"
    )]
    Off,
    #[error(
        "cannot reach the agent at {url}: {cause}\nhint: is the agent running with STATUS_ADDR={addr}? Set STATUS_ADDR here to the address it listens on"
    )]
    Unreachable { url: String, addr: StatusAddr, cause: String },
    #[error("{url} answered 401: {body}\nhint: set STATUS_TOKEN here to the agent's STATUS_TOKEN")]
    Unauthorized { url: String, body: String },
    #[error("{url} answered 404: this agent has no /insight (an older version?)")]
    NoInsight { url: String },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: StatusCode, body: String },
    #[error("{url} answered JSON top cannot read: {source}")]
    Json { url: String, source: serde_json::Error },
    #[error("cannot take over the terminal: {0}\nhint: `top --once` prints one table without it")]
    Terminal(std::io::Error),
}

/// GET `path` on the agent's status endpoint, with the bearer token when given.
async fn get(target: SocketAddr, path: &str, token: Option<&Secret>, timeout: Duration) -> Result<Bytes, GetError> {
    use http_body_util::BodyExt as _;
    let url = format!("http://{target}{path}");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut request = http::Request::get(&url);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {}", token.expose()));
    }
    let request = request.body(http_body_util::Empty::new()).map_err(|e| GetError::Unreachable(e.to_string()))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            // The innermost cause is the one a person acts on (`Connection refused`).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            GetError::Unreachable(text)
        })?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| GetError::Unreachable(e.to_string()))?.to_bytes();
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(GetError::Status(status, String::from_utf8_lossy(&body).trim().to_string()))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(GetError::Unreachable(format!("no answer within {timeout:?}"))),
    }
}

enum GetError {
    Unreachable(String),
    Status(StatusCode, String),
}

/// Reads the agent's `/insight` once.
pub async fn fetch(addr: StatusAddr, token: Option<&Secret>) -> Result<View, TopError> {
    let target = addr.connect_addr().ok_or(TopError::Off)?;
    let url = format!("http://{target}/insight");
    match get(target, "/insight", token, Duration::from_secs(3)).await {
        Ok(body) => serde_json::from_slice(&body).map_err(|source| TopError::Json { url, source }),
        Err(GetError::Unreachable(cause)) => Err(TopError::Unreachable { url, addr, cause }),
        Err(GetError::Status(StatusCode::UNAUTHORIZED, body)) => Err(TopError::Unauthorized { url, body }),
        Err(GetError::Status(StatusCode::NOT_FOUND, _)) => Err(TopError::NoInsight { url }),
        Err(GetError::Status(status, body)) => Err(TopError::Status { url, status, body }),
    }
}

/// `top`: `once` prints one table; otherwise a live view (a terminal) or a table a second.
pub async fn run(addr: StatusAddr, token: Option<&Secret>, sort: Sort, once: bool) -> Result<(), TopError> {
    let view = fetch(addr, token).await?;
    let stdout = std::io::stdout();
    if once || !stdout.is_terminal() {
        let width = plain_width();
        print!("{}", table(&view, sort, width));
        if once {
            return Ok(());
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let text = match fetch(addr, token).await {
                Ok(view) => table(&view, sort, width),
                Err(e) => format!("{e}\n"),
            };
            print!("\n{text}");
            if std::io::stdout().flush().is_err() {
                return Ok(()); // The reader went away (a closed pipe).
            }
        }
    }
    live(addr, token, sort, view).await
}

/// The width of plain output: `COLUMNS`, else 120.
fn plain_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|w| *w > 0).unwrap_or(120)
}

/// Raw mode and the alternate screen while it lives; the terminal as it was once dropped
/// (normal return, error, or panic unwinding through it). A panic restores the terminal before
/// its message is printed, so the message stays readable.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        crossterm::terminal::enable_raw_mode()?;
        let screen = Screen;
        crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen, crossterm::cursor::Hide)?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Ok(screen)
    }
}

fn restore_terminal() {
    let _ = crossterm::execute!(std::io::stdout(), crossterm::cursor::Show, crossterm::terminal::LeaveAlternateScreen);
    let _ = crossterm::terminal::disable_raw_mode();
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
    }
}

async fn live(addr: StatusAddr, token: Option<&Secret>, mut sort: Sort, first: View) -> Result<(), TopError> {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    let screen = Screen::enter().map_err(TopError::Terminal)?;
    // Key events come from a thread of their own (crossterm's read blocks).
    let (keys, mut key_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if keys.send(event).is_err() {
                break;
            }
        }
    });
    let mut view = first;
    let mut trouble: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        draw(&view, sort, trouble.as_deref());
        tokio::select! {
            _ = tick.tick() => match fetch(addr, token).await {
                Ok(v) => { view = v; trouble = None; }
                Err(e) => trouble = Some(e.to_string()),
            },
            event = key_rx.recv() => match event {
                Some(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => break,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => break,
                    KeyCode::Char(c) => sort = Sort::of_key(c).unwrap_or(sort),
                    _ => {}
                },
                Some(_) => {}
                None => break,
            },
        }
    }
    drop(screen);
    Ok(())
}

fn draw(view: &View, sort: Sort, trouble: Option<&str>) {
    use crossterm::{cursor, queue, terminal};
    let (width, height) = terminal::size().unwrap_or((100, 30));
    let mut text = table(view, sort, usize::from(width));
    if let Some(trouble) = trouble {
        text = format!("{}\n{text}", fit(trouble.lines().next().unwrap_or(""), usize::from(width)));
    }
    let mut out = std::io::stdout().lock();
    let _ = queue!(out, cursor::MoveTo(0, 0), terminal::Clear(terminal::ClearType::All));
    for line in text.lines().take(usize::from(height)) {
        let _ = write!(out, "{line}\r\n");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        serde_json::from_value(serde_json::json!({
            "at_ms": 1, "future_field": true,
            "dropped": {"malformed": 3, "oversized": 1, "unrouted": 7},
            "domains": [
                {"domain": "api.example.com", "last_minute": {"requests_per_second": 2.5,
                    "by_class": {"1xx": 0, "2xx": 140, "3xx": 0, "4xx": 5, "5xx": 5},
                    "request_time_ms": {"p50": 12.4, "p95": 80.0, "p99": 120.0}},
                 "upstreams": [{"server": "10.0.0.5:80", "last_minute": {"attempts": 150, "errors": 4}}],
                 "anomalies": [{"kind": "error_ratio", "since_ms": 5}]},
                {"domain": "a-very-long-domain-name-that-will-not-fit.example.org", "last_minute": {"requests_per_second": 0.2,
                    "by_class": {"2xx": 12}, "request_time_ms": {"p50": 300.0, "p95": 900.0}}},
                {"domain": "quiet.example.com"}
            ]
        }))
        .unwrap()
    }

    fn names(text: &str) -> Vec<&str> {
        text.lines().skip(3).map(|l| l.split_whitespace().next().unwrap()).collect()
    }

    #[test]
    fn sorts_by_each_key() {
        let v = view();
        let long = "a-very-long-domain-name-that-will-not-fit.example.org";
        assert_eq!(names(&table(&v, Sort::Rate, 200)), ["api.example.com", long, "quiet.example.com"]);
        assert_eq!(names(&table(&v, Sort::P95, 200)), [long, "api.example.com", "quiet.example.com"]);
        assert_eq!(names(&table(&v, Sort::Errors, 200)), ["api.example.com", long, "quiet.example.com"]);
        assert_eq!(names(&table(&v, Sort::Name, 200)), [long, "api.example.com", "quiet.example.com"]);
    }

    #[test]
    fn shows_totals_figures_and_flags() {
        let text = table(&view(), Sort::Rate, 200);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("3 domains  2.7 req/s  5 5xx  1 flagged"), "{text}");
        assert_eq!(lines[1], "dropped log lines: 3 malformed, 1 oversized, 7 unrouted");
        let api: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(api, ["api.example.com", "2.5", "140", "0", "5", "5", "12", "80", "4", "5XX!"], "{text}");
        let quiet: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(quiet, ["quiet.example.com", "0.0", "0", "0", "0", "0", "-", "-", "0"], "{text}");
    }

    /// The real snapshot's JSON reads into the view (the field names are the interface).
    #[test]
    fn reads_the_insight_snapshot() {
        let mut insight = crate::insight::Insight::new();
        insight.set_domains(["a.test", "b.test"]);
        let t0 = 1_764_972_000_000;
        for i in 0..12u64 {
            let status = if i < 3 { 502 } else { 200 };
            let line = format!(
                r#"{{"d":"a.test","s":{status},"b":100,"t":0.020,"ua":"10.0.0.5:80","us":"{status}","ut":"0.019"}}"#
            );
            insight.ingest(line.as_bytes(), t0 + i * 100);
        }
        let json = serde_json::to_string(&insight.snapshot(t0 + 10_000)).unwrap();
        let view: View = serde_json::from_str(&json).unwrap();
        let text = table(&view, Sort::Rate, 120);
        let a: Vec<&str> = text.lines().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(a[..3], ["a.test", "0.2", "9"], "{text}");
        assert_eq!(a[5], "3", "5xx: {text}");
        assert_eq!(a[8], "3", "upstream errors: {text}");
        let p50: f64 = a[6].parse().unwrap();
        assert!((17.0..=23.0).contains(&p50), "{text}");
    }

    #[test]
    fn fits_the_width_by_cutting_domains() {
        for width in [60, 80, 100] {
            let text = table(&view(), Sort::Name, width);
            for line in text.lines() {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
            assert!(text.contains('…'), "{text}");
        }
        let wide = table(&view(), Sort::Name, 200);
        assert!(wide.contains("a-very-long-domain-name-that-will-not-fit.example.org "), "{wide}");
        assert!(table(&View::default(), Sort::Rate, 80).contains("no routed domain yet"));
    }
}

//! The agent's end of `INSIGHT`: the Unix datagram socket nginx's `syslog:` access logs send to
//! (one request's figures per datagram, `insight::INSIGHT_LOG_FORMAT`), read into the shared
//! [`Insight`](crate::insight::Insight) on a thread of its own; the tick that judges anomalies
//! every few seconds; and `heal=restart`.
//!
//! Why a datagram socket: nginx sends each line with one non-blocking `send` and never waits for
//! the agent (a slow agent loses lines, it never slows nginx); the per-domain files stay for the
//! users who ship them elsewhere. The socket lives beside NGINX_CONF, on the volume the companion
//! setup shares, so nginx in another container reaches it too.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Timing;
use crate::insight::{AnomalyEvent, Candidate, HealConfig, MAX_DATAGRAM};
use crate::routes::{Origin, RouteTable};
use crate::sources::docker::DockerApi;
use crate::sources::label_schema::Heal;
use crate::sources::labels::{self, Container};
use crate::status::{now_ms, EventKind, HealTarget, State};

/// How often anomalies are judged (the insight windows' finest slot).
const TICK: Duration = Duration::from_secs(5);
/// The datagrams the kernel should queue for the socket: 1024 lines are 40 ms at 25,000 req/s.
const QUEUE_WANTED: u32 = 1024;

/// Binds `socket` (replacing a stale socket a previous run left; refusing to replace anything
/// else), and starts reading it and ticking.
pub(super) fn start(
    socket: &Path,
    status: Arc<State>,
    docker: Option<Arc<dyn DockerApi>>,
    timing: Timing,
) -> anyhow::Result<()> {
    let sock = bind(socket)?;
    info!(socket = %socket.display(), "insight: reading nginx's access-log lines");
    let qlen =
        std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").ok().and_then(|s| s.trim().parse::<u32>().ok());
    let queue = qlen.unwrap_or(10);
    // Advice, not a fault: at a few hundred requests a second nothing is lost.
    if queue < QUEUE_WANTED / 4 {
        info!(
            "insight: the kernel queues only {queue} lines per socket (net.unix.max_dgram_qlen), so under heavy load nginx drops lines and the figures run low; run the agent's container with --sysctl net.unix.max_dgram_qlen={QUEUE_WANTED} (compose: sysctls, as compose/ does)"
        );
    }
    let reader = status.clone();
    std::thread::Builder::new().name("insight-reader".into()).spawn(move || {
        if let Err(e) = read(&sock, &reader, queue) {
            warn!("insight: reading the socket failed ({e}); /insight and the traffic figures stop here");
        }
    })?;
    status.insight().set_warmup(timing.anomaly_warmup_minutes);
    if docker.is_some() {
        let config = HealConfig { failing_for_ms: timing.heal_after.as_millis() as u64, ..HealConfig::default() };
        status.insight().enable_healing(config);
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let events = status.insight().tick(now_ms());
            for event in &events {
                log(event);
                status.event(EventKind::Anomaly, crate::dashboard::events::anomaly_text(event));
            }
            if let Some(docker) = &docker {
                heal(&status, docker.as_ref()).await;
            }
        }
    });
    Ok(())
}

fn bind(path: &Path) -> anyhow::Result<UnixDatagram> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => anyhow::bail!("insight: {} exists and is not a socket; remove it, or set INSIGHT=off", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let sock = UnixDatagram::bind(path).map_err(|e| {
        anyhow::anyhow!("insight: cannot create the socket {}: {e} (or set INSIGHT=off)", path.display())
    })?;
    // nginx's workers run as an unprivileged user (in the companion setup, in another container):
    // they must be able to send. What they send is counted, never trusted beyond that.
    // (A Unix datagram socket's queue is counted in datagrams, `net.unix.max_dgram_qlen`, not
    // bytes: a larger receive buffer would not hold more lines.)
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(sock)
}

/// Reads datagrams as they come, on a thread of its own: the kernel queues
/// `net.unix.max_dgram_qlen` datagrams per socket (10 by default) and nginx drops a line it
/// cannot send at once, so the reader must be back in time for the queue never to fill. Idle, it
/// waits in `recv`. Woken, it takes everything queued, [`BATCH`] lines a system call, and while
/// lines keep coming (with a long queue, `queue`) it does not wait in `recv`, where each line would
/// wake it (6.5 µs of CPU per request at 30,000 req/s), but pauses and drains again. The pause
/// adapts so that each drain finds [`FEW`] to [`MANY`] lines: doubled (up to [`PAUSE_MAX`]) when it
/// found fewer, halved (down to [`PAUSE_MIN`]) when it found more, so that a pause that ran long
/// on a loaded machine is followed by shorter ones. (A fixed pause of a millisecond lost 7 % of
/// the lines at 35,000 req/s on a loaded machine, even with a queue of 1024; a fixed 200 µs woke
/// the reader for every line or two at a few thousand requests a second.)
///
/// Lines wait in `pending` while `/insight` or a tick holds the figures, and go in by batch.
fn read(sock: &UnixDatagram, status: &State, queue: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // One byte more than a line may have: a longer datagram arrives cut, at this length, and is
    // counted as oversized.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let (mut pending, mut ends) = (Vec::<u8>::with_capacity(1 << 20), Vec::<usize>::new());
    let mut batch = Batch::new();
    // Waiting lines are ingested at the latest this long after they came.
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let pauses = queue >= QUEUE_WANTED / 4;
    // Whether the last drain found lines: then the reader does not wait in `recv` (each line
    // would wake it) but pauses and drains again.
    let mut flowing = false;
    let mut pause = PAUSE_MIN * 2;
    loop {
        if !(pauses && flowing) {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    ends.push(pending.len());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        }
        let mut more = 0;
        while ends.len() < 4096 {
            match batch.recv(sock.as_raw_fd()) {
                Ok(lines) => {
                    for line in lines.iter() {
                        pending.extend_from_slice(line);
                        ends.push(pending.len());
                    }
                    more += lines.len();
                    if lines.len() < BATCH {
                        break;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        if !ends.is_empty() {
            // Past this many waiting lines, wait for the figures rather than hold more.
            let insight = if ends.len() >= 65_536 { Some(status.insight()) } else { status.try_insight() };
            if let Some(mut insight) = insight {
                let now = now_ms();
                let mut start = 0;
                for &end in &ends {
                    insight.ingest(&pending[start..end], now);
                    start = end;
                }
                pending.clear();
                ends.clear();
            }
        }
        flowing = more > 0;
        if pauses && flowing {
            pause = match more {
                n if n < FEW => (pause * 2).min(PAUSE_MAX),
                n if n > MANY => (pause / 2).max(PAUSE_MIN),
                _ => pause,
            };
            std::thread::sleep(pause);
        }
    }
}

/// The reader's pause while lines flow, and the lines a drain should find after one (see [`read`]):
/// at most a quarter of the queue the agent asks for.
const PAUSE_MIN: Duration = Duration::from_micros(100);
const PAUSE_MAX: Duration = Duration::from_millis(1);
const FEW: usize = 8;
const MANY: usize = QUEUE_WANTED as usize / 4;

/// Datagrams taken by one `recvmmsg`.
const BATCH: usize = 64;

/// Buffers for [`BATCH`] datagrams of up to `MAX_DATAGRAM + 1` bytes (a longer one arrives cut, and
/// is counted as oversized), taken by one `recvmmsg` call: what the reader takes once woken costs
/// one system call a batch, not one a line.
struct Batch {
    buf: Vec<u8>,
    headers: nix::sys::socket::MultiHeaders<()>,
}

/// The datagrams of one [`Batch::recv`].
struct Lines<'a> {
    buf: &'a [u8],
    lens: [usize; BATCH],
    n: usize,
}

impl Lines<'_> {
    fn len(&self) -> usize {
        self.n
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let slot = MAX_DATAGRAM + 1;
        self.lens[..self.n].iter().enumerate().map(move |(i, &len)| &self.buf[i * slot..i * slot + len])
    }
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: vec![0u8; BATCH * (MAX_DATAGRAM + 1)],
            headers: nix::sys::socket::MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// The datagrams queued now, up to [`BATCH`], without waiting.
    fn recv(&mut self, fd: std::os::fd::RawFd) -> nix::Result<Lines<'_>> {
        use std::io::IoSliceMut;
        let mut lens = [0usize; BATCH];
        let n = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                self.buf.chunks_mut(MAX_DATAGRAM + 1).map(|c| [IoSliceMut::new(c)]).collect();
            let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recvmmsg(fd, &mut self.headers, slices.iter_mut(), flags, None) {
                Ok(received) => received.zip(lens.iter_mut()).map(|(msg, len)| *len = msg.bytes).count(),
                Err(nix::errno::Errno::EAGAIN) => 0,
                Err(e) => return Err(e),
            }
        };
        Ok(Lines { buf: &self.buf, lens, n })
    }
}

/// Restarts the `heal=restart` containers whose every request failed for `HEAL_AFTER` (the
/// healer decides, and keeps the hourly cap).
async fn heal(status: &State, docker: &dyn DockerApi) {
    let targets = status.heal_targets();
    if targets.is_empty() {
        return;
    }
    let restarts = {
        let candidates: Vec<Candidate> = targets
            .iter()
            .map(|t| Candidate { container: &t.id, server: &t.server, docker_healthy: t.docker_healthy })
            .collect();
        let mut insight = status.insight();
        insight.healer_mut().map(|h| h.decide(&candidates, now_ms())).unwrap_or_default()
    };
    for restart in restarts {
        let name = targets.iter().find(|t| t.id == restart.container).map_or(restart.container.as_str(), |t| &t.name);
        warn!(container = name, server = %restart.server, cause = %restart.cause, "heal: restarting the container");
        let outcome = match docker.restart(&restart.container).await {
            Ok(()) => {
                info!(container = name, "heal: the container restarted");
                "restarted".to_string()
            }
            Err(e) => {
                warn!(container = name, "heal: the restart failed: {e}");
                format!("restart failed: {e}")
            }
        };
        status.event(EventKind::Restart, format!("container {name} {outcome} ({})", restart.cause));
    }
}

/// The containers with `heal=restart` that run, each at every upstream address it has in `table`.
pub(super) fn heal_targets<'a>(
    containers: impl Iterator<Item = &'a Container>,
    table: &RouteTable,
    prefix: &str,
) -> Vec<HealTarget> {
    let healing: std::collections::BTreeMap<&str, &Container> = containers
        // A Swarm task is not a container the agent can restart (Swarm replaces failed tasks).
        .filter(|c| c.running && c.swarm.is_none() && labels::heal(c, prefix) == Heal::Restart)
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut targets: Vec<HealTarget> = table
        .upstreams
        .iter()
        .flat_map(|u| &u.backends)
        .filter_map(|b| {
            let Origin::Container { name, .. } = &b.origin else { return None };
            let c = healing.get(name.as_str())?;
            Some(HealTarget {
                id: c.id.clone(),
                name: c.name.clone(),
                server: b.address(),
                docker_healthy: c.health.map(|h| h == labels::Health::Healthy),
            })
        })
        .collect();
    targets.sort_by(|a, b| (&a.id, &a.server).cmp(&(&b.id, &b.server)));
    targets.dedup();
    targets
}

fn log(event: &AnomalyEvent) {
    let f = &event.figures;
    if event.started {
        warn!(
            domain = %event.domain,
            kind = event.kind.as_str(),
            observed = f.observed,
            baseline = f.baseline,
            requests = f.requests,
            "anomaly started"
        );
    } else {
        info!(domain = %event.domain, kind = event.kind.as_str(), observed = f.observed, baseline = f.baseline, "anomaly ended");
    }
}

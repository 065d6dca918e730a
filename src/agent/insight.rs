//! The agent's end of `INSIGHT`: the Unix datagram socket nginx's `syslog:` access logs send to
//! (one request's figures per datagram, `insight::INSIGHT_LOG_FORMAT`), read into the shared
//! [`Insight`](crate::insight::Insight), and the tick that judges anomalies every few seconds.
//!
//! Why a datagram socket: nginx sends each line with one non-blocking `send` and never waits for
//! the agent (a slow agent loses lines, it never slows nginx); the per-domain files stay for the
//! users who ship them elsewhere. The socket lives beside NGINX_CONF, on the volume the companion
//! setup shares, so nginx in another container reaches it too.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixDatagram;
use tracing::{info, warn};

use crate::insight::{AnomalyEvent, MAX_DATAGRAM};
use crate::status::{now_ms, State};

/// How often anomalies are judged (the insight windows' finest slot).
const TICK: Duration = Duration::from_secs(5);
/// The socket's receive buffer: room for a burst of about 20,000 lines while the agent is busy.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds `socket` (replacing a stale socket a previous run left; refusing to replace anything
/// else), and starts reading it and ticking.
pub(super) fn start(socket: &Path, status: Arc<State>) -> anyhow::Result<()> {
    let sock = bind(socket)?;
    info!(socket = %socket.display(), "insight: reading nginx's access-log lines");
    let reader = status.clone();
    tokio::spawn(async move {
        if let Err(e) = read(sock, &reader).await {
            warn!("insight: reading the socket failed ({e}); /insight and the traffic figures stop here");
        }
    });
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let events = status.insight().tick(now_ms());
            events.iter().for_each(log);
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let fd = std::os::fd::AsFd::as_fd(&sock);
    if let Err(e) = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &RECEIVE_BUFFER) {
        warn!("insight: cannot enlarge the socket's receive buffer ({e}); a burst may lose lines");
    }
    Ok(sock)
}

/// Reads datagrams as they come, each batch under one lock.
async fn read(sock: UnixDatagram, status: &State) -> std::io::Result<()> {
    // One byte more than a line may have: a longer datagram arrives cut, at this length, and is
    // counted as oversized.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        sock.readable().await?;
        let mut insight = status.insight();
        let now = now_ms();
        loop {
            match sock.try_recv(&mut buf) {
                Ok(n) => insight.ingest(&buf[..n], now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
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

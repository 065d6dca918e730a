//! The watchers: they only send [`Trigger`]s to the controller. The Docker event stream (with
//! reconnects) and the directories of the static files, the template and the users-files.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Trigger, DOCKER_RECONNECT_FIRST, DOCKER_RECONNECT_MAX};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::sources::docker::DockerApi;

/// Follows the Docker event stream; reconnects with backoff (250 ms doubling to 1 s), without limit, and asks
/// for a resync after every (re)connect. Logs each state change once, not each retry.
pub(super) async fn watch_docker(client: Arc<dyn DockerApi>, tx: mpsc::Sender<Trigger>, prefix: String) {
    let mut backoff = Backoff::new(DOCKER_RECONNECT_FIRST, DOCKER_RECONNECT_MAX);
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        match client.ping().await {
            Ok(()) => {
                if let Some(since) = down_since.take() {
                    crate::metrics::global().docker_reconnected();
                    info!(down_for_s = since.elapsed().as_secs(), "Docker is reachable again: resyncing");
                }
                backoff.reset();
                // Events from just before the resync on are replayed, so none falls in between.
                let since = unix_now() - 1;
                let mut events = client.events(since, &prefix);
                if tx.send(Trigger::Resync).await.is_err() {
                    return;
                }
                let reason = loop {
                    match events.next().await {
                        Some(Ok(event)) => {
                            crate::metrics::global().docker_event();
                            if event.container.is_empty() {
                                continue;
                            }
                            let trigger = Trigger::Container {
                                id: event.container,
                                name: event.name,
                                action: event.action,
                                labelled: event.labelled,
                            };
                            if tx.send(trigger).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "the event stream ended".to_string(),
                    }
                };
                warn!("lost the Docker event stream ({reason}); reconnecting with backoff, the last good config stays live");
                down_since = Some(std::time::Instant::now());
            }
            Err(e) => {
                if down_since.is_none() {
                    warn!("{e}; retrying with backoff, the last good config stays live");
                    down_since = Some(std::time::Instant::now());
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Watches the directories of the static files and the template (editors and ConfigMaps replace
/// files by rename, so the file itself cannot be watched).
pub(super) fn watch_files(config: &Config, tx: mpsc::Sender<Trigger>) -> Option<notify::RecommendedWatcher> {
    let mut files: Vec<PathBuf> = config.statics.files().into_iter().map(Path::to_path_buf).collect();
    files.extend(config.template.clone());
    watch_named(files, tx)
}

/// Watches the directories of the `auth.users-file`s the routes name: an edit applies at once
/// (each pass reads and copies them), not at the next resync.
pub(super) fn watch_users_files(
    files: &BTreeSet<PathBuf>,
    tx: mpsc::Sender<Trigger>,
) -> Option<notify::RecommendedWatcher> {
    watch_named(files.iter().cloned().collect(), tx)
}

/// Sends [`Trigger::Files`] when one of `files` may have changed, watching their directories.
fn watch_named(files: Vec<PathBuf>, tx: mpsc::Sender<Trigger>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    if files.is_empty() {
        return None;
    }
    let names: HashSet<std::ffi::OsString> =
        files.iter().filter_map(|f| f.file_name().map(ToOwned::to_owned)).collect();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if changes_content(&event.kind)
                && event.paths.iter().any(|p| p.file_name().is_some_and(|n| names.contains(n)))
            {
                let _ = tx.blocking_send(Trigger::Files);
            }
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch the config files ({e}); edits are picked up at the next resync");
            return None;
        }
    };
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .map(|f| f.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf())
        .collect();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            warn!("cannot watch {} ({e}); edits there are picked up at the next resync", dir.display());
        }
    }
    Some(watcher)
}

/// Whether a file event can change what a file holds. Opening, reading and closing a file we only
/// read (the agent's own reads of the files it watches) or a change of its times or mode cannot:
/// turning those into passes made the agent re-read its files in a loop.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Unknown kinds and a lost-events notice (the queue overflowed): read again to be safe.
        EventKind::Any | EventKind::Other => true,
    }
}

//! The watchers: they only send [`Trigger`]s to the controller. The Docker event stream (with
//! reconnects) and the directories of the static files, the template and the users-files.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Trigger, DOCKER_RECONNECT_FIRST, DOCKER_RECONNECT_MAX};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::sources::docker::{DockerApi, EventKind};
use crate::sources::swarm;

/// Follows the Docker event stream; reconnects with backoff (250 ms doubling to 1 s), without limit, and asks
/// for a resync after every (re)connect. Logs each state change once, not each retry.
/// Service and node events start watches of tasks in `converging`; with none (`SWARM=off`) they
/// start none.
pub(super) async fn watch_docker(
    client: Arc<dyn DockerApi>,
    tx: mpsc::Sender<Trigger>,
    prefix: String,
    converging: Option<Converging>,
) {
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
                            let trigger = match event.kind {
                                EventKind::Container => Trigger::Container {
                                    id: event.container,
                                    name: event.name,
                                    action: event.action,
                                    labelled: event.labelled,
                                },
                                EventKind::Service => {
                                    if let Some(converging) = &converging {
                                        if event.action == "remove" {
                                            converging.forget(&event.container);
                                        } else {
                                            converging.watch(&event.container, event.name.as_deref());
                                        }
                                    }
                                    Trigger::Service { id: event.container, name: event.name, action: event.action }
                                }
                                // A node that went down (or came back, or was drained): every
                                // service's tasks, until they converge.
                                EventKind::Node => {
                                    let name = format!("node {}", event.name.as_deref().unwrap_or(&event.container));
                                    if let Some(converging) = &converging {
                                        converging.watch(EVERY_SERVICE, Some(&name));
                                    }
                                    Trigger::Service {
                                        id: EVERY_SERVICE.into(),
                                        name: Some(name),
                                        action: event.action,
                                    }
                                }
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

/// The watch of every labelled service's tasks (after a node event), not one service's.
pub(super) const EVERY_SERVICE: &str = "*";

/// How often a converging service's tasks are listed, and for how long at most.
const CONVERGE_POLL: Duration = Duration::from_millis(250);
const CONVERGE_MAX: Duration = Duration::from_secs(60);

/// Follows Swarm services after an event until they converge: Swarm sends no task events, so
/// each service's tasks are listed every [`CONVERGE_POLL`] until every task is in its desired
/// state (or [`CONVERGE_MAX`] passed), and a [`Trigger::Service`] is sent whenever the set of
/// tasks that serve (desired and running) changes. A new event about a service restarts its watch.
/// The watcher starts watches on events; the controller on a list that finds a service still
/// converging (one created or updated before the agent listened); clones share the watches.
#[derive(Clone)]
pub(super) struct Converging {
    client: Arc<dyn DockerApi>,
    tx: mpsc::Sender<Trigger>,
    prefix: String,
    watches: Arc<Mutex<Watches>>,
}

#[derive(Default)]
struct Watches {
    /// The current watch of each service (a newer event ends the older one).
    current: HashMap<String, u64>,
    /// The last generation given.
    last: u64,
    /// The services a watch gave up on ([`CONVERGE_MAX`]), with the [`signature`] of their tasks
    /// then: a list that finds them so again starts no new watch (a task Swarm cannot place
    /// would otherwise be polled for a minute after every resync).
    gave_up: HashMap<String, u64>,
}

/// The tasks' ids and states, hashed.
fn signature(tasks: &[swarm::SwarmTask]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut states: Vec<(&str, &str, &str)> =
        tasks.iter().map(|t| (t.id.as_str(), t.state.as_str(), t.desired_state.as_str())).collect();
    states.sort_unstable();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    states.hash(&mut hasher);
    hasher.finish()
}

impl Converging {
    pub(super) fn new(client: Arc<dyn DockerApi>, tx: mpsc::Sender<Trigger>, prefix: String) -> Converging {
        Converging { client, tx, prefix, watches: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, id: &str) {
        let mut watches = self.lock();
        watches.current.remove(id);
        watches.gave_up.remove(id);
    }

    /// Watches each service of a list whose tasks have not converged, that no watch follows and
    /// that no watch gave up on as it is.
    pub(super) fn watch_unsettled(&self, services: &[swarm::SwarmService]) {
        for service in services {
            let tasks = &service.tasks;
            if tasks.is_empty() || swarm::converged(tasks) {
                continue;
            }
            let skip = {
                let watches = self.lock();
                watches.current.contains_key(&service.id) || watches.gave_up.get(&service.id) == Some(&signature(tasks))
            };
            if !skip {
                self.start(&service.id, Some(&service.name), Some(swarm::serving(tasks)));
            }
        }
    }

    /// As if a watch of `service` had given up on it as it is (tests).
    #[cfg(test)]
    pub(super) fn give_up(&self, service: &swarm::SwarmService) {
        self.lock().gave_up.insert(service.id.clone(), signature(&service.tasks));
    }

    /// Whether a watch follows `id` (tests).
    #[cfg(test)]
    pub(super) fn watching(&self, id: &str) -> bool {
        self.lock().current.contains_key(id)
    }

    /// Watches a service after an event about it (or every service after a node event).
    fn watch(&self, id: &str, name: Option<&str>) {
        self.lock().gave_up.remove(id);
        self.start(id, name, None);
    }

    /// Starts watching `id`; `serving` is what the last pass saw (none: a pass follows the first
    /// look whatever it finds).
    fn start(&self, id: &str, name: Option<&str>, mut serving: Option<Vec<String>>) {
        let generation = {
            let mut watches = self.lock();
            watches.last += 1;
            let generation = watches.last;
            watches.current.insert(id.to_string(), generation);
            generation
        };
        let (client, tx, watches, prefix) =
            (self.client.clone(), self.tx.clone(), self.watches.clone(), self.prefix.clone());
        let (id, name) = (id.to_string(), name.map(str::to_string));
        tokio::spawn(async move {
            let lock = || watches.lock().unwrap_or_else(|e| e.into_inner());
            let current = || lock().current.get(&id) == Some(&generation);
            let started = tokio::time::Instant::now();
            let mut gave_up = None;
            loop {
                tokio::time::sleep(CONVERGE_POLL).await;
                if !current() {
                    return;
                }
                // A failed list is retried on the next tick (the resync repairs what a failure misses).
                let tasks = if id == EVERY_SERVICE {
                    let services = client.swarm_services(&prefix).await;
                    services.map(|all| all.into_iter().flat_map(|s| s.tasks).collect())
                } else {
                    client.service_tasks(&id).await
                };
                let Ok(tasks) = tasks else {
                    if started.elapsed() < CONVERGE_MAX {
                        continue;
                    }
                    break;
                };
                let now = swarm::serving(&tasks);
                if serving.as_ref() != Some(&now) {
                    serving = Some(now);
                    let trigger =
                        Trigger::Service { id: id.clone(), name: name.clone(), action: "tasks changed".into() };
                    if tx.send(trigger).await.is_err() {
                        return;
                    }
                }
                if !tasks.is_empty() && swarm::converged(&tasks) {
                    break;
                }
                if started.elapsed() >= CONVERGE_MAX {
                    info!(service = %name.as_deref().unwrap_or(&id), "the service has not converged after {} s; the resync follows it from here", CONVERGE_MAX.as_secs());
                    gave_up = Some(signature(&tasks));
                    break;
                }
            }
            let mut watches = lock();
            if watches.current.get(&id) == Some(&generation) {
                watches.current.remove(&id);
                if let Some(signature) = gave_up {
                    watches.gave_up.insert(id, signature);
                }
            }
        });
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

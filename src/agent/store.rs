//! The container cache: what the controller knows of the labelled containers, what it must
//! inspect (again), whether the first list was complete, and what is failing. Pure: the controller
//! makes the Docker calls and hands their results here.
//!
//! Swarm services are kept beside the containers: listed whole (services and their tasks) when
//! the store is resynced or a service changed, and turned into containers (`sources::swarm`)
//! that [`Store::containers`] yields after the plain ones.

use std::collections::{BTreeMap, HashSet};

use tracing::info;

use crate::sources::docker::DockerError;
use crate::sources::labels::Container;
use crate::sources::swarm::{self, SwarmService};

#[derive(Debug)]
pub(super) struct Store {
    prefix: String,
    /// Labelled containers (running or stopped) by id: the cache events keep current.
    containers: BTreeMap<String, Container>,
    /// True once a complete list of containers was read.
    listed: bool,
    /// Containers to inspect in the next pass.
    dirty: HashSet<String>,
    /// The next pass lists every container (and reads nginx's state) again.
    resync: bool,
    /// Containers whose last inspect failed (not "gone"): id → the error. Retried with backoff.
    failing: BTreeMap<String, String>,
    /// The error of the last list of containers, while it fails.
    list_failed: Option<String>,
    /// Swarm services: whether they are read (`None`: not known yet, ask Docker).
    swarm_on: Option<bool>,
    /// The services of the last list (`None`: none read yet) and their containers.
    services: Option<Vec<SwarmService>>,
    service_containers: Vec<Container>,
    /// The next pass lists the services again.
    services_stale: bool,
    /// The error of the last list of services (or of asking whether Docker is a manager).
    swarm_failed: Option<String>,
    /// Ask Docker again whether it is a manager (`SWARM=auto`, on resync).
    swarm_recheck: bool,
}

impl Store {
    pub(super) fn new(prefix: &str) -> Store {
        Store {
            prefix: prefix.to_string(),
            containers: BTreeMap::new(),
            listed: false,
            dirty: HashSet::new(),
            resync: false,
            failing: BTreeMap::new(),
            list_failed: None,
            swarm_on: Some(false),
            services: None,
            service_containers: Vec::new(),
            services_stale: false,
            swarm_failed: None,
            swarm_recheck: false,
        }
    }

    /// Whether Swarm services are read: `None` to ask Docker first (`SWARM=auto`).
    pub(super) fn set_swarm(&mut self, on: Option<bool>) {
        self.swarm_recheck = false;
        if on.is_some() && on == self.swarm_on {
            return;
        }
        self.swarm_on = on;
        self.swarm_failed = None;
        if on != Some(true) {
            self.services = None;
            self.service_containers.clear();
        }
        self.services_stale = on == Some(true);
    }

    /// `SWARM=auto`: ask Docker again whether it is a manager in the next pass (on resync); the
    /// services read so far stay until it answers.
    pub(super) fn recheck_swarm(&mut self) {
        self.swarm_recheck = true;
    }

    /// Whether the next pass must ask Docker whether it is a Swarm manager.
    pub(super) fn swarm_to_ask(&self) -> bool {
        self.swarm_on.is_none() || self.swarm_recheck
    }

    /// `None` while it is not known whether Swarm services are read.
    pub(super) fn swarm_on(&self) -> Option<bool> {
        self.swarm_on
    }

    /// Asking whether Docker is a Swarm manager failed.
    pub(super) fn swarm_unknown(&mut self, error: &DockerError) {
        self.swarm_failed = Some(error.to_string());
    }

    /// A service changed (an event, or its tasks while it converges): list services again.
    pub(super) fn service_changed(&mut self) {
        if self.swarm_on == Some(true) {
            self.services_stale = true;
        }
    }

    /// Whether the next pass must list the services.
    pub(super) fn wants_services(&self) -> bool {
        self.swarm_on == Some(true) && (self.services_stale || self.services.is_none())
    }

    /// The result of listing the services: taken whole, or (failing) the last list stays.
    pub(super) fn services_listed(&mut self, result: Result<Vec<SwarmService>, DockerError>) {
        match result {
            Ok(services) => {
                if self.services.is_none() {
                    info!(services = services.len(), "listed labelled Swarm services");
                }
                self.service_containers = services.iter().flat_map(|s| swarm::containers(s, &self.prefix)).collect();
                self.services = Some(services);
                self.services_stale = false;
                self.swarm_failed = None;
            }
            Err(e) => self.swarm_failed = Some(e.to_string()),
        }
    }

    /// The containers known, by id, then those of the Swarm services.
    pub(super) fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values().chain(&self.service_containers)
    }

    /// A known container by id.
    pub(super) fn get(&self, id: &str) -> Option<&Container> {
        self.containers.get(id)
    }

    /// True once a complete list was read (of the containers and, when Swarm services are
    /// read, of the services): before, no Docker route may be rendered.
    pub(super) fn listed(&self) -> bool {
        self.listed && (self.swarm_on == Some(false) || self.services.is_some())
    }

    /// An event named container `id`: inspect it in the next pass.
    pub(super) fn changed(&mut self, id: String) {
        self.dirty.insert(id);
    }

    /// List everything again in the next pass.
    pub(super) fn resync(&mut self) {
        self.resync = true;
        self.service_changed();
    }

    /// Whether the next pass must list the containers (a resync asked, or no complete list yet).
    pub(super) fn wants_list(&self) -> bool {
        self.resync || !self.listed
    }

    /// The containers to inspect now (those events named since the last pass).
    pub(super) fn take_dirty(&mut self) -> Vec<String> {
        let mut ids: Vec<String> = self.dirty.drain().collect();
        ids.sort();
        ids
    }

    /// Listing the containers failed.
    pub(super) fn list_failed(&mut self, error: &DockerError) {
        self.list_failed = Some(error.to_string());
    }

    /// A list found `ids`, inspected into `results` (in the same order). A container whose
    /// inspect fails keeps its last known state and is inspected again with backoff; before the
    /// first complete picture nothing is taken. True when the cache was replaced by the list.
    pub(super) fn listed_all(&mut self, ids: Vec<String>, results: Vec<Result<Container, DockerError>>) -> bool {
        self.list_failed = None;
        let mut fresh = BTreeMap::new();
        let mut failed = Vec::new();
        for (id, result) in ids.into_iter().zip(results) {
            match result {
                Ok(c) => {
                    self.failing.remove(&id);
                    fresh.insert(id, c);
                }
                Err(e) if e.is_not_found() => {
                    self.failing.remove(&id);
                }
                Err(e) => {
                    if let Some(known) = self.containers.get(&id) {
                        fresh.insert(id.clone(), known.clone());
                    }
                    failed.push((id, e));
                }
            }
        }
        let complete = failed.is_empty();
        for (id, e) in failed {
            self.inspected(id, Err(e));
        }
        if !self.listed && !complete {
            return false;
        }
        let before = self.containers.len();
        self.containers = fresh;
        if !self.listed {
            info!(containers = self.containers.len(), "listed labelled containers");
        } else if before != self.containers.len() {
            info!(before, after = self.containers.len(), "resync changed the container set");
        }
        self.listed = true;
        self.resync = false;
        self.dirty.retain(|id| self.failing.contains_key(id));
        true
    }

    /// The results of inspecting `ids` (in the same order).
    pub(super) fn inspected_all(&mut self, ids: Vec<String>, results: Vec<Result<Container, DockerError>>) {
        for (id, result) in ids.into_iter().zip(results) {
            self.inspected(id, result);
        }
    }

    /// One inspect's result. A container without labels with the prefix leaves the cache, one
    /// labelled `<prefix>.nginx=true` asks for a resync (nginx may have moved). A container that
    /// is gone leaves the cache; any other failure (an error answer, garbage, a timeout) keeps
    /// what is known and retries with backoff.
    pub(super) fn inspected(&mut self, id: String, result: Result<Container, DockerError>) {
        match result {
            Ok(c) => {
                self.failing.remove(&id);
                if !c.has_prefix_labels(&self.prefix) {
                    self.containers.remove(&id);
                    return;
                }
                if c.is_nginx(&self.prefix) {
                    self.resync = true;
                }
                self.containers.insert(id, c);
            }
            Err(e) if e.is_not_found() => {
                self.failing.remove(&id);
                self.containers.remove(&id);
            }
            Err(e) => {
                self.failing.insert(id, e.to_string());
            }
        }
    }

    /// A retry is due: list again after a failed list (or `apply_failed`, or before the first
    /// complete list), inspect again what failed.
    pub(super) fn retry_due(&mut self, apply_failed: bool) {
        if apply_failed || self.list_failed.is_some() || !self.listed {
            self.resync = true;
        }
        self.dirty.extend(self.failing.keys().cloned());
        if self.swarm_failed.is_some() {
            self.services_stale = true;
        }
    }

    /// What is failing, for the log and the status endpoint; `None` when Docker answers.
    pub(super) fn trouble(&self) -> Option<String> {
        if let (None, Some(e)) = (&self.list_failed, &self.swarm_failed) {
            return Some(format!("listing Swarm services fails: {e}"));
        }
        match (&self.list_failed, self.failing.len()) {
            (Some(e), _) => Some(format!("listing containers fails: {e}")),
            (None, 0) => None,
            (None, 1) => self.failing.values().next().map(|e| format!("1 container cannot be inspected: {e}")),
            (None, n) => {
                self.failing.values().next().map(|e| format!("{n} containers cannot be inspected (first: {e})"))
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sources::labels::NetworkAddress;

    /// A running container `name` (id `id-<name>`) routing `domain` on network `net`.
    pub(crate) fn app(name: &str, domain: &str) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            labels: [("smart-proxy.domains".to_string(), domain.to_string())].into(),
            exposed_ports: vec![8080],
            networks: [("net".to_string(), NetworkAddress { ipv4: Some([172, 18, 0, 5].into()), ipv6: None })].into(),
            health: None,
            running: true,
            swarm: None,
        }
    }

    pub(crate) fn timeout(id: &str) -> DockerError {
        DockerError::Timeout { call: format!("inspect container {id}") }
    }

    pub(crate) fn not_found(id: &str) -> DockerError {
        DockerError::Api {
            call: format!("inspect container {id}"),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message: format!("No such container: {id}"),
            },
        }
    }

    fn names(store: &Store) -> Vec<&str> {
        store.containers().map(|c| c.name.as_str()).collect()
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("id-{n}")).collect()
    }

    #[test]
    fn the_first_list_counts_only_when_every_inspect_answered() {
        let mut store = Store::new("smart-proxy");
        assert!(store.wants_list() && !store.listed());
        let taken = store.listed_all(ids(&["a", "b"]), vec![Ok(app("a", "a.com")), Err(timeout("id-b"))]);
        assert!(!taken && !store.listed(), "a partial first picture is not taken");
        assert!(names(&store).is_empty());
        assert_eq!(
            store.trouble().as_deref(),
            Some("1 container cannot be inspected: Docker API call inspect container id-b got no answer within 5 s")
        );
        store.retry_due(false);
        assert!(store.wants_list(), "no complete list yet: the retry lists again");
        assert_eq!(store.take_dirty(), ids(&["b"]));
        // A container removed between list and inspect is simply gone.
        let taken = store.listed_all(ids(&["a", "b"]), vec![Ok(app("a", "a.com")), Err(not_found("id-b"))]);
        assert!(taken && store.listed() && !store.wants_list());
        assert_eq!(names(&store), ["a"]);
        assert_eq!(store.trouble(), None);
    }

    #[test]
    fn a_failing_inspect_keeps_the_last_known_state_until_it_answers() {
        let mut store = Store::new("smart-proxy");
        store.listed_all(ids(&["a", "b"]), vec![Ok(app("a", "a.com")), Ok(app("b", "b.com"))]);
        // A resync where b does not answer: b keeps its state, a and the list are taken.
        store.resync();
        assert!(store.listed_all(ids(&["a", "b"]), vec![Ok(app("a", "new.com")), Err(timeout("id-b"))]));
        assert_eq!(names(&store), ["a", "b"]);
        assert_eq!(store.get("id-a").unwrap().labels["smart-proxy.domains"], "new.com");
        assert!(store.trouble().is_some());
        // An event about b, inspect failing again: still known, retried.
        store.changed("id-b".into());
        let dirty = store.take_dirty();
        store.inspected_all(dirty, vec![Err(timeout("id-b"))]);
        assert_eq!(names(&store), ["a", "b"]);
        store.retry_due(false);
        assert!(!store.wants_list(), "a failing inspect alone does not list again");
        assert_eq!(store.take_dirty(), ids(&["b"]));
        store.inspected("id-b".into(), Ok(app("b", "b2.com")));
        assert_eq!(store.trouble(), None);
        assert_eq!(store.get("id-b").unwrap().labels["smart-proxy.domains"], "b2.com");
    }

    #[test]
    fn containers_leave_when_gone_or_unlabelled_and_nginx_asks_for_a_resync() {
        let mut store = Store::new("smart-proxy");
        store.listed_all(ids(&["a", "b"]), vec![Ok(app("a", "a.com")), Ok(app("b", "b.com"))]);
        store.inspected("id-a".into(), Err(not_found("id-a")));
        let mut b = app("b", "b.com");
        b.labels = [("other.domains".to_string(), "b.com".to_string())].into();
        store.inspected("id-b".into(), Ok(b));
        assert!(names(&store).is_empty());
        let mut nginx = app("nginx", "x.com");
        nginx.labels = [("smart-proxy.nginx".to_string(), "true".to_string())].into();
        store.inspected("id-nginx".into(), Ok(nginx));
        assert!(store.wants_list());
    }

    #[test]
    fn a_failing_list_is_reported_and_retried_by_a_list() {
        let mut store = Store::new("smart-proxy");
        store.listed_all(ids(&["a"]), vec![Ok(app("a", "a.com"))]);
        store.list_failed(&timeout("list"));
        assert!(store.trouble().unwrap().starts_with("listing containers fails: "));
        store.retry_due(false);
        assert!(store.wants_list());
        assert_eq!(names(&store), ["a"], "the last picture stays");
        store.listed_all(vec![], vec![]);
        assert_eq!(store.trouble(), None);
        assert!(names(&store).is_empty());
        store.retry_due(true);
        assert!(store.wants_list(), "after a failed apply the retry lists again");
    }

    #[test]
    fn with_swarm_on_nothing_is_rendered_before_the_services_are_listed() {
        use crate::sources::swarm::{SwarmService, SwarmTask};
        let mut store = Store::new("smart-proxy");
        store.set_swarm(None);
        store.listed_all(ids(&["a"]), vec![Ok(app("a", "a.com"))]);
        assert!(store.swarm_to_ask() && !store.listed(), "SWARM=auto: Docker is asked first");
        store.set_swarm(Some(true));
        assert!(store.wants_services() && !store.listed());
        store.services_listed(Err(timeout("list services")));
        assert!(!store.listed(), "no partial picture");
        assert!(store.trouble().unwrap().starts_with("listing Swarm services fails: "));
        let shop = SwarmService {
            id: "svc".into(),
            name: "shop".into(),
            labels: [("smart-proxy.domains".to_string(), "shop.com".to_string())].into(),
            vips: Default::default(),
            tasks: vec![SwarmTask {
                id: "t1".into(),
                slot: 1,
                state: "running".into(),
                desired_state: "running".into(),
                networks: [("net".to_string(), [10, 0, 1, 3].into())].into(),
            }],
        };
        store.services_listed(Ok(vec![shop]));
        assert!(store.listed() && !store.wants_services() && store.trouble().is_none());
        assert_eq!(names(&store), ["a", "shop.1.t1"]);
        // A resync lists them again; asking again whether Docker is a manager keeps them meanwhile.
        store.resync();
        store.recheck_swarm();
        assert!(store.wants_services() && store.swarm_to_ask());
        store.set_swarm(Some(true));
        assert_eq!(names(&store), ["a", "shop.1.t1"]);
        // No longer a manager: the services leave.
        store.set_swarm(Some(false));
        assert_eq!(names(&store), ["a"]);
        assert!(!store.wants_services());
    }
}

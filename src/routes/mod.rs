//! The route model every source produces, and the merge into one [`RouteTable`].
//!
//! Architecture invariant: nothing here does IO, and nothing here can fail as a whole. Bad input
//! becomes a [`Diagnostic`] that names its origin and drops only the entry it came from.

pub mod access;
pub mod grammar;
pub mod policy;
mod table;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use grammar::{Cidr, DomainName, Host, PathPrefix, Port, ServiceName, TlsMode, ValueError};
pub use policy::{Health, Policy};
pub use table::{Location, RouteTable, Site, Upstream};

/// Where a value came from, precise enough for a person to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A container's label (`label` is `None` for the container as a whole).
    Container { name: String, label: Option<String> },
    /// Entry `entry` (1-based) of a comma-separated env var, with its text.
    Env { var: &'static str, entry: usize, text: String },
    /// A field of a JSON file, as a path like `domains[2].service`.
    File { path: PathBuf, field: String },
}

impl Origin {
    /// Static origins (env and files) make `--dry-run` and `check` exit 1 when they hold errors.
    pub fn is_static(&self) -> bool {
        !matches!(self, Origin::Container { .. })
    }

    /// A short form for the route table's "source" column.
    pub fn source(&self) -> String {
        match self {
            Origin::Container { name, .. } => format!("container {name}"),
            Origin::Env { var, entry, .. } => format!("{var} entry {entry}"),
            Origin::File { path, field } => format!("{} {field}", path.display()),
        }
    }
}

/// A name from the input (label name, JSON key) as printed: as is when it is short and plain,
/// else shortened and quoted with escapes, so a printed diagnostic is always one bounded line.
fn name(text: &str) -> String {
    if text.len() <= 120 && text.chars().all(|c| c.is_ascii_graphic()) {
        text.to_string()
    } else {
        format!("{:?}", grammar::show(text))
    }
}

/// The field of an [`Origin::File`] whose error costs the whole file (unreadable, not JSON, not an
/// object): shown as the file alone.
pub const WHOLE_FILE: &str = "(file)";

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Container { name: c, label: Some(label) } => {
                write!(f, "container {}, label {}", name(c), name(label))
            }
            Origin::Container { name: c, label: None } => write!(f, "container {}", name(c)),
            Origin::Env { var, entry, text } => write!(f, "{var} entry {entry} {:?}", grammar::show(text)),
            Origin::File { path, field } if field == WHOLE_FILE => write!(f, "file {}", path.display()),
            Origin::File { path, field } => write!(f, "file {}, {}", path.display(), name(field)),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem with the input: where, what, and (in the message) what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    pub message: String,
}

impl Diagnostic {
    pub fn error(origin: Origin, message: impl fmt::Display) -> Self {
        Diagnostic { severity: Severity::Error, origin, message: message.to_string() }
    }

    pub fn warning(origin: Origin, message: impl fmt::Display) -> Self {
        Diagnostic { severity: Severity::Warning, origin, message: message.to_string() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.origin, self.message)
    }
}

/// Services of different sources live in different namespaces: a label service `app1` and a
/// `SERVICES` entry `app1` are different upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    Docker,
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    pub namespace: Namespace,
    pub name: ServiceName,
}

/// Whether a backend may receive traffic (Docker HEALTHCHECK aware).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Up,
    Starting,
    Unhealthy,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Backend {
    #[serde(serialize_with = "serialize_display")]
    pub host: Host,
    pub port: Port,
    pub state: BackendState,
    /// The Docker network the address is on, and why that network was chosen.
    pub network: Option<NetworkChoice>,
    pub origin: Origin,
}

impl Backend {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NetworkChoice {
    pub name: String,
    pub reason: String,
}

/// A service as one source defines it; the table merges definitions with the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub key: ServiceKey,
    pub backends: Vec<Backend>,
    /// `lb` when the source sets it (labels); round-robin otherwise.
    pub balance: Option<policy::Balance>,
    /// `proto` (with `backend-verify`, `fastcgi.root`) when the source sets it; plain HTTP
    /// otherwise.
    pub protocol: Option<policy::Protocol>,
    pub origin: Origin,
}

/// One (domain, path) → service mapping as one source defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDef {
    pub domain: DomainName,
    pub path: PathPrefix,
    /// `None`: the domain is routed but has no service; it answers 503.
    pub service: Option<ServiceKey>,
    pub allow: Vec<Cidr>,
    pub tls: TlsMode,
    /// The domain's health answer when the source sets one (one per domain: the first set wins;
    /// `/health` when none does).
    pub health: Option<Health>,
    /// The domain's HSTS header when the source sets one (one per domain, like `health`).
    pub hsts: Option<policy::Hsts>,
    /// The whole domain redirects (one per domain, like `health`); such a route has no service.
    pub redirect: Option<policy::Redirect>,
    /// The canonical host of the domain and its `www.` twin (one per domain).
    pub www: Option<policy::Www>,
    pub policy: Policy,
    pub origin: Origin,
}

/// What one source yields: routes, the services they use, and the problems it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOutput {
    pub routes: Vec<RouteDef>,
    pub services: Vec<ServiceDef>,
    pub diagnostics: Vec<Diagnostic>,
    /// Services whose definition has an error (reported in `diagnostics` at this origin): a
    /// route naming one is left out with a pointer to that error, not "unknown service".
    pub rejected_services: Vec<(ServiceKey, Origin)>,
}

impl SourceOutput {
    pub fn extend(&mut self, other: SourceOutput) {
        self.routes.extend(other.routes);
        self.services.extend(other.services);
        self.diagnostics.extend(other.diagnostics);
        self.rejected_services.extend(other.rejected_services);
    }
}

fn serialize_display<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

//! The seed-era JSON format:
//! `{"domains":[{"name":"app1.com","service":"app1","allow":["10.8.0.0/24"],"tls":"auto"}],
//!   "services":[{"name":"app1","host":"app1","port":8080}]}`.
//!
//! Read field by field rather than through derived structs, so one bad entry is reported with its
//! field path and skipped while the rest of the file still counts. The sections and fields are
//! declared once ([`SECTIONS`]): the parser checks names against them, and `config_schema.rs`
//! makes the JSON Schema (`docs/config.schema.json`) and the field table of
//! `docs/config-file.md` from them.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::routes::access::{
    self, Auth, AuthKeys, AuthMode, Rate, RateKey, RateKeys, RateLimit, Url, Users, UsersFile,
};
use crate::routes::policy::{
    parse_on_off, BackendVerify, Direction, Header, HeaderName, HeaderValue, Hsts, Proto, Protocol, Redirect,
    RedirectCode, RedirectUrl, Size, Timeout, Www,
};
use crate::routes::{
    Backend, BackendState, Cidr, Diagnostic, DomainName, Health, Host, Namespace, Origin, PathPrefix, Policy, Port,
    RouteDef, ServiceDef, ServiceKey, ServiceName, SourceOutput, TlsMode,
};

/// Which top-level keys a file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `CONFIG_FILE`: `domains` and `services`.
    Combined,
    /// `DOMAINS_CONFIG`: `domains` only.
    Domains,
    /// `SERVICES_CONFIG`: `services` only.
    Services,
}

impl FileKind {
    /// The setting that names a file of this kind.
    fn setting(self) -> &'static str {
        match self {
            FileKind::Combined => "CONFIG_FILE (or --config-file)",
            FileKind::Domains => "DOMAINS_CONFIG (or --domains-config)",
            FileKind::Services => "SERVICES_CONFIG (or --services-config)",
        }
    }

    /// The top-level keys a file of this kind may hold.
    fn keys(self) -> Vec<&'static str> {
        SECTIONS.iter().filter(|s| self.holds(s.key)).map(|s| s.key).collect()
    }

    fn holds(self, key: &str) -> bool {
        match self {
            FileKind::Combined => SECTIONS.iter().any(|s| s.key == key),
            FileKind::Domains => key == "domains",
            FileKind::Services => key == "services",
        }
    }
}

/// A top-level key: an array of entries with these fields.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    pub key: &'static str,
    /// The name of one entry (the JSON Schema's definition).
    pub entry: &'static str,
    pub fields: &'static [Field],
    /// What it holds (one line).
    pub doc: &'static str,
}

/// One field of an entry.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: FieldKind,
    /// Missing or `null` is an error; an optional field may be `null` (as if absent).
    pub required: bool,
    /// What it means (one line); what it allows comes from its kind.
    pub doc: &'static str,
}

/// A field's JSON type and value grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A string: a [`DomainName`].
    Domain,
    /// A string: a [`ServiceName`].
    Service,
    /// A string: a [`Host`].
    Host,
    /// A JSON number: a [`Port`].
    Port,
    /// A string: a [`TlsMode`].
    Tls,
    /// An array of strings, each a [`Cidr`], or one string with a comma list.
    Allow,
    /// A string (or a whole number of bytes): a [`Size`].
    Size,
    /// A string: a [`Timeout`].
    Timeout,
    /// A boolean, or a string `on`/`off`.
    OnOff,
    /// A string: a [`Health`] path or `off`.
    Health,
    /// A string: an [`Hsts`] value.
    Hsts,
    /// A string: a [`Proto`].
    Proto,
    /// A string: a [`BackendVerify`] (`off`, `on`, a host name); or a boolean.
    BackendVerify,
    /// A string: an absolute [`PathPrefix`].
    Path,
    /// A string: a [`RedirectUrl`].
    RedirectUrl,
    /// An integer (or a string): a [`RedirectCode`].
    RedirectCode,
    /// A boolean.
    Bool,
    /// A string: a [`Www`].
    Www,
    /// A string: `basic`, `forward` or `off`.
    Auth,
    /// An array of `user:hash` strings, or one string with a comma list: [`Users`].
    Users,
    /// A string: a [`UsersFile`] path.
    UsersFile,
    /// A string: an http(s) [`Url`].
    Url,
    /// An array of header names, or one string with a comma list.
    HeaderNames,
    /// An array of paths, or one string with a comma list (`auth.bypass`).
    Paths,
    /// A string: a [`Rate`] or `off`.
    Rate,
    /// A whole number (or a string of one): `rate.burst`.
    Burst,
    /// A string: a [`RateKey`].
    RateKey,
    /// An object `{"request": {name: value}, "response": {name: value}}` of [`Header`]s.
    Headers,
}

/// The sections, in the order the reference lists them.
pub const SECTIONS: &[Section] = &[
    Section {
        key: "domains",
        entry: "domain",
        fields: DOMAIN_FIELDS,
        doc: "the routes: each a host name served on path `/`, proxied to a service",
    },
    Section {
        key: "services",
        entry: "service",
        fields: SERVICE_FIELDS,
        doc: "the backends: each a name, a host and a port (one server of the service's upstream)",
    },
];

const SERVICE_FIELDS: &[Field] = &[
    Field { name: "name", kind: FieldKind::Service, required: true, doc: "the name domains refer to it by" },
    Field { name: "host", kind: FieldKind::Host, required: true, doc: "the backend's host" },
    Field { name: "port", kind: FieldKind::Port, required: true, doc: "the backend's port" },
    Field {
        name: "proto",
        kind: FieldKind::Proto,
        required: false,
        doc: "how nginx talks to it (`https`, `h2c`, `grpc`, `grpcs`, `fastcgi`, `uwsgi`); `http` when absent",
    },
    Field {
        name: "backend-verify",
        kind: FieldKind::BackendVerify,
        required: false,
        doc: "with proto `https`/`grpcs`: `on` checks its certificate against `BACKEND_CA` (the system's CA bundle by default) and `host`, a host name against that name, `off` encrypts without checking; `on` when absent for a `host` name, `off` for an IP address",
    },
    Field {
        name: "fastcgi.root",
        kind: FieldKind::Path,
        required: false,
        doc: "with proto `fastcgi`: the app's document root on its side; `/var/www/html` when absent",
    },
];

const DOMAIN_FIELDS: &[Field] = &[
    Field { name: "name", kind: FieldKind::Domain, required: true, doc: "the host name served" },
    Field {
        name: "service",
        kind: FieldKind::Service,
        required: false,
        doc: "the service it is proxied to; without one the domain answers 503",
    },
    Field {
        name: "allow",
        kind: FieldKind::Allow,
        required: false,
        doc: "only these addresses may reach the domain (`allow …; deny all;`); anyone when absent",
    },
    Field {
        name: "tls",
        kind: FieldKind::Tls,
        required: false,
        doc: "`auto` (HTTPS in production; the default) or `off` (plain HTTP for this domain)",
    },
    Field {
        name: "max-body",
        kind: FieldKind::Size,
        required: false,
        doc: "the largest request body (`client_max_body_size`); 1m when absent",
    },
    Field {
        name: "timeout",
        kind: FieldKind::Timeout,
        required: false,
        doc: "how long the app may take to send or read (proxy read/send timeouts); 60s when absent",
    },
    Field {
        name: "buffering",
        kind: FieldKind::OnOff,
        required: false,
        doc: "`off` streams requests and responses (SSE, large uploads); on when absent",
    },
    Field {
        name: "headers",
        kind: FieldKind::Headers,
        required: false,
        doc: "headers sent to the app (`request`) and to the client (`response`), each an object of name and value, the value taken literally; an empty value drops the client's (removes the app's)",
    },
    Field {
        name: "error-pages",
        kind: FieldKind::OnOff,
        required: false,
        doc: "`off` leaves nginx's own pages for the errors the proxy answers itself (502, 503, 504, 429, 404); on when absent",
    },
    Field {
        name: "auth",
        kind: FieldKind::Auth,
        required: false,
        doc: "`basic` (a login: `auth.users` or `auth.users-file`), `forward` (each request asked of `auth.url`) or `off`; off when absent",
    },
    Field {
        name: "auth.users",
        kind: FieldKind::Users,
        required: false,
        doc: "with `auth: basic`: htpasswd lines `user:hash` (hashes only: `htpasswd -nbB user 'password'`)",
    },
    Field {
        name: "auth.users-file",
        kind: FieldKind::UsersFile,
        required: false,
        doc: "with `auth: basic`: an htpasswd file the agent reads, checks and copies for nginx on every pass",
    },
    Field {
        name: "auth.url",
        kind: FieldKind::Url,
        required: false,
        doc: "with `auth: forward`: the auth service's check URL; 2xx lets a request through, 401 and 403 are answered",
    },
    Field {
        name: "auth.signin",
        kind: FieldKind::Url,
        required: false,
        doc: "with `auth: forward`: where a 401 redirects (302), with the original URL as `rd`",
    },
    Field {
        name: "auth.headers",
        kind: FieldKind::HeaderNames,
        required: false,
        doc: "with `auth: forward`: the auth service's response headers passed on to the app (`Remote-User`)",
    },
    Field {
        name: "auth.bypass",
        kind: FieldKind::Paths,
        required: false,
        doc: "paths that skip auth (`/api/public/`, `/healthz`); every other setting still applies",
    },
    Field {
        name: "rate",
        kind: FieldKind::Rate,
        required: false,
        doc: "requests per client and second or minute (`10r/s`, `600r/m`), 429 past it and its burst; off when absent",
    },
    Field {
        name: "rate.burst",
        kind: FieldKind::Burst,
        required: false,
        doc: "with `rate`: requests over the rate let through at once (nodelay); the rate's number when absent",
    },
    Field {
        name: "rate.key",
        kind: FieldKind::RateKey,
        required: false,
        doc: "with `rate`: who one client is, `ip` or `header:<Name>` (without the header: the address); ip when absent",
    },
    Field {
        name: "hsts",
        kind: FieldKind::Hsts,
        required: false,
        doc: "the HTTPS server's `Strict-Transport-Security`: `off`, or seconds with optional flags; `63072000` when absent",
    },
    Field {
        name: "health",
        kind: FieldKind::Health,
        required: false,
        doc: "the path of the proxy's own `200 healthy` answer on this domain, or `off`; `/health` when absent",
    },
    Field {
        name: "redirect",
        kind: FieldKind::RedirectUrl,
        required: false,
        doc: "the whole domain redirects to this URL (every request but the ACME challenge and the health answer); no `service`, `allow` or policy with it",
    },
    Field {
        name: "redirect.code",
        kind: FieldKind::RedirectCode,
        required: false,
        doc: "the redirect's status, `301`, `302`, `307` or `308`; `301` when absent",
    },
    Field {
        name: "redirect.keep-path",
        kind: FieldKind::Bool,
        required: false,
        doc: "the request's path and query are appended to the redirect's target; `true` when absent",
    },
    Field {
        name: "www",
        kind: FieldKind::Www,
        required: false,
        doc: "`to-apex` or `to-www`: the other name of the pair redirects to this one (301) and gets a certificate too",
    },
];

/// The fields of `section`'s entries.
fn fields(section: &str) -> &'static [Field] {
    SECTIONS.iter().find(|s| s.key == section).map_or(&[], |s| s.fields)
}

pub use crate::routes::WHOLE_FILE;

/// True when `diagnostic` says the whole file was lost (so a watcher keeps its last good version).
pub fn is_whole_file_error(diagnostic: &Diagnostic) -> bool {
    matches!(&diagnostic.origin, Origin::File { field, .. } if field == WHOLE_FILE)
}

/// Reads and parses one file. A file that cannot be read or is not JSON yields one error.
pub fn load(path: &Path, kind: FileKind) -> SourceOutput {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text, kind),
        Err(e) => {
            let origin = Origin::File { path: path.to_path_buf(), field: WHOLE_FILE.into() };
            SourceOutput {
                diagnostics: vec![Diagnostic::error(
                    origin,
                    format!("cannot read it: {e}; it is named by {}", kind.setting()),
                )],
                ..Default::default()
            }
        }
    }
}

pub fn parse(path: &Path, text: &str, kind: FileKind) -> SourceOutput {
    let mut out = SourceOutput::default();
    let at = |field: String| Origin::File { path: path.to_path_buf(), field };
    let root = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            out.diagnostics.push(Diagnostic::error(
                at("(top level)".into()),
                format!("must be a JSON object with {}", keys_list(&kind.keys())),
            ));
            return out;
        }
        Err(e) => {
            out.diagnostics.push(Diagnostic::error(at(WHOLE_FILE.into()), format!("not valid JSON: {e}")));
            return out;
        }
    };
    for key in root.keys().filter(|k| !kind.holds(k)) {
        out.diagnostics.push(Diagnostic::error(
            at(key.clone()),
            format!("unknown key; this file may hold {}", keys_list(&kind.keys())),
        ));
    }
    let file = FileReader { path: path.to_path_buf() };
    // Services first: their errors are listed before the domains' that may refer to them.
    for key in ["services", "domains"].into_iter().filter(|k| kind.holds(k)) {
        let Some(value) = root.get(key) else { continue };
        file.each(value, key, &mut out, |entry, field, out| match key {
            "services" => file.service(entry, field, out),
            _ => file.domain(entry, field, out),
        });
    }
    out
}

fn keys_list(keys: &[&str]) -> String {
    keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(" and ")
}

struct FileReader {
    path: PathBuf,
}

impl FileReader {
    fn origin(&self, field: impl Into<String>) -> Origin {
        Origin::File { path: self.path.clone(), field: field.into() }
    }

    /// Calls `f` for each object in the array at `key`, reporting non-objects.
    fn each(
        &self,
        value: &Value,
        key: &str,
        out: &mut SourceOutput,
        mut f: impl FnMut(&Map<String, Value>, &str, &mut SourceOutput) -> Result<(), Diagnostic>,
    ) {
        let Some(items) = value.as_array() else {
            out.diagnostics.push(Diagnostic::error(self.origin(key), "must be a JSON array of objects"));
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("{key}[{i}]");
            let result = match item.as_object() {
                Some(entry) => f(entry, &field, out),
                None => Err(Diagnostic::error(self.origin(&field), "must be a JSON object")),
            };
            if let Err(diagnostic) = result {
                out.diagnostics.push(diagnostic);
            }
        }
    }

    fn check_keys(&self, entry: &Map<String, Value>, field: &str, allowed: &[Field]) -> Result<(), Diagnostic> {
        match entry.keys().find(|k| !allowed.iter().any(|f| f.name == k.as_str())) {
            Some(k) => Err(Diagnostic::error(
                self.origin(format!("{field}.{k}")),
                format!(
                    "unknown field; allowed fields: {}",
                    allowed.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn string<'a>(
        &self,
        entry: &'a Map<String, Value>,
        field: &str,
        name: &str,
    ) -> Result<Option<&'a str>, Diagnostic> {
        match entry.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Diagnostic::error(
                self.origin(format!("{field}.{name}")),
                format!("must be a string, found {}", kind_of(other)),
            )),
        }
    }

    fn required<'a>(&self, entry: &'a Map<String, Value>, field: &str, name: &str) -> Result<&'a str, Diagnostic> {
        self.string(entry, field, name)?
            .ok_or_else(|| Diagnostic::error(self.origin(format!("{field}.{name}")), "missing; this field is required"))
    }

    fn service(&self, entry: &Map<String, Value>, field: &str, out: &mut SourceOutput) -> Result<(), Diagnostic> {
        let keys = self.check_keys(entry, field, fields("services"));
        let name = self.required(entry, field, "name").and_then(|name| {
            ServiceName::parse(name).map_err(|e| Diagnostic::error(self.origin(format!("{field}.name")), e))
        });
        let name = match (keys.clone(), name) {
            (_, Ok(name)) => name,
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
        };
        let key = ServiceKey { namespace: Namespace::Static, name };
        match keys.and_then(|()| self.service_backend(entry, field)).and_then(|(host, port)| {
            let protocol = self.protocol(entry, field, &host)?;
            Ok((host, port, protocol))
        }) {
            Ok((host, port, protocol)) => {
                let origin = self.origin(field);
                out.services.push(ServiceDef {
                    key,
                    balance: None,
                    protocol,
                    backends: vec![Backend {
                        host,
                        port,
                        state: BackendState::Up,
                        network: None,
                        origin: origin.clone(),
                    }],
                    origin,
                });
                Ok(())
            }
            Err(diagnostic) => {
                // Routes naming this service point at this error instead of calling it unknown.
                out.rejected_services.push((key, diagnostic.origin.clone()));
                Err(diagnostic)
            }
        }
    }

    /// The `host` and `port` of a service entry.
    fn service_backend(&self, entry: &Map<String, Value>, field: &str) -> Result<(Host, Port), Diagnostic> {
        let fail = |name: &str, e: &dyn std::fmt::Display| Diagnostic::error(self.origin(format!("{field}.{name}")), e);
        let host = Host::parse(self.required(entry, field, "host")?).map_err(|e| fail("host", &e))?;
        let port = match entry.get("port") {
            Some(Value::Number(n)) => Port::parse(&n.to_string()).map_err(|e| fail("port", &e))?,
            Some(Value::String(s)) => {
                return Err(fail(
                    "port",
                    &format!("must be a JSON number like 8080, found the string {:?}", crate::routes::grammar::show(s)),
                ))
            }
            None | Some(Value::Null) => return Err(fail("port", &"missing; this field is required (1-65535)")),
            Some(other) => {
                return Err(fail("port", &format!("must be a number from 1 to 65535, found {}", kind_of(other))))
            }
        };
        Ok((host, port))
    }

    /// The `proto`, `backend-verify` and `fastcgi.root` of a service entry, checked together.
    fn protocol(&self, entry: &Map<String, Value>, field: &str, host: &Host) -> Result<Option<Protocol>, Diagnostic> {
        let fail = |name: &str, e: &dyn std::fmt::Display| Diagnostic::error(self.origin(format!("{field}.{name}")), e);
        let proto = self.string(entry, field, "proto")?.map(Proto::parse).transpose().map_err(|e| fail("proto", &e))?;
        let verify = match entry.get("backend-verify") {
            Some(Value::Bool(on)) => Some(if *on { BackendVerify::On } else { BackendVerify::Off }),
            _ => self
                .string(entry, field, "backend-verify")?
                .map(BackendVerify::parse)
                .transpose()
                .map_err(|e| fail("backend-verify", &e))?,
        };
        let root = self.string(entry, field, "fastcgi.root")?.map(PathPrefix::parse).transpose();
        let root = root.map_err(|e| fail("fastcgi.root", &e))?;
        if proto.is_none() && verify.is_none() && root.is_none() {
            return Ok(None);
        }
        let proto = proto.unwrap_or_default();
        // A TLS app named by its host name (not on a Docker network) is checked unless told not to.
        let verify = verify.unwrap_or(if proto.is_tls() && matches!(host, Host::Name(_)) {
            BackendVerify::On
        } else {
            BackendVerify::Off
        });
        let protocol = Protocol { proto, verify, fastcgi_root: root };
        protocol.check(Some(host)).map_err(|(key, message)| fail(key, &message))?;
        Ok(Some(protocol))
    }

    /// The `redirect` of a domain entry with its `redirect.code` and `redirect.keep-path`.
    fn redirect(&self, entry: &Map<String, Value>, field: &str) -> Result<Option<Redirect>, Diagnostic> {
        let fail = |name: &str, e: &dyn std::fmt::Display| Diagnostic::error(self.origin(format!("{field}.{name}")), e);
        let url = self.string(entry, field, "redirect")?.map(RedirectUrl::parse).transpose();
        let url = url.map_err(|e| fail("redirect", &e))?;
        let code = match entry.get("redirect.code") {
            Some(Value::Number(n)) => Some(RedirectCode::parse(&n.to_string()).map_err(|e| fail("redirect.code", &e))?),
            _ => self
                .string(entry, field, "redirect.code")?
                .map(RedirectCode::parse)
                .transpose()
                .map_err(|e| fail("redirect.code", &e))?,
        };
        let keep_path = match entry.get("redirect.keep-path") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(fail("redirect.keep-path", &format!("must be true or false, found {}", kind_of(other))))
            }
        };
        let Some(url) = url else {
            if let Some(name) = ["redirect.code", "redirect.keep-path"].into_iter().find(|n| entry.contains_key(*n)) {
                return Err(fail(name, &format!("{name} needs redirect, the target the domain redirects to")));
            }
            return Ok(None);
        };
        for name in ["service", "allow", "max-body", "timeout", "buffering", "error-pages"] {
            if entry.get(name).is_some_and(|v| !v.is_null()) {
                return Err(fail(
                    name,
                    &"has no effect on a domain that redirects (redirect): the whole domain redirects; remove one of them",
                ));
            }
        }
        Redirect::to_url(url, code, keep_path).map(Some).map_err(|e| fail("redirect", &e))
    }

    fn domain(&self, entry: &Map<String, Value>, field: &str, out: &mut SourceOutput) -> Result<(), Diagnostic> {
        self.check_keys(entry, field, fields("domains"))?;
        let fail = |name: &str, e: &dyn std::fmt::Display| Diagnostic::error(self.origin(format!("{field}.{name}")), e);
        let domain = DomainName::parse(self.required(entry, field, "name")?).map_err(|e| fail("name", &e))?;
        let service = match self.string(entry, field, "service")? {
            None => None,
            Some(s) => Some(ServiceName::parse(s).map_err(|e| fail("service", &e))?),
        };
        let tls = match self.string(entry, field, "tls")? {
            None => TlsMode::Auto,
            Some(s) => TlsMode::parse(s).map_err(|e| fail("tls", &e))?,
        };
        let allow = match entry.get("allow") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut allow = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let text = item
                        .as_str()
                        .ok_or_else(|| fail(&format!("allow[{i}]"), &"must be a string like \"10.0.0.0/8\""))?;
                    allow.push(Cidr::parse(text).map_err(|e| fail(&format!("allow[{i}]"), &e))?);
                }
                allow.sort();
                allow.dedup();
                allow
            }
            Some(Value::String(s)) => Cidr::parse_list(s).map_err(|e| fail("allow", &e))?,
            Some(other) => {
                return Err(fail("allow", &format!("must be a list of IPs or CIDR ranges, found {}", kind_of(other))))
            }
        };
        let (health, policy) = self.policy(entry, field)?;
        let hsts = self.string(entry, field, "hsts")?.map(Hsts::parse).transpose();
        let hsts = hsts.map_err(|e| Diagnostic::error(self.origin(format!("{field}.hsts")), e))?;
        let redirect = self.redirect(entry, field)?;
        let www = self.string(entry, field, "www")?.map(Www::parse).transpose().map_err(|e| fail("www", &e))?;
        if let Some(www) = www {
            www.names(&domain).map_err(|e| fail("www", &e))?;
        }
        out.routes.push(RouteDef {
            domain,
            path: PathPrefix::root(),
            service: service.map(|name| ServiceKey { namespace: Namespace::Static, name }),
            allow,
            tls,
            health,
            hsts,
            redirect,
            www,
            policy,
            origin: self.origin(field),
        });
        Ok(())
    }

    /// The policy fields of a domain entry (`max-body`, `timeout`, `buffering`, `error-pages`,
    /// `health`).
    fn policy(&self, entry: &Map<String, Value>, field: &str) -> Result<(Option<Health>, Policy), Diagnostic> {
        let fail = |name: &str, e: &dyn std::fmt::Display| Diagnostic::error(self.origin(format!("{field}.{name}")), e);
        let max_body = match entry.get("max-body") {
            Some(Value::Number(n)) => Some(Size::parse(&n.to_string()).map_err(|e| fail("max-body", &e))?),
            _ => {
                self.string(entry, field, "max-body")?.map(Size::parse).transpose().map_err(|e| fail("max-body", &e))?
            }
        };
        let timeout = self.string(entry, field, "timeout")?.map(Timeout::parse).transpose();
        let on_off = |name: &str| match entry.get(name) {
            Some(Value::Bool(on)) => Ok(Some(*on)),
            _ => self.string(entry, field, name)?.map(parse_on_off).transpose().map_err(|e| fail(name, &e)),
        };
        let buffering = on_off("buffering")?;
        let error_pages = on_off("error-pages")?;
        let health = self.string(entry, field, "health")?.map(Health::parse).transpose();
        let (auth, rate) = self.access(entry, field)?;
        let (request_headers, response_headers) = self.headers(entry, field)?;
        Ok((
            health.map_err(|e| fail("health", &e))?,
            Policy {
                max_body,
                timeout: timeout.map_err(|e| fail("timeout", &e))?,
                buffering,
                error_pages,
                auth,
                rate,
                request_headers,
                response_headers,
                ..Policy::default()
            },
        ))
    }

    /// The `headers` field: `request` and `response` objects of header names and values (the
    /// first problem, at its field: `domains[0].headers.response.X-Frame-Options`).
    fn headers(&self, entry: &Map<String, Value>, field: &str) -> Result<(Vec<Header>, Vec<Header>), Diagnostic> {
        let at = |path: String| self.origin(format!("{field}.headers{path}"));
        let object = match entry.get("headers") {
            None | Some(Value::Null) => return Ok((Vec::new(), Vec::new())),
            Some(Value::Object(object)) => object,
            Some(other) => {
                return Err(Diagnostic::error(
                    at(String::new()),
                    format!("must be an object with request and response, found {}", kind_of(other)),
                ))
            }
        };
        let (mut request, mut response) = (Vec::new(), Vec::new());
        for (key, headers) in object {
            let (direction, list) = match key.as_str() {
                "request" => (Direction::Request, &mut request),
                "response" => (Direction::Response, &mut response),
                _ => return Err(Diagnostic::error(at(format!(".{key}")), "is neither request nor response")),
            };
            let Value::Object(headers) = headers else {
                return Err(Diagnostic::error(
                    at(format!(".{key}")),
                    format!("must be an object of header names and values, found {}", kind_of(headers)),
                ));
            };
            for (name, value) in headers {
                let here = || at(format!(".{key}.{name}"));
                let Value::String(value) = value else {
                    return Err(Diagnostic::error(here(), format!("must be a string, found {}", kind_of(value))));
                };
                let name = HeaderName::parse(name, direction).map_err(|e| Diagnostic::error(here(), e))?;
                let value = HeaderValue::parse(value).map_err(|e| Diagnostic::error(here(), e))?;
                list.push(Header { name, value });
            }
        }
        Ok((request, response))
    }

    /// A field given as an array of strings or as one string with a comma list: its items.
    fn items<'a>(
        &self,
        entry: &'a Map<String, Value>,
        field: &str,
        name: &str,
    ) -> Result<Option<Vec<&'a str>>, Diagnostic> {
        let at = |i: Option<usize>| {
            self.origin(format!("{field}.{name}{}", i.map(|i| format!("[{i}]")).unwrap_or_default()))
        };
        match entry.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| item.as_str().ok_or_else(|| Diagnostic::error(at(Some(i)), "must be a string")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(Diagnostic::error(
                at(None),
                format!("must be a list of strings or a string, found {}", kind_of(other)),
            )),
        }
    }

    /// The `auth*` and `rate*` fields of a domain entry, combined (the first problem, at its
    /// field).
    fn access(&self, entry: &Map<String, Value>, field: &str) -> Result<(Option<Auth>, Option<RateLimit>), Diagnostic> {
        let fail = |name: &str, e: &dyn std::fmt::Display| Diagnostic::error(self.origin(format!("{field}.{name}")), e);
        macro_rules! one {
            ($name:literal, $value:expr) => {
                $value.map_err(|e| fail($name, &e))?.map(|v| (v, $name))
            };
        }
        let text = |name: &str| self.string(entry, field, name);
        let auth = AuthKeys {
            auth: one!("auth", text("auth")?.map(AuthMode::parse).transpose()),
            users: one!(
                "auth.users",
                match entry.get("auth.users") {
                    // One string: the label's form (commas or line breaks between lines).
                    Some(Value::String(text)) => Some(Users::parse(text)),
                    _ => self.items(entry, field, "auth.users")?.map(|i| Users::from_list(i.into_iter())),
                }
                .transpose()
            ),
            users_file: one!("auth.users-file", text("auth.users-file")?.map(UsersFile::parse).transpose()),
            url: one!("auth.url", text("auth.url")?.map(Url::parse).transpose()),
            signin: one!("auth.signin", text("auth.signin")?.map(Url::parse).transpose()),
            headers: one!(
                "auth.headers",
                self.items(entry, field, "auth.headers")?.map(|i| access::header_names(i.into_iter())).transpose()
            ),
            bypass: one!(
                "auth.bypass",
                self.items(entry, field, "auth.bypass")?.map(|i| access::paths(i.into_iter())).transpose()
            ),
        };
        let burst = match entry.get("rate.burst") {
            Some(Value::Number(n)) => Some(access::parse_burst(&n.to_string())),
            _ => text("rate.burst")?.map(access::parse_burst),
        };
        let rate = RateKeys {
            rate: one!("rate", text("rate")?.map(Rate::parse).transpose()),
            burst: one!("rate.burst", burst.transpose()),
            key: one!("rate.key", text("rate.key")?.map(RateKey::parse).transpose()),
        };
        let first = |errors: Vec<(&str, String)>| {
            let (name, message) = errors.into_iter().next().expect("an error");
            fail(name, &message)
        };
        let auth = auth.build(&PathPrefix::root()).map_err(first)?;
        Ok((auth, rate.build().map_err(first)?))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_and_allow() {
        let text = r#"{"domains":[{"name":"app1.com","service":"app1","allow":["10.8.0.0/24","fd00::/8"]},{"name":"status.com","tls":"off"}],
                       "services":[{"name":"app1","host":"app1","port":8080}]}"#;
        let out = parse(Path::new("c.json"), text, FileKind::Combined);
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert_eq!(out.routes.len(), 2);
        assert_eq!(out.routes[0].allow.len(), 2);
        assert_eq!(out.routes[1].tls, TlsMode::Off);
    }

    #[test]
    fn bad_fields_are_named_and_only_their_entry_is_skipped() {
        let text = r#"{"domains":[{"name":"a.com","service":"app1"},{"name":"b c.com"},{"name":"d.com","servce":"x"},{"name":"e.com","allow":["nope"]}],
                       "services":[{"name":"app1","host":"h","port":8080},{"name":"app2","host":"h","port":"8081"},{"name":"app3","host":"h","port":99999}],
                       "extra":1}"#;
        let out = parse(Path::new("/etc/sp/c.json"), text, FileKind::Combined);
        let messages: Vec<String> = out.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(out.routes.len(), 1);
        assert_eq!(out.services.len(), 1);
        assert_eq!(messages.len(), 6, "{messages:#?}");
        assert!(messages[0].contains("file /etc/sp/c.json, extra: unknown key"));
        assert!(messages[1].contains("services[1].port: must be a JSON number"));
        assert!(messages[2].contains("services[2].port: port 99999 is out of range"));
        assert!(messages[3].contains("domains[1].name"));
        assert!(messages[4].contains("domains[2].servce: unknown field; allowed fields: name, service, allow, tls"));
        assert!(messages[5].contains("domains[3].allow[0]"));
    }

    #[test]
    fn a_tls_app_named_by_host_is_verified_unless_told_not_to() {
        let text = r#"{"services":[{"name":"a","host":"api.example.com","port":443,"proto":"https"},
                                   {"name":"b","host":"10.0.0.5","port":443,"proto":"grpcs"},
                                   {"name":"c","host":"api.example.com","port":443,"proto":"https","backend-verify":false},
                                   {"name":"d","host":"10.0.0.5","port":443,"proto":"https","backend-verify":"on"}]}"#;
        let out = parse(Path::new("c.json"), text, FileKind::Combined);
        let verify: Vec<String> =
            out.services.iter().map(|s| s.protocol.as_ref().unwrap().verify.to_string()).collect();
        assert_eq!(verify, ["on", "off", "off"]);
        assert_eq!(out.diagnostics.len(), 1);
        assert!(out.diagnostics[0].to_string().contains("services[3].backend-verify: on checks the certificate"));
    }

    #[test]
    fn auth_and_rate_fields() {
        let text = r#"{"domains":[
            {"name":"a.com","auth":"basic","auth.users":["alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"],"auth.bypass":"/public/,/healthz","rate":"10r/s","rate.burst":3},
            {"name":"b.com","auth":"forward","auth.url":"http://auth:9091/check","auth.headers":["Remote-User"],"rate":"1r/m","rate.key":"header:X-Api-Key"},
            {"name":"c.com","auth":"basic","auth.users":"bob:hunter2"},
            {"name":"d.com","auth.url":"http://auth:9091/"},
            {"name":"e.com","auth":"basic","auth.users":[1]},
            {"name":"f.com","rate.burst":"5"}]}"#;
        let out = parse(Path::new("c.json"), text, FileKind::Combined);
        let described: Vec<String> = out.routes.iter().map(|r| r.policy.describe()).collect();
        assert_eq!(
            described,
            [
                "auth=basic users=alice bypass=/healthz,/public/, rate=10r/s burst=3",
                "auth=forward url=\"http://auth:9091/check\" headers=Remote-User, rate=1r/m burst=1 key=header:X-Api-Key",
            ]
        );
        let messages: Vec<String> = out.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("domains[2].auth.users: entry 1: the password of user \"bob\" is not a hash"));
        assert!(!messages[0].contains("hunter2"), "{}", messages[0]);
        assert!(messages[1].contains("domains[3].auth.url: auth.url is only used with auth=forward"));
        assert!(messages[2].contains("domains[4].auth.users[0]: must be a string"));
        assert!(messages[3].contains("domains[5].rate.burst: rate.burst is only used with rate"));
    }

    #[test]
    fn headers_field() {
        let run = |headers: &str| {
            let text = format!(r#"{{"domains":[{{"name":"a.com","headers":{headers}}}]}}"#);
            let out = parse(Path::new("f.json"), &text, FileKind::Combined);
            out.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(run(r#"{"request":{"X-A":"1"},"response":{"X-B":""}}"#), "");
        for (headers, message) in [
            (r#"{"requests":{}}"#, "file f.json, domains[0].headers.requests: is neither request nor response"),
            (
                r#"["X-A"]"#,
                "file f.json, domains[0].headers: must be an object with request and response, found an array",
            ),
            (
                r#"{"response":{"X-A":1}}"#,
                "file f.json, domains[0].headers.response.X-A: must be a string, found a number",
            ),
            (
                r#"{"request":{"Host":"x"}}"#,
                "domains[0].headers.request.Host: header name \"Host\" is not allowed: the proxy sets it",
            ),
            (r#"{"response":{"X-A":"a\nb"}}"#, "domains[0].headers.response.X-A: header value"),
        ] {
            let errors = run(headers);
            assert!(errors.contains(message), "{headers}: {errors}");
        }
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let out = parse(Path::new("c.json"), "{\"domains\": [\n  {\"name\": }]}", FileKind::Combined);
        assert!(out.diagnostics[0].to_string().contains("line 2"), "{}", out.diagnostics[0]);
    }
}

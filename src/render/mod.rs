//! Route table → nginx config text, through a minijinja template.
//!
//! Architecture invariant: rendering does no IO (the template is loaded before) and only ever
//! places values of the validated types from `routes::grammar` into the output.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use minijinja::{syntax::SyntaxConfig, Environment, UndefinedBehavior};
use serde::Serialize;
use thiserror::Error;

use crate::routes::access::{Auth, AuthMethod, RateKey};
use crate::routes::policy::{BackendVerify, Module, Proto, RedirectTo, FASTCGI_ROOT};
use crate::routes::{policy, BackendState, Host, RouteTable};

pub mod edge;
use edge::{ErrorPages, RealIp, ERROR_CODES};

/// The template compiled into the binary.
pub const BUILTIN_TEMPLATE: &str = include_str!("../../templates/nginx.conf.j2");
const BUILTIN_NAME: &str = "nginx.conf.j2 (built in)";

/// The CA bundle nginx checks an app's certificate against (`backend-verify`) unless `BACKEND_CA`
/// names another: Debian's, which the official nginx image has too.
pub const BACKEND_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("cannot read template {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {name}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Template { name: String, line: Option<usize>, message: String },
    #[error("{setting} {value:?} is not allowed: {reason}")]
    Setting { setting: &'static str, value: String, reason: String },
}

impl RenderError {
    fn template(e: minijinja::Error) -> Self {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        RenderError::Template { name: e.name().unwrap_or("template").to_string(), line: e.line(), message }
    }
}

/// An nginx version, to pick syntax the target nginx understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NginxVersion(pub u32, pub u32, pub u32);

impl NginxVersion {
    /// The version the official image ships; assumed when nginx cannot be asked.
    pub const ASSUMED: NginxVersion = NginxVersion(1, 27, 0);

    /// `http2 on;` exists from 1.25.1; before, `listen ... http2`.
    pub fn has_http2_directive(self) -> bool {
        self >= NginxVersion(1, 25, 1)
    }

    /// Parses `1.22.1` or the output of `nginx -v` (`nginx version: nginx/1.22.1`).
    pub fn parse(text: &str) -> Option<Self> {
        let start = text.find("nginx/").map(|i| i + 6).unwrap_or(0);
        let version: String = text[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten()?;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(NginxVersion(major, minor, patch))
    }
}

impl fmt::Display for NginxVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl FromStr for NginxVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NginxVersion::parse(s).ok_or_else(|| format!("{s:?} is not an nginx version like 1.27.3"))
    }
}

/// An absolute path (of a directory or a file) safe to place in the config (no spaces, quotes, ';', '$', ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConfigPath(String);

impl ConfigPath {
    pub fn parse(setting: &'static str, value: &Path) -> Result<Self, RenderError> {
        let text = value.to_string_lossy();
        let bad = |reason: &str| RenderError::Setting { setting, value: text.to_string(), reason: reason.into() };
        if !text.starts_with('/') {
            return Err(bad("must be an absolute path"));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(*c))) {
            return Err(bad(&format!("contains {c:?}; use letters, digits and / . _ - + @")));
        }
        Ok(ConfigPath(text.trim_end_matches('/').to_string()).or_root())
    }

    fn or_root(self) -> Self {
        if self.0.is_empty() {
            ConfigPath("/".into())
        } else {
            self
        }
    }

    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// Everything besides the routes that shapes the config.
#[derive(Debug, Clone)]
pub struct RenderSettings {
    /// HTTP only: no certificates, no redirects.
    pub local: bool,
    pub http_port: u16,
    pub https_port: u16,
    pub certs_dir: ConfigPath,
    pub acme_webroot: ConfigPath,
    pub log_dir: ConfigPath,
    pub nginx_version: NginxVersion,
    /// Name servers nginx uses to resolve static (env/file) service host names at request time.
    pub resolver: Vec<IpAddr>,
    /// Per-domain error logs up to this many domains; above it, nginx's own error log only
    /// (every nginx process keeps each error log open, and a reload opens a second set).
    pub error_logs_max: usize,
    /// Listen on `[::]` too.
    pub ipv6: bool,
    /// The client address behind trusted proxies.
    pub real_ip: Option<RealIp>,
    /// The proxy's pages for the errors nginx answers itself.
    pub error_pages: ErrorPages,
    /// Where the htpasswd files of `auth=basic` routes are (written by `apply`, named by
    /// `BasicUsers::file_name`): [`AUTH_DIR`] beside `NGINX_CONF`.
    pub auth_dir: ConfigPath,
    /// The file of access-log lines the agent reads (`INSIGHT`): [`INSIGHT_LOG`] beside
    /// `NGINX_CONF`; none when off.
    pub insight_log: Option<ConfigPath>,
    /// Each domain's JSON access log in `log_dir` (`ACCESS_LOG_FILES`).
    pub access_log_files: bool,
    /// The CA certificates `backend-verify` checks an app's certificate against (`BACKEND_CA`).
    pub backend_ca: ConfigPath,
    /// The agent reads each domain's JSON access log for insight, so nginx writes one line per
    /// request, not two: set by the agent when it sees `log_dir` as nginx does (nginx is its
    /// child). Only where those files are held open ([`Renderer::insight_access_logs`]).
    pub insight_from_access_logs: bool,
    /// `AUTH_CACHE`: each nginx worker remembers the basic-auth logins it accepted (in its Lua
    /// state, made anew by every reload). This generation, a digest of every users list
    /// (`AuthFiles::generation` in `apply`), is written into the config, so a changed list is a
    /// new config and a reload: no login accepted against an old list is taken. `None`: off.
    pub auth_cache: Option<String>,
}

/// The file nginx appends access-log lines to for the agent, beside the rendered config (on the
/// volume nginx's container shares with the agent in the companion setup).
pub const INSIGHT_LOG: &str = "smart-proxy-insight.log";

/// The insight file for a config written to `nginx_conf`.
pub fn insight_log_for(nginx_conf: &Path) -> Result<ConfigPath, RenderError> {
    ConfigPath::parse("NGINX_CONF", &nginx_conf.parent().unwrap_or(Path::new("/")).join(INSIGHT_LOG))
}

/// The directory of the htpasswd files, beside the rendered config (so that it is on the volume
/// nginx's container shares with the agent in the companion setup).
pub const AUTH_DIR: &str = "smart-proxy-htpasswd";

/// The htpasswd directory for a config written to `nginx_conf`.
pub fn auth_dir_for(nginx_conf: &Path) -> Result<ConfigPath, RenderError> {
    let dir = nginx_conf.parent().unwrap_or(Path::new("/")).join(AUTH_DIR);
    ConfigPath::parse("NGINX_CONF", &dir)
}

/// A loaded template, ready to render any number of tables.
#[derive(Clone)]
pub struct Renderer {
    env: Environment<'static>,
    name: String,
    /// A custom template's source, to tell which context fields it uses ([`Renderer::fit`]).
    custom: Option<String>,
    /// The built-in template, also cut in two at its sites loop (see [`HEAD`], [`SITES`]).
    split: bool,
}

/// The built-in template ends with its loop over the sites. Cut there, it renders as two
/// templates: the head, and the loop over a share of the sites (one share per core, at once),
/// whose outputs joined are the whole template's (a test renders both ways). Names of the parts
/// in the environment:
const HEAD: &str = "nginx.conf.j2 (built in, before the sites)";
const SITES: &str = "nginx.conf.j2 (built in, the sites)";

/// Below this many sites the loop is rendered on the calling thread alone.
const SITES_PER_THREAD_MIN: usize = 256;

/// What each route setting needs from a template: the label or JSON key, and the context field
/// (as the built-in template spells its use) a template must mention to render it.
const FIELDS: &[(&str, &str)] = &[
    ("max-body", ".max_body"),
    ("timeout", ".timeout"),
    ("buffering", ".buffering"),
    ("strip-prefix", ".strip_regex"),
    ("headers.request.<Name>", ".request_headers"),
    ("headers.response.<Name>", ".response_headers"),
    ("health", ".health"),
    ("hsts", ".hsts"),
    ("lb", ".method"),
    ("proto", ".pass"),
    ("backend-verify", ".tls"),
    ("fastcgi.root", ".fastcgi_root"),
    ("redirect", ".redirect"),
    ("www", ".redirect"),
    ("auth=basic", ".auth.basic_file"),
    ("auth=forward", ".auth.check"),
    ("auth.signin", ".auth.signin"),
    ("auth.headers", ".auth.headers"),
    ("auth.bypass", ".auth.bypass"),
    ("rate", ".rate.zone"),
];

/// The keys [`PolicyCtx::directives`] renders whole: a template that places it renders them.
const IN_DIRECTIVES: &[&str] = &[
    "max-body",
    "timeout",
    "buffering",
    "headers.request.<Name>",
    "headers.response.<Name>",
    "auth=basic",
    "auth.signin",
    "auth.headers",
    "auth.bypass",
    "rate",
];

/// The keys a location's or a site's settings use that render through a template field (default
/// values need none: a template written before the field renders them as before).
fn keys_used(site: &crate::routes::Site, table: &RouteTable) -> Vec<(&'static str, crate::routes::Origin)> {
    let mut used = Vec::new();
    let first = site.locations.first().map(|l| l.origin.clone());
    if site.health != crate::routes::Health::default() {
        used.extend(first.clone().map(|o| ("health", o)));
    }
    if site.hsts != crate::routes::policy::Hsts::default() {
        used.extend(first.map(|o| ("hsts", o)));
    }
    if let (Some(redirect), Some(by)) = (&site.redirect, &site.redirect_by) {
        let key = if matches!(redirect.to, RedirectTo::Url(_)) { "redirect" } else { "www" };
        used.push((key, by.clone()));
    }
    for l in &site.locations {
        let p = &l.policy;
        let mut add = |on: bool, key: &'static str| {
            if on {
                used.push((key, l.origin.clone()));
            }
        };
        add(p.max_body.is_some(), "max-body");
        add(p.timeout.is_some(), "timeout");
        add(p.buffering == Some(false), "buffering");
        add(p.strip_prefix == Some(true), "strip-prefix");
        add(!p.request_headers.is_empty(), "headers.request.<Name>");
        add(!p.response_headers.is_empty(), "headers.response.<Name>");
        let upstream = l.upstream.as_deref().and_then(|id| table.upstreams.iter().find(|u| u.id == id));
        add(upstream.is_some_and(|u| u.balance.directive().is_some()), "lb");
        let protocol = upstream.map(|u| &u.protocol);
        add(protocol.is_some_and(|p| p.proto != Proto::Http), "proto");
        add(protocol.is_some_and(|p| p.verify != BackendVerify::Off), "backend-verify");
        add(protocol.is_some_and(|p| p.fastcgi_root.is_some()), "fastcgi.root");
        if let Some(auth) = &p.auth {
            match &auth.method {
                AuthMethod::Basic(_) => add(true, "auth=basic"),
                AuthMethod::Forward(f) => {
                    add(true, "auth=forward");
                    add(f.signin.is_some(), "auth.signin");
                    add(!f.headers.is_empty(), "auth.headers");
                }
            }
            add(!auth.bypass.is_empty(), "auth.bypass");
        }
        add(p.rate.is_some(), "rate");
    }
    used
}

impl Renderer {
    pub fn builtin() -> Self {
        Self::from_source(BUILTIN_NAME.to_string(), BUILTIN_TEMPLATE.to_string())
            .expect("the built-in template compiles")
    }

    /// Loads `NGINX_TEMPLATE`; syntax errors are reported with file and line.
    pub fn from_file(path: &Path) -> Result<Self, RenderError> {
        let source = std::fs::read_to_string(path).map_err(|source| RenderError::Read { path: path.into(), source })?;
        Self::from_source(path.display().to_string(), source)
    }

    fn from_source(name: String, source: String) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(RenderError::template)?,
        );
        let builtin = source == BUILTIN_TEMPLATE;
        let custom = (!builtin).then(|| source.clone());
        if builtin {
            let [head, sites] = split_at_sites_loop(&source).expect("the built-in template ends with its sites loop");
            env.add_template_owned(HEAD, head).map_err(RenderError::template)?;
            env.add_template_owned(SITES, sites).map_err(RenderError::template)?;
        }
        env.add_template_owned(name.clone(), source).map_err(RenderError::template)?;
        Ok(Renderer { env, name, custom, split: builtin })
    }

    /// `NGINX_TEMPLATE`'s renderer, else the built-in one.
    pub fn for_template(path: Option<&Path>) -> Result<Self, RenderError> {
        match path {
            Some(path) => Self::from_file(path),
            None => Ok(Self::builtin()),
        }
    }

    /// `table` without the domains whose settings this template cannot render (a custom template
    /// written before a setting's field existed would silently drop it), each with an error naming
    /// the key, its origin and the field; other domains are untouched.
    pub fn fit(&self, mut table: RouteTable) -> RouteTable {
        let Some(source) = &self.custom else { return table };
        let mut drop = Vec::new();
        for site in &table.sites {
            for (key, origin) in keys_used(site, &table) {
                let field = FIELDS.iter().find(|(k, _)| *k == key).map_or("", |(_, f)| *f);
                let placed = IN_DIRECTIVES.contains(&key) && source.contains(".directives");
                if !source.contains(field) && !placed {
                    let message = format!(
                        "{key} is set, but the template {} never uses `{}` to render it, so {} is left out; render it as the built-in template does (docs/templates.md)",
                        self.name,
                        field.trim_start_matches('.'),
                        site.domain
                    );
                    drop.push((site.domain.clone(), crate::routes::Diagnostic::error(origin, message)));
                }
            }
        }
        for (domain, diagnostic) in drop {
            table = table.without_site(&domain);
            if !table.diagnostics.contains(&diagnostic) {
                table.diagnostics.push(diagnostic);
            }
        }
        table
    }

    fn logs(&self, table: &RouteTable, settings: &RenderSettings) -> Logs {
        let held = settings.access_log_files && table.sites.len() <= settings.error_logs_max;
        // A template written before these formats defines `logger-json` itself (without the
        // upstream fields) and no `logger-json-redirect`.
        let redirect = self.custom.as_ref().is_none_or(|s| s.contains("log_format logger-json-redirect "));
        let upstream_fields = self.custom.as_ref().is_none_or(|s| s.contains("{{ access_log_format }}"));
        Logs {
            held,
            insight_from_files: held
                && redirect
                && upstream_fields
                && settings.insight_log.is_some()
                && settings.insight_from_access_logs,
            redirect_format: if redirect { "logger-json-redirect" } else { "logger-json" },
            auth_cache: settings.auth_cache.is_some()
                && self.custom.as_ref().is_none_or(|s| s.contains("auth_cache") && s.contains("auth.cache"))
                && table
                    .sites
                    .iter()
                    .flat_map(|s| &s.locations)
                    .any(|l| matches!(l.policy.auth.as_ref().map(|a| &a.method), Some(AuthMethod::Basic(_)))),
        }
    }

    /// The files the agent reads for insight when nginx writes each request's figures only into
    /// its domain's JSON access log (see [`RenderSettings::insight_from_access_logs`]): each
    /// site's domain and file. Empty when insight has a file of its own
    /// ([`RenderSettings::insight_log`]).
    pub fn insight_access_logs(&self, table: &RouteTable, settings: &RenderSettings) -> Vec<(String, PathBuf)> {
        if !self.logs(table, settings).insight_from_files {
            return Vec::new();
        }
        table.sites.iter().map(|s| (s.domain.to_string(), held_log_path(settings, &s.domain.file_stem()))).collect()
    }

    pub fn render(&self, table: &RouteTable, settings: &RenderSettings) -> Result<String, RenderError> {
        let logs = self.logs(table, settings);
        let globals = globals(&Context::new(table, settings, &logs));
        let sites = SiteCtxs::new(table, settings, logs);
        if !self.split {
            let template = self.env.get_template(&self.name).map_err(RenderError::template)?;
            let all = minijinja::Value::from_object(Sites(table.sites.iter().map(|s| sites.of(s)).collect()));
            let mut out = Vec::with_capacity(output_size(&table.sites));
            template.render_captured_to(with_sites(&globals, all), &mut out).map_err(RenderError::template)?;
            return self.text(out);
        }
        // The head only counts the sites; the loop renders them in shares, at once.
        let count = || with_sites(&globals, minijinja::Value::from_object(SiteCount(table.sites.len())));
        let part = |name: &str, ctx: minijinja::Value, out: &mut Vec<u8>| {
            let template = self.env.get_template(name).map_err(RenderError::template)?;
            template.render_captured_to(ctx, out).map(|_| ()).map_err(RenderError::template)
        };
        let share = |chunk: &[crate::routes::Site], out: &mut Vec<u8>| {
            let ctxs = minijinja::Value::from_object(Sites(chunk.iter().map(|s| sites.of(s)).collect()));
            part(SITES, with_sites(&globals, ctxs), out)
        };
        // Asked once: the answer reads the cgroup's files (3 % of a render at 10,000 sites).
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let shares = threads.min(table.sites.len() / SITES_PER_THREAD_MIN).max(1);
        let chunk = table.sites.len().div_ceil(shares).max(1);
        let mut chunks = table.sites.chunks(chunk);
        let first = chunks.next().unwrap_or_default();
        // This thread renders the head and the first share into the output; the other shares are
        // rendered at the same time, each into its own buffer, and appended.
        // Sized for all: growing a buffer of this size copies it (and faults its pages in) again.
        // Each share is checked for UTF-8 where it was rendered, at the same time as the others
        // (35 MB for 10,000 sites with policies: 5 ms for one thread after all the others).
        let mut out = Vec::with_capacity(output_size(&table.sites));
        let (mut out, others) = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .map(|c| {
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(output_size(c));
                        share(c, &mut out).and_then(|()| self.text(out))
                    })
                })
                .collect();
            let mine =
                part(HEAD, count(), &mut out).and_then(|()| share(first, &mut out)).and_then(|()| self.text(out));
            let others: Vec<_> =
                handles.into_iter().map(|h| h.join().expect("a render thread does not panic")).collect();
            mine.map(|out| (out, others))
        })?;
        for other in others {
            out.push_str(&other?);
        }
        Ok(out)
    }

    fn text(&self, out: Vec<u8>) -> Result<String, RenderError> {
        String::from_utf8(out).map_err(|e| RenderError::Template {
            name: self.name.clone(),
            line: None,
            message: format!("the output is not UTF-8: {e}"),
        })
    }
}

/// The capacity to render `sites` into: 10,000 production sites render about 28 MB, and growing
/// past the capacity copies it all into twice the memory (15-20 ms at 10,000 sites).
fn output_size(sites: &[crate::routes::Site]) -> usize {
    let locations: usize = sites.iter().map(|s| s.locations.len()).sum();
    4096 + sites.len() * 3072 + locations * 768
}

/// `source` cut before its last top-level `{% for site in sites %}`, whose `{% endfor %}` ends the
/// file: the head and the loop. The loop keeps its lines' numbers (a comment holds the head's line
/// breaks), so errors name the template's lines.
fn split_at_sites_loop(source: &str) -> Option<[String; 2]> {
    const OPEN: &str = "{% for site in sites %}\n";
    const CLOSE: &str = "{% endfor %}\n";
    let start = source.rfind(OPEN)?;
    let end = source.len() - CLOSE.len();
    if !source[end..].starts_with(CLOSE) || start > end {
        return None;
    }
    let breaks = source[..start].matches('\n').count();
    let padding = if breaks == 0 { String::new() } else { format!("{{#{}#}}", "\n".repeat(breaks)) };
    Some([source[..start].to_string(), format!("{padding}{}", &source[start..])])
}

/// `globals` (the context without its sites) with `sites`.
fn with_sites(globals: &Globals, sites: minijinja::Value) -> minijinja::Value {
    minijinja::Value::from_object(Root { globals: globals.clone(), sites })
}

/// The context's fields but `sites`, by name. A template looks its globals up once per use (each
/// site's servers: a dozen times), and a map of values compares the name with half its keys.
type Globals = Arc<std::collections::HashMap<String, minijinja::Value, std::hash::BuildHasherDefault<Fx>>>;

/// FxHash (rustc's), for [`Globals`]: their keys are a few dozen short names of our own
/// (nothing an attacker chooses), and SipHash over them cost 3 % of a render's instructions.
#[derive(Default)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn globals(context: &Context) -> Globals {
    let value = minijinja::Value::from(minijinja::value::Serde(context));
    let keys = value.try_iter().expect("the context is a map");
    Arc::new(keys.filter_map(|k| Some((k.as_str()?.to_string(), value.get_item(&k).unwrap_or_default()))).collect())
}

/// The template's context: [`Globals`] and `sites`.
#[derive(Debug)]
struct Root {
    globals: Globals,
    sites: minijinja::Value,
}

impl minijinja::value::Object for Root {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        self.get_value_by_str(key.as_str()?)
    }

    /// Without the default's detour through a value made of `key`: the template looks a global
    /// up some twenty times a site.
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<minijinja::Value> {
        match key {
            "sites" => Some(self.sites.clone()),
            name => self.globals.get(name).cloned(),
        }
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let keys = self.globals.keys().map(|k| minijinja::Value::from(k.as_str()));
        minijinja::value::Enumerator::Values(keys.chain([minijinja::Value::from("sites")]).collect())
    }
}

/// The number of sites, as the sequence the head of a cut template sees (it only counts them;
/// anything else is an error, as for an undefined value).
#[derive(Debug)]
struct SiteCount(usize);

impl minijinja::value::Object for SiteCount {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, _: &minijinja::Value) -> Option<minijinja::Value> {
        None
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Seq(self.0)
    }
}

/// The template's context; its fields are the documented template interface.
#[derive(Serialize)]
struct Context<'a> {
    generator_version: &'static str,
    local: bool,
    http_port: u16,
    https_port: u16,
    /// `:8443` when HTTPS is not on 443, for redirects.
    https_port_suffix: String,
    /// `:8080` when HTTP is not on 80, for redirects of plain-HTTP servers.
    http_port_suffix: String,
    /// The CA certificates for `backend-verify`.
    backend_ca: &'a ConfigPath,
    /// Some location passes to FastCGI: the config maps its script name.
    fastcgi: bool,
    http2_on: bool,
    acme_webroot: &'a ConfigPath,
    log_dir: &'a ConfigPath,
    /// One error log per domain (false above `ERROR_LOGS_MAX` domains).
    per_domain_error_logs: bool,
    resolver: Option<String>,
    /// Some header value or auth URL holds a `$`: the config defines `$smartproxy_dollar` as a
    /// literal `$`.
    dollar: bool,
    /// `AUTH_CACHE` with a basic-auth route: the generation of the users lists (hex), written into
    /// the config (a changed list, a new config); the template defines the Lua functions.
    auth_cache: Option<String>,
    /// The `listen` addresses of the HTTP servers (`80`, `[::]:80`; with ` proxy_protocol`).
    listen_http: Vec<String>,
    /// The same for HTTPS.
    listen_https: Vec<String>,
    /// `set_real_ip_from` ranges and the `real_ip_header`, when `TRUSTED_PROXIES` is set.
    real_ip: Option<RealIpCtx>,
    /// What every domain's servers repeat, as directives (lines after the first indented by four
    /// spaces): the HTTP and the HTTPS `listen`s, and the error pages' `error_page`s and locations.
    /// Written once here, a template places each with one lookup per server.
    http_listen: String,
    https_listen: String,
    error_handling: String,
    /// The `access_log`s of a server that serves a domain (the JSON file, the agent's file, or
    /// `off`), and of one that only redirects to HTTPS (the JSON file, or `off`).
    access_logs: String,
    redirect_access_logs: String,
    /// One quoted nginx string each: the `logger-json` and `logger-json-redirect` formats.
    access_log_format: &'static str,
    redirect_log_format: &'static str,
    /// `INSIGHT`: the file the agent reads and the `log_format` of its lines.
    insight: Option<InsightCtx>,
    /// The server's `error_page` directives alone, for a location that sets an `error_page` of its
    /// own (forward auth's 401 with `auth.signin`), which would drop the server's.
    error_pages_in_location: String,
    error_pages: ErrorPagesCtx,
    /// One `limit_req_zone` per rate-limited location.
    rate_zones: Vec<RateZoneCtx>,
    /// The headers rate limits are keyed by, each with the variable of its key (`map`: the
    /// header's value, or the client's address without it).
    rate_keys: Vec<RateKeyCtx>,
    hash: HashSizes,
    upstreams: Vec<UpstreamCtx>,
    // And `sites`: a sequence of [`SiteCtx`], made into template values one at a time ([`Sites`]).
}

/// The sites, as a sequence a template reads one site at a time: a site becomes a template value
/// when the template reaches it and is dropped after. Converting all 10,000 sites up front built
/// a tree of values as large as the output's cache, and freeing it cost a fifth of the render.
#[derive(Debug)]
struct Sites(Vec<SiteCtx>);

impl minijinja::value::Object for Sites {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        self.0.get(key.as_usize()?).map(value_of)
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Seq(self.0.len())
    }
}

/// A context value as a template value.
fn value_of<T: Serialize>(t: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(t))
}

/// A context object, shared with the template (no copy).
#[derive(Debug)]
struct Shared<T>(Arc<T>);

impl<T: minijinja::value::Object + Send + Sync + 'static> Shared<T> {
    fn new(t: T) -> Self {
        Shared(Arc::new(t))
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: minijinja::value::Object + Send + Sync + 'static> Serialize for Shared<T> {
    /// Into a template value: the object itself, shared (minijinja keeps a value that a
    /// serialization into one carries whole).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        minijinja::Value::from_dyn_object(self.0.clone()).serialize(serializer)
    }
}

/// Declares a context struct and makes it a template object whose fields become template values
/// when the template reads them, each alone: the built-in template reads three of a policy's
/// eleven fields, and converting all of them for every location cost 3 % of a render's
/// instructions. For structs whose fields are read once or twice (each read converts anew).
/// `enumerate` lists every field in order, so that a template may still iterate over them or
/// print them, as it could the serialized struct.
macro_rules! fields {
    ($(#[$meta:meta])* struct $t:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        struct $t {
            $($(#[$field_meta])* $field: $ty,)*
        }

        impl minijinja::value::Object for $t {
            fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
                self.get_value_by_str(key.as_str()?)
            }

            fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<minijinja::Value> {
                Some(match key {
                    $(stringify!($field) => value_of(&self.$field),)*
                    _ => return None,
                })
            }

            fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
                minijinja::value::Enumerator::Str(&[$(stringify!($field)),*])
            }
        }
    };
}

#[derive(Serialize)]
struct InsightCtx {
    file: String,
    /// One quoted nginx string: the `smartproxy_insight` format.
    log_format: &'static str,
}

#[derive(Serialize)]
struct ErrorPagesCtx {
    /// The codes answered by the built-in text (`404 429 503`), for the template's map.
    builtin: String,
}

#[derive(Serialize)]
struct RealIpCtx {
    trusted: Vec<String>,
    header: String,
}

#[derive(Serialize)]
struct RateZoneCtx {
    /// `sp_rate_<domain><path>`: stable across renders, so a reload keeps the zone's counts.
    name: String,
    /// `$binary_remote_addr`, or a [`RateKeyCtx::variable`].
    key: String,
    /// `10r/s`.
    rate: String,
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct RateKeyCtx {
    /// The header's variable, `http_x_api_key`.
    header: String,
    /// The key's variable, `smartproxy_rate_x_api_key`.
    variable: String,
}

#[derive(Serialize)]
struct HashSizes {
    bucket_size: usize,
    max_size: usize,
}

#[derive(Serialize)]
struct UpstreamCtx {
    id: String,
    /// `ip:port` of every server that may take traffic (starting/unhealthy replicas left out).
    servers: Vec<String>,
    /// A static service given by host name: resolved by nginx at request time, no upstream block.
    dynamic: bool,
    /// The `lb` directive (`least_conn`, `ip_hash`, `random`); none for round-robin.
    method: Option<&'static str>,
}

/// Declares a context struct whose fields a template reads many times, and makes it serialize
/// as a template object that holds each field converted once (as serde would convert it) and
/// finds it by a `match` on its name, compared inline: a serialized struct is a map searched
/// through a generic lookup, and a template reads a site's fields some thirty times (4 % of a
/// render's instructions).
macro_rules! converted {
    ($(#[$meta:meta])* struct $t:ident as $obj:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        struct $t {
            $($(#[$field_meta])* $field: $ty,)*
        }

        #[doc = concat!("[`", stringify!($t), "`] as a template value.")]
        #[derive(Debug)]
        struct $obj {
            $($field: minijinja::Value,)*
        }

        impl Serialize for $t {
            /// Into a template value: the object (minijinja keeps a value that a serialization
            /// into one carries whole); anywhere else, its fields.
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                minijinja::Value::from_object($obj { $($field: value_of(&self.$field),)* }).serialize(serializer)
            }
        }

        impl minijinja::value::Object for $obj {
            fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
                self.get_value_by_str(key.as_str()?)
            }

            fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<minijinja::Value> {
                Some(match key {
                    $(stringify!($field) => self.$field.clone(),)*
                    _ => return None,
                })
            }

            fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
                minijinja::value::Enumerator::Str(&[$(stringify!($field)),*])
            }
        }
    };
}

converted! {
    #[derive(Debug)]
    struct SiteCtx as SiteValue {
        domain: String,
        tls: bool,
        cert_dir: String,
        /// The `access_log`s of the servers that serve the domain and of the one that only
        /// redirects to HTTPS, when its JSON file is its own, held open ([`access_logs`]); else the
        /// globals of the same names, shared by every site.
        access_logs: Option<String>,
        redirect_access_logs: Option<String>,
        log_name: String,
        has_root: bool,
        /// The exact path of the proxy's own `200 healthy` answer; none when `health=off`.
        health: Option<String>,
        /// The HTTPS server's `Strict-Transport-Security` value; none when `hsts=off`.
        hsts: Option<String>,
        /// The whole domain redirects (its locations are empty).
        redirect: Option<RedirectCtx>,
        locations: Vec<LocationCtx>,
    }
}

#[derive(Debug, Serialize)]
struct RedirectCtx {
    code: u16,
    /// The `Location` as one nginx string (quoted, `$` escaped), `$request_uri` appended when
    /// the path is kept.
    location: String,
}

#[derive(Debug, Serialize)]
struct BackendTlsCtx {
    /// `*_ssl_name`: the name sent as SNI and checked (`$host` when nothing names one).
    name: String,
    /// `*_ssl_verify on` against `backend_ca`.
    verify: bool,
}

converted! {
    #[derive(Debug)]
    struct LocationCtx as LocationValue {
        path: String,
        upstream: Option<String>,
        /// `host:port` for a dynamic upstream.
        backend: Option<String>,
        /// The module that passes requests on: `proxy`, `grpc`, `fastcgi` or `uwsgi` (its
        /// directives' prefix).
        module: &'static str,
        /// The `*_pass` address: scheme (none for FastCGI and uwsgi) and upstream, or
        /// `$smartproxy_backend` for a dynamic one.
        pass: String,
        /// The app is reached over TLS (`https`, `grpcs`).
        tls: Option<BackendTlsCtx>,
        /// With FastCGI: the app's document root.
        fastcgi_root: Option<String>,
        allow: Vec<String>,
        /// The location's policy; `None` for the defaults (most locations: one field to serialize
        /// and one test in the template).
        policy: Option<Shared<PolicyCtx>>,
    }
}

fields! {
    #[derive(Debug)]
    struct PolicyCtx {
        /// With `strip-prefix`: the regex of the `rewrite` that removes the location's path.
        strip_regex: Option<String>,
        /// `client_max_body_size` when set (nginx's 1m otherwise).
        max_body: Option<String>,
        /// The proxy read and send timeout (`60s` by default).
        timeout: String,
        /// False: `proxy_buffering off` and `proxy_request_buffering off`.
        buffering: bool,
        /// `proxy_set_header name value` (an empty value drops the client's header).
        request_headers: Vec<HeaderCtx>,
        /// `add_header name value always` (empty value: `proxy_hide_header name`).
        response_headers: Vec<HeaderCtx>,
        /// Some response header is added: nginx then drops the server's `add_header`s in this
        /// location, so the template repeats HSTS here.
        adds_headers: bool,
        /// False with `error-pages=off`: nginx's own pages.
        error_pages: bool,
        /// `limit_req` in this location.
        rate: Option<LimitCtx>,
        /// `auth_basic` or `auth_request`.
        auth: Option<Shared<AuthCtx>>,
        /// All of the above as the built-in template's directive lines (each indented for a
        /// location, the last without its line break), written here once: with policies on most of
        /// 10,000 routes, the template's lookups of these fields were a third of a render. A
        /// template of one's own may use the fields instead.
        directives: String,
    }
}

#[derive(Debug, Serialize)]
struct LimitCtx {
    zone: String,
    /// `burst=` unless 0 (nginx refuses `burst=0`; no burst is its default).
    burst: u32,
}

fields! {
    #[derive(Debug)]
    struct AuthCtx {
        /// Basic: the htpasswd file (`auth_basic_user_file`).
        basic_file: Option<String>,
        /// Basic with `AUTH_CACHE`: the users list's name in the keys of the logins nginx
        /// remembers (`set_by_lua_block` before any `rewrite`; see the built-in template).
        cache: Option<String>,
        /// Forward: the internal location the `auth_request` goes to (`/.smart-proxy/auth/<n>`).
        check: Option<String>,
        /// Forward: the auth service's URL as one nginx string.
        url: Option<String>,
        /// Forward: the sign-in URL with `rd=` and the original URL, as one nginx string.
        signin: Option<String>,
        /// Forward: the response headers copied to the app.
        headers: Vec<AuthHeaderCtx>,
        /// Paths inside the location that skip auth (nested locations).
        bypass: Vec<String>,
    }
}

#[derive(Debug, Serialize)]
struct AuthHeaderCtx {
    name: String,
    /// The CGI variable (`HTTP_REMOTE_USER`), for FastCGI and uwsgi.
    param: String,
    /// `smartproxy_auth_1`: the header's place in `auth.headers`.
    variable: String,
    /// `upstream_http_remote_user`.
    upstream: String,
}

#[derive(Debug, Serialize)]
struct HeaderCtx {
    name: String,
    /// The CGI variable of a request header (`HTTP_X_FOO`), for FastCGI and uwsgi.
    param: String,
    /// The value as one nginx string (quoted, escaped, `$` as `${smartproxy_dollar}`), or `None`
    /// for an empty value.
    value: Option<String>,
}

/// Where a location is, for the names its policy gives things (zones, files, checks).
struct At<'a> {
    domain: &'a crate::routes::DomainName,
    path: &'a str,
    /// The location's number in its site, from 1.
    index: usize,
    auth_dir: &'a ConfigPath,
    /// Basic auth remembers accepted logins (`AUTH_CACHE`, see [`Logs::auth_cache`]).
    auth_cache: bool,
}

/// The rate zone of a location, named after its domain, path and key: nginx keeps a zone's counts
/// across reloads by name, and refuses a reload (which `nginx -t` cannot tell) that gives a zone
/// another key, so a changed `rate.key` is a new zone.
fn zone_name(domain: &crate::routes::DomainName, path: &str, key: &RateKey) -> String {
    let key = match key.header_variable() {
        None => "ip".to_string(),
        Some(header) => header.trim_start_matches("http_").to_string(),
    };
    format!("sp_rate_{}{path}@{key}", domain.file_stem())
}

/// The variable a rate limit keyed by `header` counts by.
fn rate_key_variable(header_variable: &str) -> String {
    format!("smartproxy_rate_{}", header_variable.trim_start_matches("http_"))
}

impl AuthCtx {
    fn of(auth: &Auth, at: &At) -> Self {
        let mut ctx = AuthCtx {
            basic_file: None,
            cache: None,
            check: None,
            url: None,
            signin: None,
            headers: Vec::new(),
            bypass: auth.bypass.iter().map(|p| p.to_string()).collect(),
        };
        match &auth.method {
            AuthMethod::Basic(users) => {
                ctx.basic_file = Some(format!("{}/{}", at.auth_dir.0, users.file_name()));
                ctx.cache = at.auth_cache.then(|| users.file_name());
            }
            AuthMethod::Forward(forward) => {
                ctx.check = Some(format!("/.smart-proxy/auth/{}", at.index));
                ctx.url = Some(policy::nginx_literal(forward.url.as_str()));
                ctx.signin = forward.signin.as_ref().map(|url| {
                    let rd = if url.as_str().contains('?') { "&rd=" } else { "?rd=" };
                    policy::nginx_literal_then(url.as_str(), &[rd, "$scheme://$http_host$request_uri"])
                });
                ctx.headers = forward
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let lower = name.as_str().to_ascii_lowercase().replace('-', "_");
                        AuthHeaderCtx {
                            name: name.as_str().to_string(),
                            param: format!("HTTP_{}", lower.to_ascii_uppercase()),
                            // Numbered, not named: a variable the config defines goes into nginx's
                            // variables hash, whose 64-byte buckets a 64-character header name
                            // overflows (`nginx -t`: "could not build variables_hash").
                            variable: format!("smartproxy_auth_{}", i + 1),
                            upstream: format!("upstream_http_{lower}"),
                        }
                    })
                    .collect();
            }
        }
        ctx
    }
}

impl PolicyCtx {
    fn of(policy: &crate::routes::Policy, at: &At) -> Self {
        let path = at.path;
        PolicyCtx {
            strip_regex: (policy.strip_prefix == Some(true) && path != "/")
                .then(|| crate::routes::policy::strip_prefix_regex(path)),
            max_body: policy.max_body.map(|s| s.to_string()),
            timeout: policy.timeout.map_or_else(|| "60s".to_string(), |t| t.to_string()),
            buffering: policy.buffering.unwrap_or(true),
            request_headers: policy.request_headers.iter().map(HeaderCtx::of).collect(),
            response_headers: policy.response_headers.iter().map(HeaderCtx::of).collect(),
            adds_headers: policy.response_headers.iter().any(|h| !h.value.as_str().is_empty()),
            error_pages: policy.error_pages.unwrap_or(true),
            rate: policy.rate.as_ref().map(|r| LimitCtx { zone: zone_name(at.domain, path, &r.key), burst: r.burst }),
            auth: policy.auth.as_ref().map(|a| Shared::new(AuthCtx::of(a, at))),
            directives: String::new(),
        }
    }

    /// [`PolicyCtx::directives`] for location `loc` of `domain`: what the built-in template
    /// wrote from the fields, line for line. `hsts`: the value to repeat where the location adds
    /// headers (nginx then drops the server's), when it is served over HTTPS.
    fn write_directives(&self, loc: &LocationCtx, domain: &str, hsts: Option<&str>, error_pages: &str) -> String {
        use std::fmt::Write;
        let m = loc.module;
        let headers_set = m == "proxy" || m == "grpc";
        let mut out = String::with_capacity(512);
        let mut line = |text: std::fmt::Arguments| {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = out.write_fmt(text);
        };
        if !self.error_pages {
            line(format_args!(
                "        # error-pages=off: an error_page here drops the server's (nginx never answers 599 itself)."
            ));
            line(format_args!("        error_page 599 /;"));
        }
        line(format_args!("        {m}_send_timeout {};", self.timeout));
        line(format_args!("        {m}_read_timeout {};", self.timeout));
        if let Some(size) = &self.max_body {
            line(format_args!("        client_max_body_size {size};"));
        }
        if !self.buffering {
            line(format_args!("        {m}_buffering off;"));
            line(format_args!("        {m}_request_buffering off;"));
        }
        for h in &self.request_headers {
            let value = h.value.as_deref().unwrap_or("\"\"");
            match headers_set {
                true => line(format_args!("        {m}_set_header {} {value};", h.name)),
                false => line(format_args!("        {m}_param {} {value};", h.param)),
            }
        }
        for h in &self.response_headers {
            match &h.value {
                Some(value) => line(format_args!("        add_header {} {value} always;", h.name)),
                None => line(format_args!("        {m}_hide_header {};", h.name)),
            }
        }
        if let (true, Some(hsts)) = (self.adds_headers, hsts) {
            line(format_args!("        add_header Strict-Transport-Security \"{hsts}\" always;"));
        }
        if let Some(rate) = &self.rate {
            match rate.burst {
                0 => line(format_args!("        limit_req zone={} nodelay;", rate.zone)),
                burst => line(format_args!("        limit_req zone={} burst={burst} nodelay;", rate.zone)),
            }
            line(format_args!("        limit_req_status 429;"));
        }
        let Some(auth) = &self.auth else { return out };
        match (&auth.basic_file, &auth.check) {
            (Some(file), _) if auth.cache.is_some() => {
                // The realm, or `off` for a login accepted before: the template's
                // `set_by_lua_block` sets it, the log phase remembers a login nginx accepted.
                line(format_args!("        auth_basic $smartproxy_auth_realm;"));
                line(format_args!("        auth_basic_user_file {file};"));
                line(format_args!("        log_by_lua_block {{ smartproxy_auth_log() }}"));
            }
            (Some(file), _) => {
                // nginx reads the realm `off` as auth turned off: a domain named so gets `off.`.
                let realm = if domain == "off" { "off." } else { domain };
                line(format_args!("        auth_basic \"{realm}\";"));
                line(format_args!("        auth_basic_user_file {file};"));
            }
            (None, check) => {
                line(format_args!("        auth_request {};", check.as_deref().unwrap_or_default()));
                for h in &auth.headers {
                    line(format_args!("        auth_request_set ${} ${};", h.variable, h.upstream));
                    match headers_set {
                        true => line(format_args!("        {m}_set_header {} ${};", h.name, h.variable)),
                        false => line(format_args!("        {m}_param {} ${};", h.param, h.variable)),
                    }
                }
                if let Some(signin) = &auth.signin {
                    line(format_args!("        error_page 401 =302 {signin};"));
                    if self.error_pages && !error_pages.is_empty() {
                        line(format_args!("        {error_pages}"));
                    }
                }
            }
        }
        let off = if auth.basic_file.is_some() { "auth_basic off;" } else { "auth_request off;" };
        for b in &auth.bypass {
            line(format_args!(""));
            line(format_args!("        # auth.bypass: no auth here; the route's other policies apply."));
            line(format_args!("        location {b} {{"));
            line(format_args!("            {off}"));
            // Before the rewrite, whose `break` ends the rewrite directives after it.
            if let Some(backend) = &loc.backend {
                line(format_args!("            set $smartproxy_backend {backend};"));
            }
            if let Some(regex) = &self.strip_regex {
                line(format_args!("            rewrite {regex} /$1 break;"));
            }
            line(format_args!("            {m}_pass {};", loc.pass));
            line(format_args!("        }}"));
        }
        out
    }
}

impl HeaderCtx {
    fn of(header: &crate::routes::policy::Header) -> Self {
        let value = header.value.as_str();
        HeaderCtx {
            name: header.name.as_str().to_string(),
            param: format!("HTTP_{}", header.name.as_str().to_ascii_uppercase().replace('-', "_")),
            value: (!value.is_empty()).then(|| crate::routes::policy::nginx_literal(value)),
        }
    }
}

impl<'a> Context<'a> {
    fn new(table: &RouteTable, settings: &'a RenderSettings, logs: &Logs) -> Self {
        let upstreams: Vec<UpstreamCtx> = table
            .upstreams
            .iter()
            .map(|u| {
                let dynamic = matches!(&u.backends[..], [b] if matches!(b.host, Host::Name(_)));
                UpstreamCtx {
                    id: u.id.clone(),
                    servers: u.backends.iter().filter(|b| b.state == BackendState::Up).map(|b| b.address()).collect(),
                    dynamic,
                    method: u.balance.directive(),
                }
            })
            .collect();
        let policies = || table.sites.iter().flat_map(|s| s.locations.iter().map(move |l| (s, l)));
        fn forward(l: &crate::routes::Location) -> Option<&crate::routes::access::Forward> {
            match l.policy.auth.as_ref().map(|a| &a.method) {
                Some(AuthMethod::Forward(f)) => Some(f),
                _ => None,
            }
        }
        let mut rate_zones = Vec::new();
        let mut rate_keys = Vec::new();
        for (site, l) in policies() {
            let Some(rate) = &l.policy.rate else { continue };
            let key = match rate.key.header_variable() {
                None => "$binary_remote_addr".to_string(),
                Some(header) => {
                    let variable = rate_key_variable(&header);
                    let key = format!("${variable}");
                    rate_keys.push(RateKeyCtx { header, variable });
                    key
                }
            };
            rate_zones.push(RateZoneCtx {
                name: zone_name(&site.domain, l.path.as_str(), &rate.key),
                key,
                rate: rate.rate.to_string(),
            });
        }
        rate_keys.sort();
        rate_keys.dedup();
        let needs_resolver = upstreams.iter().any(|u| u.dynamic)
            || policies().filter_map(|(_, l)| forward(l)).any(|f| f.url.has_host_name());
        let resolver = (needs_resolver && !settings.resolver.is_empty()).then(|| {
            settings
                .resolver
                .iter()
                .map(|ip| match ip {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        Context {
            generator_version: env!("CARGO_PKG_VERSION"),
            local: settings.local,
            http_port: settings.http_port,
            https_port: settings.https_port,
            https_port_suffix: https_suffix(settings),
            http_port_suffix: http_suffix(settings),
            backend_ca: &settings.backend_ca,
            fastcgi: table.upstreams.iter().any(|u| u.protocol.proto.module() == Module::Fastcgi),
            http2_on: settings.nginx_version.has_http2_directive(),
            acme_webroot: &settings.acme_webroot,
            log_dir: &settings.log_dir,
            per_domain_error_logs: table.sites.len() <= settings.error_logs_max,
            resolver,
            auth_cache: logs.auth_cache.then(|| {
                let generation = settings.auth_cache.as_deref().unwrap_or_default();
                if generation.is_empty() {
                    "0".to_string()
                } else {
                    generation.to_string()
                }
            }),
            dollar: policies().any(|(_, l)| {
                l.policy
                    .request_headers
                    .iter()
                    .chain(&l.policy.response_headers)
                    .any(|h| h.value.as_str().contains('$'))
                    || forward(l).is_some_and(|f| {
                        f.url.as_str().contains('$') || f.signin.as_ref().is_some_and(|s| s.as_str().contains('$'))
                    })
            }) || table.sites.iter().any(
                |s| matches!(&s.redirect, Some(r) if matches!(&r.to, RedirectTo::Url(u) if u.as_str().contains('$'))),
            ),
            listen_http: listen_addresses(settings, settings.http_port),
            listen_https: listen_addresses(settings, settings.https_port),
            http_listen: directives(
                listen_addresses(settings, settings.http_port).iter().map(|a| format!("listen {a};")),
            ),
            https_listen: directives(listen_addresses(settings, settings.https_port).iter().map(|a| {
                format!("listen {a} ssl{};", if settings.nginx_version.has_http2_directive() { "" } else { " http2" })
            })),
            error_handling: error_handling(&settings.error_pages),
            access_logs: access_logs(settings, logs, true, None),
            redirect_access_logs: access_logs(settings, logs, false, None),
            access_log_format: crate::insight::ACCESS_LOG_FORMAT,
            redirect_log_format: crate::insight::REDIRECT_LOG_FORMAT,
            insight: settings
                .insight_log
                .as_ref()
                .map(|f| InsightCtx { file: f.0.clone(), log_format: crate::insight::INSIGHT_LOG_FORMAT }),
            error_pages_in_location: error_page_directives(&settings.error_pages).join("\n        "),
            real_ip: settings.real_ip.as_ref().map(|r| RealIpCtx {
                trusted: r.trusted.iter().map(ToString::to_string).collect(),
                header: r.header.to_string(),
            }),
            error_pages: ErrorPagesCtx { builtin: error_codes(&settings.error_pages, false) },
            rate_zones,
            rate_keys,
            hash: hash_sizes(table),
            upstreams,
        }
    }
}

/// How each site becomes its [`SiteCtx`] (a site's upstreams are found by id).
struct SiteCtxs<'a> {
    by_id: std::collections::HashMap<&'a str, &'a crate::routes::Upstream>,
    settings: &'a RenderSettings,
    logs: Logs,
    /// The servers' `error_page`s, which a location with an `error_page` of its own repeats.
    error_pages_in_location: String,
}

impl<'a> SiteCtxs<'a> {
    fn new(table: &'a RouteTable, settings: &'a RenderSettings, logs: Logs) -> Self {
        SiteCtxs {
            by_id: table.upstreams.iter().map(|u| (u.id.as_str(), u)).collect(),
            settings,
            logs,
            error_pages_in_location: error_page_directives(&settings.error_pages).join("\n        "),
        }
    }

    fn of(&self, site: &crate::routes::Site) -> SiteCtx {
        let (by_id, settings) = (&self.by_id, self.settings);
        // The locations are served over HTTPS (the HSTS header is repeated where one adds headers).
        let https = !settings.local && site.tls == crate::routes::TlsMode::Auto;
        let site_hsts = site.hsts.header_value();
        let hsts = site_hsts.as_deref().filter(|_| https);
        let domain = site.domain.to_string();
        SiteCtx {
            tls: site.tls == crate::routes::TlsMode::Auto,
            cert_dir: crate::certs::layout::live_dir_text(&settings.certs_dir.0, &site.domain),
            access_logs: self
                .logs
                .held
                .then(|| access_logs(settings, &self.logs, true, Some(&site.domain.file_stem()))),
            redirect_access_logs: self
                .logs
                .held
                .then(|| access_logs(settings, &self.logs, false, Some(&site.domain.file_stem()))),
            log_name: site.domain.file_stem(),
            has_root: site.locations.iter().any(|l| l.path.as_str() == "/"),
            health: site.health.path().map(str::to_string),
            hsts: site_hsts.clone(),
            redirect: site.redirect.as_ref().map(|r| {
                let https = !settings.local && site.tls == crate::routes::TlsMode::Auto;
                let base = match &r.to {
                    RedirectTo::Url(url) => url.to_string(),
                    RedirectTo::Canonical(name) if https => format!("https://{name}{}", https_suffix(settings)),
                    RedirectTo::Canonical(name) => format!("http://{name}{}", http_suffix(settings)),
                };
                RedirectCtx { code: r.code.get(), location: r.location(&base) }
            }),
            locations: site
                .locations
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let upstream = l.upstream.as_deref().and_then(|id| by_id.get(id).copied());
                    let backend = upstream
                        .filter(|u| matches!(&u.backends[..], [b] if matches!(b.host, Host::Name(_))))
                        .map(|u| u.backends[0].address());
                    let protocol = upstream.map(|u| u.protocol.clone()).unwrap_or_default();
                    let target = match (&backend, &l.upstream) {
                        (Some(_), _) => "$smartproxy_backend".to_string(),
                        (None, Some(id)) => id.clone(),
                        (None, None) => String::new(),
                    };
                    let static_host = upstream.and_then(|u| match &u.backends[..] {
                        [b, ..] if u.namespace == crate::routes::Namespace::Static => Some(&b.host),
                        _ => None,
                    });
                    let tls = protocol.proto.is_tls().then(|| BackendTlsCtx {
                        name: match (&protocol.verify, static_host) {
                            (BackendVerify::Name(name), _) => name.to_string(),
                            (_, Some(Host::Name(host))) => host.clone(),
                            _ => "$host".to_string(),
                        },
                        verify: protocol.verify != BackendVerify::Off,
                    });
                    let mut ctx = LocationCtx {
                        path: l.path.to_string(),
                        upstream: if backend.is_some() { None } else { l.upstream.clone() },
                        backend,
                        module: protocol.proto.module().prefix(),
                        pass: format!("{}{target}", protocol.proto.scheme()),
                        tls,
                        fastcgi_root: (protocol.proto == Proto::Fastcgi).then(|| {
                            let root = protocol.fastcgi_root.as_ref().map_or(FASTCGI_ROOT, |p| p.as_str());
                            // `/app/` and `/app` alike; `/` stays (`//index.php` is the same file).
                            match root.trim_end_matches('/') {
                                "" => "/".to_string(),
                                trimmed => trimmed.to_string(),
                            }
                        }),
                        allow: l.allow.iter().map(ToString::to_string).collect(),
                        policy: None,
                    };
                    if !l.policy.is_default() {
                        let at = At {
                            domain: &site.domain,
                            path: l.path.as_str(),
                            index: i + 1,
                            auth_dir: &settings.auth_dir,
                            auth_cache: self.logs.auth_cache,
                        };
                        let mut policy = PolicyCtx::of(&l.policy, &at);
                        policy.directives = policy.write_directives(&ctx, &domain, hsts, &self.error_pages_in_location);
                        ctx.policy = Some(Shared::new(policy));
                    }
                    ctx
                })
                .collect(),
            // Last: the locations borrow it.
            domain,
        }
    }
}

/// How a render writes the access logs (from the settings and what the template defines).
#[derive(Debug, Clone, Copy)]
struct Logs {
    /// Each domain's access log is a file nginx holds open (see [`access_logs`]).
    held: bool,
    /// The agent reads those files for insight: no insight line besides.
    insight_from_files: bool,
    /// The format of the server that redirects to HTTPS.
    redirect_format: &'static str,
    /// Not a log, but chosen the same way: `AUTH_CACHE` is on, some route has basic auth, and
    /// the template defines the cache (the built-in one, or one that renders `auth_cache`).
    auth_cache: bool,
}

/// A domain's JSON access log when nginx holds it open.
fn held_log_path(settings: &RenderSettings, stem: &str) -> PathBuf {
    Path::new(&settings.log_dir.0).join(format!("{stem}.access.log"))
}

/// A server's `access_log`s: the domain's JSON file (`ACCESS_LOG_FILES`; `logger-json` where it
/// serves the domain, `logger-json-redirect` where it only redirects to HTTPS) and, where it
/// serves the domain, the agent's file (`INSIGHT`, buffered: nginx writes it once per 64 KiB or
/// second; a server that only redirects would count each visit twice); `off` without either.
/// The agent's file is left out when the agent reads the JSON files instead
/// ([`Logs::insight_from_files`]): one line per request instead of two.
///
/// The JSON file is named by `held`, the domain's file stem, when nginx may hold one file open per
/// domain (as many domains as per-domain error logs, `ERROR_LOGS_MAX`): then it is buffered too
/// (a `write` per 8 KiB or second instead of one per request: 13 % more requests a second through
/// one worker here). Past that, its path holds `$smartproxy_log`, so that 10,000 domains do not
/// hold 10,000 open files; nginx cannot buffer such a log and writes each line as it comes.
fn access_logs(settings: &RenderSettings, logs: &Logs, serves: bool, held: Option<&str>) -> String {
    let mut lines = Vec::new();
    let format = if serves { "logger-json" } else { logs.redirect_format };
    if settings.access_log_files {
        lines.push(match held {
            Some(stem) => {
                format!("access_log {} {format} buffer=8k flush=1s;", held_log_path(settings, stem).display())
            }
            None => format!("access_log {}/$smartproxy_log.access.log {format};", settings.log_dir.0),
        });
    }
    // Reading the files, the agent reads every server's lines there (held or through
    // `$smartproxy_log`, the same files).
    if let (Some(file), true, false) = (&settings.insight_log, serves, logs.insight_from_files) {
        lines.push(format!("access_log {} smartproxy_insight buffer=64k flush=1s;", file.0));
    }
    if lines.is_empty() {
        lines.push("access_log off;".to_string());
    }
    directives(lines.into_iter())
}

/// Lines of directives as one string, each after the first indented for a server block.
fn directives(lines: impl Iterator<Item = String>) -> String {
    lines.collect::<Vec<_>>().join("\n    ")
}

/// The `error_page`s of a server and the locations they go to: the built-in text (the
/// `$smartproxy_error_text` map) and the files of `ERROR_PAGES_DIR`.
fn error_handling(pages: &ErrorPages) -> String {
    let mut lines = error_page_directives(pages);
    if !error_codes(pages, false).is_empty() {
        lines.push("location @smartproxy_error {\n        default_type text/plain;\n        return 200 $smartproxy_error_text;\n    }".to_string());
    }
    if let Some(dir) = &pages.dir {
        lines.push(format!("location ^~ /.smartproxy-error/ {{\n        internal;\n        alias {}/;\n    }}", dir.0));
    }
    directives(lines.into_iter())
}

/// The `error_page` directives of a server (see [`error_handling`]).
fn error_page_directives(pages: &ErrorPages) -> Vec<String> {
    let mut lines = Vec::new();
    let builtin = error_codes(pages, false);
    if !builtin.is_empty() {
        lines.push(format!("error_page {builtin} @smartproxy_error;"));
    }
    if pages.dir.is_some() {
        lines.push(format!("error_page {} /.smartproxy-error/$status.html;", error_codes(pages, true)));
    }
    lines
}

/// The error codes with a file in `ERROR_PAGES_DIR` (`file`), or without, space-separated.
fn error_codes(pages: &ErrorPages, file: bool) -> String {
    let codes = ERROR_CODES.iter().filter(|c| pages.files.contains(c) == file);
    codes.map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// A server's `listen` addresses for `port`: IPv4 (nginx's `80` is `0.0.0.0:80`) and, with IPv6,
/// `[::]:80` (IPv6 only: nginx sets `ipv6only`); each expecting the PROXY protocol header when
/// that is where client addresses come from.
fn listen_addresses(settings: &RenderSettings, port: u16) -> Vec<String> {
    let suffix = if settings.real_ip.as_ref().is_some_and(RealIp::proxy_protocol) { " proxy_protocol" } else { "" };
    let mut out = vec![format!("{port}{suffix}")];
    if settings.ipv6 {
        out.push(format!("[::]:{port}{suffix}"));
    }
    out
}

/// `:8443` when HTTPS is not on 443.
fn https_suffix(settings: &RenderSettings) -> String {
    if settings.https_port == 443 {
        String::new()
    } else {
        format!(":{}", settings.https_port)
    }
}

/// `:8080` when HTTP is not on 80.
fn http_suffix(settings: &RenderSettings) -> String {
    if settings.http_port == 80 {
        String::new()
    } else {
        format!(":{}", settings.http_port)
    }
}

/// `server_names_hash_*` large enough for every name: a bucket must hold the longest name (plus
/// nginx's per-entry overhead), and the table must have room for all names.
fn hash_sizes(table: &RouteTable) -> HashSizes {
    let longest = table.sites.iter().map(|s| s.domain.as_str().len()).max().unwrap_or(0);
    let bucket_size = (longest + 32).next_power_of_two().max(64);
    let max_size = (table.sites.len() * 4).next_power_of_two().max(512);
    HashSizes { bucket_size, max_size }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings with short paths, the agent's insight file on and a resolver.
    pub(crate) fn test_settings(local: bool) -> RenderSettings {
        RenderSettings {
            local,
            http_port: 80,
            https_port: 443,
            certs_dir: ConfigPath("/c".into()),
            acme_webroot: ConfigPath("/w".into()),
            log_dir: ConfigPath("/l".into()),
            error_logs_max: 1000,
            auth_dir: ConfigPath("/a".into()),
            insight_log: Some(ConfigPath("/i.log".into())),
            access_log_files: true,
            backend_ca: ConfigPath::parse("BACKEND_CA", std::path::Path::new(BACKEND_CA)).unwrap(),
            insight_from_access_logs: false,
            auth_cache: None,
            nginx_version: NginxVersion::ASSUMED,
            resolver: vec!["127.0.0.11".parse().unwrap()],
            ipv6: true,
            real_ip: None,
            error_pages: ErrorPages::default(),
        }
    }

    #[test]
    fn versions() {
        assert_eq!(NginxVersion::parse("nginx version: nginx/1.22.1\n"), Some(NginxVersion(1, 22, 1)));
        assert_eq!(NginxVersion::parse("1.25"), Some(NginxVersion(1, 25, 0)));
        assert!(!NginxVersion(1, 25, 0).has_http2_directive());
        assert!(NginxVersion(1, 25, 1).has_http2_directive());
        assert_eq!(NginxVersion::parse("banana"), None);
    }

    #[test]
    fn config_paths() {
        assert!(ConfigPath::parse("CERTS_DIR", Path::new("/etc/letsencrypt")).is_ok());
        assert!(ConfigPath::parse("CERTS_DIR", Path::new("relative")).is_err());
        assert!(ConfigPath::parse("CERTS_DIR", Path::new("/etc/a b")).is_err());
        assert!(ConfigPath::parse("CERTS_DIR", Path::new("/etc/a;b")).is_err());
    }

    /// A custom template that never mentions `pass` would proxy a gRPC app as HTTP, and one without
    /// `redirect` would serve a redirecting domain as an empty site: those domains are left out,
    /// with an error naming the key.
    #[test]
    fn a_custom_template_without_pass_or_redirect_leaves_those_domains_out() {
        use crate::sources::labels::{routes, Container, LabelSettings, NetworkAddress};
        let c = |name: &str, labels: &[(&str, &str)]| Container {
            id: name.into(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            networks: [("proxy".to_string(), NetworkAddress { ipv4: Some([172, 18, 0, 2].into()), ipv6: None })].into(),
            running: true,
            ..Container::default()
        };
        let settings = LabelSettings { prefix: "sp".into(), nginx_networks: None };
        let table = RouteTable::build(vec![routes(
            &[
                c("grpc", &[("sp.domains", "grpc.com"), ("sp.proto", "grpc")]),
                c("moved", &[("sp.domains", "moved.com"), ("sp.redirect", "https://new.com")]),
                c("www", &[("sp.domains", "shop.com"), ("sp.www", "to-apex")]),
                c("plain", &[("sp.domains", "plain.com")]),
            ],
            &settings,
        )]);
        let old =
            Renderer::from_source("old.j2".into(), "{% for s in sites %}{{ s.domain }} {% endfor %}".into()).unwrap();
        let fitted = old.fit(table);
        let left: Vec<&str> = fitted.sites.iter().map(|s| s.domain.as_str()).collect();
        assert_eq!(left, ["plain.com", "shop.com"], "{:#?}", fitted.diagnostics);
        let messages: Vec<String> = fitted.diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            messages.iter().any(|m| m.contains("proto is set, but the template old.j2 never uses `pass`")),
            "{messages:?}"
        );
        assert!(messages.iter().any(|m| m.contains("redirect is set") && m.contains("moved.com")), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("www is set") && m.contains("www.shop.com")), "{messages:?}");
    }

    /// A template that cannot render a route's auth leaves the route out (never served without
    /// its login); the other routes are served.
    #[test]
    fn a_template_without_the_auth_fields_leaves_auth_routes_out() {
        use crate::routes::access::{Auth, BasicUsers, Users};
        let mut table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com,b.com"), None)]);
        let users = Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
        let auth = Auth { method: AuthMethod::Basic(BasicUsers::Inline(users)), bypass: vec![] };
        table.sites[0].locations[0].policy.auth = Some(auth);
        // Written before `directives`, and before basic auth: the policy's fields one by one.
        let old = BUILTIN_TEMPLATE
            .replace("{{ loc.policy.directives }}", "        proxy_read_timeout {{ loc.policy.timeout }};");
        let old = Renderer::from_source("old.j2".into(), old).unwrap();
        let fitted = old.fit(table.clone());
        assert_eq!(fitted.sites.iter().map(|s| s.domain.as_str()).collect::<Vec<_>>(), ["b.com"]);
        let message = &fitted.diagnostics[0].message;
        assert!(
            message.starts_with("auth=basic is set, but the template old.j2 never uses `auth.basic_file`"),
            "{message}"
        );
        assert_eq!(Renderer::builtin().fit(table).sites.len(), 2);
    }

    /// A service given by host name is resolved per request through `$smartproxy_backend`: its
    /// `set` comes before the strip-prefix `rewrite … break`, which ends the rewrite directives
    /// after it (nginx then answered 500, "invalid URL prefix"), in a bypass location too.
    #[test]
    fn the_backend_is_set_before_the_strip_prefix_rewrite() {
        use crate::routes::access::{Auth, BasicUsers, Users};
        let mut table =
            RouteTable::build(vec![crate::sources::env::parse(Some("a.com:files"), Some("files:files.internal:8080"))]);
        let location = &mut table.sites[0].locations[0];
        location.path = crate::routes::PathPrefix::parse("/api/").unwrap();
        location.policy.strip_prefix = Some(true);
        let users = Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
        let bypass = vec![crate::routes::PathPrefix::parse("/api/public/").unwrap()];
        location.policy.auth = Some(Auth { method: AuthMethod::Basic(BasicUsers::Inline(users)), bypass });
        let out = Renderer::builtin().render(&table, &test_settings(true)).unwrap();
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let at = |prefix: &str| -> Vec<usize> {
            lines.iter().enumerate().filter(|(_, l)| l.starts_with(prefix)).map(|(i, _)| i).collect()
        };
        let (sets, rewrites) = (at("set $smartproxy_backend "), at("rewrite ^/api"));
        assert_eq!((sets.len(), rewrites.len()), (2, 2), "the route and its bypass location:\n{out}");
        assert!(sets[0] < rewrites[0] && sets[1] < rewrites[1], "{out}");
    }

    /// `AUTH_CACHE` reaches a custom template's `directives` only when it defines the cache (it
    /// mentions `auth_cache` and `auth.cache`): otherwise its basic auth checks every request.
    #[test]
    fn a_custom_template_without_the_cache_checks_every_login() {
        use crate::routes::access::{Auth, BasicUsers, Users};
        let mut table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com"), None)]);
        let users = Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
        let auth = Auth { method: AuthMethod::Basic(BasicUsers::Inline(users)), bypass: vec![] };
        table.sites[0].locations[0].policy.auth = Some(auth);
        let settings = RenderSettings { auth_cache: Some("ab".into()), ..test_settings(true) };
        let loops = "{% for site in sites %}{% for loc in site.locations %}{{ loc.policy.directives }}\n\
                     {{ loc.policy.auth.cache }}{% endfor %}{% endfor %}";
        let old = Renderer::from_source("old.j2".into(), loops.replace("{{ loc.policy.auth.cache }}", "")).unwrap();
        let out = old.render(&table, &settings).unwrap();
        assert!(out.contains("auth_basic \"a.com\";") && !out.contains("lua"), "{out}");
        let new = Renderer::from_source("new.j2".into(), format!("{{{{ auth_cache }}}}\n{loops}")).unwrap();
        let out = new.render(&table, &settings).unwrap();
        assert!(out.starts_with("ab\n"), "{out}");
        assert!(out.contains("auth_basic $smartproxy_auth_realm;") && out.contains("smartproxy_auth_log()"), "{out}");
        assert!(
            out.ends_with(
                &BasicUsers::Inline(Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap()).file_name()
            ),
            "{out}"
        );
        let builtin = Renderer::builtin().render(&table, &RenderSettings { auth_cache: None, ..settings }).unwrap();
        assert!(!builtin.contains("lua"), "off: no Lua");
    }

    /// nginx reads the realm `off` as basic auth turned off: a domain named `off` gets `off.`.
    #[test]
    fn a_domain_named_off_keeps_its_basic_auth() {
        use crate::routes::access::{Auth, BasicUsers, Users};
        let mut table = RouteTable::build(vec![crate::sources::env::parse(Some("off:app"), Some("app:10.0.0.1:80"))]);
        assert_eq!(table.sites.len(), 1, "{:?}", table.diagnostics);
        let users = Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
        let auth = Auth { method: AuthMethod::Basic(BasicUsers::Inline(users)), bypass: vec![] };
        table.sites[0].locations[0].policy.auth = Some(auth);
        let out = Renderer::builtin().render(&table, &test_settings(true)).unwrap();
        assert!(out.contains("auth_basic \"off.\";") && !out.contains("auth_basic \"off\";"), "{out}");
    }

    /// A custom template sees every field of a site, a location, a policy and its auth, in their
    /// declared order, as it saw the serialized structs: the contexts are objects now
    /// (`converted!`, `fields!`), which enumerate their fields themselves.
    #[test]
    fn a_custom_template_sees_every_context_field_in_order() {
        use crate::routes::access::{Auth, BasicUsers, Users};
        let mut table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com"), None)]);
        let users = Users::parse("alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/").unwrap();
        let auth = Auth { method: AuthMethod::Basic(BasicUsers::Inline(users)), bypass: vec![] };
        table.sites[0].locations[0].policy.auth = Some(auth);
        let template = "{% for site in sites %}{{ site|list|join(',') }}\n{% for loc in site.locations %}\
                        {{ loc|list|join(',') }}\n{{ loc.policy|list|join(',') }}\n{{ loc.policy|length }} \
                        {{ loc.policy.auth|list|join(',') }} {{ loc.policy.timeout }} {{ loc.policy.buffering }} \
                        {{ loc.policy.rate }} {{ loc.policy.auth.basic_file is string }} {{ site.domain }} \
                        {{ loc.path }}\n\
                        {% for o in [site, loc, loc.policy, loc.policy.auth] %}{% for k in o %}\
                        {{ o[k] is defined }}{% endfor %}|{% endfor %}\
                        {% endfor %}{% endfor %}";
        let custom = Renderer::from_source("fields.j2".into(), template.to_string()).unwrap();
        let out = custom.render(&table, &test_settings(true)).unwrap();
        assert_eq!(
            out,
            format!(
                "domain,tls,cert_dir,access_logs,redirect_access_logs,log_name,has_root,health,hsts,redirect,locations\n\
             path,upstream,backend,module,pass,tls,fastcgi_root,allow,policy\n\
             strip_regex,max_body,timeout,buffering,request_headers,response_headers,adds_headers,error_pages,rate,\
             auth,directives\n\
             11 basic_file,cache,check,url,signin,headers,bypass 60s True None True a.com /\n\
             {}|{}|{}|{}|",
            "True".repeat(11),
            "True".repeat(9),
            "True".repeat(11),
            "True".repeat(7)
            )
        );
    }

    /// With the agent reading the domains' access logs (nginx its child), nginx writes one line
    /// per request: the domain's file, in the format that carries insight's figures; the redirect
    /// to HTTPS writes its own format. A template written before those formats keeps the second
    /// line, and its own `logger-json` everywhere; so do 1,001 domains (no file held open).
    #[test]
    fn insight_reads_the_access_logs_when_nginx_is_the_agents_own() {
        let table = RouteTable::build(vec![crate::sources::env::parse(Some("a.com,b.com"), None)]);
        let fold = RenderSettings { local: false, insight_from_access_logs: true, ..test_settings(false) };
        let builtin = Renderer::builtin();
        let config = builtin.render(&table, &fold).unwrap();
        assert!(!config.contains("smartproxy_insight buffer"), "{config}");
        assert!(config.contains("access_log /l/a.com.access.log logger-json buffer=8k flush=1s;"), "{config}");
        assert!(config.contains("access_log /l/a.com.access.log logger-json-redirect buffer=8k flush=1s;"), "{config}");
        assert!(config.contains(&format!("log_format logger-json escape=json {};", crate::insight::ACCESS_LOG_FORMAT)));
        let files = builtin.insight_access_logs(&table, &fold);
        assert_eq!(
            files,
            [
                ("a.com".to_string(), PathBuf::from("/l/a.com.access.log")),
                ("b.com".into(), "/l/b.com.access.log".into())
            ]
        );
        // Not the agent's own nginx: the insight file, as before.
        let companion = RenderSettings { insight_from_access_logs: false, ..fold.clone() };
        assert!(builtin
            .render(&table, &companion)
            .unwrap()
            .contains("access_log /i.log smartproxy_insight buffer=64k flush=1s;"));
        assert!(builtin.insight_access_logs(&table, &companion).is_empty());
        let many = RenderSettings { error_logs_max: 1, ..fold.clone() };
        assert!(builtin.render(&table, &many).unwrap().contains("access_log /i.log smartproxy_insight"));
        assert!(builtin.insight_access_logs(&table, &many).is_empty());
        // A template that writes the formats but the `$smartproxy_log` lines (the same files):
        // no second line there either.
        let global = BUILTIN_TEMPLATE
            .replace("{{ site.access_logs or access_logs }}", "{{ access_logs }}")
            .replace("{{ site.redirect_access_logs or redirect_access_logs }}", "{{ redirect_access_logs }}");
        let global = Renderer::from_source("global.j2".into(), global).unwrap();
        let config = global.render(&table, &fold).unwrap();
        assert!(!config.contains("smartproxy_insight buffer"), "{config}");
        assert!(config.contains("access_log /l/$smartproxy_log.access.log logger-json-redirect;"), "{config}");
        assert_eq!(global.insight_access_logs(&table, &fold), files);
        let old_source = BUILTIN_TEMPLATE
            .replace("{{ access_log_format }}", crate::insight::REDIRECT_LOG_FORMAT)
            .replace("log_format logger-json-redirect escape=json {{ redirect_log_format }};", "");
        let old = Renderer::from_source("old.j2".into(), old_source).unwrap();
        let config = old.render(&table, &fold).unwrap();
        assert!(config.contains("access_log /i.log smartproxy_insight buffer=64k flush=1s;"), "{config}");
        assert!(!config.contains("logger-json-redirect"), "{config}");
        assert!(old.insight_access_logs(&table, &fold).is_empty());
    }

    #[test]
    fn template_errors_name_file_and_line() {
        let err = Renderer::from_source("custom.j2".into(), "ok\n{% if %}".into()).err().unwrap();
        assert!(err.to_string().starts_with("template custom.j2, line 2"), "{err}");
        let r = Renderer::from_source("custom.j2".into(), "a\nb {{ nope }}".into()).unwrap();
        let err = r
            .render(
                &RouteTable::default(),
                &RenderSettings { resolver: vec![], insight_log: None, ..test_settings(true) },
            )
            .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    /// The built-in template rendered cut in two, its sites in shares on several threads, is
    /// the same text as the template rendered whole (here as a custom template), in both modes,
    /// with every kind of route and more sites than one share holds.
    #[test]
    fn the_cut_template_renders_what_the_whole_one_does() {
        use crate::sources::labels::{routes, Container, LabelSettings, NetworkAddress};
        let kinds: [&[(&str, &str)]; 8] = [
            &[],
            &[("sp.proto", "grpc"), ("sp.max-body", "10g"), ("sp.timeout", "5m")],
            &[("sp.redirect", "https://new.example/$x"), ("sp.redirect.code", "308")],
            &[("sp.www", "to-www"), ("sp.hsts", "63072000,includeSubDomains")],
            &[("sp.rate", "10r/s"), ("sp.rate.burst", "5"), ("sp.headers.response.X-A", "a \"b\"; $c")],
            &[("sp.auth", "forward"), ("sp.auth.url", "http://auth:9091/check"), ("sp.auth.bypass", "/p/")],
            &[("sp.proto", "fastcgi"), ("sp.strip-prefix", "true"), ("sp.path", "/app")],
            &[("sp.tls", "off"), ("sp.buffering", "off"), ("sp.error-pages", "off"), ("sp.health", "off")],
        ];
        let containers: Vec<Container> = (0..1200)
            .map(|i| {
                let mut labels: Vec<(String, String)> =
                    kinds[i % kinds.len()].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                labels.push(("sp.domains".into(), format!("site{i}.example.com")));
                Container {
                    id: format!("c{i}"),
                    name: format!("c{i}"),
                    labels: labels.into_iter().collect(),
                    networks: [(
                        "proxy".to_string(),
                        NetworkAddress {
                            ipv4: Some([172, 18, (i / 250) as u8, (i % 250) as u8 + 2].into()),
                            ipv6: None,
                        },
                    )]
                    .into(),
                    running: true,
                    ..Container::default()
                }
            })
            .collect();
        let table =
            RouteTable::build(vec![routes(&containers, &LabelSettings { prefix: "sp".into(), nginx_networks: None })]);
        assert!(
            table.diagnostics.iter().all(|d| d.severity != crate::routes::Severity::Error),
            "{:?}",
            table.diagnostics
        );
        assert!(table.sites.len() > 1200, "{}", table.sites.len());
        let whole =
            Renderer::from_source("whole.j2".into(), format!("{BUILTIN_TEMPLATE}{{# rendered whole #}}")).unwrap();
        assert!(!whole.split && Renderer::builtin().split);
        for local in [false, true] {
            let settings = test_settings(local);
            let cut = Renderer::builtin().render(&table, &settings).unwrap();
            let expected = whole.render(&table, &settings).unwrap();
            let at = cut.bytes().zip(expected.bytes()).take_while(|(a, b)| a == b).count();
            let around = |s: &str| s[at.saturating_sub(200)..(at + 200).min(s.len())].to_string();
            assert!(
                cut == expected,
                "local: {local}: they differ at byte {at}:\n{}\n--- whole:\n{}",
                around(&cut),
                around(&expected)
            );
            assert!(cut.contains("site1199.example.com") && cut.contains("grpc_pass"), "{}", &cut[..2000]);
        }
    }
}

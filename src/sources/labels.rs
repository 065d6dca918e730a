//! Container labels → routes. Pure: the Docker client turns daemon objects into [`Container`]s
//! (see `docker.rs`) and this module never talks to the daemon.
//!
//! The keys (prefix `smart-proxy.` by default) are declared in `label_schema.rs`: per route
//! (`domains`, `port`, ...; named routes `<route>.<key>`, `<route>` is `[a-z0-9-]+`, take the
//! container-wide values as defaults) and per container (`enable`, and `nginx=true`, which marks
//! the nginx container itself).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::label_schema::{self, LabelKey, Lookup, Scope, Value};
use super::swarm::SwarmOrigin;

use crate::routes::access::{self, Auth, AuthKeys, AuthMethod, RateKeys, RateLimit};
use crate::routes::policy;

use crate::routes::{
    grammar::{parse_bool, show},
    Backend, BackendState, Diagnostic, Host, Namespace, NetworkChoice, Origin, PathPrefix, Policy, Port, RouteDef,
    ServiceDef, ServiceKey, ServiceName, SourceOutput,
};

/// What the label builder needs to know about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Exposed TCP ports (from the image's EXPOSE or `--expose`), sorted.
    pub exposed_ports: Vec<u16>,
    pub networks: BTreeMap<String, NetworkAddress>,
    pub health: Option<Health>,
    /// A stopped container keeps its routes with no live server, so its domains answer 502 (not
    /// the default server's 503) until it is removed.
    pub running: bool,
    /// Set on the containers a Swarm service turns into (`swarm.rs`): its name is the default
    /// service, and `check` says which routing mode was used and why.
    pub swarm: Option<SwarmOrigin>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkAddress {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// Settings the builder needs.
#[derive(Debug, Clone)]
pub struct LabelSettings {
    /// Without the trailing dot, e.g. `smart-proxy`.
    pub prefix: String,
    /// The networks the nginx container is on, when known.
    pub nginx_networks: Option<BTreeSet<String>>,
}

impl Container {
    /// True when the container carries any label with the prefix (so it is meant to be routed).
    pub fn has_prefix_labels(&self, prefix: &str) -> bool {
        let dotted = format!("{prefix}.");
        self.labels.keys().any(|k| k.starts_with(&dotted))
    }

    /// True when the container is labelled `<prefix>.nginx=true`.
    pub fn is_nginx(&self, prefix: &str) -> bool {
        self.labels.get(&format!("{prefix}.nginx")).is_some_and(|v| parse_bool(v) == Ok(true))
    }
}

/// Builds routes from all containers, in container-name order. A container with any bad label is
/// reported and skipped as a whole.
pub fn routes(containers: &[Container], settings: &LabelSettings) -> SourceOutput {
    let mut sorted: Vec<&Container> = containers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let mut out = SourceOutput::default();
    for container in sorted {
        match container_routes(container, settings) {
            Ok(Some(part)) => out.extend(part),
            Ok(None) => {}
            Err(diagnostics) => out.diagnostics.extend(diagnostics),
        }
    }
    out
}

/// The labels of one route, container-wide defaults already applied.
#[derive(Default, Clone)]
struct RouteLabels<'a> {
    values: BTreeMap<&'static str, (&'a str, String)>, // key → (value, full label name)
    /// Keys with a name segment (`headers.request.<Name>`): (key, name in lowercase) → (name as
    /// written, value, full label name). A named route's own entry replaces the container-wide one.
    with_name: BTreeMap<(&'static str, String), (&'a str, &'a str, String)>,
    /// The keys a named route took from the container's labels.
    inherited: BTreeSet<&'static str>,
}

fn container_routes(c: &Container, settings: &LabelSettings) -> Result<Option<SourceOutput>, Vec<Diagnostic>> {
    let dotted = format!("{}.", settings.prefix);
    let at = |label: &str| Origin::Container { name: c.name.clone(), label: Some(label.to_string()) };
    let mut errors = Vec::new();

    // Split labels into container-wide ones and named routes.
    let mut wide = RouteLabels::default();
    let mut named: BTreeMap<&str, RouteLabels> = BTreeMap::new();
    for (label, value) in &c.labels {
        let Some(rest) = label.strip_prefix(&dotted) else { continue };
        match label_schema::lookup(rest) {
            Lookup::Key(k) => {
                wide.values.insert(k.key, (value.as_str(), label.clone()));
            }
            Lookup::Named { route, key } => {
                named.entry(route).or_default().values.insert(key.key, (value.as_str(), label.clone()));
            }
            Lookup::WithName { route, key, name } => {
                let labels = match route {
                    None => &mut wide,
                    Some(route) => named.entry(route).or_default(),
                };
                labels.with_name.insert((key.key, name.to_ascii_lowercase()), (name, value.as_str(), label.clone()));
            }
            Lookup::BadRoute(route) => errors.push(Diagnostic::error(
                at(label),
                match label_schema::reserved_word(route) {
                    Some(word) => format!(
                        "route name {word:?} is reserved for the keys {}; choose another route name",
                        label_schema::KEYS
                            .iter()
                            .filter(|k| k.key.starts_with(&format!("{word}.")))
                            .map(|k| format!("{}.{}", settings.prefix, k.key))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => {
                        format!("route name {:?} is not allowed; route names use only a-z, 0-9 and '-'", show(route))
                    }
                },
            )),
            Lookup::Unknown => errors.push(Diagnostic::error(
                at(label),
                format!(
                    "unknown label; known labels: {p}.{{{r}}}, {p}.<route>.{{{r}}} and {p}.{{{}}}",
                    label_schema::container_keys().collect::<Vec<_>>().join(","),
                    r = label_schema::route_keys().collect::<Vec<_>>().join(","),
                    p = settings.prefix
                ),
            )),
        }
    }
    // The container keys, parsed by their schema kinds: `enable=false` ends here, and a bad value
    // is reported even on the nginx container.
    for key in label_schema::KEYS.iter().filter(|k| k.scope == Scope::Container) {
        let Some((value, label)) = wide.values.get(key.key) else { continue };
        match key.kind.parse(value) {
            Ok(Value::Bool(false)) if key.key == "enable" => return Ok(None),
            Ok(_) => {}
            Err(messages) => errors.extend(messages.into_iter().map(|m| Diagnostic::error(at(label), m))),
        }
    }
    if c.is_nginx(&settings.prefix) {
        return Ok(None);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !wide.values.contains_key("domains") && named.is_empty() {
        if !wide.with_name.is_empty()
            || wide.values.keys().any(|k| label_schema::get(k).is_some_and(|k| k.scope == Scope::Route))
        {
            return Err(vec![Diagnostic::error(
                Origin::Container { name: c.name.clone(), label: None },
                format!(
                    "has {p}.* labels but no {p}.domains; add {p}.domains=example.com (or {p}.enable=false)",
                    p = settings.prefix
                ),
            )]);
        }
        return Ok(None);
    }

    // A named route's service is `<service>-<route>`: the container's service label when it is
    // set (so replicas sharing it share their named routes' upstreams too), else the default.
    let base_service = match wide.values.get("service") {
        Some((value, _)) if ServiceName::parse(value).is_ok() => value.trim().to_string(),
        _ => base_service_name(c),
    };
    let mut routes: Vec<(Option<&str>, RouteLabels)> = Vec::new();
    if wide.values.contains_key("domains") {
        routes.push((None, wide.clone()));
    }
    for (name, own) in named {
        let mut values: BTreeMap<&'static str, (&str, String)> = wide
            .values
            .iter()
            .filter(|(k, _)| label_schema::get(k).is_some_and(|k| k.inherited))
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for group in label_schema::WHOLE.iter().filter(|g| own.values.contains_key(*g)) {
            values.retain(|k, _| !k.strip_prefix(group).is_some_and(|rest| rest.starts_with('.')));
        }
        let inherited = values.keys().filter(|k| !own.values.contains_key(*k)).copied().collect();
        values.extend(own.values);
        // Headers are inherited too (every key with a name segment is a route key).
        let mut with_name = wide.with_name.clone();
        with_name.extend(own.with_name);
        routes.push((Some(name), RouteLabels { values, with_name, inherited }));
    }

    let mut out = SourceOutput::default();
    for (name, labels) in routes {
        match route(c, settings, name, &labels, &base_service) {
            Ok(part) => out.extend(part),
            // A bad container-wide value is inherited by each named route: reported once.
            Err(e) => errors.extend(e.into_iter().filter(|d| !errors.contains(d)).collect::<Vec<_>>()),
        }
    }
    if errors.is_empty() {
        Ok(Some(out))
    } else {
        Err(errors)
    }
}

fn route(
    c: &Container,
    settings: &LabelSettings,
    name: Option<&str>,
    labels: &RouteLabels,
    base_service: &str,
) -> Result<SourceOutput, Vec<Diagnostic>> {
    let at = |label: &str| Origin::Container { name: c.name.clone(), label: Some(label.to_string()) };
    let mut errors = Vec::new();

    // Every route key that is set, parsed by its schema kind (in schema order); a failure is
    // recorded against its label.
    let mut values = Values::default();
    for key in label_schema::KEYS.iter().filter(|k| k.scope == Scope::Route) {
        match labels.values.get(key.key) {
            Some((value, label)) => match key.kind.parse(value) {
                Ok(value) => values.set.push((key, value, label.as_str())),
                Err(messages) => errors.extend(messages.into_iter().map(|m| Diagnostic::error(at(label), m))),
            },
            None if key.key == "domains" => {
                let p = &settings.prefix;
                let route = name.unwrap_or_default();
                errors.push(Diagnostic::error(
                    Origin::Container { name: c.name.clone(), label: None },
                    format!("route {route:?} has no domains; add {p}.{route}.domains"),
                ));
            }
            None => {}
        }
    }

    // The typed values, with their defaults.
    let domains = values.take("domains", |v| if let Value::Domains(d) = v { Some(d) } else { None });
    let port = values.take("port", |v| if let Value::Port(p) = v { Some(p) } else { None });
    let port = port.unwrap_or_else(|| default_port(c));
    let path = values.take("path", |v| if let Value::Path(p) = v { Some(p) } else { None });
    let path = path.unwrap_or_else(PathPrefix::root);
    let allow = values.take("allow", |v| if let Value::Cidrs(a) = v { Some(a) } else { None }).unwrap_or_default();
    let tls = values.take("tls", |v| if let Value::Tls(t) = v { Some(t) } else { None }).unwrap_or_default();
    let health = values.take("health", |v| if let Value::Health(h) = v { Some(h) } else { None });
    let hsts = values.take("hsts", |v| if let Value::Hsts(h) = v { Some(h) } else { None });
    let balance = values.take("lb", |v| if let Value::Balance(b) = v { Some(b) } else { None });
    let www = values.take_label("www", |v| if let Value::Www(w) = v { Some(w) } else { None });
    if let (Some((www, label)), Some(domains)) = (&www, &domains) {
        for domain in domains {
            if let Err(e) = www.names(domain) {
                errors.push(Diagnostic::error(at(label), format!("{e}; allowed: {}", policy::allowed::WWW)));
            }
        }
    }
    let www = www.map(|(w, _)| w);
    let redirect = redirect(labels, &mut values, &settings.prefix, &at, &mut errors);
    // A named route's own labels (the rest it inherits from the container-wide ones).
    let own = |label: &str| name.is_none_or(|route| label.starts_with(&format!("{}.{route}.", settings.prefix)));
    let protocol = protocol(labels, &mut values, &own, &at, &mut errors);
    let (request_headers, response_headers) = headers(labels, &at, &mut errors);
    let inherited_bypass = labels.inherited.contains("auth.bypass");
    let (auth, rate) = access(&mut values, &path, inherited_bypass, &settings.prefix, &at, &mut errors);
    if let Some(policy::Header { name, .. }) = auth_header_also_set(auth.as_ref(), &request_headers) {
        let label = labels.values.get("auth.headers").map_or("", |(_, l)| l.as_str());
        errors.push(Diagnostic::error(
            at(label),
            format!(
                "{} is also set by headers.request.{}; a header comes from one of them",
                name.as_str(),
                name.as_str()
            ),
        ));
    }
    let policy = Policy {
        max_body: values.take("max-body", |v| if let Value::Size(s) = v { Some(s) } else { None }),
        timeout: values.take("timeout", |v| if let Value::Timeout(t) = v { Some(t) } else { None }),
        buffering: values.take("buffering", |v| if let Value::OnOff(on) = v { Some(on) } else { None }),
        strip_prefix: values.take("strip-prefix", |v| if let Value::OnOff(on) = v { Some(on) } else { None }),
        error_pages: values.take("error-pages", |v| if let Value::OnOff(on) = v { Some(on) } else { None }),
        request_headers,
        response_headers,
        auth,
        rate,
    };
    if let Some(reason) = protocol.as_ref().and_then(|p| p.proto.rejects(&policy)) {
        let label = labels.values.get("buffering").map_or("", |(_, label)| label.as_str());
        errors.push(Diagnostic::error(at(label), reason));
    }
    if labels.values.contains_key("redirect") {
        // A redirecting route serves nothing: no service, no network.
        let unused = labels
            .values
            .iter()
            .filter(|(key, (value, _))| !(REDIRECT_KEYS.contains(key) || (**key == "path" && value.trim() == "/")))
            .map(|(_, (_, label))| label)
            .chain(labels.with_name.values().map(|(_, _, label)| label))
            .filter(|label| own(label));
        for label in unused {
            errors.push(Diagnostic::error(
                at(label),
                format!(
                    "has no effect on a route that redirects ({p}.redirect): the whole domain redirects, and only {} apply; remove one of them",
                    REDIRECT_KEYS.iter().map(|k| format!("{}.{k}", settings.prefix)).collect::<Vec<_>>().join(", "),
                    p = settings.prefix
                ),
            ));
        }
        let (Some(domains), Some(redirect), true) = (domains, redirect, errors.is_empty()) else { return Err(errors) };
        let origin = Origin::Container { name: c.name.clone(), label: None };
        let routes = domains
            .into_iter()
            .map(|domain| RouteDef {
                domain,
                path: PathPrefix::root(),
                service: None,
                allow: Vec::new(),
                tls,
                health: health.clone(),
                hsts,
                redirect: Some(redirect.clone()),
                www,
                policy: Policy::default(),
                origin: origin.clone(),
            })
            .collect();
        return Ok(SourceOutput { routes, ..SourceOutput::default() });
    }
    let service = match values.take("service", |v| if let Value::Service(s) = v { Some(s) } else { None }) {
        Some(service) => Some(service),
        None if labels.values.contains_key("service") => None,
        None => {
            let generated = match name {
                None => base_service.to_string(),
                Some(route) => format!("{base_service}-{route}"),
            };
            parse_generated_service(&generated, c, &mut errors)
        }
    };
    let network = values.take_label("network", |v| if let Value::Network(n) = v { Some(n) } else { None });
    let network = if c.running {
        let wanted = network.as_ref().map(|(n, label)| (n.as_str(), *label));
        choose_network(c, settings, wanted).map_err(|e| errors.push(e)).ok().map(Some)
    } else {
        Some(None)
    };
    let (Some(domains), Some(service), Some(network), true) = (domains, service, network, errors.is_empty()) else {
        return Err(errors);
    };
    let origin = Origin::Container { name: c.name.clone(), label: None };
    let key = ServiceKey { namespace: Namespace::Docker, name: service };
    let state = match c.health {
        None | Some(Health::Healthy) => BackendState::Up,
        Some(Health::Starting) => BackendState::Starting,
        Some(Health::Unhealthy) => BackendState::Unhealthy,
    };
    let backends = match network {
        Some((network, ip)) => {
            vec![Backend { host: Host::Ip(ip), port, state, network: Some(network), origin: origin.clone() }]
        }
        None => Vec::new(),
    };
    let mut out = SourceOutput::default();
    out.services.push(ServiceDef { key: key.clone(), backends, balance, protocol, origin: origin.clone() });
    for domain in domains {
        out.routes.push(RouteDef {
            domain,
            path: path.clone(),
            service: Some(key.clone()),
            allow: allow.clone(),
            tls,
            health: health.clone(),
            hsts,
            redirect: None,
            www,
            policy: policy.clone(),
            origin: origin.clone(),
        });
    }
    Ok(out)
}

/// The keys that mean something on a route that redirects (all of them per domain).
const REDIRECT_KEYS: &[&str] =
    &["domains", "tls", "health", "hsts", "redirect", "redirect.code", "redirect.keep-path", "www"];

/// The route's `redirect` with its `redirect.code` and `redirect.keep-path`; the options alone
/// are an error at their label.
fn redirect(
    labels: &RouteLabels,
    values: &mut Values,
    prefix: &str,
    at: &dyn Fn(&str) -> Origin,
    errors: &mut Vec<Diagnostic>,
) -> Option<policy::Redirect> {
    let url = values.take_label("redirect", |v| if let Value::RedirectUrl(u) = v { Some(u) } else { None });
    let code = values.take("redirect.code", |v| if let Value::RedirectCode(c) = v { Some(c) } else { None });
    let keep_path = values.take("redirect.keep-path", |v| if let Value::Bool(b) = v { Some(b) } else { None });
    match url {
        Some((url, label)) => policy::Redirect::to_url(url, code, keep_path)
            .map_err(|e| errors.push(Diagnostic::error(at(label), e)))
            .ok(),
        None => {
            for key in ["redirect.code", "redirect.keep-path"] {
                if let Some((_, label)) = labels.values.get(key) {
                    errors.push(Diagnostic::error(
                        at(label),
                        format!("{key} needs {prefix}.redirect, the target the domain redirects to"),
                    ));
                }
            }
            None
        }
    }
}

/// The route's `proto` with `backend-verify` and `fastcgi.root`, checked together (errors at the
/// label at fault); `None` when none is set.
fn protocol(
    labels: &RouteLabels,
    values: &mut Values,
    own: &dyn Fn(&str) -> bool,
    at: &dyn Fn(&str) -> Origin,
    errors: &mut Vec<Diagnostic>,
) -> Option<policy::Protocol> {
    let proto = values.take("proto", |v| if let Value::Proto(p) = v { Some(p) } else { None });
    let verify = values.take("backend-verify", |v| if let Value::BackendVerify(b) = v { Some(b) } else { None });
    let root = values.take("fastcgi.root", |v| if let Value::Path(p) = v { Some(p) } else { None });
    // An inherited setting of another protocol than the named route's own is not its own.
    let inherited = |key: &str| labels.values.get(key).is_some_and(|(_, label)| !own(label));
    let proto_of_route = proto.unwrap_or_default();
    let verify = verify.filter(|_| proto_of_route.is_tls() || !inherited("backend-verify"));
    let root = root.filter(|_| proto_of_route == policy::Proto::Fastcgi || !inherited("fastcgi.root"));
    if proto.is_none() && verify.is_none() && root.is_none() {
        return None;
    }
    let protocol =
        policy::Protocol { proto: proto.unwrap_or_default(), verify: verify.unwrap_or_default(), fastcgi_root: root };
    // A container is reached by its address: no host name to check a certificate against.
    match protocol.check(None) {
        Ok(()) => Some(protocol),
        Err((key, message)) => {
            let label = labels.values.get(key).map_or("", |(_, label)| label.as_str());
            errors.push(Diagnostic::error(at(label), message));
            None
        }
    }
}

/// The route's `headers.request.<Name>` and `headers.response.<Name>` labels, parsed (errors at
/// their labels), by name.
fn headers(
    labels: &RouteLabels,
    at: &dyn Fn(&str) -> Origin,
    errors: &mut Vec<Diagnostic>,
) -> (Vec<policy::Header>, Vec<policy::Header>) {
    let (mut request, mut response) = (Vec::new(), Vec::new());
    for ((key, _), (name, value, label)) in &labels.with_name {
        let Some(schema) = label_schema::get(key) else { continue };
        let direction =
            if key.starts_with("headers.request.") { policy::Direction::Request } else { policy::Direction::Response };
        let name = policy::HeaderName::parse(name, direction).map_err(|e| errors.push(Diagnostic::error(at(label), e)));
        let value = match schema.kind.parse(value) {
            Ok(Value::HeaderValue(v)) => Some(v),
            Ok(other) => unreachable!("a header key parsed to {other:?}"),
            Err(messages) => {
                errors.extend(messages.into_iter().map(|m| Diagnostic::error(at(label), m)));
                None
            }
        };
        if let (Ok(name), Some(value)) = (name, value) {
            let list = if direction == policy::Direction::Request { &mut request } else { &mut response };
            list.push(policy::Header { name, value });
        }
    }
    (request, response)
}

/// The route's `auth*` and `rate*` keys, combined (errors at the label they are about). Bypass
/// paths a named route inherits apply where they lie inside its path (a request outside it
/// never reaches the route).
fn access(
    values: &mut Values,
    path: &PathPrefix,
    inherited_bypass: bool,
    prefix: &str,
    at: &dyn Fn(&str) -> Origin,
    errors: &mut Vec<Diagnostic>,
) -> (Option<Auth>, Option<RateLimit>) {
    // A key of the group whose value did not parse is reported already: combining the rest would
    // only add "needs ..." errors about it.
    let failed = |errors: &[Diagnostic], group: &str| {
        errors.iter().any(|d| match &d.origin {
            Origin::Container { label: Some(label), .. } => {
                label_schema::key_of_label(prefix, label).is_some_and(|k| {
                    k.key.strip_prefix(group).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
                })
            }
            _ => false,
        })
    };
    let (auth_failed, rate_failed) = (failed(errors, "auth"), failed(errors, "rate"));
    macro_rules! take {
        ($key:literal, $variant:ident) => {
            values.take_label($key, |v| if let Value::$variant(x) = v { Some(x) } else { None })
        };
    }
    let mut bypass = take!("auth.bypass", Paths);
    if inherited_bypass {
        bypass = bypass.and_then(|(paths, label)| {
            let inside: Vec<PathPrefix> = paths.into_iter().filter(|p| access::is_inside(p, path)).collect();
            (!inside.is_empty()).then_some((inside, label))
        });
    }
    let auth = AuthKeys {
        auth: take!("auth", Auth),
        users: take!("auth.users", Users),
        users_file: take!("auth.users-file", UsersFile),
        url: take!("auth.url", Url),
        signin: take!("auth.signin", Url),
        headers: take!("auth.headers", HeaderNames),
        bypass,
    };
    let auth = if auth_failed { Ok(None) } else { auth.build(path) };
    let rate =
        RateKeys { rate: take!("rate", Rate), burst: take!("rate.burst", Burst), key: take!("rate.key", RateKey) };
    let rate = if rate_failed { Ok(None) } else { rate.build() };
    fn reported<T>(
        result: Result<Option<T>, Vec<(&str, String)>>,
        at: &dyn Fn(&str) -> Origin,
        errors: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        result
            .map_err(|e| errors.extend(e.into_iter().map(|(label, m)| Diagnostic::error(at(label), m))))
            .ok()
            .flatten()
    }
    (reported(auth, at, errors), reported(rate, at, errors))
}

/// A header `auth.headers` copies from the auth service that `headers.request.<Name>` sets too.
fn auth_header_also_set<'a>(auth: Option<&Auth>, request: &'a [policy::Header]) -> Option<&'a policy::Header> {
    let Some(AuthMethod::Forward(forward)) = auth.map(|a| &a.method) else { return None };
    request.iter().find(|h| forward.headers.iter().any(|n| n.as_str().eq_ignore_ascii_case(h.name.as_str())))
}

/// The parsed values of one route's keys.
#[derive(Default)]
struct Values<'a> {
    set: Vec<(&'static LabelKey, Value, &'a str)>, // key, value, full label name
}

impl<'a> Values<'a> {
    /// The value of `key` as the type its kind parses to (`get`), with its label's name.
    fn take_label<T>(&mut self, key: &str, get: impl FnOnce(Value) -> Option<T>) -> Option<(T, &'a str)> {
        let i = self.set.iter().position(|(k, ..)| k.key == key)?;
        let (k, value, label) = self.set.remove(i);
        let typed = get(value).unwrap_or_else(|| panic!("label key {:?} ({:?}) parsed to another type", k.key, k.kind));
        Some((typed, label))
    }

    fn take<T>(&mut self, key: &str, get: impl FnOnce(Value) -> Option<T>) -> Option<T> {
        self.take_label(key, get).map(|(value, _)| value)
    }
}

/// A Swarm service's name, the compose service with its project (`project-service`), else the
/// container name.
fn base_service_name(c: &Container) -> String {
    if let Some(swarm) = &c.swarm {
        return swarm.service.clone();
    }
    let project = c.labels.get("com.docker.compose.project");
    match (project, c.labels.get("com.docker.compose.service")) {
        (Some(project), Some(service)) => format!("{project}-{service}"),
        (None, Some(service)) => service.clone(),
        _ => c.name.clone(),
    }
}

fn parse_generated_service(name: &str, c: &Container, errors: &mut Vec<Diagnostic>) -> Option<ServiceName> {
    ServiceName::parse(name)
        .map_err(|e| {
            errors.push(Diagnostic::error(
                Origin::Container { name: c.name.clone(), label: None },
                format!("the default service name does not fit: {e}; set the service label"),
            ))
        })
        .ok()
}

/// The container's only exposed TCP port, else 80.
fn default_port(c: &Container) -> Port {
    match c.exposed_ports[..] {
        [only] => Port::new(only).unwrap_or_else(|| Port::new(80).expect("80 is a port")),
        _ => Port::new(80).expect("80 is a port"),
    }
}

/// Picks the network nginx reaches the container on, deterministically, and says why (for a
/// Swarm service, after which routing mode it uses and why).
fn choose_network(
    c: &Container,
    settings: &LabelSettings,
    label: Option<(&str, &str)>,
) -> Result<(NetworkChoice, IpAddr), Diagnostic> {
    let (mut choice, ip) = choose_container_network(c, settings, label)?;
    if let Some(swarm) = &c.swarm {
        choice.reason = format!("{}; {}", swarm.describe(), choice.reason);
    }
    Ok((choice, ip))
}

fn choose_container_network(
    c: &Container,
    settings: &LabelSettings,
    label: Option<(&str, &str)>,
) -> Result<(NetworkChoice, IpAddr), Diagnostic> {
    let addressed: BTreeMap<&str, IpAddr> = c
        .networks
        .iter()
        .filter_map(|(name, a)| a.ipv4.map(IpAddr::V4).or(a.ipv6.map(IpAddr::V6)).map(|ip| (name.as_str(), ip)))
        .collect();
    let list = |names: &mut dyn Iterator<Item = &str>| {
        let v: Vec<&str> = names.collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let on = list(&mut addressed.keys().copied());
    let container_origin = Origin::Container { name: c.name.clone(), label: None };
    if let Some((wanted, label_name)) = label {
        let wanted = wanted.trim();
        return match addressed.get(wanted) {
            Some(ip) => Ok((NetworkChoice { name: wanted.to_string(), reason: format!("set by {label_name}") }, *ip)),
            None => Err(Diagnostic::error(
                Origin::Container { name: c.name.clone(), label: Some(label_name.to_string()) },
                format!("the container has no address on network {:?}; it is on: {on}", show(wanted)),
            )),
        };
    }
    let pick = |name: &str, reason: String| (NetworkChoice { name: name.to_string(), reason }, addressed[name]);
    match &settings.nginx_networks {
        Some(nginx) => {
            let shared: Vec<&str> = addressed.keys().copied().filter(|n| nginx.contains(*n)).collect();
            match shared[..] {
                [] => Err(Diagnostic::error(
                    container_origin,
                    format!(
                        "no network shared with nginx: the container is on {on}; nginx is on {}. Connect them to a common network or set {}.network",
                        list(&mut nginx.iter().map(String::as_str)),
                        settings.prefix
                    ),
                )),
                [one] => Ok(pick(one, "the network shared with nginx".into())),
                [first, ..] => Ok(pick(
                    first,
                    format!("first (by name) of the networks shared with nginx: {}; set {}.network to choose", shared.join(", "), settings.prefix),
                )),
            }
        }
        None => match addressed.keys().copied().collect::<Vec<_>>()[..] {
            [] => Err(Diagnostic::error(
                container_origin,
                "the container has no IP address on any network (network mode host or none?); attach it to a network nginx can reach",
            )),
            [one] => Ok(pick(one, "the container's only network".into())),
            [first, ..] => Ok(pick(
                first,
                format!("first (by name) of {on}; nginx's networks are unknown, set NGINX_CONTAINER or {}.network", settings.prefix),
            )),
        },
    }
}

/// The container's `heal` label (`off` when absent or not valid: `routes` reports a bad value).
pub fn heal(c: &Container, prefix: &str) -> label_schema::Heal {
    c.labels.get(&format!("{prefix}.heal")).and_then(|v| label_schema::Heal::parse(v).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            exposed_ports: vec![8080],
            networks: [(
                "demo_default".to_string(),
                NetworkAddress { ipv4: Some(Ipv4Addr::new(172, 18, 0, 5)), ipv6: None },
            )]
            .into(),
            health: None,
            running: true,
            swarm: None,
        }
    }

    fn settings() -> LabelSettings {
        LabelSettings { prefix: "smart-proxy".into(), nginx_networks: None }
    }

    #[test]
    fn defaults_from_compose_and_exposed_port() {
        let c = container(
            "demo-app1-1",
            &[
                ("smart-proxy.domains", "app1.localhost, www.app1.localhost"),
                ("com.docker.compose.project", "demo"),
                ("com.docker.compose.service", "app1"),
            ],
        );
        let out = routes(&[c], &settings());
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert_eq!(out.routes.len(), 2);
        assert_eq!(out.services[0].key.name.as_str(), "demo-app1");
        assert_eq!(out.services[0].backends[0].address(), "172.18.0.5:8080");
        assert_eq!(out.services[0].backends[0].network.as_ref().unwrap().reason, "the container's only network");
    }

    #[test]
    fn named_routes_inherit_container_defaults() {
        let c = container(
            "shop",
            &[
                ("smart-proxy.domains", "shop.com"),
                ("smart-proxy.allow", "10.0.0.0/8"),
                ("smart-proxy.admin.domains", "admin.shop.com"),
                ("smart-proxy.admin.port", "9000"),
            ],
        );
        let out = routes(&[c], &settings());
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        let names: Vec<_> = out.services.iter().map(|s| s.key.name.as_str()).collect();
        assert_eq!(names, ["shop", "shop-admin"]);
        assert_eq!(out.services[1].backends[0].port.get(), 9000);
        assert_eq!(out.routes[1].allow.len(), 1);
    }

    #[test]
    fn bad_labels_skip_the_container_with_precise_errors() {
        let bad = container(
            "bad",
            &[("smart-proxy.domains", "ok.com"), ("smart-proxy.port", "invalid"), ("smart-proxy.domian", "x")],
        );
        let good = container("good", &[("smart-proxy.domains", "good.com")]);
        let out = routes(&[bad, good], &settings());
        assert_eq!(out.routes.len(), 1);
        assert_eq!(out.routes[0].domain.as_str(), "good.com");
        let messages: Vec<String> = out.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 1, "unknown label stops before value checks: {messages:#?}");
        assert!(messages[0].contains("container bad, label smart-proxy.domian: unknown label"));
        let bad = container("bad", &[("smart-proxy.domains", "ok.com"), ("smart-proxy.port", "invalid")]);
        let messages: Vec<String> = routes(&[bad], &settings()).diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages, ["error: container bad, label smart-proxy.port: port \"invalid\" is not a number; must be a whole number from 1 to 65535"]);
    }

    #[test]
    fn disabled_nginx_and_unlabelled_containers_are_ignored() {
        let out = routes(
            &[
                container("off", &[("smart-proxy.domains", "a.com"), ("smart-proxy.enable", "false")]),
                container("nginx", &[("smart-proxy.nginx", "true")]),
                container("plain", &[("other", "x")]),
            ],
            &settings(),
        );
        assert_eq!(out, SourceOutput::default());
    }

    #[test]
    fn a_stopped_container_keeps_its_routes_without_servers() {
        let mut c = container("stopped", &[("smart-proxy.domains", "a.com")]);
        c.running = false;
        c.networks.clear();
        let out = routes(&[c], &settings());
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        assert_eq!(out.routes.len(), 1);
        assert!(out.services[0].backends.is_empty());
    }

    #[test]
    fn a_misspelt_nginx_label_is_an_error() {
        let out = routes(&[container("web", &[("smart-proxy.nginx", "ture")])], &settings());
        assert_eq!(out.diagnostics.len(), 1);
        assert!(out.diagnostics[0].to_string().contains("label smart-proxy.nginx: \"ture\" is not a boolean"));
    }

    #[test]
    fn network_choice() {
        let mut c = container("multi", &[("smart-proxy.domains", "a.com")]);
        c.networks.insert("backend".into(), NetworkAddress { ipv4: Some(Ipv4Addr::new(10, 1, 0, 2)), ipv6: None });
        c.networks.insert("host".into(), NetworkAddress::default());
        let mut s = settings();
        let out = routes(std::slice::from_ref(&c), &s);
        let chosen = out.services[0].backends[0].network.clone().unwrap();
        assert_eq!(chosen.name, "backend");
        assert!(chosen.reason.contains("first (by name) of backend, demo_default"), "{}", chosen.reason);

        s.nginx_networks = Some(["demo_default".to_string()].into());
        let out = routes(std::slice::from_ref(&c), &s);
        assert_eq!(out.services[0].backends[0].address(), "172.18.0.5:8080");

        s.nginx_networks = Some(["elsewhere".to_string()].into());
        let out = routes(std::slice::from_ref(&c), &s);
        assert!(out.diagnostics[0].message.contains("no network shared with nginx"), "{}", out.diagnostics[0]);

        c.labels.insert("smart-proxy.network".into(), "nope".into());
        let out = routes(&[c], &s);
        assert!(out.diagnostics[0].to_string().contains("label smart-proxy.network: the container has no address on network \"nope\"; it is on: backend, demo_default"));
    }
}

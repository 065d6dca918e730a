//! Every label key, declared once: its name, where it applies, its value type (parser and what it
//! allows), what it means and its default. The label parser (`labels.rs`) finds keys here
//! ([`lookup`]) and parses their values with [`ValueKind::parse`]; `docs/labels.md` is this table
//! rendered ([`reference`], checked by a test); `check` explains the keys its errors name
//! ([`explain`]); and a key's example is tested to parse.
//!
//! Adding a key: one entry in [`KEYS`] (with an existing [`ValueKind`], or a new one with its
//! parser and allowed text), its use in `labels::route` (the typed value, with its default), its
//! render; the docs test then says what to paste into `docs/labels.md`. A dotted key
//! (`auth.user`) is matched whole before `<route>.<key>`, and its first segment can no longer be a
//! route name ([`is_route_name`]).

use crate::routes::access::{self, AuthMode, Rate, RateKey, Url, Users, UsersFile};
use crate::routes::grammar::{allowed, parse_bool, show};
use crate::routes::policy::{
    self, parse_on_off, BackendVerify, Balance, HeaderName, HeaderValue, Hsts, Proto, RedirectCode, RedirectUrl, Size,
    Timeout, Www,
};
use crate::routes::Health;
use crate::routes::{Cidr, DomainName, PathPrefix, Port, ServiceName, TlsMode, ValueError};

/// Where a key applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Once per container: `<prefix>.<key>`.
    Container,
    /// Per route: `<prefix>.<key>` for the container's route (and the default of its named
    /// routes, unless [`LabelKey::inherited`] is false), `<prefix>.<route>.<key>` for a named one.
    Route,
}

/// A key's value type: which parser reads it and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A comma list of host names ([`DomainName`]), at least one.
    DomainList,
    Port,
    PathPrefix,
    ServiceName,
    /// A Docker network's name; whether the container is on it is checked when the network is
    /// chosen (`labels::choose_network`), not here.
    Network,
    /// A comma list of IPs and CIDR ranges, possibly empty.
    CidrList,
    TlsMode,
    Bool,
    /// A body size ([`Size`]).
    Size,
    /// A proxy timeout ([`Timeout`]).
    Timeout,
    /// `on`/`off`.
    OnOff,
    /// A health path or `off` ([`Health`]).
    Health,
    /// A header value ([`HeaderValue`]); the header's name is the key's last segment.
    HeaderValue,
    /// `off` or a max-age with flags ([`Hsts`]).
    Hsts,
    /// A load-balancing method ([`Balance`]).
    Balance,
    /// How nginx talks to the app ([`Proto`]).
    Proto,
    /// `off`, `on` or a host name ([`BackendVerify`]).
    BackendVerify,
    /// An http(s) URL ([`RedirectUrl`]).
    RedirectUrl,
    /// 301, 302, 307 or 308 ([`RedirectCode`]).
    RedirectCode,
    /// `to-apex` or `to-www` ([`Www`]).
    Www,
    /// `basic`, `forward` or `off` ([`AuthMode`]).
    Auth,
    /// htpasswd lines `user:hash` ([`Users`]).
    Users,
    /// An htpasswd file's path ([`UsersFile`]).
    UsersFile,
    /// An http(s) URL ([`Url`]).
    Url,
    /// A comma list of header names.
    HeaderNames,
    /// A comma list of paths (`auth.bypass`).
    Paths,
    /// `10r/s`, `600r/m` or `off` ([`Rate`]).
    Rate,
    /// A number of requests (`rate.burst`).
    Burst,
    /// `ip` or `header:<Name>` ([`RateKey`]).
    RateKey,
    /// `off` or `restart` ([`Heal`]).
    Heal,
    /// `tasks` or `vip` ([`SwarmLb`]).
    SwarmLb,
}

/// What the agent does about a container whose app fails every request (`heal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Heal {
    #[default]
    Off,
    /// Restart it through Docker (docs/insight.md, "Restarts").
    Restart,
}

impl Heal {
    pub const ALLOWED: &'static str = "off or restart";

    pub fn parse(raw: &str) -> Result<Heal, String> {
        match raw.trim() {
            "off" => Ok(Heal::Off),
            "restart" => Ok(Heal::Restart),
            other => Err(format!("{:?} is not a heal action; allowed: {}", show(other), Heal::ALLOWED)),
        }
    }
}

/// How nginx reaches a Swarm service's tasks (`swarm.lb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SwarmLb {
    /// One upstream server per running task, at its address on a network nginx shares.
    #[default]
    Tasks,
    /// The service's virtual IP on that network: Swarm balances.
    Vip,
}

impl SwarmLb {
    pub const ALLOWED: &'static str = "tasks or vip";

    pub fn parse(raw: &str) -> Result<SwarmLb, String> {
        match raw.trim() {
            "tasks" => Ok(SwarmLb::Tasks),
            "vip" => Ok(SwarmLb::Vip),
            other => Err(format!("{:?} is not a Swarm routing mode; allowed: {}", show(other), SwarmLb::ALLOWED)),
        }
    }
}

impl std::fmt::Display for SwarmLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwarmLb::Tasks => "tasks",
            SwarmLb::Vip => "vip",
        })
    }
}

/// A parsed label value, one variant per [`ValueKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Domains(Vec<DomainName>),
    Port(Port),
    Path(PathPrefix),
    Service(ServiceName),
    Network(String),
    Cidrs(Vec<Cidr>),
    Tls(TlsMode),
    Bool(bool),
    Size(Size),
    Timeout(Timeout),
    OnOff(bool),
    Health(Health),
    HeaderValue(HeaderValue),
    Hsts(Hsts),
    Balance(Balance),
    Proto(Proto),
    BackendVerify(BackendVerify),
    RedirectUrl(RedirectUrl),
    RedirectCode(RedirectCode),
    Www(Www),
    Auth(AuthMode),
    Users(Users),
    UsersFile(UsersFile),
    Url(Url),
    HeaderNames(Vec<HeaderName>),
    Paths(Vec<PathPrefix>),
    /// `None`: `off`.
    Rate(Option<Rate>),
    Burst(u32),
    RateKey(RateKey),
    Heal(Heal),
    SwarmLb(SwarmLb),
}

impl ValueKind {
    /// Parses a label's value; an error is one message per problem (a domain list reports every
    /// bad name), each saying what is allowed.
    pub fn parse(self, raw: &str) -> Result<Value, Vec<String>> {
        let one = |e: ValueError| vec![e.to_string()];
        match self {
            ValueKind::DomainList => {
                let (mut domains, mut errors) = (Vec::new(), Vec::new());
                for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match DomainName::parse(part) {
                        Ok(d) => domains.push(d),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                if domains.is_empty() && errors.is_empty() {
                    errors.push("empty; list one or more host names, comma-separated".to_string());
                }
                if !errors.is_empty() {
                    return Err(errors);
                }
                domains.sort();
                domains.dedup();
                Ok(Value::Domains(domains))
            }
            ValueKind::Port => Port::parse(raw).map(Value::Port).map_err(one),
            ValueKind::PathPrefix => PathPrefix::parse(raw).map(Value::Path).map_err(one),
            ValueKind::ServiceName => ServiceName::parse(raw).map(Value::Service).map_err(one),
            ValueKind::Network => Ok(Value::Network(raw.trim().to_string())),
            ValueKind::CidrList => Cidr::parse_list(raw).map(Value::Cidrs).map_err(one),
            ValueKind::TlsMode => TlsMode::parse(raw).map(Value::Tls).map_err(one),
            ValueKind::Bool => parse_bool(raw).map(Value::Bool).map_err(one),
            ValueKind::Size => Size::parse(raw).map(Value::Size).map_err(|e| vec![e.to_string()]),
            ValueKind::Timeout => Timeout::parse(raw).map(Value::Timeout).map_err(|e| vec![e.to_string()]),
            ValueKind::OnOff => parse_on_off(raw).map(Value::OnOff).map_err(|e| vec![e.to_string()]),
            ValueKind::Health => Health::parse(raw).map(Value::Health).map_err(|e| vec![e.to_string()]),
            ValueKind::HeaderValue => HeaderValue::parse(raw).map(Value::HeaderValue).map_err(|e| vec![e.to_string()]),
            ValueKind::Hsts => Hsts::parse(raw).map(Value::Hsts).map_err(|e| vec![e.to_string()]),
            ValueKind::Balance => Balance::parse(raw).map(Value::Balance).map_err(|e| vec![e.to_string()]),
            ValueKind::Proto => Proto::parse(raw).map(Value::Proto).map_err(|e| vec![e.to_string()]),
            ValueKind::BackendVerify => {
                BackendVerify::parse(raw).map(Value::BackendVerify).map_err(|e| vec![e.to_string()])
            }
            ValueKind::RedirectUrl => RedirectUrl::parse(raw).map(Value::RedirectUrl).map_err(|e| vec![e.to_string()]),
            ValueKind::RedirectCode => {
                RedirectCode::parse(raw).map(Value::RedirectCode).map_err(|e| vec![e.to_string()])
            }
            ValueKind::Www => Www::parse(raw).map(Value::Www).map_err(|e| vec![e.to_string()]),
            ValueKind::Auth => AuthMode::parse(raw).map(Value::Auth).map_err(|e| vec![e.to_string()]),
            ValueKind::Users => Users::parse(raw).map(Value::Users).map_err(|e| vec![e.to_string()]),
            ValueKind::UsersFile => UsersFile::parse(raw).map(Value::UsersFile).map_err(|e| vec![e.to_string()]),
            ValueKind::Url => Url::parse(raw).map(Value::Url).map_err(|e| vec![e.to_string()]),
            ValueKind::HeaderNames => {
                access::parse_header_names(raw).map(Value::HeaderNames).map_err(|e| vec![e.to_string()])
            }
            ValueKind::Paths => access::parse_paths(raw).map(Value::Paths).map_err(|e| vec![e.to_string()]),
            ValueKind::Rate => Rate::parse(raw).map(Value::Rate).map_err(|e| vec![e.to_string()]),
            ValueKind::Burst => access::parse_burst(raw).map(Value::Burst).map_err(|e| vec![e.to_string()]),
            ValueKind::RateKey => RateKey::parse(raw).map(Value::RateKey).map_err(|e| vec![e.to_string()]),
            ValueKind::Heal => Heal::parse(raw).map(Value::Heal).map_err(|e| vec![e]),
            ValueKind::SwarmLb => SwarmLb::parse(raw).map(Value::SwarmLb).map_err(|e| vec![e]),
        }
    }

    /// What a value of this kind may be, in words (the texts of `grammar::allowed`, which the
    /// parsers' error messages use too).
    pub fn allowed(self) -> String {
        match self {
            ValueKind::DomainList => format!("a comma list of host names, each: {}", allowed::DOMAIN),
            ValueKind::Port => allowed::PORT.to_string(),
            ValueKind::PathPrefix => format!("a path that {}", allowed::PATH),
            ValueKind::ServiceName => allowed::SERVICE.to_string(),
            ValueKind::Network => "the name of a Docker network the container has an address on".to_string(),
            ValueKind::CidrList => format!("a comma list, each {}", allowed::CIDR),
            ValueKind::TlsMode => allowed::TLS.to_string(),
            ValueKind::Bool => allowed::BOOL.to_string(),
            ValueKind::Size => policy::allowed::SIZE.to_string(),
            ValueKind::Timeout => policy::allowed::TIMEOUT.to_string(),
            ValueKind::OnOff => policy::allowed::ON_OFF.to_string(),
            ValueKind::Health => policy::allowed::HEALTH.to_string(),
            ValueKind::HeaderValue => policy::allowed::HEADER_VALUE.to_string(),
            ValueKind::Hsts => policy::allowed::HSTS.to_string(),
            ValueKind::Balance => policy::allowed::BALANCE.to_string(),
            ValueKind::Proto => policy::allowed::PROTO.to_string(),
            ValueKind::BackendVerify => policy::allowed::BACKEND_VERIFY.to_string(),
            ValueKind::RedirectUrl => policy::allowed::REDIRECT.to_string(),
            ValueKind::RedirectCode => policy::allowed::REDIRECT_CODE.to_string(),
            ValueKind::Www => policy::allowed::WWW.to_string(),
            ValueKind::Auth => access::allowed::AUTH.to_string(),
            ValueKind::Users => access::allowed::USERS.to_string(),
            ValueKind::UsersFile => access::allowed::USERS_FILE.to_string(),
            ValueKind::Url => access::allowed::URL.to_string(),
            ValueKind::HeaderNames => access::allowed::HEADER_NAMES.to_string(),
            ValueKind::Paths => access::allowed::BYPASS.to_string(),
            ValueKind::Rate => access::allowed::RATE.to_string(),
            ValueKind::Burst => access::allowed::BURST.to_string(),
            ValueKind::RateKey => access::allowed::RATE_KEY.to_string(),
            ValueKind::Heal => Heal::ALLOWED.to_string(),
            ValueKind::SwarmLb => SwarmLb::ALLOWED.to_string(),
        }
    }
}

/// One label key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelKey {
    /// The key after the prefix (and after the route name, for a named route's key).
    pub key: &'static str,
    pub scope: Scope,
    /// Whether a named route takes the container-wide value as its default.
    pub inherited: bool,
    /// Its value type: the parser [`labels`](super::labels) applies, and what it allows.
    pub kind: ValueKind,
    /// What it does and which values it takes (Markdown, one line).
    pub meaning: &'static str,
    /// What holds when it is not set (Markdown).
    pub default: &'static str,
    /// A valid value.
    pub example: &'static str,
}

const fn route(
    key: &'static str,
    kind: ValueKind,
    meaning: &'static str,
    default: &'static str,
    example: &'static str,
) -> LabelKey {
    LabelKey { key, scope: Scope::Route, inherited: true, kind, meaning, default, example }
}

/// The keys, in the order the reference lists them.
pub const KEYS: &[LabelKey] = &[
    LabelKey {
        inherited: false,
        ..route(
            "domains",
            ValueKind::DomainList,
            "comma list of host names; required. Wildcards only leftmost (`*.example.com`); international names become punycode",
            "—",
            "example.com,www.example.com",
        )
    },
    route("port", ValueKind::Port, "backend port, 1–65535", "the container's only exposed TCP port, else 80", "8080"),
    route("path", ValueKind::PathPrefix, "location prefix (`/`, `/api/`); the full URI is passed on unchanged", "`/`", "/api/"),
    LabelKey {
        inherited: false,
        ..route(
            "service",
            ValueKind::ServiceName,
            "upstream name; containers with the same service are load-balanced (one server per replica)",
            "compose `project-service`, else the container name",
            "shop",
        )
    },
    route(
        "network",
        ValueKind::Network,
        "the Docker network nginx reaches the container on",
        "the network shared with nginx, else the only one (see below)",
        "proxy",
    ),
    route(
        "allow",
        ValueKind::CidrList,
        "comma list of IPs/CIDRs (v4, v6); only they may reach these domains (`allow …; deny all;`)",
        "anyone",
        "10.8.0.0/24,fd00:8::/64",
    ),
    route("tls", ValueKind::TlsMode, "`auto` (HTTPS in production) or `off` (plain HTTP for this route)", "`auto`", "off"),
    route(
        "max-body",
        ValueKind::Size,
        "largest request body (`client_max_body_size`): `50m`, `10g`, `0` = unlimited; 413 above it",
        "`1m`",
        "10g",
    ),
    route(
        "timeout",
        ValueKind::Timeout,
        "how long the app may take to answer or read the request (proxy read/send timeouts; connecting stays 5 s, then the next replica): `300s`, `5m`, `1h`; 504 past it",
        "`60s`",
        "300s",
    ),
    route(
        "buffering",
        ValueKind::OnOff,
        "`off` streams responses and request bodies as they come (SSE, long polling, large uploads)",
        "`on`",
        "off",
    ),
    route(
        "error-pages",
        ValueKind::OnOff,
        "`off` leaves nginx's own pages for the errors the proxy answers itself (502, 503, 504, 429, 404) instead of the proxy's pages (`ERROR_PAGES_DIR`, or a plain text naming the domain)",
        "`on`",
        "off",
    ),
    route(
        "lb",
        ValueKind::Balance,
        "how the service's replicas share requests: `round-robin`, `least-conn` (the one with the fewest open requests), `ip-hash` (a client stays on one replica), `random`; one per service",
        "`round-robin`",
        "least-conn",
    ),
    route(
        "strip-prefix",
        ValueKind::OnOff,
        "`true`: the route's `path` is removed before the request reaches the app (`/api/users` arrives as `/users`; the query is kept)",
        "`false`: the full URI is passed on",
        "true",
    ),
    route(
        "proto",
        ValueKind::Proto,
        "how nginx talks to the app: `http`, `https` (TLS, with SNI), `h2c` (plain-text HTTP/2, through nginx's gRPC module, its only HTTP/2 client), `grpc`, `grpcs` (gRPC over TLS), `fastcgi` (php-fpm), `uwsgi`; one per service",
        "`http`",
        "grpc",
    ),
    route(
        "backend-verify",
        ValueKind::BackendVerify,
        "with `proto=https`/`grpcs`: `on` checks the app's certificate against `BACKEND_CA` (the system's CA bundle by default) and the service's host name (static services), a host name checks it against that name (containers are reached by address); `off` encrypts without checking",
        "`off`",
        "app.internal",
    ),
    route(
        "fastcgi.root",
        ValueKind::PathPrefix,
        "with `proto=fastcgi`: the app's document root inside its own container; a path naming a `.php` script runs that script (`PATH_INFO` after it), every other path runs `index.php` there (a front controller), with the original `REQUEST_URI`",
        "`/var/www/html`",
        "/app/public",
    ),
    route(
        "hsts",
        ValueKind::Hsts,
        "the HTTPS server's `Strict-Transport-Security`: `off`, or a max-age in seconds with optional flags (`63072000,includeSubDomains,preload`); one per domain",
        "`63072000` (two years)",
        "31536000,includeSubDomains",
    ),
    LabelKey {
        inherited: false,
        ..route(
        "redirect",
        ValueKind::RedirectUrl,
        "the whole domain redirects to this `http(s)://` URL (every request but the ACME challenge and the health answer; no service or network needed); one per domain, on a route without a `path`",
        "—",
        "https://www.example.org",
    )
    },
    LabelKey {
        inherited: false,
        ..route(
        "redirect.code",
        ValueKind::RedirectCode,
        "the redirect's status: `301`, `302`, `307` or `308` (`307`/`308` keep the method and body)",
        "`301`",
        "308",
    )
    },
    LabelKey {
        inherited: false,
        ..route(
        "redirect.keep-path",
        ValueKind::Bool,
        "`true`: the request's path and query are appended to the target (`/a?b` → `https://target/a?b`); `false`: every request goes to the target as written",
        "`true`",
        "false",
    )
    },
    LabelKey {
        inherited: false,
        ..route(
        "www",
        ValueKind::Www,
        "the canonical host: `to-apex` serves `example.com` and redirects `www.example.com` to it (301, path and query kept), `to-www` the other way round; either name in `domains` will do, and the other one is served and gets its own certificate; one per domain",
        "—",
        "to-apex",
    )
    },
    route(
        "headers.request.<Name>",
        ValueKind::HeaderValue,
        "a header sent to the app (`proxy_set_header`); any printable value, taken literally (quotes, `;`, `$` included); empty: the client's is not passed on. Not the ones the proxy sets (`Host`, `X-Forwarded-*`, `X-Real-IP`, `Upgrade`, `Connection`, `HTTPS`)",
        "—",
        "on",
    ),
    route(
        "headers.response.<Name>",
        ValueKind::HeaderValue,
        "a header sent to the client on every answer (`add_header … always`), taken literally (a Content-Security-Policy with quotes and `;`); empty: the app's is removed",
        "—",
        "default-src 'self'; img-src 'self' data:",
    ),
    route(
        "auth",
        ValueKind::Auth,
        "`basic`: a login, checked against `auth.users` or `auth.users-file`; `forward`: each request first asked of an auth service at `auth.url` (Authelia, Authentik, oauth2-proxy); `off`. Without valid credentials: 401",
        "`off`",
        "basic",
    ),
    route(
        "auth.users",
        ValueKind::Users,
        "with `auth=basic`: htpasswd lines `user:hash`, comma-separated; hashes only, never a clear password (`htpasswd -nbB user 'password'` gives bcrypt; `openssl passwd -apr1`, `-6`; `{SHA}`). nginx reads them from a file the agent writes (0640)",
        "—",
        "alice:$2y$05$EbWcGSIMLRjWvmTGv7x8PO4xU5Vc3BchfEu8Vg3Z0kHGh9aWl6gJu",
    ),
    route(
        "auth.users-file",
        ValueKind::UsersFile,
        "with `auth=basic`: an htpasswd file (of `user:hash` lines) in a directory mounted into the agent; read, checked and copied for nginx on every pass (missing, unreadable or with a bad line: the route is left out, saying why)",
        "—",
        "/run/secrets/htpasswd",
    ),
    route(
        "auth.url",
        ValueKind::Url,
        "with `auth=forward`: the auth service's check URL (`http://authelia:9091/api/authz/auth-request`, `http://oauth2-proxy:4180/oauth2/auth`); it gets the request's headers without the body, plus `X-Original-URI`, `X-Original-Method`, `X-Original-URL` and `X-Forwarded-*`. 2xx lets the request through; 401 and 403 go to the client; any other answer is a 500",
        "—",
        "http://authelia:9091/api/authz/auth-request",
    ),
    route(
        "auth.signin",
        ValueKind::Url,
        "with `auth=forward`: where a 401 sends the browser instead (302), with the original URL as `rd` (`https://auth.example.com/?rd=https://app.example.com/page`)",
        "— (the 401 goes to the client)",
        "https://auth.example.com/",
    ),
    route(
        "auth.headers",
        ValueKind::HeaderNames,
        "with `auth=forward`: response headers of the auth service passed on to the app (`Remote-User,Remote-Groups`); a client's own headers of these names never reach the app",
        "—",
        "Remote-User,Remote-Groups",
    ),
    route(
        "auth.bypass",
        ValueKind::Paths,
        "paths inside the route's `path` that skip `auth` (`/api/public/,/healthz`); every other policy still applies",
        "—",
        "/public/,/healthz",
    ),
    route(
        "rate",
        ValueKind::Rate,
        "requests per client and second or minute (`10r/s`, `600r/m`), or `off`; past the rate and its burst: 429. One limit per domain and path",
        "`off`",
        "10r/s",
    ),
    route(
        "rate.burst",
        ValueKind::Burst,
        "requests over the rate let through at once (nginx's `burst` with `nodelay`), then 429 until the rate allows more",
        "the rate's number (`10r/s`: 10)",
        "20",
    ),
    route(
        "rate.key",
        ValueKind::RateKey,
        "who one client is: `ip`, or `header:<Name>` (an API key, a tenant; requests without that header count by address)",
        "`ip`",
        "header:X-Api-Key",
    ),
    route(
        "health",
        ValueKind::Health,
        "the path where the proxy itself answers `200 healthy` on this domain (every mode, HTTP and HTTPS), or `off` to pass it to the app; one per domain",
        "`/health`",
        "/healthz",
    ),
    LabelKey {
        key: "enable",
        scope: Scope::Container,
        inherited: false,
        kind: ValueKind::Bool,
        meaning: "`false` ignores the container",
        default: "`true`",
        example: "true",
    },
    LabelKey {
        key: "heal",
        scope: Scope::Container,
        inherited: false,
        kind: ValueKind::Heal,
        meaning: "`restart`: the agent restarts the container through Docker when every request to it has failed for `HEAL_AFTER` (at least 5 requests) and Docker's health check, if it has one, does not say healthy; at most 3 restarts an hour, each logged with its cause (docs/insight.md)",
        default: "`off`",
        example: "restart",
    },
    LabelKey {
        key: "swarm.lb",
        scope: Scope::Container,
        inherited: false,
        kind: ValueKind::SwarmLb,
        meaning: "on a Swarm service (`deploy.labels`): `tasks`, one upstream server per running task at its address on a network nginx shares (a task Swarm stops leaves first), or `vip`, the service's virtual IP (Swarm balances); no effect on a container",
        default: "`tasks`",
        example: "vip",
    },
    LabelKey {
        key: "nginx",
        scope: Scope::Container,
        inherited: false,
        kind: ValueKind::Bool,
        meaning: "`true` marks the nginx container (its networks decide which addresses are used)",
        default: "—",
        example: "true",
    },
];

/// Keys whose dotted keys make one whole: a named route that sets its own `auth` (`rate`) takes
/// none of the container's `auth.*` (`rate.*`) keys as defaults.
pub const WHOLE: &[&str] = &["auth", "rate"];

/// The key named `key`, if there is one.
pub fn get(key: &str) -> Option<&'static LabelKey> {
    KEYS.iter().find(|k| k.key == key)
}

/// The last segment of a key whose name it is (`headers.request.<Name>`).
const NAME_SEGMENT: &str = "<Name>";

impl LabelKey {
    /// For a key ending in `.<Name>`: the part before the name (`headers.request.`).
    pub fn name_prefix(&self) -> Option<&'static str> {
        self.key.strip_suffix(NAME_SEGMENT)
    }
}

/// The key with a name segment that `rest` names (`headers.request.X-Frame-Options`), with the
/// name (which may be empty or invalid: the caller checks it).
fn named_key<'a>(keys: &'static [LabelKey], rest: &'a str) -> Option<(&'static LabelKey, &'a str)> {
    keys.iter().find_map(|k| Some((k, rest.strip_prefix(k.name_prefix()?)?)))
}

/// What a label name (after `<prefix>.`) refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// `<key>`: a container key, or a route key of the container's own route.
    Key(&'static LabelKey),
    /// `<route>.<key>`: a route key of a named route.
    Named {
        route: &'a str,
        key: &'static LabelKey,
    },
    /// `<route>.<key>` with a known key but a route name that is not allowed.
    BadRoute(&'a str),
    /// A key with a name segment (`headers.request.<Name>`), for the container's route (`route`
    /// `None`) or a named one.
    WithName {
        route: Option<&'a str>,
        key: &'static LabelKey,
        name: &'a str,
    },
    Unknown,
}

/// Finds the key a label names, `rest` being the label's name after `<prefix>.`. A whole match
/// comes first (so a dotted key is never read as `<route>.<key>`), then `<route>.<key>`.
pub fn lookup(rest: &str) -> Lookup<'_> {
    lookup_in(KEYS, rest)
}

fn lookup_in<'a>(keys: &'static [LabelKey], rest: &'a str) -> Lookup<'a> {
    let get = |key: &str| keys.iter().find(|k| k.key == key && k.name_prefix().is_none());
    if let Some(key) = get(rest) {
        return Lookup::Key(key);
    }
    if let Some((key, name)) = named_key(keys, rest) {
        return Lookup::WithName { route: None, key, name };
    }
    let Some((route, key)) = rest.split_once('.') else { return Lookup::Unknown };
    let named = named_key(keys, key);
    match (get(key), named) {
        (Some(key), _) if key.scope == Scope::Route && is_route_name_in(keys, route) => Lookup::Named { route, key },
        (None, Some((key, name))) if is_route_name_in(keys, route) => {
            Lookup::WithName { route: Some(route), key, name }
        }
        (Some(_), _) | (None, Some(_)) if !is_route_name_in(keys, route) => Lookup::BadRoute(route),
        _ => Lookup::Unknown,
    }
}

/// The first segment of a dotted key (`headers` of `headers.request.<Name>`), which no route may
/// be named.
pub fn reserved_word(name: &str) -> Option<&'static str> {
    KEYS.iter().find_map(|k| k.key.split_once('.').filter(|(first, _)| *first == name).map(|(first, _)| first))
}

/// Every word a dotted key starts with (route names they cannot be), in key order.
fn reserved_words() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Vec::new();
    for word in KEYS.iter().filter_map(|k| k.key.split_once('.').map(|(w, _)| w)) {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// A route name: `[a-z0-9-]+`, at most 63 characters, and not the first segment of a dotted key.
pub fn is_route_name(name: &str) -> bool {
    is_route_name_in(KEYS, name)
}

fn is_route_name_in(keys: &[LabelKey], name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !keys.iter().any(|k| k.key.split_once('.').is_some_and(|(first, _)| first == name))
}

/// The key `label` (a whole label name, with `prefix`) refers to, if it is one of ours.
pub fn key_of_label(prefix: &str, label: &str) -> Option<&'static LabelKey> {
    let rest = label.strip_prefix(prefix)?.strip_prefix('.')?;
    match lookup(rest) {
        Lookup::Key(key) | Lookup::Named { key, .. } | Lookup::WithName { key, .. } => Some(key),
        Lookup::BadRoute(_) | Lookup::Unknown => None,
    }
}

/// One line explaining a key for people at a terminal (`check`): what it means, what it allows
/// and its default, from the same texts as `docs/labels.md` (without the Markdown quotes).
pub fn explain(prefix: &str, key: &LabelKey) -> String {
    let plain = |text: &str| text.replace('`', "");
    let name = match key.scope {
        Scope::Container => format!("{prefix}.{}", key.key),
        Scope::Route => format!("{prefix}.{k} (and {prefix}.<route>.{k})", k = key.key),
    };
    format!("{name}: {}; allowed: {}; default: {}", plain(key.meaning), key.kind.allowed(), plain(key.default))
}

/// The per-route keys, in reference order.
pub fn route_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| k.scope == Scope::Route).map(|k| k.key)
}

/// The per-container keys, in reference order.
pub fn container_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().filter(|k| k.scope == Scope::Container).map(|k| k.key)
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The label reference as a Markdown table, for labels with `prefix`.
pub fn reference(prefix: &str) -> String {
    let mut out = String::from("| label | meaning | default |\n|---|---|---|\n");
    let row = |out: &mut String, key: &LabelKey| {
        out.push_str(&format!("| `{prefix}.{}` | {} | {} |\n", key.key, key.meaning, key.default));
    };
    for key in KEYS.iter().filter(|k| k.scope == Scope::Route) {
        row(&mut out, key);
    }
    let inherited: Vec<String> =
        KEYS.iter().filter(|k| k.scope == Scope::Route && k.inherited).map(|k| format!("`{}`", k.key)).collect();
    out.push_str(&format!(
        "| `{prefix}.<route>.<key>` | a further route on the same container (`<route>` is `[a-z0-9-]+`, not {}; keys as \
         above); takes the container-wide {} as defaults ({}); its service defaults to `<service>-<route>` (the container's `service` label, else its default) | — |\n",
        or_list(&reserved_words().iter().map(|w| format!("`{w}`")).collect::<Vec<_>>()),
        inherited.join(", "),
        WHOLE
            .iter()
            .map(|w| format!("a route that sets its own `{w}` takes none of the container's `{w}.*`"))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    for key in KEYS.iter().filter(|k| k.scope == Scope::Container) {
        row(&mut out, key);
    }
    out
}

/// The `auth`/`rate` labels a key is only used with, and a value for each, so that an example of
/// the key (its schema test, the injection suite) is taken in use: `auth.users` counts with
/// `auth=basic`, and `auth=off` ignores it.
pub fn companions(key: &str) -> &'static [(&'static str, &'static str)] {
    const FORWARD: &[(&str, &str)] = &[("auth", "forward"), ("auth.url", "http://auth:9091/")];
    match key {
        "auth" => &[("auth.users", "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/")],
        "auth.users" | "auth.users-file" => &[("auth", "basic")],
        "auth.url" => &[("auth", "forward")],
        "auth.signin" | "auth.headers" | "auth.bypass" => FORWARD,
        "rate.burst" | "rate.key" => &[("rate", "10r/s")],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::labels::{routes, Container, LabelSettings, NetworkAddress};

    /// The README names every word a route cannot be (the first segments of dotted keys).
    #[test]
    fn the_readme_names_the_reserved_route_names() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let words = or_list(&reserved_words().iter().map(|w| format!("`{w}`")).collect::<Vec<_>>());
        let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&format!("(`<route>` is `[a-z0-9-]+`, and not {words}:")), "README.md: say {words}");
    }

    /// `docs/labels.md` holds [`reference`] between its table markers; `UPDATE_DOCS=1` rewrites it.
    #[test]
    fn the_docs_table_is_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/labels.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (start, end) = ("<!-- table -->\n", "<!-- end of table -->");
        let a = doc.find(start).expect("docs/labels.md has a table start marker") + start.len();
        let b = doc.find(end).expect("docs/labels.md has a table end marker");
        let table = reference("smart-proxy");
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
            return;
        }
        assert_eq!(&doc[a..b], table, "docs/labels.md is out of date: run UPDATE_DOCS=1 cargo test --lib label_schema");
    }

    /// Each key's example is a valid value: set on a container (with the keys it needs), it
    /// yields a route and no error.
    #[test]
    fn every_example_parses() {
        for key in KEYS.iter().filter(|k| k.key != "nginx") {
            let mut labels = std::collections::BTreeMap::new();
            labels.insert("smart-proxy.domains".to_string(), "example.com".to_string());
            for (k, v) in companions(key.key) {
                labels.insert(format!("smart-proxy.{k}"), v.to_string());
            }
            labels
                .insert(format!("smart-proxy.{}", key.key.replace(NAME_SEGMENT, "X-Example")), key.example.to_string());
            // Keys that refine another one need it.
            let needs = match key.key {
                "backend-verify" => Some(("proto", "https")),
                "fastcgi.root" => Some(("proto", "fastcgi")),
                "redirect.code" | "redirect.keep-path" => Some(("redirect", "https://example.org")),
                _ => None,
            };
            if let Some((needed, value)) = needs {
                labels.insert(format!("smart-proxy.{needed}"), value.to_string());
            }
            let network = if key.key == "network" { key.example } else { "proxy" };
            let c = Container {
                id: "id".into(),
                name: "app".into(),
                labels,
                exposed_ports: vec![8080],
                networks: [(network.to_string(), NetworkAddress { ipv4: Some([172, 18, 0, 2].into()), ipv6: None })]
                    .into(),
                health: None,
                running: true,
                swarm: None,
            };
            let out = routes(&[c], &LabelSettings { prefix: "smart-proxy".into(), nginx_networks: None });
            assert!(out.diagnostics.is_empty(), "{}={}: {:?}", key.key, key.example, out.diagnostics);
            assert!(!out.routes.is_empty(), "{}={} gave no route", key.key, key.example);
        }
    }

    #[test]
    fn examples_parse_by_their_kind_and_bad_values_say_what_is_allowed() {
        for key in KEYS {
            assert!(key.kind.parse(key.example).is_ok(), "{}={}", key.key, key.example);
        }
        // A bad value's message carries its kind's allowed text (one text, from grammar::allowed).
        for (kind, bad, allowed) in [
            (ValueKind::DomainList, "a_b.com", allowed::DOMAIN),
            (ValueKind::Port, "http", allowed::PORT),
            (ValueKind::PathPrefix, "api", allowed::PATH),
            (ValueKind::ServiceName, "-x", allowed::SERVICE),
            (ValueKind::CidrList, "10.0.0.0/8,all", allowed::CIDR),
            (ValueKind::TlsMode, "on", allowed::TLS),
            (ValueKind::Bool, "ture", allowed::BOOL),
        ] {
            let messages = kind.parse(bad).unwrap_err();
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(messages[0].contains(allowed), "{kind:?}: {messages:?}");
            assert!(kind.allowed().contains(allowed), "{kind:?}");
        }
        assert_eq!(
            ValueKind::DomainList.parse(" , ").unwrap_err(),
            ["empty; list one or more host names, comma-separated"]
        );
        assert_eq!(ValueKind::DomainList.parse("a_b.com,x.com,c d.com").unwrap_err().len(), 2);
        assert_eq!(ValueKind::Network.parse(" proxy "), Ok(Value::Network("proxy".into())));
    }

    #[test]
    fn lookup_reads_keys_named_routes_and_typos() {
        assert_eq!(lookup("port"), Lookup::Key(get("port").unwrap()));
        assert_eq!(lookup("enable"), Lookup::Key(get("enable").unwrap()));
        assert_eq!(lookup("admin.port"), Lookup::Named { route: "admin", key: get("port").unwrap() });
        assert_eq!(lookup("Admin.port"), Lookup::BadRoute("Admin"));
        assert_eq!(lookup("admin.enable"), Lookup::Unknown, "a container key has no named-route form");
        assert_eq!(lookup("domian"), Lookup::Unknown);
        assert_eq!(lookup("admin.domian"), Lookup::Unknown);
        assert_eq!(lookup("Admin.domian"), Lookup::Unknown);
        assert_eq!(key_of_label("smart-proxy", "smart-proxy.admin.tls").map(|k| k.key), Some("tls"));
        assert_eq!(key_of_label("a.b", "a.b.port").map(|k| k.key), Some("port"));
        assert_eq!(key_of_label("smart-proxy", "smart-proxyport"), None);
        assert_eq!(key_of_label("smart-proxy", "other.port"), None);
    }

    /// Dotted keys (the next keys: `auth.user`, ...) are matched whole, also after a route name,
    /// and their first segment is reserved: it cannot name a route.
    #[test]
    fn dotted_keys_are_matched_whole_and_reserve_their_first_segment() {
        const DOTTED: &[LabelKey] = &[
            route("port", ValueKind::Port, "", "", "80"),
            route("auth.user", ValueKind::ServiceName, "", "", "admin"),
        ];
        let auth = &DOTTED[1];
        assert_eq!(lookup_in(DOTTED, "auth.user"), Lookup::Key(auth));
        assert_eq!(lookup_in(DOTTED, "admin.auth.user"), Lookup::Named { route: "admin", key: auth });
        assert_eq!(lookup_in(DOTTED, "auth.port"), Lookup::BadRoute("auth"));
        assert_eq!(lookup_in(DOTTED, "auth.other"), Lookup::Unknown);
        assert!(!is_route_name_in(DOTTED, "auth") && is_route_name_in(DOTTED, "authx"));
    }

    #[test]
    fn explain_says_meaning_allowed_and_default_without_markdown() {
        assert_eq!(
            explain("smart-proxy", get("tls").unwrap()),
            "smart-proxy.tls (and smart-proxy.<route>.tls): auto (HTTPS in production) or off (plain HTTP for this \
             route); allowed: 'auto' or 'off'; default: auto"
        );
        assert_eq!(
            explain("sp", get("enable").unwrap()),
            "sp.enable: false ignores the container; allowed: true or false; default: true"
        );
    }

    #[test]
    fn keys_are_unique_and_named_routes_inherit_all_but_domains_service_and_where_they_lead() {
        let mut names: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
        let not_inherited: Vec<&str> =
            KEYS.iter().filter(|k| k.scope == Scope::Route && !k.inherited).map(|k| k.key).collect();
        assert_eq!(not_inherited, ["domains", "service", "redirect", "redirect.code", "redirect.keep-path", "www"]);
    }
}

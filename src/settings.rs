//! Every setting, as a flag and an environment variable (clap `env`), raw: `config.rs` validates
//! them into a `Config` once. The README's settings reference is checked against this list by a
//! test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};

pub use crate::certs::dns::DnsCheck;
use crate::certs::public_ip::PublicIpDetect;
use crate::render::edge::Ipv6Mode;
use crate::render::NginxVersion;
use crate::secret::Secret;

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Do not read container labels; use env and file routes only.
    #[arg(long, env = "NO_DOCKER", global = true, value_parser = boolish("NO_DOCKER", "--no-docker"), action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub no_docker: bool,

    /// Swarm services as a route source: `auto` (when the daemon is a Swarm manager), `on` or `off`.
    #[arg(long, env = "SWARM", global = true, value_enum, default_value = "auto")]
    pub swarm: SwarmMode,

    /// Label prefix: labels are `<prefix>.domains`, `<prefix>.port`, ...
    #[arg(long, env = "LABEL_PREFIX", global = true, default_value = "smart-proxy")]
    pub label_prefix: String,

    /// Seed format: `app1.com:app1,app2.com:app2,status.com` (domain[:service], comma-separated).
    #[arg(long, env = "DOMAINS", global = true)]
    pub domains: Option<String>,

    /// Seed format: `app1:app1:8080,app2:app2:8081` (name:host:port, comma-separated).
    #[arg(long, env = "SERVICES", global = true)]
    pub services: Option<String>,

    /// JSON file with `domains` and `services`.
    #[arg(long, env = "CONFIG_FILE", global = true)]
    pub config_file: Option<PathBuf>,

    /// JSON file with `domains` only.
    #[arg(long, env = "DOMAINS_CONFIG", global = true)]
    pub domains_config: Option<PathBuf>,

    /// JSON file with `services` only.
    #[arg(long, env = "SERVICES_CONFIG", global = true)]
    pub services_config: Option<PathBuf>,

    /// A minijinja template to use instead of the built-in one.
    #[arg(long, env = "NGINX_TEMPLATE", global = true)]
    pub nginx_template: Option<PathBuf>,

    /// The config file the agent writes (included in nginx's http context).
    #[arg(long, env = "NGINX_CONF", global = true, default_value = "/etc/nginx/conf.d/default.conf")]
    pub nginx_conf: PathBuf,

    /// Certificate store in certbot's layout: `<dir>/live/<domain>/{fullchain,privkey}.pem`.
    #[arg(long, env = "CERTS_DIR", global = true, default_value = "/etc/letsencrypt")]
    pub certs_dir: PathBuf,

    /// Directory nginx serves `/.well-known/acme-challenge/` from.
    #[arg(long, env = "ACME_WEBROOT", global = true, default_value = "/var/www/certbot")]
    pub acme_webroot: PathBuf,

    /// Directory for the per-domain access and error logs.
    #[arg(long, env = "LOG_DIR", global = true, default_value = "/var/log/nginx")]
    pub log_dir: PathBuf,

    /// Per-domain error logs, and buffered per-domain access logs, up to this many domains;
    /// above, nginx's main error log only, and access logs written line by line. Each is an open
    /// file in every nginx process, twice during a reload.
    #[arg(long, env = "ERROR_LOGS_MAX", global = true, default_value_t = 1000)]
    pub error_logs_max: usize,

    /// Hand each request's figures to the agent (a buffered access log nginx writes beside
    /// NGINX_CONF and the agent reads), for `/insight`, `/metrics`, `top` and the dashboard.
    #[arg(long, env = "INSIGHT", global = true, value_parser = boolish("INSIGHT", "--insight"), action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub insight: bool,

    /// Also write each domain's JSON access log into LOG_DIR (`<domain>.access.log`).
    #[arg(long, env = "ACCESS_LOG_FILES", global = true, value_parser = boolish("ACCESS_LOG_FILES", "--access-log-files"), action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    pub access_log_files: bool,

    /// Each nginx worker remembers the logins an `auth=basic` route accepted (until a changed
    /// users list is applied, or 10 minutes pass), instead of checking a hash on every request.
    /// Needs nginx's Lua module (Debian's `libnginx-mod-http-lua`, OpenResty) loaded.
    #[arg(long, env = "AUTH_CACHE", global = true, value_parser = boolish("AUTH_CACHE", "--auth-cache"), action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub auth_cache: bool,

    /// Branded error pages: `404.html`, `429.html`, `502.html`, `503.html`, `504.html`.
    #[arg(long, env = "ERROR_PAGES_DIR", global = true)]
    pub error_pages_dir: Option<PathBuf>,

    /// The CA certificates nginx checks an `https`/`grpcs` app's certificate against
    /// (`backend-verify`), as nginx sees the file: an internal CA's, for apps it signs. It replaces
    /// the system bundle: for both kinds of app, give one file holding both.
    #[arg(long, env = "BACKEND_CA", global = true, default_value = crate::render::BACKEND_CA)]
    pub backend_ca: PathBuf,

    /// Also listen on IPv6 (`[::]`): `auto` (when the kernel has IPv6), `on` or `off`.
    #[arg(long, env = "IPV6", global = true, value_enum, default_value = "auto")]
    pub ipv6: Ipv6Mode,

    /// Peers whose client-address header nginx believes: `cloudflare` (the shipped list) and IPs
    /// or CIDR ranges, comma-separated.
    #[arg(long, env = "TRUSTED_PROXIES", global = true, default_value = "")]
    pub trusted_proxies: String,

    /// Where `TRUSTED_PROXIES=cloudflare` refreshes Cloudflare's ranges from, daily (its API's
    /// `/ips` or a list of one range per line); unset: the list shipped in the binary.
    #[arg(long, env = "CLOUDFLARE_IPS_URL", global = true)]
    pub cloudflare_ips_url: Option<String>,

    /// Where a trusted peer puts the client's address: a header (`X-Forwarded-For`,
    /// `CF-Connecting-IP`) or `proxy_protocol`.
    #[arg(long, env = "REAL_IP_HEADER", global = true)]
    pub real_ip_header: Option<String>,

    /// Local mode: HTTP only, no certificates, no redirects.
    #[arg(long, env = "LOCAL", global = true, value_parser = boolish("LOCAL", "--local"), action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub local: bool,

    /// Port nginx listens on for HTTP.
    #[arg(long, env = "HTTP_PORT", global = true, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    pub http_port: u16,

    /// Port nginx listens on for HTTPS.
    #[arg(long, env = "HTTPS_PORT", global = true, default_value_t = 443, value_parser = clap::value_parser!(u16).range(1..))]
    pub https_port: u16,

    /// The target nginx version (decides `http2 on;` vs `listen ... http2`); default: ask `nginx -v`,
    /// else assume 1.27.
    #[arg(long, env = "NGINX_VERSION", global = true)]
    pub nginx_version: Option<NginxVersion>,

    /// The nginx binary (for `nginx -v`, and to run nginx in the same container).
    #[arg(long, env = "NGINX_BIN", global = true, default_value = "nginx")]
    pub nginx_bin: PathBuf,

    /// nginx's main config (passed with `-c`); `NGINX_CONF` must be inside its directory.
    #[arg(long, env = "NGINX_MAIN_CONF", global = true, default_value = "/etc/nginx/nginx.conf")]
    pub nginx_main_conf: PathBuf,

    /// Quiet time after the last Docker or file event before a pass runs (trailing debounce).
    #[arg(long, env = "DEBOUNCE", global = true, default_value = "100ms")]
    pub debounce: humantime::Duration,

    /// The longest a pass waits while events keep coming. A long value hides updates longer.
    /// In a storm (10 containers changing within 5 x DEBOUNCE_MAX, or 5 while passes take 40% of
    /// that time) a pass waits for 2 x DEBOUNCE_MAX of quiet, and this maximum grows fourfold with
    /// each burst that begins within DEBOUNCE_MAX of the last pass (4x, 16x, 64x), up to 60 s.
    #[arg(long, env = "DEBOUNCE_MAX", global = true, default_value = "1s")]
    pub debounce_max: humantime::Duration,

    /// `heal=restart`: restart a container once every request to it has failed this long.
    #[arg(long, env = "HEAL_AFTER", global = true, default_value = "60s")]
    pub heal_after: humantime::Duration,

    /// Anomaly flags: the minutes of baseline a domain's error ratio and latency need before they
    /// are judged (whole minutes, 1m to 60m).
    #[arg(long, env = "ANOMALY_WARMUP", global = true, default_value = "5m")]
    pub anomaly_warmup: humantime::Duration,

    /// Full resync with the Docker host (list and inspect every labelled container) this often.
    #[arg(long, env = "RESYNC_INTERVAL", global = true, default_value = "5m")]
    pub resync_interval: humantime::Duration,

    /// The nginx container (name or id) in the companion setup; its networks decide which
    /// container addresses are used. Default: the container labelled `<prefix>.nginx=true`.
    #[arg(long, env = "NGINX_CONTAINER", global = true)]
    pub nginx_container: Option<String>,

    /// Name servers nginx uses for static service host names, comma-separated; default: those
    /// in /etc/resolv.conf.
    #[arg(long, env = "RESOLVER", global = true, value_delimiter = ',')]
    pub resolver: Vec<IpAddr>,

    /// Renew a certificate when this many days or fewer are left.
    #[arg(long, env = "CERT_RENEWAL_THRESHOLD", global = true, default_value_t = 30)]
    pub cert_renewal_threshold: i64,

    /// Certificates from ACME: `on`, `off`, or `auto` (on in production mode when ACME_EMAIL or
    /// CERTBOT_EMAIL is set).
    #[arg(long, env = "ACME", global = true, value_enum, default_value = "auto")]
    pub acme: AcmeMode,

    /// Contact email of the ACME account (alias: CERTBOT_EMAIL).
    #[arg(long, env = "ACME_EMAIL", global = true)]
    pub acme_email: Option<String>,

    /// `letsencrypt`, `letsencrypt-staging`, or the directory URL of another ACME CA.
    #[arg(long, env = "ACME_DIRECTORY", global = true, default_value = "letsencrypt")]
    pub acme_directory: String,

    /// External account binding key id, for CAs that require one.
    #[arg(long, env = "ACME_EAB_KID", global = true)]
    pub acme_eab_kid: Option<String>,

    /// External account binding HMAC key (base64url).
    #[arg(long, env = "ACME_EAB_HMAC_KEY", global = true, hide_env_values = true)]
    pub acme_eab_hmac_key: Option<Secret>,

    /// A PEM root to trust for the ACME server's TLS (a private CA; tests).
    #[arg(long, env = "ACME_CA_ROOT", global = true)]
    pub acme_ca_root: Option<PathBuf>,

    /// Orders run at once across domains (one per domain at a time).
    #[arg(long, env = "ACME_CONCURRENCY", global = true, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub acme_concurrency: u16,

    /// Check certificates this often (also at start and when routes change). Accepts d, h, m.
    #[arg(long, env = "RENEWAL_INTERVAL", global = true, default_value = "3d")]
    pub renewal_interval: humantime::Duration,

    /// Cloudflare API token with Zone:DNS:Edit (recommended): enables DNS-01.
    #[arg(long, env = "CLOUDFLARE_API_TOKEN", global = true, hide_env_values = true)]
    pub cloudflare_api_token: Option<Secret>,

    /// A file holding the Cloudflare API token (Docker secret).
    #[arg(long, env = "CLOUDFLARE_API_TOKEN_FILE", global = true)]
    pub cloudflare_api_token_file: Option<PathBuf>,

    /// Cloudflare account email, with CLOUDFLARE_API_KEY (the seed's global key).
    #[arg(long, env = "CLOUDFLARE_EMAIL", global = true)]
    pub cloudflare_email: Option<String>,

    /// Cloudflare global API key, with CLOUDFLARE_EMAIL.
    #[arg(long, env = "CLOUDFLARE_API_KEY", global = true, hide_env_values = true)]
    pub cloudflare_api_key: Option<Secret>,

    /// A file holding the Cloudflare global API key (Docker secret).
    #[arg(long, env = "CLOUDFLARE_API_KEY_FILE", global = true)]
    pub cloudflare_api_key_file: Option<PathBuf>,

    /// Cloudflare API base URL.
    #[arg(long, env = "CLOUDFLARE_API_BASE", global = true, default_value = "https://api.cloudflare.com/client/v4")]
    pub cloudflare_api_base: String,

    /// Before ordering, check that the domain's A/AAAA records point at this server:
    /// `strict` (skip the domain), `warn` (say so, go on) or `off`.
    #[arg(long, env = "DNS_CHECK", global = true, value_enum, default_value = "warn")]
    pub dns_check: DnsCheck,

    /// This server's public addresses, comma-separated (v4 and v6); default: detected
    /// (PUBLIC_IP_DETECT).
    #[arg(long, env = "PUBLIC_IP", global = true, value_delimiter = ',')]
    pub public_ip: Vec<IpAddr>,

    /// How to detect this server's public addresses when PUBLIC_IP is not set: `off`, or a
    /// comma-separated list of `interfaces` (global interface addresses), `dns` (OpenDNS:
    /// myip.opendns.com at 208.67.222.222 and 2620:119:35::35), `dns:NAME@SERVER` (SERVER `ip` or
    /// `ip:port`) and `http(s)://URL` (an echo answering with the address). All are asked and their
    /// answers joined; cached for an hour.
    #[arg(long, env = "PUBLIC_IP_DETECT", global = true, default_value = crate::certs::public_ip::DETECT_DEFAULT)]
    pub public_ip_detect: PublicIpDetect,

    /// Name servers for DNS checks, `ip` or `ip:port`, comma-separated; default: the system's.
    #[arg(long, env = "DNS_RESOLVERS", global = true, value_delimiter = ',')]
    pub dns_resolvers: Vec<String>,

    /// How long to wait for a DNS-01 TXT record to reach the zone's authoritative servers.
    #[arg(long, env = "DNS_PROPAGATION_TIMEOUT", global = true, default_value = "120s")]
    pub dns_propagation_timeout: humantime::Duration,

    /// The status endpoint (/healthz, /metrics, /routes) as ip:port, or `off`. The `health`
    /// command asks it (on loopback when the address is a wildcard).
    #[arg(long, env = "STATUS_ADDR", global = true, default_value = "127.0.0.1:9180")]
    pub status_addr: StatusAddr,

    /// The bearer token of the status endpoint (dashboard, /routes, /metrics...; not /healthz).
    /// Required when STATUS_ADDR is not a loopback address; on loopback, required only if set.
    #[arg(long, env = "STATUS_TOKEN", global = true, hide_env_values = true)]
    pub status_token: Option<Secret>,

    /// A file holding the key the agent shares with its followers (at least 32 bytes; a Docker
    /// secret). On the agent it turns the follower endpoint on (FOLLOW_ADDR); `follow` needs it.
    #[arg(long, env = "FOLLOWER_KEY_FILE", global = true)]
    pub follower_key_file: Option<PathBuf>,

    /// Where the agent serves bundles to followers, ip:port (only with FOLLOWER_KEY_FILE).
    #[arg(long, env = "FOLLOW_ADDR", global = true, default_value = "0.0.0.0:9181")]
    pub follow_addr: SocketAddr,

    /// `follow`: the agent's follower endpoint, http://host:port.
    #[arg(long, env = "FOLLOW_URL", global = true)]
    pub follow_url: Option<String>,

    /// `follow`: this node's name, as the agent shows it (default: the host name).
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcmeMode {
    Auto,
    On,
    Off,
}

/// `SWARM`: whether Swarm services (their `deploy.labels`) are read besides containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SwarmMode {
    /// When Docker says it is a Swarm manager (`docker info`: `Swarm.ControlAvailable`).
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `STATUS_ADDR`: where the status endpoint listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAddr {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for StatusAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(StatusAddr::Off);
        }
        s.parse().map(StatusAddr::At).map_err(|_| {
            format!(
                "STATUS_ADDR must be ip:port (127.0.0.1:9180, 0.0.0.0:9180, [::]:9180) or off; {:?} is neither",
                crate::routes::grammar::show(s)
            )
        })
    }
}

impl std::fmt::Display for StatusAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusAddr::Off => f.write_str("off"),
            StatusAddr::At(addr) => addr.fmt(f),
        }
    }
}

impl StatusAddr {
    /// The address a client on this host connects to: loopback for a wildcard bind.
    pub fn connect_addr(&self) -> Option<SocketAddr> {
        match *self {
            StatusAddr::Off => None,
            StatusAddr::At(addr) => Some(match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
                IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
                _ => addr,
            }),
        }
    }
}

/// A yes/no setting: clap's own message names only the flag, so this one names the environment
/// variable too and every accepted spelling (those of clap's `BoolishValueParser`).
fn boolish(var: &'static str, flag: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync {
    move |value| match value.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Ok(false),
        _ => Err(format!("{var} (or {flag}) must be true or false (also yes/no, on/off, 1/0)")),
    }
}

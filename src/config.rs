//! The validated configuration, built once from the raw [`Settings`] (flags and environment) by
//! [`Config::from_settings`]: paths checked, the mode decided, nginx's version and name servers
//! asked, secret files read, the certificate settings checked together. Everything after the
//! command line takes a `Config`; only `health` (which needs nothing but `STATUS_ADDR`) and the
//! log setup read `Settings`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::certs::acme::{AcmeError, AcmeSettings};
use crate::certs::cloudflare::{CloudflareError, Credentials};
use crate::certs::dns::{self, DnsError};
use crate::certs::manager::CertManager;
pub use crate::certs::manager::{AcmeConfig, Dns01};
use crate::render::edge::{ErrorPages, Ipv6Mode, RealIp, ERROR_CODES};
use crate::render::{ConfigPath, NginxVersion, RenderError, RenderSettings};
use crate::settings::{AcmeMode, Settings, StatusAddr};
use crate::sources::StaticConfig;

/// Production serves every route over HTTPS (unless it says `tls=off`) and orders certificates;
/// local (`LOCAL=true`) serves HTTP only, with no certificates and no redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Production,
}

impl Mode {
    pub fn is_local(self) -> bool {
        self == Mode::Local
    }
}

/// Everything the agent and the commands need, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// False with NO_DOCKER: env and file routes only.
    pub docker: bool,
    /// `SWARM`: read Swarm services too (`auto`: when Docker is a Swarm manager).
    pub swarm: crate::settings::SwarmMode,
    pub label_prefix: String,
    pub statics: StaticConfig,
    /// `NGINX_TEMPLATE`, when the built-in template is not used.
    pub template: Option<PathBuf>,
    pub nginx: NginxSetup,
    /// What shapes the rendered config besides the routes (nginx's version and name servers
    /// resolved).
    pub render: RenderSettings,
    pub certs_dir: PathBuf,
    /// Renew a certificate when this many days or fewer are left.
    pub renew_days: i64,
    /// `None`: the agent orders no certificates (local mode, `ACME=off`, or no email with `auto`).
    pub acme: Option<AcmeConfig>,
    pub timing: Timing,
    pub status_addr: StatusAddr,
    /// `STATUS_TOKEN` (an empty value is unset): see `dashboard::auth`.
    pub status_token: Option<crate::secret::Secret>,
    /// `CLOUDFLARE_IPS_URL`, when Cloudflare's ranges are refreshed.
    pub cloudflare_ips_url: Option<reqwest::Url>,
    /// Followers (`FOLLOWER_KEY_FILE` set): the key, `FOLLOW_ADDR`, `FOLLOW_URL`, `NODE_NAME`.
    pub follow: Option<crate::follow::FollowSetup>,
}

/// Which nginx, and the file the agent writes.
#[derive(Debug, Clone)]
pub struct NginxSetup {
    /// `NGINX_CONF`: the config file the agent writes.
    pub conf: PathBuf,
    pub bin: PathBuf,
    pub main_conf: PathBuf,
    /// `NGINX_CONTAINER`: the companion container, when set.
    pub container: Option<String>,
}

/// When passes run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub resync: Duration,
    /// `heal=restart`: how long every request must have failed (`HEAL_AFTER`).
    pub heal_after: Duration,
    /// Minutes of baseline before anomaly flags are judged (`ANOMALY_WARMUP`).
    pub anomaly_warmup_minutes: u32,
}

/// A setting that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Path(#[from] RenderError),
    #[error("DNS_RESOLVERS: {0}")]
    DnsServer(DnsError),
    #[error(transparent)]
    Cloudflare(#[from] CloudflareError),
    #[error(transparent)]
    Acme(Box<AcmeError>),
    #[error("ANOMALY_WARMUP={0}: give whole minutes from 1m to 60m")]
    AnomalyWarmup(String),
    #[error("set both ACME_EAB_KID and ACME_EAB_HMAC_KEY for external account binding, or neither")]
    EabHalf,
    #[error("{0}")]
    Follow(String),
}

impl Config {
    /// Validates `settings` and resolves what they leave to the host: `nginx -v` when
    /// NGINX_VERSION is unset, /etc/resolv.conf when RESOLVER is unset, secret files.
    pub fn from_settings(settings: &Settings) -> Result<Config, ConfigError> {
        let mode = if settings.local { Mode::Local } else { Mode::Production };
        let render = RenderSettings {
            local: mode.is_local(),
            http_port: settings.http_port,
            https_port: settings.https_port,
            certs_dir: ConfigPath::parse("CERTS_DIR", &settings.certs_dir)?,
            acme_webroot: ConfigPath::parse("ACME_WEBROOT", &settings.acme_webroot)?,
            log_dir: ConfigPath::parse("LOG_DIR", &settings.log_dir)?,
            nginx_version: settings.nginx_version.unwrap_or_else(|| detect_nginx_version(&settings.nginx_bin)),
            resolver: if settings.resolver.is_empty() { system_resolvers() } else { settings.resolver.clone() },
            error_logs_max: settings.error_logs_max,
            ipv6: listen_ipv6(settings.ipv6, Path::new("/proc/net/if_inet6")),
            real_ip: RealIp::from_settings(&settings.trusted_proxies, settings.real_ip_header.as_deref())?,
            error_pages: read_error_pages(settings.error_pages_dir.as_deref())?,
            auth_dir: crate::render::auth_dir_for(&settings.nginx_conf)?,
            insight_log: if settings.insight {
                Some(crate::render::insight_log_for(&settings.nginx_conf)?)
            } else {
                None
            },
            access_log_files: settings.access_log_files,
            backend_ca: ConfigPath::parse("BACKEND_CA", &settings.backend_ca)?,
            // The agent turns it on once it knows nginx is its child.
            insight_from_access_logs: false,
            // The applier names the generation of the users lists it writes.
            auth_cache: settings.auth_cache.then(String::new),
        };
        Ok(Config {
            mode,
            docker: !settings.no_docker,
            swarm: settings.swarm,
            label_prefix: settings.label_prefix.clone(),
            statics: StaticConfig {
                domains: settings.domains.clone(),
                services: settings.services.clone(),
                config_file: settings.config_file.clone(),
                domains_config: settings.domains_config.clone(),
                services_config: settings.services_config.clone(),
            },
            template: settings.nginx_template.clone(),
            nginx: NginxSetup {
                conf: settings.nginx_conf.clone(),
                bin: settings.nginx_bin.clone(),
                main_conf: settings.nginx_main_conf.clone(),
                container: settings.nginx_container.clone(),
            },
            render,
            certs_dir: settings.certs_dir.clone(),
            renew_days: settings.cert_renewal_threshold,
            acme: acme_config(settings, mode)?,
            timing: Timing {
                debounce: settings.debounce.into(),
                debounce_max: settings.debounce_max.into(),
                resync: settings.resync_interval.into(),
                heal_after: settings.heal_after.into(),
                anomaly_warmup_minutes: anomaly_warmup(settings.anomaly_warmup)?,
            },
            status_addr: settings.status_addr,
            status_token: settings.status_token.clone().filter(|t| !t.expose().is_empty()),
            cloudflare_ips_url: settings.cloudflare_ips_url.as_deref().map(cloudflare_ips_url).transpose()?,
            follow: settings
                .follower_key_file
                .as_deref()
                .map(|key| {
                    crate::follow::FollowSetup::new(
                        key,
                        settings.follow_addr,
                        settings.follow_url.as_deref(),
                        settings.node_name.as_deref(),
                    )
                })
                .transpose()
                .map_err(ConfigError::Follow)?,
        })
    }

    /// The certificate manager, when certificates are ordered.
    pub fn cert_manager(&self) -> anyhow::Result<Option<CertManager>> {
        self.acme.as_ref().map(|acme| CertManager::new(acme, &self.certs_dir, self.renew_days)).transpose()
    }

    /// Whether routes are served over HTTPS and need certificates.
    pub fn serves_tls(&self) -> bool {
        !self.mode.is_local()
    }
}

/// Reads which pages `dir` holds; a missing or unreadable directory, or a page that cannot be
/// read, is an error naming it.
pub fn read_error_pages(dir: Option<&Path>) -> Result<ErrorPages, RenderError> {
    let Some(dir) = dir else { return Ok(ErrorPages::default()) };
    let path = ConfigPath::parse("ERROR_PAGES_DIR", dir)?;
    let bad =
        |reason: String| RenderError::Setting { setting: "ERROR_PAGES_DIR", value: dir.display().to_string(), reason };
    if !dir.is_dir() {
        return Err(bad(
            "it is not a directory (in the companion setup, mount it in both containers at this path)".into()
        ));
    }
    let mut files = Vec::new();
    for code in ERROR_CODES {
        let file = dir.join(format!("{code}.html"));
        match std::fs::File::open(&file) {
            Ok(_) => files.push(code),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(format!("cannot read {}: {e}", file.display()))),
        }
    }
    if files.is_empty() {
        return Err(bad(format!("it holds none of {}", ERROR_CODES.map(|c| format!("{c}.html")).join(", "))));
    }
    Ok(ErrorPages { dir: Some(path), files })
}

/// `IPV6`: whether nginx also listens on `[::]`. `auto`: when the kernel has IPv6 (`if_inet6`, its
/// interface list, exists even when sysctl disables IPv6 on every interface, as in Docker
/// containers, where listening on `[::]` still works; nginx fails to start on a `[::]` listener
/// of a kernel booted without it). The kernel is the host's, shared by the agent's container and
/// a companion nginx container, so asking here answers for both.
fn listen_ipv6(mode: Ipv6Mode, if_inet6: &Path) -> bool {
    match mode {
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => if_inet6.exists(),
    }
}

/// `ANOMALY_WARMUP`: whole minutes, 1 to 60.
fn anomaly_warmup(warmup: humantime::Duration) -> Result<u32, ConfigError> {
    let secs = warmup.as_secs();
    match (secs % 60, secs / 60, warmup.subsec_nanos()) {
        (0, minutes @ 1..=60, 0) => Ok(minutes as u32),
        _ => Err(ConfigError::AnomalyWarmup(warmup.to_string())),
    }
}

/// `CLOUDFLARE_IPS_URL`: an `http` or `https` URL.
fn cloudflare_ips_url(text: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = |reason: &str| {
        ConfigError::Path(RenderError::Setting {
            setting: "CLOUDFLARE_IPS_URL",
            value: text.to_string(),
            reason: reason.into(),
        })
    };
    let url = reqwest::Url::parse(text.trim()).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("must be an http or https URL with a host"));
    }
    Ok(url)
}

/// The certificate settings; `None` when no certificates are ordered: never in local mode; with
/// `ACME=auto` only when an email is set (ACME_EMAIL, or the seed's CERTBOT_EMAIL).
fn acme_config(settings: &Settings, mode: Mode) -> Result<Option<AcmeConfig>, ConfigError> {
    let email =
        settings.acme_email.clone().or_else(|| std::env::var("CERTBOT_EMAIL").ok()).filter(|e| !e.trim().is_empty());
    let enabled = match settings.acme {
        AcmeMode::On => true,
        AcmeMode::Off => false,
        AcmeMode::Auto => email.is_some(),
    };
    if mode.is_local() || !enabled {
        return Ok(None);
    }
    let eab = match (&settings.acme_eab_kid, &settings.acme_eab_hmac_key) {
        (Some(kid), Some(key)) => Some((kid.clone(), key.clone())),
        (None, None) => None,
        _ => return Err(ConfigError::EabHalf),
    };
    let account =
        AcmeSettings { directory: settings.acme_directory.clone(), email, eab, ca_root: settings.acme_ca_root.clone() };
    account.directory_url().map_err(|e| ConfigError::Acme(Box::new(e)))?;
    let credentials = Credentials::from_values(
        settings.cloudflare_api_token.as_ref().map(|s| s.expose()),
        settings.cloudflare_api_token_file.as_deref(),
        settings.cloudflare_email.as_deref(),
        settings.cloudflare_api_key.as_ref().map(|s| s.expose()),
        settings.cloudflare_api_key_file.as_deref(),
    )?;
    Ok(Some(AcmeConfig {
        account,
        concurrency: usize::from(settings.acme_concurrency),
        renewal_interval: settings.renewal_interval.into(),
        dns01: credentials.map(|credentials| Dns01 {
            api_base: settings.cloudflare_api_base.clone(),
            credentials,
            propagation_timeout: settings.dns_propagation_timeout.into(),
        }),
        dns_servers: settings
            .dns_resolvers
            .iter()
            .map(|s| dns::parse_server(s))
            .collect::<Result<_, _>>()
            .map_err(ConfigError::DnsServer)?,
        dns_check: settings.dns_check,
        public_ip: settings.public_ip.clone(),
        public_ip_detect: settings.public_ip_detect.clone(),
        webroot: settings.acme_webroot.clone(),
    }))
}

/// `nginx -v`, or the assumed version when nginx is not installed here (companion setup, dry runs).
pub fn detect_nginx_version(nginx_bin: &Path) -> NginxVersion {
    std::process::Command::new(nginx_bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| NginxVersion::parse(&String::from_utf8_lossy(&o.stderr)))
        .unwrap_or(NginxVersion::ASSUMED)
}

/// The `nameserver` lines of /etc/resolv.conf (Docker's embedded DNS inside a container).
fn system_resolvers() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect();
    if found.is_empty() {
        vec![IpAddr::from([127, 0, 0, 11])]
    } else {
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_come_from_files_named_by_code() {
        assert_eq!(read_error_pages(None).unwrap(), ErrorPages::default());
        let dir = tempfile::tempdir().unwrap();
        let e = read_error_pages(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("ERROR_PAGES_DIR") && e.contains("none of 404.html, 429.html"), "{e}");
        for name in ["502.html", "504.html", "500.html", "index.html"] {
            std::fs::write(dir.path().join(name), "<h1>down</h1>").unwrap();
        }
        let pages = read_error_pages(Some(dir.path())).unwrap();
        assert_eq!(pages.files, vec![502, 504]);
        let e = read_error_pages(Some(&dir.path().join("missing"))).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn ipv6_follows_the_kernel() {
        assert!(!listen_ipv6(Ipv6Mode::Auto, Path::new("/nonexistent/if_inet6")));
        assert!(listen_ipv6(Ipv6Mode::On, Path::new("/nonexistent")) && !listen_ipv6(Ipv6Mode::Off, Path::new("/")));
    }

    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        settings: Settings,
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["test", "--nginx-version", "1.27.0", "--resolver", "127.0.0.11"];
        all.extend_from_slice(args);
        Config::from_settings(&Args::try_parse_from(all).expect("valid flags").settings)
    }

    #[test]
    fn the_mode_decides_tls_and_certificates() {
        let local = config(&["--local", "--acme", "on"]).unwrap();
        assert_eq!(local.mode, Mode::Local);
        assert!(local.render.local && !local.serves_tls());
        assert!(local.acme.is_none(), "no certificates in local mode, even with ACME=on");

        let production = config(&["--acme", "on", "--acme-email", "ops@example.com"]).unwrap();
        assert_eq!(production.mode, Mode::Production);
        assert!(!production.render.local && production.serves_tls());
        let acme = production.acme.expect("ACME on");
        assert_eq!(acme.account.email.as_deref(), Some("ops@example.com"));
        assert!(acme.dns01.is_none(), "no DNS provider credentials: HTTP-01");

        assert!(config(&["--acme", "off", "--acme-email", "ops@example.com"]).unwrap().acme.is_none());
    }

    #[test]
    fn nginx_and_name_servers_are_resolved_once() {
        let c = config(&[]).unwrap();
        assert_eq!(c.render.nginx_version, NginxVersion::parse("nginx version: nginx/1.27.0").unwrap());
        assert_eq!(c.render.resolver, vec![IpAddr::from([127, 0, 0, 11])]);
    }

    #[test]
    fn certificate_settings_are_checked_together() {
        let half = config(&["--acme", "on", "--acme-eab-kid", "kid"]).unwrap_err();
        assert!(half.to_string().contains("ACME_EAB_KID and ACME_EAB_HMAC_KEY"), "{half}");

        let directory = config(&["--acme", "on", "--acme-directory", "http://ca.test/dir"]).unwrap_err();
        assert!(matches!(directory, ConfigError::Acme(_)), "{directory}");

        let resolver = config(&["--acme", "on", "--dns-resolvers", "not-an-address"]).unwrap_err();
        assert!(resolver.to_string().starts_with("DNS_RESOLVERS: "), "{resolver}");
    }

    #[test]
    fn secret_files_are_read_here_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-token-value\n").unwrap();
        let c = config(&["--acme", "on", "--cloudflare-api-token-file", file.to_str().unwrap()]).unwrap();
        let dns01 = c.acme.unwrap().dns01.expect("DNS-01 with a token");
        assert!(matches!(&dns01.credentials, Credentials::Token(t) if t.expose() == "s3cret-token-value"));
        assert!(!format!("{dns01:?}").contains("s3cret"), "Debug shows no secret");

        let missing = dir.path().join("absent");
        let e = config(&["--acme", "on", "--cloudflare-api-token-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("CLOUDFLARE_API_TOKEN_FILE"), "{e}");
    }
}

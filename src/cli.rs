//! The command line. `main` only maps the outcome to an exit code: 0 ok, 1 invalid input, 2 usage.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::certs::placeholder;
use crate::config::Config;
use crate::pipeline;
use crate::render::{RenderSettings, Renderer};
use crate::report::Report;
use crate::settings::{LogFormat, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "nginx-smart-proxy",
    version,
    about = "Keeps nginx in sync with Docker labels and DOMAINS/SERVICES, safely"
)]
pub struct Cli {
    /// Print the config that would be applied, and exit (writes nothing).
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: write the config to this file instead of standard output.
    #[arg(long, short, requires = "dry_run")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: keep nginx in sync with the Docker host (the default).
    Run,
    /// Print the route table (domain → servers, source, network, TLS, allowlist) and every error.
    Check {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Ask the running agent's status endpoint (GET /healthz on STATUS_ADDR): exit 0 when healthy,
    /// 1 with the reason otherwise. For Docker's HEALTHCHECK.
    Health,
    /// Live traffic per domain from the running agent's /insight on STATUS_ADDR (with
    /// STATUS_TOKEN when set): req/s, status classes, p50/p95, upstream errors, anomaly flags.
    /// Keys: r, e, p, n sort; q quits. Plain text when stdout is not a terminal.
    Top {
        /// Print one table and exit.
        #[arg(long)]
        once: bool,
        /// The order of the lines.
        #[arg(long, value_enum, default_value = "rate")]
        sort: crate::top::Sort,
    },
    /// Follow an agent without a Docker socket: run nginx as a child and keep it on the agent's
    /// bundles (FOLLOW_URL, FOLLOWER_KEY_FILE, NODE_NAME; the usual NGINX_*, CERTS_DIR paths).
    Follow {
        /// nginx runs already (with NGINX_MAIN_CONF): reload it with `nginx -s reload` instead
        /// of running it as a child.
        #[arg(long)]
        beside: bool,
    },
    /// Print the JSON Schema of the JSON config file (CONFIG_FILE, DOMAINS_CONFIG, SERVICES_CONFIG).
    ConfigSchema,
    /// Certificates of the routed TLS domains.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Domain, issuer, expiry, days left and status (valid, renew-due, placeholder, missing,
    /// renewing, failing with the last error and the next try).
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Order certificates now for the given domains (default: every TLS domain that needs one),
    /// then reload nginx.
    Renew {
        /// Order even when the certificate is fresh or the domain is in backoff.
        #[arg(long)]
        force: bool,
        domains: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Exit codes.
pub const EXIT_OK: u8 = 0;
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    // Colour only for a person at a terminal: `docker logs` and files get plain text, and a set
    // NO_COLOR (https://no-color.org) turns it off there too.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let (Some(Command::Health), false) = (&cli.command, cli.dry_run) {
        // Docker runs it every interval: it needs the status address and nothing else.
        return Ok(health(cli.settings.status_addr).await);
    }
    if let (Some(Command::Top { once, sort }), false) = (&cli.command, cli.dry_run) {
        // Like `health`: the status address (and its token), nothing else.
        let token = cli.settings.status_token.as_ref().filter(|t| !t.expose().is_empty());
        crate::top::run(cli.settings.status_addr, token, *sort, *once).await?;
        return Ok(EXIT_OK);
    }
    if let (Some(Command::ConfigSchema), false) = (&cli.command, cli.dry_run) {
        // A constant: it needs no setting.
        std::io::stdout().write_all(crate::sources::config_schema::json_schema_text().as_bytes())?;
        return Ok(EXIT_OK);
    }
    let config = Config::from_settings(&cli.settings)?;
    if cli.dry_run {
        return dry_run(&config, cli.output.as_deref()).await;
    }
    match cli.command {
        Some(Command::Check { format }) => check(&config, format).await,
        Some(Command::Certs { command: CertsCommand::List { format } }) => certs_list(&config, format).await,
        Some(Command::Certs { command: CertsCommand::Renew { force, domains } }) => {
            certs_renew(&config, force, &domains).await
        }
        Some(Command::Health | Command::ConfigSchema | Command::Top { .. }) => unreachable!("answered above"),
        Some(Command::Follow { beside }) => {
            let Some(setup) = config.follow.clone() else {
                anyhow::bail!("follow needs FOLLOWER_KEY_FILE (the key shared with the agent) and FOLLOW_URL");
            };
            let options = crate::follow::client::Options {
                setup,
                render: config.render.clone(),
                conf: config.nginx.conf.clone(),
                bin: config.nginx.bin.clone(),
                main_conf: config.nginx.main_conf.clone(),
                certs_dir: config.certs_dir.clone(),
                health_addr: match config.status_addr {
                    crate::status::StatusAddr::At(addr) => Some(addr),
                    crate::status::StatusAddr::Off => None,
                },
                beside,
            };
            crate::follow::client::run(options, shutdown_signal()).await?;
            Ok(EXIT_OK)
        }
        Some(Command::Run) | None => {
            crate::agent::run(config, shutdown_signal()).await?;
            Ok(EXIT_OK)
        }
    }
}

/// The table as the agent builds it (without what the template cannot render, nor routes whose
/// users-file cannot be used).
async fn gather_and_warn(config: &Config) -> anyhow::Result<pipeline::Gathered> {
    let renderer = Renderer::for_template(config.template.as_deref())?;
    let mut gathered = pipeline::gather(config).await;
    gathered.table = crate::apply::auth_files::without_unusable(renderer.fit(gathered.table));
    if let Some(e) = &gathered.docker_unavailable {
        tracing::warn!("{e}; container labels were not read, showing env/file routes only");
    }
    if let Some(e) = &gathered.nginx_unknown {
        tracing::warn!("{e}; nginx's networks are unknown, so container addresses are chosen without them");
    }
    Ok(gathered)
}

async fn dry_run(config: &Config, output: Option<&std::path::Path>) -> anyhow::Result<u8> {
    let renderer = Renderer::for_template(config.template.as_deref())?;
    let gathered = gather_and_warn(config).await?;
    let table = &gathered.table;
    // As the agent would: insight reads the access logs where the agent sees them as nginx does.
    let docker = if config.docker { crate::sources::docker::DockerClient::connect().await.ok() } else { None };
    let fold = match crate::agent::choose_nginx(config, docker.as_ref()).await {
        Ok(nginx) => crate::agent::reads_access_logs(config, &nginx).await,
        Err(_) => false,
    };
    let settings = RenderSettings { insight_from_access_logs: fold, ..config.render.clone() };
    // With AUTH_CACHE, the generation of the users lists the agent would write.
    let settings = crate::apply::auth_files::AuthFiles::of(table).settings(&settings).unwrap_or(settings);
    let rendered = renderer.render(table, &settings)?;
    match output {
        Some(path) => std::fs::write(path, &rendered).with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().write_all(rendered.as_bytes())?,
    }
    let mut stderr = std::io::stderr().lock();
    for d in &table.diagnostics {
        writeln!(stderr, "{d}")?;
    }
    if config.serves_tls() {
        let missing = placeholder::missing(&config.certs_dir, table);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            writeln!(
                stderr,
                "note: no certificate yet for {}: a self-signed placeholder would be written under {}/live/ (dry run: nothing written)",
                list.join(", "),
                config.certs_dir.display()
            )?;
        }
    }
    match config.cert_manager() {
        Ok(None) => {}
        Ok(Some(manager)) => {
            let plan = manager.plan(&table.tls_domains(), &[]);
            for order in &plan.orders {
                writeln!(
                    stderr,
                    "note: would order a certificate for {} ({}) with {}",
                    order.domain, order.reason, order.challenge
                )?;
            }
            for (domain, skip) in &plan.skipped {
                writeln!(stderr, "note: no order for {domain}: {skip}")?;
            }
        }
        Err(e) => writeln!(stderr, "error: certificates: {e:#}")?,
    }
    Ok(exit_code(table))
}

async fn check(config: &Config, format: Format) -> anyhow::Result<u8> {
    let gathered = gather_and_warn(config).await?;
    let table = &gathered.table;
    let missing = if config.serves_tls() { placeholder::missing(&config.certs_dir, table) } else { Vec::new() };
    let report = Report::new(table, config.mode.is_local(), &missing)
        .with_swarm(&gathered.swarm)
        .explaining_labels(&config.label_prefix);
    let text = match format {
        Format::Text => report.to_text(),
        Format::Json => report.to_json() + "\n",
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(exit_code(table))
}

/// `health`: the agent's `/healthz`, with a quick timeout (Docker runs it every interval).
async fn health(addr: crate::status::StatusAddr) -> u8 {
    match crate::status::check_health(addr, std::time::Duration::from_secs(2)).await {
        Ok(body) => {
            println!("{body}");
            EXIT_OK
        }
        Err(reason) => {
            println!("unhealthy: {reason}");
            EXIT_INVALID
        }
    }
}

/// SIGTERM (docker stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn certs_list(config: &Config, format: Format) -> anyhow::Result<u8> {
    use crate::certs::store::{status_table, CertStore};
    let gathered = gather_and_warn(config).await?;
    let domains = if config.serves_tls() { gathered.table.tls_domains() } else { Vec::new() };
    let rows = CertStore::new(&config.certs_dir).status(&domains, config.renew_days, time::OffsetDateTime::now_utc());
    let text = match format {
        Format::Text => status_table(&rows),
        Format::Json => serde_json::to_string_pretty(&rows)? + "\n",
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(EXIT_OK)
}

async fn certs_renew(config: &Config, force: bool, names: &[String]) -> anyhow::Result<u8> {
    let Some(manager) = config.cert_manager()? else {
        anyhow::bail!("certificates are off: set ACME_EMAIL (or ACME=on), and do not set LOCAL");
    };
    let domains: Vec<crate::routes::DomainName> = if names.is_empty() {
        gather_and_warn(config).await?.table.tls_domains()
    } else {
        names
            .iter()
            .map(|n| crate::routes::DomainName::parse(n).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<anyhow::Result<_>>()?
    };
    let forced = if force { domains.clone() } else { Vec::new() };
    let report = manager.run(&domains, &forced).await;
    for domain in &report.issued {
        println!("issued: {domain}");
    }
    for (domain, error) in &report.failed {
        println!("failed: {domain}: {error}");
    }
    // Not a failure: the certificate asked for is being ordered right now by whoever holds the
    // lock (the agent, or another `certs renew`), which also reloads nginx when it is issued.
    for domain in &report.busy {
        println!("busy: {domain}: another order for this domain is running; it will finish there");
    }
    for (domain, skip) in &report.plan.skipped {
        println!("skipped: {domain}: {skip}");
    }
    if report.plan.orders.is_empty() {
        println!("nothing to order (use --force to renew fresh certificates)");
    }
    if !report.issued.is_empty() {
        let docker = if config.docker { crate::sources::docker::DockerClient::connect().await.ok() } else { None };
        let nginx = crate::agent::choose_nginx(config, docker.as_ref()).await?;
        match nginx.test(&config.nginx.conf, &config.nginx.conf).await.and(Ok(())) {
            Ok(()) => match nginx.reload_running().await {
                Ok(()) => println!("nginx reloaded"),
                Err(e) => println!("nginx not reloaded ({e}); it serves the new certificates after its next reload"),
            },
            Err(e) => println!("nginx not reloaded: {e}"),
        }
    }
    Ok(if report.failed.is_empty() { EXIT_OK } else { EXIT_INVALID })
}

fn exit_code(table: &crate::routes::RouteTable) -> u8 {
    if table.has_static_errors() {
        EXIT_INVALID
    } else {
        EXIT_OK
    }
}

//! Certificates end to end: the agent binary in production mode (`LOCAL=false`, `ACME=on`) with
//! Debian's nginx as its child, ordering from a real ACME CA (Debian's pebble, resolving names
//! through pebble-challtestsrv). HTTP-01 is validated by pebble fetching the token from the real
//! nginx on pebble's HTTP-01 port (the agent's `HTTP_PORT`); DNS-01 goes through the Cloudflare
//! fake, whose TXT changes are mirrored into challtestsrv. Backends are stub HTTP servers
//! (`support::stub_http`) on 127.0.0.1; test names resolve to 127.0.0.1 (but one, for the DNS check). Nothing leaves the
//! machine.

use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smart_proxy::certs::store::{parse_info, CertInfo};
use time::OffsetDateTime;

use crate::support::agent::{http_get, Agent};
use crate::support::cloudflare_fake::{Failure, FakeCloudflare};
use crate::support::free_port;
use crate::support::pebble::{parse_cert, pem_ders, AcmeProxy, FakeWindow, Pebble};
use crate::support::stub_http::StubHttp;

const CF_TOKEN: &str = "cf-e2e-TOKEN-7f3a9c1d";
const CF_ZONE_ID: &str = "3f1a9e0c2b7d4e5f8a6b1c2d3e4f5a6b";

// --- The agent in production mode (support::agent::Agent), certificate helpers

impl Agent {
    fn certs(&self) -> PathBuf {
        self.path("certs")
    }

    fn live(&self, domain: &str) -> PathBuf {
        self.certs().join("live").join(domain.replacen("*.", "_.", 1))
    }

    pub(crate) fn cert_info(&self, domain: &str) -> Option<CertInfo> {
        parse_info(&std::fs::read(self.live(domain).join("fullchain.pem")).ok()?)
    }

    pub(crate) fn fullchain(&self, domain: &str) -> String {
        std::fs::read_to_string(self.live(domain).join("fullchain.pem")).unwrap()
    }

    /// Waits until nginx serves, for `sni`, the leaf of the certificate on disk for `domain`, on
    /// 10 handshakes in a row: during a reload, old workers may still take a connection or two.
    fn wait_served(&self, domain: &str, sni: &str) {
        let want = first_der(&self.fullchain(domain));
        let mut in_a_row = 0;
        self.wait_for(&format!("nginx to serve the new certificate of {domain}"), Duration::from_secs(10), || {
            for _ in 0..10 {
                if served_leaf(self.https_port, sni).as_deref() == Some(want.as_slice()) {
                    in_a_row += 1;
                } else {
                    in_a_row = 0;
                }
            }
            in_a_row >= 10
        });
    }

    /// `curl` (see [`curl`]) until it succeeds, for at most 5 s (the end of a reload window);
    /// panics with curl's last error and the log. Returns the body.
    pub(crate) fn curl_ok(&self, host: &str, trusted_pem: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = curl(self.https_port, host, trusted_pem);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                panic!(
                    "curl https://{host}/ trusting pebble's roots failed: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `certs list --format json`.
    fn certs_list(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["certs", "list", "--format", "json"]);
        assert!(out.status.success(), "certs list failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }

    /// Polls `certs list` until `domain` has `status` (the failure is logged a moment before the
    /// state is saved and the domain's lock released); returns its row.
    fn wait_status(&self, domain: &str, status: &str) -> serde_json::Value {
        let mut row = serde_json::Value::Null;
        self.wait_for(&format!("certs list to show {domain} {status}"), Duration::from_secs(10), || {
            row = self.certs_list().into_iter().find(|r| r["domain"] == domain).unwrap_or_default();
            row["status"] == status
        });
        row
    }

    /// The persisted renewal state of `domain`.
    fn state(&self, domain: &str) -> serde_json::Value {
        let path = self.certs().join("smart-proxy/state").join(format!("{}.json", domain.replacen("*.", "_.", 1)));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.log()));
        serde_json::from_slice(&bytes).unwrap()
    }
}

/// The agent settings that point it at `pebble`.
pub(crate) fn pebble_env(pebble: &Pebble) -> Vec<(String, String)> {
    vec![
        ("ACME_DIRECTORY".into(), pebble.directory_url()),
        ("ACME_CA_ROOT".into(), pebble.ca_root_path().display().to_string()),
        ("DNS_RESOLVERS".into(), pebble.dns_addr().to_string()),
    ]
}

/// The production agent on pebble's HTTP-01 port with `env`, to launch.
fn pebble_agent(pebble: &Pebble, env: &[(String, String)]) -> Agent {
    Agent::production(pebble.http_port(), &env_refs(env))
}

/// The production agent for `domains` on one backend answering `body` ([`app_env`]), to launch.
fn app_agent(pebble: &Pebble, domains: &[&str], body: &'static str) -> Agent {
    pebble_agent(pebble, &app_env(pebble, domains, body))
}

/// `env` (the ACME settings) plus `DOMAINS=domains` routed to the service `app`, a new backend
/// answering `body` (`SERVICES`), then `extra`.
fn backend_env(
    mut env: Vec<(String, String)>,
    domains: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let port = StubHttp::body(body).detach();
    env.extend([("DOMAINS".into(), domains.into()), ("SERVICES".into(), format!("app:127.0.0.1:{port}"))]);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// `DOMAINS` for `domains`, each routed to the service `app`.
pub(crate) fn app_routes(domains: &[&str]) -> String {
    domains.iter().map(|d| format!("{d}:app")).collect::<Vec<_>>().join(",")
}

/// The agent's environment for `domains` routed to one backend answering `body`, each domain
/// resolving to 127.0.0.1 in pebble's DNS: the ACME settings plus `DOMAINS` and `SERVICES`.
fn app_env(pebble: &Pebble, domains: &[&str], body: &'static str) -> Vec<(String, String)> {
    for domain in domains {
        pebble.add_a(domain, Ipv4Addr::LOCALHOST);
    }
    backend_env(pebble_env(pebble), &app_routes(domains), body, &[])
}

pub(crate) fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

// --- Log lines

/// The log lines holding `message` whose `domain` field is `domain`.
fn lines_for<'a>(log: &'a str, message: &str, domain: &str) -> Vec<&'a str> {
    let field = format!("domain={domain}");
    log.lines().filter(|l| l.contains(message) && l.split_whitespace().any(|w| w == field)).collect()
}

// --- Certificates

pub(crate) fn first_der(pem: &str) -> Vec<u8> {
    pem_ders(pem).into_iter().next().expect("a certificate")
}

/// The private key on disk is 0600 and belongs to the leaf.
fn verify_key(dir: &Path) {
    let key_path = dir.join("privkey.pem");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key_path.display());
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).expect("private key PEM");
    let leaf_der = first_der(&std::fs::read_to_string(dir.join("fullchain.pem")).unwrap());
    assert_eq!(key.subject_public_key_info(), parse_cert(&leaf_der).public_key().raw, "the key belongs to the leaf");
}

fn serial(der: &[u8]) -> String {
    parse_cert(der).raw_serial_as_string()
}

/// Writes a self-signed certificate for `domain` valid for `days` more days (not a placeholder).
fn precreate(certs: &Path, domain: &str, days: i64) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let mut params = CertificateParams::new(vec![domain.to_string()]).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days) + time::Duration::hours(1);
    params.distinguished_name.push(DnType::OrganizationName, "e2e pre-created");
    params.distinguished_name.push(DnType::CommonName, domain);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = certs.join("live").join(domain);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("privkey.pem"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("privkey.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
}

// --- TLS clients

/// Accepts any server certificate: to see what nginx serves (placeholders included).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS handshake with nginx on 127.0.0.1:`port` for `sni`, offering `versions` and accepting any
/// certificate; `None` when it fails.
fn handshake(
    port: u16,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Option<rustls::ClientConnection> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut tcp = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(conn)
}

/// The leaf certificate nginx on 127.0.0.1:`port` presents for `sni` (the default protocol
/// versions offered); `None` when the handshake fails.
pub(crate) fn served_leaf(port: u16, sni: &str) -> Option<Vec<u8>> {
    let conn = handshake(port, sni, rustls::DEFAULT_VERSIONS)?;
    conn.peer_certificates().and_then(|certs| certs.first()).map(|c| c.as_ref().to_vec())
}

/// `curl` over HTTPS to nginx, trusting only `trusted_pem` (pebble's roots and intermediates):
/// the certificate must verify for `host`. Returns curl's output.
fn curl(https_port: u16, host: &str, trusted_pem: &Path) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(trusted_pem)
        .args(["--resolve", &format!("{host}:{https_port}:127.0.0.1")])
        .arg(format!("https://{host}:{https_port}/"))
        .output()
        .expect("run curl (Debian's curl package)")
}

/// Pebble's issuing roots plus the intermediates of `fullchain_pem`, as a file for curl.
pub(crate) fn trust_file(dir: &Path, pebble: &Pebble, fullchain_pem: &str) -> PathBuf {
    let path = dir.join("trusted.pem");
    let intermediates: String = x509_parser::pem::Pem::iter_from_buffer(fullchain_pem.as_bytes())
        .skip(1)
        .map(|p| pem_text(&p.unwrap().contents))
        .collect();
    std::fs::write(&path, format!("{}\n{intermediates}", pebble.issuer_roots_pem())).unwrap();
    path
}

fn pem_text(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

fn report_time(test: &str, started: Instant) {
    eprintln!("[certs_e2e] {test}: {:.1}s", started.elapsed().as_secs_f64());
}

// --- 1. HTTP-01 through nginx's webroot

#[test]
fn http01_issues_several_domains_through_the_real_nginx_and_serves_them() {
    let started = Instant::now();
    let pebble = Pebble::start();
    let domains = ["alpha.test", "beta.test", "gamma.test"];
    let mut agent = app_agent(&pebble, &domains, "hello from the backend\n");
    agent.launch();
    let nginx_pid = agent.nginx_pid();

    agent.wait_for("real certificates for every domain", Duration::from_secs(25), || {
        domains.iter().all(|d| agent.cert_info(d).is_some_and(|i| !i.placeholder))
    });
    for d in domains {
        let fullchain = agent.fullchain(d);
        pebble.verify_chain(&fullchain, d);
        verify_key(&agent.live(d));
        agent.wait_served(d, d);
        let trusted = trust_file(agent.dir.path(), &pebble, &fullchain);
        assert_eq!(agent.curl_ok(d, &trusted), "hello from the backend\n");
    }
    // The HTTP-01 tokens are gone from the webroot.
    let challenges = agent.path("webroot/.well-known/acme-challenge");
    let left: Vec<_> = std::fs::read_dir(&challenges).map(|r| r.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "challenge files left behind: {left:?}");

    // One batch, one reload: a single apply names all three domains as its cause, and nginx was
    // reloaded (same master), not restarted.
    agent.wait_for("the batch's apply to be logged", Duration::from_secs(5), || {
        agent.log().contains("certificates issued for")
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = agent.log();
    let applied: Vec<&str> = log.lines().filter(|l| l.contains("certificates issued for")).collect();
    assert_eq!(applied.len(), 1, "one reload for the batch:\n{log}");
    for d in domains {
        assert!(applied[0].contains(d), "{d} missing from the batch's cause: {}", applied[0]);
    }
    assert!(
        applied[0].contains("config applied and nginx reloaded"),
        "the batch's apply must say nginx reloaded:\n{log}"
    );
    assert_eq!(log.lines().filter(|l| l.contains("config applied")).count(), 2, "initial apply + the batch:\n{log}");
    for d in domains {
        assert_eq!(lines_for(&log, "ordering a certificate", d).len(), 1, "{d} ordered once:\n{log}");
    }
    // HTTP-01 needs nginx answering: no order starts before nginx does.
    let position = |needle: &str| log.find(needle).unwrap_or_else(|| panic!("{needle:?} not logged:\n{log}"));
    assert!(position("nginx started") < position("ordering a certificate"), "an order started before nginx:\n{log}");
    assert_eq!(agent.nginx_pid(), nginx_pid, "reloaded, not restarted");
    assert!(!log.contains("ERROR") && !log.contains(" WARN "), "no errors or warnings:\n{log}");
    report_time("http01", started);
}

// --- 2. A wildcard through DNS-01 (Cloudflare fake mirrored into the mock DNS)

#[test]
fn dns01_issues_a_wildcard_through_cloudflare_and_cleans_up_the_txt_record() {
    let started = Instant::now();
    let pebble = Pebble::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dns = pebble.challtestsrv();
    let fake = runtime.block_on(
        FakeCloudflare::builder()
            .token(CF_TOKEN)
            .zone(CF_ZONE_ID, "wild.test")
            .on_txt_change(move |name, value| {
                let dns = dns.clone();
                async move {
                    tokio::task::spawn_blocking(move || match value {
                        None => dns.clear_txt(&name),
                        Some(value) => dns.set_txt(&name, &value),
                    })
                    .await
                    .unwrap();
                }
            })
            .start(),
    );
    let cloudflare = [
        ("CLOUDFLARE_API_TOKEN", CF_TOKEN),
        ("CLOUDFLARE_API_BASE", &fake.base_url()),
        ("DNS_PROPAGATION_TIMEOUT", "20s"),
    ];
    let env = backend_env(pebble_env(&pebble), "*.wild.test:app", "wildcard backend\n", &cloudflare);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();

    agent.wait_for("the wildcard certificate", Duration::from_secs(25), || {
        agent.cert_info("*.wild.test").is_some_and(|i| !i.placeholder)
    });
    assert!(agent.path("certs/live/_.wild.test/fullchain.pem").is_file());
    let fullchain = agent.fullchain("*.wild.test");
    pebble.verify_chain(&fullchain, "*.wild.test");
    verify_key(&agent.live("*.wild.test"));

    // The TXT record was created, then deleted (cleanup runs before the certificate is written).
    let requests = fake.requests();
    let record_path = format!("/client/v4/zones/{CF_ZONE_ID}/dns_records");
    assert!(requests.iter().any(|r| r.method == "POST" && r.path == record_path && r.status == 200), "{requests:#?}");
    assert!(
        requests.iter().any(|r| r.method == "DELETE" && r.path.starts_with(&record_path) && r.status == 200),
        "{requests:#?}"
    );
    assert!(fake.txt_values("_acme-challenge.wild.test").is_empty(), "TXT left: {:?}", fake.records());
    assert!(fake.records().iter().all(|r| r.record_type != "TXT"), "{:?}", fake.records());

    // nginx serves it for any name under the wildcard, verifiably.
    agent.wait_served("*.wild.test", "anything.wild.test");
    let trusted = trust_file(agent.dir.path(), &pebble, &fullchain);
    assert_eq!(agent.curl_ok("anything.wild.test", &trusted), "wildcard backend\n");

    let log = agent.log();
    assert!(log.contains("challenge=DNS-01"), "{log}");
    assert!(!log.contains(CF_TOKEN), "the Cloudflare token leaked into the log:\n{log}");
    drop(agent);
    drop(fake);
    report_time("dns01 wildcard", started);
}

// --- 3. Renewal of an expiring certificate; a fresh one is left alone

#[test]
fn an_expiring_certificate_is_renewed_and_a_fresh_one_left_alone() {
    let started = Instant::now();
    let pebble = Pebble::start();
    let mut agent = app_agent(&pebble, &["expiring.test", "fresh.test"], "renewal backend\n");
    precreate(&agent.certs(), "expiring.test", 10);
    precreate(&agent.certs(), "fresh.test", 80);
    let old_issuer = agent.cert_info("expiring.test").unwrap().issuer;
    let fresh_chain = std::fs::read(agent.live("fresh.test").join("fullchain.pem")).unwrap();
    let fresh_key = std::fs::read(agent.live("fresh.test").join("privkey.pem")).unwrap();
    agent.launch();

    agent.wait_for("the expiring certificate to be renewed", Duration::from_secs(25), || {
        agent.cert_info("expiring.test").is_some_and(|i| i.issuer != old_issuer && !i.placeholder)
    });
    let info = agent.cert_info("expiring.test").unwrap();
    assert!(info.days_left(OffsetDateTime::now_utc()) > 30, "{info:?}");
    pebble.verify_chain(&agent.fullchain("expiring.test"), "expiring.test");
    verify_key(&agent.live("expiring.test"));
    agent.wait_served("expiring.test", "expiring.test");
    let trusted = trust_file(agent.dir.path(), &pebble, &agent.fullchain("expiring.test"));
    assert_eq!(agent.curl_ok("expiring.test", &trusted), "renewal backend\n");

    // After the batch's reload, and a bit more: the fresh certificate is untouched and served.
    agent.wait_for("the reload after the batch", Duration::from_secs(10), || {
        agent.log().lines().any(|l| l.contains("config applied") && l.contains("certificates issued for"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::read(agent.live("fresh.test").join("fullchain.pem")).unwrap(), fresh_chain);
    assert_eq!(std::fs::read(agent.live("fresh.test").join("privkey.pem")).unwrap(), fresh_key);
    assert_eq!(served_leaf(agent.https_port, "fresh.test"), Some(first_der(&String::from_utf8(fresh_chain).unwrap())));

    let log = agent.log();
    let ordered = lines_for(&log, "ordering a certificate", "expiring.test");
    assert_eq!(ordered.len(), 1, "{log}");
    assert!(ordered[0].contains("days left"), "ordered because it expires: {}", ordered[0]);
    assert!(lines_for(&log, "ordering a certificate", "fresh.test").is_empty(), "{log}");
    assert_eq!(lines_for(&log, "certificate expires soon", "expiring.test").len(), 1, "{log}");
    assert!(lines_for(&log, "certificate expires soon", "fresh.test").is_empty(), "{log}");
    report_time("renewal", started);
}

// --- 4. The CA is unreachable

/// A throwaway CA certificate as a PEM file (the agent must trust something for the CA's TLS).
fn throwaway_ca(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "unreachable test CA");
    let path = dir.join("unreachable-ca.pem");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}

#[test]
fn an_unreachable_ca_keeps_the_current_certificates_backs_off_and_shows_failing() {
    let started = Instant::now();
    let closed = free_port();
    let port = StubHttp::body("still serving\n").detach();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_root = throwaway_ca(ca_dir.path()).display().to_string();
    let directory = format!("https://127.0.0.1:{closed}/dir");
    let services = format!("app:127.0.0.1:{port}");
    let env = [
        ("DOMAINS", "new.test:app,kept.test:app"),
        ("SERVICES", services.as_str()),
        ("ACME_DIRECTORY", directory.as_str()),
        ("ACME_CA_ROOT", ca_root.as_str()),
    ];
    let mut agent = Agent::production(free_port(), &env);
    precreate(&agent.certs(), "kept.test", 10);
    let kept_chain = std::fs::read_to_string(agent.live("kept.test").join("fullchain.pem")).unwrap();
    agent.launch();

    agent.wait_for("both orders to fail", Duration::from_secs(15), || {
        let log = agent.log();
        ["new.test", "kept.test"].iter().all(|d| !lines_for(&log, "certificate order failed", d).is_empty())
    });
    let failed_at = OffsetDateTime::now_utc();
    // No hammering: over the next 5 s, still one attempt per domain.
    std::thread::sleep(Duration::from_secs(5));
    let log = agent.log();
    for d in ["new.test", "kept.test"] {
        assert_eq!(lines_for(&log, "ordering a certificate", d).len(), 1, "{d}: one attempt:\n{log}");
        assert_eq!(lines_for(&log, "certificate order failed", d).len(), 1, "{d}:\n{log}");
    }
    let failure = lines_for(&log, "certificate order failed", "new.test")[0];
    assert!(failure.contains("an existing certificate stays in use"), "{failure}");

    // Still serving what it had: the placeholder for the new domain, the pre-created one for the other.
    assert!(agent.cert_info("new.test").unwrap().placeholder);
    assert_eq!(agent.fullchain("kept.test"), kept_chain);
    for d in ["new.test", "kept.test"] {
        assert_eq!(served_leaf(agent.https_port, d), Some(first_der(&agent.fullchain(d))), "{d}");
        let (status, _) = http_get(agent.port, d, "/health");
        assert_eq!(status, 200, "{d}: nginx still answers");
    }

    // `certs list` shows the failure, its error and a next try in the future.
    for d in ["new.test", "kept.test"] {
        agent.wait_status(d, "failing");
    }
    let rows = agent.certs_list();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["status"], "failing", "{row}");
        let error = row["last_error"].as_str().expect("last_error");
        assert!(error.contains("ACME") && error.contains(&format!("127.0.0.1:{closed}")), "{error}");
        let next = OffsetDateTime::parse(
            row["next_try"].as_str().expect("next_try"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(next > failed_at + time::Duration::minutes(4), "next try {next} is not ~5 min ahead");
    }
    let text = agent.cli(&["certs", "list"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.matches("failing: ").count(), 2, "{text}");
    assert!(text.contains("(next try "), "{text}");

    for d in ["new.test", "kept.test"] {
        let state = agent.state(d);
        assert!(state["failures"].as_u64().unwrap() >= 1, "{state}");
        assert!(state["next_try"].as_i64().unwrap() > OffsetDateTime::now_utc().unix_timestamp(), "{state}");
        assert!(state["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{state}");
    }
    report_time("unreachable CA", started);
}

// --- 5. Cloudflare errors

/// An agent ordering `www.cf.test` through DNS-01 with `token`, against a fake that accepts only
/// `CF_TOKEN` and answers as `prepare` sets it up.
fn cloudflare_failure(token: &str, prepare: impl FnOnce(&FakeCloudflare)) -> (Agent, Pebble, String) {
    let pebble = Pebble::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeCloudflare::builder().token(CF_TOKEN).zone(CF_ZONE_ID, "cf.test").start());
    prepare(&fake);
    let cloudflare = [
        ("CLOUDFLARE_API_TOKEN", token),
        ("CLOUDFLARE_API_BASE", &fake.base_url()),
        ("DNS_PROPAGATION_TIMEOUT", "10s"),
    ];
    let env = backend_env(pebble_env(&pebble), "www.cf.test:app", "cf backend\n", &cloudflare);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    agent.wait_for("the order to fail", Duration::from_secs(20), || {
        !lines_for(&agent.log(), "certificate order failed", "www.cf.test").is_empty()
    });
    assert!(!fake.requests().is_empty(), "the agent reached the fake");
    let error = lines_for(&agent.log(), "certificate order failed", "www.cf.test")[0].to_string();
    drop(fake);
    drop(runtime);
    (agent, pebble, error)
}

/// The order failed, `certs list` says `failing` with `expected` in the error, and `secret` shows
/// nowhere: not in the log, the CLI's output or the state file.
fn assert_failing_without_secret(agent: &Agent, expected: &[&str], secret: &str) {
    let row = agent.wait_status("www.cf.test", "failing");
    assert_eq!(agent.certs_list().len(), 1);
    let error = row["last_error"].as_str().unwrap();
    for part in expected {
        assert!(error.contains(part), "{part:?} not in: {error}");
    }
    let state = agent.state("www.cf.test");
    assert!(state["failures"].as_u64().unwrap() >= 1, "{state}");
    assert!(agent.cert_info("www.cf.test").unwrap().placeholder, "the placeholder stays");

    let list = agent.cli(&["certs", "list"]);
    let everything = format!(
        "{}\n{}{}\n{}",
        agent.log(),
        String::from_utf8_lossy(&list.stdout),
        String::from_utf8_lossy(&list.stderr),
        std::fs::read_to_string(agent.certs().join("smart-proxy/state/www.cf.test.json")).unwrap()
    );
    assert!(!everything.contains(secret), "the token leaked:\n{everything}");
    for line in agent.log().lines() {
        assert!(!line.contains(secret), "{line}");
    }
}

#[test]
fn cloudflare_server_errors_fail_the_order_clearly_without_leaking_the_token() {
    let started = Instant::now();
    let (agent, _pebble, error) = cloudflare_failure(CF_TOKEN, |fake| fake.fail_next(1000, Failure::Server(500)));
    for part in ["cannot present the DNS-01 challenge for www.cf.test", "Cloudflare had a server error (HTTP 500)"] {
        assert!(error.contains(part), "{part:?} not in: {error}");
    }
    assert_failing_without_secret(&agent, &["Cloudflare had a server error (HTTP 500)"], CF_TOKEN);
    report_time("cloudflare 500", started);
}

#[test]
fn a_bad_cloudflare_token_is_named_as_the_problem_and_never_logged() {
    let started = Instant::now();
    let bad = "cf-e2e-WRONG-token-0d9e8f";
    let (agent, _pebble, error) = cloudflare_failure(bad, |_| {});
    for part in ["Cloudflare rejected the credentials", "API token", "CLOUDFLARE_API_TOKEN"] {
        assert!(error.contains(part), "{part:?} not in: {error}");
    }
    assert_failing_without_secret(&agent, &["Cloudflare rejected the credentials", "CLOUDFLARE_API_TOKEN"], bad);
    report_time("cloudflare bad token", started);
}

// --- 6. --dry-run with ACME on

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.push((path.clone(), Vec::new()));
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn dry_run_says_what_would_be_ordered_with_which_challenge_and_writes_nothing() {
    let started = Instant::now();
    // A CA that is not there: a dry run must not need it.
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let api = format!("http://127.0.0.1:{}/client/v4", free_port());
    let env = [
        ("DOMAINS", "new.test:app,*.wild.test:app,expiring.test:app,fresh.test:app"),
        ("SERVICES", "app:127.0.0.1:9"),
        ("ACME_DIRECTORY", directory.as_str()),
    ];
    let agent = Agent::production(free_port(), &env);
    precreate(&agent.certs(), "expiring.test", 10);
    precreate(&agent.certs(), "fresh.test", 80);
    let before = tree(agent.dir.path());

    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"));
        cmd.arg("--dry-run").env_clear().envs(agent.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("server_name new.test;"), "the config is printed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let http = run(&[]);
    assert!(http.contains("note: would order a certificate for new.test (no certificate) with HTTP-01"), "{http}");
    assert!(http.contains("note: would order a certificate for expiring.test ("), "{http}");
    assert!(http.lines().any(|l| l.contains("expiring.test") && l.contains("days left) with HTTP-01")), "{http}");
    assert!(http.contains("note: no order for *.wild.test: a wildcard needs DNS-01"), "{http}");
    assert!(!http.contains("for fresh.test"), "a fresh certificate is not ordered:\n{http}");

    let dns = run(&[("CLOUDFLARE_API_TOKEN", CF_TOKEN), ("CLOUDFLARE_API_BASE", api.as_str())]);
    for d in ["new.test (no certificate)", "*.wild.test (no certificate)", "expiring.test ("] {
        assert!(
            dns.lines()
                .any(|l| l.contains(&format!("note: would order a certificate for {d}")) && l.ends_with("with DNS-01")),
            "{d}: {dns}"
        );
    }
    assert!(!dns.contains("HTTP-01") && !dns.contains("no order for"), "{dns}");
    assert!(!dns.contains("for fresh.test"), "{dns}");
    assert!(!dns.contains(CF_TOKEN), "{dns}");

    assert_eq!(tree(agent.dir.path()), before, "a dry run writes nothing (no placeholder, state, account or config)");
    report_time("dry run", started);
}

// --- 7. certs renew --force

#[test]
fn certs_renew_force_orders_a_new_certificate_for_a_fresh_one_and_nginx_serves_it() {
    let started = Instant::now();
    let pebble = Pebble::start();
    let mut agent = app_agent(&pebble, &["renew.test"], "renew backend\n");
    agent.launch();
    agent.wait_for("the first certificate", Duration::from_secs(25), || {
        agent.cert_info("renew.test").is_some_and(|i| !i.placeholder)
    });
    agent.wait_served("renew.test", "renew.test");
    let first = first_der(&agent.fullchain("renew.test"));
    assert!(agent.cert_info("renew.test").unwrap().days_left(OffsetDateTime::now_utc()) > 30, "fresh");

    // Without --force: nothing to do for a fresh certificate.
    let out = agent.cli(&["certs", "renew", "renew.test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("nothing to order"), "{stdout}");
    assert_eq!(first_der(&agent.fullchain("renew.test")), first);

    let out = agent.cli(&["certs", "renew", "--force", "renew.test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", pebble.logs());
    assert!(stdout.lines().any(|l| l == "issued: renew.test"), "{stdout}");
    assert!(stdout.contains("nginx reloaded"), "{stdout}\n{stderr}");
    let second = first_der(&agent.fullchain("renew.test"));
    assert_ne!(serial(&second), serial(&first), "a new certificate");
    pebble.verify_chain(&agent.fullchain("renew.test"), "renew.test");
    verify_key(&agent.live("renew.test"));
    agent.wait_served("renew.test", "renew.test");
    let trusted = trust_file(agent.dir.path(), &pebble, &agent.fullchain("renew.test"));
    assert_eq!(agent.curl_ok("renew.test", &trusted), "renew backend\n");
    assert_eq!(agent.state("renew.test")["failures"], 0);
    report_time("certs renew --force", started);
}

// --- More: DNS_CHECK=strict, the end of a backoff, the renewal interval

#[test]
fn dns_check_strict_orders_what_points_here_and_reports_what_does_not() {
    let started = Instant::now();
    let pebble = Pebble::start();
    pebble.add_a("here.test", Ipv4Addr::LOCALHOST);
    pebble.add_a("elsewhere.test", Ipv4Addr::new(198, 51, 100, 7));
    let strict = [("DNS_CHECK", "strict"), ("PUBLIC_IP", "127.0.0.1")];
    let env = backend_env(pebble_env(&pebble), "here.test:app,elsewhere.test:app", "dns check backend\n", &strict);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    agent.wait_for("here.test's certificate", Duration::from_secs(25), || {
        agent.cert_info("here.test").is_some_and(|i| !i.placeholder)
    });
    pebble.verify_chain(&agent.fullchain("here.test"), "here.test");
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.cert_info("elsewhere.test").unwrap().placeholder, "not ordered: it points elsewhere");

    // The operator learns why: a warning in the log, and `certs list` names the problem.
    let log = agent.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("elsewhere.test") && l.contains("198.51.100.7"))
        .collect();
    assert!(!warned.is_empty(), "the skipped order is not logged:\n{log}");
    assert!(warned.iter().any(|l| l.contains("DNS_CHECK=strict")), "{warned:?}");
    let row = agent.wait_status("elsewhere.test", "failing");
    assert!(row["last_error"].as_str().is_some_and(|e| e.contains("198.51.100.7")), "{row}");
    assert!(row["next_try"].is_string(), "a next try is planned: {row}");
    report_time("dns check strict", started);
}

// --- PUBLIC_IP detected (issue 9): what the DNS check compares with when PUBLIC_IP is not set

/// A UDP socket on 127.0.0.1 that takes DNS queries and never answers: a resolver out of reach
/// (a firewall dropping the packets), and a witness of whether anything asked.
struct SilentResolver {
    socket: std::net::UdpSocket,
}

impl SilentResolver {
    fn start() -> SilentResolver {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        SilentResolver { socket }
    }

    fn addr(&self) -> String {
        self.socket.local_addr().unwrap().to_string()
    }

    /// The datagrams received since the last call.
    fn queries(&self) -> usize {
        let mut buf = [0u8; 1500];
        std::iter::from_fn(|| self.socket.recv_from(&mut buf).ok()).count()
    }
}

/// `DOMAINS`/`SERVICES` for `domains` on one backend, with pebble's settings and `extra`.
fn routes_env(pebble: &Pebble, domains: &[&str], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    backend_env(pebble_env(pebble), &app_routes(domains), "detect backend\n", extra)
}

fn issued(agent: &Agent, domain: &str) {
    agent.wait_for(&format!("{domain}'s certificate"), Duration::from_secs(25), || {
        agent.cert_info(domain).is_some_and(|i| !i.placeholder)
    });
}

#[test]
fn issue_9_a_detected_public_address_decides_the_dns_check() {
    let started = Instant::now();
    let pebble = Pebble::start();
    // Only the "what is my address" name answers 127.0.0.1 (other names get 192.0.2.1 and no
    // AAAA), so the check can only pass through what the query found.
    pebble.set_default_ipv4(Ipv4Addr::new(192, 0, 2, 1));
    pebble.clear_default_ipv6();
    pebble.add_a("myip.opendns.com", Ipv4Addr::LOCALHOST);
    pebble.add_a("here.test", Ipv4Addr::LOCALHOST);
    pebble.add_a("elsewhere.test", Ipv4Addr::new(198, 51, 100, 7));
    let detect = format!("dns:myip.opendns.com@{}", pebble.dns_addr());
    let env = routes_env(
        &pebble,
        &["here.test", "elsewhere.test"],
        &[("DNS_CHECK", "strict"), ("PUBLIC_IP_DETECT", &detect)],
    );
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    issued(&agent, "here.test");
    pebble.verify_chain(&agent.fullchain("here.test"), "here.test");
    let row = agent.wait_status("elsewhere.test", "failing");
    assert!(agent.cert_info("elsewhere.test").unwrap().placeholder, "not ordered: it points elsewhere");

    // How it was found is said once; the skipped domain's message names the address and the way.
    let log = agent.log();
    let how = format!("DNS query myip.opendns.com @{}", pebble.dns_addr());
    let found: Vec<&str> = log.lines().filter(|l| l.contains("public addresses detected")).collect();
    assert_eq!(found.len(), 1, "{log}");
    assert!(found[0].contains(" INFO ") && found[0].ends_with(&format!("detected via {how}: 127.0.0.1")), "{found:?}");
    let want = format!(
        "elsewhere.test points at 198.51.100.7 (checked DNS), not at this server's 127.0.0.1 (detected via {how}); \
         skipped (DNS_CHECK=strict)"
    );
    assert!(log.lines().any(|l| l.contains(" WARN ") && l.contains(&want)), "{want}\n{log}");
    assert!(row["last_error"].as_str().is_some_and(|e| e == want), "{row}");
    report_time("issue 9: detected address", started);
}

#[test]
fn issue_9_an_http_echo_detects_the_address_and_dns_check_warn_names_it() {
    let started = Instant::now();
    let pebble = Pebble::start();
    pebble.clear_default_ipv6();
    pebble.add_a("here.test", Ipv4Addr::LOCALHOST);
    // Another loopback address: nginx listens there too, so pebble still validates the order.
    pebble.add_a("other.test", Ipv4Addr::new(127, 0, 0, 2));
    let echo = format!("http://127.0.0.1:{}/ip", StubHttp::body("127.0.0.1\n").detach());
    let env = routes_env(&pebble, &["here.test", "other.test"], &[("DNS_CHECK", "warn"), ("PUBLIC_IP_DETECT", &echo)]);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    issued(&agent, "here.test");
    issued(&agent, "other.test");
    let log = agent.log();
    let found: Vec<&str> = log.lines().filter(|l| l.contains("public addresses detected")).collect();
    assert_eq!(found.len(), 1, "detected once for both orders:\n{log}");
    assert!(found[0].ends_with(&format!("detected via HTTP GET {echo}: 127.0.0.1")), "{found:?}");
    let want = format!(
        "other.test points at 127.0.0.2 (checked DNS), not at this server's 127.0.0.1 (detected via HTTP GET \
         {echo}); ordering anyway (DNS_CHECK=warn)"
    );
    assert!(log.lines().any(|l| l.contains(" WARN ") && l.contains(&want)), "{want}\n{log}");
    assert!(!log.contains("here.test points at"), "{log}");
    report_time("issue 9: HTTP echo", started);
}

#[test]
fn issue_9_a_failed_detection_is_reported_once_with_what_to_set() {
    let started = Instant::now();
    let pebble = Pebble::start();
    for domain in ["one.test", "two.test"] {
        pebble.add_a(domain, Ipv4Addr::LOCALHOST);
    }
    let silent = SilentResolver::start();
    let detect = format!("dns:myip.opendns.com@{}", silent.addr());
    let env = routes_env(&pebble, &["one.test", "two.test"], &[("DNS_CHECK", "strict"), ("PUBLIC_IP_DETECT", &detect)]);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    // Unknown addresses skip the check (as with no PUBLIC_IP before): both are ordered.
    issued(&agent, "one.test");
    issued(&agent, "two.test");
    assert!(silent.queries() >= 1, "the resolver was asked");
    let log = agent.log();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warned.len(), 1, "one warning, not one per domain:\n{log}");
    let line = warned[0];
    for part in [
        "public address detection found nothing",
        &format!("DNS query myip.opendns.com @{}: ", silent.addr()),
        "DNS checks are skipped until it succeeds",
        "set PUBLIC_IP to this server's public addresses",
        "PUBLIC_IP_DETECT",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    report_time("issue 9: detection failure", started);
}

#[test]
fn issue_9_public_ip_set_is_used_without_asking_anything() {
    let started = Instant::now();
    let pebble = Pebble::start();
    pebble.add_a("set.test", Ipv4Addr::LOCALHOST);
    let silent = SilentResolver::start();
    let detect = format!("dns:myip.opendns.com@{}", silent.addr());
    let env = routes_env(
        &pebble,
        &["set.test"],
        &[("DNS_CHECK", "strict"), ("PUBLIC_IP", "127.0.0.1"), ("PUBLIC_IP_DETECT", &detect)],
    );
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    issued(&agent, "set.test");
    assert_eq!(silent.queries(), 0, "PUBLIC_IP is set: nothing is detected");
    let log = agent.log();
    assert!(!log.contains("public address detection") && !log.contains("public addresses detected"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");
    report_time("issue 9: PUBLIC_IP set", started);
}

#[test]
fn issue_9_public_ip_detect_off_skips_the_check_as_before() {
    let started = Instant::now();
    let pebble = Pebble::start();
    // Another loopback address (nginx listens there too): not this server's as far as PUBLIC_IP
    // could say, but no address is known, so nothing is compared.
    pebble.add_a("off.test", Ipv4Addr::new(127, 0, 0, 2));
    let env = routes_env(&pebble, &["off.test"], &[("DNS_CHECK", "strict"), ("PUBLIC_IP_DETECT", "off")]);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    issued(&agent, "off.test");
    let log = agent.log();
    let skipped = lines_for(&log, "DNS check skipped: set PUBLIC_IP to this server's public addresses", "off.test");
    assert_eq!(skipped.len(), 1, "{log}");
    assert!(!log.contains("public address detection") && !log.contains("public addresses detected"), "{log}");
    report_time("issue 9: PUBLIC_IP_DETECT=off", started);
}

#[test]
fn a_domain_is_retried_when_its_backoff_ends_whatever_other_domains_states_say() {
    let started = Instant::now();
    let pebble = Pebble::start();
    let mut agent = app_agent(&pebble, &["waiting.test", "stale.test"], "backoff backend\n");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    // waiting.test failed a moment ago and may be tried again in 3 s.
    // stale.test failed long ago (its certificate was fixed since): its next try is in the past.
    precreate(&agent.certs(), "stale.test", 80);
    let state_dir = agent.certs().join("smart-proxy/state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = |failures: u32, next_try: i64| {
        serde_json::json!({ "failures": failures, "last_error": "the CA was down", "next_try": next_try, "last_attempt": next_try - 300 })
            .to_string()
    };
    std::fs::write(state_dir.join("waiting.test.json"), state(1, now + 3)).unwrap();
    std::fs::write(state_dir.join("stale.test.json"), state(2, now - 3600)).unwrap();
    agent.launch();

    agent.wait_for("waiting.test to be ordered after its backoff", Duration::from_secs(20), || {
        agent.cert_info("waiting.test").is_some_and(|i| !i.placeholder)
    });
    let log = agent.log();
    assert_eq!(lines_for(&log, "ordering a certificate", "waiting.test").len(), 1, "{log}");
    assert!(lines_for(&log, "ordering a certificate", "stale.test").is_empty(), "{log}");
    // The state is saved just after the certificate is written.
    agent.wait_for("waiting.test's failures to be reset", Duration::from_secs(5), || {
        agent.state("waiting.test")["failures"] == 0
    });
    report_time("backoff end", started);
}

#[test]
fn certificates_are_checked_again_every_renewal_interval() {
    let started = Instant::now();
    let pebble = Pebble::start();
    let mut env = app_env(&pebble, &["interval.test"], "interval backend\n");
    env.push(("RENEWAL_INTERVAL".into(), "3s".into()));
    let mut agent = pebble_agent(&pebble, &env);
    precreate(&agent.certs(), "interval.test", 80);
    agent.launch();
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.log().lines().all(|l| !l.contains("ordering a certificate")), "fresh: nothing to order");

    // Time passes (simulated): the certificate on disk now expires in 10 days.
    let dir = tempfile::tempdir().unwrap();
    precreate(dir.path(), "interval.test", 10);
    let expiring = dir.path().join("live/interval.test");
    for file in ["privkey.pem", "fullchain.pem"] {
        std::fs::copy(expiring.join(file), agent.live("interval.test").join(file)).unwrap();
    }
    let old_issuer = agent.cert_info("interval.test").unwrap().issuer;
    agent.wait_for("the next interval to renew it", Duration::from_secs(15), || {
        agent.cert_info("interval.test").is_some_and(|i| i.issuer != old_issuer)
    });
    pebble.verify_chain(&agent.fullchain("interval.test"), "interval.test");
    agent.wait_served("interval.test", "interval.test");
    report_time("renewal interval", started);
}

// --- testssl.sh against nginx serving an issued certificate

/// Debian's `testssl.sh` package installs the script as `/usr/bin/testssl`.
fn testssl_bin() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("TEST_TESTSSL_BIN").unwrap_or_else(|_| "/usr/bin/testssl".into()));
    if path.exists() {
        return Some(path);
    }
    assert!(
        !crate::support::in_ci(),
        "{} is required in CI (install Debian's testssl.sh: apt-get install testssl.sh; .ci/run does this)",
        path.display()
    );
    eprintln!("skipped: {} not found (apt-get install testssl.sh)", path.display());
    None
}

/// Findings that come from the test setup, not from the TLS configuration: (testssl id, why).
///
/// The chain of trust is checked, not ignored: pebble's issuing root is passed with `--add-ca`.
const TESTSSL_IGNORED: &[(&str, &str)] = &[
    (
        "cert_revocation",
        "the test CA: pebble runs without an OCSP responder and puts no CRL distribution point in its certificates",
    ),
    (
        "cipher_order",
        "deliberate: the template follows Mozilla's intermediate profile (ssl_prefer_server_ciphers off, every \
         offered TLS 1.2 cipher is AEAD with forward secrecy); testssl 3.0 rates any missing server order HIGH",
    ),
];

#[test]
fn testssl_finds_nothing_high_or_critical_on_an_issued_certificate() {
    let Some(testssl) = testssl_bin() else { return };
    let started = Instant::now();
    let pebble = Pebble::start();
    let mut agent = app_agent(&pebble, &["tls.test"], "tls backend\n");
    agent.launch();
    agent.wait_for("the certificate", Duration::from_secs(25), || {
        agent.cert_info("tls.test").is_some_and(|i| !i.placeholder)
    });
    agent.wait_served("tls.test", "tls.test");

    let json = agent.path("testssl.json");
    // Pebble's issuing root, so that the chain of trust is checked rather than reported untrusted.
    let roots = agent.path("pebble-roots.pem");
    std::fs::write(&roots, pebble.issuer_roots_pem()).unwrap();
    // Protocols, cipher categories, server preferences, server defaults (the certificate),
    // headers and vulnerabilities: ~30 s. Client simulation and per-cipher listings (minutes) are
    // left out; TEST_TESTSSL_CHECKS overrides the selection (e.g. "-p" while debugging).
    let out = Command::new(&testssl)
        .args(["--quiet", "--color", "0", "--severity", "HIGH", "--warnings", "off", "--nodns", "none"])
        .args(["--connect-timeout", "5", "--openssl-timeout", "5", "--ip", "127.0.0.1"])
        .args(std::env::var("TEST_TESTSSL_CHECKS").unwrap_or_else(|_| "-p -s -P -S -h -U".into()).split_whitespace())
        .arg("--add-ca")
        .arg(&roots)
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("https://tls.test:{}/", agent.https_port))
        .stdin(Stdio::null())
        .output()
        .expect("run testssl");
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }))
    .unwrap();
    let (ignored, bad): (Vec<_>, Vec<_>) = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL")))
        .partition(|f| TESTSSL_IGNORED.iter().any(|(id, _)| f["id"] == *id));
    for f in &ignored {
        eprintln!("[certs_e2e] testssl, ignored: {} {} {}", f["id"], f["severity"], f["finding"]);
    }
    assert!(
        bad.is_empty(),
        "testssl found HIGH/CRITICAL problems:\n{}\n--- testssl output ---\n{}",
        bad.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stdout)
    );
    report_time("testssl", started);
}

/// The protocol version nginx on 127.0.0.1:`port` agrees to for `sni` when the client offers only
/// `version`; `None` when the handshake fails.
fn negotiated(
    port: u16,
    sni: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Option<rustls::ProtocolVersion> {
    handshake(port, sni, &[version])?.protocol_version()
}

#[test]
fn sites_are_served_over_tls_1_3_and_1_2() {
    // The rendered sites say `ssl_protocols TLSv1.2 TLSv1.3`; nginx must honour it whatever its
    // version (before 1.23.4 the default server's protocols decide, and its default lacks 1.3).
    let port = StubHttp::body("protocols backend\n").detach();
    let services = format!("app:127.0.0.1:{port}");
    let mut agent =
        Agent::production(free_port(), &[("DOMAINS", "proto.test:app"), ("SERVICES", &services), ("ACME", "off")]);
    agent.launch();
    agent.wait_served("proto.test", "proto.test");
    assert_eq!(
        negotiated(agent.https_port, "proto.test", &rustls::version::TLS12),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        negotiated(agent.https_port, "proto.test", &rustls::version::TLS13),
        Some(rustls::ProtocolVersion::TLSv1_3),
        "TLS 1.3 is not offered (nginx {})",
        crate::support::nginx_version()
    );
}

#[test]
fn a_ca_that_cannot_be_reached_or_trusted_is_named_with_the_cause() {
    // "client error (Connect)" alone does not tell a CA that is down from one whose TLS
    // certificate is not trusted (a wrong ACME_CA_ROOT): the error must say which.
    let pebble = Pebble::start();
    let ca_dir = tempfile::tempdir().unwrap();
    let wrong_root = throwaway_ca(ca_dir.path()).display().to_string();
    let closed = format!("https://127.0.0.1:{}/dir", free_port());
    let cases = [
        (closed.as_str(), pebble.ca_root_path().display().to_string(), "connection refused"),
        (&*pebble.directory_url(), wrong_root, "certificate"),
    ];
    for (directory, root, cause) in cases {
        let agent = Agent::production(
            free_port(),
            &[("DOMAINS", "cause.test"), ("ACME_DIRECTORY", directory), ("ACME_CA_ROOT", root.as_str())],
        );
        let out = agent.cli(&["certs", "renew", "cause.test"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{stdout}");
        let failed =
            stdout.lines().find(|l| l.starts_with("failed: cause.test: ")).unwrap_or_else(|| panic!("{stdout}"));
        eprintln!("[certs_e2e] {failed}");
        assert!(failed.contains(directory), "{failed}");
        assert!(failed.to_lowercase().contains(cause), "{cause:?} not named: {failed}");
    }
}

// --- Through a proxy in front of pebble: rate limits, an agent killed mid-order, ARI

/// The agent settings that point it at pebble through `proxy`.
fn proxy_env(pebble: &Pebble, proxy: &AcmeProxy) -> Vec<(String, String)> {
    vec![
        ("ACME_DIRECTORY".into(), proxy.directory_url()),
        ("ACME_CA_ROOT".into(), proxy.ca_root_path().display().to_string()),
        ("DNS_RESOLVERS".into(), pebble.dns_addr().to_string()),
    ]
}

fn unix(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_rate_limited_order_waits_for_retry_after_also_across_a_restart_then_issues() {
    let started = Instant::now();
    const RETRY_AFTER: u64 = 3;
    let pebble = Pebble::start();
    pebble.add_a("limited.test", Ipv4Addr::LOCALHOST);
    let proxy = AcmeProxy::start(&pebble);
    proxy.rate_limit_new_orders(2, RETRY_AFTER);
    let env = backend_env(proxy_env(&pebble, &proxy), "limited.test:app", "rate limit backend\n", &[]);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();

    // The first new order is refused: the wait is the CA's Retry-After, persisted.
    agent.wait_for("the first refusal to be recorded", Duration::from_secs(20), || {
        proxy.new_orders().len() == 1 && agent.certs_list().first().is_some_and(|r| r["status"] == "failing")
    });
    let first = proxy.new_orders()[0].clone();
    assert_eq!(first.status, 429);
    let state = agent.state("limited.test");
    let next_try = state["next_try"].as_i64().unwrap();
    assert!(next_try as f64 >= unix(first.at) + RETRY_AFTER as f64, "next try {next_try} before Retry-After: {state}");
    assert!(next_try as f64 <= unix(first.at) + RETRY_AFTER as f64 + 2.0, "waits the CA's Retry-After: {state}");
    let error = state["last_error"].as_str().unwrap();
    assert!(error.contains("urn:ietf:params:acme:error:rateLimited") && error.contains("retry after"), "{error}");
    assert!(agent.log().contains("rate limited by the CA"), "{}", agent.log());

    // Killed and restarted: the wait survives in the store's state.
    agent.kill();
    agent.stop_nginx();
    agent.launch();
    agent.wait_for("the certificate after the rate limits", Duration::from_secs(40), || {
        agent.cert_info("limited.test").is_some_and(|i| !i.placeholder)
    });
    pebble.verify_chain(&agent.fullchain("limited.test"), "limited.test");
    verify_key(&agent.live("limited.test"));

    // Never hammered: three new orders in all (two refused), each at least Retry-After after the last.
    let orders = proxy.new_orders();
    let statuses: Vec<u16> = orders.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 201], "{orders:#?}");
    assert!(orders.iter().all(|r| r.order_domain().as_deref() == Some("limited.test")));
    for pair in orders.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap();
        assert!(
            gap >= Duration::from_secs(RETRY_AFTER),
            "a new order {gap:?} after a 429 with Retry-After {RETRY_AFTER}"
        );
    }
    agent.wait_for("the failures to be reset", Duration::from_secs(5), || agent.state("limited.test")["failures"] == 0);
    report_time("rate limit", started);
}

#[test]
fn an_agent_killed_mid_order_resumes_it_with_the_same_account_and_key_and_a_second_process_waits() {
    let started = Instant::now();
    let pebble = Pebble::start();
    pebble.add_a("resume.test", Ipv4Addr::LOCALHOST);
    let proxy = AcmeProxy::start(&pebble);
    // The order is validated, then its finalization never gets through: the agent dies there.
    proxy.hold("finalize");
    let env = backend_env(proxy_env(&pebble, &proxy), "resume.test:app", "resume backend\n", &[]);
    let mut agent = pebble_agent(&pebble, &env);
    precreate(&agent.certs(), "resume.test", 10);
    let old_chain = agent.fullchain("resume.test");
    let old_key = std::fs::read(agent.live("resume.test").join("privkey.pem")).unwrap();
    agent.launch();
    agent.wait_for("the finalization to be held", Duration::from_secs(25), || proxy.held() == 1);

    // The key is journaled (0600) before the CA is asked to sign for it.
    let journal = agent.certs().join("smart-proxy/pending/resume.test.json");
    assert_eq!(std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777, 0o600);
    let journaled: serde_json::Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    assert!(journaled["order"].is_string() && journaled["key_pem"].is_string(), "{}", journaled["order"]);
    assert!(!agent.log().contains("PRIVATE KEY"));

    // A second process on the same store (`certs renew --force`) does not order meanwhile: the
    // domain's lock is held, and it says the domain is busy, not failed (exit 0: the order in
    // flight finishes in the agent).
    assert_eq!(agent.certs_list()[0]["status"], "renewing");
    let out = agent.cli(&["certs", "renew", "--force", "resume.test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("busy: resume.test: another order for this domain is running; it will finish there"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains("failed:"), "{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(proxy.new_orders().len(), 1, "one order at a time");

    let accounts = agent.certs().join("smart-proxy/accounts");
    let account_files: Vec<PathBuf> = std::fs::read_dir(&accounts).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(account_files.len(), 1);
    let account = std::fs::read(&account_files[0]).unwrap();

    agent.kill();
    // Nothing was lost meanwhile: the old certificate is on disk and still served.
    assert_eq!(agent.fullchain("resume.test"), old_chain);
    assert_eq!(std::fs::read(agent.live("resume.test").join("privkey.pem")).unwrap(), old_key);
    assert_eq!(served_leaf(agent.https_port, "resume.test"), Some(first_der(&old_chain)));
    // The lock went with the process (its file stays): not "renewing" any more.
    assert!(agent.certs().join("smart-proxy/locks/resume.test.lock").exists());
    assert_ne!(agent.certs_list()[0]["status"], "renewing");
    // The held finalization is dropped: pebble never saw it, the order is still ready.
    proxy.release(false);

    agent.stop_nginx();
    agent.launch();
    agent.wait_for("the resumed order's certificate", Duration::from_secs(25), || {
        agent.cert_info("resume.test").is_some_and(|i| !i.placeholder && agent.fullchain("resume.test") != old_chain)
    });
    pebble.verify_chain(&agent.fullchain("resume.test"), "resume.test");
    verify_key(&agent.live("resume.test"));
    let key = std::fs::read_to_string(agent.live("resume.test").join("privkey.pem")).unwrap();
    assert_eq!(Some(key.as_str()), journaled["key_pem"].as_str(), "the journaled key, not a new one");
    agent.wait_served("resume.test", "resume.test");

    let log = agent.log();
    assert!(lines_for(&log, "resuming the ACME order", "resume.test").len() == 1, "{log}");
    assert_eq!(proxy.new_orders().len(), 1, "resumed, no second order:\n{log}");
    assert_eq!(std::fs::read_dir(&accounts).unwrap().count(), 1, "the account was not re-created");
    assert_eq!(std::fs::read(&account_files[0]).unwrap(), account);
    assert!(!log.contains("registered a new ACME account"), "{log}");
    agent.wait_for("the journal to be removed", Duration::from_secs(5), || !journal.exists());
    report_time("killed mid-order", started);
}

#[test]
fn the_cas_renewal_window_is_cached_until_retry_after_and_renews_with_replaces() {
    use smart_proxy::certs::store::ari_id;
    let started = Instant::now();
    let pebble = Pebble::start();
    pebble.add_a("ari.test", Ipv4Addr::LOCALHOST);
    let proxy = AcmeProxy::start(&pebble);
    let day = 86400;
    proxy.serve_renewal_info(FakeWindow { start: 30 * day, end: 31 * day, retry_after: 3600 });
    let env = backend_env(proxy_env(&pebble, &proxy), "ari.test:app", "ari backend\n", &[]);
    let mut agent = pebble_agent(&pebble, &env);
    agent.launch();
    agent.wait_for("the first certificate", Duration::from_secs(25), || {
        agent.cert_info("ari.test").is_some_and(|i| !i.placeholder)
    });
    let first_chain = agent.fullchain("ari.test");
    let first_id = ari_id(&parse_cert(&first_der(&first_chain))).expect("pebble's leaf has an AKI");
    let ari_gets = || proxy.requests().iter().filter(|r| r.path.starts_with("/renewal-info/")).count();
    let renew = |agent: &Agent| {
        let out = agent.cli(&["certs", "renew", "ari.test"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // A window a month ahead: fetched, a point chosen in it, nothing ordered.
    let (stdout, _) = renew(&agent);
    assert!(stdout.contains("nothing to order"), "{stdout}");
    assert_eq!(ari_gets(), 1);
    let path = agent.certs().join("smart-proxy/ari/ari.test.json");
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(cached["cert_id"], first_id.as_str());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let renew_at = cached["window"]["renew_at"].as_i64().unwrap();
    assert!(renew_at >= now + 30 * day - 60 && renew_at <= now + 31 * day, "{cached}");
    assert!((now + 3500..=now + 3600).contains(&cached["next_fetch"].as_i64().unwrap()), "Retry-After: {cached}");

    // The CA moves the window into the past; until Retry-After, the cached window stands.
    proxy.serve_renewal_info(FakeWindow { start: -3600, end: -60, retry_after: 3600 });
    let (stdout, _) = renew(&agent);
    assert!(stdout.contains("nothing to order"), "{stdout}");
    assert_eq!(ari_gets(), 1, "cached until Retry-After");
    assert_eq!(proxy.new_orders().len(), 1);

    // Retry-After has passed (simulated): fetched again, and renewed now, naming what it replaces.
    let mut stale = cached.clone();
    stale["next_fetch"] = (now - 1).into();
    std::fs::write(&path, stale.to_string()).unwrap();
    let (stdout, stderr) = renew(&agent);
    assert!(stdout.lines().any(|l| l == "issued: ari.test"), "{stdout}\n{stderr}");
    assert!(stderr.contains("the CA's renewal window (ARI) says to renew"), "{stderr}");
    assert_eq!(ari_gets(), 2);
    let orders = proxy.new_orders();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[1].payload.as_ref().unwrap()["replaces"], first_id.as_str(), "{:?}", orders[1].payload);
    assert!(orders[0].payload.as_ref().unwrap().get("replaces").is_none(), "a first order replaces nothing");
    assert_ne!(agent.fullchain("ari.test"), first_chain);
    pebble.verify_chain(&agent.fullchain("ari.test"), "ari.test");
    verify_key(&agent.live("ari.test"));
    agent.wait_served("ari.test", "ari.test");
    report_time("ARI", started);
}

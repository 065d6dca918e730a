//! A real ACME CA for tests: Debian's `pebble` plus `pebble-challtestsrv` (its mock DNS), both on
//! 127.0.0.1 and free ports, killed on drop.
//!
//! Pebble ships no TLS certificate: we generate a CA and a `localhost`/`127.0.0.1` leaf with rcgen
//! and point its config at them; [`Pebble::ca_root_path`] is what the ACME client must trust.
//! Pebble resolves every name through challtestsrv (`-dnsserver`), which answers A queries with
//! 127.0.0.1 and serves the TXT records the tests set. HTTP-01 validation connects to
//! [`Pebble::http_port`], where the test serves the challenge.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::free_port;

/// Paths of Debian's `pebble` package (installed by `.ci/run`).
pub fn pebble_bin() -> PathBuf {
    bin("TEST_PEBBLE_BIN", "/usr/bin/pebble")
}

pub fn challtestsrv_bin() -> PathBuf {
    bin("TEST_PEBBLE_CHALLTESTSRV_BIN", "/usr/bin/pebble-challtestsrv")
}

fn bin(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.into()));
    assert!(
        path.exists(),
        "{} is required for the ACME tests and was not found (install Debian's pebble: apt-get install pebble; .ci/run does this)",
        path.display()
    );
    path
}

pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    challtestsrv: Child,
    acme_port: u16,
    management_port: u16,
    dns_port: u16,
    challtestsrv_port: u16,
    http_port: u16,
    ca_root_pem: String,
    issuer_roots_pem: String,
}

impl Pebble {
    /// Starts challtestsrv and pebble and waits until both answer. Retries with new ports if a
    /// port picked as free was taken meanwhile.
    pub fn start() -> Pebble {
        Self::start_with(&[])
    }

    /// [`Pebble::start`] with extra environment for pebble (e.g. `PEBBLE_AUTHZREUSE=100`), set
    /// after the defaults so it overrides them.
    pub fn start_with(env: &[(&str, &str)]) -> Pebble {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(env) {
                Ok(pebble) => return pebble,
                Err(e) => last_error = e,
            }
        }
        panic!("pebble did not start: {last_error}");
    }

    fn try_start(env: &[(&str, &str)]) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_root_pem, cert_pem, key_pem) = tls_certificates();
        std::fs::write(dir.path().join("ca.pem"), &ca_root_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();

        let dns_port = free_udp_tcp_port();
        let challtestsrv_port = free_port();
        let acme_port = free_port();
        let management_port = free_port();
        let http_port = free_port();
        let tls_port = free_port();

        let challtestsrv = Command::new(challtestsrv_bin())
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{challtestsrv_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "challtestsrv.log"))
            .stderr(log_file(dir.path(), "challtestsrv.log"))
            .spawn()
            .expect("start pebble-challtestsrv");

        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let pebble = Command::new(pebble_bin())
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random validation delay, no rejected nonces, no reused authorizations: fast and
            // deterministic (every order validates its challenge).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "pebble.log"))
            .stderr(log_file(dir.path(), "pebble.log"))
            .spawn()
            .expect("start pebble");

        let mut started = Pebble {
            dir,
            pebble,
            challtestsrv,
            acme_port,
            management_port,
            dns_port,
            challtestsrv_port,
            http_port,
            ca_root_pem,
            issuer_roots_pem: String::new(),
        };
        started.wait_ready()?;
        Ok(started)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for name in ["pebble", "pebble-challtestsrv"] {
                let child = if name == "pebble" { &mut self.pebble } else { &mut self.challtestsrv };
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{name} exited ({status}):\n{}", self.logs()));
                }
            }
            let cts_up = TcpStream::connect(("127.0.0.1", self.challtestsrv_port)).is_ok();
            let dir_up = cts_up && matches!(self.https_get(self.acme_port, "/dir"), Ok((200, _)));
            if dir_up {
                if let Ok((200, roots)) = self.https_get(self.management_port, "/roots/0") {
                    self.issuer_roots_pem = String::from_utf8(roots).expect("PEM roots");
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("pebble or challtestsrv did not answer within 20s:\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ACME directory URL (https, on 127.0.0.1).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The CA that signed pebble's own TLS certificate (what the ACME client trusts).
    pub fn ca_root_pem(&self) -> &str {
        &self.ca_root_pem
    }

    /// [`Pebble::ca_root_pem`] as a file, for `AcmeSettings::ca_root`.
    pub fn ca_root_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Pebble's issuing root (regenerated at every start), to verify issued chains against.
    pub fn issuer_roots_pem(&self) -> &str {
        &self.issuer_roots_pem
    }

    /// The mock DNS server pebble resolves through.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.dns_port))
    }

    /// The port pebble connects to for HTTP-01 validation (on the address the name resolves to).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Makes `host` resolve to `ip` (A record).
    pub fn add_a(&self, host: &str, ip: Ipv4Addr) {
        self.manage("/add-a", serde_json::json!({ "host": fqdn(host), "addresses": [ip.to_string()] }));
    }

    /// What A queries for names without a record of their own get (challtestsrv's default:
    /// 127.0.0.1).
    pub fn set_default_ipv4(&self, ip: Ipv4Addr) {
        self.manage("/set-default-ipv4", serde_json::json!({ "ip": ip.to_string() }));
    }

    /// No AAAA answer for names without a record of their own (challtestsrv's default: ::1).
    pub fn clear_default_ipv6(&self) {
        self.manage("/set-default-ipv6", serde_json::json!({ "ip": "" }));
    }

    /// Sets the TXT record of `host` (e.g. `_acme-challenge.a.test`) to `value`.
    pub fn set_txt(&self, host: &str, value: &str) {
        self.manage("/set-txt", serde_json::json!({ "host": fqdn(host), "value": value }));
    }

    pub fn clear_txt(&self, host: &str) {
        self.manage("/clear-txt", serde_json::json!({ "host": fqdn(host) }));
    }

    /// Both servers' output so far, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("--- pebble ---\n{}\n--- challtestsrv ---\n{}", read("pebble.log"), read("challtestsrv.log"))
    }

    fn manage(&self, path: &str, body: serde_json::Value) {
        let body = body.to_string();
        let (status, response) = http_request(self.challtestsrv_port, "POST", path, &body);
        assert_eq!(status, 200, "challtestsrv {path} {body}: {}", String::from_utf8_lossy(&response));
    }

    /// A GET over TLS to pebble (its ACME or management port), trusting our CA.
    fn https_get(&self, port: u16, path: &str) -> Result<(u16, Vec<u8>), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca_root_pem.as_bytes()).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        write!(tls, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // Go closes without close_notify on HTTP/1.0; the response is complete by then.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(split_response(&raw))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtestsrv] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    }
}

fn log_file(dir: &Path, name: &str) -> File {
    File::options().create(true).append(true).open(dir.join(name)).unwrap()
}

/// A plain HTTP/1.0 request to 127.0.0.1:`port`; returns the status and body.
pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    split_response(&raw)
}

fn split_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, raw[end..].to_vec())
}

/// A port free for both UDP and TCP (DNS listens on both).
fn free_udp_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A throwaway CA and a leaf for `localhost` and 127.0.0.1 signed by it: (CA PEM, leaf PEM, leaf
/// key PEM).
fn tls_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "smart-proxy test CA for pebble");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names.push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

/// A cloneable handle on challtestsrv's management API, for use from other threads and `'static`
/// callbacks (e.g. a Cloudflare fake's TXT hook mirroring records into the mock DNS).
#[derive(Clone, Debug)]
pub struct ChallTestSrv {
    port: u16,
}

impl Pebble {
    /// A handle on the mock DNS's management API that outlives borrows of `self`. It stops
    /// working when the `Pebble` is dropped.
    pub fn challtestsrv(&self) -> ChallTestSrv {
        ChallTestSrv { port: self.challtestsrv_port }
    }
}

impl ChallTestSrv {
    /// Makes `host` resolve to `ip` (A record).
    pub fn add_a(&self, host: &str, ip: Ipv4Addr) {
        self.manage("/add-a", serde_json::json!({ "host": fqdn(host), "addresses": [ip.to_string()] }));
    }

    /// Adds `value` to the TXT records of `host` (challtestsrv keeps every value set until cleared).
    pub fn set_txt(&self, host: &str, value: &str) {
        self.manage("/set-txt", serde_json::json!({ "host": fqdn(host), "value": value }));
    }

    /// Removes every TXT record of `host`.
    pub fn clear_txt(&self, host: &str) {
        self.manage("/clear-txt", serde_json::json!({ "host": fqdn(host) }));
    }

    fn manage(&self, path: &str, body: serde_json::Value) {
        let body = body.to_string();
        let (status, response) = http_request(self.port, "POST", path, &body);
        assert_eq!(status, 200, "challtestsrv {path} {body}: {}", String::from_utf8_lossy(&response));
    }
}

/// The DER certificates of a PEM bundle, in order.
pub fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).map(|p| p.expect("PEM").contents).collect()
}

pub fn parse_cert(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).expect("certificate").1
}

impl Pebble {
    /// The chain links leaf → intermediates → one of pebble's issuing roots with valid signatures,
    /// and the leaf is valid now and names exactly `domain`.
    pub fn verify_chain(&self, fullchain_pem: &str, domain: &str) {
        use x509_parser::extensions::GeneralName;
        let ders = pem_ders(fullchain_pem);
        assert!(ders.len() >= 2, "leaf and intermediate expected:\n{fullchain_pem}");
        let chain: Vec<_> = ders.iter().map(|der| parse_cert(der)).collect();
        let leaf = &chain[0];
        assert!(leaf.validity().is_valid(), "leaf not valid now: {:?}", leaf.validity());
        let san = leaf.subject_alternative_name().unwrap().expect("SAN");
        let names: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| if let GeneralName::DNSName(d) = n { Some(*d) } else { None })
            .collect();
        assert_eq!(names, [domain]);
        for pair in chain.windows(2) {
            assert_eq!(pair[0].issuer(), pair[1].subject(), "chain order");
            pair[0].verify_signature(Some(pair[1].public_key())).expect("signed by the next certificate");
        }
        let roots = pem_ders(self.issuer_roots_pem());
        let last = chain.last().unwrap();
        let root = roots
            .iter()
            .map(|der| parse_cert(der))
            .find(|root| root.subject() == last.issuer())
            .unwrap_or_else(|| panic!("no pebble root named {}", last.issuer()));
        last.verify_signature(Some(root.public_key())).expect("signed by pebble's root");
    }
}

// --- A proxy in front of pebble: rate limits, held requests, renewal information

/// An HTTPS proxy in front of [`Pebble`]'s ACME API, for what pebble itself cannot do: answer
/// new-order requests with a rate limit (429 `rateLimited` + Retry-After), hold a request (an
/// order in progress when the agent is killed), and serve ACME Renewal Information (RFC 9773;
/// Debian's pebble 2.4 has none). It terminates TLS with its own test CA
/// ([`AcmeProxy::ca_root_path`]) and forwards each request to pebble over TLS with the `Host` it
/// received, so pebble's URLs (built from `Host`) all point back at the proxy and its JWS `url`
/// checks hold. Every request is recorded with its time.
pub struct AcmeProxy {
    dir: tempfile::TempDir,
    port: u16,
    shared: Arc<ProxyShared>,
}

#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub method: String,
    pub path: String,
    pub at: std::time::SystemTime,
    pub status: u16,
    /// The decoded JWS payload of a POST (`None` for POST-as-GET and GETs).
    pub payload: Option<serde_json::Value>,
}

impl ProxiedRequest {
    /// The first DNS identifier of a new-order payload.
    pub fn order_domain(&self) -> Option<String> {
        self.payload.as_ref()?["identifiers"][0]["value"].as_str().map(String::from)
    }
}

/// A renewal window relative to the moment it is asked for, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct FakeWindow {
    pub start: i64,
    pub end: i64,
    pub retry_after: u64,
}

#[derive(Default)]
struct ProxyState {
    requests: Vec<ProxiedRequest>,
    /// New-order requests still to answer with 429, and the Retry-After to send.
    rate_limit: (usize, u64),
    /// Requests whose path contains this are held until released.
    hold: Option<String>,
    held: usize,
    /// `Some(forward)` once released.
    released: Option<bool>,
    ari: Option<FakeWindow>,
}

struct ProxyShared {
    upstream_port: u16,
    upstream_tls: Arc<rustls::ClientConfig>,
    new_order_path: String,
    state: Mutex<ProxyState>,
}

impl AcmeProxy {
    pub fn start(pebble: &Pebble) -> AcmeProxy {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, cert_pem, key_pem) = tls_certificates();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pebble.ca_root_pem.as_bytes()).unwrap()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (_, directory) = pebble.https_get(pebble.acme_port, "/dir").expect("pebble's directory");
        let directory: serde_json::Value = serde_json::from_slice(&directory).unwrap();
        let new_order = directory["newOrder"].as_str().expect("newOrder");
        let new_order_path = new_order.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            upstream_port: pebble.acme_port,
            upstream_tls: Arc::new(client),
            new_order_path,
            state: Mutex::new(ProxyState::default()),
        });
        let server = Arc::new(server);
        let weak = Arc::downgrade(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Some(shared) = weak.upgrade() else { break };
                let Ok(stream) = stream else { continue };
                let server = server.clone();
                std::thread::spawn(move || serve_connection(stream, server, shared));
            }
        });
        AcmeProxy { dir, port, shared }
    }

    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of the proxy's TLS certificate (the ACME client's `ACME_CA_ROOT`).
    pub fn ca_root_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Answers the next `count` new-order requests with 429 `rateLimited` and `Retry-After:
    /// retry_after` seconds, without forwarding them.
    pub fn rate_limit_new_orders(&self, count: usize, retry_after: u64) {
        self.shared.state.lock().unwrap().rate_limit = (count, retry_after);
    }

    /// Holds every request whose path contains `pattern` (e.g. `finalize`) until [`release`].
    pub fn hold(&self, pattern: &str) {
        let mut state = self.shared.state.lock().unwrap();
        state.hold = Some(pattern.to_string());
        state.released = None;
    }

    /// How many requests are being held (or were, before a release).
    pub fn held(&self) -> usize {
        self.shared.state.lock().unwrap().held
    }

    /// Ends the hold: held requests are forwarded (`forward`) or their connections dropped
    /// unanswered; later requests pass.
    pub fn release(&self, forward: bool) {
        let mut state = self.shared.state.lock().unwrap();
        state.hold = None;
        state.released = Some(forward);
    }

    /// Adds `renewalInfo` to the directory and answers it with `window`.
    pub fn serve_renewal_info(&self, window: FakeWindow) {
        self.shared.state.lock().unwrap().ari = Some(window);
    }

    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// The new-order requests so far (answered or not).
    pub fn new_orders(&self) -> Vec<ProxiedRequest> {
        let path = &self.shared.new_order_path;
        self.requests().into_iter().filter(|r| r.method == "POST" && &r.path == path).collect()
    }
}

struct HttpRequest {
    method: String,
    path: String,
    host: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut impl std::io::BufRead) -> Option<HttpRequest> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let (mut host, mut content_type, mut length) = (String::new(), None, 0usize);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => host = value,
            "content-type" => content_type = Some(value),
            "content-length" => length = value.parse().ok()?,
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest { method, path, host, content_type, body })
}

fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jws["payload"].as_str()?).ok()?;
    serde_json::from_slice(&payload).ok()
}

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn serve_connection(stream: TcpStream, server: Arc<rustls::ServerConfig>, shared: Arc<ProxyShared>) {
    let Ok(connection) = rustls::ServerConnection::new(server) else { return };
    let tls = rustls::StreamOwned::new(connection, stream);
    let mut reader = std::io::BufReader::new(tls);
    while let Some(request) = read_request(&mut reader) {
        let Some(response) = handle(&shared, &request) else { return };
        let mut out = format!("HTTP/1.1 {} X\r\n", response.status);
        for (name, value) in &response.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&response.body);
        let tls = reader.get_mut();
        if tls.write_all(&bytes).and_then(|_| tls.flush()).is_err() {
            return;
        }
    }
}

/// The proxy's answer to one request; `None` drops the connection unanswered.
fn handle(shared: &ProxyShared, request: &HttpRequest) -> Option<HttpResponse> {
    let payload = if request.method == "POST" { jws_payload(&request.body) } else { None };
    let record = |status: u16| {
        shared.state.lock().unwrap().requests.push(ProxiedRequest {
            method: request.method.clone(),
            path: request.path.clone(),
            at: std::time::SystemTime::now(),
            status,
            payload: payload.clone(),
        });
    };
    let json = |status: u16, headers: Vec<(String, String)>, body: serde_json::Value| HttpResponse {
        status,
        headers,
        body: body.to_string().into_bytes(),
    };

    // Renewal information.
    let ari = shared.state.lock().unwrap().ari;
    if let (Some(window), Some(_id)) = (ari, request.path.strip_prefix("/renewal-info/")) {
        let now = time::OffsetDateTime::now_utc();
        let at = |offset: i64| {
            (now + time::Duration::seconds(offset)).format(&time::format_description::well_known::Rfc3339).unwrap()
        };
        record(200);
        let body = serde_json::json!({ "suggestedWindow": { "start": at(window.start), "end": at(window.end) } });
        let headers = vec![
            ("Content-Type".into(), "application/json".into()),
            ("Retry-After".into(), window.retry_after.to_string()),
        ];
        return Some(json(200, headers, body));
    }

    // Rate limit on new orders.
    if request.method == "POST" && request.path == shared.new_order_path {
        let mut state = shared.state.lock().unwrap();
        if state.rate_limit.0 > 0 {
            state.rate_limit.0 -= 1;
            let retry_after = state.rate_limit.1;
            drop(state);
            record(429);
            let body = serde_json::json!({
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders recently (test proxy)",
                "status": 429,
            });
            let headers = vec![
                ("Content-Type".into(), "application/problem+json".into()),
                ("Retry-After".into(), retry_after.to_string()),
            ];
            return Some(json(429, headers, body));
        }
    }

    // Held requests.
    let pattern = shared.state.lock().unwrap().hold.clone();
    if pattern.is_some_and(|p| request.path.contains(&p)) {
        shared.state.lock().unwrap().held += 1;
        let forward = loop {
            if let Some(forward) = shared.state.lock().unwrap().released {
                break forward;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !forward {
            record(0);
            return None;
        }
    }

    let mut response = forward(shared, request)?;
    if request.path == "/dir" && ari.is_some() {
        let mut directory: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
        directory["renewalInfo"] = format!("https://{}/renewal-info", request.host).into();
        response.body = directory.to_string().into_bytes();
    }
    // ARI: a new order that names the certificate it replaces has it reflected (RFC 9773
    // section 5); pebble 2.4 does not know the field.
    if let Some(replaces) = payload.as_ref().and_then(|p| p.get("replaces")).filter(|_| response.status == 201) {
        if let Ok(mut order) = serde_json::from_slice::<serde_json::Value>(&response.body) {
            order["replaces"] = replaces.clone();
            response.body = order.to_string().into_bytes();
        }
    }
    record(response.status);
    Some(response)
}

/// Sends `request` to pebble over TLS (HTTP/1.0: the response ends with the connection).
fn forward(shared: &ProxyShared, request: &HttpRequest) -> Option<HttpResponse> {
    use rustls::pki_types::ServerName;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(shared.upstream_tls.clone(), name).ok()?;
    let tcp = TcpStream::connect(("127.0.0.1", shared.upstream_port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let mut head = format!("{} {} HTTP/1.0\r\nHost: {}\r\n", request.method, request.path, request.host);
    if let Some(content_type) = &request.content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", request.body.len()));
    tls.write_all(head.as_bytes()).ok()?;
    tls.write_all(&request.body).ok()?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(_) => return None,
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .filter(|(n, _)| {
            !matches!(n.to_ascii_lowercase().as_str(), "connection" | "content-length" | "transfer-encoding")
        })
        .collect();
    Some(HttpResponse { status, headers, body: raw[end..].to_vec() })
}

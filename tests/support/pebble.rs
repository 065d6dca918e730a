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
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

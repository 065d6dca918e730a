//! The ACME client layer against a real CA: pebble and its mock DNS (challtestsrv), one pair per
//! test. DNS-01 through TXT records set in the mock DNS, HTTP-01 through a tiny server on the port
//! pebble validates on; issued chains are verified against pebble's issuing root.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smart_proxy::certs::acme::{
    self, AcmeError, AcmeSettings, ChallengeKind, ChallengeResponse, Issued, Solver, SolverError,
};
use smart_proxy::routes::DomainName;

use crate::support::pebble::{parse_cert, pem_ders, Pebble};
use crate::support::stub_http::StubHttp;

fn settings(pebble: &Pebble, email: Option<&str>) -> AcmeSettings {
    AcmeSettings {
        directory: pebble.directory_url(),
        email: email.map(String::from),
        eab: None,
        ca_root: Some(pebble.ca_root_path()),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[derive(Default)]
struct Calls {
    presented: Vec<ChallengeResponse>,
    cleaned: Vec<ChallengeResponse>,
}

#[derive(Clone, Copy, PartialEq)]
enum Dns {
    Correct,
    WrongValue,
    FailPresent,
}

/// DNS-01 through challtestsrv's TXT records.
struct DnsSolver<'a> {
    pebble: &'a Pebble,
    behaviour: Dns,
    calls: Mutex<Calls>,
}

impl<'a> DnsSolver<'a> {
    fn new(pebble: &'a Pebble, behaviour: Dns) -> Self {
        DnsSolver { pebble, behaviour, calls: Mutex::default() }
    }
}

impl Solver for DnsSolver<'_> {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Dns01
    }

    async fn present(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        self.calls.lock().unwrap().presented.push(challenge.clone());
        let ChallengeResponse::Dns01 { record, value, .. } = challenge else {
            return Err(SolverError::new(format!("a DNS solver got {challenge:?}")));
        };
        match self.behaviour {
            Dns::Correct => self.pebble.set_txt(record, value),
            Dns::WrongValue => self.pebble.set_txt(record, "bm90LXRoZS1rZXktYXV0aG9yaXphdGlvbi1kaWdlc3Q"),
            Dns::FailPresent => return Err(SolverError::new("the DNS provider refused the record")),
        }
        Ok(())
    }

    async fn cleanup(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        self.calls.lock().unwrap().cleaned.push(challenge.clone());
        if let ChallengeResponse::Dns01 { record, .. } = challenge {
            self.pebble.clear_txt(record);
        }
        Ok(())
    }
}

/// HTTP-01 through the stub HTTP server on 127.0.0.1:<pebble's httpPort>.
struct HttpSolver {
    _server: StubHttp,
    tokens: Arc<Mutex<HashMap<String, String>>>,
    served: Arc<AtomicUsize>,
    calls: Mutex<Calls>,
}

impl HttpSolver {
    fn serve(port: u16) -> Self {
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let served = Arc::new(AtomicUsize::new(0));
        let (t, s) = (tokens.clone(), served.clone());
        let server = StubHttp::start(port, move |request| {
            let token = request.path.strip_prefix("/.well-known/acme-challenge/")?;
            let body = t.lock().unwrap().get(token).cloned()?;
            s.fetch_add(1, Ordering::SeqCst);
            Some(body)
        });
        HttpSolver { _server: server, tokens, served, calls: Mutex::default() }
    }
}

impl Solver for HttpSolver {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    async fn present(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        self.calls.lock().unwrap().presented.push(challenge.clone());
        let ChallengeResponse::Http01 { token, key_authorization, .. } = challenge else {
            return Err(SolverError::new(format!("an HTTP solver got {challenge:?}")));
        };
        self.tokens.lock().unwrap().insert(token.clone(), key_authorization.clone());
        Ok(())
    }

    async fn cleanup(&self, challenge: &ChallengeResponse) -> Result<(), SolverError> {
        self.calls.lock().unwrap().cleaned.push(challenge.clone());
        if let ChallengeResponse::Http01 { token, .. } = challenge {
            self.tokens.lock().unwrap().remove(token);
        }
        Ok(())
    }
}

/// The chain is pebble's (see `Pebble::verify_chain`), its expiry is the one reported, and the
/// private key belongs to the leaf.
fn verify_issued(pebble: &Pebble, issued: &Issued, domain: &str) {
    pebble.verify_chain(&issued.fullchain_pem, domain);
    let leaf_der = pem_ders(&issued.fullchain_pem).remove(0);
    let leaf = parse_cert(&leaf_der);
    assert_eq!(leaf.validity().not_after.to_datetime(), issued.not_after);

    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(issued.key_pem.expose()).expect("private key PEM");
    assert_eq!(key.subject_public_key_info(), leaf.public_key().raw, "the key belongs to the leaf");
}

#[tokio::test]
async fn dns01_issues_and_writes_certbots_layout() {
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let account =
        acme::account(&store.path().join("accounts"), &settings(&pebble, Some("ops@example.com"))).await.unwrap();
    let domain = DomainName::parse("dns.test").unwrap();
    let solver = DnsSolver::new(&pebble, Dns::Correct);

    let issued = acme::issue(&account, &domain, &solver).await.unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    verify_issued(&pebble, &issued, "dns.test");
    let calls = solver.calls.lock().unwrap();
    let expected_record = "_acme-challenge.dns.test";
    assert!(
        matches!(&calls.presented[..], [ChallengeResponse::Dns01 { record, domain, .. }] if record == expected_record && domain == "dns.test"),
        "{:?}",
        calls.presented
    );
    assert_eq!(calls.cleaned, calls.presented, "cleaned up after success");

    let certs = tempfile::tempdir().unwrap();
    let dir = acme::write_certificate(certs.path(), &domain, &issued).unwrap();
    assert_eq!(dir, certs.path().join("live/dns.test"));
    assert_eq!(mode(&dir.join("privkey.pem")), 0o600);
    assert_eq!(std::fs::read_to_string(dir.join("fullchain.pem")).unwrap(), issued.fullchain_pem);
    assert_eq!(std::fs::read_to_string(dir.join("privkey.pem")).unwrap(), issued.key_pem.expose());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no temporary file left behind");
}

#[tokio::test]
async fn dns01_issues_a_wildcard() {
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    let domain = DomainName::parse("*.wild.test").unwrap();
    let solver = DnsSolver::new(&pebble, Dns::Correct);

    let issued = acme::issue(&account, &domain, &solver).await.unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    verify_issued(&pebble, &issued, "*.wild.test");
    let calls = solver.calls.lock().unwrap();
    assert!(
        matches!(&calls.presented[..], [ChallengeResponse::Dns01 { record, domain, .. }] if record == "_acme-challenge.wild.test" && domain == "wild.test"),
        "{:?}",
        calls.presented
    );
    assert_eq!(calls.cleaned, calls.presented);

    let certs = tempfile::tempdir().unwrap();
    let dir = acme::write_certificate(certs.path(), &domain, &issued).unwrap();
    assert_eq!(dir, certs.path().join("live/_.wild.test"));
    assert_eq!(mode(&dir.join("privkey.pem")), 0o600);
}

#[tokio::test]
async fn http01_issues_through_the_served_token() {
    let pebble = Pebble::start();
    pebble.add_a("web.test", Ipv4Addr::LOCALHOST);
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    let domain = DomainName::parse("web.test").unwrap();
    let solver = HttpSolver::serve(pebble.http_port());

    let issued = acme::issue(&account, &domain, &solver).await.unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    verify_issued(&pebble, &issued, "web.test");
    assert!(solver.served.load(Ordering::SeqCst) >= 1, "pebble fetched the token from our server");
    let calls = solver.calls.lock().unwrap();
    match &calls.presented[..] {
        [challenge @ ChallengeResponse::Http01 { domain, token, key_authorization }] => {
            assert_eq!(domain, "web.test");
            assert!(key_authorization.starts_with(&format!("{token}.")), "token.thumbprint");
            assert_eq!(challenge.http_path().unwrap(), format!("/.well-known/acme-challenge/{token}"));
        }
        other => panic!("one HTTP-01 challenge expected: {other:?}"),
    }
    assert_eq!(calls.cleaned, calls.presented);
    assert!(solver.tokens.lock().unwrap().is_empty(), "the token is no longer served");
}

#[tokio::test]
async fn a_valid_authorization_is_reused_without_a_challenge() {
    // Let's Encrypt reuses valid authorizations (renewals); pebble does when told to.
    let pebble = Pebble::start_with(&[("PEBBLE_AUTHZREUSE", "100")]);
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    let domain = DomainName::parse("reuse.test").unwrap();
    let first = DnsSolver::new(&pebble, Dns::Correct);
    acme::issue(&account, &domain, &first).await.unwrap();
    assert_eq!(first.calls.lock().unwrap().presented.len(), 1);

    let second = DnsSolver::new(&pebble, Dns::Correct);
    let issued = acme::issue(&account, &domain, &second).await.unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    verify_issued(&pebble, &issued, "reuse.test");
    let calls = second.calls.lock().unwrap();
    assert!(calls.presented.is_empty() && calls.cleaned.is_empty(), "no challenge for a valid authorization");
}

#[tokio::test]
async fn http01_refuses_a_wildcard_before_any_order() {
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    // With the CA gone, any attempt to place an order would fail with a connection error.
    drop(pebble);
    let solver = HttpSolver::serve(crate::support::free_port());
    let domain = DomainName::parse("*.wild.test").unwrap();

    let err = acme::issue(&account, &domain, &solver).await.unwrap_err();
    assert!(matches!(err, AcmeError::WildcardNeedsDns { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "*.wild.test: HTTP-01 cannot validate a wildcard name; use DNS-01 for wildcard domains"
    );
    let calls = solver.calls.lock().unwrap();
    assert!(calls.presented.is_empty() && calls.cleaned.is_empty());
}

#[tokio::test]
async fn account_is_registered_once_and_reused() {
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let first =
        acme::account(&store.path().join("accounts"), &settings(&pebble, Some("ops@example.com"))).await.unwrap();
    assert!(first.created());
    let path = first.credentials_path().to_path_buf();
    assert!(path.starts_with(store.path().join("accounts")), "{}", path.display());
    assert_eq!(mode(&path), 0o600);

    let second =
        acme::account(&store.path().join("accounts"), &settings(&pebble, Some("ops@example.com"))).await.unwrap();
    assert!(!second.created(), "restored, not registered again");
    assert_eq!(second.id(), first.id());
    assert_eq!(second.credentials_path(), path);
    assert_eq!(std::fs::read_dir(store.path().join("accounts")).unwrap().count(), 1);

    // The restored account works: it can order.
    let domain = DomainName::parse("again.test").unwrap();
    acme::issue(&second, &domain, &DnsSolver::new(&pebble, Dns::Correct)).await.unwrap();

    // Another email is another account.
    let other =
        acme::account(&store.path().join("accounts"), &settings(&pebble, Some("dev@example.com"))).await.unwrap();
    assert!(other.created());
    assert_ne!(other.id(), first.id());
    assert_eq!(std::fs::read_dir(store.path().join("accounts")).unwrap().count(), 2);

    // The account key is in the file, never in Debug output.
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let key = stored["key_pkcs8"].as_str().expect("instant-acme credentials");
    assert_eq!(stored["directory"], pebble.directory_url());
    assert!(!format!("{first:?}{second:?}").contains(key));
}

#[tokio::test]
async fn failed_validation_keeps_the_ca_detail_and_cleans_up() {
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    let domain = DomainName::parse("wrong.test").unwrap();
    let solver = DnsSolver::new(&pebble, Dns::WrongValue);

    let err = acme::issue(&account, &domain, &solver).await.unwrap_err();
    assert!(matches!(err, AcmeError::Validation { kind: ChallengeKind::Dns01, .. }), "{err:?}");
    let problem = err.problem().expect("the CA's problem document");
    assert_eq!(problem.r#type.as_deref(), Some("urn:ietf:params:acme:error:unauthorized"), "{problem:?}");
    let detail = problem.detail.as_deref().expect("detail");
    let message = err.to_string();
    assert!(message.starts_with("the ACME CA could not validate the DNS-01 challenge for wrong.test: "), "{message}");
    assert!(message.contains(detail), "{message}");
    assert!(!err.is_rate_limited());
    assert_eq!(err.retry_after(), None);
    let calls = solver.calls.lock().unwrap();
    assert_eq!(calls.presented.len(), 1);
    assert_eq!(calls.cleaned, calls.presented, "cleaned up after a failed validation");
}

#[tokio::test]
async fn failed_present_still_cleans_up() {
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    let domain = DomainName::parse("refused.test").unwrap();
    let solver = DnsSolver::new(&pebble, Dns::FailPresent);

    let err = acme::issue(&account, &domain, &solver).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot present the DNS-01 challenge for refused.test: the DNS provider refused the record"
    );
    let calls = solver.calls.lock().unwrap();
    assert_eq!(calls.presented.len(), 1);
    assert_eq!(calls.cleaned, calls.presented, "cleanup runs for a response whose present failed");
}

#[tokio::test]
async fn renewal_information_where_the_ca_offers_it_and_replaces_on_the_next_order() {
    use crate::support::pebble::{AcmeProxy, FakeWindow};
    let pebble = Pebble::start();
    let store = tempfile::tempdir().unwrap();
    let domain = DomainName::parse("ari.test").unwrap();

    // Debian's pebble 2.4 offers no ARI: no window, no request, not an error.
    let account = acme::account(&store.path().join("accounts"), &settings(&pebble, None)).await.unwrap();
    let issued = acme::issue(&account, &domain, &DnsSolver::new(&pebble, Dns::Correct)).await.unwrap();
    let leaf = pem_ders(&issued.fullchain_pem).remove(0);
    let id = smart_proxy::certs::store::ari_id(&parse_cert(&leaf)).expect("an AKI");
    assert!(acme::renewal_info(&account, &id).await.unwrap().is_none());

    // Through the proxy, which serves `renewalInfo` (RFC 9773).
    let proxy = AcmeProxy::start(&pebble);
    proxy.serve_renewal_info(FakeWindow { start: -60, end: 3600, retry_after: 120 });
    let through = AcmeSettings {
        directory: proxy.directory_url(),
        ca_root: Some(proxy.ca_root_path()),
        ..settings(&pebble, None)
    };
    let store = tempfile::tempdir().unwrap();
    let account = acme::account(&store.path().join("accounts"), &through).await.unwrap();
    let (window, retry_after) = acme::renewal_info(&account, &id).await.unwrap().expect("a window");
    let now = time::OffsetDateTime::now_utc();
    assert!(window.start < now && window.end > now + time::Duration::minutes(59), "{window:?}");
    assert!(retry_after <= Duration::from_secs(120) && retry_after > Duration::from_secs(110), "{retry_after:?}");
    let asked = proxy.requests();
    assert!(asked.iter().any(|r| r.method == "GET" && r.path == format!("/renewal-info/{id}")), "{asked:#?}");

    // The renewal names the certificate it replaces.
    let options = acme::IssueOptions { replaces: Some(id.clone()), journal: None };
    let renewed = acme::issue_with(&account, &domain, &DnsSolver::new(&pebble, Dns::Correct), &options)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    verify_issued(&pebble, &renewed, "ari.test");
    let orders = proxy.new_orders();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].payload.as_ref().unwrap()["replaces"], id.as_str());

    // Against pebble directly (no ARI), `replaces` is left out rather than failing the order.
    let account = acme::account(tempfile::tempdir().unwrap().path(), &settings(&pebble, None)).await.unwrap();
    acme::issue_with(&account, &domain, &DnsSolver::new(&pebble, Dns::Correct), &options).await.unwrap();
}

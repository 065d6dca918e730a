//! The Cloudflare client against the fake v4 API in `support::cloudflare_fake`: zone lookup,
//! TXT round trips, pagination, auth failures (without ever leaking the secret), retryable
//! failures, and credentials from settings.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use smart_proxy::certs::cloudflare::{Cloudflare, CloudflareError, Credentials, Secret};

use crate::support::cloudflare_fake::{AuthSeen, Failure, FakeCloudflare, FakeCloudflareBuilder};

const TOKEN: &str = "tok-SECRET-123";
const KEY: &str = "key-SECRET-456";
const EMAIL: &str = "admin@example.com";
const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const DEV_ZONE_ID: &str = "1f0aa44e1c3e4d0cba1e6b1b9a5c0a11";

fn zones(builder: FakeCloudflareBuilder) -> FakeCloudflareBuilder {
    builder
        .zone(ZONE_ID, "example.com")
        .zone(DEV_ZONE_ID, "dev.example.com")
        .zone("9a7806061c88ada191ed06f989cc3dac", "other.org")
        .zone_with_status("5c1b6c9a1d0e4f2a8b3c4d5e6f708192", "pending.net", "pending")
}

async fn fake() -> FakeCloudflare {
    zones(FakeCloudflare::builder().token(TOKEN)).start().await
}

fn client(fake: &FakeCloudflare) -> Cloudflare {
    Cloudflare::new(&fake.base_url(), Credentials::Token(Secret::new(TOKEN))).unwrap()
}

/// Everything a person or a log could see of an error.
fn shown(err: &CloudflareError) -> String {
    format!("{err}\n{err:?}")
}

thread_local! {
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// Writes into this thread's capture buffer, if one is active.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(captured) = &*c.borrow() {
                captured.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every tracing event (and `log` record), at all levels, emitted on this thread while
/// it lives. `#[tokio::test]` runs the client and the fake on the test's thread.
///
/// One global subscriber is installed for the whole test binary (filtered per event, so it costs
/// nothing while no capture is active): a scoped `set_default` would race with other test threads
/// over tracing's per-callsite interest cache and miss events.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start() -> Self {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            use tracing_subscriber::prelude::*;
            // A dynamic filter: its callsite interest is "sometimes", so every event is asked.
            let active = tracing_subscriber::filter::dynamic_filter_fn(|_, _| CAPTURE.with(|c| c.borrow().is_some()));
            let layer =
                tracing_subscriber::fmt::layer().with_ansi(false).with_writer(|| ThreadWriter).with_filter(active);
            tracing_subscriber::registry()
                .with(layer)
                .try_init()
                .expect("install the test binary's log capture (is another global subscriber installed?)");
        });
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        // Callsites first hit by a parallel test before the subscriber existed are re-asked.
        tracing::callsite::rebuild_interest_cache();
        Captured(buffer)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

#[tokio::test]
async fn zone_is_found_by_walking_up_the_labels() {
    let fake = fake().await;
    let zone = client(&fake).find_zone("a.b.example.com").await.unwrap();
    assert_eq!((zone.id.as_str(), zone.name.as_str()), (ZONE_ID, "example.com"));
    let asked: Vec<(String, String)> = fake
        .requests()
        .iter()
        .map(|r| {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/client/v4/zones"));
            assert_eq!((r.auth, r.authorized), (AuthSeen::Bearer, true));
            (r.query_value("name").unwrap().to_string(), r.query_value("status").unwrap().to_string())
        })
        .collect();
    let expected = ["a.b.example.com", "b.example.com", "example.com"].map(|n| (n.to_string(), "active".to_string()));
    assert_eq!(asked, expected);
}

#[tokio::test]
async fn the_closest_zone_wins_and_wildcards_start_below_the_star() {
    let fake = fake().await;
    let client = client(&fake);
    let zone = client.find_zone("x.dev.example.com").await.unwrap();
    assert_eq!(zone.id, DEV_ZONE_ID);

    fake.clear_requests();
    let zone = client.find_zone("*.a.example.com").await.unwrap();
    assert_eq!(zone.name, "example.com");
    let names: Vec<String> = fake.requests().iter().map(|r| r.query_value("name").unwrap().to_string()).collect();
    assert_eq!(names, ["a.example.com", "example.com"]);

    let zone = client.find_zone("Other.ORG.").await.unwrap();
    assert_eq!(zone.name, "other.org");
}

#[tokio::test]
async fn missing_zone_error_lists_the_names_tried() {
    let fake = fake().await;
    let client = client(&fake);
    let err = client.find_zone("www.nothere.test").await.unwrap_err();
    assert!(matches!(err, CloudflareError::ZoneNotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("www.nothere.test, nothere.test"), "{text}");
    assert!(text.contains("Zone:Zone:Read"), "{text}");
    assert!(!err.retryable());

    // A zone that is not active yet is not a match.
    let err = client.find_zone("a.pending.net").await.unwrap_err();
    assert!(err.to_string().contains("a.pending.net, pending.net"), "{err}");
}

#[tokio::test]
async fn txt_records_round_trip() {
    let fake = fake().await;
    let client = client(&fake);
    let zone = client.find_zone("a.example.com").await.unwrap();
    let name = "_acme-challenge.a.example.com";
    let value = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";

    let id = client.create_txt(&zone, name, value, 60).await.unwrap();
    let post = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post.path, format!("/client/v4/zones/{ZONE_ID}/dns_records"));
    assert!(post.header("content-type").unwrap().starts_with("application/json"), "{post:?}");
    let body: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(body, serde_json::json!({ "type": "TXT", "name": name, "content": format!("\"{value}\""), "ttl": 60 }));
    assert_eq!(fake.txt_values(name), [value]);

    let records = client.records(&zone, name, "TXT").await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((&record.id, record.record_type.as_str(), record.name.as_str()), (&id, "TXT", name));
    assert_eq!(record.txt_value(), value);
    assert!(!record.proxied);
    // Other names and types are not listed.
    assert!(client.records(&zone, "_acme-challenge.b.example.com", "TXT").await.unwrap().is_empty());
    assert!(client.records(&zone, name, "A").await.unwrap().is_empty());

    client.delete_record(&zone, &id).await.unwrap();
    let delete = fake.requests().into_iter().rfind(|r| r.method == "DELETE").unwrap();
    assert_eq!(delete.path, format!("/client/v4/zones/{ZONE_ID}/dns_records/{id}"));
    assert!(client.records(&zone, name, "TXT").await.unwrap().is_empty());
    assert!(fake.txt_values(name).is_empty());

    // Deleting it again: Cloudflare's 404 with its own code and message, not retryable.
    let err = client.delete_record(&zone, &id).await.unwrap_err();
    assert!(matches!(err, CloudflareError::Api { status: 404, .. }), "{err:?}");
    assert_eq!(err.api_codes(), [81044]);
    assert!(err.to_string().ends_with("81044 Record does not exist"), "{err}");
    assert!(err.to_string().contains(&format!("deleting DNS record {id} in zone example.com")), "{err}");
    assert!(!err.retryable());
}

#[tokio::test]
async fn cloudflare_validation_errors_are_shown() {
    let fake = fake().await;
    let client = client(&fake);
    let zone = client.find_zone("example.com").await.unwrap();
    let name = "_acme-challenge.example.com";

    let err = client.create_txt(&zone, name, "v", 30).await.unwrap_err();
    assert!(matches!(err, CloudflareError::Api { status: 400, .. }), "{err:?}");
    assert!(err.to_string().contains("ttl 30 must be 1 (automatic) or between 60 and 86400"), "{err}");

    client.create_txt(&zone, name, "v", 1).await.unwrap();
    let err = client.create_txt(&zone, name, "v", 1).await.unwrap_err();
    assert_eq!(err.api_codes(), [81058], "{err}");
    assert!(err.to_string().contains("An identical record already exists"), "{err}");

    // A name outside the zone never reaches Cloudflare (which would append the zone name).
    fake.clear_requests();
    let err = client.create_txt(&zone, "_acme-challenge.other.org", "v", 1).await.unwrap_err();
    assert!(matches!(err, CloudflareError::NameOutsideZone { .. }), "{err:?}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn record_listing_follows_pagination() {
    let fake = fake().await;
    let name = "_acme-challenge.example.com";
    let mut ids: Vec<String> =
        (0..120).map(|i| fake.add_record(ZONE_ID, "TXT", name, &format!("\"value-{i}\""))).collect();
    fake.add_record(ZONE_ID, "TXT", "_acme-challenge.other.example.com", "\"elsewhere\"");
    let zone = smart_proxy::certs::cloudflare::Zone { id: ZONE_ID.into(), name: "example.com".into() };

    let client = client(&fake).with_page_size(50);
    let records = client.records(&zone, name, "TXT").await.unwrap();
    let mut got: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(records[119].txt_value(), "value-119");
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    let pages: Vec<(String, String)> = fake
        .requests()
        .iter()
        .map(|r| (r.query_value("page").unwrap().to_string(), r.query_value("per_page").unwrap().to_string()))
        .collect();
    assert_eq!(pages, [("1", "50"), ("2", "50"), ("3", "50")].map(|(a, b)| (a.to_string(), b.to_string())));
}

#[tokio::test]
async fn record_listing_follows_a_server_side_page_limit() {
    let fake = zones(FakeCloudflare::builder().token(TOKEN).max_per_page(50)).start().await;
    let name = "_acme-challenge.example.com";
    for i in 0..120 {
        fake.add_record(ZONE_ID, "TXT", name, &format!("\"value-{i}\""));
    }
    let zone = smart_proxy::certs::cloudflare::Zone { id: ZONE_ID.into(), name: "example.com".into() };
    // The client asks for 100 per page; the server gives 50 and says so in result_info.
    let records = client(&fake).records(&zone, name, "TXT").await.unwrap();
    assert_eq!(records.len(), 120);
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn a_bad_token_is_explained_and_never_shown() {
    let captured = Captured::start();
    let fake = zones(FakeCloudflare::builder().token("the-right-token")).start().await;
    let client = client(&fake);

    let err = client.find_zone("a.example.com").await.unwrap_err();
    assert!(err.is_auth() && !err.retryable(), "{err:?}");
    assert_eq!(err.status(), Some(403));
    let text = err.to_string();
    assert!(text.contains("9109 Invalid access token"), "{text}");
    assert!(text.contains("Zone:DNS:Edit"), "{text}");
    assert!(text.contains("looking up zone a.example.com"), "{text}");

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].auth, requests[0].authorized), (AuthSeen::Bearer, false));

    // The secret appears nowhere: not in the error, the client, the fake's records, nor the log.
    let everything = format!("{}\n{client:?}\n{requests:?}\n{}", shown(&err), captured.text());
    assert!(!everything.contains(TOKEN), "{everything}");
    assert!(!everything.contains("SECRET"), "{everything}");
    assert!(captured.text().contains("Cloudflare API"), "the log capture saw no client event:\n{}", captured.text());
}

#[tokio::test]
async fn the_token_is_never_logged_on_success_either() {
    let captured = Captured::start();
    let fake = fake().await;
    let client = client(&fake);
    let zone = client.find_zone("example.com").await.unwrap();
    let id = client.create_txt(&zone, "_acme-challenge.example.com", "v", 60).await.unwrap();
    client.records(&zone, "_acme-challenge.example.com", "TXT").await.unwrap();
    client.delete_record(&zone, &id).await.unwrap();
    let log = captured.text();
    assert!(log.contains("Cloudflare API") && log.contains("created TXT record"), "{log}");
    assert!(!log.contains("SECRET"), "{log}");
    assert!(!format!("{:?}", fake.requests()).contains("SECRET"));
}

#[tokio::test]
async fn a_token_without_dns_edit_says_so_for_the_zone() {
    let fake = zones(FakeCloudflare::builder().read_only_token(TOKEN)).start().await;
    let client = client(&fake);
    let zone = client.find_zone("example.com").await.unwrap();
    let err = client.create_txt(&zone, "_acme-challenge.example.com", "v", 60).await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("10000 Authentication error"), "{text}");
    assert!(text.contains("in zone example.com"), "{text}");
    assert!(text.contains("lacks the Zone:DNS:Edit permission"), "{text}");
    assert!(!shown(&err).contains(TOKEN));
}

#[tokio::test]
async fn global_api_key_credentials() {
    let fake = zones(FakeCloudflare::builder().global_key(EMAIL, KEY)).start().await;
    let good =
        Cloudflare::new(&fake.base_url(), Credentials::Key { email: EMAIL.into(), key: Secret::new(KEY) }).unwrap();
    let zone = good.find_zone("www.example.com").await.unwrap();
    assert_eq!(zone.id, ZONE_ID);
    let request = &fake.requests()[0];
    assert_eq!((request.auth, request.authorized), (AuthSeen::Key, true));
    assert_eq!(request.header("x-auth-email"), Some(EMAIL));
    assert_eq!(request.header("x-auth-key"), None, "the fake must not keep the key");

    let wrong_key = "key-SECRET-999";
    let bad = Cloudflare::new(&fake.base_url(), Credentials::Key { email: EMAIL.into(), key: Secret::new(wrong_key) })
        .unwrap();
    let err = bad.find_zone("www.example.com").await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let text = shown(&err);
    assert!(text.contains("9103 Unknown X-Auth-Key or X-Auth-Email"), "{text}");
    assert!(text.contains("CLOUDFLARE_API_KEY"), "{text}");
    assert!(!text.contains(wrong_key) && !format!("{bad:?}").contains(wrong_key), "{text}");
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let fake = fake().await;
    let client = client(&fake);

    fake.fail_next(1, Failure::Server(500));
    let err = client.find_zone("example.com").await.unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert!(matches!(err, CloudflareError::Server { status: 500, .. }), "{err:?}");
    assert!(err.to_string().contains("10001 Internal server error"), "{err}");
    assert_eq!(err.retry_after(), None);

    fake.fail_next(1, Failure::HtmlBadGateway);
    let err = client.find_zone("example.com").await.unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert!(err.to_string().contains("HTTP 502") && err.to_string().contains("not JSON"), "{err}");

    // The failures were used up: the next call goes through.
    client.find_zone("example.com").await.unwrap();
}

#[tokio::test]
async fn rate_limits_are_retryable_with_the_delay() {
    let fake = fake().await;
    let client = client(&fake);

    fake.fail_next(1, Failure::RateLimited { retry_after: Some(7) });
    let err = client.find_zone("example.com").await.unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.status(), Some(429));
    let text = err.to_string();
    assert!(text.contains("971 Please wait") && text.contains("retry after 7 s"), "{text}");

    fake.fail_next(1, Failure::RateLimited { retry_after: None });
    let err = client.find_zone("example.com").await.unwrap_err();
    assert!(err.retryable() && err.retry_after().is_none(), "{err:?}");
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retryable() {
    let fake = fake().await;
    let client = client(&fake).with_timeout(Duration::from_millis(200));
    fake.fail_next(1, Failure::Delay(Duration::from_secs(3)));
    let err = client.find_zone("example.com").await.unwrap_err();
    assert!(matches!(err, CloudflareError::Transport { timed_out: true, .. }), "{err:?}");
    assert!(err.retryable());
    assert!(err.to_string().contains("timed out"), "{err}");

    // A port nothing listens on.
    let port = crate::support::free_port();
    let base = format!("http://127.0.0.1:{port}/client/v4");
    let client = Cloudflare::new(&base, Credentials::Token(Secret::new(TOKEN))).unwrap();
    let err = client.find_zone("example.com").await.unwrap_err();
    assert!(matches!(err, CloudflareError::Transport { .. }), "{err:?}");
    assert!(err.retryable());
    assert!(err.to_string().contains(&format!("cannot reach the Cloudflare API at {base}")), "{err}");
    assert!(!shown(&err).contains(TOKEN));
}

#[tokio::test]
async fn txt_changes_reach_the_hook() {
    type TxtLog = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: TxtLog = Arc::default();
    let log = seen.clone();
    let fake = zones(FakeCloudflare::builder().token(TOKEN))
        .on_txt_change(move |name, value| {
            let log = log.clone();
            async move { log.lock().unwrap().push((name, value)) }
        })
        .start()
        .await;
    let client = client(&fake);
    let zone = client.find_zone("example.com").await.unwrap();
    let name = "_acme-challenge.example.com";
    let first = client.create_txt(&zone, name, "one", 60).await.unwrap();
    client.create_txt(&zone, name, "two", 60).await.unwrap();
    client.delete_record(&zone, &first).await.unwrap();
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    let n = || name.to_string();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        take(),
        [(n(), None), (n(), s("one")), (n(), None), (n(), s("one")), (n(), s("two")), (n(), None), (n(), s("two"))]
    );
}

#[tokio::test]
async fn the_fake_is_strict_about_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = fake().await;
    let raw = |request: String| {
        let addr = fake.addr();
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    let body = r#"{"type":"TXT","name":"x.example.com","content":"v","ttl":60}"#;
    let post = |headers: &str| {
        format!(
            "POST /client/v4/zones/{ZONE_ID}/dns_records HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let answer = raw(post("Content-Type: application/json\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("9106"), "{answer}");
    let answer = raw(post(&format!("Authorization: Bearer {TOKEN}\r\nContent-Type: text/plain\r\n"))).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("6105"), "{answer}");
    let answer = raw(post(&format!("Authorization: {TOKEN}\r\nContent-Type: application/json\r\n"))).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("6111"), "{answer}");
    let answer = raw(post(&format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"))).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"success\":true"), "{answer}");
}

#[test]
fn credentials_from_files_drop_the_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("cf_token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let creds = Credentials::from_values(None, Some(&token_file), None, None, None).unwrap();
    assert_eq!(creds, Some(Credentials::Token(Secret::new(TOKEN))));

    let key_file = dir.path().join("cf_key");
    std::fs::write(&key_file, format!("{KEY}\r\n")).unwrap();
    let creds = Credentials::from_values(None, None, Some(EMAIL), None, Some(&key_file)).unwrap();
    assert_eq!(creds, Some(Credentials::Key { email: EMAIL.into(), key: Secret::new(KEY) }));

    let creds = Credentials::from_values(Some(TOKEN), None, None, None, None).unwrap();
    assert_eq!(creds, Some(Credentials::Token(Secret::new(TOKEN))));
    assert_eq!(Credentials::from_values(None, None, None, None, None).unwrap(), None);
    assert_eq!(
        Credentials::from_values(Some(""), None, Some(" "), None, None).unwrap(),
        None,
        "empty values count as unset"
    );
}

#[tokio::test]
async fn credentials_from_a_file_work_against_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("cf_token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let creds = Credentials::from_values(None, Some(&token_file), None, None, None).unwrap().unwrap();
    let fake = fake().await;
    let client = Cloudflare::new(&fake.base_url(), creds).unwrap();
    client.find_zone("example.com").await.unwrap();
}

#[test]
fn half_set_or_unreadable_credentials_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let spaced = dir.path().join("spaced");
    std::fs::write(&spaced, "tok-SECRET 123\n").unwrap();

    type Case<'a> = (Result<Option<Credentials>, CloudflareError>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            Credentials::from_values(None, None, Some(EMAIL), None, None),
            &["CLOUDFLARE_EMAIL is set", "CLOUDFLARE_API_KEY"],
        ),
        (
            Credentials::from_values(None, None, None, Some(KEY), None),
            &["CLOUDFLARE_API_KEY is set", "CLOUDFLARE_EMAIL is not"],
        ),
        (
            Credentials::from_values(None, None, None, None, Some(&empty)),
            &["CLOUDFLARE_API_KEY_FILE is set", "CLOUDFLARE_EMAIL"],
        ),
        (
            Credentials::from_values(Some(TOKEN), Some(&empty), None, None, None),
            &["CLOUDFLARE_API_TOKEN and CLOUDFLARE_API_TOKEN_FILE are both set"],
        ),
        (
            Credentials::from_values(None, None, Some(EMAIL), Some(KEY), Some(&empty)),
            &["CLOUDFLARE_API_KEY and CLOUDFLARE_API_KEY_FILE are both set"],
        ),
        (Credentials::from_values(Some(TOKEN), None, Some(EMAIL), Some(KEY), None), &["set only one kind"]),
        (
            Credentials::from_values(None, Some(&missing), None, None, None),
            &["CLOUDFLARE_API_TOKEN_FILE", "no-such-secret"],
        ),
        (Credentials::from_values(None, Some(&empty), None, None, None), &["CLOUDFLARE_API_TOKEN_FILE", "is empty"]),
        (
            Credentials::from_values(None, Some(&spaced), None, None, None),
            &["CLOUDFLARE_API_TOKEN_FILE is not usable", "spaces"],
        ),
        (
            Credentials::from_values(None, None, Some("not-an-email"), Some(KEY), None),
            &["CLOUDFLARE_EMAIL is not usable"],
        ),
    ];
    for (result, expected) in cases {
        let err = result.expect_err("must be an error");
        let text = shown(&err);
        for part in expected {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        assert!(!text.contains("SECRET"), "a secret leaked: {text}");
        assert!(!err.to_string().ends_with('.'), "no trailing period: {err}");
    }
}

//! Followers (`nginx-smart-proxy follow`) with their own real nginx on loopback ports, beside a
//! real agent (env/file routes, no Docker): the follower serves the agent's routes, a new route
//! reaches it (the latency is logged), it keeps serving while the agent is down and catches up
//! when it returns, a restarted follower serves its last good bundle before the agent answers,
//! `/followers` lists it with its revision; a forged or broken bundle (from a fake agent) is
//! refused, reported on the next poll, and the last good config stays; a real agent shows a
//! follower's refusal (its `nginx -t` fails) and its age; a certificate, a basic-auth
//! login and an HTTP-01 token of the agent are served by the follower; Pebble validates HTTP-01
//! through a follower only and two followers serve its one certificate; `follow --beside` reloads
//! an nginx it did not start.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::agent::{http_get, Agent, Prefix};
use crate::support::free_port;
use crate::support::stub_http::StubHttp;

const KEY: &str = "follower-test-key-0123456789abcdef-0123456789";

fn key_file(dir: &Path, key: &str) -> String {
    let path = dir.join("follower.key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// The JSON routes file: each name routed to the backend on `port`.
fn routes(names: &[&str], port: u16) -> String {
    let domains: Vec<String> = names.iter().map(|n| format!(r#"{{"name":"{n}.test","service":"app"}}"#)).collect();
    format!(r#"{{"domains":[{}],"services":[{{"name":"app","host":"127.0.0.1","port":{port}}}]}}"#, domains.join(","))
}

/// An agent on env/file routes (no Docker) with the follower endpoint on a free loopback port.
fn agent(keys: &tempfile::TempDir, routes_file: &Path, extra: &[(&str, &str)]) -> (Agent, u16) {
    let follow_port = free_port();
    let follow_addr = format!("127.0.0.1:{follow_port}");
    let key = key_file(keys.path(), KEY);
    let mut env = vec![
        ("NO_DOCKER", "true"),
        ("CONFIG_FILE", routes_file.to_str().unwrap()),
        ("FOLLOWER_KEY_FILE", key.as_str()),
        ("FOLLOW_ADDR", follow_addr.as_str()),
        ("INSIGHT", "true"),
    ];
    env.extend_from_slice(extra);
    let agent = Agent::local(Prefix::TEST, &env);
    (agent, follow_port)
}

/// A follower of the agent at `follow_port`, with its own nginx on a free port (not started).
fn follower(keys: &tempfile::TempDir, follow_port: u16, node: &str, extra: &[(&str, &str)]) -> Agent {
    let key = key_file(keys.path(), KEY);
    let url = format!("http://127.0.0.1:{follow_port}");
    let mut env = vec![
        ("FOLLOW_URL", url.as_str()),
        ("FOLLOWER_KEY_FILE", key.as_str()),
        ("NODE_NAME", node),
        ("NO_DOCKER", "true"),
        // Whatever the follower's own LOCAL says, it serves what the agent renders.
        ("LOCAL", "false"),
    ];
    env.extend_from_slice(extra);
    let mut follower = Agent::local(Prefix::TEST, &env);
    follower.command = "follow";
    follower
}

fn serves(node: &Agent, host: &str, body: &str) -> bool {
    let (status, got) = node.get(host, "/");
    status == 200 && got.contains(body)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn a_follower_serves_the_agents_routes_keeps_them_while_the_agent_is_down_and_catches_up() {
    let backend = StubHttp::body("backend-answer");
    let keys = tempfile::tempdir().unwrap();
    let routes_dir = tempfile::tempdir().unwrap();
    let routes_file = routes_dir.path().join("routes.json");
    let mut names = vec!["app1".to_string()];
    let write = |names: &[String]| {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        crate::support::agent::write_file(&routes_file, &routes(&refs, backend.port()));
    };
    write(&names);
    let (mut agent, follow_port) = agent(&keys, &routes_file, &[]);
    agent.launch();
    agent.wait_for_status("app1.test", 200, Some("backend-answer"));

    let mut node = follower(&keys, follow_port, "node-a", &[]);
    node.launch();
    // The image's HEALTHCHECK works for a follower too: `health` asks its /healthz.
    node.wait_for("the follower's /healthz through `health`", Duration::from_secs(5), || {
        let health = node.cli(&["health"]);
        health.status.success() && String::from_utf8_lossy(&health.stdout).contains("ok: serving revision")
    });
    node.wait_for("the follower to serve app1.test", Duration::from_secs(15), || {
        serves(&node, "app1.test", "backend-answer")
    });
    // The follower's config has no insight line (no agent beside it) and passed nginx -t.
    let conf = std::fs::read_to_string(node.path("conf.d/default.conf")).unwrap();
    assert!(!conf.contains("smart-proxy-insight.log") && !conf.contains("smartproxy_insight"), "{conf}");
    assert!(std::fs::read_to_string(agent.path("conf.d/default.conf"))
        .unwrap()
        .contains("log_format smartproxy_insight"));
    assert!(conf.contains(&format!("listen {}", node.port)), "rendered for the follower's own port");

    // /followers on the agent's status endpoint: the node, serving the current revision.
    agent.wait_for("/followers to show node-a current", Duration::from_secs(40), || {
        let (status, body) = agent.status_get("/followers");
        status == 200 && body.contains("\"node\":\"node-a\"") && body.contains("\"current\":true")
    });
    let (_, body) = agent.status_get("/followers");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let revision = json["revision"].as_u64().unwrap();
    assert!(revision > 0, "{body}");
    assert_eq!(json["followers"][0]["revision"].as_u64(), Some(revision), "{body}");
    assert!(!body.contains(KEY), "the key never shows: {body}");
    let (_, metrics) = agent.status_get("/metrics");
    crate::status::promtool_check(&metrics);
    assert!(metrics.contains("smart_proxy_follower_current{node=\"node-a\"} 1"), "{metrics}");
    assert!(metrics.contains("smart_proxy_follower_last_seen_timestamp_seconds{node=\"node-a\"} "), "{metrics}");
    // The dashboard shows the follower, current.
    if let Some(chromium) = crate::dashboard::tool("chromium", "--version", "chromium") {
        let dom = crate::dashboard::dump_dom(&chromium, &format!("http://127.0.0.1:{}/", agent.status_port()));
        let row =
            dom.find("data-node=\"node-a\"").map(|i| &dom[i..]).unwrap_or_else(|| panic!("no follower row:\n{dom}"));
        assert!(row[..row.find("</tr>").unwrap()].contains(">current<"), "{dom}");
    }

    // New routes reach the follower: change → follower serving.
    let mut latencies = Vec::new();
    for i in 2..=6 {
        let name = format!("app{i}");
        names.push(name.clone());
        let started = Instant::now();
        write(&names);
        let host = format!("{name}.test");
        node.wait_for(&format!("the follower to serve {host}"), Duration::from_secs(15), || {
            serves(&node, &host, "backend-answer")
        });
        latencies.push(started.elapsed());
    }
    eprintln!(
        "follow latency (route file written → follower serving), {} changes: p50 {:?}, all {:?}",
        latencies.len(),
        median(latencies.clone()),
        latencies
    );

    // The agent dies (its nginx too): the follower keeps serving.
    agent.kill();
    agent.stop_nginx();
    for _ in 0..5 {
        assert!(serves(&node, "app1.test", "backend-answer"), "follower serves while the agent is down");
        std::thread::sleep(Duration::from_millis(200));
    }
    node.wait_for("the follower to log the agent's absence", Duration::from_secs(45), || {
        node.log().contains("cannot poll the agent")
    });

    // A restarted follower serves its last good bundle before the agent answers.
    let kept = node.path("certs/smart-proxy/follow/bundle");
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&std::fs::read(&kept).unwrap()).contains("app1.test"), "kept sealed");
    node.stop();
    node.launch();
    // It says so once nginx runs that bundle: the log is polled too.
    node.wait_for("the restarted follower to serve app6 from the bundle kept", Duration::from_secs(10), || {
        serves(&node, "app6.test", "backend-answer") && node.log().contains("serving the last good bundle kept on disk")
    });

    // Changed while the agent was down; the agent comes back: the follower catches up.
    names.push("app7".into());
    write(&names);
    agent.launch();
    node.wait_for("the follower to catch up (app7)", Duration::from_secs(20), || {
        serves(&node, "app7.test", "backend-answer")
    });
    assert!(node.log().contains("the agent answers again"), "{}", node.log());
    let key_shown = node.log().contains(KEY) || agent.log().contains(KEY);
    assert!(!key_shown, "the key never appears in a log");
}

/// The row of `node` in the agent's `/followers` (`Null` while it has none).
fn follower_row(agent: &Agent, node: &str) -> serde_json::Value {
    let (_, body) = agent.status_get("/followers");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let rows = json["followers"].as_array().cloned().unwrap_or_default();
    rows.into_iter().find(|r| r["node"] == node).unwrap_or_default()
}

/// A real agent shows what a follower reports: a bundle it refused (its own `nginx -t` fails: a
/// line an operator added to the node's main nginx.conf breaks it), why, and the revision it
/// still serves; then, the node fixed, the next revision applied and the refusal gone; and its
/// age, the seconds since its last poll, which grows once it polls no more.
#[test]
fn the_agent_shows_a_followers_refusal_and_its_age() {
    let backend = StubHttp::body("refusal-backend");
    let keys = tempfile::tempdir().unwrap();
    let routes_dir = tempfile::tempdir().unwrap();
    let routes_file = routes_dir.path().join("routes.json");
    crate::support::agent::write_file(&routes_file, &routes(&["one"], backend.port()));
    let (mut agent, follow_port) = agent(&keys, &routes_file, &[]);
    agent.launch();
    let mut node = follower(&keys, follow_port, "node-r", &[]);
    node.launch();
    node.wait_for("the follower to serve one.test", Duration::from_secs(15), || {
        serves(&node, "one.test", "refusal-backend")
    });
    agent.wait_for("/followers to show node-r current", Duration::from_secs(40), || {
        follower_row(&agent, "node-r")["current"] == true
    });
    let served = follower_row(&agent, "node-r")["revision"].as_u64().unwrap();

    // The node's own nginx config gets a second `events` block: every `nginx -t` there fails.
    let main = node.path("nginx.conf");
    let good = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{good}events {{ }}\n")).unwrap();
    crate::support::agent::write_file(&routes_file, &routes(&["one", "two"], backend.port()));
    agent.wait_for("the refusal in /followers", Duration::from_secs(20), || {
        follower_row(&agent, "node-r")["error"].is_string()
    });
    let (_, body) = agent.status_get("/followers");
    let row = follower_row(&agent, "node-r");
    eprintln!("/followers with a refusal: {}", body.trim());
    let error = row["error"].as_str().unwrap();
    assert!(error.contains("\"events\" directive is duplicate"), "nginx's own reason: {body}");
    assert_eq!(row["revision"].as_u64(), Some(served), "it still serves the last good revision: {body}");
    assert_eq!(row["current"], false, "{body}");
    let age = row["age_s"].as_u64().unwrap_or_else(|| panic!("age_s: {body}"));
    assert!(age <= 30, "a live follower polls at least every 30 s: {body}");
    assert!(agent.log().contains("follower refused a bundle"), "{}", agent.log());
    assert!(serves(&node, "one.test", "refusal-backend"), "the last good config stays");
    assert!(!serves(&node, "two.test", "refusal-backend"), "the refused revision is not served");

    // Fixed on the node: the next revision applies, and the refusal is gone from the row.
    std::fs::write(&main, &good).unwrap();
    crate::support::agent::write_file(&routes_file, &routes(&["one", "two", "three"], backend.port()));
    node.wait_for("the follower to serve three.test", Duration::from_secs(15), || {
        serves(&node, "three.test", "refusal-backend")
    });
    agent.wait_for("node-r current again, without an error", Duration::from_secs(40), || {
        let row = follower_row(&agent, "node-r");
        row["current"] == true && row["error"].is_null()
    });

    // Stopped, it polls no more: its age grows (its row stays, for 24 hours).
    node.stop();
    let stopped = Instant::now();
    agent.wait_for("node-r's age to pass 3 s", Duration::from_secs(40), || {
        follower_row(&agent, "node-r")["age_s"].as_u64().is_some_and(|a| a >= 3)
    });
    let age = follower_row(&agent, "node-r")["age_s"].as_u64().unwrap();
    // Its last poll began at most 30 s before it stopped (the long-poll's length).
    assert!(age <= stopped.elapsed().as_secs() + 31, "age_s {age} after {:?}", stopped.elapsed());
}

/// A bundle for the fake agent to serve.
struct Scripted {
    revision: u64,
    body: Vec<u8>,
    signature: String,
}

/// A fake agent on a free port: answers each poll with `current` (sealed by the test) when the
/// follower does not serve or refuse its revision, else 204 after a short wait; records each
/// request's path and query.
struct FakeAgent {
    port: u16,
    current: Arc<Mutex<Option<Scripted>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeAgent {
    fn start() -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let current: Arc<Mutex<Option<Scripted>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (c, s) = (current.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (c, s) = (c.clone(), s.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    s.lock().unwrap().push(target.clone());
                    let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
                    let q = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
                    let after: u64 = q("after").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let refused: Option<u64> = q("refused").and_then(|v| v.parse().ok());
                    let nonce = q("nonce").unwrap_or_default();
                    let reply = {
                        let guard = c.lock().unwrap();
                        guard.as_ref().filter(|b| b.revision != after && Some(b.revision) != refused).map(|b| {
                            // The nonce is sealed inside: the fake seals per request.
                            let body = String::from_utf8(b.body.clone()).unwrap().replace("NONCE", &nonce);
                            (b.revision, body, b.signature.clone())
                        })
                    };
                    let response = match reply {
                        Some((revision, plain, signature_key)) => {
                            let key = smart_proxy::follow::FollowerKey::from_bytes(signature_key.as_bytes());
                            let (body, signature) = key.seal(plain.as_bytes());
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-smart-proxy-signature: {signature}\r\nx-smart-proxy-revision: {revision}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(&body);
                            r
                        }
                        None => {
                            std::thread::sleep(Duration::from_millis(300));
                            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec()
                        }
                    };
                    let _ = stream.write_all(&response);
                });
            }
        });
        FakeAgent { port, current, seen }
    }

    /// Serves a bundle of `revision` with `config`, sealed and signed with `key`.
    fn serve(&self, revision: u64, config: &str, key: &str) {
        let plain = serde_json::json!({
            "revision": revision, "digest": format!("d{revision}"), "nonce": "NONCE", "config": config, "files": []
        });
        *self.current.lock().unwrap() =
            Some(Scripted { revision, body: plain.to_string().into_bytes(), signature: key.to_string() });
    }

    fn polls_with(&self, needle: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|t| t.contains(needle))
    }
}

#[test]
fn a_forged_or_broken_bundle_is_refused_reported_and_the_last_good_config_stays() {
    let fake = FakeAgent::start();
    let keys = tempfile::tempdir().unwrap();
    let mut node = follower(&keys, fake.port, "node-f", &[]);
    let port = node.port;
    let site = |body: &str| {
        format!("server {{\n    listen 127.0.0.1:{port};\n    server_name site.test;\n    return 200 \"{body}\";\n}}\n")
    };
    fake.serve(100, &site("good"), KEY);
    node.launch();
    node.wait_for("the follower to serve the good bundle", Duration::from_secs(15), || {
        serves(&node, "site.test", "good")
    });

    // Sealed and signed with another key: refused, reported on the next poll; "good" stays.
    fake.serve(101, &site("forged"), "another-key-of-at-least-32-bytes-xxxxxxxx");
    node.wait_for("the refusal to be reported", Duration::from_secs(15), || fake.polls_with("refused=101"));
    assert!(fake.polls_with("after=100"), "the follower reports the revision it serves");
    assert!(node.log().contains("bundle refused"), "{}", node.log());
    assert!(node.log().contains("signature does not verify"), "{}", node.log());
    for _ in 0..5 {
        assert!(serves(&node, "site.test", "good"), "the last good config stays");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!std::fs::read_to_string(node.path("conf.d/default.conf")).unwrap().contains("forged"));

    // Signed with the right key, but nginx -t rejects it: refused too, the reason reported.
    fake.serve(102, "this is not nginx;\n", KEY);
    node.wait_for("the nginx -t refusal to be reported", Duration::from_secs(15), || {
        fake.polls_with("refused=102") && fake.polls_with("rejected")
    });
    assert!(serves(&node, "site.test", "good"));
    assert!(!std::fs::read_to_string(node.path("conf.d/default.conf")).unwrap().contains("not nginx"));

    // A good one again is applied.
    fake.serve(103, &site("better"), KEY);
    node.wait_for("the follower to serve the next good bundle", Duration::from_secs(15), || {
        serves(&node, "site.test", "better")
    });
}

#[test]
fn a_follower_serves_the_agents_certificate_over_tls_and_its_http01_tokens() {
    let backend = StubHttp::body("tls-backend");
    let keys = tempfile::tempdir().unwrap();
    let routes_dir = tempfile::tempdir().unwrap();
    let routes_file = routes_dir.path().join("routes.json");
    // secure.test, and locked.test behind a basic-auth login (its htpasswd file travels too).
    let json = format!(
        r#"{{"domains":[{{"name":"secure.test","service":"app"}},
            {{"name":"locked.test","service":"app","auth":"basic","auth.users":["u:{{SHA}}HPfrSR5ngPU1LNoFW4IX+qcC6gQ="]}}],
           "services":[{{"name":"app","host":"127.0.0.1","port":{}}}]}}"#,
        backend.port()
    );
    crate::support::agent::write_file(&routes_file, &json);
    // Production mode without ACME: the agent writes a placeholder certificate, which the
    // follower must serve.
    let https = free_port().to_string();
    let (mut agent, follow_port) =
        agent(&keys, &routes_file, &[("LOCAL", "false"), ("ACME", "off"), ("HTTPS_PORT", https.as_str())]);
    agent.launch();
    let chain = agent.path("certs/live/secure.test/fullchain.pem");
    agent.wait_for("the placeholder certificate", Duration::from_secs(10), || chain.exists());

    let node_https = free_port().to_string();
    let mut node = follower(&keys, follow_port, "node-tls", &[("HTTPS_PORT", node_https.as_str())]);
    node.launch();
    let key = node.path("certs/live/secure.test/privkey.pem");
    node.wait_for("the certificate on the follower", Duration::from_secs(15), || key.exists());
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "keys are 0600");
    assert_eq!(
        std::fs::read(node.path("certs/live/secure.test/fullchain.pem")).unwrap(),
        std::fs::read(&chain).unwrap()
    );

    // Over TLS on the follower's port: the agent's certificate, and the backend behind it.
    let resolve = format!("secure.test:{node_https}:127.0.0.1");
    let url = format!("https://secure.test:{node_https}/");
    node.wait_for("the follower to answer over TLS", Duration::from_secs(15), || {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "5", "--resolve", &resolve, &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("tls-backend")
    });
    // The login works on the follower: refused without the password, served with it.
    let curl_status = |user: Option<&str>| {
        let resolve = format!("locked.test:{node_https}:127.0.0.1");
        let url = format!("https://locked.test:{node_https}/");
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", &resolve, &url]);
        if let Some(user) = user {
            cmd.args(["-u", user]);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    };
    node.wait_for("the login on the follower", Duration::from_secs(10), || curl_status(Some("u:follower-pw")) == "200");
    assert_eq!(curl_status(None), "401");
    assert_eq!(curl_status(Some("u:wrong")), "401");
    let htpasswd: Vec<_> = std::fs::read_dir(node.path("conf.d/smart-proxy-htpasswd")).unwrap().flatten().collect();
    assert_eq!(htpasswd.len(), 1, "{htpasswd:?}");
    assert_eq!(htpasswd[0].metadata().unwrap().permissions().mode() & 0o777, 0o640);

    let served = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{node_https} -servername secure.test </dev/null 2>/dev/null | openssl x509 -outform PEM"
        ))
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&served.stdout).trim().to_string();
    let agent_chain = std::fs::read_to_string(&chain).unwrap();
    assert!(
        !served.is_empty() && agent_chain.contains(&served),
        "the follower serves the agent's certificate:\n{served}"
    );

    // An HTTP-01 token the agent holds (as its webroot solver writes it) is answered by the
    // follower on its HTTP port.
    let challenge = agent.path("webroot/.well-known/acme-challenge");
    std::fs::create_dir_all(&challenge).unwrap();
    std::fs::write(challenge.join("tok-EN_123"), "tok-EN_123.key-authorization").unwrap();
    node.wait_for("the follower to answer the HTTP-01 token", Duration::from_secs(15), || {
        let (status, body) = http_get(node.port, "secure.test", "/.well-known/acme-challenge/tok-EN_123");
        status == 200 && body.contains("tok-EN_123.key-authorization")
    });
    // Gone on the agent: gone on the follower.
    std::fs::remove_file(challenge.join("tok-EN_123")).unwrap();
    node.wait_for("the token to be removed on the follower", Duration::from_secs(15), || {
        http_get(node.port, "secure.test", "/.well-known/acme-challenge/tok-EN_123").0 == 404
    });
}

#[test]
fn pebble_validates_http01_through_a_follower_and_two_followers_serve_its_one_certificate() {
    use crate::certs_e2e::{env_refs, first_der, pebble_env, served_leaf, trust_file};
    let pebble = crate::support::pebble::Pebble::start();
    pebble.add_a("issued.test", std::net::Ipv4Addr::LOCALHOST);
    let backend = StubHttp::body("issued-backend\n");
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), KEY);
    let routes_dir = tempfile::tempdir().unwrap();
    let routes_file = routes_dir.path().join("routes.json");
    crate::support::agent::write_file(&routes_file, r#"{"domains":[],"services":[]}"#);
    let follow_port = free_port();
    let follow_addr = format!("127.0.0.1:{follow_port}");
    let mut env = pebble_env(&pebble);
    for (k, v) in [
        ("FOLLOWER_KEY_FILE", key.as_str()),
        ("FOLLOW_ADDR", follow_addr.as_str()),
        ("CONFIG_FILE", routes_file.to_str().unwrap()),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    // The agent's nginx listens on a port of its own: pebble's HTTP-01 requests (to its fixed
    // port) reach only the follower, so the certificate is issued only if the follower answers.
    let mut agent = Agent::production(free_port(), &env_refs(&env));
    agent.launch();
    let pebble_port = pebble.http_port().to_string();
    let node_https = free_port().to_string();
    let mut node = follower(
        &keys,
        follow_port,
        "node-pebble",
        &[("HTTP_PORT", pebble_port.as_str()), ("HTTPS_PORT", node_https.as_str())],
    );
    node.port = pebble.http_port();
    node.launch();
    // A second follower (another node) on ports of its own: pebble never reaches it; it gets the
    // certificate only from the agent's bundle.
    let second_https = free_port().to_string();
    let mut second = follower(&keys, follow_port, "node-pebble-2", &[("HTTPS_PORT", second_https.as_str())]);
    second.launch();
    agent.wait_for("both followers to be current", Duration::from_secs(40), || {
        let (_, body) = agent.status_get("/followers");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let rows = json["followers"].as_array().cloned().unwrap_or_default();
        rows.len() == 2 && rows.iter().all(|r| r["current"] == true)
    });

    // A TLS route appears: the agent orders once, the token travels to the follower before the
    // CA is told, pebble validates through the follower.
    crate::support::agent::write_file(&routes_file, &routes(&["issued"], backend.port()));
    agent.wait_for("the certificate from pebble", Duration::from_secs(25), || {
        agent.cert_info("issued.test").is_some_and(|i| !i.placeholder)
    });
    let fullchain = agent.fullchain("issued.test");
    pebble.verify_chain(&fullchain, "issued.test");
    assert!(!agent.log().contains("do not serve the new HTTP-01 token"), "{}", agent.log());
    // Pebble's validation request is in the follower's access log, not the agent's.
    let validated = |prefix: &Agent| {
        std::fs::read_to_string(prefix.path("logs/issued.test.access.log"))
            .is_ok_and(|log| log.contains("/.well-known/acme-challenge/"))
    };
    node.wait_for("the validation in the follower's access log", Duration::from_secs(5), || validated(&node));
    assert!(!validated(&agent), "pebble reached only the follower");

    let want = first_der(&fullchain);
    node.wait_for("the follower to serve pebble's certificate", Duration::from_secs(15), || {
        served_leaf(node.https_port, "issued.test").as_deref() == Some(want.as_slice())
    });
    second.wait_for("the second follower to serve pebble's certificate", Duration::from_secs(15), || {
        served_leaf(second.https_port, "issued.test").as_deref() == Some(want.as_slice())
    });
    // One certificate: the same serial and fingerprint from both followers, ordered once.
    let (serial, fingerprint) = serial_and_fingerprint(&want);
    for (name, port) in [("node-pebble", node.https_port), ("node-pebble-2", second.https_port)] {
        let served = served_leaf(port, "issued.test").unwrap_or_else(|| panic!("no certificate from {name}"));
        assert_eq!(serial_and_fingerprint(&served), (serial.clone(), fingerprint.clone()), "{name}");
    }
    eprintln!("one certificate from pebble, served by both followers: serial {serial}, SHA-256 {fingerprint}");
    let orders = agent.log().matches("ordering a certificate").count();
    assert_eq!(orders, 1, "the agent ordered once:\n{}", agent.log());
    let trusted = trust_file(node.dir.path(), &pebble, &fullchain);
    assert_eq!(node.curl_ok("issued.test", &trusted), "issued-backend\n");
    assert_eq!(second.curl_ok("issued.test", &trusted), "issued-backend\n");
    for f in [&node, &second] {
        assert!(!f.log().contains("ordering a certificate"), "followers order nothing:\n{}", f.log());
    }
}

/// A certificate's serial number (hex) and SHA-256 fingerprint (hex) from its DER.
fn serial_and_fingerprint(der: &[u8]) -> (String, String) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, der);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    (hex(cert.raw_serial()), hex(fingerprint.as_ref()))
}

#[test]
fn beside_an_nginx_it_did_not_start_a_follower_tests_swaps_and_reloads_it() {
    let backend = StubHttp::body("beside-backend");
    let keys = tempfile::tempdir().unwrap();
    let routes_dir = tempfile::tempdir().unwrap();
    let routes_file = routes_dir.path().join("routes.json");
    crate::support::agent::write_file(&routes_file, &routes(&["one"], backend.port()));
    let (mut agent, follow_port) = agent(&keys, &routes_file, &[]);
    agent.launch();

    let mut node = follower(&keys, follow_port, "node-beside", &[]);
    node.command = "follow --beside";
    // nginx started by someone else (a host's service manager), with the follower's main config;
    // dropping `node` stops it through its pid file.
    let started = std::process::Command::new(crate::support::nginx_bin())
        .arg("-c")
        .arg(node.path("nginx.conf"))
        .status()
        .unwrap();
    assert!(started.success());
    node.wait_for("nginx's pid file", Duration::from_secs(5), || node.nginx_pid_now().is_some());
    let pid = node.nginx_pid();
    node.launch();
    node.wait_for("the follower to serve one.test", Duration::from_secs(15), || {
        serves(&node, "one.test", "beside-backend")
    });
    crate::support::agent::write_file(&routes_file, &routes(&["one", "two"], backend.port()));
    node.wait_for("the follower to serve two.test", Duration::from_secs(15), || {
        serves(&node, "two.test", "beside-backend")
    });
    assert_eq!(node.nginx_pid(), pid, "the same nginx, reloaded");
    assert!(!node.log().contains("nginx started"), "{}", node.log());
    // `nginx -s reload` returns before the old workers are gone (they may take a last connection
    // or two with the old config): wait for ten answers in a row from the new one.
    let mut in_a_row = 0;
    node.wait_for("only the new config to answer", Duration::from_secs(10), || {
        in_a_row = if serves(&node, "two.test", "beside-backend") { in_a_row + 1 } else { 0 };
        in_a_row >= 10
    });
    // Stopping the follower leaves the nginx it did not start serving.
    node.stop();
    for _ in 0..5 {
        assert!(serves(&node, "two.test", "beside-backend"), "nginx serves on without its follower");
    }
    assert_eq!(node.nginx_pid(), pid);
}

#[test]
fn behind_a_read_only_docker_socket_the_agent_routes_containers_to_a_follower_without_one() {
    require_docker!();
    let docker = crate::support::docker::TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![docker.app("web").label("domains", "web.test").network(&net)]);
    let socket = crate::support::docker_faults::DockerFaults::start();
    socket.read_only();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), KEY);
    let follow_port = free_port();
    let follow_addr = format!("127.0.0.1:{follow_port}");
    let (prefix, host) = (docker.prefix(), socket.host());
    let mut agent = Agent::local(
        Prefix::TEST,
        &[
            ("LABEL_PREFIX", prefix.as_str()),
            ("FOLLOWER_KEY_FILE", key.as_str()),
            ("FOLLOW_ADDR", follow_addr.as_str()),
        ],
    );
    // Only through the read-only socket (`Agent::local` passes this process's DOCKER_HOST on).
    agent.env.retain(|(k, _)| k != "DOCKER_HOST");
    agent.env.push(("DOCKER_HOST".into(), host));
    agent.launch();
    agent.wait_for_status("web.test", 200, Some("web"));

    // The follower has no Docker at all: DOCKER_HOST points nowhere.
    let mut node = follower(&keys, follow_port, "node-nosocket", &[]);
    node.env.retain(|(k, _)| k != "DOCKER_HOST");
    node.env.push(("DOCKER_HOST".into(), "unix:///nonexistent/docker.sock".into()));
    node.launch();
    node.wait_for("the follower to serve the container", Duration::from_secs(15), || serves(&node, "web.test", "web"));

    // A container started later reaches the follower too.
    docker.start(vec![docker.app("late").label("domains", "late.test").network(&net)]);
    node.wait_for("the follower to serve the late container", Duration::from_secs(15), || {
        serves(&node, "late.test", "late")
    });
    let seen = socket.requests();
    assert!(seen.iter().any(|(_, path, _)| path.contains("/events")), "{seen:?}");
    assert!(seen.iter().any(|(_, path, _)| path.contains("/containers/")), "{seen:?}");
    let refused: Vec<_> = seen.iter().filter(|(_, _, refused)| *refused).collect();
    assert!(refused.is_empty(), "the agent asked more than GET of the socket: {refused:?}");
    assert!(!crate::support::docker_faults::mentions_refusal(&agent.log()), "{}", agent.log());
}

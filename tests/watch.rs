//! The seed's configuration mode: routes from a watched JSON file and a watched custom template,
//! no Docker. An idle agent does nothing, an edit is applied once, and a lasting error is logged
//! when it begins and when it ends, not on every pass.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::agent::{free_port, write_file, Agent};

/// A static page server (busybox httpd) on 127.0.0.1, answering `body`; stopped when dropped.
struct Backend {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Backend {
    fn start(body: &str) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), format!("{body}\n")).unwrap();
        let port = free_port();
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd (Debian's busybox-static; .ci/run installs it)");
        Backend { port, child, _dir: dir }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn routes(port: u16, domains: &[&str]) -> String {
    let domains: Vec<String> = domains.iter().map(|d| format!(r#"{{"name":"{d}","service":"web"}}"#)).collect();
    format!(r#"{{"domains":[{}],"services":[{{"name":"web","host":"127.0.0.1","port":{port}}}]}}"#, domains.join(","))
}

/// The builtin template with a directive nginx does not know in `domain`'s server.
fn breaking(domain: &str) -> String {
    smart_proxy::render::BUILTIN_TEMPLATE.replacen(
        "    server_name {{ site.domain }};\n",
        &format!("    server_name {{{{ site.domain }}}};\n{{% if site.domain == \"{domain}\" %}}    no_such_directive on;\n{{% endif %}}"),
        1,
    )
}

/// The counters that move when the agent tests or reloads a config.
fn activity(agent: &Agent) -> BTreeMap<String, String> {
    let (_, text) = agent.status_get("/metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("smart_proxy_config_test_duration_seconds_count")
                || l.starts_with("smart_proxy_reloads_total")
        })
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[test]
fn an_idle_agent_with_a_watched_file_and_template_tests_reloads_and_logs_nothing() {
    let backend = Backend::start("web");
    let dir = tempfile::tempdir().unwrap();
    let (file, template) = (dir.path().join("routes.json"), dir.path().join("custom.conf.j2"));
    write_file(&file, &routes(backend.port, &["good.test", "bad.test"]));
    write_file(&template, &breaking("bad.test"));
    let (file_env, template_env) = (file.display().to_string(), template.display().to_string());
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", &file_env), ("NGINX_TEMPLATE", &template_env)]);
    agent.wait_for_status("good.test", 200, Some("web"));
    agent.wait_for("bad.test to be left out", Duration::from_secs(10), || agent.log().contains("route left out"));

    // Idle, with a route left out: the agent's own reads of its files trigger nothing, and the
    // candidate it already tested is neither tested nor reloaded again.
    let (before, log_before) = (activity(&agent), agent.log());
    assert!(!before.is_empty(), "no test or reload counters in /metrics");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(activity(&agent), before, "nginx was tested or reloaded while nothing changed");
    assert_eq!(agent.log(), log_before, "the idle agent logged");
    assert_eq!(log_before.matches("route left out").count(), 1, "{log_before}");

    // An edit is applied, once.
    write_file(&file, &routes(backend.port, &["good.test", "bad.test", "new.test"]));
    agent.wait_for_status("new.test", 200, Some("web"));
    std::thread::sleep(Duration::from_secs(1));
    let applied = agent.log().matches("config applied").count();
    assert_eq!(applied, 2, "{}", agent.log());
    assert_eq!(agent.get("bad.test", "/").0, 503, "bad.test stays left out");
}

#[test]
fn a_lasting_template_error_is_logged_when_it_begins_and_when_it_ends() {
    let backend = Backend::start("web");
    let dir = tempfile::tempdir().unwrap();
    let (file, template) = (dir.path().join("routes.json"), dir.path().join("custom.conf.j2"));
    write_file(&file, &routes(backend.port, &["a.test"]));
    let builtin = smart_proxy::render::BUILTIN_TEMPLATE;
    write_file(&template, builtin);
    let (file_env, template_env) = (file.display().to_string(), template.display().to_string());
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", &file_env), ("NGINX_TEMPLATE", &template_env)]);
    agent.wait_for_status("a.test", 200, Some("web"));

    // A template that does not load: one error line, however long it stays broken.
    write_file(&template, &format!("{builtin}\n{{% if %}}"));
    agent.wait_for("the template error", Duration::from_secs(10), || {
        agent.log().contains("keeping the last good template")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.log().matches("keeping the last good template").count(), 1, "{}", agent.log());
    write_file(&template, builtin);
    agent.wait_for("the template to load again", Duration::from_secs(10), || {
        agent.log().contains("the template loads again")
    });

    // nginx -t failing without any route: logged once, and once when it ends.
    write_file(
        &template,
        &builtin.replacen("server_names_hash_bucket_size", "no_such_directive on;\nserver_names_hash_bucket_size", 1),
    );
    agent.wait_for("the failed test", Duration::from_secs(10), || agent.log().contains("fails even without routes"));
    write_file(&file, &routes(backend.port, &["a.test", "b.test"]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.log().matches("fails even without routes").count(), 1, "{}", agent.log());
    assert_eq!(agent.get("a.test", "/"), (200, "web\n".into()), "the last good config stays live");
    write_file(&template, builtin);
    agent.wait_for_status("b.test", 200, Some("web"));
    // nginx's new workers may answer a moment before the agent has seen them start and logged.
    agent.wait_for("the recovery to be logged", Duration::from_secs(10), || {
        agent.log().contains("nginx accepts the config again")
    });
}

/// Two routes that each break the config in their own way, outside their own servers (so the
/// error's line names no route and the culprits are found by bisection): each is left out with
/// its own nginx message and its source, in the log and in `/routes`.
#[test]
fn each_left_out_route_carries_its_own_nginx_message() {
    let backend = Backend::start("web");
    let dir = tempfile::tempdir().unwrap();
    let (file, template) = (dir.path().join("routes.json"), dir.path().join("custom.conf.j2"));
    write_file(&file, &routes(backend.port, &["a.test", "b.test", "c.test"]));
    // In reverse order, so the whole config's first error is b.test's while bisection finds
    // a.test first.
    let header = format!(
        "server_names_hash_bucket_size {{{{ hash.bucket_size }}}};\n{{% for site in sites|reverse %}}{{% if site.domain == \"a.test\" %}}no_such_directive_a on;\n{{% elif site.domain == \"b.test\" %}}include {};\n{{% endif %}}{{% endfor %}}\n",
        dir.path().display()
    );
    let builtin = smart_proxy::render::BUILTIN_TEMPLATE;
    assert!(builtin.contains("server_names_hash_bucket_size {{ hash.bucket_size }};\n"));
    write_file(&template, &builtin.replacen("server_names_hash_bucket_size {{ hash.bucket_size }};\n", &header, 1));
    let (file_env, template_env) = (file.display().to_string(), template.display().to_string());
    let agent = Agent::start(&[("NO_DOCKER", "true"), ("CONFIG_FILE", &file_env), ("NGINX_TEMPLATE", &template_env)]);
    agent.wait_for_status("c.test", 200, Some("web"));

    let (_, body) = agent.status_get("/routes");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let left_out = json["left_out"].as_array().unwrap_or_else(|| panic!("{json}"));
    let reason = |domain: &str| -> String {
        let entry =
            left_out.iter().find(|e| e["domain"] == domain).unwrap_or_else(|| panic!("{domain} not left out: {json}"));
        assert_eq!(
            entry["sources"][0].as_str().unwrap(),
            format!("{} domains[{}]", file.display(), if domain == "a.test" { 0 } else { 1 }),
            "{json}"
        );
        entry["reason"].as_str().unwrap().to_string()
    };
    let (a, b) = (reason("a.test"), reason("b.test"));
    assert!(a.contains("unknown directive \"no_such_directive_a\""), "a.test's reason: {a}");
    assert!(b.contains("Is a directory"), "b.test's reason: {b}");
    let log = agent.log();
    for (domain, message) in [("a.test", "no_such_directive_a"), ("b.test", "Is a directory")] {
        assert!(
            log.lines().any(|l| l.contains("route left out")
                && l.contains(&format!("domain={domain}"))
                && l.contains(message)
                && l.contains("routes.json domains[")),
            "no log line for {domain} with its own message and source:\n{log}"
        );
    }
}

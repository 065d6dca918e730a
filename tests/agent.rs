//! The live agent end to end on the real daemon, with nginx as the agent's child (the seed's
//! one-container setup, run on this machine) in LOCAL mode: real containers, real requests.

use std::time::Duration;

use crate::support::agent::{write_file, Agent};
use crate::support::docker::TestDocker;

fn agent_for(docker: &TestDocker, extra: &[(&str, &str)]) -> Agent {
    let prefix = docker.prefix();
    let mut env = vec![("LABEL_PREFIX", prefix.as_str())];
    env.extend_from_slice(extra);
    Agent::start(&env)
}

#[test]
fn three_apps_stop_and_start() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    let apps = ["app1", "app2", "api"].map(|a| docker.app(a).label("domains", &format!("{a}.test")).network(&net));
    docker.start(apps.to_vec());
    let agent = agent_for(&docker, &[]);
    for app in ["app1", "app2", "api"] {
        agent.wait_for_status(&format!("{app}.test"), 200, Some(app));
    }
    assert_eq!(agent.get("nobody.test", "/").0, 503, "unknown hosts get the default server");

    docker.stop(&docker.name("app1"));
    agent.wait_for_status("app1.test", 502, None);
    assert_eq!(agent.get("app2.test", "/"), (200, "app2\n".into()));
    assert_eq!(agent.get("api.test", "/"), (200, "api\n".into()));

    crate::support::docker::docker(&["start", &docker.name("app1")]);
    agent.wait_for_status("app1.test", 200, Some("app1"));
}

#[test]
fn containers_added_scaled_and_stopped_while_running() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![docker.app("base").label("domains", "base.test").network(&net)]);
    let agent = agent_for(&docker, &[]);
    agent.wait_for_status("base.test", 200, Some("base"));

    // Added while running: live without a restart.
    let web =
        |n: u32| docker.app(&format!("web{n}")).label("domains", "web.test").label("service", "web").network(&net);
    docker.start(vec![web(1)]);
    agent.wait_for_status("web.test", 200, Some("web1"));

    // Scaled to three replicas: requests are spread across all three.
    docker.start(vec![web(2), web(3)]);
    agent.wait_for("all three replicas to answer", Duration::from_secs(15), || {
        let seen: std::collections::BTreeSet<String> = (0..30).map(|_| agent.get("web.test", "/").1).collect();
        seen.len() == 3
    });

    // One replica stops: no errors for that domain, while and after it goes. A request that
    // reaches the replica's address after its network is gone gets no answer at all (no reset):
    // nginx's 5 s connect timeout sends it to another replica (with nginx's 60 s default this
    // request failed the test's 10 s read, under load, about one run in eight).
    let stopper = std::thread::spawn({
        let name = docker.name("web2");
        move || crate::support::docker::docker(&["stop", "-t", "1", &name])
    });
    let mut statuses = Vec::new();
    while !stopper.is_finished() {
        statuses.push(agent.get("web.test", "/").0);
    }
    stopper.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..50 {
        statuses.push(agent.get("web.test", "/").0);
    }
    assert!(statuses.iter().all(|s| *s == 200), "errors while a replica stopped: {statuses:?}");
    assert!(!agent.log().contains("reconnect"), "no reconnects expected:\n{}", agent.log());
}

#[test]
fn an_invalid_label_skips_only_its_container() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![docker.app("good").label("domains", "good.test").network(&net)]);
    let agent = agent_for(&docker, &[]);
    agent.wait_for_status("good.test", 200, Some("good"));

    docker.start(vec![docker.app("bad").label("domains", "bad.test").label("port", "99999").network(&net)]);
    agent.wait_for("the bad label to be reported", Duration::from_secs(10), || {
        agent.log().contains(&format!(
            "container {}, label {}: port 99999 is out of range",
            docker.name("bad"),
            docker.label("port")
        ))
    });
    assert_eq!(agent.get("bad.test", "/").0, 503);
    assert_eq!(agent.get("good.test", "/"), (200, "good\n".into()));
}

#[test]
fn a_template_that_fails_nginx_t_keeps_the_last_good_config() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![
        docker.app("one").label("domains", "one.test").network(&net),
        docker.app("two").label("domains", "two.test").network(&net),
    ]);
    let template_dir = tempfile::tempdir().unwrap();
    let template = template_dir.path().join("custom.conf.j2");
    let builtin = smart_proxy::render::BUILTIN_TEMPLATE;
    write_file(&template, builtin);
    let template_env = template.display().to_string();
    let agent = agent_for(&docker, &[("NGINX_TEMPLATE", &template_env)]);
    agent.wait_for_status("one.test", 200, Some("one"));
    let good = std::fs::read_to_string(agent.path("conf.d/default.conf")).unwrap();

    // A directive nginx does not know, in the header: no route is to blame; nothing changes.
    write_file(
        &template,
        &builtin.replacen("server_names_hash_bucket_size", "no_such_directive on;\nserver_names_hash_bucket_size", 1),
    );
    agent.wait_for("the failed test to be logged", Duration::from_secs(10), || {
        agent.log().contains("fails even without routes")
    });
    assert_eq!(std::fs::read_to_string(agent.path("conf.d/default.conf")).unwrap(), good, "the live file is untouched");
    docker.start(vec![docker.app("three").label("domains", "three.test").network(&net)]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.get("one.test", "/"), (200, "one\n".into()));

    // A directive that breaks only two.test's server: only that route is dropped.
    let per_site = builtin.replacen(
        "    server_name {{ site.domain }};\n",
        "    server_name {{ site.domain }};\n{% if site.domain == \"two.test\" %}    no_such_directive on;\n{% endif %}",
        1,
    );
    write_file(&template, &per_site);
    agent.wait_for_status("three.test", 200, Some("three"));
    // Old workers may answer a moment longer after a reload: wait rather than sample once.
    agent.wait_for_status("two.test", 503, None);
    assert_eq!(agent.get("one.test", "/").0, 200);
    // Logged after the reload: polled.
    agent.wait_for("the route left out to be logged", Duration::from_secs(10), || {
        agent.log().contains("route left out")
    });

    // Fixed: everything recovers without a restart.
    write_file(&template, builtin);
    agent.wait_for_status("two.test", 200, Some("two"));
}

#[test]
fn static_file_edits_apply_and_broken_edits_keep_the_last_good_routes() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![docker.app("backend").network(&net)]);
    let ip = docker.ip(&docker.name("backend"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.json");
    let routes = |domain: &str| {
        format!(
            r#"{{"domains":[{{"name":"{domain}","service":"b"}}],"services":[{{"name":"b","host":"{ip}","port":8080}}]}}"#
        )
    };
    write_file(&file, &routes("static.test"));
    let file_env = file.display().to_string();
    let agent = agent_for(&docker, &[("CONFIG_FILE", &file_env)]);
    agent.wait_for_status("static.test", 200, Some("backend"));

    write_file(&file, "{ \"domains\": [ broken");
    agent
        .wait_for("the broken edit to be reported", Duration::from_secs(10), || agent.log().contains("not valid JSON"));
    assert_eq!(agent.get("static.test", "/").0, 200, "the last good routes stay");

    write_file(&file, &routes("renamed.test"));
    agent.wait_for_status("renamed.test", 200, Some("backend"));
    agent.wait_for_status("static.test", 503, None);
}

#[test]
fn sigterm_stops_nginx_gracefully_and_a_dead_nginx_stops_the_agent() {
    require_docker!();
    let docker = TestDocker::new();
    let mut agent = agent_for(&docker, &[]);
    let status = agent.stop();
    assert!(status.success(), "SIGTERM is a clean stop: {status}\n{}", agent.log());
    assert_eq!(agent.get("x.test", "/").0, 0, "nginx stopped with the agent");

    let mut agent = agent_for(&docker, &[]);
    let nginx = agent.nginx_pid();
    std::process::Command::new("kill").arg("-KILL").arg(nginx.to_string()).status().unwrap();
    let mut exit = None;
    for _ in 0..250 {
        exit = agent.exited();
        if exit.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit = exit.expect("the agent exits when nginx dies");
    assert!(!exit.success(), "non-zero exit when nginx dies: {exit}");
    assert!(agent.log().contains("nginx exited unexpectedly"), "{}", agent.log());
}

/// Creates and starts an app container with a HEALTHCHECK (the guard removes it).
fn start_with_health(docker: &TestDocker, short: &str, network: &str, labels: &[(&str, &str)], health: &[&str]) {
    use crate::support::docker::{app_image, docker as run, TEST_LABEL};
    let name = docker.name(short);
    let owner = format!("{TEST_LABEL}={}", docker.run_id());
    let app_name = format!("APP_NAME={short}");
    let mut args = vec!["create", "--name", &name, "--label", &owner, "--env", &app_name, "--network", network];
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{}={v}", docker.label(k))).collect();
    for label in &labels {
        args.extend(["--label", label]);
    }
    args.extend_from_slice(health);
    let image = app_image();
    args.push(&image);
    run(&args);
    run(&["start", &name]);
}

#[test]
fn starting_and_unhealthy_replicas_are_left_out() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    let route = [("domains", "hc.test"), ("service", "hc")];
    start_with_health(&docker, "good", &net, &route, &["--health-cmd", "true", "--health-interval", "1s"]);
    start_with_health(
        &docker,
        "sick",
        &net,
        &route,
        &["--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1"],
    );
    // Stays "starting" for the whole test: its first check is 60 s away.
    start_with_health(
        &docker,
        "slow",
        &net,
        &[("domains", "slow.test")],
        &["--health-cmd", "true", "--health-interval", "60s"],
    );
    let agent = agent_for(&docker, &[]);
    agent.wait_for_status("hc.test", 200, Some("good"));
    // The replicas' health changes cause reloads; let the old workers drain before sampling.
    agent.wait_for("hc.test to settle", Duration::from_secs(15), || {
        (0..10).all(|_| agent.get("hc.test", "/") == (200, "good\n".to_string()))
    });
    let answers: Vec<(u16, String)> = (0..30).map(|_| agent.get("hc.test", "/")).collect();
    if !answers.iter().all(|a| *a == (200, "good\n".to_string())) {
        let mut seen = std::collections::BTreeMap::new();
        for (status, body) in &answers {
            *seen.entry((*status, body.chars().take(60).collect::<String>())).or_insert(0) += 1;
        }
        let nginx_log = std::fs::read_to_string(agent.path("logs/hc.test.error.log")).unwrap_or_default()
            + "--- nginx's own error log ---\n"
            + &std::fs::read_to_string(agent.path("logs/nginx-error.log")).unwrap_or_default();
        panic!(
            "only the healthy replica serves; answers (status, body start) → count: {seen:?}\n--- nginx's hc.test error log ---\n{nginx_log}\n{}",
            agent.log()
        );
    }
    assert_eq!(agent.get("slow.test", "/").0, 502, "a domain whose only replica is starting answers 502");
}

#[test]
fn production_mode_serves_https_with_a_placeholder_and_redirects_http() {
    require_docker!();
    let docker = TestDocker::new();
    let net = docker.network("net");
    docker.start(vec![docker.app("secure").label("domains", "secure.test").network(&net)]);
    let https_port = crate::support::agent::free_port().to_string();
    let agent = agent_for(&docker, &[("LOCAL", "false"), ("HTTPS_PORT", &https_port)]);
    agent.wait_for_status("secure.test", 301, None);
    assert_eq!(agent.get("secure.test", "/health"), (200, "healthy\n".into()));

    let key = agent.path("certs/live/secure.test/privkey.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the placeholder key is 0600");

    let curl = |host: &str| {
        std::process::Command::new("curl")
            .args(["-sk", "--max-time", "5", "--resolve", &format!("{host}:{https_port}:127.0.0.1")])
            .arg(format!("https://{host}:{https_port}/"))
            .output()
            .expect("curl is installed (.ci/run installs it)")
    };
    let secure = curl("secure.test");
    assert_eq!(String::from_utf8_lossy(&secure.stdout), "secure\n", "HTTPS proxies to the app");
    let unknown = curl("unknown.test");
    assert!(!unknown.status.success(), "the TLS handshake for an unknown name is refused");
}

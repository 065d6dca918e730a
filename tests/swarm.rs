//! Swarm services on a real Swarm: an engine of the test's own ([`SwarmEngine`]: its own
//! `dockerd` in a network namespace, a Swarm manager), nginx in it as a plain container on an
//! attachable overlay network, the agent on the host in the companion setup (`DOCKER_HOST` at the
//! engine's socket, `NGINX_CONTAINER`, nginx's config directory bind-mounted at the same path in
//! both), and requests to nginx's port published on the namespace's address. Services are made
//! with `docker service create` carrying the labels on the service (`--label`: what a stack's
//! `deploy.labels` sets), beside a labelled plain container. Load during scaling and rolling
//! updates comes from wrk (`support::wrk`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::agent::{Agent, Prefix};
use crate::support::docker::app_image;
use crate::support::images::nginx_image;
use crate::support::swarm::{get, SwarmEngine};
use crate::support::wrk::{have_wrk, Report, Wrk};

const RELOADED: &str = "config applied and nginx reloaded";

/// The engine, nginx in it, and the agent on the host driving it.
struct Setup {
    engine: SwarmEngine,
    agent: Agent,
    /// nginx's port 80, published on the engine's address.
    port: u16,
    app: String,
    /// `NGINX_CONF` (the same path in the nginx container).
    conf: PathBuf,
}

impl Setup {
    fn start() -> Setup {
        Setup::start_nodes(1, &[])
    }

    /// A Swarm of `nodes` nodes (nginx and the agent on node 0, the manager), the agent with
    /// `env` added.
    fn start_nodes(nodes: usize, env: &[(&str, &str)]) -> Setup {
        let app = app_image();
        let nginx = nginx_image();
        let engine = SwarmEngine::start_nodes(nodes, &[&nginx, &app]);
        eprintln!("Swarm engine up in {:?} (images loaded after)", engine.startup);
        engine.docker(&["network", "create", "--driver", "overlay", "--attachable", "proxy"]);

        // nginx's config directory, at the same path on the host and in the container.
        let dir = engine.scratch("nginx");
        let d = dir.display();
        for p in [dir.parent().unwrap().to_path_buf(), dir.clone()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        // The per-site logs, where nginx's workers (not root) may write.
        let logs = engine.scratch("nginx/logs");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr info;\nevents {{ worker_connections 1024; }}\nhttp {{\n    include /etc/nginx/mime.types;\n    access_log off;\n    include {d}/conf.d/*.conf;\n}}\n"
            ),
        )
        .unwrap();
        let mount = format!("{d}:{d}");
        let main = format!("{d}/nginx.conf");
        engine.docker(&[
            "run",
            "-d",
            "--name",
            "nginx",
            "--network",
            "proxy",
            "--publish",
            "80",
            "--volume",
            &mount,
            &nginx,
            "nginx",
            "-c",
            &main,
            "-g",
            "daemon off;",
        ]);
        let published = engine.docker(&["port", "nginx", "80/tcp"]);
        let port = published
            .lines()
            .find_map(|l| l.strip_prefix("0.0.0.0:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("nginx's port 80 is not published: {published:?}"));

        let conf = format!("{d}/conf.d/default.conf");
        let log_dir = format!("{d}/logs");
        let mut agent = Agent::local(
            Prefix::TEST,
            &[
                ("NGINX_CONTAINER", "nginx"),
                ("NGINX_MAIN_CONF", &main),
                ("NGINX_CONF", &conf),
                ("HTTP_PORT", "80"),
                // Paths in the nginx container.
                ("LOG_DIR", &log_dir),
                ("CERTS_DIR", "/etc/letsencrypt"),
                ("ACME_WEBROOT", "/var/www/certbot"),
                ("INSIGHT", "false"),
            ],
        );
        for (k, v) in env {
            agent.env.retain(|(key, _)| key != k);
            agent.env.push((k.to_string(), v.to_string()));
        }
        agent.env.retain(|(k, _)| k != "DOCKER_HOST");
        agent.env.push(("DOCKER_HOST".into(), engine.host()));
        agent.spawn();
        let app = SwarmEngine::image(&app);
        let setup = Setup { engine, agent, port, app, conf: PathBuf::from(&conf) };
        setup
            .agent
            .wait_for("the first apply", Duration::from_secs(30), || setup.agent.log().contains("config applied"));
        assert!(
            setup.agent.log().contains("Docker is a Swarm manager: reading the labelled services too (SWARM=auto)"),
            "{}",
            setup.agent.log()
        );
        setup
    }

    /// GET / with `Host: host` through nginx: (status, body); status 0 when nothing answers.
    fn get(&self, host: &str) -> (u16, String) {
        get(SocketAddr::from((self.engine.address(), self.port)), host)
    }

    fn wait_for_body(&self, host: &str, body: &str, timeout: Duration) -> Duration {
        let context = || format!("--- agent log ---\n{}", self.agent.log());
        crate::support::poll(
            &format!("{host} to answer 200 {body:?}"),
            timeout,
            Duration::from_millis(20),
            || {
                let (status, text) = self.get(host);
                status == 200 && text.trim() == body
            },
            || None,
            context,
        )
    }

    /// The upstream servers (`server <ip>:8080;` lines) in the config on disk.
    fn servers(&self) -> usize {
        let conf = std::fs::read_to_string(&self.conf).unwrap_or_default();
        conf.lines().filter(|l| l.trim_start().starts_with("server ") && l.trim_end().ends_with(":8080;")).count()
    }

    /// Waits until `host` answers its page 20 times in a row: an nginx worker of the config
    /// before the last reload may still take a connection or two (it had no server yet).
    fn wait_steady(&self, host: &str, body: &str) {
        let mut in_a_row = 0;
        self.agent.wait_for(&format!("{host} to answer 20 times in a row"), Duration::from_secs(10), || {
            let (status, text) = self.get(host);
            in_a_row = if status == 200 && text.trim() == body { in_a_row + 1 } else { 0 };
            in_a_row >= 20
        });
    }

    /// How many upstream errors nginx logged for `host` (each a try it retried on another
    /// server, or a failed request): a task that stopped before it left the upstream.
    fn upstream_errors(&self, host: &str) -> usize {
        let log = self.conf.parent().unwrap().parent().unwrap().join(format!("logs/{host}.error.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("nginx's {}: {e}", log.display()));
        text.lines().filter(|l| l.contains("[error]") && l.contains("upstream: \"http://1")).count()
    }

    fn reloads(&self) -> usize {
        self.agent.log().matches(RELOADED).count()
    }

    /// Runs `change` (which returns once the config reflects it) under wrk against `host`
    /// through nginx's published port, then a second more of load on the final config. Asserts
    /// that wrk saw no socket error and no answer but 2xx or 3xx (nothing here redirects), that
    /// the agent reloaded nginx, and that the service's own page answers after it. Reports the
    /// requests, the reloads, and nginx's upstream errors: `proxy_next_upstream` retries a try
    /// that failed on a task that stopped before it left the upstream, so the client never sees
    /// it, but the error log does.
    fn under_wrk(&self, what: &str, host: &str, change: impl FnOnce()) {
        let (reloads, errors) = (self.reloads(), self.upstream_errors(host));
        let addr = SocketAddr::from((self.engine.address(), self.port));
        let wrk = Wrk::start(addr, host, 8, Duration::from_secs(300));
        let started = Instant::now();
        change();
        std::thread::sleep(Duration::from_secs(1));
        let text = wrk.finish();
        let report = Report::parse(&text);
        let (reloaded, retried) = (self.reloads() - reloads, self.upstream_errors(host) - errors);
        eprintln!(
            "{what} under wrk: {} requests in {:.1} s ({:.0}/s), {}; {reloaded} reloads by the agent; {retried} upstream errors retried by nginx",
            report.requests,
            started.elapsed().as_secs_f64(),
            report.per_second,
            report.failures().unwrap_or_else(|| "none failed".into())
        );
        assert!(report.requests > 0, "wrk sent no request during the {what}:\n{text}");
        assert!(
            report.failures().is_none(),
            "failed requests during the {what}: {}\n{text}\n{}\n--- agent log ---\n{}\n--- nginx ---\n{}",
            report.failures().unwrap_or_default(),
            self.tasks(host.trim_end_matches(".test")),
            self.agent.log(),
            self.nginx_log()
        );
        assert!(reloaded > 0, "the {what} reloaded nginx not once:\n{}", self.agent.log());
        // wrk counts statuses only: the answers come from the service's own tasks (its page is
        // its name), not another route's.
        let page = format!("{}\n", host.trim_end_matches(".test"));
        for _ in 0..10 {
            assert_eq!(self.get(host), (200, page.clone()), "after the {what}");
        }
    }

    /// `docker service create` of the app image: `APP_NAME=name` (its page), the labels given.
    fn create(&self, name: &str, replicas: u32, labels: &[(&str, &str)]) -> Duration {
        self.create_with(name, replicas, labels, &[("APP_NAME", name)], &[])
    }

    /// [`Setup::create`] with the app's environment and further `docker service create` options.
    fn create_with(
        &self,
        name: &str,
        replicas: u32,
        labels: &[(&str, &str)],
        env: &[(&str, &str)],
        options: &[&str],
    ) -> Duration {
        let mut args: Vec<String> =
            ["service", "create", "--detach", "--no-resolve-image", "--name", name, "--network", "proxy"]
                .map(String::from)
                .to_vec();
        args.extend(["--replicas".into(), replicas.to_string()]);
        for (k, v) in env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        args.extend(options.iter().map(|o| o.to_string()));
        // The shell traps TERM: a stopped task exits at once, as a real app that stops cleanly.
        args.extend(["--stop-grace-period".into(), "5s".into()]);
        for (k, v) in labels {
            args.extend(["--label".into(), format!("smart-proxy.{k}={v}")]);
        }
        args.push(self.app.clone());
        let started = Instant::now();
        self.engine.docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        started.elapsed()
    }

    /// What nginx logged about its sites (the per-domain error logs): the last 40 lines.
    fn nginx_log(&self) -> String {
        let tail =
            format!("tail -n 40 {}/*.error.log", self.conf.parent().unwrap().parent().unwrap().join("logs").display());
        let out = self.engine.docker_output(&["exec", "nginx", "sh", "-c", &tail]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The service's tasks as `docker service ps` shows them, for messages.
    fn tasks(&self, service: &str) -> String {
        self.engine.docker(&["service", "ps", service, "--format", "{{.Name}} {{.DesiredState}} {{.CurrentState}}"])
    }
}

/// How many tasks of `service` Swarm wants running and are.
fn running_tasks(s: &Setup, service: &str) -> usize {
    s.tasks(service).lines().filter(|l| l.contains(" Running Running")).count()
}

/// `n` tasks run as wanted and none that should stop still runs.
fn settled(s: &Setup, service: &str, n: usize) -> bool {
    let tasks = s.tasks(service);
    running_tasks(s, service) == n && !tasks.lines().any(|l| l.contains(" Shutdown Running"))
}

/// `docker service update --update-order <order> --env-add <env> web` under wrk, until the
/// update completed: no failed request.
fn rolling_update(s: &Setup, order: &str, env: &str) {
    let update = |field: &str| {
        let format = format!("{{{{if .UpdateStatus}}}}{{{{.UpdateStatus.{field}}}}}{{{{end}}}}");
        s.engine.docker(&["service", "inspect", "web", "--format", &format])
    };
    let before = update("StartedAt");
    let tasks = s.servers();
    s.under_wrk(&format!("rolling update ({order}, {tasks} tasks)"), "web.test", || {
        let args = ["service", "update", "--detach", "--update-order", order, "--update-parallelism", "1"];
        s.engine.docker(&[&args[..], &["--env-add", env, "web"]].concat());
        s.agent.wait_for("the update to complete", Duration::from_secs(90), || {
            update("StartedAt") != before && update("State") == "completed"
        });
        s.agent.wait_for(&format!("{tasks} servers in the config"), Duration::from_secs(10), || s.servers() == tasks);
    });
}

#[test]
fn swarm_services_are_served_scaled_updated_and_removed_without_failed_requests() {
    require_docker!();
    if !crate::support::swarm::require_root() {
        return;
    }
    if !have_wrk() {
        return;
    }
    let s = Setup::start();

    // Created: served once its task runs.
    let create = s.create("web", 1, &[("domains", "web.test"), ("port", "8080")]);
    let started = Instant::now();
    let served = s.wait_for_body("web.test", "web", Duration::from_secs(60));
    eprintln!(
        "web: `docker service create` returned after {create:?}; served {served:?} after it returned ({:?} total)",
        started.elapsed() + create
    );
    let check = s.agent.cli(&["check"]);
    let check_text = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check_text.contains("network proxy: swarm tasks (default); the network shared with nginx"), "{check_text}");
    assert!(check_text.contains("Swarm services:\n  web: swarm tasks (default); 1 of 1 tasks running"), "{check_text}");

    // A labelled plain container beside the service, on the same overlay network: both are
    // served. Its page is on 8081, so that `servers()` (the `:8080` lines) counts web's tasks only.
    s.engine.docker(&[
        "run",
        "-d",
        "--name",
        "plain",
        "--network",
        "proxy",
        "--label",
        "smart-proxy.domains=plain.test",
        "--label",
        "smart-proxy.port=8081",
        &s.app,
        "/bin/busybox",
        "sh",
        "-c",
        "echo plain > /www/index.html; trap 'exit 0' TERM; /bin/busybox httpd -f -p 8081 -h /www & wait",
    ]);
    s.wait_for_body("plain.test", "plain", Duration::from_secs(30));
    assert_eq!(s.get("web.test"), (200, "web\n".to_string()), "the service stays served beside the container");
    let check = s.agent.cli(&["check"]);
    let check_text = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check_text.contains("plain.test"), "{check_text}");
    assert!(check_text.contains("web.test"), "{check_text}");

    // Scaled 1 → 5 → 1 under wrk: no failed request.
    s.wait_steady("web.test", "web");
    s.under_wrk("scale 1 → 5", "web.test", || {
        s.engine.docker(&["service", "scale", "--detach", "web=5"]);
        s.agent.wait_for("5 running tasks", Duration::from_secs(90), || running_tasks(&s, "web") == 5);
        s.agent.wait_for("5 servers in the config", Duration::from_secs(10), || s.servers() == 5);
    });
    s.under_wrk("scale 5 → 1", "web.test", || {
        s.engine.docker(&["service", "scale", "--detach", "web=1"]);
        s.agent.wait_for("1 running task, the others stopped", Duration::from_secs(60), || settled(&s, "web", 1));
        s.agent.wait_for("1 server in the config", Duration::from_secs(10), || s.servers() == 1);
    });

    // Rolling updates under wrk: start-first with one replica, stop-first (Swarm's default) with
    // two, one at a time: no failed request.
    rolling_update(&s, "start-first", "UPDATED=1");
    s.engine.docker(&["service", "scale", "--detach", "web=2"]);
    s.agent.wait_for("2 running tasks", Duration::from_secs(60), || settled(&s, "web", 2));
    s.agent.wait_for("2 servers in the config", Duration::from_secs(10), || s.servers() == 2);
    rolling_update(&s, "stop-first", "UPDATED=2");

    // swarm.lb=vip: one server, the service's virtual IP on the shared network. `heal=restart`
    // routes, but the agent restarts no task (Swarm replaces them): `check` says so.
    s.create("vip", 2, &[("domains", "vip.test"), ("port", "8080"), ("swarm.lb", "vip"), ("heal", "restart")]);
    let vip =
        s.engine.docker(&["service", "inspect", "vip", "--format", "{{range .Endpoint.VirtualIPs}}{{.Addr}}{{end}}"]);
    let vip = vip.split('/').next().unwrap().to_string();
    s.agent.wait_for("the VIP in the config", Duration::from_secs(30), || {
        std::fs::read_to_string(&s.conf).unwrap_or_default().contains(&format!("server {vip}:8080"))
    });
    let check = s.agent.cli(&["check"]);
    let check_text = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check_text.contains("swarm vip (label smart-proxy.swarm.lb=vip); the network shared with nginx"),
        "{check_text}"
    );
    let vip_line = check_text.lines().find(|l| l.trim_start().starts_with("vip: swarm vip")).unwrap_or_default();
    assert!(
        vip_line.ends_with("; heal=restart has no effect on a service (Swarm replaces failed tasks)"),
        "{check_text}"
    );
    if s.engine.has_ipvs() {
        s.wait_for_body("vip.test", "vip", Duration::from_secs(60));
    } else {
        // Swarm balances a VIP with IPVS in each container's namespace; without it the VIP
        // answers nothing.
        eprintln!("\n*** NOT CHECKED: requests through the VIP: this kernel has no IPVS (no /proc/net/ip_vs in the engine's namespace); the config's server is the VIP ({vip}) ***\n");
    }

    // Removed: the route is gone (the default server answers).
    s.engine.docker(&["service", "rm", "web"]);
    s.agent.wait_for("web.test to leave", Duration::from_secs(15), || s.get("web.test").0 == 503);
    let (status, _) = s.get("vip.test");
    assert!(status != 503 && (status == 200 || !s.engine.has_ipvs()), "the other service stays routed: {status}");
    assert_eq!(s.get("plain.test"), (200, "plain\n".to_string()), "the plain container stays served");
}

#[test]
fn a_task_on_a_stopped_node_leaves_its_upstream() {
    require_docker!();
    if !crate::support::swarm::require_root() {
        return;
    }
    let mut s = Setup::start_nodes(2, &[]);
    // Two tasks on each node; each page names its node.
    s.create_with(
        "web",
        4,
        &[("domains", "web.test"), ("port", "8080")],
        &[("APP_NAME", "{{.Node.ID}}")],
        &["--replicas-max-per-node", "2"],
    );
    let nodes: Vec<String> =
        s.engine.docker(&["node", "ls", "--format", "{{.ID}}"]).lines().map(String::from).collect();
    let mut seen = std::collections::BTreeSet::new();
    s.agent.wait_for("answers from tasks on both nodes", Duration::from_secs(60), || {
        let (status, body) = s.get("web.test");
        if status == 200 {
            seen.insert(body.trim().to_string());
        }
        seen.len() == 2
    });
    assert_eq!(seen.iter().cloned().collect::<Vec<_>>(), {
        let mut n = nodes.clone();
        n.sort();
        n
    });
    let worker = s.engine.docker(&["node", "ls", "--filter", "role=worker", "--format", "{{.ID}}"]);
    let stopped = Instant::now();
    s.engine.stop_node(1);
    // Swarm marks the node down after its heartbeats stop (about 10 s here), and its tasks'
    // desired state shutdown: the node event's watch takes them out.
    s.agent.wait_for("the stopped node's tasks to leave", Duration::from_secs(60), || s.servers() == 2);
    eprintln!("the stopped node's tasks left the upstream {:?} after its engine stopped", stopped.elapsed());
    for _ in 0..50 {
        let (status, body) = s.get("web.test");
        assert_eq!(status, 200);
        assert_ne!(body.trim(), worker, "a task of the stopped node answered");
    }
}

/// The README's Swarm blocks on a two-node Swarm: its commands (the follower key, then `docker
/// stack deploy` of compose/swarm/docker-stack.yml) start the agent on the manager (the only task
/// with the Docker socket) and a follower (`follow`, nginx its child, no socket) on each node,
/// publishing port 80 in host mode; its app stack file, deployed as written (but the image), is
/// served through both nodes, and the agent lists both followers as current.
#[test]
fn the_readme_swarm_stack_serves_an_app_stack_through_a_follower_on_every_node() {
    require_docker!();
    if !crate::support::swarm::require_root() {
        return;
    }
    let agent = crate::support::images::agent_image(std::path::Path::new(env!("CARGO_BIN_EXE_nginx-smart-proxy")));
    let app = app_image();
    let engine = SwarmEngine::start_nodes(2, &[&agent, &app]);
    // The README's commands, in a copy of compose/swarm (the key file is made there).
    let dir = engine.scratch("checkout");
    std::fs::create_dir_all(dir.join("compose/swarm")).unwrap();
    let stack = concat!(env!("CARGO_MANIFEST_DIR"), "/compose/swarm/docker-stack.yml");
    std::fs::copy(stack, dir.join("compose/swarm/docker-stack.yml")).unwrap();
    let run = |script: &str| {
        let out = std::process::Command::new("sh")
            .args(["-ec", script])
            .current_dir(&dir)
            .env("DOCKER_HOST", engine.host())
            .env("AGENT_IMAGE", SwarmEngine::image(&agent))
            .env("DOCKER_SOCKET", engine.host().trim_start_matches("unix://"))
            .env("LOCAL", "true")
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let commands = crate::compose::readme_block("## Docker Swarm services", "```sh");
    assert!(commands.contains("docker stack deploy -c compose/swarm/docker-stack.yml proxy"), "{commands}");
    run(&commands);
    let key = std::fs::metadata(dir.join("compose/swarm/follower_key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);
    // Apps come once the proxy runs: the agent follows a service's tasks from its events, and a
    // service deployed before the agent listens is only seen converged at the next resync.
    let started = Instant::now();
    loop {
        let out = engine.docker_output(&["service", "logs", "--raw", "proxy_agent"]);
        let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if log.contains("config applied") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the agent applied no config within 120 s:\n{log}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let web = crate::compose::readme_block("## Docker Swarm services", "```yaml");
    assert!(web.contains("image: my/web"), "{web}");
    std::fs::write(dir.join("web.yml"), web.replace("image: my/web", &format!("image: {}", SwarmEngine::image(&app))))
        .unwrap();
    run("docker stack deploy -c web.yml web");

    let diagnostics = || {
        let logs = |service: &str| {
            let out = engine.docker_output(&["service", "logs", "--raw", "--tail", "60", service]);
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
        };
        // Each node's follower, by its container's log there.
        let edge = |node: usize| {
            let filter = "label=com.docker.swarm.service.name=proxy_edge";
            let id = engine.node_docker(node, &["ps", "-q", "--filter", filter]);
            let out = engine.node_docker_output(node, &["logs", "--tail", "40", id.trim()]);
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
        };
        format!(
            "--- services ---\n{}\n--- tasks ---\n{}\n--- agent ---\n{}\n--- follower on node 0 ---\n{}\n--- follower on node 1 ---\n{}",
            engine.docker(&["service", "ls"]),
            engine.docker(&["service", "ps", "--no-trunc", "proxy_agent", "proxy_edge", "web_web"]),
            logs("proxy_agent"),
            edge(0),
            edge(1)
        )
    };
    for node in 0..2 {
        let addr = SocketAddr::from((engine.node_address(node), 80));
        let started = Instant::now();
        while get(addr, "web.example.com") != (200, "app\n".to_string()) {
            let last = get(addr, "web.example.com");
            // The followers' first polls fail while Docker's DNS does not know `agent` yet (about
            // 30 s here; they retry with backoff).
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "web.example.com through node {node}: {last:?}\n{}",
                diagnostics()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("node {node}: web.example.com served after {:?} more", started.elapsed());
    }
    if std::env::var_os("SWARM_STACK_LOGS").is_some() {
        eprintln!("{}", diagnostics());
    }
    // The agent's /followers (its status endpoint, on the loopback of its task) lists both, each
    // serving the current revision.
    let agent_task = engine.docker(&["ps", "-q", "--filter", "label=com.docker.swarm.service.name=proxy_agent"]);
    let started = Instant::now();
    loop {
        let followers = engine.docker(&["exec", agent_task.trim(), "wget", "-qO-", "http://127.0.0.1:9180/followers"]);
        let doc: serde_json::Value = serde_json::from_str(&followers).unwrap_or_else(|e| panic!("{e}: {followers}"));
        let rows = doc["followers"].as_array().cloned().unwrap_or_default();
        if rows.len() == 2 && rows.iter().all(|r| r["current"] == true) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "two current followers: {followers}\n{}", diagnostics());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The agent in Swarm mode behind a read-only socket proxy (the tests' `DockerFaults`: 403 to
/// anything but GET and HEAD), as docs/docker-api.md says it works: with nginx as its child
/// nothing needs exec. It reads the labelled service, follows a scale through the events and the
/// task listings, `check` works through the proxy too, and not one request is refused. nginx on
/// the host cannot reach the overlay's addresses, so the config is what is checked (requests
/// through followers on a Swarm are the stack test's).
#[test]
fn behind_a_read_only_socket_the_agent_reads_swarm_services_and_follows_a_scale() {
    require_docker!();
    if !crate::support::swarm::require_root() {
        return;
    }
    let app = app_image();
    let engine = SwarmEngine::start(&[&app]);
    engine.docker(&["network", "create", "--driver", "overlay", "--attachable", "proxy"]);
    let socket = crate::support::docker_faults::DockerFaults::start_to(PathBuf::from(
        engine.host().trim_start_matches("unix://"),
    ));
    socket.read_only();
    let mut agent = Agent::local(Prefix::TEST, &[("INSIGHT", "false")]);
    agent.env.retain(|(k, _)| k != "DOCKER_HOST");
    agent.env.push(("DOCKER_HOST".into(), socket.host()));
    agent.launch();
    let servers = || {
        let conf = std::fs::read_to_string(agent.path("conf.d/default.conf")).unwrap_or_default();
        conf.lines().filter(|l| l.trim_start().starts_with("server ") && l.trim_end().ends_with(":8080;")).count()
    };
    let create = [
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "web",
        "--network",
        "proxy",
        "--label",
        "smart-proxy.domains=web.test",
        "--label",
        "smart-proxy.port=8080",
    ];
    let image = SwarmEngine::image(&app);
    engine.docker(&[&create[..], &[image.as_str()]].concat());
    agent.wait_for("the service's task in the config", Duration::from_secs(60), || servers() == 1);
    engine.docker(&["service", "scale", "--detach", "web=3"]);
    agent.wait_for("3 tasks in the config", Duration::from_secs(90), || servers() == 3);
    let check = agent.cli(&["check"]);
    let check_text = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check_text.contains("web: swarm tasks (default); 3 of 3 tasks running"), "{check_text}");

    let seen = socket.requests();
    for path in ["/info", "/events", "/services", "/tasks"] {
        assert!(seen.iter().any(|(_, p, _)| p.ends_with(path)), "no {path} among {seen:?}");
    }
    let refused: Vec<_> = seen.iter().filter(|(_, _, refused)| *refused).collect();
    assert!(refused.is_empty(), "the agent asked more than GET of the socket: {refused:?}");
    let log = agent.log();
    assert!(log.contains("Docker is a Swarm manager: reading the labelled services too (SWARM=auto)"), "{log}");
    assert!(!crate::support::docker_faults::mentions_refusal(&log), "{log}");
}

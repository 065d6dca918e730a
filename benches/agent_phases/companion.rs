//! The companion phase of benches/agent.rs (a module of it, using its helpers): the setup users
//! run beside nginx, measured the way they use it.
//!
//! nginx in its own container (the local nginx image of `scripts/local-images`) and the agent in
//! another (the local agent image around this bench's release binary), sharing a volume at
//! /etc/nginx/conf.d; the agent execs `nginx -t` and `nginx -s reload` through the Docker API.
//! nginx's port 80 is published on 127.0.0.1. Two start patterns, from `docker start` returning
//! to the first 200 with the app's body:
//! - isolated: one start, then quiet (1.5 s) before the next;
//! - paced: one start a second from another thread, not waiting for the routes (a
//!   `docker-compose up` of many services, a deploy script).
//!
//! Beside them, the floor in the same run: a second nginx container of the same image, a server
//! block written into its bind-mounted conf.d, one Docker exec `nginx -s reload`, first 200.

use super::*;

/// (NGINX_IMAGE, AGENT_IMAGE): `scripts/local-images --agent <this bench's binary>` through the
/// tests' `support::images`. The images are tagged by a hash of their content and kept, so the
/// next run reuses them.
fn companion_images() -> (String, String) {
    let images = support::images::local_images(Some(Path::new(AGENT_BIN)));
    (images.nginx, images.agent.expect("built with --agent"))
}

/// `docker exec <container> nginx -s reload` through the Docker API, as the agent does it.
fn api_reload(rt: &tokio::runtime::Runtime, container: &str) {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_defaults().unwrap().negotiate_version().await.unwrap();
        let cmd = ["nginx", "-s", "reload"].map(String::from).to_vec();
        let options = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd),
            ..Default::default()
        };
        let exec = docker.create_exec(container, options).await.unwrap();
        if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await.unwrap() {
            while output.next().await.is_some() {}
        }
    });
}

pub(super) fn phase_companion(cfg: &Cfg, d: &BenchDocker, net: &str, res: &mut Results) {
    progress("companion: building the local nginx and agent images (kept for the next run)");
    let (nginx_image, agent_image) = companion_images();
    let owner = d.owner_args();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["run", "-d"];
        all.extend(owner.iter().map(String::as_str));
        all.extend(args);
        docker(&all)
    };
    let volume = d.name("conf");
    let mut create_volume: Vec<&str> = vec!["volume", "create"];
    create_volume.extend(owner.iter().map(String::as_str));
    create_volume.push(&volume);
    docker(&create_volume);

    let prefix = d.prefix("c");
    let (nginx, agent) = (d.name("cnginx"), d.name("cagent"));
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let conf = format!("{volume}:/etc/nginx/conf.d");
    run(&["--name", &nginx, "--network", net, "-p", &publish, "-v", &conf, &nginx_image]);
    let (label_prefix, nginx_container) = (format!("LABEL_PREFIX={prefix}"), format!("NGINX_CONTAINER={nginx}"));
    run(&[
        "--name",
        &agent,
        "--network",
        net,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &conf,
        "-e",
        "LOCAL=true",
        "-e",
        &label_prefix,
        "-e",
        &nginx_container,
        &agent_image,
    ]);
    let warm = d.create("cwarm", Some((&prefix, "cwarm.test")), net);
    d.start(&warm);
    if poll_until(Duration::from_secs(60), cfg.poll, || ok_with(port, "cwarm.test", "cwarm")).is_none() {
        let logs = docker_output(&["logs", &agent]);
        panic!("companion: cwarm.test never answered; agent log:\n{}", String::from_utf8_lossy(&logs.stderr));
    }

    // The floor: the same image, a bind-mounted conf.d written from here, one exec reload.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let floor_dir = tempfile::tempdir().unwrap();
    let floor_conf = format!("{}:/etc/nginx/conf.d", floor_dir.path().display());
    let (floor, floor_port) = (d.name("cfloor"), free_port());
    let floor_publish = format!("127.0.0.1:{floor_port}:80");
    run(&["--name", &floor, "--network", net, "-p", &floor_publish, "-v", &floor_conf, &nginx_image]);
    let ip = d.ip(&warm);
    let block = |host: &str| {
        format!(
            "server {{\n    listen 80;\n    server_name {host};\n    location / {{\n        proxy_pass http://{ip}:{APP_PORT};\n    }}\n}}\n"
        )
    };
    let site = floor_dir.path().join("site.conf");
    let mut floor_ms = Vec::new();
    for i in 0..=cfg.floor_n {
        let host = format!("cfloor{i}.test");
        let t0 = Instant::now();
        write_file(&site, &block(&host));
        api_reload(&rt, &floor);
        let t200 = poll_until(Duration::from_secs(10), cfg.poll, || ok_with(floor_port, &host, "cwarm"))
            .unwrap_or_else(|| panic!("the floor nginx never answered {host}"));
        if i > 0 {
            floor_ms.push(ms(t200 - t0));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Isolated starts.
    let n = cfg.reaction_n;
    let isolated: Vec<String> =
        (0..n).map(|i| d.create(&format!("ci{i}"), Some((&prefix, &format!("ci{i}.test"))), net)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let load_before = loadavg();
    progress(format!("companion: {n} isolated starts (load {load_before})"));
    let mut iso = Vec::new();
    for (i, name) in isolated.iter().enumerate() {
        let (host, body) = (format!("ci{i}.test"), format!("ci{i}"));
        d.start(name);
        let t_ret = Instant::now();
        let t200 = poll_until(Duration::from_secs(30), cfg.poll, || ok_with(port, &host, &body))
            .unwrap_or_else(|| panic!("companion: {host} never answered"));
        iso.push(ms(t200 - t_ret));
        std::thread::sleep(Duration::from_millis(1500));
    }

    // One start a second.
    let m = cfg.paced_n;
    let paced: Vec<String> =
        (0..m).map(|i| d.create(&format!("cp{i}"), Some((&prefix, &format!("cp{i}.test"))), net)).collect();
    std::thread::sleep(Duration::from_millis(1500));
    progress(format!("companion: {m} starts, one a second (load {})", loadavg()));
    let returned: Mutex<Vec<Option<Instant>>> = Mutex::new(vec![None; m]);
    let served: Vec<Option<Instant>> = std::thread::scope(|s| {
        let returned = &returned;
        let paced = &paced;
        s.spawn(move || {
            let t0 = Instant::now();
            for (i, name) in paced.iter().enumerate() {
                let at = t0 + Duration::from_secs(i as u64);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                d.start(name);
                returned.lock().unwrap()[i] = Some(Instant::now());
            }
        });
        let pollers: Vec<_> = (0..m)
            .map(|i| {
                s.spawn(move || {
                    let (host, body) = (format!("cp{i}.test"), format!("cp{i}"));
                    // Poll only once the start returned (before that nothing can answer).
                    poll_until(Duration::from_secs(m as u64 + 60), cfg.poll, || {
                        returned.lock().unwrap()[i].is_some() && ok_with(port, &host, &body)
                    })
                })
            })
            .collect();
        pollers.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let returned = returned.into_inner().unwrap();
    let paced_ms: Vec<f64> = served
        .iter()
        .zip(&returned)
        .map(|(t200, t_ret)| match (t200, t_ret) {
            (Some(t200), Some(t_ret)) => ms(t200.saturating_duration_since(*t_ret)),
            _ => f64::INFINITY,
        })
        .collect();
    let logs = docker_output(&["logs", &agent]);
    let log = String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    let reloads = log.lines().filter(|l| l.contains("config applied and nginx reloaded")).count();

    res.say(format!(
        "\n== Companion setup (agent and nginx in containers, exec through the Docker API), from `docker start` returning → first 200 (load before {load_before}, after {})",
        loadavg()
    ));
    res.say(format!("   floor (write + one exec nginx -s reload → 200): {}", dist(&floor_ms)));
    res.say(format!("   isolated starts (n={n}):                       {}", dist(&iso)));
    res.say(format!("   one start a second (n={m}):                    {}", dist(&paced_ms)));
    res.say(format!("   agent reloads in all: {reloads}"));
    let (iso_s, paced_s, floor_s) = (sorted(iso), sorted(paced_ms), sorted(floor_ms));
    let (p50, p99) = (pct(&iso_s, 50.0), pct(&iso_s, 99.0));
    let floor50 = pct(&floor_s, 50.0);
    res.target(
        "companion, isolated starts: p50 ≤ 150 ms",
        p50 <= 150.0,
        format!("{p50:.0} ms (floor p50 {floor50:.0} ms, ratio {:.2})", p50 / floor50),
    );
    res.target("companion, isolated starts: p99 ≤ 400 ms", p99 <= 400.0, format!("{p99:.0} ms"));
    let paced99 = pct(&paced_s, 99.0);
    res.target("companion, one start a second: p99 ≤ 1 s", paced99 <= 1000.0, format!("{paced99:.0} ms"));

    // --volumes: the agent image's VOLUMEs it got no mount for are anonymous volumes.
    for name in [&agent, &nginx, &floor] {
        let _ = docker_output(&["rm", "--force", "--volumes", name]);
    }
    let _ = docker_output(&["volume", "rm", &volume]);
}

//! The compose files in `compose/` run for real: docker-compose (v1) on the images
//! `scripts/local-images` builds from local files (the same the demo uses), passed in through the
//! files' image variables. Each test has its own project name (`-p`), label prefix
//! (`LABEL_PREFIX`), network name and loopback-only published ports, and tears its project down
//! (`down -v`) when it ends, also on failure. Requests go to 127.0.0.1 only; the production setup
//! is tested with every external endpoint (ACME directory, Cloudflare API) pointed at the agent
//! container's own loopback, and without DNS checks.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::compose::{text, Project};
use crate::support::docker::{docker_output, TestDocker};
use crate::support::images::local_images;

/// `curl -sk` of `https://<host>:<port>/` resolved to 127.0.0.1: (status, body); status 0 when
/// the handshake or the connection fails.
fn https_get(port: u16, host: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}", &format!("https://{host}:{port}/")])
        .output()
        .expect("run curl (Debian's curl; .ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn demo_serves_three_apps_and_a_stopped_one_fails_alone() {
    require_docker!();
    let docker = TestDocker::new();
    let project = Project::up(&docker, "demo", &[]);
    let port = project.port("nginx", 80);
    for app in ["app1", "app2", "api"] {
        project.wait_for_status(port, &format!("{app}.localhost"), 200, Some(app));
    }
    project.wait_for_status(port, "nobody.localhost", 503, None);

    // The README's `top`, in the agent's container (here without a terminal: `--once`), shows the
    // request just made.
    project.wait_for("`top --once` in the agent's container to show app1's request", Duration::from_secs(20), || {
        let out = project.compose(&["exec", "-T", "agent", "nginx-smart-proxy", "top", "--once"]);
        let table = text(&out);
        // DOMAIN REQ/S 2XX ...: app1's line with at least one 2xx in the last minute.
        let app1 = table.lines().find(|l| l.split_whitespace().next() == Some("app1.localhost"));
        out.status.success()
            && app1
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
    });

    let out = project.compose(&["stop", "--timeout", "5", "app2"]);
    assert!(out.status.success(), "docker-compose stop app2: {}", text(&out));
    project.wait_for_status(port, "app2.localhost", 502, None);
    project.assert_answers(port, "app1.localhost", 200, Some("app1"));
    project.assert_answers(port, "api.localhost", 200, Some("api"));

    let out = project.compose(&["start", "app2"]);
    assert!(out.status.success(), "docker-compose start app2: {}", text(&out));
    project.wait_for_status(port, "app2.localhost", 200, Some("app2"));

    // README, "Your apps join the proxy network": the snippet as its own compose project beside
    // the demo. The test runs the demo on its own network name and label prefix, so the snippet's
    // `smart-proxy` is swapped for them; that the demo's network is `smart-proxy` by default is
    // checked on the file itself.
    let snippet = readme_block("Your apps join the proxy network", "```yaml");
    assert!(snippet.contains("networks: [smart-proxy]") && snippet.contains("external: true"), "{snippet}");
    let config = project.compose_with(&[("PROXY_NETWORK", None)], &["config"]);
    assert!(
        text(&config).contains("networks:\n  web:\n    name: smart-proxy\n"),
        "the demo's network is not named smart-proxy by default:\n{}",
        text(&config)
    );
    let images = local_images(Some(Path::new(env!("CARGO_BIN_EXE_nginx-smart-proxy"))));
    let snippet = snippet
        .replace("smart-proxy.", &format!("{}.", docker.prefix()))
        .replace("smart-proxy", &docker.name("proxy"))
        .replace("image: my/shop", &format!("image: {}", images.app));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, format!("version: \"3.8\"\n{snippet}")).unwrap();
    let shop = Project::up_file(&docker, "shop", file, &images.compose_env(), &[]);
    for host in ["shop.example.com", "www.shop.example.com"] {
        shop.wait_for_status(port, host, 200, Some("app"));
    }
    project.assert_answers(port, "app1.localhost", 200, Some("app1"));
    drop(shop);
    project.wait_for_status(port, "shop.example.com", 503, None);
}

/// The first fenced block of kind `fence` (e.g. "```yaml") after the line containing `after`.
pub(crate) fn readme_block(after: &str, fence: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find(after).unwrap_or_else(|| panic!("README has no {after:?}"));
    let rest = &readme[start..];
    let open = rest.find(fence).unwrap_or_else(|| panic!("no {fence} block after {after:?}")) + fence.len();
    let body = &rest[open..];
    body[..body.find("\n```").expect("the block ends")].trim_start_matches('\n').to_string() + "\n"
}

#[test]
fn single_container_serves_a_labelled_app() {
    require_docker!();
    let docker = TestDocker::new();
    let project = Project::up(&docker, "single", &[("LOCAL", "true")]);
    let port = project.port("proxy", 80);
    docker.start(vec![docker.app("web").label("domains", "web.test").network(&docker.name("proxy"))]);
    project.wait_for_status(port, "web.test", 200, Some("web"));
    project.assert_answers(port, "nobody.test", 503, None);
    let log = project.logs();
    assert!(log.contains("local nginx"), "the agent runs nginx itself:\n{log}");

    // The image's HEALTHCHECK command answers from inside the container.
    let out = project.compose(&["exec", "-T", "proxy", "nginx-smart-proxy", "health"]);
    assert!(out.status.success(), "`nginx-smart-proxy health` in the container failed: {}", text(&out));

    // `docker stop` (SIGTERM, the image's STOPSIGNAL) stops nginx gracefully and the agent
    // exits 0.
    let container = project.container("proxy");
    let out = docker_output(&["stop", "--time", "10", &container]);
    assert!(out.status.success(), "docker stop {container}: {}", text(&out));
    let exit = docker_output(&["inspect", "--format", "{{.State.ExitCode}}", &container]);
    assert_eq!(String::from_utf8_lossy(&exit.stdout).trim(), "0", "exit code after docker stop\n{}", project.logs());
    assert!(project.logs().contains("shutting down"), "{}", project.logs());
}

#[test]
fn companion_production_setup_serves_https_and_keeps_the_token_secret() {
    require_docker!();
    let docker = TestDocker::new();
    let secret_dir = tempfile::tempdir().unwrap();
    let token = format!("sptestTOKEN{}x{}", docker.run_id(), std::process::id());
    let token_file = secret_dir.path().join("cloudflare_api_token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_file = token_file.display().to_string();
    // Production mode with certificates on, and nowhere to get them from: the ACME directory and
    // the Cloudflare API are the agent container's own loopback (nothing listens there), and no
    // DNS check runs. The token is read and used to configure DNS-01, and must appear in no log.
    let project = Project::up(
        &docker,
        "companion",
        &[
            ("ACME", "on"),
            ("ACME_EMAIL", "ops@example.com"),
            ("ACME_DIRECTORY", "https://127.0.0.1:9/directory"),
            ("CLOUDFLARE_API_BASE", "http://127.0.0.1:9/client/v4"),
            ("DNS_CHECK", "off"),
            ("CLOUDFLARE_TOKEN_SECRET", &token_file),
            // Everything the agent logs, its Docker client's requests and answers included.
            ("LOG_LEVEL", "debug"),
        ],
    );
    let http = project.port("nginx", 80);
    let https = project.port("nginx", 443);
    docker.start(vec![docker.app("shop").label("domains", "shop.example.test").network(&docker.name("proxy"))]);

    // HTTP redirects to HTTPS; HTTPS serves the app with the placeholder certificate.
    project.wait_for_status(http, "shop.example.test", 301, None);
    project.wait_for("shop.example.test over HTTPS", Duration::from_secs(30), || {
        https_get(https, "shop.example.test") == (200, "shop\n".to_string())
    });
    let log = project.logs();
    assert!(log.contains(&format!("nginx container {}", project.container("nginx"))), "companion mode:\n{log}");
    assert!(log.contains("challenge=DNS-01"), "DNS-01 through the token:\n{log}");

    // The order fails (nothing answers), is logged and backs off; the certificate stays.
    project.wait_for("the failed certificate order to be logged", Duration::from_secs(60), || {
        project.logs().contains("certificate order failed")
    });
    project.assert_answers(http, "shop.example.test", 301, None);
    assert!(
        !project.logs().contains("trusted root certificates"),
        "the image has the system's CA roots:\n{}",
        project.logs()
    );

    let log = project.logs();
    assert!(!log.contains(&token), "the Cloudflare token appears in the logs:\n{log}");
    let inspect = docker_output(&["inspect", &project.container("agent")]);
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(&token), "the token is in the container's config");
    let secret = docker_output(&["exec", &project.container("agent"), "cat", "/run/secrets/cloudflare_api_token"]);
    assert_eq!(String::from_utf8_lossy(&secret.stdout).trim(), token, "the secret is mounted in the agent");
}

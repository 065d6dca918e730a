//! Docker images for the companion and compose tests, built locally by `scripts/local-images`
//! (the one definition, also used by the demo): no container registry is reachable here, so
//! nothing is pulled. The script assembles root filesystems from the host's own files (Debian's
//! nginx with the libraries `ldd` lists, static busybox, a minimal `/etc`) in the layout of the
//! official nginx image and the Dockerfile, and imports them with `docker import`; tags are
//! content hashes, so an unchanged image is not imported again. See the script's header for the
//! layout and the few differences from the Dockerfile's image.
//!
//! Images built here are named `smart-proxy-test-*` (`IMAGE_PREFIX`). The script keeps one image
//! per repository: importing a new tag removes the older ones no container uses (those imported
//! in the last 15 minutes stay, for a concurrent run), so a test run leaves one nginx, one app and
//! one agent image behind, reused by the next run when their content is unchanged:
//! `docker images 'smart-proxy-test-*'` lists them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The image prefix the tests use (`<prefix>-nginx`, `<prefix>-agent`, `<prefix>-demo-app`).
pub const IMAGE_PREFIX: &str = "smart-proxy-test";
/// Where the agent binary is in the agent image (as in the Dockerfile).
pub const AGENT_BIN: &str = "/usr/local/bin/nginx-smart-proxy";
/// The body of the default server of [`nginx_image`] (port 80, any host name).
pub const DEFAULT_PAGE: &str = "nginx test image\n";

/// The images of one run of the script.
#[derive(Debug, Clone)]
pub struct LocalImages {
    /// Debian's nginx running `nginx -g 'daemon off;'`, with busybox (`sh` and the usual tools),
    /// answering [`DEFAULT_PAGE`] until `/etc/nginx/conf.d/default.conf` is replaced.
    pub nginx: String,
    /// Static busybox serving `$APP_NAME` on port 8080 (the demo apps' image).
    pub app: String,
    /// The nginx image plus the agent at [`AGENT_BIN`], `ENTRYPOINT [AGENT_BIN]`, `CMD ["run"]`.
    pub agent: Option<String>,
}

impl LocalImages {
    /// The variables the compose files take their images from.
    pub fn compose_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("NGINX_IMAGE", self.nginx.clone()), ("APP_IMAGE", self.app.clone())];
        if let Some(agent) = &self.agent {
            env.push(("AGENT_IMAGE", agent.clone()));
        }
        env
    }
}

/// Runs `scripts/local-images [--agent <binary>]` once per binary per test process (parallel
/// tests wait for one run).
pub fn local_images(agent_binary: Option<&Path>) -> LocalImages {
    static RUNS: OnceLock<Mutex<HashMap<Option<PathBuf>, LocalImages>>> = OnceLock::new();
    let mut runs = RUNS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let key = agent_binary.map(Path::to_path_buf);
    if let Some(images) = runs.get(&key) {
        return images.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/local-images");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).env("IMAGE_PREFIX", IMAGE_PREFIX).env("NGINX_BIN", super::nginx_bin());
    if let Ok(busybox) = std::env::var("TEST_BUSYBOX_BIN") {
        cmd.env("BUSYBOX_BIN", busybox);
    }
    if let Some(binary) = agent_binary {
        assert!(binary.is_file(), "agent binary {} not found (build it first)", binary.display());
        cmd.arg("--agent").arg(binary);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}{stdout}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let vars: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |name: &str| vars.get(name).map(|v| v.to_string());
    let images = LocalImages {
        nginx: get("NGINX_IMAGE").unwrap_or_else(|| panic!("no NGINX_IMAGE line from the script:\n{stdout}")),
        app: get("APP_IMAGE").unwrap_or_else(|| panic!("no APP_IMAGE line from the script:\n{stdout}")),
        agent: get("AGENT_IMAGE"),
    };
    assert_eq!(images.agent.is_some(), agent_binary.is_some(), "AGENT_IMAGE line:\n{stdout}");
    runs.insert(key, images.clone());
    images
}

/// The nginx image's tag, `smart-proxy-test-nginx:<hash>`. `docker exec <c> nginx -t`,
/// `nginx -s reload` and the agent's test script work in it.
pub fn nginx_image() -> String {
    local_images(None).nginx
}

/// The agent image's tag for `agent_binary`, `smart-proxy-test-agent:<hash>`: give the agent's
/// arguments as the container's command (default `run`).
pub fn agent_image(agent_binary: &Path) -> String {
    local_images(Some(agent_binary)).agent.expect("built with --agent")
}

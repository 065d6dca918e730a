//! Followers: nginx on other nodes, kept on the agent's config without a Docker socket.
//!
//! The agent publishes a bundle after each apply (`server.rs`: the revision, the follower
//! endpoint on `FOLLOW_ADDR`); `nginx-smart-proxy follow` (`client.rs`) long-polls it, checks
//! its signature, writes its files, tests the config with `nginx -t`, swaps it and reloads
//! (through `apply::Applier`, as the agent does), and keeps the last good bundle on disk.
//! `bundle.rs` is what a bundle holds and where its files go; `seal.rs` the shared key. See
//! docs/followers.md.

pub mod bundle;
pub mod client;
pub mod seal;
pub mod server;

use std::net::SocketAddr;
use std::path::Path;

pub use seal::FollowerKey;

/// The follower settings, validated (`Config::follow`): present when `FOLLOWER_KEY_FILE` is set.
#[derive(Debug, Clone)]
pub struct FollowSetup {
    pub key: FollowerKey,
    /// `FOLLOW_ADDR`: where the agent serves bundles.
    pub addr: SocketAddr,
    /// `FOLLOW_URL`: the agent, for `follow`.
    pub url: Option<reqwest::Url>,
    /// `NODE_NAME`: this node's name, for `follow`.
    pub node: String,
}

impl FollowSetup {
    /// Reads the key and checks the other settings; each error names its setting.
    pub fn new(
        key_file: &Path,
        addr: SocketAddr,
        url: Option<&str>,
        node: Option<&str>,
    ) -> Result<FollowSetup, String> {
        let key = FollowerKey::read(key_file).map_err(|e| e.to_string())?;
        let url = url
            .map(|u| {
                let parsed = reqwest::Url::parse(u.trim())
                    .map_err(|e| format!("FOLLOW_URL {u:?} is not a URL ({e}); e.g. http://agent:9181"))?;
                if parsed.scheme() != "http" || parsed.host_str().is_none() {
                    return Err(format!(
                        "FOLLOW_URL {u:?}: must be http://host:port (bundles are sealed and signed; put a tunnel or TLS proxy in front for more)"
                    ));
                }
                Ok(parsed)
            })
            .transpose()?;
        let node = match node.map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => hostname(),
        };
        check_node_name(&node).map_err(|e| format!("NODE_NAME: {e}"))?;
        Ok(FollowSetup { key, addr, url, node })
    }
}

/// A node name: 1 to 64 letters, digits, `.`, `_`, `-`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("node name {:?} must be 1 to 64 letters, digits, '.', '_' or '-'", one_line(name, 80)))
    }
}

/// This host's name (the default `NODE_NAME`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The first line of `text`, printable characters only, at most `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    text.lines().next().unwrap_or("").chars().filter(|c| !c.is_control()).take(max).collect()
}

//! The certificate store on disk, in one place. What nginx serves is certbot's layout, so existing
//! certbot certificates are used as they are:
//!
//! ```text
//! <CERTS_DIR>/live/<name>/fullchain.pem     the chain (0644)
//! <CERTS_DIR>/live/<name>/privkey.pem       its key (0600)
//! ```
//!
//! where `<name>` is the domain, or `_.example.com` for `*.example.com`. The agent's own files
//! live beside it under `<CERTS_DIR>/smart-proxy/`: `accounts/` (ACME account credentials, 0600),
//! `state/` (per-domain renewal state and backoff), `ari/` (cached renewal information),
//! `pending/` (the journal of an order in progress, 0600), `locks/` (one lock file per domain)
//! and, on a follower, `follow/bundle` (its last good bundle, sealed).
//! Pure path arithmetic: no IO here.

use std::path::{Path, PathBuf};

use crate::routes::DomainName;

/// The chain's file name in a domain's directory.
pub const FULLCHAIN: &str = "fullchain.pem";
/// The key's file name in a domain's directory.
pub const PRIVKEY: &str = "privkey.pem";
/// The directory of the domains' certificates, certbot's `live`.
const LIVE: &str = "live";

/// The paths of one certificate store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// `live/<name>`: the directory nginx reads the domain's chain and key from.
    pub fn live_dir(&self, domain: &DomainName) -> PathBuf {
        self.root.join(LIVE).join(domain.cert_name())
    }

    pub fn fullchain(&self, domain: &DomainName) -> PathBuf {
        self.live_dir(domain).join(FULLCHAIN)
    }

    pub fn privkey(&self, domain: &DomainName) -> PathBuf {
        self.live_dir(domain).join(PRIVKEY)
    }

    /// `smart-proxy/`: the agent's own files.
    pub fn own_dir(&self) -> PathBuf {
        self.root.join("smart-proxy")
    }

    /// `smart-proxy/accounts/`: one credentials file per ACME directory and contact email.
    pub fn accounts_dir(&self) -> PathBuf {
        self.own_dir().join("accounts")
    }

    /// `smart-proxy/state/<domain>.json`: renewal state and backoff.
    pub fn state_file(&self, domain: &DomainName) -> PathBuf {
        self.own_dir().join("state").join(format!("{}.json", domain.file_stem()))
    }

    /// `smart-proxy/ari/<domain>.json`: the CA's renewal information, cached.
    pub fn ari_file(&self, domain: &DomainName) -> PathBuf {
        self.own_dir().join("ari").join(format!("{}.json", domain.file_stem()))
    }

    /// `smart-proxy/pending/`: journals of orders in progress.
    pub fn pending_dir(&self) -> PathBuf {
        self.own_dir().join("pending")
    }

    /// `smart-proxy/follow/bundle`: a follower's last good bundle, sealed as received.
    pub fn follow_bundle(&self) -> PathBuf {
        self.own_dir().join("follow").join("bundle")
    }

    /// `smart-proxy/locks/<domain>.lock`: held while an order for the domain runs.
    pub fn lock_file(&self, domain: &DomainName) -> PathBuf {
        self.own_dir().join("locks").join(format!("{}.lock", domain.file_stem()))
    }
}

/// The journal of `domain`'s order in progress, in a pending directory ([`Layout::pending_dir`]).
pub fn journal_file(pending_dir: &Path, domain: &DomainName) -> PathBuf {
    pending_dir.join(format!("{}.json", domain.file_stem()))
}

/// `live/<name>` under a certificates directory given as text, for the rendered config.
pub fn live_dir_text(root: &str, domain: &DomainName) -> String {
    format!("{root}/{LIVE}/{}", domain.cert_name())
}

/// The `<name>` of a `.../live/<name>/...` path in nginx's output, if it names one.
pub fn name_in_live_path(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("/live/").map(move |(i, m)| {
        let rest = &text[i + m.len()..];
        &rest[..rest.find(['/', '"']).unwrap_or(rest.len())]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certbot_layout_and_own_files() {
        let layout = Layout::new("/etc/letsencrypt");
        let wild = DomainName::parse("*.example.com").unwrap();
        let plain = DomainName::parse("example.com").unwrap();
        assert_eq!(layout.fullchain(&wild), Path::new("/etc/letsencrypt/live/_.example.com/fullchain.pem"));
        assert_eq!(layout.privkey(&plain), Path::new("/etc/letsencrypt/live/example.com/privkey.pem"));
        assert_eq!(live_dir_text("/etc/letsencrypt", &wild), "/etc/letsencrypt/live/_.example.com");
        assert!(layout.state_file(&plain).starts_with("/etc/letsencrypt/smart-proxy/state"));
        assert!(layout.lock_file(&plain).starts_with("/etc/letsencrypt/smart-proxy/locks"));
        let out = "cannot load certificate \"/etc/letsencrypt/live/_.c.com/fullchain.pem\"";
        assert_eq!(name_in_live_path(out).collect::<Vec<_>>(), ["_.c.com"]);
    }
}

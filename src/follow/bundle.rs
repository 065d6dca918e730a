//! A bundle: what a follower needs to serve exactly what the agent serves. A revision (monotonic,
//! with a digest of its contents), the config rendered for the follower's own layout (ports,
//! paths, nginx version: [`Layout`]) without the insight file, and every file that config
//! references that the agent owns: certificates and keys (certbot's layout), htpasswd files,
//! error pages, and the pending HTTP-01 challenge tokens, so that a challenge reaching any
//! follower is answered.
//!
//! Files travel by name relative to a root the follower chooses (its `CERTS_DIR`, the htpasswd
//! directory beside its `NGINX_CONF`...), never as absolute paths: a name is checked against
//! what its kind allows ([`BundleFile::target`]) before anything is written.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apply::auth_files::AuthFiles;
use crate::certs::layout::{Layout as CertLayout, FULLCHAIN, PRIVKEY};
use crate::render::edge::{ErrorPages, ERROR_CODES};
use crate::render::{ConfigPath, NginxVersion, RenderSettings};
use crate::routes::RouteTable;

/// The directory of the error pages on a follower, beside its `NGINX_CONF`.
pub const PAGES_DIR: &str = "smart-proxy-error-pages";
/// Where HTTP-01 tokens live under the webroot.
pub const CHALLENGE_DIR: &str = ".well-known/acme-challenge";

/// A bundle as the follower receives it (and keeps the last good one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub revision: u64,
    /// SHA-256 of the revision's contents (the agent's config and the files), hex.
    pub digest: String,
    /// The nonce of the request this answers (a replayed answer is refused).
    pub nonce: String,
    pub config: String,
    pub files: Vec<BundleFile>,
}

/// What the agent serialises: the same fields, borrowed.
#[derive(Serialize)]
pub struct BundleRef<'a> {
    pub revision: u64,
    pub digest: &'a str,
    pub nonce: &'a str,
    pub config: &'a str,
    pub files: &'a [BundleFile],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// `live/<name>/fullchain.pem` or `privkey.pem` under `CERTS_DIR`.
    Cert,
    /// An htpasswd file in the directory beside `NGINX_CONF`.
    Auth,
    /// `<code>.html` in [`PAGES_DIR`] beside `NGINX_CONF`.
    Page,
    /// An HTTP-01 token under the webroot's [`CHALLENGE_DIR`].
    Challenge,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundleFile {
    pub kind: FileKind,
    pub name: String,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// Where a follower keeps each kind of file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    pub certs: PathBuf,
    pub auth: PathBuf,
    pub pages: PathBuf,
    pub webroot: PathBuf,
}

impl BundleFile {
    /// Where this file goes under `dirs`, and its mode (keys 0600); an error naming the file when
    /// its name is not one its kind allows (an absolute path, `..`, an unexpected character).
    pub fn target(&self, dirs: &Dirs) -> Result<(PathBuf, u32), String> {
        let bad = |allowed: &str| {
            format!("bundle file {:?} of kind {:?}: not a name this kind allows ({allowed})", self.name, self.kind)
        };
        let plain = |s: &str, extra: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.len() <= 255
                && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        };
        match self.kind {
            FileKind::Cert => {
                let parts: Vec<&str> = self.name.split('/').collect();
                let ok = parts.len() == 3
                    && parts[0] == "live"
                    && plain(parts[1], "._-")
                    && !parts[1].contains("..")
                    && (parts[2] == FULLCHAIN || parts[2] == PRIVKEY);
                if !ok {
                    return Err(bad("live/<domain>/fullchain.pem or privkey.pem"));
                }
                let mode = if parts[2] == PRIVKEY { 0o600 } else { 0o644 };
                Ok((dirs.certs.join(&self.name), mode))
            }
            FileKind::Auth if plain(&self.name, "._-") => Ok((dirs.auth.join(&self.name), 0o640)),
            FileKind::Auth => Err(bad("letters, digits, . _ -")),
            FileKind::Page if ERROR_CODES.iter().any(|c| self.name == format!("{c}.html")) => {
                Ok((dirs.pages.join(&self.name), 0o644))
            }
            FileKind::Page => Err(bad("<code>.html for 404, 429, 502, 503, 504")),
            FileKind::Challenge if plain(&self.name, "_-") => {
                Ok((dirs.webroot.join(CHALLENGE_DIR).join(&self.name), 0o644))
            }
            FileKind::Challenge => Err(bad("an ACME token: letters, digits, _ -")),
        }
    }
}

/// The files a table's config references that the agent owns, read from disk now: each TLS
/// domain's chain and key (with `settings.local` there are none), the htpasswd files, the error
/// pages, and the HTTP-01 tokens under the webroot. Sorted, so equal contents digest equally.
pub fn collect(table: &RouteTable, settings: &RenderSettings) -> Vec<BundleFile> {
    let mut files = Vec::new();
    if !settings.local {
        let certs = CertLayout::new(settings.certs_dir.as_path());
        for domain in table.tls_domains() {
            for name in [FULLCHAIN, PRIVKEY] {
                if let Ok(data) = std::fs::read(certs.live_dir(&domain).join(name)) {
                    let name = format!("live/{}/{name}", domain.cert_name());
                    files.push(BundleFile { kind: FileKind::Cert, name, data });
                }
            }
        }
    }
    for (name, text) in AuthFiles::of(table).files {
        files.push(BundleFile { kind: FileKind::Auth, name, data: text.into_bytes() });
    }
    if let Some(dir) = &settings.error_pages.dir {
        for code in &settings.error_pages.files {
            let name = format!("{code}.html");
            if let Ok(data) = std::fs::read(dir.as_path().join(&name)) {
                files.push(BundleFile { kind: FileKind::Page, name, data });
            }
        }
    }
    files.extend(challenges(settings.acme_webroot.as_path()));
    files.sort();
    files.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
    files
}

/// The HTTP-01 tokens pending under `webroot`.
pub fn challenges(webroot: &Path) -> Vec<BundleFile> {
    let Ok(entries) = std::fs::read_dir(webroot.join(CHALLENGE_DIR)) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let token = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if token && entry.file_type().is_ok_and(|t| t.is_file()) {
            if let Ok(data) = std::fs::read(entry.path()) {
                out.push(BundleFile { kind: FileKind::Challenge, name, data });
            }
        }
    }
    out.sort();
    out
}

/// SHA-256 over a revision's contents: the agent's config and every file (kind, name, bytes).
pub fn digest(config: &str, files: &[BundleFile]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    part(config.as_bytes());
    for f in files {
        part(format!("{:?}", f.kind).as_bytes());
        part(f.name.as_bytes());
        part(&f.data);
    }
    super::seal::hex(ctx.finish().as_ref())
}

/// What a follower's nginx needs the config rendered for: its ports, paths and nginx version.
/// Sent with every poll; the agent renders the bundle's config for it (cached per layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub http_port: u16,
    pub https_port: u16,
    /// The follower's `NGINX_CONF`: the htpasswd files and error pages go beside it.
    pub conf: ConfigPath,
    pub certs: ConfigPath,
    pub webroot: ConfigPath,
    pub logs: ConfigPath,
    pub nginx_version: NginxVersion,
    pub ipv6: bool,
    pub resolver: Vec<IpAddr>,
}

impl Layout {
    /// A follower's layout from its validated render settings and `NGINX_CONF`.
    pub fn of(settings: &RenderSettings, conf: &Path) -> Result<Layout, crate::render::RenderError> {
        Ok(Layout {
            http_port: settings.http_port,
            https_port: settings.https_port,
            conf: ConfigPath::parse("NGINX_CONF", conf)?,
            certs: settings.certs_dir.clone(),
            webroot: settings.acme_webroot.clone(),
            logs: settings.log_dir.clone(),
            nginx_version: settings.nginx_version,
            ipv6: settings.ipv6,
            resolver: settings.resolver.clone(),
        })
    }

    /// A key naming it (for caches).
    pub fn key(&self) -> String {
        self.to_query().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
    }

    /// The query parameters that carry it.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let resolver: Vec<String> = self.resolver.iter().map(ToString::to_string).collect();
        vec![
            ("http", self.http_port.to_string()),
            ("https", self.https_port.to_string()),
            ("conf", self.conf.as_path().display().to_string()),
            ("certs", self.certs.as_path().display().to_string()),
            ("webroot", self.webroot.as_path().display().to_string()),
            ("logs", self.logs.as_path().display().to_string()),
            ("nginx", self.nginx_version.to_string()),
            ("ipv6", if self.ipv6 { "on" } else { "off" }.to_string()),
            ("resolver", resolver.join(",")),
        ]
    }

    /// Parses the query parameters of a poll; an error names the parameter and what is allowed.
    pub fn from_query(get: impl Fn(&str) -> Option<String>) -> Result<Layout, String> {
        let need = |name: &str| get(name).ok_or_else(|| format!("the parameter {name} is missing"));
        let port = |name: &str| -> Result<u16, String> {
            need(name)?.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("{name} must be a port, 1-65535"))
        };
        let path = |name: &'static str| -> Result<ConfigPath, String> {
            ConfigPath::parse(name, Path::new(&need(name)?)).map_err(|e| e.to_string())
        };
        let resolver = need("resolver")?;
        let resolver = resolver
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| format!("resolver: {:?} is not an IP address", s)))
            .collect::<Result<Vec<IpAddr>, String>>()?;
        Ok(Layout {
            http_port: port("http")?,
            https_port: port("https")?,
            conf: path("conf")?,
            certs: path("certs")?,
            webroot: path("webroot")?,
            logs: path("logs")?,
            nginx_version: NginxVersion::parse(&need("nginx")?).ok_or("nginx must be a version such as 1.27.0")?,
            ipv6: match need("ipv6")?.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err("ipv6 must be on or off".into()),
            },
            resolver,
        })
    }

    /// The agent's render settings with this follower's ports, paths and nginx version, and
    /// without the insight file (a follower's nginx has no agent beside it to send lines to).
    pub fn settings(&self, agent: &RenderSettings) -> Result<RenderSettings, crate::render::RenderError> {
        let conf = self.conf.as_path();
        let pages = conf.parent().unwrap_or(Path::new("/")).join(PAGES_DIR);
        Ok(RenderSettings {
            http_port: self.http_port,
            https_port: self.https_port,
            certs_dir: self.certs.clone(),
            acme_webroot: self.webroot.clone(),
            log_dir: self.logs.clone(),
            nginx_version: self.nginx_version,
            ipv6: self.ipv6,
            resolver: if self.resolver.is_empty() { agent.resolver.clone() } else { self.resolver.clone() },
            auth_dir: crate::render::auth_dir_for(conf)?,
            error_pages: match &agent.error_pages.dir {
                Some(_) => ErrorPages {
                    dir: Some(ConfigPath::parse("NGINX_CONF", &pages)?),
                    files: agent.error_pages.files.clone(),
                },
                None => ErrorPages::default(),
            },
            insight_log: None,
            insight_from_access_logs: false,
            // A follower's nginx may not have the Lua module the cache needs.
            auth_cache: None,
            ..agent.clone()
        })
    }

    /// Where this follower keeps the bundle's files.
    pub fn dirs(&self) -> Dirs {
        let conf_dir = self.conf.as_path().parent().unwrap_or(Path::new("/"));
        Dirs {
            certs: self.certs.as_path().to_path_buf(),
            auth: conf_dir.join(crate::render::AUTH_DIR),
            pages: conf_dir.join(PAGES_DIR),
            webroot: self.webroot.as_path().to_path_buf(),
        }
    }
}

/// Writes the bundle's files under `dirs` (only those whose bytes differ; keys 0600), checking
/// every name first, and removes the HTTP-01 tokens the bundle no longer holds. Returns the kind
/// of each file written. Nothing is written when a name is refused.
pub fn write_files(files: &[BundleFile], dirs: &Dirs) -> Result<Vec<FileKind>, String> {
    let targets = files.iter().map(|f| f.target(dirs)).collect::<Result<Vec<_>, String>>()?;
    let mut written = Vec::new();
    for (file, (path, mode)) in files.iter().zip(&targets) {
        if std::fs::read(path).is_ok_and(|have| have == file.data) {
            continue;
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            if file.kind == FileKind::Auth {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
            }
        }
        crate::fsutil::write_atomic(path, &file.data, *mode)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(file.kind);
    }
    let tokens: BTreeSet<&str> =
        files.iter().filter(|f| f.kind == FileKind::Challenge).map(|f| f.name.as_str()).collect();
    for stale in challenges(&dirs.webroot).into_iter().filter(|t| !tokens.contains(t.name.as_str())) {
        let _ = std::fs::remove_file(dirs.webroot.join(CHALLENGE_DIR).join(&stale.name));
    }
    Ok(written)
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn table(domains: &str) -> RouteTable {
        RouteTable::build(vec![crate::sources::env::parse(Some(domains), Some("app:127.0.0.1:8080"))])
    }

    fn settings(root: &Path, local: bool) -> RenderSettings {
        let p = |s: &str| ConfigPath::parse("TEST", &root.join(s)).unwrap();
        RenderSettings {
            local,
            http_port: 80,
            https_port: 443,
            certs_dir: p("certs"),
            acme_webroot: p("webroot"),
            log_dir: p("logs"),
            error_logs_max: 1000,
            auth_dir: p("conf/smart-proxy-htpasswd"),
            insight_log: Some(p("conf/smart-proxy-insight.log")),
            access_log_files: true,
            backend_ca: crate::render::ConfigPath::parse("BACKEND_CA", std::path::Path::new(crate::render::BACKEND_CA))
                .unwrap(),
            insight_from_access_logs: false,
            auth_cache: None,
            nginx_version: NginxVersion::ASSUMED,
            resolver: vec!["127.0.0.11".parse().unwrap()],
            ipv6: false,
            real_ip: None,
            error_pages: ErrorPages { dir: Some(p("pages")), files: vec![502, 503] },
        }
    }

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_file_set_is_the_certificates_pages_and_tokens_the_config_references() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(&root.join("certs/live/a.test/fullchain.pem"), "chain-a");
        put(&root.join("certs/live/a.test/privkey.pem"), "key-a");
        put(&root.join("certs/live/other.test/privkey.pem"), "not routed");
        put(&root.join("pages/502.html"), "<p>502</p>");
        put(&root.join("pages/503.html"), "<p>503</p>");
        put(&root.join("pages/504.html"), "not read at start: not in the settings");
        put(&root.join("webroot/.well-known/acme-challenge/tok_1-A"), "tok_1-A.auth");
        put(&root.join("webroot/.well-known/acme-challenge/.hidden"), "not a token");
        let t = table("a.test:app,b.test:app");
        let names = |files: &[BundleFile]| -> Vec<String> {
            files.iter().map(|f| format!("{:?} {}", f.kind, f.name)).collect()
        };
        let files = collect(&t, &settings(root, false));
        assert_eq!(
            names(&files),
            [
                "Cert live/a.test/fullchain.pem",
                "Cert live/a.test/privkey.pem",
                "Page 502.html",
                "Page 503.html",
                "Challenge tok_1-A"
            ]
        );
        assert_eq!(files[1].data, b"key-a");
        // HTTP only: no certificates.
        let local = collect(&t, &settings(root, true));
        assert_eq!(names(&local), ["Page 502.html", "Page 503.html", "Challenge tok_1-A"]);
        // The digest follows the contents.
        let d = digest("config", &files);
        assert_eq!(d, digest("config", &collect(&t, &settings(root, false))));
        assert_ne!(d, digest("config2", &files));
        put(&root.join("certs/live/a.test/privkey.pem"), "key-a renewed");
        assert_ne!(d, digest("config", &collect(&t, &settings(root, false))));
    }

    #[test]
    fn names_are_checked_before_anything_is_written_and_keys_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            certs: dir.path().join("certs"),
            auth: dir.path().join("auth"),
            pages: dir.path().join("pages"),
            webroot: dir.path().join("webroot"),
        };
        let file = |kind, name: &str| BundleFile { kind, name: name.into(), data: name.as_bytes().to_vec() };
        for (kind, name) in [
            (FileKind::Cert, "live/../../etc/passwd"),
            (FileKind::Cert, "/etc/passwd"),
            (FileKind::Cert, "live/a.test/other.pem"),
            (FileKind::Cert, "live/../privkey.pem"),
            (FileKind::Cert, "live/a.test/x/privkey.pem"),
            (FileKind::Auth, "../users-x"),
            (FileKind::Auth, ".hidden"),
            (FileKind::Page, "500.html"),
            (FileKind::Page, "../502.html"),
            (FileKind::Challenge, "tok/../x"),
            (FileKind::Challenge, ""),
        ] {
            let good = file(FileKind::Challenge, "fine");
            let e = write_files(&[good, file(kind, name)], &dirs).unwrap_err();
            assert!(e.contains(&format!("{name:?}")), "{e}");
            assert!(!dirs.webroot.exists(), "nothing written for {name}");
        }
        let files = vec![
            file(FileKind::Cert, "live/_.a.test/fullchain.pem"),
            file(FileKind::Cert, "live/_.a.test/privkey.pem"),
            file(FileKind::Auth, "users-0123abcd"),
            file(FileKind::Page, "502.html"),
            file(FileKind::Challenge, "tok-1"),
        ];
        put(&dirs.webroot.join(CHALLENGE_DIR).join("stale"), "old");
        assert_eq!(
            write_files(&files, &dirs),
            Ok(vec![FileKind::Cert, FileKind::Cert, FileKind::Auth, FileKind::Page, FileKind::Challenge])
        );
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dirs.certs.join("live/_.a.test/privkey.pem")), 0o600);
        assert_eq!(mode(dirs.certs.join("live/_.a.test/fullchain.pem")), 0o644);
        assert_eq!(mode(dirs.auth.join("users-0123abcd")), 0o640);
        assert_eq!(std::fs::read(dirs.pages.join("502.html")).unwrap(), b"502.html");
        assert!(dirs.webroot.join(CHALLENGE_DIR).join("tok-1").exists());
        assert!(!dirs.webroot.join(CHALLENGE_DIR).join("stale").exists(), "tokens the bundle no longer holds go");
        // The same files again: nothing written.
        assert_eq!(write_files(&files, &dirs), Ok(vec![]));
    }

    #[test]
    fn a_layout_travels_as_a_query_and_renders_without_the_insight_log() {
        let dir = tempfile::tempdir().unwrap();
        let agent = settings(dir.path(), false);
        let follower_root = Path::new("/srv/f");
        let mut mine = settings(follower_root, false);
        mine.http_port = 8080;
        mine.https_port = 8443;
        mine.nginx_version = NginxVersion(1, 22, 1);
        let layout = Layout::of(&mine, &follower_root.join("conf/default.conf")).unwrap();
        let query: std::collections::BTreeMap<&str, String> = layout.to_query().into_iter().collect();
        let back = Layout::from_query(|k| query.get(k).cloned()).unwrap();
        assert_eq!(back, layout);
        let rendered = back.settings(&agent).unwrap();
        assert_eq!((rendered.http_port, rendered.https_port), (8080, 8443));
        assert_eq!(rendered.insight_log, None);
        assert_eq!(rendered.certs_dir.as_path(), Path::new("/srv/f/certs"));
        assert_eq!(rendered.auth_dir.as_path(), Path::new("/srv/f/conf/smart-proxy-htpasswd"));
        assert_eq!(
            rendered.error_pages.dir.as_ref().unwrap().as_path(),
            Path::new("/srv/f/conf/smart-proxy-error-pages")
        );
        assert_eq!(rendered.error_pages.files, vec![502, 503]);
        assert_eq!(rendered.nginx_version, NginxVersion(1, 22, 1));
        assert_eq!(back.dirs().pages, PathBuf::from("/srv/f/conf/smart-proxy-error-pages"));
        // A path that could carry a directive is refused, naming the parameter.
        let mut bad = query.clone();
        bad.insert("certs", "/etc/x;include /evil".into());
        let e = Layout::from_query(|k| bad.get(k).cloned()).unwrap_err();
        assert!(e.contains("certs") && e.contains("';'"), "{e}");
        let mut bad = query.clone();
        bad.insert("http", "0".into());
        assert!(Layout::from_query(|k| bad.get(k).cloned()).unwrap_err().contains("http must be a port"));
        let mut bad = query;
        bad.remove("conf");
        assert_eq!(Layout::from_query(|k| bad.get(k).cloned()).unwrap_err(), "the parameter conf is missing");
    }
}

//! Who may reach a location, and how often: `auth` (basic with htpasswd hashes, or forward to an
//! auth service) and `rate` (a request rate per client). Like `policy.rs`, each value can only be
//! built by its parser; the keys of one policy are combined by [`AuthKeys::build`] and
//! [`RateKeys::build`], whose errors name the key at fault. Password hashes are never shown:
//! [`Users`] prints user names only.

use std::fmt;

use serde::{Serialize, Serializer};
use thiserror::Error;

use super::grammar::{show, Host, PathPrefix, Port};
use super::policy::HeaderName;

/// What each value allows, in words (error messages, the label schema, the JSON Schema).
pub mod allowed {
    pub const AUTH: &str = "basic, forward or off";
    pub const USERS: &str =
        "htpasswd lines user:hash, separated by commas or line breaks (a user name of letters, digits and . _ @ + -; \
         a hash nginx verifies: bcrypt $2y$/$2b$/$2a$ from htpasswd -nbB, apr1 $apr1$ from openssl passwd -apr1, \
         SHA-crypt $5$/$6$ from openssl passwd -6, MD5-crypt $1$, or {SHA} from htpasswd -nbs); never a clear password";
    pub const USERS_FILE: &str = "an absolute path (letters, digits and / . _ - + @) of an htpasswd file of user:hash lines, readable by the agent";
    pub const URL: &str = "an http:// or https:// URL (a host name or IP address, an optional port, then any printable ASCII but spaces and '#'), at most 2048 characters";
    pub const HEADER_NAMES: &str = "a comma list of header names (letters, digits and '-'), not ones the proxy sets";
    pub const BYPASS: &str = "a comma list of paths inside the route's path (letters, digits and / . _ ~ -)";
    pub const RATE: &str = "a number of requests per second or per minute, 1 to 1000000: 10r/s, 600r/m; or off";
    pub const BURST: &str = "a whole number of requests from 0 to 100000";
    pub const RATE_KEY: &str =
        "ip, or header:<Name> (the value of a request header; requests without it count by address)";
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccessError {
    #[error("auth {value:?} is not allowed; must be {}", allowed::AUTH)]
    Auth { value: String },
    /// Never holds the text of the entry: it may be a password.
    #[error("{entry}: {reason}; {HASH_IT}")]
    Users { entry: String, reason: String },
    #[error("users-file {value:?} is not allowed: {reason}; must be {}", allowed::USERS_FILE)]
    UsersFile { value: String, reason: String },
    #[error("URL {value:?} is not allowed: {reason}; must be {}", allowed::URL)]
    Url { value: String, reason: String },
    #[error("{0}")]
    Header(String),
    #[error("{0}")]
    Bypass(String),
    #[error("rate {value:?} is not allowed; must be {}", allowed::RATE)]
    Rate { value: String },
    #[error("burst {value:?} is not allowed; must be {}", allowed::BURST)]
    Burst { value: String },
    #[error("rate key {value:?} is not allowed: {reason}; must be {}", allowed::RATE_KEY)]
    RateKey { value: String, reason: String },
}

/// How to make a hash: the end of every `auth.users` error.
const HASH_IT: &str =
    "write user:hash with a hash of the password, e.g. from `htpasswd -nbB user 'password'` (bcrypt) \
     or `openssl passwd -apr1` (apr1)";

/// The `auth` key: which check guards the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Basic,
    Forward,
    /// Explicitly none: the other `auth.*` keys (inherited, say) are ignored.
    Off,
}

impl AuthMode {
    pub fn parse(input: &str) -> Result<AuthMode, AccessError> {
        match input.trim().to_ascii_lowercase().as_str() {
            "basic" => Ok(AuthMode::Basic),
            "forward" => Ok(AuthMode::Forward),
            "off" | "none" => Ok(AuthMode::Off),
            _ => Err(AccessError::Auth { value: show(input.trim()) }),
        }
    }
}

/// One htpasswd line: a user name and a password hash nginx verifies. Its `Debug` hides the hash.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HtpasswdLine {
    user: String,
    hash: String,
}

impl fmt::Debug for HtpasswdLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HtpasswdLine").field("user", &self.user).field("hash", &"[redacted]").finish()
    }
}

impl HtpasswdLine {
    /// Parses `user:hash`; `entry` says where it is (`entry 2`, `line 7`) in errors, which never
    /// echo the text after the user name.
    pub fn parse(text: &str, entry: &str) -> Result<HtpasswdLine, AccessError> {
        let fail = |reason: String| AccessError::Users { entry: entry.to_string(), reason };
        let Some((user, hash)) = text.split_once(':') else {
            return Err(fail("it is not user:hash (no ':')".into()));
        };
        if user.is_empty() || user.len() > 64 {
            return Err(fail("the user name must be 1 to 64 characters long".into()));
        }
        if let Some(c) = user.chars().find(|c| !(c.is_ascii_alphanumeric() || "._@+-".contains(*c))) {
            return Err(fail(format!("the user name has the character {c:?} (letters, digits and . _ @ + - only)")));
        }
        let for_user = |reason: &str| fail(format!("the password of user {user:?} {reason}"));
        match hash_scheme(hash) {
            Ok(()) => Ok(HtpasswdLine { user: user.to_string(), hash: hash.to_string() }),
            Err(Unverified::Clear) => Err(for_user("is not a hash nginx verifies (a clear password?)")),
            Err(Unverified::Plain) => Err(for_user("is a clear password ({PLAIN})")),
            Err(Unverified::Scheme(scheme)) => Err(for_user(&format!(
                "uses {scheme}, which not every nginx verifies (those on musl, such as nginx:alpine, do not)"
            ))),
            Err(Unverified::Des) => Err(for_user("is a DES crypt hash (it uses only 8 characters of a password)")),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }
}

/// Why a hash is refused.
enum Unverified {
    Clear,
    Plain,
    Scheme(&'static str),
    Des,
}

/// `hash` is one of the hashes every nginx verifies: its own apr1 and {SHA}, and the crypt(3)
/// schemes glibc (libxcrypt) and musl both have: bcrypt, SHA-crypt, MD5-crypt.
fn hash_scheme(hash: &str) -> Result<(), Unverified> {
    let crypt64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    // `$id$[rounds=N$]salt$digest` with a salt of 1..=max_salt and a digest of `digest` chars.
    let salted = |rest: &str, max_salt: usize, digest: usize, rounds: bool| -> bool {
        let rest = match rest.strip_prefix("rounds=").filter(|_| rounds) {
            Some(r) => match r.split_once('$') {
                Some((n, rest)) if !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()) => rest,
                _ => return false,
            },
            None => rest,
        };
        matches!(rest.split_once('$'), Some((salt, d))
            if (1..=max_salt).contains(&salt.len()) && crypt64(salt) && d.len() == digest && crypt64(d))
    };
    let ok = if let Some(rest) = hash.strip_prefix("$apr1$").or_else(|| hash.strip_prefix("$1$")) {
        salted(rest, 8, 22, false)
    } else if let Some(rest) = hash.strip_prefix("$5$") {
        salted(rest, 16, 43, true)
    } else if let Some(rest) = hash.strip_prefix("$6$") {
        salted(rest, 16, 86, true)
    } else if let Some(rest) = ["$2y$", "$2b$", "$2a$"].iter().find_map(|p| hash.strip_prefix(p)) {
        matches!(rest.split_once('$'), Some((cost, d))
            if cost.len() == 2 && cost.parse::<u8>().is_ok_and(|c| (4..=31).contains(&c)) && d.len() == 53 && crypt64(d))
    } else if let Some(digest) = hash.strip_prefix("{SHA}") {
        digest.len() == 28
            && digest.ends_with('=')
            && digest[..27].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    } else if hash.starts_with("{PLAIN}") {
        return Err(Unverified::Plain);
    } else if hash.starts_with("$y$") || hash.starts_with("$gy$") {
        return Err(Unverified::Scheme("yescrypt"));
    } else if hash.starts_with("$7$") {
        return Err(Unverified::Scheme("scrypt"));
    } else if hash.starts_with("$argon2") {
        return Err(Unverified::Scheme("argon2"));
    } else if hash.len() == 13 && crypt64(hash) {
        return Err(Unverified::Des);
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(Unverified::Clear)
    }
}

/// `auth.users`: one or more htpasswd lines, user names unique. Shown as its user names only.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Users(Vec<HtpasswdLine>);

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl Users {
    /// A comma list of `user:hash` (bcrypt, crypt and base64 hashes hold no comma); line breaks
    /// separate entries too (a YAML block of lines).
    pub fn parse(input: &str) -> Result<Users, AccessError> {
        let entries = input.split([',', '\n']).map(str::trim).filter(|s| !s.is_empty());
        Users::from_entries(entries.map(|s| (s, "entry")))
    }

    /// Entries as given (`(text, "entry")` numbered from 1, or a file's `(text, "line")` with
    /// their own numbers through [`Users::from_lines`]).
    fn from_entries<'a>(entries: impl Iterator<Item = (&'a str, &'static str)>) -> Result<Users, AccessError> {
        let numbered = entries.enumerate().map(|(i, (text, word))| (text, format!("{word} {}", i + 1)));
        Users::collect(numbered)
    }

    /// The lines of an htpasswd file: blank lines and `#` comments skipped, errors by line number.
    pub fn from_file_text(text: &str) -> Result<Users, AccessError> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (l.trim(), format!("line {}", i + 1)))
            .filter(|(l, _)| !l.is_empty() && !l.starts_with('#'));
        Users::collect(lines)
    }

    /// Entries of a JSON array, numbered from 1.
    pub fn from_list<'a>(items: impl Iterator<Item = &'a str>) -> Result<Users, AccessError> {
        Users::from_entries(items.map(|s| (s.trim(), "entry")))
    }

    fn collect<'a>(entries: impl Iterator<Item = (&'a str, String)>) -> Result<Users, AccessError> {
        let mut lines: Vec<HtpasswdLine> = Vec::new();
        for (text, entry) in entries {
            let line = HtpasswdLine::parse(text, &entry)?;
            if lines.iter().any(|l| l.user == line.user) {
                return Err(AccessError::Users { entry, reason: format!("user {:?} is listed twice", line.user) });
            }
            lines.push(line);
        }
        if lines.is_empty() {
            return Err(AccessError::Users { entry: "the list".into(), reason: "it is empty".into() });
        }
        Ok(Users(lines))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|l| l.user.as_str())
    }

    /// The htpasswd file nginx reads: one `user:hash` line each.
    pub fn file_text(&self) -> String {
        self.0.iter().map(|l| format!("{}:{}\n", l.user, l.hash)).collect()
    }
}

/// `auth.users-file`: an htpasswd file the agent reads, checks and copies for nginx.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UsersFile(String);

impl UsersFile {
    pub fn parse(input: &str) -> Result<UsersFile, AccessError> {
        let text = input.trim();
        let bad = |reason: &str| AccessError::UsersFile { value: show(text), reason: reason.to_string() };
        if !text.starts_with('/') {
            return Err(bad("it is not an absolute path"));
        }
        if text.len() > 1024 {
            return Err(bad("it is longer than 1024 characters"));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._-+@".contains(*c))) {
            return Err(bad(&format!("it contains the character {c:?}")));
        }
        if text.ends_with('/') || text.split('/').any(|s| s == "." || s == "..") {
            return Err(bad("it must name a file, without '.' or '..' segments"));
        }
        Ok(UsersFile(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a basic-auth route's users come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BasicUsers {
    Inline(Users),
    File(UsersFile),
}

impl BasicUsers {
    /// The name of the htpasswd file nginx reads, in the agent's htpasswd directory: named by a
    /// digest of the lines (listed users), so a changed list is a new file and a config always
    /// reads the lines it was rendered with; or of the path (a users-file, copied there on each
    /// apply). Lowercase hex: safe in a config.
    pub fn file_name(&self) -> String {
        let (kind, text) = match self {
            BasicUsers::Inline(users) => ("users", users.file_text()),
            BasicUsers::File(file) => ("file", file.0.clone()),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("{kind}\n{text}").as_bytes());
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut name = String::with_capacity(kind.len() + 25);
        name.push_str(kind);
        name.push('-');
        for b in &digest.as_ref()[..12] {
            name.push(char::from(HEX[usize::from(b >> 4)]));
            name.push(char::from(HEX[usize::from(b & 15)]));
        }
        name
    }
}

/// An `http://` or `https://` URL for `auth.url` and `auth.signin`, normalised (scheme and host
/// lowercase). It reaches the config only through `policy::nginx_literal`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Url(String);

impl Url {
    pub fn parse(input: &str) -> Result<Url, AccessError> {
        let text = input.trim();
        let bad = |reason: String| AccessError::Url { value: show(text), reason };
        if text.len() > 2048 {
            return Err(bad(format!("it is {} characters long", text.len())));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(bad(format!("it contains the character {c:?}")));
        }
        let lower = text.to_ascii_lowercase();
        let (scheme, rest) = match (lower.starts_with("http://"), lower.starts_with("https://")) {
            (true, _) => ("http", &text[7..]),
            (_, true) => ("https", &text[8..]),
            _ => return Err(bad("it does not start with http:// or https://".into())),
        };
        if text.contains('#') {
            return Err(bad("it has a '#' fragment".into()));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("it holds credentials (user@host)".into()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err(bad("it has no host".into()));
        }
        let host = Host::parse(host).map_err(|e| bad(e.to_string()))?;
        let port = port.map(Port::parse).transpose().map_err(|e| bad(e.to_string()))?;
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let tail = if tail.is_empty() { "/" } else { tail };
        Ok(Url(format!("{scheme}://{host}{port}{tail}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when its host is a name (nginx resolves it per request, with the resolver).
    pub fn has_host_name(&self) -> bool {
        let rest = self.0.split_once("://").map_or("", |(_, r)| r);
        let host = rest.split(['/', '?', ':']).next().unwrap_or("");
        !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err()
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `auth=forward`: an `auth_request` to `url` for every request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    pub url: Url,
    /// Where a 401 from the auth service redirects (the original URL as `rd`).
    pub signin: Option<Url>,
    /// Response headers of the auth service passed on to the app.
    pub headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthMethod {
    Basic(BasicUsers),
    Forward(Forward),
}

/// `auth`: how a location is guarded, and the paths inside it that are not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Auth {
    pub method: AuthMethod,
    pub bypass: Vec<PathPrefix>,
}

/// Parses `auth.headers`: header names, case-insensitively unique.
pub fn parse_header_names(input: &str) -> Result<Vec<HeaderName>, AccessError> {
    header_names(input.split(',').map(str::trim).filter(|s| !s.is_empty()))
}

pub fn header_names<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<HeaderName>, AccessError> {
    let mut names: Vec<HeaderName> = Vec::new();
    for item in items {
        let name = HeaderName::parse(item.trim(), super::policy::Direction::Request)
            .map_err(|e| AccessError::Header(e.to_string()))?;
        if !names.iter().any(|n| n.as_str().eq_ignore_ascii_case(name.as_str())) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(AccessError::Header(format!("empty; must be {}", allowed::HEADER_NAMES)));
    }
    Ok(names)
}

/// Parses `auth.bypass`: paths (each checked against the route's path when the keys are combined).
pub fn parse_paths(input: &str) -> Result<Vec<PathPrefix>, AccessError> {
    paths(input.split(',').map(str::trim).filter(|s| !s.is_empty()))
}

pub fn paths<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<PathPrefix>, AccessError> {
    let mut out = Vec::new();
    for item in items {
        let path = PathPrefix::parse(item).map_err(|e| AccessError::Bypass(e.to_string()))?;
        if !out.contains(&path) {
            out.push(path);
        }
    }
    if out.is_empty() {
        return Err(AccessError::Bypass(format!("empty; must be {}", allowed::BYPASS)));
    }
    out.sort();
    Ok(out)
}

/// True when `bypass` lies inside the route's `path` (starts with it and is longer): a nested
/// location nginx accepts, and requests for it reach the route.
pub fn is_inside(bypass: &PathPrefix, path: &PathPrefix) -> bool {
    bypass.as_str().len() > path.as_str().len() && bypass.as_str().starts_with(path.as_str())
}

/// The `auth` keys of one route, each parsed (`None`: not set), with `O` saying where each was
/// set (a label name, a JSON field).
pub struct AuthKeys<O> {
    pub auth: Option<(AuthMode, O)>,
    pub users: Option<(Users, O)>,
    pub users_file: Option<(UsersFile, O)>,
    pub url: Option<(Url, O)>,
    pub signin: Option<(Url, O)>,
    pub headers: Option<(Vec<HeaderName>, O)>,
    pub bypass: Option<(Vec<PathPrefix>, O)>,
}

impl<O> Default for AuthKeys<O> {
    fn default() -> Self {
        AuthKeys { auth: None, users: None, users_file: None, url: None, signin: None, headers: None, bypass: None }
    }
}

impl<O: Clone> AuthKeys<O> {
    /// The route's auth, or `None` (no `auth`, or `auth=off`, which also ignores the other keys);
    /// each problem at the key it is about, naming what is missing or out of place. `path` is the
    /// route's path: bypass paths must lie inside it.
    pub fn build(self, path: &PathPrefix) -> Result<Option<Auth>, Vec<(O, String)>> {
        let mut errors = Vec::new();
        let mode = self.auth.as_ref().map(|(m, _)| *m);
        let said = match mode {
            None => "auth is not set",
            Some(AuthMode::Basic) => "auth is basic",
            Some(AuthMode::Forward) => "auth is forward",
            Some(AuthMode::Off) => return Ok(None),
        };
        let misplaced = |errors: &mut Vec<(O, String)>, key: Option<&O>, name: &str, wanted: &str| {
            if let Some(at) = key {
                errors.push((at.clone(), format!("{name} is only used with auth={wanted}, and {said}")));
            }
        };
        if mode != Some(AuthMode::Basic) {
            misplaced(&mut errors, self.users.as_ref().map(|(_, o)| o), "auth.users", "basic");
            misplaced(&mut errors, self.users_file.as_ref().map(|(_, o)| o), "auth.users-file", "basic");
        }
        if mode != Some(AuthMode::Forward) {
            misplaced(&mut errors, self.url.as_ref().map(|(_, o)| o), "auth.url", "forward");
            misplaced(&mut errors, self.signin.as_ref().map(|(_, o)| o), "auth.signin", "forward");
            misplaced(&mut errors, self.headers.as_ref().map(|(_, o)| o), "auth.headers", "forward");
        }
        if mode.is_none() {
            misplaced(&mut errors, self.bypass.as_ref().map(|(_, o)| o), "auth.bypass", "basic or auth=forward");
        }
        let bypass = match self.bypass {
            None => Vec::new(),
            Some((paths, at)) => {
                let outside: Vec<&str> = paths.iter().filter(|p| !is_inside(p, path)).map(PathPrefix::as_str).collect();
                if !outside.is_empty() {
                    errors.push((
                        at,
                        format!(
                            "{} not inside the route's path {path} (a bypass path starts with it and is longer; \
                             to open the whole route, use auth=off)",
                            outside.join(", ")
                        ),
                    ));
                }
                paths
            }
        };
        let method = match (mode, self.auth) {
            (Some(AuthMode::Basic), Some((_, at))) => match (self.users, self.users_file) {
                (Some((users, _)), None) => Some(AuthMethod::Basic(BasicUsers::Inline(users))),
                (None, Some((file, _))) => Some(AuthMethod::Basic(BasicUsers::File(file))),
                (Some(_), Some((_, file_at))) => {
                    errors.push((file_at, "set auth.users or auth.users-file, not both".to_string()));
                    None
                }
                (None, None) => {
                    errors.push((at, "auth=basic needs auth.users (user:hash lines) or auth.users-file".to_string()));
                    None
                }
            },
            (Some(AuthMode::Forward), Some((_, at))) => match self.url {
                Some((url, _)) => Some(AuthMethod::Forward(Forward {
                    url,
                    signin: self.signin.map(|(s, _)| s),
                    headers: self.headers.map(|(h, _)| h).unwrap_or_default(),
                })),
                None => {
                    errors.push((at, "auth=forward needs auth.url (the auth service's check URL)".to_string()));
                    None
                }
            },
            _ => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(method.map(|method| Auth { method, bypass }))
    }
}

/// `rate`: requests per second or per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    count: u32,
    per_minute: bool,
}

impl Rate {
    /// `None` for `off`.
    pub fn parse(input: &str) -> Result<Option<Rate>, AccessError> {
        let text = input.trim().to_ascii_lowercase();
        if text == "off" {
            return Ok(None);
        }
        let bad = || AccessError::Rate { value: show(input.trim()) };
        let (digits, per_minute) = match (text.strip_suffix("r/s"), text.strip_suffix("r/m")) {
            (Some(d), _) => (d, false),
            (_, Some(d)) => (d, true),
            _ => return Err(bad()),
        };
        if digits.is_empty() || digits.len() > 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u32 = digits.parse().map_err(|_| bad())?;
        if !(1..=1_000_000).contains(&count) {
            return Err(bad());
        }
        Ok(Some(Rate { count, per_minute }))
    }

    pub fn count(self) -> u32 {
        self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}r/{}", self.count, if self.per_minute { "m" } else { "s" })
    }
}

/// `rate.burst`: requests over the rate let through at once (then refused until the rate allows).
pub fn parse_burst(input: &str) -> Result<u32, AccessError> {
    let text = input.trim();
    let bad = || AccessError::Burst { value: show(text) };
    if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u32>().ok().filter(|n| *n <= 100_000).ok_or_else(bad)
}

/// `rate.key`: what one client is.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RateKey {
    /// The client's address.
    #[default]
    Ip,
    /// A request header's value (an API key, a tenant); without the header, the address.
    Header(HeaderName),
}

impl RateKey {
    pub fn parse(input: &str) -> Result<RateKey, AccessError> {
        let text = input.trim();
        if text.eq_ignore_ascii_case("ip") {
            return Ok(RateKey::Ip);
        }
        let bad = |reason: String| AccessError::RateKey { value: show(text), reason };
        let Some(name) = text.get(..7).filter(|p| p.eq_ignore_ascii_case("header:")).map(|_| &text[7..]) else {
            return Err(bad("it is neither ip nor header:<Name>".into()));
        };
        HeaderName::parse_any(name.trim()).map(RateKey::Header).map_err(|e| bad(e.to_string()))
    }

    /// The nginx variable of the header (`http_x_api_key`), for a header key.
    pub fn header_variable(&self) -> Option<String> {
        match self {
            RateKey::Ip => None,
            RateKey::Header(name) => Some(format!("http_{}", name.as_str().to_ascii_lowercase().replace('-', "_"))),
        }
    }
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateKey::Ip => f.write_str("ip"),
            RateKey::Header(name) => write!(f, "header:{}", name.as_str()),
        }
    }
}

/// `rate` with its burst and key: `limit_req` with `nodelay`, 429 past it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RateLimit {
    pub rate: Rate,
    pub burst: u32,
    pub key: RateKey,
}

/// The `rate` keys of one route, like [`AuthKeys`].
pub struct RateKeys<O> {
    /// `Some((None, _))`: `rate=off`.
    pub rate: Option<(Option<Rate>, O)>,
    pub burst: Option<(u32, O)>,
    pub key: Option<(RateKey, O)>,
}

impl<O> Default for RateKeys<O> {
    fn default() -> Self {
        RateKeys { rate: None, burst: None, key: None }
    }
}

impl<O: Clone> RateKeys<O> {
    /// The route's limit, or `None` (no `rate`, or `rate=off`, which ignores the other two). The
    /// burst defaults to the rate's own number: `10r/s` lets 10 requests through at once.
    pub fn build(self) -> Result<Option<RateLimit>, Vec<(O, String)>> {
        match self.rate {
            Some((Some(rate), _)) => Ok(Some(RateLimit {
                rate,
                burst: self.burst.map_or(rate.count.min(100_000), |(b, _)| b),
                key: self.key.map(|(k, _)| k).unwrap_or_default(),
            })),
            Some((None, _)) => Ok(None),
            None => {
                let errors: Vec<(O, String)> =
                    [self.burst.map(|(_, at)| (at, "rate.burst")), self.key.map(|(_, at)| (at, "rate.key"))]
                        .into_iter()
                        .flatten()
                        .map(|(at, name)| {
                            (at, format!("{name} is only used with rate (e.g. rate=10r/s), which is not set"))
                        })
                        .collect();
                if errors.is_empty() {
                    Ok(None)
                } else {
                    Err(errors)
                }
            }
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate={} burst={}", self.rate, self.burst)?;
        if self.key != RateKey::Ip {
            write!(f, " key={}", self.key)?;
        }
        Ok(())
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("rate", &self.rate.to_string())?;
        map.serialize_entry("burst", &self.burst)?;
        map.serialize_entry("key", &self.key.to_string())?;
        map.end()
    }
}

impl Auth {
    /// `auth=basic users=alice,bob`, `auth=forward url="https://…"`, with the bypass paths: for
    /// the route table and messages. No hash is ever part of it.
    pub fn describe(&self) -> String {
        let mut text = match &self.method {
            AuthMethod::Basic(BasicUsers::Inline(users)) => {
                format!("auth=basic users={}", users.names().collect::<Vec<_>>().join(","))
            }
            AuthMethod::Basic(BasicUsers::File(file)) => format!("auth=basic users-file={}", file.as_str()),
            AuthMethod::Forward(f) => {
                let mut text = format!("auth=forward url={:?}", show(f.url.as_str()));
                if let Some(signin) = &f.signin {
                    text.push_str(&format!(" signin={:?}", show(signin.as_str())));
                }
                if !f.headers.is_empty() {
                    let names: Vec<&str> = f.headers.iter().map(HeaderName::as_str).collect();
                    text.push_str(&format!(" headers={}", names.join(",")));
                }
                text
            }
        };
        if !self.bypass.is_empty() {
            let paths: Vec<&str> = self.bypass.iter().map(PathPrefix::as_str).collect();
            text.push_str(&format!(" bypass={}", paths.join(",")));
        }
        text
    }
}

impl Serialize for Auth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        match &self.method {
            AuthMethod::Basic(BasicUsers::Inline(users)) => {
                map.serialize_entry("method", "basic")?;
                map.serialize_entry("users", &users.names().collect::<Vec<_>>())?;
            }
            AuthMethod::Basic(BasicUsers::File(file)) => {
                map.serialize_entry("method", "basic")?;
                map.serialize_entry("users-file", file.as_str())?;
            }
            AuthMethod::Forward(f) => {
                map.serialize_entry("method", "forward")?;
                map.serialize_entry("url", f.url.as_str())?;
                if let Some(signin) = &f.signin {
                    map.serialize_entry("signin", signin.as_str())?;
                }
                if !f.headers.is_empty() {
                    map.serialize_entry("headers", &f.headers)?;
                }
            }
        }
        if !self.bypass.is_empty() {
            map.serialize_entry("bypass", &self.bypass)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2y$05$EbWcGSIMLRjWvmTGv7x8PO4xU5Vc3BchfEu8Vg3Z0kHGh9aWl6gJu";
    const APR1: &str = "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/";
    const SHA: &str = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";

    #[test]
    fn hashes_nginx_verifies_are_accepted() {
        let sha512 = format!("$6$saltsalt${}", "a".repeat(86));
        let sha256 = format!("$5$rounds=5000$salt${}", "b".repeat(43));
        let md5 = "$1$abc$0123456789abcdefghijkl";
        for hash in [BCRYPT, APR1, SHA, &sha512, &sha256, md5, &BCRYPT.replace("$2y$", "$2b$")] {
            let line = HtpasswdLine::parse(&format!("alice:{hash}"), "entry 1").unwrap();
            assert_eq!(line.user(), "alice", "{hash}");
        }
    }

    #[test]
    fn clear_passwords_and_other_schemes_are_refused_without_echoing_them() {
        for (text, says) in [
            ("alice:secret123", "not a hash nginx verifies (a clear password?)"),
            ("alice:{PLAIN}secret123", "a clear password ({PLAIN})"),
            ("alice:$y$j9T$abc$def", "yescrypt"),
            ("alice:abJnggxhB/yWI", "DES crypt"),
            ("alice:$2y$05$short", "not a hash"),
            ("alice:{SHA}tooshort=", "not a hash"),
            (&format!("alice:$6$salt${}", "a".repeat(85)), "not a hash"),
        ] {
            let e = HtpasswdLine::parse(text, "entry 2").unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.starts_with("entry 2: the password of user \"alice\""), "{e}");
            assert!(e.contains("htpasswd -nbB"), "{e}");
            let secret = text.split_once(':').unwrap().1;
            assert!(!e.contains(secret), "the message echoes the password: {e}");
        }
        let e = HtpasswdLine::parse("just-a-password", "entry 1").unwrap_err().to_string();
        assert!(e.contains("not user:hash") && !e.contains("just-a-password"), "{e}");
        let e = HtpasswdLine::parse("al ice:x", "entry 1").unwrap_err().to_string();
        assert!(e.contains("user name has the character ' '"), "{e}");
    }

    #[test]
    fn user_lists_and_files() {
        let users = Users::parse(&format!(" alice:{BCRYPT} ,bob:{APR1},")).unwrap();
        assert_eq!(users.names().collect::<Vec<_>>(), ["alice", "bob"]);
        let lines = Users::parse(&format!("alice:{BCRYPT}\n  bob:{APR1}\n")).unwrap();
        assert_eq!(lines, users, "one per line, as a YAML block");
        assert_eq!(users.file_text(), format!("alice:{BCRYPT}\nbob:{APR1}\n"));
        assert!(!format!("{users:?}").contains("$2y$"), "{users:?}");
        let e = Users::parse(&format!("alice:{BCRYPT},alice:{APR1}")).unwrap_err().to_string();
        assert!(e.contains("entry 2: user \"alice\" is listed twice"), "{e}");
        assert!(Users::parse(" , ").unwrap_err().to_string().contains("empty"));
        let file = format!("# the team\n\nalice:{BCRYPT}\n  bob:{SHA}\n");
        assert_eq!(Users::from_file_text(&file).unwrap().names().count(), 2);
        let e = Users::from_file_text(&format!("alice:{BCRYPT}\n\nbob:hunter2\n")).unwrap_err().to_string();
        assert!(e.starts_with("line 3: the password of user \"bob\""), "{e}");
        // Each users list gets its own file name; the same list the same name.
        let a = BasicUsers::Inline(users.clone()).file_name();
        assert_eq!(a, BasicUsers::Inline(users).file_name());
        assert!(a.starts_with("users-") && a.len() == 30 && a[6..].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, BasicUsers::Inline(Users::parse(&format!("alice:{BCRYPT}")).unwrap()).file_name());
    }

    #[test]
    fn users_files_are_absolute_plain_paths() {
        assert_eq!(UsersFile::parse(" /run/secrets/htpasswd ").unwrap().as_str(), "/run/secrets/htpasswd");
        for bad in ["htpasswd", "/a b", "/a/../etc/shadow", "/a/", "/a;b", "/$x"] {
            assert!(UsersFile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for (text, normal, name) in [
            ("https://auth.example.com/api/verify", "https://auth.example.com/api/verify", true),
            ("HTTP://Authelia:9091", "http://authelia:9091/", true),
            ("http://10.0.0.5:4180/oauth2/auth?x=$1&y=\"q\"", "http://10.0.0.5:4180/oauth2/auth?x=$1&y=\"q\"", false),
            ("http://[::1]:9000/check", "http://[::1]:9000/check", false),
        ] {
            let url = Url::parse(text).unwrap();
            assert_eq!((url.as_str(), url.has_host_name()), (normal, name), "{text}");
        }
        for (bad, says) in [
            ("ftp://x/", "http:// or https://"),
            ("https://a b/", "character ' '"),
            ("https://user:pw@auth/", "credentials"),
            ("https://auth/#x", "fragment"),
            ("https:///x", "no host"),
            ("https://auth:99999/", "out of range"),
            ("https://a_b/", "not a valid host name"),
            ("https://auth/\nx", "character '\\n'"),
        ] {
            let e = Url::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn auth_keys_combine_and_say_which_key_is_wrong() {
        let root = PathPrefix::root();
        let users = || Users::parse(&format!("alice:{BCRYPT}")).unwrap();
        let basic = AuthKeys {
            auth: Some((AuthMode::Basic, "auth")),
            users: Some((users(), "auth.users")),
            bypass: Some((parse_paths("/public/,/healthz").unwrap(), "auth.bypass")),
            ..AuthKeys::default()
        };
        let auth = basic.build(&root).unwrap().unwrap();
        assert_eq!(auth.describe(), "auth=basic users=alice bypass=/healthz,/public/");

        let e = AuthKeys { users: Some((users(), "auth.users")), ..AuthKeys::default() }.build(&root).unwrap_err();
        assert_eq!(e, [("auth.users", "auth.users is only used with auth=basic, and auth is not set".to_string())]);
        let e = AuthKeys { auth: Some((AuthMode::Basic, "auth")), ..AuthKeys::default() }.build(&root).unwrap_err();
        assert_eq!(e[0].0, "auth");
        assert!(e[0].1.contains("needs auth.users"), "{e:?}");
        let url = Url::parse("http://auth:9091/").unwrap();
        let e = AuthKeys {
            auth: Some((AuthMode::Basic, "auth")),
            users: Some((users(), "auth.users")),
            url: Some((url.clone(), "auth.url")),
            ..AuthKeys::default()
        }
        .build(&root)
        .unwrap_err();
        assert_eq!(e, [("auth.url", "auth.url is only used with auth=forward, and auth is basic".to_string())]);
        let e = AuthKeys { auth: Some((AuthMode::Forward, "auth")), ..AuthKeys::default() }.build(&root).unwrap_err();
        assert!(e[0].1.contains("needs auth.url"), "{e:?}");
        // auth=off ignores the rest (inherited keys of a route that opts out).
        let off = AuthKeys {
            auth: Some((AuthMode::Off, "auth")),
            users: Some((users(), "auth.users")),
            ..AuthKeys::default()
        };
        assert_eq!(off.build(&root), Ok(None));
        // Bypass paths lie inside the route's path.
        let api = PathPrefix::parse("/api/").unwrap();
        let forward = |bypass: &str| AuthKeys {
            auth: Some((AuthMode::Forward, "auth")),
            url: Some((url.clone(), "auth.url")),
            bypass: Some((parse_paths(bypass).unwrap(), "auth.bypass")),
            ..AuthKeys::default()
        };
        assert!(forward("/api/public/").build(&api).is_ok());
        let e = forward("/api/,/healthz,/api/x").build(&api).unwrap_err();
        assert_eq!(e[0].0, "auth.bypass");
        assert!(e[0].1.starts_with("/api/, /healthz not inside the route's path /api/"), "{e:?}");
    }

    #[test]
    fn rates_bursts_and_keys() {
        assert_eq!(Rate::parse("10r/s").unwrap().unwrap().to_string(), "10r/s");
        assert_eq!(Rate::parse(" 600R/M ").unwrap().unwrap().to_string(), "600r/m");
        assert_eq!(Rate::parse("off").unwrap(), None);
        for bad in ["", "10", "10r", "0r/s", "10r/h", "1.5r/s", "10 r/s", "10000000r/s", "-1r/s", "10r/s;"] {
            let e = Rate::parse(bad).unwrap_err().to_string();
            assert!(e.contains("10r/s, 600r/m"), "{bad}: {e}");
        }
        assert_eq!(parse_burst("0"), Ok(0));
        assert!(parse_burst("100001").is_err() && parse_burst("-1").is_err() && parse_burst("1e3").is_err());
        assert_eq!(RateKey::parse("IP"), Ok(RateKey::Ip));
        let key = RateKey::parse("Header:X-Api-Key").unwrap();
        assert_eq!(key.header_variable().as_deref(), Some("http_x_api_key"));
        assert_eq!(key.to_string(), "header:X-Api-Key");
        assert!(RateKey::parse("header:X_Y").is_err() && RateKey::parse("cookie:x").is_err());

        let rate = Rate::parse("10r/s").unwrap();
        let built = RateKeys { rate: Some((rate, "rate")), ..RateKeys::default() }.build().unwrap().unwrap();
        assert_eq!(built.to_string(), "rate=10r/s burst=10", "the burst defaults to the rate's number");
        let e = RateKeys::<&str> { burst: Some((5, "rate.burst")), ..RateKeys::default() }.build().unwrap_err();
        assert_eq!(e, [("rate.burst", "rate.burst is only used with rate (e.g. rate=10r/s), which is not set".into())]);
        let off = RateKeys { rate: Some((None, "rate")), burst: Some((5, "rate.burst")), key: None };
        assert_eq!(off.build(), Ok(None));
    }
}

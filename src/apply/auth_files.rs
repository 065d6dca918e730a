//! The htpasswd files of `auth=basic` routes, in the directory beside the rendered config
//! (`render::AUTH_DIR`, so that in the companion setup they reach nginx's container on the same
//! shared volume as the config). nginx reads them on every request, so they are written before
//! the config that names them is tested, and removed only once no live config names them.
//!
//! A list of users (`auth.users`) is a file named by a digest of its lines: a changed list is a
//! new file, and a config always reads the lines it was rendered with. A users-file
//! (`auth.users-file`) is read, checked line by line (hashes only) and copied on every apply,
//! to a file named by its path; one that cannot be read or has a bad line leaves its domains out
//! (fail closed: never served without the login it asks for). Files are 0640, the directory
//! 0750; the test script gives both to nginx's workers' group. Their contents are never logged.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;
use crate::render::RenderSettings;
use crate::routes::access::{AuthMethod, BasicUsers, Users};
use crate::routes::{Diagnostic, DomainName, RouteTable};

/// What the htpasswd directory must hold for a table: file name → contents.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AuthFiles {
    pub files: BTreeMap<String, String>,
    /// Domains whose users-file cannot be used, with the reason (never the file's contents).
    pub unusable: Vec<(DomainName, String)>,
}

impl AuthFiles {
    /// The files `table` needs; users-files are read here (each once).
    pub fn of(table: &RouteTable) -> AuthFiles {
        let mut out = AuthFiles::default();
        let mut read: BTreeMap<String, Result<String, String>> = BTreeMap::new();
        for site in &table.sites {
            let mut problem = None;
            for location in &site.locations {
                let Some(AuthMethod::Basic(users)) = location.policy.auth.as_ref().map(|a| &a.method) else {
                    continue;
                };
                let text = match users {
                    BasicUsers::Inline(users) => Ok(users.file_text()),
                    BasicUsers::File(file) => read
                        .entry(file.as_str().to_string())
                        .or_insert_with(|| read_users_file(Path::new(file.as_str())))
                        .clone(),
                };
                match text {
                    Ok(text) => {
                        out.files.insert(users.file_name(), text);
                    }
                    Err(reason) => problem = problem.or(Some(reason)),
                }
            }
            if let Some(reason) = problem {
                out.unusable.push((site.domain.clone(), reason));
            }
        }
        out
    }

    /// A digest of every users list (names and contents), for [`RenderSettings::auth_cache`]: in
    /// the config, it makes an edited list a new config, whose reload forgets every login nginx
    /// remembered.
    pub fn generation(&self) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for (name, text) in &self.files {
            for part in [name.as_bytes(), b"\n", text.as_bytes(), b"\0"] {
                context.update(part);
            }
        }
        context.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `settings` with the generation of these users lists, when `AUTH_CACHE` is on.
    pub fn settings(&self, settings: &RenderSettings) -> Option<RenderSettings> {
        settings.auth_cache.as_ref()?;
        Some(RenderSettings { auth_cache: Some(self.generation()), ..settings.clone() })
    }

    /// Writes every file whose contents differ from what `dir` holds (creating `dir`, 0750);
    /// returns how many were written.
    pub fn write(&self, dir: &Path) -> io::Result<usize> {
        if self.files.is_empty() {
            return Ok(0);
        }
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
        let mut written = 0;
        for (name, text) in &self.files {
            let path = dir.join(name);
            if std::fs::read(&path).is_ok_and(|have| have == text.as_bytes()) {
                continue;
            }
            write_atomic(&path, text.as_bytes(), 0o640)?;
            written += 1;
        }
        Ok(written)
    }

    /// Removes the htpasswd files in `dir` that this table does not name (a config that named
    /// them is no longer live); nothing else in `dir` is touched.
    pub fn remove_unused(&self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("users-") || name.starts_with("file-");
            if ours && !self.files.contains_key(&name) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!("cannot remove the unused htpasswd file {}: {e}", entry.path().display());
                }
            }
        }
    }
}

/// `table` without the domains whose users-file cannot be used, each with an error saying why
/// (`--dry-run` and `check` show what the agent would leave out; the agent itself reports them as
/// routes left out).
pub fn without_unusable(table: RouteTable) -> RouteTable {
    let unusable = AuthFiles::of(&table).unusable;
    let mut table = table;
    for (domain, reason) in unusable {
        let origin = table.sites.iter().find(|s| s.domain == domain).and_then(|s| s.locations.first());
        let origin = origin.map(|l| l.origin.clone()).expect("an unusable domain has a location");
        table = table.without_site(&domain);
        table.diagnostics.push(Diagnostic::error(origin, format!("{reason}; {domain} is left out")));
    }
    table
}

/// The users-files `table`'s routes name.
pub fn users_files(table: &RouteTable) -> BTreeSet<PathBuf> {
    let methods = table.sites.iter().flat_map(|s| &s.locations).filter_map(|l| l.policy.auth.as_ref());
    methods
        .filter_map(|a| match &a.method {
            AuthMethod::Basic(BasicUsers::File(file)) => Some(PathBuf::from(file.as_str())),
            _ => None,
        })
        .collect()
}

/// A users-file's lines, checked (hashes only) and normalised; or why it cannot be used.
fn read_users_file(path: &Path) -> Result<String, String> {
    let at = format!("auth.users-file {}", path.display());
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "{at}: cannot read it: {e}; mount its directory into the agent's container (the agent copies it for nginx)"
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{at}: it is not UTF-8 text"))?;
    Users::from_file_text(&text).map(|users| users.file_text()).map_err(|e| format!("{at}, {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::access::{Auth, UsersFile};
    use crate::routes::Policy;

    const BCRYPT: &str = "$2y$05$EbWcGSIMLRjWvmTGv7x8PO4xU5Vc3BchfEu8Vg3Z0kHGh9aWl6gJu";

    fn table(sites: &[(&str, BasicUsers)]) -> RouteTable {
        let domains: Vec<&str> = sites.iter().map(|(d, _)| *d).collect();
        let mut table = RouteTable::build(vec![crate::sources::env::parse(Some(&domains.join(",")), None)]);
        for (site, (_, users)) in table.sites.iter_mut().zip(sites) {
            let auth = Auth { method: AuthMethod::Basic(users.clone()), bypass: vec![] };
            site.locations[0].policy = Policy { auth: Some(auth), ..Policy::default() };
        }
        table
    }

    #[test]
    fn files_are_written_0640_once_and_removed_when_unused() {
        let dir = tempfile::tempdir().unwrap();
        let auth_dir = dir.path().join("smart-proxy-htpasswd");
        let users_file = dir.path().join("team.htpasswd");
        std::fs::write(&users_file, format!("# team\nbob:{BCRYPT}\n")).unwrap();
        let inline = BasicUsers::Inline(Users::parse(&format!("alice:{BCRYPT}")).unwrap());
        let file = BasicUsers::File(UsersFile::parse(users_file.to_str().unwrap()).unwrap());
        let files = AuthFiles::of(&table(&[("a.test", inline.clone()), ("b.test", file.clone())]));
        assert!(files.unusable.is_empty(), "{:?}", files.unusable);
        assert_eq!(files.write(&auth_dir).unwrap(), 2);
        assert_eq!(files.write(&auth_dir).unwrap(), 0, "unchanged files are not written again");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&auth_dir), 0o750);
        let copy = auth_dir.join(file.file_name());
        assert_eq!(mode(&copy), 0o640);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), format!("bob:{BCRYPT}\n"));
        assert_eq!(std::fs::read_to_string(auth_dir.join(inline.file_name())).unwrap(), format!("alice:{BCRYPT}\n"));

        // The users-file changes: its copy follows on the next apply.
        std::fs::write(&users_file, format!("carol:{BCRYPT}\n")).unwrap();
        let files = AuthFiles::of(&table(&[("b.test", file.clone())]));
        assert_eq!(files.write(&auth_dir).unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), format!("carol:{BCRYPT}\n"));
        std::fs::write(auth_dir.join("other"), "kept").unwrap();
        files.remove_unused(&auth_dir);
        let left: Vec<String> =
            std::fs::read_dir(&auth_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left.len(), 2, "the copy and a file not ours: {left:?}");
    }

    /// `AUTH_CACHE`'s generation names every users list's contents: an edited users-file (same
    /// path, same copy's name) is a new generation, so a new config; the same lists, the same one.
    #[test]
    fn the_generation_follows_the_users_lists_contents() {
        let dir = tempfile::tempdir().unwrap();
        let users_file = dir.path().join("team.htpasswd");
        std::fs::write(&users_file, format!("bob:{BCRYPT}\n")).unwrap();
        let file = BasicUsers::File(UsersFile::parse(users_file.to_str().unwrap()).unwrap());
        let table = table(&[("b.test", file)]);
        let first = AuthFiles::of(&table).generation();
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        assert_eq!(AuthFiles::of(&table).generation(), first);
        std::fs::write(&users_file, format!("carol:{BCRYPT}\n")).unwrap();
        assert_ne!(AuthFiles::of(&table).generation(), first);

        let settings = crate::render::tests::test_settings(false);
        assert!(AuthFiles::of(&table).settings(&settings).is_none(), "AUTH_CACHE off: no generation");
        let on = RenderSettings { auth_cache: Some(String::new()), ..settings };
        let with = AuthFiles::of(&table).settings(&on).unwrap();
        assert_eq!(with.auth_cache, Some(AuthFiles::of(&table).generation()));
    }

    #[test]
    fn an_unusable_users_file_leaves_its_domain_out_without_showing_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.htpasswd");
        std::fs::write(&bad, format!("alice:{BCRYPT}\nbob:hunter2\n")).unwrap();
        let missing = dir.path().join("missing");
        let users = |p: &Path| BasicUsers::File(UsersFile::parse(p.to_str().unwrap()).unwrap());
        let files = AuthFiles::of(&table(&[("bad.test", users(&bad)), ("gone.test", users(&missing))]));
        assert!(files.files.is_empty());
        let reasons: Vec<String> = files.unusable.iter().map(|(d, r)| format!("{d}: {r}")).collect();
        assert!(reasons[0].starts_with("bad.test: auth.users-file "), "{reasons:?}");
        assert!(reasons[0].contains("line 2: the password of user \"bob\" is not a hash"), "{reasons:?}");
        assert!(!reasons[0].contains("hunter2"), "{reasons:?}");
        assert!(reasons[1].contains("cannot read it: No such file"), "{reasons:?}");
    }
}

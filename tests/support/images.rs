//! Docker images for the companion-setup tests, built locally: no container registry is reachable
//! here, so nothing is pulled. The root filesystem is assembled in a temporary directory from the
//! host's own files (Debian's `/usr/sbin/nginx` with every shared library `ldd` lists, busybox for
//! the shell scripts the agent execs, a minimal `/etc`) and imported with
//! `tar -C <rootfs> -c . | docker import -c ... - <tag>`.
//!
//! The tag is a short hash of the content (the file list, every copied file's sha256, the
//! generated files and the image config). The full hash is also stored as the
//! [`CONTENT_LABEL`] label: when an image with the same tag and label already exists, nothing is
//! built, so repeated runs only pay for hashing the inputs. Each image is built at most once per
//! test process. Old tags are never removed automatically (another checkout may still use them):
//! `docker images 'smart-proxy-test-*'` lists them.
//!
//! The layout is the production image's (the official nginx image): main config
//! `/etc/nginx/nginx.conf` including `/etc/nginx/conf.d/*.conf` in its http context, the agent's
//! file `/etc/nginx/conf.d/default.conf`, certificates in `/etc/letsencrypt`, the ACME webroot
//! `/var/www/certbot`, logs in `/var/log/nginx`, and nginx on the `PATH`.
//!
//! Our own `nginx.conf` is written instead of Debian's, which loads dynamic modules from
//! `/etc/nginx/modules-enabled/`: everything the rendered configs use (`map`, `ssl`, `http2`,
//! `proxy`, `upstream`, `realip`) is compiled into Debian's nginx statically (`nginx -V`). Host
//! names are resolved by glibc's built-in `files` and `dns` NSS backends (part of `libc.so.6`
//! since glibc 2.34, so no `libnss_*.so` is needed), through Docker's embedded DNS on user-defined
//! networks.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Repository of [`nginx_image`]'s tags.
pub const NGINX_REPOSITORY: &str = "smart-proxy-test-nginx";
/// Repository of [`agent_image`]'s tags.
pub const AGENT_REPOSITORY: &str = "smart-proxy-test-agent";
/// Label holding the full content hash of an image built here.
pub const CONTENT_LABEL: &str = "smart-proxy-test.content";
/// Where [`agent_image`] puts the agent binary (as the production Dockerfile does).
pub const AGENT_BIN: &str = "/usr/local/bin/nginx-smart-proxy";
/// The body of the default server of [`nginx_image`] (port 80, any host name).
pub const DEFAULT_PAGE: &str = "nginx test image\n";

/// The `PATH` of both images (the official nginx image's).
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Busybox applets the exec'd scripts (the agent's `nginx -t` on a copy of /etc/nginx) and the
/// tests rely on; every other applet the host's busybox has is linked too.
const REQUIRED_APPLETS: &[&str] =
    &["sh", "cp", "sed", "mkdir", "rm", "cat", "mktemp", "grep", "xargs", "find", "ls", "sleep", "wget", "dirname"];

const NGINX_CONF: &str = "\
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log stderr info;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    include /etc/nginx/conf.d/*.conf;
}
";

const DEFAULT_CONF: &str = "\
# Replaced by the agent (NGINX_CONF=/etc/nginx/conf.d/default.conf) in the tests that run it.
server {
    listen 80 default_server;
    server_name _;
    default_type text/plain;
    return 200 \"nginx test image\\n\";
}
";

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

const GROUP: &str = "\
root:x:0:
www-data:x:33:
nogroup:x:65534:
nobody:x:65534:
";

const NSSWITCH: &str = "\
passwd: files
group: files
shadow: files
hosts: files dns
";

/// An image with Debian's nginx (the host's `/usr/sbin/nginx`, or `TEST_NGINX_BIN`) running
/// `nginx -g 'daemon off;'` as PID 1, answering [`DEFAULT_PAGE`] on port 80 until
/// `/etc/nginx/conf.d/default.conf` is replaced. It has `sh` and the usual tools (busybox), so
/// `docker exec <c> nginx -t`, `nginx -s reload` and the agent's test script work in it.
/// Returns the tag, `smart-proxy-test-nginx:<short hash>`.
pub fn nginx_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let changes = [
                r#"CMD ["/usr/sbin/nginx", "-g", "daemon off;"]"#.to_string(),
                format!("ENV PATH={PATH_ENV}"),
                "EXPOSE 80".to_string(),
            ];
            build(NGINX_REPOSITORY, &Rootfs::nginx(), &changes)
        })
        .clone()
}

/// [`nginx_image`]'s root filesystem plus `agent_binary` at [`AGENT_BIN`] (and the libraries it
/// links), with the production image's `ENTRYPOINT ["/usr/local/bin/nginx-smart-proxy"]` and
/// `CMD ["--dry-run"]`: give the agent's arguments as the container's command. Returns the tag,
/// `smart-proxy-test-agent:<short hash>` (the hash covers the binary and the rest of the image).
/// Built once per binary path per test process.
pub fn agent_image(agent_binary: &Path) -> String {
    static IMAGES: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let images = IMAGES.get_or_init(Default::default);
    // Held during the build: parallel tests wait for one build instead of racing it.
    let mut images = images.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tag) = images.get(agent_binary) {
        return tag.clone();
    }
    assert!(agent_binary.is_file(), "agent binary {} not found (build it first)", agent_binary.display());
    let mut rootfs = Rootfs::nginx();
    rootfs.binary(AGENT_BIN, agent_binary);
    let changes = [
        format!(r#"ENTRYPOINT ["{AGENT_BIN}"]"#),
        r#"CMD ["--dry-run"]"#.to_string(),
        format!("ENV PATH={PATH_ENV}"),
        "EXPOSE 80".to_string(),
    ];
    let tag = build(AGENT_REPOSITORY, &rootfs, &changes);
    images.insert(agent_binary.to_path_buf(), tag.clone());
    tag
}

/// One path of the root filesystem.
enum Entry {
    Dir {
        mode: u32,
    },
    /// A host file, symlinks followed, with its mode.
    Copy {
        from: PathBuf,
    },
    File {
        contents: String,
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

/// The root filesystem to import, by absolute path inside the image.
struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

impl Rootfs {
    fn nginx() -> Self {
        let mut fs = Rootfs { entries: BTreeMap::new() };
        let nginx = super::nginx_bin();
        fs.binary("/usr/sbin/nginx", &nginx);
        fs.copy("/etc/nginx/mime.types", Path::new("/etc/nginx/mime.types"));
        fs.file("/etc/nginx/nginx.conf", NGINX_CONF, 0o644);
        fs.file("/etc/nginx/conf.d/default.conf", DEFAULT_CONF, 0o644);
        fs.file("/etc/passwd", PASSWD, 0o644);
        fs.file("/etc/group", GROUP, 0o644);
        fs.file("/etc/nsswitch.conf", NSSWITCH, 0o644);
        fs.file("/usr/share/nginx/html/index.html", DEFAULT_PAGE, 0o644);
        for dir in [
            "/run",
            "/root",
            "/var/log/nginx",
            "/var/www/certbot",
            "/etc/letsencrypt",
            "/var/lock",
            "/usr/local/bin",
            "/usr/local/sbin",
            "/sbin",
            "/usr/bin",
            // Debian's compiled-in temp paths (`nginx -V`): --http-client-body-temp-path=
            // /var/lib/nginx/body, proxy, fastcgi, scgi, uwsgi; nginx creates the leaves.
            "/var/lib/nginx",
        ] {
            fs.dir(dir, 0o755);
        }
        fs.dir("/tmp", 0o1777);

        // Busybox: `sh` and the tools for exec'd scripts, every applet as a symlink in /bin.
        let busybox = PathBuf::from(std::env::var("TEST_BUSYBOX_BIN").unwrap_or_else(|_| "/bin/busybox".into()));
        assert!(
            busybox.is_file(),
            "busybox is required for the Docker test images and was not found at {} (install Debian's busybox-static; .ci/run does this)",
            busybox.display()
        );
        fs.binary("/bin/busybox", &busybox);
        let list = run(Command::new(&busybox).arg("--list"), "busybox --list");
        let applets: Vec<&str> = list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox").collect();
        for required in REQUIRED_APPLETS {
            assert!(applets.contains(required), "{} has no `{required}` applet", busybox.display());
        }
        for applet in applets {
            let path = format!("/bin/{applet}");
            fs.entries.entry(path).or_insert(Entry::Symlink { target: "busybox".into() });
        }
        fs
    }

    fn dir(&mut self, path: &str, mode: u32) {
        self.entries.insert(path.to_string(), Entry::Dir { mode });
    }

    fn file(&mut self, path: &str, contents: &str, mode: u32) {
        self.entries.insert(path.to_string(), Entry::File { contents: contents.to_string(), mode });
    }

    fn copy(&mut self, path: &str, from: &Path) {
        assert!(from.exists(), "{} not found (needed at {path} in the test image)", from.display());
        self.entries.insert(path.to_string(), Entry::Copy { from: from.to_path_buf() });
    }

    /// An executable at `path`, and every shared library it links at the path `ldd` finds it at
    /// (the dynamic loader included: `/lib64/ld-linux-x86-64.so.2` is the interpreter path the
    /// binary names, so the loader finds the rest in its default directories without a cache).
    fn binary(&mut self, path: &str, from: &Path) {
        self.copy(path, from);
        for lib in shared_libraries(from) {
            let dest = lib.to_str().expect("library path is UTF-8").to_string();
            self.entries.entry(dest).or_insert(Entry::Copy { from: lib });
        }
    }

    /// A description of every entry, with the sha256 of every copied file: the content hash.
    fn manifest(&self) -> String {
        let sources: Vec<&Path> = self
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::Copy { from } => Some(from.as_path()),
                _ => None,
            })
            .collect();
        let sums = run(Command::new("sha256sum").arg("--").args(&sources), "sha256sum");
        let sums: Vec<&str> = sums.lines().map(|l| l.split_whitespace().next().unwrap_or_default()).collect();
        assert_eq!(sums.len(), sources.len(), "sha256sum output");
        let mut sums = sums.into_iter();
        let mut out = String::new();
        for (path, entry) in &self.entries {
            let line = match entry {
                Entry::Dir { mode } => format!("dir {path} {mode:o}"),
                Entry::Copy { from } => {
                    let mode = std::fs::metadata(from).unwrap().permissions().mode() & 0o7777;
                    format!("copy {path} {mode:o} {}", sums.next().unwrap())
                }
                Entry::File { contents, mode } => format!("file {path} {mode:o} {contents:?}"),
                Entry::Symlink { target } => format!("symlink {path} {target}"),
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Writes the tree under `root`.
    fn materialize(&self, root: &Path) {
        let at = |path: &str| root.join(path.trim_start_matches('/'));
        let mkdirs = |dest: &Path| std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        for (path, entry) in &self.entries {
            let dest = at(path);
            match entry {
                Entry::Dir { .. } => std::fs::create_dir_all(&dest).unwrap(),
                Entry::Copy { from } => {
                    mkdirs(&dest);
                    std::fs::copy(from, &dest)
                        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), dest.display()));
                }
                Entry::File { contents, mode } => {
                    mkdirs(&dest);
                    std::fs::write(&dest, contents).unwrap();
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode)).unwrap();
                }
                Entry::Symlink { target } => {
                    mkdirs(&dest);
                    symlink(target, &dest).unwrap();
                }
            }
        }
        // Modes last: create_dir_all made the parents with the umask's.
        for (path, entry) in &self.entries {
            if let Entry::Dir { mode } = entry {
                std::fs::set_permissions(at(path), std::fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }
}

/// The shared libraries `ldd` lists for `binary` (none for a static one).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Vec::new();
    }
    assert!(out.status.success(), "ldd {} failed:\n{text}", binary.display());
    assert!(!text.contains("not found"), "ldd {}: missing libraries:\n{text}", binary.display());
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`,
    // `linux-vdso.so.1 (0x...)` (provided by the kernel).
    text.lines().filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from)).collect()
}

/// Imports `rootfs` as `<repository>:<short hash>` unless that image already exists with the
/// same full hash.
fn build(repository: &str, rootfs: &Rootfs, changes: &[String]) -> String {
    let mut manifest = rootfs.manifest();
    for change in changes {
        manifest.push_str(&format!("change {change}\n"));
    }
    let hash = sha256(&manifest);
    let tag = format!("{repository}:{}", &hash[..12]);

    let existing = Command::new("docker")
        .args(["image", "inspect", "--format", &format!("{{{{ index .Config.Labels {CONTENT_LABEL:?} }}}}"), &tag])
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker (needed to build {tag}): {e}"));
    if existing.status.success() && String::from_utf8_lossy(&existing.stdout).trim() == hash {
        return tag;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    rootfs.materialize(&root);
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--owner=0", "--group=0", "--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar");
    let mut import = Command::new("docker");
    import.arg("import");
    for change in changes.iter().cloned().chain([format!("LABEL {CONTENT_LABEL}={hash}")]) {
        import.arg("--change").arg(change);
    }
    let out = import
        .args(["-", &tag])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker import for {tag}: {e}"));
    let tar_status = tar.wait().expect("wait for tar");
    assert!(out.status.success(), "docker import {tag} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(tar_status.success(), "tar of the {tag} root filesystem failed: {tar_status}");
    tag
}

fn sha256(text: &str) -> String {
    use std::io::Write;
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Runs `cmd` and returns its standard output; panics with `what` and its stderr on failure.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

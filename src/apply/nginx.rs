//! Reaching nginx: as our own child process (same container) or in a companion container through
//! the Docker exec API. Both test a candidate the same way: a POSIX sh script copies nginx's
//! config directory, puts the candidate in place in the copy, and runs `nginx -t` on the copy, so
//! the live file is only replaced by a config that nginx has accepted together with everything
//! else it includes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;
use thiserror::Error;
use tokio::process::{Child, Command};

#[derive(Debug, Error)]
pub enum NginxError {
    #[error("nginx -t rejected the config:\n{output}")]
    TestFailed { output: String },
    #[error("cannot run {what}: {message}")]
    Run { what: String, message: String },
    #[error("nginx -s reload failed (exit {code}): {output}")]
    ReloadFailed { code: i64, output: String },
}

/// A sh function, `reload <main config>`, that reloads nginx where it runs and does what
/// [`Nginx::reload`] does for our own child: it waits for the master's first workers (before them,
/// SIGHUP ends a master still reading its config), reloads, waits up to 30 s for a new worker
/// (none: nginx did not load the config; exit 71), then asks the workers from before the reload to
/// finish with SIGQUIT ([`quit_old_workers`]: a worker that missed the master's message goes on
/// accepting with the old config). The master is the nginx process whose parent is not nginx; its
/// workers are `/proc/<master>/task/<master>/children`. Where /proc shows neither, it only reloads.
macro_rules! reload_fn {
    () => {
        r#"nginx_master() {
  for s in /proc/[0-9]*/stat; do
    read -r pid comm _ ppid _ < "$s" 2>/dev/null || continue
    [ "$comm" = "(nginx)" ] || continue
    read -r _ pcomm _ < "/proc/$ppid/stat" 2>/dev/null || pcomm=
    [ "$pcomm" = "(nginx)" ] || { echo "$pid"; return 0; }
  done
}
reload() {
  m=$(nginx_master) || m=
  kids="/proc/$m/task/$m/children"
  if [ -z "$m" ] || [ ! -r "$kids" ]; then nginx -c "$1" -s reload; return; fi
  i=0
  while [ -z "$(cat "$kids")" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
  before=$(cat "$kids")
  nginx -c "$1" -s reload || return
  i=0
  while [ $i -lt 3000 ]; do
    for p in $(cat "$kids" 2>/dev/null); do
      case " $before " in *" $p "*) ;; *)
        for old in $before; do
          case " $(cat "$kids" 2>/dev/null) " in *" $old "*) kill -QUIT "$old" 2>/dev/null || true;; esac
        done
        return 0;;
      esac
    done
    sleep 0.01; i=$((i + 1))
  done
  echo "nginx started no new worker within 30 s of the reload, so it did not load the new config; its error log says why" >&2
  return 71
}
"#
    };
}

/// Tests a candidate on a copy of nginx's config directory. Arguments: main config, the file the
/// agent owns (inside the main config's directory), the candidate, and optionally `swap`. First it
/// gives the htpasswd directory beside the target (`render::AUTH_DIR`) to nginx's workers' group,
/// which only the side where nginx runs knows. Paths
/// of the directory inside the copied files are rewritten to the copy, so absolute `include`s
/// stay inside the copy. With `swap` (the companion setup: one exec instead of three), a candidate
/// nginx accepted is renamed over the target, [`SWAPPED`] is printed, and nginx is reloaded; the
/// exit code is then the reload's.
const TEST_SCRIPT: &str = concat!(
    reload_fn!(),
    r#"set -eu
conf="$1"; target="$2"; candidate="$3"; swap="${4:-}"
dir=$(dirname "$conf")
case "$target" in "$dir"/*) ;; *) echo "NGINX_CONF $target is not inside nginx's config directory $dir" >&2; exit 3;; esac
# The htpasswd files beside the config: readable by the group of nginx's workers (the `user`
# directive's group, else its user's, else nginx's default: nogroup where it exists, else
# nobody); the directory passes its group on to the files the agent writes later (setgid).
auth="$(dirname "$target")/smart-proxy-htpasswd"
if [ -d "$auth" ] && [ "$(id -u)" = 0 ]; then
  set -- $(sed -n 's/^[[:space:]]*user[[:space:]][[:space:]]*\([^;#]*\);.*/\1/p' "$conf" | head -n 1)
  if [ $# -ge 2 ]; then group=$2
  elif [ $# = 1 ]; then group=$(id -gn "$1" 2>/dev/null || echo "$1")
  elif grep -q '^nogroup:' /etc/group; then group=nogroup
  else group=nobody; fi
  { chgrp -R "$group" "$auth" && chmod g+s "$auth"; } || echo "smart-proxy: cannot give $auth to group $group; nginx's workers may not read the htpasswd files" >&2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -rL "$dir/." "$tmp/"
# The agent's insight file (render::INSIGHT_LOG) is nginx's to append to, not config: its copy
# is emptied before the paths are rewritten.
for f in "$tmp"/smart-proxy-insight.log "$tmp"/*/smart-proxy-insight.log; do if [ -f "$f" ]; then : > "$f"; fi; done
grep -rlF "$dir/" "$tmp" | while IFS= read -r f; do sed -i "s#$dir/#$tmp/#g" "$f"; done
cp "$candidate" "$tmp/${target#"$dir"/}"
if out=$(nginx -t -q -c "$tmp/${conf#"$dir"/}" 2>&1); then rc=0; else rc=$?; fi
# The copy's paths are the real ones to the reader (and the same on every test).
printf '%s\n' "$out" | sed "s#$tmp/#$dir/#g"
if [ "$rc" != 0 ] || [ "$swap" != swap ]; then exit "$rc"; fi
mv -f "$candidate" "$target" || { echo "cannot rename $candidate to $target" >&2; exit 70; }
echo "smart-proxy: swapped"
reload "$conf"
"#
);

/// The companion's reload: `reload <main config>` (see [`reload_fn!`]).
const RELOAD_SCRIPT: &str = concat!(reload_fn!(), "reload \"$1\"\n");

/// The line the test script prints once it renamed the tested candidate over the target.
const SWAPPED: &str = "smart-proxy: swapped";

/// What came of [`Nginx::test_swap_reload`].
#[derive(Debug)]
pub enum Swap {
    /// nginx rejected the candidate (its output); nothing was renamed or reloaded.
    Rejected(String),
    /// The candidate is live on disk and nginx was told to reload; `tested` is how long the test
    /// took (from the start of the exec to the swap).
    Reloaded { tested: Duration },
}

/// How the agent reaches nginx.
pub enum Nginx {
    Local(LocalNginx),
    Companion(CompanionNginx),
}

pub struct LocalNginx {
    pub bin: PathBuf,
    pub main_conf: PathBuf,
    pub child: Option<Child>,
}

pub struct CompanionNginx {
    pub docker: Docker,
    /// Name or id of the nginx container.
    pub container: String,
    pub main_conf: PathBuf,
}

impl Nginx {
    /// Tests `candidate` as if it were at `target`.
    pub async fn test(&self, target: &Path, candidate: &Path) -> Result<(), NginxError> {
        let args = [path_str(self.main_conf()), path_str(target), path_str(candidate)];
        let (code, output) = match self {
            Nginx::Local(local) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(TEST_SCRIPT).arg("sh").args(args);
                if let Some(dir) = local.bin.parent().filter(|d| !d.as_os_str().is_empty()) {
                    let path = std::env::var("PATH").unwrap_or_default();
                    cmd.env("PATH", format!("{}:{path}", dir.display()));
                }
                let out = cmd
                    .output()
                    .await
                    .map_err(|e| NginxError::Run { what: "sh (nginx -t)".into(), message: e.to_string() })?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                (i64::from(out.status.code().unwrap_or(-1)), text)
            }
            Nginx::Companion(c) => {
                let mut cmd = vec!["sh".to_string(), "-c".into(), TEST_SCRIPT.into(), "sh".into()];
                cmd.extend(args);
                c.exec(cmd).await?
            }
        };
        if code == 0 {
            Ok(())
        } else {
            Err(NginxError::TestFailed { output: tidy(&output) })
        }
    }

    /// Tests the candidate, renames it over `target` and reloads nginx in one Docker exec: the
    /// companion setup's fast path, one exec instead of three round trips. `None` for our own child,
    /// where the test, a rename and a signal cost no round trip, it is not offered
    /// ([`Nginx::swaps_in_one_exec`]).
    pub async fn test_swap_reload(&self, target: &Path, candidate: &Path) -> Result<Swap, NginxError> {
        let Nginx::Companion(c) = self else {
            unreachable!("test_swap_reload is only offered where swaps_in_one_exec() is true")
        };
        let mut cmd = vec!["sh".to_string(), "-c".into(), TEST_SCRIPT.into(), "sh".into()];
        cmd.extend([path_str(&c.main_conf), path_str(target), path_str(candidate), "swap".into()]);
        let started = tokio::time::Instant::now();
        let run = c.exec_marked(cmd, SWAPPED).await;
        run.and_then(|(code, output, swapped)| match swapped {
            None if code == 70 => Err(NginxError::Run { what: "mv (swap)".into(), message: output.trim().to_string() }),
            None if code == 0 => Err(NginxError::Run {
                what: "the test script".into(),
                message: format!("exited 0 without swapping: {}", output.trim()),
            }),
            None => Ok(Swap::Rejected(tidy(&output))),
            Some(at) if code == 0 => Ok(Swap::Reloaded { tested: at - started }),
            Some(_) => {
                let after = output.split_once(SWAPPED).map_or(output.as_str(), |(_, rest)| rest);
                Err(NginxError::ReloadFailed { code, output: after.trim().to_string() })
            }
        })
    }

    /// Whether nginx sees `dir` as the agent does (the same directory, not one of the same name):
    /// always for the agent's child; in the companion container when a volume mounts it in both
    /// (the same device and inode, through `stat` in the container).
    pub async fn shares_dir(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Nginx::Companion(c) = self else { return true };
        let Ok(ours) = std::fs::metadata(dir) else { return false };
        let cmd = vec!["stat".to_string(), "-c".to_string(), "%d %i".to_string(), path_str(dir)];
        match c.exec(cmd).await {
            Ok((0, out)) => out.trim() == format!("{} {}", ours.dev(), ours.ino()),
            _ => false,
        }
    }

    /// Whether [`Nginx::test_swap_reload`] is offered: in the companion setup.
    pub fn swaps_in_one_exec(&self) -> bool {
        matches!(self, Nginx::Companion(_))
    }

    /// Tells nginx to load the config now on disk; `false` when nginx is not running yet (our
    /// child before its start: it reads the file when it starts).
    pub async fn reload(&self) -> Result<bool, NginxError> {
        match self {
            Nginx::Local(local) => {
                // Not started yet: nginx reads the file when it starts.
                let Some(pid) = local.child.as_ref().and_then(Child::id) else { return Ok(false) };
                // A master that has no worker yet is still reading its config, and until then
                // SIGHUP's default action ends it: wait for its first workers.
                let started = tokio::time::Instant::now() + RELOAD_CONFIRM;
                while worker_pids(pid).is_some_and(|w| w.is_empty()) && tokio::time::Instant::now() < started {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let before = worker_pids(pid);
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP)
                    .map_err(|e| NginxError::Run { what: "kill -HUP nginx".into(), message: e.to_string() })?;
                // SIGHUP says nothing about success: nginx starts new workers only when the new
                // config loaded (it can still fail, e.g. out of file descriptors).
                let Some(before) = before else { return Ok(true) };
                let deadline = tokio::time::Instant::now() + RELOAD_CONFIRM;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if worker_pids(pid).is_some_and(|now| now.iter().any(|p| !before.contains(p))) {
                        quit_old_workers(pid, &before);
                        return Ok(true);
                    }
                }
                Err(NginxError::ReloadFailed {
                    code: -1,
                    output: format!(
                        "nginx started no new worker within {RELOAD_CONFIRM:?} of SIGHUP, so it did not load the new config; its error log says why"
                    ),
                })
            }
            Nginx::Companion(c) => {
                let main = path_str(&c.main_conf);
                let (code, output) =
                    c.exec(vec!["sh".into(), "-c".into(), RELOAD_SCRIPT.into(), "sh".into(), main]).await?;
                if code == 0 {
                    Ok(true)
                } else {
                    Err(NginxError::ReloadFailed { code, output: output.trim().to_string() })
                }
            }
        }
    }

    /// Reloads an nginx this process did not start (the `certs renew` command): through its pid
    /// file locally, or by exec in the companion container.
    pub async fn reload_running(&self) -> Result<(), NginxError> {
        match self {
            Nginx::Local(local) => {
                let out = Command::new(&local.bin)
                    .arg("-c")
                    .arg(&local.main_conf)
                    .args(["-s", "reload"])
                    .output()
                    .await
                    .map_err(|e| NginxError::Run { what: "nginx -s reload".into(), message: e.to_string() })?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(NginxError::ReloadFailed {
                        code: i64::from(out.status.code().unwrap_or(-1)),
                        output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    })
                }
            }
            Nginx::Companion(_) => self.reload().await.map(|_| ()),
        }
    }

    fn main_conf(&self) -> &Path {
        match self {
            Nginx::Local(l) => &l.main_conf,
            Nginx::Companion(c) => &c.main_conf,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Nginx::Local(l) => format!("local nginx ({})", l.bin.display()),
            Nginx::Companion(c) => format!("nginx container {}", c.container),
        }
    }
}

/// nginx holds a file open per log (two per domain up to `ERROR_LOGS_MAX` domains) besides its
/// connections, and inherits the agent's limit of open files: the soft limit is raised to the
/// hard one (at most 2^20) before nginx starts, since a shell's 1024 does not hold 1,000 domains.
/// `nginx -t` opens every log too: the agent and the follower call it first thing as well.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let wanted = hard.min(1 << 20);
    if soft < wanted {
        match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
            Ok(()) => tracing::debug!(from = soft, to = wanted, "raised the limit of open files for nginx"),
            Err(e) => tracing::warn!("cannot raise the limit of open files from {soft} to {wanted}: {e}"),
        }
    }
}

impl LocalNginx {
    /// Starts `nginx -g 'daemon off;'` as a child, in a process group of its own: its workers
    /// outlive a master killed with SIGKILL (and keep serving the old config on its port), so a
    /// forced stop kills the whole group ([`LocalNginx::stop`], and dropping a running one).
    pub fn start(&mut self) -> Result<(), NginxError> {
        raise_open_files_limit();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.main_conf)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| NginxError::Run {
                what: format!("{} -g 'daemon off;'", self.bin.display()),
                message: e.to_string(),
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Asks the child to stop gracefully (SIGQUIT), waiting up to `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else { return };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGQUIT);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            kill_group(child);
            let _ = child.wait().await;
        }
        self.child = None;
    }
}

impl Drop for LocalNginx {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_group(child);
        }
    }
}

/// SIGKILL to a running child's process group: nginx's master and its workers.
fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

impl CompanionNginx {
    /// Runs a command in the nginx container; returns its exit code and combined output.
    async fn exec(&self, cmd: Vec<String>) -> Result<(i64, String), NginxError> {
        self.exec_marked(cmd, "").await.map(|(code, output, _)| (code, output))
    }

    /// [`CompanionNginx::exec`], also returning when the output first contained `marker` (when
    /// `marker` is not empty).
    async fn exec_marked(
        &self,
        cmd: Vec<String>,
        marker: &str,
    ) -> Result<(i64, String, Option<tokio::time::Instant>), NginxError> {
        let what = format!("docker exec {} {}", self.container, cmd.first().map(String::as_str).unwrap_or(""));
        let run = |e: bollard::errors::Error| NginxError::Run { what: what.clone(), message: e.to_string() };
        let exec = self
            .docker
            .create_exec(
                &self.container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd),
                    ..Default::default()
                },
            )
            .await
            .map_err(run)?;
        let mut output = String::new();
        let mut seen = None;
        if let StartExecResults::Attached { output: mut stream, .. } =
            self.docker.start_exec(&exec.id, None).await.map_err(run)?
        {
            while let Some(chunk) = stream.next().await {
                output.push_str(&chunk.map_err(run)?.to_string());
                if seen.is_none() && !marker.is_empty() && output.contains(marker) {
                    seen = Some(tokio::time::Instant::now());
                }
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.map_err(run)?;
        Ok((inspect.exit_code.unwrap_or(-1), output, seen))
    }
}

/// How long a reload may take before it counts as failed (10,000 routes take a few seconds).
const RELOAD_CONFIRM: Duration = Duration::from_secs(30);

/// Asks the workers of the config before a reload (still children of `master`) to finish
/// gracefully, as the reload itself did: nginx tells them through a channel, and a worker that
/// misses it goes on accepting with the old config (seen under CI load: a first-generation worker
/// still answering 502 from the config before the reload, and outliving its master). SIGQUIT is
/// the same request by the other way a worker listens; one already finishing ignores it.
fn quit_old_workers(master: u32, before: &[u32]) {
    for old in worker_pids(master).unwrap_or_default().into_iter().filter(|p| before.contains(p)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGQUIT);
    }
}

/// The nginx master's child processes (workers), when the kernel shows them.
fn worker_pids(master: u32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).ok()?;
    Some(text.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// nginx's output without what differs from one run to the next (the time and the process id of
/// `2026/12/04 13:09:42 [emerg] 16319#16319: `), so the same error reads the same each time.
fn tidy(output: &str) -> String {
    let line = |l: &str| -> String {
        let b = l.as_bytes();
        let stamped = b.len() > 20
            && b[..19].iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'/',
                10 => *c == b' ',
                13 | 16 => *c == b':',
                _ => c.is_ascii_digit(),
            })
            && b[19] == b' ';
        let rest = if stamped { &l[20..] } else { l };
        // `[emerg] 16319#16319: message` → `[emerg] message`
        if let Some((level, after)) = rest.split_once("] ") {
            if let Some((pid, message)) = after.split_once(": ") {
                if level.starts_with('[') && !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit() || c == '#') {
                    return format!("nginx: {level}] {message}");
                }
            }
        }
        rest.to_string()
    };
    output.trim().lines().map(line).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod script_tests {
    #[test]
    fn the_test_script_knows_the_htpasswd_directory() {
        let line = format!("auth=\"$(dirname \"$target\")/{}\"\n", crate::render::AUTH_DIR);
        assert!(super::TEST_SCRIPT.contains(&line), "{line}");
    }
}

#[cfg(test)]
mod tidy_tests {
    #[test]
    fn the_time_and_pid_are_removed() {
        let out = "2026/12/04 13:09:42 [emerg] 16319#16319: unknown directive \"x\" in /etc/nginx/conf.d/default.conf:4\nnginx: configuration file /etc/nginx/nginx.conf test failed\n";
        assert_eq!(
            super::tidy(out),
            "nginx: [emerg] unknown directive \"x\" in /etc/nginx/conf.d/default.conf:4\nnginx: configuration file /etc/nginx/nginx.conf test failed"
        );
        assert_eq!(super::tidy("nginx: [emerg] open() \"/x\" failed"), "nginx: [emerg] open() \"/x\" failed");
    }
}

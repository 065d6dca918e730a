//! The agent's end of `INSIGHT`: the file nginx appends each request's figures to
//! (`insight::INSIGHT_LOG_FORMAT`, one line each), read as it grows into the shared
//! [`Insight`](crate::insight::Insight) on a thread of its own; the tick that judges anomalies
//! every few seconds; and `heal=restart`.
//!
//! Why a file: nginx writes it through a 64 KiB buffer flushed at least once a second
//! (`buffer=64k flush=1s`), one `write` for hundreds of lines, so reading it costs nginx almost
//! nothing (a datagram per line through `syslog:` cost it a `send` per request, and the kernel's
//! short queue for Unix datagrams lost lines under load). Nothing is lost when
//! the agent is slow: the lines wait in the file. What the agent has read is cut from the file's
//! start, so it stays small. The file lives beside NGINX_CONF, on the volume the companion setup
//! shares, so nginx in another container writes it too.
//!
//! When the agent sees nginx's `LOG_DIR` and nginx holds each domain's JSON access log open, those files
//! carry the same figures (`insight::ACCESS_LOG_FORMAT`) and the agent reads them instead
//! (`render::Renderer::insight_access_logs`, handed over through `State::set_insight_files`):
//! nginx then writes one line per request, not two; in the companion setup too when `LOG_DIR` is
//! on a volume in both containers. They are the user's files: the agent never writes them, reads
//! each from where it stood before the apply that routed its domain, and follows their rotation
//! (renamed and made again, or copied and truncated).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::Timing;
use crate::insight::{AnomalyEvent, Candidate, HealConfig, MAX_ACCESS_LINE, MAX_LINE};
use crate::routes::{BackendState, Origin, RouteTable};
use crate::sources::docker::DockerApi;
use crate::sources::label_schema::Heal;
use crate::sources::labels::{self, Container};
use crate::status::{now_ms, EventKind, FileStart, HealTarget, InsightFile, InsightFiles, State};

/// How often anomalies are judged (the insight windows' finest slot).
const TICK: Duration = Duration::from_secs(5);

/// Opens `file` (creating it), and starts reading it and ticking.
pub(super) fn start(
    file: &Path,
    status: Arc<State>,
    docker: Option<Arc<dyn DockerApi>>,
    timing: Timing,
) -> anyhow::Result<()> {
    let own = Tail::open(file).map_err(|e| {
        anyhow::anyhow!("insight: cannot open {} to read nginx's lines: {e} (or set INSIGHT=off)", file.display())
    })?;
    info!(file = %file.display(), "insight: reading nginx's access-log lines");
    let state = status.clone();
    let mut reader = Reader::new(own);
    // Before the reader, so that it is in the normal class.
    cutter();
    std::thread::Builder::new().name("insight-reader".into()).spawn(move || {
        run_when_idle();
        loop {
            if let Err(e) = read(&mut reader, &state) {
                warn!("insight: reading {} failed ({e}); trying again in 5 s", reader.own.path.display());
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    })?;
    status.insight().set_warmup(timing.anomaly_warmup_minutes);
    if docker.is_some() {
        let config = HealConfig { failing_for_ms: timing.heal_after.as_millis() as u64, ..HealConfig::default() };
        status.insight().enable_healing(config);
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let events = status.insight().tick(now_ms());
            for event in &events {
                log(event);
                status.event(EventKind::Anomaly, crate::dashboard::events::anomaly_text(event));
            }
            if let Some(docker) = &docker {
                heal(&status, docker.as_ref()).await;
            }
        }
    });
    Ok(())
}

/// Puts the calling thread, the reader, in Linux's `SCHED_IDLE` class: it runs on the CPU time
/// the other threads of its cgroup (nginx, the apps, their clients, on a host) leave, and never
/// preempts them. Its reading takes about 3 % of nginx's CPU, but in the normal class each
/// wake-up took a core from nginx and the processes it passes requests to: on two busy cores
/// nginx lost 7-13 % of its throughput that way (0.869 of files only against 0.999 in this class,
/// same run: `benches/ingest.rs`, docs/insight.md). On a host whose every core is busy the reader
/// still gets a small share (a few thousand lines a second); lines it has not read yet wait in
/// the files. It never takes a lock nginx needs: the cuts of the insight file are made on another
/// thread ([`in_normal_class`]).
fn run_when_idle() {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, which outlives the call; pid 0 is this thread.
    let result = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        warn!("insight: cannot run the reader in the idle class ({error}): it competes with nginx for the CPU");
    }
}

/// How often the reader looks for new lines (nginx writes them at the latest a second after the
/// request).
const POLL: Duration = Duration::from_millis(100);
/// The most read at once.
const CHUNK: usize = 1 << 20;
/// Once this much was read, it is cut from the file's start (`nginx -t` copies the config
/// directory, this file with it: it stays small).
const CUT_AFTER: u64 = 1 << 20;
/// Where the file system cannot cut a file's start: the file is emptied once this much was read
/// and nothing more is waiting.
const EMPTY_AFTER: u64 = 64 << 20;
/// How often the reader checks that the path still names the file it reads.
const RECHECK: Duration = Duration::from_secs(5);
/// How long a file replaced at its path must have stopped growing before the new one is read:
/// nginx writes the old one until it reopens its logs (logrotate's postrotate, a reload), at the
/// latest a second (its `flush`) after a line.
const DRAIN: Duration = Duration::from_secs(3);

/// Lines (or bytes) past which the reader waits for the figures rather than hold more.
const HOLD_LINES: usize = 65_536;
const HOLD_BYTES: usize = 8 << 20;

/// What the reader reads: the insight file, and each domain's access log when nginx writes the
/// figures there instead (`State::insight_files`).
struct Reader {
    own: Tail,
    /// Lines of the insight file not yet counted.
    lines: Lines,
    access: Vec<AccessLog>,
    /// Lines of the access logs not yet counted, and the index in `access` of each one's file
    /// (the list is only taken again once they are counted).
    access_lines: Lines,
    line_files: Vec<u32>,
    /// The file the next look starts with (a look that stopped at the limits goes on from there).
    next: usize,
    /// The revision of the access-log list read last.
    revision: u64,
    /// One read buffer for every file.
    buf: Vec<u8>,
}

/// A domain's access log, read once nginx made it.
struct AccessLog {
    domain: String,
    path: PathBuf,
    tail: Option<Tail>,
    /// Where reading starts when the file is opened: as the list said for the first open, at its
    /// end after a read error (a line may be lost, none is counted twice).
    start: Start,
    /// While the file cannot be opened: since when, and when it was last tried (every [`POLL`]
    /// for a [`RECHECK`], then every [`RECHECK`]); the reason is logged once.
    missing: Option<Missing>,
}

#[derive(Debug, Clone, Copy)]
enum Start {
    Listed(FileStart),
    End,
}

struct Missing {
    since: Instant,
    tried: Instant,
    said: bool,
}

/// Where each of `files` stands now (before an apply).
pub(super) fn file_starts(files: &[(String, PathBuf)]) -> std::collections::HashMap<PathBuf, FileStart> {
    files.iter().map(|(_, path)| (path.clone(), FileStart::of(path))).collect()
}

/// `files` with the starts taken before the apply (a file not looked at then: as it is now).
pub(super) fn with_starts(
    files: Vec<(String, PathBuf)>,
    starts: &std::collections::HashMap<PathBuf, FileStart>,
) -> InsightFiles {
    files
        .into_iter()
        .map(|(domain, path)| {
            let start = starts.get(&path).copied().unwrap_or_else(|| FileStart::of(&path));
            InsightFile { domain, path, start }
        })
        .collect()
}

impl Reader {
    fn new(own: Tail) -> Reader {
        Reader {
            own,
            lines: Lines::default(),
            access: Vec::new(),
            access_lines: Lines::default(),
            line_files: Vec::new(),
            next: 0,
            revision: 0,
            buf: vec![0; CHUNK],
        }
    }

    /// Takes the access-log list when it changed (and no line read is waiting to be counted):
    /// files kept stay open where they were; a file new to the list is read from where the list
    /// says.
    fn update(&mut self, status: &State) {
        if !self.access_lines.ends.is_empty() {
            return;
        }
        let Some((revision, files)) = status.insight_files_since(self.revision) else { return };
        self.revision = revision;
        let mut old: std::collections::HashMap<(String, PathBuf), AccessLog> =
            self.access.drain(..).map(|a| ((a.domain.clone(), a.path.clone()), a)).collect();
        for file in files.iter() {
            let kept = old.remove(&(file.domain.clone(), file.path.clone()));
            self.access.push(kept.unwrap_or_else(|| {
                let mut log = AccessLog {
                    domain: file.domain.clone(),
                    path: file.path.clone(),
                    tail: None,
                    start: Start::Listed(file.start),
                    missing: None,
                };
                log.open();
                log
            }));
        }
        self.next = 0;
    }

    /// Reads what every file added, and counts it. Lines wait (up to [`HOLD_LINES`] and
    /// [`HOLD_BYTES`]) while `/insight` holds the figures; past that the reader waits for them.
    fn read(&mut self, status: &State) -> std::io::Result<()> {
        let others = self.access_lines.held();
        while !others.add(self.lines.held()).full() && self.own.read(&mut self.buf, &mut self.lines)? {}
        // Each file up to what the reader holds in all (the files after it wait for the next look,
        // which starts with them).
        let n = self.access.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.access_lines.held().add(self.lines.held()).full() {
                self.next = i;
                break;
            }
            let before = self.access_lines.ends.len();
            let (a, lines, buf) = (&mut self.access[i], &mut self.access_lines, &mut self.buf);
            a.read(buf, lines, self.lines.held());
            self.line_files.extend(std::iter::repeat_n(i as u32, self.access_lines.ends.len() - before));
        }
        let held = self.access_lines.held().add(self.lines.held());
        if held.0 > 0 {
            let insight = if held.full() { Some(status.insight()) } else { status.try_insight() };
            if let Some(insight) = insight {
                self.count(status, insight);
            }
        }
        self.own.release()
    }

    /// Counts every line held, at most [`SLICE`] under the figures' lock at a time: the reader
    /// is in the idle class and may wait long for a core while it holds the lock, and whoever
    /// else needs it (the tick, `/metrics`, `/insight`, an apply) then waits for one slice, not
    /// for a whole batch. Between slices it lets the waiters go first.
    fn count(&mut self, status: &State, first: std::sync::MutexGuard<'_, crate::insight::Insight>) {
        let now = now_ms();
        let mut insight = Some(first);
        let lock = |insight: &mut Option<_>| {
            if insight.is_none() {
                std::thread::yield_now();
                *insight = Some(status.insight());
            }
        };
        let own = self.lines.ends.len();
        for from in (0..own).step_by(SLICE) {
            lock(&mut insight);
            let guard = insight.as_mut().expect("locked");
            self.lines.range(from, (from + SLICE).min(own)).for_each(|line| guard.ingest(line, now));
            insight = None;
        }
        self.lines.clear();
        // Lines come in runs from one file: each run (or slice of it) is counted with one domain
        // lookup.
        let mut at = 0;
        while let Some(&file) = self.line_files.get(at) {
            let run = self.line_files[at..].iter().take_while(|&&f| f == file).count().min(SLICE);
            if let Some(a) = self.access.get(file as usize) {
                lock(&mut insight);
                let guard = insight.as_mut().expect("locked");
                guard.ingest_access(&a.domain, self.access_lines.range(at, at + run), now);
                insight = None;
            }
            at += run;
        }
        self.access_lines.clear();
        self.line_files.clear();
    }
}

/// Runs `work` on the `insight-cutter` thread, in the normal scheduling class, and waits for its
/// result. A cut of the insight file holds the file's lock that nginx's appends take: the
/// reader, in the idle class, could be kept off the CPU while it held it, and nginx would wait.
/// The thread is started by [`start`] before the reader (a thread inherits its creator's
/// class); without it the work runs here.
fn in_normal_class<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(jobs) = cutter() else { return work() };
    let (done, result) = std::sync::mpsc::sync_channel(1);
    let job: CutJob = Box::new(move || {
        let _ = done.send(work());
    });
    // Should the thread be gone, the job comes back and runs here.
    if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
        job();
    }
    result.recv().expect("the job answers once it ran")
}

type CutJob = Box<dyn FnOnce() + Send>;

/// The `insight-cutter` thread's queue, started at the first call.
fn cutter() -> Option<&'static std::sync::mpsc::Sender<CutJob>> {
    static JOBS: std::sync::OnceLock<Option<std::sync::mpsc::Sender<CutJob>>> = std::sync::OnceLock::new();
    JOBS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<CutJob>();
        let spawned = std::thread::Builder::new().name("insight-cutter".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                warn!("insight: cannot start the insight-cutter thread ({e}); the reader cuts its file itself");
                None
            }
        }
    })
    .as_ref()
}

/// Lines counted under one hold of the figures' lock (about half a millisecond's work).
const SLICE: usize = 1024;

impl AccessLog {
    /// Opens the file where [`AccessLog::start`] says; while it cannot be, says why once.
    fn open(&mut self) {
        match Tail::open_access(&self.path, self.start) {
            Ok(tail) => {
                self.tail = Some(tail);
                self.missing = None;
                self.start = Start::End;
            }
            Err(e) => {
                let now = Instant::now();
                let missing = self.missing.get_or_insert(Missing { since: now, tried: now, said: false });
                missing.tried = now;
                if e.kind() == std::io::ErrorKind::NotFound {
                    // Gone or not made yet: nginx makes it again (a reload), every line new.
                    if let Start::Listed(_) = self.start {
                        self.start = Start::Listed(FileStart::Beginning);
                    }
                } else if !missing.said {
                    warn!(
                        "insight: cannot read {} ({e}); {}'s figures stay empty until it can",
                        self.path.display(),
                        self.domain
                    );
                    missing.said = true;
                }
            }
        }
    }

    /// Reads what the file added into `lines`, while they and `others` stay under the limits
    /// (after an I/O error, the file is opened again at its end).
    fn read(&mut self, buf: &mut [u8], lines: &mut Lines, others: Held) {
        if self.tail.is_none() {
            let due = self.missing.as_ref().is_none_or(|m| m.since.elapsed() < RECHECK || m.tried.elapsed() >= RECHECK);
            if !due {
                return;
            }
            self.open();
        }
        let Some(tail) = &mut self.tail else { return };
        loop {
            match tail.read(buf, lines) {
                Ok(true) if !others.add(lines.held()).full() => continue,
                Ok(_) => return,
                Err(e) => {
                    warn!("insight: reading {} failed ({e}); opening it again at its end", self.path.display());
                    self.tail = None;
                    self.start = Start::End;
                    return;
                }
            }
        }
    }
}

/// Reads new lines every [`POLL`] and hands them to the figures, until an I/O error on the
/// insight file (the lines read stay held).
fn read(reader: &mut Reader, status: &State) -> std::io::Result<()> {
    loop {
        reader.update(status);
        reader.read(status)?;
        std::thread::sleep(POLL);
    }
}

/// Lines and bytes held, against [`HOLD_LINES`] and [`HOLD_BYTES`].
#[derive(Debug, Clone, Copy)]
struct Held(usize, usize);

impl Held {
    fn add(self, other: Held) -> Held {
        Held(self.0 + other.0, self.1 + other.1)
    }

    fn full(self) -> bool {
        self.0 >= HOLD_LINES || self.1 >= HOLD_BYTES
    }
}

/// Complete lines read and not yet counted, end to end.
#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    fn held(&self) -> Held {
        Held(self.ends.len(), self.bytes.len())
    }

    fn push(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.ends.push(self.bytes.len());
    }

    /// Lines `from..to`.
    fn range(&self, from: usize, to: usize) -> impl Iterator<Item = &[u8]> {
        let mut start = if from == 0 { 0 } else { self.ends[from - 1] };
        self.ends[from..to].iter().map(move |&end| {
            let line = &self.bytes[start..end];
            start = end;
            line
        })
    }

    #[cfg(test)]
    fn each(&self, mut f: impl FnMut(&[u8])) {
        let mut start = 0;
        for &end in &self.ends {
            f(&self.bytes[start..end]);
            start = end;
        }
    }

    /// Empties it; a burst's memory is given back.
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        if self.bytes.capacity() > 1 << 20 {
            self.bytes.shrink_to(256 << 10);
            self.ends.shrink_to(4096);
        }
    }
}

/// A file of lines as read: nginx appends whole lines (each worker its buffer, in one `write`);
/// a read may still catch one half written, so the part after the last newline waits for the rest.
struct Tail {
    path: PathBuf,
    file: File,
    /// Read up to here.
    offset: u64,
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// In a line longer than `max_line`: its first bytes were counted (as oversized), the rest
    /// is skipped up to its newline.
    skipping: bool,
    /// Longer lines are cut (and counted as oversized).
    max_line: usize,
    /// False once the file system refused to cut the file's start (then it is emptied instead).
    cut: bool,
    /// True for the insight file when the agent may write it: what was read is cut. False when
    /// the agent may only read it (made by another user's nginx), and for the access logs (the
    /// user's files, rotated by the user).
    writable: bool,
    /// The insight file is made again when it was removed; an access log is only opened.
    own: bool,
    checked: Instant,
    /// When the file last grew: a file replaced at its path is read on until it stopped growing
    /// for [`DRAIN`] (nginx writes the old file until it reopens its logs).
    grew: Instant,
}

impl Tail {
    /// Opens (creating) the insight file; lines already there (a previous run's) are skipped.
    fn open(path: &Path) -> std::io::Result<Tail> {
        let (file, writable) = Self::open_file(path)?;
        let mut tail = Tail::new(path, file, writable, MAX_LINE);
        tail.own = true;
        tail.skip_to_end()?;
        Ok(tail)
    }

    /// Opens a domain's access log, read only, where `start` says: its end; or where it stood
    /// before the apply while it is the same file, else its start.
    fn open_access(path: &Path, start: Start) -> std::io::Result<Tail> {
        use std::os::unix::fs::MetadataExt;
        let mut tail = Tail::new(path, File::open(path)?, false, MAX_ACCESS_LINE);
        let meta = tail.file.metadata()?;
        match start {
            Start::End => tail.skip_to(meta.len())?,
            Start::Listed(FileStart::At { ino, offset }) if ino == meta.ino() => tail.skip_to(offset)?,
            // Made again since (rotated), or made since: every line is new.
            Start::Listed(_) => {}
        }
        Ok(tail)
    }

    fn new(path: &Path, file: File, writable: bool, max_line: usize) -> Tail {
        Tail {
            path: path.to_path_buf(),
            file,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
            max_line,
            cut: true,
            writable,
            own: false,
            checked: Instant::now(),
            grew: Instant::now(),
        }
    }

    /// Starts after the last complete line.
    fn skip_to_end(&mut self) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        self.skip_to(len)
    }

    /// Starts at `offset` (at most the file's length), or after the line it falls in.
    fn skip_to(&mut self, offset: u64) -> std::io::Result<()> {
        let offset = offset.min(self.file.metadata()?.len());
        if offset > 0 {
            let mut last = [0u8; 1];
            self.file.read_exact_at(&mut last, offset - 1)?;
            self.offset = offset;
            self.skipping = last[0] != b'\n';
        }
        Ok(())
    }

    /// The file, and whether the agent may write it (when it may only read it, it says so: the
    /// file then grows until someone else trims it).
    fn open_file(path: &Path) -> std::io::Result<(File, bool)> {
        let new = !path.exists();
        let open = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path);
        let (file, writable) = match open {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                warn!("insight: {} can be read but not written by the agent ({e}), so it is never trimmed and grows; give the agent's user write access to it", path.display());
                (File::open(path)?, false)
            }
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        if new {
            // nginx's master opens it (to append) as whatever user it runs as: root in the
            // images here, not always in the companion setup. What is written is counted, never
            // trusted beyond that.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o666))?;
        }
        Ok((file, writable))
    }

    /// Reads what was added since the last read into `lines` (through `buf`, at most its size);
    /// true when there may be more.
    fn read(&mut self, buf: &mut [u8], lines: &mut Lines) -> std::io::Result<bool> {
        let len = self.file.metadata()?.len();
        if len < self.offset {
            // Emptied by someone else (or copied and truncated by logrotate): start again at its start.
            self.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        if len == self.offset {
            if self.checked.elapsed() >= RECHECK && self.grew.elapsed() >= DRAIN {
                self.checked = Instant::now();
                return self.reopen_if_replaced();
            }
            return Ok(false);
        }
        let want = ((len - self.offset) as usize).min(buf.len());
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        self.offset += n as u64;
        self.grew = Instant::now();
        self.split(&buf[..n], lines);
        Ok(n == buf.len())
    }

    /// Splits `read` into lines (one longer than `max_line` goes in cut at `max_line + 1` bytes,
    /// to be counted as oversized, and its rest is skipped).
    fn split(&mut self, read: &[u8], lines: &mut Lines) {
        let max = self.max_line;
        let mut rest = read;
        while !rest.is_empty() {
            let newline = memchr::memchr(b'\n', rest);
            let (piece, ends) = match newline {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = newline.map_or(&[][..], |i| &rest[i + 1..]);
            if self.skipping {
                self.skipping = !ends;
                continue;
            }
            if self.partial.len() + piece.len() > max {
                let room = max + 1 - self.partial.len().min(max + 1);
                self.partial.extend_from_slice(&piece[..room.min(piece.len())]);
                lines.push(&self.partial);
                self.partial.clear();
                self.skipping = !ends;
            } else if ends {
                if self.partial.is_empty() {
                    lines.push(piece);
                } else {
                    self.partial.extend_from_slice(piece);
                    lines.push(&self.partial);
                    self.partial.clear();
                    // A thousand files each keeping a long line's room would add up.
                    self.partial.shrink_to(1024);
                }
            } else {
                self.partial.extend_from_slice(piece);
            }
        }
    }

    /// Gives back what was read: cuts it from the file's start (`FALLOC_FL_COLLAPSE_RANGE`, which
    /// nginx's appends cannot race), in whole blocks; where the file system cannot, empties the
    /// file once [`EMPTY_AFTER`] was read and nothing more waits (a line nginx appends between
    /// that check and the truncation is lost: a window of microseconds, once per 64 MiB).
    fn release(&mut self) -> std::io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        if !self.writable {
            return Ok(());
        }
        if self.cut && self.offset >= CUT_AFTER {
            // Whole blocks, and never up to the end: the kernel refuses a range that reaches it.
            let meta = self.file.metadata()?;
            let (size, block) = (meta.len(), meta.blksize().max(512));
            let len = self.offset.min(size.saturating_sub(1)) / block * block;
            if len > 0 {
                let fd = self.file.as_raw_fd();
                let collapse = FallocateFlags::FALLOC_FL_COLLAPSE_RANGE;
                // The file outlives the call: in_normal_class waits for it.
                match in_normal_class(move || fallocate(fd, collapse, 0, len as i64)) {
                    Ok(()) => self.offset -= len,
                    Err(nix::errno::Errno::EOPNOTSUPP) => {
                        info!(
                            "insight: {} cannot have its start cut on this file system; it is emptied once 64 MiB were read instead",
                            self.path.display()
                        );
                        self.cut = false;
                    }
                    // Tried again on the next look.
                    Err(e) => tracing::debug!("insight: cutting {}'s start failed: {e}", self.path.display()),
                }
            }
        }
        if !self.cut && self.offset >= EMPTY_AFTER && self.file.metadata()?.len() == self.offset {
            let file = self.file.try_clone()?;
            in_normal_class(move || file.set_len(0))?;
            self.offset = 0;
        }
        Ok(())
    }

    /// nginx creates the file again when it was removed and nginx reloads: then, the old file
    /// read to its end, the new one is read from its start. True when it was.
    fn reopen_if_replaced(&mut self) -> std::io::Result<bool> {
        let Ok(now) = std::fs::metadata(&self.path) else { return Ok(false) };
        let ours = self.file.metadata()?;
        if (now.dev(), now.ino()) == (ours.dev(), ours.ino()) {
            return Ok(false);
        }
        if self.own {
            info!("insight: {} was replaced; reading the new file", self.path.display());
            (self.file, self.writable) = Self::open_file(&self.path)?;
        } else {
            // A rotated access log (renamed, and made again by nginx's reopen).
            tracing::debug!("insight: {} was rotated; reading the new file", self.path.display());
            self.file = File::open(&self.path)?;
        }
        self.offset = 0;
        self.partial.clear();
        self.skipping = false;
        Ok(true)
    }
}

/// Restarts the `heal=restart` containers whose every request failed for `HEAL_AFTER` (the
/// healer decides, and keeps the hourly cap).
async fn heal(status: &State, docker: &dyn DockerApi) {
    let targets = status.heal_targets();
    if targets.is_empty() {
        return;
    }
    let restarts = {
        let candidates: Vec<Candidate> = targets
            .iter()
            .map(|t| Candidate { container: &t.id, server: &t.server, docker_healthy: t.docker_healthy })
            .collect();
        let mut insight = status.insight();
        insight.healer_mut().map(|h| h.decide(&candidates, now_ms())).unwrap_or_default()
    };
    for restart in restarts {
        let name = targets.iter().find(|t| t.id == restart.container).map_or(restart.container.as_str(), |t| &t.name);
        warn!(container = name, server = %restart.server, cause = %restart.cause, "heal: restarting the container");
        let outcome = match docker.restart(&restart.container).await {
            Ok(()) => {
                info!(container = name, "heal: the container restarted");
                "restarted".to_string()
            }
            Err(e) => {
                warn!(container = name, "heal: the restart failed: {e}");
                format!("restart failed: {e}")
            }
        };
        status.event(EventKind::Restart, format!("container {name} {outcome} ({})", restart.cause));
    }
}

/// The containers with `heal=restart` that run, each at every upstream address it has in `table`,
/// and an unhealthy one also under its upstream's name when no server of that upstream is left.
pub(super) fn heal_targets<'a>(
    containers: impl Iterator<Item = &'a Container>,
    table: &RouteTable,
    prefix: &str,
) -> Vec<HealTarget> {
    let healing: std::collections::BTreeMap<&str, &Container> = containers
        // A Swarm task is not a container the agent can restart (Swarm replaces failed tasks).
        .filter(|c| c.running && c.swarm.is_none() && labels::heal(c, prefix) == Heal::Restart)
        .map(|c| (c.name.as_str(), c))
        .collect();
    let mut targets: Vec<HealTarget> = table
        .upstreams
        .iter()
        .flat_map(|u| {
            // An upstream none of whose servers may take traffic has one `down` stand-in, and
            // nginx logs each request's 502 under the upstream's name: a container Docker calls
            // unhealthy (so out of the upstream) is watched there, or no try would ever reach it.
            let all_out = u.backends.iter().all(|b| b.state != BackendState::Up);
            u.backends.iter().flat_map(move |b| {
                let unhealthy = all_out && b.state == BackendState::Unhealthy;
                [Some(b.address()), unhealthy.then(|| u.id.clone())].into_iter().flatten().map(move |s| (b, s))
            })
        })
        .filter_map(|(b, server)| {
            let Origin::Container { name, .. } = &b.origin else { return None };
            let c = healing.get(name.as_str())?;
            Some(HealTarget {
                id: c.id.clone(),
                name: c.name.clone(),
                server,
                docker_healthy: c.health.map(|h| h == labels::Health::Healthy),
            })
        })
        .collect();
    targets.sort_by(|a, b| (&a.id, &a.server).cmp(&(&b.id, &b.server)));
    targets.dedup();
    targets
}

fn log(event: &AnomalyEvent) {
    let f = &event.figures;
    if event.started {
        warn!(
            domain = %event.domain,
            kind = event.kind.as_str(),
            observed = f.observed,
            baseline = f.baseline,
            requests = f.requests,
            "anomaly started"
        );
    } else {
        info!(domain = %event.domain, kind = event.kind.as_str(), observed = f.observed, baseline = f.baseline, "anomaly ended");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    /// A new insight file in a directory of its own, and its reader.
    fn empty() -> (tempfile::TempDir, PathBuf, Tail) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("insight.log");
        let tail = Tail::open(&path).unwrap();
        (dir, path, tail)
    }

    /// Whether the file system of `dir` can cut a file's start.
    fn can_cut(dir: &Path) -> bool {
        use std::os::fd::AsRawFd;
        let probe = dir.join("probe");
        std::fs::write(&probe, vec![0u8; 8192]).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&probe).unwrap();
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_COLLAPSE_RANGE;
        nix::fcntl::fallocate(file.as_raw_fd(), flags, 0, 4096).is_ok()
    }

    /// Everything readable now, as strings (a cut line shows its length).
    fn drain(tail: &mut Tail) -> Vec<String> {
        let (mut lines, mut buf) = (Lines::default(), vec![0; CHUNK]);
        while tail.read(&mut buf, &mut lines).unwrap() {}
        let mut out = Vec::new();
        lines.each(|l| {
            out.push(if l.len() > 100 { format!("{} bytes", l.len()) } else { String::from_utf8_lossy(l).into() })
        });
        out
    }

    #[test]
    fn lines_are_read_whole_whatever_the_reads_catch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("insight.log");
        // A previous run's lines, the last one half written: skipped.
        append(&path, b"old\nhalf");
        let mut tail = Tail::open(&path).unwrap();
        assert!(drain(&mut tail).is_empty());
        append(&path, b" of it\none\ntw");
        assert_eq!(drain(&mut tail), ["one"]);
        append(&path, b"o\nthree\n");
        assert_eq!(drain(&mut tail), ["two", "three"]);
        // A line longer than any of nginx's: its first MAX_LINE + 1 bytes (counted as oversized),
        // and the rest skipped, however it arrives.
        append(&path, &vec![b'x'; MAX_LINE - 10]);
        assert!(drain(&mut tail).is_empty());
        append(&path, &vec![b'x'; 3 * MAX_LINE]);
        assert_eq!(drain(&mut tail), [format!("{} bytes", MAX_LINE + 1)]);
        append(&path, b"xxx\nfour\n");
        assert_eq!(drain(&mut tail), ["four"]);
        let exact = vec![b'y'; MAX_LINE];
        append(&path, &[&exact[..], b"\n"].concat());
        assert_eq!(drain(&mut tail), [format!("{MAX_LINE} bytes")]);
    }

    #[test]
    fn what_was_read_is_cut_from_the_start_and_reading_goes_on() {
        let (dir, path, mut tail) = empty();
        let line = format!("{}\n", "z".repeat(99));
        let many = line.repeat((CUT_AFTER as usize / line.len()) + 100);
        append(&path, many.as_bytes());
        append(&path, b"partial");
        assert_eq!(drain(&mut tail).len(), many.len() / line.len());
        tail.release().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        if can_cut(dir.path()) {
            assert!(tail.cut && len < 8192, "the start was cut: {len} bytes left");
        } else {
            eprintln!("this file system cannot cut a file's start; the file is emptied at 64 MiB instead");
        }
        append(&path, b" line\nnext\n");
        assert_eq!(drain(&mut tail), ["partial line", "next"]);
    }

    #[test]
    fn a_file_read_to_its_end_on_a_block_boundary_is_still_cut() {
        let (dir, path, mut tail) = empty();
        // 64 bytes a line: the file ends on a block boundary, every line read.
        let line = format!("{}\n", "q".repeat(63));
        append(&path, line.repeat(CUT_AFTER as usize / 64 + 64).as_bytes());
        assert_eq!(std::fs::metadata(&path).unwrap().len() % 4096, 0);
        drain(&mut tail);
        tail.release().unwrap();
        if !can_cut(dir.path()) {
            eprintln!("this file system cannot cut a file's start");
            return;
        }
        assert!(tail.cut, "a range up to the end is not tried (the kernel refuses it)");
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096, "cut up to the last block");
        append(&path, b"next\n");
        assert_eq!(drain(&mut tail), ["next"]);
    }

    #[test]
    fn a_file_emptied_or_replaced_is_read_from_its_start() {
        let (_dir, path, mut tail) = empty();
        append(&path, b"one\ntwo\n");
        assert_eq!(drain(&mut tail), ["one", "two"]);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        append(&path, b"three\n");
        assert_eq!(drain(&mut tail), ["three"]);
        // Removed, and made again (as nginx does on a reload).
        std::fs::remove_file(&path).unwrap();
        append(&path, b"four\n");
        (tail.checked, tail.grew) = (tail.checked - RECHECK, tail.grew - DRAIN);
        assert_eq!(drain(&mut tail), ["four"]);
    }

    #[test]
    fn an_access_log_is_read_from_where_the_list_says_and_followed_through_its_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.test.access.log");
        assert!(Tail::open_access(&path, Start::End).is_err(), "not made yet");
        append(&path, b"history\n");
        // Before the apply: the file holds an earlier run's line. nginx writes one before the
        // reader opens the file: it is read, the history is not.
        let start = FileStart::of(&path);
        append(&path, b"zero\n");
        let mut tail = Tail::open_access(&path, Start::Listed(start)).unwrap();
        assert_eq!(drain(&mut tail), ["zero"]);
        // A request line of 20 KiB is no oversized line in an access log.
        let long = "r".repeat(20_000);
        append(&path, format!("one\n{long}\n").as_bytes());
        assert_eq!(drain(&mut tail), ["one".to_string(), "20000 bytes".to_string()]);
        // logrotate: renamed and made again; nginx writes the old file until it reopens its logs,
        // so the old one is read on until it stopped growing.
        let rotated = dir.path().join("a.test.access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        append(&path, b"three\n");
        append(&rotated, b"two\n");
        tail.checked -= RECHECK;
        assert_eq!(drain(&mut tail), ["two"]);
        tail.checked -= RECHECK;
        assert!(drain(&mut tail).is_empty(), "the old file grew just now: read on");
        append(&rotated, b"two and a half\n");
        assert_eq!(drain(&mut tail), ["two and a half"]);
        (tail.checked, tail.grew) = (tail.checked - RECHECK, tail.grew - DRAIN);
        assert_eq!(drain(&mut tail), ["three"], "the new file, from its start");
        // copytruncate: emptied in place.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        append(&path, b"four\n");
        assert_eq!(drain(&mut tail), ["four"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"four\n", "the agent never writes the user's file");
        // A file made again between the look before the apply and the open: from its start.
        std::fs::remove_file(&path).unwrap();
        append(&path, b"five\n");
        let mut tail = Tail::open_access(&path, Start::Listed(start)).unwrap();
        assert_eq!(drain(&mut tail), ["five"]);
    }

    #[test]
    fn the_reader_counts_each_domains_access_log_under_its_domain() {
        let dir = tempfile::tempdir().unwrap();
        let status = State::default();
        status.insight().set_domains(["a.test", "b.test"]);
        let own = Tail::open(&dir.path().join("insight.log")).unwrap();
        let mut reader = Reader::new(own);
        let (a, b) = (dir.path().join("a.test.access.log"), dir.path().join("b.test.access.log"));
        append(&a, b"a line of an earlier run\n");
        let listed = vec![("a.test".to_string(), a.clone()), ("b.test".to_string(), b.clone())];
        let starts = file_starts(&listed);
        status.set_insight_files(with_starts(listed, &starts));
        reader.update(&status);
        let served = |host: &str, status: u16| {
            format!(
                r#"{{"time":"t","remote_addr":"1.2.3.4","request":"GET /\"x\" HTTP/1.1","status":{status},"bytes_sent":10,"domain":"{host}","upstream":"10.0.0.1:80","request_time":0.002,"upstream_status":"{status}","upstream_response_time":"0.001"}}"#
            ) + "\n"
        };
        // The Host header says b.test, the file a.test's: the file decides.
        append(&a, served("b.test", 200).as_bytes());
        append(&a, served("a.test", 502).as_bytes());
        // The redirect to HTTPS: no upstream fields, not counted.
        append(&a, br#"{"time":"t","remote_addr":"1.2.3.4","request":"GET / HTTP/1.1","status":301,"bytes_sent":10,"domain":"a.test","upstream":"","request_time":0.000}"#);
        append(&a, b"\n");
        // b.test's file made after the list (nginx's reload): read from its start.
        append(&b, served("b.test", 404).as_bytes());
        append(&b, b"not json\n");
        reader.read(&status).unwrap();
        let snapshot = status.insight().snapshot(now_ms() + 60_000);
        let classes = |d: &str| snapshot.domains.iter().find(|s| s.domain == d).unwrap().total.by_class;
        let (a_classes, b_classes) = (classes("a.test"), classes("b.test"));
        assert_eq!((a_classes.c2xx, a_classes.c3xx, a_classes.c5xx), (1, 0, 1), "{snapshot:?}");
        assert_eq!((b_classes.c2xx, b_classes.c4xx), (0, 1));
        assert_eq!(snapshot.dropped.malformed, 1);
        // A domain no longer routed: its file is dropped from the reader; a.test's is kept where
        // it was (nothing read twice).
        let listed = vec![("a.test".to_string(), a.clone())];
        status.set_insight_files(with_starts(listed, &std::collections::HashMap::new()));
        reader.update(&status);
        assert_eq!(reader.access.len(), 1);
        append(&a, served("a.test", 200).as_bytes());
        reader.read(&status).unwrap();
        let snapshot = status.insight().snapshot(now_ms() + 60_000);
        let a_total = snapshot.domains.iter().find(|s| s.domain == "a.test").unwrap().total.requests;
        assert_eq!(a_total, 3);
    }

    /// A compose service's container on `demo_default` at 172.18.0.`ip`:8080.
    fn replica(service: &str, n: u8, ip: u8, heal: bool, health: Option<labels::Health>) -> Container {
        let mut labels: std::collections::BTreeMap<String, String> = [
            ("smart-proxy.domains", format!("{service}.test")),
            ("com.docker.compose.project", "demo".into()),
            ("com.docker.compose.service", service.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if heal {
            labels.insert("smart-proxy.heal".into(), "restart".into());
        }
        let address = labels::NetworkAddress { ipv4: Some(std::net::Ipv4Addr::new(172, 18, 0, ip)), ipv6: None };
        Container {
            id: format!("id-{service}-{n}"),
            name: format!("demo-{service}-{n}"),
            labels,
            exposed_ports: vec![8080],
            networks: [("demo_default".to_string(), address)].into(),
            health,
            running: true,
            swarm: None,
        }
    }

    #[test]
    fn heal_targets_are_the_labelled_containers_at_each_address_nginx_logs_for_them() {
        use labels::Health::{Healthy, Unhealthy};
        let mut stopped = replica("gone", 1, 20, true, None);
        stopped.running = false;
        let containers = vec![
            // web: one replica heals, the other does not ask to.
            replica("web", 1, 5, true, None),
            replica("web", 2, 6, false, None),
            // api: both out of the upstream (Docker calls them unhealthy), so nginx logs the
            // upstream's name for its stand-in's 502s; both heal.
            replica("api", 1, 7, true, Some(Unhealthy)),
            replica("api", 2, 8, true, Some(Unhealthy)),
            // db: one unhealthy replica, one healthy left in the upstream: tries reach the
            // healthy one, and the unhealthy one is watched at its own address only.
            replica("db", 1, 9, true, Some(Unhealthy)),
            replica("db", 2, 10, true, Some(Healthy)),
            // A stopped container is not restarted by the healer.
            stopped,
        ];
        let settings = labels::LabelSettings { prefix: "smart-proxy".into(), nginx_networks: None };
        let table = RouteTable::build(vec![labels::routes(&containers, &settings)]);
        let api = table.upstreams.iter().find(|u| u.service.as_str() == "demo-api").unwrap().id.clone();
        assert!(api.starts_with("sp_"), "{api}");

        let targets = heal_targets(containers.iter(), &table, "smart-proxy");
        let seen: Vec<(&str, &str, Option<bool>)> =
            targets.iter().map(|t| (t.name.as_str(), t.server.as_str(), t.docker_healthy)).collect();
        assert_eq!(
            seen,
            [
                ("demo-api-1", "172.18.0.7:8080", Some(false)),
                ("demo-api-1", api.as_str(), Some(false)),
                ("demo-api-2", "172.18.0.8:8080", Some(false)),
                ("demo-api-2", api.as_str(), Some(false)),
                ("demo-db-1", "172.18.0.9:8080", Some(false)),
                ("demo-db-2", "172.18.0.10:8080", Some(true)),
                ("demo-web-1", "172.18.0.5:8080", None),
            ]
        );
        assert!(targets.iter().all(|t| t.id == format!("id-{}", &t.name["demo-".len()..])), "{targets:?}");
        // Another label prefix: no container asks to heal.
        assert!(heal_targets(containers.iter(), &table, "other").is_empty());
    }
}

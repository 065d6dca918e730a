//! Traffic insight: what nginx's access log says about each routed domain, aggregated in memory
//! (issue 12). Pure: bytes in, figures out, the time always passed in as unix milliseconds.
//!
//! nginx writes one line of [`INSIGHT_LOG_FORMAT`] per request to a file the agent reads;
//! [`Insight::ingest`] parses it ([`line`]) and adds it to its domain's windows. [`Insight::tick`]
//! learns the baselines and raises anomaly flags ([`anomaly`]), [`Insight::snapshot`] is what
//! `/insight` serves, [`Insight::encode`] what `/metrics` adds. [`heal`] decides restarts from the
//! upstream outcomes. docs/insight.md states the windows, the accuracy and the rules.
//!
//! Memory is bounded by the route table: only domains given to [`Insight::set_domains`] are kept,
//! a domain's state is allocated on its first request, its histograms only for the slots that saw
//! traffic, and at most [`MAX_SERVERS`] upstream servers per domain.

pub mod anomaly;
pub mod heal;
pub mod hist;
pub mod line;
mod prometheus;
mod snapshot;

use std::collections::HashMap;

pub use anomaly::{Active, AnomalyEvent, AnomalyKind, Baseline, Figures};
pub use heal::{Candidate, HealConfig, Healer, Restart};
pub use line::{
    parse, parse_access, Attempt, Entry, Malformed, ACCESS_LOG_FORMAT, INSIGHT_LOG_FORMAT, MAX_ACCESS_LINE, MAX_LINE,
    REDIRECT_LOG_FORMAT,
};
pub use snapshot::{
    Classes, DomainSnapshot, Dropped, Percentiles, Snapshot, Totals, UpstreamCounts, UpstreamSnapshot, WindowSnapshot,
};

pub use prometheus::NAMES as METRIC_NAMES;

use hist::BUCKETS;

/// The short window: 12 completed slots of 5 s.
const FINE_MS: u64 = 5_000;
const FINE_WINDOW: u64 = 12;
/// The long window: 15 completed slots of 1 min.
const COARSE_MS: u64 = 60_000;
const COARSE_WINDOW: u64 = 15;
/// The sparkline: 60 completed minutes.
const SPARK_WINDOW: u64 = 60;
// One more slot than the window in each ring: the one being written.
const FINE_SLOTS: usize = FINE_WINDOW as usize + 1;
const COARSE_SLOTS: usize = COARSE_WINDOW as usize + 1;
const SPARK_SLOTS: usize = SPARK_WINDOW as usize + 1;

/// Upstream servers kept per domain; attempts against more are counted under [`OTHER_SERVERS`].
pub const MAX_SERVERS: usize = 16;
/// The server name of attempts past [`MAX_SERVERS`].
pub const OTHER_SERVERS: &str = "other";

/// The traffic figures of every routed domain.
#[derive(Debug, Default)]
pub struct Insight {
    domains: HashMap<Box<str>, Option<Box<Traffic>>>,
    dropped: Dropped,
    healer: Option<Healer>,
    /// Minutes of baseline before a figure is judged (default [`anomaly::WARMUP_MINUTES`]).
    warmup: Option<u32>,
    /// The latest time seen: time never goes back here, so a late or skewed `now` cannot
    /// overwrite newer slots.
    clock: u64,
}

/// One domain's windows and counters, allocated on its first request.
#[derive(Debug)]
struct Traffic {
    fine: [Slot; FINE_SLOTS],
    coarse: [Slot; COARSE_SLOTS],
    /// (unix minute, requests) of each minute.
    spark: [(u32, u32); SPARK_SLOTS],
    totals: Total,
    servers: Vec<Server>,
    detector: anomaly::Detector,
}

/// Since start, for Prometheus counters.
#[derive(Debug)]
struct Total {
    classes: [u64; 5],
    bytes: u64,
    /// Request time per bucket, and the sum in microseconds.
    request: [u64; BUCKETS],
    request_sum_us: u64,
    /// The same for the upstream time of requests that reached an upstream (the last try's).
    upstream: [u64; BUCKETS],
    upstream_sum_us: u64,
}

/// One time slot of a window.
#[derive(Debug, Default)]
struct Slot {
    /// The slot's number since the unix epoch (time / slot length): the ring position is reused,
    /// so a slot only counts for the window when its epoch is in it.
    epoch: u32,
    classes: [u32; 5],
    bytes: u64,
    /// Allocated when the slot sees a request, freed once the slot left every window.
    hists: Option<Hists>,
}

/// A slot's request-time and upstream-time counts per bucket, as narrow as they fit: a slot
/// starts with a byte per bucket and widens when a bucket overflows (a quiet domain's slot costs
/// 112 bytes, a busy one's 224 or 448).
#[derive(Debug, Clone)]
enum Hists {
    U8(Box<[[u8; BUCKETS]; 2]>),
    U16(Box<[[u16; BUCKETS]; 2]>),
    U32(Box<[[u32; BUCKETS]; 2]>),
}

/// Which histogram of [`Hists`].
const REQUEST: usize = 0;
const UPSTREAM: usize = 1;

fn widen<A: Copy, B: Copy + From<A>>(h: &[[A; BUCKETS]; 2]) -> [[B; BUCKETS]; 2] {
    h.map(|row| row.map(B::from))
}

impl Hists {
    fn new() -> Hists {
        Hists::U8(Box::new([[0; BUCKETS]; 2]))
    }

    fn add(&mut self, which: usize, bucket: usize) {
        loop {
            match self {
                Hists::U8(h) => match h[which][bucket].checked_add(1) {
                    Some(n) => return h[which][bucket] = n,
                    None => *self = Hists::U16(Box::new(widen(h))),
                },
                Hists::U16(h) => match h[which][bucket].checked_add(1) {
                    Some(n) => return h[which][bucket] = n,
                    None => *self = Hists::U32(Box::new(widen(h))),
                },
                Hists::U32(h) => return h[which][bucket] = h[which][bucket].saturating_add(1),
            }
        }
    }

    /// Zeroes the counts, keeping the width (a slot that was busy is likely to be again).
    fn clear(&mut self) {
        match self {
            Hists::U8(h) => **h = [[0; BUCKETS]; 2],
            Hists::U16(h) => **h = [[0; BUCKETS]; 2],
            Hists::U32(h) => **h = [[0; BUCKETS]; 2],
        }
    }

    fn add_to(&self, which: usize, sum: &mut [u64; BUCKETS]) {
        fn add<C: Copy + Into<u64>>(row: &[C; BUCKETS], sum: &mut [u64; BUCKETS]) {
            for (s, &c) in sum.iter_mut().zip(row) {
                *s += c.into();
            }
        }
        match self {
            Hists::U8(h) => add(&h[which], sum),
            Hists::U16(h) => add(&h[which], sum),
            Hists::U32(h) => add(&h[which], sum),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Hists::U8(_) => 2 * BUCKETS,
            Hists::U16(_) => 4 * BUCKETS,
            Hists::U32(_) => 8 * BUCKETS,
        }
    }
}

#[derive(Debug)]
struct Server {
    addr: Box<str>,
    total: ServerCounts,
    fine: [(u32, ServerCounts); FINE_SLOTS],
    coarse: [(u32, ServerCounts); COARSE_SLOTS],
}

#[derive(Debug, Default, Clone, Copy)]
struct ServerCounts {
    attempts: u32,
    errors: u32,
    timeouts: u32,
}

/// A window's sums.
#[derive(Debug)]
struct Sum {
    classes: [u64; 5],
    bytes: u64,
    request: [u64; BUCKETS],
    upstream: [u64; BUCKETS],
}

impl Sum {
    fn requests(&self) -> u64 {
        self.classes.iter().sum()
    }
}

fn epoch(now_ms: u64, slot_ms: u64) -> u32 {
    u32::try_from(now_ms / slot_ms).unwrap_or(u32::MAX)
}

impl Slot {
    fn at(&mut self, epoch: u32) -> &mut Slot {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.classes = [0; 5];
            self.bytes = 0;
            if let Some(h) = &mut self.hists {
                h.clear();
            }
        }
        self
    }

    fn record(&mut self, entry: &Entry<'_>, class: usize, request_bucket: usize, upstream_bucket: Option<usize>) {
        self.classes[class] = self.classes[class].saturating_add(1);
        self.bytes = self.bytes.saturating_add(entry.bytes);
        let h = self.hists.get_or_insert_with(Hists::new);
        h.add(REQUEST, request_bucket);
        if let Some(b) = upstream_bucket {
            h.add(UPSTREAM, b);
        }
    }
}

/// The slots of `ring` in the `len` completed epochs before `current`.
fn window<T>(ring: &[T], current: u32, len: u64, epoch_of: impl Fn(&T) -> u32) -> impl Iterator<Item = &T> {
    let from = u64::from(current).saturating_sub(len);
    (from..u64::from(current)).filter_map(move |e| {
        let slot = &ring[(e % ring.len() as u64) as usize];
        (u64::from(epoch_of(slot)) == e).then_some(slot)
    })
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            fine: Default::default(),
            coarse: Default::default(),
            spark: [(0, 0); SPARK_SLOTS],
            totals: Total {
                classes: [0; 5],
                bytes: 0,
                request: [0; BUCKETS],
                request_sum_us: 0,
                upstream: [0; BUCKETS],
                upstream_sum_us: 0,
            },
            servers: Vec::new(),
            detector: anomaly::Detector::default(),
        }
    }

    fn record(&mut self, entry: &Entry<'_>, now_ms: u64) {
        let class = usize::from(entry.status / 100).clamp(1, 5) - 1;
        let request_bucket = hist::bucket(entry.request_us);
        let upstream_us = entry.upstream_us();
        let upstream_bucket = upstream_us.map(hist::bucket);
        let (fine, coarse) = (epoch(now_ms, FINE_MS), epoch(now_ms, COARSE_MS));
        self.fine[fine as usize % FINE_SLOTS].at(fine).record(entry, class, request_bucket, upstream_bucket);
        self.coarse[coarse as usize % COARSE_SLOTS].at(coarse).record(entry, class, request_bucket, upstream_bucket);
        let spark = &mut self.spark[coarse as usize % SPARK_SLOTS];
        if spark.0 != coarse {
            *spark = (coarse, 0);
        }
        spark.1 = spark.1.saturating_add(1);
        let t = &mut self.totals;
        t.classes[class] += 1;
        t.bytes = t.bytes.saturating_add(entry.bytes);
        t.request[request_bucket] += 1;
        t.request_sum_us = t.request_sum_us.saturating_add(entry.request_us);
        if let (Some(bucket), Some(us)) = (upstream_bucket, upstream_us) {
            t.upstream[bucket] += 1;
            t.upstream_sum_us = t.upstream_sum_us.saturating_add(us);
        }
    }

    fn server(&mut self, addr: &str) -> &mut Server {
        let i = match self.servers.iter().position(|s| &*s.addr == addr) {
            Some(i) => i,
            None if self.servers.len() < MAX_SERVERS - 1 || addr == OTHER_SERVERS => {
                self.servers.push(Server::new(addr));
                self.servers.len() - 1
            }
            None => return self.server(OTHER_SERVERS),
        };
        &mut self.servers[i]
    }

    fn sum<'a>(slots: impl Iterator<Item = &'a Slot>) -> Sum {
        let mut sum = Sum { classes: [0; 5], bytes: 0, request: [0; BUCKETS], upstream: [0; BUCKETS] };
        for slot in slots {
            for (s, c) in sum.classes.iter_mut().zip(slot.classes) {
                *s += u64::from(c);
            }
            sum.bytes += slot.bytes;
            if let Some(h) = &slot.hists {
                h.add_to(REQUEST, &mut sum.request);
                h.add_to(UPSTREAM, &mut sum.upstream);
            }
        }
        sum
    }

    fn last_minute(&self, now_ms: u64) -> Sum {
        Traffic::sum(window(&self.fine, epoch(now_ms, FINE_MS), FINE_WINDOW, |s| s.epoch))
    }

    fn last_15_minutes(&self, now_ms: u64) -> Sum {
        Traffic::sum(window(&self.coarse, epoch(now_ms, COARSE_MS), COARSE_WINDOW, |s| s.epoch))
    }

    /// Frees the histograms of slots no window reads any more.
    fn free_expired(&mut self, now_ms: u64) {
        let (fine, coarse) = (epoch(now_ms, FINE_MS), epoch(now_ms, COARSE_MS));
        for s in &mut self.fine {
            if u64::from(s.epoch) + FINE_WINDOW < u64::from(fine) {
                s.hists = None;
            }
        }
        for s in &mut self.coarse {
            if u64::from(s.epoch) + COARSE_WINDOW < u64::from(coarse) {
                s.hists = None;
            }
        }
    }

    /// Heap bytes held (the struct itself included).
    fn heap_bytes(&self) -> usize {
        let hists: usize =
            self.fine.iter().chain(&self.coarse).filter_map(|s| s.hists.as_ref()).map(Hists::heap_bytes).sum();
        std::mem::size_of::<Traffic>()
            + hists
            + self.servers.capacity() * std::mem::size_of::<Server>()
            + self.servers.iter().map(|s| s.addr.len()).sum::<usize>()
    }
}

impl Server {
    fn new(addr: &str) -> Server {
        Server {
            addr: addr.into(),
            total: ServerCounts::default(),
            fine: Default::default(),
            coarse: Default::default(),
        }
    }

    fn record(&mut self, attempt: &Attempt<'_>, now_ms: u64) {
        let add = |c: &mut ServerCounts| {
            c.attempts = c.attempts.saturating_add(1);
            c.errors = c.errors.saturating_add(u32::from(attempt.failed()));
            c.timeouts = c.timeouts.saturating_add(u32::from(attempt.timed_out()));
        };
        add(&mut self.total);
        let (fine, coarse) = (epoch(now_ms, FINE_MS), epoch(now_ms, COARSE_MS));
        for (ring, e) in [(&mut self.fine[..], fine), (&mut self.coarse[..], coarse)] {
            let len = ring.len();
            let slot = &mut ring[e as usize % len];
            if slot.0 != e {
                *slot = (e, ServerCounts::default());
            }
            add(&mut slot.1);
        }
    }

    fn sum<'a>(slots: impl Iterator<Item = &'a (u32, ServerCounts)>) -> ServerCounts {
        slots.fold(ServerCounts::default(), |mut acc, (_, c)| {
            acc.attempts += c.attempts;
            acc.errors += c.errors;
            acc.timeouts += c.timeouts;
            acc
        })
    }
}

impl Insight {
    pub fn new() -> Insight {
        Insight::default()
    }

    /// How many minutes of baseline error ratio and latency need before they are judged.
    pub fn set_warmup(&mut self, minutes: u32) {
        self.warmup = Some(minutes.max(1));
    }

    /// The routed domains (`$server_name` values: the route table's names). Lines for any other
    /// name are counted as `unrouted` and dropped; a domain no longer given is forgotten, its
    /// figures and flags with it.
    pub fn set_domains<I, S>(&mut self, domains: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut next: HashMap<Box<str>, Option<Box<Traffic>>> = HashMap::new();
        for d in domains {
            let d = d.as_ref();
            let kept = self.domains.remove(d).flatten();
            next.insert(d.into(), kept);
        }
        self.domains = next;
    }

    /// Feeds upstream outcomes to a [`Healer`] from now on (its decisions: [`Insight::healer_mut`]).
    pub fn enable_healing(&mut self, config: HealConfig) {
        self.healer = Some(Healer::new(config));
    }

    /// The healer fed by [`Insight::ingest`], once enabled: the caller asks it for decisions.
    pub fn healer_mut(&mut self) -> Option<&mut Healer> {
        self.healer.as_mut()
    }

    /// The dropped lines so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    fn clock(&mut self, now_ms: u64) -> u64 {
        self.clock = self.clock.max(now_ms);
        self.clock
    }

    /// Parses one line and adds it to its domain. What cannot be used is counted
    /// (`oversized`, `malformed`, `unrouted`) and dropped.
    pub fn ingest(&mut self, line: &[u8], now_ms: u64) {
        let now_ms = self.clock(now_ms);
        let entry = match line::parse(line) {
            Ok(entry) => entry,
            Err(e) => return self.dropped.count(e),
        };
        self.record(entry.domain, &entry, now_ms);
    }

    /// Parses lines of `domain`'s access log ([`ACCESS_LOG_FORMAT`]) and adds them to the
    /// domain (looked up once for them all); a line of the HTTPS redirect is skipped (see
    /// [`parse_access`]), what cannot be used is counted and dropped as by [`Insight::ingest`].
    pub fn ingest_access<'l>(&mut self, domain: &str, lines: impl IntoIterator<Item = &'l [u8]>, now_ms: u64) {
        let now_ms = self.clock(now_ms);
        let Insight { domains, dropped, healer, .. } = self;
        let mut state = domains.get_mut(domain);
        for line in lines {
            match line::parse_access(line) {
                Ok(Some(entry)) => match state.as_deref_mut() {
                    Some(state) => record(state, healer.as_mut(), &entry, now_ms),
                    None => dropped.unrouted += 1,
                },
                Ok(None) => {}
                Err(e) => dropped.count(e),
            }
        }
    }

    fn record(&mut self, domain: &str, entry: &Entry<'_>, now_ms: u64) {
        match self.domains.get_mut(domain) {
            Some(state) => record(state, self.healer.as_mut(), entry, now_ms),
            None => self.dropped.unrouted += 1,
        }
    }

    /// Learns each domain's baselines from the minutes completed since the last tick and judges
    /// the last minute: the flags that started or ended (each reported once). Call it every few
    /// seconds (a flag is judged on 5 s slots); it also frees the slots that left every window.
    pub fn tick(&mut self, now_ms: u64) -> Vec<AnomalyEvent> {
        let now_ms = self.clock(now_ms);
        let mut events = Vec::new();
        let warmup = self.warmup.unwrap_or(anomaly::WARMUP_MINUTES);
        for (domain, traffic) in &mut self.domains {
            let Some(t) = traffic else { continue };
            // Judged before learning: the minute that just completed may be the anomaly itself.
            let last = minute_figures(&t.last_minute(now_ms));
            for (kind, started, figures) in t.detector.judge(&last, now_ms, warmup) {
                events.push(AnomalyEvent { domain: domain.to_string(), kind, started, figures, at_ms: now_ms });
            }
            for minute in t.detector.minutes_to_learn(now_ms / COARSE_MS) {
                let figures = t
                    .coarse
                    .iter()
                    .find(|s| u64::from(s.epoch) == minute)
                    .map(|s| Traffic::sum(std::iter::once(s)))
                    .map(|sum| minute_figures(&sum))
                    .unwrap_or_default();
                t.detector.learn(&figures);
            }
            t.free_expired(now_ms);
        }
        events.sort_by(|a, b| (&a.domain, a.kind).cmp(&(&b.domain, b.kind)));
        events
    }

    /// Every routed domain's figures, sorted by name (see [`Snapshot`]).
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let now_ms = self.clock.max(now_ms);
        let mut domains: Vec<DomainSnapshot> =
            self.domains.iter().map(|(name, t)| snapshot::domain(name, t.as_deref(), now_ms)).collect();
        domains.sort_unstable_by(|a, b| a.domain.cmp(&b.domain));
        Snapshot { at_ms: now_ms, dropped: self.dropped, domains }
    }

    /// Appends the Prometheus text exposition (format 0.0.4, as `metrics.rs` writes) of the
    /// `smart_proxy_http_*` families: see docs/insight.md.
    pub fn encode(&self, out: &mut String) {
        prometheus::encode(self, out);
    }

    /// Heap bytes held by the domain state (an estimate from the sizes of what is allocated).
    pub fn memory_bytes(&self) -> usize {
        let per_key = std::mem::size_of::<(Box<str>, Option<Box<Traffic>>)>();
        self.domains.capacity() * (per_key + 1)
            + self.domains.iter().map(|(k, t)| k.len() + t.as_ref().map_or(0, |t| t.heap_bytes())).sum::<usize>()
    }
}

/// Adds `entry` to a routed domain's figures (allocated on its first request) and its attempts
/// to the healer.
fn record(state: &mut Option<Box<Traffic>>, mut healer: Option<&mut Healer>, entry: &Entry<'_>, now_ms: u64) {
    let traffic = state.get_or_insert_with(|| Box::new(Traffic::new()));
    traffic.record(entry, now_ms);
    for attempt in entry.attempts() {
        traffic.server(attempt.addr).record(&attempt, now_ms);
        if let Some(healer) = healer.as_deref_mut() {
            healer.observe(attempt.addr, attempt.failed(), now_ms);
        }
    }
}

/// What the detector judges of a window.
fn minute_figures(sum: &Sum) -> anomaly::Minute {
    anomaly::Minute {
        requests: sum.requests(),
        errors_5xx: sum.classes[4],
        p95_ms: hist::quantile_ms(&sum.request, 0.95),
    }
}

#[cfg(test)]
mod tests;

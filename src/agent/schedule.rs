//! When passes run: [`Scheduler`] (leading edge, trailing debounce with a maximum wait, retries)
//! and [`Storm`] (longer waits while many containers change at once).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

/// How long a burst of triggers waits before a pass: a trailing quiet period and a maximum from
/// the burst's first trigger.
///
/// Normally DEBOUNCE of quiet, at most DEBOUNCE_MAX (and the first decisive event after a quiet
/// DEBOUNCE runs a pass at once). Storm mode is for many containers changing at once (a slow
/// daemon starting hundreds of them after a reboot), judged by rate and cost rather than by a
/// count: while events about at least [`STORM_MANY_CONTAINERS`] different containers arrived
/// within the last 5 x DEBOUNCE_MAX, or at least [`STORM_CONTAINERS`] while passes took at least
/// [`STORM_PASS_SHARE`] of that time, a burst that begins within DEBOUNCE_MAX of the end of the
/// previous pass raises the level. A compose stack starting one service a second, each pass a
/// fraction of that second, never makes a storm. In a storm the trailing quiet is 2 x DEBOUNCE_MAX (the gaps of a slow stream
/// do not each cost a reload) and the maximum wait grows fourfold per level (4, 16, 64 x
/// DEBOUNCE_MAX, never more than [`STORM_MAX_WAIT`]), so a storm of a minute and a half costs
/// about five reloads instead of ninety and the last containers are served about
/// 2 x DEBOUNCE_MAX after it ends. A burst after a longer gap lowers the level by one. One
/// container restarting, or a few edits and starts, never makes a storm: they are applied within
/// DEBOUNCE however slow the previous pass was.
#[derive(Debug)]
pub(super) struct Storm {
    debounce: Duration,
    max_wait: Duration,
    level: u32,
    /// Container events of the last 5 x DEBOUNCE_MAX: (when, container id), oldest first.
    recent: std::collections::VecDeque<(Instant, String)>,
    /// Passes that ended within the last 5 x DEBOUNCE_MAX: (start, end), oldest first.
    passes: std::collections::VecDeque<(Instant, Instant)>,
}

/// The share of the recent time spent in passes above which many changing containers make a
/// storm: passes can no longer keep up one by one.
const STORM_PASS_SHARE: f64 = 0.4;

/// The longest a storm of events can hold back a pass.
const STORM_MAX_WAIT: Duration = Duration::from_secs(60);
/// How many different containers changing within 5 x DEBOUNCE_MAX make a storm whatever the
/// passes cost (two a second at the default DEBOUNCE_MAX: more than a compose stack started one
/// service a second).
const STORM_MANY_CONTAINERS: usize = 10;
/// How many different containers must have changed within 5 x DEBOUNCE_MAX for a storm when
/// passes take at least [`STORM_PASS_SHARE`] of the time.
const STORM_CONTAINERS: usize = 5;

impl Storm {
    fn new(debounce: Duration, max_wait: Duration) -> Storm {
        Storm {
            debounce,
            max_wait: max_wait.max(debounce),
            level: 0,
            recent: Default::default(),
            passes: Default::default(),
        }
    }

    fn window(&self) -> Duration {
        self.max_wait * 5
    }

    /// An event about container `id` arrived at `now`.
    fn saw_container(&mut self, now: Instant, id: String) {
        self.forget_before(now);
        if self.recent.len() < 4096 {
            self.recent.push_back((now, id));
        }
    }

    fn forget_before(&mut self, now: Instant) {
        let window = self.window();
        while self.recent.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > window) {
            self.recent.pop_front();
        }
        while self.passes.front().is_some_and(|(_, end)| now.saturating_duration_since(*end) > window) {
            self.passes.pop_front();
        }
    }

    /// A pass ran from `start` to `end`.
    fn pass_ran(&mut self, start: Instant, end: Instant) {
        self.forget_before(end);
        if self.passes.len() < 4096 {
            self.passes.push_back((start, end));
        }
    }

    /// The share of the last 5 x DEBOUNCE_MAX before `now` spent in passes.
    fn pass_share(&self, now: Instant) -> f64 {
        let window = self.window();
        let from = now.checked_sub(window).unwrap_or(now);
        let busy: Duration =
            self.passes.iter().map(|(start, end)| end.saturating_duration_since((*start).max(from))).sum();
        busy.as_secs_f64() / window.as_secs_f64()
    }

    /// The first trigger of a burst arrived at `now`; the last pass ended at `last_pass_end`.
    fn burst_begins(&mut self, now: Instant, last_pass_end: Option<Instant>) {
        self.forget_before(now);
        let changing = self.recent.iter().map(|(_, id)| id.as_str()).collect::<HashSet<_>>().len();
        let busy = changing >= STORM_MANY_CONTAINERS
            || (changing >= STORM_CONTAINERS && self.pass_share(now) >= STORM_PASS_SHARE);
        let gap = last_pass_end.map(|end| now.saturating_duration_since(end));
        self.level = match gap {
            _ if !busy => 0,
            Some(gap) if gap < self.max_wait => (self.level + 1).min(3),
            Some(gap) if gap < self.window() => self.level.saturating_sub(1),
            _ => 0,
        };
    }

    /// (trailing quiet, maximum wait from the burst's first trigger).
    fn waits(&self) -> (Duration, Duration) {
        match self.level {
            0 => (self.debounce, self.max_wait),
            level => (self.max_wait * 2, (self.max_wait * 4u32.pow(level)).min(STORM_MAX_WAIT.max(self.max_wait))),
        }
    }
}

/// When passes run: the leading edge (the first decisive trigger after a quiet DEBOUNCE runs a
/// pass at once), the trailing debounce with a maximum wait from a burst's first trigger, storm
/// mode ([`Storm`]), and the retry of a failed apply or Docker call. Pure: it is told the time,
/// so its behaviour is tested without a clock; the controller's loop sleeps until
/// [`Scheduler::next`].
#[derive(Debug)]
pub(super) struct Scheduler {
    debounce: Duration,
    storm: Storm,
    last_pass_end: Option<Instant>,
    /// The first and the last trigger of the burst waiting for a pass.
    pending: Option<(Instant, Instant)>,
    /// The pending burst runs at once (leading edge).
    at_once: bool,
    /// When a failed apply or Docker call is retried.
    retry_at: Option<Instant>,
}

impl Scheduler {
    pub(super) fn new(debounce: Duration, max_wait: Duration) -> Scheduler {
        Scheduler {
            debounce,
            storm: Storm::new(debounce, max_wait),
            last_pass_end: None,
            pending: None,
            at_once: false,
            retry_at: None,
        }
    }

    /// A trigger that can change something arrived at `now`: about `container` (if any);
    /// `decisive` when it alone can change routes (see `Trigger::is_decisive`).
    pub(super) fn triggered(&mut self, now: Instant, container: Option<String>, decisive: bool) {
        if let Some(id) = container {
            self.storm.saw_container(now, id);
        }
        if self.pending.is_none() {
            self.storm.burst_begins(now, self.last_pass_end);
        }
        let quiet = self.last_pass_end.is_none_or(|end| now.saturating_duration_since(end) >= self.debounce);
        self.at_once |= decisive && quiet && self.storm.level == 0;
        self.pending = Some(match self.pending {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    /// When the pending burst's pass is due, if a burst is pending.
    pub(super) fn pass_due(&self) -> Option<Instant> {
        let (trailing, max_wait) = self.storm.waits();
        self.pending.map(|(first, last)| if self.at_once { last } else { (last + trailing).min(first + max_wait) })
    }

    /// The next thing to wait for: the pass if one is pending, and the retry.
    pub(super) fn next(&self) -> (Option<Instant>, Option<Instant>) {
        (self.pass_due(), self.retry_at)
    }

    /// A pass ran from `started` to `ended`; `retry` is how long until a failed apply or Docker
    /// call is tried again (`None`: nothing failed).
    pub(super) fn pass_ran(&mut self, started: Instant, ended: Instant, retry: Option<Duration>) {
        self.pending = None;
        self.at_once = false;
        self.last_pass_end = Some(ended);
        self.storm.pass_ran(started, ended);
        self.retry_at = retry.map(|delay| ended + delay);
    }

    /// The retry is due at `now`: it asks for a pass like a trigger that changes nothing itself.
    pub(super) fn retry_fired(&mut self, now: Instant) {
        self.retry_at = None;
        self.pending = Some((now, now));
    }

    #[cfg(test)]
    fn level(&self) -> u32 {
        self.storm.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A storm-sized stream: events about ten containers in the last second, and passes that
    /// took most of the last five seconds.
    fn busy(storm: &mut Storm, now: Instant) {
        for i in 0..10 {
            storm.saw_container(now - 100 * MS * i, format!("c{i}"));
        }
        storm.pass_ran(now - 4600 * MS, now - 500 * MS);
    }

    /// DEBOUNCE 100 ms, DEBOUNCE_MAX 1 s (the defaults).
    fn scheduler() -> Scheduler {
        Scheduler::new(100 * MS, 1000 * MS)
    }

    #[test]
    fn the_first_decisive_trigger_after_quiet_runs_at_once_and_what_follows_is_coalesced() {
        let t0 = Instant::now();
        let mut s = scheduler();
        assert_eq!(s.next(), (None, None), "nothing pending");
        s.triggered(t0, Some("app".into()), true);
        assert_eq!(s.pass_due(), Some(t0), "leading edge: at once");
        s.pass_ran(t0, t0 + 50 * MS, None);
        // Within DEBOUNCE of that pass: trailing debounce from the last trigger.
        let t1 = t0 + 80 * MS;
        s.triggered(t1, Some("app".into()), true);
        assert_eq!(s.pass_due(), Some(t1 + 100 * MS));
        let t2 = t1 + 60 * MS;
        s.triggered(t2, Some("app".into()), false);
        assert_eq!(s.pass_due(), Some(t2 + 100 * MS), "each trigger moves the trailing deadline");
        // A non-decisive trigger (a network connect) after quiet waits for DEBOUNCE.
        s.pass_ran(t2 + 100 * MS, t2 + 150 * MS, None);
        let t3 = t2 + 2000 * MS;
        s.triggered(t3, None, false);
        assert_eq!(s.pass_due(), Some(t3 + 100 * MS));
    }

    #[test]
    fn a_stream_of_triggers_waits_at_most_debounce_max_from_the_first() {
        let t0 = Instant::now();
        let mut s = scheduler();
        s.pass_ran(t0, t0, None);
        // Network events (not decisive alone) every 50 ms: the trailing quiet never comes.
        let first = t0 + 50 * MS;
        for i in 0..30u32 {
            s.triggered(first + 50 * MS * i, Some(format!("c{}", i % 3)), false);
        }
        assert_eq!(s.pass_due(), Some(first + 1000 * MS), "capped by DEBOUNCE_MAX");
    }

    #[test]
    fn storm_mode_is_entered_under_many_containers_and_left_after_quiet() {
        let t0 = Instant::now();
        let mut s = scheduler();
        // Twelve containers a burst, each burst right after a slow pass: the level rises.
        let mut t = t0;
        for round in 0..4u32 {
            for i in 0..12u32 {
                s.triggered(t + MS * i, Some(format!("r{round}c{i}")), true);
            }
            let due = s.pass_due().expect("a pass is pending");
            s.pass_ran(due, due + 800 * MS, None);
            t = due + 900 * MS;
        }
        assert_eq!(s.level(), 3);
        s.triggered(t, Some("late".into()), true);
        let due = s.pass_due().unwrap();
        assert_eq!(due, t + 2000 * MS, "in a storm a pass waits for 2 x DEBOUNCE_MAX of quiet");
        s.pass_ran(due, due + 100 * MS, None);
        // After 5 x DEBOUNCE_MAX of quiet a start is served at once again.
        let later = due + 100 * MS + 6000 * MS;
        s.triggered(later, Some("app".into()), true);
        assert_eq!(s.level(), 0);
        assert_eq!(s.pass_due(), Some(later));
    }

    #[test]
    fn a_failed_apply_is_retried_with_the_delay_the_controller_gives() {
        let t0 = Instant::now();
        let mut s = scheduler();
        s.triggered(t0, Some("app".into()), true);
        s.pass_ran(t0, t0 + 30 * MS, Some(1000 * MS));
        assert_eq!(s.next(), (None, Some(t0 + 1030 * MS)), "no pass pending, a retry due");
        let now = t0 + 1030 * MS;
        s.retry_fired(now);
        assert_eq!(s.next(), (Some(now + 100 * MS), None), "the retry asks for a pass");
        s.pass_ran(now + 100 * MS, now + 130 * MS, None);
        assert_eq!(s.next(), (None, None), "succeeded: nothing more");
    }

    #[test]
    fn storm_levels_rise_while_many_containers_change_and_fall_after_a_quiet_gap() {
        let t0 = Instant::now();
        let mut storm = Storm::new(100 * MS, 1000 * MS);
        storm.burst_begins(t0, None);
        assert_eq!(storm.waits(), (100 * MS, 1000 * MS), "a first burst is normal");
        // A burst within DEBOUNCE_MAX of the pass's end, ten containers changing: level 1.
        let t = t0 + 10_500 * MS;
        busy(&mut storm, t);
        storm.burst_begins(t, Some(t0 + 10_000 * MS));
        assert_eq!(storm.waits(), (2000 * MS, 4000 * MS));
        // Once in a storm, a burst within DEBOUNCE_MAX of the pass raises the level further.
        for (pass_end, level_waits) in [(20_000, 16_000 * MS), (40_000, STORM_MAX_WAIT), (60_000, STORM_MAX_WAIT)] {
            let t = t0 + (pass_end + 500) * MS;
            busy(&mut storm, t);
            storm.burst_begins(t, Some(t0 + pass_end * MS));
            assert_eq!(storm.waits(), (2000 * MS, level_waits));
        }
        assert_eq!(storm.level, 3);
        // A gap of a few seconds lowers the level by one; a longer one ends the storm.
        let t = t0 + 63_000 * MS;
        busy(&mut storm, t);
        storm.burst_begins(t, Some(t0 + 60_000 * MS));
        assert_eq!(storm.level, 2);
        storm.burst_begins(t0 + 100_000 * MS, Some(t0 + 63_000 * MS));
        assert_eq!(storm.waits(), (100 * MS, 1000 * MS));
    }

    #[test]
    fn one_container_or_a_few_never_make_a_storm() {
        let t0 = Instant::now();
        let mut storm = Storm::new(100 * MS, 1000 * MS);
        // One container's die, stop and start, each burst right after a slow pass ended.
        for i in 0..20u32 {
            let t = t0 + 700 * MS * i;
            storm.saw_container(t, "app".into());
            storm.burst_begins(t, Some(t - 10 * MS));
            assert_eq!(storm.waits(), (100 * MS, 1000 * MS));
        }
        // Four containers of a compose project starting together: still normal.
        let t = t0 + 60_000 * MS;
        for name in ["a", "b", "c", "d"] {
            storm.saw_container(t, name.into());
        }
        storm.burst_begins(t, Some(t - 10 * MS));
        assert_eq!(storm.level, 0);
    }

    #[test]
    fn one_start_a_second_with_short_passes_never_makes_a_storm() {
        let t0 = Instant::now();
        let mut storm = Storm::new(100 * MS, 1000 * MS);
        // A compose stack: one new service a second for a minute, each pass 300 ms (a slow
        // companion exec), the next start 700 ms after a pass ends.
        for i in 0..60u32 {
            let t = t0 + 1000 * MS * i;
            storm.saw_container(t, format!("service{i}"));
            storm.burst_begins(t, (i > 0).then(|| t - 700 * MS));
            assert_eq!(storm.waits(), (100 * MS, 1000 * MS), "start {i}");
            storm.pass_ran(t, t + 300 * MS);
        }
        // The same starts while passes take 900 ms of every second: a storm.
        let t1 = t0 + 100_000 * MS;
        for i in 0..10u32 {
            let t = t1 + 1000 * MS * i;
            storm.saw_container(t, format!("late{i}"));
            storm.burst_begins(t, Some(t - 100 * MS));
            storm.pass_ran(t, t + 900 * MS);
        }
        assert!(storm.level > 0);
    }
}

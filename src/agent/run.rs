//! The run loop: it takes the watchers' triggers and runs passes when the [`Scheduler`] says. It
//! drives an [`Agent`]: the [`Controller`], or in the tests of its timing (on tokio's paused
//! clock) a stand-in that records when passes ran.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::info;

use super::schedule::Scheduler;
use super::{Controller, Trigger};

/// What the run loop drives: the [`Controller`] (or, in the tests of the loop's timing, a
/// stand-in that records when passes ran).
pub(super) trait Agent {
    /// Takes a trigger into account; false when it cannot change anything.
    fn note(&mut self, trigger: Trigger) -> bool;
    /// Runs a pass (and starts the local nginx once it may); the delay before a retry of what
    /// failed, if anything did.
    async fn run_pass(&mut self) -> anyhow::Result<Option<Duration>>;
    /// A retry is due: the next pass tries again what failed.
    fn retry_due(&mut self);
    /// Resolves when the local nginx exits.
    async fn nginx_exited(&mut self) -> String;
    async fn stop(&mut self);
}

impl Agent for Controller {
    fn note(&mut self, trigger: Trigger) -> bool {
        Controller::note(self, trigger)
    }

    async fn run_pass(&mut self) -> anyhow::Result<Option<Duration>> {
        self.pass().await;
        self.start_nginx_if_local().await?;
        Ok(self.next_retry())
    }

    fn retry_due(&mut self) {
        Controller::retry_due(self)
    }

    async fn nginx_exited(&mut self) -> String {
        Controller::nginx_exited(self).await
    }

    async fn stop(&mut self) {
        self.stop_nginx().await
    }
}

/// Receives triggers and runs passes when `schedule` says, until `shutdown` resolves or nginx
/// exits.
pub(super) async fn run_loop(
    agent: &mut impl Agent,
    mut rx: mpsc::Receiver<Trigger>,
    mut schedule: Scheduler,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (pass_due, retry_due) = schedule.next();
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutting down");
                agent.stop().await;
                return Ok(());
            }
            status = agent.nginx_exited() => {
                anyhow::bail!("nginx exited unexpectedly ({status}); stopping so that the container restarts");
            }
            Some(trigger) = rx.recv() => {
                let container = match &trigger {
                    Trigger::Container { id, .. } => Some(id.clone()),
                    _ => None,
                };
                let decisive = trigger.is_decisive();
                if agent.note(trigger) {
                    schedule.triggered(Instant::now(), container, decisive);
                }
            }
            _ = async { sleep_until(pass_due.expect("guarded")).await }, if pass_due.is_some() => {
                let started = Instant::now();
                let retry = agent.run_pass().await?;
                schedule.pass_ran(started, Instant::now(), retry);
            }
            _ = async { sleep_until(retry_due.expect("guarded")).await }, if retry_due.is_some() => {
                agent.retry_due();
                schedule.retry_fired(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the controller in the run loop: it records when passes ran and fails the
    /// passes it is told to (the delay before their retry).
    #[derive(Default)]
    struct Recorder {
        start: Option<Instant>,
        /// When each pass started, in ms after `start`.
        passes: Vec<u64>,
        retries: Vec<u64>,
        /// How long a pass takes.
        pass_takes: Duration,
        /// The retry delays of the next passes (a failed apply); then they succeed.
        failures: Vec<Duration>,
    }

    impl Recorder {
        fn ms(&self) -> u64 {
            Instant::now().duration_since(self.start.expect("started")).as_millis() as u64
        }
    }

    impl Agent for Recorder {
        fn note(&mut self, _trigger: Trigger) -> bool {
            true
        }

        async fn run_pass(&mut self) -> anyhow::Result<Option<Duration>> {
            self.passes.push(self.ms());
            tokio::time::sleep(self.pass_takes).await;
            Ok((!self.failures.is_empty()).then(|| self.failures.remove(0)))
        }

        fn retry_due(&mut self) {
            self.retries.push(self.ms());
        }

        async fn nginx_exited(&mut self) -> String {
            std::future::pending().await
        }

        async fn stop(&mut self) {}
    }

    /// An event about container `id`: `start`, or with `action` a network `connect` (not decisive).
    fn event(id: &str, action: &str) -> Trigger {
        Trigger::Container { id: id.into(), name: None, action: action.into(), labelled: true }
    }

    /// Runs the loop with DEBOUNCE 100 ms and DEBOUNCE_MAX 1 s over `recorder`, sending `events`
    /// (ms after the start, container id, action) and stopping at `end` ms. (No event falls on the
    /// instant a pass is due: which of the two the loop takes first would be chance.)
    async fn drive(recorder: &mut Recorder, events: Vec<(u64, String, &'static str)>, end: u64) {
        let (tx, rx) = mpsc::channel(4096);
        let start = Instant::now();
        recorder.start = Some(start);
        let script = async move {
            for (at, id, action) in events {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                tx.send(event(&id, action)).await.expect("the loop runs");
            }
            tokio::time::sleep_until(start + Duration::from_millis(end)).await;
        };
        let schedule = Scheduler::new(Duration::from_millis(100), Duration::from_secs(1));
        run_loop(recorder, rx, schedule, script).await.expect("stopped by the script");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_the_first_event_at_once_then_debounces_with_a_maximum_wait() {
        let mut r = Recorder::default();
        // A start, then network events about it every 70 ms for 3 s (one container: no storm).
        let mut events = vec![(0, "app".to_string(), "start")];
        events.extend((1..=43).map(|i| (i * 70, "app".to_string(), "connect")));
        drive(&mut r, events, 5000).await;
        // At once; then DEBOUNCE_MAX from each burst's first event (the stream never falls quiet for
        // DEBOUNCE); then DEBOUNCE after the last event at 3010.
        assert_eq!(r.passes, [0, 1070, 2120, 3110]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_retries_a_failed_apply_after_the_controllers_delay() {
        let mut r = Recorder { failures: vec![Duration::from_secs(1), Duration::from_secs(2)], ..Default::default() };
        drive(&mut r, vec![(0, "app".into(), "start")], 10_000).await;
        // Failed at 0: retry at 1000, its pass a DEBOUNCE later; failed again: retry 2 s after.
        assert_eq!(r.retries, [1000, 3100]);
        assert_eq!(r.passes, [0, 1100, 3200]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_enters_a_storm_under_many_containers_and_leaves_it_after_quiet() {
        let mut r = Recorder { pass_takes: Duration::from_millis(500), ..Default::default() };
        // 213 containers starting one every 47 ms for 10 s (passes of 500 ms cannot keep up),
        // then after 20 s of quiet one more container.
        let mut events: Vec<_> = (0..213).map(|i| (i * 47, format!("c{i}"), "start")).collect();
        events.push((30_000, "late".into(), "start"));
        drive(&mut r, events, 40_000).await;
        // 0: at once. 611: the first burst after it began with two containers seen (no storm yet)
        // and came a DEBOUNCE after that pass: at once again. 1111: that pass ends with ~20
        // containers changing, the burst right after it raises the storm level: the next pass waits
        // for 4 x DEBOUNCE_MAX (5111); the burst after that (level 2, up to 16 s) ends with 2 x
        // DEBOUNCE_MAX of quiet after the last event (9964 + 2000). After 20 s of quiet: at once.
        assert_eq!(r.passes, [0, 611, 5111, 11964, 30000]);
        // Without a storm a pass would start about every 1.5 s (1 s of waiting plus 500 ms of pass).
    }
}

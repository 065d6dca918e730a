//! Anomaly flags of one domain: a baseline learned over about the last hour, and the rules that
//! compare the last minute with it (docs/insight.md states them).
//!
//! Pure: [`Detector`] is told each completed minute to learn and the last minute to judge. A flag
//! starts above one threshold and ends below a lower one (hysteresis), and the baseline of a figure
//! does not learn while its flag is up, nor from the minutes of the episode once it ended.

use serde::Serialize;

/// Requests in the last minute below which error ratio and latency are not judged.
pub const MIN_REQUESTS: u64 = 20;
/// Minutes of baseline a figure needs before it is judged, unless told otherwise (`ANOMALY_WARMUP`).
pub const WARMUP_MINUTES: u32 = 5;
/// A traffic drop needs a baseline of at least this rate, held for [`STEADY_MINUTES`].
pub const STEADY_RATE: f64 = 1.0;
pub const STEADY_MINUTES: u32 = 10;
/// The EWMA's time constant in minutes (weight 1/60 per minute: about the last hour).
const HORIZON: f64 = 60.0;

/// What a flag is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The 5xx share of the last minute is well above its baseline.
    ErrorRatio,
    /// The p95 request time of the last minute is well above its baseline.
    Latency,
    /// A domain with steady traffic got no request for a full minute.
    TrafficDrop,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 3] = [AnomalyKind::ErrorRatio, AnomalyKind::Latency, AnomalyKind::TrafficDrop];

    /// The name in JSON and in the `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::ErrorRatio => "error_ratio",
            AnomalyKind::Latency => "latency",
            AnomalyKind::TrafficDrop => "traffic_drop",
        }
    }
}

/// The figures a flag was judged on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    /// The last minute's value: the 5xx share (0..1), the p95 in milliseconds, or requests per
    /// second.
    pub observed: f64,
    /// The baseline it was compared with, in the same unit.
    pub baseline: f64,
    /// Requests in the last minute.
    pub requests: u64,
}

/// A flag that started or ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyEvent {
    pub domain: String,
    pub kind: AnomalyKind,
    /// True when the flag starts, false when it ends.
    pub started: bool,
    /// The figures at that moment (for an end: the ones that cleared it).
    pub figures: Figures,
    /// When it was judged, unix milliseconds.
    pub at_ms: u64,
}

/// A flag that is up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Active {
    pub kind: AnomalyKind,
    /// Since when, unix milliseconds.
    pub since_ms: u64,
    /// The figures that raised it.
    pub raised: Figures,
    /// The figures of the last judgement.
    pub latest: Figures,
}

/// What the detector is told of a minute (the last completed one, or the one to judge).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Minute {
    pub requests: u64,
    pub errors_5xx: u64,
    /// p95 request time in milliseconds; `None` without requests.
    pub p95_ms: Option<f64>,
}

impl Minute {
    fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }
}

/// An exponentially weighted mean whose first samples are a plain mean (weight 1/n until n
/// reaches the horizon), so a young baseline is not dominated by its first minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ewma {
    pub value: f64,
    /// Minutes learned.
    pub samples: u32,
}

impl Ewma {
    fn learn(&mut self, x: f64) {
        self.samples = self.samples.saturating_add(1);
        let weight = (1.0 / f64::from(self.samples)).max(1.0 / HORIZON);
        self.value += (x - self.value) * weight;
    }
}

/// The baselines of one domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Baseline {
    /// Requests per second.
    pub rate: Ewma,
    /// 5xx share, 0..1 (minutes with at least [`MIN_REQUESTS`] only).
    pub error_ratio: Ewma,
    /// p95 request time in milliseconds (minutes with at least [`MIN_REQUESTS`] only).
    pub p95_ms: Ewma,
    /// Consecutive minutes learned at or over [`STEADY_RATE`].
    pub steady_minutes: u32,
}

/// The anomaly state of one domain.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    pub baseline: Baseline,
    /// The next minute (unix minutes) to learn; minutes before it are learned or skipped.
    next_minute: Option<u64>,
    active: [Option<Active>; 3],
}

impl Detector {
    /// The flags that are up.
    pub fn active(&self) -> impl Iterator<Item = &Active> {
        self.active.iter().flatten()
    }

    pub fn is_active(&self, kind: AnomalyKind) -> bool {
        self.active[kind as usize].is_some()
    }

    /// The minutes to learn before `current` (unix minutes; at most the last 60), then marks them
    /// learned. The first call only starts the clock.
    pub fn minutes_to_learn(&mut self, current: u64) -> std::ops::Range<u64> {
        let from = self.next_minute.unwrap_or(current).max(current.saturating_sub(60));
        self.next_minute = Some(current.max(from));
        from..current.max(from)
    }

    /// Learns one completed minute, each figure unless its flag is up.
    pub fn learn(&mut self, m: &Minute) {
        let b = &mut self.baseline;
        if self.active[AnomalyKind::TrafficDrop as usize].is_none() {
            let rate = m.requests as f64 / 60.0;
            b.rate.learn(rate);
            b.steady_minutes = if rate >= STEADY_RATE { b.steady_minutes.saturating_add(1) } else { 0 };
        }
        if m.requests >= MIN_REQUESTS {
            if self.active[AnomalyKind::ErrorRatio as usize].is_none() {
                b.error_ratio.learn(m.error_ratio());
            }
            if let (None, Some(p95)) = (self.active[AnomalyKind::Latency as usize], m.p95_ms) {
                b.p95_ms.learn(p95);
            }
        }
    }

    /// Judges the last minute against the baselines (error ratio and latency once they learned
    /// `warmup` minutes): the flags that start or end now.
    pub fn judge(&mut self, last: &Minute, now_ms: u64, warmup: u32) -> Vec<(AnomalyKind, bool, Figures)> {
        let mut out = Vec::new();
        for kind in AnomalyKind::ALL {
            let Some((figures, start, end)) = self.rule(kind, last, warmup) else { continue };
            let slot = &mut self.active[kind as usize];
            match slot {
                None if start => {
                    *slot = Some(Active { kind, since_ms: now_ms, raised: figures, latest: figures });
                    out.push((kind, true, figures));
                }
                Some(_) if end => {
                    *slot = None;
                    out.push((kind, false, figures));
                    // The episode's minutes (the current one included) are never learned.
                    self.next_minute = self.next_minute.map(|n| n.max(now_ms / 60_000 + 1));
                }
                Some(active) => active.latest = figures,
                None => {}
            }
        }
        out
    }

    /// A rule's figures, whether it starts, whether it ends; `None` while its baseline is too
    /// young to judge and no flag is up.
    fn rule(&self, kind: AnomalyKind, last: &Minute, warmup: u32) -> Option<(Figures, bool, bool)> {
        let b = &self.baseline;
        let up = self.is_active(kind);
        let enough = last.requests >= MIN_REQUESTS;
        match kind {
            AnomalyKind::ErrorRatio => {
                if b.error_ratio.samples < warmup && !up {
                    return None;
                }
                let (base, seen) = (b.error_ratio.value, last.error_ratio());
                let figures = Figures { observed: seen, baseline: base, requests: last.requests };
                let start = enough && seen >= (3.0 * base).max(base + 0.10);
                let end = !enough || seen < (2.0 * base).max(base + 0.05);
                Some((figures, start, end))
            }
            AnomalyKind::Latency => {
                if b.p95_ms.samples < warmup && !up {
                    return None;
                }
                let base = b.p95_ms.value;
                let seen = last.p95_ms.unwrap_or(0.0);
                let figures = Figures { observed: seen, baseline: base, requests: last.requests };
                let start = enough && seen >= (2.0 * base).max(base + 100.0);
                let end = !enough || seen < (1.5 * base).max(base + 50.0);
                Some((figures, start, end))
            }
            AnomalyKind::TrafficDrop => {
                let steady = b.rate.value >= STEADY_RATE && b.steady_minutes >= STEADY_MINUTES;
                if !steady && !up {
                    return None;
                }
                let seen = last.requests as f64 / 60.0;
                let figures = Figures { observed: seen, baseline: b.rate.value, requests: last.requests };
                // Back once the rate is a tenth of the baseline again.
                Some((figures, last.requests == 0, seen >= b.rate.value * 0.1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(requests: u64, errors_5xx: u64, p95_ms: f64) -> Minute {
        Minute { requests, errors_5xx, p95_ms: Some(p95_ms) }
    }

    fn learned(minutes: u32, m: Minute) -> Detector {
        let mut d = Detector::default();
        for _ in 0..minutes {
            d.learn(&m);
        }
        d
    }

    #[test]
    fn error_ratio_starts_once_ends_with_hysteresis() {
        let mut d = learned(30, minute(600, 6, 20.0));
        assert!(
            d.judge(&minute(600, 60, 20.0), 0, WARMUP_MINUTES).is_empty(),
            "10 % against 1 %: under base + 10 points"
        );
        let ev = d.judge(&minute(600, 90, 20.0), 1, WARMUP_MINUTES);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].0, ev[0].1), (AnomalyKind::ErrorRatio, true));
        assert!((ev[0].2.baseline - 0.01).abs() < 1e-9 && ev[0].2.requests == 600);
        assert!(d.judge(&minute(600, 90, 20.0), 2, WARMUP_MINUTES).is_empty(), "once");
        assert!(d.judge(&minute(600, 40, 20.0), 3, WARMUP_MINUTES).is_empty(), "6.7 %: still above the end threshold");
        let ev = d.judge(&minute(600, 20, 20.0), 4, WARMUP_MINUTES);
        assert_eq!((ev[0].0, ev[0].1), (AnomalyKind::ErrorRatio, false));
    }

    #[test]
    fn too_little_traffic_is_not_judged() {
        let mut d = learned(30, minute(10, 0, 20.0));
        assert!(d.judge(&minute(19, 19, 5000.0), 0, WARMUP_MINUTES).is_empty());
        let mut young = learned(WARMUP_MINUTES - 1, minute(600, 0, 20.0));
        assert!(young.judge(&minute(600, 600, 5000.0), 0, WARMUP_MINUTES).is_empty());
        // ANOMALY_WARMUP=1m: one minute learned is enough.
        let ev = learned(1, minute(600, 0, 20.0)).judge(&minute(600, 600, 5000.0), 0, 1);
        assert_eq!(
            ev.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
            [(AnomalyKind::ErrorRatio, true), (AnomalyKind::Latency, true)]
        );
    }

    #[test]
    fn latency_needs_double_and_100_ms() {
        let mut d = learned(30, minute(600, 0, 20.0));
        assert!(d.judge(&minute(600, 0, 110.0), 0, WARMUP_MINUTES).is_empty(), "5x but only +90 ms");
        let ev = d.judge(&minute(600, 0, 130.0), 1, WARMUP_MINUTES);
        assert_eq!((ev[0].0, ev[0].1), (AnomalyKind::Latency, true));
        // Frozen while flagged.
        d.learn(&minute(600, 0, 130.0));
        assert!((d.baseline.p95_ms.value - 20.0).abs() < 1e-9);
        assert!(d.judge(&minute(600, 0, 80.0), 2, WARMUP_MINUTES).is_empty());
        assert!(!d.judge(&minute(600, 0, 60.0), 3, WARMUP_MINUTES)[0].1);
    }

    #[test]
    fn traffic_drop_needs_steady_traffic() {
        let mut d = learned(STEADY_MINUTES - 1, minute(120, 0, 20.0));
        assert!(d.judge(&minute(0, 0, 0.0), 0, WARMUP_MINUTES).is_empty(), "not steady for long enough");
        d.learn(&minute(120, 0, 20.0));
        let ev = d.judge(&Minute::default(), 1, WARMUP_MINUTES);
        assert_eq!((ev[0].0, ev[0].1, ev[0].2.baseline), (AnomalyKind::TrafficDrop, true, 2.0));
        d.learn(&Minute::default());
        assert_eq!(d.baseline.rate.value, 2.0, "frozen");
        assert!(d.judge(&minute(5, 0, 20.0), 2, WARMUP_MINUTES).is_empty(), "a trickle is no recovery");
        assert!(!d.judge(&minute(60, 0, 20.0), 3, WARMUP_MINUTES)[0].1);
        let mut slow = learned(60, minute(30, 0, 20.0));
        assert!(slow.judge(&Minute::default(), 0, WARMUP_MINUTES).is_empty(), "0.5 req/s is not steady");
    }

    #[test]
    fn minutes_to_learn() {
        let mut d = Detector::default();
        assert_eq!(d.minutes_to_learn(100), 100..100);
        assert_eq!(d.minutes_to_learn(100), 100..100);
        assert_eq!(d.minutes_to_learn(103), 100..103);
        assert_eq!(d.minutes_to_learn(500), 440..500);
        assert_eq!(d.minutes_to_learn(400), 500..500, "a clock going back learns nothing");
    }
}

//! Recent decisions for the dashboard (`GET /events`): a bounded ring of what the agent did and
//! saw, newest last. Memory is bounded (the last [`CAPACITY`]); the log stays the full record.
//!
//! Anyone holding the status endpoint's `State` (`status.rs`) records one with
//! `state.event(EventKind::..., text)`: one line a person can read, naming the domain, without any
//! setting or secret (the page shows it as is).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many events are kept.
pub const CAPACITY: usize = 200;

/// What happened; the dashboard colours by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new config went live and nginx was told to reload.
    Reload,
    /// An apply failed: nginx keeps its last good config.
    ApplyFailed,
    /// A domain became routed.
    RouteAdded,
    /// A domain is no longer routed.
    RouteRemoved,
    /// nginx rejected a domain's servers: it is left out of the config.
    LeftOut,
    /// An anomaly flag went up or down (traffic insight).
    Anomaly,
    /// A `heal=restart` container was restarted (or the restart failed), with its cause.
    Restart,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Increases by one per event since start: a client polling `/events` keeps the highest it saw.
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub kind: EventKind,
    pub text: String,
}

/// The ring.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    next_id: u64,
    events: VecDeque<Event>,
}

impl Events {
    /// Records one event at `at_ms`, dropping the oldest past [`CAPACITY`].
    pub fn push(&self, at_ms: u64, kind: EventKind, text: String) {
        let mut ring = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.next_id += 1;
        let id = ring.next_id;
        if ring.events.len() == CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(Event { id, at_ms, kind, text });
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<Event> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).events.iter().cloned().collect()
    }

    /// `GET /events`: `{"events": [...]}`, oldest first.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct View {
            events: Vec<Event>,
        }
        serde_json::to_string(&View { events: self.list() }).expect("events serialize") + "\n"
    }
}

/// The text of an anomaly's start or end, for `EventKind::Anomaly`: the domain, what moved, the
/// figure and its baseline, e.g. `api.test: 5xx share up: 25.0 % of 600 requests (baseline 1.0 %)`.
pub fn anomaly_text(event: &crate::insight::AnomalyEvent) -> String {
    use crate::insight::AnomalyKind;
    let f = &event.figures;
    let (what, value, baseline) = match event.kind {
        AnomalyKind::ErrorRatio => {
            ("5xx share", format!("{:.1} %", f.observed * 100.0), format!("{:.1} %", f.baseline * 100.0))
        }
        AnomalyKind::Latency => ("p95", format!("{:.0} ms", f.observed), format!("{:.0} ms", f.baseline)),
        AnomalyKind::TrafficDrop => ("traffic", format!("{:.2} req/s", f.observed), format!("{:.2} req/s", f.baseline)),
    };
    let verb = match (event.kind, event.started) {
        (AnomalyKind::TrafficDrop, true) => "dropped to",
        (_, true) => "up:",
        (_, false) => "back to",
    };
    format!("{}: {what} {verb} {value} of {} requests (baseline {baseline})", event.domain, f.requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomaly_texts_name_the_domain_the_figure_and_its_baseline() {
        use crate::insight::{AnomalyEvent, AnomalyKind, Figures};
        let event = |kind, started, observed, baseline| AnomalyEvent {
            domain: "api.test".into(),
            kind,
            started,
            figures: Figures { observed, baseline, requests: 600 },
            at_ms: 0,
        };
        assert_eq!(
            anomaly_text(&event(AnomalyKind::ErrorRatio, true, 0.25, 0.01)),
            "api.test: 5xx share up: 25.0 % of 600 requests (baseline 1.0 %)"
        );
        assert_eq!(
            anomaly_text(&event(AnomalyKind::Latency, false, 45.0, 40.0)),
            "api.test: p95 back to 45 ms of 600 requests (baseline 40 ms)"
        );
        assert_eq!(
            anomaly_text(&event(AnomalyKind::TrafficDrop, true, 0.0, 3.2)),
            "api.test: traffic dropped to 0.00 req/s of 600 requests (baseline 3.20 req/s)"
        );
    }

    #[test]
    fn keeps_the_last_200_with_increasing_ids() {
        let events = Events::default();
        for i in 0..250 {
            events.push(i, EventKind::Reload, format!("reload {i}"));
        }
        let list = events.list();
        assert_eq!(list.len(), CAPACITY);
        assert_eq!(list[0].id, 51);
        assert_eq!(list[0].text, "reload 50");
        assert_eq!(list.last().unwrap().id, 250);
        let json: serde_json::Value = serde_json::from_str(&events.to_json()).unwrap();
        assert_eq!(json["events"][0]["kind"], "reload");
        assert_eq!(json["events"][0]["at_ms"], 50);
    }
}

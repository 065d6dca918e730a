//! Exponential backoff: the one retry schedule of the agent (Docker reconnects and failed calls,
//! failed applies, DNS propagation polls). Certificate orders keep their own persisted schedule
//! (`certs::store::backoff`), which must survive restarts.

use std::time::Duration;

/// A delay that doubles from `first` up to `max` with each [`Backoff::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max: max.max(first), current: first }
    }

    /// The delay now in force.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Doubles the delay (up to the maximum).
    pub fn advance(&mut self) {
        self.current = (self.current * 2).min(self.max);
    }

    /// The delay now in force, then advances: for a loop that sleeps and tries again.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.advance();
        delay
    }

    /// Starts over at the first delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_starts_over() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(250), ms(1000));
        let delays: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(250), ms(500), ms(1000), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.current(), ms(250));
        b.advance();
        assert_eq!(b.current(), ms(500));
        // A maximum below the first delay never shortens it.
        assert_eq!(Backoff::new(ms(300), ms(100)).next_delay(), ms(300));
    }
}

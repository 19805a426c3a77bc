//! A peer's clock in the scenarios that check tenure against real time
//! (`supervise`, `leases`): a rate within `1 ± drift` of real time and an
//! offset of its own, drawn afresh at every restart.

use shoal_overlay::{Instant, Rng};

const SECOND: u64 = 1_000_000;

/// One peer's clock.
pub(super) struct Clock {
    rate: f64,
    offset: f64,
}

impl Clock {
    /// Its reading at real time `real` (µs).
    pub(super) fn local(&self, real: u64) -> Instant {
        Instant::from_micros((self.offset + real as f64 * self.rate).max(0.0) as u64)
    }

    /// The real time (µs) at which it reads `local`.
    pub(super) fn real(&self, local: Instant) -> u64 {
        ((local.as_micros() as f64 - self.offset) / self.rate).ceil().max(0.0) as u64
    }
}

/// A clock whose rate lies within `1 ± drift` of real time.
pub(super) fn clock(rng: &mut Rng, drift: f64) -> Clock {
    Clock {
        rate: 1.0 + drift * (2.0 * rng.unit_f64() - 1.0),
        offset: rng.below(1_000 * SECOND) as f64,
    }
}

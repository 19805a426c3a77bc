//! Round-trip time estimate, and the stall timeout a lookup derives from it.

use std::time::Duration;

/// Smoothed round-trip time and its variation, as TCP keeps them (RFC 6298):
/// `srtt += (rtt - srtt) / 8`, `rttvar += (|rtt - srtt| - rttvar) / 4`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct RttEstimate {
    srtt_us: u32,
    rttvar_us: u32,
    /// The largest recent round trip: jumps up to a new maximum, decays by
    /// 1/64 of the gap per smaller sample.
    max_us: u32,
    samples: u32,
}

/// A lookup never treats a request as stalled sooner than this.
pub(crate) const MIN_STALL: Duration = Duration::from_millis(10);
/// Samples needed before the estimate is trusted.
const WARM_UP_SAMPLES: u32 = 4;

impl RttEstimate {
    pub(crate) fn sample(&mut self, rtt: Duration) {
        let rtt_us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        if rtt_us >= self.max_us {
            self.max_us = rtt_us;
        } else {
            self.max_us -= (self.max_us - rtt_us) / 64;
        }
        if self.samples == 0 {
            self.srtt_us = rtt_us;
            self.rttvar_us = rtt_us / 2;
        } else {
            let deviation = self.srtt_us.abs_diff(rtt_us);
            self.rttvar_us = self.rttvar_us - self.rttvar_us / 4 + deviation / 4;
            self.srtt_us = self.srtt_us - self.srtt_us / 8 + rtt_us / 8;
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// How long a lookup waits for an answer before it asks someone else
    /// (the request itself stays open until `request_timeout`): the larger
    /// of `srtt + 4 rttvar` and twice the largest recent round trip, at
    /// least [`MIN_STALL`], at most `request_timeout`; half of
    /// `request_timeout` until a few samples are in.
    ///
    /// The estimate is per core, not per peer, and peers on a WAN differ
    /// tenfold in distance: the recent maximum keeps the far but live ones
    /// from being taken for dead, which would cost lookups their closest
    /// peer.
    pub(crate) fn stall_timeout(&self, request_timeout: Duration) -> Duration {
        if self.samples < WARM_UP_SAMPLES {
            return request_timeout / 2;
        }
        let rto = (u64::from(self.srtt_us) + 4 * u64::from(self.rttvar_us)).max(2 * u64::from(self.max_us));
        // Not `clamp`: a request timeout below MIN_STALL must win, not panic.
        Duration::from_micros(rto).max(MIN_STALL).min(request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rtt_gives_a_tight_stall_timeout_and_jitter_widens_it() {
        let timeout = Duration::from_secs(5);
        let mut steady = RttEstimate::default();
        assert_eq!(steady.stall_timeout(timeout), timeout / 2);
        for _ in 0..50 {
            steady.sample(Duration::from_millis(40));
        }
        let tight = steady.stall_timeout(timeout);
        assert!(
            tight >= Duration::from_millis(80) && tight < Duration::from_millis(100),
            "{tight:?}"
        );
        let mut jittery = RttEstimate::default();
        for i in 0..50 {
            jittery.sample(Duration::from_millis(if i % 2 == 0 { 10 } else { 70 }));
        }
        assert!(jittery.stall_timeout(timeout) > tight);
        let mut lan = RttEstimate::default();
        for _ in 0..50 {
            lan.sample(Duration::from_micros(300));
        }
        assert_eq!(lan.stall_timeout(timeout), MIN_STALL);
    }
}

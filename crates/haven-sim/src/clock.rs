//! Per-node local clocks: each node's clock runs at a fixed rate within ±`drift_ppm` of
//! true time and starts from its own offset (wall-clock skew).
//!
//! Simulated true time is in microseconds so that rounding can never create or hide a
//! lease overlap; the controller sees milliseconds, as the agent's `now_ms()` gives it.
//! A node uses only its own clock for its timers and lease deadlines, and the leader uses
//! its own clock for heartbeat receipt times, exactly as in the agent.

/// True-time microseconds since the start of the run.
pub type Micros = u64;

/// Wall-clock microseconds at true time 0 (2023-11-14), so `Request::at` looks real.
pub const EPOCH_US: u64 = 1_700_000_000_000_000;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_us: u64,
    /// Rate error in parts per million: +5000 runs 0.5% fast.
    rate_ppm: i64,
}

const MILLION: i128 = 1_000_000;

impl Clock {
    pub fn new(offset_us: u64, rate_ppm: i64) -> Clock {
        Clock { offset_us, rate_ppm }
    }

    pub fn rate_ppm(&self) -> i64 {
        self.rate_ppm
    }

    /// This node's clock (µs) at true time `t`.
    pub fn local(&self, t: Micros) -> u64 {
        let scaled = i128::from(t) * (MILLION + i128::from(self.rate_ppm)) / MILLION;
        self.offset_us + scaled as u64
    }

    /// This node's clock in ms, as `now_ms()` in the agent.
    pub fn local_ms(&self, t: Micros) -> u64 {
        self.local(t) / 1000
    }

    /// The earliest true time at which this clock reads at least `local`.
    pub fn true_at(&self, local: u64) -> Micros {
        if local <= self.offset_us {
            return 0;
        }
        let d = i128::from(local - self.offset_us) * MILLION;
        let rate = MILLION + i128::from(self.rate_ppm);
        ((d + rate - 1) / rate) as u64
    }

    /// True time at which `local_us` more local microseconds have passed since true time `t`.
    pub fn after(&self, t: Micros, local_us: u64) -> Micros {
        self.true_at(self.local(t) + local_us).max(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_at_inverts_local() {
        for ppm in [-5000, 0, 5000] {
            let c = Clock::new(EPOCH_US + 123, ppm);
            for t in [0, 1, 999, 3_000_000, 90_000_000] {
                let l = c.local(t);
                let back = c.true_at(l);
                assert!(back <= t && c.local(back) >= l, "ppm {ppm} t {t}");
            }
        }
        let fast = Clock::new(0, 5000);
        assert_eq!(fast.local(1_000_000), 1_005_000);
    }
}

//! Arithmetic on clock readings that cannot panic. `Instant + Duration` panics when the sum
//! does not fit; a duration read from the cluster state (a resource property, a timeout)
//! can be anything a bug or an older version let through, and must never take a worker
//! down. These helpers saturate at a far-future instant instead.

use std::time::Duration;

use tokio::time::Instant;

/// About 30 years: later than anything Haven waits for, and what tokio itself uses as
/// "never" for a sleep or a timeout that does not fit.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + d`, or an instant about 30 years after `at` when that sum does not fit (or `d` is
/// longer than that): never panics.
pub fn instant_after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FAR_FUTURE)).or_else(|| at.checked_add(Duration::from_secs(86_400))).unwrap_or(at)
}

/// `d` in whole milliseconds as a `u64`, `u64::MAX` when it does not fit.
pub fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_that_do_not_fit_saturate() {
        let now = Instant::now();
        assert_eq!(instant_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert_eq!(instant_after(now, Duration::MAX), now + FAR_FUTURE);
        // 292277000000 years, the value of the issue that panicked the group worker.
        let huge = haven_model::Dur::parse("292277000000y").unwrap().0;
        assert_eq!(instant_after(now, huge), now + FAR_FUTURE);
        assert!(instant_after(now, Duration::ZERO) == now);
        assert_eq!(millis_u64(Duration::MAX), u64::MAX);
        assert_eq!(millis_u64(Duration::from_millis(1500)), 1500);
    }
}

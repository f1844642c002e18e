//! The failover threshold: how many times a group may be moved off a failed or lost owner
//! within its failover period before it is left failed instead of bouncing around the
//! cluster.
//!
//! Only answers "may it fail over once more, and if not, why"; choosing the target is
//! `placement`, recording the failover is `Command::PlaceGroup { failover: true }`.

use haven_model::{Group, Millis};

/// Failovers of `group` recorded within its failover period before `now`.
pub fn failovers_in_period(group: &Group, now: Millis) -> usize {
    let period = group.spec.failover_period.as_millis();
    group.failovers.iter().filter(|t| t.saturating_add(period) > now && **t <= now).count()
}

/// `Ok` while the failovers within `failover_period` are fewer than the group's effective
/// failover threshold (its own, or `node_count − 1`). The error says how many happened,
/// within which period, and what the threshold is.
pub fn failover_allowed(group: &Group, node_count: usize, now: Millis) -> Result<(), String> {
    let threshold = group.effective_failover_threshold(node_count);
    let done = failovers_in_period(group, now);
    let source = if group.spec.failover_threshold.is_some() { "" } else { ", nodes - 1" };
    if threshold == 0 {
        return Err(format!("failover is disabled (failover threshold 0{source})"));
    }
    if u64::try_from(done).unwrap_or(u64::MAX) < u64::from(threshold) {
        return Ok(());
    }
    let times = if done == 1 { "once".to_string() } else { format!("{done} times") };
    Err(format!(
        "it failed over {times} within {} (failover threshold {threshold}{source}); clear its failures to allow more",
        group.spec.failover_period
    ))
}

#[cfg(test)]
mod tests {
    use haven_model::{Dur, GroupSpec};

    use super::*;

    fn group(threshold: Option<u32>, failovers: &[Millis]) -> Group {
        let mut spec = GroupSpec::new("web");
        spec.failover_threshold = threshold;
        spec.failover_period = Dur::from_secs(3600);
        Group { spec, owner: None, generation: 0, failovers: failovers.to_vec(), failed_reason: None, handoff: None }
    }

    #[test]
    fn default_threshold_is_nodes_minus_one() {
        let g = group(None, &[1_000]);
        assert_eq!(failover_allowed(&g, 3, 2_000), Ok(()));
        let g = group(None, &[1_000, 2_000]);
        assert_eq!(
            failover_allowed(&g, 3, 3_000).unwrap_err(),
            "it failed over 2 times within 1h (failover threshold 2, nodes - 1); clear its failures to allow more"
        );
    }

    #[test]
    fn old_failovers_expire() {
        let g = group(Some(1), &[1_000]);
        assert!(failover_allowed(&g, 3, 2_000).is_err());
        assert_eq!(failover_allowed(&g, 3, 1_000 + 3_600_000), Ok(()));
    }

    #[test]
    fn threshold_zero_disables_failover() {
        assert_eq!(
            failover_allowed(&group(Some(0), &[]), 3, 0).unwrap_err(),
            "failover is disabled (failover threshold 0)"
        );
        assert!(failover_allowed(&group(None, &[]), 1, 0).is_err());
    }

    /// The longest period allowed, and the largest a stored state could hold, count
    /// failovers without overflow.
    #[test]
    fn the_longest_periods_do_not_overflow() {
        for period in [Dur::from_secs(30 * 86_400), Dur(std::time::Duration::MAX)] {
            let mut g = group(Some(1000), &[0, 5, u64::MAX - 1]);
            g.spec.failover_period = period;
            assert!(failovers_in_period(&g, u64::MAX) <= 3);
            assert_eq!(failovers_in_period(&g, 10), 2);
            assert_eq!(failover_allowed(&g, 3, 10), Ok(()));
            g.spec.failover_threshold = Some(u32::MAX);
            assert_eq!(failover_allowed(&g, 3, u64::MAX), Ok(()));
        }
    }
}

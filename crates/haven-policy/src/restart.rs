//! Restart in place or give up: the first step of the recovery ladder (restart in place,
//! then fail the group over, then leave it failed).
//!
//! The owner's local resource manager asks this after every failure; the controller asks
//! it to word why a resource was given up. It does not count failures itself beyond
//! filtering by time, and it never looks at other nodes.

use haven_model::{Millis, ResourceProps, RestartAction};

/// What to do after a resource failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart it on the same node after `delay_ms`.
    Restart { delay_ms: u64 },
    /// Stop trying in place; `reason` names the counts and the period.
    GiveUp { reason: String },
}

/// `failures_in_period` includes the failure just seen. Restarts continue while it is at
/// most `restart_threshold` (so the default 3 allows three restarts in 15 minutes and gives
/// up on the fourth failure), unless the action is `do-not-restart`.
pub fn restart_decision(props: &ResourceProps, failures_in_period: usize) -> RestartDecision {
    if props.restart_action == RestartAction::DoNotRestart {
        return RestartDecision::GiveUp { reason: "its restart action is do-not-restart".to_string() };
    }
    let threshold = usize::try_from(props.restart_threshold).unwrap_or(usize::MAX);
    if failures_in_period <= threshold {
        return RestartDecision::Restart { delay_ms: props.restart_delay.as_millis() };
    }
    let times = if failures_in_period == 1 { "once".to_string() } else { format!("{failures_in_period} times") };
    RestartDecision::GiveUp {
        reason: format!(
            "failed {times} within {} (restart threshold {})",
            props.restart_period, props.restart_threshold
        ),
    }
}

/// How many of `failures` happened within the restart period before `now`.
pub fn failures_in_period(props: &ResourceProps, failures: &[Millis], now: Millis) -> usize {
    let period = props.restart_period.as_millis();
    failures.iter().filter(|t| t.saturating_add(period) > now && **t <= now).count()
}

#[cfg(test)]
mod tests {
    use haven_model::Dur;

    use super::*;

    #[test]
    fn restarts_up_to_the_threshold_then_gives_up() {
        let p = ResourceProps::default();
        assert_eq!(restart_decision(&p, 1), RestartDecision::Restart { delay_ms: 500 });
        assert_eq!(restart_decision(&p, 3), RestartDecision::Restart { delay_ms: 500 });
        assert_eq!(
            restart_decision(&p, 4),
            RestartDecision::GiveUp { reason: "failed 4 times within 15m (restart threshold 3)".into() }
        );
    }

    #[test]
    fn threshold_zero_gives_up_on_first_failure() {
        let p = ResourceProps { restart_threshold: 0, restart_period: Dur::from_secs(60), ..Default::default() };
        assert_eq!(
            restart_decision(&p, 1),
            RestartDecision::GiveUp { reason: "failed once within 1m (restart threshold 0)".into() }
        );
    }

    #[test]
    fn do_not_restart_never_restarts() {
        let p = ResourceProps { restart_action: RestartAction::DoNotRestart, ..Default::default() };
        assert!(matches!(restart_decision(&p, 0), RestartDecision::GiveUp { .. }));
    }

    #[test]
    fn restart_no_failover_still_restarts_in_place() {
        let p = ResourceProps { restart_action: RestartAction::RestartNoFailover, ..Default::default() };
        assert_eq!(restart_decision(&p, 2), RestartDecision::Restart { delay_ms: 500 });
    }

    #[test]
    fn failures_outside_the_period_do_not_count() {
        let p = ResourceProps { restart_period: Dur::from_secs(10), ..Default::default() };
        assert_eq!(failures_in_period(&p, &[1_000, 5_000, 12_000], 14_000), 2);
        assert_eq!(failures_in_period(&p, &[1_000, 5_000, 12_000], 30_000), 0);
    }

    /// The bounds' ends and the largest values a stored state could hold are counted and
    /// decided without overflow.
    #[test]
    fn bounds_and_the_largest_values_do_not_overflow() {
        use haven_model::bounds;
        let longest = |b: bounds::Bound| match b.limit {
            bounds::Limit::Duration { max, .. } => max,
            bounds::Limit::Count { .. } => unreachable!("a duration bound"),
        };
        for (period, delay, threshold) in [
            (longest(bounds::RESTART_PERIOD), longest(bounds::RESTART_DELAY), 1000),
            (Dur(std::time::Duration::MAX), Dur(std::time::Duration::MAX), u32::MAX),
        ] {
            let p = ResourceProps {
                restart_period: period,
                restart_delay: delay,
                restart_threshold: threshold,
                ..Default::default()
            };
            assert!(failures_in_period(&p, &[0, 1, u64::MAX - 1], u64::MAX) <= 3);
            assert_eq!(failures_in_period(&p, &[0, 1], 5), 2);
            assert_eq!(restart_decision(&p, 1), RestartDecision::Restart { delay_ms: delay.as_millis() });
            assert!(matches!(restart_decision(&p, usize::MAX), RestartDecision::GiveUp { .. }));
        }
    }
}

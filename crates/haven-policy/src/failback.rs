//! Failback: moving a group back to a more preferred owner that is up again, according to
//! the group's `failback` setting (never, immediately, or within a window of UTC hours).
//!
//! Only answers "should it move back now, and where". It does not move anything, and it
//! never fails a group back onto a node where one of the group's resources last failed.

use haven_model::{Failback, ResourceState};
use haven_state::State;

use crate::placement::place;

/// Whether `hour` (UTC, 0–23) is inside a failback window. `start == end` means any
/// hour; otherwise the window is `[start, end)` and may wrap past midnight (22–4).
pub fn in_failback_window(start_hour: u8, end_hour: u8, hour: u8) -> bool {
    match start_hour.cmp(&end_hour) {
        std::cmp::Ordering::Equal => true,
        std::cmp::Ordering::Less => (start_hour..end_hour).contains(&hour),
        std::cmp::Ordering::Greater => hour >= start_hour || hour < end_hour,
    }
}

/// The node `group` should fail back to now, if any: the best placement, when that is a
/// preferred owner listed before the current owner (or the current owner is not preferred
/// at all). `None` for groups that are offline, unowned, failed, owned by a node that is
/// down or paused (failover and drain handle those), whose failback is `never`, or outside
/// their window.
pub fn should_fail_back(state: &State, group: &str, now_utc_hour: u8) -> Option<String> {
    let g = state.groups.get(group)?;
    let owner = g.owner.as_deref()?;
    if !g.spec.online || g.failed_reason.is_some() || g.spec.preferred_owners.is_empty() {
        return None;
    }
    match g.spec.failback {
        Failback::Never => return None,
        Failback::Immediate => {}
        Failback::Window { start_hour, end_hour } => {
            if !in_failback_window(start_hour, end_hour, now_utc_hour) {
                return None;
            }
        }
    }
    let owner_node = state.nodes.get(owner)?;
    if !owner_node.is_up() || owner_node.paused {
        return None;
    }
    // A node where one of the group's resources last failed is not a place to go back to.
    let failed_on: Vec<&str> = state
        .group_resources(group)
        .filter(|r| r.status.state == ResourceState::Failed)
        .filter_map(|r| r.status.node.as_deref())
        .filter(|n| *n != owner)
        .collect();
    let best = place(state, group, &failed_on).node?;
    let rank = |n: &str| g.spec.preferred_owners.iter().position(|p| p == n);
    let better = match (rank(&best), rank(owner)) {
        (Some(b), Some(o)) => b < o,
        (Some(_), None) => true,
        (None, _) => false,
    };
    better.then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert!(in_failback_window(5, 5, 17));
        assert!(in_failback_window(1, 5, 1));
        assert!(in_failback_window(1, 5, 4));
        assert!(!in_failback_window(1, 5, 5));
        assert!(in_failback_window(22, 4, 23));
        assert!(in_failback_window(22, 4, 0));
        assert!(!in_failback_window(22, 4, 12));
    }
}

//! Rule 7, fencing: a down node that has a fence agent must be fenced (the agent reported
//! success after the node went down) before any of its groups is recovered elsewhere. The
//! controller only asks (`RequestFence`); the leader's fence executor runs the agent and
//! records the outcome. A failed fence is never treated as success: the groups wait, and
//! the request is repeated every `FENCE_RETRY_MS` until an agent reports success.

use haven_model::Millis;
use haven_state::{Command, State};

use crate::rules::Tick;
use crate::{Decision, Rule};

/// Wait between a failed fence attempt and the next request.
pub const FENCE_RETRY_MS: Millis = 5_000;

/// `None` when recovery may go ahead (no fence agent, or fenced since it went down);
/// otherwise what to do meanwhile: `Some(Some(request))` or `Some(None)` (wait).
pub(crate) fn before_recovery(state: &State, node: &str, cause: &str, tick: &Tick) -> Option<Option<Decision>> {
    if !state.fencing.contains_key(node) || state.fenced_since_down(node) {
        return None;
    }
    let since = state.nodes.get(node).map(|n| n.since).unwrap_or(0);
    let status = state.fence_status.get(node);
    let requested = status.and_then(|s| s.requested_at).is_some_and(|t| t >= since);
    let retry_wait = status
        .and_then(|s| s.last_attempt_at)
        .is_some_and(|t| t >= since && tick.now < t.saturating_add(FENCE_RETRY_MS));
    if requested || retry_wait {
        return Some(None);
    }
    let why = match status.and_then(|s| s.last_error.as_ref()).filter(|_| status.is_some_and(|s| s.failures > 0)) {
        Some(err) => format!("{cause}; its groups wait until it is fenced (last attempt failed: {err})"),
        None => format!("{cause}; its groups wait until it is fenced"),
    };
    let command = Command::RequestFence { node: node.to_string(), reason: why.clone() };
    Some(Some(Decision { rule: Rule::Fencing, command, why }))
}

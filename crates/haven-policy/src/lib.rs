//! Haven's pure decisions: where a group should run, whether a failed resource is
//! restarted in place, whether a group may fail over again, and when it fails back.
//!
//! Every answer carries its reasons in words an operator can act on (architecture
//! invariant 5: every decision is explainable). This crate only *answers questions*
//! about a `State`; it never changes one and never decides *when* to act — that is the
//! controller's job. It must stay pure: no clocks (time is an argument), no I/O, no
//! randomness, no async, and the same inputs always give the same answer.

pub mod failback;
pub mod failover;
pub mod placement;
pub mod restart;
mod text;

pub use failback::{in_failback_window, should_fail_back};
pub use failover::{failover_allowed, failovers_in_period};
pub use placement::{Exclusion, NodeUsage, Placement, node_usage, place};
pub use restart::{RestartDecision, failures_in_period, restart_decision};
pub use text::seconds;

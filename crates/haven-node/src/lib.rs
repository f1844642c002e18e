//! `haven-node`: what a node decides on its own side, without I/O, so that the agent runs
//! it and the simulator (`haven-sim`) drives the very same code with its clocks.
//!
//! No tokio, no clock, no files, no network. Time is an argument: [`Micros`], a reading of
//! the node's *own* monotonic clock in microseconds from an origin the caller chooses (the
//! agent: when its lease keeper was created; the simulator: the node's local clock). Only
//! differences and comparisons of readings from one clock mean anything.
//!
//! - [`lease`]: the lease this node holds with the leader — when it is valid, whether the
//!   node may run resources, and the clock-drift allowance, in one place.
//! - [`lrm`]: the local resource manager of one group, as a step function: which driver
//!   call to make next (start, stop, kill, check), what to report, when to abandon a call
//!   in progress, and when to release a group handed off.
//! - [`grant`]: the leader's lease table and the rule that grants a renewal neither while a
//!   controller tick commits nor to a node marked down (invariant 3).
//! - [`guard`]: what the agent tells its node guard (the lease's end) and when the guard
//!   lets the node's resources live.
//! - [`leadership`]: the controller loop's term and `leader_since` bookkeeping.
//! - [`contact`]: each node's notes of when it last vouched for a leader, and how a new
//!   leader combines a majority's notes into the bound on earlier grants (invariant 4).
//! - [`report`]: the queue of status reports to the cluster — order, duplicates dropped,
//!   moot statuses replaced, retries unless a newer report about the same thing replaced
//!   them — and the sender's backpressure (`ReportPacing`: slower batches when commits slow).
//! - [`timing`]: the timing profiles (default, aggressive), one table from which the
//!   agent's, the controller's, Raft's and the simulator's timing are derived.

pub mod contact;
pub mod grant;
pub mod guard;
pub mod leadership;
pub mod lease;
pub mod lrm;
pub mod report;
pub mod timing;

pub use contact::{ContactLog, ContactRule};
pub use grant::{GrantAnswer, GrantRule, GrantTable};
pub use leadership::Leadership;
pub use lease::{Lease, LeaseRule, PROVISIONAL, Renewal};
pub use lrm::{GroupLrm, LrmRule};
pub use report::{Pushed, ReportPacing, ReportQueue};
pub use timing::TimingProfile;

/// Microseconds on the node's own monotonic clock (see the crate documentation).
pub type Micros = u64;

//! The queue of this node's status reports to the cluster: sent in order, one commit at a
//! time (everything queued, up to a bound, as one batch: [`ReportQueue::next_batch`]),
//! without making the resource manager wait for the network (self-fencing must never
//! block on a write that cannot commit). A report that fails is retried until a newer
//! report about the same thing ([`key`]) replaces it; a queued status report that a newer
//! one about the same resource makes moot is replaced by it before it is sent
//! ([`ReportQueue::push`]).
//!
//! [`ReportPacing`] is the sender's backpressure: when commits slow down (or fail), the
//! sender waits longer between batches, so more reports coalesce into each one instead of
//! adding to the leader's load. It paces status reports only: lease renewals have their own
//! path (`haven_node::lease`) and nothing here may delay them.
//!
//! Must not: reorder reports about one thing, or drop one that is not the same as, or
//! superseded by, a report queued after it.

use std::collections::VecDeque;

use haven_state::Command;

/// What a report is about: a newer report with the same key replaces an older one that
/// could not be sent (a resource's status; a group's release). Other commands have none.
pub fn key(c: &Command) -> Option<(&'static str, &str)> {
    match c {
        Command::ReportResource { resource, .. } => Some(("resource", resource)),
        Command::ReleaseGroup { group, .. } => Some(("release", group)),
        _ => None,
    }
}

/// Most reports one commit carries (within `haven_state::BATCH_LIMIT`).
pub const REPORT_BATCH_MAX: usize = 200;

/// What [`ReportQueue::push`] did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Appended to the queue.
    Queued,
    /// Dropped: the same as the last queued report about the same thing.
    Duplicate,
    /// Replaced the last queued status report about the same resource (moot now).
    Replaced,
}

/// Reports waiting to be committed, oldest first, and those being sent (in order).
#[derive(Clone, Debug, Default)]
pub struct ReportQueue {
    queue: VecDeque<Command>,
    in_flight: Vec<Command>,
}

impl ReportQueue {
    pub fn new() -> ReportQueue {
        ReportQueue::default()
    }

    /// Queues `c`, and says what became of it:
    ///
    /// - [`Pushed::Duplicate`]: dropped, because the last queued report about the same thing
    ///   is the very same report (it would commit once more and change nothing). Only the
    ///   *last* one counts: `starting, online, starting` must keep its final word.
    /// - [`Pushed::Replaced`]: `c` is a status report and replaces the last queued one about
    ///   the same resource (removed; `c` is appended), which it makes moot: that one counted no failure
    ///   (`failure: false`, so the restart threshold loses nothing) and only status reports
    ///   about other resources were queued after it (they commute with it: a report changes
    ///   only its own resource; a release, which reads its group's statuses, or any other
    ///   command in between keeps the older report where it is). Applied, the batch ends in
    ///   the same state; only the history misses the intermediate status.
    /// - [`Pushed::Queued`]: appended at the end.
    ///
    /// Without the first rule, a node handing off several groups could queue releases faster
    /// than they commit: every commit woke the resource manager, which sent each pending
    /// group's release again, so the queue grew by one per group per commit, a new handoff's
    /// release waited behind all of them, and the moves never finished (issue 9: groups stuck
    /// `moving`). The second is what makes waiting pay off when commits are slow
    /// ([`ReportPacing`]): a resource's `starting` and `online` queued meanwhile go out as
    /// its `online` alone.
    pub fn push(&mut self, c: Command) -> Pushed {
        let Some(k) = key(&c) else {
            self.queue.push_back(c);
            return Pushed::Queued;
        };
        let Some(i) = self.queue.iter().rposition(|q| key(q) == Some(k)) else {
            self.queue.push_back(c);
            return Pushed::Queued;
        };
        if self.queue[i] == c {
            return Pushed::Duplicate;
        }
        let moot = matches!(c, Command::ReportResource { .. })
            && matches!(self.queue[i], Command::ReportResource { failure: false, .. })
            && self.queue.iter().skip(i + 1).all(|q| matches!(q, Command::ReportResource { .. }));
        if moot {
            // Queued last, as if the moot one had never been: the reports go out in the
            // order things happened.
            self.queue.remove(i);
            self.queue.push_back(c);
            return Pushed::Replaced;
        }
        self.queue.push_back(c);
        Pushed::Queued
    }

    /// The report to send now: the oldest queued one, unless reports are being sent. It
    /// stays in flight until [`ReportQueue::sent`] or [`ReportQueue::failed`].
    pub fn next_to_send(&mut self) -> Option<Command> {
        self.next_batch(1, usize::MAX).pop()
    }

    /// The reports to send now as one commit, oldest first: as many queued ones as fit in
    /// `max` reports and about `max_bytes` of JSON (at least one), none while reports are
    /// being sent. They stay in flight until [`ReportQueue::sent`] or
    /// [`ReportQueue::failed`]. Applied in order, as one at a time would be: a report is
    /// never merged with or dropped for a later one here, so every failure still counts.
    pub fn next_batch(&mut self, max: usize, max_bytes: usize) -> Vec<Command> {
        if !self.in_flight.is_empty() {
            return Vec::new();
        }
        let mut bytes = 0usize;
        while self.in_flight.len() < max.max(1) {
            let Some(c) = self.queue.front() else { break };
            let size = haven_state::encoded_len(c);
            if !self.in_flight.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            if let Some(c) = self.queue.pop_front() {
                self.in_flight.push(c);
            }
        }
        self.in_flight.clone()
    }

    /// The reports in flight are done: committed, or refused by the state machine (e.g.
    /// their resource was deleted), so there is nothing to retry.
    pub fn sent(&mut self) {
        self.in_flight.clear();
    }

    /// The reports in flight were not committed (no leader, no quorum, lost): they go back
    /// to the front of the queue, in order, except each one about a thing a report queued
    /// meanwhile is about. Returns whether any will be retried.
    pub fn failed(&mut self) -> bool {
        let in_flight = std::mem::take(&mut self.in_flight);
        // A command without a key (the node sends none today) is about nothing in
        // particular, so nothing supersedes it.
        let kept: Vec<Command> = in_flight
            .into_iter()
            .filter(|c| !key(c).is_some_and(|k| self.queue.iter().any(|q| key(q) == Some(k))))
            .collect();
        let retried = !kept.is_empty();
        for c in kept.into_iter().rev() {
            self.queue.push_front(c);
        }
        retried
    }

    /// Whether reports are being sent.
    pub fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }

    /// The queued reports (not the one in flight), oldest first.
    pub fn queued(&self) -> impl Iterator<Item = &Command> {
        self.queue.iter()
    }

    /// Everything in memory is lost (a crash).
    pub fn clear(&mut self) {
        *self = ReportQueue::default();
    }
}

/// A batch commit slower than this (ms, from sending to the answer) means the leader is
/// busy: the sender backs off. A healthy commit takes a few ms to a few tens of ms (a quorum
/// round and a durable write on every node; ~20 ms at 8 nodes on a loaded 2-core machine),
/// so 200 ms is an order of magnitude above that and well under a lease (renewals are not
/// paced, but a leader this slow is the one whose renewals are at risk).
pub const REPORT_SLOW_COMMIT_MS: u64 = 200;

/// The longest interval from one batch's send to the next (ms). Bounded so that the API is
/// never more than about this much (plus one commit) behind what the node did, however
/// slow commits are.
pub const REPORT_DELAY_MAX_MS: u64 = 1_000;

/// The first wait after a batch that did not commit (ms): no leader, no quorum, a timeout.
pub const REPORT_RETRY_MS: u64 = 250;

/// Below this (ms), a shrinking wait ends: the sender is back to sending at once.
const REPORT_DELAY_FLOOR_MS: u64 = 10;

/// When the status-report sender may send its next batch: backpressure from the commit
/// path. The sender tells it how each batch ended ([`ReportPacing::committed`] with the
/// commit's latency, or [`ReportPacing::failed`]) and sends the next batch no earlier than
/// [`ReportPacing::ready_at`].
///
/// It keeps an *interval*, the least time from one batch's send to the next (times in ms
/// on the node's own monotonic clock):
/// - a commit slower than [`REPORT_SLOW_COMMIT_MS`]: the interval becomes the larger of
///   twice the last one and the commit's own latency, at most [`REPORT_DELAY_MAX_MS`];
/// - a fast commit: half the last interval (0 below 10 ms), so a node catches up within a
///   few batches once commits are fast again;
/// - time the sender sat idle past [`ReportPacing::ready_at`] (nothing to send) is taken
///   off the interval first: a node quiet since a slow phase starts the next one afresh;
/// - a batch that did not commit: the interval doubles, at least [`REPORT_RETRY_MS`], at
///   most [`REPORT_DELAY_MAX_MS`], and is counted from the failure (250, 500, 1000 ms for
///   failures in a row).
///
/// Counted from the send, not from the answer: one slow commit adds no wait of its own (the
/// commit took the interval already), so a node that reports now and then (a failover's
/// `starting`, then `online`) is not held back; only a node sending batch after batch into
/// slow commits is slowed, to at most one batch per second, and the reports that pile up
/// meanwhile in the [`ReportQueue`] (where moot ones are replaced: [`ReportQueue::push`])
/// go as one commit. Nothing is dropped for being late: every report still goes, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportPacing {
    interval_ms: u64,
    ready_at_ms: u64,
}

impl ReportPacing {
    pub fn new() -> ReportPacing {
        ReportPacing::default()
    }

    /// A batch committed (or was refused: an answer all the same) at `now_ms`, `latency_ms`
    /// after it was sent. Returns the wait from now before the next batch.
    pub fn committed(&mut self, now_ms: u64, latency_ms: u64) -> u64 {
        let sent = now_ms.saturating_sub(latency_ms);
        // Time the sender sat with nothing to send after it was allowed to: that much of the
        // interval is stale (a node quiet since a slow phase must not start the next one
        // backed off).
        let base = self.interval_ms.saturating_sub(sent.saturating_sub(self.ready_at_ms));
        self.interval_ms = if latency_ms > REPORT_SLOW_COMMIT_MS {
            base.saturating_mul(2).max(latency_ms).min(REPORT_DELAY_MAX_MS)
        } else if base / 2 < REPORT_DELAY_FLOOR_MS {
            0
        } else {
            base / 2
        };
        self.ready_at_ms = sent.saturating_add(self.interval_ms);
        self.ready_at_ms.saturating_sub(now_ms)
    }

    /// A batch did not commit (no leader, no quorum, lost, timed out), as seen at `now_ms`.
    /// Returns the wait before it (or what replaced it) is sent again.
    pub fn failed(&mut self, now_ms: u64) -> u64 {
        self.interval_ms = self.interval_ms.saturating_mul(2).clamp(REPORT_RETRY_MS, REPORT_DELAY_MAX_MS);
        self.ready_at_ms = now_ms.saturating_add(self.interval_ms);
        self.interval_ms
    }

    /// The earliest time (ms) the next batch may be sent.
    pub fn ready_at(&self) -> u64 {
        self.ready_at_ms
    }

    /// The interval the last outcome set (ms).
    pub fn interval(&self) -> u64 {
        self.interval_ms
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use haven_model::ResourceState;

    use super::*;

    fn report(resource: &str, state: ResourceState) -> Command {
        Command::ReportResource { node: "n1".into(), resource: resource.into(), state, reason: None, failure: false }
    }

    fn release(group: &str, generation: u64) -> Command {
        Command::ReleaseGroup { node: "n1".into(), group: group.into(), generation }
    }

    fn drain(q: &mut ReportQueue) -> Vec<Command> {
        let mut out = Vec::new();
        for _ in 0..100 {
            let Some(c) = q.next_to_send() else { break };
            q.sent();
            out.push(c);
        }
        out
    }

    #[test]
    fn reports_go_out_in_order_one_at_a_time() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Starting));
        q.push(report("b", ResourceState::Starting));
        let first = q.next_to_send();
        assert_eq!(first, Some(report("a", ResourceState::Starting)));
        assert!(q.in_flight());
        assert_eq!(q.next_to_send(), None, "one report in flight at a time");
        q.sent();
        assert_eq!(drain(&mut q), vec![report("b", ResourceState::Starting)]);
        assert!(q.is_idle());
    }

    #[test]
    fn a_report_identical_to_the_last_queued_one_about_it_is_dropped() {
        let mut q = ReportQueue::new();
        q.push(release("g", 4));
        q.push(report("a", ResourceState::Online));
        q.push(release("g", 4));
        q.push(report("a", ResourceState::Online));
        assert_eq!(drain(&mut q), vec![release("g", 4), report("a", ResourceState::Online)]);
    }

    #[test]
    fn only_the_last_queued_report_about_a_thing_counts_for_duplicates() {
        let mut q = ReportQueue::new();
        q.push(release("g", 1));
        q.push(report("a", ResourceState::Starting));
        q.push(release("g", 2));
        q.push(release("g", 1));
        assert_eq!(
            drain(&mut q),
            vec![release("g", 1), report("a", ResourceState::Starting), release("g", 2), release("g", 1)]
        );
    }

    #[test]
    fn a_queued_status_report_is_replaced_by_a_newer_one_about_its_resource() {
        let mut q = ReportQueue::new();
        assert_eq!(q.push(report("a", ResourceState::Starting)), Pushed::Queued);
        assert_eq!(q.push(report("b", ResourceState::Starting)), Pushed::Queued);
        assert_eq!(q.push(report("a", ResourceState::Online)), Pushed::Replaced);
        assert_eq!(q.push(report("a", ResourceState::Online)), Pushed::Duplicate);
        assert_eq!(
            q.push(report("a", ResourceState::Starting)),
            Pushed::Replaced,
            "the last word wins, whatever it is"
        );
        assert_eq!(drain(&mut q), vec![report("b", ResourceState::Starting), report("a", ResourceState::Starting)]);
    }

    #[test]
    fn a_report_counting_a_failure_or_behind_a_release_is_never_replaced() {
        let mut q = ReportQueue::new();
        let failed = Command::ReportResource {
            node: "n1".into(),
            resource: "a".into(),
            state: ResourceState::Starting,
            reason: Some("exited".into()),
            failure: true,
        };
        q.push(failed.clone());
        assert_eq!(q.push(report("a", ResourceState::Online)), Pushed::Queued, "the failure must still count");
        q.push(release("g", 1));
        assert_eq!(q.push(report("a", ResourceState::Offline)), Pushed::Queued, "the release reads a's status");
        assert_eq!(q.push(release("g", 2)), Pushed::Queued, "releases are never replaced");
        assert_eq!(
            drain(&mut q),
            vec![
                failed,
                report("a", ResourceState::Online),
                release("g", 1),
                report("a", ResourceState::Offline),
                release("g", 2)
            ]
        );
    }

    #[test]
    fn the_report_in_flight_is_never_replaced() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Starting));
        let sending = q.next_batch(10, usize::MAX);
        assert_eq!(q.push(report("a", ResourceState::Online)), Pushed::Queued);
        q.sent();
        assert_eq!(sending, vec![report("a", ResourceState::Starting)]);
        assert_eq!(drain(&mut q), vec![report("a", ResourceState::Online)]);
    }

    #[test]
    fn a_report_and_a_release_of_the_same_name_are_different_things() {
        let mut q = ReportQueue::new();
        q.push(report("x", ResourceState::Offline));
        q.push(release("x", 1));
        q.push(release("x", 1));
        assert_eq!(drain(&mut q), vec![report("x", ResourceState::Offline), release("x", 1)]);
    }

    #[test]
    fn the_report_in_flight_is_not_a_duplicate_of_a_new_one() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Online));
        let sending = q.next_to_send();
        q.push(report("a", ResourceState::Online));
        q.sent();
        assert_eq!(drain(&mut q), vec![sending.expect("one to send")]);
    }

    #[test]
    fn a_failed_report_is_retried_first() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Online));
        q.push(report("b", ResourceState::Online));
        assert!(q.next_to_send().is_some());
        assert!(q.failed());
        assert!(!q.in_flight());
        assert_eq!(drain(&mut q), vec![report("a", ResourceState::Online), report("b", ResourceState::Online)]);
    }

    #[test]
    fn a_failed_report_superseded_meanwhile_is_dropped() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Starting));
        q.push(report("b", ResourceState::Online));
        assert!(q.next_to_send().is_some());
        q.push(report("a", ResourceState::Online));
        assert!(!q.failed(), "a newer report about a was queued");
        assert_eq!(drain(&mut q), vec![report("b", ResourceState::Online), report("a", ResourceState::Online)]);
    }

    #[test]
    fn a_failed_release_is_superseded_by_a_later_release_of_the_group() {
        let mut q = ReportQueue::new();
        q.push(release("g", 3));
        assert!(q.next_to_send().is_some());
        q.push(release("g", 5));
        assert!(!q.failed());
        assert_eq!(drain(&mut q), vec![release("g", 5)]);
    }

    #[test]
    fn other_commands_are_neither_deduplicated_nor_superseded() {
        let mut q = ReportQueue::new();
        let pause = Command::SetNodePaused { name: "n1".into(), paused: true };
        q.push(pause.clone());
        q.push(pause.clone());
        assert!(q.next_to_send().is_some());
        assert!(q.failed(), "the other one has no key, so it does not supersede this one");
        assert_eq!(drain(&mut q), vec![pause.clone(), pause]);
    }

    #[test]
    fn a_batch_takes_everything_queued_up_to_the_bounds_in_order() {
        let mut q = ReportQueue::new();
        for r in ["a", "b", "c", "d", "e"] {
            q.push(report(r, ResourceState::Online));
        }
        let first = q.next_batch(3, usize::MAX);
        let names = |cs: &[Command]| {
            cs.iter()
                .map(|c| match c {
                    Command::ReportResource { resource, .. } => resource.clone(),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&first), ["a", "b", "c"]);
        assert!(q.next_batch(3, usize::MAX).is_empty(), "one batch in flight at a time");
        assert_eq!(q.next_to_send(), None);
        q.sent();
        assert_eq!(names(&q.next_batch(3, usize::MAX)), ["d", "e"]);
        q.sent();
        assert!(q.is_idle());
        // The byte budget: one report always goes, a second only if it fits.
        q.push(report("a", ResourceState::Online));
        q.push(report("b", ResourceState::Online));
        assert_eq!(names(&q.next_batch(10, 1)), ["a"]);
        q.sent();
        assert_eq!(names(&q.next_batch(10, 1)), ["b"]);
    }

    #[test]
    fn a_batch_keeps_every_report_about_a_thing_that_still_matters_and_their_order() {
        let mut q = ReportQueue::new();
        let failed = Command::ReportResource {
            node: "n1".into(),
            resource: "a".into(),
            state: ResourceState::Starting,
            reason: None,
            failure: true,
        };
        q.push(report("a", ResourceState::Starting));
        q.push(failed.clone());
        q.push(report("a", ResourceState::Online));
        q.push(report("a", ResourceState::Online));
        q.push(report("a", ResourceState::Starting));
        assert_eq!(q.next_batch(10, usize::MAX), vec![failed, report("a", ResourceState::Starting)]);
    }

    #[test]
    fn a_failed_batch_is_retried_first_in_order_without_what_was_superseded() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Starting));
        q.push(release("g", 2));
        q.push(report("b", ResourceState::Online));
        assert_eq!(q.next_batch(10, usize::MAX).len(), 3);
        q.push(report("a", ResourceState::Online));
        q.push(report("c", ResourceState::Online));
        assert!(q.failed(), "the release and b's report are retried");
        assert!(!q.in_flight());
        assert_eq!(
            q.next_batch(10, usize::MAX),
            vec![
                release("g", 2),
                report("b", ResourceState::Online),
                report("a", ResourceState::Online),
                report("c", ResourceState::Online),
            ]
        );
        q.push(release("g", 3));
        q.push(report("b", ResourceState::Offline));
        q.push(report("a", ResourceState::Offline));
        q.push(report("c", ResourceState::Offline));
        assert!(!q.failed(), "everything in flight was superseded");
        assert_eq!(drain(&mut q).len(), 4);
    }

    #[test]
    fn failed_or_sent_without_a_report_in_flight_changes_nothing() {
        let mut q = ReportQueue::new();
        assert!(!q.failed());
        q.sent();
        assert!(q.is_idle());
        q.push(report("a", ResourceState::Online));
        q.clear();
        assert!(q.is_idle());
        assert_eq!(q.queued().count(), 0);
    }

    #[test]
    fn pacing_backs_off_on_slow_or_failed_commits_and_recovers_on_fast_ones() {
        let mut p = ReportPacing::new();
        assert_eq!(p.committed(0, 30), 0, "fast commits: no wait");
        assert_eq!(p.committed(0, REPORT_SLOW_COMMIT_MS), 0, "the threshold itself is not slow");
        assert_eq!(p.committed(1_000, 300), 0, "one slow commit: no wait of its own");
        assert_eq!((p.interval(), p.ready_at()), (300, 1_000), "the interval is its latency, from its send");
        // The next batch sent as soon as allowed (back to back), slow again.
        assert_eq!(p.committed(1_250, 250), 350, "twice the interval, from the send");
        assert_eq!((p.interval(), p.ready_at()), (600, 1_600));
        assert_eq!(p.committed(6_600, 5_000), 0, "the commit took longer than the bound");
        assert_eq!(p.interval(), REPORT_DELAY_MAX_MS, "bounded");
        assert_eq!(p.failed(7_000), REPORT_DELAY_MAX_MS);
        assert_eq!(p.ready_at(), 8_000, "a failure counts from the failure");
        let waits: Vec<u64> = (0..8)
            .map(|_| {
                let sent = p.ready_at();
                p.committed(sent + 20, 20)
            })
            .collect();
        assert_eq!(waits, [480, 230, 105, 42, 11, 0, 0, 0], "halved back to nothing");
        assert_eq!(p.interval(), 0);
        let retries: Vec<u64> = (0..4).map(|k| p.failed(k)).collect();
        assert_eq!(retries, [REPORT_RETRY_MS, 500, 1_000, 1_000], "failures in a row");
    }

    #[test]
    fn a_quiet_node_starts_afresh_after_a_slow_phase() {
        let mut p = ReportPacing::new();
        p.committed(1_000, 600);
        let sent = p.ready_at();
        p.committed(sent + 600, 600);
        assert_eq!(p.interval(), 1_000, "backed off");
        // Nothing to send for 20 s, then one report into a slow commit: only its own latency.
        assert_eq!(p.committed(p.ready_at() + 20_400, 400), 0);
        assert_eq!(p.interval(), 400);
        // Idle for less than the interval: what is left of it counts.
        let mut q = ReportPacing::new();
        q.committed(1_000, 600);
        let sent = q.ready_at();
        q.committed(sent + 600, 600);
        let sent = q.ready_at() + 300;
        assert_eq!(q.committed(sent + 250, 250), 1_000 - 250, "(1000 - 300) doubled, bounded");
    }

    /// One node's reports against a leader whose commits slow down for a while: the node
    /// sends fewer, larger batches (moot reports replaced while it waits) than it would
    /// without pacing, catches up once commits are fast again, and the committed statuses end
    /// as the last report about each resource said; nothing is lost.
    #[test]
    fn reports_slow_down_under_slow_commits_and_catch_up_with_nothing_lost() {
        /// One run, a step per ms: (commits, reports committed, batches sent while commits
        /// were slow, the committed statuses, the last status reported per resource, whether
        /// everything was sent by the end, the final wait).
        #[allow(clippy::type_complexity)]
        fn run(paced: bool) -> (usize, usize, usize, Statuses, Statuses, bool, u64) {
            const SLOW: std::ops::Range<u64> = 2_000..6_000;
            const FAILING: std::ops::Range<u64> = 3_000..3_500;
            let states =
                [ResourceState::Starting, ResourceState::Online, ResourceState::Stopping, ResourceState::Offline];
            let mut q = ReportQueue::new();
            let mut pacing = ReportPacing::new();
            let mut last: BTreeMap<String, ResourceState> = BTreeMap::new();
            let mut committed: BTreeMap<String, ResourceState> = BTreeMap::new();
            // (answer at, sent at, commits?)
            let mut flight: Option<(u64, u64, bool)> = None;
            let (mut commits, mut reports, mut slow_batches) = (0, 0, 0);
            for now in 0..12_000u64 {
                // 40 resources, a status change every 5 ms until 8 s.
                if now < 8_000 && now % 5 == 0 {
                    let k = now / 5;
                    let name = format!("r{}", k % 40);
                    let state = states[(k / 40 % 4) as usize];
                    last.insert(name.clone(), state);
                    q.push(report(&name, state));
                }
                if let Some((at, sent, ok)) = flight
                    && at <= now
                {
                    flight = None;
                    if ok {
                        commits += 1;
                        for c in q.in_flight.clone() {
                            if let Command::ReportResource { resource, state, .. } = c {
                                committed.insert(resource, state);
                                reports += 1;
                            }
                        }
                        q.sent();
                        pacing.committed(now, now - sent);
                    } else {
                        q.failed();
                        pacing.failed(now);
                    }
                }
                if flight.is_none() && (!paced || now >= pacing.ready_at()) {
                    let batch = q.next_batch(REPORT_BATCH_MAX, usize::MAX);
                    if !batch.is_empty() {
                        let latency = if SLOW.contains(&now) { 400 } else { 20 };
                        let ok = !FAILING.contains(&(now + latency));
                        flight = Some((now + latency, now, ok));
                        if SLOW.contains(&now) {
                            slow_batches += 1;
                        }
                    }
                }
            }
            (commits, reports, slow_batches, committed, last, q.is_idle(), pacing.interval())
        }
        type Statuses = BTreeMap<String, ResourceState>;
        let (commits, reports, slow, committed, last, idle, delay) = run(true);
        let (commits0, reports0, slow0, committed0, _, idle0, _) = run(false);
        assert!(idle && idle0, "both sent everything by the end");
        assert_eq!(committed, last, "the last report about each resource won");
        assert_eq!(committed, committed0, "the same final statuses either way");
        assert_eq!(committed.len(), 40);
        assert_eq!(delay, 0, "back to sending at once");
        // 4 s of 400 ms commits: back to back 10 batches; paced, one a second once backed off.
        assert!(slow0 >= 9, "unpaced: {slow0} batches while slow");
        assert!(slow <= 6, "paced: {slow} batches while slow, unpaced {slow0}");
        assert!(commits < commits0, "paced {commits} commits, unpaced {commits0}");
        assert!(reports <= reports0, "paced {reports} reports committed, unpaced {reports0}");
    }
}

//! The queue of this node's status reports to the cluster: sent in order, one commit at a
//! time (everything queued, up to a bound, as one batch: [`ReportQueue::next_batch`]),
//! without making the resource manager wait for the network (self-fencing must never
//! block on a write that cannot commit). A report that fails is retried until a newer
//! report about the same thing ([`key`]) replaces it.
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

    /// Queues `c` unless the last queued report about the same thing is the very same report
    /// (a duplicate would commit once more and change nothing). Only the *last* one counts:
    /// `starting, online, starting` must keep its order and its final word.
    ///
    /// Without this, a node handing off several groups could queue releases faster than they
    /// commit: every commit woke the resource manager, which sent each pending group's release
    /// again, so the queue grew by one per group per commit, a new handoff's release waited
    /// behind all of them, and the moves never finished (issue 9: groups stuck `moving`).
    pub fn push(&mut self, c: Command) {
        if let Some(k) = key(&c)
            && self.queue.iter().rev().find(|q| key(q) == Some(k)).is_some_and(|q| *q == c)
        {
            return;
        }
        self.queue.push_back(c);
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

#[cfg(test)]
mod tests {
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
        q.push(report("a", ResourceState::Starting));
        q.push(report("a", ResourceState::Online));
        q.push(report("a", ResourceState::Starting));
        q.push(release("g", 1));
        q.push(release("g", 2));
        assert_eq!(
            drain(&mut q),
            vec![
                report("a", ResourceState::Starting),
                report("a", ResourceState::Online),
                report("a", ResourceState::Starting),
                release("g", 1),
                release("g", 2),
            ]
        );
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
    fn a_batch_keeps_every_report_about_a_thing_and_their_order() {
        let mut q = ReportQueue::new();
        q.push(report("a", ResourceState::Starting));
        q.push(report("a", ResourceState::Online));
        q.push(report("a", ResourceState::Online));
        q.push(report("a", ResourceState::Starting));
        assert_eq!(
            q.next_batch(10, usize::MAX),
            vec![
                report("a", ResourceState::Starting),
                report("a", ResourceState::Online),
                report("a", ResourceState::Starting),
            ]
        );
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
}

//! The outcome of recent requests by id: what makes a retried or re-forwarded write
//! exactly-once.
//!
//! A request that carries an id (the client's `Idempotency-Key`, or one the agent made up
//! for an API write that came without) records its outcome, the reply or the refusal, when it is applied. The same id applied
//! again returns that outcome and changes nothing; the same id with another command is
//! refused. The table is part of the replicated state (and so of snapshots), and it is
//! pruned deterministically: by count, and by age measured with the proposer's time stamp
//! of the request being applied, never a local clock.

use haven_model::{InvalidInput, Millis};
use serde::{Deserialize, Serialize};

use crate::{Command, ErrorCode, Response, StateError};

/// Most request outcomes kept; the oldest is dropped first.
pub const REQUEST_OUTCOME_LIMIT: usize = 1000;

/// How long a request's outcome is kept (10 minutes), counted from its proposer time stamp
/// to that of a later request.
pub const REQUEST_OUTCOME_AGE_MS: Millis = 10 * 60 * 1000;

/// Longest request id accepted.
pub const REQUEST_ID_MAX_LEN: usize = 128;

/// What a request with an id did, as every replica recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestOutcome {
    /// The proposer's time stamp of the request that was applied.
    pub at: Millis,
    /// Who sent it.
    pub by: String,
    /// A digest of its command, to tell a retry from another request reusing the id.
    pub fingerprint: u64,
    /// The reply, or why it was refused.
    pub response: Response,
}

impl RequestOutcome {
    /// The answer to a request with this outcome's id and a command of `fingerprint`: the
    /// first outcome for a retry, a refusal for another request.
    pub(crate) fn replay(&self, id: &str, fingerprint: u64) -> Response {
        if self.fingerprint == fingerprint {
            return self.response.clone();
        }
        Err(StateError {
            code: ErrorCode::RequestIdReused,
            message: format!(
                "request id {id:?} was already used for another request; send a new Idempotency-Key for a new \
                 request (the same key only to retry the very same request)"
            ),
            field: Some("Idempotency-Key".into()),
        })
    }
}

/// Recent request outcomes by id, bounded by [`REQUEST_OUTCOME_LIMIT`] and
/// [`REQUEST_OUTCOME_AGE_MS`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestOutcomes {
    /// Persistent collections, like the state's tables (see [`crate::Map`]): cloning the
    /// table costs O(1).
    by_id: crate::Map<RequestOutcome>,
    /// Ids in the order they were applied, oldest first.
    order: imbl::Vector<String>,
    /// How many ids this table (and those it was made from by recording and pruning) has
    /// taken off the front of `order` and put at its back: what
    /// [`RequestOutcomes::changes_since`] reads. Local bookkeeping, not part of the
    /// replicated value (not serialized, not compared).
    #[serde(skip)]
    popped: u64,
    #[serde(skip)]
    pushed: u64,
}

impl PartialEq for RequestOutcomes {
    fn eq(&self, other: &Self) -> bool {
        self.by_id == other.by_id && self.order == other.order
    }
}

/// What changed in a table since an earlier version of it (see
/// [`RequestOutcomes::changes_since`]).
#[derive(Debug, Default, PartialEq)]
pub struct OutcomeChanges<'a> {
    /// Ids dropped from the front, oldest first.
    pub dropped: Vec<&'a str>,
    /// Ids recorded at the back since (one dropped and recorded again is in both), in order.
    pub recorded: Vec<(&'a str, &'a RequestOutcome)>,
    /// Ids that kept their place and got another outcome.
    pub updated: Vec<(&'a str, &'a RequestOutcome)>,
}

impl RequestOutcomes {
    pub fn get(&self, id: &str) -> Option<&RequestOutcome> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Drops outcomes older than [`REQUEST_OUTCOME_AGE_MS`] before `now` (a request's
    /// proposer time stamp), and the oldest while there is no room for one more.
    pub(crate) fn prune(&mut self, now: Millis) {
        while let Some(oldest) = self.order.front() {
            let expired = self.by_id.get(oldest).is_none_or(|o| o.at.saturating_add(REQUEST_OUTCOME_AGE_MS) < now);
            if !expired && self.order.len() < REQUEST_OUTCOME_LIMIT {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.by_id.remove(&id);
                self.popped += 1;
            }
        }
    }

    /// Every outcome with its id, in the order they were applied (oldest first).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RequestOutcome)> + '_ {
        self.order.iter().filter_map(|id| self.by_id.get(id).map(|o| (id.as_str(), o)))
    }

    /// The table holding `outcomes`, given oldest first (as [`RequestOutcomes::iter`] lists
    /// them); a repeated id keeps its first place and its last outcome.
    pub fn from_ordered(outcomes: impl IntoIterator<Item = (String, RequestOutcome)>) -> RequestOutcomes {
        let mut table = RequestOutcomes::default();
        for (id, outcome) in outcomes {
            if table.by_id.insert(id.clone(), outcome).is_none() {
                table.order.push_back(id);
            }
        }
        table
    }

    pub(crate) fn record(&mut self, id: &str, at: Millis, by: &str, fingerprint: u64, response: Response) {
        let outcome = RequestOutcome { at, by: by.to_string(), fingerprint, response };
        if self.by_id.insert(id.to_string(), outcome).is_none() {
            self.order.push_back(id.to_string());
            self.pushed += 1;
        }
    }

    /// What changed since `before`, in the work of the changes (not the table's size):
    /// `Some` only if this table was made from `before` by recording and pruning, which
    /// the counts of ids taken off the front and put at the back tell, checked against the
    /// difference of the two maps. `None` otherwise (a table read from disk or a
    /// snapshot): compare the tables whole.
    pub fn changes_since<'a>(&'a self, before: &'a RequestOutcomes) -> Option<OutcomeChanges<'a>> {
        let popped = usize::try_from(self.popped.checked_sub(before.popped)?).ok()?;
        let pushed = usize::try_from(self.pushed.checked_sub(before.pushed)?).ok()?;
        if popped > before.order.len()
            || pushed > self.order.len()
            || before.order.len() - popped + pushed != self.order.len()
        {
            return None;
        }
        let dropped: Vec<&str> = before.order.iter().take(popped).map(String::as_str).collect();
        let mut recorded = Vec::with_capacity(pushed);
        for id in self.order.iter().skip(self.order.len() - pushed) {
            recorded.push((id.as_str(), self.by_id.get(id)?));
        }
        let fresh: std::collections::BTreeSet<&str> = recorded.iter().map(|(id, _)| *id).collect();
        let gone: std::collections::BTreeSet<&str> = dropped.iter().copied().collect();
        let mut updated = Vec::new();
        for change in before.by_id.diff(&self.by_id) {
            match change {
                imbl::ordmap::DiffItem::Update { new: (id, outcome), .. } => {
                    if !fresh.contains(id.as_str()) {
                        updated.push((id.as_str(), outcome));
                    }
                }
                // Every id that came or went must be one the counts account for.
                imbl::ordmap::DiffItem::Add(id, _) if fresh.contains(id.as_str()) => {}
                imbl::ordmap::DiffItem::Remove(id, _) if gone.contains(id.as_str()) => {}
                _ => return None,
            }
        }
        Some(OutcomeChanges { dropped, recorded, updated })
    }
}

/// A digest of `command` that is the same on every replica (FNV-1a over its JSON, which has
/// no maps of random order).
pub(crate) fn fingerprint(command: &Command) -> u64 {
    let bytes = serde_json::to_vec(command).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Checks a client's request id: 1 to [`REQUEST_ID_MAX_LEN`] printable ASCII characters
/// (no spaces).
pub fn validate_request_id(id: &str) -> Result<(), InvalidInput> {
    if id.is_empty() || id.len() > REQUEST_ID_MAX_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidInput::new(
            "Idempotency-Key",
            format!(
                "a request id must be 1 to {REQUEST_ID_MAX_LEN} printable ASCII characters without spaces (got {} \
                 bytes); send a shorter key such as a UUID, or none and the agent picks one",
                id.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reply;

    /// Random records (new ids, ids recorded again, ids dropped and recorded again) and
    /// prunes: the changes since every earlier version, replayed on that version's rows,
    /// give this version's rows in order; a table not made from the other gives none.
    #[test]
    fn changes_since_an_earlier_version_replay_to_the_later_one() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut table = RequestOutcomes::default();
        let mut at = 0;
        for round in 0..1_000 {
            let before = table.clone();
            for _ in 0..=next(4) {
                at += next(3) * 1_000;
                let id = format!("r{}", next(1_500));
                table.record(&id, at, "t", next(3), Ok(Reply::None));
                table.prune(at);
            }
            let changes = table.changes_since(&before).expect("made from it by recording and pruning");
            let mut rows: Vec<(String, RequestOutcome)> =
                before.iter().map(|(id, o)| (id.to_string(), o.clone())).collect();
            rows.retain(|(id, _)| !changes.dropped.contains(&id.as_str()));
            for (id, o) in &changes.updated {
                let row = rows.iter_mut().find(|(r, _)| r == id).expect("an updated id keeps its row");
                row.1 = (*o).clone();
            }
            rows.retain(|(id, _)| !changes.recorded.iter().any(|(r, _)| r == id));
            rows.extend(changes.recorded.iter().map(|(id, o)| (id.to_string(), (*o).clone())));
            let expected: Vec<(String, RequestOutcome)> =
                table.iter().map(|(id, o)| (id.to_string(), o.clone())).collect();
            assert_eq!(rows, expected, "round {round}");
        }
        assert!(table.len() > 100 && table.popped > 100, "the table filled and was pruned: {}", table.len());
        let read_back = RequestOutcomes::from_ordered(table.iter().map(|(id, o)| (id.to_string(), o.clone())));
        assert_eq!(read_back, table, "the counts are not part of the value");
        let mut later = read_back.clone();
        later.record("new", at + 1, "t", 0, Ok(Reply::None));
        assert!(later.changes_since(&read_back).is_some());
        assert_eq!(later.changes_since(&table), None, "not made from it");
    }
}

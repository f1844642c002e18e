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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestOutcomes {
    /// Persistent collections, like the state's tables (see [`crate::Map`]): cloning the
    /// table costs O(1).
    by_id: crate::Map<RequestOutcome>,
    /// Ids in the order they were applied, oldest first.
    order: imbl::Vector<String>,
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
        }
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

//! The cluster database, abstracted: one committed log of `Request`s, the `State` that
//! results from applying it in order with the real `State::apply`, and who leads in which
//! term.
//!
//! Raft itself is not simulated: the simulator decides *whether* a write commits (the
//! leader can reach a majority of voters at that instant) and this type records it. Each
//! node applies the same log to its own copy later (see `node`), so nodes act on stale
//! state exactly as followers do. What a real Raft guarantees and this abstraction
//! assumes — committed entries survive leader changes — is still checked
//! (`check_acknowledged`), so a change to this module that loses an entry is caught.

use haven_state::{Request, Response, State};

#[derive(Debug)]
pub struct ClusterDb {
    log: Vec<Request>,
    /// The state after applying every committed entry, as the leader reads it after a
    /// linearizable read.
    pub state: State,
    pub leader: Option<usize>,
    pub term: u64,
    /// Every acknowledged write: (log index, the request), for invariant 2.
    acknowledged: Vec<(usize, Request)>,
    /// The longest the log has ever been.
    high_water: usize,
}

impl ClusterDb {
    /// A database whose log already holds `setup` (the cluster as an operator created it).
    pub fn new(setup: Vec<Request>) -> ClusterDb {
        let mut db = ClusterDb {
            log: Vec::new(),
            state: State::default(),
            leader: None,
            term: 0,
            acknowledged: Vec::new(),
            high_water: 0,
        };
        for req in setup {
            let (_, resp) = db.commit(req);
            if let Err(e) = resp {
                panic!("scenario setup command refused: {e}");
            }
        }
        db
    }

    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    pub fn entry(&self, index: usize) -> &Request {
        &self.log[index]
    }

    /// Appends a write the caller has checked a majority can accept, applies it, and
    /// acknowledges it. Returns the number of entries after it (the new commit index).
    pub fn commit(&mut self, req: Request) -> (usize, Response) {
        let resp = self.state.apply(&req);
        self.log.push(req.clone());
        self.high_water = self.high_water.max(self.log.len());
        self.acknowledged.push((self.log.len() - 1, req));
        (self.log.len(), resp)
    }

    /// Invariant 2, cheap form for every step: the log never got shorter.
    pub fn check_acknowledged_cheap(&self) -> Result<(), String> {
        if self.log.len() < self.high_water {
            return Err(format!("the committed log shrank from {} to {} entries", self.high_water, self.log.len()));
        }
        Ok(())
    }

    /// Invariant 2, full form (at leader changes and at the end of a run): every
    /// acknowledged write is still at its index.
    pub fn check_acknowledged(&self) -> Result<(), String> {
        self.check_acknowledged_cheap()?;
        for (i, req) in &self.acknowledged {
            if self.log.get(*i) != Some(req) {
                return Err(format!("acknowledged entry {i} ({:?}) is no longer in the log", req.command));
            }
        }
        Ok(())
    }
}

//! Haven's cluster database: openraft glue that replicates `haven_state::State`.
//!
//! - [`store`]: the Raft log and the state machine, persisted in one redb file
//!   (`<dir>/raft.redb`). Every apply batch writes the resulting `State` in the same
//!   transaction as `last_applied`, so a restart neither loses nor re-applies anything.
//! - [`network`]: peer RPCs as JSON over HTTP (`/internal/raft/*`), the client side
//!   ([`network::HttpNetworkFactory`]) and the server side ([`router`]).
//! - [`contact`]: each node's notes of contact with leaders (`haven_node::ContactLog` on
//!   tokio's clock), which let a new leader bound the leases its predecessors granted.
//! - [`cluster`]: [`ClusterDb`], the facade the agent uses: open, initialize, write, read the
//!   applied state, membership changes, leadership checks.
//!
//! This crate does not know what the commands mean; `haven_state::State::apply` does.

pub mod cluster;
pub mod contact;
pub mod network;
pub mod store;

use std::io::Cursor;

pub use cluster::{ClusterDb, DbError, RaftTuning, WriteError};
pub use haven_state::{Request, Response, State};
pub use network::router;
pub use openraft::BasicNode;

openraft::declare_raft_types!(
    /// The openraft type configuration of Haven's cluster database.
    pub TypeConfig:
        D = haven_state::Request,
        R = haven_state::Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a Haven node.
pub type Raft = openraft::Raft<TypeConfig>;

//! The Raft log and the replicated state machine, persisted in one redb file.
//!
//! Layout of `<dir>/raft.redb`:
//! - `logs`: log index → JSON of the `Entry`.
//! - `meta`: `vote`, `committed`, `last_purged`, `node_id`.
//! - `machine`: `last_applied`, `last_membership` and `snapshot_seq`.
//! - the state machine, one row per object, so that a commit writes only what it changed:
//!   `nodes`, `groups`, `resources`, `fencing`, `fence_status` (name → JSON of the object),
//!   `history` (event id → JSON of the `Event`), `requests` (a sequence number in applied
//!   order → JSON of `(request id, RequestOutcome)`) and `scalars` (`state`: the JSON of the
//!   remaining fields of `haven_state::State`). An apply batch compares the state before and
//!   after it and writes the rows that differ, deletes the rows of removed objects, and sets
//!   `last_applied` and `last_membership`, all in one transaction, so after a restart the
//!   state machine is exactly where it was and nothing is applied twice.
//! - `snapshot`: `meta` and `data` of the current snapshot (`data` is the JSON of `State`).
//!
//! Files written before the per-object tables kept the whole state as one JSON value,
//! `machine`/`state`; opening such a file rewrites it into the tables once, in one
//! transaction, and removes the old value.
//!
//! Writes that must be durable (log entries, votes, apply batches, snapshots) run on the
//! blocking thread pool and commit with redb's default, fsync'ed durability. This module
//! knows nothing about the network or about what commands mean.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Deref, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;

use haven_state::{ClusterInfo, Event, Map, Reply, RequestOutcome, RequestOutcomes, Resources, Response, State};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use haven_state::imbl;
use haven_state::imbl::ordmap::DiffItem;

use crate::TypeConfig;

/// Name of the database file inside the node's data directory.
pub const DB_FILE: &str = "raft.redb";

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MACHINE: TableDefinition<&str, &[u8]> = TableDefinition::new("machine");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const FENCING: TableDefinition<&str, &[u8]> = TableDefinition::new("fencing");
const FENCE_STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("fence_status");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
const SCALARS: TableDefinition<&str, &[u8]> = TableDefinition::new("scalars");
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
const NODE_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_certs");
const REVOKED_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked_certs");
const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
const NAMED_TABLES: [TableDefinition<&str, &[u8]>; 10] =
    [NODES, GROUPS, RESOURCES, FENCING, FENCE_STATUS, SCALARS, JOIN_TOKENS, NODE_CERTS, REVOKED_CERTS, API_TOKENS];

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_NODE_ID: &str = "node_id";
const KEY_LAST_APPLIED: &str = "last_applied";
const KEY_LAST_MEMBERSHIP: &str = "last_membership";
/// The whole state as one JSON value: the layout before the per-object tables.
const KEY_OLD_STATE: &str = "state";
/// The layout version of the file (`machine` table); absent before per-object tables.
const KEY_LAYOUT: &str = "layout";
/// Layout 2: the state machine in per-object tables.
pub const LAYOUT: u32 = 2;
/// What layout 2 keeps under the old layout's key: a JSON string, not a state, so that an
/// agent of an older version (which reads a whole `State` there) refuses to open the file,
/// quoting this text, instead of starting with an empty state.
const OLD_LAYOUT_MARKER: &str = "this data directory holds the state in per-object tables (layout 2) and needs \
                                 a newer haven agent; upgrade haven on this node";
const KEY_SCALARS: &str = "state";
const KEY_SNAPSHOT_SEQ: &str = "snapshot_seq";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";

type StorageResult<T> = Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, BasicNode>;

/// Why the cluster database file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the cluster database {path}: {source}; check that the directory is \
         writable and that no other haven agent uses the same data directory"
    )]
    Open { path: PathBuf, source: redb::Error },
    #[error(
        "the cluster database {path} is damaged ({what}: {source}); restore the data \
         directory from a backup, or remove it and re-join this node to the cluster"
    )]
    Corrupt { path: PathBuf, what: &'static str, source: serde_json::Error },
    #[error(
        "the data directory {path} belongs to node {stored}, not to node {requested}; start \
         the agent with node id {stored}, or give node {requested} its own data directory"
    )]
    WrongNode { path: PathBuf, stored: u64, requested: u64 },
    #[error(
        "the cluster database {path} has layout {found}, written by a newer haven; this agent \
         knows layouts up to {LAYOUT}; upgrade haven on this node (do not downgrade a node's agent)"
    )]
    NewerLayout { path: PathBuf, found: u32 },
}

/// A failed storage operation, before it is wrapped into openraft's `StorageError`.
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("undecodable record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("storage task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

macro_rules! redb_into_op_error {
    ($($t:ty),*) => {$(
        impl From<$t> for OpError {
            fn from(e: $t) -> Self {
                OpError::Redb(redb::Error::from(e))
            }
        }
    )*};
}
redb_into_op_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn storage_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: OpError) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Runs a redb transaction on the blocking pool, so fsyncs do not stall the async workers.
async fn blocking<T, F>(subject: ErrorSubject<u64>, verb: ErrorVerb, f: F) -> StorageResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, OpError> + Send + 'static,
{
    let joined = tokio::task::spawn_blocking(f).await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(storage_error(subject, verb, e)),
        Err(e) => Err(storage_error(subject, verb, e.into())),
    }
}

fn get_json<T, R>(table: &R, key: &str) -> Result<Option<T>, OpError>
where
    T: DeserializeOwned,
    R: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn put_json<T: Serialize>(table: &mut Table<&'static str, &'static [u8]>, key: &str, value: &T) -> Result<(), OpError> {
    let bytes = serde_json::to_vec(value)?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

fn write_txn(db: &Database, durable: bool) -> Result<WriteTransaction, OpError> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None)?;
    }
    Ok(txn)
}

/// The fields of `State` that are not collections, stored as one row of `scalars`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Scalars {
    schema_version: u32,
    cluster: Option<ClusterInfo>,
    next_event_id: u64,
    generation_floor: u64,
    /// The trusted CAs (a handful of certificates, changed by a CA rotation only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cas: Vec<haven_state::pki::ClusterCa>,
}

/// Which row of `requests` holds each request id's outcome, mirroring the table.
#[derive(Debug, Default)]
struct RequestRows {
    seq_of: BTreeMap<String, u64>,
    next_seq: u64,
}

/// Counts the bytes of the rows a transaction writes.
#[derive(Default)]
struct Written(u64);

impl Written {
    fn put_named<T: Serialize>(
        &mut self,
        table: &mut Table<&'static str, &'static [u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), OpError> {
        let bytes = serde_json::to_vec(value)?;
        self.0 += (key.len() + bytes.len()) as u64;
        table.insert(key, bytes.as_slice())?;
        Ok(())
    }

    fn put_numbered<T: Serialize>(
        &mut self,
        table: &mut Table<u64, &'static [u8]>,
        key: u64,
        value: &T,
    ) -> Result<(), OpError> {
        let bytes = serde_json::to_vec(value)?;
        self.0 += 8 + bytes.len() as u64;
        table.insert(key, bytes.as_slice())?;
        Ok(())
    }
}

/// Writes the rows of `objects` that differ from `before` and deletes those of objects that
/// are gone. Both are versions of one persistent map, so the diff visits only the paths to
/// what changed, not the subtrees the two still share: the cost follows the change, not the
/// size of the table.
fn write_map<V: Clone + PartialEq + Serialize>(
    txn: &WriteTransaction,
    def: TableDefinition<&str, &[u8]>,
    before: &Map<V>,
    objects: &Map<V>,
    written: &mut Written,
) -> Result<(), OpError> {
    if before.ptr_eq(objects) {
        return Ok(());
    }
    let mut table = txn.open_table(def)?;
    for change in before.diff(objects) {
        match change {
            DiffItem::Add(key, value) | DiffItem::Update { new: (key, value), .. } => {
                written.put_named(&mut table, key, value)?
            }
            DiffItem::Remove(gone, _) => {
                table.remove(gone.as_str())?;
            }
        }
    }
    Ok(())
}

/// Writes the events of `history` that are not in the table as `before` left it, and
/// removes those that fell off its front. Events are only ever appended, and only the last
/// one may change afterwards (the HA wizard attaches its report to it), so only events from
/// `before`'s last one on are compared.
fn write_history(
    txn: &WriteTransaction,
    before: &imbl::Vector<Event>,
    history: &imbl::Vector<Event>,
    written: &mut Written,
) -> Result<(), OpError> {
    if before.ptr_eq(history) {
        return Ok(());
    }
    let mut table = txn.open_table(HISTORY)?;
    let first_kept = history.front().map_or(u64::MAX, |e| e.id);
    for gone in before.iter().take_while(|e| e.id < first_kept) {
        table.remove(gone.id)?;
    }
    let last_before = before.back();
    let from = last_before.map_or(0, |e| e.id);
    // From the back: the events at or after `before`'s last one.
    let recent: Vec<&Event> = history.iter().rev().take_while(|e| e.id >= from).collect();
    for event in recent.into_iter().rev() {
        if last_before.is_some_and(|last| last.id == event.id && last == event) {
            continue;
        }
        written.put_numbered(&mut table, event.id, event)?;
    }
    Ok(())
}

/// Writes into the per-object tables the rows in which `state` differs from `before`,
/// which is what the tables held. `rows` follows the `requests` table.
fn write_state(
    txn: &WriteTransaction,
    before: &State,
    state: &State,
    rows: &mut RequestRows,
    written: &mut Written,
) -> Result<(), OpError> {
    // Every field by name, so that a field added to `State` cannot be forgotten here.
    let State {
        schema_version,
        cluster,
        nodes,
        groups,
        resources,
        history,
        next_event_id,
        fencing,
        fence_status,
        generation_floor,
        requests,
        join_tokens,
        node_certs,
        revoked_certs,
        api_tokens,
        cas,
    } = state;
    write_map(txn, NODES, &before.nodes, nodes, written)?;
    write_map(txn, GROUPS, &before.groups, groups, written)?;
    write_map(txn, RESOURCES, before.resources.as_map(), resources.as_map(), written)?;
    write_map(txn, FENCING, &before.fencing, fencing, written)?;
    write_map(txn, FENCE_STATUS, &before.fence_status, fence_status, written)?;
    write_map(txn, JOIN_TOKENS, &before.join_tokens, join_tokens, written)?;
    write_map(txn, NODE_CERTS, &before.node_certs, node_certs, written)?;
    write_map(txn, REVOKED_CERTS, &before.revoked_certs, revoked_certs, written)?;
    write_map(txn, API_TOKENS, &before.api_tokens, api_tokens, written)?;

    let changed = *schema_version != before.schema_version
        || *cluster != before.cluster
        || *next_event_id != before.next_event_id
        || *generation_floor != before.generation_floor
        || *cas != before.cas;
    if changed {
        let scalars = Scalars {
            schema_version: *schema_version,
            cluster: cluster.clone(),
            next_event_id: *next_event_id,
            generation_floor: *generation_floor,
            cas: cas.clone(),
        };
        let mut table = txn.open_table(SCALARS)?;
        written.put_named(&mut table, KEY_SCALARS, &scalars)?;
    }

    write_history(txn, &before.history, history, written)?;

    write_requests(txn, &before.requests, requests, rows, written)
}

/// Request outcomes keep the order they were applied in: a new one gets the next sequence
/// number, one that is still there keeps its row. When `requests` was made from `before`
/// by applying (the usual case), only what changed is touched
/// ([`RequestOutcomes::changes_since`]); otherwise the two are compared whole.
fn write_requests(
    txn: &WriteTransaction,
    before: &RequestOutcomes,
    requests: &RequestOutcomes,
    rows: &mut RequestRows,
    written: &mut Written,
) -> Result<(), OpError> {
    let mut table = txn.open_table(REQUESTS)?;
    if let Some(changes) = requests.changes_since(before)
        && changes.updated.iter().all(|(id, _)| rows.seq_of.contains_key(*id))
    {
        for id in changes.dropped {
            if let Some(seq) = rows.seq_of.remove(id) {
                table.remove(seq)?;
            }
        }
        for (id, outcome) in changes.updated {
            if let Some(seq) = rows.seq_of.get(id).copied() {
                written.put_numbered(&mut table, seq, &(id, outcome))?;
            }
        }
        for (id, outcome) in changes.recorded {
            if let Some(old) = rows.seq_of.remove(id) {
                table.remove(old)?;
            }
            let seq = rows.next_seq;
            rows.next_seq += 1;
            written.put_numbered(&mut table, seq, &(id, outcome))?;
            rows.seq_of.insert(id.to_string(), seq);
        }
        return Ok(());
    }
    let mut gone = Vec::new();
    for (id, seq) in &rows.seq_of {
        if requests.get(id).is_none() {
            table.remove(*seq)?;
            gone.push(id.clone());
        }
    }
    for id in gone {
        rows.seq_of.remove(&id);
    }
    // Rows are read back in sequence order, so along `requests`' order the sequence numbers
    // must rise: an id dropped and recorded again since `before` moves to a new row.
    let mut last_seq = None;
    for (id, outcome) in requests.iter() {
        match rows.seq_of.get(id).copied() {
            Some(seq) if last_seq.is_none_or(|last| seq > last) => {
                if before.get(id) != Some(outcome) {
                    written.put_numbered(&mut table, seq, &(id, outcome))?;
                }
                last_seq = Some(seq);
            }
            moved => {
                if let Some(old) = moved {
                    table.remove(old)?;
                }
                let seq = rows.next_seq;
                rows.next_seq += 1;
                written.put_numbered(&mut table, seq, &(id, outcome))?;
                rows.seq_of.insert(id.to_string(), seq);
                last_seq = Some(seq);
            }
        }
    }
    Ok(())
}

/// Replaces whatever the per-object tables hold with the rows of `state` (a snapshot install
/// or the migration of the old layout), and drops the old layout's single value.
fn rewrite_state(txn: &WriteTransaction, state: &State) -> Result<RequestRows, OpError> {
    for def in NAMED_TABLES {
        txn.open_table(def)?.retain(|_, _| false)?;
    }
    for def in [HISTORY, REQUESTS] {
        txn.open_table(def)?.retain(|_, _| false)?;
    }
    mark_layout(txn)?;
    let mut rows = RequestRows::default();
    write_state(txn, &State::default(), state, &mut rows, &mut Written::default())?;
    Ok(rows)
}

fn read_map<V: Clone + DeserializeOwned>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Map<V>, OpError> {
    let table = txn.open_table(def)?;
    let mut out = Map::new();
    for row in table.iter()? {
        let (key, value) = row?;
        out.insert(key.value().to_string(), serde_json::from_slice(value.value())?);
    }
    Ok(out)
}

/// The state as the per-object tables hold it.
fn read_state(txn: &redb::ReadTransaction) -> Result<(State, RequestRows), OpError> {
    let scalars: Option<Scalars> = get_json(&txn.open_table(SCALARS)?, KEY_SCALARS)?;
    let mut history = imbl::Vector::new();
    for row in txn.open_table(HISTORY)?.iter()? {
        let (_, value) = row?;
        history.push_back(serde_json::from_slice(value.value())?);
    }
    let mut rows = RequestRows::default();
    let mut outcomes = Vec::new();
    for row in txn.open_table(REQUESTS)?.iter()? {
        let (seq, value) = row?;
        let (id, outcome): (String, RequestOutcome) = serde_json::from_slice(value.value())?;
        rows.seq_of.insert(id.clone(), seq.value());
        rows.next_seq = seq.value() + 1;
        outcomes.push((id, outcome));
    }
    let state = State {
        nodes: read_map(txn, NODES)?,
        groups: read_map(txn, GROUPS)?,
        resources: Resources::from_map(read_map(txn, RESOURCES)?),
        fencing: read_map(txn, FENCING)?,
        fence_status: read_map(txn, FENCE_STATUS)?,
        join_tokens: read_map(txn, JOIN_TOKENS)?,
        node_certs: read_map(txn, NODE_CERTS)?,
        revoked_certs: read_map(txn, REVOKED_CERTS)?,
        api_tokens: read_map(txn, API_TOKENS)?,
        history,
        requests: RequestOutcomes::from_ordered(outcomes),
        ..State::default()
    };
    let state = match scalars {
        Some(s) => State {
            schema_version: s.schema_version,
            cluster: s.cluster,
            next_event_id: s.next_event_id,
            generation_floor: s.generation_floor,
            cas: s.cas,
            ..state
        },
        None => state,
    };
    Ok((state, rows))
}

/// Records that the file has the current layout: its version, and the marker an older
/// agent refuses to read as a state.
fn mark_layout(txn: &WriteTransaction) -> Result<(), OpError> {
    let mut machine = txn.open_table(MACHINE)?;
    put_json(&mut machine, KEY_LAYOUT, &LAYOUT)?;
    put_json(&mut machine, KEY_OLD_STATE, &OLD_LAYOUT_MARKER)?;
    Ok(())
}

/// What the file's layout asks of this agent at open.
enum LayoutCheck {
    Current,
    /// A newer layout than [`LAYOUT`]: refuse to open.
    Newer(u32),
}

/// Brings the file to the current layout: a new file gets its layout recorded; a file of the
/// old layout (the whole state as one JSON value) is rewritten into the per-object tables,
/// in one transaction; a file of the current layout is left alone; a newer one is refused.
fn migrate_old_layout(db: &Database) -> Result<LayoutCheck, OpError> {
    let txn = db.begin_write()?;
    let layout: Option<u32> = get_json(&txn.open_table(MACHINE)?, KEY_LAYOUT)?;
    match layout {
        Some(found) if found > LAYOUT => return Ok(LayoutCheck::Newer(found)),
        Some(_) => return Ok(LayoutCheck::Current),
        None => {}
    }
    let old = get_json::<serde_json::Value, _>(&txn.open_table(MACHINE)?, KEY_OLD_STATE)?;
    let Some(old) = old.filter(|v| v.is_object()) else {
        // A new file (or one of layout 2 written before the layout key existed).
        mark_layout(&txn)?;
        txn.commit()?;
        return Ok(LayoutCheck::Current);
    };
    let state: State = serde_json::from_value(old)?;
    rewrite_state(&txn, &state)?;
    txn.commit()?;
    tracing::info!(
        nodes = state.nodes.len(),
        groups = state.groups.len(),
        resources = state.resources.len(),
        "rewrote the state machine into per-object tables (a data directory of an older version)"
    );
    Ok(LayoutCheck::Current)
}

/// Opens (or creates) `<dir>/raft.redb` and returns the two halves openraft needs.
///
/// The state machine is loaded as it was last persisted; nothing is re-applied.
pub fn open_store(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = dir.join(DB_FILE);
    let open_err = |source: redb::Error| StoreError::Open { path: path.clone(), source };
    let corrupt = |what, source| StoreError::Corrupt { path: path.clone(), what, source };

    let db = Database::create(&path).map_err(|e| open_err(e.into()))?;

    // Create every table up front so that read transactions can always open them.
    let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
    for table in [META, MACHINE, SNAPSHOT].into_iter().chain(NAMED_TABLES) {
        txn.open_table(table).map_err(|e| open_err(e.into()))?;
    }
    for table in [LOGS, HISTORY, REQUESTS] {
        txn.open_table(table).map_err(|e| open_err(e.into()))?;
    }
    txn.commit().map_err(|e| open_err(e.into()))?;

    let op_err = |what, e: OpError| match e {
        OpError::Redb(source) => open_err(source),
        OpError::Json(source) => corrupt(what, source),
        OpError::Join(e) => open_err(redb::Error::Io(std::io::Error::other(e))),
    };
    if let LayoutCheck::Newer(found) =
        migrate_old_layout(&db).map_err(|e| op_err("state machine of an older version", e))?
    {
        return Err(StoreError::NewerLayout { path, found });
    }

    let read = db.begin_read().map_err(|e| open_err(e.into()))?;
    let machine = read.open_table(MACHINE).map_err(|e| open_err(e.into()))?;
    let load = |key: &'static str| -> Result<Option<Vec<u8>>, StoreError> {
        let value = machine.get(key).map_err(|e| open_err(e.into()))?;
        Ok(value.map(|v| v.value().to_vec()))
    };
    let last_applied: Option<LogId<u64>> = match load(KEY_LAST_APPLIED)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("last applied log id", e))?,
        None => None,
    };
    let last_membership: Membership = match load(KEY_LAST_MEMBERSHIP)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt("last membership", e))?,
        None => Membership::default(),
    };
    drop(machine);
    let (state, request_rows) = read_state(&read).map_err(|e| op_err("state machine", e))?;
    drop(read);

    let db = Arc::new(SharedDb { db, closed: watch::channel(()).0 });
    let state = Arc::new(state);
    let (published, _) = watch::channel(state.clone());
    let log_store = LogStore { db: db.clone(), path: path.clone() };
    let sm = StateMachineStore { db, last_applied, last_membership, state, published, request_rows, written: 0 };
    Ok((log_store, sm))
}

/// The Raft log, vote and commit index. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<SharedDb>,
    path: PathBuf,
}

impl LogStore {
    /// Records which node owns this data directory, or checks that it is `node_id`.
    ///
    /// A data directory copied to another node would otherwise vote with a foreign identity.
    pub fn claim_node_id(&self, node_id: u64) -> Result<(), StoreError> {
        let path = self.path.clone();
        let open_err = |source: redb::Error| StoreError::Open { path: path.clone(), source };
        let txn = self.db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| open_err(e.into()))?;
            let stored = meta.get(KEY_NODE_ID).map_err(|e| open_err(e.into()))?;
            let stored = stored.map(|v| v.value().to_vec());
            let stored: Option<u64> = match stored {
                Some(v) => Some(serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    path: path.clone(),
                    what: "node id",
                    source,
                })?),
                None => None,
            };
            match stored {
                Some(stored) if stored != node_id => {
                    return Err(StoreError::WrongNode { path, stored, requested: node_id });
                }
                Some(_) => return Ok(()),
                None => {
                    let bytes = node_id.to_string().into_bytes();
                    meta.insert(KEY_NODE_ID, bytes.as_slice()).map_err(|e| open_err(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| open_err(e.into()))?;
        Ok(())
    }

    /// A receiver whose `changed()` fails once the database file is closed, that is when the
    /// log store, the state machine and every reader and snapshot builder are gone.
    pub fn closed(&self) -> watch::Receiver<()> {
        self.db.closed.subscribe()
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, OpError> {
        let read = self.db.begin_read()?;
        let meta = read.open_table(META)?;
        get_json(&meta, key)
    }

    async fn write_meta<T>(&self, key: &'static str, value: T, durable: bool) -> Result<(), OpError>
    where
        T: Serialize + Send + 'static,
    {
        let db = self.db.clone();
        let write = move || -> Result<(), OpError> {
            let txn = write_txn(&db, durable)?;
            {
                let mut meta = txn.open_table(META)?;
                put_json(&mut meta, key, &value)?;
            }
            txn.commit()?;
            Ok(())
        };
        tokio::task::spawn_blocking(write).await?
    }
}

/// The open database. Dropping the last handle closes the file and *then* wakes
/// [`LogStore::closed`] watchers (fields drop in declaration order), so a node can wait
/// until it may reopen the file.
struct SharedDb {
    db: Database,
    closed: watch::Sender<()>,
}

impl Deref for SharedDb {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, OpError> {
    Ok(serde_json::from_slice(bytes)?)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, OpError> {
            let txn = self.db.begin_read()?;
            let logs = txn.open_table(LOGS)?;
            let mut entries = Vec::new();
            for item in logs.range(range)? {
                let (_, value) = item?;
                entries.push(decode_entry(value.value())?);
            }
            Ok(entries)
        };
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let read = || -> Result<LogState<TypeConfig>, OpError> {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            let last_purged_log_id: Option<LogId<u64>> = get_json(&meta, KEY_LAST_PURGED)?;
            let logs = txn.open_table(LOGS)?;
            let last_log_id = match logs.last()? {
                Some((_, value)) => Some(decode_entry(value.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState { last_purged_log_id, last_log_id })
        };
        read().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.write_meta(KEY_VOTE, *vote, true).await.map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.read_meta(KEY_VOTE).map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        // Not fsync'ed: it only saves re-applying committed entries after a restart, and the
        // next durable commit (log append, vote, apply batch) flushes it anyway.
        self.write_meta(KEY_COMMITTED, committed, false)
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        let committed: Option<Option<LogId<u64>>> =
            self.read_meta(KEY_COMMITTED).map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| storage_error(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e.into()))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            let txn = write_txn(&db, true)?;
            {
                let mut logs = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    logs.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncating the raft log from this entry on");
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let txn = write_txn(&db, true)?;
            {
                let mut logs = txn.open_table(LOGS)?;
                logs.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging the raft log up to this entry");
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let txn = write_txn(&db, true)?;
            {
                let mut meta = txn.open_table(META)?;
                put_json(&mut meta, KEY_LAST_PURGED, &Some(log_id))?;
                let mut logs = txn.open_table(LOGS)?;
                logs.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

/// The replicated state machine: `haven_state::State` plus what openraft needs to know about
/// it. Every apply batch publishes the new state on a watch channel.
pub struct StateMachineStore {
    db: Arc<SharedDb>,
    last_applied: Option<LogId<u64>>,
    last_membership: Membership,
    state: Arc<State>,
    published: watch::Sender<Arc<State>>,
    /// Where the `requests` table keeps each outcome.
    request_rows: RequestRows,
    /// Bytes of the rows written by apply batches since the store was opened.
    written: u64,
}

impl StateMachineStore {
    /// A receiver that sees the state after every apply batch and snapshot install.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.published.subscribe()
    }

    /// The state as last applied.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Bytes (keys and values) of the rows that apply batches wrote since the store was
    /// opened: what a commit costs the state machine, whatever the size of the state.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

/// The meta of the last snapshot built or installed, if there was one.
fn read_snapshot_meta(db: &Database) -> Result<Option<SnapshotMeta<u64, BasicNode>>, OpError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    get_json(&table, KEY_SNAPSHOT_META)
}

/// Records `meta` as the last snapshot unless a newer one is already recorded. Only the meta
/// is stored: the per-object tables already hold the state, and a snapshot is served from
/// the current state when it is asked for (see `get_current_snapshot`), so a snapshot does
/// not rewrite the whole state to the file. A data blob of an older version is dropped.
fn store_snapshot_if_newer(txn: &WriteTransaction, meta: &SnapshotMeta<u64, BasicNode>) -> Result<(), OpError> {
    let mut table = txn.open_table(SNAPSHOT)?;
    let current: Option<SnapshotMeta<u64, BasicNode>> = get_json(&table, KEY_SNAPSHOT_META)?;
    if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
        return Ok(());
    }
    put_json(&mut table, KEY_SNAPSHOT_META, meta)?;
    table.remove(KEY_SNAPSHOT_DATA)?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, Membership)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let before = self.state.clone();
        let state = Arc::make_mut(&mut self.state);
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(Reply::None),
                EntryPayload::Normal(request) => state.apply(&request),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(Reply::None)
                }
            };
            replies.push(reply);
        }
        if replies.is_empty() {
            return Ok(replies);
        }

        let db = self.db.clone();
        let state = self.state.clone();
        let last_applied = self.last_applied;
        let last_membership = self.last_membership.clone();
        let mut rows = std::mem::take(&mut self.request_rows);
        let (rows, written) = blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            let mut written = Written::default();
            let txn = write_txn(&db, true)?;
            {
                let mut machine = txn.open_table(MACHINE)?;
                written.put_named(&mut machine, KEY_LAST_APPLIED, &last_applied)?;
                written.put_named(&mut machine, KEY_LAST_MEMBERSHIP, &last_membership)?;
            }
            write_state(&txn, &before, &state, &mut rows, &mut written)?;
            txn.commit()?;
            Ok((rows, written.0))
        })
        .await?;
        self.request_rows = rows;
        self.written += written;
        self.published.send_replace(self.state.clone());
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let state: State =
            serde_json::from_slice(&data).map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, e.into()))?;
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installing a snapshot from the leader");

        let db = self.db.clone();
        let meta_owned = meta.clone();
        let state = Arc::new(state);
        let installed = state.clone();
        self.request_rows = blocking(subject, ErrorVerb::Write, move || {
            let txn = write_txn(&db, true)?;
            store_snapshot_if_newer(&txn, &meta_owned)?;
            {
                let mut machine = txn.open_table(MACHINE)?;
                put_json(&mut machine, KEY_LAST_APPLIED, &meta_owned.last_log_id)?;
                put_json(&mut machine, KEY_LAST_MEMBERSHIP, &meta_owned.last_membership)?;
            }
            let rows = rewrite_state(&txn, &installed)?;
            txn.commit()?;
            Ok(rows)
        })
        .await?;

        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.state = state;
        self.published.send_replace(self.state.clone());
        Ok(())
    }

    /// The current state as a snapshot, once a snapshot was ever built or installed (before
    /// that, none: the log holds everything). It is not the state of the last snapshot built
    /// but of the last entry applied — also committed, so just as valid to send to a
    /// follower, and the log behind it is kept at least as far back (logs are purged only up
    /// to a snapshot built earlier). Serialized on demand: only a follower that fell behind
    /// the log needs one.
    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let subject = ErrorSubject::Snapshot(None);
        let built = read_snapshot_meta(&self.db).map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, e))?;
        let Some(built) = built else { return Ok(None) };
        let state = self.state.clone();
        let data = blocking(subject, ErrorVerb::Read, move || Ok(serde_json::to_vec(&*state)?)).await?;
        // Nothing applied since the last one was built: that one, under its own id.
        let meta = if built.last_log_id == self.last_applied {
            built
        } else {
            let snapshot_id = match self.last_applied {
                Some(id) => format!("{}-{}-current", id.leader_id, id.index),
                None => "--current".to_string(),
            };
            SnapshotMeta { last_log_id: self.last_applied, last_membership: self.last_membership.clone(), snapshot_id }
        };
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Builds a snapshot of the state as it was when the builder was made, while the state
/// machine goes on applying.
pub struct SnapshotBuilder {
    db: Arc<SharedDb>,
    last_applied: Option<LogId<u64>>,
    last_membership: Membership,
    state: Arc<State>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let db = self.db.clone();
        let state = self.state.clone();
        let last_log_id = self.last_applied;
        let last_membership = self.last_membership.clone();
        let (meta, data) = blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            let data = serde_json::to_vec(&*state)?;
            let txn = write_txn(&db, true)?;
            let seq = {
                let mut machine = txn.open_table(MACHINE)?;
                let seq = get_json::<u64, _>(&machine, KEY_SNAPSHOT_SEQ)?.unwrap_or(0) + 1;
                put_json(&mut machine, KEY_SNAPSHOT_SEQ, &seq)?;
                seq
            };
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}-{seq}", id.leader_id, id.index),
                None => format!("--{seq}"),
            };
            let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
            store_snapshot_if_newer(&txn, &meta)?;
            txn.commit()?;
            Ok((meta, data))
        })
        .await?;
        tracing::info!(snapshot = %meta.snapshot_id, "built a snapshot of the cluster state");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

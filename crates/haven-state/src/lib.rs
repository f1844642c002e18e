//! The replicated cluster state and the only way it changes: `State::apply(&Request)`.
//!
//! Every node applies the same committed requests in the same order, so `apply` must be
//! deterministic: it reads no clock (the proposer stamps `Request::at`), no files, no
//! randomness. It validates every command against the current state and either changes
//! nothing and returns an error that names the offending value, or applies the whole
//! command. That makes the leader's answer to an operator the same as every replica's.
//! A request with an id also records its outcome (see [`RequestOutcomes`]), so that the
//! same request applied again answers the same, without running twice.

mod apply;
mod error;
pub mod pki;
mod requests;
mod resources;
pub mod tokens;

use std::collections::BTreeMap;

use haven_model::{
    FenceConfig, Group, GroupSpec, GroupUpdate, Millis, Node, NodeLiveness, Resource, ResourceSpec, ResourceState,
    ResourceUpdate,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use error::{ErrorCode, StateError};
/// The persistent collections of [`State`] (so that users name the same version).
pub use imbl;
pub use requests::{
    OutcomeChanges, REQUEST_ID_MAX_LEN, REQUEST_OUTCOME_AGE_MS, REQUEST_OUTCOME_LIMIT, RequestOutcome, RequestOutcomes,
    validate_request_id,
};
pub use resources::Resources;
pub use tokens::{ApiOrigin, ApiToken, AuditEntry, AuditRecord, Role};

/// Version of the state's schema; a snapshot from another version is migrated on load.
pub const SCHEMA_VERSION: u32 = 1;

/// Events kept in the state's history (older ones are dropped).
pub const HISTORY_LIMIT: usize = 2000;

/// Cluster-wide identity, set once by `InitCluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub name: String,
    pub created_at: Millis,
}

/// One entry of the cluster's history: what happened and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: u64,
    pub at: Millis,
    /// A slug such as `group-placed`, `resource-failed`, `node-down`.
    pub kind: String,
    pub node: Option<String>,
    pub group: Option<String>,
    pub resource: Option<String>,
    pub message: String,
    /// Who asked: `operator`, `controller`, or a node name.
    pub by: String,
    /// `ha-wizard` events: the wizard's whole report (every check, the plan, the fixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<haven_model::HaReport>>,
    /// `api-request` events: the API request, where it came from and how it ended (see
    /// [`tokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditRecord>,
}

/// A table of the state, by name: a persistent map, so that cloning the state (every apply
/// batch does, to publish the new state while readers keep the old one) costs O(1), a change
/// copies only the path to what it changes, and the store finds what an apply changed by
/// comparing the two versions without visiting the subtrees they still share.
pub type Map<V> = imbl::OrdMap<String, V>;

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema_version: u32,
    pub cluster: Option<ClusterInfo>,
    pub nodes: Map<Node>,
    pub groups: Map<Group>,
    pub resources: Resources,
    pub history: imbl::Vector<Event>,
    pub next_event_id: u64,
    /// Fence agent per node, for nodes that have one.
    #[serde(default)]
    pub fencing: Map<FenceConfig>,
    /// Fencing progress per node.
    #[serde(default)]
    pub fence_status: Map<FenceStatus>,
    /// The highest placement generation a deleted group had: a group created later starts
    /// above it, so a name's generation (the fencing token its disks' claims carry, and
    /// what resource managers count failures by) never goes back.
    #[serde(default)]
    pub generation_floor: u64,
    /// The outcome of each recent request that carried an id (see [`RequestOutcomes`]).
    #[serde(default)]
    pub requests: RequestOutcomes,
    /// Join tokens by the hex SHA-256 of their text (see [`pki`]).
    #[serde(default)]
    pub join_tokens: Map<pki::JoinTokenRecord>,
    /// The certificate each node was issued, by node name.
    #[serde(default)]
    pub node_certs: Map<pki::NodeCert>,
    /// Revoked certificates by serial (hex): every agent refuses them.
    #[serde(default)]
    pub revoked_certs: Map<pki::RevokedCert>,
    /// The CAs the cluster trusts, the one that signs first; empty until the first CA
    /// rotation (until then each agent trusts the CA in its `pki/ca.pem`). See [`pki`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cas: Vec<pki::ClusterCa>,
    /// The API's bearer tokens by name, each only as the hash of its secret (see [`tokens`]).
    #[serde(default)]
    pub api_tokens: Map<ApiToken>,
}

/// Where fencing a node stands. Times are compared with the node's `since` (when it went
/// down): only a fence that succeeded after that makes its groups safe to recover.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FenceStatus {
    /// When the controller last asked for the node to be fenced (cleared by a failure, so
    /// that it asks again).
    pub requested_at: Option<Millis>,
    /// When a fence agent last reported success.
    pub fenced_at: Option<Millis>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub last_attempt_at: Option<Millis>,
    pub last_error: Option<String>,
}

/// A command with the time and author the proposer stamped on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub at: Millis,
    pub by: String,
    pub command: Command,
    /// The client's id for this request (`Idempotency-Key`): a request whose id was already
    /// applied returns the first outcome again instead of running twice. Entries written
    /// before ids existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// An API request's method, path and client: applying it records an `api-request`
    /// event with its outcome (see [`tokens`]). The cluster's own writes have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<ApiOrigin>,
}

impl Request {
    pub fn new(at: Millis, by: impl Into<String>, command: Command) -> Request {
        Request { at, by: by.into(), command, request_id: None, origin: None }
    }
    /// The same request carrying the client's id `id`.
    pub fn with_id(mut self, id: impl Into<String>) -> Request {
        self.request_id = Some(id.into());
        self
    }
    /// A command that changes nothing (used to commit a leader's first entry and in tests).
    pub fn noop() -> Request {
        Request::new(0, "test", Command::Noop)
    }
}

/// Every change the cluster state can undergo.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Noop,
    InitCluster {
        name: String,
        node: Node,
    },
    /// An admin created a join token; the state keeps only its SHA-256 (see [`pki`]).
    CreateJoinToken {
        token_hash: String,
        expires_at: Millis,
        uses: u32,
    },
    /// An admin revoked a join token before it expired or was used up: it admits no node
    /// from now on.
    RevokeJoinToken {
        token_hash: String,
    },
    /// The leader admits a node that presented a valid join token: the token's use, the
    /// node and the serial of the certificate it was issued, all in one change.
    JoinNode {
        node: Node,
        token_hash: String,
        cert_serial: String,
        /// The fingerprint of the CA that signed it (absent in entries written before CA
        /// rotation existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cert_ca: Option<String>,
    },
    /// A node's current certificate: the founder's own, or one a node renewed; a different
    /// serial for the same node revokes the old one, and the renewal it was asked for is
    /// done.
    RecordNodeCert {
        node: String,
        serial: String,
        /// The fingerprint of the CA that signed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<String>,
    },
    /// An admin asked for `node`'s certificate to be replaced: its agent renews it (a new
    /// key, signed by the cluster's signing CA) and the old one is revoked.
    RenewNodeCert {
        node: String,
    },
    /// A new cluster CA: it signs from now on, and the one before stays trusted until it is
    /// retired. `previous` is the CA the cluster had before CAs were kept in the state (the
    /// first rotation only).
    RotateCa {
        ca: pki::ClusterCa,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<pki::ClusterCa>,
    },
    /// The CA with `fingerprint` is trusted no more (once no node's certificate is from it).
    RetireCa {
        fingerprint: String,
    },
    AddNode {
        node: Node,
    },
    RemoveNode {
        name: String,
    },
    SetNodePaused {
        name: String,
        paused: bool,
    },
    /// From the controller: the node's heartbeats stopped (or resumed).
    SetNodeLiveness {
        name: String,
        liveness: NodeLiveness,
        reason: String,
    },
    CreateGroup {
        spec: GroupSpec,
    },
    UpdateGroup {
        name: String,
        update: GroupUpdate,
    },
    DeleteGroup {
        name: String,
    },
    /// Operator: bring a group online (start it) or offline (stop it everywhere).
    SetGroupOnline {
        name: String,
        online: bool,
    },
    /// Operator: move a group to a node now: a handoff (as `HandOffGroup`) if another node
    /// owns it, or last ran it and is up; otherwise placed there at once.
    MoveGroup {
        name: String,
        node: String,
    },
    /// A node's resource manager: it stopped everything of `group`, which it was asked to
    /// hand off at placement `generation` (`Group::handoff`); the group goes to its target.
    /// A release of another generation, or from another node, changes nothing.
    ReleaseGroup {
        node: String,
        group: String,
        generation: u64,
    },
    /// Controller: place (or unplace) a group, with the reason for the history; `failover`
    /// counts it toward the group's failover threshold. It never moves a group away from a
    /// node that is up: placing elsewhere a group whose owner is up, or one that is being
    /// handed off from a node that is up, is refused (a planned move is `HandOffGroup`).
    /// Unplacing it (`node: None`) is allowed: its owner stops it (rule 4's first step).
    PlaceGroup {
        name: String,
        node: Option<String>,
        reason: String,
        failover: bool,
    },
    /// Controller: a planned move (drain, failback) of a group from its owner `from` to
    /// `to`: the group has no owner (`Group::handoff`) until `from` has stopped it and
    /// released it (`ReleaseGroup`), or is declared down. Applied again, or once the group
    /// is already leaving `from` or is on `to`, it changes nothing; refused if `from` no
    /// longer owns the group (the move was decided on an older state).
    HandOffGroup {
        name: String,
        from: String,
        to: String,
        reason: String,
    },
    /// Controller: leave a group failed (nowhere to go, or too many failovers).
    FailGroup {
        name: String,
        reason: String,
    },
    CreateResource {
        spec: ResourceSpec,
    },
    UpdateResource {
        name: String,
        update: ResourceUpdate,
    },
    DeleteResource {
        name: String,
    },
    /// Operator (or the HA wizard): move a resource that is not running into another
    /// group. It must not depend on, or be depended on by, resources it leaves behind.
    MoveResource {
        name: String,
        group: String,
    },
    /// The HA wizard (`haven vm make-ha`): `commands` applied as one change, all or nothing,
    /// then its report recorded in the history (kind `ha-wizard`). A refused run (`ok`
    /// false) carries no commands: its history entry is the only change it makes.
    HaWizard {
        report: Box<haven_model::HaReport>,
        commands: Vec<Command>,
    },
    /// A node reports what a resource is doing there. `failure` counts toward the restart
    /// threshold.
    ReportResource {
        node: String,
        resource: String,
        state: ResourceState,
        reason: Option<String>,
        failure: bool,
    },
    /// Operator: forget a resource's failures (and its group's failed state).
    ClearFailures {
        resource: String,
    },
    /// Operator: set (or, with `None`, remove) the fence agent of a node.
    SetFence {
        node: String,
        config: Option<FenceConfig>,
    },
    /// Controller: a lost node must be fenced before its groups are recovered.
    RequestFence {
        node: String,
        reason: String,
    },
    /// The leader's fence executor: how the fence agent's run ended.
    RecordFence {
        node: String,
        ok: bool,
        message: String,
    },
    /// Several commands in one log entry (one controller tick's decisions, a node's queued
    /// status reports), applied in order, each all or nothing on its own: a refused one is
    /// skipped and its refusal is its entry in the reply (`Reply::Batch`), so one stale
    /// command does not drop the others. The batch itself is refused, changing nothing, only
    /// when it is malformed: more than [`BATCH_LIMIT`] commands, or one that is itself a
    /// batch. Each command is stamped with the batch's `at` and `by`; a request id covers
    /// the whole batch (its outcome is the whole reply).
    Batch {
        commands: Vec<Command>,
    },
    /// Admin: add an API token (only its hash; `created_at` and `created_by` are the
    /// request's). Refused if the name is taken or reserved.
    CreateToken {
        token: ApiToken,
    },
    /// Admin: remove an API token; the last admin token that has not expired stays.
    RevokeToken {
        name: String,
    },
    /// The agent: API requests that did not reach the state machine (refused before, or
    /// served without a write), at most [`tokens::AUDIT_BATCH_LIMIT`], as `api-request`
    /// events.
    RecordAudit {
        entries: Vec<AuditEntry>,
    },
}

/// Most commands one `Command::Batch` may carry.
pub const BATCH_LIMIT: usize = 1000;

/// Most bytes of JSON [`batches`] puts in one batch: well inside the 512 KiB a log entry
/// may have (`haven_raft::network::APPEND_LIMIT` counts on it).
pub const BATCH_MAX_BYTES: usize = 256 * 1024;

/// How many bytes of JSON `c` takes in a log entry (what [`BATCH_MAX_BYTES`] counts).
pub fn encoded_len(c: &Command) -> usize {
    serde_json::to_vec(c).map(|v| v.len()).unwrap_or(0)
}

/// `commands` as few log entries as the bounds allow: a single command as it is, more as
/// `Command::Batch`es of at most [`BATCH_LIMIT`] commands and about [`BATCH_MAX_BYTES`] of
/// JSON each, in order.
pub fn batches(commands: Vec<Command>) -> Vec<Command> {
    let mut out = Vec::new();
    let mut current: Vec<Command> = Vec::new();
    let mut bytes = 0usize;
    for c in commands {
        let size = encoded_len(&c);
        if !current.is_empty() && (current.len() >= BATCH_LIMIT || bytes.saturating_add(size) > BATCH_MAX_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter().map(|mut cs| if cs.len() == 1 { cs.remove(0) } else { Command::Batch { commands: cs } }).collect()
}

/// What a successful command returns: the object it created or changed, if any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Reply {
    None,
    Node(Node),
    Group(Group),
    Resource(Resource),
    /// A `Command::Batch`'s outcome: one response per command, in order.
    Batch(Vec<Response>),
}

pub type Response = Result<Reply, StateError>;

/// The outcome of each command `sent` carried, in order: a batch's own replies (or its
/// refusal, for every command of a malformed batch), or `response` alone for any other
/// command.
pub fn outcomes(sent: &Command, response: Response) -> Vec<Response> {
    match (sent, response) {
        (Command::Batch { .. }, Ok(Reply::Batch(replies))) => replies,
        (Command::Batch { commands }, Err(e)) => vec![Err(e); commands.len()],
        (_, response) => vec![response],
    }
}

impl State {
    /// Applies one committed request. On error nothing changed, except that a request with
    /// an id records its outcome (see [`RequestOutcomes`]); a request whose id is already
    /// recorded changes nothing and returns the recorded outcome.
    ///
    /// An API request (one with an [`ApiOrigin`]) also records its outcome in the history
    /// (an `api-request` event), refused or not; a replayed one is not recorded again.
    pub fn apply(&mut self, req: &Request) -> Response {
        let Some(id) = req.request_id.as_deref() else { return self.apply_audited(req) };
        self.requests.prune(req.at);
        let fingerprint = requests::fingerprint(&req.command);
        if let Some(known) = self.requests.get(id) {
            return known.replay(id, fingerprint);
        }
        let response = self.apply_audited(req);
        self.requests.record(id, req.at, &req.by, fingerprint, response.clone());
        response
    }

    fn apply_audited(&mut self, req: &Request) -> Response {
        let response = apply::apply(self, req);
        if let Some(origin) = &req.origin {
            tokens::audit_committed(self, req, origin, &response);
        }
        response
    }

    /// Whether `node` is known to be fenced since it last went down.
    pub fn fenced_since_down(&self, node: &str) -> bool {
        let Some(n) = self.nodes.get(node) else { return false };
        self.fence_status.get(node).and_then(|f| f.fenced_at).is_some_and(|t| t >= n.since)
    }

    pub fn node_by_id(&self, id: u64) -> Option<&Node> {
        self.nodes.values().find(|n| n.id == id)
    }

    /// Resources of a group, by name.
    pub fn group_resources<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources.of_group(group)
    }

    /// The group's resources in start order (dependencies first).
    pub fn start_order(&self, group: &str) -> Vec<String> {
        let deps: BTreeMap<String, Vec<String>> =
            self.group_resources(group).map(|r| (r.spec.name.clone(), r.spec.depends_on.clone())).collect();
        // The graph was checked for cycles when it was written.
        haven_model::deps::start_order(&deps).unwrap_or_else(|_| deps.keys().cloned().collect())
    }

    /// Every resource of `group` that depends on `name`, directly or not.
    pub fn dependents_of(&self, group: &str, name: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut frontier = vec![name.to_string()];
        while let Some(cur) = frontier.pop() {
            for r in self.group_resources(group) {
                if r.spec.depends_on.contains(&cur) && out.insert(r.spec.name.clone()) {
                    frontier.push(r.spec.name.clone());
                }
            }
        }
        out
    }

    /// A group's aggregate state: failed if it was left failed or any resource failed,
    /// online if every resource is online, offline if none is running, else pending.
    pub fn group_state(&self, group: &str) -> &'static str {
        match self.groups.get(group) {
            Some(g) => self.group_state_of(g),
            None => "unknown",
        }
    }

    /// [`State::group_state`] of `g` (e.g. a newer copy of one of this state's groups, as a
    /// write returned it) with the resource states of this state.
    pub fn group_state_of(&self, g: &Group) -> &'static str {
        let group = g.spec.name.as_str();
        if g.failed_reason.is_some() {
            return "failed";
        }
        if g.handoff.is_some() {
            return "moving";
        }
        let states: Vec<ResourceState> = self.group_resources(group).map(|r| r.status.state).collect();
        if states.contains(&ResourceState::Failed) {
            "failed"
        } else if states.is_empty() {
            if g.spec.online { "online" } else { "offline" }
        } else if states.iter().all(|s| *s == ResourceState::Online) {
            "online"
        } else if states.iter().all(|s| *s == ResourceState::Offline) {
            "offline"
        } else {
            "pending"
        }
    }

    /// Events that concern a group or one of its resources, newest last.
    pub fn history_of<'a>(
        &'a self,
        group: Option<&'a str>,
        resource: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Event> + 'a {
        self.history.iter().filter(move |e| {
            group.is_none_or(|g| e.group.as_deref() == Some(g))
                && resource.is_none_or(|r| e.resource.as_deref() == Some(r))
        })
    }
}

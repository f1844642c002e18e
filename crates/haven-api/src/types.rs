//! Request and response bodies of `/api/v1` and of the agents' internal peer routes.

use haven_model::{Capacity, Dur, Group, Node, Resource};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: `{"error": {"code": "...", "message": "...", "field": "..."}}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: code.into(), message: message.into(), field: None } }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `not_found`, `already_exists`, `invalid`, `conflict`, `bad_request`, `too_large`,
    /// `method_not_allowed`, `uri_too_long`, `no_quorum`, `not_initialized`, `bad_token`,
    /// `unavailable`, `internal`.
    pub code: String,
    /// What was wrong, naming the offending value, and what to do.
    pub message: String,
    /// The input field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `GET /api/v1/cluster`: who this agent is and what it knows of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// `None` until `haven cluster init` (or a join) made this node a member.
    pub name: Option<String>,
    pub this_node: NodeIdentity,
    pub leader: Option<NodeIdentity>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Whether this node holds a valid lease (may run resources).
    pub lease_valid: bool,
    /// Last Raft log index applied on this node.
    pub applied_index: u64,
    /// This node's guard (`haven guard`, which kills its resources at its lease end even
    /// when the agent is frozen): `running`; `not running` (the node runs no resources
    /// until a new guard runs); `none` on a witness, which runs no resources.
    #[serde(default)]
    pub node_guard: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeIdentity {
    pub id: u64,
    pub name: Option<String>,
    pub address: String,
}

/// `POST /api/v1/cluster/init`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Cluster name. Default: "haven".
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InitResponse {
    pub name: String,
    /// SHA-256 of the cluster CA certificate (DER), hex: a joining node checks it before it
    /// trusts the cluster (`haven cluster join --ca-fingerprint`).
    pub ca_fingerprint: String,
    /// The secret of the cluster's first API token (named `admin`, role admin), shown only
    /// here: `haven cluster init` writes it to the CLI's config file.
    pub admin_token: String,
}

/// `POST /api/v1/cluster/join`: make *this* node join the cluster at `address`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `host:port` of any member.
    pub address: String,
    /// A join token from `haven cluster token create`.
    pub token: String,
    /// The CA fingerprint `haven cluster token create` printed with it: this node trusts
    /// the member at `address` only if its CA has this SHA-256 (64 hex digits; colons and
    /// upper case are accepted).
    pub ca_fingerprint: String,
}

/// `POST /api/v1/cluster/join-tokens`: a join token for new nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// How long the token is valid: 1s to 7d. Default: 1h.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// How many nodes it admits: 1 to 100. Default: 1.
    #[serde(default)]
    pub uses: Option<u32>,
}

/// The answer to `POST /api/v1/cluster/join-tokens`: the token, shown this once (the
/// cluster keeps only its hash).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenCreated {
    pub token: String,
    /// The token's id (the first 12 hex digits of its SHA-256), as `haven cluster token
    /// list` shows it and `revoke` takes it; not a secret.
    #[serde(default)]
    pub id: String,
    /// SHA-256 of the cluster CA certificate (DER), hex: pass it to `haven cluster join`.
    pub ca_fingerprint: String,
    /// When the token stops being valid (ms since the Unix epoch).
    pub expires_at: u64,
    pub uses: u32,
}

/// `POST /internal/join`: sent by a joining node to a member (forwarded to the leader).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerJoin {
    pub id: u64,
    pub name: String,
    pub address: String,
    pub token: String,
    pub capacity: Capacity,
    /// Joins as a witness: votes, hosts nothing.
    #[serde(default)]
    pub witness: bool,
    /// PEM certificate signing request for the node's own key pair (made on the node; the
    /// key never leaves it).
    pub csr: String,
}

/// The leader's answer to `POST /internal/join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerJoined {
    pub node: Node,
    /// The node's certificate (PEM), signed by the cluster CA.
    pub certificate: String,
    /// The cluster CA certificate (PEM).
    pub ca_certificate: String,
    /// The CA's private key (PEM), for a voter or witness only: any of them may lead and
    /// sign the next join (see docs/SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
    /// The other CAs the cluster trusts (PEM), while a CA rotation is in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_cas: Vec<String>,
}

/// A join token as `GET /api/v1/cluster/join-tokens` lists it: never the token itself.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    /// The first 12 hex digits of the token's SHA-256 (what `revoke` takes).
    pub id: String,
    pub created_at: u64,
    pub created_by: String,
    pub expires_at: u64,
    /// How many joins it allows in all, and how many it admitted.
    pub uses: u32,
    pub used: u32,
    /// `valid`, `used up` or `expired`.
    pub status: String,
}

/// The answer to `DELETE /api/v1/cluster/join-tokens/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenRevoked {
    pub revoked: String,
}

/// `POST /internal/renew`: a member asks the leader to sign a new certificate for it (for
/// the node its current certificate names).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRenew {
    /// PEM certificate signing request over the node's new key.
    pub csr: String,
}

/// The leader's answer to `POST /internal/renew`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRenewed {
    /// The new certificate (PEM).
    pub certificate: String,
    pub serial: String,
    /// The CA that signed it.
    pub ca_fingerprint: String,
}

/// `POST /internal/ca-key`: a voter or witness fetches the key of a CA the cluster
/// trusts (a new one, after a rotation) from a member that holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerCaKey {
    pub fingerprint: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerCaKeyReply {
    /// The CA's private key (PEM).
    pub key: String,
}

/// One CA the cluster trusts (`GET /api/v1/cluster/ca`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CaView {
    /// SHA-256 of the CA certificate (DER), hex: what `--ca-fingerprint` pins.
    pub fingerprint: String,
    /// Whether it signs new certificates (the newest CA); the others are trusted until
    /// retired.
    pub signing: bool,
    /// When it was added (ms since the Unix epoch); absent for the CA the cluster was
    /// founded with, before its first rotation.
    pub added_at: Option<u64>,
}

/// One node's certificate (`GET /api/v1/cluster/ca`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeCertView {
    pub node: String,
    pub serial: String,
    /// The CA that signed it (empty: recorded before CA rotation existed).
    pub ca: String,
    pub issued_at: u64,
    /// Whether the node's agent will replace it: an admin asked, or the signing CA did not
    /// sign it.
    pub renewal_pending: bool,
}

/// `GET /api/v1/cluster/ca`: the CAs the cluster trusts and where every node's certificate
/// stands (a CA rotation is done when no renewal is pending).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CaStatus {
    pub cas: Vec<CaView>,
    pub nodes: Vec<NodeCertView>,
}

/// `POST /api/v1/cluster/ca/retire`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireCaRequest {
    /// The fingerprint of the CA to retire (64 hex digits; colons and upper case are
    /// accepted).
    pub fingerprint: String,
}

/// The answer to `POST /api/v1/cluster/ca/rotate`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CaRotated {
    /// The new CA's fingerprint: put it in every CLI's `ca_fingerprint` before the old CA
    /// is retired.
    pub fingerprint: String,
    /// The CA it replaces (trusted until `haven cluster ca retire`).
    pub previous: String,
}

/// `POST /internal/heartbeat`: a node renews its lease with the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub leader_id: u64,
    /// The leader's last applied index when it answered: the node acts on its own copy of
    /// the state only once it has applied at least this far. `u64::MAX`
    /// (`haven_node::PROVISIONAL`): granted while a controller tick was committing — the
    /// lease is extended, but after a lapse the node starts nothing until the next grant.
    pub applied_index: u64,
}

/// A node with the groups it owns.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: Node,
    /// `up`, `down` or `paused`.
    pub status: String,
    pub groups: Vec<String>,
    pub leader: bool,
    /// The node's fence agent, with secret-looking parameters (`*pass*`) hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<haven_model::FenceConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_status: Option<haven_state::FenceStatus>,
}

/// A group with its aggregate state and its resources in start order.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: Group,
    /// `online`, `offline`, `pending` or `failed`.
    pub state: String,
    pub resources: Vec<String>,
}

pub type ResourceView = Resource;

/// `POST /api/v1/groups/{name}/move`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub node: String,
}

/// `POST /api/v1/vms/make-ha`: run the HA wizard on a VM definition file that sits on a
/// node. The answer is the wizard's report (`haven_model::HaReport`), HTTP 200 whenever the
/// wizard ran, with `ok: false` when a check failed (nothing was changed then).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeHaRequest {
    /// The VM definition file (TOML, or JSON ending in `.json`), absolute, on `node`.
    pub path: String,
    /// The node where the file is and whose storage is checked. Default: the node that
    /// receives the request (another node forwards it there).
    #[serde(default)]
    pub node: Option<String>,
    /// The VM's name in the cluster (its `vm` resource; the `vm-config` is `<name>-config`).
    /// Default: the definition's `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// The group the VM joins; created if it does not exist (its disk resources move into
    /// it when their group holds only disks). Default: the group of the disk resources that
    /// hold the VM's files.
    #[serde(default)]
    pub group: Option<String>,
    /// Run every check and return the plan without changing anything (nor recording it).
    #[serde(default)]
    pub dry_run: bool,
    /// Rewrite node-local paths in the definition (and absolute qcow2 backing references)
    /// to the cluster-managed form when that is all that is wrong.
    #[serde(default)]
    pub fix: bool,
}

/// `DELETE /api/v1/groups/{name}` and `DELETE /api/v1/resources/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// The name of the object deleted.
    pub deleted: String,
}

/// `DELETE /api/v1/nodes/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// The name of the node removed from the cluster.
    pub removed: String,
}

/// `GET /api/v1/history`: which events to return. Every filter given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub group: Option<String>,
    pub resource: Option<String>,
    pub node: Option<String>,
    /// The most recent events to return (the agent's default: 100).
    pub limit: Option<usize>,
}

impl HistoryQuery {
    /// The events of group `name`.
    pub fn group(name: &str) -> HistoryQuery {
        HistoryQuery { group: Some(name.to_string()), ..HistoryQuery::default() }
    }

    /// The events of resource `name`.
    pub fn resource(name: &str) -> HistoryQuery {
        HistoryQuery { resource: Some(name.to_string()), ..HistoryQuery::default() }
    }

    /// The events of node `name`.
    pub fn node(name: &str) -> HistoryQuery {
        HistoryQuery { node: Some(name.to_string()), ..HistoryQuery::default() }
    }

    /// At most the `n` most recent of them.
    pub fn limit(self, n: usize) -> HistoryQuery {
        HistoryQuery { limit: Some(n), ..self }
    }
}

/// The committed outcome of a request.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub request_id: String,
    /// `succeeded` or `refused`.
    pub outcome: String,
    /// The HTTP status the request was (or would have been) answered with.
    pub status: u16,
    /// The proposer's time stamp of the request (ms since the Unix epoch).
    pub at: haven_model::Millis,
    /// Who sent it (`operator` for API writes).
    pub by: String,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// What it returned: `{kind, value}` with the object it created or changed, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub reply: Option<haven_state::Reply>,
}

/// `POST /api/v1/tokens`: a new API token.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// The token's name (what the history shows as the author of its changes).
    pub name: String,
    pub role: haven_state::Role,
    /// How long it is accepted, e.g. `30d`, `12h` (1 minute to 3650 days). Default: it
    /// never expires.
    #[serde(default)]
    pub ttl: Option<haven_model::Dur>,
}

/// The answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub name: String,
    pub role: haven_state::Role,
    /// The secret, `hvn_` and 43 characters (256 random bits): send it as
    /// `Authorization: Bearer <token>`. The cluster keeps only its SHA-256 hash.
    pub token: String,
    /// ms since the epoch; none: never.
    pub expires_at: Option<u64>,
}

/// `GET /api/v1/tokens`: one token, without its secret or hash.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: haven_state::Role,
    pub created_at: u64,
    pub created_by: String,
    pub expires_at: Option<u64>,
    /// Whether it has expired (it is refused; revoke it to remove it).
    pub expired: bool,
}

/// The answer to `DELETE /api/v1/tokens/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub revoked: String,
}

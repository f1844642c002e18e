//! The public REST API, `/api/v1`. Handlers only parse and validate input into a
//! `haven_state::Command` (or read the local state) and hand off; the state machine does
//! the real checks. Reads are served from this node's copy of the state; writes go through
//! the leader. Every error is `{"error": {code, message, field}}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State as AxState};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use haven_api::{
    ClusterStatus, ErrorBody, ErrorDetail, GroupView, InitRequest, InitResponse, JoinRequest, MoveRequest,
    NodeIdentity, NodeView, PeerJoin,
};
use haven_model::{
    FenceConfig, GroupSpec, GroupUpdate, Node, NodeLiveness, NodeRole, Resource, ResourceSpec, ResourceUpdate,
};
use haven_state::{Command, ErrorCode, Event, Reply, State};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::requests::WriteDocs;
use crate::{Agent, SubmitError, now_ms};

/// An API error: HTTP status plus the JSON error body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, code: code.into(), message: message.into(), field: None }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Refused(s) => {
                let (status, code) = match s.code {
                    ErrorCode::NotFound => (404, "not_found"),
                    ErrorCode::AlreadyExists => (409, "already_exists"),
                    ErrorCode::Invalid => (400, "invalid"),
                    ErrorCode::Conflict => (409, "conflict"),
                    ErrorCode::RequestIdReused => (422, "request_id_reused"),
                };
                ApiError { status, code: code.into(), message: s.message, field: s.field }
            }
            SubmitError::NoQuorum(m) => ApiError::new(503, "no_quorum", m),
            SubmitError::Unavailable(m) => ApiError::new(503, "unavailable", m),
            SubmitError::ShuttingDown(m) => ApiError::new(503, "shutting_down", m),
            // The body gets the `request_id` from `requests::layer`.
            SubmitError::Unknown { message, .. } => ApiError::new(504, "outcome_unknown", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        (status, Json(body)).into_response()
    }
}

/// A JSON request body of at most `LIMIT` bytes (the route's limit). Every refusal is our
/// error body and none echoes the body: 413 when it is larger than the limit (known from
/// `Content-Length` before anything is read), 415 without a JSON content type, 400 when it
/// does not parse or fit (`haven_api::body::parse_json`).
pub struct Body<T, const LIMIT: usize = { haven_api::MAX_BODY_BYTES }>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned, const LIMIT: usize> FromRequest<S> for Body<T, LIMIT> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        {
            let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
            if header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > LIMIT as u64) {
                return Err(haven_api::body::too_large(LIMIT).into());
            }
            if !header(header::CONTENT_TYPE).is_some_and(haven_api::body::is_json_content_type) {
                return Err(haven_api::body::not_json().into());
            }
        }
        let bytes =
            axum::body::to_bytes(req.into_body(), LIMIT).await.map_err(|_| haven_api::body::too_large(LIMIT))?;
        Ok(Body(haven_api::body::parse_json(&bytes)?))
    }
}

impl From<haven_api::body::BodyError> for ApiError {
    fn from(e: haven_api::body::BodyError) -> Self {
        ApiError { status: e.status, code: e.code.into(), message: e.message, field: e.field }
    }
}

/// The `{name}` of a route's path. A segment that is not UTF-8 once percent-decoded is a
/// 400 error body (axum's own rejection is plain text).
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Name(name)),
            Err(_) => Err(ApiError::new(
                400,
                "bad_request",
                "the name in the path is not valid: once percent-decoded it must be UTF-8 text",
            )),
        }
    }
}

/// A query string (`?group=g&limit=10`); one that does not fit is a 400 error body naming
/// the parameter.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Params(q)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                // The inner error is `<parameter>: <reason>`; the reason may quote the value.
                let why = haven_api::body::shorten(&root_cause(&e), 160);
                Err(ApiError::new(
                    400,
                    "bad_request",
                    format!("the query string does not fit: {why}; see the parameters in /api/v1/openapi.json"),
                ))
            }
            Err(_) => Err(ApiError::new(400, "bad_request", "the query string is not valid")),
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The whole HTTP surface of an agent: the API, the internal routes between agents and
/// Raft's peer RPCs, behind [`error_bodies`] so that every error, on every route and every
/// failure path, is the JSON error body.
pub fn app(agent: Arc<Agent>) -> Router {
    let routes = router(agent.clone())
        .merge(crate::peer::router(agent.clone()))
        .merge(haven_raft::router(&agent.db))
        .fallback(|method: Method, uri: Uri| async move {
            let path = haven_api::body::shorten(uri.path(), 120);
            ApiError::new(
                404,
                "not_found",
                format!("no route {method} {path}; the API is under /api/v1 (see /api/v1/openapi.json)"),
            )
        });
    // Around the whole routing, not inside each route (as `routes.layer` would be): it must
    // see the 405 with its `Allow` header, and refuse a long target before any route runs.
    Router::new().fallback_service(routes).layer(axum::middleware::from_fn(error_bodies))
}

/// Refuses a request target longer than `haven_api::MAX_URI_BYTES` (414), and turns every
/// error response that is not already our JSON body (axum's 405, a rejection of an
/// extractor we do not wrap) into it. The original text is dropped, never echoed.
async fn error_bodies(req: Request, next: axum::middleware::Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > haven_api::MAX_URI_BYTES {
        return ApiError::new(
            414,
            "uri_too_long",
            format!(
                "the request target is {target} bytes, more than the {} this agent reads; send long values in a \
                 JSON body",
                haven_api::MAX_URI_BYTES
            ),
        )
        .into_response();
    }
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(haven_api::body::is_json_content_type);
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut error = match status.as_u16() {
        405 => {
            let takes = allow.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("another method").to_string();
            ApiError::new(405, "method_not_allowed", format!("{method} is not allowed on this route; it takes {takes}"))
        }
        404 => ApiError::new(404, "not_found", "no such route; see /api/v1/openapi.json"),
        413 => haven_api::body::too_large(haven_api::MAX_BODY_BYTES).into(),
        415 => haven_api::body::not_json().into(),
        s if s < 500 => ApiError::new(s, "bad_request", format!("the request was refused (HTTP {s})")),
        s => ApiError::new(s, "internal", format!("the agent failed to answer (HTTP {s}); see its log")),
    }
    .into_response();
    if let Some(allow) = allow {
        error.headers_mut().insert(header::ALLOW, allow);
    }
    error
}

type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Haven API", description = "Failover cluster manager for virtual machines and services"),
    paths(
        cluster_status,
        cluster_init,
        cluster_join,
        cluster_token,
        list_nodes,
        get_node,
        pause_node,
        resume_node,
        remove_node,
        set_fence,
        remove_fence,
        list_groups,
        create_group,
        get_group,
        update_group,
        delete_group,
        move_group,
        group_online,
        group_offline,
        list_resources,
        create_resource,
        get_resource,
        update_resource,
        delete_resource,
        clear_resource,
        history,
        crate::vm_api::list_vms,
        crate::vm_api::get_vm,
        crate::vm_api::guest_control,
        crate::vm_api::edit_definition,
        crate::vm_api::console,
        crate::vm_api::create_vm,
        crate::make_ha::make_ha,
        crate::requests::get_request
    ),
    modifiers(&WriteDocs),
    components(schemas(
        haven_api::VmView,
        haven_api::GuestControl,
        haven_api::DefinitionEdit,
        haven_api::VmCreate,
        haven_api::MakeHaRequest,
        haven_model::HaReport,
        haven_model::HaCheck,
        haven_model::HaPathFix,
        haven_model::CheckResult,
        haven_model::VmDefinition,
        haven_model::VmStatus,
        ErrorBody,
        ErrorDetail,
        crate::requests::OutcomeUnknownBody,
        crate::requests::OutcomeUnknownDetail,
        crate::requests::RequestView,
        haven_api::JoinToken,
        haven_api::Deleted,
        haven_api::Removed,
        haven_api::GuestControlSent,
        haven_api::DefinitionEdited,
        ClusterStatus,
        NodeIdentity,
        InitRequest,
        InitResponse,
        JoinRequest,
        NodeView,
        GroupView,
        MoveRequest,
        GroupSpec,
        GroupUpdate,
        ResourceSpec,
        ResourceUpdate,
        Resource,
        Event
    ))
)]
pub struct ApiDoc;

/// Error statuses a route answers besides those in its own annotation, by what the route
/// does; [`openapi_document`] adds them to every operation, each with the error body.
/// One place: a new failure mode of all writes goes into [`WRITE_ERRORS`].
const EVERY_ROUTE_ERRORS: &[(u16, &str)] = &[
    (400, "a path or query parameter does not decode or fit (the message names it)"),
    (404, "no such object, or no such route"),
    (414, "the request target (path and query) is longer than 8 KiB"),
    (500, "the agent failed to answer; see its log"),
];

/// Routes with a request body.
const BODY_ERRORS: &[(u16, &str)] = &[
    (400, "the body is not valid JSON, or does not fit the schema (the message names the field)"),
    (413, "the body is larger than this route's limit"),
    (415, "the body is not sent as `Content-Type: application/json`"),
];

/// Routes that change the cluster (every POST, PUT, PATCH and DELETE): the state
/// machine's refusals and the cluster's availability.
pub const WRITE_ERRORS: &[(u16, &str)] = &[
    (400, "invalid input (the message names the field and the value)"),
    (404, "an object the request names does not exist"),
    (409, "a conflict with the cluster's state: the object exists, is in use, or the node is not in a cluster"),
    (422, "`request_id_reused`: the `Idempotency-Key` was already used for another request"),
    (
        503,
        "Not applied: `no_quorum` (no leader could take it), `unavailable`, or `shutting_down` \
         (this agent is stopping; the message names another node); retry",
    ),
];

/// Reads of the cluster state.
const READ_ERRORS: &[(u16, &str)] = &[(409, "this node is not part of a cluster yet")];

/// The OpenAPI document as served: utoipa's, with three fixes utoipa cannot express.
/// Every operation lists the error statuses above. `#[serde(flatten)]` parts are merged
/// into one object (`GroupView` is `Group` and its state, `Group` is `GroupSpec` and its
/// owner and handoff, `Resource` is `ResourceSpec` and its `status`), since utoipa's
/// `allOf` of a `deny_unknown_fields` request schema forbids the reply's own fields. And
/// path parameters are declared from the path templates.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = doc["components"]["schemas"].clone();
    if let Some(map) = doc["components"]["schemas"].as_object_mut() {
        for (_, schema) in map.iter_mut() {
            *schema = merged(schema, &schemas, 0);
        }
    }
    let error_ref = serde_json::json!({"$ref": "#/components/schemas/ErrorBody"});
    let Some(paths) = doc["paths"].as_object_mut() else { return doc };
    for (path, item) in paths.iter_mut() {
        let names: Vec<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        let Some(ops) = item.as_object_mut() else { continue };
        for (method, op) in ops.iter_mut() {
            let declared: Vec<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for name in names.iter().filter(|n| !declared.contains(n)) {
                let param =
                    serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
                match op["parameters"].as_array_mut() {
                    Some(ps) => ps.push(param),
                    None => op["parameters"] = serde_json::json!([param]),
                }
            }
            let mut errors: Vec<(u16, &str)> = EVERY_ROUTE_ERRORS.to_vec();
            if op.get("requestBody").is_some() {
                errors.extend_from_slice(BODY_ERRORS);
            }
            errors.extend_from_slice(if method == "get" { READ_ERRORS } else { WRITE_ERRORS });
            let Some(responses) = op["responses"].as_object_mut() else { continue };
            for (status, description) in errors {
                let entry = responses.entry(status.to_string()).or_insert_with(|| serde_json::json!({}));
                if entry.get("description").is_none() {
                    entry["description"] = description.into();
                }
                if entry.get("content").is_none() {
                    entry["content"] = serde_json::json!({"application/json": {"schema": error_ref.clone()}});
                }
            }
        }
    }
    doc
}

/// `schema` with every `allOf` merged into one object (properties and required fields of
/// all parts, `$ref`s followed), without `additionalProperties`.
fn merged(schema: &serde_json::Value, schemas: &serde_json::Value, depth: usize) -> serde_json::Value {
    let Some(parts) = schema.get("allOf").and_then(|a| a.as_array()).filter(|_| depth < 8) else {
        return schema.clone();
    };
    let mut properties = serde_json::Map::new();
    let mut required: Vec<serde_json::Value> = Vec::new();
    for part in parts {
        let part = match part.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => part.clone(),
        };
        let part = merged(&part, schemas, depth + 1);
        if let Some(p) = part["properties"].as_object() {
            properties.extend(p.clone());
        }
        for r in part["required"].as_array().into_iter().flatten() {
            if !required.contains(r) {
                required.push(r.clone());
            }
        }
    }
    let mut out = serde_json::json!({"type": "object", "properties": properties, "required": required});
    if let Some(d) = schema.get("description") {
        out["description"] = d.clone();
    }
    out
}

pub fn router(agent: Arc<Agent>) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(|| async { Json(openapi_document()) }))
        .route("/cluster", get(cluster_status))
        .route("/cluster/init", post(cluster_init))
        .route("/cluster/join", post(cluster_join))
        .route("/cluster/token", get(cluster_token))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{name}", get(get_node).delete(remove_node))
        .route("/nodes/{name}/pause", post(pause_node))
        .route("/nodes/{name}/resume", post(resume_node))
        .route("/nodes/{name}/fence", axum::routing::put(set_fence).delete(remove_fence))
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{name}", get(get_group).patch(update_group).delete(delete_group))
        .route("/groups/{name}/move", post(move_group))
        .route("/groups/{name}/online", post(group_online))
        .route("/groups/{name}/offline", post(group_offline))
        .route("/resources", get(list_resources).post(create_resource))
        .route("/resources/{name}", get(get_resource).patch(update_resource).delete(delete_resource))
        .route("/resources/{name}/clear", post(clear_resource))
        .route("/history", get(history))
        .route("/requests/{id}", get(crate::requests::get_request))
        .route("/vms", get(crate::vm_api::list_vms).post(crate::vm_api::create_vm))
        .route("/vms/make-ha", post(crate::make_ha::make_ha))
        .route("/vms/{name}", get(crate::vm_api::get_vm))
        .route("/vms/{name}/guest-control", post(crate::vm_api::guest_control))
        .route("/vms/{name}/console", get(crate::vm_api::console))
        .route("/vms/{name}/definition", axum::routing::put(crate::vm_api::edit_definition))
        .fallback(|method: Method, uri: Uri| async move {
            let path = haven_api::body::shorten(uri.path(), 120);
            ApiError::new(404, "not_found", format!("no API route {method} {path}; see /api/v1/openapi.json"))
        })
        .layer(axum::middleware::from_fn_with_state(agent.clone(), crate::requests::layer));
    Router::new().nest(haven_api::API_PREFIX, v1).route("/metrics", get(metrics)).with_state(agent)
}

fn require_cluster(state: &State) -> Result<(), ApiError> {
    if state.cluster.is_none() {
        return Err(ApiError::new(
            409,
            "not_initialized",
            "this node is not part of a cluster yet; run `haven cluster init` here or `haven cluster join <address> --token <token>`",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterStatus)))]
async fn cluster_status(AxState(agent): AxState<Arc<Agent>>) -> Json<ClusterStatus> {
    let state = agent.db.state();
    let m = agent.db.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let leader = agent.db.leader().map(|(id, address)| NodeIdentity {
        id,
        name: state.node_by_id(id).map(|n| n.name.clone()),
        address,
    });
    Json(ClusterStatus {
        name: state.cluster.as_ref().map(|c| c.name.clone()),
        this_node: NodeIdentity {
            id: agent.config.id,
            name: Some(agent.config.name.clone()),
            address: agent.config.advertise(),
        },
        leader,
        term: m.current_term,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        lease_valid: agent.lease.valid(),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
    })
}

#[utoipa::path(post, path = "/api/v1/cluster/init", tag = "cluster", request_body = InitRequest,
    responses((status = 200, body = InitResponse), (status = 409, body = ErrorBody)))]
async fn cluster_init(AxState(agent): AxState<Arc<Agent>>, Body(req): Body<InitRequest>) -> ApiResult<InitResponse> {
    if agent.config.witness {
        return Err(ApiError::new(
            409,
            "conflict",
            "a witness cannot found a cluster; run `haven cluster init` on a data node, then join the witness to it",
        ));
    }
    let name = req.name.unwrap_or_else(|| "haven".to_string());
    haven_model::validate_name("name", &name).map_err(|e| SubmitError::Refused(e.into()))?;
    if agent.db.is_initialized() {
        return Err(ApiError::new(
            409,
            "conflict",
            "this node already belongs to a cluster; to found a new one, stop the agent and empty its state_dir first",
        ));
    }
    let mut members = BTreeMap::new();
    members.insert(agent.config.id, haven_raft::BasicNode { addr: agent.config.advertise() });
    agent.db.initialize(members).await.map_err(|e| ApiError::new(409, "conflict", e.to_string()))?;
    let join_token = random_token()?;
    let node = Node {
        id: agent.config.id,
        name: agent.config.name.clone(),
        address: agent.config.advertise(),
        role: NodeRole::Voter,
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: agent.config.capacity(),
        since: now_ms(),
    };
    agent.submit("operator", Command::InitCluster { name: name.clone(), join_token: join_token.clone(), node }).await?;
    Ok(Json(InitResponse { name, join_token }))
}

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ApiError::new(500, "internal", format!("cannot read /dev/urandom for a join token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[utoipa::path(post, path = "/api/v1/cluster/join", tag = "cluster", request_body = JoinRequest,
    responses((status = 200, body = NodeView), (status = 403, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn cluster_join(AxState(agent): AxState<Arc<Agent>>, Body(req): Body<JoinRequest>) -> ApiResult<NodeView> {
    if agent.db.state().cluster.is_some() {
        return Err(ApiError::new(409, "conflict", "this node is already a member of a cluster"));
    }
    let address = req.address.trim_start_matches("http://").trim_end_matches('/').to_string();
    let join = PeerJoin {
        id: agent.config.id,
        name: agent.config.name.clone(),
        address: agent.config.advertise(),
        token: req.token,
        capacity: agent.config.capacity(),
        witness: agent.config.witness,
    };
    let node = crate::peer::forward_join(&agent.peers, &address, &join).await?;
    // Wait (bounded) until this node has received the state that lists it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !agent.db.state().nodes.contains_key(&node.name) {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(Json(node_view(&agent, &agent.db.state(), &node)))
}

#[utoipa::path(get, path = "/api/v1/cluster/token", tag = "cluster", responses((status = 200, body = haven_api::JoinToken)))]
async fn cluster_token(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<haven_api::JoinToken> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(haven_api::JoinToken {
        join_token: state.cluster.as_ref().map(|c| c.join_token.clone()).unwrap_or_default(),
    }))
}

fn node_view(agent: &Agent, state: &State, n: &Node) -> NodeView {
    NodeView {
        node: n.clone(),
        status: n.status().to_string(),
        groups: state
            .groups
            .values()
            .filter(|g| g.owner.as_deref() == Some(&n.name))
            .map(|g| g.spec.name.clone())
            .collect(),
        leader: agent.db.leader().map(|(id, _)| id) == Some(n.id),
        fence: state.fencing.get(&n.name).map(redact),
        fence_status: state.fence_status.get(&n.name).cloned(),
    }
}

/// A fence config fit to show: parameters that look like secrets are masked.
fn redact(c: &FenceConfig) -> FenceConfig {
    let mut c = c.clone();
    for (k, v) in c.params.iter_mut() {
        if k.contains("pass") || k.contains("secret") || k.contains("key") {
            *v = "********".into();
        }
    }
    c
}

#[utoipa::path(put, path = "/api/v1/nodes/{name}/fence", tag = "nodes", request_body = FenceConfig,
    responses((status = 200, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_fence(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(config): Body<FenceConfig>,
) -> ApiResult<NodeView> {
    config.validate().map_err(|e| SubmitError::Refused(e.into()))?;
    agent.submit("operator", Command::SetFence { node: name.clone(), config: Some(config) }).await?;
    get_node(AxState(agent), Name(name)).await
}

#[utoipa::path(delete, path = "/api/v1/nodes/{name}/fence", tag = "nodes",
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
async fn remove_fence(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    agent.submit("operator", Command::SetFence { node: name.clone(), config: None }).await?;
    get_node(AxState(agent), Name(name)).await
}

fn group_view(state: &State, name: &str) -> Option<GroupView> {
    let g = state.groups.get(name)?;
    Some(GroupView { group: g.clone(), state: state.group_state(name).to_string(), resources: state.start_order(name) })
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", responses((status = 200, body = [NodeView])))]
async fn list_nodes(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<Vec<NodeView>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(state.nodes.values().map(|n| node_view(&agent, &state, n)).collect()))
}

#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "nodes", responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
async fn get_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    let state = agent.db.state();
    let n = state
        .nodes
        .get(&name)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("node", &name)))?;
    Ok(Json(node_view(&agent, &state, n)))
}

async fn node_reply(agent: &Agent, cmd: Command) -> ApiResult<NodeView> {
    let reply = agent.submit("operator", cmd).await?;
    let state = agent.db.state();
    match reply {
        Reply::Node(n) => Ok(Json(node_view(agent, &state, &n))),
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/pause", tag = "nodes", responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
async fn pause_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    node_reply(&agent, Command::SetNodePaused { name, paused: true }).await
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/resume", tag = "nodes", responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
async fn resume_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    node_reply(&agent, Command::SetNodePaused { name, paused: false }).await
}

#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "nodes",
    responses((status = 200, body = haven_api::Removed), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn remove_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<haven_api::Removed> {
    let state = agent.db.state();
    let node = state
        .nodes
        .get(&name)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("node", &name)))?;
    if node.is_up() {
        return Err(ApiError::new(
            409,
            "conflict",
            format!("node {name:?} is up; stop its agent (after `haven node pause {name}`) before removing it"),
        ));
    }
    let id = node.id;
    // The voter set can only change on the leader: let it do the whole removal.
    if !agent.is_leader() {
        let Some((_, addr)) = agent.db.leader() else {
            return Err(ApiError::new(503, "unavailable", "no leader is elected right now; retry in a moment"));
        };
        let client = haven_api::Client::new(&addr);
        return client.delete(&format!("/api/v1/nodes/{name}")).await.map(Json).map_err(|e| match e {
            haven_api::ClientError::Api { status, code, message, field } => ApiError { status, code, message, field },
            other => ApiError::new(502, "unavailable", other.to_string()),
        });
    }
    agent.submit("operator", Command::RemoveNode { name: name.clone() }).await?;
    let voters: std::collections::BTreeSet<u64> = {
        let m = agent.db.raft().metrics().borrow().clone();
        m.membership_config.membership().voter_ids().filter(|v| *v != id).collect()
    };
    agent.db.change_membership(voters).await.map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    Ok(Json(haven_api::Removed { removed: name }))
}

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", responses((status = 200, body = [GroupView])))]
async fn list_groups(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<Vec<GroupView>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(state.groups.keys().filter_map(|g| group_view(&state, g)).collect()))
}

async fn group_reply(agent: &Agent, cmd: Command) -> ApiResult<GroupView> {
    let reply = agent.submit("operator", cmd).await?;
    match reply {
        Reply::Group(g) => {
            // The reply is the group as committed; this node may not have applied it yet
            // (the write may have been forwarded to the leader), so the group part comes
            // from the reply and only its resources' states from the local copy.
            let state = agent.db.state();
            Ok(Json(GroupView {
                state: state.group_state_of(&g).to_string(),
                resources: state.start_order(&g.spec.name),
                group: g,
            }))
        }
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = GroupSpec,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_group(AxState(agent): AxState<Arc<Agent>>, Body(spec): Body<GroupSpec>) -> ApiResult<GroupView> {
    spec.validate().map_err(|e| SubmitError::Refused(e.into()))?;
    group_reply(&agent, Command::CreateGroup { spec }).await
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
async fn get_group(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<GroupView> {
    let state = agent.db.state();
    group_view(&state, &name)
        .map(Json)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("group", &name)).into())
}

#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "groups", request_body = GroupUpdate,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_group(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(update): Body<GroupUpdate>,
) -> ApiResult<GroupView> {
    group_reply(&agent, Command::UpdateGroup { name, update }).await
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", responses((status = 200, body = haven_api::Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_group(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<haven_api::Deleted> {
    agent.submit("operator", Command::DeleteGroup { name: name.clone() }).await?;
    Ok(Json(haven_api::Deleted { deleted: name }))
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/move", tag = "groups", request_body = MoveRequest,
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn move_group(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(req): Body<MoveRequest>,
) -> ApiResult<GroupView> {
    group_reply(&agent, Command::MoveGroup { name, node: req.node }).await
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/online", tag = "groups", responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
async fn group_online(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<GroupView> {
    group_reply(&agent, Command::SetGroupOnline { name, online: true }).await
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/offline", tag = "groups", responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
async fn group_offline(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<GroupView> {
    group_reply(&agent, Command::SetGroupOnline { name, online: false }).await
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ResourceFilter {
    group: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/resources", tag = "resources", params(ResourceFilter), responses((status = 200, body = [Resource])))]
async fn list_resources(
    AxState(agent): AxState<Arc<Agent>>,
    Params(f): Params<ResourceFilter>,
) -> ApiResult<Vec<Resource>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    if let Some(g) = &f.group
        && !state.groups.contains_key(g)
    {
        return Err(SubmitError::Refused(haven_state::StateError::not_found("group", g)).into());
    }
    Ok(Json(
        state.resources.values().filter(|r| f.group.as_ref().is_none_or(|g| &r.spec.group == g)).cloned().collect(),
    ))
}

async fn resource_reply(agent: &Agent, cmd: Command) -> ApiResult<Resource> {
    match agent.submit("operator", cmd).await? {
        Reply::Resource(r) => Ok(Json(r)),
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

#[utoipa::path(post, path = "/api/v1/resources", tag = "resources", request_body = ResourceSpec,
    responses((status = 200, body = Resource), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_resource(AxState(agent): AxState<Arc<Agent>>, Body(spec): Body<ResourceSpec>) -> ApiResult<Resource> {
    spec.validate().map_err(|e| SubmitError::Refused(e.into()))?;
    agent.drivers.get(spec.kind).validate(&spec).map_err(|e| SubmitError::Refused(e.into()))?;
    resource_reply(&agent, Command::CreateResource { spec }).await
}

#[utoipa::path(get, path = "/api/v1/resources/{name}", tag = "resources", responses((status = 200, body = Resource), (status = 404, body = ErrorBody)))]
async fn get_resource(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<Resource> {
    let state = agent.db.state();
    state
        .resources
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("resource", &name)).into())
}

#[utoipa::path(patch, path = "/api/v1/resources/{name}", tag = "resources", request_body = ResourceUpdate,
    responses((status = 200, body = Resource), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_resource(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(update): Body<ResourceUpdate>,
) -> ApiResult<Resource> {
    resource_reply(&agent, Command::UpdateResource { name, update }).await
}

#[utoipa::path(delete, path = "/api/v1/resources/{name}", tag = "resources", responses((status = 200, body = haven_api::Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_resource(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<haven_api::Deleted> {
    agent.submit("operator", Command::DeleteResource { name: name.clone() }).await?;
    Ok(Json(haven_api::Deleted { deleted: name }))
}

#[utoipa::path(post, path = "/api/v1/resources/{name}/clear", tag = "resources", responses((status = 200, body = Resource), (status = 404, body = ErrorBody)))]
async fn clear_resource(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<Resource> {
    resource_reply(&agent, Command::ClearFailures { resource: name }).await
}

#[derive(Deserialize, utoipa::IntoParams)]
struct HistoryFilter {
    group: Option<String>,
    resource: Option<String>,
    node: Option<String>,
    /// Most recent events to return. Default 100.
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/history", tag = "history", params(HistoryFilter), responses((status = 200, body = [Event])))]
async fn history(AxState(agent): AxState<Arc<Agent>>, Params(f): Params<HistoryFilter>) -> ApiResult<Vec<Event>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    let events: Vec<Event> = state
        .history_of(f.group.as_deref(), f.resource.as_deref())
        .filter(|e| f.node.as_ref().is_none_or(|n| e.node.as_ref() == Some(n)))
        .cloned()
        .collect();
    let limit = f.limit.unwrap_or(100);
    let skip = events.len().saturating_sub(limit);
    Ok(Json(events.into_iter().skip(skip).collect()))
}

/// Prometheus text format.
async fn metrics(AxState(agent): AxState<Arc<Agent>>) -> impl IntoResponse {
    let state = agent.db.state();
    let m = agent.db.raft().metrics().borrow().clone();
    let mut out = String::new();
    let mut line = |name: &str, help: &str, labels: &str, v: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {v}\n"));
    };
    line("haven_is_leader", "1 if this node is the Raft leader", "", u64::from(agent.is_leader()));
    line("haven_lease_valid", "1 if this node holds a valid lease", "", u64::from(agent.lease.valid()));
    line("haven_raft_term", "current Raft term", "", m.current_term);
    line("haven_raft_applied_index", "last applied Raft log index", "", m.last_applied.map(|l| l.index).unwrap_or(0));
    line(
        "haven_nodes_up",
        "nodes up in the cluster state",
        "",
        state.nodes.values().filter(|n| n.is_up()).count() as u64,
    );
    line("haven_groups", "groups in the cluster state", "", state.groups.len() as u64);
    let owned = state.groups.values().filter(|g| g.owner.as_deref() == Some(agent.name())).count() as u64;
    line("haven_groups_owned", "groups this node owns", "", owned);
    ([("content-type", "text/plain; version=0.0.4")], out)
}

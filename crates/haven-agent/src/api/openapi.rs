//! The OpenAPI document (`GET /api/v1/openapi.json`): utoipa's derive over every route's
//! annotation, then the fixes utoipa cannot express (see [`openapi_document`]).

use haven_api::{
    ClusterStatus, ErrorBody, ErrorDetail, GroupView, InitRequest, InitResponse, JoinRequest, MoveRequest,
    NodeIdentity, NodeView,
};
use haven_model::{GroupSpec, GroupUpdate, Resource, ResourceSpec, ResourceUpdate};
use haven_state::Event;
use utoipa::OpenApi;

use super::auth::{Access, required_access};
use super::{cluster, groups, history, nodes, resources, tokens, vms, wizard};
use crate::requests::WriteDocs;

#[derive(OpenApi)]
#[openapi(
    info(title = "Haven API", description = "Failover cluster manager for virtual machines and services"),
    paths(
        cluster::cluster_status,
        cluster::cluster_init,
        cluster::cluster_join,
        cluster::create_join_token,
        cluster::list_join_tokens,
        cluster::revoke_join_token,
        cluster::ca_status,
        cluster::ca_rotate,
        cluster::ca_retire,
        nodes::list_nodes,
        nodes::get_node,
        nodes::pause_node,
        nodes::resume_node,
        nodes::renew_certificate,
        nodes::remove_node,
        nodes::set_fence,
        nodes::remove_fence,
        groups::list_groups,
        groups::create_group,
        groups::get_group,
        groups::update_group,
        groups::delete_group,
        groups::move_group,
        groups::group_online,
        groups::group_offline,
        resources::list_resources,
        resources::create_resource,
        resources::get_resource,
        resources::update_resource,
        resources::delete_resource,
        resources::clear_resource,
        history::history,
        vms::list_vms,
        vms::get_vm,
        vms::guest_control,
        vms::edit_definition,
        vms::console,
        vms::create_vm,
        wizard::make_ha,
        crate::requests::get_request,
        tokens::list_tokens,
        tokens::create_token,
        tokens::revoke_token
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
        haven_api::JoinTokenRequest,
        haven_api::JoinTokenCreated,
        haven_api::JoinTokenView,
        haven_api::JoinTokenRevoked,
        haven_api::CaStatus,
        haven_api::CaView,
        haven_api::NodeCertView,
        haven_api::CaRotated,
        haven_api::RetireCaRequest,
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
        Event,
        haven_api::TokenCreate,
        haven_api::TokenCreated,
        haven_api::TokenView,
        haven_api::TokenRevoked,
        haven_state::Role,
        haven_state::AuditRecord
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

/// Routes that need an API token (see `api::auth::RULES`).
const AUTH_ERRORS: &[(u16, &str)] = &[
    (401, "`unauthorized`: no API token, or an unknown, revoked or expired one (the message says how to pass one)"),
    (403, "`forbidden`: the token's role is too low (the message names the role needed)"),
    (
        429,
        "`too_many_requests`: too many requests with an invalid token came from this address; wait `Retry-After` \
         seconds",
    ),
];

/// Routes with a request body.
const BODY_ERRORS: &[(u16, &str)] = &[
    (400, "the body is not valid JSON, or does not fit the schema (the message names the field)"),
    (413, "the body is larger than this route's limit"),
    (415, "the body is not sent as `Content-Type: application/json`"),
    (408, "the body did not arrive within 30 s"),
];

/// Routes that change the cluster (every POST, PUT, PATCH and DELETE): the state
/// machine's refusals and the cluster's availability.
const WRITE_ERRORS: &[(u16, &str)] = &[
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

/// The OpenAPI document as served: utoipa's, with the fixes utoipa cannot express.
/// Every operation needs a bearer token (`security`) unless `api::auth::RULES` makes it
/// public (or public until the node belongs to a cluster), and lists 401, 403 and 429.
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
    doc["components"]["securitySchemes"] = serde_json::json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API token (`haven token create`)"}
    });
    doc["security"] = serde_json::json!([{"bearer": []}]);
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
            let access = method.to_uppercase().parse().ok().and_then(|m| required_access(&m, path));
            // `x-required-role`: what `api::auth::RULES` asks (the lab test checks the agent
            // enforces exactly this).
            let role = match access {
                Some(Access::Public) => {
                    op["security"] = serde_json::json!([]);
                    "public".to_string()
                }
                Some(Access::Bootstrap) => {
                    op["security"] = serde_json::json!([{}, {"bearer": []}]);
                    errors.extend_from_slice(AUTH_ERRORS);
                    "bootstrap".to_string()
                }
                Some(Access::Role(r)) => {
                    errors.extend_from_slice(AUTH_ERRORS);
                    r.to_string()
                }
                None => {
                    errors.extend_from_slice(AUTH_ERRORS);
                    "admin".to_string()
                }
            };
            op["x-required-role"] = role.into();
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

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::ApiDoc;

    #[test]
    fn the_openapi_document_describes_request_ids_on_every_write_route() {
        let doc = ApiDoc::openapi();
        let mut writes = 0;
        for (path, item) in &doc.paths.paths {
            for op in [&item.post, &item.put, &item.patch, &item.delete].into_iter().flatten() {
                writes += 1;
                let params = op.parameters.as_deref().unwrap_or_default();
                assert!(params.iter().any(|p| p.name == "Idempotency-Key"), "{path}: no Idempotency-Key header");
                assert!(op.responses.responses.contains_key("504"), "{path}: no 504 outcome_unknown");
            }
        }
        assert!(writes >= 15, "only {writes} write operations documented");
        let lookup =
            doc.paths.paths.get("/api/v1/requests/{id}").and_then(|p| p.get.as_ref()).expect("the lookup route");
        assert!(lookup.responses.responses.contains_key("200") && lookup.responses.responses.contains_key("404"));
        let schemas = doc.components.as_ref().map(|c| &c.schemas).expect("schemas");
        assert!(schemas.contains_key("OutcomeUnknownBody") && schemas.contains_key("RequestView"));
    }
}

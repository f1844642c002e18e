//! The public REST API, `/api/v1`. Handlers only parse and validate input into a
//! `haven_state::Command` (or read the local state) and hand off; the state machine does
//! the real checks. Reads are served from this node's copy of the state; writes go through
//! the leader. Every error is `{"error": {code, message, field}}`.
//!
//! One module per resource family (`cluster`, `nodes`, `groups`, `resources`, `history`,
//! `vms`, `wizard`, `metrics`, `tokens`), beside the error answer (`errors`), the extractors
//! (`extract`), the OpenAPI document (`openapi`) and who may call what (`auth`: every
//! route's role in one table, the middleware, the audit of refused calls, the limits). A request for another node (the
//! leader, a VM's owner) goes through [`crate::forward`].

pub(crate) mod auth;
mod cluster;
mod errors;
mod extract;
mod groups;
mod history;
pub mod limits;
mod metrics;
mod nodes;
mod openapi;
mod resources;
mod tokens;
mod vms;
mod wizard;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub use errors::ApiError;
pub(crate) use errors::root_cause;
pub use extract::{Body, Name, Params};
pub use openapi::openapi_document;

use crate::Agent;

/// The whole HTTP surface of an agent: the API, the internal routes between agents and
/// Raft's peer RPCs, behind [`errors::error_bodies`] so that every error, on every route and every
/// failure path, is the JSON error body.
pub fn app(agent: Arc<Agent>) -> Router {
    let routes = router(agent.clone())
        .merge(crate::peer::router(agent.clone()))
        .merge(crate::certs::router(agent.clone()))
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
    // Outermost, the port's rule: peer routes only with a node certificate, plain HTTP only
    // where allowed (`listener::gate`).
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(errors::error_bodies))
        .layer(axum::middleware::from_fn_with_state(agent, crate::listener::gate))
}

/// What a handler answers: its JSON body, or the error body.
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The public routes: `/api/v1` behind the request-id middleware, and `/metrics`; every
/// route behind [`auth::layer`] (its role in [`auth::RULES`]).
pub fn router(agent: Arc<Agent>) -> Router {
    let auth = || axum::middleware::from_fn_with_state(agent.clone(), auth::layer);
    let v1 = Router::new()
        .route("/openapi.json", get(|| async { Json(openapi_document()) }))
        .route("/cluster", get(cluster::cluster_status))
        .route("/cluster/init", post(cluster::cluster_init))
        .route("/cluster/join", post(cluster::cluster_join))
        .route("/cluster/join-tokens", get(cluster::list_join_tokens).post(cluster::create_join_token))
        .route("/cluster/join-tokens/{id}", axum::routing::delete(cluster::revoke_join_token))
        .route("/cluster/ca", get(cluster::ca_status))
        .route("/cluster/ca/rotate", post(cluster::ca_rotate))
        .route("/cluster/ca/retire", post(cluster::ca_retire))
        .route("/nodes", get(nodes::list_nodes))
        .route("/nodes/{name}", get(nodes::get_node).delete(nodes::remove_node))
        .route("/nodes/{name}/pause", post(nodes::pause_node))
        .route("/nodes/{name}/resume", post(nodes::resume_node))
        .route("/nodes/{name}/renew-certificate", post(nodes::renew_certificate))
        .route("/nodes/{name}/fence", put(nodes::set_fence).delete(nodes::remove_fence))
        .route("/groups", get(groups::list_groups).post(groups::create_group))
        .route("/groups/{name}", get(groups::get_group).patch(groups::update_group).delete(groups::delete_group))
        .route("/groups/{name}/move", post(groups::move_group))
        .route("/groups/{name}/online", post(groups::group_online))
        .route("/groups/{name}/offline", post(groups::group_offline))
        .route("/resources", get(resources::list_resources).post(resources::create_resource))
        .route(
            "/resources/{name}",
            get(resources::get_resource).patch(resources::update_resource).delete(resources::delete_resource),
        )
        .route("/resources/{name}/clear", post(resources::clear_resource))
        .route("/history", get(history::history))
        .route("/requests/{id}", get(crate::requests::get_request))
        .route("/vms", get(vms::list_vms).post(vms::create_vm))
        .route("/vms/make-ha", post(wizard::make_ha))
        .route("/vms/{name}", get(vms::get_vm))
        .route("/vms/{name}/guest-control", post(vms::guest_control))
        .route("/vms/{name}/console", get(vms::console))
        .route("/vms/{name}/definition", put(vms::edit_definition))
        .route("/tokens", get(tokens::list_tokens).post(tokens::create_token))
        .route("/tokens/{name}", axum::routing::delete(tokens::revoke_token))
        // Only on matched routes, which gives it the route's pattern; an unmatched path is
        // a 404 that reveals nothing the OpenAPI document does not.
        .route_layer(auth())
        .fallback(|method: Method, uri: Uri| async move {
            let path = haven_api::body::shorten(uri.path(), 120);
            ApiError::new(404, "not_found", format!("no API route {method} {path}; see /api/v1/openapi.json"))
        })
        .layer(axum::middleware::from_fn_with_state(agent.clone(), crate::requests::layer));
    Router::new()
        .nest(haven_api::API_PREFIX, v1)
        .route("/metrics", get(metrics::metrics).route_layer(auth()))
        .with_state(agent)
}

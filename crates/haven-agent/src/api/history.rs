//! `GET /api/v1/history`: the cluster's recorded events, filtered by group, resource or node.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_state::Event;
use serde::Deserialize;

use super::cluster::require_cluster;
use super::{ApiResult, Params};
use crate::Agent;

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct HistoryFilter {
    group: Option<String>,
    resource: Option<String>,
    node: Option<String>,
    /// Most recent events to return. Default 100.
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/history", tag = "history", params(HistoryFilter), responses((status = 200, body = [Event])))]
pub(super) async fn history(
    AxState(agent): AxState<Arc<Agent>>,
    Params(f): Params<HistoryFilter>,
) -> ApiResult<Vec<Event>> {
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

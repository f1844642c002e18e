//! `GET /metrics`: a few gauges of this node in the Prometheus text format.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::response::IntoResponse;

use crate::Agent;

/// Prometheus text format.
pub(super) async fn metrics(AxState(agent): AxState<Arc<Agent>>) -> impl IntoResponse {
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

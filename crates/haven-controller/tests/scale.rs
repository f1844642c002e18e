//! The controller's tick with 8,000 online groups of 3 resources each on 3 nodes (the
//! largest cluster the design targets, on fewer nodes): a steady state decides nothing, and
//! the tick's time is printed as `scale_decide_ms groups=<G> resources=<R> value=<ms>` (run
//! with `cargo test -p haven-controller --release --test scale -- --nocapture`; a debug
//! build is slower; `HAVEN_DECIDE_RUNS=100` times more ticks, e.g. under `perf record`).
//! Before group membership was indexed the tick was O(groups × resources).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use haven_controller::{Observations, Timing, decide};
use haven_model::ResourceState;
use haven_state::{Command, Request, State};

const GROUPS: usize = 8_000;
const PER_GROUP: usize = 3;
const NODES: u64 = 3;

fn apply(state: &mut State, command: Command) {
    if let Err(e) = state.apply(&Request::new(1, "test", command)) {
        panic!("setup refused: {e}");
    }
}

fn steady_state() -> State {
    let mut state = State::default();
    apply(&mut state, Command::InitCluster { name: "scale".into(), node: haven_scenario::node(1, "node-1") });
    for id in 2..=NODES {
        apply(&mut state, Command::AddNode { node: haven_scenario::node(id, &format!("node-{id}")) });
    }
    for g in 0..GROUPS {
        let group = format!("group-{g:05}");
        let owner = format!("node-{}", 1 + g as u64 % NODES);
        let spec = serde_json::from_value(serde_json::json!({
            "name": group, "online": true, "preferred_owners": [owner]
        }))
        .expect("group spec");
        apply(&mut state, Command::CreateGroup { spec });
        apply(
            &mut state,
            Command::PlaceGroup {
                name: group.clone(),
                node: Some(owner.clone()),
                reason: "test".into(),
                failover: false,
            },
        );
        for r in 0..PER_GROUP {
            let name = format!("{group}-r{r}");
            let depends_on: Vec<String> = if r == 0 { vec![] } else { vec![format!("{group}-r{}", r - 1)] };
            let spec = serde_json::from_value(serde_json::json!({
                "name": name, "group": group, "type": "process",
                "params": { "argv": ["sleep", "infinity"] }, "depends_on": depends_on
            }))
            .expect("resource spec");
            apply(&mut state, Command::CreateResource { spec });
            apply(
                &mut state,
                Command::ReportResource {
                    node: owner.clone(),
                    resource: name,
                    state: ResourceState::Online,
                    reason: None,
                    failure: false,
                },
            );
        }
    }
    state
}

#[test]
fn a_steady_state_of_8000_groups_decides_nothing() {
    let state = steady_state();
    assert_eq!(state.resources.len(), GROUPS * PER_GROUP);
    assert_eq!(state.group_state("group-07999"), "online");
    let now = 1_000_000;
    let heartbeats: BTreeMap<String, u64> = (1..=NODES).map(|id| (format!("node-{id}"), now)).collect();
    let obs = Observations { now, leader_since: 1, last_heartbeat: &heartbeats };
    let timing = Timing::new(3_000, 1_000);
    let mut times = Vec::new();
    let runs: usize = std::env::var("HAVEN_DECIDE_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for _ in 0..runs.clamp(1, 1000) {
        let started = Instant::now();
        let decisions = decide(&state, &obs, &timing);
        times.push(started.elapsed());
        assert!(decisions.is_empty(), "a steady state decided {decisions:?}");
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    println!(
        "scale_decide_ms groups={GROUPS} resources={} value={:.2}",
        GROUPS * PER_GROUP,
        median.as_secs_f64() * 1e3
    );
}

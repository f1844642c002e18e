//! Lab: every agent is stopped gracefully (SIGTERM) and started again. The configuration an
//! operator made (nodes, groups and resources with non-default properties and a dependency)
//! reads back identical, minus runtime status, and the groups come back online.

mod common;

use common::{Lab, alive, pid_in};
use haven_api::specs;
use haven_model::{
    Dur, Failback, GroupSpec, HealthCheck, Priority, ProcessParams, ResourceKind, ResourceProps, ResourceSpec,
    RestartAction,
};
use serde_json::{Value, json};

/// Runtime fields: where things are and how they are doing, not what the operator set.
const NODE_RUNTIME: &[&str] = &["liveness", "since", "status", "leader", "groups"];
const GROUP_RUNTIME: &[&str] = &["owner", "generation", "failovers", "failed_reason", "state"];
const RESOURCE_RUNTIME: &[&str] = &["status"];

/// `haven -o json node|group|resource list` from node `i`, minus runtime fields.
async fn configuration(lab: &Lab, i: usize) -> Value {
    let mut out = serde_json::Map::new();
    for (what, runtime) in [("node", NODE_RUNTIME), ("group", GROUP_RUNTIME), ("resource", RESOURCE_RUNTIME)] {
        let mut list = lab.cli_json(i, &[what, "list"]).await;
        let items = list.as_array_mut().unwrap_or_else(|| panic!("`{what} list` did not print a JSON array"));
        for item in items.iter_mut() {
            let obj = item.as_object_mut().expect("an object per item");
            for field in runtime {
                assert!(obj.remove(*field).is_some(), "`{what} list` has no field {field:?}: {obj:?}");
            }
        }
        out.insert(what.to_string(), list);
    }
    Value::Object(out)
}

/// Both groups online, each resource reported online by its group's owner, and its
/// process alive on that owner. Returns the owners.
async fn all_online(lab: &Lab, i: usize) -> Option<(String, String)> {
    let web = lab.online_on(i, "web").await?;
    let batch = lab.online_on(i, "batch").await?;
    for (res, owner) in [("db", &web), ("app", &web), ("job", &batch)] {
        let pid = pid_in(&lab.node(lab.index_of(owner)).run_dir(res))?;
        if !alive(pid) {
            return None;
        }
    }
    Some((web, batch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_survives_a_full_restart() {
    let mut lab = Lab::start(3).await;
    let c = lab.client(0).clone();
    let groups = [
        GroupSpec {
            preferred_owners: vec!["node2".into(), "node3".into()],
            failover_threshold: Some(1),
            failover_period: Dur::from_secs(3600),
            failback: Failback::Immediate,
            priority: Priority::High,
            ..GroupSpec::new("web")
        },
        GroupSpec {
            possible_owners: vec!["node1".into(), "node3".into()],
            priority: Priority::Low,
            cpus: 1,
            memory_mib: 64,
            ..GroupSpec::new("batch")
        },
    ];
    let app_params = ProcessParams {
        check: Some(HealthCheck::Command { argv: vec!["true".into()], timeout: Dur::from_secs(2) }),
        ..specs::process_params(&["sh", "-c", "exec sleep infinity"])
    };
    let db_params = ProcessParams {
        env: [("MODE".to_string(), "lab".to_string())].into(),
        ..specs::process_params(&["sleep", "infinity"])
    };
    let resources = [
        ResourceSpec {
            props: ResourceProps {
                restart_threshold: 5,
                restart_delay: Dur::from_secs(1),
                looks_alive_interval: Dur::from_millis(300),
                ..ResourceProps::default()
            },
            ..specs::resource("db", "web", ResourceKind::Process, &db_params)
        },
        ResourceSpec {
            depends_on: vec!["db".into()],
            props: ResourceProps {
                restart_action: RestartAction::RestartNoFailover,
                restart_period: Dur::from_secs(600),
                is_alive_interval: Dur::from_secs(30),
                ..ResourceProps::default()
            },
            ..specs::resource("app", "web", ResourceKind::Process, &app_params)
        },
        ResourceSpec {
            props: ResourceProps { pending_timeout: Dur::from_secs(20), ..ResourceProps::default() },
            ..specs::process("job", "batch", &["sleep", "infinity"])
        },
    ];
    for g in &groups {
        c.create_group(g).await.unwrap_or_else(|e| panic!("creating group {g:?} failed: {e}"));
    }
    for r in &resources {
        c.create_resource(r).await.unwrap_or_else(|e| panic!("creating resource {r:?} failed: {e}"));
    }
    let (web, batch) = lab.wait_for("web and batch online", 20, async || all_online(&lab, 0).await).await;
    assert_eq!(web, "node2", "web starts on its first preferred owner");
    assert!(["node1", "node3"].contains(&batch.as_str()), "batch runs on {batch}, outside its possible owners");

    let before = configuration(&lab, 0).await;
    // The non-default values are really there (so the comparison below compares something).
    let app = c.resource("app").await.unwrap();
    assert_eq!(app.spec.depends_on, vec!["db".to_string()]);
    let web_json = &before["group"].as_array().unwrap().iter().find(|g| g["name"] == "web").unwrap().clone();
    assert_eq!(web_json["failover_threshold"], json!(1));
    assert_eq!(web_json["preferred_owners"], json!(["node2", "node3"]));

    let leftovers = lab.stop_nodes(&[0, 1, 2]);
    assert_eq!(leftovers, 0, "a graceful stop must stop every resource process before the agent exits");
    for res in ["db", "app", "job"] {
        for i in 0..3 {
            let dir = lab.node(i).run_dir(res);
            assert!(common::processes_in(&dir).is_empty(), "{res} still runs in {}", dir.display());
        }
    }

    for i in 0..3 {
        lab.spawn(i);
    }
    for i in 0..3 {
        lab.wait_answering(i).await;
    }
    lab.wait_until("all 3 nodes up, with a leader and a lease, on every node", 20, async || {
        for i in 0..3 {
            if !lab.sees_all_up(i, 3).await {
                return false;
            }
        }
        true
    })
    .await;
    for i in 0..3 {
        assert_eq!(configuration(&lab, i).await, before, "{} reads back another configuration", lab.name(i));
    }
    let (web_after, batch_after) =
        lab.wait_for("web and batch online again", 20, async || all_online(&lab, 0).await).await;
    assert_eq!(web_after, "node2", "web comes back on its first preferred owner");
    assert!(["node1", "node3"].contains(&batch_after.as_str()), "batch runs on {batch_after}");
}

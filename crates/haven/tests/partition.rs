//! Lab, network partition: each node in a network namespace of its own. The owner of a
//! group is cut off from the other two (its link goes down; its agent and resource keep
//! running). It must stop its resource (self-fence, at the end of its lease) before the
//! majority starts the group elsewhere, and the resource's own evidence must show no
//! overlap. Healed, it rejoins without starting a second copy. Run with the owner a follower
//! and with the owner the Raft leader (the majority must then elect a new one first). The
//! test talks to the agents as a remote operator must: over HTTPS, pinned to the cluster CA.

mod common;

use common::{Lab, alive, assert_no_overlap, group_preferring, lines_from, looks_alive, pid_in, processes_in, stints};
use haven_api::specs;
use haven_model::ResourceSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_owner_stops_before_the_majority_starts_its_group() {
    isolated_owner_stops_before_the_majority_starts_its_group(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_owner_stops_before_the_majority_starts_its_group() {
    isolated_owner_stops_before_the_majority_starts_its_group(true).await;
}

async fn isolated_owner_stops_before_the_majority_starts_its_group(owner_is_leader: bool) {
    let Some(lab) = Lab::start_netns(3).await else { return };
    let evidence = lab.dir().join("evidence");
    // On these addresses (not loopback) the agents take the API from other hosts over HTTPS
    // only: the lab's clients pin the cluster CA; plain HTTP is refused, naming the fix.
    let plain = haven_api::Client::new(&lab.node(0).addr).with_token(&lab.token);
    let e = plain.groups().await.expect_err("plain HTTP from another host");
    assert!(e.status() == Some(403) && e.to_string().contains("--ca-fingerprint"), "{e}");

    let leader = lab.leader_seen_by(0).await.expect("a leader");
    let a = (0..3).find(|i| (lab.node(*i).id == leader) == owner_is_leader).expect("a node of that kind");
    let a_name = lab.name(a).to_string();
    let a_id = lab.node(a).id;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    lab.create_evidence_group(survivors[0], &a_name, &evidence).await;
    let c = lab.client(survivors[0]).clone();
    // A bystander: group h on a survivor must keep running through all of it (losing the
    // leader's node must not make the others self-fence).
    let b_name = lab.name(survivors[1]).to_string();
    c.create_group(&group_preferring("h", &[&b_name])).await.unwrap();
    c.create_resource(&ResourceSpec { props: looks_alive(200), ..specs::process("q", "h", &["sleep", "infinity"]) })
        .await
        .unwrap();
    let run_a = lab.node(a).run_dir("r");
    lab.wait_until(&format!("g online on {a_name} and its evidence flowing, h online on {b_name}"), 20, async || {
        lab.online_on(survivors[0], "g").await.as_deref() == Some(a_name.as_str())
            && lines_from(&evidence, &run_a) >= 5
            && lab.online_on(survivors[0], "h").await.as_deref() == Some(b_name.as_str())
    })
    .await;
    let pid_q = pid_in(&lab.node(survivors[1]).run_dir("q")).expect("a pid file for q");
    let pid_a = pid_in(&run_a).expect("a pid file on the owner");
    assert!(alive(pid_a), "the resource process {pid_a} on {a_name} is not running");

    lab.isolate(a);

    let s = lab
        .wait_for("g online on a survivor, as both survivors see it, and writing evidence", 20, async || {
            let first = lab.online_on(survivors[0], "g").await?;
            let second = lab.online_on(survivors[1], "g").await?;
            if first != second || first == a_name {
                return None;
            }
            let run_s = lab.node(lab.index_of(&first)).run_dir("r");
            (lines_from(&evidence, &run_s) > 0).then_some(first)
        })
        .await;
    let si = lab.index_of(&s);
    let run_s = lab.node(si).run_dir("r");

    // The cut-off owner killed its copy (no lease), and its agent lives on.
    assert!(!alive(pid_a), "{a_name} still runs r (pid {pid_a}) although it is cut off");
    assert_eq!(processes_in(&run_a), Vec::<i32>::new(), "processes left in {a_name}'s run dir of r");
    assert!(lab.node(a).agent_alive(), "{a_name}'s agent should still run: it self-fences, it does not die");
    // The resource's own evidence: the old copy's last line before the new copy's first.
    let gap_ms = assert_no_overlap(&evidence);
    let copies = stints(&evidence);
    assert_eq!(copies.len(), 2, "one copy on {a_name}, then one on {s}: {copies:?}");
    assert_eq!((copies[0].dir.as_path(), copies[0].pid), (run_a.as_path(), pid_a));
    assert_eq!(copies[1].dir, run_s);
    println!("{a_name} stopped writing {gap_ms:.0} ms before {s} started");

    // The leader is on the majority side (it moved there if it was the cut-off node).
    for &v in &survivors {
        let l = lab.leader_seen_by(v).await.unwrap_or_else(|| panic!("{} sees no leader", lab.name(v)));
        assert_ne!(l, a_id, "{} still sees the cut-off {a_name} as leader", lab.name(v));
        assert!(survivors.iter().any(|i| lab.node(*i).id == l), "leader {l} is not a survivor");
    }
    assert!(alive(pid_q), "h's process on {b_name} (pid {pid_q}) died: the survivors self-fenced");
    assert_eq!(pid_in(&lab.node(survivors[1]).run_dir("q")), Some(pid_q), "h was restarted on {b_name}");
    let a_lines = lines_from(&evidence, &run_a);
    let pid_s = pid_in(&run_s).expect("a pid file on the new owner");
    lab.hold_for(&format!("{a_name}, still cut off, runs nothing"), 1.0, async || {
        if !processes_in(&run_a).is_empty() || lines_from(&evidence, &run_a) != a_lines {
            return Err(format!("r runs again on {a_name}"));
        }
        Ok(())
    })
    .await;

    // Healed: the old owner rejoins, catches up, and never starts a second copy (its stale
    // state still places g on it until it has caught up).
    lab.heal(a);
    let run_dirs: Vec<_> = (0..3).map(|i| lab.node(i).run_dir("r")).collect();
    // r's shell runs `date` and `sleep` in its run dir too: count run dirs, not processes.
    let only_one_r = || {
        let elsewhere: Vec<i32> = run_dirs.iter().filter(|d| **d != run_s).flat_map(|d| processes_in(d)).collect();
        if !elsewhere.is_empty() || !alive(pid_s) || lines_from(&evidence, &run_a) != a_lines {
            return Err(format!(
                "r should run only on {s} (pid {pid_s}, alive: {}); other copies: {elsewhere:?}",
                alive(pid_s)
            ));
        }
        Ok(())
    };
    lab.wait_until(&format!("{a_name} back: sees all up and g on {s}"), 20, async || {
        if let Err(why) = only_one_r() {
            panic!("while {a_name} rejoined: {why}\n{}", lab.logs_tail());
        }
        let caught_up = lab.group(a, "g").await.is_some_and(|g| g.group.owner.as_deref() == Some(s.as_str()));
        caught_up && lab.sees_all_up(a, 3).await && lab.sees_all_up(si, 3).await
    })
    .await;
    lab.hold_for(&format!("g stays on {s}, one copy of r (pid {pid_s})"), 3.0, async || {
        for view in [a, si] {
            let g = lab.group(view, "g").await.ok_or("cannot read g")?;
            if g.group.owner.as_deref() != Some(s.as_str()) {
                return Err(format!("{} sees g owned by {:?}", lab.name(view), g.group.owner));
            }
        }
        only_one_r()
    })
    .await;
    assert_no_overlap(&evidence);
    assert_eq!(stints(&evidence).len(), 2, "a third copy of r ran");
    assert!(alive(pid_q), "h's process on {b_name} (pid {pid_q}) died");
}

//! Lab: the leader's node dies whole (SIGKILL) after a series of acknowledged writes made
//! through a follower and through the leader; the survivors elect a new leader, accept
//! more writes, and hold every acknowledged write; the old leader comes back and catches up.

mod common;

use std::collections::BTreeSet;

use common::Lab;
use haven_api::GroupView;
use haven_model::GroupSpec;

const BEFORE: usize = 30;
const AFTER: usize = 10;

/// The group names node `i` holds, or `None` if it cannot answer.
async fn group_names(lab: &Lab, i: usize) -> Option<BTreeSet<String>> {
    Some(lab.groups(i).await?.into_iter().map(|g| g.group.spec.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_the_leader_dying_and_the_old_leader_catches_up() {
    let mut lab = Lab::start(3).await;
    let old_leader_id = lab.leader_seen_by(0).await.expect("a leader");
    let l = (0..3).find(|i| lab.node(*i).id == old_leader_id).expect("the leader is a lab node");
    let f = (0..3).find(|i| *i != l).expect("a follower");
    let term_before = lab.status(f).await.expect("status").term;

    let mut acked = BTreeSet::new();
    for k in 0..BEFORE {
        let via = if k % 2 == 0 { f } else { l };
        let name = format!("g{k}");
        let g = lab
            .client(via)
            .create_group(&GroupSpec::new(&name))
            .await
            .unwrap_or_else(|e| panic!("creating {name} through {} failed: {e}", lab.name(via)));
        assert_eq!(g.group.spec.name, name);
        acked.insert(name);
    }
    println!("{} writes acknowledged, through {} and the leader {}", acked.len(), lab.name(f), lab.name(l));

    lab.kill_node(l);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let new_leader_id = lab
        .wait_for("both survivors to agree on a new leader", 15, async || {
            let a = lab.leader_seen_by(survivors[0]).await?;
            let b = lab.leader_seen_by(survivors[1]).await?;
            (a == b && a != old_leader_id).then_some(a)
        })
        .await;
    assert!(
        survivors.iter().any(|i| lab.node(*i).id == new_leader_id),
        "the new leader {new_leader_id} is not a survivor"
    );
    for &i in &survivors {
        let st = lab.status(i).await.expect("status");
        assert!(st.term > term_before, "{} is still in term {} (was {term_before})", lab.name(i), st.term);
    }

    // Writes continue, through both survivors.
    for k in BEFORE..BEFORE + AFTER {
        let via = survivors[k % 2];
        let name = format!("g{k}");
        let g =
            lab.client(via).create_group(&GroupSpec::new(&name)).await.unwrap_or_else(|e| {
                panic!("creating {name} through {} after the leader died failed: {e}", lab.name(via))
            });
        assert_eq!(g.group.spec.name, name);
        acked.insert(name);
    }

    // Every acknowledged write is on both survivors, and nothing else.
    lab.wait_until(&format!("all {} acknowledged groups on both survivors", acked.len()), 10, async || {
        for &i in &survivors {
            if group_names(&lab, i).await.as_ref() != Some(&acked) {
                return false;
            }
        }
        true
    })
    .await;
    // The old leader's groups move to the survivors (groups without resources are online
    // wherever they are placed).
    let dead = lab.name(l).to_string();
    lab.wait_until(&format!("every group placed on a survivor, none on {dead}"), 15, async || {
        lab.groups(survivors[0])
            .await
            .is_some_and(|gs| gs.iter().all(|g| g.group.owner.as_ref().is_some_and(|o| *o != dead)))
    })
    .await;

    // The old leader comes back and catches up with everything, including what was
    // written while it was dead.
    lab.restart_node(l).await;
    lab.wait_until(
        &format!("{dead} to hold all {} groups and follow leader {new_leader_id}", acked.len()),
        20,
        async || {
            let follows = lab.leader_seen_by(l).await == Some(new_leader_id);
            follows && group_names(&lab, l).await.as_ref() == Some(&acked)
        },
    )
    .await;
    lab.wait_until(&format!("{dead} up again, as every node sees it"), 15, async || {
        for i in 0..3 {
            if !lab.sees_all_up(i, 3).await {
                return false;
            }
        }
        true
    })
    .await;
    let owners = |gs: Vec<GroupView>| gs.into_iter().map(|g| (g.group.spec.name, g.group.owner)).collect::<Vec<_>>();
    lab.wait_until(&format!("{dead} and the survivors to agree on where every group is"), 10, async || {
        let back = lab.groups(l).await.map(owners);
        back.is_some() && back == lab.groups(survivors[0]).await.map(owners)
    })
    .await;
}

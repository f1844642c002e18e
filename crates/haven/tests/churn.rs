//! Lab: operator churn. A few hundred random operator actions (create, move, pause, resume,
//! offline/online, delete and re-create of groups and resources), sent in random order to
//! random agents of a 3-node cluster, some of them concurrently. Once the operators stop
//! (every node resumed, every group online), the cluster must settle: every handoff
//! completes, every group runs once on its owner, and the commit rate falls back to idle.
//!
//! The seed is printed; `HAVEN_CHURN_SEED=N` replays the same action sequence (the
//! interleaving with the cluster's own timing still varies).

mod common;

use std::time::{Duration, Instant};

use common::Lab;
use haven_api::{ClientError, HistoryQuery, specs};
use haven_model::{GroupSpec, ResourceSpec, ResourceState};

/// A small xorshift generator: the test needs reproducible choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const GROUPS: usize = 8;
const ACTIONS: usize = 300;

/// One random operator action through agent `via`; refusals (409/404/422) are expected.
async fn act(lab: &Lab, rng: &mut Rng, via: usize) -> Result<(), ClientError> {
    let c = lab.client(via);
    let g = format!("c{}", rng.below(GROUPS));
    let node = lab.name(rng.below(3)).to_string();
    let r = format!("{g}-r{}", rng.below(2));
    match rng.below(11) {
        0 => {
            let owners: Vec<String> = (0..rng.below(3)).map(|_| lab.name(rng.below(3)).to_string()).collect();
            let mut owners_dedup = owners.clone();
            owners_dedup.dedup();
            c.create_group(&GroupSpec { preferred_owners: owners_dedup, ..GroupSpec::new(g) }).await?;
        }
        1 | 2 => {
            let spec =
                ResourceSpec { props: common::looks_alive(300), ..specs::process(&r, &g, &["sleep", "infinity"]) };
            c.create_resource(&spec).await?;
        }
        3..=5 => {
            c.move_group(&g, &node).await?;
        }
        6 => {
            c.set_node_paused(&node, true).await?;
        }
        7 => {
            c.set_node_paused(&node, false).await?;
        }
        8 => {
            c.set_group_online(&g, rng.below(2) == 0).await?;
        }
        9 => {
            c.delete_resource(&r).await?;
        }
        _ => {
            c.delete_group(&g).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_churn_settles() {
    let seed = std::env::var("HAVEN_CHURN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
    });
    eprintln!("churn seed {seed} (HAVEN_CHURN_SEED={seed} replays the action sequence)");
    let lab = Lab::start(3).await;
    lab.note(&format!("churn seed {seed}"));
    let mut rng = Rng(seed);

    // Three operators at once, each on its own stream and agent, with short pauses.
    let started = Instant::now();
    let mut streams: Vec<Rng> = (0..3).map(|i| Rng(seed.wrapping_mul(2 * i + 3) | 1)).collect();
    let mut done = 0;
    let mut refused = 0;
    while done < ACTIONS && started.elapsed() < Duration::from_secs(120) {
        let mut s0 = Rng(streams[0].next() | 1);
        let mut s1 = Rng(streams[1].next() | 1);
        let mut s2 = Rng(streams[2].next() | 1);
        let outs = tokio::join!(act(&lab, &mut s0, 0), act(&lab, &mut s1, 1), act(&lab, &mut s2, 2));
        for out in [outs.0, outs.1, outs.2] {
            done += 1;
            match out {
                Ok(()) => {}
                Err(ClientError::Api { status, .. }) if status < 500 => refused += 1,
                Err(e) => panic!("operator action failed for another reason than a refusal: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(60) as u64)).await;
    }
    eprintln!("{done} actions ({refused} refused) in {:.1}s", started.elapsed().as_secs_f64());

    // The operators stop: every node resumed, every group brought online.
    let c = lab.client(0);
    for i in 0..3 {
        c.set_node_paused(lab.name(i), false).await.expect("resume");
    }
    let groups = c.groups().await.expect("groups");
    for g in &groups {
        c.set_group_online(&g.group.spec.name, true).await.expect("online");
    }

    // Settled: no handoff left, every group with resources online on its owner.
    lab.wait_until("every group settled (no handoff, online on its owner)", 60, async || {
        let Some(groups) = lab.groups(0).await else { return false };
        for g in &groups {
            if g.group.handoff.is_some() || (g.group.owner.is_none() && !g.resources.is_empty()) {
                return false;
            }
            for r in &g.resources {
                let Some(view) = lab.resource(0, r).await else { return false };
                if view.status.state != ResourceState::Online || view.status.node != g.group.owner {
                    return false;
                }
            }
        }
        true
    })
    .await;

    // Idle: no more than a handful of commits in three seconds (status reports settle too).
    let before = lab.status(0).await.expect("status").applied_index;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = lab.status(0).await.expect("status").applied_index;
    if after - before > 3 {
        let groups = c.groups().await.unwrap_or_default();
        let history = c.history(&HistoryQuery::default().limit(40)).await.unwrap_or_default();
        eprintln!(
            "groups: {}\nlast events: {}",
            serde_json::to_string_pretty(&groups).unwrap_or_default(),
            serde_json::to_string_pretty(&history).unwrap_or_default()
        );
    }
    assert!(
        after - before <= 3,
        "the cluster kept committing after the churn stopped: {} entries in 3 s (seed {seed})\n{}",
        after - before,
        lab.logs_tail()
    );
}

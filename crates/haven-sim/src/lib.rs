//! `haven-sim`: a deterministic, seeded discrete-event simulation of a Haven cluster that
//! drives the real `haven_controller::decide`, the real `haven_state::State::apply` and
//! the real `haven_policy::restart_decision`, injects faults, and checks invariants after
//! every event (testing tier 2 in DESIGN.md).
//!
//! No tokio, no real time, no I/O beyond what the binary prints. A run is a function of
//! its seed and [`Options`]: the same seed replays the same run, event for event.
//!
//! # What is modelled
//!
//! - **Time**: true time in µs and an event queue. Each node has a clock with a fixed rate
//!   error within ±[`Profile::drift_ppm`] (default ±5000 ppm = ±0.5%) and its own wall-clock
//!   offset; a node's timers, lease deadlines and `now_ms()` use only its own clock.
//! - **Cluster DB** (`cluster_db`): one committed log and the `State` it yields. A leader
//!   exists only while it reaches a majority of voters; when it does not (crash,
//!   partition), a new one is elected after a random time in the election timeout range
//!   from among the nodes that can form a majority. A write (controller decision, status
//!   report) commits only if the leader reaches a majority at that instant. Every node
//!   applies the committed log to its *own* copy after a per-node replication delay, and
//!   only while it is reachable from the leader, so nodes act on stale state.
//! - **Lease protocol** (`sim`: the renewal messages and the grant): a node renews every
//!   `renew_interval` (waiting at most lease/2 for the reply); the leader answers only
//!   after a quorum round and records the renewal in its own clock. The node's side is
//!   the agent's own `haven_node::Lease`, driven with the node's local clock: the lease is
//!   `sent + lease × 0.99`, and the node may run only with a valid lease and once it has
//!   applied the leader's commit index at the grant.
//! - **Controller** (`sim`): on the leader every renew_interval/2 (its clock); on a new
//!   term it counts every lease as renewed at `leader_since` at least (it keeps the
//!   renewals it received itself, in any term; the agent's `haven_node::Leadership`):
//!   the latest contact with an earlier leader among a majority of nodes it reaches (each
//!   node keeps the agent's `haven_node::ContactLog` of the term and time of every
//!   leadership check it acknowledges and every renewal it receives as leader; a restart
//!   forgets them and counts as a contact), combined by the agent's
//!   `haven_node::contact::combine`, or its election if no majority is reachable;
//!   it commits a tick's decisions as one batch entry (`Command::Batch`, 1–5 ms; more
//!   entries only past the batch bounds), each decision applied on its own, so renewals
//!   and reports arrive during a tick's commit (the grants wait for it: the agent's
//!   `haven_node::GrantTable`). A decision the real log refuses but the state it was
//!   decided on accepts was overtaken (noted); one both refuse breaks the controller's
//!   contract.
//! - **LRM**: one `haven_node::GroupLrm` per group and node — the agent's own local
//!   resource manager, driven with the node's applied state, lease and clock. The
//!   simulator only makes its driver calls take time: start 50–500 ms (3 % fail, 1 % hang
//!   until the pending timeout cuts them), graceful stop 10–300 ms (2 % fail and are
//!   retried by the core), kill 1–20 ms, check 1–30 ms (finds an injected failure).
//!   Starts and checks in progress are abandoned when the core says so
//!   (`GroupLrm::interrupt`); status reports go through the agent's own
//!   `haven_node::ReportQueue` (order, duplicates dropped, retried unless superseded).
//! - **Faults** (`scenario`): message loss, slow network (one-way delay up to 1.4 s),
//!   partitions (random split, healed later), node crash and restart, leader crash, a
//!   slow disk on one node (applies up to 3 s late while renewals stay fast), resource
//!   failures, failed and hung starts, failed stops. A crashed node runs nothing; a partitioned node's
//!   resources keep running until its own lease logic stops them. A frozen agent
//!   (`FreezeAgent`: SIGSTOP, a hung read) does nothing and reaches nobody — everything it
//!   would do waits for the thaw — while its resources run on until its node guard, told
//!   every lease's end through the shared `haven_node::guard` (`deadline`, `Feed`), kills
//!   them at that deadline (the guard is modelled while the agent is frozen; otherwise the
//!   agent's own self-fencing acts at the same deadline).
//!
//! # What is abstracted, and why
//!
//! - Raft is a single committed log plus a leader: the properties the rest of Haven relies
//!   on (majority commit, no acknowledged write lost, a leader's linearizable read sees
//!   every committed entry) are assumed, not re-derived; openraft is tested by its own
//!   suite and `haven-raft`'s. Invariant 2 still checks the log never loses an entry.
//! - Quorum rounds and replication look at reachability only (no loss); single messages
//!   (renewals, replies, reports) can be lost or delayed.
//! - A deposed leader steps down when the next leader is elected; until then it cannot do
//!   anything anyway, since every grant and write needs a majority.
//! - Replies to status reports are not lost (a lost reply in the agent only causes a
//!   duplicate report).
//! - Drivers are durations, not processes: a resource runs from the moment its start
//!   *begins* until its stop *completes* (the strictest reading of "running").
//! - Capacity is generous, so placement never runs out of room (the liveness check then
//!   needs no bin packing). Operator actions, from their own random stream (`--no-moves`
//!   turns them off): `haven group move` (`MoveGroup`: a handoff when another node owns or
//!   last ran the group, which the simulated LRM releases as the agent's does) and pausing
//!   (draining) or resuming a node (at most a minority paused; all resumed when the quiet
//!   period starts). Failback windows are not generated.
//!
//! # The grant race (found by this simulator, fixed in `haven-agent`)
//!
//! The controller decides "node X is down, move its groups" from the heartbeats it has
//! seen, then commits `SetNodeLiveness(Down)` and `PlaceGroup` (then one write at a time,
//! now one batch entry). If the
//! leader's `grant` answered renewals meanwhile, X could get a fresh lease between the
//! decision and the `PlaceGroup` commit (e.g. right as a partition heals), apply a state
//! that still names it owner, and start the group while the new owner started it too
//! (seed 425, about one seed in 700). The rule is now `haven_node::grant`, which the agent
//! and this simulator both run: a renewal is recorded either before a tick reads the
//! heartbeats or after its decisions are committed, and a node the committed state marks
//! down gets no lease (its heartbeat is still recorded, so the controller marks it up).
//! The old behaviour is `GrantRule::Unguarded`, [`BrokenRule::UnguardedGrant`] here, to
//! prove the simulator catches it.
//!
//! # Invariants
//!
//! See [`invariants`]: never two nodes running one resource at the same instant; the
//! committed log never loses an acknowledged entry; after the quiet period every online
//! group not left failed by policy runs on exactly its committed owner. Replicas that
//! applied the whole log must equal the committed state (determinism of `apply`).

pub mod clock;
pub mod cluster_db;
pub mod invariants;
pub mod network;
pub mod node;
pub mod rng;
pub mod scenario;
mod sim;

use haven_node::TimingProfile;
pub use invariants::Violation;
pub use sim::fmt_time;

/// Lease and election timing: a `haven_node::TimingProfile` (the agent's profiles) and the
/// bound on the simulated clocks' drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    pub renew_ms: u64,
    pub lease_ms: u64,
    pub margin_ms: u64,
    /// When a follower stands for election after it last heard from the leader
    /// (`TimingProfile::stands_after_ms`: openraft's leader lease plus one election timeout).
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Bound on each node's clock-rate error, in parts per million.
    pub drift_ppm: u64,
}

impl Profile {
    /// The agent's default profile: renew 500 ms, lease 3 s, margin 1 s, election 1.0–1.2 s.
    pub const DEFAULT: Profile = Profile::of(TimingProfile::DEFAULT);
    /// The agent's aggressive profile: half of each.
    pub const AGGRESSIVE: Profile = Profile::of(TimingProfile::AGGRESSIVE);

    /// `p` with clocks drifting up to ±5000 ppm (±0.5 %, half the lease's 1 % allowance).
    pub const fn of(p: TimingProfile) -> Profile {
        let (election_min_ms, election_max_ms) = p.stands_after_ms();
        Profile {
            name: p.name,
            renew_ms: p.renew_ms,
            lease_ms: p.lease_ms,
            margin_ms: p.margin_ms,
            election_min_ms,
            election_max_ms,
            drift_ppm: 5000,
        }
    }

    pub fn by_name(name: &str) -> Option<Profile> {
        TimingProfile::by_name(name).map(Profile::of)
    }
}

/// A rule deliberately broken, to prove the simulator catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokenRule {
    /// The controller does not wait out the lease: it declares a node down after two
    /// missed renewals while nodes keep their full lease: the shipped
    /// `haven_controller::decide` runs with `Timing::with_wait(LeaseWait::TwoRenewals)`.
    SkipLeaseWait,
    /// Nodes count their lease from when the grant *arrived* instead of when the renewal
    /// was sent, so a slow reply stretches the lease past the leader's deadline: the shared
    /// `haven_node::Lease::renewed` is called with `LeaseRule::FromReceipt`.
    LeaseFromReceipt,
    /// The leader grants renewals while a controller tick is being committed, and to nodes
    /// the state marks down (the agent before the fix described in the crate docs): the
    /// shared `haven_node::GrantTable::grant` is called with `GrantRule::Unguarded`.
    UnguardedGrant,
    /// A new leader bounds its predecessors' leases by its *own* last contact with them
    /// instead of a majority's: the shared `haven_node::contact::combine` is called with
    /// `ContactRule::OwnOnly`. A leader that was cut off from the old one counts their
    /// leases as long over.
    OwnContactOnly,
    /// The LRM keeps resources running (and starts them) after the lease ended: no
    /// self-fencing (`haven_node::LrmRule::RunPastLease`).
    RunPastLease,
    /// The LRM starts a resource once it holds a lease, before it applied the state the
    /// leader had at the grant (`haven_node::LrmRule::StartBeforeCatchUp`).
    StartBeforeCatchUp,
    /// The target of a handoff starts the group as soon as the handoff is committed,
    /// before the old owner released it (`haven_node::LrmRule::StartBeforeRelease`).
    StartBeforeRelease,
    /// A provisional grant (made while a controller tick commits) keeps the node's old
    /// catch-up gate even after its lease lapsed (`haven_node::LeaseRule::ProvisionalIgnoresLapse`).
    ProvisionalIgnoresLapse,
    /// The agent tells its node guard the leader's deadline (the renewal's sending plus the
    /// whole lease and the margin) instead of its own lease end: the shared
    /// `haven_node::guard::deadline` is called with `GuardRule::LeaderDeadline`. A frozen
    /// agent's resources then outlive the moment the survivors may start them.
    GuardAtLeaderDeadline,
}

impl BrokenRule {
    /// Every rule with its `--broken` name.
    pub const ALL: [(&'static str, BrokenRule); 9] = [
        ("skip-lease-wait", BrokenRule::SkipLeaseWait),
        ("lease-from-receipt", BrokenRule::LeaseFromReceipt),
        ("unguarded-grant", BrokenRule::UnguardedGrant),
        ("own-contact-only", BrokenRule::OwnContactOnly),
        ("run-past-lease", BrokenRule::RunPastLease),
        ("start-before-catch-up", BrokenRule::StartBeforeCatchUp),
        ("start-before-release", BrokenRule::StartBeforeRelease),
        ("provisional-ignores-lapse", BrokenRule::ProvisionalIgnoresLapse),
        ("guard-at-leader-deadline", BrokenRule::GuardAtLeaderDeadline),
    ];

    /// The `--broken` name.
    pub fn name(self) -> &'static str {
        BrokenRule::ALL.iter().find(|(_, r)| *r == self).map(|(n, _)| *n).unwrap_or("?")
    }

    pub fn by_name(name: &str) -> Option<BrokenRule> {
        BrokenRule::ALL.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Node count; default: 3–5 chosen by the seed.
    pub nodes: Option<usize>,
    pub profile: Profile,
    /// Record a readable trace of the run.
    pub trace: bool,
    /// Simulated time with faults, then with everything healed (ms).
    pub fault_ms: u64,
    pub quiet_ms: u64,
    pub broken: Option<BrokenRule>,
    /// Operator moves (`haven group move`, handoffs) and node pauses (drains) during the
    /// fault period, from their own random stream. On by default.
    pub operator_moves: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: None,
            profile: Profile::DEFAULT,
            trace: false,
            fault_ms: 60_000,
            quiet_ms: 30_000,
            broken: None,
            operator_moves: true,
        }
    }
}

/// Counters of one run (or summed over many).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub commits: u64,
    pub elections: u64,
    pub failovers: u64,
    pub starts: u64,
    /// Groups that policy left failed at the end (failover/restart thresholds).
    pub left_failed: usize,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.events += o.events;
        self.commits += o.commits;
        self.elections += o.elections;
        self.failovers += o.failovers;
        self.starts += o.starts;
        self.left_failed += o.left_failed;
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// The run's events with their times, if `Options::trace` was set.
    pub trace: Vec<String>,
    pub stats: Stats,
}

/// Runs one seed.
pub fn run_seed(seed: u64, opts: &Options) -> Outcome {
    sim::Sim::new(seed, opts).run(seed)
}

/// The command that replays `seed` with its trace.
pub fn replay_command(seed: u64, opts: &Options) -> String {
    let mut cmd = format!("cargo run -p haven-sim --release -- --seed {seed} --trace");
    if opts.profile.name != "default" {
        cmd.push_str(&format!(" --profile {}", opts.profile.name));
    }
    if let Some(n) = opts.nodes {
        cmd.push_str(&format!(" --nodes {n}"));
    }
    if !opts.operator_moves {
        cmd.push_str(" --no-moves");
    }
    if let Some(b) = opts.broken {
        cmd.push_str(&format!(" --broken {}", b.name()));
    }
    cmd
}

/// Runs `seeds` seeds from `start`, stopping at the first that breaks an invariant; that
/// one is run again with its trace. Returns the runs' summed stats and the failure.
pub fn run_many(start: u64, seeds: u64, opts: &Options) -> (Stats, Option<Outcome>) {
    let mut total = Stats::default();
    for seed in start..start + seeds {
        let out = run_seed(seed, opts);
        total.add(&out.stats);
        if !out.violations.is_empty() {
            let traced = run_seed(seed, &Options { trace: true, ..opts.clone() });
            return (total, Some(traced));
        }
    }
    (total, None)
}

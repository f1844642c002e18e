//! Scenario regression tests, in the style of Pacemaker's scheduler tests: every
//! `tests/scenarios/*.scn` file describes a cluster above a `---` line and the expected
//! decisions below it. See `tests/scenarios/README.md` for the format.
//!
//! The cluster is built only through real `haven_state` commands, so a scenario cannot
//! describe a state the cluster could never be in. Besides the expected text, every
//! controller scenario checks three invariants: each decision applies and changes the
//! state, deciding twice gives the same answer, and deciding again after applying the
//! decisions gives nothing (a fixed point).
//!
//! `UPDATE_EXPECT=1 cargo test -p haven-controller --test scenarios` rewrites the part
//! below `---` with what the code does now; review the diff before committing it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use haven_controller::{Decision, Observations, Timing, decide};
use haven_model::{
    Capacity, Dur, Failback, GroupSpec, Node, NodeLiveness, NodeRole, Priority, ResourceKind, ResourceProps,
    ResourceSpec, ResourceState, RestartAction,
};
use haven_policy::RestartDecision;
use haven_scenario::{Checked, Error, Line};
use haven_state::{Command, Request, State};

/// A parsed scenario: the state it builds, the observations, and the queries it asks.
struct Scenario {
    state: State,
    heartbeats: BTreeMap<String, u64>,
    now: u64,
    leader_since: u64,
    timing: Timing,
    queries: Vec<Query>,
    /// `refused` lines: what was refused and why, shown before the decisions.
    refusals: String,
    setup: String,
    expected: String,
}

enum Query {
    Place { group: String, exclude: Vec<String> },
    Failover { group: String },
    Restart { resource: String, failures: Option<usize> },
    Failback { group: String, hour: Option<u8> },
}

/// `at=T` on a setup line: when its command is applied (ms), 0 without one.
fn at_time(line: &Line) -> Result<u64, Error> {
    Ok(line.num("at")?.unwrap_or(0))
}

/// What a refused command's error starts with after the line's `file:line: `.
const REFUSED: &str = "state refused: ";

fn apply(state: &mut State, line: &Line, at: u64, command: Command) -> Result<(), Error> {
    state.apply(&Request::new(at, "scenario", command)).map(|_| ()).map_err(|e| line.err(format!("{REFUSED}{e}")))
}

fn parse_enum<T: serde::de::DeserializeOwned>(line: &Line, key: &str, value: &str) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| line.err(format!("{key}={value:?} is not valid")))
}

fn parse_dur(line: &Line, key: &str) -> Result<Option<Dur>, Error> {
    line.opt(key).map(|v| Dur::parse(v).map_err(|e| line.err(format!("{key}: {e}")))).transpose()
}

/// `online@a` → (Online, "a").
fn parse_status(line: &Line, value: &str) -> Result<(ResourceState, String), Error> {
    let (state, node) =
        value.split_once('@').ok_or_else(|| line.err(format!("{value:?} should look like failed@a")))?;
    Ok((parse_enum(line, "state", state)?, node.to_string()))
}

fn parse(file: &Path, text: &str) -> Result<Scenario, Error> {
    let mut sc = Scenario {
        state: State::default(),
        heartbeats: BTreeMap::new(),
        now: 0,
        leader_since: 0,
        timing: Timing::default(),
        queries: Vec::new(),
        refusals: String::new(),
        setup: String::new(),
        expected: String::new(),
    };
    let mut next_id = 1;
    let sections = haven_scenario::split(file, text, |line| directive(&mut sc, line, &mut next_id))?;
    sc.setup = sections.setup;
    sc.expected =
        sections.below.iter().map(|(_, l)| l.trim_end()).collect::<Vec<_>>().join("\n").trim_end().to_string();
    Ok(sc)
}

fn directive(sc: &mut Scenario, line: &Line, next_id: &mut u64) -> Result<(), Error> {
    let at = at_time(line)?;
    match line.word(0, "directive")? {
        "node" => {
            line.only_options(&["cpus", "mem", "since"])?;
            let name = line.word(1, "node name")?.to_string();
            let fixture = haven_scenario::node(*next_id, &name);
            let node = Node {
                role: if *next_id <= 5 { NodeRole::Voter } else { NodeRole::Learner },
                capacity: Capacity {
                    cpus: line.num("cpus")?.unwrap_or(fixture.capacity.cpus),
                    memory_mib: line.num("mem")?.unwrap_or(fixture.capacity.memory_mib),
                },
                ..fixture
            };
            let command = if sc.state.cluster.is_none() {
                Command::InitCluster { name: "scenario".into(), node }
            } else {
                Command::AddNode { node }
            };
            apply(&mut sc.state, line, 0, command)?;
            *next_id += 1;
            if line.flag("down") {
                let since = line.num("since")?.unwrap_or(0);
                let command = Command::SetNodeLiveness {
                    name: name.clone(),
                    liveness: NodeLiveness::Down,
                    reason: "setup".into(),
                };
                apply(&mut sc.state, line, since, command)?;
            }
            if line.flag("paused") {
                apply(&mut sc.state, line, 0, Command::SetNodePaused { name, paused: true })?;
            }
        }
        "group" => {
            line.only_options(&[
                "owner",
                "preferred",
                "possible",
                "failover_threshold",
                "failover_period",
                "failback",
                "priority",
                "cpus",
                "mem",
                "failed",
                "at",
            ])?;
            let name = line.word(1, "group name")?.to_string();
            let mut spec = GroupSpec::new(name.clone());
            spec.preferred_owners = line.list("preferred");
            spec.possible_owners = line.list("possible");
            spec.failover_threshold = line.num("failover_threshold")?;
            if let Some(d) = parse_dur(line, "failover_period")? {
                spec.failover_period = d;
            }
            spec.failback = match line.opt("failback") {
                None | Some("never") => Failback::Never,
                Some("immediate") => Failback::Immediate,
                Some(w) => {
                    let hours = w.split_once('-').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
                    let (start_hour, end_hour) =
                        hours.ok_or_else(|| line.err(format!("failback={w:?}: write never, immediate or 22-4")))?;
                    Failback::Window { start_hour, end_hour }
                }
            };
            if let Some(p) = line.opt("priority") {
                spec.priority = parse_enum::<Priority>(line, "priority", p)?;
            }
            spec.cpus = line.num("cpus")?.unwrap_or(0);
            spec.memory_mib = line.num("mem")?.unwrap_or(0);
            apply(&mut sc.state, line, at, Command::CreateGroup { spec })?;
            if let Some(owner) = line.opt("owner") {
                let command = Command::PlaceGroup {
                    name: name.clone(),
                    node: Some(owner.to_string()),
                    reason: "setup".into(),
                    failover: false,
                };
                apply(&mut sc.state, line, at, command)?;
            }
            if line.flag("offline") {
                apply(&mut sc.state, line, at, Command::SetGroupOnline { name: name.clone(), online: false })?;
            }
            if let Some(reason) = line.opt("failed") {
                apply(&mut sc.state, line, at, Command::FailGroup { name, reason: reason.to_string() })?;
            }
        }
        "resource" => {
            line.only_options(&[
                "group",
                "action",
                "restart_threshold",
                "restart_period",
                "state",
                "failures",
                "reason",
                "at",
            ])?;
            let name = line.word(1, "resource name")?.to_string();
            let mut props = ResourceProps::default();
            if let Some(a) = line.opt("action") {
                props.restart_action = parse_enum::<RestartAction>(line, "action", a)?;
            }
            if let Some(t) = line.num("restart_threshold")? {
                props.restart_threshold = t;
            }
            if let Some(d) = parse_dur(line, "restart_period")? {
                props.restart_period = d;
            }
            let spec = ResourceSpec {
                name: name.clone(),
                group: line.opt("group").ok_or_else(|| line.err("missing group="))?.to_string(),
                kind: ResourceKind::Process,
                params: serde_json::json!({"argv": ["sleep", "infinity"]}),
                props,
                depends_on: Vec::new(),
            };
            apply(&mut sc.state, line, at, Command::CreateResource { spec })?;
            if let Some(status) = line.opt("state") {
                let (state, node) = parse_status(line, status)?;
                let failures: usize = line.num("failures")?.unwrap_or(0);
                let reason = line.opt("reason").map(str::to_string);
                for i in 0..failures.max(1) {
                    let command = Command::ReportResource {
                        node: node.clone(),
                        resource: name.clone(),
                        state,
                        reason: reason.clone(),
                        failure: i < failures,
                    };
                    apply(&mut sc.state, line, at, command)?;
                }
            }
        }
        "place" => {
            line.only_options(&["at", "reason"])?;
            let group = line.word(1, "group name")?.to_string();
            if line.word(2, "->")? != "->" {
                return Err(line.err("write `place GROUP -> NODE|none [failover] [at=T]`"));
            }
            let node = match line.word(3, "node name")? {
                "none" => None,
                n => Some(n.to_string()),
            };
            let reason = line.opt("reason").unwrap_or("setup").to_string();
            let command = Command::PlaceGroup { name: group, node, reason, failover: line.flag("failover") };
            apply(&mut sc.state, line, at, command)?;
        }
        "hand" => {
            line.only_options(&["at", "reason"])?;
            let usage = "write `hand off GROUP FROM -> TO [released] [reason=\"why\"] [at=T]`";
            if line.word(1, "off")? != "off" || line.word(4, "->")? != "->" {
                return Err(line.err(usage));
            }
            let name = line.word(2, "group name")?.to_string();
            let from = line.word(3, "node handed off from")?.to_string();
            let to = line.word(5, "node handed off to")?.to_string();
            let reason = line.opt("reason").unwrap_or("setup").to_string();
            let command = Command::HandOffGroup { name: name.clone(), from: from.clone(), to, reason };
            apply(&mut sc.state, line, at, command)?;
            if line.flag("released") {
                // The old owner stopped the group and let go, as a past move's did.
                let generation = sc.state.groups.get(&name).map_or(0, |g| g.generation);
                apply(&mut sc.state, line, at, Command::ReleaseGroup { node: from, group: name, generation })?;
            }
        }
        "release" => {
            line.only_options(&["at"])?;
            let group = line.word(1, "group name")?.to_string();
            let node = line.word(2, "node that released it")?.to_string();
            let generation = sc.state.groups.get(&group).map_or(0, |g| g.generation);
            apply(&mut sc.state, line, at, Command::ReleaseGroup { node, group, generation })?;
        }
        "refused" => {
            // `refused <directive>`: the state must refuse the directive's command and
            // change nothing; the refusal is shown above the decisions.
            let text = line.words[1..].join(" ");
            let inner = line.shifted(1);
            let before = sc.state.clone();
            let outcome = directive(sc, &inner, next_id);
            let prefix = format!("{}: {REFUSED}", line.at);
            match outcome {
                Ok(()) => return Err(line.err(format!("the state accepted `{text}`, which should be refused"))),
                Err(e) => {
                    let Some(why) = e.strip_prefix(&prefix) else { return Err(e) };
                    if sc.state != before {
                        return Err(line.err(format!("the refused `{text}` changed the state")));
                    }
                    writeln!(sc.refusals, "refused {text}: {why}").ok();
                }
            }
        }
        "report" => {
            line.only_options(&["reason", "at"])?;
            let resource = line.word(1, "resource name")?.to_string();
            let (state, node) = parse_status(line, line.word(2, "state@node")?)?;
            let reason = line.opt("reason").map(str::to_string);
            let command = Command::ReportResource { node, resource, state, reason, failure: line.flag("failure") };
            apply(&mut sc.state, line, at, command)?;
        }
        "fence" => {
            // fence NODE agent=fence_x | fence NODE requested | fence NODE ok | fence NODE failed [reason=".."]
            line.only_options(&["agent", "reason", "at"])?;
            let node = line.word(1, "node name")?.to_string();
            let command = match (line.opt("agent"), line.words.get(2).map(String::as_str)) {
                (Some(agent), None) => {
                    let config = haven_model::FenceConfig {
                        agent: agent.to_string(),
                        params: BTreeMap::new(),
                        action: haven_model::FenceAction::Off,
                        timeout: Dur::from_secs(60),
                        user: None,
                    };
                    Command::SetFence { node, config: Some(config) }
                }
                (None, Some("requested")) => Command::RequestFence { node, reason: "setup".into() },
                (None, Some("ok")) => Command::RecordFence { node, ok: true, message: "setup".into() },
                (None, Some("failed")) => {
                    let message = line.opt("reason").unwrap_or("setup").to_string();
                    Command::RecordFence { node, ok: false, message }
                }
                _ => return Err(line.err("write `fence NODE agent=PROG` or `fence NODE requested|ok|failed [at=T]`")),
            };
            apply(&mut sc.state, line, at, command)?;
        }
        "pause" | "resume" => {
            let name = line.word(1, "node name")?.to_string();
            let paused = line.words[0] == "pause";
            apply(&mut sc.state, line, at, Command::SetNodePaused { name, paused })?;
        }
        "down" | "up" => {
            line.only_options(&["at"])?;
            let name = line.word(1, "node name")?.to_string();
            let liveness = if line.words[0] == "down" { NodeLiveness::Down } else { NodeLiveness::Up };
            apply(&mut sc.state, line, at, Command::SetNodeLiveness { name, liveness, reason: "setup".into() })?;
        }
        "heartbeat" => {
            for (node, t) in &line.options {
                let t = t.parse().map_err(|_| line.err(format!("heartbeat {node}={t:?} is not a time in ms")))?;
                sc.heartbeats.insert(node.clone(), t);
            }
        }
        "now" => {
            line.only_options(&["leader_since"])?;
            let now = line.word(1, "time in ms")?;
            sc.now = now.parse().map_err(|_| line.err(format!("now {now:?} is not a time in ms")))?;
            sc.leader_since = line.num("leader_since")?.unwrap_or(0);
        }
        "timing" => {
            line.only_options(&["lease", "margin"])?;
            sc.timing.lease_ms = line.num("lease")?.unwrap_or(sc.timing.lease_ms);
            sc.timing.margin_ms = line.num("margin")?.unwrap_or(sc.timing.margin_ms);
        }
        "?" => {
            let group = line.word(2, "group or resource name")?.to_string();
            let query = match line.word(1, "query")? {
                "place" => Query::Place { group, exclude: line.list("exclude") },
                "failover" => Query::Failover { group },
                "restart" => Query::Restart { resource: group, failures: line.num("failures")? },
                "failback" => Query::Failback { group, hour: line.num("hour")? },
                q => return Err(line.err(format!("unknown query {q:?}; ask place, failover, restart or failback"))),
            };
            sc.queries.push(query);
        }
        d => {
            return Err(line.err(format!(
                "unknown directive {d:?}; use node, group, resource, place, hand off, release, refused, report, pause, resume, down, up, heartbeat, now, timing or ?"
            )));
        }
    }
    Ok(())
}

/// The policy's answers to the scenario's `?` queries.
fn answer(sc: &Scenario) -> Result<String, Error> {
    let mut out = String::new();
    for q in &sc.queries {
        match q {
            Query::Place { group, exclude } => {
                let exclude: Vec<&str> = exclude.iter().map(String::as_str).collect();
                let p = haven_policy::place(&sc.state, group, &exclude);
                match (&p.node, &p.chosen_because) {
                    (Some(n), Some(b)) => writeln!(out, "place {group} -> {n}: {b}"),
                    _ => writeln!(out, "place {group} -> nowhere"),
                }
                .ok();
                if !p.candidates.is_empty() {
                    writeln!(out, "  candidates: {}", p.candidates.join(", ")).ok();
                }
                for e in &p.reasons {
                    writeln!(out, "  {}: {}", e.node, e.why).ok();
                }
            }
            Query::Failover { group } => {
                let g = sc.state.groups.get(group).ok_or(format!("? failover: no group {group:?}"))?;
                match haven_policy::failover_allowed(g, sc.state.nodes.len(), sc.now) {
                    Ok(()) => writeln!(out, "failover {group}: allowed"),
                    Err(e) => writeln!(out, "failover {group}: refused: {e}"),
                }
                .ok();
            }
            Query::Restart { resource, failures } => {
                let r = sc.state.resources.get(resource).ok_or(format!("? restart: no resource {resource:?}"))?;
                let props = &r.spec.props;
                let count =
                    failures.unwrap_or_else(|| haven_policy::failures_in_period(props, &r.status.failures, sc.now));
                match haven_policy::restart_decision(props, count) {
                    RestartDecision::Restart { delay_ms } => {
                        writeln!(out, "restart {resource} after {count} failures: restart in {delay_ms}ms")
                    }
                    RestartDecision::GiveUp { reason } => writeln!(out, "restart {resource}: give up: {reason}"),
                }
                .ok();
            }
            Query::Failback { group, hour } => {
                let hour = hour.unwrap_or_else(|| u8::try_from((sc.now / 3_600_000) % 24).unwrap_or(0));
                match haven_policy::should_fail_back(&sc.state, group, hour) {
                    Some(n) => writeln!(out, "failback {group} at {hour:02}h -> {n}"),
                    None => writeln!(out, "failback {group} at {hour:02}h: stay"),
                }
                .ok();
            }
        }
    }
    Ok(out)
}

fn render(decisions: &[Decision]) -> String {
    if decisions.is_empty() {
        return "(nothing to do)\n".to_string();
    }
    decisions.iter().map(|d| format!("{d}\n")).collect()
}

/// Runs the controller and checks its invariants; returns the rendered decisions.
fn run_controller(sc: &Scenario) -> Result<String, Error> {
    let obs = Observations { now: sc.now, leader_since: sc.leader_since, last_heartbeat: &sc.heartbeats };
    let decisions = decide(&sc.state, &obs, &sc.timing);
    if decide(&sc.state, &obs, &sc.timing) != decisions {
        return Err("deciding twice on the same input gave different answers".into());
    }
    let mut after = sc.state.clone();
    for d in &decisions {
        if d.why.is_empty() {
            return Err(format!("decision without a reason: {d}"));
        }
        let before = after.next_event_id;
        after
            .apply(&Request::new(sc.now, "controller", d.command.clone()))
            .map_err(|e| format!("the state refuses decision `{d}`: {e}"))?;
        if after.next_event_id == before {
            return Err(format!("decision `{d}` changes nothing"));
        }
    }
    let again = decide(&after, &obs, &sc.timing);
    if !again.is_empty() {
        return Err(format!("not a fixed point: deciding again after applying gives\n{}", render(&again)));
    }
    Ok(render(&decisions))
}

#[test]
fn scenarios() {
    let files = haven_scenario::files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios"));
    haven_scenario::check(&files, |file, text| {
        let sc = parse(file, text)?;
        let name = haven_scenario::file_name(file);
        let actual = if sc.queries.is_empty() { run_controller(&sc) } else { answer(&sc) }
            .map_err(|e| format!("{name}: {e}"))?;
        let actual = format!("{}{actual}", sc.refusals);
        Ok(Checked {
            updated: format!("{}---\n{actual}", sc.setup),
            actual: actual.trim_end().to_string(),
            expected: sc.expected,
        })
    });
}

//! Node scenario tests: one node's local resource manager (`haven_node::lrm::GroupLrm`),
//! lease (`Lease`) and report queue (`ReportQueue`) driven through a script of events, the
//! way the agent's `lrm.rs` and the simulator drive them. Every `tests/scenarios/*.scn` file
//! describes the cluster above a `---` line and, below it, a script of timed events, each
//! followed by what the node did (`> ` lines). See `tests/scenarios/README.md`.
//!
//! The node's state is built and changed only through real `haven_state` commands, applied
//! in file order (a command the state refuses is an error with `file:line`), so a scenario
//! cannot describe a state the cluster could never be in. The runner drives the core as the
//! agent does: after every event it asks whether the call in progress must be abandoned, or
//! else for the next step; it refuses an event later than the node's next wake-up (the
//! node would have acted first); and under the safe rule it checks on every step that
//! nothing starts without a lease, the caught-up index and the group placed here, that a
//! stop is a kill exactly when the lease ended, and that a group is released only with
//! nothing running. Each scenario runs twice and must give the same transcript.
//!
//! `UPDATE_EXPECT=1 cargo test -p haven-node --test scenarios` rewrites the `> ` lines with
//! what the code does now; review the diff before committing it.

use std::fmt::Write as _;
use std::path::Path;

use haven_model::{
    Dur, GroupSpec, NodeLiveness, ResourceKind, ResourceProps, ResourceSpec, ResourceState, ResourceUpdate,
    RestartAction,
};
use haven_node::lrm::{Depth, GroupLrm, Health, Interrupt, LrmRule, Op, Outcome, Step, View};
use haven_node::{Lease, LeaseRule, Micros, Pushed, ReportQueue, TimingProfile};
use haven_scenario::{Checked, Error, Line};
use haven_state::{Command, Request, State};

/// `0`, `250us`, `200ms`, `1.5s`, `3s`, `2m` as microseconds.
fn parse_time(line: &Line, text: &str) -> Result<Micros, Error> {
    let bad = || line.err(format!("{text:?} is not a time; write it like 0, 200ms, 1.5s or 2m"));
    if text == "0" {
        return Ok(0);
    }
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map(|i| text.split_at(i)).ok_or_else(bad)?;
    let scale: f64 = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let us = (value * scale).round();
    if us > 1e15 {
        return Err(line.err(format!("{text:?} is too far in the future; scenarios run for minutes, not years")));
    }
    // In range (checked above), so the conversion is exact enough for a test clock.
    Ok(us as Micros)
}

/// A time as scenarios write it: `0s`, `250us`, `200ms`, `2.97s`.
fn fmt_time(t: Micros) -> String {
    if t == 0 {
        "0s".to_string()
    } else if !t.is_multiple_of(1000) {
        format!("{t}us")
    } else if t < 1_000_000 {
        format!("{}ms", t / 1000)
    } else {
        let whole = t / 1_000_000;
        let frac = format!("{:06}", t % 1_000_000);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() { format!("{whole}s") } else { format!("{whole}.{frac}s") }
    }
}

fn parse_dur(line: &Line, key: &str) -> Result<Option<Dur>, Error> {
    line.opt(key).map(|v| Dur::parse(v).map_err(|e| line.err(format!("{key}: {e}")))).transpose()
}

fn parse_state(line: &Line, value: &str) -> Result<ResourceState, Error> {
    Ok(match value {
        "offline" => ResourceState::Offline,
        "starting" => ResourceState::Starting,
        "online" => ResourceState::Online,
        "stopping" => ResourceState::Stopping,
        "failed" => ResourceState::Failed,
        _ => {
            return Err(line.err(format!(
                "{value:?} is not a resource state; write offline, starting, online, stopping or failed"
            )));
        }
    })
}

fn state_word(s: ResourceState) -> &'static str {
    match s {
        ResourceState::Offline => "offline",
        ResourceState::Starting => "starting",
        ResourceState::Online => "online",
        ResourceState::Stopping => "stopping",
        ResourceState::Failed => "failed",
    }
}

fn parse_rule(line: &Line, value: &str) -> Result<LrmRule, Error> {
    Ok(match value {
        "safe" => LrmRule::Safe,
        "run-past-lease" => LrmRule::RunPastLease,
        "start-before-catch-up" => LrmRule::StartBeforeCatchUp,
        "start-before-release" => LrmRule::StartBeforeRelease,
        _ => {
            return Err(line.err(format!(
                "{value:?} is not a rule; write safe, run-past-lease, start-before-catch-up or start-before-release"
            )));
        }
    })
}

/// The resource properties a `resource` or `update` line may set, by their scenario name.
const PROPS: [(&str, &str); 7] = [
    ("action", "restart_action"),
    ("restart_threshold", "restart_threshold"),
    ("restart_period", "restart_period"),
    ("restart_delay", "restart_delay"),
    ("pending_timeout", "pending_timeout"),
    ("looks_alive", "looks_alive_interval"),
    ("is_alive", "is_alive_interval"),
];

fn props_of(line: &Line) -> Result<ResourceProps, Error> {
    let mut p = ResourceProps::default();
    if let Some(a) = line.opt("action") {
        p.restart_action = match a {
            "restart-and-failover" => RestartAction::RestartAndFailover,
            "restart-no-failover" => RestartAction::RestartNoFailover,
            "do-not-restart" => RestartAction::DoNotRestart,
            _ => {
                return Err(line.err(format!(
                    "action={a:?} is not valid; write restart-and-failover, restart-no-failover or do-not-restart"
                )));
            }
        };
    }
    if let Some(t) = line.num("restart_threshold")? {
        p.restart_threshold = t;
    }
    for (key, slot) in [
        ("restart_period", &mut p.restart_period),
        ("restart_delay", &mut p.restart_delay),
        ("pending_timeout", &mut p.pending_timeout),
        ("looks_alive", &mut p.looks_alive_interval),
        ("is_alive", &mut p.is_alive_interval),
    ] {
        if let Some(d) = parse_dur(line, key)? {
            *slot = d;
        }
    }
    Ok(p)
}

fn group_arrow(line: &Line, usage: &str) -> Result<(String, String), Error> {
    let name = line.word(1, "name")?.to_string();
    if line.words.get(2).map(String::as_str) != Some("->") {
        return Err(line.err(format!("write `{usage}`")));
    }
    let to = line.word(3, "target")?.to_string();
    Ok((name, to))
}

/// The state commands a setup line (or the rest of an `apply` / `queue push` line) stands
/// for, in the order they are applied. `state` is the state they will be applied to.
fn commands(state: &State, line: &Line) -> Result<Vec<Command>, Error> {
    let name = || line.word(1, "name").map(str::to_string);
    let cmds = match line.word(0, "command")? {
        "node" => {
            line.only(1, &["down", "paused"], &[])?;
            let name = name()?;
            let node = haven_scenario::node(state.nodes.len() as u64 + 1, &name);
            let mut v = vec![if state.cluster.is_none() {
                Command::InitCluster { name: "scenario".into(), node }
            } else {
                Command::AddNode { node }
            }];
            if line.flag("down") {
                v.push(Command::SetNodeLiveness {
                    name: name.clone(),
                    liveness: NodeLiveness::Down,
                    reason: "setup".into(),
                });
            }
            if line.flag("paused") {
                v.push(Command::SetNodePaused { name, paused: true });
            }
            v
        }
        "group" => {
            line.only(1, &["offline"], &["owner", "moving_to", "failed"])?;
            let name = name()?;
            let mut v = vec![Command::CreateGroup { spec: GroupSpec::new(name.clone()) }];
            if let Some(n) = line.opt("owner") {
                let node = Some(n.to_string());
                v.push(Command::PlaceGroup { name: name.clone(), node, reason: "setup".into(), failover: false });
            }
            if let Some(to) = line.opt("moving_to") {
                // A move away from the owner is a handoff: it waits for the owner's release.
                let from = line.opt("owner").ok_or_else(|| line.err("moving_to= needs owner= (the node it leaves)"))?;
                v.push(Command::HandOffGroup {
                    name: name.clone(),
                    from: from.to_string(),
                    to: to.to_string(),
                    reason: "setup move".into(),
                });
            }
            if line.flag("offline") {
                v.push(Command::SetGroupOnline { name: name.clone(), online: false });
            }
            if let Some(reason) = line.opt("failed") {
                v.push(Command::FailGroup { name, reason: reason.to_string() });
            }
            v
        }
        "resource" => {
            let mut known: Vec<&str> = vec!["group", "depends"];
            known.extend(PROPS.iter().map(|(k, _)| *k));
            line.only(1, &[], &known)?;
            let spec = ResourceSpec {
                name: name()?,
                group: line.opt("group").ok_or_else(|| line.err("missing group="))?.to_string(),
                kind: ResourceKind::Process,
                params: serde_json::json!({"argv": ["sleep", "infinity"]}),
                props: props_of(line)?,
                depends_on: line.list("depends"),
            };
            vec![Command::CreateResource { spec }]
        }
        "update" => {
            let mut known: Vec<&str> = vec!["depends"];
            known.extend(PROPS.iter().map(|(k, _)| *k));
            line.only(1, &[], &known)?;
            let mut props = serde_json::Map::new();
            for (key, field) in PROPS {
                if let Some(v) = line.opt(key) {
                    let value = match key {
                        "restart_threshold" => serde_json::json!(line.num::<u32>(key)?),
                        _ => serde_json::json!(v),
                    };
                    props.insert(field.to_string(), value);
                }
            }
            let update = ResourceUpdate {
                params: None,
                props: (!props.is_empty()).then_some(props),
                depends_on: line.opt("depends").map(|_| line.list("depends")),
            };
            vec![Command::UpdateResource { name: name()?, update }]
        }
        "move" => {
            line.only(3, &[], &[])?;
            let (name, node) = group_arrow(line, "move GROUP -> NODE")?;
            vec![Command::MoveGroup { name, node }]
        }
        "place" => {
            line.only(3, &["failover"], &["reason"])?;
            let (name, to) = group_arrow(line, "place GROUP -> NODE|none [failover]")?;
            let node = (to != "none").then_some(to);
            let reason = line.opt("reason").unwrap_or("scenario").to_string();
            vec![Command::PlaceGroup { name, node, reason, failover: line.flag("failover") }]
        }
        "release" => {
            line.only(1, &[], &["from", "generation"])?;
            let group = name()?;
            let node = line.opt("from").ok_or_else(|| line.err("missing from=NODE (the node that releases)"))?;
            let generation = match line.num("generation")? {
                Some(g) => g,
                None => state.groups.get(&group).map(|g| g.generation).ok_or_else(|| {
                    line.err(format!("no group {group:?} to release; give generation= or create the group first"))
                })?,
            };
            vec![Command::ReleaseGroup { node: node.to_string(), group, generation }]
        }
        "offline" | "online" => {
            line.only(1, &[], &[])?;
            vec![Command::SetGroupOnline { name: name()?, online: line.words[0] == "online" }]
        }
        "fail" => {
            line.only(1, &[], &["reason"])?;
            let reason = line.opt("reason").unwrap_or("scenario").to_string();
            vec![Command::FailGroup { name: name()?, reason }]
        }
        "delete-resource" => {
            line.only(1, &[], &[])?;
            vec![Command::DeleteResource { name: name()? }]
        }
        "delete-group" => {
            line.only(1, &[], &[])?;
            vec![Command::DeleteGroup { name: name()? }]
        }
        "move-resource" => {
            line.only(3, &[], &[])?;
            let (name, group) = group_arrow(line, "move-resource RESOURCE -> GROUP")?;
            vec![Command::MoveResource { name, group }]
        }
        "report" => {
            line.only(2, &["failure"], &["reason"])?;
            let resource = name()?;
            let status = line.word(2, "state@node")?;
            let (state, node) =
                status.split_once('@').ok_or_else(|| line.err(format!("{status:?} should look like online@a")))?;
            let state = parse_state(line, state)?;
            let reason = line.opt("reason").map(str::to_string);
            vec![Command::ReportResource {
                node: node.to_string(),
                resource,
                state,
                reason,
                failure: line.flag("failure"),
            }]
        }
        "clear-failures" => {
            line.only(1, &[], &[])?;
            vec![Command::ClearFailures { resource: name()? }]
        }
        "down" | "up" => {
            line.only(1, &[], &[])?;
            let liveness = if line.words[0] == "down" { NodeLiveness::Down } else { NodeLiveness::Up };
            vec![Command::SetNodeLiveness { name: name()?, liveness, reason: "scenario".into() }]
        }
        "pause" | "resume" => {
            line.only(1, &[], &[])?;
            vec![Command::SetNodePaused { name: name()?, paused: line.words[0] == "pause" }]
        }
        "noop" => {
            line.only(0, &[], &[])?;
            vec![Command::Noop]
        }
        d => {
            return Err(line.err(format!(
                "unknown command {d:?}; use node, group, resource, update, move, place, release, offline, online, fail, \
                 delete-resource, delete-group, move-resource, report, clear-failures, down, up, pause, resume or noop"
            )));
        }
    };
    Ok(cmds)
}

fn command_text(c: &Command, me: &str) -> String {
    let at = |node: &str| if node == me { String::new() } else { format!("@{node}") };
    match c {
        Command::ReportResource { node, resource, state, reason, failure } => {
            let mut s = format!("report {resource} {}{}", state_word(*state), at(node));
            if *failure {
                s.push_str(" (failure)");
            }
            if let Some(r) = reason {
                write!(s, ": {r}").ok();
            }
            s
        }
        Command::ReleaseGroup { node, group, generation } => {
            format!("release {group}{} generation={generation}", at(node))
        }
        other => format!("{other:?}"),
    }
}

fn op_text(op: &Op) -> String {
    match op {
        Op::Start { resource } => format!("start {resource}"),
        Op::Stop { resource, kill, reason } => {
            let verb = if *kill { "kill" } else { "stop" };
            match reason {
                Some(r) => format!("{verb} {resource}: {r}"),
                None => format!("{verb} {resource}"),
            }
        }
        Op::Check { resource, depth: Depth::Cheap } => format!("check {resource} cheap"),
        Op::Check { resource, depth: Depth::Thorough } => format!("check {resource} thorough"),
    }
}

fn interrupt_text(why: Interrupt) -> String {
    match why {
        Interrupt::LeaseEnded => "the lease ended".to_string(),
        Interrupt::Unwanted(why) => why.to_string(),
        Interrupt::PendingTimeout => "past its pending timeout".to_string(),
    }
}

/// The node under test: what its agent holds, and the core of the group it runs.
struct Run {
    me: String,
    state: State,
    applied: u64,
    lease: Lease,
    lease_len: Micros,
    now: Micros,
    stopping: bool,
    rule: LrmRule,
    core: GroupLrm,
    queue: ReportQueue,
    in_flight: Option<Command>,
    /// When the last step said the node would look again (while nothing is in progress).
    idle_wake: Option<Micros>,
    /// What the current event produced.
    out: Vec<String>,
}

/// The `View` of the node now, borrowing only the fields it needs (so the core, a sibling
/// field, can be borrowed mutably beside it).
macro_rules! view {
    ($r:expr) => {
        View {
            me: &$r.me,
            state: &$r.state,
            applied: $r.applied,
            lease: &$r.lease,
            now: $r.now,
            stopping: $r.stopping,
            rule: $r.rule,
        }
    };
}

impl Run {
    fn say(&mut self, s: impl Into<String>) {
        self.out.push(s.into());
    }

    fn apply(&mut self, line: &Line, cmds: Vec<Command>) -> Result<(), Error> {
        for c in cmds {
            let text = command_text(&c, &self.me);
            self.state
                .apply(&Request::new(self.now / 1000, "scenario", c))
                .map_err(|e| line.err(format!("the state refused `{text}`: {e}")))?;
            self.applied += 1;
        }
        Ok(())
    }

    fn lease_text(&self) -> String {
        let index = format!("leader's index {}, applied {}", self.lease.min_applied(), self.applied);
        let caught_up = if self.applied >= self.lease.min_applied() { "" } else { ": catching up" };
        match self.lease.valid_until() {
            None => "no lease".to_string(),
            Some(u) if self.lease.valid(self.now) => format!("lease valid until {} ({index}{caught_up})", fmt_time(u)),
            Some(u) => format!("lease ended at {}", fmt_time(u)),
        }
    }

    /// Pushes the core's reports onto the report queue, saying each.
    fn reports(&mut self, reports: Vec<Command>) {
        for c in reports {
            let text = command_text(&c, &self.me);
            self.say(text);
            self.queue.push(c);
        }
    }

    /// What the agent's worker does on any change: abandon the call in progress if the core
    /// says so, else (nothing in progress) take the next step.
    fn react(&mut self, line: &Line) -> Result<(), Error> {
        let mut reports = Vec::new();
        if let Some(op) = self.core.busy().cloned() {
            let why = self.core.interrupt(&view!(self));
            let Some(why) = why else {
                self.say(format!("(still busy: {})", op_text(&op)));
                return Ok(());
            };
            self.say(format!("abandon {}: {}", op_text(&op), interrupt_text(why)));
            self.core.done(&view!(self), Outcome::Interrupted(why), &mut reports);
            self.reports(std::mem::take(&mut reports));
        }
        let step = self.core.next(&view!(self), &mut reports);
        self.check_reports(line, &reports)?;
        self.reports(reports);
        match step {
            Step::Begin(op) => {
                self.check_op(line, &op)?;
                self.idle_wake = None;
                self.say(op_text(&op));
            }
            Step::Idle { wake_at } => {
                self.idle_wake = wake_at;
                match wake_at {
                    Some(t) => self.say(format!("idle until {}", fmt_time(t))),
                    None => self.say("idle"),
                }
            }
        }
        Ok(())
    }

    /// Under the safe rule: what must hold of every call the core begins.
    fn check_op(&self, line: &Line, op: &Op) -> Result<(), Error> {
        if self.rule != LrmRule::Safe {
            return Ok(());
        }
        let broken = |what: String| Err(line.err(format!("invariant broken: {what}")));
        match op {
            Op::Start { resource } => {
                if !self.lease.may_run(self.now, self.applied) {
                    return broken(format!(
                        "{resource} started without a lease and the caught-up index ({})",
                        self.lease_text()
                    ));
                }
                let g = self.state.groups.get(self.core.group());
                let here = g.is_some_and(|g| {
                    g.owner.as_deref() == Some(self.me.as_str())
                        && g.handoff.is_none()
                        && g.spec.online
                        && g.failed_reason.is_none()
                });
                if !here || self.stopping {
                    return broken(format!("{resource} started although its group should not run here"));
                }
            }
            Op::Stop { resource, kill, .. } => {
                if *kill == self.lease.valid(self.now) {
                    let lease = self.lease_text();
                    return broken(format!(
                        "{resource} stopped with kill={kill} ({lease}): kill exactly when the lease ended"
                    ));
                }
            }
            Op::Check { .. } => {}
        }
        Ok(())
    }

    fn check_reports(&self, line: &Line, reports: &[Command]) -> Result<(), Error> {
        if self.rule != LrmRule::Safe {
            return Ok(());
        }
        for c in reports {
            if matches!(c, Command::ReleaseGroup { .. })
                && (self.core.running().next().is_some() || self.core.busy().is_some())
            {
                return Err(line.err("invariant broken: a release with something still running here"));
            }
        }
        Ok(())
    }

    /// The node would have looked again (or cut the call in progress short) before `t`.
    fn check_wake(&self, line: &Line, t: Micros) -> Result<(), Error> {
        let (when, what) = match self.core.busy() {
            Some(op) => (
                self.core.deadline(&view!(self)),
                format!("the call in progress ({}) reaches its deadline", op_text(op)),
            ),
            None => (self.idle_wake, "its last step said to look again".to_string()),
        };
        match when {
            Some(w) if w < t => Err(line.err(format!(
                "the node would act at {} ({what}), before this event at {}: add `at {} wake` above it",
                fmt_time(w),
                fmt_time(t),
                fmt_time(w)
            ))),
            _ => Ok(()),
        }
    }

    /// Commits `c` to the node's state as the leader would (the node applies it too).
    fn commit(&mut self, c: Command) {
        let text = command_text(&c, &self.me);
        let events = self.state.next_event_id;
        let result = self.state.apply(&Request::new(self.now / 1000, self.me.clone(), c));
        self.applied += 1;
        let line = match result {
            Err(e) => format!("refused {text}: {e}"),
            Ok(_) if self.state.next_event_id == events => format!("commit {text} (changes nothing)"),
            Ok(_) => match self.state.history.back() {
                Some(e) if e.kind == "resource-report-stale" => format!("commit {text} (stale: {})", e.message),
                _ => format!("commit {text}"),
            },
        };
        self.say(line);
    }

    fn event(&mut self, line: &Line) -> Result<(), Error> {
        let t = parse_time(line, line.word(1, "time after `at`")?)?;
        if t < self.now {
            return Err(line.err(format!("time goes back: at {} after {}", fmt_time(t), fmt_time(self.now))));
        }
        self.check_wake(line, t)?;
        self.now = t;
        let ev = line.shifted(2);
        match ev.word(0, "event after the time")? {
            "wake" => {
                ev.only(0, &[], &[])?;
                self.react(line)?;
            }
            "done" => {
                self.done(&ev)?;
                self.react(line)?;
            }
            "apply" => {
                let cmds = commands(&self.state, &ev.shifted(1))?;
                self.apply(line, cmds)?;
                self.react(line)?;
            }
            "lease" => {
                ev.only(1, &[], &["min_applied"])?;
                let min_applied = ev.num("min_applied")?.unwrap_or(self.applied);
                let pending = "a renewal is in flight; end it with `lease granted` or `lease refused` first";
                match ev.word(1, "renew, send, granted or refused")? {
                    "renew" | "granted" => {
                        let r = if ev.words[1] == "renew" {
                            self.lease.begin_renewal(self.now).ok_or_else(|| ev.err(pending))?
                        } else {
                            self.lease
                                .outstanding()
                                .ok_or_else(|| ev.err("no renewal in flight; `lease send` one first"))?
                        };
                        let taken = self.lease.renewed(r, self.now, min_applied, self.lease_len, LeaseRule::FromSend);
                        if !taken {
                            return Err(ev.err("the lease refused the grant"));
                        }
                        let text = self.lease_text();
                        self.say(text);
                        self.react(line)?;
                    }
                    "send" => {
                        ev.only(1, &[], &[])?;
                        let r = self.lease.begin_renewal(self.now).ok_or_else(|| ev.err(pending))?;
                        self.say(format!("renewal {} sent", r.seq));
                    }
                    "refused" => {
                        ev.only(1, &[], &[])?;
                        let r = self
                            .lease
                            .outstanding()
                            .ok_or_else(|| ev.err("no renewal in flight; `lease send` one first"))?;
                        self.lease.renewal_failed(r);
                        let text = self.lease_text();
                        self.say(format!("renewal {} refused; {text}", r.seq));
                    }
                    w => {
                        return Err(ev.err(format!("unknown lease event {w:?}; write renew, send, granted or refused")));
                    }
                }
            }
            "adopt" => {
                ev.only(ev.words.len(), &[], &[])?;
                let names: Vec<String> = ev.words.iter().skip(1).cloned().collect();
                if names.is_empty() {
                    return Err(ev.err("write `adopt RESOURCE...`: what the start-up probe found running here"));
                }
                for n in &names {
                    match self.state.resources.get(n) {
                        Some(r) if r.spec.group == self.core.group() => {}
                        _ => {
                            return Err(ev.err(format!(
                                "{n:?} is not a resource of group {:?}; the probe only finds resources of the state",
                                self.core.group()
                            )));
                        }
                    }
                }
                self.core.adopt(names.iter().map(String::as_str), &self.state, self.now);
                self.react(line)?;
            }
            "agent" => {
                ev.only(1, &[], &[])?;
                if ev.word(1, "stop")? != "stop" {
                    return Err(ev.err("write `agent stop`"));
                }
                self.stopping = true;
                self.react(line)?;
            }
            "queue" => self.queue_event(line, &ev)?,
            "commit" => {
                ev.only(0, &[], &[])?;
                if self.in_flight.is_some() {
                    return Err(ev.err("a report is in flight: end it with `queue ok` or `queue failed` first"));
                }
                let mut any = false;
                for _ in 0..10_000 {
                    let Some(c) = self.queue.next_to_send() else { break };
                    self.commit(c);
                    self.queue.sent();
                    any = true;
                }
                if !any {
                    self.say("(nothing queued)");
                }
                self.react(line)?;
            }
            "active?" => {
                ev.only(0, &[], &[])?;
                let active = self.core.active(&view!(self));
                self.say(if active { "active" } else { "not active" });
            }
            "deadline?" => {
                ev.only(0, &[], &[])?;
                let d = self.core.deadline(&view!(self));
                self.say(d.map_or("no deadline".to_string(), |d| format!("deadline {}", fmt_time(d))));
            }
            "interrupt?" => {
                ev.only(0, &[], &[])?;
                let i = self.core.interrupt(&view!(self));
                self.say(i.map_or("no interrupt".to_string(), |i| format!("interrupt: {}", interrupt_text(i))));
            }
            "running?" => {
                ev.only(0, &[], &[])?;
                let running: Vec<&str> = self.core.running().collect();
                let text = if running.is_empty() { "nothing".to_string() } else { running.join(", ") };
                self.say(format!("running {text}"));
            }
            "lease?" => {
                ev.only(0, &[], &[])?;
                let text = self.lease_text();
                self.say(text);
            }
            "queue?" => {
                ev.only(0, &[], &[])?;
                let mut queued: Vec<String> = self.queue.queued().map(|c| command_text(c, &self.me)).collect();
                if let Some(c) = &self.in_flight {
                    queued.insert(0, format!("{} (in flight)", command_text(c, &self.me)));
                }
                self.say(if queued.is_empty() {
                    "queue empty".to_string()
                } else {
                    format!("queued {}", queued.join("; "))
                });
            }
            "status?" => {
                ev.only(0, &[], &[])?;
                let lines: Vec<String> = self
                    .state
                    .group_resources(self.core.group())
                    .map(|r| {
                        let on = r.status.node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
                        let why = r.status.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
                        format!("status {} {}{on}{why}", r.spec.name, state_word(r.status.state))
                    })
                    .collect();
                for l in lines {
                    self.say(l);
                }
            }
            e => {
                return Err(ev.err(format!(
                    "unknown event {e:?}; use wake, done, apply, lease, adopt, agent stop, queue, commit, or a query \
                     (active?, deadline?, interrupt?, running?, lease?, queue?, status?)"
                )));
            }
        }
        Ok(())
    }

    /// `done …`: the driver call in progress ended.
    fn done(&mut self, ev: &Line) -> Result<(), Error> {
        let Some(op) = self.core.busy().cloned() else {
            return Err(ev.err("nothing is in progress: `done` ends the call the node began (start, stop or check)"));
        };
        ev.only(1, &[], &["err", "failed"])?;
        let answer = ev.words.get(1).map(String::as_str);
        let usage = match op {
            Op::Check { .. } => "`done running`, `done stopped` or `done failed=\"why\"`",
            _ => "`done ok` or `done err=\"why\"`",
        };
        let outcome = match (&op, answer, ev.opt("err"), ev.opt("failed")) {
            (Op::Start { .. }, Some("ok"), None, None) => Outcome::Started(Ok(())),
            (Op::Start { .. }, None, Some(e), None) => Outcome::Started(Err(e.to_string())),
            (Op::Stop { .. }, Some("ok"), None, None) => Outcome::Stopped(Ok(())),
            (Op::Stop { .. }, None, Some(e), None) => Outcome::Stopped(Err(e.to_string())),
            (Op::Check { .. }, Some("running"), None, None) => Outcome::Checked(Health::Running),
            (Op::Check { .. }, Some("stopped"), None, None) => Outcome::Checked(Health::Stopped),
            (Op::Check { .. }, None, None, Some(w)) => Outcome::Checked(Health::Failed(w.to_string())),
            _ => return Err(ev.err(format!("the call in progress is `{}`: answer {usage}", op_text(&op)))),
        };
        let mut reports = Vec::new();
        self.core.done(&view!(self), outcome, &mut reports);
        self.reports(reports);
        Ok(())
    }

    /// `queue push|send|ok|refused|failed`: the report queue, one report at a time.
    fn queue_event(&mut self, line: &Line, ev: &Line) -> Result<(), Error> {
        let no_flight = "no report in flight; `queue send` one first";
        match ev.word(1, "push, send, ok, refused or failed")? {
            "push" => {
                let cmds = commands(&self.state, &ev.shifted(2))?;
                for c in cmds {
                    let text = command_text(&c, &self.me);
                    match self.queue.push(c) {
                        Pushed::Duplicate => {
                            self.say(format!("dropped {text}: the same as the last queued report about it"))
                        }
                        Pushed::Replaced => {
                            self.say(format!("queued {text} in place of the last queued report about it (moot now)"))
                        }
                        Pushed::Queued => self.say(format!("queued {text}")),
                    }
                }
            }
            "send" => {
                ev.only(1, &[], &[])?;
                match self.queue.next_to_send() {
                    Some(c) => {
                        self.say(format!("sending {}", command_text(&c, &self.me)));
                        self.in_flight = Some(c);
                    }
                    None if self.in_flight.is_some() => self.say("(one in flight already)"),
                    None => self.say("(nothing queued)"),
                }
            }
            "ok" => {
                ev.only(1, &[], &[])?;
                let c = self.in_flight.take().ok_or_else(|| ev.err(no_flight))?;
                self.commit(c);
                self.queue.sent();
                self.react(line)?;
            }
            "refused" => {
                // The leader answered that its state refused the command: nothing to retry.
                ev.only(1, &[], &[])?;
                let c = self.in_flight.take().ok_or_else(|| ev.err(no_flight))?;
                self.queue.sent();
                self.say(format!("refused by the leader, not retried: {}", command_text(&c, &self.me)));
            }
            "failed" => {
                ev.only(1, &[], &[])?;
                let c = self.in_flight.take().ok_or_else(|| ev.err(no_flight))?;
                let text = command_text(&c, &self.me);
                if self.queue.failed() {
                    self.say(format!("will retry {text}"));
                } else {
                    self.say(format!("dropped {text}: a newer report about it is queued"));
                }
            }
            w => return Err(ev.err(format!("unknown queue event {w:?}; write push, send, ok, refused or failed"))),
        }
        Ok(())
    }
}

/// A scenario file: its setup text and the transcript its script produces now.
struct Transcript {
    setup: String,
    expected: String,
    actual: String,
}

fn run(file: &Path, text: &str) -> Result<Transcript, Error> {
    let mut state = State::default();
    let mut applied = 0;
    let (mut me, mut group, mut rule, mut lease_len) = (None, None, LrmRule::Safe, TimingProfile::DEFAULT.lease_ms);
    let mut lease_at_start = None;
    let sections = haven_scenario::split(file, text, |line| {
        match line.words[0].as_str() {
            "me" => {
                line.only(1, &[], &["group"])?;
                me = Some((line.word(1, "node name")?.to_string(), line.clone()));
                group = line.opt("group").map(str::to_string);
            }
            "rule" => {
                line.only(1, &[], &[])?;
                rule = parse_rule(line, line.word(1, "rule")?)?;
            }
            "lease" => {
                line.only(0, &[], &["min_applied"])?;
                lease_at_start = Some((line.num("min_applied")?, line.clone()));
            }
            "timing" => {
                line.only(1, &[], &[])?;
                let name = line.word(1, "profile")?;
                let p = TimingProfile::by_name(name)
                    .ok_or_else(|| line.err(format!("no timing profile {name:?}; write default or aggressive")))?;
                lease_len = p.lease_ms;
            }
            _ => {
                for c in commands(&state, line)? {
                    let text = command_text(&c, "");
                    state
                        .apply(&Request::new(0, "scenario", c))
                        .map_err(|e| line.err(format!("the state refused `{text}`: {e}")))?;
                    applied += 1;
                }
            }
        }
        Ok(())
    })?;
    let shown = &sections.name;
    let (me, me_line) = me.ok_or_else(|| format!("{shown}: no `me NODE` line saying which node runs the scenario"))?;
    if !state.nodes.contains_key(&me) {
        return Err(me_line.err(format!("no node {me:?}; add a `node {me}` line")));
    }
    let group = match group {
        Some(g) if state.groups.contains_key(&g) => g,
        Some(g) => return Err(me_line.err(format!("no group {g:?}; add a `group {g}` line"))),
        None if state.groups.len() == 1 => state.groups.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(me_line.err("write `me NODE group=GROUP`: which group's resource manager the scenario runs"));
        }
    };
    let mut r = Run {
        me,
        state,
        applied,
        lease: Lease::new(),
        lease_len: lease_len * 1000,
        now: 0,
        stopping: false,
        rule,
        core: GroupLrm::new(&group),
        queue: ReportQueue::new(),
        in_flight: None,
        idle_wake: None,
        out: Vec::new(),
    };
    if let Some((min_applied, line)) = lease_at_start {
        // Granted for a renewal sent at 0, before the script's first event.
        let renewal = r.lease.begin_renewal(0).ok_or_else(|| line.err("a renewal is already in flight"))?;
        let min_applied = min_applied.unwrap_or(r.applied);
        if !r.lease.renewed(renewal, 0, min_applied, r.lease_len, LeaseRule::FromSend) {
            return Err(line.err("the lease refused the grant"));
        }
    }
    let mut expected = Vec::new();
    let mut actual = String::new();
    for &(i, raw) in &sections.below {
        let trimmed = raw.trim();
        if trimmed.starts_with('>') {
            expected.push(raw.trim_end());
            continue;
        }
        expected.push(raw.trim_end());
        writeln!(actual, "{}", raw.trim_end()).ok();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = Line::parse(sections.at(i), trimmed)?;
        if line.words[0] != "at" {
            return Err(line.err("a script line starts with `at TIME`, e.g. `at 200ms done ok`"));
        }
        if let Err(e) = r.event(&line) {
            // What the node did up to the refused line, to write the script on from.
            let so_far: String =
                actual.lines().chain(r.out.iter().map(String::as_str)).map(|l| format!("    {l}\n")).collect();
            return Err(format!("{e}\n  the transcript up to it:\n{so_far}"));
        }
        for o in r.out.drain(..) {
            writeln!(actual, "> {o}").ok();
        }
    }
    let expected = expected.join("\n").trim_end().to_string();
    Ok(Transcript { setup: sections.setup, expected, actual: actual.trim_end().to_string() })
}

#[test]
fn scenarios() {
    let files = haven_scenario::files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios"));
    assert!(files.len() >= 20, "expected at least 20 node scenarios, found {}", files.len());
    haven_scenario::check(&files, |file, text| {
        let o = run(file, text)?;
        let again = run(file, text)?;
        if again.actual != o.actual {
            let name = haven_scenario::file_name(file);
            return Err(format!("{name}: two runs of the same script gave different transcripts"));
        }
        Ok(Checked { updated: format!("{}---\n{}\n", o.setup, o.actual), expected: o.expected, actual: o.actual })
    });
}

/// The runner itself must catch a wrong expectation, a skipped wake-up and a typo.
#[test]
fn the_runner_refuses_what_the_node_would_not_do() {
    let file = Path::new("inline.scn");
    let setup = "node a\ngroup web owner=a\nresource db group=web\nme a\n---\n";
    let ok = run(file, &format!("{setup}at 0 lease renew\n")).expect("runs");
    assert_eq!(
        ok.actual,
        "at 0 lease renew\n> lease valid until 2.97s (leader's index 4, applied 4)\n> report db starting\n> start db"
    );
    assert_ne!(ok.actual, ok.expected, "a script without its `>` lines does not match");

    let late = run(file, &format!("{setup}at 0 lease renew\nat 200ms done ok\nat 10s wake\n"));
    let e = late.err().unwrap_or_default();
    assert!(e.contains("inline.scn:8") && e.contains("add `at 2.97s wake`"), "{e}");

    let typo = run(file, &format!("{setup}at 0 lease renew min_aplied=3\n"));
    assert!(typo.err().unwrap_or_default().contains("unknown option \"min_aplied\""));

    let impossible = run(file, &format!("{setup}at 0 apply move web -> z\n"));
    assert!(impossible.err().unwrap_or_default().contains("inline.scn:6: the state refused"));
}

//! Sends the local resource manager's status reports to the cluster in order, without
//! making the resource manager wait for the network (self-fencing must never block on a
//! write that cannot commit). A report that fails is retried until a newer report for the
//! same resource replaces it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use haven_state::Command;
use tokio::sync::mpsc;

use crate::{Agent, SubmitError};

pub(crate) struct Reporter {
    tx: mpsc::UnboundedSender<Command>,
}

impl Reporter {
    pub(crate) fn new() -> (Reporter, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reporter { tx }, rx)
    }
    pub(crate) fn send(&self, c: Command) {
        let _ = self.tx.send(c);
    }
}

/// What a report is about: a newer report with the same key replaces an older one that
/// could not be sent (a resource's status; a group's release).
fn resource_of(c: &Command) -> Option<(&'static str, &str)> {
    match c {
        Command::ReportResource { resource, .. } => Some(("resource", resource)),
        Command::ReleaseGroup { group, .. } => Some(("release", group)),
        _ => None,
    }
}

/// Queues `c` unless the last queued report about the same thing is the very same report
/// (a duplicate would commit once more and change nothing). Only the *last* one counts:
/// `starting, online, starting` must keep its order and its final word.
///
/// Without this, a node handing off several groups could queue releases faster than they
/// commit: every commit woke the resource manager, which sent each pending group's release
/// again, so the queue grew by one per group per commit, a new handoff's release waited
/// behind all of them, and the moves never finished (issue 9: groups stuck `moving`).
fn enqueue(queue: &mut VecDeque<Command>, c: Command) {
    if let Some(key) = resource_of(&c)
        && queue.iter().rev().find(|q| resource_of(q) == Some(key)).is_some_and(|q| *q == c)
    {
        return;
    }
    queue.push_back(c);
}

pub(crate) async fn run(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut queue: VecDeque<Command> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(c) => enqueue(&mut queue, c),
                None => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            enqueue(&mut queue, c);
        }
        let Some(cmd) = queue.pop_front() else { continue };
        let by = agent.name().to_string();
        match agent.submit(&by, cmd.clone()).await {
            Ok(_) => {}
            // The state machine refused it (e.g. the resource was deleted): nothing to retry.
            Err(SubmitError::Refused(e)) => tracing::debug!(error = %e, "status report refused"),
            Err(e) => {
                let superseded = queue.iter().any(|q| resource_of(q) == resource_of(&cmd));
                if !superseded {
                    tracing::debug!(error = %e, "status report not committed; will retry");
                    queue.push_front(cmd);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

//! Sends the local resource manager's status reports to the cluster in order (all that are
//! queued as one batch commit, up to `haven_node::report::REPORT_BATCH_MAX`), without
//! making the resource manager wait for the network (self-fencing must never block on a
//! write that cannot commit). The queue's rules (order, duplicates dropped, a failed report
//! retried unless a newer one about the same thing replaced it) are
//! `haven_node::ReportQueue`, which the simulator drives too; this task only sends.

use std::sync::Arc;
use std::time::Duration;

use haven_node::ReportQueue;
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

pub(crate) async fn run(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut queue = ReportQueue::new();
    loop {
        if queue.is_idle() {
            match rx.recv().await {
                Some(c) => queue.push(c),
                None => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            queue.push(c);
        }
        // Everything queued (up to the bounds) as one commit: a node's reports cost one
        // commit per round trip, not one each.
        let mut batch = queue.next_batch(haven_node::report::REPORT_BATCH_MAX, haven_state::BATCH_MAX_BYTES);
        let cmd = match batch.len() {
            0 => continue,
            1 => batch.remove(0),
            _ => Command::Batch { commands: batch },
        };
        let by = agent.name().to_string();
        match agent.submit(&by, cmd.clone()).await {
            Ok(reply) => {
                // A refused report (e.g. its resource was deleted): nothing to retry.
                for outcome in haven_state::outcomes(&cmd, Ok(reply)) {
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "status report refused");
                    }
                }
                queue.sent();
            }
            Err(SubmitError::Refused(e)) => {
                tracing::debug!(error = %e, "status report refused");
                queue.sent();
            }
            Err(e) => {
                if queue.failed() {
                    tracing::debug!(error = %e, "status report not committed; will retry");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

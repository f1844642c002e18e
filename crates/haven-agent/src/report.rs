//! Sends the local resource manager's status reports to the cluster in order, without
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
        let Some(cmd) = queue.next_to_send() else { continue };
        let by = agent.name().to_string();
        match agent.submit(&by, cmd).await {
            Ok(_) => queue.sent(),
            // The state machine refused it (e.g. the resource was deleted): nothing to retry.
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

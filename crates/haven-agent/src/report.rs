//! Sends the local resource manager's status reports to the cluster in order (all that are
//! queued as one batch commit, up to `haven_node::report::REPORT_BATCH_MAX`), without
//! making the resource manager wait for the network (self-fencing must never block on a
//! write that cannot commit). The queue's rules (order, duplicates dropped, a failed report
//! retried unless a newer one about the same thing replaced it) are
//! `haven_node::ReportQueue`, which the simulator drives too; this task only sends.
//!
//! Backpressure: when the next batch may go is `haven_node::ReportPacing`'s call
//! (the simulator's too), from each batch commit's latency and failures; while it waits,
//! reports pile up and coalesce into the next batch. Only this task waits: lease renewals
//! (`lease.rs`) have their own task and connection and are never paced.

use std::sync::Arc;
use std::time::Duration;

use haven_node::{ReportPacing, ReportQueue};
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
    let mut pacing = ReportPacing::new();
    let epoch = tokio::time::Instant::now();
    let ms = move || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    loop {
        if queue.is_idle() {
            match rx.recv().await {
                Some(c) => {
                    queue.push(c);
                }
                None => return,
            }
        }
        // Backpressure: after slow or failed commits, wait (reports keep arriving and
        // coalescing meanwhile). The channel closing (the agent stopping) ends the wait, not
        // the task: the last reports of the resources it stopped still go.
        let wait = pacing.ready_at().saturating_sub(ms());
        if wait > 0 {
            let until = tokio::time::Instant::now() + Duration::from_millis(wait);
            while let Ok(Some(c)) = tokio::time::timeout_at(until, rx.recv()).await {
                queue.push(c);
            }
        }
        while let Ok(c) = rx.try_recv() {
            queue.push(c);
        }
        // Everything queued (up to the bounds) as one commit: a node's reports cost one
        // commit per round trip, not one each.
        let mut batch = queue.next_batch(haven_node::report::REPORT_BATCH_MAX, haven_state::BATCH_MAX_BYTES);
        let reports = batch.len();
        let cmd = match batch.len() {
            0 => continue,
            1 => batch.remove(0),
            _ => Command::Batch { commands: batch },
        };
        let by = agent.name().to_string();
        let sent = ms();
        let answered = |pacing: &mut ReportPacing| {
            let now = ms();
            let wait = pacing.committed(now, now.saturating_sub(sent));
            if wait > 0 {
                tracing::debug!(
                    reports,
                    latency_ms = now.saturating_sub(sent),
                    wait_ms = wait,
                    "status reports: commits are slow; waiting before the next batch"
                );
            }
        };
        match agent.submit(&by, cmd.clone()).await {
            Ok(reply) => {
                // A refused report (e.g. its resource was deleted): nothing to retry.
                for outcome in haven_state::outcomes(&cmd, Ok(reply)) {
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "status report refused");
                    }
                }
                queue.sent();
                answered(&mut pacing);
            }
            Err(SubmitError::Refused(e)) => {
                tracing::debug!(error = %e, "status report refused");
                queue.sent();
                answered(&mut pacing);
            }
            Err(e) => {
                let wait = pacing.failed(ms());
                if queue.failed() {
                    tracing::debug!(error = %e, wait_ms = wait, "status report not committed; will retry");
                }
            }
        }
    }
}

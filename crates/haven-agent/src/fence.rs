//! The leader's fence executor: runs the fence agent of every node the controller asked to
//! fence (`RequestFence` in the committed state) and commits how it ended (`RecordFence`).
//!
//! Fence agents speak the fence-agents stdin protocol: `key=value` lines, `action=off`
//! (or `reboot`) first; exit status 0 means the node is fenced. Anything else — a non-zero
//! status, a timeout, a missing program — is a failure, recorded with the agent's own
//! message, and never taken as success: the controller asks again after a while.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;

use haven_model::{Dur, FenceConfig};
use haven_state::{Command, State};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::Agent;

/// Fence runs in progress, by node.
#[derive(Default)]
pub struct FenceRuns {
    running: BTreeMap<String, JoinHandle<()>>,
}

impl FenceRuns {
    /// Starts a run for every outstanding request that has none yet.
    pub fn start_pending(&mut self, agent: &Arc<Agent>, state: &State) {
        self.running.retain(|_, h| !h.is_finished());
        for (node, status) in &state.fence_status {
            let Some(requested) = status.requested_at else { continue };
            if status.fenced_at.is_some_and(|f| f >= requested) || self.running.contains_key(node) {
                continue;
            }
            let Some(config) = state.fencing.get(node).cloned() else { continue };
            let agent = agent.clone();
            let name = node.clone();
            tracing::warn!(node = %name, agent = %config.agent, "fencing node");
            self.running.insert(
                node.clone(),
                tokio::spawn(async move {
                    let (ok, message) = match run_agent(&config, config.action.as_str()).await {
                        Ok(out) => (true, out),
                        Err(e) => (false, e.to_string()),
                    };
                    // A fence agent may print its password (e.g. in a login error).
                    let message = config.scrub(&message);
                    let command = Command::RecordFence { node: name.clone(), ok, message };
                    if let Err(e) = agent.submit("fencer", command).await {
                        tracing::error!(node = %name, error = %e, "could not record the fence result");
                    }
                }),
            );
        }
    }

    /// Forgets runs (a new term: the new leader starts over from the committed requests).
    pub fn abort_all(&mut self) {
        for (_, h) in std::mem::take(&mut self.running) {
            h.abort();
        }
    }
}

/// Why a fence agent did not fence its node. The message is recorded with the fence result
/// (`RecordFence`) and shown by `haven node show`.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot run fence agent {agent:?}: {source}; install it (Debian: fence-agents) or give its absolute path")]
    Spawn {
        agent: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to {agent}: {source}")]
    Stdin {
        agent: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{agent} did not finish within {timeout}")]
    TimedOut { agent: String, timeout: Dur },
    #[error("waiting for {agent} failed: {source}")]
    Wait {
        agent: String,
        #[source]
        source: std::io::Error,
    },
    /// `status` is "status 1" or "a signal"; `said` the last lines of its output.
    #[error("{agent} action={action} exited with {status}: {said}")]
    Failed { agent: String, action: String, status: String, said: String },
}

/// Runs `config.agent` with `action`; `Ok` carries its output, `Err` why it failed.
pub async fn run_agent(config: &FenceConfig, action: &str) -> Result<String, FenceError> {
    let agent = &config.agent;
    let mut child = tokio::process::Command::new(agent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| FenceError::Spawn { agent: agent.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let text = config.stdin_for(action);
        stdin.write_all(text.as_bytes()).await.map_err(|source| FenceError::Stdin { agent: agent.clone(), source })?;
    }
    let out = match tokio::time::timeout(config.timeout.0, child.wait_with_output()).await {
        Err(_) => return Err(FenceError::TimedOut { agent: agent.clone(), timeout: config.timeout }),
        Ok(Err(source)) => return Err(FenceError::Wait { agent: agent.clone(), source }),
        Ok(Ok(out)) => out,
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().lines().last().unwrap_or_default().to_string();
    let said =
        [text(&out.stdout), text(&out.stderr)].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ");
    if out.status.success() {
        Ok(format!(
            "{agent} action={action} succeeded{}",
            if said.is_empty() { String::new() } else { format!(": {said}") }
        ))
    } else {
        let status = out.status.code().map(|c| format!("status {c}")).unwrap_or_else(|| "a signal".into());
        Err(FenceError::Failed { agent: agent.clone(), action: action.to_string(), status, said })
    }
}

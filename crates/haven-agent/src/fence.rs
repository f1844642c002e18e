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
    #[error("cannot run fence agent {agent:?} as user {user:?}: {why}; set the fence config's user (e.g. --user root)")]
    User { agent: String, user: String, why: String },
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

/// Runs `config.agent` with `action`, as `config.user` (default `nobody` when this agent
/// runs as root); `Ok` carries its output, `Err` why it failed.
pub async fn run_agent(config: &FenceConfig, action: &str) -> Result<String, FenceError> {
    let agent = &config.agent;
    let mut cmd = tokio::process::Command::new(agent);
    match haven_drivers::run_as(config.user.as_deref()) {
        Ok(None) => {}
        Ok(Some(r)) => {
            cmd.envs(r.env());
            if let Some((uid, gid)) = r.ids {
                // std drops the supplementary groups when it switches uid as root.
                cmd.uid(uid).gid(gid);
            }
        }
        Err(haven_drivers::RunAsError::Unknown { user: u }) => {
            return Err(FenceError::User {
                agent: agent.clone(),
                user: u,
                why: "this node has no such account".into(),
            });
        }
        Err(haven_drivers::RunAsError::Lookup { user: u, source }) => {
            return Err(FenceError::User {
                agent: agent.clone(),
                user: u,
                why: format!("looking it up failed: {source}"),
            });
        }
        Err(haven_drivers::RunAsError::NotRoot { user: u, agent_uid }) => {
            let why = format!("the Haven agent runs as uid {agent_uid}, not root, so it cannot switch user");
            return Err(FenceError::User { agent: agent.clone(), user: u, why });
        }
    }
    let mut child = cmd
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use haven_model::{Dur, FenceAction};

    use super::*;

    /// A fence agent that prints the account it runs as.
    fn whoami_agent() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("a directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = dir.path().join("fence_whoami");
        std::fs::write(&path, "#!/bin/sh\ncat >/dev/null\nid -un\n").expect("the script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (dir, path.display().to_string())
    }

    fn config(agent: &str, user: Option<&str>) -> FenceConfig {
        FenceConfig {
            agent: agent.to_string(),
            params: BTreeMap::new(),
            action: FenceAction::Off,
            timeout: Dur::from_secs(10),
            user: user.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn a_fence_agent_runs_as_nobody_unless_its_config_names_a_user() {
        // (/proc/self belongs to the process's effective user.)
        let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self"));
        if euid != 0 {
            println!("skipped: the default user applies when the agent runs as root, and this test does not");
            return;
        }
        let (_dir, agent) = whoami_agent();
        let said = run_agent(&config(&agent, None), "off").await.expect("it ran");
        assert!(said.ends_with(": nobody"), "{said}");
        let said = run_agent(&config(&agent, Some("root")), "off").await.expect("it ran");
        assert!(said.ends_with(": root"), "{said}");
        let e = run_agent(&config(&agent, Some("nosuch-fence-user")), "off").await.expect_err("no such user");
        assert!(e.to_string().contains("nosuch-fence-user") && e.to_string().contains("no such account"), "{e}");
    }
}

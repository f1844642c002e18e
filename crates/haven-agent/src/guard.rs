//! The agent's side of the node guard (`haven_drivers::guard`, the process `haven guard`):
//! it starts the guard (this program, as a process and process group of its own), tells it
//! the lease's deadline before the lease may be used ([`GuardLink::tell`], called by the
//! lease keeper under its lock, so the resource manager never sees a lease the guard has
//! not been told of), and supervises it ([`supervise`]). Without a guard that runs and
//! reads, the lease counts as lost on this node: the resource manager stops everything
//! (the node fences itself) until a new guard runs. A witness runs no resources and no
//! guard.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::Agent;

/// How long the supervisor waits before it starts a guard again after one exited.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// The agent's end of the guard's socket.
pub struct GuardLink {
    enabled: bool,
    inner: Mutex<Option<UnixStream>>,
    /// The guard stopped reading: the supervisor kills it and starts another.
    broken: Notify,
}

impl GuardLink {
    /// A link for an agent that runs resources: no guard until [`supervise`] starts one.
    pub fn new(enabled: bool) -> GuardLink {
        GuardLink { enabled, inner: Mutex::new(None), broken: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `running`, `not running` or `none` (a witness), as `haven cluster status` shows it.
    pub fn describe(&self) -> &'static str {
        match (self.enabled, self.lock().is_some()) {
            (false, _) => "none",
            (true, true) => "running",
            (true, false) => "not running",
        }
    }

    /// Whether a guard runs and reads (always, without one: a witness).
    pub fn ok(&self) -> bool {
        !self.enabled || self.lock().is_some()
    }

    /// Tells the guard the lease ends at `deadline_ns` (`CLOCK_MONOTONIC`), or that there is
    /// none. A guard that does not take it (gone, or not reading) is dropped: the lease
    /// then counts as lost here until a new one runs.
    pub fn tell(&self, deadline_ns: Option<u64>) {
        if !self.enabled {
            return;
        }
        let mut inner = self.lock();
        let Some(stream) = inner.as_mut() else { return };
        let line = haven_node::guard::line(deadline_ns);
        // Non-blocking: a guard that stopped reading must not stop the agent.
        if !matches!(stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
            tracing::error!("the node guard does not read what it is told; stopping it and starting another");
            *inner = None;
            self.broken.notify_one();
        }
    }

    fn install(&self, stream: UnixStream) {
        *self.lock() = Some(stream);
    }

    fn drop_link(&self) {
        *self.lock() = None;
    }
}

/// Starts the guard, restarts it whenever it exits, until `stop`.
pub async fn supervise(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let run_root = agent.config.state_dir.join("run");
    loop {
        if *stop.borrow() {
            return;
        }
        match start(&run_root) {
            Err(e) => {
                tracing::error!(error = %e, "cannot start the node guard; this node runs no resources until it can")
            }
            Ok((mut child, ours)) => {
                agent.node_guard.install(ours);
                // Told now, then at every renewal (under the lease keeper's lock).
                agent.lease.tell_guard();
                agent.lease.announce();
                tracing::info!(pid = child.id(), "node guard started");
                enum End {
                    Exited(std::io::Result<std::process::ExitStatus>),
                    Broken,
                    Stop,
                }
                let end = tokio::select! {
                    r = child.wait() => End::Exited(r),
                    _ = agent.node_guard.broken.notified() => End::Broken,
                    _ = stop.wait_for(|s| *s) => End::Stop,
                };
                let exited = match end {
                    End::Exited(r) => Some(r),
                    End::Broken => None,
                    End::Stop => {
                        // The agent stops: its resource manager stops everything, gracefully,
                        // with the guard still watching the lease; the guard is killed when
                        // this task is dropped at the end (`kill_on_drop`).
                        std::future::pending::<()>().await;
                        return;
                    }
                };
                agent.node_guard.drop_link();
                agent.lease.announce();
                match exited {
                    Some(status) => tracing::error!(
                        status = ?status.ok(),
                        "the node guard exited; this node stops its resources and starts a new guard"
                    ),
                    None => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART_AFTER) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `haven guard --run-dir <run_root>`, with the guard's end of a new socket as its stdin.
fn start(run_root: &std::path::Path) -> std::io::Result<(tokio::process::Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let program = std::env::current_exe()?;
    let child = tokio::process::Command::new(program)
        .arg("guard")
        .arg("--run-dir")
        .arg(run_root)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    Ok((child, ours))
}

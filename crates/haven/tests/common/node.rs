//! One node's agent process: started in a session of its own (and, in a lab with network
//! namespaces, inside its namespace), killed whole the way a host dies, stopped gracefully,
//! and started again on the same config and state.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_agent::host::{kill_session, session_members};
use haven_api::Client;

use super::HAVEN;
use super::lab::Lab;
use super::procs::alive;

/// One agent of the lab.
pub struct LabNode {
    pub id: u64,
    pub name: String,
    /// `127.a.b.i:7400`, the agent's API and peer address.
    pub addr: String,
    /// `<lab>/<name>`: config, log and the state directory.
    pub dir: PathBuf,
    pub client: Client,
    /// Runs `haven witness` (votes, hosts nothing) rather than `haven agent`.
    pub witness: bool,
    /// The network namespace it runs in, if the lab uses them.
    pub netns: Option<String>,
    /// The running agent, if any. Its pid is also its session id.
    pub(super) child: Option<Child>,
}

impl LabNode {
    /// The agent's `state_dir`: its Raft store and the resources' run directories.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `<state_dir>/run/<resource>`, where the process driver runs a resource and keeps
    /// its pid file.
    pub fn run_dir(&self, resource: &str) -> PathBuf {
        self.state_dir().join("run").join(resource)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the agent process this lab started is alive (not exited, not a zombie).
    pub fn agent_alive(&self) -> bool {
        self.child.as_ref().is_some_and(|c| alive(c.id() as i32))
    }
}

/// What a lab node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `haven agent`: a data node.
    Agent,
    /// `haven witness`: a voting member that hosts nothing.
    Witness,
}

impl Lab {
    /// Starts node `i`'s agent in a session of its own, appending to its `agent.log`.
    pub fn spawn(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "{} is already running", self.nodes[i].name);
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("cannot open an agent log");
        let log2 = log.try_clone().expect("cannot clone a log handle");
        let mut cmd = Command::new(HAVEN);
        cmd.arg(if node.witness { "witness" } else { "agent" })
            .arg("--config")
            .arg(node.dir.join("agent.toml"))
            .env("HAVEN_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // The namespace to enter, opened here: the child only calls setns(2) on it.
        let ns_file = node.netns.as_ref().map(|ns| {
            std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("cannot open network namespace {ns}: {e}"))
        });
        let ns_fd = ns_file.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: setsid(2) and setns(2) are async-signal-safe system calls and touch no
        // memory of the parent; `ns_fd` stays open until `spawn` returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("cannot start haven agent");
        drop(ns_file);
        let pid = child.id() as i32;
        self.note(&format!("started {} (agent pid {pid}, {})", node.name, node.addr));
        self.sessions.push(pid);
        self.nodes[i].child = Some(child);
    }

    /// Kills node `i` as a whole, the way a host dies: SIGKILL to every process of its
    /// session (the agent and every resource process it started) at once.
    pub fn kill_node(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().unwrap_or_else(|| panic!("{} is not running", self.nodes[i].name));
        let sid = child.id() as i32;
        let killed = kill_session(sid);
        let _ = child.wait();
        self.sessions.retain(|s| *s != sid);
        self.note(&format!("killed {}: {killed} processes (session {sid})", self.nodes[i].name));
    }

    /// The pid of node `i`'s agent (also its session id), if it runs.
    pub fn agent_pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].child.as_ref().map(|c| c.id() as i32)
    }

    /// Waits for node `i`'s agent after a test killed it alone (its session is left as the
    /// agent left it), so that it is no zombie; the node counts as not running.
    pub fn reap(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
    }

    /// Starts a killed or stopped node's agent again (same config and state) and waits
    /// until its API answers.
    pub async fn restart_node(&mut self, i: usize) {
        self.spawn(i);
        self.wait_answering(i).await;
    }

    /// Stops node `i` gracefully (SIGTERM, then waits up to 20 s for the agent to exit).
    /// Returns how many processes of its session were still alive after the agent exited
    /// (a graceful stop stops its resources first, so 0 is expected); those are killed.
    pub fn stop_node(&mut self, i: usize) -> usize {
        self.stop_nodes(&[i])
    }

    /// Stops several nodes gracefully at once: SIGTERM to all, then waits for each. Returns
    /// the number of processes left in their sessions (killed).
    pub fn stop_nodes(&mut self, which: &[usize]) -> usize {
        for &i in which {
            let child = self.nodes[i].child.as_ref().unwrap_or_else(|| panic!("{} is not running", self.nodes[i].name));
            // SAFETY: kill(2) with the pid of a child we hold and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            self.note(&format!("SIGTERM to {}", self.nodes[i].name));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut leftovers = 0;
        for &i in which {
            let mut child = self.nodes[i].child.take().expect("checked above");
            let status = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Some(status);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let sid = child.id() as i32;
            let Some(status) = status else {
                kill_session(sid);
                let _ = child.wait();
                panic!("{} did not exit within 20s of SIGTERM\n{}", self.nodes[i].name, self.logs_tail());
            };
            let left = session_members(sid).len();
            leftovers += left;
            kill_session(sid);
            self.sessions.retain(|s| *s != sid);
            self.note(&format!("{} stopped ({status}); {left} processes left in its session", self.nodes[i].name));
        }
        leftovers
    }
}

//! `haven demo`: a local cluster of real agent processes on loopback, with sample groups,
//! for trying Haven on one machine. Each agent runs in a session of its own, and the
//! resource processes it starts stay in that session, so `haven demo kill <node>` can kill
//! a node as a whole (agent and resources at once), the way a host dies.
//!
//! The demo directory is the record of what runs: `<dir>/demo.pid` names the running
//! `haven demo`, and `<dir>/<node>/agent.pid` the session of the node's current agent
//! (written when the demo starts it and by `haven demo restart`). `kill` and `restart` read
//! them and /proc to act on, and report, what really runs; the demo's Ctrl-C stops every
//! session those files and its own children name, checks that none is left, and only then
//! removes the directory. `<dir>/<node>/agent.lock` (flock) keeps a restart and the demo's
//! shutdown from racing.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use haven_agent::host::{in_path, kill_session, session_members};
use haven_api::{Client, GroupView, NodeView, specs};
use haven_drivers::procfs;
use haven_model::{Dur, GroupSpec, HealthCheck, ResourceProps, ResourceSpec};
use serde::Serialize;

use crate::cli::{EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE, Failure};
use crate::output::{self, Format};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes (1-9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory for the nodes' configs, state and logs. Default: a new temporary directory,
    /// removed on exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Node i listens on 127.0.0.1:(base-port + i).
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Timing profile of the agents: default or aggressive.
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Keep the directory on exit.
    #[arg(long)]
    pub keep: bool,
    /// Run process resources only: no sample VM (and no test-guest build), even if QEMU
    /// is installed.
    #[arg(long)]
    pub no_vm: bool,
    #[command(subcommand)]
    pub action: Option<DemoAction>,
}

#[derive(Subcommand, Debug)]
pub enum DemoAction {
    /// Kill a running demo node as a whole (its agent and every process it started) with
    /// SIGKILL, and check that they are gone. Fails if the node is not running.
    Kill {
        node: String,
        /// The demo's directory (printed by `haven demo`).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start a killed demo node again and wait until its API answers and it has rejoined
    /// the cluster. Refused while the node runs (kill it first); fails, with the end of the
    /// agent's log, if the new agent exits or does not rejoin.
    Restart {
        node: String,
        /// The demo's directory (printed by `haven demo`).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// `<dir>/demo.pid`: the pid of the `haven demo` that runs the directory's cluster.
const DEMO_PID: &str = "demo.pid";
/// How long a restarted agent may take to answer and rejoin the cluster.
const RESTART_LIMIT: Duration = Duration::from_secs(60);
/// How long the demo's shutdown waits for the agents to stop gracefully (SIGTERM).
const GRACEFUL_LIMIT: Duration = Duration::from_secs(20);
/// How long processes may take to disappear after SIGKILL.
const KILL_LIMIT: Duration = Duration::from_secs(5);
/// Lines of an agent's log quoted when it failed to come back.
const LOG_TAIL_LINES: usize = 15;

pub async fn run(args: DemoArgs, fmt: Format) -> Result<(), Failure> {
    match args.action {
        Some(DemoAction::Kill { node, dir }) => {
            DemoNode::open(&dir, &node)?.kill()?.print(fmt);
            return Ok(());
        }
        Some(DemoAction::Restart { node, dir }) => {
            DemoNode::open(&dir, &node)?.restart().await?.print(fmt);
            return Ok(());
        }
        None => {}
    }
    if !(1..=9).contains(&args.nodes) {
        return Err(Failure {
            code: EXIT_USAGE,
            message: format!("--nodes {} is out of range; use 1 to 9", args.nodes),
        });
    }
    // Registered before anything starts: from here on, Ctrl-C, SIGTERM and SIGHUP reach
    // the shutdown below instead of killing this process and orphaning the agents.
    let mut signals = Signals::new()?;
    let (dir, tmp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("cannot create --dir {}: {e}", d.display())))?;
            (absolute(d), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("haven-demo-")
                .tempdir()
                .map_err(|e| fail(format!("cannot create a temporary directory for the demo: {e}")))?;
            (absolute(t.path()), Some(t))
        }
    };
    if let Some(pid) = demo_pid(&dir) {
        return Err(Failure {
            code: EXIT_USAGE,
            message: format!(
                "a `haven demo` (pid {pid}) already runs in {}; stop it with Ctrl-C, or pick another --dir",
                dir.display()
            ),
        });
    }
    earlier_demo_gone(&dir, args.nodes)?;
    std::fs::write(dir.join(DEMO_PID), std::process::id().to_string())
        .map_err(|e| fail(format!("cannot write {}: {e}", dir.join(DEMO_PID).display())))?;
    let mut cluster = DemoCluster { dir: dir.clone(), nodes: Vec::new(), children: Vec::new(), stopped: false };
    let started = tokio::select! {
        r = start(&args, &mut cluster, fmt) => Some(r),
        () = signals.recv() => None,
    };
    let result = match started {
        Some(Ok(())) => {
            signals.recv().await;
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => {
            say("\ninterrupted while starting");
            Ok(())
        }
    };
    say("\nstopping the demo cluster...");
    let left = cluster.stop();
    if !left.is_empty() {
        if let Some(t) = tmp {
            let _ = t.keep();
        }
        return Err(fail(format!(
            "could not stop everything the demo started: {} still run{}; kept {} (try `haven demo kill <node> --dir {}`; \
             processes that outlive SIGKILL are stuck in the kernel)",
            left.join(", "),
            if left.len() == 1 { "s" } else { "" },
            dir.display(),
            dir.display()
        )));
    }
    say("every agent of the demo and every process they started has stopped");
    if args.keep || args.dir.is_some() {
        say(&format!("kept {}", dir.display()));
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    } else if let Some(t) = tmp {
        match t.close() {
            Ok(()) => say(&format!("removed {}", dir.display())),
            Err(e) => eprintln!("warning: cannot remove {}: {e}", dir.display()),
        }
    }
    result
}

/// What `demo kill` or `demo restart` did: `message` for people, the rest for `-o json`.
#[derive(Debug, Serialize)]
struct Done {
    node: String,
    /// `killed` or `restarted`.
    action: &'static str,
    /// The session killed, or the new agent's pid (its session id).
    session: i32,
    /// `kill`: how many processes were killed (the agent and those it started).
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<usize>,
    /// `restart`: where the new agent answers, and the leader it rejoined under.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
    message: String,
}

impl Done {
    fn print(&self, fmt: Format) {
        if fmt == Format::Json {
            output::json(self);
        } else {
            println!("{}", self.message);
        }
    }
}

/// Prints a line of the shutdown. Unlike `println!` it cannot panic when the terminal has
/// gone (SIGHUP) or the reader of a pipe has exited, which would skip the cleanup.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Refuses a directory where an earlier demo left something: an agent that still runs (its
/// demo was killed without a chance to stop it), or a node's state (a kept directory),
/// which the new agents would start from and the new cluster could not be founded on.
fn earlier_demo_gone(dir: &Path, nodes: u32) -> Result<(), Failure> {
    for i in 1..=9 {
        let node = DemoNode::new(dir, &format!("node{i}"));
        if let NodeRun::Running { pid: sid, .. } | NodeRun::Orphans { sid, .. } = node.run_state() {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "{} of an earlier demo in {} still runs (session {sid}); kill it with {}, or pick another --dir",
                    node.name,
                    dir.display(),
                    node.kill_hint()
                ),
            });
        }
        if i <= nodes && node.dir.join("state").exists() {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "{} holds the state of an earlier demo ({}); remove it, or pick another --dir",
                    dir.display(),
                    node.dir.join("state").display()
                ),
            });
        }
    }
    Ok(())
}

/// The signals that end the demo: Ctrl-C, SIGTERM, and SIGHUP (its terminal closed).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let catch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| {
                fail(format!("cannot catch {name} ({e}), so the demo could not stop its agents on exit; not starting"))
            })
        };
        Ok(Signals {
            int: catch(SignalKind::interrupt(), "SIGINT")?,
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            hup: catch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

fn fail(message: String) -> Failure {
    Failure { code: EXIT_UNAVAILABLE, message }
}

fn refused(message: String) -> Failure {
    Failure { code: EXIT_REFUSED, message }
}

/// `path` made absolute (and free of symlinks when it exists), so the configs, the agents'
/// command lines and later `demo kill|restart --dir` name the same files from any cwd.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::env::current_dir().map(|cwd| cwd.join(path)))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The pid of the `haven demo` that runs `dir`'s cluster, if one runs.
fn demo_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(DEMO_PID)).ok()?.trim().parse().ok()?;
    match process(pid) {
        Proc::Alive { args } if args.iter().any(|a| a == "demo") => Some(pid),
        _ => None,
    }
}

/// A process as /proc shows it (through `haven_drivers::procfs`).
enum Proc {
    /// No such process.
    Gone,
    /// Exited, not yet reaped by its parent; `comm` is its command name.
    Zombie { comm: String },
    /// Running, with its command line.
    Alive { args: Vec<String> },
}

fn process(pid: i32) -> Proc {
    match procfs::stat(pid) {
        Ok(Some(st)) if st.is_dead() => Proc::Zombie { comm: st.comm },
        Ok(Some(_)) => Proc::Alive { args: procfs::cmdline(pid).unwrap_or_default() },
        // Gone, or a stat not in the expected format: nothing we could act on.
        Ok(None) | Err(_) => Proc::Gone,
    }
}

/// What runs of a demo node now.
#[derive(Debug, PartialEq, Eq)]
enum NodeRun {
    /// Its agent is alive (its pid is the session id); `others` processes it started run too.
    Running { pid: i32, others: usize },
    /// Its agent is gone, but processes it started still run in its session.
    Orphans { sid: i32, pids: Vec<i32> },
    /// Nothing of it runs; `last` is the pid its agent last ran as, if recorded.
    Stopped { last: Option<i32> },
}

/// One node of a demo directory: `<dir>/<name>` holds its `agent.toml`, `agent.log`,
/// `agent.pid` and its state.
struct DemoNode {
    demo_dir: PathBuf,
    name: String,
    dir: PathBuf,
}

impl DemoNode {
    fn new(demo_dir: &Path, name: &str) -> DemoNode {
        DemoNode { demo_dir: demo_dir.to_path_buf(), name: name.to_string(), dir: demo_dir.join(name) }
    }

    /// The node `name` of the demo in `dir`, as given to `demo kill|restart`.
    fn open(dir: &Path, name: &str) -> Result<DemoNode, Failure> {
        if !dir.is_dir() {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!("--dir {} is not a directory; give the one `haven demo` printed", dir.display()),
            });
        }
        let dir = absolute(dir);
        let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let node = DemoNode::new(&dir, name);
        if !plain || !node.config().is_file() {
            let mut nodes: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("agent.toml").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            nodes.sort();
            let has = if nodes.is_empty() {
                "it has no nodes: is it the directory `haven demo` printed?".to_string()
            } else {
                format!("its nodes are {}", nodes.join(", "))
            };
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!("{name:?} is not a node of the demo in {} ({has})", dir.display()),
            });
        }
        Ok(node)
    }

    fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("agent.pid")
    }
    fn log_file(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// The session its agent last ran in, from `agent.pid`.
    fn recorded_sid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok().filter(|p| *p > 1)
    }

    /// What runs of the node in session `sid`. A live leader that is not this node's agent
    /// means the pid was reused after the session ended (the kernel keeps a pid in use
    /// while any process of its session lives), so nothing of the node runs there.
    fn run_in(&self, sid: i32) -> NodeRun {
        let stopped = NodeRun::Stopped { last: Some(sid) };
        match process(sid) {
            Proc::Alive { args } => {
                let config = self.config();
                let is_ours = args.iter().any(|a| a == "agent")
                    && args.iter().any(|a| Path::new(a) == config || absolute(Path::new(a)) == config);
                if !is_ours {
                    return stopped;
                }
                NodeRun::Running { pid: sid, others: session_members(sid).len().saturating_sub(1) }
            }
            Proc::Zombie { comm } if comm != "haven" => stopped,
            Proc::Gone | Proc::Zombie { .. } => {
                let pids = session_members(sid);
                if pids.is_empty() { stopped } else { NodeRun::Orphans { sid, pids } }
            }
        }
    }

    /// What runs of the node now, by its pid file.
    fn run_state(&self) -> NodeRun {
        match self.recorded_sid() {
            Some(sid) => self.run_in(sid),
            None => NodeRun::Stopped { last: None },
        }
    }

    fn kill_hint(&self) -> String {
        format!("`haven demo kill {} --dir {}`", self.name, self.demo_dir.display())
    }

    /// `demo kill`: SIGKILL to the node's session, then a check that it is empty.
    fn kill(&self) -> Result<Done, Failure> {
        let (sid, count, what) = match self.run_state() {
            NodeRun::Stopped { last } => {
                let gone = last.map(|p| format!(" (its last agent, pid {p}, is gone)")).unwrap_or_default();
                return Err(refused(format!(
                    "{} is not running{gone}; nothing was killed (start it with `haven demo restart {} --dir {}`)",
                    self.name,
                    self.name,
                    self.demo_dir.display()
                )));
            }
            NodeRun::Running { pid, others } => {
                (pid, others + 1, format!("its agent (pid {pid}) and {others} processes it started"))
            }
            NodeRun::Orphans { sid, pids } => {
                (sid, pids.len(), format!("the {} processes its dead agent had started (session {sid})", pids.len()))
            }
        };
        kill_session(sid);
        let left = wait_sessions_empty(&[sid], KILL_LIMIT);
        if !left.is_empty() {
            return Err(fail(format!(
                "{} is not dead: {} processes of its session {sid} (pids {left:?}) still run {}s after SIGKILL; \
                 they may be stuck in the kernel (see `ps -o pid,stat,cmd -s {sid}`)",
                self.name,
                left.len(),
                KILL_LIMIT.as_secs()
            )));
        }
        Ok(Done {
            node: self.name.clone(),
            action: "killed",
            session: sid,
            processes: Some(count),
            address: None,
            leader: None,
            message: format!("killed {}: {what}; none is left", self.name),
        })
    }

    /// An exclusive lock on the node's `agent.lock`, held while its agent is started or the
    /// demo shuts down, so the pid file is never read between a start and its record.
    fn lock(&self) -> Result<std::fs::File, Failure> {
        let path = self.dir.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
        for _ in 0..100 {
            // SAFETY: flock(2) on a descriptor we own; no memory is touched.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(file);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(fail(format!(
            "another `haven demo` command holds {} (it is starting or stopping {}); try again when it is done",
            path.display(),
            self.name
        )))
    }

    /// `demo restart`: starts the node's agent if nothing of it runs, and waits until its
    /// API answers and it holds a lease under a leader again.
    async fn restart(&self) -> Result<Done, Failure> {
        let lock = self.lock()?;
        if demo_pid(&self.demo_dir).is_none() {
            return Err(refused(format!(
                "no `haven demo` runs for {} (it has stopped, or this is not its directory), so nothing would stop \
                 {} again; start a demo with `haven demo`",
                self.demo_dir.display(),
                self.name
            )));
        }
        match self.run_state() {
            NodeRun::Running { pid, .. } => {
                return Err(refused(format!(
                    "{} is running (agent pid {pid}); kill it first with {}, then restart it",
                    self.name,
                    self.kill_hint()
                )));
            }
            NodeRun::Orphans { sid, pids } => {
                return Err(refused(format!(
                    "{}'s agent is gone but {} processes it started still run (session {sid}, pids {pids:?}); \
                     kill them first with {}, then restart it",
                    self.name,
                    pids.len(),
                    self.kill_hint()
                )));
            }
            NodeRun::Stopped { .. } => {}
        }
        let config = haven_agent::AgentConfig::load(&self.config())
            .map_err(|e| Failure { code: EXIT_USAGE, message: e.to_string() })?;
        let addr = config.listen.clone();
        if std::net::TcpListener::bind(&addr).is_err() {
            return Err(fail(format!(
                "cannot restart {}: its address {addr} is in use by another process (see `ss -ltnp`); stop that \
                 process first",
                self.name
            )));
        }
        let log_start = std::fs::metadata(self.log_file()).map(|m| m.len()).unwrap_or(0);
        let mut child = spawn_agent(&self.dir)?;
        drop(lock);
        let pid = child.id();
        let client = Client::with_timeout(&addr, Duration::from_secs(5));
        let deadline = Instant::now() + RESTART_LIMIT;
        let mut answered = false;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!(
                    "{}'s new agent (pid {pid}) exited ({status}) instead of rejoining the cluster; nothing of it \
                     runs. The end of its log {}:\n{}",
                    self.name,
                    self.log_file().display(),
                    log_tail(&self.log_file(), log_start)
                )));
            }
            if let Ok(s) = client.cluster_status().await {
                answered = true;
                if let Some(leader) = s.leader.filter(|_| s.lease_valid) {
                    let leader = leader.name.unwrap_or_else(|| format!("node id {}", leader.id));
                    return Ok(Done {
                        node: self.name.clone(),
                        action: "restarted",
                        session: i32::try_from(pid).unwrap_or(i32::MAX),
                        processes: None,
                        address: Some(addr.clone()),
                        message: format!(
                            "restarted {}: agent pid {pid} answers on {addr} and has rejoined the cluster (leader \
                             {leader})",
                            self.name
                        ),
                        leader: Some(leader),
                    });
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let what = if answered {
            format!("answers on {addr} but has not rejoined the cluster (no leader or no lease)")
        } else {
            format!("does not answer on {addr}")
        };
        Err(fail(format!(
            "{}'s new agent (pid {pid}) runs but {what} after {}s; it is left running (stop it with {}). The end of \
             its log {}:\n{}",
            self.name,
            RESTART_LIMIT.as_secs(),
            self.kill_hint(),
            self.log_file().display(),
            log_tail(&self.log_file(), log_start)
        )))
    }
}

/// Waits up to `limit` until no process is left in any of `sessions`; returns those left.
fn wait_sessions_empty(sessions: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i32> = sessions.iter().flat_map(|s| session_members(*s)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of `log` written after byte `from`, indented, for failure messages.
fn log_tail(log: &Path, from: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(text.len());
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "  (nothing)".into();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// The running demo: its nodes and the agents this process started.
struct DemoCluster {
    dir: PathBuf,
    nodes: Vec<DemoNode>,
    /// `(index in nodes, agent)`, reaped on stop.
    children: Vec<(usize, Child)>,
    /// Whether `stop` ran (else dropping the cluster, on a panic, runs it).
    stopped: bool,
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
    }
}

impl DemoCluster {
    /// Stops everything of the demo, whatever happened since it started: every agent it
    /// started and the one each node's pid file names now (`demo restart` writes it). The
    /// agents get SIGTERM first (they stop their resources), then every session left is
    /// SIGKILLed. Returns what still runs after that (empty when all is gone).
    fn stop(&mut self) -> Vec<String> {
        self.stopped = true;
        // Held to the end: a `demo restart` waiting for a lock then finds no demo and refuses.
        let _locks: Vec<std::fs::File> = self.nodes.iter().filter_map(|n| n.lock().ok()).collect();
        let _ = std::fs::remove_file(self.dir.join(DEMO_PID));
        let mut sessions: BTreeMap<i32, usize> = BTreeMap::new();
        for (i, child) in &self.children {
            sessions.insert(child.id() as i32, *i);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(sid) = node.recorded_sid() {
                sessions.insert(sid, i);
            }
        }
        // Only sessions that are still the demo's (see `DemoNode::run_in`).
        sessions.retain(|sid, i| self.nodes[*i].run_in(*sid) != NodeRun::Stopped { last: Some(*sid) });
        for (sid, i) in &sessions {
            if matches!(self.nodes[*i].run_in(*sid), NodeRun::Running { .. }) {
                // SAFETY: kill(2) touches no memory; `sid` is an agent of this demo, checked just now.
                unsafe {
                    libc::kill(*sid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + GRACEFUL_LIMIT;
        while Instant::now() < deadline
            && sessions.iter().any(|(sid, i)| matches!(self.nodes[*i].run_in(*sid), NodeRun::Running { .. }))
        {
            self.reap();
            std::thread::sleep(Duration::from_millis(50));
        }
        // Looked at again: a session that ended meanwhile may have had its pid reused.
        let sids: Vec<i32> = sessions
            .iter()
            .filter(|(sid, i)| self.nodes[**i].run_in(**sid) != NodeRun::Stopped { last: Some(**sid) })
            .map(|(sid, _)| *sid)
            .collect();
        for sid in &sids {
            kill_session(*sid);
        }
        wait_sessions_empty(&sids, KILL_LIMIT);
        self.reap();
        sessions
            .iter()
            .filter(|(sid, _)| sids.contains(sid))
            .filter_map(|(sid, i)| {
                let left = session_members(*sid);
                (!left.is_empty()).then(|| format!("{} (session {sid}: pids {left:?})", self.nodes[*i].name))
            })
            .collect()
    }

    fn reap(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.try_wait();
        }
    }
}

async fn start(args: &DemoArgs, cluster: &mut DemoCluster, fmt: Format) -> Result<(), Failure> {
    let mut clients = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("node{i}");
        let Some(port) = u16::try_from(u32::from(args.base_port) + i).ok() else {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "--base-port {} is too high for {} nodes (node i uses base-port + i); use at most {}",
                    args.base_port,
                    args.nodes,
                    u32::from(u16::MAX) - args.nodes
                ),
            });
        };
        let addr = format!("127.0.0.1:{port}");
        if std::net::TcpListener::bind(&addr).is_err() {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "port {addr} is in use; pick other ports with --base-port (node i uses base-port + i)"
                ),
            });
        }
        let node = DemoNode::new(&cluster.dir, &name);
        std::fs::create_dir_all(&node.dir).map_err(|e| fail(format!("cannot create {}: {e}", node.dir.display())))?;
        let config = format!(
            "id = {i}\nname = \"{name}\"\nlisten = \"{addr}\"\nstate_dir = \"{}\"\n\n[timing]\nprofile = \"{}\"\n",
            node.dir.join("state").display(),
            args.profile
        );
        std::fs::write(node.config(), config)
            .map_err(|e| fail(format!("cannot write {}: {e}", node.config().display())))?;
        let child = spawn_agent(&node.dir)?;
        cluster.nodes.push(node);
        cluster.children.push((cluster.nodes.len() - 1, child));
        clients.push((name, addr.clone(), Client::with_timeout(&addr, Duration::from_secs(70))));
    }
    for (name, addr, c) in &clients {
        wait_for(&format!("agent {name} to answer on {addr}"), Duration::from_secs(30), || async {
            c.cluster_status().await.is_ok()
        })
        .await?;
    }
    let (_, first_addr, first) = &clients[0];
    let init = first.init_cluster("demo").await?;
    // The demo uses the cluster's first admin token, and keeps it in its directory (for
    // nobody but this user) beside printing it.
    let admin_token = init.admin_token.clone();
    let token_file = cluster.dir.join("admin.token");
    write_private(&token_file, &format!("{admin_token}\n"))
        .map_err(|e| fail(format!("cannot write {}: {e}", token_file.display())))?;
    let first = &first.with_token(&admin_token);
    // One join token for all the other nodes; the demo prints it (an operator's would be
    // shown once, to them, by `haven cluster token create`).
    let uses = u32::try_from(clients.len().saturating_sub(1)).unwrap_or(1).max(1);
    let request = haven_api::JoinTokenRequest { ttl: None, uses: Some(uses) };
    let join = first.create_join_token(&request).await?;
    println!(
        "cluster CA fingerprint {}; the nodes join with token {} (admits {uses}, for an hour)",
        init.ca_fingerprint, join.token
    );
    for (_, _, c) in &clients[1..] {
        c.join_cluster(first_addr, &join.token, &join.ca_fingerprint).await?;
    }
    let token = admin_token;
    create_samples(first).await?;
    let vm = if args.no_vm { Err("--no-vm was given".to_string()) } else { prepare_vm_volume(&cluster.dir).await };
    let with_vm = match vm {
        Ok(volume) => {
            create_vm_sample(first, &volume).await?;
            println!("sample VM: a test guest (Debian cloud kernel + busybox) in group \"vm\", booting under QEMU");
            true
        }
        Err(why) => {
            println!("no sample VM: {why}; the demo runs process resources only");
            false
        }
    };
    let limit = if with_vm { 180 } else { 60 };
    wait_for("the sample groups to come online", Duration::from_secs(limit), || async {
        let groups = first.groups().await.unwrap_or_default();
        !groups.is_empty() && groups.iter().all(|g| g.state == "online")
    })
    .await?;

    let nodes = first.nodes().await?;
    let groups = first.groups().await?;
    let servers: Vec<&str> = clients.iter().map(|(_, addr, _)| addr.as_str()).collect();
    let servers = servers.join(",");
    if fmt == Format::Json {
        output::json(&Started {
            dir: &cluster.dir,
            groups: &groups,
            nodes: &nodes,
            server: first_addr,
            servers: &servers,
            token: &token,
        });
        return Ok(());
    }
    let dir = cluster.dir.display();
    println!("Haven demo: {} nodes on loopback, state and logs in {dir}\n", clients.len());
    crate::output::table(
        &["NODE", "STATUS", "ADDRESS", "GROUPS"],
        nodes
            .iter()
            .map(|n| vec![n.node.name.clone(), n.status.clone(), n.node.address.clone(), output::list(&n.groups)])
            .collect(),
    );
    println!();
    crate::output::table(
        &["GROUP", "STATE", "OWNER", "RESOURCES"],
        groups
            .iter()
            .map(|g| {
                vec![
                    g.group.spec.name.clone(),
                    g.state.clone(),
                    output::opt(&g.group.owner),
                    output::list(&g.resources),
                ]
            })
            .collect(),
    );
    let web_owner = groups
        .iter()
        .find(|g| g.group.spec.name == "web")
        .and_then(|g| g.group.owner.clone())
        .unwrap_or("node1".into());
    // Web moves there, then that node dies: web fails over again, to a survivor.
    let other = nodes.iter().map(|n| n.node.name.clone()).find(|n| *n != web_owner).unwrap_or(web_owner.clone());
    let mut tries: Vec<(String, &str)> = Vec::new();
    if let Some(exe_dir) = path_hint() {
        tries.push((format!("export PATH={exe_dir}:$PATH"), "the `haven` that runs this demo"));
    }
    tries.extend([
        (format!("export HAVEN_SERVER={servers}"), "every node: each command uses the first that answers"),
        (format!("export HAVEN_TOKEN={token}"), "the demo's admin API token (also in admin.token)"),
        ("haven node list".into(), ""),
        ("haven group list".into(), ""),
        ("haven group show web".into(), ""),
        ("curl -s http://127.0.0.1:18080/ | head -3".into(), "the web group's service"),
        (format!("haven group move web --to {other}"), "planned move"),
        (format!("haven demo kill {other} --dir {dir}"), "web's node dies: web fails over"),
        ("haven group list".into(), "web is back on a survivor"),
        ("haven history --group web".into(), "what happened and why"),
        (format!("haven demo restart {other} --dir {dir}"), "it comes back and rejoins"),
        ("haven vm list".into(), "the sample VM (if QEMU is installed)"),
        ("haven vm console vm".into(), "its serial console"),
        ("haven -o json group list".into(), ""),
    ]);
    let width = tries.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    println!("\nTry, in another terminal:");
    for (command, comment) in &tries {
        if comment.is_empty() {
            println!("  {command}");
        } else {
            println!("  {command:width$}   # {comment}");
        }
    }
    println!(
        "\nThe API is at http://{first_addr}/api/v1 (OpenAPI: /api/v1/openapi.json), plain HTTP on loopback: send \
         the token as `Authorization: Bearer $HAVEN_TOKEN`.\n\
         Press Ctrl-C to stop the demo and clean up."
    );
    Ok(())
}

/// `haven -o json demo`, once the cluster runs. Its fields are in alphabetical order, the
/// order they were always printed in.
#[derive(Serialize)]
struct Started<'a> {
    dir: &'a Path,
    groups: &'a [GroupView],
    nodes: &'a [NodeView],
    /// The first node's `host:port`.
    server: &'a str,
    /// Every node's, separated by commas (for `HAVEN_SERVER`).
    servers: &'a str,
    /// The admin API token the demo uses (for `HAVEN_TOKEN`).
    token: &'a str,
}

/// Writes `text` to a new file at `path` that only this user may read (mode 0600).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

/// The directory of this binary when `haven` in PATH is not this binary: the demo then
/// prints `export PATH=<it>:$PATH`, so the commands it suggests run the same build.
fn path_hint() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("haven")).find(|p| p.is_file()));
    if on_path.and_then(|p| std::fs::canonicalize(p).ok()).as_ref() == Some(&exe) {
        return None;
    }
    Some(exe.parent()?.display().to_string())
}

async fn create_samples(c: &Client) -> Result<(), Failure> {
    // A web server whose health check is a real HTTP GET, if python3 is there to serve it.
    let web_params = if in_path("python3") {
        let mut p = specs::process_params(&["python3", "-m", "http.server", "18080", "--bind", "127.0.0.1"]);
        p.check = Some(HealthCheck::Http { url: "http://127.0.0.1:18080/".into(), timeout: Dur::from_secs(5) });
        p
    } else {
        println!(
            "note: python3 is not installed, so the sample web group runs `sleep infinity` instead of a web server"
        );
        specs::process_params(&["sleep", "infinity"])
    };
    let looks_alive_1s = ResourceProps { looks_alive_interval: Dur::from_secs(1), ..ResourceProps::default() };
    let groups =
        [GroupSpec { preferred_owners: vec!["node1".into()], ..GroupSpec::new("web") }, GroupSpec::new("batch")];
    let resources = [
        ResourceSpec {
            props: ResourceProps { is_alive_interval: Dur::from_secs(10), ..looks_alive_1s.clone() },
            ..specs::resource("web-server", "web", haven_model::ResourceKind::Process, &web_params)
        },
        ResourceSpec { props: looks_alive_1s.clone(), ..specs::process("queue", "batch", &["sleep", "infinity"]) },
        ResourceSpec {
            props: looks_alive_1s,
            depends_on: vec!["queue".into()],
            ..specs::process("worker", "batch", &["sh", "-c", "while :; do date >> worker.log; sleep 1; done"])
        },
    ];
    for g in &groups {
        c.create_group(g).await?;
    }
    for r in &resources {
        c.create_resource(r).await?;
    }
    Ok(())
}

/// A shared volume for the sample VM under the demo directory: `.haven-volume`, an ext4
/// data disk and the VM's definition, using the test guest built by
/// `scripts/build-test-guest`. `Err` says why there is no VM (no QEMU, no guest, …).
async fn prepare_vm_volume(dir: &Path) -> Result<PathBuf, String> {
    if !in_path("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)".into());
    }
    if !in_path("mkfs.ext4") {
        return Err("mkfs.ext4 is not installed (Debian: apt-get install e2fsprogs)".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-guest");
    if !script.is_file() {
        return Err(format!("the test guest's build script {} is not here", script.display()));
    }
    println!("building (or reusing) the test guest with {} ...", script.display());
    // Async and killed on drop: a Ctrl-C while the guest builds stops the build too.
    let out = tokio::process::Command::new(&script)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let guest = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default());
    let volume = dir.join("shared").join("vol1");
    std::fs::create_dir_all(&volume).map_err(|e| format!("cannot create {}: {e}", volume.display()))?;
    std::fs::write(volume.join(".haven-volume"), "demo-vol-1\n").map_err(|e| e.to_string())?;
    let image = volume.join("data.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(32 << 20)).map_err(|e| e.to_string())?;
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).output().map_err(|e| e.to_string())?;
    if !mkfs.status.success() {
        return Err(format!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&mkfs.stderr).trim()));
    }
    let definition = format!(
        "name = \"vm\"\nvcpus = 1\nmemory_mib = 192\nheartbeat = true\n[boot]\nkernel = \"{}\"\ninitrd = \"{}\"\n\
         cmdline = \"console=ttyS0 haven.name=vm quiet\"\n[[disks]]\npath = \"data.img\"\n",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display()
    );
    std::fs::write(volume.join("vm.toml"), definition).map_err(|e| e.to_string())?;
    Ok(volume)
}

async fn create_vm_sample(c: &Client, volume: &Path) -> Result<(), Failure> {
    c.create_group(&GroupSpec { preferred_owners: vec!["node2".into()], ..GroupSpec::new("vm") }).await?;
    let resources = [
        specs::dir_disk("vol1", "vm", "demo-vol-1", "vol1", &volume.to_string_lossy()),
        ResourceSpec { depends_on: vec!["vol1".into()], ..specs::vm_config("vm-config", "vm", "vol1/vm.toml") },
        ResourceSpec {
            props: ResourceProps {
                looks_alive_interval: Dur::from_secs(1),
                is_alive_interval: Dur::from_secs(5),
                ..ResourceProps::default()
            },
            depends_on: vec!["vm-config".into()],
            ..specs::vm("vm", "vm", "vm-config")
        },
    ];
    for r in &resources {
        c.create_resource(r).await?;
    }
    Ok(())
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(fail(format!("timed out after {}s waiting for {what}; see the agents' logs", limit.as_secs())))
}

/// Starts `haven agent` for the node whose directory is `nd`, in a session of its own,
/// logging to `nd/agent.log` and recording its pid (its session id) in `nd/agent.pid`.
fn spawn_agent(nd: &Path) -> Result<Child, Failure> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find the haven binary: {e}")))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(nd.join("agent.log"))
        .map_err(|e| fail(format!("cannot open {}: {e}", nd.join("agent.log").display())))?;
    let log2 = log.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent").arg("--config").arg(nd.join("agent.toml")).stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start the agent for {}: {e}", nd.display())))?;
    // Written whole (rename) so a reader never sees half a pid.
    let pid_file = nd.join("agent.pid");
    let tmp = nd.join("agent.pid.new");
    if let Err(e) = std::fs::write(&tmp, child.id().to_string()).and_then(|()| std::fs::rename(&tmp, &pid_file)) {
        // Unrecorded, nothing could stop it later: stop it now.
        kill_session(child.id() as i32);
        let _ = child.wait();
        return Err(fail(format!("cannot write {}: {e}; the agent was not started", pid_file.display())));
    }
    Ok(child)
}

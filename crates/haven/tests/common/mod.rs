//! The lab harness for the multi-process tests of tier 3 (see DESIGN.md, "Testing tiers"):
//! real `haven agent` processes on loopback, each in a session of its own, that a test can
//! kill whole (agent and resource processes at once, the way a host dies), stop gracefully
//! and start again.
//!
//! Every wait is bounded and says what it waits for; on timeout it panics with the last
//! lines of every agent's log. Dropping the [`Lab`] SIGKILLs every session it started, so
//! no process outlives a test, even one that panicked (its directory is then kept and its
//! path printed, for the logs).
//!
//! [`Lab::start_netns`] and [`Lab::start_with`] put each node in a network namespace of its
//! own, wired to a bridge in the root namespace, so a test can cut nodes off for real
//! ([`Lab::isolate`], [`Lab::separate`]) and heal them; dropping the lab deletes them.
#![allow(dead_code, unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_agent::host::{kill_session, session_members};
use haven_api::{Client, ClusterStatus, GroupView, NodeView, ResourceView, specs};
use haven_model::{Dur, GroupSpec, ResourceProps, ResourceSpec, ResourceState};
use serde_json::Value;

mod guest_console;
#[allow(unused_imports)] // only the VM tests use it
pub use guest_console::assert_guest_found_its_disk;

/// The `haven` binary under test.
pub const HAVEN: &str = env!("CARGO_BIN_EXE_haven");

/// How often [`Lab::wait_for`] looks again.
const POLL: Duration = Duration::from_millis(100);
/// Agent log lines quoted when a wait times out.
const LOG_TAIL_LINES: usize = 25;

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
    child: Option<Child>,
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

/// A cluster of real agents on loopback, in a temporary directory.
pub struct Lab {
    tmp: Option<tempfile::TempDir>,
    pub nodes: Vec<LabNode>,
    /// Every session this lab started (agent pids), killed on drop.
    sessions: Vec<i32>,
    started: Instant,
    /// `127.a.b` (or `10.a.b` with namespaces), the lab's addresses: tags its progress
    /// lines when labs run side by side.
    net: String,
    /// The namespaces, veths and bridge, when the lab uses them; deleted on drop (after the
    /// processes are killed).
    netns: Option<Netns>,
}

impl Lab {
    /// Writes the configs of `n` nodes (`node1`..`noden`, ids 1..n, the `aggressive` timing
    /// profile) without starting anything.
    pub fn new(n: usize) -> Lab {
        let nodes: Vec<(String, Role)> = (1..=n).map(|i| (format!("node{i}"), Role::Agent)).collect();
        Lab::create(&nodes, false).expect("a loopback lab needs no privileges")
    }

    /// Writes the configs of `nodes` (ids 1.. in order, the `aggressive` timing profile),
    /// on loopback or each in a network namespace of its own, without starting anything.
    /// `Err` (with the reason) only if network namespaces are wanted and cannot be made.
    fn create(nodes: &[(String, Role)], netns: bool) -> Result<Lab, String> {
        let n = nodes.len();
        let tmp = tempfile::Builder::new().prefix("haven-lab-").tempdir().expect("cannot create the lab directory");
        let (net, ns) = if netns {
            let ns = Netns::create(n)?;
            (ns.subnet.clone(), Some(ns))
        } else {
            (free_loopback_net(n), None)
        };
        let mut lab_nodes = Vec::new();
        for (k, (name, role)) in nodes.iter().enumerate() {
            let i = k + 1;
            let addr = format!("{net}.{i}:{LAB_PORT}");
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).expect("cannot create a node directory");
            let config = format!(
                "id = {i}\nname = \"{name}\"\nlisten = \"{addr}\"\nstate_dir = \"{}\"\n\n[timing]\nprofile = \"aggressive\"\n",
                dir.join("state").display()
            );
            std::fs::write(dir.join("agent.toml"), config).expect("cannot write an agent config");
            let client = Client::with_timeout(&addr, Duration::from_secs(10));
            lab_nodes.push(LabNode {
                id: i as u64,
                name: name.clone(),
                addr,
                dir,
                client,
                witness: *role == Role::Witness,
                netns: ns.as_ref().map(|ns| ns.namespaces[k].clone()),
                child: None,
            });
        }
        let how = match &ns {
            Some(ns) => format!("each in a network namespace, bridge {}", ns.bridge),
            None => "on loopback".to_string(),
        };
        println!("[lab {net}] {n} nodes {how}, in {}", tmp.path().display());
        Ok(Lab { tmp: Some(tmp), nodes: lab_nodes, sessions: Vec::new(), started: Instant::now(), net, netns: ns })
    }

    /// [`Lab::start`] with every node in a network namespace of its own (`node1`..`noden`).
    /// `None` (with the reason printed) when this host cannot make network namespaces
    /// (not root): the caller skips its test.
    pub async fn start_netns(n: usize) -> Option<Lab> {
        let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
        let nodes: Vec<(&str, Role)> = names.iter().map(|s| (s.as_str(), Role::Agent)).collect();
        Lab::start_with(&nodes, true).await
    }

    /// Starts the named nodes (the first one, a data node, founds the cluster; the others
    /// join it), on loopback or in network namespaces, and waits until every node sees all
    /// of them up, a leader and its own lease. `None` only when namespaces are wanted and
    /// this host cannot make them (the reason is printed).
    pub async fn start_with(nodes: &[(&str, Role)], netns: bool) -> Option<Lab> {
        assert!(nodes.first().is_some_and(|(_, r)| *r == Role::Agent), "the first lab node must be a data node");
        let owned: Vec<(String, Role)> = nodes.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        match Lab::create(&owned, netns) {
            Ok(lab) => Some(lab.found().await),
            Err(why) => {
                println!("SKIPPED: this test needs network namespaces: {why}");
                None
            }
        }
    }

    /// Starts `n` agents, founds a cluster on node 1 and joins the others to it through the
    /// REST API, and waits until every node sees all nodes up, a leader and its own lease.
    pub async fn start(n: usize) -> Lab {
        Lab::new(n).found().await
    }

    /// Starts every agent, founds the cluster on node 0, joins the others, and waits until
    /// every node sees all nodes up, a leader and its own lease.
    async fn found(self) -> Lab {
        let n = self.nodes.len();
        let mut lab = self;
        for i in 0..n {
            lab.spawn(i);
        }
        for i in 0..n {
            lab.wait_answering(i).await;
        }
        let init = lab.nodes[0].client.init_cluster("lab").await.expect("cluster init failed");
        for i in 1..n {
            lab.nodes[i]
                .client
                .join_cluster(&lab.nodes[0].addr, &init.join_token)
                .await
                .unwrap_or_else(|e| panic!("{} could not join: {e}", lab.nodes[i].name));
        }
        lab.wait_until(&format!("all {n} nodes up, with a leader and a lease, on every node"), 30, async || {
            for i in 0..n {
                if !lab.sees_all_up(i, n).await {
                    return false;
                }
            }
            true
        })
        .await;
        lab
    }

    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().map(|t| t.path()).expect("the lab directory exists until drop")
    }

    pub fn node(&self, i: usize) -> &LabNode {
        &self.nodes[i]
    }

    pub fn client(&self, i: usize) -> &Client {
        &self.nodes[i].client
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no lab node is called {name:?}"))
    }

    /// Seconds since the lab was created, for the progress lines.
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Prints a progress line of the test, tagged and timed like the lab's own.
    pub fn note(&self, what: &str) {
        println!("[lab {} {:6.2}s] {what}", self.net, self.t());
    }

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
        println!("[lab {} {:6.2}s] started {} (agent pid {pid}, {})", self.net, self.t(), node.name, node.addr);
        self.sessions.push(pid);
        self.nodes[i].child = Some(child);
    }

    /// Waits until node `i`'s API answers.
    pub async fn wait_answering(&self, i: usize) {
        let c = &self.nodes[i].client;
        self.wait_until(&format!("{} to answer on {}", self.nodes[i].name, self.nodes[i].addr), 20, async || {
            c.cluster_status().await.is_ok()
        })
        .await;
    }

    /// Kills node `i` as a whole, the way a host dies: SIGKILL to every process of its
    /// session (the agent and every resource process it started) at once.
    pub fn kill_node(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().unwrap_or_else(|| panic!("{} is not running", self.nodes[i].name));
        let sid = child.id() as i32;
        let killed = kill_session(sid);
        let _ = child.wait();
        self.sessions.retain(|s| *s != sid);
        println!(
            "[lab {} {:6.2}s] killed {}: {killed} processes (session {sid})",
            self.net,
            self.t(),
            self.nodes[i].name
        );
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
            println!("[lab {} {:6.2}s] SIGTERM to {}", self.net, self.t(), self.nodes[i].name);
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
            println!(
                "[lab {} {:6.2}s] {} stopped ({status}); {left} processes left in its session",
                self.net,
                self.t(),
                self.nodes[i].name
            );
        }
        leftovers
    }

    /// Polls `check` every 100 ms until it yields a value, for at most `limit_s` seconds;
    /// on timeout panics naming `what`, with the agents' last log lines.
    pub async fn wait_for<T>(&self, what: &str, limit_s: u64, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        println!("[lab {} {:6.2}s] waiting for {what} (up to {limit_s}s)", self.net, self.t());
        let begun = Instant::now();
        let deadline = begun + Duration::from_secs(limit_s);
        loop {
            if let Some(v) = check().await {
                println!("[lab {} {:6.2}s] ok after {:.2}s: {what}", self.net, self.t(), begun.elapsed().as_secs_f64());
                return v;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {limit_s}s waiting for {what}\n{}", self.logs_tail());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Lab::wait_for`] with a yes/no condition.
    pub async fn wait_until(&self, what: &str, limit_s: u64, mut check: impl AsyncFnMut() -> bool) {
        self.wait_for(what, limit_s, async || check().await.then_some(())).await
    }

    /// Asserts that `check` holds at every poll for `secs` seconds (things that must *not*
    /// happen, such as a second start); panics at the first poll where it does not.
    pub async fn hold_for(&self, what: &str, secs: f64, mut check: impl AsyncFnMut() -> Result<(), String>) {
        println!("[lab {} {:6.2}s] checking for {secs}s that {what}", self.net, self.t());
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut polls = 0;
        while Instant::now() < deadline {
            if let Err(why) = check().await {
                panic!("{what} stopped holding after {polls} polls: {why}\n{}", self.logs_tail());
            }
            polls += 1;
            tokio::time::sleep(POLL).await;
        }
        println!("[lab {} {:6.2}s] held for {secs}s ({polls} polls): {what}", self.net, self.t());
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(n.log_path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            out.push_str(&format!("---- {} ({}), last lines of {}:\n", n.name, n.addr, n.log_path().display()));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    // ---- network faults (labs with network namespaces only) ----

    fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("this lab runs on loopback; start it with Lab::start_netns or Lab::start_with(.., true)")
    }

    /// Cuts node `i` off from every other node and from the test process: its veth's end
    /// on the bridge goes down, so its packets (and everyone's packets to it) are lost, as
    /// when a host's cable is pulled. Its processes keep running.
    pub fn isolate(&self, i: usize) {
        let veth = &self.netns().host_veths[i];
        ip(&["link", "set", veth, "down"]).unwrap_or_else(|e| panic!("cannot isolate {}: {e}", self.nodes[i].name));
        println!("[lab {} {:6.2}s] isolated {} (link {veth} down)", self.net, self.t(), self.nodes[i].name);
    }

    /// Undoes [`Lab::isolate`].
    pub fn heal(&self, i: usize) {
        let veth = &self.netns().host_veths[i];
        ip(&["link", "set", veth, "up"]).unwrap_or_else(|e| panic!("cannot heal {}: {e}", self.nodes[i].name));
        println!("[lab {} {:6.2}s] healed {} (link {veth} up)", self.net, self.t(), self.nodes[i].name);
    }

    /// Separates the nodes in `which` from each other while each still reaches every other
    /// node and the test process (a partial partition): their ports on the bridge become
    /// isolated ports, which forward only to and from ports that are not.
    pub fn separate(&self, which: &[usize]) {
        for &i in which {
            let veth = &self.netns().host_veths[i];
            bridge_port_isolated(veth, true);
        }
        let names: Vec<&str> = which.iter().map(|i| self.name(*i)).collect();
        println!("[lab {} {:6.2}s] separated {} from each other", self.net, self.t(), names.join(" | "));
    }

    /// Undoes [`Lab::separate`].
    pub fn reconnect(&self, which: &[usize]) {
        for &i in which {
            let veth = &self.netns().host_veths[i];
            bridge_port_isolated(veth, false);
        }
        let names: Vec<&str> = which.iter().map(|i| self.name(*i)).collect();
        println!("[lab {} {:6.2}s] reconnected {}", self.net, self.t(), names.join(", "));
    }

    // ---- reads through the API (None when the node cannot answer) ----

    pub async fn status(&self, i: usize) -> Option<ClusterStatus> {
        self.nodes[i].client.cluster_status().await.ok()
    }

    /// The leader's id as node `i` sees it.
    pub async fn leader_seen_by(&self, i: usize) -> Option<u64> {
        self.status(i).await?.leader.map(|l| l.id)
    }

    pub async fn node_list(&self, i: usize) -> Option<Vec<NodeView>> {
        self.nodes[i].client.nodes().await.ok()
    }

    pub async fn groups(&self, i: usize) -> Option<Vec<GroupView>> {
        self.nodes[i].client.groups().await.ok()
    }

    pub async fn group(&self, i: usize, name: &str) -> Option<GroupView> {
        self.nodes[i].client.group(name).await.ok()
    }

    pub async fn resource(&self, i: usize, name: &str) -> Option<ResourceView> {
        self.nodes[i].client.resource(name).await.ok()
    }

    /// Whether node `i` sees `n` nodes, all up, a leader, and holds a lease itself.
    pub async fn sees_all_up(&self, i: usize, n: usize) -> bool {
        let Some(st) = self.status(i).await else { return false };
        let Some(nodes) = self.node_list(i).await else { return false };
        st.leader.is_some() && st.lease_valid && nodes.len() == n && nodes.iter().all(|v| v.status == "up")
    }

    /// Where `group` runs, as node `i` sees it: `Some(owner)` once the group is online
    /// there and each of its resources was last reported `online` by that owner.
    pub async fn online_on(&self, i: usize, group: &str) -> Option<String> {
        let g = self.group(i, group).await?;
        let owner = g.group.owner.clone()?;
        if g.state != "online" {
            return None;
        }
        for r in &g.resources {
            let res = self.resource(i, r).await?;
            if res.status.node.as_deref() != Some(owner.as_str()) || res.status.state != ResourceState::Online {
                return None;
            }
        }
        Some(owner)
    }

    /// Creates, through node `via`, group `g` preferring `owner` with one `process`
    /// resource `r` that appends evidence lines to `evidence` (see [`evidence_script`]).
    pub async fn create_evidence_group(&self, via: usize, owner: &str, evidence: &Path) {
        let c = self.client(via);
        c.create_group(&GroupSpec { preferred_owners: vec![owner.to_string()], ..GroupSpec::new("g") })
            .await
            .expect("create group g");
        let r = ResourceSpec {
            props: looks_alive(200),
            ..specs::process("r", "g", &["sh", "-c", &evidence_script(evidence)])
        };
        c.create_resource(&r).await.expect("create resource r");
    }

    /// Runs the CLI against node `i` with `-o json` and returns its parsed output; panics
    /// (with stderr) if it fails.
    pub async fn cli_json(&self, i: usize, args: &[&str]) -> Value {
        let out = tokio::process::Command::new(HAVEN)
            .arg("--server")
            .arg(&self.nodes[i].addr)
            .arg("-o")
            .arg("json")
            .args(args)
            .output()
            .await
            .expect("cannot run the haven CLI");
        assert!(
            out.status.success(),
            "`haven -o json {}` against {} failed ({}): {}",
            args.join(" "),
            self.nodes[i].name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("`haven -o json {}` printed no JSON ({e}): {}", args.join(" "), String::from_utf8_lossy(&out.stdout))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for &sid in &self.sessions {
            kill_session(sid);
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.wait();
            }
        }
        if std::thread::panicking()
            && let Some(tmp) = self.tmp.take()
        {
            println!("[lab {}] the test failed; kept {} for its logs", self.net, tmp.keep().display());
        }
    }
}

/// Every lab node listens on this port, each on an address of its own. It is below the
/// kernel's ephemeral range (32768 and up by default), so no outgoing connection can take
/// it while a killed node is down and the node gets its address back when it restarts.
const LAB_PORT: u16 = 7400;

/// A random `127.a.b` whose addresses `127.a.b.1..=n` are free on [`LAB_PORT`], so labs
/// running side by side (cargo runs test binaries in turn, nextest in parallel) never
/// share an address. Linux routes all of 127.0.0.0/8 to the loopback interface.
fn free_loopback_net(n: usize) -> String {
    for _ in 0..50 {
        let mut r = [0u8; 2];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
            .expect("cannot read /dev/urandom");
        let net = format!("127.{}.{}", r[0].max(1), r[1]);
        let free = (1..=n).all(|i| std::net::TcpListener::bind(format!("{net}.{i}:{LAB_PORT}")).is_ok());
        if free {
            return net;
        }
    }
    panic!("found no free 127.a.b.1..{n} addresses on port {LAB_PORT} in 50 tries");
}

// ---- network namespaces ----

/// One network namespace per node (`haven-<tag>-<i>`, address `10.a.b.<i>/24` on its
/// `eth0`, `lo` up), each wired by a veth pair (`hv<tag>h<i>` in the root namespace) to the
/// bridge `hvb<tag>`, which holds `10.a.b.254` so the test process reaches every node.
/// Dropping it deletes them all (also while a failed test unwinds).
struct Netns {
    /// `10.a.b`
    subnet: String,
    bridge: String,
    namespaces: Vec<String>,
    host_veths: Vec<String>,
    bridge_made: bool,
}

impl Netns {
    /// `Err` if the first `ip netns add` fails (not root, no `ip`): the caller skips. Any
    /// later failure panics (what was made so far is deleted by the drop).
    fn create(n: usize) -> Result<Netns, String> {
        let (tag, subnet) = free_netns_names();
        let mut ns = Netns {
            subnet: subnet.clone(),
            bridge: format!("hvb{tag}"),
            namespaces: Vec::new(),
            host_veths: Vec::new(),
            bridge_made: false,
        };
        for i in 1..=n {
            let name = format!("haven-{tag}-{i}");
            if let Err(e) = ip(&["netns", "add", &name]) {
                if i == 1 {
                    return Err(format!("`ip netns add {name}` failed: {e}"));
                }
                panic!("`ip netns add {name}` failed: {e}");
            }
            ns.namespaces.push(name);
        }
        let must = |args: &[&str]| ip(args).unwrap_or_else(|e| panic!("`ip {}` failed: {e}", args.join(" ")));
        must(&["link", "add", &ns.bridge, "type", "bridge"]);
        ns.bridge_made = true;
        must(&["addr", "add", &format!("{subnet}.254/24"), "dev", &ns.bridge]);
        must(&["link", "set", &ns.bridge, "up"]);
        for i in 1..=n {
            let netns = ns.namespaces[i - 1].clone();
            let veth = format!("hv{tag}h{i}");
            must(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
            ns.host_veths.push(veth.clone());
            must(&["link", "set", &veth, "master", &ns.bridge, "up"]);
            must(&["-n", &netns, "addr", "add", &format!("{subnet}.{i}/24"), "dev", "eth0"]);
            must(&["-n", &netns, "link", "set", "eth0", "up"]);
            must(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other; then the (empty) namespaces.
        for v in &self.host_veths {
            if let Err(e) = ip(&["link", "del", v]) {
                println!("warning: cannot delete veth {v}: {e}");
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                println!("warning: cannot delete network namespace {ns}: {e}");
            }
        }
        if self.bridge_made
            && let Err(e) = ip(&["link", "del", &self.bridge])
        {
            println!("warning: cannot delete bridge {}: {e}", self.bridge);
        }
    }
}

/// Runs `ip ARGS`; `Err` with its stderr if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn bridge_port_isolated(veth: &str, on: bool) {
    let state = if on { "on" } else { "off" };
    let out = Command::new("bridge")
        .args(["link", "set", "dev", veth, "isolated", state])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run bridge (iproute2)");
    assert!(
        out.status.success(),
        "`bridge link set dev {veth} isolated {state}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A random tag (for namespace and interface names) and a `10.a.b` subnet that no
/// interface or route of this host uses, so labs running side by side never collide.
fn free_netns_names() -> (String, String) {
    let text = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let used = format!("{}{}{}", text(&["-o", "-4", "addr"]), text(&["-4", "route"]), text(&["netns", "list"]));
    for _ in 0..50 {
        let mut r = [0u8; 5];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
            .expect("cannot read /dev/urandom");
        let subnet = format!("10.{}.{}", 64 + r[0] % 128, r[1]);
        let tag = format!("{:02x}{:02x}{:02x}", r[2], r[3], r[4]);
        if !used.contains(&format!("{subnet}.")) && !used.contains(&tag) {
            return (tag, subnet);
        }
    }
    panic!("found no free 10.a.b subnet for the lab in 50 tries");
}

// ---- processes, seen through /proc ----

/// The pid recorded in a resource's pid file (`<run_dir>/pid`: "<pid> <start time>").
pub fn pid_in(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join("pid")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| *s != "Z"))
}

/// The working directory of `pid`.
pub fn cwd_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Live processes whose working directory is `dir` (a resource's run directory).
pub fn processes_in(dir: &Path) -> Vec<i32> {
    all_pids().into_iter().filter(|pid| alive(*pid) && cwd_of(*pid).as_deref() == Some(dir)).collect()
}

/// SIGKILLs one process.
pub fn sigkill(pid: i32) {
    // SAFETY: kill(2) touches no memory; the caller read the pid from a pid file just now.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session, …
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

// ---- request bodies ----

/// Default resource properties but the cheap check every `ms` milliseconds (the lab's
/// resources are watched closely, so failures are seen at once).
pub fn looks_alive(ms: u64) -> ResourceProps {
    ResourceProps { looks_alive_interval: Dur::from_millis(ms), ..ResourceProps::default() }
}

/// Group `name` preferring `owners`, in order.
pub fn group_preferring(name: &str, owners: &[&str]) -> GroupSpec {
    GroupSpec { preferred_owners: owners.iter().map(|o| o.to_string()).collect(), ..GroupSpec::new(name) }
}

// ---- evidence written by the resource itself ----

/// A shell loop for a `process` resource that appends `<cwd> <shell pid> <ns since the
/// epoch>` to `file` about every 10 ms for as long as it runs: which copy of the resource
/// ran where and when, in its own words. A copy killed with SIGKILL leaves no "stopped"
/// line; its last line is as close to its end as the evidence can say.
pub fn evidence_script(file: &Path) -> String {
    format!("while :; do echo \"$(pwd) $$ $(date +%s%N)\" >> {}; sleep 0.01; done", file.display())
}

/// One copy of a resource (one shell, in one run directory), as its evidence shows it.
#[derive(Clone, Debug)]
pub struct Stint {
    pub dir: PathBuf,
    pub pid: i32,
    pub first_ns: u128,
    pub last_ns: u128,
    pub lines: usize,
}

/// The copies that wrote to `file`, by their first line.
pub fn stints(file: &Path) -> Vec<Stint> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out: Vec<Stint> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(pid), Some(t)) =
            (f.first(), f.get(1).and_then(|p| p.parse().ok()), f.get(2).and_then(|t| t.parse::<u128>().ok()))
        else {
            continue; // a line being written as we read
        };
        match out.iter_mut().find(|s| s.pid == pid && s.dir == Path::new(dir)) {
            Some(s) => {
                s.first_ns = s.first_ns.min(t);
                s.last_ns = s.last_ns.max(t);
                s.lines += 1;
            }
            None => out.push(Stint { dir: PathBuf::from(dir), pid, first_ns: t, last_ns: t, lines: 1 }),
        }
    }
    out.sort_by_key(|s| s.first_ns);
    out
}

/// Lines written from `dir` (a run directory), by every copy that ran there.
pub fn lines_from(file: &Path, dir: &Path) -> usize {
    stints(file).iter().filter(|s| s.dir == dir).map(|s| s.lines).sum()
}

/// Asserts that no two copies in `file` ever ran at the same time: each copy's last line
/// comes before the next copy's first. Returns the shortest gap between copies, in ms.
pub fn assert_no_overlap(file: &Path) -> f64 {
    let all = stints(file);
    let listing = || {
        all.iter()
            .map(|s| {
                format!("  {} (pid {}): {} lines, {} .. {}", s.dir.display(), s.pid, s.lines, s.first_ns, s.last_ns)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut min_gap = f64::INFINITY;
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.last_ns < b.first_ns,
            "two copies ran at once: {} (pid {}) wrote until {}, after {} (pid {}) began at {}\n{}",
            a.dir.display(),
            a.pid,
            a.last_ns,
            b.dir.display(),
            b.pid,
            b.first_ns,
            listing()
        );
        min_gap = min_gap.min((b.first_ns - a.last_ns) as f64 / 1e6);
    }
    println!("evidence: {} copies, none overlapping (shortest gap {min_gap:.0} ms)\n{}", all.len(), listing());
    min_gap
}

// ---- the test guest ----

/// Whether `program --version` runs and succeeds.
pub fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The test guest's directory (vmlinuz, initrd.img), built by `scripts/build-test-guest`
/// if missing.
pub fn test_guest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-guest");
    let out = Command::new(&script).output().expect("cannot run scripts/build-test-guest");
    assert!(out.status.success(), "building the test guest failed: {}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default());
    assert!(dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(), "no test guest in {}", dir.display());
    dir
}

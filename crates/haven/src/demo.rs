//! `haven demo`: a local cluster of real agent processes on loopback, with sample groups,
//! for trying Haven on one machine. Each agent runs in its own session, and so do the
//! resource processes it starts, so `haven demo kill <node>` can kill a node as a whole
//! (agent and resources at once), the way a host dies.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use haven_api::{Client, GroupView, InitResponse, NodeView};
use serde_json::json;

use crate::cli::{EXIT_UNAVAILABLE, EXIT_USAGE, Failure};
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
    #[command(subcommand)]
    pub action: Option<DemoAction>,
}

#[derive(Subcommand, Debug)]
pub enum DemoAction {
    /// Kill a demo node as a whole (its agent and every process it started) with SIGKILL.
    Kill {
        node: String,
        /// The demo's directory (printed by `haven demo`).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Start a killed demo node again.
    Restart {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

pub async fn run(args: DemoArgs, fmt: Format) -> Result<(), Failure> {
    match args.action {
        Some(DemoAction::Kill { node, dir }) => return kill_node(&dir, &node),
        Some(DemoAction::Restart { node, dir }) => {
            let child = spawn_agent(&dir.join(&node))?;
            println!("restarted {node} (agent pid {})", child.id());
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
    let (dir, _tmp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("cannot create {}: {e}", d.display())))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("haven-demo-").tempdir().map_err(|e| fail(e.to_string()))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut cluster = DemoCluster { dir: dir.clone(), agents: Vec::new() };
    let result = start(&args, &mut cluster, fmt).await;
    if let Err(e) = result {
        cluster.stop();
        return Err(e);
    }
    wait_for_signal().await;
    println!("\nstopping the demo cluster...");
    cluster.stop();
    if args.keep || args.dir.is_some() {
        println!("kept {}", dir.display());
        if let Some(t) = _tmp {
            let _ = t.keep();
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn fail(message: String) -> Failure {
    Failure { code: EXIT_UNAVAILABLE, message }
}

struct DemoCluster {
    dir: PathBuf,
    agents: Vec<(String, Child)>,
}

impl DemoCluster {
    /// Asks every agent to stop (they stop their resources), then kills what remains.
    fn stop(&mut self) {
        for (_, child) in &self.agents {
            // SAFETY: kill(2) with a pid we spawned and still hold; no memory is touched.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, child) in &mut self.agents {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill_node(&self.dir, name);
            let _ = child.wait();
        }
    }
}

fn node_dir(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("node{i}"))
}

async fn start(args: &DemoArgs, cluster: &mut DemoCluster, fmt: Format) -> Result<(), Failure> {
    let mut clients = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("node{i}");
        let port = args.base_port as u32 + i;
        if port > u16::MAX as u32 {
            return Err(Failure { code: EXIT_USAGE, message: "--base-port is too high".into() });
        }
        let addr = format!("127.0.0.1:{port}");
        if std::net::TcpListener::bind(&addr).is_err() {
            return Err(Failure {
                code: EXIT_USAGE,
                message: format!(
                    "port {addr} is in use; pick other ports with --base-port (node i uses base-port + i)"
                ),
            });
        }
        let nd = node_dir(&cluster.dir, i);
        std::fs::create_dir_all(&nd).map_err(|e| fail(format!("cannot create {}: {e}", nd.display())))?;
        let config = format!(
            "id = {i}\nname = \"{name}\"\nlisten = \"{addr}\"\nstate_dir = \"{}\"\n\n[timing]\nprofile = \"{}\"\n",
            nd.join("state").display(),
            args.profile
        );
        std::fs::write(nd.join("agent.toml"), config).map_err(|e| fail(e.to_string()))?;
        let child = spawn_agent(&nd)?;
        cluster.agents.push((name.clone(), child));
        clients.push((name, addr.clone(), Client::with_timeout(&addr, Duration::from_secs(70))));
    }
    for (name, addr, c) in &clients {
        wait_for(&format!("agent {name} to answer on {addr}"), Duration::from_secs(30), || async {
            c.get::<serde_json::Value>("/api/v1/cluster").await.is_ok()
        })
        .await?;
    }
    let (_, first_addr, first) = &clients[0];
    let init: InitResponse =
        first.post("/api/v1/cluster/init", &json!({"name": "demo"})).await.map_err(Failure::from)?;
    for (_, _, c) in &clients[1..] {
        let _: NodeView = c
            .post("/api/v1/cluster/join", &json!({"address": first_addr, "token": init.join_token}))
            .await
            .map_err(Failure::from)?;
    }
    create_samples(first).await?;
    let with_vm = match prepare_vm_volume(&cluster.dir) {
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
        let groups: Vec<GroupView> = first.get("/api/v1/groups").await.unwrap_or_default();
        !groups.is_empty() && groups.iter().all(|g| g.state == "online")
    })
    .await?;

    let nodes: Vec<NodeView> = first.get("/api/v1/nodes").await.map_err(Failure::from)?;
    let groups: Vec<GroupView> = first.get("/api/v1/groups").await.map_err(Failure::from)?;
    if fmt == Format::Json {
        output::json(&json!({"dir": cluster.dir, "server": first_addr, "nodes": nodes, "groups": groups}));
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
    let other = nodes.iter().map(|n| n.node.name.clone()).find(|n| *n != web_owner).unwrap_or("node2".into());
    println!(
        "\nTry, in another terminal:\n\
         \x20 export HAVEN_SERVER={first_addr}\n\
         \x20 haven node list\n\
         \x20 haven group list\n\
         \x20 haven group show web\n\
         \x20 curl -s http://127.0.0.1:18080/ | head -3          # the web group's service\n\
         \x20 haven group move web --to {other}                  # planned move\n\
         \x20 haven demo kill {web_owner} --dir {dir}            # a node dies: web fails over\n\
         \x20 haven demo restart {web_owner} --dir {dir}         # it comes back and rejoins\n\
         \x20 haven history --group web                          # what happened and why\n\
         \x20 haven vm list                                      # the sample VM (if QEMU is installed)\n\
         \x20 haven vm console vm                                # its serial console\n\
         \x20 haven -o json group list\n\
         \nThe API is at http://{first_addr}/api/v1 (OpenAPI: /api/v1/openapi.json).\n\
         Press Ctrl-C to stop the demo and clean up."
    );
    Ok(())
}

async fn create_samples(c: &Client) -> Result<(), Failure> {
    // A web server whose health check is a real HTTP GET, if python3 is there to serve it.
    let web_params = if haven_agent::host::in_path("python3") {
        json!({"argv": ["python3", "-m", "http.server", "18080", "--bind", "127.0.0.1"],
               "check": {"kind": "http", "url": "http://127.0.0.1:18080/"}})
    } else {
        println!(
            "note: python3 is not installed, so the sample web group runs `sleep infinity` instead of a web server"
        );
        json!({"argv": ["sleep", "infinity"]})
    };
    let calls: Vec<(&str, serde_json::Value)> = vec![
        ("/api/v1/groups", json!({"name": "web", "preferred_owners": ["node1"]})),
        (
            "/api/v1/resources",
            json!({"name": "web-server", "group": "web", "type": "process", "params": web_params,
                   "props": {"is_alive_interval": "10s", "looks_alive_interval": "1s"}}),
        ),
        ("/api/v1/groups", json!({"name": "batch"})),
        (
            "/api/v1/resources",
            json!({"name": "queue", "group": "batch", "type": "process",
                   "params": {"argv": ["sleep", "infinity"]}, "props": {"looks_alive_interval": "1s"}}),
        ),
        (
            "/api/v1/resources",
            json!({"name": "worker", "group": "batch", "type": "process", "depends_on": ["queue"],
                   "params": {"argv": ["sh", "-c", "while :; do date >> worker.log; sleep 1; done"]},
                   "props": {"looks_alive_interval": "1s"}}),
        ),
    ];
    for (path, body) in calls {
        let _: serde_json::Value = c.post(path, &body).await.map_err(Failure::from)?;
    }
    Ok(())
}

/// A shared volume for the sample VM under the demo directory: `.haven-volume`, an ext4
/// data disk and the VM's definition, using the test guest built by
/// `scripts/build-test-guest`. `Err` says why there is no VM (no QEMU, no guest, …).
fn prepare_vm_volume(dir: &Path) -> Result<PathBuf, String> {
    if !haven_agent::host::in_path("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)".into());
    }
    if !haven_agent::host::in_path("mkfs.ext4") {
        return Err("mkfs.ext4 is not installed (Debian: apt-get install e2fsprogs)".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-guest");
    if !script.is_file() {
        return Err(format!("the test guest's build script {} is not here", script.display()));
    }
    println!("building (or reusing) the test guest with {} ...", script.display());
    let out = Command::new(&script).output().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
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
    let calls: Vec<(&str, serde_json::Value)> = vec![
        ("/api/v1/groups", json!({"name": "vm", "preferred_owners": ["node2"]})),
        (
            "/api/v1/resources",
            json!({"name": "vol1", "group": "vm", "type": "disk",
                   "params": {"backend": "dir", "volume_id": "demo-vol-1", "volume_name": "vol1",
                              "path": volume.to_string_lossy()}}),
        ),
        (
            "/api/v1/resources",
            json!({"name": "vm-config", "group": "vm", "type": "vm-config",
                   "params": {"path": "vol1/vm.toml"}, "depends_on": ["vol1"]}),
        ),
        (
            "/api/v1/resources",
            json!({"name": "vm", "group": "vm", "type": "vm", "params": {"config": "vm-config"},
                   "props": {"looks_alive_interval": "1s", "is_alive_interval": "5s"}, "depends_on": ["vm-config"]}),
        ),
    ];
    for (path, body) in calls {
        let _: serde_json::Value = c.post(path, &body).await.map_err(Failure::from)?;
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
/// logging to `nd/agent.log` and recording its pid in `nd/agent.pid`.
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
    let child = cmd.spawn().map_err(|e| fail(format!("cannot start the agent for {}: {e}", nd.display())))?;
    std::fs::write(nd.join("agent.pid"), child.id().to_string()).map_err(|e| fail(e.to_string()))?;
    Ok(child)
}

/// SIGKILLs every process in the node's session: the agent and everything it started.
pub fn kill_node(dir: &Path, node: &str) -> Result<(), Failure> {
    let pid_file = dir.join(node).join("agent.pid");
    let text = std::fs::read_to_string(&pid_file).map_err(|e| Failure {
        code: EXIT_USAGE,
        message: format!("cannot read {}: {e}; is {node:?} a node of this demo?", pid_file.display()),
    })?;
    let sid: i32 = text.trim().parse().map_err(|_| fail(format!("{} does not hold a pid", pid_file.display())))?;
    let killed = haven_agent::host::kill_session(sid);
    println!("killed {node}: {killed} processes (agent session {sid})");
    Ok(())
}

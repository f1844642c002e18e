//! Command-line parsing and the client subcommands. Every client subcommand is one or two
//! calls of the REST API; nothing here reads the cluster state any other way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use haven_api::{Client, ClientError, ClusterStatus, GroupView, InitResponse, NodeView};
use haven_model::{Failback, GroupSpec, GroupUpdate, HealthCheck, Priority, Resource, ResourceKind};
use haven_state::Event;
use serde_json::{Value, json};

use crate::output::{self, Format};

/// Exit status: the agent refused the request (bad input, unknown name, conflict).
pub const EXIT_REFUSED: u8 = 1;
/// Exit status: command-line usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the agent could not be reached, or the cluster has no quorum.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit status: the write's outcome is unknown (it may have been applied); the message
/// names its request id.
pub const EXIT_UNKNOWN: u8 = 4;

const AFTER_HELP: &str = "\
EXIT STATUS:
  0  success
  1  the agent refused the request (invalid value, unknown name, conflict); the message says why
  2  command-line usage error
  3  no agent could be reached, or the cluster has no quorum and refuses changes
  4  the outcome of the write is unknown (it may have been applied): the message names its
     request id and how to look it up

ENVIRONMENT:
  HAVEN_SERVER  the agents to talk to (same as --server), e.g. 127.0.0.1:7401,127.0.0.1:7402";

/// Haven: a failover cluster manager for virtual machines and the services beside them.
///
/// Run `haven agent` on every host; use the other subcommands from anywhere to manage
/// the cluster through any agent's REST API. `haven demo` starts a local 3-node cluster.
#[derive(Parser, Debug)]
#[command(name = "haven", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Agents to talk to, as host:port or http://host:port, separated by commas. Each
    /// request goes to the first that can be reached (a write moves on only when the
    /// connection was refused or never made, so it is never sent twice).
    #[arg(long, global = true, env = "HAVEN_SERVER", default_value = "127.0.0.1:7400")]
    pub server: String,
    /// Output format of read commands.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value = "table")]
    pub output: Format,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the node daemon (one per host).
    Agent(AgentArgs),
    /// Run a witness: a small voting member that hosts no resources, the tie-breaker that
    /// lets a two-node cluster keep quorum when one node fails. Same config file as an agent.
    Witness(AgentArgs),
    /// Create, join and inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// List nodes, pause (drain) and resume them.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage groups: resources that run on one node and move together.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Manage resources (processes, later VMs, disks, addresses).
    #[command(subcommand)]
    Resource(ResourceCmd),
    /// Virtual machines: list them with owner, accelerator and guest heartbeat.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Show the cluster's event history: what happened and why.
    History(HistoryArgs),
    /// Start a local 3-node cluster with sample groups, and print commands to try.
    Demo(crate::demo::DemoArgs),
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The node's TOML config file (id, name, listen, state_dir; see docs/OPERATIONS.md).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Found a new cluster with the agent at --server as its first node; prints the join token.
    Init {
        /// Cluster name.
        #[arg(long, default_value = "haven")]
        name: String,
    },
    /// Make the agent at --server join the cluster that ADDRESS (any member) belongs to.
    Join {
        /// host:port of any member of the cluster.
        address: String,
        /// The join token printed by `haven cluster init` (or `haven cluster token`).
        #[arg(long)]
        token: String,
    },
    /// Show the cluster name, leader, members and this agent's lease.
    Status,
    /// Print the join token for new nodes.
    Token,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes with their status (up, down, paused) and the groups they own.
    List,
    /// Show one node.
    Show { name: String },
    /// Pause a node: it takes no new groups and its groups move to other nodes (drain).
    Pause { name: String },
    /// Resume a paused node.
    Resume { name: String },
    /// Remove a node that is down from the cluster.
    Remove { name: String },
    /// Set how the cluster fences NAME (through a standard fence agent such as fence_ipmilan)
    /// before it recovers NAME's groups elsewhere. With a fence agent set, a lost node's
    /// groups wait until the agent reports success; failures are retried, never ignored.
    Fence {
        name: String,
        /// Fence agent program (name in PATH or absolute path), e.g. fence_ipmilan.
        #[arg(long, required_unless_present = "remove")]
        agent: Option<String>,
        /// Agent parameter KEY=VALUE, passed on its stdin (repeatable), e.g. --param ip=10.0.0.9.
        #[arg(long = "param")]
        params: Vec<String>,
        /// What to do to the node: off or reboot.
        #[arg(long, default_value = "off")]
        action: String,
        /// How long the agent may take.
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// Remove the node's fence agent instead.
        #[arg(long, conflicts_with = "agent")]
        remove: bool,
    },
}

#[derive(Args, Debug, Default)]
pub struct GroupProps {
    /// Preferred owners, in order (comma-separated node names).
    #[arg(long, value_delimiter = ',')]
    pub preferred_owners: Option<Vec<String>>,
    /// Nodes allowed to host the group (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub possible_owners: Option<Vec<String>>,
    /// Failovers allowed per failover period (default: number of nodes - 1).
    #[arg(long)]
    pub failover_threshold: Option<u32>,
    /// Failover period, e.g. 6h (default 6h).
    #[arg(long)]
    pub failover_period: Option<String>,
    /// Failback policy: never (default), immediate, or a UTC window like 22-6.
    #[arg(long)]
    pub failback: Option<String>,
    /// Recovery priority: high, medium (default), low, none.
    #[arg(long)]
    pub priority: Option<String>,
    /// CPUs the group needs on its owner (default 0).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory in MiB the group needs on its owner (default 0).
    #[arg(long)]
    pub memory_mib: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// List groups with their state, owner and preferred owners.
    List,
    /// Show one group and its resources.
    Show { name: String },
    /// Create a group (started as soon as it has resources, unless --offline).
    Create {
        name: String,
        #[command(flatten)]
        props: GroupProps,
        /// Create it offline (do not start it).
        #[arg(long)]
        offline: bool,
    },
    /// Change a group's properties.
    Set {
        name: String,
        #[command(flatten)]
        props: GroupProps,
    },
    /// Delete a group that has no resources.
    Delete { name: String },
    /// Move a group to another node now (its resources stop here and start there).
    Move {
        name: String,
        /// Target node.
        #[arg(long = "to")]
        node: String,
    },
    /// Bring a group online.
    Online { name: String },
    /// Take a group offline (stop its resources).
    Offline { name: String },
}

// Parsed once per run; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ResourceCmd {
    /// List resources with their state and node.
    List {
        /// Only this group's resources.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show one resource with its parameters, properties and status.
    Show { name: String },
    /// Create a resource. For a process: `haven resource create web --group g -- python3 -m http.server 8080`.
    Create {
        name: String,
        /// The group it belongs to.
        #[arg(long)]
        group: String,
        /// Resource type.
        #[arg(long = "type", default_value = "process")]
        kind: String,
        /// Resources of the same group it depends on (comma-separated).
        #[arg(long, value_delimiter = ',')]
        depends_on: Vec<String>,
        /// Environment variable for the process, KEY=VALUE (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Working directory of the process.
        #[arg(long)]
        cwd: Option<String>,
        /// Run the process as this user.
        #[arg(long)]
        user: Option<String>,
        /// Thorough health check: connect to host:port.
        #[arg(long, conflicts_with_all = ["check_http", "check_cmd"])]
        check_tcp: Option<String>,
        /// Thorough health check: GET this http:// URL.
        #[arg(long, conflicts_with = "check_cmd")]
        check_http: Option<String>,
        /// Thorough health check: run this command (via sh -c); exit 0 = healthy.
        #[arg(long)]
        check_cmd: Option<String>,
        /// Property KEY=VALUE, e.g. restart_threshold=5 or looks_alive_interval=1s (repeatable).
        #[arg(long = "prop")]
        props: Vec<String>,
        /// Parameters as a JSON object instead of the flags above.
        #[arg(long)]
        params_json: Option<String>,
        /// The program and its arguments (after --).
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Change a resource's properties or dependencies.
    Set {
        name: String,
        /// Property KEY=VALUE (repeatable).
        #[arg(long = "prop")]
        props: Vec<String>,
        /// Replace the dependency list (comma-separated; empty string for none).
        #[arg(long, value_delimiter = ',')]
        depends_on: Option<Vec<String>>,
        /// Replace the parameters with this JSON object.
        #[arg(long)]
        params_json: Option<String>,
    },
    /// Delete a resource once no node may be running it (offline or failed): take its group offline first.
    Delete { name: String },
    /// Forget a resource's failures so it (and its group) can run again.
    Clear { name: String },
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// List VMs: group, current owner, state, accelerator (kvm/tcg) and heartbeat age.
    List,
    /// Show one VM, with why it runs on its accelerator.
    Show { name: String },
    /// Start a VM: bring its group online (its disks and configuration first).
    Start { name: String },
    /// Stop a VM: take its group offline (the guest is asked to power off, then stopped).
    Stop { name: String },
    /// Print the end of the VM's serial console log, from the node that runs it.
    Console { name: String },
    /// Create a highly available VM in GROUP: write its definition to
    /// <volume>/<name>/vm.toml and create its vm-config and vm resources.
    Create {
        name: String,
        #[command(flatten)]
        place: VmPlace,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
        /// A disk image: PATH[,format=raw|qcow2][,if=virtio|ide]; relative paths are relative
        /// to <volume>/<name>/ (repeatable; the first is the boot disk without --kernel).
        #[arg(long = "disk")]
        disks: Vec<String>,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        cmdline: Option<String>,
        /// The guest writes a heartbeat line on its second serial port every second.
        #[arg(long)]
        heartbeat: bool,
        /// auto (kvm if it works, else tcg), kvm or tcg.
        #[arg(long, default_value = "auto")]
        accel: String,
    },
    /// Import an existing QEMU VM from its command line (after --): -m, -smp, -drive/-hda,
    /// -kernel/-initrd/-append, -accel/-enable-kvm, -nic/-netdev user|none; other options are
    /// listed as ignored.
    Import {
        name: String,
        #[command(flatten)]
        place: VmPlace,
        /// The guest writes a heartbeat line on its second serial port every second.
        #[arg(long)]
        heartbeat: bool,
        #[arg(last = true, required = true)]
        qemu: Vec<String>,
    },
    /// Send a line to the guest's control channel (the test guest: freeze, thaw, poweroff).
    Control { name: String, line: String },
    /// The High Availability wizard: make a VM defined on a node highly available.
    ///
    /// DEFINITION is a VM definition file (the format `haven vm create` writes: TOML, or
    /// JSON ending in .json) on node --node. The wizard runs seven storage checks there,
    /// then creates the VM's `vm-config` and `vm` resources in the group of the disk
    /// resources that hold its files, as one change, all or nothing:
    ///
    ///   1 vm-stopped      no process on the node has a disk image open or names it
    ///   2 shared-storage  definition, kernel, initrd and images are on disk resources'
    ///                     volumes, online on the node
    ///   3 shared-volume   VMs sharing a volume (or partitions of one disk) are in one
    ///                     group: a warning names the VMs that will always move together
    ///   4 backing-chain   every qcow2 backing file is on a volume of the group
    ///   5 cluster-path    paths use <state-dir>/volumes/<volume>/… (or are relative to the
    ///                     definition), not the dir backend's directory, a symlink, a bind
    ///                     mount or a /dev name other than /dev/disk/by-uuid/<uuid>
    ///   6 nested-volume   a volume mounted inside another is in the same group
    ///   7 pass-through    a whole block device given to the guest is a disk resource of
    ///                     the group
    ///
    /// Disk resources must exist first. Any failed check means nothing changed; the report
    /// is kept in the history (`haven history --resource <vm>`) either way. Exit status 1
    /// when a check failed.
    #[command(name = "make-ha", verbatim_doc_comment)]
    MakeHa {
        /// The VM definition file, absolute path on the node.
        definition: String,
        /// The node where the file is (default: the node this command talks to).
        #[arg(long)]
        node: Option<String>,
        /// The VM's name in the cluster (default: the definition's name).
        #[arg(long)]
        name: Option<String>,
        /// The group to put the VM in; created if missing, and the disk resources move into it
        /// when their group holds only disks (they must be offline to move).
        #[arg(long)]
        group: Option<String>,
        /// Run every check and print the plan; change nothing, record nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite node-local paths (check 5) to the cluster form, showing before → after.
        #[arg(long)]
        fix: bool,
    },
    /// Replace the VM's definition file with FILE (validated; refused while the VM runs;
    /// applies at its next start).
    Edit {
        name: String,
        /// The new definition (TOML, or JSON if the VM's file is .json).
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct VmPlace {
    /// The group the VM joins (it must exist and have a disk resource for --volume).
    #[arg(long)]
    pub group: String,
    /// The disk resource whose volume holds the definition.
    #[arg(long)]
    pub volume: String,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    /// Most recent events to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// A CLI failure: message plus exit status.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Api { status, .. } if *status < 500 => EXIT_REFUSED,
            ClientError::Api { status: 504, .. } => EXIT_UNKNOWN,
            ClientError::Unreachable { may_be_applied: true, .. } => EXIT_UNKNOWN,
            _ => EXIT_UNAVAILABLE,
        };
        let message = match &e {
            ClientError::Api { message, field: Some(f), .. } if !message.contains(f.as_str()) => {
                format!("{message} (field: {f})")
            }
            _ => e.to_string(),
        };
        Failure { code, message }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: EXIT_USAGE, message: message.into() }
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Cmd::Agent(a) => run_agent(a, false).await,
        Cmd::Witness(a) => run_agent(a, true).await,
        Cmd::Demo(d) => crate::demo::run(d, cli.output).await,
        other => match servers(&cli.server) {
            Ok(list) => client_command(&Client::with_servers(&list, REQUEST_TIMEOUT), cli.output, other).await,
            Err(f) => Err(f),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// How long one request to one agent may take.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The agents named by `--server` / `HAVEN_SERVER`: a comma-separated list.
fn servers(list: &str) -> Result<Vec<String>, Failure> {
    let servers: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    if let Some(k) = servers.iter().position(|s| s.is_empty()) {
        return Err(usage(format!(
            "--server (or HAVEN_SERVER) {list:?} has an empty entry at position {}; \
             write agents as host:port separated by commas, e.g. 127.0.0.1:7401,127.0.0.1:7402",
            k + 1
        )));
    }
    Ok(servers)
}

/// `cluster init` and `cluster join` act on one particular agent, so they take one server:
/// with several, moving on to the next would found or join the wrong node.
fn one_server(c: &Client, what: &str) -> Result<(), Failure> {
    match c.servers() {
        [_] => Ok(()),
        many => Err(usage(format!(
            "`haven cluster {what}` acts on one particular agent, but --server (or HAVEN_SERVER) names {} ({}); \
             give just that agent, e.g. --server {}",
            many.len(),
            many.iter().map(|s| strip(s)).collect::<Vec<_>>().join(","),
            many.first().map(|s| strip(s)).unwrap_or("127.0.0.1:7400")
        ))),
    }
}

async fn run_agent(a: AgentArgs, witness: bool) -> Result<(), Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAVEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut config = haven_agent::AgentConfig::load(&a.config).map_err(usage)?;
    config.witness |= witness;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    haven_agent::run(config, shutdown).await.map_err(|e| Failure { code: EXIT_UNAVAILABLE, message: e.to_string() })
}

async fn client_command(c: &Client, fmt: Format, cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Cluster(cc) => cluster(c, fmt, cc).await,
        Cmd::Node(nc) => node(c, fmt, nc).await,
        Cmd::Group(gc) => group(c, fmt, gc).await,
        Cmd::Resource(rc) => resource(c, fmt, rc).await,
        Cmd::History(h) => history(c, fmt, h).await,
        Cmd::Vm(v) => vm(c, fmt, v).await,
        Cmd::Agent(_) | Cmd::Witness(_) | Cmd::Demo(_) => Ok(()),
    }
}

async fn cluster(c: &Client, fmt: Format, cmd: ClusterCmd) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::Init { name } => {
            one_server(c, "init")?;
            let r: InitResponse = c.post("/api/v1/cluster/init", &json!({ "name": name })).await?;
            if fmt == Format::Json {
                output::json(&r);
            } else {
                println!("cluster {:?} created on {}", r.name, c.base());
                println!("join other nodes with:");
                println!("  haven --server <new-node> cluster join {} --token {}", strip(c.base()), r.join_token);
            }
        }
        ClusterCmd::Join { address, token } => {
            one_server(c, "join")?;
            let n: NodeView = c.post("/api/v1/cluster/join", &json!({ "address": address, "token": token })).await?;
            if fmt == Format::Json {
                output::json(&n);
            } else {
                println!("node {:?} joined the cluster as a {:?}", n.node.name, n.node.role);
            }
        }
        ClusterCmd::Status => {
            let s: ClusterStatus = c.get("/api/v1/cluster").await?;
            if fmt == Format::Json {
                output::json(&s);
            } else {
                let leader = s
                    .leader
                    .as_ref()
                    .map(|l| format!("{} (id {}, {})", l.name.clone().unwrap_or_default(), l.id, l.address))
                    .unwrap_or_else(|| "none elected".into());
                println!("cluster:      {}", s.name.clone().unwrap_or_else(|| "(not initialized)".into()));
                println!(
                    "this node:    {} (id {}, {})",
                    s.this_node.name.clone().unwrap_or_default(),
                    s.this_node.id,
                    s.this_node.address
                );
                println!("leader:       {leader}");
                println!("term:         {}", s.term);
                println!("voters:       {:?}", s.voters);
                println!("learners:     {:?}", s.learners);
                println!("lease valid:  {}", s.lease_valid);
                println!("applied:      {}", s.applied_index);
            }
        }
        ClusterCmd::Token => {
            let v: Value = c.get("/api/v1/cluster/token").await?;
            if fmt == Format::Json {
                output::json(&v);
            } else {
                println!("{}", v["join_token"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

fn strip(base: &str) -> &str {
    base.trim_start_matches("http://").trim_start_matches("https://")
}

fn node_rows(nodes: &[NodeView]) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|n| {
            vec![
                n.node.name.clone(),
                n.node.id.to_string(),
                n.status.clone(),
                format!("{:?}", n.node.role).to_lowercase() + if n.leader { " (leader)" } else { "" },
                n.node.address.clone(),
                format!("{} cpu / {} MiB", n.node.capacity.cpus, n.node.capacity.memory_mib),
                output::list(&n.groups),
            ]
        })
        .collect()
}

const NODE_HEADER: [&str; 7] = ["NAME", "ID", "STATUS", "ROLE", "ADDRESS", "CAPACITY", "GROUPS"];

async fn node(c: &Client, fmt: Format, cmd: NodeCmd) -> Result<(), Failure> {
    let one = |n: NodeView| {
        if fmt == Format::Json {
            output::json(&n);
        } else {
            output::table(&NODE_HEADER, node_rows(&[n]));
        }
    };
    match cmd {
        NodeCmd::List => {
            let nodes: Vec<NodeView> = c.get("/api/v1/nodes").await?;
            if fmt == Format::Json {
                output::json(&nodes);
            } else {
                output::table(&NODE_HEADER, node_rows(&nodes));
            }
        }
        NodeCmd::Show { name } => {
            let n: NodeView = c.get(&format!("/api/v1/nodes/{}", seg(&name))).await?;
            if fmt == Format::Json {
                output::json(&n);
            } else {
                let fence = n.fence.clone();
                let status = n.fence_status.clone();
                output::table(&NODE_HEADER, node_rows(&[n]));
                if let Some(f) = fence {
                    let params: Vec<String> = f.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "\nfence agent: {} {} (action {}, timeout {})",
                        f.agent,
                        params.join(" "),
                        f.action.as_str(),
                        f.timeout
                    );
                }
                if let Some(st) = status {
                    println!("last fenced: {}", st.fenced_at.map(output::time).unwrap_or_else(|| "never".into()));
                    if let Some(e) = st.last_error {
                        println!("last fence failure ({} in a row): {e}", st.failures);
                    }
                }
            }
        }
        NodeCmd::Pause { name } => one(c.post(&format!("/api/v1/nodes/{}/pause", seg(&name)), &json!({})).await?),
        NodeCmd::Resume { name } => one(c.post(&format!("/api/v1/nodes/{}/resume", seg(&name)), &json!({})).await?),
        NodeCmd::Fence { name, agent, params, action, timeout, remove } => {
            let path = format!("/api/v1/nodes/{}/fence", seg(&name));
            let n: NodeView = if remove {
                c.delete(&path).await?
            } else {
                let mut map = serde_json::Map::new();
                for p in &params {
                    let Some((k, v)) = p.split_once('=') else {
                        return Err(usage(format!("--param {p:?} is not KEY=VALUE, e.g. --param ip=10.0.0.9")));
                    };
                    map.insert(k.to_string(), Value::from(v));
                }
                let body = json!({"agent": agent, "params": map, "action": action, "timeout": timeout});
                c.put(&path, &body).await?
            };
            if fmt == Format::Json {
                output::json(&n);
            } else {
                match &n.fence {
                    Some(f) => println!(
                        "node {name:?} is fenced with {} (action {}, timeout {})",
                        f.agent,
                        f.action.as_str(),
                        f.timeout
                    ),
                    None => println!("node {name:?} has no fence agent"),
                }
            }
        }
        NodeCmd::Remove { name } => {
            let v: Value = c.delete(&format!("/api/v1/nodes/{}", seg(&name))).await?;
            print_done(fmt, &v, &format!("node {name:?} removed"));
        }
    }
    Ok(())
}

/// A path segment: names are validated server-side; this only keeps the URL well formed.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_done(fmt: Format, v: &Value, text: &str) {
    if fmt == Format::Json {
        output::json(v);
    } else {
        println!("{text}");
    }
}

fn group_rows(groups: &[GroupView]) -> Vec<Vec<String>> {
    groups
        .iter()
        .map(|g| {
            vec![
                g.group.spec.name.clone(),
                g.state.clone(),
                match &g.group.handoff {
                    Some(h) => format!("{}->{}", h.from, h.to),
                    None => output::opt(&g.group.owner),
                },
                output::list(&g.group.spec.preferred_owners),
                output::list(&g.group.spec.possible_owners),
                output::list(&g.resources),
                g.group.failed_reason.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

const GROUP_HEADER: [&str; 7] = ["NAME", "STATE", "OWNER", "PREFERRED", "POSSIBLE", "RESOURCES", "FAILED"];

fn parse_failback(s: &str) -> Result<Failback, Failure> {
    match s {
        "never" => Ok(Failback::Never),
        "immediate" => Ok(Failback::Immediate),
        w => {
            let parts: Vec<&str> = w.split('-').collect();
            let hours: Option<Vec<u8>> =
                if parts.len() == 2 { parts.iter().map(|p| p.parse().ok()).collect() } else { None };
            match hours.as_deref() {
                Some([a, b]) => Ok(Failback::Window { start_hour: *a, end_hour: *b }),
                _ => Err(usage(format!(
                    "--failback {w:?} is not a failback policy; use never, immediate, or a UTC hour window like 22-6"
                ))),
            }
        }
    }
}

fn parse_priority(s: &str) -> Result<Priority, Failure> {
    serde_json::from_value(json!(s))
        .map_err(|_| usage(format!("--priority {s:?} is not a priority; use high, medium, low or none")))
}

fn group_update(p: GroupProps) -> Result<GroupUpdate, Failure> {
    Ok(GroupUpdate {
        preferred_owners: p.preferred_owners,
        possible_owners: p.possible_owners,
        failover_threshold: p.failover_threshold,
        reset_failover_threshold: false,
        failover_period: p
            .failover_period
            .map(|t| haven_model::Dur::parse(&t).map_err(|e| usage(format!("--failover-period: {e}"))))
            .transpose()?,
        failback: p.failback.map(|f| parse_failback(&f)).transpose()?,
        priority: p.priority.map(|f| parse_priority(&f)).transpose()?,
        cpus: p.cpus,
        memory_mib: p.memory_mib,
    })
}

async fn group(c: &Client, fmt: Format, cmd: GroupCmd) -> Result<(), Failure> {
    let one = |g: GroupView| {
        if fmt == Format::Json {
            output::json(&g);
        } else {
            output::table(&GROUP_HEADER, group_rows(std::slice::from_ref(&g)));
        }
    };
    match cmd {
        GroupCmd::List => {
            let groups: Vec<GroupView> = c.get("/api/v1/groups").await?;
            if fmt == Format::Json {
                output::json(&groups);
            } else {
                output::table(&GROUP_HEADER, group_rows(&groups));
            }
        }
        GroupCmd::Show { name } => {
            let g: GroupView = c.get(&format!("/api/v1/groups/{}", seg(&name))).await?;
            if fmt == Format::Json {
                output::json(&g);
                return Ok(());
            }
            let resources: Vec<Resource> = c.get(&format!("/api/v1/resources?group={}", seg(&name))).await?;
            let s = &g.group.spec;
            println!("group:              {}", s.name);
            println!("state:              {}", g.state);
            println!("current owner:      {}", output::opt(&g.group.owner));
            if let Some(h) = &g.group.handoff {
                println!(
                    "moving:             from {} to {} ({}); it starts there once {} has stopped it",
                    h.from, h.to, h.reason, h.from
                );
            }
            println!("preferred owners:   {}", output::list(&s.preferred_owners));
            println!(
                "possible owners:    {}",
                if s.possible_owners.is_empty() { "all nodes".into() } else { s.possible_owners.join(",") }
            );
            let threshold = s.failover_threshold.map(|t| t.to_string()).unwrap_or_else(|| "nodes - 1".into());
            println!("failover threshold: {threshold} per {}", s.failover_period);
            println!("failback:           {}", serde_json::to_string(&s.failback).unwrap_or_default());
            println!("priority:           {:?}", s.priority);
            if let Some(f) = &g.group.failed_reason {
                println!("failed:             {f}");
            }
            println!();
            resource_table(&resources);
        }
        GroupCmd::Create { name, props, offline } => {
            let u = group_update(props)?;
            let mut spec = u.applied_to(&GroupSpec::new(name));
            spec.online = !offline;
            one(c.post("/api/v1/groups", &spec).await?);
        }
        GroupCmd::Set { name, props } => {
            let u = group_update(props)?;
            one(c.patch(&format!("/api/v1/groups/{}", seg(&name)), &u).await?);
        }
        GroupCmd::Delete { name } => {
            let v: Value = c.delete(&format!("/api/v1/groups/{}", seg(&name))).await?;
            print_done(fmt, &v, &format!("group {name:?} deleted"));
        }
        GroupCmd::Move { name, node } => {
            one(c.post(&format!("/api/v1/groups/{}/move", seg(&name)), &json!({ "node": node })).await?)
        }
        GroupCmd::Online { name } => one(c.post(&format!("/api/v1/groups/{}/online", seg(&name)), &json!({})).await?),
        GroupCmd::Offline { name } => {
            one(c.post(&format!("/api/v1/groups/{}/offline", seg(&name)), &json!({})).await?)
        }
    }
    Ok(())
}

fn resource_table(resources: &[Resource]) {
    let rows = resources
        .iter()
        .map(|r| {
            vec![
                r.spec.name.clone(),
                r.spec.kind.as_str().to_string(),
                r.spec.group.clone(),
                format!("{:?}", r.status.state).to_lowercase(),
                output::opt(&r.status.node),
                output::list(&r.spec.depends_on),
                r.status.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["NAME", "TYPE", "GROUP", "STATE", "NODE", "DEPENDS ON", "REASON"], rows);
}

fn parse_props(props: &[String]) -> Result<serde_json::Map<String, Value>, Failure> {
    let mut map = serde_json::Map::new();
    for p in props {
        let Some((k, v)) = p.split_once('=') else {
            return Err(usage(format!("--prop {p:?} is not KEY=VALUE, e.g. --prop restart_threshold=5")));
        };
        // Numbers stay numbers; everything else is a string (durations like 5s, actions).
        let value = v.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(v));
        map.insert(k.trim().to_string(), value);
    }
    Ok(map)
}

async fn resource(c: &Client, fmt: Format, cmd: ResourceCmd) -> Result<(), Failure> {
    let one = |r: Resource| {
        if fmt == Format::Json {
            output::json(&r);
        } else {
            resource_table(std::slice::from_ref(&r));
        }
    };
    match cmd {
        ResourceCmd::List { group } => {
            let path = match &group {
                Some(g) => format!("/api/v1/resources?group={}", seg(g)),
                None => "/api/v1/resources".to_string(),
            };
            let resources: Vec<Resource> = c.get(&path).await?;
            if fmt == Format::Json {
                output::json(&resources);
            } else {
                resource_table(&resources);
            }
        }
        ResourceCmd::Show { name } => {
            let r: Resource = c.get(&format!("/api/v1/resources/{}", seg(&name))).await?;
            if fmt == Format::Json {
                output::json(&r);
                return Ok(());
            }
            resource_table(std::slice::from_ref(&r));
            println!();
            println!("params: {}", serde_json::to_string(&r.spec.params).unwrap_or_default());
            println!("props:  {}", serde_json::to_string(&r.spec.props).unwrap_or_default());
            if !r.status.failures.is_empty() {
                let times: Vec<String> = r.status.failures.iter().map(|t| output::time(*t)).collect();
                println!("recent failures: {}", times.join(", "));
            }
        }
        ResourceCmd::Create {
            name,
            group,
            kind,
            depends_on,
            env,
            cwd,
            user,
            check_tcp,
            check_http,
            check_cmd,
            props,
            params_json,
            argv,
        } => {
            let kind: ResourceKind = serde_json::from_value(json!(kind)).map_err(|_| {
                usage(format!("--type {kind:?} is not a resource type; the types are: process, vm, vm-config, disk"))
            })?;
            let params = match params_json {
                Some(text) => serde_json::from_str::<Value>(&text)
                    .map_err(|e| usage(format!("--params-json is not valid JSON: {e}")))?,
                None if kind != ResourceKind::Process => {
                    return Err(usage(format!(
                        "a {} resource takes its parameters as JSON: --params-json '{{...}}' (see `haven vm --help` for VMs)",
                        kind.as_str()
                    )));
                }
                None => {
                    if argv.is_empty() {
                        return Err(usage(
                            "a process resource needs a command after --, e.g. `haven resource create web --group g -- sleep infinity`",
                        ));
                    }
                    let mut envs = BTreeMap::new();
                    for e in env {
                        let Some((k, v)) = e.split_once('=') else {
                            return Err(usage(format!("--env {e:?} is not KEY=VALUE")));
                        };
                        envs.insert(k.to_string(), v.to_string());
                    }
                    let check = if let Some(a) = check_tcp {
                        Some(HealthCheck::Tcp { address: a, timeout: haven_model::Dur::from_secs(5) })
                    } else if let Some(u) = check_http {
                        Some(HealthCheck::Http { url: u, timeout: haven_model::Dur::from_secs(5) })
                    } else {
                        check_cmd.map(|cmd| HealthCheck::Command {
                            argv: vec!["sh".into(), "-c".into(), cmd],
                            timeout: haven_model::Dur::from_secs(5),
                        })
                    };
                    json!({ "argv": argv, "env": envs, "cwd": cwd, "user": user, "check": check })
                }
            };
            let mut body = json!({
                "name": name, "group": group, "type": kind, "params": params, "depends_on": depends_on,
            });
            let props = parse_props(&props)?;
            if !props.is_empty() {
                body["props"] = Value::Object(props);
            }
            one(c.post("/api/v1/resources", &body).await?);
        }
        ResourceCmd::Set { name, props, depends_on, params_json } => {
            let mut body = json!({});
            let props = parse_props(&props)?;
            if !props.is_empty() {
                body["props"] = Value::Object(props);
            }
            if let Some(d) = depends_on {
                let d: Vec<String> = d.into_iter().filter(|s| !s.is_empty()).collect();
                body["depends_on"] = json!(d);
            }
            if let Some(text) = params_json {
                body["params"] = serde_json::from_str::<Value>(&text)
                    .map_err(|e| usage(format!("--params-json is not valid JSON: {e}")))?;
            }
            one(c.patch(&format!("/api/v1/resources/{}", seg(&name)), &body).await?);
        }
        ResourceCmd::Delete { name } => {
            let v: Value = c.delete(&format!("/api/v1/resources/{}", seg(&name))).await?;
            print_done(fmt, &v, &format!("resource {name:?} deleted"));
        }
        ResourceCmd::Clear { name } => {
            one(c.post(&format!("/api/v1/resources/{}/clear", seg(&name)), &json!({})).await?)
        }
    }
    Ok(())
}

fn vm_rows(vms: &[haven_api::VmView]) -> Vec<Vec<String>> {
    vms.iter()
        .map(|v| {
            let rt = v.runtime.as_ref();
            vec![
                v.name.clone(),
                v.group.clone(),
                output::opt(&v.owner),
                format!("{:?}", v.resource.status.state).to_lowercase(),
                rt.map(|r| format!("{:?}", r.accel).to_lowercase()).unwrap_or_else(|| "-".into()),
                rt.and_then(|r| r.last_heartbeat_age).map(|d| format!("{d} ago")).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

const VM_HEADER: [&str; 6] = ["NAME", "GROUP", "OWNER", "STATE", "ACCEL", "HEARTBEAT"];

async fn vm_create(c: &Client, fmt: Format, place: VmPlace, definition: Value) -> Result<(), Failure> {
    let body = json!({"group": place.group, "volume": place.volume, "definition": definition});
    let v: haven_api::VmView = c.post("/api/v1/vms", &body).await?;
    if fmt == Format::Json {
        output::json(&v);
    } else {
        println!(
            "VM {:?} created in group {:?} (resources {:?} and {:?}); start it with `haven vm start {}`",
            v.name,
            v.group,
            format!("{}-config", v.name),
            v.name,
            v.name
        );
    }
    Ok(())
}

/// `PATH[,format=raw|qcow2][,if=virtio|ide]` → a definition's disk.
fn parse_disk(text: &str) -> Result<Value, Failure> {
    let mut parts = text.split(',');
    let path = parts.next().unwrap_or_default();
    let mut disk = json!({ "path": path });
    for p in parts {
        match p.split_once('=') {
            Some(("format", f)) => disk["format"] = json!(f),
            Some(("if", i)) | Some(("interface", i)) => disk["interface"] = json!(i),
            _ => return Err(usage(format!("--disk {text:?}: {p:?} is not format=… or if=…"))),
        }
    }
    Ok(disk)
}

/// A VM definition from a QEMU command line, and the options it does not carry over.
fn definition_from_qemu(argv: &[String]) -> Result<(Value, Vec<String>), Failure> {
    let mut def = json!({"vcpus": 1, "memory_mib": 128, "disks": [], "nics": [], "boot": {}, "accel": "auto"});
    let mut ignored = Vec::new();
    let mut disks = Vec::new();
    // Skip the program name; then options, most with one value.
    let args: Vec<String> = argv.iter().skip_while(|a| !a.starts_with('-')).cloned().collect();
    let mut it = args.into_iter().peekable();
    fn value(it: &mut std::iter::Peekable<std::vec::IntoIter<String>>, opt: &str) -> Result<String, Failure> {
        it.next().ok_or_else(|| usage(format!("QEMU option {opt} needs a value")))
    }
    while let Some(opt) = it.next() {
        let opt = opt.as_str();
        match opt {
            "-m" => {
                let v = value(&mut it, opt)?;
                let v = v.trim_start_matches("size=").split(',').next().unwrap_or_default().to_string();
                let (num, mult) = match v.chars().last() {
                    Some('G' | 'g') => (&v[..v.len() - 1], 1024),
                    Some('M' | 'm') => (&v[..v.len() - 1], 1),
                    _ => (v.as_str(), 1),
                };
                let mib: u64 = num.parse().map_err(|_| usage(format!("-m {v:?} is not a memory size")))?;
                let mib = mib.checked_mul(mult).ok_or_else(|| usage(format!("-m {v:?} is too large a memory size")))?;
                def["memory_mib"] = json!(mib);
            }
            "-smp" => {
                let v = value(&mut it, opt)?;
                let n = v.split(',').find_map(|p| p.strip_prefix("cpus=").or(p.parse::<u32>().ok().map(|_| p)));
                let n: u32 =
                    n.and_then(|n| n.parse().ok()).ok_or_else(|| usage(format!("-smp {v:?}: no cpu count")))?;
                def["vcpus"] = json!(n);
            }
            "-drive" => {
                let v = value(&mut it, opt)?;
                let mut disk = json!({});
                for p in v.split(',') {
                    match p.split_once('=') {
                        Some(("file", f)) => disk["path"] = json!(f),
                        Some(("format", f)) => disk["format"] = json!(f),
                        Some(("if", i)) => disk["interface"] = json!(i),
                        _ => ignored.push(format!("-drive …{p}")),
                    }
                }
                disks.push(disk);
            }
            "-hda" => disks.push(json!({"path": value(&mut it, opt)?, "interface": "ide"})),
            "-kernel" => def["boot"]["kernel"] = json!(value(&mut it, opt)?),
            "-initrd" => def["boot"]["initrd"] = json!(value(&mut it, opt)?),
            "-append" => def["boot"]["cmdline"] = json!(value(&mut it, opt)?),
            "-enable-kvm" => def["accel"] = json!("kvm"),
            "-accel" => def["accel"] = json!(value(&mut it, opt)?.split(',').next().unwrap_or("auto")),
            "-nic" | "-netdev" => {
                let v = value(&mut it, opt)?;
                let mode = if v.starts_with("none") {
                    "none"
                } else if v.starts_with("user") {
                    "user"
                } else {
                    ignored.push(format!("{opt} {v}"));
                    continue;
                };
                if let Some(nics) = def["nics"].as_array_mut() {
                    nics.push(json!({"mode": mode}));
                }
            }
            other => {
                // Options with a value: keep them together in the "ignored" list.
                let takes_value = it.peek().is_some_and(|n| !n.starts_with('-'));
                let shown =
                    if takes_value { format!("{other} {}", it.next().unwrap_or_default()) } else { other.to_string() };
                ignored.push(shown);
            }
        }
    }
    if def["boot"]["kernel"].is_null() && !disks.is_empty() {
        def["boot"]["disk"] = json!(0);
    }
    def["disks"] = json!(disks);
    Ok((def, ignored))
}

/// A VM starts and stops with its group: `action` is `online` or `offline`.
async fn vm_power(c: &Client, fmt: Format, name: &str, action: &str) -> Result<(), Failure> {
    let v: haven_api::VmView = c.get(&format!("/api/v1/vms/{}", seg(name))).await?;
    let g: GroupView = c.post(&format!("/api/v1/groups/{}/{action}", seg(&v.group)), &json!({})).await?;
    if fmt == Format::Json {
        output::json(&g);
    } else {
        println!("VM {name:?}: group {:?} is being brought {action} (`haven vm list` shows progress)", v.group);
    }
    Ok(())
}

async fn vm(c: &Client, fmt: Format, cmd: VmCmd) -> Result<(), Failure> {
    use haven_api::VmView;
    match cmd {
        VmCmd::List => {
            let vms: Vec<VmView> = c.get("/api/v1/vms").await?;
            if fmt == Format::Json {
                output::json(&vms);
            } else {
                output::table(&VM_HEADER, vm_rows(&vms));
            }
        }
        VmCmd::Show { name } => {
            let v: VmView = c.get(&format!("/api/v1/vms/{}", seg(&name))).await?;
            if fmt == Format::Json {
                output::json(&v);
            } else {
                output::table(&VM_HEADER, vm_rows(std::slice::from_ref(&v)));
                if let Some(rt) = &v.runtime {
                    println!("\nqemu pid {}; accelerator: {}", rt.pid, rt.reason_for_accel);
                }
                if let Some(r) = &v.resource.status.reason {
                    println!("last reason: {r}");
                }
            }
        }
        VmCmd::Start { name } => vm_power(c, fmt, &name, "online").await?,
        VmCmd::Stop { name } => vm_power(c, fmt, &name, "offline").await?,
        VmCmd::Create { name, place, vcpus, memory_mib, disks, kernel, initrd, cmdline, heartbeat, accel } => {
            let disks = disks.iter().map(|d| parse_disk(d)).collect::<Result<Vec<_>, _>>()?;
            let boot = json!({"kernel": kernel, "initrd": initrd, "cmdline": cmdline,
                               "disk": if kernel.is_none() && !disks.is_empty() { Some(0) } else { None }});
            let definition = json!({"name": name, "vcpus": vcpus, "memory_mib": memory_mib, "disks": disks,
                                    "boot": boot, "heartbeat": heartbeat, "accel": accel});
            vm_create(c, fmt, place, definition).await?;
        }
        VmCmd::Import { name, place, heartbeat, qemu } => {
            let (mut definition, ignored) = definition_from_qemu(&qemu)?;
            definition["name"] = json!(name);
            definition["heartbeat"] = json!(heartbeat);
            if !ignored.is_empty() {
                eprintln!("note: QEMU options not carried over: {}", ignored.join(" "));
            }
            vm_create(c, fmt, place, definition).await?;
        }
        VmCmd::Console { name } => {
            let text: String = c.get(&format!("/api/v1/vms/{}/console", seg(&name))).await?;
            if fmt == Format::Json {
                output::json(&json!({ "vm": name, "console": text }));
            } else {
                print!("{text}");
            }
        }
        VmCmd::Edit { name, file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
            let v: Value = c.put(&format!("/api/v1/vms/{}/definition", seg(&name)), &json!({ "text": text })).await?;
            print_done(fmt, &v, &format!("definition of {name:?} updated; it applies at the VM's next start"));
        }
        VmCmd::MakeHa { definition, node, name, group, dry_run, fix } => {
            let body = json!({"path": definition, "node": node, "name": name, "group": group,
                              "dry_run": dry_run, "fix": fix});
            let report: haven_model::HaReport = c.post("/api/v1/vms/make-ha", &body).await?;
            if fmt == Format::Json {
                output::json(&report);
            } else {
                print_ha_report(&report);
            }
            if !report.ok {
                return Err(Failure {
                    code: EXIT_REFUSED,
                    message: format!(
                        "the HA wizard refused VM {:?}: {} check(s) failed (above); nothing was changed",
                        report.vm, report.errors
                    ),
                });
            }
        }
        VmCmd::Control { name, line } => {
            let v: Value =
                c.post(&format!("/api/v1/vms/{}/guest-control", seg(&name)), &json!({ "line": line })).await?;
            print_done(fmt, &v, &format!("sent {line:?} to the guest of {name:?}"));
        }
    }
    Ok(())
}

/// Words of `text` in lines of at most `width` characters, each indented by `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The wizard's report for people: each check with its verdict and message, the path
/// rewrites, the plan and the outcome.
fn print_ha_report(r: &haven_model::HaReport) {
    println!("HA wizard: VM {:?} from {} on node {:?}", r.vm, r.definition, r.node);
    println!("group: {}", r.group.as_deref().map(|g| format!("{g:?}")).unwrap_or_else(|| "-".into()));
    println!();
    for c in &r.checks {
        println!("[{}] {} {} — {}", c.result.as_str().to_uppercase(), c.id, c.check, c.title);
        print!("{}", wrap(&c.message, 96, "       "));
    }
    if !r.fixes.is_empty() {
        println!();
        println!("path rewrites (--fix), before → after:");
        for f in &r.fixes {
            let state = if f.applied { "written" } else { "not written" };
            println!("  {} {}: {:?} → {:?} ({state})", f.file, f.field, f.before, f.after);
        }
    }
    if !r.plan.is_empty() {
        println!();
        println!(
            "{}",
            if r.applied { "changes made (one request):" } else { "changes to make (one request, all or nothing):" }
        );
        for (i, p) in r.plan.iter().enumerate() {
            print!("{}", wrap(&format!("{}. {p}", i + 1), 92, "  "));
        }
    }
    println!();
    println!("{}", r.summary());
}

async fn history(c: &Client, fmt: Format, h: HistoryArgs) -> Result<(), Failure> {
    let mut q = vec![format!("limit={}", h.limit)];
    for (k, v) in [("group", &h.group), ("resource", &h.resource), ("node", &h.node)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", seg(v)));
        }
    }
    let events: Vec<Event> = c.get(&format!("/api/v1/history?{}", q.join("&"))).await?;
    if fmt == Format::Json {
        output::json(&events);
    } else {
        let rows =
            events.iter().map(|e| vec![output::time(e.at), e.kind.clone(), e.by.clone(), e.message.clone()]).collect();
        output::table(&["TIME", "EVENT", "BY", "MESSAGE"], rows);
    }
    Ok(())
}

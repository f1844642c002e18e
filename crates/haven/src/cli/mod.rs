//! Command-line parsing and the client subcommands: the clap tree, the exit statuses and
//! the dispatch to one module per command family. Every client subcommand is one or two
//! calls of the typed API client (`haven_api::Client`); nothing here reads the cluster
//! state any other way, and no module spells a route's path.

mod agent;
mod cluster;
mod config;
mod group;
mod history;
mod make_ha;
mod node;
mod resource;
mod token;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use haven_api::{Client, ClientError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::output::{self, Format};

pub use agent::AgentArgs;
pub use cluster::ClusterCmd;
pub use group::GroupCmd;
pub use history::HistoryArgs;
pub use node::NodeCmd;
pub use resource::ResourceCmd;
pub use token::TokenCmd;
pub use vm::VmCmd;

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
  HAVEN_SERVER          the agents to talk to (same as --server), e.g. 127.0.0.1:7401,127.0.0.1:7402
  HAVEN_TOKEN           the API token to send (same as --token)
  HAVEN_CA_FINGERPRINT  the cluster CA to pin, for HTTPS (same as --ca-fingerprint)

CONFIG FILE:
  $XDG_CONFIG_HOME/haven/cli.toml (default ~/.config/haven/cli.toml), mode 0600, with
  `server = \"...\"`, `token = \"hvn_...\"` and `ca_fingerprint = \"...\"`; `haven cluster init`
  writes all three. A flag wins over the environment, the environment over the file; without
  any, the server is 127.0.0.1:7400, no token is sent, and the CLI speaks plain HTTP.";

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
    /// [default: 127.0.0.1:7400, or `server` in cli.toml]
    #[arg(long, global = true, env = "HAVEN_SERVER")]
    pub server: Option<String>,
    /// The API token (`hvn_...`) to send with every request, from `haven cluster init` or
    /// `haven token create`. [default: `token` in cli.toml]
    #[arg(long, global = true, env = "HAVEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA's SHA-256 fingerprint (64 hex digits, as `haven cluster init` and
    /// `haven cluster token create` print it): the CLI then talks HTTPS to the agents and
    /// trusts an agent only if its certificate is signed by that CA (any member of the
    /// cluster; its name is not checked). `init` and `join` talk to an agent that is not in
    /// the cluster yet and ignore it (`join` has its own). [default: `ca_fingerprint` in
    /// cli.toml; without one, plain HTTP, which an agent takes only from its own host unless
    /// it listens on loopback]
    #[arg(long, global = true, env = "HAVEN_CA_FINGERPRINT", value_name = "SHA256")]
    pub ca_fingerprint: Option<String>,
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
    /// Show the cluster's event history: what happened and why, and who asked.
    History(HistoryArgs),
    /// Manage API tokens: create one with a role (reader, operator, admin), list, revoke.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Start a local 3-node cluster with sample groups, and print commands to try.
    Demo(crate::demo::DemoArgs),
    /// The node guard, started by `haven agent` (not by hand): it kills the node's
    /// resources when the agent's lease ends without a renewal, or when the agent is gone.
    #[command(hide = true)]
    Guard(GuardArgs),
}

#[derive(clap::Args, Debug)]
pub struct GuardArgs {
    /// The agent's run directory (`<state_dir>/run`), where resources record their pids.
    #[arg(long)]
    run_dir: std::path::PathBuf,
}

/// `haven guard`: told on its stdin by its parent, the agent (see `haven_drivers::guard`).
pub fn guard(g: &GuardArgs) -> ExitCode {
    use std::os::fd::AsFd;
    let agent = std::os::unix::process::parent_id() as i32;
    let input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::os::unix::net::UnixStream::from(fd),
        Err(e) => {
            eprintln!("error: haven guard cannot use its stdin: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let mut log = |line: &str| eprintln!("{line}");
    match haven_drivers::guard::run(agent, &g.run_dir, input, &mut log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: haven guard: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
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

/// `text`, given as `what` (an option, or a part of one), read as the agent reads that
/// field (a `T` of the wire types); refused (exit status 1, as the agent would refuse it),
/// followed by `hint` if not empty, when it does not fit.
fn wire_value<T: DeserializeOwned>(what: &str, text: &str, hint: &str) -> Result<T, Failure> {
    serde_json::from_value(serde_json::Value::from(text)).map_err(|e| {
        let hint = if hint.is_empty() { String::new() } else { format!("; {hint}") };
        Failure { code: EXIT_REFUSED, message: format!("{what} {text:?} does not fit: {e}{hint}") }
    })
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Cmd::Agent(a) => agent::run(a, false).await,
        Cmd::Witness(a) => agent::run(a, true).await,
        Cmd::Demo(d) => crate::demo::run(d, cli.output).await,
        Cmd::Guard(g) => return guard(&g),
        other => match client(cli.server, cli.token, cli.ca_fingerprint, pins_the_ca(&other)) {
            Ok(c) => client_command(&c, cli.output, other).await,
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

/// Whether `cmd` talks to members of the cluster, so that a configured CA fingerprint
/// applies: `cluster init` and `cluster join` talk to an agent that is not in it yet (it has
/// only a temporary certificate), over plain HTTP unless the server is given as https://.
fn pins_the_ca(cmd: &Cmd) -> bool {
    !matches!(cmd, Cmd::Cluster(ClusterCmd::Init { .. } | ClusterCmd::Join { .. }))
}

/// The client the flags, the environment or the config file describe, in that order (clap
/// reads the first two into `server`, `token` and `ca`). With a CA fingerprint (and `pin`)
/// a bare `host:port` is reached over HTTPS, trusting only that CA.
fn client(server: Option<String>, token: Option<String>, ca: Option<String>, pin: bool) -> Result<Client, Failure> {
    let file = if server.is_none() || token.is_none() || ca.is_none() {
        config::load()?
    } else {
        config::CliConfig::default()
    };
    let server = server.or(file.server).unwrap_or_else(|| "127.0.0.1:7400".to_string());
    let servers = servers(&server)?;
    let ca = ca.filter(|c| !c.trim().is_empty()).or(file.ca_fingerprint);
    let client = match ca.filter(|_| pin) {
        Some(given) => {
            let fingerprint =
                haven_agent::pki::normalize_fingerprint(&given, "ca_fingerprint", haven_agent::pki::PINNED_FROM)
                    .map_err(|e| {
                        usage(format!("{e} (it came from --ca-fingerprint, HAVEN_CA_FINGERPRINT or cli.toml)"))
                    })?;
            let timeouts = (haven_api::client::CONNECT_TIMEOUT, REQUEST_TIMEOUT);
            let (http, _) = haven_agent::pki::pinned_client(&fingerprint, timeouts)
                .map_err(|e| Failure { code: EXIT_UNAVAILABLE, message: e.to_string() })?;
            Client::with_http(&servers, http, "https")
        }
        None if servers.iter().any(|s| s.starts_with("https://")) => {
            return Err(usage(if pin {
                "an https:// server needs the cluster's CA fingerprint to check the agent against: give \
                 --ca-fingerprint (printed by `haven cluster init` and `haven cluster token create`)"
            } else {
                "`cluster init` and `cluster join` talk to an agent that is not in a cluster yet, which has no \
                 certificate the CLI could check: run them on the agent's own host, over plain HTTP (host:port)"
            }));
        }
        None => Client::with_servers(&servers, REQUEST_TIMEOUT),
    };
    Ok(match token.or(file.token) {
        Some(t) => client.with_token(&t),
        None => client,
    })
}

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

async fn client_command(c: &Client, fmt: Format, cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Cluster(cc) => cluster::run(c, fmt, cc).await,
        Cmd::Node(nc) => node::run(c, fmt, nc).await,
        Cmd::Group(gc) => group::run(c, fmt, gc).await,
        Cmd::Resource(rc) => resource::run(c, fmt, rc).await,
        Cmd::History(h) => history::run(c, fmt, h).await,
        Cmd::Vm(v) => vm::run(c, fmt, v).await,
        Cmd::Token(t) => token::run(c, fmt, t).await,
        Cmd::Agent(_) | Cmd::Witness(_) | Cmd::Demo(_) | Cmd::Guard(_) => Ok(()),
    }
}

/// `host:port` of a server given as `http://host:port`.
fn strip(base: &str) -> &str {
    base.trim_start_matches("http://").trim_start_matches("https://")
}

/// The answer of a write that changed something without an object to show: as JSON with
/// `-o json` (through a JSON value, so its keys are sorted as they always were), else `text`.
fn print_done<T: Serialize>(fmt: Format, v: &T, text: &str) {
    if fmt == Format::Json {
        output::json(&serde_json::to_value(v).unwrap_or_default());
    } else {
        println!("{text}");
    }
}

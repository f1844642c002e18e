//! `haven node`: list and show nodes, pause (drain) and resume them, remove a dead one, and
//! set or remove its fence agent.

use std::collections::BTreeMap;

use clap::Subcommand;
use haven_api::{Client, NodeView};
use haven_model::FenceConfig;

use super::{Failure, print_done, usage, wire_value};
use crate::output::{self, Format};

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
    /// Replace NAME's certificate (a key that may have leaked, or a routine change): its
    /// agent makes a new key, the leader signs it, and the old certificate is revoked
    /// everywhere. A node that is down renews when it is back. `haven cluster ca status`
    /// shows when it is done.
    RenewCert { name: String },
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
        /// The account the fence agent runs as. Default: nobody when the Haven agent runs
        /// as root (a fence agent needs the network, not root); give root to run it as root.
        #[arg(long)]
        user: Option<String>,
        /// Remove the node's fence agent instead.
        #[arg(long, conflicts_with = "agent")]
        remove: bool,
    },
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

/// The fence agent set by `node fence` (not `--remove`).
fn fence_config(
    agent: Option<String>,
    params: &[String],
    action: &str,
    timeout: &str,
    user: Option<String>,
) -> Result<FenceConfig, Failure> {
    let mut map = BTreeMap::new();
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            return Err(usage(format!("--param {p:?} is not KEY=VALUE, e.g. --param ip=10.0.0.9")));
        };
        map.insert(k.to_string(), v.to_string());
    }
    Ok(FenceConfig {
        // clap requires --agent without --remove; an empty one is refused by the agent.
        agent: agent.unwrap_or_default(),
        params: map,
        action: wire_value("--action", action, "use off or reboot")?,
        timeout: wire_value("--timeout", timeout, "")?,
        user,
    })
}

pub(super) async fn run(c: &Client, fmt: Format, cmd: NodeCmd) -> Result<(), Failure> {
    let one = |n: NodeView| {
        if fmt == Format::Json {
            output::json(&n);
        } else {
            output::table(&NODE_HEADER, node_rows(&[n]));
        }
    };
    match cmd {
        NodeCmd::List => {
            let nodes = c.nodes().await?;
            if fmt == Format::Json {
                output::json(&nodes);
            } else {
                output::table(&NODE_HEADER, node_rows(&nodes));
            }
        }
        NodeCmd::Show { name } => {
            let n = c.node(&name).await?;
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
        NodeCmd::RenewCert { name } => {
            let n = c.renew_node_certificate(&name).await?;
            if fmt == Format::Json {
                output::json(&n);
            } else {
                println!(
                    "node {:?} renews its certificate (serial {} now; it is revoked once the new one is in place); \
                     follow it with: haven cluster ca status",
                    n.node, n.serial
                );
            }
        }
        NodeCmd::Pause { name } => one(c.set_node_paused(&name, true).await?),
        NodeCmd::Resume { name } => one(c.set_node_paused(&name, false).await?),
        NodeCmd::Fence { name, agent, params, action, timeout, user, remove } => {
            let n = if remove {
                c.remove_fence(&name).await?
            } else {
                c.set_fence(&name, &fence_config(agent, &params, &action, &timeout, user)?).await?
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
            let removed = c.remove_node(&name).await?;
            print_done(fmt, &removed, &format!("node {name:?} removed"));
        }
    }
    Ok(())
}

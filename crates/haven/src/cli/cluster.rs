//! `haven cluster`: found a cluster, join one, show its status, create join tokens.
//! `init` and `join` act on one particular agent, so they refuse a list of servers. `init`
//! prints the cluster's first admin API token once and writes it, with the server, to the
//! CLI's config file (see [`super::config`]).

use clap::Subcommand;
use haven_api::Client;

use super::config::CliConfig;
use super::{Failure, strip, usage};
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Found a new cluster with the agent at --server as its first node (it makes the
    /// cluster CA); prints the CA fingerprint and the first admin API token, and writes the
    /// server and that token to ~/.config/haven/cli.toml (mode 0600; an existing file is
    /// kept as cli.toml.<time>.bak).
    Init {
        /// Cluster name.
        #[arg(long, default_value = "haven")]
        name: String,
        /// Do not write the config file (print the token only).
        #[arg(long)]
        no_config: bool,
    },
    /// Make the agent at --server join the cluster that ADDRESS (any member) belongs to.
    Join {
        /// host:port of any member of the cluster.
        address: String,
        /// A join token from `haven cluster token create` on a member.
        #[arg(long)]
        token: String,
        /// The CA fingerprint `haven cluster token create` printed: the member is trusted
        /// only if its cluster CA has it.
        #[arg(long)]
        ca_fingerprint: String,
    },
    /// Show the cluster name, leader, members and this agent's lease.
    Status,
    /// Join tokens for new nodes.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The cluster CA: show the CAs and every node's certificate, rotate to a new CA,
    /// retire the old one. A rotation keeps the cluster running throughout: the new CA
    /// signs at once, every node renews its certificate by itself, and both CAs stay
    /// trusted (clients pinning either fingerprint keep working) until `retire`.
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Show the trusted CAs (which one signs) and each node's certificate and CA; a
    /// rotation is complete when no renewal is pending.
    Status,
    /// Make a new cluster CA (on the agent at --server, which must be a voter), certified
    /// by the current one; every node then renews its certificate. Prints the new
    /// fingerprint: put it in every CLI config (`ca_fingerprint`) and every script before
    /// you retire the old CA. Updates this CLI's own config file unless --no-config.
    Rotate {
        /// Do not update ~/.config/haven/cli.toml.
        #[arg(long)]
        no_config: bool,
    },
    /// Stop trusting the CA with FINGERPRINT (the old one, after a rotation): refused while
    /// any node still has a certificate it signed. Certificates it signed are refused from
    /// then on, and so is a CLI that still pins it.
    Retire { fingerprint: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// List the join tokens the cluster keeps (never the tokens themselves): id, who made
    /// it, expiry, uses, and whether it is still valid. Expired tokens are dropped a day
    /// after their expiry.
    List,
    /// Revoke a join token before it expires or is used up: it admits no node from now on.
    /// ID is the id `list` (or `create`) shows.
    Revoke { id: String },
    /// Create a join token (shown once: the cluster keeps only its hash) and print it with
    /// the CA fingerprint a joining node checks.
    Create {
        /// How long it is valid, 1s to 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many nodes it admits, 1 to 100.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
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

pub(super) async fn run(c: &Client, fmt: Format, cmd: ClusterCmd) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::Init { name, no_config } => {
            one_server(c, "init")?;
            let r = c.init_cluster(&name).await?;
            // The cluster exists now: a config that cannot be written is a warning, the token
            // is printed either way.
            let saved = if no_config {
                None
            } else {
                let file = CliConfig {
                    server: Some(strip(c.base()).to_string()),
                    token: Some(r.admin_token.clone()),
                    ca_fingerprint: Some(r.ca_fingerprint.clone()),
                };
                match super::config::save(&file) {
                    Ok(saved) => Some(saved),
                    Err(e) => {
                        eprintln!("warning: the admin token was not saved: {e}; keep the token printed here");
                        None
                    }
                }
            };
            if fmt == Format::Json {
                output::json(&r);
            } else {
                println!("cluster {:?} created on {}", r.name, c.base());
                println!("CA fingerprint: {}", r.ca_fingerprint);
                println!("admin API token (shown only now; the cluster keeps only its hash):");
                println!("  {}", r.admin_token);
                match &saved {
                    Some((path, old)) => {
                        println!(
                            "saved with the server and the CA fingerprint in {} (mode 0600): the CLI uses \
                             them from now on, over HTTPS",
                            path.display()
                        );
                        if let Some(old) = old {
                            println!("the previous config file was kept as {}", old.display());
                        }
                    }
                    None => println!("pass it with --token or HAVEN_TOKEN"),
                }
                println!("create a join token for other nodes with:");
                println!("  haven --server {} cluster token create", strip(c.base()));
            }
        }
        ClusterCmd::Join { address, token, ca_fingerprint } => {
            one_server(c, "join")?;
            let n = c.join_cluster(&address, &token, &ca_fingerprint).await?;
            if fmt == Format::Json {
                output::json(&n);
            } else {
                println!("node {:?} joined the cluster as a {:?}", n.node.name, n.node.role);
            }
        }
        ClusterCmd::Status => {
            let s = c.cluster_status().await?;
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
                println!("node guard:   {}", s.node_guard);
                println!("applied:      {}", s.applied_index);
            }
        }
        ClusterCmd::Ca(cmd) => ca(c, fmt, cmd).await?,
        ClusterCmd::Token(TokenCmd::List) => {
            let tokens = c.join_tokens().await?;
            output::list_of(fmt, &tokens, &["ID", "STATUS", "USED", "EXPIRES", "CREATED BY", "CREATED"], |t| {
                vec![
                    t.id.clone(),
                    t.status.clone(),
                    format!("{}/{}", t.used, t.uses),
                    output::time(t.expires_at),
                    t.created_by.clone(),
                    output::time(t.created_at),
                ]
            });
        }
        ClusterCmd::Token(TokenCmd::Revoke { id }) => {
            let r = c.revoke_join_token(&id).await?;
            if fmt == Format::Json {
                output::json(&r);
            } else {
                println!("join token {} revoked: it admits no node from now on", r.revoked);
            }
        }
        ClusterCmd::Token(TokenCmd::Create { ttl, uses }) => {
            let ttl = haven_model::Dur::parse(&ttl).map_err(|e| usage(format!("--ttl: {e}")))?;
            let t = c.create_join_token(&haven_api::JoinTokenRequest { ttl: Some(ttl), uses: Some(uses) }).await?;
            if fmt == Format::Json {
                output::json(&t);
            } else {
                println!("join token:     {}", t.token);
                println!("id:             {} (for `haven cluster token list` and `revoke`)", t.id);
                println!("CA fingerprint: {}", t.ca_fingerprint);
                println!(
                    "admits {} node{}, until {} (it is shown only now)",
                    t.uses,
                    if t.uses == 1 { "" } else { "s" },
                    output::time(t.expires_at)
                );
                println!("join a node with:");
                println!(
                    "  haven --server <new-node> cluster join {} --token {} --ca-fingerprint {}",
                    strip(c.base()),
                    t.token,
                    t.ca_fingerprint
                );
            }
        }
    }
    Ok(())
}

fn ca_rows(s: &haven_api::CaStatus) -> Vec<Vec<String>> {
    s.nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.serial.clone(),
                if n.ca.is_empty() { "(before rotation existed)".into() } else { short(&n.ca).to_string() },
                output::time(n.issued_at),
                if n.renewal_pending { "renewal pending".into() } else { "current".into() },
            ]
        })
        .collect()
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

fn print_ca_status(s: &haven_api::CaStatus) {
    for ca in &s.cas {
        let role = if ca.signing { "signs new certificates" } else { "trusted until retired" };
        println!("CA {} ({role})", ca.fingerprint);
    }
    println!();
    output::table(&["NODE", "SERIAL", "CA", "ISSUED", "CERTIFICATE"], ca_rows(s));
    let pending = s.nodes.iter().filter(|n| n.renewal_pending).count();
    if s.cas.len() > 1 && pending == 0 {
        let old: Vec<&str> = s.cas.iter().filter(|c| !c.signing).map(|c| c.fingerprint.as_str()).collect();
        println!("\nevery node has renewed; retire the old CA with: haven cluster ca retire {}", old.join(" "));
    } else if pending > 0 {
        println!(
            "\n{pending} node{} still to renew (a node that is down renews when it is back)",
            if pending == 1 { "" } else { "s" }
        );
    }
}

async fn ca(c: &Client, fmt: Format, cmd: CaCmd) -> Result<(), Failure> {
    match cmd {
        CaCmd::Status => {
            let s = c.ca_status().await?;
            if fmt == Format::Json {
                output::json(&s);
            } else {
                print_ca_status(&s);
            }
        }
        CaCmd::Rotate { no_config } => {
            one_server(c, "ca rotate")?;
            let r = c.rotate_ca().await?;
            let saved = if no_config { None } else { super::config::set_ca_fingerprint(&r.fingerprint) };
            if fmt == Format::Json {
                output::json(&r);
            } else {
                println!("new CA fingerprint: {}", r.fingerprint);
                println!("previous CA:        {} (trusted until you retire it)", r.previous);
                if let Some(path) = saved {
                    println!("{} now pins the new CA", path.display());
                }
                println!("every node renews its certificate now; follow it with: haven cluster ca status");
                println!(
                    "put the new fingerprint in every CLI config and script, then: haven cluster ca retire {}",
                    r.previous
                );
            }
        }
        CaCmd::Retire { fingerprint } => {
            let s = c.retire_ca(&fingerprint).await?;
            if fmt == Format::Json {
                output::json(&s);
            } else {
                println!("CA {fingerprint} retired: certificates it signed are refused from now on");
                print_ca_status(&s);
            }
        }
    }
    Ok(())
}

//! `haven group`: list, show, create, change, delete, move, and bring groups online or
//! offline.

use clap::{Args, Subcommand};
use haven_api::{Client, GroupView};
use haven_model::{Failback, GroupSpec, GroupUpdate, Priority};

use super::resource::resource_table;
use super::{Failure, print_done, usage};
use crate::output::{self, Format};

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

/// A failback policy for people, in the words of `--failback`.
fn failback_text(f: &Failback) -> String {
    match f {
        Failback::Never => "never (the group stays where it is)".into(),
        Failback::Immediate => "immediate (back as soon as a more preferred owner is up)".into(),
        Failback::Window { start_hour: s, end_hour: e } if s == e => format!("window {s}-{e} UTC (at any hour)"),
        Failback::Window { start_hour: s, end_hour: e } => {
            format!("window {s}-{e} UTC (back to a more preferred owner only from {s:02}:00 to {e:02}:00 UTC)")
        }
    }
}

fn parse_priority(s: &str) -> Result<Priority, Failure> {
    serde_json::from_value(serde_json::Value::from(s))
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

pub(super) async fn run(c: &Client, fmt: Format, cmd: GroupCmd) -> Result<(), Failure> {
    let one = |g: GroupView| {
        if fmt == Format::Json {
            output::json(&g);
        } else {
            output::table(&GROUP_HEADER, group_rows(std::slice::from_ref(&g)));
        }
    };
    match cmd {
        GroupCmd::List => {
            let groups = c.groups().await?;
            if fmt == Format::Json {
                output::json(&groups);
            } else {
                output::table(&GROUP_HEADER, group_rows(&groups));
            }
        }
        GroupCmd::Show { name } => {
            let g = c.group(&name).await?;
            if fmt == Format::Json {
                output::json(&g);
                return Ok(());
            }
            let resources = c.resources_of(&name).await?;
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
            println!("failback:           {}", failback_text(&s.failback));
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
            one(c.create_group(&spec).await?);
        }
        GroupCmd::Set { name, props } => {
            let u = group_update(props)?;
            one(c.update_group(&name, &u).await?);
        }
        GroupCmd::Delete { name } => {
            let deleted = c.delete_group(&name).await?;
            print_done(fmt, &deleted, &format!("group {name:?} deleted"));
        }
        GroupCmd::Move { name, node } => one(c.move_group(&name, &node).await?),
        GroupCmd::Online { name } => one(c.set_group_online(&name, true).await?),
        GroupCmd::Offline { name } => one(c.set_group_online(&name, false).await?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failback_reads_as_the_flag_it_was_set_with() {
        for flag in ["never", "immediate", "22-6", "3-3"] {
            let f = parse_failback(flag).unwrap_or_else(|e| panic!("{flag}: {}", e.message));
            let text = failback_text(&f);
            assert!(text.starts_with(flag) || text.starts_with(&format!("window {flag} ")), "{flag}: {text}");
        }
        assert_eq!(
            failback_text(&Failback::Window { start_hour: 22, end_hour: 6 }),
            "window 22-6 UTC (back to a more preferred owner only from 22:00 to 06:00 UTC)"
        );
    }
}

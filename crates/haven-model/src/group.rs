//! Groups: resources that always live on the same node and move together (the article's
//! "Services or Applications" role), with the properties that govern where they run.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Dur, InvalidInput, Millis, bounds, validate_name};

/// When a group moves back to a preferred owner that returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Failback {
    /// Default: stay where it is (no second interruption).
    #[default]
    Never,
    /// Move back as soon as a more preferred owner is up.
    Immediate,
    /// Move back only between these hours (UTC, 0–23; `start == end` means any hour).
    Window { start_hour: u8, end_hour: u8 },
}

/// Recovery order when capacity is short: higher first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    None,
    Low,
    #[default]
    Medium,
    High,
}

fn default_failover_period() -> Dur {
    Dur::from_secs(6 * 3600)
}
fn default_true() -> bool {
    true
}

/// What an operator writes to create a group. Every field but `name` has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    /// Owners to try first, in order. Default: none (most free capacity wins).
    #[serde(default)]
    pub preferred_owners: Vec<String>,
    /// Nodes allowed to host the group. Default: empty, meaning every node.
    #[serde(default)]
    pub possible_owners: Vec<String>,
    /// Failovers allowed within `failover_period` before the group is left failed.
    /// Default: `null`, meaning (number of nodes − 1), as in Windows failover clustering.
    /// Range: 0-1000.
    #[serde(default)]
    pub failover_threshold: Option<u32>,
    /// Default: 6h. Range: 1s-30days.
    #[serde(default = "default_failover_period")]
    pub failover_period: Dur,
    /// Default: never.
    #[serde(default)]
    pub failback: Failback,
    /// Default: medium.
    #[serde(default)]
    pub priority: Priority,
    /// Whether the group should be running. Default: true (a new group is started).
    #[serde(default = "default_true")]
    pub online: bool,
    /// CPUs the group needs on its owner. Default: 0. Range: 0-4096.
    #[serde(default)]
    pub cpus: u32,
    /// Memory (MiB) the group needs on its owner. Default: 0. Range: 0-67108864 (64 TiB).
    #[serde(default)]
    pub memory_mib: u64,
}

impl GroupSpec {
    pub fn new(name: impl Into<String>) -> Self {
        GroupSpec {
            name: name.into(),
            preferred_owners: Vec::new(),
            possible_owners: Vec::new(),
            failover_threshold: None,
            failover_period: default_failover_period(),
            failback: Failback::Never,
            priority: Priority::Medium,
            online: true,
            cpus: 0,
            memory_mib: 0,
        }
    }

    /// Checks what can be checked without the cluster state (names, ranges).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_name("name", &self.name)?;
        for (i, n) in self.preferred_owners.iter().enumerate() {
            validate_name(&format!("preferred_owners[{i}]"), n)?;
        }
        for (i, n) in self.possible_owners.iter().enumerate() {
            validate_name(&format!("possible_owners[{i}]"), n)?;
        }
        if let Failback::Window { start_hour, end_hour } = self.failback {
            bounds::FAILBACK_HOUR.check_count(u64::from(start_hour))?;
            bounds::FAILBACK_HOUR.check_count(u64::from(end_hour))?;
        }
        if let Some(t) = self.failover_threshold {
            bounds::FAILOVER_THRESHOLD.check_count(u64::from(t))?;
        }
        bounds::FAILOVER_PERIOD.check_dur(self.failover_period)?;
        bounds::GROUP_CPUS.check_count(u64::from(self.cpus))?;
        bounds::GROUP_MEMORY_MIB.check_count(self.memory_mib)?;
        Ok(())
    }
}

/// A partial change to a group's properties; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdate {
    pub preferred_owners: Option<Vec<String>>,
    pub possible_owners: Option<Vec<String>>,
    /// `0` or more; to go back to the default (nodes − 1) use `reset_failover_threshold`.
    pub failover_threshold: Option<u32>,
    #[serde(default)]
    pub reset_failover_threshold: bool,
    pub failover_period: Option<Dur>,
    pub failback: Option<Failback>,
    pub priority: Option<Priority>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

impl GroupUpdate {
    /// Applies the change to a copy of `spec`, so it can be validated as a whole.
    pub fn applied_to(&self, spec: &GroupSpec) -> GroupSpec {
        let mut s = spec.clone();
        if let Some(v) = &self.preferred_owners {
            s.preferred_owners = v.clone();
        }
        if let Some(v) = &self.possible_owners {
            s.possible_owners = v.clone();
        }
        if self.reset_failover_threshold {
            s.failover_threshold = None;
        }
        if let Some(v) = self.failover_threshold {
            s.failover_threshold = Some(v);
        }
        if let Some(v) = self.failover_period {
            s.failover_period = v;
        }
        if let Some(v) = self.failback {
            s.failback = v;
        }
        if let Some(v) = self.priority {
            s.priority = v;
        }
        if let Some(v) = self.cpus {
            s.cpus = v;
        }
        if let Some(v) = self.memory_mib {
            s.memory_mib = v;
        }
        s
    }
}

/// A group as stored in the cluster state: its spec plus where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    #[serde(flatten)]
    pub spec: GroupSpec,
    /// The node the committed state places the group on. Only this node may run its
    /// resources (and only while it holds a lease).
    pub owner: Option<String>,
    /// Increases on every placement change; the fencing token that storage claims carry.
    pub generation: u64,
    /// When each failover within the failover period happened.
    pub failovers: Vec<Millis>,
    /// Set when the group was left failed (failover threshold reached or nowhere to run).
    pub failed_reason: Option<String>,
    /// A planned move in progress: the group has no owner until `from` reports that it
    /// stopped everything of it (`ReleaseGroup`), or is declared down; then it goes to `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
}

/// A planned move (operator move, drain, failback) waiting for the old owner to let go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Handoff {
    /// The owner being left: it stops the group, then releases it.
    pub from: String,
    /// Where the group goes once released.
    pub to: String,
    /// Why it moves (for the history).
    pub reason: String,
}

impl Group {
    /// Failovers allowed in the period: the explicit threshold or `nodes − 1`.
    pub fn effective_failover_threshold(&self, node_count: usize) -> u32 {
        self.spec.failover_threshold.unwrap_or_else(|| u32::try_from(node_count.saturating_sub(1)).unwrap_or(u32::MAX))
    }
}

//! Resource drivers: the code that starts, stops and monitors one resource on the node it
//! runs on. A driver acts and reports what it sees; it makes no decisions (restart, fail
//! over: that is the agent and the policy) and never touches the cluster state.
//!
//! Every driver is idempotent: starting a running resource and stopping a stopped one
//! succeed, so the agent can simply repeat an action after a crash or a timeout. What a
//! driver needs to recognise its resource after an agent restart lives in the resource's
//! run directory (`<state-dir>/run/<resource>`).

mod check;
pub mod disk;
mod error;
pub mod guard;
pub mod make_ha;
mod pidfile;
mod process;
pub mod procfs;
mod sys;
pub mod time;
mod vm;
mod vm_config;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use disk::DiskDriver;
use haven_model::{InvalidInput, ResourceKind, ResourceSpec};
use process::ProcessDriver;
pub use process::{DEFAULT_USER, RunAs, RunAsError, run_as};
use vm_config::VmConfigDriver;

pub use error::DriverError;
pub use vm::{VmDriver, vm_status};
pub use vm_config::{definition_from_text, load_definition};

/// What a driver gets to act on one resource.
#[derive(Clone, Debug)]
pub struct ResourceCtx {
    /// The node this agent runs on, for messages.
    pub node: String,
    pub spec: ResourceSpec,
    /// `<state-dir>/run/<resource>`: the driver's files for this resource (pid file, output
    /// log). Created by the driver if missing.
    pub run_dir: PathBuf,
    /// The agent's state directory: volumes are exposed under `<state-dir>/volumes`, VM
    /// definitions registered under `<state-dir>/vms`.
    pub state_dir: PathBuf,
    /// The placement generation of the resource's group on this node (the fencing token a
    /// `disk` records in its claim, so an older owner cannot take the volume back).
    pub generation: u64,
}

impl ResourceCtx {
    /// The context of `spec` on `node`, with its run directory under `state_dir`, at
    /// generation 0 (see `with_generation`).
    pub fn new(node: impl Into<String>, spec: ResourceSpec, state_dir: &Path) -> Self {
        let run_dir = state_dir.join("run").join(&spec.name);
        ResourceCtx { node: node.into(), spec, run_dir, state_dir: state_dir.to_path_buf(), generation: 0 }
    }

    /// The same context at placement generation `generation`.
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }
}

/// How hard `monitor` looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// LooksAlive: the resource's process exists (every `looks_alive_interval`).
    Cheap,
    /// IsAlive: `Cheap` plus the configured health check (every `is_alive_interval`).
    Thorough,
}

/// What a driver sees of a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Running,
    /// Not running, and not expected to be (never started here, or stopped).
    Stopped,
    /// Running but unhealthy, or ended without being stopped; the reason is for operators.
    Failed(String),
}

/// Starts, stops and monitors resources of one type.
#[async_trait]
pub trait ResourceDriver: Send + Sync {
    /// Brings the resource online. Already running: `Ok`. Returns once it is really up
    /// (its health check passed, if it has one), so dependents can start.
    async fn start(&self, ctx: &ResourceCtx) -> Result<(), DriverError>;
    /// Takes the resource offline. Not running: `Ok`. On `Ok` it is not running.
    async fn stop(&self, ctx: &ResourceCtx) -> Result<(), DriverError>;
    /// Like `stop`, but the graceful part may take at most `grace` before the resource is
    /// killed (zero: kill at once). Self-fencing uses it to be done before the lease ends.
    async fn stop_within(&self, ctx: &ResourceCtx, grace: std::time::Duration) -> Result<(), DriverError> {
        let _ = grace;
        self.stop(ctx).await
    }
    /// Looks at the resource. `Err` means the driver could not look, not that it is down.
    async fn monitor(&self, ctx: &ResourceCtx, depth: Depth) -> Result<Health, DriverError>;
    /// Checks the type-specific parameters without touching the node.
    fn validate(&self, spec: &ResourceSpec) -> Result<(), InvalidInput>;
}

/// One driver per resource type. Keep one instance for the agent's lifetime (drivers hold
/// handles of the processes they started).
#[derive(Default)]
pub struct Drivers {
    process: ProcessDriver,
    disk: DiskDriver,
    vm_config: VmConfigDriver,
    vm: VmDriver,
}

impl Drivers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, kind: ResourceKind) -> &dyn ResourceDriver {
        match kind {
            ResourceKind::Process => &self.process,
            ResourceKind::Disk => &self.disk,
            ResourceKind::VmConfig => &self.vm_config,
            ResourceKind::Vm => &self.vm,
        }
    }

    /// The `vm` driver itself, for what only VMs do (status, guest control).
    pub fn vm(&self) -> &VmDriver {
        &self.vm
    }

    /// What is really running, for an agent that just started: a cheap monitor whose
    /// errors become `Failed` with the error as the reason.
    pub async fn probe(&self, ctx: &ResourceCtx) -> Health {
        match self.get(ctx.spec.kind).monitor(ctx, Depth::Cheap).await {
            Ok(health) => health,
            Err(e) => Health::Failed(e.to_string()),
        }
    }
}

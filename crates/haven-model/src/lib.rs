//! Haven's vocabulary: the types an operator talks about (nodes, groups, resources and
//! their properties), their documented defaults, and validation of user input.
//!
//! This crate is pure: no I/O, no clocks, no async. Everything that crosses the API or
//! is stored in the replicated cluster state is defined here, so one definition serves
//! the agent, the CLI, the simulator and the OpenAPI document.

pub mod bounds;
pub mod deps;
pub mod disk;
pub mod duration;
pub mod error;
pub mod fence;
pub mod group;
pub mod name;
pub mod node;
pub mod resource;
pub mod vm;

pub use disk::{DiskBackend, DiskParams};
pub use duration::Dur;
pub use error::InvalidInput;
pub use fence::{FenceAction, FenceConfig};
pub use group::{Failback, Group, GroupSpec, GroupUpdate, Handoff, Priority};
pub use name::validate_name;
pub use node::{Capacity, Node, NodeLiveness, NodeRole};
pub use resource::{
    HealthCheck, ProcessParams, Resource, ResourceKind, ResourceProps, ResourceSpec, ResourceState, ResourceStatus,
    ResourceUpdate, RestartAction,
};
pub use vm::{
    Accel, CheckResult, DefinitionFormat, DiskInterface, HaCheck, HaPathFix, HaReport, ImageFormat, NicMode, NicModel,
    VmBoot, VmConfigParams, VmDefinition, VmDisk, VmNic, VmParams, VmStatus,
};

/// Milliseconds since the Unix epoch. The pure crates take time as an argument in this
/// unit; only the runtime reads a clock.
pub type Millis = u64;

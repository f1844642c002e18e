//! Request and response bodies of the VM routes (`/api/v1/vms`). The agent serves them; the
//! CLI and the tests read them. Shapes only: the checks are the agent's.

use haven_model::{Resource, VmStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A VM as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VmView {
    pub name: String,
    pub group: String,
    /// The node the cluster state places its group on.
    pub owner: Option<String>,
    /// The `vm` resource's state (`online`, `failed`, …) and where it was reported.
    pub resource: Resource,
    /// From the owner node: accelerator, QEMU pid, guest heartbeat. `None` if it does not
    /// run (or the owner could not be asked).
    pub runtime: Option<VmStatus>,
}

/// `POST /api/v1/vms`: make a VM highly available in an existing group — write its
/// definition on the group's volume and create its `vm-config` and `vm` resources.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// The group (must exist, with a `dir` disk resource for `volume`).
    pub group: String,
    /// The `disk` resource whose volume holds the definition (and, usually, the images).
    pub volume: String,
    /// Written to `<volume>/<name>/vm.toml`; relative paths in it are relative to that
    /// directory. Its `name` names the VM and its resources (`<name>`, `<name>-config`).
    pub definition: haven_model::VmDefinition,
}

/// `POST /api/v1/vms/{name}/guest-control`: a line for the guest's control channel (the
/// test guest understands `freeze`, `thaw` and `poweroff`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestControl {
    pub line: String,
}

/// `POST /api/v1/vms/{name}/guest-control`: the line was written to the guest's channel.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GuestControlSent {
    pub sent: String,
    pub vm: String,
    /// The node that runs the VM.
    pub node: String,
}

/// `PUT /api/v1/vms/{name}/definition`: the new text of the VM's definition file.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionEdit {
    /// The whole file, in the file's own syntax (TOML, or JSON for a `.json` file).
    pub text: String,
}

/// `PUT /api/v1/vms/{name}/definition`: the definition file was replaced.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionEdited {
    pub vm: String,
    /// The file written, on this node.
    pub file: String,
    /// When the change takes effect: "at the VM's next start".
    pub applies: String,
}

//! Resources: the things a group runs (a process, a VM, its definition, a disk), their
//! type-specific parameters, and the properties that govern health checks and restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{DiskParams, Dur, InvalidInput, Millis, VmConfigParams, VmParams, bounds, validate_name};

/// The resource types Haven knows. Each has a driver in `haven-drivers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// A long-running command with health checks.
    Process,
    /// A QEMU guest (`VmParams`), defined by its `vm-config` resource.
    Vm,
    /// A VM definition file on a cluster volume, registered on the node (`VmConfigParams`).
    VmConfig,
    /// A shared volume with a stable id, owned by one node at a time (`DiskParams`).
    Disk,
}

impl ResourceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ResourceKind::Process => "process",
            ResourceKind::Vm => "vm",
            ResourceKind::VmConfig => "vm-config",
            ResourceKind::Disk => "disk",
        }
    }
}

/// What to do when a resource fails (WSFC's "response to resource failure").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartAction {
    /// Leave it failed; the group stays where it is.
    DoNotRestart,
    /// Restart in place up to the threshold, then leave it failed without moving the group.
    RestartNoFailover,
    /// Default: restart in place up to the threshold, then fail the group over.
    #[default]
    RestartAndFailover,
}

fn d_restart_threshold() -> u32 {
    3
}
fn d_restart_period() -> Dur {
    Dur::from_secs(15 * 60)
}
fn d_restart_delay() -> Dur {
    Dur::from_millis(500)
}
fn d_pending_timeout() -> Dur {
    Dur::from_secs(180)
}
fn d_looks_alive() -> Dur {
    Dur::from_secs(5)
}
fn d_is_alive() -> Dur {
    Dur::from_secs(60)
}

/// Health-check and restart properties. Defaults follow Windows failover clustering; the
/// ranges are `crate::bounds`'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceProps {
    /// Default: restart-and-failover.
    #[serde(default)]
    pub restart_action: RestartAction,
    /// Restarts in place allowed within `restart_period`. Default: 3. Range: 0-1000.
    #[serde(default = "d_restart_threshold")]
    pub restart_threshold: u32,
    /// Default: 15m. Range: 1s-30days.
    #[serde(default = "d_restart_period")]
    pub restart_period: Dur,
    /// Wait before a restart in place. Default: 500ms. Range: 0s-1h.
    #[serde(default = "d_restart_delay")]
    pub restart_delay: Dur,
    /// Longest a start or stop may take before it counts as failed. Default: 180s.
    /// Range: 100ms-1day.
    #[serde(default = "d_pending_timeout")]
    pub pending_timeout: Dur,
    /// Interval of the cheap check (the process exists). Default: 5s. Range: 100ms-1day.
    #[serde(default = "d_looks_alive")]
    pub looks_alive_interval: Dur,
    /// Interval of the thorough check (the configured health check). Default: 60s.
    /// Range: 100ms-1day.
    #[serde(default = "d_is_alive")]
    pub is_alive_interval: Dur,
}

impl Default for ResourceProps {
    fn default() -> Self {
        ResourceProps {
            restart_action: RestartAction::default(),
            restart_threshold: d_restart_threshold(),
            restart_period: d_restart_period(),
            restart_delay: d_restart_delay(),
            pending_timeout: d_pending_timeout(),
            looks_alive_interval: d_looks_alive(),
            is_alive_interval: d_is_alive(),
        }
    }
}

impl ResourceProps {
    /// Every property within its documented bound (`crate::bounds`).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        bounds::RESTART_THRESHOLD.check_count(u64::from(self.restart_threshold))?;
        bounds::RESTART_PERIOD.check_dur(self.restart_period)?;
        bounds::RESTART_DELAY.check_dur(self.restart_delay)?;
        bounds::PENDING_TIMEOUT.check_dur(self.pending_timeout)?;
        bounds::LOOKS_ALIVE_INTERVAL.check_dur(self.looks_alive_interval)?;
        bounds::IS_ALIVE_INTERVAL.check_dur(self.is_alive_interval)?;
        Ok(())
    }
}

/// A thorough (IsAlive) health check for a `process` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthCheck {
    /// Runs a command; exit status 0 means healthy.
    Command {
        argv: Vec<String>,
        #[serde(default = "d_check_timeout")]
        timeout: Dur,
    },
    /// Connects to `host:port`.
    Tcp {
        address: String,
        #[serde(default = "d_check_timeout")]
        timeout: Dur,
    },
    /// GETs an `http://` URL; any 2xx or 3xx status means healthy.
    Http {
        url: String,
        #[serde(default = "d_check_timeout")]
        timeout: Dur,
    },
}

fn d_check_timeout() -> Dur {
    Dur::from_secs(5)
}

/// Parameters of a `process` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessParams {
    /// The program and its arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables. Default: none. (Haven sets `HAVEN_RESOURCE` to the
    /// resource's name last: the node guard knows a resource's processes by it.)
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory. Default: the resource's run directory under the agent's state dir.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as this user (another user than the agent's needs the agent to run as root).
    /// Default: when the agent runs as root, the unprivileged account `nobody` (the node
    /// must have it), and the run directory is handed to it; running as `root` is a choice
    /// to write down here. When the agent does not run as root, the agent's own user.
    #[serde(default)]
    pub user: Option<String>,
    /// The thorough check, run every `is_alive_interval`. Default: none (only the cheap
    /// check that the process exists).
    #[serde(default)]
    pub check: Option<HealthCheck>,
}

impl ProcessParams {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.argv.is_empty() || self.argv[0].trim().is_empty() {
            return Err(InvalidInput::new(
                "params.argv",
                "is empty; give the program and its arguments, e.g. [\"sleep\", \"infinity\"]",
            ));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(InvalidInput::new(
                    "params.env",
                    format!("{k:?} is not a valid variable name; names are non-empty and have no '='"),
                ));
            }
        }
        if let Some(
            HealthCheck::Command { timeout, .. } | HealthCheck::Tcp { timeout, .. } | HealthCheck::Http { timeout, .. },
        ) = &self.check
        {
            bounds::CHECK_TIMEOUT.check_dur(*timeout)?;
        }
        match &self.check {
            Some(HealthCheck::Command { argv, .. }) if argv.is_empty() => Err(InvalidInput::new(
                "params.check.argv",
                "is empty; give a command whose exit status 0 means healthy",
            )),
            Some(HealthCheck::Tcp { address, .. }) if !address.contains(':') => Err(InvalidInput::new(
                "params.check.address",
                format!("{address:?} has no port; write it as host:port, e.g. \"127.0.0.1:8080\""),
            )),
            Some(HealthCheck::Http { url, .. }) if !url.starts_with("http://") => Err(InvalidInput::new(
                "params.check.url",
                format!("{url:?} is not an http:// URL; write e.g. \"http://127.0.0.1:8080/health\""),
            )),
            _ => Ok(()),
        }
    }
}

/// What an operator writes to create a resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    pub name: String,
    /// The group it belongs to (must exist).
    pub group: String,
    #[serde(rename = "type")]
    pub kind: ResourceKind,
    /// Type-specific parameters: `ProcessParams`, `VmParams`, `VmConfigParams` or `DiskParams`.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub props: ResourceProps,
    /// Resources of the same group that must be online before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

impl ResourceSpec {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_name("name", &self.name)?;
        validate_name("group", &self.group)?;
        for (i, d) in self.depends_on.iter().enumerate() {
            validate_name(&format!("depends_on[{i}]"), d)?;
            if d == &self.name {
                return Err(InvalidInput::new(
                    format!("depends_on[{i}]"),
                    format!("resource {:?} cannot depend on itself", self.name),
                ));
            }
        }
        self.props.validate()?;
        match self.kind {
            ResourceKind::Process => self.process_params()?.validate(),
            ResourceKind::Vm => self.vm_params()?.validate(),
            ResourceKind::VmConfig => self.vm_config_params()?.validate(),
            ResourceKind::Disk => self.disk_params()?.validate(),
        }
    }

    /// The typed parameters of a `process` resource; the error names the field.
    pub fn process_params(&self) -> Result<ProcessParams, InvalidInput> {
        parse_params(&self.params)
    }

    /// The typed parameters of a `vm` resource.
    pub fn vm_params(&self) -> Result<VmParams, InvalidInput> {
        parse_params(&self.params)
    }

    /// The typed parameters of a `vm-config` resource.
    pub fn vm_config_params(&self) -> Result<VmConfigParams, InvalidInput> {
        parse_params(&self.params)
    }

    /// The typed parameters of a `disk` resource.
    pub fn disk_params(&self) -> Result<DiskParams, InvalidInput> {
        parse_params(&self.params)
    }
}

fn parse_params<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, InvalidInput> {
    serde_json::from_value(v.clone()).map_err(|e| InvalidInput::new("params", e.to_string()))
}

/// A partial change to a resource; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceUpdate {
    /// Replaces the parameters as a whole.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Properties to change, e.g. `{"restart_threshold": 5}`; others keep their values.
    #[schema(value_type = Option<Object>)]
    pub props: Option<serde_json::Map<String, serde_json::Value>>,
    /// Replaces the dependency list.
    pub depends_on: Option<Vec<String>>,
}

impl ResourceUpdate {
    /// The spec after this change, validated as a whole.
    pub fn applied_to(&self, spec: &ResourceSpec) -> Result<ResourceSpec, InvalidInput> {
        let mut s = spec.clone();
        if let Some(p) = &self.params {
            s.params = p.clone();
        }
        if let Some(changes) = &self.props {
            let mut merged = match serde_json::to_value(&s.props) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            for (k, v) in changes {
                merged.insert(k.clone(), v.clone());
            }
            s.props = serde_json::from_value(serde_json::Value::Object(merged))
                .map_err(|e| InvalidInput::new("props", e.to_string()))?;
        }
        if let Some(d) = &self.depends_on {
            s.depends_on = d.clone();
        }
        s.validate()?;
        Ok(s)
    }
}

/// The state of a resource as its owner node last reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResourceState {
    #[default]
    Offline,
    Starting,
    Online,
    Stopping,
    Failed,
}

/// Runtime status of a resource, reported by the node that runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResourceStatus {
    pub state: ResourceState,
    /// The node that reported this state.
    pub node: Option<String>,
    pub since: Millis,
    /// Why it is in this state (the last failure, the last operator action…).
    pub reason: Option<String>,
    /// Times of failures on the current owner within the restart period.
    pub failures: Vec<Millis>,
}

/// A resource as stored in the cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resource {
    #[serde(flatten)]
    pub spec: ResourceSpec,
    pub status: ResourceStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(params: serde_json::Value) -> ResourceSpec {
        ResourceSpec {
            name: "web".into(),
            group: "g".into(),
            kind: ResourceKind::Process,
            params,
            props: ResourceProps::default(),
            depends_on: vec![],
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let p: ResourceProps = serde_json::from_str("{}").unwrap();
        expect_test::expect![[r#"{"restart_action":"restart-and-failover","restart_threshold":3,"restart_period":"15m","restart_delay":"500ms","pending_timeout":"3m","looks_alive_interval":"5s","is_alive_interval":"1m"}"#]]
            .assert_eq(&serde_json::to_string(&p).unwrap());
    }

    #[test]
    fn unknown_param_is_named() {
        let e = spec(serde_json::json!({"argv": ["x"], "argz": 1})).validate().unwrap_err();
        assert_eq!(e.field, "params");
        assert!(e.message.contains("unknown field `argz`"), "{}", e.message);
    }

    #[test]
    fn props_update_merges_and_names_bad_values() {
        let s = spec(serde_json::json!({"argv": ["sleep", "9"]}));
        let mut props = serde_json::Map::new();
        props.insert("restart_threshold".into(), serde_json::json!(5));
        let u = ResourceUpdate { props: Some(props), ..Default::default() };
        let s2 = u.applied_to(&s).unwrap();
        assert_eq!(s2.props.restart_threshold, 5);
        assert_eq!(s2.props.restart_delay, s.props.restart_delay);

        let mut bad = serde_json::Map::new();
        bad.insert("restart_period".into(), serde_json::json!("forever"));
        let e = ResourceUpdate { props: Some(bad), ..Default::default() }.applied_to(&s).unwrap_err();
        assert!(e.to_string().contains("\"forever\" is not a duration"), "{e}");
    }
}

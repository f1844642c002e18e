//! Builders for the request bodies callers write most: a resource of each type with its
//! typed parameters, default properties and no dependencies. Change the rest with struct
//! update syntax, e.g. `ResourceSpec { depends_on: vec!["db".into()], ..specs::process(..) }`.
//!
//! A resource's `params` are JSON on the wire (their type depends on the resource's type);
//! these functions fill them from the typed parameters of `haven-model`, so a caller never
//! spells their field names.

use haven_model::{DiskBackend, DiskParams, ProcessParams, ResourceKind, ResourceProps, ResourceSpec, VmConfigParams};
use serde::Serialize;

/// A resource `name` of `group` of type `kind` with parameters `params` (the typed
/// parameters of that type), default properties and no dependencies.
pub fn resource(name: &str, group: &str, kind: ResourceKind, params: &impl Serialize) -> ResourceSpec {
    ResourceSpec {
        name: name.to_string(),
        group: group.to_string(),
        kind,
        // Parameter types are plain data (strings, numbers, maps): encoding cannot fail.
        params: serde_json::to_value(params).unwrap_or_default(),
        props: ResourceProps::default(),
        depends_on: Vec::new(),
    }
}

/// The parameters of a `process` resource that runs `argv` (no environment, working
/// directory, user or health check of its own).
pub fn process_params<S: AsRef<str>>(argv: &[S]) -> ProcessParams {
    ProcessParams {
        argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
        env: Default::default(),
        cwd: None,
        user: None,
        check: None,
    }
}

/// A `process` resource `name` of `group` that runs `argv`.
pub fn process<S: AsRef<str>>(name: &str, group: &str, argv: &[S]) -> ResourceSpec {
    resource(name, group, ResourceKind::Process, &process_params(argv))
}

/// A `disk` resource `name` of `group`: the `dir` volume `volume_name` (id `volume_id`),
/// the shared directory `path` that holds its `.haven-volume` file.
pub fn dir_disk(name: &str, group: &str, volume_id: &str, volume_name: &str, path: &str) -> ResourceSpec {
    let params = DiskParams {
        backend: DiskBackend::Dir,
        volume_id: volume_id.to_string(),
        volume_name: volume_name.to_string(),
        path: Some(path.to_string()),
        uuid: None,
    };
    resource(name, group, ResourceKind::Disk, &params)
}

/// A `vm-config` resource `name` of `group` for the definition file `path` (on a cluster
/// volume, e.g. `vol1/web/vm.toml`).
pub fn vm_config(name: &str, group: &str, path: &str) -> ResourceSpec {
    resource(name, group, ResourceKind::VmConfig, &VmConfigParams { path: path.to_string() })
}

/// A `vm` resource `name` of `group` run from the `vm-config` resource `config`, with the
/// agent's default timeouts (heartbeat, shutdown, boot): only `config` is sent, so the
/// defaults are the agent's own. For other timeouts, build a `haven_model::VmParams` and
/// call [`resource`].
pub fn vm(name: &str, group: &str, config: &str) -> ResourceSpec {
    #[derive(Serialize)]
    struct ConfigOnly<'a> {
        config: &'a str,
    }
    resource(name, group, ResourceKind::Vm, &ConfigOnly { config })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_specs_are_what_the_agent_reads() {
        let p = process("r", "g", &["sleep", "infinity"]);
        p.validate().expect("a valid process resource");
        assert_eq!(p.process_params().expect("process params").argv, ["sleep", "infinity"]);
        let d = dir_disk("vol1", "g", "id-1", "vol1", "/srv/vol1");
        d.validate().expect("a valid disk resource");
        assert_eq!(d.disk_params().expect("disk params").path.as_deref(), Some("/srv/vol1"));
        let c = vm_config("web-config", "g", "vol1/web/vm.toml");
        c.validate().expect("a valid vm-config resource");
        let v = vm("web", "g", "web-config");
        v.validate().expect("a valid vm resource");
        assert_eq!(v.params, serde_json::json!({"config": "web-config"}));
        // What goes on the wire reads back as the same spec.
        let wire = serde_json::to_vec(&p).expect("encode");
        assert_eq!(crate::body::parse_json::<ResourceSpec>(&wire).expect("decode"), p);
    }
}

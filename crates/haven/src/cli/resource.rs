//! `haven resource`: list, show, create, change, delete resources and clear their failures.
//! A process resource is built from flags (`-- argv`, `--env`, `--check-*`); other types
//! take their parameters as JSON (`--params-json`).

use std::collections::BTreeMap;

use clap::Subcommand;
use haven_api::{Client, ResourceView};
use haven_model::{Dur, HealthCheck, ProcessParams, ResourceKind, ResourceProps, ResourceSpec, ResourceUpdate};
use serde_json::Value;

use super::{EXIT_REFUSED, Failure, print_done, usage};
use crate::output::{self, Format};

// Parsed once per run; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ResourceCmd {
    /// List resources with their state and node.
    List {
        /// Only this group's resources.
        #[arg(long)]
        group: Option<String>,
    },
    /// Show one resource with its parameters, properties and status.
    Show { name: String },
    /// Create a resource. For a process: `haven resource create web --group g -- python3 -m http.server 8080`.
    Create {
        name: String,
        /// The group it belongs to.
        #[arg(long)]
        group: String,
        /// Resource type.
        #[arg(long = "type", default_value = "process")]
        kind: String,
        /// Resources of the same group it depends on (comma-separated).
        #[arg(long, value_delimiter = ',')]
        depends_on: Vec<String>,
        /// Environment variable for the process, KEY=VALUE (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Working directory of the process.
        #[arg(long)]
        cwd: Option<String>,
        /// Run the process as this user. [default: `nobody` when the agent runs as root (its
        /// run directory is handed to it); give `root` to run as root]
        #[arg(long)]
        user: Option<String>,
        /// Thorough health check: connect to host:port.
        #[arg(long, conflicts_with_all = ["check_http", "check_cmd"])]
        check_tcp: Option<String>,
        /// Thorough health check: GET this http:// URL.
        #[arg(long, conflicts_with = "check_cmd")]
        check_http: Option<String>,
        /// Thorough health check: run this command (via sh -c); exit 0 = healthy.
        #[arg(long)]
        check_cmd: Option<String>,
        /// Property KEY=VALUE, e.g. restart_threshold=5 or looks_alive_interval=1s (repeatable).
        #[arg(long = "prop")]
        props: Vec<String>,
        /// Parameters as a JSON object instead of the flags above.
        #[arg(long)]
        params_json: Option<String>,
        /// The program and its arguments (after --).
        #[arg(last = true)]
        argv: Vec<String>,
    },
    /// Change a resource's properties or dependencies.
    Set {
        name: String,
        /// Property KEY=VALUE (repeatable).
        #[arg(long = "prop")]
        props: Vec<String>,
        /// Replace the dependency list (comma-separated; empty string for none).
        #[arg(long, value_delimiter = ',')]
        depends_on: Option<Vec<String>>,
        /// Replace the parameters with this JSON object.
        #[arg(long)]
        params_json: Option<String>,
    },
    /// Delete a resource once no node may be running it (offline or failed): take its group offline first.
    Delete { name: String },
    /// Forget a resource's failures so it (and its group) can run again.
    Clear { name: String },
}

/// Resources as a table (also under `haven group show`).
pub(super) fn resource_table(resources: &[ResourceView]) {
    let rows = resources
        .iter()
        .map(|r| {
            vec![
                r.spec.name.clone(),
                r.spec.kind.as_str().to_string(),
                r.spec.group.clone(),
                format!("{:?}", r.status.state).to_lowercase(),
                output::opt(&r.status.node),
                output::list(&r.spec.depends_on),
                r.status.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["NAME", "TYPE", "GROUP", "STATE", "NODE", "DEPENDS ON", "REASON"], rows);
}

/// `--prop KEY=VALUE` flags as the JSON object of a resource's `props`.
fn parse_props(props: &[String]) -> Result<serde_json::Map<String, Value>, Failure> {
    let mut map = serde_json::Map::new();
    for p in props {
        let Some((k, v)) = p.split_once('=') else {
            return Err(usage(format!("--prop {p:?} is not KEY=VALUE, e.g. --prop restart_threshold=5")));
        };
        // Numbers stay numbers; everything else is a string (durations like 5s, actions).
        let value = v.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(v));
        map.insert(k.trim().to_string(), value);
    }
    Ok(map)
}

/// The properties of a new resource: the defaults with `props` changed. A property that
/// does not fit is refused (exit status 1, as the agent refuses it), naming it.
fn new_props(props: serde_json::Map<String, Value>) -> Result<ResourceProps, Failure> {
    let read = |map: serde_json::Map<String, Value>| serde_json::from_value::<ResourceProps>(Value::Object(map));
    // Each alone first, so that the error names the property at fault.
    for (k, v) in &props {
        if let Err(e) = read(serde_json::Map::from_iter([(k.clone(), v.clone())])) {
            return Err(Failure {
                code: EXIT_REFUSED,
                message: format!("--prop {k}={v}: field props.{k} does not fit: {e}"),
            });
        }
    }
    read(props).map_err(|e| Failure { code: EXIT_REFUSED, message: format!("--prop: {e}") })
}

fn params_json(text: &str) -> Result<Value, Failure> {
    serde_json::from_str::<Value>(text).map_err(|e| usage(format!("--params-json is not valid JSON: {e}")))
}

pub(super) async fn run(c: &Client, fmt: Format, cmd: ResourceCmd) -> Result<(), Failure> {
    let one = |r: ResourceView| {
        if fmt == Format::Json {
            output::json(&r);
        } else {
            resource_table(std::slice::from_ref(&r));
        }
    };
    match cmd {
        ResourceCmd::List { group } => {
            let resources = match &group {
                Some(g) => c.resources_of(g).await?,
                None => c.resources().await?,
            };
            if fmt == Format::Json {
                output::json(&resources);
            } else {
                resource_table(&resources);
            }
        }
        ResourceCmd::Show { name } => {
            let r = c.resource(&name).await?;
            if fmt == Format::Json {
                output::json(&r);
                return Ok(());
            }
            resource_table(std::slice::from_ref(&r));
            println!();
            println!("params: {}", serde_json::to_string(&r.spec.params).unwrap_or_default());
            println!("props:  {}", serde_json::to_string(&r.spec.props).unwrap_or_default());
            if !r.status.failures.is_empty() {
                let times: Vec<String> = r.status.failures.iter().map(|t| output::time(*t)).collect();
                println!("recent failures: {}", times.join(", "));
            }
        }
        ResourceCmd::Create {
            name,
            group,
            kind,
            depends_on,
            env,
            cwd,
            user,
            check_tcp,
            check_http,
            check_cmd,
            props,
            params_json: params_text,
            argv,
        } => {
            let kind: ResourceKind = serde_json::from_value(Value::from(kind.as_str())).map_err(|_| {
                usage(format!("--type {kind:?} is not a resource type; the types are: process, vm, vm-config, disk"))
            })?;
            let params = match params_text {
                Some(text) => params_json(&text)?,
                None if kind != ResourceKind::Process => {
                    return Err(usage(format!(
                        "a {} resource takes its parameters as JSON: --params-json '{{...}}' (see `haven vm --help` for VMs)",
                        kind.as_str()
                    )));
                }
                None => {
                    if argv.is_empty() {
                        return Err(usage(
                            "a process resource needs a command after --, e.g. `haven resource create web --group g -- sleep infinity`",
                        ));
                    }
                    let mut envs = BTreeMap::new();
                    for e in env {
                        let Some((k, v)) = e.split_once('=') else {
                            return Err(usage(format!("--env {e:?} is not KEY=VALUE")));
                        };
                        envs.insert(k.to_string(), v.to_string());
                    }
                    let check = if let Some(a) = check_tcp {
                        Some(HealthCheck::Tcp { address: a, timeout: Dur::from_secs(5) })
                    } else if let Some(u) = check_http {
                        Some(HealthCheck::Http { url: u, timeout: Dur::from_secs(5) })
                    } else {
                        check_cmd.map(|cmd| HealthCheck::Command {
                            argv: vec!["sh".into(), "-c".into(), cmd],
                            timeout: Dur::from_secs(5),
                        })
                    };
                    let params = ProcessParams { argv, env: envs, cwd, user, check };
                    serde_json::to_value(params).map_err(|e| usage(format!("cannot encode the parameters: {e}")))?
                }
            };
            let props = new_props(parse_props(&props)?)?;
            let spec = ResourceSpec { name, group, kind, params, props, depends_on };
            one(c.create_resource(&spec).await?);
        }
        ResourceCmd::Set { name, props, depends_on, params_json: params_text } => {
            let props = parse_props(&props)?;
            let update = ResourceUpdate {
                params: params_text.as_deref().map(params_json).transpose()?,
                props: (!props.is_empty()).then_some(props),
                depends_on: depends_on.map(|d| d.into_iter().filter(|s| !s.is_empty()).collect()),
            };
            one(c.update_resource(&name, &update).await?);
        }
        ResourceCmd::Delete { name } => {
            let deleted = c.delete_resource(&name).await?;
            print_done(fmt, &deleted, &format!("resource {name:?} deleted"));
        }
        ResourceCmd::Clear { name } => one(c.clear_resource(&name).await?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(flags: &[&str]) -> Result<ResourceProps, Failure> {
        new_props(parse_props(&flags.iter().map(|f| f.to_string()).collect::<Vec<_>>())?)
    }

    #[test]
    fn props_of_a_new_resource_are_the_defaults_with_the_flags_applied() {
        let p =
            props(&["restart_threshold=5", "looks_alive_interval=200ms"]).unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(
            p,
            ResourceProps { restart_threshold: 5, looks_alive_interval: Dur::from_millis(200), ..Default::default() }
        );
        let Err(f) = props(&["looks_alive_interval=1s", "restart_period=forever"]) else {
            panic!("forever is refused")
        };
        assert_eq!(f.code, EXIT_REFUSED);
        assert!(
            f.message.contains("props.restart_period") && f.message.contains("\"forever\" is not a duration"),
            "{}",
            f.message
        );
        let Err(f) = props(&["restart_treshold=5"]) else { panic!("an unknown property is refused") };
        assert!(f.message.contains("props.restart_treshold") && f.message.contains("unknown field"), "{}", f.message);
    }
}

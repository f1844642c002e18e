//! Every bound of `haven_model::bounds::ALL`, fed through the entry point that really
//! reads it (a resource, group, fence or VM definition as JSON, validated the way
//! `State::apply` does): both ends are accepted, one step beyond each end and the largest
//! value the type can hold (for durations also the issue's `292277000000y`) are refused,
//! with a message that names the field, the value and the bound. The agent's `timing.*`
//! values are tested beside the config file parser (`haven-agent`, `config.rs`).

use haven_model::bounds::{ALL, Bound, Limit};
use haven_model::{Capacity, DefinitionFormat, FenceConfig, GroupSpec, InvalidInput, ResourceSpec, VmDefinition};
use serde_json::{Value, json};

/// Validates `value` written into the field `bound` describes; `None` if this test does
/// not drive that bound (the agent config's timing).
fn validate(bound: &Bound, value: Value) -> Option<Result<(), InvalidInput>> {
    let parse_err = |e: serde_json::Error| InvalidInput::new("json", e.to_string());
    let field = bound.field;
    let resource = |kind: &str, params: Value, props: Value| -> Result<(), InvalidInput> {
        let spec = json!({"name": "r", "group": "g", "type": kind, "params": params, "props": props});
        serde_json::from_value::<ResourceSpec>(spec).map_err(parse_err)?.validate()
    };
    Some(match bound.applies_to {
        "resource props" => {
            let prop = field.strip_prefix("props.").expect("props field");
            resource("process", json!({"argv": ["sleep", "1"]}), json!({ prop: value }))
        }
        "process params" => {
            assert_eq!(field, "params.check.timeout");
            let check = json!({"kind": "tcp", "address": "127.0.0.1:1", "timeout": value});
            resource("process", json!({"argv": ["sleep", "1"], "check": check}), json!({}))
        }
        "vm params" => {
            let param = field.strip_prefix("params.").expect("params field");
            resource("vm", json!({"config": "c", param: value}), json!({}))
        }
        "VM definition" => {
            let mut def = json!({"name": "v", "vcpus": 1, "memory_mib": 64, "boot": {"kernel": "vmlinuz"}});
            match field {
                "disks" | "nics" => {
                    let n = value.as_u64().expect("a count") as usize;
                    let one = if field == "disks" { json!({"path": "d.img"}) } else { json!({}) };
                    def[field] = Value::Array(vec![one; n.min(10_000)]);
                }
                _ => def[field] = value,
            }
            VmDefinition::parse(&def.to_string(), DefinitionFormat::Json).map(|_| ())
        }
        "group" => {
            let mut g = json!({"name": "g"});
            if field == "failback" {
                g["failback"] = json!({"mode": "window", "start_hour": 0, "end_hour": value});
            } else {
                g[field] = value;
            }
            serde_json::from_value::<GroupSpec>(g).map_err(parse_err).and_then(|g| g.validate())
        }
        "node fence" => {
            let f = json!({"agent": "fence_dummy", field: value});
            serde_json::from_value::<FenceConfig>(f).map_err(parse_err).and_then(|f| f.validate())
        }
        "agent config" => {
            let key = field.strip_prefix("capacity.")?;
            let mut c = json!({"cpus": 1, "memory_mib": 1024});
            c[key] = value;
            serde_json::from_value::<Capacity>(c).map_err(parse_err).and_then(|c| c.validate())
        }
        other => panic!("bound {field} applies to {other:?}, which this test does not know"),
    })
}

/// The largest value the field's type holds (what a client can send at most).
fn type_max(bound: &Bound) -> u64 {
    match bound.field {
        "memory_mib" | "capacity.memory_mib" => u64::MAX,
        "failback" => u64::from(u8::MAX),
        "disks" | "nics" => 10_000,
        _ => u64::from(u32::MAX),
    }
}

fn refused(bound: &Bound, value: Value, mentions: &[String]) {
    let e = validate(bound, value.clone()).expect("driven").expect_err(&format!("{} = {value} accepted", bound.field));
    assert_eq!(e.field, bound.field, "{e}");
    for m in mentions {
        assert!(e.message.contains(m.as_str()), "{}: {e} does not mention {m:?}", bound.field);
    }
}

#[test]
fn every_bound_is_enforced_where_the_value_is_read() {
    let mut driven = 0;
    for b in ALL {
        if validate(b, json!(0)).is_none() {
            continue;
        }
        driven += 1;
        match b.limit {
            Limit::Duration { min, max } => {
                let text = |d: haven_model::Dur| json!(d.to_string());
                assert_eq!(validate(b, text(min)), Some(Ok(())), "{} at its minimum {min}", b.field);
                assert_eq!(validate(b, text(max)), Some(Ok(())), "{} at its maximum {max}", b.field);
                let over = haven_model::Dur(max.0 + std::time::Duration::from_millis(1));
                refused(b, text(over), &[over.to_string(), max.to_string(), "too long".into()]);
                refused(b, json!("292277000000y"), &["292277000000years".into(), max.to_string()]);
                refused(b, json!(u64::MAX), &[max.to_string()]);
                if !min.0.is_zero() {
                    let under = haven_model::Dur(min.0 - std::time::Duration::from_millis(1));
                    refused(b, text(under), &[under.to_string(), min.to_string(), "too short".into()]);
                }
            }
            Limit::Count { min, max, .. } => {
                assert_eq!(validate(b, json!(min)), Some(Ok(())), "{} at its minimum {min}", b.field);
                assert_eq!(validate(b, json!(max)), Some(Ok(())), "{} at its maximum {max}", b.field);
                refused(b, json!(max + 1), &[(max + 1).to_string(), max.to_string(), "too large".into()]);
                let top = type_max(b);
                refused(b, json!(top), &[top.to_string(), max.to_string()]);
                if min > 0 {
                    refused(b, json!(min - 1), &[(min - 1).to_string(), min.to_string(), "too small".into()]);
                }
            }
        }
    }
    assert_eq!(driven, ALL.len() - 3, "every bound but the agent's timing.* is driven here");
}

/// The exact message of the issue's value, as the API and the CLI show it.
#[test]
fn the_overflowing_interval_of_the_issue_is_refused_with_its_bound() {
    let spec = json!({"name": "pan1", "group": "pan", "type": "process", "params": {"argv": ["sleep", "infinity"]},
        "props": {"is_alive_interval": "292277000000y"}});
    let e = serde_json::from_value::<ResourceSpec>(spec).unwrap().validate().unwrap_err();
    expect_test::expect![
        "invalid props.is_alive_interval: 292277000000years is too long; the most allowed is 1day (use 100ms to 1day)"
    ]
    .assert_eq(&e.to_string());
}

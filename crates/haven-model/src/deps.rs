//! Dependency order within a group: a resource starts after everything it depends on and
//! stops before it. Dependencies form a DAG; a cycle is rejected with its path spelled out.

use std::collections::{BTreeMap, BTreeSet};

use crate::InvalidInput;

/// Orders `deps` (resource → what it depends on) so every resource comes after its
/// dependencies; ties are broken by name so the order is stable. Dependencies naming a
/// resource outside `deps` are ignored here (the caller checks existence).
pub fn start_order(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, InvalidInput> {
    let mut order = Vec::with_capacity(deps.len());
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut visiting: Vec<&str> = Vec::new();
    for name in deps.keys() {
        visit(name, deps, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

fn visit<'a>(
    name: &'a str,
    deps: &'a BTreeMap<String, Vec<String>>,
    done: &mut BTreeSet<&'a str>,
    visiting: &mut Vec<&'a str>,
    order: &mut Vec<String>,
) -> Result<(), InvalidInput> {
    if done.contains(name) {
        return Ok(());
    }
    if let Some(pos) = visiting.iter().position(|n| *n == name) {
        let mut cycle: Vec<&str> = visiting[pos..].to_vec();
        cycle.push(name);
        return Err(InvalidInput::new(
            "depends_on",
            format!("dependency cycle {}; remove one of these dependencies", cycle.join(" -> ")),
        ));
    }
    let Some(children) = deps.get(name) else { return Ok(()) };
    visiting.push(name);
    let mut sorted: Vec<&String> = children.iter().collect();
    sorted.sort();
    for child in sorted {
        visit(child, deps, done, visiting, order)?;
    }
    visiting.pop();
    done.insert(name);
    order.push(name.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges.iter().map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn dependencies_first() {
        let g = graph(&[("vm", &["config"]), ("config", &["disk-g", "disk-h"]), ("disk-g", &[]), ("disk-h", &[])]);
        assert_eq!(start_order(&g).unwrap(), ["disk-g", "disk-h", "config", "vm"]);
    }

    #[test]
    fn cycle_is_spelled_out() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let e = start_order(&g).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid depends_on: dependency cycle a -> b -> c -> a; remove one of these dependencies"
        );
    }
}

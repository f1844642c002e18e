//! The state's resources, with an index of each group's members.
//!
//! Reads ask for a group's resources all the time (every controller tick, for every group;
//! every resource manager step; every group the API lists), and scanning every resource for
//! each group made that O(groups × resources): at 8,000 VMs, billions of comparisons a
//! second. [`Resources`] keeps, beside the persistent map by name, the names of each group's
//! members. Every change goes through its methods, so the index cannot fall behind the map:
//! [`Resources::update`] changes a resource through a closure and then moves it in the index
//! if its group changed. The index is not serialized: it is rebuilt
//! whenever a `Resources` is made from a map (deserialized, read from the store's tables).

use haven_model::Resource;
use serde::{Deserialize, Serialize};

use crate::Map;

/// Every resource by name, and the names of each group's resources.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Map<Resource>", into = "Map<Resource>")]
pub struct Resources {
    by_name: Map<Resource>,
    by_group: Map<imbl::OrdSet<String>>,
}

impl PartialEq for Resources {
    /// The index follows from the map.
    fn eq(&self, other: &Resources) -> bool {
        self.by_name == other.by_name
    }
}

impl From<Map<Resource>> for Resources {
    fn from(by_name: Map<Resource>) -> Resources {
        Resources::from_map(by_name)
    }
}

impl Resources {
    /// The table of `by_name`, indexed.
    pub fn from_map(by_name: Map<Resource>) -> Resources {
        let mut by_group: Map<imbl::OrdSet<String>> = Map::new();
        for (name, r) in &by_name {
            by_group.entry(r.spec.group.clone()).or_default().insert(name.clone());
        }
        Resources { by_name, by_group }
    }
}

impl From<Resources> for Map<Resource> {
    fn from(r: Resources) -> Map<Resource> {
        r.by_name
    }
}

impl Resources {
    /// The map by name (what the store writes and diffs).
    pub fn as_map(&self) -> &Map<Resource> {
        &self.by_name
    }

    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.by_name.get(name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Resource)> + '_ {
        self.by_name.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Resource> + '_ {
        self.by_name.values()
    }

    /// The resources of `group`, by name: O(members), not O(resources).
    pub fn of_group<'a>(&'a self, group: &str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.by_group.get(group).into_iter().flat_map(|names| names.iter().filter_map(|n| self.by_name.get(n)))
    }

    /// Adds or replaces `resource` under `name`; returns the one it replaced.
    pub fn insert(&mut self, name: String, resource: Resource) -> Option<Resource> {
        let group = resource.spec.group.clone();
        self.by_group.entry(group.clone()).or_default().insert(name.clone());
        let old = self.by_name.insert(name.clone(), resource);
        if let Some(old) = old.as_ref().filter(|old| old.spec.group != group) {
            self.unindex(&old.spec.group, &name);
        }
        old
    }

    pub fn remove(&mut self, name: &str) -> Option<Resource> {
        let old = self.by_name.remove(name)?;
        self.unindex(&old.spec.group, name);
        Some(old)
    }

    /// Changes resource `name` in place with `f` and returns what `f` returned (`None`: no
    /// such resource); the index follows if `f` changed the resource's group.
    pub fn update<T>(&mut self, name: &str, f: impl FnOnce(&mut Resource) -> T) -> Option<T> {
        let resource = self.by_name.get_mut(name)?;
        let group_before = resource.spec.group.clone();
        let out = f(resource);
        let group = resource.spec.group.clone();
        if group != group_before {
            self.unindex(&group_before, name);
            self.by_group.entry(group).or_default().insert(name.to_string());
        }
        Some(out)
    }

    fn unindex(&mut self, group: &str, name: &str) {
        unindex(&mut self.by_group, group, name);
    }
}

fn unindex(by_group: &mut Map<imbl::OrdSet<String>>, group: &str, name: &str) {
    let now_empty = by_group.get_mut(group).is_some_and(|names| {
        names.remove(name);
        names.is_empty()
    });
    if now_empty {
        by_group.remove(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, group: &str) -> Resource {
        let spec = serde_json::from_value(serde_json::json!({
            "name": name, "group": group, "type": "process", "params": { "command": ["sleep", "1"] }
        }))
        .expect("a resource spec");
        Resource { spec, status: Default::default() }
    }

    fn members(r: &Resources, group: &str) -> Vec<String> {
        r.of_group(group).map(|r| r.spec.name.clone()).collect()
    }

    /// The index agrees with a scan of the map.
    fn assert_consistent(r: &Resources) {
        let rebuilt = Resources::from(r.as_map().clone());
        assert_eq!(r.by_group, rebuilt.by_group, "the index follows the map");
    }

    #[test]
    fn the_index_follows_every_change() {
        let mut r = Resources::default();
        r.insert("a".into(), resource("a", "g1"));
        r.insert("b".into(), resource("b", "g1"));
        r.insert("c".into(), resource("c", "g2"));
        assert_eq!(members(&r, "g1"), ["a", "b"]);
        assert_consistent(&r);

        // Replaced with another group.
        r.insert("b".into(), resource("b", "g2"));
        assert_eq!(members(&r, "g1"), ["a"]);
        assert_eq!(members(&r, "g2"), ["b", "c"]);
        assert_consistent(&r);

        // Moved by an update.
        r.update("a", |a| a.spec.group = "g3".into());
        assert!(members(&r, "g1").is_empty());
        assert_eq!(members(&r, "g3"), ["a"]);
        assert_consistent(&r);

        // Changed without moving.
        r.update("c", |c| c.status.reason = Some("x".into()));
        assert!(r.update("nope", |_| ()).is_none());
        assert_eq!(members(&r, "g2"), ["b", "c"]);

        r.remove("b");
        r.remove("nope");
        assert_eq!(members(&r, "g2"), ["c"]);
        assert_consistent(&r);
        assert!(r.by_group.get("g1").is_none(), "an empty group leaves the index");
    }

    #[test]
    fn a_deserialized_table_is_indexed_and_serializes_as_the_plain_map() {
        let mut r = Resources::default();
        r.insert("a".into(), resource("a", "g1"));
        r.insert("c".into(), resource("c", "g2"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json, serde_json::to_value(r.as_map()).expect("json"));
        let back: Resources = serde_json::from_value(json).expect("back");
        assert_eq!(members(&back, "g2"), ["c"]);
        assert_consistent(&back);
    }
}

//! The documented lower and upper bound of every duration, count and size an operator can
//! give Haven: API bodies (resource properties and parameters, groups, fence agents), VM
//! definition files and the agent's config file. One table ([`ALL`]), listed in
//! docs/OPERATIONS.md ("Bounds"; a test keeps the two the same).
//!
//! The bounds keep every value inside what the runtime can add to a clock reading and what
//! an operator could mean: an interval of a day, a period of a month, a thousand restarts.
//! The checks run in the model's `validate()` functions, which `State::apply` calls, so
//! every replica and every entry point refuses the same values the same way.

use crate::{Dur, InvalidInput};

/// The range of one bounded value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A duration, inclusive at both ends.
    Duration { min: Dur, max: Dur },
    /// A count or size, inclusive at both ends, in `unit`.
    Count { min: u64, max: u64, unit: &'static str },
}

/// One bounded value: where it is written, its field (as errors name it) and its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Where the value is written: `resource props`, `group`, `VM definition`, …
    pub applies_to: &'static str,
    /// The field as `InvalidInput` names it (`props.is_alive_interval`, `vcpus`).
    pub field: &'static str,
    pub limit: Limit,
}

const fn dur(field: &'static str, applies_to: &'static str, min: Dur, max: Dur) -> Bound {
    Bound { applies_to, field, limit: Limit::Duration { min, max } }
}

const fn count(field: &'static str, applies_to: &'static str, min: u64, max: u64, unit: &'static str) -> Bound {
    Bound { applies_to, field, limit: Limit::Count { min, max, unit } }
}

const fn s(secs: u64) -> Dur {
    Dur::from_secs(secs)
}
const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Most memory a group may ask for, a node may offer or a VM may have: 64 TiB, in MiB.
pub const MAX_MEMORY_MIB: u64 = 64 * 1024 * 1024;
/// Most CPUs a group may ask for or a node may offer.
pub const MAX_CPUS: u64 = 4096;

const RES: &str = "resource props";
const PROC: &str = "process params";
const VM: &str = "vm params";
const DEF: &str = "VM definition";
const GROUP: &str = "group";
const FENCE: &str = "node fence";
const AGENT: &str = "agent config";

pub const RESTART_THRESHOLD: Bound = count("props.restart_threshold", RES, 0, 1000, "restarts");
pub const RESTART_PERIOD: Bound = dur("props.restart_period", RES, s(1), s(30 * DAY));
pub const RESTART_DELAY: Bound = dur("props.restart_delay", RES, s(0), s(HOUR));
pub const PENDING_TIMEOUT: Bound = dur("props.pending_timeout", RES, Dur::from_millis(100), s(DAY));
pub const LOOKS_ALIVE_INTERVAL: Bound = dur("props.looks_alive_interval", RES, Dur::from_millis(100), s(DAY));
pub const IS_ALIVE_INTERVAL: Bound = dur("props.is_alive_interval", RES, Dur::from_millis(100), s(DAY));
pub const CHECK_TIMEOUT: Bound = dur("params.check.timeout", PROC, Dur::from_millis(100), s(HOUR));
pub const HEARTBEAT_TIMEOUT: Bound = dur("params.heartbeat_timeout", VM, Dur::from_millis(500), s(HOUR));
pub const SHUTDOWN_TIMEOUT: Bound = dur("params.shutdown_timeout", VM, s(0), s(HOUR));
pub const BOOT_TIMEOUT: Bound = dur("params.boot_timeout", VM, s(1), s(DAY));
pub const VCPUS: Bound = count("vcpus", DEF, 1, 255, "vCPUs");
pub const VM_MEMORY_MIB: Bound = count("memory_mib", DEF, 16, MAX_MEMORY_MIB, "MiB");
pub const VM_DISKS: Bound = count("disks", DEF, 0, 32, "disks");
pub const VM_NICS: Bound = count("nics", DEF, 0, 16, "network cards");
pub const FAILOVER_THRESHOLD: Bound = count("failover_threshold", GROUP, 0, 1000, "failovers");
pub const FAILOVER_PERIOD: Bound = dur("failover_period", GROUP, s(1), s(30 * DAY));
pub const GROUP_CPUS: Bound = count("cpus", GROUP, 0, MAX_CPUS, "CPUs");
pub const GROUP_MEMORY_MIB: Bound = count("memory_mib", GROUP, 0, MAX_MEMORY_MIB, "MiB");
pub const FAILBACK_HOUR: Bound = count("failback", GROUP, 0, 23, "o'clock UTC");
pub const FENCE_TIMEOUT: Bound = dur("timeout", FENCE, s(1), s(HOUR));
pub const CAPACITY_CPUS: Bound = count("capacity.cpus", AGENT, 0, MAX_CPUS, "CPUs");
pub const CAPACITY_MEMORY_MIB: Bound = count("capacity.memory_mib", AGENT, 0, MAX_MEMORY_MIB, "MiB");
pub const RENEW_INTERVAL: Bound = dur("timing.renew_interval", AGENT, Dur::from_millis(10), s(10));
pub const LEASE: Bound = dur("timing.lease", AGENT, Dur::from_millis(100), s(MINUTE));
pub const MARGIN: Bound = dur("timing.margin", AGENT, Dur::from_millis(10), s(MINUTE));

/// Every bound, in the order docs/OPERATIONS.md lists them.
pub const ALL: &[Bound] = &[
    RESTART_THRESHOLD,
    RESTART_PERIOD,
    RESTART_DELAY,
    PENDING_TIMEOUT,
    LOOKS_ALIVE_INTERVAL,
    IS_ALIVE_INTERVAL,
    CHECK_TIMEOUT,
    HEARTBEAT_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    BOOT_TIMEOUT,
    VCPUS,
    VM_MEMORY_MIB,
    VM_DISKS,
    VM_NICS,
    FAILOVER_THRESHOLD,
    FAILOVER_PERIOD,
    GROUP_CPUS,
    GROUP_MEMORY_MIB,
    FAILBACK_HOUR,
    FENCE_TIMEOUT,
    CAPACITY_CPUS,
    CAPACITY_MEMORY_MIB,
    RENEW_INTERVAL,
    LEASE,
    MARGIN,
];

impl Bound {
    /// Refuses a duration outside the range; the error names the field, the value and the
    /// bound. A count bound refuses every duration (a programming error, caught by tests).
    pub fn check_dur(&self, value: Dur) -> Result<(), InvalidInput> {
        let Limit::Duration { min, max } = self.limit else {
            return Err(InvalidInput::new(self.field, "is a count, not a duration"));
        };
        if value > max {
            return Err(InvalidInput::new(
                self.field,
                format!("{value} is too long; the most allowed is {max} (use {min} to {max})"),
            ));
        }
        if value < min {
            return Err(InvalidInput::new(
                self.field,
                format!("{value} is too short; the least allowed is {min} (use {min} to {max})"),
            ));
        }
        Ok(())
    }

    /// Refuses a count or size outside the range, naming the field, the value and the bound.
    pub fn check_count(&self, value: u64) -> Result<(), InvalidInput> {
        let Limit::Count { min, max, unit } = self.limit else {
            return Err(InvalidInput::new(self.field, "is a duration, not a count"));
        };
        if value > max {
            return Err(InvalidInput::new(
                self.field,
                format!("{value} is too large; the most allowed is {max} (use {min} to {max} {unit})"),
            ));
        }
        if value < min {
            return Err(InvalidInput::new(
                self.field,
                format!("{value} is too small; the least allowed is {min} (use {min} to {max} {unit})"),
            ));
        }
        Ok(())
    }

    /// The range as docs/OPERATIONS.md writes it: `100ms – 1day`, `0 – 1000 restarts`.
    pub fn range_text(&self) -> String {
        match self.limit {
            Limit::Duration { min, max } => format!("{min} – {max}"),
            Limit::Count { min, max, unit } => format!("{min} – {max} {unit}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_the_value_and_the_bound() {
        let e = IS_ALIVE_INTERVAL.check_dur(Dur::parse("292277000000y").unwrap()).unwrap_err();
        assert_eq!(e.field, "props.is_alive_interval");
        assert!(e.message.contains("is too long; the most allowed is 1day"), "{e}");
        let e = RESTART_THRESHOLD.check_count(1001).unwrap_err();
        expect_test::expect![
            "invalid props.restart_threshold: 1001 is too large; the most allowed is 1000 (use 0 to 1000 restarts)"
        ]
        .assert_eq(&e.to_string());
        let e = VCPUS.check_count(0).unwrap_err();
        expect_test::expect!["invalid vcpus: 0 is too small; the least allowed is 1 (use 1 to 255 vCPUs)"]
            .assert_eq(&e.to_string());
    }

    #[test]
    fn every_bound_accepts_its_ends_and_refuses_beyond_them() {
        for b in ALL {
            match b.limit {
                Limit::Duration { min, max } => {
                    assert!(min <= max, "{}", b.field);
                    assert_eq!(b.check_dur(min), Ok(()), "{}", b.field);
                    assert_eq!(b.check_dur(max), Ok(()), "{}", b.field);
                    let over = Dur(max.0 + std::time::Duration::from_millis(1));
                    assert_eq!(b.check_dur(over).unwrap_err().field, b.field);
                    let e = b.check_dur(Dur(std::time::Duration::MAX)).unwrap_err();
                    assert!(e.message.contains(&max.to_string()), "{e}");
                    if !min.0.is_zero() {
                        let under = Dur(min.0 - std::time::Duration::from_millis(1));
                        assert!(b.check_dur(under).unwrap_err().message.contains(&min.to_string()));
                    }
                    assert!(b.check_count(1).is_err());
                }
                Limit::Count { min, max, .. } => {
                    assert!(min <= max, "{}", b.field);
                    assert_eq!(b.check_count(min), Ok(()), "{}", b.field);
                    assert_eq!(b.check_count(max), Ok(()), "{}", b.field);
                    assert!(b.check_count(max + 1).unwrap_err().message.contains(&max.to_string()));
                    assert!(b.check_count(u64::MAX).is_err());
                    if min > 0 {
                        assert!(b.check_count(min - 1).is_err());
                    }
                    assert!(b.check_dur(Dur::from_secs(1)).is_err());
                }
            }
        }
    }

    /// docs/OPERATIONS.md lists every bound with the range this table enforces.
    #[test]
    fn the_operations_guide_lists_every_bound() {
        let doc = include_str!("../../../docs/OPERATIONS.md");
        for b in ALL {
            let row = format!("| {} | `{}` | {} |", b.applies_to, b.field, b.range_text());
            assert!(doc.contains(&row), "docs/OPERATIONS.md has no row {row:?}");
        }
    }
}

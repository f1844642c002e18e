//! The agent's configuration file (TOML): who this node is, where it listens, where it
//! keeps its state, and its timing profile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use haven_model::{Capacity, Dur, InvalidInput, bounds};
use serde::{Deserialize, Serialize};

/// A configuration the agent cannot start with; the message names the file or field, the
/// value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A value of the file is refused (`source` says which and why).
    #[error("config file {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
    /// A field out of its bounds or malformed (`name`, `capacity.*`, `timing.*`).
    #[error(transparent)]
    Field(#[from] InvalidInput),
    #[error("id must be 1 or more (0 is reserved)")]
    ZeroId,
    #[error("listen = {listen:?} is not an ip:port address ({source}); write e.g. \"127.0.0.1:7400\"")]
    Listen {
        listen: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("timing.profile = {profile:?} is unknown; use \"default\" or \"aggressive\"")]
    UnknownProfile { profile: String },
    #[error(
        "timing.renew_interval ({renew_interval}) must be at most half of timing.lease ({lease}) so one lost \
         renewal does not end the lease"
    )]
    RenewTooLong { renew_interval: Dur, lease: Dur },
}

/// `run` and the CLI report a configuration error as text.
impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

/// `haven agent --config <file>`. Only `id`, `name`, `listen` and `state_dir` are required.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Raft id of this node: a number unique in the cluster, never reused.
    pub id: u64,
    /// Node name shown everywhere (1-63 of a-z, 0-9, '-', '_', '.').
    pub name: String,
    /// `ip:port` to serve the API and peer traffic on.
    pub listen: String,
    /// `host:port` other nodes use to reach this one. Default: `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where the cluster database, resource run directories and logs live.
    pub state_dir: PathBuf,
    /// Failure-detection timing. Default: the `default` profile.
    #[serde(default)]
    pub timing: TimingConfig,
    /// What this node can host. Default: the host's CPUs and memory.
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// Run as a witness: a voting member that hosts no resources (`haven witness` sets it).
    #[serde(default)]
    pub witness: bool,
    /// Let plain HTTP reach the public API although `listen` is not a loopback address
    /// (peer traffic is mutual TLS regardless). Only for a network you trust, e.g. a lab.
    #[serde(default)]
    pub plain_http_api: bool,
}

/// Lease and heartbeat timing. A profile sets all values; explicit values override it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingConfig {
    /// `default` (renew 500ms, lease 3s, margin 1s) or `aggressive` (half of each).
    #[serde(default)]
    pub profile: Option<String>,
    pub renew_interval: Option<Dur>,
    pub lease: Option<Dur>,
    pub margin: Option<Dur>,
}

/// Resolved timing values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub renew_interval: Duration,
    pub lease: Duration,
    pub margin: Duration,
    /// Raft heartbeat and election timeouts follow from the lease.
    pub raft_heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl Timing {
    /// The named profile of `haven_node::TimingProfile`, the one table of them.
    pub fn profile(name: &str) -> Option<Timing> {
        let p = haven_node::TimingProfile::by_name(name)?;
        Some(Timing {
            renew_interval: Duration::from_millis(p.renew_ms),
            lease: Duration::from_millis(p.lease_ms),
            margin: Duration::from_millis(p.margin_ms),
            raft_heartbeat: Duration::from_millis(p.raft_heartbeat_ms),
            election_min: Duration::from_millis(p.election_min_ms),
            election_max: Duration::from_millis(p.election_max_ms),
        })
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let cfg: AgentConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        cfg.validate().map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), source: Box::new(e) })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        haven_model::validate_name("name", &self.name)?;
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|source| ConfigError::Listen { listen: self.listen.clone(), source })?;
        if let Some(c) = &self.capacity {
            c.validate()?;
        }
        self.timing().map(|_| ())
    }

    pub fn advertise(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.clone())
    }

    pub fn timing(&self) -> Result<Timing, ConfigError> {
        let profile = self.timing.profile.as_deref().unwrap_or("default");
        let mut t =
            Timing::profile(profile).ok_or_else(|| ConfigError::UnknownProfile { profile: profile.to_string() })?;
        let bounded = |bound: haven_model::bounds::Bound, v: Dur| bound.check_dur(v).map(|()| v.0);
        if let Some(v) = self.timing.renew_interval {
            t.renew_interval = bounded(bounds::RENEW_INTERVAL, v)?;
        }
        if let Some(v) = self.timing.lease {
            t.lease = bounded(bounds::LEASE, v)?;
        }
        if let Some(v) = self.timing.margin {
            t.margin = bounded(bounds::MARGIN, v)?;
        }
        if t.renew_interval.saturating_mul(2) > t.lease {
            return Err(ConfigError::RenewTooLong { renew_interval: Dur(t.renew_interval), lease: Dur(t.lease) });
        }
        Ok(t)
    }

    /// The configured capacity, or what the host has.
    pub fn capacity(&self) -> Capacity {
        if self.witness {
            return Capacity { cpus: 0, memory_mib: 0 };
        }
        self.capacity.unwrap_or_else(host_capacity)
    }
}

fn host_capacity() -> Capacity {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let memory_mib = haven_drivers::procfs::mem_total_mib().unwrap_or(1024);
    // Within the bounds a configured capacity has, so the join is never refused for it.
    let max_cpus = u32::try_from(bounds::MAX_CPUS).unwrap_or(u32::MAX);
    Capacity { cpus: cpus.min(max_cpus), memory_mib: memory_mib.min(bounds::MAX_MEMORY_MIB) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<AgentConfig, String> {
        let text = format!("id = 1\nname = \"n1\"\nlisten = \"127.0.0.1:7400\"\nstate_dir = \"/tmp/x\"\n{extra}");
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate().map(|()| cfg).map_err(|e| e.to_string())
    }

    /// Each `timing.*` and `capacity.*` bound: both ends accepted (with the other values
    /// chosen so the renew-vs-lease rule holds), beyond them and the value refused
    /// with the field and the bound named.
    #[test]
    fn timing_and_capacity_values_are_bounded() {
        for b in [bounds::RENEW_INTERVAL, bounds::LEASE, bounds::MARGIN] {
            let bounds::Limit::Duration { min, max } = b.limit else { panic!("{} is a duration", b.field) };
            let key = b.field.strip_prefix("timing.").expect("a timing field");
            // The renewal must fit twice into the lease: pair each end with a partner that allows it.
            let with = |v: Dur| match key {
                "renew_interval" => format!("[timing]\nrenew_interval = \"{v}\"\nlease = \"1m\""),
                "lease" => format!("[timing]\nlease = \"{v}\"\nrenew_interval = \"10ms\""),
                _ => format!("[timing]\nmargin = \"{v}\""),
            };
            for ok in [min, max] {
                config(&with(ok)).unwrap_or_else(|e| panic!("{} = {ok} refused: {e}", b.field));
            }
            let over = Dur(max.0 + Duration::from_millis(1));
            let under = Dur(min.0 - Duration::from_millis(1));
            for (bad, names) in [(over, max), (Dur::parse("292277000000y").unwrap(), max), (under, min)] {
                let e = config(&with(bad)).map(|_| ()).unwrap_err();
                assert!(e.contains(b.field) && e.contains(&bad.to_string()) && e.contains(&names.to_string()), "{e}");
            }
        }
        assert!(config("[capacity]\ncpus = 4096\nmemory_mib = 67108864").is_ok());
        let e = config("[capacity]\ncpus = 4097\nmemory_mib = 1024").map(|_| ()).unwrap_err();
        assert_eq!(e, "invalid capacity.cpus: 4097 is too large; the most allowed is 4096 (use 0 to 4096 CPUs)");
        let e = config("[capacity]\ncpus = 1\nmemory_mib = 18446744073709551615").map(|_| ()).unwrap_err();
        assert!(e.contains("capacity.memory_mib") && e.contains("67108864"), "{e}");
        let e = config("[timing]\nrenew_interval = \"10s\"\nlease = \"15s\"").map(|_| ()).unwrap_err();
        assert!(e.contains("at most half of timing.lease"), "{e}");
    }

    #[test]
    fn the_detected_capacity_is_within_the_bounds() {
        assert_eq!(host_capacity().validate(), Ok(()));
    }
}

//! Node fencing through standard fence agents (`fence_*` programs of the fence-agents
//! project): the agent reads `key=value` lines on stdin (`action=off`, its parameters) and
//! exits 0 on success. Haven fences a node that stopped answering before it recovers the
//! node's groups elsewhere, when a fence agent is configured for that node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Dur, InvalidInput, bounds};

/// What the fence agent is asked to do to a lost node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FenceAction {
    /// Default: power it off (it stays off until an operator brings it back).
    #[default]
    Off,
    /// Power-cycle it (it comes back and rejoins).
    Reboot,
}

impl FenceAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            FenceAction::Off => "off",
            FenceAction::Reboot => "reboot",
        }
    }
}

fn d_fence_timeout() -> Dur {
    Dur::from_secs(60)
}

/// How to fence one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FenceConfig {
    /// The fence agent program: a name found in PATH (e.g. `fence_ipmilan`) or an absolute path.
    pub agent: String,
    /// Parameters passed on stdin as `key=value` lines (e.g. `ip`, `username`, `password`,
    /// `plug`). `action` is set by Haven.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Default: off.
    #[serde(default)]
    pub action: FenceAction,
    /// How long the agent may take. Default: 60s.
    #[serde(default = "d_fence_timeout")]
    pub timeout: Dur,
    /// The account the fence agent runs as. Default: when the Haven agent runs as root,
    /// the unprivileged `nobody` (a fence agent talks to a BMC or a power switch over the
    /// network; it needs no root), which every node that may fence must have; running it
    /// as `root` is a choice to write down here. When the Haven agent does not run as
    /// root, its own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl FenceConfig {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let a = self.agent.trim();
        if a.is_empty() {
            return Err(InvalidInput::new("agent", "is empty; name a fence agent such as \"fence_ipmilan\""));
        }
        if a.contains('/') && !a.starts_with('/') {
            return Err(InvalidInput::new(
                "agent",
                format!("{a:?} is a relative path; give a program name found in PATH or an absolute path"),
            ));
        }
        for (k, v) in &self.params {
            let ok_key = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok_key {
                return Err(InvalidInput::new(
                    "params",
                    format!("{k:?} is not a fence parameter name; use letters, digits, '_' and '-'"),
                ));
            }
            if k == "action" {
                return Err(InvalidInput::new(
                    "params.action",
                    "is set by Haven; choose it with the `action` field (off or reboot)",
                ));
            }
            if v.contains('\n') || v.contains('\0') {
                return Err(InvalidInput::new(format!("params.{k}"), "must be one line"));
            }
        }
        bounds::FENCE_TIMEOUT.check_dur(self.timeout)?;
        if let Some(u) = &self.user {
            let ok = !u.is_empty()
                && u.len() <= 32
                && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                && !u.starts_with('-');
            if !ok {
                return Err(InvalidInput::new(
                    "user",
                    "is not a user name; give an account of the nodes (letters, digits, '_', '-', '.', at most 32), \
                     e.g. \"nobody\" or \"root\"",
                ));
            }
        }
        Ok(())
    }

    /// Whether the parameter `key` holds a secret (`password`, `passwd`, `snmp_priv_passwd`,
    /// `secret`, `api_key`, ...): never shown, never logged, never recorded.
    pub fn is_secret_param(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["pass", "secret", "key", "token"].iter().any(|s| k.contains(s))
    }

    /// This config as it may be shown: every secret parameter's value is `********`.
    pub fn redacted(&self) -> FenceConfig {
        let mut c = self.clone();
        for (k, v) in c.params.iter_mut() {
            if FenceConfig::is_secret_param(k) {
                *v = "********".into();
            }
        }
        c
    }

    /// `text` (e.g. what the fence agent printed) with the value of every secret parameter
    /// replaced by `********`, so it can go into the history.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.params {
            if FenceConfig::is_secret_param(k) && !v.is_empty() {
                out = out.replace(v.as_str(), "********");
            }
        }
        out
    }

    /// The stdin text for `action`: `action=<action>` then the parameters, one per line.
    pub fn stdin_for(&self, action: &str) -> String {
        let mut text = format!("action={action}\n");
        for (k, v) in &self.params {
            text.push_str(&format!("{k}={v}\n"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parameters_are_masked_when_shown_and_scrubbed_from_what_the_agent_said() {
        let params = [("ip", "10.0.0.9"), ("password", "pw-1"), ("snmp_priv_passwd", "pw-2"), ("api_key", "k-3")];
        let c = FenceConfig {
            agent: "fence_ipmilan".into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            action: FenceAction::Off,
            timeout: Dur::from_secs(60),
            user: None,
        };
        let shown = c.redacted();
        assert_eq!(shown.params["ip"], "10.0.0.9");
        for k in ["password", "snmp_priv_passwd", "api_key"] {
            assert_eq!(shown.params[k], "********", "{k}");
        }
        assert_eq!(
            c.scrub("login as admin/pw-1 failed (pw-2, k-3) at 10.0.0.9"),
            "login as admin/******** failed (********, ********) at 10.0.0.9"
        );
    }
}

//! The CLI's config file, `$XDG_CONFIG_HOME/haven/cli.toml` (by default
//! `~/.config/haven/cli.toml`): the server(s) and API token to use when neither a flag nor
//! the environment gives them (flags first, then `HAVEN_SERVER`/`HAVEN_TOKEN`, then this
//! file). `haven cluster init` writes it, mode 0600, since it holds a secret.
//!
//! ```toml
//! server = "10.0.0.1:7400,10.0.0.2:7400"
//! token = "hvn_..."
//! ca_fingerprint = "5f3a..."   # the cluster CA's SHA-256: the CLI then speaks HTTPS
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EXIT_USAGE, Failure};

/// What the file may set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Agents, as for `--server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// An API token's secret, as for `--token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The cluster CA's fingerprint, as for `--ca-fingerprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// Where the file is: `$XDG_CONFIG_HOME/haven/cli.toml`, else `$HOME/.config/haven/cli.toml`;
/// `None` with neither set.
pub fn path() -> Option<PathBuf> {
    let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    let dir = non_empty("XDG_CONFIG_HOME").or_else(|| non_empty("HOME").map(|h| h.join(".config")))?;
    Some(dir.join("haven").join("cli.toml"))
}

/// The file's settings; none when it does not exist. A file that does not parse is a usage
/// error naming it; one that holds a token and that others may read gets a warning.
pub fn load() -> Result<CliConfig, Failure> {
    let Some(path) = path() else { return Ok(CliConfig::default()) };
    load_from(&path)
}

fn load_from(path: &Path) -> Result<CliConfig, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CliConfig::default()),
        Err(e) => {
            return Err(Failure { code: EXIT_USAGE, message: format!("cannot read {}: {e}", path.display()) });
        }
    };
    let config: CliConfig = toml::from_str(&text).map_err(|e| Failure {
        code: EXIT_USAGE,
        message: format!(
            "{} does not fit: {}; it may set server, token and ca_fingerprint (see `haven --help`)",
            path.display(),
            e.message()
        ),
    })?;
    if config.token.is_some()
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} holds an API token but others may read it (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    Ok(config)
}

/// Writes `config` to the file (mode 0600, its directory created 0700). An existing file
/// is kept beside it as `cli.toml.<seconds since the epoch>.bak`, whose path is returned
/// second.
pub fn save(config: &CliConfig) -> Result<(PathBuf, Option<PathBuf>), String> {
    let path = path().ok_or("neither XDG_CONFIG_HOME nor HOME is set, so there is no place for cli.toml")?;
    save_to(&path, config).map(|old| (path, old))
}

/// After a CA rotation: the file, if it pins a CA, pins `fingerprint` instead (the old one
/// stays trusted until it is retired). Returns the file's path when it was changed; a
/// failure is a warning, the rotation is done either way.
pub fn set_ca_fingerprint(fingerprint: &str) -> Option<PathBuf> {
    let path = path()?;
    let mut config = load_from(&path).ok()?;
    config.ca_fingerprint.as_ref()?;
    config.ca_fingerprint = Some(fingerprint.to_string());
    match save_to(&path, &config) {
        Ok(_) => Some(path),
        Err(e) => {
            eprintln!(
                "warning: {} still pins the old CA: {e}; set ca_fingerprint = {fingerprint:?} there",
                path.display()
            );
            None
        }
    }
}

fn save_to(path: &Path, config: &CliConfig) -> Result<Option<PathBuf>, String> {
    let dir = path.parent().ok_or("the config path has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let text = toml::to_string(config).map_err(|e| format!("cannot write the config: {e}"))?;
    let mut old = None;
    if path.exists() {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let backup = path.with_file_name(format!("cli.toml.{secs}.bak"));
        std::fs::rename(path, &backup).map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
        old = Some(backup);
    }
    let tmp = path.with_file_name("cli.toml.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_config_reads_back_is_private_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("haven").join("cli.toml");
        assert_eq!(load_from(&path).ok(), Some(CliConfig::default()));
        let c = CliConfig {
            server: Some("127.0.0.1:7400".into()),
            token: Some("hvn_x".into()),
            ca_fingerprint: Some("ab".repeat(32)),
        };
        assert_eq!(save_to(&path, &c), Ok(None));
        assert_eq!(std::fs::metadata(&path).expect("file").permissions().mode() & 0o777, 0o600);
        assert_eq!(load_from(&path).ok(), Some(c.clone()));
        let newer = CliConfig { token: Some("hvn_y".into()), ..c.clone() };
        let old = save_to(&path, &newer).expect("saved").expect("the old file moved aside");
        assert_eq!(load_from(&old).ok(), Some(c));
        assert_eq!(load_from(&path).ok(), Some(newer));
    }

    #[test]
    fn a_config_with_an_unknown_field_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cli.toml");
        std::fs::write(&path, "servr = \"x\"\n").expect("write");
        let err = load_from(&path).expect_err("refused");
        assert!(err.message.contains("cli.toml") && err.message.contains("servr"), "{}", err.message);
    }
}

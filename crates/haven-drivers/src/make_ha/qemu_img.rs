//! The wizard's two uses of `qemu-img`: reading a qcow2 image's backing chain (for the
//! checks) and rewriting a backing reference in place (for `--fix`). One runner, so both
//! report a missing program, a failure and its stderr the same way.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `qemu-img` could not do what the wizard asked.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("cannot run `qemu-img {subcommand}` ({source}); install it (Debian: qemu-utils)")]
    Spawn {
        subcommand: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `command` as an operator would type it; `stderr` is what qemu-img said about the
    /// operator's own image.
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`qemu-img info` printed no JSON for {} ({detail})", image.display())]
    NotJson { image: PathBuf, detail: String },
}

/// Runs `qemu-img <subcommand> <args…>`; its standard output if it exits 0. `shown` is the
/// command line for the failure message.
fn run(subcommand: &'static str, args: &[&OsStr], shown: impl FnOnce() -> String) -> Result<Vec<u8>, QemuImgError> {
    let out = Command::new("qemu-img")
        .arg(subcommand)
        .args(args)
        .output()
        .map_err(|source| QemuImgError::Spawn { subcommand, source })?;
    if !out.status.success() {
        return Err(QemuImgError::Failed {
            command: shown(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// One image of a chain that has a backing file: (image, stored backing reference, backing
/// format, the backing file as qemu-img resolves it).
pub type ChainLink = (PathBuf, String, String, PathBuf);

/// The backing chain of a qcow2 image, from `qemu-img info --backing-chain`: each image
/// that has a backing file, top first.
pub fn backing_chain(image: &Path) -> Result<Vec<ChainLink>, QemuImgError> {
    let args = ["--backing-chain".as_ref(), "--output=json".as_ref(), "-U".as_ref(), image.as_os_str()];
    let stdout = run("info", &args, || format!("qemu-img info --backing-chain {}", image.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&stdout)
        .map_err(|e| QemuImgError::NotJson { image: image.to_path_buf(), detail: e.to_string() })?;
    Ok(parse_chain(v))
}

/// The links of `qemu-img info --backing-chain --output=json` (an array, or one object for
/// an image without a chain).
fn parse_chain(v: serde_json::Value) -> Vec<ChainLink> {
    let list = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    let mut chain = Vec::new();
    for item in &list {
        let Some(stored) = item["backing-filename"].as_str() else { continue };
        let file = item["filename"].as_str().unwrap_or_default();
        let full = item["full-backing-filename"].as_str().unwrap_or(stored);
        let format = item["backing-filename-format"].as_str().unwrap_or("qcow2");
        chain.push((PathBuf::from(file), stored.to_string(), format.to_string(), PathBuf::from(full)));
    }
    chain
}

/// `qemu-img rebase -u`: stores `reference` (of format `format`) as `image`'s backing file
/// without touching any data.
pub fn rebase_unsafe(image: &Path, reference: &str, format: &str) -> Result<(), QemuImgError> {
    let args = ["-u".as_ref(), "-F".as_ref(), format.as_ref(), "-b".as_ref(), reference.as_ref(), image.as_os_str()];
    run("rebase", &args, || format!("qemu-img rebase -u -F {format} -b {reference} {}", image.display())).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_list_the_images_that_have_a_backing_file() {
        let v = serde_json::json!([
            {"filename": "/v/top.qcow2", "backing-filename": "mid.qcow2",
             "full-backing-filename": "/v/mid.qcow2", "backing-filename-format": "qcow2"},
            {"filename": "/v/mid.qcow2", "backing-filename": "/v/base.raw", "backing-filename-format": "raw"},
            {"filename": "/v/base.raw"}
        ]);
        assert_eq!(
            parse_chain(v),
            [
                (PathBuf::from("/v/top.qcow2"), "mid.qcow2".into(), "qcow2".into(), PathBuf::from("/v/mid.qcow2")),
                (PathBuf::from("/v/mid.qcow2"), "/v/base.raw".into(), "raw".into(), PathBuf::from("/v/base.raw")),
            ]
        );
        assert_eq!(parse_chain(serde_json::json!({"filename": "/v/alone.qcow2"})), []);
    }

    #[test]
    fn failures_name_the_command() {
        let e =
            QemuImgError::Failed { command: "qemu-img info --backing-chain /x".into(), stderr: "no such file".into() };
        assert_eq!(e.to_string(), "`qemu-img info --backing-chain /x` failed: no such file");
    }
}

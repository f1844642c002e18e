//! The test guest the VM tests boot (built by `scripts/build-test-guest`), and whether a
//! program they need (QEMU and the like) is installed on this host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether `program --version` runs and succeeds.
pub fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The test guest's directory (vmlinuz, initrd.img), built by `scripts/build-test-guest`
/// if missing.
pub fn test_guest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-guest");
    let out = Command::new(&script).output().expect("cannot run scripts/build-test-guest");
    assert!(out.status.success(), "building the test guest failed: {}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default());
    assert!(dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(), "no test guest in {}", dir.display());
    dir
}

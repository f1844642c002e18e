//! Resource processes as `haven_drivers::procfs` shows them (the pid in a pid file, whether
//! it lives, where it runs), and SIGKILL to one of them.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use haven_drivers::procfs;

/// The pid recorded in a resource's pid file (`<run_dir>/pid`: "<pid> <start time>").
pub fn pid_in(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join("pid")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    procfs::is_alive(pid)
}

/// The working directory of `pid`.
pub fn cwd_of(pid: i32) -> Option<PathBuf> {
    procfs::cwd(pid)
}

/// Live processes whose working directory is `dir` (a resource's run directory).
pub fn processes_in(dir: &Path) -> Vec<i32> {
    // Processes come and go while we scan; one we cannot read is one that is gone.
    let pids = procfs::pids().unwrap_or_default();
    pids.into_iter().filter(|pid| alive(*pid) && cwd_of(*pid).as_deref() == Some(dir)).collect()
}

/// SIGKILLs one process.
pub fn sigkill(pid: i32) {
    // SAFETY: kill(2) touches no memory; the caller read the pid from a pid file just now.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

//! Resource processes as `/proc` shows them (the pid in a pid file, whether it lives, where
//! it runs), and SIGKILL to one of them.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

/// The pid recorded in a resource's pid file (`<run_dir>/pid`: "<pid> <start time>").
pub fn pid_in(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join("pid")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| *s != "Z"))
}

/// The working directory of `pid`.
pub fn cwd_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Live processes whose working directory is `dir` (a resource's run directory).
pub fn processes_in(dir: &Path) -> Vec<i32> {
    all_pids().into_iter().filter(|pid| alive(*pid) && cwd_of(*pid).as_deref() == Some(dir)).collect()
}

/// SIGKILLs one process.
pub fn sigkill(pid: i32) {
    // SAFETY: kill(2) touches no memory; the caller read the pid from a pid file just now.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session, …
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

//! Facts about this host that the agent, the demo and the lab tests share: whether a program
//! is installed, and how to kill a node "whole" — every process of the agent's session
//! (the agent and every resource it started), as a host that dies would.
#![allow(unsafe_code)]

use std::time::Duration;

/// Whether `program` is found in `PATH`.
pub fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The live (not zombie) processes whose session id is `sid`, from /proc; none if /proc
/// cannot be read.
pub fn session_members(sid: i32) -> Vec<i32> {
    haven_drivers::procfs::live_session_members(sid).unwrap_or_default()
}

/// SIGKILLs every process of session `sid`, repeating until none is left (one may fork
/// while we look), at most 50 rounds. Returns how many processes were signalled (each
/// counted once).
pub fn kill_session(sid: i32) -> usize {
    let mut signalled = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let members = session_members(sid);
        if members.is_empty() {
            break;
        }
        for pid in &members {
            // SAFETY: kill(2) touches no memory; the pid was read from /proc just now.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        signalled.extend(members);
        std::thread::sleep(Duration::from_millis(20));
    }
    signalled.len()
}

//! Facts about this host that the agent, the demo and the lab tests share: whether a program
//! is installed, and how to kill a node "whole" — every process of the agent's session
//! (the agent and every resource it started), as a host that dies would.
#![allow(unsafe_code)]

use std::time::Duration;

/// Whether `program` is found in `PATH`.
pub fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The live (not zombie) processes whose session id is `sid`, from /proc.
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // rest: state ppid pgrp session ...; zombies are already dead.
            fields.len() > 3 && fields[0] != "Z" && fields[3].parse::<i32>().ok() == Some(sid)
        })
        .collect()
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

//! The few libc calls the drivers need (signals, uids, user lookup, the monotonic clock), each wrapped in a
//! safe function. This is the only module of the crate allowed to use `unsafe`; keep it
//! to thin wrappers with no logic of their own.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;

/// Sends `signal` to `pid` (a process if positive, a process group if negative).
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and reads or writes no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process of the host).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec into `ts`, a live local; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// The agent's effective uid.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) has no arguments, no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The agent's own process group, which the drivers must never signal.
pub(crate) fn own_process_group() -> i32 {
    // SAFETY: getpgrp(2) has no arguments, no preconditions and cannot fail.
    unsafe { libc::getpgrp() }
}

/// A user account as the system's name service reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Looks `name` up with getpwnam_r, so users from NSS (LDAP, sssd…) are found too.
/// `Ok(None)` means no such user.
pub(crate) fn lookup_user(name: &str) -> io::Result<Option<Account>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None); // a name with a NUL byte cannot exist
    };
    let mut buf: Vec<u8> = vec![0; 16 * 1024];
    loop {
        // SAFETY: `passwd` is a plain C struct of integers and pointers, for which all-zero
        // bytes (null pointers, zero ids) is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the whole call: `c_name` is NUL-terminated,
        // `entry` and `found` are live locals, and `buf` is a live buffer whose length we
        // pass; getpwnam_r writes only into `entry`, `buf` and `found`.
        let rc =
            unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1024 * 1024 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok(None);
        }
        let home = if entry.pw_dir.is_null() {
            String::new()
        } else {
            // SAFETY: on success `pw_dir` points to a NUL-terminated string inside `buf`,
            // which is alive here; we copy it before `buf` is dropped.
            unsafe { CStr::from_ptr(entry.pw_dir) }.to_string_lossy().into_owned()
        };
        return Ok(Some(Account { uid: entry.pw_uid, gid: entry.pw_gid, home }));
    }
}

/// Makes the child get SIGKILL when the agent dies (PR_SET_PDEATHSIG), so a resource never
/// outlives the agent that is accountable for it: an agent that is gone cannot renew its
/// lease, and its node's groups will be started elsewhere.
///
/// The signal is tied to the spawning *thread*; the agent spawns from tokio worker threads,
/// which live as long as the agent's runtime.
pub(crate) fn die_with_agent(cmd: &mut tokio::process::Command) {
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl: then do not start at all.
            if libc::getppid() != agent {
                return Err(io::Error::other("the agent exited while starting the resource"));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_nonsense_does_not() {
        let root = lookup_user("root").expect("lookup root").expect("root exists");
        assert_eq!(root.uid, 0);
        assert_eq!(lookup_user("no-such-user-haven-test").expect("lookup"), None);
        assert_eq!(lookup_user("bad\0name").expect("lookup"), None);
    }
}

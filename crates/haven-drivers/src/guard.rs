//! The node guard (`haven guard`): a small process of its own, started and supervised by
//! the agent, that kills every resource of the node when the agent's lease ends without a
//! newer one it was told of, or when the agent goes away — whether or not the agent makes
//! progress. An agent that is frozen (SIGSTOP, a hung NFS read, starved of CPU) keeps no
//! resource alive past its lease.
//!
//! What it is told, on its stdin (a Unix socket whose other end the agent holds), and what
//! it makes of it, is `haven_node::guard` (`deadline <ns>` of `CLOCK_MONOTONIC`, or `none`;
//! end of file: the agent is gone): the rules the simulator drives too.
//!
//! While there is no valid lease it kills, every [`TICK`], each resource process the agent
//! started (a child of the agent started with [`RESOURCE_ENV`], with its whole process
//! group) and each process a resource's pid file records (one adopted from an earlier run). The processes are listed first and the
//! socket is read once more before the kill: the agent tells the guard of a lease before
//! it starts anything under it, so a process that is in the list was started after the
//! news was in the socket, and the last read sees it. A process is never killed for a
//! lease that has already been renewed.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use haven_node::guard::Feed;

use crate::{pidfile, procfs, sys};

/// Reads everything `input` (non-blocking) has now into `feed`.
fn drain(feed: &mut Feed, input: &mut UnixStream) {
    let mut buf = [0u8; 512];
    loop {
        match input.read(&mut buf) {
            Ok(0) => {
                feed.eof = true;
                return;
            }
            Ok(n) => feed.take(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                feed.eof = true;
                return;
            }
        }
    }
}

/// How often the guard looks at the clock and the socket.
pub const TICK: Duration = Duration::from_millis(10);

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the agent and the guard share.
pub fn monotonic_ns() -> u64 {
    sys::monotonic_ns()
}

/// A process the guard would kill: the leader of a process group (killed as a group) or a
/// lone process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Victim {
    pub pid: i32,
    pub group: bool,
}

/// The variable every resource process is started with (its value: the resource's name):
/// how the guard tells a resource from the agent's other children (a KVM probe, a fence
/// agent), also before the resource's pid file is written.
pub const RESOURCE_ENV: &str = "HAVEN_RESOURCE";

/// The processes of the node's resources: every child of `agent` started with
/// [`RESOURCE_ENV`], and every live process a pid file under `run_root`
/// (`<run_root>/<resource>/pid`) records; never `guard` itself.
pub fn victims(agent: i32, guard: i32, run_root: &Path) -> Vec<Victim> {
    let agent_group = procfs::stat(agent).ok().flatten().map(|s| s.pgrp);
    let mut out = Vec::new();
    let mut add = |pid: i32, st: &procfs::ProcStat| {
        // A process in a group of its own (every resource: `process_group(0)`) goes with
        // its group; one in the agent's group (a check command) alone.
        let group = st.pgrp == pid && Some(st.pgrp) != agent_group;
        let v = Victim { pid, group };
        if !out.contains(&v) {
            out.push(v);
        }
    };
    for pid in procfs::pids().unwrap_or_default() {
        if pid == guard {
            continue;
        }
        if let Ok(Some(st)) = procfs::stat(pid)
            && st.ppid == agent
            && !st.is_dead()
            && procfs::environ_has(pid, RESOURCE_ENV)
        {
            add(pid, &st);
        }
    }
    if let Ok(entries) = std::fs::read_dir(run_root) {
        for entry in entries.flatten() {
            let Ok(Some(record)) = pidfile::read(&entry.path()) else { continue };
            if record.pid == guard || record.pid == agent {
                continue;
            }
            if let Ok(Some(st)) = procfs::stat(record.pid)
                && st.start_time == record.start_time
                && !st.is_dead()
            {
                add(record.pid, &st);
            }
        }
    }
    out
}

/// SIGKILL to each victim (its group, for a group leader).
pub fn kill(victims: &[Victim]) {
    for v in victims {
        if v.group {
            let _ = sys::kill(-v.pid, libc::SIGKILL);
        }
        let _ = sys::kill(v.pid, libc::SIGKILL);
    }
}

/// The guard's loop: until the agent is gone, kill the node's resources whenever the lease
/// is not valid (see the module header). `agent` is the agent's pid (the guard's parent),
/// `input` the socket it is told on. Returns when the agent is gone, after a last kill.
/// `log` gets one line per kill.
pub fn run(agent: i32, run_root: &Path, mut input: UnixStream, log: &mut dyn FnMut(&str)) -> io::Result<()> {
    input.set_nonblocking(true)?;
    let me = std::process::id() as i32;
    let mut feed = Feed::default();
    let mut was_valid = false;
    loop {
        drain(&mut feed, &mut input);
        let now = monotonic_ns();
        if let Some(left) = feed.left(now) {
            was_valid = true;
            std::thread::sleep(left.min(TICK));
            continue;
        }
        let list = victims(agent, me, run_root);
        drain(&mut feed, &mut input);
        if feed.valid(monotonic_ns()) {
            continue;
        }
        if !list.is_empty() {
            let pids: Vec<String> = list.iter().map(|v| v.pid.to_string()).collect();
            let why = if feed.eof {
                "the agent is gone"
            } else if was_valid {
                "the lease ended without a renewal the agent told of"
            } else {
                "there is no lease"
            };
            log(&format!("haven guard: {why}: killing the node's resources (pids {})", pids.join(" ")));
            kill(&list);
        }
        was_valid = false;
        if feed.eof {
            return Ok(());
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// The loop itself, with this test process as the "agent": a child started with
    /// `HAVEN_RESOURCE` lives while the lease it was told of lasts, dies right after it
    /// ends, and the loop returns once the socket closes. (nextest runs each test in a
    /// process of its own, so no other test's children are this "agent's".)
    #[test]
    fn the_guard_kills_a_resource_at_the_lease_end_and_ends_with_its_agent() {
        let (mut ours, theirs) = UnixStream::pair().expect("a socket pair");
        let run_root = tempfile::tempdir().expect("a directory");
        let root = run_root.path().to_path_buf();
        let guard = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let agent = std::process::id() as i32;
            run(agent, &root, theirs, &mut |l: &str| lines.push(l.to_string())).expect("the guard ran");
            lines
        });
        // Told first, then started: as the agent does it.
        let lease = Duration::from_millis(400);
        use std::io::Write;
        writeln!(ours, "deadline {}", monotonic_ns() + lease.as_nanos() as u64).expect("told");
        let mut resource = std::process::Command::new("sleep")
            .arg("30")
            .env(RESOURCE_ENV, "r")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let mut bystander = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = resource.id() as i32;
        std::thread::sleep(lease / 2);
        let alive = |pid: i32| procfs::stat(pid).ok().flatten().is_some_and(|s| !s.is_dead());
        assert!(alive(pid), "the resource runs while the lease lasts");
        let started = std::time::Instant::now();
        let status = resource.wait().expect("waited");
        assert!(status.code().is_none(), "killed by a signal: {status:?}");
        assert!(started.elapsed() < lease, "killed at the lease end, {:?} after the check", started.elapsed());
        assert!(alive(bystander.id() as i32), "a child without HAVEN_RESOURCE is not the guard's");
        drop(ours);
        let lines = guard.join().expect("the guard thread");
        assert!(lines.iter().any(|l| l.contains("lease ended") && l.contains(&pid.to_string())), "{lines:?}");
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}

//! Reading process facts from `/proc`: whether a pid is alive, its start time (to tell a
//! process from a later one that reuses its pid) and which processes are in a process
//! group. Linux only; read-only.

use std::fs;
use std::io;

/// The fields of `/proc/<pid>/stat` the drivers use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The short program name (field 2), for messages.
    pub comm: String,
    /// One-letter state (field 3); `Z` is a zombie, `X` is dead.
    pub state: char,
    /// Process group id (field 5).
    pub pgrp: i32,
    /// Start time in clock ticks after boot (field 22). Together with the pid it names one
    /// process for the lifetime of the machine.
    pub start_time: u64,
}

impl ProcStat {
    /// Exited but not yet reaped, or being torn down: counts as not running.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The program name is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let state = rest.first()?.chars().next()?;
    let pgrp = rest.get(2)?.parse().ok()?;
    let start_time = rest.get(19)?.parse().ok()?;
    Some(ProcStat { comm, state, pgrp, start_time })
}

/// The stat of `pid`, or `None` if there is no such process.
pub(crate) fn stat(pid: i32) -> io::Result<Option<ProcStat>> {
    if pid <= 0 {
        return Ok(None);
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat is not in the expected format"))
        }),
        // ESRCH: the process went away while we were reading.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Processes of group `pgid` that are still running (zombies left out), by pid.
pub(crate) fn live_group_members(pgid: i32) -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Processes come and go while we scan; one we cannot read is one that is gone.
        if let Ok(Some(st)) = stat(pid)
            && st.pgrp == pgid
            && !st.is_dead()
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let text = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let st = parse_stat(text).expect("parses");
        assert_eq!(st, ProcStat { comm: "my (odd) prog".into(), state: 'S', pgrp: 4242, start_time: 987654 });
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = stat(std::process::id() as i32).expect("read").expect("exists");
        assert!(!me.is_dead());
        assert!(me.start_time > 0);
        assert_eq!(stat(0).expect("read"), None);
    }
}

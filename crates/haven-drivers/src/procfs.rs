//! The one reader of `/proc` in Haven: process facts (whether a pid is alive, its start
//! time to tell a process from a later one that reuses its pid, its process group and
//! session, its command line, working directory and open files), this process's effective
//! uid, the mount table and the host's memory.
//! Each file's text is parsed by a pure function (`parse_*`, tested on sample text) and
//! read by a thin wrapper beside it. Linux only; read-only: it never signals or writes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The fields of `/proc/<pid>/stat` Haven uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The short program name (field 2), for messages.
    pub comm: String,
    /// One-letter state (field 3); `Z` is a zombie, `X` is dead.
    pub state: char,
    /// Parent process id (field 4).
    pub ppid: i32,
    /// Process group id (field 5).
    pub pgrp: i32,
    /// Session id (field 6).
    pub session: i32,
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
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let pgrp = rest.get(2)?.parse().ok()?;
    let session = rest.get(3)?.parse().ok()?;
    let start_time = rest.get(19)?.parse().ok()?;
    Some(ProcStat { comm, state, ppid, pgrp, session, start_time })
}

/// The stat of `pid`, or `None` if there is no such process.
pub fn stat(pid: i32) -> io::Result<Option<ProcStat>> {
    if pid <= 0 {
        return Ok(None);
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat is not in the expected format"))
        }),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The process went away while we were reading (ESRCH), or was never there.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Whether a process `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(stat(pid), Ok(Some(st)) if !st.is_dead())
}

/// Every process id in `/proc`, ascending.
pub fn pids() -> io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &i32| *pid > 0)
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Processes still running (zombies left out) whose stat satisfies `select`, ascending.
fn live_where(select: impl Fn(&ProcStat) -> bool) -> io::Result<Vec<i32>> {
    // Processes come and go while we scan; one we cannot read is one that is gone.
    Ok(pids()?.into_iter().filter(|pid| matches!(stat(*pid), Ok(Some(st)) if select(&st) && !st.is_dead())).collect())
}

/// Processes of group `pgid` that are still running (zombies left out), by pid.
pub fn live_group_members(pgid: i32) -> io::Result<Vec<i32>> {
    live_where(|st| st.pgrp == pgid)
}

/// Processes of session `sid` that are still running (zombies left out), by pid.
pub fn live_session_members(sid: i32) -> io::Result<Vec<i32>> {
    live_where(|st| st.session == sid)
}

/// Splits the text of `/proc/<pid>/cmdline` (NUL-separated arguments) into arguments,
/// empty ones left out, invalid UTF-8 replaced.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The command line of `pid`; `None` if it cannot be read (gone, or not ours to read).
/// A kernel thread has an empty one.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    fs::read(format!("/proc/{pid}/cmdline")).ok().map(|raw| parse_cmdline(&raw))
}

/// Whether the environment `pid` was started with (`/proc/<pid>/environ`) sets `key`;
/// false if it cannot be read (gone, or not ours to read).
pub fn environ_has(pid: i32, key: &str) -> bool {
    let prefix = format!("{key}=");
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|raw| raw.split(|b| *b == 0).any(|v| v.starts_with(prefix.as_bytes())))
}

/// The entries of `/proc/<pid>/fd` (each a link to what the descriptor is open on;
/// `fs::metadata` follows it), or nothing if they cannot be read.
pub fn open_files(pid: i32) -> Vec<PathBuf> {
    match fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds.flatten().map(|fd| fd.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The working directory of `pid`; `None` if it cannot be read (gone, or not ours to read).
pub fn cwd(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The effective uid (the second of the four numbers on the `Uid:` line) in the text of
/// `/proc/<pid>/status`.
pub fn parse_effective_uid(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// This process's effective uid, from `/proc/self/status`; `None` if it cannot be read.
pub fn effective_uid() -> Option<u32> {
    parse_effective_uid(&fs::read_to_string("/proc/self/status").ok()?)
}

/// The mount points in the text of `/proc/self/mountinfo` (field 5 of each line, with the
/// octal escapes of spaces and the like undone), in file order.
pub fn parse_mount_points(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape_mountinfo).collect()
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.to_string_lossy();
    Ok(parse_mount_points(&text).iter().any(|mp| *mp == want))
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(char::from(b)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `MemTotal` in KiB from the text of `/proc/meminfo`.
pub fn parse_mem_total_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The host's memory in MiB, from `/proc/meminfo`; `None` if it cannot be read.
pub fn mem_total_mib() -> Option<u64> {
    parse_mem_total_kib(&fs::read_to_string("/proc/meminfo").ok()?).map(|kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let text = "4242 (my (odd) prog) S 1 4242 4200 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let st = parse_stat(text).expect("parses");
        assert_eq!(
            st,
            ProcStat {
                comm: "my (odd) prog".into(),
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4200,
                start_time: 987654
            }
        );
        assert!(!st.is_dead());
    }

    #[test]
    fn zombies_and_truncated_stats() {
        let zombie = "7 (sh) Z 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(parse_stat(zombie).expect("parses").is_dead());
        assert_eq!(parse_stat("7 (sh) S 1 7 7 0"), None, "no start time");
        assert_eq!(parse_stat("7 sh S 1 7 7"), None, "no name in parentheses");
        assert_eq!(parse_stat("7 (sh) S 1 seven 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55"), None, "pgrp not a number");
    }

    #[test]
    fn command_lines_split_at_nul() {
        assert_eq!(
            parse_cmdline(b"qemu-system-x86_64\0-drive\0file=/v/a b.qcow2\0"),
            ["qemu-system-x86_64", "-drive", "file=/v/a b.qcow2"]
        );
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"x\0\0y"), ["x", "y"]);
        assert_eq!(parse_cmdline(b"\xff\0"), ["\u{fffd}"]);
    }

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    35 22 0:30 / /mnt/a\\040b rw,nosuid - tmpfs tmpfs rw\n\
                    36 22 7:0 / /srv/haven/volumes/vol1 rw - ext4 /dev/loop0 rw\n\
                    37 22 0:31 / /odd\\134x rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mount_points(text), ["/", "/mnt/a b", "/srv/haven/volumes/vol1", "/odd\\x"]);
        assert_eq!(unescape_mountinfo("/bad\\9zz"), "/bad\\9zz");
        assert_eq!(parse_mount_points(""), Vec::<String>::new());
    }

    #[test]
    fn meminfo_total() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1234567 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(16318412));
        assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total_kib("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn status_effective_uid() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_effective_uid(text), Some(0), "the effective uid, not the real one");
        assert_eq!(parse_effective_uid("Name:\tsh\nGid:\t0\t0\t0\t0\n"), None, "no Uid line");
        assert_eq!(parse_effective_uid("Uid:\t1000\n"), None, "no effective uid");
        assert_eq!(parse_effective_uid("Uid:\t1000\troot\t0\t0\n"), None, "not a number");
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = std::process::id() as i32;
        let st = stat(me).expect("read").expect("exists");
        assert!(!st.is_dead());
        assert!(st.start_time > 0);
        assert!(is_alive(me));
        assert_eq!(stat(0).expect("read"), None);
        assert!(pids().expect("list /proc").contains(&me));
        assert!(live_session_members(st.session).expect("scan").contains(&me));
        assert!(live_group_members(st.pgrp).expect("scan").contains(&me));
        assert!(cmdline(me).is_some_and(|a| !a.is_empty()));
        assert_eq!(cwd(me), std::env::current_dir().ok());
        assert_eq!(effective_uid(), Some(crate::sys::effective_uid()));
        assert!(!open_files(me).is_empty(), "a test process has stdin/stdout/stderr");
        assert!(is_mount_point(Path::new("/")).expect("mountinfo"));
        assert!(mem_total_mib().is_some_and(|m| m > 0));
    }
}

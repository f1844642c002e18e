//! The pid file in a resource's run directory: which process the agent started, recorded
//! as `<pid> <start time>` so that a restarted agent recognises its process and is not
//! fooled by a later process that got the same pid.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A process as recorded in a pid file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PidRecord {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` when the process was started.
    pub start_time: u64,
}

pub(crate) fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("pid")
}

/// Reads the record; `Ok(None)` if there is no pid file.
pub(crate) fn read(run_dir: &Path) -> io::Result<Option<PidRecord>> {
    let text = match fs::read_to_string(path(run_dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    parse(&text).map(Some).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("expected \"<pid> <start time>\", found {:?}", text.trim()))
    })
}

fn parse(text: &str) -> Option<PidRecord> {
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok()?;
    let start_time = fields.next()?.parse().ok()?;
    (pid > 0 && fields.next().is_none()).then_some(PidRecord { pid, start_time })
}

/// Writes the record atomically (temporary file, fsync, rename), so a crash never leaves
/// a half-written pid file behind.
pub(crate) fn write(run_dir: &Path, record: PidRecord) -> io::Result<()> {
    let tmp = run_dir.join("pid.tmp");
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{} {}", record.pid, record.start_time)?;
    f.sync_all()?;
    fs::rename(&tmp, path(run_dir))
}

/// Removes the pid file; a missing one is fine.
pub(crate) fn remove(run_dir: &Path) -> io::Result<()> {
    match fs::remove_file(path(run_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_two_numbers() {
        assert_eq!(parse("12 345\n"), Some(PidRecord { pid: 12, start_time: 345 }));
        assert_eq!(parse("12"), None);
        assert_eq!(parse("0 345"), None);
        assert_eq!(parse("-1 345"), None);
        assert_eq!(parse("12 345 6"), None);
        assert_eq!(parse("twelve 345"), None);
    }
}

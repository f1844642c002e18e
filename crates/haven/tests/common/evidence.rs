//! Evidence written by the resource itself: a shell loop that appends where and when it
//! runs, the group that runs it, and the reading of those lines into copies ([`Stint`]s)
//! with the check that no two copies ever ran at once.

use std::path::{Path, PathBuf};

use haven_api::specs;
use haven_model::{GroupSpec, ResourceSpec};

use super::api::looks_alive;
use super::lab::Lab;

/// A shell loop for a `process` resource that appends `<cwd> <shell pid> <ns since the
/// epoch>` to `file` about every 10 ms for as long as it runs: which copy of the resource
/// ran where and when, in its own words. A copy killed with SIGKILL leaves no "stopped"
/// line; its last line is as close to its end as the evidence can say.
pub fn evidence_script(file: &Path) -> String {
    format!("while :; do echo \"$(pwd) $$ $(date +%s%N)\" >> {}; sleep 0.01; done", file.display())
}

/// One copy of a resource (one shell, in one run directory), as its evidence shows it.
#[derive(Clone, Debug)]
pub struct Stint {
    pub dir: PathBuf,
    pub pid: i32,
    pub first_ns: u128,
    pub last_ns: u128,
    pub lines: usize,
}

/// The copies that wrote to `file`, by their first line.
pub fn stints(file: &Path) -> Vec<Stint> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out: Vec<Stint> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(pid), Some(t)) =
            (f.first(), f.get(1).and_then(|p| p.parse().ok()), f.get(2).and_then(|t| t.parse::<u128>().ok()))
        else {
            continue; // a line being written as we read
        };
        match out.iter_mut().find(|s| s.pid == pid && s.dir == Path::new(dir)) {
            Some(s) => {
                s.first_ns = s.first_ns.min(t);
                s.last_ns = s.last_ns.max(t);
                s.lines += 1;
            }
            None => out.push(Stint { dir: PathBuf::from(dir), pid, first_ns: t, last_ns: t, lines: 1 }),
        }
    }
    out.sort_by_key(|s| s.first_ns);
    out
}

/// Lines written from `dir` (a run directory), by every copy that ran there.
pub fn lines_from(file: &Path, dir: &Path) -> usize {
    stints(file).iter().filter(|s| s.dir == dir).map(|s| s.lines).sum()
}

/// Asserts that no two copies in `file` ever ran at the same time: each copy's last line
/// comes before the next copy's first. Returns the shortest gap between copies, in ms.
pub fn assert_no_overlap(file: &Path) -> f64 {
    let all = stints(file);
    let listing = || {
        all.iter()
            .map(|s| {
                format!("  {} (pid {}): {} lines, {} .. {}", s.dir.display(), s.pid, s.lines, s.first_ns, s.last_ns)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut min_gap = f64::INFINITY;
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            a.last_ns < b.first_ns,
            "two copies ran at once: {} (pid {}) wrote until {}, after {} (pid {}) began at {}\n{}",
            a.dir.display(),
            a.pid,
            a.last_ns,
            b.dir.display(),
            b.pid,
            b.first_ns,
            listing()
        );
        min_gap = min_gap.min((b.first_ns - a.last_ns) as f64 / 1e6);
    }
    println!("evidence: {} copies, none overlapping (shortest gap {min_gap:.0} ms)\n{}", all.len(), listing());
    min_gap
}

impl Lab {
    /// Creates, through node `via`, group `g` preferring `owner` with one `process`
    /// resource `r` that appends evidence lines to `evidence` (see [`evidence_script`]).
    pub async fn create_evidence_group(&self, via: usize, owner: &str, evidence: &Path) {
        // The resource runs as the default user (`nobody`, the agents running as root): the
        // file it appends to is made writable for it, as an operator would.
        writable_by_anyone(evidence);
        let c = self.client(via);
        c.create_group(&GroupSpec { preferred_owners: vec![owner.to_string()], ..GroupSpec::new("g") })
            .await
            .expect("create group g");
        let r = ResourceSpec {
            props: looks_alive(200),
            ..specs::process("r", "g", &["sh", "-c", &evidence_script(evidence)])
        };
        c.create_resource(&r).await.expect("create resource r");
    }
}

/// Creates `file` (empty, if missing) with mode 0666, for a resource running as `nobody`.
pub fn writable_by_anyone(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::OpenOptions::new().create(true).append(true).open(file).expect("create the evidence file");
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o666)).expect("chmod the evidence file");
}

//! The guest-console check shared by the VM tests of `haven` (through `common`) and of
//! `haven-drivers` (included with `#[path]`): a test guest that booted without its data
//! disk fails the test at once with its console, instead of a wait for records.

use std::path::Path;
use std::time::{Duration, Instant};

/// Fails the test at once, with the guest's console, when the guest boot `boot_id` of the
/// VM run in `run_dir` came up without its data disk: its `haven-guest: booted … disk=none`
/// line in `console.log` (printed just before its first heartbeat, so waited for briefly).
/// Such a guest heartbeats but writes no records, and a test would otherwise wait for them.
pub async fn assert_guest_found_its_disk(run_dir: &Path, boot_id: &str) {
    let path = run_dir.join("console.log");
    let needle = format!("boot_id={boot_id} disk=");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        let tail = || text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        match text.lines().find(|l| l.contains(&needle)) {
            Some(line) if line.contains(" disk=vda") => return,
            Some(_) => panic!(
                "the test guest booted without its data disk (console {}:\n{}\n); rebuild it with \
                 scripts/build-test-guest --force",
                path.display(),
                tail()
            ),
            None if Instant::now() >= deadline => panic!(
                "guest boot {boot_id} heartbeats but printed no `haven-guest: booted` line in {} within 10 s \
                 (console:\n{}\n); rebuild the test guest with scripts/build-test-guest --force",
                path.display(),
                tail()
            ),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

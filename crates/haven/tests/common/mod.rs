//! The lab harness for the multi-process tests of tier 3 (see DESIGN.md, "Testing tiers"):
//! real `haven agent` processes on loopback, each in a session of its own, that a test can
//! kill whole (agent and resource processes at once, the way a host dies), stop gracefully
//! and start again.
//!
//! Every wait is bounded and says what it waits for; on timeout it panics with the last
//! lines of every agent's log. Dropping the [`Lab`] SIGKILLs every session it started, so
//! no process outlives a test, even one that panicked (its directory is then kept and its
//! path printed, for the logs).
//!
//! [`Lab::start_netns`] and [`Lab::start_with`] put each node in a network namespace of its
//! own, wired to a bridge in the root namespace, so a test can cut nodes off for real
//! ([`Lab::isolate`], [`Lab::separate`]) and heal them; dropping the lab deletes them.
//!
//! One module per concern, all re-exported here (tests `use common::…`):
//! - `lab`: the cluster as a whole: node configs, founding it, its progress lines, drop;
//! - `node`: one node's agent process: started in its own session, killed, stopped, restarted;
//! - `wait`: bounded polling (`wait_for`, `wait_until`, `hold_for`) and the log tails they quote;
//! - `net`: the lab's addresses, its network namespaces and the faults cut into them;
//! - `api`: reads through the typed client and the request bodies tests build;
//! - `cli`: running the `haven` CLI against a node;
//! - `procs`: resource processes as `haven_drivers::procfs` shows them, and SIGKILL;
//! - `evidence`: the lines a resource writes about itself, and the checks over them;
//! - `guest`: the test guest and the host programs the VM tests need;
//! - `guest_console`: the guest's console check (shared with haven-drivers' tests).
#![allow(dead_code)]

mod api;
mod cli;
mod evidence;
mod guest;
mod guest_console;
mod lab;
mod net;
mod node;
mod procs;
mod wait;

// Each test binary uses a part of the harness; the rest is unused there.
#[allow(unused_imports)]
pub use api::{group_preferring, looks_alive};
#[allow(unused_imports)]
pub use evidence::{Stint, assert_no_overlap, evidence_script, lines_from, stints, writable_by_anyone};
#[allow(unused_imports)]
pub use guest::{installed, test_guest};
#[allow(unused_imports)]
pub use guest_console::assert_guest_found_its_disk;
#[allow(unused_imports)]
pub use lab::Lab;
#[allow(unused_imports)]
pub use node::{LabNode, Role};
#[allow(unused_imports)]
pub use procs::{alive, cwd_of, pid_in, processes_in, sigkill};

/// The `haven` binary under test.
pub const HAVEN: &str = env!("CARGO_BIN_EXE_haven");

//! Lab: a real QEMU guest (the test guest of `scripts/build-test-guest`) in a group
//! `disk` → `vm-config` → `vm` on a shared directory volume, run by real agents.
//!
//! - Its node dies whole (agent and QEMU, SIGKILL): the VM boots on a survivor, the
//!   volume's claim moves to the new owner at a higher placement generation, and the
//!   guest's own records on its data disk show one writer at a time.
//! - Its QEMU alone is killed, then its guest stops heartbeating (`haven vm control vm1
//!   freeze`): each time the VM is restarted in place, as a new guest boot, and the history
//!   says why.
//! - Its node's agent alone is frozen (SIGSTOP) past its lease: the node guard kills QEMU at
//!   the lease end, the VM boots on a survivor, the guests' records show one writer at a
//!   time, and after SIGCONT nothing boots twice.
//!
//! QEMU runs under TCG here (no usable KVM), where a boot takes 5–15 s: every wait is
//! generous but bounded, and one VM runs at a time. The tests skip (with a message) only
//! when `qemu-system-x86_64` is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{HAVEN, Lab, alive, assert_guest_found_its_disk, installed, pid_in, processes_in, sigkill, test_guest};
use haven_api::{HistoryQuery, VmView, specs};
use haven_drivers::procfs;
use haven_model::{Accel, Dur, GroupSpec, ResourceKind, ResourceProps, ResourceSpec, ResourceState, VmParams};
use haven_state::Event;
use serde_json::json;

const GROUP: &str = "g";
const DISK: &str = "vol1-disk";
const CONFIG: &str = "vm1-config";
const VM: &str = "vm1";
const VOLUME_ID: &str = "lab-vol-1";
const VOLUME_NAME: &str = "vol1";

/// Longest a VM may take from being placed to its first heartbeat: KVM probe (3 s),
/// QEMU start, and a TCG boot on a loaded 2-core machine.
const BOOT_LIMIT_S: u64 = 90;

/// Runs a program that must succeed; panics with its stderr.
fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install e2fsprogs / qemu-system-x86): {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The shared volume of the lab, `<lab>/shared/vol1`: its `.haven-volume`, an ext4 data
/// image `data.img` (the guest's /dev/vda) and the VM definition `vm1.toml`, all on it.
/// Every node reaches it at the same path, as with NFS.
fn make_volume(lab: &Lab, guest: &Path) -> PathBuf {
    let volume = lab.dir().join("shared").join(VOLUME_NAME);
    std::fs::create_dir_all(&volume).expect("cannot create the shared volume");
    std::fs::write(volume.join(".haven-volume"), format!("{VOLUME_ID}\n")).expect("cannot write .haven-volume");
    let image = volume.join("data.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(32 << 20)).expect("cannot create data.img");
    run("mkfs.ext4", &["-q", "-F", &image.to_string_lossy()]);
    // The guest appends its alive lines without syncing; short writeback times (set on the
    // kernel command line) get them onto the disk within a few seconds, so the records of
    // a guest killed with its node are nearly complete.
    let definition = format!(
        r#"name = "{VM}"
vcpus = 1
memory_mib = 192
heartbeat = true
[boot]
kernel = "{kernel}"
initrd = "{initrd}"
cmdline = "console=ttyS0 haven.name={VM} quiet sysctl.vm.dirty_expire_centisecs=100 sysctl.vm.dirty_writeback_centisecs=100"
[[disks]]
path = "data.img"
"#,
        kernel = guest.join("vmlinuz").display(),
        initrd = guest.join("initrd.img").display(),
    );
    std::fs::write(volume.join("vm1.toml"), definition).expect("cannot write the VM definition");
    lab.note(&format!("shared volume {VOLUME_ID} at {} (data.img, vm1.toml)", volume.display()));
    volume
}

/// Creates group `g` (offline) preferring `owner`, with `vol1-disk` → `vm1-config` →
/// `vm1`, then brings it online.
async fn create_vm_group(lab: &Lab, volume: &Path, owner: &str) {
    let c = lab.client(0).clone();
    c.create_group(&GroupSpec { online: false, ..common::group_preferring(GROUP, &[owner]) })
        .await
        .expect("create group");
    c.create_resource(&specs::dir_disk(DISK, GROUP, VOLUME_ID, VOLUME_NAME, &volume.to_string_lossy()))
        .await
        .expect("create the disk resource");
    let config = specs::vm_config(CONFIG, GROUP, &format!("{VOLUME_NAME}/vm1.toml"));
    c.create_resource(&ResourceSpec { depends_on: vec![DISK.into()], ..config })
        .await
        .expect("create the vm-config resource");
    let params = VmParams {
        config: CONFIG.into(),
        heartbeat_timeout: Dur::from_secs(3),
        shutdown_timeout: Dur::from_secs(2),
        boot_timeout: Dur::from_secs(60),
    };
    let vm = ResourceSpec {
        props: ResourceProps {
            looks_alive_interval: Dur::from_millis(500),
            is_alive_interval: Dur::from_secs(1),
            restart_delay: Dur::from_millis(200),
            ..ResourceProps::default()
        },
        depends_on: vec![CONFIG.into()],
        ..specs::resource(VM, GROUP, ResourceKind::Vm, &params)
    };
    c.create_resource(&vm).await.expect("create the vm resource");
    c.set_group_online(GROUP, true).await.expect("group online");
    lab.note(&format!("group {GROUP}: {DISK} -> {CONFIG} -> {VM}, preferring {owner}, online"));
}

/// VM vm1 as node `i` shows it (the request is forwarded to the owner for the runtime).
async fn vm_view(lab: &Lab, i: usize) -> Option<VmView> {
    lab.client(i).vm(VM).await.ok()
}

/// What a running guest shows through node `i`: (owner, boot id, heartbeat seq), once the
/// group is online on its owner and the guest has sent a heartbeat.
async fn heartbeat(lab: &Lab, i: usize) -> Option<(String, String, u64)> {
    let owner = lab.online_on(i, GROUP).await?;
    let v = vm_view(lab, i).await?;
    let rt = v.runtime?;
    (v.owner.as_deref() == Some(owner.as_str())).then_some(())?;
    Some((owner, rt.guest_boot_id?, rt.last_heartbeat_seq?))
}

/// Waits until the guest with `boot_id`, seen through node `i`, has sent heartbeat `seq`
/// or later; returns the seq.
async fn wait_seq(lab: &Lab, i: usize, boot_id: &str, seq: u64) -> u64 {
    lab.wait_for(&format!("guest {boot_id} to reach heartbeat seq {seq}"), 60, async || {
        let (_, b, s) = heartbeat(lab, i).await?;
        assert_eq!(b, boot_id, "the guest rebooted while it should have kept running");
        (s >= seq).then_some(s)
    })
    .await
}

/// The volume's `.haven-claim`: (node, generation).
fn claim(volume: &Path) -> (String, u64) {
    let path = volume.join(".haven-claim");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is no claim: {e}"));
    let node = v["node"].as_str().expect("a claim names its node").to_string();
    let generation = v["generation"].as_u64().expect("a claim has a generation");
    (node, generation)
}

async fn group_generation(lab: &Lab, i: usize) -> u64 {
    lab.group(i, GROUP).await.expect("read the group").group.generation
}

/// Takes the group offline and waits until every resource is offline and no QEMU runs on
/// any node, so nothing writes to the volume any more.
async fn take_offline(lab: &Lab, via: usize) {
    lab.client(via).set_group_online(GROUP, false).await.expect("group offline");
    let run_dirs: Vec<PathBuf> = (0..lab.nodes.len()).map(|i| lab.node(i).run_dir(VM)).collect();
    lab.wait_until("the group offline: every resource offline, no QEMU left on any node", 40, async || {
        for r in [VM, CONFIG, DISK] {
            if lab.resource(via, r).await.is_none_or(|v| v.status.state != ResourceState::Offline) {
                return false;
            }
        }
        run_dirs.iter().all(|d| processes_in(d).is_empty())
    })
    .await;
}

/// A `boot <boot_id> <epoch> <name>` line of `boots.log`.
#[derive(Debug)]
struct Boot {
    id: String,
    epoch: u64,
}

/// An `alive <boot_id> <seq> <epoch>` line of `alive.log`.
#[derive(Debug)]
struct Alive {
    id: String,
    seq: u64,
    epoch: u64,
}

/// Reads `boots.log` and `alive.log` from the data image without mounting it: a copy gets
/// its journal replayed by `e2fsck` (as the next mount would), then `debugfs` reads it.
fn guest_records(lab: &Lab, image: &Path) -> (Vec<Boot>, Vec<Alive>) {
    let copy = lab.dir().join("inspect.img");
    std::fs::copy(image, &copy).expect("cannot copy data.img");
    let copy_s = copy.to_string_lossy().into_owned();
    let fsck = Command::new("e2fsck").args(["-f", "-y", &copy_s]).output().expect("cannot run e2fsck");
    // 0: clean, 1: fixed (a replayed journal counts).
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck found the guest's filesystem damaged ({}): {}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = |file: &str| {
        String::from_utf8_lossy(&run("debugfs", &["-R", &format!("cat /{file}"), &copy_s]).stdout).into_owned()
    };
    let boots_text = cat("boots.log");
    let alive_text = cat("alive.log");
    let boots = boots_text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim_matches('\0').split_whitespace().collect();
            (f.len() == 4 && f[0] == "boot").then(|| {
                assert_eq!(f[3], VM, "a boot line of another guest: {l:?}");
                Boot { id: f[1].to_string(), epoch: f[2].parse().expect("an epoch") }
            })
        })
        .collect();
    // A guest killed mid-append can leave the tail of alive.log as NUL bytes: ext4 grew
    // the file, the data never reached the disk. That is a lost line, not a second
    // writer, and the next boot's append can follow it on the same "line"; so NULs are
    // dropped and lines left empty skipped (counted below).
    let torn = alive_text.bytes().filter(|&b| b == 0).count();
    let alive: Vec<Alive> = alive_text
        .lines()
        .map(|l| l.trim_matches('\0'))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() == 4 && f[0] == "alive", "unexpected line in alive.log: {l:?}");
            Alive { id: f[1].to_string(), seq: f[2].parse().expect("a seq"), epoch: f[3].parse().expect("an epoch") }
        })
        .collect();
    println!("boots.log:\n{boots_text}alive.log: {} lines, {torn} NUL bytes of torn appends", alive.len());
    (boots, alive)
}

/// Asserts that the guest boots `expected` (boot ids, in order) are exactly the boots on
/// the disk, and that they wrote one at a time: in `alive.log` every line of a boot comes
/// after every line of the boots before it, and no boot's alive line is later (by the
/// guest's clock) than the next boot's boot line. Returns the alive lines per boot.
fn assert_one_writer_at_a_time(boots: &[Boot], alive: &[Alive], expected: &[&str]) -> Vec<usize> {
    let ids: Vec<&str> = boots.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, expected, "the boots on the data disk are not the guests the API showed");
    let index = |id: &str| {
        ids.iter().position(|b| *b == id).unwrap_or_else(|| panic!("alive.log has lines of unknown boot {id}"))
    };
    let mut last = 0;
    let mut counts = vec![0; ids.len()];
    for (n, a) in alive.iter().enumerate() {
        let k = index(&a.id);
        assert!(
            k >= last,
            "alive.log line {} (boot {}, seq {}) comes after lines of the later boot {}: two guests wrote at once",
            n + 1,
            a.id,
            a.seq,
            ids[last]
        );
        last = k;
        counts[k] += 1;
        if let Some(next) = boots.get(k + 1) {
            assert!(
                a.epoch <= next.epoch,
                "boot {} wrote alive seq {} at {} after boot {} had started at {}: two guests wrote at once",
                a.id,
                a.seq,
                a.epoch,
                next.id,
                next.epoch
            );
        }
    }
    for (k, b) in boots.iter().enumerate() {
        let of: Vec<&Alive> = alive.iter().filter(|a| a.id == b.id).collect();
        let (first, last) = (of.first().map(|a| (a.seq, a.epoch)), of.last().map(|a| (a.seq, a.epoch)));
        println!(
            "boot {k} {} at {}: {} alive lines, first (seq, epoch) {first:?}, last {last:?}",
            b.id, b.epoch, counts[k]
        );
    }
    counts
}

/// The history of the group through node `i`.
/// A 3-node lab with a volume holding the test guest; `None` (the test skips, saying so)
/// when QEMU is not installed.
async fn vm_lab() -> Option<(Lab, PathBuf)> {
    if !installed("qemu-system-x86_64") {
        println!("SKIPPED: qemu-system-x86_64 is not installed");
        return None;
    }
    let guest = test_guest();
    let lab = Lab::start(3).await;
    let volume = make_volume(&lab, &guest);
    Some((lab, volume))
}

/// A follower to own the VM: its death or freeze leaves the leader (and the controller) be.
async fn follower(lab: &Lab) -> usize {
    let leader = lab.leader_seen_by(0).await.expect("a leader");
    (0..3).find(|i| lab.node(*i).id != leader).expect("a follower")
}

async fn history(lab: &Lab, i: usize) -> Vec<Event> {
    lab.client(i).history(&HistoryQuery::group(GROUP).limit(1000)).await.expect("history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_fails_over_when_its_node_dies_and_one_guest_writes_at_a_time() {
    let Some((mut lab, volume)) = vm_lab().await else { return };
    let a = follower(&lab).await;
    let a_name = lab.name(a).to_string();
    create_vm_group(&lab, &volume, &a_name).await;

    let (owner, boot1, seq) = lab
        .wait_for(&format!("{VM} online on {a_name} with a guest heartbeat"), BOOT_LIMIT_S, async || {
            heartbeat(&lab, 0).await
        })
        .await;
    assert_eq!(owner, a_name, "the VM should start on its preferred owner");
    assert_guest_found_its_disk(&lab.node(a).run_dir(VM), &boot1).await;
    lab.note(&format!("guest {boot1} heartbeats on {a_name} (seq {seq})"));

    // The accelerator and why, through the API and the CLI.
    let view = vm_view(&lab, 0).await.expect("the VM view");
    let rt = view.runtime.clone().expect("a runtime");
    lab.note(&format!("accelerator {}: {}", rt.accel.as_str(), rt.reason_for_accel));
    assert!(matches!(rt.accel, Accel::Kvm | Accel::Tcg), "{rt:?}");
    assert!(rt.reason_for_accel.contains("KVM"), "the reason should say what the KVM probe saw: {rt:?}");
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        assert_eq!(rt.accel, Accel::Tcg, "no usable /dev/kvm here: {rt:?}");
    }
    let qemu_a = pid_in(&lab.node(a).run_dir(VM)).expect("a QEMU pid file on the owner");
    assert_eq!(rt.pid, qemu_a, "the API's QEMU pid is the pid file's");
    assert!(alive(qemu_a), "QEMU {qemu_a} on {a_name} is not running");
    let other = (a + 1) % 3;
    let shown = lab.cli_json(other, &["vm", "show", VM]).await;
    assert_eq!(shown["owner"], json!(a_name), "`haven vm show` through {}: {shown}", lab.name(other));
    assert_eq!(shown["runtime"]["accel"], json!(rt.accel.as_str()), "{shown}");
    assert_eq!(shown["runtime"]["reason_for_accel"], json!(rt.reason_for_accel), "{shown}");
    let listed = lab.cli_json(other, &["vm", "list"]).await;
    assert!(listed.as_array().is_some_and(|l| l.len() == 1 && l[0]["name"] == json!(VM)), "{listed}");
    // The guest's serial console, fetched from its owner through another node.
    let console = lab.cli_json(other, &["vm", "console", VM]).await;
    let text = console["console"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("haven-guest: booted {VM} boot_id={boot1}")), "console: {text:?}");

    // Heartbeats advance; let the guest write a good stretch of alive lines to its disk.
    let seq = wait_seq(&lab, other, &boot1, seq + 12).await;
    let generation_a = group_generation(&lab, 0).await;
    assert_eq!(claim(&volume), (a_name.clone(), generation_a), "the volume's claim before the failure");

    lab.note(&format!("killing {a_name} whole: its agent and QEMU {qemu_a} (guest {boot1} at seq {seq})"));
    lab.kill_node(a);
    assert!(!alive(qemu_a), "killing {a_name} whole must kill its QEMU {qemu_a}");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != a).collect();

    let (s, boot2, seq2) = lab
        .wait_for(&format!("{VM} online on a survivor, heartbeating as a new guest"), BOOT_LIMIT_S, async || {
            let (owner, boot, seq) = heartbeat(&lab, survivors[0]).await?;
            (owner != a_name && boot != boot1).then_some((owner, boot, seq))
        })
        .await;
    lab.note(&format!("guest {boot2} heartbeats on {s} (seq {seq2})"));
    let si = lab.index_of(&s);
    assert!(survivors.contains(&si));
    assert_guest_found_its_disk(&lab.node(si).run_dir(VM), &boot2).await;
    lab.wait_until(&format!("the other survivor to see guest {boot2} on {s} too"), 10, async || {
        heartbeat(&lab, survivors[1]).await.is_some_and(|(o, b, _)| o == s && b == boot2)
    })
    .await;
    let generation_s = group_generation(&lab, si).await;
    let (claim_node, claim_generation) = claim(&volume);
    assert_eq!(claim_node, s, "the volume is claimed by the new owner");
    assert!(
        claim_generation > generation_a,
        "the new claim's generation {claim_generation} must be above the old {generation_a}"
    );
    assert_eq!(claim_generation, generation_s, "the claim carries the group's placement generation");
    let qemu_s = pid_in(&lab.node(si).run_dir(VM)).expect("a QEMU pid file on the new owner");
    assert!(alive(qemu_s));
    let vm = lab.resource(si, VM).await.expect("the vm resource");
    assert_eq!((vm.status.state, vm.status.node.as_deref()), (ResourceState::Online, Some(s.as_str())));
    wait_seq(&lab, si, &boot2, seq2 + 8).await;

    // Nothing writes once the group is offline; then the guests' own records.
    take_offline(&lab, si).await;
    let (boots, alive_lines) = guest_records(&lab, &volume.join("data.img"));
    let counts = assert_one_writer_at_a_time(&boots, &alive_lines, &[&boot1, &boot2]);
    assert!(counts[0] > 0, "the first guest's alive lines never reached its disk: {alive_lines:?}");
    assert!(counts[1] > 0, "the second guest's alive lines never reached its disk: {alive_lines:?}");
    lab.note(&format!(
        "two boots on the disk ({boot1} on {a_name}, {boot2} on {s}), {} and {} alive lines, one writer at a time",
        counts[0], counts[1]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_restarts_in_place_when_qemu_dies_or_its_guest_stops_heartbeating() {
    let Some((lab, volume)) = vm_lab().await else { return };
    let a = 1;
    let a_name = lab.name(a).to_string();
    let other = 2;
    create_vm_group(&lab, &volume, &a_name).await;
    let (owner, boot1, _) = lab
        .wait_for(&format!("{VM} online on {a_name} with a guest heartbeat"), BOOT_LIMIT_S, async || {
            heartbeat(&lab, 0).await
        })
        .await;
    assert_eq!(owner, a_name);
    let generation = group_generation(&lab, 0).await;
    let run_dir = lab.node(a).run_dir(VM);
    assert_guest_found_its_disk(&run_dir, &boot1).await;

    // 1. QEMU alone dies.
    let qemu1 = pid_in(&run_dir).expect("a QEMU pid file");
    assert!(alive(qemu1));
    lab.note(&format!("guest {boot1} heartbeats on {a_name}; SIGKILL to its QEMU {qemu1} only"));
    sigkill(qemu1);
    let (boot2, qemu2) = lab
        .wait_for(&format!("{VM} restarted in place on {a_name} as a new guest"), BOOT_LIMIT_S, async || {
            let (owner, boot, _) = heartbeat(&lab, other).await?;
            assert_eq!(owner, a_name, "a restart in place must not move the group");
            let pid = pid_in(&run_dir)?;
            (boot != boot1 && pid != qemu1 && alive(pid)).then_some((boot, pid))
        })
        .await;
    lab.note(&format!("guest {boot2} heartbeats on {a_name} (QEMU {qemu2})"));
    assert_guest_found_its_disk(&run_dir, &boot2).await;
    assert!(!alive(qemu1));
    let events = history(&lab, other).await;
    let failed = events
        .iter()
        .find(|e| e.kind == "resource-failed" && e.resource.as_deref() == Some(VM))
        .unwrap_or_else(|| panic!("no resource-failed event for {VM}: {events:#?}"));
    println!("history: {}", failed.message);
    assert_eq!(failed.node.as_deref(), Some(a_name.as_str()), "{failed:?}");
    assert!(
        failed.message.contains(&format!("QEMU of VM \"{VM}\": process {qemu1}")),
        "the reason names the dead QEMU: {failed:?}"
    );
    assert!(failed.message.contains("restarting in place (failure 1 of 3"), "{failed:?}");
    let online = events
        .iter()
        .find(|e| e.id > failed.id && e.kind == "resource-online" && e.resource.as_deref() == Some(VM))
        .unwrap_or_else(|| panic!("no resource-online event for {VM} after its failure: {events:#?}"));
    assert_eq!(online.node.as_deref(), Some(a_name.as_str()), "{online:?}");

    // 2. The guest hangs: QEMU runs, the heartbeat stops; only the thorough check sees it.
    let seq = wait_seq(&lab, other, &boot2, 2).await;
    let sent = lab.cli_json(other, &["vm", "control", VM, "freeze"]).await;
    assert_eq!(sent["node"], json!(a_name), "the control line is forwarded to the owner: {sent}");
    lab.note(&format!("froze the heartbeat of guest {boot2} at seq {seq} (`{HAVEN} vm control {VM} freeze`)"));
    let boot3 = lab
        .wait_for(
            &format!("{VM} restarted in place on {a_name} after its heartbeat stopped"),
            BOOT_LIMIT_S,
            async || {
                let (owner, boot, _) = heartbeat(&lab, other).await?;
                assert_eq!(owner, a_name, "a restart in place must not move the group");
                (boot != boot2 && boot != boot1).then_some(boot)
            },
        )
        .await;
    lab.note(&format!("guest {boot3} heartbeats on {a_name}"));
    assert_guest_found_its_disk(&run_dir, &boot3).await;
    assert!(!alive(qemu2), "the hung guest's QEMU {qemu2} must be stopped");
    let events = history(&lab, other).await;
    let hung = events
        .iter()
        .find(|e| e.id > online.id && e.kind == "resource-failed" && e.resource.as_deref() == Some(VM))
        .unwrap_or_else(|| panic!("no resource-failed event for the hung guest: {events:#?}"));
    println!("history: {}", hung.message);
    assert_eq!(hung.node.as_deref(), Some(a_name.as_str()), "{hung:?}");
    assert!(
        hung.message.contains("sent no heartbeat for") && hung.message.contains(&boot2),
        "the reason names the missing heartbeat of the hung guest: {hung:?}"
    );
    assert!(hung.message.contains("heartbeat_timeout 3s"), "{hung:?}");
    assert!(hung.message.contains("restarting in place (failure 2 of 3"), "{hung:?}");
    assert!(
        events.iter().any(|e| e.id > hung.id && e.kind == "resource-online" && e.resource.as_deref() == Some(VM)),
        "no resource-online event for {VM} after the hung guest: {events:#?}"
    );
    let vm = lab.resource(other, VM).await.expect("the vm resource");
    assert_eq!(vm.status.failures.len(), 2, "two failures recorded: {:?}", vm.status);
    assert_eq!(group_generation(&lab, other).await, generation, "restarts in place keep the placement");
    assert_eq!(claim(&volume), (a_name.clone(), generation), "the volume stays claimed by {a_name}");

    wait_seq(&lab, other, &boot3, 3).await;

    // Its definition cannot change while it runs.
    let original = std::fs::read_to_string(volume.join("vm1.toml")).expect("vm1.toml");
    let edit = |text: String| {
        let client = lab.client(other).clone();
        async move { client.edit_vm_definition(VM, &text).await }
    };
    let refused = |r: Result<haven_api::DefinitionEdited, haven_api::ClientError>, status: u16, needle: &str| match r {
        Err(haven_api::ClientError::Api { status: s, message, .. }) => {
            assert_eq!(s, status, "{message}");
            assert!(message.contains(needle), "{message:?} should mention {needle:?}");
        }
        other => panic!("expected a refusal naming {needle:?}, got {other:?}"),
    };
    let smaller = original.replace("memory_mib = 192", "memory_mib = 160");
    refused(edit(smaller.clone()).await, 409, "can only change while it is offline");
    assert_eq!(std::fs::read_to_string(volume.join("vm1.toml")).expect("vm1.toml"), original);

    // Three boots on the disk, one after the other.
    take_offline(&lab, other).await;
    let (boots, alive_lines) = guest_records(&lab, &volume.join("data.img"));
    let counts = assert_one_writer_at_a_time(&boots, &alive_lines, &[&boot1, &boot2, &boot3]);
    lab.note(&format!("three boots on the disk, {counts:?} alive lines, one writer at a time"));

    // Offline, invalid definitions are refused with the field named; a valid one is written
    // and used at the next start.
    refused(edit(original.replace("memory_mib = 192", "memory_mib = 0")).await, 400, "memory_mib");
    refused(
        edit(original.replace("vcpus = 1", "vcpus = 1\ncolour = \"red\"")).await,
        400,
        "unknown field; expected one of `name`",
    );
    refused(edit(original.replace("path = \"data.img\"", "path = \"missing.img\"")).await, 400, "disks[0].path");
    assert_eq!(std::fs::read_to_string(volume.join("vm1.toml")).expect("vm1.toml"), original);
    edit(smaller.clone()).await.expect("a valid edit while offline");
    assert_eq!(std::fs::read_to_string(volume.join("vm1.toml")).expect("vm1.toml"), smaller);
    lab.client(other).set_group_online(GROUP, true).await.expect("group online");
    let pid = lab
        .wait_for("the VM to start again with the edited definition", 90, async || {
            vm_view(&lab, other).await.and_then(|v| v.runtime).map(|r| r.pid)
        })
        .await;
    let args = procfs::cmdline(pid).expect("QEMU's command line");
    assert!(
        args.windows(2).any(|w| w[0] == "-m" && w[1].starts_with("160")),
        "QEMU runs with the new memory: {args:?}"
    );
    lab.note("definition edits: refused while running, invalid ones named, a valid one used at the next start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_of_a_frozen_agent_is_killed_at_its_lease_end_before_it_boots_elsewhere() {
    let Some((lab, volume)) = vm_lab().await else { return };
    let a = follower(&lab).await;
    let a_name = lab.name(a).to_string();
    create_vm_group(&lab, &volume, &a_name).await;
    let other = (0..3).find(|i| *i != a).expect("a survivor");
    let (owner, boot1, seq) = lab
        .wait_for(&format!("{VM} online on {a_name} with a guest heartbeat"), BOOT_LIMIT_S, async || {
            heartbeat(&lab, other).await
        })
        .await;
    assert_eq!(owner, a_name);
    wait_seq(&lab, other, &boot1, seq + 8).await;
    let qemu_a = pid_in(&lab.node(a).run_dir(VM)).expect("QEMU's pid file");

    // Freeze only the agent; QEMU runs on until the guard kills it.
    let agent = lab.agent_pid(a).expect("the agent runs");
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &agent.to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {agent}");
    };
    signal("-STOP");
    lab.note(&format!("SIGSTOP to {a_name}'s agent only (QEMU {qemu_a} keeps running)"));
    lab.wait_until(&format!("QEMU {qemu_a} killed by {a_name}'s guard"), 10, async || !alive(qemu_a)).await;
    let (s, boot2, seq2) = lab
        .wait_for(&format!("{VM} online on a survivor, as a new guest"), BOOT_LIMIT_S, async || {
            let (owner, boot, seq) = heartbeat(&lab, other).await?;
            (owner != a_name && boot != boot1).then_some((owner, boot, seq))
        })
        .await;
    lab.note(&format!("guest {boot2} heartbeats on {s} (seq {seq2})"));
    signal("-CONT");
    lab.note(&format!("SIGCONT to {a_name}'s agent"));
    lab.wait_until(&format!("{a_name} up again"), 30, async || lab.sees_all_up(a, 3).await).await;
    let si = lab.index_of(&s);
    wait_seq(&lab, si, &boot2, seq2 + 8).await;
    assert!(pid_in(&lab.node(a).run_dir(VM)).is_none_or(|p| !alive(p)), "no QEMU on {a_name} after the thaw");

    take_offline(&lab, si).await;
    let (boots, alive_lines) = guest_records(&lab, &volume.join("data.img"));
    let counts = assert_one_writer_at_a_time(&boots, &alive_lines, &[&boot1, &boot2]);
    lab.note(&format!("two boots, {} and {} alive lines, one writer at a time", counts[0], counts[1]));
}

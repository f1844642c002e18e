//! The article's walkthrough, end to end, on a real 3-node lab: a shared `dir` volume is a
//! disk resource of an "available storage" group; a VM (the test guest of
//! `scripts/build-test-guest`, its kernel, initrd, data disk and definition all on the
//! volume) is defined on node 1 and stopped; `haven vm make-ha --group web` checks it,
//! creates group `web`, moves the disk resource in, and creates the VM's `vm-config` and
//! `vm`; `haven group show web` shows the resources, status, preferred and current owner;
//! then the group moves (live: a handoff) to every other node and back, each move proven by a new guest
//! boot heartbeating from the new owner.
//!
//! Skips (with a message) only when `qemu-system-x86_64` or `qemu-img` is missing.

mod common;

use std::process::Command;

use common::{Lab, group_preferring, installed, test_guest};
use haven_api::{HistoryQuery, VmView, specs};
use haven_model::{CheckResult, Dur, HaReport, ResourceState, ResourceUpdate, VmParams};
use serde_json::json;

/// From placement to the first heartbeat: KVM probe, QEMU start, a TCG boot.
const BOOT_LIMIT_S: u64 = 90;

fn cli(lab: &Lab, args: &[&str]) -> (Option<i32>, String, String) {
    let out = lab.cli(0).args(args).output().expect("run the haven CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (owner, boot id) of the guest of VM `web`, once group `web` is online there and the
/// guest heartbeats.
async fn heartbeat(lab: &Lab, i: usize) -> Option<(String, String)> {
    let owner = lab.online_on(i, "web").await?;
    let v: VmView = lab.client(i).vm("web").await.ok()?;
    let rt = v.runtime?;
    (v.owner.as_deref() == Some(owner.as_str())).then_some(())?;
    rt.last_heartbeat_seq?;
    Some((owner, rt.guest_boot_id?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_ha_walkthrough_then_move_to_every_node_and_back() {
    if !installed("qemu-system-x86_64") || !installed("qemu-img") {
        eprintln!("SKIPPED: qemu-system-x86_64 and qemu-img are needed (Debian: qemu-system-x86 qemu-utils)");
        return;
    }
    let guest = test_guest();
    let lab = Lab::start(3).await;
    let c = lab.client(0).clone();
    let node1 = lab.name(0).to_string();

    // The shared volume, a disk resource of "available-storage", online on node 1.
    let shared = lab.dir().join("shared/vol1");
    std::fs::create_dir_all(&shared).expect("volume");
    std::fs::write(shared.join(".haven-volume"), "lab-vol-1\n").expect(".haven-volume");
    c.create_group(&group_preferring("available-storage", &[&node1])).await.expect("group");
    c.create_resource(&specs::dir_disk("vol1", "available-storage", "lab-vol-1", "vol1", &shared.to_string_lossy()))
        .await
        .expect("disk resource");
    lab.wait_until("vol1 online on node 1", 30, async || {
        lab.resource(0, "vol1").await.is_some_and(|r| r.status.state == ResourceState::Online)
    })
    .await;

    // The VM, created on node 1 through the volume's cluster path.
    let dir = lab.node(0).state_dir().join("volumes/vol1/web");
    std::fs::create_dir_all(&dir).expect("VM directory");
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(guest.join(f), dir.join(f)).expect("copy the test guest");
    }
    let image = dir.join("data.img");
    std::fs::File::create(&image).and_then(|f| f.set_len(32 << 20)).expect("data.img");
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status().expect("mkfs.ext4");
    assert!(mkfs.success());
    let definition = dir.join("vm.toml");
    std::fs::write(
        &definition,
        r#"name = "web"
vcpus = 1
memory_mib = 192
heartbeat = true
[boot]
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 haven.name=web quiet"
[[disks]]
path = "data.img"
"#,
    )
    .expect("vm.toml");
    let def = definition.to_string_lossy().into_owned();

    // It is stopped (never started): the dry run passes every check and changes nothing.
    let (code, out, err) = cli(&lab, &["-o", "json", "vm", "make-ha", &def, "--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let dry: HaReport = serde_json::from_str(&out).expect("report");
    assert!(dry.ok && dry.dry_run && !dry.applied, "{dry:#?}");
    assert_eq!(dry.group.as_deref(), Some("available-storage"));
    assert!(c.resource("web").await.is_err(), "a dry run created the VM");

    // The article's flow: the storage waits offline in "available storage"; the wizard
    // makes a new group for the VM and moves its disk in.
    c.set_group_online("available-storage", false).await.expect("offline");
    lab.wait_until("vol1 offline", 30, async || {
        lab.resource(0, "vol1").await.is_some_and(|r| r.status.state == ResourceState::Offline)
    })
    .await;
    let (code, text, err) = cli(&lab, &["vm", "make-ha", &def, "--group", "web"]);
    println!("---- haven vm make-ha {def} --group web\n{text}{err}----");
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("[PASS] 1 vm-stopped") && text.contains("[PASS] 8 cluster-changes"), "{text}");
    assert!(text.contains("move disk resource \"vol1\" from group \"available-storage\" into group \"web\""), "{text}");

    let events = c.history(&HistoryQuery::resource("web").limit(500)).await.expect("history");
    let entry = events.iter().rev().find(|e| e.kind == "ha-wizard").expect("the report is in the history");
    let report = entry.report.clone().expect("with the report");
    println!("---- report in the history (JSON)\n{}\n----", serde_json::to_string_pretty(&report).expect("json"));
    assert!(report.ok && report.applied && report.group.as_deref() == Some("web"));
    assert_eq!(report.checks.iter().filter(|c| c.result == CheckResult::Fail).count(), 0);
    assert_eq!(report.checks.len(), 8);

    // The group: its resources in start order, preferred owner node 1, running there.
    let (boot1_owner, boot1) =
        lab.wait_for("VM web online on node 1, heartbeating", BOOT_LIMIT_S, async || heartbeat(&lab, 0).await).await;
    assert_eq!(boot1_owner, node1);
    let g = lab.cli_json(0, &["group", "show", "web"]).await;
    assert_eq!(g["resources"], json!(["vol1", "web-config", "web"]), "{g:#}");
    assert_eq!(g["preferred_owners"], json!([node1]), "{g:#}");
    assert_eq!(g["owner"], json!(node1), "{g:#}");
    assert_eq!(g["state"], json!("online"), "{g:#}");
    let (_, shown, _) = cli(&lab, &["group", "show", "web"]);
    println!("---- haven group show web\n{shown}----");
    let storage = c.group("available-storage").await.expect("storage group");
    assert!(storage.resources.is_empty(), "vol1 moved out of available-storage: {storage:?}");
    let config = c.resource("web-config").await.expect("web-config");
    assert_eq!(
        (config.spec.params.clone(), config.spec.depends_on.clone()),
        (json!({"path": "vol1/web/vm.toml"}), vec!["vol1".to_string()])
    );

    // The test guest ignores the ACPI power button: stop it after 2 s instead of 30 s.
    let params = VmParams {
        config: "web-config".into(),
        heartbeat_timeout: Dur::from_secs(5),
        shutdown_timeout: Dur::from_secs(2),
        boot_timeout: Dur::from_secs(120),
    };
    let update = ResourceUpdate { params: Some(serde_json::to_value(params).expect("params")), ..Default::default() };
    c.update_resource("web", &update).await.expect("shorter shutdown_timeout");

    // Move it to every other node and back, live (`haven group move`): the group is handed
    // off (the old owner stops the guest, then the new one starts it) and each time a new
    // guest boot heartbeats on the target.
    let mut last = boot1;
    for target in [1usize, 2, 0] {
        let to = lab.name(target).to_string();
        let (code, out, err) = cli(&lab, &["group", "move", "web", "--to", &to]);
        assert_eq!(code, Some(0), "{out}{err}");
        let (owner, boot) = lab
            .wait_for(&format!("VM web heartbeating from {to} as a new boot"), BOOT_LIMIT_S, async || {
                heartbeat(&lab, target).await.filter(|(o, b)| *o == to && *b != last)
            })
            .await;
        lab.note(&format!("guest boot {boot} heartbeats on {owner}"));
        last = boot;
    }
    // No start failed on the way (a start while the old QEMU still held the images would).
    let history = c.history(&HistoryQuery::group("web").limit(1000)).await.expect("history");
    let failed: Vec<_> = history.iter().filter(|e| e.kind == "resource-failed").collect();
    assert!(failed.is_empty(), "failures during the moves: {failed:#?}");
}

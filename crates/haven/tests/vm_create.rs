//! `haven vm create` and `haven vm import` against a real agent: the definition is written
//! on the group's volume (`<volume>/<name>/vm.toml`), its `vm-config` and `vm` resources are
//! created with their dependencies, and bad input (a missing image, a name in use) is
//! refused with the field named and nothing left behind. No VM is started here; booting
//! and failover are covered by `vm_failover.rs`.

mod common;

use common::Lab;
use haven_api::specs;
use haven_model::GroupSpec;
use serde_json::json;

fn cli(lab: &Lab, args: &[&str]) -> (Option<i32>, String, String) {
    let out = lab.cli(0).args(args).output().expect("run the haven CLI");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_create_and_import_write_the_definition_and_the_resources() {
    let lab = Lab::start(1).await;
    let volume = lab.dir().join("shared").join("vol1");
    std::fs::create_dir_all(&volume).expect("volume");
    std::fs::write(volume.join(".haven-volume"), "vol-1\n").expect("volume id");
    for f in ["data.img", "vmlinuz", "initrd.img"] {
        std::fs::write(volume.join(f), b"x").expect("volume file");
    }
    let c = lab.client(0).clone();
    c.create_group(&GroupSpec { online: false, ..GroupSpec::new("g") }).await.expect("group");
    c.create_resource(&specs::dir_disk("vol1", "g", "vol-1", "vol1", &volume.to_string_lossy()))
        .await
        .expect("disk resource");

    let (code, out, err) = cli(
        &lab,
        &[
            "vm",
            "create",
            "web",
            "--group",
            "g",
            "--volume",
            "vol1",
            "--vcpus",
            "2",
            "--memory-mib",
            "256",
            "--disk",
            "../data.img,format=raw",
            "--kernel",
            "../vmlinuz",
            "--initrd",
            "../initrd.img",
            "--cmdline",
            "console=ttyS0",
            "--heartbeat",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let text = std::fs::read_to_string(volume.join("web/vm.toml")).expect("the definition on the volume");
    assert!(
        text.contains("memory_mib = 256") && text.contains("vcpus = 2") && text.contains("heartbeat = true"),
        "{text}"
    );
    let config = c.resource("web-config").await.expect("web-config");
    assert_eq!(config.spec.params, json!({"path": "vol1/web/vm.toml"}));
    assert_eq!(config.spec.depends_on, ["vol1"]);
    let vm = c.resource("web").await.expect("web");
    assert_eq!(vm.spec.depends_on, ["web-config"]);
    assert_eq!(vm.spec.params["config"], json!("web-config"));

    // The same name again, and a definition naming an image that does not exist.
    let (code, _, err) =
        cli(&lab, &["vm", "create", "web", "--group", "g", "--volume", "vol1", "--disk", "../data.img"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("\"web\" already exists"), "{err}");
    let (code, _, err) =
        cli(&lab, &["vm", "create", "web2", "--group", "g", "--volume", "vol1", "--disk", "../nope.img"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("disks[0].path") && err.contains("nope.img does not exist"), "{err}");
    assert!(!volume.join("web2/vm.toml").exists(), "a refused VM left its definition behind");
    assert!(c.resource("web2").await.is_err(), "a refused VM left a resource behind");

    // Import from a QEMU command line.
    let abs = |f: &str| volume.join(f).to_string_lossy().into_owned();
    let drive = format!("file={},format=raw,if=virtio", abs("data.img"));
    let (code, out, err) = cli(
        &lab,
        &[
            "vm",
            "import",
            "web3",
            "--group",
            "g",
            "--volume",
            "vol1",
            "--",
            "qemu-system-x86_64",
            "-name",
            "old",
            "-m",
            "1G",
            "-smp",
            "cpus=2,sockets=1",
            "-drive",
            &drive,
            "-kernel",
            &abs("vmlinuz"),
            "-initrd",
            &abs("initrd.img"),
            "-append",
            "quiet",
            "-vga",
            "std",
            "-enable-kvm",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("not carried over: -name old -vga std"), "{err}");
    let text = std::fs::read_to_string(volume.join("web3/vm.toml")).expect("the imported definition");
    for want in ["memory_mib = 1024", "vcpus = 2", "accel = \"kvm\"", "cmdline = \"quiet\"", "data.img"] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    let vms = c.vms().await.expect("vms");
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web", "web3"]);
}

//! `haven vm`: list and show VMs, start and stop them (through their group), create one
//! from flags or import it from a QEMU command line, edit its definition, read its
//! console, send its guest a control line, and the HA wizard (`make-ha`, in
//! [`super::make_ha`]).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use haven_api::{Client, MakeHaRequest, VmCreate, VmView};
use haven_model::{Accel, VmBoot, VmDefinition, VmDisk, VmNic};
use serde::Serialize;

use super::{EXIT_REFUSED, Failure, print_done, usage, wire_value};
use crate::output::{self, Format};

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// List VMs: group, current owner, state, accelerator (kvm/tcg) and heartbeat age.
    List,
    /// Show one VM, with why it runs on its accelerator.
    Show { name: String },
    /// Start a VM: bring its group online (its disks and configuration first).
    Start { name: String },
    /// Stop a VM: take its group offline (the guest is asked to power off, then stopped).
    Stop { name: String },
    /// Print the end of the VM's serial console log, from the node that runs it.
    Console { name: String },
    /// Create a highly available VM in GROUP: write its definition to
    /// <volume>/<name>/vm.toml and create its vm-config and vm resources.
    Create {
        name: String,
        #[command(flatten)]
        place: VmPlace,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
        /// A disk image: PATH[,format=raw|qcow2][,if=virtio|ide]; relative paths are relative
        /// to <volume>/<name>/ (repeatable; the first is the boot disk without --kernel).
        #[arg(long = "disk")]
        disks: Vec<String>,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        cmdline: Option<String>,
        /// The guest writes a heartbeat line on its second serial port every second.
        #[arg(long)]
        heartbeat: bool,
        /// auto (kvm if it works, else tcg), kvm or tcg.
        #[arg(long, default_value = "auto")]
        accel: String,
    },
    /// Import an existing QEMU VM from its command line (after --): -m, -smp, -drive/-hda,
    /// -kernel/-initrd/-append, -accel/-enable-kvm, -nic/-netdev user|none; other options are
    /// listed as ignored.
    Import {
        name: String,
        #[command(flatten)]
        place: VmPlace,
        /// The guest writes a heartbeat line on its second serial port every second.
        #[arg(long)]
        heartbeat: bool,
        #[arg(last = true, required = true)]
        qemu: Vec<String>,
    },
    /// Send a line to the guest's control channel (the test guest: freeze, thaw, poweroff).
    Control { name: String, line: String },
    /// The High Availability wizard: make a VM defined on a node highly available.
    ///
    /// DEFINITION is a VM definition file (the format `haven vm create` writes: TOML, or
    /// JSON ending in .json) on node --node. The wizard runs seven storage checks there,
    /// then creates the VM's `vm-config` and `vm` resources in the group of the disk
    /// resources that hold its files, as one change, all or nothing:
    ///
    ///   1 vm-stopped      no process on the node has a disk image open or names it
    ///   2 shared-storage  definition, kernel, initrd and images are on disk resources'
    ///                     volumes, online on the node
    ///   3 shared-volume   VMs sharing a volume (or partitions of one disk) are in one
    ///                     group: a warning names the VMs that will always move together
    ///   4 backing-chain   every qcow2 backing file is on a volume of the group
    ///   5 cluster-path    paths use <state-dir>/volumes/<volume>/… (or are relative to the
    ///                     definition), not the dir backend's directory, a symlink, a bind
    ///                     mount or a /dev name other than /dev/disk/by-uuid/<uuid>
    ///   6 nested-volume   a volume mounted inside another is in the same group
    ///   7 pass-through    a whole block device given to the guest is a disk resource of
    ///                     the group
    ///
    /// Disk resources must exist first. Any failed check means nothing changed; the report
    /// is kept in the history (`haven history --resource <vm>`) either way. Exit status 1
    /// when a check failed.
    #[command(name = "make-ha", verbatim_doc_comment)]
    MakeHa {
        /// The VM definition file, absolute path on the node.
        definition: String,
        /// The node where the file is (default: the node this command talks to).
        #[arg(long)]
        node: Option<String>,
        /// The VM's name in the cluster (default: the definition's name).
        #[arg(long)]
        name: Option<String>,
        /// The group to put the VM in; created if missing, and the disk resources move into it
        /// when their group holds only disks (they must be offline to move).
        #[arg(long)]
        group: Option<String>,
        /// Run every check and print the plan; change nothing, record nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite node-local paths (check 5) to the cluster form, showing before → after.
        #[arg(long)]
        fix: bool,
    },
    /// Replace the VM's definition file with FILE (validated; refused while the VM runs;
    /// applies at its next start).
    Edit {
        name: String,
        /// The new definition (TOML, or JSON if the VM's file is .json).
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct VmPlace {
    /// The group the VM joins (it must exist and have a disk resource for --volume).
    #[arg(long)]
    pub group: String,
    /// The disk resource whose volume holds the definition.
    #[arg(long)]
    pub volume: String,
}

fn vm_rows(vms: &[VmView]) -> Vec<Vec<String>> {
    vms.iter()
        .map(|v| {
            let rt = v.runtime.as_ref();
            vec![
                v.name.clone(),
                v.group.clone(),
                output::opt(&v.owner),
                format!("{:?}", v.resource.status.state).to_lowercase(),
                rt.map(|r| format!("{:?}", r.accel).to_lowercase()).unwrap_or_else(|| "-".into()),
                rt.and_then(|r| r.last_heartbeat_age).map(|d| format!("{d} ago")).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

const VM_HEADER: [&str; 6] = ["NAME", "GROUP", "OWNER", "STATE", "ACCEL", "HEARTBEAT"];

async fn vm_create(c: &Client, fmt: Format, place: VmPlace, definition: VmDefinition) -> Result<(), Failure> {
    let v = c.create_vm(&VmCreate { group: place.group, volume: place.volume, definition }).await?;
    if fmt == Format::Json {
        output::json(&v);
    } else {
        println!(
            "VM {:?} created in group {:?} (resources {:?} and {:?}); start it with `haven vm start {}`",
            v.name,
            v.group,
            format!("{}-config", v.name),
            v.name,
            v.name
        );
    }
    Ok(())
}

/// `PATH[,format=raw|qcow2][,if=virtio|ide]` → a definition's disk.
fn parse_disk(text: &str) -> Result<VmDisk, Failure> {
    let mut parts = text.split(',');
    let path = parts.next().unwrap_or_default();
    let mut disk = VmDisk { path: path.to_string(), format: Default::default(), interface: Default::default() };
    for p in parts {
        match p.split_once('=') {
            Some(("format", f)) => {
                disk.format = wire_value(&format!("--disk {text:?}: format"), f, "use raw or qcow2")?
            }
            Some(("if", i)) | Some(("interface", i)) => {
                disk.interface = wire_value(&format!("--disk {text:?}: if"), i, "use virtio or ide")?
            }
            _ => return Err(usage(format!("--disk {text:?}: {p:?} is not format=… or if=…"))),
        }
    }
    Ok(disk)
}

/// A VM definition (named `name`) from a QEMU command line, and the options it does not
/// carry over.
fn definition_from_qemu(name: &str, argv: &[String]) -> Result<(VmDefinition, Vec<String>), Failure> {
    let mut def = VmDefinition {
        name: name.to_string(),
        vcpus: 1,
        memory_mib: 128,
        disks: Vec::new(),
        nics: Vec::new(),
        boot: VmBoot::default(),
        heartbeat: false,
        accel: Accel::Auto,
    };
    let mut ignored = Vec::new();
    // Skip the program name; then options, most with one value.
    let args: Vec<String> = argv.iter().skip_while(|a| !a.starts_with('-')).cloned().collect();
    let mut it = args.into_iter().peekable();
    fn value(it: &mut std::iter::Peekable<std::vec::IntoIter<String>>, opt: &str) -> Result<String, Failure> {
        it.next().ok_or_else(|| usage(format!("QEMU option {opt} needs a value")))
    }
    while let Some(opt) = it.next() {
        let opt = opt.as_str();
        match opt {
            "-m" => {
                let v = value(&mut it, opt)?;
                let v = v.trim_start_matches("size=").split(',').next().unwrap_or_default().to_string();
                let (num, mult) = match v.chars().last() {
                    Some('G' | 'g') => (&v[..v.len() - 1], 1024),
                    Some('M' | 'm') => (&v[..v.len() - 1], 1),
                    _ => (v.as_str(), 1),
                };
                let mib: u64 = num.parse().map_err(|_| usage(format!("-m {v:?} is not a memory size")))?;
                def.memory_mib =
                    mib.checked_mul(mult).ok_or_else(|| usage(format!("-m {v:?} is too large a memory size")))?;
            }
            "-smp" => {
                let v = value(&mut it, opt)?;
                let n = v.split(',').find_map(|p| p.strip_prefix("cpus=").or(p.parse::<u32>().ok().map(|_| p)));
                def.vcpus = n.and_then(|n| n.parse().ok()).ok_or_else(|| usage(format!("-smp {v:?}: no cpu count")))?;
            }
            "-drive" => {
                let v = value(&mut it, opt)?;
                let (mut path, mut format, mut interface) = (None, Default::default(), Default::default());
                for p in v.split(',') {
                    match p.split_once('=') {
                        Some(("file", f)) => path = Some(f.to_string()),
                        Some(("format", f)) => {
                            format = wire_value(&format!("-drive {v:?}: format"), f, "use raw or qcow2")?
                        }
                        Some(("if", i)) => {
                            interface = wire_value(&format!("-drive {v:?}: if"), i, "use virtio or ide")?
                        }
                        _ => ignored.push(format!("-drive …{p}")),
                    }
                }
                let Some(path) = path else {
                    return Err(Failure {
                        code: EXIT_REFUSED,
                        message: format!("-drive {v:?} has no file=; give the image, e.g. -drive file=disk.img"),
                    });
                };
                def.disks.push(VmDisk { path, format, interface });
            }
            "-hda" => def.disks.push(VmDisk {
                path: value(&mut it, opt)?,
                format: Default::default(),
                interface: haven_model::DiskInterface::Ide,
            }),
            "-kernel" => def.boot.kernel = Some(value(&mut it, opt)?),
            "-initrd" => def.boot.initrd = Some(value(&mut it, opt)?),
            "-append" => def.boot.cmdline = Some(value(&mut it, opt)?),
            "-enable-kvm" => def.accel = Accel::Kvm,
            "-accel" => {
                let v = value(&mut it, opt)?;
                def.accel = wire_value("-accel", v.split(',').next().unwrap_or("auto"), "use kvm or tcg")?;
            }
            "-nic" | "-netdev" => {
                let v = value(&mut it, opt)?;
                let mode = if v.starts_with("none") {
                    haven_model::NicMode::None
                } else if v.starts_with("user") {
                    haven_model::NicMode::User
                } else {
                    ignored.push(format!("{opt} {v}"));
                    continue;
                };
                def.nics.push(VmNic { mode, ..VmNic::default() });
            }
            other => {
                // Options with a value: keep them together in the "ignored" list.
                let takes_value = it.peek().is_some_and(|n| !n.starts_with('-'));
                let shown =
                    if takes_value { format!("{other} {}", it.next().unwrap_or_default()) } else { other.to_string() };
                ignored.push(shown);
            }
        }
    }
    if def.boot.kernel.is_none() && !def.disks.is_empty() {
        def.boot.disk = Some(0);
    }
    Ok((def, ignored))
}

/// A VM starts and stops with its group.
async fn vm_power(c: &Client, fmt: Format, name: &str, online: bool) -> Result<(), Failure> {
    let v = c.vm(name).await?;
    let g = c.set_group_online(&v.group, online).await?;
    if fmt == Format::Json {
        output::json(&g);
    } else {
        let action = if online { "online" } else { "offline" };
        println!("VM {name:?}: group {:?} is being brought {action} (`haven vm list` shows progress)", v.group);
    }
    Ok(())
}

/// `vm console -o json`. Its fields are in alphabetical order, the order they were always
/// printed in.
#[derive(Serialize)]
struct Console<'a> {
    console: &'a str,
    vm: &'a str,
}

pub(super) async fn run(c: &Client, fmt: Format, cmd: VmCmd) -> Result<(), Failure> {
    match cmd {
        VmCmd::List => {
            let vms = c.vms().await?;
            if fmt == Format::Json {
                output::json(&vms);
            } else {
                output::table(&VM_HEADER, vm_rows(&vms));
            }
        }
        VmCmd::Show { name } => {
            let v = c.vm(&name).await?;
            if fmt == Format::Json {
                output::json(&v);
            } else {
                output::table(&VM_HEADER, vm_rows(std::slice::from_ref(&v)));
                if let Some(rt) = &v.runtime {
                    println!("\nqemu pid {}; accelerator: {}", rt.pid, rt.reason_for_accel);
                }
                if let Some(r) = &v.resource.status.reason {
                    println!("last reason: {r}");
                }
            }
        }
        VmCmd::Start { name } => vm_power(c, fmt, &name, true).await?,
        VmCmd::Stop { name } => vm_power(c, fmt, &name, false).await?,
        VmCmd::Create { name, place, vcpus, memory_mib, disks, kernel, initrd, cmdline, heartbeat, accel } => {
            let disks = disks.iter().map(|d| parse_disk(d)).collect::<Result<Vec<_>, _>>()?;
            let boot_disk = if kernel.is_none() && !disks.is_empty() { Some(0) } else { None };
            let definition = VmDefinition {
                name,
                vcpus,
                memory_mib,
                disks,
                nics: Vec::new(),
                boot: VmBoot { kernel, initrd, cmdline, disk: boot_disk },
                heartbeat,
                accel: wire_value("--accel", &accel, "use auto, kvm or tcg")?,
            };
            vm_create(c, fmt, place, definition).await?;
        }
        VmCmd::Import { name, place, heartbeat, qemu } => {
            let (mut definition, ignored) = definition_from_qemu(&name, &qemu)?;
            definition.heartbeat = heartbeat;
            if !ignored.is_empty() {
                eprintln!("note: QEMU options not carried over: {}", ignored.join(" "));
            }
            vm_create(c, fmt, place, definition).await?;
        }
        VmCmd::Console { name } => {
            let text = c.vm_console(&name).await?;
            if fmt == Format::Json {
                output::json(&Console { console: &text, vm: &name });
            } else {
                print!("{text}");
            }
        }
        VmCmd::Edit { name, file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
            let edited = c.edit_vm_definition(&name, &text).await?;
            print_done(fmt, &edited, &format!("definition of {name:?} updated; it applies at the VM's next start"));
        }
        VmCmd::MakeHa { definition, node, name, group, dry_run, fix } => {
            let request = MakeHaRequest { path: definition, node, name, group, dry_run, fix };
            super::make_ha::run(c, fmt, request).await?;
        }
        VmCmd::Control { name, line } => {
            let sent = c.guest_control(&name, &line).await?;
            print_done(fmt, &sent, &format!("sent {line:?} to the guest of {name:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_qemu_command_line_becomes_a_definition() {
        let (def, ignored) = definition_from_qemu(
            "web",
            &argv("qemu-system-x86_64 -m 1G -smp cpus=2 -drive file=a.qcow2,format=qcow2,if=ide,cache=none -hda b.img -enable-kvm -nic user -vga std -display none"),
        )
        .unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!((def.name.as_str(), def.vcpus, def.memory_mib, def.accel), ("web", 2, 1024, Accel::Kvm));
        assert_eq!(def.disks.len(), 2);
        assert_eq!(def.disks[0].format, haven_model::ImageFormat::Qcow2);
        assert_eq!(def.disks[1].interface, haven_model::DiskInterface::Ide);
        assert_eq!(def.boot.disk, Some(0));
        assert_eq!(def.nics.len(), 1);
        assert_eq!(ignored, ["-drive …cache=none", "-vga std", "-display none"]);
        def.validate().expect("a valid definition");
        let Err(f) = definition_from_qemu("web", &argv("qemu -drive format=raw")) else { panic!("no file") };
        assert_eq!(f.code, EXIT_REFUSED);
        let Err(f) = parse_disk("a.img,format=vmdk") else { panic!("vmdk is not a format") };
        assert!(f.code == EXIT_REFUSED && f.message.contains("vmdk"), "{}", f.message);
    }
}

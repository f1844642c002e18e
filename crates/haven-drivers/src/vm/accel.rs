//! Which accelerator a VM runs with. `/dev/kvm` existing is not enough: on a host that is
//! itself a guest without working nested virtualisation, KVM guests hang. So the first
//! `auto` VM of the process runs a probe: QEMU with `-accel kvm` boots a 512-byte boot
//! sector that writes `K` to the first serial port; no `K` within `PROBE_TIMEOUT` means
//! TCG. The result, with the reason, is kept for the life of the process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use haven_model::Accel;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::OnceCell;
use tokio::time::{Instant, timeout, timeout_at};

use crate::sys;

/// The QEMU binary for x86-64 guests.
pub(crate) const QEMU: &str = "qemu-system-x86_64";
/// How long a KVM guest may take to print its `K`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The accelerator chosen for a VM, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// The probe's verdict, with what it saw (for the log and `vm.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kvm {
    Works(String),
    Unusable(String),
}

static KVM_PROBE: OnceCell<Kvm> = OnceCell::const_new();

/// A definition asks for an accelerator this node cannot give it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccelError {
    #[error(
        "the definition asks for accel = \"kvm\" but KVM does not work on this node: {why}; set accel = \
         \"auto\" (falls back to tcg) or \"tcg\", or fix KVM here"
    )]
    KvmUnusable { why: String },
}

/// The accelerator for a definition asking for `requested`; `Err` if it asks for KVM and
/// KVM does not work here. `scratch` is a directory for the probe's boot image.
pub(crate) async fn choose(requested: Accel, scratch: &Path) -> Result<AccelChoice, AccelError> {
    match requested {
        Accel::Tcg => Ok(AccelChoice { accel: Accel::Tcg, reason: "the definition asks for tcg".into() }),
        Accel::Kvm => match kvm_probe(scratch).await {
            Kvm::Works(why) => {
                Ok(AccelChoice { accel: Accel::Kvm, reason: format!("the definition asks for kvm; {why}") })
            }
            Kvm::Unusable(why) => Err(AccelError::KvmUnusable { why }),
        },
        Accel::Auto => Ok(match kvm_probe(scratch).await {
            Kvm::Works(why) => AccelChoice { accel: Accel::Kvm, reason: why },
            Kvm::Unusable(why) => AccelChoice { accel: Accel::Tcg, reason: format!("KVM unusable, using tcg: {why}") },
        }),
    }
}

async fn kvm_probe(scratch: &Path) -> Kvm {
    KVM_PROBE.get_or_init(|| run_probe(scratch.to_path_buf())).await.clone()
}

/// `mov dx,0x3f8; mov al,'K'; out dx,al; cli; hlt; jmp hlt`, padded to a boot sector.
fn boot_sector() -> Vec<u8> {
    let code = [0xBA, 0xF8, 0x03, 0xB0, b'K', 0xEE, 0xFA, 0xF4, 0xEB, 0xFD];
    let mut img = vec![0u8; 512];
    img[..code.len()].copy_from_slice(&code);
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

async fn run_probe(scratch: std::path::PathBuf) -> Kvm {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Kvm::Unusable(format!("cannot open /dev/kvm ({e})"));
    }
    let image = scratch.join("kvm-probe.img");
    if let Err(e) = std::fs::write(&image, boot_sector()) {
        return Kvm::Unusable(format!("cannot write the probe image {}: {e}", image.display()));
    }
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "kvm", "-m", "16", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", super::escape(&image.to_string_lossy())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    sys::die_with_agent(&mut cmd);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&image);
            return Kvm::Unusable(format!("cannot run {QEMU} for the KVM probe ({e})"));
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let deadline = started + PROBE_TIMEOUT;
    let mut seen = Vec::new();
    let mut got_k = false;
    if let Some(out) = stdout.as_mut() {
        let mut buf = [0u8; 256];
        while let Ok(Ok(n)) = timeout_at(deadline, out.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.contains(&b'K') {
                got_k = true;
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = child.start_kill();
    let _ = timeout(Duration::from_secs(2), child.wait()).await;
    let mut said = String::new();
    if let Some(err) = stderr.as_mut() {
        let mut bytes = Vec::new();
        let _ = timeout(Duration::from_millis(500), err.read_to_end(&mut bytes)).await;
        said = String::from_utf8_lossy(&bytes).lines().next().unwrap_or("").trim().to_string();
    }
    let _ = std::fs::remove_file(&image);
    let said = if said.is_empty() { String::new() } else { format!("; qemu said: {said}") };
    if got_k {
        Kvm::Works(format!("KVM probe: a KVM guest ran within {} ms", elapsed.as_millis()))
    } else {
        Kvm::Unusable(format!(
            "KVM probe: a KVM guest printed nothing within {PROBE_TIMEOUT:?} (KVM guests hang on this host, e.g. \
             nested virtualisation without support){said}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_bootable() {
        let img = boot_sector();
        assert_eq!(img.len(), 512);
        assert_eq!(&img[510..], &[0x55, 0xAA]);
        assert_eq!(img[4], b'K');
    }
}

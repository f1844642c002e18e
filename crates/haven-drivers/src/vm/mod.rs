//! The `vm` driver: a QEMU guest defined by a registered `vm-config` (see `vm_config`).
//!
//! QEMU runs through the `process` driver (own process group, `PR_SET_PDEATHSIG`, pid file
//! with start time for adoption by a later agent), with everything it needs in the run
//! directory: QMP at `qmp.sock`, the console (ttyS0) appended to `console.log`, QEMU's own
//! output in `output.log`, and, for definitions with `heartbeat = true`, the guest channel
//! (ttyS1) at `heartbeat.sock`. `vm.json` records how this run was started (accelerator
//! and why, the command line), `heartbeat` the last heartbeat seen.
//!
//! Start returns once QMP reports the VM `running`. Stop presses the ACPI power button,
//! waits up to `shutdown_timeout`, then has QEMU `quit`, then kills it. The cheap check
//! asks QMP for the run state (the process being alive is enough when QMP is busy); the
//! thorough check also wants a guest heartbeat younger than `heartbeat_timeout`, after a
//! boot allowance of `boot_timeout`.

mod accel;
mod heartbeat;
mod qmp;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::time::instant_after;
use async_trait::async_trait;
use haven_model::{
    Accel, DiskInterface, Dur, ImageFormat, InvalidInput, NicMode, NicModel, ResourceKind, ResourceSpec, VmDefinition,
    VmParams, VmStatus,
};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};

use crate::process::output_since;
use crate::vm_config::find_registration;
use crate::{Depth, DriverError, Health, ProcessDriver, ResourceCtx, ResourceDriver, pidfile, procfs};

use heartbeat::Watcher;

/// Longest one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest start waits for QMP to report `running` (less if `pending_timeout` is shorter).
const MAX_START_WAIT: Duration = Duration::from_secs(60);
/// How long stop waits for QEMU to exit after `quit`.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long guest control waits for the channel to connect.
const CONTROL_WAIT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for QEMU.
const POLL: Duration = Duration::from_millis(100);
/// `sun_path` holds 108 bytes including the final NUL.
const MAX_SOCKET_PATH: usize = 107;

const RUNTIME_FILE: &str = "vm.json";
const QMP_SOCKET: &str = "qmp.sock";
const HEARTBEAT_SOCKET: &str = "heartbeat.sock";
const HEARTBEAT_FILE: &str = "heartbeat";
const CONSOLE_LOG: &str = "console.log";

/// How the current run of a VM was started, in `<run>/vm.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Runtime {
    vm: String,
    accel: Accel,
    reason_for_accel: String,
    heartbeat: bool,
    argv: Vec<String>,
    started_at_ms: u64,
}

fn read_runtime(run_dir: &Path) -> Option<Runtime> {
    let text = fs::read_to_string(run_dir.join(RUNTIME_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_runtime(run_dir: &Path, rt: &Runtime) -> io::Result<()> {
    let tmp = run_dir.join("vm.json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(rt).map_err(io::Error::other)?)?;
    fs::rename(&tmp, run_dir.join(RUNTIME_FILE))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Doubles commas, QEMU's escape inside option strings.
pub(crate) fn escape(text: &str) -> String {
    text.replace(',', ",,")
}

/// QEMU's command line for `def`.
fn qemu_argv(def: &VmDefinition, run_dir: &Path, accel: Accel) -> Vec<String> {
    let path = |name: &str| escape(&run_dir.join(name).to_string_lossy());
    let mut a: Vec<String> = [accel::QEMU, "-name", &def.name, "-accel", accel.as_str()].map(String::from).to_vec();
    a.extend(["-m".into(), def.memory_mib.to_string(), "-smp".into(), def.vcpus.to_string()]);
    a.extend(["-nodefaults", "-no-user-config", "-display", "none"].map(String::from));
    a.extend([
        "-chardev".into(),
        format!("file,id=console,path={},append=on", path(CONSOLE_LOG)),
        "-serial".into(),
        "chardev:console".into(),
    ]);
    if def.heartbeat {
        a.extend([
            "-chardev".into(),
            format!("socket,id=heartbeat,path={},server=on,wait=off", path(HEARTBEAT_SOCKET)),
            "-serial".into(),
            "chardev:heartbeat".into(),
        ]);
    }
    a.extend([
        "-chardev".into(),
        format!("socket,id=qmp,path={},server=on,wait=off", path(QMP_SOCKET)),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
    ]);
    for (i, d) in def.disks.iter().enumerate() {
        let format = match d.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        };
        let device = match d.interface {
            DiskInterface::Virtio => "virtio-blk-pci",
            DiskInterface::Ide => "ide-hd",
        };
        let boot = if def.boot.disk == Some(i) { ",bootindex=0" } else { "" };
        a.extend([
            "-drive".into(),
            format!("file={},format={format},if=none,id=disk{i}", escape(&d.path)),
            "-device".into(),
            format!("{device},drive=disk{i}{boot}"),
        ]);
    }
    for (i, n) in def.nics.iter().enumerate() {
        let model = match n.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
        };
        let mac = n.mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default();
        match n.mode {
            NicMode::User => {
                a.extend([
                    "-netdev".into(),
                    format!("user,id=net{i}"),
                    "-device".into(),
                    format!("{model},netdev=net{i}{mac}"),
                ]);
            }
            NicMode::None => a.extend(["-device".into(), format!("{model}{mac}")]),
        }
    }
    if let Some(kernel) = &def.boot.kernel {
        a.extend(["-kernel".into(), kernel.clone()]);
        if let Some(initrd) = &def.boot.initrd {
            a.extend(["-initrd".into(), initrd.clone()]);
        }
        if let Some(cmdline) = &def.boot.cmdline {
            a.extend(["-append".into(), cmdline.clone()]);
        }
    }
    a
}

/// What an operator reads for a QMP run state other than `running`.
fn describe_run_state(status: &str) -> String {
    let what = match status {
        "paused" => "is paused (someone ran `stop` on its monitor); resume it with QMP `cont` or restart the resource",
        "shutdown" => "has shut down (the guest powered itself off)",
        "guest-panicked" => "has panicked (kernel panic in the guest); see its console.log",
        "internal-error" => "hit an internal error in QEMU; see its output.log",
        "io-error" => "is paused on a disk I/O error; check its disk images and their volume",
        "watchdog" => "was stopped by its watchdog",
        _ => "is not running",
    };
    format!("the VM {what} (QMP status {status:?})")
}

/// The status of the VM of `ctx` on this node, from its run directory (works from any
/// process); `None` if it is not running here.
pub fn vm_status(ctx: &ResourceCtx) -> Option<VmStatus> {
    let record = pidfile::read(&ctx.run_dir).ok()??;
    let st = procfs::stat(record.pid).ok()??;
    if st.start_time != record.start_time || st.is_dead() {
        return None;
    }
    let rt = read_runtime(&ctx.run_dir)?;
    let beat = heartbeat::read_file(&ctx.run_dir.join(HEARTBEAT_FILE)).filter(|(at, _, _)| *at >= rt.started_at_ms);
    Some(VmStatus {
        accel: rt.accel,
        reason_for_accel: rt.reason_for_accel,
        pid: record.pid,
        last_heartbeat_age: beat.as_ref().map(|(at, _, _)| Dur::from_millis(now_ms().saturating_sub(*at))),
        last_heartbeat_seq: beat.as_ref().map(|(_, seq, _)| *seq),
        guest_boot_id: beat.map(|(_, _, id)| id),
    })
}

/// The driver for `vm` resources. Keep one instance for the agent's lifetime: it holds the
/// QEMU child handles (through its process driver) and the heartbeat watchers.
#[derive(Default)]
pub struct VmDriver {
    process: ProcessDriver,
    watchers: Mutex<HashMap<PathBuf, Watcher>>,
}

impl VmDriver {
    /// Runs the KVM probe now (once per process) so that the first VM start does not wait
    /// for it (up to 3 s where KVM hangs), and returns the verdict for the log: which
    /// accelerator `accel = "auto"` VMs will get here, and why.
    pub async fn probe_accelerator(&self, scratch: &std::path::Path) -> String {
        match accel::choose(haven_model::Accel::Auto, scratch).await {
            Ok(c) => format!("{}: {}", c.accel.as_str(), c.reason),
            Err(e) => e.to_string(),
        }
    }

    fn params(spec: &ResourceSpec) -> Result<VmParams, DriverError> {
        let invalid = |source| DriverError::InvalidParams { resource: spec.name.clone(), source };
        let params = spec.vm_params().map_err(invalid)?;
        params.validate().map_err(invalid)?;
        Ok(params)
    }

    fn err(ctx: &ResourceCtx, message: impl Into<String>) -> DriverError {
        DriverError::Vm { resource: ctx.spec.name.clone(), message: message.into() }
    }

    fn watchers(&self) -> MutexGuard<'_, HashMap<PathBuf, Watcher>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a heartbeat watcher for `ctx` unless one runs; `fresh` replaces it.
    fn watch(&self, ctx: &ResourceCtx, fresh: bool) {
        let mut w = self.watchers();
        if fresh || !w.contains_key(&ctx.run_dir) {
            let watcher = Watcher::spawn(ctx.run_dir.join(HEARTBEAT_SOCKET), ctx.run_dir.join(HEARTBEAT_FILE));
            w.insert(ctx.run_dir.clone(), watcher);
        }
    }

    fn unwatch(&self, ctx: &ResourceCtx) {
        self.watchers().remove(&ctx.run_dir);
    }

    /// The context the process driver runs QEMU under: same name and run directory.
    fn process_ctx(ctx: &ResourceCtx, argv: &[String]) -> ResourceCtx {
        let argv = if argv.is_empty() { vec![accel::QEMU.to_string()] } else { argv.to_vec() };
        let spec = ResourceSpec {
            name: ctx.spec.name.clone(),
            group: ctx.spec.group.clone(),
            kind: ResourceKind::Process,
            // QEMU runs as the agent's user: as root when the agent is (it opens /dev/kvm,
            // the volumes and the sockets the agent made), not as the default `nobody`.
            params: if crate::sys::effective_uid() == 0 {
                serde_json::json!({ "argv": argv, "user": "root" })
            } else {
                serde_json::json!({ "argv": argv })
            },
            props: ctx.spec.props.clone(),
            depends_on: vec![],
        };
        let mut pctx = ResourceCtx::new(ctx.node.clone(), spec, &ctx.state_dir).with_generation(ctx.generation);
        pctx.run_dir = ctx.run_dir.clone();
        pctx
    }

    fn current_process_ctx(ctx: &ResourceCtx) -> (Option<Runtime>, ResourceCtx) {
        let rt = read_runtime(&ctx.run_dir);
        let pctx = Self::process_ctx(ctx, rt.as_ref().map(|r| r.argv.as_slice()).unwrap_or(&[]));
        (rt, pctx)
    }

    /// Waits up to `within` for QEMU to exit; true if it did.
    async fn wait_exit(&self, pctx: &ResourceCtx, within: Duration) -> Result<bool, DriverError> {
        let deadline = instant_after(Instant::now(), within);
        loop {
            if self.process.monitor(pctx, Depth::Cheap).await? != Health::Running {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            sleep(POLL.min(deadline - now)).await;
        }
    }

    fn remove_sockets(ctx: &ResourceCtx) {
        for name in [QMP_SOCKET, HEARTBEAT_SOCKET] {
            let _ = fs::remove_file(ctx.run_dir.join(name));
        }
    }

    /// Stops the VM; `grace` (for `stop_within`) replaces the power-off wait and skips `quit`.
    async fn stop_with(&self, ctx: &ResourceCtx, grace: Option<Duration>) -> Result<(), DriverError> {
        let shutdown = Self::params(&ctx.spec).map(|p| p.shutdown_timeout.0).unwrap_or(Duration::from_secs(30));
        let (_, pctx) = Self::current_process_ctx(ctx);
        let qmp_sock = ctx.run_dir.join(QMP_SOCKET);
        if self.process.monitor(&pctx, Depth::Cheap).await? == Health::Running {
            let wait = grace.unwrap_or(shutdown);
            let mut gone = false;
            if !wait.is_zero() {
                if let Err(e) = qmp::run_once(&qmp_sock, "system_powerdown", None, QMP_TIMEOUT).await {
                    tracing::warn!(resource = %ctx.spec.name, "cannot press the power button: {e}");
                }
                gone = self.wait_exit(&pctx, wait).await?;
            }
            if !gone && grace.is_none() {
                tracing::info!(resource = %ctx.spec.name, "the guest did not power off within {}; telling QEMU to quit", Dur(wait));
                if let Err(e) = qmp::run_once(&qmp_sock, "quit", None, QMP_TIMEOUT).await {
                    tracing::warn!(resource = %ctx.spec.name, "QMP quit failed: {e}; killing QEMU");
                }
                gone = self.wait_exit(&pctx, QUIT_WAIT).await?;
            }
            if !gone {
                tracing::warn!(resource = %ctx.spec.name, "QEMU still running; killing it");
            }
        }
        // Kills whatever is left (at once) and removes the pid file.
        self.process.stop_within(&pctx, Duration::ZERO).await?;
        self.unwatch(ctx);
        Self::remove_sockets(ctx);
        Ok(())
    }

    /// Sends one control line to the guest over its heartbeat channel (the test guest
    /// understands `freeze`, `thaw` and `poweroff`).
    pub async fn send_guest_control(&self, ctx: &ResourceCtx, line: &str) -> Result<(), DriverError> {
        if line.contains(['\n', '\r']) {
            return Err(Self::err(ctx, format!("guest control {line:?} must be a single line")));
        }
        let (rt, pctx) = Self::current_process_ctx(ctx);
        if self.process.monitor(&pctx, Depth::Cheap).await? != Health::Running {
            return Err(Self::err(ctx, "the VM is not running on this node"));
        }
        if !rt.is_some_and(|r| r.heartbeat) {
            return Err(Self::err(
                ctx,
                "the VM has no guest channel; set heartbeat = true in its definition and restart it",
            ));
        }
        self.watch(ctx, false);
        let send = {
            let w = self.watchers();
            let Some(watcher) = w.get(&ctx.run_dir) else {
                return Err(Self::err(ctx, "no guest channel watcher"));
            };
            // Sending needs the lock on the writer only; the map lock is released below.
            let writer = watcher.sender();
            drop(w);
            writer
        };
        send.send(line, CONTROL_WAIT)
            .await
            .map_err(|e| Self::err(ctx, format!("cannot send {line:?} to the guest: {e}")))
    }
}

#[async_trait]
impl ResourceDriver for VmDriver {
    async fn start(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        let params = Self::params(&ctx.spec)?;
        fs::create_dir_all(&ctx.run_dir).map_err(|source| DriverError::RunDir {
            resource: ctx.spec.name.clone(),
            path: ctx.run_dir.clone(),
            source,
        })?;
        let (rt, pctx) = Self::current_process_ctx(ctx);
        match self.process.monitor(&pctx, Depth::Cheap).await? {
            Health::Running => {
                if rt.is_some_and(|r| r.heartbeat) {
                    self.watch(ctx, false);
                }
                return Ok(());
            }
            Health::Stopped => {}
            // Clear what is left of an earlier run.
            Health::Failed(_) => self.process.stop_within(&pctx, Duration::ZERO).await?,
        }
        let reg = find_registration(&ctx.state_dir, &params.config)
            .map_err(|e| Self::err(ctx, format!("cannot read the VM registrations: {e}")))?
            .ok_or_else(|| {
                Self::err(
                    ctx,
                    format!(
                        "its vm-config resource {:?} is not online on node {:?}; start it first (make this vm \
                         resource depend on it)",
                        params.config, ctx.node
                    ),
                )
            })?;
        let def = reg.definition;
        Self::remove_sockets(ctx);
        let _ = fs::remove_file(ctx.run_dir.join(HEARTBEAT_FILE));
        for name in [QMP_SOCKET, HEARTBEAT_SOCKET] {
            let p = ctx.run_dir.join(name);
            let len = p.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(Self::err(
                    ctx,
                    format!(
                        "socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} a unix socket allows; use a \
                         shorter state_dir for the agent",
                        p.display()
                    ),
                ));
            }
        }
        let choice = accel::choose(def.accel, &ctx.run_dir).await.map_err(|e| Self::err(ctx, e.to_string()))?;
        let argv = qemu_argv(&def, &ctx.run_dir, choice.accel);
        let rt = Runtime {
            vm: def.name.clone(),
            accel: choice.accel,
            reason_for_accel: choice.reason.clone(),
            heartbeat: def.heartbeat,
            argv: argv.clone(),
            started_at_ms: now_ms(),
        };
        write_runtime(&ctx.run_dir, &rt).map_err(|source| DriverError::RunDir {
            resource: ctx.spec.name.clone(),
            path: ctx.run_dir.join(RUNTIME_FILE),
            source,
        })?;
        let pctx = Self::process_ctx(ctx, &argv);
        let started = Instant::now();
        self.process.start(&pctx).await?;
        if def.heartbeat {
            self.watch(ctx, true);
        }
        let wait = ctx.spec.props.pending_timeout.0.min(MAX_START_WAIT);
        let deadline = instant_after(started, wait);
        let qmp_sock = ctx.run_dir.join(QMP_SOCKET);
        let output = ctx.run_dir.join("output.log");
        loop {
            let ended = match self.process.monitor(&pctx, Depth::Cheap).await? {
                Health::Running => None,
                Health::Failed(reason) => Some(reason),
                Health::Stopped => Some("it was stopped".to_string()),
            };
            if let Some(reason) = ended {
                let _ = self.process.stop_within(&pctx, Duration::ZERO).await;
                self.unwatch(ctx);
                return Err(Self::err(
                    ctx,
                    format!("QEMU ended while the VM was starting: {reason}; {}", output_since(&output, 0)),
                ));
            }
            let last = match qmp::run_once(&qmp_sock, "query-status", None, QMP_TIMEOUT).await {
                Ok(v) if v.get("status").and_then(|s| s.as_str()) == Some("running") => break,
                Ok(v) => format!("QMP status {}", v.get("status").cloned().unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            let now = Instant::now();
            if now >= deadline {
                let _ = self.process.stop_within(&pctx, Duration::ZERO).await;
                self.unwatch(ctx);
                return Err(Self::err(
                    ctx,
                    format!(
                        "QEMU did not report the VM running within {} (last: {last}), so it was stopped; raise \
                         props.pending_timeout if the node is slow; {}",
                        Dur(wait),
                        output_since(&output, 0)
                    ),
                ));
            }
            sleep(POLL.min(deadline - now)).await;
        }
        tracing::info!(resource = %ctx.spec.name, vm = %def.name, accel = choice.accel.as_str(), "VM running ({})", choice.reason);
        Ok(())
    }

    async fn stop(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        self.stop_with(ctx, None).await
    }

    async fn stop_within(&self, ctx: &ResourceCtx, grace: Duration) -> Result<(), DriverError> {
        self.stop_with(ctx, Some(grace)).await
    }

    async fn monitor(&self, ctx: &ResourceCtx, depth: Depth) -> Result<Health, DriverError> {
        let (rt, pctx) = Self::current_process_ctx(ctx);
        let vm = rt.as_ref().map_or_else(|| ctx.spec.name.clone(), |r| r.vm.clone());
        match self.process.monitor(&pctx, Depth::Cheap).await? {
            Health::Stopped => {
                self.unwatch(ctx);
                return Ok(Health::Stopped);
            }
            Health::Failed(reason) => return Ok(Health::Failed(format!("QEMU of VM {vm:?}: {reason}"))),
            Health::Running => {}
        }
        match qmp::run_once(&ctx.run_dir.join(QMP_SOCKET), "query-status", None, QMP_TIMEOUT).await {
            Ok(v) => match v.get("status").and_then(|s| s.as_str()) {
                Some("running") => {}
                Some(other) => return Ok(Health::Failed(describe_run_state(other))),
                None => return Ok(Health::Failed(format!("QMP query-status said {v}, which has no status"))),
            },
            // QEMU serves one QMP client at a time, and a hung main loop is the thorough
            // check's job (the guest heartbeat): a live process counts as running.
            Err(e) => tracing::debug!(resource = %ctx.spec.name, "QMP not answering ({e}); QEMU is alive"),
        }
        if depth == Depth::Cheap || !rt.as_ref().is_some_and(|r| r.heartbeat) {
            return Ok(Health::Running);
        }
        let params = Self::params(&ctx.spec)?;
        self.watch(ctx, false);
        let (since, last) = {
            let w = self.watchers();
            match w.get(&ctx.run_dir) {
                Some(watcher) => (watcher.since(), watcher.last()),
                None => return Ok(Health::Running),
            }
        };
        Ok(match last {
            Some(beat) if beat.at.elapsed() > params.heartbeat_timeout.0 => Health::Failed(format!(
                "the guest of VM {vm:?} sent no heartbeat for {} (last: seq {} of boot {}), more than \
                 heartbeat_timeout {}: the guest or its workload is hung",
                Dur::from_millis(u64::try_from(beat.at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                beat.seq,
                beat.boot_id,
                params.heartbeat_timeout
            )),
            Some(_) => Health::Running,
            None if since.elapsed() > params.boot_timeout.0 => Health::Failed(format!(
                "the guest of VM {vm:?} sent no heartbeat within boot_timeout {} after start; check its console.log \
                 and that it writes heartbeats on ttyS1",
                params.boot_timeout
            )),
            None => Health::Running,
        })
    }

    fn validate(&self, spec: &ResourceSpec) -> Result<(), InvalidInput> {
        if spec.kind != ResourceKind::Vm {
            return Err(InvalidInput::new("type", format!("{:?} is not a vm resource", spec.kind.as_str())));
        }
        spec.vm_params()?.validate()
    }
}

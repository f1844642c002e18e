//! The `process` driver: runs a long-running command (`ProcessParams`) in its own process
//! group, records it in `<run_dir>/pid` as pid + start time, appends its output to
//! `<run_dir>/output.log`, and monitors it through its child handle (if this agent started
//! it) or through `/proc` (if an earlier run of the agent did).
//!
//! It only acts on what it recorded: a pid file naming a live process with another start
//! time is a reused pid and is never signalled. It does not follow processes that leave
//! their process group (`setsid`, double-forking daemons): run programs in the foreground.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::time::instant_after;
use async_trait::async_trait;
use haven_model::{Dur, InvalidInput, ProcessParams, ResourceKind, ResourceSpec};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::pidfile::{self, PidRecord};
use crate::{Depth, DriverError, Health, ResourceCtx, ResourceDriver, check, procfs, sys};

/// A program that cannot run (bad arguments, missing library, port in use) usually dies
/// within this long; without a health check, start waits this long and reports such an
/// exit as a failure instead of a successful start.
const EARLY_EXIT_WINDOW: Duration = Duration::from_millis(200);
/// With a health check, start waits only this long before the first check: the check loop
/// notices an exit as well, and a service that is up is reported up at once (every
/// failover waits for this report).
const EARLY_EXIT_WINDOW_CHECKED: Duration = Duration::from_millis(10);
/// How often start re-runs the health check while waiting for the process to come up: the
/// first wait is `CHECK_POLL_FIRST`, doubled after each failed check up to `CHECK_POLL`.
const CHECK_POLL_FIRST: Duration = Duration::from_millis(10);
const CHECK_POLL: Duration = Duration::from_millis(200);
/// Said of a process that exited 0 during its start.
const DAEMON_HINT: &str = "; a process resource must keep running: if the program daemonizes, run it in the \
                           foreground (often an option like --foreground or -f)";
/// How often stop looks whether the processes are gone.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Longest stop waits after SIGTERM before SIGKILL (less if `pending_timeout` is shorter).
const MAX_TERM_GRACE: Duration = Duration::from_secs(10);
/// Longest stop waits after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Lines of `output.log` quoted in a start failure.
const OUTPUT_TAIL_LINES: usize = 15;

/// The driver for `process` resources. Keep one instance for the agent's lifetime: it
/// holds the child handles of the processes it started so they are reaped.
///
/// Operations on one resource are expected to be serialised by the caller (the agent runs
/// one action at a time per resource); `monitor` may run alongside anything.
#[derive(Default)]
pub struct ProcessDriver {
    /// Processes this instance started, by run directory.
    spawned: Mutex<HashMap<PathBuf, Spawned>>,
}

struct Spawned {
    record: PidRecord,
    child: Child,
    exit: Option<ExitStatus>,
}

/// What the pid file and the kernel say about a resource's process.
enum Found {
    /// No pid file: the resource is not running here.
    Nothing,
    Running {
        record: PidRecord,
        pgrp: i32,
    },
    /// The recorded process has ended; its group may still hold processes it started.
    Exited {
        record: PidRecord,
        reason: String,
    },
    /// The recorded pid now belongs to another process: not ours, never signalled.
    Reused {
        reason: String,
    },
    /// The pid file cannot be parsed.
    Unreadable {
        reason: String,
    },
}

/// How to launch the resource's program and its check command.
struct Launch {
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    /// uid and gid to switch to, if different from the agent's.
    ids: Option<(u32, u32)>,
}

impl Launch {
    fn command(&self, argv: &[String]) -> Command {
        let (program, args) = argv.split_first().map(|(p, a)| (p.as_str(), a)).unwrap_or(("", &[]));
        let mut cmd = Command::new(program);
        cmd.args(args).envs(&self.env).current_dir(&self.cwd);
        if let Some((uid, gid)) = self.ids {
            // std drops the supplementary groups when it switches uid as root.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl ProcessDriver {
    fn spawned(&self) -> MutexGuard<'_, HashMap<PathBuf, Spawned>> {
        // A panic while holding the lock leaves the map itself consistent.
        self.spawned.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn params(spec: &ResourceSpec) -> Result<ProcessParams, DriverError> {
        let invalid = |source| DriverError::InvalidParams { resource: spec.name.clone(), source };
        let params = spec.process_params().map_err(invalid)?;
        params.validate().map_err(invalid)?;
        validate_cwd(&params).map_err(invalid)?;
        Ok(params)
    }

    /// If this instance started `record`, whether it has exited (reaping it if so).
    /// `None` if it was not started by this instance.
    fn poll_child(&self, run_dir: &Path, record: PidRecord) -> Option<Option<ExitStatus>> {
        let mut spawned = self.spawned();
        let s = spawned.get_mut(run_dir).filter(|s| s.record == record)?;
        if s.exit.is_none() {
            match s.child.try_wait() {
                Ok(status) => s.exit = status,
                Err(_) => return None, // fall back to /proc
            }
        }
        Some(s.exit)
    }

    fn inspect(&self, ctx: &ResourceCtx) -> Result<Found, DriverError> {
        let resource = &ctx.spec.name;
        let record = match pidfile::read(&ctx.run_dir) {
            Ok(Some(r)) => r,
            Ok(None) => match self.spawned().get(&ctx.run_dir) {
                // The pid file was removed behind our back; we still know what we started.
                Some(s) => s.record,
                None => return Ok(Found::Nothing),
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(Found::Unreadable {
                    reason: format!(
                        "pid file {} is corrupt ({e}), so the agent cannot tell whether the process \
                         runs; stop the resource and look for a leftover process",
                        pidfile::path(&ctx.run_dir).display()
                    ),
                });
            }
            Err(source) => {
                return Err(DriverError::PidFile {
                    resource: resource.clone(),
                    action: "read",
                    path: pidfile::path(&ctx.run_dir),
                    source,
                });
            }
        };
        let pid = record.pid;
        let log = ctx.run_dir.join("output.log");
        // Started by this instance: the child handle knows (and reaps) it. If it is still
        // running, /proc below tells which group it is in now.
        if let Some(Some(status)) = self.poll_child(&ctx.run_dir, record) {
            let reason = format!("process {pid} {}; its output is in {}", describe_exit(status), log.display());
            return Ok(Found::Exited { record, reason });
        }
        let stat = procfs::stat(pid).map_err(|source| DriverError::Proc { resource: resource.clone(), pid, source })?;
        Ok(match stat {
            None => Found::Exited {
                record,
                reason: format!(
                    "process {pid} is gone; its exit status is unknown because an earlier run of \
                     the agent started it; its output is in {}",
                    log.display()
                ),
            },
            Some(st) if st.start_time != record.start_time => Found::Reused {
                reason: format!(
                    "process {pid} is gone; pid {pid} now belongs to another program ({:?}), which \
                     Haven leaves alone; its output is in {}",
                    st.comm,
                    log.display()
                ),
            },
            // Ours, but the kernel has not released it yet (a multi-threaded process whose
            // other threads are still being torn down), or it died after we asked.
            Some(st) if st.is_dead() && self.poll_child(&ctx.run_dir, record).is_some() => {
                let what = match self.poll_child(&ctx.run_dir, record).flatten() {
                    Some(status) => describe_exit(status),
                    None => "is exiting (its exit status is not known yet)".to_string(),
                };
                Found::Exited { record, reason: format!("process {pid} {what}; its output is in {}", log.display()) }
            }
            Some(st) if st.is_dead() => Found::Exited {
                record,
                reason: format!(
                    "process {pid} has exited; its exit status is unknown because an earlier run of \
                     the agent started it; its output is in {}",
                    log.display()
                ),
            },
            Some(st) => Found::Running { record, pgrp: st.pgrp },
        })
    }

    fn prepare(ctx: &ResourceCtx, params: &ProcessParams) -> Result<Launch, DriverError> {
        let resource = &ctx.spec.name;
        let mut env = BTreeMap::new();
        let run_as = run_as(params.user.as_deref()).map_err(|e| match e {
            RunAsError::Lookup { user, source } => DriverError::UserLookup { resource: resource.clone(), user, source },
            RunAsError::Unknown { user } => {
                DriverError::UnknownUser { resource: resource.clone(), node: ctx.node.clone(), user }
            }
            RunAsError::NotRoot { user, agent_uid } => {
                DriverError::NotRoot { resource: resource.clone(), user, agent_uid }
            }
        })?;
        let user = run_as.as_ref().map(|r| r.user.clone());
        let ids = run_as.as_ref().and_then(|r| r.ids);
        if let Some(r) = run_as {
            env.extend(r.env());
        }
        env.extend(params.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        // How the node guard knows a resource process (crate::guard); set last, so that
        // params.env cannot unset it.
        env.insert(crate::guard::RESOURCE_ENV.to_string(), resource.clone());
        let cwd = params.cwd.as_ref().map_or_else(|| ctx.run_dir.clone(), PathBuf::from);
        if let Some((uid, gid)) = ids
            && params.cwd.is_none()
        {
            // The run directory is the process's working directory: its user may write there,
            // and must be able to reach it.
            std::os::unix::fs::chown(&ctx.run_dir, Some(uid), Some(gid)).map_err(|source| DriverError::RunDir {
                resource: resource.clone(),
                path: ctx.run_dir.clone(),
                source,
            })?;
            if let Some((dir, mode)) = closed_ancestor(&ctx.run_dir, uid, gid) {
                let user = user.as_deref().unwrap_or(DEFAULT_USER);
                return Err(DriverError::Spawn {
                    resource: resource.clone(),
                    command: show_command(&params.argv),
                    hint: format!(
                        "user {user:?} cannot reach its run directory {} on node {:?}: {} (mode {mode:o}) lets only \
                         its owner in; run `chmod o+x {}` (the agent's state_dir and the directories above it must \
                         be searchable), or set params.user",
                        ctx.run_dir.display(),
                        ctx.node,
                        dir.display(),
                        dir.display()
                    ),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                });
            }
        }
        if !cwd.is_dir() {
            return Err(DriverError::Spawn {
                resource: resource.clone(),
                command: show_command(&params.argv),
                hint: format!(
                    "its working directory {} is not a directory on node {:?}; create it or change params.cwd",
                    cwd.display(),
                    ctx.node
                ),
                source: io::Error::new(io::ErrorKind::NotFound, "no such directory"),
            });
        }
        Ok(Launch { env, cwd, ids })
    }

    /// Which processes of `target` (a pid, or a group if negative) are still running;
    /// reaps our child on the way so it does not linger as a zombie.
    fn remaining(&self, ctx: &ResourceCtx, record: PidRecord, target: i32) -> Result<Vec<i32>, DriverError> {
        self.poll_child(&ctx.run_dir, record);
        let proc_err = |source| DriverError::Proc { resource: ctx.spec.name.clone(), pid: target.abs(), source };
        if target < 0 {
            return procfs::live_group_members(-target).map_err(proc_err);
        }
        Ok(match procfs::stat(target).map_err(proc_err)? {
            Some(st) if st.start_time == record.start_time && !st.is_dead() => vec![target],
            _ => vec![],
        })
    }

    async fn wait_gone(
        &self,
        ctx: &ResourceCtx,
        record: PidRecord,
        target: i32,
        within: Duration,
    ) -> Result<Vec<i32>, DriverError> {
        let deadline = instant_after(Instant::now(), within);
        loop {
            let left = self.remaining(ctx, record, target)?;
            let now = Instant::now();
            if left.is_empty() || now >= deadline {
                return Ok(left);
            }
            sleep(STOP_POLL.min(deadline - now)).await;
        }
    }

    /// Ends the recorded process and everything in its process group: SIGTERM, a grace
    /// period, then SIGKILL.
    async fn terminate(
        &self,
        ctx: &ResourceCtx,
        params: Option<&ProcessParams>,
        record: PidRecord,
        leader_pgrp: Option<i32>,
        grace: Option<Duration>,
    ) -> Result<(), DriverError> {
        let pid = record.pid;
        // Signal the group the process leads. If the leader is gone, the kernel keeps its
        // pid reserved while its group has members, so group `pid` is still the one it led.
        let mut target = match leader_pgrp {
            Some(pgrp) if pgrp != pid => pid, // it left its group: only it is ours
            _ => -pid,
        };
        // Never signal init, the agent or the agent's group, whatever a pid file says.
        if pid <= 1 || pid == std::process::id() as i32 {
            tracing::warn!(resource = %ctx.spec.name, pid, "refusing to signal pid {pid}");
            return Ok(());
        }
        if target < 0 && pid == sys::own_process_group() {
            tracing::warn!(resource = %ctx.spec.name, pid, "refusing to signal the agent's own process group {pid}; signalling the process only");
            target = pid;
        }
        if self.remaining(ctx, record, target)?.is_empty() {
            return Ok(());
        }
        let command = params.map_or_else(|| format!("pid {pid}"), |p| show_command(&p.argv));
        let grace = grace.unwrap_or(ctx.spec.props.pending_timeout.0.min(MAX_TERM_GRACE));
        if !grace.is_zero() {
            self.signal(ctx, target, libc::SIGTERM, "SIGTERM")?;
            if self.wait_gone(ctx, record, target, grace).await?.is_empty() {
                return Ok(());
            }
        }
        tracing::warn!(resource = %ctx.spec.name, pid, "still running {} after SIGTERM; sending SIGKILL", Dur(grace));
        self.signal(ctx, target, libc::SIGKILL, "SIGKILL")?;
        let left = self.wait_gone(ctx, record, target, KILL_WAIT).await?;
        if left.is_empty() {
            return Ok(());
        }
        Err(DriverError::StillRunning { resource: ctx.spec.name.clone(), command, pids: left, waited: Dur(KILL_WAIT) })
    }

    fn signal(&self, ctx: &ResourceCtx, target: i32, signal: i32, name: &'static str) -> Result<(), DriverError> {
        match sys::kill(target, signal) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(DriverError::Signal {
                resource: ctx.spec.name.clone(),
                signal: name,
                pgid: target.abs(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Forgets the child handle of a stopped resource (reaping it if it has exited; if not,
    /// tokio reaps it in the background).
    fn forget(&self, run_dir: &Path) {
        if let Some(mut s) = self.spawned().remove(run_dir) {
            let _ = s.child.try_wait();
        }
    }

    async fn stop_inner(&self, ctx: &ResourceCtx, params: Option<&ProcessParams>) -> Result<(), DriverError> {
        self.stop_with(ctx, params, None).await
    }

    /// Stops it; `grace` overrides how long SIGTERM may take before SIGKILL.
    async fn stop_with(
        &self,
        ctx: &ResourceCtx,
        params: Option<&ProcessParams>,
        grace: Option<Duration>,
    ) -> Result<(), DriverError> {
        match self.inspect(ctx)? {
            Found::Nothing => {}
            Found::Reused { reason } => {
                tracing::info!(resource = %ctx.spec.name, "{reason}; removing the stale pid file");
            }
            Found::Unreadable { reason } => {
                tracing::warn!(resource = %ctx.spec.name, "{reason}; removing it");
            }
            Found::Running { record, pgrp } => self.terminate(ctx, params, record, Some(pgrp), grace).await?,
            // Its children may still be running in its group.
            Found::Exited { record, .. } => self.terminate(ctx, params, record, None, grace).await?,
        }
        pidfile::remove(&ctx.run_dir).map_err(|source| DriverError::PidFile {
            resource: ctx.spec.name.clone(),
            action: "remove",
            path: pidfile::path(&ctx.run_dir),
            source,
        })?;
        self.forget(&ctx.run_dir);
        Ok(())
    }

    /// Stops what start left running and builds the error for a start that failed.
    async fn abandon_start(&self, ctx: &ResourceCtx, params: &ProcessParams, error: DriverError) -> DriverError {
        match self.stop_inner(ctx, Some(params)).await {
            Ok(()) => error,
            Err(stop_error) => {
                tracing::error!(resource = %ctx.spec.name, "cleaning up after a failed start: {stop_error}");
                error
            }
        }
    }
}

#[async_trait]
impl ResourceDriver for ProcessDriver {
    async fn start(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        let resource = &ctx.spec.name;
        let params = Self::params(&ctx.spec)?;
        fs::create_dir_all(&ctx.run_dir).map_err(|source| DriverError::RunDir {
            resource: resource.clone(),
            path: ctx.run_dir.clone(),
            source,
        })?;
        match self.inspect(ctx)? {
            Found::Running { .. } => return Ok(()),
            Found::Nothing => {}
            // Clear what is left of an earlier run (its group, the stale pid file).
            _ => self.stop_inner(ctx, Some(&params)).await?,
        }
        let launch = Self::prepare(ctx, &params)?;
        let command = show_command(&params.argv);
        let log_path = ctx.run_dir.join("output.log");
        let (log, log_offset) = open_log(&log_path, &command).map_err(|source| DriverError::RunDir {
            resource: resource.clone(),
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| DriverError::RunDir {
            resource: resource.clone(),
            path: log_path.clone(),
            source,
        })?;

        let mut cmd = launch.command(&params.argv);
        // Its own process group (so stop can end its whole tree), same session as the agent.
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err).process_group(0);
        sys::die_with_agent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| DriverError::Spawn {
            resource: resource.clone(),
            command: command.clone(),
            hint: spawn_hint(&source, &params, &launch, &ctx.node),
            source,
        })?;
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            // Only possible if it was already reaped, which we have not done.
            return Err(DriverError::ExitedAtStart {
                resource: resource.clone(),
                command,
                what: "vanished right after it started".into(),
                output: output_since(&log_path, log_offset),
            });
        };
        // Read before anything else can happen to it: it cannot be reaped until we wait.
        let start_time = match procfs::stat(pid) {
            Ok(Some(st)) => st.start_time,
            Ok(None) => 0,
            Err(source) => {
                let _ = sys::kill(-pid, libc::SIGKILL);
                let _ = timeout(KILL_WAIT, child.wait()).await;
                return Err(DriverError::Proc { resource: resource.clone(), pid, source });
            }
        };
        let record = PidRecord { pid, start_time };
        if let Err(source) = pidfile::write(&ctx.run_dir, record) {
            // Unrecorded, a later agent could not find it: do not leave it running.
            let _ = sys::kill(-pid, libc::SIGKILL);
            let _ = timeout(KILL_WAIT, child.wait()).await;
            return Err(DriverError::PidFile {
                resource: resource.clone(),
                action: "write",
                path: pidfile::path(&ctx.run_dir),
                source,
            });
        }
        let window = if params.check.is_some() { EARLY_EXIT_WINDOW_CHECKED } else { EARLY_EXIT_WINDOW };
        let early_exit = match timeout(window, child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None, // still running (or wait failed: monitor falls back to /proc)
        };
        self.spawned().insert(ctx.run_dir.clone(), Spawned { record, child, exit: early_exit });
        if let Some(status) = early_exit {
            let hint = if status.success() { DAEMON_HINT } else { "" };
            let error = DriverError::ExitedAtStart {
                resource: resource.clone(),
                command,
                what: format!("{} right after it started{hint}", describe_exit(status)),
                output: output_since(&log_path, log_offset),
            };
            return Err(self.abandon_start(ctx, &params, error).await);
        }

        let Some(check) = &params.check else { return Ok(()) };
        let pending_timeout = ctx.spec.props.pending_timeout;
        let deadline = instant_after(started, pending_timeout.0);
        let mut poll = CHECK_POLL_FIRST;
        loop {
            match self.inspect(ctx)? {
                Found::Running { .. } => {}
                Found::Exited { reason, .. } | Found::Reused { reason } | Found::Unreadable { reason } => {
                    let hint = match self.spawned().get(&ctx.run_dir).and_then(|s| s.exit) {
                        Some(status) if status.success() => DAEMON_HINT,
                        _ => "",
                    };
                    let error = DriverError::ExitedAtStart {
                        resource: resource.clone(),
                        command,
                        what: format!("ended before its health check passed ({reason}){hint}"),
                        output: output_since(&log_path, log_offset),
                    };
                    return Err(self.abandon_start(ctx, &params, error).await);
                }
                Found::Nothing => {
                    let error = DriverError::ExitedAtStart {
                        resource: resource.clone(),
                        command,
                        what: "was stopped before its health check passed".into(),
                        output: output_since(&log_path, log_offset),
                    };
                    return Err(self.abandon_start(ctx, &params, error).await);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
            let outcome = check::run(check, |argv| launch.command(argv), left).await;
            let last_result = match outcome {
                Ok(()) => return Ok(()),
                Err(reason) => reason.to_string(),
            };
            let now = Instant::now();
            if now >= deadline {
                let error = DriverError::CheckTimedOut {
                    resource: resource.clone(),
                    command,
                    pending_timeout,
                    last_result,
                    output: output_since(&log_path, log_offset),
                };
                return Err(self.abandon_start(ctx, &params, error).await);
            }
            tracing::debug!(resource = %resource, "waiting for the health check to pass: {last_result}");
            sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(CHECK_POLL);
        }
    }

    async fn stop(&self, ctx: &ResourceCtx) -> Result<(), DriverError> {
        // Stopping must work even if the definition became invalid since the start.
        let params = Self::params(&ctx.spec).ok();
        self.stop_inner(ctx, params.as_ref()).await
    }

    async fn stop_within(&self, ctx: &ResourceCtx, grace: Duration) -> Result<(), DriverError> {
        let params = Self::params(&ctx.spec).ok();
        self.stop_with(ctx, params.as_ref(), Some(grace)).await
    }

    async fn monitor(&self, ctx: &ResourceCtx, depth: Depth) -> Result<Health, DriverError> {
        match self.inspect(ctx)? {
            Found::Nothing => Ok(Health::Stopped),
            Found::Exited { reason, .. } | Found::Reused { reason } | Found::Unreadable { reason } => {
                Ok(Health::Failed(reason))
            }
            Found::Running { .. } => {
                if depth == Depth::Cheap {
                    return Ok(Health::Running);
                }
                let params = Self::params(&ctx.spec)?;
                let Some(check) = &params.check else { return Ok(Health::Running) };
                let launch = Self::prepare(ctx, &params)?;
                match check::run(check, |argv| launch.command(argv), Duration::MAX).await {
                    Ok(()) => Ok(Health::Running),
                    Err(reason) => Ok(Health::Failed(format!("health check failed: {reason}"))),
                }
            }
        }
    }

    fn validate(&self, spec: &ResourceSpec) -> Result<(), InvalidInput> {
        if spec.kind != ResourceKind::Process {
            return Err(InvalidInput::new("type", format!("{:?} is not a process resource", spec.kind.as_str())));
        }
        let params = spec.process_params()?;
        params.validate()?;
        validate_cwd(&params)
    }
}

fn validate_cwd(params: &ProcessParams) -> Result<(), InvalidInput> {
    match &params.cwd {
        Some(cwd) if !Path::new(cwd).is_absolute() => Err(InvalidInput::new(
            "params.cwd",
            format!(
                "{cwd:?} is not an absolute path; write it like \"/srv/app\", or leave it out to use the resource's run directory"
            ),
        )),
        _ => Ok(()),
    }
}

/// The command line as an operator would type it, for messages.
pub(crate) fn show_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || "'\"\\$`;&|<>()*?".contains(c)) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match signal_name(sig) {
            Some(name) => format!("was killed by signal {sig} ({name})"),
            None => format!("was killed by signal {sig}"),
        },
        None => format!("ended ({status})"),
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// The first directory above `dir` that user `uid` (group `gid`) may not search, with its
/// mode: the reason a process of that user could not make `dir` its working directory.
fn closed_ancestor(dir: &Path, uid: u32, gid: u32) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).find_map(|a| {
        let meta = fs::metadata(a).ok()?;
        let mode = meta.mode() & 0o7777;
        let bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        (mode & bit == 0).then(|| (a.to_path_buf(), mode))
    })
}

/// The account a command the agent runs on its host (a `process` resource, a fence agent)
/// runs as when the agent runs as root and the command names no user (see
/// `ProcessParams::user`, `FenceConfig::user`).
pub const DEFAULT_USER: &str = "nobody";

/// Who a command the agent runs on its host runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub home: String,
    /// The uid and gid to switch to; `None` when they are the agent's own.
    pub ids: Option<(u32, u32)>,
}

impl RunAs {
    /// `HOME`, `USER` and `LOGNAME` for the command.
    pub fn env(&self) -> [(String, String); 3] {
        [
            ("HOME".to_string(), self.home.clone()),
            ("USER".to_string(), self.user.clone()),
            ("LOGNAME".to_string(), self.user.clone()),
        ]
    }
}

/// Why [`run_as`] found no account.
#[derive(Debug)]
pub enum RunAsError {
    Lookup { user: String, source: io::Error },
    Unknown { user: String },
    NotRoot { user: String, agent_uid: u32 },
}

/// The account for `user`: as given, else [`DEFAULT_USER`] when the agent runs as root;
/// `None` when neither (the agent's own user, as it is). Switching to another account than
/// the agent's needs the agent to run as root.
pub fn run_as(user: Option<&str>) -> Result<Option<RunAs>, RunAsError> {
    let agent_uid = sys::effective_uid();
    let Some(user) = user.map(str::to_string).or_else(|| (agent_uid == 0).then(|| DEFAULT_USER.to_string())) else {
        return Ok(None);
    };
    let account = match sys::lookup_user(&user) {
        Err(source) => return Err(RunAsError::Lookup { user, source }),
        Ok(None) => return Err(RunAsError::Unknown { user }),
        Ok(Some(a)) => a,
    };
    let ids = if agent_uid == account.uid {
        None
    } else if agent_uid != 0 {
        return Err(RunAsError::NotRoot { user, agent_uid });
    } else {
        Some((account.uid, account.gid))
    };
    Ok(Some(RunAs { user, home: account.home, ids }))
}

fn spawn_hint(error: &io::Error, params: &ProcessParams, launch: &Launch, node: &str) -> String {
    let program = params.argv.first().map(String::as_str).unwrap_or("");
    let path = launch.env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    // A PATH search by another user reports "permission denied" when it met a directory that
    // user may not enter, though the program is in none of them.
    let nowhere_in_path = !program.contains('/') && !std::env::split_paths(&path).any(|dir| dir.join(program).exists());
    match error.kind() {
        io::ErrorKind::NotFound if program.contains('/') => {
            format!("{program:?} does not exist on node {node:?}; check params.argv[0]")
        }
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied if nowhere_in_path => format!(
            "program {program:?} is not in PATH ({path}) on node {node:?}; install it there or \
             give its full path in params.argv[0]"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "check that {program:?} is executable{} and that its working directory {} is accessible",
            if launch.ids.is_some() { " by the resource's user (params.user, default nobody)" } else { "" },
            launch.cwd.display()
        ),
        _ => "check params.argv and the node's resources (memory, process limits)".into(),
    }
}

/// Opens `output.log` for appending, marks where this run's output begins, and returns the
/// file and the offset of that output.
fn open_log(path: &Path, command: &str) -> io::Result<(File, u64)> {
    let mut log = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(log, "--- haven: starting {command} ---")?;
    let offset = log.metadata()?.len();
    Ok((log, offset))
}

/// The last lines the program wrote since `offset`, for a start failure message.
pub(crate) fn output_since(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let from = offset.max(len.saturating_sub(8 * 1024));
        f.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        f.take(8 * 1024).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => format!("it printed nothing (see {})", path.display()),
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..];
            format!(
                "its last output (from {}):\n{}",
                path.display(),
                tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
            )
        }
        Err(e) => format!("its output could not be read from {} ({e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_as_typed() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(show_command(&argv(&["sleep", "1000"])), "sleep 1000");
        assert_eq!(show_command(&argv(&["sh", "-c", "sleep 1 & wait"])), "sh -c \"sleep 1 & wait\"");
        assert_eq!(show_command(&argv(&["x", ""])), "x \"\"");
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exited with status 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "was killed by signal 9 (SIGKILL)");
    }
}

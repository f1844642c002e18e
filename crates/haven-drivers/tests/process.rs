//! The `process` driver against real processes: start, monitor (cheap and thorough) and
//! stop, process trees, failures and their reasons, and adoption by a restarted agent
//! through the pid file. Every wait polls with a deadline.

use std::future::Future;
use std::time::Duration;

use haven_drivers::{Depth, Drivers, Health, ResourceCtx, procfs};
use haven_model::{Dur, ResourceKind, ResourceProps, ResourceSpec};
use serde_json::json;
use tokio::time::{Instant, sleep};

const PATIENCE: Duration = Duration::from_secs(20);

fn spec(name: &str, params: serde_json::Value) -> ResourceSpec {
    ResourceSpec {
        name: name.into(),
        group: "g".into(),
        kind: ResourceKind::Process,
        params,
        props: ResourceProps::default(),
        depends_on: vec![],
    }
}

fn ctx(dir: &tempfile::TempDir, spec: ResourceSpec) -> ResourceCtx {
    ResourceCtx::new("node-1", spec, dir.path())
}

/// `(state, pgrp, start time)` of a process, from /proc.
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    procfs::stat(pid).ok()?.map(|st| (st.state, st.pgrp, st.start_time))
}

/// Running and not a zombie.
fn alive(pid: i32) -> bool {
    procfs::is_alive(pid)
}

fn live_group_members(pgid: i32) -> Vec<i32> {
    procfs::live_group_members(pgid).expect("read /proc")
}

fn recorded_pid(ctx: &ResourceCtx) -> i32 {
    let text = std::fs::read_to_string(ctx.run_dir.join("pid")).expect("pid file");
    text.split_whitespace().next().and_then(|p| p.parse().ok()).expect("pid in pid file")
}

/// Polls `probe` until it returns `Some`, failing the test after `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what} after {PATIENCE:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually_health(
    drivers: &Drivers,
    ctx: &ResourceCtx,
    depth: Depth,
    what: &str,
    want: impl Fn(&Health) -> bool,
) -> Health {
    eventually(what, || async {
        let h = drivers.get(ctx.spec.kind).monitor(ctx, depth).await.expect("monitor");
        want(&h).then_some(h)
    })
    .await
}

async fn eventually_dead(pids: &[i32]) {
    eventually(&format!("processes {pids:?} to end"), || async { pids.iter().all(|p| !alive(*p)).then_some(()) }).await
}

fn kill9(pid: i32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("run kill");
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test]
async fn start_monitor_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx = ctx(&dir, spec("sleeper", json!({"argv": ["sleep", "1000"], "env": {"FOO": "bar"}})));
    let d = drivers.get(ResourceKind::Process);

    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Stopped);
    d.start(&ctx).await.expect("start");
    let pid = recorded_pid(&ctx);
    assert!(alive(pid));
    assert_eq!(proc_stat(pid).map(|s| s.1), Some(pid), "it leads its own process group");
    let env = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(env.split(|b| *b == 0).any(|kv| kv == b"FOO=bar"), "env is passed");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"), ctx.run_dir, "cwd defaults to run_dir");
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Running);
    assert_eq!(d.monitor(&ctx, Depth::Thorough).await.expect("monitor"), Health::Running);
    assert_eq!(drivers.probe(&ctx).await, Health::Running);

    d.start(&ctx).await.expect("start again");
    assert_eq!(recorded_pid(&ctx), pid, "starting a running resource keeps it");

    d.stop(&ctx).await.expect("stop");
    assert!(!alive(pid));
    assert!(!ctx.run_dir.join("pid").exists());
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Stopped);
    d.stop(&ctx).await.expect("stopping a stopped resource is fine");
    assert!(ctx.run_dir.join("output.log").exists());
}

#[tokio::test]
async fn output_goes_to_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx =
        ctx(&dir, spec("talker", json!({"argv": ["sh", "-c", "echo out-line; echo err-line >&2; exec sleep 1000"]})));
    drivers.get(ResourceKind::Process).start(&ctx).await.expect("start");
    let log = ctx.run_dir.join("output.log");
    eventually("both lines in output.log", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.contains("out-line") && text.contains("err-line")).then_some(())
    })
    .await;
    drivers.get(ResourceKind::Process).stop(&ctx).await.expect("stop");
}

#[tokio::test]
async fn stop_kills_the_whole_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx = ctx(&dir, spec("tree", json!({"argv": ["sh", "-c", "sleep 1000 & sleep 1000"]})));
    let d = drivers.get(ResourceKind::Process);
    d.start(&ctx).await.expect("start");
    let pgid = recorded_pid(&ctx);
    let members = eventually("sh and both sleeps", || async {
        let m = live_group_members(pgid);
        let sleeps = m
            .iter()
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with("sleep\0")));
        (sleeps.count() == 2).then_some(m)
    })
    .await;

    d.stop(&ctx).await.expect("stop");
    for pid in &members {
        assert!(!alive(*pid), "process {pid} of the tree survived stop");
    }
    assert_eq!(live_group_members(pgid), Vec::<i32>::new());
}

#[tokio::test]
async fn a_killed_process_is_failed_with_the_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx = ctx(&dir, spec("victim", json!({"argv": ["sleep", "1000"]})));
    let d = drivers.get(ResourceKind::Process);
    d.start(&ctx).await.expect("start");
    let pid = recorded_pid(&ctx);
    kill9(pid);
    let health = eventually_health(&drivers, &ctx, Depth::Cheap, "Failed", |h| matches!(h, Health::Failed(_))).await;
    let Health::Failed(reason) = health else { unreachable!() };
    assert!(reason.contains(&format!("process {pid} was killed by signal 9 (SIGKILL)")), "{reason}");
    assert!(reason.contains("output.log"), "{reason}");
    // It stays failed (not stopped) until stopped.
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Failed(reason));
    d.stop(&ctx).await.expect("stop");
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Stopped);
}

#[tokio::test]
async fn an_exited_process_is_failed_with_its_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx = ctx(&dir, spec("quitter", json!({"argv": ["sh", "-c", "sleep 0.6; exit 3"]})));
    let d = drivers.get(ResourceKind::Process);
    d.start(&ctx).await.expect("start (it lives longer than the early-exit window)");
    let pid = recorded_pid(&ctx);
    let health = eventually_health(&drivers, &ctx, Depth::Cheap, "Failed", |h| matches!(h, Health::Failed(_))).await;
    assert!(
        matches!(&health, Health::Failed(r) if r.contains(&format!("process {pid} exited with status 3"))),
        "{health:?}"
    );
    // A start after a failure starts it afresh.
    d.start(&ctx).await.expect("restart");
    assert_ne!(recorded_pid(&ctx), pid);
    d.stop(&ctx).await.expect("stop");
}

#[tokio::test]
async fn a_missing_program_fails_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx = ctx(&dir, spec("ghost", json!({"argv": ["haven-no-such-program", "--flag"]})));
    let d = drivers.get(ResourceKind::Process);
    let err = d.start(&ctx).await.expect_err("start must fail").to_string();
    assert!(err.contains("\"ghost\""), "{err}");
    assert!(err.contains("haven-no-such-program --flag"), "{err}");
    assert!(err.contains("not in PATH"), "{err}");
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Stopped);
}

#[tokio::test]
async fn a_program_that_exits_at_once_fails_start_with_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let ctx = ctx(&dir, spec("crasher", json!({"argv": ["sh", "-c", "echo 'port 80 in use' >&2; exit 7"]})));
    let d = drivers.get(ResourceKind::Process);
    let err = d.start(&ctx).await.expect_err("start must fail").to_string();
    assert!(err.contains("exited with status 7 right after it started"), "{err}");
    assert!(err.contains("port 80 in use"), "{err}");
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Stopped);
}

#[tokio::test]
async fn a_failing_check_fails_start_after_pending_timeout_and_stops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let mut s = spec(
        "never-ready",
        json!({"argv": ["sh", "-c", "echo $$ > leader.pid; exec sleep 1000"], "check": {"kind": "command", "argv": ["sh", "-c", "echo not ready yet; exit 1"]}}),
    );
    s.props.pending_timeout = Dur::from_secs(1);
    let ctx = ctx(&dir, s);
    let d = drivers.get(ResourceKind::Process);
    let began = Instant::now();
    let err = d.start(&ctx).await.expect_err("start must fail").to_string();
    assert!(began.elapsed() >= Duration::from_secs(1), "it waited for pending_timeout");
    assert!(err.contains("did not pass within pending_timeout 1s"), "{err}");
    assert!(err.contains("exited with status 1: not ready yet"), "{err}");
    let pid: i32 =
        std::fs::read_to_string(ctx.run_dir.join("leader.pid")).expect("leader.pid").trim().parse().expect("pid");
    assert!(!alive(pid), "the process was stopped");
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Stopped);
}

#[tokio::test]
async fn a_tcp_check_follows_the_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let acceptor = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let ctx = ctx(
        &dir,
        spec("tcp", json!({"argv": ["sleep", "1000"], "check": {"kind": "tcp", "address": address, "timeout": "2s"}})),
    );
    let d = drivers.get(ResourceKind::Process);
    d.start(&ctx).await.expect("start");
    assert_eq!(d.monitor(&ctx, Depth::Thorough).await.expect("monitor"), Health::Running);

    acceptor.abort();
    let _ = acceptor.await; // drops the listener
    let health = eventually_health(&drivers, &ctx, Depth::Thorough, "Failed", |h| matches!(h, Health::Failed(_))).await;
    assert!(
        matches!(&health, Health::Failed(r) if r.starts_with(&format!("health check failed: TCP check: cannot connect to {address}"))),
        "{health:?}"
    );
    // The cheap check only looks at the process.
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Running);
    d.stop(&ctx).await.expect("stop");
}

#[tokio::test]
async fn an_http_check_waits_for_the_server_and_reads_the_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let port = free_port();
    let params = |path: &str| {
        json!({
            "argv": ["python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1"],
            "check": {"kind": "http", "url": format!("http://127.0.0.1:{port}{path}"), "timeout": "2s"},
        })
    };
    let ctx = ctx(&dir, spec("web", params("/")));
    let d = drivers.get(ResourceKind::Process);
    d.start(&ctx).await.expect("start waits until the server answers");
    assert_eq!(d.monitor(&ctx, Depth::Thorough).await.expect("monitor"), Health::Running);

    let mut missing = ctx.clone();
    missing.spec.params = params("/no-such-page");
    let health = d.monitor(&missing, Depth::Thorough).await.expect("monitor");
    assert!(matches!(&health, Health::Failed(r) if r.contains("/no-such-page answered HTTP/1.0 404")), "{health:?}");
    d.stop(&ctx).await.expect("stop");
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_process_and_can_stop_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = ctx(&dir, spec("adopted", json!({"argv": ["sh", "-c", "sleep 1000 & sleep 1000"]})));
    let before = Drivers::new();
    before.get(ResourceKind::Process).start(&ctx).await.expect("start");
    let pid = recorded_pid(&ctx);
    drop(before); // the agent restarts; the process keeps running

    let after = Drivers::new();
    assert_eq!(after.probe(&ctx).await, Health::Running);
    let d = after.get(ResourceKind::Process);
    d.start(&ctx).await.expect("start is a no-op");
    assert_eq!(recorded_pid(&ctx), pid, "no second copy");
    let members = eventually("the tree", || async {
        let m = live_group_members(pid);
        (m.len() >= 2).then_some(m)
    })
    .await;
    d.stop(&ctx).await.expect("stop");
    eventually_dead(&members).await;
    assert_eq!(after.probe(&ctx).await, Health::Stopped);
}

#[tokio::test]
async fn a_restarted_agent_reports_a_dead_adopted_process_as_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = ctx(&dir, spec("adopted-dead", json!({"argv": ["sleep", "1000"]})));
    let before = Drivers::new();
    before.get(ResourceKind::Process).start(&ctx).await.expect("start");
    let pid = recorded_pid(&ctx);
    drop(before);
    kill9(pid);

    let after = Drivers::new();
    let health = eventually_health(&after, &ctx, Depth::Cheap, "Failed", |h| matches!(h, Health::Failed(_))).await;
    assert!(
        matches!(&health, Health::Failed(r) if r.contains(&format!("process {pid}")) && r.contains("exit status is unknown")),
        "{health:?}"
    );
    after.get(ResourceKind::Process).stop(&ctx).await.expect("stop");
    assert_eq!(after.probe(&ctx).await, Health::Stopped);
}

/// A pid file whose pid is alive but with another start time (pid reuse).
async fn assert_not_ours(pid: i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = ctx(&dir, spec("reused", json!({"argv": ["sleep", "1000"]})));
    std::fs::create_dir_all(&ctx.run_dir).expect("run dir");
    let (_, _, start_time) = proc_stat(pid).expect("the process exists");
    std::fs::write(ctx.run_dir.join("pid"), format!("{pid} {}\n", start_time + 1)).expect("write pid file");

    let drivers = Drivers::new();
    let health = drivers.probe(&ctx).await;
    assert!(matches!(&health, Health::Failed(r) if r.contains("now belongs to another program")), "{health:?}");
    let d = drivers.get(ResourceKind::Process);
    d.stop(&ctx).await.expect("stop leaves it alone and clears the pid file");
    assert!(alive(pid));
    assert!(!ctx.run_dir.join("pid").exists());

    std::fs::write(ctx.run_dir.join("pid"), format!("{pid} {}\n", start_time + 1)).expect("write pid file");
    d.start(&ctx).await.expect("start starts a process of its own");
    let started = recorded_pid(&ctx);
    assert_ne!(started, pid);
    assert_eq!(d.monitor(&ctx, Depth::Cheap).await.expect("monitor"), Health::Running);
    d.stop(&ctx).await.expect("stop");
    assert!(alive(pid));
    assert!(!alive(started));
}

#[tokio::test]
async fn a_pid_file_naming_the_agent_itself_is_not_ours() {
    assert_not_ours(std::process::id() as i32).await;
}

#[tokio::test]
async fn a_pid_file_naming_init_is_not_ours() {
    assert_not_ours(1).await;
}

#[tokio::test]
async fn users_are_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let d = drivers.get(ResourceKind::Process);
    let unknown = ctx(&dir, spec("as-ghost", json!({"argv": ["sleep", "1000"], "user": "haven-no-such-user"})));
    let err = d.start(&unknown).await.expect_err("unknown user").to_string();
    assert!(err.contains("user \"haven-no-such-user\" does not exist on node \"node-1\""), "{err}");

    // Switching users needs root and a `nobody` account; skip that part otherwise.
    let is_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    let nobody_uid = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find(|l| l.starts_with("nobody:")).and_then(|l| l.split(':').nth(2).map(str::to_string))
    });
    let (true, Some(uid)) = (is_root, nobody_uid) else { return };
    let named = ctx(&dir, spec("as-nobody", json!({"argv": ["sleep", "1000"], "user": "nobody", "cwd": "/"})));
    d.start(&named).await.expect("start as nobody");
    let pid = recorded_pid(&named);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    assert_eq!(uid_line.split_whitespace().nth(1), Some(uid.as_str()), "{uid_line}");
    let groups_line = status.lines().find(|l| l.starts_with("Groups:")).expect("Groups line");
    assert!(!groups_line.split_whitespace().any(|g| g == "0"), "root's groups are dropped: {groups_line}");
    d.stop(&named).await.expect("stop");
    assert!(!alive(pid));

    // No user given: an agent running as root runs the command as `nobody`, in a run
    // directory handed to it; root is an explicit choice.
    let uid_of = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)).map(str::to_string)
    };
    let by_default = ctx(&dir, spec("by-default", json!({"argv": ["sh", "-c", "echo mine > own; exec sleep 1000"]})));
    d.start(&by_default).await.expect("start with the default user");
    let pid = recorded_pid(&by_default);
    assert_eq!(uid_of(pid), Some(uid.clone()), "the default is nobody");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&by_default.run_dir).expect("run dir"));
    assert_eq!(owner.to_string(), uid, "the run directory is nobody's");
    eventually("the command to write in its run directory", || async {
        std::fs::read_to_string(by_default.run_dir.join("own")).ok().filter(|t| t == "mine\n")
    })
    .await;
    d.stop(&by_default).await.expect("stop");
    // A state directory the default user cannot reach: refused, naming the directory and
    // the fix.
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let shut_out = ResourceCtx::new("node-1", spec("shut-out", json!({"argv": ["sleep", "1000"]})), &closed);
    let err = d.start(&shut_out).await.expect_err("its run directory is out of reach").to_string();
    assert!(
        err.contains("cannot reach its run directory") && err.contains(&format!("chmod o+x {}", closed.display())),
        "{err}"
    );
    let as_root = ctx(&dir, spec("as-root", json!({"argv": ["sleep", "1000"], "user": "root"})));
    d.start(&as_root).await.expect("start as root");
    assert_eq!(uid_of(recorded_pid(&as_root)).as_deref(), Some("0"), "root when asked for");
    d.stop(&as_root).await.expect("stop");
}

#[test]
fn validate_names_the_bad_field() {
    let drivers = Drivers::new();
    let d = drivers.get(ResourceKind::Process);
    assert!(d.validate(&spec("ok", json!({"argv": ["sleep", "1"]}))).is_ok());
    let e = d.validate(&spec("x", json!({"argv": []}))).expect_err("empty argv");
    assert_eq!(e.field, "params.argv");
    let e = d.validate(&spec("x", json!({"argv": ["sleep"], "cwd": "relative/dir"}))).expect_err("relative cwd");
    assert_eq!(e.field, "params.cwd");
}

/// A resource never outlives the agent that started it: when the agent (here, the thread
/// and runtime that spawned it, which is what PR_SET_PDEATHSIG follows) goes away, the
/// resource's process is killed, so nobody else ever starts a second copy beside it.
#[tokio::test]
async fn resource_dies_with_the_agent_that_started_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = ctx(&dir, spec("orphan", json!({"argv": ["sleep", "1000"]})));
    let c2 = c.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let drivers = Drivers::new();
            drivers.get(ResourceKind::Process).start(&c2).await.expect("start");
            // Leak the driver so dropping it cannot be what stops the process.
            std::mem::forget(drivers);
        });
    })
    .join()
    .expect("agent thread");
    let pid = recorded_pid(&c);
    eventually("the orphaned process to be killed", || async move { (!alive(pid)).then_some(()) }).await;
}

/// Values the bounds now refuse may still sit in a cluster state written before them: the
/// largest duration there is, as pending timeout, restart and check properties and stop
/// grace, must not panic the driver (`started + pending_timeout` used to overflow).
#[tokio::test]
async fn the_largest_durations_do_not_panic_start_monitor_or_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let drivers = Drivers::new();
    let huge = Dur(Duration::MAX);
    let argv = json!(["sh", "-c", "sleep 0.5; touch ready; exec sleep 1000"]);
    // A check timeout beyond its bound is refused by the driver (the start fails, naming it).
    let check = json!({"kind": "command", "argv": ["sh", "-c", "test -e ready"], "timeout": huge.as_millis()});
    let bad = ctx(&dir, spec("huge-check", json!({"argv": argv, "check": check})));
    let err = drivers.get(ResourceKind::Process).start(&bad).await.expect_err("refused").to_string();
    assert!(err.contains("params.check.timeout") && err.contains("the most allowed is 1h"), "{err}");

    let check = json!({"kind": "command", "argv": ["sh", "-c", "test -e ready"], "timeout": "1h"});
    let mut s = spec("huge", json!({"argv": argv, "check": check}));
    s.props = ResourceProps {
        restart_period: huge,
        restart_delay: huge,
        pending_timeout: huge,
        looks_alive_interval: huge,
        is_alive_interval: huge,
        restart_threshold: u32::MAX,
        ..ResourceProps::default()
    };
    let ctx = ctx(&dir, s);
    let d = drivers.get(ResourceKind::Process);
    tokio::time::timeout(PATIENCE, d.start(&ctx)).await.expect("start within PATIENCE").expect("start");
    assert_eq!(d.monitor(&ctx, Depth::Thorough).await.expect("monitor"), Health::Running);
    let pid = recorded_pid(&ctx);
    tokio::time::timeout(PATIENCE, d.stop_within(&ctx, Duration::MAX))
        .await
        .expect("stop within PATIENCE")
        .expect("stop");
    eventually_dead(&[pid]).await;
}

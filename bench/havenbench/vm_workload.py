"""The `vm` workload: a QEMU guest, built and observed as in crates/haven/tests/vm_failover.rs.

A shared directory `<work>/shared/vol1` (every node reaches it at the same path, as with
NFS) holds `.haven-volume`, an ext4 image `data.img` (the guest's /dev/vda) and the VM
definition `vm1.toml` (1 vCPU, 192 MiB, accel auto, the test guest's kernel and initrd
from scripts/build-test-guest, heartbeat on). Group `vm`: `vol1-disk` (a `dir` disk on the
shared directory) -> `vm1-config` (`vol1/vm1.toml`) -> `vm1`.

The test guest appends `boot <boot_id> <epoch> <name>` to /boots.log on its disk when it
boots, then every second sends `heartbeat <name> <boot_id> <seq>` (seq from 0) on its
guest channel and appends `alive <boot_id> <seq> <epoch>` to /alive.log.

"Answering" is the guest's heartbeat: `GET /api/v1/vms/vm1` on a node shows that node as
the owner with `runtime.guest_boot_id` and `runtime.last_heartbeat_seq` set (a heartbeat
of the current QEMU run).

Before each fault (and the final check) the owner's console.log must show the guest's
`haven-guest: booted ... disk=vda` line: a guest without its data disk stops the benchmark
(GuestDiskError) rather than failing the records check at the end.

Safety, per run: the old QEMU process is gone before the new owner's QEMU process started
(its start time from /proc), and the volume's claim names the new owner. After the runs,
with the group offline: the guests' own records on a copy of data.img (journal replayed by
`e2fsck -f -y`, read with `debugfs`) show exactly the boots the API showed, one writer at a
time.
"""

import json
import os
import re
import shutil
import subprocess
import time

from .cluster import AGENT_PORT
from .util import Api, ApiError, log, pid_alive

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_SCRIPT = os.path.join(REPO, "scripts", "build-test-guest")
CLK_TCK = os.sysconf("SC_CLK_TCK")
FRESH_S = 3.0  # a heartbeat older than this (the resource's heartbeat_timeout) is not "answering"
# Before each fault (and before the final check) the guest runs until this heartbeat seq,
# so that its unsynced alive lines reach the disk (ext4 commits every 5 s) and the final
# check has lines of every boot to compare.
MIN_SEQ = 10


class VmError(Exception):
    pass


class GuestDiskError(Exception):
    """A guest came up without its data disk: the benchmark stops (exit 3), it is no
    safety failure of Haven's."""


def _run(argv, ok=(0,)):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    except FileNotFoundError:
        raise VmError(f"{argv[0]} is not installed (Debian: e2fsprogs / qemu-system-x86)") from None
    if r.returncode not in ok:
        raise VmError(f"`{' '.join(argv)}` failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


# What the workload runs on this machine: (program, Debian package).
TOOLS = [("qemu-system-x86_64", "qemu-system-x86"), ("mkfs.ext4", "e2fsprogs"), ("e2fsck", "e2fsprogs"),
         ("debugfs", "e2fsprogs")]
# How long a guest may take from its first heartbeat to its console's boot line (printed
# just before that heartbeat, on the other serial port).
BOOT_LINE_S = 10


def build_guest():
    """The test guest's directory (vmlinuz, initrd.img); scripts/build-test-guest builds it
    (and smoke-boots it) when missing or built from an older Debian kernel or builder."""
    try:
        r = subprocess.run([GUEST_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           errors="replace")
    except OSError as e:
        raise VmError(f"cannot run {GUEST_SCRIPT}: {e}") from None
    if r.returncode != 0:
        raise VmError(f"{GUEST_SCRIPT} failed ({r.returncode}):\n{r.stderr.strip()}")
    lines = r.stdout.strip().splitlines()
    d = lines[-1] if lines else ""
    if not (os.path.exists(os.path.join(d, "vmlinuz")) and os.path.exists(os.path.join(d, "initrd.img"))):
        raise VmError(f"{GUEST_SCRIPT} printed {d!r}, which has no vmlinuz/initrd.img")
    return d


def missing_tools():
    """The Debian packages to install for the programs of TOOLS that are not on PATH."""
    return sorted({pkg for prog, pkg in TOOLS if shutil.which(prog) is None})


def boot_line(console_log, boot):
    """(the `haven-guest: booted <name> boot_id=<boot> disk=...` line of guest `boot` in a
    QEMU console log or None, the log's text)."""
    try:
        with open(console_log, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None, ""
    needle = f"boot_id={boot} disk="
    return next((ln.strip() for ln in text.splitlines() if needle in ln), None), text


def parse_dur(text):
    """humantime's "1s 234ms 567us" (Haven's Dur) -> seconds; None for None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return text / 1000
    units = {"h": 3600, "m": 60, "min": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    total = 0.0
    for num, unit in re.findall(r"([\d.]+)\s*([a-z]+)", text):
        total += float(num) * units.get(unit, 0)
    return total


def proc_start_wall_ns(pid):
    """The wall-clock start time (ns) of a live process, from /proc (10 ms resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    start_s = int(rest[19]) / CLK_TCK  # field 22: start time in ticks since boot
    now_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time_ns() - int((now_boot - start_s) * 1e9)


class VmWorkload:
    name = "vm"
    group = "vm"
    resource = "vm1"
    disk = "vol1-disk"
    config = "vm1-config"
    volume_id = "bench-vol-1"
    volume_name = "vol1"
    memory_mib = 192
    default_runs = 5  # boots are slow under TCG
    service_label = "guest"
    guest_dir = None  # the test guest's directory, set by prepare()
    # Resources of the group whose `started` log line on the new owner is a step of its own.
    log_resources = {"disk": "vol1-disk", "config": "vm1-config"}
    # (label, from step, to step) of the per-profile split in the summary; None = t0.
    split = [
        ("t0 -> group placed on a survivor (detection)", None, "placed"),
        ("placed -> new QEMU process started", "placed", "qemu"),
        ("   of which vm-config online -> QEMU started (accel probe, spawn)", "config", "qemu"),
        ("QEMU started -> resource online (QMP running)", "qemu", "started"),
        ("QEMU started -> guest's first heartbeat (boot)", "qemu", "beat"),
        ("first heartbeat -> seen in the API (poll)", "beat", "guest"),
    ]

    def __init__(self, workdir, mode):
        self.mode = mode
        self.workdir = workdir
        self.volume = os.path.join(workdir, "shared", self.volume_name)
        self.image = os.path.join(self.volume, "data.img")
        self.evidence_path = self.image
        self.boots = []  # guest boot ids as the API showed them, in order
        self.old = None
        self.first_beat = None
        self.restarts = 0  # guest boots between runs that no failover of the benchmark started

    @classmethod
    def prepare(cls):
        """Checks this machine's prerequisites and builds the test guest; raises VmError
        saying what to install or what failed."""
        missing = missing_tools()
        if missing:
            raise VmError(f"--workload vm needs {', '.join(p for p, _ in TOOLS if shutil.which(p) is None)}; "
                          f"install with: apt-get install {' '.join(missing)}")
        log("vm workload: checking the test guest (scripts/build-test-guest; a first build takes ~1 min)...")
        cls.guest_dir = build_guest()

    def run_dir(self, node_name):
        return os.path.join(self.workdir, node_name, "state", "run", self.resource)

    def check_disk(self, node_name, boot):
        """Raises when guest `boot` on `node_name` came up without its data disk (its console
        says `disk=none`): it heartbeats but writes no records, and the final check would
        only find them missing. Waits up to BOOT_LINE_S for the console's boot line."""
        path = os.path.join(self.run_dir(node_name), "console.log")
        deadline = time.monotonic() + BOOT_LINE_S
        while True:
            line, text = boot_line(path, boot)
            tail = "\n".join(text.splitlines()[-15:])
            if line and " disk=vda" in line:
                return
            if line:
                raise GuestDiskError(f"the test guest booted without its data disk (console {path}:\n{tail}\n); "
                                     f"rebuild it with scripts/build-test-guest --force")
            if time.monotonic() >= deadline:
                raise GuestDiskError(f"guest {boot} on {node_name} heartbeats but printed no `haven-guest: booted` "
                                     f"line in {path} within {BOOT_LINE_S}s (console:\n{tail}\n); rebuild the "
                                     f"test guest with scripts/build-test-guest --force")
            time.sleep(0.1)

    def node_env(self, node):
        return {"HAVEN_BENCH_NODE": node.name}

    # -- setup ------------------------------------------------------------------------

    def make_volume(self, guest):
        os.makedirs(self.volume, exist_ok=True)
        with open(os.path.join(self.volume, ".haven-volume"), "w") as f:
            f.write(f"{self.volume_id}\n")
        with open(self.image, "wb") as f:
            f.truncate(32 << 20)
        _run(["mkfs.ext4", "-q", "-F", self.image])
        # Short writeback times get the guest's (unsynced) alive lines onto the disk within
        # ~1 s, so the records of a guest killed with its node are nearly complete.
        with open(os.path.join(self.volume, "vm1.toml"), "w") as f:
            f.write(
                f'name = "{self.resource}"\nvcpus = 1\nmemory_mib = {self.memory_mib}\nheartbeat = true\n'
                f'[boot]\nkernel = "{guest}/vmlinuz"\ninitrd = "{guest}/initrd.img"\n'
                f'cmdline = "console=ttyS0 haven.name={self.resource} quiet '
                f'sysctl.vm.dirty_expire_centisecs=100 sysctl.vm.dirty_writeback_centisecs=100"\n'
                f'[[disks]]\npath = "data.img"\n'
            )

    def create(self, api):
        try:
            guest = self.guest_dir or build_guest()
            self.make_volume(guest)
        except VmError as e:
            raise RuntimeError(f"vm workload: {e}") from None
        log(f"vm workload: test guest {guest}; shared volume {self.volume} (data.img, vm1.toml)")
        api.post("/groups", {"name": self.group, "failover_threshold": 1000, "online": False})
        api.post("/resources", {
            "name": self.disk, "group": self.group, "type": "disk",
            "params": {"backend": "dir", "volume_id": self.volume_id, "volume_name": self.volume_name,
                       "path": self.volume},
        })
        api.post("/resources", {
            "name": self.config, "group": self.group, "type": "vm-config",
            "params": {"path": f"{self.volume_name}/vm1.toml"}, "depends_on": [self.disk],
        })
        api.post("/resources", {
            "name": self.resource, "group": self.group, "type": "vm",
            "params": {"config": self.config, "heartbeat_timeout": "3s", "shutdown_timeout": "2s",
                       "boot_timeout": "60s"},
            "props": {"looks_alive_interval": "500ms", "is_alive_interval": "1s", "restart_delay": "200ms"},
            "depends_on": [self.config],
        })
        api.post(f"/groups/{self.group}/online", {})

    # -- observation --------------------------------------------------------------------

    def probe(self, ip, timeout=0.2):
        """(owner, QEMU pid, boot id, heartbeat seq, heartbeat age s) as the agent at `ip`
        shows the VM, if its guest has sent a heartbeat within FRESH_S; else None."""
        try:
            v = Api(f"{ip}:{AGENT_PORT}").get(f"/vms/{self.resource}", timeout=max(timeout, 1.0))
        except ApiError:
            return None
        rt = (v or {}).get("runtime") or {}
        if not v.get("owner") or not rt.get("pid") or not rt.get("guest_boot_id") or rt.get("last_heartbeat_seq") is None:
            return None
        age = parse_dur(rt.get("last_heartbeat_age"))
        if age is not None and age > FRESH_S:
            return None
        return v["owner"], rt["pid"], rt["guest_boot_id"], rt["last_heartbeat_seq"], age

    def wait_seq(self, cluster, owner, boot, limit=40):
        """Waits until the guest `boot` on `owner` has sent heartbeat MIN_SEQ; the last answer."""
        ip = cluster.node(owner).ip
        deadline = time.monotonic() + limit
        seen = None
        while time.monotonic() < deadline:
            seen = self.probe(ip, timeout=1.0) or seen
            if seen and seen[2] != boot:
                raise RuntimeError(f"guest {boot[:8]} on {owner} was replaced by {seen[2][:8]} while running")
            if seen and seen[3] >= MIN_SEQ:
                return seen
            time.sleep(0.25)
        raise RuntimeError(f"guest {boot[:8]} on {owner} did not reach heartbeat seq {MIN_SEQ} within {limit}s")

    def unexpected_boot(self, h):
        """Records the owner's guest boot; says so if it is one no failover started."""
        if h.seen and h.seen[2] not in self.boots:
            if self.boots:
                self.restarts += 1
                log(f"NOTE: the guest was restarted outside a failover: boot {h.seen[2][:8]} on {h.owner} "
                    f"(the last one seen was {self.boots[-1][:8]}); see the agent logs / history")
            self.boots.append(h.seen[2])

    def before_fault(self, cluster, h):
        self.unexpected_boot(h)
        if h.seen:
            self.check_disk(h.owner, h.seen[2])
            self.wait_seq(cluster, h.owner, h.seen[2])
        self.old = h.seen
        self.first_beat = None

    def is_new(self, seen, node, old):
        return seen[0] == node and (old is None or seen[2] != old[2])

    def noticed(self, seen, node):
        """Right after the API showed the new guest: its heartbeat file on the new owner
        (`<epoch ms> <seq> <boot_id>`, written when the agent received the beat)."""
        try:
            with open(os.path.join(self.run_dir(node), "heartbeat")) as f:
                ms, seq, boot = f.read().split()[:3]
            self.first_beat = (int(ms), int(seq), boot)
        except (OSError, ValueError):
            self.first_beat = None
        if seen[2] not in self.boots:
            self.boots.append(seen[2])

    # -- safety ---------------------------------------------------------------------------

    def claim(self):
        try:
            with open(os.path.join(self.volume, ".haven-claim")) as f:
                v = json.load(f)
            return v.get("node"), v.get("generation")
        except (OSError, ValueError):
            return None, None

    def safety(self, r, victim):
        """The old QEMU must be gone before the new one started; the claim names the new owner."""
        new_start = proc_start_wall_ns(r.new_pid) if r.new_pid else None
        if new_start is not None:
            r.steps["qemu"] = (new_start - r.t0_wall) / 1e9
        if self.first_beat:
            ms, seq, boot = self.first_beat
            # seq counts from 0, one beat a second: a later seq means the first was ~seq s earlier.
            r.steps["beat"] = (ms * 1_000_000 - r.t0_wall) / 1e9 - seq
            r.first_seq = seq
        if r.service_s is not None:
            r.steps["guest"] = r.service_s
        node, gen = self.claim()
        gone = None if r.old_gone_wall is None else (r.old_gone_wall - r.t0_wall) / 1e9
        started = None if new_start is None else (new_start - r.t0_wall) / 1e9
        claim_ok = node == r.service_node
        r.safe = (not r.old_alive and gone is not None and started is not None and r.old_gone_wall < new_start
                  and claim_ok)
        claim_text = f"claim {node} gen {gen}"
        if r.old_alive:
            r.safety = f"one-QEMU check FAILED: the old QEMU (pid {r.old_pid}) on {victim.name} is still running"
        elif gone is None or started is None:
            r.safety = (f"one-QEMU check FAILED: no start time of the new QEMU (pid {r.new_pid}) or no time "
                        f"the old one (pid {r.old_pid}) was gone")
        elif r.old_gone_wall >= new_start:
            r.safety = (f"one-QEMU check FAILED: the new QEMU (pid {r.new_pid}) started at {started:+.3f} s, "
                        f"before the old one (pid {r.old_pid}) was seen gone at {gone:+.3f} s")
        elif not claim_ok:
            r.safety = f"claim check FAILED: {claim_text}, but the new owner is {r.service_node}"
        else:
            r.safety = (f"one-QEMU check OK (old QEMU gone by {gone:+.3f} s, new QEMU started {started:+.3f} s), "
                        f"{claim_text}")

    def take_offline(self, cluster, limit=60):
        api = cluster.nodes[0].api
        api.post(f"/groups/{self.group}/offline", {}, timeout=30)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                resources = api.get("/resources", timeout=1)
            except ApiError:
                resources = None
            offline = resources is not None and all(
                r["status"]["state"] == "offline" for r in resources if r["group"] == self.group)
            qemus = [p for p in (self._pid_in(n.name) for n in cluster.nodes) if p and pid_alive(p)]
            if offline and not qemus:
                return
            time.sleep(0.2)
        raise RuntimeError(f"group {self.group} did not go offline (no QEMU left) within {limit}s")

    def _pid_in(self, node_name):
        try:
            with open(os.path.join(self.run_dir(node_name), "pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def guest_records(self):
        """(boots [(id, epoch)], alive [(id, seq, epoch)]) from a copy of data.img."""
        copy = os.path.join(self.workdir, "inspect.img")
        shutil.copyfile(self.image, copy)
        _run(["e2fsck", "-f", "-y", copy], ok=(0, 1))  # 1: fixed (a replayed journal counts)
        boots_text = _run(["debugfs", "-R", "cat /boots.log", copy]).stdout
        alive_text = _run(["debugfs", "-R", "cat /alive.log", copy]).stdout
        boots, alive, bad = [], [], []
        for line in boots_text.splitlines():
            f = line.split()
            if len(f) == 4 and f[0] == "boot" and f[2].isdigit():
                boots.append((f[1], int(f[2])))
        for line in alive_text.splitlines():
            f = line.split()
            if len(f) == 4 and f[0] == "alive" and f[2].isdigit() and f[3].isdigit():
                alive.append((f[1], int(f[2]), int(f[3])))
            elif line.strip():
                bad.append(line)
        return boots, alive, bad

    def final_check(self, cluster):
        """With the group offline: the guests' own records show the boots the API showed,
        one writer at a time (as assert_one_writer_at_a_time in the Rust lab test)."""
        problems = []
        try:
            h = cluster.wait_healthy()
            self.unexpected_boot(h)
            if h.seen:
                self.check_disk(h.owner, h.seen[2])
                self.wait_seq(cluster, h.owner, h.seen[2])
            self.take_offline(cluster)
            boots, alive, bad = self.guest_records()
        except (RuntimeError, VmError, ApiError, OSError) as e:
            return [f"cannot check the guests' records on {self.image}: {e}"]
        ids = [b for b, _ in boots]
        if ids != self.boots:
            problems.append(f"the boots on the data disk {ids} are not the guests the API showed {self.boots}")
        if bad:
            problems.append(f"{len(bad)} unexpected lines in alive.log, e.g. {bad[0]!r}")
        index = {b: k for k, b in enumerate(ids)}
        last = 0
        counts = [0] * len(ids)
        for n, (bid, seq, epoch) in enumerate(alive):
            k = index.get(bid)
            if k is None:
                problems.append(f"alive.log line {n + 1}: unknown boot {bid}")
                continue
            if k < last:
                problems.append(f"alive.log line {n + 1} (boot {bid}, seq {seq}) comes after lines of the later boot "
                                f"{ids[last]}: two guests wrote at once")
            last = max(last, k)
            counts[k] += 1
            if k + 1 < len(boots) and epoch > boots[k + 1][1]:
                problems.append(f"boot {bid} wrote alive seq {seq} at {epoch} after boot {ids[k + 1]} had started at "
                                f"{boots[k + 1][1]}: two guests wrote at once")
        log(f"guest records on a copy of data.img: {len(ids)} boots, alive lines per boot {counts}; "
            + ("one writer at a time: OK" if not problems else f"{len(problems)} problem(s)"))
        return problems

"""Workloads: what the benchmark's group runs, and how to tell that it answers.

A workload is a small class with:
  name                     the --workload value
  group, resource          the names it creates
  node_env(node)           extra environment for that node's agent (inherited by resources)
  create(api)              creates the group and its resources through the REST API
  probe(ip, timeout)       (node name, pid, ...) if the service answers on that node's address, else None
  before_fault(cluster, h) called right before the fault, `h` the healthy state
  noticed(seen, node)      called once the new copy is seen (is_new)
  is_new(seen, node, old)  whether `seen` (a probe's answer from `node`) is a new copy on that node,
                           `old` being the probe's answer from the failed owner before the fault
  safety(r, victim)        the per-run safety check: sets r.safe and r.safety (a sentence)
  final_check(cluster)     after the last run: a list of safety problems (empty if none)
  default_runs             --runs when not given
  service_label            what the "service" time is called in the output

`ProcessWorkload` is a TCP service (service.rs compiled, or service.py with --service
python); `VmWorkload` a QEMU guest (vm_workload.py).
"""

import hashlib
import os
import socket
import subprocess
import sys
import time

from .evidence import Evidence

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICE_PY = os.path.join(HERE, "service.py")
SERVICE_RS = os.path.join(HERE, "service.rs")


def cache_dir():
    """The benchmark's cache: ${XDG_CACHE_HOME:-~/.cache}/haven/bench."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "haven", "bench")


def build_native_service():
    """Compiles service.rs (std only) to <cache>/service-<hash of service.rs> unless it is
    there; returns its path. (Keyed by the source, not its mtime: checkouts share the cache.)"""
    with open(SERVICE_RS, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    out_dir = cache_dir()
    exe = os.path.join(out_dir, f"service-{digest}")
    if os.access(exe, os.X_OK):
        return exe
    os.makedirs(out_dir, exist_ok=True)
    # Built under a temporary name and renamed, so that a concurrent run never starts a
    # half-written program.
    tmp = f"{exe}.tmp.{os.getpid()}"
    try:
        r = subprocess.run(["rustc", "-O", "--edition", "2021", "-o", tmp, SERVICE_RS])
    except OSError as e:
        raise RuntimeError(f"cannot run rustc ({e}); install Rust or run with --service python") from None
    if r.returncode != 0:
        raise RuntimeError(f"rustc could not build {SERVICE_RS}; run with --service python instead")
    os.replace(tmp, exe)
    return exe


class ProcessWorkload:
    name = "process"
    group = "bench"
    resource = "svc"
    port = 18080
    default_runs = 10
    service_label = "service"
    log_resources = {}
    # The service's program: set by bench/failover (--service). The compiled one by default.
    service_argv = [sys.executable, SERVICE_PY]

    def __init__(self, workdir, mode):
        self.mode = mode
        self.evidence_path = os.path.join(workdir, "evidence.log")
        self.evidence = Evidence(self.evidence_path)

    def node_env(self, node):
        return {"HAVEN_BENCH_ADDR": node.ip, "HAVEN_BENCH_NODE": node.name}

    def params(self):
        if self.mode == "isolate":
            # Each node has its own network stack: listen everywhere in the node's namespace
            # and check through its loopback with the `tcp` check.
            bind = "0.0.0.0"
            check = {"kind": "tcp", "address": f"127.0.0.1:{self.port}", "timeout": "1s"}
        else:
            # All nodes share the host's loopback; the check must reach *this* node's copy,
            # whose address is only known on the node (HAVEN_BENCH_ADDR), so it is a command
            # that opens a TCP connection to it.
            bind = "env"
            check = {
                "kind": "command",
                "argv": ["bash", "-c", f"exec 3<>/dev/tcp/$HAVEN_BENCH_ADDR/{self.port}"],
                "timeout": "1s",
            }
        return {
            "argv": [*self.service_argv, str(self.port), self.evidence_path, bind],
            "check": check,
            # The service appends to the bench's evidence file in its own (private) work
            # directory: it runs as root, which a process resource must ask for.
            "user": "root",
        }

    def create(self, api):
        # failover_threshold: the default (nodes - 1 per 6 h) would leave the group failed
        # after the second run; the benchmark fails it over on purpose, N times.
        api.post("/groups", {"name": self.group, "failover_threshold": 1000})
        api.post(
            "/resources",
            {
                "name": self.resource,
                "group": self.group,
                "type": "process",
                "params": self.params(),
                "props": {"looks_alive_interval": "500ms", "is_alive_interval": "2s"},
            },
        )

    def probe(self, ip, timeout=0.2):
        try:
            with socket.create_connection((ip, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        parts = data.decode(errors="replace").split()
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])

    def before_fault(self, cluster, h):
        self.evidence.read()

    def is_new(self, seen, node, old):
        return seen[0] == node

    def noticed(self, seen, node):
        pass

    def safety(self, r, victim):
        """The old copy must be gone (killed, or self-fenced), and its last evidence line
        must come before the new copy's first."""
        time.sleep(0.05)  # let the new copy's lines reach the file
        old = self.evidence.by_pid(r.old_pid, victim.name)
        new = self.evidence.by_pid(r.new_pid, r.service_node) if r.new_pid else None
        old_last = None if old is None else (old.last - r.t0_wall) / 1e9
        new_first = None if new is None else (new.first - r.t0_wall) / 1e9
        r.safe = old is not None and new is not None and not r.old_alive and old.last < new.first
        if r.safe:
            r.safety = f"overlap check OK (old copy's last line {old_last:+.3f} s, new copy's first {new_first:+.3f} s)"
        elif r.old_alive:
            r.safety = f"overlap check FAILED: the old copy (pid {r.old_pid}) is still running"
        elif old_last is None or new_first is None:
            r.safety = "overlap check FAILED: no evidence lines of the old or the new copy"
        else:
            r.safety = f"overlap check FAILED: old copy's last line {old_last:+.3f} s >= new copy's first {new_first:+.3f} s"

    def final_check(self, cluster):
        return [f"copies {a} and {b} ran at the same time (evidence {self.evidence_path})"
                for a, b in self.evidence.overlaps()]


from .vm_workload import VmWorkload  # noqa: E402

WORKLOADS = {"process": ProcessWorkload, "vm": VmWorkload}

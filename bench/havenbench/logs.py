"""Where a failover's time went, from the agents' logs (tracing's RFC 3339 UTC timestamps).

Steps, in seconds after the fault (first matching line after it):
  fenced    the cut-off owner killed its resources (lease lost; isolate mode)
  elected   a survivor became Raft leader (only when the old owner was the leader)
  down      the leader's controller declared the node down (lease + margin expired)
  placed    the controller placed the group on another node (failover)
  started   the new owner's LRM finished starting the resource (process up + check passed;
            vm: QMP reports the VM running)
  disk, config (vm workload) the new owner's LRM started the volume / the VM definition
Also: any survivor that lost its own lease meanwhile (it should not).
"""

import datetime
import os
import re

_TS = re.compile(r"^(?:\x1b\[[0-9;]*m)*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _epoch_ns(line):
    m = _TS.match(line)
    if not m:
        return None
    dt = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    frac = m.group(2) or ".0"
    return int(dt.timestamp()) * 1_000_000_000 + int(round(float(frac) * 1e9))


def _lines_after(path, t0_ns):
    try:
        with open(path, errors="replace") as f:
            for line in f:
                t = _epoch_ns(line)
                if t is not None and t >= t0_ns:
                    yield t, _ANSI.sub("", line)
    except FileNotFoundError:
        return


def _started_re(resource):
    # "resource=vm1" must not match "resource=vm1-config"
    return re.compile(r"\sstarted\b.*\bresource=" + re.escape(resource) + r"(\s|$)|\bresource="
                      + re.escape(resource) + r"(\s|$).*\sstarted\b")


def breakdown(cluster, t0_ns, victim, new_owner):
    steps = {}
    resource = cluster.workload.resource
    started = {"started": _started_re(resource)}
    for key, name in getattr(cluster.workload, "log_resources", {}).items():
        started[key] = _started_re(name)

    def first(key, t):
        if key not in steps:
            steps[key] = (t - t0_ns) / 1e9

    for node in cluster.nodes:
        path = os.path.join(node.dir, "agent.log")
        for t, line in _lines_after(path, t0_ns):
            if node.name == victim:
                if "lease lost: killing" in line:
                    first("fenced", t)
                continue
            if "this node is the leader" in line:
                first("elected", t)
            elif "controller decision" in line and "rule=NodeLiveness" in line and "no heartbeat" in line:
                first("down", t)
            elif "controller decision" in line and "rule=Failover" in line:
                first("placed", t)
            elif "lease lost" in line:
                first(f"lease_lost_on_{node.name}", t)
            elif node.name == new_owner and " started" in line:
                for key, rx in started.items():
                    if rx.search(line):
                        first(key, t)
    return steps


ORDER = ["fenced", "elected", "down", "placed", "disk", "config", "qemu", "started", "beat", "guest"]


def describe(steps):
    parts = [f"{k} {steps[k]:+.3f}" for k in ORDER if k in steps]
    parts += [f"{k} {v:+.3f}" for k, v in sorted(steps.items()) if k not in ORDER]
    return ", ".join(parts) if parts else "(nothing found)"

"""Workloads: what the benchmark's group runs, and how to tell that it answers.

A workload is a small class with:
  name                     the --workload value
  group, resource          the names it creates
  node_env(node)           extra environment for that node's agent (inherited by resources)
  create(api)              creates the group and its resources through the REST API
  probe(ip, timeout)       (node name, pid) if the service answers on that node's address, else None
  evidence                 an Evidence reader of the copies' liveness lines (see evidence.py)

A later `vm` workload adds a class here and an entry in WORKLOADS.
"""

import os
import socket
import sys

from .evidence import Evidence

SERVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "service.py")


class ProcessWorkload:
    name = "process"
    group = "bench"
    resource = "svc"
    port = 18080

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
            "argv": [sys.executable, SERVICE, str(self.port), self.evidence_path, bind],
            "check": check,
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


WORKLOADS = {"process": ProcessWorkload}

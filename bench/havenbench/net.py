"""Where the nodes live on this machine.

`LoopbackNet`: every agent on its own loopback address (127.77.K.i), all in the root
network namespace. Faults: kill only.

`NetnsNet`: every agent in its own network namespace, joined by a veth pair to a bridge
in the root namespace (node i is 10.213.K.i/24, the bridge 10.213.K.254). Faults: cut a
node's link (the root-side veth goes down) and heal it.
"""

import os
import shutil
import subprocess

from .util import warn


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


class LoopbackNet:
    kind = "loopback"

    def __init__(self, k):
        self.k = k

    def ip(self, i):
        return f"127.77.{self.k}.{i}"

    def prefix(self, i):
        return []

    def setup(self, n):
        pass

    def teardown(self):
        pass


def netns_unavailable():
    """None if network namespaces can be used here, else the reason."""
    if os.geteuid() != 0:
        return "isolate mode needs root (network namespaces, veth, bridge)"
    if shutil.which("ip") is None:
        return "isolate mode needs the `ip` command (Debian package iproute2)"
    name = f"hvbench-probe-{os.getpid()}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    r = _ip("link", "add", f"hvprobe{os.getpid() % 100000}", "type", "bridge", check=False)
    if r.returncode != 0:
        return f"cannot create a bridge: {r.stderr.strip()}"
    _ip("link", "del", f"hvprobe{os.getpid() % 100000}", check=False)
    return None


class NetnsNet:
    kind = "netns"

    def __init__(self, k):
        self.k = k
        self.bridge = f"hvbr{k}"
        self.created_ns = []
        self.created_links = []

    def ip(self, i):
        return f"10.213.{self.k}.{i}"

    def ns(self, i):
        return f"hvbench-{self.k}-{i}"

    def veth(self, i):
        return f"hvv{self.k}-{i}"

    def prefix(self, i):
        return ["ip", "netns", "exec", self.ns(i)]

    def setup(self, n):
        self.teardown()  # leftovers of an interrupted earlier run with the same K
        _ip("link", "add", self.bridge, "type", "bridge")
        self.created_links.append(self.bridge)
        _ip("addr", "add", f"10.213.{self.k}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, n + 1):
            ns, veth, peer = self.ns(i), self.veth(i), f"hvp{self.k}-{i}"
            _ip("netns", "add", ns)
            self.created_ns.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            self.created_links.append(veth)
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")

    def isolate(self, i):
        _ip("link", "set", self.veth(i), "down")

    def heal(self, i):
        _ip("link", "set", self.veth(i), "up")

    def teardown(self):
        # Deleting a namespace deletes the veth end in it, and with it the pair.
        for i in range(1, 10):
            if _ip("netns", "del", self.ns(i), check=False).returncode == 0:
                pass
            _ip("link", "del", self.veth(i), check=False)
        r = _ip("link", "del", self.bridge, check=False)
        if r.returncode != 0 and "Cannot find device" not in r.stderr and self.bridge in self.created_links:
            warn(f"could not delete bridge {self.bridge}: {r.stderr.strip()}")
        self.created_ns.clear()
        self.created_links.clear()

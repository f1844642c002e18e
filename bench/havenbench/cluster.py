"""A cluster of real `haven agent` processes on this machine, one session per agent."""

import os
import signal
import subprocess
import time

from .util import Api, ApiError, kill_session, pid_alive, session_members, warn

AGENT_PORT = 7400


class Node:
    def __init__(self, i, ip, workdir):
        self.i = i
        self.id = i
        self.name = f"node{i}"
        self.ip = ip
        self.addr = f"{ip}:{AGENT_PORT}"
        self.dir = os.path.join(workdir, self.name)
        self.api = Api(self.addr)
        self.proc = None

    def __repr__(self):
        return self.name


class Healthy:
    """A steady state: every node up with a lease, the group online on `owner`, its service
    answering there from the copy with pid `pid`."""

    def __init__(self, owner, leader, generation, pid, stale=None, seen=None):
        self.seen = seen  # the workload's probe answer from the owner
        self.stale = stale  # a resource status reported by another node than the owner (agent bug)
        self.owner = owner
        self.leader = leader
        self.generation = generation
        self.pid = pid


class Cluster:
    def __init__(self, haven, workdir, profile, net, workload, n=3):
        self.haven = haven
        self.workdir = workdir
        self.profile = profile
        self.net = net
        self.workload = workload
        self.nodes = [Node(i, net.ip(i), workdir) for i in range(1, n + 1)]

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    # -- processes ------------------------------------------------------------------

    def write_config(self, node):
        os.makedirs(node.dir, exist_ok=True)
        with open(os.path.join(node.dir, "agent.toml"), "w") as f:
            f.write(
                f'id = {node.id}\nname = "{node.name}"\nlisten = "{node.addr}"\n'
                f'state_dir = "{os.path.join(node.dir, "state")}"\n'
                # The bench reaches the API over plain HTTP; in network namespaces (not
                # loopback) the agent must be told it may. Peer traffic is mutual TLS anyway.
                f'plain_http_api = true\n\n'
                f'[timing]\nprofile = "{self.profile}"\n'
            )

    def spawn(self, node):
        """Starts the node's agent in a session of its own (so the node can be killed whole)."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(self.workload.node_env(node))
        logf = open(os.path.join(node.dir, "agent.log"), "ab")
        cmd = self.net.prefix(node.i) + [self.haven, "agent", "--config", os.path.join(node.dir, "agent.toml")]
        node.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, env=env, cwd=node.dir
        )
        logf.close()
        with open(os.path.join(node.dir, "agent.pid"), "w") as f:
            f.write(str(node.proc.pid))

    def kill(self, node, mark):
        """SIGKILLs the node's whole session (agent and resources); `mark` timestamps the
        moment right before the first kill(2)."""
        n = kill_session(node.proc.pid, on_first_kill=mark)
        node.proc.wait()
        return n

    def start(self):
        self.net.setup(len(self.nodes))
        for node in self.nodes:
            self.write_config(node)
            self.spawn(node)
        for node in self.nodes:
            self.wait(f"agent {node.name} to answer on {node.addr}", 30, lambda n=node: self._answers(n))
        first = self.nodes[0]
        init = first.api.post("/cluster/init", {"name": "bench"}, timeout=30)
        Api.token = init["admin_token"]
        if len(self.nodes) > 1:
            # One join token for all the other nodes, and the CA fingerprint they check.
            token = first.api.post("/cluster/join-tokens", {"uses": len(self.nodes) - 1}, timeout=30)
            for node in self.nodes[1:]:
                join = {"address": first.addr, "token": token["token"], "ca_fingerprint": token["ca_fingerprint"]}
                node.api.post("/cluster/join", join, timeout=30)
        self.wait("all nodes to be up", 60, self._all_up)
        self.workload.create(first.api)

    def _answers(self, node):
        if node.proc.poll() is not None:
            raise RuntimeError(f"agent {node.name} exited with status {node.proc.returncode}; see {node.dir}/agent.log")
        try:
            node.api.get("/cluster", timeout=0.5)
            return True
        except ApiError:
            return False

    def _all_up(self):
        try:
            nodes = self.nodes[0].api.get("/nodes", timeout=1)
        except ApiError:
            return False
        return len(nodes) == len(self.nodes) and all(n["status"] == "up" for n in nodes)

    def stop(self):
        """Stops every agent (SIGTERM, then SIGKILL of its whole session) and the network."""
        for node in self.nodes:
            if node.proc and node.proc.poll() is None:
                try:
                    os.kill(node.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for node in self.nodes:
            if not node.proc:
                continue
            while node.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            kill_session(node.proc.pid)
            try:
                node.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                warn(f"agent {node.name} (pid {node.proc.pid}) did not exit")
        try:
            self.net.teardown()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            warn(f"network cleanup: {e}")

    def leftovers(self):
        return [p for node in self.nodes if node.proc for p in session_members(node.proc.pid)]

    # -- observation ------------------------------------------------------------------

    @staticmethod
    def wait(what, limit, check, interval=0.1):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(interval)
        raise RuntimeError(f"timed out after {limit}s waiting for {what}")

    def view(self, api, timeout=0.5):
        """(group, resource) as `api`'s node sees them."""
        groups = api.get("/groups", timeout=timeout)
        resources = api.get("/resources", timeout=timeout)
        g = next((g for g in groups if g["name"] == self.workload.group), None)
        r = next((r for r in resources if r["name"] == self.workload.resource), None)
        return g, r

    def healthy(self):
        """(Healthy, None) if the cluster is in a steady state now, else (None, why not)."""
        leader = None
        for node in self.nodes:
            try:
                st = node.api.get("/cluster", timeout=0.5)
            except ApiError as e:
                return None, str(e)
            if not st.get("lease_valid") or not st.get("leader"):
                return None, f"{node.name}: lease_valid={st.get('lease_valid')} leader={st.get('leader')}"
            leader = st["leader"]["name"]
        try:
            nodes = self.node(leader).api.get("/nodes", timeout=0.5)
            g, r = self.view(self.node(leader).api)
        except (ApiError, StopIteration) as e:
            return None, f"leader {leader}: {e}"
        if len(nodes) != len(self.nodes) or any(n["status"] != "up" for n in nodes):
            return None, "nodes: " + ", ".join(f"{n['name']} {n['status']}" for n in nodes)
        if not g or not r or not g.get("owner"):
            return None, "group has no owner"
        owner = g["owner"]
        st = r["status"]
        # A status reported by a node other than the owner is a stale report (a bug in the
        # agent, reported by the caller): accept it only if everything else is healthy.
        stale = None
        if st.get("node") != owner and st["state"] != "online":
            stale = f"{st['state']} on {st.get('node')} (reason: {st.get('reason')})"
        elif g["state"] != "online":
            return None, f"group: {g.get('state')} on {owner}"
        elif st["state"] != "online" or st.get("node") != owner:
            return None, f"resource: {st['state']} on {st.get('node')}"
        seen = self.workload.probe(self.node(owner).ip, timeout=0.5)
        if not seen or seen[0] != owner or not pid_alive(seen[1]):
            return None, f"service on {owner} ({self.node(owner).ip}): answered {seen}"
        return Healthy(owner, leader, g["generation"], seen[1], stale, seen), None

    def wait_healthy(self, limit=120, settle=1.0):
        """Waits for a steady state that still holds `settle` seconds later."""
        deadline = time.monotonic() + limit
        why = None
        while time.monotonic() < deadline:
            h, why = self.healthy()
            if h:
                time.sleep(settle)
                h2, why = self.healthy()
                if h2 and (h2.owner, h2.leader, h2.generation, h2.pid) == (h.owner, h.leader, h.generation, h.pid):
                    return h2
                why = why or "it changed within the settle time"
            time.sleep(0.2)
        raise RuntimeError(
            f"the cluster did not become healthy within {limit}s (last: {why}); see the agent logs in {self.workdir}"
        )

    def dump(self, path):
        """Writes what each reachable agent shows (for a post-mortem) to `path` as JSON."""
        import json

        out = {}
        for node in self.nodes:
            for what in ("/cluster", "/nodes", "/groups", "/resources", "/history"):
                try:
                    out[f"{node.name} {what}"] = node.api.get(what, timeout=2)
                except ApiError as e:
                    out[f"{node.name} {what}"] = str(e)
        with open(path, "w") as f:
            json.dump(out, f, indent=1)

    def move_group(self, to):
        self.nodes[0].api.post(f"/groups/{self.workload.group}/move", {"node": to}, timeout=30)

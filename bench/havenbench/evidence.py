"""The copies' evidence lines: "<run-dir> <pid> <time_ns>", appended by every running copy
of the service every ~10 ms to one shared file. A copy is (run-dir, pid); its lifetime as
far as the evidence shows is [first line, last line]."""

import os


class Instance:
    def __init__(self, run_dir, pid, t):
        self.run_dir = run_dir
        self.pid = pid
        self.first = t
        self.last = t
        self.lines = 1

    @property
    def node(self):
        # <workdir>/<nodeN>/state/run/<resource>
        parts = self.run_dir.rstrip("/").split("/")
        return parts[-4] if len(parts) >= 4 else self.run_dir

    def __repr__(self):
        return f"{self.node}/pid {self.pid}"


class Evidence:
    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.instances = {}  # (run_dir, pid) -> Instance
        self.bad_lines = 0

    def read(self):
        """Reads the lines appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in data[: end + 1].decode(errors="replace").splitlines():
            parts = line.rsplit(" ", 2)
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                self.bad_lines += 1
                continue
            key = (parts[0], int(parts[1]))
            t = int(parts[2])
            inst = self.instances.get(key)
            if inst is None:
                self.instances[key] = Instance(parts[0], int(parts[1]), t)
            else:
                inst.first = min(inst.first, t)
                inst.last = max(inst.last, t)
                inst.lines += 1

    def by_pid(self, pid, node=None):
        self.read()
        for inst in self.instances.values():
            if inst.pid == pid and (node is None or inst.node == node):
                return inst
        return None

    def overlaps(self):
        """Pairs of copies whose evidence intervals overlap (should be none)."""
        self.read()
        out = []
        latest = None
        for inst in sorted(self.instances.values(), key=lambda i: i.first):
            if latest is not None and inst.first <= latest.last:
                out.append((latest, inst))
            if latest is None or inst.last > latest.last:
                latest = inst
        return out

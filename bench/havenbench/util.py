"""Small shared helpers: the HTTP API client, session kills, statistics, printing."""

import json
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request

# Never go through a proxy: every address here is local.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg):
    print(msg, flush=True)


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class ApiError(Exception):
    pass


class Api:
    """A tiny client for one agent's /api/v1. `Api.token` (the cluster's admin API token,
    set once the cluster is founded) goes with every request."""

    token = None

    def __init__(self, addr, timeout=1.0):
        self.addr = addr
        self.timeout = timeout

    def _call(self, method, path, body=None, timeout=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.addr}/api/v1{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if Api.token:
            req.add_header("Authorization", f"Bearer {Api.token}")
        try:
            with _OPENER.open(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            raise ApiError(f"{method} {self.addr}{path}: HTTP {e.code}: {text}") from None
        except (OSError, ValueError) as e:
            raise ApiError(f"{method} {self.addr}{path}: {e}") from None

    def get(self, path, timeout=None):
        return self._call("GET", path, timeout=timeout)

    def post(self, path, body, timeout=None):
        return self._call("POST", path, body, timeout=timeout)


def session_members(sid):
    """Live (non-zombie) processes whose session id is `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        # rest: state ppid pgrp session ...
        if len(rest) > 3 and rest[0] != "Z" and rest[3] == str(sid):
            out.append(int(entry))
    return out


def kill_session(sid, sig=signal.SIGKILL, on_first_kill=None):
    """Sends `sig` to every process of session `sid` until none is left (bounded).

    `on_first_kill` is called right before the first kill(2), to timestamp the fault."""
    total = 0
    first = True
    for _ in range(50):
        members = session_members(sid)
        if not members:
            break
        if first and on_first_kill:
            on_first_kill()
        first = False
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        total += len(members)
        if sig != signal.SIGKILL:
            return total
        time.sleep(0.02)
    return total


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def summary(values):
    """(min, median, max) of a non-empty list."""
    return min(values), statistics.median(values), max(values)


def fmt_s(v):
    return "-" if v is None else f"{v:.3f}"

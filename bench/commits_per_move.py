#!/usr/bin/env python3
"""Counts the Raft commits that planned moves cost (issue 11's write-path question).

Starts `haven demo --no-vm` (3 agents on 127.0.0.1:7401-7403) in a scratch directory,
creates 10 groups of one `sleep` resource each, issues 40 `move` requests back to back
(each group 4 times, alternating targets), waits until every group is online again and
prints the commits (the agents' applied index) per move. Usage:

    bench/commits_per_move.py [path/to/haven]      # default target/release/haven

Measured 2026-12-01 on a debug build of 35b4b7f: 178 commits, 4.5 per move (issue 11 had
measured 88 per move before the report queue dropped duplicate releases); 3.4-3.5 per move
once reports were batched and each controller tick became one commit (`bench/scale
--measure move` measures the same on a release build: 3.95 at 8 nodes).
"""
import json, shutil, signal, subprocess, sys, tempfile, time, urllib.request, urllib.error
H="http://127.0.0.1:7401"
TOKEN=""  # the demo's admin API token, from its admin.token once it is written
def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type":"application/json"}
    if TOKEN: headers["authorization"] = "Bearer " + TOKEN
    r = urllib.request.Request(H+path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(r, timeout=30) as f: return json.loads(f.read() or b"null")
    except urllib.error.HTTPError as e: return json.loads(e.read())
d=tempfile.mkdtemp(prefix="haven-moves-"); shutil.rmtree(d)
haven = sys.argv[1] if len(sys.argv) > 1 else "target/release/haven"
p = subprocess.Popen([haven, "demo", "--no-vm", "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
for _ in range(120):
    try:
        s=req("GET","/api/v1/cluster")
        if s.get("leader"): break
    except Exception: pass
    time.sleep(0.5)
else:
    p.send_signal(signal.SIGINT); sys.exit("the demo cluster did not come up within 60 s")
for _ in range(120):
    try:
        TOKEN=open(f"{d}/admin.token").read().strip()
        if TOKEN: break
    except OSError: pass
    time.sleep(0.5)
time.sleep(3)
nodes=[n["name"] for n in req("GET","/api/v1/nodes")]
G=10
for i in range(G):
    req("POST","/api/v1/groups",{"name":f"m{i}"})
    req("POST","/api/v1/resources",{"name":f"m{i}-r","group":f"m{i}","type":"process","params":{"argv":["sleep","infinity"]}})
def online(g):
    v=req("GET",f"/api/v1/groups/{g}")
    return v.get("state")=="online" and v.get("owner")
def settle(deadline=60):
    t=time.time()
    while time.time()-t<deadline:
        if all(online(f"m{i}") for i in range(G)): return True
        time.sleep(0.2)
    return False
settle(); time.sleep(2)
a0=req("GET","/api/v1/cluster")["applied_index"]; t0=time.time()
for k in range(40):
    g=f"m{k%G}"; cur=req("GET",f"/api/v1/groups/{g}")["owner"]
    tgt=[n for n in nodes if n!=cur][k%2]
    req("POST",f"/api/v1/groups/{g}/move",{"node":tgt})
settle(120); time.sleep(3)
a1=req("GET","/api/v1/cluster")["applied_index"]
print(f"40 moves of {G} groups (issued back to back): {a1-a0} commits ({(a1-a0)/40:.1f} per move), settled in {time.time()-t0-3:.1f}s")
p.send_signal(signal.SIGINT); p.wait(timeout=60)

#!/usr/bin/env python3
"""The server's system calls between a request and its `Pid` reply, from a plain `strace -p`
trace of the server (no -f): from the `recvmsg` that read a request on a connection to the
next `sendmsg` on that connection (the `Pid`), each call counted once per spawn.

    strace -o trace -p PID ...; benches/scripts/critical_path.py trace
"""
import collections
import re
import sys

CALL = re.compile(r"^(?:\d+ +)?([a-z_0-9]+)\((\d+)?")
lines = open(sys.argv[1]).read().splitlines()
spans = []
cur = None
for line in lines:
    m = CALL.match(line)
    if not m:
        continue
    name, fd = m.group(1), m.group(2)
    if name == "recvmsg" and "SCM_RIGHTS" in line:
        cur = (fd, [])
        continue
    if cur is None:
        continue
    if name == "sendmsg" and fd == cur[0]:
        spans.append(cur[1])
        cur = None
        continue
    cur[1].append(name)
total = collections.Counter()
for s in spans:
    total.update(s)
n = max(len(spans), 1)
print(f"{len(spans)} spawns; calls between the request and its Pid, per spawn:")
for name, c in total.most_common():
    print(f"  {name:<16} {c / n:.2f}")
print(f"  {'total':<16} {sum(total.values()) / n:.2f}")

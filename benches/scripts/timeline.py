#!/usr/bin/env python3
"""The timeline of one spawn, client and server side, from kernel tracepoints: median µs
from the client's `sendmsg` of the `Spawn` to each step, over every spawn of a
`compare --profile-loop` run recorded with `perf record` (which follows the harness, its
launched server and the children; nothing else on the machine is recorded):

    perf record -q -o spawn.data -e raw_syscalls:sys_enter,raw_syscalls:sys_exit \\
        -e sched:sched_switch,sched:sched_wakeup,exceptions:page_fault_user -- \\
        target/release/compare --profile-loop 2000 --fds 3 2>&1 | grep 'server pid'
    perf script -i spawn.data --ns -F tid,time,event,trace | benches/scripts/timeline.py SERVER_PID

A spawn runs from the client's `sendmsg` enter to the client's `recvmsg` exit that brings the
`Exit` (its second `recvmsg`). The steps are the server's system calls in between (enter and
exit), the scheduler's switches into and out of the server and the client, and the server's
page faults; the most common sequence of server calls is taken as the spawn's shape and the
spawns that follow it are summarised (the others are counted).
"""
import collections
import re
import statistics
import sys

NAMES = {0: "read", 1: "write", 3: "close", 14: "rt_sigprocmask", 45: "recvfrom",
         46: "sendmsg", 47: "recvmsg", 56: "clone", 61: "wait4", 62: "kill", 72: "fcntl",
         232: "epoll_wait", 281: "epoll_pwait", 435: "clone3", 7: "poll", 233: "epoll_ctl",
         293: "pipe2", 257: "openat", 439: "faccessat2", 202: "futex"}
LINE = re.compile(r"^\s*(\d+)\s+(\d+)\.(\d+):\s+(\S+):\s+(.*)$")

server = int(sys.argv[1])
events = []
for line in sys.stdin:
    m = LINE.match(line)
    if not m:
        continue
    tid, sec, frac, ev, rest = m.groups()
    t = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
    events.append((t, int(tid), ev, rest))

# The client thread: the one making most sendmsg calls, other than the server.
sends = collections.Counter(
    tid for _, tid, ev, rest in events
    if ev == "raw_syscalls:sys_enter" and rest.startswith("NR 46 ") and tid != server)
client = sends.most_common(1)[0][0]


def label(tid, ev, rest):
    """A step's name, or None for events that are not steps."""
    who = "server" if tid == server else "client" if tid == client else None
    if ev.startswith("raw_syscalls:sys_"):
        nr = int(rest.split()[1])
        if who is None:
            return None
        edge = "enter" if ev.endswith("enter") else "exit"
        return f"{who} {NAMES.get(nr, nr)} {edge}"
    if ev == "sched:sched_switch":
        prev = int(re.search(r"prev_pid=(\d+)", rest).group(1))
        nxt = int(re.search(r"next_pid=(\d+)", rest).group(1))
        for p, w in ((server, "server"), (client, "client")):
            if nxt == p:
                return f"{w} on cpu"
            if prev == p:
                return f"{w} off cpu"
        return None
    if ev == "exceptions:page_fault_user" and tid == server:
        return "server page fault"
    if ev == "sched:sched_wakeup":
        woken = int(re.search(r"pid=(\d+)", rest).group(1))
        if woken in (server, client):
            return f"wakeup {'server' if woken == server else 'client'}"
    return None


spawns, cur, recvs = [], None, 0
for t, tid, ev, rest in events:
    if tid == client and ev == "raw_syscalls:sys_enter" and rest.startswith("NR 46 "):
        cur, recvs = [(t, "client sendmsg enter")], 0
        continue
    if cur is None:
        continue
    lab = label(tid, ev, rest)
    if lab is None:
        continue
    cur.append((t, lab))
    if lab == "client recvmsg exit":
        recvs += 1
        if recvs == 2:
            spawns.append(cur)
            cur = None

shape = collections.Counter(tuple(l for _, l in s if l.startswith("server ") and "fault" not in l)
                            for s in spawns)
common, count = shape.most_common(1)[0]
print(f"{len(spawns)} spawns, {count} of the most common shape; median µs from the client's "
      "sendmsg enter (first occurrence of each step per spawn; server page faults counted)")
steps = collections.defaultdict(list)
faults = []
for s in spawns:
    if tuple(l for _, l in s if l.startswith("server ") and "fault" not in l) != common:
        continue
    t0 = s[0][0]
    seen = collections.Counter()
    for t, l in s:
        if l == "server page fault":
            continue
        seen[l] += 1
        steps[(l, seen[l])].append((t - t0) / 1000)
    faults.append(sum(1 for _, l in s if l == "server page fault"))
order = sorted(steps, key=lambda k: statistics.median(steps[k]))
for k in order:
    v = steps[k]
    if len(v) < count // 2:
        continue
    n = f" #{k[1]}" if k[1] > 1 else ""
    print(f"  {statistics.median(v):8.1f}  {k[0]}{n}  ({len(v)})")
print(f"  server page faults per spawn: median {statistics.median(faults)}")

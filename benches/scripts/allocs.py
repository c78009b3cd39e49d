# gdb script: the server's allocator calls between the end of a request's `recvmsg` and the
# next `sendmsg` (the `Pid` on the fork and CLONE_VM paths; the job's hand-off on the pooled
# path), over SPANS spawns.
#
#   gdb -q -batch -p PID -ex 'set $spans = 20' -x benches/scripts/allocs.py
import collections

import gdb

SYS_RECVMSG, SYS_SENDMSG = 47, 46  # x86-64
counts = collections.Counter()
state = {"in": False, "entered": set(), "spans": 0}


class Counting(gdb.Breakpoint):
    def stop(self):
        if state["in"]:
            counts[self.location] += 1
        return False


for fn in ["malloc", "calloc", "realloc", "free"]:
    Counting(fn, internal=True)
gdb.execute("catch syscall recvmsg sendmsg")
spans = int(gdb.parse_and_eval("$spans"))
while state["spans"] < spans:
    gdb.execute("continue", to_string=True)
    nr = int(gdb.parse_and_eval("$orig_rax"))
    entering = nr not in state["entered"]
    if entering:
        state["entered"].add(nr)
    else:
        state["entered"].discard(nr)
    if nr == SYS_RECVMSG and not entering and int(gdb.parse_and_eval("$rax")) > 0:
        state["in"] = True
    elif nr == SYS_SENDMSG and entering and state["in"]:
        state["in"] = False
        state["spans"] += 1
print(f"{spans} spawns; allocator calls between the request and the next sendmsg, per spawn:")
for fn, c in sorted(counts.items()):
    print(f"  {fn:<8} {c / spans:.2f}")
gdb.execute("detach")

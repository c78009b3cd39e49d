"""The typed entry convention (spec/PROTOCOL.md §11, informative) checked against a live zygote:
the conformance zygote of spec/conformance/zygote.rs, whose entries and type names its module
doc lists. Calls go through spec/clients/python/forkserver_typed.py (written from §11 alone)
with the JSON codec. Run by conformance.py --zygote-socket; `check` and `require` are its.
"""

import os
import re
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
import forkserver_client as fc  # noqa: E402
import forkserver_typed as ft  # noqa: E402

# The type names of the conformance zygote's entries (std::any::type_name, §11.2).
SIZE = "conformance_zygote::Size"
ITEM = "conformance_zygote::Item"
OP = "conformance_zygote::Op"
STRING = "alloc::string::String"
BYTES = "alloc::vec::Vec<u8>"
# A panic's location: the entry's source file, line and column (§11.3 Panic frame).
LOCATION = re.compile(r"(^|/)zygote\.rs:\d+:\d+$")


def run(sock, check, require, timeout):
    def client():
        return fc.Client(sock, timeout=timeout)

    def call(entry, arg, arg_type, result_type, **kw):
        return ft.call_json(client(), entry, arg, arg_type, result_type, **kw)

    def value():
        got = call("area", [800, 600], "(u32, u32)", "u64")
        require(got == ("value", 480000), f"{got}")
    check("typed/value: a tuple in, a number out", value)

    def struct_value():
        got = call("halve", {"w": 8, "h": 4, "label": "x"}, SIZE, SIZE)
        require(got == ("value", {"w": 4, "h": 2, "label": "x halved"}), f"{got}")
    check("typed/struct: a struct with a flattened field in and out", struct_value)

    def flatten_untagged():
        got = call("describe", {"name": "a", "side": 2}, ITEM, STRING)
        require(got == ("value", "a: a square of side 2"), f"{got}")
        got = call("describe", {"name": "b", "w": 2, "h": 3}, ITEM, STRING)
        require(got == ("value", "b: a 2x3 rectangle"), f"{got}")
    check("typed/untagged-in-flatten: the whole serde data model in JSON (§11.5)", flatten_untagged)

    def error():
        got = call("halve", {"w": 3, "h": 4, "label": "x"}, SIZE, SIZE)
        require(got == ("error", "cannot halve 3x4"), f"{got}")
    check("typed/error: the entry's Err text in an Error frame", error)

    def panic():
        got = call("panics", 7, "u32", "u32")
        require(got[:2] == ("panic", "typed panic 7"), f"{got}")
        require(LOCATION.search(got[2]), f"location {got[2]!r}, expected .../zygote.rs:LINE:COL")
    check("typed/panic: the message and the location in a Panic frame", panic)

    def exited():
        got = call("exits", 4, "i32", "u32")
        require(got == ("exited", 4), f"{got}")
    check("typed/exit: process::exit in the entry, after Accepted, is exited", exited)

    def deadline():
        got = call("sleeps", 60_000, "u64", "u64", deadline_ms=100)
        require(got == ("killed", 9, True), f"{got}")
    check("typed/deadline: a child killed at its deadline is killed with the flag", deadline)

    def short_sleep():
        got = call("sleeps", 1, "u64", "u64")
        require(got == ("value", 1), f"{got}")
    check("typed/short-sleep: the value of an entry that slept", short_sleep)

    def mismatch():
        got = call("area", [1, 2], "(u32, u32)", "u32")
        require(got[0] == "mismatch", f"{got}")
    check("typed/mismatch: another result type is a Mismatch, the entry never runs", mismatch)

    def untyped():
        got = call("untyped", 1, "u32", "u32")
        require(got == ("mismatch", "not a typed entry"), f"{got}")
    check("typed/untyped-entry: the channel ends before Accepted: a mismatch", untyped)

    def unknown():
        got = call("nope", 1, "u32", "u32")
        require(got == ("mismatch", "no such entry"), f"{got}")
    check("typed/unknown-entry: Error(UnknownEntry) at spawn: a mismatch", unknown)

    def bad_header():
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            child = client().spawn_entry("area", b"FSTX" + bytes(28), fds={3: theirs.fileno()})
            theirs.close()
            code = child.wait()
            require(code == 125, f"exit {code}, expected 125 (§11.2)")
            ours.settimeout(timeout)
            require(ours.recv(ft.MAX_RESULT_FRAME_LEN + 1) == b"", "the child wrote on the channel")
        finally:
            ours.close()
            if theirs.fileno() >= 0:
                theirs.close()
    check("typed/bad-magic: exit status 125, nothing on the channel (§11.2)", bad_header)

    def memfd_small():
        got = call("digest", [1, 2, 3], BYTES, "(u64, u64)", inline_max=0)
        require(_plain(got) == ["value", [3, ft.fnv1a64(bytes([1, 2, 3]))]], f"{got}")
    check("typed/memfd: an argument in a sealed memfd (§11.8) arrives whole", memfd_small)

    def memfd_large():
        data = bytes(i % 251 for i in range(300_000))
        got = call("digest", list(data), BYTES, "(u64, u64)")
        require(_plain(got) == ["value", [len(data), ft.fnv1a64(data)]], f"{got}")
    check("typed/memfd-large: an argument over the payload's limit, in a memfd (§11.8)",
          memfd_large)

    def memfd_unsealed():
        arg = b"[1,2,3]"
        fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, arg)
        fp = ft.fingerprint("digest", BYTES, "(u64, u64)", "json")
        payload = ft.encode_header("json", fp, 3, [], b"", memfd={"target": 4, "len": len(arg)})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            child = client().spawn_entry("digest", payload, fds={3: theirs.fileno(), 4: fd})
            theirs.close()
            os.close(fd)
            fd = -1
            ours.settimeout(timeout)
            frames = []
            while True:
                b = ours.recv(ft.MAX_RESULT_FRAME_LEN + 1)
                if not b:
                    break
                frames.append(ft.decode_frame(b))
            code = child.wait()
            require([f["type"] for f in frames] == ["Accepted", "Error"], f"{frames}")
            require("not sealed" in frames[1]["text"], f"{frames[1]}")
            require(code == 1, f"exit {code}, expected 1")
        finally:
            ours.close()
            if theirs.fileno() >= 0:
                theirs.close()
            if fd >= 0:
                os.close(fd)
    check("typed/memfd-unsealed: an unsealed memfd is refused before the entry runs (§11.8)",
          memfd_unsealed)

    def worker_state():
        got = ft.worker_json(client(), "counter",
                             [{"Add": 2}, {"Add": 3}, {"Fail": "no"}, {"Add": 1}], OP, "u64")
        want = (("accepted",), [("value", 2), ("value", 5), ("error", "no"), ("value", 6)],
                ("exited", 0))
        require(_plain(got) == _plain(want), f"{got}")
    check("worker/state: one child keeps its state over calls; an Err does not end it (§11.7)",
          worker_state)

    def worker_panic():
        start, answers, end = ft.worker_json(client(), "counter", [{"Add": 2}, "Panic", {"Add": 1}],
                                             OP, "u64")
        require(_plain(start) == ["accepted"], f"{start}")
        require(len(answers) == 2 and _plain(answers[0]) == ["value", 2], f"{answers}")
        require(answers[1][:2] == ("panic", "worker panic at 2"), f"{answers[1]}")
        require(LOCATION.search(answers[1][2]), f"location {answers[1][2]!r}")
        require(_plain(end) == ["exited", 101], f"{end}")
    check("worker/panic: a panic answers the call and ends the worker, status 101", worker_panic)

    def worker_mismatch():
        start, _, _ = ft.worker_json(client(), "counter", [], "u32", "u64")
        require(start[0] == "mismatch" and "is a worker" in start[1], f"{start}")
        start, _, _ = ft.worker_json(client(), "area", [], "(u32, u32)", "u64")
        require(start[0] == "mismatch" and "is a typed entry" in start[1], f"{start}")
    check("worker/mismatch: other types, or a one-call entry started as a worker", worker_mismatch)


def _plain(v):
    """Tuples as lists, for comparing the outcomes."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v

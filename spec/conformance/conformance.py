#!/usr/bin/env python3
"""Conformance checks of a live forkserver server against spec/PROTOCOL.md and spec/vectors/.

    python3 spec/conformance/conformance.py --socket PATH [-k PATTERN] [--slow]
        [--auth-socket PATH --key-file PATH] [--skip-credentials]
    python3 spec/conformance/conformance.py --zygote-socket PATH [-k PATTERN]

Prints one line per check (`PASS name` / `FAIL name: reason`) and a final `N passed, M failed`;
exits 1 if any check failed. Standard library only. The server must run without a key and
without entry points (a plain `forkserver serve`), as the same user as this script; with
--zygote-socket, the server is the conformance zygote (spec/conformance/zygote.rs, without a
key) and the checks are those of the typed entry convention (§11, typed_checks.py).
"""

import argparse
import errno
import json
import os
import re
import select
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "clients", "python"))
import forkserver_client as fc  # noqa: E402

VECTORS = os.path.join(HERE, "..", "vectors")
TIMEOUT = 5.0          # seconds to wait for any expected reply
QUIET = 2.0            # seconds of silence that count as "no reply"

SOCKET = None
RESULTS = [0, 0]
FILTER = None


def load(name):
    with open(os.path.join(VECTORS, name + ".json")) as f:
        data = json.load(f)
    assert data["protocol_version"] == 1
    return data["vectors"]


def report(name, ok, reason=""):
    if FILTER and not re.search(FILTER, name):
        return
    RESULTS[0 if ok else 1] += 1
    print(f"PASS {name}" if ok else f"FAIL {name}: {reason}", flush=True)


class CheckFailed(Exception):
    pass


def require(cond, reason):
    if not cond:
        raise CheckFailed(reason)


def check(name, fn, *args):
    """Run fn(*args); it passes unless it raises."""
    if FILTER and not re.search(FILTER, name):
        return
    try:
        fn(*args)
    except CheckFailed as e:
        report(name, False, str(e))
    except Exception as e:  # a crash of the check is a failure too
        report(name, False, f"{type(e).__name__}: {e} @ {traceback.extract_tb(e.__traceback__)[-1].lineno}")
    else:
        report(name, True)


# ---------------------------------------------------------------------------------------------
# A raw connection: send arbitrary bytes and fds, read what comes back.


class Raw:
    def __init__(self, hello=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(SOCKET)
        self.reader = fc.FrameReader(self.sock)
        if hello:
            self.send(fc.encode_hello())
            kind, msg, _ = self.next()
            require(kind == "msg" and msg["type"] == "HelloOk" and msg["auth"] == "none",
                    f"handshake: expected HelloOk(method 0), got {describe(kind, msg)}")

    def send(self, data, fds=()):
        """Send one frame (or any bytes) with fds per §4.3. Returns False if the server had
        already closed (EPIPE/ECONNRESET): its reply may still be readable."""
        try:
            fc.send_frame(self.sock, data, fds)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def send_plan(self, data, plan, fds):
        """Replay a transport vector: each step is one sendmsg of `bytes` bytes and `fds` fds."""
        pos, i = 0, 0
        for step in plan:
            chunk, f = data[pos:pos + step["bytes"]], fds[i:i + step["fds"]]
            pos, i = pos + step["bytes"], i + step["fds"]
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(struct.pack(f"{len(f)}i", *f)))] if f else []
            try:
                n = self.sock.sendmsg([chunk], anc, socket.MSG_NOSIGNAL)
                require(n == len(chunk), f"short sendmsg {n} < {len(chunk)}")
            except (BrokenPipeError, ConnectionResetError):
                return False
        return True

    def next(self, timeout=TIMEOUT):
        """('msg', message, fds) | ('eof', None, []) | ('timeout', None, []) |
        ('bad', DecodeError/ProtocolError, [])"""
        self.sock.settimeout(timeout)
        try:
            msg, fds = self.reader.read()
            return "msg", msg, fds
        except fc.ConnectionClosed:
            return "eof", None, []
        except socket.timeout:
            return "timeout", None, []
        except fc.ProtocolError as e:
            return "bad", e, []

    def expect(self, mtype, timeout=TIMEOUT):
        kind, msg, fds = self.next(timeout)
        require(kind == "msg" and msg["type"] == mtype, f"expected {mtype}, got {describe(kind, msg)}")
        return msg, fds

    def expect_error(self, name, then_eof=True, timeout=TIMEOUT):
        """`name` is one error name, or a tuple of the names allowed."""
        names = name if isinstance(name, tuple) else (name,)
        kind, msg, fds = self.next(timeout)
        require(kind == "msg" and msg["type"] == "Error" and msg["name"] in names,
                f"expected Error({'|'.join(names)}), got {describe(kind, msg)}")
        if then_eof:
            self.expect_eof()
        return msg

    def expect_eof(self, timeout=TIMEOUT):
        kind, msg, _ = self.next(timeout)
        require(kind == "eof", f"expected the server to close the connection, got {describe(kind, msg)}")

    def close(self):
        self.reader.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def describe(kind, msg):
    if kind != "msg":
        return f"{kind} {msg}" if msg else kind
    if msg["type"] == "Error":
        return f"Error({msg['name']}, errno {msg['errno']}: {msg['message']!r})"
    return repr({k: v for k, v in msg.items() if not isinstance(v, bytes) or len(v) < 40})


class Fds:
    """n open fds on /dev/null, closed on exit."""

    def __init__(self, n):
        self.fds = [os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC) for _ in range(n)]

    def __enter__(self):
        return self.fds

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)


def spawn_frame(job, targets=(), **kw):
    return fc.encode_spawn(job, list(targets), **kw)


def exec_job(argv, program=None, env=(), env_clear=False, cwd=None):
    return {"kind": "exec", "program": fc._b(program or argv[0]), "args": [fc._b(a) for a in argv],
            "env_clear": env_clear, "env": [(fc._b(k), fc._b(v)) for k, v in env],
            "cwd": fc._b(cwd) if cwd else None}


def read_all(fd, timeout=TIMEOUT):
    out, end = b"", time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        require(left > 0, "child output did not reach end of file in time")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                return out
            out += chunk


def run_child(argv, extra_fds=None, stdout_stat=None, **spawn):
    """Spawn argv through the client library with a pipe on fd 1; return (code, stdout, child).
    stdout_stat: a list to which the os.fstat of that pipe is appended."""
    r, w = os.pipe2(os.O_CLOEXEC)
    if stdout_stat is not None:
        stdout_stat.append(os.fstat(r))
    try:
        fds = {1: w}
        fds.update(extra_fds or {})
        child = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(argv, fds=fds, **spawn)
        os.close(w)
        w = None
        try:
            out = read_all(r)
            try:
                code = child.wait()
            except socket.timeout:
                raise CheckFailed(f"child {child.pid} ended (its stdout closed) but no Exit "
                                  f"within {TIMEOUT:.0f} s") from None
        finally:
            child.close()
        return code, out, child
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def server_status():
    return fc.Client(SOCKET, timeout=TIMEOUT).status()


def proc_stat(pid):
    """(pid, pgrp, session) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_stat(f.read())


def parse_stat(text):
    fields = text[text.rindex(")") + 2:].split()
    pid = int(text.split()[0])
    return pid, int(fields[2]), int(fields[3])


# ---------------------------------------------------------------------------------------------
# Checks


def handshake_checks(valid):
    byname = {v["name"]: v for v in valid}

    for name in ("hello-v1", "hello-v1-to-v3"):
        def hello(name=name):
            with Raw(hello=False) as c:
                c.send(bytes.fromhex(byname[name]["hex"]))
                msg, fds = c.expect("HelloOk")
                require(msg == {"type": "HelloOk", "version": 1, "auth": "none"} and not fds,
                        f"expected HelloOk(version 1, method 0), got {describe('msg', msg)}")
                c.send(fc.encode_status_request())
                c.expect("Status")
        check(f"valid/{name}: HelloOk version 1, then READY", hello)

    def unsupported():
        with Raw(hello=False) as c:
            c.send(fc.encode_hello(2, 3))
            c.expect_error("UnsupportedVersion")
    check("handshake/hello-2..=3: Error(UnsupportedVersion), closed", unsupported)

    def unsupported_high():
        with Raw(hello=False) as c:
            c.send(fc.encode_hello(65535, 65535))
            c.expect_error("UnsupportedVersion")
    check("handshake/hello-65535..=65535: Error(UnsupportedVersion), closed", unsupported_high)

    def first_not_hello():
        with Raw(hello=False) as c:
            c.send(fc.encode_status_request())
            c.expect_error("UnexpectedMessage")
    check("handshake/StatusRequest-before-Hello: Error(UnexpectedMessage)", first_not_hello)

    def spawn_first():
        with Raw(hello=False) as c:
            c.send(spawn_frame(exec_job(["/bin/true"])))
            c.expect_error("UnexpectedMessage")
    check("handshake/Spawn-before-Hello: Error(UnexpectedMessage), no child", spawn_first)

    def hello_twice():
        with Raw() as c:
            c.send(fc.encode_hello())
            c.expect_error("UnexpectedMessage")
    check("handshake/Hello-in-READY: Error(UnexpectedMessage)", hello_twice)

    def pipelined():
        with Raw(hello=False) as c:
            c.send(fc.encode_hello() + fc.encode_status_request() + fc.encode_status_request())
            c.expect("HelloOk")
            c.expect("Status")
            c.expect("Status")
    check("handshake/Hello+2xStatusRequest-in-one-write (§6.6 pipelining)", pipelined)

    def key_refused():
        try:
            fc.Client(SOCKET, key=b"k" * 32, timeout=TIMEOUT).status()
        except fc.ProtocolError:
            return
        raise CheckFailed("client with a key accepted a server offering method 0")
    check("auth/client-with-key-refuses-HelloOk-method-0 (§6.6, client side)", key_refused)

    def peer_closes_silently():
        with Raw(hello=False) as c:      # half a Hello, then end of stream: no reply (R7)
            c.send(fc.encode_hello()[:5])
            c.sock.shutdown(socket.SHUT_WR)
            c.expect_eof()
    check("handshake/half-a-Hello-then-EOF: closed without a reply (§4.3 R7)", peer_closes_silently)


def status_checks():
    def status():
        st = server_status()
        require(st["protocol_version"] == 1, f"protocol_version {st['protocol_version']}")
        require(st["connections"] >= 1, f"connections {st['connections']} (this one included)")
        require(os.path.exists(f"/proc/{st['server_pid']}"), f"server_pid {st['server_pid']} not a process")
        require(len(st["server_version"].encode()) <= 64, "server_version too long")
    check("status/fields", status)

    def counters():
        before = server_status()
        child = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(["sleep", "5"], kill_on_disconnect=True)
        try:
            st = child.status()
            require(st["live_children"] >= 1,
                    f"live_children {st['live_children']} with a child running")
            require(st["spawned_total"] >= before["spawned_total"] + 1,
                    f"spawned_total {st['spawned_total']} did not grow from {before['spawned_total']}")
            require(st["connections"] >= 1, "connections")
            require(child.signal(signal.SIGKILL), "Signal not acknowledged")
            require(child.wait() == -9, "exit code")
        finally:
            child.close()
    check("status/in-RUNNING: Status with live_children and spawned_total counted", counters)


def valid_vector_checks(valid):
    byname = {v["name"]: v for v in valid}

    def echo():
        v = byname["spawn-exec-echo"]
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            with Raw() as c:
                c.send(bytes.fromhex(v["hex"]), [w])
                os.close(w)
                w = None
                msg, fds = c.expect("Pid")
                require(not fds, "pidfd sent without WANT_PIDFD")
                require(read_all(r) == b"hi\n", "child output is not 'hi\\n'")
                msg, _ = c.expect("Exit")
                require(msg["code"] == 0 and not msg["deadline_expired"], f"exit {msg}")
                c.expect_eof()
        finally:
            os.close(r)
            if w is not None:
                os.close(w)
    check("valid/spawn-exec-echo: Pid, 'hi' on the pipe, Exit 0, closed", echo)

    # §10.8: pgid 4194304 (2^22) is no Linux pid, so no such process group exists on any host:
    # the child's setpgid fails before any id is changed, root or not.
    for name in ("spawn-join-pgid", "spawn-rev05-all"):
        def no_group(v=byname[name]):
            with Fds(v["nfds"]) as fds, Raw() as c:
                c.send(bytes.fromhex(v["hex"]), fds)
                msg, pidfds = c.expect("Pid")
                for fd in pidfds:
                    os.close(fd)
                err = c.expect_error("ChildSetupFailed")
                require(err["errno"] == errno.EPERM, f"errno {err['errno']}, not EPERM: {err}")
        check(f"valid/{name}: Pid, Error(ChildSetupFailed, EPERM) (no process group 4194304), closed",
              no_group)

    def full():
        v = byname["spawn-exec-full"]
        r, w = os.pipe2(os.O_CLOEXEC)
        with Fds(1) as (null,):
            try:
                with Raw() as c:
                    c.send(bytes.fromhex(v["hex"]), [null, w, w])
                    os.close(w)
                    w = None
                    msg, fds = c.expect("Pid")
                    for fd in fds:
                        os.close(fd)
                    require(read_all(r) == b"", "unexpected output")
                    msg, _ = c.expect("Exit")
                    require(msg["code"] == 3 and not msg["deadline_expired"], f"exit {msg}")
            finally:
                os.close(r)
                if w is not None:
                    os.close(w)
    check("valid/spawn-exec-full: Pid, Exit 3", full)

    def pidfd():
        v = byname["spawn-exec-full"]
        with Fds(3) as null, Raw() as c:
            c.send(bytes.fromhex(v["hex"]), null)
            msg, fds = c.expect("Pid")
            require(len(fds) == 1, "no pidfd although WANT_PIDFD is set and the kernel has pidfd_open")
            with open(f"/proc/self/fdinfo/{fds[0]}") as f:
                info = f.read()
            os.close(fds[0])
            m = re.search(r"^Pid:\s*(-?\d+)", info, re.M)
            require(m and int(m.group(1)) in (msg["pid"], -1), f"pidfd is not for pid {msg['pid']}: {info!r}")
            c.expect("Exit")
    check("valid/spawn-exec-full: Pid carries a pidfd for the child (§6.4 SHOULD)", pidfd)

    for v in valid:
        if v["decoded"]["type"] == "Spawn" and v["decoded"]["job"]["kind"] == "entry":
            def entry(v=v):
                with Fds(v["nfds"]) as fds, Raw() as c:
                    ok = c.send(bytes.fromhex(v["hex"]), fds)
                    c.expect_error("UnknownEntry")
                    require(ok, "server closed before the frame was sent")
            check(f"valid/{v['name']}: {v['nfds']} fds accepted, Error(UnknownEntry) (no entry points)", entry)

    for name, signo in (("signal-sigterm", 15), ("signal-64", 64)):
        def sig(name=name, signo=signo):
            with Raw() as c:
                c.send(spawn_frame(exec_job(["sleep", "10"]), kill_on_disconnect=True))
                c.expect("Pid")
                c.send(bytes.fromhex(byname[name]["hex"]))
                c.expect("Signaled")
                msg, _ = c.expect("Exit")
                require(msg["code"] == -signo, f"exit code {msg['code']}, expected {-signo}")
        check(f"valid/{name}: Signaled, then Exit {-signo}", sig)

    def status_vec():
        with Raw() as c:
            c.send(bytes.fromhex(byname["status-request"]["hex"]))
            msg, _ = c.expect("Status")
            c.send(bytes.fromhex(byname["status-request"]["hex"]))
            c.expect("Status")
    check("valid/status-request: Status, twice, connection stays READY", status_vec)

    def keep_connection():
        with Raw() as c:
            for code in (0, 5, 9):
                c.send(spawn_frame(exec_job(["sh", "-c", f"exit {code}"]), keep_connection=True))
                c.expect("Pid")
                msg, _ = c.expect("Exit")
                require(msg["code"] == code, f"exit code {msg['code']}, expected {code}")
            c.send(bytes.fromhex(byname["status-request"]["hex"]))
            c.expect("Status")
            c.send(spawn_frame(exec_job(["/nonexistent/x"]), keep_connection=True,
                               pid_after_exec=True))
            c.expect_error("ExecFailed", then_eof=False)
            c.send(spawn_frame(exec_job(["true"])))
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            require(msg["code"] == 0, f"exit code {msg['code']}")
            c.expect_eof()
    check("keep-connection: KEEP_CONNECTION returns to READY after Exit and ExecFailed; "
          "several spawns on one connection; closed after a Spawn without it (rev 0.3)",
          keep_connection)

    def keep_then_signal():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["true"]), keep_connection=True))
            c.expect("Pid")
            c.expect("Exit")
            c.send(bytes.fromhex(byname["signal-sigterm"]["hex"]))
            c.expect_error("UnexpectedMessage")
    check("keep-connection: a Signal after the Exit reaches READY: Error(UnexpectedMessage), closed",
          keep_then_signal)

    def auth_ready():
        with Raw() as c:
            c.send(bytes.fromhex(byname["auth"]["hex"]))
            c.expect_error("UnexpectedMessage")
    check("valid/auth: in READY of a keyless server, Error(UnexpectedMessage)", auth_ready)

    # Well-formed S->C messages sent by a client decode, and the state machine refuses them (§4.1).
    for v in valid:
        if v["decoded"]["type"] in ("HelloOk", "AuthOk", "Pid", "Exit", "Signaled", "Status",
                                    "Features", "Metrics", "Error"):
            for when in ("in-READY", "before-Hello"):
                def wrong_way(v=v, when=when):
                    with Fds(v["nfds"]) as fds, Raw(hello=(when == "in-READY")) as c:
                        c.send(bytes.fromhex(v["hex"]), fds)
                        c.expect_error("UnexpectedMessage")
                check(f"valid/{v['name']}/{when}: S->C message from a client, Error(UnexpectedMessage)", wrong_way)


def features_checks(valid):
    """§5.13, §5.14 (rev 0.6): the live server's Features against the spec's tables."""
    byname = {v["name"]: v for v in valid}
    request = bytes.fromhex(byname["features-request"]["hex"])

    def ask(c):
        c.send(request)
        msg, _ = c.expect("Features")
        return msg

    def listed():
        with Raw() as c:
            f = ask(c)
        require((f["revision_major"], f["revision_minor"]) >= (0, 6),
                f"revision {f['revision_major']}.{f['revision_minor']}, a Features needs 0.6 or later")
        missing = fc.SPAWN_FLAGS_MASK & ~f["spawn_flags"]
        require(not missing, f"spawn_flags 0x{f['spawn_flags']:x} lacks bits 0x{missing:x} of §5.5.1")
        requests = 0
        for t in (fc.SPAWN, fc.SIGNAL, fc.STATUS_REQUEST, fc.FEATURES_REQUEST, fc.METRICS_REQUEST):
            requests |= 1 << (t - 0x10)
        require(f["requests"] & requests == requests,
                f"requests 0x{f['requests']:x} lacks 0x{requests & ~f['requests']:x}")
    check("features/revision >= 0.6, spawn_flags has every bit of §5.5.1, requests 0x10-0x14", listed)

    def covers_the_vectors():
        with Raw() as c:
            f = ask(c)
        for v in valid:
            if v["decoded"]["type"] == "Spawn":
                flags = struct.unpack_from("<I", bytes.fromhex(v["hex"]), 8)[0]
                require(flags & ~f["spawn_flags"] == 0,
                        f"{v['name']} sets flags 0x{flags:x} outside spawn_flags 0x{f['spawn_flags']:x}")
    check("features/every valid-vector Spawn's flags are in spawn_flags", covers_the_vectors)

    def stays_ready():
        with Raw() as c:
            ask(c)
            ask(c)
            c.send(bytes.fromhex(byname["status-request"]["hex"]))
            c.expect("Status")
            c.send(spawn_frame(exec_job(["true"]), keep_connection=True))
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            require(msg["code"] == 0, f"exit code {msg['code']}")
            ask(c)                                # READY again under KEEP_CONNECTION
    check("features/the connection stays READY: Features twice, Status, a Spawn, Features again",
          stays_ready)

    def pipelined():
        with Raw(hello=False) as c:
            c.send(fc.encode_hello() + request)
            c.expect("HelloOk")
            c.expect("Features")
    check("features/Hello+FeaturesRequest in one write (§6.6 pipelining)", pipelined)

    def before_hello():
        with Raw(hello=False) as c:
            c.send(request)
            c.expect_error("UnexpectedMessage")
    check("features/FeaturesRequest before Hello: Error(UnexpectedMessage), closed", before_hello)

    def in_running():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["sleep", "5"]), kill_on_disconnect=True))
            c.expect("Pid")
            c.send(request)
            c.expect_error("UnexpectedMessage")
    check("features/FeaturesRequest in RUNNING: Error(UnexpectedMessage), closed (§6.1)", in_running)

    def python_client():
        f = fc.Client(SOCKET, timeout=TIMEOUT).features()
        with Raw() as c:
            live = ask(c)
        require(f == {k: v for k, v in live.items() if k != "type"}, f"{f} != {live}")
    check("features/the Python client's features() is the server's answer", python_client)


def usage_and_metrics_checks(valid):
    """§5.9 (WANT_RUSAGE, the usage in Exit), §5.15, §5.16 (Metrics), rev 0.6."""
    byname = {v["name"]: v for v in valid}
    metrics_request = bytes.fromhex(byname["metrics-request"]["hex"])
    busy = exec_job(["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"])

    def exit_of(frame, nfds=0):
        with Fds(nfds) as fds, Raw() as c:
            c.send(frame, fds)
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            return msg

    def with_usage():
        msg = exit_of(spawn_frame(busy, want_rusage=True))
        require(msg["code"] == 0, f"exit code {msg['code']}")
        u = msg.get("usage")
        require(u is not None, f"no usage in the Exit of a WANT_RUSAGE spawn: {msg}")
        require(u["user_us"] + u["system_us"] > 0, f"a busy child used no CPU: {u}")
        require(0 < u["maxrss_kib"] < 1 << 30, f"maxrss_kib {u['maxrss_kib']}")
    check("exit/want-rusage: the Exit carries the child's usage (CPU > 0, maxrss > 0; rev 0.6)",
          with_usage)

    def without_usage():
        msg = exit_of(spawn_frame(busy))
        require("usage" not in msg, f"usage without WANT_RUSAGE: {msg}")
    check("exit/no-want-rusage: an 8-byte Exit, no usage", without_usage)

    def rusage_vector():
        v = byname["spawn-want-rusage"]
        msg = exit_of(bytes.fromhex(v["hex"]), v["nfds"])
        require("usage" in msg, f"the spawn-want-rusage vector's Exit has no usage: {msg}")
    check("valid/spawn-want-rusage: Pid, then an Exit with usage", rusage_vector)

    def ask(c):
        c.send(metrics_request)
        msg, _ = c.expect("Metrics")
        return msg

    def ready_twice():
        with Raw() as c:
            a, b = ask(c), ask(c)
            require(set(a) == set(fc.METRICS_FIELDS) | {"type"}, f"fields {sorted(a)}")
            require(all(b[k] >= a[k] for k in fc.METRICS_FIELDS if k not in ("pool_idle",)),
                    f"a counter went down: {a} then {b}")
            c.send(bytes.fromhex(byname["status-request"]["hex"]))
            c.expect("Status")
    check("valid/metrics-request: Metrics, twice, the connection stays READY (rev 0.6)", ready_twice)

    def in_running():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["sleep", "5"]), kill_on_disconnect=True))
            c.expect("Pid")
            ask(c)
    check("metrics/MetricsRequest in RUNNING: Metrics (§6.1)", in_running)

    def counters_move():
        before = fc.Client(SOCKET, timeout=TIMEOUT).metrics()
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/nonexistent/x"]), pid_after_exec=True))
            c.expect_error("ExecFailed")
        exit_of(spawn_frame(exec_job(["true"]), pid_after_exec=True))
        with Raw() as c:
            c.send(spawn_frame(exec_job(["sleep", "5"]), deadline_ms=50))
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            require(msg["deadline_expired"], f"{msg}")
        after = fc.Client(SOCKET, timeout=TIMEOUT).metrics()
        for k in ("spawns_exec_failed", "spawns_exec_ok", "kills_deadline"):
            require(after[k] >= before[k] + 1, f"{k}: {before[k]} then {after[k]}")
        require(after["uptime_s"] >= before["uptime_s"], "uptime went down")
    check("metrics/an exec failure, an exec and a deadline kill move their counters", counters_move)

    def setup_failure_by_stage():
        before = fc.Client(SOCKET, timeout=TIMEOUT).metrics()
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/bin/true"], cwd="/nonexistent/dir"), pid_after_exec=True))
            c.expect_error("ChildSetupFailed")
        after = fc.Client(SOCKET, timeout=TIMEOUT).metrics()
        for k in ("spawns_exec_setup_failed", "setup_failed_chdir"):
            require(after[k] == before[k] + 1, f"{k}: {before[k]} then {after[k]}")
        stages = [k for k in fc.METRICS_FIELDS if k.startswith("setup_failed_")]
        require(sum(after[k] for k in stages)
                == after["spawns_exec_setup_failed"] + after["spawns_entry_setup_failed"],
                f"setup_failed_* do not add up to the setup failures: {after}")
    check("metrics/a failed chdir moves setup_failed_chdir; the stages add up (§5.16)",
          setup_failure_by_stage)

    def before_hello():
        with Raw(hello=False) as c:
            c.send(metrics_request)
            c.expect_error("UnexpectedMessage")
    check("metrics/MetricsRequest before Hello: Error(UnexpectedMessage), closed", before_hello)


def invalid_vector_checks(invalid):
    for v in invalid:
        data = bytes.fromhex(v["hex"])
        nfds = struct.unpack_from("<H", data, 2)[0] if len(data) >= 4 else 0
        for when in ("after-Hello", "before-Hello"):
            def bad(v=v, data=data, nfds=nfds, when=when):
                # A frame travels with the fds its header announces (up to what can be sent);
                # the vector is sent as is, even when it is only a prefix of a frame.
                # §6.3: before Hello a server MAY refuse a frame longer than Auth (72 bytes)
                # at its header, with UnexpectedMessage.
                want = v["wire_error"]
                if when == "before-Hello" and len(data) >= 8 and 8 + struct.unpack_from("<I", data, 4)[0] > 72:
                    want = (want, "UnexpectedMessage")
                with Fds(nfds if nfds <= fc.MAX_FDS else 0) as fds, Raw(hello=(when == "after-Hello")) as c:
                    c.send(data, fds)
                    c.expect_error(want, timeout=QUIET)
            check(f"invalid/{v['name']}/{when}: {v['error']} -> Error({v['wire_error']}), closed", bad)


def spawn_header(body_len):
    """The header of a Spawn without fds announcing `body_len` bytes (its body is not sent)."""
    return struct.pack("<BBHI", 0x10, 0, 0, body_len)


def handshake_length_checks():
    """§6.3: before READY a server MAY refuse a frame over 72 bytes (Auth's length, header
    included) as soon as its header is complete; one of 72 bytes it reads whole (§6.2: an
    incomplete frame is not malformed)."""
    def over_72():
        with Raw(hello=False) as c:
            c.send(spawn_header(65))             # 73 bytes announced; the body never comes
            c.expect_error("UnexpectedMessage")
    check("handshake/frame-of-73-bytes-before-Hello: refused at its header, "
          "Error(UnexpectedMessage) (§6.3 MAY)", over_72)

    def at_72():
        with Raw(hello=False) as c:
            c.send(spawn_header(64))
            kind, msg, _ = c.next(QUIET)
            require(kind == "timeout", f"refused before its body came: {describe(kind, msg)}")
            c.send(bytes(64))                    # job_kind 0: Malformed, or refused as not Hello
            c.expect_error(("Malformed", "UnexpectedMessage"))
    check("handshake/frame-of-72-bytes-before-Hello: read whole, then refused (§6.3)", at_72)


def transport_checks(transport):
    for v in transport:
        def replay(v=v):
            total = sum(s["fds"] for s in v["sends"])
            with Fds(total) as fds, Raw() as c:
                c.send_plan(bytes.fromhex(v["hex"]), v["sends"], fds)
                if v["expected"] == "ok":
                    # every "ok" vector is a Spawn of the unregistered entry point "worker"
                    c.expect_error("UnknownEntry")
                else:
                    c.expect_error(v["expected"])
        want = "Error(UnknownEntry)" if v["expected"] == "ok" else f"Error({v['expected']})"
        check(f"transport/{v['name']}: {want}", replay)


def bundle_checks():
    """Real fds arrive at their targets: the child stats /proc/self/fd/N for each target."""
    for n in (1, 3, 253, 254, 256):
        def bundle(n=n):
            pipes = [os.pipe2(os.O_CLOEXEC) for _ in range((n - 1 + 1) // 2)]
            objs = [fd for p in pipes for fd in p][:n - 1]         # n-1 distinct pipe ends
            # sparse targets, some low, one high, none of them 1 (stdout)
            targets = [0, 2] + list(range(3, 3 + n - 4)) + [1000] if n >= 4 else [0, 2][:n - 1]
            targets = [1] + targets[:n - 1]
            stdout = []
            try:
                cmd = ["stat", "-L", "-c", "%n %d %i"] + [f"/proc/self/fd/{t}" for t in targets]
                code, out, _ = run_child(cmd, extra_fds=dict(zip(targets[1:], objs)), stdout_stat=stdout)
                objs = [None] + objs
                require(code == 0, f"stat exited {code}")
                lines = out.decode().splitlines()
                require(len(lines) == len(targets), f"{len(lines)} lines for {len(targets)} targets")
                for t, fd, line in zip(targets, objs, lines):
                    st = os.fstat(fd) if fd is not None else stdout[0]
                    require(line == f"/proc/self/fd/{t} {st.st_dev} {st.st_ino}",
                            f"target {t}: child has {line!r}, expected dev {st.st_dev} ino {st.st_ino}")
            finally:
                for p in pipes:
                    os.close(p[0])
                    os.close(p[1])
        check(f"fds/bundle-of-{n}: every fd at its target (stat dev+inode), exit 0", bundle)

    def over():
        with Fds(257) as fds:
            try:
                fc.Client(SOCKET).spawn_exec(["/bin/true"], fds=dict(zip(range(257), fds)))
            except ValueError:
                return
        raise CheckFailed("client library sent 257 fds")
    check("fds/bundle-of-257: refused by the client library before sending", over)

    def exact_fds():
        with open("/dev/null", "rb") as extra:
            code, out, _ = run_child(["sh", "-c", "ls /proc/$$/fd; stat -L -c '%d %i' /proc/$$/fd/0 /proc/$$/fd/2"],
                                     extra_fds={7: extra.fileno()})
        require(code == 0, f"exit {code}")
        lines = out.decode().split()
        require(lines[:4] == ["0", "1", "2", "7"], f"child fds {lines[:-4]}, expected 0 1 2 7")
        null = os.stat("/dev/null")
        want = f"{null.st_dev} {null.st_ino}"
        require(" ".join(lines[4:6]) == want and " ".join(lines[6:8]) == want,
                f"fds 0 and 2 are not /dev/null: {lines[4:]}")
    check("fds/child-holds-exactly-the-targets-plus-0-2-on-/dev/null (§6.5)", exact_fds)

    def server_closes_copies():
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            child = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(["/bin/true"], fds={5: w})
            os.close(w)
            w = None
            require(read_all(r) == b"", "output")       # EOF only if the server closed its copy
            child.wait()
            child.close()
        finally:
            os.close(r)
            if w is not None:
                os.close(w)
    check("fds/server-closes-its-copies-after-fork: EOF on the pipe (§6.4)", server_closes_copies)

    def nofile_limit():
        st = server_status()
        with open(f"/proc/{st['server_pid']}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])

    def high_target():
        limit = nofile_limit()
        try:
            code, _, _ = run_child(["/bin/true"], extra_fds={fc.MAX_TARGET_FD: 1})
        except fc.ChildSetupFailedError as e:
            require(limit <= fc.MAX_TARGET_FD, f"{e} although RLIMIT_NOFILE is {limit}")
            require(e.errno == 9, f"errno {e.errno}, expected EBADF (9) per §6.5 (server RLIMIT_NOFILE {limit})")
            return
        require(code == 0, f"exit {code}")

    def target_below_limit():
        limit = nofile_limit()
        for t in (limit - 2, limit - 1):
            try:
                code, _, _ = run_child(["/bin/true"], extra_fds={t: 1})
            except fc.ServerError as e:
                raise CheckFailed(f"target {t} (server RLIMIT_NOFILE {limit}): {e}")
            require(code == 0, f"exit {code}")
    check("limits/target-RLIMIT_NOFILE-1-and-2: accepted, Exit 0 (§6.5)", target_below_limit)

    check("limits/target-1048575: accepted (Exit 0, or ChildSetupFailed EBADF above RLIMIT_NOFILE)", high_target)


def exit_checks():
    for status in (0, 3, 255):
        def ex(status=status):
            code, _, child = run_child(["sh", "-c", f"exit {status}"])
            require(code == status, f"exit code {code}")
            require(not child.deadline_expired and not child.core_dumped, "flags set")
        check(f"exit/code-{status}", ex)

    def sigkill():
        child = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(["sleep", "10"], kill_on_disconnect=True)
        with child:
            require(child.signal(9), "not Signaled")
            code = child.wait()
            require(code == -9 and not child.deadline_expired, f"exit {code}, deadline {child.deadline_expired}")
    check("exit/code--9 (Signal 9)", sigkill)

    def deadline():
        t0 = time.monotonic()
        child = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(["sleep", "10"], deadline_ms=200)
        with child:
            code = child.wait()
        took = time.monotonic() - t0
        require(code == -9 and child.deadline_expired, f"exit {code}, deadline_expired {child.deadline_expired}")
        require(0.15 <= took < 3, f"took {took:.2f}s for a 200 ms deadline")
    check("exit/code--9-deadline: DEADLINE_EXPIRED after ~200 ms", deadline)

    def deadline_not_hit():
        child = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(["/bin/true"], deadline_ms=5000)
        with child:
            require(child.wait() == 0 and not child.deadline_expired, "deadline_expired on a quick child")
    check("exit/deadline-not-reached: Exit 0 without DEADLINE_EXPIRED", deadline_not_hit)

    for signo in (31, 34):
        def by_signal(signo=signo):
            code, _, child = run_child(["sh", "-c", f"kill -{signo} $$"])
            require(code == -signo, f"exit code {code}")
        check(f"exit/code--{signo} (killed by signal {signo})", by_signal)

    def segv():
        code, _, child = run_child(["sh", "-c", "kill -SEGV $$"])
        require(code == -11, f"exit code {code}")
    check("exit/code--11 (SIGSEGV)", segv)


def behaviour_checks():
    def exec_failed_before_pid():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/nonexistent/prog"]), pid_after_exec=True))
            msg = c.expect_error("ExecFailed")
            require(msg["errno"] == 2, f"errno {msg['errno']}, expected ENOENT")
    check("spawn/pid-after-exec-missing-program: Error(ExecFailed, ENOENT) instead of Pid", exec_failed_before_pid)

    def pid_after_exec_ok():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/bin/true"]), pid_after_exec=True))
            msg, fds = c.expect("Pid")
            for fd in fds:
                os.close(fd)
            require(not fds, "Pid carries a pidfd although WANT_PIDFD is not set (§5.8)")
            msg, _ = c.expect("Exit")
            require(msg["code"] == 0, f"exit {msg['code']}")
    check("spawn/pid-after-exec-success: Pid then Exit 0", pid_after_exec_ok)

    def exec_failed_after_pid():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/nonexistent/prog"])))
            c.expect("Pid")
            msg = c.expect_error("ExecFailed")
            require(msg["errno"] == 2, f"errno {msg['errno']}")
    check("spawn/missing-program: Pid, then Error(ExecFailed, ENOENT) instead of Exit", exec_failed_after_pid)

    def eacces():
        with tempfile.TemporaryDirectory() as d, Raw() as c:
            path = os.path.join(d, "not-executable")
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o644)
            c.send(spawn_frame(exec_job([path]), pid_after_exec=True))
            msg = c.expect_error("ExecFailed")
            require(msg["errno"] == 13, f"errno {msg['errno']}, expected EACCES")
    check("spawn/non-executable-program: Error(ExecFailed, EACCES)", eacces)

    def bad_cwd():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/bin/true"], cwd="/nonexistent/dir"), pid_after_exec=True))
            msg = c.expect_error("ChildSetupFailed")
            require(msg["errno"] == 2, f"errno {msg['errno']}")
    check("spawn/missing-cwd: Error(ChildSetupFailed, ENOENT)", bad_cwd)

    def cwd():
        code, out, _ = run_child(["pwd"], program="/bin/pwd", cwd="/tmp")
        require(out == b"/tmp\n", f"pwd printed {out!r}")
        code, out, _ = run_child(["true"], program="./bin/true", cwd="/usr")
        require(code == 0, f"relative program resolved against cwd: exit {code}")
    check("spawn/cwd: chdir, relative program resolved against it (§5.5.3)", cwd)

    def env():
        code, out, _ = run_child(["env"], env_clear=True,
                                 env=[("A", "1"), ("PATH", "/usr/bin:/bin"), ("A", "2"), ("E", "")])
        got = sorted(out.decode().splitlines())
        require(got == ["A=2", "E=", "PATH=/usr/bin:/bin"], f"env printed {got}")
    check("spawn/env-clear+env: later entry wins, PATH search with the child's PATH", env)

    def env_inherit():
        code, out, _ = run_child(["/usr/bin/env"], env=[("FSCONF", "x")])
        lines = out.decode().splitlines()
        require("FSCONF=x" in lines and len(lines) > 1, f"env printed {lines}")
    check("spawn/env-inherited: server environment plus entries", env_inherit)

    def no_path():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["true"], env_clear=True), pid_after_exec=True))
            kind, msg, _ = c.next()
            require(kind == "msg" and msg["type"] in ("Error", "Pid"), describe(kind, msg))
    check("spawn/PATH-search-without-PATH: some answer (behaviour unspecified)", no_path)

    def argv0():
        code, out, _ = run_child(["my-argv0", "-c", 'printf "%s|" "$0" "$1"', "x", "\u00e9"], program="/bin/sh")
        require(out == "x|\u00e9|".encode(), f"printed {out!r}")
    check("spawn/argv: argv[0] independent of program, bytes passed through", argv0)

    def session(kind):
        st = server_status()
        server = proc_stat(st["server_pid"])
        code, out, child = run_child(["cat", "/proc/self/stat"],
                                     new_session=(kind == "new_session"),
                                     new_process_group=(kind == "new_process_group"))
        pid, pgrp, sid = parse_stat(out.decode())
        require(pid == child.pid, f"pid {pid} != Pid {child.pid}")
        want = {"new_session": (pid, pid), "new_process_group": (pid, server[2]),
                "inherit": (server[1], server[2])}[kind]
        require((pgrp, sid) == want, f"pgrp/sid {pgrp}/{sid}, expected {want}")
    for kind in ("inherit", "new_session", "new_process_group"):
        check(f"spawn/session-{kind}: process group and session as §5.5.1 says", session, kind)

    def signals_reset():
        code, out, _ = run_child(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
        got = dict(line.split(":") for line in out.decode().splitlines())
        require(len(got) == 2, f"grep printed {out!r}")
        # the mask is emptied; dispositions: §6.5 lets an implementation leave real-time
        # signals (32-64) alone, the standard ones (1-31) must be default
        require(int(got["SigBlk"], 16) == 0, f"SigBlk = {got['SigBlk'].strip()} in the child")
        require(int(got["SigIgn"], 16) & 0x7FFFFFFF == 0, f"SigIgn = {got['SigIgn'].strip()} in the child")
    check("spawn/signals-reset: no standard signal ignored or blocked in the child (§6.5)", signals_reset)

    def kill_on_disconnect(kill):
        c = fc.Client(SOCKET, timeout=TIMEOUT)
        child = c.spawn_exec(["sleep", "30"], want_pidfd=True, kill_on_disconnect=kill)
        pidfd = os.dup(child.pidfd)
        try:
            child.close()
            r, _, _ = select.select([pidfd], [], [], 2.0 if kill else 0.5)
            if kill:
                require(r, "child still running 2 s after the connection closed")
            else:
                require(not r, "child ended when the connection closed, without KILL_ON_DISCONNECT")
        finally:
            if not kill and hasattr(signal, "pidfd_send_signal"):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
    check("spawn/kill-on-disconnect: child killed when the connection ends", kill_on_disconnect, True)
    check("spawn/no-kill-on-disconnect: child survives the connection", kill_on_disconnect, False)

    def signal_in_ready():
        with Raw() as c:
            c.send(fc.encode_signal(15))
            c.expect_error("UnexpectedMessage")
    check("state/Signal-in-READY: Error(UnexpectedMessage)", signal_in_ready)

    def spawn_in_running():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["sleep", "10"]), kill_on_disconnect=True))
            c.expect("Pid")
            c.send(spawn_frame(exec_job(["/bin/true"])))
            c.expect_error("UnexpectedMessage")
    check("state/Spawn-in-RUNNING: Error(UnexpectedMessage)", spawn_in_running)

    def pipelined_running():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["sleep", "10"]), kill_on_disconnect=True)
                   + fc.encode_status_request() + fc.encode_signal(9))
            c.expect("Pid")
            c.expect("Status")
            c.expect("Signaled")
            msg, _ = c.expect("Exit")
            require(msg["code"] == -9, f"exit {msg['code']}")
            c.expect_eof()
    check("state/Spawn+StatusRequest+Signal-pipelined: Pid, Status, Signaled, Exit -9, in order", pipelined_running)

    def malformed_in_running():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["sleep", "10"]), want_pidfd=True, kill_on_disconnect=True))
            msg, fds = c.expect("Pid")
            require(len(fds) == 1, "no pidfd")
            try:
                c.send(b"\xff")
                c.expect_error("Malformed")
                r, _, _ = select.select(fds, [], [], 2.0)
                require(r, "child still running 2 s after the connection was failed")
            finally:
                os.close(fds[0])
    check("state/garbage-in-RUNNING: Error(Malformed), closed, KILL_ON_DISCONNECT child killed", malformed_in_running)

    def fd_on_hello():
        with Fds(1) as fds, Raw(hello=False) as c:
            c.send(fc.encode_hello(), fds)
            c.expect_error("FdMismatch")
    check("transport/fd-attached-to-Hello: Error(FdMismatch)", fd_on_hello)

    def hello_spawn_one_write():
        with Raw(hello=False) as c:
            c.send(fc.encode_hello() + spawn_frame(exec_job(["/bin/true"])))
            c.expect("HelloOk")
            c.expect("Pid")
            c.expect("Exit")
    check("state/Hello+Spawn-in-one-write (§6.6)", hello_spawn_one_write)


def limit_checks():
    def accepted(job, expect_exit=0, **kw):
        with Raw() as c:
            frame = spawn_frame(job, **kw)
            fc.decode_frame(frame)          # the frame is within every limit
            c.send(frame)
            if job["kind"] == "entry":
                c.expect_error("UnknownEntry")
                return
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            require(msg["code"] == expect_exit, f"exit {msg['code']}")

    def refused(job, error, **kw):
        with Raw() as c:
            frame = spawn_frame(job, **kw)
            try:
                fc.decode_frame(frame)
                raise CheckFailed("test bug: frame decodes")
            except fc.DecodeError as e:
                require(e.name == error, f"test bug: local decoder says {e.name}")
            c.send(frame)
            c.expect_error("Malformed")

    big_arg = "a" * fc.MAX_ARG_LEN
    check("limits/arg-of-131071-bytes: accepted, exec works", accepted, exec_job(["/bin/true", big_arg]))
    check("limits/arg-of-131072-bytes: Malformed", refused, exec_job(["/bin/true", big_arg + "a"]), "LimitExceeded")
    check("limits/4096-args: accepted", accepted, exec_job(["/bin/true"] + ["x"] * 4095))
    check("limits/4097-args: Malformed", refused, exec_job(["/bin/true"] + ["x"] * 4096), "LimitExceeded")
    env = [(f"K{i}", "v") for i in range(4096)]
    check("limits/4096-env-entries: accepted", accepted, exec_job(["/bin/true"], env=env, env_clear=True))
    check("limits/4097-env-entries: Malformed", refused,
          exec_job(["/bin/true"], env=env + [("X", "y")], env_clear=True), "LimitExceeded")
    check("limits/env-KEY=VALUE-of-131071: accepted", accepted,
          exec_job(["/bin/true"], env=[("K", "v" * (fc.MAX_ARG_LEN - 2))]))
    check("limits/env-KEY=VALUE-of-131072: Malformed", refused,
          exec_job(["/bin/true"], env=[("K", "v" * (fc.MAX_ARG_LEN - 1))]), "LimitExceeded")
    prog = "/" * (fc.MAX_PATH_LEN - len("bin/true")) + "bin/true"
    check("limits/program-path-of-4095-bytes: accepted, exec works", accepted, exec_job(["true"], program=prog))
    check("limits/program-path-of-4096-bytes: Malformed", refused, exec_job(["true"], program="/" + prog), "LimitExceeded")
    check("limits/cwd-of-4095-bytes: accepted", accepted, exec_job(["/bin/true"], cwd="/" * fc.MAX_PATH_LEN))
    check("limits/cwd-of-4096-bytes: Malformed", refused, exec_job(["/bin/true"], cwd="/" * 4096), "LimitExceeded")
    check("limits/entry-name-of-255-bytes: Error(UnknownEntry)", accepted,
          {"kind": "entry", "name": "n" * 255, "payload": b""})
    overhead = 4 + 8 + 1 + 2 + 6 + 4
    check("limits/body-of-exactly-1-MiB: Error(UnknownEntry)", accepted,
          {"kind": "entry", "name": "worker", "payload": b"p" * (fc.MAX_BODY_LEN - overhead)})
    check("limits/body-of-1-MiB+1: Malformed", refused,
          {"kind": "entry", "name": "worker", "payload": b"p" * (fc.MAX_BODY_LEN - overhead + 1)}, "BodyTooLong")

    def payload_len_over():
        job = fc.encode_spawn({"kind": "entry", "name": "w", "payload": b""})
        frame = job[:-4] + struct.pack("<I", fc.MAX_BODY_LEN + 1)      # claims more than 1 MiB
        with Raw() as c:
            c.send(frame)
            c.expect_error("Malformed")
    check("limits/payload_len-above-1-MiB: Malformed (LimitExceeded before Truncated)", payload_len_over)

    def slow_frame():
        # a frame that arrives a byte at a time is incomplete, not malformed (§6.2)
        with Raw() as c:
            for b in fc.encode_status_request():
                c.send(bytes([b]))
                time.sleep(0.01)
            c.expect("Status")
    check("framing/frame-sent-byte-by-byte: Status", slow_frame)


def slow_checks():
    def handshake_timeout():
        with Raw(hello=False) as c:
            c.expect_error("Timeout", timeout=15)
    check("slow/handshake-timeout: Error(Timeout) after ~10 s (§6.3 MAY)", handshake_timeout)


def auth_checks(path, key):
    """§9 against a server that requires authentication with `key`."""
    def raw(path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        return sock, fc.FrameReader(sock)

    def right_key():
        child = fc.Client(path, key=key, timeout=TIMEOUT).spawn_exec(["/bin/sh", "-c", "exit 5"])
        code = child.wait()
        require(code == 5, f"exit code {code}, expected 5")
    check("auth/right-key: mutual authentication, then a spawn (§9.2)", right_key)

    def wrong_key():
        try:
            fc.Client(path, key=b"not the key, at least sixteen bytes", timeout=TIMEOUT).status()
        except fc.ServerError as e:
            require(e.name == "AuthFailed", f"expected AuthFailed, got {e.name}")
            return
        raise CheckFailed("a wrong key was accepted")
    check("auth/wrong-key: Error(AuthFailed), closed (§9.2 step 3)", wrong_key)

    def skipped():
        sock, reader = raw(path)
        try:
            fc.send_frame(sock, fc.encode_hello() + fc.encode_status_request())
            msg, _ = reader.read()
            require(msg["type"] == "HelloOk" and msg["auth"] == "hmac-sha256",
                    f"expected HelloOk(method 1), got {msg}")
            msg, _ = reader.read()
            require(msg["type"] == "Error" and msg.get("name") == "AuthRequired",
                    f"expected Error(AuthRequired), got {msg}")
        finally:
            sock.close()
    check("auth/request-before-Auth: HelloOk(method 1) then Error(AuthRequired) (§6.6)", skipped)

    def over_72_in_await_auth():
        sock, reader = raw(path)
        try:
            fc.send_frame(sock, fc.encode_hello())
            msg, _ = reader.read()
            require(msg["type"] == "HelloOk" and msg["auth"] == "hmac-sha256",
                    f"expected HelloOk(method 1), got {msg}")
            fc.send_frame(sock, spawn_header(65))
            msg, _ = reader.read()
            require(msg["type"] == "Error" and msg.get("name") == "AuthRequired",
                    f"expected Error(AuthRequired) at the header, got {msg}")
        finally:
            sock.close()
    check("auth/frame-of-73-bytes-in-AWAIT_AUTH: refused at its header, Error(AuthRequired) "
          "(§6.3 MAY)", over_72_in_await_auth)

    def no_key_client():
        try:
            fc.Client(path, timeout=TIMEOUT).status()
        except fc.ProtocolError:
            return
        raise CheckFailed("a client without a key got through")
    check("auth/client-without-key-stops-at-HelloOk-method-1", no_key_client)


def server_fds(pid):
    """The set of (fd, target) the server holds, or None if /proc does not show them."""
    d = f"/proc/{pid}/fd"
    try:
        names = os.listdir(d)
    except OSError:
        return None
    out = set()
    for n in names:
        try:
            out.add((n, os.readlink(os.path.join(d, n))))
        except OSError:                 # closed meanwhile
            pass
    return out


def identity_checks(credentials=True):
    """Rev 0.5: joining a process group, environment removals, uid/gid/groups (§5.5.1, §6.5)."""
    def join_group():
        server = proc_stat(server_status()["server_pid"])
        leader = fc.Client(SOCKET, timeout=TIMEOUT).spawn_exec(
            ["sleep", "30"], new_process_group=True, kill_on_disconnect=True,
            pid_after_exec=True)                 # its group exists once it has exec'd
        try:
            code, out, child = run_child(["cat", "/proc/self/stat"], pgid=leader.pid)
            pid, pgrp, sid = parse_stat(out.decode())
            require((pgrp, sid) == (leader.pid, server[2]),
                    f"pgrp/sid {pgrp}/{sid}, expected {leader.pid}/{server[2]}")
        finally:
            leader.close()                       # KILL_ON_DISCONNECT ends it
    check("spawn/join-process-group: setpgid(0, pgid) (rev 0.5)", join_group)

    def join_missing_group():
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/bin/true"]), pid_after_exec=True,
                               session="join_process_group", pgid=0x7FFFFFFF))
            msg = c.expect_error("ChildSetupFailed")
            require(msg["errno"] == 1, f"errno {msg['errno']}, expected EPERM")
    check("spawn/join-missing-group: Error(ChildSetupFailed, EPERM) (rev 0.5)", join_missing_group)

    def env_remove():
        code, out, _ = run_child(["/usr/bin/env"], env=[("FSX", "1"), ("FSY", "2")],
                                 env_remove=["PATH", "FSY", "FS_NOT_SET"])
        lines = out.decode().splitlines()
        require(not any(line.startswith("PATH=") for line in lines), f"PATH still set: {lines}")
        require("FSX=1" in lines and "FSY=2" in lines,
                f"entries apply after the removals: {lines}")
    check("spawn/env-remove: names removed from the server's environment, entries after "
          "(rev 0.5)", env_remove)

    if not credentials:
        return
    ids = ["sh", "-c", "echo $(id -u) $(id -g) $(id -G)"]
    if os.geteuid() == 0:
        def as_other():
            code, out, _ = run_child(ids, program="/bin/sh", uid=65534, gid=65533,
                                     groups=[100, 65532])
            require(out == b"65534 65533 65533 100 65532\n", f"id printed {out!r}")
            code, out, _ = run_child(ids, program="/bin/sh", uid=65534)
            require(out == b"65534 0 0\n", f"uid alone keeps no group of root: {out!r}")
        check("spawn/credentials: setgroups, setgid, setuid; a uid alone drops the groups "
              "(rev 0.5)", as_other)
    else:
        def refused():
            with Raw() as c:
                c.send(spawn_frame(exec_job(["/bin/true"]), pid_after_exec=True,
                                   uid=os.getuid() + 1))
                msg = c.expect_error("ChildSetupFailed")
                require(msg["errno"] == 1, f"errno {msg['errno']}, expected EPERM")
            code, out, _ = run_child(ids, program="/bin/sh", uid=os.getuid(), gid=os.getgid())
            require(out.split()[:2] == [str(os.getuid()).encode(), str(os.getgid()).encode()],
                    f"own ids: {out!r}")
        check("spawn/credentials-unprivileged: another uid is ChildSetupFailed(EPERM), one's "
              "own ids are fine (rev 0.5)", refused)


def control_checks(valid):
    """Rev 0.6 per-child controls (§5.5.1, §6.5): resource limits, umask, nice, no_new_privs,
    oom_score_adj, grace, then the sandbox controls (sandbox_checks)."""
    byname = {v["name"]: v for v in valid}

    def limit_line(text, name):
        line = next((l for l in text.splitlines() if l.startswith(name)), None)
        require(line is not None, f"no {name!r} in /proc/self/limits: {text!r}")
        return line[len(name):].split()[:2]

    def rlimits():
        nofile, core = fc.RLIMIT_NAMES.index("nofile"), fc.RLIMIT_NAMES.index("core")
        code, out, _ = run_child(["cat", "/proc/self/limits"],
                                 rlimits=[(nofile, 64, 128), (core, 0, fc.RLIM_INFINITY)])
        text = out.decode()
        require(code == 0, f"cat exited {code}")
        got = limit_line(text, "Max open files")
        require(got == ["64", "128"], f"Max open files {got}, expected 64 128")
        got = limit_line(text, "Max core file size")
        require(got == ["0", "unlimited"], f"Max core file size {got}, expected 0 unlimited")
    check("spawn/rlimits: the child's /proc/self/limits shows them (rev 0.6)", rlimits)

    def refused():
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
        with Raw() as c:
            c.send(spawn_frame(exec_job(["/bin/true"]), pid_after_exec=True,
                               rlimits=[(fc.RLIMIT_NAMES.index("nofile"), 64, nr_open + 1)]))
            msg = c.expect_error("ChildSetupFailed")
            require(msg["errno"] == errno.EPERM, f"errno {msg['errno']}, expected EPERM")
    check("spawn/rlimit-above-nr-open: Error(ChildSetupFailed, EPERM) (rev 0.6)", refused)

    def vector():
        v = byname["spawn-rlimits"]
        with Fds(v["nfds"]) as fds, Raw() as c:
            c.send(bytes.fromhex(v["hex"]), fds)
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            require(msg["code"] == 0, f"exit {msg}")
    check("valid/spawn-rlimits: Pid, Exit 0", vector)

    def controls():
        code, out, _ = run_child(["cat", "/proc/self/status", "/proc/self/stat",
                                  "/proc/self/oom_score_adj"],
                                 umask=0o077, nice=10, no_new_privs=True, oom_score_adj=500)
        text = out.decode()
        require(code == 0, f"cat exited {code}")
        status = dict(l.split(":", 1) for l in text.splitlines() if ":" in l and "(" not in l)
        require(status.get("Umask", "").strip() == "0077", f"Umask {status.get('Umask')!r}")
        require(status.get("NoNewPrivs", "").strip() == "1",
                f"NoNewPrivs {status.get('NoNewPrivs')!r}")
        stat = next(l for l in text.splitlines() if " (cat) " in l)
        nice = stat.rsplit(") ", 1)[1].split()[19 - 3]
        require(nice == "10", f"nice field {nice}")
        oom = text.splitlines()[-1]
        require(oom == "500", f"oom_score_adj {oom}")
    check("spawn/controls: umask, nice, no_new_privs, oom_score_adj in /proc/self (rev 0.6)",
          controls)

    def controls_vector():
        v = byname["spawn-controls"]
        with Fds(v["nfds"]) as fds, Raw() as c:
            c.send(bytes.fromhex(v["hex"]), fds)
            c.expect("Pid")
            msg, _ = c.expect("Exit")
            require(msg["code"] == 0, f"exit {msg}")
    check("valid/spawn-controls: Pid, Exit 0", controls_vector)

    def grace():
        script = "trap 'echo TERM' TERM; echo ready; while :; do sleep 0.05; done"
        t0 = time.monotonic()
        code, out, child = run_child(["sh", "-c", script], deadline_ms=1000, grace_ms=500)
        took = time.monotonic() - t0
        require(code == -9, f"code {code}, expected -9 (SIGKILL after the grace)")
        require(child.deadline_expired, "Exit without DEADLINE_EXPIRED")
        require(b"TERM" in out, f"no SIGTERM before the SIGKILL: {out!r}")
        require(took >= 1.5, f"ended after {took:.2f} s, before deadline + grace")
    check("spawn/grace: SIGTERM at the deadline, SIGKILL grace_ms later (rev 0.6)", grace)

    sandbox_checks(byname)


def bpf(code, jt, jf, k):
    """One classic-BPF instruction (struct sock_filter, native byte order)."""
    return struct.pack("=HBBI", code, jt, jf, k)


ALLOW = bpf(0x06, 0, 0, 0x7FFF0000)            # BPF_RET|BPF_K, SECCOMP_RET_ALLOW


def deny_getpid():
    """x86-64: getpid (39) fails with EPERM; everything else is allowed."""
    return b"".join([bpf(0x20, 0, 0, 4), bpf(0x15, 0, 3, 0xC000003E),   # arch == x86-64?
                     bpf(0x20, 0, 0, 0), bpf(0x15, 0, 1, 39),            # nr == getpid?
                     bpf(0x06, 0, 0, 0x00050000 | errno.EPERM), ALLOW])


def program_fd(program):
    """A memfd holding `program`, its offset at the end (§6.5: read from offset 0)."""
    fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    return fd


def no_writes_ruleset():
    """A landlock ruleset that handles writing and creating files, with no rule."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint64((1 << 1) | (1 << 5) | (1 << 8))  # WRITE_FILE, REMOVE_FILE, MAKE_REG
    fd = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
    require(fd >= 0, f"landlock_create_ruleset: errno {ctypes.get_errno()}")
    return fd


def sandbox_checks(byname):
    """Rev 0.6 sandbox controls (§5.5.1, §6.5): SECCOMP_FILTER and LANDLOCK_RULESET."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    getpid = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
              "print(libc.syscall(39), ctypes.get_errno())")

    def seccomp():
        fd = program_fd(deny_getpid())
        try:
            code, out, _ = run_child([python, "-c", getpid], seccomp_filter=fd)
        finally:
            os.close(fd)
        require(code == 0, f"exit {code}")
        require(out.split() == [b"-1", b"1"], f"getpid under the filter: {out!r}, expected -1 1")
    if os.uname().machine == "x86_64":
        check("spawn/seccomp-filter: getpid fails with EPERM in the child (rev 0.6)", seccomp)

    def consumed():
        fd, ruleset = program_fd(ALLOW), no_writes_ruleset()
        script = ("for n in 3 4; do [ -e /proc/self/fd/$n ] && echo has $n; done; "
                  "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
        try:
            code, out, _ = run_child(["sh", "-c", script], seccomp_filter=fd,
                                     landlock_ruleset=ruleset)
        finally:
            os.close(fd)
            os.close(ruleset)
        require(code == 0, f"exit {code}")
        lines = [l.split() for l in out.decode().splitlines()]
        require(lines == [["NoNewPrivs:", "1"], ["Seccomp:", "2"]],
                f"expected no fd 3 or 4, NoNewPrivs 1, Seccomp 2: {out!r}")
    check("spawn/sandbox: the job holds neither entry; NO_NEW_PRIVS implied (rev 0.6)", consumed)

    def landlock():
        with tempfile.TemporaryDirectory() as d:
            ruleset = no_writes_ruleset()
            try:
                code, out, _ = run_child(["sh", "-c", 'echo x > "$1/f" && echo wrote || echo refused',
                                          "sh", d], landlock_ruleset=ruleset)
            finally:
                os.close(ruleset)
            require(out.strip() == b"refused", f"write under the ruleset: {out!r}")
            require(not os.path.exists(os.path.join(d, "f")), "the file was made")
            with open(os.path.join(d, "g"), "w") as f:
                f.write("the parent still writes")
    check("spawn/landlock-ruleset: the child cannot write a directory, the parent can (rev 0.6)",
          landlock)

    def bad_programs():
        for program, text in ((ALLOW[:5], "not a multiple of 8"),
                              (b"", "0 instructions, at least 1"),
                              (ALLOW * 4100, "4100 instructions, at most 4096")):
            fd = program_fd(program)
            try:
                with Raw() as c:
                    c.send(spawn_frame(exec_job(["true"]), [3], seccomp_index=0), [fd])
                    msg = c.expect_error("ChildSetupFailed")
            finally:
                os.close(fd)
            require(msg["errno"] == errno.EINVAL, f"errno {msg['errno']}, expected EINVAL")
            require(text in msg["message"], f"message {msg['message']!r} lacks {text!r}")
        code, _, _ = run_child(["true"])
        require(code == 0, "the server does not serve after the refusals")
    check("spawn/seccomp-filter: a bad program is Error(ChildSetupFailed, EINVAL) naming it, "
          "before any child (rev 0.6)", bad_programs)

    def regular_file():
        # A good program in a regular file: the server reads memfds only (§6.5).
        fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            os.write(fd, ALLOW)
            with Raw() as c:
                c.send(spawn_frame(exec_job(["true"]), [3], seccomp_index=0), [fd])
                msg = c.expect_error("ChildSetupFailed")
        finally:
            os.close(fd)
        require("not a memfd" in msg["message"], f"message {msg['message']!r}")
    check("spawn/seccomp-filter: a program in a regular file is refused, not a memfd (rev 0.6)",
          regular_file)

    def vector():
        v = byname["spawn-sandbox"]
        with Fds(v["nfds"]) as fds, Raw() as c:
            c.send(bytes.fromhex(v["hex"]), fds)
            msg = c.expect_error("ChildSetupFailed")
            require("not a memfd" in msg["message"], f"message {msg['message']!r}")
    check("valid/spawn-sandbox: /dev/null as the program, Error(ChildSetupFailed) (rev 0.6)",
          vector)


def server_checks(args):
    """The checks of a plain server (every section but §11's)."""
    valid, invalid, transport = load("valid"), load("invalid"), load("transport")
    handshake_checks(valid)
    status_checks()
    valid_vector_checks(valid)
    features_checks(valid)
    usage_and_metrics_checks(valid)
    invalid_vector_checks(invalid)
    handshake_length_checks()
    transport_checks(transport)
    bundle_checks()
    exit_checks()
    behaviour_checks()
    identity_checks(not args.skip_credentials)
    control_checks(valid)
    limit_checks()
    if args.slow:
        slow_checks()
    if args.auth_socket:
        with open(args.key_file, "rb") as f:
            auth_checks(args.auth_socket, f.read())


def main():
    global SOCKET, FILTER
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", help="the server's socket path (a plain `forkserver serve`)")
    p.add_argument("--zygote-socket",
                   help="instead, a conformance zygote's socket (spec/conformance/zygote.rs): "
                        "the typed entry convention's checks (§11)")
    p.add_argument("-k", dest="filter", help="run only the checks whose name matches this regex")
    p.add_argument("--slow", action="store_true", help="also run checks that take >10 s")
    p.add_argument("--auth-socket", help="a second server that requires authentication (§9)")
    p.add_argument("--key-file", help="the key of --auth-socket's server (raw bytes)")
    p.add_argument("--skip-credentials", action="store_true",
                   help="skip the uid/gid/groups checks (rev 0.5)")
    args = p.parse_args()
    if not args.socket and not args.zygote_socket:
        p.error("--socket or --zygote-socket is needed")
    SOCKET, FILTER = args.socket or args.zygote_socket, args.filter
    t0 = time.monotonic()
    start = server_status()
    server_pid = start["server_pid"]
    fds_before = server_fds(server_pid)
    if args.socket:
        server_checks(args)
    else:
        import typed_checks
        typed_checks.run(SOCKET, check, require, TIMEOUT)
    check("server/still-answers-after-all-checks", server_status)

    def no_fd_leak():
        if fds_before is None:
            return                              # /proc/PID/fd not readable: cannot tell
        deadline = time.monotonic() + 3
        while True:
            after = server_fds(server_pid)
            if after <= fds_before or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        require(after <= fds_before, f"server holds {len(after - fds_before)} more fds than before "
                                     f"the checks: {sorted(after - fds_before)[:10]}")
    check("server/no-fd-leak: the server holds no more fds than before the checks", no_fd_leak)

    def children_reaped():
        live = server_status()["live_children"]
        require(live <= start["live_children"],
                f"live_children {live} after the checks, {start['live_children']} before: children "
                "whose end the server never reported")
    check("server/live_children-back-to-its-start-value", children_reaped)
    print(f"# {time.monotonic() - t0:.1f} s")
    print(f"{RESULTS[0]} passed, {RESULTS[1]} failed")
    return 1 if RESULTS[1] else 0


if __name__ == "__main__":
    sys.exit(main())

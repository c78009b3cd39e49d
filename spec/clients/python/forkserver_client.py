"""A client for the forkserver wire protocol, version 1, written from spec/PROTOCOL.md alone.

Python 3.9+, standard library only, Linux only (AF_UNIX + SCM_RIGHTS).

    from forkserver_client import Client
    client = Client("/run/user/1000/forkserver.sock")          # key=b"..." if the server has one
    with client.spawn_exec(["/bin/echo", "hi"], fds={1: 1}) as child:
        print(child.pid, child.wait())                          # -> 1234 0

Layers, bottom up:

* codec: ``encode_*`` build one frame (bytes); ``decode_frame(buf)`` parses one frame from the
  front of a buffer (incremental: ``None`` while incomplete) and raises ``DecodeError`` with the
  spec's error name (§6.2).  Messages are plain dicts: ``{"type": "Pid", "pid": 42, ...}``
  with the field names of §10.8; byte strings are ``bytes``, text fields are ``str``.
* transport: ``send_frame`` and ``FrameReader`` move frames and their fds (§4.3).
* ``Connection``: one socket, the handshake (§6.1, §9).  ``Client`` / ``Child``: the API.

Every ``Error`` reply from the server is raised as a ``ServerError`` subclass
(``UnknownEntryError``, ``ExecFailedError``, ...) carrying ``code``, ``name``, ``errno``, ``message``.
"""

import array
import hashlib
import hmac
import os
import socket
import stat
import struct

__all__ = [
    "Client", "Child", "Connection", "FrameReader", "send_frame", "decode_frame",
    "encode_hello", "encode_hello_ok", "encode_auth", "encode_auth_ok", "encode_spawn",
    "encode_signal", "encode_status_request", "encode_pid", "encode_exit", "encode_signaled",
    "encode_status", "encode_error", "encode_message", "client_response", "server_response",
    "ForkserverError", "ProtocolError", "DecodeError", "ConnectionClosed", "ServerError",
]

# --------------------------------------------------------------------------------------------
# Constants (§3, §4.1, §5, §7)

PROTOCOL_VERSION = 1
HEADER_LEN = 8
MAX_BODY_LEN = 1 << 20
MAX_FDS = 256
SCM_MAX_FD = 253
MAX_TARGET_FD = (1 << 20) - 1
MAX_ARGS = 4096
MAX_ENV = 4096
MAX_GROUPS = 64                        # rev 0.5, supplementary groups of a spawn
MAX_RLIMITS = 16                       # rev 0.6, resource limits of a spawn
RLIM_INFINITY = 2**64 - 1
# The Linux RLIMIT_* numbers, by index (§5.5.1).
RLIMIT_NAMES = ("cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock", "as",
                "locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime")
MAX_ARG_LEN = 131071
MAX_PATH_LEN = 4095
MAX_ENTRY_NAME_LEN = 255
MAX_ERROR_MESSAGE_LEN = 1024
MAX_VERSION_STRING_LEN = 64
CHALLENGE_LEN = 32
MAC_LEN = 32
MAX_SIGNAL = 64
MAX_PID = (1 << 31) - 1

HELLO, HELLO_OK, AUTH, AUTH_OK = 0x01, 0x02, 0x03, 0x04
SPAWN, SIGNAL, STATUS_REQUEST, FEATURES_REQUEST = 0x10, 0x11, 0x12, 0x13   # 0x13: rev 0.6
METRICS_REQUEST, METRICS = 0x14, 0x25                                      # rev 0.6
PID, EXIT, SIGNALED, STATUS, FEATURES, ERROR = 0x20, 0x21, 0x22, 0x23, 0x24, 0x2F  # 0x24: rev 0.6

TAG_NAMES = {
    HELLO: "Hello", HELLO_OK: "HelloOk", AUTH: "Auth", AUTH_OK: "AuthOk", SPAWN: "Spawn",
    SIGNAL: "Signal", STATUS_REQUEST: "StatusRequest", PID: "Pid", EXIT: "Exit",
    SIGNALED: "Signaled", STATUS: "Status", ERROR: "Error",
    FEATURES_REQUEST: "FeaturesRequest", FEATURES: "Features",
    METRICS_REQUEST: "MetricsRequest", METRICS: "Metrics",
}
TAGS = {name: tag for tag, name in TAG_NAMES.items()}
# Exit is variable-size from rev 0.6 (8 bytes, or 32 with USAGE).
FIXED_BODY_LEN = {HELLO: 8, AUTH: 64, AUTH_OK: 32, SIGNAL: 4, STATUS_REQUEST: 0, PID: 4,
                  SIGNALED: 0, FEATURES_REQUEST: 0, FEATURES: 16, METRICS_REQUEST: 0,
                  METRICS: 168}
MAX_NFDS_FOR_TAG = {SPAWN: MAX_FDS, PID: 1}            # every other tag: 0 (§4.2)

MAGIC = b"FKSV"
AUTH_NONE, AUTH_HMAC_SHA256 = 0, 1
CLIENT_LABEL = b"forkserver auth v1 client"
SERVER_LABEL = b"forkserver auth v1 server"

# Spawn.flags (§5.5.1)
NEW_SESSION, NEW_PROCESS_GROUP, WANT_PIDFD, PID_AFTER_EXEC, KILL_ON_DISCONNECT = 1, 2, 4, 8, 16
KEEP_CONNECTION = 32                   # rev 0.3
SET_UID, SET_GID, SET_GROUPS, JOIN_PROCESS_GROUP, ENV_REMOVE = 64, 128, 256, 512, 1024  # rev 0.5
WANT_RUSAGE, SET_RLIMITS = 2048, 4096  # rev 0.6
SET_UMASK, SET_NICE, NO_NEW_PRIVS, SET_OOM_SCORE_ADJ = 1 << 13, 1 << 14, 1 << 15, 1 << 16  # rev 0.6
SET_GRACE = 1 << 17                    # rev 0.6
SPAWN_FLAGS_MASK = 0x3FFFF
FLAG_NAMES = {
    NEW_SESSION: "NEW_SESSION", NEW_PROCESS_GROUP: "NEW_PROCESS_GROUP", WANT_PIDFD: "WANT_PIDFD",
    PID_AFTER_EXEC: "PID_AFTER_EXEC", KILL_ON_DISCONNECT: "KILL_ON_DISCONNECT",
    KEEP_CONNECTION: "KEEP_CONNECTION", SET_UID: "SET_UID", SET_GID: "SET_GID",
    SET_GROUPS: "SET_GROUPS", JOIN_PROCESS_GROUP: "JOIN_PROCESS_GROUP", ENV_REMOVE: "ENV_REMOVE",
    WANT_RUSAGE: "WANT_RUSAGE", SET_RLIMITS: "SET_RLIMITS", SET_UMASK: "SET_UMASK",
    SET_NICE: "SET_NICE", NO_NEW_PRIVS: "NO_NEW_PRIVS", SET_OOM_SCORE_ADJ: "SET_OOM_SCORE_ADJ",
    SET_GRACE: "SET_GRACE",
}
# What a server before rev 0.6 (no Features) is taken to implement: bits 0-4 (§5.14, §8).
PRE_0_6_SPAWN_FLAGS = 0x1F
# The revision this client implements, and what it sends in Features (§5.14).
REVISION = (0, 6)
REQUESTS_MASK = 0x1F                   # Spawn, Signal, StatusRequest, FeaturesRequest, Metrics
SESSION_FLAGS = NEW_SESSION | NEW_PROCESS_GROUP | JOIN_PROCESS_GROUP
JOB_ENTRY, JOB_EXEC = 1, 2
# Exit.flags (§5.9)
DEADLINE_EXPIRED, CORE_DUMPED, USAGE = 1, 2, 4     # USAGE: rev 0.6
EXIT_FLAGS_MASK = DEADLINE_EXPIRED | CORE_DUMPED | USAGE
USAGE_FIELDS = ("user_us", "system_us", "maxrss_kib")
# The twenty-one u64 fields of Metrics, in wire order (§5.16, rev 0.6).
METRICS_FIELDS = ("uptime_s", "spawns_exec_ok", "spawns_exec_failed", "spawns_exec_setup_failed",
                  "spawns_entry_ok", "spawns_entry_setup_failed", "kills_deadline",
                  "kills_disconnect", "refused_quota", "refused_peer", "refused_max_children",
                  "auth_failures", "orphans_reaped", "pool_size", "pool_idle",
                  "setup_failed_setup", "setup_failed_session", "setup_failed_limits",
                  "setup_failed_credentials", "setup_failed_sandbox", "setup_failed_chdir")

ERROR_NAMES = {
    1: "Malformed", 2: "UnsupportedVersion", 3: "AuthRequired", 4: "AuthFailed",
    5: "UnexpectedMessage", 6: "FdMismatch", 7: "TooManyFds", 8: "UnknownEntry",
    9: "ForkFailed", 10: "ExecFailed", 11: "ChildSetupFailed", 12: "SignalFailed",
    13: "ResourceExhausted", 14: "PermissionDenied", 15: "ShuttingDown", 16: "Timeout",
    17: "Internal",
}
ERROR_CODES = {name: code for code, name in ERROR_NAMES.items()}

# --------------------------------------------------------------------------------------------
# Exceptions


class ForkserverError(Exception):
    """Base class of everything this module raises about the protocol."""


class ProtocolError(ForkserverError):
    """The server broke the protocol (bad frame, fd mismatch, unexpected reply, bad AuthOk).
    The connection is closed."""


class DecodeError(ProtocolError):
    """A frame breaks a rule of §4.1/§5. ``name`` is the spec's DecodeError name (§6.2)."""

    def __init__(self, name, detail=""):
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail


class ConnectionClosed(ForkserverError):
    """The server closed the connection (end of stream or ECONNRESET) without a reply."""


class UnsupportedError(ForkserverError):
    """The server does not implement an option of the request (its Features, §5.14, or bits
    0-4 only for a server before rev 0.6). Nothing was sent."""

    def __init__(self, option, revision):
        self.option, self.revision = option, revision
        rev = "before rev 0.6" if revision is None else f"rev {revision[0]}.{revision[1]}"
        super().__init__(f"the forkserver ({rev}) does not implement the option {option}")


class ServerError(ForkserverError):
    """The server answered with an Error frame (§5.12, §7)."""

    code = 0

    def __init__(self, code, errno=0, message=""):
        self.code, self.name, self.errno, self.message = code, ERROR_NAMES[code], errno, message
        text = f"{self.name} (code {code})"
        if errno:
            text += f", errno {errno} ({os.strerror(errno)})"
        super().__init__(f"{text}: {message}" if message else text)

    @staticmethod
    def from_message(msg):
        cls = _ERROR_CLASSES.get(msg["code"], ServerError)
        return cls(msg["code"], msg["errno"], msg["message"])


class MalformedError(ServerError): code = 1                 # noqa: E701
class UnsupportedVersionError(ServerError): code = 2        # noqa: E701
class AuthRequiredError(ServerError): code = 3              # noqa: E701
class AuthFailedError(ServerError): code = 4                # noqa: E701
class UnexpectedMessageError(ServerError): code = 5         # noqa: E701
class FdMismatchError(ServerError): code = 6                # noqa: E701
class TooManyFdsError(ServerError): code = 7                # noqa: E701
class UnknownEntryError(ServerError): code = 8              # noqa: E701
class ForkFailedError(ServerError): code = 9                # noqa: E701
class ExecFailedError(ServerError): code = 10               # noqa: E701
class ChildSetupFailedError(ServerError): code = 11         # noqa: E701
class SignalFailedError(ServerError): code = 12             # noqa: E701
class ResourceExhaustedError(ServerError): code = 13        # noqa: E701
class PermissionDeniedError(ServerError): code = 14         # noqa: E701
class ShuttingDownError(ServerError): code = 15             # noqa: E701
class ServerTimeoutError(ServerError): code = 16           # noqa: E701  (not the builtin)
class InternalError(ServerError): code = 17                 # noqa: E701


_ERROR_CLASSES = {cls.code: cls for cls in ServerError.__subclasses__()}
__all__ += [cls.__name__ for cls in _ERROR_CLASSES.values()]

# --------------------------------------------------------------------------------------------
# Encoding (§5).  The encoders write what they are given and check nothing; Client checks a
# request with decode_frame before sending it, so it never sends what a server must reject.


def _frame(tag, body, nfds=0):
    return struct.pack("<BBHI", tag, 0, nfds, len(body)) + body


def _bytes16(b):
    return struct.pack("<H", len(b)) + b


def _bytes32(b):
    return struct.pack("<I", len(b)) + b


def encode_hello(min_version=PROTOCOL_VERSION, max_version=PROTOCOL_VERSION):
    return _frame(HELLO, MAGIC + struct.pack("<HH", min_version, max_version))


def encode_hello_ok(version=PROTOCOL_VERSION, challenge=None):
    method = AUTH_NONE if challenge is None else AUTH_HMAC_SHA256
    return _frame(HELLO_OK, struct.pack("<HBB", version, method, 0) + (challenge or b""))


def encode_auth(response, challenge):
    return _frame(AUTH, bytes(response) + bytes(challenge))


def encode_auth_ok(response):
    return _frame(AUTH_OK, bytes(response))


def encode_spawn(job, fd_targets=(), session="inherit", want_pidfd=False, pid_after_exec=False,
                 kill_on_disconnect=False, deadline_ms=0, keep_connection=False, uid=None,
                 gid=None, groups=None, pgid=None, want_rusage=False, rlimits=None, umask=None,
                 nice=None, no_new_privs=False, oom_score_adj=None, grace_ms=None):
    """job: {"kind": "exec", "program", "args", "env_clear", "env", "cwd"[, "env_remove"]} or
    {"kind": "entry", "name", "payload"} (the decoded form of §10.8, with bytes). session
    "join_process_group" takes pgid; uid, gid, groups (a list) are set when not None (rev 0.5);
    rlimits, a list of {"resource", "soft", "hard"} dicts or (resource, soft, hard) tuples, when
    not None; umask, nice, oom_score_adj, grace_ms when not None, no_new_privs (rev 0.6)."""
    flags = {"inherit": 0, "new_session": NEW_SESSION, "new_process_group": NEW_PROCESS_GROUP,
             "join_process_group": JOIN_PROCESS_GROUP}[session]
    removals = (job.get("env_remove") or []) if job["kind"] == "exec" else []
    flags |= (WANT_PIDFD * bool(want_pidfd) | PID_AFTER_EXEC * bool(pid_after_exec)
              | KILL_ON_DISCONNECT * bool(kill_on_disconnect)
              | KEEP_CONNECTION * bool(keep_connection)
              | SET_UID * (uid is not None) | SET_GID * (gid is not None)
              | SET_GROUPS * (groups is not None) | ENV_REMOVE * bool(removals)
              | WANT_RUSAGE * bool(want_rusage) | SET_RLIMITS * (rlimits is not None)
              | SET_UMASK * (umask is not None) | SET_NICE * (nice is not None)
              | NO_NEW_PRIVS * bool(no_new_privs) | SET_OOM_SCORE_ADJ * (oom_score_adj is not None)
              | SET_GRACE * (grace_ms is not None))
    body = struct.pack("<IQ", flags, deadline_ms)
    body += b"".join(struct.pack("<I", t) for t in fd_targets)
    # The optional fields of rev 0.5, in the order of their bits (§5.5.1).
    if uid is not None:
        body += struct.pack("<I", uid)
    if gid is not None:
        body += struct.pack("<I", gid)
    if groups is not None:
        body += struct.pack("<H", len(groups)) + b"".join(struct.pack("<I", g) for g in groups)
    if session == "join_process_group":
        body += struct.pack("<I", pgid)
    if rlimits is not None:
        limits = [(l["resource"], l["soft"], l["hard"]) if isinstance(l, dict) else tuple(l)
                  for l in rlimits]
        body += struct.pack("<H", len(limits)) + b"".join(struct.pack("<IQQ", *l) for l in limits)
    if umask is not None:
        body += struct.pack("<H", umask)
    if nice is not None:
        body += struct.pack("<i", nice)
    if oom_score_adj is not None:
        body += struct.pack("<i", oom_score_adj)
    if grace_ms is not None:
        body += struct.pack("<I", grace_ms)
    if job["kind"] == "entry":
        body += bytes([JOB_ENTRY]) + _bytes16(_b(job["name"])) + _bytes32(_b(job["payload"]))
    else:
        body += bytes([JOB_EXEC]) + _bytes16(_b(job["program"]))
        body += struct.pack("<H", len(job["args"])) + b"".join(_bytes32(_b(a)) for a in job["args"])
        env = job.get("env") or []
        body += struct.pack("<BH", 1 if job.get("env_clear") else 0, len(env))
        body += b"".join(_bytes32(_b(k)) + _bytes32(_b(v)) for k, v in env)
        if removals:
            body += struct.pack("<H", len(removals)) + b"".join(_bytes32(_b(n)) for n in removals)
        body += _bytes16(_b(job.get("cwd") or b""))
    return _frame(SPAWN, body, len(fd_targets))


def encode_signal(signo):
    return _frame(SIGNAL, struct.pack("<I", signo))


def encode_status_request():
    return _frame(STATUS_REQUEST, b"")


def encode_features_request():
    return _frame(FEATURES_REQUEST, b"")


def encode_features(revision_major=REVISION[0], revision_minor=REVISION[1],
                    spawn_flags=SPAWN_FLAGS_MASK, requests=REQUESTS_MASK):
    return _frame(FEATURES, struct.pack("<HHIII", revision_major, revision_minor, spawn_flags,
                                        requests, 0))


def encode_pid(pid, pidfd=False):
    return _frame(PID, struct.pack("<I", pid), 1 if pidfd else 0)


def encode_exit(code, deadline_expired=False, core_dumped=False, usage=None):
    """usage: None, or a dict of USAGE_FIELDS (rev 0.6: the USAGE flag and its fields)."""
    flags = (DEADLINE_EXPIRED * bool(deadline_expired) | CORE_DUMPED * bool(core_dumped)
             | USAGE * (usage is not None))
    body = struct.pack("<iB3x", code, flags)
    if usage is not None:
        body += struct.pack("<QQQ", *(usage[k] for k in USAGE_FIELDS))
    return _frame(EXIT, body)


def encode_metrics_request():
    return _frame(METRICS_REQUEST, b"")


def encode_metrics(**fields):
    """fields: the METRICS_FIELDS by name (missing ones are 0)."""
    return _frame(METRICS, struct.pack("<%dQ" % len(METRICS_FIELDS), *(fields.get(k, 0) for k in METRICS_FIELDS)))


def encode_signaled():
    return _frame(SIGNALED, b"")


def encode_status(protocol_version, server_pid, live_children, connections, spawned_total,
                  server_version):
    return _frame(STATUS, struct.pack("<HHIIIQ", protocol_version, 0, server_pid, live_children,
                                      connections, spawned_total)
                  + _bytes16(server_version.encode()))


def encode_error(code, errno=0, message=""):
    if isinstance(code, str):
        code = ERROR_CODES[code]
    return _frame(ERROR, struct.pack("<HHi", code, 0, errno) + _bytes16(message.encode()))


def encode_message(msg):
    """Encode a message dict (the output of decode_frame) back to its frame."""
    t = msg["type"]
    if t == "Hello":
        return encode_hello(msg["min_version"], msg["max_version"])
    if t == "HelloOk":
        return encode_hello_ok(msg["version"], msg.get("challenge") if msg["auth"] != "none" else None)
    if t == "Auth":
        return encode_auth(msg["response"], msg["challenge"])
    if t == "AuthOk":
        return encode_auth_ok(msg["response"])
    if t == "Spawn":
        return encode_spawn(msg["job"], msg["fd_targets"], msg["session"], msg["want_pidfd"],
                            msg["pid_after_exec"], msg["kill_on_disconnect"], msg["deadline_ms"],
                            msg.get("keep_connection", False), msg.get("uid"), msg.get("gid"),
                            msg.get("groups"), msg.get("pgid"), msg.get("want_rusage", False),
                            msg.get("rlimits"), msg.get("umask"), msg.get("nice"),
                            msg.get("no_new_privs", False), msg.get("oom_score_adj"),
                            msg.get("grace_ms"))
    if t == "Signal":
        return encode_signal(msg["signo"])
    if t == "StatusRequest":
        return encode_status_request()
    if t == "FeaturesRequest":
        return encode_features_request()
    if t == "MetricsRequest":
        return encode_metrics_request()
    if t == "Metrics":
        return encode_metrics(**{k: msg[k] for k in METRICS_FIELDS})
    if t == "Features":
        return encode_features(msg["revision_major"], msg["revision_minor"], msg["spawn_flags"],
                               msg["requests"])
    if t == "Pid":
        return encode_pid(msg["pid"], msg["pidfd"])
    if t == "Exit":
        return encode_exit(msg["code"], msg["deadline_expired"], msg["core_dumped"],
                           msg.get("usage"))
    if t == "Signaled":
        return encode_signaled()
    if t == "Status":
        return encode_status(msg["protocol_version"], msg["server_pid"], msg["live_children"],
                             msg["connections"], msg["spawned_total"], msg["server_version"])
    if t == "Error":
        return encode_error(msg["code"], msg["errno"], msg["message"])
    raise ValueError(f"unknown message type {t!r}")


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)


# --------------------------------------------------------------------------------------------
# Decoding (§4.1 header rules, §5 body checks, in the spec's order)


def check_header(buf):
    """Apply the header rules of §4.1 to the bytes available (possibly fewer than 8), in order,
    each as soon as its bytes are there. Raises DecodeError; returns nothing."""
    n = len(buf)
    if n >= 1 and buf[0] not in TAG_NAMES:
        raise DecodeError("UnknownTag", f"tag 0x{buf[0]:02x}")
    if n >= 2 and buf[1] != 0:
        raise DecodeError("ReservedNotZero", "header flags")
    if n >= 4:
        nfds = struct.unpack_from("<H", buf, 2)[0]
        if nfds > MAX_FDS:
            raise DecodeError("TooManyFds", f"nfds {nfds}")
        if nfds > MAX_NFDS_FOR_TAG.get(buf[0], 0):
            raise DecodeError("UnexpectedFds", f"{TAG_NAMES[buf[0]]} with nfds {nfds}")
    if n >= 8:
        body_len = struct.unpack_from("<I", buf, 4)[0]
        if body_len > MAX_BODY_LEN:
            raise DecodeError("BodyTooLong", f"body_len {body_len}")
        fixed = FIXED_BODY_LEN.get(buf[0])
        if fixed is not None and body_len != fixed:
            raise DecodeError("BadBodyLength", f"{TAG_NAMES[buf[0]]} body_len {body_len}")


def decode_frame(buf):
    """Decode the frame at the front of buf. Returns (message dict, nfds, frame length), or None
    when buf holds only a valid prefix of a frame. Raises DecodeError."""
    check_header(buf)
    if len(buf) < HEADER_LEN:
        return None
    tag, _, nfds, body_len = struct.unpack_from("<BBHI", buf)
    if len(buf) < HEADER_LEN + body_len:
        return None
    r = _Reader(bytes(buf[HEADER_LEN:HEADER_LEN + body_len]))
    msg = {"type": TAG_NAMES[tag]}
    msg.update(_BODY_DECODERS[tag](r, nfds))
    if r.pos != len(r.data):
        raise DecodeError("TrailingBytes", f"{len(r.data) - r.pos} bytes after the last field")
    return msg, nfds, HEADER_LEN + body_len


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n, what="field"):
        if self.pos + n > len(self.data):
            raise DecodeError("Truncated", what)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack("<H", self.take(2))[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def i32(self):
        return struct.unpack("<i", self.take(4))[0]


def _text(b, what):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("InvalidValue", f"{what} is not UTF-8") from None


def _hello(r, nfds):
    if r.take(4) != MAGIC:
        raise DecodeError("BadMagic")
    lo, hi = r.u16(), r.u16()
    if not 1 <= lo <= hi:
        raise DecodeError("InvalidValue", f"VersionRange {lo}..={hi}")
    return {"min_version": lo, "max_version": hi}


def _hello_ok(r, nfds):
    version, method, reserved = r.u16(), r.u8(), r.u8()
    if version == 0:
        raise DecodeError("InvalidValue", "Version 0")
    if reserved != 0:
        raise DecodeError("ReservedNotZero", "HelloOk.reserved")
    if method == AUTH_NONE:
        return {"version": version, "auth": "none"}
    if method == AUTH_HMAC_SHA256:
        return {"version": version, "auth": "hmac-sha256", "challenge": r.take(CHALLENGE_LEN, "challenge")}
    raise DecodeError("InvalidValue", f"AuthMethod {method}")


def _auth(r, nfds):
    return {"response": r.take(MAC_LEN), "challenge": r.take(CHALLENGE_LEN)}


def _auth_ok(r, nfds):
    return {"response": r.take(MAC_LEN)}


def _spawn(r, nfds):
    flags, deadline = r.u32(), r.u64()
    if flags & ~SPAWN_FLAGS_MASK:
        raise DecodeError("ReservedNotZero", f"Spawn.flags 0x{flags:x}")
    if bin(flags & SESSION_FLAGS).count("1") > 1:
        raise DecodeError("InvalidValue", "SpawnFlags: more than one session bit")
    if len(r.data) - r.pos < 4 * nfds:
        raise DecodeError("Truncated", "fd map")
    targets = []
    for _ in range(nfds):
        t = r.u32()
        if t > MAX_TARGET_FD:
            raise DecodeError("LimitExceeded", f"TargetFd {t}")
        if t in targets:
            raise DecodeError("DuplicateTarget", f"target {t}")
        targets.append(t)
    extra = {}                                  # rev 0.5 fields, keys only when set (§10.8)

    def an_id(what):
        v = r.u32()
        if v == 0xFFFFFFFF:
            raise DecodeError("InvalidValue", f"{what} (uid_t/gid_t) -1")
        return v
    if flags & SET_UID:
        extra["uid"] = an_id("Uid")
    if flags & SET_GID:
        extra["gid"] = an_id("Gid")
    if flags & SET_GROUPS:
        n = r.u16()
        if n > MAX_GROUPS:
            raise DecodeError("LimitExceeded", f"Groups {n}")
        if len(r.data) - r.pos < 4 * n:
            raise DecodeError("Truncated", "groups")
        extra["groups"] = [an_id("Gid") for _ in range(n)]
    if flags & JOIN_PROCESS_GROUP:
        pgid = r.u32()
        if not 1 <= pgid <= 0x7FFFFFFF:
            raise DecodeError("InvalidValue", f"Pgid {pgid}")
        extra["pgid"] = pgid
    if flags & SET_RLIMITS:
        n = r.u16()
        if n > MAX_RLIMITS:
            raise DecodeError("LimitExceeded", f"Rlimits {n}")
        if len(r.data) - r.pos < 20 * n:
            raise DecodeError("Truncated", "rlimits")
        extra["rlimits"] = []
        for _ in range(n):
            resource, soft, hard = r.u32(), r.u64(), r.u64()
            if resource >= len(RLIMIT_NAMES) or soft > hard:
                raise DecodeError("InvalidValue", f"Rlimit ({resource}, {soft}, {hard})")
            extra["rlimits"].append({"resource": resource, "soft": soft, "hard": hard})
    if flags & SET_UMASK:
        extra["umask"] = r.u16()
        if extra["umask"] > 0o777:
            raise DecodeError("InvalidValue", f"Umask 0o{extra['umask']:o}")
    for bit, key, lo, hi, field in ((SET_NICE, "nice", -20, 19, "Nice"),
                                     (SET_OOM_SCORE_ADJ, "oom_score_adj", -1000, 1000, "OomScoreAdj")):
        if flags & bit:
            v = struct.unpack("<i", struct.pack("<I", r.u32()))[0]
            if not lo <= v <= hi:
                raise DecodeError("InvalidValue", f"{field} {v}")
            extra[key] = v
    if flags & SET_GRACE:
        extra["grace_ms"] = r.u32()
        if extra["grace_ms"] == 0:
            raise DecodeError("InvalidValue", "Grace 0")
    if flags & NO_NEW_PRIVS:
        extra["no_new_privs"] = True
    kind = r.u8()
    if kind == JOB_ENTRY and flags & ENV_REMOVE:
        raise DecodeError("InvalidValue", "SpawnFlags: ENV_REMOVE on an entry job")
    if kind == JOB_ENTRY:
        job = _entry_job(r)
    elif kind == JOB_EXEC:
        job = _exec_job(r, bool(flags & ENV_REMOVE))
    else:
        raise DecodeError("InvalidValue", f"JobKind {kind}")
    session = ("new_session" if flags & NEW_SESSION else
               "new_process_group" if flags & NEW_PROCESS_GROUP else
               "join_process_group" if flags & JOIN_PROCESS_GROUP else "inherit")
    return {"session": session, "want_pidfd": bool(flags & WANT_PIDFD),
            "pid_after_exec": bool(flags & PID_AFTER_EXEC),
            "kill_on_disconnect": bool(flags & KILL_ON_DISCONNECT),
            "keep_connection": bool(flags & KEEP_CONNECTION),
            "deadline_ms": deadline, "fd_targets": targets, "job": job, **extra,
            **({"want_rusage": True} if flags & WANT_RUSAGE else {})}


def _entry_job(r):
    n = r.u16()
    if n > MAX_ENTRY_NAME_LEN:
        raise DecodeError("LimitExceeded", f"EntryName length {n}")
    name = r.take(n, "entry name")
    try:
        name = name.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("InvalidValue", "EntryName is not UTF-8") from None
    if not name:
        raise DecodeError("InvalidValue", "EntryName is empty")
    n = r.u32()
    if n > MAX_BODY_LEN:
        raise DecodeError("LimitExceeded", f"Body: payload length {n}")
    return {"kind": "entry", "name": name, "payload": r.take(n, "payload")}


def _exec_job(r, removes=False):
    n = r.u16()
    if n > MAX_PATH_LEN:
        raise DecodeError("LimitExceeded", f"PathLen {n}")
    program = r.take(n, "program")
    if not program or b"\0" in program:
        raise DecodeError("InvalidValue", "Program empty or with NUL")
    argc = r.u16()
    if argc == 0:
        raise DecodeError("InvalidValue", "Arg: argc 0")
    if argc > MAX_ARGS:
        raise DecodeError("LimitExceeded", f"Args {argc}")
    args = []
    for _ in range(argc):
        n = r.u32()
        if n > MAX_ARG_LEN:
            raise DecodeError("LimitExceeded", f"ArgLen {n}")
        a = r.take(n, "argument")
        if b"\0" in a:
            raise DecodeError("InvalidValue", "Arg with NUL")
        args.append(a)
    env_clear = r.u8()
    if env_clear > 1:
        raise DecodeError("InvalidValue", f"Bool env_clear {env_clear}")
    envc = r.u16()
    if envc > MAX_ENV:
        raise DecodeError("LimitExceeded", f"Env {envc}")
    env = []
    for _ in range(envc):
        n = r.u32()
        if n > MAX_ARG_LEN:
            raise DecodeError("LimitExceeded", f"ArgLen key {n}")
        key = r.take(n, "env key")
        n = r.u32()
        if n > MAX_ARG_LEN:
            raise DecodeError("LimitExceeded", f"ArgLen value {n}")
        value = r.take(n, "env value")
        if not key or b"=" in key:
            raise DecodeError("InvalidValue", "EnvKey empty or with '='")
        if b"\0" in key:
            raise DecodeError("InvalidValue", "EnvKey with NUL")
        if b"\0" in value:
            raise DecodeError("InvalidValue", "EnvValue with NUL")
        if len(key) + 1 + len(value) > MAX_ARG_LEN:
            raise DecodeError("LimitExceeded", "ArgLen KEY=VALUE")
        env.append((key, value))
    removals = []
    if removes:                                 # rev 0.5, ENV_REMOVE (§5.5.3)
        count = r.u16()
        if count == 0:
            raise DecodeError("InvalidValue", "EnvRemove: ENV_REMOVE with no names")
        if count > MAX_ENV:
            raise DecodeError("LimitExceeded", f"Env removals {count}")
        for _ in range(count):
            n = r.u32()
            if n > MAX_ARG_LEN:
                raise DecodeError("LimitExceeded", f"ArgLen removal {n}")
            name = r.take(n, "name to remove")
            if not name or b"=" in name or b"\0" in name:
                raise DecodeError("InvalidValue", "EnvRemove: empty, '=' or NUL")
            removals.append(name)
    n = r.u16()
    if n > MAX_PATH_LEN:
        raise DecodeError("LimitExceeded", f"PathLen cwd {n}")
    cwd = r.take(n, "cwd")
    if b"\0" in cwd:
        raise DecodeError("InvalidValue", "Cwd with NUL")
    job = {"kind": "exec", "program": program, "args": args, "env_clear": bool(env_clear),
           "env": env, "cwd": cwd or None}
    if removals:
        job["env_remove"] = removals
    return job


def _signal(r, nfds):
    signo = r.u32()
    if not 1 <= signo <= MAX_SIGNAL:
        raise DecodeError("InvalidValue", f"Signal {signo}")
    return {"signo": signo}


def _empty(r, nfds):
    return {}


def _pid(r, nfds):
    pid = r.u32()
    if not 1 <= pid <= MAX_PID:
        raise DecodeError("InvalidValue", f"Pid {pid}")
    return {"pid": pid, "pidfd": nfds == 1}


def _exit(r, nfds):
    code, flags, reserved = r.i32(), r.u8(), r.take(3)
    if reserved != b"\0\0\0":                                       # §5.9 check 1
        raise DecodeError("ReservedNotZero", "Exit.reserved")
    if flags & ~EXIT_FLAGS_MASK:                                        # §5.9 check 2
        raise DecodeError("ReservedNotZero", f"Exit.flags 0x{flags:x}")
    if not -MAX_SIGNAL <= code <= 255:                                  # §5.9 check 3
        raise DecodeError("InvalidValue", f"ExitCode {code}")
    msg = {"code": code, "deadline_expired": bool(flags & DEADLINE_EXPIRED),
           "core_dumped": bool(flags & CORE_DUMPED)}
    if flags & USAGE:                                                   # §5.9 check 4 (rev 0.6)
        msg["usage"] = {k: r.u64() for k in USAGE_FIELDS}
    return msg


def _metrics(r, nfds):
    return {k: r.u64() for k in METRICS_FIELDS}                         # §5.16: no checks


def _status(r, nfds):
    version, reserved, pid, live, conns, total = (r.u16(), r.u16(), r.u32(), r.u32(), r.u32(), r.u64())
    if reserved != 0:
        raise DecodeError("ReservedNotZero", "Status.reserved")
    n = r.u16()
    if n > MAX_VERSION_STRING_LEN:
        raise DecodeError("LimitExceeded", f"VersionString {n}")
    server_version = _text(r.take(n, "server version"), "Utf8: server version")
    if pid > MAX_PID:
        raise DecodeError("InvalidValue", f"Pid {pid}")
    if version == 0:
        raise DecodeError("InvalidValue", "Version 0")
    if pid == 0:
        raise DecodeError("InvalidValue", "Pid 0")
    return {"protocol_version": version, "server_pid": pid, "live_children": live,
            "connections": conns, "spawned_total": total, "server_version": server_version}


def _features(r, nfds):
    major, minor, spawn_flags, requests, reserved = r.u16(), r.u16(), r.u32(), r.u32(), r.u32()
    if reserved != 0:                                                   # §5.14 check 1
        raise DecodeError("ReservedNotZero", "Features.reserved")
    if (major, minor) < (0, 6):                                         # §5.14 check 2
        raise DecodeError("InvalidValue", f"Revision {major}.{minor}")
    # Unknown bits of spawn_flags and requests are not errors: a later revision sets them.
    return {"revision_major": major, "revision_minor": minor, "spawn_flags": spawn_flags,
            "requests": requests}


def _error(r, nfds):
    code, reserved, errno = r.u16(), r.u16(), r.i32()
    if code not in ERROR_NAMES:
        raise DecodeError("UnknownErrorCode", f"code {code}")
    if reserved != 0:
        raise DecodeError("ReservedNotZero", "Error.reserved")
    n = r.u16()
    if n > MAX_ERROR_MESSAGE_LEN:
        raise DecodeError("LimitExceeded", f"ErrorMessage {n}")
    message = _text(r.take(n, "message"), "Utf8: message")
    return {"code": code, "name": ERROR_NAMES[code], "errno": errno, "message": message}


_BODY_DECODERS = {
    HELLO: _hello, HELLO_OK: _hello_ok, AUTH: _auth, AUTH_OK: _auth_ok, SPAWN: _spawn,
    SIGNAL: _signal, STATUS_REQUEST: _empty, PID: _pid, EXIT: _exit, SIGNALED: _empty,
    STATUS: _status, ERROR: _error, FEATURES_REQUEST: _empty, FEATURES: _features,
    METRICS_REQUEST: _empty, METRICS: _metrics,
}

# --------------------------------------------------------------------------------------------
# Authentication (§9.2)


def client_response(key, server_challenge):
    return hmac.new(key, CLIENT_LABEL + server_challenge, hashlib.sha256).digest()


def server_response(key, client_challenge):
    return hmac.new(key, SERVER_LABEL + client_challenge, hashlib.sha256).digest()


# --------------------------------------------------------------------------------------------
# Transport (§4.3)

CMSG_BUF = socket.CMSG_SPACE(SCM_MAX_FD * 4)       # 1032 bytes on 64-bit Linux


def send_frame(sock, frame, fds=()):
    """Send one encoded frame and its fds: at most 253 fds per sendmsg; while more fds remain
    after a call, that call carries exactly one byte (sender rules S1-S3). Python retries EINTR
    itself (PEP 475); on a socket with a timeout it also waits out EAGAIN."""
    fds = list(fds)
    pos, i = 0, 0
    while i < len(fds):                               # the calls that carry fds
        chunk = fds[i:i + SCM_MAX_FD]
        end = pos + 1 if i + len(chunk) < len(fds) else len(frame)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", chunk))]
        pos += sock.sendmsg([frame[pos:end]], anc, socket.MSG_NOSIGNAL)
        i += len(chunk)                               # only once the call has succeeded
    while pos < len(frame):                           # the rest, without fds
        pos += sock.send(frame[pos:], socket.MSG_NOSIGNAL)


class FrameReader:
    """Reads frames and their fds from one connection. Each fd is tagged with the stream offset
    of the last byte of the recvmsg that delivered it (rule R3)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.base = 0               # stream offset of buf[0]
        self.fds = []               # (offset, fd) not yet handed out

    def close(self):
        for _, fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def _fail(self, exc):
        self.close()
        raise exc

    def _recv(self):
        try:
            data, anc, flags, _ = self.sock.recvmsg(65536, CMSG_BUF, socket.MSG_CMSG_CLOEXEC)
        except ConnectionResetError:
            data, anc, flags = b"", [], 0
        got = array.array("i")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
        if flags & socket.MSG_CTRUNC:                                   # R2
            for fd in got:
                os.close(fd)
            self._fail(ProtocolError("MSG_CTRUNC: fds were lost"))
        if not data:                                                    # R7
            for fd in got:
                os.close(fd)
            return False
        self.buf += data
        last = self.base + len(self.buf) - 1
        self.fds += [(last, fd) for fd in got]                          # R3
        if len(self.fds) > MAX_FDS + SCM_MAX_FD:                        # R6
            self._fail(ProtocolError("TooManyFds: too many fds held"))
        return True

    def read(self):
        """Return (message, fds) for the next frame. Raises ConnectionClosed at end of stream,
        DecodeError / ProtocolError on bad input (all fds of the connection closed)."""
        while True:
            try:
                got = decode_frame(self.buf)
            except DecodeError as e:
                self._fail(e)
            if got is not None:
                msg, nfds, frame_len = got
                end = self.base + frame_len
                mine = [fd for off, fd in self.fds if off < end]
                if len(mine) != nfds:                                   # R4
                    self._fail(ProtocolError(f"FdMismatch: {len(mine)} fds for nfds {nfds}"))
                del self.fds[:len(mine)]
                del self.buf[:frame_len]
                self.base += frame_len
                return msg, mine
            if not self._recv():
                self.close()
                raise ConnectionClosed("server closed the connection"
                                       + (" mid-frame" if self.buf else ""))


# --------------------------------------------------------------------------------------------
# Connection, Client, Child


def connect_verified(sock, socket_path, server_uid):
    """§9.3: connects only through a socket directory owned by server_uid and closed to others
    (0o077 for our own effective uid's server, 0o022 for another uid's), reached through no
    symbolic link of a third user, checked on an O_PATH descriptor that is then used; and
    requires the peer's SO_PEERCRED uid to be server_uid. Nothing is sent before both pass."""
    path = os.fsencode(socket_path)
    if path.startswith(b"\0"):
        # An abstract socket has no directory to check: only the peer's uid (and the key).
        sock.connect(path)
    else:
        d, name = os.path.split(path)
        d = d or b"."
        link = os.lstat(d)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (server_uid, 0):
            raise ProtocolError(f"socket directory {d!r} is a symbolic link of uid {link.st_uid}")
        fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            mask = 0o077 if server_uid == os.geteuid() else 0o022
            if st.st_uid != server_uid:
                raise ProtocolError(f"unsafe permissions on socket directory {d!r}: owned by uid "
                                    f"{st.st_uid}, not uid {server_uid}")
            if st.st_mode & mask:
                raise ProtocolError(f"unsafe permissions on socket directory {d!r}: mode "
                                    f"{stat.S_IMODE(st.st_mode):04o}")
            sock.connect(b"/proc/self/fd/%d/%s" % (fd, name))
        finally:
            os.close(fd)
    ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", ucred)
    if uid & 0xFFFFFFFF != server_uid:
        raise ProtocolError(f"the server runs as uid {uid & 0xFFFFFFFF}, not uid {server_uid}")


class Connection:
    """One socket to the server, after the handshake (§6.1, §9.2)."""

    def __init__(self, socket_path, key=None, timeout=None, server_uid=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.reader = FrameReader(self.sock)
        try:
            self.sock.settimeout(timeout)
            uid = os.geteuid() if server_uid is None else server_uid
            connect_verified(self.sock, socket_path, uid)
            self.version = self._handshake(key)
        except BaseException:
            self.close()
            raise

    def _handshake(self, key):
        self.send(encode_hello(PROTOCOL_VERSION, PROTOCOL_VERSION))
        msg, _ = self.expect("HelloOk")
        if msg["version"] != PROTOCOL_VERSION:                          # §5.2
            raise ProtocolError(f"server chose version {msg['version']}, not offered")
        if key is None:
            if msg["auth"] != "none":
                raise ProtocolError("server requires authentication and no key was given")
            return msg["version"]
        if msg["auth"] != "hmac-sha256":                                # §6.6: maybe an impostor
            raise ProtocolError("a key was given but the server does not authenticate")
        my_challenge = os.urandom(CHALLENGE_LEN)
        self.send(encode_auth(client_response(key, msg["challenge"]), my_challenge))
        reply, _ = self.expect("AuthOk")
        if not hmac.compare_digest(reply["response"], server_response(key, my_challenge)):
            raise ProtocolError("AuthOk response is wrong: the server does not hold the key")
        return msg["version"]

    def send(self, frame, fds=()):
        send_frame(self.sock, frame, fds)

    def read(self):
        """Next (message, fds). An Error frame is raised as a ServerError subclass."""
        msg, fds = self.reader.read()
        if msg["type"] == "Error":
            raise ServerError.from_message(msg)
        return msg, fds

    def expect(self, *types):
        msg, fds = self.read()
        if msg["type"] not in types:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"expected {' or '.join(types)}, got {msg['type']}")
        return msg, fds

    def close(self):
        self.reader.close()
        self.sock.close()


class Child:
    """A child of the server, driven through its own connection."""

    def __init__(self, conn, pid, pidfd):
        self.conn, self.pid, self.pidfd = conn, pid, pidfd
        self.returncode = None                 # signed exit code once known
        self.deadline_expired = self.core_dumped = False
        self.usage = None                      # rev 0.6: a dict of USAGE_FIELDS with want_rusage

    def _on_exit(self, msg):
        self.returncode = msg["code"]
        self.deadline_expired, self.core_dumped = msg["deadline_expired"], msg["core_dumped"]
        self.usage = msg.get("usage")

    def _reply(self, *types):
        """Read the reply to a request; an Exit that arrives first ends the child (§6.6)."""
        msg, _ = self.conn.expect("Exit", *types)
        if msg["type"] == "Exit":
            self._on_exit(msg)
            return None
        return msg

    def wait(self):
        """Block until the child ends; return its signed exit code (>= 0 status, < 0 -signal).
        Raises ExecFailedError / ChildSetupFailedError if it never got to run its job."""
        if self.returncode is None:
            msg, _ = self.conn.expect("Exit")
            self._on_exit(msg)
        return self.returncode

    def signal(self, signo):
        """Send signo to the child. Returns True once delivered (Signaled), False if the child had
        already ended (its Exit arrived first; see returncode). Raises SignalFailedError."""
        if self.returncode is not None:
            return False
        self.conn.send(encode_signal(signo))
        return self._reply("Signaled") is not None

    def status(self):
        """The server's Status, asked on this child's connection (None if the child ended)."""
        if self.returncode is not None:
            return None
        self.conn.send(encode_status_request())
        msg = self._reply("Status")
        return msg and {k: v for k, v in msg.items() if k != "type"}

    def close(self):
        """Close the connection (the child keeps running unless kill_on_disconnect) and pidfd."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Client:
    """Opens one connection per request to the server at socket_path."""

    def __init__(self, socket_path, key=None, timeout=None):
        self.socket_path, self.key, self.timeout = socket_path, key, timeout
        self._features = ()                    # not asked yet; None: a server before rev 0.6

    def connect(self):
        return Connection(self.socket_path, self.key, self.timeout)

    def status(self):
        conn = self.connect()
        try:
            conn.send(encode_status_request())
            msg, _ = conn.expect("Status")
            return {k: v for k, v in msg.items() if k != "type"}
        finally:
            conn.close()

    def metrics(self):
        """The server's counters (§5.16), a dict of METRICS_FIELDS. Raises UnsupportedError for
        a server whose Features lack MetricsRequest (bit 4 of requests), sending nothing."""
        f = self.features()
        if f is None or not f["requests"] & (1 << (METRICS_REQUEST - SPAWN)):
            raise UnsupportedError("MetricsRequest",
                                   None if f is None else (f["revision_major"], f["revision_minor"]))
        conn = self.connect()
        try:
            conn.send(encode_metrics_request())
            msg, _ = conn.expect("Metrics")
            return {k: v for k, v in msg.items() if k != "type"}
        finally:
            conn.close()

    def features(self, refresh=False):
        """What the server implements (§5.14), asked once and kept: a dict with
        revision_major, revision_minor, spawn_flags, requests; None for a server before rev 0.6,
        which answers FeaturesRequest with Error(Malformed) (an unknown tag, §5.13)."""
        if refresh or self._features == ():
            conn = self.connect()
            try:
                conn.send(encode_features_request())
                msg, _ = conn.expect("Features")
                self._features = {k: v for k, v in msg.items() if k != "type"}
            except MalformedError:
                self._features = None
            finally:
                conn.close()
        return self._features

    def implemented_spawn_flags(self):
        """The Spawn.flags bits the server implements (bits 0-4 before rev 0.6)."""
        f = self.features()
        return PRE_0_6_SPAWN_FLAGS if f is None else f["spawn_flags"]

    def spawn_exec(self, argv, env=None, env_clear=False, cwd=None, fds=None, program=None,
                   new_session=False, new_process_group=False, deadline_ms=0, want_pidfd=False,
                   pid_after_exec=False, kill_on_disconnect=False, env_remove=(), **ids):
        """Run argv[0] (or program) with argv. env: dict or list of (key, value) applied on top of
        the server's environment (or an empty one with env_clear), after env_remove (names taken
        out of the server's environment). fds: {target: fd}. ids: uid, gid, groups, pgid (rev
        0.5; pgid joins that process group), want_rusage (rev 0.6: Child.usage after wait),
        rlimits (rev 0.6: a list of (resource, soft, hard)), umask, nice, no_new_privs,
        oom_score_adj, grace_ms (rev 0.6)."""
        env = list(env.items()) if isinstance(env, dict) else list(env or [])
        job = {"kind": "exec", "program": _b(program if program is not None else argv[0]),
               "args": [_b(a) for a in argv], "env_clear": env_clear,
               "env": [(_b(k), _b(v)) for k, v in env], "cwd": _b(cwd) if cwd else None,
               "env_remove": [_b(n) for n in env_remove]}
        return self._spawn(job, fds, new_session, new_process_group, deadline_ms, want_pidfd,
                           pid_after_exec, kill_on_disconnect, **ids)

    def spawn_entry(self, name, payload=b"", fds=None, new_session=False, new_process_group=False,
                    deadline_ms=0, want_pidfd=False, kill_on_disconnect=False, **ids):
        job = {"kind": "entry", "name": name, "payload": _b(payload)}
        return self._spawn(job, fds, new_session, new_process_group, deadline_ms, want_pidfd,
                           False, kill_on_disconnect, **ids)

    def _spawn(self, job, fds, new_session, new_process_group, deadline_ms, want_pidfd,
               pid_after_exec, kill_on_disconnect, uid=None, gid=None, groups=None, pgid=None,
               want_rusage=False, rlimits=None, umask=None, nice=None, no_new_privs=False,
               oom_score_adj=None, grace_ms=None):
        fds = dict(fds or {})
        if len(fds) > MAX_FDS:
            raise ValueError(f"{len(fds)} fds: at most {MAX_FDS} per spawn")
        session = ("new_session" if new_session else
                   "new_process_group" if new_process_group or pgid == 0 else
                   "join_process_group" if pgid is not None else "inherit")
        frame = encode_spawn(job, list(fds), session, want_pidfd, pid_after_exec,
                             kill_on_disconnect, deadline_ms, False, uid, gid, groups, pgid,
                             want_rusage, rlimits, umask, nice, no_new_privs, oom_score_adj,
                             grace_ms)
        try:
            decode_frame(frame)                # refuse locally what the server must refuse
        except DecodeError as e:
            raise ValueError(f"invalid spawn request: {e}") from None
        # §5.14: every flag bit the request sets must be one the server implements.
        missing = struct.unpack_from("<I", frame, 8)[0] & ~self.implemented_spawn_flags()
        if missing:
            f = self.features()
            bit = missing & -missing
            raise UnsupportedError(FLAG_NAMES.get(bit, f"bit {bit.bit_length() - 1}"),
                                   None if f is None else (f["revision_major"], f["revision_minor"]))
        conn = self.connect()
        try:
            conn.send(frame, list(fds.values()))
            msg, got = conn.expect("Pid")
        except BaseException:
            conn.close()
            raise
        return Child(conn, msg["pid"], got[0] if got else None)

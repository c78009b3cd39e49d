"""The typed entry convention of spec/PROTOCOL.md §11 (informative), written from the spec:
the typed header, the fingerprint, and the result frames. No I/O here; a JSON-codec call needs
only these, a SOCK_SEQPACKET socketpair and forkserver_client's Spawn.
"""
import struct

TYPED_MAGIC = b"FSTY"
TYPED_VERSION = 1
TYPED_HEADER_LEN = 32
MAX_ARG_FDS = 255
FLAG_WORKER = 0x0001  # §11.7: the call starts a long-lived worker
FLAG_ARG_MEMFD = 0x0002  # §11.8: the argument is in a sealed memfd
MEMFD_REF_LEN = 16
MAX_MEMFD_ARG_LEN = 1 << 30
INLINE_ARG_MAX = 32 * 1024  # this client's limit: longer arguments go in a memfd
MAX_RESULT_FRAME_LEN = 64 * 1024
MAX_TEXT_LEN = 8 * 1024
CODECS = {"msgpack": 1, "json": 2}
CODEC_NAMES = {v: k for k, v in CODECS.items()}

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


class TypedError(ValueError):
    """A header or a frame that §11 refuses; `name` is the reference decoder's error."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def fnv1a64(data, h=FNV_OFFSET):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def fingerprint(entry, arg_type, result_type, codec):
    """§11.2: FNV-1a 64 over name 00 arg_type 00 result_type 00 codec_id."""
    data = b"\0".join(s.encode() for s in (entry, arg_type, result_type)) + b"\0"
    return fnv1a64(data + bytes([CODECS[codec]]))


def encode_header(codec, fp, channel, fd_targets, arg, worker=False, memfd=None):
    """The payload of a typed call: the header, then `arg` (bytes in the codec); `worker`
    starts a long-lived worker (§11.7), whose header has no argument; `memfd` is
    {"target", "len"}: the argument is in a sealed memfd (§11.8) and `arg` is empty."""
    if len(fd_targets) > MAX_ARG_FDS:
        raise ValueError("too many fds")
    if (worker or memfd) and arg:
        raise ValueError("a worker or memfd header carries no inline argument")
    if memfd and (worker or memfd["target"] == channel or memfd["target"] in fd_targets
                  or memfd["len"] > MAX_MEMFD_ARG_LEN):
        raise ValueError("a memfd reference in a worker header, at a taken target or too long")
    flags = (FLAG_WORKER if worker else 0) | (FLAG_ARG_MEMFD if memfd else 0)
    if memfd:
        arg = struct.pack("<IIQ", memfd["target"], 0, memfd["len"])
    offset = TYPED_HEADER_LEN + 4 * len(fd_targets)
    head = TYPED_MAGIC + struct.pack("<BBHQIIII", TYPED_VERSION, CODECS[codec], flags, fp,
                                     channel, len(fd_targets), offset, len(arg))
    return head + b"".join(struct.pack("<I", t) for t in fd_targets) + arg


def decode_header(payload):
    """-> (dict, inline arg bytes), or TypedError in the order of §11.2's and §11.8's checks."""
    if len(payload) < TYPED_HEADER_LEN:
        raise TypedError("TooShort(%d)" % len(payload))
    if payload[:4] != TYPED_MAGIC:
        raise TypedError("BadMagic")
    version, codec, flags, fp, channel, nfds, offset, length = struct.unpack_from("<BBHQIIII", payload, 4)
    if version != TYPED_VERSION:
        raise TypedError("Version(%d)" % version)
    if codec not in CODEC_NAMES:
        raise TypedError("Codec(%d)" % codec)
    if flags & ~(FLAG_WORKER | FLAG_ARG_MEMFD):
        raise TypedError("Reserved")
    worker = bool(flags & FLAG_WORKER)
    in_memfd = bool(flags & FLAG_ARG_MEMFD)
    if nfds > MAX_ARG_FDS:
        raise TypedError("TooManyFds(%d)" % nfds)
    end = TYPED_HEADER_LEN + 4 * nfds
    if len(payload) < end:
        raise TypedError("TooShort(%d)" % len(payload))
    bad_len = (worker or length != MEMFD_REF_LEN) if in_memfd else (worker and length)
    if offset != end or offset + length != len(payload) or bad_len:
        raise TypedError("Argument { offset: %d, len: %d }" % (offset, length))
    targets = list(struct.unpack_from("<%dI" % nfds, payload, TYPED_HEADER_LEN))
    arg, memfd = payload[offset:], None
    if in_memfd:
        target, reserved, mlen = struct.unpack_from("<IIQ", payload, offset)
        if reserved:
            raise TypedError("Reserved")
        if target == channel or target in targets:
            raise TypedError("MemfdTarget(%d)" % target)
        if mlen > MAX_MEMFD_ARG_LEN:
            raise TypedError("MemfdLen(%d)" % mlen)
        arg, memfd = b"", {"target": target, "len": mlen}
    header = {"codec": CODEC_NAMES[codec], "fingerprint": "%016x" % fp, "channel": channel,
              "fd_targets": targets, "arg": arg.hex(), "worker": worker, "memfd": memfd}
    return header, arg


def sealed_memfd(data):
    """§11.8: a close-on-exec memfd holding `data`, sealed against writes, growth, shrinking
    and further seals."""
    import fcntl
    import os
    fd = os.memfd_create("forkserver-typed-arg", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _text(b):
    if len(b) > MAX_TEXT_LEN:
        raise TypedError("Text")
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise TypedError("Text") from None


def decode_frame(b):
    """One result frame (§11.3) -> its decoded form (the vectors' `decoded`)."""
    if len(b) > MAX_RESULT_FRAME_LEN:
        raise TypedError("TooLong")
    if not b:
        raise TypedError("Truncated")
    tag, rest = b[0], b[1:]
    if tag == 1:
        if rest:
            raise TypedError("Trailing")
        return {"type": "Accepted"}
    if tag == 2:
        return {"type": "Chunk", "bytes": rest.hex()}
    if tag in (3, 7):
        if len(rest) < 3:
            raise TypedError("Truncated")
        if rest[0]:
            raise TypedError("Trailing")
        return {"type": "Value" if tag == 3 else "Request", "nfds": struct.unpack_from("<H", rest, 1)[0], "bytes": rest[3:].hex()}
    if tag == 4:
        return {"type": "Error", "text": _text(rest)}
    if tag == 5:
        if len(rest) < 4:
            raise TypedError("Truncated")
        (n,) = struct.unpack_from("<I", rest)
        if len(rest) < 4 + n:
            raise TypedError("Truncated")
        return {"type": "Panic", "message": _text(rest[4:4 + n]), "location": _text(rest[4 + n:])}
    if tag == 6:
        if len(rest) < 8:
            raise TypedError("Truncated")
        return {"type": "Mismatch", "fingerprint": "%016x" % struct.unpack_from("<Q", rest)[0],
                "detail": _text(rest[8:])}
    raise TypedError("UnknownTag(%d)" % tag)


def call_json(client, entry, arg, arg_type, result_type, deadline_ms=0,
              inline_max=INLINE_ARG_MAX):
    """A typed call with the JSON codec (§11.1): `client` is a forkserver_client.Client, `arg`
    a JSON-serializable value, `arg_type`/`result_type` the server's type names (§11.2).
    Returns one of ("value", v), ("error", text), ("panic", message, location),
    ("mismatch", detail), ("killed", signo, deadline_expired), ("exited", code), decided as
    §11.3 says."""
    import json
    import socket

    import os

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel, fds, memfd = 3, {}, None
    fp = fingerprint(entry, arg_type, result_type, "json")
    body = json.dumps(arg, separators=(",", ":")).encode()
    if len(body) > inline_max:                 # §11.8: too long to go inline
        memfd = sealed_memfd(body)
        fds[4] = memfd
        payload = encode_header("json", fp, channel, [], b"", memfd={"target": 4, "len": len(body)})
    else:
        payload = encode_header("json", fp, channel, [], body)
    fds[channel] = theirs.fileno()
    try:
        try:
            child = client.spawn_entry(entry, payload, fds=fds, deadline_ms=deadline_ms)
        except Exception as e:                 # UnknownEntryError: a mismatch (§11.3)
            if type(e).__name__ == "UnknownEntryError":
                return ("mismatch", "no such entry")
            raise
        theirs.close()
        if memfd is not None:
            os.close(memfd)
            memfd = None
        accepted, value, answer = False, b"", None
        while answer is None:
            frame = ours.recv(MAX_RESULT_FRAME_LEN + 1)
            if not frame:
                break
            f = decode_frame(frame)
            t = f["type"]
            if t == "Accepted":
                accepted = True
            elif t == "Chunk":
                value += bytes.fromhex(f["bytes"])
            elif t == "Value":
                answer = ("value", json.loads(value + bytes.fromhex(f["bytes"])))
            elif t == "Error":
                answer = ("error", f["text"])
            elif t == "Panic":
                answer = ("panic", f["message"], f["location"])
            elif t == "Mismatch":
                answer = ("mismatch", f["detail"])
        code = child.wait()
        child.close()
        if answer is not None:
            return answer
        if code < 0:
            return ("killed", -code, child.deadline_expired)
        return ("exited", code) if accepted else ("mismatch", "not a typed entry")
    finally:
        ours.close()
        theirs.close()
        if memfd is not None:
            os.close(memfd)


def _answer(ours):
    """Reads one answer (§11.3 frames after `Accepted`): ("value", v), ("error", text),
    ("panic", message, location), or None if the channel ended first."""
    import json
    value = b""
    while True:
        frame = ours.recv(MAX_RESULT_FRAME_LEN + 1)
        if not frame:
            return None
        f = decode_frame(frame)
        t = f["type"]
        if t == "Chunk":
            value += bytes.fromhex(f["bytes"])
        elif t == "Value":
            return ("value", json.loads(value + bytes.fromhex(f["bytes"])))
        elif t == "Error":
            return ("error", f["text"])
        elif t == "Panic":
            return ("panic", f["message"], f["location"])
        else:
            raise TypedError("a %s frame where an answer belongs" % t)


def worker_json(client, entry, requests, req_type, resp_type):
    """A worker (§11.7) with the JSON codec: starts it, sends each of `requests` in turn and
    reads its answer, then closes the channel. Returns (start, answers, end): `start` is
    ("accepted",) or ("mismatch", detail); `answers` one per request answered, as
    `call_json`'s; `end` ("exited", code) or ("killed", signo, deadline_expired)."""
    import json
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = 3
    fp = fingerprint(entry, req_type, resp_type, "json")
    payload = encode_header("json", fp, channel, [], b"", worker=True)
    answers = []
    try:
        try:
            child = client.spawn_entry(entry, payload, fds={channel: theirs.fileno()})
        except Exception as e:                 # UnknownEntryError: a mismatch (§11.3)
            if type(e).__name__ == "UnknownEntryError":
                return ("mismatch", "no such entry"), answers, None
            raise
        theirs.close()
        first = ours.recv(MAX_RESULT_FRAME_LEN + 1)
        start = decode_frame(first) if first else {"type": "Closed"}
        if start["type"] == "Accepted":
            start = ("accepted",)
            for req in requests:
                body = json.dumps(req, separators=(",", ":")).encode()
                while len(body) > MAX_RESULT_FRAME_LEN - 8:
                    ours.send(b"\x02" + body[:MAX_RESULT_FRAME_LEN - 8])
                    body = body[MAX_RESULT_FRAME_LEN - 8:]
                try:
                    ours.send(b"\x07\x00" + struct.pack("<H", 0) + body)
                except BrokenPipeError:
                    break
                answer = _answer(ours)
                if answer is None:
                    break
                answers.append(answer)
                if answer[0] == "panic":
                    break
        else:
            start = ("mismatch", start.get("detail", "not a worker entry"))
        ours.close()
        code = child.wait()
        child.close()
        end = ("killed", -code, child.deadline_expired) if code < 0 else ("exited", code)
        return start, answers, end
    finally:
        ours.close()
        theirs.close()


if __name__ == "__main__":
    # python3 forkserver_typed.py SOCKET ENTRY ARG_JSON ARG_TYPE RESULT_TYPE: one call, its
    # outcome printed as JSON.
    import json
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import forkserver_client as fc

    # python3 forkserver_typed.py --worker SOCKET ENTRY REQUESTS_JSON REQ_TYPE RESP_TYPE: a
    # worker sent each request of the JSON list, [start, answers, end] printed as JSON.
    if sys.argv[1] == "--worker":
        sock, entry, reqs, req_type, resp_type = sys.argv[2:7]
        print(json.dumps(worker_json(fc.Client(sock), entry, json.loads(reqs), req_type, resp_type)))
        sys.exit(0)
    # --memfd first: the argument goes in a sealed memfd whatever its size (§11.8).
    inline_max = INLINE_ARG_MAX
    if sys.argv[1] == "--memfd":
        inline_max = 0
        del sys.argv[1]
    sock, entry, arg, arg_type, result_type = sys.argv[1:6]
    print(json.dumps(call_json(fc.Client(sock), entry, json.loads(arg), arg_type, result_type,
                               inline_max=inline_max)))

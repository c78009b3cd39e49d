"""Offline tests of forkserver_client: the codec against spec/vectors, and the HMAC of §9.2.
Run: python3 spec/clients/python/test_forkserver_client.py"""
import json
import os
import socket
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import forkserver_client as fc  # noqa: E402

VECTORS = os.path.join(HERE, "..", "..", "vectors")


def load(name):
    with open(os.path.join(VECTORS, name + ".json")) as f:
        return json.load(f)["vectors"]


def to_json_form(value):
    """Message dict -> the `decoded` form of §10.8 (bytes as str when UTF-8, else {"hex"})."""
    if isinstance(value, dict):
        return {k: to_json_form(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_form(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"hex": value.hex()}
    return value


def fixed_arrays_as_hex(msg):
    for k in ("challenge", "response"):
        if isinstance(msg.get(k), bytes):
            msg[k] = msg[k].hex()
    return msg


def from_json_form(decoded):
    """The `decoded` form -> a message dict encode_message accepts."""
    def b(v):
        return bytes.fromhex(v["hex"]) if isinstance(v, dict) else v.encode()
    msg = dict(decoded)
    for k in ("challenge", "response"):
        if k in msg:
            msg[k] = bytes.fromhex(msg[k])
    if msg["type"] == "Spawn":
        job = dict(msg["job"])
        if job["kind"] == "entry":
            job["payload"] = b(job["payload"])
        else:
            job["program"] = b(job["program"])
            job["args"] = [b(a) for a in job["args"]]
            job["env"] = [(b(k), b(v)) for k, v in job["env"]]
            job["cwd"] = b(job["cwd"]) if job["cwd"] is not None else None
        msg["job"] = job
    return msg


class Vectors(unittest.TestCase):
    def test_valid_decode_and_encode(self):
        for v in load("valid"):
            with self.subTest(v["name"]):
                frame = bytes.fromhex(v["hex"])
                got = fc.decode_frame(frame)
                self.assertIsNotNone(got)
                msg, nfds, length = got
                self.assertEqual(length, len(frame))
                self.assertEqual(nfds, v["nfds"])
                self.assertEqual(to_json_form(fixed_arrays_as_hex(dict(msg))), v["decoded"])
                self.assertEqual(fc.encode_message(from_json_form(v["decoded"])), frame)
                for cut in range(len(frame)):            # every proper prefix is incomplete
                    if cut in (0, 1, 7, 8, len(frame) - 1):
                        self.assertIsNone(fc.decode_frame(frame[:cut]))

    def test_invalid_rejected_with_the_named_error(self):
        for v in load("invalid"):
            with self.subTest(v["name"]):
                with self.assertRaises(fc.DecodeError) as cm:
                    fc.decode_frame(bytes.fromhex(v["hex"]))
                self.assertEqual(cm.exception.name, v["error"])

    def test_transport_vectors_are_valid_frames(self):
        for v in load("transport"):
            with self.subTest(v["name"]):
                data = bytes.fromhex(v["hex"])
                self.assertEqual(sum(s["bytes"] for s in v["sends"]), len(data))
                if v["expected"] == "TooManyFds":
                    self.assertRaises(fc.DecodeError, fc.decode_frame, data)
                    continue
                while data:
                    msg, nfds, n = fc.decode_frame(data)
                    data = data[n:]


class Auth(unittest.TestCase):
    def test_section_9_2_example(self):
        key, cs, cc = bytes(range(32)), bytes(range(0x20, 0x40)), bytes(range(0x40, 0x60))
        self.assertEqual(fc.client_response(key, cs).hex(),
                         "4eec98629c198b2218111c20875b54c979308000d99d9a3f8e8c7d3dd5fe42e9")
        self.assertEqual(fc.server_response(key, cc).hex(),
                         "c920076c3c867d794190d17686027e6f90e4453780dad9253e5b42730a387604")
        self.assertEqual(fc.encode_hello_ok(1, cs).hex(),
                         "0200000024000000010001002021222324252627282"
                         "92a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
        auth = fc.encode_auth(fc.client_response(key, cs), cc)
        self.assertEqual(auth[:8].hex(), "0300000040000000")
        self.assertEqual(auth[8:12].hex(), "4eec9862")
        self.assertEqual(auth[40:].hex(), cc.hex())
        self.assertEqual(fc.encode_auth_ok(fc.server_response(key, cc)).hex(),
                         "0400000020000000c920076c3c867d794190d17686027e6f"
                         "90e4453780dad9253e5b42730a387604")


class FakeServer:
    """A one-connection server in a thread that runs `script(conn_socket)`."""

    def __init__(self, script):
        import socket
        import tempfile
        import threading
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "s.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.error = None

        def run():
            conn, _ = self.listener.accept()
            try:
                script(conn, fc.FrameReader(conn))
            except Exception as e:      # reported by the test
                self.error = e
            finally:
                conn.close()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self):
        self.thread.join(5)
        self.listener.close()
        self.dir.cleanup()


class AuthHandshake(unittest.TestCase):
    KEY = b"secret key of any length"

    def serve(self, key_used_by_server, method=1, tamper=False):
        seen = {}

        def script(conn, reader):
            msg, _ = reader.read()
            assert msg["type"] == "Hello", msg
            cs = os.urandom(32)
            conn.sendall(fc.encode_hello_ok(1, cs if method == 1 else None))
            if method == 0:
                msg, _ = reader.read()
                seen["after_hello_ok"] = msg
                return
            msg, _ = reader.read()
            assert msg["type"] == "Auth", msg
            if not hmac_eq(msg["response"], fc.client_response(key_used_by_server, cs)):
                conn.sendall(fc.encode_error("AuthFailed", 0, "wrong MAC"))
                return
            resp = fc.server_response(key_used_by_server, msg["challenge"])
            if tamper:
                resp = bytes([resp[0] ^ 1]) + resp[1:]
            conn.sendall(fc.encode_auth_ok(resp))
            try:
                msg, _ = reader.read()
            except fc.ConnectionClosed:
                seen["closed"] = True
                return
            seen["request"] = msg
            conn.sendall(fc.encode_status(1, 1, 0, 1, 0, "fake"))
        return FakeServer(script), seen

    def test_good_key(self):
        server, seen = self.serve(self.KEY)
        try:
            self.assertEqual(fc.Client(server.path, key=self.KEY).status()["server_version"], "fake")
            self.assertEqual(seen["request"]["type"], "StatusRequest")
        finally:
            server.close()
        self.assertIsNone(server.error)

    def test_wrong_key_gets_auth_failed(self):
        server, seen = self.serve(b"another key")
        try:
            with self.assertRaises(fc.AuthFailedError):
                fc.Client(server.path, key=self.KEY).status()
        finally:
            server.close()

    def test_impostor_server_is_refused_before_any_request(self):
        server, seen = self.serve(self.KEY, tamper=True)
        try:
            with self.assertRaises(fc.ProtocolError):
                fc.Client(server.path, key=self.KEY).status()
        finally:
            server.close()
        self.assertNotIn("request", seen)

    def test_key_but_no_auth_offered(self):
        server, seen = self.serve(self.KEY, method=0)
        try:
            with self.assertRaises(fc.ProtocolError):
                fc.Client(server.path, key=self.KEY).status()
        finally:
            server.close()
        self.assertNotIn("after_hello_ok", seen)


def hmac_eq(a, b):
    import hmac
    return hmac.compare_digest(a, b)


class SocketDirectory(unittest.TestCase):
    """§9.3: the client checks the socket's directory before it connects (so before a byte)."""

    def listen_in(self, mode):
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        os.chmod(d, mode)
        path = os.path.join(d, "forkserver.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        self.addCleanup(os.unlink, path)
        self.addCleanup(listener.close)
        return path, listener

    def test_open_directory_is_refused_before_connecting(self):
        for mode in (0o755, 0o770, 0o701):
            path, listener = self.listen_in(mode)
            with self.assertRaisesRegex(fc.ProtocolError, "unsafe permissions"):
                fc.Connection(path, timeout=2)
            with self.assertRaises(BlockingIOError):   # nothing connected, nothing sent
                listener.accept()

    def test_private_directory_connects(self):
        path, listener = self.listen_in(0o700)
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        fc.connect_verified(sock, path, os.geteuid())
        conn, _ = listener.accept()
        conn.close()

    def test_directory_of_another_owner_is_refused(self):
        path, listener = self.listen_in(0o700)
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        with self.assertRaises(fc.ProtocolError):
            # A server of another uid must own its directory: ours fails the owner check.
            fc.connect_verified(sock, path, os.geteuid() + 1)


class Features(unittest.TestCase):
    """§5.13, §5.14: the client asks once and refuses locally what the server lacks."""

    def serve(self, answer):
        seen = []

        def script(conn, reader):
            msg, _ = reader.read()
            assert msg["type"] == "Hello", msg
            conn.sendall(fc.encode_hello_ok(1))
            msg, _ = reader.read()
            seen.append(msg["type"])
            conn.sendall(answer)
        return FakeServer(script), seen

    def refused_without_a_connection(self, server, client, **ids):
        with self.assertRaises(fc.UnsupportedError) as cm:
            client.spawn_entry("worker", **ids)
        server.listener.setblocking(False)
        with self.assertRaises(BlockingIOError):      # nothing connected for the spawn
            server.listener.accept()
        return cm.exception

    def test_a_server_before_0_6_gets_bits_0_to_4_only(self):
        server, seen = self.serve(fc.encode_error("Malformed", 0, "unknown tag 0x13"))
        try:
            client = fc.Client(server.path, timeout=5)
            self.assertIsNone(client.features())
            self.assertEqual(client.implemented_spawn_flags(), 0x1F)
            e = self.refused_without_a_connection(server, client, uid=1000)
            self.assertEqual((e.option, e.revision), ("SET_UID", None))
        finally:
            server.close()
        self.assertIsNone(server.error)
        self.assertEqual(seen, ["FeaturesRequest"])

    def test_an_option_missing_from_the_features_is_refused(self):
        lacking = fc.SPAWN_FLAGS_MASK & ~fc.SET_GROUPS
        server, seen = self.serve(fc.encode_features(0, 6, lacking, fc.REQUESTS_MASK))
        try:
            client = fc.Client(server.path, timeout=5)
            self.assertEqual(client.features()["spawn_flags"], lacking)
            e = self.refused_without_a_connection(server, client, groups=[1])
            self.assertEqual((e.option, e.revision), ("SET_GROUPS", (0, 6)))
        finally:
            server.close()
        self.assertIsNone(server.error)


class Errors(unittest.TestCase):
    def test_every_code_has_a_class(self):
        for code, name in fc.ERROR_NAMES.items():
            e = fc.ServerError.from_message({"code": code, "errno": 2, "message": "m"})
            self.assertEqual((e.code, e.name, e.errno, e.message), (code, name, 2, "m"))
            self.assertIsInstance(e, fc.ServerError)
            self.assertIsNot(type(e), fc.ServerError)


if __name__ == "__main__":
    unittest.main()

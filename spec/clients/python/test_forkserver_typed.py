"""Offline tests of forkserver_typed against spec/vectors/typed.json (PROTOCOL.md §11.6).
Run: python3 spec/clients/python/test_forkserver_typed.py"""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import forkserver_typed as ft  # noqa: E402

with open(os.path.join(HERE, "..", "..", "vectors", "typed.json")) as f:
    VECTORS = json.load(f)


class TypedVectors(unittest.TestCase):
    def test_headers_decode_and_re_encode(self):
        self.assertEqual(VECTORS["typed_version"], ft.TYPED_VERSION)
        for v in VECTORS["headers"]:
            raw = bytes.fromhex(v["hex"])
            header, arg = ft.decode_header(raw)
            self.assertEqual(header, v["decoded"], v["name"])
            again = ft.encode_header(header["codec"], int(header["fingerprint"], 16),
                                     header["channel"], header["fd_targets"], arg,
                                     header["worker"], header["memfd"])
            self.assertEqual(again, raw, v["name"])

    def test_invalid_headers(self):
        for v in VECTORS["invalid_headers"]:
            with self.assertRaises(ft.TypedError, msg=v["name"]) as cm:
                ft.decode_header(bytes.fromhex(v["hex"]))
            self.assertEqual(cm.exception.name, v["error"], v["name"])

    def test_frames(self):
        for v in VECTORS["frames"]:
            self.assertEqual(ft.decode_frame(bytes.fromhex(v["hex"])), v["decoded"], v["name"])
        for v in VECTORS["invalid_frames"]:
            with self.assertRaises(ft.TypedError, msg=v["name"]) as cm:
                ft.decode_frame(bytes.fromhex(v["hex"]))
            self.assertEqual(cm.exception.name, v["error"], v["name"])

    def test_sealed_memfd(self):
        import fcntl
        fd = ft.sealed_memfd(b"[1,2,3]")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            for s in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SEAL):
                self.assertTrue(seals & s, s)
            self.assertEqual(os.pread(fd, 100, 0), b"[1,2,3]")
            with self.assertRaises(PermissionError):
                os.pwrite(fd, b"x", 0)
        finally:
            os.close(fd)

    def test_fingerprints(self):
        self.assertEqual(ft.fnv1a64(b"foobar"), 0x85944171F73967E8)  # FNV reference suite
        for v in VECTORS["fingerprints"]:
            fp = ft.fingerprint(v["entry"], v["arg_type"], v["result_type"], v["codec"])
            self.assertEqual("%016x" % fp, v["fingerprint"], v)


if __name__ == "__main__":
    unittest.main()

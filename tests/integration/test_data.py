# SPDX-License-Identifier: MIT
"""Case 9: bad input on a TCP data connection, from a fake source that did a
valid handshake (HELLO with the destination's layout, HELLO_ACK for the data
address and token, REGIONS for the region keys).

A write the destination's region cannot hold must fail the migration with an
"out of range" error before a byte is placed (under ASan an overrun would
crash: run the suite with RDMIG pointing at a -Db_sanitize=address build).
A data connection without the session's token is refused; the right one is
still accepted afterwards."""
import os
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import TCP_HDR, TCP_MAGIC, T_ACK, T_HELLO, FakeSource, tcp_put_header  # noqa: E402

RAM = 32 << 20
GUEST = ["--ram-size", "32M"]
BLOCKS = [("pc.ram", RAM, 4096)]
MAX_IO = 64 * 65536  # RDMIG_IO_PAGES_MAX * 65536: the per-request limit both sides set


class BadWrites(harness.RdmigTestCase):
    def expect_rejected(self, header, payload_len, *words, recv_args=()):
        recv, addr = self.start_recv(*recv_args, guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        try:
            self.assertEqual(fake.regions[0][1], RAM, "region key does not carry the length")
            d = fake.data_connect()
            harness.send_quietly(d, header + b"\xa5" * payload_len)
            self.assertTrue(harness.wait_closed(d, 10),
                            "destination kept the data connection open\n" + recv.describe())
            err = fake.ctl.recv_error(timeout=10)
            rc = self.finish(recv, 15)
        finally:
            fake.close()
        rep = recv.report()
        ctx = "\nERROR frame: %r\n%s" % (err, recv.describe())
        self.assertEqual(rc, 1, ctx)
        self.assertEqual(rep["result"], "failed", ctx)
        self.assertEqual(rep["error_code"], "protocol", ctx)
        for w in words:
            self.assertIn(w, rep["error"], ctx)
        self.assertFalse(rep["guest"]["checked"], ctx)
        self.assertIsNotNone(err, "the destination did not tell the source why" + ctx)
        self.assertIn(words[0], err[1], ctx)
        return rep

    def test_put_past_end(self):
        """offset + length crosses the end of the region by one page."""
        region = 0
        hdr = tcp_put_header(region, 8192, RAM - 4096, 1)
        self.expect_rejected(hdr, 8192, "out of range", str(RAM - 4096), str(RAM))

    def test_put_offset_past_end(self):
        hdr = tcp_put_header(0, 4096, RAM, 1)
        self.expect_rejected(hdr, 4096, "out of range", str(RAM))

    def test_put_offset_wraps(self):
        """An offset near 2^64: offset + length wraps around to a small number."""
        off = (1 << 64) - 4096
        hdr = tcp_put_header(0, 8192, off, 1)
        self.expect_rejected(hdr, 8192, "out of range", str(off))

    def test_put_too_long(self):
        hdr = tcp_put_header(0, MAX_IO + 4096, 0, 1)
        self.expect_rejected(hdr, 0, "out of range", str(MAX_IO + 4096))

    def test_put_zero_length(self):
        self.expect_rejected(tcp_put_header(0, 0, 0, 1), 0, "out of range")

    def test_put_unknown_region(self):
        self.expect_rejected(tcp_put_header(5, 4096, 0, 1), 4096, "unknown region")

    def test_put_region_id_huge(self):
        self.expect_rejected(tcp_put_header(0xFFFFFFFF, 4096, 0, 1), 4096, "unknown region")

    def test_put_out_of_sequence(self):
        self.expect_rejected(tcp_put_header(0, 4096, 0, 9), 4096, "sequence")

    def test_bad_frame_magic(self):
        hdr = TCP_HDR.pack(0x41414141, 2, 0, 0, 0, 4096, 0, 1)
        self.expect_rejected(hdr, 0, "magic")

    def test_unknown_frame_type(self):
        hdr = TCP_HDR.pack(TCP_MAGIC, 77, 0, 0, 0, 4096, 0, 1)
        self.expect_rejected(hdr, 0, "unknown frame type")

    def test_read_not_allowed(self):
        """The destination's RAM is remote-writable only: a GET must be refused."""
        hdr = TCP_HDR.pack(TCP_MAGIC, 3, 0, 0, 0, 4096, 0, 1)
        self.expect_rejected(hdr, 0, "does not allow")


class Token(harness.RdmigTestCase):
    def test_wrong_token_then_right(self):
        recv, addr = self.start_recv(guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        try:
            bad = fake.data_connect(token=fake.ack["token"] ^ 0x5A5A)
            self.assertTrue(harness.wait_closed(bad, 10),
                            "a data connection with a wrong token stayed open\n" + recv.describe())
            bad_version = fake.data_connect(version=7)
            self.assertTrue(harness.wait_closed(bad_version, 10),
                            "a data connection of another version stayed open\n" +
                            recv.describe())
            self.assertTrue(recv.alive(), recv.describe())
            # The right token is still accepted, and a write in range is acknowledged.
            good = fake.data_connect()
            good.sendall(tcp_put_header(0, 4096, 0, 1) + b"\x5a" * 4096)
            ack = harness.recv_exact(good, TCP_HDR.size, 10)
            self.assertEqual(len(ack), TCP_HDR.size, "no ACK for a valid write\n" + recv.describe())
            magic, typ, _, _, _, _, _, seq = TCP_HDR.unpack(ack)
            self.assertEqual((magic, typ, seq), (TCP_MAGIC, T_ACK, 1), recv.describe())
        finally:
            fake.close()
        # The fake source goes away: the destination fails, naming the source.
        rc = self.finish(recv, 15)
        rep = recv.report()
        ctx = "\n" + recv.describe()
        self.assertEqual(rc, 1, ctx)
        self.assertEqual(rep["result"], "failed", ctx)
        self.assertIn("source", rep["error"], ctx)
        err = recv.stderr()
        self.assertIn("token", err, "the rejection is not logged" + ctx)
        self.assertIn("version", err, "the rejection is not logged" + ctx)

    def test_silent_strangers_hold_up_no_one(self):
        """Connections to the data port that say nothing (three of them, made
        before the source's) each wait with their own deadline: the source's
        connection is taken at once and its write acknowledged. The code
        before read each hello in turn, 4 s apiece, and the migration failed
        at the connect timeout."""
        recv, addr = self.start_recv("--connect-timeout-ms", "4000", guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        strangers = []
        try:
            host, port = fake.ack["data_address"].rsplit(":", 1)
            for _ in range(3):
                strangers.append(socket.create_connection((host, int(port)), timeout=5))
            time.sleep(0.2)  # accepted and waiting at the door
            good = fake.data_connect()
            good.sendall(tcp_put_header(0, 4096, 0, 1) + b"\x5a" * 4096)
            ack = harness.recv_exact(good, TCP_HDR.size, 10)
            self.assertEqual(len(ack), TCP_HDR.size, "no ACK for a valid write behind silent "
                             "connections\n" + recv.describe())
            magic, typ, _, _, _, _, _, seq = TCP_HDR.unpack(ack)
            self.assertEqual((magic, typ, seq), (TCP_MAGIC, T_ACK, 1), recv.describe())
            for s in strangers:
                self.assertTrue(harness.wait_closed(s, 10),
                                "a silent data connection stayed open after the source's was "
                                "taken\n" + recv.describe())
        finally:
            for s in strangers:
                s.close()
            fake.close()
        self.finish(recv, 15)

    def test_wrong_token_only(self):
        recv, addr = self.start_recv("--connect-timeout-ms", "1500", guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        try:
            bad = fake.data_connect(token=0)
            self.assertTrue(harness.wait_closed(bad, 10), recv.describe())
            err = fake.ctl.recv_error(timeout=10)
            rc = self.finish(recv, 15)
        finally:
            fake.close()
        rep = recv.report()
        ctx = "\nERROR frame: %r\n%s" % (err, recv.describe())
        self.assertEqual(rc, 1, ctx)
        self.assertEqual(rep["result"], "failed", ctx)
        self.assertIn("did not arrive", rep["error"], ctx)
        self.assertIsNotNone(err, ctx)

    def test_hello_is_not_a_put(self):
        """A second HELLO on an accepted data connection is a protocol error."""
        recv, addr = self.start_recv(guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        try:
            d = fake.data_connect()
            d.sendall(TCP_HDR.pack(TCP_MAGIC, T_HELLO, 0, 0, 0, 1, fake.ack["token"], 0))
            self.assertTrue(harness.wait_closed(d, 10), recv.describe())
            rc = self.finish(recv, 15)
        finally:
            fake.close()
        self.assertEqual(rc, 1, recv.describe())
        self.assertIn("data connection", recv.report()["error"], recv.describe())


if __name__ == "__main__":
    harness.main()

# SPDX-License-Identifier: MIT
"""Case 8: bad input on the destination's control port, from a fake peer.

Connections that do not open with a valid HELLO are dropped and the
destination keeps listening (a port scan must not end an incoming migration):
a real source must still migrate to it afterwards.  A peer that is rdmig but
speaks another version is told so in an ERROR frame, and the destination
fails.  After a valid handshake, anything malformed or out of range fails the
migration with a clear error, without a crash."""
import os
import random
import signal
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (FEATURE_POSTCOPY, FEATURE_VERIFY, FEATURE_ZERO_PAGES,  # noqa: E402
                     MSG_COMPLETE, MSG_COMPLETE_ACK, MSG_DISCARD, MSG_HASHES, MSG_HELLO,
                     MSG_HELLO_ACK, MSG_PING, MSG_POSTCOPY_PREPARE, MSG_ROUND_END, MSG_ZERO,
                     FakeControl, FakeSource, frame, hello_payload)

RAM = 32 << 20
DOOR_SLOTS = 8  # RDMIG_GATE_SLOTS (engine/hello-gate.h)
GUEST = ["--ram-size", "32M"]
BLOCKS = [("pc.ram", RAM, 4096)]
NPAGES = RAM // 4096


def garbage_connections():
    """(name, bytes to send, close right after sending?)"""
    rng = random.Random(4242)
    good_hello = hello_payload(BLOCKS)
    return [
        ("connect and close", b"", True),
        ("http request", b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", False),
        ("four bytes", b"RDMG", True),
        ("random bytes", bytes(rng.getrandbits(8) for _ in range(4096)), False),
        ("wrong magic", frame(MSG_HELLO, good_hello, magic=0xDEADBEEF), False),
        ("truncated frame", frame(MSG_HELLO, good_hello)[:40], True),
        ("truncated header", frame(MSG_HELLO, good_hello)[:10], True),
        ("oversized frame", frame(MSG_HELLO, b"", length=(16 << 20) + 1), False),
        ("huge frame", frame(MSG_HELLO, b"", length=0xFFFFFFFF), False),
        ("PING first", frame(MSG_PING), False),
        ("unknown type first", frame(999, b"xyz"), False),
        ("HELLO out of sequence", frame(MSG_HELLO, good_hello, seq=7), False),
        ("HELLO with a bad magic", frame(MSG_HELLO, b"XXXX" + good_hello[4:]), False),
        ("HELLO cut short", frame(MSG_HELLO, good_hello[:30]), False),
        ("HELLO with trailing bytes", frame(MSG_HELLO, good_hello + b"\0\0"), False),
        ("HELLO with 0 blocks", frame(MSG_HELLO, good_hello[:good_hello.rfind(b"\x06pc.ram") - 4]
                                       + struct.pack(">I", 0)), False),
        ("HELLO with 100000 blocks", frame(MSG_HELLO, good_hello[:good_hello.rfind(b"\x06pc.ram")
                                                                 - 4] + struct.pack(">I", 100000)),
         False),
    ]


class Garbage(harness.RdmigTestCase):
    def test_garbage_then_real_source(self):
        recv, addr = self.start_recv(guest=GUEST)
        cases = garbage_connections()
        for name, data, close_now in cases:
            s = harness.connect(addr)
            try:
                if data:
                    harness.send_quietly(s, data)
                if not close_now:
                    self.assertTrue(harness.wait_closed(s, 8),
                                    "destination kept a '%s' connection open\n%s" %
                                    (name, recv.describe()))
            finally:
                s.close()
            time.sleep(0.05)
            self.assertTrue(recv.alive(), "destination exited after a '%s' connection\n%s" %
                            (name, recv.describe()))
        # Every one was dropped with a warning, and the listener is still there.
        deadline = time.monotonic() + 10
        while recv.stderr().count("dropped a connection") < len(cases):
            if time.monotonic() > deadline or not recv.alive():
                break
            time.sleep(0.05)
        self.assertEqual(recv.stderr().count("dropped a connection"), len(cases), recv.describe())
        send = self.start_send(addr, guest=GUEST)
        src_rc = self.finish(send, 60)
        dst_rc = self.finish(recv, 30)
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assert_verified(send.report(), recv.report(), ctx)


class Door(harness.RdmigTestCase):
    """Connections wait for their HELLO side by side, each with its own short
    deadline: strangers that say nothing, or one byte at a time, neither
    hold the door shut for the real source nor end the destination."""

    def test_idle_and_slow_do_not_block_the_source(self):
        # The destination's door waits 5 s (its peer timeout is longer); the
        # source gives up on a silent destination after 4 s.  Served one at
        # a time, the three idle connections would hold it for 15 s.
        recv, addr = self.start_recv("--peer-timeout-ms", "30000", guest=GUEST)
        idle = [harness.connect(addr) for _ in range(3)]
        slow = harness.connect(addr)
        stop = threading.Event()

        def trickle():
            for b in frame(MSG_HELLO, hello_payload(BLOCKS)):
                if stop.wait(0.5):
                    return
                try:
                    slow.sendall(bytes([b]))
                except OSError:
                    return
        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            send = self.start_send(addr, "--peer-timeout-ms", "4000",
                                   guest=GUEST + ["--dirty-rate", "5"])
            src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        finally:
            stop.set()
            for c in idle + [slow]:
                c.close()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assert_verified(send.report(), recv.report(), ctx)

    def test_deadline_drops_silence_and_trickle(self):
        recv, addr = self.start_recv(guest=GUEST)
        idle = harness.connect(addr)
        slow = harness.connect(addr)
        slow.sendall(frame(MSG_HELLO, hello_payload(BLOCKS))[:20])
        try:
            for c in (idle, slow):
                self.assertTrue(harness.wait_closed(c, 15),
                                "the door kept a connection past its deadline\n" +
                                recv.describe())
        finally:
            idle.close()
            slow.close()
        self.wait_for_stderr(recv, "no HELLO within the deadline", 5)
        self.wait_for_stderr(recv, "HELLO not complete within the deadline", 5)
        self.assertTrue(recv.alive(), recv.describe())
        send = self.start_send(addr, guest=GUEST)
        self.assertEqual((self.finish(send, 60), self.finish(recv, 30)), (0, 0),
                         send.describe() + recv.describe())

    def test_full_door_makes_way(self):
        """More idle connections than the door holds: the oldest makes way,
        and the source still gets in."""
        recv, addr = self.start_recv("--peer-timeout-ms", "30000", guest=GUEST)
        idle = [harness.connect(addr) for _ in range(DOOR_SLOTS + 2)]
        try:
            self.wait_for_stderr(recv, "the oldest made way", 10)
            self.assertTrue(harness.wait_closed(idle[0], 5),
                            "the oldest connection was not dropped\n" + recv.describe())
            send = self.start_send(addr, guest=GUEST)
            src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        finally:
            for c in idle:
                c.close()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assert_verified(send.report(), recv.report(), ctx)


class Handshake(harness.RdmigTestCase):
    """A peer that is rdmig, but not one this destination can take: told
    why, refused, and the destination listens on."""

    def expect_refused(self, payload_frame, code, *words, recv_args=()):
        recv, addr = self.start_recv(*recv_args, guest=GUEST)
        ctl = FakeControl(addr)
        try:
            ctl.sock.sendall(payload_frame)
            err = ctl.recv_error(timeout=10)
        finally:
            ctl.close()
        ctx = "\n" + recv.describe()
        self.assertIsNotNone(err, "no ERROR frame before the destination hung up" + ctx)
        self.assertEqual(err[0], code, "ERROR code (message %r)" % err[1] + ctx)
        # Refused, said why, and still listening: a peer it cannot take
        # (or a stranger posing as one) must not end it.
        refusal = self.assert_refused_and_listening(recv)
        for w in words:
            self.assertIn(w, err[1].lower(), "ERROR message %r" % err[1] + ctx)
            self.assertIn(w, refusal.lower(), ctx)
        return err

    def test_protocol_version(self):
        self.expect_refused(frame(MSG_HELLO, hello_payload(BLOCKS, version=2)), "version",
                            "version", "2")

    def test_frame_version(self):
        self.expect_refused(frame(MSG_HELLO, hello_payload(BLOCKS), version=2), "version",
                            "version")

    def test_unknown_required_feature(self):
        self.expect_refused(frame(MSG_HELLO, hello_payload(BLOCKS, required=1 << 40)), "version",
                            "feature")

    def test_no_common_transport(self):
        self.expect_refused(frame(MSG_HELLO, hello_payload(BLOCKS, transports=("carrier-pigeon",))),
                            "unsupported", "carrier-pigeon")

    def test_extra_block(self):
        blocks = BLOCKS + [("vga.vram", 1 << 20, 4096)]
        self.expect_refused(frame(MSG_HELLO, hello_payload(blocks)), "layout", "vga.vram")

    def test_missing_block(self):
        blocks = [("ram0", RAM // 2, 4096)]
        self.expect_refused(frame(MSG_HELLO, hello_payload(blocks)), "layout", "ram1",
                            recv_args=["--blocks", "2"])

    def test_page_size(self):
        blocks = [("pc.ram", RAM, 65536)]
        self.expect_refused(frame(MSG_HELLO, hello_payload(blocks)), "layout", "pc.ram", "65536")

    def test_no_data_connection(self):
        """A valid HELLO, then no data connection: bounded by the connect timeout."""
        recv, addr = self.start_recv("--connect-timeout-ms", "1500", guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        try:
            # The source stays connected and says nothing: the wait for its
            # data connections is bounded by the connect timeout.
            err = fake.ctl.recv_error(timeout=10)
            rc = self.finish(recv, 10)
        finally:
            fake.close()
        ctx = "\n" + recv.describe()
        self.assertEqual(rc, 1, ctx)
        rep = recv.report()
        self.assertEqual(rep["result"], "failed", ctx)
        self.assertIn("did not arrive", rep["error"], ctx)
        self.assertIsNotNone(err, ctx)
        self.assertIn("did not arrive", err[1], ctx)


class BadMessage(harness.RdmigTestCase):
    """A valid handshake and data connection, then one bad control message."""

    def expect_failure(self, mtype, payload, *words, code="protocol", seq=None, before=(),
                       hello=None):
        """@before: (type, payload) frames sent first, which must be accepted;
        @hello: HELLO fields other than the defaults."""
        recv, addr = self.start_recv(guest=GUEST)
        fake = FakeSource(addr, BLOCKS, **(hello or {}))
        try:
            fake.data_connect()
            for t, p in before:
                fake.ctl.send(t, p)
            if seq is not None:
                fake.ctl.seq = seq
            fake.ctl.send(mtype, payload)
            err = fake.ctl.recv_error(timeout=10)
            rc = self.finish(recv, 15)
        finally:
            fake.close()
        rep = recv.report()
        ctx = "\nERROR frame: %r\n%s" % (err, recv.describe())
        self.assertEqual(rc, 1, ctx)
        self.assertEqual(rep["result"], "failed", ctx)
        self.assertEqual(rep["error_code"], code, ctx)
        for w in words:
            self.assertIn(w, rep["error"], ctx)
        self.assertFalse(rep["guest"]["checked"], ctx)
        self.assertIsNotNone(err, "the destination did not tell the source why" + ctx)
        self.assertEqual(err[0], code, ctx)
        for w in words:
            self.assertIn(w, err[1], ctx)


class AfterHandshake(BadMessage):
    def test_unknown_type(self):
        self.expect_failure(99, b"\x01\x02\x03", "unknown", "99")

    def test_unexpected_type(self):
        self.expect_failure(MSG_HELLO_ACK, b"", "HELLO_ACK")

    def test_second_hello(self):
        self.expect_failure(MSG_HELLO, hello_payload(BLOCKS), "HELLO")

    def test_out_of_sequence(self):
        self.expect_failure(MSG_ROUND_END, struct.pack(">Q", 1), "sequence", seq=5)

    def test_truncated_round_end(self):
        self.expect_failure(MSG_ROUND_END, b"\0\0\1", "ROUND_END")

    def test_zero_bad_block(self):
        payload = struct.pack(">II", 7, 1) + struct.pack(">QI", 0, 1)
        self.expect_failure(MSG_ZERO, payload, "ZERO", "#7")

    def test_zero_page_past_end(self):
        payload = struct.pack(">II", 0, 1) + struct.pack(">QI", NPAGES - 1, 2)
        self.expect_failure(MSG_ZERO, payload, "ZERO", "pc.ram", str(NPAGES - 1))

    def test_zero_page_wraps(self):
        payload = struct.pack(">II", 0, 1) + struct.pack(">QI", (1 << 64) - 1, 2)
        self.expect_failure(MSG_ZERO, payload, "ZERO", "pc.ram")

    def test_zero_run_count_lies(self):
        payload = struct.pack(">II", 0, 1000) + struct.pack(">QI", 0, 1)
        self.expect_failure(MSG_ZERO, payload, "ZERO", "runs")

    def test_hashes_past_end(self):
        payload = struct.pack(">IQI", 0, NPAGES - 1, 2) + b"\0" * 16
        self.expect_failure(MSG_HASHES, payload, "HASHES", "pc.ram")

    def test_hashes_bad_block(self):
        payload = struct.pack(">IQI", 3, 0, 1) + b"\0" * 8
        self.expect_failure(MSG_HASHES, payload, "HASHES", "#3")


class OutOfPhase(BadMessage):
    """Messages that are well formed but come in a phase they do not belong
    to: the destination refuses them, and its guest never runs."""
    POSTCOPY = {"supported": FEATURE_VERIFY | FEATURE_ZERO_PAGES | FEATURE_POSTCOPY}
    # Without verification: POSTCOPY_PREPARE then succeeds with no HASHES sent.
    PREPARED = {"supported": FEATURE_ZERO_PAGES | FEATURE_POSTCOPY}

    @staticmethod
    def runs(block, *runs):
        p = struct.pack(">II", block, len(runs))
        for first, count in runs:
            p += struct.pack(">QI", first, count)
        return p

    def test_complete_with_pages_needed(self):
        """COMPLETE after DISCARD (the pages would run as zeros: verification
        skips pages it is still to receive)."""
        self.expect_failure(MSG_COMPLETE, struct.pack(">Q", NPAGES), "COMPLETE", "3 pages",
                            "still needed", hello=self.POSTCOPY,
                            before=[(MSG_DISCARD, self.runs(0, (5, 2), (100, 1)))])

    def test_zero_after_prepare(self):
        self.expect_failure(MSG_ZERO, self.runs(0, (0, 1)), "ZERO after POSTCOPY_PREPARE",
                            hello=self.PREPARED,
                            before=[(MSG_POSTCOPY_PREPARE, struct.pack(">Q", 0))])

    def test_complete_after_prepare(self):
        self.expect_failure(MSG_COMPLETE, struct.pack(">Q", NPAGES),
                            "COMPLETE after POSTCOPY_PREPARE", hello=self.PREPARED,
                            before=[(MSG_POSTCOPY_PREPARE, struct.pack(">Q", 0))])


class AccessRevoked(harness.RdmigTestCase):
    """At COMPLETE the destination takes the source's write access away
    (data connections closed, RAM regions deregistered) before it verifies
    and before its guest runs: a late write cannot land after the check."""

    def test_data_connection_closed_before_the_ack(self):
        recv, addr = self.start_recv(guest=GUEST)
        fake = FakeSource(addr, BLOCKS, supported=FEATURE_ZERO_PAGES)
        try:
            data = fake.data_connect()
            fake.ctl.send(MSG_COMPLETE, struct.pack(">Q", NPAGES))
            f = fake.ctl.recv(timeout=15)
            ctx = "\nframe: %r\n%s" % (f, recv.describe())
            self.assertIsNotNone(f, ctx)
            self.assertEqual(f[0], MSG_COMPLETE_ACK, ctx)
            # (No DEVICE_STATE was sent, so the load fails after the revocation:
            # the order is what this case is about.)
            # Loopback delivers in order of sending: the data connection's end
            # came before the acknowledgement did.
            data.setblocking(False)
            try:
                got = data.recv(1)
            except BlockingIOError:
                self.fail("the data connection was still open when COMPLETE_ACK came" + ctx)
            except ConnectionResetError:
                got = b""
            self.assertEqual(got, b"", ctx)
            # A write on it now goes nowhere.
            with self.assertRaises(OSError, msg=ctx):
                for _ in range(50):
                    data.send(harness.tcp_put_header(0, 4096, 0, 1) + b"\xab" * 4096)
                    time.sleep(0.01)
        finally:
            fake.close()
        self.assertEqual(self.finish(recv, 15), 1, recv.describe())
        self.assertIn("device state", recv.report()["error"], recv.describe())


class TellsTheSource(harness.RdmigTestCase):
    """When the destination gives up on its own (peer timeout, cancel), a source
    that is still connected is told why in an ERROR frame before the close."""

    def handshake(self, *recv_args):
        recv, addr = self.start_recv(*recv_args, guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        self.addCleanup(fake.close)
        fake.data_connect()
        return recv, fake

    def test_peer_timeout(self):
        recv, fake = self.handshake("--peer-timeout-ms", "2000")
        err = fake.ctl.recv_error(timeout=10)  # and say nothing meanwhile
        rc = self.finish(recv, 10)
        ctx = "\nERROR frame: %r\n%s" % (err, recv.describe())
        self.assertEqual(rc, 1, ctx)
        self.assertIn("silent", recv.report()["error"], ctx)
        self.assertIsNotNone(err, "the destination hung up without saying why" + ctx)
        self.assertIn("silent", err[1], ctx)

    def test_cancel(self):
        recv, fake = self.handshake()
        time.sleep(0.2)
        recv.signal(signal.SIGTERM)
        err = fake.ctl.recv_error(timeout=10)
        rc = self.finish(recv, 10)
        ctx = "\nERROR frame: %r\n%s" % (err, recv.describe())
        self.assertEqual(rc, 3, ctx)
        self.assertEqual(recv.report()["result"], "cancelled", ctx)
        self.assertIsNotNone(err, "the destination hung up without saying why" + ctx)
        self.assertEqual(err[0], "cancelled", ctx)


class WaitingForData(harness.RdmigTestCase):
    """After HELLO_ACK and REGIONS the destination waits for the data connections;
    it must still hear a cancel, and a source that hung up, at once."""

    def test_cancel(self):
        """SIGTERM while the destination waits for the data connections: it ends
        cancelled, not at the connect timeout (10 minutes here)."""
        recv, addr = self.start_recv("--connect-timeout-ms", "600000", guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        self.addCleanup(fake.close)
        time.sleep(0.2)
        recv.signal(signal.SIGTERM)
        rc = self.finish(recv, 15)
        ctx = "\n" + recv.describe()
        self.assertEqual(rc, 3, ctx)
        self.assertEqual(recv.report()["result"], "cancelled", ctx)

    def test_source_gone(self):
        """The source hangs up after REGIONS, before its data connections: the
        destination notices on the control channel, not at the connect timeout."""
        recv, addr = self.start_recv("--connect-timeout-ms", "600000", guest=GUEST)
        fake = FakeSource(addr, BLOCKS)
        time.sleep(0.2)
        fake.close()
        rc = self.finish(recv, 15)
        ctx = "\n" + recv.describe()
        self.assertEqual(rc, 1, ctx)
        err = recv.report()["error"]
        self.assertIn("source", err, ctx)
        self.assertNotIn("did not arrive", err, "it waited for the connect timeout" + ctx)


if __name__ == "__main__":
    harness.main()

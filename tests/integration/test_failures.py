# SPDX-License-Identifier: MIT
"""Migrations that end early: cancelled (option or signal, at either end, or
while connecting), a peer killed or stopped mid-way, RAM layouts that differ,
a device state the destination refuses after the switchover, a second source.
The source guest must run on intact every time; both processes must exit with
a clear error within a bounded time and not crash."""
import os
import re
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# 128 MiB (96 MiB filled) at 20 MiB/s: about 5 s of precopy, mid-flight for long enough.
SLOW_GUEST = ["--ram-size", "128M", "--dirty-rate", "5"]
SLOW = ["--max-bandwidth", "20"]


class Cancel(harness.RdmigTestCase):
    def test_cancel(self):
        """Case 4: the source cancels 300 ms in, mid-precopy."""
        recv, addr = self.start_recv(guest=SLOW_GUEST)
        send = self.start_send(addr, "--cancel-after-ms", "300", *SLOW, guest=SLOW_GUEST)
        src_rc = self.finish(send, 30)
        dst_rc = self.finish(recv, 30)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 3, "source exit status after a cancel" + ctx)
        self.assertEqual(src["result"], "cancelled", ctx)
        self.assertEqual(src["error_code"], "cancelled", ctx)
        self.assertIn("cancel", src["error"], ctx)
        self.assertGreater(src["rounds"], 0, "cancelled before precopy began: not mid-way" + ctx)
        self.assert_source_guest_safe(src, ctx)
        # The destination does not complete; it says the source cancelled.
        self.assertIn(dst_rc, (1, 3), ctx)
        self.assertIn(dst["result"], ("failed", "cancelled"), ctx)
        self.assertEqual(dst_rc, 3 if dst["result"] == "cancelled" else 1, ctx)
        self.assertIn("cancel", dst["error"], "destination error does not say why" + ctx)
        self.assertFalse(dst["guest"]["checked"], ctx)

    def test_sigint_source(self):
        """SIGINT to the source mid-precopy cancels like --cancel-after-ms."""
        recv, addr = self.start_recv(guest=SLOW_GUEST)
        send = self.start_send(addr, *SLOW, guest=SLOW_GUEST, quiet=False)
        self.wait_for_stderr(send, "active", 15)
        time.sleep(0.3)
        send.signal(signal.SIGINT)
        src_rc = self.finish(send, 15)
        dst_rc = self.finish(recv, 15)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 3, ctx)
        self.assertEqual(src["result"], "cancelled", ctx)
        self.assert_source_guest_safe(src, ctx)
        self.assertIn(dst_rc, (1, 3), ctx)
        self.assertIn("cancel", dst["error"], ctx)

    def test_sigterm_waiting_destination(self):
        """SIGTERM to a destination still waiting for its source: cancelled, exit 3."""
        recv, addr = self.start_recv(guest=["--ram-size", "32M"])
        time.sleep(0.2)
        recv.signal(signal.SIGTERM)
        rc = self.finish(recv, 10)
        ctx = "\n" + recv.describe()
        self.assertEqual(rc, 3, ctx)
        self.assertEqual(recv.report()["result"], "cancelled", ctx)

    def test_sigterm_destination_midway(self):
        """SIGTERM to the destination mid-precopy: it ends cancelled, and the source
        learns that the destination cancelled (not just that a connection closed)."""
        recv, addr = self.start_recv(guest=SLOW_GUEST)
        send = self.start_send(addr, *SLOW, guest=SLOW_GUEST, quiet=False)
        self.wait_for_stderr(send, "active", 15)
        time.sleep(0.3)
        recv.signal(signal.SIGTERM)
        dst_rc = self.finish(recv, 15)
        src_rc = self.finish(send, 15)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(dst_rc, 3, ctx)
        self.assertEqual(dst["result"], "cancelled", ctx)
        self.assertFalse(dst["guest"]["checked"], ctx)
        self.assert_source_guest_safe(src, ctx)
        self.assertIn(src["result"], ("failed", "cancelled"), ctx)
        self.assertEqual(src_rc, 3 if src["result"] == "cancelled" else 1, ctx)
        self.assertIn("cancel", src["error"], "the source was not told why" + ctx)


class CancelConnecting(harness.RdmigTestCase):
    def test_sigint_while_connecting(self):
        """SIGINT while connect() hangs (the peer's accept queue is full, so its SYNs
        go unanswered): the connect is interrupted and the result is a cancel, not
        the connect timeout's failure (set to 10 minutes here, so only an
        interrupted connect ends within the test's bound).  How fast: see
        tests/bench/bench-reaction.py."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue; never accept
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(s.close)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        time.sleep(0.2)
        send = self.start_send("127.0.0.1:%d" % port, "--connect-timeout-ms", "600000",
                               guest=["--ram-size", "32M"])
        time.sleep(1.0)
        if not send.alive():
            self.finish(send, 5)
            self.skipTest("connect did not hang here (%s)" % send.report()["error"])
        send.signal(signal.SIGINT)
        rc = self.finish(send, 20)
        src = send.report()
        ctx = "\n" + send.describe()
        self.assertEqual(rc, 3, ctx)
        self.assertEqual(src["result"], "cancelled", ctx)
        self.assert_source_guest_safe(src, ctx)


class PeerDies(harness.RdmigTestCase):
    def test_destination_killed(self):
        """Case 5: SIGKILL the destination during precopy."""
        recv, addr = self.start_recv(guest=SLOW_GUEST)
        send = self.start_send(addr, "--peer-timeout-ms", "3000", *SLOW, guest=SLOW_GUEST,
                               quiet=False)
        self.wait_for_stderr(send, "active", 15)
        time.sleep(0.5)
        self.assertTrue(send.alive(), "migration ended before the kill\n" + send.describe())
        recv.kill()
        src_rc = self.finish(send, 20)
        src = send.report()
        ctx = "\n" + send.describe()
        self.assertEqual(src_rc, 1, ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assertRegex(src["error"], re.compile("destination|connection", re.I), ctx)
        self.assert_source_guest_safe(src, ctx)

    def test_source_killed(self):
        """Case 6: SIGKILL the source during precopy."""
        recv, addr = self.start_recv(guest=SLOW_GUEST)
        send = self.start_send(addr, *SLOW, guest=SLOW_GUEST, quiet=False)
        self.wait_for_stderr(send, "active", 15)
        time.sleep(0.5)
        self.assertTrue(send.alive(), "migration ended before the kill\n" + send.describe())
        send.kill()
        dst_rc = self.finish(recv, 20)
        dst = recv.report()
        ctx = "\n" + recv.describe()
        self.assertEqual(dst_rc, 1, ctx)
        self.assertEqual(dst["result"], "failed", ctx)
        self.assertIn("source", dst["error"], "the error does not name the source" + ctx)
        self.assertFalse(dst["guest"]["checked"], ctx)


class Stall(harness.RdmigTestCase):
    def test_destination_stopped(self):
        """Case 10: SIGSTOP the destination; the source's peer timeout ends it."""
        recv, addr = self.start_recv(guest=SLOW_GUEST)
        send = self.start_send(addr, "--peer-timeout-ms", "2000", *SLOW, guest=SLOW_GUEST,
                               quiet=False)
        self.wait_for_stderr(send, "active", 15)
        time.sleep(0.5)
        self.assertTrue(send.alive(), "migration ended before the stop\n" + send.describe())
        recv.signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            src_rc = self.finish(send, 20)
        finally:
            recv.signal(signal.SIGCONT)
        took = send.t_exit - t_stop
        src = send.report()
        ctx = "\n" + send.describe()
        # A lower bound is behaviour: the peer timeout did not fire early.
        self.assertGreater(took, 1.5, "source gave up before the 2 s peer timeout" + ctx)
        self.assertEqual(src_rc, 1, ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assertEqual(src["error_code"], "peer", ctx)
        self.assertRegex(src["error"], re.compile("silent|stall", re.I), ctx)
        self.assert_source_guest_safe(src, ctx)
        # Woken up, the destination finds its source gone and fails on its own.
        dst_rc = self.finish(recv, 15)
        self.assertEqual(dst_rc, 1, recv.describe())
        self.assertEqual(recv.report()["result"], "failed", recv.describe())

    def test_source_stopped(self):
        """SIGSTOP the source; the destination's peer timeout ends it.  Woken up, the
        source fails with the destination's reason, its guest running and intact."""
        recv, addr = self.start_recv("--peer-timeout-ms", "2000", guest=SLOW_GUEST)
        send = self.start_send(addr, *SLOW, guest=SLOW_GUEST, quiet=False)
        self.wait_for_stderr(send, "active", 15)
        time.sleep(0.5)
        self.assertTrue(send.alive(), "migration ended before the stop\n" + send.describe())
        send.signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        try:
            dst_rc = self.finish(recv, 20)
        finally:
            send.signal(signal.SIGCONT)
        took = recv.t_exit - t_stop
        dst = recv.report()
        ctx = "\n" + recv.describe()
        self.assertGreater(took, 1.5, "destination gave up before the 2 s peer timeout" + ctx)
        self.assertEqual(dst_rc, 1, ctx)
        self.assertEqual(dst["result"], "failed", ctx)
        self.assertRegex(dst["error"], re.compile("source.*(silent|stall)", re.I), ctx)
        src_rc = self.finish(send, 15)
        src = send.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 1, ctx)
        self.assert_source_guest_safe(src, ctx)
        self.assertRegex(src["error"], re.compile("silent|stall", re.I),
                         "the source lost the destination's reason" + ctx)


class Layout(harness.RdmigTestCase):
    """Case 7: layouts that differ.  The source fails, told why, with its
    guest running on; the destination refuses that source, says why, and
    listens on for one it can take."""

    def run_mismatch(self, recv_guest, send_guest):
        recv, addr = self.start_recv(guest=recv_guest)
        send = self.start_send(addr, guest=send_guest)
        src_rc = self.finish(send, 30)
        src = send.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 1, ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assertIn("(layout)", src["error"], "source does not say the layouts differ" + ctx)
        self.assertEqual(src["rounds"], 0, "pages were sent to a mismatched layout" + ctx)
        self.assert_source_guest_safe(src, ctx)
        refusal = self.assert_refused_and_listening(recv, ctx)
        self.assertIn("layout", refusal, ctx)
        return src, refusal, ctx

    def test_size(self):
        """64M at the destination, 128M at the source."""
        src, refusal, ctx = self.run_mismatch(["--ram-size", "64M"], ["--ram-size", "128M"])
        for text in (src["error"], refusal):
            self.assertIn("pc.ram", text, ctx)
            self.assertIn(str(64 << 20), text, ctx)
            self.assertIn(str(128 << 20), text, ctx)

    def test_size_caller_dirty_log(self):
        """The same with the caller's dirty log (as QEMU's): its stop is not
        called, since its start never was (QEMU asserts on that)."""
        src, refusal, ctx = self.run_mismatch(["--ram-size", "64M"],
                                              ["--ram-size", "128M", "--dirty-method", "guest"])
        self.assertEqual(src["dirty_method"], "", ctx)

    def test_blocks(self):
        """The same RAM split into 2 blocks here, 4 there."""
        src, refusal, ctx = self.run_mismatch(["--ram-size", "64M", "--blocks", "2"],
                                              ["--ram-size", "64M", "--blocks", "4"])
        for text in (src["error"], refusal):
            self.assertIn("ram0", text, "the error does not name the block" + ctx)

    def test_block_names(self):
        """One block called pc.ram against two blocks ram0, ram1."""
        src, refusal, ctx = self.run_mismatch(["--ram-size", "64M", "--blocks", "2"],
                                              ["--ram-size", "64M"])
        for text in (src["error"], refusal):
            self.assertIn("pc.ram", text, ctx)
            self.assertIn("ram0", text, ctx)

    def test_refused_then_taken(self):
        """After refusing a source with another layout, the destination
        takes the right one: the migration completes and verifies."""
        recv, addr = self.start_recv(guest=["--ram-size", "32M"])
        wrong = self.start_send(addr, guest=["--ram-size", "64M"], name="wrong-send")
        self.assertEqual(self.finish(wrong, 30), 1, wrong.describe())
        self.wait_for_stderr(recv, "refused a source", 15)
        send = self.start_send(addr, guest=["--ram-size", "32M", "--dirty-rate", "5"])
        src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        ctx = "\n%s\n%s\n%s" % (wrong.describe(), send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assert_verified(send.report(), recv.report(), ctx)


class AfterSwitchover(harness.RdmigTestCase):
    def test_device_state_refused(self):
        """The destination verifies every page but cannot load the device state (its
        guest has 3 vCPUs, the source's 2): it must not run the guest, and the source,
        told so, resumes its own."""
        recv, addr = self.start_recv(guest=["--ram-size", "32M", "--dirty-rate", "5",
                                            "--vcpus", "3"])
        send = self.start_send(addr, guest=["--ram-size", "32M", "--dirty-rate", "5",
                                            "--vcpus", "2"])
        src_rc, dst_rc = self.finish(send, 30), self.finish(recv, 30)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (1, 1), ctx)
        self.assertEqual(dst["result"], "failed", ctx)
        self.assertIn("device state", dst["error"], ctx)
        self.assertEqual(dst["pages_verified"], dst["pages_total"], ctx)
        self.assertFalse(dst["guest"]["checked"], "a guest that failed to load was run" + ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assertIn("device state", src["error"], ctx)
        self.assertNotIn("outcome unknown", src["error"], ctx)
        self.assert_source_guest_safe(src, ctx)


class DeviceStateSize(harness.RdmigTestCase):
    """Device state travels as one control message of at most 16 MiB (the
    frame limit): one of 1 MiB goes through; one over the limit is refused
    with a message saying so, and the source's guest runs on intact."""
    GUEST = ["--ram-size", "32M", "--dirty-rate", "5"]

    def test_one_mib(self):
        pad = ["--device-state-pad", "1M"]
        self.migrate(guest=self.GUEST + pad)

    def test_over_the_limit_refused(self):
        pad = ["--device-state-pad", "17M"]
        recv, addr = self.start_recv(guest=self.GUEST + pad)
        send = self.start_send(addr, guest=self.GUEST + pad)
        src_rc, dst_rc = self.finish(send, 30), self.finish(recv, 30)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (1, 1), ctx)
        want = "device state of %d bytes exceeds the 16777216-byte message limit" % (
            4096 + (17 << 20))
        self.assertIn(want, src["error"], ctx)
        self.assertEqual(src["error_code"], "unsupported", ctx)
        self.assert_source_guest_safe(src, ctx)
        self.assertIn("exceeds the 16777216-byte message limit", dst["error"], ctx)
        self.assertFalse(dst["guest"]["checked"], "the destination ran a guest" + ctx)


class SecondSource(harness.RdmigTestCase):
    def test_turned_away(self):
        """One source per destination: once one source is taken (HELLO_ACK,
        REGIONS, its data connection), a second source is turned away
        cleanly, its guest intact, and the served one is not disturbed."""
        recv, addr = self.start_recv(guest=["--ram-size", "32M"])
        first = harness.FakeSource(addr, [("pc.ram", 32 << 20, 4096)])
        try:
            first.data_connect()
            send = self.start_send(addr, guest=["--ram-size", "32M", "--dirty-rate", "5"])
            src_rc = self.finish(send, 20)
            src = send.report()
            ctx = "\n%s\n%s" % (send.describe(), recv.describe())
            self.assertEqual(src_rc, 1, ctx)
            self.assertEqual(src["result"], "failed", ctx)
            self.assertRegex(src["error"], re.compile("destination|refused|reset|closed", re.I),
                             ctx)
            self.assert_source_guest_safe(src, ctx)
            self.assertEqual(first.ack["transport"], "tcp", ctx)
            self.assertTrue(recv.alive(), "the destination gave up on the first source" + ctx)
            # The first one is still the destination's source: its messages are taken.
            first.ctl.send(harness.MSG_PING, b"")
            self.assertTrue(recv.alive(), ctx)
        finally:
            first.close()
        self.finish(recv, 30)


if __name__ == "__main__":
    harness.main()

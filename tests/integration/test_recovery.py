# SPDX-License-Identifier: MIT
"""Postcopy recovery and fault injection over TCP between two "hosts" (this
network namespace and another, joined by a veth pair): the link cut and
restored, a peer stopped (SIGSTOP) past the peer timeout, repeated pauses in
one migration, a recovery attempt by another session, recovery epochs
that do not name the next one, faults served while a recovering source
stalls its handshake, the source killed during postcopy, the destination
killed during precopy.

The link from the source is capped (tbf) so that postcopy lasts a few
seconds.  The operator's commands (`rdmig recover`, `rdmig send --resume`,
`rdmig cancel`) drive recovery, as a person would.  Every migration that
survives is verified page by page on both sides and its guest checked.
"""
import json
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (FEATURE_KEEPALIVE, FEATURE_POSTCOPY, FEATURE_RECOVERY,  # noqa: E402
                     FEATURE_VERIFY, FEATURE_ZERO_PAGES, MSG_EPOCH, MSG_ERROR, MSG_HELLO,
                     MSG_HELLO_ACK, MSG_PING, MSG_RESUME, parse_hello,
                     NetPair, RdmigTestCase, FakeControl, hello_payload, main, monitor,
                     monitor_exchange, monitor_status, parse_error)

RAM = "96M"
TIMING = ["--keepalive-ms", "200", "--peer-timeout-ms", "1000", "--connect-timeout-ms", "3000"]


class Recovery(RdmigTestCase):
    """One migration between two hosts with its monitors; helpers to drive it."""
    rate = "160mbit"
    dirty = "200"

    def setUp(self):
        super().setUp()
        self.net = NetPair(rate=self.rate)
        self.addCleanup(self.net.close)
        self.tmp = tempfile.mkdtemp(prefix="rdmig-rec-")
        self.dmon = os.path.join(self.tmp, "dst.sock")
        self.smon = os.path.join(self.tmp, "src.sock")
        self.t0 = time.monotonic()
        self.log = []

    def note(self, what):
        self.log.append("%6.2f s  %s" % (time.monotonic() - self.t0, what))

    def start(self, postcopy_after="1", extra_send=(), extra_both=()):
        guest = ["--ram-size", RAM, "--dirty-rate", self.dirty, *extra_both]
        self.recv = self.spawn("recv", "--listen", self.net.addr_there + ":0", "--print-address",
                               "--json", "--quiet", "--monitor", self.dmon, *guest, *TIMING,
                               name="recv", wrapper=self.net.wrapper)
        addr = self.recv.next_line(timeout=15)
        self.assertTrue(addr and ":" in addr, "recv did not print its address\n%s" %
                        self.recv.describe())
        args = ["--postcopy", "--postcopy-after", postcopy_after] if postcopy_after else []
        self.send = self.spawn("send", "--to", addr.strip(), "--json", "--quiet", "--monitor",
                               self.smon, *guest, *TIMING, *args, *extra_send, name="send")

    def ctx(self):
        return "\n--- timeline:\n%s\n%s\n%s" % ("\n".join(self.log), self.send.describe(),
                                                self.recv.describe())

    def wait_state(self, mon, states, timeout, proc=None):
        st = self.wait_monitor(mon, states, timeout, proc, self.ctx)
        self.note("%s: %s" % (os.path.basename(mon), st["state"]))
        return st

    def cut(self, at_least=0.2):
        """Cuts the link during postcopy; returns when both sides paused."""
        self.wait_state(self.dmon, ("postcopy-active",), 60, self.recv)
        time.sleep(at_least + random.random() * 0.3)
        t = time.monotonic()
        self.net.down()
        self.note("link down")
        self.wait_state(self.dmon, ("postcopy-paused",), 15, self.recv)
        self.wait_state(self.smon, ("postcopy-paused",), 15, self.send)
        return time.monotonic() - t

    def recover(self):
        """The operator's recovery: a new listener there, the source sent to it."""
        r = self.spawn("recover", "--monitor", self.dmon, "--listen", self.net.addr_there + ":0",
                       name="rdmig recover")
        self.assertEqual(self.finish(r, 15), 0, "rdmig recover failed%s\n%s" %
                         (self.ctx(), r.describe()))
        addr = r.stdout().strip()
        self.assertTrue(addr.startswith(self.net.addr_there + ":"), addr)
        self.note("recovery listener %s" % addr)
        s = self.spawn("send", "--resume", "--monitor", self.smon, "--to", addr,
                       name="rdmig send --resume")
        self.assertEqual(self.finish(s, 15), 0, "rdmig send --resume failed%s\n%s" %
                         (self.ctx(), s.describe()))
        return addr

    def finish_both(self, timeout=90):
        src_rc = self.finish(self.send, timeout, self.ctx)
        dst_rc = self.finish(self.recv, 30, self.ctx)
        src, dst = self.send.report(), self.recv.report()
        self.assertEqual((src_rc, dst_rc), (0, 0), "exit statuses" + self.ctx())
        self.assert_verified(src, dst, self.ctx())
        self.assertTrue(src["postcopy"]["active"] and dst["postcopy"]["active"], self.ctx())
        self.assertEqual(dst["recovery"]["pages_missing"], 0, self.ctx())
        return src, dst


class LinkDown(Recovery):
    def test_link_down_in_postcopy(self):
        """The link goes down mid-postcopy and comes back: both pause, the
        destination guest keeps running, recovery on a new port completes."""
        self.start()
        detect = self.cut()
        st = monitor_status(self.dmon)
        self.assertGreater(st["pages_missing"], 0, "nothing left to pull when the link went "
                           "down: the test did not cut postcopy" + self.ctx())
        # The cut is seen by the keepalive: the peer went silent, or stopped
        # in the middle of a frame (a large HASHES was on its way).
        self.assertRegex(st["pause_reason"], "silent|stalled in the middle of a frame",
                         self.ctx())
        self.note("both paused %.2f s after the cut" % detect)
        time.sleep(0.5)  # the guest runs paused; threads on missing pages wait
        self.net.up()
        self.recover()
        src, dst = self.finish_both()
        for r in (src, dst):
            self.assertEqual(r["recovery"]["pauses"], 1, self.ctx())
            self.assertGreater(r["recovery"]["paused_ms"], 0, self.ctx())
        self.assertGreater(dst["postcopy"]["faults"], 0, "the guest never faulted" + self.ctx())


    def test_recover_while_link_still_down(self):
        """A recovery attempt while the link is still down fails and leaves
        both paused; the next one, once the link is back, completes."""
        self.start()
        self.cut()
        r = self.spawn("recover", "--monitor", self.dmon, "--listen", self.net.addr_there + ":0")
        self.assertEqual(self.finish(r, 15), 0, r.describe())
        addr = r.stdout().strip()
        s = self.spawn("send", "--resume", "--monitor", self.smon, "--to", addr)
        self.assertEqual(self.finish(s, 15), 0, s.describe())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = monitor_status(self.smon)
            if st and st["state"] == "postcopy-paused" and st["recover_failures"] >= 1:
                break
            time.sleep(0.1)
        self.assertEqual(st["state"], "postcopy-paused", self.ctx())
        self.assertGreaterEqual(st["recover_failures"], 1, self.ctx())
        self.assertTrue(st["pause_reason"], self.ctx())
        self.net.up()
        self.recover()
        src, dst = self.finish_both()
        self.assertGreaterEqual(src["recovery"]["recover_failures"], 1, self.ctx())


class Pause(Recovery):
    """The operator's pause (QMP migrate-pause, `rdmig pause`): the side
    asked drops its link, both pause as after a network failure, the guest
    runs on at the destination, and recovery continues to a verified end."""

    def pause_and_recover(self, side):
        self.start()
        mon = self.dmon if side == "destination" else self.smon
        self.wait_state(self.dmon, ("postcopy-active",), 60, self.recv)
        p = self.spawn("pause", "--monitor", mon, name="rdmig pause")
        self.assertEqual(self.finish(p, 15), 0, "rdmig pause failed%s\n%s" %
                         (self.ctx(), p.describe()))
        self.note("pause asked of %s" % os.path.basename(mon))
        self.wait_state(self.dmon, ("postcopy-paused",), 15, self.recv)
        self.wait_state(self.smon, ("postcopy-paused",), 15, self.send)
        st = monitor_status(mon)
        self.assertIn("paused on request", st["pause_reason"], self.ctx())
        self.recover()
        src, dst = self.finish_both()
        for r in (src, dst):
            self.assertEqual(r["recovery"]["pauses"], 1, self.ctx())
        return src, dst

    def test_pause_destination(self):
        self.pause_and_recover("destination")

    def test_pause_source(self):
        self.pause_and_recover("source")

    def test_pause_refused_in_plain_precopy(self):
        """In precopy without --precopy-resume there is nothing to pause into:
        refused, naming why."""
        self.start(postcopy_after=None)
        self.wait_state(self.smon, ("active",), 30, self.send)
        reply = monitor(self.smon, "pause")
        self.assertIn("error", reply, reply)
        self.assertEqual(reply["error"]["class"], "invalid", reply)
        self.assertIn("pause is for", reply["error"]["desc"])
        self.assertIn("without precopy-resume", reply["error"]["desc"])


class Repeated(Recovery):
    """A slower link (40 Mbit/s: the pull of about 90 MiB lasts some 20 s), so
    that three cuts land in one postcopy."""
    rate = "40mbit"

    def test_repeated_pauses(self):
        """Three cuts in one migration, each recovered: three pauses on both sides."""
        self.start()
        for _ in range(3):
            self.cut(at_least=0.1)
            self.net.up()
            self.recover()
            self.wait_state(self.dmon, ("postcopy-active",), 15, self.recv)
        src, dst = self.finish_both(timeout=180)
        for r in (src, dst):
            self.assertEqual(r["recovery"]["pauses"], 3, "%s pauses%s" % (r["role"], self.ctx()))


class PrecopyResume(Recovery):
    """--precopy-resume on both sides: a precopy whose link breaks pauses,
    the source guest running on, and continues after recovery instead of
    starting over."""
    dirty = "4"  # below the capped link rate: precopy converges

    def finish_precopy(self):
        """Both ends completed after one pause, verified; the reports."""
        src_rc = self.finish(self.send, 120, self.ctx)
        dst_rc = self.finish(self.recv, 30, self.ctx)
        src, dst = self.send.report(), self.recv.report()
        self.assertEqual((src_rc, dst_rc), (0, 0), self.ctx())
        self.assert_verified(src, dst, self.ctx())
        for r in (src, dst):
            self.assertEqual(r["recovery"]["pauses"], 1, self.ctx())
        return src, dst

    def test_link_down_in_precopy(self):
        self.start(postcopy_after=None, extra_both=["--precopy-resume"])
        self.wait_state(self.smon, ("active",), 30, self.send)
        time.sleep(0.5 + random.random())
        self.net.down()
        self.note("link down")
        st = self.wait_state(self.smon, ("precopy-paused",), 15, self.send)
        self.assertTrue(st["pause_reason"], self.ctx())
        self.wait_state(self.dmon, ("precopy-paused",), 15, self.recv)
        time.sleep(0.5)  # the source guest runs on, dirtying pages
        self.net.up()
        self.recover()
        src, dst = self.finish_precopy()
        self.assertFalse(src["postcopy"]["active"], self.ctx())
        # Continued, not started over: fewer pages went than twice the guest.
        self.assertLess(src["pages_sent"] + src["pages_zero"], 2 * src["pages_total"], self.ctx())

    def test_pause_in_precopy(self):
        """`rdmig pause` of the destination in precopy: both pause, and the
        precopy continues after recovery."""
        self.start(postcopy_after=None, extra_both=["--precopy-resume"])
        self.wait_state(self.dmon, ("active",), 30, self.recv)
        p = self.spawn("pause", "--monitor", self.dmon, name="rdmig pause")
        self.assertEqual(self.finish(p, 15), 0, p.describe())
        st = self.wait_state(self.dmon, ("precopy-paused",), 15, self.recv)
        self.assertIn("paused on request", st["pause_reason"], self.ctx())
        self.wait_state(self.smon, ("precopy-paused",), 15, self.send)
        self.recover()
        self.finish_precopy()

    def test_give_up(self):
        """Cancel while precopy is paused: the source guest runs on intact."""
        self.start(postcopy_after=None, extra_both=["--precopy-resume"])
        self.wait_state(self.smon, ("active",), 30, self.send)
        time.sleep(0.5)
        self.net.down()
        self.wait_state(self.smon, ("precopy-paused",), 15, self.send)
        c = self.spawn("cancel", "--monitor", self.smon)
        self.assertEqual(self.finish(c, 10), 0, c.describe())
        rc = self.finish(self.send, 30, self.ctx)
        src = self.send.report()
        self.assertEqual(rc, 3, self.ctx())
        self.assertEqual(src["result"], "cancelled", self.ctx())
        self.assert_source_guest_safe(src, self.ctx())


class Stall(Recovery):
    def _stall(self, which):
        self.start()
        self.wait_state(self.dmon, ("postcopy-active",), 60, self.recv)
        time.sleep(0.3)
        victim, other_mon = (self.send, self.dmon) if which == "source" else (self.recv, self.smon)
        victim.signal(signal.SIGSTOP)
        self.note("%s stopped" % which)
        self.wait_state(other_mon, ("postcopy-paused",), 15)
        victim.signal(signal.SIGCONT)
        self.note("%s continued" % which)
        mine = self.smon if which == "source" else self.dmon
        self.wait_state(mine, ("postcopy-paused",), 15)
        self.recover()
        src, dst = self.finish_both()
        self.assertEqual(dst["recovery"]["pauses"], 1, self.ctx())

    def test_source_stopped(self):
        self._stall("source")

    def test_destination_stopped(self):
        self._stall("destination")


class AcceptedControl(FakeControl):
    """The destination end of a control channel a real source opened."""

    def __init__(self, sock):
        self.sock, self.seq, self.rx_seq = sock, 0, 0


class Handshake(Recovery):
    """A recovering source's handshake as the destination sees it: the
    epoch it is told and must follow, and faults served while it runs."""

    def wait_recover_failures(self, mon, n):
        """The monitor's status once it counts @n failed recovery attempts."""
        deadline = time.monotonic() + 15
        st = monitor_status(mon)
        while st and st["recover_failures"] < n and time.monotonic() < deadline:
            time.sleep(0.05)
            st = monitor_status(mon)
        self.assertEqual(st and st["recover_failures"], n, "%s%s" % (st, self.ctx()))
        self.assertEqual(st["state"], "postcopy-paused", self.ctx())
        return st

    def fake_destination_epoch(self, told):
        """The paused source sent to a listener of the test's, which reads
        its HELLO, tells EPOCH @told and returns (HELLO payload, the frame
        that followed) and drops the link."""
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(lst.close)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.settimeout(15)
        reply = monitor(self.smon, "recover", address="127.0.0.1:%d" % lst.getsockname()[1])
        self.assertIn("return", reply, reply)
        ctl = AcceptedControl(lst.accept()[0])
        try:
            f = ctl.recv(15)
            self.assertEqual(f and f[0], MSG_HELLO, "%r%s" % (f, self.ctx()))
            ctl.send(MSG_EPOCH, struct.pack(">Q", told))
            return f[1], ctl.recv(15)
        finally:
            ctl.close()

    def test_epoch_only_the_next(self):
        """The destination counts the links it accepted and tells a
        recovering source (EPOCH); the source's RESUME names the next. A
        RESUME that repeats the last epoch (a replay) or skips one is
        refused, as is an EPOCH with no next; the real source then
        recovers."""
        self.start()
        self.cut()
        self.net.up()
        hello, after = self.fake_destination_epoch(41)
        self.assertTrue(parse_hello(hello)["required"] & FEATURE_RECOVERY, self.ctx())
        self.assertEqual(after, (MSG_RESUME, struct.pack(">Q", 42)),
                         "the source did not take the next epoch after the one it was told" +
                         self.ctx())
        self.wait_recover_failures(self.smon, 1)
        _, after = self.fake_destination_epoch(2**64 - 1)
        self.assertNotEqual(after and after[0], MSG_RESUME, self.ctx())
        st = self.wait_recover_failures(self.smon, 2)
        self.assertIn("epoch is used up", st["pause_reason"], self.ctx())

        # The destination, in clear (the session id is the proof): the
        # source's own HELLO, replayed, with a wrong RESUME.
        reply = monitor(self.dmon, "recover", address="%s:0" % self.net.addr_there)
        self.assertIn("return", reply, reply)
        addr = reply["return"]["address"]
        for n, (epoch, code, why) in enumerate(((0, "auth", "is not newer than the last one"),
                                                (2, "protocol", "is not the next after"),
                                                (2**64 - 1, "protocol", "is not the next"))):
            fake = FakeControl(addr)
            fake.send(MSG_HELLO, hello)
            f = fake.recv()
            self.assertEqual(f, (MSG_EPOCH, struct.pack(">Q", 0)), self.ctx())
            fake.send(MSG_RESUME, struct.pack(">Q", epoch))
            got = fake.recv_error()
            fake.close()
            self.assertIsNotNone(got, "no ERROR for RESUME %d%s" % (epoch, self.ctx()))
            self.assertEqual(got[0], code, got)
            self.assertIn(why, got[1])
            st = self.wait_recover_failures(self.dmon, n + 1)
            self.assertIn(why, st["pause_reason"], self.ctx())
        s = self.spawn("send", "--resume", "--monitor", self.smon, "--to", addr)
        self.assertEqual(self.finish(s, 15), 0, s.describe())
        src, dst = self.finish_both()
        self.assertEqual(src["recovery"]["recover_failures"], 2, self.ctx())
        self.assertEqual(dst["recovery"]["recover_failures"], 3, self.ctx())

    def test_faults_served_while_a_handshake_stalls(self):
        """A source that proves its session and then stalls in the middle of
        the handshake (HELLO, RESUME, HELLO_ACK, then no data connection)
        holds the destination's recovery for the connect timeout (3 s). The
        pager serves meanwhile the faults that need nothing from the source:
        the destination guest's reader, which reads a page never written
        every 5 ms, never waits anywhere near that long. The real source
        then recovers."""
        self.start(extra_both=("--reader-pages", "4096"))
        t0 = time.monotonic()  # the destination's guest (and reader) start after this
        self.cut()
        self.net.up()
        hello, _ = self.fake_destination_epoch(0)
        self.wait_recover_failures(self.smon, 1)
        reply = monitor(self.dmon, "recover", address="%s:0" % self.net.addr_there)
        self.assertIn("return", reply, reply)
        addr = reply["return"]["address"]
        fake = FakeControl(addr)
        fake.send(MSG_HELLO, hello)
        self.assertEqual(fake.recv(), (MSG_EPOCH, struct.pack(">Q", 0)), self.ctx())
        fake.send(MSG_RESUME, struct.pack(">Q", 1))
        f = fake.recv()
        self.assertEqual(f and f[0], MSG_HELLO_ACK, "%r%s" % (f, self.ctx()))
        self.note("a fake source holds the handshake")
        # Alive (keepalives), but no data connection until the destination
        # gives up on it.
        deadline = time.monotonic() + 15
        st = monitor_status(self.dmon)
        while st and st["recover_failures"] < 1 and time.monotonic() < deadline:
            fake.send(MSG_PING)
            time.sleep(0.2)
            st = monitor_status(self.dmon)
        st = self.wait_recover_failures(self.dmon, 1)
        self.note("the destination gave up on it: %s" % st["pause_reason"])
        fake.close()
        self.assertIn("did not arrive", st["pause_reason"], self.ctx())
        # The reader faults on fresh pages for at least 4096 x 5 ms from its
        # start: the stall must have ended within that, or it proves nothing.
        self.assertLess(time.monotonic() - t0, 20, "the stall ended after the reader's pages "
                        "ran out" + self.ctx())
        s = self.spawn("send", "--resume", "--monitor", self.smon, "--to", addr)
        self.assertEqual(self.finish(s, 15), 0, s.describe())
        src, dst = self.finish_both()
        guest = dst["guest"]
        self.note("reader: %d reads, the slowest %d us" % (guest["reader_reads"],
                                                          guest["reader_max_us"]))
        self.assertGreater(guest["reader_reads"], 0, self.ctx())
        self.assertLess(guest["reader_max_us"], 1500000,
                        "a fault needing nothing from the source waited through the stalled "
                        "handshake" + self.ctx())


class Unrecoverable(Recovery):
    def test_other_session_refused(self):
        """While paused, a source of another session is refused with a clear
        error; the real one then recovers."""
        self.start()
        self.cut()
        self.net.up()
        reply = monitor(self.dmon, "recover", address="%s:0" % self.net.addr_there)
        self.assertIn("return", reply, reply)
        addr = reply["return"]["address"]
        host, port = addr.rsplit(":", 1)
        feats = FEATURE_VERIFY | FEATURE_ZERO_PAGES | FEATURE_KEEPALIVE | FEATURE_POSTCOPY | \
            FEATURE_RECOVERY
        blocks = [("pc.ram", 96 << 20, 4096)]
        fake = FakeControl(addr)
        fake.send(MSG_HELLO, hello_payload(blocks, supported=feats, required=feats,
                                           session_id=os.urandom(16)))
        fake.send(MSG_RESUME, struct.pack(">Q", 1))
        code, msg = fake.recv_error()
        fake.close()
        self.assertEqual(code, "auth", msg)
        self.assertIn("another session", msg)
        # The refusal is sent before the attempt is counted: wait for the count.
        deadline = time.monotonic() + 10
        st = monitor_status(self.dmon)
        while st and st["recover_failures"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            st = monitor_status(self.dmon)
        self.assertEqual(st["state"], "postcopy-paused", self.ctx())
        self.assertEqual(st["recover_failures"], 1, self.ctx())
        self.assertIn("another session", st["pause_reason"])
        s = self.spawn("send", "--resume", "--monitor", self.smon, "--to", addr)
        self.assertEqual(self.finish(s, 15), 0, s.describe())
        self.finish_both()

    def test_source_killed_in_postcopy(self):
        """The source dies in postcopy: the destination pauses; giving up
        names the pages that are lost, and nothing reads garbage."""
        self.start()
        self.wait_state(self.dmon, ("postcopy-active",), 60, self.recv)
        time.sleep(0.3)
        self.send.kill()
        self.note("source killed")
        st = self.wait_state(self.dmon, ("postcopy-paused",), 15)
        self.assertGreater(st["pages_missing"], 0, self.ctx())
        c = self.spawn("cancel", "--monitor", self.dmon)
        self.assertEqual(self.finish(c, 10), 0, c.describe())
        rc = self.finish(self.recv, 20, self.ctx)
        self.assertEqual(rc, 1, self.ctx())
        dst = self.recv.report()
        self.assertEqual(dst["result"], "failed", self.ctx())
        self.assertIn("lost", dst["error"])
        self.assertRegex(dst["error"], r"pc\.ram:\d+-\d+")
        self.assertGreater(dst["recovery"]["pages_missing"], 0, self.ctx())

    def test_destination_killed_in_precopy(self):
        """The destination dies during precopy: the source fails cleanly and
        its guest runs on, intact."""
        self.start(postcopy_after=None)
        self.wait_state(self.smon, ("active",), 30, self.send)
        time.sleep(0.5)
        self.recv.kill()
        self.note("destination killed")
        rc = self.finish(self.send, 30, self.ctx)
        src = self.send.report()
        self.assertEqual(rc, 1, self.ctx())
        self.assertEqual(src["result"], "failed", self.ctx())
        self.assert_source_guest_safe(src, self.ctx())

    def test_cancel_refused_in_postcopy(self):
        """Once the guest runs on the destination, a cancel on either side
        (monitor or SIGINT) is refused with the reason, and the migration
        completes, verified."""
        self.start()
        self.wait_state(self.dmon, ("postcopy-active",), 60, self.recv)
        for mon in (self.dmon, self.smon):
            reply = monitor(mon, "cancel")
            self.note("cancel on %s: %s" % (os.path.basename(mon), reply))
            self.assertIn("error", reply, "%s%s" % (reply, self.ctx()))
            desc = reply["error"]["desc"]
            self.assertTrue(desc.startswith("cancel refused in postcopy-"), desc + self.ctx())
            self.assertIn("split between the hosts", desc)
            self.assertEqual(reply["error"]["class"], "invalid", reply)
        self.send.signal(signal.SIGINT)
        self.note("SIGINT to the source")
        src, dst = self.finish_both()
        self.assertIn("cancel refused", self.send.stderr(), self.ctx())

    def test_monitor_refuses_malformed_requests(self):
        """Whatever a client sends the monitor, it answers one error line
        naming the problem (class and desc), and the process runs on."""
        recv, _ = self.start_recv("--monitor", self.dmon, guest=["--ram-size", "32M"])
        cases = [  # request bytes, error class, words the desc must contain
            (b"status\n", "protocol", "not valid JSON"),
            (b"[1, 2]\n", "protocol", "not a JSON object"),
            (b"\n", "protocol", "empty"),
            (b'{"execute": 5}\n', "protocol", '"execute"'),
            (b'{"execute": "status", "id": 1}\n', "protocol", '"id"'),
            (b'{"execute": "status\xff"}\n', "protocol", "UTF-8"),
            (b'{"execute": "frob"}\n', "invalid", "unknown command \"frob\""),
            (b'{"execute": "status", "arguments": {"x": 1}}\n', "invalid", '"x"'),
            (b'{"execute": "recover"}\n', "invalid", "address"),
            (b'{"execute": "recover", "arguments": {"address": 7}}\n', "invalid", "address"),
            (b'{"execute": "recover", "arguments": "x"}\n', "protocol", "arguments"),
            (b"x" * 5000, "protocol", "longer than"),
            (b"[" * 4000 + b"\n", "protocol", "not valid JSON"),
        ]
        for request, cls, words in cases:
            data = monitor_exchange(self.dmon, request)
            self.assertEqual(data.count(b"\n"), 1, "%r: %r" % (request[:80], data))
            reply = json.loads(data)
            self.assertEqual(list(reply), ["error"], "%r: %r" % (request[:80], reply))
            self.assertEqual(reply["error"]["class"], cls, "%r: %r" % (request[:80], reply))
            self.assertIn(words, reply["error"]["desc"], "%r: %r" % (request[:80], reply))
        self.assertTrue(recv.alive(), recv.describe())
        st = monitor_status(self.dmon)
        self.assertEqual(st["state"], "setup", st)
        refused = monitor(self.dmon, "recover", address="127.0.0.1:0")
        self.assertEqual(refused["error"]["class"], "invalid", refused)
        self.assertIn("postcopy-paused", refused["error"]["desc"])
        self.assertEqual(monitor(self.dmon, "cancel"), {"return": {}})
        self.assertEqual(self.finish(recv, 20), 3, recv.describe())
        self.assertEqual(recv.report()["result"], "cancelled")
        self.assertFalse(os.path.exists(self.dmon), "the monitor socket was left behind")

    def test_recover_refused_outside_pause(self):
        """rdmig recover on a migration that is not paused says so."""
        self.start(postcopy_after=None)
        self.wait_state(self.dmon, ("active",), 30, self.recv)
        r = self.spawn("recover", "--monitor", self.dmon, "--listen", self.net.addr_there + ":0")
        self.assertEqual(self.finish(r, 10), 1, r.describe())
        self.assertIn("postcopy-paused", r.stderr())
        monitor(self.smon, "cancel")
        self.finish(self.send, 30, self.ctx)


if __name__ == "__main__":
    main()

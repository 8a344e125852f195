# SPDX-License-Identifier: MIT
"""Verification seen failing on a real destination: the test changes a page
of the destination guest's memory from outside the process (through its
memfd) after the page arrived and before the switchover, as a memory or
network fault would.  The migration must report that page, by block and
page, on both sides, must not complete, and the source guest must run on."""
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Idle, so that a page sent once is never sent again; paced, so that the
# round lasts seconds and the test can act in the middle of it.  RAM in a
# memfd: the test reaches it from outside the process (GuestMemory).
GUEST = ["--ram-size", "64M", "--memory", "memfd"]
SLOW = ["--max-bandwidth", "16"]


class Tampered(harness.RdmigTestCase):
    def run_tampered(self, tamper, guest=GUEST, send_args=SLOW):
        recv, addr = self.start_recv(guest=guest)
        send = self.start_send(addr, *send_args, guest=guest)
        mem = harness.GuestMemory(recv.pid)
        self.addCleanup(mem.close)
        page = self.tamper_midway(recv, mem, tamper)
        src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        src, dst = send.report(), recv.report()
        ctx = "\nchanged page %d\n%s\n%s" % (page, send.describe(), recv.describe())
        self.assert_verify_caught(src, dst, src_rc, dst_rc, "pc.ram:%d" % page, ctx)
        return src, dst

    def test_corrupted_page(self):
        """One byte of one received page inverted."""
        self.run_tampered(lambda mem, page: mem.flip_byte(page))

    def test_page_never_received(self):
        """One received page dropped again: it reads as zero there, as if it
        had never come."""
        self.run_tampered(lambda mem, page: mem.punch(page))



class Background(harness.RdmigTestCase):
    """Precopy verification out of the downtime: the destination checks the
    pages of each round while the next runs (and those of a long first round
    a chunk at a time), so that the downtime checks only what changed since."""

    def test_checked_before_the_downtime(self):
        """A 256 MiB guest, dirtying: pages are matched before the switchover
        (how many depends on how fast this machine hashes beside the
        migration: docs/BENCHMARKS.md has figures); every page is verified
        in the end, on both sides."""
        guest = ["--ram-size", "256M", "--dirty-rate", "20"]
        src, dst = self.migrate(guest=guest, timeout=120)
        ctx = "\n%s\n%s" % (src, dst)
        self.assertEqual(dst["pages_verified"], dst["pages_total"], ctx)
        self.assertGreater(dst["pages_verified_background"], 0, ctx)

    def test_idle_guest_waits_for_the_verifier(self):
        """An idle guest: nothing is left to send after round 1, but the
        destination has yet to check most of what it got.  The source waits
        for its background verifier (the guest running) rather than have it
        check with both guests stopped: at the switchover at most a tenth of
        the downtime limit's worth is left (or what the rest of the
        switchover costs), here well under half the pages."""
        guest = ["--ram-size", "128M", "--dirty-rate", "0"]
        src, dst = self.migrate(guest=guest, send_args=["--downtime-ms", "50"], timeout=120)
        ctx = "\n%s\n%s" % (src, dst)
        self.assertEqual(dst["pages_verified"], dst["pages_total"], ctx)
        self.assertGreater(dst["pages_verified_background"], dst["pages_total"] // 2, ctx)
        self.assertGreater(src["rounds"], 2, "the source did not wait" + ctx)


class PulledTampered(harness.RdmigTestCase):
    """Postcopy checks each pulled page against the source's final hash as it
    arrives.  The test flips a byte in every page of the stopped source guest
    once the destination runs it (the final hashes are taken by then), as a
    fault in the source's memory or on the wire would: the pages pulled from
    then on must be reported, by block and page, and the migration must not
    complete."""

    def test_pulled_page_corrupted(self):
        net = harness.NetPair(rate="40mbit")  # the pull lasts seconds
        self.addCleanup(net.close)
        guest = ["--ram-size", "32M", "--dirty-rate", "100", "--memory", "memfd"]
        mon = os.path.join(self.oracle_root, "dst.sock")
        recv = self.spawn("recv", "--listen", net.addr_there + ":0", "--print-address",
                          "--json", "--quiet", "--monitor", mon, *guest, name="recv",
                          wrapper=net.wrapper)
        addr = recv.next_line(timeout=15)
        self.assertTrue(addr and ":" in addr, recv.describe())
        send = self.spawn("send", "--to", addr.strip(), "--json", "--quiet",
                          "--postcopy-after", "1", *guest, name="send")
        recv_mon = self.wait_postcopy(recv, send, mon)
        mem = harness.GuestMemory(send.pid)
        self.addCleanup(mem.close)
        changed = 0
        for page in range(32 << 20 >> 12):
            if mem.read_page(page) != bytes(harness.PAGE):
                mem.flip_byte(page)
                changed += 1
        src_rc, dst_rc = self.finish(send, 120), self.finish(recv, 60)
        src, dst = send.report(), recv.report()
        ctx = "\nchanged %d source pages (%s)\n%s\n%s" % (changed, recv_mon, send.describe(),
                                                         recv.describe())
        self.assertEqual((src_rc, dst_rc), (1, 1), "a corrupted pull was not a failure" + ctx)
        self.assertEqual(dst["error_code"], "verify", ctx)
        self.assertGreater(dst["verify_mismatches"], 0, ctx)
        for r in (src, dst):
            self.assertEqual(r["result"], "failed", ctx)
            self.assertRegex(r["error"], r"pulled pages differ from the source \(block:page "
                             r"pc\.ram:\d+", "%s does not name the pages%s" % (r["role"], ctx))

    def wait_postcopy(self, recv, send, mon):
        """Waits until the destination runs the guest (its report would come
        too late: the source's progress line says postcopy-active)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not send.alive() or not recv.alive():
                self.fail("a side ended before postcopy\n%s\n%s" % (send.describe(),
                                                                   recv.describe()))
            st = harness.monitor_status(mon)
            if st and st["state"] == "postcopy-active" and st["pages_missing"] > 0:
                time.sleep(0.3)  # past the source's final hashes
                return "%d pages still to pull" % st["pages_missing"]
            time.sleep(0.02)
        self.fail("no postcopy within 60 s\n%s\n%s" % (send.describe(), recv.describe()))


if __name__ == "__main__":
    harness.main()

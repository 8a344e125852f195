# SPDX-License-Identifier: MIT
"""Migrations that should complete: idle, dirtying (one and several data
connections, several RAM blocks, a hot set), forced switchover, the demo; and
the one that must not: a guest that cannot converge under the default policy.
Every completed migration is checked page by page (see assert_verified)."""
import os
import socket
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MiB  # noqa: E402


class Idle(harness.RdmigTestCase):
    def test_idle(self):
        """Case 1: an idle guest; untouched pages are skipped, zero pages travel
        as markers.  RAM in a memfd, in 4 KiB pages: in transparent huge pages
        (the default) a touched page makes its 2 MiB resident, and nothing is
        left untouched to skip."""
        guest = ["--ram-size", "64M", "--dirty-rate", "0", "--memory", "memfd"]
        src, dst = self.migrate(guest=guest)
        self.assertGreater(src["pages_untouched"], 0, "no page was skipped as never touched")
        self.assertGreater(src["pages_zero"], 0, "no zero page was sent as a marker")
        self.assertEqual(dst["pages_zero"], src["pages_zero"])
        self.assertEqual(src["pages_total"], 64 * MiB // harness.PAGE)
        # Nothing dirtied: what was sent is what was touched and not zero.
        self.assertEqual(src["pages_sent"] + src["pages_zero"] + src["pages_untouched"],
                         src["pages_total"])
        self.assertFalse(src["forced_switchover"])
        # No credentials on loopback: in clear, and the report says so.
        self.assertEqual((src["control_security"], dst["control_security"]), ("none", "none"))


class Converge(harness.RdmigTestCase):
    """Case 2: a guest that dirties 20 MiB/s converges under the default 300 ms.
    A tenth of its writes zero the page, so pages sent with contents in one
    round travel as zero in a later one and the destination must clear them."""

    GUEST = ["--ram-size", "128M", "--dirty-rate", "20", "--rezero-percent", "10"]

    def check(self, src, dst, connections=1):
        self.assertGreaterEqual(src["rounds"], 2, "a dirtying guest needs a second round")
        self.assertGreaterEqual(dst["rounds"], 2)
        self.assertFalse(src["forced_switchover"])
        self.assertTrue(src["transport"], "no transport reported")
        self.assertEqual(src["transport"], dst["transport"])
        self.assertEqual(src["data_connections"], connections)
        self.assertEqual(dst["data_connections"], connections)
        self.assertGreater(dst["guest"]["pages_written"], 0, "destination guest never ran")
        self.assert_rezeroed_arrived_zero(src, dst)

    def test_dirty(self):
        src, dst = self.migrate(guest=self.GUEST)
        self.check(src, dst)

    def test_connections4(self):
        src, dst = self.migrate(guest=self.GUEST, send_args=["--connections", "4"])
        self.check(src, dst, connections=4)

    def test_blocks3(self):
        guest = ["--ram-size", "96M", "--dirty-rate", "20", "--blocks", "3",
                 "--rezero-percent", "10"]
        src, dst = self.migrate(guest=guest)
        self.check(src, dst)
        self.assertEqual(dst["pages_total"], 96 * MiB // harness.PAGE)

    def test_hot(self):
        src, dst = self.migrate(guest=self.GUEST + ["--pattern", "hot"])
        self.check(src, dst)

    def test_many_blocks_connections(self):
        """The limits together: 64 RAM blocks over 16 data connections."""
        guest = ["--ram-size", "64M", "--dirty-rate", "20", "--blocks", "64",
                 "--rezero-percent", "10"]
        src, dst = self.migrate(guest=guest, send_args=["--connections", "16"])
        self.check(src, dst, connections=16)

    def test_ipv6(self):
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.bind(("::1", 0))
            s.close()
        except OSError as e:
            self.skipTest("no IPv6 loopback here: %s" % e)
        recv = self.spawn("recv", "--listen", "[::1]:0", "--print-address", "--json", "--quiet",
                          *self.GUEST, name="recv")
        addr = recv.next_line(15)
        self.assertTrue(addr and addr.startswith("[::1]:"), "bound address %r\n%s" %
                        (addr, recv.describe()))
        send = self.start_send(addr, guest=self.GUEST)
        src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assert_verified(send.report(), recv.report(), ctx)


class Memory(harness.RdmigTestCase):
    """Guest RAM of each kind migrates while dirtied, checked page by page:
    anonymous with transparent huge pages (the default, as QEMU's), a memfd,
    and hugetlb in 2 MiB pages."""

    GUEST = ["--ram-size", "64M", "--dirty-rate", "20", "--rezero-percent", "10"]

    def check(self, src, dst, memory):
        self.assertEqual((src["guest"]["memory"], dst["guest"]["memory"]), (memory, memory))
        self.assertGreaterEqual(src["rounds"], 2, "a dirtying guest needs a second round")
        self.assertGreater(dst["guest"]["pages_written"], 0, "destination guest never ran")
        self.assert_rezeroed_arrived_zero(src, dst)

    def test_anon(self):
        src, dst = self.migrate(guest=self.GUEST)
        self.check(src, dst, "anon")
        if harness.thp_enabled():
            # Pages arrived into 2 MiB pages: a fault per 2 MiB, not per 4 KiB.
            self.assertGreater(dst["guest"]["huge_bytes"], 0,
                               "no transparent huge page in the destination's RAM")

    def test_memfd(self):
        src, dst = self.migrate(guest=self.GUEST + ["--memory", "memfd"])
        self.check(src, dst, "memfd")
        self.assertEqual(dst["guest"]["huge_bytes"], 0)

    def test_hugetlb(self):
        """Tracked, sent, zero-detected and verified in 2 MiB pages."""
        harness.need_huge_pages(self, 2 * 32)  # 64 MiB on each side
        src, dst = self.migrate(guest=self.GUEST + ["--memory", "hugetlb"])
        self.check(src, dst, "hugetlb")
        self.assertEqual(dst["guest"]["huge_bytes"], 64 * MiB)
        self.assertEqual((src["pages_total"], dst["pages_total"]), (32, 32),
                         "RAM blocks are not in 2 MiB pages")

    def test_hugetlb_guest_dirty_log(self):
        """The guest's own 4 KiB dirty log (as KVM's for QEMU), folded into
        the 2 MiB pages of hugetlb blocks: no write lost (the oracle)."""
        harness.need_huge_pages(self, 2 * 32)
        src, dst = self.migrate(guest=self.GUEST + ["--memory", "hugetlb"],
                                send_args=["--dirty-method", "guest"])
        self.check(src, dst, "hugetlb")
        self.assertEqual(src["dirty_method"], "caller")  # RdmigDirtyOps

    def test_hugetlb_against_small_pages(self):
        """2 MiB pages on one side, 4 KiB on the other: the destination
        refuses the layout, naming both, and listens on (a wrong layout is
        not the real source, docs/security.md); the source fails with that
        reason, its guest having run on."""
        harness.need_huge_pages(self, 32)
        recv, addr = self.start_recv(guest=self.GUEST)
        send = self.start_send(addr, guest=self.GUEST + ["--memory", "hugetlb"])
        src_rc = self.finish(send, 60)
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 1, ctx)
        src = send.report()
        self.assertEqual(src["result"], "failed", ctx)
        self.assertIn("2097152-byte pages", src["error"], ctx)
        self.assertIn("4096-byte pages", src["error"], ctx)
        self.assertEqual(src["guest"]["memory"], "hugetlb", ctx)
        self.assertIsNone(recv.p.poll(), "the destination stopped listening" + ctx)

    def test_hugetlb_pool_short(self):
        """More huge pages than the pool has: a clear error that names the
        remedy before anything listens."""
        free = harness.huge_pages_free()
        size = "%dM" % ((free + 64) * 2)
        recv = self.spawn("recv", "--listen", "127.0.0.1:0", "--print-address", "--quiet",
                          "--memory", "hugetlb", "--ram-size", size, name="recv")
        rc = self.finish(recv, 30)
        self.assertNotEqual(rc, 0, recv.describe())
        err = recv.stderr()
        self.assertIn("2 MiB huge pages", err, recv.describe())
        self.assertIn("vm.nr_hugepages", err, recv.describe())


class NoConverge(harness.RdmigTestCase):
    """Case 3: 60 MiB/s of writes through a 20 MiB/s pipe, 10 ms allowed."""

    GUEST = ["--ram-size", "32M", "--dirty-rate", "60"]
    LIMITS = ["--max-bandwidth", "20", "--max-rounds", "3", "--downtime-ms", "10"]

    def test_fail(self):
        recv, addr = self.start_recv(guest=self.GUEST)
        send = self.start_send(addr, *self.LIMITS, guest=self.GUEST)
        src_rc = self.finish(send, 60)
        dst_rc = self.finish(recv, 30)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 1, ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assertEqual(src["error_code"], "converge", ctx)
        self.assertIn("converge", src["error"], ctx)
        self.assertEqual(src["rounds"], 3, "gave up after another number of rounds" + ctx)
        self.assertFalse(src["forced_switchover"], ctx)
        self.assert_source_guest_safe(src, ctx)
        # The destination is told why and does not pretend to have the guest.
        self.assertEqual(dst_rc, 1, ctx)
        self.assertEqual(dst["result"], "failed", ctx)
        self.assertIn("converge", dst["error"], ctx)
        self.assertFalse(dst["guest"]["checked"], ctx)

    def test_switchover(self):
        src, dst = self.migrate(guest=self.GUEST,
                                send_args=self.LIMITS + ["--on-no-converge", "switchover"])
        self.assertTrue(src["forced_switchover"], "completed without a forced switchover?")
        self.assertEqual(src["rounds"], 4, "3 precopy rounds, then the stop-and-copy round")


class CallerDirtyLog(harness.RdmigTestCase):
    """The source's dirty log handed in by the caller (RdmigDirtyOps), as a
    hypervisor hands in KVM's: the synthetic guest's own log of the pages
    its vCPUs write (--dirty-method guest), not rdmig's built-in tracker."""

    def test_precopy(self):
        src, dst = self.migrate(guest=Converge.GUEST, send_args=["--dirty-method", "guest"])
        self.assertEqual(src["dirty_method"], "caller")
        Converge.check(self, src, dst)

    def test_postcopy(self):
        """Postcopy discards what the caller's log says was written since."""
        src, dst = self.migrate(guest=["--ram-size", "64M", "--dirty-rate", "40",
                                       "--rezero-percent", "10"],
                                send_args=["--dirty-method", "guest", "--postcopy",
                                           "--postcopy-after", "1", "--max-bandwidth", "60",
                                           "--downtime-ms", "10"], timeout=120)
        self.assertEqual(src["dirty_method"], "caller")
        self.assertTrue(src["postcopy"]["active"])
        self.assertGreater(dst["postcopy"]["pages_discarded"], 0)
        self.assert_rezeroed_arrived_zero(src, dst)


class Demo(harness.RdmigTestCase):
    def run_demo(self, env=None):
        p = self.spawn("demo", "--json", "--quiet", "--ram-size", "64M", "--dirty-rate", "10",
                       name="demo", env=env)
        rc = self.finish(p, 60)
        ctx = "\n" + p.describe()
        self.assertEqual(rc, 0, ctx)
        reports = p.reports()
        self.assertEqual(len(reports), 2, "expected a source and a destination report" + ctx)
        by_role = {r["role"]: r for r in reports}
        self.assertEqual(sorted(by_role), ["destination", "source"], ctx)
        self.assert_verified(by_role["source"], by_role["destination"], ctx)
        return reports

    def test_demo(self):
        """Case 12: both ends from one command; two reports, both verified."""
        reports = self.run_demo()
        # Authenticated by default: the demo's processes share a one-time key.
        for r in reports:
            self.assertTrue(r["control_security"].startswith("psk (TLS1.3)"),
                            "%s: %r" % (r["role"], r["control_security"]))

    def test_demo_debug_messages(self):
        """With every GLib message on (G_MESSAGES_DEBUG=all) stdout still
        carries only the reports: debug lines go to stderr, where they
        neither break --json nor hide the destination's address from the
        demo (it used to wait forever)."""
        p_lines = self.run_demo(env={"G_MESSAGES_DEBUG": "all"})
        self.assertEqual(len(p_lines), 2)
        demo = self.procs[-1]
        self.assertIn("rdmig-", demo.stderr(), "no debug message at all: the case did not happen")
        for line in demo.lines:
            self.assertTrue(not line.strip() or line.strip().startswith("{"),
                            "stdout carries a line that is not a report: %r" % line)


if __name__ == "__main__":
    harness.main()

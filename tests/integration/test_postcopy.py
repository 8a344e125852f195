# SPDX-License-Identifier: MIT
"""Postcopy over TCP between two real processes: the destination runs the
guest (whose vCPUs keep writing) while it pulls the missing pages itself,
through userfaultfd.  Every page is verified against the hash the source took
at switchover, and the guest's own check runs at its new home."""
import os
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (FEATURE_POSTCOPY, FEATURE_VERIFY, FEATURE_ZERO_PAGES,  # noqa: E402
                     MSG_DISCARD, MSG_POSTCOPY_START, MSG_SOURCE_REGIONS, FakeSource,
                     hello_payload)

# Writes far faster than the paced link and 10 ms allowed: precopy alone
# would never converge.  A tenth of the writes zero their page: such pages
# are discarded and pulled, and must arrive zero.  RAM in a memfd, so that
# pulled pages are mapped without a copy (UFFDIO_CONTINUE); the default
# anonymous memory, as QEMU's, is test_anonymous_memory's.
GUEST = ("--ram-size", "64M", "--dirty-rate", "40", "--rezero-percent", "10",
         "--memory", "memfd")
LIMITS = ("--max-bandwidth", "60", "--downtime-ms", "10")


class PostcopyCase(harness.RdmigTestCase):
    def postcopy_migrate(self, guest=GUEST, send_args=(), recv_args=(), timeout=120):
        src, dst = self.migrate(guest=guest, send_args=LIMITS + tuple(send_args),
                                recv_args=recv_args, timeout=timeout)
        self.assert_postcopy(src, dst, rezeroed="--rezero-percent" in guest)
        return src, dst

    def assert_postcopy(self, src, dst, ctx="", zero_copy=None, rezeroed=False):
        """@rezeroed: the guest zeroed some of its pages (--rezero-percent).
        @zero_copy: whether pulled pages are mapped without a copy; by
        default, whether the destination's RAM is a memfd."""
        if zero_copy is None:
            zero_copy = dst["guest"]["memory"] == "memfd"
        self.assert_verified(src, dst, ctx)
        for r in (src, dst):
            self.assertTrue(r["postcopy"]["active"], "%s did not switch to postcopy%s" %
                            (r["role"], ctx))
        pc = dst["postcopy"]
        # The discard path: pages sent in precopy and written since were
        # dropped and pulled again, every one of them exactly once.
        self.assertGreater(pc["pages_discarded"], 0, "nothing was discarded" + ctx)
        self.assertEqual(pc["pages_discarded"], src["postcopy"]["pages_discarded"], ctx)
        self.assertEqual(pc["pages_on_demand"] + pc["pages_background"], pc["pages_discarded"],
                         "pulled pages do not add up to the discarded ones" + ctx)
        self.assertEqual(dst["remaining_bytes"], 0, ctx)
        # RAM in a memfd: every pulled page is mapped with UFFDIO_CONTINUE,
        # none copied, unless copying was asked for; other RAM is copied.
        self.assertEqual(pc["pages_zero_copy"], pc["pages_discarded"] if zero_copy else 0,
                         "pages placed without a copy" + ctx)
        self.assertEqual(sum(pc["fault_hist"]), pc["faults"] - pc["faults_zero"],
                         "the latency histogram misses faults" + ctx)
        self.assertGreater(dst["guest"]["pages_written"], 0,
                           "the guest did not run at the destination" + ctx)
        # Loading the device state read the page it points at (the one a
        # vCPU wrote last) and found it as the source saved it.
        self.assertIn(dst["guest"]["device_state_probe"], ("present", "missing"), ctx)
        if rezeroed:
            self.assert_rezeroed_arrived_zero(src, dst, ctx)


class DeviceState(PostcopyCase):
    def test_load_reads_missing_page(self):
        """Loading the device state reads guest RAM (as a device model reads
        its virtio rings) at a page still at the source: the pager serves
        that fault while the load runs beside it, and the page read is what
        the source saved.  When the load ran on the pager's own thread this
        was a deadlock.  Whether the page was still missing when read
        depends on the pulls racing it: up to 3 runs until one shows it."""
        seen = []
        for _ in range(3):
            src, dst = self.postcopy_migrate(send_args=("--postcopy-after", "1"))
            seen.append(dst["guest"]["device_state_probe"])
            if seen[-1] == "missing":
                break
            self.tearDown()
            self.setUp()
        self.assertEqual(seen[-1], "missing", "the page was in place every time: %r" % seen)
        self.assertGreater(dst["postcopy"]["faults"], 0)
        # The destination's thread and the guest's start each announced
        # themselves before calling a hook (assert_verified: none called
        # off an announced thread).
        self.assertEqual(dst["hook_threads"], 2)


class Triggers(PostcopyCase):
    def test_after_rounds(self):
        src, dst = self.postcopy_migrate(send_args=("--postcopy-after", "2"))
        self.assertEqual(src["rounds"], 3, "2 precopy rounds, then postcopy")

    def test_after_time(self):
        src, _ = self.postcopy_migrate(send_args=("--postcopy-after", "300ms"))
        self.assertGreaterEqual(src["rounds"], 2)

    def test_no_converge(self):
        """The policy: precopy gives up after 2 rounds and postcopy takes over."""
        src, _ = self.postcopy_migrate(send_args=("--on-no-converge", "postcopy",
                                                  "--max-rounds", "2"))
        self.assertEqual(src["rounds"], 3)
        self.assertFalse(src["forced_switchover"])

    def test_signal(self):
        """SIGUSR1 to `rdmig send` starts postcopy at the end of the round."""
        recv, addr = self.start_recv(guest=GUEST)
        send = self.start_send(addr, "--postcopy", "--max-rounds", "1000", *LIMITS, guest=GUEST,
                               quiet=False)
        self.wait_for_stderr(send, "round 2", 60)
        send.signal(signal.SIGUSR1)
        src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 60)
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assertIn("switching to postcopy", send.stderr(), ctx)
        self.assert_postcopy(send.report(), recv.report(), ctx, rezeroed=True)


class Guests(PostcopyCase):
    def test_hot_set(self):
        """Most writes hit a small hot set: the faults mostly want the same pages."""
        self.postcopy_migrate(guest=("--ram-size", "64M", "--dirty-rate", "80", "--pattern", "hot"),
                              send_args=("--postcopy-after", "1"))

    def test_rewrites_after_switchover(self):
        """A larger guest writing fast: it touches (and rewrites) pages while
        they are being pulled; faults are served on demand."""
        src, dst = self.postcopy_migrate(guest=("--ram-size", "256M", "--dirty-rate", "200"),
                                         send_args=("--postcopy-after", "1",
                                                    "--connections", "3"))
        # The oracle took those pages as they arrived, before the guest wrote them.
        self.assertGreater(harness.read_oracle(dst["oracle"])["lazy"], 0,
                           "no page was written by the guest while it was being pulled")
        pc = dst["postcopy"]
        self.assertGreater(pc["faults"], 0, "the guest never faulted on a missing page")
        self.assertGreater(pc["pages_on_demand"], 0, "no page was pulled on demand")
        self.assertGreater(pc["blocktime_ms"], 0)
        self.assertGreater(len(pc["threads"]), 0, "no per-thread blocktime")
        self.assertGreater(pc["fault_p99_us"], 0)

    def test_blocks(self):
        self.postcopy_migrate(guest=("--ram-size", "96M", "--blocks", "3", "--dirty-rate", "40",
                                     "--memory", "memfd"),
                              send_args=("--postcopy-after", "1"))

    def test_copy_placement(self):
        """--postcopy-placement copy: pulled pages go through the staging
        buffer and UFFDIO_COPY even where the memfd would allow zero copy."""
        src, dst = self.migrate(guest=("--ram-size", "128M", "--dirty-rate", "100",
                                       "--rezero-percent", "10", "--memory", "memfd"),
                                send_args=LIMITS + ("--postcopy-after", "1"),
                                recv_args=("--postcopy-placement", "copy"), timeout=120)
        self.assert_postcopy(src, dst, zero_copy=False, rezeroed=True)
        self.assertGreater(dst["postcopy"]["faults"], 0, "the guest never faulted")



class Memory(PostcopyCase):
    """Postcopy into RAM that is no memfd: there is no second mapping to
    pull into, so pulled pages are copied in."""

    def test_anonymous_memory(self):
        """The default RAM, anonymous with transparent huge pages as QEMU's:
        no file to map from, so every pulled page is copied in (UFFDIO_COPY),
        and the guest's zeroed pages are dropped with MADV_DONTNEED."""
        src, dst = self.migrate(guest=("--ram-size", "128M", "--dirty-rate", "100",
                                       "--rezero-percent", "10"),
                                send_args=LIMITS + ("--postcopy-after", "1"), timeout=120)
        self.assertEqual((src["guest"]["memory"], dst["guest"]["memory"]), ("anon", "anon"))
        self.assert_postcopy(src, dst, zero_copy=False, rezeroed=True)
        self.assertGreater(dst["postcopy"]["faults"], 0, "the guest never faulted")

    def test_hugetlb(self):
        """RAM in 2 MiB hugetlb pages: dirty tracking, transfer, discard,
        postcopy placement (UFFDIO_COPY of a whole huge page) and
        verification all work in 2 MiB pages.  The last 4 MiB are never
        written and a reader at the destination touches them: hugetlbfs
        has no UFFDIO_ZEROPAGE, so such a fault is served by copying in a
        zero page."""
        harness.need_huge_pages(self, 2 * 32)  # 64 MiB on each side
        guest = ("--ram-size", "64M", "--dirty-rate", "40", "--memory", "hugetlb",
                 "--reader-pages", "1024")
        src, dst = self.migrate(guest=guest, send_args=LIMITS + ("--postcopy-after", "1"),
                                timeout=120)
        self.assertEqual(dst["guest"]["memory"], "hugetlb")
        self.assertEqual(src["pages_total"], 32, "RAM blocks are not in 2 MiB pages")
        self.assert_postcopy(src, dst, zero_copy=False)
        self.assertGreater(dst["postcopy"]["faults_zero"], 0,
                           "no fault on a never-written huge page" + str(dst["postcopy"]))


class Refused(harness.RdmigTestCase):
    def test_destination_without_userfaultfd(self):
        """A destination that cannot catch faults (seccomp, as in a container)
        refuses a source that wants postcopy at the handshake, before the
        source's guest ever stops, and listens on for one that does not."""
        helper = os.environ.get("RDMIG_NO_USERFAULTFD")
        self.assertTrue(helper and os.path.exists(helper), "RDMIG_NO_USERFAULTFD is not set "
                        "(meson test sets it)")
        recv, addr = self.start_recv(guest=GUEST, wrapper=(helper,))
        send = self.start_send(addr, "--postcopy-after", "1", *LIMITS, guest=GUEST)
        src_rc = self.finish(send, 30)
        src = send.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 1, ctx)
        refusal = self.assert_refused_and_listening(recv, ctx)
        for text in (src["error"], refusal):
            self.assertIn("postcopy", text, ctx)
            self.assertIn("userfaultfd", text, ctx)
        self.assertEqual(src["rounds"], 0, "pages were sent before the refusal" + ctx)
        self.assertFalse(src["postcopy"]["active"], ctx)
        self.assert_source_guest_safe(src, ctx)

    def test_precopy_still_works_without_userfaultfd(self):
        """Without --postcopy the same destination migrates as usual."""
        helper = os.environ.get("RDMIG_NO_USERFAULTFD")
        recv, addr = self.start_recv(guest=("--ram-size", "32M"), wrapper=(helper,))
        send = self.start_send(addr, guest=("--ram-size", "32M"))
        src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual((src_rc, dst_rc), (0, 0), ctx)
        self.assert_verified(send.report(), recv.report(), ctx)


RAM = 32 << 20
BLOCKS = [("pc.ram", RAM, 4096)]
NPAGES = RAM // 4096
PC_FEATURES = FEATURE_VERIFY | FEATURE_ZERO_PAGES | FEATURE_POSTCOPY


class BadInput(harness.RdmigTestCase):
    """A hand-made source sends a bad postcopy message: a clear error, and
    nothing is touched (the destination's guest never runs)."""

    def expect_failure(self, msgs, *words, features=PC_FEATURES):
        recv, addr = self.start_recv(guest=("--ram-size", "32M"))
        fake = FakeSource(addr, BLOCKS, supported=features, required=features & FEATURE_POSTCOPY)
        try:
            fake.data_connect()
            for mtype, payload in msgs:
                fake.ctl.send(mtype, payload)
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
        return rep

    def test_discard_out_of_range(self):
        run = struct.pack(">II", 0, 1) + struct.pack(">QI", NPAGES - 1, 2)
        self.expect_failure([(MSG_DISCARD, run)], "DISCARD", "outside", "pc.ram")

    def test_discard_unknown_block(self):
        run = struct.pack(">II", 5, 1) + struct.pack(">QI", 0, 1)
        self.expect_failure([(MSG_DISCARD, run)], "DISCARD", "#5")

    def test_discard_truncated(self):
        run = struct.pack(">II", 0, 3) + struct.pack(">QI", 0, 1)
        self.expect_failure([(MSG_DISCARD, run)], "DISCARD")

    def test_start_without_source_keys(self):
        self.expect_failure([(MSG_POSTCOPY_START, struct.pack(">Q", 0))], "SOURCE_REGIONS")

    def test_source_keys_for_other_layout(self):
        self.expect_failure([(MSG_SOURCE_REGIONS, struct.pack(">I", 0))], "SOURCE_REGIONS")

    def test_postcopy_not_negotiated(self):
        rep = self.expect_failure([(MSG_POSTCOPY_START, struct.pack(">Q", 0))], "not negotiated",
                                  features=FEATURE_VERIFY | FEATURE_ZERO_PAGES)
        self.assertFalse(rep["postcopy"]["active"])


if __name__ == "__main__":
    harness.main()

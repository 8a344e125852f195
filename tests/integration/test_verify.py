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
# round lasts seconds and the test can act in the middle of it.
GUEST = ["--ram-size", "64M"]
SLOW = ["--max-bandwidth", "16"]
EARLY, LATER = 1024, 2048  # pages: the first 4 MiB, and from 8 MiB on


def tamper_midway(test, recv, mem, tamper, timeout=30):
    """Waits until the pages of the first 4 MiB are in (data has arrived
    beyond 8 MiB: one connection fills RAM in page order), then applies
    @tamper to the first page there with contents.  Returns that page."""
    deadline = time.monotonic() + timeout
    while mem.first_nonzero(LATER, 2 * LATER) is None:
        if time.monotonic() > deadline or not recv.alive():
            test.fail("no page arrived at the destination\n" + recv.describe())
        time.sleep(0.02)
    page = mem.first_nonzero(0, EARLY)
    test.assertIsNotNone(page, "no page with contents in the first 4 MiB")
    tamper(mem, page)
    return page


class Tampered(harness.RdmigTestCase):
    def run_tampered(self, tamper, guest=GUEST, send_args=SLOW):
        recv, addr = self.start_recv(guest=guest)
        send = self.start_send(addr, *send_args, guest=guest)
        mem = harness.GuestMemory(recv.pid)
        self.addCleanup(mem.close)
        page = tamper_midway(self, recv, mem, tamper)
        src_rc, dst_rc = self.finish(send, 60), self.finish(recv, 30)
        src, dst = send.report(), recv.report()
        ctx = "\nchanged page %d\n%s\n%s" % (page, send.describe(), recv.describe())
        self.assert_caught(src, dst, src_rc, dst_rc, "pc.ram:%d" % page, ctx)
        return src, dst

    def assert_caught(self, src, dst, src_rc, dst_rc, name, ctx):
        self.assertEqual((src_rc, dst_rc), (1, 1), "a changed page was not a failure" + ctx)
        for r in (src, dst):
            self.assertEqual(r["result"], "failed", "%s result%s" % (r["role"], ctx))
            self.assertEqual(r["error_code"], "verify", "%s error code%s" % (r["role"], ctx))
            self.assertIn(name, r["error"], "%s does not name the page%s" % (r["role"], ctx))
            self.assertEqual(r["verify_mismatches"], 1, "%s counts another number of bad "
                             "pages%s" % (r["role"], ctx))
        self.assertFalse(dst["guest"]["checked"], "the destination ran a guest whose memory "
                         "failed verification" + ctx)
        self.assert_source_guest_safe(src, ctx)

    def test_corrupted_page(self):
        """One byte of one received page inverted."""
        self.run_tampered(lambda mem, page: mem.flip_byte(page))

    def test_page_never_received(self):
        """One received page dropped again: it reads as zero there, as if it
        had never come."""
        self.run_tampered(lambda mem, page: mem.punch(page))


if __name__ == "__main__":
    harness.main()

# SPDX-License-Identifier: MIT
"""Verification seen failing on a real destination: the test changes a page
of the destination guest's memory from outside the process (through its
memfd) after the page arrived and before the switchover, as a memory or
network fault would.  The migration must report that page, by block and
page, on both sides, must not complete, and the source guest must run on."""
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# Idle, so that a page sent once is never sent again; paced, so that the
# round lasts seconds and the test can act in the middle of it.
GUEST = ["--ram-size", "64M"]
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


if __name__ == "__main__":
    harness.main()

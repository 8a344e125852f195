# SPDX-License-Identifier: MIT
"""The rdma suite: the precopy migration over real verbs on soft-RoCE.

Runs inside the VM of tests/rxe/run, where two rxe devices sit on a veth pair:
the destination listens on host B ($RXE_B_IP), the source connects from host A.
Outside such a VM (no RDMA device) every case exits 77, which meson counts as
a skip, after saying why.
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402


def rdma_devices():
    try:
        return sorted(os.listdir("/sys/class/infiniband"))
    except OSError:
        return []


class RdmaCase(harness.RdmigTestCase):
    def setUp(self):
        super().setUp()
        self.host = os.environ.get("RXE_B_IP")
        self.b_netdev = os.environ.get("RXE_B_NETDEV", "rxe-b")

    def start_recv(self, *args, guest=(), name="recv"):
        p = self.spawn("recv", "--listen", "%s:0" % self.host, "--print-address", "--json",
                       "--quiet", "--transport", "rdma", *guest, *args, name=name)
        addr = p.next_line(timeout=30)
        if not addr or ":" not in addr:
            p.wait(5)
            self.fail("recv did not print its address (got %r)\n%s" % (addr, p.describe()))
        return p, addr.strip()

    def rdma_migrate(self, guest, send_args=(), recv_args=()):
        src, dst = self.migrate(guest=guest, send_args=("--transport", "rdma") + tuple(send_args),
                                recv_args=recv_args, timeout=240)
        for r in (src, dst):
            self.assertEqual(r["transport"], "rdma", "%s used %s" % (r["role"], r["transport"]))
        return src, dst


class Migrate(RdmaCase):
    def test_idle(self):
        src, dst = self.rdma_migrate(("--ram-size", "32M"))
        self.assertGreater(src["pages_untouched"], 0)
        self.assertGreater(src["pages_zero"], 0)

    def test_dirtying(self):
        src, _ = self.rdma_migrate(("--ram-size", "32M", "--dirty-rate", "4"))
        self.assertGreaterEqual(src["rounds"], 2)

    def test_connections2(self):
        src, _ = self.rdma_migrate(("--ram-size", "32M", "--dirty-rate", "2"),
                                   send_args=("--connections", "2"))
        self.assertEqual(src["data_connections"], 2)

    def test_auto_picks_rdma(self):
        recv = self.spawn("recv", "--listen", "%s:0" % self.host, "--print-address", "--json",
                          "--quiet", "--ram-size", "16M", name="recv")
        addr = recv.next_line(timeout=30).strip()
        send = self.start_send(addr, guest=("--ram-size", "16M"))
        self.assertEqual(self.finish(send, 120), 0, send.describe())
        self.assertEqual(self.finish(recv, 30), 0, recv.describe())
        src, dst = send.report(), recv.report()
        self.assert_verified(src, dst)
        self.assertEqual(src["transport"], "rdma", "auto must pick the transport that spares "
                         "the destination's CPU when both sides have it")


class Failures(RdmaCase):
    def test_destination_killed(self):
        guest = ("--ram-size", "64M", "--dirty-rate", "2")
        recv, addr = self.start_recv(guest=guest)
        send = self.start_send(addr, "--transport", "rdma", "--max-bandwidth", "4",
                               "--peer-timeout-ms", "3000", guest=guest, quiet=False)
        self.wait_for_stderr(send, "active", 60)
        time.sleep(1)
        recv.kill()
        t0 = time.monotonic()
        rc = self.finish(send, 60)
        took = time.monotonic() - t0
        src = send.report()
        self.assertEqual(rc, 1, send.describe())
        self.assertEqual(src["result"], "failed")
        self.assertLess(took, 45, "the source took %.1f s to notice" % took)
        self.assert_source_guest_safe(src, send.describe())

    def test_link_down(self):
        guest = ("--ram-size", "64M", "--dirty-rate", "2")
        recv, addr = self.start_recv("--peer-timeout-ms", "3000", guest=guest)
        send = self.start_send(addr, "--transport", "rdma", "--max-bandwidth", "4",
                               "--peer-timeout-ms", "3000", guest=guest, quiet=False)
        self.wait_for_stderr(send, "active", 60)
        time.sleep(1)
        subprocess.run(["ip", "link", "set", self.b_netdev, "down"], check=True)
        try:
            t0 = time.monotonic()
            rc = self.finish(send, 90)
            took = time.monotonic() - t0
        finally:
            subprocess.run(["ip", "link", "set", self.b_netdev, "up"], check=False)
        src = send.report()
        self.assertEqual(rc, 1, send.describe())
        self.assertEqual(src["result"], "failed")
        self.assertLess(took, 60, "the source took %.1f s to notice the cut" % took)
        self.assert_source_guest_safe(src, send.describe())
        self.finish(recv, 90)
        self.assertEqual(recv.report().get("result"), "failed", recv.describe())


if __name__ == "__main__":
    if not rdma_devices() or not os.environ.get("RXE_B_IP"):
        print("SKIP: no RDMA device here (%s) or no RXE_B_IP: run this suite through "
              "tests/rxe/run, which boots a VM with soft-RoCE" %
              ("/sys/class/infiniband is empty" if not rdma_devices() else "devices: "
               + " ".join(rdma_devices())))
        sys.exit(77)
    harness.main()

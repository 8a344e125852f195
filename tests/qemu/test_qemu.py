#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QEMU migrates a real VM through rdmig: (qemu/migration/rdmig.c).

    RDMIG_QEMU=/path/qemu-system-x86_64 python3 tests/qemu/test_qemu.py \\
        LIBDIR IDLE_KERNEL DIRTY_KERNEL [Class[.test_name] ...]

Every completed migration is checked three ways: rdmig's own per-page
verification (on in every case), the guest's own check of every page on
every pass after the migration (its heartbeat goes on with "B", never "E"),
and, where the destination is held paused (-S), QEMU's own reading of guest
memory on both sides compared page by page."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
from qemu import QemuVM, QmpError, differing_pages  # noqa: E402

QEMU = None
LIBDIR = IDLE = DIRTY = None
# A multiple of 256 KiB on purpose: 7.2's word-aligned dirty sync, which
# can lose TCG writes unless the TLB is reset after it (rdmig.c does).
RAM = "64M"
RAM_BYTES = 64 << 20


class QemuTestCase(unittest.TestCase):
    maxDiff = None
    # Where the destination listens, and the URI options of both sides;
    # the RDMA variants (OverRdma) change them.
    listen_host = "127.0.0.1"
    uri_opts = ""
    # The dirtying guest rewrites 2 MiB per pass, ~70 MiB/s under TCG here:
    # on loopback 100 ms of downtime covers what is left; soft-RoCE moves
    # tens of MiB/s, so there the limit is longer.
    dirty_downtime_ms = 100

    def setUp(self):
        self.vms = []

    def tearDown(self):
        for vm in self.vms:
            vm.close()

    def vm(self, name, kernel=None, ram=RAM, **kw):
        vm = QemuVM(QEMU, LIBDIR, kernel or DIRTY, ram, name, **kw)
        self.vms.append(vm)
        return vm

    def ctx(self):
        return "\n".join(vm.describe() for vm in self.vms)

    def wait_for(self, what, cond, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = cond()
            except (OSError, RuntimeError) as e:
                self.fail("%s: %s\n%s" % (what, e, self.ctx()))
            if v:
                return v
            time.sleep(0.1)
        self.fail("%s: not within %d s\n%s" % (what, timeout, self.ctx()))

    def wait_beats(self, vm, n, timeout=60):
        """@n more heartbeats from @vm, none of them "E"."""
        start = len(vm.heartbeat())
        self.wait_for("%d heartbeats from %s" % (n, vm.name),
                      lambda: len(vm.heartbeat()) >= start + n, timeout)
        self.assertNotIn("E", vm.heartbeat(), "the guest found a bad page on " + vm.name)

    def wait_status(self, vm, statuses, timeout=120):
        def reached():
            info = vm.migration()  # one query-migrate per poll
            return info if info.get("status") in statuses else None
        return self.wait_for("%s reaching %s" % (vm.name, statuses), reached, timeout)

    def pair(self, kernel=None, paused=True, caps=None, dst_ram=RAM, uri_opts="", net=None):
        """A running source and a destination listening on rdmig: (on the
        other side of @net, a harness.NetPair, if given)."""
        src = self.vm("src", kernel)
        dst = self.vm("dst", kernel, ram=dst_ram, incoming="defer", paused=paused,
                      wrapper=net.wrapper if net else ())
        listen_host = net.addr_there if net else self.listen_host
        for vm in (src, dst):
            vm.set_caps(events=True, **(caps or {}))
        opts = self.uri_opts + uri_opts
        dst.cmd("migrate-incoming", uri="rdmig:%s:0%s" % (listen_host, opts))
        address = dst.listen_address()
        # a manager finds the port it asked to be picked where tcp: puts it
        sa = dst.migration()["socket-address"][0]
        self.assertEqual("%s:%s" % (sa["host"], sa["port"]), address)
        self.uri = "rdmig:" + address + opts
        self.wait_beats(src, 3)
        return src, dst

    def assert_same_memory(self, src, dst):
        a, b = src.dump_memory(RAM_BYTES), dst.dump_memory(RAM_BYTES)
        self.assertEqual(len(a), RAM_BYTES)
        if a != b:
            bad = differing_pages(a, b)
            self.fail("%d pages differ between source and destination, first %s"
                      % (len(bad), ["0x%x" % (p * 4096) for p in bad[:8]]))

    def statuses(self, vm):
        return [e["data"]["status"] for e in vm.qmp.poll_events() if e["event"] == "MIGRATION"]

    def complete_precopy(self, src, dst):
        info = self.wait_status(src, ("completed", "failed", "cancelled"))
        self.assertEqual(info["status"], "completed", self.ctx())
        self.wait_status(dst, ("completed",))
        self.assertEqual(src.status(), "postmigrate")
        return info


class Precopy(QemuTestCase):
    def test_idle(self):
        """an idle guest: both sides completed, the destination paused under
        -S with memory equal to the source's until cont"""
        src, dst = self.pair(IDLE)
        src.cmd("migrate", uri=self.uri)
        info = self.complete_precopy(src, dst)
        for key in ("total-time", "setup-time", "downtime"):
            self.assertIn(key, info)
        self.assertGreater(info["ram"]["transferred"], 0)
        self.assertGreater(info["ram"]["total"], RAM_BYTES - 1)
        self.assertEqual(info["ram"]["remaining"], 0)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 1)
        self.assertEqual(dst.status(), "paused")
        time.sleep(1)  # held: -S keeps the guest paused after completion
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        self.assertEqual(self.statuses(src), ["setup", "active", "device", "completed"])
        self.assertIn("completed", self.statuses(dst))
        dst.cmd("cont")
        self.assertEqual(dst.status(), "running")
        self.wait_beats(dst, 5)

    def test_dirtying(self):
        """a guest rewriting pages: several rounds, memory equal, the guest's
        own check passes on the destination"""
        src, dst = self.pair(DIRTY)
        src.cmd("migrate-set-parameters", downtime_limit=self.dirty_downtime_ms)
        src.cmd("migrate", uri=self.uri)
        info = self.complete_precopy(src, dst)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2, info)
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.wait_beats(dst, 20)
        self.assertNotIn("E", src.heartbeat())


class Postcopy(QemuTestCase):
    # A link slower than memory, as between hosts: on loopback the
    # background sweep fetches every page before the guest runs, and no
    # fault would need a pull.  (Soft-RoCE is slow enough as it is.)
    link_rate = "80mbit"
    # Round 1 long enough for the guest to rewrite every page of its region
    max_bandwidth = 0

    def test_postcopy(self):
        """postcopy while the guest rewrites pages: the destination runs and
        pulls pages it faults on; the guest finds every page right"""
        net = None
        if self.link_rate:
            net = harness.NetPair(rate=self.link_rate)
            self.addCleanup(net.close)
        src, dst = self.pair(DIRTY, paused=False, caps={"postcopy_ram": True}, net=net,
                             uri_opts=",insecure=on" if net else "")
        if self.max_bandwidth:
            src.cmd("migrate-set-parameters", max_bandwidth=self.max_bandwidth)
        src.cmd("migrate", uri=self.uri)
        self.wait_status(src, ("active",))
        src.cmd("migrate-start-postcopy")
        self.wait_status(src, ("postcopy-active", "completed"))
        info = self.wait_status(src, ("completed", "failed"))
        self.assertEqual(info["status"], "completed", self.ctx())
        dinfo = self.wait_status(dst, ("completed",))
        self.assertIn("postcopy-active", self.statuses(src))
        self.assertIn("postcopy-active", self.statuses(dst))
        # The guest ran before its pages arrived and waited for them (a fault
        # on a page the sweep already has in flight waits for that pull, and
        # counts in blocktime, not in postcopy-requests).
        self.assertGreater(dinfo["postcopy-blocktime"], 0, "the guest never waited: %s" % dinfo)
        self.assertGreater(dinfo["ram"]["postcopy-bytes"], 0, "nothing pulled: %s" % dinfo)
        self.assertEqual(dst.status(), "running")
        self.wait_beats(dst, 20)


class Recovery(QemuTestCase):
    def test_link_cut_in_postcopy(self):
        """postcopy over a link that is cut (two network namespaces): both
        sides pause, migrate-recover and migrate resume=true finish it, with
        TLS credentials from QEMU's tls-creds-psk objects"""
        self.recover(cut=True)

    def test_pause_in_postcopy(self):
        """migrate-pause on the source in postcopy: both sides pause, and
        recover as after a cut"""
        self.recover(cut=False)

    # Two network namespaces over a 40 Mbit/s link (on the host), or the
    # VM's two soft-RoCE hosts (OverRdma: pause only, see RdmaRecovery).
    netns = True

    def recover(self, cut):
        net, host, wrapper = None, self.listen_host, ()
        if self.netns:
            net = harness.NetPair(rate="40mbit")
            self.addCleanup(net.close)
            host, wrapper = net.addr_there, net.wrapper
        else:
            self.netem_slow()
        # credentials instead of insecure=on
        opts = self.uri_opts.replace(",insecure=on", "")
        keys = tempfile.mkdtemp(prefix="rdmig-psk-")
        self.addCleanup(shutil.rmtree, keys, True)
        with open(os.path.join(keys, "keys.psk"), "w") as f:
            f.write("qemu:%s\n" % os.urandom(32).hex())
        os.chmod(os.path.join(keys, "keys.psk"), 0o600)
        creds = "tls-creds-psk,id=tls0,dir=%s,endpoint=" % keys
        src = self.vm("src", DIRTY, extra=("-object", creds + "client,username=qemu"))
        dst = self.vm("dst", DIRTY, incoming="defer", wrapper=wrapper,
                      extra=("-object", creds + "server"))
        for vm in (src, dst):
            vm.set_caps(events=True, postcopy_ram=True)
            vm.cmd("migrate-set-parameters", tls_creds="tls0")
        dst.cmd("migrate-incoming", uri="rdmig:%s:0%s" % (host, opts))
        uri = "rdmig:" + dst.listen_address() + opts
        self.wait_beats(src, 3)
        src.cmd("migrate", uri=uri)
        self.wait_status(src, ("active",))
        src.cmd("migrate-start-postcopy")
        self.wait_status(dst, ("postcopy-active",))
        if cut:
            net.down() if net else self.netem_cut()
        else:
            src.cmd("migrate-pause")
        self.wait_status(src, ("postcopy-paused",), 60)
        self.wait_status(dst, ("postcopy-paused",), 60)
        if cut:
            net.up() if net else self.netem_restore()
        dst.cmd("migrate-recover", uri="rdmig:%s:0%s" % (host, opts))
        raddr = dst.listen_address(what="listening for recovery on")
        src.cmd("migrate", uri="rdmig:" + raddr + opts, resume=True)
        info = self.wait_status(src, ("completed", "failed"), 180)
        self.assertEqual(info["status"], "completed", self.ctx())
        self.wait_status(dst, ("completed",))
        for vm in (src, dst):
            self.assertIn("postcopy-recover", self.statuses(vm))
        self.wait_beats(dst, 20)


class Cancel(QemuTestCase):
    def test_cancel(self):
        """migrate_cancel: the source runs on with its memory intact"""
        src, dst = self.pair(DIRTY)
        src.cmd("migrate-set-parameters", max_bandwidth=4 << 20)
        src.cmd("migrate", uri=self.uri)
        self.wait_status(src, ("active",))
        time.sleep(1)
        running = src.migration()  # query-migrate while it runs
        self.assertEqual(running["status"], "active", running)
        for key in ("total-time", "setup-time", "expected-downtime"):
            self.assertIn(key, running)
        self.assertGreater(running["ram"]["transferred"], 0, running)
        self.assertGreater(running["ram"]["remaining"], 0, running)
        src.cmd("migrate_cancel")
        info = self.wait_status(src, ("cancelled",))
        self.assertEqual(src.status(), "running")
        self.wait_beats(src, 10)
        self.assertEqual(self.statuses(src)[-2:], ["cancelling", "cancelled"], info)
        # As with QEMU's own transports, a destination whose incoming
        # migration ends unfinished exits with an error.
        self.assertEqual(dst.wait_exit(60), 1, dst.describe())
        self.assertIn("load of migration failed", dst.stderr())


class Refused(QemuTestCase):
    def test_ram_size_differs(self):
        """a different -m: a clear error on both sides, the source runs on"""
        src, dst = self.pair(DIRTY, dst_ram="72M")
        src.cmd("migrate", uri=self.uri)
        info = self.wait_status(src, ("failed", "completed"))
        self.assertEqual(info["status"], "failed")
        self.assertIn("pc.ram", info.get("error-desc", ""), info)
        self.assertEqual(src.status(), "running")
        self.wait_beats(src, 10)
        self.wait_for("the destination's error", lambda: "pc.ram" in dst.stderr(), 30)

    def test_capabilities(self):
        """capabilities rdmig cannot honour are refused before anything moves"""
        src = self.vm("src", DIRTY)
        for cap in ("xbzrle", "compress", "auto-converge", "release-ram"):
            src.set_caps(**{cap: True})
            with self.assertRaises(QmpError) as cm:
                src.cmd("migrate", uri="rdmig:127.0.0.1:9")
            self.assertIn("capability '%s' is not supported" % cap, cm.exception.desc)
            src.set_caps(**{cap: False})
        self.assertEqual(src.status(), "running")

    def test_bad_uri(self):
        """a malformed rdmig: URI is named"""
        src = self.vm("src", DIRTY)
        for uri, msg in (("rdmig:nowhere", "HOST:PORT"),
                         ("rdmig:127.0.0.1:9,transport=ib", "transport must be auto, tcp or rdma"),
                         ("rdmig:127.0.0.1:9,connections=0", "connections must be 1 to 64"),
                         ("rdmig:127.0.0.1:9,colour=blue", "unknown option 'colour=blue'")):
            with self.assertRaises(QmpError) as cm:
                src.cmd("migrate", uri=uri)
            self.assertIn(msg, cm.exception.desc)
        self.assertEqual(src.status(), "running")


LINUX_INIT = r"""#!/bin/busybox sh
# The Linux test guest: a 48 MiB random file in tmpfs, checked against its
# MD5 sum on every beat, while 4 MiB of other memory is rewritten.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=120m tmpfs /mnt
dd if=/dev/urandom of=/mnt/blob bs=1M count=48 2>/dev/null && md5sum /mnt/blob > /mnt/sum ||
  echo "rdmig-guest-setup BAD"
echo rdmig-guest-ready
n=0
while true; do
  if md5sum -c -s /mnt/sum; then echo "beat $n ok"; else echo "beat $n BAD"; fi
  n=$((n + 1))
  dd if=/dev/urandom of=/mnt/churn bs=1M count=4 2>/dev/null
  sleep 0.2
done
"""


def linux_guest(workdir):
    """Debian's kernel and an initramfs of static busybox running LINUX_INIT."""
    kernels = sorted(k for k in glob.glob("/boot/vmlinuz-*") if os.access(k, os.R_OK))
    busybox = shutil.which("busybox")
    if not kernels or not busybox:
        raise RuntimeError("the Linux guest needs /boot/vmlinuz-* and static busybox "
                           "(scripts/setup.sh installs linux-image-amd64 and busybox-static)")
    root = os.path.join(workdir, "root")
    os.makedirs(os.path.join(root, "bin"))
    for d in ("proc", "mnt", "dev"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(LINUX_INIT)
    os.chmod(os.path.join(root, "init"), 0o755)
    initrd = os.path.join(workdir, "initrd.cpio")
    with open(initrd, "wb") as out:
        files = subprocess.run(["find", "."], cwd=root, check=True,
                               stdout=subprocess.PIPE).stdout
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                       stdout=out, check=True)
    return kernels[-1], initrd


class LinuxGuest(QemuTestCase):
    def test_linux(self):
        """a Linux guest (Debian's kernel, busybox) migrates and keeps running,
        its own checksum of 48 MiB of tmpfs intact"""
        work = tempfile.mkdtemp(prefix="rdmig-linux-")
        self.addCleanup(shutil.rmtree, work, True)
        kernel, initrd = linux_guest(work)
        extra = ("-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet")
        ram, ram_bytes = "256M", 256 << 20
        src = self.vm("src", kernel, ram=ram, extra=extra)
        dst = self.vm("dst", kernel, ram=ram, extra=extra, incoming="defer", paused=True)
        for vm in (src, dst):
            vm.set_caps(events=True)
        dst.cmd("migrate-incoming", uri="rdmig:127.0.0.1:0")
        uri = "rdmig:" + dst.listen_address()
        self.wait_for("the Linux guest's first beats",
                      lambda: "beat 2 ok" in src.heartbeat() or "BAD" in src.heartbeat(), 240)
        self.assertNotIn("BAD", src.heartbeat())
        src.cmd("migrate", uri=uri)
        self.complete_precopy(src, dst)
        self.assertEqual(dst.status(), "paused")
        a, b = src.dump_memory(ram_bytes), dst.dump_memory(ram_bytes)
        bad = differing_pages(a, b) if a != b else []
        self.assertEqual(bad[:8], [], "%d pages differ" % len(bad))
        beats = src.heartbeat().count("ok")
        dst.cmd("cont")
        self.wait_for("5 more beats on the destination",
                      lambda: dst.heartbeat().count("ok") >= beats + 5, 120)
        self.assertNotIn("BAD", dst.heartbeat())
        self.assertNotIn("Kernel panic", dst.heartbeat())


class OverRdma:
    """The same cases over RDMA, inside the soft-RoCE VM (tests/rxe/run):
    the destination on host B's address, the data transport forced to RDMA
    (a migration that completes moved its pages by RDMA).  insecure=on: the
    VM's addresses are not loopback, and credentials are the Recovery
    case's subject."""
    listen_host = os.environ.get("RXE_B_IP", "")
    uri_opts = ",transport=rdma,insecure=on"
    dirty_downtime_ms = 3000


class RdmaPrecopy(OverRdma, Precopy):
    pass


class RdmaPostcopy(OverRdma, Postcopy):
    link_rate = None
    max_bandwidth = 2 << 20


class RdmaCancel(OverRdma, Cancel):
    pass


class RdmaRefused(OverRdma, Refused):
    pass


class RdmaRecovery(OverRdma, Recovery):
    """Over RDMA between the VM's two hosts.  The cut drops every packet
    with netem and keeps the link up: after `ip link set down` rxe 6.1 makes
    no new rdma_cm connection (tests/rdma/test_rdma.py, cut())."""
    netns = False
    devs = (os.environ.get("RXE_A_NETDEV", "rxe-a"), os.environ.get("RXE_B_NETDEV", "rxe-b"))

    # 40 Mbit/s, as the namespaces' link on the host, so that postcopy
    # lasts long enough to be paused or cut; a queue deep enough that RC
    # never loses a packet to it (tests/rdma/test_rdma.py, restore()).
    slow = ["netem", "rate", "40mbit", "limit", "20000"]

    def netem(self, *qdisc):
        for dev in self.devs:
            subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", *qdisc], check=True)

    def netem_slow(self):
        self.netem(*self.slow)
        for dev in self.devs:
            self.addCleanup(subprocess.run, ["tc", "qdisc", "del", "dev", dev, "root"],
                            check=False, stderr=subprocess.DEVNULL)

    def netem_cut(self):
        self.netem("netem", "loss", "100%")

    def netem_restore(self):
        self.netem(*self.slow)


def rdma_devices():
    try:
        return sorted(os.listdir("/sys/class/infiniband"))
    except FileNotFoundError:
        return []


def main():
    global QEMU, LIBDIR, IDLE, DIRTY
    args = sys.argv[1:]
    if len(args) < 3:
        sys.stderr.write(__doc__)
        sys.exit(2)
    LIBDIR, IDLE, DIRTY = (os.path.abspath(a) for a in args[:3])
    QEMU = os.environ.get("RDMIG_QEMU")
    if not QEMU:
        harness.skip_all("RDMIG_QEMU is not set: scripts/build-qemu.sh builds QEMU with the "
                         "rdmig: transport and prints its path (scripts/test.sh does both)")
    if any(a.startswith("Rdma") for a in args[3:]) and not (rdma_devices() and
                                                           os.environ.get("RXE_B_IP")):
        harness.skip_all("no RDMA device here (%s) or no RXE_B_IP: run the rdma suite "
                         "through tests/rxe/run" % ("/sys/class/infiniband is empty"
                                                    if not rdma_devices() else "RXE_B_IP unset"))
    sys.exit(harness.run_tap(args[3:]))


if __name__ == "__main__":
    main()

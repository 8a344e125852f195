# SPDX-License-Identifier: MIT
"""Real QEMU processes with the rdmig: transport, driven over QMP, for the
QEMU suite (tests/qemu/test_qemu.py).  Standard library only.

QEMU is the one scripts/build-qemu.sh builds (environment RDMIG_QEMU); it
loads librdmig.so from the build under test (LD_LIBRARY_PATH).  The guest is
tests/qemu/guest/heartbeat.s: "B" on the serial port for every pass over its
memory that found every page as it left it, "E" for one that did not."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

PAGE = 4096


class QmpError(Exception):
    def __init__(self, cmd, error):
        super().__init__("%s: %s: %s" % (cmd, error.get("class"), error.get("desc")))
        self.desc = error.get("desc", "")


class Qmp:
    """One QMP connection: commands in order, events kept as they come."""

    def __init__(self, path, proc, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("QEMU's QMP socket %s never opened (exit %s)"
                                       % (path, proc.poll()))
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self._read(timeout)  # greeting
        self.cmd("qmp_capabilities")

    def _read(self, timeout):
        self.sock.settimeout(timeout)
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, timeout=60, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = {k.replace("_", "-"): v for k, v in args.items()}
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            r = self._read(timeout)
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QmpError(name, r["error"])
            return r.get("return")

    def poll_events(self):
        """Every event so far: a command's round trip collects those that
        QEMU sent before its answer."""
        self.cmd("query-name")
        return self.events

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class QemuVM:
    """qemu-system-x86_64 with the heartbeat guest, TCG, no devices but COM1."""

    def __init__(self, qemu, libdir, kernel, ram, name, incoming=None, paused=False,
                 wrapper=(), extra=()):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="rdmig-qemu-%s-" % name)
        os.chmod(self.dir, 0o755)
        self.serial = os.path.join(self.dir, "serial.log")
        self.errpath = os.path.join(self.dir, "stderr.log")
        qmp = os.path.join(self.dir, "qmp.sock")
        cmd = [*wrapper, qemu, "-name", name, "-nodefaults", "-no-user-config",
               "-display", "none", "-machine", "pc", "-accel", "tcg", "-m", ram,
               "-kernel", kernel, "-serial", "file:" + self.serial,
               "-qmp", "unix:%s,server=on,wait=off" % qmp, *extra]
        if incoming:
            cmd += ["-incoming", incoming]
        if paused:
            cmd += ["-S"]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = libdir
        self.cmdline = " ".join(cmd)
        self.err = open(self.errpath, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.err,
                                     stderr=self.err, env=env)
        try:
            self.qmp = Qmp(qmp, self.proc)
        except Exception:
            self.close()
            raise

    def cmd(self, name, **args):
        return self.qmp.cmd(name, **args)

    def stderr(self):
        with open(self.errpath, "rb") as f:
            return f.read().decode(errors="replace")

    def heartbeat(self):
        """The serial output: one "B" or "E" per pass over guest memory."""
        try:
            with open(self.serial, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self):
        return self.cmd("query-status")["status"]

    def migration(self):
        return self.cmd("query-migrate")

    def set_caps(self, **caps):
        self.cmd("migrate-set-capabilities",
                 capabilities=[{"capability": k.replace("_", "-"), "state": v}
                               for k, v in caps.items()])

    def listen_address(self, timeout=30, what="listening on"):
        """The address the rdmig: destination listens on (it logs it; for
        migrate-recover @what is "listening for recovery on")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"rdmig: %s (\S+)" % what, self.stderr())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("%s never said where it listens:\n%s" % (self.name, self.stderr()))

    def dump_memory(self, size):
        """Guest-physical memory 0..size, as QEMU reads it (pmemsave)."""
        path = os.path.join(self.dir, "mem.bin")
        self.cmd("pmemsave", val=0, size=size, filename=path)
        with open(path, "rb") as f:
            data = f.read()
        os.unlink(path)
        return data

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def describe(self):
        return "%s: %s\n  exit %s\n  stderr:\n%s\n  serial (last 200): %s" % (
            self.name, self.cmdline, self.proc.poll(), self.stderr()[-3000:],
            self.heartbeat()[-200:])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.cmd("quit")
            except Exception:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "qmp"):
            self.qmp.close()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def differing_pages(a, b):
    """Indexes of the 4 KiB pages where two memory dumps differ."""
    n = max(len(a), len(b)) // PAGE
    return [i for i in range(n) if a[i * PAGE:(i + 1) * PAGE] != b[i * PAGE:(i + 1) * PAGE]]

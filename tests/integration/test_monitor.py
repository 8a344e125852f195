# SPDX-License-Identifier: MIT
"""Who may use a running send's or recv's monitor socket.  The monitor can
cancel a migration, and `recover` can point a paused source at any address,
which would hand that address all of guest memory: only the process's own
user and root may talk to it.  The default socket lives in a private
directory ($XDG_RUNTIME_DIR/rdmig or /run/rdmig, mode 0700) with mode 0600;
the server checks every client's uid (SO_PEERCRED) as well; an existing file
at the path is a clear error (never removed: it may be another process's
monitor), and then no migration starts, unless it is a socket of the same
user that nobody listens on (a killed process's, met again when a pid is
reused), which is replaced."""
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

GUEST = ["--ram-size", "4M"]
NOBODY = 65534


class Monitor(harness.RdmigTestCase):
    def private_runtime_dir(self):
        d = tempfile.mkdtemp(prefix="rdmig-xdg-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def start_listening_recv(self, *args, env=None):
        """recv on 127.0.0.1:0, not quiet; returns (proc, monitor path)."""
        p = self.spawn("recv", "--listen", "127.0.0.1:0", "--print-address", *GUEST, *args,
                       env=env)
        addr = p.next_line(timeout=15)
        if not addr or ":" not in addr:
            p.wait(5)
            self.fail("recv did not print its address (got %r)\n%s" % (addr, p.describe()))
        m = re.search(r"monitor on (\S+)", p.stderr())
        self.assertIsNotNone(m, "recv did not say where its monitor is\n" + p.describe())
        self.addCleanup(self.cancel_quietly, m.group(1))
        return p, m.group(1)

    def cancel_quietly(self, path):
        try:
            harness.monitor(path, "cancel", timeout=2)
        except (OSError, ValueError):
            pass

    def assert_private(self, path, p):
        ctx = "\n" + p.describe()
        d = os.lstat(os.path.dirname(path))
        self.assertTrue(stat.S_ISDIR(d.st_mode), ctx)
        self.assertEqual(stat.S_IMODE(d.st_mode), 0o700, "directory mode" + ctx)
        self.assertEqual(d.st_uid, os.geteuid(), ctx)
        s = os.lstat(path)
        self.assertTrue(stat.S_ISSOCK(s.st_mode), ctx)
        self.assertEqual(stat.S_IMODE(s.st_mode), 0o600, "socket mode" + ctx)
        self.assertEqual(harness.monitor_status(path)["state"], "setup", ctx)

    def test_default_in_xdg_runtime_dir(self):
        xdg = self.private_runtime_dir()
        p, path = self.start_listening_recv(env={"XDG_RUNTIME_DIR": xdg})
        self.assertEqual(path, os.path.join(xdg, "rdmig", "%d.sock" % p.pid), p.describe())
        self.assert_private(path, p)
        harness.monitor(path, "cancel")
        self.assertEqual(self.finish(p, 15), 3, p.describe())
        self.assertFalse(os.path.exists(path), "the socket outlived its process")

    def test_default_in_run(self):
        if os.geteuid() != 0:
            self.skipTest("/run/rdmig is for root; this user (uid %d) gets "
                          "$XDG_RUNTIME_DIR/rdmig, tested above" % os.geteuid())
        p, path = self.start_listening_recv(env={"XDG_RUNTIME_DIR": ""})
        self.assertEqual(path, "/run/rdmig/%d.sock" % p.pid, p.describe())
        self.assert_private(path, p)

    def test_directory_not_private(self):
        xdg = self.private_runtime_dir()
        os.mkdir(os.path.join(xdg, "rdmig"), 0o755)
        os.chmod(os.path.join(xdg, "rdmig"), 0o755)
        for cmd in (["recv", "--listen", "127.0.0.1:0"], ["send", "--to", "127.0.0.1:9"]):
            p = self.spawn(*cmd, *GUEST, env={"XDG_RUNTIME_DIR": xdg})
            rc = self.finish(p, 15)
            ctx = "\n" + p.describe()
            self.assertEqual(rc, 2, ctx)
            self.assertIn("is not private", p.stderr(), ctx)
            self.assertIn("0755", p.stderr(), ctx)
            self.assertNotIn("listening on", p.stderr(), ctx)
            self.assertNotIn("connect", p.stderr().lower(), "a migration began" + ctx)

    def test_existing_file_kept(self):
        d = self.private_runtime_dir()
        path = os.path.join(d, "mon.sock")
        with open(path, "w") as f:
            f.write("someone else's\n")
        p = self.spawn("recv", "--listen", "127.0.0.1:0", "--monitor", path, *GUEST)
        rc = self.finish(p, 15)
        ctx = "\n" + p.describe()
        self.assertEqual(rc, 2, ctx)
        self.assertIn("already exists", p.stderr(), ctx)
        self.assertNotIn("listening on", p.stderr(), ctx)
        with open(path) as f:
            self.assertEqual(f.read(), "someone else's\n", "the file was touched" + ctx)

    def test_stale_socket_replaced(self):
        """A socket nobody listens on, left by a process that was killed (as
        a new process with a reused pid would meet it), is replaced."""
        d = self.private_runtime_dir()
        path = os.path.join(d, "mon.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()  # the file stays, with no listener behind it
        p, got = self.start_listening_recv("--monitor", path)
        self.assertEqual(got, path, p.describe())
        self.assertEqual(harness.monitor_status(path)["state"], "setup", p.describe())

    def test_second_process_on_a_live_monitor(self):
        d = self.private_runtime_dir()
        path = os.path.join(d, "mon.sock")
        first, _ = self.start_listening_recv("--monitor", path)
        second = self.spawn("send", "--to", "127.0.0.1:9", "--monitor", path, *GUEST)
        rc = self.finish(second, 15)
        ctx = "\n" + second.describe()
        self.assertEqual(rc, 2, ctx)
        self.assertIn("already exists", second.stderr(), ctx)
        # The first keeps its monitor.
        self.assertEqual(harness.monitor_status(path)["state"], "setup", first.describe())

    def other_user_request(self, path):
        """Sends a status request to @path as uid 65534; returns the reply
        line, or "connect: REASON" when it could not connect."""
        code = ("import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n"
                "    s.connect(sys.argv[1])\n"
                "except OSError as e:\n"
                "    print('connect: %s' % e.strerror); sys.exit(0)\n"
                "try:\n"
                "    s.sendall(b'{\"execute\": \"status\"}\\n')\n"
                "except OSError:\n"
                "    pass  # refused before the request was read: the reply says why\n"
                "s.settimeout(10)\n"
                "data = b''\n"
                "while not data.endswith(b'\\n'):\n"
                "    b = s.recv(4096)\n"
                "    if not b: break\n"
                "    data += b\n"
                "print(data.decode().strip())\n")
        # The system python: a user-local one may be out of the other user's reach.
        r = subprocess.run(["/usr/bin/python3", "-c", code, path], user=NOBODY, group=NOBODY,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.strip()

    def test_other_user_refused(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to run a client as another user (uid %d here)"
                          % os.geteuid())
        d = self.private_runtime_dir()
        os.chmod(d, 0o755)  # a shared directory, as --monitor may name
        path = os.path.join(d, "mon.sock")
        p, _ = self.start_listening_recv("--monitor", path)
        # The socket's mode keeps the stranger out...
        out = self.other_user_request(path)
        self.assertEqual(out, "connect: Permission denied", p.describe())
        # ...and where the mode does not (changed by someone), the uid check does.
        os.chmod(path, 0o666)
        out = self.other_user_request(path)
        ctx = "\nclient got: %s\n%s" % (out, p.describe())
        reply = json.loads(out)
        self.assertNotIn("return", reply, ctx)
        self.assertEqual(reply["error"]["class"], "auth", ctx)
        self.assertIn("permission denied", reply["error"]["desc"], ctx)
        self.assertIn("uid %d" % NOBODY, p.stderr(), "the refusal was not logged" + ctx)
        # The owner is still served.
        self.assertEqual(harness.monitor_status(path)["state"], "setup", ctx)


if __name__ == "__main__":
    harness.main()

# SPDX-License-Identifier: MIT
"""Authenticated migrations (TLS 1.3 on the control channel, docs/security.md),
with real rdmig processes: a pre-shared key made by psktool and x509
certificates made by certtool (tests/helpers/make-certs.sh), as an operator
makes them for QEMU.  Every migration that completes is checked page by page
against the guest's own record.

  * PSK and x509 migrations complete, several data connections each (their
    tokens derived from the TLS session, never sent);
  * strangers at a destination with credentials (an rdmig source without
    any, a wrong key, an unknown identity, certificates of another CA,
    a silent connection) are each dropped, each told why where it speaks
    rdmig, and the real source then migrates;
  * a source with credentials at a destination without: a clear error;
  * credentials make a non-loopback address allowed without --insecure;
  * files that are missing or malformed, and both kinds at once: refused
    before anything listens or connects;
  * postcopy recovery over a link cut between two network namespaces, with
    credentials: the source proves the session on the new link.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import test_recovery  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MAKE_CERTS = os.path.join(HERE, "..", "helpers", "make-certs.sh")
GUEST = ["--ram-size", "64M", "--dirty-rate", "20"]


def psktool(path, user="qemu"):
    """A keys.psk as QEMU's docs make it (psktool from gnutls-bin)."""
    subprocess.run(["psktool", "-u", user, "-p", path], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    os.chmod(path, 0o600)
    return path


def make_certs(path, *hosts):
    subprocess.run([MAKE_CERTS, path, *hosts], check=True)
    return path


class Credentials(harness.RdmigTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="rdmig-tls-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def assert_secured(self, src, dst, kind):
        for r in (src, dst):
            self.assertTrue(r["control_security"].startswith(kind + " (TLS1.3)"),
                            "%s: %r" % (r["role"], r["control_security"]))


class Migrate(Credentials):
    def test_psk(self):
        """A pre-shared key on both ends: authenticated, encrypted control, two
        data connections whose token both ends derived."""
        key = ["--psk-file", psktool(self.path("keys.psk"))]
        src, dst = self.migrate(guest=GUEST, send_args=key + ["--connections", "2"],
                                recv_args=key)
        self.assert_secured(src, dst, "psk")
        self.assertEqual(src["data_connections"], 2)
        self.assertGreaterEqual(src["rounds"], 2)

    def test_x509(self):
        """Certificates of one CA in QEMU's directory layout; the source checks
        that the destination's certificate names 127.0.0.1."""
        creds = ["--tls-creds", make_certs(self.path("pki"))]
        src, dst = self.migrate(guest=GUEST, send_args=creds + ["--connections", "2"],
                                recv_args=creds)
        self.assert_secured(src, dst, "x509")

    def test_non_loopback_allowed_with_credentials(self):
        """0.0.0.0 is refused without credentials (test_cli); with them it is
        allowed, without --insecure."""
        key = psktool(self.path("keys.psk"))
        recv = self.spawn("recv", "--listen", "0.0.0.0:0", "--print-address", "--json",
                          "--quiet", "--psk-file", key, *GUEST, auto_insecure=False)
        addr = recv.next_line(timeout=15)
        self.assertTrue(addr and addr.startswith("0.0.0.0:"), recv.describe())
        port = addr.strip().rsplit(":", 1)[1]
        send = self.start_send("127.0.0.1:" + port, "--psk-file", key, guest=GUEST)
        self.assertEqual(self.finish(send, 60), 0, send.describe())
        self.assertEqual(self.finish(recv, 30), 0, recv.describe())
        self.assert_verified(send.report(), recv.report())


class Strangers(Credentials):
    def test_psk_strangers_then_source(self):
        """Each stranger is dropped alone, the listener keeps listening, and the
        real source migrates afterwards."""
        key = psktool(self.path("keys.psk"))
        other = psktool(self.path("other.psk"))           # same identity, another key
        unknown = psktool(self.path("unknown.psk"), "eve")  # an identity not in the file
        recv, addr = self.start_recv("--psk-file", key, guest=GUEST)
        idle = socket.create_connection(harness.split_address(addr))  # says nothing
        try:
            cases = [([], "takes only authenticated sources"),
                     (["--psk-file", other], "credentials do not match"),
                     (["--psk-file", unknown], "credentials do not match")]
            for args, words in cases:
                s = self.start_send(addr, *args, guest=GUEST, name="stranger %r" % args)
                rc = self.finish(s, 30)
                self.assertNotEqual(rc, 0, s.describe())
                self.assertIn(words, s.stderr() + s.stdout(), s.describe())
                self.assertTrue(recv.alive(), "a stranger ended the destination\n" +
                                recv.describe())
            send = self.start_send(addr, "--psk-file", key, guest=GUEST)
            both = lambda: "\n%s\n%s" % (send.describe(), recv.describe())  # noqa: E731
            self.assertEqual(self.finish(send, 60, both), 0, both())
            self.assertEqual(self.finish(recv, 30, both), 0, both())
        finally:
            idle.close()
        self.assert_verified(send.report(), recv.report())
        err = recv.stderr()
        self.assertIn("takes only authenticated sources", err)
        self.assertIn("PSK identity 'eve'", err)
        self.assertGreaterEqual(err.count("credentials do not match"), 2, err)

    def test_x509_strangers_then_source(self):
        """Certificates of another CA, and a source whose own certificate comes
        from another CA, are refused; the real source migrates."""
        pki = make_certs(self.path("pki"))
        other = make_certs(self.path("other"))
        mixed = self.path("mixed")
        os.mkdir(mixed)
        shutil.copy(os.path.join(pki, "ca-cert.pem"), mixed)
        for f in ("client-cert.pem", "client-key.pem"):
            shutil.copy(os.path.join(other, f), mixed)
        recv, addr = self.start_recv("--tls-creds", pki, guest=GUEST)
        for creds, words in ((other, "issuer is unknown"), (mixed, "")):
            s = self.start_send(addr, "--tls-creds", creds, guest=GUEST,
                                name="stranger " + os.path.basename(creds))
            self.assertNotEqual(self.finish(s, 30), 0, s.describe())
            self.assertIn(words, s.stderr() + s.stdout(), s.describe())
            self.assertTrue(recv.alive(), recv.describe())
        send = self.start_send(addr, "--tls-creds", pki, guest=GUEST)
        both = lambda: "\n%s\n%s" % (send.describe(), recv.describe())  # noqa: E731
        self.assertEqual(self.finish(send, 60, both), 0, both())
        self.assertEqual(self.finish(recv, 30, both), 0, both())
        self.assert_verified(send.report(), recv.report())
        self.assertIn("Certificate is required", recv.stderr())

    def test_wrong_host_name(self):
        """The destination's certificate must name the host the source dialled:
        127.0.0.2 is loopback here, but not in the certificate."""
        pki = make_certs(self.path("pki"))
        recv = self.spawn("recv", "--listen", "127.0.0.2:0", "--print-address", "--json",
                          "--quiet", "--tls-creds", pki, *GUEST)
        addr = recv.next_line(timeout=15).strip()
        s = self.start_send(addr, "--tls-creds", pki, guest=GUEST)
        self.assertNotEqual(self.finish(s, 30), 0, s.describe())
        self.assertIn("does not match", s.stderr() + s.stdout(), s.describe())
        self.assertTrue(recv.alive(), recv.describe())
        recv.kill()

    def test_source_with_credentials_destination_without(self):
        recv, addr = self.start_recv(guest=GUEST)
        s = self.start_send(addr, "--psk-file", psktool(self.path("keys.psk")), guest=GUEST)
        self.assertNotEqual(self.finish(s, 30), 0, s.describe())
        self.assertIn("may have no credentials", s.stderr() + s.stdout(), s.describe())
        self.assertTrue(recv.alive(), recv.describe())
        self.assertIn("a TLS client, and this destination has no credentials", recv.stderr())
        recv.kill()


class BadFiles(Credentials):
    def refused(self, role, args, words):
        addr = ["--listen", "127.0.0.1:0"] if role == "recv" else ["--to", "127.0.0.1:9"]
        p = self.spawn(role, *addr, "--ram-size", "16M", *args, oracle=False)
        rc = self.finish(p, 15)
        self.assertNotEqual(rc, 0, p.describe())
        self.assertIn(words, p.stderr(), p.describe())

    def test_bad_files(self):
        bad = self.path("bad.psk")
        with open(bad, "w") as f:
            f.write("qemu:00112233445566778899aabbccddeeff\nnot a key line\n")
        short = self.path("short.psk")
        with open(short, "w") as f:
            f.write("qemu:0011\n")
        half = self.path("half")
        os.mkdir(half)
        open(os.path.join(half, "ca-cert.pem"), "w").close()
        for role in ("recv", "send"):
            self.refused(role, ["--psk-file", self.path("none.psk")], "none.psk does not exist")
            self.refused(role, ["--psk-file", bad], "bad.psk line 2")
            self.refused(role, ["--psk-file", short], "too short")
            self.refused(role, ["--tls-creds", self.path("nodir")], "is not a directory")
            who = "server" if role == "recv" else "client"
            self.refused(role, ["--tls-creds", half], "%s-cert.pem does not exist" % who)
            self.refused(role, ["--psk-file", bad, "--tls-creds", half], "not both")


class RecoveryWithCredentials(test_recovery.Recovery):
    """Postcopy recovery between two network namespaces with a pre-shared
    key: no --insecure anywhere; the recovered link is a new TLS session in
    which the source proves the session (an HMAC, docs/security.md)."""

    def test_link_down_in_postcopy(self):
        tmp = tempfile.mkdtemp(prefix="rdmig-tls-")
        self.addCleanup(shutil.rmtree, tmp, True)
        key = psktool(os.path.join(tmp, "keys.psk"))
        self.start(extra_both=["--psk-file", key])
        self.cut()
        self.net.up()
        self.recover()
        src, dst = self.finish_both()
        for r in (src, dst):
            self.assertEqual(r["recovery"]["pauses"], 1, self.ctx())
            self.assertTrue(r["control_security"].startswith("psk (TLS1.3)"), self.ctx())
        for p in (self.send, self.recv):
            self.assertNotIn("--insecure", p.args, "credentials should make it unneeded")


if __name__ == "__main__":
    harness.main()

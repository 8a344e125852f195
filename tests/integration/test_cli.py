# SPDX-License-Identifier: MIT
"""Case 11: command-line errors.  Exit status 2 is for what the user typed
wrong (the command line alone shows it cannot work: a malformed address, a
bad size, an unknown option), 1 for what went wrong at run time with a
well-formed command (a host that does not resolve, a refused connection, a
port another process holds).  Either way: one clear message on stderr, no
crash, and within seconds."""
import os
import signal
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SMALL = ["--ram-size", "32M", "--quiet"]


class CliCase(harness.RdmigTestCase):
    def run_cli(self, args, want_rc, *words, timeout=30):
        p = self.spawn(*args, name="rdmig " + " ".join(args), auto_insecure=False)
        rc = self.finish(p, timeout)
        err = p.stderr()
        ctx = "\n" + p.describe()
        self.assertEqual(rc, want_rc, "exit status of: rdmig %s" % " ".join(args) + ctx)
        self.assertTrue(err.strip(), "no message on stderr" + ctx)
        for w in words:
            self.assertIn(w.lower(), err.lower(), "stderr does not mention %r" % w + ctx)
        return p


class Address(CliCase):
    def test_unresolvable_host(self):
        p = self.run_cli(["send", "--to", "nohost:1", "--json", *SMALL], 1, "nohost", "resolve")
        # A source that never connected still reports, and its guest is untouched.
        self.assertEqual(p.report()["result"], "failed")
        self.assert_source_guest_safe(p.report())

    def test_refused(self):
        p = self.run_cli(["send", "--to", "127.0.0.1:1", "--json", *SMALL], 1, "127.0.0.1:1", "refused")
        self.assertEqual(p.report()["result"], "failed")
        self.assertEqual(p.report()["error_code"], "connect")

    def test_send_missing_port(self):
        self.run_cli(["send", "--to", "127.0.0.1", *SMALL], 2, "127.0.0.1", "HOST:PORT")

    def test_send_port_out_of_range(self):
        self.run_cli(["send", "--to", "127.0.0.1:99999", *SMALL], 2, "99999", "port")

    def test_send_port_zero(self):
        self.run_cli(["send", "--to", "127.0.0.1:0", *SMALL], 2, "port")

    def test_send_empty_address(self):
        self.run_cli(["send", "--to", "", *SMALL], 2, "address")

    def test_recv_missing_port(self):
        self.run_cli(["recv", "--listen", "127.0.0.1", *SMALL], 2, "127.0.0.1", "HOST:PORT")

    def test_recv_port_out_of_range(self):
        self.run_cli(["recv", "--listen", "127.0.0.1:99999", *SMALL], 2, "99999", "port")

    def test_recv_unresolvable_host(self):
        self.run_cli(["recv", "--listen", "nohost:0", *SMALL], 1, "nohost", "resolve")

    def test_port_in_use(self):
        first, addr = self.start_recv(guest=["--ram-size", "32M"])
        self.run_cli(["recv", "--listen", addr, *SMALL], 1, "in use", addr)
        self.assertTrue(first.alive(), "the first recv died\n" + first.describe())


class NotLoopback(CliCase):
    """Without credentials, an address other than loopback only with
    --insecure, refused before anything listens or connects (with
    credentials: test_tls)."""

    def test_recv_any_address_refused(self):
        self.run_cli(["recv", "--listen", "0.0.0.0:0", *SMALL], 2, "refusing to listen on 0.0.0.0:0",
                     "without credentials", "--psk-file", "--insecure")

    def test_send_refused(self):
        # 0.0.0.0 reaches this host, were it ever connected to.
        p = self.run_cli(["send", "--to", "0.0.0.0:9", *SMALL], 2, "refusing to connect to",
                         "--insecure")
        self.assertNotIn("refused", p.stderr().replace("refusing", ""), p.describe())

    def test_insecure_listens(self):
        p = self.spawn("recv", "--listen", "0.0.0.0:0", "--insecure", "--print-address",
                       *SMALL)
        addr = p.next_line(timeout=15)
        ctx = "\n" + p.describe()
        self.assertTrue(addr and addr.startswith("0.0.0.0:"), ctx)
        p.signal(signal.SIGINT)
        self.assertEqual(self.finish(p, 15), 3, ctx)

    def test_loopback_needs_nothing(self):
        for address in ("127.0.0.1:0", "127.8.9.10:0", "[::1]:0"):
            p = self.spawn("recv", "--listen", address, "--print-address", *SMALL)
            got = p.next_line(timeout=15)
            ctx = "\n" + p.describe()
            self.assertTrue(got and ":" in got, ctx)
            p.signal(signal.SIGINT)
            self.assertEqual(self.finish(p, 15), 3, ctx)


class Sizes(CliCase):
    def test_ram_size_not_a_number(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--ram-size", "abc"], 2, "--ram-size", "abc")

    def test_ram_size_zero(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--ram-size", "0"], 2, "--ram-size")

    def test_ram_size_not_page_multiple(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--ram-size", "1000"], 2, "--ram-size")

    def test_ram_size_negative(self):
        self.run_cli(["recv", "--listen", "127.0.0.1:0", "--ram-size", "-64M"], 2, "--ram-size")

    def test_ram_size_bad_unit(self):
        self.run_cli(["recv", "--listen", "127.0.0.1:0", "--ram-size", "64Q"], 2, "--ram-size")

    def test_blocks_do_not_divide(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--ram-size", "32M", "--blocks", "3"], 2,
                     "--blocks")

    def test_blocks_zero(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--ram-size", "32M", "--blocks", "0"], 2,
                     "--blocks")


class Usage(CliCase):
    def test_unknown_option(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--frobnicate"], 2, "--frobnicate")

    def test_unknown_command(self):
        self.run_cli(["frob"], 2, "frob", "recv")

    def test_no_command(self):
        self.run_cli([], 2, "recv", "send", "demo")

    def test_extra_argument(self):
        self.run_cli(["send", "extra", "--to", "127.0.0.1:1"], 2, "extra")

    def test_send_without_to(self):
        self.run_cli(["send", *SMALL], 2, "--to")

    def test_recv_without_listen(self):
        self.run_cli(["recv", *SMALL], 2, "--listen")

    def test_demo_with_address(self):
        self.run_cli(["demo", "--to", "127.0.0.1:1", *SMALL], 2, "demo")

    def test_option_not_a_number(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--connections", "many"], 2, "connections")

    def test_connections_zero(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--connections", "0", *SMALL], 2,
                     "connections")

    def test_connections_too_many(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--connections", "17", *SMALL], 2,
                     "connections", "16")

    def test_on_no_converge(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--on-no-converge", "maybe", *SMALL], 2,
                     "maybe")

    def test_pattern(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--pattern", "spiral", *SMALL], 2, "spiral")

    def test_memory(self):
        self.run_cli(["recv", "--listen", "127.0.0.1:0", "--memory", "huge", *SMALL], 2, "huge")
        # Zero copy maps through a memfd: asked for on other memory, refused.
        self.run_cli(["recv", "--listen", "127.0.0.1:0", "--postcopy-placement", "continue",
                      *SMALL], 2, "--memory memfd")
        self.run_cli(["recv", "--listen", "127.0.0.1:0", "--memory", "hugetlb", "--ram-size",
                      "3M"], 2, "2 MiB")

    def test_transport(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--transport", "pigeon", *SMALL], 2,
                     "pigeon")

    def test_dirty_method(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--dirty-method", "guess", *SMALL], 2,
                     "--dirty-method")

    def test_dirty_rate_negative(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--dirty-rate", "-5", *SMALL], 2, "dirty")

    def test_peer_timeout_below_keepalive(self):
        self.run_cli(["recv", "--listen", "127.0.0.1:0", "--keepalive-ms", "1000",
                      "--peer-timeout-ms", "1500", *SMALL], 2, "peer_timeout")

    def test_negative_bandwidth(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--max-bandwidth", "-1", *SMALL], 2,
                     "--max-bandwidth")

    def test_rdma_ack_timeout_out_of_range(self):
        self.run_cli(["send", "--to", "127.0.0.1:1", "--rdma-ack-timeout", "40", *SMALL], 2,
                     "--rdma-ack-timeout")


if __name__ == "__main__":
    harness.main()

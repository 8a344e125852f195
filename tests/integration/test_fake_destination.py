# SPDX-License-Identifier: MIT
"""A real `rdmig send` against a hand-made destination that fails, lies or
goes silent at chosen moments.  Whatever the destination does, the source must
not report a completion it did not get, and must say what went wrong (in the
destination's own words when it sent any).  Its guest keeps every page
intact; it runs on at the source after any failure before COMPLETE, and stays
stopped when COMPLETE went out and no answer came back (the destination may
be running it: resuming here too could run it twice)."""
import os
import re
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import MSG_ERROR, FakeDestination  # noqa: E402

GUEST = ["--ram-size", "32M", "--dirty-rate", "5"]


class FakeDest(harness.RdmigTestCase):
    def run_source(self, fake, *send_args, timeout=30):
        self.addCleanup(fake.close)
        send = self.start_send(fake.address, *send_args, guest=GUEST)
        rc = self.finish(send, timeout)
        src = send.report()
        ctx = "\nfake destination saw: %s (error: %r)\n%s" % (fake.events, fake.error,
                                                            send.describe())
        self.assertIsNone(fake.error, "the source broke the protocol" + ctx)
        return rc, src, ctx

    def out_of_turn(self, event, mtype, payload):
        """The source against a destination that, at @event, sends @mtype
        with @payload instead of its own answer: the source must fail
        safely.  Returns (src report, ctx)."""
        def script(e, fake):
            if e != event:
                return False
            fake.send(mtype, payload)
            return True
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_failed_safely(rc, src, ctx)
        return src, ctx

    def assert_failed_safely(self, rc, src, ctx):
        self.assertEqual(rc, 1, ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assert_source_guest_safe(src, ctx)

    def test_no_read_keys_in_precopy(self):
        """A source that may go to postcopy but finishes in precopy never hands
        out the keys to read its RAM (SOURCE_REGIONS): they are for postcopy
        only (docs/security.md, least privilege)."""
        feats = (harness.FEATURE_VERIFY | harness.FEATURE_ZERO_PAGES |
                 harness.FEATURE_MULTI_CONN | harness.FEATURE_POSTCOPY)
        fake = FakeDestination(ack_overrides={"supported": feats, "enabled": feats})
        rc, src, ctx = self.run_source(fake, "--postcopy")
        self.assertIn("complete", fake.events, ctx)
        self.assertGreaterEqual(len([e for e in fake.events if e.startswith("round_end")]), 2,
                                ctx)
        self.assertNotIn("msg %d" % harness.MSG_SOURCE_REGIONS, fake.events, ctx)

    def test_no_reads_in_precopy(self):
        """A destination that guesses the source's region (a TCP key is a
        region number) and asks to read its RAM in precopy, postcopy
        negotiated: refused, since the RAM is registered readable only when
        postcopy starts (a second registration); no byte of it is sent, and
        the source fails safely."""
        feats = (harness.FEATURE_VERIFY | harness.FEATURE_ZERO_PAGES |
                 harness.FEATURE_MULTI_CONN | harness.FEATURE_POSTCOPY)

        def script(event, fake):
            if event == "put":
                for c in list(fake.data):
                    c.sendall(harness.TCP_HDR.pack(harness.TCP_MAGIC, harness.T_GET, 0, 0, 0,
                                                   4096, 0, 1))
                fake.events.append("get sent")
            return False
        fake = FakeDestination(script, ack_overrides={"supported": feats, "enabled": feats})
        rc, src, ctx = self.run_source(fake, "--postcopy", "--postcopy-after", "1000")
        self.assertIn("get sent", fake.events, ctx)
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("does not allow remote reads", src["error"], ctx)
        self.assertEqual(src["error_code"], "protocol", ctx)

    def test_verify_mismatch(self):
        """The destination reports mismatched pages: no completion, guest resumed here."""
        def script(event, fake):
            if event == "complete":
                fake.complete_ack("verify", 8189, 3, "3 of 8192 pages differ from the source "
                                  "(block:page pc.ram:1, pc.ram:2, pc.ram:3)")
                return True
            return False
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_failed_safely(rc, src, ctx)
        self.assertEqual(src["error_code"], "verify", ctx)
        self.assertIn("differ", src["error"], ctx)
        self.assertEqual(src["verify_mismatches"], 3, ctx)

    def assert_outcome_unknown(self, rc, src, ctx):
        self.assertEqual(rc, 1, ctx)
        self.assertEqual(src["result"], "failed", ctx)
        self.assertIn("outcome unknown", src["error"], ctx)
        g = src["guest"]
        self.assertTrue(g["checked"] and g["intact"] and g["pages_bad"] == 0, ctx)
        self.assertFalse(g["running"], "resumed a guest the destination may be running" + ctx)

    def test_no_complete_ack(self):
        """The destination never answers COMPLETE: the peer timeout ends it; the guest
        stays stopped, intact."""
        def script(event, fake):
            return event == "complete"  # and say nothing, ever
        rc, src, ctx = self.run_source(FakeDestination(script), "--peer-timeout-ms", "2000")
        self.assert_outcome_unknown(rc, src, ctx)
        self.assertRegex(src["error"], re.compile("silent|stall", re.I), ctx)

    def test_closed_during_switchover(self):
        """The destination vanishes after COMPLETE, before acknowledging it."""
        def script(event, fake):
            if event == "complete":
                fake.close_all()
                return True
            return False
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_outcome_unknown(rc, src, ctx)
        self.assertIn("destination", src["error"], ctx)

    def test_closed_before_complete(self):
        """The destination vanishes in the last round, before COMPLETE went out:
        the guest runs on here."""
        def script(event, fake):
            if event == "round_end" and "round_end 2" in fake.events:
                fake.close_all()
                return True
            return False
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_failed_safely(rc, src, ctx)
        self.assertNotIn("outcome unknown", src["error"], ctx)

    def test_error_mid_precopy(self):
        """The destination's data connection drops, and a moment later the
        destination explains why on the control channel and hangs up.  The source
        must report the destination's reason, not just 'connection closed' (the
        destination does the same for the source: it waits briefly for an ERROR
        after a data connection drops, and prefers its words)."""
        def script(event, fake):
            if event == "put":
                for d in fake.data:
                    d.shutdown(socket.SHUT_RDWR)
                time.sleep(0.05)
                fake.send(MSG_ERROR, struct.pack(">I", 5) + harness.str16(
                    "registering RAM block 'pc.ram': out of locked memory"))
                fake.close_all()
                return True
            return False
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("out of locked memory", src["error"],
                      "the destination's reason was lost" + ctx)

    def test_error_text_made_printable(self):
        """A peer's ERROR text reaches the operator's terminal: escape
        sequences, other control bytes and invalid UTF-8 in it arrive as '?',
        in the report and on stderr, and the rest of the text is kept."""
        hostile = b"\x1b]0;owned\x07\x1b[2J disk \xc2\x9b" + b"31m full\xff\nfake line"
        def script(event, fake):
            if event == "put":
                fake.send(MSG_ERROR, struct.pack(">I", 5) +
                          struct.pack(">H", len(hostile)) + hostile)
                fake.close_all()
                return True
            return False
        shown = "?]0;owned??[2J disk ??31m full??fake line"
        # With --json: the report.
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn(shown, src["error"], ctx)
        self.assertFalse(re.search(r"[\x00-\x1f\x7f-\x9f]", src["error"]),
                         "a control character reached the report" + ctx)
        # Without: the table and the messages, on a terminal.
        fake = FakeDestination(script)
        self.addCleanup(fake.close)
        send = self.spawn("send", "--to", fake.address, *GUEST)
        self.finish(send, 30)
        out = send.stdout_bytes() + send.stderr_bytes()
        ctx = "\n" + send.describe()
        self.assertIn(shown.encode(), out, ctx)
        for bad in (b"\x1b", b"\x07", b"\xc2\x9b", b"\xff"):
            self.assertNotIn(bad, out, "%r reached the terminal%s" % (bad, ctx))

    def test_cancel_mid_precopy(self):
        """The destination cancels: the source ends cancelled, guest running here."""
        def script(event, fake):
            if event == "put":
                fake.send(MSG_ERROR, struct.pack(">I", 6) + harness.str16("migration cancelled"))
                return True
            return False
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assertIn("cancel", src["error"], ctx)
        self.assertIn(src["result"], ("cancelled", "failed"), ctx)
        self.assertEqual(rc, 3 if src["result"] == "cancelled" else 1, ctx)
        self.assert_source_guest_safe(src, ctx)

    def test_round_ack_wrong(self):
        """ROUND_ACK for a round that was not announced."""
        src, ctx = self.out_of_turn("round_end", harness.MSG_ROUND_ACK, struct.pack(">Q", 42))
        self.assertIn("42", src["error"], ctx)

    def test_verification_backlog_counted(self):
        """Every ROUND_ACK says the destination still has 10 s of
        verification to do: the source counts that in its expected downtime,
        waits for it with the guest running, never switches over, and past
        --max-rounds fails to converge, naming the estimate (the old rule,
        pending <= bandwidth x limit, switched over after round 1)."""
        def script(e, fake):
            if e != "round_end":
                return False
            rnd = int(fake.events[-1].split()[-1])
            fake.send(harness.MSG_ROUND_ACK, struct.pack(">QQQ", rnd, 100000, 10 * 1000000))
            return True
        fake = FakeDestination(script)
        rc, src, ctx = self.run_source(fake, "--max-rounds", "3", timeout=60)
        self.assert_failed_safely(rc, src, ctx)
        self.assertEqual(src["error_code"], "converge", ctx)
        self.assertRegex(src["error"], r"expected downtime 1\d{4} ms > limit 300 ms", ctx)
        self.assertNotIn("complete", fake.events, ctx)
        rounds = [e for e in fake.events if e.startswith("round_end")]
        self.assertEqual(len(rounds), 3, ctx)

    def test_required_feature_not_enabled(self):
        """HELLO_ACK enables less than the source requires: a destination
        must not switch verification off."""
        rc, src, ctx = self.run_source(FakeDestination(ack_overrides={
            "enabled": harness.FEATURE_ZERO_PAGES | harness.FEATURE_MULTI_CONN}))
        self.assert_failed_safely(rc, src, ctx)
        self.assertEqual(src["error_code"], "protocol", ctx)
        self.assertIn("did not enable", src["error"], ctx)
        self.assertIn("verification", src["error"], ctx)

    def test_complete_ack_before_complete(self):
        """A COMPLETE_ACK in the middle of round 1 would end the migration as
        a success with the guest's memory still here: out of phase."""
        ack = struct.pack(">IQQQ", 0, 8192, 0, 1000) + harness.str16("")
        src, ctx = self.out_of_turn("put", harness.MSG_COMPLETE_ACK, ack)
        self.assertEqual(src["error_code"], "protocol", ctx)
        self.assertIn("COMPLETE_ACK from the destination before COMPLETE", src["error"], ctx)

    def test_postcopy_prepared_unasked(self):
        src, ctx = self.out_of_turn("put", harness.MSG_POSTCOPY_PREPARED, struct.pack(">Q", 0))
        self.assertIn("POSTCOPY_PREPARED from the destination before POSTCOPY_PREPARE",
                      src["error"], ctx)

    def test_ack_never_sent(self):
        """A data-connection ACK for a write that was never posted."""
        def script(event, fake):
            if event == "put":
                fake.data[0].sendall(harness.TCP_HDR.pack(harness.TCP_MAGIC, harness.T_ACK, 0, 0,
                                                          0, 0, 0, 1 << 40))
                return True
            return False
        rc, src, ctx = self.run_source(FakeDestination(script))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("never sent", src["error"], ctx)

    def test_too_many_connections(self):
        rc, src, ctx = self.run_source(FakeDestination(ack_overrides={"connections": 4}))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("data connections", src["error"], ctx)

    def test_transport_not_offered(self):
        rc, src, ctx = self.run_source(FakeDestination(ack_overrides={"transport": "rdma"}))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("rdma", src["error"], ctx)

    def test_features_not_shared(self):
        rc, src, ctx = self.run_source(FakeDestination(ack_overrides={"enabled": 0xF | 1 << 20}))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("features", src["error"], ctx)

    def test_regions_count(self):
        rc, src, ctx = self.run_source(FakeDestination(regions_override=[]))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("keys for 0", src["error"], ctx)

    def test_region_too_small(self):
        """REGIONS says the destination's block is smaller than the source's: the
        source refuses to post a write past the region's end (run_source has
        checked that no such write reached the fake)."""
        rc, src, ctx = self.run_source(FakeDestination(regions_override=[(0, 1 << 20)]))
        self.assert_failed_safely(rc, src, ctx)
        self.assertIn("cannot post a write", src["error"], ctx)


if __name__ == "__main__":
    harness.main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Soak: randomized fault scenarios against real rdmig processes on two
"hosts" (network namespaces joined by a veth pair, the link from the source
capped with tbf so that a migration lasts a few seconds).

    sudo tests/bench/soak-recovery.py build/tools/rdmig [--runs 50] [--seed N]

Scenarios: the link cut during postcopy (recovered), cut several times,
cut during precopy (the source must go on), cut during precopy with
--precopy-resume (continued after recovery), either peer stopped past the
peer timeout (SIGSTOP, recovered), a source of another session knocking
during the pause (refused, then the real one recovers), the source killed
in postcopy (the destination must name the pages lost), the destination
killed in precopy (the source must go on).

Prints one row per run: scenario, final states, pages verified, pages lost
(0 for every recovered run, else the row fails), time to detect (fault ->
both sides paused or failed) and to recover (`rdmig send --resume` ->
postcopy-active).  Exits 1 if any run broke an expectation.
"""
import argparse
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402
from harness import NetPair, RdmigProc, monitor, monitor_status  # noqa: E402

RAM = "64M"
TIMING = ["--keepalive-ms", "200", "--peer-timeout-ms", "1000", "--connect-timeout-ms", "3000"]
SCENARIOS = ["link-down-postcopy", "link-down-repeated", "link-down-precopy", "precopy-resume",
             "stall-source",
             "stall-destination", "other-session", "source-killed-postcopy",
             "destination-killed-precopy"]


class Broken(Exception):
    pass


def wait_state(mon, states, timeout, proc=None):
    """The status once @mon reports one of @states; None if @proc exited."""
    st, last = harness.wait_state(mon, states, timeout, proc)
    if st or (proc is not None and not proc.alive()):
        return st
    raise Broken("%s never reached %s (last %s)" % (os.path.basename(mon), states,
                                                    last and last["state"]))


class Run:
    def __init__(self, scenario, rng):
        self.scenario, self.rng = scenario, rng
        self.net = NetPair(rate="200mbit")
        self.tmp = tempfile.mkdtemp(prefix="rdmig-soak-")
        self.dmon, self.smon = os.path.join(self.tmp, "d.sock"), os.path.join(self.tmp, "s.sock")
        self.procs = []
        self.detect, self.recover_s = [], []

    def spawn(self, *args, wrapper=()):
        args = [str(a) for a in args]
        if harness.needs_insecure(args):
            args.append("--insecure")  # namespace addresses are not loopback
        p = RdmigProc(args, wrapper=wrapper)
        self.procs.append(p)
        return p

    def start(self, postcopy=True, precopy_resume=False):
        rate = self.rng.choice([50, 100, 200]) if postcopy else self.rng.choice([2, 5, 10])
        guest = ["--ram-size", RAM, "--dirty-rate", str(rate)]
        if precopy_resume:
            guest.append("--precopy-resume")
        self.recv = self.spawn("recv", "--listen", self.net.addr_there + ":0", "--print-address",
                               "--json", "--quiet", "--monitor", self.dmon, *guest, *TIMING,
                               wrapper=self.net.wrapper)
        addr = self.recv.next_line(15)
        if not addr:
            raise Broken("recv did not start")
        pc = ["--postcopy", "--postcopy-after", "1"] if postcopy else []
        self.send = self.spawn("send", "--to", addr.strip(), "--json", "--quiet", "--monitor",
                               self.smon, *guest, *TIMING, *pc)

    def in_postcopy(self):
        wait_state(self.dmon, ("postcopy-active",), 60, self.recv)
        time.sleep(self.rng.uniform(0.05, 0.8))

    def both_paused(self, t0):
        wait_state(self.dmon, ("postcopy-paused",), 15)
        wait_state(self.smon, ("postcopy-paused",), 15)
        self.detect.append(time.monotonic() - t0)

    def recover(self):
        reply = monitor(self.dmon, "recover", address="%s:0" % self.net.addr_there)
        if "return" not in reply:
            raise Broken("recover: %s" % reply["error"])
        t = time.monotonic()
        reply = monitor(self.smon, "recover", address=reply["return"]["address"])
        if "return" not in reply:
            raise Broken("resume: %s" % reply["error"])
        wait_state(self.smon, ("postcopy-active", "active", "completed"), 30, self.send)
        self.recover_s.append(time.monotonic() - t)

    def cut(self):
        """Cuts the link in postcopy, restores it, recovers; False if the
        migration was over before the cut."""
        self.in_postcopy()
        st = monitor_status(self.dmon)
        if self.detect and (not st or st["state"] != "postcopy-active" or
                            not st["pages_missing"]):
            return False
        t0 = time.monotonic()
        self.net.down()
        self.both_paused(t0)
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.net.up()
        self.recover()
        return True

    def finish(self):
        for p in (self.send, self.recv):
            if p.wait(120) is None:
                raise Broken("%s did not exit" % p.name)
            err = p.stderr()
            for m in harness.CRASH_MARKERS:
                if m in err:
                    raise Broken("%s crashed: %s" % (p.name, m))
        killed = lambda p: p.returncode is not None and p.returncode < 0  # noqa: E731
        return (None if killed(self.send) else self.send.report(),
                None if killed(self.recv) else self.recv.report())

    def expect_completed(self):
        src, dst = self.finish()
        if src["result"] != "completed" or dst["result"] != "completed":
            raise Broken("not completed: %s / %s: %s %s" % (src["result"], dst["result"],
                                                            src["error"], dst["error"]))
        g = dst["guest"]
        lost = dst["recovery"]["pages_missing"]
        if (dst["pages_verified"] != dst["pages_total"] or dst["verify_mismatches"] or
                not g["intact"] or g["pages_bad"] or lost):
            raise Broken("destination not intact: verified %d/%d, mismatches %d, guest bad %d, "
                         "lost %d" % (dst["pages_verified"], dst["pages_total"],
                                      dst["verify_mismatches"], g["pages_bad"], lost))
        return src, dst, dst["pages_verified"], lost

    def expect_source_safe(self):
        src, dst = self.finish()
        g = src["guest"]
        if src["result"] != "failed" or not g["intact"] or not g["running"]:
            raise Broken("source guest not safe: %s intact=%s running=%s" %
                         (src["result"], g["intact"], g["running"]))
        return src, dst, g["pages_checked"], 0

    def run(self):
        s = self.scenario
        if s == "link-down-postcopy":
            self.start()
            self.cut()
            return self.expect_completed()
        if s == "link-down-repeated":
            self.start()
            for _ in range(self.rng.choice([2, 3])):
                if not self.cut():
                    break
            return self.expect_completed()
        if s == "link-down-precopy":
            self.start(postcopy=False)
            wait_state(self.smon, ("active",), 30, self.send)
            time.sleep(self.rng.uniform(0.2, 1.5))
            t0 = time.monotonic()
            self.net.down()
            wait_state(self.smon, ("failed", "cancelled"), 20, self.send)
            self.detect.append(time.monotonic() - t0)
            return self.expect_source_safe()
        if s == "precopy-resume":
            self.start(postcopy=False, precopy_resume=True)
            wait_state(self.smon, ("active",), 30, self.send)
            time.sleep(self.rng.uniform(0.2, 1.5))
            t0 = time.monotonic()
            self.net.down()
            wait_state(self.smon, ("precopy-paused",), 15, self.send)
            wait_state(self.dmon, ("precopy-paused",), 15, self.recv)
            self.detect.append(time.monotonic() - t0)
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.net.up()
            self.recover()
            return self.expect_completed()
        if s in ("stall-source", "stall-destination"):
            self.start()
            self.in_postcopy()
            victim, other = (self.send, self.dmon) if s == "stall-source" else \
                (self.recv, self.smon)
            mine = self.smon if s == "stall-source" else self.dmon
            t0 = time.monotonic()
            victim.signal(signal.SIGSTOP)
            wait_state(other, ("postcopy-paused",), 15)
            time.sleep(self.rng.uniform(0.2, 1.5))
            victim.signal(signal.SIGCONT)
            wait_state(mine, ("postcopy-paused",), 15)
            self.detect.append(time.monotonic() - t0)
            self.recover()
            return self.expect_completed()
        if s == "other-session":
            self.start()
            self.in_postcopy()
            t0 = time.monotonic()
            self.net.down()
            self.both_paused(t0)
            self.net.up()
            reply = monitor(self.dmon, "recover", address="%s:0" % self.net.addr_there)
            if "return" not in reply:
                raise Broken("recover: %s" % reply["error"])
            addr = reply["return"]["address"]
            fake = harness.FakeControl(addr)
            feats = 0x3f
            fake.send(harness.MSG_HELLO, harness.hello_payload(
                [("pc.ram", 64 << 20, 4096)], supported=feats, required=feats,
                session_id=os.urandom(16)))
            fake.send(harness.MSG_RESUME, struct.pack(">Q", 1))
            err = fake.recv_error()
            fake.close()
            if not err or err[0] != "auth":
                raise Broken("other session not refused: %s" % (err,))
            t = time.monotonic()
            monitor(self.smon, "recover", address=addr)
            wait_state(self.smon, ("postcopy-active", "completed"), 30, self.send)
            self.recover_s.append(time.monotonic() - t)
            return self.expect_completed()
        if s == "source-killed-postcopy":
            self.start()
            self.in_postcopy()
            t0 = time.monotonic()
            self.send.kill()
            st = wait_state(self.dmon, ("postcopy-paused",), 15)
            self.detect.append(time.monotonic() - t0)
            monitor(self.dmon, "cancel")
            self.recv.wait(30)
            dst = self.recv.report()
            if dst["result"] != "failed" or "lost" not in dst["error"] or \
                    dst["recovery"]["pages_missing"] != st["pages_missing"]:
                raise Broken("source loss not reported: %s" % dst["error"])
            return None, dst, dst["pages_verified"], dst["recovery"]["pages_missing"]
        if s == "destination-killed-precopy":
            self.start(postcopy=False)
            wait_state(self.smon, ("active",), 30, self.send)
            time.sleep(self.rng.uniform(0.2, 1.5))
            t0 = time.monotonic()
            self.recv.kill()
            wait_state(self.smon, ("failed",), 20, self.send)
            self.detect.append(time.monotonic() - t0)
            return self.expect_source_safe()
        raise ValueError(s)

    def close(self):
        for p in self.procs:
            p.close()
        self.net.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rdmig")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    harness.RDMIG = os.path.abspath(a.rdmig)
    rng = random.Random(a.seed)
    print("soak: %d runs, seed %d, guest %s, link 200 Mbit/s, peer timeout 1 s" %
          (a.runs, a.seed, RAM))
    fmt = "%3s  %-27s %-22s %9s %6s %9s %10s  %s"
    print(fmt % ("#", "scenario", "final (src/dst)", "verified", "lost", "detect_s", "recover_s",
                 "ok"))
    bad = 0
    # Every scenario at least once, then at random.
    order = SCENARIOS + [rng.choice(SCENARIOS) for _ in range(max(0, a.runs - len(SCENARIOS)))]
    for i, scen in enumerate(order[:a.runs], 1):
        r = Run(scen, rng)
        verdict, states, verified, lost = "ok", "", "-", "-"
        try:
            src, dst, verified, lost = r.run()
            states = "%s/%s" % (src["result"] if src else "killed",
                                dst["result"] if dst else "killed")
        except Broken as e:
            verdict = "FAIL: %s" % e
            bad += 1
        except Exception as e:  # a broken run must not end the soak
            verdict = "FAIL: %s: %s" % (type(e).__name__, e)
            bad += 1
        finally:
            r.close()
        print(fmt % (i, scen, states, verified, lost,
                     " ".join("%.2f" % d for d in r.detect) or "-",
                     " ".join("%.2f" % d for d in r.recover_s) or "-", verdict), flush=True)
    print("soak: %d of %d runs met every expectation" % (a.runs - bad, a.runs))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

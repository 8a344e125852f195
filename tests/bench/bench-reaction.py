#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""How fast rdmig reacts: cancels, a peer killed or stopped, a cut link.

The integration suite checks that each of these ends the right way (result,
error, the source guest intact) and bounds only a hang; how long each takes
is measured here, with medians over repeated runs, beside the timeout it is
configured with:

    tests/bench/bench-reaction.py build/tools/rdmig [--runs 5] [--only NAME ...]

Prints a markdown table (docs/BENCHMARKS.md, "Reaction times").  Runs on the
host as root (the link cut uses a network namespace); about two minutes with
5 runs.
"""
import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402

SLOW_GUEST = ["--ram-size", "128M", "--dirty-rate", "5"]
SLOW = ["--max-bandwidth", "20"]


def proc(*args, wrapper=()):
    args = [str(a) for a in args]
    if harness.needs_insecure(args):
        args.append("--insecure")  # namespace addresses are not loopback
    return harness.RdmigProc(args, wrapper=wrapper)


def recv(*args, guest=SLOW_GUEST, wrapper=(), listen="127.0.0.1:0"):
    p = proc("recv", "--listen", listen, "--print-address", "--json", "--quiet", *guest,
             *args, wrapper=wrapper)
    addr = p.next_line(15)
    if not addr:
        raise RuntimeError("recv did not start:\n" + p.describe())
    return p, addr.strip()


def send(addr, *args, guest=SLOW_GUEST):
    return proc("send", "--to", addr, "--json", *guest, *args)


def wait_stderr(p, text, timeout=30):
    deadline = time.monotonic() + timeout
    while text not in p.stderr():
        if time.monotonic() > deadline or not p.alive():
            raise RuntimeError("%r never appeared:\n%s" % (text, p.describe()))
        time.sleep(0.02)


def until_exit(p, t0, timeout=60):
    if p.wait(timeout) is None:
        raise RuntimeError("did not exit:\n" + p.describe())
    return p.t_exit - t0


def mid_precopy(*send_args, recv_args=()):
    """A migration in the middle of its first round: (recv, send)."""
    r, addr = recv(*recv_args)
    s = send(addr, *SLOW, *send_args)
    wait_stderr(s, "active")
    time.sleep(0.3)
    return r, s


def cancel_sigint():
    r, s = mid_precopy()
    try:
        s.signal(signal.SIGINT)
        return until_exit(s, time.monotonic())
    finally:
        r.kill(), s.kill()


def cancel_connecting():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    fillers = []
    for _ in range(3):  # a full accept queue: SYNs go unanswered
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(lst.getsockname())
        except BlockingIOError:
            pass
        fillers.append(c)
    s = send("127.0.0.1:%d" % lst.getsockname()[1], "--connect-timeout-ms", "600000",
             guest=["--ram-size", "32M"])
    try:
        time.sleep(1.0)
        s.signal(signal.SIGINT)
        return until_exit(s, time.monotonic())
    finally:
        s.kill()
        for c in fillers + [lst]:
            c.close()


def peer_killed(victim):
    r, s = mid_precopy("--peer-timeout-ms", "3000")
    try:
        dead, other = (r, s) if victim == "destination" else (s, r)
        dead.kill()
        return until_exit(other, time.monotonic())
    finally:
        r.kill(), s.kill()


def peer_stopped(victim):
    r, s = mid_precopy("--peer-timeout-ms", "2000", recv_args=("--peer-timeout-ms", "2000"))
    try:
        stopped, other = (r, s) if victim == "destination" else (s, r)
        stopped.signal(signal.SIGSTOP)
        t = until_exit(other, time.monotonic())
        stopped.signal(signal.SIGCONT)
        return t
    finally:
        r.kill(), s.kill()


def waiting_for_data_cancel():
    r, addr = recv("--connect-timeout-ms", "600000", guest=["--ram-size", "32M"])
    fake = harness.FakeSource(addr, [("pc.ram", 32 << 20, 4096)])
    try:
        time.sleep(0.2)
        r.signal(signal.SIGTERM)
        return until_exit(r, time.monotonic())
    finally:
        fake.close()
        r.kill()


def waiting_for_data_source_gone():
    r, addr = recv("--connect-timeout-ms", "600000", guest=["--ram-size", "32M"])
    fake = harness.FakeSource(addr, [("pc.ram", 32 << 20, 4096)])
    try:
        time.sleep(0.2)
        fake.close()
        return until_exit(r, time.monotonic())
    finally:
        r.kill()


def postcopy_cut():
    """The link cut mid-postcopy between two namespaces: until both paused."""
    net = harness.NetPair(rate="160mbit")
    tmp = tempfile.mkdtemp(prefix="rdmig-bench-")
    dmon, smon = os.path.join(tmp, "d.sock"), os.path.join(tmp, "s.sock")
    timing = ["--keepalive-ms", "200", "--peer-timeout-ms", "1000"]
    guest = ["--ram-size", "96M", "--dirty-rate", "200"]
    r = s = None
    try:
        r, addr = recv("--monitor", dmon, *timing, guest=guest, wrapper=net.wrapper,
                       listen=net.addr_there + ":0")
        s = proc("send", "--to", addr, "--json", "--quiet", "--monitor", smon, "--postcopy",
                 "--postcopy-after", "1", *guest, *timing)
        if not harness.wait_state(dmon, ("postcopy-active",), 60, r)[0]:
            raise RuntimeError("no postcopy:\n" + r.describe())
        time.sleep(0.3)
        t0 = time.monotonic()
        net.down()
        for mon, p in ((dmon, r), (smon, s)):
            if not harness.wait_state(mon, ("postcopy-paused",), 15, p)[0]:
                raise RuntimeError("no pause:\n" + p.describe())
        return time.monotonic() - t0
    finally:
        for p in (r, s):
            if p:
                p.kill()
        net.close()


def fake_no_complete_ack():
    fake = harness.FakeDestination(lambda event, f: event == "complete")
    s = send(fake.address, "--peer-timeout-ms", "2000", "--quiet",
             guest=["--ram-size", "32M", "--dirty-rate", "5"])
    try:
        deadline = time.monotonic() + 30
        while "complete" not in fake.events:
            if time.monotonic() > deadline or not s.alive():
                raise RuntimeError("COMPLETE never came:\n" + s.describe())
            time.sleep(0.01)
        return until_exit(s, time.monotonic())
    finally:
        s.kill()
        fake.close()


SCENARIOS = [
    ("cancel-sigint", "SIGINT to the source mid-precopy, until it exits cancelled", "-",
     cancel_sigint),
    ("cancel-connecting", "SIGINT while connect() hangs, until the source exits", "connect 600 s",
     cancel_connecting),
    ("destination-killed", "destination SIGKILLed mid-precopy, until the source exits",
     "peer 3 s", lambda: peer_killed("destination")),
    ("source-killed", "source SIGKILLed mid-precopy, until the destination exits", "peer 10 s",
     lambda: peer_killed("source")),
    ("destination-stopped", "destination SIGSTOPped, until the source gives up", "peer 2 s",
     lambda: peer_stopped("destination")),
    ("source-stopped", "source SIGSTOPped, until the destination gives up", "peer 2 s",
     lambda: peer_stopped("source")),
    ("no-complete-ack", "a destination that never answers COMPLETE, until the source gives up",
     "peer 2 s", fake_no_complete_ack),
    ("wait-data-cancel", "SIGTERM to a destination waiting for data connections, until exit",
     "connect 600 s", waiting_for_data_cancel),
    ("wait-data-source-gone", "the source hangs up before its data connections, until the "
     "destination exits", "connect 600 s", waiting_for_data_source_gone),
    ("postcopy-cut", "link cut mid-postcopy, until both sides are paused", "peer 1 s",
     postcopy_cut),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rdmig")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    harness.RDMIG = os.path.abspath(a.rdmig)
    print("| scenario | configured | median | min | max | runs |")
    print("|---|---|---:|---:|---:|---:|")
    for name, what, configured, fn in SCENARIOS:
        if a.only and name not in a.only:
            continue
        times = [fn() for _ in range(a.runs)]
        print("| %s: %s | %s | %.3f s | %.3f s | %.3f s | %d |" %
              (name, what, configured, statistics.median(times), min(times), max(times),
               len(times)), flush=True)


if __name__ == "__main__":
    main()

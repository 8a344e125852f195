#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Postcopy over RDMA on a lossy link, for each RDMA ack timeout given.

Runs inside the soft-RoCE VM (tests/rxe/run), where netem can drop packets
on the two rxe netdevs:

  tests/rxe/run --timeout 1200 -- tests/bench/rdma-loss.py build/tools/rdmig \\
      --loss 0% 0.5% 2% --ack-timeout 14 16 0

An ack timeout of 0 leaves the choice to rdma_cm (rdmig's default is 14).  Loss applies
both ways for the whole migration: precopy's first round, then the pull.
Prints one row per run: loss, ack timeout, total seconds, result, pauses and
pages verified.
"""
import argparse
import json
import os
import subprocess
import time

DEVS = (os.environ.get("RXE_A_NETDEV", "rxe-a"), os.environ.get("RXE_B_NETDEV", "rxe-b"))


def qdisc(*args, check=True):
    for dev in DEVS:
        subprocess.run(["tc", "qdisc", *args[:1], "dev", dev, "root", *args[1:]], check=check,
                       stderr=subprocess.DEVNULL if not check else None)


def run(rdmig, host, ram, loss, ack, limit_s):
    guest = ["--ram-size", ram, "--dirty-rate", "10", "--keepalive-ms", "300",
             "--peer-timeout-ms", "5000", "--transport", "rdma", "--quiet", "--json"]
    guest += ["--rdma-ack-timeout", str(ack)]
    recv = subprocess.Popen([rdmig, "recv", "--insecure", "--listen", host + ":0", "--print-address", *guest],
                            stdout=subprocess.PIPE, text=True)
    addr = recv.stdout.readline().strip()
    qdisc("del", check=False)
    if loss not in ("0", "0%"):
        qdisc("add", "netem", "loss", loss)
    t0 = time.monotonic()
    send = subprocess.Popen([rdmig, "send", "--insecure", "--to", addr, "--postcopy", "--postcopy-after", "1",
                             *guest], stdout=subprocess.DEVNULL)
    try:
        send.wait(timeout=limit_s)
        recv.wait(timeout=30)
        secs = time.monotonic() - t0
        dst = json.loads(recv.stdout.read().strip().splitlines()[-1])
        result = dst["result"] + (": " + dst["error"] if dst["error"] else "")
        row = (loss, ack or "rdma_cm", "%.1f" % secs, result, dst["recovery"]["pauses"],
               dst["pages_verified"])
    except subprocess.TimeoutExpired:
        for p in (send, recv):
            p.kill()
            p.wait()
        row = (loss, ack or "rdma_cm", ">%d" % limit_s, "not done", "-", "-")
    qdisc("del", check=False)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rdmig")
    ap.add_argument("--loss", nargs="+", default=["0%", "0.5%", "2%"])
    ap.add_argument("--ack-timeout", nargs="+", type=int, default=[14, 16, 0])
    ap.add_argument("--ram-size", default="64M")
    ap.add_argument("--limit", type=int, default=150, help="seconds before a run counts as stuck")
    a = ap.parse_args()
    host = os.environ.get("RXE_B_IP")
    if not host:
        raise SystemExit("run this inside the soft-RoCE VM: tests/rxe/run -- %s ..." % __file__)
    print("| loss | ack timeout | total s | result | pauses | pages verified |")
    print("|---|---|---|---|---|---|")
    for loss in a.loss:
        for ack in a.ack_timeout:
            print("| %s | %s | %s | %s | %s | %s |" % run(a.rdmig, host, a.ram_size, loss, ack,
                                                       a.limit), flush=True)


if __name__ == "__main__":
    main()

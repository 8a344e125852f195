#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""QEMU's own tcp: migration beside its rdmig: transport, same QEMU binary,
same guest, same host, alternating, with iperf3 in the same run.  Prints a
Markdown table of medians for docs/BENCHMARKS.md.

    RDMIG_QEMU=$(scripts/build-qemu.sh | tail -n 1) \\
        python3 tests/bench/vs-qemu.py [--ram 1G] [--reps 3] [--dirty 0|1] [--multifd 4]

The guest is tests/qemu/guest/heartbeat.s assembled here with a region of
RAM - 64 MiB: DIRTY=0 fills it once and then only reads it; DIRTY=1
rewrites one page in STRIDE per pass (its rate is measured and printed).
Both transports: max-bandwidth 0 (QEMU's default caps at 128 MiB/s),
downtime-limit 300 ms, destination held with -S, memory compared page by
page after each run (a run that differs is reported, not counted)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "qemu"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from qemu import QemuVM, differing_pages  # noqa: E402


def size(s):
    units = {"K": 10, "M": 20, "G": 30}
    return int(s[:-1]) << units[s[-1].upper()] if s[-1].upper() in units else int(s)


def build_guest(tmp, region, dirty, stride):
    src = os.path.join(HERE, "..", "qemu", "guest", "heartbeat.s")
    obj, elf = os.path.join(tmp, "g.o"), os.path.join(tmp, "g.elf")
    subprocess.run(["as", "--32", "--defsym", "DIRTY=%d" % dirty, "--defsym",
                    "STRIDE=%d" % stride, "--defsym", "REGION=%d" % region, "--defsym",
                    "PACE=50000000", "-o", obj, src], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-N", "--build-id=none", "--no-warn-rwx-segments",
                    "-Ttext", "0x100000", "-e", "_start", "-o", elf, obj], check=True)
    return elf


def iperf3(port):
    server = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "3", "-J"],
                         stdout=subprocess.PIPE, check=True).stdout
    server.wait(10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / 2**20


def one(qemu, libdir, kernel, ram, kind, port, multifd, ram_bytes):
    src = QemuVM(qemu, libdir, kernel, ram, "src")
    incoming = "defer"
    dst = QemuVM(qemu, libdir, kernel, ram, "dst", incoming=incoming, paused=True)
    try:
        time.sleep(2)  # the guest fills its region
        for vm in (src, dst):
            vm.cmd("migrate-set-parameters", max_bandwidth=0, downtime_limit=300)
            if multifd:  # rdmig: as many data connections (docs/qemu.md)
                vm.set_caps(multifd=True)
                vm.cmd("migrate-set-parameters", multifd_channels=multifd)
        if kind == "rdmig":
            dst.cmd("migrate-incoming", uri="rdmig:127.0.0.1:0")
            uri = "rdmig:" + dst.listen_address()
        else:
            dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:%d" % port)
            uri = "tcp:127.0.0.1:%d" % port
        beats = src.heartbeat().count("B")
        src.cmd("migrate", uri=uri)
        while True:
            info = src.migration()
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        if info["status"] != "completed":
            return {"status": info["status"], "error": info.get("error-desc", "")}
        a, b = src.dump_memory(ram_bytes), dst.dump_memory(ram_bytes)
        bad = len(differing_pages(a, b)) if a != b else 0
        return {"status": "completed", "total": info["total-time"], "downtime": info["downtime"],
                "setup": info.get("setup-time", 0), "MiB": info["ram"]["transferred"] / 2**20,
                "syncs": info["ram"]["dirty-sync-count"], "bad_pages": bad,
                "passes": src.heartbeat().count("B") - beats}
    finally:
        src.close()
        dst.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ram", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dirty", type=int, default=0)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--multifd", type=int, default=0,
                    help="also run tcp: with N multifd channels, and rdmig: with N connections")
    ap.add_argument("--libdir", default=os.path.join(HERE, "..", "..", "build"))
    args = ap.parse_args()
    qemu = os.environ.get("RDMIG_QEMU")
    if not qemu:
        sys.exit("set RDMIG_QEMU (scripts/build-qemu.sh prints it)")
    ram_bytes = size(args.ram)
    tmp = tempfile.mkdtemp(prefix="rdmig-vs-qemu-")
    kernel = build_guest(tmp, ram_bytes - (64 << 20), args.dirty, args.stride)
    kinds = ["tcp", "rdmig"] + (["tcp-multifd", "rdmig-connections"] if args.multifd else [])
    res = {k: [] for k in kinds}
    bw = []
    for rep in range(args.reps):
        bw.append(iperf3(47400 + rep))
        for k in kinds:
            r = one(qemu, os.path.abspath(args.libdir), kernel, args.ram, k.split("-")[0],
                    47410 + rep, args.multifd if "-" in k else 0, ram_bytes)
            print("rep %d %-11s %s" % (rep + 1, k, r), file=sys.stderr, flush=True)
            res[k].append(r)
    print("\nguest %s, %s, %d reps; iperf3 one stream loopback median %.0f MiB/s (%s)\n"
          % (args.ram, "dirtying 1 page in %d per pass" % args.stride if args.dirty else "idle",
             args.reps, statistics.median(bw), ", ".join("%.0f" % b for b in bw)))
    print("| transport | total ms | downtime ms | setup ms | MiB moved | dirty syncs | runs with differing pages |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in kinds:
        ok = [r for r in res[k] if r["status"] == "completed" and not r["bad_pages"]]
        bad = sum(1 for r in res[k] if r.get("bad_pages"))
        failed = [r for r in res[k] if r["status"] != "completed"]
        if not ok:
            print("| %s | failed: %s | | | | | %d |" % (k, failed[:1], bad))
            continue

        def med(key):
            return statistics.median(r[key] for r in ok)
        print("| %s | %d | %d | %d | %.0f | %.0f | %d |" % (
            k, med("total"), med("downtime"), med("setup"), med("MiB"), med("syncs"), bad))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What the guest's memory costs the migration: `rdmig demo` over loopback
TCP with each kind of synthetic-guest RAM (--memory memfd, anon, hugetlb),
with and without --prealloc, alternating, several repetitions, beside
iperf3's one-stream figure taken in the same run (before, between
repetitions, after).  Prints a Markdown table of medians (and ranges) for
docs/BENCHMARKS.md.

    tests/bench/bench-memory.py [--ram 1G] [--rate 0] [--reps 3]
                                [--kinds memfd,anon,hugetlb] [--rdmig PATH]

hugetlb needs 2 MiB pages for both processes: as root the script adds them
to the pool (vm.nr_hugepages) for the run and gives them back; otherwise
that kind is left out, saying why.  The destination's "migration CPU" is
its session threads' (receive, verify, control); "process CPU" adds the
guest and, with --prealloc, the preallocation.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.dont_write_bytecode = True  # keep the source tree clean
from demo_report import demo_reports  # noqa: E402
from harness import add_huge_pages  # noqa: E402


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


def iperf3(port=47091):
    """One TCP stream over loopback for 3 s: GiB/s."""
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "3", "-J"],
                             capture_output=True, text=True, timeout=30).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / 2**30
    finally:
        srv.wait(10)


def demo(rdmig, ram, rate, kind, prealloc):
    return demo_reports(rdmig, ["--ram-size", ram, "--dirty-rate", str(rate), "--memory", kind] +
                        (["--prealloc"] if prealloc else []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ram", default="1G")
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kinds", default="memfd,anon,hugetlb")
    ap.add_argument("--rdmig", default=os.path.join(HERE, "..", "..", "build", "tools", "rdmig"))
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    added = 0
    if "hugetlb" in kinds:
        need = 2 * parse_size(a.ram) // (2 << 20)
        if os.geteuid() != 0:
            print("hugetlb left out: root is needed to add %d pages to vm.nr_hugepages" % need)
            kinds.remove("hugetlb")
        else:
            added = add_huge_pages(need)
            if added < need:
                print("hugetlb left out: the kernel gave %d of %d huge pages" % (added, need))
                kinds.remove("hugetlb")
    try:
        run(a, kinds)
    finally:
        if added:
            add_huge_pages(-added)


def run(a, kinds):
    configs = [(k, p) for k in kinds for p in (True, False)]
    rows = {c: [] for c in configs}
    ip = [iperf3()]
    for rep in range(a.reps):
        for c in configs:
            s, d = demo(a.rdmig, a.ram, a.rate, *c)
            ok = s.get("result") == "completed" and d.get("result") == "completed" and \
                d.get("guest", {}).get("intact")
            rows[c].append(None if not ok else {
                "total": s["total_time_ms"] / 1000, "down": s["downtime_ms"],
                "r1": s["first_round_bandwidth"] / 2**30, "rounds": s["rounds"],
                "mcpu": d["migration_cpu_s"], "pcpu": d["cpu_user_s"] + d["cpu_sys_s"],
                "huge": d["guest"]["huge_bytes"] / parse_size(a.ram)})
            print("rep %d %-8s %-10s %s" % (rep, c[0], "prealloc" if c[1] else "-",
                                             rows[c][-1] or (s.get("error") or d.get("error"))),
                  file=sys.stderr, flush=True)
        ip.append(iperf3())
    print("iperf3, one stream over loopback, before/between/after: %s GiB/s" %
          ", ".join("%.2f" % x for x in ip))
    print()
    print("| memory | --prealloc | runs ok | total s | downtime ms | round-1 GiB/s | "
          "dst migration CPU s | dst process CPU s | dst RAM in huge pages |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for c, rs in rows.items():
        good = [r for r in rs if r]

        def cell(key, fmt):
            if not good:
                return "-"
            v = [r[key] for r in good]
            return (fmt % statistics.median(v)) + (" (" + fmt % min(v) + "-" + fmt % max(v) + ")"
                                                   if len(v) > 1 else "")
        print("| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s |" % (
            c[0], "yes" if c[1] else "no", len(good), len(rs), cell("total", "%.2f"),
            cell("down", "%.0f"), cell("r1", "%.2f"), cell("mcpu", "%.2f"),
            cell("pcpu", "%.2f"), cell("huge", "%.2f")))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Before and after, in the same run: `rdmig demo --json ARGS` with two
builds of rdmig in turn (before, after, before, after, ...), one line per
run with what the switchover and the destination's CPU came to.

    git worktree add /tmp/before REV
    meson setup /tmp/before/build-before --buildtype=debugoptimized
    ninja -C /tmp/before/build-before tools/rdmig
    tests/bench/ab-demo.py --before /tmp/before/build-before/tools/rdmig \\
        --reps 3 -- --ram-size 1G --dirty-rate 50

Prints, per run: the source's total_time_ms, downtime_ms,
expected_downtime_ms and rounds; the destination's verify_time_ms,
pages_verified_background of pages_total and migration_cpu_s; then the
medians of each build.  Builds of the same build type only: the figures
are compared, not read alone (these machines drift from hour to hour).
"""
import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep the source tree clean
from demo_report import demo_reports  # noqa: E402
FIELDS = ("total", "down", "expected", "rounds", "verify_dt", "dstcpu")


def run(binary, args):
    s, d = demo_reports(binary, args)
    if s.get("result") != "completed":
        return None, s.get("error") or d.get("error") or "no report"
    return {"total": s["total_time_ms"], "down": s["downtime_ms"],
            "expected": s["expected_downtime_ms"], "rounds": s["rounds"],
            "verify_dt": d["verify_time_ms"], "dstcpu": d["migration_cpu_s"],
            "bg": "%d/%d" % (d["pages_verified_background"], d["pages_total"])}, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the rdmig binary to compare with")
    ap.add_argument("--after", default=os.path.join(HERE, "..", "..", "build", "tools", "rdmig"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("args", nargs="*", help="rdmig demo arguments (after --)")
    a = ap.parse_args()
    got = {"before": [], "after": []}
    for rep in range(a.reps):
        for name, binary in (("before", a.before), ("after", a.after)):
            r, err = run(binary, a.args)
            if r:
                got[name].append(r)
                print("%-6s rep%d %s" % (name, rep, " ".join("%s=%s" % (k, r[k]) for k in
                                                               FIELDS + ("bg",))), flush=True)
            else:
                print("%-6s rep%d failed: %s" % (name, rep, err), flush=True)
    for name, rs in got.items():
        if rs:
            print("%-6s median of %d: %s" % (name, len(rs), " ".join(
                "%s=%g" % (k, statistics.median(r[k] for r in rs)) for k in FIELDS)))


if __name__ == "__main__":
    main()

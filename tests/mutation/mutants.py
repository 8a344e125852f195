#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Deliberately broken builds, to show which tests catch what.

A test suite that passes proves little until it has been seen failing.  Each
mutant below changes one thing in a copy of the source tree (an exact
snippet, replaced), the copy is built, and integration cases run against its
`rdmig`.  A mutant is *caught* when at least one case fails; the table names
the cases that failed.  docs/testing.md records the last run.

    tests/mutation/mutants.py [--only NAME ...] [--tests CASE ...] [--keep]

Not part of scripts/test.sh (each mutant is a build and a suite run: about
three minutes each on the 2-core machine); run it after changing the engine's
verification, zero, discard or dirty-tracking paths.  Mutants marked `vm`
need the soft-RoCE VM (the kernel feature they break is only there) and run
their cases through tests/rxe/run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Integration cases that migrate and check the result (meson test names).
MIGRATIONS = ["idle", "converge", "converge-blocks3", "converge-hot", "postcopy-guests",
              "postcopy-triggers", "verify-tampered", "verify-pulled-tampered",
              "recovery-link-down"]

MUTANTS = [
    {"name": "verify-always-passes",
     "what": "the destination's per-page hash comparison always passes",
     "file": "engine/destination.c",
     "old": "bool ok = rdmig_bitmap_test(b->hash_known, p) && h == b->hashes[p];",
     "new": "bool ok = true; (void)h;"},
    {"name": "zero-ignored",
     "what": "the destination ignores ZERO runs (a page zeroed after it was sent stays as it was)",
     "file": "engine/destination.c",
     "old": "                memset(page, 0, b->page_size);",
     "new": "                (void)page;"},
    {"name": "zero-ignored-unverified",
     "what": "ZERO runs ignored and the hash comparison passing: only the oracle is left",
     "file": "engine/destination.c",
     "old": "                memset(page, 0, b->page_size);",
     "new": "                (void)page;",
     "also": ("bool ok = rdmig_bitmap_test(b->hash_known, p) && h == b->hashes[p];",
              "bool ok = true; (void)h;")},
    {"name": "last-round-not-sent",
     "what": "stop-and-copy sends no pages: what the guest wrote in the last round never "
             "leaves (the source's hashes are of what it sent, so rdmig's own check agrees)",
     "file": "engine/source.c",
     "old": "    if (!send_dirty(s, error) || !end_round(s, round, error))\n        return false;\n"
            "    s->data_done = true;",
     "new": "    if (!end_round(s, round, error))\n        return false;\n"
            "    s->data_done = true;"},
    {"name": "zero-test-too-eager",
     "what": "the source's zero-page test looks only at the first words: non-zero pages "
             "travel as ZERO (and are hashed as zero)",
     "file": "engine/ram.c",
     "old": "        if (acc)\n            return false;\n    }\n    return true;",
     "new": "        (void)acc;\n    }\n    return true;"},
    {"name": "pulled-check-passes",
     "what": "postcopy: a pulled page's hash comparison always passes",
     "file": "engine/postcopy.c",
     "old": "    if (got == want) {",
     "new": "    if (got == want || 1) {"},
    {"name": "complete-ack-lies",
     "what": "the destination tells the source it completed whatever verification found",
     "file": "engine/destination.c",
     "old": "    if (!ack.status && s->guest.resume)\n        s->guest.resume(s->guest_opaque);",
     "new": "    if (!ack.status && s->guest.resume)\n        s->guest.resume(s->guest_opaque);\n"
            "    ack.status = 0;"},
    {"name": "soft-dirty-unpaused",
     "what": "the guest is not paused across a soft-dirty sync (a write between the pagemap "
             "read and the clear is lost)",
     "file": "engine/source.c",
     "old": "    return !s->have_dirty_ops && s->tracker && !s->guest_stopped &&\n"
            "           rdmig_dirty_tracker_method(s->tracker) == RDMIG_DIRTY_SOFT_DIRTY;",
     "new": "    return false && s;",
     "vm": True, "tests": ["rdma-soft-dirty", "rdma-dirtying"], "repeat": 3},
]


def sh(cmd, cwd, env=None, timeout=3600):
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def copy_tree(dst):
    files = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
               ROOT).stdout.split("\0")
    for f in filter(None, files):
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dst, f))


def apply(tree, m):
    path = os.path.join(tree, m["file"])
    src = open(path).read()
    for old, new in [(m["old"], m["new"])] + ([m["also"]] if "also" in m else []):
        if src.count(old) != 1:
            raise SystemExit("mutant %s: the snippet occurs %d times in %s; update mutants.py"
                             % (m["name"], src.count(old), m["file"]))
        src = src.replace(old, new)
    open(path, "w").write(src)


def witnesses(build):
    """Who saw the damage in @build's last run: the guest's own record (the
    oracle), rdmig's verification, or both."""
    log = open(os.path.join(build, "meson-logs", "testlog.txt"), errors="replace").read()
    who = []
    if "by the guest's own SHA-256" in log:
        who.append("oracle")
    if "differ from the source" in log or "pulled pages differ" in log:
        who.append("rdmig verification")
    return who


def failed_cases(build):
    """The failed cases in @build's testlog.json, as 'test: case'."""
    out = []
    for line in open(os.path.join(build, "meson-logs", "testlog.json")):
        r = json.loads(line)
        if r["result"] in ("OK", "SKIP"):
            continue
        cases = [l.split(" - ", 1)[-1] for l in (r.get("stdout") or "").splitlines()
                 if l.startswith("not ok")]
        out.append("%s%s" % (r["name"].split(" / ")[-1],
                             " (" + ", ".join(cases) + ")" if cases else ""))
    return out


def run_mutant(m, tests, keep):
    base = os.path.join(ROOT, ".scratch") if m.get("vm") else None
    if base:
        os.makedirs(base, exist_ok=True)  # the VM shares only the source tree
    tree = tempfile.mkdtemp(prefix="rdmig-mutant-%s-" % m["name"], dir=base)
    try:
        copy_tree(tree)
        apply(tree, m)
        build = os.path.join(tree, "build")
        r = sh(["meson", "setup", build, "--buildtype=debugoptimized"], tree)
        if r.returncode == 0:
            r = sh(["ninja", "-C", build], tree)
        if r.returncode:
            return "does not build", [r.stdout[-2000:]]
        cases = m.get("tests", tests)
        failed = []
        for _ in range(m.get("repeat", 1)):
            cmd = ["meson", "test", "-C", build, "--no-rebuild"] + cases
            if m.get("vm"):
                cmd = [os.path.join(ROOT, "tests", "rxe", "run"), "--timeout", "1500", "--"] + cmd
            sh(cmd, tree)
            failed += failed_cases(build)
            if failed:
                break
        who = witnesses(build) if failed else []
        return ("caught by " + " and ".join(who) if who else
                "caught" if failed else "SURVIVED"), failed
    finally:
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--tests", nargs="*", default=MIGRATIONS,
                    help="meson test names to run against each mutant")
    ap.add_argument("--keep", action="store_true", help="keep the mutated trees")
    a = ap.parse_args()
    print("| mutant | what it breaks | verdict | failing cases |")
    print("|---|---|---|---|")
    survived = 0
    for m in MUTANTS:
        if a.only and m["name"] not in a.only:
            continue
        t0 = time.monotonic()
        verdict, failed = run_mutant(m, a.tests, a.keep)
        survived += verdict == "SURVIVED"
        print("| %s | %s | %s (%.0f s) | %s |" % (m["name"], m["what"], verdict,
                                                 time.monotonic() - t0,
                                                 "; ".join(failed) or "-"), flush=True)
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()

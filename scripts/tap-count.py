#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Counts test cases in meson's testlog.json, for scripts/test.sh.

Every test program of the suites speaks TAP (GLib's test programs by
default, the Python suites through harness.run_tap), so a case is one TAP
line: `ok`, `ok ... # SKIP why`, `not ok`.  A program that is not TAP counts
as one case by its meson result.  A TAP program that planned N cases and
reported fewer (it crashed or timed out) counts the missing ones as failed.

    tap-count.py TESTLOG [--label NAME]

prints the skips with their reasons and the failures by name (grouped by
test program and reason), and on its last line
"PASSED FAILED SKIPPED" for the shell to add up.
"""
import json
import re
import sys

PLAN = re.compile(r"^1\.\.(\d+)(?:\s*#\s*SKIP\b\s*(.*))?$", re.I)
RESULT = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*-?\s*([^#]*?)\s*(?:#\s*(SKIP|TODO)\b\s*(.*))?$",
                    re.I)


def count_tap(name, out, meson_result, report):
    """(passed, failed, skipped) of one TAP program's stdout."""
    planned, seen = None, 0
    p = f = s = 0
    for line in out.splitlines():
        m = PLAN.match(line.strip())
        if m:
            planned = int(m.group(1))
            if planned == 0:
                report("skip", name, "(all cases)", m.group(2) or "no reason given")
                return 0, 0, 1
            continue
        m = RESULT.match(line.strip())
        if not m:
            continue
        seen += 1
        verdict, _, case, directive, why = m.groups()
        directive = (directive or "").upper()
        if directive == "SKIP":
            s += 1
            report("skip", name, case, why or "no reason given")
        elif verdict.lower() == "ok" or directive == "TODO":
            p += 1
        else:
            f += 1
            report("fail", name, case, "")
    if planned is not None and seen < planned:
        f += planned - seen
        report("fail", name, "(%d of %d cases never reported)" % (planned - seen, planned),
               meson_result)
    elif meson_result not in ("OK", "SKIP", "EXPECTEDFAIL") and not f:
        f += 1  # the program failed beyond its cases (exit status, timeout)
        report("fail", name, "(the program)", meson_result)
    return p, f, s


def main():
    log = sys.argv[1]
    label = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--label" else ""
    total = [0, 0, 0]
    lines = {}  # (kind, test, reason) -> cases, printed grouped, in order of appearance

    def report(kind, name, case, why):
        lines.setdefault((kind, name, why), []).append(case)

    for line in open(log):
        r = json.loads(line)
        name, result, out = r["name"], r["result"], r.get("stdout") or ""
        if any(PLAN.match(l.strip()) for l in out.splitlines()):
            counts = count_tap(name, out, result, report)
        elif result in ("OK", "EXPECTEDFAIL"):
            counts = (1, 0, 0)
        elif result == "SKIP":
            report("skip", name, "", out.strip().splitlines()[-1] if out.strip() else "")
            counts = (0, 0, 1)
        else:
            report("fail", name, "", result)
            counts = (0, 1, 0)
        total = [a + b for a, b in zip(total, counts)]
    prefix = "[%s] " % label if label else ""
    for (kind, name, why), cases in lines.items():
        shown = ", ".join(c for c in cases[:3] if c)
        more = " and %d more" % (len(cases) - 3) if len(cases) > 3 else ""
        print("%s%s: %s%s %s%s%s" % (prefix, kind, name,
                                     " (%d cases)" % len(cases) if len(cases) > 1 else "",
                                     shown, more, ": " + why if why else ""))
    print("%d %d %d" % tuple(total))


if __name__ == "__main__":
    main()

# SPDX-License-Identifier: MIT
"""The two reports of one `rdmig demo --json` run, for the bench scripts."""
import json
import subprocess


def demo_reports(binary, args, timeout=600):
    """Runs `@binary demo --json @args`; returns (source, destination)
    reports, each {} when missing."""
    out = subprocess.run([binary, "demo", "--json"] + list(args), capture_output=True,
                         text=True, timeout=timeout).stdout
    r = {}
    for line in out.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if isinstance(j, dict) and "role" in j:
            r[j["role"]] = j
    return r.get("source", {}), r.get("destination", {})

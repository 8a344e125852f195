# SPDX-License-Identifier: MIT
"""The library's shape, checked on what the build produced:

  * librdmig.so exports exactly the functions include/rdmig/ marks RDMIG_API,
    and librdmig.map lists the same (nm -D --defined-only);
  * no import circle between the library's source files: the file graph of
    "calls a function defined in" is acyclic (nm on the internal archive);
  * the layers hold: util/ calls nothing of rdmig's, rdma/ only util/,
    transport/ only rdma/ and util/, engine/ anything below;
  * no function of the library or the command is longer than 80 lines.

    python3 test_layers.py BUILD_DIR SOURCE_DIR
"""
import os
import re
import subprocess
import sys
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402

BUILD = SRC = None

# Which folder may call into which (a folder may always call itself).
ALLOWED = {
    "util": set(),
    "rdma": {"util"},
    "transport": {"util", "rdma"},
    "engine": {"util", "rdma", "transport"},
}


def nm(*args):
    return subprocess.run(["nm"] + list(args), check=True, stdout=subprocess.PIPE,
                          text=True).stdout


def declared_api():
    names = set()
    inc = os.path.join(SRC, "include", "rdmig")
    for h in os.listdir(inc):
        text = open(os.path.join(inc, h)).read()
        names |= set(re.findall(r"^RDMIG_API\b[^;(]*?\b(rdmig_\w+)\s*\(", text, re.M))
    return names


def file_graph():
    """{source file: {source files it calls into}} from the internal archive."""
    out = nm("-A", os.path.join(BUILD, "librdmig-internal.a"))
    defined, used = {}, {}
    for line in out.splitlines():
        m = re.match(r"^[^:]+:([^:]+)\.c\.o:\s*(?:[0-9a-f]+\s+)?([A-Za-z])\s+(\S+)$", line)
        if not m:
            continue
        obj, kind, sym = m.groups()
        src = os.path.basename(obj).replace("_", "/", 1)  # engine_source-io -> engine/source-io
        if kind in "TDBR":
            defined[sym] = src
        elif kind == "U":
            used.setdefault(src, set()).add(sym)
    graph = {f: set() for f in set(defined.values()) | set(used)}
    for f, syms in used.items():
        graph[f] |= {defined[s] for s in syms if s in defined and defined[s] != f}
    return graph


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


class Exports(unittest.TestCase):
    def test_exports_are_the_api(self):
        """nm -D --defined-only librdmig.so lists the RDMIG_API functions, no more, no less."""
        out = nm("-D", "--defined-only", os.path.join(BUILD, "librdmig.so"))
        exported = {l.split()[-1].split("@")[0] for l in out.splitlines()
                    if l.split()[1:2] != ["A"]}
        api = declared_api()
        self.assertGreater(len(api), 20, "the public headers declare too few functions")
        self.assertEqual(sorted(exported - api), [], "exported but not declared RDMIG_API")
        self.assertEqual(sorted(api - exported), [], "declared RDMIG_API but not exported")

    def test_map_lists_the_api(self):
        """librdmig.map's global list is the same set."""
        text = open(os.path.join(SRC, "librdmig.map")).read()
        mapped = set(re.findall(r"^\s+(rdmig_\w+);", text, re.M))
        self.assertEqual(mapped, declared_api())


class Layers(unittest.TestCase):
    def test_no_import_circles(self):
        """No two source files call into each other, directly or around a circle."""
        graph = file_graph()
        folders = {f.split("/")[0] for f in graph}
        self.assertTrue({"util", "transport", "engine"} <= folders, sorted(graph))
        self.assertGreater(sum(len(c) for c in graph.values()), 50, "too few calls seen")
        self.assertEqual(cycles(graph), [])

    def test_layers(self):
        """util/ <- rdma/ <- transport/ <- engine/: no call goes upward."""
        bad = []
        for f, callees in sorted(file_graph().items()):
            layer = f.split("/")[0]
            for c in sorted(callees):
                target = c.split("/")[0]
                if target != layer and target not in ALLOWED.get(layer, set()):
                    bad.append("%s -> %s" % (f, c))
        self.assertEqual(bad, [])


def long_functions(path, limit=80):
    """Functions of @path (GNU style: the body's braces in column 0) longer
    than @limit lines, as "path:line name (n lines)"."""
    lines = open(path).read().split("\n")
    out = []
    for i, line in enumerate(lines):
        if line != "{" or i == 0:
            continue
        j = i - 1
        while j > 0 and "(" not in lines[j]:
            j -= 1
        end = next((k for k in range(i + 1, len(lines)) if lines[k] == "}"), len(lines) - 1)
        name = re.search(r"(\w+)\s*\(", lines[j])
        if end - i + 1 > limit:
            out.append("%s:%d %s (%d lines)" % (os.path.relpath(path, SRC), j + 1,
                                                name.group(1) if name else "?", end - i + 1))
    return out


class Style(unittest.TestCase):
    def test_functions_at_most_80_lines(self):
        """engine/, transport/, rdma/, util/ and tools/: no function over 80 lines."""
        found, seen = [], 0
        for folder in ("engine", "transport", "rdma", "util", "tools"):
            for name in sorted(os.listdir(os.path.join(SRC, folder))):
                if name.endswith(".c"):
                    seen += 1
                    found += long_functions(os.path.join(SRC, folder, name))
        self.assertGreater(seen, 40, "too few source files found")
        self.assertEqual(found, [])


# A clock read inside MIN, MAX or CLAMP is read again for the result: a
# deadline crossed between two readings turns a bounded wait into -1
# (poll(2): for ever).  Seen: a destination that never noticed a dead source.
CLOCK_IN_MACRO = re.compile(r"\b(?:MIN|MAX|CLAMP)\s*\((?:[^;{}]*?)"
                            r"\b(?:rdmig_now_us|g_get_monotonic_time|silent_ms|clock_gettime)\s*\(")


def clock_in_macros(path):
    out = []
    text = open(path).read()
    for m in CLOCK_IN_MACRO.finditer(text):
        out.append("%s:%d" % (os.path.relpath(path, SRC), text.count("\n", 0, m.start()) + 1))
    return out


class Clocks(unittest.TestCase):
    def test_no_clock_read_inside_min_max_clamp(self):
        """No MIN/MAX/CLAMP reads a clock in its arguments (they are
        evaluated more than once)."""
        found = []
        for folder in ("engine", "transport", "rdma", "util", "tools"):
            for name in sorted(os.listdir(os.path.join(SRC, folder))):
                if name.endswith((".c", ".h")):
                    found += clock_in_macros(os.path.join(SRC, folder, name))
        self.assertEqual(found, [])


def file_map():
    """docs/architecture.md's file map: {folder: set of names}; a row names
    "x.c/.h" for a pair."""
    text = open(os.path.join(SRC, "docs", "architecture.md")).read()
    part = text.split("## File map", 1)[1].split("\n## ", 1)[0]
    listed, folder = {}, None
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not cells[0]:
            continue
        m = re.fullmatch(r"\*\*(.+)/\*\*", cells[0])
        if m:
            folder = m.group(1)
            continue
        if folder is None or set(cells[0]) <= set("-"):
            continue
        name = cells[0]
        names = {name}
        if name.endswith(".c/.h"):
            names = {name[:-3], name[:-5] + ".h"}
        listed.setdefault(folder, set()).update(names)
    return listed


class Docs(unittest.TestCase):
    def test_file_map_lists_every_file(self):
        """docs/architecture.md's file map names every source file, and no
        file that is gone."""
        listed = file_map()
        for folder in ("include/rdmig", "util", "rdma", "transport", "engine", "tools"):
            real = {n for n in os.listdir(os.path.join(SRC, folder)) if n.endswith((".c", ".h"))}
            mapped = listed.get(folder, set())
            self.assertEqual(sorted(real - mapped), [], "%s: files missing from the map" % folder)
            self.assertEqual(sorted(mapped - real), [], "%s: the map names files that are gone"
                             % folder)


if __name__ == "__main__":
    BUILD, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    sys.exit(harness.run_tap(sys.argv[3:]))

# SPDX-License-Identifier: MIT
"""Shared helpers for the integration suite: real rdmig processes, real sockets.

Every test file runs as

    python3 test_X.py RDMIG_PATH [TestClass.test_name ...]

(the environment variable RDMIG, when set, overrides RDMIG_PATH).  meson
registers one test per case, so each shows up on its own.

What lives here:
  * RdmigProc: one rdmig process; stdout read by a thread (the JSON report is
    its last line), stderr into a file; killed in cleanup whatever happens.
  * RdmigTestCase: spawn(), start_recv(), migrate() and the assertions every
    migration test makes (completed on both sides, page-by-page verified, the
    destination guest intact).
  * Fake peers, written from the format comments in transport/control.h,
    engine/wire.c and transport/tcp.c: FakeControl/FakeSource (a hand-made
    source for a real `rdmig recv`) and FakeDestination (a hand-made
    destination for a real `rdmig send`, scripted to fail at chosen moments).

Nothing here waits without a bound: every read, connect and wait has a timeout.
"""
import fcntl
import ipaddress
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

RDMIG = None  # full path of the binary, set by main()

# ----------------------------------------------------------------- protocol constants

CONTROL_MAGIC = 0x52444D47  # "RDMG"
CONTROL_VERSION = 1
CONTROL_HEADER = struct.Struct(">IHHII")  # magic, version, type, length, seq
CONTROL_MAX_PAYLOAD = 16 << 20

HELLO_MAGIC = 0x524D4849  # "RMHI"
PROTOCOL_VERSION = 1

MSG_HELLO = 1
MSG_HELLO_ACK = 2
MSG_REGIONS = 3
MSG_ZERO = 4
MSG_ROUND_END = 5
MSG_ROUND_ACK = 6
MSG_DEVICE_STATE = 7
MSG_HASHES = 8
MSG_COMPLETE = 9
MSG_COMPLETE_ACK = 10
MSG_ERROR = 11
MSG_PING = 12
MSG_SOURCE_REGIONS = 13
MSG_DISCARD = 14
MSG_POSTCOPY_START = 15
MSG_POSTCOPY_RUNNING = 16
MSG_POSTCOPY_PREPARE = 17
MSG_POSTCOPY_PREPARED = 18
MSG_RESUME = 19
MSG_RECEIVED = 20
MSG_RECEIVED_END = 21
MSG_POSTCOPY_RESUME = 22
MSG_EPOCH = 23

FEATURE_VERIFY = 1 << 0
FEATURE_ZERO_PAGES = 1 << 1
FEATURE_MULTI_CONN = 1 << 2
FEATURE_KEEPALIVE = 1 << 3
FEATURE_POSTCOPY = 1 << 4
FEATURE_RECOVERY = 1 << 5

# rdmig error codes (include/rdmig/error.h), as sent in ERROR frames
ERROR_CODES = ["connect", "protocol", "version", "unsupported", "peer", "resource",
               "cancelled", "auth", "invalid", "layout", "converge", "verify", "link"]

# TCP data connection (transport/tcp.c): 32-byte header
TCP_MAGIC = 0x52445444  # "RDTD"
TCP_VERSION = 1
TCP_HDR = struct.Struct(">IBBHIIQQ")  # magic, type, flags, reserved, region, length, offset, seq
T_HELLO, T_PUT, T_GET, T_ACK, T_GET_RESP = 1, 2, 3, 4, 5

PAGE = 4096
MiB = 1 << 20

# Signs of a crash or of a broken invariant in a child's stderr.
CRASH_MARKERS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                 "runtime error:", "-CRITICAL **", "-ERROR **", "Segmentation fault",
                 "Aborted", "Traceback")


# The test oracle's file (tools/guest-oracle.h): the synthetic guest's own
# SHA-256 of every page, taken at the source's final stop and at the
# destination as the pages arrived.
ORACLE_HEAD = struct.Struct(">8sIIQQ")  # magic, version, page size, pages, lazily taken
ORACLE_MAGIC = b"RDMIGORC"
ORACLE_DIGEST = 32
ORACLE_REZEROED = 0x01


HUGE_PAGE = 2 * MiB
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def thp_enabled():
    """Whether anonymous memory advised MADV_HUGEPAGE gets transparent huge
    pages ([always] or [madvise] in sysfs)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def guest_pages_per_page(report):
    """The guest checks and records 4 KiB pages; RAM blocks of hugetlb
    memory have 2 MiB ones."""
    return HUGE_PAGE // PAGE if report["guest"]["memory"] == "hugetlb" else 1


def huge_pages_free():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def add_huge_pages(delta):
    """Adds @delta (or takes back, if negative) 2 MiB pages to the kernel's
    hugetlb pool, under a lock shared by everything that does; returns how
    many it changed by (the kernel may give fewer).  Root only."""
    with open("/tmp/rdmig-test-hugepages.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(NR_HUGEPAGES) as f:
            before = int(f.read())
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(max(before + delta, 0)))
        with open(NR_HUGEPAGES) as f:
            return int(f.read()) - before


def need_huge_pages(case, pages):
    """Makes @pages more 2 MiB pages free in the kernel's hugetlb pool for
    @case, and gives them back when it ends.  Adding, not topping up, under a
    lock: cases running at once each get their own.  Without root the pool
    is what it is: the case runs if enough is free and is skipped, saying
    so, if not."""
    if os.geteuid() != 0:
        if huge_pages_free() < pages:
            case.skipTest("needs %d free 2 MiB huge pages (HugePages_Free) or root to reserve "
                          "them (sysctl vm.nr_hugepages)" % pages)
        return
    got = add_huge_pages(pages)
    case.addCleanup(add_huge_pages, -got)
    if got < pages:
        case.fail("the kernel gave %d of %d huge pages asked for (vm.nr_hugepages): memory "
                  "too fragmented?" % (got, pages))


def read_oracle(path):
    """The oracle file at @path as a dict: page_size, pages, lazy, digests
    (pages x 32 bytes), flags (a byte per page)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < ORACLE_HEAD.size:
        raise AssertionError("oracle file %s is truncated (%d bytes)" % (path, len(data)))
    magic, version, page_size, pages, lazy = ORACLE_HEAD.unpack_from(data)
    if magic != ORACLE_MAGIC or version != 1:
        raise AssertionError("%s is not an oracle file (magic %r, version %d)" %
                             (path, magic, version))
    want = ORACLE_HEAD.size + pages * (ORACLE_DIGEST + 1)
    if len(data) != want:
        raise AssertionError("oracle file %s has %d bytes, %d pages need %d" %
                             (path, len(data), pages, want))
    off = ORACLE_HEAD.size
    return {"page_size": page_size, "pages": pages, "lazy": lazy,
            "digests": data[off:off + pages * ORACLE_DIGEST],
            "flags": data[off + pages * ORACLE_DIGEST:]}


def page_name(page, pages, blocks):
    """"pc.ram:N" or "ramK:N", as rdmig names the synthetic guest's blocks."""
    if blocks <= 1:
        return "pc.ram:%d" % page
    per = pages // blocks
    return "ram%d:%d" % (page // per, page % per)


def oracle_differences(src, dst, limit=16):
    """Pages whose digests differ, in order (at most @limit)."""
    a, b = src["digests"], dst["digests"]
    out = []
    if a == b:
        return out
    step = 4096 * ORACLE_DIGEST  # compare in slices, then page by page where they differ
    for base in range(0, len(a), step):
        if a[base:base + step] == b[base:base + step]:
            continue
        for off in range(base, min(base + step, len(a)), ORACLE_DIGEST):
            if a[off:off + ORACLE_DIGEST] != b[off:off + ORACLE_DIGEST]:
                out.append(off // ORACLE_DIGEST)
                if len(out) >= limit:
                    return out
    return out


def zero_page_digest(page_size):
    import hashlib
    return hashlib.sha256(bytes(page_size)).digest()


def parse_size(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = str(s)
    if s[-1].upper() in mul:
        return int(s[:-1]) * mul[s[-1].upper()]
    return int(s)


# ----------------------------------------------------------------- processes

class RdmigProc:
    """One rdmig process.  stdout lines go to a queue (and self.lines), stderr
    to a temporary file, so neither pipe can fill and block the child."""

    def __init__(self, args, name=None, env=None, wrapper=(), oracle_dir=None):
        args = list(args)
        if oracle_dir and args and args[0] in ("send", "recv", "demo") and \
                "--resume" not in args:
            args[1:1] = ["--oracle", oracle_dir]
        self.args = list(wrapper) + [RDMIG] + args
        self.name = name or (args[0] if args else "rdmig")
        self._err = tempfile.TemporaryFile()
        # The process shares this file's offset with us: without O_APPEND its
        # writes would land wherever our last read left the offset (stderr()
        # seeks to 0), overwriting what it printed before.
        fcntl.fcntl(self._err.fileno(), fcntl.F_SETFL,
                    fcntl.fcntl(self._err.fileno(), fcntl.F_GETFL) | os.O_APPEND)
        full_env = dict(os.environ)
        full_env.setdefault("G_DEBUG", "fatal-criticals")
        if env:
            full_env.update(env)
        self.t_start = time.monotonic()
        self.t_exit = None
        self.p = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=self._err, env=full_env)
        self.pid = self.p.pid
        self.lines = []
        self.raw_lines = []  # as printed, before decoding
        self._q = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in iter(self.p.stdout.readline, b""):
            self.raw_lines.append(raw)
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def next_line(self, timeout):
        """The next stdout line, or None if the process ended or @timeout passed."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def alive(self):
        return self.p.poll() is None

    def wait(self, timeout):
        """Exit status, or None (the process is then still running) after @timeout s."""
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self.t_exit is None:
            self.t_exit = time.monotonic()
        self._reader.join(timeout=5)
        return rc

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        """SIGKILL (after SIGCONT, in case it was stopped) and reap; idempotent."""
        if self.p.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._reader.join(timeout=5)
        try:
            self.p.stdout.close()
        except OSError:
            pass

    def close(self):
        """kill(), then release the stderr file."""
        self.kill()
        self._err.close()

    @property
    def returncode(self):
        return self.p.returncode

    def stderr(self):
        return self.stderr_bytes().decode("utf-8", "replace")

    def stderr_bytes(self):
        # pread: the shared offset is left alone.
        fd = self._err.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0)

    def stdout(self):
        return "\n".join(self.lines)

    def stdout_bytes(self):
        return b"".join(self.raw_lines)

    def reports(self):
        """Every JSON object printed on stdout, in order."""
        out = []
        for line in self.lines:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise AssertionError("%s printed invalid JSON (%s): %r" % (self.name, e, line))
        return out

    def report(self):
        r = self.reports()
        if not r:
            raise AssertionError("%s printed no JSON report\n%s" % (self.name, self.describe()))
        return r[-1]

    def describe(self):
        return ("--- %s (pid %d, exit %s): %s\n--- stdout:\n%s\n--- stderr:\n%s" %
                (self.name, self.pid, self.p.returncode, " ".join(self.args), self.stdout(),
                 self.stderr()[-6000:]))


# ----------------------------------------------------------------- guest memory from outside

class GuestMemory:
    """The synthetic guest's RAM in a running rdmig process, opened through
    /proc/PID/fd (with --memory memfd, "rdmig-guest"): the test reads and changes it
    from outside the process, as a fault in the memory or the network would."""

    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02

    def __init__(self, pid, timeout=15):
        self.fd = None
        deadline = time.monotonic() + timeout
        while self.fd is None:
            for name in os.listdir("/proc/%d/fd" % pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, name))
                except OSError:
                    continue
                if link.startswith("/memfd:rdmig-guest"):
                    self.fd = os.open("/proc/%d/fd/%s" % (pid, name), os.O_RDWR)
                    break
            if self.fd is None:
                if time.monotonic() > deadline:
                    raise AssertionError("process %d has no guest memfd" % pid)
                time.sleep(0.05)

    def read_page(self, page):
        return os.pread(self.fd, PAGE, page * PAGE)

    def flip_byte(self, page, offset=PAGE // 2):
        """Inverts one byte of @page: a bit error the engine must see."""
        b = os.pread(self.fd, 1, page * PAGE + offset)
        os.pwrite(self.fd, bytes([b[0] ^ 0xFF]), page * PAGE + offset)

    def punch(self, page):
        """Drops @page from the memory file: it reads as zero again, as if it
        had never been received."""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        if libc.fallocate(self.fd, self.FALLOC_FL_PUNCH_HOLE | self.FALLOC_FL_KEEP_SIZE,
                          page * PAGE, PAGE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "fallocate(PUNCH_HOLE): %s" % os.strerror(err))

    def first_nonzero(self, first, end):
        """The first page in [first, end) with contents, or None."""
        zero = bytes(PAGE)
        for p in range(first, end):
            if self.read_page(p) != zero:
                return p
        return None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------- two hosts

def _ip(*args, check=True):
    r = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=10)
    if check and r.returncode:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.decode().strip()))
    return r


class NetPair:
    """Two "hosts": this network namespace and a new one, joined by a veth
    pair (10.80.K.1 here, 10.80.K.2 there).  The link can be cut and restored
    and its rate from here capped (tbf), to make a migration last.  Removed by
    close(), whatever state it is in."""

    def __init__(self, rate=None):
        self.ns = None
        for k in range(os.getpid() % 200 + 20, 250):
            name = "rdmig-t%d" % k
            if _ip("netns", "add", name, check=False).returncode == 0:
                self.ns, self.k = name, k
                break
        if not self.ns:
            raise RuntimeError("no free network namespace name (rdmig-tNN)")
        self.here, self.there = "rv%da" % self.k, "rv%db" % self.k
        self.addr_here, self.addr_there = "10.80.%d.1" % self.k, "10.80.%d.2" % self.k
        try:
            _ip("link", "del", self.here, check=False)
            _ip("link", "add", self.here, "type", "veth", "peer", "name", self.there)
            _ip("link", "set", self.there, "netns", self.ns)
            _ip("addr", "add", self.addr_here + "/24", "dev", self.here)
            _ip("link", "set", self.here, "up")
            _ip("-n", self.ns, "addr", "add", self.addr_there + "/24", "dev", self.there)
            _ip("-n", self.ns, "link", "set", self.there, "up")
            _ip("-n", self.ns, "link", "set", "lo", "up")
            if rate:
                subprocess.run(["tc", "qdisc", "add", "dev", self.here, "root", "tbf", "rate", rate,
                                "burst", "64kbit", "latency", "400ms"], check=True, timeout=10)
        except Exception:
            self.close()
            raise

    @property
    def wrapper(self):
        """Prefix that runs a command on the other host."""
        return ("ip", "netns", "exec", self.ns)

    def down(self):
        _ip("link", "set", self.here, "down")

    def up(self):
        _ip("link", "set", self.here, "up")

    def close(self):
        if self.ns:
            _ip("link", "del", self.here, check=False)
            _ip("netns", "del", self.ns, check=False)
            self.ns = None


def is_loopback(address):
    """Whether "HOST:PORT" or "[V6]:PORT" is 127.0.0.0/8 or ::1 (or a name)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: rdmig resolves it and decides


def needs_insecure(args):
    """Whether rdmig @args (send or recv) name an address that is not
    loopback and lack --insecure."""
    if not args or args[0] not in ("send", "recv") or "--insecure" in args:
        return False
    if any(a.split("=")[0] in ("--psk-file", "--tls-creds") for a in args):
        return False  # credentials are what make such an address allowed
    return any(a in ("--to", "--listen") and i + 1 < len(args) and
               not is_loopback(args[i + 1]) for i, a in enumerate(args))


def monitor_exchange(path, request, timeout=10):
    """Sends the bytes @request on one connection to the monitor at @path,
    closes the sending side, and returns what came back up to and with the
    first newline (or all of it, if none came)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect(path)
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def thread_stacks(proc):
    """Where each thread of a process that is still running waits (gdb's
    backtraces), for the message of a case that found it stuck; "" when
    there is no such process or no gdb."""
    gdb = shutil.which("gdb")
    if proc is None or not proc.alive() or not gdb:
        return ""
    try:
        out = subprocess.run([gdb, "-p", str(proc.p.pid), "-batch", "-nx", "-ex",
                              "thread apply all bt"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return "\n--- %s threads: gdb failed: %s" % (proc.name, e)
    keep = [ln for ln in out.splitlines() if ln.startswith(("Thread ", "#"))]
    return "\n--- %s threads (gdb):\n%s" % (proc.name, "\n".join(keep))


def monitor(path, cmd, timeout=10, **args):
    """One command to a running send/recv's monitor socket (tools/rdmig-monitor.h):
    sends {"execute": @cmd, "arguments": @args} (no "arguments" when @args
    is empty) as one line and returns the reply, parsed: {"return": {...}}
    or {"error": {"class": ..., "desc": ...}}.  Raises OSError if the
    socket cannot be reached within @timeout or says nothing, ValueError if
    the reply is not one JSON object on a line."""
    request = {"execute": cmd}
    if args:
        request["arguments"] = args
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = monitor_exchange(path, (json.dumps(request) + "\n").encode(), timeout)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if not data:
        raise OSError("no reply from the monitor at %s to %r" % (path, request))
    reply = json.loads(data.decode())
    if not isinstance(reply, dict) or ("return" in reply) == ("error" in reply):
        raise ValueError("the monitor at %s replied %r to %r" % (path, reply, request))
    return reply


def monitor_status(path):
    """The state of a running send/recv (the "return" of its status
    command), or None once it has gone."""
    try:
        return monitor(path, "status", timeout=2).get("return")
    except (OSError, ValueError):
        return None


def wait_state(mon, states, timeout, proc=None):
    """Polls the monitor @mon until it reports one of @states.  Returns
    (status, last status seen); status is None if @proc exited first or the
    time ran out."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        st = monitor_status(mon)
        if st:
            last = st
            if st["state"] in states:
                return st, last
        elif proc is not None and not proc.alive():
            break
        time.sleep(0.03)
    return None, last


# ----------------------------------------------------------------- fake peer

def frame(mtype, payload=b"", seq=0, magic=CONTROL_MAGIC, version=CONTROL_VERSION, length=None):
    if length is None:
        length = len(payload)
    return CONTROL_HEADER.pack(magic, version, mtype, length, seq) + payload


def str8(s):
    b = s.encode()
    return struct.pack(">B", len(b)) + b


def str16(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def hello_payload(blocks, version=PROTOCOL_VERSION,
                  supported=FEATURE_VERIFY | FEATURE_ZERO_PAGES, required=0, connections=1,
                  transports=("tcp",), session_id=b"integration-test"):
    """HELLO as engine/wire.c encodes it; @blocks: [(name, length, page_size)]."""
    p = struct.pack(">IHHQQ", HELLO_MAGIC, version, 0, supported, required)
    p += session_id[:16].ljust(16, b"\0")
    p += struct.pack(">II", connections, len(transports))
    for t in transports:
        p += str8(t)
    p += struct.pack(">I", len(blocks))
    for name, length, page_size in blocks:
        p += str8(name) + struct.pack(">QI", length, page_size)
    return p


class Reader:
    def __init__(self, data, what):
        self.d, self.off, self.what = data, 0, what

    def take(self, fmt):
        n = struct.calcsize(fmt)
        if self.off + n > len(self.d):
            raise AssertionError("%s payload truncated at offset %d" % (self.what, self.off))
        v = struct.unpack_from(fmt, self.d, self.off)
        self.off += n
        return v if len(v) > 1 else v[0]

    def bytes(self, n):
        if self.off + n > len(self.d):
            raise AssertionError("%s payload truncated at offset %d" % (self.what, self.off))
        v = self.d[self.off:self.off + n]
        self.off += n
        return v

    def str8(self):
        return self.bytes(self.take(">B")).decode("utf-8", "replace")

    def str16(self):
        return self.bytes(self.take(">H")).decode("utf-8", "replace")


def parse_hello_ack(p):
    r = Reader(p, "HELLO_ACK")
    a = {"version": r.take(">H"), "supported": r.take(">Q"), "enabled": r.take(">Q"),
         "connections": r.take(">I"), "transport": r.str8(), "data_address": r.str16(),
         "token": r.take(">Q")}
    assert r.off == len(p), "HELLO_ACK has trailing bytes"
    return a


def parse_regions(p):
    """[(region id, region length)] for TCP keys (u32 id, u64 length)."""
    r = Reader(p, "REGIONS")
    out = []
    for _ in range(r.take(">I")):
        key = r.bytes(r.take(">B"))
        assert len(key) == 12, "TCP remote key of %d bytes" % len(key)
        out.append(struct.unpack(">IQ", key))
    return out


def parse_error(p):
    r = Reader(p, "ERROR")
    code = r.take(">I")
    msg = r.str16()
    return (ERROR_CODES[code] if code < len(ERROR_CODES) else str(code)), msg


def split_address(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def connect(addr, timeout=10):
    s = socket.create_connection(split_address(addr), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(sock, n, timeout):
    """@n bytes, or fewer if the peer closed first (or reset), within @timeout s."""
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out after %.1f s waiting for %d bytes (got %d)" %
                                 (timeout, n, len(buf)))
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return buf
        if not chunk:
            return buf
        buf += chunk
    return buf


def wait_closed(sock, timeout):
    """True if the peer closes (or resets) @sock within @timeout s; data is discarded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def send_quietly(sock, data):
    """Sends what the peer will take; a peer that hung up is not our failure."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        return False


class FakeControl:
    """The source end of a control channel, speaking frames by hand."""

    def __init__(self, addr, timeout=10):
        self.sock = connect(addr, timeout)
        self.seq = 0
        self.rx_seq = 0

    def send(self, mtype, payload=b""):
        self.sock.sendall(frame(mtype, payload, self.seq))
        self.seq += 1

    def recv(self, timeout=10, skip_ping=True):
        """(type, payload), or None if the peer closed the channel."""
        while True:
            h = recv_exact(self.sock, CONTROL_HEADER.size, timeout)
            if len(h) < CONTROL_HEADER.size:
                return None
            magic, version, mtype, length, seq = CONTROL_HEADER.unpack(h)
            assert magic == CONTROL_MAGIC, "bad magic 0x%08x from rdmig" % magic
            assert version == CONTROL_VERSION, "frame version %d from rdmig" % version
            assert seq == self.rx_seq, "rdmig sent seq %d, expected %d" % (seq, self.rx_seq)
            assert length <= CONTROL_MAX_PAYLOAD, "rdmig sent a %d-byte frame" % length
            self.rx_seq += 1
            payload = recv_exact(self.sock, length, timeout)
            assert len(payload) == length, "rdmig closed in the middle of a frame"
            if mtype == MSG_PING and skip_ping:
                continue
            return mtype, payload

    def recv_error(self, timeout=10):
        """Reads until an ERROR frame; returns (code name, message) or None on close."""
        while True:
            f = self.recv(timeout)
            if f is None:
                return None
            if f[0] == MSG_ERROR:
                return parse_error(f[1])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class FakeSource:
    """A hand-made source: HELLO matching the destination's layout, HELLO_ACK,
    REGIONS, then data connections presenting the token."""

    def __init__(self, addr, blocks, **hello_kw):
        self.addr = addr
        self.blocks = blocks
        self.ctl = FakeControl(addr)
        self.ctl.send(MSG_HELLO, hello_payload(blocks, **hello_kw))
        f = self.ctl.recv()
        assert f is not None, "destination closed the control channel after HELLO"
        assert f[0] == MSG_HELLO_ACK, "expected HELLO_ACK, got type %d" % f[0]
        self.ack = parse_hello_ack(f[1])
        f = self.ctl.recv()
        assert f is not None and f[0] == MSG_REGIONS, "expected REGIONS, got %r" % (f,)
        self.regions = parse_regions(f[1])
        assert len(self.regions) == len(blocks)
        self.data = []

    def data_connect(self, token=None, version=TCP_VERSION):
        s = connect(self.ack["data_address"])
        tok = self.ack["token"] if token is None else token
        s.sendall(TCP_HDR.pack(TCP_MAGIC, T_HELLO, 0, 0, 0, version, tok, 0))
        self.data.append(s)
        return s

    def close(self):
        for s in self.data:
            try:
                s.close()
            except OSError:
                pass
        self.ctl.close()


def tcp_put_header(region, length, offset, seq):
    return TCP_HDR.pack(TCP_MAGIC, T_PUT, 0, 0, region, length, offset, seq)


def parse_hello(p):
    r = Reader(p, "HELLO")
    h = {"magic": r.take(">I"), "version": r.take(">H")}
    r.take(">H")
    h["supported"], h["required"] = r.take(">Q"), r.take(">Q")
    h["session_id"] = r.bytes(16)
    h["connections"] = r.take(">I")
    h["transports"] = [r.str8() for _ in range(r.take(">I"))]
    h["blocks"] = []
    for _ in range(r.take(">I")):
        name = r.str8()
        h["blocks"].append((name, r.take(">Q"), r.take(">I")))
    return h


class FakeDestination:
    """A hand-made destination for a real `rdmig send`: it listens, answers the
    handshake, takes PUTs on its data connections (acknowledging each, writing
    nothing anywhere), acknowledges rounds, and then does what the test asked.

    @script(event, fake) is called from the control thread on "handshake",
    "put" (first PUT only), "round_end", "complete"; it returns True when it
    has handled the event itself (the default answer is then not sent).
    Everything runs on daemon threads and stops at close()."""

    def __init__(self, script=None, ack_overrides=None, regions_override=None):
        self.script = script or (lambda event, fake: False)
        self.ack_overrides = ack_overrides or {}
        self.regions_override = regions_override
        self.ctl_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ctl_listener.bind(("127.0.0.1", 0))
        self.ctl_listener.listen(4)
        self.data_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.data_listener.bind(("127.0.0.1", 0))
        self.data_listener.listen(16)
        self.address = "127.0.0.1:%d" % self.ctl_listener.getsockname()[1]
        self.token = 0x0123456789ABCDEF
        self.hello = None
        self.ctl = None
        self.data = []
        self.events = []        # what happened, in order, for failure messages
        self.error = None       # an exception in a fake thread
        self.stop = threading.Event()
        self.first_put = threading.Event()
        self.lock = threading.Lock()
        self.tx_seq = 0
        self.rx_seq = 0
        self.threads = [threading.Thread(target=self._control, daemon=True)]
        self.threads[0].start()

    # -- control channel, on its own thread
    def send(self, mtype, payload=b""):
        with self.lock:
            self.ctl.sendall(frame(mtype, payload, self.tx_seq))
            self.tx_seq += 1

    def _recv_frame(self):
        h = recv_exact(self.ctl, CONTROL_HEADER.size, 60)
        if len(h) < CONTROL_HEADER.size:
            return None
        magic, version, mtype, length, seq = CONTROL_HEADER.unpack(h)
        assert magic == CONTROL_MAGIC and version == CONTROL_VERSION, "bad frame from source"
        assert seq == self.rx_seq, "source frame seq %d, expected %d" % (seq, self.rx_seq)
        self.rx_seq += 1
        payload = recv_exact(self.ctl, length, 60)
        assert len(payload) == length, "source closed mid-frame"
        return mtype, payload

    def _control(self):
        try:
            self.ctl_listener.settimeout(30)
            self.ctl, _ = self.ctl_listener.accept()
            f = self._recv_frame()
            assert f and f[0] == MSG_HELLO, "source did not open with HELLO"
            self.hello = parse_hello(f[1])
            self.events.append("hello")
            ack = {"version": PROTOCOL_VERSION,
                   "supported": FEATURE_VERIFY | FEATURE_ZERO_PAGES | FEATURE_MULTI_CONN,
                   "connections": self.hello["connections"], "transport": "tcp",
                   "data_address": "127.0.0.1:%d" % self.data_listener.getsockname()[1],
                   "token": self.token}
            ack["enabled"] = ack["supported"] & self.hello["supported"]
            ack.update(self.ack_overrides)
            self.send(MSG_HELLO_ACK, struct.pack(">HQQI", ack["version"], ack["supported"],
                                                 ack["enabled"], ack["connections"])
                      + str8(ack["transport"]) + str16(ack["data_address"])
                      + struct.pack(">Q", ack["token"]))
            blocks = self.hello["blocks"]
            regions = self.regions_override if self.regions_override is not None else [
                (i, b[1]) for i, b in enumerate(blocks)]
            p = struct.pack(">I", len(regions))
            for rid, length in regions:
                p += struct.pack(">BIQ", 12, rid, length)
            self.send(MSG_REGIONS, p)
            self.regions = dict(regions)
            t = threading.Thread(target=self._accept_data, args=(ack["connections"],),
                                 daemon=True)
            t.start()
            self.threads.append(t)
            if self.script("handshake", self):
                return
            while not self.stop.is_set():
                f = self._recv_frame()
                if f is None:
                    self.events.append("control closed by the source")
                    return
                mtype, payload = f
                if mtype == MSG_ROUND_END:
                    self.events.append("round_end %d" % struct.unpack(">Q", payload)[0])
                    if not self.script("round_end", self):
                        self.send(MSG_ROUND_ACK, payload)
                elif mtype == MSG_COMPLETE:
                    self.events.append("complete")
                    if not self.script("complete", self):
                        self.complete_ack(None, 0, 0, "")
                elif mtype == MSG_ERROR:
                    self.events.append("error from source: %r" % (parse_error(payload),))
                else:
                    self.events.append("msg %d" % mtype)
        except Exception as e:  # noqa: BLE001 - reported by the test
            if not self.stop.is_set():
                self.error = e

    def complete_ack(self, code, verified, mismatches, message):
        """COMPLETE_ACK; @code None for success, else an error code name (the
        status on the wire is 1 + the RdmigErrorCode, so that 0 means completed)."""
        status = 0 if code is None else 1 + ERROR_CODES.index(code)
        self.send(MSG_COMPLETE_ACK, struct.pack(">IQQQ", status, verified, mismatches, 1000)
                  + str16(message))

    # -- data connections, one thread each
    def _accept_data(self, n):
        try:
            self.data_listener.settimeout(30)
            for _ in range(n):
                c, _ = self.data_listener.accept()
                self.data.append(c)
                t = threading.Thread(target=self._data, args=(c,), daemon=True)
                t.start()
                self.threads.append(t)
        except Exception as e:  # noqa: BLE001
            if not self.stop.is_set():
                self.error = e

    def _data(self, c):
        try:
            h = recv_exact(c, TCP_HDR.size, 30)
            magic, typ, _, _, _, version, token, _ = TCP_HDR.unpack(h)
            assert (magic, typ, version, token) == (TCP_MAGIC, T_HELLO, TCP_VERSION, self.token), \
                "bad data hello from the source"
            buf = bytearray(4 << 20)
            while not self.stop.is_set():
                h = recv_exact(c, TCP_HDR.size, 60)
                if len(h) < TCP_HDR.size:
                    return
                magic, typ, _, _, region, length, offset, seq = TCP_HDR.unpack(h)
                assert magic == TCP_MAGIC and typ == T_PUT, "source sent data frame type %d" % typ
                assert region in self.regions and offset + length <= self.regions[region], \
                    "source wrote out of range: region %d offset %d length %d" % (
                        region, offset, length)
                view = memoryview(buf)
                left = length
                while left:
                    got = c.recv_into(view[:min(left, len(buf))])
                    if not got:
                        return
                    left -= got
                if not self.first_put.is_set():
                    self.first_put.set()
                    self.events.append("first put")
                    if self.script("put", self):
                        continue
                c.sendall(TCP_HDR.pack(TCP_MAGIC, T_ACK, 0, 0, 0, 0, 0, seq))
        except (OSError, AssertionError) as e:
            if not self.stop.is_set() and not isinstance(e, (ConnectionResetError,
                                                              BrokenPipeError)):
                self.error = e

    def close_all(self):
        """Closes every socket at once, as a process exiting would."""
        for s in self.data + [self.ctl]:
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.close_all()
        for s in self.data + [self.ctl, self.ctl_listener, self.data_listener]:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


# ----------------------------------------------------------------- test case base

class RdmigTestCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.procs = []
        self.oracle_root = tempfile.mkdtemp(prefix="rdmig-oracle-")

    def tearDown(self):
        for p in self.procs:
            p.close()
        shutil.rmtree(self.oracle_root, ignore_errors=True)

    def spawn(self, *args, name=None, env=None, wrapper=(), oracle=True, auto_insecure=True):
        """An rdmig process.  send, recv and demo get an --oracle directory of
        their own (@oracle=False: none), so that every completed migration can
        be checked against the guest's own record (assert_verified).  An
        address that is not loopback gets --insecure (@auto_insecure=False:
        as typed)."""
        odir = None
        if oracle:
            odir = tempfile.mkdtemp(dir=self.oracle_root)
            os.chmod(odir, 0o777)  # a process run in another namespace as root still writes
        args = [str(a) for a in args]
        if auto_insecure and needs_insecure(args):
            # Namespaces and the VM's hosts are not loopback: rdmig refuses
            # them without credentials or --insecure; test_cli checks that
            # refusal, test_tls the credentials.
            args.append("--insecure")
        p = RdmigProc(args, name=name, env=env, wrapper=wrapper, oracle_dir=odir)
        self.procs.append(p)
        return p

    def start_recv(self, *args, guest=(), name="recv", wrapper=()):
        """rdmig recv on 127.0.0.1:0; returns (proc, bound address)."""
        p = self.spawn("recv", "--listen", "127.0.0.1:0", "--print-address", "--json", "--quiet",
                       *guest, *args, name=name, wrapper=wrapper)
        addr = p.next_line(timeout=15)
        if not addr or ":" not in addr:
            p.wait(5)
            self.fail("recv did not print its address (got %r)\n%s" % (addr, p.describe()))
        return p, addr.strip()

    def start_send(self, addr, *args, guest=(), quiet=True, name="send"):
        extra = ["--quiet"] if quiet else []
        return self.spawn("send", "--to", addr, "--json", *extra, *guest, *args, name=name)

    def finish(self, proc, timeout, ctx=None):
        """Waits for @proc, failing (with its output, or with @ctx: a callable
        that describes every process of the case, and with its threads'
        stacks) if it does not exit in time."""
        rc = proc.wait(timeout)
        if rc is None:
            stacks = thread_stacks(proc)
            proc.kill()
            self.fail("%s did not exit within %.0f s\n%s%s" % (proc.name, timeout,
                                                                ctx() if ctx else proc.describe(),
                                                                stacks))
        self.assert_no_crash(proc)
        return rc

    def migrate(self, guest=(), send_args=(), recv_args=(), timeout=60):
        """A whole migration; returns (source report, destination report)."""
        recv, addr = self.start_recv(*recv_args, guest=guest)
        send = self.start_send(addr, *send_args, guest=guest)
        both = lambda: "\n%s\n%s" % (send.describe(), recv.describe())  # noqa: E731
        src_rc = self.finish(send, timeout, ctx=both)
        dst_rc = self.finish(recv, 30, ctx=both)
        src, dst = send.report(), recv.report()
        ctx = "\n%s\n%s" % (send.describe(), recv.describe())
        self.assertEqual(src_rc, 0, "source exit status" + ctx)
        self.assertEqual(dst_rc, 0, "destination exit status" + ctx)
        self.assert_verified(src, dst, ctx)
        return src, dst

    # -------------------------------------------------------------- assertions

    def assert_no_crash(self, proc):
        rc = proc.returncode
        self.assertIsNotNone(rc, "%s still running" % proc.name)
        self.assertGreaterEqual(rc, 0, "%s was killed by signal %d\n%s" %
                                (proc.name, -rc if rc < 0 else 0, proc.describe()))
        self.assertIn(rc, (0, 1, 2, 3), "%s exit status %d is none of 0/1/2/3\n%s" %
                      (proc.name, rc, proc.describe()))
        err = proc.stderr()
        for m in CRASH_MARKERS:
            self.assertNotIn(m, err, "%s stderr shows %r\n%s" % (proc.name, m, proc.describe()))

    def assert_verified(self, src, dst, ctx=""):
        """Completed on both sides, every page verified, the guest intact at its new home."""
        self.assertEqual(src["role"], "source")
        self.assertEqual(dst["role"], "destination")
        for r in (src, dst):
            self.assertEqual(r["result"], "completed", "%s result%s" % (r["role"], ctx))
            # Every hook ran on a thread the session announced (thread_start),
            # as QEMU needs for its RCU registration.
            self.assertEqual(r["hooks_off_thread"], 0, "%s hooks_off_thread%s" % (r["role"], ctx))
            self.assertEqual(r["hooks_unpaired"], 0, "%s hooks_unpaired%s" % (r["role"], ctx))
            self.assertGreaterEqual(r["hook_threads"], 1, "%s hook_threads%s" % (r["role"], ctx))
            self.assertEqual(r["error"], "", "%s error%s" % (r["role"], ctx))
            self.assertEqual(r["verify_mismatches"], 0, "%s verify_mismatches%s" % (r["role"], ctx))
        self.assertGreater(dst["pages_total"], 0, ctx)
        self.assertEqual(dst["pages_total"], src["pages_total"], "pages_total differ" + ctx)
        self.assertEqual(dst["pages_verified"], dst["pages_total"],
                         "destination verified only some pages" + ctx)
        self.assertEqual(src["pages_verified"], src["pages_total"],
                         "source was told only some pages were verified" + ctx)
        g = dst["guest"]
        self.assertTrue(g["checked"], "destination guest not checked" + ctx)
        self.assertTrue(g["intact"], "destination guest corrupt" + ctx)
        self.assertEqual(g["pages_bad"], 0, "destination guest has bad pages" + ctx)
        self.assertEqual(g["pages_checked"], dst["pages_total"] * guest_pages_per_page(dst), ctx)
        self.assertTrue(g["running"], "destination guest not running" + ctx)
        self.assert_oracle(src, dst, ctx)

    def assert_oracle(self, src, dst, ctx=""):
        """The independent witness: the source guest's SHA-256 of every page at
        its final stop equals the destination guest's, taken as the pages
        arrived.  Returns both records."""
        for r in (src, dst):
            self.assertTrue(r.get("oracle"), "%s wrote no oracle record%s" % (r["role"], ctx))
        a, b = read_oracle(src["oracle"]), read_oracle(dst["oracle"])
        self.assertEqual((a["page_size"], a["pages"]), (b["page_size"], b["pages"]),
                         "the oracle records describe different RAM" + ctx)
        self.assertEqual(a["pages"], src["pages_total"] * guest_pages_per_page(src), ctx)
        bad = oracle_differences(a, b)
        blocks = src.get("blocks", 1)
        if bad:
            self.fail("the destination's memory differs from the source's by the guest's own "
                      "SHA-256, first at %s%s" %
                      (", ".join(page_name(p, a["pages"], blocks) for p in bad), ctx))
        return a, b

    def assert_rezeroed_arrived_zero(self, src, dst, ctx=""):
        """Pages the source guest zeroed after writing them (--rezero-percent)
        are zero at the destination: checked by content, not by counters."""
        a, b = self.assert_oracle(src, dst, ctx)
        zero = zero_page_digest(a["page_size"])
        pages = [p for p in range(a["pages"]) if a["flags"][p] & ORACLE_REZEROED and
                 a["digests"][p * ORACLE_DIGEST:(p + 1) * ORACLE_DIGEST] == zero]
        self.assertGreater(len(pages), 0, "no page was zero at the stop after the guest "
                           "re-zeroed it: the case did not happen" + ctx)
        for p in pages:
            self.assertEqual(b["digests"][p * ORACLE_DIGEST:(p + 1) * ORACLE_DIGEST], zero,
                             "re-zeroed page %d is not zero at the destination%s" % (p, ctx))
        return len(pages)

    def assert_source_guest_safe(self, src, ctx=""):
        """After a failure or cancel, the guest runs on at the source, untouched."""
        g = src["guest"]
        self.assertTrue(g["checked"], "source guest not checked" + ctx)
        self.assertTrue(g["intact"], "source guest corrupt after the failure" + ctx)
        self.assertEqual(g["pages_bad"], 0, ctx)
        self.assertTrue(g["running"], "source guest not running after the failure" + ctx)
        self.assertEqual(src["hooks_unpaired"], 0, "a dirty-log hook without start" + ctx)

    def tamper_midway(self, recv, mem, tamper, timeout=30):
        """Waits until the destination @recv holds the pages of its first
        4 MiB (data has arrived from 8 MiB on: one connection fills RAM in
        page order), then applies @tamper(mem, page) to the first page there
        with contents, through @mem (a GuestMemory).  Returns that page."""
        early, later = 1024, 2048
        deadline = time.monotonic() + timeout
        while mem.first_nonzero(later, 2 * later) is None:
            if time.monotonic() > deadline or not recv.alive():
                self.fail("no page arrived at the destination\n" + recv.describe())
            time.sleep(0.02)
        page = mem.first_nonzero(0, early)
        self.assertIsNotNone(page, "no page with contents in the first 4 MiB")
        tamper(mem, page)
        return page

    def assert_verify_caught(self, src, dst, src_rc, dst_rc, name, ctx=""):
        """A migration with one page changed at the destination: failed on
        both sides with a verification error that names the page @name, the
        destination guest never run, the source guest running intact."""
        self.assertEqual((src_rc, dst_rc), (1, 1), "a changed page was not a failure" + ctx)
        for r in (src, dst):
            self.assertEqual(r["result"], "failed", "%s result%s" % (r["role"], ctx))
            self.assertEqual(r["error_code"], "verify", "%s error code%s" % (r["role"], ctx))
            self.assertIn(name, r["error"], "%s does not name the page%s" % (r["role"], ctx))
            self.assertEqual(r["verify_mismatches"], 1, "%s counts another number of bad "
                             "pages%s" % (r["role"], ctx))
        self.assertFalse(dst["guest"]["checked"], "the destination ran a guest whose memory "
                         "failed verification" + ctx)
        self.assert_source_guest_safe(src, ctx)

    def wait_monitor(self, mon, states, timeout, proc=None, ctx=""):
        """Waits until the monitor socket @mon reports one of @states; returns
        the status.  Fails if @proc exits first or the time runs out, with
        @ctx (a string, or a callable called then)."""
        st, last = wait_state(mon, states, timeout, proc)
        if st:
            return st
        if proc is not None and last and last.get("state") in ("failed", "cancelled"):
            proc.wait(5)  # its report says why: let it print it
        text = ctx() if callable(ctx) else ctx  # a callable describes the case as it is now
        self.fail("%s never reached %s (last: %s)%s%s" % (mon, states, last, text,
                                                           thread_stacks(proc)))

    def assert_refused_and_listening(self, recv, ctx=""):
        """The destination @recv refused a source (it says so on stderr) and
        listens on: a source it cannot take must not end it.  Then it is
        cancelled (SIGINT: exit 3, guest never run).  Returns the refusal's
        line."""
        self.wait_for_stderr(recv, "refused a source", 15)
        line = next(ln for ln in recv.stderr().splitlines() if "refused a source" in ln)
        self.assertTrue(recv.alive(), "the destination ended after a refusal" + ctx)
        recv.signal(signal.SIGINT)
        rc = self.finish(recv, 15)
        rep = recv.report()
        ctx = "\n%s%s" % (recv.describe(), ctx)
        self.assertEqual(rc, 3, ctx)
        self.assertEqual(rep["result"], "cancelled", ctx)
        self.assertFalse(rep["guest"]["checked"], ctx)
        return line

    def wait_for_stderr(self, proc, text, timeout):
        """Waits until @text appears in @proc's stderr (e.g. a progress line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in proc.stderr():
                return
            if not proc.alive():
                break
            time.sleep(0.05)
        self.fail("%r never appeared in %s stderr\n%s" % (text, proc.name, proc.describe()))


# ----------------------------------------------------------------- entry point

def main():
    global RDMIG
    args = sys.argv[1:]
    path = None
    if args and ("/" in args[0] or os.path.exists(args[0])):
        path = args.pop(0)
    if os.environ.get("RDMIG"):
        path = os.environ["RDMIG"]
        # meson points LD_LIBRARY_PATH at its own build; a binary from another
        # build (say, a sanitizer one) must find its own librdmig via RUNPATH.
        os.environ.pop("LD_LIBRARY_PATH", None)
    if not path:
        sys.stderr.write("usage: %s RDMIG_PATH [TestClass.test_name ...] (or set RDMIG)\n"
                         % sys.argv[0])
        sys.exit(2)
    if not os.access(path, os.X_OK):
        sys.stderr.write("rdmig binary %r is not executable\n" % path)
        sys.exit(1)
    RDMIG = os.path.abspath(path)
    sys.exit(run_tap(args))


def skip_all(reason):
    """The whole program skips (TAP's "1..0 # SKIP"), saying why."""
    print("1..0 # SKIP %s" % reason.replace("\n", " "))
    sys.exit(0)


def _flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t


class Terminated(Exception):
    pass


_TERMINATED = []


def _terminated(signum, frame):
    _TERMINATED.append(signum)
    raise Terminated("terminated by signal %d (the test's timeout?)" % signum)


def run_tap(names):
    """Runs the named cases (all of __main__'s when none) and reports each as a
    TAP line on stdout, skips with their reason, so that meson and
    scripts/test.sh count every case; failures' tracebacks go to stderr.
    Returns the exit status."""
    loader = unittest.TestLoader()
    main_mod = sys.modules["__main__"]
    suite = (loader.loadTestsFromNames(names, main_mod) if names
             else loader.loadTestsFromModule(main_mod))
    tests = list(_flatten(suite))
    # meson ends a test that runs over its timeout with SIGTERM: raised as an
    # error inside the case, it is reported with where the case was waiting,
    # and its cleanups still run (processes killed, qdiscs removed) so that
    # the cases after it start on a clean link.
    signal.signal(signal.SIGTERM, _terminated)
    print("1..%d" % len(tests), flush=True)
    failed = 0
    for i, t in enumerate(tests, 1):
        name = t.id().split(".", 1)[-1]
        doc = (t.shortDescription() or "").replace("#", "").strip()
        sys.stderr.write("--- %s%s\n" % (name, ": " + doc if doc else ""))
        r = unittest.TestResult()
        t0 = time.monotonic()
        t.run(r)
        took = time.monotonic() - t0
        if r.errors or r.failures:
            failed += 1
            for _, tb in r.errors + r.failures:
                sys.stderr.write(tb)
            if _TERMINATED and hasattr(t, "ctx"):
                try:
                    sys.stderr.write(t.ctx() + "\n")
                except Exception as e:  # the context of a case cut short may be incomplete
                    sys.stderr.write("(no context: %s)\n" % e)
            print("not ok %d - %s" % (i, name), flush=True)
        elif r.skipped:
            reason = " ".join(str(r.skipped[0][1]).split())
            sys.stderr.write("SKIP %s: %s\n" % (name, reason))
            print("ok %d - %s # SKIP %s" % (i, name, reason), flush=True)
        else:
            print("ok %d - %s" % (i, name), flush=True)
        sys.stderr.write("--- %s: %s in %.1f s\n" % (name, "failed" if r.errors or r.failures
                                                     else "done", took))
    return 1 if failed else 0

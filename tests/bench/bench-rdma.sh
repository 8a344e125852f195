#!/bin/bash
# RDMA precopy over soft-RoCE next to perftest on the same pair of devices,
# and the same guest over TCP, in one run.  Runs inside the VM of tests/rxe:
#
#   tests/rxe/run --timeout 900 -- tests/bench/bench-rdma.sh [SIZE] [REG_SIZE]
#   defaults: 128M (migrations), 512M (registration time)
#
# Prints Markdown for docs/BENCHMARKS.md.  Each migration starts a fresh
# `rdmig recv --prealloc` on host B and an `rdmig send` toward it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RDMIG=${RDMIG:-build/tools/rdmig}
SIZE=${1:-128M}
REG_SIZE=${2:-512M}
: "${RXE_A_DEV:?run me through tests/rxe/run}"
PORT=7300
tmp=$(mktemp -d)
trap 'pkill -f "rdmig recv --insecure --listen" 2>/dev/null || true; rm -rf "$tmp"' EXIT

# perftest reports MB/sec in units of 2^20 bytes.
write_bw() { # $1: queue pairs
	ib_write_bw -d "$RXE_B_DEV" -s 262144 -q "$1" -D 5 -F -p $((PORT + 50)) >/dev/null 2>&1 &
	sleep 1
	ib_write_bw -d "$RXE_A_DEV" -s 262144 -q "$1" -D 5 -F -p $((PORT + 50)) "$RXE_B_IP" 2>&1 |
		awk '$1 == 262144 { print $4 }'
	wait
}

migrate() { # $1 transport, $2 connections, $3 size, $4 blocks, [$5 option for both]
	PORT=$((PORT + 1))
	$RDMIG recv --insecure --listen "$RXE_B_IP:$PORT" --ram-size "$3" --blocks "$4" --transport "$1" \
		--prealloc --json --quiet --run-after-ms 0 ${5:-} > "$tmp/recv.json" 2>"$tmp/recv.err" &
	local rpid=$!
	for _ in $(seq 200); do
		ss -ltn "sport = :$PORT" | grep -q LISTEN && break
		sleep 0.1
	done
	$RDMIG send --insecure --to "$RXE_B_IP:$PORT" --ram-size "$3" --blocks "$4" --transport "$1" \
		--connections "$2" --json --quiet ${5:-} > "$tmp/send.json" 2>"$tmp/send.err" || true
	wait $rpid || true
	tail -n1 "$tmp/send.json"
	tail -n1 "$tmp/recv.json"
}

echo "ib_write_bw, 256 KiB writes, 5 s: 1 QP $(write_bw 1) MiB/s, 2 QPs $(write_bw 2) MiB/s"
echo
{
	# --no-verify: without the source's page hashing, which in this VM
	# (XXH3 at ~35 MB/s under TCG) competes with rxe for the two vCPUs.
	for t in "rdma 1" "rdma 2" "rdma 1 --no-verify" "rdma 2 --no-verify" "tcp 1" "tcp 2"; do
		set -- $t
		echo "RUN $1 $2 $SIZE 1 ${3:-}"
		migrate "$1" "$2" "$SIZE" 1 "${3:-}"
	done
	for blocks in 1 2; do
		echo "RUN rdma 1 $REG_SIZE $blocks"
		migrate rdma 1 "$REG_SIZE" "$blocks"
	done
} > "$tmp/all"
python3 - "$tmp/all" <<'PY'
import json, sys
runs, cur = [], None
for line in open(sys.argv[1]):
    if line.startswith("RUN "):
        cur = {"args": line.split()[1:]}
        runs.append(cur)
        continue
    try:
        d = json.loads(line)
    except ValueError:
        continue
    cur[d.get("role", "?")] = d
Mi, Gi = 2**20, 2**30
def ok(r):
    s, d = r.get("source", {}), r.get("destination", {})
    if s.get("result") == "completed" and d.get("result") == "completed" and not d.get("pages_verified"):
        return "completed (--no-verify)"
    if s.get("result") == "completed" and d.get("result") == "completed" and not d.get("verify_mismatches", 1):
        return "completed, verified"
    return "%s: %s" % (s.get("result"), s.get("error") or d.get("error"))
print("| transport | conns | guest | result | round-1 MiB/s | src data CPU s/GiB | dst data CPU s/GiB | src process CPU s | dst process CPU s |")
print("|---|---:|---|---|---:|---:|---:|---:|---:|")
for r in runs[:6]:
    t, c, size = r["args"][:3]
    s, d = r.get("source", {}), r.get("destination", {})
    gib = max(s.get("bytes_transferred", 0), 1) / Gi
    print("| %s | %s | %s | %s | %.1f | %.2f | %.4f | %.2f | %.2f |" % (
        t, c, size, ok(r), s.get("first_round_bandwidth", 0) / Mi,
        s.get("data_cpu_s", 0) / gib, d.get("data_cpu_s", 0) / gib,
        s.get("cpu_user_s", 0) + s.get("cpu_sys_s", 0), d.get("cpu_user_s", 0) + d.get("cpu_sys_s", 0)))
print()
print("| guest | blocks | result | source registration ms | s/GiB | destination registration ms | s/GiB |")
print("|---|---:|---|---:|---:|---:|---:|")
for r in runs[6:]:
    t, c, size, blocks = r["args"][:4]
    s, d = r.get("source", {}), r.get("destination", {})
    gib = s.get("pages_total", 0) * 4096 / Gi or 1
    print("| %s | %s | %s | %d | %.2f | %d | %.2f |" % (
        size, blocks, ok(r), s.get("registration_time_ms", 0), s.get("registration_time_ms", 0) / 1000 / gib,
        d.get("registration_time_ms", 0), d.get("registration_time_ms", 0) / 1000 / gib))
PY

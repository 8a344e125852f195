#!/bin/bash
# Precopy throughput over loopback TCP, next to plain TCP measured in the same
# run (iperf3).  Prints a Markdown table for docs/BENCHMARKS.md.
#
#   tests/bench/bench-precopy.sh [SIZES] [RATES] [CONNS]
#   defaults: "1G 4G" "0 100" "1 4"
#
# Each run starts a fresh `rdmig recv --prealloc` (guest RAM allocated before
# the source connects, as with QEMU's -mem-prealloc: first-touch page faults
# would otherwise dominate, see docs/BENCHMARKS.md) and an `rdmig send`.
# Verification stays on; its time is shown apart from downtime.
set -euo pipefail
cd "$(dirname "$0")/../.."
RDMIG=${RDMIG:-build/tools/rdmig}
SIZES=${1:-"1G 4G"}
RATES=${2:-"0 100"}
CONNS=${3:-"1 4"}
EXTRA_RECV=${EXTRA_RECV:---prealloc}
PORT=${PORT:-47011}
tmp=$(mktemp -d)
trap 'pkill -f "rdmig recv --listen 127.0.0.1:$PORT" 2>/dev/null || true; rm -rf "$tmp"' EXIT

iperf() { # $1: extra iperf3 client args; prints GiB/s
	iperf3 -s -1 -p $((PORT + 1)) >/dev/null 2>&1 &
	sleep 0.3
	iperf3 -c 127.0.0.1 -p $((PORT + 1)) -t 3 -J $1 > "$tmp/iperf.json"
	wait
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/8/2**30))' "$tmp/iperf.json"
}

echo "plain TCP loopback (iperf3, one stream, 3 s): large writes $(iperf '') GiB/s, 4 KiB writes $(iperf '-l 4K') GiB/s"
echo
echo "| guest | dirty MiB/s | conns | result | total s | rounds | downtime ms (verify) | round-1 GiB/s | overall GiB/s | dst migration CPU s | dst process CPU s |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for size in $SIZES; do
	for rate in $RATES; do
		for conns in $CONNS; do
			$RDMIG recv --listen 127.0.0.1:$PORT --ram-size "$size" --json --quiet \
				--run-after-ms 0 $EXTRA_RECV > "$tmp/recv.json" 2>"$tmp/recv.err" &
			rpid=$!
			# wait until it listens (prealloc of a large guest takes a while)
			for _ in $(seq 100); do
				ss -ltn "sport = :$PORT" | grep -q LISTEN && break
				sleep 0.1
			done
			$RDMIG send --to 127.0.0.1:$PORT --ram-size "$size" --dirty-rate "$rate" \
				--connections "$conns" --json --quiet > "$tmp/send.json" 2>"$tmp/send.err" || true
			wait $rpid || true
			python3 - "$tmp/send.json" "$tmp/recv.json" "$size" "$rate" "$conns" <<'PY'
import json, sys
def load(p):
    try:
        return json.loads(open(p).read().strip().splitlines()[-1])
    except Exception as e:
        return {"result": "no report", "error": str(e)}
s, d = load(sys.argv[1]), load(sys.argv[2])
G = 2**30
ok = s.get("result") == "completed" and d.get("result") == "completed" and d.get("verify_mismatches", 1) == 0
res = "completed, verified" if ok else "%s: %s" % (s.get("result"), s.get("error") or d.get("error"))
r1 = s.get("round1_bandwidth", s.get("bandwidth", 0))
print("| %s | %s | %s | %s | %.2f | %d | %d (%d) | %.2f | %.2f | %.2f | %.2f |" % (
    sys.argv[3], sys.argv[4], sys.argv[5], res, s.get("total_time_ms", 0) / 1000,
    s.get("rounds", 0), s.get("downtime_ms", 0), s.get("verify_time_ms", 0),
    s.get("first_round_bandwidth", 0) / G, s.get("throughput", 0) / G,
    d.get("migration_cpu_s", 0), d.get("cpu_user_s", 0) + d.get("cpu_sys_s", 0)))
PY
		done
	done
done
echo
echo "plain TCP loopback again, after the runs: large writes $(iperf '') GiB/s"

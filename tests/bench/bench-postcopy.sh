#!/bin/bash
# Postcopy: fault service latency, total time and downtime, next to precopy
# on the same guest.  Prints Markdown for docs/BENCHMARKS.md.
#
#   tests/bench/bench-postcopy.sh tcp [SIZES] [RATES]    on the host, loopback TCP
#                                                         (defaults "1G 4G" "100 500")
#   tests/rxe/run --timeout 900 -- tests/bench/bench-postcopy.sh rdma [SIZE]
#                                                         inside the soft-RoCE VM, with
#                                                         ib_read_lat on the same devices
#
# Postcopy starts after one precopy round (--postcopy-after 1, and a 1 ms
# downtime limit so that precopy never ends first).  Precopy runs
# with --on-no-converge switchover and --max-rounds 10, so that it ends too.
# PLACEMENT=copy places pulled pages from a staging buffer (UFFDIO_COPY)
# instead of the default zero copy (UFFDIO_CONTINUE).
set -euo pipefail
cd "$(dirname "$0")/../.."
RDMIG=${RDMIG:-build/tools/rdmig}
MODE=${1:-tcp}
PLACEMENT=${PLACEMENT:-continue} # or copy: how pulled pages get into the guest
tmp=$(mktemp -d)
trap 'pkill -f "rdmig recv --insecure --listen" 2>/dev/null || true; rm -rf "$tmp"' EXIT
PORT=7600

if [ "$MODE" = rdma ]; then
	: "${RXE_A_DEV:?run me through tests/rxe/run}"
	HOST=$RXE_B_IP
	TRANSPORT=rdma
	SIZES=${2:-64M}
	RATES=${3:-30}
	EXTRA_SEND="--max-bandwidth 8"
else
	HOST=127.0.0.1
	TRANSPORT=tcp
	SIZES=${2:-"1G 4G"}
	RATES=${3:-"100 500"}
	EXTRA_SEND=""
fi

migrate() { # $1 size, $2 rate, $3 mode (postcopy|precopy) -> appends two JSON lines
	PORT=$((PORT + 1))
	$RDMIG recv --insecure --listen "$HOST:$PORT" --ram-size "$1" --dirty-rate "$2" --transport $TRANSPORT \
		--prealloc --json --quiet --run-after-ms 0 --postcopy-placement "$PLACEMENT" \
		> "$tmp/recv.json" 2>"$tmp/recv.err" &
	local rpid=$!
	for _ in $(seq 300); do
		ss -ltn "sport = :$PORT" | grep -q LISTEN && break
		sleep 0.1
	done
	local how="--postcopy-after 1 --downtime-ms 1"
	[ "$3" = precopy ] && how="--on-no-converge switchover --max-rounds 10"
	$RDMIG send --insecure --to "$HOST:$PORT" --ram-size "$1" --dirty-rate "$2" --transport $TRANSPORT \
		$how $EXTRA_SEND --json --quiet > "$tmp/send.json" 2>"$tmp/send.err" || true
	wait $rpid || true
	echo "RUN $1 $2 $3"
	tail -n1 "$tmp/send.json"
	tail -n1 "$tmp/recv.json"
}

if [ "$MODE" = rdma ]; then
	ib_read_lat -d "$RXE_B_DEV" -s 4096 -n 2000 -p $((PORT + 90)) >/dev/null 2>&1 &
	sleep 1
	lat=$(ib_read_lat -d "$RXE_A_DEV" -s 4096 -n 2000 -p $((PORT + 90)) "$RXE_B_IP" 2>&1 |
		awk '$1 == 4096 { print "min " $3 " us, typical " $5 " us, average " $6 " us, 99% " $8 " us" }')
	wait
	echo "ib_read_lat, 4 KiB, 2000 reads, rxe0 -> rxe1: $lat"
	echo
fi

for size in $SIZES; do
	for rate in $RATES; do
		migrate "$size" "$rate" postcopy
		[ "$MODE" = tcp ] && migrate "$size" "$rate" precopy
	done
done > "$tmp/all"

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
print("| guest | dirty MiB/s | mode | result | total s | downtime ms | rounds | pages pulled (on demand / background) | faults (zero-filled) | fault median us | fault p99 us | blocktime ms | source CPU in postcopy s |")
print("|---|---:|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|")
for r in runs:
    size, rate, mode = r["args"]
    s, d = r.get("source", {}), r.get("destination", {})
    ok = s.get("result") == "completed" and d.get("result") == "completed" and d.get("verify_mismatches", 1) == 0 and d.get("pages_verified") == d.get("pages_total")
    res = "completed, verified" if ok else "%s: %s" % (s.get("result"), (s.get("error") or d.get("error") or "")[:80])
    if mode == "precopy" and s.get("forced_switchover"):
        res += " (forced switchover)"
    pc = d.get("postcopy", {})
    if mode == "postcopy":
        mode += " (%s)" % ("continue" if pc.get("pages_zero_copy") else "copy")
        pulled = "%d / %d" % (pc.get("pages_on_demand", 0), pc.get("pages_background", 0))
        faults = "%d (%d)" % (pc.get("faults", 0), pc.get("faults_zero", 0))
        cols = (pulled, faults, "%d" % pc.get("fault_median_us", 0), "%d" % pc.get("fault_p99_us", 0),
                "%.1f" % pc.get("blocktime_ms", 0), "%.3f" % s.get("postcopy", {}).get("source_cpu_s", 0))
    else:
        cols = ("-",) * 6
    print("| %s | %s | %s | %s | %.2f | %d | %d | %s |" % (size, rate, mode, res, s.get("total_time_ms", 0) / 1000,
          s.get("downtime_ms", 0), s.get("rounds", 0), " | ".join(cols)))
PY

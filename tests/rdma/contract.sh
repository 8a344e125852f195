#!/bin/sh
# The transport contract suite against the rdma transport, across the veth
# from host A to host B.  Only inside the soft-RoCE VM (tests/rxe/run).
# Output is the test program's TAP; a run in which no rdma case passed is a
# failure, not a quiet success (rdma not built, a filter matching nothing).
if [ -z "$RXE_B_IP" ] || [ -z "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
	echo "1..0 # SKIP no RDMA device or no RXE_B_IP here: run through tests/rxe/run"
	exit 0
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
RDMIG_CONTRACT_HOST=$RXE_B_IP "$1" --keep-going -p /contract/rdma >"$out"
rc=$?
cat "$out"
passed=$(grep -E '^ok [0-9]+ /contract/rdma/' "$out" | grep -vc '# SKIP')
if [ "$passed" -eq 0 ]; then
	echo "contract.sh: no rdma case passed (is the rdma transport built?)" >&2
	exit 1
fi
exit $rc

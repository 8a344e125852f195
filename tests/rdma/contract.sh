#!/bin/sh
# The transport contract suite against the rdma transport, across the veth
# from host A to host B.  Only inside the soft-RoCE VM (tests/rxe/run).
if [ -z "$RXE_B_IP" ] || [ -z "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
	echo "SKIP: no RDMA device or RXE_B_IP here: run through tests/rxe/run"
	exit 77
fi
RDMIG_CONTRACT_HOST=$RXE_B_IP exec "$1" --keep-going -p /contract/rdma

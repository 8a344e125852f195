#!/bin/bash
# tests/rxe/smoke.sh - check that the soft-RoCE VM is fit for the rdma suite.
# Run it inside the VM:  tests/rxe/run -- tests/rxe/smoke.sh
# One line per check, then "N passed, N failed"; exits 1 if a check failed
# (2 if run outside the VM).
if [ "${RXE_VM:-}" != 1 ]; then
	echo "smoke.sh: run me inside the VM: tests/rxe/run -- $0" >&2
	exit 2
fi
pass=0 fail=0
check() { # NAME COMMAND...
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		pass=$((pass + 1)); echo "ok   $name"
	else
		fail=$((fail + 1)); echo "FAIL $name"; tail -n 8 <<< "$out" | sed 's/^/     /'
	fi
}

tx() { cat "/sys/class/net/$RXE_A_NETDEV/statistics/tx_packets"; }
# Run SERVER in the background and CLIENT against it; both must succeed.
# A client that fails at once (the server is still starting: programs start
# slowly under emulation) is retried; one that fails slowly is not.
pair() { # "SERVER ARGS" "CLIENT ARGS" (word-split on purpose)
	local srv try t ok=0
	# shellcheck disable=SC2086
	timeout 60 $1 & srv=$!
	for try in 1 2 3 4 5; do
		sleep 1
		t=$SECONDS
		# shellcheck disable=SC2086
		timeout 30 $2 && { ok=1; break; }
		if [ $((SECONDS - t)) -ge 3 ] || ! kill -0 $srv 2>/dev/null; then break; fi
		echo "(client attempt $try failed, retrying)"
	done
	[ $ok = 1 ] || kill $srv 2>/dev/null
	wait $srv && [ $ok = 1 ]
}
# The pair must succeed AND its packets must cross the veth from A to B:
# a broken routing setup would otherwise pass through rxe's loopback.
crosses_veth() {
	local before after
	before=$(tx)
	pair "$@" || return
	after=$(tx)
	echo "$RXE_A_NETDEV tx_packets: $before -> $after"
	[ $((after - before)) -gt 10 ] || { echo "no RDMA traffic crossed the veth"; return 1; }
}

two_active() { rdma link show; [ "$(rdma link show | grep -c 'state ACTIVE')" -ge 2 ]; }
both_listed() { ibv_devices; ibv_devices | grep -qw "$RXE_A_DEV" && ibv_devices | grep -qw "$RXE_B_DEV"; }
memlock() { ulimit -l; [ "$(ulimit -l)" = unlimited ]; }
check "two rxe devices ACTIVE (rdma link)" two_active
check "ibv_devices lists $RXE_A_DEV and $RXE_B_DEV" both_listed
check "memlock unlimited" memlock
# Servers sit on B (perftest -R cannot bind, but only B has the address the
# client dials); clients connect to B's address without binding a source,
# and the VM's policy routing sends them out through A.
check "verbs RC $RXE_A_DEV -> $RXE_B_DEV (ibv_rc_pingpong, IPv4 GID)" crosses_veth \
	"ibv_rc_pingpong -d $RXE_B_DEV -g 1 -n 100" "ibv_rc_pingpong -d $RXE_A_DEV -g 1 -n 100 localhost"
check "rdma_cm $RXE_A_IP -> $RXE_B_IP (rping)" crosses_veth \
	"rping -s -a $RXE_B_IP -C 10" "rping -c -a $RXE_B_IP -C 10"
check "rdma_cm RDMA WRITE $RXE_A_IP -> $RXE_B_IP (ib_write_bw -R)" crosses_veth \
	"ib_write_bw -R -F -D 2" "ib_write_bw -R -F -D 2 $RXE_B_IP"

echo "$pass passed, $fail failed"
[ $fail = 0 ]

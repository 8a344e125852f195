#!/bin/bash
# Stage 2 of the rxe test VM: PID 1 on the host's root (see vm-boot.sh).
# Sets up two soft-RoCE "hosts", runs the command, reports its exit status
# through /run/rxe/rc and powers off.  tests/rxe/run copies this file into
# the control directory on every run, so editing it needs no cache flush.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
C=/run/rxe
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
# devtmpfs has no /dev/fd; bash process substitution and many scripts need it
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
hostname rxe-vm
up() { cut -d' ' -f1 /proc/uptime; }
echo "rxe-vm: root ready $(up)"

finish() { # STATUS: hand it to the host, then power off (-no-reboot ends qemu)
	echo "$1" > $C/rc
	sync
	echo o > /proc/sysrq-trigger
	sleep 10
}

# The command's stdout and stderr travel on two virtio-serial ports, so the
# host gets them separately and never mixed with kernel messages.
port() {
	local p
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return; }
	done
	echo /dev/console
}
OUT=$(port stdout) ERR=$(port stderr)

NET=10.77.0
NET6=fd77::
setup_rxe() {
	modprobe -a rdma_rxe ib_uverbs rdma_ucm veth || return
	echo "rxe-vm: modules loaded $(up)" > /dev/console
	# rdma_rxe in 6.1 is not netns-aware (its UDP socket and route lookups
	# live in init_net), so both ends of the veth pair stay in this one
	# namespace.  There the kernel would route .1 <-> .2 through lo, where
	# no rxe device listens.  So the "local" rule moves behind policy rules
	# that send locally generated traffic for the other address out through
	# the veth: a client that connects to .2 leaves as .1 via rxe-a (rxe0)
	# and arrives on rxe-b (rxe1), like two hosts on a cable.  Traffic from
	# an address to itself still takes the local table (rxe loopback).
	# accept_local/rp_filter: the packets arrive with a local source address.
	local i
	for i in all default; do
		sysctl -qw net.ipv4.conf.$i.accept_local=1 net.ipv4.conf.$i.rp_filter=0 || return
	done
	ip -batch - <<-EOF || return
		link set lo up
		link add rxe-a type veth peer name rxe-b
		addr add $NET.1/24 dev rxe-a
		addr add $NET.2/24 dev rxe-b
		link set rxe-a up
		link set rxe-b up
		rule add pref 1000 lookup local
		rule del pref 0
		rule add pref 90 from $NET.1 to $NET.1 lookup local
		rule add pref 91 from $NET.2 to $NET.2 lookup local
		rule add pref 100 iif lo to $NET.2 lookup 102
		rule add pref 101 iif lo to $NET.1 lookup 101
		route add $NET.2 dev rxe-a src $NET.1 table 102
		route add $NET.1 dev rxe-b src $NET.2 table 101
	EOF
	for i in rxe-a rxe-b; do
		sysctl -qw net.ipv4.conf.$i.accept_local=1 net.ipv4.conf.$i.rp_filter=0 || return
	done
	# The same for IPv6, with one difference: rdma_cm checks an incoming
	# request by a route lookup that names no input interface, so the rules
	# to the other address cannot say "iif lo"; packets that arrive on the
	# veth are delivered locally by the rules before them.  Addresses stay
	# when a link goes down (a test cuts it) and need no DAD.
	sysctl -qw net.ipv6.conf.all.keep_addr_on_down=1 || return
	ip -6 -batch - <<-EOF || return
		addr add ${NET6}1/64 dev rxe-a nodad
		addr add ${NET6}2/64 dev rxe-b nodad
		rule add pref 1000 lookup local
		rule del pref 0
		rule add pref 80 iif rxe-a lookup local
		rule add pref 81 iif rxe-b lookup local
		rule add pref 90 from ${NET6}1 to ${NET6}1 lookup local
		rule add pref 91 from ${NET6}2 to ${NET6}2 lookup local
		rule add pref 100 to ${NET6}2 lookup 102
		rule add pref 101 to ${NET6}1 lookup 101
		route add ${NET6}2 dev rxe-a src ${NET6}1 table 102
		route add ${NET6}1 dev rxe-b src ${NET6}2 table 101
	EOF
	rdma link add rxe0 type rxe netdev rxe-a &&
	rdma link add rxe1 type rxe netdev rxe-b
}
if ! setup_rxe > /run/setup.log 2>&1; then
	{ echo "tests/rxe/run: soft-RoCE setup failed in the VM:"; cat /run/setup.log; } > "$ERR"
	finish 125
fi
echo "rxe-vm: rxe ready $(up)"

# The command: the caller's environment, then ours on top; root, stdin
# /dev/null, memlock unlimited (verbs pin every registered page).
ulimit -l unlimited
ulimit -n 65536
cd "$(cat $C/cwd)" || cd /
/bin/bash -c '
	. /run/rxe/env
	export RXE_VM=1 RXE_DEVS="rxe0 rxe1"
	export RXE_A_DEV=rxe0 RXE_A_NETDEV=rxe-a RXE_A_IP='$NET'.1
	export RXE_B_DEV=rxe1 RXE_B_NETDEV=rxe-b RXE_B_IP='$NET'.2
	export RXE_A_IP6='$NET6'1 RXE_B_IP6='$NET6'2
	# Taking a netdev down deletes its routes, and up does not bring the
	# policy routes above back: a test that cuts the link runs this after.
	export RXE_RESTORE_ROUTES="ip route replace '$NET'.2 dev rxe-a src '$NET'.1 table 102; ip route replace '$NET'.1 dev rxe-b src '$NET'.2 table 101; ip -6 route replace '$NET6'2 dev rxe-a src '$NET6'1 table 102; ip -6 route replace '$NET6'1 dev rxe-b src '$NET6'2 table 101"
	. /run/rxe/cmd' < /dev/null > "$OUT" 2> "$ERR"
rc=$?
echo "rxe-vm: command exited $rc at $(up)"
finish $rc

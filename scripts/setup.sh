#!/bin/bash
# Installs what rdmig needs to build and test, on Debian 12, then configures
# the build directories.  Safe to run again: apt only acts when a package is
# missing, meson only when a build directory is not configured yet.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_PACKAGES="build-essential meson ninja-build pkg-config libglib2.0-dev libjson-glib-dev libxxhash-dev
 libibverbs-dev librdmacm-dev libgnutls28-dev gnutls-bin python3 iproute2 iperf3 gdb clang
 libclang-rt-14-dev"
# The soft-RoCE VM harness (tests/rxe/) needs these too.
RXE_PACKAGES="qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils rdma-core
 ibverbs-providers ibverbs-utils rdmacm-utils perftest kmod"

want=${1:-all}
pkgs=$BUILD_PACKAGES
[ "$want" = all ] && pkgs="$pkgs $RXE_PACKAGES"

missing=()
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: missing packages: ${missing[*]}; run this script as root (or apt-get install them)" >&2
		exit 1
	fi
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update -qq
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -f build/build.ninja ] || meson setup build --buildtype=debugoptimized >/dev/null
ninja -C build >/dev/null

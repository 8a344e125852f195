#!/bin/bash
# Builds QEMU with the rdmig: migration transport: Debian 12's QEMU 7.2
# source (apt-get source qemu) with qemu/hooks.patch applied and
# qemu/migration/rdmig.[ch] added, x86_64-softmmu only.  The build is
# cached by the content hash of the patch, these files, rdmig's public
# headers and this script, under $RDMIG_QEMU_CACHE (default
# ~/.cache/rdmig/qemu): a rerun with nothing changed takes a second, and a
# change to rdmig.c alone rebuilds only what it touches.
# QEMU links librdmig.so dynamically: run it with LD_LIBRARY_PATH naming
# the rdmig build to use (tests do), or with librdmig installed.
#
# Usage: scripts/build-qemu.sh [RDMIG_BUILD_DIR]   (default: build)
# The last line printed is the path of qemu-system-x86_64.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rdmig_build=$(cd "${1:-$root/build}" && pwd)
cache=${RDMIG_QEMU_CACHE:-$HOME/.cache/rdmig/qemu}
log() { echo "build-qemu: $*" >&2; }

key=$(cd "$root" && cat scripts/build-qemu.sh qemu/hooks.patch qemu/migration/rdmig.c \
	qemu/migration/rdmig.h include/rdmig/*.h | sha256sum | cut -c1-16)
out=$cache/$key
if [ -x "$out/qemu-system-x86_64" ]; then
	log "cached build $key"
	echo "$out/qemu-system-x86_64"
	exit 0
fi

QEMU_PACKAGES="qemu-system-data seabios dpkg-dev libpixman-1-dev libfdt-dev flex bison libglib2.0-dev zlib1g-dev
 python3-venv"
missing=()
for p in $QEMU_PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Debian's sources: deb-src next to deb (deb822 debian.sources, or the
# one-line sources.list).
src_list=/etc/apt/sources.list.d/debian.sources
need_src=0
[ -d "$cache/src" ] && ls -d "$cache"/src/qemu-7.2*/ >/dev/null 2>&1 || need_src=1
if [ ${#missing[@]} -gt 0 ] || [ $need_src = 1 ]; then
	if [ "$(id -u)" != 0 ]; then
		log "need packages (${missing[*]:-none}) and QEMU's source; run as root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if [ $need_src = 1 ] && [ -f $src_list ] && ! grep -q '^Types:.*deb-src' $src_list; then
		log "enabling deb-src in $src_list"
		sed -i 's/^Types: deb$/Types: deb deb-src/' $src_list
	elif [ $need_src = 1 ] && [ ! -f $src_list ] && [ -f /etc/apt/sources.list ] &&
		! grep -q '^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; then
		# the one-line format: a deb-src line for every deb line
		log "adding deb-src lines in /etc/apt/sources.list.d/rdmig-deb-src.list"
		sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/rdmig-deb-src.list
	fi
	apt-get -o DPkg::Lock::Timeout=600 update -qq
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
			"${missing[@]}" >/dev/null
	fi
fi
if [ $need_src = 1 ]; then
	log "fetching Debian's QEMU source (apt-get source qemu)"
	rm -rf "$cache/src" && mkdir -p "$cache/src"
	(cd "$cache/src" && apt-get source -qq qemu >/dev/null 2>&1) || {
		log "apt-get source qemu failed"; exit 1; }
fi
pristine=$(ls -d "$cache"/src/qemu-7.2*/ | head -n 1)

# The source tree with the hooks applied, configured, is kept per hash of
# the patch and this script, so that a change to rdmig.c alone rebuilds
# only what it touches.
# (and the rdmig build it links against: configure records its path)
tree_key=$(cd "$root" && { cat scripts/build-qemu.sh qemu/hooks.patch; echo "$rdmig_build"; } |
	sha256sum | cut -c1-16)
work=$cache/tree-$tree_key
[ -e "$rdmig_build/librdmig.so" ] || { log "no librdmig.so in $rdmig_build: build rdmig first"; exit 1; }
if [ ! -f "$work/qemu/build/build.ninja" ]; then
	rm -rf "$work" && mkdir -p "$work"
	# trees of other rdmig builds are kept; only the three newest
	ls -dt "$cache"/tree-*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
	log "preparing $work from $pristine"
	cp -a "$pristine" "$work/qemu"
	(cd "$work/qemu" && patch -p1 -s < "$root/qemu/hooks.patch")
fi
# Copied only when changed, so that ninja sees what is new.
for f in rdmig.c rdmig.h; do
	cmp -s "$root/qemu/migration/$f" "$work/qemu/migration/$f" ||
		cp "$root/qemu/migration/$f" "$work/qemu/migration/$f"
done

# librdmig as QEMU's pkg-config sees it: the headers of this tree, the
# library of the given build.
mkdir -p "$work/pkgconfig"
version=$(sed -n "s/^  version : '\(.*\)',/\1/p" "$root/meson.build" | head -n 1)
printf '%s\n' "Name: rdmig" "Description: rdmig live migration library (build tree)" \
	"Version: $version" "Requires: glib-2.0" "Libs: -L$rdmig_build -lrdmig" \
	"Cflags: -I$root/include" > "$work/pkgconfig/rdmig.pc.new"
if cmp -s "$work/pkgconfig/rdmig.pc.new" "$work/pkgconfig/rdmig.pc"; then
	rm -f "$work/pkgconfig/rdmig.pc.new"
else
	mv "$work/pkgconfig/rdmig.pc.new" "$work/pkgconfig/rdmig.pc"
fi

mkdir -p "$work/qemu/build"
cd "$work/qemu/build"
if [ ! -f build.ninja ]; then
	log "configuring (x86_64-softmmu, rdmig enabled)"
	PKG_CONFIG_PATH=$work/pkgconfig ../configure --target-list=x86_64-softmmu \
		--disable-docs --disable-tools --disable-user --disable-werror --disable-gtk \
		--disable-sdl --disable-vnc --disable-spice --disable-opengl \
		--disable-virglrenderer --disable-xen --disable-rdma --disable-slirp \
		--disable-guest-agent --enable-rdmig \
		--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
		> "$work/configure.log" 2>&1 || {
		tail -n 30 "$work/configure.log" >&2; log "configure failed ($work/configure.log)"
		rm -f build.ninja; exit 1; }
fi
log "building qemu-system-x86_64 (a first build takes 6-8 minutes on 2 cores)"
start=$(date +%s)
PKG_CONFIG_PATH=$work/pkgconfig ninja qemu-system-x86_64 > "$work/ninja.log" 2>&1 || {
	grep -B2 -A12 'error' "$work/ninja.log" | head -n 60 >&2
	log "build failed ($work/ninja.log)"; exit 1; }
log "built in $(( $(date +%s) - start )) s"

mkdir -p "$out.tmp"
cp qemu-system-x86_64 "$out.tmp/"
rm -rf "$out" && mv "$out.tmp" "$out"
# Keep the three newest builds.
ls -dt "$cache"/[0-9a-f]*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
echo "$out/qemu-system-x86_64"

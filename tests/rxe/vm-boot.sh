#!/bin/busybox sh
# Stage 1 of the rxe test VM: /init of the initramfs, with only a static
# busybox and a few modules.  Its one job is to build the guest's root file
# system and hand over to vm-run.sh:
#   /            the host's / over 9p, read-only, with a tmpfs overlay on top,
#                so every tool installed on the host works unchanged and
#                guest writes vanish with the VM;
#   /run, /tmp   fresh tmpfs (the host's /tmp is private to the host);
#   SHARE        the caller's directory over 9p, read-write, at its host path;
#   /run/rxe     the per-run control directory (command in, exit status out).
# Messages go to the serial console, which tests/rxe/run shows on failure.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "rxe-vm: boot: $*"; echo o > /proc/sysrq-trigger; sleep 10; }
echo "rxe-vm: boot $(cut -d' ' -f1 /proc/uptime)"

for m in $(cat /modules); do insmod "/modules.d/$m.ko" || fail "insmod $m"; done

# msize: 9p's default (8 KiB) makes every large read a crawl under TCG.
o=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /rw /newroot
# cache=loose: the host root is not expected to change during a run.
mount -t 9p -o $o,ro,cache=loose root /lower || fail "mount host root"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	fail "mount overlay"
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mkdir -p /newroot/run/rxe
# cache=none: the host reads the exit status as soon as qemu exits.
mount -t 9p -o $o,cache=none ctl /newroot/run/rxe || fail "mount ctl"
share=$(cat /newroot/run/rxe/share)
mkdir -p "/newroot$share"
# cache=mmap: coherent enough for builds and logs written from both sides.
mount -t 9p -o $o,cache=mmap share "/newroot$share" || fail "mount $share"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/bash /run/rxe/vm-run.sh

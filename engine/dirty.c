/* SPDX-License-Identifier: MIT */
/*
 * The built-in dirty-page tracker: which pages of this process's memory
 * were written since the last look.
 *
 * Two kernel mechanisms, chosen at rdmig_dirty_tracker_new():
 *
 * uffd-wp (Linux >= 6.7)
 *   A userfaultfd in *asynchronous* write-protect mode: a write to a
 *   protected page is resolved by the kernel itself (no fault message, no
 *   handler thread), it just drops the page's uffd-wp bit.  PAGEMAP_SCAN
 *   with PM_SCAN_WP_MATCHING then reports the pages whose bit is gone
 *   ("written") and protects them again in the same page-table walk, under
 *   the page-table lock.  That test-and-clear is atomic per page, so every
 *   write is reported by a sync() that returns after the write completed,
 *   even if it raced with the scan.  This is what makes it usable while the
 *   guest runs.  A racing write can also be reported twice: a scan may see
 *   the page unprotected by the fault before the store retired, protect it
 *   again, and the retried store faults once more.
 *
 *     add():   UFFDIO_REGISTER(MODE_WP)        memory keeps working normally
 *     start(): UFFDIO_WRITEPROTECT(range)      every page protected
 *     write:   kernel clears uffd-wp on that PTE, no exit to user space
 *     sync():  PAGEMAP_SCAN(WRITTEN, WP_MATCHING) -> regions, re-protected
 *     free():  UFFDIO_UNREGISTER, close        memory plain writable again
 *
 * soft-dirty (kernels with CONFIG_MEM_SOFT_DIRTY)
 *   "4" written to /proc/self/clear_refs clears the soft-dirty bit of every
 *   PTE of the process; a write sets it again; /proc/self/pagemap shows it
 *   as bit 55.  Two limits, both of the kernel interface:
 *   - clear_refs is process-wide, so it also resets what other trackers
 *     (and anything else using soft-dirty in this process) have not read
 *     yet.  Between our own trackers this is repaired: before any clear,
 *     every started soft-dirty tracker harvests its ranges into a pending
 *     bitmap, handed out by its next sync().
 *   - reading pagemap and clearing are two steps.  A write that lands after
 *     a page was read as clean and before the clear is lost.  soft-dirty is
 *     therefore exact only when writers pause across sync() (CRIU freezes
 *     the task for this reason); with concurrent writers use uffd-wp.
 *
 * Bitmaps: uint64_t words, bit i of word w is page w * 64 + i of the range,
 * in units of the range's page_size.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rdmig/error.h>
#include <rdmig/rdmig.h>

#include "uffd.h"
#include "util/bitmap.h"

/*
 * Debian 12's headers are from Linux 6.1; these are the upstream ABI of
 * Linux 6.7 (include/uapi/linux/fs.h, include/uapi/linux/userfaultfd.h).
 * Whether the running kernel has them is decided at run time.
 */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

#ifndef PAGEMAP_SCAN
struct page_region {
    uint64_t start;      /* first byte of the region */
    uint64_t end;        /* one past its last byte */
    uint64_t categories; /* PAGE_IS_* of the region, filtered by return_mask */
};

struct pm_scan_arg {
    uint64_t size;                /* sizeof(struct pm_scan_arg) */
    uint64_t flags;               /* PM_SCAN_* */
    uint64_t start;               /* page-aligned start of the walk */
    uint64_t end;                 /* end of the walk (exclusive) */
    uint64_t walk_end;            /* out: where the walk stopped */
    uint64_t vec;                 /* struct page_region[vec_len] */
    uint64_t vec_len;
    uint64_t max_pages;           /* 0 = no limit */
    uint64_t category_inverted;   /* categories that match when 0 */
    uint64_t category_mask;       /* all of these must match */
    uint64_t category_anyof_mask; /* one of these must match */
    uint64_t return_mask;         /* categories reported in page_region */
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN   (1 << 1)
#define PAGE_IS_FILE      (1 << 2)
#define PAGE_IS_PRESENT   (1 << 3)
#define PAGE_IS_SWAPPED   (1 << 4)
#define PAGE_IS_PFNZERO   (1 << 5)
#define PAGE_IS_HUGE      (1 << 6)

#define PM_SCAN_WP_MATCHING   (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#endif

/* /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
#define DIRTY_PM_SOFT_DIRTY (UINT64_C(1) << 55)

/*
 * Output regions per PAGEMAP_SCAN call.  Each region is a run of written
 * pages, so 512 covers a whole sparse round of a small guest in one call
 * and costs 12 KiB per tracker.
 */
#define DIRTY_SCAN_VEC_LEN 512

/* pagemap entries read per pread() in the soft-dirty path (64 KiB). */
#define DIRTY_PAGEMAP_CHUNK 8192

/* What the uffd-wp method needs from UFFDIO_API, with the kernel that added it. */
static const struct {
    uint64_t feature;
    const char *name;
} uffd_required_features[] = {
    { UFFD_FEATURE_PAGEFAULT_FLAG_WP, "UFFD_FEATURE_PAGEFAULT_FLAG_WP (Linux >= 5.7)" },
    { UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux >= 5.19)" },
    { UFFD_FEATURE_WP_UNPOPULATED, "UFFD_FEATURE_WP_UNPOPULATED (Linux >= 6.4)" },
    { UFFD_FEATURE_WP_ASYNC, "UFFD_FEATURE_WP_ASYNC (Linux >= 6.7)" },
};

/* PAGEFAULT_FLAG_WP only reports support; it is not a mode to turn on. */
#define UFFD_WANTED_FEATURES \
    (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

typedef struct {
    uint8_t *addr;
    uint64_t length;
    uint32_t page_size;
    uint64_t npages;   /* length / page_size */
    uint64_t *pending; /* soft-dirty: harvested, not yet handed out by sync() */
} DirtyRange;

struct RdmigDirtyTracker {
    RdmigDirtyMethod method; /* UFFD_WP or SOFT_DIRTY, never AUTO */
    GArray *ranges;          /* DirtyRange, index = what add() returned */
    bool started;
    int pagemap_fd;          /* /proc/self/pagemap */

    /* uffd-wp */
    int uffd;
    GMutex scan_lock;        /* vec is shared by all sync() calls */
    struct page_region *vec;
};

static long dirty_sys_page_size(void)
{
    return sysconf(_SC_PAGESIZE); /* glibc answers from memory, no syscall */
}

/* Marks in @bm the pages of @r that the byte range [start, end) overlaps. */
static void dirty_mark_bytes(const DirtyRange *r, uint64_t *bm, uint64_t start, uint64_t end)
{
    uint64_t base = (uintptr_t)r->addr;
    uint64_t first, last;

    /* The kernel clips to the walked range; clip anyway, a stray bit would
     * land in memory of the caller that is not part of the bitmap. */
    if (start < base)
        start = base;
    if (end > base + r->length)
        end = base + r->length;
    if (start >= end)
        return;
    first = (start - base) / r->page_size;
    last = (end - 1 - base) / r->page_size;
    rdmig_bitmap_set_range(bm, first, last - first + 1);
}

/* ------------------------------------------------------------------------ */
/* uffd-wp                                                                   */
/* ------------------------------------------------------------------------ */

static int uffd_open_wp_async(GError **error)
{
    uint64_t have;
    if (!rdmig_uffd_features(&have, error))
        return -1;
    g_autoptr(GString) missing = g_string_new(NULL);
    for (size_t i = 0; i < G_N_ELEMENTS(uffd_required_features); i++) {
        if (have & uffd_required_features[i].feature)
            continue;
        g_string_append_printf(missing, "%s%s", missing->len ? ", " : "",
                               uffd_required_features[i].name);
    }
    if (missing->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "userfaultfd of this kernel lacks %s", missing->str);
        return -1;
    }
    return rdmig_uffd_open_api(UFFD_WANTED_FEATURES, error);
}

static bool uffd_register(int uffd, void *addr, uint64_t length, GError **error)
{
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)addr, .len = length },
        .mode = UFFDIO_REGISTER_MODE_WP,
    };

    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
        int e = errno;
        const char *why = "";

        if (e == EINVAL)
            why = " (only anonymous, shmem/memfd and hugetlbfs memory can be tracked)";
        else if (e == EBUSY)
            why = " (already registered with another userfaultfd)";
        else if (e == ENOMEM)
            why = " (part of the range is not mapped)";
        g_set_error(error, RDMIG_ERROR,
                    e == ENOMEM   ? RDMIG_ERROR_INVALID
                    : e == EINVAL ? RDMIG_ERROR_UNSUPPORTED
                                  : RDMIG_ERROR_RESOURCE,
                    "UFFDIO_REGISTER of %p+0x%" PRIx64 " failed: %s%s", addr, length,
                    g_strerror(e), why);
        return false;
    }
    if (!(reg.ioctls & (UINT64_C(1) << _UFFDIO_WRITEPROTECT))) {
        struct uffdio_range range = reg.range;

        ioctl(uffd, UFFDIO_UNREGISTER, &range);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "this kind of memory at %p cannot be write-protected by userfaultfd", addr);
        return false;
    }
    return true;
}

static void uffd_unregister(int uffd, void *addr, uint64_t length)
{
    struct uffdio_range range = { .start = (uintptr_t)addr, .len = length };

    /* Fails if the caller unmapped the range first; nothing is left to undo then. */
    if (ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0)
        g_debug("UFFDIO_UNREGISTER of %p+0x%" PRIx64 ": %s", addr, length, g_strerror(errno));
}

static bool uffd_writeprotect(int uffd, void *addr, uint64_t length, GError **error)
{
    struct uffdio_writeprotect wp = {
        .range = { .start = (uintptr_t)addr, .len = length },
        .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };
    int ret;

    /* EAGAIN: the address space changed under the walk (mremap, fork). */
    do {
        ret = ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
    } while (ret < 0 && (errno == EAGAIN || errno == EINTR));
    if (ret < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "UFFDIO_WRITEPROTECT of %p+0x%" PRIx64 " failed: %s", addr, length,
                    g_strerror(errno));
        return false;
    }
    return true;
}

/*
 * Reports the written pages of [start, end) into @bm (relative to @r) and
 * write-protects them again.
 *
 * The scan is complete only when fewer regions than vec_len come back.  When
 * the vector fills, the next call starts at the end of the last region
 * returned, not at walk_end: after the kernel's internal restarts walk_end
 * can be stale (seen on 6.18), and resuming there reports pages twice or
 * skips them.
 */
static bool uffd_scan(RdmigDirtyTracker *t, const DirtyRange *r, uint64_t *bm, uint64_t *npages_out,
                      GError **error)
{
    uint64_t cur = (uintptr_t)r->addr;
    uint64_t end = cur + r->length;
    uint64_t found = 0;

    while (cur < end) {
        struct pm_scan_arg arg = {
            .size = sizeof(arg),
            .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            .start = cur,
            .end = end,
            .vec = (uintptr_t)t->vec,
            .vec_len = DIRTY_SCAN_VEC_LEN,
            .category_mask = PAGE_IS_WRITTEN,
            .return_mask = PAGE_IS_WRITTEN,
        };
        long n = ioctl(t->pagemap_fd, PAGEMAP_SCAN, &arg);

        if (n < 0) {
            int e = errno;

            /* Only a fatal signal interrupts the walk; the process is going. */
            if (e == EINTR)
                continue;
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                        "PAGEMAP_SCAN of %p+0x%" PRIx64 " failed: %s%s", r->addr, r->length,
                        g_strerror(e),
                        e == EPERM ? " (part of the range is no longer registered: "
                                     "was it unmapped or remapped?)"
                        : e == ENOTTY ? " (kernel without PAGEMAP_SCAN, Linux < 6.7)"
                                      : "");
            return false;
        }
        for (long i = 0; i < n; i++) {
            if (bm)
                dirty_mark_bytes(r, bm, t->vec[i].start, t->vec[i].end);
            found += (t->vec[i].end - t->vec[i].start) / dirty_sys_page_size();
        }
        if (n < DIRTY_SCAN_VEC_LEN)
            break;
        cur = t->vec[n - 1].end;
    }
    if (npages_out)
        *npages_out = found;
    return true;
}

/*
 * Checks the whole chain on two pages of our own before promising anything:
 * a kernel can advertise the features and still lack PAGEMAP_SCAN (a
 * backport), or an LSM can refuse the ioctl.
 */
static bool uffd_self_test(RdmigDirtyTracker *t, GError **error)
{
    long ps = dirty_sys_page_size();
    DirtyRange r = { .length = 2 * ps, .page_size = ps, .npages = 2 };
    uint64_t bm = 0, n = 0;
    bool ok = false;

    r.addr = mmap(NULL, r.length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r.addr == MAP_FAILED) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "mmap of a probe page failed: %s",
                    g_strerror(errno));
        return false;
    }
    memset(r.addr, 0, r.length);
    if (!uffd_register(t->uffd, r.addr, r.length, error))
        goto out_unmap;
    if (!uffd_writeprotect(t->uffd, r.addr, r.length, error))
        goto out_unregister;
    ((volatile uint8_t *)r.addr)[ps] = 1;
    if (!uffd_scan(t, &r, &bm, NULL, error))
        goto out_unregister;
    if (bm != 2) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "uffd-wp self-test: writing page 1 of 2 reported bitmap 0x%" PRIx64, bm);
        goto out_unregister;
    }
    if (!uffd_scan(t, &r, &bm, &n, error))
        goto out_unregister;
    if (n != 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "uffd-wp self-test: PAGEMAP_SCAN did not write-protect the pages it reported");
        goto out_unregister;
    }
    ok = true;
out_unregister:
    uffd_unregister(t->uffd, r.addr, r.length);
out_unmap:
    munmap(r.addr, r.length);
    if (!ok)
        g_prefix_error(error, "uffd-wp: ");
    return ok;
}

static bool uffd_init(RdmigDirtyTracker *t, GError **error)
{
    t->uffd = uffd_open_wp_async(error);
    if (t->uffd < 0)
        goto fail;
    t->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (t->pagemap_fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "cannot open /proc/self/pagemap: %s", g_strerror(errno));
        goto fail;
    }
    t->vec = g_new(struct page_region, DIRTY_SCAN_VEC_LEN);
    return uffd_self_test(t, error);

fail:
    g_prefix_error(error, "uffd-wp: ");
    return false;
}

/* ------------------------------------------------------------------------ */
/* soft-dirty                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Process-wide state, because clear_refs is process-wide: every started
 * soft-dirty tracker, so that a clear by one first saves what the others
 * have not read yet.  Lock order: sd_lock only; no other lock is taken
 * under it.
 */
static GMutex sd_lock;
static GPtrArray *sd_active;
static uint64_t *sd_buf; /* pagemap read buffer, DIRTY_PAGEMAP_CHUNK entries */

static bool sd_clear_refs(GError **error)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    ssize_t n;
    int e;

    if (fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "soft-dirty: cannot open /proc/self/clear_refs: %s", g_strerror(errno));
        return false;
    }
    n = write(fd, "4", 1);
    e = errno;
    close(fd);
    if (n != 1) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "soft-dirty: writing 4 to /proc/self/clear_refs failed: %s",
                    n < 0 ? g_strerror(e) : "short write");
        return false;
    }
    return true;
}

static bool sd_read_entry(int pagemap_fd, const void *addr, uint64_t *entry)
{
    off_t off = (off_t)((uintptr_t)addr / dirty_sys_page_size()) * sizeof(uint64_t);

    return pread(pagemap_fd, entry, sizeof(*entry), off) == sizeof(*entry);
}

/*
 * Whether this kernel really tracks soft-dirty: without CONFIG_MEM_SOFT_DIRTY
 * clear_refs still accepts "4" and pagemap still has bit 55, it just never
 * changes.  Returns NULL if it works, else why not.
 */
static char *sd_probe(void)
{
    long ps = dirty_sys_page_size();
    volatile uint8_t *page;
    g_autoptr(GError) error = NULL;
    char *why = NULL;
    uint64_t e;
    int fd;

    fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return g_strdup_printf("soft-dirty: cannot open /proc/self/pagemap: %s",
                               g_strerror(errno));
    page = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        why = g_strdup_printf("soft-dirty: mmap of a probe page failed: %s", g_strerror(errno));
        close(fd);
        return why;
    }
    page[0] = 1;

    if (!sd_clear_refs(&error)) {
        why = g_strdup(error->message);
    } else if (!sd_read_entry(fd, (void *)page, &e)) {
        why = g_strdup_printf("soft-dirty: reading /proc/self/pagemap failed: %s",
                              g_strerror(errno));
    } else if (e & DIRTY_PM_SOFT_DIRTY) {
        why = g_strdup("soft-dirty tracking is not supported by this kernel "
                       "(CONFIG_MEM_SOFT_DIRTY?): clear_refs does not clear the soft-dirty bit");
    } else {
        page[0] = 2;
        if (!sd_read_entry(fd, (void *)page, &e) || !(e & DIRTY_PM_SOFT_DIRTY)) {
            why = g_strdup("soft-dirty tracking is not supported by this kernel "
                           "(CONFIG_MEM_SOFT_DIRTY not set): a written page does not get "
                           "the soft-dirty bit in /proc/self/pagemap");
        } else if (!sd_clear_refs(&error)) {
            why = g_strdup(error->message);
        } else if (!sd_read_entry(fd, (void *)page, &e) || (e & DIRTY_PM_SOFT_DIRTY)) {
            why = g_strdup("soft-dirty tracking is not supported by this kernel "
                           "(CONFIG_MEM_SOFT_DIRTY?): the soft-dirty bit does not clear again");
        }
    }
    munmap((void *)page, ps);
    close(fd);
    return why;
}

/*
 * The probe clears soft-dirty process-wide, so it runs once: later trackers
 * must not wipe what earlier ones have yet to read.
 */
static const char *sd_probe_once(void)
{
    static gsize done;
    static char *why;

    if (g_once_init_enter(&done)) {
        why = sd_probe();
        g_once_init_leave(&done, 1);
    }
    return why;
}

/* ORs the soft-dirty pages of @r into r->pending.  sd_lock held. */
static bool sd_harvest(RdmigDirtyTracker *t, DirtyRange *r, GError **error)
{
    long ps = dirty_sys_page_size();
    uint64_t first = (uintptr_t)r->addr / ps;
    uint64_t count = r->length / ps;

    for (uint64_t done = 0; done < count;) {
        uint64_t n = MIN(count - done, (uint64_t)DIRTY_PAGEMAP_CHUNK);
        ssize_t got = pread(t->pagemap_fd, sd_buf, n * sizeof(uint64_t),
                            (off_t)((first + done) * sizeof(uint64_t)));

        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0 || got % sizeof(uint64_t)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                        "soft-dirty: reading /proc/self/pagemap for %p+0x%" PRIx64 " failed: %s",
                        r->addr, r->length, got < 0 ? g_strerror(errno) : "short read");
            return false;
        }
        n = got / sizeof(uint64_t);
        for (uint64_t i = 0; i < n; i++) {
            if (sd_buf[i] & DIRTY_PM_SOFT_DIRTY) {
                uint64_t page = (done + i) * ps / r->page_size;

                r->pending[page / 64] |= UINT64_C(1) << (page & 63);
            }
        }
        done += n;
    }
    return true;
}

/* Saves what every started soft-dirty tracker has not read, then clears. */
static bool sd_harvest_all_and_clear(GError **error)
{
    for (guint i = 0; sd_active && i < sd_active->len; i++) {
        RdmigDirtyTracker *t = g_ptr_array_index(sd_active, i);

        for (guint j = 0; j < t->ranges->len; j++) {
            if (!sd_harvest(t, &g_array_index(t->ranges, DirtyRange, j), error))
                return false;
        }
    }
    return sd_clear_refs(error);
}

static bool sd_init(RdmigDirtyTracker *t, GError **error)
{
    const char *why = sd_probe_once();

    if (why) {
        g_set_error_literal(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED, why);
        return false;
    }
    t->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (t->pagemap_fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "soft-dirty: cannot open /proc/self/pagemap: %s", g_strerror(errno));
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */
/* ------------------------------------------------------------------------ */

const char *rdmig_dirty_method_str(RdmigDirtyMethod method)
{
    switch (method) {
    case RDMIG_DIRTY_AUTO:
        return "auto";
    case RDMIG_DIRTY_UFFD_WP:
        return "uffd-wp";
    case RDMIG_DIRTY_SOFT_DIRTY:
        return "soft-dirty";
    }
    return "unknown";
}

static RdmigDirtyTracker *dirty_tracker_alloc(RdmigDirtyMethod method)
{
    RdmigDirtyTracker *t = g_new0(RdmigDirtyTracker, 1);

    t->method = method;
    t->ranges = g_array_new(FALSE, TRUE, sizeof(DirtyRange));
    t->pagemap_fd = -1;
    t->uffd = -1;
    g_mutex_init(&t->scan_lock);
    return t;
}

/**
 * rdmig_dirty_tracker_new:
 * @method: the mechanism; AUTO tries uffd-wp, then soft-dirty
 * @error: set with RDMIG_ERROR_UNSUPPORTED naming what the kernel lacks
 *         (both reasons for AUTO), RDMIG_ERROR_INVALID for an unknown method
 *
 * Each method is tried for real (a probe page is written and scanned) so
 * that a tracker that is returned works.  Any thread.
 *
 * Returns: (transfer full): a tracker with no ranges, or NULL.
 */
RdmigDirtyTracker *rdmig_dirty_tracker_new(RdmigDirtyMethod method, GError **error)
{
    g_autoptr(GError) uffd_error = NULL;
    g_autoptr(GError) sd_error = NULL;
    RdmigDirtyTracker *t;

    switch (method) {
    case RDMIG_DIRTY_UFFD_WP:
    case RDMIG_DIRTY_SOFT_DIRTY:
    case RDMIG_DIRTY_AUTO:
        break;
    default:
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "unknown dirty tracking method %d",
                    (int)method);
        return NULL;
    }

    if (method != RDMIG_DIRTY_SOFT_DIRTY) {
        t = dirty_tracker_alloc(RDMIG_DIRTY_UFFD_WP);
        if (uffd_init(t, &uffd_error))
            return t;
        rdmig_dirty_tracker_free(t);
        if (method == RDMIG_DIRTY_UFFD_WP) {
            g_propagate_error(error, g_steal_pointer(&uffd_error));
            return NULL;
        }
    }

    t = dirty_tracker_alloc(RDMIG_DIRTY_SOFT_DIRTY);
    if (sd_init(t, &sd_error)) {
        if (uffd_error)
            g_debug("dirty tracker: falling back to soft-dirty: %s", uffd_error->message);
        return t;
    }
    rdmig_dirty_tracker_free(t);
    if (method == RDMIG_DIRTY_SOFT_DIRTY) {
        g_propagate_error(error, g_steal_pointer(&sd_error));
        return NULL;
    }
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                "no dirty tracking method works on this kernel: %s; %s", uffd_error->message,
                sd_error->message);
    return NULL;
}

/* Whether a mapping in [start, start + length) is hugetlb: "ht" among the
 * VmFlags of /proc/self/smaps. */
static bool range_has_hugetlb(uint64_t start, uint64_t length)
{
    g_autofree char *text = NULL;
    if (!g_file_get_contents("/proc/self/smaps", &text, NULL, NULL))
        return false;
    bool inside = false;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        unsigned long lo, hi;
        if (next)
            *next = '\0';
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
            inside = lo < start + length && start < hi;
        else if (inside && g_str_has_prefix(line, "VmFlags:") && strstr(line, " ht"))
            return true;
        line = next ? next + 1 : NULL;
    }
    return false;
}

/**
 * rdmig_dirty_tracker_add:
 * @t: a tracker not yet started
 * @addr: start of the range, aligned to the system page size; memory of
 *        this process, mapped for writing.  uffd-wp takes anonymous,
 *        shmem/memfd and hugetlbfs memory; soft-dirty no hugetlbfs.
 * @length: bytes, a non-zero multiple of @page_size
 * @page_size: granularity of the bitmap, a multiple of the system page size
 * @index: (out) (optional): the range's index for sync()
 * @error: RDMIG_ERROR_INVALID for bad arguments, ranges overlapping an earlier
 *         one, or a started tracker; RDMIG_ERROR_RESOURCE/UNSUPPORTED if the
 *         kernel refuses to watch the memory
 *
 * The range must stay mapped until rdmig_dirty_tracker_free().  Not
 * concurrently with other calls on @t.
 */
bool rdmig_dirty_tracker_add(RdmigDirtyTracker *t, void *addr, uint64_t length,
                             uint32_t page_size, unsigned *index, GError **error)
{
    long ps = dirty_sys_page_size();
    uint64_t start = (uintptr_t)addr;
    DirtyRange r;

    g_return_val_if_fail(t != NULL, false);

    if (t->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: ranges must be added before start()");
        return false;
    }
    if (page_size == 0 || page_size % ps) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: page size %u is not a multiple of the system page size %ld",
                    page_size, ps);
        return false;
    }
    if (!addr || start % ps) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: address %p is not aligned to the system page size %ld", addr,
                    ps);
        return false;
    }
    if (length == 0 || length % page_size) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: length 0x%" PRIx64 " is not a non-zero multiple of the "
                    "page size %u", length, page_size);
        return false;
    }
    if (start + length < start) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: range %p+0x%" PRIx64 " wraps around", addr, length);
        return false;
    }
    if (t->ranges->len >= UINT_MAX) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "dirty tracker: too many ranges");
        return false;
    }
    /* A page in two ranges would be reported to whichever syncs first and
     * then re-protected, so the other range would never see it. */
    for (guint i = 0; i < t->ranges->len; i++) {
        const DirtyRange *o = &g_array_index(t->ranges, DirtyRange, i);
        uint64_t ostart = (uintptr_t)o->addr;

        if (start < ostart + o->length && ostart < start + length) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "dirty tracker: range %p+0x%" PRIx64 " overlaps range %u", addr, length,
                        i);
            return false;
        }
    }

    if (t->method == RDMIG_DIRTY_UFFD_WP && !uffd_register(t->uffd, addr, length, error))
        return false;
    /* Measured on Linux 6.1: clear_refs leaves hugetlb pages alone, and a
     * page written after it was never reported. */
    if (t->method == RDMIG_DIRTY_SOFT_DIRTY && range_has_hugetlb(start, length)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "dirty tracker: soft-dirty does not see writes to hugetlb memory (range "
                    "%p+0x%" PRIx64 "); track it with uffd-wp (Linux >= 6.7) or the caller's "
                    "own dirty log", addr, length);
        return false;
    }

    r = (DirtyRange){
        .addr = addr,
        .length = length,
        .page_size = page_size,
        .npages = length / page_size,
    };
    if (t->method == RDMIG_DIRTY_SOFT_DIRTY)
        r.pending = g_new0(uint64_t, rdmig_bitmap_words(r.npages));
    g_array_append_val(t->ranges, r);
    if (index)
        *index = t->ranges->len - 1;
    return true;
}

/**
 * rdmig_dirty_tracker_start:
 * @t: a tracker with at least one range
 * @error: RDMIG_ERROR_INVALID if already started or empty
 *
 * Arms every range: from here on writes are recorded.  For uffd-wp this
 * write-protects every page (cost grows with the size, not with what is
 * populated); soft-dirty clears the bits of the whole process.  Not
 * concurrently with other calls on @t; other threads may write the memory.
 */
bool rdmig_dirty_tracker_start(RdmigDirtyTracker *t, GError **error)
{
    g_return_val_if_fail(t != NULL, false);

    if (t->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "dirty tracker already started");
        return false;
    }
    if (t->ranges->len == 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "dirty tracker has no ranges");
        return false;
    }

    if (t->method == RDMIG_DIRTY_UFFD_WP) {
        for (guint i = 0; i < t->ranges->len; i++) {
            const DirtyRange *r = &g_array_index(t->ranges, DirtyRange, i);

            if (!uffd_writeprotect(t->uffd, r->addr, r->length, error))
                return false;
        }
    } else {
        bool ok;

        g_mutex_lock(&sd_lock);
        ok = sd_harvest_all_and_clear(error);
        if (ok) {
            if (!sd_active) {
                sd_active = g_ptr_array_new();
                sd_buf = g_new(uint64_t, DIRTY_PAGEMAP_CHUNK);
            }
            g_ptr_array_add(sd_active, t);
        }
        g_mutex_unlock(&sd_lock);
        if (!ok)
            return false;
    }
    t->started = true;
    return true;
}

/**
 * rdmig_dirty_tracker_sync:
 * @t: a started tracker
 * @index: a range index returned by add()
 * @bitmap: (inout): at least ceil(npages / 64) words, npages = length /
 *          page_size; bits of written pages are ORed in, no bit is cleared
 *          and no bit past npages is touched
 * @error: RDMIG_ERROR_INVALID for a bad index or a tracker not started,
 *         RDMIG_ERROR_RESOURCE if the kernel fails the scan
 *
 * Reports the pages written since start() or the previous sync() of this
 * range and watches them again.  Any thread, while other threads write the
 * memory; calls on one tracker are serialised.  With uffd-wp every write is
 * reported by a sync() that returns after it, possibly by two in a row; see
 * the top of this file for why soft-dirty cannot promise that.
 */
bool rdmig_dirty_tracker_sync(RdmigDirtyTracker *t, unsigned index, uint64_t *bitmap,
                              GError **error)
{
    DirtyRange *r;
    bool ok;

    g_return_val_if_fail(t != NULL, false);
    g_return_val_if_fail(bitmap != NULL, false);

    if (!t->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: sync() before start()");
        return false;
    }
    if (index >= t->ranges->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty tracker: range index %u out of range (%u ranges)", index,
                    t->ranges->len);
        return false;
    }
    r = &g_array_index(t->ranges, DirtyRange, index);

    if (t->method == RDMIG_DIRTY_UFFD_WP) {
        g_mutex_lock(&t->scan_lock);
        ok = uffd_scan(t, r, bitmap, NULL, error);
        g_mutex_unlock(&t->scan_lock);
        return ok;
    }

    g_mutex_lock(&sd_lock);
    ok = sd_harvest_all_and_clear(error);
    if (ok) {
        uint64_t words = rdmig_bitmap_words(r->npages);

        for (uint64_t w = 0; w < words; w++)
            bitmap[w] |= r->pending[w];
        memset(r->pending, 0, words * sizeof(uint64_t));
    }
    g_mutex_unlock(&sd_lock);
    return ok;
}

/** rdmig_dirty_tracker_method: UFFD_WP or SOFT_DIRTY, what AUTO picked. Any thread. */
RdmigDirtyMethod rdmig_dirty_tracker_method(RdmigDirtyTracker *t)
{
    g_return_val_if_fail(t != NULL, RDMIG_DIRTY_AUTO);
    return t->method;
}

/**
 * rdmig_dirty_tracker_free:
 * @t: (nullable) (transfer full): the tracker
 *
 * Stops watching: the ranges are unregistered so that writes cost nothing
 * again.  The memory itself is not touched.  No other call on @t may run.
 */
void rdmig_dirty_tracker_free(RdmigDirtyTracker *t)
{
    if (!t)
        return;

    if (t->method == RDMIG_DIRTY_SOFT_DIRTY && t->started) {
        g_mutex_lock(&sd_lock);
        g_ptr_array_remove_fast(sd_active, t);
        g_mutex_unlock(&sd_lock);
    }
    for (guint i = 0; i < t->ranges->len; i++) {
        DirtyRange *r = &g_array_index(t->ranges, DirtyRange, i);

        if (t->uffd >= 0)
            uffd_unregister(t->uffd, r->addr, r->length);
        g_free(r->pending);
    }
    if (t->uffd >= 0)
        close(t->uffd);
    if (t->pagemap_fd >= 0)
        close(t->pagemap_fd);
    g_free(t->vec);
    g_array_free(t->ranges, TRUE);
    g_mutex_clear(&t->scan_lock);
    g_free(t);
}

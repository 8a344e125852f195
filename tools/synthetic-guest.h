/* SPDX-License-Identifier: MIT */
/*
 * A synthetic guest for the demo, the benchmarks and the tests: RAM in a
 * memfd, vCPU threads that dirty pages at a set rate and pattern, pause and
 * resume, a small device-state blob, and page contents that check themselves.
 *
 * Page format (every page written by the guest):
 *   word 0: SG_MAGIC ^ page index          (identifies the page)
 *   word 1: generation (bumped on every rewrite, never 0)
 *   word 2..n-1: sg_word_keyed(sg_page_key(page, generation), i)  (derived, so checkable)
 * Pages the guest never wrote are all zero; pages it "zeroed" are all zero
 * too.  The initial fill makes one filled page in sparse_every (16) sparse
 * instead: zero
 * but for one word (SG_MAGIC ^ page index) at a place derived from the
 * index, never word 0, 1, the middle or the last.  A page is consistent if
 * it is all zero, sparse, or follows the format.
 */
#ifndef RDMIG_SYNTHETIC_GUEST_H
#define RDMIG_SYNTHETIC_GUEST_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

/* Word 0 of a written page is SG_MAGIC ^ page index ("RDMIGPAG"). */
#define SG_MAGIC UINT64_C(0x52444d4947504147)

/* The codes of this guest's errors (domain "sg-error-quark"), so that
 * callers and tests tell them apart without reading the text. */
typedef enum {
    SG_ERROR_INVALID,      /* bad configuration or call */
    SG_ERROR_RESOURCE,     /* memfd, mmap (huge page pool) or thread creation failed */
    SG_ERROR_DEVICE_STATE, /* device-state blob malformed or for another guest */
} SgErrorCode;

typedef enum {
    SG_PATTERN_UNIFORM, /* every page equally likely */
    SG_PATTERN_HOTSET,  /* 90% of writes go to the first 10% of pages */
} SgPattern;

/* What the guest's RAM is made of. */
typedef enum {
    /* Anonymous memory with MADV_HUGEPAGE, 2 MiB aligned: QEMU's default.
     * Transparent huge pages where the kernel gives them, so a first touch
     * costs a fault per 2 MiB, not per 4 KiB. */
    SG_MEMORY_ANON,
    /* A memfd (shmem) in 4 KiB pages: postcopy can map pulled pages into it
     * without a copy (UFFDIO_CONTINUE through a second mapping). */
    SG_MEMORY_MEMFD,
    /* A memfd with MFD_HUGETLB: 2 MiB pages from the kernel's pool
     * (vm.nr_hugepages), reserved when mapped; RAM blocks then have 2 MiB
     * pages, which is what dirty tracking, transfer, postcopy and
     * verification work in. */
    SG_MEMORY_HUGETLB,
} SgMemory;

#define SG_HUGE_PAGE_SIZE (2u << 20)

typedef struct {
    uint64_t ram_size;      /* bytes, multiple of page_size (of 2 MiB for hugetlb) */
    uint32_t page_size;     /* 4096: the unit the vCPUs write and the check checks */
    SgMemory memory;        /* default SG_MEMORY_ANON */
    uint32_t vcpus;         /* dirtying threads, default 2 */
    double dirty_rate_mib;  /* MiB/s written by all vCPUs together, 0 = idle */
    SgPattern pattern;
    /* Initial contents on the source (fractions of pages, the rest untouched):
     * fill_fraction written with the page format, zero_fraction written with
     * zeros (touched but zero).  Defaults 0.75 and 0.125. */
    double fill_fraction;
    double zero_fraction;
    uint64_t seed;
    /* Share (0..100) of vCPU writes that zero their page instead of
     * rewriting it, so that pages sent with contents later travel as zero
     * and the destination must clear them.  Default 0. */
    uint32_t rezero_percent;
    /* The fill makes one filled page in this many sparse (0: none).  Default 16. */
    uint32_t sparse_every;
    /* Bytes of deterministic filler after the device-state blob, which load
     * then expects too: device state as large as a real VM's, or larger
     * than a transport takes.  Default 0. */
    uint64_t device_state_pad;
    /* Pages at the end of RAM that no vCPU writes and the fill leaves
     * untouched (zero everywhere), for the reader (sg_start_reader).
     * Default 0. */
    uint64_t reader_pages;
} SgConfig;

typedef struct SyntheticGuest SyntheticGuest;

/* What the last sg_load_device_state() found at the page its device state
 * points at (the page a vCPU wrote last before the save). */
typedef enum {
    SG_PROBE_NONE,     /* no page (no write before the save), or not loaded */
    SG_PROBE_PRESENT,  /* in memory already when read */
    SG_PROBE_MISSING,  /* not in memory when read: the read faulted it in */
} SgProbe;

/* Called on a vCPU thread just before that vCPU writes @page (@zeroing: it
 * is about to zero it).  A page belongs to one vCPU, so calls for one page
 * never overlap; calls for different pages may. */
typedef void (*SgWriteHook)(void *opaque, uint64_t page, bool zeroing);

typedef struct {
    uint64_t pages_written;   /* page rewrites by vCPUs since creation */
    uint64_t pages_rezeroed;  /* of them, pages zeroed (rezero_percent) */
    uint64_t pages_checked;
    uint64_t pages_bad;       /* inconsistent pages found by the last check */
    uint64_t first_bad_page;  /* valid when pages_bad > 0 */
    uint64_t reader_reads;    /* reads by the reader (sg_start_reader) */
    uint64_t reader_max_us;   /* the slowest of them */
} SgStats;

void sg_config_init(SgConfig *cfg);

/** sg_new: allocates RAM of cfg->ram_size as cfg->memory says, all zero.
 *  The vCPUs are created paused. */
SyntheticGuest *sg_new(const SgConfig *cfg, GError **error);
void sg_free(SyntheticGuest *g);

/** sg_prealloc: allocates every page of RAM now, on two threads (like
 *  QEMU's -mem-prealloc), so that receiving pages later does not pay for
 *  first-touch page faults. Contents stay zero. */
void sg_prealloc(SyntheticGuest *g);

/** sg_fill: writes the initial contents (source side), per fill/zero fractions. */
void sg_fill(SyntheticGuest *g);

void *sg_ram(SyntheticGuest *g);
uint64_t sg_ram_size(SyntheticGuest *g);
uint32_t sg_page_size(SyntheticGuest *g);
/** The page size of the memory itself: 2 MiB for SG_MEMORY_HUGETLB, else
 *  page_size.  RAM blocks are registered with it. */
uint32_t sg_block_page_size(SyntheticGuest *g);
SgMemory sg_memory(SyntheticGuest *g);
const char *sg_memory_name(SgMemory m);
/** The kind sg_memory_name() calls @name, into *@m; false if none. */
bool sg_memory_parse(const char *name, SgMemory *m);
/** The memfd of SG_MEMORY_MEMFD RAM (offset 0 = the first byte), or -1. */
int sg_memfd(SyntheticGuest *g);
/** Bytes of guest RAM in huge pages now: AnonHugePages of its mapping
 *  (/proc/self/smaps) for anonymous memory, all of it for hugetlb. */
uint64_t sg_huge_bytes(SyntheticGuest *g);

/** The guest's own dirty log, as a hypervisor's (KVM's dirty bitmap) would
 *  be: sg_dirty_log_start() marks every page a vCPU writes from now on;
 *  sg_dirty_log_sync() ORs into @bitmap (bit 0 = page @first) the pages of
 *  [@first, @first + @n) written since the last sync, clears those marks
 *  (only those) and returns how many; sg_dirty_log_stop() stops marking.
 *  A page is marked after its write, so a sync never loses one. */
void sg_dirty_log_start(SyntheticGuest *g);
uint64_t sg_dirty_log_sync(SyntheticGuest *g, uint64_t first, uint64_t n, uint64_t *bitmap);
void sg_dirty_log_stop(SyntheticGuest *g);

/** sg_set_write_hook: @hook runs before every vCPU page write from now on
 *  (NULL: none).  Call while paused. */
void sg_set_write_hook(SyntheticGuest *g, SgWriteHook hook, void *opaque);
uint64_t sg_npages(SyntheticGuest *g);

/** sg_start_reader: a thread that, while the guest runs, reads one of the
 *  cfg.reader_pages pages every 5 ms, each once, and times the read: a
 *  guest thread that needs no page from a postcopy source and still waits
 *  shows how long the pager left faults unserved.  Nothing to do (true)
 *  when reader_pages is 0 or the reader runs already. */
bool sg_start_reader(SyntheticGuest *g, GError **error);

/** sg_resume: lets the vCPU threads run (they start paused). */
void sg_resume(SyntheticGuest *g);
/** sg_pause: returns when no vCPU is in the middle of writing a page. */
void sg_pause(SyntheticGuest *g);
bool sg_running(SyntheticGuest *g);

/** sg_save_device_state: appends a small blob (vCPU counters, RNG state,
 *  a checksum) to @out.  Guest must be paused. */
void sg_save_device_state(SyntheticGuest *g, GByteArray *out);
/** sg_load_device_state: restores it; fails on a bad size or checksum. */
bool sg_load_device_state(SyntheticGuest *g, const uint8_t *data, size_t len, GError **error);
/** sg_device_state_probe: what the last load found (SgProbe). */
SgProbe sg_device_state_probe(SyntheticGuest *g);

/** sg_check: checks every page for consistency (must be paused, or the
 *  result may include pages torn by a concurrent write). Returns true if all
 *  pages are consistent; fills @stats. */
bool sg_check(SyntheticGuest *g, SgStats *stats);

void sg_get_stats(SyntheticGuest *g, SgStats *stats);

#endif

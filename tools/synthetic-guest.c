/* SPDX-License-Identifier: MIT */
/*
 * The synthetic guest: RAM (anonymous with transparent huge pages, a memfd,
 * or hugetlb; SgMemory), vCPU threads that rewrite pages at a
 * set rate, and page contents that check themselves (contract in
 * synthetic-guest.h).
 *
 * Threads and locking
 *   One controlling thread calls the sg_* functions; cfg->vcpus vCPU threads
 *   rewrite pages.  g->lock protects running, quit, busy and the saved
 *   per-vCPU state (RNG, counters).  A vCPU takes the lock only between
 *   batches of page writes ("write sections", about 1 ms of work): it marks
 *   itself busy, drops the lock, writes pages while polling stop_writing
 *   before every page, then retakes the lock, saves its RNG, un-marks busy.
 *   sg_pause raises stop_writing and waits on g->idle until busy is 0, so
 *   when it returns no vCPU is inside a page write and none can start one.
 *
 * Pages are partitioned between vCPUs (vCPU t owns pages t, t + vcpus, ...),
 * so two vCPUs never write the same page at once: a rewrite is a plain
 * read-modify-write, no page can be torn by a racing vCPU, and every rewrite
 * bumps the generation of its page by exactly one.  Each vCPU's choice of
 * pages depends only on its own RNG, so restoring the RNG states (device
 * state) makes a destination guest continue the same sequence of writes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create, SEEK_DATA, SEEK_HOLE */
#endif

#define G_LOG_DOMAIN "rdmig-tools"

#include "synthetic-guest.h"

#include "util/be.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

/* linux/memfd.h has it, but its MFD_* clash with glibc's: log2(2 MiB) at
 * MFD_HUGE_SHIFT (26). */
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

/* Errors of this file; the domain is local, the tools are not the library. */
#define SG_ERROR (sg_error_quark())

static G_DEFINE_QUARK(sg-error-quark, sg_error)

#define SG_MAX_VCPUS 64
#define SG_FILL_GROUP 64          /* pages per fill group (one layout decision each) */
#define SG_SCAN_THREADS 2         /* threads for sg_fill and sg_check */
#define SG_SLICE_US 1000          /* a vCPU sleeps at least this long when ahead */
#define SG_MAX_BURST_S 0.01       /* credit is capped at 10 ms of writes */
#define SG_HOT_PERCENT 90         /* HOTSET: share of writes to the hot pages */
#define SG_HOT_DIVISOR 10         /* HOTSET: the first 1/10 of pages is hot */

/* Device-state blob: fixed size, big-endian fields.
 *   0  u64 magic "RDMIGSGD"
 *   8  u32 version (1)
 *  12  u32 vcpus
 *  16  u32 page_size
 *  20  u32 reserved, 0
 *  24  u64 ram_size
 *  32  u64 pages_written (all vCPUs)
 *  40  per vCPU: u64 RNG state, u64 pages written by that vCPU
 * 1064 u64 probe: 1 + the page a vCPU wrote last (0: none), and
 * 1072 u64 FNV-1a 64 of that page as saved.  Loading reads the page and
 *      checks it, as a real device model reads its rings from guest RAM:
 *      in postcopy that page is likely still at the source.
 *  ..  deterministic filler up to SG_DS_SUM_OFF (so a real guest's size is
 *      approximated and corruption anywhere is caught)
 * 4088 u64 FNV-1a 64 of bytes 0..4087
 */
#define SG_DS_MAGIC UINT64_C(0x52444d4947534744)
#define SG_DS_VERSION 2
#define SG_DS_SIZE 4096
#define SG_DS_VCPU_OFF 40
#define SG_DS_VCPU_SIZE 16
#define SG_DS_SUM_OFF (SG_DS_SIZE - 8)
#define SG_DS_PROBE_OFF (SG_DS_VCPU_OFF + SG_MAX_VCPUS * SG_DS_VCPU_SIZE)
G_STATIC_ASSERT(SG_DS_PROBE_OFF + 16 <= SG_DS_SUM_OFF);

typedef struct {
    SyntheticGuest *g;
    GThread *thread;
    uint32_t index;
    uint64_t n_own;         /* pages owned: index, index + vcpus, ... */
    uint64_t n_hot_own;     /* of those, how many are in the hot set */
    /* Saved between write sections; under g->lock. */
    uint64_t rng;           /* xorshift64* state, never 0 */
    uint64_t pages_written; /* rewrites by this vCPU */
} SgVcpu;

struct SyntheticGuest {
    SgConfig cfg;
    uint64_t npages;
    uint32_t words_per_page;
    int memfd;              /* SG_MEMORY_MEMFD and _HUGETLB; -1 for anonymous RAM */
    uint8_t *ram;
    double vcpu_rate;       /* bytes per second per vCPU */

    GMutex lock;
    GCond wake;             /* vCPUs wait here: resume, pause, quit, slice end */
    GCond idle;             /* sg_pause waits here for busy == 0 */
    bool running;           /* wanted state; under lock */
    bool quit;              /* sg_free; under lock */
    uint32_t busy;          /* vCPUs inside a write section; under lock */
    SgStats last_check;     /* under lock */

    atomic_bool stop_writing;      /* pause or quit asked; polled per page */
    char pad[64];                  /* keep the counter off stop_writing's line */
    _Atomic uint64_t pages_written;
    _Atomic uint64_t pages_rezeroed;
    _Atomic uint64_t last_page;    /* 1 + the page rewritten last; 0: none */
    _Atomic uint64_t *dirty_log;   /* sg_dirty_log_*: a bit per page written, or NULL */
    atomic_bool logging;
    SgProbe probe;                 /* what the last device-state load found */

    SgWriteHook write_hook; /* under lock; copied by a vCPU per write section */
    void *write_hook_opaque;

    uint32_t n_threads;     /* vCPU threads actually started */
    SgVcpu *vcpus;

    uint64_t nwritable;     /* pages the fill and the vCPUs use: the rest is the reader's */
    GThread *reader;        /* sg_start_reader, or NULL */
    _Atomic uint64_t reader_reads;
    _Atomic uint64_t reader_max_us;
};

/* ---- hashing and page contents ---- */

static inline uint64_t sg_rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* splitmix64 finaliser: a good 64-bit mix for seeds and layout decisions. */
static inline uint64_t sg_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* Per-(page, generation) key, computed once per page. */
static inline uint64_t sg_page_key(uint64_t page, uint64_t gen)
{
    return sg_mix64(page * UINT64_C(0x9e3779b97f4a7c15) ^
                    sg_rotl(gen * UINT64_C(0xc2b2ae3d27d4eb4f), 31) ^ SG_MAGIC);
}

/* Word @i of a page from its key: one multiply, xors and a rotate, no
 * dependency between words, so the loops over a page vectorise or at least
 * pipeline, and filling or checking stays memory-bound. */
static inline uint64_t sg_word_keyed(uint64_t key, uint64_t i)
{
    uint64_t x = key ^ (i * UINT64_C(0xd6e8feb86659fd93));
    x *= UINT64_C(0x9e3779b97f4a7c15);
    return x ^ sg_rotl(x, 23);
}

static inline uint64_t *sg_page_ptr(SyntheticGuest *g, uint64_t page)
{
    return (uint64_t *)(g->ram + page * g->cfg.page_size);
}

static void sg_write_page(SyntheticGuest *g, uint64_t page, uint64_t gen)
{
    uint64_t *w = sg_page_ptr(g, page);
    uint64_t key = sg_page_key(page, gen);
    uint32_t n = g->words_per_page;

    w[0] = SG_MAGIC ^ page;
    w[1] = gen;
    for (uint32_t i = 2; i < n; i++) {
        w[i] = sg_word_keyed(key, i);
    }
}

/* The one non-zero word of a sparse page: never word 0, 1, the middle or
 * the last, where a zero test would look first. */
static uint32_t sg_sparse_word(const SyntheticGuest *g, uint64_t page)
{
    uint32_t n = g->words_per_page, i = 2 + (uint32_t)(sg_mix64(page ^ SG_MAGIC) % (n - 4));

    return i == n / 2 ? i + 1 : i;
}

/* A sparse page: zero but for one word, as many pages of a real guest are
 * nearly zero; what a page-zero test must not mistake for a zero page. */
static void sg_write_sparse_page(SyntheticGuest *g, uint64_t page)
{
    uint64_t *w = sg_page_ptr(g, page);

    memset(w, 0, g->cfg.page_size);
    w[sg_sparse_word(g, page)] = SG_MAGIC ^ page;
}

/* Checks in blocks so the inner loop has no early exit (and vectorises),
 * while a bad page still stops the scan within 512 bytes. */
#define SG_CHECK_BLOCK 64

static bool sg_page_ok(const SyntheticGuest *g, uint64_t page, const uint64_t *w)
{
    uint32_t n = g->words_per_page;

    if (w[0] == 0) {
        /* Zero, or sparse: one word, at its place, with its value. */
        uint32_t sparse = sg_sparse_word(g, page);
        for (uint32_t i = 1; i < n; i += SG_CHECK_BLOCK) {
            uint32_t end = MIN(i + SG_CHECK_BLOCK, n);
            uint64_t acc = 0;
            for (uint32_t j = i; j < end; j++) {
                acc |= j == sparse ? w[j] ^ (w[j] ? SG_MAGIC ^ page : 0) : w[j];
            }
            if (acc) {
                return false;
            }
        }
        return true;
    }
    if (w[0] != (SG_MAGIC ^ page) || w[1] == 0) {
        return false;
    }
    uint64_t key = sg_page_key(page, w[1]);
    for (uint32_t i = 2; i < n; i += SG_CHECK_BLOCK) {
        uint32_t end = MIN(i + SG_CHECK_BLOCK, n);
        uint64_t diff = 0;
        for (uint32_t j = i; j < end; j++) {
            diff |= w[j] ^ sg_word_keyed(key, j);
        }
        if (diff) {
            return false;
        }
    }
    return true;
}

/* ---- vCPUs ---- */

static inline uint64_t sg_rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

/* Uniform in [0, n) without a division (Lemire's multiply-shift). */
static inline uint64_t sg_rng_below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)sg_rng_next(s) * n) >> 64);
}

static uint64_t sg_vcpu_pick(const SyntheticGuest *g, const SgVcpu *v, uint64_t *rng)
{
    uint64_t k;

    if (g->cfg.pattern == SG_PATTERN_HOTSET && v->n_hot_own > 0 &&
        v->n_own > v->n_hot_own) {
        if (sg_rng_below(rng, 100) < SG_HOT_PERCENT) {
            k = sg_rng_below(rng, v->n_hot_own);
        } else {
            k = v->n_hot_own + sg_rng_below(rng, v->n_own - v->n_hot_own);
        }
    } else {
        k = sg_rng_below(rng, v->n_own);
    }
    return v->index + k * g->cfg.vcpus;
}

static void sg_rewrite_page(SyntheticGuest *g, uint64_t page)
{
    /* Word 1 is the generation; 0 for a zero or untouched page. */
    uint64_t gen = sg_page_ptr(g, page)[1];

    sg_write_page(g, page, gen + 1);
    atomic_store_explicit(&g->last_page, page + 1, memory_order_relaxed);
}

/* One vCPU write: rewrite @page, or (rezero_percent of the time) zero it.
 * The extra draw only when rezeroing is on, so that the default write
 * sequence of a seed stays what it always was. */
static void sg_vcpu_write(SyntheticGuest *g, uint64_t page, uint64_t *rng, SgWriteHook hook,
                          void *opaque)
{
    bool zero = g->cfg.rezero_percent && sg_rng_below(rng, 100) < g->cfg.rezero_percent;

    if (hook) {
        hook(opaque, page, zero);
    }
    if (zero) {
        memset(sg_page_ptr(g, page), 0, g->cfg.page_size);
        atomic_fetch_add_explicit(&g->pages_rezeroed, 1, memory_order_relaxed);
    } else {
        sg_rewrite_page(g, page);
    }
    /* Marked after the write, with release order: a sync that takes the
     * mark sees the page as written; one that comes before it leaves the
     * mark for the next sync.  (Before the write, a sync between the mark
     * and the write would send the page early and lose the write.) */
    if (atomic_load_explicit(&g->logging, memory_order_relaxed)) {
        atomic_fetch_or_explicit(&g->dirty_log[page / 64], UINT64_C(1) << (page % 64),
                                 memory_order_release);
    }
}

/* The vCPU thread: sleeps while paused or idle, otherwise writes pages at
 * its share of the dirty rate, accounted as byte credit that accrues with
 * monotonic time and is spent one page at a time. */
static gpointer sg_vcpu_main(gpointer opaque)
{
    SgVcpu *v = opaque;
    SyntheticGuest *g = v->g;
    const double rate = g->vcpu_rate;
    const double page = g->cfg.page_size;
    const double cap = rate * SG_MAX_BURST_S + page;
    bool active = false;  /* running at the last look, so credit is valid */
    double credit = 0;    /* bytes this vCPU may write now */
    int64_t last = 0;     /* g_get_monotonic_time() of the last accrual */

    g_mutex_lock(&g->lock);
    while (!g->quit) {
        if (!g->running || rate <= 0 || v->n_own == 0) {
            active = false;
            g_cond_wait(&g->wake, &g->lock);
            continue;
        }
        int64_t now = g_get_monotonic_time();
        if (!active) {
            /* Resumed: time spent paused earns nothing. */
            active = true;
            credit = 0;
            last = now;
        }
        /* The cap keeps a vCPU that fell behind (descheduled, or a rate it
         * cannot reach) from bursting later to catch up. */
        credit = MIN(credit + rate * (double)(now - last) * 1e-6, cap);
        last = now;
        if (credit < page) {
            /* Ahead: sleep until a page is owed, in slices of at least
             * 1 ms; a cond wait rather than nanosleep so pause and quit
             * wake us at once. */
            int64_t wait_us = (int64_t)((page - credit) / rate * 1e6);
            g_cond_wait_until(&g->wake, &g->lock, now + MAX(wait_us, SG_SLICE_US));
            continue;
        }

        uint64_t todo = (uint64_t)(credit / page);
        uint64_t rng = v->rng;
        uint64_t done = 0;
        SgWriteHook hook = g->write_hook;
        void *hook_opaque = g->write_hook_opaque;
        g->busy++;
        g_mutex_unlock(&g->lock);

        while (done < todo &&
               !atomic_load_explicit(&g->stop_writing, memory_order_relaxed)) {
            sg_vcpu_write(g, sg_vcpu_pick(g, v, &rng), &rng, hook, hook_opaque);
            done++;
            atomic_fetch_add_explicit(&g->pages_written, 1, memory_order_relaxed);
        }

        g_mutex_lock(&g->lock);
        v->rng = rng;
        v->pages_written += done;
        credit -= (double)done * page;
        if (--g->busy == 0) {
            g_cond_broadcast(&g->idle);
        }
    }
    g_mutex_unlock(&g->lock);
    return NULL;
}

static uint64_t sg_vcpu_seed(uint64_t seed, uint32_t index)
{
    uint64_t s = sg_mix64(seed + UINT64_C(0x9e3779b97f4a7c15) * (index + 1));

    return s ? s : UINT64_C(0x9e3779b97f4a7c15); /* xorshift state must not be 0 */
}

#define SG_READER_PERIOD_US 5000

/* sg_start_reader's thread: reads each reader page once, in order, one
 * every SG_READER_PERIOD_US while the guest runs, timing each read. */
static gpointer sg_reader_main(gpointer opaque)
{
    SyntheticGuest *g = opaque;
    uint64_t next = 0;

    g_mutex_lock(&g->lock);
    while (!g->quit && next < g->cfg.reader_pages) {
        if (!g->running) {
            g_cond_wait(&g->wake, &g->lock);
            continue;
        }
        g_mutex_unlock(&g->lock);
        const volatile uint64_t *p = sg_page_ptr(g, g->nwritable + next++);
        int64_t t0 = g_get_monotonic_time();
        (void)*p;
        uint64_t took = (uint64_t)(g_get_monotonic_time() - t0);
        atomic_fetch_add_explicit(&g->reader_reads, 1, memory_order_relaxed);
        uint64_t max = atomic_load_explicit(&g->reader_max_us, memory_order_relaxed);
        while (took > max && !atomic_compare_exchange_weak(&g->reader_max_us, &max, took)) {
        }
        g_mutex_lock(&g->lock);
        g_cond_wait_until(&g->wake, &g->lock, g_get_monotonic_time() + SG_READER_PERIOD_US);
    }
    g_mutex_unlock(&g->lock);
    return NULL;
}

bool sg_start_reader(SyntheticGuest *g, GError **error)
{
    if (!g->cfg.reader_pages || g->reader) {
        return true;
    }
    GError *local = NULL;
    g->reader = g_thread_try_new("sg-reader", sg_reader_main, g, &local);
    if (!g->reader) {
        g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE, "starting the reader thread: %s",
                    local->message);
        g_error_free(local);
        return false;
    }
    return true;
}

/* Pages i < limit with i % vcpus == index. */
static uint64_t sg_owned_below(uint64_t limit, uint32_t index, uint32_t vcpus)
{
    return limit > index ? (limit - index + vcpus - 1) / vcpus : 0;
}

/* ---- life cycle ---- */

void sg_config_init(SgConfig *cfg)
{
    *cfg = (SgConfig){
        .ram_size = 256 * 1024 * 1024,
        .page_size = 4096,
        .memory = SG_MEMORY_ANON,
        .vcpus = 2,
        .dirty_rate_mib = 0,
        .pattern = SG_PATTERN_UNIFORM,
        .fill_fraction = 0.75,
        .zero_fraction = 0.125,
        .seed = 1,
        .sparse_every = 16,
    };
}

static bool sg_config_check_memory(const SgConfig *cfg, GError **error)
{
    if (cfg->memory == SG_MEMORY_HUGETLB && cfg->ram_size % SG_HUGE_PAGE_SIZE) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "ram_size %" G_GUINT64_FORMAT ": hugetlb memory comes in 2 MiB pages, "
                    "so the size must be a multiple of 2M", cfg->ram_size);
        return false;
    }
    if (cfg->memory > SG_MEMORY_HUGETLB) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID, "memory kind %d is unknown",
                    (int)cfg->memory);
        return false;
    }
    return true;
}

static bool sg_config_check(const SgConfig *cfg, GError **error)
{
    long host_page = sysconf(_SC_PAGESIZE);

    if (cfg->page_size < 4096 || (cfg->page_size & (cfg->page_size - 1))) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "page_size %u: must be a power of two >= 4096", cfg->page_size);
        return false;
    }
    if (host_page > 0 && cfg->page_size % (uint64_t)host_page) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "page_size %u: must be a multiple of the host page size %ld",
                    cfg->page_size, host_page);
        return false;
    }
    if (cfg->ram_size == 0 || cfg->ram_size % cfg->page_size) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "ram_size %" G_GUINT64_FORMAT ": must be a non-zero multiple "
                    "of page_size %u", cfg->ram_size, cfg->page_size);
        return false;
    }
    if (!sg_config_check_memory(cfg, error))
        return false;
    if (cfg->ram_size > SIZE_MAX / 2) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "ram_size %" G_GUINT64_FORMAT ": too large", cfg->ram_size);
        return false;
    }
    if (cfg->vcpus < 1 || cfg->vcpus > SG_MAX_VCPUS) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "vcpus %u: must be between 1 and %d", cfg->vcpus, SG_MAX_VCPUS);
        return false;
    }
    /* Written as !(in range) so NaN is rejected too. */
    if (!(cfg->dirty_rate_mib >= 0 && isfinite(cfg->dirty_rate_mib))) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "dirty_rate_mib %g: must be finite and >= 0", cfg->dirty_rate_mib);
        return false;
    }
    if (cfg->pattern != SG_PATTERN_UNIFORM && cfg->pattern != SG_PATTERN_HOTSET) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "pattern %d: unknown", (int)cfg->pattern);
        return false;
    }
    if (!(cfg->fill_fraction >= 0 && cfg->fill_fraction <= 1)) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "fill_fraction %g: must be in [0, 1]", cfg->fill_fraction);
        return false;
    }
    if (!(cfg->zero_fraction >= 0 && cfg->zero_fraction <= 1)) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "zero_fraction %g: must be in [0, 1]", cfg->zero_fraction);
        return false;
    }
    if (cfg->rezero_percent > 100) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "rezero_percent %u: must be 0..100", cfg->rezero_percent);
        return false;
    }
    /* A little slack so that e.g. 0.7 + 0.3 passes despite rounding. */
    if (cfg->reader_pages >= cfg->ram_size / cfg->page_size) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "reader_pages %" G_GUINT64_FORMAT ": must leave pages to write in a %"
                    G_GUINT64_FORMAT "-page guest", cfg->reader_pages,
                    cfg->ram_size / cfg->page_size);
        return false;
    }
    if (cfg->fill_fraction + cfg->zero_fraction > 1 + 1e-9) {
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "fill_fraction %g + zero_fraction %g: sum must be <= 1",
                    cfg->fill_fraction, cfg->zero_fraction);
        return false;
    }
    return true;
}

/* ---- guest RAM ---- */

/* Anonymous memory at a 2 MiB boundary (so that every 2 MiB of it can be a
 * huge page) with MADV_HUGEPAGE, as QEMU maps guest RAM.  The advice is best
 * effort: with THP off it is plain 4 KiB memory. */
static bool sg_map_anon(SyntheticGuest *g, GError **error)
{
    size_t len = g->cfg.ram_size, slack = SG_HUGE_PAGE_SIZE;
    uint8_t *raw = mmap(NULL, len + slack, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        int err = errno;
        g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE,
                    "mmap of %" G_GUINT64_FORMAT " bytes of guest RAM: %s",
                    g->cfg.ram_size, g_strerror(err));
        return false;
    }
    uint8_t *ram = (uint8_t *)(((uintptr_t)raw + slack - 1) & ~((uintptr_t)slack - 1));
    if (ram > raw)
        munmap(raw, (size_t)(ram - raw));
    size_t tail = (size_t)(raw + len + slack - (ram + len));
    if (tail)
        munmap(ram + len, tail);
    (void)madvise(ram, len, MADV_HUGEPAGE);
    g->ram = ram;
    return true;
}

/* A memfd (4 KiB shmem, or 2 MiB hugetlb pages) mapped shared.  A hugetlb
 * mapping reserves its pages from the pool now, so a short pool fails here,
 * with the remedy, rather than with SIGBUS at a later touch. */
static bool sg_map_memfd(SyntheticGuest *g, GError **error)
{
    bool huge = g->cfg.memory == SG_MEMORY_HUGETLB;
    unsigned flags = MFD_CLOEXEC | (huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
    g->memfd = memfd_create("rdmig-guest", flags);
    if (g->memfd < 0) {
        int err = errno;
        g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE, "memfd_create%s: %s",
                    huge ? " (MFD_HUGETLB, 2 MiB pages)" : "", g_strerror(err));
        return false;
    }
    if (ftruncate(g->memfd, (off_t)g->cfg.ram_size) < 0) {
        int err = errno;
        g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE,
                    "ftruncate of guest RAM to %" G_GUINT64_FORMAT " bytes: %s",
                    g->cfg.ram_size, g_strerror(err));
        return false;
    }
    g->ram = mmap(NULL, g->cfg.ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, g->memfd, 0);
    if (g->ram == MAP_FAILED) {
        int err = errno;
        if (huge && err == ENOMEM) {
            g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE,
                        "guest RAM of %" G_GUINT64_FORMAT " bytes needs %" G_GUINT64_FORMAT
                        " free 2 MiB huge pages, and the pool has fewer (HugePages_Free in "
                        "/proc/meminfo; reserve more with sysctl vm.nr_hugepages=N)",
                        g->cfg.ram_size, g->cfg.ram_size / SG_HUGE_PAGE_SIZE);
            return false;
        }
        g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE,
                    "mmap of %" G_GUINT64_FORMAT " bytes of guest RAM: %s",
                    g->cfg.ram_size, g_strerror(err));
        return false;
    }
    return true;
}

static bool sg_map_ram(SyntheticGuest *g, GError **error)
{
    return g->cfg.memory == SG_MEMORY_ANON ? sg_map_anon(g, error) : sg_map_memfd(g, error);
}

SyntheticGuest *sg_new(const SgConfig *cfg, GError **error)
{
    g_return_val_if_fail(cfg != NULL, NULL);
    g_return_val_if_fail(error == NULL || *error == NULL, NULL);

    if (!sg_config_check(cfg, error)) {
        return NULL;
    }

    SyntheticGuest *g = g_new0(SyntheticGuest, 1);
    g->cfg = *cfg;
    g->npages = cfg->ram_size / cfg->page_size;
    g->nwritable = g->npages - cfg->reader_pages;
    g->words_per_page = cfg->page_size / sizeof(uint64_t);
    g->vcpu_rate = cfg->dirty_rate_mib * 1024 * 1024 / cfg->vcpus;
    g->memfd = -1;
    g->ram = MAP_FAILED;
    g_mutex_init(&g->lock);
    g_cond_init(&g->wake);
    g_cond_init(&g->idle);
    atomic_init(&g->stop_writing, false);
    atomic_init(&g->pages_written, 0);
    atomic_init(&g->pages_rezeroed, 0);

    if (!sg_map_ram(g, error))
        goto fail;

    uint64_t hot = MAX(g->nwritable / SG_HOT_DIVISOR, 1);
    g->vcpus = g_new0(SgVcpu, cfg->vcpus);
    for (uint32_t i = 0; i < cfg->vcpus; i++) {
        SgVcpu *v = &g->vcpus[i];
        v->g = g;
        v->index = i;
        v->n_own = sg_owned_below(g->nwritable, i, cfg->vcpus);
        v->n_hot_own = sg_owned_below(hot, i, cfg->vcpus);
        v->rng = sg_vcpu_seed(cfg->seed, i);
    }
    for (uint32_t i = 0; i < cfg->vcpus; i++) {
        g_autofree char *name = g_strdup_printf("sg-vcpu%u", i);
        GError *local = NULL;
        g->vcpus[i].thread = g_thread_try_new(name, sg_vcpu_main, &g->vcpus[i], &local);
        if (!g->vcpus[i].thread) {
            g_set_error(error, SG_ERROR, SG_ERROR_RESOURCE,
                        "starting vCPU thread %u: %s", i, local->message);
            g_error_free(local);
            goto fail;
        }
        g->n_threads++;
    }
    return g;

fail:
    sg_free(g);
    return NULL;
}

void sg_free(SyntheticGuest *g)
{
    if (!g) {
        return;
    }
    g_mutex_lock(&g->lock);
    g->quit = true;
    g->running = false;
    atomic_store(&g->stop_writing, true);
    g_cond_broadcast(&g->wake);
    g_mutex_unlock(&g->lock);
    for (uint32_t i = 0; i < g->n_threads; i++) {
        g_thread_join(g->vcpus[i].thread);
    }
    if (g->reader) {
        g_thread_join(g->reader);
    }
    if (g->ram != MAP_FAILED) {
        munmap(g->ram, g->cfg.ram_size);
    }
    if (g->memfd >= 0) {
        close(g->memfd);
    }
    g_free(g->vcpus);
    g_free((void *)g->dirty_log);
    g_cond_clear(&g->idle);
    g_cond_clear(&g->wake);
    g_mutex_clear(&g->lock);
    g_free(g);
}

void *sg_ram(SyntheticGuest *g)
{
    return g->ram;
}

uint64_t sg_ram_size(SyntheticGuest *g)
{
    return g->cfg.ram_size;
}

uint32_t sg_page_size(SyntheticGuest *g)
{
    return g->cfg.page_size;
}

int sg_memfd(SyntheticGuest *g)
{
    return g->cfg.memory == SG_MEMORY_MEMFD ? g->memfd : -1;
}

uint32_t sg_block_page_size(SyntheticGuest *g)
{
    return g->cfg.memory == SG_MEMORY_HUGETLB ? SG_HUGE_PAGE_SIZE : g->cfg.page_size;
}

SgMemory sg_memory(SyntheticGuest *g)
{
    return g->cfg.memory;
}

static const char *const sg_memory_names[] = { "anon", "memfd", "hugetlb" };

const char *sg_memory_name(SgMemory m)
{
    return m <= SG_MEMORY_HUGETLB ? sg_memory_names[m] : "unknown";
}

bool sg_memory_parse(const char *name, SgMemory *m)
{
    for (size_t i = 0; i < G_N_ELEMENTS(sg_memory_names); i++) {
        if (!strcmp(name, sg_memory_names[i])) {
            *m = (SgMemory)i;
            return true;
        }
    }
    return false;
}

/* AnonHugePages of every mapping inside the guest's RAM (registering it
 * with userfaultfd or advising part of it can split it in several). */
static uint64_t sg_smaps_huge(SyntheticGuest *g)
{
    g_autofree char *text = NULL;
    if (!g_file_get_contents("/proc/self/smaps", &text, NULL, NULL))
        return 0;
    uintptr_t lo = (uintptr_t)g->ram, hi = lo + g->cfg.ram_size;
    uint64_t kib = 0;
    bool inside = false;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        unsigned long start, end, v;
        if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
            inside = start >= lo && end <= hi;
        else if (inside && sscanf(line, "AnonHugePages: %lu kB", &v) == 1)
            kib += v;
        line = next ? next + 1 : NULL;
    }
    return kib * 1024;
}

uint64_t sg_huge_bytes(SyntheticGuest *g)
{
    if (g->cfg.memory == SG_MEMORY_HUGETLB)
        return g->cfg.ram_size;
    return g->cfg.memory == SG_MEMORY_ANON ? sg_smaps_huge(g) : 0;
}

uint64_t sg_npages(SyntheticGuest *g)
{
    return g->npages;
}

void sg_set_write_hook(SyntheticGuest *g, SgWriteHook hook, void *opaque)
{
    g_mutex_lock(&g->lock);
    g->write_hook = hook;
    g->write_hook_opaque = opaque;
    g_mutex_unlock(&g->lock);
}

void sg_resume(SyntheticGuest *g)
{
    g_mutex_lock(&g->lock);
    if (!g->quit) {
        g->running = true;
        atomic_store(&g->stop_writing, false);
        g_cond_broadcast(&g->wake);
    }
    g_mutex_unlock(&g->lock);
}

void sg_pause(SyntheticGuest *g)
{
    g_mutex_lock(&g->lock);
    g->running = false;
    atomic_store(&g->stop_writing, true);
    g_cond_broadcast(&g->wake);
    while (g->busy > 0) {
        g_cond_wait(&g->idle, &g->lock);
    }
    g_mutex_unlock(&g->lock);
}

bool sg_running(SyntheticGuest *g)
{
    g_mutex_lock(&g->lock);
    bool running = g->running;
    g_mutex_unlock(&g->lock);
    return running;
}

/* ---- fill and check: split over SG_SCAN_THREADS threads ---- */

typedef struct {
    SyntheticGuest *g;
    uint64_t first, end;   /* fill: groups; check: pages */
    uint64_t bad;
    uint64_t first_bad;
} SgScanJob;

/* round-down share of the first @n pages that gets fraction @f; differences
 * of it give each group its count, so rounding never accumulates. */
static uint64_t sg_share(double f, uint64_t n)
{
    return (uint64_t)(f * (double)n); /* f * n >= 0: truncation is floor */
}

/* Allocates the @count pages from @start (wrapping at @len) of the group at
 * page @first in one call or two: much cheaper than a page fault per page.
 * Best effort (MADV_POPULATE_WRITE needs Linux 5.14); the writes that
 * follow fault in whatever is missing. */
static void sg_populate(SyntheticGuest *g, uint64_t first, uint64_t len,
                        uint64_t start, uint64_t count)
{
#ifdef MADV_POPULATE_WRITE
    uint64_t n1 = MIN(count, len - start);

    if (n1) {
        madvise(sg_page_ptr(g, first + start), n1 * g->cfg.page_size,
                MADV_POPULATE_WRITE);
    }
    if (count > n1) {
        madvise(sg_page_ptr(g, first), (count - n1) * g->cfg.page_size,
                MADV_POPULATE_WRITE);
    }
#else
    (void)g, (void)first, (void)len, (void)start, (void)count;
#endif
}

static gpointer sg_fill_job(gpointer opaque)
{
    SgScanJob *job = opaque;
    SyntheticGuest *g = job->g;
    const SgConfig *c = &g->cfg;

    for (uint64_t grp = job->first; grp < job->end; grp++) {
        uint64_t a = grp * SG_FILL_GROUP;
        uint64_t b = MIN(a + SG_FILL_GROUP, g->nwritable);
        uint64_t len = b - a;
        uint64_t nfill = sg_share(c->fill_fraction, b) - sg_share(c->fill_fraction, a);
        uint64_t nzero = sg_share(c->zero_fraction, b) - sg_share(c->zero_fraction, a);
        nzero = MIN(nzero, len - MIN(nfill, len));
        /* A seeded rotation places the filled run, then the zeroed run, at a
         * different spot in every group: spread over all of RAM, yet in runs
         * as a real guest's memory would be. */
        uint64_t rot = sg_mix64(c->seed ^ sg_mix64(grp + 1)) % len;

        sg_populate(g, a, len, (len - rot) % len, nfill + nzero);

        for (uint64_t j = 0; j < len; j++) {
            uint64_t k = (j + rot) % len;
            uint64_t page = a + j;
            if (k < nfill && c->sparse_every && k % c->sparse_every == c->sparse_every - 1) {
                sg_write_sparse_page(g, page);
            } else if (k < nfill) {
                sg_write_page(g, page, 1);
            } else if (k < nfill + nzero) {
                /* Actually written, so the page is resident. */
                memset(sg_page_ptr(g, page), 0, c->page_size);
            }
        }
    }
    return NULL;
}

static void sg_run_jobs(GThreadFunc fn, SgScanJob *jobs, unsigned n)
{
    GThread *threads[SG_SCAN_THREADS] = { NULL };

    for (unsigned i = 1; i < n; i++) {
        /* On failure, do that share in this thread instead. */
        threads[i] = g_thread_try_new("sg-scan", fn, &jobs[i], NULL);
    }
    fn(&jobs[0]);
    for (unsigned i = 1; i < n; i++) {
        if (threads[i]) {
            g_thread_join(threads[i]);
        } else {
            fn(&jobs[i]);
        }
    }
}

/* Call while paused: a vCPU rewriting a page being filled would tear it. */
void sg_fill(SyntheticGuest *g)
{
    uint64_t ngroups = (g->nwritable + SG_FILL_GROUP - 1) / SG_FILL_GROUP;
    unsigned n = ngroups >= 1024 ? SG_SCAN_THREADS : 1;
    SgScanJob jobs[SG_SCAN_THREADS];

    for (unsigned i = 0; i < n; i++) {
        jobs[i] = (SgScanJob){ .g = g, .first = ngroups * i / n,
                               .end = ngroups * (i + 1) / n };
    }
    sg_run_jobs(sg_fill_job, jobs, n);
}

static void sg_check_pages(SgScanJob *job, uint64_t first, uint64_t end)
{
    for (uint64_t p = first; p < end; p++) {
        if (!sg_page_ok(job->g, p, sg_page_ptr(job->g, p))) {
            if (job->bad++ == 0) {
                job->first_bad = p;
            }
        }
    }
}

/* Checks only a memfd's data extents: holes read as zero and are
 * consistent by definition, and touching them through the mapping would
 * allocate them (shmem allocates on a read fault). */
static gpointer sg_check_job(gpointer opaque)
{
    SgScanJob *job = opaque;
    SyntheticGuest *g = job->g;
    const uint64_t ps = g->cfg.page_size;
    uint64_t p = job->first;

    if (g->memfd < 0) {
        /* Anonymous: an untouched page reads as the shared zero page,
         * which allocates nothing. */
        sg_check_pages(job, p, job->end);
        return NULL;
    }
    while (p < job->end) {
        off_t data = lseek(g->memfd, (off_t)(p * ps), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) {
                break; /* only a hole from here to the end of the file */
            }
            sg_check_pages(job, p, job->end); /* no SEEK_DATA: read it all */
            break;
        }
        off_t hole = lseek(g->memfd, data, SEEK_HOLE);
        if (hole < 0) {
            hole = (off_t)g->cfg.ram_size;
        }
        uint64_t a = MAX((uint64_t)data / ps, p);
        uint64_t b = MIN(((uint64_t)hole + ps - 1) / ps, job->end);
        if (a >= job->end) {
            break;
        }
        sg_check_pages(job, a, b);
        p = MAX(b, a + 1);
    }
    return NULL;
}

bool sg_check(SyntheticGuest *g, SgStats *stats)
{
    unsigned n = g->npages >= 65536 ? SG_SCAN_THREADS : 1;
    SgScanJob jobs[SG_SCAN_THREADS];
    SgStats s = { 0 };

    for (unsigned i = 0; i < n; i++) {
        jobs[i] = (SgScanJob){ .g = g, .first = g->npages * i / n,
                               .end = g->npages * (i + 1) / n };
    }
    sg_run_jobs(sg_check_job, jobs, n);

    s.pages_checked = g->npages;
    for (unsigned i = 0; i < n; i++) {
        /* Jobs are in page order, so the first one with a bad page has the
         * lowest bad page. */
        if (jobs[i].bad && s.pages_bad == 0) {
            s.first_bad_page = jobs[i].first_bad;
        }
        s.pages_bad += jobs[i].bad;
    }
    s.pages_written = atomic_load(&g->pages_written);
    s.pages_rezeroed = atomic_load(&g->pages_rezeroed);

    g_mutex_lock(&g->lock);
    g->last_check = s;
    g_mutex_unlock(&g->lock);
    if (stats) {
        *stats = s;
    }
    return s.pages_bad == 0;
}

void sg_get_stats(SyntheticGuest *g, SgStats *stats)
{
    g_mutex_lock(&g->lock);
    *stats = g->last_check;
    g_mutex_unlock(&g->lock);
    stats->pages_written = atomic_load(&g->pages_written);
    stats->pages_rezeroed = atomic_load(&g->pages_rezeroed);
    stats->reader_reads = atomic_load(&g->reader_reads);
    stats->reader_max_us = atomic_load(&g->reader_max_us);
}

/* ---- the guest's own dirty log ---- */

void sg_dirty_log_start(SyntheticGuest *g)
{
    if (!g->dirty_log) {
        g->dirty_log = g_new0(_Atomic uint64_t, (g->npages + 63) / 64);
    }
    atomic_store(&g->logging, true);
}

uint64_t sg_dirty_log_sync(SyntheticGuest *g, uint64_t first, uint64_t n, uint64_t *bitmap)
{
    uint64_t count = 0;

    if (!g->dirty_log || first > g->npages || n > g->npages - first) {
        return 0;
    }
    for (uint64_t p = first; p < first + n;) {
        /* The bits of this word that are in [first, first + n): only those
         * are taken, so that a neighbouring block's marks stay. */
        uint64_t bit = p % 64, span = MIN(64 - bit, first + n - p);
        uint64_t mask = (span == 64 ? ~UINT64_C(0) : ((UINT64_C(1) << span) - 1)) << bit;
        uint64_t got = atomic_fetch_and_explicit(&g->dirty_log[p / 64], ~mask,
                                                 memory_order_acquire) & mask;
        for (; got; got &= got - 1) {
            uint64_t i = p / 64 * 64 + (uint64_t)__builtin_ctzll(got) - first;
            bitmap[i / 64] |= UINT64_C(1) << (i % 64);
            count++;
        }
        p += span;
    }
    return count;
}

void sg_dirty_log_stop(SyntheticGuest *g)
{
    atomic_store(&g->logging, false);
}

/* ---- device state ---- */

static uint64_t sg_fnv1a64(const uint8_t *p, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (size_t i = 0; i < len; i++) {
        h = (h ^ p[i]) * UINT64_C(0x100000001b3);
    }
    return h;
}

/* Filler byte at @off: deterministic, so the blob of a given state is always
 * the same bytes. */
static uint8_t sg_ds_filler(size_t off)
{
    return (uint8_t)sg_mix64(SG_DS_MAGIC + off);
}

void sg_save_device_state(SyntheticGuest *g, GByteArray *out)
{
    uint8_t b[SG_DS_SIZE];

    g_return_if_fail(out != NULL);

    g_mutex_lock(&g->lock);
    if (g->running) {
        g_warning("sg_save_device_state: guest is running; the state may be stale");
    }
    rdmig_put_be64(b + 0, SG_DS_MAGIC);
    rdmig_put_be32(b + 8, SG_DS_VERSION);
    rdmig_put_be32(b + 12, g->cfg.vcpus);
    rdmig_put_be32(b + 16, g->cfg.page_size);
    rdmig_put_be32(b + 20, 0);
    rdmig_put_be64(b + 24, g->cfg.ram_size);
    rdmig_put_be64(b + 32, atomic_load(&g->pages_written));
    size_t off = SG_DS_VCPU_OFF;
    for (uint32_t i = 0; i < g->cfg.vcpus; i++, off += SG_DS_VCPU_SIZE) {
        rdmig_put_be64(b + off, g->vcpus[i].rng);
        rdmig_put_be64(b + off + 8, g->vcpus[i].pages_written);
    }
    g_mutex_unlock(&g->lock);
    for (; off < SG_DS_SUM_OFF; off++) {
        b[off] = sg_ds_filler(off);
    }
    uint64_t probe = atomic_load(&g->last_page);
    rdmig_put_be64(b + SG_DS_PROBE_OFF, probe);
    rdmig_put_be64(b + SG_DS_PROBE_OFF + 8,
                   probe ? sg_fnv1a64((const uint8_t *)sg_page_ptr(g, probe - 1),
                                      g->cfg.page_size)
                         : 0);
    rdmig_put_be64(b + SG_DS_SUM_OFF, sg_fnv1a64(b, SG_DS_SUM_OFF));
    g_byte_array_append(out, b, sizeof(b));
    if (g->cfg.device_state_pad) {
        guint at = out->len;
        g_byte_array_set_size(out, at + (guint)g->cfg.device_state_pad);
        for (uint64_t i = 0; i < g->cfg.device_state_pad; i++) {
            out->data[at + i] = sg_ds_filler(SG_DS_SIZE + i);
        }
    }
}

/* Whether @addr is mapped in this process now (its page-table entry is
 * present or swapped: /proc/self/pagemap bits 63 and 62).  mincore(2) would
 * not do: it says whether a file page is cached, and a page of the guest's
 * memfd can be cached while the guest's own mapping still faults on it.
 * True when it cannot tell. */
static bool sg_mapped(const void *addr)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t e = UINT64_C(3) << 62;
    if (fd >= 0) {
        off_t off = (off_t)((uintptr_t)addr / (uintptr_t)sysconf(_SC_PAGESIZE)) * 8;
        if (pread(fd, &e, sizeof(e), off) != sizeof(e))
            e = UINT64_C(3) << 62;
        close(fd);
    }
    return (e >> 62) != 0;
}

/* The page the device state points at, read from guest RAM as a device
 * model reads its rings; whether it was mapped before the read is kept for
 * the report: in postcopy the read is what makes the pager pull it. */
static bool sg_load_probe(SyntheticGuest *g, const uint8_t *data, GError **error)
{
    uint64_t probe = rdmig_get_be64(data + SG_DS_PROBE_OFF);
    g->probe = SG_PROBE_NONE;
    if (!probe)
        return true;
    if (probe > g->npages) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "device state points at page %" G_GUINT64_FORMAT " of a %" G_GUINT64_FORMAT
                    "-page guest", probe - 1, g->npages);
        return false;
    }
    const uint8_t *page = (const uint8_t *)sg_page_ptr(g, probe - 1);
    bool mapped = sg_mapped(page);
    uint64_t want = rdmig_get_be64(data + SG_DS_PROBE_OFF + 8);
    uint64_t have = sg_fnv1a64(page, g->cfg.page_size);
    if (want != have) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "guest page %" G_GUINT64_FORMAT " does not hold what the device state "
                    "was saved with (FNV %#018" G_GINT64_MODIFIER "x, expected %#018"
                    G_GINT64_MODIFIER "x)", probe - 1, have, want);
        return false;
    }
    g->probe = mapped ? SG_PROBE_PRESENT : SG_PROBE_MISSING;
    return true;
}

SgProbe sg_device_state_probe(SyntheticGuest *g) { return g->probe; }

/* The blob's size, padding, magic, version and checksum. */
static bool sg_ds_check_blob(SyntheticGuest *g, const uint8_t *data, size_t len, GError **error)
{
    if (!data || len != SG_DS_SIZE + g->cfg.device_state_pad) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "device state is %zu bytes, expected %" G_GUINT64_FORMAT, data ? len : 0,
                    SG_DS_SIZE + g->cfg.device_state_pad);
        return false;
    }
    for (uint64_t i = 0; i < g->cfg.device_state_pad; i++) {
        if (data[SG_DS_SIZE + i] != sg_ds_filler(SG_DS_SIZE + i)) {
            g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                        "device state padding differs at byte %" G_GUINT64_FORMAT,
                        SG_DS_SIZE + i);
            return false;
        }
    }
    if (rdmig_get_be64(data) != SG_DS_MAGIC) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "device state has a bad magic %#018" G_GINT64_MODIFIER "x",
                    rdmig_get_be64(data));
        return false;
    }
    uint32_t version = rdmig_get_be32(data + 8);
    if (version != SG_DS_VERSION) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "device state version %u, expected %d", version, SG_DS_VERSION);
        return false;
    }
    uint64_t want = rdmig_get_be64(data + SG_DS_SUM_OFF);
    uint64_t have = sg_fnv1a64(data, SG_DS_SUM_OFF);
    if (want != have) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "device state checksum mismatch (stored %#018" G_GINT64_MODIFIER
                    "x, computed %#018" G_GINT64_MODIFIER "x)", want, have);
        return false;
    }
    return true;
}

bool sg_load_device_state(SyntheticGuest *g, const uint8_t *data, size_t len, GError **error)
{
    g_return_val_if_fail(error == NULL || *error == NULL, false);

    if (!sg_ds_check_blob(g, data, len, error)) {
        return false;
    }
    uint32_t vcpus = rdmig_get_be32(data + 12);
    uint32_t page_size = rdmig_get_be32(data + 16);
    uint64_t ram_size = rdmig_get_be64(data + 24);
    if (vcpus != g->cfg.vcpus || page_size != g->cfg.page_size ||
        ram_size != g->cfg.ram_size) {
        g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                    "device state is for %u vCPUs, %" G_GUINT64_FORMAT " bytes of "
                    "RAM in %u-byte pages; this guest has %u vCPUs, %"
                    G_GUINT64_FORMAT " bytes in %u-byte pages",
                    vcpus, ram_size, page_size, g->cfg.vcpus, g->cfg.ram_size,
                    g->cfg.page_size);
        return false;
    }
    for (uint32_t i = 0; i < vcpus; i++) {
        if (rdmig_get_be64(data + SG_DS_VCPU_OFF + i * SG_DS_VCPU_SIZE) == 0) {
            g_set_error(error, SG_ERROR, SG_ERROR_DEVICE_STATE,
                        "device state has a zero RNG state for vCPU %u", i);
            return false;
        }
    }

    g_mutex_lock(&g->lock);
    bool running = g->running;
    g_mutex_unlock(&g->lock);
    /* Read without the lock: in postcopy this read may wait for a page. */
    if (!running && !sg_load_probe(g, data, error))
        return false;

    g_mutex_lock(&g->lock);
    if (g->running) {
        g_mutex_unlock(&g->lock);
        g_set_error(error, SG_ERROR, SG_ERROR_INVALID,
                    "device state can only be loaded into a paused guest");
        return false;
    }
    for (uint32_t i = 0; i < vcpus; i++) {
        const uint8_t *p = data + SG_DS_VCPU_OFF + i * SG_DS_VCPU_SIZE;
        g->vcpus[i].rng = rdmig_get_be64(p);
        g->vcpus[i].pages_written = rdmig_get_be64(p + 8);
    }
    atomic_store(&g->pages_written, rdmig_get_be64(data + 32));
    atomic_store(&g->last_page, rdmig_get_be64(data + SG_DS_PROBE_OFF));
    g_mutex_unlock(&g->lock);
    return true;
}

typedef struct {
    uint8_t *addr;
    size_t len;
} SgPreallocJob;

static gpointer sg_prealloc_job(gpointer data)
{
    SgPreallocJob *j = data;
#ifdef MADV_POPULATE_WRITE
    if (madvise(j->addr, j->len, MADV_POPULATE_WRITE) == 0)
        return NULL;
#endif
    /* Older kernels: touch every page (writing zero keeps it zero). */
    for (size_t off = 0; off < j->len; off += 4096)
        ((volatile uint8_t *)j->addr)[off] = 0;
    return NULL;
}

void sg_prealloc(SyntheticGuest *g)
{
    uint32_t unit = g->cfg.memory == SG_MEMORY_MEMFD ? g->cfg.page_size : SG_HUGE_PAGE_SIZE;
    uint64_t half = sg_ram_size(g) / 2 / unit * unit; /* huge pages stay whole */
    SgPreallocJob jobs[2] = { { sg_ram(g), half },
                              { (uint8_t *)sg_ram(g) + half, sg_ram_size(g) - half } };
    GThread *t = g_thread_new("sg-prealloc", sg_prealloc_job, &jobs[1]);
    sg_prealloc_job(&jobs[0]);
    g_thread_join(t);
}

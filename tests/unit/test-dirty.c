/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the built-in dirty tracker (engine/dirty.c), against real
 * memory of this process: private anonymous memory, and a MAP_SHARED memfd
 * (shmem), which is what a hypervisor usually gives its guest.
 *
 * Every functional case runs for every method the kernel supports.  A
 * method the kernel lacks is not skipped silently: for soft-dirty the test
 * checks on its own whether the kernel tracks it, and if not asserts that
 * the tracker refuses with RDMIG_ERROR_UNSUPPORTED.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rdmig/error.h>
#include <rdmig/rdmig.h>

#define PM_SOFT_DIRTY (UINT64_C(1) << 55)
#define PM_UFFD_WP    (UINT64_C(1) << 57)

typedef enum {
    MEM_ANON,  /* MAP_PRIVATE | MAP_ANONYMOUS */
    MEM_MEMFD, /* memfd_create + MAP_SHARED: shmem */
    MEM_THP,   /* anonymous, 2 MiB aligned, MADV_HUGEPAGE: huge pages where it can */
} MemKind;

static const char *const mem_kind_names[] = { "anon", "memfd", "thp" };

#define HUGE_SIZE (2u << 20)

typedef struct {
    RdmigDirtyMethod method;
    MemKind mem;
} Case;

static long ps;

static uint8_t *mem_new(MemKind kind, size_t len)
{
    void *p;

    if (kind == MEM_ANON) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        /* 4 KiB pages, on kernels with THP "always" too (the soft-RoCE VM's):
         * huge pages are MEM_THP's cases. */
        if (p != MAP_FAILED)
            (void)madvise(p, len, MADV_NOHUGEPAGE);
    } else if (kind == MEM_THP) {
        uint8_t *raw = mmap(NULL, len + HUGE_SIZE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uint8_t *aligned;

        g_assert_true(raw != MAP_FAILED);
        /* Trim to exactly [aligned, aligned + len), so munmap(p, len) frees it all. */
        aligned = (uint8_t *)(((uintptr_t)raw + HUGE_SIZE - 1) & ~(uintptr_t)(HUGE_SIZE - 1));
        if (aligned > raw)
            g_assert_cmpint(munmap(raw, aligned - raw), ==, 0);
        g_assert_cmpint(munmap(aligned + len, raw + HUGE_SIZE - aligned), ==, 0);
        /* Fails only without THP; then this is plain anonymous memory. */
        (void)madvise(aligned, len, MADV_HUGEPAGE);
        p = aligned;
    } else {
        int fd = memfd_create("test-dirty", MFD_CLOEXEC);

        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(ftruncate(fd, len), ==, 0);
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    }
    g_assert_true(p != MAP_FAILED);
    /* Populated, as guest RAM is after boot; untouched pages are covered
     * by test_untouched. */
    memset(p, 0xa5, len);
    return p;
}

static void mem_free(uint8_t *p, size_t len)
{
    g_assert_cmpint(munmap(p, len), ==, 0);
}

static void touch(uint8_t *mem, uint64_t page, uint32_t page_size)
{
    ((volatile uint8_t *)mem)[page * page_size + 17] += 1;
}

static uint64_t *bitmap_new(uint64_t npages)
{
    return g_new0(uint64_t, (npages + 63) / 64);
}

static bool bit(const uint64_t *bm, uint64_t i)
{
    return bm[i / 64] >> (i % 64) & 1;
}

static uint64_t bitmap_count(const uint64_t *bm, uint64_t npages)
{
    uint64_t n = 0;

    for (uint64_t i = 0; i < npages; i++)
        n += bit(bm, i);
    return n;
}

/*
 * Whether the method reports at huge-page granularity on this memory:
 * soft-dirty marks a whole 2 MiB PMD when one of its pages is written.
 * Reporting more is safe for migration (pages sent again); reporting less
 * never is.
 */
static bool huge_granular(const Case *c)
{
    return c->method == RDMIG_DIRTY_SOFT_DIRTY && c->mem == MEM_THP;
}

/*
 * Checks the pages @bm reports against the pages @written (bitmaps over
 * @npages of @mem): equal, or for a huge-granular method a superset whose
 * every extra page shares its 2 MiB extent with a written page.
 */
static void assert_reported(const Case *c, const uint8_t *mem, const uint64_t *bm,
                            const uint64_t *written, uint64_t npages)
{
    uint64_t per_huge = HUGE_SIZE / ps;
    uint64_t base = (uintptr_t)mem / ps;

    for (uint64_t i = 0; i < npages; i++) {
        bool got = bm[i / 64] >> (i % 64) & 1, want = written[i / 64] >> (i % 64) & 1;
        if (got == want)
            continue;
        if (want)
            g_error("page %" G_GUINT64_FORMAT " was written but not reported", i);
        bool neighbour = false;
        uint64_t first = (base + i) / per_huge * per_huge - base;
        for (uint64_t j = first; huge_granular(c) && j < first + per_huge && j < npages; j++)
            neighbour |= written[j / 64] >> (j % 64) & 1;
        if (!neighbour)
            g_error("page %" G_GUINT64_FORMAT " reported but not written%s", i,
                    huge_granular(c) ? " (nor any page of its 2 MiB extent)" : "");
    }
}

/* Asserts that exactly the pages in @want (of @nwant) are set in @bm. */
static void assert_bits(const uint64_t *bm, uint64_t npages, const uint64_t *want, size_t nwant)
{
    for (uint64_t i = 0; i < npages; i++) {
        bool expected = false;

        for (size_t j = 0; j < nwant; j++)
            expected |= want[j] == i;
        if (bit(bm, i) != expected)
            g_error("page %" G_GUINT64_FORMAT ": bit is %d, expected %d", i, bit(bm, i),
                    expected);
    }
}

/* A started tracker with one range over @mem. */
static RdmigDirtyTracker *tracker_start(RdmigDirtyMethod method, uint8_t *mem, size_t len,
                                        uint32_t page_size)
{
    g_autoptr(GError) error = NULL;
    RdmigDirtyTracker *t = rdmig_dirty_tracker_new(method, &error);
    unsigned index = 99;

    g_assert_no_error(error);
    g_assert_nonnull(t);
    g_assert_cmpint(rdmig_dirty_tracker_method(t), ==, method);
    g_assert_true(rdmig_dirty_tracker_add(t, mem, len, page_size, &index, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(index, ==, 0);
    g_assert_true(rdmig_dirty_tracker_start(t, &error));
    g_assert_no_error(error);
    return t;
}

static void sync_into(RdmigDirtyTracker *t, unsigned index, uint64_t *bm)
{
    g_autoptr(GError) error = NULL;

    g_assert_true(rdmig_dirty_tracker_sync(t, index, bm, &error));
    g_assert_no_error(error);
}

/* Bits 300.. of the last word and the word after must stay as they are. */
#define NPAGES 300

static void test_empty(gconstpointer data)
{
    const Case *c = data;
    uint8_t *mem = mem_new(c->mem, NPAGES * ps);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, NPAGES * ps, ps);
    g_autofree uint64_t *bm = bitmap_new(NPAGES);
    volatile uint8_t sum = 0;

    /* Reading is not writing. */
    for (uint64_t i = 0; i < NPAGES; i++)
        sum += mem[i * ps];
    (void)sum;
    sync_into(t, 0, bm);
    g_assert_cmpuint(bitmap_count(bm, NPAGES), ==, 0);
    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, NPAGES * ps);
}

static void test_pages(gconstpointer data)
{
    const Case *c = data;
    static const uint64_t want[] = { 0, 5, 63, 64, NPAGES - 1 };
    const uint64_t words = (NPAGES + 63) / 64;
    uint8_t *mem = mem_new(c->mem, NPAGES * ps);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, NPAGES * ps, ps);
    g_autofree uint64_t *bm = g_new0(uint64_t, words + 1);
    const uint64_t tail = ~UINT64_C(0) << (NPAGES % 64);

    /* sync() ORs: bits already set stay, and nothing past npages is written. */
    bm[words - 1] = tail;
    bm[words] = UINT64_C(0xfeedfacecafebeef);
    bm[100 / 64] |= UINT64_C(1) << (100 % 64);

    for (size_t i = 0; i < G_N_ELEMENTS(want); i++)
        touch(mem, want[i], ps);
    sync_into(t, 0, bm);

    g_assert_cmphex(bm[words], ==, UINT64_C(0xfeedfacecafebeef));
    g_assert_cmphex(bm[words - 1] & tail, ==, tail);
    g_assert_true(bit(bm, 100));
    bm[100 / 64] &= ~(UINT64_C(1) << (100 % 64));
    assert_bits(bm, NPAGES, want, G_N_ELEMENTS(want));

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, NPAGES * ps);
}

static void test_sync_clears(gconstpointer data)
{
    const Case *c = data;
    uint8_t *mem = mem_new(c->mem, NPAGES * ps);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, NPAGES * ps, ps);
    g_autofree uint64_t *bm = bitmap_new(NPAGES);

    for (uint64_t i = 0; i < NPAGES; i += 7)
        touch(mem, i, ps);
    sync_into(t, 0, bm);
    g_assert_cmpuint(bitmap_count(bm, NPAGES), ==, (NPAGES + 6) / 7);

    memset(bm, 0, (NPAGES + 63) / 64 * sizeof(*bm));
    sync_into(t, 0, bm);
    g_assert_cmpuint(bitmap_count(bm, NPAGES), ==, 0);

    /* Every page, so the kernel returns one long region. */
    memset(mem, 1, NPAGES * ps);
    sync_into(t, 0, bm);
    g_assert_cmpuint(bitmap_count(bm, NPAGES), ==, NPAGES);
    memset(bm, 0, (NPAGES + 63) / 64 * sizeof(*bm));
    sync_into(t, 0, bm);
    g_assert_cmpuint(bitmap_count(bm, NPAGES), ==, 0);

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, NPAGES * ps);
}

static void test_between_syncs(gconstpointer data)
{
    const Case *c = data;
    static const uint64_t a[] = { 1, 2, 3, 200 };
    static const uint64_t b[] = { 3, 4, 299 };
    uint8_t *mem = mem_new(c->mem, NPAGES * ps);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, NPAGES * ps, ps);
    g_autofree uint64_t *bm = bitmap_new(NPAGES);

    for (size_t i = 0; i < G_N_ELEMENTS(a); i++)
        touch(mem, a[i], ps);
    sync_into(t, 0, bm);
    assert_bits(bm, NPAGES, a, G_N_ELEMENTS(a));

    memset(bm, 0, (NPAGES + 63) / 64 * sizeof(*bm));
    for (size_t i = 0; i < G_N_ELEMENTS(b); i++)
        touch(mem, b[i], ps);
    sync_into(t, 0, bm);
    assert_bits(bm, NPAGES, b, G_N_ELEMENTS(b));

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, NPAGES * ps);
}

/*
 * More runs of written pages than one PAGEMAP_SCAN returns (512), so the
 * scan has to continue where the last region ended.
 */
static void test_many_regions(gconstpointer data)
{
    const Case *c = data;
    const uint64_t npages = 5000;
    uint8_t *mem = mem_new(c->mem, npages * ps);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, npages * ps, ps);
    g_autofree uint64_t *bm = bitmap_new(npages);

    g_autofree uint64_t *written = bitmap_new(npages);
    for (int round = 0; round < 2; round++) {
        memset(bm, 0, (npages + 63) / 64 * sizeof(*bm));
        memset(written, 0, (npages + 63) / 64 * sizeof(*written));
        for (uint64_t i = round; i < npages; i += 2 + (i % 1000 == 0 ? 3 : 0)) {
            touch(mem, i, ps);
            written[i / 64] |= UINT64_C(1) << (i % 64);
        }
        sync_into(t, 0, bm);
        assert_reported(c, mem, bm, written, npages);
    }
    memset(bm, 0, (npages + 63) / 64 * sizeof(*bm));
    sync_into(t, 0, bm);
    g_assert_cmpuint(bitmap_count(bm, npages), ==, 0);

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, npages * ps);
}

/* Pages never touched before start(): the first write populates them. */
static void test_untouched(gconstpointer data)
{
    const Case *c = data;
    static const uint64_t want[] = { 7, 64, 128 };
    uint8_t *mem = mem_new(c->mem, NPAGES * ps);
    g_autoptr(RdmigDirtyTracker) t = NULL;
    g_autofree uint64_t *bm = bitmap_new(NPAGES);

    /* Give the pages back, so that they are unpopulated again. */
    g_assert_cmpint(madvise(mem, NPAGES * ps, c->mem == MEM_MEMFD ? MADV_REMOVE : MADV_DONTNEED),
                    ==, 0);
    t = tracker_start(c->method, mem, NPAGES * ps, ps);
    for (size_t i = 0; i < G_N_ELEMENTS(want); i++)
        touch(mem, want[i], ps);
    sync_into(t, 0, bm);
    assert_bits(bm, NPAGES, want, G_N_ELEMENTS(want));

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, NPAGES * ps);
}

/* Tracker pages of several system pages: a write marks the page it falls in. */
static void test_large_page_size(gconstpointer data)
{
    const Case *c = data;
    const uint32_t page_size = 4 * ps;
    const uint64_t npages = 16;
    static const uint64_t want[] = { 1, 15 };
    uint8_t *mem = mem_new(c->mem, npages * page_size);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, npages * page_size, page_size);
    g_autofree uint64_t *bm = bitmap_new(npages);

    touch(mem, 5, ps);  /* system page 5 = tracker page 1 */
    touch(mem, 63, ps); /* the last system page */
    touch(mem, 62, ps);
    sync_into(t, 0, bm);
    assert_bits(bm, npages, want, G_N_ELEMENTS(want));

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, npages * page_size);
}

static void test_multi_range(gconstpointer data)
{
    const Case *c = data;
    static const uint64_t npages[] = { 10, 70, 130 };
    static const uint64_t want0[] = { 1 }, want1[] = { 0, 69 }, want2[] = { 64 };
    static const uint64_t *const want[] = { want0, want1, want2 };
    static const size_t nwant[] = { 1, 2, 1 };
    g_autoptr(GError) error = NULL;
    g_autoptr(RdmigDirtyTracker) t = rdmig_dirty_tracker_new(c->method, &error);
    uint8_t *mem[3];
    uint64_t bm_guard = 0;

    g_assert_no_error(error);
    for (unsigned i = 0; i < 3; i++) {
        unsigned index = 99;

        /* Mixed kinds: the second range is private if the others are shared. */
        mem[i] = mem_new(i == 1 ? (c->mem == MEM_MEMFD ? MEM_ANON : MEM_MEMFD) : c->mem,
                         npages[i] * ps);
        g_assert_true(rdmig_dirty_tracker_add(t, mem[i], npages[i] * ps, ps, &index, &error));
        g_assert_no_error(error);
        g_assert_cmpuint(index, ==, i);
    }
    g_assert_true(rdmig_dirty_tracker_start(t, &error));
    g_assert_no_error(error);

    for (unsigned i = 0; i < 3; i++) {
        for (size_t j = 0; j < nwant[i]; j++)
            touch(mem[i], want[i][j], ps);
    }
    /* In reverse, so a sync of one range cannot be lucky about the others. */
    for (int i = 2; i >= 0; i--) {
        g_autofree uint64_t *bm = bitmap_new(npages[i]);

        sync_into(t, i, bm);
        assert_bits(bm, npages[i], want[i], nwant[i]);
    }

    g_assert_false(rdmig_dirty_tracker_sync(t, 3, &bm_guard, &error));
    g_assert_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID);
    g_assert_cmphex(bm_guard, ==, 0);

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    for (unsigned i = 0; i < 3; i++)
        mem_free(mem[i], npages[i] * ps);
}

/* ---- concurrency --------------------------------------------------------- */

#define CONC_PAGES 4096

/*
 * Writers pause at a gate while the main thread syncs.  uffd-wp is exact with
 * writers running, so its cases leave the gate open; soft-dirty reads pagemap
 * and clears in two steps (engine/dirty.c), and is exact only with writers
 * paused across sync(), which is how the engine uses it: these are its cases.
 */
typedef struct {
    GMutex lock;
    GCond cond;
    gint closed;             /* atomic: writers stop at gate_pass() */
    unsigned active, parked; /* writers still running, and those waiting at the gate */
} Gate;

static void gate_init(Gate *g, unsigned writers)
{
    g_mutex_init(&g->lock);
    g_cond_init(&g->cond);
    g->closed = 0;
    g->active = writers;
    g->parked = 0;
}

static void gate_clear(Gate *g)
{
    g_mutex_clear(&g->lock);
    g_cond_clear(&g->cond);
}

/* Writer, before each write: waits while the gate is closed. */
static void gate_pass(Gate *g)
{
    if (!g || !g_atomic_int_get(&g->closed))
        return;
    g_mutex_lock(&g->lock);
    g->parked++;
    g_cond_broadcast(&g->cond);
    while (g_atomic_int_get(&g->closed))
        g_cond_wait(&g->cond, &g->lock);
    g->parked--;
    g_mutex_unlock(&g->lock);
}

/* Writer, when it stops writing for good. */
static void gate_leave(Gate *g)
{
    if (!g)
        return;
    g_mutex_lock(&g->lock);
    g->active--;
    g_cond_broadcast(&g->cond);
    g_mutex_unlock(&g->lock);
}

/* Main thread: returns when no writer is between two gate_pass() calls. */
static void gate_close(Gate *g)
{
    if (!g)
        return;
    g_mutex_lock(&g->lock);
    g_atomic_int_set(&g->closed, 1);
    while (g->parked < g->active)
        g_cond_wait(&g->cond, &g->lock);
    g_mutex_unlock(&g->lock);
}

static void gate_open(Gate *g)
{
    if (!g)
        return;
    g_mutex_lock(&g->lock);
    g_atomic_int_set(&g->closed, 0);
    g_cond_broadcast(&g->cond);
    g_mutex_unlock(&g->lock);
}

/* A sync with the writers held at @gate (NULL: while they write). */
static void sync_gated(Gate *gate, RdmigDirtyTracker *t, uint64_t *bm)
{
    gate_close(gate);
    sync_into(t, 0, bm);
    gate_open(gate);
}

typedef struct {
    uint8_t *mem;
    Gate *gate;
    gint go;   /* barrier: the main thread has taken its first sync */
    gint done; /* the writer has written its whole set */
} Barrier;

static gpointer barrier_writer(gpointer data)
{
    Barrier *b = data;

    while (!g_atomic_int_get(&b->go))
        g_thread_yield();
    for (uint64_t i = 0; i < CONC_PAGES; i += 3) {
        gate_pass(b->gate);
        touch(b->mem, i, ps);
        if (i % 96 == 0)
            g_thread_yield(); /* spread the writes over several syncs */
    }
    g_atomic_int_set(&b->done, 1);
    gate_leave(b->gate);
    return NULL;
}

/*
 * A writer writes a known set of pages while the main thread syncs: the
 * union of all syncs, plus one after the writer finished, is exactly the set.
 */
static void test_concurrent_barrier(gconstpointer data)
{
    const Case *c = data;
    Gate gate;
    Barrier b = { .mem = mem_new(c->mem, CONC_PAGES * ps),
                  .gate = c->method == RDMIG_DIRTY_SOFT_DIRTY ? &gate : NULL };
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, b.mem, CONC_PAGES * ps, ps);
    g_autofree uint64_t *all = bitmap_new(CONC_PAGES);
    g_autofree uint64_t *bm = bitmap_new(CONC_PAGES);
    unsigned syncs = 0, busy_syncs = 0;

    gate_init(&gate, 1);
    GThread *writer = g_thread_new("dirty-writer", barrier_writer, &b);

    sync_into(t, 0, all);
    g_assert_cmpuint(bitmap_count(all, CONC_PAGES), ==, 0);
    g_atomic_int_set(&b.go, 1);
    while (!g_atomic_int_get(&b.done)) {
        memset(bm, 0, CONC_PAGES / 8);
        sync_gated(b.gate, t, bm);
        syncs++;
        if (bitmap_count(bm, CONC_PAGES))
            busy_syncs++;
        /* A page may come twice for one write: a scan can catch the fault
         * that unprotected it before the faulting store retired, then
         * re-protect it, and the retried store faults again. */
        for (unsigned w = 0; w < CONC_PAGES / 64; w++)
            all[w] |= bm[w];
    }
    g_thread_join(writer);
    sync_into(t, 0, all);

    g_autofree uint64_t *written = bitmap_new(CONC_PAGES);
    for (uint64_t i = 0; i < CONC_PAGES; i += 3)
        written[i / 64] |= UINT64_C(1) << (i % 64);
    assert_reported(c, b.mem, all, written, CONC_PAGES);
    g_test_message("%u syncs while writing%s, %u of them found pages", syncs,
                   b.gate ? " (writer paused across each)" : "", busy_syncs);

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(b.mem, CONC_PAGES * ps);
    gate_clear(&gate);
}

typedef struct {
    uint8_t *mem;
    uint64_t first, count; /* the writer's own pages: one writer per page */
    uint32_t seed;
    gint *stop;
    Gate *gate;
} Scribbler;

static gpointer scribbler(gpointer data)
{
    Scribbler *s = data;
    uint32_t x = s->seed;
    uint64_t n = 0;

    for (;;) {
        gate_pass(s->gate);
        if (g_atomic_int_get(s->stop))
            break;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        uint64_t page = s->first + x % s->count;
        uint64_t *word = (uint64_t *)(s->mem + page * ps) + (x >> 8) % (ps / 8);

        *(volatile uint64_t *)word = ++n;
    }
    gate_leave(s->gate);
    return NULL;
}

/*
 * The migration property: copy everything once, then keep copying only what
 * sync() reports while two threads write at random.  After the writers stop
 * and a last sync, the copy must equal the memory byte for byte.  A write
 * lost between a scan and its re-protection shows up as a difference.
 */
static void test_concurrent_shadow(gconstpointer data)
{
    const Case *c = data;
    const size_t len = CONC_PAGES * ps;
    uint8_t *mem = mem_new(c->mem, len);
    g_autofree uint8_t *shadow = g_malloc(len);
    g_autoptr(RdmigDirtyTracker) t = tracker_start(c->method, mem, len, ps);
    g_autofree uint64_t *bm = bitmap_new(CONC_PAGES);
    gint stop = 0;
    Gate gate;
    Gate *g = c->method == RDMIG_DIRTY_SOFT_DIRTY ? &gate : NULL;
    Scribbler s[2] = {
        { mem, 0, CONC_PAGES / 2, 0x1234567, &stop, g },
        { mem, CONC_PAGES / 2, CONC_PAGES / 2, 0x7654321, &stop, g },
    };
    GThread *th[2];
    gint64 until;
    unsigned rounds = 0;
    uint64_t copied = 0;

    memcpy(shadow, mem, len);
    gate_init(&gate, 2);
    for (int i = 0; i < 2; i++)
        th[i] = g_thread_new("dirty-scribbler", scribbler, &s[i]);

    until = g_get_monotonic_time() + 300 * G_TIME_SPAN_MILLISECOND;
    for (bool last = false;; rounds++) {
        if (!last && g_get_monotonic_time() >= until) {
            g_atomic_int_set(&stop, 1);
            for (int i = 0; i < 2; i++)
                g_thread_join(th[i]);
            last = true; /* one more round with the writers stopped */
        } else if (last) {
            break;
        }
        memset(bm, 0, CONC_PAGES / 8);
        sync_gated(g, t, bm);
        for (uint64_t p = 0; p < CONC_PAGES; p++) {
            if (bit(bm, p)) {
                memcpy(shadow + p * ps, mem + p * ps, ps);
                copied++;
            }
        }
    }
    for (uint64_t p = 0; p < CONC_PAGES; p++) {
        if (memcmp(shadow + p * ps, mem + p * ps, ps))
            g_error("page %" G_GUINT64_FORMAT " changed but was never reported after the change",
                    p);
    }
    g_test_message("%u rounds%s, %" G_GUINT64_FORMAT " pages copied", rounds,
                   g ? " (writers paused across each sync)" : "", copied);

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, len);
    gate_clear(&gate);
}

/* ---- lifecycle and arguments --------------------------------------------- */

static uint64_t pagemap_entry(const void *addr)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t e = 0;

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pread(fd, &e, sizeof(e), (uintptr_t)addr / ps * sizeof(e)), ==, sizeof(e));
    close(fd);
    return e;
}

/* free() must leave no page write-protected behind. */
static void test_free_unprotects(gconstpointer data)
{
    const Case *c = data;
    uint8_t *mem = mem_new(c->mem, NPAGES * ps);
    RdmigDirtyTracker *t = tracker_start(c->method, mem, NPAGES * ps, ps);

    g_assert_true(pagemap_entry(mem + 3 * ps) & PM_UFFD_WP);
    rdmig_dirty_tracker_free(t);
    g_assert_false(pagemap_entry(mem + 3 * ps) & PM_UFFD_WP);
    touch(mem, 3, ps);
    g_assert_false(pagemap_entry(mem + 3 * ps) & PM_UFFD_WP);

    /* The memory can be tracked again from scratch. */
    t = tracker_start(c->method, mem, NPAGES * ps, ps);
    rdmig_dirty_tracker_free(t);
    mem_free(mem, NPAGES * ps);
}

#define ASSERT_INVALID(call)                                      \
    do {                                                          \
        g_autoptr(GError) e_ = NULL;                              \
        GError **error = &e_;                                     \
        g_assert_false(call);                                     \
        g_assert_error(e_, RDMIG_ERROR, RDMIG_ERROR_INVALID);     \
        g_test_message("rejected as expected: %s", e_->message); \
    } while (0)

static void test_invalid_args(gconstpointer data)
{
    const Case *c = data;
    const size_t len = 8 * ps;
    uint8_t *mem = mem_new(c->mem, len);
    uint8_t *other = mem_new(c->mem, len);
    g_autoptr(GError) err = NULL;
    g_autoptr(RdmigDirtyTracker) t = rdmig_dirty_tracker_new(c->method, &err);
    uint64_t bm = 0;
    unsigned index = 42;

    g_assert_no_error(err);

    ASSERT_INVALID(rdmig_dirty_tracker_sync(t, 0, &bm, error)); /* before start */
    ASSERT_INVALID(rdmig_dirty_tracker_start(t, error));        /* no ranges */
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, len, 0, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, len, 1000, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, len, ps + 512, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem + 1, len - ps, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem + 512, len - ps, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, NULL, len, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, 0, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, ps + 1, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, 3 * ps, 2 * ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, (void *)(UINTPTR_MAX & ~(uintptr_t)(ps - 1)),
                                           2 * ps, ps, &index, error));
    g_assert_cmpuint(index, ==, 42); /* untouched on failure */

    g_assert_true(rdmig_dirty_tracker_add(t, mem + 2 * ps, 4 * ps, ps, &index, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(index, ==, 0);
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, 3 * ps, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem + 5 * ps, 3 * ps, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem, len, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, mem + 3 * ps, ps, ps, &index, error));
    /* Adjacent is fine; index is optional. */
    g_assert_true(rdmig_dirty_tracker_add(t, mem + 6 * ps, 2 * ps, ps, NULL, &err));
    g_assert_no_error(err);

    g_assert_true(rdmig_dirty_tracker_start(t, &err));
    g_assert_no_error(err);
    ASSERT_INVALID(rdmig_dirty_tracker_start(t, error));
    ASSERT_INVALID(rdmig_dirty_tracker_add(t, other, len, ps, &index, error));
    ASSERT_INVALID(rdmig_dirty_tracker_sync(t, 2, &bm, error));
    ASSERT_INVALID(rdmig_dirty_tracker_sync(t, UINT_MAX, &bm, error));
    g_assert_cmphex(bm, ==, 0);
    sync_into(t, 1, &bm);
    g_assert_cmphex(bm, ==, 0);

    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, len);
    mem_free(other, len);
}

static void test_new_invalid_method(void)
{
    g_autoptr(GError) error = NULL;

    g_assert_null(rdmig_dirty_tracker_new((RdmigDirtyMethod)42, &error));
    g_assert_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID);
}

static void test_method_str(void)
{
    g_assert_cmpstr(rdmig_dirty_method_str(RDMIG_DIRTY_AUTO), ==, "auto");
    g_assert_cmpstr(rdmig_dirty_method_str(RDMIG_DIRTY_UFFD_WP), ==, "uffd-wp");
    g_assert_cmpstr(rdmig_dirty_method_str(RDMIG_DIRTY_SOFT_DIRTY), ==, "soft-dirty");
}

/* The kernel's verdicts, taken by this test on its own (NULL: it has it). */
static char *uffd_wp_missing, *soft_dirty_missing;

/* AUTO picks uffd-wp where the kernel has it, else soft-dirty, else fails
 * naming both. */
static void test_auto(void)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(RdmigDirtyTracker) t = rdmig_dirty_tracker_new(RDMIG_DIRTY_AUTO, &error);
    RdmigDirtyMethod m;
    uint8_t *mem;
    uint64_t bm = 0;

    if (uffd_wp_missing && soft_dirty_missing) {
        g_assert_null(t);
        g_assert_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED);
        g_assert_nonnull(strstr(error->message, "uffd-wp"));
        g_assert_nonnull(strstr(error->message, "soft-dirty"));
        return;
    }
    g_assert_no_error(error);
    m = rdmig_dirty_tracker_method(t);
    g_assert_cmpint(m, ==, uffd_wp_missing ? RDMIG_DIRTY_SOFT_DIRTY : RDMIG_DIRTY_UFFD_WP);
    g_test_message("auto picked %s", rdmig_dirty_method_str(m));

    mem = mem_new(MEM_ANON, 4 * ps);
    g_assert_true(rdmig_dirty_tracker_add(t, mem, 4 * ps, ps, NULL, &error));
    g_assert_no_error(error);
    g_assert_true(rdmig_dirty_tracker_start(t, &error));
    g_assert_no_error(error);
    touch(mem, 2, ps);
    sync_into(t, 0, &bm);
    g_assert_cmphex(bm, ==, 1 << 2);
    g_clear_pointer(&t, rdmig_dirty_tracker_free);
    mem_free(mem, 4 * ps);
}

/* Feature bits of userfaultfd (values from the kernel's uapi header, which
 * this system's headers may predate). */
#define TEST_UFFD_WP_UNPOPULATED (UINT64_C(1) << 13)
#define TEST_UFFD_WP_ASYNC (UINT64_C(1) << 15)

/*
 * The test's own verdict on uffd-wp's asynchronous mode, independent of the
 * library's probe: NULL if the kernel offers it, else why not.
 */
static char *kernel_lacks_uffd_wp_async(void)
{
    long fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    struct uffdio_api api = { .api = UFFD_API, .features = 0 };
    char *why = NULL;

    if (fd < 0)
        fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return g_strdup_printf("this kernel gives no userfaultfd here: %s", g_strerror(errno));
    if (ioctl((int)fd, UFFDIO_API, &api) < 0)
        why = g_strdup_printf("UFFDIO_API failed: %s", g_strerror(errno));
    else if ((api.features & (TEST_UFFD_WP_ASYNC | TEST_UFFD_WP_UNPOPULATED)) !=
             (TEST_UFFD_WP_ASYNC | TEST_UFFD_WP_UNPOPULATED))
        why = g_strdup("this kernel's userfaultfd lacks asynchronous write-protect "
                       "(UFFD_FEATURE_WP_ASYNC, Linux >= 6.7)");
    close((int)fd);
    return why;
}

static void test_uffd_wp_unsupported(void)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(RdmigDirtyTracker) t = rdmig_dirty_tracker_new(RDMIG_DIRTY_UFFD_WP, &error);

    g_assert_null(t);
    g_assert_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED);
    g_assert_nonnull(strstr(error->message, "uffd-wp"));
    g_test_message("%s", error->message);
}

/*
 * The test's own verdict on soft-dirty, independent of the library's probe,
 * so that a library that wrongly refuses (or wrongly accepts) is caught.
 */
static bool kernel_has_soft_dirty(void)
{
    volatile uint8_t *p = mmap(NULL, ps, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    bool set, cleared;

    g_assert_true(p != MAP_FAILED);
    p[0] = 1;
    if (fd < 0 || write(fd, "4", 1) != 1) {
        if (fd >= 0)
            close(fd);
        munmap((void *)p, ps);
        return false;
    }
    cleared = !(pagemap_entry((void *)p) & PM_SOFT_DIRTY);
    p[0] = 2;
    set = pagemap_entry((void *)p) & PM_SOFT_DIRTY;
    close(fd);
    munmap((void *)p, ps);
    return cleared && set;
}

static void test_soft_dirty_unsupported(void)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(RdmigDirtyTracker) t = rdmig_dirty_tracker_new(RDMIG_DIRTY_SOFT_DIRTY, &error);

    g_assert_null(t);
    g_assert_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED);
    g_assert_nonnull(strstr(error->message, "soft-dirty"));
    g_test_message("%s", error->message);
}

/* A case of a method this kernel lacks: counted as a skip, with the
 * reason, rather than left out. */
static void test_method_not_here(gconstpointer data)
{
    const Case *c = data;

    g_test_skip(c->method == RDMIG_DIRTY_UFFD_WP ? uffd_wp_missing : soft_dirty_missing);
}

/* Registers every case for @method; @skip_all: as skips (the kernel lacks it). */
static void add_cases(RdmigDirtyMethod method, bool skip_all)
{
    static const struct {
        const char *name;
        GTestDataFunc func;
        bool uffd_only;
    } cases[] = {
        { "empty", test_empty, false },
        { "pages", test_pages, false },
        { "sync-clears", test_sync_clears, false },
        { "between-syncs", test_between_syncs, false },
        { "many-regions", test_many_regions, false },
        { "untouched", test_untouched, false },
        { "large-page-size", test_large_page_size, false },
        { "multi-range", test_multi_range, false },
        { "concurrent-barrier", test_concurrent_barrier, false },
        { "concurrent-shadow", test_concurrent_shadow, false },
        { "free-unprotects", test_free_unprotects, true },
        { "invalid-args", test_invalid_args, false },
    };

    for (MemKind mem = MEM_ANON; mem <= MEM_THP; mem++) {
        Case *c = g_new(Case, 1); /* lives as long as the test program */

        *c = (Case){ method, mem };
        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
            g_autofree char *path = NULL;
            GTestDataFunc func = cases[i].func;

            if (cases[i].uffd_only && method != RDMIG_DIRTY_UFFD_WP)
                continue;
            if (skip_all)
                func = test_method_not_here;
            path = g_strdup_printf("/dirty/%s/%s/%s", rdmig_dirty_method_str(method),
                                   mem_kind_names[mem], cases[i].name);
            g_test_add_data_func(path, c, func);
        }
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    ps = sysconf(_SC_PAGESIZE);

    g_test_add_func("/dirty/method-str", test_method_str);
    g_test_add_func("/dirty/new-invalid-method", test_new_invalid_method);
    g_test_add_func("/dirty/auto", test_auto);

    /* Each method's cases run where the kernel has it (this host: uffd-wp;
     * the soft-RoCE VM's 6.1 kernel: soft-dirty); elsewhere they are counted
     * skips saying why, and the library must refuse the method clearly. */
    uffd_wp_missing = kernel_lacks_uffd_wp_async();
    if (uffd_wp_missing)
        g_test_add_func("/dirty/uffd-wp/unsupported", test_uffd_wp_unsupported);
    add_cases(RDMIG_DIRTY_UFFD_WP, uffd_wp_missing != NULL);

    if (!kernel_has_soft_dirty()) {
        soft_dirty_missing = g_strdup("this kernel does not track soft-dirty (no "
                                      "CONFIG_MEM_SOFT_DIRTY); these cases run in the soft-RoCE "
                                      "VM (rdma suite), whose kernel does");
        g_test_add_func("/dirty/soft-dirty/unsupported", test_soft_dirty_unsupported);
    }
    add_cases(RDMIG_DIRTY_SOFT_DIRTY, soft_dirty_missing != NULL);

    int rc = g_test_run();
    g_free(uffd_wp_missing);
    g_free(soft_dirty_missing);
    return rc;
}

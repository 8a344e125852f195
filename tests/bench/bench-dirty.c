/* SPDX-License-Identifier: MIT */
/*
 * bench-dirty: what the built-in dirty trackers cost on this kernel.
 *
 *   bench-dirty [--size-mib N] [--dirty-percent 0,1,10,100]
 *               [--method uffd-wp|soft-dirty|all] [--memory anon|memfd]
 *
 * For each method: the time to arm (start()) and to disarm (free()) the
 * whole region, the time of one sync() after a given share of the pages was
 * written, and what the first write to an armed page costs compared with a
 * write to the same, already writable, page without a tracker.  Each figure
 * is the median of 5 runs.  The written pages are spread evenly (every
 * 1/p-th page), the worst case for the number of runs a scan returns.
 *
 * The memory is written once before anything is timed: this runs in a VM
 * whose free pages go back to the host, and refaulting those would be
 * measured instead of the tracker.  Output is a Markdown table on stdout.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <rdmig/error.h>
#include <rdmig/rdmig.h>

#define RUNS 5

typedef struct {
    uint8_t *mem;
    uint64_t len;
    uint64_t npages;
    long ps;
} Region;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    return v[n / 2];
}

/* Page i is in the evenly spread p percent. */
static bool dirty_page(uint64_t i, unsigned pct)
{
    return (i + 1) * pct / 100 != i * pct / 100;
}

/* One store per page, a different value each pass so it is never elided. */
static void write_pages(const Region *r, unsigned pct)
{
    static uint8_t pass;

    pass++;
    for (uint64_t i = 0; i < r->npages; i++) {
        if (dirty_page(i, pct))
            ((volatile uint8_t *)r->mem)[i * r->ps] = pass;
    }
}

static uint64_t time_write_all_ns(const Region *r)
{
    uint64_t t0 = now_ns();

    write_pages(r, 100);
    return now_ns() - t0;
}

static RdmigDirtyTracker *tracker_new(RdmigDirtyMethod method, const Region *r, GError **error)
{
    RdmigDirtyTracker *t = rdmig_dirty_tracker_new(method, error);

    if (!t)
        return NULL;
    if (!rdmig_dirty_tracker_add(t, r->mem, r->len, r->ps, NULL, error)) {
        rdmig_dirty_tracker_free(t);
        return NULL;
    }
    return t;
}

typedef struct {
    char *unsupported; /* why, or NULL */
    double arm_ms, disarm_ms;
    double *sync_ms;   /* per --dirty-percent entry */
    uint64_t *sync_found;
    double write_armed_ns, write_plain_ns;
} Result;

static void die(GError *error)
{
    fprintf(stderr, "bench-dirty: %s\n", error->message);
    exit(1);
}

static void bench_method(RdmigDirtyMethod method, const Region *r, const unsigned *pcts,
                         size_t npcts, uint64_t plain_ns, Result *res)
{
    g_autoptr(GError) error = NULL;
    g_autofree uint64_t *bm = g_new0(uint64_t, (r->npages + 63) / 64);
    const size_t bm_bytes = (r->npages + 63) / 64 * sizeof(uint64_t);
    uint64_t arm[RUNS], disarm[RUNS], v[RUNS];
    RdmigDirtyTracker *t;

    res->sync_ms = g_new0(double, npcts);
    res->sync_found = g_new0(uint64_t, npcts);

    /* Arm and disarm: a fresh tracker each run, since start() is once only. */
    for (int run = 0; run < RUNS; run++) {
        uint64_t t0;

        t = tracker_new(method, r, &error);
        if (!t) {
            res->unsupported = g_strdup(error->message);
            return;
        }
        t0 = now_ns();
        if (!rdmig_dirty_tracker_start(t, &error))
            die(error);
        arm[run] = now_ns() - t0;
        t0 = now_ns();
        rdmig_dirty_tracker_free(t);
        disarm[run] = now_ns() - t0;
    }
    res->arm_ms = median(arm, RUNS) / 1e6;
    res->disarm_ms = median(disarm, RUNS) / 1e6;

    t = tracker_new(method, r, &error);
    if (!t || !rdmig_dirty_tracker_start(t, &error))
        die(error);

    for (size_t p = 0; p < npcts; p++) {
        for (int run = 0; run < RUNS; run++) {
            uint64_t t0, found = 0;

            write_pages(r, pcts[p]);
            memset(bm, 0, bm_bytes);
            t0 = now_ns();
            if (!rdmig_dirty_tracker_sync(t, 0, bm, &error))
                die(error);
            v[run] = now_ns() - t0;
            for (uint64_t w = 0; w < (r->npages + 63) / 64; w++)
                found += __builtin_popcountll(bm[w]);
            res->sync_found[p] = found;
        }
        res->sync_ms[p] = median(v, RUNS) / 1e6;
    }

    /* First write after arming: sync() has just protected every page. */
    for (int run = 0; run < RUNS; run++) {
        write_pages(r, 100);
        if (!rdmig_dirty_tracker_sync(t, 0, bm, &error))
            die(error);
        v[run] = time_write_all_ns(r);
    }
    res->write_armed_ns = (double)median(v, RUNS) / r->npages;
    res->write_plain_ns = (double)plain_ns / r->npages;

    rdmig_dirty_tracker_free(t);
}

static uint8_t *map_memory(const char *kind, uint64_t len)
{
    void *p;

    if (g_str_equal(kind, "anon")) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    } else {
        int fd = memfd_create("bench-dirty", MFD_CLOEXEC);

        if (fd < 0 || ftruncate(fd, len) < 0) {
            perror("memfd");
            exit(1);
        }
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    }
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv)
{
    gint size_mib = 1024;
    /* GOption overwrites without freeing: no allocated defaults. */
    g_autofree char *pct_arg = NULL;
    g_autofree char *method_arg = NULL;
    g_autofree char *memory_arg = NULL;
    GOptionEntry entries[] = {
        { "size-mib", 0, 0, G_OPTION_ARG_INT, &size_mib, "Region size (default 1024)", "N" },
        { "dirty-percent", 0, 0, G_OPTION_ARG_STRING, &pct_arg,
          "Shares of pages written before a sync (default 0,1,10,100)", "LIST" },
        { "method", 0, 0, G_OPTION_ARG_STRING, &method_arg,
          "uffd-wp, soft-dirty or all (default)", "METHOD" },
        { "memory", 0, 0, G_OPTION_ARG_STRING, &memory_arg,
          "anon (private anonymous, default) or memfd (shared shmem)", "KIND" },
        G_OPTION_ENTRY_NULL,
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- measure the dirty trackers");
    g_autoptr(GError) error = NULL;
    g_auto(GStrv) pct_strs = NULL;
    g_autofree unsigned *pcts = NULL;
    size_t npcts;
    RdmigDirtyMethod methods[2];
    size_t nmethods = 0;
    Result results[2] = { 0 };
    Region r;
    uint64_t plain[RUNS];
    struct utsname un;

    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
        fprintf(stderr, "bench-dirty: %s\n", error->message);
        return 2;
    }
    if (!pct_arg)
        pct_arg = g_strdup("0,1,10,100");
    if (!method_arg)
        method_arg = g_strdup("all");
    if (!memory_arg)
        memory_arg = g_strdup("anon");
    if (size_mib <= 0) {
        fprintf(stderr, "bench-dirty: --size-mib must be positive\n");
        return 2;
    }
    if (!g_str_equal(memory_arg, "anon") && !g_str_equal(memory_arg, "memfd")) {
        fprintf(stderr, "bench-dirty: --memory must be anon or memfd\n");
        return 2;
    }
    if (g_str_equal(method_arg, "uffd-wp") || g_str_equal(method_arg, "all"))
        methods[nmethods++] = RDMIG_DIRTY_UFFD_WP;
    if (g_str_equal(method_arg, "soft-dirty") || g_str_equal(method_arg, "all"))
        methods[nmethods++] = RDMIG_DIRTY_SOFT_DIRTY;
    if (!nmethods) {
        fprintf(stderr, "bench-dirty: --method must be uffd-wp, soft-dirty or all\n");
        return 2;
    }
    pct_strs = g_strsplit(pct_arg, ",", -1);
    npcts = g_strv_length(pct_strs);
    pcts = g_new(unsigned, npcts);
    for (size_t i = 0; i < npcts; i++) {
        guint64 v;

        if (!g_ascii_string_to_unsigned(g_strstrip(pct_strs[i]), 10, 0, 100, &v, &error)) {
            fprintf(stderr, "bench-dirty: --dirty-percent: %s\n", error->message);
            return 2;
        }
        pcts[i] = v;
    }

    r.ps = sysconf(_SC_PAGESIZE);
    r.len = (uint64_t)size_mib << 20;
    r.npages = r.len / r.ps;
    r.mem = map_memory(memory_arg, r.len);
    memset(r.mem, 1, r.len);

    for (int run = 0; run < RUNS; run++)
        plain[run] = time_write_all_ns(&r);

    for (size_t m = 0; m < nmethods; m++) {
        bench_method(methods[m], &r, pcts, npcts, median(plain, RUNS), &results[m]);
        for (size_t p = 0; !results[m].unsupported && p < npcts; p++) {
            uint64_t want = 0;

            for (uint64_t i = 0; i < r.npages; i++)
                want += dirty_page(i, pcts[p]);
            if (results[m].sync_found[p] != want)
                fprintf(stderr, "bench-dirty: %s: sync after %u%% found %" PRIu64
                        " pages, expected %" PRIu64 "\n",
                        rdmig_dirty_method_str(methods[m]), pcts[p],
                        results[m].sync_found[p], want);
        }
    }

    uname(&un);
    printf("Dirty tracking, %d MiB %s memory (%" PRIu64 " pages of %ld bytes), kernel %s, "
           "median of %d runs.\n\n",
           size_mib, g_str_equal(memory_arg, "anon") ? "private anonymous" : "shared memfd",
           r.npages, r.ps, un.release, RUNS);
    printf("| method | arm (ms) | disarm (ms) |");
    for (size_t p = 0; p < npcts; p++)
        printf(" sync %u%% (ms) |", pcts[p]);
    printf(" first write, armed (ns/page) | write, no tracker (ns/page) | cost per first write "
           "(ns/page) |\n|---|---:|---:|");
    for (size_t p = 0; p < npcts; p++)
        printf("---:|");
    printf("---:|---:|---:|\n");

    for (size_t m = 0; m < nmethods; m++) {
        const Result *res = &results[m];

        printf("| %s |", rdmig_dirty_method_str(methods[m]));
        if (res->unsupported) {
            printf(" not supported: %s |", res->unsupported);
            for (size_t i = 0; i < npcts + 4; i++)
                printf(" |");
            printf("\n");
            continue;
        }
        printf(" %.2f | %.2f |", res->arm_ms, res->disarm_ms);
        for (size_t p = 0; p < npcts; p++)
            printf(" %.3f |", res->sync_ms[p]);
        printf(" %.0f | %.1f | %.0f |\n", res->write_armed_ns, res->write_plain_ns,
               res->write_armed_ns - res->write_plain_ns);
    }

    for (size_t m = 0; m < nmethods; m++) {
        g_free(results[m].unsupported);
        g_free(results[m].sync_ms);
        g_free(results[m].sync_found);
    }
    munmap(r.mem, r.len);
    return 0;
}

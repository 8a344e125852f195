/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the synthetic guest (tools/synthetic-guest.c): layout of the
 * initial fill, self-checking pages, dirty rate, pause, device state and
 * configuration checks.  No hardware needed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE */
#endif

#include "synthetic-guest.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static GQuark sg_test_quark(void)
{
    return g_quark_from_static_string("sg-error-quark");
}

/* Most cases count resident pages through the memfd's extents (SEEK_DATA):
 * they run on memfd RAM; the other kinds are test_memory_*'s. */
static void memfd_config(SgConfig *cfg)
{
    sg_config_init(cfg);
    cfg->memory = SG_MEMORY_MEMFD;
}

static SyntheticGuest *new_guest(uint64_t ram_size, double rate, SgPattern pattern)
{
    SgConfig cfg;
    GError *err = NULL;

    memfd_config(&cfg);
    cfg.ram_size = ram_size;
    cfg.dirty_rate_mib = rate;
    cfg.pattern = pattern;
    SyntheticGuest *g = sg_new(&cfg, &err);
    g_assert_no_error(err);
    g_assert_nonnull(g);
    return g;
}

static SyntheticGuest *new_guest_cfg(const SgConfig *cfg)
{
    GError *err = NULL;
    SyntheticGuest *g = sg_new(cfg, &err);

    g_assert_no_error(err);
    g_assert_nonnull(g);
    return g;
}

static uint64_t npages(SyntheticGuest *g)
{
    return sg_ram_size(g) / sg_page_size(g);
}

static const uint64_t *page_words(SyntheticGuest *g, uint64_t page)
{
    return (const uint64_t *)((const uint8_t *)sg_ram(g) + page * sg_page_size(g));
}

/* Pages the memfd has allocated (written at least once), from its data
 * extents; reading them through the mapping would allocate them. */
static uint64_t resident_pages(SyntheticGuest *g)
{
    int fd = sg_memfd(g);
    off_t size = (off_t)sg_ram_size(g);
    off_t pos = 0;
    uint64_t bytes = 0;

    while (pos < size) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0) {
            break;
        }
        off_t hole = lseek(fd, data, SEEK_HOLE);
        g_assert_cmpint(hole, >, data);
        bytes += (uint64_t)(hole - data);
        pos = hole;
    }
    return bytes / sg_page_size(g);
}

static uint64_t ram_hash(SyntheticGuest *g)
{
    const uint64_t *w = sg_ram(g);
    uint64_t n = sg_ram_size(g) / 8;
    uint64_t h = 0;

    for (uint64_t i = 0; i < n; i++) {
        h = (h ^ w[i]) * UINT64_C(0x100000001b3) + i;
    }
    return h;
}

static bool is_format_page(SyntheticGuest *g, uint64_t page)
{
    return page_words(g, page)[0] == (SG_MAGIC ^ page);
}

/* Sparse (synthetic-guest.h): zero but for one word, SG_MAGIC ^ page, that
 * is not word 0, 1, the middle or the last. */
static bool is_sparse_page(SyntheticGuest *g, uint64_t page)
{
    const uint64_t *w = page_words(g, page);
    uint32_t n = sg_page_size(g) / 8, found = 0, at = 0;

    for (uint32_t i = 0; i < n; i++) {
        if (w[i]) {
            found++;
            at = i;
        }
    }
    return found == 1 && w[at] == (SG_MAGIC ^ page) && at > 1 && at != n / 2 && at != n - 1;
}

static void test_config_defaults(void)
{
    SgConfig cfg;

    sg_config_init(&cfg);
    g_assert_cmpuint(cfg.page_size, ==, 4096);
    g_assert_cmpuint(cfg.vcpus, ==, 2);
    g_assert_cmpuint(cfg.ram_size, ==, 256 * MIB);
    g_assert_cmpfloat(cfg.dirty_rate_mib, ==, 0);
    g_assert_cmpint(cfg.pattern, ==, SG_PATTERN_UNIFORM);
    g_assert_cmpfloat(cfg.fill_fraction, ==, 0.75);
    g_assert_cmpfloat(cfg.zero_fraction, ==, 0.125);
    g_assert_cmpuint(cfg.seed, ==, 1);
    g_assert_cmpint(cfg.memory, ==, SG_MEMORY_ANON); /* QEMU's default */
}

static bool thp_enabled(void)
{
    g_autofree char *text = NULL;
    return g_file_get_contents("/sys/kernel/mm/transparent_hugepage/enabled", &text, NULL,
                               NULL) && !strstr(text, "[never]");
}

/* The default RAM: anonymous, at a 2 MiB boundary, no file; filled, it is
 * in transparent huge pages where the kernel has them on, and it checks. */
static void test_memory_anon(void)
{
    SgConfig cfg;
    SgStats st;

    sg_config_init(&cfg);
    cfg.ram_size = 16 * MIB;
    SyntheticGuest *g = new_guest_cfg(&cfg);
    g_assert_cmpint(sg_memory(g), ==, SG_MEMORY_ANON);
    g_assert_cmpstr(sg_memory_name(sg_memory(g)), ==, "anon");
    g_assert_cmpint(sg_memfd(g), ==, -1);
    g_assert_cmpuint(sg_block_page_size(g), ==, 4096);
    g_assert_cmpuint((uintptr_t)sg_ram(g) % SG_HUGE_PAGE_SIZE, ==, 0);
    g_assert_cmpuint(sg_huge_bytes(g), ==, 0);
    g_assert_true(sg_check(g, &st)); /* all zero */
    sg_fill(g);
    g_assert_true(sg_check(g, &st));
    g_assert_cmpuint(st.pages_bad, ==, 0);
    if (thp_enabled())
        g_assert_cmpuint(sg_huge_bytes(g), >, 0);
    else
        g_test_message("transparent huge pages are off here: 4 KiB pages");
    sg_free(g);
}

/* hugetlb RAM is whole 2 MiB pages: a size that is not is refused before
 * any mapping, naming the unit; the name of each kind. */
static void test_memory_hugetlb_config(void)
{
    SgConfig cfg;
    GError *err = NULL;

    sg_config_init(&cfg);
    cfg.memory = SG_MEMORY_HUGETLB;
    cfg.ram_size = 3 * MIB;
    g_assert_null(sg_new(&cfg, &err));
    g_assert_error(err, sg_test_quark(), SG_ERROR_INVALID);
    g_clear_error(&err);
    cfg.memory = (SgMemory)7;
    cfg.ram_size = 4 * MIB;
    g_assert_null(sg_new(&cfg, &err));
    g_assert_error(err, sg_test_quark(), SG_ERROR_INVALID);
    g_clear_error(&err);
    for (SgMemory m = SG_MEMORY_ANON; m <= SG_MEMORY_HUGETLB; m++) {
        SgMemory back = (SgMemory)7;
        g_assert_true(sg_memory_parse(sg_memory_name(m), &back));
        g_assert_cmpint(back, ==, m);
    }
    g_assert_cmpstr(sg_memory_name(SG_MEMORY_HUGETLB), ==, "hugetlb");
    g_assert_false(sg_memory_parse("huge", &cfg.memory));
}

static void test_new_is_zero_and_paused(void)
{
    SyntheticGuest *g = new_guest(4 * MIB, 0, SG_PATTERN_UNIFORM);
    SgStats st;

    g_assert_false(sg_running(g));
    g_assert_cmpint(sg_memfd(g), >=, 0);
    g_assert_cmpuint(resident_pages(g), ==, 0);
    g_assert_true(sg_check(g, &st));
    g_assert_cmpuint(st.pages_checked, ==, npages(g));
    g_assert_cmpuint(st.pages_bad, ==, 0);
    /* The check must not have allocated the holes. */
    g_assert_cmpuint(resident_pages(g), ==, 0);
    sg_free(g);
}

static void test_fill_check(void)
{
    SyntheticGuest *g = new_guest(64 * MIB, 0, SG_PATTERN_UNIFORM);
    SgStats st;

    sg_fill(g);
    g_assert_true(sg_check(g, &st));
    g_assert_cmpuint(st.pages_checked, ==, npages(g));
    g_assert_cmpuint(st.pages_bad, ==, 0);
    sg_get_stats(g, &st);
    g_assert_cmpuint(st.pages_checked, ==, npages(g));
    g_assert_cmpuint(st.pages_written, ==, 0);
    sg_free(g);
}

/* Fill with @fill/@zero over @ram bytes and check the page counts, overall
 * and in each eighth of RAM (the layout must be spread, not a prefix). */
static void check_fractions(uint64_t ram, double fill, double zero)
{
    SgConfig cfg;

    memfd_config(&cfg);
    cfg.ram_size = ram;
    cfg.fill_fraction = fill;
    cfg.zero_fraction = zero;
    SyntheticGuest *g = new_guest_cfg(&cfg);
    uint64_t n = npages(g);

    sg_fill(g);
    /* Count residency before reading anything through the mapping. */
    uint64_t resident = resident_pages(g);
    uint64_t filled = 0, sparse = 0;
    /* Per eighth only when eighths are whole fill groups (64 pages): a
     * group split between two eighths may put its whole filled run in one. */
    bool per_part = (n / 8) % 64 == 0 && n % 8 == 0;
    for (unsigned part = 0; part < 8; part++) {
        uint64_t a = n * part / 8, b = n * (part + 1) / 8, in_part = 0;
        for (uint64_t p = a; p < b; p++) {
            if (is_format_page(g, p)) {
                g_assert_cmpuint(page_words(g, p)[1], ==, 1);
                in_part++;
            } else if (is_sparse_page(g, p)) {
                sparse++;
                in_part++;
            }
        }
        if (per_part) {
            g_assert_cmpfloat_with_epsilon((double)in_part / (double)(b - a), fill, 0.03);
        }
        filled += in_part;
    }
    double f_filled = (double)filled / (double)n;
    double f_zero = (double)(resident - filled) / (double)n;
    double f_untouched = (double)(n - resident) / (double)n;
    g_test_message("%" G_GUINT64_FORMAT " pages: filled %.4f zero %.4f untouched %.4f",
                   n, f_filled, f_zero, f_untouched);
    g_assert_cmpfloat_with_epsilon(f_filled, fill, 0.02);
    g_assert_cmpfloat_with_epsilon(f_zero, zero, 0.02);
    g_assert_cmpfloat_with_epsilon(f_untouched, 1 - fill - zero, 0.02);
    /* One filled page in 16 is sparse, where there are whole groups of them. */
    if (filled >= 1024)
        g_assert_cmpfloat_with_epsilon((double)sparse / (double)filled, 1.0 / 16, 0.01);
    g_assert_true(sg_check(g, NULL));
    sg_free(g);
}

static void test_fill_fractions(void)
{
    check_fractions(64 * MIB, 0.75, 0.125);
    check_fractions(1000 * 4096, 0.3, 0.2);  /* groups that do not divide evenly */
    check_fractions(8 * MIB, 0.5, 0.5);
    check_fractions(8 * MIB, 1.0, 0.0);
    check_fractions(8 * MIB, 0.0, 0.0);
}

static void test_fill_deterministic(void)
{
    SgConfig cfg;

    memfd_config(&cfg);
    cfg.ram_size = 16 * MIB;
    SyntheticGuest *a = new_guest_cfg(&cfg);
    SyntheticGuest *b = new_guest_cfg(&cfg);
    cfg.seed = 2;
    SyntheticGuest *c = new_guest_cfg(&cfg);

    sg_fill(a);
    sg_fill(b);
    sg_fill(c);
    g_assert_true(memcmp(sg_ram(a), sg_ram(b), cfg.ram_size) == 0);
    g_assert_false(memcmp(sg_ram(a), sg_ram(c), cfg.ram_size) == 0);
    sg_free(a);
    sg_free(b);
    sg_free(c);
}

static void expect_bad(SyntheticGuest *g, uint64_t page)
{
    SgStats st;

    g_assert_false(sg_check(g, &st));
    g_assert_cmpuint(st.pages_bad, ==, 1);
    g_assert_cmpuint(st.first_bad_page, ==, page);
    sg_get_stats(g, &st);
    g_assert_cmpuint(st.pages_bad, ==, 1);
    g_assert_cmpuint(st.first_bad_page, ==, page);
}

static void test_corrupt(void)
{
    SyntheticGuest *g = new_guest(64 * MIB, 0, SG_PATTERN_UNIFORM);
    uint32_t ps = sg_page_size(g);
    uint64_t n = npages(g);
    uint8_t *ram = sg_ram(g);
    uint64_t p = n / 2 + 17;

    sg_fill(g);
    while (!is_format_page(g, p)) {
        p++;
    }
    /* One byte of the derived words. */
    size_t off = p * ps + 2345;
    ram[off] ^= 0x10;
    expect_bad(g, p);
    ram[off] ^= 0x10;
    g_assert_true(sg_check(g, NULL));

    /* The last byte of the last format page. */
    uint64_t last = n - 1;
    while (!is_format_page(g, last)) {
        last--;
    }
    ram[(last + 1) * ps - 1] ^= 1;
    expect_bad(g, last);
    ram[(last + 1) * ps - 1] ^= 1;

    /* A generation of 0 is not allowed on a format page. */
    uint64_t *w = (uint64_t *)(ram + p * ps);
    uint64_t gen = w[1];
    w[1] = 0;
    expect_bad(g, p);
    w[1] = gen;

    /* A sparse page with its word moved, changed, or a second word set. */
    uint64_t sp = 0;
    while (!is_sparse_page(g, sp)) {
        sp++;
    }
    uint64_t *sw = (uint64_t *)(ram + sp * ps);
    uint32_t at = 2;
    while (!sw[at]) {
        at++;
    }
    sw[at + 1] = sw[at];
    expect_bad(g, sp);
    sw[at + 1] = 0;
    sw[at] ^= 4;
    expect_bad(g, sp);
    sw[at] ^= 4;
    g_assert_true(sg_check(g, NULL));

    /* A page copied to the wrong place is caught by word 0. */
    uint64_t q = p + 1;
    while (!is_format_page(g, q)) {
        q++;
    }
    g_autofree uint8_t *save = g_memdup2(ram + q * ps, ps);
    memcpy(ram + q * ps, ram + p * ps, ps);
    expect_bad(g, q);
    memcpy(ram + q * ps, save, ps);

    /* A stray byte in a page that is zero (zeroed, or never touched). */
    uint64_t z = 0;
    while (is_format_page(g, z)) {
        z++;
    }
    ram[z * ps + 100] = 1;
    expect_bad(g, z);
    ram[z * ps + 100] = 0;
    g_assert_true(sg_check(g, NULL));
    sg_free(g);
}

/* Sum over pages of (generation - 1); with fill 1.0 every page starts at
 * generation 1, so this is the number of rewrites, split hot/cold. */
static uint64_t rewrites(SyntheticGuest *g, uint64_t *hot_out)
{
    uint64_t n = npages(g), hot_pages = n / 10, total = 0, hot = 0;

    for (uint64_t p = 0; p < n; p++) {
        uint64_t gen = page_words(g, p)[1];
        g_assert_cmpuint(gen, >=, 1);
        total += gen - 1;
        if (p < hot_pages) {
            hot += gen - 1;
        }
    }
    if (hot_out) {
        *hot_out = hot;
    }
    return total;
}

static void run_dirty(SgPattern pattern)
{
    SgConfig cfg;
    SgStats st;

    memfd_config(&cfg);
    cfg.ram_size = 64 * MIB;
    cfg.dirty_rate_mib = 50;
    cfg.pattern = pattern;
    cfg.fill_fraction = 1.0;
    cfg.sparse_every = 0; /* every page a format page: generations count rewrites */
    cfg.zero_fraction = 0;
    SyntheticGuest *g = new_guest_cfg(&cfg);

    sg_fill(g);
    sg_resume(g);
    g_assert_true(sg_running(g));
    g_usleep(300 * 1000);
    sg_pause(g);
    g_assert_false(sg_running(g));

    sg_get_stats(g, &st);
    double expect = 50.0 * MIB * 0.3 / 4096;
    g_test_message("pattern %d: %" G_GUINT64_FORMAT " pages written, %.0f expected",
                   pattern, st.pages_written, expect);
    /* The vCPUs must write.  How close they come to the asked rate is a
     * speed, measured by tests/bench/bench-timing.c: on two busy cores they
     * may be starved (948 of 3840 pages once, with the suites running
     * alongside), and a ceiling on pages per wall-clock time fails whenever
     * this thread is the one that oversleeps. */
    g_assert_cmpuint(st.pages_written, >, 0);
    g_assert_true(sg_check(g, &st));
    g_assert_cmpuint(st.pages_bad, ==, 0);

    /* No rewrite was lost to a race: generations add up to the count. */
    uint64_t hot;
    uint64_t total = rewrites(g, &hot);
    g_assert_cmpuint(total, ==, st.pages_written);
    double hot_share = (double)hot / (double)total;
    g_test_message("share of writes to the first 10%% of pages: %.3f", hot_share);
    if (pattern == SG_PATTERN_HOTSET) {
        g_assert_cmpfloat(hot_share, >=, 0.8);
        g_assert_cmpfloat(hot_share, <=, 0.97);
    } else {
        g_assert_cmpfloat(hot_share, <=, 0.25);
    }
    sg_free(g);
}

static void test_dirty_uniform(void)
{
    run_dirty(SG_PATTERN_UNIFORM);
}

static void test_dirty_hotset(void)
{
    run_dirty(SG_PATTERN_HOTSET);
}

static void test_dirty_zero_rate(void)
{
    SyntheticGuest *g = new_guest(4 * MIB, 0, SG_PATTERN_UNIFORM);
    SgStats st;

    sg_resume(g);
    g_usleep(30 * 1000);
    sg_pause(g);
    sg_get_stats(g, &st);
    g_assert_cmpuint(st.pages_written, ==, 0);
    sg_free(g);
}

static void test_pause(void)
{
    SyntheticGuest *g = new_guest(64 * MIB, 2000, SG_PATTERN_UNIFORM);
    SgStats st1, st2;

    sg_fill(g);
    sg_resume(g);
    g_usleep(50 * 1000);
    /* What pausing means is checked below: nothing changes afterwards.  How
     * long it takes is measured by tests/bench/bench-timing.c. */
    sg_pause(g);

    sg_get_stats(g, &st1);
    g_assert_cmpuint(st1.pages_written, >, 0);
    uint64_t h1 = ram_hash(g);
    g_usleep(100 * 1000);
    uint64_t h2 = ram_hash(g);
    sg_get_stats(g, &st2);
    g_assert_cmpuint(h1, ==, h2);
    g_assert_cmpuint(st1.pages_written, ==, st2.pages_written);
    g_assert_true(sg_check(g, NULL));

    /* Many quick pause/resume cycles leave no torn page behind. */
    for (int i = 0; i < 200; i++) {
        sg_resume(g);
        g_usleep(200);
        sg_pause(g);
    }
    g_assert_true(sg_check(g, &st2));
    g_assert_cmpuint(st2.pages_written, >=, st1.pages_written);

    /* Paused twice, resumed twice: harmless. */
    sg_pause(g);
    sg_resume(g);
    sg_resume(g);
    g_usleep(10 * 1000);
    sg_free(g); /* while running */
}

/* The reader's pages: never filled, never written by a vCPU, all zero;
 * the reader reads them while the guest runs, and only then; a config
 * that leaves nothing to write is refused. */
static void test_reader(void)
{
    SgConfig cfg;
    memfd_config(&cfg);
    cfg.ram_size = 16 * MIB;
    cfg.dirty_rate_mib = 4000;
    cfg.fill_fraction = 1.0;
    cfg.zero_fraction = 0;
    cfg.sparse_every = 0; /* every filled page has word 0 set */
    cfg.reader_pages = 256;
    g_autoptr(GError) err = NULL;
    SyntheticGuest *g = sg_new(&cfg, &err);
    g_assert_no_error(err);
    uint64_t n = sg_npages(g), first = n - cfg.reader_pages;
    sg_fill(g);
    g_assert_true(sg_start_reader(g, &err));
    g_assert_true(sg_start_reader(g, &err)); /* once is enough */
    SgStats st;
    g_usleep(30 * 1000);
    sg_get_stats(g, &st);
    g_assert_cmpuint(st.reader_reads, ==, 0); /* paused: no reads */
    sg_resume(g);
    g_usleep(200 * 1000);
    sg_pause(g);
    sg_get_stats(g, &st);
    g_assert_cmpuint(st.pages_written, >, 1000);
    g_assert_cmpuint(st.reader_reads, >, 0);
    g_assert_cmpuint(st.reader_reads, <=, cfg.reader_pages);
    const uint8_t *ram = sg_ram(g);
    for (uint64_t p = 0; p < n; p++) {
        const uint64_t *w = (const uint64_t *)(ram + p * cfg.page_size);
        if (p < first)
            g_assert_cmphex(w[0], ==, SG_MAGIC ^ p); /* filled, maybe rewritten */
        else
            for (size_t i = 0; i < cfg.page_size / 8; i++)
                g_assert_cmphex(w[i], ==, 0);
    }
    g_assert_true(sg_check(g, NULL));
    sg_free(g);

    cfg.reader_pages = cfg.ram_size / cfg.page_size;
    g_assert_null(sg_new(&cfg, &err));
    g_assert_error(err, sg_test_quark(), SG_ERROR_INVALID);
}

/* More vCPUs than pages: vCPUs without pages idle. */
static void test_tiny(void)
{
    SgConfig cfg;

    memfd_config(&cfg);
    cfg.ram_size = 2 * 4096;
    cfg.vcpus = 4;
    cfg.dirty_rate_mib = 10;
    cfg.pattern = SG_PATTERN_HOTSET;
    SyntheticGuest *g = new_guest_cfg(&cfg);

    sg_fill(g);
    sg_resume(g);
    g_usleep(20 * 1000);
    sg_pause(g);
    g_assert_true(sg_check(g, NULL));
    sg_free(g);
}

static void expect_load_error(SyntheticGuest *g, const uint8_t *data, size_t len,
                              const char *what)
{
    GError *err = NULL;

    g_assert_false(sg_load_device_state(g, data, len, &err));
    g_assert_nonnull(err);
    g_assert_true(err->domain == sg_test_quark());
    g_assert_nonnull(strstr(err->message, what));
    g_test_message("rejected as expected: %s", err->message);
    g_error_free(err);
}

/* Word 1 of every page: its generation, which every rewrite bumps. */
static uint64_t *generations(SyntheticGuest *g)
{
    uint64_t n = sg_npages(g);
    uint64_t *gen = g_new(uint64_t, n);
    for (uint64_t p = 0; p < n; p++)
        gen[p] = ((const uint64_t *)((const uint8_t *)sg_ram(g) + p * sg_page_size(g)))[1];
    return gen;
}

/* The guest's own dirty log (what --dirty-method guest hands the engine as
 * RdmigDirtyOps): a sync returns exactly the pages whose generation moved,
 * clears them, and a sync of part of the RAM takes only that part. */
static void test_dirty_log(void)
{
    SgConfig cfg;
    memfd_config(&cfg);
    cfg.ram_size = 16 * MIB;
    cfg.dirty_rate_mib = 100;
    SyntheticGuest *g = new_guest_cfg(&cfg);
    uint64_t n = sg_npages(g), words = (n + 63) / 64;
    sg_fill(g);
    sg_dirty_log_start(g);
    for (int pass = 0; pass < 2; pass++) {
        g_autofree uint64_t *before = generations(g);
        sg_resume(g);
        g_usleep(50 * 1000);
        sg_pause(g);
        g_autofree uint64_t *after = generations(g);
        g_autofree uint64_t *bm = g_new0(uint64_t, words);
        uint64_t got;
        if (pass == 0) {
            got = sg_dirty_log_sync(g, 0, n, bm);
        } else {
            /* In three parts that do not fall on word boundaries: 37 pages,
             * 1000, the rest; each part's bits start at its own bit 0. */
            uint64_t cut[] = { 0, 37, 1037, n };
            got = 0;
            for (int k = 0; k < 3; k++) {
                g_autofree uint64_t *part = g_new0(uint64_t, words);
                uint64_t len = cut[k + 1] - cut[k];
                got += sg_dirty_log_sync(g, cut[k], len, part);
                for (uint64_t i = 0; i < len; i++)
                    if (part[i / 64] >> (i % 64) & 1)
                        bm[(cut[k] + i) / 64] |= UINT64_C(1) << ((cut[k] + i) % 64);
            }
        }
        uint64_t changed = 0;
        for (uint64_t p = 0; p < n; p++) {
            bool marked = bm[p / 64] >> (p % 64) & 1;
            if (before[p] != after[p])
                changed++;
            if (marked != (before[p] != after[p]))
                g_error("page %" G_GUINT64_FORMAT ": generation %" G_GUINT64_FORMAT " -> %"
                        G_GUINT64_FORMAT " but %s", p, before[p], after[p],
                        marked ? "marked" : "not marked");
        }
        g_assert_cmpuint(changed, >, 0);
        g_assert_cmpuint(got, ==, changed);
        /* Taken: a second sync finds nothing. */
        memset(bm, 0, words * 8);
        g_assert_cmpuint(sg_dirty_log_sync(g, 0, n, bm), ==, 0);
    }
    /* Out of range: nothing. */
    g_autofree uint64_t *bm = g_new0(uint64_t, words);
    g_assert_cmpuint(sg_dirty_log_sync(g, n, 1, bm), ==, 0);
    sg_dirty_log_stop(g);
    sg_free(g);
}

static void test_device_state(void)
{
    SgConfig cfg;
    GError *err = NULL;
    SgStats sa, sb;

    memfd_config(&cfg);
    cfg.ram_size = 16 * MIB;
    cfg.dirty_rate_mib = 100;
    SyntheticGuest *a = new_guest_cfg(&cfg);
    SyntheticGuest *b = new_guest_cfg(&cfg);

    sg_fill(a);
    sg_resume(a);
    g_usleep(50 * 1000);
    sg_pause(a);

    g_autoptr(GByteArray) blob = g_byte_array_new();
    g_byte_array_append(blob, (const guint8 *)"x", 1); /* save appends */
    sg_save_device_state(a, blob);
    g_assert_cmpuint(blob->len, ==, 1 + 4096);
    const uint8_t *state = blob->data + 1;
    size_t len = blob->len - 1;

    /* "Migrate": RAM, then device state. */
    memcpy(sg_ram(b), sg_ram(a), cfg.ram_size);
    g_assert_true(sg_load_device_state(b, state, len, &err));
    g_assert_no_error(err);
    sg_get_stats(a, &sa);
    sg_get_stats(b, &sb);
    g_assert_cmpuint(sa.pages_written, ==, sb.pages_written);
    g_assert_cmpuint(sb.pages_written, >, 0);

    /* Same state in, same bytes out. */
    g_autoptr(GByteArray) again = g_byte_array_new();
    sg_save_device_state(b, again);
    g_assert_cmpmem(again->data, again->len, state, len);

    /* The load read the page the state points at (the last one written;
     * it was in memory here) and checked it: a page that differs is
     * refused, as a device model would find a stale ring. */
    g_assert_cmpint(sg_device_state_probe(b), ==, SG_PROBE_PRESENT);
    uint64_t probe = 0;
    for (int i = 0; i < 8; i++)
        probe = probe << 8 | state[1064 + i];
    g_assert_cmpuint(probe, >, 0);
    uint8_t *probe_page = (uint8_t *)sg_ram(b) + (probe - 1) * cfg.page_size;
    probe_page[100] ^= 0xff;
    expect_load_error(b, state, len, "does not hold what the device state was saved with");
    probe_page[100] ^= 0xff;
    g_assert_true(sg_load_device_state(b, state, len, &err));

    /* The destination carries on from there, pages staying consistent. */
    sg_resume(b);
    g_usleep(50 * 1000);
    sg_pause(b);
    g_assert_true(sg_check(b, &sb));
    g_assert_cmpuint(sb.pages_written, >, sa.pages_written);

    /* Bad blobs, and a failed load changes nothing. */
    g_autoptr(GByteArray) before = g_byte_array_new();
    sg_save_device_state(b, before);
    expect_load_error(b, state, len - 1, "bytes");
    expect_load_error(b, state, 0, "bytes");
    expect_load_error(b, NULL, 0, "bytes");
    g_autofree uint8_t *bad = g_memdup2(state, len);
    bad[2000] ^= 0x01;
    expect_load_error(b, bad, len, "checksum");
    bad[2000] ^= 0x01;
    bad[45] ^= 0x80; /* inside vCPU 0's RNG state */
    expect_load_error(b, bad, len, "checksum");
    bad[45] ^= 0x80;
    bad[len - 1] ^= 0x01; /* the checksum itself */
    expect_load_error(b, bad, len, "checksum");
    bad[len - 1] ^= 0x01;
    bad[0] ^= 0xff;
    expect_load_error(b, bad, len, "magic");
    bad[0] ^= 0xff;
    g_autoptr(GByteArray) after = g_byte_array_new();
    sg_save_device_state(b, after);
    g_assert_cmpmem(after->data, after->len, before->data, before->len);

    /* Not while running. */
    sg_resume(b);
    expect_load_error(b, state, len, "paused");
    sg_pause(b);

    /* A guest of another shape. */
    cfg.vcpus = 3;
    SyntheticGuest *c = new_guest_cfg(&cfg);
    expect_load_error(c, state, len, "vCPUs");
    sg_free(c);

    sg_free(a);
    sg_free(b);
}

static void test_bad_config(void)
{
    static const struct {
        const char *name;
        uint64_t ram_size;
        uint32_t page_size, vcpus;
        double fill, zero, rate;
        int pattern;
        const char *what;
    } cases[] = {
        { "zero ram", 0, 4096, 2, 0.75, 0.125, 0, 0, "ram_size" },
        { "ram not page multiple", 4096 * 10 + 1, 4096, 2, 0.75, 0.125, 0, 0, "ram_size" },
        { "page 2048", 1 * MIB, 2048, 2, 0.75, 0.125, 0, 0, "page_size" },
        { "page 5000", 5000 * 100, 5000, 2, 0.75, 0.125, 0, 0, "page_size" },
        { "page 0", 1 * MIB, 0, 2, 0.75, 0.125, 0, 0, "page_size" },
        { "vcpus 0", 1 * MIB, 4096, 0, 0.75, 0.125, 0, 0, "vcpus" },
        { "vcpus 65", 1 * MIB, 4096, 65, 0.75, 0.125, 0, 0, "vcpus" },
        { "fill < 0", 1 * MIB, 4096, 2, -0.1, 0.125, 0, 0, "fill_fraction" },
        { "fill > 1", 1 * MIB, 4096, 2, 1.1, 0, 0, 0, "fill_fraction" },
        { "fill NaN", 1 * MIB, 4096, 2, NAN, 0, 0, 0, "fill_fraction" },
        { "zero > 1", 1 * MIB, 4096, 2, 0, 1.5, 0, 0, "zero_fraction" },
        { "sum > 1", 1 * MIB, 4096, 2, 0.75, 0.5, 0, 0, "sum" },
        { "rate < 0", 1 * MIB, 4096, 2, 0.75, 0.125, -1, 0, "dirty_rate_mib" },
        { "rate inf", 1 * MIB, 4096, 2, 0.75, 0.125, INFINITY, 0, "dirty_rate_mib" },
        { "pattern 7", 1 * MIB, 4096, 2, 0.75, 0.125, 0, 7, "pattern" },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        SgConfig cfg;
        GError *err = NULL;

        sg_config_init(&cfg);
        cfg.ram_size = cases[i].ram_size;
        cfg.page_size = cases[i].page_size;
        cfg.vcpus = cases[i].vcpus;
        cfg.fill_fraction = cases[i].fill;
        cfg.zero_fraction = cases[i].zero;
        cfg.dirty_rate_mib = cases[i].rate;
        cfg.pattern = (SgPattern)cases[i].pattern;
        SyntheticGuest *g = sg_new(&cfg, &err);
        if (g) {
            g_error("config '%s' was accepted", cases[i].name);
        }
        g_assert_nonnull(err);
        g_assert_true(err->domain == sg_test_quark());
        if (!strstr(err->message, cases[i].what)) {
            g_error("config '%s': message '%s' does not name '%s'",
                    cases[i].name, err->message, cases[i].what);
        }
        g_test_message("%s: %s", cases[i].name, err->message);
        g_error_free(err);
    }

    /* Edges that are fine. */
    SgConfig cfg;
    memfd_config(&cfg);
    cfg.ram_size = 1 * MIB;
    cfg.page_size = 8192;
    cfg.vcpus = 64;
    cfg.fill_fraction = 0.7;
    cfg.zero_fraction = 0.3;
    SyntheticGuest *g = new_guest_cfg(&cfg);
    sg_fill(g);
    g_assert_true(sg_check(g, NULL));
    sg_free(g);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/synthetic-guest/config-defaults", test_config_defaults);
    g_test_add_func("/synthetic-guest/new-is-zero-and-paused", test_new_is_zero_and_paused);
    g_test_add_func("/synthetic-guest/memory-anon", test_memory_anon);
    g_test_add_func("/synthetic-guest/memory-hugetlb-config", test_memory_hugetlb_config);
    g_test_add_func("/synthetic-guest/fill-check", test_fill_check);
    g_test_add_func("/synthetic-guest/fill-fractions", test_fill_fractions);
    g_test_add_func("/synthetic-guest/fill-deterministic", test_fill_deterministic);
    g_test_add_func("/synthetic-guest/corrupt", test_corrupt);
    g_test_add_func("/synthetic-guest/dirty-uniform", test_dirty_uniform);
    g_test_add_func("/synthetic-guest/dirty-hotset", test_dirty_hotset);
    g_test_add_func("/synthetic-guest/dirty-zero-rate", test_dirty_zero_rate);
    g_test_add_func("/synthetic-guest/pause", test_pause);
    g_test_add_func("/synthetic-guest/tiny", test_tiny);
    g_test_add_func("/synthetic-guest/reader", test_reader);
    g_test_add_func("/synthetic-guest/device-state", test_device_state);
    g_test_add_func("/synthetic-guest/dirty-log", test_dirty_log);
    g_test_add_func("/synthetic-guest/bad-config", test_bad_config);
    return g_test_run();
}

/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of engine/ram.c: page bitmaps at word boundaries (checked
 * against a naive bit-by-bit model), zero-page detection, page hashes, and
 * residency of real memory of this process.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/ram.h"
#include "rdmig/error.h"

/* Sizes around the 64-bit word boundaries, and some that are not multiples of 64. */
static const uint64_t sizes[] = { 1, 2, 63, 64, 65, 127, 128, 129, 191, 200, 1000, 4096 };

/* Interesting positions for a bitmap of @nbits; out-of-range ones filtered by callers. */
static uint64_t positions(uint64_t nbits, uint64_t *out)
{
    const uint64_t cand[] = { 0, 1, 62, 63, 64, 65, 127, 128, 129, nbits / 2, nbits - 2, nbits - 1 };
    uint64_t n = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(cand); i++)
        if (cand[i] < nbits)
            out[n++] = cand[i];
    return n;
}

static uint64_t model_next(const uint64_t *bm, uint64_t nbits, uint64_t start, bool set)
{
    for (uint64_t i = start; i < nbits; i++)
        if (rdmig_bitmap_test(bm, i) == set)
            return i;
    return nbits;
}

static uint64_t model_count(const uint64_t *bm, uint64_t nbits)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < nbits; i++)
        n += rdmig_bitmap_test(bm, i);
    return n;
}

/* Checks every query of @bm against the model, from every start. */
static void check_against_model(const uint64_t *bm, uint64_t nbits)
{
    g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, model_count(bm, nbits));
    /* Every start in small maps; in large ones, every start near a word
     * boundary and a sample of the rest. */
    for (uint64_t s = 0; s <= nbits + 1; s++) {
        if (nbits > 256 && s % 64 > 1 && s % 64 < 63 && s % 29 && s + 2 < nbits)
            continue;
        g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, s), ==, model_next(bm, nbits, s, true));
        g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, s), ==,
                         model_next(bm, nbits, s, false));
    }
}

static void test_bitmap_single_bits(void)
{
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        uint64_t pos[16];
        uint64_t np = positions(nbits, pos);
        for (uint64_t k = 0; k < np; k++) {
            uint64_t b = pos[k];
            /* One bit set in an empty map. */
            g_autofree uint64_t *bm = rdmig_bitmap_new(nbits);
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 0);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, 0), ==, nbits);
            rdmig_bitmap_set(bm, b);
            g_assert_true(rdmig_bitmap_test(bm, b));
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 1);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, 0), ==, b);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, b), ==, b);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, b + 1), ==, nbits);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, b), ==, b + 1 < nbits ? b + 1 : nbits);
            check_against_model(bm, nbits);
            rdmig_bitmap_clear(bm, b);
            g_assert_false(rdmig_bitmap_test(bm, b));
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 0);

            /* One bit clear in a full map. */
            rdmig_bitmap_set_range(bm, 0, nbits);
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, nbits);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, nbits);
            rdmig_bitmap_clear(bm, b);
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, nbits - 1);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, b);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, b + 1), ==, nbits);
            check_against_model(bm, nbits);
        }
    }
}

/* Bits past @nbits in the last word (a caller's OR of a wider map, say) must
 * not be counted or returned. */
static void test_bitmap_tail_garbage(void)
{
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        if (nbits % 64 == 0)
            continue;
        size_t words = rdmig_bitmap_words(nbits);
        g_autofree uint64_t *bm = rdmig_bitmap_new(nbits);
        /* Only tail bits: all of them, or just the last one of the word. */
        const uint64_t tails[] = { ~0ull << (nbits % 64), 1ull << 63 };
        for (size_t k = 0; k < G_N_ELEMENTS(tails); k++) {
            bm[words - 1] = tails[k];
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 0);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, 0), ==, nbits);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, nbits - 1), ==, nbits);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, 0);
        }
        /* All ones but the first clear tail bit, and all ones but the last: next_clear
         * must not report a tail bit either. */
        memset(bm, 0xff, words * 8);
        bm[words - 1] &= ~(1ull << 63);
        g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, nbits);
        g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, nbits - 1), ==, nbits);

        memset(bm, 0xff, words * 8);
        g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, nbits);
        g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, nbits);
    }
}

static void test_bitmap_set_range(void)
{
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        if (nbits > 200)
            continue; /* exhaustive below; the large ones are covered by the random test */
        size_t words = rdmig_bitmap_words(nbits);
        g_autofree uint64_t *bm = rdmig_bitmap_new(nbits + 64); /* a word of guard */
        for (uint64_t start = 0; start <= nbits; start++) {
            for (uint64_t n = 0; start + n <= nbits; n++) {
                memset(bm, 0, (words + 1) * 8);
                rdmig_bitmap_set_range(bm, start, n);
                for (uint64_t i = 0; i < words * 64 + 64; i++) {
                    bool want = i >= start && i < start + n;
                    if (rdmig_bitmap_test(bm, i) != want)
                        g_error("set_range(%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
                                ") in %" G_GUINT64_FORMAT " bits: bit %" G_GUINT64_FORMAT " is %d",
                                start, n, nbits, i, !want);
                }
                g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, n);
                g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, 0), ==, n ? start : nbits);
                g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, start), ==, start + n);
            }
        }
        /* Ranges that add to bits already set. */
        memset(bm, 0, (words + 1) * 8);
        rdmig_bitmap_set(bm, 0);
        rdmig_bitmap_set(bm, nbits - 1);
        rdmig_bitmap_set_range(bm, nbits / 3, nbits / 3);
        check_against_model(bm, nbits);
    }
}

static void test_bitmap_random(void)
{
    GRand *rand = g_rand_new_with_seed(1234);
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        for (int iter = 0; iter < 20; iter++) {
            g_autofree uint64_t *bm = rdmig_bitmap_new(nbits);
            /* Sparse, dense and runs. */
            int density = g_rand_int_range(rand, 0, 3);
            for (uint64_t i = 0; i < nbits; i++) {
                bool on = density == 0   ? g_rand_int_range(rand, 0, 50) == 0
                          : density == 1 ? g_rand_int_range(rand, 0, 50) != 0
                                         : g_rand_boolean(rand);
                if (on)
                    rdmig_bitmap_set(bm, i);
            }
            uint64_t s = g_rand_int_range(rand, 0, (gint32)nbits);
            uint64_t n = g_rand_int_range(rand, 0, (gint32)(nbits - s + 1));
            rdmig_bitmap_set_range(bm, s, n);
            for (uint64_t i = s; i < s + n; i++)
                g_assert_true(rdmig_bitmap_test(bm, i));
            check_against_model(bm, nbits);
        }
    }
    g_rand_free(rand);
}

/* ------------------------------------------------------------ zero pages, hashes */

static void test_page_is_zero(void)
{
    static const size_t lens[] = { 4096, 8192, 65536, 2u << 20 };
    for (size_t li = 0; li < G_N_ELEMENTS(lens); li++) {
        size_t len = lens[li];
        uint8_t *p = NULL;
        g_assert_cmpint(posix_memalign((void **)&p, 4096, len), ==, 0);
        memset(p, 0, len);
        g_assert_true(rdmig_page_is_zero(p, len));
        /* Every byte of a 4 KiB page (every 8th offset among them), and for the
         * larger pages every 8th offset: one non-zero byte is enough. */
        size_t step = len == 4096 ? 1 : len <= 65536 ? 8 : 4093;
        for (size_t off = 0; off < len; off += step) {
            static const uint8_t vals[] = { 1, 0x80, 0xff };
            uint8_t v = vals[off % 3];
            p[off] = v;
            if (rdmig_page_is_zero(p, len))
                g_error("%zu-byte page with byte %zu = 0x%02x reads as zero", len, off, v);
            p[off] = 0;
        }
        p[len - 1] = 1;
        g_assert_false(rdmig_page_is_zero(p, len));
        p[len - 1] = 0;
        g_assert_true(rdmig_page_is_zero(p, len));
        free(p);
    }
}

static void test_page_hash(void)
{
    const size_t len = 4096;
    uint8_t *a = g_malloc(len), *b = g_malloc(len);
    for (size_t i = 0; i < len; i++)
        a[i] = (uint8_t)(i * 13 + 7);
    memcpy(b, a, len);
    /* Equal contents at different addresses hash equal, every time. */
    uint64_t ha = rdmig_page_hash(a, len);
    g_assert_cmphex(ha, ==, rdmig_page_hash(b, len));
    g_assert_cmphex(ha, ==, rdmig_page_hash(a, len));

    /* One byte or one bit anywhere changes it; the change undone restores it. */
    GHashTable *seen = g_hash_table_new(g_int64_hash, g_int64_equal);
    g_autofree uint64_t *keep = g_new(uint64_t, len + 1);
    keep[0] = ha;
    g_hash_table_add(seen, &keep[0]);
    for (size_t off = 0; off < len; off++) {
        b[off] ^= (uint8_t)(1u << (off % 8));
        keep[off + 1] = rdmig_page_hash(b, len);
        g_assert_cmphex(keep[off + 1], !=, ha);
        /* Different pages, different hashes: no collision among these 4097. */
        g_assert_false(g_hash_table_contains(seen, &keep[off + 1]));
        g_hash_table_add(seen, &keep[off + 1]);
        b[off] ^= (uint8_t)(1u << (off % 8));
    }
    g_assert_cmphex(rdmig_page_hash(b, len), ==, ha);
    g_hash_table_destroy(seen);

    /* The zero page has a fixed hash, distinct from a page of another size. */
    g_autofree uint8_t *z = g_malloc0(8192);
    g_assert_cmphex(rdmig_page_hash(z, 4096), ==, rdmig_page_hash(z + 4096, 4096));
    g_assert_cmphex(rdmig_page_hash(z, 4096), !=, rdmig_page_hash(z, 8192));
    g_free(a);
    g_free(b);
}

/* ------------------------------------------------------------ residency */

static long ps;

static void assert_resident(const uint64_t *bm, uint64_t npages, const uint64_t *want,
                            size_t nwant, const char *what)
{
    g_autofree uint64_t *exp = rdmig_bitmap_new(npages);
    for (size_t i = 0; i < nwant; i++)
        rdmig_bitmap_set(exp, want[i]);
    for (uint64_t i = 0; i < npages; i++)
        if (rdmig_bitmap_test(bm, i) != rdmig_bitmap_test(exp, i))
            g_error("%s: page %" G_GUINT64_FORMAT " reads as %s", what, i,
                    rdmig_bitmap_test(bm, i) ? "resident" : "untouched");
}

static void check_residency(uint8_t *mem, size_t len, const char *what)
{
    uint64_t npages = len / ps;
    g_autoptr(GError) err = NULL;

    g_autofree uint64_t *bm = rdmig_bitmap_new(npages);
    g_assert_true(rdmig_ram_resident(mem, len, (uint32_t)ps, bm, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(rdmig_bitmap_count(bm, npages), ==, 0);

    static const uint64_t touched[] = { 0, 5, 63, 64, 65, 127 };
    for (size_t i = 0; i < G_N_ELEMENTS(touched); i++)
        mem[touched[i] * ps + (size_t)(i * 17)] = (uint8_t)(i + 1);
    memset(bm, 0, rdmig_bitmap_words(npages) * 8);
    g_assert_true(rdmig_ram_resident(mem, len, (uint32_t)ps, bm, &err));
    g_assert_no_error(err);
    assert_resident(bm, npages, touched, G_N_ELEMENTS(touched), what);

    /* Larger migration pages: a block is resident if any page in it is. */
    uint32_t big = (uint32_t)ps * 16;
    uint64_t nbig = len / big;
    g_autofree uint64_t *bb = rdmig_bitmap_new(nbig);
    g_assert_true(rdmig_ram_resident(mem, len, big, bb, &err));
    g_assert_no_error(err);
    for (uint64_t blk = 0; blk < nbig; blk++) {
        bool want = false;
        for (size_t i = 0; i < G_N_ELEMENTS(touched); i++)
            want |= touched[i] / 16 == blk;
        if (rdmig_bitmap_test(bb, blk) != want)
            g_error("%s: %u-byte page %" G_GUINT64_FORMAT " reads as %s", what, big, blk,
                    want ? "untouched" : "resident");
    }

    /* The bitmap is OR-ed into, not overwritten. */
    memset(bm, 0, rdmig_bitmap_words(npages) * 8);
    rdmig_bitmap_set(bm, 200);
    g_assert_true(rdmig_ram_resident(mem, len, (uint32_t)ps, bm, &err));
    g_assert_true(rdmig_bitmap_test(bm, 200));
    g_assert_cmpuint(rdmig_bitmap_count(bm, npages), ==, G_N_ELEMENTS(touched) + 1);
}

static void test_resident_anon(void)
{
    size_t len = 256 * (size_t)ps;
    uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert_true(mem != MAP_FAILED);
    /* No huge pages here: one touch must make exactly one base page resident. */
    (void)madvise(mem, len, MADV_NOHUGEPAGE);
    check_residency(mem, len, "anonymous");
    munmap(mem, len);
}

static void test_resident_memfd(void)
{
    size_t len = 256 * (size_t)ps;
    int fd = memfd_create("rdmig-test-ram", MFD_CLOEXEC);
    if (fd < 0) {
        g_test_skip("memfd_create is not available on this kernel");
        return;
    }
    g_assert_cmpint(ftruncate(fd, (off_t)len), ==, 0);
    uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    g_assert_true(mem != MAP_FAILED);
    (void)madvise(mem, len, MADV_NOHUGEPAGE);
    check_residency(mem, len, "memfd");
    munmap(mem, len);
    close(fd);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    ps = sysconf(_SC_PAGESIZE);
    g_test_add_func("/ram/bitmap/single-bits", test_bitmap_single_bits);
    g_test_add_func("/ram/bitmap/tail-garbage", test_bitmap_tail_garbage);
    g_test_add_func("/ram/bitmap/set-range", test_bitmap_set_range);
    g_test_add_func("/ram/bitmap/random", test_bitmap_random);
    g_test_add_func("/ram/page/is-zero", test_page_is_zero);
    g_test_add_func("/ram/page/hash", test_page_hash);
    g_test_add_func("/ram/resident/anon", test_resident_anon);
    g_test_add_func("/ram/resident/memfd", test_resident_memfd);
    return g_test_run();
}

/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of engine/ram.c: page bitmaps at word boundaries, zero-page
 * detection, page hashes, and residency of real memory of this process.
 *
 * Every expectation about a bitmap comes from an independent model: one byte
 * per bit, kept by the test next to the bitmap, with count, next-set,
 * next-clear and set-range worked out by plain loops over those bytes.  The
 * rdmig_bitmap_* functions only ever produce the values under test; were they
 * also used for the expectations, one bug could agree with itself.
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

/* ------------------------------------------------------------ the model */

/* A bitmap and its model side by side.  The bitmap has one guard word past
 * its last one: no operation on [0, nbits) may touch it. */
typedef struct {
    uint64_t nbits;
    size_t words;     /* (nbits + 63) / 64, worked out here, not by rdmig_bitmap_words */
    uint64_t *bm;     /* words + 1 */
    uint8_t *model;   /* nbits bytes, each 0 or 1 */
    uint64_t *next1;  /* scratch: expected next_set from every start */
    uint64_t *next0;  /* scratch: expected next_clear from every start */
} Pair;

static Pair *pair_new(uint64_t nbits)
{
    Pair *p = g_new0(Pair, 1);
    p->nbits = nbits;
    p->words = (size_t)((nbits + 63) / 64);
    p->bm = g_new0(uint64_t, p->words + 1);
    p->model = g_malloc0(nbits);
    p->next1 = g_new(uint64_t, nbits + 1);
    p->next0 = g_new(uint64_t, nbits + 1);
    return p;
}

static void pair_free(Pair *p)
{
    g_free(p->bm);
    g_free(p->model);
    g_free(p->next1);
    g_free(p->next0);
    g_free(p);
}

/* Bit @i as ram.h lays it out (bit i % 64 of word i / 64), read without
 * rdmig_bitmap_test so that accessor is checked too. */
static bool raw_bit(const uint64_t *bm, uint64_t i)
{
    return (bm[i / 64] >> (i % 64)) & 1;
}

static uint64_t model_count(const Pair *p)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < p->nbits; i++)
        n += p->model[i];
    return n;
}

/* next1[s] / next0[s]: the first set / clear byte of the model at or after s,
 * or nbits; one walk from the end. */
static void model_next_tables(Pair *p)
{
    p->next1[p->nbits] = p->next0[p->nbits] = p->nbits;
    for (uint64_t i = p->nbits; i-- > 0;) {
        p->next1[i] = p->model[i] ? i : p->next1[i + 1];
        p->next0[i] = p->model[i] ? p->next0[i + 1] : i;
    }
}

static void model_fill_range(Pair *p, uint64_t start, uint64_t n, uint8_t value)
{
    for (uint64_t i = start; i < start + n; i++)
        p->model[i] = value;
}

/* Every bit (through the raw layout and through rdmig_bitmap_test), the
 * unused tail of the last word and the guard word. */
static void check_bits(const Pair *p, const char *what)
{
    for (uint64_t i = 0; i < p->nbits; i++) {
        if (raw_bit(p->bm, i) != p->model[i] || rdmig_bitmap_test(p->bm, i) != p->model[i])
            g_error("%s, %" G_GUINT64_FORMAT " bits: bit %" G_GUINT64_FORMAT " is %d (test() "
                    "says %d), the model says %d", what, p->nbits, i, raw_bit(p->bm, i),
                    rdmig_bitmap_test(p->bm, i), p->model[i]);
    }
    for (uint64_t i = p->nbits; i < (uint64_t)(p->words + 1) * 64; i++)
        if (raw_bit(p->bm, i))
            g_error("%s, %" G_GUINT64_FORMAT " bits: bit %" G_GUINT64_FORMAT
                    " past the end is set", what, p->nbits, i);
}

/* Compares count, next_set and next_clear from every start (and two past
 * the end) with the model. */
static void check_queries(Pair *p, const char *what)
{
    uint64_t want = model_count(p);
    uint64_t got = rdmig_bitmap_count(p->bm, p->nbits);
    if (got != want)
        g_error("%s, %" G_GUINT64_FORMAT " bits: count is %" G_GUINT64_FORMAT ", the model "
                "says %" G_GUINT64_FORMAT, what, p->nbits, got, want);
    model_next_tables(p);
    for (uint64_t s = 0; s <= p->nbits + 1; s++) {
        uint64_t w1 = p->next1[MIN(s, p->nbits)], w0 = p->next0[MIN(s, p->nbits)];
        uint64_t g1 = rdmig_bitmap_next_set(p->bm, p->nbits, s);
        uint64_t g0 = rdmig_bitmap_next_clear(p->bm, p->nbits, s);
        if (g1 != w1 || g0 != w0)
            g_error("%s, %" G_GUINT64_FORMAT " bits, start %" G_GUINT64_FORMAT ": next_set %"
                    G_GUINT64_FORMAT " (model %" G_GUINT64_FORMAT "), next_clear %"
                    G_GUINT64_FORMAT " (model %" G_GUINT64_FORMAT ")", what, p->nbits, s, g1, w1,
                    g0, w0);
    }
}

static void check_pair(Pair *p, const char *what)
{
    check_bits(p, what);
    check_queries(p, what);
}

/* The operations, applied to both. */
static void op_set(Pair *p, uint64_t i)
{
    rdmig_bitmap_set(p->bm, i);
    p->model[i] = 1;
}

static void op_clear(Pair *p, uint64_t i)
{
    rdmig_bitmap_clear(p->bm, i);
    p->model[i] = 0;
}

static void op_set_range(Pair *p, uint64_t start, uint64_t n)
{
    rdmig_bitmap_set_range(p->bm, start, n);
    model_fill_range(p, start, n, 1);
}

static void op_clear_range(Pair *p, uint64_t start, uint64_t n)
{
    rdmig_bitmap_clear_range(p->bm, start, n);
    model_fill_range(p, start, n, 0);
}

/* ------------------------------------------------------------ fixed cases */

static void test_bitmap_single_bits(void)
{
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        uint64_t pos[16];
        uint64_t np = positions(nbits, pos);
        for (uint64_t k = 0; k < np; k++) {
            uint64_t b = pos[k];
            Pair *p = pair_new(nbits);
            uint64_t *bm = p->bm;
            /* One bit set in an empty map. */
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 0);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, 0), ==, nbits);
            op_set(p, b);
            g_assert_true(rdmig_bitmap_test(bm, b));
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 1);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, 0), ==, b);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, b), ==, b);
            g_assert_cmpuint(rdmig_bitmap_next_set(bm, nbits, b + 1), ==, nbits);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, b), ==, b + 1 < nbits ? b + 1 : nbits);
            check_pair(p, "one bit set");
            op_clear(p, b);
            g_assert_false(rdmig_bitmap_test(bm, b));
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, 0);
            check_pair(p, "that bit cleared again");

            /* One bit clear in a full map. */
            op_set_range(p, 0, nbits);
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, nbits);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, nbits);
            op_clear(p, b);
            g_assert_cmpuint(rdmig_bitmap_count(bm, nbits), ==, nbits - 1);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, 0), ==, b);
            g_assert_cmpuint(rdmig_bitmap_next_clear(bm, nbits, b + 1), ==, nbits);
            check_pair(p, "one bit clear");
            pair_free(p);
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
        size_t words = (size_t)((nbits + 63) / 64);
        g_autofree uint64_t *bm = g_new0(uint64_t, words);
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
        Pair *p = pair_new(nbits);
        for (uint64_t start = 0; start <= nbits; start++) {
            for (uint64_t n = 0; start + n <= nbits; n++) {
                memset(p->bm, 0, (p->words + 1) * 8);
                memset(p->model, 0, nbits);
                op_set_range(p, start, n);
                /* Exactly [start, start + n), nothing in the guard word. */
                check_bits(p, "set_range on an empty map");
                g_assert_cmpuint(rdmig_bitmap_count(p->bm, nbits), ==, n);
                g_assert_cmpuint(rdmig_bitmap_next_set(p->bm, nbits, 0), ==, n ? start : nbits);
                g_assert_cmpuint(rdmig_bitmap_next_clear(p->bm, nbits, start), ==, start + n);
            }
        }
        /* Ranges that add to bits already set. */
        memset(p->bm, 0, (p->words + 1) * 8);
        memset(p->model, 0, nbits);
        op_set(p, 0);
        op_set(p, nbits - 1);
        op_set_range(p, nbits / 3, nbits / 3);
        check_pair(p, "set_range over bits already set");
        pair_free(p);
    }
}

/* clear_range on a full map: exactly [start, start + n) cleared, the tail
 * and the guard word untouched (they stay clear). */
static void test_bitmap_clear_range(void)
{
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        if (nbits > 200)
            continue; /* exhaustive; the large ones are covered by the random test */
        Pair *p = pair_new(nbits);
        for (uint64_t start = 0; start <= nbits; start++) {
            for (uint64_t n = 0; start + n <= nbits; n++) {
                memset(p->bm, 0, (p->words + 1) * 8);
                memset(p->model, 0, nbits);
                op_set_range(p, 0, nbits);
                op_clear_range(p, start, n);
                check_bits(p, "clear_range on a full map");
                g_assert_cmpuint(rdmig_bitmap_count(p->bm, nbits), ==, nbits - n);
                g_assert_cmpuint(rdmig_bitmap_next_clear(p->bm, nbits, 0), ==, n ? start : nbits);
                g_assert_cmpuint(rdmig_bitmap_next_set(p->bm, nbits, start), ==, start + n);
            }
        }
        pair_free(p);
    }
}

/* Runs counted against the model, on random maps of every density, with
 * bits past nbits set in the last word (they must not count). */
static void test_bitmap_count_runs(void)
{
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++) {
        uint64_t nbits = sizes[si];
        Pair *p = pair_new(nbits);
        for (int trial = 0; trial < 64; trial++) {
            int density = g_test_rand_int_range(0, 101);
            memset(p->bm, 0, (p->words + 1) * 8);
            p->bm[p->words - 1] = ~0ull; /* garbage past the end, cleared below where used */
            uint64_t runs = 0;
            for (uint64_t i = 0; i < nbits; i++) {
                p->model[i] = g_test_rand_int_range(0, 100) < density;
                if (p->model[i])
                    p->bm[i / 64] |= 1ull << (i % 64);
                else
                    p->bm[i / 64] &= ~(1ull << (i % 64));
                runs += p->model[i] && (i == 0 || !p->model[i - 1]);
            }
            g_assert_cmpuint(rdmig_bitmap_count_runs(p->bm, nbits), ==, runs);
        }
        pair_free(p);
    }
}

/* ------------------------------------------------------------ random */

/* A position biased towards the word boundaries and the ends. */
static uint64_t random_position(uint64_t nbits)
{
    const uint64_t edges[] = { 0, 63, 64, 127, 128, nbits - 1, nbits - 64, nbits / 64 * 64 };
    if (g_test_rand_int_range(0, 2) == 0) {
        uint64_t e = edges[g_test_rand_int_range(0, G_N_ELEMENTS(edges))];
        if (e < nbits)
            return e;
    }
    return (uint64_t)g_test_rand_int_range(0, (gint32)nbits);
}

/* One random operation, applied to bitmap and model; says which in @what. */
static void random_op(Pair *p, char *what, size_t what_len)
{
    uint64_t nbits = p->nbits;
    uint64_t i = random_position(nbits);
    int op = g_test_rand_int_range(0, 5);
    switch (op) {
    case 0:
        op_set(p, i);
        g_snprintf(what, what_len, "set(%" G_GUINT64_FORMAT ")", i);
        break;
    case 1:
        op_clear(p, i);
        g_snprintf(what, what_len, "clear(%" G_GUINT64_FORMAT ")", i);
        break;
    default: {
        /* Up to the end; short ones more often, so that runs stay varied. */
        uint64_t room = nbits - i;
        uint64_t n = (uint64_t)g_test_rand_int_range(0, g_test_rand_int_range(0, 2) ? 70 : 4097);
        n = MIN(n, room);
        /* Two in three set, one clears. */
        if (op == 4)
            op_clear_range(p, i, n);
        else
            op_set_range(p, i, n);
        g_snprintf(what, what_len, "%s_range(%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT ")",
                   op == 4 ? "clear" : "set", i, n);
        break;
    }
    }
}

/*
 * Random sequences of set, clear, set_range and clear_range, compared with the model after
 * every operation.  Seeded by the test framework (g_test_rand_*): a failure
 * is reproduced by running again with the --seed it printed.
 */
static void test_bitmap_random(void)
{
    uint64_t all[G_N_ELEMENTS(sizes) + 4];
    size_t nsizes = 0;
    for (size_t si = 0; si < G_N_ELEMENTS(sizes); si++)
        all[nsizes++] = sizes[si];
    /* And some sizes nobody picked, mostly not multiples of 64. */
    for (int k = 0; k < 4; k++)
        all[nsizes++] = (uint64_t)g_test_rand_int_range(1, 700);
    for (size_t si = 0; si < nsizes; si++) {
        uint64_t nbits = all[si];
        g_assert_cmpuint(rdmig_bitmap_words(nbits), ==, (nbits + 63) / 64);
        /* Fewer steps for the large maps: each check walks every start. */
        int steps = nbits > 1000 ? 40 : 150;
        for (int run = 0; run < 3; run++) {
            Pair *p = pair_new(nbits);
            /* The second run starts full: clears then punch holes in whole words. */
            if (run == 1)
                op_set_range(p, 0, nbits);
            for (int step = 0; step < steps; step++) {
                char what[96];
                random_op(p, what, sizeof(what));
                g_autofree char *ctx = g_strdup_printf("run %d step %d: %s", run, step, what);
                check_pair(p, ctx);
            }
            /* Whatever it holds, bits past the end (a caller's OR of a wider
             * map) are neither counted nor returned. */
            if (nbits % 64) {
                p->bm[p->words - 1] |= ~0ull << (nbits % 64);
                check_queries(p, "with the unused tail of the last word set");
            }
            pair_free(p);
        }
    }
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

/* The bitmap says resident exactly for the pages in @want (the model: one
 * byte per page, filled from the list), read through the raw layout. */
static void assert_resident(const uint64_t *bm, uint64_t npages, const uint64_t *want,
                            size_t nwant, const char *what)
{
    g_autofree uint8_t *model = g_malloc0(npages);
    for (size_t i = 0; i < nwant; i++)
        model[want[i]] = 1;
    for (uint64_t i = 0; i < npages; i++)
        if (raw_bit(bm, i) != model[i])
            g_error("%s: page %" G_GUINT64_FORMAT " reads as %s", what, i,
                    raw_bit(bm, i) ? "resident" : "untouched");
}

static void check_residency(uint8_t *mem, size_t len, const char *what)
{
    uint64_t npages = len / ps;
    size_t words = (size_t)((npages + 63) / 64);
    g_autoptr(GError) err = NULL;

    g_autofree uint64_t *bm = g_new0(uint64_t, words);
    g_assert_true(rdmig_ram_resident(mem, len, (uint32_t)ps, bm, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(rdmig_bitmap_count(bm, npages), ==, 0);
    assert_resident(bm, npages, NULL, 0, what);

    static const uint64_t touched[] = { 0, 5, 63, 64, 65, 127 };
    for (size_t i = 0; i < G_N_ELEMENTS(touched); i++)
        mem[touched[i] * ps + (size_t)(i * 17)] = (uint8_t)(i + 1);
    memset(bm, 0, words * 8);
    g_assert_true(rdmig_ram_resident(mem, len, (uint32_t)ps, bm, &err));
    g_assert_no_error(err);
    assert_resident(bm, npages, touched, G_N_ELEMENTS(touched), what);

    /* Larger migration pages: a block is resident if any page in it is. */
    uint32_t big = (uint32_t)ps * 16;
    uint64_t nbig = len / big;
    g_autofree uint64_t *bb = g_new0(uint64_t, (nbig + 63) / 64);
    g_assert_true(rdmig_ram_resident(mem, len, big, bb, &err));
    g_assert_no_error(err);
    for (uint64_t blk = 0; blk < nbig; blk++) {
        bool want = false;
        for (size_t i = 0; i < G_N_ELEMENTS(touched); i++)
            want |= touched[i] / 16 == blk;
        if (raw_bit(bb, blk) != want)
            g_error("%s: %u-byte page %" G_GUINT64_FORMAT " reads as %s", what, big, blk,
                    want ? "untouched" : "resident");
    }

    /* The bitmap is OR-ed into, not overwritten. */
    memset(bm, 0, words * 8);
    bm[200 / 64] |= 1ull << (200 % 64);
    g_assert_true(rdmig_ram_resident(mem, len, (uint32_t)ps, bm, &err));
    g_assert_true(rdmig_bitmap_test(bm, 200));
    g_assert_cmpuint(rdmig_bitmap_count(bm, npages), ==, G_N_ELEMENTS(touched) + 1);
    const uint64_t ored[] = { 0, 5, 63, 64, 65, 127, 200 };
    assert_resident(bm, npages, ored, G_N_ELEMENTS(ored), what);
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
    g_test_add_func("/ram/bitmap/clear-range", test_bitmap_clear_range);
    g_test_add_func("/ram/bitmap/count-runs", test_bitmap_count_runs);
    g_test_add_func("/ram/bitmap/random", test_bitmap_random);
    g_test_add_func("/ram/page/is-zero", test_page_is_zero);
    g_test_add_func("/ram/page/hash", test_page_hash);
    g_test_add_func("/ram/resident/anon", test_resident_anon);
    g_test_add_func("/ram/resident/memfd", test_resident_memfd);
    return g_test_run();
}

/* SPDX-License-Identifier: MIT */
/* Page bitmaps (util/bitmap.h): the word-at-a-time operations. */
#include "bitmap.h"

uint64_t rdmig_bitmap_count(const uint64_t *bm, uint64_t nbits)
{
    uint64_t n = 0, full = nbits / 64;
    for (uint64_t w = 0; w < full; w++)
        n += (uint64_t)__builtin_popcountll(bm[w]);
    if (nbits % 64)
        n += (uint64_t)__builtin_popcountll(bm[full] & ((1ull << (nbits % 64)) - 1));
    return n;
}

uint64_t rdmig_bitmap_count_runs(const uint64_t *bm, uint64_t nbits)
{
    uint64_t n = 0, carry = 0, words = (nbits + 63) / 64;
    for (uint64_t w = 0; w < words; w++) {
        uint64_t v = bm[w];
        if (w == words - 1 && nbits % 64)
            v &= (1ull << (nbits % 64)) - 1;
        /* A run starts at a set bit whose lower neighbour is clear. */
        n += (uint64_t)__builtin_popcountll(v & ~((v << 1) | carry));
        carry = v >> 63;
    }
    return n;
}

/* The first bit at or after @start that differs from @flip's bits (0: a
 * set bit, all ones: a clear bit), or @nbits. */
static uint64_t next_bit(const uint64_t *bm, uint64_t nbits, uint64_t start, uint64_t flip)
{
    if (start >= nbits)
        return nbits;
    uint64_t w = start / 64;
    uint64_t word = (bm[w] ^ flip) & (~0ull << (start % 64));
    for (;;) {
        if (word) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(word);
            return i < nbits ? i : nbits;
        }
        if (++w >= rdmig_bitmap_words(nbits))
            return nbits;
        word = bm[w] ^ flip;
    }
}

uint64_t rdmig_bitmap_next_set(const uint64_t *bm, uint64_t nbits, uint64_t start)
{
    return next_bit(bm, nbits, start, 0);
}

uint64_t rdmig_bitmap_next_clear(const uint64_t *bm, uint64_t nbits, uint64_t start)
{
    return next_bit(bm, nbits, start, ~0ull);
}

/* Sets (@value) or clears bits [start, start+n), whole words at a time. */
static void fill_range(uint64_t *bm, uint64_t start, uint64_t n, bool value)
{
    for (uint64_t i = start; i < start + n;) {
        if (i % 64 == 0 && start + n - i >= 64) {
            bm[i / 64] = value ? ~0ull : 0;
            i += 64;
        } else if (value) {
            rdmig_bitmap_set(bm, i++);
        } else {
            rdmig_bitmap_clear(bm, i++);
        }
    }
}

void rdmig_bitmap_set_range(uint64_t *bm, uint64_t start, uint64_t n)
{
    fill_range(bm, start, n, true);
}

void rdmig_bitmap_clear_range(uint64_t *bm, uint64_t start, uint64_t n)
{
    fill_range(bm, start, n, false);
}

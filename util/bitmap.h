/* SPDX-License-Identifier: MIT */
/* Page bitmaps: one bit per page, bit i of word i / 64 (LSB first), the
 * layout of the dirty log, of RdmigDirtyOps and of the RECEIVED message.
 * The one copy, for engine/ and the dirty tracker alike. */
#ifndef RDMIG_UTIL_BITMAP_H
#define RDMIG_UTIL_BITMAP_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline size_t rdmig_bitmap_words(uint64_t nbits) { return (nbits + 63) / 64; }
static inline uint64_t *rdmig_bitmap_new(uint64_t nbits)
{
    return g_new0(uint64_t, rdmig_bitmap_words(nbits));
}
static inline bool rdmig_bitmap_test(const uint64_t *bm, uint64_t i)
{
    return bm[i / 64] >> (i % 64) & 1;
}
static inline void rdmig_bitmap_set(uint64_t *bm, uint64_t i) { bm[i / 64] |= 1ull << (i % 64); }
static inline void rdmig_bitmap_clear(uint64_t *bm, uint64_t i)
{
    bm[i / 64] &= ~(1ull << (i % 64));
}
/** Number of set bits among the first @nbits. */
uint64_t rdmig_bitmap_count(const uint64_t *bm, uint64_t nbits);
/** Number of runs of consecutive set bits among the first @nbits. */
uint64_t rdmig_bitmap_count_runs(const uint64_t *bm, uint64_t nbits);
/** First set bit at or after @start, or @nbits if none. */
uint64_t rdmig_bitmap_next_set(const uint64_t *bm, uint64_t nbits, uint64_t start);
/** First clear bit at or after @start, or @nbits if none. */
uint64_t rdmig_bitmap_next_clear(const uint64_t *bm, uint64_t nbits, uint64_t start);
/** Sets bits [start, start+n). */
void rdmig_bitmap_set_range(uint64_t *bm, uint64_t start, uint64_t n);
/** Clears bits [start, start+n). */
void rdmig_bitmap_clear_range(uint64_t *bm, uint64_t start, uint64_t n);

#endif

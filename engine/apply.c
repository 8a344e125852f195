/* SPDX-License-Identifier: MIT */
/*
 * What the destination does with the source's messages about its pages:
 * zero runs (pages now all zero), hashes (what each page must hash to),
 * discards (stale pages to drop and pull) and the source's keys (where to
 * pull them from).  Every block index, page and run is checked against the
 * RAM layout before anything is touched; the receive loop and the pager
 * both apply them.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include "dataplane.h"
#include "destination.h"

static RdmigRamBlock *block_at(RdmigSession *s, uint32_t index, const char *msg, GError **error)
{
    if (index < s->blocks->len)
        return s->blocks->pdata[index];
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s names RAM block #%u; there are only %u", msg, index, s->blocks->len);
    return NULL;
}

/* Run @i of a ZERO or DISCARD message, checked against block @b. */
static bool run_at(const RdmigZeroMsg *z, uint32_t i, const RdmigRamBlock *b, const char *msg,
                   uint64_t *first, uint32_t *count, GError **error)
{
    rdmig_zero_run_get(z, i, first, count);
    if (*count && *first < b->npages && *count <= b->npages - *first)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s run of %u pages at page %" G_GUINT64_FORMAT " is outside block '%s' (%"
                G_GUINT64_FORMAT " pages)", msg, *count, *first, b->name, b->npages);
    return false;
}

/* Pages [@first, +@count) of @b become zero.  A page never touched here
 * reads as zero already; reading it to check would allocate it.  Swapped-out
 * pages count as touched. */
static void clear_run(RdmigRamBlock *b, uint64_t first, uint32_t count)
{
    g_autofree uint64_t *touched = rdmig_bitmap_new(count);
    if (!rdmig_ram_resident(b->host + first * b->page_size, (uint64_t)count * b->page_size,
                            b->page_size, touched, NULL))
        memset(touched, 0xff, rdmig_bitmap_words(count) * 8);
    for (uint64_t p = first; p < first + count; p++) {
        uint8_t *page = b->host + p * b->page_size;
        if (rdmig_bitmap_test(touched, p - first) && !rdmig_page_is_zero(page, b->page_size))
            memset(page, 0, b->page_size);
    }
}

bool rdmig_apply_zero(RdmigDestination *dst, const RdmigFrame *f, GError **error)
{
    RdmigSession *s = &dst->s;
    RdmigZeroMsg z;
    if (!rdmig_zero_decode(f->payload, f->hdr.length, &z, error))
        return false;
    RdmigRamBlock *b = block_at(s, z.block, "ZERO", error);
    if (!b)
        return false;
    uint64_t pages = 0;
    for (uint32_t i = 0; i < z.n_runs; i++) {
        uint64_t first;
        uint32_t count;
        if (!run_at(&z, i, b, "ZERO", &first, &count, error))
            return false;
        clear_run(b, first, count);
        pages += count;
    }
    RDMIG_STATS_UPDATE(s, s->stats.pages_zero += pages);
    return true;
}

bool rdmig_apply_hashes(RdmigDestination *dst, const RdmigFrame *f, guint *block,
                        uint64_t *first, uint32_t *n, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!(s->features & RDMIG_FEATURE_VERIFY)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "HASHES received, but verification was not negotiated");
        return false;
    }
    RdmigHashesMsg m;
    if (!rdmig_hashes_decode(f->payload, f->hdr.length, &m, error))
        return false;
    RdmigRamBlock *b = block_at(s, m.block, "HASHES", error);
    if (!b)
        return false;
    if (m.first >= b->npages || m.n > b->npages - m.first) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "HASHES for pages %" G_GUINT64_FORMAT "..+%u are outside block '%s' (%"
                    G_GUINT64_FORMAT " pages)", m.first, m.n, b->name, b->npages);
        return false;
    }
    g_mutex_lock(&dst->verify_lock);
    for (uint32_t i = 0; i < m.n; i++) {
        uint64_t p = m.first + i;
        /* Before postcopy starts, a page to be pulled has only a stale hash:
         * its final one comes after the switchover. */
        if (b->needed && rdmig_bitmap_test(b->needed, p) && !dst->postcopy_fresh_hashes)
            continue;
        if (b->unverified && rdmig_bitmap_test(b->unverified, p))
            continue; /* the pager compares these itself */
        uint64_t h = rdmig_hashes_get(&m, i);
        /* Checked against another hash: again.  The same hash again (a page
         * rewritten alike, or sent twice) keeps what was checked. */
        if (b->verified && (!rdmig_bitmap_test(b->hash_known, p) || b->hashes[p] != h))
            rdmig_bitmap_clear(b->verified, p);
        b->hashes[p] = h;
        rdmig_bitmap_set(b->hash_known, p);
    }
    g_mutex_unlock(&dst->verify_lock);
    rdmig_verifier_queue(dst, m.block, m.first, m.n);
    *block = m.block;
    *first = m.first;
    *n = m.n;
    return true;
}

static bool postcopy_expected(RdmigSession *s, const char *msg, GError **error)
{
    if (s->features & RDMIG_FEATURE_POSTCOPY)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s received, but postcopy was not negotiated", msg);
    return false;
}

bool rdmig_apply_source_keys(RdmigDestination *dst, const RdmigFrame *f, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!postcopy_expected(s, "SOURCE_REGIONS", error))
        return false;
    g_autofree RdmigRegions *keys = rdmig_dataplane_peer_keys(s, f, "SOURCE_REGIONS", error);
    if (!keys)
        return false;
    for (guint i = 0; i < s->blocks->len; i++)
        ((RdmigRamBlock *)s->blocks->pdata[i])->src_key = keys->keys[i];
    dst->have_src_keys = true;
    return true;
}

/* Pages [@first, +@count) of @b are to be pulled: the ones not needed yet
 * are dropped now (before the switchover this runs while the guest still
 * runs on the source, outside the downtime). */
static bool discard_run(RdmigDestination *dst, RdmigRamBlock *b, uint64_t first,
                        uint32_t count, GError **error)
{
    for (uint64_t p = first; p < first + count;) {
        if (rdmig_bitmap_test(b->needed, p)) {
            p++;
            continue;
        }
        uint64_t end = p;
        while (end < first + count && !rdmig_bitmap_test(b->needed, end))
            end++;
        if (!rdmig_ram_drop_pages(b, p, end - p, error))
            return false;
        rdmig_bitmap_set_range(b->needed, p, end - p);
        /* Checked at PREPARE as held; they count when pulled instead. */
        if (dst->postcopy_prepared && (dst->s.features & RDMIG_FEATURE_VERIFY))
            dst->held_verified -= end - p;
        for (uint64_t q = p; b->hash_known && q < end; q++) {
            rdmig_bitmap_clear(b->hash_known, q);
            rdmig_bitmap_clear(b->verified, q);
        }
        p = end;
    }
    return true;
}

bool rdmig_apply_discard(RdmigDestination *dst, const RdmigFrame *f, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!postcopy_expected(s, "DISCARD", error))
        return false;
    /* Postcopy is starting: the background verifier stops before pages are
     * dropped (its read of a dropped page would bring it back, zero). */
    rdmig_verifier_stop(dst);
    RdmigZeroMsg z;
    if (!rdmig_zero_decode(f->payload, f->hdr.length, &z, error)) {
        g_prefix_error(error, "DISCARD: ");
        return false;
    }
    RdmigRamBlock *b = block_at(s, z.block, "DISCARD", error);
    if (!b)
        return false;
    if (!b->needed)
        b->needed = rdmig_bitmap_new(b->npages);
    for (uint32_t i = 0; i < z.n_runs; i++) {
        uint64_t first;
        uint32_t count;
        if (!run_at(&z, i, b, "DISCARD", &first, &count, error) ||
            !discard_run(dst, b, first, count, error))
            return false;
    }
    return true;
}

/* SPDX-License-Identifier: MIT */
/*
 * The destination's verification: every page it holds against the hash the
 * source took.  In precopy a background thread checks pages as their hashes
 * arrive, round by round; what it could not match (or had no time for) is
 * checked at the end, on two threads, with both guests stopped.  A page
 * never touched here counts as zero without being read (reading would
 * allocate it).  Pages still to be pulled (postcopy) are the pager's to
 * check as they arrive.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <string.h>

#include "destination.h"

typedef struct {
    RdmigSession *s;
    guint block;
    uint64_t first, end;
    uint64_t bad, verified;
    uint64_t bad_pages[8];
    bool accounted; /* runs on a thread of its own: add its CPU time */
} VerifySlice;

static gpointer verify_slice(gpointer data)
{
    VerifySlice *v = data;
    RdmigRamBlock *b = v->s->blocks->pdata[v->block];
    if (v->end <= v->first)
        return NULL;
    /* A page this side never touched is zero without reading it (reading
     * would allocate it); it passes if the source's page was zero too. */
    uint64_t n = v->end - v->first;
    g_autofree uint64_t *resident = rdmig_bitmap_new(n);
    if (!rdmig_ram_resident(b->host + v->first * b->page_size, n * b->page_size, b->page_size,
                            resident, NULL))
        memset(resident, 0xff, rdmig_bitmap_words(n) * 8);
    for (uint64_t p = v->first; p < v->end; p++) {
        /* Postcopy: pages still to come are checked when they arrive. */
        if (b->needed && rdmig_bitmap_test(b->needed, p))
            continue;
        /* Matched its current hash in the background, and written by nobody
         * since (a write comes with a new hash, which clears the bit). */
        if (b->verified && rdmig_bitmap_test(b->verified, p)) {
            v->verified++;
            continue;
        }
        uint64_t h = rdmig_bitmap_test(resident, p - v->first)
                         ? rdmig_page_hash(b->host + p * b->page_size, b->page_size)
                         : b->zero_hash;
        bool ok = rdmig_bitmap_test(b->hash_known, p) && h == b->hashes[p];
        if (ok) {
            v->verified++;
        } else {
            if (v->bad < G_N_ELEMENTS(v->bad_pages))
                v->bad_pages[v->bad] = p;
            v->bad++;
        }
    }
    if (v->accounted)
        rdmig_session_account_thread_cpu(v->s);
    return NULL;
}

/* rdmig_verify_all's threads: it runs while the guest is stopped on both
 * sides, so each has a core of this two-core kind of host to itself. */
#define VERIFY_THREADS 2

/* Checks every page against the source's hash, on VERIFY_THREADS threads. */
bool rdmig_verify_all(RdmigDestination *dst, RdmigCompleteAck *ack)
{
    RdmigSession *s = &dst->s;
    gint64 t0 = rdmig_now_us();
    GString *list = g_string_new(NULL);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        G_STATIC_ASSERT(VERIFY_THREADS == 2);
        VerifySlice v[2] = { { s, bi, 0, b->npages / 2, 0, 0, { 0 }, false },
                             { s, bi, b->npages / 2, b->npages, 0, 0, { 0 }, true } };
        GThread *t = g_thread_new("rdmig-verify", verify_slice, &v[1]);
        verify_slice(&v[0]);
        g_thread_join(t);
        for (int k = 0; k < 2; k++) {
            ack->pages_verified += v[k].verified;
            ack->mismatches += v[k].bad;
            for (uint64_t j = 0; j < MIN(v[k].bad, (uint64_t)G_N_ELEMENTS(v[k].bad_pages)); j++)
                if (list->len < 300)
                    g_string_append_printf(list, "%s%s:%" G_GUINT64_FORMAT,
                                           list->len ? ", " : "", b->name, v[k].bad_pages[j]);
        }
    }
    ack->verify_us = (uint64_t)(rdmig_now_us() - t0);
    if (ack->mismatches) {
        ack->status = 1 + RDMIG_ERROR_VERIFY;
        g_snprintf(ack->message, sizeof(ack->message),
                   "%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " pages differ from the source "
                   "(block:page %s%s)", ack->mismatches, ack->mismatches + ack->pages_verified,
                   list->str, ack->mismatches > 16 ? ", ..." : "");
    }
    g_string_free(list, TRUE);
    return ack->mismatches == 0;
}

/* ---------------------------------------------------------------- background */

typedef struct {
    guint block;
    uint64_t first;
    uint32_t n;
    bool stop;
} VerifyRange;

/* The pages of @r whose hash is known and not yet matched: each hashed and,
 * if it matches a hash that is still current, marked verified. */
static void verify_range(RdmigDestination *dst, const VerifyRange *r)
{
    RdmigSession *s = &dst->s;
    RdmigRamBlock *b = s->blocks->pdata[r->block];
    g_autofree uint64_t *resident = rdmig_bitmap_new(r->n);
    if (!rdmig_ram_resident(b->host + r->first * b->page_size, (uint64_t)r->n * b->page_size,
                            b->page_size, resident, NULL))
        memset(resident, 0xff, rdmig_bitmap_words(r->n) * 8);
    gint64 t0 = rdmig_now_us();
    uint64_t examined = 0;
    for (uint32_t i = 0; i < r->n && !g_atomic_int_get(&dst->verifier_stop); i++) {
        uint64_t p = r->first + i;
        g_mutex_lock(&dst->verify_lock);
        bool unchecked =
            rdmig_bitmap_test(b->hash_known, p) && !rdmig_bitmap_test(b->verified, p);
        uint64_t want = b->hashes[p];
        g_mutex_unlock(&dst->verify_lock);
        if (!unchecked)
            continue;
        examined++;
        /* The next round may be writing this page now: then it does not
         * match, or matches the old contents, and its new hash (cleared
         * bit) follows either way. */
        uint64_t h = rdmig_bitmap_test(resident, i)
                         ? rdmig_page_hash(b->host + p * b->page_size, b->page_size)
                         : b->zero_hash;
        if (h != want)
            continue;
        g_mutex_lock(&dst->verify_lock);
        if (b->hashes[p] == want && rdmig_bitmap_test(b->hash_known, p))
            rdmig_bitmap_set(b->verified, p);
        g_mutex_unlock(&dst->verify_lock);
    }
    __atomic_fetch_add(&dst->verifier_pages, examined, __ATOMIC_RELAXED);
    __atomic_fetch_add(&dst->verifier_us, (guint64)(rdmig_now_us() - t0), __ATOMIC_RELAXED);
}

static gpointer verifier_main(gpointer data)
{
    RdmigDestination *dst = data;
    for (;;) {
        VerifyRange *r = g_async_queue_pop(dst->verify_queue);
        bool stop = r->stop;
        if (!stop)
            verify_range(dst, r);
        g_free(r);
        if (stop)
            break;
    }
    rdmig_session_account_thread_cpu(&dst->s);
    return NULL;
}

void rdmig_verifier_start(RdmigDestination *dst)
{
    g_atomic_int_set(&dst->verifier_stop, 0);
    dst->verify_queue = g_async_queue_new_full(g_free);
    dst->verifier = g_thread_new("rdmig-verify-bg", verifier_main, dst);
}

void rdmig_verifier_queue(RdmigDestination *dst, guint block, uint64_t first, uint32_t n)
{
    if (!dst->verifier || !n)
        return;
    VerifyRange *r = g_new0(VerifyRange, 1);
    *r = (VerifyRange){ .block = block, .first = first, .n = n };
    g_async_queue_push(dst->verify_queue, r);
}

/* Pages that stand matched now, in all blocks. */
static uint64_t verified_now(RdmigDestination *dst)
{
    RdmigSession *s = &dst->s;
    uint64_t held = 0;
    g_mutex_lock(&dst->verify_lock);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        if (b->verified)
            held += rdmig_bitmap_count(b->verified, b->npages);
    }
    g_mutex_unlock(&dst->verify_lock);
    return held;
}

void rdmig_verifier_stop(RdmigDestination *dst)
{
    if (!dst->verifier)
        return;
    g_atomic_int_set(&dst->verifier_stop, 1);
    VerifyRange *stop = g_new0(VerifyRange, 1);
    stop->stop = true;
    g_async_queue_push_front(dst->verify_queue, stop);
    g_thread_join(dst->verifier);
    dst->verifier = NULL;
    g_async_queue_unref(dst->verify_queue); /* what it did not reach is freed */
    dst->verify_queue = NULL;
    /* The pages that stand matched now: the downtime does not read them. */
    uint64_t held = verified_now(dst);
    RDMIG_STATS_UPDATE(&dst->s, dst->s.stats.pages_verified_background = held);
}

/* Before the background verifier has checked anything (round 1's hashes come
 * after its ROUND_ACK): its pace taken on a few pages this side holds, as
 * the verifier's first measurement.  Non-resident pages cost next to
 * nothing, so this errs long: the source waits a little, and the next
 * ROUND_ACK brings the verifier's own figure. */
static void measure_pace(RdmigDestination *dst)
{
    RdmigSession *s = &dst->s;
    enum { WINDOW = 4096, SAMPLE = 64 };
    uint64_t hashed = 0, sink = 0;
    gint64 t0 = rdmig_now_us();
    for (guint bi = 0; bi < s->blocks->len && hashed < SAMPLE; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        uint64_t n = MIN(b->npages, (uint64_t)WINDOW);
        g_autofree uint64_t *resident = rdmig_bitmap_new(n);
        if (!rdmig_ram_resident(b->host, n * b->page_size, b->page_size, resident, NULL))
            continue;
        for (uint64_t p = rdmig_bitmap_next_set(resident, n, 0); p < n && hashed < SAMPLE;
             p = rdmig_bitmap_next_set(resident, n, p + 1), hashed++)
            sink ^= rdmig_page_hash(b->host + p * b->page_size, b->page_size);
    }
    gint64 took = rdmig_now_us() - t0;
    if (!hashed)
        return;
    g_debug("verification pace sampled on %" G_GUINT64_FORMAT " pages (%" G_GINT64_FORMAT
            " us; %" G_GINT64_MODIFIER "x)", hashed, took, sink);
    __atomic_fetch_add(&dst->verifier_pages, hashed, __ATOMIC_RELAXED);
    __atomic_fetch_add(&dst->verifier_us, (guint64)MAX(took, 1), __ATOMIC_RELAXED);
}

void rdmig_verifier_backlog(RdmigDestination *dst, RdmigRoundAck *ack)
{
    RdmigSession *s = &dst->s;
    if (!dst->verifier)
        return;
    uint64_t total = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++)
        total += ((RdmigRamBlock *)s->blocks->pdata[bi])->npages;
    uint64_t unverified = total - verified_now(dst);
    /* Pages never touched here count at the same average as the ones the
     * verifier met: they are the same mix of resident and not. */
    if (unverified && !__atomic_load_n(&dst->verifier_pages, __ATOMIC_RELAXED))
        measure_pace(dst);
    uint64_t pages = __atomic_load_n(&dst->verifier_pages, __ATOMIC_RELAXED);
    uint64_t us = __atomic_load_n(&dst->verifier_us, __ATOMIC_RELAXED);
    ack->has_backlog = true;
    ack->unverified_pages = unverified;
    ack->verify_us = pages ? (uint64_t)((double)unverified * (double)us / (double)pages /
                                        VERIFY_THREADS)
                           : 0;
}

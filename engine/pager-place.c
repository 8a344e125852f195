/* SPDX-License-Identifier: MIT */
/*
 * The pager's arrivals (pager.h): where reads land (the staging buffer, or
 * with zero copy a second mapping of the block's memory file), placing the
 * pages in the guest (UFFDIO_COPY, or UFFDIO_CONTINUE once a page's hash is
 * taken), verifying them against the source's hashes, and ending the waits
 * of the threads that faulted on them.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "pager.h"
#include "uffd.h"

bool rdmig_pager_map_aliases(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        if (!b->zero_copy)
            continue;
        if (!b->alias) {
            void *m = mmap(NULL, b->length, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd,
                           (off_t)b->fd_offset);
            if (m == MAP_FAILED) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                            "mapping the memory file of RAM block '%s' a second time: %s",
                            b->name, g_strerror(errno));
                return false;
            }
            b->alias = m;
        }
        if (!b->alias_region) {
            b->alias_region = s->tp->register_region(s->transport, b->alias, b->length,
                                                     RDMIG_ACCESS_LOCAL_WRITE, error);
            if (!b->alias_region) {
                g_prefix_error(error, "registering RAM block '%s' for zero-copy pulls: ",
                               b->name);
                return false;
            }
        }
    }
    return true;
}

bool pager_register_staging(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    pg->staging_region = s->tp->register_region(s->transport, pg->staging, pg->staging_len,
                                                RDMIG_ACCESS_LOCAL_WRITE, error);
    if (!pg->staging_region)
        g_prefix_error(error, "registering the postcopy staging buffer: ");
    return pg->staging_region != NULL;
}

void pager_record_latency(Pager *pg, uint32_t tid, uint64_t us)
{
    RdmigSession *s = pg->s;
    int bucket = us < 2 ? 0 : MIN(63 - __builtin_clzll(us), RDMIG_FAULT_HIST_BUCKETS - 1);
    if (pg->nsamples < MAX_SAMPLES)
        pg->samples[pg->nsamples++] = (uint32_t)MIN(us, (uint64_t)UINT32_MAX);
    g_mutex_lock(&s->lock);
    s->stats.fault_hist[bucket]++;
    s->stats.blocktime_us += us;
    uint32_t k;
    for (k = 0; k < s->stats.blocktime_threads; k++)
        if (s->stats.blocktime_per_thread[k].tid == tid)
            break;
    if (k == s->stats.blocktime_threads && k < RDMIG_BLOCKTIME_THREADS) {
        s->stats.blocktime_per_thread[k].tid = tid;
        s->stats.blocktime_threads++;
    }
    if (k < RDMIG_BLOCKTIME_THREADS)
        s->stats.blocktime_per_thread[k].us += us;
    g_mutex_unlock(&s->lock);
}

/* Places @n pages from @src at page @first of block @bi, atomically per page
 * (the faulting threads wake when their page is in). */
static bool place(Pager *pg, guint bi, uint64_t first, uint32_t n, const uint8_t *src,
                  GError **error)
{
    RdmigRamBlock *b = pager_block(pg, bi);
    int r = rdmig_uffd_copy(pg->uffd, (uintptr_t)b->host + first * b->page_size, src,
                            (uint64_t)n * b->page_size, b->page_size);
    if (r < 0)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "UFFDIO_COPY of %u pages at page %" G_GUINT64_FORMAT " of '%s': %s", n,
                    first, b->name, g_strerror(-r));
    return r == 0;
}

static void check_page(Pager *pg, RdmigRamBlock *b, uint64_t p, uint64_t got, uint64_t want)
{
    if (got == want) {
        pg->verified++;
        return;
    }
    if (pg->mismatches < 16)
        g_string_append_printf(pg->bad, "%s%s:%" G_GUINT64_FORMAT, pg->bad->len ? ", " : "",
                               b->name, p);
    pg->mismatches++;
}

/* Checks pulled pages against the source's final hashes; a page whose hash
 * has not come yet keeps its arrival hash until it does. */
static void verify_pulled(Pager *pg, guint bi, uint64_t first, uint32_t n, const uint8_t *buf)
{
    RdmigRamBlock *b = pager_block(pg, bi);
    if (!(pg->s->features & RDMIG_FEATURE_VERIFY))
        return;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t p = first + i;
        uint64_t h = rdmig_page_hash(buf + (size_t)i * b->page_size, b->page_size);
        if (rdmig_bitmap_test(b->hash_known, p)) {
            check_page(pg, b, p, h, b->hashes[p]);
        } else {
            b->hashes[p] = h;
            rdmig_bitmap_set(b->unverified, p);
            pg->unverified++;
        }
    }
}

/* HASHES during the pull: the final hashes of pulled pages. */
bool pager_late_hashes(Pager *pg, const RdmigFrame *f, GError **error)
{
    guint bi;
    uint64_t first;
    uint32_t n;
    if (!rdmig_apply_hashes(pg->dst, f, &bi, &first, &n, error))
        return false;
    RdmigRamBlock *b = pager_block(pg, bi);
    RdmigHashesMsg m;
    rdmig_hashes_decode(f->payload, f->hdr.length, &m, NULL);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t p = first + i;
        if (!rdmig_bitmap_test(b->unverified, p))
            continue;
        uint64_t want = rdmig_hashes_get(&m, i);
        check_page(pg, b, p, b->hashes[p], want);
        b->hashes[p] = want;
        rdmig_bitmap_set(b->hash_known, p);
        rdmig_bitmap_clear(b->unverified, p);
        pg->unverified--;
    }
    return true;
}

/* Maps @n pulled pages, already in the memory file, into the guest. */
bool pager_map_pulled(Pager *pg, RdmigRamBlock *b, uint64_t first, uint64_t n,
                      GError **error)
{
    int r = rdmig_uffd_continue(pg->uffd, (uintptr_t)b->host + first * b->page_size,
                                n * b->page_size, b->page_size);
    if (r < 0)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "UFFDIO_CONTINUE of %" G_GUINT64_FORMAT " pages at page %" G_GUINT64_FORMAT
                    " of '%s': %s", n, first, b->name, g_strerror(-r));
    return r == 0;
}

/* @n pages at @first of block @bi are in the guest now: count them, and
 * the threads that waited for them stop waiting. */
static void now_placed(Pager *pg, guint bi, uint64_t first, uint64_t n)
{
    RdmigSession *s = pg->s;
    RdmigRamBlock *b = pager_block(pg, bi);
    rdmig_bitmap_set_range(b->received, first, n);
    pg->received += n;
    RDMIG_STATS_UPDATE(s, {
        s->stats.remaining_bytes = (pg->needed - pg->received) * b->page_size;
        s->stats.pages_missing = pg->needed - pg->received;
        if (b->zero_copy)
            s->stats.pages_zero_copy += n;
    });
    gint64 now = rdmig_now_us();
    for (uint32_t i = 0; i < pg->nwaiters;) {
        Waiter *w = &pg->waiters[i];
        if (w->block == bi && w->page >= first && w->page < first + n) {
            pager_record_latency(pg, w->tid, (uint64_t)(now - w->t_us));
            *w = pg->waiters[--pg->nwaiters];
        } else {
            i++;
        }
    }
}

/* Pages @i..@i+@n-1 of @r have arrived and (copying) are placed: verify
 * them.  Zero copy maps them into the guest only once their hash is taken,
 * since the guest may change them after that; when a thread @waits for the
 * page, a snapshot of it is hashed after the thread runs again (hashing a
 * page took 117 us under TCG, more than the read). */
bool pager_settle_run(Pager *pg, PullReq *r, uint32_t i, uint32_t n, bool waits,
                       GError **error)
{
    RdmigRamBlock *b = pager_block(pg, r->block);
    uint64_t first = r->first + i;
    r->unsettled &= ~((n >= 64 ? ~0ull : (1ull << n) - 1) << i);
    if (!b->zero_copy) {
        verify_pulled(pg, r->block, first, n, r->buf + (size_t)i * b->page_size);
    } else {
        const uint8_t *at = b->alias + first * b->page_size;
        bool snapshot = waits && n == 1 && (pg->s->features & RDMIG_FEATURE_VERIFY);
        if (snapshot)
            memcpy(pg->snapshot, at, b->page_size);
        else
            verify_pulled(pg, r->block, first, n, at);
        if (!pager_map_pulled(pg, b, first, n, error))
            return false;
        now_placed(pg, r->block, first, n);
        if (snapshot)
            verify_pulled(pg, r->block, first, 1, pg->snapshot);
    }
    if (!r->unsettled)
        r->busy = false; /* its buffer may take the next read */
    return true;
}

/* Settles up to @budget of @r's arrived pages, in runs. */
static bool settle(Pager *pg, PullReq *r, uint32_t *budget, GError **error)
{
    while (*budget && r->unsettled) {
        uint32_t i = (uint32_t)__builtin_ctzll(r->unsettled), n = 0;
        while (i + n < 64 && n < *budget && (r->unsettled >> (i + n) & 1))
            n++;
        if (!pager_settle_run(pg, r, i, n, r->fault, error))
            return false;
        *budget -= n;
    }
    return true;
}

/* Bulk reads' pages arrived and not settled yet. */
bool pager_backlog(const Pager *pg)
{
    for (int k = 0; k < BULK_SLOTS; k++)
        if (pg->bulk[k].unsettled)
            return true;
    return false;
}

/* A slice of the bulk reads' settling, between looks at the faults. */
bool pager_settle_backlog(Pager *pg, uint32_t budget, GError **error)
{
    for (int k = 0; k < BULK_SLOTS && budget; k++)
        if (pg->bulk[k].unsettled && !settle(pg, &pg->bulk[k], &budget, error))
            return false;
    return true;
}

/* Zero copy: the read that brought @page of block @bi, if it is in and not
 * settled yet. */
PullReq *pager_arrived_unsettled(Pager *pg, guint bi, uint64_t page)
{
    for (int k = 0; k < BULK_SLOTS; k++) {
        PullReq *r = &pg->bulk[k];
        if (r->unsettled && r->block == bi && page >= r->first && page < r->first + r->n &&
            (r->unsettled >> (page - r->first) & 1))
            return r;
    }
    return NULL;
}

bool pager_completed(Pager *pg, PullReq *r, GError **error)
{
    RdmigSession *s = pg->s;
    RdmigRamBlock *b = pager_block(pg, r->block);
    /* Placed once: a page that came already (asked again after a pause)
     * keeps its first copy, which was verified then. */
    uint64_t fresh = 0;
    for (uint64_t p = r->first; p < r->first + r->n;) {
        if (rdmig_bitmap_test(b->received, p)) {
            /* Zero copy wrote it again in place: the same bytes, since the
             * source's guest is stopped. */
            pg->duplicates++;
            p++;
            continue;
        }
        uint64_t end = p;
        while (end < r->first + r->n && !rdmig_bitmap_test(b->received, end))
            end++;
        if (!b->zero_copy) {
            const uint8_t *src = r->buf + (size_t)(p - r->first) * b->page_size;
            if (!place(pg, r->block, p, (uint32_t)(end - p), src, error))
                return false;
            now_placed(pg, r->block, p, end - p);
        }
        for (uint64_t q = p; q < end; q++)
            fresh |= 1ull << (q - r->first);
        p = end;
    }
    RDMIG_STATS_UPDATE(s, {
        if (r->fault)
            s->stats.pages_on_demand += r->n;
        else
            s->stats.pages_background += r->n;
    });
    r->unsettled = fresh;
    if (!fresh) {
        r->busy = false;
        return true;
    }
    if (r->fault) {
        uint32_t all = UINT32_MAX; /* one page */
        return settle(pg, r, &all, error);
    }
    /* Later, in slices, unless a thread faults on one of them first: the
     * buffer stays this read's until then. */
    if (!b->zero_copy)
        return true;
    /* Not placed yet: the threads waiting for any of these go first.  Each
     * one placed leaves the waiter list, so look again from its start. */
    for (bool again = true; again;) {
        again = false;
        for (uint32_t i = 0; i < pg->nwaiters && !again; i++) {
            Waiter *w = &pg->waiters[i];
            if (w->block == r->block && w->page >= r->first && w->page < r->first + r->n &&
                (r->unsettled >> (w->page - r->first) & 1)) {
                if (!pager_settle_run(pg, r, (uint32_t)(w->page - r->first), 1, true, error))
                    return false;
                again = true;
            }
        }
    }
    return true;
}

void pager_update_missing(Pager *pg)
{
    RDMIG_STATS_UPDATE(pg->s, pg->s->stats.pages_missing = pg->needed - pg->received);
}

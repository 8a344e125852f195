/* SPDX-License-Identifier: MIT */
/*
 * The destination's postcopy pager.
 *
 * Page states (bitmaps per block): needed (the source told us our copy is
 * stale or missing), unrequested (needed, no read posted yet), received (placed).
 * A page is requested once: a fault on a page already on its way in a bulk
 * read waits for that read.  A fault on a page that is not needed (zero, or
 * never touched on the source) is served here with UFFDIO_ZEROPAGE.
 *
 * One thread does everything: reads faults, posts reads (faults on their own
 * connection, so they never queue behind bulk reads), reaps completions,
 * verifies and places pages.  It never touches guest RAM itself, so it can
 * never fault on a missing page.
 *
 * When the link breaks (and recovery was negotiated) the pager pauses: reads
 * in flight go back to "unrequested", the connections and transport are
 * dropped, and the epoch moves on, so that no completion of the old link can
 * place a page any more.  Paused, it still serves faults on pages it need not
 * pull (zero fill) and keeps the list of threads waiting for pulled ones.  A
 * new link (recovery.c) gets the received bitmap; after
 * the source's POSTCOPY_RESUME the waiting threads' pages are requested
 * first.  A page that arrives twice is placed once.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "channel.h"
#include "dataplane.h"
#include "destination.h"
#include "recovery.h"
#include "state.h"
#include "uffd.h"

#define FAULT_SLOTS 16
#define BULK_SLOTS 8
#define BULK_BYTES (256u << 10)
/* Pages hashed between two looks at the fault queue: hashing a whole bulk
 * read at once (64 pages) held a fault for 7 ms under TCG. */
#define HASH_SLICE_PAGES 8
#define MAX_WAITERS 512
#define MAX_SAMPLES (1u << 16)


/* ------------------------------------------------------------ pager */

typedef struct {
    RdmigIoReq io;
    guint block;
    uint64_t first;
    uint32_t n;
    uint8_t *buf;
    int conn;
    uint64_t epoch; /* the link it was posted on */
    bool busy, fault;
    uint64_t unsettled; /* bit i: page first + i arrived, not yet verified (and, with
                         * zero copy, not yet mapped into the guest) */
} PullReq;

/* One bit per page of a read in PullReq.unsettled. */
G_STATIC_ASSERT(BULK_BYTES / 4096 <= 64);

typedef struct {
    guint block;
    uint64_t page;
    uint32_t tid;
    gint64 t_us;
} Waiter;

typedef struct {
    RdmigDestination *dst;
    RdmigSession *s;            /* &dst->s */
    int uffd;
    uint8_t *staging;
    size_t staging_len;
    RdmigRegion *staging_region;
    PullReq faults[FAULT_SLOTS];
    PullReq bulk[BULK_SLOTS];
    Waiter waiters[MAX_WAITERS];
    uint32_t nwaiters;
    uint32_t fault_conn, bulk_conns, next_bulk_conn;
    guint bg_block;
    uint64_t bg_cursor;
    uint64_t needed, received;
    uint32_t *samples;
    uint32_t nsamples;
    uint64_t verified, mismatches;
    uint64_t unverified;         /* placed pages whose final hash has not come yet */
    uint8_t *snapshot;           /* zero copy: a page a thread waits for, hashed after it runs */
    GString *bad;
    bool cancel_seen;
    uint64_t epoch;              /* links lost so far: fences their completions */
    bool pulling;                /* a link is up and the source said to pull */
    uint64_t duplicates;         /* pages that arrived again after being placed */
} Pager;

static RdmigRamBlock *blk(Pager *pg, guint i) { return pg->s->blocks->pdata[i]; }

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

static bool pager_init(Pager *pg, RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    pg->dst = dst;
    pg->s = s;
    pg->uffd = -1;
    pg->bad = g_string_new(NULL);
    uint32_t max_ps = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        max_ps = MAX(max_ps, b->page_size);
        uint64_t n = rdmig_bitmap_count(b->needed, b->npages);
        pg->needed += n;
        b->unrequested = g_memdup2(b->needed, rdmig_bitmap_words(b->npages) * 8);
        b->received = rdmig_bitmap_new(b->npages);
        if (s->features & RDMIG_FEATURE_VERIFY)
            b->unverified = rdmig_bitmap_new(b->npages);
    }
    size_t bulk_bytes = MAX(BULK_BYTES, max_ps);
    pg->staging_len = FAULT_SLOTS * (size_t)max_ps + BULK_SLOTS * bulk_bytes;
    pg->staging = mmap(NULL, pg->staging_len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (pg->staging == MAP_FAILED) {
        pg->staging = NULL;
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "staging buffer: %s",
                    g_strerror(errno));
        return false;
    }
    pg->staging_region = s->tp->register_region(s->transport, pg->staging, pg->staging_len,
                                                RDMIG_ACCESS_LOCAL_WRITE, error);
    if (!pg->staging_region) {
        g_prefix_error(error, "registering the postcopy staging buffer: ");
        return false;
    }
    for (int i = 0; i < FAULT_SLOTS; i++)
        pg->faults[i] = (PullReq){ .buf = pg->staging + (size_t)i * max_ps, .fault = true };
    for (int i = 0; i < BULK_SLOTS; i++)
        pg->bulk[i] = (PullReq){ .buf = pg->staging + FAULT_SLOTS * (size_t)max_ps +
                                        (size_t)i * bulk_bytes };
    /* Faults get a connection of their own when there are two or more. */
    pg->fault_conn = s->nconns - 1;
    pg->bulk_conns = s->nconns > 1 ? s->nconns - 1 : 1;
    pg->samples = g_new(uint32_t, MAX_SAMPLES);
    pg->snapshot = g_malloc(max_ps);

    if (!rdmig_pager_map_aliases(dst, error)) /* done at PREPARE, unless that failed */
        return false;

    pg->uffd = rdmig_uffd_open_postcopy(error);
    if (pg->uffd < 0)
        return false;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        /* Zero copy: a dropped page is still in the file (a minor fault);
         * one never written is not (a missing fault, zero-filled). */
        struct uffdio_register reg = {
            .range = { .start = (uintptr_t)b->host, .len = b->length },
            .mode = UFFDIO_REGISTER_MODE_MISSING |
                    (b->zero_copy ? UFFDIO_REGISTER_MODE_MINOR : 0),
        };
        if (ioctl(pg->uffd, UFFDIO_REGISTER, &reg) < 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                        "userfaultfd cannot watch RAM block '%s' for missing pages: %s", b->name,
                        g_strerror(errno));
            return false;
        }
        uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) |
                        (b->zero_copy ? 1ull << _UFFDIO_CONTINUE : 0);
        if ((reg.ioctls & need) != need) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                        "userfaultfd cannot place pages in RAM block '%s' (no UFFDIO_COPY, "
                        "UFFDIO_ZEROPAGE or, for zero copy, UFFDIO_CONTINUE for this memory "
                        "type)", b->name);
            return false;
        }
    }
    return true;
}

/* Ends the pager.  After a failure the userfaultfd stays open (in the
 * session): threads waiting on missing pages keep waiting rather than read
 * zeros. */
static void pager_fini(Pager *pg, bool ok)
{
    RdmigSession *s = pg->s;
    if (pg->uffd >= 0) {
        if (ok) {
            for (guint bi = 0; bi < s->blocks->len; bi++) {
                RdmigRamBlock *b = s->blocks->pdata[bi];
                struct uffdio_range r = { .start = (uintptr_t)b->host, .len = b->length };
                ioctl(pg->uffd, UFFDIO_UNREGISTER, &r);
            }
            close(pg->uffd);
        } else {
            pg->dst->postcopy_uffd = pg->uffd;
        }
    }
    if (pg->staging_region)
        s->tp->deregister_region(pg->staging_region);
    if (pg->staging)
        munmap(pg->staging, pg->staging_len);
    g_free(pg->samples);
    g_free(pg->snapshot);
    g_string_free(pg->bad, TRUE);
}

static bool locate(Pager *pg, uint64_t addr, guint *block, uint64_t *page)
{
    for (guint bi = 0; bi < pg->s->blocks->len; bi++) {
        RdmigRamBlock *b = blk(pg, bi);
        uint64_t base = (uintptr_t)b->host;
        if (addr >= base && addr - base < b->length) {
            *block = bi;
            *page = (addr - base) / b->page_size;
            return true;
        }
    }
    return false;
}

static void record_latency(Pager *pg, uint32_t tid, uint64_t us)
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
    RdmigRamBlock *b = blk(pg, bi);
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
    RdmigRamBlock *b = blk(pg, bi);
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
static bool late_hashes(Pager *pg, const RdmigFrame *f, GError **error)
{
    guint bi;
    uint64_t first;
    uint32_t n;
    if (!rdmig_apply_hashes(pg->dst, f, &bi, &first, &n, error))
        return false;
    RdmigRamBlock *b = blk(pg, bi);
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
static bool map_pulled(Pager *pg, RdmigRamBlock *b, uint64_t first, uint64_t n, GError **error)
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
    RdmigRamBlock *b = blk(pg, bi);
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
            record_latency(pg, w->tid, (uint64_t)(now - w->t_us));
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
static bool settle_run(Pager *pg, PullReq *r, uint32_t i, uint32_t n, bool waits,
                       GError **error)
{
    RdmigRamBlock *b = blk(pg, r->block);
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
        if (!map_pulled(pg, b, first, n, error))
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
        if (!settle_run(pg, r, i, n, r->fault, error))
            return false;
        *budget -= n;
    }
    return true;
}

/* Bulk reads' pages arrived and not settled yet. */
static bool backlog(const Pager *pg)
{
    for (int k = 0; k < BULK_SLOTS; k++)
        if (pg->bulk[k].unsettled)
            return true;
    return false;
}

/* A slice of the bulk reads' settling, between looks at the faults. */
static bool settle_backlog(Pager *pg, uint32_t budget, GError **error)
{
    for (int k = 0; k < BULK_SLOTS && budget; k++)
        if (pg->bulk[k].unsettled && !settle(pg, &pg->bulk[k], &budget, error))
            return false;
    return true;
}

/* Zero copy: the read that brought @page of block @bi, if it is in and not
 * settled yet. */
static PullReq *arrived_unsettled(Pager *pg, guint bi, uint64_t page)
{
    for (int k = 0; k < BULK_SLOTS; k++) {
        PullReq *r = &pg->bulk[k];
        if (r->unsettled && r->block == bi && page >= r->first && page < r->first + r->n &&
            (r->unsettled >> (page - r->first) & 1))
            return r;
    }
    return NULL;
}

static bool completed(Pager *pg, PullReq *r, GError **error)
{
    RdmigSession *s = pg->s;
    RdmigRamBlock *b = blk(pg, r->block);
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
                if (!settle_run(pg, r, (uint32_t)(w->page - r->first), 1, true, error))
                    return false;
                again = true;
            }
        }
    }
    return true;
}

static bool reap(Pager *pg, uint32_t ci, GError **error)
{
    RdmigSession *s = pg->s;
    for (;;) {
        RdmigIoReq *done[16];
        int n = s->tp->poll(s->conns[ci], done, G_N_ELEMENTS(done));
        if (n < 0 || (n > 0 && done[0]->status < 0)) {
            rdmig_dataplane_conn_failed(s, ci, n < 0 ? n : done[0]->status,
                                        "pulling pages from the source: ", error);
            return false;
        }
        for (int i = 0; i < n; i++) {
            PullReq *r = done[i]->user;
            if (r->epoch != pg->epoch)
                continue; /* a lost link's: its pages were asked for again */
            if (done[i]->status < 0) {
                rdmig_dataplane_conn_failed(s, ci, done[i]->status,
                                            "pulling pages from the source: ", error);
                return false;
            }
            if (!completed(pg, r, error))
                return false;
        }
        if (n < (int)G_N_ELEMENTS(done))
            return true;
    }
}

/* Posts a read of @n pages at @first of block @bi into @r.  Returns 1 when
 * posted, 0 when the connection is full (try later), -1 on error. */
static int pull(Pager *pg, PullReq *r, uint32_t ci, guint bi, uint64_t first, uint32_t n,
                GError **error)
{
    RdmigSession *s = pg->s;
    RdmigRamBlock *b = blk(pg, bi);
    r->io = (RdmigIoReq){ .op = RDMIG_IO_READ, .iovcnt = 1, .rkey = &b->src_key,
                          .remote_offset = first * b->page_size, .user = r };
    uint8_t *land = b->zero_copy ? b->alias + first * b->page_size : r->buf;
    r->io.iov[0] = (struct iovec){ land, (size_t)n * b->page_size };
    int rc = s->tp->submit(s->conns[ci], &r->io);
    if (rc == -EAGAIN)
        return 0;
    if (rc < 0) {
        g_autofree char *what = g_strdup_printf("cannot post a read of %u pages at page %"
                                                G_GUINT64_FORMAT " of '%s': ", n, first, b->name);
        rdmig_dataplane_conn_failed(s, ci, rc, what, error);
        return -1;
    }
    g_assert(!r->unsettled); /* a slot with pages to settle is never reposted */
    r->block = bi;
    r->first = first;
    r->n = n;
    r->conn = (int)ci;
    r->epoch = pg->epoch;
    r->busy = true;
    for (uint64_t p = first; p < first + n; p++)
        rdmig_bitmap_clear(b->unrequested, p);
    /* Let the transport start at once (TCP sends from its poll). */
    return reap(pg, ci, error) ? 1 : -1;
}

/* Requests the pages faulted on and not yet requested, as fault slots allow. */
static bool pull_faulted(Pager *pg, GError **error)
{
    if (!pg->pulling)
        return true; /* paused: the waiters are kept for the next link */
    for (uint32_t i = 0; i < pg->nwaiters; i++) {
        Waiter *w = &pg->waiters[i];
        if (!rdmig_bitmap_test(blk(pg, w->block)->unrequested, w->page))
            continue;
        PullReq *r = NULL;
        for (int k = 0; k < FAULT_SLOTS && !r; k++)
            if (!pg->faults[k].busy)
                r = &pg->faults[k];
        if (!r)
            return true;
        if (pull(pg, r, pg->fault_conn, w->block, w->page, 1, error) < 0)
            return false;
    }
    return true;
}

static bool pull_background(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    if (!pg->pulling)
        return true;
    for (int k = 0; k < BULK_SLOTS; k++) {
        PullReq *r = &pg->bulk[k];
        if (r->busy)
            continue;
        while (pg->bg_block < s->blocks->len) {
            RdmigRamBlock *b = blk(pg, pg->bg_block);
            uint64_t p = rdmig_bitmap_next_set(b->unrequested, b->npages, pg->bg_cursor);
            if (p < b->npages) {
                uint64_t end = rdmig_bitmap_next_clear(b->unrequested, b->npages, p);
                uint32_t max = MAX(1u, BULK_BYTES / b->page_size);
                uint32_t n = (uint32_t)MIN(end - p, (uint64_t)max);
                uint32_t ci = pg->next_bulk_conn++ % pg->bulk_conns;
                int rc = pull(pg, r, ci, pg->bg_block, p, n, error);
                if (rc < 0)
                    return false;
                if (rc > 0)
                    pg->bg_cursor = p + n;
                break;
            }
            pg->bg_block++;
            pg->bg_cursor = 0;
        }
    }
    return true;
}

/* A fault on a page this side can serve without a pull: placed meanwhile,
 * held in the file (zero copy), or zero on the source.  True with *@served
 * when it was one of those. */
static bool serve_here(Pager *pg, RdmigRamBlock *b, uint64_t page, uint32_t tid, bool minor,
                       bool *served, GError **error)
{
    RdmigSession *s = pg->s;
    uint64_t start = (uintptr_t)b->host + page * b->page_size;
    int r = 0;
    *served = true;
    if (rdmig_bitmap_test(b->received, page)) {
        /* Placed between the fault and now: just let the thread go on.  A
         * minor fault on a placed page means it lost its mapping since (the
         * file page was swapped out): map it again, or the thread spins. */
        if (minor && !map_pulled(pg, b, page, 1, error))
            return false;
        if (!minor)
            rdmig_uffd_wake(pg->uffd, start, b->page_size);
        record_latency(pg, tid, 0);
        return true;
    }
    if (rdmig_bitmap_test(b->needed, page)) {
        *served = false;
        return true;
    }
    /* Zero copy: in the file and right there (zero, or held since precopy),
     * only not mapped.  Else zero on the source, or never touched there. */
    if (minor && !map_pulled(pg, b, page, 1, error))
        return false;
    if (!minor && (r = rdmig_uffd_zeropage(pg->uffd, start, b->page_size)) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "UFFDIO_ZEROPAGE at page %" G_GUINT64_FORMAT " of '%s': %s", page, b->name,
                    g_strerror(-r));
        return false;
    }
    RDMIG_STATS_UPDATE(s, s->stats.faults_zero++);
    return true;
}

static bool handle_fault(Pager *pg, const struct uffd_msg *m, GError **error)
{
    RdmigSession *s = pg->s;
    if (m->event != UFFD_EVENT_PAGEFAULT)
        return true;
    guint bi;
    uint64_t page;
    if (!locate(pg, m->arg.pagefault.address, &bi, &page)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "fault at 0x%" G_GINT64_MODIFIER "x outside every RAM block",
                    (uint64_t)m->arg.pagefault.address);
        return false;
    }
    RdmigRamBlock *b = blk(pg, bi);
    uint32_t tid = m->arg.pagefault.feat.ptid;
    RDMIG_STATS_UPDATE(s, s->stats.faults++);
    bool served;
    if (!serve_here(pg, b, page, tid, m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR,
                    &served, error))
        return false;
    if (served)
        return true;
    if (pg->nwaiters < MAX_WAITERS)
        pg->waiters[pg->nwaiters++] = (Waiter){ bi, page, tid, rdmig_now_us() };
    PullReq *r = b->zero_copy ? arrived_unsettled(pg, bi, page) : NULL;
    if (r) /* here, waiting in the background's queue: this one first */
        return settle_run(pg, r, (uint32_t)(page - r->first), 1, true, error);
    return pull_faulted(pg, error);
}

static bool read_faults(Pager *pg, GError **error)
{
    for (;;) {
        struct uffd_msg msgs[16];
        ssize_t n = read(pg->uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return true;
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "reading userfaultfd: %s",
                        g_strerror(errno));
            return false;
        }
        for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
            if (!handle_fault(pg, &msgs[i], error))
                return false;
        if ((size_t)n < sizeof(msgs))
            return true;
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* POSTCOPY_RESUME: the source resent its keys and hashes on the new link
 * of this epoch; pulling goes on. */
static bool resume_pulling(Pager *pg, const RdmigFrame *f, GError **error)
{
    RdmigSession *s = pg->s;
    uint64_t epoch;
    if (!rdmig_u64_decode(f->payload, f->hdr.length, &epoch, "POSTCOPY_RESUME", error))
        return false;
    if (epoch != s->epoch) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "POSTCOPY_RESUME for epoch %" G_GUINT64_FORMAT " on the link of epoch %"
                    G_GUINT64_FORMAT, epoch, s->epoch);
        return false;
    }
    g_autoptr(GError) refused = NULL;
    if (!rdmig_recovery_resumed(s, &refused)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "POSTCOPY_RESUME outside recovery");
        return false;
    }
    pg->pulling = true;
    return true;
}

/* A control message during postcopy: final hashes, and on a recovered link
 * the source's keys and POSTCOPY_RESUME. */
static bool control_message(Pager *pg, GError **error)
{
    RdmigFrame f;
    int r = rdmig_channel_recv(pg->s, &f, 0, error);
    if (r <= 0)
        return r == 0;
    if (f.hdr.type == RDMIG_MSG_HASHES)
        return late_hashes(pg, &f, error);
    if (!pg->pulling && f.hdr.type == RDMIG_MSG_SOURCE_REGIONS)
        return rdmig_apply_source_keys(pg->dst, &f, error);
    if (!pg->pulling && f.hdr.type == RDMIG_MSG_POSTCOPY_RESUME)
        return resume_pulling(pg, &f, error);
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "unexpected %s from the source during postcopy", rdmig_msg_type_str(f.hdr.type));
    return false;
}

/* Waits for what comes next: completions, faults, control, a cancel. */
static bool pull_wait(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    struct pollfd p[RDMIG_MAX_DATA_CONNS + 3];
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nconns; i++) {
        short ev;
        p[n].fd = s->tp->conn_fd(s->conns[i], &ev);
        p[n++].events = ev;
    }
    p[n++] = (struct pollfd){ .fd = pg->uffd, .events = POLLIN };
    p[n++] = (struct pollfd){ .fd = rdmig_control_fd(s->ctl), .events = POLLIN };
    p[n++] = (struct pollfd){ .fd = pg->cancel_seen ? -1 : s->wake_fd, .events = POLLIN };
    if (poll(p, n, backlog(pg) ? 0 : (int)s->params.keepalive_ms) < 0 && errno != EINTR) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return false;
    }
    if (p[s->nconns].revents && !read_faults(pg, error))
        return false;
    for (uint32_t i = 0; i < s->nconns; i++)
        if (p[i].revents && !reap(pg, i, error))
            return false;
    if (p[s->nconns + 1].revents && !control_message(pg, error))
        return false;
    if (!settle_backlog(pg, HASH_SLICE_PAGES, error))
        return false;
    if (p[s->nconns + 2].revents && rdmig_session_cancelled(s) && !pg->cancel_seen) {
        /* The guest runs here and part of its memory is still there. */
        g_warning("cancel ignored: postcopy cannot be cancelled once the guest runs here");
        pg->cancel_seen = true;
    }
    return rdmig_channel_check_silence(s, error);
}

static bool pull_loop(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    while (pg->received < pg->needed || pg->unverified || backlog(pg)) {
        /* Faults first: while a guest thread waits, no new bulk read goes
         * out to share the link with its page. */
        if (!pull_faulted(pg, error) || (!pg->nwaiters && !pull_background(pg, error)) ||
            !pull_wait(pg, error))
            return false;
    }
    if (pg->nsamples) {
        qsort(pg->samples, pg->nsamples, sizeof(uint32_t), cmp_u32);
        RDMIG_STATS_UPDATE(s, {
            s->stats.fault_median_us = pg->samples[pg->nsamples / 2];
            s->stats.fault_p99_us = pg->samples[MIN(pg->nsamples - 1,
                                                    (uint32_t)((uint64_t)pg->nsamples * 99 / 100))];
        });
    }
    return true;
}

/* The pages held (not needed) were checked before the guest ran; these are
 * the pulled ones. */
static bool pulled_ok(Pager *pg, RdmigCompleteAck *ack)
{
    ack->pages_verified += pg->verified;
    ack->mismatches += pg->mismatches;
    if (!pg->mismatches)
        return true;
    ack->status = 1 + RDMIG_ERROR_VERIFY;
    g_snprintf(ack->message, sizeof(ack->message),
               "%" G_GUINT64_FORMAT " pulled pages differ from the source (block:page %s%s)",
               pg->mismatches, pg->bad->str, pg->mismatches > 16 ? ", ..." : "");
    return false;
}

/* ------------------------------------------------------------ recovery */

static void update_missing(Pager *pg)
{
    RDMIG_STATS_UPDATE(pg->s, pg->s->stats.pages_missing = pg->needed - pg->received);
}

/* Reads in flight go back to "unrequested": the next link asks again. */
static void requeue_in_flight(Pager *pg)
{
    PullReq *all[FAULT_SLOTS + BULK_SLOTS];
    for (int i = 0; i < FAULT_SLOTS; i++)
        all[i] = &pg->faults[i];
    for (int i = 0; i < BULK_SLOTS; i++)
        all[FAULT_SLOTS + i] = &pg->bulk[i];
    for (size_t i = 0; i < G_N_ELEMENTS(all); i++) {
        PullReq *r = all[i];
        if (!r->busy)
            continue;
        RdmigRamBlock *b = blk(pg, r->block);
        for (uint64_t p = r->first; p < r->first + r->n; p++)
            if (!rdmig_bitmap_test(b->received, p))
                rdmig_bitmap_set(b->unrequested, p);
        r->busy = false;
    }
    pg->bg_block = 0;
    pg->bg_cursor = 0;
}

/* The link is gone: fence it off and keep what we have. */
static void pager_pause(Pager *pg, const GError *why)
{
    RdmigSession *s = pg->s;
    rdmig_recovery_pause(s, why, false);
    pg->epoch++;
    pg->pulling = false;
    /* Arrived whole: settled now, before their buffers can be reused.  If
     * that fails, what is left is pulled again on the next link. */
    GError *err = NULL;
    if (!settle_backlog(pg, UINT32_MAX, &err)) {
        g_warning("settling pulled pages at the pause: %s", err->message);
        g_error_free(err);
        for (int k = 0; k < BULK_SLOTS; k++)
            pg->bulk[k].unsettled = 0;
    }
    requeue_in_flight(pg);
    /* What the old connections still complete is dropped by the epoch;
     * reaped before the staging buffer they read into is deregistered. */
    for (uint32_t i = 0; i < s->nconns; i++) {
        if (!s->conns[i])
            continue;
        s->tp->disconnect(s->conns[i]);
        RdmigIoReq *done[32];
        while (s->tp->poll(s->conns[i], done, G_N_ELEMENTS(done)) > 0)
            ;
    }
    if (pg->staging_region)
        s->tp->deregister_region(pg->staging_region);
    pg->staging_region = NULL;
    rdmig_destination_drop_link(pg->dst); /* the aliases' registrations go with it */
    update_missing(pg);
}

/* A new link is up: our staging buffer in its transport, and the source
 * learns what we hold. */
static bool link_ready(void *opaque, GError **error)
{
    Pager *pg = opaque;
    RdmigSession *s = pg->s;
    pg->fault_conn = s->nconns - 1;
    pg->bulk_conns = s->nconns > 1 ? s->nconns - 1 : 1;
    pg->staging_region = s->tp->register_region(s->transport, pg->staging, pg->staging_len,
                                                RDMIG_ACCESS_LOCAL_WRITE, error);
    if (!pg->staging_region) {
        g_prefix_error(error, "registering the postcopy staging buffer: ");
        return false;
    }
    if (!rdmig_pager_map_aliases(pg->dst, error))
        return false;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = blk(pg, bi);
        size_t words = rdmig_bitmap_words(b->npages);
        for (size_t w = 0; w < words; w += RDMIG_RECEIVED_WORDS_PER_MSG) {
            uint32_t n = (uint32_t)MIN((size_t)RDMIG_RECEIVED_WORDS_PER_MSG, words - w);
            if (!rdmig_channel_send(s, RDMIG_MSG_RECEIVED,
                                    rdmig_received_encode(bi, (uint64_t)w * 64, b->received + w,
                                                          n), error))
                return false;
        }
    }
    return rdmig_channel_send(s, RDMIG_MSG_RECEIVED_END, rdmig_u64_encode(pg->received), error);
}

/* Paused and asked to give up: the pages only the source had are lost. */
static void give_up(Pager *pg, GError **error)
{
    GString *lost = g_string_new(NULL);
    uint32_t runs = 0;
    for (guint bi = 0; bi < pg->s->blocks->len && runs < 8; bi++) {
        RdmigRamBlock *b = blk(pg, bi);
        uint64_t p = 0;
        while (runs < 8) {
            uint64_t first = p;
            while (first < b->npages &&
                   (!rdmig_bitmap_test(b->needed, first) || rdmig_bitmap_test(b->received, first)))
                first++;
            if (first >= b->npages)
                break;
            uint64_t end = first;
            while (end < b->npages && rdmig_bitmap_test(b->needed, end) &&
                   !rdmig_bitmap_test(b->received, end))
                end++;
            g_string_append_printf(lost, "%s%s:%" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT,
                                   runs ? ", " : "", b->name, first, end - 1);
            runs++;
            p = end;
        }
    }
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED,
                "postcopy given up while paused: %" G_GUINT64_FORMAT " pages never came from "
                "the source and are lost (block:pages %s%s); guest threads touching them wait "
                "forever, never read garbage: stop this guest", pg->needed - pg->received,
                lost->str, runs >= 8 ? ", ..." : "");
    g_string_free(lost, TRUE);
}

/* A failed recovery attempt: the staging buffer's registration goes with
 * its transport. */
static void link_undo(void *opaque)
{
    Pager *pg = opaque;
    if (pg->staging_region)
        pg->s->tp->deregister_region(pg->staging_region);
    pg->staging_region = NULL;
}

/* Faults while paused: those on pages it need not pull are served. */
static bool serve_faults(void *opaque, GError **error)
{
    return read_faults(opaque, error);
}

/* Paused: serves what faults it can and waits for the source to come back
 * on a listener handed over by rdmig_session_recover(). */
static bool wait_recovery(Pager *pg, GError **error)
{
    const RdmigRecoveryWaiter waiter = { .fd = pg->uffd, .serve = serve_faults,
                                         .resync = link_ready, .undo = link_undo, .opaque = pg };
    if (rdmig_recovery_destination(pg->dst, &waiter, error))
        return true;
    if (g_error_matches(*error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED)) {
        g_clear_error(error);
        give_up(pg, error);
    }
    return false;
}

bool rdmig_pager_run(RdmigDestination *dst, bool (*resume)(RdmigDestination *, GError **),
                     RdmigCompleteAck *ack, GError **error)
{
    RdmigSession *s = &dst->s;
    Pager *pg = g_new0(Pager, 1);
    bool ok = pager_init(pg, dst, error) && resume(dst, error);
    pg->pulling = ok;
    update_missing(pg);
    while (ok) {
        GError *lost = NULL;
        if (pull_loop(pg, &lost))
            break;
        if (!rdmig_recovery_link_lost(s, lost, RDMIG_FEATURE_RECOVERY)) {
            g_propagate_error(error, lost);
            ok = false;
            break;
        }
        pager_pause(pg, lost);
        g_error_free(lost);
        ok = wait_recovery(pg, error);
    }
    if (pg->duplicates)
        g_message("postcopy: %" G_GUINT64_FORMAT " pages arrived twice and were placed once",
                  pg->duplicates);
    if (ok && !pulled_ok(pg, ack)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERIFY, "%s", ack->message);
        ok = false;
    }
    /* A verification failure still has every page in place: release them. */
    pager_fini(pg, ok || pg->received == pg->needed);
    g_free(pg);
    return ok;
}

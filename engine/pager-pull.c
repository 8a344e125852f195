/* SPDX-License-Identifier: MIT */
/*
 * The pager's reads (pager.h): faulted pages first, on their own
 * connection, then the background sweep over what is still needed; and
 * reaping their completions, which a lost link's epoch fences off.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>

#include "dataplane.h"
#include "pager.h"

/* A read that failed.  A remote access error means the source's memory
 * registration is gone: a source process that dies (SIGKILL) has its memory
 * regions torn down before its queue pairs, so reads in flight fail that way
 * before the connection itself breaks.  In postcopy the only running copy
 * of the guest is here, so that is read as a lost link (pause, recoverable)
 * and not as a misbehaving peer (fail): a source that really hands out bad
 * keys has authenticated, and its operator can cancel the paused migration. */
static void pull_failed(RdmigSession *s, uint32_t ci, int err, GError **error)
{
    if (err == -EACCES) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK,
                    "pulling pages from the source: data connection %u: the source refused "
                    "the read (its memory registration is gone; the source process may have "
                    "died)",
                    ci);
        return;
    }
    rdmig_dataplane_conn_failed(s, ci, err, "pulling pages from the source: ", error);
}

bool pager_reap(Pager *pg, uint32_t ci, GError **error)
{
    RdmigSession *s = pg->s;
    for (;;) {
        RdmigIoReq *done[16];
        int n = s->tp->poll(s->conns[ci], done, G_N_ELEMENTS(done));
        if (n < 0 || (n > 0 && done[0]->status < 0)) {
            pull_failed(s, ci, n < 0 ? n : done[0]->status, error);
            return false;
        }
        for (int i = 0; i < n; i++) {
            PullReq *r = done[i]->user;
            if (r->epoch != pg->epoch)
                continue; /* a lost link's: its pages were asked for again */
            if (done[i]->status < 0) {
                pull_failed(s, ci, done[i]->status, error);
                return false;
            }
            if (!pager_completed(pg, r, error))
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
    RdmigRamBlock *b = pager_block(pg, bi);
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
    return pager_reap(pg, ci, error) ? 1 : -1;
}

/* Requests the pages faulted on and not yet requested, as fault slots allow. */
bool pager_pull_faulted(Pager *pg, GError **error)
{
    if (!pg->pulling)
        return true; /* paused: the waiters are kept for the next link */
    for (uint32_t i = 0; i < pg->nwaiters; i++) {
        Waiter *w = &pg->waiters[i];
        if (!rdmig_bitmap_test(pager_block(pg, w->block)->unrequested, w->page))
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

bool pager_pull_background(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    if (!pg->pulling)
        return true;
    for (int k = 0; k < BULK_SLOTS; k++) {
        PullReq *r = &pg->bulk[k];
        if (r->busy)
            continue;
        while (pg->bg_block < s->blocks->len) {
            RdmigRamBlock *b = pager_block(pg, pg->bg_block);
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

/* Reads in flight go back to "unrequested": the next link asks again. */
void pager_requeue_in_flight(Pager *pg)
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
        RdmigRamBlock *b = pager_block(pg, r->block);
        for (uint64_t p = r->first; p < r->first + r->n; p++)
            if (!rdmig_bitmap_test(b->received, p))
                rdmig_bitmap_set(b->unrequested, p);
        r->busy = false;
    }
    pg->bg_block = 0;
    pg->bg_cursor = 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * The pager when its link breaks (pager.h, recovery.c): pausing without
 * losing a page, waiting in recovery.c's one wait loop while serving the
 * faults it can, resyncing a new link (the staging buffer registered, the
 * received bitmap sent), and naming the lost pages if the operator gives up.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include "channel.h"
#include "pager.h"
#include "recovery.h"

/* The link is gone: fence it off and keep what we have. */
void pager_pause(Pager *pg, const GError *why)
{
    RdmigSession *s = pg->s;
    rdmig_recovery_pause(s, why, false);
    pg->epoch++;
    pg->pulling = false;
    /* Arrived whole: settled now, before their buffers can be reused.  If
     * that fails, what is left is pulled again on the next link. */
    GError *err = NULL;
    if (!pager_settle_backlog(pg, UINT32_MAX, &err)) {
        g_warning("settling pulled pages at the pause: %s", err->message);
        g_error_free(err);
        for (int k = 0; k < BULK_SLOTS; k++)
            pg->bulk[k].unsettled = 0;
    }
    pager_requeue_in_flight(pg);
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
    pager_update_missing(pg);
}

/* A new link is up: our staging buffer in its transport, and the source
 * learns what we hold. */
static bool link_ready(void *opaque, GError **error)
{
    Pager *pg = opaque;
    RdmigSession *s = pg->s;
    pg->fault_conn = s->nconns - 1;
    pg->bulk_conns = s->nconns > 1 ? s->nconns - 1 : 1;
    if (!pager_register_staging(pg, error))
        return false;
    if (!rdmig_pager_map_aliases(pg->dst, error))
        return false;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = pager_block(pg, bi);
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
        RdmigRamBlock *b = pager_block(pg, bi);
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
    return pager_read_faults(opaque, error);
}

/* Paused: serves what faults it can and waits for the source to come back
 * on a listener handed over by rdmig_session_recover(). */
bool pager_wait_recovery(Pager *pg, GError **error)
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

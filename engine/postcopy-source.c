/* SPDX-License-Identifier: MIT */
/*
 * Postcopy on the source: the switchover in two steps, so that the downtime
 * holds only what must be done with the guest stopped, then serving the
 * destination's pulls from our registered RAM (RDMA READ: no work here; TCP:
 * this thread's polling answers the GETs) until it has every page.  A
 * broken link pauses (RECOVERY) and the pulls go on over a new one.
 *
 *  1. guest still running: DISCARD the pages written since they were sent,
 *     the hashes of the rest, POSTCOPY_PREPARE; the destination drops those
 *     pages, checks the ones it keeps, and says PREPARED.
 *  2. stop the guest, sync once more, DISCARD what was written meanwhile,
 *     the device state, POSTCOPY_START; the destination runs the guest and
 *     says RUNNING.  Then the final hashes of every discarded page.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <string.h>

#include "channel.h"
#include "dataplane.h"
#include "recovery.h"
#include "source.h"
#include "state.h"

bool rdmig_source_postcopy_due(RdmigSource *src, uint64_t round, gint64 elapsed_ms)
{
    const RdmigParams *p = &src->s.params;
    if (!(src->s.features & RDMIG_FEATURE_POSTCOPY))
        return false;
    return g_atomic_int_get(&src->postcopy_requested) ||
           (p->postcopy_after_rounds && round >= p->postcopy_after_rounds) ||
           (p->postcopy_after_ms && elapsed_ms >= (gint64)p->postcopy_after_ms);
}

/* DISCARD runs of block @bi's dirty pages: sent before and written since,
 * the destination must drop and pull them.  Counts into @discarded. */
static bool discard_block(RdmigSource *src, guint bi, uint64_t *discarded, GError **error)
{
    RdmigRamBlock *b = src->s.blocks->pdata[bi];
    GByteArray *m = NULL;
    for (uint64_t i = rdmig_bitmap_next_set(b->dirty, b->npages, 0); i < b->npages;) {
        uint64_t n = MIN(rdmig_bitmap_next_clear(b->dirty, b->npages, i) - i,
                         (uint64_t)UINT32_MAX);
        if (!m)
            m = rdmig_zero_begin(bi);
        rdmig_zero_run_put(m, i, (uint32_t)n);
        *discarded += n;
        if ((m->len - 8) / 12 >= RDMIG_ZERO_RUNS_PER_MSG) {
            rdmig_zero_finish(m);
            if (!rdmig_channel_send(&src->s, RDMIG_MSG_DISCARD, g_steal_pointer(&m), error))
                return false;
        }
        i = rdmig_bitmap_next_set(b->dirty, b->npages, i + n);
    }
    if (!m)
        return true;
    rdmig_zero_finish(m);
    return rdmig_channel_send(&src->s, RDMIG_MSG_DISCARD, m, error);
}

static bool send_discards(RdmigSource *src, uint64_t *discarded, GError **error)
{
    for (guint bi = 0; bi < src->s.blocks->len; bi++)
        if (!discard_block(src, bi, discarded, error))
            return false;
    return true;
}

/* Our RAM, readable by the destination from now on, and its keys: in
 * precopy it had no business reading it.  A second registration, not the
 * first one's replacement: deregistering the one our writes used, with the
 * queue pairs up, made soft-RoCE lose a pull connection 1 run in 3 (a flush
 * with no error completion before it).  Both go at the end. */
static bool grant_reads(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    gint64 t0 = rdmig_now_us();
    if (!rdmig_dataplane_register_readable(s, error))
        return false;
    RDMIG_STATS_UPDATE(s, s->stats.registration_time_ms +=
                              (uint64_t)(rdmig_now_us() - t0) / 1000);
    return rdmig_source_send_keys(src, error);
}

/* Step 1, the guest still running here. */
static bool prepare(RdmigSource *src, uint64_t *discarded, GError **error)
{
    RdmigSession *s = &src->s;
    if (!grant_reads(src, error) || !send_discards(src, discarded, error))
        return false;
    if ((s->features & RDMIG_FEATURE_VERIFY) && !rdmig_source_send_hashes(src, error))
        return false;
    src->postcopy_prepare_sent = true;
    return rdmig_channel_send(s, RDMIG_MSG_POSTCOPY_PREPARE, rdmig_u64_encode(*discarded),
                              error) &&
           rdmig_source_wait_flag(src, &src->postcopy_prepared, error);
}

/* Step 2's sync: discards the pages written since step 1 and not discarded
 * then; afterwards every block's dirty bitmap holds all the discarded pages
 * (the ones to hash finally).  @pending: bytes written since step 1. */
static bool discard_late(RdmigSource *src, uint64_t *discarded, uint64_t *pending,
                         GError **error)
{
    RdmigSession *s = &src->s;
    g_autoptr(GPtrArray) first = g_ptr_array_new_with_free_func(g_free);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        g_ptr_array_add(first, b->dirty);
        b->dirty = rdmig_bitmap_new(b->npages);
    }
    bool ok = rdmig_dirty_log_sync(src, pending, error);
    for (guint bi = 0; ok && bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        const uint64_t *f = first->pdata[bi];
        for (size_t w = 0; w < rdmig_bitmap_words(b->npages); w++)
            b->dirty[w] &= ~f[w];
    }
    gint64 t_sync = rdmig_now_us();
    ok = ok && send_discards(src, discarded, error);
    g_debug("postcopy: guest stopped and synced in %" G_GINT64_FORMAT " us, %" G_GUINT64_FORMAT
            " pages discarded in all, the last ones in %" G_GINT64_FORMAT " us",
            t_sync - s->t_stop, *discarded, rdmig_now_us() - t_sync);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        const uint64_t *f = first->pdata[bi];
        for (size_t w = 0; w < rdmig_bitmap_words(b->npages); w++)
            b->dirty[w] |= f[w];
    }
    return ok;
}

/* Our memory no longer changes: the final hashes of the discarded pages. */
static void final_hashes(RdmigSource *src)
{
    RdmigSession *s = &src->s;
    if (src->final_hashes_done || !(s->features & RDMIG_FEATURE_VERIFY))
        return;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        for (uint64_t p = rdmig_bitmap_next_set(b->dirty, b->npages, 0); p < b->npages;
             p = rdmig_bitmap_next_set(b->dirty, b->npages, p + 1))
            b->hashes[p] = rdmig_page_hash(b->host + p * b->page_size, b->page_size);
    }
    src->final_hashes_done = true;
}

/* The final hashes, once per link. */
static bool send_final_hashes(RdmigSource *src, GError **error)
{
    final_hashes(src);
    if (!(src->s.features & RDMIG_FEATURE_VERIFY) || src->recovery_hashes_sent)
        return true;
    if (!rdmig_source_send_hashes(src, error))
        return false;
    src->recovery_hashes_sent = true;
    return true;
}

/* The destination closes its data connections once it has every page, and
 * its acknowledgement may trail that on the control channel: after a link
 * error, the control channel alone for up to a second. */
static bool ack_after_link_error(RdmigSource *src, GError **error)
{
    if ((*error)->domain != RDMIG_ERROR || (*error)->code != RDMIG_ERROR_LINK)
        return false;
    bool data_done = src->data_done;
    src->data_done = true; /* the data connections no longer count */
    gint64 until = rdmig_now_us() + 1000000;
    GError *cerr = NULL;
    while (!src->complete_acked && rdmig_now_us() < until && !cerr)
        rdmig_source_wait_events(src, 100, &cerr);
    src->data_done = data_done;
    if (cerr) {
        g_clear_error(error);
        g_propagate_error(error, cerr);
        return false;
    }
    if (!src->complete_acked)
        return false;
    g_clear_error(error);
    return true;
}

/* One link's share of postcopy: RUNNING (once), the final hashes (once per
 * link), then COMPLETE_ACK. */
static bool serve_link(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    while (!src->postcopy_running && !src->complete_acked)
        if (!rdmig_source_wait_events(src, (int)s->params.keepalive_ms, error))
            return false;
    if (!s->stats.downtime_ms)
        RDMIG_STATS_UPDATE(s, s->stats.downtime_ms =
                                  (uint64_t)(rdmig_now_us() - s->t_stop) / 1000);
    /* While the destination already runs the guest. */
    if (!send_final_hashes(src, error))
        return false;
    while (!src->complete_acked)
        if (!rdmig_source_wait_events(src, (int)s->params.keepalive_ms, error) &&
            !ack_after_link_error(src, error))
            return false;
    return true;
}

static void pause_serving(RdmigSource *src, const GError *why)
{
    rdmig_recovery_pause(&src->s, why, false);
    rdmig_session_drop_link(&src->s);
    src->recovery_hashes_sent = false;
}

/* RECEIVED ... RECEIVED_END: a slice of what the destination holds, which
 * must be pages it was told to pull.  Counts into @counted. */
static bool take_received_slice(RdmigSource *src, const RdmigFrame *f, uint64_t *counted,
                                GError **error)
{
    RdmigSession *s = &src->s;
    RdmigReceivedMsg m;
    if (!rdmig_received_decode(f->payload, f->hdr.length, &m, error))
        return false;
    if (m.block >= s->blocks->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "RECEIVED names RAM block #%u; there are only %u", m.block, s->blocks->len);
        return false;
    }
    RdmigRamBlock *b = s->blocks->pdata[m.block];
    size_t words = rdmig_bitmap_words(b->npages), w0 = (size_t)(m.first / 64);
    if (m.first >= b->npages || m.n_words > words - w0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "RECEIVED for %u words at page %" G_GUINT64_FORMAT " is outside block '%s' "
                    "(%" G_GUINT64_FORMAT " pages)", m.n_words, m.first, b->name, b->npages);
        return false;
    }
    for (uint32_t i = 0; i < m.n_words; i++) {
        uint64_t w = rdmig_received_word(&m, i);
        if (w & ~b->dirty[w0 + i]) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "RECEIVED claims pages near page %" G_GUINT64_FORMAT " of '%s' that "
                        "were never to be pulled", (uint64_t)(w0 + i) * 64, b->name);
            return false;
        }
        *counted += (uint64_t)__builtin_popcountll(w);
    }
    return true;
}

static bool take_received(RdmigSource *src, uint64_t *received, GError **error)
{
    uint64_t counted = 0;
    for (;;) {
        RdmigFrame f;
        int r = rdmig_channel_recv(&src->s, &f, -1, error);
        if (r <= 0)
            return false;
        if (f.hdr.type == RDMIG_MSG_RECEIVED) {
            if (!take_received_slice(src, &f, &counted, error))
                return false;
            continue;
        }
        if (f.hdr.type != RDMIG_MSG_RECEIVED_END) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "expected the received bitmap from the recovering destination, got %s",
                        rdmig_msg_type_str(f.hdr.type));
            return false;
        }
        if (!rdmig_u64_decode(f.payload, f.hdr.length, received, "RECEIVED_END", error))
            return false;
        if (*received == counted)
            return true;
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "RECEIVED_END says %" G_GUINT64_FORMAT " pages, the bitmap had %"
                    G_GUINT64_FORMAT, *received, counted);
        return false;
    }
}

/* A recovery link is up (HELLO_ACK in): the data plane, our RAM readable
 * again, what the destination holds, the keys, the final hashes, and
 * POSTCOPY_RESUME. */
static bool resync(RdmigSource *src, const RdmigHelloAck *ack, const RdmigTransportOps **failed,
                   GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t received;
    if (!rdmig_source_open_data(src, ack, failed, error) ||
        !rdmig_dataplane_register_readable(s, error) ||
        !take_received(src, &received, error) || !rdmig_source_send_keys(src, error) ||
        !send_final_hashes(src, error) ||
        !rdmig_channel_send(s, RDMIG_MSG_POSTCOPY_RESUME, rdmig_u64_encode(s->epoch), error))
        return false;
    g_message("postcopy recovery: the destination holds %" G_GUINT64_FORMAT " of %"
              G_GUINT64_FORMAT " pages it pulls; resuming over %s", received,
              s->stats.pages_discarded, s->tp->name);
    /* It is paused in postcopy, so it runs the guest, whether or not its
     * RUNNING reached us before the link broke. */
    src->postcopy_running = true;
    return rdmig_recovery_resumed(s, error);
}

/* After POSTCOPY_START: until the destination has every page; @broken: the
 * link broke already. */
static bool serve(RdmigSource *src, GError *broken, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t cpu0 = rdmig_thread_cpu_us();
    for (;;) {
        GError *err = g_steal_pointer(&broken);
        if (!err && serve_link(src, &err)) {
            RDMIG_STATS_UPDATE(s, s->stats.postcopy_cpu_us = rdmig_thread_cpu_us() - cpu0);
            return rdmig_source_take_complete_ack(src, error);
        }
        bool may = rdmig_recovery_link_lost(s, err, RDMIG_FEATURE_RECOVERY);
        if (!rdmig_recovery_source(src, err, may, pause_serving, resync, error))
            return false;
    }
}

bool rdmig_source_postcopy(RdmigSource *src, uint64_t round, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t discarded = 0, pending;
    if (!prepare(src, &discarded, error) ||
        !rdmig_source_stop_guest(src, RDMIG_STATE_POSTCOPY_ACTIVE, error) ||
        !discard_late(src, &discarded, &pending, error))
        return false;
    RDMIG_STATS_UPDATE(s, {
        s->stats.rounds = round;
        s->stats.postcopy = true;
        s->stats.remaining_bytes = pending;
    });
    if (!rdmig_source_send_device_state(src, error))
        return false;
    /* From here the destination may run the guest: never resume it here. */
    src->postcopy_started = true;
    GError *broken = NULL;
    if (rdmig_channel_send(s, RDMIG_MSG_POSTCOPY_START, rdmig_u64_encode(discarded), &broken))
        RDMIG_STATS_UPDATE(s, s->stats.pages_discarded = discarded);
    return serve(src, broken, error);
}

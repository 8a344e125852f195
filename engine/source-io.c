/* SPDX-License-Identifier: MIT */
/*
 * The source's traffic during a migration: dirty pages to one-sided writes
 * (zero pages as compact runs on the control channel, contiguous non-zero
 * pages merged into one request, posted round-robin on the data
 * connections), completions reaped (a write completes when its bytes are
 * in the destination's memory, so byte counts are exact), the destination's
 * control messages, round barriers, pacing, page hashes, and the two ends of
 * a switchover: the guest's stop and the destination's verdict.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <poll.h>
#include <string.h>

#include "channel.h"
#include "dataplane.h"
#include "source.h"
#include "state.h"

#define REAP_BATCH 32

/* Completions of data connection @ci: one batch; *@count how many. */
static bool reap_batch(RdmigSource *src, uint32_t ci, int *count, GError **error)
{
    RdmigSession *s = &src->s;
    RdmigIoReq *done[REAP_BATCH];
    int n = s->tp->poll(s->conns[ci], done, G_N_ELEMENTS(done));
    *count = n;
    if (n < 0) {
        rdmig_dataplane_conn_failed(s, ci, n, "", error);
        return false;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        RdmigPageReq *pr = done[i]->user;
        if (done[i]->status < 0) {
            rdmig_dataplane_conn_failed(s, ci, done[i]->status, "", error);
            return false;
        }
        pr->busy = false;
        src->inflight--;
        bytes += pr->bytes;
    }
    if (n) {
        src->round_bytes += bytes;
        src->total_data_bytes += bytes;
        RDMIG_STATS_UPDATE(s, s->stats.bytes_transferred += bytes);
    }
    return true;
}

/* Reaps until the transport has no more completions ready: a full batch may
 * leave more behind with nothing left to wake a poll(2) for them. */
static bool reap(RdmigSource *src, uint32_t ci, GError **error)
{
    int n;
    do {
        if (!reap_batch(src, ci, &n, error))
            return false;
    } while (n == REAP_BATCH);
    return true;
}

/* A message the destination may send only after one of ours: PROTOCOL,
 * naming both, when ours has not gone out.  A peer that answers what was
 * never asked (a COMPLETE_ACK before COMPLETE would end the migration as a
 * success) is broken or hostile. */
static bool in_phase(bool asked, RdmigMsgType type, const char *after, GError **error)
{
    if (!asked)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "%s from the destination before %s: out of phase",
                    rdmig_msg_type_str(type), after);
    return asked;
}

/* The destination's verification pace, kept from the last ROUND_ACK that
 * had pages to check: one with none says nothing about it. */
static void note_verify_pace(RdmigSource *src)
{
    const RdmigRoundAck *a = &src->last_ack;
    RdmigSession *s = &src->s;
    if (!a->has_backlog || !a->unverified_pages || !a->verify_us || !s->blocks->len)
        return;
    uint32_t page = ((RdmigRamBlock *)s->blocks->pdata[0])->page_size;
    src->verify_ns_per_byte = (double)a->verify_us * 1000.0 /
                              ((double)a->unverified_pages * page);
}

static bool handle_message(RdmigSource *src, const RdmigFrame *f, GError **error)
{
    RdmigMsgType t = f->hdr.type;
    switch (f->hdr.type) {
    case RDMIG_MSG_ROUND_ACK:
        if (!rdmig_round_ack_decode(f->payload, f->hdr.length, &src->last_ack, error))
            return false;
        src->round_ack = src->last_ack.round;
        note_verify_pace(src);
        return true;
    case RDMIG_MSG_POSTCOPY_PREPARED:
        if (!in_phase(src->postcopy_prepare_sent && !src->postcopy_prepared, t,
                      "POSTCOPY_PREPARE (or twice)", error))
            return false;
        src->postcopy_prepared = true;
        return true;
    case RDMIG_MSG_POSTCOPY_RUNNING:
        if (!src->postcopy_started) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "POSTCOPY_RUNNING from the destination, but postcopy has not begun");
            return false;
        }
        src->postcopy_running = true;
        return true;
    case RDMIG_MSG_COMPLETE_ACK:
        if (!in_phase(src->complete_sent || src->postcopy_started, t,
                      "COMPLETE or POSTCOPY_START", error) ||
            !rdmig_complete_ack_decode(f->payload, f->hdr.length, &src->complete_ack, error))
            return false;
        src->complete_acked = true;
        return true;
    default:
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "unexpected %s message from the destination during migration",
                    rdmig_msg_type_str(f->hdr.type));
        return false;
    }
}

bool rdmig_source_wait_events(RdmigSource *src, int timeout_ms, GError **error)
{
    RdmigSession *s = &src->s;
    struct pollfd p[RDMIG_MAX_DATA_CONNS + 2];
    uint32_t n = 0;
    /* After the last write completed, the destination may close its end of
     * the data connections at any time: only the control channel counts. */
    uint32_t nconns = src->data_done ? 0 : s->nconns;
    for (uint32_t i = 0; i < nconns; i++) {
        short ev;
        p[n].fd = s->tp->conn_fd(s->conns[i], &ev);
        p[n++].events = ev;
    }
    rdmig_control_pollfd(s->ctl, &p[n++], &timeout_ms);
    p[n++] = (struct pollfd){ .fd = s->wake_fd, .events = POLLIN };
    if (poll(p, n, timeout_ms) < 0 && errno != EINTR) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return false;
    }
    if (rdmig_session_cancelled(s)) {
        rdmig_set_cancelled(error);
        return false;
    }
    if (p[nconns + 1].revents && rdmig_session_take_pause(s, error))
        return false;
    /* The control channel first: once the destination has acknowledged the
     * end (postcopy), its closing the data connections is no failure. */
    if (rdmig_control_readable(s->ctl, &p[nconns])) {
        RdmigFrame f;
        int r = rdmig_channel_recv(s, &f, 0, error);
        if (r < 0 || (r > 0 && !handle_message(src, &f, error)))
            return false;
    }
    for (uint32_t i = 0; i < nconns && !src->complete_acked; i++)
        if (p[i].revents && !reap(src, i, error))
            return false;
    return rdmig_channel_check_silence(s, error);
}

bool rdmig_source_wait_flag(RdmigSource *src, const bool *flag, GError **error)
{
    while (!*flag)
        if (!rdmig_source_wait_events(src, (int)src->s.params.keepalive_ms, error))
            return false;
    return true;
}

static RdmigPageReq *free_req(RdmigSource *src, GError **error)
{
    for (;;) {
        for (uint32_t i = 0; i < src->nreqs; i++) {
            uint32_t k = (src->next_conn * RDMIG_REQS_PER_CONN + i) % src->nreqs;
            if (!src->reqs[k].busy)
                return &src->reqs[k];
        }
        if (!rdmig_source_wait_events(src, (int)src->s.params.keepalive_ms, error))
            return NULL;
    }
}

/* max_bandwidth: waits until @bytes more fit in this second's budget. */
static bool pace(RdmigSource *src, uint64_t bytes, GError **error)
{
    uint64_t rate = src->s.params.max_bandwidth;
    if (!rate)
        return true;
    for (;;) {
        gint64 now = rdmig_now_us();
        if (now - (gint64)src->bw_window_start_us >= 1000000) {
            src->bw_window_start_us = now;
            src->bw_window_bytes = 0;
        }
        uint64_t allowed = rate * (uint64_t)(now - src->bw_window_start_us) / 1000000 + rate / 20;
        if (src->bw_window_bytes + bytes <= allowed) {
            src->bw_window_bytes += bytes;
            return true;
        }
        if (!rdmig_source_wait_events(src, 5, error))
            return false;
    }
}

/* Posts @pr on the next connection with room. */
static bool post(RdmigSource *src, RdmigPageReq *pr, GError **error)
{
    RdmigSession *s = &src->s;
    for (;;) {
        for (uint32_t k = 0; k < s->nconns; k++) {
            uint32_t ci = (src->next_conn + k) % s->nconns;
            int r = s->tp->submit(s->conns[ci], &pr->io);
            if (r == -EAGAIN)
                continue;
            if (r < 0) {
                rdmig_dataplane_conn_failed(s, ci, r, "cannot post a write: ", error);
                return false;
            }
            pr->busy = true;
            pr->conn = (int)ci;
            src->inflight++;
            src->next_conn = (ci + 1) % s->nconns;
            /* Let the transport start moving bytes now, not at the next wait. */
            return reap(src, ci, error);
        }
        if (!rdmig_source_wait_events(src, (int)s->params.keepalive_ms, error))
            return false;
    }
}

/* One write: pages [@first, @first + @n) of @b. */
static bool submit_run(RdmigSource *src, RdmigRamBlock *b, uint64_t first, uint64_t n,
                       GError **error)
{
    uint64_t bytes = n * b->page_size;
    if (!pace(src, bytes, error))
        return false;
    RdmigPageReq *pr = free_req(src, error);
    if (!pr)
        return false;
    src->round_reqs++;
    pr->io = (RdmigIoReq){ .op = RDMIG_IO_WRITE, .iovcnt = 1, .rkey = &b->rkey,
                           .remote_offset = first * b->page_size, .user = pr };
    pr->io.iov[0] = (struct iovec){ b->host + first * b->page_size, bytes };
    pr->bytes = bytes;
    return post(src, pr, error);
}

/* Zero runs of one block, gathered into ZERO messages. */
typedef struct {
    guint block;
    GByteArray *msg;
    uint64_t first, count; /* the run being extended */
} ZeroRuns;

static bool zero_flush(RdmigSource *src, ZeroRuns *z, GError **error)
{
    if (!z->msg)
        return true;
    rdmig_zero_finish(z->msg);
    GByteArray *m = g_steal_pointer(&z->msg);
    return rdmig_channel_send(&src->s, RDMIG_MSG_ZERO, m, error);
}

/* Ends the current run into the message; a full message goes out. */
static bool zero_close_run(RdmigSource *src, ZeroRuns *z, GError **error)
{
    if (!z->count)
        return true;
    if (!z->msg)
        z->msg = rdmig_zero_begin(z->block);
    rdmig_zero_run_put(z->msg, z->first, (uint32_t)z->count);
    z->count = 0;
    return (z->msg->len - 8) / 12 < RDMIG_ZERO_RUNS_PER_MSG || zero_flush(src, z, error);
}

/* Page @i of @b is zero: it joins a run instead of travelling. */
static bool zero_page(RdmigSource *src, RdmigRamBlock *b, ZeroRuns *z, uint64_t i,
                      GError **error)
{
    rdmig_bitmap_clear(b->dirty, i);
    if (b->sent_unacked)
        rdmig_bitmap_set(b->sent_unacked, i);
    if (src->s.features & RDMIG_FEATURE_VERIFY) {
        b->hashes[i] = b->zero_hash;
        rdmig_bitmap_set(b->round_hashed, i);
    }
    if (z->count && z->first + z->count == i) {
        z->count++;
        return true;
    }
    if (!zero_close_run(src, z, error))
        return false;
    z->first = i;
    z->count = 1;
    return true;
}

/* Dirty, non-zero pages from @i, up to RDMIG_IO_PAGES_MAX: how many. */
static uint64_t gather_run(RdmigSource *src, RdmigRamBlock *b, uint64_t i)
{
    bool zero_runs = src->s.features & RDMIG_FEATURE_ZERO_PAGES;
    uint64_t n = 0;
    do {
        uint8_t *pg = b->host + (i + n) * b->page_size;
        if (n && zero_runs && rdmig_page_is_zero(pg, b->page_size))
            break;
        rdmig_bitmap_clear(b->dirty, i + n);
        n++;
    } while (n < RDMIG_IO_PAGES_MAX && i + n < b->npages &&
             (uint64_t)n * b->page_size < RDMIG_IO_PAGES_MAX * 4096u &&
             rdmig_bitmap_test(b->dirty, i + n));
    return n;
}

/* Pages not in a round that one HASHES may span between two that are: each
 * costs 8 bytes, where a message of its own costs a control frame (and a
 * TLS record), received and decoded: tens of microseconds here, so a guest
 * dirtying scattered pages sent thousands of messages per round, and the
 * last round's were most of the downtime (docs/BENCHMARKS.md). */
#define HASH_GAP_PAGES 512

/* HASHES of the pages of round_hashed from position @from to @to (block,
 * page), which are then cleared.  A message spans short gaps: a page there
 * carries the hash of what this side last sent of it, or of zero (never
 * sent), which is what the destination holds; it is unchanged there, and
 * a page checked already stays checked. */
static bool send_hashes_between(RdmigSource *src, guint from_block, uint64_t from_page,
                                guint to_block, uint64_t to_page, GError **error)
{
    RdmigSession *s = &src->s;
    for (guint bi = from_block; bi <= to_block && bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        uint64_t end = bi == to_block ? MIN(to_page, b->npages) : b->npages;
        uint64_t i = bi == from_block ? from_page : 0;
        for (i = rdmig_bitmap_next_set(b->round_hashed, end, i); i < end;) {
            uint64_t stop = rdmig_bitmap_next_clear(b->round_hashed, end, i);
            for (uint64_t next; stop < end && stop - i < RDMIG_HASHES_PER_MSG; stop = next) {
                uint64_t set = rdmig_bitmap_next_set(b->round_hashed, end, stop);
                if (set >= end || set - stop > HASH_GAP_PAGES)
                    break;
                next = rdmig_bitmap_next_clear(b->round_hashed, end, set);
            }
            uint32_t n = (uint32_t)MIN(stop - i, (uint64_t)RDMIG_HASHES_PER_MSG);
            if (!rdmig_channel_send(s, RDMIG_MSG_HASHES,
                                    rdmig_hashes_encode(bi, i, b->hashes + i, n), error))
                return false;
            rdmig_bitmap_clear_range(b->round_hashed, i, n);
            i = rdmig_bitmap_next_set(b->round_hashed, end, i + n);
        }
    }
    return true;
}

/* Mid-round hashes: every chunk of data submitted (twice what can be in
 * flight), the hashes of the pages submitted before the previous mark go
 * out.  Those writes have almost always completed (a connection far behind
 * the others can hold one longer: its pages then miss in the background
 * and are checked in the downtime), so the destination checks them while
 * the round goes on, and a long first round is not all left for the
 * downtime.  The zero runs gathered so far go first, so that a zeroed
 * page's hash does not overtake its ZERO. */
static bool mark_chunk(RdmigSource *src, ZeroRuns *z, guint bi, uint64_t next_page,
                       uint64_t bytes, GError **error)
{
    RdmigSession *s = &src->s;
    if (!(s->features & RDMIG_FEATURE_VERIFY))
        return true;
    src->chunk_bytes += bytes;
    if (src->chunk_bytes < src->chunk_limit)
        return true;
    rdmig_hasher_drain(src->hasher);
    if (!zero_close_run(src, z, error) || !zero_flush(src, z, error) ||
        !send_hashes_between(src, src->hash_from.block, src->hash_from.page,
                             src->hash_mark.block, src->hash_mark.page, error))
        return false;
    src->hash_from = src->hash_mark;
    src->hash_mark.block = bi;
    src->hash_mark.page = next_page;
    src->chunk_bytes = 0;
    return true;
}

/* Block @bi's dirty pages; counts into @sent and @zero. */
static bool send_block(RdmigSource *src, guint bi, uint64_t *sent, uint64_t *zero,
                       GError **error)
{
    RdmigSession *s = &src->s;
    RdmigRamBlock *b = s->blocks->pdata[bi];
    bool zero_runs = s->features & RDMIG_FEATURE_ZERO_PAGES;
    ZeroRuns z = { .block = bi };
    bool ok = true;
    for (uint64_t i = rdmig_bitmap_next_set(b->dirty, b->npages, 0); ok && i < b->npages;) {
        if (rdmig_session_cancelled(s)) {
            rdmig_set_cancelled(error);
            ok = false;
        } else if (zero_runs && rdmig_page_is_zero(b->host + i * b->page_size, b->page_size)) {
            ok = zero_page(src, b, &z, i, error);
            (*zero)++;
            i = rdmig_bitmap_next_set(b->dirty, b->npages, i + 1);
        } else {
            uint64_t n = gather_run(src, b, i);
            if (s->features & RDMIG_FEATURE_VERIFY) {
                rdmig_hasher_push(src->hasher, b->host + i * b->page_size, b->hashes + i, n,
                                  b->page_size);
                rdmig_bitmap_set_range(b->round_hashed, i, n);
            }
            if (b->sent_unacked)
                rdmig_bitmap_set_range(b->sent_unacked, i, n);
            ok = submit_run(src, b, i, n, error) &&
                 mark_chunk(src, &z, bi, i + n, n * b->page_size, error);
            *sent += n;
            RDMIG_STATS_UPDATE(s, s->stats.remaining_bytes -=
                                  MIN(s->stats.remaining_bytes, n * b->page_size));
            i = rdmig_bitmap_next_set(b->dirty, b->npages, i + n);
        }
    }
    ok = ok && zero_close_run(src, &z, error) && zero_flush(src, &z, error);
    if (z.msg)
        g_byte_array_unref(z.msg);
    return ok;
}

bool rdmig_source_send_dirty(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t sent = 0, zero = 0;
    src->hash_from.block = src->hash_mark.block = 0;
    src->hash_from.page = src->hash_mark.page = 0;
    src->chunk_bytes = 0;
    /* Twice what can be in flight: a request is at most gather_run's bound,
     * or one large page. */
    uint64_t per_req = RDMIG_IO_PAGES_MAX * 4096u;
    for (guint bi = 0; bi < s->blocks->len; bi++)
        per_req = MAX(per_req, ((RdmigRamBlock *)s->blocks->pdata[bi])->page_size);
    src->chunk_limit = MAX(64ull << 20, 2ull * src->nreqs * per_req);
    for (guint bi = 0; bi < s->blocks->len; bi++)
        if (!send_block(src, bi, &sent, &zero, error))
            return false;
    while (src->inflight)
        if (!rdmig_source_wait_events(src, (int)s->params.keepalive_ms, error))
            return false;
    /* This round's hashes are complete before the next round may take the
     * same pages again, and before stop-and-copy sends them. */
    if (src->hasher)
        rdmig_hasher_drain(src->hasher);
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_sent += sent;
        s->stats.pages_zero += zero;
    });
    return true;
}

/* Every write has completed; the destination applies all earlier control
 * messages (zero runs) before it acknowledges, so the next round's writes
 * cannot overtake them. */
bool rdmig_source_end_round(RdmigSource *src, uint64_t round, GError **error)
{
    RdmigSession *s = &src->s;
    if (!rdmig_channel_send(s, RDMIG_MSG_ROUND_END, rdmig_u64_encode(round), error))
        return false;
    while (src->round_ack < round)
        if (!rdmig_source_wait_events(src, (int)s->params.keepalive_ms, error))
            return false;
    if (src->round_ack != round) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination acknowledged round %" G_GUINT64_FORMAT " during round %"
                    G_GUINT64_FORMAT, src->round_ack, round);
        return false;
    }
    /* Everything sent so far is placed and applied there. */
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        if (b->sent_unacked)
            memset(b->sent_unacked, 0, rdmig_bitmap_words(b->npages) * 8);
    }
    return true;
}

bool rdmig_source_send_hashes(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        for (uint64_t first = 0; first < b->npages; first += RDMIG_HASHES_PER_MSG) {
            uint32_t n = (uint32_t)MIN((uint64_t)RDMIG_HASHES_PER_MSG, b->npages - first);
            if (!rdmig_channel_send(s, RDMIG_MSG_HASHES,
                                    rdmig_hashes_encode(bi, first, b->hashes + first, n), error))
                return false;
        }
    }
    return true;
}

bool rdmig_source_send_round_hashes(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    if (!(s->features & RDMIG_FEATURE_VERIFY))
        return true;
    bool all = !src->hashes_all_sent;
    if (all && !rdmig_source_send_hashes(src, error))
        return false;
    if (!all && s->blocks->len &&
        !send_hashes_between(src, 0, 0, s->blocks->len - 1, UINT64_MAX, error))
        return false;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        memset(b->round_hashed, 0, rdmig_bitmap_words(b->npages) * 8);
    }
    src->hashes_all_sent = true;
    return true;
}

bool rdmig_source_send_device_state(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    GByteArray *dev = g_byte_array_new();
    if (s->guest.save_device_state && !s->guest.save_device_state(s->guest_opaque, dev, error)) {
        g_byte_array_unref(dev);
        g_prefix_error(error, "saving device state: ");
        return false;
    }
    if (dev->len > RDMIG_CONTROL_MAX_PAYLOAD) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "device state of %u bytes exceeds the %u-byte message limit", dev->len,
                    RDMIG_CONTROL_MAX_PAYLOAD);
        g_byte_array_unref(dev);
        return false;
    }
    return rdmig_channel_send(s, RDMIG_MSG_DEVICE_STATE, dev, error);
}

bool rdmig_source_stop_guest(RdmigSource *src, RdmigState to, GError **error)
{
    RdmigSession *s = &src->s;
    if (!rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_ACTIVE, to, error))
        return false;
    s->t_stop = rdmig_now_us();
    if (s->guest.stop && !s->guest.stop(s->guest_opaque, error)) {
        g_prefix_error(error, "stopping the guest: ");
        return false;
    }
    src->guest_stopped = true;
    return true;
}

bool rdmig_source_take_complete_ack(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    const RdmigCompleteAck *a = &src->complete_ack;
    RDMIG_STATS_UPDATE(s, {
        s->stats.verify_time_ms = a->verify_us / 1000;
        s->stats.pages_verified = a->pages_verified;
        s->stats.verify_mismatches = a->mismatches;
        s->stats.remaining_bytes = 0;
    });
    if (a->status) {
        /* status is 1 + RdmigErrorCode: 0 stays "completed". */
        g_set_error(error, RDMIG_ERROR, (int)a->status - 1, "destination did not complete: %s",
                    a->message);
        return false;
    }
    return true;
}

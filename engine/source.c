/* SPDX-License-Identifier: MIT */
/*
 * The source's thread.
 *
 * Rounds: send every dirty page, wait until all of the round's writes have
 * completed (= placed in the destination's RAM), announce the round's end
 * and wait for its acknowledgement, sync the dirty log, then decide: switch
 * over when everything the guest would wait for fits in the downtime limit
 * (the expected downtime below: each part measured); go to postcopy when it
 * is due; give up (or force the switchover) past the limits.  Switchover stops
 * the guest, syncs once more, sends the rest, the device state and the page
 * hashes, and completes only when the destination says it verified and runs
 * the guest.  Any failure before that resumes the guest here, untouched.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <string.h>

#include "channel.h"
#include "dataplane.h"
#include "finish.h"
#include "recovery.h"
#include "source.h"
#include "state.h"

/* Below this many bytes a round is too short to measure bandwidth by. */
#define BW_MIN_SAMPLE (4u << 20)

/* Waits for the destination's background verification before a switchover
 * (see wait_for_verification), at most this many per migration. */
#define VERIFY_WAITS_MAX 8

RdmigSession *rdmig_source_new(const RdmigParams *params, GError **error)
{
    RdmigSource *src = g_new0(RdmigSource, 1);
    if (!rdmig_session_init(&src->s, RDMIG_ROLE_SOURCE, params, error)) {
        g_free(src);
        return NULL;
    }
    return &src->s;
}

void rdmig_source_free(RdmigSource *src)
{
    g_free(src->recover_address);
    rdmig_session_clear(&src->s);
    g_free(src);
}

/* Per-block state of a source: what to send, the hashes, the round's pages. */
static void setup_blocks(RdmigSource *src)
{
    RdmigSession *s = &src->s;
    bool verify = s->features & RDMIG_FEATURE_VERIFY;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        b->dirty = rdmig_bitmap_new(b->npages);
        if (s->features & RDMIG_FEATURE_PRECOPY_RESUME)
            b->sent_unacked = rdmig_bitmap_new(b->npages);
        if (!verify)
            continue;
        b->zero_hash = rdmig_zero_page_hash(b->page_size);
        b->hashes = g_new(uint64_t, b->npages);
        for (uint64_t p = 0; p < b->npages; p++)
            b->hashes[p] = b->zero_hash;
        b->round_hashed = rdmig_bitmap_new(b->npages);
        if (!src->hasher)
            src->hasher = rdmig_hasher_new();
    }
    src->nreqs = s->nconns * RDMIG_REQS_PER_CONN;
    src->reqs = g_new0(RdmigPageReq, src->nreqs);
}

/* Round 1's set: every page the process has touched (never-touched pages
 * read as zero on both sides and never travel). */
static bool first_round(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t untouched = 0, total = 0, pending = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (!rdmig_ram_resident(b->host, b->length, b->page_size, b->dirty, error))
            return false;
        uint64_t touched = rdmig_bitmap_count(b->dirty, b->npages);
        untouched += b->npages - touched;
        total += b->npages;
        pending += touched * b->page_size;
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_total = total;
        s->stats.pages_untouched = untouched;
        s->stats.remaining_bytes = pending;
    });
    return true;
}

static bool setup_memory(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    setup_blocks(src);
    /* Arm the dirty log before reading anything: a write during round 1 must
     * land in round 2's set.  The resident scan before registering: pinning
     * populates pages, which would make never-touched pages look touched. */
    if (!rdmig_dirty_log_start(src, error) || !first_round(src, error))
        return false;
    gint64 t0 = rdmig_now_us();
    /* For our own writes only: the peer may read our RAM once postcopy
     * starts, through a second registration (postcopy-source.c). */
    if (!rdmig_dataplane_register_blocks(s, 0, error))
        return false;
    RDMIG_STATS_UPDATE(s, s->stats.registration_time_ms =
                              (uint64_t)(rdmig_now_us() - t0) / 1000);
    /* Pinning can mark every page written (soft-dirty does, with rxe): take
     * that into round 1, which sends those pages anyway, rather than into
     * round 2.  Pages only populated by the pin are zero and go as zero runs. */
    return rdmig_dirty_log_sync_blocks(src, error);
}

static bool stop_and_copy(RdmigSource *src, uint64_t round, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t pending;
    gint64 t[6];
    if (!rdmig_source_stop_guest(src, RDMIG_STATE_DEVICE, error))
        return false;
    t[0] = rdmig_now_us();
    if (!rdmig_dirty_log_sync(src, &pending, error))
        return false;
    t[1] = rdmig_now_us();
    RDMIG_STATS_UPDATE(s, {
        s->stats.rounds = round;
        s->stats.remaining_bytes = pending;
    });
    if (!rdmig_source_send_dirty(src, error))
        return false;
    t[2] = rdmig_now_us();
    if (!rdmig_source_end_round(src, round, error))
        return false;
    t[3] = rdmig_now_us();
    src->data_done = true;
    RDMIG_STATS_UPDATE(s, s->stats.data_cpu_us = rdmig_thread_cpu_us() - src->cpu_at_active_us);
    /* Only the last round's hashes: the destination checked the others as
     * their rounds ended (verify.c). */
    if (!rdmig_source_send_device_state(src, error) || !rdmig_source_send_round_hashes(src, error))
        return false;
    t[4] = rdmig_now_us();
    src->complete_sent = true;
    if (!rdmig_channel_send(s, RDMIG_MSG_COMPLETE, rdmig_u64_encode(s->stats.pages_total),
                            error) ||
        !rdmig_source_wait_flag(src, &src->complete_acked, error))
        return false;
    t[5] = rdmig_now_us();
    RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(t[5] - s->t_stop) / 1000);
    /* What the estimate is checked against (docs/protocol.md §5.1). */
    g_debug("downtime %" G_GINT64_FORMAT " us = stop %" G_GINT64_FORMAT " + sync %"
            G_GINT64_FORMAT " + %" G_GUINT64_FORMAT " bytes %" G_GINT64_FORMAT " + barrier %"
            G_GINT64_FORMAT " + device state and hashes %" G_GINT64_FORMAT
            " + complete (verify) %" G_GINT64_FORMAT, t[5] - s->t_stop, t[0] - s->t_stop,
            t[1] - t[0], pending, t[2] - t[1], t[3] - t[2], t[4] - t[3], t[5] - t[4]);
    return rdmig_source_take_complete_ack(src, error);
}

/* A round's figures, taken after its dirty sync.  The expected downtime is
 * the sum of what the switchover does with the guest stopped, each part as
 * measured in this round: the dirty sync; sending the pending bytes at the
 * round's bandwidth; the round-end barrier and the completion, each a round
 * trip plus the destination's work (the barrier as this round's took); and
 * the destination's verification of what it has not checked yet plus the
 * pending pages, at the pace its background verifier measured (ROUND_ACK). */
typedef struct {
    uint64_t round, bandwidth, pending, pending_runs, expected_ms, bytes;
    uint64_t sync_us, barrier_us, transfer_us, hashes_us, verify_us, expected_us;
    uint64_t hash_tail_us; /* this round: waiting for its hashes after the barrier */
    gint64 elapsed_ms;
} RoundEnd;

/* Writes the pending pages will take at most: their runs. */
static uint64_t pending_runs(RdmigSession *s)
{
    uint64_t n = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        n += rdmig_bitmap_count_runs(b->dirty, b->npages);
    }
    return n;
}

static void expect_downtime(RdmigSource *src, RoundEnd *r)
{
    RdmigSession *s = &src->s;
    const RdmigRoundAck *a = &src->last_ack;
    r->transfer_us = r->bandwidth ? (uint64_t)((double)r->pending * 1e6 / (double)r->bandwidth)
                                  : G_MAXUINT32 * 1000ull;
    /* Scattered pages cost a write each, whatever their bytes: a round of
     * long runs (round 1) says little of what its dirty pages will take.
     * Each run pending at least this round's time per write. */
    r->transfer_us = MAX(r->transfer_us, (uint64_t)(src->us_per_req * (double)r->pending_runs));
    r->hashes_us = 0;
    r->verify_us = 0;
    if (s->features & RDMIG_FEATURE_VERIFY) {
        /* Our hashes of the last pages: what this round waited for them
         * after its barrier, in proportion. */
        r->hashes_us = r->bytes ? (uint64_t)((double)r->hash_tail_us * (double)r->pending /
                                             (double)r->bytes)
                                : 0;
        /* The destination checks its backlog and then the last pages, at its
         * verifier's pace (ours, before it has told one). */
        double pace = src->verify_ns_per_byte;
        if (!pace && src->hasher)
            pace = rdmig_hasher_ns_per_byte(src->hasher);
        r->verify_us = (a->has_backlog ? a->verify_us : 0) +
                       (uint64_t)(pace * (double)r->pending / 1000.0);
    }
    r->expected_us = r->sync_us + r->transfer_us + 2 * r->barrier_us + r->hashes_us +
                     r->verify_us;
    r->expected_ms = r->expected_us / 1000;
}

/* The destination has more to verify than everything else the switchover
 * would take: give its background verifier that long (the guest runs on
 * here), then do another round, rather than verify with the guest stopped.
 * Returns 1 when it waited, 0 when not, -1 on error (cancelled, link). */
static int wait_for_verification(RdmigSource *src, const RoundEnd *r, GError **error)
{
    const RdmigParams *p = &src->s.params;
    uint64_t rest = r->expected_us - r->verify_us;
    if (src->verify_waits >= VERIFY_WAITS_MAX || r->round >= p->max_rounds ||
        r->verify_us <= rest ||
        r->verify_us < (uint64_t)p->downtime_limit_ms * 100 || rest > p->downtime_limit_ms * 1000ull)
        return 0;
    src->verify_waits++;
    uint64_t ms = MIN(r->verify_us / 1000 + 1, 1000u);
    g_debug("round %" G_GUINT64_FORMAT ": the destination has %" G_GUINT64_FORMAT " ms of "
            "verification left, the rest of the switchover %" G_GUINT64_FORMAT " ms: waiting %"
            G_GUINT64_FORMAT " ms", r->round, r->verify_us / 1000, rest / 1000, ms);
    gint64 until = rdmig_now_us() + (gint64)ms * 1000;
    for (gint64 now = rdmig_now_us(); now < until; now = rdmig_now_us())
        if (!rdmig_source_wait_events(src, (int)((until - now + 999) / 1000), error))
            return -1;
    return 1;
}

static void round_stats(RdmigSource *src, RoundEnd *r, gint64 t0, gint64 t1)
{
    RdmigSession *s = &src->s;
    gint64 t2 = rdmig_now_us();
    uint64_t page = ((RdmigRamBlock *)s->blocks->pdata[0])->page_size;
    expect_downtime(src, r);
    r->elapsed_ms = (t2 - s->t_active) / 1000;
    RDMIG_STATS_UPDATE(s, {
        if (r->round == 1)
            s->stats.first_round_bandwidth = r->bandwidth;
        s->stats.bandwidth = r->bandwidth;
        s->stats.expected_downtime_ms = r->expected_ms;
        s->stats.remaining_bytes = r->pending;
        s->stats.dirty_pages_rate = (uint64_t)((double)r->pending / page * 1e6 /
                                               (double)MAX(t2 - t0, 1));
        s->stats.throughput = (uint64_t)((double)src->total_data_bytes * 1e6 /
                                         (double)MAX(t2 - s->t_active, 1));
    });
    g_debug("round %" G_GUINT64_FORMAT ": %" G_GUINT64_FORMAT " bytes in %" G_GINT64_FORMAT
            " us, pending %" G_GUINT64_FORMAT ", bandwidth %" G_GUINT64_FORMAT " B/s; expected "
            "downtime %" G_GUINT64_FORMAT " us = sync %" G_GUINT64_FORMAT " + transfer %"
            G_GUINT64_FORMAT " + 2 x barrier %" G_GUINT64_FORMAT " + hashes %" G_GUINT64_FORMAT
            " + verify %" G_GUINT64_FORMAT,
            r->round, src->round_bytes, t1 - t0, r->pending, r->bandwidth, r->expected_us,
            r->sync_us, r->transfer_us, r->barrier_us, r->hashes_us, r->verify_us);
}

/* Past max_rounds or max_precopy_ms: postcopy or a forced switchover if the
 * policy says so, else a clear failure (the guest runs on). */
static bool not_converged(RdmigSource *src, const RoundEnd *r, bool out_of_rounds,
                          GError **error)
{
    RdmigSession *s = &src->s;
    const char *limit = out_of_rounds ? "round limit" : "time limit";
    if (s->params.on_no_converge == RDMIG_NO_CONVERGE_POSTCOPY &&
        (s->features & RDMIG_FEATURE_POSTCOPY)) {
        g_message("precopy did not converge (%s); switching to postcopy", limit);
        return rdmig_source_postcopy(src, r->round + 1, error);
    }
    if (s->params.on_no_converge == RDMIG_NO_CONVERGE_SWITCHOVER) {
        RDMIG_STATS_UPDATE(s, s->stats.forced_switchover = true);
        g_message("precopy did not converge (%s); switching over anyway, expected downtime %"
                  G_GUINT64_FORMAT " ms", limit, r->expected_ms);
        return stop_and_copy(src, r->round + 1, error);
    }
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONVERGE,
                "precopy did not converge after %" G_GUINT64_FORMAT " rounds and %"
                G_GINT64_FORMAT " ms: %" G_GUINT64_FORMAT " MiB still dirty, bandwidth %"
                G_GUINT64_FORMAT " MiB/s, expected downtime %" G_GUINT64_FORMAT " ms > limit %u "
                "ms (raise the downtime limit or bandwidth, or allow a forced switchover)",
                r->round, r->elapsed_ms, r->pending >> 20, r->bandwidth >> 20, r->expected_ms,
                s->params.downtime_limit_ms);
    return false;
}

static bool precopy(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    RoundEnd r = { 0 };
    /* After a resume, on from the last round the destination applied. */
    for (r.round = src->round_ack + 1;; r.round++) {
        gint64 t0 = rdmig_now_us();
        src->round_bytes = 0;
        src->round_reqs = 0;
        RDMIG_STATS_UPDATE(s, s->stats.rounds = r.round);
        if (!rdmig_source_send_dirty(src, error))
            return false;
        gint64 t_sent = rdmig_now_us();
        if (!rdmig_source_end_round(src, r.round, error))
            return false;
        gint64 t1 = rdmig_now_us();
        r.barrier_us = (uint64_t)(t1 - t_sent);
        /* The data's own pace: the barrier is counted apart. */
        if (src->round_bytes >= BW_MIN_SAMPLE || !r.bandwidth)
            r.bandwidth = (uint64_t)((double)src->round_bytes * 1e6 / (double)MAX(t_sent - t0, 1));
        if (src->round_reqs >= 64 || !src->us_per_req)
            src->us_per_req = (double)(t_sent - t0) / (double)MAX(src->round_reqs, 1);
        /* The round is placed there: its hashes, checked there while the
         * next round runs. */
        if (!rdmig_source_send_round_hashes(src, error))
            return false;
        r.hash_tail_us = (uint64_t)(rdmig_now_us() - t1);
        r.bytes = src->round_bytes;
        gint64 t_sync = rdmig_now_us();
        if (!rdmig_dirty_log_sync(src, &r.pending, error))
            return false;
        r.sync_us = (uint64_t)(rdmig_now_us() - t_sync);
        r.pending_runs = pending_runs(s);
        round_stats(src, &r, t0, t1);
        int waited = wait_for_verification(src, &r, error);
        if (waited < 0)
            return false;
        if (!waited && r.expected_us <= s->params.downtime_limit_ms * 1000ull)
            return stop_and_copy(src, r.round + 1, error);
        if (rdmig_source_postcopy_due(src, r.round, r.elapsed_ms))
            return rdmig_source_postcopy(src, r.round + 1, error);
        if (waited)
            continue; /* no failed round: the next one decides */
        bool out_of_rounds = r.round >= s->params.max_rounds;
        if (out_of_rounds ||
            (s->params.max_precopy_ms && r.elapsed_ms >= s->params.max_precopy_ms))
            return not_converged(src, &r, out_of_rounds, error);
    }
}

/* ---------------------------------------------------------------- precopy resume */

/* The link broke in precopy (PRECOPY_RESUME): the guest runs on here;
 * whatever was sent since the last acknowledged round goes again. */
static void precopy_pause(RdmigSource *src, const GError *why)
{
    rdmig_recovery_pause(&src->s, why, false);
    /* Hashes in flight may be lost with the link: all go again. */
    src->hashes_all_sent = false;
    for (uint32_t i = 0; i < src->nreqs; i++)
        src->reqs[i].busy = false;
    src->inflight = 0;
    rdmig_session_drop_link(&src->s);
    if (src->hasher)
        rdmig_hasher_drain(src->hasher);
}

/* RECEIVED_END: the last round the resumed destination applied. */
static bool take_applied(RdmigSource *src, uint64_t *applied, GError **error)
{
    RdmigFrame f;
    if (!rdmig_channel_expect(&src->s, RDMIG_MSG_RECEIVED_END, "from the resumed destination",
                              -1, &f, error) ||
        !rdmig_u64_decode(f.payload, f.hdr.length, applied, "RECEIVED_END", error))
        return false;
    if (*applied <= src->round_ack + 1 && *applied >= src->round_ack)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "the resumed destination applied round %" G_GUINT64_FORMAT ", but the last one "
                "acknowledged is %" G_GUINT64_FORMAT, *applied, src->round_ack);
    return false;
}

/* The round that broke is held there only if its end was applied (its
 * acknowledgement got lost); else its pages go again.  How many. */
static uint64_t send_again(RdmigSource *src, uint64_t applied)
{
    RdmigSession *s = &src->s;
    uint64_t again = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        for (size_t w = 0; applied <= src->round_ack && w < rdmig_bitmap_words(b->npages); w++) {
            again += (uint64_t)__builtin_popcountll(b->sent_unacked[w] & ~b->dirty[w]);
            b->dirty[w] |= b->sent_unacked[w];
        }
        memset(b->sent_unacked, 0, rdmig_bitmap_words(b->npages) * 8);
    }
    return again;
}

/* A precopy resume link is up (HELLO_ACK in): new keys for the destination's
 * RAM, the data plane, and the round it applied last. */
static bool precopy_resync(RdmigSource *src, const RdmigHelloAck *ack,
                           const RdmigTransportOps **failed, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t applied;
    if (!rdmig_source_take_regions(src, error) || !rdmig_source_open_data(src, ack, failed, error) ||
        !rdmig_dataplane_register_blocks(s, 0, error) ||
        !take_applied(src, &applied, error))
        return false;
    uint64_t again = send_again(src, applied);
    src->round_ack = applied;
    g_message("precopy resumed over %s: the destination applied round %" G_GUINT64_FORMAT
              "; %" G_GUINT64_FORMAT " pages of the broken round go again", s->tp->name, applied,
              again);
    return rdmig_recovery_resumed(s, error);
}

/* Precopy that pauses on a broken link and goes on after
 * rdmig_session_recover(), when both sides asked for it. */
static bool precopy_resumable(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    for (;;) {
        GError *err = NULL;
        if (precopy(src, &err))
            return true;
        bool may_pause = !src->guest_stopped && !src->postcopy_started &&
                         rdmig_session_state(s) == RDMIG_STATE_ACTIVE &&
                         rdmig_recovery_link_lost(s, err, RDMIG_FEATURE_PRECOPY_RESUME);
        if (!rdmig_recovery_source(src, err, may_pause, precopy_pause, precopy_resync, error))
            return false;
    }
}

/* ---------------------------------------------------------------- the thread */

static void teardown(RdmigSource *src)
{
    RdmigSession *s = &src->s;
    if (src->hasher) {
        uint64_t cpu = rdmig_hasher_free(src->hasher);
        src->hasher = NULL;
        RDMIG_STATS_UPDATE(s, {
            s->stats.cpu_time_us += cpu;
            s->stats.data_cpu_us += cpu;
        });
    }
    rdmig_session_drop_link(s);
    rdmig_dirty_log_stop(src);
    g_clear_pointer(&src->reqs, g_free);
    gint64 now = rdmig_now_us();
    RDMIG_STATS_UPDATE(s, {
        s->stats.bytes_transferred = src->total_data_bytes + s->ctl_bytes_done;
        s->stats.total_time_ms = (uint64_t)(now - s->t_start) / 1000;
        if (src->total_data_bytes && s->t_active)
            s->stats.throughput = (uint64_t)((double)src->total_data_bytes * 1e6 /
                                             (double)MAX(now - s->t_active, 1));
    });
}

/* The end of a migration that did not complete.  Who has the guest now
 * decides what happens to it here. */
static void end_failed(RdmigSource *src, GError *err)
{
    RdmigSession *s = &src->s;
    if (src->postcopy_started) {
        /* The destination has run the guest: this copy is stale now, and
         * its memory is the only home of the pages the destination lacks. */
        g_prefix_error(&err, "postcopy failed after the guest moved to the destination; the "
                             "source guest stays stopped and its memory is kept: ");
        rdmig_session_finish(s, false, err, RDMIG_FINISH_TELL_PEER | RDMIG_FINISH_NOT_CANCELLED);
    } else if (src->complete_sent && !src->complete_acked) {
        /* COMPLETE went out but no answer came back: the destination may
         * already run the guest.  Resuming here too could run it twice, so
         * the guest stays stopped and the operator decides (QEMU's
         * postmigrate). */
        g_prefix_error(&err, "outcome unknown, the source guest stays stopped (resume it only "
                             "if the destination is not running it): ");
        rdmig_session_finish(s, false, err, RDMIG_FINISH_NOT_CANCELLED);
    } else {
        rdmig_session_prefer_peer_words(s, &err);
        /* The guest runs on here, its memory untouched by the migration. */
        if (src->guest_stopped && s->guest.resume)
            s->guest.resume(s->guest_opaque);
        src->guest_stopped = false;
        rdmig_session_finish(s, false, err, RDMIG_FINISH_TELL_PEER);
    }
}

gpointer rdmig_source_thread(gpointer data)
{
    RdmigSource *src = rdmig_source(data);
    RdmigSession *s = &src->s;
    GError *err = NULL;
    RdmigHelloAck ack;
    bool ok = rdmig_source_hello(src, false, NULL, &ack, &err) &&
              rdmig_source_take_regions(src, &err) &&
              rdmig_source_open_data(src, &ack, NULL, &err) && setup_memory(src, &err);
    if (ok) {
        s->t_active = rdmig_now_us();
        src->cpu_at_active_us = rdmig_thread_cpu_us();
        RDMIG_STATS_UPDATE(s, s->stats.setup_time_ms = (uint64_t)(s->t_active - s->t_start) / 1000);
        ok = rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_SETUP, RDMIG_STATE_ACTIVE, &err) &&
             precopy_resumable(src, &err);
    }
    if (ok)
        rdmig_session_finish(s, true, NULL, 0);
    else
        end_failed(src, err);
    teardown(src);
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

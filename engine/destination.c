/* SPDX-License-Identifier: MIT */
/*
 * The destination's thread: the source's handshake, then its messages in
 * order (zero runs, round ends, device state, hashes, discards), then either
 * completion (verify every page, load the device state, run the guest,
 * COMPLETE_ACK) or postcopy (check what is held while the source's guest
 * still runs, then run the guest here and pull the rest: pager.c).  The
 * destination never runs a guest it did not verify.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <sys/eventfd.h>
#include <unistd.h>

#include "channel.h"
#include "dataplane.h"
#include "destination.h"
#include "hello-gate.h"
#include "finish.h"
#include "recovery.h"
#include "state.h"

RdmigSession *rdmig_destination_new(const RdmigParams *params, GError **error)
{
    RdmigDestination *dst = g_new0(RdmigDestination, 1);
    dst->listen_fd = dst->recover_fd_new = dst->postcopy_uffd = -1;
    dst->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (dst->stop_fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "eventfd: %s", g_strerror(errno));
        g_free(dst);
        return NULL;
    }
    if (!rdmig_session_init(&dst->s, RDMIG_ROLE_DESTINATION, params, error)) {
        close(dst->stop_fd);
        g_free(dst);
        return NULL;
    }
    g_mutex_init(&dst->verify_lock);
    return &dst->s;
}

void rdmig_destination_free(RdmigDestination *dst)
{
    rdmig_verifier_stop(dst);
    g_mutex_clear(&dst->verify_lock);
    if (dst->listen_fd >= 0)
        close(dst->listen_fd);
    g_free(dst->listen_address);
    /* After a failed postcopy, guest threads touching pages that never came
     * wait on this descriptor; closing it would let them read zeros.  The
     * caller stops the guest before freeing the session. */
    if (dst->postcopy_uffd >= 0)
        close(dst->postcopy_uffd);
    if (dst->recover_fd_new >= 0)
        close(dst->recover_fd_new);
    close(dst->stop_fd);
    if (dst->device_state)
        g_byte_array_unref(dst->device_state);
    rdmig_session_clear(&dst->s);
    g_free(dst);
}

static bool load_device_state(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!s->guest.load_device_state)
        return true;
    GByteArray *d = dst->device_state;
    if (s->guest.load_device_state(s->guest_opaque, d ? d->data : NULL, d ? d->len : 0, error))
        return true;
    g_prefix_error(error, "loading device state: ");
    return false;
}

/* COMPLETE: every write completed before the source sent it, so nothing may
 * touch guest RAM from here on but the guest.  Verified and loaded, the
 * guest runs here; the source learns the verdict either way. */
static bool complete(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    uint64_t needed = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        needed += b->needed ? rdmig_bitmap_count(b->needed, b->npages) : 0;
    }
    if (needed) {
        /* Verification skips them: the guest would run with them zero. */
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "COMPLETE while %" G_GUINT64_FORMAT " pages are still needed (discarded for "
                    "postcopy and never sent again)", needed);
        return false;
    }
    if (!rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_ACTIVE, RDMIG_STATE_DEVICE, error))
        return false;
    gint64 t0 = rdmig_now_us();
    rdmig_destination_stop_pollers(dst);
    rdmig_verifier_stop(dst);
    /* The source's access to our RAM ends before we check it and before the
     * guest runs over it: its data connections closed, the regions gone. */
    rdmig_dataplane_close_connections(s, true);
    RdmigCompleteAck ack = { 0 };
    if (!rdmig_dataplane_deregister_blocks(s, error)) {
        ack.status = 1 + RDMIG_ERROR_RESOURCE;
        g_strlcpy(ack.message, (*error)->message, sizeof(ack.message));
    } else if ((s->features & RDMIG_FEATURE_VERIFY) && !rdmig_verify_all(dst, &ack)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERIFY, "%s", ack.message);
    } else if (!load_device_state(dst, error)) {
        ack.status = 1 + ((*error)->domain == RDMIG_ERROR ? (uint32_t)(*error)->code
                                                          : RDMIG_ERROR_PEER);
        g_strlcpy(ack.message, (*error)->message, sizeof(ack.message));
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_verified = ack.pages_verified;
        s->stats.verify_mismatches = ack.mismatches;
        s->stats.verify_time_ms = ack.verify_us / 1000;
    });
    if (!ack.status && s->guest.resume)
        s->guest.resume(s->guest_opaque);
    g_autoptr(GError) serr = NULL;
    bool sent = rdmig_channel_send(s, RDMIG_MSG_COMPLETE_ACK, rdmig_complete_ack_encode(&ack),
                                   &serr);
    if (ack.status)
        return false;
    /* The guest runs here now; the source will not resume its copy without
     * our acknowledgement, so this is still a completion. */
    if (!sent)
        g_warning("completed, but the acknowledgement did not reach the source: %s",
                  serr->message);
    RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(rdmig_now_us() - t0) / 1000);
    return true;
}

/* ---------------------------------------------------------------- postcopy */

/* Before the switchover: our RAM stops being the peer's to write, and what
 * we hold is checked while the source's guest still runs. */
static bool postcopy_prepare(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!(s->features & RDMIG_FEATURE_POSTCOPY) || dst->postcopy_prepared) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s",
                    dst->postcopy_prepared ? "a second POSTCOPY_PREPARE"
                    : "POSTCOPY_PREPARE received, but postcopy was not negotiated");
        return false;
    }
    rdmig_destination_stop_pollers(dst);
    /* Before the pager registers guest RAM: a read of a page it must pull
     * would wait for it. */
    rdmig_verifier_stop(dst);
    /* Our RAM is no longer the source's to write (the data connections stay:
     * the pager pulls over them). */
    if (!rdmig_dataplane_deregister_blocks(s, error))
        return false;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (!b->needed)
            b->needed = rdmig_bitmap_new(b->npages);
    }
    RdmigCompleteAck ack = { 0 };
    if ((s->features & RDMIG_FEATURE_VERIFY) && !rdmig_verify_all(dst, &ack)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERIFY, "%s", ack.message);
        return false;
    }
    dst->held_verified = ack.pages_verified;
    /* Zero copy's second mappings registered now, while the source's guest
     * still runs: in the downtime this took 60 ms for 64 MiB over rxe. */
    if (!rdmig_pager_map_aliases(dst, error))
        return false;
    dst->postcopy_prepared = true;
    RDMIG_STATS_UPDATE(s, s->stats.verify_time_ms = ack.verify_us / 1000);
    return rdmig_channel_send(s, RDMIG_MSG_POSTCOPY_PREPARED,
                              rdmig_u64_encode(ack.pages_verified), error);
}

/* Postcopy: the guest runs here now (pager.c calls this once its start has
 * finished): the downtime ends, and the source is told. */
static void guest_runs(RdmigDestination *dst)
{
    RdmigSession *s = &dst->s;
    RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(rdmig_now_us() - s->t_stop) / 1000);
    /* The guest runs here now, whatever the link does: a failed send is
     * the pager's to notice (and pause on). */
    g_autoptr(GError) serr = NULL;
    if (!rdmig_channel_send(s, RDMIG_MSG_POSTCOPY_RUNNING, rdmig_u64_encode(0), &serr))
        g_warning("the guest runs here, but telling the source failed: %s", serr->message);
}

static bool postcopy_start_allowed(RdmigDestination *dst, GError **error)
{
    const char *why = !(dst->s.features & RDMIG_FEATURE_POSTCOPY)
                          ? "POSTCOPY_START received, but postcopy was not negotiated"
                      : !dst->have_src_keys ? "POSTCOPY_START before SOURCE_REGIONS: nowhere to "
                                              "pull pages from"
                      : !dst->postcopy_prepared ? "POSTCOPY_START before POSTCOPY_PREPARE"
                                                : NULL;
    if (why)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s", why);
    return !why;
}

/* POSTCOPY_START: the guest runs here and the pager pulls what it lacks;
 * the source learns the verdict either way. */
static bool postcopy(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!postcopy_start_allowed(dst, error) ||
        !rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_ACTIVE, RDMIG_STATE_POSTCOPY_ACTIVE,
                                              error))
        return false;
    s->t_stop = rdmig_now_us();
    dst->postcopy_fresh_hashes = true;
    uint64_t discarded = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        discarded += rdmig_bitmap_count(b->needed, b->npages);
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.postcopy = true;
        s->stats.pages_discarded = discarded;
    });
    RdmigCompleteAck ack = { .pages_verified = dst->held_verified };
    bool ok = rdmig_pager_run(dst, guest_runs, &ack, error);
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_verified = ack.pages_verified;
        s->stats.verify_mismatches = ack.mismatches;
    });
    ack.verify_us = s->stats.verify_time_ms * 1000;
    if (!ok && !ack.status) {
        ack.status = 1 + ((*error)->domain == RDMIG_ERROR ? (uint32_t)(*error)->code
                                                          : RDMIG_ERROR_PEER);
        g_strlcpy(ack.message, (*error)->message, sizeof(ack.message));
    }
    g_autoptr(GError) serr = NULL;
    if (!rdmig_channel_send(s, RDMIG_MSG_COMPLETE_ACK, rdmig_complete_ack_encode(&ack), &serr) &&
        ok)
        g_warning("postcopy completed, but the acknowledgement did not reach the source: %s",
                  serr->message);
    return ok;
}

/* ---------------------------------------------------------------- precopy */

static bool round_end(RdmigDestination *dst, const RdmigFrame *f, GError **error)
{
    RdmigSession *s = &dst->s;
    uint64_t round;
    if (!rdmig_u64_decode(f->payload, f->hdr.length, &round, "ROUND_END", error))
        return false;
    dst->round_applied = round;
    RDMIG_STATS_UPDATE(s, s->stats.rounds = round);
    RdmigRoundAck ack = { .round = round };
    rdmig_verifier_backlog(dst, &ack);
    return rdmig_channel_send(s, RDMIG_MSG_ROUND_ACK, rdmig_round_ack_encode(&ack), error);
}

static void device_state(RdmigDestination *dst, const RdmigFrame *f)
{
    if (dst->device_state)
        g_byte_array_unref(dst->device_state);
    dst->device_state = g_byte_array_sized_new(f->hdr.length);
    g_byte_array_append(dst->device_state, f->payload, f->hdr.length);
}

/* One message of the migration, applied; *@done when the migration ended
 * (completed or not: the return value says). */
/* Once POSTCOPY_PREPARE is taken, our RAM is no longer the source's to
 * write and what we hold is verified: only the rest of the switchover may
 * follow. */
static bool prepared_phase(RdmigDestination *dst, uint16_t type, GError **error)
{
    if (!dst->postcopy_prepared || type == RDMIG_MSG_DISCARD || type == RDMIG_MSG_DEVICE_STATE ||
        type == RDMIG_MSG_POSTCOPY_START)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s after POSTCOPY_PREPARE: only DISCARD, DEVICE_STATE and POSTCOPY_START may "
                "follow it", rdmig_msg_type_str(type));
    return false;
}

static bool apply(RdmigDestination *dst, const RdmigFrame *f, bool *done, GError **error)
{
    guint block;
    uint64_t first;
    uint32_t n;
    if (!prepared_phase(dst, f->hdr.type, error))
        return false;
    switch (f->hdr.type) {
    case RDMIG_MSG_ZERO:
        return rdmig_apply_zero(dst, f, error);
    case RDMIG_MSG_ROUND_END:
        return round_end(dst, f, error);
    case RDMIG_MSG_DEVICE_STATE:
        device_state(dst, f);
        return true;
    case RDMIG_MSG_HASHES:
        return rdmig_apply_hashes(dst, f, &block, &first, &n, error);
    case RDMIG_MSG_SOURCE_REGIONS:
        return rdmig_apply_source_keys(dst, f, error);
    case RDMIG_MSG_DISCARD:
        return rdmig_apply_discard(dst, f, error);
    case RDMIG_MSG_POSTCOPY_PREPARE:
        return postcopy_prepare(dst, error);
    case RDMIG_MSG_COMPLETE:
        *done = true;
        return complete(dst, error);
    case RDMIG_MSG_POSTCOPY_START:
        *done = true;
        return postcopy(dst, error);
    default:
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "unexpected %s message from the source during migration",
                    rdmig_msg_type_str(f->hdr.type));
        return false;
    }
}

static bool receive(RdmigDestination *dst, GError **error)
{
    for (bool done = false; !done;) {
        RdmigFrame f;
        int r = rdmig_channel_recv(&dst->s, &f, -1, error);
        if (r < 0)
            return false;
        if (r > 0 && !apply(dst, &f, &done, error))
            return false;
    }
    return true;
}

/* A precopy resume link is up: the last round applied here goes back. */
static bool precopy_resync(void *opaque, GError **error)
{
    RdmigDestination *dst = opaque;
    return rdmig_channel_send(&dst->s, RDMIG_MSG_RECEIVED_END,
                              rdmig_u64_encode(dst->round_applied), error) &&
           rdmig_recovery_resumed(&dst->s, error);
}

/* receive(), pausing on a broken precopy link when both sides asked for it. */
static bool receive_resumable(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    const RdmigRecoveryWaiter waiter = { .fd = -1, .resync = precopy_resync, .opaque = dst };
    for (;;) {
        GError *err = NULL;
        if (receive(dst, &err))
            return true;
        if (rdmig_session_state(s) != RDMIG_STATE_ACTIVE || dst->postcopy_prepared ||
            !rdmig_recovery_link_lost(s, err, RDMIG_FEATURE_PRECOPY_RESUME)) {
            g_propagate_error(error, err);
            return false;
        }
        rdmig_recovery_pause(s, err, false);
        g_error_free(err);
        rdmig_destination_drop_link(dst);
        if (!rdmig_recovery_destination(dst, &waiter, error))
            return false;
    }
}

/* ---------------------------------------------------------------- the thread */

/* A source refused before HELLO_ACK: told why, its link dropped, and the
 * session as it was before it came. */
static void refuse(RdmigDestination *dst, const GError *why)
{
    RdmigSession *s = &dst->s;
    rdmig_channel_send_error(s, why);
    g_warning("refused a source on %s: %s", dst->listen_address, why->message);
    rdmig_destination_drop_link(dst); /* the transport too */
    s->tp = NULL;
    s->features = 0;
    g_atomic_int_set(&s->error_sent, 0);
    g_atomic_int_set(&s->peer_reported, 0);
    rdmig_session_clear_failure(s);
}

/* The first source this destination can take: connections that are not
 * rdmig are dropped at the door, and sources it cannot take (another
 * layout, version, features, no shared transport) are told why and
 * refused, while it keeps listening.  Past HELLO_ACK, a failure is the
 * migration's. */
static bool welcome(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    g_autofree char *what = g_strdup_printf("control listener on %s", dst->listen_address);
    RdmigHelloGate *gate =
        rdmig_hello_gate_new(dst->listen_fd, s->creds, rdmig_destination_door_ms(s), what);
    bool ok = false;
    for (;;) {
        RdmigHello hello = { 0 };
        if (!rdmig_destination_accept(dst, gate, &hello, error))
            break;
        GError *err = NULL;
        ok = rdmig_destination_handshake(dst, &hello, false, &err);
        rdmig_hello_clear(&hello);
        if (ok)
            break;
        if (dst->hello_acked || rdmig_session_cancelled(s)) {
            rdmig_channel_send_error(s, err);
            g_propagate_error(error, err);
            break;
        }
        refuse(dst, err);
        g_error_free(err);
    }
    rdmig_hello_gate_free(gate);
    /* One source per session: later connection attempts are refused. */
    close(dst->listen_fd);
    dst->listen_fd = -1;
    return ok;
}

gpointer rdmig_destination_thread(gpointer data)
{
    RdmigDestination *dst = rdmig_destination(data);
    RdmigSession *s = &dst->s;
    GError *err = NULL;
    bool ok = welcome(dst, &err);
    if (ok) {
        s->t_active = rdmig_now_us();
        RDMIG_STATS_UPDATE(s, s->stats.setup_time_ms = (uint64_t)(s->t_active - s->t_start) / 1000);
        ok = rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_SETUP, RDMIG_STATE_ACTIVE, &err);
        if (ok && (s->features & RDMIG_FEATURE_VERIFY))
            rdmig_verifier_start(dst);
        ok = ok && receive_resumable(dst, &err);
    }
    rdmig_verifier_stop(dst);
    if (!ok)
        rdmig_session_prefer_peer_words(s, &err);
    rdmig_session_finish(s, ok, err, RDMIG_FINISH_TELL_PEER);
    rdmig_destination_drop_link(dst);
    RDMIG_STATS_UPDATE(s, {
        s->stats.bytes_transferred = s->ctl_bytes_done;
        s->stats.total_time_ms = (uint64_t)(rdmig_now_us() - s->t_start) / 1000;
    });
    if (dst->listen_fd >= 0)
        close(dst->listen_fd);
    dst->listen_fd = -1;
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

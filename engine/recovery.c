/* SPDX-License-Identifier: MIT */
/*
 * Recovery for both roles (recovery.h).  A link error in postcopy (with
 * RECOVERY) or in precopy (with PRECOPY_RESUME) pauses the migration; an
 * ERROR from the peer, a verification mismatch or a cancel still ends it.
 * Paused, each side keeps its half: the source its stopped guest (postcopy)
 * or its running one (precopy), the destination what it received.  A new
 * link must be the same session with the next epoch.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include "recovery.h"

#include "hello-gate.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "dataplane.h"
#include "link-secrets.h"
#include "state.h"
#include "transport/address.h"

bool rdmig_recovery_link_lost(RdmigSession *s, const GError *err, uint64_t feature)
{
    if (!(s->features & feature) || g_atomic_int_get(&s->peer_reported) ||
        err->domain != RDMIG_ERROR)
        return false;
    /* The network's fault, not the migration's: a connection that broke, a
     * peer gone silent (stalled, or the link down), one not made. */
    return err->code == RDMIG_ERROR_LINK || err->code == RDMIG_ERROR_PEER ||
           err->code == RDMIG_ERROR_CONNECT;
}

void rdmig_recovery_pause(RdmigSession *s, const GError *why, bool attempt)
{
    RdmigState st = rdmig_session_state(s);
    bool precopy = st == RDMIG_STATE_ACTIVE || st == RDMIG_STATE_PRECOPY_PAUSED;
    RdmigState to = precopy ? RDMIG_STATE_PRECOPY_PAUSED : RDMIG_STATE_POSTCOPY_PAUSED;
    g_warning("%s %s: %s", precopy ? "precopy" : "postcopy",
              attempt ? "recovery attempt failed" : "paused", why->message);
    if (st != to)
        rdmig_session_set_state(s, st, to);
    RDMIG_STATS_UPDATE(s, {
        if (attempt) {
            s->stats.recover_failures++;
        } else {
            s->stats.pauses++;
            s->t_pause = rdmig_now_us();
        }
        g_strlcpy(s->stats.pause_reason, why->message, sizeof(s->stats.pause_reason));
    });
    /* A new link starts with a clean slate for these. */
    g_atomic_int_set(&s->error_sent, 0);
    g_atomic_int_set(&s->peer_reported, 0);
    rdmig_session_clear_failure(s);
}

bool rdmig_recovery_resumed(RdmigSession *s, GError **error)
{
    bool precopy = rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED;
    if (!(precopy ? rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_PRECOPY_PAUSED,
                                                         RDMIG_STATE_ACTIVE, error)
                  : rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_POSTCOPY_RECOVER,
                                                         RDMIG_STATE_POSTCOPY_ACTIVE, error)))
        return false;
    gint64 now = rdmig_now_us();
    RDMIG_STATS_UPDATE(s, {
        s->stats.paused_ms += (uint64_t)(now - s->t_pause) / 1000;
        s->stats.last_recovery_ms = (uint64_t)(now - s->t_recover) / 1000;
    });
    g_message("%s resumed after %" G_GINT64_FORMAT " ms paused", precopy ? "precopy" : "postcopy",
              (now - s->t_pause) / 1000);
    return true;
}

/* The operator gave up on a paused migration. */
static void given_up(RdmigSession *s, GError **error)
{
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "%s",
                rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED
                    ? "migration cancelled while precopy was paused"
                    : "postcopy given up while paused");
}

/* Drains the wake eventfd; true when it meant a cancel. */
static bool woken_to_cancel(RdmigSession *s)
{
    uint64_t v;
    if (read(s->wake_fd, &v, sizeof(v)) < 0) {
        /* Drained already. */
    }
    return rdmig_session_cancelled(s);
}

/* ---------------------------------------------------------------- source */

/* One attempt toward @address: the control channel, HELLO, EPOCH +
 * RESUME, HELLO_ACK; then @resync.  Postcopy goes through recover-setup
 * (connecting) and recover (resyncing). */
static bool source_attempt(RdmigSource *src, const char *address, const RdmigTransportOps *skip,
                           RdmigSourceResync resync, const RdmigTransportOps **failed,
                           GError **error)
{
    RdmigSession *s = &src->s;
    bool postcopy = rdmig_session_state(s) != RDMIG_STATE_PRECOPY_PAUSED;
    if (postcopy && !rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_POSTCOPY_PAUSED,
                                                          RDMIG_STATE_POSTCOPY_RECOVER_SETUP,
                                                          error))
        return false;
    if (!rdmig_channel_connect(s, address, error))
        return false;
    RdmigHelloAck ack;
    if (!rdmig_source_hello(src, true, skip, &ack, error))
        return false;
    if (postcopy && !rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_POSTCOPY_RECOVER_SETUP,
                                                          RDMIG_STATE_POSTCOPY_RECOVER, error))
        return false;
    return resync(src, &ack, failed, error);
}

/* Tries @address, and once more without a transport that could not connect
 * (RDMA gone: go on over TCP).  Every failed attempt drops its link and
 * counts, and the session stays paused. */
static bool source_try(RdmigSource *src, const char *address, RdmigSourceResync resync)
{
    RdmigSession *s = &src->s;
    const RdmigTransportOps *failed = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        GError *err = NULL;
        const RdmigTransportOps *skip = failed;
        failed = NULL;
        if (source_attempt(src, address, skip, resync, &failed, &err))
            return true;
        rdmig_session_drop_link(s);
        if (failed && attempt == 0)
            g_prefix_error(&err, "data transport %s did not come back (trying without it): ",
                           failed->name);
        rdmig_recovery_pause(s, err, true);
        g_error_free(err);
        if (!failed || rdmig_session_cancelled(s))
            break;
    }
    return false;
}

/* Paused: waits for rdmig_session_recover() and tries each address it
 * gives.  Fails only when asked to give up. */
static bool source_wait(RdmigSource *src, RdmigSourceResync resync, GError **error)
{
    RdmigSession *s = &src->s;
    for (;;) {
        struct pollfd p = { .fd = s->wake_fd, .events = POLLIN };
        if (poll(&p, 1, 1000) < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return false;
        }
        if ((p.revents && woken_to_cancel(s)) || rdmig_session_cancelled(s)) {
            given_up(s, error);
            return false;
        }
        g_mutex_lock(&s->lock);
        g_autofree char *address = g_steal_pointer(&src->recover_address);
        g_mutex_unlock(&s->lock);
        if (address && source_try(src, address, resync))
            return true;
    }
}

bool rdmig_recovery_source(RdmigSource *src, GError *err, bool may_pause, RdmigSourcePause pause,
                           RdmigSourceResync resync, GError **error)
{
    if (!may_pause) {
        g_propagate_error(error, err);
        return false;
    }
    pause(src, err);
    g_error_free(err);
    return source_wait(src, resync, error);
}

/* ---------------------------------------------------------------- destination */

/* The recovery listener to poll: a new one handed over by
 * rdmig_session_recover() replaces (and closes) @current. */
static int take_listener(RdmigDestination *dst, int current)
{
    RdmigSession *s = &dst->s;
    g_mutex_lock(&s->lock);
    if (dst->recover_fd_new >= 0) {
        if (current >= 0)
            close(current);
        current = dst->recover_fd_new;
        dst->recover_fd_new = -1;
    }
    g_mutex_unlock(&s->lock);
    return current;
}

/* HELLO of the paused migration's own source, asking to recover it. */
static bool own_source(RdmigDestination *dst, const RdmigHello *hello, GError **error)
{
    RdmigSession *s = &dst->s;
    if (!rdmig_link_is_own_source(s, hello->session_id)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH,
                    "recovery refused: the connecting source belongs to another session, not "
                    "to the paused migration");
        return false;
    }
    uint64_t want = rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED
                        ? RDMIG_FEATURE_PRECOPY_RESUME : RDMIG_FEATURE_RECOVERY;
    if (!(hello->features_required & want)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the paused migration's source came back without asking to %s",
                    want == RDMIG_FEATURE_RECOVERY ? "recover postcopy" : "resume precopy");
        return false;
    }
    return true;
}

/* EPOCH, then RESUME naming the next epoch.  The destination keeps the
 * count and tells it, so that the source need not guess which of its
 * attempts got here (a HELLO_ACK lost with the link would otherwise part
 * the two counts for good); the epoch advances by exactly one per link
 * accepted, and no RESUME can use the count up. */
static bool next_epoch(RdmigSession *s, uint64_t *epoch, GError **error)
{
    RdmigFrame f;
    if (!rdmig_channel_send(s, RDMIG_MSG_EPOCH, rdmig_u64_encode(s->epoch), error) ||
        !rdmig_channel_expect(s, RDMIG_MSG_RESUME, "after EPOCH", (int)s->params.peer_timeout_ms,
                              &f, error) ||
        !rdmig_u64_decode(f.payload, f.hdr.length, epoch, "RESUME", error))
        return false;
    if (s->epoch < UINT64_MAX && *epoch == s->epoch + 1)
        return true;
    if (*epoch > s->epoch) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "recovery refused: epoch %" G_GUINT64_FORMAT " is not the next after the "
                    "last one accepted (%" G_GUINT64_FORMAT ")", *epoch, s->epoch);
        return false;
    }
    /* A replay, or a source that lost count: either could drive the pages
     * of a link given up on. */
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH,
                "recovery refused: epoch %" G_GUINT64_FORMAT " is not newer than the last "
                "one accepted (%" G_GUINT64_FORMAT ")", *epoch, s->epoch);
    return false;
}

/* The source behind @hello (its HELLO read at the door) back with a newer
 * epoch, taken again; or refused (the peer is told why). */
static bool take_source_back(RdmigDestination *dst, RdmigHello *hello, GError **error)
{
    RdmigSession *s = &dst->s;
    uint64_t epoch;
    bool ok = own_source(dst, hello, error) && next_epoch(s, &epoch, error) &&
              rdmig_destination_handshake(dst, hello, true, error);
    if (ok)
        s->epoch = epoch;
    if (!ok)
        rdmig_channel_send_error(s, *error);
    return ok;
}

/* A HELLO came to the door: the source back, resynced; or the attempt
 * fails, its link is dropped, and the session stays paused. */
static bool try_link(RdmigDestination *dst, RdmigHello *hello, const RdmigRecoveryWaiter *w)
{
    RdmigSession *s = &dst->s;
    GError *err = NULL;
    /* The handshake's waits serve @w's fd as the door's wait does: a source
     * that is slow or stalls after its HELLO must not hold up the faults
     * that need nothing from it. */
    if (w->fd >= 0 && w->serve)
        s->side.fd = w->fd, s->side.serve = w->serve, s->side.opaque = w->opaque;
    bool ok = take_source_back(dst, hello, &err) && (!w->resync || w->resync(w->opaque, &err));
    s->side.fd = -1;
    if (ok)
        return true;
    if (!err)
        rdmig_set_cancelled(&err);
    if (w->undo)
        w->undo(w->opaque);
    rdmig_destination_drop_link(dst);
    rdmig_recovery_pause(s, err, true);
    g_error_free(err);
    return false;
}

/* The recovery listener's door: a new one for a new listener (the old
 * door's connections go with it). */
static RdmigHelloGate *door_for(RdmigDestination *dst, RdmigHelloGate *gate, int *lfd)
{
    int fd = take_listener(dst, *lfd);
    if (fd == *lfd && gate)
        return gate;
    rdmig_hello_gate_free(gate);
    *lfd = fd;
    if (fd < 0)
        return NULL;
    g_autofree char *what = g_strdup_printf("recovery listener on %s", dst->listen_address);
    return rdmig_hello_gate_new(fd, dst->s.creds, rdmig_destination_door_ms(&dst->s), what);
}

bool rdmig_recovery_destination(RdmigDestination *dst, const RdmigRecoveryWaiter *w,
                                GError **error)
{
    RdmigSession *s = &dst->s;
    int lfd = -1;
    RdmigHelloGate *gate = NULL;
    bool ok = false;
    for (;;) {
        gate = door_for(dst, gate, &lfd);
        bool serve = false;
        RdmigHello hello = { 0 };
        GError *err = NULL;
        int r;
        if (gate) {
            r = rdmig_destination_wait_hello(dst, gate, w->fd, &serve, 1000, &hello, &err);
        } else {
            /* No listener yet: the operator's recover() will hand one over. */
            struct pollfd p[2] = { { .fd = s->wake_fd, .events = POLLIN },
                                   { .fd = w->fd, .events = POLLIN } };
            r = poll(p, 2, 1000) < 0 && errno != EINTR ? -1 : 0;
            if (r < 0)
                g_set_error(&err, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s",
                            g_strerror(errno));
            serve = w->fd >= 0 && p[1].revents;
            if (p[0].revents && woken_to_cancel(s)) {
                rdmig_set_cancelled(&err);
                r = -1;
            }
        }
        if (r < 0) {
            if (g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED)) {
                g_clear_error(&err);
                given_up(s, error);
            } else {
                g_propagate_error(error, err);
            }
            break;
        }
        if (serve && !w->serve(w->opaque, error))
            break;
        if (r > 0) {
            ok = try_link(dst, &hello, w);
            rdmig_hello_clear(&hello);
            if (ok)
                break;
        }
    }
    rdmig_hello_gate_free(gate);
    if (lfd >= 0)
        close(lfd);
    return ok;
}

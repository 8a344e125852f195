/* SPDX-License-Identifier: MIT */
/* The end of a role's thread (finish.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "finish.h"

#include "channel.h"
#include "state.h"

void rdmig_session_prefer_peer_words(RdmigSession *s, GError **err)
{
    if (!s->ctl || !g_error_matches(*err, RDMIG_ERROR, RDMIG_ERROR_LINK))
        return;
    gint64 until = rdmig_now_us() + 300000;
    GError *why = NULL;
    RdmigFrame f;
    while (!why && rdmig_now_us() < until)
        rdmig_channel_recv(s, &f, 100, &why);
    /* The peer's ERROR, or its side of the channel going too, which names it. */
    if (why && (g_atomic_int_get(&s->peer_reported) ||
                why->code == RDMIG_ERROR_LINK || why->code == RDMIG_ERROR_PEER)) {
        g_error_free(*err);
        *err = why;
    } else {
        g_clear_error(&why);
    }
}

void rdmig_session_finish(RdmigSession *s, bool ok, GError *err, RdmigFinishFlags flags)
{
    RdmigState st = rdmig_session_state(s);
    if (ok) {
        rdmig_session_set_state(s, st, RDMIG_STATE_COMPLETED);
        return;
    }
    if (flags & RDMIG_FINISH_TELL_PEER)
        rdmig_channel_send_error(s, err); /* not if the peer told us: see channel.c */
    bool cancelled = !(flags & RDMIG_FINISH_NOT_CANCELLED) &&
                     g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED);
    /* The reason is on record before the state says failed: whoever sees
     * the state (QEMU's query-migrate, a monitor) finds the reason with it. */
    rdmig_session_take_error(s, err);
    if (cancelled && rdmig_session_set_state(s, st, RDMIG_STATE_CANCELLING))
        rdmig_session_set_state(s, RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED);
    else
        rdmig_session_set_state(s, st, RDMIG_STATE_FAILED);
}

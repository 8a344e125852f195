/* SPDX-License-Identifier: MIT */
/* The migration state machine: QEMU's state names, the table of allowed
 * transitions, and the one function that changes a session's state. */
#define G_LOG_DOMAIN "rdmig-engine"

#include "state.h"

#include "session.h"

static const char *const state_names[RDMIG_STATE__COUNT] = {
    [RDMIG_STATE_NONE] = "none",
    [RDMIG_STATE_SETUP] = "setup",
    [RDMIG_STATE_CANCELLING] = "cancelling",
    [RDMIG_STATE_CANCELLED] = "cancelled",
    [RDMIG_STATE_ACTIVE] = "active",
    [RDMIG_STATE_DEVICE] = "device",
    [RDMIG_STATE_COMPLETED] = "completed",
    [RDMIG_STATE_FAILED] = "failed",
    [RDMIG_STATE_POSTCOPY_ACTIVE] = "postcopy-active",
    [RDMIG_STATE_POSTCOPY_PAUSED] = "postcopy-paused",
    [RDMIG_STATE_POSTCOPY_RECOVER_SETUP] = "postcopy-recover-setup",
    [RDMIG_STATE_POSTCOPY_RECOVER] = "postcopy-recover",
    [RDMIG_STATE_PRECOPY_PAUSED] = "precopy-paused",
};

const char *rdmig_state_str(RdmigState state)
{
    return (unsigned)state < RDMIG_STATE__COUNT ? state_names[state] : "invalid";
}

#define T(from, to) [RDMIG_STATE_##from][RDMIG_STATE_##to] = true

/* Both roles share the table: the destination simply never takes the
 * source-only edges (it has no guest to stop, so no DEVICE on its side
 * before the source's COMPLETE arrives). */
static const bool allowed[RDMIG_STATE__COUNT][RDMIG_STATE__COUNT] = {
    T(NONE, SETUP),
    T(SETUP, ACTIVE),      T(SETUP, FAILED),      T(SETUP, CANCELLING),
    T(ACTIVE, DEVICE),     T(ACTIVE, FAILED),     T(ACTIVE, CANCELLING),
    T(ACTIVE, POSTCOPY_ACTIVE),
    /* No cancel once the destination runs the guest: there is no going back. */
    T(POSTCOPY_ACTIVE, COMPLETED), T(POSTCOPY_ACTIVE, FAILED),
    /* The link broke: both halves of the guest's memory are kept until a
     * new link resumes the pulling (source: recover-setup while it connects;
     * both: recover while they resync), or the operator gives up. */
    T(POSTCOPY_ACTIVE, POSTCOPY_PAUSED),
    T(POSTCOPY_PAUSED, POSTCOPY_RECOVER_SETUP), T(POSTCOPY_PAUSED, POSTCOPY_RECOVER),
    T(POSTCOPY_PAUSED, FAILED),
    T(POSTCOPY_RECOVER_SETUP, POSTCOPY_RECOVER), T(POSTCOPY_RECOVER_SETUP, POSTCOPY_PAUSED),
    T(POSTCOPY_RECOVER_SETUP, FAILED),
    T(POSTCOPY_RECOVER, POSTCOPY_ACTIVE), T(POSTCOPY_RECOVER, POSTCOPY_PAUSED),
    T(POSTCOPY_RECOVER, FAILED),
    /* Precopy resume (rdmig's own): the source guest runs throughout. */
    T(ACTIVE, PRECOPY_PAUSED), T(PRECOPY_PAUSED, ACTIVE), T(PRECOPY_PAUSED, FAILED),
    T(PRECOPY_PAUSED, CANCELLING),
    T(DEVICE, COMPLETED),  T(DEVICE, FAILED),     T(DEVICE, CANCELLING),
    T(CANCELLING, CANCELLED), T(CANCELLING, FAILED),
};

bool rdmig_state_transition_allowed(RdmigState from, RdmigState to)
{
    if ((unsigned)from >= RDMIG_STATE__COUNT || (unsigned)to >= RDMIG_STATE__COUNT)
        return false;
    return allowed[from][to];
}

bool rdmig_state_is_final(RdmigState s)
{
    return s == RDMIG_STATE_COMPLETED || s == RDMIG_STATE_FAILED || s == RDMIG_STATE_CANCELLED;
}

RdmigState rdmig_session_state(RdmigSession *s)
{
    g_mutex_lock(&s->lock);
    RdmigState st = s->state;
    g_mutex_unlock(&s->lock);
    return st;
}

/* Compare-and-swap under the session's lock, checked against the table, then
 * the caller's state function (outside the lock: it may call back in). */
bool rdmig_session_set_state(RdmigSession *s, RdmigState from, RdmigState to)
{
    g_mutex_lock(&s->lock);
    if (s->state != from || !rdmig_state_transition_allowed(from, to)) {
        RdmigState cur = s->state;
        g_mutex_unlock(&s->lock);
        g_debug("state change %s -> %s refused (state is %s)", rdmig_state_str(from),
                rdmig_state_str(to), rdmig_state_str(cur));
        return false;
    }
    s->state = to;
    s->stats.state = to;
    g_mutex_unlock(&s->lock);
    g_debug("%s: %s -> %s", s->role == RDMIG_ROLE_SOURCE ? "source" : "destination",
            rdmig_state_str(from), rdmig_state_str(to));
    if (s->state_func)
        s->state_func(s->state_opaque, from, to);
    return true;
}

bool rdmig_session_set_state_or_cancelled(RdmigSession *s, RdmigState from, RdmigState to,
                                          GError **error)
{
    if (rdmig_session_set_state(s, from, to))
        return true;
    rdmig_set_cancelled(error);
    return false;
}

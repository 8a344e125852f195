/* SPDX-License-Identifier: MIT */
/*
 * The public session API (include/rdmig/rdmig.h): parameters, creating and
 * freeing a session of either role, starting it on its thread, waiting,
 * cancelling, recovery and postcopy requests, and statistics.  The RAM
 * blocks are declared in blocks.c; everything after start() happens on the
 * role's thread (source.c, destination.c).
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "destination.h"
#include "source.h"
#include "state.h"
#include "transport/address.h"

void rdmig_params_init(RdmigParams *p)
{
    memset(p, 0, sizeof(*p));
    p->downtime_limit_ms = 300;
    p->max_rounds = 30;
    p->on_no_converge = RDMIG_NO_CONVERGE_FAIL;
    p->verify = true;
    p->data_connections = 1;
    g_strlcpy(p->transport, "auto", sizeof(p->transport));
    p->dirty_method = RDMIG_DIRTY_AUTO;
    p->keepalive_ms = 1000;
    p->peer_timeout_ms = 10000;
    p->connect_timeout_ms = 10000;
    /* On soft-RoCE at 0.5% loss a 64 MiB postcopy pull took 12 s with this
     * and did not end in 150 s with rdma_cm's own (docs/BENCHMARKS.md). */
    p->rdma_ack_timeout = 14;
    p->postcopy_zero_copy = true;
}

static bool fail(GError **error, const char *msg)
{
    g_set_error_literal(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, msg);
    return false;
}

static bool transport_known(const RdmigParams *p, GError **error)
{
    if (!strcmp(p->transport, "auto") || rdmig_transport_lookup(p->transport))
        return true;
    g_autoptr(GString) names = g_string_new(NULL);
    for (const RdmigTransportOps *const *t = rdmig_transport_list(); *t; t++)
        g_string_append_printf(names, ", %s", (*t)->name);
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                "unknown transport '%s' (this build has: auto%s)", p->transport, names->str);
    return false;
}

static bool params_check(const RdmigParams *p, GError **error)
{
    if (p->data_connections < 1 || p->data_connections > RDMIG_MAX_DATA_CONNS) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "data_connections must be 1..%d, not %u", RDMIG_MAX_DATA_CONNS,
                    p->data_connections);
        return false;
    }
    if (!p->downtime_limit_ms || !p->max_rounds)
        return fail(error, "downtime_limit_ms and max_rounds must be positive");
    if (!p->keepalive_ms || p->peer_timeout_ms < 2 * p->keepalive_ms) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "peer_timeout_ms (%u) must be at least twice keepalive_ms (%u)",
                    p->peer_timeout_ms, p->keepalive_ms);
        return false;
    }
    if (p->rdma_ack_timeout > 31) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "rdma_ack_timeout is an exponent (4.096 us x 2^N), 0..31, not %u",
                    p->rdma_ack_timeout);
        return false;
    }
    if (!p->postcopy && (p->on_no_converge == RDMIG_NO_CONVERGE_POSTCOPY ||
                         p->postcopy_after_rounds || p->postcopy_after_ms))
        return fail(error, "postcopy triggers (on_no_converge postcopy, postcopy_after_*) need "
                           "params.postcopy");
    return transport_known(p, error);
}

RdmigSession *rdmig_session_new(RdmigRole role, const RdmigParams *params, GError **error)
{
    RdmigParams p;
    if (params)
        p = *params;
    else
        rdmig_params_init(&p);
    if (!params_check(&p, error))
        return NULL;
    return role == RDMIG_ROLE_SOURCE ? rdmig_source_new(&p, error)
                                     : rdmig_destination_new(&p, error);
}

/* Unconditional: rdmig_session_free() must be able to stop any session. */
static void cancel_now(RdmigSession *s)
{
    g_atomic_int_set(&s->cancel, 1);
    rdmig_session_wake(s);
}

void rdmig_session_free(RdmigSession *s)
{
    if (!s)
        return;
    if (s->thread && !s->joined) {
        cancel_now(s);
        rdmig_session_wait(s, NULL);
    }
    if (s->role == RDMIG_ROLE_SOURCE)
        rdmig_source_free(rdmig_source(s));
    else
        rdmig_destination_free(rdmig_destination(s));
}

void rdmig_session_set_guest_ops(RdmigSession *s, const RdmigGuestOps *ops, void *opaque)
{
    s->guest = *ops;
    s->guest_opaque = opaque;
}

void rdmig_session_set_dirty_ops(RdmigSession *s, const RdmigDirtyOps *ops, void *opaque)
{
    if (s->role != RDMIG_ROLE_SOURCE) {
        g_warning("dirty-log hooks are a source's: ignored on a destination");
        return;
    }
    RdmigSource *src = rdmig_source(s);
    src->dirty_ops = *ops;
    src->dirty_opaque = opaque;
    src->have_dirty_ops = true;
}

void rdmig_session_set_state_func(RdmigSession *s, RdmigStateFunc func, void *opaque)
{
    s->state_func = func;
    s->state_opaque = opaque;
}

bool rdmig_session_start_postcopy(RdmigSession *s, GError **error)
{
    if (s->role != RDMIG_ROLE_SOURCE || !s->params.postcopy)
        return fail(error, "postcopy starts on a source whose params advised it "
                           "(params.postcopy)");
    RdmigState st = rdmig_session_state(s);
    if (st != RDMIG_STATE_SETUP && st != RDMIG_STATE_ACTIVE) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "postcopy cannot start in state %s", rdmig_state_str(st));
        return false;
    }
    g_atomic_int_set(&rdmig_source(s)->postcopy_requested, 1);
    return true;
}

/* The destination's recovery listener, or the source's recovery address,
 * handed to the session's thread.  Under s->lock. */
static bool hand_over_recovery(RdmigSession *s, const char *address, GError **error)
{
    if (s->role == RDMIG_ROLE_SOURCE) {
        RdmigSource *src = rdmig_source(s);
        g_free(src->recover_address);
        src->recover_address = g_strdup(address);
        return true;
    }
    RdmigDestination *dst = rdmig_destination(s);
    char *bound = NULL;
    int fd = rdmig_socket_listen(address, &bound, error);
    if (fd < 0) {
        g_prefix_error(error, "recovery listener: ");
        return false;
    }
    if (dst->recover_fd_new >= 0)
        close(dst->recover_fd_new);
    dst->recover_fd_new = fd;
    g_free(dst->listen_address);
    dst->listen_address = bound;
    return true;
}

/* Off this host only with credentials, or with params.insecure: without
 * them whoever reaches the address gets the guest's memory. */
static bool address_allowed(RdmigSession *s, const char *address, GError **error)
{
    if (s->creds || s->params.insecure || rdmig_address_is_loopback(address))
        return true;
    bool dst = s->role == RDMIG_ROLE_DESTINATION;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                "refusing to %s %s without credentials: whoever reaches it could %s this "
                "guest's memory; give --tls-creds DIR or --psk-file FILE "
                "(rdmig_session_set_credentials()), use a loopback address, or --insecure "
                "(RdmigParams.insecure) where every host that can reach it is trusted "
                "(docs/security.md)", dst ? "listen on" : "connect to", address,
                dst ? "write" : "read");
    return false;
}

bool rdmig_session_set_credentials(RdmigSession *s, RdmigCredentialKind kind, const char *path,
                                   GError **error)
{
    if (s->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "credentials must be set before the session starts");
        return false;
    }
    if (!path || !*path)
        return fail(error, "credentials: no path given");
    RdmigTlsSide side = s->role == RDMIG_ROLE_DESTINATION ? RDMIG_TLS_SERVER : RDMIG_TLS_CLIENT;
    RdmigTlsCreds *c = kind == RDMIG_CREDENTIALS_X509 ? rdmig_tls_creds_x509(path, side, error)
                       : kind == RDMIG_CREDENTIALS_PSK ? rdmig_tls_creds_psk(path, side, error)
                                                       : NULL;
    if (!c) {
        if (error && !*error)
            fail(error, "credentials: unknown kind");
        return false;
    }
    rdmig_tls_creds_unref(s->creds);
    s->creds = c;
    return true;
}

bool rdmig_session_pause(RdmigSession *s, GError **error)
{
    RdmigState st = rdmig_session_state(s);
    bool postcopy = st == RDMIG_STATE_POSTCOPY_ACTIVE && (s->features & RDMIG_FEATURE_RECOVERY);
    bool precopy = st == RDMIG_STATE_ACTIVE && (s->features & RDMIG_FEATURE_PRECOPY_RESUME);
    if (!postcopy && !precopy) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "pause is for a migration in postcopy-active (with postcopy recovery "
                    "negotiated), or in precopy with precopy-resume on both sides; this one is "
                    "%s%s", rdmig_state_str(st),
                    st == RDMIG_STATE_ACTIVE ? " without precopy-resume" : "");
        return false;
    }
    g_atomic_int_set(&s->pause_asked, 1);
    rdmig_session_wake(s);
    return true;
}

bool rdmig_session_recover(RdmigSession *s, const char *address, GError **error)
{
    if (!address || !*address)
        return fail(error, "recovery needs an address");
    if (!address_allowed(s, address, error))
        return false;
    g_mutex_lock(&s->lock);
    if (s->state != RDMIG_STATE_POSTCOPY_PAUSED && s->state != RDMIG_STATE_PRECOPY_PAUSED) {
        RdmigState st = s->state;
        g_mutex_unlock(&s->lock);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "recovery is for a migration in postcopy-paused or precopy-paused; this "
                    "one is %s", rdmig_state_str(st));
        return false;
    }
    bool ok = hand_over_recovery(s, address, error);
    if (ok)
        s->t_recover = rdmig_now_us();
    g_mutex_unlock(&s->lock);
    if (ok)
        rdmig_session_wake(s);
    return ok;
}

/* The role's thread, between the caller's thread_start and thread_stop:
 * every hook and RdmigDirtyOps call of the role runs inside them. */
static gpointer role_thread(gpointer data)
{
    RdmigSession *s = data;
    bool src = s->role == RDMIG_ROLE_SOURCE;
    if (s->guest.thread_start)
        s->guest.thread_start(s->guest_opaque, src ? "rdmig-source" : "rdmig-destination");
    gpointer r = src ? rdmig_source_thread(s) : rdmig_destination_thread(s);
    if (s->guest.thread_stop)
        s->guest.thread_stop(s->guest_opaque);
    return r;
}

/* The source connects synchronously, so that start() reports it. */
static bool start_source(RdmigSession *s, const char *address, GError **error)
{
    if (rdmig_source_connect(rdmig_source(s), address, error)) {
        s->started = true;
        s->thread = g_thread_new("rdmig-source", role_thread, s);
        return true;
    }
    if (g_error_matches(*error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED) &&
        rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_CANCELLING))
        rdmig_session_set_state(s, RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED);
    else
        rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_FAILED);
    return false;
}

static bool start_destination(RdmigSession *s, const char *address, GError **error)
{
    RdmigDestination *dst = rdmig_destination(s);
    dst->listen_fd = rdmig_socket_listen(address, &dst->listen_address, error);
    if (dst->listen_fd < 0) {
        rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_FAILED);
        return false;
    }
    s->started = true;
    s->thread = g_thread_new("rdmig-destination", role_thread, s);
    return true;
}

bool rdmig_session_start(RdmigSession *s, const char *address, GError **error)
{
    if (s->started || rdmig_session_state(s) != RDMIG_STATE_NONE) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "session already started (state %s): create a new session to retry",
                    rdmig_state_str(rdmig_session_state(s)));
        return false;
    }
    if (!s->blocks->len)
        return fail(error, "no RAM blocks to migrate");
    if (address && !address_allowed(s, address, error))
        return false;
    s->t_start = rdmig_now_us();
    rdmig_session_set_state(s, RDMIG_STATE_NONE, RDMIG_STATE_SETUP);
    if (s->role == RDMIG_ROLE_SOURCE ? start_source(s, address, error)
                                     : start_destination(s, address, error))
        return true;
    RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.error, (*error)->message, sizeof(s->stats.error)));
    return false;
}

const char *rdmig_session_listen_address(RdmigSession *s)
{
    return s->role == RDMIG_ROLE_DESTINATION ? rdmig_destination(s)->listen_address : NULL;
}

bool rdmig_session_is_destination(RdmigSession *s) { return s->role == RDMIG_ROLE_DESTINATION; }

bool rdmig_session_wait(RdmigSession *s, GError **error)
{
    if (!s->thread)
        return fail(error, "session was not started");
    if (!s->joined) {
        g_thread_join(s->thread);
        s->joined = true;
    }
    RdmigState st = rdmig_session_state(s);
    if (st == RDMIG_STATE_COMPLETED)
        return true;
    g_mutex_lock(&s->lock);
    if (s->error)
        g_propagate_error(error, g_error_copy(s->error));
    else
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "migration ended in state %s",
                    rdmig_state_str(st));
    g_mutex_unlock(&s->lock);
    return false;
}

bool rdmig_session_cancel_refused(RdmigSession *s, GError **error)
{
    RdmigState st = rdmig_session_state(s);
    if (st != RDMIG_STATE_POSTCOPY_ACTIVE && st != RDMIG_STATE_POSTCOPY_RECOVER_SETUP &&
        st != RDMIG_STATE_POSTCOPY_RECOVER)
        return false;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                "cancel refused in %s: the guest runs on the destination and its memory is "
                "split between the hosts (in postcopy-paused, cancel gives up)",
                rdmig_state_str(st));
    return true;
}

void rdmig_session_cancel(RdmigSession *s)
{
    g_autoptr(GError) why = NULL;
    if (rdmig_session_cancel_refused(s, &why)) {
        g_warning("%s", why->message);
        return;
    }
    cancel_now(s);
}

void rdmig_session_get_stats(RdmigSession *s, RdmigStats *out)
{
    g_mutex_lock(&s->lock);
    *out = s->stats;
    if (s->t_start && !rdmig_state_is_final(s->state))
        out->total_time_ms = (uint64_t)(rdmig_now_us() - s->t_start) / 1000;
    g_mutex_unlock(&s->lock);
}

/* SPDX-License-Identifier: MIT */
/*
 * The session both roles share, as QEMU's MigrationState and
 * MigrationIncomingState share their common part: state, parameters, RAM
 * blocks, statistics, the control channel, the keepalive, the data plane
 * and what recovery needs on either side.  Role-only state lives in the
 * role's struct, which embeds this one first: RdmigSource (source.h) and
 * RdmigDestination (destination.h).
 *
 * Which module owns what (docs/architecture.md has the whole map):
 *   state.c      state, the transition table          session.c  errors, cancel, CPU
 *   channel.c    ctl, liveness, keepalive, ERROR        dataplane.c  tp, transport, conns
 *   recovery.c   epoch and pause times                  api.c      the public entry points
 */
#ifndef RDMIG_ENGINE_SESSION_H
#define RDMIG_ENGINE_SESSION_H

#include <glib.h>

#include "ram.h"
#include "rdmig/rdmig.h"
#include "rdmig/transport.h"
#include "transport/control.h"
#include "util/clock.h"
#include "wire.h"

#define RDMIG_IO_PAGES_MAX 64 /* pages merged into one request: 256 KiB of 4 KiB pages */
#define RDMIG_REQS_PER_CONN 64

struct RdmigSession {
    RdmigRole role;
    RdmigParams params;
    GPtrArray *blocks; /* RdmigRamBlock* */
    RdmigGuestOps guest;
    void *guest_opaque;
    RdmigStateFunc state_func;
    void *state_opaque;

    GMutex lock;       /* state, stats, error */
    RdmigState state;
    RdmigStats stats;
    GError *error;     /* the first error, owned */

    GThread *thread;   /* the role's thread */
    bool started, joined;
    int wake_fd;       /* eventfd: a cancel, a recovery request, another thread's failure */
    gint cancel;
    gint pause_asked;  /* rdmig_session_pause(): drop the link, pause, recover later */
    GMutex failure_lock;
    GError *failure;   /* the first failure another thread of the session reported */

    /* control channel (channel.c) */
    RdmigControl *ctl;
    gint64 last_rx_us;          /* atomic: last frame from the peer */
    uint64_t ctl_bytes_done;    /* bytes of links already closed */
    gint error_sent;            /* ERROR goes to the peer once per link */
    gint peer_reported;         /* the failure came from the peer's own ERROR */
    GThread *keepalive;
    gint stop_keepalive;
    GMutex keepalive_lock;
    GCond keepalive_cond;       /* wakes the keepalive thread to stop */

    /* data plane (dataplane.c) */
    const RdmigTransportOps *tp;
    RdmigTransport *transport;
    RdmigConn *conns[RDMIG_MAX_DATA_CONNS];
    uint32_t nconns;

    /* handshake */
    RdmigTlsCreds *creds;       /* NULL: the control channel is in clear */
    uint8_t session_id[RDMIG_SESSION_ID_LEN];
    uint8_t recovery_secret[32];/* from the first link's TLS session (link-secrets.c) */
    bool have_recovery_secret;
    uint64_t features;

    gint64 t_start, t_active, t_stop; /* start; round 1 (or the source's arrival); guest stopped */

    /* recovery (recovery.c), both roles */
    uint64_t epoch;             /* links accepted after the first: the destination
                                 * counts, tells a recovering source (EPOCH), and takes
                                 * only the next one (recovery.c) */
    gint64 t_pause, t_recover;  /* when the last pause / recovery request began */
    /* While a recovery handshake runs on the pager's thread, the waits in it
     * (channel.c, destination-link.c) serve this fd too: the pager's
     * userfaultfd, so that faults needing nothing from the source are not
     * held up by a slow or stalled source.  fd -1: none (recovery.c). */
    struct {
        int fd;
        bool (*serve)(void *opaque, GError **error);
        void *opaque;
    } side;
};

/** Stats update under the lock. */
#define RDMIG_STATS_UPDATE(s, stmt)                                                         \
    do {                                                                                    \
        g_mutex_lock(&(s)->lock);                                                           \
        stmt;                                                                               \
        g_mutex_unlock(&(s)->lock);                                                         \
    } while (0)

/** rdmig_session_init: the common part of a new session of @role (the role
 *  struct allocates it).  False with @error when the eventfd fails. */
bool rdmig_session_init(RdmigSession *s, RdmigRole role, const RdmigParams *params,
                        GError **error);
/** rdmig_session_clear: frees what rdmig_session_init() and the session's
 *  life made of the common part; the role struct frees the rest. */
void rdmig_session_clear(RdmigSession *s);

/** rdmig_session_take_error: records @err as the session's error (the first
 *  one wins; stats.error gets its text) and takes ownership. */
void rdmig_session_take_error(RdmigSession *s, GError *err);
/** rdmig_session_take_pause: whether rdmig_session_pause() asked to pause
 *  (asked once, taken once); if so @error is the LINK error that makes the
 *  role's thread drop its link and pause as if the network had broken it. */
bool rdmig_session_take_pause(RdmigSession *s, GError **error);
/** rdmig_session_cancelled: a cancel was asked for.  Any thread. */
bool rdmig_session_cancelled(RdmigSession *s);
/** rdmig_session_wake: wakes the role's thread out of its poll(2). */
void rdmig_session_wake(RdmigSession *s);
/** rdmig_session_report_failure: another thread of the session (the
 *  destination's data pollers) failed with @err (taken); the first report
 *  is kept and the role's thread woken, which picks it up with
 *  rdmig_session_take_failure().  Any thread. */
void rdmig_session_report_failure(RdmigSession *s, GError *err);
/** rdmig_session_take_failure: the failure reported so far (a copy), or
 *  NULL. */
GError *rdmig_session_take_failure(RdmigSession *s);
/** rdmig_session_clear_failure: forgets it (a new link starts clean). */
void rdmig_session_clear_failure(RdmigSession *s);

/** rdmig_session_account_thread_cpu: adds the calling thread's CPU time to
 *  the stats; each session thread calls it once, as it exits. */
void rdmig_session_account_thread_cpu(RdmigSession *s);

/** rdmig_set_cancelled: the one "migration cancelled" error. */
void rdmig_set_cancelled(GError **error);

#endif

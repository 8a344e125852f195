/* SPDX-License-Identifier: MIT */
/* Session internals shared by session.c, source.c and destination.c. */
#ifndef RDMIG_ENGINE_SESSION_H
#define RDMIG_ENGINE_SESSION_H

#include <glib.h>

#include "ram.h"
#include "util/clock.h"
#include "rdmig/rdmig.h"
#include "rdmig/transport.h"
#include "transport/control.h"
#include "wire.h"

#define RDMIG_IO_PAGES_MAX 64 /* pages merged into one request: 256 KiB of 4 KiB pages */
#define RDMIG_REQS_PER_CONN 64

/* One in-flight page run; lives in the session's pool. */
typedef struct {
    RdmigIoReq io;
    int conn;
    uint64_t bytes;
    bool busy;
} RdmigPageReq;

struct RdmigSession {
    RdmigRole role;
    RdmigParams params;
    GPtrArray *blocks; /* RdmigRamBlock* */

    RdmigGuestOps guest;
    void *guest_opaque;
    RdmigDirtyOps dirty_ops;
    void *dirty_opaque;
    bool have_dirty_ops;
    RdmigStateFunc state_func;
    void *state_opaque;

    GMutex lock;       /* state, stats, error */
    RdmigState state;
    RdmigStats stats;
    GError *error;     /* first error, owned */
    GThread *thread;
    GThread *keepalive;
    bool started, joined;

    int wake_fd;       /* eventfd: cancel, data-thread failure */
    int stop_fd;       /* eventfd: tells the destination's data pollers to exit */
    gint cancel;
    gint stop_threads;  /* destination data pollers */
    gint stop_keepalive;
    GMutex keepalive_lock;
    GCond keepalive_cond;  /* wakes the keepalive thread to stop */

    /* control channel */
    RdmigControl *ctl;
    int listen_fd;
    char *listen_address;
    gint64 last_rx_us; /* atomic: last frame from the peer */

    /* data plane */
    const RdmigTransportOps *tp;
    RdmigTransport *transport;
    RdmigListener *data_listener;
    RdmigConn *conns[RDMIG_MAX_DATA_CONNS];
    uint32_t nconns;
    GThread *data_threads[RDMIG_MAX_DATA_CONNS]; /* destination pollers */
    GMutex data_err_lock;
    char *data_error;  /* destination: first data-connection failure */

    uint8_t session_id[RDMIG_SESSION_ID_LEN];
    uint64_t features;

    gint64 t_start, t_active, t_stop;
    uint64_t cpu_at_active_us;   /* source main thread CPU when round 1 began */

    /* source */
    RdmigDirtyTracker *tracker;
    struct RdmigHasher *hasher; /* hashes sent pages when verifying */
    RdmigPageReq *reqs;
    uint32_t nreqs, inflight;
    uint32_t next_conn;
    uint64_t round_bytes;       /* completed in the current round */
    uint64_t total_data_bytes;  /* completed, all rounds */
    uint64_t round_ack;         /* last ROUND_ACK received */
    bool complete_acked;
    RdmigCompleteAck complete_ack;
    bool guest_stopped;
    bool data_done;             /* every write completed: data connections no longer matter */
    bool complete_sent;         /* the destination may be running the guest from here on */
    gint error_sent;            /* ERROR goes to the peer once */
    gint peer_reported;         /* the failure came from the peer's own ERROR */
    uint64_t bw_window_start_us, bw_window_bytes; /* max_bandwidth pacing */
    gint postcopy_requested;    /* rdmig_session_start_postcopy() was called */
    bool postcopy_started;      /* POSTCOPY_START sent: the guest may run only there now */
    bool postcopy_running;      /* POSTCOPY_RUNNING received */

    /* destination */
    GByteArray *device_state;
    bool have_src_keys;         /* SOURCE_REGIONS arrived */
    bool postcopy_prepared;     /* held pages dropped or checked, guest RAM unregistered */
    bool postcopy_fresh_hashes; /* after POSTCOPY_START: hashes of needed pages are final */
    uint64_t held_verified;     /* pages held (not pulled) that matched at PREPARE */
    int postcopy_uffd;          /* kept open after a failed postcopy: see postcopy.c */

    /* postcopy recovery (both roles) */
    uint64_t epoch;             /* recovery links: source counts its attempts, the
                                 * destination accepts only a higher one than the last */
    char *recover_address;      /* source: rdmig_session_recover() asked to resume here */
    int recover_fd_new;         /* destination: listener handed over by rdmig_session_recover() */
    uint64_t ctl_bytes_done;    /* control bytes of links already closed */
    gint64 t_pause, t_recover;  /* when the last pause / recover request began */
    bool recovery_hashes_sent;  /* source: the final hashes went out on the current link */
    bool final_hashes_done;     /* source: hashes of the discarded pages are final */
    uint64_t round_applied;     /* destination: last ROUND_END applied */
};

/** Changes state if @from is current and the edge is allowed; calls the
 *  state function. The only place state changes. */
bool rdmig_session_set_state(RdmigSession *s, RdmigState from, RdmigState to);
RdmigState rdmig_session_state(RdmigSession *s);
/** Records @err as the session's error (the first one wins) and takes it. */
void rdmig_session_take_error(RdmigSession *s, GError *err);
bool rdmig_session_cancelled(RdmigSession *s);
/** Stats update under the lock. */
#define RDMIG_STATS_UPDATE(s, stmt)                                                         \
    do {                                                                                    \
        g_mutex_lock(&(s)->lock);                                                           \
        stmt;                                                                               \
        g_mutex_unlock(&(s)->lock);                                                         \
    } while (0)

/** Sends one message on the control channel. */
bool rdmig_session_send(RdmigSession *s, RdmigMsgType type, GByteArray *payload, GError **error);
/** Receives one message, skipping PINGs, failing on ERROR/CANCEL from the
 *  peer and on silence longer than peer_timeout_ms; waits at most
 *  @timeout_ms (-1: until the peer timeout) for one to begin. Returns 1, 0
 *  (nothing in time) or -1. */
int rdmig_session_recv(RdmigSession *s, RdmigFrame *f, int timeout_ms, GError **error);
/** Best-effort: tells the peer why we stop. */
void rdmig_session_send_error(RdmigSession *s, const GError *err);

/** Destination: stores a HASHES message; reports the range it covered. */
bool rdmig_destination_store_hashes(RdmigSession *s, const RdmigFrame *f, guint *block,
                                    uint64_t *first, uint32_t *n, GError **error);

/** Destination: stores the source's keys (SOURCE_REGIONS). */
bool rdmig_destination_store_source_keys(RdmigSession *s, const RdmigFrame *f, GError **error);
/** Destination, paused: the recovery listener to poll: a new one handed in
 *  by rdmig_session_recover() replaces (and closes) @current. */
int rdmig_destination_recover_listener(RdmigSession *s, int current);
/** Destination, paused (postcopy or precopy): takes a source on @listen_fd and, if it is
 *  this session's coming back, renegotiates the data transport and opens
 *  its connections (postcopy: state postcopy-recover).  On failure the peer is told
 *  why; the caller drops the link. */
bool rdmig_destination_recover_link(RdmigSession *s, int listen_fd, GError **error);
/** Destination: closes the control channel, data connections and transport. */
void rdmig_destination_drop_link(RdmigSession *s);

/** Adds the calling thread's CPU time to the stats; each session thread
 *  calls it once, as it exits. */
void rdmig_session_account_thread_cpu(RdmigSession *s);

/** Registers every RAM block with the data transport, with @access; large
 *  blocks in parallel threads (one memory region per block).  On failure
 *  the error names the block, and blocks already registered stay so (the
 *  teardown deregisters them). */
bool rdmig_session_register_blocks(RdmigSession *s, uint32_t access, GError **error);

/** Postcopy recovery: whether @err (a failure of the link during postcopy)
 *  may pause the migration rather than end it. */
bool rdmig_session_link_lost(RdmigSession *s, const GError *err, uint64_t feature);
/** Enters postcopy-paused from the current state, noting @why: a new pause,
 *  or (@attempt) a recovery attempt that failed. */
void rdmig_session_pause(RdmigSession *s, const GError *why, bool attempt);
/** Leaves recovery for postcopy-active (precopy-paused: for active); notes
 *  how long it took. */
bool rdmig_session_resumed(RdmigSession *s);
/** Closes the data connections (@drain: reaping what they still complete),
 *  deregisters the RAM blocks and destroys the transport. */
void rdmig_session_close_data(RdmigSession *s, bool drain);
/** The control channel's bytes into the stats, then closes it. */
void rdmig_session_close_control(RdmigSession *s);

void rdmig_session_start_keepalive(RdmigSession *s);
void rdmig_session_stop_keepalive(RdmigSession *s);

/* The two roles' threads. */
gpointer rdmig_source_thread(gpointer data);
gpointer rdmig_destination_thread(gpointer data);
/** Source: connects the control channel (synchronously, so start() reports it). */
bool rdmig_source_connect(RdmigSession *s, const char *address, GError **error);

/** Transports this side may use for data, per params.transport. */
uint32_t rdmig_session_transports(RdmigSession *s, const RdmigTransportOps **out, uint32_t max,
                                  GError **error);
/** Layout check shared with tests: names the first block that differs. */
bool rdmig_layout_check(GPtrArray *blocks, const RdmigHello *hello, GError **error);

#endif

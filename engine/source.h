/* SPDX-License-Identifier: MIT */
/*
 * The source: the side with the running guest.  RdmigSource embeds the
 * common session first and adds what only a source has; the functions
 * below are shared between the source's modules:
 *
 *   source.c           the thread: setup, precopy rounds, the switchover rule,
 *                      stop-and-copy, precopy resume, the end
 *   source-link.c      the handshake: control connection, HELLO/HELLO_ACK,
 *                      REGIONS, data connections, the keys it lends (postcopy)
 *   source-io.c        the traffic: pages posted and reaped, control messages
 *                      during migration, round barriers, hashes, the
 *                      switchover's stop and the destination's verdict
 *   dirty-log.c        the dirty log: the caller's RdmigDirtyOps or the built-in
 *                      tracker
 *   postcopy-source.c  postcopy: discards, the two-step switchover, serving
 *                      the destination's pulls until it has every page
 */
#ifndef RDMIG_ENGINE_SOURCE_H
#define RDMIG_ENGINE_SOURCE_H

#include "hasher.h"
#include "session.h"

/* One in-flight page run; lives in the source's pool. */
typedef struct {
    RdmigIoReq io;
    int conn;
    uint64_t bytes;
    bool busy;
} RdmigPageReq;

typedef struct {
    RdmigSession s;             /* first: a session pointer is a source pointer */

    /* dirty log (dirty-log.c) */
    RdmigDirtyOps dirty_ops;
    void *dirty_opaque;
    bool have_dirty_ops;
    bool dirty_ops_started;     /* the caller's start() succeeded: stop() is owed */
    RdmigDirtyTracker *tracker;

    /* traffic (source-io.c) */
    RdmigHasher *hasher;        /* hashes sent pages when verifying */
    RdmigPageReq *reqs;
    uint32_t nreqs, inflight;
    uint32_t next_conn;
    uint64_t round_bytes;       /* completed in the current round */
    uint64_t round_reqs;        /* writes submitted in the current round */
    double us_per_req;          /* a round's data time per write, from one of >= 64 */
    uint64_t total_data_bytes;  /* completed, all rounds */
    uint64_t round_ack;         /* last ROUND_ACK received */
    RdmigRoundAck last_ack;     /* ... with the destination's verification backlog */
    double verify_ns_per_byte;  /* its verifier's pace, from the last ACK with a backlog */
    uint32_t verify_waits;      /* switchovers put off for its background verification */
    bool hashes_all_sent;       /* every page's hash went out since the link came up */
    struct { guint block; uint64_t page; } hash_from, hash_mark; /* mid-round hashes */
    uint64_t chunk_bytes;       /* submitted since the last mark */
    uint64_t chunk_limit;       /* ... when the next mark is due (set per round) */
    uint64_t bw_window_start_us, bw_window_bytes; /* max_bandwidth pacing */
    bool complete_acked;
    RdmigCompleteAck complete_ack;
    bool guest_stopped;
    bool data_done;             /* every write completed: data connections no longer matter */
    bool complete_sent;         /* the destination may be running the guest from here on */
    uint64_t cpu_at_active_us;  /* this thread's CPU when round 1 began */

    /* postcopy (postcopy-source.c) */
    gint postcopy_requested;    /* rdmig_session_start_postcopy() was called */
    bool postcopy_prepare_sent; /* POSTCOPY_PREPARE sent: PREPARED may come */
    bool postcopy_prepared;     /* POSTCOPY_PREPARED received */
    bool postcopy_started;      /* POSTCOPY_START sent: the guest may run only there now */
    bool postcopy_running;      /* POSTCOPY_RUNNING received */
    bool final_hashes_done;     /* hashes of the discarded pages are final */
    bool recovery_hashes_sent;  /* the final hashes went out on the current link */

    char *recover_address;      /* rdmig_session_recover() asked to resume there */
} RdmigSource;

static inline RdmigSource *rdmig_source(RdmigSession *s)
{
    g_assert(s->role == RDMIG_ROLE_SOURCE);
    return (RdmigSource *)s;
}

/** rdmig_source_new / rdmig_source_free: the source session's lifetime. */
RdmigSession *rdmig_source_new(const RdmigParams *params, GError **error);
void rdmig_source_free(RdmigSource *src);
/** rdmig_source_thread: the source's thread (data: the session). */
gpointer rdmig_source_thread(gpointer data);

/* source-link.c */
/** Connects the control channel to @address (synchronously, so that start()
 *  reports it) and draws the session id. */
bool rdmig_source_connect(RdmigSource *src, const char *address, GError **error);
/** HELLO (and, @recovering, EPOCH + RESUME of the next); takes HELLO_ACK into
 *  @ack and the session's features and transport.  @skip: a transport not
 *  to offer this time (it could not connect on the last attempt). */
bool rdmig_source_hello(RdmigSource *src, bool recovering, const RdmigTransportOps *skip,
                        RdmigHelloAck *ack, GError **error);
/** REGIONS: the keys of the destination's RAM, one per block. */
bool rdmig_source_take_regions(RdmigSource *src, GError **error);
/** The data transport and its connections, as HELLO_ACK said; on a failure
 *  with another transport to fall back on, @failed (if given) names it. */
bool rdmig_source_open_data(RdmigSource *src, const RdmigHelloAck *ack,
                            const RdmigTransportOps **failed, GError **error);
/** SOURCE_REGIONS: the keys the destination reads our RAM with (postcopy). */
bool rdmig_source_send_keys(RdmigSource *src, GError **error);

/* source-io.c */
/** Waits up to @timeout_ms for completions, a control message or a cancel,
 *  and handles what came. */
bool rdmig_source_wait_events(RdmigSource *src, int timeout_ms, GError **error);
/** Waits until *@flag (set by a message) is true. */
bool rdmig_source_wait_flag(RdmigSource *src, const bool *flag, GError **error);
/** Sends every page set in the blocks' dirty bitmaps, clearing them. */
bool rdmig_source_send_dirty(RdmigSource *src, GError **error);
/** ROUND_END @round, and its acknowledgement. */
bool rdmig_source_end_round(RdmigSource *src, uint64_t round, GError **error);
/** HASHES of every page, as last sent (or as final, in postcopy). */
bool rdmig_source_send_hashes(RdmigSource *src, GError **error);
/** HASHES of the pages whose hash changed since the last call (all of them
 *  the first time, and after a precopy resume): sent once a round is
 *  acknowledged, so that the destination checks them while the next round
 *  runs (verify.c), and at stop-and-copy for the last round's pages. */
bool rdmig_source_send_round_hashes(RdmigSource *src, GError **error);
/** DEVICE_STATE: what the guest's save hook appends (at most a message). */
bool rdmig_source_send_device_state(RdmigSource *src, GError **error);
/** Leaves precopy for @to and stops the guest: the downtime begins. */
bool rdmig_source_stop_guest(RdmigSource *src, RdmigState to, GError **error);
/** The destination's verdict from COMPLETE_ACK, into the stats. */
bool rdmig_source_take_complete_ack(RdmigSource *src, GError **error);

/* dirty-log.c */
/** Arms the dirty log (the caller's or the built-in tracker). */
bool rdmig_dirty_log_start(RdmigSource *src, GError **error);
/** ORs the pages written since the last sync into the blocks' dirty
 *  bitmaps; with the soft-dirty tracker the guest pauses across it. */
bool rdmig_dirty_log_sync_blocks(RdmigSource *src, GError **error);
/** The same, counted: @pending bytes now dirty. */
bool rdmig_dirty_log_sync(RdmigSource *src, uint64_t *pending, GError **error);
void rdmig_dirty_log_stop(RdmigSource *src);

/* postcopy-source.c */
/** Whether postcopy is due after @round (asked for, by rounds or by time). */
bool rdmig_source_postcopy_due(RdmigSource *src, uint64_t round, gint64 elapsed_ms);
/** Postcopy from @round on: the switchover, then serving the destination's
 *  pulls (pausing and recovering on a broken link) until it has every page. */
bool rdmig_source_postcopy(RdmigSource *src, uint64_t round, GError **error);

#endif

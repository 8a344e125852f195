/* SPDX-License-Identifier: MIT */
/*
 * The destination: the side that receives the guest's memory and then runs
 * it.  RdmigDestination embeds the common session first and adds what only
 * a destination has; the functions below are shared between its modules:
 *
 *   destination.c       the thread: the messages of a migration in order,
 *                       completion, the switch to postcopy, the end
 *   destination-link.c  the listener, the handshake (layout, features,
 *                       transport, keys of its RAM, data connections) and the
 *                       data pollers
 *   apply.c             what each message does here: zero runs, hashes,
 *                       discards, the source's keys
 *   verify.c            every page against the source's hash
 *   pager*.c            postcopy: faults caught, missing pages pulled and placed
 */
#ifndef RDMIG_ENGINE_DESTINATION_H
#define RDMIG_ENGINE_DESTINATION_H

#include "session.h"

typedef struct {
    RdmigSession s;             /* first: a session pointer is a destination pointer */

    int listen_fd;              /* control listener, until the source arrives */
    char *listen_address;       /* its bound address (after a recover(): the recovery one) */
    int recover_fd_new;         /* a recovery listener handed over by rdmig_session_recover() */

    bool hello_acked;           /* the handshake under way sent HELLO_ACK */
    RdmigListener *data_listener;
    GThread *data_threads[RDMIG_MAX_DATA_CONNS]; /* pollers: TCP places pages there */
    int stop_fd;                /* eventfd: tells the pollers to exit */
    gint stop_threads;

    GByteArray *device_state;
    uint64_t round_applied;     /* last ROUND_END applied */

    /* postcopy */
    bool have_src_keys;         /* SOURCE_REGIONS arrived */
    bool postcopy_prepared;     /* held pages dropped or checked, guest RAM unregistered */
    bool postcopy_fresh_hashes; /* after POSTCOPY_START: hashes of needed pages are final */
    uint64_t held_verified;     /* pages held (not pulled) that matched at PREPARE */
    int postcopy_uffd;          /* kept open after a failed postcopy: see pager.c */

    /* precopy verification in the background (verify.c) */
    GThread *verifier;
    GAsyncQueue *verify_queue;  /* ranges of fresh hashes to check */
    GMutex verify_lock;         /* hashes, hash_known and verified of every block */
    gint verifier_stop;
    guint64 verifier_pages, verifier_us; /* its measured pace (atomic) */
} RdmigDestination;

static inline RdmigDestination *rdmig_destination(RdmigSession *s)
{
    g_assert(s->role == RDMIG_ROLE_DESTINATION);
    return (RdmigDestination *)s;
}

/** rdmig_destination_new / rdmig_destination_free: the session's lifetime. */
RdmigSession *rdmig_destination_new(const RdmigParams *params, GError **error);
void rdmig_destination_free(RdmigDestination *dst);
/** rdmig_destination_thread: the destination's thread (data: the session). */
gpointer rdmig_destination_thread(gpointer data);

/* destination-link.c */
/* The longest a connection may take to send its HELLO (or the peer
 * timeout, if shorter): strangers are dropped this soon. */
#define RDMIG_DOOR_MS 5000
typedef struct RdmigHelloGate RdmigHelloGate;
/** The door's deadline for this session. */
int rdmig_destination_door_ms(const RdmigSession *s);
/** One wait at the door @gate, at most @timeout_ms (-1: until something
 *  happens), watching @extra_fd (-1: none) as well: 1 a connection sent a
 *  valid HELLO (decoded into @hello; it is the session's control channel
 *  now), 0 not yet (*@extra_ready says whether @extra_fd is readable: the
 *  caller's to serve), -1 cancelled (RDMIG_ERROR_CANCELLED) or failed. */
int rdmig_destination_wait_hello(RdmigDestination *dst, RdmigHelloGate *gate, int extra_fd,
                                 bool *extra_ready, int timeout_ms, RdmigHello *hello,
                                 GError **error);
/** Waits at the door @gate until a connection sends a valid HELLO;
 *  everything else is dropped there (a stranger must not end the
 *  migration).  False only when cancelled or the listener failed. */
bool rdmig_destination_accept(RdmigDestination *dst, RdmigHelloGate *gate, RdmigHello *hello,
                              GError **error);
/** The handshake of a new migration, or (@recovering) of the paused one's
 *  source on a new link: layout, features, the data transport (chosen
 *  again), REGIONS (precopy), the data connections and their pollers.
 *  dst->hello_acked says whether a failure came after HELLO_ACK (the source
 *  was taken) or before (it was refused). */
bool rdmig_destination_handshake(RdmigDestination *dst, RdmigHello *hello, bool recovering,
                                 GError **error);
/** Stops the data pollers (joins them). */
void rdmig_destination_stop_pollers(RdmigDestination *dst);
/** The pollers, the data listener, the keepalive, the data plane and the
 *  control channel, all gone. */
void rdmig_destination_drop_link(RdmigDestination *dst);

/* apply.c */
bool rdmig_apply_zero(RdmigDestination *dst, const RdmigFrame *f, GError **error);
/** HASHES: stores the expected hashes; @block, @first, @n say which. */
bool rdmig_apply_hashes(RdmigDestination *dst, const RdmigFrame *f, guint *block,
                        uint64_t *first, uint32_t *n, GError **error);
/** SOURCE_REGIONS: the keys to pull the source's pages with. */
bool rdmig_apply_source_keys(RdmigDestination *dst, const RdmigFrame *f, GError **error);
/** DISCARD: drops the stale pages now; they are to be pulled. */
bool rdmig_apply_discard(RdmigDestination *dst, const RdmigFrame *f, GError **error);

/* verify.c */
/** Every page not still to be pulled against the source's hash, on two
 *  threads; the result in @ack.  True when all match. */
bool rdmig_verify_all(RdmigDestination *dst, RdmigCompleteAck *ack);
/** The background verifier (precopy): a thread that checks the pages of
 *  each range of fresh hashes (rdmig_verifier_queue, from apply.c) while
 *  the next round runs, so that the downtime checks only what changed
 *  since.  A page that matches gets its `verified` bit, unless a newer hash
 *  came meanwhile; one that does not (the next round overwrote it, or it is
 *  wrong) is left for rdmig_verify_all.  Stop joins it; what it has not
 *  reached stays unverified.  Start and stop: the destination's thread. */
void rdmig_verifier_start(RdmigDestination *dst);
void rdmig_verifier_queue(RdmigDestination *dst, guint block, uint64_t first, uint32_t n);
void rdmig_verifier_stop(RdmigDestination *dst);
/** What rdmig_verify_all would still have to check now, and how long that
 *  would take at the pace the background verifier measured (into @ack's
 *  backlog fields; none when not verifying): the source's switchover
 *  estimate counts it. */
void rdmig_verifier_backlog(RdmigDestination *dst, RdmigRoundAck *ack);

/* pager.c (the run), pager-place.c (the aliases) */
/** Zero copy: a second mapping of each block's memory file, registered with
 *  the data transport (reads land there).  At PREPARE, outside the
 *  downtime; again after a recovery. */
bool rdmig_pager_map_aliases(RdmigDestination *dst, GError **error);
/** Arms userfaultfd over every block, starts the guest on a thread of its
 *  own (guest-start.h: device state, resume) and pulls every needed page
 *  meanwhile, verifying each into @ack; pauses and recovers on a broken
 *  link; once the guest's start has finished, calls @runs (which ends the
 *  downtime and tells the source).  After a failure the threads that wait
 *  on missing pages keep waiting. */
bool rdmig_pager_run(RdmigDestination *dst, void (*runs)(RdmigDestination *),
                     RdmigCompleteAck *ack, GError **error);

#endif

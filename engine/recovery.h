/* SPDX-License-Identifier: MIT */
/*
 * Recovery, for both roles and both kinds (postcopy recovery, precopy
 * resume): which failures are a lost link, pausing and the bookkeeping of
 * a pause, waiting for rdmig_session_recover(), reconnecting (the source)
 * and taking the same source back on a new listener (the destination).
 * What a new link must resync is the caller's: it passes a function.
 * Sequences in docs/protocol.md §5.8 and §5.9.
 */
#ifndef RDMIG_ENGINE_RECOVERY_H
#define RDMIG_ENGINE_RECOVERY_H

#include "destination.h"
#include "source.h"

/** rdmig_recovery_link_lost: whether @err, a failure while @feature
 *  (RECOVERY or PRECOPY_RESUME) was negotiated, is the network's (a link
 *  that broke, a peer gone silent, a connection that could not be made)
 *  and so may pause rather than end the migration.  By error code. */
bool rdmig_recovery_link_lost(RdmigSession *s, const GError *err, uint64_t feature);
/** rdmig_recovery_pause: into postcopy-paused or precopy-paused, noting
 *  @why: a new pause, or (@attempt) a recovery attempt that failed. */
void rdmig_recovery_pause(RdmigSession *s, const GError *why, bool attempt);
/** rdmig_recovery_resumed: out of recovery (postcopy-recover -> active,
 *  precopy-paused -> active), with how long it took in the stats; false
 *  (cancelled) if a cancel came first. */
bool rdmig_recovery_resumed(RdmigSession *s, GError **error);

/* Source */

/** Finishes a recovery attempt once HELLO_ACK is in: the data plane and
 *  whatever the kind of recovery resyncs.  @failed: the transport that
 *  could not connect, when another may be tried. */
typedef bool (*RdmigSourceResync)(RdmigSource *src, const RdmigHelloAck *ack,
                                  const RdmigTransportOps **failed, GError **error);
/** Pauses the source after link failure @why (drops the link). */
typedef void (*RdmigSourcePause)(RdmigSource *src, const GError *why);

/** rdmig_recovery_source: takes @err, a link's failure.  If it @may_pause,
 *  pauses (@pause), waits for rdmig_session_recover() and tries each
 *  address given (HELLO, EPOCH + RESUME of the next epoch, then @resync) until one
 *  succeeds (true) or the operator gives up (false, @error); a transport
 *  that could not connect is left out of one immediate retry.  Else hands
 *  @err up (false). */
bool rdmig_recovery_source(RdmigSource *src, GError *err, bool may_pause, RdmigSourcePause pause,
                           RdmigSourceResync resync, GError **error);

/* Destination */

/* How a paused destination waits. */
typedef struct {
    int fd;                                        /* served while waiting, or -1 */
    bool (*serve)(void *opaque, GError **error);   /* @fd is readable (the pager: faults) */
    bool (*resync)(void *opaque, GError **error);  /* a new link is up: resync it */
    void (*undo)(void *opaque);                    /* a failed attempt: undo what resync did */
    void *opaque;
} RdmigRecoveryWaiter;

/** rdmig_recovery_destination: the one wait of a paused destination, for
 *  precopy resume and for the pager alike: serves @w's fd, polls the
 *  recovery listener that rdmig_session_recover() hands over, and takes a
 *  source on it only if it is this session's and names the next epoch; then the
 *  handshake again and @w's resync.  True once a link is up; false
 *  (RDMIG_ERROR_CANCELLED) when the operator gives up, or @serve failed. */
bool rdmig_recovery_destination(RdmigDestination *dst, const RdmigRecoveryWaiter *w,
                                GError **error);

#endif

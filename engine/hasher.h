/* SPDX-License-Identifier: MIT */
/*
 * Page hashing off the sending thread.  The source hashes every page it
 * sends (the destination checks them after switchover); done inline it
 * would hold up posting, since hashing and the transport's own work then
 * take turns on one thread.  A page's hash may be taken a little after its
 * write was posted: a guest write in between marks the page dirty, and the
 * page is sent and hashed again in a later round or in stop-and-copy, when
 * nothing changes any more.
 */
#ifndef RDMIG_HASHER_H
#define RDMIG_HASHER_H

#include <glib.h>
#include <stdint.h>

typedef struct RdmigHasher RdmigHasher;

/** A hasher with its own thread. */
RdmigHasher *rdmig_hasher_new(void);
/** Queues hashing @n pages at @pages into @hashes; waits only while the queue is full. */
void rdmig_hasher_push(RdmigHasher *h, const uint8_t *pages, uint64_t *hashes, uint64_t n,
                       uint32_t page_size);
/** Waits until everything queued is hashed. */
void rdmig_hasher_drain(RdmigHasher *h);
/** Nanoseconds per byte hashed so far (wall time of the thread's jobs, so
 *  that what slows it here, a busy CPU or a first touch of the page, is
 *  in), or 0 before anything was hashed. */
double rdmig_hasher_ns_per_byte(RdmigHasher *h);
/** Stops the thread and frees; returns the thread's CPU time in microseconds. */
uint64_t rdmig_hasher_free(RdmigHasher *h);

#endif

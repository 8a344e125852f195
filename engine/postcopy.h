/* SPDX-License-Identifier: MIT */
/*
 * Postcopy on the destination: the guest runs before all of its memory has
 * arrived; userfaultfd (missing mode) stops a guest thread that touches a
 * page still on the source, and the pager pulls that page with a one-sided
 * READ from the source's registered RAM (RDMA READ, or a GET answered by the
 * source's TCP backend), then places it atomically with UFFDIO_COPY.
 * Meanwhile it pulls every other missing page in the background.
 */
#ifndef RDMIG_ENGINE_POSTCOPY_H
#define RDMIG_ENGINE_POSTCOPY_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "ram.h"
#include "rdmig/rdmig.h"
#include "wire.h"

struct RdmigSession;

/** Can this process catch missing-page faults on its RAM blocks?  The error
 *  says why not (checked at the handshake, before the source stops its guest). */
bool rdmig_postcopy_probe(GError **error);

/** Destination: decides per block between zero copy (its memory file was
 *  given, params allow it, the kernel has shmem minor faults) and the
 *  staging copy.  Before the first drop: the two drop differently. */
void rdmig_postcopy_choose_placement(RdmigSession *s);

/** Destination, zero copy: maps each such block's file a second time and
 *  registers that mapping with the data transport (reads land there).  At
 *  PREPARE, outside the downtime; again after a recovery.  Undone by
 *  rdmig_session_close_data() and rdmig_session_free(). */
bool rdmig_postcopy_map_aliases(RdmigSession *s, GError **error);

/** Destination: drops the stale copies of @n pages at @first of @b, so that
 *  the guest faults on them once it runs here. */
bool rdmig_postcopy_drop(RdmigRamBlock *b, uint64_t first, uint64_t n, GError **error);

/** Destination: arms userfaultfd over every block, calls @resume (which runs
 *  the guest and tells the source), then pulls every needed page, verifying
 *  each on arrival into @ack.  Returns when all are placed, or on error (the
 *  guest's threads that wait on missing pages then keep waiting). */
bool rdmig_postcopy_pull(struct RdmigSession *s, bool (*resume)(struct RdmigSession *, GError **),
                         RdmigCompleteAck *ack, GError **error);

#endif

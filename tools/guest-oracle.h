/* SPDX-License-Identifier: MIT */
/*
 * The test oracle: the synthetic guest's own record of its memory, taken
 * with SHA-256 (GLib's GChecksum), an algorithm and a code path that share
 * nothing with rdmig's verification (XXH3 in engine/).  The tests compare a
 * source's record with its destination's page by page, so that a
 * destination that only *says* its memory matches is caught.
 *
 * When each page is digested:
 *   source       at the final stop (the guest never runs here again when
 *                the migration completes): every page, sg_oracle_take_all().
 *   destination  as migrated, before the guest changes it: armed before the
 *                vCPUs resume, a page is digested just before a vCPU first
 *                writes it (in postcopy that read pulls the page in), and
 *                every page not written since is digested at the end.
 *
 * File (all integers big-endian):
 *    0  8 bytes  "RDMIGORC"
 *    8  u32      version (1)
 *   12  u32      page size
 *   16  u64      pages (n)
 *   24  u64      pages digested before a post-resume write (destination)
 *   32  n x 32   SHA-256 of each page, in page order
 *   ..  n x 1    flags per page: bit 0, a vCPU zeroed the page at some point
 *                (rezero_percent) since the oracle was created
 */
#ifndef RDMIG_GUEST_ORACLE_H
#define RDMIG_GUEST_ORACLE_H

#include <glib.h>
#include <stdbool.h>

#include "synthetic-guest.h"

#define SG_ORACLE_MAGIC "RDMIGORC"
#define SG_ORACLE_VERSION 1
#define SG_ORACLE_DIGEST 32
#define SG_ORACLE_REZEROED 0x01

typedef struct SgOracle SgOracle;

/** sg_oracle_new: an empty record of @g's pages; from now on it notes the
 *  pages a vCPU zeroes (it installs @g's write hook).  Call while paused. */
SgOracle *sg_oracle_new(SyntheticGuest *g);
/** sg_oracle_arm: from now on a page is digested before a vCPU first writes
 *  it.  Call while paused, before the vCPUs resume. */
void sg_oracle_arm(SgOracle *o);
/** sg_oracle_take_all: digests every page not digested yet, on two threads.
 *  Holes of the guest's memory file are zero pages and are not read (reading
 *  would allocate them).  Guest paused. */
void sg_oracle_take_all(SgOracle *o);
/** sg_oracle_save: writes the record to @path (replacing it atomically).
 *  Every page must have been digested. */
bool sg_oracle_save(SgOracle *o, const char *path, GError **error);
/** sg_oracle_free: removes the write hook and frees.  Guest paused. */
void sg_oracle_free(SgOracle *o);

#endif

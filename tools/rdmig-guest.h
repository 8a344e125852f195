/* SPDX-License-Identifier: MIT */
/*
 * The synthetic guest as a session sees it: its RAM declared as blocks, the
 * session's guest hooks (stop, resume, device state) acting on it, the test
 * oracle's records, and the check of every page after a run.
 */
#ifndef RDMIG_TOOL_GUEST_H
#define RDMIG_TOOL_GUEST_H

#include <stdbool.h>

#include "guest-oracle.h"
#include "rdmig-report.h"
#include "rdmig/rdmig.h"
#include "synthetic-guest.h"

/* What the session's guest hooks act on. */
typedef struct {
    SyntheticGuest *g;
    int blocks;          /* equal blocks the RAM is declared as */
    gint hook_threads;   /* threads the session announced (thread_start) */
    gint hooks_off_thread; /* hook calls on a thread it did not announce */
    bool dirty_started;  /* the dirty log's start hook ran and its stop has not */
    gint hooks_unpaired; /* dirty-log sync or stop without a start before it */
    SgOracle *oracle;    /* --oracle: the guest's own record of its pages, or NULL */
    bool destination;
    RdmigSession *s;
} CliGuest;

/** cli_guest_ops: the session's hooks for a CliGuest (its opaque pointer).
 *  The session calls them on its migration thread. */
extern const RdmigGuestOps cli_guest_ops;

/** cli_guest_dirty_ops: RdmigDirtyOps over the synthetic guest's own dirty
 *  log (sg_dirty_log_*), for a CliGuest of @blocks equal blocks: what a
 *  hypervisor does with KVM's dirty bitmaps.  Its opaque pointer is the
 *  CliGuest; blocks as cli_guest_add_blocks() declares them. */
extern const RdmigDirtyOps cli_guest_dirty_ops;

/** cli_guest_report_threads: the hook-thread counts into @r. */
void cli_guest_report_threads(const CliGuest *gu, CliReport *r);

/** cli_guest_add_blocks: declares @g's RAM to @s as @blocks equal blocks
 *  ("pc.ram" when one, else "ram0", "ram1", ...); on a destination also
 *  the memfd behind each, for zero-copy postcopy.  Before start(); main
 *  thread. */
bool cli_guest_add_blocks(RdmigSession *s, SyntheticGuest *g, int blocks, GError **error);

/** cli_guest_save_oracle: writes @oracle's record to @dir/@name and keeps
 *  the path in r->oracle (for the report); false, with the reason on
 *  stderr, if it cannot (the run then counts as failed).  Guest paused;
 *  main thread. */
bool cli_guest_save_oracle(SgOracle *oracle, const char *dir, const char *name, CliReport *r);

/** cli_guest_check: lets the guest run @run_ms, then pauses it and checks
 *  every page, into @r (guest_running needs a page written meanwhile when
 *  @dirty_rate > 0).  A destination's oracle then takes the pages the guest
 *  did not write and is saved to @oracle_dir.  Main thread, session over. */
void cli_guest_check(CliGuest *gu, CliReport *r, int run_ms, double dirty_rate,
                     const char *oracle_dir);

#endif

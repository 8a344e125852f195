/* SPDX-License-Identifier: MIT */
/*
 * What rdmig prints about a migration: the progress line while it runs, the
 * hint when it pauses, and the final report, as a table or (--json) as one
 * JSON object on one line.  Tests read the JSON: its field names, nesting and
 * value types are an interface.
 */
#ifndef RDMIG_TOOL_REPORT_H
#define RDMIG_TOOL_REPORT_H

#include <glib.h>
#include <stdbool.h>
#include <stdio.h>

#include "rdmig/rdmig.h"
#include "synthetic-guest.h"

/* One side's outcome, filled in by the command that ran it. */
typedef struct {
    const char *role;      /* "source" or "destination" */
    int blocks;            /* RAM blocks the guest was declared as */
    RdmigStats st;         /* the session's final stats */
    bool ok;               /* the session completed */
    const GError *error;   /* why not, or NULL; not owned */
    SgStats guest;         /* the guest check's counts */
    bool guest_checked;    /* the guest was checked (cli_guest_check()) */
    const char *device_state_probe; /* destination: "none", "present", "missing" */
    const char *memory;    /* the guest's RAM: "anon", "memfd", "hugetlb" */
    uint64_t huge_bytes;   /* of it, in huge pages when the check began */
    int hook_threads;      /* threads the session announced before calling hooks */
    int hooks_off_thread;  /* hook calls on threads it did not announce: must be 0 */
    int hooks_unpaired;    /* dirty-log sync or stop without start: must be 0 */
    bool guest_ok;         /* ... and every page was as it wrote it */
    bool guest_running;    /* ... and it ran (wrote pages) before the check */
    double cpu_user, cpu_sys; /* the process's CPU time, taken at the end */
    char *oracle;          /* the oracle's file, when it was written; owned */
} CliReport;

/** cli_human_bytes: @b as "12.3 MiB" (binary units).  Newly allocated.  Any
 *  thread. */
char *cli_human_bytes(double b);

/** cli_report_progress: one progress line for @st on stderr; on a terminal
 *  (@tty) it rewrites the current line, else it ends it.  Main thread. */
void cli_report_progress(const RdmigStats *st, bool tty);

/** cli_report_pause_hint: tells the operator on stderr that the migration
 *  paused (@st: precopy-paused or postcopy-paused), why, and the commands
 *  that resume or give up, for the monitor at @monitor_path (NULL: not
 *  open).  @destination: this side receives.  Main thread. */
void cli_report_pause_hint(const RdmigStats *st, bool destination, const char *monitor_path);

/** cli_report_json: @r as one JSON object without a newline.  Newly
 *  allocated.  Any thread. */
char *cli_report_json(const CliReport *r);

/** cli_report_table: @r as a table for people, to @f.  Any thread. */
void cli_report_table(const CliReport *r, FILE *f);

/** cli_report_finish: takes the process's CPU times into @r, prints it on
 *  stdout (as JSON if @json, else as a table), frees r->oracle and returns
 *  the exit status: 0 completed with the guest intact, 3 cancelled, 1
 *  otherwise.  Main thread. */
int cli_report_finish(CliReport *r, bool json);

#endif

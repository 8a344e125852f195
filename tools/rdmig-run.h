/* SPDX-License-Identifier: MIT */
/*
 * While a migration runs in `rdmig send` or `rdmig recv`: the signals that
 * act on it, and the main thread's loop (progress line, pause hints, the
 * monitor) until it ends.
 */
#ifndef RDMIG_TOOL_RUN_H
#define RDMIG_TOOL_RUN_H

#include <stdbool.h>

#include "rdmig-monitor.h"
#include "rdmig/rdmig.h"

/** cli_run_install_signals: blocks SIGINT, SIGTERM and SIGUSR1 and starts
 *  the thread that takes them: SIGINT/SIGTERM cancel the current session
 *  (or say on stderr why not, in postcopy), SIGUSR1 asks cli_run_loop() to
 *  start postcopy.  Ignores SIGPIPE.  Main thread, before any other thread
 *  exists, so that every thread inherits the mask. */
void cli_run_install_signals(void);

/** cli_run_set_session: the session the signals act on from now on (NULL:
 *  none).  Once it returns, the signals no longer touch the previous one:
 *  clear it before freeing that session.  Any thread. */
void cli_run_set_session(RdmigSession *s);

/** cli_run_loop: until @s is completed, failed or cancelled: prints the
 *  progress line (unless @quiet) and the hint when it pauses, starts
 *  postcopy after SIGUSR1, and serves @mon (NULL: no monitor).  Main
 *  thread. */
void cli_run_loop(RdmigSession *s, CliMonitor *mon, bool quiet);

#endif

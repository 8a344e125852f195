/* SPDX-License-Identifier: MIT */
/*
 * Signals and the main thread's loop while a migration runs; see rdmig-run.h.
 */
#define G_LOG_DOMAIN "rdmig"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "rdmig-report.h"
#include "rdmig-run.h"

/* The session the signals act on.  The signal thread holds the lock while it
 * acts, so that once cli_run_set_session(NULL) returns, the session can be
 * freed. */
static GMutex session_lock;
static RdmigSession *current_session;
static gint postcopy_signalled;       /* atomic: set by the signal thread */
static sigset_t handled_signals;

/* SIGINT/SIGTERM cancel (or say why not, in postcopy), SIGUSR1 starts
 * postcopy.  Taken by this thread with sigwait(), not by a handler: a
 * cancel may lock and log, which a handler must not. */
static gpointer signal_thread(gpointer data)
{
    (void)data;
    for (;;) {
        int sig;
        if (sigwait(&handled_signals, &sig))
            continue;
        if (sig == SIGUSR1) {
            g_atomic_int_set(&postcopy_signalled, 1); /* acted on by the loop */
            continue;
        }
        g_autoptr(GError) err = NULL;
        g_mutex_lock(&session_lock);
        RdmigSession *s = current_session;
        if (s && rdmig_session_cancel_refused(s, &err))
            fprintf(stderr, "rdmig: %s: %s\n", strsignal(sig), err->message);
        else if (s)
            rdmig_session_cancel(s);
        g_mutex_unlock(&session_lock);
    }
    return NULL;
}

void cli_run_install_signals(void)
{
    sigemptyset(&handled_signals);
    sigaddset(&handled_signals, SIGINT);
    sigaddset(&handled_signals, SIGTERM);
    sigaddset(&handled_signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &handled_signals, NULL);
    g_thread_unref(g_thread_new("signals", signal_thread, NULL));
    signal(SIGPIPE, SIG_IGN);
}

void cli_run_set_session(RdmigSession *s)
{
    g_mutex_lock(&session_lock);
    current_session = s;
    g_mutex_unlock(&session_lock);
}

static bool is_final(RdmigState st)
{
    return st == RDMIG_STATE_COMPLETED || st == RDMIG_STATE_FAILED ||
           st == RDMIG_STATE_CANCELLED;
}

/* SIGUSR1 came: postcopy at the end of this round, or why not. */
static void start_postcopy(RdmigSession *s)
{
    g_autoptr(GError) err = NULL;
    if (rdmig_session_start_postcopy(s, &err))
        fprintf(stderr, "rdmig: switching to postcopy at the end of this round\n");
    else
        fprintf(stderr, "rdmig: SIGUSR1: %s\n", err->message);
}

void cli_run_loop(RdmigSession *s, CliMonitor *mon, bool quiet)
{
    bool tty = isatty(STDERR_FILENO);
    uint64_t last_round = 0;
    uint32_t last_pauses = 0, last_failures = 0;
    RdmigState last_state = RDMIG_STATE_NONE;
    for (;;) {
        RdmigStats st;
        rdmig_session_get_stats(s, &st);
        /* A terminal line is rewritten in place; a log gets a line per change. */
        if (!quiet && (tty || st.rounds != last_round || st.state != last_state)) {
            cli_report_progress(&st, tty);
            last_round = st.rounds;
            last_state = st.state;
        }
        if (is_final(st.state))
            break;
        if (!quiet &&
            (st.state == RDMIG_STATE_POSTCOPY_PAUSED || st.state == RDMIG_STATE_PRECOPY_PAUSED) &&
            (st.pauses != last_pauses || st.recover_failures != last_failures))
            cli_report_pause_hint(&st, rdmig_session_is_destination(s), cli_monitor_path(mon));
        last_pauses = st.pauses;
        last_failures = st.recover_failures;
        if (g_atomic_int_compare_and_exchange(&postcopy_signalled, 1, 0))
            start_postcopy(s);
        /* The wait between progress lines is the monitor's time to answer. */
        struct pollfd p = { .fd = cli_monitor_fd(mon), .events = POLLIN };
        if (poll(&p, 1, 200) > 0 && p.revents)
            cli_monitor_serve(mon, s);
    }
    if (!quiet && tty)
        fputc('\n', stderr);
}

/* SPDX-License-Identifier: MIT */
/*
 * rdmig: the command.
 *
 *   rdmig recv --listen ADDR [options]   destination: wait for a source, receive, run the guest
 *   rdmig send --to ADDR [options]       source: start a synthetic guest and migrate it
 *   rdmig demo [options]                 both, as two local processes over loopback
 *   rdmig recover --monitor PATH --listen ADDR   paused destination: wait for the source there
 *   rdmig send --resume --monitor PATH --to ADDR paused source: resume toward that address
 *   rdmig status --monitor PATH          state of a running send or recv, as JSON
 *   rdmig pause --monitor PATH           drop the link, both sides pause (migrate-pause)
 *   rdmig cancel --monitor PATH          cancel it (in postcopy-paused: give up)
 *
 * send and recv answer on a monitor socket (--monitor, default PID.sock in
 * $XDG_RUNTIME_DIR/rdmig or /run/rdmig): one JSON request per connection,
 * one JSON reply (rdmig-monitor.h).
 *
 * Exit status: 0 completed, 1 failed, 2 bad usage, 3 cancelled.
 *
 * The files of the command, by job:
 *   rdmig-main.c      this: parse, dispatch
 *   rdmig-options.c   the option table; options into RdmigParams and a guest
 *   rdmig-commands.c  recv, send, demo; recover, status, cancel (monitor clients)
 *   rdmig-run.c       while a migration runs: signals, the progress loop
 *   rdmig-monitor.c   the monitor socket, server and client (JSON both ways)
 *   rdmig-report.c    progress line, pause hint, final table and JSON report
 *   rdmig-guest.c     the synthetic guest behind a session: blocks, hooks, check
 *   rdmig-json.c      JSON members with rdmig's conventions (json-glib)
 */
#define G_LOG_DOMAIN "rdmig"

#include <stdio.h>
#include <string.h>

#include "rdmig-commands.h"
#include "rdmig-options.h"
#include "rdmig-run.h"

/* The command named @name, or -1 with the message printed. */
static int dispatch(const char *name)
{
    if (!strcmp(name, "recv"))
        return cli_cmd_recv();
    if (!strcmp(name, "send"))
        return cli_cmd_send();
    if (!strcmp(name, "recover"))
        return cli_cmd_recover();
    if (!strcmp(name, "status"))
        return cli_cmd_status();
    if (!strcmp(name, "cancel"))
        return cli_cmd_cancel();
    if (!strcmp(name, "pause"))
        return cli_cmd_pause();
    if (!strcmp(name, "demo")) {
        if (cli_opt.address) {
            fprintf(stderr, "rdmig demo: runs both ends on loopback; --to/--listen do not apply\n");
            return CLI_EXIT_USAGE;
        }
        /* The destination is this very binary, wherever it was run from. */
        return cli_cmd_demo("/proc/self/exe");
    }
    fprintf(stderr, "rdmig: unknown command '%s': expected recv, send, demo, recover, status, "
            "pause or cancel\n", name);
    return CLI_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    /* Messages of every level to stderr: stdout carries what scripts read
     * (reports, --json, the bound address that `rdmig demo` waits for), and
     * GLib would put G_MESSAGES_DEBUG's lines there. */
    g_log_writer_default_set_use_stderr(TRUE);
    g_autoptr(GOptionContext) ctx = cli_options_context_new();
    g_autoptr(GError) err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "rdmig: %s (see rdmig --help)\n", err->message);
        return CLI_EXIT_USAGE;
    }
    if (argc < 2) {
        g_autofree char *help = g_option_context_get_help(ctx, TRUE, NULL);
        fprintf(stderr, "%s", help);
        return CLI_EXIT_USAGE;
    }
    if (argc > 2) {
        fprintf(stderr, "rdmig: unexpected argument '%s' (see rdmig --help)\n", argv[2]);
        return CLI_EXIT_USAGE;
    }
    cli_run_install_signals();
    return dispatch(argv[1]);
}

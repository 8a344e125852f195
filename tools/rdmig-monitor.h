/* SPDX-License-Identifier: MIT */
/*
 * The monitor: a Unix socket on which a running `rdmig send` or `rdmig recv`
 * takes commands, and the client side that `rdmig recover`, `rdmig send
 * --resume`, `rdmig status` and `rdmig cancel` use.
 *
 * Protocol, in the spirit of QEMU's QMP: one request per connection, one
 * JSON object on one line each way.
 *
 *   -> {"execute": "status"}
 *   <- {"return": {"state": "postcopy-paused", "transport": "tcp", ...}}
 *   -> {"execute": "recover", "arguments": {"address": "10.0.1.2:0"}}
 *   <- {"return": {"address": "10.0.1.2:39171"}}
 *   -> {"execute": "cancel"}
 *   <- {"error": {"class": "invalid", "desc": "cancel refused in postcopy-active: ..."}}
 *   -> {"execute": "postcopy"}
 *   <- {"return": {}}
 *
 * "class" is rdmig_error_code_str() of the error: a request that is not JSON
 * or not a request object is "protocol", an unknown command or a bad
 * argument "invalid", and the session's own refusals keep their code.
 * Requests are at most CLI_MONITOR_REQUEST_MAX bytes and must arrive within
 * a second; the server never waits longer for a client.
 */
#ifndef RDMIG_TOOL_MONITOR_H
#define RDMIG_TOOL_MONITOR_H

#include <json-glib/json-glib.h>
#include <stdbool.h>

#include "rdmig/rdmig.h"

/* Longest request line the server reads, newline included. */
#define CLI_MONITOR_REQUEST_MAX 4096

typedef struct CliMonitor CliMonitor;

/** cli_monitor_open: listens on @path, or by default on PID.sock in a
 *  private directory ($XDG_RUNTIME_DIR/rdmig or /run/rdmig, mode 0700, made
 *  if missing), with the socket mode 0600; only this user and root are
 *  answered (SO_PEERCRED).  Says so on stderr unless @quiet (as "rdmig
 *  @role: monitor on PATH").  NULL with @error if it cannot: an existing
 *  file at the path (never removed, unless it is a socket of this user
 *  that nobody listens on: a killed process's) and a directory that is not
 *  private are RDMIG_ERROR_INVALID.  Main
 *  thread. */
CliMonitor *cli_monitor_open(const char *path, const char *role, bool quiet, GError **error);

/** cli_monitor_fd: the listening socket, to poll for POLLIN (a client is
 *  waiting); -1 for a NULL @m, which poll() ignores.  Any thread. */
int cli_monitor_fd(const CliMonitor *m);

/** cli_monitor_path: the socket's path.  Any thread. */
const char *cli_monitor_path(const CliMonitor *m);

/** cli_monitor_serve: accepts one waiting client, reads its request (bounded
 *  in size and time), acts on @s and answers.  Returns at once when no
 *  client waits.  Main thread (the one polling cli_monitor_fd()). */
void cli_monitor_serve(CliMonitor *m, RdmigSession *s);

/** cli_monitor_close: stops listening, removes the socket file and frees
 *  @m (NULL: nothing).  Main thread. */
void cli_monitor_close(CliMonitor *m);

/** cli_monitor_call: client: sends @command, with @arguments when not NULL,
 *  to the monitor at @path and returns the reply's "return" value (owned by
 *  the caller).  On an error reply, NULL with @error in RDMIG_ERROR: the
 *  reply's class as its code and its desc as the message; NULL with
 *  RDMIG_ERROR_CONNECT, _PEER or _PROTOCOL when the monitor cannot be
 *  reached, does not answer within 10 s or answers nonsense.  Any thread. */
JsonNode *cli_monitor_call(const char *path, const char *command, JsonObject *arguments,
                           GError **error);

#endif

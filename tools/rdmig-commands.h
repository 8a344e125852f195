/* SPDX-License-Identifier: MIT */
/*
 * rdmig's commands, each returning the process's exit status (0 completed,
 * 1 failed, 2 bad usage, 3 cancelled).  All run on the main thread, after
 * the options are parsed and the signals installed.
 */
#ifndef RDMIG_TOOL_COMMANDS_H
#define RDMIG_TOOL_COMMANDS_H

/** cli_cmd_recv: destination: listens on --listen, receives a guest, runs
 *  and checks it, reports.  Main thread. */
int cli_cmd_recv(void);

/** cli_cmd_send: source: starts a synthetic guest and migrates it to --to;
 *  with --resume, asks a paused `rdmig send` (--monitor) to reconnect to
 *  --to instead.  Main thread. */
int cli_cmd_send(void);

/** cli_cmd_demo: both ends: `@self recv` as a child process on loopback,
 *  then this process as its source; the child's report follows ours.  Main
 *  thread. */
int cli_cmd_demo(const char *self);

/** cli_cmd_recover: asks a paused `rdmig recv` (--monitor) to listen on
 *  --listen for its source, and prints the bound address.  Main thread. */
int cli_cmd_recover(void);

/** cli_cmd_status: prints the state of the `rdmig send` or `rdmig recv` at
 *  --monitor, as one JSON object.  Main thread. */
int cli_cmd_status(void);

/** cli_cmd_cancel: cancels the migration at --monitor (in a pause: gives
 *  it up), printing "ok"; refused in postcopy-active.  Main thread. */
int cli_cmd_cancel(void);
/** cli_cmd_pause: pauses the migration at --monitor (QMP's migrate-pause):
 *  that side drops the link, both pause; continue with recover and
 *  send --resume. */
int cli_cmd_pause(void);

#endif

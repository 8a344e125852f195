/* SPDX-License-Identifier: MIT */
/*
 * rdmig's command line: the options every command reads, their table, and
 * what they turn into (the session's RdmigParams, the synthetic guest).
 *
 * The options are parsed once, on the main thread, before any other thread
 * exists; afterwards they are only read.
 */
#ifndef RDMIG_TOOL_OPTIONS_H
#define RDMIG_TOOL_OPTIONS_H

#include <glib.h>
#include <stdbool.h>

#include "rdmig/rdmig.h"
#include "synthetic-guest.h"

/* Exit status of every command (README.md). */
#define CLI_EXIT_OK 0
#define CLI_EXIT_FAILED 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_CANCELLED 3

/* The default --ram-size, also what `rdmig demo` passes on. */
#define CLI_DEFAULT_RAM_SIZE "256M"

typedef struct {
    /* guest */
    char *ram_size_str;
    char *pattern_str;
    char *memory_str;
    double dirty_rate;
    int vcpus;
    int blocks;
    gint64 seed;
    int rezero_percent;
    char *oracle_dir;
    /* migration */
    int downtime_ms;
    double max_bandwidth_mib;
    int max_rounds;
    int max_time_ms;
    char *on_no_converge;
    gboolean postcopy;
    char *postcopy_after;
    int connections;
    char *transport;
    char *dirty_method;
    gboolean no_verify;
    char *postcopy_placement;
    int keepalive_ms;
    int peer_timeout_ms;
    int connect_timeout_ms;
    int rdma_ack_timeout;
    /* command */
    char *address;          /* --listen or --to */
    gboolean json;
    gboolean quiet;
    gboolean print_address;
    gboolean prealloc;
    int run_after_ms;
    int cancel_after_ms;
    int stop_after_failure_ms;
    char *monitor;
    gboolean resume;
    gboolean precopy_resume;
    gboolean insecure;
    char *tls_creds;        /* x509 directory (QEMU's tls-creds-x509 layout) */
    char *psk_file;         /* keys.psk (QEMU's tls-creds-psk layout) */
    char *device_state_pad; /* tests: grow the device state by this size */
    gint64 reader_pages;    /* tests: pages left to the destination's reader */
} CliOptions;

/** cli_opt: the parsed command line.  Written by cli_options_parse() on the
 *  main thread before other threads start; read-only afterwards, from any
 *  thread. */
extern CliOptions cli_opt;

/** cli_options_context_new: a GOptionContext with rdmig's option table and
 *  usage text, writing into cli_opt.  The caller parses with it (and may
 *  print its help).  Main thread. */
GOptionContext *cli_options_context_new(void);

/** cli_options_ram_size: --ram-size as given, or the default.  Any thread. */
const char *cli_options_ram_size(void);

/** cli_options_build_params: fills @p from cli_opt (defaults, then the
 *  migration options).  False, with @error (RDMIG_ERROR_INVALID) naming the
 *  option, if one is out of range.  Main thread. */
bool cli_options_build_params(RdmigParams *p, GError **error);

/** cli_options_build_guest: a new, paused synthetic guest as the guest
 *  options describe it, or NULL with @error (RDMIG_ERROR_INVALID) naming
 *  the bad option.  @source: the source's params (its dirty tracker decides
 *  the default memory), NULL on the destination.  The caller owns it
 *  (sg_free()).  Main thread. */
SyntheticGuest *cli_options_build_guest(const RdmigParams *source, GError **error);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * rdmig's option table and what the options become: RdmigParams for the
 * session, an SgConfig (then a SyntheticGuest) for the guest.  Every check
 * of a value the user typed is here, so that a bad one is reported as bad
 * usage (exit status 2) before anything starts.
 */
#define G_LOG_DOMAIN "rdmig"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "rdmig-options.h"

CliOptions cli_opt = {
    .pattern_str = NULL, .vcpus = 2, .blocks = 1, .seed = 1, .downtime_ms = 300,
    .max_rounds = 30, .connections = 1, .keepalive_ms = 1000, .peer_timeout_ms = 10000,
    .connect_timeout_ms = 10000, .rdma_ack_timeout = -1, .run_after_ms = 300,
    .stop_after_failure_ms = 200,
};

static const char usage[] = "COMMAND [OPTIONS]\n\n"
    "Commands:\n"
    "  recv --listen ADDR   destination: receive a guest and run it\n"
    "  send --to ADDR       source: start a synthetic guest and migrate it\n"
    "  demo                 both ends as local processes over loopback\n"
    "  recover --monitor PATH --listen ADDR   paused destination: await the source\n"
    "  send --resume --monitor PATH --to ADDR paused source: reconnect there\n"
    "  status --monitor PATH, cancel --monitor PATH\n\n"
    "ADDR is HOST:PORT or [IPV6]:PORT. Exit status: 0 completed, 1 failed,\n"
    "2 bad usage, 3 cancelled.";

static const GOptionEntry entries[] = {
    { "listen", 0, 0, G_OPTION_ARG_STRING, &cli_opt.address, "recv: address to listen on", "ADDR" },
    { "to", 0, 0, G_OPTION_ARG_STRING, &cli_opt.address, "send: destination address", "ADDR" },
    { "ram-size", 0, 0, G_OPTION_ARG_STRING, &cli_opt.ram_size_str, "guest RAM (default 256M)", "SIZE" },
    { "blocks", 0, 0, G_OPTION_ARG_INT, &cli_opt.blocks, "split RAM into N blocks (default 1)", "N" },
    { "dirty-rate", 0, 0, G_OPTION_ARG_DOUBLE, &cli_opt.dirty_rate, "MiB/s the guest writes (default 0)", "R" },
    { "memory", 0, 0, G_OPTION_ARG_STRING, &cli_opt.memory_str, "guest RAM: anon (default: anonymous with transparent huge pages, as QEMU's), memfd (4 KiB shared memory: postcopy places pulled pages without a copy) or hugetlb (2 MiB pages from the pool, sysctl vm.nr_hugepages)", "KIND" },
    { "pattern", 0, 0, G_OPTION_ARG_STRING, &cli_opt.pattern_str, "uniform (default) or hot", "P" },
    { "vcpus", 0, 0, G_OPTION_ARG_INT, &cli_opt.vcpus, "guest vCPU threads (default 2)", "N" },
    { "seed", 0, 0, G_OPTION_ARG_INT64, &cli_opt.seed, "guest contents seed", "N" },
    { "rezero-percent", 0, 0, G_OPTION_ARG_INT, &cli_opt.rezero_percent, "share of guest writes that zero a page (default 0)", "P" },
    { "reader-pages", 0, 0, G_OPTION_ARG_INT64, &cli_opt.reader_pages, "tests: leave the last N pages to a thread of the destination's guest that reads one every 5 ms, each once, and reports the slowest read (reader_max_us): how long the pager let a fault wait that needs nothing from the source; both sides alike", "N" },
    { "device-state-pad", 0, 0, G_OPTION_ARG_STRING, &cli_opt.device_state_pad, "tests: grow the guest's device state by SIZE bytes of filler, both sides alike (e.g. 1M; 16M and more is refused by the control channel's frame limit)", "SIZE" },
    { "oracle", 0, 0, G_OPTION_ARG_FILENAME, &cli_opt.oracle_dir, "tests: the guest writes the SHA-256 of every page to DIR/source.oracle (at the final stop) or DIR/destination.oracle (as migrated)", "DIR" },
    { "downtime-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.downtime_ms, "downtime limit (default 300)", "MS" },
    { "max-bandwidth", 0, 0, G_OPTION_ARG_DOUBLE, &cli_opt.max_bandwidth_mib, "MiB/s cap (default none)", "R" },
    { "max-rounds", 0, 0, G_OPTION_ARG_INT, &cli_opt.max_rounds, "precopy rounds before giving up (default 30)", "N" },
    { "max-time-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.max_time_ms, "precopy time before giving up (default none)", "MS" },
    { "on-no-converge", 0, 0, G_OPTION_ARG_STRING, &cli_opt.on_no_converge, "fail (default), switchover or postcopy", "WHAT" },
    { "postcopy", 0, 0, G_OPTION_ARG_NONE, &cli_opt.postcopy, "send: allow postcopy (the destination must support it; SIGUSR1 starts it)", NULL },
    { "postcopy-after", 0, 0, G_OPTION_ARG_STRING, &cli_opt.postcopy_after, "send: start postcopy after N rounds, or a time (2s, 500ms)", "N|TIME" },
    { "connections", 0, 0, G_OPTION_ARG_INT, &cli_opt.connections, "parallel data connections (default 1)", "N" },
    { "transport", 0, 0, G_OPTION_ARG_STRING, &cli_opt.transport, "auto (default), tcp or rdma", "T" },
    { "dirty-method", 0, 0, G_OPTION_ARG_STRING, &cli_opt.dirty_method, "auto, uffd-wp, soft-dirty, or guest (the synthetic guest's own dirty log through RdmigDirtyOps, as a hypervisor passes KVM's)", "M" },
    { "no-verify", 0, 0, G_OPTION_ARG_NONE, &cli_opt.no_verify, "skip the per-page hash check", NULL },
    { "postcopy-placement", 0, 0, G_OPTION_ARG_STRING, &cli_opt.postcopy_placement, "recv: place pulled pages by 'continue' (zero copy, default where the kernel can) or 'copy' (from a staging buffer)", "HOW" },
    { "keepalive-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.keepalive_ms, "keepalive period (default 1000)", "MS" },
    { "peer-timeout-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.peer_timeout_ms, "peer silence limit (default 10000)", "MS" },
    { "connect-timeout-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.connect_timeout_ms, "connect timeout (default 10000)", "MS" },
    { "rdma-ack-timeout", 0, 0, G_OPTION_ARG_INT, &cli_opt.rdma_ack_timeout, "RDMA: resend an unacked packet after 4.096 us x 2^N (default 14: 67 ms; 0: rdma_cm's choice)", "N" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &cli_opt.json, "final report as JSON", NULL },
    { "quiet", 'q', 0, G_OPTION_ARG_NONE, &cli_opt.quiet, "no progress line", NULL },
    { "print-address", 0, 0, G_OPTION_ARG_NONE, &cli_opt.print_address, "recv: print the bound address on stdout first", NULL },
    { "prealloc", 0, 0, G_OPTION_ARG_NONE, &cli_opt.prealloc, "recv: allocate all guest RAM before listening, like QEMU's -mem-prealloc", NULL },
    { "run-after-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.run_after_ms, "recv: run the guest this long before checking it (default 300)", "MS" },
    { "cancel-after-ms", 0, 0, G_OPTION_ARG_INT, &cli_opt.cancel_after_ms, "send: cancel after this long", "MS" },
    { "monitor", 0, 0, G_OPTION_ARG_STRING, &cli_opt.monitor, "send/recv: monitor socket (default $XDG_RUNTIME_DIR/rdmig/PID.sock or /run/rdmig/PID.sock); recover/status/cancel/send --resume: the one to talk to", "PATH" },
    { "resume", 0, 0, G_OPTION_ARG_NONE, &cli_opt.resume, "send: resume a paused migration (with --monitor and --to)", NULL },
    { "tls-creds", 0, 0, G_OPTION_ARG_FILENAME, &cli_opt.tls_creds, "send, recv: TLS 1.3 with x509 certificates from DIR, in QEMU's tls-creds-x509 layout (ca-cert.pem, server-cert.pem + server-key.pem, client-cert.pem + client-key.pem)", "DIR" },
    { "psk-file", 0, 0, G_OPTION_ARG_FILENAME, &cli_opt.psk_file, "send, recv: TLS 1.3 with a pre-shared key from FILE, QEMU's keys.psk format (IDENTITY:HEXKEY, as psktool writes it)", "FILE" },
    { "insecure", 0, 0, G_OPTION_ARG_NONE, &cli_opt.insecure, "send, recv: allow an address that is not loopback without --tls-creds or --psk-file: whoever reaches it gets the guest's memory (docs/security.md)", NULL },
    { "precopy-resume", 0, 0, G_OPTION_ARG_NONE, &cli_opt.precopy_resume, "send, recv: a broken precopy link pauses and can be resumed, rather than failing (both sides)", NULL },
    G_OPTION_ENTRY_NULL,
};

GOptionContext *cli_options_context_new(void)
{
    GOptionContext *ctx = g_option_context_new(usage);
    g_option_context_add_main_entries(ctx, entries, NULL);
    return ctx;
}

const char *cli_options_ram_size(void)
{
    return cli_opt.ram_size_str ? cli_opt.ram_size_str : CLI_DEFAULT_RAM_SIZE;
}

/* "256M", "1G", "4096", "64K": bytes, or 0 with @error set. */
static uint64_t parse_size(const char *s, const char *what, GError **error)
{
    char *end = NULL;
    errno = 0;
    double v = g_ascii_strtod(s ? s : "", &end);
    uint64_t mul = 1;
    if (end && *end) {
        switch (g_ascii_toupper(*end)) {
        case 'K': mul = 1ull << 10; break;
        case 'M': mul = 1ull << 20; break;
        case 'G': mul = 1ull << 30; break;
        case 'T': mul = 1ull << 40; break;
        default: mul = 0;
        }
        if (mul && end[1] && g_ascii_strcasecmp(end + 1, "iB") && g_ascii_strcasecmp(end + 1, "B"))
            mul = 0;
    }
    if (!s || !*s || errno || end == s || !mul || v <= 0 || v * (double)mul > 1e15) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "invalid %s '%s': expected a positive size like 256M or 1G", what,
                    s ? s : "");
        return 0;
    }
    return (uint64_t)(v * (double)mul);
}

/* ------------------------------------------------------------------ params */

/* The plain numbers: limits, counts and timeouts. */
static bool params_numbers(RdmigParams *p, GError **error)
{
    if (cli_opt.downtime_ms <= 0 || cli_opt.max_rounds <= 0 || cli_opt.connections <= 0 ||
        cli_opt.keepalive_ms <= 0 || cli_opt.peer_timeout_ms <= 0 ||
        cli_opt.connect_timeout_ms <= 0 || cli_opt.max_time_ms < 0 ||
        cli_opt.max_bandwidth_mib < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--downtime-ms, --max-rounds, --connections and the timeouts must be "
                    "positive; --max-time-ms and --max-bandwidth not negative");
        return false;
    }
    p->downtime_limit_ms = (uint32_t)cli_opt.downtime_ms;
    p->max_bandwidth = (uint64_t)(cli_opt.max_bandwidth_mib * 1048576.0);
    p->max_rounds = (uint32_t)cli_opt.max_rounds;
    p->max_precopy_ms = (uint32_t)cli_opt.max_time_ms;
    p->data_connections = (uint32_t)cli_opt.connections;
    p->verify = !cli_opt.no_verify;
    p->keepalive_ms = (uint32_t)cli_opt.keepalive_ms;
    p->peer_timeout_ms = (uint32_t)cli_opt.peer_timeout_ms;
    p->connect_timeout_ms = (uint32_t)cli_opt.connect_timeout_ms;
    if (cli_opt.rdma_ack_timeout < -1 || cli_opt.rdma_ack_timeout > 31) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--rdma-ack-timeout is an exponent (4.096 us x 2^N), 0..31, not %d",
                    cli_opt.rdma_ack_timeout);
        return false;
    }
    /* -1, the option's default, keeps the library's own default. */
    if (cli_opt.rdma_ack_timeout >= 0)
        p->rdma_ack_timeout = (uint8_t)cli_opt.rdma_ack_timeout;
    return true;
}

/* The options that name a choice: placement, policy, transport, tracker. */
static bool params_choices(RdmigParams *p, GError **error)
{
    const char *place = cli_opt.postcopy_placement;
    if (place && strcmp(place, "continue") && strcmp(place, "copy")) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--postcopy-placement is 'continue' (zero copy) or 'copy', not '%s'", place);
        return false;
    }
    p->postcopy_zero_copy = !place || !strcmp(place, "continue");
    const char *nc = cli_opt.on_no_converge;
    if (!nc || !strcmp(nc, "fail"))
        p->on_no_converge = RDMIG_NO_CONVERGE_FAIL;
    else if (!strcmp(nc, "switchover"))
        p->on_no_converge = RDMIG_NO_CONVERGE_SWITCHOVER;
    else if (!strcmp(nc, "postcopy"))
        p->on_no_converge = RDMIG_NO_CONVERGE_POSTCOPY;
    else {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--on-no-converge must be 'fail', 'switchover' or 'postcopy', not '%s'", nc);
        return false;
    }
    /* The library checks the transport's name: it knows which it has. */
    if (cli_opt.transport)
        g_strlcpy(p->transport, cli_opt.transport, sizeof(p->transport));
    const char *dm = cli_opt.dirty_method;
    if (!dm || !strcmp(dm, "auto"))
        p->dirty_method = RDMIG_DIRTY_AUTO;
    else if (!strcmp(dm, "uffd-wp"))
        p->dirty_method = RDMIG_DIRTY_UFFD_WP;
    else if (!strcmp(dm, "soft-dirty"))
        p->dirty_method = RDMIG_DIRTY_SOFT_DIRTY;
    else if (!strcmp(dm, "guest"))
        p->dirty_method = RDMIG_DIRTY_AUTO; /* unused: the guest's log comes as RdmigDirtyOps */
    else {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--dirty-method must be auto, uffd-wp, soft-dirty or guest");
        return false;
    }
    return true;
}

/* --postcopy, --postcopy-after N|TIME, --on-no-converge postcopy. */
static bool params_postcopy(RdmigParams *p, GError **error)
{
    /* Any postcopy trigger implies postcopy. */
    p->postcopy = cli_opt.postcopy || cli_opt.postcopy_after ||
                  p->on_no_converge == RDMIG_NO_CONVERGE_POSTCOPY;
    const char *after = cli_opt.postcopy_after;
    if (!after)
        return true;
    char *end = NULL;
    errno = 0;
    double v = g_ascii_strtod(after, &end);
    bool ok = !errno && end != after && v > 0 && v < 1e7;
    if (ok && !*end && v == (double)(uint32_t)v)
        p->postcopy_after_rounds = (uint32_t)v;
    else if (ok && !strcmp(end, "s"))
        p->postcopy_after_ms = (uint32_t)MAX(1.0, v * 1000);
    else if (ok && !strcmp(end, "ms"))
        p->postcopy_after_ms = (uint32_t)MAX(1.0, v);
    else {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--postcopy-after takes a number of rounds (3) or a time (2.5s, 800ms), "
                    "not '%s'", after);
        return false;
    }
    return true;
}

bool cli_options_build_params(RdmigParams *p, GError **error)
{
    rdmig_params_init(p);
    if (!params_numbers(p, error) || !params_choices(p, error))
        return false;
    p->precopy_resume = cli_opt.precopy_resume;
    p->insecure = cli_opt.insecure;
    return params_postcopy(p, error);
}

/* ------------------------------------------------------------------ guest */

/* --memory, and the options that need a kind of memory. */
static bool guest_memory(SgConfig *cfg, GError **error)
{
    const char *m = cli_opt.memory_str;
    if (m && !sg_memory_parse(m, &cfg->memory)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--memory is 'anon', 'memfd' or 'hugetlb', not '%s'", m);
        return false;
    }
    const char *place = cli_opt.postcopy_placement;
    if (place && !strcmp(place, "continue") && cfg->memory != SG_MEMORY_MEMFD) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--postcopy-placement continue maps pulled pages through a second "
                    "mapping of the guest's memfd: it needs --memory memfd, not %s",
                    sg_memory_name(cfg->memory));
        return false;
    }
    return true;
}

/* The built-in tracker @p picks on this kernel: soft-dirty marks a whole
 * transparent huge page dirty when one 4 KiB page of it is written (uffd-wp
 * splits it and tracks 4 KiB), so a source tracking by soft-dirty is given
 * 4 KiB memory by default, and warned when it asked for huge pages: a
 * dirtying guest might never converge.  The guest's own log is per page. */
static void source_memory(SgConfig *cfg, const RdmigParams *p)
{
    if (cli_opt.dirty_method && !strcmp(cli_opt.dirty_method, "guest"))
        return;
    g_autoptr(RdmigDirtyTracker) t = rdmig_dirty_tracker_new(p->dirty_method, NULL);
    if (!t || rdmig_dirty_tracker_method(t) != RDMIG_DIRTY_SOFT_DIRTY)
        return;
    if (!cli_opt.memory_str)
        cfg->memory = SG_MEMORY_MEMFD;
    else if (cfg->memory == SG_MEMORY_ANON)
        fprintf(stderr, "rdmig: warning: the soft-dirty tracker marks a whole 2 MiB "
                "transparent huge page when one 4 KiB page of it is written: a dirtying "
                "guest may not converge (--memory memfd tracks 4 KiB pages)\n");
}

/* The guest options into @cfg, checked. */
static bool guest_config(SgConfig *cfg, GError **error)
{
    sg_config_init(cfg);
    cfg->ram_size = parse_size(cli_options_ram_size(), "--ram-size", error);
    if (!cfg->ram_size || !guest_memory(cfg, error))
        return false;
    uint64_t unit = cfg->memory == SG_MEMORY_HUGETLB ? SG_HUGE_PAGE_SIZE : 4096;
    if (cli_opt.blocks < 1 || cli_opt.blocks > 64 ||
        cfg->ram_size % ((uint64_t)cli_opt.blocks * unit)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--blocks must be 1..64 and divide --ram-size into whole %s pages",
                    unit == 4096 ? "4 KiB" : "2 MiB");
        return false;
    }
    cfg->dirty_rate_mib = cli_opt.dirty_rate;
    cfg->vcpus = (uint32_t)MAX(cli_opt.vcpus, 0);
    if (cli_opt.rezero_percent < 0 || cli_opt.rezero_percent > 100) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--rezero-percent must be 0..100, not %d", cli_opt.rezero_percent);
        return false;
    }
    cfg->rezero_percent = (uint32_t)cli_opt.rezero_percent;
    cfg->seed = (uint64_t)cli_opt.seed;
    if (cli_opt.reader_pages < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--reader-pages must be 0 or more, not %" G_GINT64_FORMAT,
                    (gint64)cli_opt.reader_pages);
        return false;
    }
    cfg->reader_pages = (uint64_t)cli_opt.reader_pages;
    if (cli_opt.device_state_pad) {
        g_autoptr(GError) perr = NULL;
        cfg->device_state_pad = parse_size(cli_opt.device_state_pad, "--device-state-pad", &perr);
        if (perr) {
            g_propagate_error(error, g_steal_pointer(&perr));
            return false;
        }
        if (cfg->device_state_pad > (64u << 20)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "--device-state-pad is at most 64M");
            return false;
        }
    }
    const char *pat = cli_opt.pattern_str;
    if (!pat)
        return true;
    if (!strcmp(pat, "uniform"))
        cfg->pattern = SG_PATTERN_UNIFORM;
    else if (!strcmp(pat, "hot") || !strcmp(pat, "hotset"))
        cfg->pattern = SG_PATTERN_HOTSET;
    else {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--pattern must be 'uniform' or 'hot', not '%s'", pat);
        return false;
    }
    return true;
}

SyntheticGuest *cli_options_build_guest(const RdmigParams *source, GError **error)
{
    SgConfig cfg;
    if (!guest_config(&cfg, error))
        return NULL;
    if (source)
        source_memory(&cfg, source);
    g_autoptr(GError) sgerr = NULL;
    SyntheticGuest *g = sg_new(&cfg, &sgerr);
    /* The guest's checks (vCPUs, dirty rate) are the user's values too. */
    if (!g)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "%s", sgerr->message);
    return g;
}

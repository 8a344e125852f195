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
 *   rdmig cancel --monitor PATH          cancel it (in postcopy-paused: give up)
 *
 * send and recv answer on a monitor socket (--monitor, default
 * /tmp/rdmig-PID.sock): one command per connection, one line back.
 *
 * Exit status: 0 completed, 1 failed, 2 bad usage, 3 cancelled.
 */
#define G_LOG_DOMAIN "rdmig"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guest-oracle.h"
#include "rdmig/rdmig.h"
#include "synthetic-guest.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_CANCELLED 3

typedef struct {
    /* guest */
    char *ram_size_str;
    char *pattern_str;
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
    char *address;
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
} Options;

static Options opt = {
    .pattern_str = NULL, .vcpus = 2, .blocks = 1, .seed = 1, .downtime_ms = 300,
    .max_rounds = 30, .connections = 1, .keepalive_ms = 1000, .peer_timeout_ms = 10000,
    .connect_timeout_ms = 10000, .rdma_ack_timeout = -1, .run_after_ms = 300, .stop_after_failure_ms = 200,
};

static RdmigSession *current_session; /* atomic: the signal thread reads it */
static volatile sig_atomic_t postcopy_signalled;
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
            postcopy_signalled = 1; /* acted on by the progress loop */
            continue;
        }
        RdmigSession *s = g_atomic_pointer_get(&current_session);
        g_autoptr(GError) err = NULL;
        if (!s)
            continue;
        if (rdmig_session_cancel_refused(s, &err))
            fprintf(stderr, "rdmig: %s: %s\n", strsignal(sig), err->message);
        else
            rdmig_session_cancel(s);
    }
    return NULL;
}

/* Before any other thread exists, so that all of them inherit the mask. */
static void install_signals(void)
{
    sigemptyset(&handled_signals);
    sigaddset(&handled_signals, SIGINT);
    sigaddset(&handled_signals, SIGTERM);
    sigaddset(&handled_signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &handled_signals, NULL);
    g_thread_unref(g_thread_new("signals", signal_thread, NULL));
    signal(SIGPIPE, SIG_IGN);
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

static bool build_params(RdmigParams *p, GError **error)
{
    rdmig_params_init(p);
    if (opt.downtime_ms <= 0 || opt.max_rounds <= 0 || opt.connections <= 0 ||
        opt.keepalive_ms <= 0 || opt.peer_timeout_ms <= 0 || opt.connect_timeout_ms <= 0 ||
        opt.max_time_ms < 0 || opt.max_bandwidth_mib < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--downtime-ms, --max-rounds, --connections and the timeouts must be "
                    "positive; --max-time-ms and --max-bandwidth not negative");
        return false;
    }
    p->downtime_limit_ms = (uint32_t)opt.downtime_ms;
    p->max_bandwidth = (uint64_t)(opt.max_bandwidth_mib * 1048576.0);
    p->max_rounds = (uint32_t)opt.max_rounds;
    p->max_precopy_ms = (uint32_t)opt.max_time_ms;
    p->data_connections = (uint32_t)opt.connections;
    p->verify = !opt.no_verify;
    if (opt.postcopy_placement && strcmp(opt.postcopy_placement, "continue") &&
        strcmp(opt.postcopy_placement, "copy")) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--postcopy-placement is 'continue' (zero copy) or 'copy', not '%s'",
                    opt.postcopy_placement);
        return false;
    }
    p->postcopy_zero_copy = !opt.postcopy_placement || !strcmp(opt.postcopy_placement, "continue");
    p->keepalive_ms = (uint32_t)opt.keepalive_ms;
    p->peer_timeout_ms = (uint32_t)opt.peer_timeout_ms;
    p->connect_timeout_ms = (uint32_t)opt.connect_timeout_ms;
    if (opt.rdma_ack_timeout < -1 || opt.rdma_ack_timeout > 31) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--rdma-ack-timeout is an exponent (4.096 us x 2^N), 0..31, not %d",
                    opt.rdma_ack_timeout);
        return false;
    }
    if (opt.rdma_ack_timeout >= 0)
        p->rdma_ack_timeout = (uint8_t)opt.rdma_ack_timeout;
    if (opt.on_no_converge) {
        if (!strcmp(opt.on_no_converge, "fail"))
            p->on_no_converge = RDMIG_NO_CONVERGE_FAIL;
        else if (!strcmp(opt.on_no_converge, "switchover"))
            p->on_no_converge = RDMIG_NO_CONVERGE_SWITCHOVER;
        else if (!strcmp(opt.on_no_converge, "postcopy"))
            p->on_no_converge = RDMIG_NO_CONVERGE_POSTCOPY;
        else {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "--on-no-converge must be 'fail', 'switchover' or 'postcopy', not '%s'",
                        opt.on_no_converge);
            return false;
        }
    }
    p->precopy_resume = opt.precopy_resume;
    /* Any postcopy trigger implies postcopy. */
    p->postcopy = opt.postcopy || opt.postcopy_after ||
                  p->on_no_converge == RDMIG_NO_CONVERGE_POSTCOPY;
    if (opt.postcopy_after) {
        char *end = NULL;
        errno = 0;
        double v = g_ascii_strtod(opt.postcopy_after, &end);
        bool ok = !errno && end != opt.postcopy_after && v > 0 && v < 1e7;
        if (ok && !*end && v == (double)(uint32_t)v)
            p->postcopy_after_rounds = (uint32_t)v;
        else if (ok && !strcmp(end, "s"))
            p->postcopy_after_ms = (uint32_t)MAX(1.0, v * 1000);
        else if (ok && !strcmp(end, "ms"))
            p->postcopy_after_ms = (uint32_t)MAX(1.0, v);
        else {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "--postcopy-after takes a number of rounds (3) or a time (2.5s, 800ms), "
                        "not '%s'", opt.postcopy_after);
            return false;
        }
    }
    if (opt.transport)
        g_strlcpy(p->transport, opt.transport, sizeof(p->transport));
    if (opt.dirty_method) {
        if (!strcmp(opt.dirty_method, "auto"))
            p->dirty_method = RDMIG_DIRTY_AUTO;
        else if (!strcmp(opt.dirty_method, "uffd-wp"))
            p->dirty_method = RDMIG_DIRTY_UFFD_WP;
        else if (!strcmp(opt.dirty_method, "soft-dirty"))
            p->dirty_method = RDMIG_DIRTY_SOFT_DIRTY;
        else {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "--dirty-method must be auto, uffd-wp or soft-dirty");
            return false;
        }
    }
    return true;
}

static SyntheticGuest *build_guest(GError **error)
{
    SgConfig cfg;
    sg_config_init(&cfg);
    cfg.ram_size = parse_size(opt.ram_size_str ? opt.ram_size_str : "256M", "--ram-size", error);
    if (!cfg.ram_size)
        return NULL;
    if (opt.blocks < 1 || opt.blocks > 64 || cfg.ram_size % ((uint64_t)opt.blocks * 4096)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--blocks must be 1..64 and divide --ram-size into whole pages");
        return NULL;
    }
    cfg.dirty_rate_mib = opt.dirty_rate;
    cfg.vcpus = (uint32_t)MAX(opt.vcpus, 0);
    if (opt.rezero_percent < 0 || opt.rezero_percent > 100) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--rezero-percent must be 0..100, not %d", opt.rezero_percent);
        return NULL;
    }
    cfg.rezero_percent = (uint32_t)opt.rezero_percent;
    cfg.seed = (uint64_t)opt.seed;
    if (opt.pattern_str) {
        if (!strcmp(opt.pattern_str, "uniform"))
            cfg.pattern = SG_PATTERN_UNIFORM;
        else if (!strcmp(opt.pattern_str, "hot") || !strcmp(opt.pattern_str, "hotset"))
            cfg.pattern = SG_PATTERN_HOTSET;
        else {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "--pattern must be 'uniform' or 'hot', not '%s'", opt.pattern_str);
            return NULL;
        }
    }
    GError *sgerr = NULL;
    SyntheticGuest *g = sg_new(&cfg, &sgerr);
    if (!g) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "%s", sgerr->message);
        g_error_free(sgerr);
    }
    return g;
}

static bool add_blocks(RdmigSession *s, SyntheticGuest *g, GError **error)
{
    uint64_t per = sg_ram_size(g) / (uint64_t)opt.blocks;
    for (int i = 0; i < opt.blocks; i++) {
        g_autofree char *name = opt.blocks == 1 ? g_strdup("pc.ram") : g_strdup_printf("ram%d", i);
        if (!rdmig_session_add_ram_block(s, name, (uint8_t *)sg_ram(g) + per * (uint64_t)i, per,
                                         sg_page_size(g), error))
            return false;
        /* The guest's RAM is a memfd: postcopy can pull into it directly. */
        if (rdmig_session_is_destination(s) &&
            !rdmig_session_set_ram_block_fd(s, name, sg_memfd(g), per * (uint64_t)i, error))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------ guest glue */

/* What the session's guest hooks act on. */
typedef struct {
    SyntheticGuest *g;
    SgOracle *oracle;    /* --oracle: the guest's own record of its pages */
    bool destination;
    RdmigSession *s;
} Guest;

/* Source: the switchover's stop (state device or postcopy-active), or a
 * pause across a soft-dirty sync (setup, active).  The oracle's record is
 * taken at the switchover, the last moment this side's memory can change. */
static bool guest_stop(void *opaque, GError **error)
{
    Guest *gu = opaque;
    (void)error;
    sg_pause(gu->g);
    RdmigStats st;
    rdmig_session_get_stats(gu->s, &st);
    if (gu->oracle &&
        (st.state == RDMIG_STATE_DEVICE || st.state == RDMIG_STATE_POSTCOPY_ACTIVE))
        sg_oracle_take_all(gu->oracle);
    return true;
}
/* Destination: the oracle digests each page before the guest first changes
 * it (in postcopy, pages are still arriving). */
static void guest_resume(void *opaque)
{
    Guest *gu = opaque;
    if (gu->oracle && gu->destination)
        sg_oracle_arm(gu->oracle);
    sg_resume(gu->g);
}
static bool guest_save(void *opaque, GByteArray *out, GError **error)
{
    (void)error;
    sg_save_device_state(((Guest *)opaque)->g, out);
    return true;
}
static bool guest_load(void *opaque, const uint8_t *data, size_t len, GError **error)
{
    GError *e = NULL;
    if (sg_load_device_state(((Guest *)opaque)->g, data, len, &e))
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s", e->message);
    g_error_free(e);
    return false;
}
static const RdmigGuestOps guest_ops = {
    .stop = guest_stop, .resume = guest_resume,
    .save_device_state = guest_save, .load_device_state = guest_load,
};

/* ------------------------------------------------------------------ output */

static char *human_bytes(double b)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    return g_strdup_printf(i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

/* ------------------------------------------------------------------ monitor */

static void json_str(GString *o, const char *s);

static int monitor_fd = -1;
static char *monitor_path;

static bool monitor_addr(const char *path, struct sockaddr_un *sa, GError **error)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "monitor path '%s' is too long", path);
        return false;
    }
    strcpy(sa->sun_path, path);
    return true;
}

static bool monitor_open(const char *role, GError **error)
{
    monitor_path = opt.monitor ? g_strdup(opt.monitor)
                               : g_strdup_printf("/tmp/rdmig-%d.sock", (int)getpid());
    struct sockaddr_un sa;
    if (!monitor_addr(monitor_path, &sa, error))
        return false;
    unlink(monitor_path);
    monitor_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (monitor_fd < 0 || bind(monitor_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(monitor_fd, 4) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "monitor socket %s: %s",
                    monitor_path, g_strerror(errno));
        return false;
    }
    if (!opt.quiet)
        fprintf(stderr, "rdmig %s: monitor on %s\n", role, monitor_path);
    return true;
}

static void monitor_close(void)
{
    if (monitor_fd >= 0) {
        close(monitor_fd);
        unlink(monitor_path);
    }
    monitor_fd = -1;
    g_clear_pointer(&monitor_path, g_free);
}

static char *status_json(RdmigSession *s)
{
    RdmigStats st;
    rdmig_session_get_stats(s, &st);
    GString *o = g_string_new(NULL);
    g_string_append_printf(o, "{\"state\":\"%s\",\"transport\":\"%s\",\"remaining_bytes\":%"
                           G_GUINT64_FORMAT ",\"pauses\":%u,\"recover_failures\":%u,"
                           "\"pages_missing\":%" G_GUINT64_FORMAT ",\"listen\":\"%s\","
                           "\"pause_reason\":", rdmig_state_str(st.state), st.transport,
                           st.remaining_bytes, st.pauses, st.recover_failures, st.pages_missing,
                           rdmig_session_listen_address(s) ? rdmig_session_listen_address(s) : "");
    json_str(o, st.pause_reason);
    g_string_append(o, "}");
    return g_string_free(o, FALSE);
}

/* One command from one client: "status", "recover ADDR", "cancel", "postcopy". */
static void monitor_serve(RdmigSession *s)
{
    int c = accept4(monitor_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    char line[512];
    size_t n = 0;
    struct pollfd p = { .fd = c, .events = POLLIN };
    while (n < sizeof(line) - 1 && poll(&p, 1, 1000) > 0) {
        ssize_t r = read(c, line + n, sizeof(line) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (memchr(line, '\n', n))
            break;
    }
    line[n] = 0;
    g_strstrip(line);
    g_autofree char *reply = NULL;
    g_autoptr(GError) err = NULL;
    if (!strcmp(line, "status")) {
        reply = status_json(s);
    } else if (g_str_has_prefix(line, "recover ")) {
        const char *addr = line + strlen("recover ");
        if (rdmig_session_recover(s, addr, &err)) {
            const char *bound = rdmig_session_listen_address(s);
            reply = g_strdup_printf("ok %s", bound ? bound : addr);
            fprintf(stderr, "rdmig: recovering via %s\n", bound ? bound : addr);
        }
    } else if (!strcmp(line, "cancel")) {
        if (!rdmig_session_cancel_refused(s, &err)) {
            rdmig_session_cancel(s);
            reply = g_strdup("ok");
        }
    } else if (!strcmp(line, "postcopy")) {
        if (rdmig_session_start_postcopy(s, &err))
            reply = g_strdup("ok");
    } else {
        reply = g_strdup_printf("error unknown command '%s': status, recover ADDR, cancel, "
                                "postcopy", line);
    }
    if (!reply)
        reply = g_strdup_printf("error %s", err->message);
    g_autofree char *out = g_strdup_printf("%s\n", reply);
    if (write(c, out, strlen(out)) < 0) {
        /* The client went away: nothing to tell. */
    }
    close(c);
}

/* Client side: sends @cmd to the monitor at @path, returns the reply line. */
static char *monitor_call(const char *path, const char *cmd, GError **error)
{
    struct sockaddr_un sa;
    if (!monitor_addr(path, &sa, error))
        return NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                    "cannot reach the monitor at %s: %s (is the rdmig process running?)", path,
                    g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    g_autofree char *line = g_strdup_printf("%s\n", cmd);
    GString *reply = g_string_new(NULL);
    if (write(fd, line, strlen(line)) == (ssize_t)strlen(line)) {
        char buf[1024];
        ssize_t n;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        while (poll(&p, 1, 10000) > 0 && (n = read(fd, buf, sizeof(buf))) > 0)
            g_string_append_len(reply, buf, n);
    }
    close(fd);
    g_strchomp(reply->str);
    if (!reply->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "no answer from the monitor at %s",
                    path);
        g_string_free(reply, TRUE);
        return NULL;
    }
    return g_string_free(reply, FALSE);
}

static void pause_hint(RdmigSession *s, const RdmigStats *st)
{
    if (opt.quiet)
        return;
    bool dst = rdmig_session_is_destination(s);
    if (st->state == RDMIG_STATE_PRECOPY_PAUSED) {
        fprintf(stderr, "\nrdmig: precopy paused: %s\n", st->pause_reason);
        if (dst)
            fprintf(stderr, "rdmig: waiting for the source to resume.\n"
                    "  recover:  rdmig recover --monitor %s --listen ADDR\n", monitor_path);
        else
            fprintf(stderr, "rdmig: the guest runs on here.\n"
                    "  resume:   rdmig send --resume --monitor %s --to ADDR\n", monitor_path);
        fprintf(stderr, "  give up:  rdmig cancel --monitor %s\n", monitor_path);
        return;
    }
    fprintf(stderr, "\nrdmig: postcopy paused: %s\n", st->pause_reason);
    if (dst)
        fprintf(stderr, "rdmig: the guest runs here; threads touching the %" G_GUINT64_FORMAT
                " missing pages wait.\n  recover:  rdmig recover --monitor %s --listen ADDR\n"
                "  give up:  rdmig cancel --monitor %s (those pages are lost)\n",
                st->pages_missing, monitor_path, monitor_path);
    else
        fprintf(stderr, "rdmig: the guest stays stopped here with its memory.\n"
                "  resume:   rdmig send --resume --monitor %s --to ADDR (after 'rdmig recover' "
                "on the destination)\n", monitor_path);
}

static void progress_loop(RdmigSession *s)
{
    bool tty = isatty(STDERR_FILENO);
    uint64_t last_round = 0;
    uint32_t last_pauses = 0, last_failures = 0;
    RdmigState last_state = RDMIG_STATE_NONE;
    for (;;) {
        RdmigStats st;
        rdmig_session_get_stats(s, &st);
        bool final = st.state == RDMIG_STATE_COMPLETED || st.state == RDMIG_STATE_FAILED ||
                     st.state == RDMIG_STATE_CANCELLED;
        if (!opt.quiet && (tty || st.rounds != last_round || st.state != last_state)) {
            g_autofree char *rem = human_bytes((double)st.remaining_bytes);
            g_autofree char *bw = human_bytes((double)st.bandwidth);
            g_autofree char *tot = human_bytes((double)st.bytes_transferred);
            fprintf(stderr, "%s%-10s round %-3" G_GUINT64_FORMAT " remaining %-10s "
                    "sent %-10s bandwidth %s/s  expected downtime %" G_GUINT64_FORMAT " ms%s",
                    tty ? "\r" : "", rdmig_state_str(st.state), st.rounds, rem, tot, bw,
                    st.expected_downtime_ms > 1000000 ? 0 : st.expected_downtime_ms,
                    tty ? "   " : "\n");
            last_round = st.rounds;
            last_state = st.state;
        }
        if (final)
            break;
        if ((st.state == RDMIG_STATE_POSTCOPY_PAUSED || st.state == RDMIG_STATE_PRECOPY_PAUSED) &&
            (st.pauses != last_pauses || st.recover_failures != last_failures))
            pause_hint(s, &st);
        last_pauses = st.pauses;
        last_failures = st.recover_failures;
        if (postcopy_signalled) {
            postcopy_signalled = 0;
            g_autoptr(GError) err = NULL;
            if (rdmig_session_start_postcopy(s, &err))
                fprintf(stderr, "rdmig: switching to postcopy at the end of this round\n");
            else
                fprintf(stderr, "rdmig: SIGUSR1: %s\n", err->message);
        }
        struct pollfd p = { .fd = monitor_fd, .events = POLLIN };
        if (poll(&p, 1, 200) > 0 && p.revents)
            monitor_serve(s);
    }
    if (!opt.quiet && tty)
        fputc('\n', stderr);
}

static void json_str(GString *o, const char *s)
{
    g_string_append_c(o, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            g_string_append_printf(o, "\\%c", c);
        else if (c < 0x20)
            g_string_append_printf(o, "\\u%04x", c);
        else
            g_string_append_c(o, (char)c);
    }
    g_string_append_c(o, '"');
}

typedef struct {
    const char *role;
    RdmigStats st;
    bool ok;
    const GError *error;
    SgStats guest;
    bool guest_checked;
    bool guest_ok;
    bool guest_running;
    double cpu_user, cpu_sys;
    const char *address;
    char *oracle;          /* the oracle's file, when it was written */
} Report;

static char *report_json(const Report *r)
{
    GString *o = g_string_new("{");
    const RdmigStats *s = &r->st;
    g_string_append_printf(o, "\"role\":\"%s\",\"result\":\"%s\",\"blocks\":%d,", r->role,
                           rdmig_state_str(s->state), opt.blocks);
    g_string_append(o, "\"error\":");
    json_str(o, r->error ? r->error->message : "");
    g_string_append(o, ",\"error_code\":");
    json_str(o, r->error && r->error->domain == RDMIG_ERROR
                    ? rdmig_error_code_str((RdmigErrorCode)r->error->code) : "");
    g_string_append(o, ",\"oracle\":");
    json_str(o, r->oracle ? r->oracle : "");
    g_string_append(o, ",\"transport\":");
    json_str(o, s->transport);
    g_string_append(o, ",\"dirty_method\":");
    json_str(o, s->dirty_method);
    g_string_append_printf(o,
        ",\"data_connections\":%u,\"total_time_ms\":%" G_GUINT64_FORMAT
        ",\"setup_time_ms\":%" G_GUINT64_FORMAT ",\"downtime_ms\":%" G_GUINT64_FORMAT
        ",\"expected_downtime_ms\":%" G_GUINT64_FORMAT ",\"verify_time_ms\":%" G_GUINT64_FORMAT
        ",\"rounds\":%" G_GUINT64_FORMAT ",\"dirty_sync_count\":%" G_GUINT64_FORMAT
        ",\"dirty_pages_rate\":%" G_GUINT64_FORMAT ",\"bytes_transferred\":%" G_GUINT64_FORMAT
        ",\"bandwidth\":%" G_GUINT64_FORMAT ",\"first_round_bandwidth\":%" G_GUINT64_FORMAT
        ",\"throughput\":%" G_GUINT64_FORMAT
        ",\"pages_total\":%" G_GUINT64_FORMAT ",\"pages_sent\":%" G_GUINT64_FORMAT
        ",\"pages_zero\":%" G_GUINT64_FORMAT ",\"pages_untouched\":%" G_GUINT64_FORMAT
        ",\"remaining_bytes\":%" G_GUINT64_FORMAT ",\"pages_verified\":%" G_GUINT64_FORMAT
        ",\"verify_mismatches\":%" G_GUINT64_FORMAT ",\"migration_cpu_s\":%.3f"
        ",\"data_cpu_s\":%.3f,\"registration_time_ms\":%" G_GUINT64_FORMAT
        ",\"forced_switchover\":%s",
        s->data_connections, s->total_time_ms, s->setup_time_ms, s->downtime_ms,
        s->expected_downtime_ms > 1000000000 ? 0 : s->expected_downtime_ms, s->verify_time_ms,
        s->rounds, s->dirty_sync_count, s->dirty_pages_rate, s->bytes_transferred, s->bandwidth,
        s->first_round_bandwidth, s->throughput, s->pages_total, s->pages_sent, s->pages_zero, s->pages_untouched,
        s->remaining_bytes, s->pages_verified, s->verify_mismatches, s->cpu_time_us / 1e6,
        s->data_cpu_us / 1e6, s->registration_time_ms,
        s->forced_switchover ? "true" : "false");
    g_string_append_printf(o,
        ",\"guest\":{\"checked\":%s,\"intact\":%s,\"running\":%s,\"pages_checked\":%"
        G_GUINT64_FORMAT ",\"pages_bad\":%" G_GUINT64_FORMAT ",\"first_bad_page\":%"
        G_GUINT64_FORMAT ",\"pages_written\":%" G_GUINT64_FORMAT ",\"pages_rezeroed\":%"
        G_GUINT64_FORMAT "}",
        r->guest_checked ? "true" : "false", r->guest_ok ? "true" : "false",
        r->guest_running ? "true" : "false", r->guest.pages_checked, r->guest.pages_bad,
        r->guest.first_bad_page, r->guest.pages_written, r->guest.pages_rezeroed);
    g_string_append_printf(o,
        ",\"postcopy\":{\"active\":%s,\"pages_discarded\":%" G_GUINT64_FORMAT
        ",\"pages_on_demand\":%" G_GUINT64_FORMAT ",\"pages_background\":%" G_GUINT64_FORMAT
        ",\"pages_zero_copy\":%" G_GUINT64_FORMAT
        ",\"faults\":%" G_GUINT64_FORMAT ",\"faults_zero\":%" G_GUINT64_FORMAT ",\"blocktime_ms\":%.3f,\"fault_median_us\":%"
        G_GUINT64_FORMAT ",\"fault_p99_us\":%" G_GUINT64_FORMAT ",\"source_cpu_s\":%.3f"
        ",\"fault_hist\":[", s->postcopy ? "true" : "false", s->pages_discarded,
        s->pages_on_demand, s->pages_background, s->pages_zero_copy, s->faults, s->faults_zero,
        s->blocktime_us / 1e3,
        s->fault_median_us, s->fault_p99_us, s->postcopy_cpu_us / 1e6);
    for (int i = 0; i < RDMIG_FAULT_HIST_BUCKETS; i++)
        g_string_append_printf(o, "%s%" G_GUINT64_FORMAT, i ? "," : "", s->fault_hist[i]);
    g_string_append(o, "],\"threads\":[");
    for (uint32_t i = 0; i < s->blocktime_threads; i++)
        g_string_append_printf(o, "%s{\"tid\":%u,\"blocktime_us\":%" G_GUINT64_FORMAT "}",
                               i ? "," : "", s->blocktime_per_thread[i].tid,
                               s->blocktime_per_thread[i].us);
    g_string_append(o, "]}");
    g_string_append_printf(o, ",\"recovery\":{\"pauses\":%u,\"recover_failures\":%u,"
                           "\"paused_ms\":%" G_GUINT64_FORMAT ",\"last_recovery_ms\":%"
                           G_GUINT64_FORMAT ",\"pages_missing\":%" G_GUINT64_FORMAT
                           ",\"pause_reason\":", s->pauses, s->recover_failures, s->paused_ms,
                           s->last_recovery_ms, s->pages_missing);
    json_str(o, s->pause_reason);
    g_string_append(o, "}");
    g_string_append_printf(o, ",\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f}", r->cpu_user,
                           r->cpu_sys);
    return g_string_free(o, FALSE);
}

static void report_table(const Report *r, FILE *f)
{
    const RdmigStats *s = &r->st;
    g_autofree char *bytes = human_bytes((double)s->bytes_transferred);
    g_autofree char *thr = human_bytes((double)s->throughput);
    g_autofree char *bw = human_bytes((double)s->bandwidth);
    fprintf(f, "%s: %s\n", r->role, rdmig_state_str(s->state));
    if (r->error)
        fprintf(f, "  %-22s %s\n", "error", r->error->message);
    fprintf(f, "  %-22s %s x%u\n", "transport", s->transport[0] ? s->transport : "-",
            s->data_connections);
    if (s->dirty_method[0])
        fprintf(f, "  %-22s %s\n", "dirty tracking", s->dirty_method);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " ms (setup %" G_GUINT64_FORMAT " ms)\n",
            "total time", s->total_time_ms, s->setup_time_ms);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " ms (of which verify %" G_GUINT64_FORMAT " ms)\n",
            "downtime", s->downtime_ms, s->verify_time_ms);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT " dirty syncs)%s\n",
            "rounds", s->rounds, s->dirty_sync_count,
            s->forced_switchover ? ", forced switchover" : "");
    fprintf(f, "  %-22s %s\n", "transferred", bytes);
    fprintf(f, "  %-22s %s/s (last round %s/s)\n", "throughput", thr, bw);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " total, %" G_GUINT64_FORMAT " sent, %"
            G_GUINT64_FORMAT " zero, %" G_GUINT64_FORMAT " never touched\n", "pages",
            s->pages_total, s->pages_sent, s->pages_zero, s->pages_untouched);
    if (s->pages_verified || s->verify_mismatches)
        fprintf(f, "  %-22s %" G_GUINT64_FORMAT " verified, %" G_GUINT64_FORMAT " mismatched\n",
                "verification", s->pages_verified, s->verify_mismatches);
    if (r->guest_checked)
        fprintf(f, "  %-22s %s, %s, %" G_GUINT64_FORMAT " pages checked, %" G_GUINT64_FORMAT
                " bad\n", "guest", r->guest_running ? "running" : "stopped",
                r->guest_ok ? "intact" : "CORRUPT", r->guest.pages_checked, r->guest.pages_bad);
    fprintf(f, "  %-22s %.2f s migration threads (moving pages %.2f s); process %.2f s user, "
            "%.2f s system\n", "cpu", s->cpu_time_us / 1e6, s->data_cpu_us / 1e6, r->cpu_user,
            r->cpu_sys);
    if (s->postcopy) {
        fprintf(f, "  %-22s %" G_GUINT64_FORMAT " pages discarded, %" G_GUINT64_FORMAT
                " pulled on demand, %" G_GUINT64_FORMAT " in the background\n", "postcopy",
                s->pages_discarded, s->pages_on_demand, s->pages_background);
        if (s->faults)
            fprintf(f, "  %-22s %" G_GUINT64_FORMAT " faults (%" G_GUINT64_FORMAT " zero-filled "
                    "here), blocktime %.1f ms, pulled-page median %" G_GUINT64_FORMAT " us, p99 %"
                    G_GUINT64_FORMAT " us\n", "guest faults", s->faults, s->faults_zero,
                    s->blocktime_us / 1e3, s->fault_median_us, s->fault_p99_us);
        if (s->postcopy_cpu_us)
            fprintf(f, "  %-22s %.3f s\n", "source CPU in postcopy", s->postcopy_cpu_us / 1e6);
    }
    if (s->registration_time_ms)
        fprintf(f, "  %-22s %" G_GUINT64_FORMAT " ms\n", "memory registration",
                s->registration_time_ms);
}

static void cpu_times(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* --oracle DIR: the file of this side's record. */
static char *oracle_path(const char *role)
{
    return g_build_filename(opt.oracle_dir, role, NULL);
}

/* The oracle's record into DIR/@role; a failure to write it fails the run. */
static bool oracle_save(SgOracle *oracle, const char *role, Report *r)
{
    g_autofree char *path = oracle_path(role);
    g_autoptr(GError) err = NULL;
    if (!sg_oracle_save(oracle, path, &err)) {
        fprintf(stderr, "rdmig: %s\n", err->message);
        return false;
    }
    r->oracle = g_steal_pointer(&path);
    return true;
}

/* Lets the guest run a little, then stops it and checks every page; the
 * destination's oracle takes the pages the guest did not write meanwhile. */
static void check_guest(Guest *gu, Report *r, int run_ms)
{
    SyntheticGuest *g = gu->g;
    SgStats before, after;
    sg_get_stats(g, &before);
    if (run_ms > 0)
        g_usleep((gulong)run_ms * 1000);
    sg_get_stats(g, &after);
    r->guest_running = sg_running(g) &&
                       (opt.dirty_rate <= 0 || after.pages_written > before.pages_written);
    sg_pause(g);
    if (gu->oracle && gu->destination) {
        sg_oracle_take_all(gu->oracle);
        if (!oracle_save(gu->oracle, "destination.oracle", r))
            r->ok = false;
    }
    r->guest_ok = sg_check(g, &r->guest);
    r->guest.pages_written = after.pages_written;
    r->guest_checked = true;
}

static int finish(Report *r, Guest *g, int run_ms)
{
    if (g)
        check_guest(g, r, run_ms);
    cpu_times(&r->cpu_user, &r->cpu_sys);
    if (opt.json) {
        g_autofree char *j = report_json(r);
        printf("%s\n", j);
    } else {
        report_table(r, stdout);
    }
    fflush(stdout);
    g_clear_pointer(&r->oracle, g_free);
    if (r->ok && (!r->guest_checked || r->guest_ok))
        return 0;
    if (r->st.state == RDMIG_STATE_CANCELLED)
        return EXIT_CANCELLED;
    return EXIT_FAILED;
}

/* ------------------------------------------------------------------ commands */

/* The destination after start(): progress, then the report. */
static int recv_run(RdmigSession *s, Guest *gu)
{
    g_autoptr(GError) err = NULL;
    g_atomic_pointer_set(&current_session, s);
    if (opt.print_address) {
        printf("%s\n", rdmig_session_listen_address(s));
        fflush(stdout);
    }
    if (!opt.quiet)
        fprintf(stderr, "rdmig recv: listening on %s\n", rdmig_session_listen_address(s));
    progress_loop(s);
    Report r = { .role = "destination" };
    r.ok = rdmig_session_wait(s, &err);
    g_atomic_pointer_set(&current_session, NULL);
    monitor_close();
    r.error = err;
    rdmig_session_get_stats(s, &r.st);
    if (!r.ok && r.st.postcopy) {
        /* Guest threads may wait for pages that will not come: stopping
         * them would wait forever, and letting them run would read zeros. */
        _exit(finish(&r, NULL, 0));
    }
    return finish(&r, r.ok ? gu : NULL, opt.run_after_ms);
}

static int cmd_recv(void)
{
    g_autoptr(GError) err = NULL;
    RdmigParams p;
    if (!opt.address) {
        fprintf(stderr, "rdmig recv: --listen ADDR is required (e.g. --listen 0.0.0.0:4444)\n");
        return EXIT_USAGE;
    }
    if (!build_params(&p, &err)) {
        fprintf(stderr, "rdmig recv: %s\n", err->message);
        return EXIT_USAGE;
    }
    Guest gu = { .g = build_guest(&err), .destination = true };
    if (!gu.g) {
        fprintf(stderr, "rdmig recv: %s\n", err->message);
        return EXIT_USAGE;
    }
    RdmigSession *s = rdmig_session_new(RDMIG_ROLE_DESTINATION, &p, &err);
    if (!s || !add_blocks(s, gu.g, &err)) {
        fprintf(stderr, "rdmig recv: %s\n", err->message);
        rdmig_session_free(s);
        sg_free(gu.g);
        return EXIT_USAGE;
    }
    if (opt.oracle_dir)
        gu.oracle = sg_oracle_new(gu.g);
    gu.s = s;
    rdmig_session_set_guest_ops(s, &guest_ops, &gu);
    if (opt.prealloc)
        sg_prealloc(gu.g);
    int rc = EXIT_FAILED;
    if (!rdmig_session_start(s, opt.address, &err)) {
        fprintf(stderr, "rdmig recv: %s\n", err->message);
        if (g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_INVALID))
            rc = EXIT_USAGE;
    } else if (!monitor_open("recv", &err)) {
        fprintf(stderr, "rdmig recv: %s\n", err->message);
        rdmig_session_cancel(s);
    } else {
        rc = recv_run(s, &gu);
    }
    /* The session's thread touches guest RAM: it ends before the RAM goes. */
    rdmig_session_free(s);
    sg_oracle_free(gu.oracle);
    sg_free(gu.g);
    return rc;
}

static void *cancel_timer(void *data)
{
    RdmigSession *s = data;
    g_usleep((gulong)opt.cancel_after_ms * 1000);
    rdmig_session_cancel(s);
    return NULL;
}

/* The source from start() to its report. */
static int source_run(RdmigSession *s, Guest *gu, const char *address)
{
    g_autoptr(GError) err = NULL;
    g_atomic_pointer_set(&current_session, s);
    Report r = { .role = "source" };
    GThread *timer = NULL;
    if (rdmig_session_start(s, address, &err)) {
        if (opt.cancel_after_ms > 0)
            timer = g_thread_new("cancel", cancel_timer, s);
        g_autoptr(GError) merr = NULL;
        if (!monitor_open("send", &merr)) {
            fprintf(stderr, "rdmig send: %s; cancelling\n", merr->message);
            rdmig_session_cancel(s);
        }
        progress_loop(s);
        r.ok = rdmig_session_wait(s, &err);
        monitor_close();
    } else {
        fprintf(stderr, "rdmig send: %s\n", err->message);
        if (g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_INVALID)) {
            /* A malformed address is bad usage, not a failed migration. */
            g_atomic_pointer_set(&current_session, NULL);
            return EXIT_USAGE;
        }
    }
    g_atomic_pointer_set(&current_session, NULL);
    if (timer)
        g_thread_join(timer);
    r.error = err;
    rdmig_session_get_stats(s, &r.st);
    /* Completed: the oracle's record of the memory at the final stop. */
    if (r.ok && gu->oracle && !oracle_save(gu->oracle, "source.oracle", &r))
        r.ok = false;
    /* After a completion the guest is the destination's: nothing to check here.
     * After a failure it must be running here, with every page intact. */
    return finish(&r, r.ok ? NULL : gu, opt.stop_after_failure_ms);
}

/* Source side of send and demo. */
static int run_source(const char *address)
{
    g_autoptr(GError) err = NULL;
    RdmigParams p;
    if (!build_params(&p, &err)) {
        fprintf(stderr, "rdmig send: %s\n", err->message);
        return EXIT_USAGE;
    }
    Guest gu = { .g = build_guest(&err) };
    if (!gu.g) {
        fprintf(stderr, "rdmig send: %s\n", err->message);
        return EXIT_USAGE;
    }
    RdmigSession *s = rdmig_session_new(RDMIG_ROLE_SOURCE, &p, &err);
    if (!s || !add_blocks(s, gu.g, &err)) {
        fprintf(stderr, "rdmig send: %s\n", err->message);
        rdmig_session_free(s);
        sg_free(gu.g);
        return EXIT_USAGE;
    }
    sg_fill(gu.g);
    if (opt.oracle_dir)
        gu.oracle = sg_oracle_new(gu.g);
    sg_resume(gu.g);
    gu.s = s;
    rdmig_session_set_guest_ops(s, &guest_ops, &gu);
    int rc = source_run(s, &gu, address);
    /* The session's thread touches guest RAM: it ends before the RAM goes. */
    rdmig_session_free(s);
    sg_oracle_free(gu.oracle);
    sg_free(gu.g);
    return rc;
}

/* recover, send --resume, status, cancel: a word to a running send or recv. */
static int cmd_monitor(const char *what, const char *cmd)
{
    if (!opt.monitor) {
        fprintf(stderr, "rdmig %s: --monitor PATH is required (the running send or recv "
                "printed it: 'monitor on PATH')\n", what);
        return EXIT_USAGE;
    }
    g_autoptr(GError) err = NULL;
    g_autofree char *reply = monitor_call(opt.monitor, cmd, &err);
    if (!reply) {
        fprintf(stderr, "rdmig %s: %s\n", what, err->message);
        return EXIT_FAILED;
    }
    if (g_str_has_prefix(reply, "error ")) {
        fprintf(stderr, "rdmig %s: %s\n", what, reply + 6);
        return EXIT_FAILED;
    }
    printf("%s\n", g_str_has_prefix(reply, "ok ") ? reply + 3 : reply);
    return 0;
}

static int cmd_recover(void)
{
    if (!opt.address) {
        fprintf(stderr, "rdmig recover: --listen ADDR is required (where the source is to "
                "reconnect, e.g. --listen 0.0.0.0:4445)\n");
        return EXIT_USAGE;
    }
    g_autofree char *cmd = g_strdup_printf("recover %s", opt.address);
    return cmd_monitor("recover", cmd);
}

static int cmd_send(void)
{
    if (opt.resume) {
        if (!opt.address) {
            fprintf(stderr, "rdmig send --resume: --to ADDR is required (the address 'rdmig "
                    "recover' printed)\n");
            return EXIT_USAGE;
        }
        g_autofree char *cmd = g_strdup_printf("recover %s", opt.address);
        return cmd_monitor("send --resume", cmd);
    }
    if (!opt.address) {
        fprintf(stderr, "rdmig send: --to ADDR is required (the address 'rdmig recv' listens on)\n");
        return EXIT_USAGE;
    }
    return run_source(opt.address);
}

static int cmd_demo(const char *self)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(argv, g_strdup(self));
    g_ptr_array_add(argv, g_strdup("recv"));
    g_ptr_array_add(argv, g_strdup("--listen"));
    g_ptr_array_add(argv, g_strdup("127.0.0.1:0"));
    g_ptr_array_add(argv, g_strdup("--print-address"));
    g_ptr_array_add(argv, g_strdup("--quiet"));
    g_ptr_array_add(argv, g_strdup_printf("--ram-size=%s", opt.ram_size_str ? opt.ram_size_str
                                                                            : "256M"));
    g_ptr_array_add(argv, g_strdup_printf("--blocks=%d", opt.blocks));
    g_ptr_array_add(argv, g_strdup_printf("--vcpus=%d", opt.vcpus));
    g_ptr_array_add(argv, g_strdup_printf("--dirty-rate=%g", opt.dirty_rate));
    g_ptr_array_add(argv, g_strdup_printf("--run-after-ms=%d", opt.run_after_ms));
    g_ptr_array_add(argv, g_strdup_printf("--keepalive-ms=%d", opt.keepalive_ms));
    g_ptr_array_add(argv, g_strdup_printf("--peer-timeout-ms=%d", opt.peer_timeout_ms));
    if (opt.transport)
        g_ptr_array_add(argv, g_strdup_printf("--transport=%s", opt.transport));
    if (opt.oracle_dir)
        g_ptr_array_add(argv, g_strdup_printf("--oracle=%s", opt.oracle_dir));
    if (opt.rezero_percent)
        g_ptr_array_add(argv, g_strdup_printf("--rezero-percent=%d", opt.rezero_percent));
    if (opt.prealloc)
        g_ptr_array_add(argv, g_strdup("--prealloc"));
    if (opt.json)
        g_ptr_array_add(argv, g_strdup("--json"));
    g_ptr_array_add(argv, NULL);
    GPid pid;
    int out_fd;
    g_autoptr(GError) err = NULL;
    if (!g_spawn_async_with_pipes(NULL, (char **)argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                                  NULL, NULL, &pid, NULL, &out_fd, NULL, &err)) {
        fprintf(stderr, "rdmig demo: cannot start the destination process: %s\n", err->message);
        return EXIT_FAILED;
    }
    FILE *out = fdopen(out_fd, "r");
    char line[256];
    if (!fgets(line, sizeof(line), out)) {
        fprintf(stderr, "rdmig demo: the destination process did not start listening\n");
        fclose(out);
        waitpid(pid, NULL, 0);
        return EXIT_FAILED;
    }
    g_strchomp(line);
    if (!opt.quiet)
        fprintf(stderr, "rdmig demo: destination (pid %d) listening on %s; migrating a %s guest "
                "dirtying %g MiB/s\n", pid, line, opt.ram_size_str ? opt.ram_size_str : "256M",
                opt.dirty_rate);
    int rc = run_source(line);
    int status = 0;
    /* Relay the destination's report after ours. */
    if (rc != 0 && rc != EXIT_USAGE)
        kill(pid, SIGTERM); /* it may still wait for a source that gave up */
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), out)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(out);
    waitpid(pid, &status, 0);
    int drc = WIFEXITED(status) ? WEXITSTATUS(status) : EXIT_FAILED;
    return rc ? rc : drc;
}

int main(int argc, char **argv)
{
    const char *usage = "COMMAND [OPTIONS]\n\n"
        "Commands:\n"
        "  recv --listen ADDR   destination: receive a guest and run it\n"
        "  send --to ADDR       source: start a synthetic guest and migrate it\n"
        "  demo                 both ends as local processes over loopback\n"
        "  recover --monitor PATH --listen ADDR   paused destination: await the source\n"
        "  send --resume --monitor PATH --to ADDR paused source: reconnect there\n"
        "  status --monitor PATH, cancel --monitor PATH\n\n"
        "ADDR is HOST:PORT or [IPV6]:PORT. Exit status: 0 completed, 1 failed,\n"
        "2 bad usage, 3 cancelled.";
    GOptionEntry entries[] = {
        { "listen", 0, 0, G_OPTION_ARG_STRING, &opt.address, "recv: address to listen on", "ADDR" },
        { "to", 0, 0, G_OPTION_ARG_STRING, &opt.address, "send: destination address", "ADDR" },
        { "ram-size", 0, 0, G_OPTION_ARG_STRING, &opt.ram_size_str, "guest RAM (default 256M)", "SIZE" },
        { "blocks", 0, 0, G_OPTION_ARG_INT, &opt.blocks, "split RAM into N blocks (default 1)", "N" },
        { "dirty-rate", 0, 0, G_OPTION_ARG_DOUBLE, &opt.dirty_rate, "MiB/s the guest writes (default 0)", "R" },
        { "pattern", 0, 0, G_OPTION_ARG_STRING, &opt.pattern_str, "uniform (default) or hot", "P" },
        { "vcpus", 0, 0, G_OPTION_ARG_INT, &opt.vcpus, "guest vCPU threads (default 2)", "N" },
        { "seed", 0, 0, G_OPTION_ARG_INT64, &opt.seed, "guest contents seed", "N" },
        { "rezero-percent", 0, 0, G_OPTION_ARG_INT, &opt.rezero_percent, "share of guest writes that zero a page (default 0)", "P" },
        { "oracle", 0, 0, G_OPTION_ARG_FILENAME, &opt.oracle_dir, "tests: the guest writes the SHA-256 of every page to DIR/source.oracle (at the final stop) or DIR/destination.oracle (as migrated)", "DIR" },
        { "downtime-ms", 0, 0, G_OPTION_ARG_INT, &opt.downtime_ms, "downtime limit (default 300)", "MS" },
        { "max-bandwidth", 0, 0, G_OPTION_ARG_DOUBLE, &opt.max_bandwidth_mib, "MiB/s cap (default none)", "R" },
        { "max-rounds", 0, 0, G_OPTION_ARG_INT, &opt.max_rounds, "precopy rounds before giving up (default 30)", "N" },
        { "max-time-ms", 0, 0, G_OPTION_ARG_INT, &opt.max_time_ms, "precopy time before giving up (default none)", "MS" },
        { "on-no-converge", 0, 0, G_OPTION_ARG_STRING, &opt.on_no_converge, "fail (default), switchover or postcopy", "WHAT" },
        { "postcopy", 0, 0, G_OPTION_ARG_NONE, &opt.postcopy, "send: allow postcopy (the destination must support it; SIGUSR1 starts it)", NULL },
        { "postcopy-after", 0, 0, G_OPTION_ARG_STRING, &opt.postcopy_after, "send: start postcopy after N rounds, or a time (2s, 500ms)", "N|TIME" },
        { "connections", 0, 0, G_OPTION_ARG_INT, &opt.connections, "parallel data connections (default 1)", "N" },
        { "transport", 0, 0, G_OPTION_ARG_STRING, &opt.transport, "auto (default), tcp or rdma", "T" },
        { "dirty-method", 0, 0, G_OPTION_ARG_STRING, &opt.dirty_method, "auto, uffd-wp or soft-dirty", "M" },
        { "no-verify", 0, 0, G_OPTION_ARG_NONE, &opt.no_verify, "skip the per-page hash check", NULL },
        { "postcopy-placement", 0, 0, G_OPTION_ARG_STRING, &opt.postcopy_placement, "recv: place pulled pages by 'continue' (zero copy, default where the kernel can) or 'copy' (from a staging buffer)", "HOW" },
        { "keepalive-ms", 0, 0, G_OPTION_ARG_INT, &opt.keepalive_ms, "keepalive period (default 1000)", "MS" },
        { "peer-timeout-ms", 0, 0, G_OPTION_ARG_INT, &opt.peer_timeout_ms, "peer silence limit (default 10000)", "MS" },
        { "connect-timeout-ms", 0, 0, G_OPTION_ARG_INT, &opt.connect_timeout_ms, "connect timeout (default 10000)", "MS" },
        { "rdma-ack-timeout", 0, 0, G_OPTION_ARG_INT, &opt.rdma_ack_timeout, "RDMA: resend an unacked packet after 4.096 us x 2^N (default 14: 67 ms; 0: rdma_cm's choice)", "N" },
        { "json", 0, 0, G_OPTION_ARG_NONE, &opt.json, "final report as JSON", NULL },
        { "quiet", 'q', 0, G_OPTION_ARG_NONE, &opt.quiet, "no progress line", NULL },
        { "print-address", 0, 0, G_OPTION_ARG_NONE, &opt.print_address, "recv: print the bound address on stdout first", NULL },
        { "prealloc", 0, 0, G_OPTION_ARG_NONE, &opt.prealloc, "recv: allocate all guest RAM before listening, like QEMU's -mem-prealloc", NULL },
        { "run-after-ms", 0, 0, G_OPTION_ARG_INT, &opt.run_after_ms, "recv: run the guest this long before checking it (default 300)", "MS" },
        { "cancel-after-ms", 0, 0, G_OPTION_ARG_INT, &opt.cancel_after_ms, "send: cancel after this long", "MS" },
        { "monitor", 0, 0, G_OPTION_ARG_STRING, &opt.monitor, "send/recv: monitor socket (default /tmp/rdmig-PID.sock); recover/status/cancel/send --resume: the one to talk to", "PATH" },
        { "resume", 0, 0, G_OPTION_ARG_NONE, &opt.resume, "send: resume a paused migration (with --monitor and --to)", NULL },
        { "precopy-resume", 0, 0, G_OPTION_ARG_NONE, &opt.precopy_resume, "send, recv: a broken precopy link pauses and can be resumed, rather than failing (both sides)", NULL },
        { NULL },
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new(usage);
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "rdmig: %s (see rdmig --help)\n", err->message);
        return EXIT_USAGE;
    }
    if (argc < 2) {
        g_autofree char *help = g_option_context_get_help(ctx, TRUE, NULL);
        fprintf(stderr, "%s", help);
        return EXIT_USAGE;
    }
    if (argc > 2) {
        fprintf(stderr, "rdmig: unexpected argument '%s' (see rdmig --help)\n", argv[2]);
        return EXIT_USAGE;
    }
    install_signals();
    if (!strcmp(argv[1], "recv"))
        return cmd_recv();
    if (!strcmp(argv[1], "send"))
        return cmd_send();
    if (!strcmp(argv[1], "recover"))
        return cmd_recover();
    if (!strcmp(argv[1], "status"))
        return cmd_monitor("status", "status");
    if (!strcmp(argv[1], "cancel"))
        return cmd_monitor("cancel", "cancel");
    if (!strcmp(argv[1], "demo")) {
        if (opt.address) {
            fprintf(stderr, "rdmig demo: runs both ends on loopback; --to/--listen do not apply\n");
            return EXIT_USAGE;
        }
        return cmd_demo("/proc/self/exe");
    }
    fprintf(stderr, "rdmig: unknown command '%s': expected recv, send, demo, recover, status "
            "or cancel\n", argv[1]);
    return EXIT_USAGE;
}

/* SPDX-License-Identifier: MIT */
/*
 * The public session API, the state machine's one entry point, and what both
 * roles share: the control channel helpers, the keepalive, layout checks.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include "session.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <linux/magic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "state.h"
#include "transport/address.h"

G_DEFINE_QUARK(rdmig-error-quark, rdmig_error)

static const char *const error_names[] = {
    [RDMIG_ERROR_CONNECT] = "connect",     [RDMIG_ERROR_PROTOCOL] = "protocol",
    [RDMIG_ERROR_VERSION] = "version",     [RDMIG_ERROR_UNSUPPORTED] = "unsupported",
    [RDMIG_ERROR_PEER] = "peer",           [RDMIG_ERROR_RESOURCE] = "resource",
    [RDMIG_ERROR_CANCELLED] = "cancelled", [RDMIG_ERROR_AUTH] = "auth",
    [RDMIG_ERROR_INVALID] = "invalid",     [RDMIG_ERROR_LAYOUT] = "layout",
    [RDMIG_ERROR_CONVERGE] = "converge",   [RDMIG_ERROR_VERIFY] = "verify",
};

const char *rdmig_error_code_str(RdmigErrorCode code)
{
    return (unsigned)code < G_N_ELEMENTS(error_names) && error_names[code] ? error_names[code]
                                                                           : "unknown";
}

void rdmig_params_init(RdmigParams *p)
{
    memset(p, 0, sizeof(*p));
    p->downtime_limit_ms = 300;
    p->max_rounds = 30;
    p->on_no_converge = RDMIG_NO_CONVERGE_FAIL;
    p->verify = true;
    p->data_connections = 1;
    g_strlcpy(p->transport, "auto", sizeof(p->transport));
    p->dirty_method = RDMIG_DIRTY_AUTO;
    p->keepalive_ms = 1000;
    p->peer_timeout_ms = 10000;
    p->connect_timeout_ms = 10000;
    /* On soft-RoCE at 0.5% loss a 64 MiB postcopy pull took 12 s with this
     * and did not end in 150 s with rdma_cm's own (docs/BENCHMARKS.md). */
    p->rdma_ack_timeout = 14;
    p->postcopy_zero_copy = true;
}

static bool params_check(const RdmigParams *p, GError **error)
{
    if (p->data_connections < 1 || p->data_connections > RDMIG_MAX_DATA_CONNS) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "data_connections must be 1..%d, not %u", RDMIG_MAX_DATA_CONNS,
                    p->data_connections);
        return false;
    }
    if (!p->downtime_limit_ms || !p->max_rounds) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "downtime_limit_ms and max_rounds must be positive");
        return false;
    }
    if (!p->keepalive_ms || p->peer_timeout_ms < 2 * p->keepalive_ms) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "peer_timeout_ms (%u) must be at least twice keepalive_ms (%u)",
                    p->peer_timeout_ms, p->keepalive_ms);
        return false;
    }
    if (p->rdma_ack_timeout > 31) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "rdma_ack_timeout is an exponent (4.096 us x 2^N), 0..31, not %u",
                    p->rdma_ack_timeout);
        return false;
    }
    if (!p->postcopy && (p->on_no_converge == RDMIG_NO_CONVERGE_POSTCOPY ||
                         p->postcopy_after_rounds || p->postcopy_after_ms)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "postcopy triggers (on_no_converge postcopy, postcopy_after_*) need "
                    "params.postcopy");
        return false;
    }
    if (strcmp(p->transport, "auto") && !rdmig_transport_lookup(p->transport)) {
        g_autoptr(GString) names = g_string_new(NULL);
        for (const RdmigTransportOps *const *t = rdmig_transport_list(); *t; t++)
            g_string_append_printf(names, ", %s", (*t)->name);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "unknown transport '%s' (this build has: auto%s)", p->transport, names->str);
        return false;
    }
    return true;
}

RdmigSession *rdmig_session_new(RdmigRole role, const RdmigParams *params, GError **error)
{
    RdmigParams p;
    if (params)
        p = *params;
    else
        rdmig_params_init(&p);
    if (!params_check(&p, error))
        return NULL;
    int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0 || stop < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "eventfd: %s", g_strerror(errno));
        if (wake >= 0)
            close(wake);
        if (stop >= 0)
            close(stop);
        return NULL;
    }
    RdmigSession *s = g_new0(RdmigSession, 1);
    s->role = role;
    s->params = p;
    s->blocks = g_ptr_array_new();
    s->wake_fd = wake;
    s->stop_fd = stop;
    s->listen_fd = -1;
    s->postcopy_uffd = -1;
    s->recover_fd_new = -1;
    g_mutex_init(&s->lock);
    g_mutex_init(&s->data_err_lock);
    g_mutex_init(&s->keepalive_lock);
    g_cond_init(&s->keepalive_cond);
    s->state = RDMIG_STATE_NONE;
    s->stats.state = RDMIG_STATE_NONE;
    return s;
}

static void block_free(RdmigRamBlock *b)
{
    if (b->alias)
        munmap(b->alias, b->length);
    g_free(b->dirty);
    g_free(b->hashes);
    g_free(b->hash_known);
    g_free(b->needed);
    g_free(b->unrequested);
    g_free(b->received);
    g_free(b->unverified);
    g_free(b->sent_unacked);
    g_free(b);
}

static void cancel_now(RdmigSession *s);

void rdmig_session_free(RdmigSession *s)
{
    if (!s)
        return;
    if (s->thread && !s->joined) {
        cancel_now(s);
        rdmig_session_wait(s, NULL);
    }
    for (guint i = 0; i < s->blocks->len; i++)
        block_free(s->blocks->pdata[i]);
    g_ptr_array_free(s->blocks, TRUE);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    g_free(s->listen_address);
    /* After a failed postcopy, guest threads touching pages that never came
     * wait on this descriptor; closing it would let them read zeros.  The
     * caller stops the guest before freeing the session. */
    if (s->postcopy_uffd >= 0)
        close(s->postcopy_uffd);
    if (s->recover_fd_new >= 0)
        close(s->recover_fd_new);
    g_free(s->recover_address);
    close(s->wake_fd);
    close(s->stop_fd);
    g_clear_error(&s->error);
    g_free(s->data_error);
    if (s->device_state)
        g_byte_array_unref(s->device_state);
    g_mutex_clear(&s->lock);
    g_mutex_clear(&s->data_err_lock);
    g_mutex_clear(&s->keepalive_lock);
    g_cond_clear(&s->keepalive_cond);
    g_free(s);
}

bool rdmig_session_add_ram_block(RdmigSession *s, const char *name, void *host, uint64_t length,
                                 uint32_t page_size, GError **error)
{
    long sys = sysconf(_SC_PAGESIZE);
    if (s->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s' added after the session started", name ? name : "");
        return false;
    }
    if (!name || !*name || strlen(name) > RDMIG_MAX_NAME) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block name must be 1..%d bytes", RDMIG_MAX_NAME);
        return false;
    }
    if (page_size < (uint32_t)sys || (page_size & (page_size - 1))) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s': page size %u is not a power of two >= %ld", name, page_size,
                    sys);
        return false;
    }
    if (!host || (uintptr_t)host % page_size || !length || length % page_size) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s': address %p and length %" G_GUINT64_FORMAT
                    " must be non-zero multiples of the page size %u", name, host, length,
                    page_size);
        return false;
    }
    if (s->blocks->len == RDMIG_MAX_BLOCKS) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "more than %d RAM blocks",
                    RDMIG_MAX_BLOCKS);
        return false;
    }
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *o = s->blocks->pdata[i];
        if (strcmp(o->name, name) == 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "RAM block '%s' added twice",
                        name);
            return false;
        }
        if ((uint8_t *)host < o->host + o->length && o->host < (uint8_t *)host + length) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "RAM block '%s' overlaps block '%s'", name, o->name);
            return false;
        }
    }
    RdmigRamBlock *b = g_new0(RdmigRamBlock, 1);
    g_strlcpy(b->name, name, sizeof(b->name));
    b->host = host;
    b->length = length;
    b->page_size = page_size;
    b->npages = length / page_size;
    b->fd = -1;
    g_ptr_array_add(s->blocks, b);
    return true;
}

/* Is [@host, +@length) a shared mapping of the file @st from @offset on?
 * Checked in /proc/self/maps: reads into that file must be what the guest
 * sees at @host. */
static bool maps_file(const uint8_t *host, uint64_t length, const struct stat *st,
                      uint64_t offset)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return false;
    uint64_t want = (uintptr_t)host, end = want + length;
    char line[4096];
    while (want < end && fgets(line, sizeof(line), f)) {
        unsigned long long lo, hi, off, ino;
        unsigned maj, mn;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &lo, &hi, perms, &off, &maj, &mn,
                   &ino) != 7 || hi <= want || lo > want)
            continue;
        /* The VMA holding the next byte we want. */
        if (perms[3] != 's' || ino != (unsigned long long)st->st_ino ||
            makedev(maj, mn) != st->st_dev || off + (want - lo) != offset + (want - (uintptr_t)host))
            break;
        want = hi;
    }
    fclose(f);
    return want >= end;
}

bool rdmig_session_set_ram_block_fd(RdmigSession *s, const char *name, int fd, uint64_t offset,
                                    GError **error)
{
    if (s->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "memory file of RAM block '%s' given after the session started",
                    name ? name : "");
        return false;
    }
    RdmigRamBlock *b = NULL;
    for (guint i = 0; i < s->blocks->len && !b; i++)
        if (name && !strcmp(((RdmigRamBlock *)s->blocks->pdata[i])->name, name))
            b = s->blocks->pdata[i];
    if (!b) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "no RAM block '%s' to give a memory file to", name ? name : "");
        return false;
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || offset % b->page_size ||
        (uint64_t)st.st_size < offset || (uint64_t)st.st_size - offset < b->length) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s': fd %d at offset %" G_GUINT64_FORMAT " is not a memory "
                    "file (memfd or tmpfs) holding its %" G_GUINT64_FORMAT " bytes at a page "
                    "boundary", name, fd, offset, b->length);
        return false;
    }
    struct statfs sfs;
    if (fstatfs(fd, &sfs) < 0 || sfs.f_type != TMPFS_MAGIC) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "RAM block '%s': fd %d is not on tmpfs/shmem (a memfd): zero-copy postcopy "
                    "needs shmem's minor faults", name, fd);
        return false;
    }
    if (!maps_file(b->host, b->length, &st, offset)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s' at %p is not a shared mapping of fd %d from offset %"
                    G_GUINT64_FORMAT ": pulled pages would land in another file", name,
                    (void *)b->host, fd, offset);
        return false;
    }
    b->fd = fd;
    b->fd_offset = offset;
    return true;
}

void rdmig_session_set_guest_ops(RdmigSession *s, const RdmigGuestOps *ops, void *opaque)
{
    s->guest = *ops;
    s->guest_opaque = opaque;
}

void rdmig_session_set_dirty_ops(RdmigSession *s, const RdmigDirtyOps *ops, void *opaque)
{
    s->dirty_ops = *ops;
    s->dirty_opaque = opaque;
    s->have_dirty_ops = true;
}

void rdmig_session_set_state_func(RdmigSession *s, RdmigStateFunc func, void *opaque)
{
    s->state_func = func;
    s->state_opaque = opaque;
}

RdmigState rdmig_session_state(RdmigSession *s)
{
    g_mutex_lock(&s->lock);
    RdmigState st = s->state;
    g_mutex_unlock(&s->lock);
    return st;
}

bool rdmig_session_set_state(RdmigSession *s, RdmigState from, RdmigState to)
{
    g_mutex_lock(&s->lock);
    if (s->state != from || !rdmig_state_transition_allowed(from, to)) {
        RdmigState cur = s->state;
        g_mutex_unlock(&s->lock);
        g_debug("state change %s -> %s refused (state is %s)", rdmig_state_str(from),
                rdmig_state_str(to), rdmig_state_str(cur));
        return false;
    }
    s->state = to;
    s->stats.state = to;
    g_mutex_unlock(&s->lock);
    g_debug("%s: %s -> %s", s->role == RDMIG_ROLE_SOURCE ? "source" : "destination",
            rdmig_state_str(from), rdmig_state_str(to));
    if (s->state_func)
        s->state_func(s->state_opaque, from, to);
    return true;
}

void rdmig_session_take_error(RdmigSession *s, GError *err)
{
    g_mutex_lock(&s->lock);
    if (!s->error) {
        s->error = err;
        g_strlcpy(s->stats.error, err->message, sizeof(s->stats.error));
    } else {
        g_error_free(err);
    }
    g_mutex_unlock(&s->lock);
}

bool rdmig_session_cancelled(RdmigSession *s) { return g_atomic_int_get(&s->cancel) != 0; }

bool rdmig_session_start_postcopy(RdmigSession *s, GError **error)
{
    if (s->role != RDMIG_ROLE_SOURCE || !s->params.postcopy) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "postcopy starts on a source whose params advised it (params.postcopy)");
        return false;
    }
    RdmigState st = rdmig_session_state(s);
    if (st != RDMIG_STATE_SETUP && st != RDMIG_STATE_ACTIVE) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "postcopy cannot start in state %s", rdmig_state_str(st));
        return false;
    }
    g_atomic_int_set(&s->postcopy_requested, 1);
    return true;
}

bool rdmig_session_recover(RdmigSession *s, const char *address, GError **error)
{
    if (!address || !*address) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "recovery needs an address");
        return false;
    }
    g_mutex_lock(&s->lock);
    if (s->state != RDMIG_STATE_POSTCOPY_PAUSED && s->state != RDMIG_STATE_PRECOPY_PAUSED) {
        RdmigState st = s->state;
        g_mutex_unlock(&s->lock);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "recovery is for a migration in postcopy-paused or precopy-paused; this "
                    "one is %s", rdmig_state_str(st));
        return false;
    }
    if (s->role == RDMIG_ROLE_DESTINATION) {
        char *bound = NULL;
        int fd = rdmig_socket_listen(address, &bound, error);
        if (fd < 0) {
            g_mutex_unlock(&s->lock);
            g_prefix_error(error, "recovery listener: ");
            return false;
        }
        if (s->recover_fd_new >= 0)
            close(s->recover_fd_new);
        s->recover_fd_new = fd;
        g_free(s->listen_address);
        s->listen_address = bound;
    } else {
        g_free(s->recover_address);
        s->recover_address = g_strdup(address);
    }
    s->t_recover = g_get_monotonic_time();
    g_mutex_unlock(&s->lock);
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* Saturated: the session is being woken already. */
    }
    return true;
}

bool rdmig_session_link_lost(RdmigSession *s, const GError *err, uint64_t feature)
{
    if (!(s->features & feature) || g_atomic_int_get(&s->peer_reported) ||
        err->domain != RDMIG_ERROR)
        return false;
    /* A peer that vanished or stalled, a connection that broke or could not
     * be made: the network's fault, not the migration's.  (The destination's
     * data pollers report a broken connection as "data connection N: ...".) */
    return err->code == RDMIG_ERROR_PEER || err->code == RDMIG_ERROR_CONNECT ||
           (err->code == RDMIG_ERROR_PROTOCOL && g_str_has_prefix(err->message, "data connection"));
}

void rdmig_session_pause(RdmigSession *s, const GError *why, bool attempt)
{
    RdmigState st = rdmig_session_state(s);
    bool precopy = st == RDMIG_STATE_ACTIVE || st == RDMIG_STATE_PRECOPY_PAUSED;
    RdmigState to = precopy ? RDMIG_STATE_PRECOPY_PAUSED : RDMIG_STATE_POSTCOPY_PAUSED;
    g_warning("%s %s: %s", precopy ? "precopy" : "postcopy",
              attempt ? "recovery attempt failed" : "paused", why->message);
    if (st != to)
        rdmig_session_set_state(s, st, to);
    RDMIG_STATS_UPDATE(s, {
        if (attempt) {
            s->stats.recover_failures++;
        } else {
            s->stats.pauses++;
            s->t_pause = g_get_monotonic_time();
        }
        g_strlcpy(s->stats.pause_reason, why->message, sizeof(s->stats.pause_reason));
    });
    /* A new link starts with a clean slate for these. */
    g_atomic_int_set(&s->error_sent, 0);
    g_atomic_int_set(&s->peer_reported, 0);
    g_mutex_lock(&s->data_err_lock);
    g_clear_pointer(&s->data_error, g_free);
    g_mutex_unlock(&s->data_err_lock);
}

bool rdmig_session_resumed(RdmigSession *s)
{
    bool precopy = rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED;
    if (!(precopy ? rdmig_session_set_state(s, RDMIG_STATE_PRECOPY_PAUSED, RDMIG_STATE_ACTIVE)
                  : rdmig_session_set_state(s, RDMIG_STATE_POSTCOPY_RECOVER,
                                            RDMIG_STATE_POSTCOPY_ACTIVE)))
        return false;
    gint64 now = g_get_monotonic_time();
    RDMIG_STATS_UPDATE(s, {
        s->stats.paused_ms += (uint64_t)(now - s->t_pause) / 1000;
        s->stats.last_recovery_ms = (uint64_t)(now - s->t_recover) / 1000;
    });
    g_message("%s resumed after %" G_GINT64_FORMAT " ms paused", precopy ? "precopy" : "postcopy",
              (now - s->t_pause) / 1000);
    return true;
}

void rdmig_session_close_data(RdmigSession *s, bool drain)
{
    for (uint32_t i = 0; i < s->nconns; i++) {
        if (!s->conns[i])
            continue;
        s->tp->disconnect(s->conns[i]);
        RdmigIoReq *done[32];
        while (drain && s->tp->poll(s->conns[i], done, G_N_ELEMENTS(done)) > 0)
            ;
        s->tp->conn_close(s->conns[i]);
        s->conns[i] = NULL;
    }
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (b->region)
            s->tp->deregister_region(b->region);
        b->region = NULL;
        if (b->alias_region)
            s->tp->deregister_region(b->alias_region);
        b->alias_region = NULL;
    }
    if (s->transport)
        s->tp->destroy(s->transport);
    s->transport = NULL;
}

void rdmig_session_close_control(RdmigSession *s)
{
    if (!s->ctl)
        return;
    rdmig_control_shutdown(s->ctl);
    s->ctl_bytes_done += rdmig_control_bytes(s->ctl);
    rdmig_control_free(s->ctl);
    s->ctl = NULL;
}

bool rdmig_session_cancel_refused(RdmigSession *s, GError **error)
{
    RdmigState st = rdmig_session_state(s);
    if (st != RDMIG_STATE_POSTCOPY_ACTIVE && st != RDMIG_STATE_POSTCOPY_RECOVER_SETUP &&
        st != RDMIG_STATE_POSTCOPY_RECOVER)
        return false;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                "cancel refused in %s: the guest runs on the destination and its memory is "
                "split between the hosts (in postcopy-paused, cancel gives up)",
                rdmig_state_str(st));
    return true;
}

/* Unconditional: rdmig_session_free() must be able to stop any session. */
static void cancel_now(RdmigSession *s)
{
    g_atomic_int_set(&s->cancel, 1);
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* The counter is saturated: the session is being woken already. */
    }
}

void rdmig_session_cancel(RdmigSession *s)
{
    g_autoptr(GError) why = NULL;
    if (rdmig_session_cancel_refused(s, &why)) {
        g_warning("%s", why->message);
        return;
    }
    cancel_now(s);
}

bool rdmig_session_send(RdmigSession *s, RdmigMsgType type, GByteArray *payload, GError **error)
{
    if (!s->ctl) {
        if (payload)
            g_byte_array_unref(payload);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                    "no control channel to the peer (the link was lost)");
        return false;
    }
    bool ok = rdmig_control_send(s->ctl, type, payload ? payload->data : NULL,
                                 payload ? payload->len : 0, error);
    if (payload)
        g_byte_array_unref(payload);
    return ok;
}

void rdmig_session_send_error(RdmigSession *s, const GError *err)
{
    if (!s->ctl || !g_atomic_int_compare_and_exchange(&s->error_sent, 0, 1))
        return;
    GByteArray *b = rdmig_error_encode(err->domain == RDMIG_ERROR ? (uint32_t)err->code
                                                                  : RDMIG_ERROR_PEER,
                                       err->message);
    rdmig_control_send(s->ctl, RDMIG_MSG_ERROR, b->data, b->len, NULL);
    g_byte_array_unref(b);
}

int rdmig_session_recv(RdmigSession *s, RdmigFrame *f, int timeout_ms, GError **error)
{
    const char *peer = s->role == RDMIG_ROLE_SOURCE ? "destination" : "source";
    gint64 start = g_get_monotonic_time();
    for (;;) {
        if (rdmig_session_cancelled(s)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
            return -1;
        }
        gint64 now = g_get_monotonic_time();
        gint64 silent_ms = (now - g_atomic_pointer_get(&s->last_rx_us)) / 1000;
        int wait = (int)CLAMP((gint64)s->params.peer_timeout_ms - silent_ms, 0,
                              (gint64)s->params.keepalive_ms);
        if (timeout_ms >= 0) {
            gint64 left = timeout_ms - (now - start) / 1000;
            if (left < 0)
                return 0;
            wait = (int)MIN(wait, left);
        }
        struct pollfd p[2] = { { .fd = rdmig_control_fd(s->ctl), .events = POLLIN },
                               { .fd = s->wake_fd, .events = POLLIN } };
        int n = poll(p, 2, MAX(wait, 0));
        if (n < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return -1;
        }
        if (p[1].revents) {
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof(v)) < 0) {
                /* Already drained by another wait. */
            }
            g_mutex_lock(&s->data_err_lock);
            g_autofree char *derr = g_strdup(s->data_error);
            g_mutex_unlock(&s->data_err_lock);
            if (derr) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s", derr);
                return -1;
            }
            continue; /* cancel: checked at the top */
        }
        if (n <= 0 || !p[0].revents) {
            /* Judged only when nothing is waiting to be read: a busy receiver
             * must not blame a peer whose frames are queued. */
            silent_ms = (g_get_monotonic_time() - g_atomic_pointer_get(&s->last_rx_us)) / 1000;
            if (silent_ms > s->params.peer_timeout_ms) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                            "%s silent for %" G_GINT64_FORMAT " ms (peer timeout %u ms): it "
                            "stalled, or the network between us is down", peer, silent_ms,
                            s->params.peer_timeout_ms);
                return -1;
            }
            continue;
        }
        int r = rdmig_control_recv(s->ctl, f, 0, error);
        if (r < 0) {
            if (error && *error && (*error)->code == RDMIG_ERROR_PEER) {
                g_prefix_error(error, "%s: ", peer);
            }
            return -1;
        }
        if (r == 0)
            continue;
        g_atomic_pointer_set(&s->last_rx_us, g_get_monotonic_time());
        RDMIG_STATS_UPDATE(s, s->stats.bytes_transferred += RDMIG_CONTROL_HEADER_SIZE +
                                                              f->hdr.length);
        switch (f->hdr.type) {
        case RDMIG_MSG_PING:
            continue;
        case RDMIG_MSG_ERROR: {
            RdmigWireError e;
            if (!rdmig_error_decode(f->payload, f->hdr.length, &e, error))
                return -1;
            /* Nothing to tell a peer about its own error. */
            g_atomic_int_set(&s->peer_reported, 1);
            g_atomic_int_set(&s->error_sent, 1);
            g_set_error(error, RDMIG_ERROR,
                        e.code == RDMIG_ERROR_CANCELLED ? RDMIG_ERROR_CANCELLED : RDMIG_ERROR_PEER,
                        "%s reported an error (%s): %s", peer,
                        rdmig_error_code_str((RdmigErrorCode)e.code), e.message);
            return -1;
        }
        default:
            if (f->hdr.type == 0 || f->hdr.type >= RDMIG_MSG__MAX) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                            "unknown control message type %u from the %s", f->hdr.type, peer);
                return -1;
            }
            return 1;
        }
    }
}

void rdmig_session_account_thread_cpu(RdmigSession *s)
{
    uint64_t us = rdmig_thread_cpu_us();
    RDMIG_STATS_UPDATE(s, s->stats.cpu_time_us += us);
}

/* Blocks at least this large get their own registration thread: pinning
 * and mapping pages costs about a second per GiB on hardware RDMA, many
 * times that on soft-RoCE under emulation. */
#define REGISTER_PARALLEL_MIN (64ull << 20)

typedef struct {
    RdmigSession *s;
    RdmigRamBlock *b;
    uint32_t access;
    GError *error;
} RegisterJob;

static gpointer register_thread(gpointer data)
{
    RegisterJob *j = data;
    j->b->region = j->s->tp->register_region(j->s->transport, j->b->host, j->b->length, j->access,
                                            &j->error);
    if (!j->b->region)
        g_prefix_error(&j->error, "registering RAM block '%s': ", j->b->name);
    return NULL;
}

static gpointer register_thread_main(gpointer data)
{
    register_thread(data);
    rdmig_session_account_thread_cpu(((RegisterJob *)data)->s);
    return NULL;
}

bool rdmig_session_register_blocks(RdmigSession *s, uint32_t access, GError **error)
{
    guint n = s->blocks->len;
    g_autofree RegisterJob *jobs = g_new0(RegisterJob, n);
    g_autofree GThread **threads = g_new0(GThread *, n);
    guint max_threads = MAX(1u, MIN(g_get_num_processors(), 8u));
    guint running = 0;
    for (guint i = 0; i < n; i++) {
        jobs[i] = (RegisterJob){ .s = s, .b = s->blocks->pdata[i], .access = access };
        /* A small block, or no thread to spare: register it right here. */
        if (jobs[i].b->length < REGISTER_PARALLEL_MIN || running + 1 >= max_threads ||
            !(threads[i] = g_thread_try_new("rdmig-register", register_thread_main, &jobs[i],
                                            NULL)))
            register_thread(&jobs[i]);
        else
            running++;
    }
    bool ok = true;
    for (guint i = 0; i < n; i++) {
        if (threads[i])
            g_thread_join(threads[i]);
        if (jobs[i].error) {
            if (ok)
                g_propagate_error(error, jobs[i].error);
            else
                g_error_free(jobs[i].error);
            ok = false;
        }
    }
    return ok;
}

static gpointer keepalive_thread(gpointer data)
{
    RdmigSession *s = data;
    g_mutex_lock(&s->keepalive_lock);
    while (!g_atomic_int_get(&s->stop_keepalive)) {
        /* Twice per period, so one late PING does not look like silence. */
        gint64 until = g_get_monotonic_time() + (gint64)s->params.keepalive_ms * 500;
        while (!g_atomic_int_get(&s->stop_keepalive) &&
               g_cond_wait_until(&s->keepalive_cond, &s->keepalive_lock, until))
            ;
        if (g_atomic_int_get(&s->stop_keepalive))
            break;
        g_mutex_unlock(&s->keepalive_lock);
        /* A failed send is noticed by the thread that owns the channel. */
        rdmig_control_send(s->ctl, RDMIG_MSG_PING, NULL, 0, NULL);
        g_mutex_lock(&s->keepalive_lock);
    }
    g_mutex_unlock(&s->keepalive_lock);
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

void rdmig_session_start_keepalive(RdmigSession *s)
{
    if (!(s->features & RDMIG_FEATURE_KEEPALIVE) || s->keepalive)
        return;
    g_atomic_int_set(&s->stop_keepalive, 0);
    s->keepalive = g_thread_new("rdmig-keepalive", keepalive_thread, s);
}

void rdmig_session_stop_keepalive(RdmigSession *s)
{
    if (!s->keepalive)
        return;
    g_mutex_lock(&s->keepalive_lock);
    g_atomic_int_set(&s->stop_keepalive, 1);
    g_cond_signal(&s->keepalive_cond);
    g_mutex_unlock(&s->keepalive_lock);
    g_thread_join(s->keepalive);
    s->keepalive = NULL;
}

uint32_t rdmig_session_transports(RdmigSession *s, const RdmigTransportOps **out, uint32_t max,
                                  GError **error)
{
    uint32_t n = 0;
    g_autoptr(GString) why = g_string_new(NULL);
    for (const RdmigTransportOps *const *t = rdmig_transport_list(); *t && n < max; t++) {
        if (strcmp(s->params.transport, "auto") && strcmp(s->params.transport, (*t)->name))
            continue;
        if (((*t)->caps & RDMIG_TRANSPORT_CAP_ONESIDED_WRITE) == 0)
            continue;
        g_autoptr(GError) perr = NULL;
        if (!(*t)->probe(&perr)) {
            g_string_append_printf(why, "; %s: %s", (*t)->name, perr->message);
            continue;
        }
        out[n++] = *t;
    }
    if (!n)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "no usable data transport for --transport %s%s", s->params.transport,
                    why->str);
    return n;
}

bool rdmig_layout_check(GPtrArray *blocks, const RdmigHello *hello, GError **error)
{
    for (uint32_t i = 0; i < MAX(hello->n_blocks, blocks->len); i++) {
        if (i >= blocks->len) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LAYOUT,
                        "RAM layout mismatch: source has block '%s' (#%u), destination has "
                        "only %u blocks", hello->blocks[i].name, i, blocks->len);
            return false;
        }
        RdmigRamBlock *b = blocks->pdata[i];
        if (i >= hello->n_blocks) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LAYOUT,
                        "RAM layout mismatch: destination has block '%s' (#%u), source has only "
                        "%u blocks", b->name, i, hello->n_blocks);
            return false;
        }
        const RdmigWireBlock *w = &hello->blocks[i];
        if (strcmp(w->name, b->name)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LAYOUT,
                        "RAM layout mismatch: block #%u is '%s' on the source, '%s' on the "
                        "destination", i, w->name, b->name);
            return false;
        }
        if (w->length != b->length || w->page_size != b->page_size) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LAYOUT,
                        "RAM layout mismatch in block '%s': source has %" G_GUINT64_FORMAT
                        " bytes in %u-byte pages, destination %" G_GUINT64_FORMAT
                        " bytes in %u-byte pages", b->name, w->length, w->page_size, b->length,
                        b->page_size);
            return false;
        }
    }
    return true;
}

bool rdmig_session_start(RdmigSession *s, const char *address, GError **error)
{
    if (s->started || rdmig_session_state(s) != RDMIG_STATE_NONE) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "session already started (state %s): create a new session to retry",
                    rdmig_state_str(rdmig_session_state(s)));
        return false;
    }
    if (!s->blocks->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "no RAM blocks to migrate");
        return false;
    }
    s->t_start = g_get_monotonic_time();
    rdmig_session_set_state(s, RDMIG_STATE_NONE, RDMIG_STATE_SETUP);
    if (s->role == RDMIG_ROLE_SOURCE) {
        if (!rdmig_source_connect(s, address, error)) {
            if (g_error_matches(*error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED) &&
                rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_CANCELLING))
                rdmig_session_set_state(s, RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED);
            else
                rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_FAILED);
            RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.error, (*error)->message,
                                            sizeof(s->stats.error)));
            return false;
        }
        s->started = true;
        s->thread = g_thread_new("rdmig-source", rdmig_source_thread, s);
    } else {
        s->listen_fd = rdmig_socket_listen(address, &s->listen_address, error);
        if (s->listen_fd < 0) {
            rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_FAILED);
            RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.error, (*error)->message,
                                            sizeof(s->stats.error)));
            return false;
        }
        s->started = true;
        s->thread = g_thread_new("rdmig-destination", rdmig_destination_thread, s);
    }
    return true;
}

const char *rdmig_session_listen_address(RdmigSession *s) { return s->listen_address; }

bool rdmig_session_is_destination(RdmigSession *s) { return s->role == RDMIG_ROLE_DESTINATION; }

bool rdmig_session_wait(RdmigSession *s, GError **error)
{
    if (!s->thread) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "session was not started");
        return false;
    }
    if (!s->joined) {
        g_thread_join(s->thread);
        s->joined = true;
    }
    RdmigState st = rdmig_session_state(s);
    if (st == RDMIG_STATE_COMPLETED)
        return true;
    g_mutex_lock(&s->lock);
    if (s->error)
        g_propagate_error(error, g_error_copy(s->error));
    else
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "migration ended in state %s",
                    rdmig_state_str(st));
    g_mutex_unlock(&s->lock);
    return false;
}

void rdmig_session_get_stats(RdmigSession *s, RdmigStats *out)
{
    g_mutex_lock(&s->lock);
    *out = s->stats;
    if (s->t_start && !rdmig_state_is_final(s->state))
        out->total_time_ms = (uint64_t)(g_get_monotonic_time() - s->t_start) / 1000;
    g_mutex_unlock(&s->lock);
}

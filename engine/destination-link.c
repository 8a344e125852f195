/* SPDX-License-Identifier: MIT */
/*
 * The destination's link to its source (docs/protocol.md §4): the listener
 * and the source's HELLO, the handshake (layout, features, the data
 * transport chosen by capability, the keys of its RAM, the data connections)
 * and the data pollers that let the transport place pages (TCP) or watch
 * for the connection's end (RDMA).
 *
 * Connections wait at the door (hello-gate.h) until one sends a valid
 * HELLO; the handshake then refuses a source it cannot take (layout,
 * features, transports) before HELLO_ACK, and the destination keeps
 * listening (destination.c): a stranger must not end an incoming migration.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel.h"
#include "dataplane.h"
#include "link-secrets.h"
#include "destination.h"
#include "hello-gate.h"
#include "state.h"
#include "transport/address.h"
#include "uffd.h"

/* ---------------------------------------------------------------- data pollers */

typedef struct {
    RdmigDestination *dst;
    uint32_t index;
} DataPoller;

static gpointer data_poller(gpointer data)
{
    DataPoller *dp = data;
    RdmigDestination *dst = dp->dst;
    RdmigSession *s = &dst->s;
    RdmigConn *c = s->conns[dp->index];
    while (!g_atomic_int_get(&dst->stop_threads)) {
        short ev;
        struct pollfd p[2] = { { .fd = s->tp->conn_fd(c, &ev) },
                               { .fd = dst->stop_fd, .events = POLLIN } };
        p[0].events = ev;
        if ((poll(p, 2, -1) < 0 && errno != EINTR) || p[1].revents)
            break;
        RdmigIoReq *done[16];
        int n = s->tp->poll(c, done, G_N_ELEMENTS(done));
        if (n < 0) {
            if (!g_atomic_int_get(&dst->stop_threads)) {
                GError *err = NULL;
                rdmig_dataplane_conn_failed(s, dp->index, n, "", &err);
                rdmig_session_report_failure(s, err);
            }
            break;
        }
    }
    g_free(dp);
    RDMIG_STATS_UPDATE(s, s->stats.data_cpu_us += rdmig_thread_cpu_us());
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

static void start_pollers(RdmigDestination *dst)
{
    RdmigSession *s = &dst->s;
    g_atomic_int_set(&dst->stop_threads, 0);
    uint64_t stale;
    if (read(dst->stop_fd, &stale, sizeof(stale)) < 0) {
        /* Nothing to drain: no pollers were stopped before. */
    }
    for (uint32_t i = 0; i < s->nconns; i++) {
        DataPoller *dp = g_new(DataPoller, 1);
        *dp = (DataPoller){ dst, i };
        dst->data_threads[i] = g_thread_new("rdmig-data", data_poller, dp);
    }
}

void rdmig_destination_stop_pollers(RdmigDestination *dst)
{
    g_atomic_int_set(&dst->stop_threads, 1);
    uint64_t one = 1;
    if (write(dst->stop_fd, &one, sizeof(one)) < 0) {
        /* Saturated: the pollers are being told already. */
    }
    for (uint32_t i = 0; i < RDMIG_MAX_DATA_CONNS; i++) {
        if (dst->data_threads[i])
            g_thread_join(dst->data_threads[i]);
        dst->data_threads[i] = NULL;
    }
}

void rdmig_destination_drop_link(RdmigDestination *dst)
{
    RdmigSession *s = &dst->s;
    rdmig_destination_stop_pollers(dst);
    rdmig_channel_stop_keepalive(s);
    if (dst->data_listener)
        s->tp->listener_close(dst->data_listener);
    dst->data_listener = NULL;
    rdmig_session_drop_link(s);
}

/* ---------------------------------------------------------------- the source */

int rdmig_destination_door_ms(const RdmigSession *s)
{
    return (int)MIN(s->params.peer_timeout_ms, RDMIG_DOOR_MS);
}

int rdmig_destination_wait_hello(RdmigDestination *dst, RdmigHelloGate *gate, int extra_fd,
                                 bool *extra_ready, int timeout_ms, RdmigHello *hello,
                                 GError **error)
{
    RdmigSession *s = &dst->s;
    struct pollfd p[2 + 1 + RDMIG_GATE_SLOTS];
    p[0] = (struct pollfd){ .fd = s->wake_fd, .events = POLLIN };
    p[1] = (struct pollfd){ .fd = extra_fd, .events = POLLIN };
    int wait_ms = timeout_ms;
    unsigned n = rdmig_hello_gate_pollfds(gate, p + 2, &wait_ms);
    if (poll(p, 2 + n, wait_ms) < 0 && errno != EINTR) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return -1;
    }
    if (extra_ready)
        *extra_ready = extra_fd >= 0 && p[1].revents;
    if (p[0].revents) {
        uint64_t v;
        if (read(s->wake_fd, &v, sizeof(v)) < 0) {
            /* Drained by another wait already. */
        }
        if (rdmig_session_cancelled(s)) {
            rdmig_set_cancelled(error);
            return -1;
        }
    }
    uint64_t bytes = 0;
    RdmigTls *tls = NULL;
    int fd = rdmig_hello_gate_step(gate, p + 2, n, hello, &bytes, &tls);
    if (fd < 0)
        return 0;
    rdmig_channel_open_after_hello(s, fd, tls, bytes);
    return 1;
}

bool rdmig_destination_accept(RdmigDestination *dst, RdmigHelloGate *gate, RdmigHello *hello,
                              GError **error)
{
    RdmigSession *s = &dst->s;
    for (;;) {
        int r = rdmig_destination_wait_hello(dst, gate, -1, NULL, -1, hello, error);
        if (r < 0)
            return false;
        if (r > 0) {
            /* Times on this side count from the source's arrival, not from
             * when we began to listen. */
            s->t_start = rdmig_now_us();
            return true;
        }
    }
}

/* ---------------------------------------------------------------- handshake */

/* Names the first block that differs between this side and the source's HELLO. */
static bool layout_check(GPtrArray *blocks, const RdmigHello *hello, GError **error)
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

/* Zero copy where its memory file was given, params allow it and the
 * kernel has shmem minor faults; the staging copy elsewhere.  Decided once:
 * a recovery must not change how stale pages were dropped. */
static void choose_placement(RdmigDestination *dst)
{
    RdmigSession *s = &dst->s;
    bool minor = rdmig_uffd_minor_shmem();
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        b->zero_copy = s->params.postcopy_zero_copy && minor && b->fd >= 0;
    }
}

/* What this side supports, given what the source does; postcopy only where
 * faults can be caught, said now, while the source's guest still runs. */
static bool supported_features(RdmigDestination *dst, const RdmigHello *hello, bool recovering,
                               uint64_t *supported, GError **error)
{
    *supported = RDMIG_FEATURES_KNOWN;
    if (!dst->s.params.verify)
        *supported &= ~RDMIG_FEATURE_VERIFY;
    if (!(hello->features_supported & RDMIG_FEATURE_POSTCOPY)) {
        *supported &= ~(RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY);
        return true;
    }
    if (!recovering)
        choose_placement(dst);
    g_autoptr(GError) why = NULL;
    if (rdmig_uffd_probe_postcopy(&why))
        return true;
    *supported &= ~(RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY);
    if (!(hello->features_required & RDMIG_FEATURE_POSTCOPY))
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                "the source wants postcopy, but this destination cannot catch page faults: %s",
                why->message);
    return false;
}

static bool negotiate(RdmigDestination *dst, const RdmigHello *hello, bool recovering,
                      uint64_t *supported, GError **error)
{
    RdmigSession *s = &dst->s;
    uint64_t enabled;
    if (!layout_check(s->blocks, hello, error) ||
        !supported_features(dst, hello, recovering, supported, error) ||
        !rdmig_features_negotiate(*supported, 0, hello->features_supported,
                                  hello->features_required, &enabled, error))
        return false;
    if (recovering && enabled != s->features) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the recovering source negotiates features 0x%" G_GINT64_MODIFIER "x; the "
                    "paused migration has 0x%" G_GINT64_MODIFIER "x", enabled, s->features);
        return false;
    }
    s->features = enabled;
    return true;
}

static bool offered(const RdmigHello *hello, const RdmigTransportOps *t)
{
    for (uint32_t j = 0; j < hello->n_transports; j++)
        if (!strcmp(t->name, hello->transports[j]))
            return true;
    return false;
}

/* The data listener goes on the address the source reached us at. */
static char *data_listen_address(RdmigSession *s)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    getsockname(rdmig_control_fd(s->ctl), (struct sockaddr *)&ss, &len);
    if (ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
    else
        ((struct sockaddr_in *)&ss)->sin_port = 0;
    return rdmig_address_format((struct sockaddr *)&ss);
}

/* A listener of the best transport both sides have (ours come best first:
 * one that spares our CPU first).  On a recovery the device the old link
 * had may not be back: then any other transport shared keeps the pages
 * coming. */
static bool listen_data(RdmigDestination *dst, const RdmigHello *hello, bool recovering,
                        uint64_t token, GError **error)
{
    RdmigSession *s = &dst->s;
    const RdmigTransportOps *mine[RDMIG_MAX_TRANSPORTS];
    uint32_t nmine = rdmig_dataplane_transports(s, mine, RDMIG_MAX_TRANSPORTS, error);
    RdmigTransportConfig cfg = rdmig_dataplane_config(s, token);
    g_autofree char *want = data_listen_address(s);
    s->tp = NULL;
    for (uint32_t i = 0; i < nmine && !dst->data_listener; i++) {
        if (!offered(hello, mine[i]))
            continue;
        if (s->tp) {
            if (!recovering)
                break;
            g_warning("recovery: data transport %s cannot listen on %s (%s); trying %s",
                      s->tp->name, want, (*error)->message, mine[i]->name);
            g_clear_error(error);
            s->tp->destroy(g_steal_pointer(&s->transport));
        }
        s->tp = mine[i];
        s->transport = s->tp->create(&cfg, error);
        if (s->transport)
            dst->data_listener = s->tp->listen(s->transport, want, error);
    }
    if (nmine && !s->tp) {
        g_autoptr(GString) theirs = g_string_new(NULL);
        for (uint32_t j = 0; j < hello->n_transports; j++)
            g_string_append_printf(theirs, "%s%s", j ? ", " : "", hello->transports[j]);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "no data transport in common: the source offers [%s], this side allows '%s'",
                    theirs->str, s->params.transport);
    }
    return dst->data_listener != NULL;
}

static bool send_hello_ack(RdmigDestination *dst, uint64_t supported, uint64_t token,
                           GError **error)
{
    RdmigSession *s = &dst->s;
    RdmigHelloAck ack = { .version = RDMIG_PROTOCOL_VERSION,
                          .features_supported = supported,
                          .features_enabled = s->features,
                          .data_connections = s->nconns,
                          /* With TLS both ends derive it: nothing to send. */
                          .conn_token = rdmig_control_tls(s->ctl) ? 0 : token };
    g_strlcpy(ack.transport, s->tp->name, sizeof(ack.transport));
    g_strlcpy(ack.data_address, s->tp->listener_address(dst->data_listener),
              sizeof(ack.data_address));
    if (!rdmig_channel_send(s, RDMIG_MSG_HELLO_ACK, rdmig_hello_ack_encode(&ack), error))
        return false;
    dst->hello_acked = true;
    rdmig_channel_start_keepalive(s);
    return true;
}

/* Guest RAM, writable by the peer while precopy runs (deregistered at the
 * end), and REGIONS with its keys.  Postcopy pulls into buffers of its own. */
static bool offer_regions(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    g_autofree RdmigRegions *regions = g_new0(RdmigRegions, 1);
    regions->n_blocks = s->blocks->len;
    gint64 t0 = rdmig_now_us();
    if (!rdmig_dataplane_register_blocks(s, RDMIG_ACCESS_REMOTE_WRITE, error))
        return false;
    RDMIG_STATS_UPDATE(s, s->stats.registration_time_ms =
                              (uint64_t)(rdmig_now_us() - t0) / 1000);
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        s->tp->region_key(b->region, &regions->keys[i]);
        if ((s->features & RDMIG_FEATURE_VERIFY) && !b->hashes) {
            b->hashes = g_new0(uint64_t, b->npages);
            b->zero_hash = rdmig_zero_page_hash(b->page_size);
            b->hash_known = rdmig_bitmap_new(b->npages);
            b->verified = rdmig_bitmap_new(b->npages);
        }
    }
    return rdmig_channel_send(s, RDMIG_MSG_REGIONS, rdmig_regions_encode(regions), error);
}

/* The data connections, within the connect timeout; in slices, so that a
 * cancel or a source that hangs up is seen.  A stray with a wrong token is
 * turned away and the wait goes on. */
static bool accept_data(RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    gint64 deadline = rdmig_now_us() + (gint64)s->params.connect_timeout_ms * 1000;
    /* Between accepts the control channel is read (and, in a postcopy
     * recovery, the pager's faults served: s->side), so waits are short. */
    int slice = s->side.fd >= 0 ? 10 : 250;
    for (uint32_t i = 0; i < s->nconns;) {
        gint64 left_ms = (deadline - rdmig_now_us()) / 1000; /* once: CLAMP re-evaluates */
        int left = (int)CLAMP(left_ms, 0, slice);
        g_autoptr(GError) aerr = NULL;
        if ((s->conns[i] = s->tp->accept(dst->data_listener, left, &aerr))) {
            i++;
            continue;
        }
        RdmigFrame f;
        if (rdmig_channel_recv(s, &f, 0, error) != 0) {
            if (!*error)
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                            "unexpected %s from the source before its data connections",
                            rdmig_msg_type_str(f.hdr.type));
            return false;
        }
        if (aerr->code == RDMIG_ERROR_CONNECT && rdmig_now_us() < deadline)
            continue;
        if (aerr->code == RDMIG_ERROR_CONNECT || rdmig_now_us() >= deadline) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                        "data connection %u of %u from the source did not arrive: %s", i + 1,
                        s->nconns, aerr->message);
            return false;
        }
        g_warning("rejected a data connection: %s", aerr->message);
    }
    s->tp->listener_close(dst->data_listener);
    dst->data_listener = NULL;
    return true;
}

bool rdmig_destination_handshake(RdmigDestination *dst, RdmigHello *hello, bool recovering,
                                 GError **error)
{
    RdmigSession *s = &dst->s;
    /* Precopy resumes with its RAM registered again; postcopy pulls into
     * the pager's buffers instead, and the pager polls the connections. */
    bool postcopy = recovering && rdmig_session_state(s) != RDMIG_STATE_PRECOPY_PAUSED;
    dst->hello_acked = false;
    if (!recovering) {
        memcpy(s->session_id, hello->session_id, sizeof(s->session_id));
        if (!rdmig_link_keep_secret(s, error))
            return false;
    }
    uint64_t supported, token;
    if (getrandom(&token, sizeof(token), 0) != sizeof(token))
        token = (uint64_t)rdmig_now_us() ^ (uint64_t)g_random_int() << 32;
    token = rdmig_link_data_token(s, token);
    if (!negotiate(dst, hello, recovering, &supported, error))
        return false;
    s->nconns = MAX(1u, MIN(hello->data_connections, (uint32_t)RDMIG_MAX_DATA_CONNS));
    if (!(s->features & RDMIG_FEATURE_MULTI_CONN))
        s->nconns = 1;
    if (!listen_data(dst, hello, recovering, token, error) ||
        !send_hello_ack(dst, supported, token, error) ||
        (postcopy && !rdmig_session_set_state_or_cancelled(s, RDMIG_STATE_POSTCOPY_PAUSED,
                                                           RDMIG_STATE_POSTCOPY_RECOVER, error)) ||
        (!postcopy && !offer_regions(dst, error)) || !accept_data(dst, error))
        return false;
    if (!postcopy)
        start_pollers(dst);
    RDMIG_STATS_UPDATE(s, {
        g_strlcpy(s->stats.transport, s->tp->name, sizeof(s->stats.transport));
        s->stats.data_connections = s->nconns;
        for (guint i = 0; i < s->blocks->len && !recovering; i++)
            s->stats.pages_total += ((RdmigRamBlock *)s->blocks->pdata[i])->npages;
    });
    return true;
}

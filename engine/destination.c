/* SPDX-License-Identifier: MIT */
/*
 * The destination side.  A control thread takes the handshake, hands out the
 * keys of its RAM blocks and then applies control messages in order (zero
 * runs, round ends, device state, hashes, completion).  One poller thread per
 * data connection lets the transport place incoming pages (TCP); with a
 * one-sided transport that does no per-page work, they only watch for errors.
 *
 * A connection whose first bytes are not a valid rdmig HELLO is dropped with
 * a warning and the listener keeps waiting: a port scan must not end an
 * incoming migration.  A real source with a wrong layout or version fails it.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "postcopy.h"
#include "session.h"
#include "state.h"
#include "transport/address.h"

static inline gint64 now_us(void) { return g_get_monotonic_time(); }

/* ---------------------------------------------------------------- data pollers */

typedef struct {
    RdmigSession *s;
    uint32_t index;
} DataPoller;

static void data_failed(RdmigSession *s, uint32_t index, const char *why)
{
    g_mutex_lock(&s->data_err_lock);
    if (!s->data_error)
        s->data_error = g_strdup_printf("data connection %u: %s", index, why);
    g_mutex_unlock(&s->data_err_lock);
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* Saturated counter: the control thread is being woken already. */
    }
}

static gpointer data_poller(gpointer data)
{
    DataPoller *dp = data;
    RdmigSession *s = dp->s;
    RdmigConn *c = s->conns[dp->index];
    while (!g_atomic_int_get(&s->stop_threads)) {
        short ev;
        struct pollfd p[2] = { { .fd = s->tp->conn_fd(c, &ev) },
                               { .fd = s->stop_fd, .events = POLLIN } };
        p[0].events = ev;
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        RdmigIoReq *done[16];
        int n = s->tp->poll(c, done, G_N_ELEMENTS(done));
        if (n < 0) {
            if (!g_atomic_int_get(&s->stop_threads)) {
                const char *why = s->tp->conn_error(c);
                data_failed(s, dp->index, why ? why : g_strerror(-n));
            }
            break;
        }
    }
    g_free(dp);
    uint64_t cpu = rdmig_thread_cpu_us();
    RDMIG_STATS_UPDATE(s, s->stats.data_cpu_us += cpu);
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

static void stop_data_pollers(RdmigSession *s)
{
    g_atomic_int_set(&s->stop_threads, 1);
    uint64_t one = 1;
    if (write(s->stop_fd, &one, sizeof(one)) < 0) {
        /* Saturated: the pollers are being told already. */
    }
    for (uint32_t i = 0; i < s->nconns; i++) {
        if (s->data_threads[i])
            g_thread_join(s->data_threads[i]);
        s->data_threads[i] = NULL;
    }
}

/* ---------------------------------------------------------------- handshake */

/* Waits for a source; drops connections that do not open with a HELLO. */
static bool accept_source(RdmigSession *s, RdmigHello *hello, GError **error)
{
    for (;;) {
        int fd = rdmig_socket_accept(s->listen_fd, -1, s->wake_fd, error);
        if (fd < 0) {
            if (rdmig_session_cancelled(s)) {
                g_clear_error(error);
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
            }
            return false;
        }
        s->ctl = rdmig_control_new(fd, (int)s->params.peer_timeout_ms);
        g_atomic_pointer_set(&s->last_rx_us, now_us());
        /* Times on this side count from the source's arrival, not from
         * when we began to listen. */
        s->t_start = now_us();
        RdmigFrame f;
        g_autoptr(GError) err = NULL;
        int r = rdmig_control_recv(s->ctl, &f, (int)s->params.peer_timeout_ms, &err);
        if (r > 0 && f.hdr.type == RDMIG_MSG_HELLO &&
            rdmig_hello_decode(f.payload, f.hdr.length, hello, &err)) {
            g_atomic_pointer_set(&s->last_rx_us, now_us());
            return true;
        }
        if (err && err->code == RDMIG_ERROR_VERSION) {
            /* A real rdmig source of another version: tell it, and fail. */
            rdmig_session_send_error(s, err);
            g_propagate_error(error, g_steal_pointer(&err));
            return false;
        }
        g_warning("dropped a connection on %s that is not an rdmig source: %s",
                  s->listen_address,
                  err ? err->message : r == 0 ? "no HELLO within the peer timeout"
                                              : "first message was not HELLO");
        rdmig_control_free(s->ctl);
        s->ctl = NULL;
    }
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

/* The handshake of a new migration, or (@recovering) of the paused one's
 * source coming back on a new link: same session, same layout, same
 * features; the data transport is chosen again (RDMA may not be back). */
static bool handshake(RdmigSession *s, RdmigHello *hello, bool recovering, GError **error)
{
    /* Precopy resumes with its RAM registered again; postcopy pulls into
     * the pager's staging buffer instead. */
    bool precopy_resume = recovering && rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED;
    if (!recovering)
        memcpy(s->session_id, hello->session_id, sizeof(s->session_id));
    if (!rdmig_layout_check(s->blocks, hello, error))
        return false;
    uint64_t supported = RDMIG_FEATURES_KNOWN;
    if (!s->params.verify)
        supported &= ~RDMIG_FEATURE_VERIFY;
    if (hello->features_supported & RDMIG_FEATURE_POSTCOPY) {
        /* Said now, while the source's guest still runs, not at switchover. */
        g_autoptr(GError) why = NULL;
        /* Once: a recovery must not change how stale pages were dropped. */
        if (!recovering)
            rdmig_postcopy_choose_placement(s);
        if (!rdmig_postcopy_probe(&why)) {
            supported &= ~(RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY);
            if (hello->features_required & RDMIG_FEATURE_POSTCOPY) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                            "the source wants postcopy, but this destination cannot catch page "
                            "faults: %s", why->message);
                return false;
            }
        }
    } else {
        supported &= ~(RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY);
    }
    uint64_t enabled;
    if (!rdmig_features_negotiate(supported, 0, hello->features_supported,
                                  hello->features_required, &enabled, error))
        return false;
    if (recovering && enabled != s->features) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the recovering source negotiates features 0x%" G_GINT64_MODIFIER "x; the "
                    "paused migration has 0x%" G_GINT64_MODIFIER "x", enabled, s->features);
        return false;
    }
    s->features = enabled;

    /* The best transport both sides have: one that spares our CPU first. */
    const RdmigTransportOps *mine[RDMIG_MAX_TRANSPORTS];
    uint32_t nmine = rdmig_session_transports(s, mine, RDMIG_MAX_TRANSPORTS, error);
    if (!nmine)
        return false;
    if (recovering)
        s->tp = NULL;
    for (uint32_t i = 0; i < nmine; i++) {
        for (uint32_t j = 0; j < hello->n_transports; j++) {
            if (strcmp(mine[i]->name, hello->transports[j]))
                continue;
            if (!s->tp || ((mine[i]->caps & RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU) &&
                           !(s->tp->caps & RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU)))
                s->tp = mine[i];
        }
    }
    if (!s->tp) {
        g_autoptr(GString) theirs = g_string_new(NULL);
        for (uint32_t j = 0; j < hello->n_transports; j++)
            g_string_append_printf(theirs, "%s%s", j ? ", " : "", hello->transports[j]);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "no data transport in common: the source offers [%s], this side allows '%s'",
                    theirs->str, s->params.transport);
        return false;
    }
    s->nconns = MAX(1u, MIN(hello->data_connections, (uint32_t)RDMIG_MAX_DATA_CONNS));
    if (!(enabled & RDMIG_FEATURE_MULTI_CONN))
        s->nconns = 1;

    uint64_t token;
    if (getrandom(&token, sizeof(token), 0) != sizeof(token))
        token = (uint64_t)now_us() ^ (uint64_t)g_random_int() << 32;
    RdmigTransportConfig cfg = { .queue_depth = RDMIG_REQS_PER_CONN,
                                 .connect_timeout_ms = s->params.connect_timeout_ms,
                                 .max_io_bytes = RDMIG_IO_PAGES_MAX * 65536u,
                                 .ack_timeout = s->params.rdma_ack_timeout,
                                 .conn_token = token };
    g_autofree char *want = data_listen_address(s);
    s->transport = s->tp->create(&cfg, error);
    if (s->transport)
        s->data_listener = s->tp->listen(s->transport, want, error);
    if (!s->data_listener && recovering) {
        /* The device the link had may not be back: any other transport we
         * share keeps the guest's pages coming. */
        for (uint32_t i = 0; i < nmine && !s->data_listener; i++) {
            bool offered = false;
            for (uint32_t j = 0; j < hello->n_transports; j++)
                offered |= !strcmp(mine[i]->name, hello->transports[j]);
            if (!offered || mine[i] == s->tp)
                continue;
            g_warning("recovery: data transport %s cannot listen on %s (%s); trying %s",
                      s->tp->name, want, (*error)->message, mine[i]->name);
            g_clear_error(error);
            if (s->transport)
                s->tp->destroy(s->transport);
            s->tp = mine[i];
            s->transport = s->tp->create(&cfg, error);
            if (s->transport)
                s->data_listener = s->tp->listen(s->transport, want, error);
        }
    }
    if (!s->data_listener)
        return false;

    RdmigHelloAck ack = { .version = RDMIG_PROTOCOL_VERSION,
                          .features_supported = supported,
                          .features_enabled = enabled,
                          .data_connections = s->nconns,
                          .conn_token = token };
    g_strlcpy(ack.transport, s->tp->name, sizeof(ack.transport));
    g_strlcpy(ack.data_address, s->tp->listener_address(s->data_listener),
              sizeof(ack.data_address));
    if (!rdmig_session_send(s, RDMIG_MSG_HELLO_ACK, rdmig_hello_ack_encode(&ack), error))
        return false;
    rdmig_session_start_keepalive(s);
    if (recovering && !precopy_resume &&
        !rdmig_session_set_state(s, RDMIG_STATE_POSTCOPY_PAUSED, RDMIG_STATE_POSTCOPY_RECOVER)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }

    if (!recovering || precopy_resume) {
        /* Postcopy pulls into a staging buffer of its own; guest RAM is the
         * peer's to write only during precopy. */
        g_autofree RdmigRegions *regions = g_new0(RdmigRegions, 1);
        regions->n_blocks = s->blocks->len;
        /* Writable by the peer only while this migration runs: deregistered at the end. */
        gint64 t0 = now_us();
        if (!rdmig_session_register_blocks(s, RDMIG_ACCESS_REMOTE_WRITE, error))
            return false;
        RDMIG_STATS_UPDATE(s, s->stats.registration_time_ms = (uint64_t)(now_us() - t0) / 1000);
        for (guint i = 0; i < s->blocks->len; i++) {
            RdmigRamBlock *b = s->blocks->pdata[i];
            s->tp->region_key(b->region, &regions->keys[i]);
            if ((enabled & RDMIG_FEATURE_VERIFY) && !b->hashes) {
                b->hashes = g_new0(uint64_t, b->npages);
                b->hash_known = rdmig_bitmap_new(b->npages);
            }
        }
        if (!rdmig_session_send(s, RDMIG_MSG_REGIONS, rdmig_regions_encode(regions), error))
            return false;
    }

    gint64 deadline = now_us() + (gint64)s->params.connect_timeout_ms * 1000;
    for (uint32_t i = 0; i < s->nconns;) {
        /* In slices, so that a cancel or a source that hangs up is seen. */
        int left = (int)CLAMP((deadline - now_us()) / 1000, 0, 250);
        g_autoptr(GError) aerr = NULL;
        s->conns[i] = s->tp->accept(s->data_listener, left, &aerr);
        if (s->conns[i]) {
            i++;
            continue;
        }
        if (rdmig_session_cancelled(s)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
            return false;
        }
        RdmigFrame f;
        if (rdmig_session_recv(s, &f, 0, error) != 0) {
            if (!*error)
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                            "unexpected %s from the source before its data connections",
                            rdmig_msg_type_str(f.hdr.type));
            return false;
        }
        if (now_us() < deadline && aerr->code == RDMIG_ERROR_CONNECT)
            continue;
        if (aerr->code == RDMIG_ERROR_CONNECT || now_us() >= deadline) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                        "data connection %u of %u from the source did not arrive: %s", i + 1,
                        s->nconns, aerr->message);
            return false;
        }
        g_warning("rejected a data connection: %s", aerr->message);
    }
    s->tp->listener_close(s->data_listener);
    s->data_listener = NULL;
    if (recovering && !precopy_resume) {
        RDMIG_STATS_UPDATE(s, {
            g_strlcpy(s->stats.transport, s->tp->name, sizeof(s->stats.transport));
            s->stats.data_connections = s->nconns;
        });
        return true; /* the pager polls the connections itself */
    }
    g_atomic_int_set(&s->stop_threads, 0);
    uint64_t stale;
    if (read(s->stop_fd, &stale, sizeof(stale)) < 0) {
        /* Nothing to drain: no pollers were stopped before. */
    }
    for (uint32_t i = 0; i < s->nconns; i++) {
        DataPoller *dp = g_new(DataPoller, 1);
        *dp = (DataPoller){ s, i };
        s->data_threads[i] = g_thread_new("rdmig-data", data_poller, dp);
    }
    RDMIG_STATS_UPDATE(s, {
        g_strlcpy(s->stats.transport, s->tp->name, sizeof(s->stats.transport));
        s->stats.data_connections = s->nconns;
        for (guint i = 0; i < s->blocks->len && !recovering; i++)
            s->stats.pages_total += ((RdmigRamBlock *)s->blocks->pdata[i])->npages;
    });
    return true;
}

/* ---------------------------------------------------------------- messages */

static RdmigRamBlock *block_at(RdmigSession *s, uint32_t index, const char *msg, GError **error)
{
    if (index < s->blocks->len)
        return s->blocks->pdata[index];
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s names RAM block #%u; there are only %u", msg, index, s->blocks->len);
    return NULL;
}

/* Run @i of a ZERO or DISCARD message, checked against block @b. */
static bool run_at(const RdmigZeroMsg *z, uint32_t i, const RdmigRamBlock *b, const char *msg,
                   uint64_t *first, uint32_t *count, GError **error)
{
    rdmig_zero_run_get(z, i, first, count);
    if (*count && *first < b->npages && *count <= b->npages - *first)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s run of %u pages at page %" G_GUINT64_FORMAT " is outside block '%s' (%"
                G_GUINT64_FORMAT " pages)", msg, *count, *first, b->name, b->npages);
    return false;
}

static bool apply_zero(RdmigSession *s, const RdmigFrame *f, GError **error)
{
    RdmigZeroMsg z;
    if (!rdmig_zero_decode(f->payload, f->hdr.length, &z, error))
        return false;
    RdmigRamBlock *b = block_at(s, z.block, "ZERO", error);
    if (!b)
        return false;
    uint64_t pages = 0;
    for (uint32_t i = 0; i < z.n_runs; i++) {
        uint64_t first;
        uint32_t count;
        if (!run_at(&z, i, b, "ZERO", &first, &count, error))
            return false;
        /* A page never touched here reads as zero already; reading it to
         * check would allocate it.  Swapped-out pages count as touched. */
        g_autofree uint64_t *touched = rdmig_bitmap_new(count);
        if (!rdmig_ram_resident(b->host + first * b->page_size, (uint64_t)count * b->page_size,
                                b->page_size, touched, NULL))
            memset(touched, 0xff, rdmig_bitmap_words(count) * 8);
        for (uint64_t p = first; p < first + count; p++) {
            uint8_t *page = b->host + p * b->page_size;
            if (rdmig_bitmap_test(touched, p - first) && !rdmig_page_is_zero(page, b->page_size))
                memset(page, 0, b->page_size);
        }
        pages += count;
    }
    RDMIG_STATS_UPDATE(s, s->stats.pages_zero += pages);
    return true;
}

bool rdmig_destination_store_hashes(RdmigSession *s, const RdmigFrame *f, guint *block,
                                    uint64_t *first, uint32_t *n, GError **error)
{
    if (!(s->features & RDMIG_FEATURE_VERIFY)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "HASHES received, but verification was not negotiated");
        return false;
    }
    RdmigHashesMsg m;
    if (!rdmig_hashes_decode(f->payload, f->hdr.length, &m, error))
        return false;
    RdmigRamBlock *b = block_at(s, m.block, "HASHES", error);
    if (!b)
        return false;
    if (m.first >= b->npages || m.n > b->npages - m.first) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "HASHES for pages %" G_GUINT64_FORMAT "..+%u are outside block '%s' (%"
                    G_GUINT64_FORMAT " pages)", m.first, m.n, b->name, b->npages);
        return false;
    }
    for (uint32_t i = 0; i < m.n; i++) {
        uint64_t p = m.first + i;
        /* Before postcopy starts, a page to be pulled has only a stale hash:
         * its final one comes after the switchover. */
        if (b->needed && rdmig_bitmap_test(b->needed, p) && !s->postcopy_fresh_hashes)
            continue;
        if (b->unverified && rdmig_bitmap_test(b->unverified, p))
            continue; /* the pager compares these itself */
        b->hashes[p] = rdmig_hashes_get(&m, i);
        rdmig_bitmap_set(b->hash_known, p);
    }
    *block = m.block;
    *first = m.first;
    *n = m.n;
    return true;
}

static bool store_hashes(RdmigSession *s, const RdmigFrame *f, GError **error)
{
    guint block;
    uint64_t first;
    uint32_t n;
    return rdmig_destination_store_hashes(s, f, &block, &first, &n, error);
}

typedef struct {
    RdmigSession *s;
    guint block;
    uint64_t first, end;
    uint64_t bad, verified;
    uint64_t bad_pages[8];
    guint bad_blocks[8];
    bool accounted; /* runs on a thread of its own: add its CPU time */
} VerifySlice;

static gpointer verify_slice(gpointer data)
{
    VerifySlice *v = data;
    RdmigRamBlock *b = v->s->blocks->pdata[v->block];
    if (v->end <= v->first)
        return NULL;
    /* A page this side never touched is zero without reading it (reading
     * would allocate it); it passes if the source's page was zero too. */
    g_autofree uint8_t *zero = g_malloc0(b->page_size);
    uint64_t zero_hash = rdmig_page_hash(zero, b->page_size);
    uint64_t n = v->end - v->first;
    g_autofree uint64_t *resident = rdmig_bitmap_new(n);
    if (!rdmig_ram_resident(b->host + v->first * b->page_size, n * b->page_size, b->page_size,
                            resident, NULL))
        memset(resident, 0xff, rdmig_bitmap_words(n) * 8);
    for (uint64_t p = v->first; p < v->end; p++) {
        /* Postcopy: pages still to come are checked when they arrive. */
        if (b->needed && rdmig_bitmap_test(b->needed, p))
            continue;
        uint64_t h = rdmig_bitmap_test(resident, p - v->first)
                         ? rdmig_page_hash(b->host + p * b->page_size, b->page_size)
                         : zero_hash;
        bool ok = rdmig_bitmap_test(b->hash_known, p) && h == b->hashes[p];
        if (ok) {
            v->verified++;
        } else {
            if (v->bad < G_N_ELEMENTS(v->bad_pages)) {
                v->bad_pages[v->bad] = p;
                v->bad_blocks[v->bad] = v->block;
            }
            v->bad++;
        }
    }
    if (v->accounted)
        rdmig_session_account_thread_cpu(v->s);
    return NULL;
}

/* Checks every page against the source's hash, on two threads: this runs
 * while the guest is stopped on both sides. */
static bool verify_all(RdmigSession *s, RdmigCompleteAck *ack)
{
    gint64 t0 = now_us();
    GString *list = g_string_new(NULL);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        VerifySlice v[2] = { { s, bi, 0, b->npages / 2, 0, 0, { 0 }, { 0 }, false },
                             { s, bi, b->npages / 2, b->npages, 0, 0, { 0 }, { 0 }, true } };
        GThread *t = g_thread_new("rdmig-verify", verify_slice, &v[1]);
        verify_slice(&v[0]);
        g_thread_join(t);
        for (int k = 0; k < 2; k++) {
            ack->pages_verified += v[k].verified;
            ack->mismatches += v[k].bad;
            for (uint64_t j = 0; j < MIN(v[k].bad, (uint64_t)G_N_ELEMENTS(v[k].bad_pages)); j++)
                if (list->len < 300)
                    g_string_append_printf(list, "%s%s:%" G_GUINT64_FORMAT,
                                           list->len ? ", " : "", b->name, v[k].bad_pages[j]);
        }
    }
    ack->verify_us = (uint64_t)(now_us() - t0);
    if (ack->mismatches) {
        ack->status = 1 + RDMIG_ERROR_VERIFY;
        g_snprintf(ack->message, sizeof(ack->message),
                   "%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " pages differ from the source "
                   "(block:page %s%s)", ack->mismatches, ack->mismatches + ack->pages_verified,
                   list->str, ack->mismatches > 16 ? ", ..." : "");
    }
    g_string_free(list, TRUE);
    return ack->mismatches == 0;
}

static bool complete(RdmigSession *s, GError **error)
{
    if (!rdmig_session_set_state(s, RDMIG_STATE_ACTIVE, RDMIG_STATE_DEVICE)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    gint64 t0 = now_us();
    /* Every write completed before the source sent COMPLETE; nothing may
     * touch guest RAM from here on but the guest. */
    stop_data_pollers(s);
    RdmigCompleteAck ack = { 0 };
    if ((s->features & RDMIG_FEATURE_VERIFY) && !verify_all(s, &ack)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERIFY, "%s", ack.message);
    } else if (s->guest.load_device_state &&
               !s->guest.load_device_state(s->guest_opaque,
                                           s->device_state ? s->device_state->data : NULL,
                                           s->device_state ? s->device_state->len : 0, error)) {
        g_prefix_error(error, "loading device state: ");
        ack.status = 1 + ((*error)->domain == RDMIG_ERROR ? (uint32_t)(*error)->code
                                                          : RDMIG_ERROR_PEER);
        g_strlcpy(ack.message, (*error)->message, sizeof(ack.message));
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_verified = ack.pages_verified;
        s->stats.verify_mismatches = ack.mismatches;
        s->stats.verify_time_ms = ack.verify_us / 1000;
    });
    if (!ack.status && s->guest.resume)
        s->guest.resume(s->guest_opaque);
    GError *serr = NULL;
    bool sent = rdmig_session_send(s, RDMIG_MSG_COMPLETE_ACK, rdmig_complete_ack_encode(&ack),
                                   &serr);
    if (ack.status)
        return false;
    if (!sent) {
        /* The guest runs here now; the source will not resume its copy
         * without our acknowledgement, so this is still a completion. */
        g_warning("completed, but the acknowledgement did not reach the source: %s",
                  serr->message);
        g_error_free(serr);
    }
    RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(now_us() - t0) / 1000);
    return true;
}

/* ---------------------------------------------------------------- postcopy */

static bool postcopy_expected(RdmigSession *s, const char *msg, GError **error)
{
    if (s->features & RDMIG_FEATURE_POSTCOPY)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "%s received, but postcopy was not negotiated", msg);
    return false;
}

bool rdmig_destination_store_source_keys(RdmigSession *s, const RdmigFrame *f, GError **error)
{
    if (!postcopy_expected(s, "SOURCE_REGIONS", error))
        return false;
    g_autofree RdmigRegions *keys = g_new0(RdmigRegions, 1);
    if (!rdmig_regions_decode(f->payload, f->hdr.length, keys, error))
        return false;
    if (keys->n_blocks != s->blocks->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "SOURCE_REGIONS has keys for %u RAM blocks, we have %u", keys->n_blocks,
                    s->blocks->len);
        return false;
    }
    for (guint i = 0; i < s->blocks->len; i++)
        ((RdmigRamBlock *)s->blocks->pdata[i])->src_key = keys->keys[i];
    s->have_src_keys = true;
    return true;
}

static bool mark_discard(RdmigSession *s, const RdmigFrame *f, GError **error)
{
    if (!postcopy_expected(s, "DISCARD", error))
        return false;
    RdmigZeroMsg z;
    if (!rdmig_zero_decode(f->payload, f->hdr.length, &z, error)) {
        g_prefix_error(error, "DISCARD: ");
        return false;
    }
    RdmigRamBlock *b = block_at(s, z.block, "DISCARD", error);
    if (!b)
        return false;
    if (!b->needed)
        b->needed = rdmig_bitmap_new(b->npages);
    for (uint32_t i = 0; i < z.n_runs; i++) {
        uint64_t first;
        uint32_t count;
        if (!run_at(&z, i, b, "DISCARD", &first, &count, error))
            return false;
        /* Dropped at once: before the switchover this runs while the guest
         * still runs on the source, outside the downtime. */
        uint64_t p = first;
        while (p < first + count) {
            if (rdmig_bitmap_test(b->needed, p)) {
                p++;
                continue;
            }
            uint64_t end = p;
            while (end < first + count && !rdmig_bitmap_test(b->needed, end))
                end++;
            if (!rdmig_postcopy_drop(b, p, end - p, error))
                return false;
            rdmig_bitmap_set_range(b->needed, p, end - p);
            /* Checked at PREPARE as held; they count when pulled instead. */
            if (s->postcopy_prepared && (s->features & RDMIG_FEATURE_VERIFY))
                s->held_verified -= end - p;
            for (uint64_t q = p; b->hash_known && q < end; q++)
                rdmig_bitmap_clear(b->hash_known, q);
            p = end;
        }
    }
    return true;
}

/* Before the switchover: our RAM stops being the peer's to write, and what
 * we hold is checked while the source's guest still runs. */
static bool postcopy_prepare(RdmigSession *s, GError **error)
{
    if (!postcopy_expected(s, "POSTCOPY_PREPARE", error))
        return false;
    if (s->postcopy_prepared) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "a second POSTCOPY_PREPARE");
        return false;
    }
    stop_data_pollers(s);
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (b->region)
            s->tp->deregister_region(b->region);
        b->region = NULL;
        if (!b->needed)
            b->needed = rdmig_bitmap_new(b->npages);
    }
    RdmigCompleteAck ack = { 0 };
    if ((s->features & RDMIG_FEATURE_VERIFY) && !verify_all(s, &ack)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERIFY, "%s", ack.message);
        return false;
    }
    s->held_verified = ack.pages_verified;
    /* Zero copy's second mappings registered now, while the source's guest
     * still runs: in the downtime this took 60 ms for 64 MiB over rxe. */
    if (!rdmig_postcopy_map_aliases(s, error))
        return false;
    s->postcopy_prepared = true;
    RDMIG_STATS_UPDATE(s, s->stats.verify_time_ms = ack.verify_us / 1000);
    return rdmig_session_send(s, RDMIG_MSG_POSTCOPY_PREPARED,
                              rdmig_u64_encode(ack.pages_verified), error);
}

/* Runs the guest here (the pager has armed userfaultfd by now). */
static bool postcopy_resume(RdmigSession *s, GError **error)
{
    if (s->guest.load_device_state &&
        !s->guest.load_device_state(s->guest_opaque, s->device_state ? s->device_state->data : NULL,
                                    s->device_state ? s->device_state->len : 0, error)) {
        g_prefix_error(error, "loading device state: ");
        return false;
    }
    if (s->guest.resume)
        s->guest.resume(s->guest_opaque);
    RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(now_us() - s->t_stop) / 1000);
    /* The guest runs here now, whatever the link does: a failed send is
     * the pager's to notice (and pause on). */
    g_autoptr(GError) serr = NULL;
    if (!rdmig_session_send(s, RDMIG_MSG_POSTCOPY_RUNNING, rdmig_u64_encode(0), &serr))
        g_warning("the guest runs here, but telling the source failed: %s", serr->message);
    return true;
}

static bool postcopy(RdmigSession *s, GError **error)
{
    if (!postcopy_expected(s, "POSTCOPY_START", error))
        return false;
    if (!s->have_src_keys || !s->postcopy_prepared) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "POSTCOPY_START before %s", !s->have_src_keys
                        ? "SOURCE_REGIONS: nowhere to pull pages from" : "POSTCOPY_PREPARE");
        return false;
    }
    if (!rdmig_session_set_state(s, RDMIG_STATE_ACTIVE, RDMIG_STATE_POSTCOPY_ACTIVE)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    s->t_stop = now_us();
    s->postcopy_fresh_hashes = true;
    uint64_t discarded = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        discarded += rdmig_bitmap_count(b->needed, b->npages);
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.postcopy = true;
        s->stats.pages_discarded = discarded;
    });
    RdmigCompleteAck ack = { .pages_verified = s->held_verified };
    bool ok = rdmig_postcopy_pull(s, postcopy_resume, &ack, error);
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_verified = ack.pages_verified;
        s->stats.verify_mismatches = ack.mismatches;
    });
    ack.verify_us = s->stats.verify_time_ms * 1000;
    if (!ok && !ack.status) {
        ack.status = 1 + ((*error)->domain == RDMIG_ERROR ? (uint32_t)(*error)->code
                                                          : RDMIG_ERROR_PEER);
        g_strlcpy(ack.message, (*error)->message, sizeof(ack.message));
    }
    GError *serr = NULL;
    if (!rdmig_session_send(s, RDMIG_MSG_COMPLETE_ACK, rdmig_complete_ack_encode(&ack), &serr)) {
        if (ok)
            g_warning("postcopy completed, but the acknowledgement did not reach the source: %s",
                      serr->message);
        g_error_free(serr);
    }
    return ok;
}

static bool receive(RdmigSession *s, GError **error)
{
    for (;;) {
        RdmigFrame f;
        int r = rdmig_session_recv(s, &f, -1, error);
        if (r < 0)
            return false;
        if (r == 0)
            continue;
        bool ok = true;
        switch (f.hdr.type) {
        case RDMIG_MSG_ZERO:
            ok = apply_zero(s, &f, error);
            break;
        case RDMIG_MSG_ROUND_END: {
            uint64_t round;
            ok = rdmig_u64_decode(f.payload, f.hdr.length, &round, "ROUND_END", error);
            if (ok)
                s->round_applied = round;
            ok = ok &&
                 rdmig_session_send(s, RDMIG_MSG_ROUND_ACK, rdmig_u64_encode(round), error);
            RDMIG_STATS_UPDATE(s, s->stats.rounds = round);
            break;
        }
        case RDMIG_MSG_DEVICE_STATE:
            if (s->device_state)
                g_byte_array_unref(s->device_state);
            s->device_state = g_byte_array_sized_new(f.hdr.length);
            g_byte_array_append(s->device_state, f.payload, f.hdr.length);
            break;
        case RDMIG_MSG_HASHES:
            ok = store_hashes(s, &f, error);
            break;
        case RDMIG_MSG_COMPLETE:
            return complete(s, error);
        case RDMIG_MSG_SOURCE_REGIONS:
            ok = rdmig_destination_store_source_keys(s, &f, error);
            break;
        case RDMIG_MSG_DISCARD:
            ok = mark_discard(s, &f, error);
            break;
        case RDMIG_MSG_POSTCOPY_PREPARE:
            ok = postcopy_prepare(s, error);
            break;
        case RDMIG_MSG_POSTCOPY_START:
            return postcopy(s, error);
        default:
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "unexpected %s message from the source during migration",
                        rdmig_msg_type_str(f.hdr.type));
            return false;
        }
        if (!ok)
            return false;
    }
}

/* ---------------------------------------------------------------- recovery */

void rdmig_destination_drop_link(RdmigSession *s)
{
    stop_data_pollers(s);
    rdmig_session_stop_keepalive(s);
    if (s->data_listener)
        s->tp->listener_close(s->data_listener);
    s->data_listener = NULL;
    rdmig_session_close_data(s, true);
    rdmig_session_close_control(s);
}

int rdmig_destination_recover_listener(RdmigSession *s, int current)
{
    g_mutex_lock(&s->lock);
    if (s->recover_fd_new >= 0) {
        if (current >= 0)
            close(current);
        current = s->recover_fd_new;
        s->recover_fd_new = -1;
    }
    g_mutex_unlock(&s->lock);
    return current;
}

bool rdmig_destination_recover_link(RdmigSession *s, int listen_fd, GError **error)
{
    int fd = rdmig_socket_accept(listen_fd, (int)s->params.connect_timeout_ms, s->wake_fd, error);
    if (fd < 0)
        return false;
    s->ctl = rdmig_control_new(fd, (int)s->params.peer_timeout_ms);
    g_atomic_pointer_set(&s->last_rx_us, now_us());
    RdmigFrame f;
    RdmigHello hello = { 0 };
    bool ok = false;
    int r = rdmig_session_recv(s, &f, (int)s->params.peer_timeout_ms, error);
    if (r == 0)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "no HELLO on the recovery link");
    if (r <= 0)
        goto out;
    if (f.hdr.type != RDMIG_MSG_HELLO) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the recovery link opened with %s, not HELLO", rdmig_msg_type_str(f.hdr.type));
        goto out;
    }
    if (!rdmig_hello_decode(f.payload, f.hdr.length, &hello, error))
        goto out;
    if (memcmp(hello.session_id, s->session_id, sizeof(s->session_id))) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH,
                    "recovery refused: the connecting source belongs to another session, not "
                    "to the paused migration");
        goto out;
    }
    uint64_t want = rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED
                        ? RDMIG_FEATURE_PRECOPY_RESUME : RDMIG_FEATURE_RECOVERY;
    if (!(hello.features_required & want)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the paused migration's source came back without asking to %s",
                    want == RDMIG_FEATURE_RECOVERY ? "recover postcopy" : "resume precopy");
        goto out;
    }
    r = rdmig_session_recv(s, &f, (int)s->params.peer_timeout_ms, error);
    if (r == 0)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "no RESUME after HELLO");
    if (r <= 0)
        goto out;
    uint64_t epoch;
    if (f.hdr.type != RDMIG_MSG_RESUME) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "expected RESUME after HELLO, got %s",
                    rdmig_msg_type_str(f.hdr.type));
        goto out;
    }
    if (!rdmig_u64_decode(f.payload, f.hdr.length, &epoch, "RESUME", error))
        goto out;
    if (epoch <= s->epoch) {
        /* A replay, or a source that lost count: either could drive the
         * pages of a link we have given up on. */
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH,
                    "recovery refused: epoch %" G_GUINT64_FORMAT " is not newer than the last "
                    "one accepted (%" G_GUINT64_FORMAT ")", epoch, s->epoch);
        goto out;
    }
    ok = handshake(s, &hello, true, error);
    if (ok)
        s->epoch = epoch;
out:
    rdmig_hello_clear(&hello);
    if (!ok)
        rdmig_session_send_error(s, *error);
    return ok;
}

/* Precopy paused (precopy_resume negotiated): waits for a listener from
 * rdmig_session_recover() and for this session's source on it. */
static bool wait_precopy_resume(RdmigSession *s, GError **error)
{
    int lfd = -1;
    bool ok = false;
    for (;;) {
        lfd = rdmig_destination_recover_listener(s, lfd);
        struct pollfd p[2] = { { .fd = s->wake_fd, .events = POLLIN },
                               { .fd = lfd, .events = POLLIN } };
        if (poll(p, 2, 1000) < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            break;
        }
        if (p[0].revents) {
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof(v)) < 0) {
                /* Drained already. */
            }
            if (rdmig_session_cancelled(s)) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED,
                            "migration cancelled while precopy was paused");
                break;
            }
        }
        if (lfd < 0 || !p[1].revents)
            continue;
        GError *err = NULL;
        if (rdmig_destination_recover_link(s, lfd, &err) &&
            rdmig_session_send(s, RDMIG_MSG_RECEIVED_END, rdmig_u64_encode(s->round_applied),
                               &err) &&
            rdmig_session_resumed(s)) {
            ok = true;
            break;
        }
        if (!err)
            g_set_error(&err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        rdmig_destination_drop_link(s);
        rdmig_session_pause(s, err, true);
        g_error_free(err);
    }
    if (lfd >= 0)
        close(lfd);
    return ok;
}

/* receive(), pausing on a broken precopy link when both sides asked for it. */
static bool receive_resumable(RdmigSession *s, GError **error)
{
    for (;;) {
        GError *err = NULL;
        if (receive(s, &err))
            return true;
        if (rdmig_session_state(s) != RDMIG_STATE_ACTIVE || s->postcopy_prepared ||
            !rdmig_session_link_lost(s, err, RDMIG_FEATURE_PRECOPY_RESUME)) {
            g_propagate_error(error, err);
            return false;
        }
        rdmig_session_pause(s, err, false);
        g_error_free(err);
        rdmig_destination_drop_link(s);
        if (!wait_precopy_resume(s, error))
            return false;
    }
}

static void teardown(RdmigSession *s)
{
    rdmig_destination_drop_link(s);
    RDMIG_STATS_UPDATE(s, s->stats.bytes_transferred = s->ctl_bytes_done);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    s->listen_fd = -1;
}

gpointer rdmig_destination_thread(gpointer data)
{
    RdmigSession *s = data;
    GError *err = NULL;
    RdmigHello hello = { 0 };
    bool ok = accept_source(s, &hello, &err);
    if (ok) {
        /* One source per session: later connection attempts are refused. */
        close(s->listen_fd);
        s->listen_fd = -1;
        ok = handshake(s, &hello, false, &err);
        if (!ok)
            rdmig_session_send_error(s, err);
    }
    rdmig_hello_clear(&hello);
    if (ok) {
        s->t_active = now_us();
        RDMIG_STATS_UPDATE(s, s->stats.setup_time_ms = (uint64_t)(s->t_active - s->t_start) / 1000);
        ok = rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_ACTIVE);
        if (!ok)
            g_set_error(&err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
    }
    if (ok)
        ok = receive_resumable(s, &err);
    if (ok) {
        rdmig_session_set_state(s, rdmig_session_state(s), RDMIG_STATE_COMPLETED);
    } else {
        /* A data connection that dropped is usually the echo of a failure
         * the source explains on the control channel; prefer its words. */
        if (err->code == RDMIG_ERROR_PROTOCOL && s->ctl && s->data_error &&
            g_str_has_prefix(err->message, "data connection") &&
            (strstr(s->data_error, "closed") || strstr(s->data_error, "reset") ||
             strstr(s->data_error, "ended"))) {
            RdmigFrame f;
            GError *why = NULL;
            if (rdmig_session_recv(s, &f, 300, &why) < 0 && why &&
                why->code != RDMIG_ERROR_PROTOCOL) {
                g_error_free(err);
                err = why;
            } else {
                g_clear_error(&why);
            }
        }
        bool cancelled = g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED);
        rdmig_session_send_error(s, err); /* not if the source told us: see session_recv */
        RdmigState st = rdmig_session_state(s);
        if (cancelled && rdmig_session_set_state(s, st, RDMIG_STATE_CANCELLING))
            rdmig_session_set_state(s, RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED);
        else
            rdmig_session_set_state(s, st, RDMIG_STATE_FAILED);
        rdmig_session_take_error(s, err);
    }
    teardown(s);
    RDMIG_STATS_UPDATE(s, s->stats.total_time_ms = (uint64_t)(now_us() - s->t_start) / 1000);
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

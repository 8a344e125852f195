/* SPDX-License-Identifier: MIT */
/*
 * The source side of precopy.
 *
 * Rounds: send every dirty page (zero pages as compact runs, contiguous
 * non-zero pages merged into one request), wait until all of the round's
 * writes have completed (= placed in the destination's RAM), announce the
 * round's end and wait for its acknowledgement, sync the dirty log, then
 * decide: switch over when the pending bytes fit in bandwidth x downtime
 * limit, where bandwidth is measured from completed bytes.  Switchover stops
 * the guest, syncs once more, sends the rest, the device state and the page
 * hashes, and completes only when the destination says it verified and runs
 * the guest.  Any failure before that resumes the guest here, untouched.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "hasher.h"
#include "session.h"
#include "state.h"
#include "transport/address.h"

/* Below this many bytes a round is too short to measure bandwidth by. */
#define BW_MIN_SAMPLE (4u << 20)

static inline gint64 now_us(void) { return g_get_monotonic_time(); }

bool rdmig_source_connect(RdmigSession *s, const char *address, GError **error)
{
    int fd = rdmig_socket_connect(address, (int)s->params.connect_timeout_ms, s->wake_fd, error);
    if (fd < 0)
        return false;
    s->ctl = rdmig_control_new(fd, (int)s->params.peer_timeout_ms);
    g_atomic_pointer_set(&s->last_rx_us, now_us());
    if (getrandom(s->session_id, sizeof(s->session_id), 0) != sizeof(s->session_id))
        g_random_set_seed((guint32)now_us()); /* getrandom cannot fail for 16 bytes; belt */
    return true;
}

/* ---------------------------------------------------------------- handshake */

/* HELLO, then (@recovering) RESUME with the new epoch; takes HELLO_ACK: the
 * features, the data transport and how many connections.  @skip: a
 * transport not to offer again (it could not connect on the last attempt). */
static bool exchange_hello(RdmigSession *s, bool recovering, const RdmigTransportOps *skip,
                           RdmigHelloAck *ack, GError **error)
{
    const RdmigTransportOps *all[RDMIG_MAX_TRANSPORTS], *mine[RDMIG_MAX_TRANSPORTS];
    uint32_t nall = rdmig_session_transports(s, all, RDMIG_MAX_TRANSPORTS, error), nmine = 0;
    if (!nall)
        return false;
    for (uint32_t i = 0; i < nall; i++)
        if (all[i] != skip || nall == 1)
            mine[nmine++] = all[i];

    /* Postcopy pulls faults on a connection of their own, away from bulk reads. */
    uint32_t want_conns = s->params.postcopy ? MAX(s->params.data_connections, 2u)
                                             : s->params.data_connections;
    RdmigHello h = { .version = RDMIG_PROTOCOL_VERSION,
                     .features_supported = RDMIG_FEATURES_KNOWN,
                     .features_required = (s->params.verify ? RDMIG_FEATURE_VERIFY : 0) |
                                          (s->params.postcopy ? RDMIG_FEATURE_POSTCOPY : 0) |
                                          (recovering ? (s->postcopy_started
                                                             ? RDMIG_FEATURE_RECOVERY
                                                             : RDMIG_FEATURE_PRECOPY_RESUME)
                                                      : 0),
                     .data_connections = want_conns,
                     .n_transports = nmine,
                     .n_blocks = s->blocks->len };
    if (!s->params.verify)
        h.features_supported &= ~RDMIG_FEATURE_VERIFY;
    if (!s->params.postcopy)
        h.features_supported &= ~(RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY);
    if (!s->params.precopy_resume)
        h.features_supported &= ~RDMIG_FEATURE_PRECOPY_RESUME;
    memcpy(h.session_id, s->session_id, sizeof(h.session_id));
    for (uint32_t i = 0; i < nmine; i++)
        g_strlcpy(h.transports[i], mine[i]->name, sizeof(h.transports[i]));
    RdmigWireBlock wb[RDMIG_MAX_BLOCKS];
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        g_strlcpy(wb[i].name, b->name, sizeof(wb[i].name));
        wb[i].length = b->length;
        wb[i].page_size = b->page_size;
    }
    h.blocks = wb;
    if (!rdmig_session_send(s, RDMIG_MSG_HELLO, rdmig_hello_encode(&h), error))
        return false;
    if (recovering &&
        !rdmig_session_send(s, RDMIG_MSG_RESUME, rdmig_u64_encode(s->epoch), error))
        return false;

    RdmigFrame f;
    int r = rdmig_session_recv(s, &f, -1, error);
    if (r <= 0)
        return false;
    if (f.hdr.type != RDMIG_MSG_HELLO_ACK) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "expected HELLO_ACK from the destination, got %s",
                    rdmig_msg_type_str(f.hdr.type));
        return false;
    }
    if (!rdmig_hello_ack_decode(f.payload, f.hdr.length, ack, error))
        return false;
    uint64_t enabled;
    if (!rdmig_features_negotiate(h.features_supported, h.features_required,
                                  ack->features_supported, 0, &enabled, error))
        return false;
    if (ack->features_enabled & ~enabled) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination enabled features 0x%" G_GINT64_MODIFIER "x that are not shared",
                    ack->features_enabled & ~enabled);
        return false;
    }
    if (recovering && ack->features_enabled != s->features) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the recovered destination enabled features 0x%" G_GINT64_MODIFIER "x, the "
                    "paused migration has 0x%" G_GINT64_MODIFIER "x", ack->features_enabled,
                    s->features);
        return false;
    }
    s->features = ack->features_enabled;
    s->tp = NULL;
    for (uint32_t i = 0; i < nmine; i++)
        if (strcmp(mine[i]->name, ack->transport) == 0)
            s->tp = mine[i];
    if (!s->tp) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination chose data transport '%s', which was not offered", ack->transport);
        return false;
    }
    if (!ack->data_connections || ack->data_connections > want_conns) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination asked for %u data connections, %u were offered",
                    ack->data_connections, want_conns);
        return false;
    }
    s->nconns = ack->data_connections;
    rdmig_session_start_keepalive(s);
    return true;
}

/* The data transport and its connections, as HELLO_ACK said. */
static bool open_data(RdmigSession *s, const RdmigHelloAck *ack, GError **error)
{
    RdmigTransportConfig cfg = { .queue_depth = RDMIG_REQS_PER_CONN,
                                 .connect_timeout_ms = s->params.connect_timeout_ms,
                                 .max_io_bytes = RDMIG_IO_PAGES_MAX * 65536u,
                                 .ack_timeout = s->params.rdma_ack_timeout,
                                 .conn_token = ack->conn_token };
    s->transport = s->tp->create(&cfg, error);
    if (!s->transport)
        return false;
    /* Connections first: an RDMA transport learns its device (and so has a
     * protection domain to register memory in) only when it connects. */
    for (uint32_t i = 0; i < s->nconns; i++) {
        s->conns[i] = s->tp->connect(s->transport, ack->data_address, error);
        if (!s->conns[i]) {
            g_prefix_error(error, "data connection %u of %u: ", i + 1, s->nconns);
            return false;
        }
    }
    RDMIG_STATS_UPDATE(s, {
        g_strlcpy(s->stats.transport, s->tp->name, sizeof(s->stats.transport));
        s->stats.data_connections = s->nconns;
    });
    return true;
}

/* REGIONS: the keys of the destination's RAM, one per block. */
static bool take_regions(RdmigSession *s, GError **error)
{
    RdmigFrame f;
    int r = rdmig_session_recv(s, &f, -1, error);
    if (r <= 0)
        return false;
    if (f.hdr.type != RDMIG_MSG_REGIONS) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "expected REGIONS from the destination, got %s",
                    rdmig_msg_type_str(f.hdr.type));
        return false;
    }
    g_autofree RdmigRegions *regions = g_new0(RdmigRegions, 1);
    if (!rdmig_regions_decode(f.payload, f.hdr.length, regions, error))
        return false;
    if (regions->n_blocks != s->blocks->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination sent keys for %u RAM blocks, we have %u", regions->n_blocks,
                    s->blocks->len);
        return false;
    }
    for (guint i = 0; i < s->blocks->len; i++)
        ((RdmigRamBlock *)s->blocks->pdata[i])->rkey = regions->keys[i];
    return true;
}

static bool handshake(RdmigSession *s, GError **error)
{
    RdmigHelloAck ack;
    return exchange_hello(s, false, NULL, &ack, error) && take_regions(s, error) &&
           open_data(s, &ack, error);
}

/* ---------------------------------------------------------------- dirty log */

static bool dirty_start(RdmigSession *s, GError **error)
{
    if (s->have_dirty_ops) {
        RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.dirty_method, "caller",
                                        sizeof(s->stats.dirty_method)));
        return !s->dirty_ops.start || s->dirty_ops.start(s->dirty_opaque, error);
    }
    s->tracker = rdmig_dirty_tracker_new(s->params.dirty_method, error);
    if (!s->tracker)
        return false;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (!rdmig_dirty_tracker_add(s->tracker, b->host, b->length, b->page_size,
                                     &b->tracker_index, error))
            return false;
    }
    RdmigDirtyMethod method = rdmig_dirty_tracker_method(s->tracker);
    RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.dirty_method, rdmig_dirty_method_str(method),
                                    sizeof(s->stats.dirty_method)));
    if (method == RDMIG_DIRTY_SOFT_DIRTY && (!s->guest.stop || !s->guest.resume)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "the soft-dirty tracker loses writes made while it syncs unless the guest "
                    "pauses: give the guest's stop and resume hooks, or use uffd-wp "
                    "(Linux >= 6.7)");
        return false;
    }
    return rdmig_dirty_tracker_start(s->tracker, error);
}

/* soft-dirty reads pagemap and clears in two steps, and a write between
 * the two is lost (engine/dirty.c): the guest pauses across its syncs, as
 * CRIU freezes a task.  uffd-wp and the caller's own log need no pause. */
static bool sync_pauses_guest(RdmigSession *s)
{
    return !s->have_dirty_ops && s->tracker && !s->guest_stopped &&
           rdmig_dirty_tracker_method(s->tracker) == RDMIG_DIRTY_SOFT_DIRTY;
}

/* ORs every block's written pages into its dirty bitmap. */
static bool sync_blocks(RdmigSession *s, GError **error)
{
    bool pause = sync_pauses_guest(s);
    if (pause && !s->guest.stop(s->guest_opaque, error)) {
        g_prefix_error(error, "pausing the guest for a soft-dirty sync: ");
        return false;
    }
    bool ok = true;
    for (guint i = 0; i < s->blocks->len && ok; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        ok = s->have_dirty_ops
                 ? s->dirty_ops.sync(s->dirty_opaque, i, b->dirty, b->npages, error)
                 : rdmig_dirty_tracker_sync(s->tracker, b->tracker_index, b->dirty, error);
    }
    if (pause)
        s->guest.resume(s->guest_opaque);
    return ok;
}

static bool dirty_sync(RdmigSession *s, uint64_t *pending, GError **error)
{
    if (!sync_blocks(s, error))
        return false;
    uint64_t n = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        n += rdmig_bitmap_count(b->dirty, b->npages) * b->page_size;
    }
    *pending = n;
    RDMIG_STATS_UPDATE(s, s->stats.dirty_sync_count++);
    return true;
}

static void dirty_stop(RdmigSession *s)
{
    if (s->have_dirty_ops) {
        if (s->dirty_ops.stop)
            s->dirty_ops.stop(s->dirty_opaque);
    } else {
        g_clear_pointer(&s->tracker, rdmig_dirty_tracker_free);
    }
}

/* ---------------------------------------------------------------- events */

static bool check_silence(RdmigSession *s, GError **error)
{
    gint64 silent = (now_us() - g_atomic_pointer_get(&s->last_rx_us)) / 1000;
    if (silent <= s->params.peer_timeout_ms)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                "destination silent for %" G_GINT64_FORMAT " ms (peer timeout %u ms): it "
                "stalled, or the network between us is down", silent, s->params.peer_timeout_ms);
    return false;
}

static bool reap_batch(RdmigSession *s, uint32_t ci, int *count, GError **error)
{
    RdmigIoReq *done[32];
    int n = s->tp->poll(s->conns[ci], done, G_N_ELEMENTS(done));
    *count = n;
    if (n < 0) {
        const char *why = s->tp->conn_error(s->conns[ci]);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "data connection %u failed: %s", ci,
                    why ? why : g_strerror(-n));
        return false;
    }
    uint64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        RdmigPageReq *pr = done[i]->user;
        if (done[i]->status < 0) {
            const char *why = s->tp->conn_error(s->conns[ci]);
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "data connection %u failed: %s", ci,
                        why ? why : g_strerror(-done[i]->status));
            return false;
        }
        pr->busy = false;
        s->inflight--;
        bytes += pr->bytes;
    }
    if (n) {
        s->round_bytes += bytes;
        s->total_data_bytes += bytes;
        RDMIG_STATS_UPDATE(s, s->stats.bytes_transferred += bytes);
    }
    return true;
}

/* Reaps until the transport has no more completions ready: a full batch may
 * leave more behind with nothing left to wake a poll(2) for them. */
static bool reap(RdmigSession *s, uint32_t ci, GError **error)
{
    int n;
    do {
        if (!reap_batch(s, ci, &n, error))
            return false;
    } while (n == 32);
    return true;
}

static bool handle_message(RdmigSession *s, const RdmigFrame *f, GError **error)
{
    switch (f->hdr.type) {
    case RDMIG_MSG_ROUND_ACK:
        return rdmig_u64_decode(f->payload, f->hdr.length, &s->round_ack, "ROUND_ACK", error);
    case RDMIG_MSG_POSTCOPY_PREPARED:
        s->postcopy_prepared = true;
        return true;
    case RDMIG_MSG_POSTCOPY_RUNNING:
        if (!s->postcopy_started) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "POSTCOPY_RUNNING from the destination, but postcopy has not begun");
            return false;
        }
        s->postcopy_running = true;
        return true;
    case RDMIG_MSG_COMPLETE_ACK:
        if (!rdmig_complete_ack_decode(f->payload, f->hdr.length, &s->complete_ack, error))
            return false;
        s->complete_acked = true;
        return true;
    default:
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "unexpected %s message from the destination during migration",
                    rdmig_msg_type_str(f->hdr.type));
        return false;
    }
}

/* Waits up to @timeout_ms for completions, a control message or a cancel,
 * and handles what came. */
static bool wait_events(RdmigSession *s, int timeout_ms, GError **error)
{
    struct pollfd p[RDMIG_MAX_DATA_CONNS + 2];
    uint32_t n = 0;
    /* After the last write completed, the destination may close its end of
     * the data connections at any time: only the control channel counts. */
    uint32_t nconns = s->data_done ? 0 : s->nconns;
    for (uint32_t i = 0; i < nconns; i++) {
        short ev;
        p[n].fd = s->tp->conn_fd(s->conns[i], &ev);
        p[n++].events = ev;
    }
    p[n++] = (struct pollfd){ .fd = rdmig_control_fd(s->ctl), .events = POLLIN };
    p[n++] = (struct pollfd){ .fd = s->wake_fd, .events = POLLIN };
    if (poll(p, n, timeout_ms) < 0 && errno != EINTR) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return false;
    }
    if (rdmig_session_cancelled(s)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    /* The control channel first: once the destination has acknowledged the
     * end (postcopy), its closing the data connections is no failure. */
    if (p[nconns].revents) {
        RdmigFrame f;
        int r = rdmig_session_recv(s, &f, 0, error);
        if (r < 0)
            return false;
        if (r > 0 && !handle_message(s, &f, error))
            return false;
    }
    for (uint32_t i = 0; i < nconns && !s->complete_acked; i++)
        if (p[i].revents && !reap(s, i, error))
            return false;
    return check_silence(s, error);
}

/* ---------------------------------------------------------------- sending */

static RdmigPageReq *free_req(RdmigSession *s, GError **error)
{
    for (;;) {
        for (uint32_t i = 0; i < s->nreqs; i++) {
            uint32_t k = (s->next_conn * RDMIG_REQS_PER_CONN + i) % s->nreqs;
            if (!s->reqs[k].busy)
                return &s->reqs[k];
        }
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return NULL;
    }
}

static bool pace(RdmigSession *s, uint64_t bytes, GError **error)
{
    if (!s->params.max_bandwidth)
        return true;
    for (;;) {
        gint64 now = now_us();
        if (now - (gint64)s->bw_window_start_us >= 1000000) {
            s->bw_window_start_us = now;
            s->bw_window_bytes = 0;
        }
        uint64_t allowed = s->params.max_bandwidth * (uint64_t)(now - s->bw_window_start_us) /
                           1000000 + s->params.max_bandwidth / 20;
        if (s->bw_window_bytes + bytes <= allowed) {
            s->bw_window_bytes += bytes;
            return true;
        }
        if (!wait_events(s, 5, error))
            return false;
    }
}

static bool submit_run(RdmigSession *s, RdmigRamBlock *b, uint64_t first, uint64_t n,
                       GError **error)
{
    uint64_t bytes = n * b->page_size;
    if (!pace(s, bytes, error))
        return false;
    RdmigPageReq *pr = free_req(s, error);
    if (!pr)
        return false;
    pr->io = (RdmigIoReq){ .op = RDMIG_IO_WRITE, .iovcnt = 1, .rkey = &b->rkey,
                           .remote_offset = first * b->page_size, .user = pr };
    pr->io.iov[0] = (struct iovec){ b->host + first * b->page_size, bytes };
    pr->bytes = bytes;
    for (;;) {
        for (uint32_t k = 0; k < s->nconns; k++) {
            uint32_t ci = (s->next_conn + k) % s->nconns;
            int r = s->tp->submit(s->conns[ci], &pr->io);
            if (r == -EAGAIN)
                continue;
            if (r < 0) {
                const char *why = s->tp->conn_error(s->conns[ci]);
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                            "data connection %u: cannot post a write: %s", ci,
                            why ? why : g_strerror(-r));
                return false;
            }
            pr->busy = true;
            pr->conn = (int)ci;
            s->inflight++;
            s->next_conn = (ci + 1) % s->nconns;
            /* Let the transport start moving bytes now, not at the next wait. */
            return reap(s, ci, error);
        }
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return false;
    }
}

static bool flush_zero(RdmigSession *s, GByteArray **zm)
{
    if (!*zm)
        return true;
    rdmig_zero_finish(*zm);
    GError *err = NULL;
    bool ok = rdmig_session_send(s, RDMIG_MSG_ZERO, *zm, &err);
    *zm = NULL;
    if (!ok)
        rdmig_session_take_error(s, err);
    return ok;
}

/* Sends every page set in the blocks' dirty bitmaps, clearing them. */
static bool send_dirty(RdmigSession *s, GError **error)
{
    bool verify = s->features & RDMIG_FEATURE_VERIFY;
    bool zero_runs = s->features & RDMIG_FEATURE_ZERO_PAGES;
    uint64_t sent = 0, zero = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        GByteArray *zm = NULL;
        uint64_t zfirst = 0, zcount = 0;
        uint64_t i = rdmig_bitmap_next_set(b->dirty, b->npages, 0);
        while (i < b->npages) {
            if (rdmig_session_cancelled(s)) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
                if (zm)
                    g_byte_array_unref(zm);
                return false;
            }
            uint8_t *page = b->host + i * b->page_size;
            if (zero_runs && rdmig_page_is_zero(page, b->page_size)) {
                rdmig_bitmap_clear(b->dirty, i);
                if (b->sent_unacked)
                    rdmig_bitmap_set(b->sent_unacked, i);
                if (verify)
                    b->hashes[i] = b->zero_hash;
                if (zcount && zfirst + zcount == i) {
                    zcount++;
                } else {
                    if (zcount) {
                        if (!zm)
                            zm = rdmig_zero_begin(bi);
                        rdmig_zero_run_put(zm, zfirst, (uint32_t)zcount);
                        if ((zm->len - 8) / 12 >= RDMIG_ZERO_RUNS_PER_MSG && !flush_zero(s, &zm))
                            goto send_failed;
                    }
                    zfirst = i;
                    zcount = 1;
                }
                zero++;
                i = rdmig_bitmap_next_set(b->dirty, b->npages, i + 1);
                continue;
            }
            uint64_t n = 0;
            do {
                uint8_t *pg = b->host + (i + n) * b->page_size;
                if (n && zero_runs && rdmig_page_is_zero(pg, b->page_size))
                    break;
                rdmig_bitmap_clear(b->dirty, i + n);
                n++;
            } while (n < RDMIG_IO_PAGES_MAX && i + n < b->npages &&
                     (uint64_t)n * b->page_size < RDMIG_IO_PAGES_MAX * 4096u &&
                     rdmig_bitmap_test(b->dirty, i + n));
            if (verify)
                rdmig_hasher_push(s->hasher, page, b->hashes + i, n, b->page_size);
            if (b->sent_unacked)
                rdmig_bitmap_set_range(b->sent_unacked, i, n);
            if (!submit_run(s, b, i, n, error)) {
                if (zm)
                    g_byte_array_unref(zm);
                return false;
            }
            sent += n;
            i = rdmig_bitmap_next_set(b->dirty, b->npages, i + n);
            RDMIG_STATS_UPDATE(s, s->stats.remaining_bytes = s->stats.remaining_bytes >
                                   n * b->page_size ? s->stats.remaining_bytes - n * b->page_size
                                                    : 0);
        }
        if (zcount) {
            if (!zm)
                zm = rdmig_zero_begin(bi);
            rdmig_zero_run_put(zm, zfirst, (uint32_t)zcount);
        }
        if (!flush_zero(s, &zm))
            goto send_failed;
    }
    while (s->inflight)
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return false;
    /* This round's hashes are complete before the next round may take the
     * same pages again, and before stop-and-copy sends them. */
    if (s->hasher)
        rdmig_hasher_drain(s->hasher);
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_sent += sent;
        s->stats.pages_zero += zero;
    });
    return true;

send_failed:
    g_mutex_lock(&s->lock);
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "%s", s->error ? s->error->message : "");
    g_mutex_unlock(&s->lock);
    return false;
}

/* Ends a round: every write has completed; the destination applies all
 * earlier control messages (zero runs) before it acknowledges, so the next
 * round's writes cannot overtake them. */
static bool end_round(RdmigSession *s, uint64_t round, GError **error)
{
    if (!rdmig_session_send(s, RDMIG_MSG_ROUND_END, rdmig_u64_encode(round), error))
        return false;
    while (s->round_ack < round)
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return false;
    if (s->round_ack != round) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination acknowledged round %" G_GUINT64_FORMAT " during round %"
                    G_GUINT64_FORMAT, s->round_ack, round);
        return false;
    }
    /* Everything sent so far is placed and applied there. */
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        if (b->sent_unacked)
            memset(b->sent_unacked, 0, rdmig_bitmap_words(b->npages) * 8);
    }
    return true;
}

/* ---------------------------------------------------------------- phases */

/* Postcopy: the keys the destination reads our RAM with. */
static bool send_source_keys(RdmigSession *s, GError **error)
{
    g_autofree RdmigRegions *keys = g_new0(RdmigRegions, 1);
    keys->n_blocks = s->blocks->len;
    for (guint i = 0; i < s->blocks->len; i++)
        s->tp->region_key(((RdmigRamBlock *)s->blocks->pdata[i])->region, &keys->keys[i]);
    return rdmig_session_send(s, RDMIG_MSG_SOURCE_REGIONS, rdmig_regions_encode(keys), error);
}

static bool setup_memory(RdmigSession *s, GError **error)
{
    bool verify = s->features & RDMIG_FEATURE_VERIFY;
    uint64_t untouched = 0, total = 0, pending = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        b->dirty = rdmig_bitmap_new(b->npages);
        if (verify) {
            g_autofree uint8_t *zero = g_malloc0(b->page_size);
            b->zero_hash = rdmig_page_hash(zero, b->page_size);
            b->hashes = g_new(uint64_t, b->npages);
            if (!s->hasher)
                s->hasher = rdmig_hasher_new();
            for (uint64_t p = 0; p < b->npages; p++)
                b->hashes[p] = b->zero_hash;
        }
    }
    /* Arm the dirty log before reading anything: a write during round 1 must
     * land in round 2's set. */
    if (!dirty_start(s, error))
        return false;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (!rdmig_ram_resident(b->host, b->length, b->page_size, b->dirty, error))
            return false;
        uint64_t touched = rdmig_bitmap_count(b->dirty, b->npages);
        untouched += b->npages - touched;
        total += b->npages;
        pending += touched * b->page_size;
    }
    /* After the resident scan: registering pins (and so populates) pages,
     * which would make never-touched pages look touched. */
    gint64 t0 = now_us();
    bool postcopy = s->features & RDMIG_FEATURE_POSTCOPY;
    /* Readable by the peer only when it may pull pages (postcopy). */
    if (!rdmig_session_register_blocks(s, postcopy ? RDMIG_ACCESS_REMOTE_READ : 0, error))
        return false;
    if (postcopy && !send_source_keys(s, error))
        return false;
    RDMIG_STATS_UPDATE(s, s->stats.registration_time_ms = (uint64_t)(now_us() - t0) / 1000);
    /* Pinning can mark every page written (soft-dirty does, with rxe): take
     * that into round 1, which sends those pages anyway, rather than into
     * round 2.  Pages only populated by the pin are zero and go as zero runs. */
    if (!sync_blocks(s, error))
        return false;
    s->nreqs = s->nconns * RDMIG_REQS_PER_CONN;
    s->reqs = g_new0(RdmigPageReq, s->nreqs);
    for (guint i = 0; (s->features & RDMIG_FEATURE_PRECOPY_RESUME) && i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        b->sent_unacked = rdmig_bitmap_new(b->npages);
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.pages_total = total;
        s->stats.pages_untouched = untouched;
        s->stats.remaining_bytes = pending;
    });
    return true;
}

static bool send_hashes(RdmigSession *s, GError **error)
{
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        for (uint64_t first = 0; first < b->npages; first += RDMIG_HASHES_PER_MSG) {
            uint32_t n = (uint32_t)MIN((uint64_t)RDMIG_HASHES_PER_MSG, b->npages - first);
            if (!rdmig_session_send(s, RDMIG_MSG_HASHES,
                                    rdmig_hashes_encode(bi, first, b->hashes + first, n), error))
                return false;
        }
    }
    return true;
}

/* Leaves precopy for @to and stops the guest: the downtime starts here. */
static bool stop_guest(RdmigSession *s, RdmigState to, GError **error)
{
    if (!rdmig_session_set_state(s, RDMIG_STATE_ACTIVE, to)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    s->t_stop = now_us();
    if (s->guest.stop && !s->guest.stop(s->guest_opaque, error)) {
        g_prefix_error(error, "stopping the guest: ");
        return false;
    }
    s->guest_stopped = true;
    return true;
}

/* The destination's verdict, from COMPLETE_ACK, into the stats. */
static bool take_complete_ack(RdmigSession *s, GError **error)
{
    const RdmigCompleteAck *a = &s->complete_ack;
    RDMIG_STATS_UPDATE(s, {
        s->stats.verify_time_ms = a->verify_us / 1000;
        s->stats.pages_verified = a->pages_verified;
        s->stats.verify_mismatches = a->mismatches;
        s->stats.remaining_bytes = 0;
    });
    if (a->status) {
        /* status is 1 + RdmigErrorCode: 0 stays "completed". */
        g_set_error(error, RDMIG_ERROR, (int)a->status - 1, "destination did not complete: %s",
                    a->message);
        return false;
    }
    return true;
}

static bool stop_and_copy(RdmigSession *s, uint64_t round, GError **error)
{
    if (!stop_guest(s, RDMIG_STATE_DEVICE, error))
        return false;
    uint64_t pending;
    if (!dirty_sync(s, &pending, error))
        return false;
    RDMIG_STATS_UPDATE(s, {
        s->stats.rounds = round;
        s->stats.remaining_bytes = pending;
    });
    if (!send_dirty(s, error) || !end_round(s, round, error))
        return false;
    s->data_done = true;
    RDMIG_STATS_UPDATE(s, s->stats.data_cpu_us = rdmig_thread_cpu_us() - s->cpu_at_active_us);
    GByteArray *dev = g_byte_array_new();
    if (s->guest.save_device_state &&
        !s->guest.save_device_state(s->guest_opaque, dev, error)) {
        g_byte_array_unref(dev);
        g_prefix_error(error, "saving device state: ");
        return false;
    }
    if (dev->len > RDMIG_CONTROL_MAX_PAYLOAD) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "device state of %u bytes exceeds the %u-byte message limit", dev->len,
                    RDMIG_CONTROL_MAX_PAYLOAD);
        g_byte_array_unref(dev);
        return false;
    }
    if (!rdmig_session_send(s, RDMIG_MSG_DEVICE_STATE, dev, error))
        return false;
    if ((s->features & RDMIG_FEATURE_VERIFY) && !send_hashes(s, error))
        return false;
    s->complete_sent = true;
    if (!rdmig_session_send(s, RDMIG_MSG_COMPLETE, rdmig_u64_encode(s->stats.pages_total), error))
        return false;
    while (!s->complete_acked)
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return false;
    RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(now_us() - s->t_stop) / 1000);
    return take_complete_ack(s, error);
}

/* ---------------------------------------------------------------- postcopy */

/* Sends DISCARD runs for the pages set in every block's dirty bitmap: sent
 * before and written since, so the destination must drop and pull them. */
static bool send_discards(RdmigSession *s, uint64_t *discarded, GError **error)
{
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        GByteArray *m = NULL;
        uint64_t i = rdmig_bitmap_next_set(b->dirty, b->npages, 0);
        while (i < b->npages) {
            uint64_t end = rdmig_bitmap_next_clear(b->dirty, b->npages, i);
            uint64_t n = MIN(end - i, (uint64_t)UINT32_MAX);
            if (!m)
                m = rdmig_zero_begin(bi);
            rdmig_zero_run_put(m, i, (uint32_t)n);
            *discarded += n;
            if ((m->len - 8) / 12 >= RDMIG_ZERO_RUNS_PER_MSG) {
                rdmig_zero_finish(m);
                if (!rdmig_session_send(s, RDMIG_MSG_DISCARD, m, error))
                    return false;
                m = NULL;
            }
            i = rdmig_bitmap_next_set(b->dirty, b->npages, i + n);
        }
        if (m) {
            rdmig_zero_finish(m);
            if (!rdmig_session_send(s, RDMIG_MSG_DISCARD, m, error))
                return false;
        }
    }
    return true;
}

static bool postcopy_serve(RdmigSession *s, GError **error, bool broken);
static bool postcopy_link(RdmigSession *s, GError **error);
static void source_pause(RdmigSession *s, const GError *why);
static bool wait_resume(RdmigSession *s, GError **error);

/* Takes @err, the failure of a link.  If it @may_pause, pauses (@pause) and
 * waits until a recovery succeeds (true) or the operator gives up (false);
 * else hands @err up (false). */
static bool pause_until_resumed(RdmigSession *s, GError *err, bool may_pause,
                                void (*pause)(RdmigSession *, const GError *), GError **error)
{
    if (!may_pause) {
        g_propagate_error(error, err);
        return false;
    }
    pause(s, err);
    g_error_free(err);
    return wait_resume(s, error);
}
static bool resume_precopy_link(RdmigSession *s, const char *address,
                                const RdmigTransportOps *skip, const RdmigTransportOps **failed,
                                GError **error);

static bool wait_flag(RdmigSession *s, const bool *flag, GError **error)
{
    while (!*flag)
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return false;
    return true;
}

/*
 * Postcopy, in two steps so that the downtime holds only what must be done
 * with the guest stopped:
 *  1. guest still running here: DISCARD the pages written since they were
 *     sent, the hashes of the rest, POSTCOPY_PREPARE; the destination drops
 *     those pages, checks the ones it keeps, and says PREPARED.
 *  2. stop the guest, sync once more, DISCARD what was written meanwhile,
 *     the device state, POSTCOPY_START; the destination runs the guest and
 *     says RUNNING.  Then the final hashes of every discarded page.
 * From then on the destination pulls what it lacks from our registered RAM
 * (RDMA READ: no work here; TCP: this thread's polling answers the reads)
 * and acknowledges when it has everything.
 */
static bool postcopy(RdmigSession *s, uint64_t round, GError **error)
{
    uint64_t discarded = 0;
    if (!send_discards(s, &discarded, error))
        return false;
    if ((s->features & RDMIG_FEATURE_VERIFY) && !send_hashes(s, error))
        return false;
    if (!rdmig_session_send(s, RDMIG_MSG_POSTCOPY_PREPARE, rdmig_u64_encode(discarded), error) ||
        !wait_flag(s, &s->postcopy_prepared, error))
        return false;

    if (!stop_guest(s, RDMIG_STATE_POSTCOPY_ACTIVE, error))
        return false;
    /* Written since step 1, and not discarded then. */
    g_autoptr(GPtrArray) first = g_ptr_array_new_with_free_func(g_free);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        g_ptr_array_add(first, b->dirty);
        b->dirty = rdmig_bitmap_new(b->npages);
    }
    uint64_t pending;
    if (!dirty_sync(s, &pending, error))
        return false;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        const uint64_t *f = first->pdata[bi];
        for (size_t w = 0; w < rdmig_bitmap_words(b->npages); w++)
            b->dirty[w] &= ~f[w];
    }
    gint64 t_sync = now_us();
    if (!send_discards(s, &discarded, error))
        return false;
    g_debug("postcopy: guest stopped and synced in %" G_GINT64_FORMAT " us, %" G_GUINT64_FORMAT
            " pages discarded in all, the last ones in %" G_GINT64_FORMAT " us",
            t_sync - s->t_stop, discarded, now_us() - t_sync);
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        const uint64_t *f = first->pdata[bi];
        for (size_t w = 0; w < rdmig_bitmap_words(b->npages); w++)
            b->dirty[w] |= f[w];
    }
    RDMIG_STATS_UPDATE(s, {
        s->stats.rounds = round;
        s->stats.postcopy = true;
        s->stats.remaining_bytes = pending;
    });
    GByteArray *dev = g_byte_array_new();
    if (s->guest.save_device_state && !s->guest.save_device_state(s->guest_opaque, dev, error)) {
        g_byte_array_unref(dev);
        g_prefix_error(error, "saving device state: ");
        return false;
    }
    if (!rdmig_session_send(s, RDMIG_MSG_DEVICE_STATE, dev, error))
        return false;
    /* From here the destination may run the guest: never resume it here. */
    s->postcopy_started = true;
    if (!rdmig_session_send(s, RDMIG_MSG_POSTCOPY_START, rdmig_u64_encode(discarded), error))
        return postcopy_serve(s, error, true);
    RDMIG_STATS_UPDATE(s, s->stats.pages_discarded = discarded);
    return postcopy_serve(s, error, false);
}

/* After POSTCOPY_START: until the destination has every page.  A broken
 * link pauses (when recovery was negotiated) and waits for
 * rdmig_session_recover(); @broken: it broke already. */
static bool postcopy_serve(RdmigSession *s, GError **error, bool broken)
{
    uint64_t cpu0 = rdmig_thread_cpu_us();
    for (;;) {
        GError *err = NULL;
        if (broken) {
            broken = false;
        } else if (postcopy_link(s, &err)) {
            RDMIG_STATS_UPDATE(s, s->stats.postcopy_cpu_us = rdmig_thread_cpu_us() - cpu0);
            return take_complete_ack(s, error);
        }
        if (!err)
            err = g_error_copy(*error);
        g_clear_error(error);
        if (!pause_until_resumed(s, err, rdmig_session_link_lost(s, err, RDMIG_FEATURE_RECOVERY),
                                 source_pause, error))
            return false;
    }
}

/* Our memory no longer changes: the final hashes of the discarded pages. */
static void final_hashes(RdmigSession *s)
{
    if (s->final_hashes_done || !(s->features & RDMIG_FEATURE_VERIFY))
        return;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        for (uint64_t p = rdmig_bitmap_next_set(b->dirty, b->npages, 0); p < b->npages;
             p = rdmig_bitmap_next_set(b->dirty, b->npages, p + 1))
            b->hashes[p] = rdmig_page_hash(b->host + p * b->page_size, b->page_size);
    }
    s->final_hashes_done = true;
}

/* One link's share of postcopy: RUNNING (once), the final hashes (once per
 * link), then COMPLETE_ACK. */
static bool postcopy_link(RdmigSession *s, GError **error)
{
    while (!s->postcopy_running && !s->complete_acked)
        if (!wait_events(s, (int)s->params.keepalive_ms, error))
            return false;
    if (!s->stats.downtime_ms)
        RDMIG_STATS_UPDATE(s, s->stats.downtime_ms = (uint64_t)(now_us() - s->t_stop) / 1000);
    /* While the destination already runs the guest. */
    final_hashes(s);
    if ((s->features & RDMIG_FEATURE_VERIFY) && !s->recovery_hashes_sent) {
        if (!send_hashes(s, error))
            return false;
        s->recovery_hashes_sent = true;
    }
    while (!s->complete_acked) {
        if (wait_events(s, (int)s->params.keepalive_ms, error))
            continue;
        /* The destination closes its data connections once it has every
         * page; its acknowledgement may trail that on the control channel. */
        if (!g_str_has_prefix((*error)->message, "data connection"))
            return false;
        gint64 until = now_us() + 1000000;
        while (!s->complete_acked && now_us() < until) {
            RdmigFrame f;
            GError *cerr = NULL;
            int r = rdmig_session_recv(s, &f, 100, &cerr);
            if (r < 0 || (r > 0 && !handle_message(s, &f, &cerr))) {
                g_clear_error(error);
                g_propagate_error(error, cerr);
                return false;
            }
        }
        if (!s->complete_acked)
            return false;
        g_clear_error(error);
    }
    return true;
}

/* ---------------------------------------------------------------- recovery */

/* Closes the control channel, the data connections and the transport; our
 * RAM stays as it is. */
static void drop_link(RdmigSession *s)
{
    rdmig_session_stop_keepalive(s);
    rdmig_session_close_data(s, true);
    rdmig_session_close_control(s);
}

static void source_pause(RdmigSession *s, const GError *why)
{
    rdmig_session_pause(s, why, false);
    drop_link(s);
    s->recovery_hashes_sent = false;
}

/* RECEIVED ... RECEIVED_END: what the destination holds, which must be
 * pages we told it to pull. */
static bool take_received(RdmigSession *s, uint64_t *received, GError **error)
{
    uint64_t counted = 0;
    for (;;) {
        RdmigFrame f;
        int r = rdmig_session_recv(s, &f, -1, error);
        if (r <= 0)
            return false;
        if (f.hdr.type == RDMIG_MSG_RECEIVED_END) {
            if (!rdmig_u64_decode(f.payload, f.hdr.length, received, "RECEIVED_END", error))
                return false;
            if (*received != counted) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                            "RECEIVED_END says %" G_GUINT64_FORMAT " pages, the bitmap had %"
                            G_GUINT64_FORMAT, *received, counted);
                return false;
            }
            return true;
        }
        if (f.hdr.type != RDMIG_MSG_RECEIVED) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "expected the received bitmap from the recovering destination, got %s",
                        rdmig_msg_type_str(f.hdr.type));
            return false;
        }
        RdmigReceivedMsg m;
        if (!rdmig_received_decode(f.payload, f.hdr.length, &m, error))
            return false;
        if (m.block >= s->blocks->len) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "RECEIVED names RAM block #%u; there are only %u", m.block,
                        s->blocks->len);
            return false;
        }
        RdmigRamBlock *b = s->blocks->pdata[m.block];
        size_t words = rdmig_bitmap_words(b->npages), w0 = (size_t)(m.first / 64);
        if (m.first >= b->npages || m.n_words > words - w0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "RECEIVED for %u words at page %" G_GUINT64_FORMAT " is outside block "
                        "'%s' (%" G_GUINT64_FORMAT " pages)", m.n_words, m.first, b->name,
                        b->npages);
            return false;
        }
        for (uint32_t i = 0; i < m.n_words; i++) {
            uint64_t w = rdmig_received_word(&m, i);
            if (w & ~b->dirty[w0 + i]) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                            "RECEIVED claims pages near page %" G_GUINT64_FORMAT " of '%s' that "
                            "were never to be pulled", (uint64_t)(w0 + i) * 64, b->name);
                return false;
            }
            counted += (uint64_t)__builtin_popcountll(w);
        }
    }
}

/* The start of every recovery attempt: a new epoch, the control channel to
 * @address, HELLO + RESUME and the destination's HELLO_ACK. */
static bool connect_recovery(RdmigSession *s, const char *address,
                             const RdmigTransportOps *skip, RdmigHelloAck *ack, GError **error)
{
    s->epoch++;
    int fd = rdmig_socket_connect(address, (int)s->params.connect_timeout_ms, s->wake_fd, error);
    if (fd < 0)
        return false;
    s->ctl = rdmig_control_new(fd, (int)s->params.peer_timeout_ms);
    g_atomic_pointer_set(&s->last_rx_us, now_us());
    return exchange_hello(s, true, skip, ack, error);
}

/* open_data() on a recovery link; when it fails and another transport may
 * be used, @failed names the one that could not connect. */
static bool reopen_data(RdmigSession *s, const RdmigHelloAck *ack,
                        const RdmigTransportOps **failed, GError **error)
{
    if (open_data(s, ack, error))
        return true;
    const RdmigTransportOps *all[RDMIG_MAX_TRANSPORTS];
    if (rdmig_session_transports(s, all, RDMIG_MAX_TRANSPORTS, NULL) > 1)
        *failed = s->tp;
    return false;
}

/* One recovery attempt toward @address.  On a failure to open the data
 * connections, @failed names the transport that could not. */
static bool resume_link(RdmigSession *s, const char *address, const RdmigTransportOps *skip,
                        const RdmigTransportOps **failed, GError **error)
{
    if (!rdmig_session_set_state(s, RDMIG_STATE_POSTCOPY_PAUSED,
                                 RDMIG_STATE_POSTCOPY_RECOVER_SETUP)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    RdmigHelloAck ack;
    if (!connect_recovery(s, address, skip, &ack, error))
        return false;
    if (!rdmig_session_set_state(s, RDMIG_STATE_POSTCOPY_RECOVER_SETUP,
                                 RDMIG_STATE_POSTCOPY_RECOVER)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    if (!reopen_data(s, &ack, failed, error))
        return false;
    uint64_t received;
    if (!rdmig_session_register_blocks(s, RDMIG_ACCESS_REMOTE_READ, error) ||
        !take_received(s, &received, error) || !send_source_keys(s, error))
        return false;
    final_hashes(s);
    if (s->features & RDMIG_FEATURE_VERIFY) {
        if (!send_hashes(s, error))
            return false;
        s->recovery_hashes_sent = true;
    }
    if (!rdmig_session_send(s, RDMIG_MSG_POSTCOPY_RESUME, rdmig_u64_encode(s->epoch), error))
        return false;
    uint64_t discarded = s->stats.pages_discarded;
    g_message("postcopy recovery: the destination holds %" G_GUINT64_FORMAT " of %"
              G_GUINT64_FORMAT " pages it pulls; resuming over %s", received, discarded,
              s->tp->name);
    /* It is paused in postcopy, so it runs the guest, whether or not its
     * RUNNING reached us before the link broke. */
    s->postcopy_running = true;
    if (!rdmig_session_resumed(s)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    return true;
}

/* Paused: waits for rdmig_session_recover() and tries it; a transport that
 * cannot connect is left out of one more immediate try (RDMA gone: go on
 * over TCP).  Fails only when asked to give up. */
static bool wait_resume(RdmigSession *s, GError **error)
{
    for (;;) {
        struct pollfd p = { .fd = s->wake_fd, .events = POLLIN };
        if (poll(&p, 1, 1000) < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return false;
        }
        if (p.revents) {
            uint64_t v;
            if (read(s->wake_fd, &v, sizeof(v)) < 0) {
                /* Drained already. */
            }
        }
        if (rdmig_session_cancelled(s)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "%s",
                        rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED
                            ? "migration cancelled while precopy was paused"
                            : "postcopy given up while paused");
            return false;
        }
        g_mutex_lock(&s->lock);
        char *address = g_steal_pointer(&s->recover_address);
        g_mutex_unlock(&s->lock);
        if (!address)
            continue;
        const RdmigTransportOps *failed = NULL;
        for (int attempt = 0; attempt < 2; attempt++) {
            GError *err = NULL;
            const RdmigTransportOps *skip = failed;
            failed = NULL;
            bool precopy = rdmig_session_state(s) == RDMIG_STATE_PRECOPY_PAUSED;
            if (precopy ? resume_precopy_link(s, address, skip, &failed, &err)
                        : resume_link(s, address, skip, &failed, &err)) {
                g_free(address);
                return true;
            }
            drop_link(s);
            if (failed && attempt == 0)
                g_prefix_error(&err, "data transport %s did not come back (trying without "
                               "it): ", failed->name);
            rdmig_session_pause(s, err, true);
            g_error_free(err);
            if (!failed || rdmig_session_cancelled(s))
                break;
        }
        g_free(address);
    }
}

/* Postcopy when asked for (API call, rounds, time), or when precopy gives up
 * and the policy says so. */
static bool postcopy_due(RdmigSession *s, uint64_t round, gint64 elapsed_ms)
{
    if (!(s->features & RDMIG_FEATURE_POSTCOPY))
        return false;
    return g_atomic_int_get(&s->postcopy_requested) ||
           (s->params.postcopy_after_rounds && round >= s->params.postcopy_after_rounds) ||
           (s->params.postcopy_after_ms && elapsed_ms >= (gint64)s->params.postcopy_after_ms);
}

static bool precopy(RdmigSession *s, GError **error)
{
    uint64_t bandwidth = 0;
    /* After a resume, on from the last round the destination applied. */
    for (uint64_t round = s->round_ack + 1;; round++) {
        gint64 t0 = now_us();
        s->round_bytes = 0;
        RDMIG_STATS_UPDATE(s, s->stats.rounds = round);
        if (!send_dirty(s, error) || !end_round(s, round, error))
            return false;
        gint64 t1 = now_us();
        if (s->round_bytes >= BW_MIN_SAMPLE || !bandwidth)
            bandwidth = (uint64_t)((double)s->round_bytes * 1e6 / (double)MAX(t1 - t0, 1));
        uint64_t pending;
        if (!dirty_sync(s, &pending, error))
            return false;
        gint64 t2 = now_us();
        uint64_t page = ((RdmigRamBlock *)s->blocks->pdata[0])->page_size;
        uint64_t limit_bytes = bandwidth * s->params.downtime_limit_ms / 1000;
        uint64_t expected_ms = bandwidth ? pending * 1000 / bandwidth : G_MAXUINT32;
        RDMIG_STATS_UPDATE(s, {
            if (round == 1)
                s->stats.first_round_bandwidth = bandwidth;
            s->stats.bandwidth = bandwidth;
            s->stats.expected_downtime_ms = expected_ms;
            s->stats.remaining_bytes = pending;
            s->stats.dirty_pages_rate = (uint64_t)((double)pending / page * 1e6 /
                                                   (double)MAX(t2 - t0, 1));
            s->stats.throughput = (uint64_t)((double)s->total_data_bytes * 1e6 /
                                             (double)MAX(t2 - s->t_active, 1));
        });
        g_debug("round %" G_GUINT64_FORMAT ": %" G_GUINT64_FORMAT " bytes in %" G_GINT64_FORMAT
                " us, pending %" G_GUINT64_FORMAT ", bandwidth %" G_GUINT64_FORMAT " B/s",
                round, s->round_bytes, t1 - t0, pending, bandwidth);
        if (pending <= limit_bytes)
            return stop_and_copy(s, round + 1, error);
        gint64 elapsed_ms = (t2 - s->t_active) / 1000;
        if (postcopy_due(s, round, elapsed_ms))
            return postcopy(s, round + 1, error);
        bool out_of_rounds = round >= s->params.max_rounds;
        bool out_of_time = s->params.max_precopy_ms && elapsed_ms >= s->params.max_precopy_ms;
        if (out_of_rounds || out_of_time) {
            if (s->params.on_no_converge == RDMIG_NO_CONVERGE_POSTCOPY &&
                (s->features & RDMIG_FEATURE_POSTCOPY)) {
                g_message("precopy did not converge (%s); switching to postcopy",
                          out_of_rounds ? "round limit" : "time limit");
                return postcopy(s, round + 1, error);
            }
            if (s->params.on_no_converge == RDMIG_NO_CONVERGE_SWITCHOVER) {
                RDMIG_STATS_UPDATE(s, s->stats.forced_switchover = true);
                g_message("precopy did not converge (%s); switching over anyway, expected "
                          "downtime %" G_GUINT64_FORMAT " ms", out_of_rounds ? "round limit"
                          : "time limit", expected_ms);
                return stop_and_copy(s, round + 1, error);
            }
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONVERGE,
                        "precopy did not converge after %" G_GUINT64_FORMAT " rounds and %"
                        G_GINT64_FORMAT " ms: %" G_GUINT64_FORMAT " MiB still dirty, bandwidth %"
                        G_GUINT64_FORMAT " MiB/s, expected downtime %" G_GUINT64_FORMAT
                        " ms > limit %u ms (raise the downtime limit or bandwidth, or allow a "
                        "forced switchover)", round, elapsed_ms, pending >> 20, bandwidth >> 20,
                        expected_ms, s->params.downtime_limit_ms);
            return false;
        }
    }
}

/* ---------------------------------------------------------------- precopy resume */

/* The link broke in precopy (precopy_resume negotiated): the guest runs on
 * here; whatever was sent since the last acknowledged round goes again. */
static void precopy_pause(RdmigSession *s, const GError *why)
{
    rdmig_session_pause(s, why, false);
    for (uint32_t i = 0; i < s->nreqs; i++)
        s->reqs[i].busy = false;
    s->inflight = 0;
    drop_link(s);
    if (s->hasher)
        rdmig_hasher_drain(s->hasher);
}

/* One attempt to continue precopy toward @address: the destination hands
 * out new keys for its RAM and says which round it applied last. */
static bool resume_precopy_link(RdmigSession *s, const char *address,
                                const RdmigTransportOps *skip, const RdmigTransportOps **failed,
                                GError **error)
{
    RdmigHelloAck ack;
    if (!connect_recovery(s, address, skip, &ack, error) || !take_regions(s, error) ||
        !reopen_data(s, &ack, failed, error))
        return false;
    RdmigFrame f;
    int r;
    bool postcopy = s->features & RDMIG_FEATURE_POSTCOPY;
    if (!rdmig_session_register_blocks(s, postcopy ? RDMIG_ACCESS_REMOTE_READ : 0, error) ||
        (postcopy && !send_source_keys(s, error)))
        return false;
    r = rdmig_session_recv(s, &f, -1, error);
    if (r <= 0)
        return false;
    uint64_t applied;
    if (f.hdr.type != RDMIG_MSG_RECEIVED_END) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "expected RECEIVED_END from the resumed destination, got %s",
                    rdmig_msg_type_str(f.hdr.type));
        return false;
    }
    if (!rdmig_u64_decode(f.payload, f.hdr.length, &applied, "RECEIVED_END", error))
        return false;
    uint64_t current = s->round_ack + 1;
    if (applied > current || applied < s->round_ack) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the resumed destination applied round %" G_GUINT64_FORMAT ", but the "
                    "last one acknowledged is %" G_GUINT64_FORMAT, applied, s->round_ack);
        return false;
    }
    /* The round that broke: held there only if its end was applied (its
     * acknowledgement got lost); else send it again. */
    uint64_t again = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        for (size_t w = 0; applied < current && w < rdmig_bitmap_words(b->npages); w++) {
            again += (uint64_t)__builtin_popcountll(b->sent_unacked[w] & ~b->dirty[w]);
            b->dirty[w] |= b->sent_unacked[w];
        }
        memset(b->sent_unacked, 0, rdmig_bitmap_words(b->npages) * 8);
    }
    s->round_ack = applied;
    g_message("precopy resumed over %s: the destination applied round %" G_GUINT64_FORMAT
              "; %" G_GUINT64_FORMAT " pages of the broken round go again", s->tp->name,
              applied, again);
    if (!rdmig_session_resumed(s)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
        return false;
    }
    return true;
}

/* Precopy that pauses on a broken link and goes on after
 * rdmig_session_recover(), when both sides asked for it. */
static bool precopy_resumable(RdmigSession *s, GError **error)
{
    for (;;) {
        GError *err = NULL;
        if (precopy(s, &err))
            return true;
        bool may_pause = !s->guest_stopped && !s->postcopy_started &&
                         rdmig_session_state(s) == RDMIG_STATE_ACTIVE &&
                         rdmig_session_link_lost(s, err, RDMIG_FEATURE_PRECOPY_RESUME);
        if (!pause_until_resumed(s, err, may_pause, precopy_pause, error))
            return false;
    }
}

static void teardown(RdmigSession *s)
{
    if (s->hasher) {
        uint64_t cpu = rdmig_hasher_free(s->hasher);
        s->hasher = NULL;
        RDMIG_STATS_UPDATE(s, {
            s->stats.cpu_time_us += cpu;
            s->stats.data_cpu_us += cpu;
        });
    }
    drop_link(s);
    dirty_stop(s);
    g_clear_pointer(&s->reqs, g_free);
    RDMIG_STATS_UPDATE(s, s->stats.bytes_transferred = s->total_data_bytes + s->ctl_bytes_done);
}

gpointer rdmig_source_thread(gpointer data)
{
    RdmigSession *s = data;
    GError *err = NULL;
    bool ok = handshake(s, &err) && setup_memory(s, &err);
    if (ok) {
        s->t_active = now_us();
        s->cpu_at_active_us = rdmig_thread_cpu_us();
        RDMIG_STATS_UPDATE(s, s->stats.setup_time_ms = (uint64_t)(s->t_active - s->t_start) / 1000);
        ok = rdmig_session_set_state(s, RDMIG_STATE_SETUP, RDMIG_STATE_ACTIVE);
        if (!ok)
            g_set_error(&err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
    }
    if (ok)
        ok = precopy_resumable(s, &err);
    if (ok) {
        rdmig_session_set_state(s, rdmig_session_state(s), RDMIG_STATE_COMPLETED);
    } else if (s->postcopy_started) {
        /* The destination has run the guest: this copy is stale now, and
         * its memory is the only home of the pages the destination lacks. */
        g_prefix_error(&err, "postcopy failed after the guest moved to the destination; the "
                             "source guest stays stopped and its memory is kept: ");
        rdmig_session_send_error(s, err);
        rdmig_session_set_state(s, rdmig_session_state(s), RDMIG_STATE_FAILED);
        rdmig_session_take_error(s, err);
    } else if (s->complete_sent && !s->complete_acked) {
        /* COMPLETE went out but no answer came back: the destination may
         * already run the guest.  Resuming here too could run it twice, so
         * the guest stays stopped and the operator decides (QEMU's
         * postmigrate). */
        g_prefix_error(&err, "outcome unknown, the source guest stays stopped (resume it only "
                             "if the destination is not running it): ");
        rdmig_session_set_state(s, RDMIG_STATE_DEVICE, RDMIG_STATE_FAILED);
        rdmig_session_take_error(s, err);
    } else {
        /* A dropped data connection is usually the echo of a failure the
         * destination explains on the control channel: prefer its words. */
        if (s->ctl && g_str_has_prefix(err->message, "data connection") &&
            (strstr(err->message, "closed") || strstr(err->message, "reset") ||
             strstr(err->message, "ended"))) {
            gint64 until = now_us() + 300000;
            GError *why = NULL;
            RdmigFrame f;
            while (now_us() < until) {
                int r = rdmig_session_recv(s, &f, 100, &why);
                if (r < 0)
                    break;
            }
            if (why && g_atomic_int_get(&s->peer_reported)) {
                g_error_free(err);
                err = why;
            } else {
                g_clear_error(&why);
            }
        }
        /* The guest runs on here, its memory untouched by the migration. */
        if (s->guest_stopped && s->guest.resume)
            s->guest.resume(s->guest_opaque);
        s->guest_stopped = false;
        bool cancelled = g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED);
        rdmig_session_send_error(s, err);
        RdmigState st = rdmig_session_state(s);
        if (cancelled && rdmig_session_set_state(s, st, RDMIG_STATE_CANCELLING))
            rdmig_session_set_state(s, RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED);
        else
            rdmig_session_set_state(s, st, RDMIG_STATE_FAILED);
        rdmig_session_take_error(s, err);
    }
    teardown(s);
    RDMIG_STATS_UPDATE(s, {
        s->stats.total_time_ms = (uint64_t)(now_us() - s->t_start) / 1000;
        if (s->total_data_bytes && s->t_active)
            s->stats.throughput = (uint64_t)((double)s->total_data_bytes * 1e6 /
                                             (double)MAX(now_us() - s->t_active, 1));
    });
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

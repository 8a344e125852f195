/* SPDX-License-Identifier: MIT */
/*
 * RDMA data backend: one-sided RDMA WRITE and READ on RC queue pairs set up
 * with rdma_cm.  The target's CPU does nothing per page: its poller only
 * watches for the connection's end.  The only file that sees both the
 * transport ABI and verbs (rdma/ has verbs only, engine/ neither).
 *
 * Remote key, 20 bytes big-endian: u64 base (0: registration is zero-based,
 * so keys carry offsets, not where memory is mapped), u32 rkey, u64 length.
 * Connection private data: u64 session token, u32 version.
 *
 * Posting: submit() queues a request; requests go to the send queue in
 * chains (one ibv_post_send, one doorbell) while it has room.  Only every
 * RDMA_SIGNAL_EVERY-th request and the last of each chain ask for a
 * completion: an RC queue pair completes in order, so a completion also
 * retires every unsignaled request posted before it.  Ending every chain
 * signaled means no request can wait for a completion that never comes.
 */
#define G_LOG_DOMAIN "rdmig-transport"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "address.h"
#include "backend.h"
#include "util/be.h"
#include "rdma/rdma.h"
#include "rdmig/error.h"
#include "rdmig/transport.h"
#include "registry.h"

#define RDMA_VERSION 1
#define RDMA_KEY_LEN 20
#define RDMA_DEFAULT_DEPTH 64
#define RDMA_SIGNAL_EVERY 16   /* also the batch size and the low watermark */
#define RDMA_CHAIN_MAX 32

struct RdmigTransport {
    RdmigBackend b;                          /* config, region slots (b.lock guards the rest) */
    struct ibv_context *ctx;
    struct ibv_pd *pd;                       /* one device per transport instance */
    uint64_t locked;                         /* bytes registered, for the memlock check */
};

struct RdmigRegion {
    RdmigTransport *t;
    struct ibv_mr *mr;
    uint8_t *addr;
    size_t len;
    int slot;
};

struct RdmigListener {
    RdmigTransport *t;
    struct rdma_event_channel *ch;
    struct rdma_cm_id *id;
    char *address;
};

/* A FIFO of requests linked through tp_next. */
typedef struct {
    RdmigIoReq *head, *tail;
    uint32_t n;
} ReqQueue;

struct RdmigConn {
    RdmigTransport *t;
    RdmigRdmaEndpoint ep;
    int epfd;                /* comp channel + cm channel, for conn_fd() */
    uint32_t depth;          /* send queue slots */
    ReqQueue pending;        /* submitted, not yet posted */
    ReqQueue posted;         /* on the send queue, in posting order */
    uint32_t since_signal;   /* unsignaled requests posted since the last signaled one */
    RdmigIoReq *retire_to;   /* completion being applied to the posted FIFO, or NULL */
    int retire_status;
    uint64_t posts, signaled; /* statistics: requests posted, and of them signaled */
    RdmigConnFailure fail;
};


static bool rdma_tp_probe(GError **error) { return rdmig_rdma_probe(error); }

static RdmigTransport *rdma_tp_create(const RdmigTransportConfig *config, GError **error)
{
    if (!rdmig_rdma_probe(error))
        return NULL;
    RdmigTransport *t = g_new0(RdmigTransport, 1);
    /* Requests carry any size: one RDMA work request up to 2 GiB. */
    rdmig_backend_init(&t->b, config, RDMA_DEFAULT_DEPTH, 1u << 31);
    return t;
}

static void rdma_tp_destroy(RdmigTransport *t)
{
    if (!t)
        return;
    if (t->pd)
        ibv_dealloc_pd(t->pd);
    rdmig_backend_clear(&t->b);
    g_free(t);
}

/* The first connection or listener picks the device; all others must agree. */
static bool bind_device(RdmigTransport *t, struct ibv_context *ctx, GError **error)
{
    g_mutex_lock(&t->b.lock);
    bool ok = true;
    if (!t->pd) {
        t->ctx = ctx;
        t->pd = ibv_alloc_pd(ctx);
        if (!t->pd) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "ibv_alloc_pd on %s: %s",
                        ibv_get_device_name(ctx->device), g_strerror(errno));
            ok = false;
        }
    } else if (t->ctx != ctx) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "data connections on two RDMA devices (%s and %s) in one transport",
                    ibv_get_device_name(t->ctx->device), ibv_get_device_name(ctx->device));
        ok = false;
    }
    g_mutex_unlock(&t->b.lock);
    return ok;
}

static bool conn_setup_fds(RdmigConn *c, GError **error)
{
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    fcntl(c->ep.comp->fd, F_SETFL, fcntl(c->ep.comp->fd, F_GETFL) | O_NONBLOCK);
    fcntl(c->ep.ch->fd, F_SETFL, fcntl(c->ep.ch->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event e1 = { .events = EPOLLIN, .data.u32 = 0 };
    struct epoll_event e2 = { .events = EPOLLIN, .data.u32 = 1 };
    if (c->epfd < 0 || epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->ep.comp->fd, &e1) ||
        epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->ep.ch->fd, &e2)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "epoll: %s", g_strerror(errno));
        return false;
    }
    return true;
}

static RdmigConn *conn_new(RdmigTransport *t)
{
    RdmigConn *c = g_new0(RdmigConn, 1);
    c->t = t;
    c->depth = t->b.cfg.queue_depth;
    c->epfd = -1;
    return c;
}

static void rdma_tp_conn_close(RdmigConn *c)
{
    if (!c)
        return;
    if (c->epfd >= 0)
        close(c->epfd);
    rdmig_rdma_endpoint_destroy(&c->ep);
    g_free(c);
}

static void conn_param(RdmigTransport *t, struct rdma_conn_param *p, uint8_t *pd)
{
    rdmig_put_be64(pd, t->b.cfg.conn_token);
    rdmig_put_be32(pd + 8, RDMA_VERSION);
    struct ibv_device_attr attr;
    int rd = 16;
    if (t->ctx && ibv_query_device(t->ctx, &attr) == 0)
        rd = MIN(attr.max_qp_rd_atom, 16);
    *p = (struct rdma_conn_param){ .private_data = pd, .private_data_len = 12,
                                   .responder_resources = (uint8_t)rd,
                                   .initiator_depth = (uint8_t)rd,
                                   .retry_count = RDMIG_RDMA_RETRY_COUNT,
                                   .rnr_retry_count = RDMIG_RDMA_RNR_RETRY };
}

static RdmigListener *rdma_tp_listen(RdmigTransport *t, const char *address, GError **error)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!rdmig_address_parse(address, true, &ss, &len, error))
        return NULL;
    g_autofree char *host = NULL;
    RdmigListener *l = g_new0(RdmigListener, 1);
    l->t = t;
    l->ch = rdma_create_event_channel();
    if (!l->ch || rdma_create_id(l->ch, &l->id, NULL, RDMA_PS_TCP)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "rdma_cm: %s", g_strerror(errno));
        goto fail;
    }
    if (rdma_bind_addr(l->id, (struct sockaddr *)&ss) || rdma_listen(l->id, 16)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                    "cannot listen for RDMA on '%s': %s (is there an RDMA device with that "
                    "address?)", address, g_strerror(errno));
        goto fail;
    }
    if (l->id->verbs && !bind_device(t, l->id->verbs, error))
        goto fail;
    host = rdmig_address_format((struct sockaddr *)&ss);
    char *colon = strrchr(host, ':');
    *colon = 0;
    l->address = g_strdup_printf("%s:%u", host, ntohs(rdma_get_src_port(l->id)));
    return l;
fail:
    if (l->id)
        rdma_destroy_id(l->id);
    if (l->ch)
        rdma_destroy_event_channel(l->ch);
    g_free(l);
    return NULL;
}

static const char *rdma_tp_listener_address(RdmigListener *l) { return l->address; }

static void rdma_tp_listener_close(RdmigListener *l)
{
    if (!l)
        return;
    rdma_destroy_id(l->id);
    rdma_destroy_event_channel(l->ch);
    g_free(l->address);
    g_free(l);
}

static RdmigConn *rdma_tp_accept(RdmigListener *l, int timeout_ms, GError **error)
{
    RdmigTransport *t = l->t;
    struct rdma_cm_id *id = NULL;
    uint8_t pd[12];
    if (!rdmig_rdma_wait_event(l->ch, RDMA_CM_EVENT_CONNECT_REQUEST, timeout_ms < 0 ? -1 : timeout_ms,
                               &id, pd, sizeof(pd), error))
        return NULL;
    if (rdmig_get_be64(pd) != t->b.cfg.conn_token || rdmig_get_be32(pd + 8) != RDMA_VERSION) {
        rdma_reject(id, NULL, 0);
        rdma_destroy_id(id);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH,
                    "RDMA connection presented another session's token or version %u",
                    rdmig_get_be32(pd + 8));
        return NULL;
    }
    RdmigConn *c = conn_new(t);
    c->ep.id = id;
    if (!bind_device(t, id->verbs, error) ||
        !rdmig_rdma_endpoint_create_qp(&c->ep, t->pd, c->depth, RDMIG_IO_MAX_IOV,
                                       t->b.cfg.ack_timeout, error)) {
        rdma_reject(id, NULL, 0);
        rdma_tp_conn_close(c);
        return NULL;
    }
    struct rdma_conn_param p;
    uint8_t mine[12];
    conn_param(t, &p, mine);
    if (rdma_accept(id, &p)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "rdma_accept: %s", g_strerror(errno));
        rdma_tp_conn_close(c);
        return NULL;
    }
    if (!rdmig_rdma_wait_event(l->ch, RDMA_CM_EVENT_ESTABLISHED, (int)t->b.cfg.connect_timeout_ms,
                               NULL, NULL, 0, error)) {
        rdma_tp_conn_close(c);
        return NULL;
    }
    /* Later events of this id (disconnect) go to its own channel, so that the
     * connection's poller sees them and the listener does not. */
    c->ep.ch = rdma_create_event_channel();
    if (!c->ep.ch || rdma_migrate_id(id, c->ep.ch) || !conn_setup_fds(c, error)) {
        if (error && !*error)
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "rdma_migrate_id: %s",
                        g_strerror(errno));
        rdma_tp_conn_close(c);
        return NULL;
    }
    return c;
}

static RdmigConn *rdma_tp_connect(RdmigTransport *t, const char *address, GError **error)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!rdmig_address_parse(address, false, &ss, &len, error))
        return NULL;
    RdmigConn *c = conn_new(t);
    c->ep.ch = rdma_create_event_channel();
    if (!c->ep.ch || rdma_create_id(c->ep.ch, &c->ep.id, NULL, RDMA_PS_TCP)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "rdma_cm: %s", g_strerror(errno));
        goto fail;
    }
    if (rdma_resolve_addr(c->ep.id, NULL, (struct sockaddr *)&ss, RDMIG_RDMA_RESOLVE_MS) ||
        !rdmig_rdma_wait_event(c->ep.ch, RDMA_CM_EVENT_ADDR_RESOLVED, RDMIG_RDMA_RESOLVE_MS + 1000,
                               NULL, NULL, 0, error))
        goto fail_addr;
    if (rdma_resolve_route(c->ep.id, RDMIG_RDMA_RESOLVE_MS) ||
        !rdmig_rdma_wait_event(c->ep.ch, RDMA_CM_EVENT_ROUTE_RESOLVED,
                               RDMIG_RDMA_RESOLVE_MS + 1000, NULL, NULL, 0, error))
        goto fail_addr;
    if (!bind_device(t, c->ep.id->verbs, error) ||
        !rdmig_rdma_endpoint_create_qp(&c->ep, t->pd, c->depth, RDMIG_IO_MAX_IOV,
                                       t->b.cfg.ack_timeout, error))
        goto fail;
    struct rdma_conn_param p;
    uint8_t pd[12];
    conn_param(t, &p, pd);
    if (rdma_connect(c->ep.id, &p) ||
        !rdmig_rdma_wait_event(c->ep.ch, RDMA_CM_EVENT_ESTABLISHED, (int)t->b.cfg.connect_timeout_ms,
                               NULL, NULL, 0, error))
        goto fail_addr;
    if (!conn_setup_fds(c, error))
        goto fail;
    return c;
fail_addr:
    if (error && !*error)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "%s", g_strerror(errno));
    g_prefix_error(error, "RDMA connection to '%s': ", address);
fail:
    rdma_tp_conn_close(c);
    return NULL;
}

static void conn_fail(RdmigConn *c, int err, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void conn_fail(RdmigConn *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool first = rdmig_conn_failure_set(&c->fail, err, fmt, ap);
    va_end(ap);
    if (!first)
        return;
    /* QP to error: everything outstanding completes with a flush status. */
    rdma_disconnect(c->ep.id);
}

static void rdma_tp_disconnect(RdmigConn *c) { conn_fail(c, ECANCELED, "disconnected"); }

static RdmigRegion *rdma_tp_register(RdmigTransport *t, void *addr, size_t len, uint32_t access,
                                     GError **error)
{
    if (!t->pd) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RDMA regions are registered after the first listen or connect");
        return NULL;
    }
    /* Without LOCAL_WRITE the pin is read-only: a source region that is only
     * sent from must not look written to the dirty tracker. */
    int acc = 0;
    if (access & RDMIG_ACCESS_REMOTE_WRITE)
        acc |= IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    if (access & RDMIG_ACCESS_REMOTE_READ)
        acc |= IBV_ACCESS_REMOTE_READ;
    if (access & RDMIG_ACCESS_LOCAL_WRITE)
        acc |= IBV_ACCESS_LOCAL_WRITE;
    /* Slot and memlock budget are reserved under the lock; the slow part,
     * ibv_reg_mr, runs outside it, so that blocks can register in parallel. */
    int slot = rdmig_backend_reserve(&t->b, error);
    if (slot < 0)
        return NULL;
    g_mutex_lock(&t->b.lock);
    uint64_t locked = t->locked;
    t->locked += len;
    g_mutex_unlock(&t->b.lock);
    struct ibv_mr *mr = rdmig_rdma_register(t->pd, addr, len, acc, locked, error);
    if (!mr) {
        g_mutex_lock(&t->b.lock);
        t->locked -= len;
        g_mutex_unlock(&t->b.lock);
        rdmig_backend_release(&t->b, slot);
        return NULL;
    }
    RdmigRegion *r = g_new0(RdmigRegion, 1);
    *r = (RdmigRegion){ .t = t, .mr = mr, .addr = addr, .len = len, .slot = slot };
    rdmig_backend_publish(&t->b, slot, r);
    return r;
}

static void rdma_tp_region_key(RdmigRegion *r, RdmigRemoteKey *key)
{
    key->len = RDMA_KEY_LEN;
    /* Zero-based registration (rdma/mr.c): the base is 0, whatever the
     * address; it stays in the key so that its layout does not change. */
    rdmig_put_be64(key->bytes, 0);
    rdmig_put_be32(key->bytes + 8, r->mr->rkey);
    rdmig_put_be64(key->bytes + 12, r->len);
}

static int rdma_tp_deregister(RdmigRegion *r)
{
    if (!r)
        return 0;
    RdmigTransport *t = r->t;
    rdmig_backend_remove(&t->b, r->slot);
    /* A failed ibv_dereg_mr leaves the key valid at the NIC: said, not hidden. */
    int rc = ibv_dereg_mr(r->mr);
    if (!rc) {
        g_mutex_lock(&t->b.lock);
        t->locked -= r->len;
        g_mutex_unlock(&t->b.lock);
    }
    g_free(r);
    return rc ? -rc : 0;
}

/* lkey of the registered region holding [p, p+len), and @p's offset in it
 * (its address for the NIC: registration is zero-based); -EINVAL if none. */
static int local_key(RdmigTransport *t, const void *p, size_t len, uint32_t *lkey,
                     uint64_t *iova)
{
    int end = rdmig_backend_regions_end(&t->b);
    for (int i = 0; i < end; i++) {
        RdmigRegion *r = rdmig_backend_region(&t->b, (uint32_t)i);
        if (r && (const uint8_t *)p >= r->addr && len <= r->len &&
            (size_t)((const uint8_t *)p - r->addr) <= r->len - len) {
            *lkey = r->mr->lkey;
            *iova = (uint64_t)((const uint8_t *)p - r->addr);
            return 0;
        }
    }
    return -EINVAL;
}

/* tp_priv[1] marks a request as posted on this connection, so that a late
 * completion for one already retired (after a failure) is recognised. */
#define POSTED_MARK(c) ((uint64_t)(uintptr_t)(c))

static void q_push(ReqQueue *q, RdmigIoReq *r)
{
    r->tp_next = NULL;
    if (q->tail)
        q->tail->tp_next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

static RdmigIoReq *q_pop(ReqQueue *q)
{
    RdmigIoReq *r = q->head;
    if (r) {
        q->head = r->tp_next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
    }
    return r;
}

/* Moves pending requests to the send queue as one chain, as far as it has room. */
static void post_pending(RdmigConn *c)
{
    struct ibv_send_wr wr[RDMA_CHAIN_MAX], *bad = NULL;
    struct ibv_sge sge[RDMA_CHAIN_MAX][RDMIG_IO_MAX_IOV];
    while (!c->fail.failed && c->pending.n && c->posted.n < c->depth) {
        uint32_t n = MIN(MIN(c->pending.n, c->depth - c->posted.n), RDMA_CHAIN_MAX);
        RdmigIoReq *r = c->pending.head;
        for (uint32_t k = 0; k < n; k++, r = r->tp_next) {
            for (int i = 0; i < r->iovcnt; i++) {
                /* Checked at submit; a region deregistered since fails the request. */
                uint64_t iova = 0;
                if (local_key(c->t, r->iov[i].iov_base, r->iov[i].iov_len, &sge[k][i].lkey,
                              &iova) < 0)
                    sge[k][i].lkey = 0;
                sge[k][i].addr = iova;
                sge[k][i].length = (uint32_t)r->iov[i].iov_len;
            }
            bool signal = k == n - 1 || ++c->since_signal >= RDMA_SIGNAL_EVERY;
            if (signal)
                c->since_signal = 0;
            r->tp_priv[0] = signal;
            wr[k] = (struct ibv_send_wr){
                .wr_id = (uintptr_t)r,
                .next = k + 1 < n ? &wr[k + 1] : NULL,
                .sg_list = sge[k],
                .num_sge = r->iovcnt,
                .opcode = r->op == RDMIG_IO_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ,
                .send_flags = signal ? IBV_SEND_SIGNALED : 0,
                .wr.rdma = { .remote_addr = rdmig_get_be64(r->rkey->bytes) + r->remote_offset,
                             .rkey = rdmig_get_be32(r->rkey->bytes + 8) },
            };
        }
        int rc = ibv_post_send(c->ep.id->qp, wr, &bad);
        /* Everything before @bad is on the queue (all of it when rc == 0). */
        for (uint32_t k = 0; k < n && (rc == 0 || &wr[k] != bad); k++) {
            RdmigIoReq *p = q_pop(&c->pending);
            p->tp_priv[1] = POSTED_MARK(c);
            q_push(&c->posted, p);
            c->posts++;
            c->signaled += p->tp_priv[0];
        }
        if (rc) {
            /* The part posted may end unsignaled: only failing the queue pair
             * (which flushes it) retires it now. */
            conn_fail(c, rc, "ibv_post_send: %s", g_strerror(rc));
            return;
        }
    }
}

static int rdma_tp_submit(RdmigConn *c, RdmigIoReq *req)
{
    if (c->fail.failed)
        return -ENOTCONN;
    if (req->iovcnt < 1 || req->iovcnt > RDMIG_IO_MAX_IOV || !req->rkey ||
        req->rkey->len != RDMA_KEY_LEN || (req->op != RDMIG_IO_WRITE && req->op != RDMIG_IO_READ))
        return -EINVAL;
    uint64_t total = 0;
    for (int i = 0; i < req->iovcnt; i++) {
        uint32_t lkey;
        uint64_t iova;
        if (req->iov[i].iov_len > UINT32_MAX ||
            local_key(c->t, req->iov[i].iov_base, req->iov[i].iov_len, &lkey, &iova) < 0)
            return -EINVAL;
        total += req->iov[i].iov_len;
    }
    uint64_t rlen = rdmig_get_be64(req->rkey->bytes + 12);
    if (!total || req->remote_offset > rlen || total > rlen - req->remote_offset)
        return -EINVAL;
    if (c->pending.n + c->posted.n >= c->depth)
        return -EAGAIN;
    req->status = 0;
    req->tp_priv[1] = 0;
    q_push(&c->pending, req);
    /* Post now when the send queue runs low (nothing may wait behind an idle
     * queue pair), else gather a chain: one doorbell for many requests. */
    if (c->posted.n < RDMA_SIGNAL_EVERY || c->pending.n >= RDMA_SIGNAL_EVERY)
        post_pending(c);
    return 0;
}
static void drain_events(RdmigConn *c)
{
    struct ibv_cq *cq;
    void *ctx;
    int n = 0;
    while (ibv_get_cq_event(c->ep.comp, &cq, &ctx) == 0)
        n++;
    if (n)
        ibv_ack_cq_events(c->ep.cq, (unsigned)n);
    ibv_req_notify_cq(c->ep.cq, 0);
    struct rdma_cm_event *ev;
    while (rdma_get_cm_event(c->ep.ch, &ev) == 0) {
        enum rdma_cm_event_type type = ev->event;
        rdma_ack_cm_event(ev);
        if (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_DEVICE_REMOVAL ||
            type == RDMA_CM_EVENT_UNREACHABLE || type == RDMA_CM_EVENT_TIMEWAIT_EXIT)
            conn_fail(c, ECONNRESET, "RDMA connection ended: %s", rdma_event_str(type));
    }
}

static bool qp_in_error(RdmigConn *c)
{
    struct ibv_qp_attr attr;
    struct ibv_qp_init_attr init;
    return ibv_query_qp(c->ep.id->qp, &attr, IBV_QP_STATE, &init) || attr.qp_state == IBV_QPS_ERR;
}

static int rdma_tp_poll(RdmigConn *c, RdmigIoReq **done, int max)
{
    drain_events(c);
    int total = 0;
    while (total < max) {
        if (c->retire_to) {
            /* Requests complete in posting order: everything up to the
             * completed one is done, with its status when it failed (an
             * error flushes what was behind it). */
            RdmigIoReq *r = q_pop(&c->posted);
            r->tp_priv[1] = 0;
            r->status = c->retire_status;
            if (r == c->retire_to)
                c->retire_to = NULL;
            done[total++] = r;
            continue;
        }
        struct ibv_wc wc;
        if (ibv_poll_cq(c->ep.cq, 1, &wc) <= 0)
            break;
        RdmigIoReq *req = (RdmigIoReq *)(uintptr_t)wc.wr_id;
        if (req->tp_priv[1] != POSTED_MARK(c))
            continue; /* already retired after a failure */
        if (wc.status != IBV_WC_SUCCESS && wc.status != IBV_WC_WR_FLUSH_ERR)
            conn_fail(c, -rdmig_rdma_wc_errno(wc.status), "RDMA %s failed: %s",
                      req->op == RDMIG_IO_WRITE ? "WRITE" : "READ",
                      rdmig_rdma_wc_reason(wc.status));
        c->retire_to = req;
        /* After the connection failed, a request's error is that failure's
         * consequence (a READ at a peer that just died finds its memory
         * gone: "remote access error"), and the first cause is what the
         * caller must act on: a link lost is no protocol violation. */
        c->retire_status = c->fail.failed ? -c->fail.err : rdmig_rdma_wc_errno(wc.status);
    }
    if (c->fail.failed) {
        /* Never posted: fail them here.  Posted ones get their flush
         * completions; once the queue pair is in error and the completion
         * queue is empty, any left (an unsignaled tail) are failed too. */
        while (total < max && c->pending.n) {
            RdmigIoReq *r = q_pop(&c->pending);
            r->status = -c->fail.err;
            done[total++] = r;
        }
        /* total == 0 here means the completion queue is empty. */
        if (!total && !c->retire_to && c->posted.n && qp_in_error(c)) {
            while (total < max && c->posted.n) {
                RdmigIoReq *r = q_pop(&c->posted);
                r->tp_priv[1] = 0;
                r->status = -c->fail.err;
                done[total++] = r;
            }
        }
        if (!total && !c->posted.n && !c->pending.n)
            return -c->fail.err;
        return total;
    }
    if (c->pending.n && c->posted.n < RDMA_SIGNAL_EVERY)
        post_pending(c);
    return total;
}

static int rdma_tp_conn_fd(RdmigConn *c, short *events)
{
    *events = 0x001; /* POLLIN */
    return c->epfd;
}

static const char *rdma_tp_conn_error(RdmigConn *c)
{
    return c->fail.failed ? c->fail.text : NULL;
}

const RdmigTransportOps rdmig_rdma_transport_ops = {
    .abi_version = RDMIG_TRANSPORT_ABI_VERSION,
    .size = sizeof(RdmigTransportOps),
    .name = "rdma",
    .caps = RDMIG_TRANSPORT_CAP_ONESIDED_WRITE | RDMIG_TRANSPORT_CAP_ONESIDED_READ |
            RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU,
    .probe = rdma_tp_probe,
    .create = rdma_tp_create,
    .destroy = rdma_tp_destroy,
    .listen = rdma_tp_listen,
    .listener_address = rdma_tp_listener_address,
    .accept = rdma_tp_accept,
    .listener_close = rdma_tp_listener_close,
    .connect = rdma_tp_connect,
    .disconnect = rdma_tp_disconnect,
    .conn_close = rdma_tp_conn_close,
    .register_region = rdma_tp_register,
    .region_key = rdma_tp_region_key,
    .deregister_region = rdma_tp_deregister,
    .submit = rdma_tp_submit,
    .poll = rdma_tp_poll,
    .conn_fd = rdma_tp_conn_fd,
    .conn_error = rdma_tp_conn_error,
};

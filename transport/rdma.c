/* SPDX-License-Identifier: MIT */
/*
 * RDMA data backend: one-sided RDMA WRITE and READ on RC queue pairs set up
 * with rdma_cm.  The target's CPU does nothing per page: its poller only
 * watches for the connection's end.  The only file that sees both the
 * transport ABI and verbs (rdma/ has verbs only, engine/ neither).
 *
 * Remote key, 20 bytes big-endian: u64 address, u32 rkey, u64 length.
 * Connection private data: u64 session token, u32 version.
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
#include "be.h"
#include "rdma/rdma.h"
#include "rdmig/error.h"
#include "rdmig/transport.h"
#include "registry.h"

#define RDMA_VERSION 1
#define RDMA_KEY_LEN 20
#define RDMA_MAX_REGIONS 256
#define RDMA_DEFAULT_DEPTH 64

struct RdmigTransport {
    RdmigTransportConfig cfg;
    struct ibv_context *ctx;
    struct ibv_pd *pd;                       /* one device per transport instance */
    RdmigRegion *regions[RDMA_MAX_REGIONS];  /* read by the data path */
    gint nregions;
    uint64_t locked;                         /* bytes registered, for the memlock check */
    GMutex lock;
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

struct RdmigConn {
    RdmigTransport *t;
    RdmigRdmaEndpoint ep;
    int epfd;                /* comp channel + cm channel, for conn_fd() */
    uint32_t depth, outstanding;
    bool failed;
    int fail_errno;
    char error[256];
};


static bool rdma_tp_probe(GError **error) { return rdmig_rdma_probe(error); }

static RdmigTransport *rdma_tp_create(const RdmigTransportConfig *config, GError **error)
{
    if (!rdmig_rdma_probe(error))
        return NULL;
    RdmigTransport *t = g_new0(RdmigTransport, 1);
    if (config)
        t->cfg = *config;
    if (!t->cfg.queue_depth)
        t->cfg.queue_depth = RDMA_DEFAULT_DEPTH;
    if (!t->cfg.connect_timeout_ms)
        t->cfg.connect_timeout_ms = 10000;
    g_mutex_init(&t->lock);
    return t;
}

static void rdma_tp_destroy(RdmigTransport *t)
{
    if (!t)
        return;
    if (t->pd)
        ibv_dealloc_pd(t->pd);
    g_mutex_clear(&t->lock);
    g_free(t);
}

/* The first connection or listener picks the device; all others must agree. */
static bool bind_device(RdmigTransport *t, struct ibv_context *ctx, GError **error)
{
    g_mutex_lock(&t->lock);
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
    g_mutex_unlock(&t->lock);
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
    c->depth = t->cfg.queue_depth;
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
    rdmig_put_be64(pd, t->cfg.conn_token);
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
    if (rdmig_get_be64(pd) != t->cfg.conn_token || rdmig_get_be32(pd + 8) != RDMA_VERSION) {
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
        !rdmig_rdma_endpoint_create_qp(&c->ep, t->pd, c->depth, RDMIG_IO_MAX_IOV, error)) {
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
    if (!rdmig_rdma_wait_event(l->ch, RDMA_CM_EVENT_ESTABLISHED, (int)t->cfg.connect_timeout_ms,
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
        !rdmig_rdma_endpoint_create_qp(&c->ep, t->pd, c->depth, RDMIG_IO_MAX_IOV, error))
        goto fail;
    struct rdma_conn_param p;
    uint8_t pd[12];
    conn_param(t, &p, pd);
    if (rdma_connect(c->ep.id, &p) ||
        !rdmig_rdma_wait_event(c->ep.ch, RDMA_CM_EVENT_ESTABLISHED, (int)t->cfg.connect_timeout_ms,
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
    if (c->failed)
        return;
    c->failed = true;
    c->fail_errno = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
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
    g_mutex_lock(&t->lock);
    int slot = -1;
    for (int i = 0; i < RDMA_MAX_REGIONS; i++)
        if (!t->regions[i]) {
            slot = i;
            break;
        }
    g_mutex_unlock(&t->lock);
    if (slot < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "more than %d RDMA regions",
                    RDMA_MAX_REGIONS);
        return NULL;
    }
    struct ibv_mr *mr = rdmig_rdma_register(t->pd, addr, len, acc, t->locked, error);
    if (!mr)
        return NULL;
    RdmigRegion *r = g_new0(RdmigRegion, 1);
    *r = (RdmigRegion){ .t = t, .mr = mr, .addr = addr, .len = len, .slot = slot };
    g_mutex_lock(&t->lock);
    t->locked += len;
    g_atomic_pointer_set(&t->regions[slot], r);
    g_atomic_int_inc(&t->nregions);
    g_mutex_unlock(&t->lock);
    return r;
}

static void rdma_tp_region_key(RdmigRegion *r, RdmigRemoteKey *key)
{
    key->len = RDMA_KEY_LEN;
    rdmig_put_be64(key->bytes, (uint64_t)(uintptr_t)r->addr);
    rdmig_put_be32(key->bytes + 8, r->mr->rkey);
    rdmig_put_be64(key->bytes + 12, r->len);
}

static void rdma_tp_deregister(RdmigRegion *r)
{
    if (!r)
        return;
    RdmigTransport *t = r->t;
    g_mutex_lock(&t->lock);
    g_atomic_pointer_set(&t->regions[r->slot], NULL);
    t->locked -= r->len;
    g_mutex_unlock(&t->lock);
    ibv_dereg_mr(r->mr);
    g_free(r);
}

/* lkey of the registered region holding [p, p+len), or 0 with -EINVAL. */
static int local_key(RdmigTransport *t, const void *p, size_t len, uint32_t *lkey)
{
    for (int i = 0; i < RDMA_MAX_REGIONS; i++) {
        RdmigRegion *r = g_atomic_pointer_get(&t->regions[i]);
        if (r && (const uint8_t *)p >= r->addr && len <= r->len &&
            (size_t)((const uint8_t *)p - r->addr) <= r->len - len) {
            *lkey = r->mr->lkey;
            return 0;
        }
    }
    return -EINVAL;
}

static int rdma_tp_submit(RdmigConn *c, RdmigIoReq *req)
{
    if (c->failed)
        return -ENOTCONN;
    if (req->iovcnt < 1 || req->iovcnt > RDMIG_IO_MAX_IOV || !req->rkey ||
        req->rkey->len != RDMA_KEY_LEN)
        return -EINVAL;
    if (c->outstanding >= c->depth)
        return -EAGAIN;
    struct ibv_sge sge[RDMIG_IO_MAX_IOV];
    uint64_t total = 0;
    for (int i = 0; i < req->iovcnt; i++) {
        if (local_key(c->t, req->iov[i].iov_base, req->iov[i].iov_len, &sge[i].lkey) < 0)
            return -EINVAL;
        sge[i].addr = (uintptr_t)req->iov[i].iov_base;
        sge[i].length = (uint32_t)req->iov[i].iov_len;
        total += req->iov[i].iov_len;
    }
    uint64_t rlen = rdmig_get_be64(req->rkey->bytes + 12);
    if (!total || req->remote_offset > rlen || total > rlen - req->remote_offset)
        return -EINVAL;
    struct ibv_send_wr wr = {
        .wr_id = (uintptr_t)req,
        .sg_list = sge,
        .num_sge = req->iovcnt,
        .opcode = req->op == RDMIG_IO_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ,
        .send_flags = IBV_SEND_SIGNALED,
        .wr.rdma = { .remote_addr = rdmig_get_be64(req->rkey->bytes) + req->remote_offset,
                     .rkey = rdmig_get_be32(req->rkey->bytes + 8) },
    }, *bad;
    req->status = 0;
    int rc = ibv_post_send(c->ep.id->qp, &wr, &bad);
    if (rc) /* ibv_post_send returns a positive errno */
        return rc == ENOMEM ? -EAGAIN : -rc;
    c->outstanding++;
    return 0;
}

static void drain_events(RdmigConn *c)
{
    struct ibv_cq *cq;
    void *ctx;
    int n = 0;
    while (ibv_get_cq_event(c->ep.comp, &cq, &ctx) == 0)
        n++;
    if (n) {
        ibv_ack_cq_events(c->ep.cq, (unsigned)n);
    }
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

static int rdma_tp_poll(RdmigConn *c, RdmigIoReq **done, int max)
{
    drain_events(c);
    struct ibv_wc wc[32];
    int total = 0;
    while (total < max) {
        int n = ibv_poll_cq(c->ep.cq, MIN(max - total, (int)G_N_ELEMENTS(wc)), wc);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            RdmigIoReq *req = (RdmigIoReq *)(uintptr_t)wc[i].wr_id;
            req->status = rdmig_rdma_wc_errno(wc[i].status);
            if (wc[i].status != IBV_WC_SUCCESS && wc[i].status != IBV_WC_WR_FLUSH_ERR)
                conn_fail(c, -req->status, "RDMA %s failed: %s", req->op == RDMIG_IO_WRITE
                          ? "WRITE" : "READ", rdmig_rdma_wc_reason(wc[i].status));
            c->outstanding--;
            done[total++] = req;
        }
    }
    if (!total && c->failed && !c->outstanding)
        return -c->fail_errno;
    return total;
}

static int rdma_tp_conn_fd(RdmigConn *c, short *events)
{
    *events = 0x001; /* POLLIN */
    return c->epfd;
}

static const char *rdma_tp_conn_error(RdmigConn *c) { return c->failed ? c->error : NULL; }

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

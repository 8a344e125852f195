/* SPDX-License-Identifier: MIT */
/*
 * TCP data backend: emulates one-sided writes and reads with framed messages.
 *
 * Each connection carries, in both directions, a stream of 32-byte headers,
 * some followed by a payload:
 *
 *   initiator                                   target
 *   ---------                                   ------
 *   HELLO(token) ------------------------------> accept() checks the token
 *   PUT(region, offset, len, seq) + payload ---> bounds-checked, received
 *                                                straight into the region
 *   <------------------------------------------- ACK(seq): every PUT up to seq
 *                                                is placed (sent once per poll)
 *   GET(region, offset, len, seq) -------------> bounds-checked
 *   <------------------------------------------- GET_RESP(seq, len) + payload,
 *                                                sent straight from the region
 *
 * A write completes on the ACK, not when the socket took the bytes, so
 * "completed" means "in the target's memory", as with an RDMA WRITE.  Both
 * ends may be initiator and target at once.  Target-side CPU does the
 * placing, inside poll(): whoever owns the connection must keep polling it.
 *
 * Header, big-endian:
 *   0 u32 magic "RDTD"   4 u8 type   5 u8 flags   6 u16 reserved
 *   8 u32 region id     12 u32 length            16 u64 offset   24 u64 seq
 */
#define G_LOG_DOMAIN "rdmig-transport"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "address.h"
#include "backend.h"
#include "util/be.h"
#include "rdmig/error.h"
#include "rdmig/transport.h"
#include "registry.h"

#define TCP_MAGIC 0x52445444u /* "RDTD" */
#define TCP_VERSION 1
#define TCP_HDR 32
#define TCP_DEFAULT_DEPTH 64
#define TCP_DEFAULT_MAX_IO (4u << 20)
/* Bytes received per poll() before sending gets its turn. */
#define TCP_RX_BUDGET (8u << 20)

enum { T_HELLO = 1, T_PUT, T_GET, T_ACK, T_GET_RESP };

struct RdmigTransport {
    RdmigBackend b; /* config, regions by id (the id is the slot) */
};

struct RdmigRegion {
    RdmigTransport *t;
    uint32_t id;
    uint8_t *addr;
    size_t len;
    uint32_t access;
};

/* A data connection accepted and not yet past its HELLO.  Several wait at
 * once, each with its own deadline, so that one that says nothing (or
 * trickles) holds up no other (docs/security.md, "a listener strangers
 * cannot stop"). */
#define TCP_DOOR_MAX 8

typedef struct {
    int fd;
    gint64 deadline; /* monotonic us */
    size_t got;
    uint8_t h[TCP_HDR];
} TcpDoorConn;

struct RdmigListener {
    RdmigTransport *t;
    int fd;
    char *address;
    TcpDoorConn door[TCP_DOOR_MAX]; /* oldest first */
    unsigned ndoor;
};

/* A GET the peer asked of us, waiting to be answered from our region. */
typedef struct {
    const uint8_t *src;
    uint32_t len;
    uint64_t seq;
} TcpGetResp;

typedef enum { TX_REQ, TX_RESP, TX_ACK } TcpTxKind;

/* Frames gathered into one sendmsg(): scattered 4 KiB pages would
 * otherwise cost a system call (and a segment, and a wake-up of the peer)
 * each. */
#define TX_BATCH 32
#define TX_IOV_MAX 256
#define TX_BATCH_BYTES (1u << 20)

typedef struct {
    TcpTxKind kind;
    uint8_t hdr[TCP_HDR];
    RdmigIoReq *req; /* TX_REQ */
    size_t len;      /* header and payload */
} TcpTxFrame;
typedef enum { RX_HDR, RX_PUT, RX_RESP, RX_FAILED } TcpRxState;

struct RdmigConn {
    RdmigTransport *t;
    int fd;
    uint32_t depth;
    RdmigConnFailure fail;

    /* initiator: submitted, not yet fully sent; then sent, awaiting ACK/GET_RESP */
    RdmigIoReq *sq_head, *sq_tail;
    RdmigIoReq *wq_head, *wq_tail;
    RdmigIoReq *done_head, *done_tail;
    uint32_t outstanding;
    uint64_t next_seq;

    /* target */
    uint64_t peer_done_seq; /* highest peer request placed/queued */
    uint64_t acked_seq;     /* highest seq we sent an ACK for */
    TcpGetResp *resp;       /* ring of answers to send */
    uint32_t resp_cap, resp_head, resp_count;

    /* transmit: a batch of frames, sent in order */
    TcpTxFrame tx[TX_BATCH];
    unsigned tx_n, tx_first;  /* frames in the batch; the first not wholly sent */
    uint32_t tx_resps;        /* answers in the batch not wholly sent */
    struct iovec tx_iov[TX_IOV_MAX];
    int tx_iovcnt;
    size_t tx_total, tx_done; /* bytes of the batch; sent of them */
    size_t tx_first_at;       /* where frame tx_first begins in the batch */

    /* receive */
    TcpRxState rx;
    uint8_t rx_hdr[TCP_HDR];
    size_t rx_hdr_got;
    uint8_t *rx_dst;     /* PUT payload destination */
    size_t rx_left;
    RdmigIoReq *rx_req;  /* GET_RESP destination */
    size_t rx_req_off;
};


static void hdr_encode(uint8_t *h, uint8_t type, uint32_t region, uint32_t len, uint64_t off,
                       uint64_t seq)
{
    rdmig_put_be32(h, TCP_MAGIC);
    h[4] = type;
    h[5] = 0;
    h[6] = h[7] = 0;
    rdmig_put_be32(h + 8, region);
    rdmig_put_be32(h + 12, len);
    rdmig_put_be64(h + 16, off);
    rdmig_put_be64(h + 24, seq);
}

/* ---------------------------------------------------------------- control path */

static bool tcp_probe(GError **error)
{
    (void)error;
    return true;
}

static RdmigTransport *tcp_create(const RdmigTransportConfig *config, GError **error)
{
    (void)error;
    RdmigTransport *t = g_new0(RdmigTransport, 1);
    rdmig_backend_init(&t->b, config, TCP_DEFAULT_DEPTH, TCP_DEFAULT_MAX_IO);
    return t;
}

static void tcp_destroy(RdmigTransport *t)
{
    if (!t)
        return;
    rdmig_backend_clear(&t->b);
    g_free(t);
}

static RdmigConn *conn_new(RdmigTransport *t, int fd)
{
    RdmigConn *c = g_new0(RdmigConn, 1);
    c->t = t;
    c->fd = fd;
    c->depth = t->b.cfg.queue_depth;
    c->next_seq = 1;
    /* The peer's depth may differ from ours; answers wait here when our
     * socket is full, and reading stops when the ring is. */
    c->resp_cap = 2 * t->b.cfg.queue_depth;
    c->resp = g_new0(TcpGetResp, c->resp_cap);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return c;
}

static RdmigListener *tcp_listen(RdmigTransport *t, const char *address, GError **error)
{
    char *bound = NULL;
    int fd = rdmig_socket_listen(address, &bound, error);
    if (fd < 0)
        return NULL;
    RdmigListener *l = g_new0(RdmigListener, 1);
    l->t = t;
    l->fd = fd;
    l->address = bound;
    return l;
}

static const char *tcp_listener_address(RdmigListener *l) { return l->address; }

static void tcp_listener_close(RdmigListener *l)
{
    if (!l)
        return;
    for (unsigned i = 0; i < l->ndoor; i++)
        close(l->door[i].fd);
    close(l->fd);
    g_free(l->address);
    g_free(l);
}

/* Takes door connection @i out of the door, its fd returned (to close or
 * to keep). */
static int door_take(RdmigListener *l, unsigned i)
{
    int fd = l->door[i].fd;
    memmove(&l->door[i], &l->door[i + 1], (l->ndoor - i - 1) * sizeof(l->door[0]));
    l->ndoor--;
    return fd;
}

/* A whole HELLO on @fd: the connection, or NULL (closed) naming what was
 * wrong with it. */
static RdmigConn *door_admit(RdmigListener *l, int fd, const uint8_t *h, GError **error)
{
    if (rdmig_get_be32(h) != TCP_MAGIC || h[4] != T_HELLO) {
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "data connection on %s did not start with an rdmig hello (magic 0x%08x, "
                    "type %u)", l->address, rdmig_get_be32(h), h[4]);
        return NULL;
    }
    if (rdmig_get_be32(h + 12) != TCP_VERSION) {
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "data connection speaks TCP data version %u, this build %u", rdmig_get_be32(h + 12),
                    TCP_VERSION);
        return NULL;
    }
    if (rdmig_get_be64(h + 16) != l->t->b.cfg.conn_token) {
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH,
                    "data connection presented another session's token");
        return NULL;
    }
    return conn_new(l->t, fd);
}

/* Reads what door connection @i has sent.  1: its HELLO is whole (*@c is
 * the connection, or NULL with @error if refused); 0: more to come; -1:
 * it closed or failed (dropped, @error says so). */
static int door_read(RdmigListener *l, unsigned i, RdmigConn **c, GError **error)
{
    TcpDoorConn *d = &l->door[i];
    ssize_t r = recv(d->fd, d->h + d->got, sizeof(d->h) - d->got, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (r <= 0) {
        close(door_take(l, i));
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "data connection on %s closed before its hello", l->address);
        return -1;
    }
    d->got += (size_t)r;
    if (d->got < sizeof(d->h))
        return 0;
    uint8_t h[TCP_HDR];
    memcpy(h, d->h, sizeof(h));
    *c = door_admit(l, door_take(l, i), h, error);
    return 1;
}

/* The next data connection whose HELLO is right, within @timeout_ms (-1:
 * no limit); or NULL: one refused (non-CONNECT error: call again) or none
 * in time (RDMIG_ERROR_CONNECT). */
static RdmigConn *tcp_accept(RdmigListener *l, int timeout_ms, GError **error)
{
    int hello_ms = (int)MIN(l->t->b.cfg.connect_timeout_ms, 5000u);
    gint64 end = g_get_monotonic_time() + (gint64)MAX(timeout_ms, 0) * 1000;
    for (;;) {
        gint64 now = g_get_monotonic_time();
        gint64 wait_us = timeout_ms < 0 ? G_MAXINT32 * (gint64)1000 : MAX(end - now, 0);
        for (unsigned i = 0; i < l->ndoor; i++) {
            if (now >= l->door[i].deadline) {
                close(door_take(l, i));
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                            "data connection on %s sent no hello within %d ms", l->address,
                            hello_ms);
                return NULL;
            }
            wait_us = MIN(wait_us, l->door[i].deadline - now);
        }
        struct pollfd p[1 + TCP_DOOR_MAX] = { { .fd = l->fd, .events = POLLIN } };
        for (unsigned i = 0; i < l->ndoor; i++)
            p[1 + i] = (struct pollfd){ .fd = l->door[i].fd, .events = POLLIN };
        unsigned npoll = 1 + l->ndoor;
        if (poll(p, npoll, (int)((wait_us + 999) / 1000)) < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return NULL;
        }
        /* Highest index first: taking one out moves only those after it. */
        for (unsigned i = npoll - 1; i >= 1; i--) {
            if (!p[i].revents)
                continue;
            RdmigConn *c = NULL;
            int r = door_read(l, i - 1, &c, error);
            if (r < 0 || (r > 0 && !c))
                return NULL;
            if (r > 0)
                return c;
        }
        if (p[0].revents) {
            GError *aerr = NULL;
            int fd = rdmig_socket_accept_now(l->fd, &aerr);
            if (fd < 0 && aerr) {
                g_propagate_error(error, aerr);
                return NULL;
            }
            if (fd >= 0) {
                if (l->ndoor == TCP_DOOR_MAX) {
                    close(door_take(l, 0));
                    g_warning("data listener on %s: %d connections waiting to say hello; the "
                              "oldest is dropped", l->address, TCP_DOOR_MAX);
                }
                l->door[l->ndoor++] = (TcpDoorConn){
                    .fd = fd, .deadline = g_get_monotonic_time() + (gint64)hello_ms * 1000 };
                /* Its HELLO usually came with it. */
                RdmigConn *c = NULL;
                int r = door_read(l, l->ndoor - 1, &c, error);
                if (r != 0)
                    return c;
            }
        }
        if (timeout_ms >= 0 && g_get_monotonic_time() >= end) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                        "no data connection on %s within %d ms", l->address, timeout_ms);
            return NULL;
        }
    }
}

static RdmigConn *tcp_connect(RdmigTransport *t, const char *address, GError **error)
{
    int fd = rdmig_socket_connect(address, (int)t->b.cfg.connect_timeout_ms, -1, error);
    if (fd < 0)
        return NULL;
    uint8_t h[TCP_HDR];
    hdr_encode(h, T_HELLO, 0, TCP_VERSION, t->b.cfg.conn_token, 0);
    if (send(fd, h, sizeof(h), MSG_NOSIGNAL) != sizeof(h)) {
        int e = errno;
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "data connection to '%s': %s",
                    address, g_strerror(e));
        return NULL;
    }
    return conn_new(t, fd);
}

static void push(RdmigIoReq **head, RdmigIoReq **tail, RdmigIoReq *r)
{
    r->tp_next = NULL;
    if (*tail)
        (*tail)->tp_next = r;
    else
        *head = r;
    *tail = r;
}

static void complete(RdmigConn *c, RdmigIoReq *r, int status)
{
    r->status = status;
    c->outstanding--;
    push(&c->done_head, &c->done_tail, r);
}

/* Fails the connection once: every outstanding request completes with an
 * error; later polls report -fail_errno after the completions are reaped. */
static void tx_reset(RdmigConn *c)
{
    c->tx_n = c->tx_first = 0;
    c->tx_resps = 0;
    c->tx_iovcnt = 0;
    c->tx_total = c->tx_done = c->tx_first_at = 0;
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
    shutdown(c->fd, SHUT_RDWR);
    RdmigIoReq *r;
    /* A read whose answer was half received is off the wait queue. */
    if (c->rx == RX_RESP && c->rx_req) {
        complete(c, c->rx_req, -err);
        c->rx_req = NULL;
    }
    c->rx = RX_FAILED;
    /* Requests of the batch not wholly sent are on no queue. */
    for (unsigned i = c->tx_first; i < c->tx_n; i++)
        if (c->tx[i].kind == TX_REQ)
            complete(c, c->tx[i].req, -err);
    tx_reset(c);
    while ((r = c->wq_head)) {
        c->wq_head = r->tp_next;
        complete(c, r, -err);
    }
    c->wq_tail = NULL;
    while ((r = c->sq_head)) {
        c->sq_head = r->tp_next;
        complete(c, r, -err);
    }
    c->sq_tail = NULL;
}

static void tcp_disconnect(RdmigConn *c)
{
    conn_fail(c, ECANCELED, "disconnected");
}

static void tcp_conn_close(RdmigConn *c)
{
    if (!c)
        return;
    close(c->fd);
    g_free(c->resp);
    g_free(c);
}

static RdmigRegion *tcp_register(RdmigTransport *t, void *addr, size_t len, uint32_t access,
                                 GError **error)
{
    if (!addr || !len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "empty region");
        return NULL;
    }
    int slot = rdmig_backend_reserve(&t->b, error);
    if (slot < 0)
        return NULL;
    RdmigRegion *r = g_new0(RdmigRegion, 1);
    *r = (RdmigRegion){ .t = t, .id = (uint32_t)slot, .addr = addr, .len = len,
                        .access = access };
    rdmig_backend_publish(&t->b, slot, r);
    return r;
}

static void tcp_region_key(RdmigRegion *r, RdmigRemoteKey *key)
{
    key->len = 12;
    rdmig_put_be32(key->bytes, r->id);
    rdmig_put_be64(key->bytes + 4, r->len);
}

static int tcp_deregister(RdmigRegion *r)
{
    if (!r)
        return 0;
    /* Gone from the table: a PUT naming it from now on fails its connection. */
    rdmig_backend_remove(&r->t->b, (int)r->id);
    g_free(r);
    return 0;
}

/* ---------------------------------------------------------------- data path */

static size_t iov_total(const RdmigIoReq *r)
{
    size_t n = 0;
    for (int i = 0; i < r->iovcnt; i++)
        n += r->iov[i].iov_len;
    return n;
}

static int tcp_submit(RdmigConn *c, RdmigIoReq *req)
{
    if (c->fail.failed)
        return -ENOTCONN;
    if (req->iovcnt < 1 || req->iovcnt > RDMIG_IO_MAX_IOV || !req->rkey || req->rkey->len != 12 ||
        (req->op != RDMIG_IO_WRITE && req->op != RDMIG_IO_READ))
        return -EINVAL;
    size_t total = iov_total(req);
    if (!total || total > c->t->b.cfg.max_io_bytes)
        return -EINVAL;
    /* The remote bounds are the target's to enforce; checking here too gives
     * the caller an early, local error. */
    uint64_t rlen = rdmig_get_be64(req->rkey->bytes + 4);
    if (req->remote_offset > rlen || total > rlen - req->remote_offset)
        return -EINVAL;
    if (c->outstanding >= c->depth)
        return -EAGAIN;
    req->tp_priv[0] = total;
    req->tp_priv[1] = 0; /* seq, assigned when sending starts */
    req->status = 0;
    c->outstanding++;
    push(&c->sq_head, &c->sq_tail, req);
    return 0;
}

static bool tx_pending(RdmigConn *c)
{
    return c->tx_n || c->sq_head || c->resp_count > c->tx_resps ||
           c->peer_done_seq > c->acked_seq;
}

static void tx_push(RdmigConn *c, TcpTxKind kind, RdmigIoReq *req, const struct iovec *iov,
                    int n)
{
    TcpTxFrame *f = &c->tx[c->tx_n++];
    f->kind = kind;
    f->req = req;
    f->len = TCP_HDR;
    c->tx_iov[c->tx_iovcnt++] = (struct iovec){ f->hdr, TCP_HDR };
    for (int i = 0; i < n; i++) {
        c->tx_iov[c->tx_iovcnt++] = iov[i];
        f->len += iov[i].iov_len;
    }
    c->tx_total += f->len;
}

/* Adds the next frame to the batch, if it has room: answers to the peer
 * first (it may be waiting on them), then our own requests. */
static bool tx_add(RdmigConn *c)
{
    if (c->tx_n == TX_BATCH || (c->tx_n && c->tx_total >= TX_BATCH_BYTES))
        return false;
    uint8_t *h = c->tx[c->tx_n].hdr;
    int room = TX_IOV_MAX - c->tx_iovcnt;
    if (room < 1)
        return false;
    if (c->peer_done_seq > c->acked_seq) {
        hdr_encode(h, T_ACK, 0, 0, 0, c->peer_done_seq);
        c->acked_seq = c->peer_done_seq;
        tx_push(c, TX_ACK, NULL, NULL, 0);
        return true;
    }
    if (c->resp_count > c->tx_resps) {
        if (room < 2)
            return false;
        TcpGetResp *g = &c->resp[(c->resp_head + c->tx_resps) % c->resp_cap];
        hdr_encode(h, T_GET_RESP, 0, g->len, 0, g->seq);
        c->tx_resps++;
        tx_push(c, TX_RESP, NULL, &(struct iovec){ (void *)g->src, g->len }, 1);
        return true;
    }
    RdmigIoReq *r = c->sq_head;
    bool write = r && r->op == RDMIG_IO_WRITE;
    if (!r || room < 1 + (write ? r->iovcnt : 0))
        return false;
    c->sq_head = r->tp_next;
    if (!c->sq_head)
        c->sq_tail = NULL;
    r->tp_priv[1] = c->next_seq++;
    hdr_encode(h, write ? T_PUT : T_GET, rdmig_get_be32(r->rkey->bytes),
               (uint32_t)r->tp_priv[0], r->remote_offset, r->tp_priv[1]);
    tx_push(c, TX_REQ, r, write ? r->iov : NULL, write ? r->iovcnt : 0);
    return true;
}

/* A frame wholly sent: a request now waits for its ACK or answer. */
static void tx_sent(RdmigConn *c, TcpTxFrame *f)
{
    if (f->kind == TX_REQ) {
        push(&c->wq_head, &c->wq_tail, f->req);
    } else if (f->kind == TX_RESP) {
        c->resp_head = (c->resp_head + 1) % c->resp_cap;
        c->resp_count--;
        c->tx_resps--;
    }
}

static void progress_tx(RdmigConn *c)
{
    while (!c->fail.failed) {
        if (!c->tx_n) {
            while (tx_add(c))
                continue;
            if (!c->tx_n)
                return;
        }
        /* Skip what earlier partial sends already took. */
        struct iovec v[TX_IOV_MAX];
        int n = 0;
        size_t skip = c->tx_done;
        for (int i = 0; i < c->tx_iovcnt; i++) {
            if (skip >= c->tx_iov[i].iov_len) {
                skip -= c->tx_iov[i].iov_len;
                continue;
            }
            v[n].iov_base = (uint8_t *)c->tx_iov[i].iov_base + skip;
            v[n].iov_len = c->tx_iov[i].iov_len - skip;
            skip = 0;
            n++;
        }
        struct msghdr m = { .msg_iov = v, .msg_iovlen = n };
        ssize_t r = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            conn_fail(c, errno == EPIPE ? ECONNRESET : errno, "send: %s", g_strerror(errno));
            return;
        }
        c->tx_done += r;
        while (c->tx_first < c->tx_n &&
               c->tx_done >= c->tx_first_at + c->tx[c->tx_first].len) {
            c->tx_first_at += c->tx[c->tx_first].len;
            tx_sent(c, &c->tx[c->tx_first++]);
        }
        if (c->tx_first < c->tx_n)
            return; /* the socket is full: POLLOUT brings us back */
        tx_reset(c);
    }
}

/* First waiting request of kind @op in the wait queue, and its predecessor. */
static RdmigIoReq *wq_find(RdmigConn *c, RdmigIoOp op, RdmigIoReq **prev)
{
    *prev = NULL;
    for (RdmigIoReq *r = c->wq_head; r; *prev = r, r = r->tp_next)
        if (r->op == op)
            return r;
    return NULL;
}

static void wq_unlink(RdmigConn *c, RdmigIoReq *r, RdmigIoReq *prev)
{
    if (prev)
        prev->tp_next = r->tp_next;
    else
        c->wq_head = r->tp_next;
    if (c->wq_tail == r)
        c->wq_tail = prev;
}

/* A whole header arrived: validate it and set up the payload, if any. */
/* A peer's PUT or GET: checked against the region it names (exists, gives
 * the access, holds the range) and the sequence, then received into place
 * (PUT) or queued for an answer (GET). */
static void rx_request(RdmigConn *c, uint8_t type, uint32_t region, uint32_t len, uint64_t off,
                       uint64_t seq)
{
    RdmigRegion *r = rdmig_backend_region(&c->t->b, region);
    const char *op = type == T_PUT ? "write" : "read";
    if (!r) {
        conn_fail(c, EPROTO, "peer %s to unknown region %u", op, region);
        return;
    }
    uint32_t need = type == T_PUT ? RDMIG_ACCESS_REMOTE_WRITE : RDMIG_ACCESS_REMOTE_READ;
    if (!(r->access & need)) {
        conn_fail(c, EACCES, "peer %s to region %u, which does not allow remote %ss", op, region,
                  op);
        return;
    }
    if (!len || len > c->t->b.cfg.max_io_bytes || off > r->len || len > r->len - off) {
        conn_fail(c, EPROTO,
                  "peer %s out of range: region %u offset %" G_GUINT64_FORMAT " length %u "
                  "(region is %zu bytes, limit %u per request)", op, region, off, len, r->len,
                  c->t->b.cfg.max_io_bytes);
        return;
    }
    if (seq != c->peer_done_seq + 1) {
        conn_fail(c, EPROTO, "peer request out of sequence: %" G_GUINT64_FORMAT " after %"
                  G_GUINT64_FORMAT, seq, c->peer_done_seq);
        return;
    }
    if (type == T_PUT) {
        c->rx_dst = r->addr + off;
        c->rx_left = len;
        c->rx = RX_PUT;
        return;
    }
    uint32_t slot = (c->resp_head + c->resp_count) % c->resp_cap;
    c->resp[slot] = (TcpGetResp){ .src = r->addr + off, .len = len, .seq = seq };
    c->resp_count++;
    c->peer_done_seq = seq;
}

/* ACK: every write of ours up to @seq is placed. */
static void rx_ack(RdmigConn *c, uint64_t seq)
{
    if (seq >= c->next_seq) {
        conn_fail(c, EPROTO, "peer acknowledged request %" G_GUINT64_FORMAT
                  " that was never sent", seq);
        return;
    }
    RdmigIoReq *prev = NULL, *r = c->wq_head;
    while (r) {
        RdmigIoReq *next = r->tp_next;
        if (r->op == RDMIG_IO_WRITE && r->tp_priv[1] <= seq) {
            wq_unlink(c, r, prev);
            complete(c, r, 0);
        } else {
            prev = r;
        }
        r = next;
    }
}

/* GET_RESP: the answer to our oldest read, received into its buffers. */
static void rx_get_resp(RdmigConn *c, uint32_t len, uint64_t seq)
{
    RdmigIoReq *prev, *r = wq_find(c, RDMIG_IO_READ, &prev);
    if (!r || r->tp_priv[1] != seq || len != r->tp_priv[0]) {
        conn_fail(c, EPROTO, "unexpected read response (seq %" G_GUINT64_FORMAT ", %u bytes)",
                  seq, len);
        return;
    }
    wq_unlink(c, r, prev);
    c->rx_req = r;
    c->rx_req_off = 0;
    c->rx_left = len;
    c->rx = RX_RESP;
}

static void rx_header(RdmigConn *c)
{
    const uint8_t *h = c->rx_hdr;
    c->rx_hdr_got = 0;
    if (rdmig_get_be32(h) != TCP_MAGIC) {
        conn_fail(c, EPROTO, "bad frame magic 0x%08x on data connection", rdmig_get_be32(h));
        return;
    }
    uint8_t type = h[4];
    uint32_t region = rdmig_get_be32(h + 8), len = rdmig_get_be32(h + 12);
    uint64_t off = rdmig_get_be64(h + 16), seq = rdmig_get_be64(h + 24);
    if (type == T_PUT || type == T_GET)
        rx_request(c, type, region, len, off, seq);
    else if (type == T_ACK)
        rx_ack(c, seq);
    else if (type == T_GET_RESP)
        rx_get_resp(c, len, seq);
    else
        conn_fail(c, EPROTO, "unknown frame type %u on data connection", type);
}

/* Builds the receive vector: the rest of the current payload, then room for
 * the next header, so one recvmsg() usually ends a payload and begins the next
 * frame. */
static int rx_vector(RdmigConn *c, struct iovec *v)
{
    int n = 0;
    if (c->rx == RX_PUT) {
        v[n++] = (struct iovec){ c->rx_dst, c->rx_left };
    } else if (c->rx == RX_RESP) {
        RdmigIoReq *r = c->rx_req;
        size_t skip = c->rx_req_off;
        for (int i = 0; i < r->iovcnt; i++) {
            if (skip >= r->iov[i].iov_len) {
                skip -= r->iov[i].iov_len;
                continue;
            }
            v[n++] = (struct iovec){ (uint8_t *)r->iov[i].iov_base + skip,
                                     r->iov[i].iov_len - skip };
            skip = 0;
        }
    }
    v[n++] = (struct iovec){ c->rx_hdr + c->rx_hdr_got, TCP_HDR - c->rx_hdr_got };
    return n;
}

static void progress_rx(RdmigConn *c)
{
    size_t budget = TCP_RX_BUDGET;
    while (!c->fail.failed && budget) {
        /* Answers we still owe cap how many more reads we accept. */
        if (c->resp_count == c->resp_cap)
            return;
        struct iovec v[RDMIG_IO_MAX_IOV + 1];
        int n = rx_vector(c, v);
        struct msghdr m = { .msg_iov = v, .msg_iovlen = n };
        ssize_t r = recvmsg(c->fd, &m, MSG_DONTWAIT);
        if (r == 0) {
            conn_fail(c, ECONNRESET, "peer closed the data connection");
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            conn_fail(c, errno, "receive: %s", g_strerror(errno));
            return;
        }
        budget = (size_t)r >= budget ? 0 : budget - r;
        size_t got = r;
        if (c->rx != RX_HDR) {
            size_t take = MIN(got, c->rx_left);
            c->rx_left -= take;
            got -= take;
            if (c->rx == RX_RESP)
                c->rx_req_off += take;
            else
                c->rx_dst += take;
            if (!c->rx_left) {
                if (c->rx == RX_PUT) {
                    c->peer_done_seq++;
                } else {
                    complete(c, c->rx_req, 0);
                    c->rx_req = NULL;
                }
                c->rx = RX_HDR;
            }
        }
        c->rx_hdr_got += got;
        if (c->rx_hdr_got == TCP_HDR)
            rx_header(c);
    }
}

static int tcp_poll(RdmigConn *c, RdmigIoReq **done, int max)
{
    if (!c->fail.failed) {
        progress_rx(c);
        progress_tx(c);
    }
    int n = 0;
    while (n < max && c->done_head) {
        RdmigIoReq *r = c->done_head;
        c->done_head = r->tp_next;
        if (!c->done_head)
            c->done_tail = NULL;
        done[n++] = r;
    }
    if (!n && c->fail.failed)
        return -c->fail.err;
    return n;
}

static int tcp_conn_fd(RdmigConn *c, short *events)
{
    *events = POLLIN | (tx_pending(c) ? POLLOUT : 0);
    return c->fd;
}

static const char *tcp_conn_error(RdmigConn *c) { return c->fail.failed ? c->fail.text : NULL; }

const RdmigTransportOps rdmig_tcp_transport_ops = {
    .abi_version = RDMIG_TRANSPORT_ABI_VERSION,
    .size = sizeof(RdmigTransportOps),
    .name = "tcp",
    .caps = RDMIG_TRANSPORT_CAP_ONESIDED_WRITE | RDMIG_TRANSPORT_CAP_ONESIDED_READ,
    .probe = tcp_probe,
    .create = tcp_create,
    .destroy = tcp_destroy,
    .listen = tcp_listen,
    .listener_address = tcp_listener_address,
    .accept = tcp_accept,
    .listener_close = tcp_listener_close,
    .connect = tcp_connect,
    .disconnect = tcp_disconnect,
    .conn_close = tcp_conn_close,
    .register_region = tcp_register,
    .region_key = tcp_region_key,
    .deregister_region = tcp_deregister,
    .submit = tcp_submit,
    .poll = tcp_poll,
    .conn_fd = tcp_conn_fd,
    .conn_error = tcp_conn_error,
};

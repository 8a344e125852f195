/* SPDX-License-Identifier: MIT */
/*
 * The transport contract: one set of cases, run against every registered
 * transport that probes successfully on this host (tcp everywhere, rdma in
 * the soft-RoCE VM).  A new transport proves itself here: connect and
 * authenticate, register, write, read, queue depth, access rights, bounds,
 * shutdown and disconnect mid-transfer, reconnect.
 *
 * Each case gets two transport instances, A (initiator) and B (target), with
 * the same conn_token; B listens on RDMIG_CONTRACT_HOST (default 127.0.0.1)
 * port 0 and A connects.  B's connection is driven by a poller thread, as the
 * engine's destination does: a transport that needs the target's CPU (tcp)
 * places data inside poll().  A's connection is driven by the test itself.
 *
 * All memory the target exposes sits between guard areas, and every case
 * compares the whole mapping, guards included, with what it should be.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rdmig/error.h"
#include "rdmig/transport.h"

#define GUARD (64u * 1024)
#define QDEPTH 16
#define MAX_IO (16u << 20)
#define TOKEN 0x5eed5eed12345678ull
#define IO_TIMEOUT_MS 10000

/* ------------------------------------------------------------ memory */

typedef struct {
    const RdmigTransportOps *ops;
    RdmigRegion *region;
    uint8_t *map;      /* guard | data | guard */
    size_t maplen;
    uint8_t *data;
    size_t len;
    uint8_t *shadow;   /* what the whole mapping should hold */
    RdmigRemoteKey key;
} Mem;

static void fill_pattern(uint8_t *p, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x1234567;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(x >> (i % 8 * 8));
}

/* NULL if the mapping holds what it should, else where it differs. */
static char *mem_diff(const Mem *m)
{
    if (memcmp(m->map, m->shadow, m->maplen) == 0)
        return NULL;
    size_t first = 0, last = m->maplen - 1, n = 0;
    while (m->map[first] == m->shadow[first])
        first++;
    while (m->map[last] == m->shadow[last])
        last--;
    for (size_t i = first; i <= last; i++)
        n += m->map[i] != m->shadow[i];
    return g_strdup_printf("%zu bytes differ between data offsets %td and %td (region is "
                           "[0, %zu); guards of %u bytes on each side)", n,
                           (ptrdiff_t)first - (ptrdiff_t)GUARD, (ptrdiff_t)last - (ptrdiff_t)GUARD,
                           m->len, GUARD);
}

static void mem_assert(const Mem *m, const char *what)
{
    g_autofree char *d = mem_diff(m);
    if (d)
        g_error("%s: %s", what, d);
}

/* ------------------------------------------------------------ fixture */

typedef struct {
    const RdmigTransportOps *ops;
    RdmigConn *ca;      /* initiator side, driven by the test */
    RdmigConn *cb;      /* target side, driven by the poller while it runs */
    GThread *poller;
    gint stop;
    gint target_errno;  /* set by the poller when the target's poll fails */
} Pair;

typedef struct {
    const RdmigTransportOps *ops;
    RdmigTransportConfig cfg;
    RdmigTransport *ta, *tb;
    GPtrArray *extra_transports;
    RdmigListener *l;
    char *address;
    Pair *main;
    GPtrArray *pairs;
    GPtrArray *mems;
    GPtrArray *allocs;
} Fixture;

static gpointer fx_alloc(Fixture *fx, size_t size)
{
    gpointer p = g_malloc0(size);
    g_ptr_array_add(fx->allocs, p);
    return p;
}

static Mem *mem_new(Fixture *fx, RdmigTransport *t, size_t len, uint32_t access, uint64_t seed)
{
    Mem *m = g_new0(Mem, 1);
    m->ops = fx->ops;
    m->maplen = len + 2 * GUARD;
    m->map = mmap(NULL, m->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert_true(m->map != MAP_FAILED);
    fill_pattern(m->map, m->maplen, seed);
    m->data = m->map + GUARD;
    m->len = len;
    m->shadow = g_memdup2(m->map, m->maplen);
    g_autoptr(GError) err = NULL;
    m->region = fx->ops->register_region(t, m->data, len, access, &err);
    g_assert_no_error(err);
    g_assert_nonnull(m->region);
    fx->ops->region_key(m->region, &m->key);
    g_assert_cmpuint(m->key.len, >, 0);
    g_assert_cmpuint(m->key.len, <=, RDMIG_REMOTE_KEY_MAX);
    g_ptr_array_add(fx->mems, m);
    return m;
}

static void mem_free(Mem *m)
{
    if (m->region)
        m->ops->deregister_region(m->region);
    munmap(m->map, m->maplen);
    g_free(m->shadow);
    g_free(m);
}

/* One request and what the test knows about it. */
typedef struct {
    RdmigIoReq req; /* first: a completed RdmigIoReq* is its Op* */
    int cookie;     /* req.user points here */
    int completions;
} Op;

static void op_init(Op *op, RdmigIoOp kind, const RdmigRemoteKey *key, uint64_t off, int index)
{
    memset(op, 0, sizeof(*op));
    op->req.op = kind;
    op->req.rkey = key;
    op->req.remote_offset = off;
    op->req.status = 12345; /* must be overwritten at completion */
    op->cookie = index;
    op->req.user = &op->cookie;
}

static void op_iov(Op *op, void *p, size_t len)
{
    g_assert_cmpint(op->req.iovcnt, <, RDMIG_IO_MAX_IOV);
    op->req.iov[op->req.iovcnt++] = (struct iovec){ p, len };
}

static void wait_conn(const RdmigTransportOps *ops, RdmigConn *c, int ms)
{
    short ev = 0;
    int fd = ops->conn_fd(c, &ev);
    struct pollfd p = { .fd = fd, .events = ev };
    if (poll(&p, fd >= 0 ? 1 : 0, ms) < 0 && errno != EINTR)
        g_error("poll: %s", g_strerror(errno));
}

/*
 * Polls @c until @want completions were reaped or @timeout_ms passed.  Every
 * completion is checked: an Op of this test, cookie intact, status set.
 * *neg gets the last negative poll() result, if any.
 */
static int reap(const RdmigTransportOps *ops, RdmigConn *c, int want, int timeout_ms, int *neg)
{
    int got = 0;
    if (neg)
        *neg = 0;
    gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    while (got < want && g_get_monotonic_time() < end) {
        wait_conn(ops, c, 20);
        RdmigIoReq *done[32];
        int n = ops->poll(c, done, G_N_ELEMENTS(done));
        if (n < 0) {
            if (neg)
                *neg = n;
            g_usleep(1000);
            continue;
        }
        g_assert_cmpint(n, <=, (int)G_N_ELEMENTS(done));
        for (int i = 0; i < n; i++) {
            Op *op = (Op *)done[i];
            g_assert_true(op->req.user == &op->cookie);
            g_assert_cmpint(op->req.status, !=, 12345);
            g_assert_cmpint(op->req.status, <=, 0);
            op->completions++;
            if (op->completions > 1)
                g_error("request %d completed %d times", op->cookie, op->completions);
            got++;
        }
    }
    return got;
}

/* Polls until poll() reports the connection failed; returns that errno (negative), or 0. */
static int wait_failed(const RdmigTransportOps *ops, RdmigConn *c, int timeout_ms)
{
    gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    while (g_get_monotonic_time() < end) {
        wait_conn(ops, c, 20);
        RdmigIoReq *done[32];
        int n = ops->poll(c, done, G_N_ELEMENTS(done));
        if (n < 0)
            return n;
        for (int i = 0; i < n; i++)
            ((Op *)done[i])->completions++;
    }
    return 0;
}

static gpointer target_poller(gpointer data)
{
    Pair *p = data;
    while (!g_atomic_int_get(&p->stop)) {
        wait_conn(p->ops, p->cb, 50);
        RdmigIoReq *done[16];
        int n = p->ops->poll(p->cb, done, G_N_ELEMENTS(done));
        if (n < 0) {
            g_atomic_int_set(&p->target_errno, -n);
            break;
        }
    }
    return NULL;
}

static void pair_stop_poller(Pair *p)
{
    if (!p->poller)
        return;
    g_atomic_int_set(&p->stop, 1);
    g_thread_join(p->poller);
    p->poller = NULL;
}

static void pair_start_poller(Pair *p)
{
    g_assert_null(p->poller);
    g_atomic_int_set(&p->stop, 0);
    p->poller = g_thread_new("target-poller", target_poller, p);
}

/* Reaps whatever a stopped connection still returns, then frees it. */
static void conn_finish(const RdmigTransportOps *ops, RdmigConn **c)
{
    if (!*c)
        return;
    ops->disconnect(*c);
    gint64 end = g_get_monotonic_time() + 3 * G_USEC_PER_SEC;
    while (g_get_monotonic_time() < end) {
        RdmigIoReq *done[64];
        int n = ops->poll(*c, done, G_N_ELEMENTS(done));
        if (n < 0)
            break;
        for (int i = 0; i < n; i++)
            ((Op *)done[i])->completions++;
        if (!n)
            wait_conn(ops, *c, 5);
    }
    ops->conn_close(*c);
    *c = NULL;
}

static void pair_close(Pair *p)
{
    pair_stop_poller(p);
    conn_finish(p->ops, &p->ca);
    conn_finish(p->ops, &p->cb);
}

typedef struct {
    const RdmigTransportOps *ops;
    RdmigListener *l;
    RdmigConn *c;
    GError *err;
} AcceptJob;

static gpointer accept_job(gpointer data)
{
    AcceptJob *j = data;
    j->c = j->ops->accept(j->l, 10000, &j->err);
    return NULL;
}

/* Connects @t to the listener while B accepts on another thread (some
 * transports need both at once). */
static void connect_accept(Fixture *fx, RdmigTransport *t, RdmigConn **ca, GError **cerr,
                           RdmigConn **cb, GError **aerr)
{
    AcceptJob j = { .ops = fx->ops, .l = fx->l };
    GThread *th = g_thread_new("accept", accept_job, &j);
    *ca = fx->ops->connect(t, fx->address, cerr);
    g_thread_join(th);
    *cb = j.c;
    if (aerr)
        *aerr = j.err;
    else
        g_clear_error(&j.err);
}

static Pair *pair_new(Fixture *fx)
{
    Pair *p = g_new0(Pair, 1);
    p->ops = fx->ops;
    g_autoptr(GError) cerr = NULL;
    g_autoptr(GError) aerr = NULL;
    connect_accept(fx, fx->ta, &p->ca, &cerr, &p->cb, &aerr);
    g_assert_no_error(cerr);
    g_assert_no_error(aerr);
    g_assert_nonnull(p->ca);
    g_assert_nonnull(p->cb);
    pair_start_poller(p);
    g_ptr_array_add(fx->pairs, p);
    return p;
}

static void fx_setup(gpointer data, gconstpointer user)
{
    Fixture *fx = data;
    fx->ops = user;
    fx->pairs = g_ptr_array_new();
    fx->mems = g_ptr_array_new();
    fx->allocs = g_ptr_array_new_with_free_func(g_free);
    fx->extra_transports = g_ptr_array_new();
    fx->cfg = (RdmigTransportConfig){ .queue_depth = QDEPTH,
                                      .connect_timeout_ms = 15000, /* a REQ lost after a link flap is resent after ~4 s */
                                      .max_io_bytes = MAX_IO,
                                      .conn_token = TOKEN };
    g_autoptr(GError) err = NULL;
    fx->ta = fx->ops->create(&fx->cfg, &err);
    g_assert_no_error(err);
    fx->tb = fx->ops->create(&fx->cfg, &err);
    g_assert_no_error(err);
    g_assert_nonnull(fx->ta);
    g_assert_nonnull(fx->tb);

    const char *host = g_getenv("RDMIG_CONTRACT_HOST");
    if (!host || !*host)
        host = "127.0.0.1";
    g_autofree char *want = strchr(host, ':') && host[0] != '['
                                ? g_strdup_printf("[%s]:0", host)
                                : g_strdup_printf("%s:0", host);
    fx->l = fx->ops->listen(fx->tb, want, &err);
    g_assert_no_error(err);
    g_assert_nonnull(fx->l);
    fx->address = g_strdup(fx->ops->listener_address(fx->l));
    g_assert_nonnull(fx->address);
    g_assert_false(g_str_has_suffix(fx->address, ":0"));
    fx->main = pair_new(fx);
}

static void fx_teardown(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    for (guint i = 0; i < fx->pairs->len; i++) {
        Pair *p = fx->pairs->pdata[i];
        pair_close(p);
        g_free(p);
    }
    g_ptr_array_free(fx->pairs, TRUE);
    if (fx->l)
        fx->ops->listener_close(fx->l);
    g_free(fx->address);
    for (guint i = 0; i < fx->mems->len; i++)
        mem_free(fx->mems->pdata[i]);
    g_ptr_array_free(fx->mems, TRUE);
    fx->ops->destroy(fx->ta);
    fx->ops->destroy(fx->tb);
    for (guint i = 0; i < fx->extra_transports->len; i++)
        fx->ops->destroy(fx->extra_transports->pdata[i]);
    g_ptr_array_free(fx->extra_transports, TRUE);
    g_ptr_array_free(fx->allocs, TRUE);
}

/* Does the target's CPU place the data (so a stopped target poller stops it)? */
static bool target_needs_cpu(const Fixture *fx)
{
    return !(fx->ops->caps & RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU);
}

/* Writes [src+soff, +len) to dst at @off over @p and checks success; updates
 * dst's shadow. */
static void write_ok(Fixture *fx, Pair *p, Mem *src, size_t soff, Mem *dst, uint64_t off, size_t len)
{
    Op *op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_WRITE, &dst->key, off, 1);
    op_iov(op, src->data + soff, len);
    g_assert_cmpint(fx->ops->submit(p->ca, &op->req), ==, 0);
    int neg;
    g_assert_cmpint(reap(fx->ops, p->ca, 1, IO_TIMEOUT_MS, &neg), ==, 1);
    g_assert_cmpint(op->req.status, ==, 0);
    memcpy(dst->shadow + GUARD + off, src->data + soff, len);
    mem_assert(dst, "after a write");
}

/* ------------------------------------------------------------ cases */

static void test_connect(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Pair *p = fx->main;
    g_assert_null(fx->ops->conn_error(p->ca));
    short ev = 0;
    int fd = fx->ops->conn_fd(p->ca, &ev);
    g_assert_cmpint(fd, >=, 0);
    g_assert_true(ev & POLLIN);
    /* Idle: nothing completes, nothing fails. */
    RdmigIoReq *done[4];
    for (int i = 0; i < 5; i++) {
        g_assert_cmpint(fx->ops->poll(p->ca, done, 4), ==, 0);
        g_usleep(2000);
    }
    g_assert_cmpint(g_atomic_int_get(&p->target_errno), ==, 0);
    /* And data flows. */
    Mem *dst = mem_new(fx, fx->tb, 64 * 1024, RDMIG_ACCESS_REMOTE_WRITE, 1);
    Mem *src = mem_new(fx, fx->ta, 64 * 1024, 0, 2);
    write_ok(fx, p, src, 0, dst, 0, 64 * 1024);
}

static void test_auth(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *dst = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_WRITE, 3);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 4);

    /* Another session's token. */
    RdmigTransportConfig bad = fx->cfg;
    bad.conn_token = TOKEN ^ 1;
    g_autoptr(GError) err = NULL;
    RdmigTransport *tc = fx->ops->create(&bad, &err);
    g_assert_no_error(err);
    g_ptr_array_add(fx->extra_transports, tc);
    RdmigConn *ca = NULL, *cb = NULL;
    g_autoptr(GError) cerr = NULL;
    g_autoptr(GError) aerr = NULL;
    connect_accept(fx, tc, &ca, &cerr, &cb, &aerr);
    g_assert_null(cb);
    g_assert_error(aerr, RDMIG_ERROR, RDMIG_ERROR_AUTH);
    if (ca) {
        /* The initiator may learn of the refusal only when it uses the connection. */
        g_assert_cmpint(wait_failed(fx->ops, ca, 5000), <, 0);
        g_assert_nonnull(fx->ops->conn_error(ca));
        conn_finish(fx->ops, &ca);
    } else {
        g_assert_nonnull(cerr);
    }

    /* The connection made before is unaffected. */
    write_ok(fx, fx->main, src, 0, dst, 0, 4096);
    /* And a good connection after the refused one works. */
    Pair *p2 = pair_new(fx);
    write_ok(fx, p2, src, 4096, dst, 8192, 64 * 1024);
}

static void test_write(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    const size_t rlen = 4u << 20;
    Mem *dst = mem_new(fx, fx->tb, rlen, RDMIG_ACCESS_REMOTE_WRITE, 5);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 6);
    static const struct {
        uint64_t off;
        size_t soff, len;
    } w[] = {
        { 0, 0, 4096 },
        { 12289, 4096, 4096 },              /* not aligned */
        { 1u << 20, 65536, 65536 },
        { (4u << 20) - (256u << 10), 131072, 256u << 10 }, /* up to the last byte */
        { (4u << 20) - 1, 7, 1 },           /* the last byte alone */
        { 3u << 20, 0, 1u << 20 },          /* 1 MiB */
    };
    const size_t n = G_N_ELEMENTS(w) + 1;
    Op *ops = fx_alloc(fx, n * sizeof(Op));
    for (size_t i = 0; i < G_N_ELEMENTS(w); i++) {
        op_init(&ops[i], RDMIG_IO_WRITE, &dst->key, w[i].off, (int)i);
        op_iov(&ops[i], src->data + w[i].soff, w[i].len);
    }
    /* A gather of three buffers into one contiguous remote range. */
    Op *g = &ops[n - 1];
    op_init(g, RDMIG_IO_WRITE, &dst->key, (2u << 20) + 7, (int)(n - 1));
    op_iov(g, src->data + 500000, 1000);
    op_iov(g, src->data + 100, 4096);
    op_iov(g, src->data + 777777, 777);

    for (size_t i = 0; i < n; i++)
        g_assert_cmpint(fx->ops->submit(fx->main->ca, &ops[i].req), ==, 0);
    int neg;
    g_assert_cmpint(reap(fx->ops, fx->main->ca, (int)n, IO_TIMEOUT_MS, &neg), ==, (int)n);
    g_assert_cmpint(neg, ==, 0);
    for (size_t i = 0; i < n; i++) {
        g_assert_cmpint(ops[i].completions, ==, 1);
        g_assert_cmpint(ops[i].req.status, ==, 0);
        g_assert_cmpint(ops[i].cookie, ==, (int)i);
    }
    /* Writes to distinct ranges, in submission order where they overlap. */
    for (size_t i = 0; i < G_N_ELEMENTS(w); i++)
        memcpy(dst->shadow + GUARD + w[i].off, src->data + w[i].soff, w[i].len);
    uint8_t *at = dst->shadow + GUARD + (2u << 20) + 7;
    memcpy(at, src->data + 500000, 1000);
    memcpy(at + 1000, src->data + 100, 4096);
    memcpy(at + 5096, src->data + 777777, 777);
    mem_assert(dst, "target memory after the writes");
    mem_assert(src, "the initiator's source buffers");
    g_assert_null(fx->ops->conn_error(fx->main->ca));
    g_assert_cmpint(g_atomic_int_get(&fx->main->target_errno), ==, 0);
}

static void test_queue_depth(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Pair *p = fx->main;
    Mem *dst = mem_new(fx, fx->tb, 4u << 20, RDMIG_ACCESS_REMOTE_WRITE, 7);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 8);
    const int n = 4 * QDEPTH;
    Op *ops = fx_alloc(fx, n * sizeof(Op));
    for (int i = 0; i < n; i++) {
        op_init(&ops[i], RDMIG_IO_WRITE, &dst->key, (uint64_t)i * 8192 + (uint64_t)i, i);
        op_iov(&ops[i], src->data + (size_t)i * 4096, 4096);
    }

    /* Without polling, the queue fills: -EAGAIN, at queue_depth or later. */
    int submitted = 0, rc = 0;
    while (submitted < n && (rc = fx->ops->submit(p->ca, &ops[submitted].req)) == 0)
        submitted++;
    if (submitted == n)
        g_error("%d requests submitted without polling and no -EAGAIN (queue_depth %d)", n,
                QDEPTH);
    g_assert_cmpint(rc, ==, -EAGAIN);
    g_assert_cmpint(submitted, >=, QDEPTH);
    /* Still full until something is reaped. */
    g_assert_cmpint(fx->ops->submit(p->ca, &ops[submitted].req), ==, -EAGAIN);

    /* Poll; submit the rest as room appears. */
    int reaped = 0;
    gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    while (reaped < n && g_get_monotonic_time() < end) {
        while (submitted < n) {
            rc = fx->ops->submit(p->ca, &ops[submitted].req);
            if (rc == -EAGAIN)
                break;
            g_assert_cmpint(rc, ==, 0);
            submitted++;
        }
        g_assert_cmpint(submitted - reaped, <=, n);
        int neg;
        reaped += reap(fx->ops, p->ca, 1, 100, &neg);
        g_assert_cmpint(neg, ==, 0);
    }
    g_assert_cmpint(reaped, ==, n);
    for (int i = 0; i < n; i++) {
        g_assert_cmpint(ops[i].completions, ==, 1);
        g_assert_cmpint(ops[i].req.status, ==, 0);
        g_assert_true(ops[i].req.user == &ops[i].cookie);
        g_assert_cmpint(ops[i].cookie, ==, i);
        memcpy(dst->shadow + GUARD + (size_t)i * 8192 + i, src->data + (size_t)i * 4096, 4096);
    }
    /* Nothing more comes out. */
    int neg;
    g_assert_cmpint(reap(fx->ops, p->ca, 1, 100, &neg), ==, 0);
    g_assert_cmpint(neg, ==, 0);
    mem_assert(dst, "target memory after queue-depth writes");
}

static void test_read(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *srcb = mem_new(fx, fx->tb, 4u << 20, RDMIG_ACCESS_REMOTE_READ, 9);
    Mem *dst = mem_new(fx, fx->ta, 1u << 20, RDMIG_ACCESS_LOCAL_WRITE, 10);
    static const struct {
        uint64_t off;
        size_t doff, len;
    } r[] = {
        { 0, 0, 4096 },
        { 100 * 1024 + 3, 8192, 65536 },
        { (4u << 20) - (256u << 10), 128u << 10, 256u << 10 },
        { (4u << 20) - 1, 1000, 1 },
        { 1u << 20, 0, 0 }, /* placeholder for the scatter below */
    };
    const size_t n = G_N_ELEMENTS(r);
    Op *ops = fx_alloc(fx, n * sizeof(Op));
    for (size_t i = 0; i + 1 < n; i++) {
        op_init(&ops[i], RDMIG_IO_READ, &srcb->key, r[i].off, (int)i);
        op_iov(&ops[i], dst->data + r[i].doff, r[i].len);
    }
    /* Scatter one remote range into three local buffers. */
    Op *s = &ops[n - 1];
    op_init(s, RDMIG_IO_READ, &srcb->key, (1u << 20) + 5, (int)(n - 1));
    op_iov(s, dst->data + (512u << 10), 1000);
    op_iov(s, dst->data + (600u << 10), 4096);
    op_iov(s, dst->data + (700u << 10) + 1, 777);

    for (size_t i = 0; i < n; i++)
        g_assert_cmpint(fx->ops->submit(fx->main->ca, &ops[i].req), ==, 0);
    int neg;
    g_assert_cmpint(reap(fx->ops, fx->main->ca, (int)n, IO_TIMEOUT_MS, &neg), ==, (int)n);
    for (size_t i = 0; i < n; i++) {
        g_assert_cmpint(ops[i].completions, ==, 1);
        g_assert_cmpint(ops[i].req.status, ==, 0);
    }
    for (size_t i = 0; i + 1 < n; i++)
        memcpy(dst->shadow + GUARD + r[i].doff, srcb->data + r[i].off, r[i].len);
    const uint8_t *from = srcb->data + (1u << 20) + 5;
    memcpy(dst->shadow + GUARD + (512u << 10), from, 1000);
    memcpy(dst->shadow + GUARD + (600u << 10), from + 1000, 4096);
    memcpy(dst->shadow + GUARD + (700u << 10) + 1, from + 5096, 777);
    mem_assert(dst, "local buffers after the reads");
    mem_assert(srcb, "the target's region after being read");
}

/* Submits one request and reaps it; returns its status. */
static int one_request(Fixture *fx, Pair *p, Op *op)
{
    int rc = fx->ops->submit(p->ca, &op->req);
    if (rc < 0)
        return rc; /* refused locally: fine for a bad request, it never ran */
    int neg;
    int got = reap(fx->ops, p->ca, 1, IO_TIMEOUT_MS, &neg);
    if (got != 1)
        g_error("request %d never completed (last poll: %d, conn_error: %s)", op->cookie, neg,
                fx->ops->conn_error(p->ca) ? fx->ops->conn_error(p->ca) : "none");
    return op->req.status;
}

/* Whether @key holds the 8 bytes of @addr in either byte order. */
static bool key_holds(const RdmigRemoteKey *key, uint64_t addr)
{
    for (uint32_t off = 0; off + 8 <= key->len; off++) {
        uint64_t be = 0, le = 0;
        for (int i = 0; i < 8; i++) {
            be = be << 8 | key->bytes[off + i];
            le |= (uint64_t)key->bytes[off + i] << (8 * i);
        }
        if (be == addr || le == addr)
            return true;
    }
    return false;
}

/* A key tells the peer what it may touch, not where this process maps its
 * memory (an address would help an attacker elsewhere in the process):
 * RDMA registers zero-based, TCP names regions by number. */
static void test_key_hides_address(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *rb = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_WRITE | RDMIG_ACCESS_REMOTE_READ,
                      23);
    g_assert_cmpuint(rb->key.len, >, 0);
    for (uint64_t delta = 0; delta < rb->len; delta += 4096)
        g_assert_false(key_holds(&rb->key, (uint64_t)(uintptr_t)rb->data + delta));
}

static void test_access(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *ronly = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_READ, 11);
    Mem *wonly = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_WRITE, 12);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 13);
    Mem *dst = mem_new(fx, fx->ta, 1u << 20, RDMIG_ACCESS_LOCAL_WRITE, 14);

    /* Write into a read-only region. */
    Op *op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_WRITE, &ronly->key, 4096, 1);
    op_iov(op, src->data, 65536);
    int st = one_request(fx, fx->main, op);
    g_assert_cmpint(st, <, 0);
    mem_assert(ronly, "read-only region after a refused write");

    /* Read from a write-only region, on a fresh connection. */
    Pair *p2 = pair_new(fx);
    op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_READ, &wonly->key, 0, 2);
    op_iov(op, dst->data, 65536);
    st = one_request(fx, p2, op);
    g_assert_cmpint(st, <, 0);
    mem_assert(wonly, "write-only region after a refused read");
    mem_assert(dst, "local buffer of a refused read");

    /* The rights are per region, not broken for the right kind of request. */
    Pair *p3 = pair_new(fx);
    write_ok(fx, p3, src, 0, wonly, 8192, 4096);
    op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_READ, &ronly->key, 12288, 3);
    op_iov(op, dst->data + 4096, 4096);
    g_assert_cmpint(one_request(fx, p3, op), ==, 0);
    memcpy(dst->shadow + GUARD + 4096, ronly->data + 12288, 4096);
    mem_assert(dst, "local buffer after an allowed read");
}

/* The same memory registered twice, as the source's RAM is once postcopy
 * starts (engine/postcopy-source.c): first for its own writes, then
 * readable by the peer.  Each key has its own rights, and the readable one
 * stops reading when its registration goes. */
static void test_second_registration(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *ram = mem_new(fx, fx->tb, 1u << 20, 0, 21);
    Mem *dst = mem_new(fx, fx->ta, 1u << 20, RDMIG_ACCESS_LOCAL_WRITE, 22);
    g_autoptr(GError) err = NULL;
    RdmigRegion *readable =
        fx->ops->register_region(fx->tb, ram->data, ram->len, RDMIG_ACCESS_REMOTE_READ, &err);
    g_assert_no_error(err);
    g_assert_nonnull(readable);
    RdmigRemoteKey rkey;
    fx->ops->region_key(readable, &rkey);

    Op *op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_READ, &rkey, 8192, 1);
    op_iov(op, dst->data, 4096);
    g_assert_cmpint(one_request(fx, fx->main, op), ==, 0);
    memcpy(dst->shadow + GUARD, ram->data + 8192, 4096);
    mem_assert(dst, "local buffer after a read through the second registration");

    /* The first registration's key does not read (a fresh connection: a
     * refusal may end the one it came on). */
    op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_READ, &ram->key, 0, 2);
    op_iov(op, dst->data + 8192, 4096);
    g_assert_cmpint(one_request(fx, pair_new(fx), op), <, 0);
    mem_assert(dst, "local buffer of a read refused through the first registration");

    g_assert_cmpint(fx->ops->deregister_region(readable), ==, 0);
    op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_READ, &rkey, 0, 3);
    op_iov(op, dst->data + 16384, 4096);
    g_assert_cmpint(one_request(fx, pair_new(fx), op), <, 0);
    mem_assert(dst, "local buffer of a read through a deregistered region");
    mem_assert(ram, "memory registered twice");
}

static void test_out_of_range(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Pair *p = fx->main;
    const size_t rlen = 1u << 20;
    Mem *rb = mem_new(fx, fx->tb, rlen, RDMIG_ACCESS_REMOTE_WRITE | RDMIG_ACCESS_REMOTE_READ, 15);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, RDMIG_ACCESS_LOCAL_WRITE, 16);
    static const struct {
        uint64_t off;
        size_t len;
    } bad[] = {
        { (1u << 20) - 4096 + 1, 4096 },
        { 1u << 20, 1 },
        { (1u << 20) + 4096, 4096 },
        { G_MAXUINT64 - 100, 4096 }, /* offset + length wraps */
        { G_MAXUINT64, 1 },
    };
    Op *op = fx_alloc(fx, sizeof(Op));
    for (int kind = 0; kind < 2; kind++) {
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
            op_init(op, kind ? RDMIG_IO_READ : RDMIG_IO_WRITE, &rb->key, bad[i].off, (int)i);
            op_iov(op, src->data, bad[i].len);
            int rc = fx->ops->submit(p->ca, &op->req);
            if (rc != -EINVAL)
                g_error("%s of %zu bytes at offset %" G_GUINT64_FORMAT " in a %zu-byte region: "
                        "submit returned %d, expected -EINVAL", kind ? "read" : "write",
                        bad[i].len, bad[i].off, rlen, rc);
        }
    }
    /* Malformed requests. */
    op_init(op, RDMIG_IO_WRITE, &rb->key, 0, 0);
    g_assert_cmpint(fx->ops->submit(p->ca, &op->req), ==, -EINVAL); /* no iov */
    op_init(op, RDMIG_IO_WRITE, &rb->key, 0, 0);
    for (int i = 0; i < RDMIG_IO_MAX_IOV; i++)
        op_iov(op, src->data + i * 16, 16);
    op->req.iovcnt = RDMIG_IO_MAX_IOV + 1;
    g_assert_cmpint(fx->ops->submit(p->ca, &op->req), ==, -EINVAL);
    op_init(op, RDMIG_IO_WRITE, NULL, 0, 0);
    op_iov(op, src->data, 16);
    g_assert_cmpint(fx->ops->submit(p->ca, &op->req), ==, -EINVAL); /* no key */

    /* None of them was queued: nothing completes, the connection is fine. */
    int neg;
    g_assert_cmpint(reap(fx->ops, p->ca, 1, 200, &neg), ==, 0);
    g_assert_cmpint(neg, ==, 0);
    g_assert_cmpint(op->completions, ==, 0);
    mem_assert(rb, "region after refused requests");

    /* Right at the end is fine. */
    write_ok(fx, p, src, 0, rb, rlen - 4096, 4096);
    /* All sixteen iovs are fine. */
    op_init(op, RDMIG_IO_WRITE, &rb->key, 100, 0);
    for (int i = 0; i < RDMIG_IO_MAX_IOV; i++)
        op_iov(op, src->data + i * 1000, 100 + i);
    g_assert_cmpint(one_request(fx, p, op), ==, 0);
    size_t at = 100;
    for (int i = 0; i < RDMIG_IO_MAX_IOV; i++) {
        memcpy(rb->shadow + GUARD + at, src->data + i * 1000, 100 + i);
        at += 100 + i;
    }
    mem_assert(rb, "region after a 16-iov write");
}

/* Key forgery needs to know the key's layout. */
typedef enum { FORGE_OTHER_REGION, FORGE_LONGER } ForgeKind;

static bool forge_key(const char *transport, const RdmigRemoteKey *real, ForgeKind kind,
                      RdmigRemoteKey *out)
{
    *out = *real;
    if (strcmp(transport, "tcp") == 0 && real->len == 12) {
        /* be32 region id, be64 region length (tcp_region_key). */
        if (kind == FORGE_OTHER_REGION) {
            out->bytes[0] = 0;
            out->bytes[1] = 0;
            out->bytes[2] = 0x03;
            out->bytes[3] = 0xe7; /* region 999 */
        } else {
            out->bytes[5] ^= 0x10; /* length += 1 TiB-ish, bounds now only the target's */
        }
        return true;
    }
    if (strcmp(transport, "rdma") == 0 && real->len == 20) {
        /* be64 address, be32 rkey, be64 length (rdma_tp_region_key). */
        if (kind == FORGE_OTHER_REGION) {
            for (int i = 8; i < 12; i++)
                out->bytes[i] ^= 0xa5;
        } else {
            out->bytes[13] ^= 0x10;
        }
        return true;
    }
    return false;
}

static void test_forged_key(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    const size_t rlen = 1u << 20;
    Mem *rb = mem_new(fx, fx->tb, rlen, RDMIG_ACCESS_REMOTE_WRITE | RDMIG_ACCESS_REMOTE_READ, 17);
    Mem *other = mem_new(fx, fx->tb, rlen, RDMIG_ACCESS_REMOTE_WRITE, 18);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, RDMIG_ACCESS_LOCAL_WRITE, 19);
    RdmigRemoteKey *forged = fx_alloc(fx, sizeof(RdmigRemoteKey));
    if (!forge_key(fx->ops->name, &rb->key, FORGE_OTHER_REGION, forged)) {
        g_autofree char *why = g_strdup_printf(
            "don't know the remote key format of transport '%s' (key of %u bytes); "
            "teach forge_key() about it", fx->ops->name, rb->key.len);
        g_test_skip(why);
        return;
    }
    /* A key naming a region that does not exist. */
    Op *op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_WRITE, forged, 0, 1);
    op_iov(op, src->data, 65536);
    g_assert_cmpint(one_request(fx, fx->main, op), <, 0);
    mem_assert(rb, "real region after a write with a forged key");
    mem_assert(other, "other region after a write with a forged key");

    /* A key claiming a longer region: the target checks bounds itself. */
    RdmigRemoteKey *longer = fx_alloc(fx, sizeof(RdmigRemoteKey));
    g_assert_true(forge_key(fx->ops->name, &rb->key, FORGE_LONGER, longer));
    static const uint64_t offs[] = { 1u << 20, (1u << 20) - 4096 + 1, (1u << 20) + GUARD / 2 };
    for (size_t i = 0; i < G_N_ELEMENTS(offs); i++) {
        Pair *p = pair_new(fx);
        for (int kind = 0; kind < 2; kind++) {
            if (kind == 1)
                p = pair_new(fx);
            op = fx_alloc(fx, sizeof(Op));
            op_init(op, kind ? RDMIG_IO_READ : RDMIG_IO_WRITE, longer, offs[i], (int)i);
            op_iov(op, src->data, 4096);
            g_assert_cmpint(one_request(fx, p, op), <, 0);
            mem_assert(rb, "region (and its guards) after an out-of-range request");
            mem_assert(other, "other region after an out-of-range request");
            mem_assert(src, "local buffer after an out-of-range read");
        }
    }
}

static void test_deregistered(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *rb = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_WRITE, 20);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 21);
    write_ok(fx, fx->main, src, 0, rb, 0, 4096);
    fx->ops->deregister_region(rb->region);
    rb->region = NULL;
    Op *op = fx_alloc(fx, sizeof(Op));
    op_init(op, RDMIG_IO_WRITE, &rb->key, 8192, 1);
    op_iov(op, src->data, 4096);
    g_assert_cmpint(one_request(fx, fx->main, op), <, 0);
    mem_assert(rb, "memory of a deregistered region after a write to its old key");
}

/* Many writes in flight; the target's connection closes under them. */
static void test_shutdown_mid_transfer(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Pair *p = fx->main;
    /* 16 x 1 MiB: more than the socket buffers of a loopback connection hold,
     * so a request is caught half-sent too. */
    Mem *dst = mem_new(fx, fx->tb, 16u << 20, RDMIG_ACCESS_REMOTE_WRITE, 22);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 23);
    /* From here on the target places nothing (where placing takes its CPU). */
    pair_stop_poller(p);
    Op *ops = fx_alloc(fx, QDEPTH * sizeof(Op));
    int n = 0;
    for (; n < QDEPTH; n++) {
        op_init(&ops[n], RDMIG_IO_WRITE, &dst->key, (uint64_t)n * (1u << 20), n);
        op_iov(&ops[n], src->data, 1u << 20);
        int rc = fx->ops->submit(p->ca, &ops[n].req);
        if (rc == -EAGAIN)
            break;
        g_assert_cmpint(rc, ==, 0);
    }
    g_assert_cmpint(n, >=, 2);
    /* Get the bytes moving. */
    int early = 0;
    for (int i = 0; i < 10; i++) {
        int neg;
        early += reap(fx->ops, p->ca, n, 2, &neg);
        g_assert_cmpint(neg, ==, 0);
    }
    if (target_needs_cpu(fx))
        g_assert_cmpint(early, ==, 0);

    /* The target goes away abruptly (it has nothing outstanding of its own). */
    fx->ops->conn_close(p->cb);
    p->cb = NULL;

    int neg;
    int got = early + reap(fx->ops, p->ca, n - early, IO_TIMEOUT_MS, &neg);
    if (got != n)
        g_error("%d of %d outstanding writes never completed after the target closed", n - got, n);
    int failed = 0;
    for (int i = 0; i < n; i++) {
        g_assert_cmpint(ops[i].completions, ==, 1);
        failed += ops[i].req.status < 0;
    }
    if (target_needs_cpu(fx))
        g_assert_cmpint(failed, ==, n);
    /* Then the connection itself reports the failure, and why. */
    int err = wait_failed(fx->ops, p->ca, 5000);
    g_assert_cmpint(err, <, 0);
    g_assert_nonnull(fx->ops->conn_error(p->ca));
    Op *late = fx_alloc(fx, sizeof(Op));
    op_init(late, RDMIG_IO_WRITE, &dst->key, 0, 99);
    op_iov(late, src->data, 4096);
    g_assert_cmpint(fx->ops->submit(p->ca, &late->req), <, 0);
}

/*
 * Reads outstanding when the target goes away (or the initiator disconnects)
 * must each complete, once, and the ones the shutdown caught with an error
 * like every other request.  The case proves that much only if a read was
 * really in flight at that moment:
 *  - where the target places with its CPU (tcp), nothing is answered while
 *    the target is not polled; one poll by hand answers part of the first
 *    read, so the shutdown comes in the middle of its answer, and all fail;
 *  - where the target needs no CPU (RDMA), reads are answered on their own,
 *    and a single one can be over before the shutdown (the case then tests
 *    nothing).  So the queue is kept full of the largest reads (QDEPTH x
 *    MAX_IO, 256 MiB behind the head): whatever completes is submitted again
 *    at once, and the shutdown follows the last refill with no wait in
 *    between.  No link moves 256 MiB in those microseconds, and the reads
 *    complete in order, so at least the last one must come back failed.
 * Every read takes the whole region into the same buffer, so whatever lands
 * there, from any of them, is the region's bytes.
 */

/* Submits reads of all of @srcb into @dst until the queue is full. */
static int submit_reads(Fixture *fx, Pair *p, Op *ops, Mem *srcb, Mem *dst)
{
    int n = 0;
    for (; n < QDEPTH; n++) {
        op_init(&ops[n], RDMIG_IO_READ, &srcb->key, 0, n);
        op_iov(&ops[n], dst->data, dst->len);
        int rc = fx->ops->submit(p->ca, &ops[n].req);
        if (rc == -EAGAIN)
            break;
        g_assert_cmpint(rc, ==, 0);
    }
    g_assert_cmpint(n, >=, 1);
    return n;
}

/* Polls the initiator once; a read that completed is checked and submitted
 * again at once, so the queue stays full.  Returns how many completed. */
static int refill_reads(Fixture *fx, Pair *p)
{
    RdmigIoReq *done[QDEPTH];
    int got = fx->ops->poll(p->ca, done, QDEPTH);
    g_assert_cmpint(got, >=, 0);
    for (int i = 0; i < got; i++) {
        Op *op = (Op *)done[i];
        g_assert_true(op->req.user == &op->cookie);
        g_assert_cmpint(op->req.status, ==, 0);
        op->req.status = 12345;
        g_assert_cmpint(fx->ops->submit(p->ca, &op->req), ==, 0);
    }
    return got;
}

/* Bytes at the start of @a and @b that are equal. */
static size_t common_prefix(const uint8_t *a, const uint8_t *b, size_t len)
{
    size_t i = 0;
    while (i < len && a[i] == b[i])
        i++;
    return i;
}

/* After the shutdown: every read completed once; a failure has the status
 * the shutdown gives; some read failed.  Returns how many completed well. */
static int check_mid_read(Fixture *fx, Op *ops, int n, bool disconnect)
{
    int failed = 0;
    for (int i = 0; i < n; i++) {
        g_assert_cmpint(ops[i].completions, ==, 1);
        int st = ops[i].req.status;
        /* Done before the shutdown reached it: only without the target's CPU. */
        if (st == 0 && !target_needs_cpu(fx))
            continue;
        if (disconnect ? st != -ECANCELED : st >= 0)
            g_error("READ %d completed with %d (%s) after %s, expected %s", i, st,
                    g_strerror(st < 0 ? -st : st),
                    disconnect ? "disconnect()" : "the target closed",
                    disconnect ? "-ECANCELED" : "an error");
        failed++;
    }
    if (!failed)
        g_error("all %d READs completed before the %s: none was in flight, the case proved "
                "nothing", n, disconnect ? "disconnect" : "target closed");
    if (target_needs_cpu(fx))
        g_assert_cmpint(failed, ==, n);
    return n - failed;
}

static void mid_read(Fixture *fx, bool disconnect)
{
    Pair *p = fx->main;
    const size_t len = MAX_IO;
    Mem *srcb = mem_new(fx, fx->tb, len, RDMIG_ACCESS_REMOTE_READ, 24);
    Mem *dst = mem_new(fx, fx->ta, len, RDMIG_ACCESS_LOCAL_WRITE, 25);
    /* So that the first byte of an answer shows. */
    g_assert_cmpuint(common_prefix(dst->data, srcb->data, len), ==, 0);
    pair_stop_poller(p); /* the test drives the target by hand from here */
    Op *ops = fx_alloc(fx, QDEPTH * sizeof(Op));
    int n = submit_reads(fx, p, ops, srcb, dst);
    RdmigIoReq *done[4];
    int early = 0;
    /* The requests go out; the target answers as much as the socket buffers
     * take (far less than 16 MiB); the initiator takes that part, no more. */
    for (int i = 0; i < 3; i++) {
        early += refill_reads(fx, p);
        g_usleep(5000);
    }
    g_assert_cmpint(fx->ops->poll(p->cb, done, 4), ==, 0);
    g_usleep(5000);
    early += refill_reads(fx, p); /* the last refill: no wait after it */
    if (disconnect) {
        fx->ops->disconnect(p->ca);
    } else {
        fx->ops->conn_close(p->cb);
        p->cb = NULL;
    }
    if (target_needs_cpu(fx)) {
        /* Nothing whole without the target's CPU, but part of the first. */
        g_assert_cmpint(early, ==, 0);
        size_t got = common_prefix(dst->data, srcb->data, len);
        g_test_message("%zu of %zu bytes of the first READ had arrived", got, len);
        g_assert_cmpuint(got, >, 0);
        g_assert_cmpuint(got, <, len);
    }
    int neg;
    int got = reap(fx->ops, p->ca, n, IO_TIMEOUT_MS, &neg);
    if (got != n) {
        /* A library bug, reported without aborting the other cases. */
        g_test_fail_printf("%d of %d outstanding %zu-byte READs never completed after %s (poll "
                           "returned %d; conn_error: %s)", n - got, n, len,
                           disconnect ? "disconnect()" : "the target closed", neg,
                           fx->ops->conn_error(p->ca) ? fx->ops->conn_error(p->ca) : "none");
        return;
    }
    /* A read that completed brought the whole region (the others, if they
     * wrote at all, only the region's bytes). */
    if (check_mid_read(fx, ops, n, disconnect) + early > 0)
        g_assert_cmpmem(dst->data, len, srcb->data, len);
    g_assert_cmpint(wait_failed(fx->ops, p->ca, 5000), <, 0);
}

static void test_shutdown_mid_read(gpointer data, gconstpointer user)
{
    (void)user;
    mid_read(data, false);
}

static void test_disconnect_mid_read(gpointer data, gconstpointer user)
{
    (void)user;
    mid_read(data, true);
}

static void test_disconnect(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Pair *p = fx->main;
    Mem *dst = mem_new(fx, fx->tb, 4u << 20, RDMIG_ACCESS_REMOTE_WRITE, 26);
    Mem *dstr = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_READ, 27);
    Mem *src = mem_new(fx, fx->ta, 256u << 10, RDMIG_ACCESS_LOCAL_WRITE, 28);
    pair_stop_poller(p);
    Op *ops = fx_alloc(fx, QDEPTH * sizeof(Op));
    int n = 0;
    for (; n < QDEPTH; n++) {
        bool read = n % 4 == 3;
        op_init(&ops[n], read ? RDMIG_IO_READ : RDMIG_IO_WRITE, read ? &dstr->key : &dst->key,
                (uint64_t)n * 65536, n);
        op_iov(&ops[n], src->data + (read ? 0 : 65536), 65536);
        int rc = fx->ops->submit(p->ca, &ops[n].req);
        if (rc == -EAGAIN)
            break;
        g_assert_cmpint(rc, ==, 0);
    }
    int early = 0, neg;
    for (int i = 0; i < 5; i++)
        early += reap(fx->ops, p->ca, n, 2, &neg);
    if (target_needs_cpu(fx))
        g_assert_cmpint(early, ==, 0);

    fx->ops->disconnect(p->ca);
    fx->ops->disconnect(p->ca); /* idempotent */
    int got = early + reap(fx->ops, p->ca, n - early, IO_TIMEOUT_MS, &neg);
    if (got != n)
        g_error("%d of %d outstanding requests never completed after disconnect()", n - got, n);
    for (int i = 0; i < n; i++) {
        g_assert_cmpint(ops[i].completions, ==, 1);
        if (ops[i].req.status != -ECANCELED &&
            !(ops[i].req.status == 0 && !target_needs_cpu(fx)))
            g_error("request %d completed with %d (%s) after disconnect(), expected -ECANCELED",
                    i, ops[i].req.status, g_strerror(-ops[i].req.status));
    }
    fx->ops->disconnect(p->ca); /* still idempotent: nothing completes twice */
    g_assert_cmpint(wait_failed(fx->ops, p->ca, 5000), <, 0);
    for (int i = 0; i < n; i++)
        g_assert_cmpint(ops[i].completions, ==, 1);
    Op *late = fx_alloc(fx, sizeof(Op));
    op_init(late, RDMIG_IO_WRITE, &dst->key, 0, 99);
    op_iov(late, src->data, 4096);
    g_assert_cmpint(fx->ops->submit(p->ca, &late->req), <, 0);
    g_assert_nonnull(fx->ops->conn_error(p->ca));
}

static void test_reconnect(gpointer data, gconstpointer user)
{
    (void)user;
    Fixture *fx = data;
    Mem *dst = mem_new(fx, fx->tb, 1u << 20, RDMIG_ACCESS_REMOTE_WRITE, 29);
    Mem *src = mem_new(fx, fx->ta, 1u << 20, 0, 30);
    write_ok(fx, fx->main, src, 0, dst, 0, 4096);
    pair_close(fx->main);
    /* Regions outlive connections; the listener takes new ones. */
    for (int i = 1; i <= 3; i++) {
        Pair *p = pair_new(fx);
        write_ok(fx, p, src, (size_t)i * 65536, dst, (uint64_t)i * 65536 + (uint64_t)i, 65536);
        if (i == 2) {
            /* Close from the target side this time. */
            pair_stop_poller(p);
            conn_finish(fx->ops, &p->cb);
            g_assert_cmpint(wait_failed(fx->ops, p->ca, 5000), <, 0);
        }
        pair_close(p);
    }
}

static void test_ops_complete(gconstpointer user)
{
    const RdmigTransportOps *t = user;
    g_assert_cmpuint(t->abi_version, ==, RDMIG_TRANSPORT_ABI_VERSION);
    g_assert_cmpuint(t->size, ==, sizeof(RdmigTransportOps));
    g_assert_nonnull(t->name);
    g_assert_cmpstr(t->name, !=, "");
    g_assert_true(rdmig_transport_lookup(t->name) == t);
    unsigned n = 0;
#define CHECK(m)                                                                       \
    do {                                                                               \
        if (!t->m)                                                                     \
            g_error("transport '%s': member " #m " is NULL in the registered table", t->name); \
        n++;                                                                           \
    } while (0);
    CHECK(probe) CHECK(create) CHECK(destroy) CHECK(listen) CHECK(listener_address)
    CHECK(accept) CHECK(listener_close) CHECK(connect) CHECK(disconnect) CHECK(conn_close)
    CHECK(register_region) CHECK(region_key) CHECK(deregister_region) CHECK(submit) CHECK(poll)
    CHECK(conn_fd) CHECK(conn_error)
#undef CHECK
    /* Every member is listed above: they fill the table after caps. */
    g_assert_cmpuint(offsetof(RdmigTransportOps, probe) + n * sizeof(void (*)(void)), ==,
                     sizeof(RdmigTransportOps));
    g_assert_true(t->caps & RDMIG_TRANSPORT_CAP_ONESIDED_WRITE);
}

static void test_probe_skipped(gconstpointer user)
{
    g_test_skip((const char *)user);
}

/* ------------------------------------------------------------ registration */

typedef void (*CaseFunc)(gpointer, gconstpointer);

static void add_case(const RdmigTransportOps *t, const char *name, CaseFunc func)
{
    g_autofree char *path = g_strdup_printf("/contract/%s/%s", t->name, name);
    g_test_add_vtable(path, sizeof(Fixture), t, fx_setup, func, fx_teardown);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    for (const RdmigTransportOps *const *tp = rdmig_transport_list(); *tp; tp++) {
        const RdmigTransportOps *t = *tp;
        g_autoptr(GError) err = NULL;
        if (!t->probe(&err)) {
            /* The environment lacks the device: say so, as a skip. */
            g_autofree char *path = g_strdup_printf("/contract/%s/probe", t->name);
            char *why = g_strdup_printf("transport '%s' does not probe on this host: %s",
                                        t->name, err ? err->message : "no reason given");
            g_test_add_data_func_full(path, why, test_probe_skipped, g_free);
            continue;
        }
        g_autofree char *path = g_strdup_printf("/contract/%s/ops-complete", t->name);
        g_test_add_data_func(path, t, test_ops_complete);
        add_case(t, "connect", test_connect);
        add_case(t, "auth", test_auth);
        add_case(t, "write", test_write);
        add_case(t, "queue-depth", test_queue_depth);
        add_case(t, "read", test_read);
        add_case(t, "access", test_access);
        add_case(t, "second-registration", test_second_registration);
        add_case(t, "out-of-range", test_out_of_range);
        add_case(t, "forged-key", test_forged_key);
        add_case(t, "key-hides-address", test_key_hides_address);
        add_case(t, "deregistered", test_deregistered);
        add_case(t, "shutdown-mid-transfer", test_shutdown_mid_transfer);
        add_case(t, "shutdown-mid-read", test_shutdown_mid_read);
        add_case(t, "disconnect", test_disconnect);
        add_case(t, "disconnect-mid-read", test_disconnect_mid_read);
        add_case(t, "reconnect", test_reconnect);
    }
    return g_test_run();
}

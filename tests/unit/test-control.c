/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the control channel's framing (transport/control.c): the
 * header codec on its own, then frames over a real AF_UNIX stream socketpair,
 * with a misbehaving peer written by hand where the case needs one (half a
 * header, a stalled payload, a frame out of sequence).
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rdmig/error.h"
#include "test-util.h"
#include "transport/control.h"


static void make_pair(int sv[2])
{
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
}

static void write_all(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len) {
        ssize_t r = write(fd, b, len);
        if (r < 0 && errno == EINTR)
            continue;
        g_assert_cmpint(r, >, 0);
        b += r;
        len -= (size_t)r;
    }
}

static void fill_pattern(uint8_t *p, size_t len, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)(x >> 16);
    }
}

/* ------------------------------------------------------------ header codec */

static void test_header_roundtrip(void)
{
    static const struct {
        uint16_t type;
        uint32_t length, seq;
    } cases[] = { { 0, 0, 0 }, { 1, 1, 1 }, { 0xffff, RDMIG_CONTROL_MAX_PAYLOAD, 0xffffffffu },
                  { 12, 65536, 0x80000000u } };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
        rdmig_frame_header_encode(h, cases[i].type, cases[i].length, cases[i].seq);
        /* The layout the header comment promises: big-endian, "RDMG" first. */
        g_assert_cmpmem(h, 4, "RDMG", 4);
        g_assert_cmpuint(h[4] << 8 | h[5], ==, RDMIG_CONTROL_VERSION);
        g_assert_cmpuint(h[6] << 8 | h[7], ==, cases[i].type);
        g_assert_cmpuint((uint32_t)h[12] << 24 | h[13] << 16 | h[14] << 8 | h[15], ==,
                         cases[i].seq);
        RdmigFrameHeader d;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_frame_header_decode(h, &d, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(d.version, ==, RDMIG_CONTROL_VERSION);
        g_assert_cmpuint(d.type, ==, cases[i].type);
        g_assert_cmpuint(d.length, ==, cases[i].length);
        g_assert_cmpuint(d.seq, ==, cases[i].seq);
    }
}

static void test_header_invalid(void)
{
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    RdmigFrameHeader d;
    g_autoptr(GError) err = NULL;

    for (int byte = 0; byte < 4; byte++) {
        rdmig_frame_header_encode(h, 1, 10, 0);
        h[byte] ^= 0x01;
        g_assert_false(rdmig_frame_header_decode(h, &d, &err));
        assert_error(err, RDMIG_ERROR_PROTOCOL, "magic");
        g_clear_error(&err);
    }

    static const uint16_t versions[] = { 0, RDMIG_CONTROL_VERSION + 1, 0xffff };
    for (size_t i = 0; i < G_N_ELEMENTS(versions); i++) {
        rdmig_frame_header_encode(h, 1, 10, 0);
        h[4] = (uint8_t)(versions[i] >> 8);
        h[5] = (uint8_t)versions[i];
        g_assert_false(rdmig_frame_header_decode(h, &d, &err));
        g_autofree char *v = g_strdup_printf("%u", versions[i]);
        assert_error(err, RDMIG_ERROR_VERSION, v);
        g_clear_error(&err);
    }

    static const uint32_t lengths[] = { RDMIG_CONTROL_MAX_PAYLOAD + 1, 0x80000000u, 0xffffffffu };
    for (size_t i = 0; i < G_N_ELEMENTS(lengths); i++) {
        rdmig_frame_header_encode(h, 3, lengths[i], 0);
        g_assert_false(rdmig_frame_header_decode(h, &d, &err));
        g_autofree char *l = g_strdup_printf("%u", lengths[i]);
        assert_error(err, RDMIG_ERROR_PROTOCOL, l);
        g_clear_error(&err);
    }
}

/* ------------------------------------------------------------ frames over a socket */

typedef struct {
    RdmigControl *c;
    const size_t *sizes;
    size_t n;
    bool ok;
    char *error;
} SendJob;

static gpointer send_job(gpointer data)
{
    SendJob *j = data;
    j->ok = true;
    for (size_t i = 0; i < j->n && j->ok; i++) {
        g_autofree uint8_t *p = g_malloc(j->sizes[i] ? j->sizes[i] : 1);
        fill_pattern(p, j->sizes[i], (uint32_t)i);
        GError *err = NULL;
        if (!rdmig_control_send(j->c, (uint16_t)(100 + i), p, j->sizes[i], &err)) {
            j->ok = false;
            j->error = g_strdup(err->message);
            g_error_free(err);
        }
    }
    return NULL;
}

static void test_frames_sizes(void)
{
    int sv[2];
    make_pair(sv);
    RdmigControl *a = rdmig_control_new(sv[0], 10000);
    RdmigControl *b = rdmig_control_new(sv[1], 10000);
    g_assert_cmpint(rdmig_control_fd(a), ==, sv[0]);

    static const size_t sizes[] = { 0, 1, 64 * 1024, 4u << 20, 0, 17, RDMIG_CONTROL_MAX_PAYLOAD };
    SendJob job = { .c = a, .sizes = sizes, .n = G_N_ELEMENTS(sizes) };
    /* A 4 MiB frame does not fit the socket buffers: send while we receive. */
    GThread *t = g_thread_new("sender", send_job, &job);
    uint64_t expect_bytes = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
        RdmigFrame f;
        g_autoptr(GError) err = NULL;
        int r = rdmig_control_recv(b, &f, 10000, &err);
        g_assert_no_error(err);
        g_assert_cmpint(r, ==, 1);
        g_assert_cmpuint(f.hdr.version, ==, RDMIG_CONTROL_VERSION);
        g_assert_cmpuint(f.hdr.type, ==, 100 + i);
        g_assert_cmpuint(f.hdr.seq, ==, i);
        g_assert_cmpuint(f.hdr.length, ==, sizes[i]);
        g_autofree uint8_t *want = g_malloc(sizes[i] ? sizes[i] : 1);
        fill_pattern(want, sizes[i], (uint32_t)i);
        if (sizes[i])
            g_assert_true(memcmp(f.payload, want, sizes[i]) == 0);
        expect_bytes += RDMIG_CONTROL_HEADER_SIZE + sizes[i];
    }
    g_thread_join(t);
    if (!job.ok)
        g_error("send failed: %s", job.error);
    g_assert_cmpuint(rdmig_control_bytes(a), ==, expect_bytes);
    g_assert_cmpuint(rdmig_control_bytes(b), ==, expect_bytes);

    /* Frames flow the other way too, with their own sequence starting at 0. */
    g_assert_true(rdmig_control_send(b, 7, "pong", 4, NULL));
    RdmigFrame f;
    g_assert_cmpint(rdmig_control_recv(a, &f, 5000, NULL), ==, 1);
    g_assert_cmpuint(f.hdr.seq, ==, 0);
    g_assert_cmpuint(f.hdr.type, ==, 7);
    g_assert_cmpmem(f.payload, f.hdr.length, "pong", 4);

    /* Too large to send at all: refused before anything is written. */
    g_autoptr(GError) err = NULL;
    g_assert_false(rdmig_control_send(a, 1, NULL, (size_t)RDMIG_CONTROL_MAX_PAYLOAD + 1, &err));
    assert_error(err, RDMIG_ERROR_INVALID, NULL);
    g_assert_cmpint(rdmig_control_recv(b, &f, 50, NULL), ==, 0);

    rdmig_control_free(a);
    rdmig_control_free(b);
}

/* ------------------------------------------------------------ calls on a thread */

/*
 * A recv or send run on a thread of its own, so that the test can wait for
 * it with a watchdog: a call that does not return fails the case after a
 * bound far above what it should take, instead of hanging the suite.  These
 * bounds catch hangs, never slowness; how long the calls take is measured by
 * tests/bench/bench-timing.c.
 */
typedef struct {
    RdmigControl *c;
    int timeout_ms;    /* recv: the timeout passed (-1: forever) */
    GMutex lock;
    GCond cond;
    bool done;
    int r;
    bool send_ok;
    GError *err;
    gint64 elapsed_ms; /* how long the call took, for lower bounds */
} Blocked;

static void blocked_finish(Blocked *b, int r, bool send_ok, GError *err, gint64 t0)
{
    g_mutex_lock(&b->lock);
    b->elapsed_ms = (g_get_monotonic_time() - t0) / 1000;
    b->r = r;
    b->send_ok = send_ok;
    b->err = err;
    b->done = true;
    g_cond_signal(&b->cond);
    g_mutex_unlock(&b->lock);
}

static gpointer blocked_recv(gpointer data)
{
    Blocked *b = data;
    RdmigFrame f;
    GError *err = NULL;
    gint64 t0 = g_get_monotonic_time();
    int r = rdmig_control_recv(b->c, &f, b->timeout_ms, &err);
    blocked_finish(b, r, false, err, t0);
    return NULL;
}

/* Sends a frame larger than the socket buffers of the pair. */
static gpointer blocked_send(gpointer data)
{
    Blocked *b = data;
    size_t len = 8u << 20;
    g_autofree uint8_t *p = g_malloc0(len);
    GError *err = NULL;
    gint64 t0 = g_get_monotonic_time();
    bool ok = rdmig_control_send(b->c, 1, p, len, &err);
    blocked_finish(b, ok ? 1 : -1, ok, err, t0);
    return NULL;
}

/* Waits for the blocked thread to return; fails the test after @ms instead of hanging. */
static void wait_done(Blocked *b, int ms, const char *what)
{
    gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
    g_mutex_lock(&b->lock);
    while (!b->done)
        if (!g_cond_wait_until(&b->cond, &b->lock, end))
            break;
    bool done = b->done;
    g_mutex_unlock(&b->lock);
    if (!done)
        g_error("%s: did not return within %d ms", what, ms);
}

/* Runs @fn on @b to its end, under a watchdog of @hang_ms. */
static void run_watched(Blocked *b, GThreadFunc fn, int hang_ms, const char *what)
{
    g_mutex_init(&b->lock);
    g_cond_init(&b->cond);
    GThread *t = g_thread_new("watched", fn, b);
    wait_done(b, hang_ms, what);
    g_thread_join(t);
    g_mutex_clear(&b->lock);
    g_cond_clear(&b->cond);
}

static void test_recv_timeout(void)
{
    int sv[2];
    make_pair(sv);
    RdmigControl *b = rdmig_control_new(sv[1], 1000);
    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    /* No frame: 0, and not before the 100 ms are up (the lower bound is
     * behaviour: the timeout did not fire early).  One that never returns is
     * caught at 30 times the timeout. */
    Blocked w = { .c = b, .timeout_ms = 100 };
    run_watched(&w, blocked_recv, 3000, "recv with a 100 ms timeout and no frame");
    g_assert_no_error(w.err);
    g_assert_cmpint(w.r, ==, 0);
    g_assert_cmpint(w.elapsed_ms, >=, 95);

    /* Timeout 0: one look, no wait.  With nothing there: 0, where a recv
     * that waited for a frame would never return (none is sent until it has). */
    w = (Blocked){ .c = b, .timeout_ms = 0 };
    run_watched(&w, blocked_recv, 1500, "recv with timeout 0 and no frame");
    g_assert_no_error(w.err);
    g_assert_cmpint(w.r, ==, 0);

    /* A frame that arrives after a timeout is still received whole, as seq 0. */
    RdmigControl *a = rdmig_control_new(sv[0], 1000);
    g_assert_true(rdmig_control_send(a, 5, "abc", 3, NULL));
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, 1);
    g_assert_cmpuint(f.hdr.seq, ==, 0);
    g_assert_cmpmem(f.payload, f.hdr.length, "abc", 3);

    /* The one look of timeout 0 takes a frame that is already there. */
    g_assert_true(rdmig_control_send(a, 6, "defg", 4, NULL));
    g_assert_cmpint(rdmig_control_recv(b, &f, 0, &err), ==, 1);
    g_assert_no_error(err);
    g_assert_cmpuint(f.hdr.seq, ==, 1);
    g_assert_cmpmem(f.payload, f.hdr.length, "defg", 4);
    rdmig_control_free(a);
    rdmig_control_free(b);
}

static void test_peer_closed_between_frames(void)
{
    int sv[2];
    make_pair(sv);
    RdmigControl *a = rdmig_control_new(sv[0], 1000);
    RdmigControl *b = rdmig_control_new(sv[1], 1000);
    g_assert_true(rdmig_control_send(a, 2, "x", 1, NULL));
    rdmig_control_free(a);

    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, 1);
    g_assert_no_error(err);
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_LINK, "closed");
    /* A clean close is not reported as a truncation. */
    g_assert_null(strstr(err->message, "middle"));
    rdmig_control_free(b);
}

static void test_peer_closed_mid_header(void)
{
    int sv[2];
    make_pair(sv);
    /* Stall bound and recv timeout of 30 s: a recv that did not notice the
     * close at once, but waited for the rest of the header, would end with
     * "stalled" (after 30 s), not with the close. */
    RdmigControl *b = rdmig_control_new(sv[1], 30000);
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(h, 2, 100, 0);
    write_all(sv[0], h, 8);
    close(sv[0]);

    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 30000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_LINK, "middle of a frame");
    g_assert_null(strstr(err->message, "stalled"));
    g_assert_nonnull(strstr(err->message, "8 of 16"));
    rdmig_control_free(b);
}

static void test_peer_closed_mid_payload(void)
{
    int sv[2];
    make_pair(sv);
    RdmigControl *b = rdmig_control_new(sv[1], 2000);
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(h, 2, 100, 0);
    write_all(sv[0], h, sizeof(h));
    write_all(sv[0], "0123456789", 10);
    close(sv[0]);

    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_LINK, "middle of a frame");
    g_assert_nonnull(strstr(err->message, "10 of 100"));
    rdmig_control_free(b);
}

static void test_peer_stalls_mid_frame(void)
{
    int sv[2];
    make_pair(sv);
    const int stall_ms = 200;
    RdmigControl *b = rdmig_control_new(sv[1], stall_ms);
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(h, 3, 1000, 0);
    write_all(sv[0], h, sizeof(h));
    write_all(sv[0], "0123456789", 10);

    /* The wait for a frame to begin is long (30 s); the stall bound must
     * still apply: a recv still waiting at 30 times the stall bound is
     * caught by the watchdog. */
    Blocked w = { .c = b, .timeout_ms = 30000 };
    run_watched(&w, blocked_recv, 30 * stall_ms, "recv stalled mid-payload");
    g_assert_cmpint(w.r, ==, -1);
    assert_error(w.err, RDMIG_ERROR_PEER, "stalled");
    g_assert_nonnull(strstr(w.err->message, "10 of 1000"));
    /* Not before the bound: the stall timeout did not fire early. */
    g_assert_cmpint(w.elapsed_ms, >=, stall_ms - 5);
    g_clear_error(&w.err);
    close(sv[0]);
    rdmig_control_free(b);
}

static void test_peer_stalls_mid_header(void)
{
    int sv[2];
    make_pair(sv);
    const int stall_ms = 200;
    RdmigControl *b = rdmig_control_new(sv[1], stall_ms);
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(h, 3, 0, 0);
    write_all(sv[0], h, 5);

    Blocked w = { .c = b, .timeout_ms = 30000 };
    run_watched(&w, blocked_recv, 30 * stall_ms, "recv stalled mid-header");
    g_assert_cmpint(w.r, ==, -1);
    assert_error(w.err, RDMIG_ERROR_PEER, "stalled");
    g_assert_cmpint(w.elapsed_ms, >=, stall_ms - 5);
    g_clear_error(&w.err);
    close(sv[0]);
    rdmig_control_free(b);
}

static void test_send_stalls(void)
{
    int sv[2];
    make_pair(sv);
    const int stall_ms = 200;
    RdmigControl *a = rdmig_control_new(sv[0], stall_ms);
    /* The peer never reads: a frame larger than the socket buffers cannot
     * go.  A send that ignored the stall bound would never return. */
    Blocked w = { .c = a };
    run_watched(&w, blocked_send, 30 * stall_ms, "send to a peer that does not read");
    g_assert_false(w.send_ok);
    assert_error(w.err, RDMIG_ERROR_PEER, "stalled");
    g_assert_cmpint(w.elapsed_ms, >=, stall_ms - 5);
    g_clear_error(&w.err);
    close(sv[1]);
    rdmig_control_free(a);
}

static void test_out_of_sequence(void)
{
    /* The first frame must be seq 0. */
    int sv[2];
    make_pair(sv);
    RdmigControl *b = rdmig_control_new(sv[1], 1000);
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(h, 4, 0, 1);
    write_all(sv[0], h, sizeof(h));
    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_PROTOCOL, "sequence");
    g_clear_error(&err);
    close(sv[0]);
    rdmig_control_free(b);

    /* 0, 1, then 1 again (a replay). */
    make_pair(sv);
    b = rdmig_control_new(sv[1], 1000);
    for (uint32_t seq = 0; seq < 2; seq++) {
        rdmig_frame_header_encode(h, 4, 2, seq);
        write_all(sv[0], h, sizeof(h));
        write_all(sv[0], "ok", 2);
    }
    rdmig_frame_header_encode(h, 4, 0, 1);
    write_all(sv[0], h, sizeof(h));
    for (uint32_t seq = 0; seq < 2; seq++) {
        g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, 1);
        g_assert_no_error(err);
        g_assert_cmpuint(f.hdr.seq, ==, seq);
        g_assert_cmpmem(f.payload, f.hdr.length, "ok", 2);
    }
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_PROTOCOL, "got 1, expected 2");
    close(sv[0]);
    rdmig_control_free(b);
}

static void test_bad_header_on_wire(void)
{
    int sv[2];
    make_pair(sv);
    RdmigControl *b = rdmig_control_new(sv[1], 1000);
    uint8_t h[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(h, 4, RDMIG_CONTROL_MAX_PAYLOAD + 1, 0);
    write_all(sv[0], h, sizeof(h));
    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_PROTOCOL, "limit");
    close(sv[0]);
    rdmig_control_free(b);

    /* Not rdmig at all: an HTTP request. */
    make_pair(sv);
    b = rdmig_control_new(sv[1], 1000);
    write_all(sv[0], "GET / HTTP/1.1\r\n\r\n", 18);
    g_clear_error(&err);
    g_assert_cmpint(rdmig_control_recv(b, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_PROTOCOL, "magic");
    close(sv[0]);
    rdmig_control_free(b);
}

/* ------------------------------------------------------------ concurrency */

#define CONC_FRAMES 200

typedef struct {
    RdmigControl *c;
    uint32_t id;
    bool ok;
} ConcSender;

/* Up to 400 KiB: larger than the socket buffer, so sends are often partial and
 * only the channel's lock keeps two frames from interleaving. */
static size_t conc_len(uint32_t id, uint32_t i)
{
    return (size_t)((i * 7919u + id * 104729u) % 400000u) + 8;
}

static gpointer conc_send(gpointer data)
{
    ConcSender *s = data;
    s->ok = true;
    for (uint32_t i = 0; i < CONC_FRAMES && s->ok; i++) {
        size_t len = conc_len(s->id, i);
        g_autofree uint8_t *p = g_malloc(len);
        fill_pattern(p, len, s->id << 16 | i);
        p[0] = (uint8_t)s->id;
        p[1] = (uint8_t)(i >> 8);
        p[2] = (uint8_t)i;
        s->ok = rdmig_control_send(s->c, (uint16_t)(s->id + 1), p, len, NULL);
    }
    return NULL;
}

static void test_concurrent_senders(void)
{
    int sv[2];
    make_pair(sv);
    RdmigControl *a = rdmig_control_new(sv[0], 10000);
    RdmigControl *b = rdmig_control_new(sv[1], 10000);
    ConcSender s[2] = { { a, 0, false }, { a, 1, false } };
    GThread *t[2] = { g_thread_new("s0", conc_send, &s[0]), g_thread_new("s1", conc_send, &s[1]) };
    uint32_t next[2] = { 0, 0 };
    for (uint32_t n = 0; n < 2 * CONC_FRAMES; n++) {
        RdmigFrame f;
        g_autoptr(GError) err = NULL;
        int r = rdmig_control_recv(b, &f, 10000, &err);
        g_assert_no_error(err);
        g_assert_cmpint(r, ==, 1);
        g_assert_cmpuint(f.hdr.seq, ==, n);
        g_assert_cmpuint(f.hdr.type, >=, 1);
        g_assert_cmpuint(f.hdr.type, <=, 2);
        uint32_t id = f.hdr.type - 1;
        g_assert_cmpuint(f.hdr.length, >=, 3);
        g_assert_cmpuint(f.payload[0], ==, id);
        uint32_t i = (uint32_t)f.payload[1] << 8 | f.payload[2];
        /* Each sender's frames arrive in its order, whole. */
        g_assert_cmpuint(i, ==, next[id]);
        next[id]++;
        size_t len = conc_len(id, i);
        g_assert_cmpuint(f.hdr.length, ==, len);
        g_autofree uint8_t *want = g_malloc(len);
        fill_pattern(want, len, id << 16 | i);
        g_assert_true(memcmp(f.payload + 3, want + 3, len - 3) == 0);
    }
    g_thread_join(t[0]);
    g_thread_join(t[1]);
    g_assert_true(s[0].ok);
    g_assert_true(s[1].ok);
    g_assert_cmpuint(next[0], ==, CONC_FRAMES);
    g_assert_cmpuint(next[1], ==, CONC_FRAMES);
    rdmig_control_free(a);
    rdmig_control_free(b);
}

/* ------------------------------------------------------------ shutdown */

static void test_shutdown_wakes_recv(void)
{
    int sv[2];
    make_pair(sv);
    Blocked b = { .c = rdmig_control_new(sv[1], 30000), .timeout_ms = -1 };
    g_mutex_init(&b.lock);
    g_cond_init(&b.cond);
    GThread *t = g_thread_new("blocked-recv", blocked_recv, &b);
    g_usleep(100 * 1000);
    g_mutex_lock(&b.lock);
    g_assert_false(b.done); /* really blocked */
    g_mutex_unlock(&b.lock);
    /* Waiting forever, it returns only if the shutdown wakes it. */
    rdmig_control_shutdown(b.c);
    wait_done(&b, 3000, "recv blocked when rdmig_control_shutdown was called");
    g_thread_join(t);
    g_assert_cmpint(b.r, ==, -1);
    g_assert_nonnull(b.err);
    g_assert_true(b.err->domain == RDMIG_ERROR);
    g_clear_error(&b.err);

    /* Further calls fail at once. */
    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b.c, &f, 1000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_CANCELLED, "shut down");
    g_clear_error(&err);
    g_assert_false(rdmig_control_send(b.c, 1, "x", 1, &err));
    g_assert_nonnull(err);

    close(sv[0]);
    rdmig_control_free(b.c);
    g_mutex_clear(&b.lock);
    g_cond_clear(&b.cond);
}

static void test_shutdown_wakes_send(void)
{
    int sv[2];
    make_pair(sv);
    Blocked b = { .c = rdmig_control_new(sv[0], 30000) };
    g_mutex_init(&b.lock);
    g_cond_init(&b.cond);
    GThread *t = g_thread_new("blocked-send", blocked_send, &b);
    g_usleep(100 * 1000);
    g_mutex_lock(&b.lock);
    g_assert_false(b.done);
    g_mutex_unlock(&b.lock);
    rdmig_control_shutdown(b.c);
    wait_done(&b, 3000, "send blocked when rdmig_control_shutdown was called");
    g_thread_join(t);
    g_assert_false(b.send_ok);
    g_assert_nonnull(b.err);
    g_assert_true(b.err->domain == RDMIG_ERROR);
    g_clear_error(&b.err);
    close(sv[1]);
    rdmig_control_free(b.c);
    g_mutex_clear(&b.lock);
    g_cond_clear(&b.cond);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/control/header/roundtrip", test_header_roundtrip);
    g_test_add_func("/control/header/invalid", test_header_invalid);
    g_test_add_func("/control/frames/sizes", test_frames_sizes);
    g_test_add_func("/control/recv/timeout", test_recv_timeout);
    g_test_add_func("/control/recv/closed-between-frames", test_peer_closed_between_frames);
    g_test_add_func("/control/recv/closed-mid-header", test_peer_closed_mid_header);
    g_test_add_func("/control/recv/closed-mid-payload", test_peer_closed_mid_payload);
    g_test_add_func("/control/recv/stalled-mid-payload", test_peer_stalls_mid_frame);
    g_test_add_func("/control/recv/stalled-mid-header", test_peer_stalls_mid_header);
    g_test_add_func("/control/recv/out-of-sequence", test_out_of_sequence);
    g_test_add_func("/control/recv/bad-header", test_bad_header_on_wire);
    g_test_add_func("/control/send/stalled", test_send_stalls);
    g_test_add_func("/control/send/concurrent", test_concurrent_senders);
    g_test_add_func("/control/shutdown/wakes-recv", test_shutdown_wakes_recv);
    g_test_add_func("/control/shutdown/wakes-send", test_shutdown_wakes_send);
    return g_test_run();
}

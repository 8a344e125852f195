/* SPDX-License-Identifier: MIT */
/* The destination's door: connections wait here for their HELLO (hello-gate.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "hello-gate.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/address.h"
#include "rdmig/error.h"
#include "util/be.h"
#include "util/clock.h"

G_STATIC_ASSERT(RDMIG_GATE_MAX_HELLO >=
                64 + RDMIG_MAX_TRANSPORTS * 16 + RDMIG_MAX_BLOCKS * (1 + RDMIG_MAX_NAME + 12));

typedef struct {
    int fd;              /* -1: free */
    RdmigTls *tls;       /* with credentials: the session, handshake first */
    bool secured;        /* the TLS handshake is done */
    short events;        /* what the handshake waits for */
    gint64 deadline_us;
    uint8_t hdr[RDMIG_CONTROL_HEADER_SIZE];
    RdmigFrameHeader h;  /* decoded once the header is in */
    uint8_t *payload;    /* h.length bytes, once the header is in */
    size_t have;         /* bytes of header + payload so far */
} Slot;

struct RdmigHelloGate {
    int listen_fd;
    RdmigTlsCreds *creds; /* NULL: in clear */
    int deadline_ms;
    char *what;
    Slot slots[RDMIG_GATE_SLOTS];
};

RdmigHelloGate *rdmig_hello_gate_new(int listen_fd, RdmigTlsCreds *creds, int deadline_ms,
                                     const char *what)
{
    RdmigHelloGate *g = g_new0(RdmigHelloGate, 1);
    g->listen_fd = listen_fd;
    g->creds = creds ? rdmig_tls_creds_ref(creds) : NULL;
    g->deadline_ms = deadline_ms;
    g->what = g_strdup(what);
    for (int i = 0; i < RDMIG_GATE_SLOTS; i++)
        g->slots[i].fd = -1;
    return g;
}

static void slot_clear(Slot *sl)
{
    rdmig_tls_free(sl->tls);
    if (sl->fd >= 0)
        close(sl->fd);
    g_free(sl->payload);
    memset(sl, 0, sizeof(*sl));
    sl->fd = -1;
}

void rdmig_hello_gate_free(RdmigHelloGate *g)
{
    if (!g)
        return;
    for (int i = 0; i < RDMIG_GATE_SLOTS; i++)
        slot_clear(&g->slots[i]);
    rdmig_tls_creds_unref(g->creds);
    g_free(g->what);
    g_free(g);
}

unsigned rdmig_hello_gate_pollfds(RdmigHelloGate *g, struct pollfd *p, int *timeout_ms)
{
    unsigned n = 0;
    p[n++] = (struct pollfd){ .fd = g->listen_fd, .events = POLLIN };
    gint64 now = rdmig_now_us();
    for (int i = 0; i < RDMIG_GATE_SLOTS; i++) {
        Slot *sl = &g->slots[i];
        if (sl->fd < 0)
            continue;
        short ev = sl->tls && !sl->secured ? sl->events : POLLIN;
        p[n++] = (struct pollfd){ .fd = sl->fd, .events = ev };
        gint64 left_us = MAX(sl->deadline_us - now, 0);
        int left_ms = (int)((left_us + 999) / 1000);
        if (*timeout_ms < 0 || left_ms < *timeout_ms)
            *timeout_ms = left_ms;
    }
    return n;
}

/* Drops @sl with a warning saying why. */
static void drop(RdmigHelloGate *g, Slot *sl, const char *why)
{
    g_warning("dropped a connection on the %s that is not an rdmig source: %s", g->what, why);
    slot_clear(sl);
}

/* A peer that speaks rdmig but cannot come in (another version, no
 * credentials) is told why, as one of ours would be, and refused; nobody
 * waits for it to read the answer. */
static void refuse(RdmigHelloGate *g, Slot *sl, const GError *err)
{
    g_autoptr(GByteArray) b = rdmig_error_encode((uint32_t)err->code, err->message);
    uint8_t hdr[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(hdr, RDMIG_MSG_ERROR, b->len, 0);
    g_byte_array_prepend(b, hdr, sizeof(hdr));
    /* Gone, or not reading: it is dropped either way. */
    if (sl->tls) {
        if (rdmig_tls_send(sl->tls, b->data, b->len) < 0)
            g_debug("the refused source did not take its answer");
    } else if (send(sl->fd, b->data, b->len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        g_debug("the refused source did not take its answer");
    }
    g_warning("refused a source on the %s: %s", g->what, err->message);
    slot_clear(sl);
}

/* The header is in: a HELLO of a sane size, the first frame, or the slot goes. */
static bool header_ok(RdmigHelloGate *g, Slot *sl)
{
    g_autoptr(GError) err = NULL;
    if (sl->hdr[0] == 0x16 && sl->hdr[1] == 0x03) {
        drop(g, sl, "a TLS client, and this destination has no credentials (--tls-creds or "
                    "--psk-file)");
        return false;
    }
    if (!rdmig_frame_header_decode(sl->hdr, &sl->h, &err)) {
        if (err->code == RDMIG_ERROR_VERSION)
            refuse(g, sl, err);
        else
            drop(g, sl, err->message);
        return false;
    }
    const char *why = sl->h.type != RDMIG_MSG_HELLO ? "first message was not HELLO"
                      : sl->h.seq != 0              ? "first frame out of sequence"
                      : sl->h.length > RDMIG_GATE_MAX_HELLO ? "HELLO too large"
                                                            : NULL;
    if (why) {
        drop(g, sl, why);
        return false;
    }
    sl->payload = g_malloc(MAX(sl->h.length, 1u));
    return true;
}

/* An rdmig source without credentials is told so, in clear: it would
 * otherwise see only a closed connection. */
static bool plain_source(RdmigHelloGate *g, Slot *sl)
{
    uint8_t magic[4];
    if (recv(sl->fd, magic, sizeof(magic), MSG_PEEK | MSG_DONTWAIT) != sizeof(magic) ||
        rdmig_get_be32(magic) != RDMIG_CONTROL_MAGIC)
        return false;
    g_autoptr(GError) err = g_error_new_literal(
        RDMIG_ERROR, RDMIG_ERROR_AUTH,
        "this destination takes only authenticated sources: give the source the same kind of "
        "credentials (--tls-creds or --psk-file)");
    rdmig_tls_free(sl->tls);
    sl->tls = NULL;
    refuse(g, sl, err);
    return true;
}

/* The TLS handshake, as far as it goes now; true once it is done. */
static bool slot_secure(RdmigHelloGate *g, Slot *sl)
{
    if (plain_source(g, sl))
        return false;
    g_autoptr(GError) err = NULL;
    int r = rdmig_tls_handshake_step(sl->tls, &sl->events, &err);
    if (r < 0)
        drop(g, sl, err->message);
    sl->secured = r > 0;
    return r > 0;
}

static ssize_t slot_recv(Slot *sl, void *p, size_t len)
{
    if (sl->tls)
        return rdmig_tls_recv(sl->tls, p, len);
    ssize_t r = recv(sl->fd, p, len, MSG_DONTWAIT);
    return r >= 0 ? r : -errno;
}

/* Reads what @sl's peer sent; true once the whole HELLO frame is in. */
static bool slot_read(RdmigHelloGate *g, Slot *sl)
{
    if (sl->tls && !sl->secured && !slot_secure(g, sl))
        return false;
    for (;;) {
        size_t total = RDMIG_CONTROL_HEADER_SIZE + (sl->payload ? sl->h.length : 0);
        if (sl->payload && sl->have == total)
            return true;
        uint8_t *dst = sl->have < RDMIG_CONTROL_HEADER_SIZE
                           ? sl->hdr + sl->have
                           : sl->payload + (sl->have - RDMIG_CONTROL_HEADER_SIZE);
        size_t want = sl->have < RDMIG_CONTROL_HEADER_SIZE ? RDMIG_CONTROL_HEADER_SIZE - sl->have
                                                           : total - sl->have;
        ssize_t r = slot_recv(sl, dst, want);
        if (r == 0) {
            drop(g, sl, "closed before a whole HELLO");
            return false;
        }
        if (r < 0) {
            if (r != -EAGAIN && r != -EINTR)
                drop(g, sl, sl->tls && r == -EPROTO ? rdmig_tls_last_error(sl->tls)
                                                    : g_strerror((int)-r));
            return false;
        }
        sl->have += (size_t)r;
        if (sl->have == RDMIG_CONTROL_HEADER_SIZE && !sl->payload && !header_ok(g, sl))
            return false;
    }
}

/* A new connection into a free slot; with none free, the oldest goes. */
static void take_new(RdmigHelloGate *g)
{
    GError *err = NULL;
    int fd = rdmig_socket_accept_now(g->listen_fd, &err);
    if (fd < 0) {
        if (err)
            g_warning("%s: %s", g->what, err->message);
        g_clear_error(&err);
        return;
    }
    Slot *free_slot = NULL, *oldest = &g->slots[0];
    for (int i = 0; i < RDMIG_GATE_SLOTS; i++) {
        Slot *sl = &g->slots[i];
        if (sl->fd < 0 && !free_slot)
            free_slot = sl;
        if (sl->fd >= 0 && sl->deadline_us < oldest->deadline_us)
            oldest = sl;
    }
    if (!free_slot) {
        drop(g, oldest, "too many connections without a HELLO: the oldest made way");
        free_slot = oldest;
    }
    free_slot->fd = fd;
    free_slot->deadline_us = rdmig_now_us() + (gint64)g->deadline_ms * 1000;
    if (g->creds) {
        free_slot->tls = rdmig_tls_new(g->creds, fd, NULL, &err);
        if (!free_slot->tls) {
            drop(g, free_slot, err->message);
            g_clear_error(&err);
            return;
        }
        /* The client speaks first: wait for its hello. */
        free_slot->events = POLLIN;
    }
}

/* The whole frame is in @sl: a valid HELLO hands the connection over. */
static int hand_over(RdmigHelloGate *g, Slot *sl, RdmigHello *hello, uint64_t *bytes_read,
                     RdmigTls **tls)
{
    g_autoptr(GError) err = NULL;
    if (!rdmig_hello_decode(sl->payload, sl->h.length, hello, &err)) {
        rdmig_hello_clear(hello);
        if (err->code == RDMIG_ERROR_VERSION)
            refuse(g, sl, err);
        else
            drop(g, sl, err->message);
        return -1;
    }
    int fd = sl->fd;
    *bytes_read = RDMIG_CONTROL_HEADER_SIZE + sl->h.length;
    *tls = sl->tls;
    sl->tls = NULL;
    sl->fd = -1;
    slot_clear(sl);
    return fd;
}

int rdmig_hello_gate_step(RdmigHelloGate *g, const struct pollfd *p, unsigned n,
                          RdmigHello *hello, uint64_t *bytes_read, RdmigTls **tls)
{
    for (unsigned k = 1; k < n; k++) {
        if (!p[k].revents)
            continue;
        for (int i = 0; i < RDMIG_GATE_SLOTS; i++) {
            Slot *sl = &g->slots[i];
            if (sl->fd == p[k].fd && slot_read(g, sl))
                return hand_over(g, sl, hello, bytes_read, tls);
        }
    }
    gint64 now = rdmig_now_us();
    for (int i = 0; i < RDMIG_GATE_SLOTS; i++) {
        Slot *sl = &g->slots[i];
        if (sl->fd >= 0 && now >= sl->deadline_us)
            drop(g, sl, sl->have ? "HELLO not complete within the deadline"
                                 : "no HELLO within the deadline");
    }
    if (n && p[0].revents)
        take_new(g);
    return -1;
}

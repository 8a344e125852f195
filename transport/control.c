/* SPDX-License-Identifier: MIT */
#define G_LOG_DOMAIN "rdmig-transport"

#include "control.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/be.h"
#include "rdmig/error.h"

struct RdmigControl {
    int fd;
    int stall_timeout_ms;
    GMutex send_lock;  /* senders: migration thread, keepalive, error reporting */
    uint32_t send_seq;
    uint32_t recv_seq;
    uint8_t *buf;      /* payload of the last frame received */
    size_t buf_cap;
    gint shut;
    guint64 bytes;     /* atomic */
};


void rdmig_frame_header_encode(uint8_t out[RDMIG_CONTROL_HEADER_SIZE], uint16_t type,
                               uint32_t length, uint32_t seq)
{
    rdmig_put_be32(out, RDMIG_CONTROL_MAGIC);
    rdmig_put_be16(out + 4, RDMIG_CONTROL_VERSION);
    rdmig_put_be16(out + 6, type);
    rdmig_put_be32(out + 8, length);
    rdmig_put_be32(out + 12, seq);
}

bool rdmig_frame_header_decode(const uint8_t in[RDMIG_CONTROL_HEADER_SIZE],
                               RdmigFrameHeader *hdr, GError **error)
{
    uint32_t magic = rdmig_get_be32(in);
    if (magic != RDMIG_CONTROL_MAGIC) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "bad frame magic 0x%08x (expected 0x%08x \"RDMG\"): the peer is not rdmig "
                    "or the stream is corrupt", magic, RDMIG_CONTROL_MAGIC);
        return false;
    }
    hdr->version = rdmig_get_be16(in + 4);
    hdr->type = rdmig_get_be16(in + 6);
    hdr->length = rdmig_get_be32(in + 8);
    hdr->seq = rdmig_get_be32(in + 12);
    if (hdr->version != RDMIG_CONTROL_VERSION) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "unsupported frame version %u (this build speaks %u)", hdr->version,
                    RDMIG_CONTROL_VERSION);
        return false;
    }
    if (hdr->length > RDMIG_CONTROL_MAX_PAYLOAD) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "frame of %u bytes (type %u) exceeds the %u-byte limit", hdr->length,
                    hdr->type, RDMIG_CONTROL_MAX_PAYLOAD);
        return false;
    }
    return true;
}

RdmigControl *rdmig_control_new(int fd, int stall_timeout_ms)
{
    RdmigControl *c = g_new0(RdmigControl, 1);
    c->fd = fd;
    c->stall_timeout_ms = stall_timeout_ms > 0 ? stall_timeout_ms : 10000;
    g_mutex_init(&c->send_lock);
    return c;
}

RdmigControl *rdmig_control_new_with_received(int fd, int stall_timeout_ms, uint32_t frames,
                                              uint64_t bytes)
{
    RdmigControl *c = rdmig_control_new(fd, stall_timeout_ms);
    c->recv_seq = frames;
    c->bytes = bytes;
    return c;
}

void rdmig_control_free(RdmigControl *c)
{
    if (!c)
        return;
    close(c->fd);
    g_mutex_clear(&c->send_lock);
    g_free(c->buf);
    g_free(c);
}

void rdmig_control_shutdown(RdmigControl *c)
{
    g_atomic_int_set(&c->shut, 1);
    shutdown(c->fd, SHUT_RDWR);
}

int rdmig_control_fd(RdmigControl *c) { return c->fd; }

uint64_t rdmig_control_bytes(RdmigControl *c) { return g_atomic_pointer_get(&c->bytes); }

static int wait_io(int fd, short ev, gint64 deadline)
{
    for (;;) {
        int left = -1;
        if (deadline >= 0) {
            /* A deadline already past still gets one non-blocking look. */
            gint64 now = g_get_monotonic_time();
            left = now >= deadline ? 0 : (int)((deadline - now + 999) / 1000);
        }
        struct pollfd p = { .fd = fd, .events = ev };
        int n = poll(&p, 1, left);
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -1 : n;
    }
}

bool rdmig_control_send(RdmigControl *c, uint16_t type, const void *payload, size_t len,
                        GError **error)
{
    if (len > RDMIG_CONTROL_MAX_PAYLOAD) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "control message of %zu bytes exceeds the frame limit", len);
        return false;
    }
    g_mutex_lock(&c->send_lock);
    uint8_t hdr[RDMIG_CONTROL_HEADER_SIZE];
    rdmig_frame_header_encode(hdr, type, (uint32_t)len, c->send_seq++);
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)payload, len } };
    size_t total = sizeof(hdr) + len, done = 0;
    gint64 deadline = g_get_monotonic_time() + (gint64)c->stall_timeout_ms * 1000;
    bool ok = true;
    while (done < total) {
        struct iovec v[2];
        int n = 0;
        size_t skip = done;
        for (int i = 0; i < 2; i++) {
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            v[n].iov_base = (uint8_t *)iov[i].iov_base + skip;
            v[n].iov_len = iov[i].iov_len - skip;
            skip = 0;
            n++;
        }
        struct msghdr m = { .msg_iov = v, .msg_iovlen = n };
        ssize_t r = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r > 0) {
            done += r;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            int w = wait_io(c->fd, POLLOUT, deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                            "peer stopped reading the control channel: send stalled for %d ms",
                            c->stall_timeout_ms);
                ok = false;
                break;
            }
        }
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "control channel send failed: %s",
                    g_atomic_int_get(&c->shut) ? "channel shut down" : g_strerror(errno));
        ok = false;
        break;
    }
    g_mutex_unlock(&c->send_lock);
    g_atomic_pointer_add(&c->bytes, done);
    return ok;
}

/* Reads exactly @len bytes; 1 ok, -1 error (set). */
static int read_full(RdmigControl *c, uint8_t *p, size_t len, gint64 deadline, const char *what,
                     GError **error)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = recv(c->fd, p + got, len - got, MSG_DONTWAIT);
        if (r > 0) {
            got += r;
            continue;
        }
        if (r == 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK,
                        "peer closed the control channel in the middle of a frame "
                        "(%s: got %zu of %zu bytes)", what, got, len);
            return -1;
        }
        if (errno == EAGAIN || errno == EINTR) {
            int w = wait_io(c->fd, POLLIN, deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                            "peer stalled in the middle of a frame for %d ms (%s: got %zu of %zu "
                            "bytes)", c->stall_timeout_ms, what, got, len);
                return -1;
            }
        }
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "control channel receive failed: %s",
                    g_strerror(errno));
        return -1;
    }
    g_atomic_pointer_add(&c->bytes, len);
    return 1;
}

int rdmig_control_recv(RdmigControl *c, RdmigFrame *frame, int timeout_ms, GError **error)
{
    if (g_atomic_int_get(&c->shut)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "control channel shut down");
        return -1;
    }
    gint64 begin = timeout_ms < 0 ? -1 : g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    int w = wait_io(c->fd, POLLIN, begin);
    if (w == 0)
        return 0;
    if (w < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return -1;
    }
    uint8_t hdr[RDMIG_CONTROL_HEADER_SIZE];
    /* Peek so that a clean close between frames is told apart from a truncation. */
    ssize_t r = recv(c->fd, hdr, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0 && g_atomic_int_get(&c->shut)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "control channel shut down");
        return -1;
    }
    if (r == 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "peer closed the control channel");
        return -1;
    }
    if (r < 0 && errno != EAGAIN && errno != EINTR) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "control channel receive failed: %s",
                    g_atomic_int_get(&c->shut) ? "channel shut down" : g_strerror(errno));
        return -1;
    }
    gint64 deadline = g_get_monotonic_time() + (gint64)c->stall_timeout_ms * 1000;
    if (read_full(c, hdr, sizeof(hdr), deadline, "frame header", error) < 0)
        return -1;
    if (!rdmig_frame_header_decode(hdr, &frame->hdr, error))
        return -1;
    if (frame->hdr.seq != c->recv_seq) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "control frame out of sequence: got %u, expected %u", frame->hdr.seq,
                    c->recv_seq);
        return -1;
    }
    c->recv_seq++;
    if (frame->hdr.length > c->buf_cap) {
        c->buf_cap = MAX(frame->hdr.length, 4096u);
        c->buf = g_realloc(c->buf, c->buf_cap);
    }
    g_autofree char *what = g_strdup_printf("payload of type %u", frame->hdr.type);
    if (frame->hdr.length &&
        read_full(c, c->buf, frame->hdr.length, deadline, what, error) < 0)
        return -1;
    frame->payload = c->buf;
    return 1;
}

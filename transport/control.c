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
    RdmigTls *tls;     /* NULL: in clear */
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

RdmigControl *rdmig_control_new_over(int fd, RdmigTls *tls, int stall_timeout_ms,
                                     uint32_t frames, uint64_t bytes)
{
    RdmigControl *c = rdmig_control_new(fd, stall_timeout_ms);
    c->tls = tls;
    c->recv_seq = frames;
    c->bytes = bytes;
    return c;
}

void rdmig_control_free(RdmigControl *c)
{
    if (!c)
        return;
    if (c->tls && !g_atomic_int_get(&c->shut))
        rdmig_tls_bye(c->tls);
    rdmig_tls_free(c->tls);
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

RdmigTls *rdmig_control_tls(RdmigControl *c) { return c->tls; }

static bool buffered(RdmigControl *c) { return c->tls && rdmig_tls_pending(c->tls) > 0; }

void rdmig_control_pollfd(RdmigControl *c, struct pollfd *p, int *timeout_ms)
{
    *p = (struct pollfd){ .fd = c->fd, .events = POLLIN };
    if (buffered(c))
        *timeout_ms = 0;
}

bool rdmig_control_readable(RdmigControl *c, const struct pollfd *p)
{
    return p->revents || buffered(c);
}

/* One send(2) or one TLS record's worth: bytes sent or a negative errno. */
static ssize_t io_send(RdmigControl *c, const struct iovec *v, int n)
{
    if (c->tls)
        return rdmig_tls_send(c->tls, v[0].iov_base, v[0].iov_len);
    struct msghdr m = { .msg_iov = (struct iovec *)v, .msg_iovlen = n };
    ssize_t r = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    return r >= 0 ? r : -errno;
}

static ssize_t io_recv(RdmigControl *c, void *p, size_t len)
{
    if (c->tls)
        return rdmig_tls_recv(c->tls, p, len);
    ssize_t r = recv(c->fd, p, len, MSG_DONTWAIT);
    return r >= 0 ? r : -errno;
}

/* What an -EAGAIN waits for; TLS may need to write to read, or the reverse. */
static short io_wants(RdmigControl *c, short dflt)
{
    return c->tls ? rdmig_tls_wants(c->tls) : dflt;
}

static const char *io_error(RdmigControl *c, ssize_t r)
{
    if (g_atomic_int_get(&c->shut))
        return "channel shut down";
    if (c->tls && r == -EPROTO)
        return rdmig_tls_last_error(c->tls);
    return g_strerror((int)-r);
}

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
        ssize_t r = io_send(c, v, n);
        if (r > 0) {
            done += r;
            continue;
        }
        if (r == -EAGAIN || r == -EINTR) {
            int w = wait_io(c->fd, io_wants(c, POLLOUT), deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                            "peer stopped reading the control channel: send stalled for %d ms",
                            c->stall_timeout_ms);
                ok = false;
                break;
            }
            r = -errno;
        }
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "control channel send failed: %s",
                    io_error(c, r));
        ok = false;
        break;
    }
    g_mutex_unlock(&c->send_lock);
    g_atomic_pointer_add(&c->bytes, done);
    return ok;
}

/* Reads exactly @len bytes; 1 ok, -1 error (set).  A close before the
 * first byte of a frame (@frame_start) is a clean end, not a truncation. */
static int read_full(RdmigControl *c, uint8_t *p, size_t len, gint64 deadline, const char *what,
                     bool frame_start, GError **error)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = io_recv(c, p + got, len - got);
        if (r > 0) {
            got += r;
            continue;
        }
        if (r == 0 && frame_start && !got) {
            if (g_atomic_int_get(&c->shut))
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "control channel shut down");
            else
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "peer closed the control channel");
            return -1;
        }
        if (r == 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK,
                        "peer closed the control channel in the middle of a frame "
                        "(%s: got %zu of %zu bytes)", what, got, len);
            return -1;
        }
        if (r == -EAGAIN || r == -EINTR) {
            int w = wait_io(c->fd, io_wants(c, POLLIN), deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                            "peer stalled in the middle of a frame for %d ms (%s: got %zu of %zu "
                            "bytes)", c->stall_timeout_ms, what, got, len);
                return -1;
            }
            r = -errno;
        }
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK, "control channel receive failed: %s",
                    io_error(c, r));
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
    int w = buffered(c) ? 1 : wait_io(c->fd, POLLIN, begin);
    if (w == 0)
        return 0;
    if (w < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return -1;
    }
    uint8_t hdr[RDMIG_CONTROL_HEADER_SIZE];
    gint64 deadline = g_get_monotonic_time() + (gint64)c->stall_timeout_ms * 1000;
    if (read_full(c, hdr, sizeof(hdr), deadline, "frame header", true, error) < 0)
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
        read_full(c, c->buf, frame->hdr.length, deadline, what, false, error) < 0)
        return -1;
    frame->payload = c->buf;
    return 1;
}

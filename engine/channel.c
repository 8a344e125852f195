/* SPDX-License-Identifier: MIT */
/* A session's control channel and keepalive (channel.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "channel.h"

#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include "transport/address.h"

static const char *peer_name(RdmigSession *s)
{
    return s->role == RDMIG_ROLE_SOURCE ? "destination" : "source";
}

/* What protects the channel, for the stats and reports. */
static void note_security(RdmigSession *s, RdmigTls *tls)
{
    g_autofree char *desc = tls ? rdmig_tls_describe(tls) : NULL;
    g_autofree char *text = tls ? g_strdup_printf("%s %s", rdmig_tls_creds_kind(s->creds), desc)
                                : g_strdup("none");
    RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.control_security, text,
                                    sizeof(s->stats.control_security)));
}

bool rdmig_channel_connect(RdmigSession *s, const char *address, GError **error)
{
    gint64 start = rdmig_now_us();
    int fd = rdmig_socket_connect(address, (int)s->params.connect_timeout_ms, s->wake_fd, error);
    if (fd < 0)
        return false;
    RdmigTls *tls = NULL;
    if (s->creds) {
        g_autofree char *host = rdmig_address_host(address);
        gint64 spent_ms = (rdmig_now_us() - start) / 1000;
        int left = (int)MAX(1, (gint64)s->params.connect_timeout_ms - spent_ms);
        tls = rdmig_tls_new(s->creds, fd, host, error);
        if (!tls || !rdmig_tls_handshake(tls, left, s->wake_fd, error)) {
            g_prefix_error(error, "%s: ", address);
            rdmig_tls_free(tls);
            close(fd);
            return false;
        }
    }
    note_security(s, tls);
    s->ctl = rdmig_control_new_over(fd, tls, (int)s->params.peer_timeout_ms, 0, 0);
    rdmig_channel_heard(s);
    return true;
}

void rdmig_channel_open_after_hello(RdmigSession *s, int fd, RdmigTls *tls,
                                    uint64_t hello_bytes)
{
    note_security(s, tls);
    s->ctl = rdmig_control_new_over(fd, tls, (int)s->params.peer_timeout_ms, 1, hello_bytes);
    rdmig_channel_heard(s);
}

void rdmig_channel_heard(RdmigSession *s)
{
    g_atomic_pointer_set(&s->last_rx_us, rdmig_now_us());
}

bool rdmig_channel_send(RdmigSession *s, RdmigMsgType type, GByteArray *payload, GError **error)
{
    if (!s->ctl) {
        if (payload)
            g_byte_array_unref(payload);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK,
                    "no control channel to the peer (the link was lost)");
        return false;
    }
    bool ok = rdmig_control_send(s->ctl, type, payload ? payload->data : NULL,
                                 payload ? payload->len : 0, error);
    if (payload)
        g_byte_array_unref(payload);
    return ok;
}

void rdmig_channel_send_error(RdmigSession *s, const GError *err)
{
    if (!s->ctl || !g_atomic_int_compare_and_exchange(&s->error_sent, 0, 1))
        return;
    GByteArray *b = rdmig_error_encode(err->domain == RDMIG_ERROR ? (uint32_t)err->code
                                                                  : RDMIG_ERROR_PEER,
                                       err->message);
    rdmig_control_send(s->ctl, RDMIG_MSG_ERROR, b->data, b->len, NULL);
    g_byte_array_unref(b);
}

static gint64 silent_ms(RdmigSession *s)
{
    return (rdmig_now_us() - g_atomic_pointer_get(&s->last_rx_us)) / 1000;
}

bool rdmig_channel_check_silence(RdmigSession *s, GError **error)
{
    gint64 silent = silent_ms(s);
    if (silent <= s->params.peer_timeout_ms)
        return true;
    /* Frames waiting to be read are not silence: a caller that was busy
     * (a loaded host, a long placement) has simply not read them yet. */
    if (s->ctl) {
        struct pollfd p;
        int wait = 0;
        rdmig_control_pollfd(s->ctl, &p, &wait);
        if (poll(&p, 1, 0) < 0)
            p.revents = 0;
        if (rdmig_control_readable(s->ctl, &p))
            return true;
    }
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                "%s silent for %" G_GINT64_FORMAT " ms (peer timeout %u ms): it stalled, or the "
                "network between us is down", peer_name(s), silent, s->params.peer_timeout_ms);
    return false;
}

/* The peer's ERROR as a local error; nothing is to be told back about it. */
static void take_peer_error(RdmigSession *s, const RdmigFrame *f, GError **error)
{
    RdmigWireError e;
    if (!rdmig_error_decode(f->payload, f->hdr.length, &e, error))
        return;
    g_atomic_int_set(&s->peer_reported, 1);
    g_atomic_int_set(&s->error_sent, 1);
    g_set_error(error, RDMIG_ERROR,
                e.code == RDMIG_ERROR_CANCELLED ? RDMIG_ERROR_CANCELLED : RDMIG_ERROR_PEER,
                "%s reported an error (%s): %s", peer_name(s),
                rdmig_error_code_str((RdmigErrorCode)e.code), e.message);
}

/* One frame off the channel, accounted and classified: 1 a message for the
 * caller, 0 a PING (skipped), -1 an error. */
static int take_frame(RdmigSession *s, RdmigFrame *f, GError **error)
{
    int r = rdmig_control_recv(s->ctl, f, 0, error);
    if (r < 0) {
        if (error && *error &&
            ((*error)->code == RDMIG_ERROR_PEER || (*error)->code == RDMIG_ERROR_LINK))
            g_prefix_error(error, "%s: ", peer_name(s));
        return -1;
    }
    if (r == 0)
        return 0;
    rdmig_channel_heard(s);
    RDMIG_STATS_UPDATE(s, s->stats.bytes_transferred += RDMIG_CONTROL_HEADER_SIZE +
                                                          f->hdr.length);
    if (f->hdr.type == RDMIG_MSG_PING)
        return 0;
    if (f->hdr.type == RDMIG_MSG_ERROR) {
        take_peer_error(s, f, error);
        return -1;
    }
    if (f->hdr.type == 0 || f->hdr.type >= RDMIG_MSG__MAX) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "unknown control message type %u from the %s", f->hdr.type, peer_name(s));
        return -1;
    }
    return 1;
}

/* The wake eventfd fired: a cancel (checked by the caller's loop) or another
 * thread's failure, which ends the wait. */
static bool woken(RdmigSession *s, GError **error)
{
    uint64_t v;
    if (read(s->wake_fd, &v, sizeof(v)) < 0) {
        /* Drained by another wait already. */
    }
    if (rdmig_session_take_pause(s, error))
        return false;
    GError *failure = rdmig_session_take_failure(s);
    if (!failure)
        return true;
    g_propagate_error(error, failure);
    return false;
}

/* How long the next poll(2) may sleep: until the peer would count as
 * silent, at most a keepalive period, at most what is left of @timeout_ms. */
static int next_wait(RdmigSession *s, gint64 start, int timeout_ms, bool *expired)
{
    /* Read the clock once: CLAMP evaluates its argument up to three times,
     * and a silence that crossed the limit between two readings gave -1,
     * a poll(2) that never timed out, and a dead peer that was never seen. */
    gint64 until_silent = (gint64)s->params.peer_timeout_ms - silent_ms(s);
    int wait = (int)CLAMP(until_silent, 0, (gint64)s->params.keepalive_ms);
    if (timeout_ms >= 0) {
        gint64 left = timeout_ms - (rdmig_now_us() - start) / 1000;
        *expired = left < 0;
        wait = (int)MIN(wait, MAX(left, 0));
    }
    return wait;
}

int rdmig_channel_recv(RdmigSession *s, RdmigFrame *f, int timeout_ms, GError **error)
{
    gint64 start = rdmig_now_us();
    for (;;) {
        if (rdmig_session_cancelled(s)) {
            rdmig_set_cancelled(error);
            return -1;
        }
        bool expired = false;
        int wait = next_wait(s, start, timeout_ms, &expired);
        if (expired)
            return 0;
        struct pollfd p[3] = { { 0 }, { .fd = s->wake_fd, .events = POLLIN },
                               { .fd = s->side.fd, .events = POLLIN } };
        rdmig_control_pollfd(s->ctl, &p[0], &wait);
        int n = poll(p, s->side.fd >= 0 ? 3 : 2, wait);
        if (n < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return -1;
        }
        if (p[1].revents) {
            if (!woken(s, error))
                return -1;
            continue;
        }
        if (s->side.fd >= 0 && p[2].revents && !s->side.serve(s->side.opaque, error))
            return -1;
        if (n < 0 || !rdmig_control_readable(s->ctl, &p[0])) {
            /* Judged only when nothing is waiting to be read: a busy receiver
             * must not blame a peer whose frames are queued. */
            if (!rdmig_channel_check_silence(s, error))
                return -1;
            continue;
        }
        int r = take_frame(s, f, error);
        if (r != 0)
            return r;
    }
}

bool rdmig_channel_expect(RdmigSession *s, RdmigMsgType type, const char *context,
                          int timeout_ms, RdmigFrame *f, GError **error)
{
    int r = rdmig_channel_recv(s, f, timeout_ms, error);
    if (r == 0)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "no %s %s within %d ms",
                    rdmig_msg_type_str(type), context, timeout_ms);
    if (r <= 0)
        return false;
    if (f->hdr.type == type)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "expected %s %s, got %s",
                rdmig_msg_type_str(type), context, rdmig_msg_type_str(f->hdr.type));
    return false;
}

void rdmig_channel_close(RdmigSession *s)
{
    if (!s->ctl)
        return;
    rdmig_control_shutdown(s->ctl);
    s->ctl_bytes_done += rdmig_control_bytes(s->ctl);
    rdmig_control_free(s->ctl);
    s->ctl = NULL;
}

static gpointer keepalive_thread(gpointer data)
{
    RdmigSession *s = data;
    g_mutex_lock(&s->keepalive_lock);
    while (!g_atomic_int_get(&s->stop_keepalive)) {
        /* Twice per period, so one late PING does not look like silence. */
        gint64 until = rdmig_now_us() + (gint64)s->params.keepalive_ms * 500;
        while (!g_atomic_int_get(&s->stop_keepalive) &&
               g_cond_wait_until(&s->keepalive_cond, &s->keepalive_lock, until))
            ;
        if (g_atomic_int_get(&s->stop_keepalive))
            break;
        g_mutex_unlock(&s->keepalive_lock);
        /* A failed send is noticed by the thread that owns the channel. */
        rdmig_control_send(s->ctl, RDMIG_MSG_PING, NULL, 0, NULL);
        g_mutex_lock(&s->keepalive_lock);
    }
    g_mutex_unlock(&s->keepalive_lock);
    rdmig_session_account_thread_cpu(s);
    return NULL;
}

void rdmig_channel_start_keepalive(RdmigSession *s)
{
    if (!(s->features & RDMIG_FEATURE_KEEPALIVE) || s->keepalive)
        return;
    g_atomic_int_set(&s->stop_keepalive, 0);
    s->keepalive = g_thread_new("rdmig-keepalive", keepalive_thread, s);
}

void rdmig_channel_stop_keepalive(RdmigSession *s)
{
    if (!s->keepalive)
        return;
    g_mutex_lock(&s->keepalive_lock);
    g_atomic_int_set(&s->stop_keepalive, 1);
    g_cond_signal(&s->keepalive_cond);
    g_mutex_unlock(&s->keepalive_lock);
    g_thread_join(s->keepalive);
    s->keepalive = NULL;
}

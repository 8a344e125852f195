/* SPDX-License-Identifier: MIT */
/* TLS 1.3 with GnuTLS: credentials in QEMU's layouts, non-blocking sessions (tls.h). */
#define G_LOG_DOMAIN "rdmig-transport"

#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <gnutls/crypto.h>

#include "rdmig/error.h"
#include "util/text.h"

/* TLS 1.3 only: every peer is rdmig or QEMU of this decade, and 1.3 is what
 * has the exporter the session's secrets come from.  PSK key exchange with
 * (EC)DHE first, for forward secrecy.  AES-GCM before ChaCha20: GnuTLS's own
 * order chose ChaCha20 on these hosts, whose AES-NI runs AES-128-GCM at
 * 4 GB/s against ChaCha20's 0.27 (gnutls-cli --benchmark-ciphers;
 * docs/BENCHMARKS.md, "TLS cost"). */
#define PRIORITY_TLS13 "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:" \
                       "+CHACHA20-POLY1305"
#define PRIORITY_X509 PRIORITY_TLS13
#define PRIORITY_PSK PRIORITY_TLS13 ":+ECDHE-PSK:+DHE-PSK:+PSK"
/* psktool writes 32-byte keys; anything under 128 bits is a mistake. */
#define PSK_MIN_BYTES 16

struct RdmigTlsCreds {
    gint ref;
    RdmigTlsSide side;
    bool psk;
    char *what;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
    GPtrArray *ids;   /* char *, the file's identities */
    GPtrArray *keys;  /* GBytes *, their keys */
};

struct RdmigTls {
    RdmigTlsCreds *creds;
    int fd;
    gnutls_session_t session;
    int last;          /* the last GnuTLS error, 0 if none */
};

/* ------------------------------------------------------------ credentials */

static void set_gnutls_error(GError **error, int code, const char *fmt, const char *arg, int rc)
{
    g_autofree char *what = g_strdup_printf(fmt, arg);
    g_set_error(error, RDMIG_ERROR, code, "%s: %s", what, gnutls_strerror(rc));
}

static bool file_readable(const char *path, GError **error)
{
    if (g_file_test(path, G_FILE_TEST_IS_REGULAR))
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "TLS credentials: %s %s", path,
                g_file_test(path, G_FILE_TEST_EXISTS) ? "is not a regular file" : "does not exist");
    return false;
}

/* A secret others can read is no secret: said once, loudly, not refused
 * (QEMU does not refuse either, and a read-only mount may not allow 0600). */
static void warn_if_shared(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & 077))
        g_warning("%s can be read by other users (mode %03o): anyone who reads it can "
                  "impersonate either end; chmod 600 it", path, st.st_mode & 0777);
}

static RdmigTlsCreds *creds_new(RdmigTlsSide side, bool psk)
{
    RdmigTlsCreds *c = g_new0(RdmigTlsCreds, 1);
    c->ref = 1;
    c->side = side;
    c->psk = psk;
    c->ids = g_ptr_array_new_with_free_func(g_free);
    c->keys = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    return c;
}

RdmigTlsCreds *rdmig_tls_creds_x509(const char *dir, RdmigTlsSide side, GError **error)
{
    const char *who = side == RDMIG_TLS_SERVER ? "server" : "client";
    g_autofree char *ca = g_build_filename(dir, "ca-cert.pem", NULL);
    g_autofree char *crl = g_build_filename(dir, "ca-crl.pem", NULL);
    g_autofree char *cert_name = g_strdup_printf("%s-cert.pem", who);
    g_autofree char *key_name = g_strdup_printf("%s-key.pem", who);
    g_autofree char *cert = g_build_filename(dir, cert_name, NULL);
    g_autofree char *key = g_build_filename(dir, key_name, NULL);
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "TLS credentials: %s is not a directory (expected QEMU's tls-creds-x509 "
                    "layout: ca-cert.pem, %s, %s)", dir, cert_name, key_name);
        return NULL;
    }
    if (!file_readable(ca, error) || !file_readable(cert, error) || !file_readable(key, error))
        return NULL;
    warn_if_shared(key);
    RdmigTlsCreds *c = creds_new(side, false);
    c->what = g_strdup_printf("x509 certificates from %s", dir);
    int rc = gnutls_certificate_allocate_credentials(&c->x509);
    if (rc < 0) {
        set_gnutls_error(error, RDMIG_ERROR_RESOURCE, "%s", "TLS credentials", rc);
        goto fail;
    }
    rc = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
    if (rc <= 0) {
        if (rc == 0)
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "TLS credentials: no certificate in %s", ca);
        else
            set_gnutls_error(error, RDMIG_ERROR_INVALID, "TLS credentials: %s", ca, rc);
        goto fail;
    }
    if (g_file_test(crl, G_FILE_TEST_EXISTS)) {
        rc = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            set_gnutls_error(error, RDMIG_ERROR_INVALID, "TLS credentials: %s", crl, rc);
            goto fail;
        }
    }
    rc = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        g_autofree char *pair = g_strdup_printf("%s with %s", cert, key);
        set_gnutls_error(error, RDMIG_ERROR_INVALID, "TLS credentials: %s", pair, rc);
        goto fail;
    }
    return c;
fail:
    rdmig_tls_creds_unref(c);
    return NULL;
}

bool rdmig_psk_parse(const char *text, const char *origin, GPtrArray *ids, GPtrArray *keys,
                     GError **error)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (unsigned i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]);
        if (!*line)
            continue;
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "%s line %u: expected IDENTITY:HEXKEY (the keys.psk format psktool "
                        "writes)", origin, i + 1);
            return false;
        }
        const char *hex = colon + 1;
        size_t n = strlen(hex);
        bool ok = n && n % 2 == 0;
        for (size_t k = 0; ok && k < n; k++)
            ok = g_ascii_isxdigit(hex[k]);
        if (!ok) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "%s line %u: the key is not an even number of hex digits", origin, i + 1);
            return false;
        }
        if (n / 2 < PSK_MIN_BYTES) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "%s line %u: a %zu-byte key is too short (at least %d bytes; "
                        "psktool makes 32)", origin, i + 1, n / 2, PSK_MIN_BYTES);
            return false;
        }
        uint8_t *raw = g_malloc(n / 2);
        for (size_t k = 0; k < n / 2; k++)
            raw[k] = (uint8_t)(g_ascii_xdigit_value(hex[2 * k]) << 4 |
                               g_ascii_xdigit_value(hex[2 * k + 1]));
        g_ptr_array_add(ids, g_strndup(line, colon - line));
        g_ptr_array_add(keys, g_bytes_new_take(raw, n / 2));
    }
    if (!ids->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "%s holds no key", origin);
        return false;
    }
    return true;
}

/* The destination's lookup: the key of the identity the source presented. */
static int psk_lookup(gnutls_session_t session, const char *username, gnutls_datum_t *key)
{
    RdmigTls *t = gnutls_session_get_ptr(session);
    for (guint i = 0; i < t->creds->ids->len; i++) {
        if (strcmp(g_ptr_array_index(t->creds->ids, i), username))
            continue;
        gsize n;
        const void *raw = g_bytes_get_data(g_ptr_array_index(t->creds->keys, i), &n);
        key->data = gnutls_malloc(n);
        if (!key->data)
            return -1;
        memcpy(key->data, raw, n);
        key->size = (unsigned)n;
        return 0;
    }
    /* An unknown identity fails exactly as a wrong key does (a random one
     * that matches nothing), so a stranger learns no identity by trying;
     * the operator learns which one it was. */
    g_autofree char *shown = g_strndup(username, 64);
    rdmig_text_make_printable(shown);
    g_warning("a source presented PSK identity '%s', which is not in this side's keys.psk",
              shown);
    key->data = gnutls_malloc(32);
    if (!key->data)
        return -1;
    gnutls_rnd(GNUTLS_RND_RANDOM, key->data, 32);
    key->size = 32;
    return 0;
}

RdmigTlsCreds *rdmig_tls_creds_psk(const char *file, RdmigTlsSide side, GError **error)
{
    if (!file_readable(file, error))
        return NULL;
    g_autofree char *text = NULL;
    g_autoptr(GError) err = NULL;
    if (!g_file_get_contents(file, &text, NULL, &err)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "TLS credentials: %s",
                    err->message);
        return NULL;
    }
    warn_if_shared(file);
    RdmigTlsCreds *c = creds_new(side, true);
    if (!rdmig_psk_parse(text, file, c->ids, c->keys, error))
        goto fail;
    const char *id = g_ptr_array_index(c->ids, 0);
    c->what = side == RDMIG_TLS_SERVER
                  ? g_strdup_printf("pre-shared keys from %s", file)
                  : g_strdup_printf("pre-shared key '%s' from %s", id, file);
    int rc;
    if (side == RDMIG_TLS_SERVER) {
        rc = gnutls_psk_allocate_server_credentials(&c->psk_server);
        if (rc >= 0)
            gnutls_psk_set_server_credentials_function(c->psk_server, psk_lookup);
    } else {
        rc = gnutls_psk_allocate_client_credentials(&c->psk_client);
        gsize n;
        const void *raw = g_bytes_get_data(g_ptr_array_index(c->keys, 0), &n);
        gnutls_datum_t key = { .data = (unsigned char *)raw, .size = (unsigned)n };
        if (rc >= 0)
            rc = gnutls_psk_set_client_credentials(c->psk_client, id, &key, GNUTLS_PSK_KEY_RAW);
    }
    if (rc < 0) {
        set_gnutls_error(error, RDMIG_ERROR_INVALID, "TLS credentials: %s", file, rc);
        goto fail;
    }
    return c;
fail:
    rdmig_tls_creds_unref(c);
    return NULL;
}

RdmigTlsCreds *rdmig_tls_creds_ref(RdmigTlsCreds *c)
{
    g_atomic_int_inc(&c->ref);
    return c;
}

void rdmig_tls_creds_unref(RdmigTlsCreds *c)
{
    if (!c || !g_atomic_int_dec_and_test(&c->ref))
        return;
    if (c->x509)
        gnutls_certificate_free_credentials(c->x509);
    if (c->psk_server)
        gnutls_psk_free_server_credentials(c->psk_server);
    if (c->psk_client)
        gnutls_psk_free_client_credentials(c->psk_client);
    /* Keys are wiped, not only freed. */
    for (guint i = 0; i < c->keys->len; i++) {
        gsize n;
        void *raw = (void *)g_bytes_get_data(g_ptr_array_index(c->keys, i), &n);
        gnutls_memset(raw, 0, n);
    }
    g_ptr_array_unref(c->ids);
    g_ptr_array_unref(c->keys);
    g_free(c->what);
    g_free(c);
}

const char *rdmig_tls_creds_describe(const RdmigTlsCreds *c) { return c->what; }

const char *rdmig_tls_creds_kind(const RdmigTlsCreds *c) { return c->psk ? "psk" : "x509"; }

/* ---------------------------------------------------------------- sessions */

/* The socket, without ever waiting: the caller polls. */
static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    RdmigTls *t = ptr;
    ssize_t r = recv(t->fd, buf, len, MSG_DONTWAIT);
    if (r < 0)
        gnutls_transport_set_errno(t->session, errno == EWOULDBLOCK ? EAGAIN : errno);
    return r;
}

static ssize_t push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int n)
{
    RdmigTls *t = ptr;
    struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
    ssize_t r = sendmsg(t->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0)
        gnutls_transport_set_errno(t->session, errno == EWOULDBLOCK ? EAGAIN : errno);
    return r;
}

static int pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    RdmigTls *t = ptr;
    struct pollfd p = { .fd = t->fd, .events = POLLIN };
    int r = poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms);
    return r < 0 ? -1 : r;
}

static bool is_ip_literal(const char *host)
{
    uint8_t buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

RdmigTls *rdmig_tls_new(RdmigTlsCreds *creds, int fd, const char *peer_host, GError **error)
{
    bool server = creds->side == RDMIG_TLS_SERVER;
    RdmigTls *t = g_new0(RdmigTls, 1);
    t->fd = fd;
    /* NONBLOCK: no hidden waits (and no default handshake timer) inside
     * GnuTLS; NO_TICKETS: there is no resumption, so tickets are noise. */
    int rc = gnutls_init(&t->session, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
                                          GNUTLS_NONBLOCK | GNUTLS_NO_TICKETS);
    if (rc < 0) {
        g_free(t);
        set_gnutls_error(error, RDMIG_ERROR_RESOURCE, "%s", "TLS session", rc);
        return NULL;
    }
    t->creds = rdmig_tls_creds_ref(creds);
    gnutls_session_set_ptr(t->session, t);
    gnutls_transport_set_ptr(t->session, t);
    gnutls_transport_set_pull_function(t->session, pull);
    gnutls_transport_set_vec_push_function(t->session, push);
    gnutls_transport_set_pull_timeout_function(t->session, pull_timeout);
    const char *err_pos = NULL;
    rc = gnutls_priority_set_direct(t->session, creds->psk ? PRIORITY_PSK : PRIORITY_X509,
                                    &err_pos);
    if (rc >= 0 && creds->psk)
        rc = gnutls_credentials_set(t->session, GNUTLS_CRD_PSK,
                                    server ? (void *)creds->psk_server : (void *)creds->psk_client);
    else if (rc >= 0)
        rc = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, creds->x509);
    if (rc >= 0 && !creds->psk) {
        if (server)
            gnutls_certificate_server_set_request(t->session, GNUTLS_CERT_REQUIRE);
        if (!server && peer_host && !is_ip_literal(peer_host))
            rc = gnutls_server_name_set(t->session, GNUTLS_NAME_DNS, peer_host,
                                        strlen(peer_host));
        /* The chain against the CA on both ends; the host name (or IP
         * address) on the source's. */
        if (rc >= 0)
            gnutls_session_set_verify_cert(t->session, server ? NULL : peer_host, 0);
    }
    if (rc < 0) {
        set_gnutls_error(error, RDMIG_ERROR_RESOURCE, "%s", "TLS session", rc);
        rdmig_tls_free(t);
        return NULL;
    }
    return t;
}

void rdmig_tls_free(RdmigTls *t)
{
    if (!t)
        return;
    gnutls_deinit(t->session);
    rdmig_tls_creds_unref(t->creds);
    g_free(t);
}

short rdmig_tls_wants(RdmigTls *t)
{
    return gnutls_record_get_direction(t->session) ? POLLOUT : POLLIN;
}

static int classify_handshake(int rc)
{
    switch (rc) {
    case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
    case GNUTLS_E_CERTIFICATE_ERROR:
    case GNUTLS_E_NO_CERTIFICATE_FOUND:
    case GNUTLS_E_CERTIFICATE_REQUIRED:
    case GNUTLS_E_DECRYPTION_FAILED:   /* a PSK that differs shows as this */
    case GNUTLS_E_KEY_USAGE_VIOLATION:
    case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
    case GNUTLS_E_NO_CIPHER_SUITES:
    case GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER: /* so does a PSK binder that does not match */
        return RDMIG_ERROR_AUTH;
    case GNUTLS_E_PREMATURE_TERMINATION:
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
        return RDMIG_ERROR_LINK;
    default:
        return RDMIG_ERROR_PROTOCOL;
    }
}

int rdmig_tls_handshake_step(RdmigTls *t, short *events, GError **error)
{
    int rc = gnutls_handshake(t->session);
    if (rc == GNUTLS_E_SUCCESS)
        return 1;
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        *events = rdmig_tls_wants(t);
        return 0;
    }
    t->last = rc;
    int code = classify_handshake(rc);
    /* Tell the peer why, if the socket takes it now; it is dropped anyway. */
    if (rc != GNUTLS_E_FATAL_ALERT_RECEIVED && code != RDMIG_ERROR_LINK)
        gnutls_alert_send_appropriate(t->session, rc);
    if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        gnutls_alert_description_t a = gnutls_alert_get(t->session);
        code = a == GNUTLS_A_DECRYPT_ERROR || a == GNUTLS_A_BAD_CERTIFICATE ||
                       a == GNUTLS_A_UNKNOWN_CA || a == GNUTLS_A_CERTIFICATE_REQUIRED ||
                       a == GNUTLS_A_UNKNOWN_PSK_IDENTITY || a == GNUTLS_A_ACCESS_DENIED ||
                       a == GNUTLS_A_HANDSHAKE_FAILURE || a == GNUTLS_A_BAD_RECORD_MAC ||
                       a == GNUTLS_A_ILLEGAL_PARAMETER
                   ? RDMIG_ERROR_AUTH
                   : RDMIG_ERROR_PROTOCOL;
        g_set_error(error, RDMIG_ERROR, code, "TLS handshake refused by the peer (%s)%s",
                    gnutls_alert_get_name(a),
                    code == RDMIG_ERROR_AUTH
                        ? ": the credentials do not match (another key, or a certificate "
                          "the peer does not trust)"
                        : "");
        return -1;
    }
    if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
        gnutls_datum_t why = { 0 };
        unsigned status = gnutls_session_get_verify_cert_status(t->session);
        gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0);
        g_autofree char *text = g_strdup(why.data ? (const char *)why.data : gnutls_strerror(rc));
        g_set_error(error, RDMIG_ERROR, code, "TLS handshake: the peer's certificate: %s",
                    g_strchomp(text));
        gnutls_free(why.data);
        return -1;
    }
    if (code == RDMIG_ERROR_LINK)
        g_set_error(error, RDMIG_ERROR, code, "TLS handshake: the peer closed the connection (%s): "
                    "it may have no credentials, or credentials of another kind",
                    gnutls_strerror(rc));
    else if (code == RDMIG_ERROR_AUTH)
        g_set_error(error, RDMIG_ERROR, code, "TLS handshake: %s: the credentials do not match "
                    "(another key, or a certificate not signed by a trusted CA)",
                    gnutls_strerror(rc));
    else
        g_set_error(error, RDMIG_ERROR, code, "TLS handshake: %s", gnutls_strerror(rc));
    return -1;
}

bool rdmig_tls_handshake(RdmigTls *t, int timeout_ms, int cancel_fd, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        short ev = 0;
        int r = rdmig_tls_handshake_step(t, &ev, error);
        if (r)
            return r > 0;
        gint64 left = (deadline - g_get_monotonic_time()) / 1000;
        if (left <= 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                        "TLS handshake not done within %d ms: the peer stalled, or does not "
                        "speak TLS (is it started with the same kind of credentials?)",
                        timeout_ms);
            return false;
        }
        struct pollfd p[2] = { { .fd = t->fd, .events = ev },
                               { .fd = cancel_fd, .events = POLLIN } };
        if (poll(p, 2, (int)left) < 0 && errno != EINTR) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return false;
        }
        if (p[1].revents) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "cancelled during the TLS "
                        "handshake");
            return false;
        }
    }
}

static ssize_t record_error(RdmigTls *t, ssize_t rc)
{
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED)
        return -EAGAIN;
    t->last = (int)rc;
    switch (rc) {
    case GNUTLS_E_PREMATURE_TERMINATION:
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
        return -EPIPE;
    default:
        return -EPROTO;
    }
}

ssize_t rdmig_tls_send(RdmigTls *t, const void *buf, size_t len)
{
    ssize_t r = gnutls_record_send(t->session, buf, len);
    return r >= 0 ? r : record_error(t, r);
}

ssize_t rdmig_tls_recv(RdmigTls *t, void *buf, size_t len)
{
    ssize_t r = gnutls_record_recv(t->session, buf, len);
    return r >= 0 ? r : record_error(t, r);
}

size_t rdmig_tls_pending(RdmigTls *t) { return gnutls_record_check_pending(t->session); }

const char *rdmig_tls_last_error(RdmigTls *t)
{
    return t->last ? gnutls_strerror(t->last) : "no error";
}

void rdmig_tls_bye(RdmigTls *t)
{
    /* GNUTLS_SHUT_WR: send close_notify, do not wait for the peer's. */
    gnutls_bye(t->session, GNUTLS_SHUT_WR);
}

bool rdmig_tls_export(RdmigTls *t, const char *label, void *out, size_t len)
{
    return gnutls_prf_rfc5705(t->session, strlen(label), label, 0, NULL, len, out) >= 0;
}

char *rdmig_tls_describe(RdmigTls *t)
{
    char *d = gnutls_session_get_desc(t->session);
    char *s = g_strdup(d ? d : "TLS");
    gnutls_free(d);
    return s;
}

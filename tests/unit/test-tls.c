/* SPDX-License-Identifier: MIT */
/*
 * transport/tls.c, and the control channel over it: keys.psk parsing and its
 * errors, x509 directories and theirs, real TLS 1.3 handshakes (PSK and
 * certificates made by certtool, through tests/helpers/make-certs.sh) over
 * a socketpair, what each side sees when the other's credentials do not
 * match, the exporter both ends agree on, and frames over TLS, including
 * frames GnuTLS holds decrypted where poll(2) cannot see them.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test-util.h"
#include "tls-pair.h"
#include "transport/control.h"
#include "transport/tls.h"
#include "util/be.h"

#define KEY_A "qemu:" \
    "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n"
#define KEY_B "qemu:" \
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"

static char *tmpdir;

static char *write_file(const char *name, const char *text)
{
    char *path = g_build_filename(tmpdir, name, NULL);
    g_assert_true(g_file_set_contents(path, text, -1, NULL));
    g_assert_cmpint(chmod(path, 0600), ==, 0);
    return path;
}

/* ------------------------------------------------------------ keys.psk */

static void parse_error(const char *text, const char *needle)
{
    g_autoptr(GPtrArray) ids = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    g_autoptr(GError) err = NULL;
    g_assert_false(rdmig_psk_parse(text, "keys.psk", ids, keys, &err));
    assert_error(err, RDMIG_ERROR_INVALID, needle);
}

static void test_psk_parse(void)
{
    g_autoptr(GPtrArray) ids = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) keys = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_psk_parse("\n" KEY_A "\n  other:000102030405060708090a0b0c0d0e0f  \n",
                                  "keys.psk", ids, keys, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(ids->len, ==, 2);
    g_assert_cmpstr(g_ptr_array_index(ids, 0), ==, "qemu");
    g_assert_cmpstr(g_ptr_array_index(ids, 1), ==, "other");
    gsize n;
    const uint8_t *k = g_bytes_get_data(g_ptr_array_index(keys, 0), &n);
    g_assert_cmpuint(n, ==, 32);
    g_assert_cmpuint(k[0], ==, 0x0f);
    g_assert_cmpuint(k[31], ==, 0xf0);
    k = g_bytes_get_data(g_ptr_array_index(keys, 1), &n);
    g_assert_cmpuint(n, ==, 16);
    g_assert_cmpuint(k[15], ==, 0x0f);

    parse_error("", "holds no key");
    parse_error("\n\n", "holds no key");
    parse_error(KEY_A "no colon here\n", "keys.psk line 2: expected IDENTITY:HEXKEY");
    parse_error(":00112233445566778899aabbccddeeff\n", "line 1: expected IDENTITY:HEXKEY");
    parse_error("a:00112233445566778899aabbccddeef\n", "line 1: the key is not an even number");
    parse_error("a:00112233445566778899aabbccddeefg\n", "line 1: the key is not an even number");
    parse_error("a:\n", "line 1: the key is not an even number");
    parse_error("a:0011223344556677\n", "line 1: a 8-byte key is too short");
}

static void test_psk_files(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *missing = g_build_filename(tmpdir, "nothere.psk", NULL);
    g_assert_null(rdmig_tls_creds_psk(missing, RDMIG_TLS_SERVER, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "nothere.psk does not exist");
    g_clear_error(&err);
    g_assert_null(rdmig_tls_creds_psk(tmpdir, RDMIG_TLS_SERVER, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "is not a regular file");
    g_clear_error(&err);
    g_autofree char *bad = write_file("bad.psk", "qemu:xyz\n");
    g_assert_null(rdmig_tls_creds_psk(bad, RDMIG_TLS_CLIENT, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "bad.psk line 1");
    g_clear_error(&err);
    g_autofree char *good = write_file("a.psk", KEY_A);
    RdmigTlsCreds *c = rdmig_tls_creds_psk(good, RDMIG_TLS_CLIENT, &err);
    g_assert_no_error(err);
    g_assert_nonnull(strstr(rdmig_tls_creds_describe(c), "'qemu'"));
    rdmig_tls_creds_unref(c);
}

/* ------------------------------------------------------------ x509 */

static char *make_certs(const char *name)
{
    char *dir = g_build_filename(tmpdir, name, NULL);
    g_autofree char *cmd = g_strdup_printf("%s %s", RDMIG_MAKE_CERTS, dir);
    int status = -1;
    g_autoptr(GError) err = NULL;
    /* certtool is in gnutls-bin, which scripts/setup.sh installs: its absence
     * is a broken set-up, not a reason to skip. */
    g_assert_true(g_spawn_command_line_sync(cmd, NULL, NULL, &status, &err));
    g_assert_no_error(err);
    g_assert_cmpint(status, ==, 0);
    return dir;
}

static void test_x509_files(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *missing = g_build_filename(tmpdir, "nodir", NULL);
    g_assert_null(rdmig_tls_creds_x509(missing, RDMIG_TLS_SERVER, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "is not a directory");
    g_clear_error(&err);

    g_autofree char *dir = g_build_filename(tmpdir, "partial", NULL);
    g_assert_cmpint(g_mkdir_with_parents(dir, 0700), ==, 0);
    g_assert_null(rdmig_tls_creds_x509(dir, RDMIG_TLS_SERVER, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "ca-cert.pem does not exist");
    g_clear_error(&err);
    g_autofree char *ca = g_build_filename(dir, "ca-cert.pem", NULL);
    g_assert_true(g_file_set_contents(ca, "not a certificate\n", -1, NULL));
    g_assert_null(rdmig_tls_creds_x509(dir, RDMIG_TLS_SERVER, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "server-cert.pem does not exist");
    g_clear_error(&err);
    g_autofree char *cert = g_build_filename(dir, "client-cert.pem", NULL);
    g_autofree char *key = g_build_filename(dir, "client-key.pem", NULL);
    g_assert_true(g_file_set_contents(cert, "x\n", -1, NULL));
    g_assert_true(g_file_set_contents(key, "x\n", -1, NULL));
    g_assert_null(rdmig_tls_creds_x509(dir, RDMIG_TLS_CLIENT, &err));
    assert_error(err, RDMIG_ERROR_INVALID, "ca-cert.pem");

    g_autofree char *real = make_certs("pki-files");
    g_clear_error(&err);
    RdmigTlsCreds *c = rdmig_tls_creds_x509(real, RDMIG_TLS_CLIENT, &err);
    g_assert_no_error(err);
    rdmig_tls_creds_unref(c);
}

/* ------------------------------------------------------------ handshakes */

typedef struct {
    RdmigTls *client, *server;
    int sv[2];
    GError *client_err, *server_err;
} Pair;

static bool handshake(Pair *p, RdmigTlsCreds *cc, RdmigTlsCreds *sc, const char *host)
{
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, p->sv), ==, 0);
    p->client = rdmig_tls_new(cc, p->sv[0], host, NULL);
    p->server = rdmig_tls_new(sc, p->sv[1], NULL, NULL);
    g_assert_nonnull(p->client);
    g_assert_nonnull(p->server);
    return tls_pair_handshake(p->client, p->sv[0], p->server, p->sv[1], &p->client_err,
                              &p->server_err);
}

static void pair_clear(Pair *p)
{
    rdmig_tls_free(p->client);
    rdmig_tls_free(p->server);
    close(p->sv[0]);
    close(p->sv[1]);
    g_clear_error(&p->client_err);
    g_clear_error(&p->server_err);
}

static RdmigTlsCreds *psk(const char *name, const char *text, RdmigTlsSide side)
{
    g_autofree char *path = write_file(name, text);
    RdmigTlsCreds *c = rdmig_tls_creds_psk(path, side, NULL);
    g_assert_nonnull(c);
    return c;
}

static void test_psk_handshake(void)
{
    RdmigTlsCreds *cc = psk("c.psk", KEY_A, RDMIG_TLS_CLIENT);
    /* The destination holds two keys: the source's is the second. */
    RdmigTlsCreds *sc =
        psk("s.psk", "other:" "00112233445566778899aabbccddeeff\n" KEY_A, RDMIG_TLS_SERVER);
    Pair p = { 0 };
    g_assert_true(handshake(&p, cc, sc, "127.0.0.1"));
    g_assert_no_error(p.client_err);
    g_assert_no_error(p.server_err);
    g_autofree char *desc = rdmig_tls_describe(p.client);
    g_assert_nonnull(strstr(desc, "TLS1.3"));
    g_test_message("session: %s", desc);

    /* Both ends export the same secret; another label, another secret. */
    uint8_t a[32], b[32], c2[32];
    g_assert_true(rdmig_tls_export(p.client, "EXPORTER-test", a, sizeof(a)));
    g_assert_true(rdmig_tls_export(p.server, "EXPORTER-test", b, sizeof(b)));
    g_assert_true(rdmig_tls_export(p.server, "EXPORTER-other", c2, sizeof(c2)));
    g_assert_cmpmem(a, sizeof(a), b, sizeof(b));
    g_assert_true(memcmp(a, c2, sizeof(a)) != 0);

    /* Records both ways. */
    g_assert_cmpint(rdmig_tls_send(p.client, "hello", 5), ==, 5);
    char buf[8] = { 0 };
    ssize_t r;
    for (int i = 0; i < 100 && (r = rdmig_tls_recv(p.server, buf, sizeof(buf))) == -EAGAIN; i++)
        ;
    g_assert_cmpint(r, ==, 5);
    g_assert_cmpstr(buf, ==, "hello");
    g_assert_cmpint(rdmig_tls_recv(p.server, buf, sizeof(buf)), ==, -EAGAIN);
    g_assert_cmpint(rdmig_tls_wants(p.server), ==, POLLIN);

    /* A second session of the same keys exports something else. */
    Pair q = { 0 };
    g_assert_true(handshake(&q, cc, sc, NULL));
    g_assert_true(rdmig_tls_export(q.server, "EXPORTER-test", b, sizeof(b)));
    g_assert_true(memcmp(a, b, sizeof(a)) != 0);
    pair_clear(&q);
    pair_clear(&p);
    rdmig_tls_creds_unref(cc);
    rdmig_tls_creds_unref(sc);
}

static void test_psk_mismatch(void)
{
    RdmigTlsCreds *sc = psk("s.psk", KEY_A, RDMIG_TLS_SERVER);
    /* Another key under the same identity, and an identity it does not know. */
    const char *wrong[] = { KEY_B, "stranger:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c\n" };
    for (size_t i = 0; i < G_N_ELEMENTS(wrong); i++) {
        RdmigTlsCreds *cc = psk("c.psk", wrong[i], RDMIG_TLS_CLIENT);
        Pair p = { 0 };
        g_assert_false(handshake(&p, cc, sc, NULL));
        assert_error(p.server_err, RDMIG_ERROR_AUTH, "credentials do not match");
        assert_error(p.client_err, RDMIG_ERROR_AUTH, "refused by the peer");
        pair_clear(&p);
        rdmig_tls_creds_unref(cc);
    }
    rdmig_tls_creds_unref(sc);
}

static void test_x509_handshake(void)
{
    g_autofree char *pki = make_certs("pki");
    g_autofree char *other = make_certs("pki-other");
    g_autoptr(GError) err = NULL;
    RdmigTlsCreds *sc = rdmig_tls_creds_x509(pki, RDMIG_TLS_SERVER, &err);
    RdmigTlsCreds *cc = rdmig_tls_creds_x509(pki, RDMIG_TLS_CLIENT, &err);
    g_assert_no_error(err);
    Pair p = { 0 };
    g_assert_true(handshake(&p, cc, sc, "127.0.0.1"));
    pair_clear(&p);
    g_assert_true(handshake(&p, cc, sc, "localhost"));
    pair_clear(&p);

    /* The destination's certificate does not name the host connected to. */
    g_assert_false(handshake(&p, cc, sc, "127.0.0.2"));
    assert_error(p.client_err, RDMIG_ERROR_AUTH, "does not match");
    pair_clear(&p);

    /* A source with certificates of another CA: it does not trust the
     * destination, nor would the destination trust it. */
    RdmigTlsCreds *stranger = rdmig_tls_creds_x509(other, RDMIG_TLS_CLIENT, &err);
    g_assert_no_error(err);
    g_assert_false(handshake(&p, stranger, sc, "127.0.0.1"));
    assert_error(p.client_err, RDMIG_ERROR_AUTH, "issuer is unknown");
    pair_clear(&p);

    /* A source that trusts the destination's CA but whose own certificate
     * comes from another CA is refused by the destination. */
    g_autofree char *mixed = g_build_filename(tmpdir, "mixed", NULL);
    g_assert_cmpint(g_mkdir_with_parents(mixed, 0700), ==, 0);
    const char *copy[][2] = { { pki, "ca-cert.pem" },
                              { other, "client-cert.pem" },
                              { other, "client-key.pem" } };
    for (size_t i = 0; i < G_N_ELEMENTS(copy); i++) {
        g_autofree char *from = g_build_filename(copy[i][0], copy[i][1], NULL);
        g_autofree char *to = g_build_filename(mixed, copy[i][1], NULL);
        g_autofree char *text = NULL;
        gsize len;
        g_assert_true(g_file_get_contents(from, &text, &len, NULL));
        g_assert_true(g_file_set_contents(to, text, (gssize)len, NULL));
    }
    RdmigTlsCreds *half = rdmig_tls_creds_x509(mixed, RDMIG_TLS_CLIENT, &err);
    g_assert_no_error(err);
    g_assert_false(handshake(&p, half, sc, "127.0.0.1"));
    assert_error(p.server_err, RDMIG_ERROR_AUTH, NULL);
    pair_clear(&p);

    /* A PSK source at a certificate destination: nothing in common. */
    RdmigTlsCreds *pc = psk("c.psk", KEY_A, RDMIG_TLS_CLIENT);
    g_assert_false(handshake(&p, pc, sc, "127.0.0.1"));
    g_assert_nonnull(p.server_err);
    g_assert_nonnull(p.client_err);
    pair_clear(&p);

    rdmig_tls_creds_unref(pc);
    rdmig_tls_creds_unref(half);
    rdmig_tls_creds_unref(stranger);
    rdmig_tls_creds_unref(cc);
    rdmig_tls_creds_unref(sc);
}

/* ------------------------------------------------------------ frames */

static gpointer send_big(gpointer data)
{
    RdmigControl *c = data;
    g_autofree uint8_t *big = g_malloc(3u << 20);
    for (size_t i = 0; i < (3u << 20); i++)
        big[i] = (uint8_t)(i * 7);
    bool ok = rdmig_control_send(c, 9, big, 3u << 20, NULL) &&
              rdmig_control_send(c, 10, NULL, 0, NULL);
    return GINT_TO_POINTER(ok);
}

static void test_control_over_tls(void)
{
    RdmigTlsCreds *cc = psk("c.psk", KEY_A, RDMIG_TLS_CLIENT);
    RdmigTlsCreds *sc = psk("s.psk", KEY_A, RDMIG_TLS_SERVER);
    Pair p = { 0 };
    g_assert_true(handshake(&p, cc, sc, NULL));
    RdmigControl *a = rdmig_control_new_over(p.sv[0], p.client, 5000, 0, 0);
    RdmigControl *b = rdmig_control_new_over(p.sv[1], p.server, 5000, 0, 0);
    RdmigTls *raw = p.client;
    p.client = p.server = NULL; /* the channels own them now, and the sockets */
    p.sv[0] = p.sv[1] = -1;
    g_assert_true(rdmig_control_tls(a) == raw);

    /* A frame larger than any TLS record, while the other side reads. */
    GThread *t = g_thread_new("sender", send_big, a);
    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 5000, &err), ==, 1);
    g_assert_no_error(err);
    g_assert_cmpuint(f.hdr.type, ==, 9);
    g_assert_cmpuint(f.hdr.length, ==, 3u << 20);
    for (size_t i = 0; i < (3u << 20); i += 4093)
        g_assert_cmpuint(f.payload[i], ==, (uint8_t)(i * 7));
    g_assert_cmpint(rdmig_control_recv(b, &f, 5000, &err), ==, 1);
    g_assert_cmpuint(f.hdr.type, ==, 10);
    g_assert_true(GPOINTER_TO_INT(g_thread_join(t)));

    /* Two frames in one TLS record (a peer may pack them so): after the
     * first, the second is decrypted and buffered, and the socket shows
     * nothing.  The poll helpers must still say a frame is there. */
    uint8_t two[2 * RDMIG_CONTROL_HEADER_SIZE + 3];
    rdmig_frame_header_encode(two, 11, 3, 2);
    memcpy(two + RDMIG_CONTROL_HEADER_SIZE, "abc", 3);
    rdmig_frame_header_encode(two + RDMIG_CONTROL_HEADER_SIZE + 3, 12, 0, 3);
    g_assert_cmpint(rdmig_tls_send(raw, two, sizeof(two)), ==, (ssize_t)sizeof(two));
    g_assert_cmpint(rdmig_control_recv(b, &f, 5000, &err), ==, 1);
    g_assert_cmpuint(f.hdr.type, ==, 11);
    g_assert_cmpmem(f.payload, 3, "abc", 3);
    struct pollfd pfd;
    int timeout = 1000;
    rdmig_control_pollfd(b, &pfd, &timeout);
    g_assert_cmpint(timeout, ==, 0);
    g_assert_cmpint(poll(&pfd, 1, timeout), ==, 0); /* the socket is empty... */
    g_assert_true(rdmig_control_readable(b, &pfd)); /* ...the frame is there */
    g_assert_cmpint(rdmig_control_recv(b, &f, 0, &err), ==, 1);
    g_assert_cmpuint(f.hdr.type, ==, 12);
    timeout = 1000;
    rdmig_control_pollfd(b, &pfd, &timeout);
    g_assert_cmpint(timeout, ==, 1000);
    g_assert_cmpint(rdmig_control_recv(b, &f, 0, &err), ==, 0);

    /* A clean close between frames is a close, not a truncation. */
    rdmig_control_free(a);
    g_assert_cmpint(rdmig_control_recv(b, &f, 5000, &err), ==, -1);
    /* Not "... in the middle of a frame": the whole message, as operators read it. */
    assert_error(err, RDMIG_ERROR_LINK, NULL);
    g_assert_cmpstr(err->message, ==, "peer closed the control channel");
    rdmig_control_free(b);
    pair_clear(&p);
    rdmig_tls_creds_unref(cc);
    rdmig_tls_creds_unref(sc);
}

/* A peer that sends garbage after the handshake: a bad record, told as such. */
static void test_bad_record(void)
{
    RdmigTlsCreds *cc = psk("c.psk", KEY_A, RDMIG_TLS_CLIENT);
    RdmigTlsCreds *sc = psk("s.psk", KEY_A, RDMIG_TLS_SERVER);
    Pair p = { 0 };
    g_assert_true(handshake(&p, cc, sc, NULL));
    RdmigControl *b = rdmig_control_new_over(p.sv[1], p.server, 2000, 0, 0);
    p.server = NULL;
    p.sv[1] = -1;
    static const uint8_t junk[] = { 0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3, 4, 5, 6, 7, 8,
                                    9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };
    g_assert_cmpint(write(p.sv[0], junk, sizeof(junk)), ==, (ssize_t)sizeof(junk));
    RdmigFrame f;
    g_autoptr(GError) err = NULL;
    g_assert_cmpint(rdmig_control_recv(b, &f, 2000, &err), ==, -1);
    assert_error(err, RDMIG_ERROR_LINK, "receive failed");
    rdmig_control_free(b);
    pair_clear(&p);
    rdmig_tls_creds_unref(cc);
    rdmig_tls_creds_unref(sc);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL);
    /* Warnings (a key others can read, an unknown identity) are expected. */
    g_log_set_fatal_mask("rdmig-transport", G_LOG_LEVEL_ERROR);
    tmpdir = g_dir_make_tmp("rdmig-test-tls-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    g_test_add_func("/tls/psk-parse", test_psk_parse);
    g_test_add_func("/tls/psk-files", test_psk_files);
    g_test_add_func("/tls/x509-files", test_x509_files);
    g_test_add_func("/tls/psk-handshake", test_psk_handshake);
    g_test_add_func("/tls/psk-mismatch", test_psk_mismatch);
    g_test_add_func("/tls/x509-handshake", test_x509_handshake);
    g_test_add_func("/tls/control-over-tls", test_control_over_tls);
    g_test_add_func("/tls/bad-record", test_bad_record);
    int rc = g_test_run();
    g_autofree char *cmd = g_strdup_printf("rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        g_printerr("could not remove %s\n", tmpdir);
    g_free(tmpdir);
    return rc;
}

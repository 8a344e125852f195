/* SPDX-License-Identifier: MIT */
/*
 * engine/link-secrets.c over real TLS 1.3 links (PSK, socketpairs): both ends
 * derive the same data token without sending it; a source that comes back
 * proves the session with the secret of the first link; a proof taken from
 * one link is worth nothing on another; a holder of the same key that was
 * never in the session proves nothing; in clear the session id is the proof.
 */
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/link-secrets.h"
#include "test-util.h"
#include "tls-pair.h"

#define KEY "qemu:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"

static RdmigTlsCreds *client_creds, *server_creds;

/* A link: the control channel of @src and of @dst over one TLS session. */
static void link_up(RdmigSession *src, RdmigSession *dst)
{
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    RdmigTls *c = rdmig_tls_new(client_creds, sv[0], NULL, NULL);
    RdmigTls *s = rdmig_tls_new(server_creds, sv[1], NULL, NULL);
    g_assert_true(tls_pair_handshake(c, sv[0], s, sv[1], NULL, NULL));
    src->ctl = rdmig_control_new_over(sv[0], c, 5000, 0, 0);
    dst->ctl = rdmig_control_new_over(sv[1], s, 5000, 0, 0);
}

static void link_down(RdmigSession *src, RdmigSession *dst)
{
    rdmig_control_free(src->ctl);
    rdmig_control_free(dst->ctl);
    src->ctl = dst->ctl = NULL;
}

static void test_tokens(void)
{
    RdmigSession src = { 0 }, dst = { 0 };
    link_up(&src, &dst);
    uint64_t a = rdmig_link_data_token(&src, 1), b = rdmig_link_data_token(&dst, 2);
    g_assert_cmpuint(a, ==, b);
    g_assert_cmpuint(a, !=, 1);
    link_down(&src, &dst);
    link_up(&src, &dst);
    g_assert_cmpuint(rdmig_link_data_token(&src, 1), !=, a); /* each link its own */
    link_down(&src, &dst);
    /* In clear: the token the destination drew, sent in HELLO_ACK. */
    g_assert_cmpuint(rdmig_link_data_token(&src, 77), ==, 77);
}

static void test_recovery_proof(void)
{
    RdmigSession src = { 0 }, dst = { 0 }, thief = { 0 }, dst2 = { 0 };
    memset(src.session_id, 0xab, sizeof(src.session_id));
    memcpy(dst.session_id, src.session_id, sizeof(dst.session_id));

    /* The first link: both keep the secret; the HELLO carries the id. */
    link_up(&src, &dst);
    g_assert_true(rdmig_link_keep_secret(&src, NULL));
    g_assert_true(rdmig_link_keep_secret(&dst, NULL));
    g_assert_cmpmem(src.recovery_secret, 32, dst.recovery_secret, 32);
    uint8_t id[RDMIG_SESSION_ID_LEN];
    rdmig_link_session_id(&src, false, id);
    g_assert_cmpmem(id, sizeof(id), src.session_id, sizeof(id));
    link_down(&src, &dst);

    /* The source comes back on a new link: its proof is accepted, and it is
     * not the session id that travelled on the first. */
    link_up(&src, &dst);
    uint8_t proof[RDMIG_SESSION_ID_LEN];
    rdmig_link_session_id(&src, true, proof);
    g_assert_true(memcmp(proof, src.session_id, sizeof(proof)) != 0);
    g_assert_true(rdmig_link_is_own_source(&dst, proof));
    g_assert_false(rdmig_link_is_own_source(&dst, src.session_id));
    link_down(&src, &dst);

    /* That proof, replayed on another link, is refused. */
    link_up(&src, &dst);
    g_assert_false(rdmig_link_is_own_source(&dst, proof));
    link_down(&src, &dst);

    /* Someone with the same key who knows the session id (it was in the
     * first HELLO) but was never in the session: refused. */
    memcpy(thief.session_id, src.session_id, sizeof(thief.session_id));
    link_up(&thief, &dst);
    uint8_t forged[RDMIG_SESSION_ID_LEN];
    rdmig_link_session_id(&thief, true, forged);
    g_assert_false(rdmig_link_is_own_source(&dst, forged));
    link_down(&thief, &dst);

    /* A destination that never had the secret accepts no proof at all. */
    link_up(&src, &dst2);
    rdmig_link_session_id(&src, true, proof);
    g_assert_false(rdmig_link_is_own_source(&dst2, proof));
    link_down(&src, &dst2);
}

static void test_clear(void)
{
    /* No TLS: the session id is the proof (loopback, or --insecure). */
    int sv[2];
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    RdmigSession src = { 0 }, dst = { 0 };
    src.ctl = rdmig_control_new(sv[0], 1000);
    dst.ctl = rdmig_control_new(sv[1], 1000);
    memset(src.session_id, 0x5a, sizeof(src.session_id));
    memcpy(dst.session_id, src.session_id, sizeof(dst.session_id));
    g_assert_true(rdmig_link_keep_secret(&src, NULL));
    g_assert_false(src.have_recovery_secret);
    uint8_t id[RDMIG_SESSION_ID_LEN];
    rdmig_link_session_id(&src, true, id);
    g_assert_cmpmem(id, sizeof(id), src.session_id, sizeof(id));
    g_assert_true(rdmig_link_is_own_source(&dst, id));
    id[3] ^= 1;
    g_assert_false(rdmig_link_is_own_source(&dst, id));
    link_down(&src, &dst);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_autofree char *dir = g_dir_make_tmp("rdmig-test-secrets-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "keys.psk", NULL);
    g_assert_true(g_file_set_contents(path, KEY, -1, NULL));
    g_assert_cmpint(chmod(path, 0600), ==, 0);
    client_creds = rdmig_tls_creds_psk(path, RDMIG_TLS_CLIENT, NULL);
    server_creds = rdmig_tls_creds_psk(path, RDMIG_TLS_SERVER, NULL);
    g_assert_nonnull(client_creds);
    g_assert_nonnull(server_creds);
    unlink(path);
    rmdir(dir);
    g_test_add_func("/link-secrets/tokens", test_tokens);
    g_test_add_func("/link-secrets/recovery-proof", test_recovery_proof);
    g_test_add_func("/link-secrets/clear", test_clear);
    int rc = g_test_run();
    rdmig_tls_creds_unref(client_creds);
    rdmig_tls_creds_unref(server_creds);
    return rc;
}

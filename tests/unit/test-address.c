/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of address parsing and formatting (transport/address.c): what
 * operators type, what rdmig prints back, and the errors for what it cannot
 * use.
 */
#include <net/if.h>
#include <netinet/in.h>
#include <string.h>

#include "rdmig/error.h"
#include "test-util.h"
#include "transport/address.h"

static char *roundtrip(const char *in, bool allow_port0)
{
    struct sockaddr_storage ss;
    socklen_t len = 0;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_address_parse(in, allow_port0, &ss, &len, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(len, >, 0);
    return rdmig_address_format((struct sockaddr *)&ss);
}

static void test_roundtrip(void)
{
    static const char *const same[][2] = {
        { "127.0.0.1:4444", "127.0.0.1:4444" },
        { "tcp:127.0.0.1:1", "127.0.0.1:1" },
        { "[::1]:65535", "[::1]:65535" },
        { "[fd77::2]:0", "[fd77::2]:0" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(same); i++) {
        g_autofree char *out = roundtrip(same[i][0], true);
        g_assert_cmpstr(out, ==, same[i][1]);
    }
}

/* A link-local address keeps its interface both ways: without it the
 * address printed for the source to connect to would be unusable. */
static void test_link_local_scope(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_address_parse("[fe80::1%lo]:7", false, &ss, &len, &err));
    g_assert_no_error(err);
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
    g_assert_cmpint(s6->sin6_family, ==, AF_INET6);
    g_assert_cmpuint(s6->sin6_scope_id, ==, if_nametoindex("lo"));
    g_assert_cmpuint(s6->sin6_scope_id, !=, 0);
    g_autofree char *out = rdmig_address_format((struct sockaddr *)&ss);
    g_assert_cmpstr(out, ==, "[fe80::1%lo]:7");
}

static void test_invalid(void)
{
    static const struct { const char *in; bool port0; int code; const char *says; } bad[] = {
        { "", true, RDMIG_ERROR_INVALID, "empty" },
        { "localhost", true, RDMIG_ERROR_INVALID, "HOST:PORT" },
        { ":80", true, RDMIG_ERROR_INVALID, "HOST:PORT" },
        { "::1:80", true, RDMIG_ERROR_INVALID, "[ADDR]:PORT" },
        { "[::1]80", true, RDMIG_ERROR_INVALID, "[IPV6]:PORT" },
        { "[::1:80", true, RDMIG_ERROR_INVALID, "[IPV6]:PORT" },
        { "127.0.0.1:70000", true, RDMIG_ERROR_INVALID, "70000" },
        { "127.0.0.1:-1", true, RDMIG_ERROR_INVALID, "port" },
        { "127.0.0.1:0", false, RDMIG_ERROR_INVALID, "1..65535" },
        { "127.0.0.1:", true, RDMIG_ERROR_INVALID, "port" },
        { "no-such-host.invalid:80", true, RDMIG_ERROR_CONNECT, "no-such-host.invalid" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        g_autoptr(GError) err = NULL;
        g_assert_false(rdmig_address_parse(bad[i].in, bad[i].port0, &ss, &len, &err));
        assert_error(err, bad[i].code, bad[i].says);
    }
}

/* Off this host only with --insecure: which addresses count as this host. */
static void test_loopback(void)
{
    static const char *const loopback[] = { "127.0.0.1:1", "127.255.0.9:0", "[::1]:4444",
                                            "[::ffff:127.0.0.1]:1", "tcp:127.0.0.1:9",
                                            "localhost:1" };
    static const char *const not_loopback[] = { "0.0.0.0:0", "10.80.1.2:4444", "[::]:0",
                                                "[fe80::1]:9", "128.0.0.1:1",
                                                "[::ffff:10.0.0.1]:1", "192.0.2.1:9" };
    for (size_t i = 0; i < G_N_ELEMENTS(loopback); i++)
        g_assert_true(rdmig_address_is_loopback(loopback[i]));
    for (size_t i = 0; i < G_N_ELEMENTS(not_loopback); i++)
        if (rdmig_address_is_loopback(not_loopback[i]))
            g_test_fail_printf("%s counted as loopback", not_loopback[i]);
    /* What does not parse is for the caller's own parse to report. */
    g_assert_true(rdmig_address_is_loopback("no port"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/address/roundtrip", test_roundtrip);
    g_test_add_func("/address/link-local-scope", test_link_local_scope);
    g_test_add_func("/address/invalid", test_invalid);
    g_test_add_func("/address/loopback", test_loopback);
    return g_test_run();
}

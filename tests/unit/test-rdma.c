/* SPDX-License-Identifier: MIT */
/* rdma/: the checks that need no device (completion.c's status mapping, mr.c's
 * memlock check, device.c's probe); the rest runs on soft-RoCE in the rdma suite. */
#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/resource.h>

#include "rdma/rdma.h"
#include "test-util.h"

static void test_wc_table(void)
{
    g_assert_cmpint(rdmig_rdma_wc_errno(IBV_WC_SUCCESS), ==, 0);
    for (int st = 1; st <= IBV_WC_TM_RNDV_INCOMPLETE; st++) {
        int e = rdmig_rdma_wc_errno((enum ibv_wc_status)st);
        if (e >= 0)
            g_error("completion status %d (%s) maps to %d, not a negative errno", st,
                    ibv_wc_status_str((enum ibv_wc_status)st), e);
        const char *why = rdmig_rdma_wc_reason((enum ibv_wc_status)st);
        g_assert_nonnull(why);
        g_assert_cmpuint(strlen(why), >, 0);
    }
    /* The ones an operator meets: an unreachable peer, a refused key, a flush. */
    g_assert_cmpint(rdmig_rdma_wc_errno(IBV_WC_RETRY_EXC_ERR), ==, -ETIMEDOUT);
    g_assert_nonnull(strstr(rdmig_rdma_wc_reason(IBV_WC_RETRY_EXC_ERR), "unreachable"));
    g_assert_cmpint(rdmig_rdma_wc_errno(IBV_WC_REM_ACCESS_ERR), ==, -EACCES);
    /* Only the peer's refusal is EACCES (the postcopy pager reads it as the
     * source's memory gone); a local access error is our own fault. */
    g_assert_cmpint(rdmig_rdma_wc_errno(IBV_WC_LOC_ACCESS_ERR), ==, -EFAULT);
    g_assert_cmpint(rdmig_rdma_wc_errno(IBV_WC_WR_FLUSH_ERR), ==, -ECANCELED);
    /* A status from a newer rdma-core: an error all the same. */
    g_assert_cmpint(rdmig_rdma_wc_errno((enum ibv_wc_status)999), ==, -EIO);
    g_assert_nonnull(rdmig_rdma_wc_reason((enum ibv_wc_status)999));
}

/* The limit is checked before the device is touched (pd is NULL here). */
static void test_memlock(void)
{
    struct rlimit saved;
    g_assert_cmpint(getrlimit(RLIMIT_MEMLOCK, &saved), ==, 0);
    struct rlimit low = { .rlim_cur = 16u << 20, .rlim_max = saved.rlim_max };
    if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max < low.rlim_cur)
        low.rlim_cur = saved.rlim_max;
    g_assert_cmpint(setrlimit(RLIMIT_MEMLOCK, &low), ==, 0);
    uint64_t limit_mib = low.rlim_cur >> 20;
    static uint8_t buf[4096] __attribute__((aligned(4096)));

    GError *err = NULL;
    g_assert_null(rdmig_rdma_register(NULL, buf, 64u << 20, 0, 0, &err));
    assert_error(err, RDMIG_ERROR_RESOURCE, "RLIMIT_MEMLOCK");
    g_autofree char *needs = g_strdup_printf("at least %u MiB", 64);
    g_autofree char *limit = g_strdup_printf("limit is %" G_GUINT64_FORMAT " MiB", limit_mib);
    g_assert_nonnull(strstr(err->message, needs));
    g_assert_nonnull(strstr(err->message, limit));
    g_assert_nonnull(strstr(err->message, "ulimit -l"));
    g_clear_error(&err);

    /* What is registered already counts: 12 MiB more on top of 10 MiB. */
    g_assert_null(rdmig_rdma_register(NULL, buf, 12u << 20, 0, 10u << 20, &err));
    assert_error(err, RDMIG_ERROR_RESOURCE, "at least 22 MiB");
    g_clear_error(&err);

    g_assert_cmpint(setrlimit(RLIMIT_MEMLOCK, &saved), ==, 0);
}

static void test_probe(void)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GDir) d = g_dir_open("/sys/class/infiniband", 0, NULL);
    bool have = d && g_dir_read_name(d);
    g_assert_cmpint(rdmig_rdma_probe(&err), ==, have);
    if (!have)
        assert_error(err, RDMIG_ERROR_UNSUPPORTED, "no RDMA device");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/rdma/wc-table", test_wc_table);
    g_test_add_func("/rdma/memlock", test_memlock);
    g_test_add_func("/rdma/probe", test_probe);
    return g_test_run();
}

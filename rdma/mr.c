/* SPDX-License-Identifier: MIT */
/* Memory regions: registration, after checking RLIMIT_MEMLOCK so that the
 * error says how much is needed rather than a bare ENOMEM. */
#define G_LOG_DOMAIN "rdmig-rdma"

#include <errno.h>
#include <sys/resource.h>

#include "rdma.h"
#include "rdmig/error.h"

struct ibv_mr *rdmig_rdma_register(struct ibv_pd *pd, void *addr, size_t len, int access,
                                   uint64_t already_locked, GError **error)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        already_locked + len > rl.rlim_cur) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "registering %zu MiB for RDMA needs RLIMIT_MEMLOCK of at least %" G_GUINT64_FORMAT
                    " MiB, but the limit is %" G_GUINT64_FORMAT " MiB (raise it: ulimit -l "
                    "unlimited, or LimitMEMLOCK=infinity in a systemd unit)", len >> 20,
                    (already_locked + len + (1 << 20) - 1) >> 20, (uint64_t)rl.rlim_cur >> 20);
        return NULL;
    }
    struct ibv_mr *mr = ibv_reg_mr_iova(pd, addr, len, 0, access);
    if (!mr)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "ibv_reg_mr of %zu MiB at %p: %s", len >> 20, addr, g_strerror(errno));
    return mr;
}

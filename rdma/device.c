/* SPDX-License-Identifier: MIT */
/* RDMA devices: whether this host has one that opens. */
#define G_LOG_DOMAIN "rdmig-rdma"

#include "rdma.h"
#include "rdmig/error.h"

bool rdmig_rdma_probe(GError **error)
{
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list || n == 0) {
        if (list)
            ibv_free_device_list(list);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "no RDMA device on this host (ibv_get_device_list found none; load a "
                    "driver, or rdma_rxe for soft-RoCE)");
        return false;
    }
    ibv_free_device_list(list);
    return true;
}

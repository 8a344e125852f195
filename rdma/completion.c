/* SPDX-License-Identifier: MIT */
/* Completion statuses: one table to negative errno and to words for an
 * operator, for the whole backend. */
#define G_LOG_DOMAIN "rdmig-rdma"

#include <errno.h>

#include "rdma.h"

static const struct {
    int err;
    const char *reason;
} wc_table[] = {
    [IBV_WC_SUCCESS] = { 0, "success" },
    [IBV_WC_LOC_LEN_ERR] = { -EINVAL, "local length error" },
    [IBV_WC_LOC_QP_OP_ERR] = { -EINVAL, "local QP operation error" },
    [IBV_WC_LOC_EEC_OP_ERR] = { -EINVAL, "local EEC operation error" },
    [IBV_WC_LOC_PROT_ERR] = { -EFAULT, "local protection error (buffer not registered)" },
    [IBV_WC_WR_FLUSH_ERR] = { -ECANCELED, "flushed: the connection failed earlier" },
    [IBV_WC_MW_BIND_ERR] = { -EINVAL, "memory window bind error" },
    [IBV_WC_BAD_RESP_ERR] = { -EPROTO, "bad response from the peer" },
    [IBV_WC_LOC_ACCESS_ERR] = { -EFAULT, "local access error" },
    [IBV_WC_REM_INV_REQ_ERR] = { -EPROTO, "the peer found the request invalid (out of range?)" },
    [IBV_WC_REM_ACCESS_ERR] = { -EACCES, "the peer refused access (bad key, range or rights)" },
    [IBV_WC_REM_OP_ERR] = { -EREMOTEIO, "the peer failed the operation" },
    [IBV_WC_RETRY_EXC_ERR] = { -ETIMEDOUT, "transport retries exhausted: the peer is unreachable" },
    [IBV_WC_RNR_RETRY_EXC_ERR] = { -ETIMEDOUT, "receiver-not-ready retries exhausted" },
    [IBV_WC_LOC_RDD_VIOL_ERR] = { -EINVAL, "local RDD violation" },
    [IBV_WC_REM_INV_RD_REQ_ERR] = { -EPROTO, "remote invalid RD request" },
    [IBV_WC_REM_ABORT_ERR] = { -ECONNABORTED, "the peer aborted" },
    [IBV_WC_INV_EECN_ERR] = { -EINVAL, "invalid EEC number" },
    [IBV_WC_INV_EEC_STATE_ERR] = { -EINVAL, "invalid EEC state" },
    [IBV_WC_FATAL_ERR] = { -EIO, "fatal device error" },
    [IBV_WC_RESP_TIMEOUT_ERR] = { -ETIMEDOUT, "response timeout" },
    [IBV_WC_GENERAL_ERR] = { -EIO, "general error" },
};

int rdmig_rdma_wc_errno(enum ibv_wc_status status)
{
    if ((unsigned)status < G_N_ELEMENTS(wc_table) && (wc_table[status].err || !status))
        return wc_table[status].err;
    return -EIO;
}

const char *rdmig_rdma_wc_reason(enum ibv_wc_status status)
{
    if ((unsigned)status < G_N_ELEMENTS(wc_table) && wc_table[status].reason)
        return wc_table[status].reason;
    return ibv_wc_status_str(status);
}

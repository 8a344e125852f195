/* SPDX-License-Identifier: MIT */
#define G_LOG_DOMAIN "rdmig-rdma"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>

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

bool rdmig_rdma_wait_event(struct rdma_event_channel *ch, enum rdma_cm_event_type expect,
                           int timeout_ms, struct rdma_cm_id **new_id, void *private_data,
                           size_t pd_len, GError **error)
{
    struct pollfd p = { .fd = ch->fd, .events = POLLIN };
    int n;
    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                    "no %s from rdma_cm within %d ms", rdma_event_str(expect), timeout_ms);
        return false;
    }
    struct rdma_cm_event *ev;
    if (rdma_get_cm_event(ch, &ev)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "rdma_get_cm_event: %s",
                    g_strerror(errno));
        return false;
    }
    enum rdma_cm_event_type got = ev->event;
    int status = ev->status;
    if (new_id)
        *new_id = ev->id;
    if (private_data && got == RDMA_CM_EVENT_CONNECT_REQUEST) {
        memset(private_data, 0, pd_len);
        memcpy(private_data, ev->param.conn.private_data,
               MIN(pd_len, (size_t)ev->param.conn.private_data_len));
    }
    rdma_ack_cm_event(ev);
    if (got != expect) {
        const char *hint = got == RDMA_CM_EVENT_REJECTED ? " (the peer refused the connection)"
                         : got == RDMA_CM_EVENT_UNREACHABLE ? " (the peer is unreachable)"
                         : got == RDMA_CM_EVENT_ADDR_ERROR ? " (no RDMA device has a route there)"
                         : "";
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "rdma_cm: expected %s, got %s%s%s%s",
                    rdma_event_str(expect), rdma_event_str(got), status ? ": " : "",
                    status ? g_strerror(status < 0 ? -status : status) : "", hint);
        return false;
    }
    return true;
}

bool rdmig_rdma_set_ack_timeout(struct rdma_cm_id *id, uint8_t exponent, GError **error)
{
    uint8_t v = exponent;
    if (v && rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &v, sizeof(v))) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "setting the RDMA ack timeout (exponent %u): %s", v, g_strerror(errno));
        return false;
    }
    return true;
}

bool rdmig_rdma_endpoint_create_qp(RdmigRdmaEndpoint *ep, struct ibv_pd *pd, uint32_t depth,
                                   uint32_t max_sge, GError **error)
{
    struct ibv_context *ctx = ep->id->verbs;
    ep->comp = ibv_create_comp_channel(ctx);
    if (!ep->comp)
        goto fail;
    ep->cq = ibv_create_cq(ctx, (int)depth * 2, NULL, ep->comp, 0);
    if (!ep->cq)
        goto fail;
    if (ibv_req_notify_cq(ep->cq, 0))
        goto fail;
    struct ibv_qp_init_attr attr = {
        .send_cq = ep->cq,
        .recv_cq = ep->cq,
        .qp_type = IBV_QPT_RC,
        .cap = { .max_send_wr = depth, .max_recv_wr = 1, .max_send_sge = max_sge,
                 .max_recv_sge = 1 },
        .sq_sig_all = 0,
    };
    if (rdma_create_qp(ep->id, pd, &attr))
        goto fail;
    return true;
fail:
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                "creating RDMA queue pair (depth %u, %u SGEs): %s", depth, max_sge,
                g_strerror(errno));
    return false;
}

void rdmig_rdma_endpoint_destroy(RdmigRdmaEndpoint *ep)
{
    if (ep->id && ep->id->qp)
        rdma_destroy_qp(ep->id);
    if (ep->cq)
        ibv_destroy_cq(ep->cq);
    if (ep->comp)
        ibv_destroy_comp_channel(ep->comp);
    if (ep->id)
        rdma_destroy_id(ep->id);
    if (ep->ch)
        rdma_destroy_event_channel(ep->ch);
    memset(ep, 0, sizeof(*ep));
}

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
    struct ibv_mr *mr = ibv_reg_mr(pd, addr, len, access);
    if (!mr)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "ibv_reg_mr of %zu MiB at %p: %s", len >> 20, addr, g_strerror(errno));
    return mr;
}

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
    [IBV_WC_LOC_ACCESS_ERR] = { -EACCES, "local access error" },
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

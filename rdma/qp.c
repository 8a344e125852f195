/* SPDX-License-Identifier: MIT */
/* Queue pairs: a connection's completion channel, completion queue and RC
 * queue pair, made together and torn down together. */
#define G_LOG_DOMAIN "rdmig-rdma"

#include <errno.h>
#include <string.h>

#include "rdma.h"
#include "rdmig/error.h"

/* 0 leaves rdma_cm's choice; rdma_connect()/rdma_accept() apply it. */
static bool set_ack_timeout(struct rdma_cm_id *id, uint8_t exponent, GError **error)
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
                                   uint32_t max_sge, uint8_t ack_timeout, GError **error)
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
    return set_ack_timeout(ep->id, ack_timeout, error);
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

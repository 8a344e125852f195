/* SPDX-License-Identifier: MIT */
/*
 * Verbs and rdma_cm helpers, one job a file: device.c (is there a device),
 * cm.c (connection-manager events with a deadline), qp.c (a connection's
 * queue pair and completion queue), mr.c (registration with a memlock
 * check), completion.c (completion status to errno and words).  Nothing
 * here knows about migration; transport/rdma.c builds the ops table on it.
 */
#ifndef RDMIG_RDMA_H
#define RDMIG_RDMA_H

#include <glib.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <stdbool.h>
#include <stdint.h>

/* Retries before a QP gives up on an unreachable peer.  7 means "forever" to
 * the IB spec (and to rxe), so a dead link would never surface: stay at 6
 * (about 6 x 3 s on soft-RoCE before IBV_WC_RETRY_EXC_ERR). */
#define RDMIG_RDMA_RETRY_COUNT 6
#define RDMIG_RDMA_RNR_RETRY 7   /* we post no receives the peer could exhaust */
#define RDMIG_RDMA_RESOLVE_MS 2000

/* Per-connection resources, created together for an rdma_cm id. */
typedef struct {
    struct rdma_event_channel *ch;
    struct rdma_cm_id *id;
    struct ibv_comp_channel *comp;
    struct ibv_cq *cq;
} RdmigRdmaEndpoint;

/** rdmig_rdma_probe: true if some RDMA device is present and opens. */
bool rdmig_rdma_probe(GError **error);

/** Waits up to @timeout_ms for the next event on @ch; fails naming the
 *  event that came instead of @expect. The event is acked. Sets
 *  @private_data (copy, up to @pd_len bytes) for connect requests. */
bool rdmig_rdma_wait_event(struct rdma_event_channel *ch, enum rdma_cm_event_type expect,
                           int timeout_ms, struct rdma_cm_id **new_id, void *private_data,
                           size_t pd_len, GError **error);

/** Creates completion channel, CQ and an RC QP on @id, in @pd, with
 *  @ack_timeout as the exponent of its resend timer (4.096 us x 2^N; 0 leaves
 *  rdma_cm's choice); rdma_connect()/rdma_accept() apply it. (rdma/qp.c) */
bool rdmig_rdma_endpoint_create_qp(RdmigRdmaEndpoint *ep, struct ibv_pd *pd, uint32_t depth,
                                   uint32_t max_sge, uint8_t ack_timeout, GError **error);
/** QP to error, flush, destroy everything (idempotent). */
void rdmig_rdma_endpoint_destroy(RdmigRdmaEndpoint *ep);

/** Registers [addr, addr+len) after checking RLIMIT_MEMLOCK against
 *  @already_locked + len; the error says how much is needed.  Zero-based:
 *  the region's addresses, local (SGEs) and remote (RDMA READ/WRITE), are
 *  offsets 0..len, so no key tells the peer where the memory is mapped. */
struct ibv_mr *rdmig_rdma_register(struct ibv_pd *pd, void *addr, size_t len, int access,
                                   uint64_t already_locked, GError **error);

/** Negative errno for a completion status (one table for the whole backend). */
int rdmig_rdma_wc_errno(enum ibv_wc_status status);
/** What a completion status means for an operator. */
const char *rdmig_rdma_wc_reason(enum ibv_wc_status status);

#endif

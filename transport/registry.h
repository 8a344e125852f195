/* SPDX-License-Identifier: MIT */
/* The registry's internal side: the built-in transports' tables (defined by
 * tcp.c and rdma.c, registered by registry.c on first use) and the one
 * function that chooses transports, for both roles. */
#ifndef RDMIG_TRANSPORT_REGISTRY_H
#define RDMIG_TRANSPORT_REGISTRY_H

#include "rdmig/transport.h"

extern const RdmigTransportOps rdmig_tcp_transport_ops;
#ifdef RDMIG_HAVE_RDMA
extern const RdmigTransportOps rdmig_rdma_transport_ops;
#endif

/** rdmig_transport_choose: the registered transports that have all of
 *  @caps and probe on this host, best first (one that spares the target's
 *  CPU before one that does not; otherwise in registration order).  @only, a
 *  name from the caller's configuration ("auto" or NULL: any), keeps that
 *  one alone.  Fills at most @max in @out and returns how many; 0 with
 *  @error saying why each was left out.  Any thread. */
uint32_t rdmig_transport_choose(uint32_t caps, const char *only, const RdmigTransportOps **out,
                                uint32_t max, GError **error);

#endif

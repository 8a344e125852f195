/* SPDX-License-Identifier: MIT */
/* Built-in transports, registered on first use of the registry. */
#ifndef RDMIG_TRANSPORT_REGISTRY_H
#define RDMIG_TRANSPORT_REGISTRY_H

#include "rdmig/transport.h"

extern const RdmigTransportOps rdmig_tcp_transport_ops;
#ifdef RDMIG_HAVE_RDMA
extern const RdmigTransportOps rdmig_rdma_transport_ops;
#endif

/** Registers the transports built into this library (tcp, and rdma when built). */
void rdmig_transport_register_builtin(void);

#endif

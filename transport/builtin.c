/* SPDX-License-Identifier: MIT */
/* The transports compiled into this library, in order of registration. */
#define G_LOG_DOMAIN "rdmig-transport"

#include "registry.h"

void rdmig_transport_register_builtin(void)
{
    g_autoptr(GError) err = NULL;
    if (!rdmig_transport_register(&rdmig_tcp_transport_ops, &err))
        g_critical("built-in tcp transport: %s", err->message);
#ifdef RDMIG_HAVE_RDMA
    g_clear_error(&err);
    if (!rdmig_transport_register(&rdmig_rdma_transport_ops, &err))
        g_critical("built-in rdma transport: %s", err->message);
#endif
}

/* SPDX-License-Identifier: MIT */
/*
 * What the built-in backends (tcp.c, rdma.c) share, after SPDK's transports
 * that embed a base struct: the configuration with its defaults, the table
 * of registered regions that the data path reads without a lock, and the
 * record of a connection's first failure.  The ops table itself stays each
 * backend's own.
 */
#ifndef RDMIG_TRANSPORT_BACKEND_H
#define RDMIG_TRANSPORT_BACKEND_H

#include <glib.h>
#include <stdarg.h>
#include <stdbool.h>

#include "rdmig/transport.h"

/* Regions one transport instance may hold at once (RAM blocks, staging
 * buffers, zero-copy aliases). */
#define RDMIG_BACKEND_MAX_REGIONS 1024

/* Embedded first in each backend's struct RdmigTransport. */
typedef struct {
    RdmigTransportConfig cfg;                    /* the caller's, defaults filled in */
    GMutex lock;                                 /* the region table's writers */
    gpointer regions[RDMIG_BACKEND_MAX_REGIONS]; /* atomic: read by the data path */
    bool reserved[RDMIG_BACKEND_MAX_REGIONS];    /* being registered, not published yet */
    gint regions_end;                            /* atomic: slots in use are below it */
} RdmigBackend;

/** rdmig_backend_init: @config (NULL: all defaults) with its zero members
 *  set to the backend's @depth and @max_io, and a 10 s connect timeout. */
void rdmig_backend_init(RdmigBackend *b, const RdmigTransportConfig *config, uint32_t depth,
                        uint32_t max_io);
void rdmig_backend_clear(RdmigBackend *b);

/** rdmig_backend_reserve: a free region slot, held until published or
 *  released (so that a slow registration can run without the lock); -1
 *  with @error when the table is full. */
int rdmig_backend_reserve(RdmigBackend *b, GError **error);
/** rdmig_backend_publish: @region in @slot, visible to the data path. */
void rdmig_backend_publish(RdmigBackend *b, int slot, gpointer region);
/** rdmig_backend_release: frees a reserved slot that was never published. */
void rdmig_backend_release(RdmigBackend *b, int slot);
/** rdmig_backend_remove: takes the region in @slot off the table. */
void rdmig_backend_remove(RdmigBackend *b, int slot);
/** rdmig_backend_region: the region in @slot, or NULL.  Any thread, no lock. */
static inline gpointer rdmig_backend_region(RdmigBackend *b, uint32_t slot)
{
    return slot < RDMIG_BACKEND_MAX_REGIONS ? g_atomic_pointer_get(&b->regions[slot]) : NULL;
}
/** rdmig_backend_regions_end: one past the highest slot ever published. */
static inline int rdmig_backend_regions_end(RdmigBackend *b)
{
    return g_atomic_int_get(&b->regions_end);
}

/* A connection's failure: the first one is kept, with its errno and text. */
typedef struct {
    bool failed;
    int err;           /* positive errno */
    char text[256];
} RdmigConnFailure;

/** rdmig_conn_failure_set: records the failure unless one is recorded
 *  already; true if this was the first (the caller then tears down). */
bool rdmig_conn_failure_set(RdmigConnFailure *f, int err, const char *fmt, va_list ap)
    G_GNUC_PRINTF(3, 0);

#endif

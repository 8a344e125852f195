/* SPDX-License-Identifier: MIT */
/* What the built-in backends share (transport/backend.h). */
#define G_LOG_DOMAIN "rdmig-transport"

#include "backend.h"

#include <stdio.h>

#include "rdmig/error.h"

void rdmig_backend_init(RdmigBackend *b, const RdmigTransportConfig *config, uint32_t depth,
                        uint32_t max_io)
{
    if (config)
        b->cfg = *config;
    if (!b->cfg.queue_depth)
        b->cfg.queue_depth = depth;
    if (!b->cfg.max_io_bytes)
        b->cfg.max_io_bytes = max_io;
    if (!b->cfg.connect_timeout_ms)
        b->cfg.connect_timeout_ms = 10000;
    g_mutex_init(&b->lock);
}

void rdmig_backend_clear(RdmigBackend *b)
{
    g_mutex_clear(&b->lock);
}

int rdmig_backend_reserve(RdmigBackend *b, GError **error)
{
    g_mutex_lock(&b->lock);
    for (int i = 0; i < RDMIG_BACKEND_MAX_REGIONS; i++) {
        if (!b->regions[i] && !b->reserved[i]) {
            b->reserved[i] = true;
            g_mutex_unlock(&b->lock);
            return i;
        }
    }
    g_mutex_unlock(&b->lock);
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "more than %d regions registered",
                RDMIG_BACKEND_MAX_REGIONS);
    return -1;
}

void rdmig_backend_publish(RdmigBackend *b, int slot, gpointer region)
{
    g_mutex_lock(&b->lock);
    b->reserved[slot] = false;
    g_atomic_pointer_set(&b->regions[slot], region);
    if (slot >= g_atomic_int_get(&b->regions_end))
        g_atomic_int_set(&b->regions_end, slot + 1);
    g_mutex_unlock(&b->lock);
}

void rdmig_backend_release(RdmigBackend *b, int slot)
{
    g_mutex_lock(&b->lock);
    b->reserved[slot] = false;
    g_mutex_unlock(&b->lock);
}

void rdmig_backend_remove(RdmigBackend *b, int slot)
{
    g_mutex_lock(&b->lock);
    g_atomic_pointer_set(&b->regions[slot], NULL);
    g_mutex_unlock(&b->lock);
}

bool rdmig_conn_failure_set(RdmigConnFailure *f, int err, const char *fmt, va_list ap)
{
    if (f->failed)
        return false;
    f->failed = true;
    f->err = err;
    vsnprintf(f->text, sizeof(f->text), fmt, ap);
    return true;
}

/* SPDX-License-Identifier: MIT */
/*
 * The transport registry.  A table is checked against the ABI this build
 * knows, copied, and its absent members are filled with fill-ins (absent_*) that fail with
 * -ENOTSUP or RDMIG_ERROR_UNSUPPORTED, so no caller ever tests for NULL.
 */
#define G_LOG_DOMAIN "rdmig-transport"

#include <errno.h>
#include <string.h>

#include "rdmig/error.h"
#include "rdmig/transport.h"
#include "registry.h"

#define MAX_TRANSPORTS 8

static RdmigTransportOps registered[MAX_TRANSPORTS];
static const RdmigTransportOps *listed[MAX_TRANSPORTS + 1];
static unsigned n_registered;
static GMutex registry_lock;

static void unsupported(GError **error)
{
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                "operation not supported by this transport");
}
static bool absent_probe(GError **error) { unsupported(error); return false; }
static RdmigTransport *absent_create(const RdmigTransportConfig *c, GError **error)
{
    (void)c;
    unsupported(error);
    return NULL;
}
static void absent_destroy(RdmigTransport *t) { (void)t; }
static RdmigListener *absent_listen(RdmigTransport *t, const char *a, GError **error)
{
    (void)t; (void)a;
    unsupported(error);
    return NULL;
}
static const char *absent_listener_address(RdmigListener *l) { (void)l; return ""; }
static RdmigConn *absent_accept(RdmigListener *l, int timeout_ms, GError **error)
{
    (void)l; (void)timeout_ms;
    unsupported(error);
    return NULL;
}
static void absent_listener_close(RdmigListener *l) { (void)l; }
static RdmigConn *absent_connect(RdmigTransport *t, const char *a, GError **error)
{
    (void)t; (void)a;
    unsupported(error);
    return NULL;
}
static void absent_conn_void(RdmigConn *c) { (void)c; }
static RdmigRegion *absent_register(RdmigTransport *t, void *addr, size_t len, uint32_t access,
                                  GError **error)
{
    (void)t; (void)addr; (void)len; (void)access;
    unsupported(error);
    return NULL;
}
static void absent_region_key(RdmigRegion *r, RdmigRemoteKey *k) { (void)r; k->len = 0; }
/* Nothing to revoke for NULL; a region this table could not deregister
 * may still be reachable, and the caller must hear so. */
static int absent_deregister(RdmigRegion *r) { return r ? -ENOTSUP : 0; }
static int absent_submit(RdmigConn *c, RdmigIoReq *req) { (void)c; (void)req; return -ENOTSUP; }
static int absent_poll(RdmigConn *c, RdmigIoReq **done, int max)
{
    (void)c; (void)done; (void)max;
    return -ENOTSUP;
}
static int absent_conn_fd(RdmigConn *c, short *events) { (void)c; *events = 0; return -1; }
static const char *absent_conn_error(RdmigConn *c) { (void)c; return NULL; }

#define FILL(member, stub) do { if (!t->member) t->member = stub; } while (0)

bool rdmig_transport_register(const RdmigTransportOps *ops, GError **error)
{
    if (ops->abi_version != RDMIG_TRANSPORT_ABI_VERSION || ops->size > sizeof(RdmigTransportOps) ||
        ops->size < offsetof(RdmigTransportOps, caps) + sizeof(ops->caps)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "transport '%s' was built for ABI %u (size %u); this library has ABI %u "
                    "(size %zu)", ops->name ? ops->name : "?", ops->abi_version, ops->size,
                    RDMIG_TRANSPORT_ABI_VERSION, sizeof(RdmigTransportOps));
        return false;
    }
    if (!ops->name || !*ops->name) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "transport without a name");
        return false;
    }
    g_mutex_lock(&registry_lock);
    for (unsigned i = 0; i < n_registered; i++) {
        if (strcmp(registered[i].name, ops->name) == 0) {
            g_mutex_unlock(&registry_lock);
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "transport '%s' is already registered", ops->name);
            return false;
        }
    }
    if (n_registered == MAX_TRANSPORTS) {
        g_mutex_unlock(&registry_lock);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "transport registry is full");
        return false;
    }
    RdmigTransportOps *t = &registered[n_registered];
    memset(t, 0, sizeof(*t));
    /* An older, smaller table: copy what it has, the rest stays NULL and gets fill-ins. */
    memcpy(t, ops, ops->size);
    t->size = sizeof(*t);
    FILL(probe, absent_probe);
    FILL(create, absent_create);
    FILL(destroy, absent_destroy);
    FILL(listen, absent_listen);
    FILL(listener_address, absent_listener_address);
    FILL(accept, absent_accept);
    FILL(listener_close, absent_listener_close);
    FILL(connect, absent_connect);
    FILL(disconnect, absent_conn_void);
    FILL(conn_close, absent_conn_void);
    FILL(register_region, absent_register);
    FILL(region_key, absent_region_key);
    FILL(deregister_region, absent_deregister);
    FILL(submit, absent_submit);
    FILL(poll, absent_poll);
    FILL(conn_fd, absent_conn_fd);
    FILL(conn_error, absent_conn_error);
    listed[n_registered] = t;
    n_registered++;
    g_mutex_unlock(&registry_lock);
    return true;
}

/* The transports built into this library, in order of registration. */
static const RdmigTransportOps *const builtin[] = {
    &rdmig_tcp_transport_ops,
#ifdef RDMIG_HAVE_RDMA
    &rdmig_rdma_transport_ops,
#endif
};

/* Before any look-up: a caller's own transports come after these. */
static void register_builtin(void)
{
    static gsize once;
    if (g_once_init_enter(&once)) {
        for (size_t i = 0; i < G_N_ELEMENTS(builtin); i++) {
            g_autoptr(GError) err = NULL;
            if (!rdmig_transport_register(builtin[i], &err))
                g_critical("built-in transport %s: %s", builtin[i]->name, err->message);
        }
        g_once_init_leave(&once, 1);
    }
}

const RdmigTransportOps *const *rdmig_transport_list(void)
{
    register_builtin();
    return listed;
}

const RdmigTransportOps *rdmig_transport_lookup(const char *name)
{
    register_builtin();
    for (unsigned i = 0; listed[i]; i++)
        if (strcmp(listed[i]->name, name) == 0)
            return listed[i];
    return NULL;
}

/* Better for migration: one that spares the target's CPU. */
static bool better(const RdmigTransportOps *a, const RdmigTransportOps *b)
{
    return (a->caps & RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU) &&
           !(b->caps & RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU);
}

uint32_t rdmig_transport_choose(uint32_t caps, const char *only, const RdmigTransportOps **out,
                                uint32_t max, GError **error)
{
    register_builtin();
    g_autoptr(GString) why = g_string_new(NULL);
    uint32_t n = 0;
    if (only && !strcmp(only, "auto"))
        only = NULL;
    for (unsigned i = 0; listed[i]; i++) {
        const RdmigTransportOps *t = listed[i];
        if ((only && strcmp(t->name, only)) || (t->caps & caps) != caps)
            continue;
        g_autoptr(GError) perr = NULL;
        if (!t->probe(&perr)) {
            g_string_append_printf(why, "; %s: %s", t->name, perr->message);
            continue;
        }
        /* Insertion in preference order, equals in registration order; the
         * worst falls off the end when @out is full. */
        uint32_t at = n;
        while (at > 0 && better(t, out[at - 1]))
            at--;
        if (at >= max)
            continue;
        n = MIN(n + 1, max);
        memmove(out + at + 1, out + at, (n - 1 - at) * sizeof(*out));
        out[at] = t;
    }
    if (!n)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "no usable transport%s%s with capabilities 0x%x%s", only ? " named " : "",
                    only ? only : "", caps, why->str);
    return n;
}

const RdmigTransportOps *rdmig_transport_find(uint32_t caps, GError **error)
{
    const RdmigTransportOps *best = NULL;
    return rdmig_transport_choose(caps, NULL, &best, 1, error) ? best : NULL;
}

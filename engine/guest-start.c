/* SPDX-License-Identifier: MIT */
/* The destination's guest started on a thread of its own (guest-start.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "guest-start.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rdmig/error.h"

struct RdmigGuestStart {
    gint ref;           /* the thread's and the caller's */
    RdmigGuestOps ops;
    void *opaque;
    GByteArray *device_state;
    GThread *thread;
    int done_fd;
    gint finished;      /* atomic: ok and error are set */
    bool ok;
    GError *error;
};

static void unref(RdmigGuestStart *g)
{
    if (!g_atomic_int_dec_and_test(&g->ref))
        return;
    if (g->device_state)
        g_byte_array_unref(g->device_state);
    g_clear_error(&g->error);
    close(g->done_fd);
    g_free(g);
}

static gpointer start_thread(gpointer data)
{
    RdmigGuestStart *g = data;
    GError *err = NULL;
    bool ok = true;
    if (g->ops.thread_start)
        g->ops.thread_start(g->opaque, "rdmig-guest-start");
    if (g->ops.load_device_state) {
        GByteArray *d = g->device_state;
        ok = g->ops.load_device_state(g->opaque, d ? d->data : NULL, d ? d->len : 0, &err);
        if (!ok && !err)
            err = g_error_new_literal(RDMIG_ERROR, RDMIG_ERROR_PEER, "the hook gave no reason");
        if (!ok)
            g_prefix_error(&err, "loading device state: ");
    }
    if (ok && g->ops.resume)
        g->ops.resume(g->opaque);
    if (g->ops.thread_stop)
        g->ops.thread_stop(g->opaque);
    g->ok = ok;
    g->error = err;
    g_atomic_int_set(&g->finished, 1);
    uint64_t one = 1;
    if (write(g->done_fd, &one, sizeof(one)) < 0)
        g_warning("guest start: eventfd: %s", g_strerror(errno)); /* cannot overflow */
    unref(g);
    return NULL;
}

RdmigGuestStart *rdmig_guest_start(const RdmigGuestOps *ops, void *opaque,
                                   GByteArray *device_state)
{
    RdmigGuestStart *g = g_new0(RdmigGuestStart, 1);
    g->ref = 2;
    g->ops = *ops;
    g->opaque = opaque;
    g->device_state = device_state ? g_byte_array_ref(device_state) : NULL;
    g->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    g->thread = g_thread_new("rdmig-guest-start", start_thread, g);
    return g;
}

int rdmig_guest_start_fd(RdmigGuestStart *g) { return g->done_fd; }

bool rdmig_guest_start_finished(RdmigGuestStart *g, bool *ok, GError **error)
{
    if (!g_atomic_int_get(&g->finished))
        return false;
    *ok = g->ok;
    if (!g->ok && g->error)
        g_propagate_error(error, g_error_copy(g->error));
    return true;
}

void rdmig_guest_start_release(RdmigGuestStart *g)
{
    if (!g)
        return;
    if (g_atomic_int_get(&g->finished))
        g_thread_join(g->thread);
    else
        g_thread_unref(g->thread); /* waits for a page that will not come */
    unref(g);
}

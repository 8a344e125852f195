/* SPDX-License-Identifier: MIT */
/*
 * Postcopy: the destination's guest started (its device state loaded, then
 * resumed) on a thread of its own, so that the pager goes on serving page
 * faults meanwhile.  Loading a real device model reads guest RAM (virtio
 * rings, descriptor tables) that may still be at the source; on the
 * pager's own thread that read would wait for the pager: a deadlock.
 *
 * The thread owns everything it uses (a reference to the device state, a
 * copy of the hooks): a migration that fails while a hook waits for a page
 * that will never come leaves it waiting, as it leaves the guest's own
 * threads, and nothing of the session is touched afterwards.
 */
#ifndef RDMIG_ENGINE_GUEST_START_H
#define RDMIG_ENGINE_GUEST_START_H

#include <glib.h>
#include <stdbool.h>

#include "rdmig/rdmig.h"

typedef struct RdmigGuestStart RdmigGuestStart;

/** rdmig_guest_start: calls @ops->load_device_state (with @device_state,
 *  may be NULL) and then @ops->resume on a new thread; returns at once. */
RdmigGuestStart *rdmig_guest_start(const RdmigGuestOps *ops, void *opaque,
                                   GByteArray *device_state);
/** An eventfd readable once the thread has finished: poll(2) it. */
int rdmig_guest_start_fd(RdmigGuestStart *g);
/** rdmig_guest_start_finished: false while the thread runs; then true,
 *  with *@ok its result and @error why it failed. */
bool rdmig_guest_start_finished(RdmigGuestStart *g, bool *ok, GError **error);
/** rdmig_guest_start_release: joins the thread if it has finished, else
 *  leaves it to end on its own; frees what is the caller's. */
void rdmig_guest_start_release(RdmigGuestStart *g);

#endif

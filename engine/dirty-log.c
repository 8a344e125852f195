/* SPDX-License-Identifier: MIT */
/*
 * The source's dirty log: the caller's RdmigDirtyOps (a hypervisor's own
 * log, KVM's say), or the built-in tracker (engine/dirty.c) over every RAM
 * block.  Armed before anything is read, synced after every round.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include "source.h"

bool rdmig_dirty_log_start(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    if (src->have_dirty_ops) {
        RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.dirty_method, "caller",
                                        sizeof(s->stats.dirty_method)));
        src->dirty_ops_started =
            !src->dirty_ops.start || src->dirty_ops.start(src->dirty_opaque, error);
        return src->dirty_ops_started;
    }
    src->tracker = rdmig_dirty_tracker_new(s->params.dirty_method, error);
    if (!src->tracker)
        return false;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        if (!rdmig_dirty_tracker_add(src->tracker, b->host, b->length, b->page_size,
                                     &b->tracker_index, error))
            return false;
    }
    RdmigDirtyMethod method = rdmig_dirty_tracker_method(src->tracker);
    RDMIG_STATS_UPDATE(s, g_strlcpy(s->stats.dirty_method, rdmig_dirty_method_str(method),
                                    sizeof(s->stats.dirty_method)));
    if (method == RDMIG_DIRTY_SOFT_DIRTY && (!s->guest.stop || !s->guest.resume)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "the soft-dirty tracker loses writes made while it syncs unless the guest "
                    "pauses: give the guest's stop and resume hooks, or use uffd-wp "
                    "(Linux >= 6.7)");
        return false;
    }
    return rdmig_dirty_tracker_start(src->tracker, error);
}

/* soft-dirty reads pagemap and clears in two steps, and a write between
 * the two is lost (engine/dirty.c): the guest pauses across its syncs, as
 * CRIU freezes a task.  uffd-wp and the caller's own log need no pause. */
static bool sync_pauses_guest(RdmigSource *src)
{
    return !src->have_dirty_ops && src->tracker && !src->guest_stopped &&
           rdmig_dirty_tracker_method(src->tracker) == RDMIG_DIRTY_SOFT_DIRTY;
}

bool rdmig_dirty_log_sync_blocks(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    bool pause = sync_pauses_guest(src);
    if (pause && !s->guest.stop(s->guest_opaque, error)) {
        g_prefix_error(error, "pausing the guest for a soft-dirty sync: ");
        return false;
    }
    bool ok = true;
    for (guint i = 0; i < s->blocks->len && ok; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        ok = src->have_dirty_ops
                 ? src->dirty_ops.sync(src->dirty_opaque, i, b->dirty, b->npages, error)
                 : rdmig_dirty_tracker_sync(src->tracker, b->tracker_index, b->dirty, error);
    }
    if (pause)
        s->guest.resume(s->guest_opaque);
    return ok;
}

bool rdmig_dirty_log_sync(RdmigSource *src, uint64_t *pending, GError **error)
{
    RdmigSession *s = &src->s;
    if (!rdmig_dirty_log_sync_blocks(src, error))
        return false;
    uint64_t n = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        n += rdmig_bitmap_count(b->dirty, b->npages) * b->page_size;
    }
    *pending = n;
    RDMIG_STATS_UPDATE(s, s->stats.dirty_sync_count++);
    return true;
}

void rdmig_dirty_log_stop(RdmigSource *src)
{
    if (src->have_dirty_ops) {
        /* Only a started log is stopped: a hypervisor's stop may assert
         * that its log runs (QEMU's does). */
        if (src->dirty_ops_started && src->dirty_ops.stop)
            src->dirty_ops.stop(src->dirty_opaque);
        src->dirty_ops_started = false;
    } else {
        g_clear_pointer(&src->tracker, rdmig_dirty_tracker_free);
    }
}

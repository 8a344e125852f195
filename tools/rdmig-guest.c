/* SPDX-License-Identifier: MIT */
/*
 * The synthetic guest behind a session: RAM blocks, guest hooks, oracle
 * records and the final check.  See rdmig-guest.h.
 */
#define G_LOG_DOMAIN "rdmig"

#include <stdio.h>

#include "rdmig-guest.h"

/* Set between the session's thread_start and thread_stop on this thread.
 * Every hook checks it, as QEMU's code would need its RCU registration. */
static _Thread_local bool announced;

static void on_hook(CliGuest *gu)
{
    if (!announced)
        g_atomic_int_inc(&gu->hooks_off_thread);
}

static void guest_thread_start(void *opaque, const char *name)
{
    (void)name;
    announced = true;
    g_atomic_int_inc(&((CliGuest *)opaque)->hook_threads);
}

static void guest_thread_stop(void *opaque)
{
    (void)opaque;
    announced = false;
}

void cli_guest_report_threads(const CliGuest *gu, CliReport *r)
{
    r->hook_threads = g_atomic_int_get(&((CliGuest *)gu)->hook_threads);
    r->hooks_off_thread = g_atomic_int_get(&((CliGuest *)gu)->hooks_off_thread);
    r->hooks_unpaired = g_atomic_int_get(&((CliGuest *)gu)->hooks_unpaired);
}

/* Source: the switchover's stop (state device or postcopy-active), or a
 * pause across a soft-dirty sync (setup, active).  The oracle's record is
 * taken at the switchover, the last moment this side's memory can change. */
static bool guest_stop(void *opaque, GError **error)
{
    CliGuest *gu = opaque;
    (void)error;
    on_hook(gu);
    sg_pause(gu->g);
    RdmigStats st;
    rdmig_session_get_stats(gu->s, &st);
    if (gu->oracle &&
        (st.state == RDMIG_STATE_DEVICE || st.state == RDMIG_STATE_POSTCOPY_ACTIVE))
        sg_oracle_take_all(gu->oracle);
    return true;
}

/* Destination: the oracle digests each page before the guest first changes
 * it (in postcopy, pages are still arriving). */
static void guest_resume(void *opaque)
{
    CliGuest *gu = opaque;
    on_hook(gu);
    if (gu->oracle && gu->destination)
        sg_oracle_arm(gu->oracle);
    g_autoptr(GError) err = NULL;
    if (gu->destination && !sg_start_reader(gu->g, &err))
        g_warning("%s", err->message);
    sg_resume(gu->g);
}

static bool guest_save(void *opaque, GByteArray *out, GError **error)
{
    (void)error;
    on_hook(opaque);
    sg_save_device_state(((CliGuest *)opaque)->g, out);
    return true;
}

/* The guest's own error, in the session's domain: a bad blob is the peer's
 * protocol error. */
static bool guest_load(void *opaque, const uint8_t *data, size_t len, GError **error)
{
    g_autoptr(GError) e = NULL;
    on_hook(opaque);
    if (sg_load_device_state(((CliGuest *)opaque)->g, data, len, &e))
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s", e->message);
    return false;
}

const RdmigGuestOps cli_guest_ops = {
    .stop = guest_stop, .resume = guest_resume,
    .save_device_state = guest_save, .load_device_state = guest_load,
    .thread_start = guest_thread_start, .thread_stop = guest_thread_stop,
};

static bool dirty_start(void *opaque, GError **error)
{
    (void)error;
    on_hook(opaque);
    sg_dirty_log_start(((CliGuest *)opaque)->g);
    ((CliGuest *)opaque)->dirty_started = true;
    return true;
}

/* The guest logs 4 KiB pages; a block of hugetlb memory has 2 MiB ones:
 * a page of the block is dirty when any of its 4 KiB pages was written (as
 * QEMU folds KVM's log into a huge-page block). */
static bool dirty_sync(void *opaque, unsigned block, uint64_t *bitmap, uint64_t npages,
                       GError **error)
{
    CliGuest *gu = opaque;
    on_hook(gu);
    if (!gu->dirty_started)
        g_atomic_int_inc(&gu->hooks_unpaired);
    uint64_t per = sg_npages(gu->g) / (uint64_t)gu->blocks;
    uint64_t fold = sg_block_page_size(gu->g) / sg_page_size(gu->g);
    if (block >= (unsigned)gu->blocks || npages * fold != per) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "dirty sync of block %u (%" G_GUINT64_FORMAT " pages): the guest has %d "
                    "blocks of %" G_GUINT64_FORMAT " pages", block, npages, gu->blocks,
                    per / fold);
        return false;
    }
    if (fold == 1) {
        sg_dirty_log_sync(gu->g, per * block, per, bitmap);
        return true;
    }
    g_autofree uint64_t *small = g_new0(uint64_t, (per + 63) / 64);
    sg_dirty_log_sync(gu->g, per * block, per, small);
    for (uint64_t w = 0; w < (per + 63) / 64; w++) {
        for (uint64_t bits = small[w]; bits; bits &= bits - 1) {
            uint64_t p = (w * 64 + (uint64_t)__builtin_ctzll(bits)) / fold;
            bitmap[p / 64] |= UINT64_C(1) << (p % 64);
        }
    }
    return true;
}

/* A hypervisor's stop may assert that its log runs (QEMU's does): a stop
 * without a start is counted, and must not happen. */
static void dirty_stop(void *opaque)
{
    CliGuest *gu = opaque;
    on_hook(gu);
    if (!gu->dirty_started)
        g_atomic_int_inc(&gu->hooks_unpaired);
    gu->dirty_started = false;
    sg_dirty_log_stop(gu->g);
}

const RdmigDirtyOps cli_guest_dirty_ops = { .start = dirty_start, .sync = dirty_sync,
                                            .stop = dirty_stop };

bool cli_guest_add_blocks(RdmigSession *s, SyntheticGuest *g, int blocks, GError **error)
{
    uint64_t per = sg_ram_size(g) / (uint64_t)blocks;
    for (int i = 0; i < blocks; i++) {
        g_autofree char *name = blocks == 1 ? g_strdup("pc.ram") : g_strdup_printf("ram%d", i);
        if (!rdmig_session_add_ram_block(s, name, (uint8_t *)sg_ram(g) + per * (uint64_t)i, per,
                                         sg_block_page_size(g), error))
            return false;
        /* RAM in a memfd: postcopy can pull into it directly. */
        if (rdmig_session_is_destination(s) && sg_memfd(g) >= 0 &&
            !rdmig_session_set_ram_block_fd(s, name, sg_memfd(g), per * (uint64_t)i, error))
            return false;
    }
    return true;
}

bool cli_guest_save_oracle(SgOracle *oracle, const char *dir, const char *name, CliReport *r)
{
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_autoptr(GError) err = NULL;
    if (!sg_oracle_save(oracle, path, &err)) {
        fprintf(stderr, "rdmig: %s\n", err->message);
        return false;
    }
    g_free(r->oracle);
    r->oracle = g_steal_pointer(&path);
    return true;
}

void cli_guest_check(CliGuest *gu, CliReport *r, int run_ms, double dirty_rate,
                     const char *oracle_dir)
{
    SyntheticGuest *g = gu->g;
    SgStats before, after;
    sg_get_stats(g, &before);
    if (run_ms > 0)
        g_usleep((gulong)run_ms * 1000);
    sg_get_stats(g, &after);
    r->guest_running = sg_running(g) &&
                       (dirty_rate <= 0 || after.pages_written > before.pages_written);
    sg_pause(g);
    if (gu->oracle && gu->destination) {
        sg_oracle_take_all(gu->oracle);
        if (!cli_guest_save_oracle(gu->oracle, oracle_dir, "destination.oracle", r))
            r->ok = false;
    }
    r->huge_bytes = sg_huge_bytes(g);
    r->guest_ok = sg_check(g, &r->guest);
    r->guest.pages_written = after.pages_written;
    r->guest.reader_reads = after.reader_reads;
    r->guest.reader_max_us = after.reader_max_us;
    r->guest_checked = true;
    static const char *const probe[] = { "none", "present", "missing" };
    r->device_state_probe = gu->destination ? probe[sg_device_state_probe(g)] : "none";
}

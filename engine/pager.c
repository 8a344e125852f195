/* SPDX-License-Identifier: MIT */
/*
 * The destination's postcopy pager (design in pager.h): set-up (bitmaps,
 * staging buffer, userfaultfd over every block), the loop that waits on
 * faults, completions, control messages and a cancel, pausing and resuming
 * on a lost link, and the verdict on the pulled pages.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "channel.h"
#include "pager.h"
#include "recovery.h"
#include "uffd.h"

static bool pager_init(Pager *pg, RdmigDestination *dst, GError **error)
{
    RdmigSession *s = &dst->s;
    pg->dst = dst;
    pg->s = s;
    pg->uffd = -1;
    pg->bad = g_string_new(NULL);
    uint32_t max_ps = 0;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        max_ps = MAX(max_ps, b->page_size);
        uint64_t n = rdmig_bitmap_count(b->needed, b->npages);
        pg->needed += n;
        b->unrequested = g_memdup2(b->needed, rdmig_bitmap_words(b->npages) * 8);
        b->received = rdmig_bitmap_new(b->npages);
        if (s->features & RDMIG_FEATURE_VERIFY)
            b->unverified = rdmig_bitmap_new(b->npages);
    }
    size_t bulk_bytes = MAX(BULK_BYTES, max_ps);
    pg->staging_len = FAULT_SLOTS * (size_t)max_ps + BULK_SLOTS * bulk_bytes;
    pg->staging = mmap(NULL, pg->staging_len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (pg->staging == MAP_FAILED) {
        pg->staging = NULL;
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "staging buffer: %s",
                    g_strerror(errno));
        return false;
    }
    if (!pager_register_staging(pg, error))
        return false;
    for (int i = 0; i < FAULT_SLOTS; i++)
        pg->faults[i] = (PullReq){ .buf = pg->staging + (size_t)i * max_ps, .fault = true };
    for (int i = 0; i < BULK_SLOTS; i++)
        pg->bulk[i] = (PullReq){ .buf = pg->staging + FAULT_SLOTS * (size_t)max_ps +
                                        (size_t)i * bulk_bytes };
    /* Faults get a connection of their own when there are two or more. */
    pg->fault_conn = s->nconns - 1;
    pg->bulk_conns = s->nconns > 1 ? s->nconns - 1 : 1;
    pg->samples = g_new(uint32_t, MAX_SAMPLES);
    pg->snapshot = g_malloc(max_ps);
    pg->max_page_size = max_ps;

    if (!rdmig_pager_map_aliases(dst, error)) /* done at PREPARE, unless that failed */
        return false;

    pg->uffd = rdmig_uffd_open_postcopy(error);
    if (pg->uffd < 0)
        return false;
    for (guint bi = 0; bi < s->blocks->len; bi++) {
        RdmigRamBlock *b = s->blocks->pdata[bi];
        /* Zero copy: a dropped page is still in the file (a minor fault);
         * one never written is not (a missing fault, zero-filled). */
        struct uffdio_register reg = {
            .range = { .start = (uintptr_t)b->host, .len = b->length },
            .mode = UFFDIO_REGISTER_MODE_MISSING |
                    (b->zero_copy ? UFFDIO_REGISTER_MODE_MINOR : 0),
        };
        if (ioctl(pg->uffd, UFFDIO_REGISTER, &reg) < 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                        "userfaultfd cannot watch RAM block '%s' for missing pages: %s", b->name,
                        g_strerror(errno));
            return false;
        }
        uint64_t need = (1ull << _UFFDIO_COPY) | (b->zero_copy ? 1ull << _UFFDIO_CONTINUE : 0);
        if ((reg.ioctls & need) != need) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                        "userfaultfd cannot place pages in RAM block '%s' (no UFFDIO_COPY or, "
                        "for zero copy, UFFDIO_CONTINUE for this memory type)", b->name);
            return false;
        }
        /* hugetlbfs has no UFFDIO_ZEROPAGE: a zero page is copied in. */
        b->zero_by_copy = !(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE));
        if (b->zero_by_copy && !pg->zeros)
            pg->zeros = g_malloc0(pg->max_page_size);
    }
    return true;
}

/* Ends the pager.  After a failure the userfaultfd stays open (in the
 * session): threads waiting on missing pages keep waiting rather than read
 * zeros. */
static void pager_fini(Pager *pg, bool ok)
{
    RdmigSession *s = pg->s;
    if (pg->uffd >= 0) {
        if (ok) {
            for (guint bi = 0; bi < s->blocks->len; bi++) {
                RdmigRamBlock *b = s->blocks->pdata[bi];
                struct uffdio_range r = { .start = (uintptr_t)b->host, .len = b->length };
                ioctl(pg->uffd, UFFDIO_UNREGISTER, &r);
            }
            close(pg->uffd);
        } else {
            pg->dst->postcopy_uffd = pg->uffd;
        }
    }
    if (pg->staging_region)
        s->tp->deregister_region(pg->staging_region);
    if (pg->staging)
        munmap(pg->staging, pg->staging_len);
    g_free(pg->samples);
    g_free(pg->snapshot);
    g_free(pg->zeros);
    g_string_free(pg->bad, TRUE);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* POSTCOPY_RESUME: the source resent its keys and hashes on the new link
 * of this epoch; pulling goes on. */
static bool resume_pulling(Pager *pg, const RdmigFrame *f, GError **error)
{
    RdmigSession *s = pg->s;
    uint64_t epoch;
    if (!rdmig_u64_decode(f->payload, f->hdr.length, &epoch, "POSTCOPY_RESUME", error))
        return false;
    if (epoch != s->epoch) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "POSTCOPY_RESUME for epoch %" G_GUINT64_FORMAT " on the link of epoch %"
                    G_GUINT64_FORMAT, epoch, s->epoch);
        return false;
    }
    g_autoptr(GError) refused = NULL;
    if (!rdmig_recovery_resumed(s, &refused)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "POSTCOPY_RESUME outside recovery");
        return false;
    }
    pg->pulling = true;
    return true;
}

/* A control message during postcopy: final hashes, and on a recovered link
 * the source's keys and POSTCOPY_RESUME. */
static bool control_message(Pager *pg, GError **error)
{
    RdmigFrame f;
    int r = rdmig_channel_recv(pg->s, &f, 0, error);
    if (r <= 0)
        return r == 0;
    if (f.hdr.type == RDMIG_MSG_HASHES)
        return pager_late_hashes(pg, &f, error);
    if (!pg->pulling && f.hdr.type == RDMIG_MSG_SOURCE_REGIONS)
        return rdmig_apply_source_keys(pg->dst, &f, error);
    if (!pg->pulling && f.hdr.type == RDMIG_MSG_POSTCOPY_RESUME)
        return resume_pulling(pg, &f, error);
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                "unexpected %s from the source during postcopy", rdmig_msg_type_str(f.hdr.type));
    return false;
}

/* The guest's start, once its thread has finished: the guest runs here
 * (the source is told), or its device state did not load (fatal). */
static bool guest_started(Pager *pg, GError **error)
{
    bool ok;
    if (pg->guest_running || !rdmig_guest_start_finished(pg->start, &ok, error))
        return true;
    if (!ok)
        return false;
    pg->guest_running = true;
    pg->runs(pg->dst);
    return true;
}

/* Waits for what comes next: completions, faults, control, a cancel, the
 * guest's start finishing. */
static bool pull_wait(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    struct pollfd p[RDMIG_MAX_DATA_CONNS + 4];
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nconns; i++) {
        short ev;
        p[n].fd = s->tp->conn_fd(s->conns[i], &ev);
        p[n++].events = ev;
    }
    p[n++] = (struct pollfd){ .fd = pg->uffd, .events = POLLIN };
    int wait = pager_backlog(pg) ? 0 : (int)s->params.keepalive_ms;
    rdmig_control_pollfd(s->ctl, &p[n++], &wait);
    p[n++] = (struct pollfd){ .fd = pg->cancel_seen ? -1 : s->wake_fd, .events = POLLIN };
    p[n++] = (struct pollfd){ .fd = pg->guest_running ? -1 : rdmig_guest_start_fd(pg->start),
                              .events = POLLIN };
    if (poll(p, n, wait) < 0 && errno != EINTR) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
        return false;
    }
    if (p[s->nconns].revents && !pager_read_faults(pg, error))
        return false;
    for (uint32_t i = 0; i < s->nconns; i++)
        if (p[i].revents && !pager_reap(pg, i, error))
            return false;
    if (rdmig_control_readable(s->ctl, &p[s->nconns + 1]) && !control_message(pg, error))
        return false;
    if (!pager_settle_backlog(pg, HASH_SLICE_PAGES, error) || !guest_started(pg, error))
        return false;
    if (p[s->nconns + 2].revents && rdmig_session_take_pause(s, error))
        return false;
    if (p[s->nconns + 2].revents && rdmig_session_cancelled(s) && !pg->cancel_seen) {
        /* The guest runs here and part of its memory is still there. */
        g_warning("cancel ignored: postcopy cannot be cancelled once the guest runs here");
        pg->cancel_seen = true;
    }
    return rdmig_channel_check_silence(s, error);
}

static bool pull_loop(Pager *pg, GError **error)
{
    RdmigSession *s = pg->s;
    while (pg->received < pg->needed || pg->unverified || pager_backlog(pg) ||
           !pg->guest_running) {
        /* Faults first: while a guest thread waits, no new bulk read goes
         * out to share the link with its page. */
        if (!pager_pull_faulted(pg, error) ||
            (!pg->nwaiters && !pager_pull_background(pg, error)) || !pull_wait(pg, error))
            return false;
    }
    if (pg->nsamples) {
        qsort(pg->samples, pg->nsamples, sizeof(uint32_t), cmp_u32);
        RDMIG_STATS_UPDATE(s, {
            s->stats.fault_median_us = pg->samples[pg->nsamples / 2];
            s->stats.fault_p99_us = pg->samples[MIN(pg->nsamples - 1,
                                                    (uint32_t)((uint64_t)pg->nsamples * 99 / 100))];
        });
    }
    return true;
}

/* The pages held (not needed) were checked before the guest ran; these are
 * the pulled ones. */
static bool pulled_ok(Pager *pg, RdmigCompleteAck *ack)
{
    ack->pages_verified += pg->verified;
    ack->mismatches += pg->mismatches;
    if (!pg->mismatches)
        return true;
    ack->status = 1 + RDMIG_ERROR_VERIFY;
    g_snprintf(ack->message, sizeof(ack->message),
               "%" G_GUINT64_FORMAT " pulled pages differ from the source (block:page %s%s)",
               pg->mismatches, pg->bad->str, pg->mismatches > 16 ? ", ..." : "");
    return false;
}

bool rdmig_pager_run(RdmigDestination *dst, void (*runs)(RdmigDestination *),
                     RdmigCompleteAck *ack, GError **error)
{
    RdmigSession *s = &dst->s;
    Pager *pg = g_new0(Pager, 1);
    pg->runs = runs;
    bool ok = pager_init(pg, dst, error);
    /* The guest starts beside the pager, which serves its faults from now. */
    if (ok)
        pg->start = rdmig_guest_start(&s->guest, s->guest_opaque, dst->device_state);
    pg->pulling = ok;
    pager_update_missing(pg);
    while (ok) {
        GError *lost = NULL;
        if (pull_loop(pg, &lost))
            break;
        if (!rdmig_recovery_link_lost(s, lost, RDMIG_FEATURE_RECOVERY)) {
            g_propagate_error(error, lost);
            ok = false;
            break;
        }
        pager_pause(pg, lost);
        g_error_free(lost);
        ok = pager_wait_recovery(pg, error);
    }
    if (pg->duplicates)
        g_message("postcopy: %" G_GUINT64_FORMAT " pages arrived twice and were placed once",
                  pg->duplicates);
    if (ok && !pulled_ok(pg, ack)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERIFY, "%s", ack->message);
        ok = false;
    }
    /* A verification failure still has every page in place: release them. */
    pager_fini(pg, ok || pg->received == pg->needed);
    rdmig_guest_start_release(pg->start);
    g_free(pg);
    return ok;
}

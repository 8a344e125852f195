/* SPDX-License-Identifier: MIT */
/*
 * The pager's faults (pager.h): each guest thread's fault is served at
 * once when this side can (a page placed meanwhile, held in the memory
 * file, or zero on the source), or the thread waits for a pull, its own
 * read posted first.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <errno.h>
#include <unistd.h>

#include "pager.h"
#include "uffd.h"

static bool locate(Pager *pg, uint64_t addr, guint *block, uint64_t *page)
{
    for (guint bi = 0; bi < pg->s->blocks->len; bi++) {
        RdmigRamBlock *b = pager_block(pg, bi);
        uint64_t base = (uintptr_t)b->host;
        if (addr >= base && addr - base < b->length) {
            *block = bi;
            *page = (addr - base) / b->page_size;
            return true;
        }
    }
    return false;
}

/* A fault on a page this side can serve without a pull: placed meanwhile,
 * held in the file (zero copy), or zero on the source.  True with *@served
 * when it was one of those. */
static bool serve_here(Pager *pg, RdmigRamBlock *b, uint64_t page, uint32_t tid, bool minor,
                       bool *served, GError **error)
{
    RdmigSession *s = pg->s;
    uint64_t start = (uintptr_t)b->host + page * b->page_size;
    int r = 0;
    *served = true;
    if (rdmig_bitmap_test(b->received, page)) {
        /* Placed between the fault and now: just let the thread go on.  A
         * minor fault on a placed page means it lost its mapping since (the
         * file page was swapped out): map it again, or the thread spins. */
        if (minor && !pager_map_pulled(pg, b, page, 1, error))
            return false;
        if (!minor)
            rdmig_uffd_wake(pg->uffd, start, b->page_size);
        pager_record_latency(pg, tid, 0);
        return true;
    }
    if (rdmig_bitmap_test(b->needed, page)) {
        *served = false;
        return true;
    }
    /* Zero copy: in the file and right there (zero, or held since precopy),
     * only not mapped.  Else zero on the source, or never touched there. */
    if (minor && !pager_map_pulled(pg, b, page, 1, error))
        return false;
    if (!minor && (r = b->zero_by_copy
                           ? rdmig_uffd_copy(pg->uffd, start, pg->zeros, b->page_size,
                                             b->page_size)
                           : rdmig_uffd_zeropage(pg->uffd, start, b->page_size)) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "placing zero page %" G_GUINT64_FORMAT " of '%s': %s", page, b->name,
                    g_strerror(-r));
        return false;
    }
    RDMIG_STATS_UPDATE(s, s->stats.faults_zero++);
    return true;
}

static bool handle_fault(Pager *pg, const struct uffd_msg *m, GError **error)
{
    RdmigSession *s = pg->s;
    if (m->event != UFFD_EVENT_PAGEFAULT)
        return true;
    guint bi;
    uint64_t page;
    if (!locate(pg, m->arg.pagefault.address, &bi, &page)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "fault at 0x%" G_GINT64_MODIFIER "x outside every RAM block",
                    (uint64_t)m->arg.pagefault.address);
        return false;
    }
    RdmigRamBlock *b = pager_block(pg, bi);
    uint32_t tid = m->arg.pagefault.feat.ptid;
    RDMIG_STATS_UPDATE(s, s->stats.faults++);
    bool served;
    if (!serve_here(pg, b, page, tid, m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR,
                    &served, error))
        return false;
    if (served)
        return true;
    if (pg->nwaiters < MAX_WAITERS)
        pg->waiters[pg->nwaiters++] = (Waiter){ bi, page, tid, rdmig_now_us() };
    PullReq *r = b->zero_copy ? pager_arrived_unsettled(pg, bi, page) : NULL;
    if (r) /* here, waiting in the background's queue: this one first */
        return pager_settle_run(pg, r, (uint32_t)(page - r->first), 1, true, error);
    return pager_pull_faulted(pg, error);
}

bool pager_read_faults(Pager *pg, GError **error)
{
    for (;;) {
        struct uffd_msg msgs[16];
        ssize_t n = read(pg->uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return true;
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "reading userfaultfd: %s",
                        g_strerror(errno));
            return false;
        }
        for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
            if (!handle_fault(pg, &msgs[i], error))
                return false;
        if ((size_t)n < sizeof(msgs))
            return true;
    }
}

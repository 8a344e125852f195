/* SPDX-License-Identifier: MIT */
/*
 * The destination's postcopy pager, shared between its files:
 *
 *   pager.c           the loop: set-up, waiting on faults, completions and
 *                     control messages, the end and its verdict
 *   pager-fault.c     faults: served here (zero, held, placed meanwhile) or
 *                     queued as waiters for a pull
 *   pager-pull.c      reads: posted (faults first, then the background
 *                     sweep) and reaped
 *   pager-place.c     what arrives: placed (UFFDIO_COPY or CONTINUE from the
 *                     zero-copy alias), verified, waits ended
 *   pager-recovery.c  a lost link: pause, wait for the source, resync, give up
 *
 * Page states (bitmaps per block): needed (the source told us our copy is
 * stale or missing), unrequested (needed, no read posted yet), received
 * (placed).  A page is requested once: a fault on a page already on its way
 * in a bulk read waits for that read.  A fault on a page that is not needed
 * (zero, or never touched on the source) is served here with
 * UFFDIO_ZEROPAGE.
 *
 * One thread (the destination's) does everything: reads faults, posts reads
 * (faults on their own connection, so they never queue behind bulk reads),
 * reaps completions, verifies and places pages.  It never touches guest RAM
 * itself, so it can never fault on a missing page.
 *
 * When the link breaks (and recovery was negotiated) the pager pauses: reads
 * in flight go back to "unrequested", the connections and transport are
 * dropped, and the epoch moves on, so that no completion of the old link can
 * place a page any more.  Paused, it still serves faults on pages it need not
 * pull (zero fill) and keeps the list of threads waiting for pulled ones.  A
 * new link (recovery.c) gets the received bitmap; after the source's
 * POSTCOPY_RESUME the waiting threads' pages are requested first.  A page
 * that arrives twice is placed once.
 */
#ifndef RDMIG_ENGINE_PAGER_H
#define RDMIG_ENGINE_PAGER_H

#include <linux/userfaultfd.h>

#include "guest-start.h"
#include "destination.h"

#define FAULT_SLOTS 16
#define BULK_SLOTS 8
#define BULK_BYTES (256u << 10)
/* Pages hashed between two looks at the fault queue: hashing a whole bulk
 * read at once (64 pages) held a fault for 7 ms under TCG. */
#define HASH_SLICE_PAGES 8
#define MAX_WAITERS 512
#define MAX_SAMPLES (1u << 16)

/* One read of consecutive pages into a staging slot (or the alias). */
typedef struct {
    RdmigIoReq io;
    guint block;
    uint64_t first;
    uint32_t n;
    uint8_t *buf;
    int conn;
    uint64_t epoch; /* the link it was posted on */
    bool busy, fault;
    uint64_t unsettled; /* bit i: page first + i arrived, not yet verified (and, with
                         * zero copy, not yet mapped into the guest) */
} PullReq;

/* One bit per page of a read in PullReq.unsettled. */
G_STATIC_ASSERT(BULK_BYTES / 4096 <= 64);

typedef struct {
    guint block;
    uint64_t page;
    uint32_t tid;
    gint64 t_us;
} Waiter;

typedef struct {
    RdmigDestination *dst;
    RdmigSession *s;            /* &dst->s */
    int uffd;
    uint8_t *staging;
    size_t staging_len;
    RdmigRegion *staging_region;
    PullReq faults[FAULT_SLOTS];
    PullReq bulk[BULK_SLOTS];
    Waiter waiters[MAX_WAITERS];
    uint32_t nwaiters;
    uint32_t fault_conn, bulk_conns, next_bulk_conn;
    guint bg_block;
    uint64_t bg_cursor;
    uint64_t needed, received;
    uint32_t *samples;
    uint32_t nsamples;
    uint64_t verified, mismatches;
    uint64_t unverified;         /* placed pages whose final hash has not come yet */
    uint8_t *snapshot;           /* zero copy: a page a thread waits for, hashed after it runs */
    uint32_t max_page_size;      /* of all blocks */
    uint8_t *zeros;              /* a zero page of the largest page size, for zero_by_copy */
    GString *bad;
    bool cancel_seen;
    uint64_t epoch;              /* links lost so far: fences their completions */
    bool pulling;                /* a link is up and the source said to pull */
    RdmigGuestStart *start;      /* the guest's start, on its own thread */
    bool guest_running;          /* it has finished: device state loaded, resumed */
    void (*runs)(RdmigDestination *dst); /* then: the downtime ends, the source is told */
    uint64_t duplicates;         /* pages that arrived again after being placed */
} Pager;

static inline RdmigRamBlock *pager_block(Pager *pg, guint i) { return pg->s->blocks->pdata[i]; }

/* pager-place.c */
/** The staging buffer registered with the link's transport. */
bool pager_register_staging(Pager *pg, GError **error);
/** Counts @us of a thread @tid's wait in the fault histogram and blocktime. */
void pager_record_latency(Pager *pg, uint32_t tid, uint64_t us);
/** HASHES during the pull: the final hashes of pulled pages. */
bool pager_late_hashes(Pager *pg, const RdmigFrame *f, GError **error);
/** Maps @n pulled pages, already in the memory file, into the guest. */
bool pager_map_pulled(Pager *pg, RdmigRamBlock *b, uint64_t first, uint64_t n,
                      GError **error);
/** Settles (verifies, and with zero copy maps) pages @i..@i+@n-1 of @r;
 *  @waits: a thread waits for the page. */
bool pager_settle_run(Pager *pg, PullReq *r, uint32_t i, uint32_t n, bool waits,
                      GError **error);
/** Bulk reads' pages arrived and not settled yet. */
bool pager_backlog(const Pager *pg);
/** Settles up to @budget pages of the bulk reads. */
bool pager_settle_backlog(Pager *pg, uint32_t budget, GError **error);
/** Zero copy: the read that brought @page of block @bi, if it is in and not
 *  settled yet. */
PullReq *pager_arrived_unsettled(Pager *pg, guint bi, uint64_t page);
/** A read completed: its new pages placed (copying) and settled now (a
 *  fault's) or later in slices (the background's). */
bool pager_completed(Pager *pg, PullReq *r, GError **error);
/** The stats' count of pages still missing. */
void pager_update_missing(Pager *pg);

/* pager-pull.c */
/** Reaps connection @ci's completions. */
bool pager_reap(Pager *pg, uint32_t ci, GError **error);
/** Requests the pages faulted on and not yet requested, as fault slots allow. */
bool pager_pull_faulted(Pager *pg, GError **error);
/** Requests the next needed pages in the background, as bulk slots allow. */
bool pager_pull_background(Pager *pg, GError **error);
/** Reads in flight go back to "unrequested": the next link asks again. */
void pager_requeue_in_flight(Pager *pg);

/* pager-fault.c */
/** Reads and handles every fault queued on the userfaultfd. */
bool pager_read_faults(Pager *pg, GError **error);

/* pager-recovery.c */
/** The link is gone (@why): fence it off and keep what we have. */
void pager_pause(Pager *pg, const GError *why);
/** Paused: serves faults and waits for the source on a new link; false
 *  when the operator gives up (the lost pages named) or on an error. */
bool pager_wait_recovery(Pager *pg, GError **error);

#endif

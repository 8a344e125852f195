/* SPDX-License-Identifier: MIT */
/* RAM blocks, and the per-page facts the engine needs: is the
 * page resident (ever touched), is it zero, what is its hash. */
#ifndef RDMIG_ENGINE_RAM_H
#define RDMIG_ENGINE_RAM_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "rdmig/transport.h"
#include "util/bitmap.h"

typedef struct {
    char name[256];
    uint8_t *host;
    uint64_t length;
    uint32_t page_size;
    uint64_t npages;
    uint64_t *dirty;          /* source: pages still to send */
    uint64_t *hashes;         /* source: hash as last sent; destination: expected hash */
    uint64_t *hash_known;     /* destination: which expected hashes arrived */
    uint64_t *verified;       /* destination: matched its current hash in the background
                               * (verify.c); cleared when a new hash comes */
    uint64_t *round_hashed;   /* source: pages whose hash this round changed */
    RdmigRegion *region;      /* registered with the data transport */
    RdmigRegion *read_region; /* source, postcopy: registered again, readable by the
                               * destination, from the switchover's step 1 */
    RdmigRemoteKey rkey;      /* source: the destination's key of this block */
    unsigned tracker_index;   /* source: index in the built-in dirty tracker */
    uint64_t zero_hash;       /* hash of an all-zero page of this block's page size */
    /* postcopy, destination */
    RdmigRemoteKey src_key;   /* the source's key of this block, readable */
    uint64_t *needed;         /* pages to pull from the source (discarded or never sent) */
    uint64_t *unrequested;    /* needed pages with no read posted yet */
    uint64_t *received;       /* needed pages placed */
    uint64_t *unverified;     /* placed before their hash came: arrival hash in hashes[] */
    uint64_t *sent_unacked;   /* source, precopy resume: sent since the last ROUND_ACK */
    /* destination, zero-copy postcopy: reads land in the block's memory file
     * through a second mapping, and UFFDIO_CONTINUE maps them into the guest */
    int fd;                   /* the file behind @host, -1 when not given */
    uint64_t fd_offset;
    bool zero_copy;           /* chosen at the handshake */
    bool zero_by_copy;        /* no UFFDIO_ZEROPAGE here (hugetlbfs): zero pages are copied in */
    uint8_t *alias;           /* the second mapping, from PREPARE to the session's end */
    RdmigRegion *alias_region;
} RdmigRamBlock;

/** rdmig_ram_resident: sets in @bitmap every page of [host, host+length) the
 *  process has touched (resident in memory, or swapped out).  Untouched pages
 *  read as zero on both sides and need not travel. */
bool rdmig_ram_resident(const void *host, uint64_t length, uint32_t page_size, uint64_t *bitmap,
                        GError **error);

/** rdmig_ram_drop_pages: drops this side's stale copies of @n pages at
 *  @first of @b (postcopy, destination): the guest faults on them when it
 *  next touches them, and they are pulled. */
bool rdmig_ram_drop_pages(RdmigRamBlock *b, uint64_t first, uint64_t n, GError **error);

bool rdmig_page_is_zero(const void *page, size_t len);
uint64_t rdmig_page_hash(const void *page, size_t len);
/** The hash of an all-zero page of @page_size (RdmigRamBlock.zero_hash). */
uint64_t rdmig_zero_page_hash(uint32_t page_size);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * The test oracle (contract and file format in guest-oracle.h).  Nothing
 * here uses librdmig: the point is a second witness that does not share the
 * engine's hashing, bitmaps or residency scans.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE */
#endif

#define G_LOG_DOMAIN "rdmig-tools"

#include "guest-oracle.h"

#include "util/be.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define ORACLE_THREADS 2

struct SgOracle {
    SyntheticGuest *g;
    uint64_t npages;
    uint32_t page_size;
    uint8_t *digests;          /* npages x SG_ORACLE_DIGEST */
    uint8_t *taken;            /* a byte per page: digested (a page is one vCPU's, so
                                * distinct bytes never race) */
    uint8_t *flags;            /* a byte per page: SG_ORACLE_* */
    atomic_bool armed;
    _Atomic uint64_t lazy;     /* pages digested by the write hook */
    uint8_t zero_digest[SG_ORACLE_DIGEST];
};

static void digest_bytes(const uint8_t *p, size_t len, uint8_t *out)
{
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    gsize n = SG_ORACLE_DIGEST;

    g_checksum_update(c, p, (gssize)len);
    g_checksum_get_digest(c, out, &n);
    g_checksum_free(c);
}

/* A plain loop, on purpose: the engine has its own zero test. */
static bool page_is_zero(const uint8_t *p, size_t len)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t acc = 0;

    for (size_t i = 0; i < len / 8; i++) {
        acc |= w[i];
    }
    return acc == 0;
}

static void take_page(SgOracle *o, uint64_t page, bool hole)
{
    const uint8_t *p = (const uint8_t *)sg_ram(o->g) + page * o->page_size;
    uint8_t *out = o->digests + page * SG_ORACLE_DIGEST;

    if (hole || page_is_zero(p, o->page_size)) {
        memcpy(out, o->zero_digest, SG_ORACLE_DIGEST);
    } else {
        digest_bytes(p, o->page_size, out);
    }
    o->taken[page] = 1;
}

static void write_hook(void *opaque, uint64_t page, bool zeroing)
{
    SgOracle *o = opaque;

    if (zeroing) {
        o->flags[page] |= SG_ORACLE_REZEROED;
    }
    if (atomic_load_explicit(&o->armed, memory_order_relaxed) && !o->taken[page]) {
        take_page(o, page, false); /* reading it first pulls it in, in postcopy */
        atomic_fetch_add_explicit(&o->lazy, 1, memory_order_relaxed);
    }
}

SgOracle *sg_oracle_new(SyntheticGuest *g)
{
    SgOracle *o = g_new0(SgOracle, 1);
    g_autofree uint8_t *zero = NULL;

    o->g = g;
    o->npages = sg_npages(g);
    o->page_size = sg_page_size(g);
    o->digests = g_malloc(o->npages * SG_ORACLE_DIGEST);
    o->taken = g_malloc0(o->npages);
    o->flags = g_malloc0(o->npages);
    atomic_init(&o->armed, false);
    atomic_init(&o->lazy, 0);
    zero = g_malloc0(o->page_size);
    digest_bytes(zero, o->page_size, o->zero_digest);
    sg_set_write_hook(g, write_hook, o);
    return o;
}

void sg_oracle_arm(SgOracle *o)
{
    atomic_store(&o->armed, true);
}

typedef struct {
    SgOracle *o;
    uint64_t first, end;
} TakeJob;

/* Pages [first, end) not taken yet; the memory file's holes without
 * reading them (RAM that is no memfd has no holes to tell: sg_memfd() is
 * -1, lseek fails, and every page is read). */
static gpointer take_job(gpointer data)
{
    TakeJob *j = data;
    SgOracle *o = j->o;
    int fd = sg_memfd(o->g);
    uint64_t ps = o->page_size;

    for (uint64_t p = j->first; p < j->end;) {
        off_t data_at = lseek(fd, (off_t)(p * ps), SEEK_DATA);
        /* ENXIO: only a hole from here on; any other error: holes cannot be
         * told, so read every page. */
        uint64_t d = data_at >= 0 ? MIN((uint64_t)data_at / ps, j->end)
                     : errno == ENXIO ? j->end : p;
        for (; p < d; p++) {
            if (!o->taken[p]) {
                take_page(o, p, true);
            }
        }
        if (p >= j->end) {
            break;
        }
        off_t hole_at = lseek(fd, (off_t)(p * ps), SEEK_HOLE);
        uint64_t h = hole_at < 0 ? j->end : MIN(((uint64_t)hole_at + ps - 1) / ps, j->end);
        for (h = MAX(h, p + 1); p < h; p++) {
            if (!o->taken[p]) {
                take_page(o, p, false);
            }
        }
    }
    return NULL;
}

void sg_oracle_take_all(SgOracle *o)
{
    TakeJob jobs[ORACLE_THREADS];
    GThread *threads[ORACLE_THREADS] = { NULL };

    for (unsigned i = 0; i < ORACLE_THREADS; i++) {
        jobs[i] = (TakeJob){ o, o->npages * i / ORACLE_THREADS,
                             o->npages * (i + 1) / ORACLE_THREADS };
    }
    for (unsigned i = 1; i < ORACLE_THREADS; i++) {
        threads[i] = g_thread_try_new("sg-oracle", take_job, &jobs[i], NULL);
    }
    take_job(&jobs[0]);
    for (unsigned i = 1; i < ORACLE_THREADS; i++) {
        if (threads[i]) {
            g_thread_join(threads[i]);
        } else {
            take_job(&jobs[i]);
        }
    }
}

bool sg_oracle_save(SgOracle *o, const char *path, GError **error)
{
    for (uint64_t p = 0; p < o->npages; p++) {
        if (!o->taken[p]) {
            g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "oracle: page %" G_GUINT64_FORMAT " was never digested", p);
            return false;
        }
    }
    uint8_t head[32];
    memcpy(head, SG_ORACLE_MAGIC, 8);
    rdmig_put_be32(head + 8, SG_ORACLE_VERSION);
    rdmig_put_be32(head + 12, o->page_size);
    rdmig_put_be64(head + 16, o->npages);
    rdmig_put_be64(head + 24, atomic_load(&o->lazy));
    g_autoptr(GByteArray) out = g_byte_array_sized_new((guint)(sizeof(head) +
                                                               o->npages * (SG_ORACLE_DIGEST + 1)));
    g_byte_array_append(out, head, sizeof(head));
    g_byte_array_append(out, o->digests, (guint)(o->npages * SG_ORACLE_DIGEST));
    g_byte_array_append(out, o->flags, (guint)o->npages);
    /* g_file_set_contents writes a temporary file and renames it. */
    if (!g_file_set_contents(path, (const char *)out->data, (gssize)out->len, error)) {
        g_prefix_error(error, "oracle: ");
        return false;
    }
    return true;
}

void sg_oracle_free(SgOracle *o)
{
    if (!o) {
        return;
    }
    sg_set_write_hook(o->g, NULL, NULL);
    g_free(o->digests);
    g_free(o->taken);
    g_free(o->flags);
    g_free(o);
}

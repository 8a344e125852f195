/* SPDX-License-Identifier: MIT */
#define G_LOG_DOMAIN "rdmig-engine"

#include "hasher.h"

#include "ram.h"
#include "util/clock.h"

#define HASHER_RING 1024

typedef struct {
    const uint8_t *pages;
    uint64_t *hashes;
    uint64_t n;
    uint32_t page_size;
} HashJob;

struct RdmigHasher {
    GThread *thread;
    GMutex lock;
    GCond cond;              /* signalled on every change of head, tail or stop */
    HashJob ring[HASHER_RING];
    uint64_t head, tail;     /* jobs [tail, head) are queued; tail advances when done */
    bool stop;
    uint64_t cpu_us;
    uint64_t busy_us, bytes; /* under lock: the pace (rdmig_hasher_ns_per_byte) */
};

static gpointer hasher_thread(gpointer data)
{
    RdmigHasher *h = data;
    g_mutex_lock(&h->lock);
    for (;;) {
        while (h->tail == h->head && !h->stop)
            g_cond_wait(&h->cond, &h->lock);
        if (h->tail == h->head)
            break;
        HashJob j = h->ring[h->tail % HASHER_RING];
        g_mutex_unlock(&h->lock);
        gint64 t0 = rdmig_now_us();
        for (uint64_t i = 0; i < j.n; i++)
            j.hashes[i] = rdmig_page_hash(j.pages + i * j.page_size, j.page_size);
        gint64 t1 = rdmig_now_us();
        g_mutex_lock(&h->lock);
        h->busy_us += (uint64_t)(t1 - t0);
        h->bytes += j.n * j.page_size;
        h->tail++;
        g_cond_broadcast(&h->cond);
    }
    g_mutex_unlock(&h->lock);
    h->cpu_us = rdmig_thread_cpu_us();
    return NULL;
}

RdmigHasher *rdmig_hasher_new(void)
{
    RdmigHasher *h = g_new0(RdmigHasher, 1);
    g_mutex_init(&h->lock);
    g_cond_init(&h->cond);
    h->thread = g_thread_new("rdmig-hasher", hasher_thread, h);
    return h;
}

void rdmig_hasher_push(RdmigHasher *h, const uint8_t *pages, uint64_t *hashes, uint64_t n,
                       uint32_t page_size)
{
    g_mutex_lock(&h->lock);
    while (h->head - h->tail >= HASHER_RING)
        g_cond_wait(&h->cond, &h->lock);
    h->ring[h->head % HASHER_RING] = (HashJob){ pages, hashes, n, page_size };
    h->head++;
    g_cond_broadcast(&h->cond);
    g_mutex_unlock(&h->lock);
}

void rdmig_hasher_drain(RdmigHasher *h)
{
    g_mutex_lock(&h->lock);
    while (h->tail != h->head)
        g_cond_wait(&h->cond, &h->lock);
    g_mutex_unlock(&h->lock);
}

double rdmig_hasher_ns_per_byte(RdmigHasher *h)
{
    g_mutex_lock(&h->lock);
    double pace = h->bytes ? (double)h->busy_us * 1000.0 / (double)h->bytes : 0;
    g_mutex_unlock(&h->lock);
    return pace;
}

uint64_t rdmig_hasher_free(RdmigHasher *h)
{
    if (!h)
        return 0;
    g_mutex_lock(&h->lock);
    h->stop = true;
    g_cond_broadcast(&h->cond);
    g_mutex_unlock(&h->lock);
    g_thread_join(h->thread);
    uint64_t cpu = h->cpu_us;
    g_mutex_clear(&h->lock);
    g_cond_clear(&h->cond);
    g_free(h);
    return cpu;
}

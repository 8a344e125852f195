/* SPDX-License-Identifier: MIT */
/*
 * bench-placement: how a pulled page gets into a running guest in postcopy,
 * the staging copy rdmig uses against the zero-copy alternative.
 *
 *   bench-placement [--size-mib N]
 *
 * copy:     guest RAM registered with userfaultfd in missing mode; a page
 *           arrives in a staging buffer and UFFDIO_COPY copies it in and
 *           maps it (what rdmig's pager does).
 * continue: guest RAM in a memfd, registered in minor mode; a page arrives
 *           through a second mapping of the memfd, straight into the page
 *           cache, and UFFDIO_CONTINUE only maps it.
 *
 * "Arrives" is a memcpy from a source buffer into the staging buffer or the
 * second mapping: it stands in for the NIC's DMA, which writes the same
 * bytes in both cases (and which rxe, too, does with a memcpy).  Measured:
 *  - fault: a guest thread touches every page once; each touch blocks until
 *    a pager thread has served it; the wait as the guest thread sees it,
 *    median and p99 over all pages;
 *  - bulk: pages placed in 256 KiB pieces with nobody faulting, as the
 *    background pull does; GB/s, and the ioctl alone.
 * Output: a Markdown table on stdout.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "engine/uffd.h"

#define BULK_BYTES (256u << 10)

typedef enum { PLACE_COPY, PLACE_CONTINUE } Method;

typedef struct {
    Method method;
    size_t len, ps;
    int memfd, uffd;
    uint8_t *guest;   /* the guest's mapping, registered with userfaultfd */
    uint8_t *alias;   /* continue: a second mapping of the same memfd */
    uint8_t *staging; /* copy: where pages arrive */
    uint8_t *source;  /* the bytes the "NIC" brings */
    uint64_t *wait_ns;
    uint64_t ioctl_ns;
} Bench;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void die(const char *what)
{
    fprintf(stderr, "bench-placement: %s: %s\n", what, strerror(errno));
    exit(1);
}

static const char *method_name(Method m) { return m == PLACE_COPY ? "copy" : "continue"; }

/* Fresh guest RAM: every page missing (copy) or in the page cache but not
 * mapped (continue, as when the memory is registered for RDMA). */
static void setup(Bench *b)
{
    b->memfd = memfd_create("bench-placement", MFD_CLOEXEC);
    if (b->memfd < 0 || ftruncate(b->memfd, (off_t)b->len) < 0)
        die("memfd");
    b->guest = mmap(NULL, b->len, PROT_READ | PROT_WRITE, MAP_SHARED, b->memfd, 0);
    if (b->guest == MAP_FAILED)
        die("mmap guest");
    GError *err = NULL;
    uint64_t feature = b->method == PLACE_COPY ? UFFD_FEATURE_MISSING_SHMEM
                                               : UFFD_FEATURE_MINOR_SHMEM;
    b->uffd = rdmig_uffd_open_api(feature, &err);
    if (b->uffd < 0) {
        fprintf(stderr, "bench-placement: %s: %s\n", method_name(b->method), err->message);
        exit(1);
    }
    if (b->method == PLACE_CONTINUE) {
        b->alias = mmap(NULL, b->len, PROT_READ | PROT_WRITE, MAP_SHARED, b->memfd, 0);
        if (b->alias == MAP_FAILED)
            die("mmap alias");
        memset(b->alias, 0, b->len); /* in the page cache, as a registered region is */
    }
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)b->guest, .len = b->len },
        .mode = b->method == PLACE_COPY ? UFFDIO_REGISTER_MODE_MISSING
                                        : UFFDIO_REGISTER_MODE_MINOR,
    };
    if (ioctl(b->uffd, UFFDIO_REGISTER, &reg) < 0)
        die("UFFDIO_REGISTER");
}

static void teardown(Bench *b)
{
    close(b->uffd);
    munmap(b->guest, b->len);
    if (b->alias)
        munmap(b->alias, b->len);
    close(b->memfd);
    b->alias = NULL;
}

/* Pages @first..+@n arrive and are placed; the ioctl's time is added up. */
static void arrive_and_place(Bench *b, uint64_t first, uint64_t n)
{
    size_t off = first * b->ps, len = n * b->ps;
    uint8_t *land = b->method == PLACE_COPY ? b->staging : b->alias + off;
    memcpy(land, b->source + off, len);
    uint64_t t0 = now_ns();
    int rc;
    if (b->method == PLACE_COPY) {
        struct uffdio_copy c = { .dst = (uintptr_t)b->guest + off, .src = (uintptr_t)land,
                                 .len = len };
        rc = ioctl(b->uffd, UFFDIO_COPY, &c);
    } else {
        struct uffdio_continue c = { .range = { .start = (uintptr_t)b->guest + off, .len = len } };
        rc = ioctl(b->uffd, UFFDIO_CONTINUE, &c);
    }
    if (rc < 0)
        die(b->method == PLACE_COPY ? "UFFDIO_COPY" : "UFFDIO_CONTINUE");
    b->ioctl_ns += now_ns() - t0;
}

static void *guest_thread(void *arg)
{
    Bench *b = arg;
    uint64_t sum = 0;
    for (size_t p = 0; p < b->len / b->ps; p++) {
        uint64_t t0 = now_ns();
        sum += *(volatile uint8_t *)(b->guest + p * b->ps);
        b->wait_ns[p] = now_ns() - t0;
    }
    return (void *)(uintptr_t)sum;
}

static void run_faults(Bench *b, uint64_t *median, uint64_t *p99, uint64_t *ioctl_avg)
{
    uint64_t npages = b->len / b->ps;
    setup(b);
    b->ioctl_ns = 0;
    pthread_t t;
    pthread_create(&t, NULL, guest_thread, b);
    for (uint64_t served = 0; served < npages;) {
        struct pollfd p = { .fd = b->uffd, .events = POLLIN };
        if (poll(&p, 1, 5000) <= 0)
            die("waiting for a fault");
        struct uffd_msg m;
        if (read(b->uffd, &m, sizeof(m)) != sizeof(m)) {
            if (errno == EAGAIN)
                continue;
            die("reading the userfaultfd");
        }
        if (m.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uint64_t page = (m.arg.pagefault.address - (uintptr_t)b->guest) / b->ps;
        arrive_and_place(b, page, 1);
        served++;
    }
    void *sum;
    pthread_join(t, &sum);
    /* The source pages were set to their index: check what the guest read. */
    for (uint64_t p = 0; p < npages; p++)
        if (b->guest[p * b->ps] != (uint8_t)p) {
            fprintf(stderr, "bench-placement: %s: page %" PRIu64 " reads %u, not %u\n",
                    method_name(b->method), p, b->guest[p * b->ps], (uint8_t)p);
            exit(1);
        }
    qsort(b->wait_ns, npages, sizeof(uint64_t), cmp_u64);
    *median = b->wait_ns[npages / 2];
    *p99 = b->wait_ns[npages * 99 / 100];
    *ioctl_avg = b->ioctl_ns / npages;
    teardown(b);
}

static void run_bulk(Bench *b, double *gbps, double *ioctl_gbps)
{
    uint64_t npages = b->len / b->ps, step = BULK_BYTES / b->ps;
    setup(b);
    b->ioctl_ns = 0;
    uint64_t t0 = now_ns();
    for (uint64_t p = 0; p < npages; p += step)
        arrive_and_place(b, p, step < npages - p ? step : npages - p);
    uint64_t ns = now_ns() - t0;
    if (memcmp(b->guest, b->source, b->len)) {
        fprintf(stderr, "bench-placement: %s: the guest's memory differs\n",
                method_name(b->method));
        exit(1);
    }
    *gbps = (double)b->len / (double)ns;
    *ioctl_gbps = (double)b->len / (double)b->ioctl_ns;
    teardown(b);
}

int main(int argc, char **argv)
{
    size_t mib = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size-mib") && i + 1 < argc) {
            mib = strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: bench-placement [--size-mib N]\n");
            return 2;
        }
    }
    Bench b = { .len = mib << 20, .ps = (size_t)sysconf(_SC_PAGESIZE) };
    if (!mib || b.len % BULK_BYTES) {
        fprintf(stderr, "bench-placement: --size-mib must be a positive whole number\n");
        return 2;
    }
    b.staging = aligned_alloc(b.ps, BULK_BYTES);
    b.source = aligned_alloc(b.ps, b.len);
    b.wait_ns = calloc(b.len / b.ps, sizeof(uint64_t));
    if (!b.staging || !b.source || !b.wait_ns)
        die("allocating");
    for (size_t p = 0; p < b.len / b.ps; p++)
        memset(b.source + p * b.ps, (int)(uint8_t)p, b.ps);

    printf("%zu MiB, %zu-byte pages, bulk pieces of %u KiB\n\n", mib, b.ps, BULK_BYTES >> 10);
    printf("| method | fault wait median us | fault wait p99 us | ioctl per fault us | "
           "bulk GB/s (arrival + placement) | bulk ioctl GB/s |\n|---|---:|---:|---:|---:|---:|\n");
    for (int m = PLACE_COPY; m <= PLACE_CONTINUE; m++) {
        b.method = (Method)m;
        uint64_t med, p99, io;
        double gbps, io_gbps;
        run_faults(&b, &med, &p99, &io);
        run_bulk(&b, &gbps, &io_gbps);
        printf("| %s | %.1f | %.1f | %.2f | %.2f | %.2f |\n", method_name(b.method), med / 1e3,
               p99 / 1e3, io / 1e3, gbps, io_gbps);
    }
    return 0;
}

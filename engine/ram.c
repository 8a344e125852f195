/* SPDX-License-Identifier: MIT */
#define G_LOG_DOMAIN "rdmig-engine"

#include "ram.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "rdmig/error.h"

/* Swap is the only way a touched page can be non-resident; without any swap
 * configured, mincore() alone is exact and the pagemap walk is skipped. */
static bool host_has_swap(void)
{
    FILE *f = fopen("/proc/swaps", "r");
    if (!f)
        return true;
    char line[256];
    int lines = 0;
    while (fgets(line, sizeof(line), f))
        lines++;
    fclose(f);
    return lines > 1;
}

bool rdmig_ram_resident(const void *host, uint64_t length, uint32_t page_size, uint64_t *bitmap,
                        GError **error)
{
    long sys = sysconf(_SC_PAGESIZE);
    uint64_t nsys = length / sys, per = page_size / sys;
    /* In slices, so a 4 GiB block does not need a 1 MiB vector at once. */
    const uint64_t slice = 1u << 16;
    g_autofree unsigned char *vec = g_malloc(slice);
    for (uint64_t s = 0; s < nsys; s += slice) {
        uint64_t n = MIN(slice, nsys - s);
        if (mincore((uint8_t *)host + s * sys, n * sys, vec) < 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "mincore: %s", g_strerror(errno));
            return false;
        }
        for (uint64_t i = 0; i < n; i++)
            if (vec[i] & 1)
                rdmig_bitmap_set(bitmap, (s + i) / per);
    }
    if (!host_has_swap())
        return true;
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "swap is on and /proc/self/pagemap is unreadable (%s): cannot tell untouched "
                    "pages from swapped ones", g_strerror(errno));
        return false;
    }
    g_autofree uint64_t *pm = g_new(uint64_t, slice);
    bool ok = true;
    for (uint64_t s = 0; s < nsys && ok; s += slice) {
        uint64_t n = MIN(slice, nsys - s);
        off_t off = (off_t)(((uintptr_t)host / sys + s) * 8);
        ssize_t r = pread(fd, pm, n * 8, off);
        if (r != (ssize_t)(n * 8)) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "reading pagemap: %s",
                        r < 0 ? g_strerror(errno) : "short read");
            ok = false;
            break;
        }
        for (uint64_t i = 0; i < n; i++)
            if (pm[i] >> 62 & 1) /* swapped */
                rdmig_bitmap_set(bitmap, (s + i) / per);
    }
    close(fd);
    return ok;
}

bool rdmig_page_is_zero(const void *page, size_t len)
{
    const uint64_t *w = page;
    /* Most non-zero pages fail on the first word: one cache line, one miss,
     * before any other line of the page is read (|| not |: each further
     * line is a miss of its own, and most pages need none). */
    if (w[0] || w[len / 16] || w[len / 8 - 1])
        return false;
    uint64_t acc = 0;
    for (size_t i = 0; i < len / 8; i += 8) {
        acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
        if (acc)
            return false;
    }
    return true;
}

uint64_t rdmig_page_hash(const void *page, size_t len)
{
    return XXH3_64bits(page, len);
}

uint64_t rdmig_zero_page_hash(uint32_t page_size)
{
    g_autofree uint8_t *zero = g_malloc0(page_size);
    return rdmig_page_hash(zero, page_size);
}

bool rdmig_ram_drop_pages(RdmigRamBlock *b, uint64_t first, uint64_t n, GError **error)
{
    void *at = b->host + first * b->page_size;
    size_t len = n * b->page_size;
    /* Shared memory (memfd, hugetlbfs) needs its pages punched out of the
     * file; private anonymous memory is dropped by DONTNEED.  Zero copy keeps
     * them in the file (the pull overwrites them there) and only unmaps them
     * from the guest, whose next touch is then a minor fault. */
    if (b->zero_copy ? madvise(at, len, MADV_DONTNEED) < 0
                     : madvise(at, len, MADV_REMOVE) < 0 && madvise(at, len, MADV_DONTNEED) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "dropping stale pages %" G_GUINT64_FORMAT "..%" G_GUINT64_FORMAT
                    " of block '%s': %s", first, first + n - 1, b->name, g_strerror(errno));
        return false;
    }
    return true;
}

/* SPDX-License-Identifier: MIT */
/*
 * Declaring a session's RAM blocks (rdmig_session_add_ram_block(),
 * rdmig_session_set_ram_block_fd()): every argument checked, so that the
 * engine can trust a block's address, length, page size and memory file.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <stdio.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "session.h"

static bool block_args_ok(GPtrArray *blocks, const char *name, void *host, uint64_t length,
                          uint32_t page_size, GError **error)
{
    long sys = sysconf(_SC_PAGESIZE);
    if (!name || !*name || strlen(name) > RDMIG_MAX_NAME) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block name must be 1..%d bytes", RDMIG_MAX_NAME);
        return false;
    }
    if (page_size < (uint32_t)sys || (page_size & (page_size - 1))) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s': page size %u is not a power of two >= %ld", name, page_size,
                    sys);
        return false;
    }
    if (!host || (uintptr_t)host % page_size || !length || length % page_size) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s': address %p and length %" G_GUINT64_FORMAT
                    " must be non-zero multiples of the page size %u", name, host, length,
                    page_size);
        return false;
    }
    if (blocks->len == RDMIG_MAX_BLOCKS) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "more than %d RAM blocks",
                    RDMIG_MAX_BLOCKS);
        return false;
    }
    return true;
}

bool rdmig_session_add_ram_block(RdmigSession *s, const char *name, void *host, uint64_t length,
                                 uint32_t page_size, GError **error)
{
    if (s->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s' added after the session started", name ? name : "");
        return false;
    }
    if (!block_args_ok(s->blocks, name, host, length, page_size, error))
        return false;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *o = s->blocks->pdata[i];
        if (strcmp(o->name, name) == 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "RAM block '%s' added twice",
                        name);
            return false;
        }
        if ((uint8_t *)host < o->host + o->length && o->host < (uint8_t *)host + length) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "RAM block '%s' overlaps block '%s'", name, o->name);
            return false;
        }
    }
    RdmigRamBlock *b = g_new0(RdmigRamBlock, 1);
    g_strlcpy(b->name, name, sizeof(b->name));
    b->host = host;
    b->length = length;
    b->page_size = page_size;
    b->npages = length / page_size;
    b->fd = -1;
    g_ptr_array_add(s->blocks, b);
    return true;
}

/* Is [@host, +@length) a shared mapping of the file @st from @offset on?
 * Checked in /proc/self/maps: reads into that file must be what the guest
 * sees at @host. */
static bool maps_file(const uint8_t *host, uint64_t length, const struct stat *st,
                      uint64_t offset)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return false;
    uint64_t want = (uintptr_t)host, end = want + length;
    char line[4096];
    while (want < end && fgets(line, sizeof(line), f)) {
        unsigned long long lo, hi, off, ino;
        unsigned maj, mn;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &lo, &hi, perms, &off, &maj, &mn,
                   &ino) != 7 || hi <= want || lo > want)
            continue;
        /* The VMA holding the next byte we want. */
        if (perms[3] != 's' || ino != (unsigned long long)st->st_ino ||
            makedev(maj, mn) != st->st_dev || off + (want - lo) != offset + (want - (uintptr_t)host))
            break;
        want = hi;
    }
    fclose(f);
    return want >= end;
}

static RdmigRamBlock *block_named(RdmigSession *s, const char *name)
{
    for (guint i = 0; name && i < s->blocks->len; i++)
        if (!strcmp(((RdmigRamBlock *)s->blocks->pdata[i])->name, name))
            return s->blocks->pdata[i];
    return NULL;
}

/* @fd holds @b's memory from @offset: a regular file on tmpfs/shmem (whose
 * minor faults zero copy needs), mapped shared at the block. */
static bool memory_file_ok(RdmigRamBlock *b, int fd, uint64_t offset, GError **error)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || offset % b->page_size ||
        (uint64_t)st.st_size < offset || (uint64_t)st.st_size - offset < b->length) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s': fd %d at offset %" G_GUINT64_FORMAT " is not a memory "
                    "file (memfd or tmpfs) holding its %" G_GUINT64_FORMAT " bytes at a page "
                    "boundary", b->name, fd, offset, b->length);
        return false;
    }
    struct statfs sfs;
    if (fstatfs(fd, &sfs) < 0 || sfs.f_type != TMPFS_MAGIC) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "RAM block '%s': fd %d is not on tmpfs/shmem (a memfd): zero-copy postcopy "
                    "needs shmem's minor faults", b->name, fd);
        return false;
    }
    if (!maps_file(b->host, b->length, &st, offset)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "RAM block '%s' at %p is not a shared mapping of fd %d from offset %"
                    G_GUINT64_FORMAT ": pulled pages would land in another file", b->name,
                    (void *)b->host, fd, offset);
        return false;
    }
    return true;
}

bool rdmig_session_set_ram_block_fd(RdmigSession *s, const char *name, int fd, uint64_t offset,
                                    GError **error)
{
    if (s->started) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "memory file of RAM block '%s' given after the session started",
                    name ? name : "");
        return false;
    }
    RdmigRamBlock *b = block_named(s, name);
    if (!b) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "no RAM block '%s' to give a memory file to", name ? name : "");
        return false;
    }
    if (!memory_file_ok(b, fd, offset, error))
        return false;
    b->fd = fd;
    b->fd_offset = offset;
    return true;
}

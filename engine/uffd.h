/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd, as the engine uses it: opening a descriptor (user-mode faults
 * only where the kernel allows it), the API handshake with the features the
 * kernel has, and the page placements of postcopy.  The dirty tracker
 * (dirty.c, write-protect mode) and the pager (pager.c, missing and minor
 * modes) build on it.
 */
#ifndef RDMIG_ENGINE_UFFD_H
#define RDMIG_ENGINE_UFFD_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

/** rdmig_uffd_open: a userfaultfd (O_CLOEXEC | O_NONBLOCK), user-mode faults
 *  only where the kernel allows it, else through /dev/userfaultfd; -1 with
 *  @error (RDMIG_ERROR_UNSUPPORTED) saying why not. */
int rdmig_uffd_open(GError **error);
/** rdmig_uffd_features: the features this kernel's userfaultfd offers, asked
 *  on a throw-away descriptor (the handshake can be done once per fd). */
bool rdmig_uffd_features(uint64_t *features, GError **error);
/** rdmig_uffd_open_api: a userfaultfd with the API handshake done for
 *  @features (all of which the kernel must have). */
int rdmig_uffd_open_api(uint64_t features, GError **error);

/** rdmig_uffd_open_postcopy: a userfaultfd for the pager: thread ids,
 *  missing faults on shmem and hugetlbfs, minor faults on shmem, as far as
 *  the kernel has them (asking for an unknown one would fail). */
int rdmig_uffd_open_postcopy(GError **error);
/** rdmig_uffd_probe_postcopy: can this process catch missing-page faults?
 *  The error says why not. */
bool rdmig_uffd_probe_postcopy(GError **error);
/** rdmig_uffd_minor_shmem: does the kernel have minor faults on shmem (what
 *  zero-copy placement needs)? */
bool rdmig_uffd_minor_shmem(void);

/*
 * Placements.  Each places whole pages of @page_size and returns 0 or a
 * negative errno; a page that is there already (EEXIST) is not an error:
 * its waiters are woken and the rest goes on.  Data path: no allocation.
 */
/** UFFDIO_COPY of @len bytes from @src to @dst. */
int rdmig_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, uint32_t page_size);
/** UFFDIO_CONTINUE: maps @len bytes at @start from the page cache (minor faults). */
int rdmig_uffd_continue(int uffd, uint64_t start, uint64_t len, uint32_t page_size);
/** UFFDIO_ZEROPAGE of one page at @start. */
int rdmig_uffd_zeropage(int uffd, uint64_t start, uint32_t page_size);
/** UFFDIO_WAKE: threads waiting on [start, start + len) go on. */
void rdmig_uffd_wake(int uffd, uint64_t start, uint64_t len);

#endif

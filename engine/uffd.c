/* SPDX-License-Identifier: MIT */
/* userfaultfd: descriptors, the API handshake, postcopy's placements
 * (contract in uffd.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rdmig/error.h"

/* Upstream ABI newer than Debian 12's headers (Linux 6.1); whether the
 * running kernel has it is found out at run time. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/*
 * A userfaultfd that works without vm.unprivileged_userfaultfd: user-mode
 * only (we never need kernel faults), else /dev/userfaultfd, whose access
 * is governed by file permissions.
 */
int rdmig_uffd_open(GError **error)
{
    int flags = O_CLOEXEC | O_NONBLOCK;
    int fd, dev, saved;

    fd = syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
    if (fd < 0 && errno == EINVAL) /* before Linux 5.11 */
        fd = syscall(SYS_userfaultfd, flags);
    if (fd >= 0)
        return fd;

    saved = errno;
    if (saved == ENOSYS) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "userfaultfd is not available (kernel without CONFIG_USERFAULTFD)");
        return -1;
    }
    dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        close(dev);
        if (fd >= 0)
            return fd;
    }
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                "cannot create a userfaultfd: %s%s", g_strerror(saved),
                saved == EPERM ? " (vm.unprivileged_userfaultfd is 0 and /dev/userfaultfd "
                                 "is not accessible)"
                               : "");
    return -1;
}

/*
 * Asks the kernel what it supports on a throw-away descriptor first: a
 * UFFDIO_API that asks for an unknown feature fails with a bare EINVAL, and
 * the API handshake can be done only once per descriptor.
 */
bool rdmig_uffd_features(uint64_t *features, GError **error)
{
    struct uffdio_api api = { .api = UFFD_API };
    int fd = rdmig_uffd_open(error);
    if (fd < 0)
        return false;
    bool ok = ioctl(fd, UFFDIO_API, &api) == 0;
    if (!ok)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "UFFDIO_API handshake failed: %s", g_strerror(errno));
    close(fd);
    *features = api.features;
    return ok;
}

int rdmig_uffd_open_api(uint64_t features, GError **error)
{
    int fd = rdmig_uffd_open(error);
    if (fd < 0)
        return -1;
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_UNSUPPORTED,
                    "UFFDIO_API with features 0x%" PRIx64 " failed: %s", (uint64_t)features,
                    g_strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static const uint64_t postcopy_features =
    UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS |
    UFFD_FEATURE_MINOR_SHMEM;

int rdmig_uffd_open_postcopy(GError **error)
{
    uint64_t have;
    if (!rdmig_uffd_features(&have, error))
        return -1;
    return rdmig_uffd_open_api(have & postcopy_features, error);
}

bool rdmig_uffd_probe_postcopy(GError **error)
{
    int fd = rdmig_uffd_open_postcopy(error);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

bool rdmig_uffd_minor_shmem(void)
{
    uint64_t have = 0;
    return rdmig_uffd_features(&have, NULL) && (have & UFFD_FEATURE_MINOR_SHMEM);
}

int rdmig_uffd_copy(int uffd, uint64_t dst, const void *src, uint64_t len, uint32_t page_size)
{
    uint64_t done = 0;
    while (done < len) {
        struct uffdio_copy c = { .dst = dst + done, .src = (uintptr_t)src + done,
                                 .len = len - done };
        if (ioctl(uffd, UFFDIO_COPY, &c) == 0)
            return 0;
        if (errno != EAGAIN && errno != EEXIST)
            return -errno;
        done += c.copy > 0 ? (uint64_t)c.copy : 0;
        if (errno == EEXIST) {
            /* Placed already: its waiters go on, and so does the rest. */
            rdmig_uffd_wake(uffd, dst + done, page_size);
            done += page_size;
        }
    }
    return 0;
}

int rdmig_uffd_continue(int uffd, uint64_t start, uint64_t len, uint32_t page_size)
{
    uint64_t done = 0;
    while (done < len) {
        struct uffdio_continue c = { .range = { .start = start + done, .len = len - done } };
        if (ioctl(uffd, UFFDIO_CONTINUE, &c) == 0)
            return 0;
        if (errno != EAGAIN && errno != EEXIST)
            return -errno;
        done += c.mapped > 0 ? (uint64_t)c.mapped : 0;
        if (errno == EEXIST) {
            rdmig_uffd_wake(uffd, start + done, page_size);
            done += page_size;
        }
    }
    return 0;
}

int rdmig_uffd_zeropage(int uffd, uint64_t start, uint32_t page_size)
{
    struct uffdio_zeropage z = { .range = { .start = start, .len = page_size } };
    if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0)
        return 0;
    if (errno != EEXIST)
        return -errno;
    rdmig_uffd_wake(uffd, start, page_size); /* another thread's fault filled it */
    return 0;
}

void rdmig_uffd_wake(int uffd, uint64_t start, uint64_t len)
{
    struct uffdio_range r = { .start = start, .len = len };
    ioctl(uffd, UFFDIO_WAKE, &r);
}

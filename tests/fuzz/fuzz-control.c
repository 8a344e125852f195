/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness: the control-channel frame reader (transport/control.c)
 * on a real socket.  The input is what a peer sends, then it hangs up; the
 * reader takes frames until it refuses one or the stream ends.  It must
 * never block (the stream is whole before it reads), never crash, and read
 * no frame larger than the limit.
 */
#include <glib.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/control.h"

/* Every payload byte is read: a frame shorter than its header says is an
 * ASan report. */
static volatile uint8_t payload_sum;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    /* libFuzzer's inputs (-max_len) fit a socket buffer: write it all. */
    int big = 1 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    for (size_t off = 0; off < size;) {
        ssize_t n = write(sv[0], data + off, size - off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    close(sv[0]);
    RdmigControl *c = rdmig_control_new(sv[1], 50);
    for (int frames = 0; frames < 10000; frames++) {
        RdmigFrame f;
        GError *err = NULL;
        int r = rdmig_control_recv(c, &f, 0, &err);
        g_clear_error(&err);
        if (r <= 0)
            break;
        if (f.hdr.length > RDMIG_CONTROL_MAX_PAYLOAD)
            abort();
        for (uint32_t i = 0; i < f.hdr.length; i++)
            payload_sum += f.payload[i];
    }
    rdmig_control_free(c);
    return 0;
}

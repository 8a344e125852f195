/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness: the TCP data backend's receive path (transport/tcp.c:
 * frame headers, PUTs into a registered region, GETs from it, acks, the
 * data HELLO) as the target side sees it, on a real loopback connection.
 * The input follows a valid data HELLO, as a peer holding the token could
 * send it.  The backend must fail the connection or take the frames, never
 * write outside the region (ASan: the region sits in an exact-size heap
 * block) and never crash.
 */
#include <glib.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rdmig/transport.h"
#include "transport/address.h"
#include "util/be.h"

#define REGION_SIZE (64 * 1024)
#define TOKEN 0x0123456789abcdefull

static const RdmigTransportOps *ops;
static RdmigTransport *tp;
static RdmigListener *listener;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    ops = rdmig_transport_lookup("tcp");
    RdmigTransportConfig cfg = { .conn_token = TOKEN, .connect_timeout_ms = 1000 };
    tp = ops ? ops->create(&cfg, NULL) : NULL;
    listener = tp ? ops->listen(tp, "127.0.0.1:0", NULL) : NULL;
    if (!listener)
        abort();
    return 0;
}

/* The data HELLO of docs/protocol.md §6.1: 32 bytes, type 1, the token. */
static void data_hello(uint8_t h[32])
{
    memset(h, 0, 32);
    rdmig_put_be32(h, 0x52445444); /* "RDTD" */
    h[4] = 1;                      /* HELLO */
    rdmig_put_be32(h + 12, 1);     /* version, in the length field */
    rdmig_put_be64(h + 16, TOKEN); /* token, in the offset field */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int s = rdmig_socket_connect(ops->listener_address(listener), 1000, -1, NULL);
    if (s < 0)
        abort();
    uint8_t h[32];
    data_hello(h);
    if (write(s, h, sizeof(h)) != (ssize_t)sizeof(h))
        abort();
    RdmigConn *c = ops->accept(listener, 1000, NULL);
    if (!c)
        abort();
    uint8_t *ram = malloc(REGION_SIZE);
    memset(ram, 0, REGION_SIZE);
    RdmigRegion *r = ops->register_region(tp, ram, REGION_SIZE,
                                          RDMIG_ACCESS_REMOTE_WRITE | RDMIG_ACCESS_REMOTE_READ,
                                          NULL);
    for (size_t off = 0; off < size;) {
        ssize_t n = send(s, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    shutdown(s, SHUT_WR);
    /* Poll until the connection fails (the peer hung up, or broke a rule). */
    for (int i = 0; i < 2000; i++) {
        short ev;
        struct pollfd p = { .fd = ops->conn_fd(c, &ev) };
        p.events = ev;
        poll(&p, 1, 10);
        RdmigIoReq *done[8];
        if (ops->poll(c, done, 8) < 0)
            break;
    }
    ops->disconnect(c);
    RdmigIoReq *done[8];
    while (ops->poll(c, done, 8) > 0)
        ;
    ops->conn_close(c);
    ops->deregister_region(r);
    free(ram);
    close(s);
    return 0;
}

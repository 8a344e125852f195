/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness: the destination's door and the start of its handshake
 * (engine/hello-gate.c, the frame header, the HELLO decoder, feature
 * negotiation) on a real loopback listener.  The input is what a stranger
 * sends before hanging up.  The door must hand over only a whole, valid
 * HELLO, drop everything else, and never crash or hang.
 */
#include <glib.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/hello-gate.h"
#include "transport/address.h"

static int listen_fd = -1;
static char *listen_address;

static void quiet(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer data)
{
    (void)domain, (void)level, (void)msg, (void)data;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    /* Every dropped stranger is a warning: not news here. */
    g_log_set_handler("rdmig-engine", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE, quiet, NULL);
    listen_fd = rdmig_socket_listen("127.0.0.1:0", &listen_address, NULL);
    if (listen_fd < 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int s = rdmig_socket_connect(listen_address, 1000, -1, NULL);
    if (s < 0)
        abort();
    for (size_t off = 0; off < size;) {
        ssize_t n = write(s, data + off, size - off);
        if (n <= 0)
            break; /* the door already dropped it */
        off += (size_t)n;
    }
    shutdown(s, SHUT_WR);
    RdmigHelloGate *g = rdmig_hello_gate_new(listen_fd, NULL, 1000, "fuzzed listener");
    bool accepted = false;
    for (int i = 0; i < 1000; i++) {
        struct pollfd p[1 + RDMIG_GATE_SLOTS];
        int timeout = 100;
        unsigned n = rdmig_hello_gate_pollfds(g, p, &timeout);
        if (accepted && n == 1)
            break; /* dropped */
        if (poll(p, n, timeout) < 0)
            abort();
        accepted |= p[0].revents != 0;
        RdmigHello h = { 0 };
        uint64_t bytes = 0;
        RdmigTls *tls = NULL;
        int fd = rdmig_hello_gate_step(g, p, n, &h, &bytes, &tls);
        if (fd >= 0) {
            if (tls) /* the door was opened without credentials */
                abort();
            /* Handed over: a whole HELLO of a sane size, decoded. */
            if (bytes < RDMIG_CONTROL_HEADER_SIZE ||
                bytes > RDMIG_CONTROL_HEADER_SIZE + RDMIG_GATE_MAX_HELLO || bytes > size)
                abort();
            uint64_t enabled;
            GError *err = NULL;
            rdmig_features_negotiate(RDMIG_FEATURES_KNOWN, 0, h.features_supported,
                                     h.features_required, &enabled, &err);
            g_clear_error(&err);
            rdmig_hello_clear(&h);
            close(fd);
            break;
        }
        if (i == 999)
            abort(); /* the door neither dropped nor handed over: a hang */
    }
    rdmig_hello_gate_free(g);
    close(s);
    return 0;
}

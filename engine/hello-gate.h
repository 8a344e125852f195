/* SPDX-License-Identifier: MIT */
/*
 * The destination's door: connections on a control or recovery listener wait
 * here, several at once, each with a short deadline, until one has sent a
 * whole, valid HELLO.  Whatever a connection does before that (garbage, a
 * wrong version, a frame too big, silence, one byte a second) drops that
 * connection only: a stranger on the network can neither end an incoming
 * migration nor hold the door shut for the real source.
 *
 * With credentials, the TLS handshake happens here too, before the HELLO:
 * a peer that cannot authenticate is one more connection dropped.
 *
 * Reads here never block: each connection's bytes collect in its own buffer
 * as they come, so that the caller's loop (the pager, during a postcopy
 * recovery) keeps serving while connections are in the door.
 */
#ifndef RDMIG_ENGINE_HELLO_GATE_H
#define RDMIG_ENGINE_HELLO_GATE_H

#include <poll.h>

#include "transport/control.h"
#include "wire.h"

/* Connections in the door at once; one more evicts the oldest. */
#define RDMIG_GATE_SLOTS 8
/* The first frame's size limit: a HELLO of RDMIG_MAX_BLOCKS blocks with
 * names of 255 bytes fits in 80 KiB. */
#define RDMIG_GATE_MAX_HELLO (80u << 10)

typedef struct RdmigHelloGate RdmigHelloGate;

/** rdmig_hello_gate_new: a door for @listen_fd (not owned), whose
 *  connections each get @deadline_ms to authenticate (with @creds; NULL:
 *  none, in clear) and send their HELLO; @what names the listener in
 *  warnings ("control listener on ADDR"). */
RdmigHelloGate *rdmig_hello_gate_new(int listen_fd, RdmigTlsCreds *creds, int deadline_ms,
                                     const char *what);
/** rdmig_hello_gate_free: closes the connections still in the door. */
void rdmig_hello_gate_free(RdmigHelloGate *g);

/** rdmig_hello_gate_pollfds: the listener and the connections in the door,
 *  written to @p (room for 1 + RDMIG_GATE_SLOTS); returns how many.
 *  *@timeout_ms is lowered to the nearest deadline. */
unsigned rdmig_hello_gate_pollfds(RdmigHelloGate *g, struct pollfd *p, int *timeout_ms);

/** rdmig_hello_gate_step: after poll(2) on those @n entries of @p: takes
 *  new connections, reads what arrived, drops connections that failed or
 *  are past their deadline (with a warning; a peer of another version is
 *  told so first).  Returns a connected socket (owned by the caller now)
 *  whose first frame was a valid HELLO, decoded into @hello, with
 *  *@bytes_read the bytes of that frame and *@tls its TLS session (owned
 *  by the caller now; NULL in clear); or -1 when none is ready yet. */
int rdmig_hello_gate_step(RdmigHelloGate *g, const struct pollfd *p, unsigned n,
                          RdmigHello *hello, uint64_t *bytes_read, RdmigTls **tls);

#endif

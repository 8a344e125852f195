/* SPDX-License-Identifier: MIT */
/* Both ends of a TLS session on one thread, for tests and benchmarks. */
#ifndef RDMIG_TEST_TLS_PAIR_H
#define RDMIG_TEST_TLS_PAIR_H

#include <sys/socket.h>

#include "transport/tls.h"

/* Steps @client (on socket @cfd) and @server (on @sfd) in turn until both
 * are done or one failed; every step returns at once, which is what the
 * destination's door relies on.  A failed end has sent its alert: the
 * other gets to read it, then its socket is shut so that it ends too.
 * True when both completed; else *@cerr / *@serr say why. */
static inline bool tls_pair_handshake(RdmigTls *client, int cfd, RdmigTls *server, int sfd,
                                      GError **cerr, GError **serr)
{
    int c = 0, s = 0;
    for (int i = 0; i < 1000 && (c == 0 || s == 0) && c >= 0 && s >= 0; i++) {
        short ev;
        if (c == 0)
            c = rdmig_tls_handshake_step(client, &ev, cerr);
        if (s == 0)
            s = rdmig_tls_handshake_step(server, &ev, serr);
    }
    for (int i = 0; i < 10 && (c == 0 || s == 0); i++) {
        short ev;
        if (c == 0)
            c = rdmig_tls_handshake_step(client, &ev, cerr);
        if (s == 0)
            s = rdmig_tls_handshake_step(server, &ev, serr);
        if (c == 0 && s < 0)
            shutdown(sfd, SHUT_RDWR);
        if (s == 0 && c < 0)
            shutdown(cfd, SHUT_RDWR);
    }
    return c > 0 && s > 0;
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * A session's control channel: sending and receiving messages with the
 * peer's liveness judged on the way (every frame, PINGs included, refreshes
 * it; more than peer_timeout_ms of silence is a silent peer), the peer's
 * ERROR turned into a local error, the keepalive thread, and closing the
 * channel.  One thread receives (the role's); any thread may send.
 */
#ifndef RDMIG_ENGINE_CHANNEL_H
#define RDMIG_ENGINE_CHANNEL_H

#include "session.h"

/** rdmig_channel_connect: the source's control channel to @address: the
 *  connection, and with the session's credentials the TLS handshake, both
 *  within connect_timeout_ms; the peer counts as heard from then. */
bool rdmig_channel_connect(RdmigSession *s, const char *address, GError **error);
/** rdmig_channel_open_after_hello: the destination's, on a connection
 *  (@fd and @tls, taken; @tls NULL in clear) whose HELLO (@hello_bytes,
 *  header included) was read at the door (hello-gate.h). */
void rdmig_channel_open_after_hello(RdmigSession *s, int fd, RdmigTls *tls,
                                    uint64_t hello_bytes);
/** rdmig_channel_send: sends one message and releases @payload (may be
 *  NULL).  Fails (RDMIG_ERROR_LINK) when the link is gone. */
bool rdmig_channel_send(RdmigSession *s, RdmigMsgType type, GByteArray *payload, GError **error);
/** rdmig_channel_send_error: best effort, once per link: tells the peer why
 *  this side stops. */
void rdmig_channel_send_error(RdmigSession *s, const GError *err);
/** rdmig_channel_recv: one message, skipping PINGs; fails on an ERROR from
 *  the peer, on a cancel, on a failure another thread reported, and on
 *  silence longer than peer_timeout_ms.  Waits at most @timeout_ms (-1:
 *  until the peer timeout) for one to begin.  Returns 1, 0 (nothing in
 *  time) or -1 (@error set). */
int rdmig_channel_recv(RdmigSession *s, RdmigFrame *f, int timeout_ms, GError **error);
/** rdmig_channel_expect: the next message, which must be of @type (else a
 *  PROTOCOL error naming what came instead, @context saying when), waiting
 *  at most @timeout_ms (-1: as long as the peer is alive). */
bool rdmig_channel_expect(RdmigSession *s, RdmigMsgType type, const char *context,
                          int timeout_ms, RdmigFrame *f, GError **error);
/** rdmig_channel_check_silence: fails (RDMIG_ERROR_PEER) when the peer has
 *  been silent longer than the peer timeout and nothing from it waits to be
 *  read; for loops that receive through poll(2) themselves. */
bool rdmig_channel_check_silence(RdmigSession *s, GError **error);
/** rdmig_channel_heard: the peer was heard from just now. */
void rdmig_channel_heard(RdmigSession *s);
/** rdmig_channel_close: counts the channel's bytes into the stats and
 *  closes it (idempotent). */
void rdmig_channel_close(RdmigSession *s);

/** rdmig_channel_start_keepalive: a thread sending PING twice per
 *  keepalive period (when KEEPALIVE was negotiated). */
void rdmig_channel_start_keepalive(RdmigSession *s);
void rdmig_channel_stop_keepalive(RdmigSession *s);

#endif

/* SPDX-License-Identifier: MIT */
/* "host:port" parsing shared by the control channel and the TCP backend. */
#ifndef RDMIG_TRANSPORT_ADDRESS_H
#define RDMIG_TRANSPORT_ADDRESS_H

#include <glib.h>
#include <stdbool.h>
#include <sys/socket.h>

/** rdmig_address_parse: "HOST:PORT", "[V6]:PORT" or "tcp:..." into @ss.
 *  HOST may be a name (resolved once). @allow_port0 for listeners. */
bool rdmig_address_parse(const char *address, bool allow_port0, struct sockaddr_storage *ss,
                         socklen_t *len, GError **error);

/** rdmig_address_host: the HOST part of @address (allocated), or NULL if
 *  it does not parse. */
char *rdmig_address_host(const char *address);

/** rdmig_address_is_loopback: whether @address (as rdmig_address_parse()
 *  takes it) is on this host only: 127.0.0.0/8, ::1 or a v4-mapped
 *  127.x.  An address that does not parse or resolve counts as loopback
 *  here: the caller's own parse reports that. */
bool rdmig_address_is_loopback(const char *address);

/** rdmig_address_format: "host:port" / "[v6]:port" / "[fe80::..%if]:port" of @sa,
 *  newly allocated. */
char *rdmig_address_format(const struct sockaddr *sa);

/** rdmig_socket_listen: bound, listening, non-blocking TCP socket on @address. */
int rdmig_socket_listen(const char *address, char **bound, GError **error);

/** rdmig_socket_accept: waits up to @timeout_ms (-1: forever) for a connection;
 *  @cancel_fd (or -1) readable aborts the wait. Returns a blocking socket. */
int rdmig_socket_accept(int listen_fd, int timeout_ms, int cancel_fd, GError **error);
/** rdmig_socket_accept_now: a connection already waiting on @listen_fd, or
 *  -1: none waits (no @error), or accept(2) failed (@error set). */
int rdmig_socket_accept_now(int listen_fd, GError **error);

/** rdmig_socket_connect: connects with a timeout; @cancel_fd (or -1) readable
 *  aborts it. Returns a blocking socket. */
int rdmig_socket_connect(const char *address, int timeout_ms, int cancel_fd, GError **error);

#endif

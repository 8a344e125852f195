/* SPDX-License-Identifier: MIT */
/*
 * TLS 1.3 for the control channel, with GnuTLS (QEMU's library); nothing
 * else includes GnuTLS headers.
 *
 * Credentials come in QEMU's layouts, so one set serves QEMU and rdmig:
 *  - x509: a directory with ca-cert.pem (and optionally ca-crl.pem),
 *    server-cert.pem + server-key.pem (destination) and client-cert.pem +
 *    client-key.pem (source).  Both ends present a certificate signed by
 *    the CA and check the other's; the source also checks that the
 *    destination's certificate names the host it connected to.
 *  - PSK: a keys.psk file of "IDENTITY:HEXKEY" lines (psktool's format).
 *    The destination accepts any identity in it, the source presents the
 *    first.
 *
 * Sessions run over a socket the caller owns and polls; every call here
 * returns at once (GNUTLS_E_AGAIN becomes -EAGAIN), so the destination's
 * door can hold several handshakes at a time and the pager never waits on
 * a stranger.
 */
#ifndef RDMIG_TRANSPORT_TLS_H
#define RDMIG_TRANSPORT_TLS_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct RdmigTlsCreds RdmigTlsCreds;
typedef struct RdmigTls RdmigTls;

typedef enum { RDMIG_TLS_CLIENT, RDMIG_TLS_SERVER } RdmigTlsSide;

/** rdmig_tls_creds_x509: loads QEMU's tls-creds-x509 directory @dir for
 *  @side; names the missing or unreadable file. */
RdmigTlsCreds *rdmig_tls_creds_x509(const char *dir, RdmigTlsSide side, GError **error);
/** rdmig_tls_creds_psk: loads a keys.psk file; names the bad line. */
RdmigTlsCreds *rdmig_tls_creds_psk(const char *file, RdmigTlsSide side, GError **error);
RdmigTlsCreds *rdmig_tls_creds_ref(RdmigTlsCreds *c);
void rdmig_tls_creds_unref(RdmigTlsCreds *c);
/** "x509" or "psk". */
const char *rdmig_tls_creds_kind(const RdmigTlsCreds *c);
/** "x509 certificates from DIR" / "pre-shared key IDENTITY from FILE". */
const char *rdmig_tls_creds_describe(const RdmigTlsCreds *c);

/** rdmig_psk_parse: the keys of a keys.psk text, for tests and for the
 *  loader: identities into @ids, raw keys into @keys (GBytes). */
bool rdmig_psk_parse(const char *text, const char *origin, GPtrArray *ids, GPtrArray *keys,
                     GError **error);

/** rdmig_tls_new: a session on connected socket @fd (not owned).
 *  @peer_host (client only) is the host the certificate must name. */
RdmigTls *rdmig_tls_new(RdmigTlsCreds *creds, int fd, const char *peer_host, GError **error);
void rdmig_tls_free(RdmigTls *t);

/** rdmig_tls_handshake_step: advances the handshake without waiting.
 *  1 done; 0 wants *@events (POLLIN/POLLOUT) on the socket; -1 failed
 *  (@error: RDMIG_ERROR_AUTH for credentials the other end refused or
 *  presented wrongly, RDMIG_ERROR_LINK for a closed connection,
 *  RDMIG_ERROR_PROTOCOL for anything else). */
int rdmig_tls_handshake_step(RdmigTls *t, short *events, GError **error);
/** rdmig_tls_handshake: the whole handshake within @timeout_ms; @cancel_fd
 *  (or -1) readable aborts it. */
bool rdmig_tls_handshake(RdmigTls *t, int timeout_ms, int cancel_fd, GError **error);

/** rdmig_tls_send / rdmig_tls_recv: like send(2)/recv(2) with MSG_DONTWAIT
 *  on the records: bytes moved, 0 (recv) the peer closed cleanly,
 *  -EAGAIN (wait for rdmig_tls_wants() on the socket), or another negative
 *  errno (-EPIPE closed, -EPROTO a bad record); rdmig_tls_last_error()
 *  says what GnuTLS saw.  After -EAGAIN a send must be repeated with the
 *  same arguments.  One sender and one receiver may run at once. */
ssize_t rdmig_tls_send(RdmigTls *t, const void *buf, size_t len);
ssize_t rdmig_tls_recv(RdmigTls *t, void *buf, size_t len);
/** What the last -EAGAIN waits for: POLLIN or POLLOUT. */
short rdmig_tls_wants(RdmigTls *t);
/** Decrypted bytes already buffered: a poll(2) on the socket would not see them. */
size_t rdmig_tls_pending(RdmigTls *t);
const char *rdmig_tls_last_error(RdmigTls *t);
/** Sends close_notify if the socket takes it at once. */
void rdmig_tls_bye(RdmigTls *t);

/** rdmig_tls_export: @len bytes of keying material (RFC 8446 §7.5) for
 *  @label: the same on both ends of this session, unknowable to anyone
 *  else.  The session's secrets (data tokens, recovery proof) come from it. */
bool rdmig_tls_export(RdmigTls *t, const char *label, void *out, size_t len);
/** The protocol, key exchange and cipher, for logs. */
char *rdmig_tls_describe(RdmigTls *t);

#endif

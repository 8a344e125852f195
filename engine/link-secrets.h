/* SPDX-License-Identifier: MIT */
/*
 * What a session takes from its authenticated control channel (TLS
 * exporter, RFC 8446 §7.5), so that nothing secret crosses the wire:
 *  - the token every data connection presents (TCP HELLO, RDMA private
 *    data), derived on both ends of each link instead of sent in HELLO_ACK;
 *  - the recovery secret, kept from the first link, and the proof a
 *    returning source gives with it: an HMAC of the new link's own
 *    exported value, in HELLO's session-id field, so a recorded or relayed
 *    proof is worth nothing on any other link.
 * In clear (loopback or --insecure, no credentials) the token is random and
 * sent in HELLO_ACK, and the session id is the proof, as before.
 */
#ifndef RDMIG_ENGINE_LINK_SECRETS_H
#define RDMIG_ENGINE_LINK_SECRETS_H

#include "session.h"

/** rdmig_link_data_token: the data connections' token on the current
 *  link: derived from TLS, or @clear_token without it. */
uint64_t rdmig_link_data_token(RdmigSession *s, uint64_t clear_token);
/** rdmig_link_keep_secret: on the first link, keeps the recovery secret. */
bool rdmig_link_keep_secret(RdmigSession *s, GError **error);
/** rdmig_link_session_id: what the source's HELLO carries on this link:
 *  with TLS and @recovering the proof, else the session id. */
void rdmig_link_session_id(RdmigSession *s, bool recovering,
                           uint8_t out[RDMIG_SESSION_ID_LEN]);
/** rdmig_link_is_own_source: whether @id (from a recovery HELLO on the
 *  current link) proves the session: compared in constant time. */
bool rdmig_link_is_own_source(RdmigSession *s, const uint8_t id[RDMIG_SESSION_ID_LEN]);

#endif

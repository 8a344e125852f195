/* SPDX-License-Identifier: MIT */
/*
 * A session's data plane, as both roles use it: which transports this side
 * may use (by capability, through the registry's one chooser), registering
 * the RAM blocks with the chosen one, telling a broken connection from a
 * misbehaving peer by errno, and tearing it all down.
 */
#ifndef RDMIG_ENGINE_DATAPLANE_H
#define RDMIG_ENGINE_DATAPLANE_H

#include "session.h"

/** rdmig_dataplane_transports: the transports this side may move pages
 *  with (one-sided writes), best first, as params.transport allows; 0 with
 *  @error naming why each was left out. */
uint32_t rdmig_dataplane_transports(RdmigSession *s, const RdmigTransportOps **out,
                                    uint32_t max, GError **error);
/** rdmig_dataplane_config: what s->tp->create() is given. */
RdmigTransportConfig rdmig_dataplane_config(RdmigSession *s, uint64_t conn_token);
/** rdmig_dataplane_register_blocks: every RAM block as one region with
 *  @access, large blocks in parallel threads.  On failure the error names
 *  the block; those registered stay so (rdmig_dataplane_close() drops them). */
bool rdmig_dataplane_register_blocks(RdmigSession *s, uint32_t access, GError **error);
/** rdmig_dataplane_register_readable: the source's RAM blocks, each as a
 *  second region (read_region) the peer may read (postcopy); blocks that
 *  have one already are left as they are.  Errors as above. */
bool rdmig_dataplane_register_readable(RdmigSession *s, GError **error);
/** rdmig_dataplane_peer_keys: the peer's keys from @f (REGIONS or
 *  SOURCE_REGIONS, named @msg in errors), one per RAM block: NULL with a
 *  PROTOCOL error when malformed or for another number of blocks. */
RdmigRegions *rdmig_dataplane_peer_keys(RdmigSession *s, const RdmigFrame *f, const char *msg,
                                        GError **error);
/** rdmig_dataplane_conn_failed: the error for data connection @ci failing
 *  with negative errno @err in @what: RDMIG_ERROR_LINK when the connection
 *  broke (closed, reset, timed out, flushed), RDMIG_ERROR_PROTOCOL when the
 *  peer broke the rules. */
void rdmig_dataplane_conn_failed(RdmigSession *s, uint32_t ci, int err, const char *what,
                                 GError **error);
/** rdmig_dataplane_deregister_blocks: revokes the peer's access to every
 *  RAM block (all are tried).  False with @error (RDMIG_ERROR_RESOURCE)
 *  naming the first block whose revocation may have failed. */
bool rdmig_dataplane_deregister_blocks(RdmigSession *s, GError **error);
/** rdmig_dataplane_close_connections: disconnects and frees the data
 *  connections (@drain: reaping what they still complete first). */
void rdmig_dataplane_close_connections(RdmigSession *s, bool drain);
/** rdmig_dataplane_close: the connections closed, the RAM blocks
 *  deregistered (a failure is logged: the link is going anyway), the
 *  transport destroyed. */
void rdmig_dataplane_close(RdmigSession *s, bool drain);
/** rdmig_session_drop_link: the keepalive, the data plane and the control
 *  channel, all gone; guest RAM and the session's bookkeeping stay. */
void rdmig_session_drop_link(RdmigSession *s);

#endif

/* SPDX-License-Identifier: MIT */
/* How a role's thread ends, the same for both roles: the final state, the
 * error kept and told to the peer, and the peer's own words preferred to
 * the echo of its going away. */
#ifndef RDMIG_ENGINE_FINISH_H
#define RDMIG_ENGINE_FINISH_H

#include "session.h"

/** rdmig_session_prefer_peer_words: after a broken connection (*@err is
 *  RDMIG_ERROR_LINK) the peer may still explain on the control channel why
 *  it went away: waits up to 300 ms for its words and, if they come, takes
 *  them in place of *@err. */
void rdmig_session_prefer_peer_words(RdmigSession *s, GError **err);
typedef enum {
    RDMIG_FINISH_TELL_PEER = 1 << 0, /* the error goes to the peer (ERROR) */
    RDMIG_FINISH_NOT_CANCELLED = 1 << 1, /* failed even after a cancel: the guest did not
                                          * go back to running where the caller asked */
} RdmigFinishFlags;

/** rdmig_session_finish: completed when @ok; else @err (taken) becomes the
 *  session's error, goes to the peer (TELL_PEER), and the state ends
 *  cancelled after a cancel (unless NOT_CANCELLED), failed otherwise. */
void rdmig_session_finish(RdmigSession *s, bool ok, GError *err, RdmigFinishFlags flags);

#endif

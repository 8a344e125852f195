/* SPDX-License-Identifier: MIT */
/* The migration state machine: one table of allowed transitions, one function
 * that changes state. */
#ifndef RDMIG_ENGINE_STATE_H
#define RDMIG_ENGINE_STATE_H

#include <stdbool.h>

#include "rdmig/rdmig.h"

/** rdmig_state_transition_allowed: whether @from -> @to is in the table. */
bool rdmig_state_transition_allowed(RdmigState from, RdmigState to);

/** rdmig_state_is_final: completed, failed or cancelled. */
bool rdmig_state_is_final(RdmigState s);

/** rdmig_session_state: the session's state now.  Any thread. */
RdmigState rdmig_session_state(RdmigSession *s);
/** rdmig_session_set_state: @from -> @to if @from is current and the edge
 *  is in the table; then the caller's state function, on this thread.  The
 *  only place a state changes. */
bool rdmig_session_set_state(RdmigSession *s, RdmigState from, RdmigState to);
/** rdmig_session_set_state_or_cancelled: the same; a refusal can only mean
 *  that a cancel moved the state on, and sets @error so. */
bool rdmig_session_set_state_or_cancelled(RdmigSession *s, RdmigState from, RdmigState to,
                                          GError **error);

#endif

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

#endif

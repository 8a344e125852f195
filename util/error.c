/* SPDX-License-Identifier: MIT */
/* The one error domain of rdmig (include/rdmig/error.h): its quark and the
 * stable names of its codes, for logs, JSON and the wire's ERROR message.
 * Below every layer: rdma/, transport/ and engine/ all report in it. */
#include <glib.h>

#include "rdmig/error.h"

G_DEFINE_QUARK(rdmig-error-quark, rdmig_error)

static const char *const error_names[] = {
    [RDMIG_ERROR_CONNECT] = "connect",     [RDMIG_ERROR_PROTOCOL] = "protocol",
    [RDMIG_ERROR_VERSION] = "version",     [RDMIG_ERROR_UNSUPPORTED] = "unsupported",
    [RDMIG_ERROR_PEER] = "peer",           [RDMIG_ERROR_RESOURCE] = "resource",
    [RDMIG_ERROR_CANCELLED] = "cancelled", [RDMIG_ERROR_AUTH] = "auth",
    [RDMIG_ERROR_INVALID] = "invalid",     [RDMIG_ERROR_LAYOUT] = "layout",
    [RDMIG_ERROR_CONVERGE] = "converge",   [RDMIG_ERROR_VERIFY] = "verify",
    [RDMIG_ERROR_LINK] = "link",
};

const char *rdmig_error_code_str(RdmigErrorCode code)
{
    return (unsigned)code < G_N_ELEMENTS(error_names) && error_names[code] ? error_names[code]
                                                                           : "unknown";
}

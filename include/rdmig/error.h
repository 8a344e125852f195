/* SPDX-License-Identifier: MIT */
/*
 * rdmig error domain.  Control-path functions report failures through a
 * GError in this domain; data-path functions return negative errno instead.
 */
#ifndef RDMIG_ERROR_H
#define RDMIG_ERROR_H

#include <glib.h>

#include <rdmig/export.h>

G_BEGIN_DECLS

#define RDMIG_ERROR (rdmig_error_quark())

/* What went wrong, coarse enough for a caller to decide what to do next. */
typedef enum {
    RDMIG_ERROR_CONNECT,     /* could not reach, bind or accept a peer */
    RDMIG_ERROR_PROTOCOL,    /* the peer sent something malformed or out of range */
    RDMIG_ERROR_VERSION,     /* protocol version or required feature not shared */
    RDMIG_ERROR_UNSUPPORTED, /* this build, kernel or device lacks what was asked */
    RDMIG_ERROR_PEER,        /* the peer reported an error, or went silent (stalled) */
    RDMIG_ERROR_RESOURCE,    /* memory, memlock, descriptors, registration */
    RDMIG_ERROR_CANCELLED,   /* cancelled by the caller or by the peer */
    RDMIG_ERROR_AUTH,        /* the peer is not the session it claims to be */
    RDMIG_ERROR_INVALID,     /* bad argument or configuration from the caller */
    RDMIG_ERROR_LAYOUT,      /* RAM layouts of source and destination differ */
    RDMIG_ERROR_CONVERGE,    /* precopy did not converge within the limits */
    RDMIG_ERROR_VERIFY,      /* destination memory differs from the source's */
    RDMIG_ERROR_LINK,        /* a connection to the peer broke: closed, reset, unreachable,
                              * retries exhausted (a silent peer is RDMIG_ERROR_PEER) */
} RdmigErrorCode;

/** rdmig_error_quark: the GQuark of RDMIG_ERROR. Any thread. */
RDMIG_API GQuark rdmig_error_quark(void);

/** rdmig_error_code_str: stable lower-case name of @code, for logs and JSON. */
RDMIG_API const char *rdmig_error_code_str(RdmigErrorCode code);

G_END_DECLS

#endif

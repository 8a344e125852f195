/* SPDX-License-Identifier: MIT */
/* Assertions shared by the unit tests. */
#ifndef RDMIG_TEST_UTIL_H
#define RDMIG_TEST_UTIL_H

#include <glib.h>
#include <string.h>

#include "rdmig/error.h"

/* @err is an RDMIG_ERROR of @code whose message mentions @needle (if given). */
static inline void assert_error(GError *err, int code, const char *needle)
{
    g_assert_nonnull(err);
    g_assert_true(err->domain == RDMIG_ERROR);
    if (err->code != code)
        g_error("expected error code %s, got %s: %s", rdmig_error_code_str(code),
                rdmig_error_code_str(err->code), err->message);
    if (needle && !strstr(err->message, needle))
        g_error("error message \"%s\" does not mention \"%s\"", err->message, needle);
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * JSON members the way rdmig writes them (json-glib's JsonBuilder
 * underneath), shared by the final report and the monitor: counters as
 * integers, seconds and milliseconds with a fraction as doubles, strings
 * made valid UTF-8 (error messages may quote what a peer sent).
 */
#ifndef RDMIG_TOOL_JSON_H
#define RDMIG_TOOL_JSON_H

#include <json-glib/json-glib.h>
#include <stdbool.h>
#include <stdint.h>

/** cli_json_int: member @name = @v, an integer (clamped to INT64_MAX, which
 *  no counter reaches).  Any thread. */
void cli_json_int(JsonBuilder *b, const char *name, uint64_t v);

/** cli_json_double: member @name = @v rounded to 3 decimals, always
 *  written as a double (with a decimal point), so readers see a float even
 *  when it is 0.  Any thread. */
void cli_json_double(JsonBuilder *b, const char *name, double v);

/** cli_json_bool: member @name = @v.  Any thread. */
void cli_json_bool(JsonBuilder *b, const char *name, bool v);

/** cli_json_string: member @name = @v (NULL: ""), invalid UTF-8 replaced.
 *  Any thread. */
void cli_json_string(JsonBuilder *b, const char *name, const char *v);

/** cli_json_to_line: the value @b built, as compact JSON on one line (no
 *  newline).  Newly allocated.  Any thread. */
char *cli_json_to_line(JsonBuilder *b);

#endif

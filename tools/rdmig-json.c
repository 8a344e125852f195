/* SPDX-License-Identifier: MIT */
/*
 * JSON members with rdmig's conventions; see rdmig-json.h.
 */
#define G_LOG_DOMAIN "rdmig"

#include "rdmig-json.h"

void cli_json_int(JsonBuilder *b, const char *name, uint64_t v)
{
    json_builder_set_member_name(b, name);
    json_builder_add_int_value(b, (gint64)MIN(v, (uint64_t)G_MAXINT64));
}

void cli_json_double(JsonBuilder *b, const char *name, double v)
{
    /* The value a reader got when this was printed with "%.3f": the
     * milliseconds of a time in seconds are all that mean anything. */
    char buf[G_ASCII_DTOSTR_BUF_SIZE];
    json_builder_set_member_name(b, name);
    json_builder_add_double_value(b, g_ascii_strtod(g_ascii_formatd(buf, sizeof(buf), "%.3f", v),
                                                    NULL));
}

void cli_json_bool(JsonBuilder *b, const char *name, bool v)
{
    json_builder_set_member_name(b, name);
    json_builder_add_boolean_value(b, v);
}

void cli_json_string(JsonBuilder *b, const char *name, const char *v)
{
    g_autofree char *valid = g_utf8_make_valid(v ? v : "", -1);
    json_builder_set_member_name(b, name);
    json_builder_add_string_value(b, valid);
}

char *cli_json_to_line(JsonBuilder *b)
{
    g_autoptr(JsonNode) root = json_builder_get_root(b);
    return json_to_string(root, FALSE);
}

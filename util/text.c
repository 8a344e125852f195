/* SPDX-License-Identifier: MIT */
/* Peer text made safe to print (text.h). */
#include "text.h"

#include <glib.h>
#include <stdbool.h>

/* A C1 control in UTF-8: U+0080..U+009F is 0xC2 0x80..0x9F. */
static bool is_c1(const unsigned char *p)
{
    return p[0] == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F;
}

size_t rdmig_text_make_printable(char *s)
{
    size_t replaced = 0;
    char *p = s;
    while (*p) {
        const char *bad = NULL;
        /* The valid stretch from p; bad is where it stops, at NUL or at an
         * invalid sequence. */
        g_utf8_validate(p, -1, &bad);
        for (char *q = p; q < bad; q++) {
            unsigned char c = (unsigned char)*q;
            if (c < 0x20 || c == 0x7F) {
                *q = '?';
                replaced++;
            } else if (is_c1((const unsigned char *)q)) {
                q[0] = q[1] = '?';
                replaced += 2;
                q++;
            }
        }
        p = (char *)bad;
        if (*p) { /* one byte of an invalid sequence */
            *p++ = '?';
            replaced++;
        }
    }
    return replaced;
}

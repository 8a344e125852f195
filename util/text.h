/* SPDX-License-Identifier: MIT */
/* Text that came from a peer, made safe to print: a peer's error message or
 * block name ends up on an operator's terminal, where an escape sequence
 * could rewrite the screen or retitle the window. */
#ifndef RDMIG_UTIL_TEXT_H
#define RDMIG_UTIL_TEXT_H

#include <stddef.h>

/** rdmig_text_make_printable: replaces, in place, every byte of the
 *  NUL-terminated @s that a terminal could act on with '?': C0 controls
 *  (tab and newline included: one message stays one line), DEL, the
 *  two-byte C1 controls U+0080..U+009F (some terminals take U+009B as CSI),
 *  and every byte of an invalid UTF-8 sequence.  The length stays the same.
 *  Returns the number of bytes replaced. */
size_t rdmig_text_make_printable(char *s);

#endif

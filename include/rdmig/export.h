/* SPDX-License-Identifier: MIT */
/* Which functions librdmig exports: those marked RDMIG_API here, and only
 * they (the library is built with hidden visibility and a version script,
 * librdmig.map; tests/unit/test_layers.py checks the two). */
#ifndef RDMIG_EXPORT_H
#define RDMIG_EXPORT_H

#define RDMIG_API __attribute__((visibility("default")))

#endif

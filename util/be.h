/* SPDX-License-Identifier: MIT */
/* Big-endian fields of rdmig's wire formats (control messages, the TCP data
 * header, the RDMA remote key) and of the synthetic guest's device state.
 * The one copy: every layer includes it. */
#ifndef RDMIG_UTIL_BE_H
#define RDMIG_UTIL_BE_H

#include <stdint.h>

static inline void rdmig_put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void rdmig_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v;
}
static inline void rdmig_put_be64(uint8_t *p, uint64_t v)
{
    rdmig_put_be32(p, v >> 32);
    rdmig_put_be32(p + 4, (uint32_t)v);
}
static inline uint16_t rdmig_get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rdmig_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t rdmig_get_be64(const uint8_t *p)
{
    return (uint64_t)rdmig_get_be32(p) << 32 | rdmig_get_be32(p + 4);
}

#endif

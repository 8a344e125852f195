/* SPDX-License-Identifier: MIT */
/*
 * The TCP control channel: length-prefixed frames with magic, version, type
 * and sequence number.  The frame layer knows nothing of message contents
 * (engine/wire.c does); it guarantees that a frame is whole, in sequence and
 * within the size limit, or reports exactly what was wrong.
 *
 * Frame header, 16 bytes, big-endian:
 *   0  u32 magic    "RDMG" (0x52444d47)
 *   4  u16 version  RDMIG_CONTROL_VERSION
 *   6  u16 type     message type (engine/wire.h)
 *   8  u32 length   payload bytes that follow, <= RDMIG_CONTROL_MAX_PAYLOAD
 *  12  u32 seq      0, 1, 2, ... per direction
 */
#ifndef RDMIG_TRANSPORT_CONTROL_H
#define RDMIG_TRANSPORT_CONTROL_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <poll.h>

#include "tls.h"

#define RDMIG_CONTROL_MAGIC 0x52444d47u
#define RDMIG_CONTROL_VERSION 1
#define RDMIG_CONTROL_HEADER_SIZE 16
#define RDMIG_CONTROL_MAX_PAYLOAD (16u << 20)

typedef struct {
    uint16_t version;
    uint16_t type;
    uint32_t length;
    uint32_t seq;
} RdmigFrameHeader;

/* A received frame; @payload is owned by the channel, valid until the next recv. */
typedef struct {
    RdmigFrameHeader hdr;
    const uint8_t *payload;
} RdmigFrame;

typedef struct RdmigControl RdmigControl;

void rdmig_frame_header_encode(uint8_t out[RDMIG_CONTROL_HEADER_SIZE], uint16_t type,
                               uint32_t length, uint32_t seq);
/** Validates magic, version and length; says which is wrong. */
bool rdmig_frame_header_decode(const uint8_t in[RDMIG_CONTROL_HEADER_SIZE],
                               RdmigFrameHeader *hdr, GError **error);

/** rdmig_control_new: wraps connected socket @fd (owned from now on).
 *  @stall_timeout_ms bounds how long a frame may take once begun, and how long
 *  a send may wait for the peer to read. */
RdmigControl *rdmig_control_new(int fd, int stall_timeout_ms);
/** rdmig_control_new_over: the same over @tls (owned from now on; NULL: in
 *  clear) whose handshake is done, for a connection whose first @frames
 *  frames (@bytes bytes in all) the caller has read itself. */
RdmigControl *rdmig_control_new_over(int fd, RdmigTls *tls, int stall_timeout_ms,
                                     uint32_t frames, uint64_t bytes);
void rdmig_control_free(RdmigControl *c);

/** rdmig_control_send: sends one frame. Thread-safe. */
bool rdmig_control_send(RdmigControl *c, uint16_t type, const void *payload, size_t len,
                        GError **error);

/** rdmig_control_recv: waits up to @timeout_ms (-1 forever) for a frame to
 *  begin. Returns 1 with @frame filled, 0 if none began in time, -1 on error
 *  (peer closed, truncated, stalled mid-frame, bad header, out of sequence).
 *  One receiving thread at a time. */
int rdmig_control_recv(RdmigControl *c, RdmigFrame *frame, int timeout_ms, GError **error);

/** rdmig_control_shutdown: wakes a blocked recv/send; further calls fail. Any thread. */
void rdmig_control_shutdown(RdmigControl *c);

int rdmig_control_fd(RdmigControl *c);
/** The channel's TLS session, or NULL in clear. */
RdmigTls *rdmig_control_tls(RdmigControl *c);

/** rdmig_control_pollfd: the entry a poll(2) for incoming frames needs;
 *  lowers *@timeout_ms to 0 when TLS holds decrypted bytes already, which
 *  the socket would not show.  rdmig_control_readable: after that poll,
 *  whether a frame has begun to arrive. */
void rdmig_control_pollfd(RdmigControl *c, struct pollfd *p, int *timeout_ms);
bool rdmig_control_readable(RdmigControl *c, const struct pollfd *p);
/** Bytes sent plus received, headers included. */
uint64_t rdmig_control_bytes(RdmigControl *c);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * Control-channel messages: types, feature bits and the encode/decode of
 * each payload.  Every integer is big-endian and fixed-width; strings are a
 * length followed by bytes (no NUL).  Decoders check every length against the
 * payload and name the message and field that is short or out of range.
 * The sequence of messages is charted in docs/protocol.md.
 */
#ifndef RDMIG_ENGINE_WIRE_H
#define RDMIG_ENGINE_WIRE_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "rdmig/transport.h"

#define RDMIG_HELLO_MAGIC 0x524d4849u /* "RMHI" */
#define RDMIG_PROTOCOL_VERSION 1
#define RDMIG_SESSION_ID_LEN 16
#define RDMIG_MAX_BLOCKS 256
#define RDMIG_MAX_NAME 255
#define RDMIG_MAX_TRANSPORTS 4
#define RDMIG_MAX_DATA_CONNS 16
/* Hash and zero-run messages are cut to stay well under the frame limit. */
#define RDMIG_HASHES_PER_MSG (128u * 1024)
#define RDMIG_ZERO_RUNS_PER_MSG (64u * 1024)

/* Feature bits: both sides enable the intersection of what they support;
 * a required bit the peer lacks fails the handshake. */
#define RDMIG_FEATURE_VERIFY      (1ull << 0) /* per-page hashes checked at completion */
#define RDMIG_FEATURE_ZERO_PAGES  (1ull << 1) /* zero pages as compact runs */
#define RDMIG_FEATURE_MULTI_CONN  (1ull << 2) /* more than one data connection */
#define RDMIG_FEATURE_KEEPALIVE   (1ull << 3) /* PING frames on an idle channel */
#define RDMIG_FEATURE_POSTCOPY    (1ull << 4) /* the destination may pull pages after switchover */
#define RDMIG_FEATURE_RECOVERY    (1ull << 5) /* a broken postcopy pauses and resumes on a new link */
#define RDMIG_FEATURE_PRECOPY_RESUME (1ull << 6) /* a broken precopy pauses and resumes */
#define RDMIG_FEATURES_KNOWN (RDMIG_FEATURE_VERIFY | RDMIG_FEATURE_ZERO_PAGES | \
                              RDMIG_FEATURE_MULTI_CONN | RDMIG_FEATURE_KEEPALIVE | \
                              RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY | \
                              RDMIG_FEATURE_PRECOPY_RESUME)

typedef enum {
    RDMIG_MSG_HELLO = 1,     /* src -> dst: version, features, session, layout */
    RDMIG_MSG_HELLO_ACK,     /* dst -> src: enabled features, data transport and address */
    RDMIG_MSG_REGIONS,       /* dst -> src: remote key of each RAM block */
    RDMIG_MSG_ZERO,          /* src -> dst: runs of pages that are now all zero */
    RDMIG_MSG_ROUND_END,     /* src -> dst: every page of the round is placed */
    RDMIG_MSG_ROUND_ACK,     /* dst -> src: every message before ROUND_END is applied */
    RDMIG_MSG_DEVICE_STATE,  /* src -> dst: the device-state blob */
    RDMIG_MSG_HASHES,        /* src -> dst: hashes of pages as last sent */
    RDMIG_MSG_COMPLETE,      /* src -> dst: nothing more to send */
    RDMIG_MSG_COMPLETE_ACK,  /* dst -> src: verified and running, or why not */
    RDMIG_MSG_ERROR,         /* either way: fatal error or cancel, with code and text */
    RDMIG_MSG_PING,          /* either way: keepalive */
    RDMIG_MSG_SOURCE_REGIONS,/* src -> dst: keys of the source's RAM, readable (postcopy) */
    RDMIG_MSG_DISCARD,       /* src -> dst: runs of pages to drop and pull again (postcopy) */
    RDMIG_MSG_POSTCOPY_START,/* src -> dst: guest stopped here; run it there and pull the rest */
    RDMIG_MSG_POSTCOPY_RUNNING, /* dst -> src: the guest runs on the destination */
    RDMIG_MSG_POSTCOPY_PREPARE, /* src -> dst: drop and check now, the guest still runs here */
    RDMIG_MSG_POSTCOPY_PREPARED,/* dst -> src: done; the switchover can begin */
    RDMIG_MSG_RESUME,        /* src -> dst after HELLO on a recovery link: epoch (recovery) */
    RDMIG_MSG_RECEIVED,      /* dst -> src: a slice of the received-pages bitmap (recovery) */
    RDMIG_MSG_RECEIVED_END,  /* dst -> src: the bitmap is complete; pages received in all
                              * (precopy resume: the last round applied, no bitmap) */
    RDMIG_MSG_POSTCOPY_RESUME, /* src -> dst: keys and hashes resent; pull again (recovery) */
    RDMIG_MSG_EPOCH,         /* dst -> src after a recovering source's HELLO: the last epoch
                              * accepted; RESUME must name the next (recovery) */
    RDMIG_MSG__MAX
} RdmigMsgType;

const char *rdmig_msg_type_str(uint16_t type);

typedef struct {
    char name[RDMIG_MAX_NAME + 1];
    uint64_t length;     /* bytes */
    uint32_t page_size;  /* bytes */
} RdmigWireBlock;

typedef struct {
    uint16_t version;                       /* RDMIG_PROTOCOL_VERSION of the sender */
    uint64_t features_supported;            /* RDMIG_FEATURE_* the sender can do */
    uint64_t features_required;             /* ... and those it cannot do without */
    uint8_t session_id[RDMIG_SESSION_ID_LEN];
    uint32_t data_connections;              /* wanted by the source */
    uint32_t n_transports;                  /* data transports the source can use */
    char transports[RDMIG_MAX_TRANSPORTS][16];
    uint32_t n_blocks;
    RdmigWireBlock *blocks;                 /* n_blocks, owned */
} RdmigHello;

typedef struct {
    uint16_t version;
    uint64_t features_supported;
    uint64_t features_enabled;              /* the intersection, as decided by dst */
    uint32_t data_connections;              /* how many the source is to open */
    char transport[16];                     /* data transport chosen */
    char data_address[128];                 /* where to connect it */
    uint64_t conn_token;                    /* presented on every data connection */
} RdmigHelloAck;

typedef struct {
    uint32_t n_blocks;
    RdmigRemoteKey keys[RDMIG_MAX_BLOCKS];
} RdmigRegions;

typedef struct {
    uint32_t code;        /* RdmigErrorCode */
    char message[4096];
} RdmigWireError;

typedef struct {
    uint32_t status;      /* 0 ok, else 1 + RdmigErrorCode */
    uint64_t pages_verified;
    uint64_t mismatches;
    uint64_t verify_us;   /* time the destination spent verifying */
    char message[4096];
} RdmigCompleteAck;

void rdmig_hello_clear(RdmigHello *h);

GByteArray *rdmig_hello_encode(const RdmigHello *h);
bool rdmig_hello_decode(const uint8_t *p, size_t len, RdmigHello *h, GError **error);
GByteArray *rdmig_hello_ack_encode(const RdmigHelloAck *a);
bool rdmig_hello_ack_decode(const uint8_t *p, size_t len, RdmigHelloAck *a, GError **error);
GByteArray *rdmig_regions_encode(const RdmigRegions *r);
bool rdmig_regions_decode(const uint8_t *p, size_t len, RdmigRegions *r, GError **error);
GByteArray *rdmig_error_encode(uint32_t code, const char *message);
bool rdmig_error_decode(const uint8_t *p, size_t len, RdmigWireError *e, GError **error);
GByteArray *rdmig_complete_ack_encode(const RdmigCompleteAck *a);
bool rdmig_complete_ack_decode(const uint8_t *p, size_t len, RdmigCompleteAck *a, GError **error);

/* ROUND_ACK: u64 round, then (optional, both or neither) what the
 * destination still has to verify and how long that would take it with
 * both guests stopped: the source's switchover estimate counts it. */
typedef struct {
    uint64_t round;
    uint64_t unverified_pages;
    uint64_t verify_us;
    bool has_backlog; /* the two fields above were sent */
} RdmigRoundAck;

GByteArray *rdmig_round_ack_encode(const RdmigRoundAck *a);
bool rdmig_round_ack_decode(const uint8_t *p, size_t len, RdmigRoundAck *a, GError **error);

/* ZERO: u32 block, u32 n, then n x (u64 first page, u32 count). */
typedef struct {
    uint32_t block;
    uint32_t n_runs;
    const uint8_t *runs;  /* points into the payload */
} RdmigZeroMsg;
bool rdmig_zero_decode(const uint8_t *p, size_t len, RdmigZeroMsg *z, GError **error);
void rdmig_zero_run_get(const RdmigZeroMsg *z, uint32_t i, uint64_t *first, uint32_t *count);
void rdmig_zero_run_put(GByteArray *msg, uint64_t first, uint32_t count);
GByteArray *rdmig_zero_begin(uint32_t block);
void rdmig_zero_finish(GByteArray *msg); /* writes n from the runs appended */

/* HASHES: u32 block, u64 first page, u32 n, then n x u64. */
typedef struct {
    uint32_t block;
    uint64_t first;
    uint32_t n;
    const uint8_t *hashes;
} RdmigHashesMsg;
GByteArray *rdmig_hashes_encode(uint32_t block, uint64_t first, const uint64_t *hashes, uint32_t n);
bool rdmig_hashes_decode(const uint8_t *p, size_t len, RdmigHashesMsg *m, GError **error);
uint64_t rdmig_hashes_get(const RdmigHashesMsg *m, uint32_t i);

/* RECEIVED: u32 block, u64 first page (a multiple of 64), u32 n words, then
 * n x u64 bitmap words (LSB first). */
#define RDMIG_RECEIVED_WORDS_PER_MSG (64u * 1024)
typedef struct {
    uint32_t block;
    uint64_t first;
    uint32_t n_words;
    const uint8_t *words;
} RdmigReceivedMsg;
GByteArray *rdmig_received_encode(uint32_t block, uint64_t first, const uint64_t *words,
                                  uint32_t n_words);
bool rdmig_received_decode(const uint8_t *p, size_t len, RdmigReceivedMsg *m, GError **error);
uint64_t rdmig_received_word(const RdmigReceivedMsg *m, uint32_t i);

/* ROUND_END / ROUND_ACK: u64 round.  COMPLETE: u64 pages.  RESUME,
 * POSTCOPY_RESUME, EPOCH: u64 epoch.  RECEIVED_END: u64 pages. */
GByteArray *rdmig_u64_encode(uint64_t v);
bool rdmig_u64_decode(const uint8_t *p, size_t len, uint64_t *v, const char *what, GError **error);

/* Negotiation, shared by both sides and unit-tested on its own: the enabled
 * set, or an error naming the bits one side requires and the other lacks. */
bool rdmig_features_negotiate(uint64_t local_supported, uint64_t local_required,
                              uint64_t peer_supported, uint64_t peer_required,
                              uint64_t *enabled, GError **error);

#endif

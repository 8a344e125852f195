/* SPDX-License-Identifier: MIT */
#define G_LOG_DOMAIN "rdmig-engine"

#include "wire.h"

#include "util/be.h"
#include "util/text.h"

#include <string.h>

#include "rdmig/error.h"

static const char *const msg_names[RDMIG_MSG__MAX] = {
    [RDMIG_MSG_HELLO] = "HELLO",
    [RDMIG_MSG_HELLO_ACK] = "HELLO_ACK",
    [RDMIG_MSG_REGIONS] = "REGIONS",
    [RDMIG_MSG_ZERO] = "ZERO",
    [RDMIG_MSG_ROUND_END] = "ROUND_END",
    [RDMIG_MSG_ROUND_ACK] = "ROUND_ACK",
    [RDMIG_MSG_DEVICE_STATE] = "DEVICE_STATE",
    [RDMIG_MSG_HASHES] = "HASHES",
    [RDMIG_MSG_COMPLETE] = "COMPLETE",
    [RDMIG_MSG_COMPLETE_ACK] = "COMPLETE_ACK",
    [RDMIG_MSG_ERROR] = "ERROR",
    [RDMIG_MSG_PING] = "PING",
    [RDMIG_MSG_SOURCE_REGIONS] = "SOURCE_REGIONS",
    [RDMIG_MSG_DISCARD] = "DISCARD",
    [RDMIG_MSG_POSTCOPY_START] = "POSTCOPY_START",
    [RDMIG_MSG_POSTCOPY_RUNNING] = "POSTCOPY_RUNNING",
    [RDMIG_MSG_POSTCOPY_PREPARE] = "POSTCOPY_PREPARE",
    [RDMIG_MSG_POSTCOPY_PREPARED] = "POSTCOPY_PREPARED",
    [RDMIG_MSG_RESUME] = "RESUME",
    [RDMIG_MSG_RECEIVED] = "RECEIVED",
    [RDMIG_MSG_RECEIVED_END] = "RECEIVED_END",
    [RDMIG_MSG_POSTCOPY_RESUME] = "POSTCOPY_RESUME",
    [RDMIG_MSG_EPOCH] = "EPOCH",
};

const char *rdmig_msg_type_str(uint16_t type)
{
    return type < RDMIG_MSG__MAX && msg_names[type] ? msg_names[type] : "unknown";
}

/* ------------------------------------------------------------ writer */

static void w8(GByteArray *b, uint8_t v) { g_byte_array_append(b, &v, 1); }
static void w16(GByteArray *b, uint16_t v)
{
    uint8_t x[2];
    rdmig_put_be16(x, v);
    g_byte_array_append(b, x, 2);
}
static void w32(GByteArray *b, uint32_t v)
{
    uint8_t x[4];
    rdmig_put_be32(x, v);
    g_byte_array_append(b, x, 4);
}
static void w64(GByteArray *b, uint64_t v)
{
    uint8_t x[8];
    rdmig_put_be64(x, v);
    g_byte_array_append(b, x, 8);
}
static void wstr8(GByteArray *b, const char *s)
{
    size_t n = MIN(strlen(s), 255u);
    w8(b, (uint8_t)n);
    g_byte_array_append(b, (const uint8_t *)s, n);
}
static void wstr16(GByteArray *b, const char *s)
{
    size_t n = MIN(strlen(s), 65535u);
    w16(b, (uint16_t)n);
    g_byte_array_append(b, (const uint8_t *)s, n);
}

/* ------------------------------------------------------------ reader */

typedef struct {
    const uint8_t *p;
    size_t len, off;
    const char *msg;
    GError **error;
    bool failed;
} Rd;

static bool need(Rd *r, size_t n, const char *field)
{
    if (r->failed)
        return false;
    if (r->len - r->off < n) {
        g_set_error(r->error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "truncated %s message: %s needs %zu bytes at offset %zu, only %zu left",
                    r->msg, field, n, r->off, r->len - r->off);
        r->failed = true;
        return false;
    }
    return true;
}
static uint8_t r8(Rd *r, const char *f)
{
    if (!need(r, 1, f))
        return 0;
    return r->p[r->off++];
}
static uint16_t r16(Rd *r, const char *f)
{
    if (!need(r, 2, f))
        return 0;
    uint16_t v = rdmig_get_be16(r->p + r->off);
    r->off += 2;
    return v;
}
static uint32_t r32(Rd *r, const char *f)
{
    if (!need(r, 4, f))
        return 0;
    uint32_t v = rdmig_get_be32(r->p + r->off);
    r->off += 4;
    return v;
}
static uint64_t r64(Rd *r, const char *f)
{
    uint64_t hi = r32(r, f);
    return hi << 32 | r32(r, f);
}
static void rbytes(Rd *r, void *dst, size_t n, const char *f)
{
    if (!need(r, n, f))
        return;
    memcpy(dst, r->p + r->off, n);
    r->off += n;
}
/* A length-prefixed string into @dst of @cap bytes (NUL added), made
 * printable: every string a peer sends (names, messages) may reach a log or
 * a terminal, and none is allowed to act on it. */
static void rstr(Rd *r, bool wide, char *dst, size_t cap, const char *f)
{
    size_t n = wide ? r16(r, f) : r8(r, f);
    if (r->failed)
        return;
    if (n >= cap) {
        g_set_error(r->error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "%s message: %s of %zu bytes exceeds %zu", r->msg, f, n, cap - 1);
        r->failed = true;
        return;
    }
    rbytes(r, dst, n, f);
    if (!r->failed)
        dst[n] = 0;
    if (!r->failed && memchr(dst, 0, n)) {
        g_set_error(r->error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "%s message: %s contains a NUL byte", r->msg, f);
        r->failed = true;
    }
    if (!r->failed)
        rdmig_text_make_printable(dst);
}
/* Decoders end here: trailing bytes are as wrong as missing ones. */
static bool rend(Rd *r)
{
    if (r->failed)
        return false;
    if (r->off != r->len) {
        g_set_error(r->error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "%s message has %zu unexpected trailing bytes", r->msg, r->len - r->off);
        return false;
    }
    return true;
}
static bool rfail(Rd *r, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static bool rfail(Rd *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(r->error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s message: %s", r->msg, s);
    r->failed = true;
    return false;
}

#define READER(name) Rd rd = { .p = p, .len = len, .msg = name, .error = error }

/* ------------------------------------------------------------ HELLO */

void rdmig_hello_clear(RdmigHello *h)
{
    g_free(h->blocks);
    h->blocks = NULL;
}

GByteArray *rdmig_hello_encode(const RdmigHello *h)
{
    GByteArray *b = g_byte_array_new();
    w32(b, RDMIG_HELLO_MAGIC);
    w16(b, h->version);
    w16(b, 0);
    w64(b, h->features_supported);
    w64(b, h->features_required);
    g_byte_array_append(b, h->session_id, RDMIG_SESSION_ID_LEN);
    w32(b, h->data_connections);
    w32(b, h->n_transports);
    for (uint32_t i = 0; i < h->n_transports; i++)
        wstr8(b, h->transports[i]);
    w32(b, h->n_blocks);
    for (uint32_t i = 0; i < h->n_blocks; i++) {
        wstr8(b, h->blocks[i].name);
        w64(b, h->blocks[i].length);
        w32(b, h->blocks[i].page_size);
    }
    return b;
}

bool rdmig_hello_decode(const uint8_t *p, size_t len, RdmigHello *h, GError **error)
{
    READER("HELLO");
    memset(h, 0, sizeof(*h));
    uint32_t magic = r32(&rd, "magic");
    if (!rd.failed && magic != RDMIG_HELLO_MAGIC)
        return rfail(&rd, "bad magic 0x%08x", magic);
    h->version = r16(&rd, "version");
    if (!rd.failed && h->version != RDMIG_PROTOCOL_VERSION) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "peer speaks rdmig protocol version %u; this build speaks %u", h->version,
                    RDMIG_PROTOCOL_VERSION);
        return false;
    }
    r16(&rd, "reserved");
    h->features_supported = r64(&rd, "supported features");
    h->features_required = r64(&rd, "required features");
    rbytes(&rd, h->session_id, RDMIG_SESSION_ID_LEN, "session id");
    h->data_connections = r32(&rd, "data connections");
    h->n_transports = r32(&rd, "transport count");
    if (!rd.failed && h->n_transports > RDMIG_MAX_TRANSPORTS)
        return rfail(&rd, "%u transports (at most %d)", h->n_transports, RDMIG_MAX_TRANSPORTS);
    for (uint32_t i = 0; i < h->n_transports && !rd.failed; i++)
        rstr(&rd, false, h->transports[i], sizeof(h->transports[i]), "transport name");
    h->n_blocks = r32(&rd, "block count");
    if (!rd.failed && (h->n_blocks == 0 || h->n_blocks > RDMIG_MAX_BLOCKS))
        return rfail(&rd, "%u RAM blocks (1..%d allowed)", h->n_blocks, RDMIG_MAX_BLOCKS);
    if (rd.failed)
        return false;
    h->blocks = g_new0(RdmigWireBlock, h->n_blocks);
    for (uint32_t i = 0; i < h->n_blocks && !rd.failed; i++) {
        rstr(&rd, false, h->blocks[i].name, sizeof(h->blocks[i].name), "block name");
        h->blocks[i].length = r64(&rd, "block length");
        h->blocks[i].page_size = r32(&rd, "block page size");
    }
    if (!rend(&rd)) {
        rdmig_hello_clear(h);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------ HELLO_ACK */

GByteArray *rdmig_hello_ack_encode(const RdmigHelloAck *a)
{
    GByteArray *b = g_byte_array_new();
    w16(b, a->version);
    w64(b, a->features_supported);
    w64(b, a->features_enabled);
    w32(b, a->data_connections);
    wstr8(b, a->transport);
    wstr16(b, a->data_address);
    w64(b, a->conn_token);
    return b;
}

bool rdmig_hello_ack_decode(const uint8_t *p, size_t len, RdmigHelloAck *a, GError **error)
{
    READER("HELLO_ACK");
    memset(a, 0, sizeof(*a));
    a->version = r16(&rd, "version");
    a->features_supported = r64(&rd, "supported features");
    a->features_enabled = r64(&rd, "enabled features");
    a->data_connections = r32(&rd, "data connections");
    rstr(&rd, false, a->transport, sizeof(a->transport), "transport");
    rstr(&rd, true, a->data_address, sizeof(a->data_address), "data address");
    a->conn_token = r64(&rd, "connection token");
    if (!rd.failed && (a->data_connections == 0 || a->data_connections > RDMIG_MAX_DATA_CONNS))
        return rfail(&rd, "%u data connections (1..%d allowed)", a->data_connections,
                     RDMIG_MAX_DATA_CONNS);
    return rend(&rd);
}

/* ------------------------------------------------------------ REGIONS */

GByteArray *rdmig_regions_encode(const RdmigRegions *r)
{
    GByteArray *b = g_byte_array_new();
    w32(b, r->n_blocks);
    for (uint32_t i = 0; i < r->n_blocks; i++) {
        w8(b, (uint8_t)r->keys[i].len);
        g_byte_array_append(b, r->keys[i].bytes, r->keys[i].len);
    }
    return b;
}

bool rdmig_regions_decode(const uint8_t *p, size_t len, RdmigRegions *r, GError **error)
{
    READER("REGIONS");
    r->n_blocks = r32(&rd, "block count");
    if (!rd.failed && r->n_blocks > RDMIG_MAX_BLOCKS)
        return rfail(&rd, "%u regions (at most %d)", r->n_blocks, RDMIG_MAX_BLOCKS);
    for (uint32_t i = 0; i < r->n_blocks && !rd.failed; i++) {
        r->keys[i].len = r8(&rd, "key length");
        if (!rd.failed && r->keys[i].len > RDMIG_REMOTE_KEY_MAX)
            return rfail(&rd, "key of %u bytes (at most %d)", r->keys[i].len,
                         RDMIG_REMOTE_KEY_MAX);
        rbytes(&rd, r->keys[i].bytes, r->keys[i].len, "key");
    }
    return rend(&rd);
}

/* ------------------------------------------------------------ ERROR, COMPLETE_ACK */

GByteArray *rdmig_error_encode(uint32_t code, const char *message)
{
    GByteArray *b = g_byte_array_new();
    w32(b, code);
    /* Cut to what the peer's decoder accepts, on a UTF-8 boundary. */
    g_autofree char *m = g_strdup(message ? message : "");
    size_t cap = sizeof(((RdmigWireError *)0)->message) - 1;
    if (strlen(m) > cap) {
        const char *end = g_utf8_find_prev_char(m, m + cap + 1);
        m[end ? end - m : (ptrdiff_t)cap] = 0;
    }
    wstr16(b, m);
    return b;
}

bool rdmig_error_decode(const uint8_t *p, size_t len, RdmigWireError *e, GError **error)
{
    READER("ERROR");
    e->code = r32(&rd, "code");
    rstr(&rd, true, e->message, sizeof(e->message), "message");
    return rend(&rd);
}

GByteArray *rdmig_complete_ack_encode(const RdmigCompleteAck *a)
{
    GByteArray *b = g_byte_array_new();
    w32(b, a->status);
    w64(b, a->pages_verified);
    w64(b, a->mismatches);
    w64(b, a->verify_us);
    wstr16(b, a->message);
    return b;
}

bool rdmig_complete_ack_decode(const uint8_t *p, size_t len, RdmigCompleteAck *a, GError **error)
{
    READER("COMPLETE_ACK");
    a->status = r32(&rd, "status");
    a->pages_verified = r64(&rd, "pages verified");
    a->mismatches = r64(&rd, "mismatches");
    a->verify_us = r64(&rd, "verify time");
    rstr(&rd, true, a->message, sizeof(a->message), "message");
    return rend(&rd);
}

GByteArray *rdmig_round_ack_encode(const RdmigRoundAck *a)
{
    GByteArray *b = g_byte_array_sized_new(24);
    w64(b, a->round);
    if (a->has_backlog) {
        w64(b, a->unverified_pages);
        w64(b, a->verify_us);
    }
    return b;
}

bool rdmig_round_ack_decode(const uint8_t *p, size_t len, RdmigRoundAck *a, GError **error)
{
    READER("ROUND_ACK");
    *a = (RdmigRoundAck){ .round = r64(&rd, "round") };
    if (len > 8) {
        a->has_backlog = true;
        a->unverified_pages = r64(&rd, "unverified pages");
        a->verify_us = r64(&rd, "verification time");
    }
    return rend(&rd);
}

/* ------------------------------------------------------------ ZERO */

GByteArray *rdmig_zero_begin(uint32_t block)
{
    GByteArray *b = g_byte_array_sized_new(8 + 12 * 1024);
    w32(b, block);
    w32(b, 0);
    return b;
}

void rdmig_zero_run_put(GByteArray *msg, uint64_t first, uint32_t count)
{
    w64(msg, first);
    w32(msg, count);
}

void rdmig_zero_finish(GByteArray *msg)
{
    uint32_t n = (msg->len - 8) / 12;
    uint8_t *p = msg->data + 4;
    p[0] = n >> 24; p[1] = n >> 16; p[2] = n >> 8; p[3] = (uint8_t)n;
}

bool rdmig_zero_decode(const uint8_t *p, size_t len, RdmigZeroMsg *z, GError **error)
{
    READER("ZERO");
    z->block = r32(&rd, "block");
    z->n_runs = r32(&rd, "run count");
    if (rd.failed)
        return false;
    if ((uint64_t)z->n_runs * 12 != len - rd.off)
        return rfail(&rd, "%u runs need %" G_GUINT64_FORMAT " bytes, payload has %zu", z->n_runs,
                     (uint64_t)z->n_runs * 12, len - rd.off);
    z->runs = p + rd.off;
    return true;
}

void rdmig_zero_run_get(const RdmigZeroMsg *z, uint32_t i, uint64_t *first, uint32_t *count)
{
    const uint8_t *q = z->runs + (size_t)i * 12;
    *first = rdmig_get_be64(q);
    *count = rdmig_get_be32(q + 8);
}

/* ------------------------------------------------------------ HASHES */

GByteArray *rdmig_hashes_encode(uint32_t block, uint64_t first, const uint64_t *hashes, uint32_t n)
{
    GByteArray *b = g_byte_array_sized_new(16 + (size_t)n * 8);
    w32(b, block);
    w64(b, first);
    w32(b, n);
    for (uint32_t i = 0; i < n; i++)
        w64(b, hashes[i]);
    return b;
}

bool rdmig_hashes_decode(const uint8_t *p, size_t len, RdmigHashesMsg *m, GError **error)
{
    READER("HASHES");
    m->block = r32(&rd, "block");
    m->first = r64(&rd, "first page");
    m->n = r32(&rd, "count");
    if (rd.failed)
        return false;
    if ((uint64_t)m->n * 8 != len - rd.off)
        return rfail(&rd, "%u hashes need %" G_GUINT64_FORMAT " bytes, payload has %zu", m->n,
                     (uint64_t)m->n * 8, len - rd.off);
    m->hashes = p + rd.off;
    return true;
}

uint64_t rdmig_hashes_get(const RdmigHashesMsg *m, uint32_t i)
{
    return rdmig_get_be64(m->hashes + (size_t)i * 8);
}

/* ------------------------------------------------------------ received bitmap */

GByteArray *rdmig_received_encode(uint32_t block, uint64_t first, const uint64_t *words,
                                  uint32_t n_words)
{
    GByteArray *b = g_byte_array_sized_new(16 + (size_t)n_words * 8);
    w32(b, block);
    w64(b, first);
    w32(b, n_words);
    for (uint32_t i = 0; i < n_words; i++)
        w64(b, words[i]);
    return b;
}

bool rdmig_received_decode(const uint8_t *p, size_t len, RdmigReceivedMsg *m, GError **error)
{
    READER("RECEIVED");
    m->block = r32(&rd, "block");
    m->first = r64(&rd, "first page");
    m->n_words = r32(&rd, "word count");
    if (rd.failed)
        return false;
    if (m->first % 64)
        return rfail(&rd, "first page %" G_GUINT64_FORMAT " is not a multiple of 64", m->first);
    if ((uint64_t)m->n_words * 8 != len - rd.off)
        return rfail(&rd, "%u words need %" G_GUINT64_FORMAT " bytes, payload has %zu",
                     m->n_words, (uint64_t)m->n_words * 8, len - rd.off);
    m->words = p + rd.off;
    return true;
}

uint64_t rdmig_received_word(const RdmigReceivedMsg *m, uint32_t i)
{
    return rdmig_get_be64(m->words + (size_t)i * 8);
}

/* ------------------------------------------------------------ u64 */

GByteArray *rdmig_u64_encode(uint64_t v)
{
    GByteArray *b = g_byte_array_sized_new(8);
    w64(b, v);
    return b;
}

bool rdmig_u64_decode(const uint8_t *p, size_t len, uint64_t *v, const char *what, GError **error)
{
    READER(what);
    *v = r64(&rd, "value");
    return rend(&rd);
}

/* ------------------------------------------------------------ features */

bool rdmig_features_negotiate(uint64_t local_supported, uint64_t local_required,
                              uint64_t peer_supported, uint64_t peer_required,
                              uint64_t *enabled, GError **error)
{
    uint64_t unknown = peer_required & ~RDMIG_FEATURES_KNOWN;
    if (unknown) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "peer requires feature bits 0x%" G_GINT64_MODIFIER "x unknown to this build "
                    "(rdmig %s knows 0x%" G_GINT64_MODIFIER "x): upgrade this side",
                    unknown, "0.1.0", (uint64_t)RDMIG_FEATURES_KNOWN);
        return false;
    }
    uint64_t peer_missing = peer_required & ~local_supported;
    if (peer_missing) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "peer requires features 0x%" G_GINT64_MODIFIER "x that this side does not "
                    "support", peer_missing);
        return false;
    }
    uint64_t local_missing = local_required & ~peer_supported;
    if (local_missing) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_VERSION,
                    "this side requires features 0x%" G_GINT64_MODIFIER "x that the peer does "
                    "not support", local_missing);
        return false;
    }
    *enabled = local_supported & peer_supported;
    return true;
}

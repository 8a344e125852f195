/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the control-channel messages (engine/wire.c): every encoder
 * against its decoder, every prefix of every message (a truncated message
 * must fail and name itself), trailing bytes, out-of-range counts, strings
 * with NUL bytes or beyond their field, and feature negotiation.  Then every
 * payload with a codec (and the frame header) against byte vectors written
 * from docs/protocol.md, not from the encoders, in both directions.
 *
 * Decoders are always fed an exact-size heap copy, so a decoder that reads a
 * byte too far is caught by ASan rather than by luck.
 */
#include <string.h>

#include "engine/ram.h"
#include "engine/wire.h"
#include "rdmig/error.h"
#include "test-util.h"
#include "transport/control.h"

/* ------------------------------------------------------------ helpers */

/* A decoder with the payload type hidden, so one loop checks them all. */
typedef bool (*DecodeFunc)(const uint8_t *p, size_t len, GError **error);

static bool dec_hello(const uint8_t *p, size_t len, GError **error)
{
    RdmigHello h;
    bool ok = rdmig_hello_decode(p, len, &h, error);
    rdmig_hello_clear(&h);
    return ok;
}
static bool dec_hello_ack(const uint8_t *p, size_t len, GError **error)
{
    RdmigHelloAck a;
    return rdmig_hello_ack_decode(p, len, &a, error);
}
static bool dec_regions(const uint8_t *p, size_t len, GError **error)
{
    g_autofree RdmigRegions *r = g_new0(RdmigRegions, 1);
    return rdmig_regions_decode(p, len, r, error);
}
static bool dec_error(const uint8_t *p, size_t len, GError **error)
{
    RdmigWireError e;
    return rdmig_error_decode(p, len, &e, error);
}
static bool dec_complete_ack(const uint8_t *p, size_t len, GError **error)
{
    RdmigCompleteAck a;
    return rdmig_complete_ack_decode(p, len, &a, error);
}
static bool dec_zero(const uint8_t *p, size_t len, GError **error)
{
    RdmigZeroMsg z;
    return rdmig_zero_decode(p, len, &z, error);
}
static bool dec_hashes(const uint8_t *p, size_t len, GError **error)
{
    RdmigHashesMsg m;
    return rdmig_hashes_decode(p, len, &m, error);
}
static bool dec_round_end(const uint8_t *p, size_t len, GError **error)
{
    uint64_t v;
    return rdmig_u64_decode(p, len, &v, "ROUND_END", error);
}

/* Decodes an exact-size copy of [p, p+len). */
static bool decode_copy(DecodeFunc dec, const uint8_t *p, size_t len, GError **error)
{
    g_autofree uint8_t *copy = g_malloc(len ? len : 1);
    if (len)
        memcpy(copy, p, len);
    return dec(copy, len, error);
}

/* The error must be in our domain with @code, and its text must contain @needle. */

/* Every proper prefix of a valid message fails with PROTOCOL, naming the message;
 * the whole message decodes; one trailing byte fails. */
static void check_prefixes_and_trailing(DecodeFunc dec, const GByteArray *b, const char *name)
{
    g_autoptr(GError) ok_err = NULL;
    g_assert_true(decode_copy(dec, b->data, b->len, &ok_err));
    g_assert_no_error(ok_err);

    for (size_t len = 0; len < b->len; len++) {
        g_autoptr(GError) err = NULL;
        bool ok = decode_copy(dec, b->data, len, &err);
        if (ok)
            g_error("%s: prefix of %zu of %u bytes decoded", name, len, b->len);
        assert_error(err, RDMIG_ERROR_PROTOCOL, name);
    }

    g_autoptr(GByteArray) longer = g_byte_array_new();
    g_byte_array_append(longer, b->data, b->len);
    for (int extra = 1; extra <= 13; extra++) {
        uint8_t junk = (uint8_t)(0xa5 + extra);
        g_byte_array_append(longer, &junk, 1);
        g_autoptr(GError) err = NULL;
        if (decode_copy(dec, longer->data, longer->len, &err))
            g_error("%s with %d trailing bytes decoded", name, extra);
        assert_error(err, RDMIG_ERROR_PROTOCOL, name);
    }
}

/* Raw big-endian writers, for messages the encoders cannot produce. */
static void w8(GByteArray *b, uint8_t v) { g_byte_array_append(b, &v, 1); }
static void w16(GByteArray *b, uint16_t v)
{
    uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };
    g_byte_array_append(b, x, 2);
}
static void w32(GByteArray *b, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    g_byte_array_append(b, x, 4);
}
static void w64(GByteArray *b, uint64_t v)
{
    w32(b, (uint32_t)(v >> 32));
    w32(b, (uint32_t)v);
}
static void wbytes(GByteArray *b, const void *p, size_t n) { g_byte_array_append(b, p, n); }
static void put32_at(GByteArray *b, size_t off, uint32_t v)
{
    b->data[off] = (uint8_t)(v >> 24);
    b->data[off + 1] = (uint8_t)(v >> 16);
    b->data[off + 2] = (uint8_t)(v >> 8);
    b->data[off + 3] = (uint8_t)v;
}

/* Offsets in an encoded HELLO (see rdmig_hello_encode). */
#define HELLO_OFF_VERSION 4
#define HELLO_OFF_NTRANSPORTS 44
#define HELLO_OFF_FIRST_TRANSPORT 48

static RdmigHello *hello_new(uint32_t n_blocks, uint32_t n_transports)
{
    RdmigHello *h = g_new0(RdmigHello, 1);
    h->version = RDMIG_PROTOCOL_VERSION;
    h->features_supported = RDMIG_FEATURES_KNOWN;
    h->features_required = RDMIG_FEATURE_VERIFY;
    for (int i = 0; i < RDMIG_SESSION_ID_LEN; i++)
        h->session_id[i] = (uint8_t)(0xf0 ^ i * 7);
    h->data_connections = 4;
    static const char *const names[] = { "tcp", "rdma", "x", "fifteen-chars-x" };
    h->n_transports = n_transports;
    for (uint32_t i = 0; i < n_transports; i++)
        g_strlcpy(h->transports[i], names[i % 4], sizeof(h->transports[i]));
    h->n_blocks = n_blocks;
    h->blocks = g_new0(RdmigWireBlock, MAX(n_blocks, 1));
    for (uint32_t i = 0; i < n_blocks; i++) {
        if (i == 1) {
            /* The longest name the field holds. */
            memset(h->blocks[i].name, 'n', RDMIG_MAX_NAME);
            h->blocks[i].name[RDMIG_MAX_NAME] = 0;
        } else {
            g_snprintf(h->blocks[i].name, sizeof(h->blocks[i].name), "block-%u", i);
        }
        h->blocks[i].length = ((uint64_t)i + 1) << 33 | 0x1000;
        h->blocks[i].page_size = 4096u << (i % 10);
    }
    return h;
}

static void hello_free(RdmigHello *h)
{
    g_free(h->blocks);
    g_free(h);
}

/* ------------------------------------------------------------ HELLO */

static void test_hello_roundtrip(void)
{
    static const uint32_t blocks[] = { 1, 2, 3, 17, RDMIG_MAX_BLOCKS };
    for (size_t bi = 0; bi < G_N_ELEMENTS(blocks); bi++) {
        for (uint32_t nt = 0; nt <= RDMIG_MAX_TRANSPORTS; nt++) {
            RdmigHello *h = hello_new(blocks[bi], nt);
            g_autoptr(GByteArray) b = rdmig_hello_encode(h);
            g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
            RdmigHello d;
            g_autoptr(GError) err = NULL;
            g_assert_true(rdmig_hello_decode(copy, b->len, &d, &err));
            g_assert_no_error(err);
            g_assert_cmpuint(d.version, ==, RDMIG_PROTOCOL_VERSION);
            g_assert_cmphex(d.features_supported, ==, h->features_supported);
            g_assert_cmphex(d.features_required, ==, h->features_required);
            g_assert_cmpmem(d.session_id, RDMIG_SESSION_ID_LEN, h->session_id,
                            RDMIG_SESSION_ID_LEN);
            g_assert_cmpuint(d.data_connections, ==, 4);
            g_assert_cmpuint(d.n_transports, ==, nt);
            for (uint32_t i = 0; i < nt; i++)
                g_assert_cmpstr(d.transports[i], ==, h->transports[i]);
            g_assert_cmpuint(d.n_blocks, ==, blocks[bi]);
            g_assert_nonnull(d.blocks);
            for (uint32_t i = 0; i < d.n_blocks; i++) {
                g_assert_cmpstr(d.blocks[i].name, ==, h->blocks[i].name);
                g_assert_cmpuint(d.blocks[i].length, ==, h->blocks[i].length);
                g_assert_cmpuint(d.blocks[i].page_size, ==, h->blocks[i].page_size);
            }
            rdmig_hello_clear(&d);
            g_assert_null(d.blocks);
            hello_free(h);
        }
    }
}

static void test_hello_truncated(void)
{
    /* Three blocks, two transports: every field kind is cut somewhere. */
    RdmigHello *h = hello_new(3, 2);
    g_autoptr(GByteArray) b = rdmig_hello_encode(h);
    check_prefixes_and_trailing(dec_hello, b, "HELLO");
    hello_free(h);
}

static void test_hello_bad_magic(void)
{
    RdmigHello *h = hello_new(1, 1);
    g_autoptr(GByteArray) b = rdmig_hello_encode(h);
    hello_free(h);
    for (int byte = 0; byte < 4; byte++) {
        g_autoptr(GByteArray) c = g_byte_array_new();
        wbytes(c, b->data, b->len);
        c->data[byte] ^= 0x20;
        g_autoptr(GError) err = NULL;
        g_assert_false(decode_copy(dec_hello, c->data, c->len, &err));
        assert_error(err, RDMIG_ERROR_PROTOCOL, "magic");
        g_assert_nonnull(strstr(err->message, "HELLO"));
    }
}

static void test_hello_version(void)
{
    static const uint16_t versions[] = { 0, RDMIG_PROTOCOL_VERSION + 1, 0xffff };
    for (size_t i = 0; i < G_N_ELEMENTS(versions); i++) {
        RdmigHello *h = hello_new(2, 1);
        h->version = versions[i];
        g_autoptr(GByteArray) b = rdmig_hello_encode(h);
        hello_free(h);
        g_autoptr(GError) err = NULL;
        g_assert_false(decode_copy(dec_hello, b->data, b->len, &err));
        g_autofree char *num = g_strdup_printf("%u", versions[i]);
        assert_error(err, RDMIG_ERROR_VERSION, num);

        /* A newer peer's HELLO may be longer or shorter than ours: the version is
         * still what is reported, as long as the version field itself arrived. */
        for (size_t len = HELLO_OFF_VERSION + 2; len < b->len; len += 7) {
            g_autoptr(GError) e2 = NULL;
            g_assert_false(decode_copy(dec_hello, b->data, len, &e2));
            assert_error(e2, RDMIG_ERROR_VERSION, num);
        }
    }
}

static void test_hello_block_count(void)
{
    /* Zero blocks. */
    RdmigHello *h = hello_new(0, 1);
    g_autoptr(GByteArray) b0 = rdmig_hello_encode(h);
    hello_free(h);
    g_autoptr(GError) err = NULL;
    g_assert_false(decode_copy(dec_hello, b0->data, b0->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "HELLO");
    g_assert_nonnull(strstr(err->message, "block"));
    g_clear_error(&err);

    /* One more than the limit, every block well-formed. */
    h = hello_new(RDMIG_MAX_BLOCKS + 1, 1);
    g_autoptr(GByteArray) b1 = rdmig_hello_encode(h);
    hello_free(h);
    g_assert_false(decode_copy(dec_hello, b1->data, b1->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "HELLO");
    g_assert_nonnull(strstr(err->message, "257"));
    g_clear_error(&err);

    /* A huge count with no blocks behind it must fail before allocating. */
    h = hello_new(1, 1);
    g_autoptr(GByteArray) b2 = rdmig_hello_encode(h);
    hello_free(h);
    /* The block count sits right before the first block: 4 bytes + name + 12. */
    size_t block_off = b2->len - (1 + strlen("block-0") + 12) - 4;
    put32_at(b2, block_off, 0xffffffffu);
    g_assert_false(decode_copy(dec_hello, b2->data, b2->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "HELLO");
}

static void test_hello_transport_count(void)
{
    RdmigHello *h = hello_new(1, RDMIG_MAX_TRANSPORTS);
    g_autoptr(GByteArray) b = rdmig_hello_encode(h);
    hello_free(h);
    put32_at(b, HELLO_OFF_NTRANSPORTS, RDMIG_MAX_TRANSPORTS + 1);
    g_autoptr(GError) err = NULL;
    g_assert_false(decode_copy(dec_hello, b->data, b->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "HELLO");
    g_assert_nonnull(strstr(err->message, "transports"));
}

static void test_hello_strings(void)
{
    g_autoptr(GError) err = NULL;

    /* A NUL inside a transport name: "tcp" -> "t\0p". */
    RdmigHello *h = hello_new(1, 1);
    g_assert_cmpstr(h->transports[0], ==, "tcp");
    g_autoptr(GByteArray) b = rdmig_hello_encode(h);
    g_assert_cmpuint(b->data[HELLO_OFF_FIRST_TRANSPORT], ==, 3);
    b->data[HELLO_OFF_FIRST_TRANSPORT + 2] = 0;
    g_assert_false(decode_copy(dec_hello, b->data, b->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "NUL");
    g_assert_nonnull(strstr(err->message, "HELLO"));
    g_clear_error(&err);

    /* A NUL inside a block name ("block-0"), and as its last byte. */
    for (int pos = 0; pos < 2; pos++) {
        g_autoptr(GByteArray) c = rdmig_hello_encode(h);
        size_t name_off = c->len - 12 - strlen("block-0");
        g_assert_cmpmem(c->data + name_off, 7, "block-0", 7);
        c->data[name_off + (pos ? 6 : 2)] = 0;
        g_assert_false(decode_copy(dec_hello, c->data, c->len, &err));
        assert_error(err, RDMIG_ERROR_PROTOCOL, "block name");
        g_clear_error(&err);
    }
    hello_free(h);

    /* A transport name of 16 bytes does not fit char[16] with its NUL;
     * 15 bytes do. */
    for (int n = 15; n <= 16; n++) {
        g_autoptr(GByteArray) r = g_byte_array_new();
        w32(r, RDMIG_HELLO_MAGIC);
        w16(r, RDMIG_PROTOCOL_VERSION);
        w16(r, 0);
        w64(r, 0);
        w64(r, 0);
        uint8_t sid[RDMIG_SESSION_ID_LEN] = { 0 };
        wbytes(r, sid, sizeof(sid));
        w32(r, 1);
        w32(r, 1);
        w8(r, (uint8_t)n);
        for (int i = 0; i < n; i++)
            w8(r, 'a');
        w32(r, 1);
        w8(r, 3);
        wbytes(r, "ram", 3);
        w64(r, 1 << 20);
        w32(r, 4096);
        bool ok = decode_copy(dec_hello, r->data, r->len, &err);
        if (n == 15) {
            g_assert_no_error(err);
            g_assert_true(ok);
        } else {
            g_assert_false(ok);
            assert_error(err, RDMIG_ERROR_PROTOCOL, "transport name");
            g_assert_nonnull(strstr(err->message, "16"));
            g_clear_error(&err);
        }
    }
}

/* ------------------------------------------------------------ HELLO_ACK */

static RdmigHelloAck ack_sample(void)
{
    RdmigHelloAck a = { .version = RDMIG_PROTOCOL_VERSION,
                        .features_supported = RDMIG_FEATURES_KNOWN,
                        .features_enabled = RDMIG_FEATURE_VERIFY | RDMIG_FEATURE_KEEPALIVE,
                        .data_connections = 3,
                        .conn_token = 0x0123456789abcdefull };
    g_strlcpy(a.transport, "tcp", sizeof(a.transport));
    g_strlcpy(a.data_address, "[fe80::1234:5678:9abc:def0]:65535", sizeof(a.data_address));
    return a;
}

static void test_hello_ack_roundtrip(void)
{
    static const uint32_t conns[] = { 1, 3, RDMIG_MAX_DATA_CONNS };
    for (size_t i = 0; i < G_N_ELEMENTS(conns); i++) {
        RdmigHelloAck a = ack_sample();
        a.data_connections = conns[i];
        if (i == 2) {
            /* Longest strings the fields hold. */
            memset(a.transport, 't', sizeof(a.transport) - 1);
            memset(a.data_address, 'a', sizeof(a.data_address) - 1);
        }
        g_autoptr(GByteArray) b = rdmig_hello_ack_encode(&a);
        g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
        RdmigHelloAck d;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_hello_ack_decode(copy, b->len, &d, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(d.version, ==, a.version);
        g_assert_cmphex(d.features_supported, ==, a.features_supported);
        g_assert_cmphex(d.features_enabled, ==, a.features_enabled);
        g_assert_cmpuint(d.data_connections, ==, a.data_connections);
        g_assert_cmpstr(d.transport, ==, a.transport);
        g_assert_cmpstr(d.data_address, ==, a.data_address);
        g_assert_cmphex(d.conn_token, ==, a.conn_token);
    }
}

static void test_hello_ack_truncated(void)
{
    RdmigHelloAck a = ack_sample();
    g_autoptr(GByteArray) b = rdmig_hello_ack_encode(&a);
    check_prefixes_and_trailing(dec_hello_ack, b, "HELLO_ACK");
}

static void test_hello_ack_invalid(void)
{
    /* data_connections 0 and one past the limit. */
    static const uint32_t bad[] = { 0, RDMIG_MAX_DATA_CONNS + 1 };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        RdmigHelloAck a = ack_sample();
        a.data_connections = bad[i];
        g_autoptr(GByteArray) b = rdmig_hello_ack_encode(&a);
        g_autoptr(GError) err = NULL;
        g_assert_false(decode_copy(dec_hello_ack, b->data, b->len, &err));
        assert_error(err, RDMIG_ERROR_PROTOCOL, "HELLO_ACK");
        g_assert_nonnull(strstr(err->message, "data connections"));
    }

    /* Strings: a data address of 128 bytes, a transport of 16, NULs inside. */
    for (int kind = 0; kind < 4; kind++) {
        g_autoptr(GByteArray) r = g_byte_array_new();
        w16(r, RDMIG_PROTOCOL_VERSION);
        w64(r, 0);
        w64(r, 0);
        w32(r, 1);
        if (kind == 0) {
            w8(r, 16);
            wbytes(r, "0123456789abcdef", 16);
        } else if (kind == 2) {
            w8(r, 3);
            wbytes(r, "t\0p", 3);
        } else {
            w8(r, 3);
            wbytes(r, "tcp", 3);
        }
        if (kind == 1) {
            w16(r, 128);
            for (int i = 0; i < 128; i++)
                w8(r, 'x');
        } else if (kind == 3) {
            w16(r, 11);
            wbytes(r, "1.2.3.4\0:99", 11);
        } else {
            w16(r, 9);
            wbytes(r, "host:4444", 9);
        }
        w64(r, 42);
        g_autoptr(GError) err = NULL;
        g_assert_false(decode_copy(dec_hello_ack, r->data, r->len, &err));
        assert_error(err, RDMIG_ERROR_PROTOCOL, "HELLO_ACK");
        const char *field = kind == 0 || kind == 2 ? "transport" : "data address";
        g_assert_nonnull(strstr(err->message, field));
        g_assert_nonnull(strstr(err->message, kind >= 2 ? "NUL" : "exceeds"));
    }
}

/* ------------------------------------------------------------ REGIONS */

static void test_regions_roundtrip(void)
{
    static const uint32_t counts[] = { 0, 1, 5, RDMIG_MAX_BLOCKS };
    for (size_t ci = 0; ci < G_N_ELEMENTS(counts); ci++) {
        g_autofree RdmigRegions *r = g_new0(RdmigRegions, 1);
        r->n_blocks = counts[ci];
        for (uint32_t i = 0; i < r->n_blocks; i++) {
            r->keys[i].len = i % (RDMIG_REMOTE_KEY_MAX + 1); /* 0..32 */
            for (uint32_t k = 0; k < r->keys[i].len; k++)
                r->keys[i].bytes[k] = (uint8_t)(i * 31 + k);
        }
        g_autoptr(GByteArray) b = rdmig_regions_encode(r);
        g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
        g_autofree RdmigRegions *d = g_new0(RdmigRegions, 1);
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_regions_decode(copy, b->len, d, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(d->n_blocks, ==, r->n_blocks);
        for (uint32_t i = 0; i < r->n_blocks; i++)
            g_assert_cmpmem(d->keys[i].bytes, d->keys[i].len, r->keys[i].bytes, r->keys[i].len);
    }
}

static void test_regions_truncated(void)
{
    g_autofree RdmigRegions *r = g_new0(RdmigRegions, 1);
    r->n_blocks = 3;
    r->keys[0].len = 12;
    memset(r->keys[0].bytes, 1, 12);
    r->keys[1].len = 0;
    r->keys[2].len = RDMIG_REMOTE_KEY_MAX;
    memset(r->keys[2].bytes, 2, RDMIG_REMOTE_KEY_MAX);
    g_autoptr(GByteArray) b = rdmig_regions_encode(r);
    check_prefixes_and_trailing(dec_regions, b, "REGIONS");
}

static void test_regions_invalid(void)
{
    g_autoptr(GError) err = NULL;

    /* A key one byte longer than RDMIG_REMOTE_KEY_MAX, bytes all present. */
    g_autoptr(GByteArray) b = g_byte_array_new();
    w32(b, 1);
    w8(b, RDMIG_REMOTE_KEY_MAX + 1);
    for (int i = 0; i <= RDMIG_REMOTE_KEY_MAX; i++)
        w8(b, (uint8_t)i);
    g_assert_false(decode_copy(dec_regions, b->data, b->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "REGIONS");
    g_assert_nonnull(strstr(err->message, "33"));
    g_clear_error(&err);

    /* Key length 255. */
    g_autoptr(GByteArray) c = g_byte_array_new();
    w32(c, 1);
    w8(c, 255);
    for (int i = 0; i < 255; i++)
        w8(c, 0);
    g_assert_false(decode_copy(dec_regions, c->data, c->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "REGIONS");
    g_clear_error(&err);

    /* More regions than blocks can exist. */
    g_autoptr(GByteArray) d = g_byte_array_new();
    w32(d, RDMIG_MAX_BLOCKS + 1);
    for (int i = 0; i <= RDMIG_MAX_BLOCKS; i++)
        w8(d, 0);
    g_assert_false(decode_copy(dec_regions, d->data, d->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "REGIONS");
    g_assert_nonnull(strstr(err->message, "257"));
}

/* ------------------------------------------------------------ ERROR, COMPLETE_ACK */

static void test_error_roundtrip(void)
{
    static const char *const msgs[] = { "", "x", "peer is gone: connection reset by peer" };
    for (size_t i = 0; i < G_N_ELEMENTS(msgs); i++) {
        g_autoptr(GByteArray) b = rdmig_error_encode(RDMIG_ERROR_VERIFY, msgs[i]);
        g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
        RdmigWireError e;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_error_decode(copy, b->len, &e, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(e.code, ==, RDMIG_ERROR_VERIFY);
        g_assert_cmpstr(e.message, ==, msgs[i]);
    }
    /* NULL message travels as "". */
    g_autoptr(GByteArray) b = rdmig_error_encode(RDMIG_ERROR_CANCELLED, NULL);
    RdmigWireError e;
    g_assert_true(rdmig_error_decode(b->data, b->len, &e, NULL));
    g_assert_cmpuint(e.code, ==, RDMIG_ERROR_CANCELLED);
    g_assert_cmpstr(e.message, ==, "");

    /* The longest message the field holds. */
    char longest[sizeof(e.message)];
    memset(longest, 'm', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = 0;
    g_autoptr(GByteArray) c = rdmig_error_encode(RDMIG_ERROR_PEER, longest);
    g_assert_true(rdmig_error_decode(c->data, c->len, &e, NULL));
    g_assert_cmpstr(e.message, ==, longest);
}

static void test_error_truncated(void)
{
    g_autoptr(GByteArray) b = rdmig_error_encode(RDMIG_ERROR_LAYOUT, "layout differs");
    check_prefixes_and_trailing(dec_error, b, "ERROR");
}

static void test_error_invalid(void)
{
    g_autoptr(GError) err = NULL;
    /* As many bytes as the message field has do not fit with the NUL; one less does. */
    const size_t cap = sizeof(((RdmigWireError *)NULL)->message);
    for (size_t n = cap - 1; n <= cap; n++) {
        g_autoptr(GByteArray) b = g_byte_array_new();
        w32(b, RDMIG_ERROR_PEER);
        w16(b, (uint16_t)n);
        for (size_t i = 0; i < n; i++)
            w8(b, 'e');
        bool ok = decode_copy(dec_error, b->data, b->len, &err);
        if (n < cap) {
            g_assert_no_error(err);
            g_assert_true(ok);
        } else {
            g_assert_false(ok);
            assert_error(err, RDMIG_ERROR_PROTOCOL, "ERROR");
            g_autofree char *num = g_strdup_printf("%zu", n);
            g_assert_nonnull(strstr(err->message, num));
            g_clear_error(&err);
        }
    }

    g_autoptr(GByteArray) c = g_byte_array_new();
    w32(c, RDMIG_ERROR_PEER);
    w16(c, 5);
    wbytes(c, "ab\0cd", 5);
    g_assert_false(decode_copy(dec_error, c->data, c->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "NUL");
}

/*
 * A peer's text reaches an operator's terminal: every byte a terminal could
 * act on arrives as '?', one for one, and printable text (UTF-8 included)
 * arrives as sent.  Payloads written by hand, as a hostile peer would.
 */
static void test_error_text_printable(void)
{
    static const struct {
        const char *sent, *arrives;
    } cases[] = {
        /* OSC retitling the window, ended by BEL; then a clear screen. */
        { "\x1b]0;owned\x07 and \x1b[2J", "?]0;owned? and ?[2J" },
        { "one\nline\r\ttab\x7f", "one?line??tab?" },
        /* C1 CSI (U+009B) is two bytes in UTF-8: two '?'. */
        { "csi \xc2\x9b" "31m", "csi ??31m" },
        /* Invalid UTF-8: a lone continuation byte, a truncated sequence,
         * an overlong '/'. */
        { "a\x80" "b\xe6\x97" "c\xc0\xaf", "a?b??c??" },
        /* Printable UTF-8 and U+00A0 (just past C1) are kept. */
        { "caf\xc3\xa9 \xe6\x97\xa5 \xc2\xa0", "caf\xc3\xa9 \xe6\x97\xa5 \xc2\xa0" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        size_t len = strlen(cases[i].sent);
        g_autoptr(GByteArray) b = g_byte_array_new();
        w32(b, RDMIG_ERROR_PEER);
        w16(b, (uint16_t)len);
        wbytes(b, cases[i].sent, len);
        g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
        RdmigWireError e;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_error_decode(copy, b->len, &e, &err));
        g_assert_no_error(err);
        g_assert_cmpstr(e.message, ==, cases[i].arrives);
    }
    /* Block names from HELLO go the same way: one with an escape arrives
     * with '?' where the escape was. */
    RdmigHello *h = hello_new(1, 1);
    g_strlcpy(h->blocks[0].name, "pc.\x1b[1mram", sizeof(h->blocks[0].name));
    g_autoptr(GByteArray) hb = rdmig_hello_encode(h);
    hello_free(h);
    RdmigHello got;
    g_autoptr(GError) herr = NULL;
    g_assert_true(rdmig_hello_decode(hb->data, hb->len, &got, &herr));
    g_assert_cmpstr(got.blocks[0].name, ==, "pc.?[1mram");
    rdmig_hello_clear(&got);
}

/*
 * What one side encodes the other must decode: an error whose text is longer
 * than the ERROR message's field must still arrive, cut to fit, rather than
 * turn into "ERROR message: message of N bytes exceeds ..." at the peer and
 * lose the reason.
 */
static void test_error_long_message_decodable(void)
{
    const size_t cap = sizeof(((RdmigWireError *)NULL)->message);
    g_autofree char *msg = g_strnfill(cap + 500, 'L');
    memcpy(msg, "RAM layout mismatch", strlen("RAM layout mismatch"));
    g_autoptr(GByteArray) b = rdmig_error_encode(RDMIG_ERROR_LAYOUT, msg);
    RdmigWireError e;
    g_autoptr(GError) err = NULL;
    bool ok = rdmig_error_decode(b->data, b->len, &e, &err);
    if (!ok) {
        /* A library bug, reported without aborting the other cases. */
        g_test_fail_printf("rdmig_error_encode() of a %zu-byte message produced a payload "
                           "rdmig_error_decode() rejects: %s", cap + 500, err->message);
        return;
    }
    g_assert_cmpuint(e.code, ==, RDMIG_ERROR_LAYOUT);
    g_assert_true(g_str_has_prefix(e.message, "RAM layout mismatch"));
    g_assert_cmpuint(strlen(e.message), <=, sizeof(e.message) - 1);
}

static void test_complete_ack_roundtrip(void)
{
    RdmigCompleteAck a = { .status = RDMIG_ERROR_VERIFY,
                           .pages_verified = 0x1122334455667788ull,
                           .mismatches = 3,
                           .verify_us = 0xfedcba9876543210ull };
    g_strlcpy(a.message, "3 of 100 pages differ", sizeof(a.message));
    g_autoptr(GByteArray) b = rdmig_complete_ack_encode(&a);
    g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
    RdmigCompleteAck d;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_complete_ack_decode(copy, b->len, &d, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(d.status, ==, a.status);
    g_assert_cmphex(d.pages_verified, ==, a.pages_verified);
    g_assert_cmpuint(d.mismatches, ==, a.mismatches);
    g_assert_cmphex(d.verify_us, ==, a.verify_us);
    g_assert_cmpstr(d.message, ==, a.message);

    /* Success with an empty message, and the longest message. */
    RdmigCompleteAck ok = { 0 };
    memset(ok.message, 'q', sizeof(ok.message) - 1);
    g_autoptr(GByteArray) c = rdmig_complete_ack_encode(&ok);
    g_assert_true(rdmig_complete_ack_decode(c->data, c->len, &d, NULL));
    g_assert_cmpuint(d.status, ==, 0);
    g_assert_cmpstr(d.message, ==, ok.message);
}

static void test_complete_ack_truncated(void)
{
    RdmigCompleteAck a = { .status = 0, .pages_verified = 12, .verify_us = 77 };
    g_strlcpy(a.message, "ok", sizeof(a.message));
    g_autoptr(GByteArray) b = rdmig_complete_ack_encode(&a);
    check_prefixes_and_trailing(dec_complete_ack, b, "COMPLETE_ACK");
}

/* ------------------------------------------------------------ ZERO */

static void test_zero_roundtrip(void)
{
    static const struct {
        uint64_t first;
        uint32_t count;
    } runs[] = { { 0, 1 }, { 1, 63 }, { 64, 64 }, { 0xffffffffull, 2 },
                 { 0x0123456789abcdefull, 0xfffffffeu }, { 7, 0x80000000u } };
    for (uint32_t n = 0; n <= G_N_ELEMENTS(runs); n++) {
        g_autoptr(GByteArray) b = rdmig_zero_begin(0xa1b2c3d4u);
        for (uint32_t i = 0; i < n; i++)
            rdmig_zero_run_put(b, runs[i].first, runs[i].count);
        rdmig_zero_finish(b);
        g_assert_cmpuint(b->len, ==, 8 + 12 * n);
        g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
        RdmigZeroMsg z;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_zero_decode(copy, b->len, &z, &err));
        g_assert_no_error(err);
        g_assert_cmphex(z.block, ==, 0xa1b2c3d4u);
        g_assert_cmpuint(z.n_runs, ==, n);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t first;
            uint32_t count;
            rdmig_zero_run_get(&z, i, &first, &count);
            g_assert_cmphex(first, ==, runs[i].first);
            g_assert_cmphex(count, ==, runs[i].count);
        }
    }

    /* Many runs: the count field is written by finish(), not by put(). */
    g_autoptr(GByteArray) big = rdmig_zero_begin(2);
    for (uint32_t i = 0; i < 5000; i++)
        rdmig_zero_run_put(big, (uint64_t)i * 3, i + 1);
    rdmig_zero_finish(big);
    RdmigZeroMsg z;
    g_assert_true(rdmig_zero_decode(big->data, big->len, &z, NULL));
    g_assert_cmpuint(z.n_runs, ==, 5000);
    for (uint32_t i = 0; i < 5000; i += 499) {
        uint64_t first;
        uint32_t count;
        rdmig_zero_run_get(&z, i, &first, &count);
        g_assert_cmpuint(first, ==, (uint64_t)i * 3);
        g_assert_cmpuint(count, ==, i + 1);
    }
}

static void test_zero_truncated(void)
{
    g_autoptr(GByteArray) b = rdmig_zero_begin(1);
    rdmig_zero_run_put(b, 10, 5);
    rdmig_zero_run_put(b, 100, 1);
    rdmig_zero_finish(b);
    check_prefixes_and_trailing(dec_zero, b, "ZERO");

    /* A run count that promises more than the payload has (and would overflow
     * a 32-bit multiplication). */
    g_autoptr(GByteArray) c = rdmig_zero_begin(1);
    rdmig_zero_run_put(c, 10, 5);
    put32_at(c, 4, 0x15555556u); /* * 12 wraps to 8 in 32 bits */
    g_autoptr(GError) err = NULL;
    g_assert_false(decode_copy(dec_zero, c->data, c->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "ZERO");
}

/* ------------------------------------------------------------ HASHES */

static void test_hashes_roundtrip(void)
{
    uint64_t hashes[37];
    for (uint32_t i = 0; i < G_N_ELEMENTS(hashes); i++)
        hashes[i] = 0x9e3779b97f4a7c15ull * (i + 1);
    static const uint32_t counts[] = { 0, 1, 37 };
    for (size_t ci = 0; ci < G_N_ELEMENTS(counts); ci++) {
        g_autoptr(GByteArray) b = rdmig_hashes_encode(5, 0x100000000ull + 3, hashes, counts[ci]);
        g_assert_cmpuint(b->len, ==, 16 + 8 * counts[ci]);
        g_autofree uint8_t *copy = g_memdup2(b->data, b->len);
        RdmigHashesMsg m;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_hashes_decode(copy, b->len, &m, &err));
        g_assert_no_error(err);
        g_assert_cmpuint(m.block, ==, 5);
        g_assert_cmphex(m.first, ==, 0x100000000ull + 3);
        g_assert_cmpuint(m.n, ==, counts[ci]);
        for (uint32_t i = 0; i < m.n; i++)
            g_assert_cmphex(rdmig_hashes_get(&m, i), ==, hashes[i]);
    }
}

static void test_hashes_truncated(void)
{
    uint64_t hashes[3] = { 1, 0xffffffffffffffffull, 0x8000000000000001ull };
    g_autoptr(GByteArray) b = rdmig_hashes_encode(0, 9, hashes, 3);
    check_prefixes_and_trailing(dec_hashes, b, "HASHES");

    put32_at(b, 12, 0x20000001u); /* * 8 wraps to 8 in 32 bits */
    g_autoptr(GError) err = NULL;
    g_assert_false(decode_copy(dec_hashes, b->data, b->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "HASHES");
}

/* ------------------------------------------------------------ RECEIVED */

static bool dec_received(const uint8_t *p, size_t len, GError **error)
{
    RdmigReceivedMsg m;
    return rdmig_received_decode(p, len, &m, error);
}

static void test_received_roundtrip(void)
{
    uint64_t words[3] = { 0x1, 0xffffffffffffffffull, 0x8000000000000000ull };
    g_autoptr(GByteArray) b = rdmig_received_encode(2, 128, words, 3);
    g_assert_cmpuint(b->len, ==, 16 + 24);
    RdmigReceivedMsg m;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_received_decode(b->data, b->len, &m, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(m.block, ==, 2);
    g_assert_cmpuint(m.first, ==, 128);
    g_assert_cmpuint(m.n_words, ==, 3);
    for (uint32_t i = 0; i < 3; i++)
        g_assert_cmphex(rdmig_received_word(&m, i), ==, words[i]);
}

static void test_received_bad(void)
{
    uint64_t words[2] = { 5, 6 };
    g_autoptr(GByteArray) b = rdmig_received_encode(0, 64, words, 2);
    check_prefixes_and_trailing(dec_received, b, "RECEIVED");
    /* A slice must start on a bitmap word. */
    g_autoptr(GByteArray) odd = rdmig_received_encode(0, 65, words, 2);
    g_autoptr(GError) err = NULL;
    g_assert_false(decode_copy(dec_received, odd->data, odd->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "multiple of 64");
    g_clear_error(&err);
    put32_at(b, 12, 0x20000001u); /* * 8 wraps to 8 in 32 bits */
    g_assert_false(decode_copy(dec_received, b->data, b->len, &err));
    assert_error(err, RDMIG_ERROR_PROTOCOL, "RECEIVED");
}

/* ------------------------------------------------------------ u64 */

static void test_u64(void)
{
    static const uint64_t vals[] = { 0, 1, 0xff, 0x0102030405060708ull, G_MAXUINT64 };
    for (size_t i = 0; i < G_N_ELEMENTS(vals); i++) {
        g_autoptr(GByteArray) b = rdmig_u64_encode(vals[i]);
        g_assert_cmpuint(b->len, ==, 8);
        g_assert_cmpuint(b->data[0], ==, (uint8_t)(vals[i] >> 56)); /* big-endian */
        g_assert_cmpuint(b->data[7], ==, (uint8_t)vals[i]);
        uint64_t v = 0;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_u64_decode(b->data, b->len, &v, "ROUND_ACK", &err));
        g_assert_no_error(err);
        g_assert_cmphex(v, ==, vals[i]);
    }
    g_autoptr(GByteArray) b = rdmig_u64_encode(77);
    check_prefixes_and_trailing(dec_round_end, b, "ROUND_END");
}

/* ------------------------------------------------------------ ROUND_ACK */

/* ROUND_ACK is the round alone (8 bytes) or the round with the destination's
 * verification backlog (24): any other length is refused, naming it. */
static void test_round_ack(void)
{
    RdmigRoundAck a = { .round = 7, .unverified_pages = 0x0102030405060708ull,
                        .verify_us = 123456, .has_backlog = true };
    g_autoptr(GByteArray) b = rdmig_round_ack_encode(&a);
    g_assert_cmpuint(b->len, ==, 24);
    g_assert_cmpuint(b->data[7], ==, 7);
    g_assert_cmpuint(b->data[8], ==, 1); /* big-endian */
    for (size_t len = 0; len <= 25; len++) {
        g_autofree uint8_t *copy = g_malloc(len + 1);
        memcpy(copy, b->data, MIN(len, (size_t)b->len));
        if (len == 25)
            copy[24] = 0xa5;
        RdmigRoundAck d = { .has_backlog = len == 8 }; /* must be cleared */
        g_autoptr(GError) err = NULL;
        bool ok = rdmig_round_ack_decode(copy, len, &d, &err);
        if (len == 8 || len == 24) {
            g_assert_no_error(err);
            g_assert_true(ok);
            g_assert_cmpuint(d.round, ==, 7);
            g_assert_cmpint(d.has_backlog, ==, len == 24);
            g_assert_cmphex(d.unverified_pages, ==, len == 24 ? a.unverified_pages : 0);
            g_assert_cmpuint(d.verify_us, ==, len == 24 ? a.verify_us : 0);
        } else {
            g_assert_false(ok);
            assert_error(err, RDMIG_ERROR_PROTOCOL, "ROUND_ACK");
        }
    }
    RdmigRoundAck old = { .round = 9 };
    g_autoptr(GByteArray) o = rdmig_round_ack_encode(&old);
    g_assert_cmpuint(o->len, ==, 8);
}

/* ------------------------------------------------------------ features */

static void test_features_intersection(void)
{
    uint64_t enabled = 0;
    g_autoptr(GError) err = NULL;
    uint64_t a = RDMIG_FEATURE_VERIFY | RDMIG_FEATURE_ZERO_PAGES | RDMIG_FEATURE_KEEPALIVE;
    uint64_t b = RDMIG_FEATURE_ZERO_PAGES | RDMIG_FEATURE_MULTI_CONN | RDMIG_FEATURE_KEEPALIVE;
    g_assert_true(rdmig_features_negotiate(a, 0, b, 0, &enabled, &err));
    g_assert_no_error(err);
    g_assert_cmphex(enabled, ==, RDMIG_FEATURE_ZERO_PAGES | RDMIG_FEATURE_KEEPALIVE);

    /* Symmetric. */
    uint64_t enabled2 = 0;
    g_assert_true(rdmig_features_negotiate(b, 0, a, 0, &enabled2, &err));
    g_assert_cmphex(enabled2, ==, enabled);

    /* Nothing in common is fine when nothing is required. */
    g_assert_true(rdmig_features_negotiate(RDMIG_FEATURE_VERIFY, 0, RDMIG_FEATURE_MULTI_CONN, 0,
                                           &enabled, &err));
    g_assert_cmphex(enabled, ==, 0);

    /* Required on both sides and supported by both: enabled. */
    g_assert_true(rdmig_features_negotiate(RDMIG_FEATURES_KNOWN, RDMIG_FEATURE_VERIFY,
                                           RDMIG_FEATURES_KNOWN, RDMIG_FEATURE_VERIFY, &enabled,
                                           &err));
    g_assert_cmphex(enabled, ==, RDMIG_FEATURES_KNOWN);

    /* Unknown bits the peer merely supports are ignored. */
    g_assert_true(rdmig_features_negotiate(RDMIG_FEATURES_KNOWN, 0,
                                           RDMIG_FEATURES_KNOWN | (1ull << 40), 0, &enabled,
                                           &err));
    g_assert_cmphex(enabled, ==, RDMIG_FEATURES_KNOWN);
}

static void test_features_unknown_required(void)
{
    uint64_t enabled = 0xdead;
    g_autoptr(GError) err = NULL;
    uint64_t unknown = (1ull << 40) | (1ull << 63);
    g_assert_false(rdmig_features_negotiate(RDMIG_FEATURES_KNOWN, 0,
                                            RDMIG_FEATURES_KNOWN | unknown,
                                            RDMIG_FEATURE_VERIFY | unknown, &enabled, &err));
    g_autofree char *hex = g_strdup_printf("%" G_GINT64_MODIFIER "x", unknown);
    assert_error(err, RDMIG_ERROR_VERSION, hex);
    g_assert_nonnull(strstr(err->message, "unknown"));
}

static void test_features_required_unsupported(void)
{
    uint64_t enabled = 0;
    g_autoptr(GError) err = NULL;

    /* The peer requires MULTI_CONN; we do not support it. */
    uint64_t mine = RDMIG_FEATURES_KNOWN & ~RDMIG_FEATURE_MULTI_CONN;
    g_assert_false(rdmig_features_negotiate(mine, 0, RDMIG_FEATURES_KNOWN,
                                            RDMIG_FEATURE_MULTI_CONN, &enabled, &err));
    g_autofree char *mc = g_strdup_printf("0x%" G_GINT64_MODIFIER "x",
                                          (uint64_t)RDMIG_FEATURE_MULTI_CONN);
    assert_error(err, RDMIG_ERROR_VERSION, mc);
    g_assert_nonnull(strstr(err->message, "peer requires"));
    g_clear_error(&err);

    /* We require VERIFY; the peer does not support it. */
    uint64_t theirs = RDMIG_FEATURES_KNOWN & ~RDMIG_FEATURE_VERIFY;
    g_assert_false(rdmig_features_negotiate(RDMIG_FEATURES_KNOWN, RDMIG_FEATURE_VERIFY, theirs, 0,
                                            &enabled, &err));
    g_autofree char *vf = g_strdup_printf("0x%" G_GINT64_MODIFIER "x",
                                          (uint64_t)RDMIG_FEATURE_VERIFY);
    assert_error(err, RDMIG_ERROR_VERSION, vf);
    g_assert_nonnull(strstr(err->message, "this side requires"));
}

/* ------------------------------------------------------------ names */

static void test_msg_type_str(void)
{
    static const struct {
        uint16_t type;
        const char *name;
    } known[] = {
        { RDMIG_MSG_HELLO, "HELLO" },         { RDMIG_MSG_HELLO_ACK, "HELLO_ACK" },
        { RDMIG_MSG_REGIONS, "REGIONS" },     { RDMIG_MSG_ZERO, "ZERO" },
        { RDMIG_MSG_ROUND_END, "ROUND_END" }, { RDMIG_MSG_ROUND_ACK, "ROUND_ACK" },
        { RDMIG_MSG_DEVICE_STATE, "DEVICE_STATE" }, { RDMIG_MSG_HASHES, "HASHES" },
        { RDMIG_MSG_COMPLETE, "COMPLETE" },   { RDMIG_MSG_COMPLETE_ACK, "COMPLETE_ACK" },
        { RDMIG_MSG_ERROR, "ERROR" },         { RDMIG_MSG_PING, "PING" },
        { RDMIG_MSG_SOURCE_REGIONS, "SOURCE_REGIONS" }, { RDMIG_MSG_DISCARD, "DISCARD" },
        { RDMIG_MSG_POSTCOPY_START, "POSTCOPY_START" },
        { RDMIG_MSG_POSTCOPY_RUNNING, "POSTCOPY_RUNNING" },
        { RDMIG_MSG_POSTCOPY_PREPARE, "POSTCOPY_PREPARE" },
        { RDMIG_MSG_POSTCOPY_PREPARED, "POSTCOPY_PREPARED" },
        { RDMIG_MSG_RESUME, "RESUME" },       { RDMIG_MSG_RECEIVED, "RECEIVED" },
        { RDMIG_MSG_RECEIVED_END, "RECEIVED_END" },
        { RDMIG_MSG_POSTCOPY_RESUME, "POSTCOPY_RESUME" }, { RDMIG_MSG_EPOCH, "EPOCH" },
    };
    g_assert_cmpuint(G_N_ELEMENTS(known), ==, RDMIG_MSG__MAX - 1);
    for (size_t i = 0; i < G_N_ELEMENTS(known); i++)
        g_assert_cmpstr(rdmig_msg_type_str(known[i].type), ==, known[i].name);
    g_assert_cmpstr(rdmig_msg_type_str(0), ==, "unknown");
    g_assert_cmpstr(rdmig_msg_type_str(RDMIG_MSG__MAX), ==, "unknown");
    g_assert_cmpstr(rdmig_msg_type_str(1000), ==, "unknown");
    g_assert_cmpstr(rdmig_msg_type_str(0xffff), ==, "unknown");
}

/* ------------------------------------------------------------ vectors from docs/protocol.md */

/*
 * The cases above check each encoder against its own decoder, which a
 * matching pair of mistakes (a field swapped, little-endian both ways) would
 * pass.  The vectors below are written byte by byte from the tables of
 * docs/protocol.md, as someone implementing the protocol from the document
 * alone would write them.  Each is checked both ways: the encoder must
 * produce exactly these bytes, and the decoder, given them, must yield the
 * values the comments name.  Numbers (types, feature bits, error codes) are
 * written as the document gives them, not through the code's macros.
 */

/* Hex of @len bytes, for failure messages. */
static char *hex_dump(const uint8_t *p, size_t len)
{
    GString *s = g_string_sized_new(len * 3);
    for (size_t i = 0; i < len; i++)
        g_string_append_printf(s, "%s%02x", i ? " " : "", p[i]);
    return g_string_free(s, FALSE);
}

/* @got (which this frees) must be exactly the @len bytes of @want: on a
 * difference, name the message and the first byte that differs, so that it
 * can be matched to a row of the document's table. */
static void assert_doc_bytes(const char *what, GByteArray *got, const uint8_t *want, size_t len)
{
    bool same = got->len == len && memcmp(got->data, want, len) == 0;
    if (!same) {
        size_t off = 0;
        while (off < MIN((size_t)got->len, len) && got->data[off] == want[off])
            off++;
        g_autofree char *g = hex_dump(got->data, got->len);
        g_autofree char *w = hex_dump(want, len);
        g_error("%s: the encoder differs from docs/protocol.md at byte %zu (encoder: %u bytes, "
                "document: %zu)\n  encoder:  %s\n  document: %s", what, off, got->len, len, g, w);
    }
    g_byte_array_unref(got);
}

/* An exact-size heap copy of a vector, so that a decoder reading past the
 * payload is caught by ASan. */
static uint8_t *vec_copy(const uint8_t *v, size_t len) { return g_memdup2(v, len); }

/* §3.1: two transports, two blocks. */
static const uint8_t doc_hello[] = {
    0x52, 0x4d, 0x48, 0x49,                         /*  0 magic "RMHI" */
    0x00, 0x01,                                     /*  4 version 1 */
    0x00, 0x00,                                     /*  6 reserved */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7f, /*  8 features_supported: bits 0-6 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, /* 16 features_required: VERIFY|POSTCOPY */
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, /* 24 session_id, 16 bytes */
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x00, 0x00, 0x00, 0x04,                         /* 40 data_connections 4 */
    0x00, 0x00, 0x00, 0x02,                         /* 44 n_transports 2 */
    0x04, 'r', 'd', 'm', 'a',                       /* 48 str8 "rdma" */
    0x03, 't', 'c', 'p',                            /* 53 str8 "tcp" */
    0x00, 0x00, 0x00, 0x02,                         /* 57 n_blocks 2 */
    0x06, 'p', 'c', '.', 'r', 'a', 'm',             /* 61 block 0: str8 name "pc.ram" */
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, /* 68   u64 length 4 GiB */
    0x00, 0x00, 0x10, 0x00,                         /* 76   u32 page_size 4096 */
    0x03, 'v', 'g', 'a',                            /* 80 block 1: str8 name "vga" */
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, /* 84   u64 length 16 MiB */
    0x00, 0x20, 0x00, 0x00,                         /* 92   u32 page_size 2 MiB */
};

static void check_doc_hello_fields(const RdmigHello *d)
{
    g_assert_cmpuint(d->version, ==, 1);
    g_assert_cmphex(d->features_supported, ==, 0x7f);
    g_assert_cmphex(d->features_required, ==, 0x11);
    for (int i = 0; i < 16; i++)
        g_assert_cmpuint(d->session_id[i], ==, i);
    g_assert_cmpuint(d->data_connections, ==, 4);
    g_assert_cmpuint(d->n_transports, ==, 2);
    g_assert_cmpstr(d->transports[0], ==, "rdma");
    g_assert_cmpstr(d->transports[1], ==, "tcp");
    g_assert_cmpuint(d->n_blocks, ==, 2);
    g_assert_cmpstr(d->blocks[0].name, ==, "pc.ram");
    g_assert_cmphex(d->blocks[0].length, ==, 4ull << 30);
    g_assert_cmpuint(d->blocks[0].page_size, ==, 4096);
    g_assert_cmpstr(d->blocks[1].name, ==, "vga");
    g_assert_cmphex(d->blocks[1].length, ==, 16ull << 20);
    g_assert_cmpuint(d->blocks[1].page_size, ==, 2u << 20);
}

static void test_doc_hello(void)
{
    RdmigWireBlock blocks[2] = { { .length = 4ull << 30, .page_size = 4096 },
                                 { .length = 16ull << 20, .page_size = 2u << 20 } };
    g_strlcpy(blocks[0].name, "pc.ram", sizeof(blocks[0].name));
    g_strlcpy(blocks[1].name, "vga", sizeof(blocks[1].name));
    RdmigHello h = { .version = 1, .features_supported = 0x7f, .features_required = 0x11,
                     .data_connections = 4, .n_transports = 2, .n_blocks = 2,
                     .blocks = blocks };
    for (int i = 0; i < 16; i++)
        h.session_id[i] = (uint8_t)i;
    g_strlcpy(h.transports[0], "rdma", sizeof(h.transports[0]));
    g_strlcpy(h.transports[1], "tcp", sizeof(h.transports[1]));
    assert_doc_bytes("HELLO", rdmig_hello_encode(&h), doc_hello, sizeof(doc_hello));

    g_autofree uint8_t *copy = vec_copy(doc_hello, sizeof(doc_hello));
    RdmigHello d;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_hello_decode(copy, sizeof(doc_hello), &d, &err));
    g_assert_no_error(err);
    check_doc_hello_fields(&d);
    rdmig_hello_clear(&d);
}

/* §3.2 */
static const uint8_t doc_hello_ack[] = {
    0x00, 0x01,                                     /*  0 version 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7f, /*  2 features_supported: bits 0-6 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, /* 10 features_enabled: VERIFY|ZERO_PAGES|
                                                     *    MULTI_CONN|KEEPALIVE */
    0x00, 0x00, 0x00, 0x02,                         /* 18 data_connections 2 */
    0x03, 't', 'c', 'p',                            /* 22 str8 transport "tcp" */
    0x00, 0x0e, '1', '0', '.', '0', '.', '0', '.',  /* 26 str16 data_address "10.0.0.2:40000" */
    '2', ':', '4', '0', '0', '0', '0',
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, /* 42 conn_token */
};

static void test_doc_hello_ack(void)
{
    RdmigHelloAck a = { .version = 1, .features_supported = 0x7f, .features_enabled = 0x0f,
                        .data_connections = 2, .conn_token = 0x0123456789abcdefull };
    g_strlcpy(a.transport, "tcp", sizeof(a.transport));
    g_strlcpy(a.data_address, "10.0.0.2:40000", sizeof(a.data_address));
    assert_doc_bytes("HELLO_ACK", rdmig_hello_ack_encode(&a), doc_hello_ack,
                     sizeof(doc_hello_ack));

    g_autofree uint8_t *copy = vec_copy(doc_hello_ack, sizeof(doc_hello_ack));
    RdmigHelloAck d;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_hello_ack_decode(copy, sizeof(doc_hello_ack), &d, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(d.version, ==, 1);
    g_assert_cmphex(d.features_supported, ==, 0x7f);
    g_assert_cmphex(d.features_enabled, ==, 0x0f);
    g_assert_cmpuint(d.data_connections, ==, 2);
    g_assert_cmpstr(d.transport, ==, "tcp");
    g_assert_cmpstr(d.data_address, ==, "10.0.0.2:40000");
    g_assert_cmphex(d.conn_token, ==, 0x0123456789abcdefull);
}

/* §3.3: two TCP keys (u32 region id, u64 region length; opaque to the codec). */
static const uint8_t doc_regions[] = {
    0x00, 0x00, 0x00, 0x02,                         /*  0 n_blocks 2 */
    0x0c,                                           /*  4 key 0: len 12 */
    0x00, 0x00, 0x00, 0x00,                         /*  5   region id 0 */
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, /*  9   region length 4 GiB */
    0x0c,                                           /* 17 key 1: len 12 */
    0x00, 0x00, 0x00, 0x01,                         /* 18   region id 1 */
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, /* 22   region length 16 MiB */
};

/* §3.13: SOURCE_REGIONS in the REGIONS layout, one key of the longest
 * length (32 bytes, opaque: here 0x00..0x1f). */
static const uint8_t doc_source_regions[] = {
    0x00, 0x00, 0x00, 0x01,                         /*  0 n_blocks 1 */
    0x20,                                           /*  4 key 0: len 32 */
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, /*  5   key bytes */
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
};

/* Encodes @r and compares it with @vec, then decodes @vec and compares the
 * keys with @r: the key bytes are arbitrary, so @r itself is the expectation. */
static void check_doc_regions(const char *what, const RdmigRegions *r, const uint8_t *vec,
                              size_t len)
{
    assert_doc_bytes(what, rdmig_regions_encode(r), vec, len);
    g_autofree uint8_t *copy = vec_copy(vec, len);
    g_autofree RdmigRegions *d = g_new0(RdmigRegions, 1);
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_regions_decode(copy, len, d, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(d->n_blocks, ==, r->n_blocks);
    for (uint32_t i = 0; i < r->n_blocks; i++)
        g_assert_cmpmem(d->keys[i].bytes, d->keys[i].len, r->keys[i].bytes, r->keys[i].len);
}

static void test_doc_regions(void)
{
    /* The keys as the document's TCP key layout describes them. */
    static const uint8_t key0[12] = { 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0 };
    static const uint8_t key1[12] = { 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0 };
    g_autofree RdmigRegions *r = g_new0(RdmigRegions, 1);
    r->n_blocks = 2;
    r->keys[0].len = 12;
    memcpy(r->keys[0].bytes, key0, 12);
    r->keys[1].len = 12;
    memcpy(r->keys[1].bytes, key1, 12);
    check_doc_regions("REGIONS", r, doc_regions, sizeof(doc_regions));

    g_autofree RdmigRegions *s = g_new0(RdmigRegions, 1);
    s->n_blocks = 1;
    s->keys[0].len = 32;
    for (int i = 0; i < 32; i++)
        s->keys[0].bytes[i] = (uint8_t)i;
    check_doc_regions("SOURCE_REGIONS", s, doc_source_regions, sizeof(doc_source_regions));
}

/* §3.4: ZERO, block 1, two runs; the second's first page needs all 64 bits. */
static const uint8_t doc_zero[] = {
    0x00, 0x00, 0x00, 0x01,                         /*  0 block index 1 */
    0x00, 0x00, 0x00, 0x02,                         /*  4 n_runs 2 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /*  8 run 0: first page 0 */
    0x00, 0x00, 0x00, 0x01,                         /* 16        count 1 */
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, /* 20 run 1: first page 2^32 */
    0x00, 0x00, 0x02, 0x00,                         /* 28        count 512 */
};

/* §3.14: DISCARD in the ZERO layout, block 0, one run. */
static const uint8_t doc_discard[] = {
    0x00, 0x00, 0x00, 0x00,                         /*  0 block index 0 */
    0x00, 0x00, 0x00, 0x01,                         /*  4 n_runs 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x23, 0x45, /*  8 run 0: first page 0x12345 */
    0x00, 0x00, 0x01, 0x04,                         /* 16        count 260 */
};

typedef struct {
    uint64_t first;
    uint32_t count;
} DocRun;

/* Builds the ZERO-layout message the way the engine does (begin, put,
 * finish), compares it with @vec, then decodes @vec back into the runs. */
static void check_doc_runs(const char *what, uint32_t block, const DocRun *runs, uint32_t n,
                           const uint8_t *vec, size_t len)
{
    GByteArray *b = rdmig_zero_begin(block);
    for (uint32_t i = 0; i < n; i++)
        rdmig_zero_run_put(b, runs[i].first, runs[i].count);
    rdmig_zero_finish(b);
    assert_doc_bytes(what, b, vec, len);

    g_autofree uint8_t *copy = vec_copy(vec, len);
    RdmigZeroMsg z;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_zero_decode(copy, len, &z, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(z.block, ==, block);
    g_assert_cmpuint(z.n_runs, ==, n);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t first;
        uint32_t count;
        rdmig_zero_run_get(&z, i, &first, &count);
        g_assert_cmphex(first, ==, runs[i].first);
        g_assert_cmpuint(count, ==, runs[i].count);
    }
}

static void test_doc_zero_discard(void)
{
    static const DocRun zero_runs[] = { { 0, 1 }, { 1ull << 32, 512 } };
    check_doc_runs("ZERO", 1, zero_runs, 2, doc_zero, sizeof(doc_zero));
    static const DocRun discard_runs[] = { { 0x12345, 260 } };
    check_doc_runs("DISCARD", 0, discard_runs, 1, doc_discard, sizeof(doc_discard));
}

/* §3.7 */
static const uint8_t doc_hashes[] = {
    0x00, 0x00, 0x00, 0x02,                         /*  0 block index 2 */
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, /*  4 first page 2^32 + 3 */
    0x00, 0x00, 0x00, 0x02,                         /* 12 n 2 */
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, /* 16 hash of page first */
    0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, /* 24 hash of page first + 1 */
};

static void test_doc_hashes(void)
{
    static const uint64_t h[2] = { 0x0123456789abcdefull, 0xfedcba9876543210ull };
    assert_doc_bytes("HASHES", rdmig_hashes_encode(2, (1ull << 32) + 3, h, 2), doc_hashes,
                     sizeof(doc_hashes));

    g_autofree uint8_t *copy = vec_copy(doc_hashes, sizeof(doc_hashes));
    RdmigHashesMsg m;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_hashes_decode(copy, sizeof(doc_hashes), &m, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(m.block, ==, 2);
    g_assert_cmphex(m.first, ==, (1ull << 32) + 3);
    g_assert_cmpuint(m.n, ==, 2);
    g_assert_cmphex(rdmig_hashes_get(&m, 0), ==, 0x0123456789abcdefull);
    g_assert_cmphex(rdmig_hashes_get(&m, 1), ==, 0xfedcba9876543210ull);
}

/* §3.20: block 1, pages 128..255 in two words; pages 128, 129, 130, 192
 * and 255 are placed (five bits: the RECEIVED_END vector below says 5). */
static const uint8_t doc_received[] = {
    0x00, 0x00, 0x00, 0x01,                         /*  0 block index 1 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, /*  4 first page 128 */
    0x00, 0x00, 0x00, 0x02,                         /* 12 n_words 2 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, /* 16 word 0: bits 0-2 = pages 128-130 */
    0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, /* 24 word 1: bit 0 = page 192,
                                                     *    bit 63 = page 255 */
};

static void test_doc_received(void)
{
    static const uint64_t words[2] = { 0x7, 0x8000000000000001ull };
    assert_doc_bytes("RECEIVED", rdmig_received_encode(1, 128, words, 2), doc_received,
                     sizeof(doc_received));

    g_autofree uint8_t *copy = vec_copy(doc_received, sizeof(doc_received));
    RdmigReceivedMsg m;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_received_decode(copy, sizeof(doc_received), &m, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(m.block, ==, 1);
    g_assert_cmpuint(m.first, ==, 128);
    g_assert_cmpuint(m.n_words, ==, 2);
    uint64_t got[2] = { rdmig_received_word(&m, 0), rdmig_received_word(&m, 1) };
    g_assert_cmphex(got[0], ==, words[0]);
    g_assert_cmphex(got[1], ==, words[1]);
    /* The document's bit order (bit b of word k is page first + 64k + b) is
     * the engine's bitmap order: the source tests these words with it. */
    for (uint64_t page = 128; page < 256; page++) {
        bool placed = page <= 130 || page == 192 || page == 255;
        if (rdmig_bitmap_test(got, page - m.first) != placed)
            g_error("RECEIVED: page %" G_GUINT64_FORMAT " reads as %s, docs/protocol.md "
                    "says %s", page, placed ? "missing" : "placed", placed ? "placed" : "missing");
    }
}

/* §3.9: success, nothing to say. */
static const uint8_t doc_complete_ack_ok[] = {
    0x00, 0x00, 0x00, 0x00,                         /*  0 status 0: verified and running */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x08, /*  4 pages_verified 1048584 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* 12 mismatches 0 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0xdc, /* 20 verify_us 1500 */
    0x00, 0x00,                                     /* 28 str16 message "" */
};

/* §3.9 and §3.10's code table: status 1 + verify (11) = 12, with the reason. */
static const uint8_t doc_complete_ack_verify[] = {
    0x00, 0x00, 0x00, 0x0c,                         /*  0 status 12 = 1 + verify */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x62, /*  4 pages_verified 98 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, /* 12 mismatches 2 */
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, /* 20 verify_us 0x01020304050607 */
    0x00, 0x15,                                     /* 28 str16 message, 21 bytes */
    '2', ' ', 'o', 'f', ' ', '1', '0', '0', ' ', 'p', 'a', 'g', 'e', 's', ' ',
    'd', 'i', 'f', 'f', 'e', 'r',
};

static void check_doc_complete_ack(const char *what, const RdmigCompleteAck *a,
                                   const uint8_t *vec, size_t len)
{
    assert_doc_bytes(what, rdmig_complete_ack_encode(a), vec, len);
    g_autofree uint8_t *copy = vec_copy(vec, len);
    RdmigCompleteAck d;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_complete_ack_decode(copy, len, &d, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(d.status, ==, a->status);
    g_assert_cmpuint(d.pages_verified, ==, a->pages_verified);
    g_assert_cmpuint(d.mismatches, ==, a->mismatches);
    g_assert_cmphex(d.verify_us, ==, a->verify_us);
    g_assert_cmpstr(d.message, ==, a->message);
}

static void test_doc_complete_ack(void)
{
    RdmigCompleteAck ok = { .status = 0, .pages_verified = 1048584, .verify_us = 1500 };
    check_doc_complete_ack("COMPLETE_ACK (success)", &ok, doc_complete_ack_ok,
                           sizeof(doc_complete_ack_ok));

    /* Filled as the destination fills it: 1 + the code, not the number 12,
     * so that the code's numbering is checked against the document too. */
    RdmigCompleteAck bad = { .status = 1 + RDMIG_ERROR_VERIFY, .pages_verified = 98,
                             .mismatches = 2, .verify_us = 0x01020304050607ull };
    g_strlcpy(bad.message, "2 of 100 pages differ", sizeof(bad.message));
    check_doc_complete_ack("COMPLETE_ACK (verify)", &bad, doc_complete_ack_verify,
                           sizeof(doc_complete_ack_verify));
    g_assert_cmpuint(bad.status, ==, 12);
}

/* §3.10 */
static const uint8_t doc_error_layout[] = {
    0x00, 0x00, 0x00, 0x09,                         /*  0 code 9 = layout */
    0x00, 0x13,                                     /*  4 str16 message, 19 bytes */
    'R', 'A', 'M', ' ', 'l', 'a', 'y', 'o', 'u', 't', ' ',
    'm', 'i', 's', 'm', 'a', 't', 'c', 'h',
};
static const uint8_t doc_error_cancelled[] = {
    0x00, 0x00, 0x00, 0x06,                         /*  0 code 6 = cancelled */
    0x00, 0x00,                                     /*  4 str16 message "" */
};

static void check_doc_error(uint32_t code, const char *message, uint32_t doc_code,
                            const uint8_t *vec, size_t len)
{
    g_autofree char *what = g_strdup_printf("ERROR (code %u)", doc_code);
    assert_doc_bytes(what, rdmig_error_encode(code, message), vec, len);
    g_autofree uint8_t *copy = vec_copy(vec, len);
    RdmigWireError e;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_error_decode(copy, len, &e, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(e.code, ==, doc_code);
    g_assert_cmpstr(e.message, ==, message);
}

static void test_doc_error(void)
{
    /* Encoded from the code's enum, expected as the document's number. */
    check_doc_error(RDMIG_ERROR_LAYOUT, "RAM layout mismatch", 9, doc_error_layout,
                    sizeof(doc_error_layout));
    check_doc_error(RDMIG_ERROR_CANCELLED, "", 6, doc_error_cancelled,
                    sizeof(doc_error_cancelled));
}

/* Every message whose payload is one u64 (§3.5, 3.8, 3.15-3.19, 3.21, 3.22),
 * with the type number and the name of §3's table. */
static const struct {
    uint16_t type;
    const char *name;
    uint64_t value;
    uint8_t bytes[8];
} doc_u64[] = {
    { 5, "ROUND_END", 3, { 0, 0, 0, 0, 0, 0, 0, 0x03 } },               /* round 3 */
    { 6, "ROUND_ACK", 3, { 0, 0, 0, 0, 0, 0, 0, 0x03 } },               /* round 3 */
    { 9, "COMPLETE", 1048584, { 0, 0, 0, 0, 0, 0x10, 0x00, 0x08 } },    /* total pages */
    { 15, "POSTCOPY_START", 300, { 0, 0, 0, 0, 0, 0, 0x01, 0x2c } },    /* pages discarded */
    { 16, "POSTCOPY_RUNNING", 0, { 0, 0, 0, 0, 0, 0, 0, 0 } },          /* always 0 */
    { 17, "POSTCOPY_PREPARE", 260, { 0, 0, 0, 0, 0, 0, 0x01, 0x04 } },  /* discarded so far */
    { 18, "POSTCOPY_PREPARED", 1048324, { 0, 0, 0, 0, 0, 0x0f, 0xff, 0x04 } }, /* held, verified */
    { 19, "RESUME", 0x0102030405060708ull,                              /* epoch, every */
      { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08 } },             /* byte distinct */
    { 21, "RECEIVED_END", 5, { 0, 0, 0, 0, 0, 0, 0, 0x05 } },           /* bits of RECEIVED */
    { 21, "RECEIVED_END", 7, { 0, 0, 0, 0, 0, 0, 0, 0x07 } },           /* precopy: round */
    { 22, "POSTCOPY_RESUME", 0x0102030405060708ull,                     /* the RESUME's */
      { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08 } },             /* epoch */
    { 22, "POSTCOPY_RESUME", 0xfedcba9876543210ull,                     /* top bit set */
      { 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10 } },
    { 23, "EPOCH", 2, { 0, 0, 0, 0, 0, 0, 0, 0x02 } },                  /* two links accepted */
};

static void test_doc_u64(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(doc_u64); i++) {
        g_assert_cmpstr(rdmig_msg_type_str(doc_u64[i].type), ==, doc_u64[i].name);
        assert_doc_bytes(doc_u64[i].name, rdmig_u64_encode(doc_u64[i].value), doc_u64[i].bytes,
                         8);
        g_autofree uint8_t *copy = vec_copy(doc_u64[i].bytes, 8);
        uint64_t v = ~doc_u64[i].value;
        g_autoptr(GError) err = NULL;
        g_assert_true(rdmig_u64_decode(copy, 8, &v, doc_u64[i].name, &err));
        g_assert_no_error(err);
        g_assert_cmphex(v, ==, doc_u64[i].value);
    }
}

/* §2: a HASHES frame of 32 payload bytes, the eighth frame in its direction. */
static const uint8_t doc_frame_header[RDMIG_CONTROL_HEADER_SIZE] = {
    0x52, 0x44, 0x4d, 0x47,                         /*  0 magic "RDMG" */
    0x00, 0x01,                                     /*  4 version 1 */
    0x00, 0x08,                                     /*  6 type 8 = HASHES */
    0x00, 0x00, 0x00, 0x20,                         /*  8 length 32 */
    0x00, 0x00, 0x00, 0x07,                         /* 12 seq 7 */
};

static void test_doc_frame_header(void)
{
    GByteArray *b = g_byte_array_new();
    g_byte_array_set_size(b, RDMIG_CONTROL_HEADER_SIZE);
    rdmig_frame_header_encode(b->data, 8, 32, 7);
    assert_doc_bytes("control frame header", b, doc_frame_header, sizeof(doc_frame_header));

    g_autofree uint8_t *copy = vec_copy(doc_frame_header, sizeof(doc_frame_header));
    RdmigFrameHeader h;
    g_autoptr(GError) err = NULL;
    g_assert_true(rdmig_frame_header_decode(copy, &h, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(h.version, ==, 1);
    g_assert_cmpuint(h.type, ==, 8);
    g_assert_cmpuint(h.length, ==, 32);
    g_assert_cmpuint(h.seq, ==, 7);
}

/* §3's table of types, by number: a renumbered enum would still round-trip
 * and still pass the name test above, but would no longer interoperate. */
static void test_doc_type_numbers(void)
{
    static const char *const doc_names[] = {
        [1] = "HELLO",           [2] = "HELLO_ACK",         [3] = "REGIONS",
        [4] = "ZERO",            [5] = "ROUND_END",         [6] = "ROUND_ACK",
        [7] = "DEVICE_STATE",    [8] = "HASHES",            [9] = "COMPLETE",
        [10] = "COMPLETE_ACK",   [11] = "ERROR",            [12] = "PING",
        [13] = "SOURCE_REGIONS", [14] = "DISCARD",          [15] = "POSTCOPY_START",
        [16] = "POSTCOPY_RUNNING", [17] = "POSTCOPY_PREPARE", [18] = "POSTCOPY_PREPARED",
        [19] = "RESUME",         [20] = "RECEIVED",         [21] = "RECEIVED_END",
        [22] = "POSTCOPY_RESUME", [23] = "EPOCH",
    };
    for (uint16_t t = 1; t < G_N_ELEMENTS(doc_names); t++)
        g_assert_cmpstr(rdmig_msg_type_str(t), ==, doc_names[t]);
    /* §2: type 0 and 24 onwards are unknown. */
    g_assert_cmpuint(RDMIG_MSG__MAX, ==, 24);
    g_assert_cmpstr(rdmig_msg_type_str(0), ==, "unknown");
    g_assert_cmpstr(rdmig_msg_type_str(24), ==, "unknown");
}

/* §4.1's bits and §3.10's codes, which the vectors above write as numbers. */
static void test_doc_feature_bits_and_codes(void)
{
    g_assert_cmphex(RDMIG_FEATURE_VERIFY, ==, 0x1);
    g_assert_cmphex(RDMIG_FEATURE_ZERO_PAGES, ==, 0x2);
    g_assert_cmphex(RDMIG_FEATURE_MULTI_CONN, ==, 0x4);
    g_assert_cmphex(RDMIG_FEATURE_KEEPALIVE, ==, 0x8);
    g_assert_cmphex(RDMIG_FEATURE_POSTCOPY, ==, 0x10);
    g_assert_cmphex(RDMIG_FEATURE_RECOVERY, ==, 0x20);
    g_assert_cmphex(RDMIG_FEATURE_PRECOPY_RESUME, ==, 0x40);
    g_assert_cmphex(RDMIG_FEATURES_KNOWN, ==, 0x7f);

    static const char *const doc_codes[] = { "connect", "protocol", "version", "unsupported",
                                             "peer",    "resource", "cancelled", "auth",
                                             "invalid", "layout",   "converge", "verify",
                                             "link" };
    for (uint32_t c = 0; c < G_N_ELEMENTS(doc_codes); c++)
        g_assert_cmpstr(rdmig_error_code_str((RdmigErrorCode)c), ==, doc_codes[c]);
    /* One past the last: not a name of a code. */
    g_assert_cmpstr(rdmig_error_code_str((RdmigErrorCode)G_N_ELEMENTS(doc_codes)), ==,
                    "unknown");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/wire/round-ack", test_round_ack);
    g_test_add_func("/wire/hello/roundtrip", test_hello_roundtrip);
    g_test_add_func("/wire/hello/truncated", test_hello_truncated);
    g_test_add_func("/wire/hello/bad-magic", test_hello_bad_magic);
    g_test_add_func("/wire/hello/version", test_hello_version);
    g_test_add_func("/wire/hello/block-count", test_hello_block_count);
    g_test_add_func("/wire/hello/transport-count", test_hello_transport_count);
    g_test_add_func("/wire/hello/strings", test_hello_strings);
    g_test_add_func("/wire/hello-ack/roundtrip", test_hello_ack_roundtrip);
    g_test_add_func("/wire/hello-ack/truncated", test_hello_ack_truncated);
    g_test_add_func("/wire/hello-ack/invalid", test_hello_ack_invalid);
    g_test_add_func("/wire/regions/roundtrip", test_regions_roundtrip);
    g_test_add_func("/wire/regions/truncated", test_regions_truncated);
    g_test_add_func("/wire/regions/invalid", test_regions_invalid);
    g_test_add_func("/wire/error/roundtrip", test_error_roundtrip);
    g_test_add_func("/wire/error/truncated", test_error_truncated);
    g_test_add_func("/wire/error/invalid", test_error_invalid);
    g_test_add_func("/wire/error/text-printable", test_error_text_printable);
    g_test_add_func("/wire/error/long-message-decodable", test_error_long_message_decodable);
    g_test_add_func("/wire/complete-ack/roundtrip", test_complete_ack_roundtrip);
    g_test_add_func("/wire/complete-ack/truncated", test_complete_ack_truncated);
    g_test_add_func("/wire/zero/roundtrip", test_zero_roundtrip);
    g_test_add_func("/wire/zero/truncated", test_zero_truncated);
    g_test_add_func("/wire/hashes/roundtrip", test_hashes_roundtrip);
    g_test_add_func("/wire/hashes/truncated", test_hashes_truncated);
    g_test_add_func("/wire/u64", test_u64);
    g_test_add_func("/wire/received/roundtrip", test_received_roundtrip);
    g_test_add_func("/wire/received/bad", test_received_bad);
    g_test_add_func("/wire/features/intersection", test_features_intersection);
    g_test_add_func("/wire/features/unknown-required", test_features_unknown_required);
    g_test_add_func("/wire/features/required-unsupported", test_features_required_unsupported);
    g_test_add_func("/wire/msg-type-str", test_msg_type_str);
    g_test_add_func("/wire/doc/hello", test_doc_hello);
    g_test_add_func("/wire/doc/hello-ack", test_doc_hello_ack);
    g_test_add_func("/wire/doc/regions", test_doc_regions);
    g_test_add_func("/wire/doc/zero-discard", test_doc_zero_discard);
    g_test_add_func("/wire/doc/hashes", test_doc_hashes);
    g_test_add_func("/wire/doc/received", test_doc_received);
    g_test_add_func("/wire/doc/complete-ack", test_doc_complete_ack);
    g_test_add_func("/wire/doc/error", test_doc_error);
    g_test_add_func("/wire/doc/u64", test_doc_u64);
    g_test_add_func("/wire/doc/frame-header", test_doc_frame_header);
    g_test_add_func("/wire/doc/type-numbers", test_doc_type_numbers);
    g_test_add_func("/wire/doc/feature-bits-and-codes", test_doc_feature_bits_and_codes);
    return g_test_run();
}

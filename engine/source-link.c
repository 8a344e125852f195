/* SPDX-License-Identifier: MIT */
/*
 * The source's handshake (docs/protocol.md §4): the control connection,
 * HELLO -> HELLO_ACK (features, the data transport, how many connections),
 * REGIONS (the destination's keys), the data connections, and the keys the
 * source lends for postcopy (SOURCE_REGIONS).  Used for a new migration and
 * for every recovery attempt.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include <string.h>
#include <sys/random.h>

#include "channel.h"
#include "dataplane.h"
#include "link-secrets.h"
#include "source.h"
#include "transport/address.h"

bool rdmig_source_connect(RdmigSource *src, const char *address, GError **error)
{
    RdmigSession *s = &src->s;
    if (!rdmig_channel_connect(s, address, error))
        return false;
    if (getrandom(s->session_id, sizeof(s->session_id), 0) != sizeof(s->session_id))
        g_random_set_seed((guint32)rdmig_now_us()); /* getrandom cannot fail for 16 bytes */
    return rdmig_link_keep_secret(s, error);
}

/* Postcopy pulls faults on a connection of their own, away from bulk reads. */
static uint32_t wanted_connections(RdmigSource *src)
{
    uint32_t n = src->s.params.data_connections;
    return src->s.params.postcopy ? MAX(n, 2u) : n;
}

/* The features this source offers and requires. */
static void hello_features(RdmigSource *src, bool recovering, RdmigHello *h)
{
    const RdmigParams *p = &src->s.params;
    h->features_supported = RDMIG_FEATURES_KNOWN;
    if (!p->verify)
        h->features_supported &= ~RDMIG_FEATURE_VERIFY;
    if (!p->postcopy)
        h->features_supported &= ~(RDMIG_FEATURE_POSTCOPY | RDMIG_FEATURE_RECOVERY);
    if (!p->precopy_resume)
        h->features_supported &= ~RDMIG_FEATURE_PRECOPY_RESUME;
    h->features_required = (p->verify ? RDMIG_FEATURE_VERIFY : 0) |
                           (p->postcopy ? RDMIG_FEATURE_POSTCOPY : 0);
    if (recovering)
        h->features_required |= src->postcopy_started ? RDMIG_FEATURE_RECOVERY
                                                      : RDMIG_FEATURE_PRECOPY_RESUME;
}

/* HELLO: version, features, session id, the transports in @offer, the layout. */
static bool send_hello(RdmigSource *src, bool recovering, const RdmigTransportOps **offer,
                       uint32_t noffer, RdmigHello *h, GError **error)
{
    RdmigSession *s = &src->s;
    *h = (RdmigHello){ .version = RDMIG_PROTOCOL_VERSION,
                       .data_connections = wanted_connections(src),
                       .n_transports = noffer,
                       .n_blocks = s->blocks->len };
    hello_features(src, recovering, h);
    rdmig_link_session_id(s, recovering, h->session_id);
    for (uint32_t i = 0; i < noffer; i++)
        g_strlcpy(h->transports[i], offer[i]->name, sizeof(h->transports[i]));
    g_autofree RdmigWireBlock *wb = g_new0(RdmigWireBlock, s->blocks->len);
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        g_strlcpy(wb[i].name, b->name, sizeof(wb[i].name));
        wb[i].length = b->length;
        wb[i].page_size = b->page_size;
    }
    h->blocks = wb;
    bool ok = rdmig_channel_send(s, RDMIG_MSG_HELLO, rdmig_hello_encode(h), error);
    h->blocks = NULL;
    return ok;
}

static bool recv_hello_ack(RdmigSession *s, RdmigHelloAck *ack, GError **error)
{
    RdmigFrame f;
    return rdmig_channel_expect(s, RDMIG_MSG_HELLO_ACK, "from the destination", -1, &f, error) &&
           rdmig_hello_ack_decode(f.payload, f.hdr.length, ack, error);
}

/* What HELLO_ACK enabled must be shared, and on a recovery the same as
 * before: a peer must not switch verification off, nor anything else. */
static bool check_features(RdmigSource *src, const RdmigHello *h, const RdmigHelloAck *ack,
                           bool recovering, GError **error)
{
    RdmigSession *s = &src->s;
    uint64_t enabled;
    if (!rdmig_features_negotiate(h->features_supported, h->features_required,
                                  ack->features_supported, 0, &enabled, error))
        return false;
    if (ack->features_enabled & ~enabled) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination enabled features 0x%" G_GINT64_MODIFIER "x that are not shared",
                    ack->features_enabled & ~enabled);
        return false;
    }
    uint64_t not_enabled = h->features_required & ~ack->features_enabled;
    if (not_enabled) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination did not enable features 0x%" G_GINT64_MODIFIER "x that this "
                    "source requires%s", not_enabled,
                    (not_enabled & RDMIG_FEATURE_VERIFY) ? " (per-page verification)" : "");
        return false;
    }
    if (recovering && ack->features_enabled != s->features) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the recovered destination enabled features 0x%" G_GINT64_MODIFIER "x, the "
                    "paused migration has 0x%" G_GINT64_MODIFIER "x", ack->features_enabled,
                    s->features);
        return false;
    }
    s->features = ack->features_enabled;
    return true;
}

/* The transport HELLO_ACK chose must be one offered, and the connections no
 * more than were. */
static bool take_transport(RdmigSource *src, const RdmigTransportOps **offer, uint32_t noffer,
                           const RdmigHelloAck *ack, GError **error)
{
    RdmigSession *s = &src->s;
    s->tp = NULL;
    for (uint32_t i = 0; i < noffer; i++)
        if (strcmp(offer[i]->name, ack->transport) == 0)
            s->tp = offer[i];
    if (!s->tp) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination chose data transport '%s', which was not offered", ack->transport);
        return false;
    }
    uint32_t want = wanted_connections(src);
    if (!ack->data_connections || ack->data_connections > want) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "destination asked for %u data connections, %u were offered",
                    ack->data_connections, want);
        return false;
    }
    s->nconns = ack->data_connections;
    return true;
}

/* A recovery link: the destination tells the last epoch it accepted, and
 * RESUME names the next, which this link then is. */
static bool resume_next_epoch(RdmigSession *s, GError **error)
{
    RdmigFrame f;
    uint64_t last;
    if (!rdmig_channel_expect(s, RDMIG_MSG_EPOCH, "after a recovering HELLO",
                              (int)s->params.peer_timeout_ms, &f, error) ||
        !rdmig_u64_decode(f.payload, f.hdr.length, &last, "EPOCH", error))
        return false;
    if (last == UINT64_MAX) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the destination's recovery epoch is used up (EPOCH %" G_GUINT64_FORMAT ")",
                    last);
        return false;
    }
    s->epoch = last + 1;
    return rdmig_channel_send(s, RDMIG_MSG_RESUME, rdmig_u64_encode(s->epoch), error);
}

bool rdmig_source_hello(RdmigSource *src, bool recovering, const RdmigTransportOps *skip,
                        RdmigHelloAck *ack, GError **error)
{
    RdmigSession *s = &src->s;
    const RdmigTransportOps *all[RDMIG_MAX_TRANSPORTS], *offer[RDMIG_MAX_TRANSPORTS];
    uint32_t nall = rdmig_dataplane_transports(s, all, RDMIG_MAX_TRANSPORTS, error), noffer = 0;
    if (!nall)
        return false;
    for (uint32_t i = 0; i < nall; i++)
        if (all[i] != skip || nall == 1)
            offer[noffer++] = all[i];
    RdmigHello h;
    if (!send_hello(src, recovering, offer, noffer, &h, error))
        return false;
    if (recovering && !resume_next_epoch(s, error))
        return false;
    if (!recv_hello_ack(s, ack, error) || !check_features(src, &h, ack, recovering, error) ||
        !take_transport(src, offer, noffer, ack, error))
        return false;
    rdmig_channel_start_keepalive(s);
    return true;
}

bool rdmig_source_take_regions(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    RdmigFrame f;
    if (!rdmig_channel_expect(s, RDMIG_MSG_REGIONS, "from the destination", -1, &f, error))
        return false;
    g_autofree RdmigRegions *regions = rdmig_dataplane_peer_keys(s, &f, "REGIONS", error);
    if (!regions)
        return false;
    for (guint i = 0; i < s->blocks->len; i++)
        ((RdmigRamBlock *)s->blocks->pdata[i])->rkey = regions->keys[i];
    return true;
}

bool rdmig_source_open_data(RdmigSource *src, const RdmigHelloAck *ack,
                            const RdmigTransportOps **failed, GError **error)
{
    RdmigSession *s = &src->s;
    RdmigTransportConfig cfg =
        rdmig_dataplane_config(s, rdmig_link_data_token(s, ack->conn_token));
    s->transport = s->tp->create(&cfg, error);
    bool ok = s->transport != NULL;
    /* Connections first: an RDMA transport learns its device (and so has a
     * protection domain to register memory in) only when it connects. */
    for (uint32_t i = 0; ok && i < s->nconns; i++) {
        s->conns[i] = s->tp->connect(s->transport, ack->data_address, error);
        if (!s->conns[i]) {
            g_prefix_error(error, "data connection %u of %u: ", i + 1, s->nconns);
            ok = false;
        }
    }
    if (!ok) {
        const RdmigTransportOps *all[RDMIG_MAX_TRANSPORTS];
        if (failed && rdmig_dataplane_transports(s, all, RDMIG_MAX_TRANSPORTS, NULL) > 1)
            *failed = s->tp;
        return false;
    }
    RDMIG_STATS_UPDATE(s, {
        g_strlcpy(s->stats.transport, s->tp->name, sizeof(s->stats.transport));
        s->stats.data_connections = s->nconns;
    });
    return true;
}

bool rdmig_source_send_keys(RdmigSource *src, GError **error)
{
    RdmigSession *s = &src->s;
    g_autofree RdmigRegions *keys = g_new0(RdmigRegions, 1);
    keys->n_blocks = s->blocks->len;
    for (guint i = 0; i < s->blocks->len; i++)
        s->tp->region_key(((RdmigRamBlock *)s->blocks->pdata[i])->read_region, &keys->keys[i]);
    return rdmig_channel_send(s, RDMIG_MSG_SOURCE_REGIONS, rdmig_regions_encode(keys), error);
}

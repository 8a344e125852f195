/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness: every control-message decoder (engine/wire.c).  The
 * first byte picks the decoder, the rest is the payload, as a peer could
 * send it.  A decoder must accept or refuse with an error, never read past
 * the payload (ASan), and whatever it accepts must be readable whole (the
 * accessors below walk every run, hash and word it reports).
 */
#include <glib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/wire.h"

static void walk_zero(const RdmigZeroMsg *z)
{
    for (uint32_t i = 0; i < z->n_runs; i++) {
        uint64_t first;
        uint32_t count;
        rdmig_zero_run_get(z, i, &first, &count);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* An exact-size heap copy: one byte too far is an ASan report. */
    size_t len = size - 1;
    uint8_t *p = malloc(len ? len : 1);
    memcpy(p, data + 1, len);
    GError *err = NULL;
    switch (data[0] % 10) {
    case 0: {
        RdmigHello h = { 0 };
        if (rdmig_hello_decode(p, len, &h, &err))
            for (uint32_t i = 0; i < h.n_blocks; i++)
                (void)strlen(h.blocks[i].name);
        rdmig_hello_clear(&h);
        break;
    }
    case 1: {
        RdmigHelloAck a;
        if (rdmig_hello_ack_decode(p, len, &a, &err))
            (void)strlen(a.data_address);
        break;
    }
    case 2: {
        RdmigRegions *r = g_new0(RdmigRegions, 1);
        rdmig_regions_decode(p, len, r, &err);
        g_free(r);
        break;
    }
    case 3: {
        RdmigWireError e;
        if (rdmig_error_decode(p, len, &e, &err))
            (void)strlen(e.message);
        break;
    }
    case 4: {
        RdmigCompleteAck a;
        rdmig_complete_ack_decode(p, len, &a, &err);
        break;
    }
    case 5: {
        RdmigZeroMsg z;
        if (rdmig_zero_decode(p, len, &z, &err))
            walk_zero(&z);
        break;
    }
    case 6: {
        RdmigHashesMsg m;
        if (rdmig_hashes_decode(p, len, &m, &err))
            for (uint32_t i = 0; i < m.n; i++)
                (void)rdmig_hashes_get(&m, i);
        break;
    }
    case 7: {
        RdmigReceivedMsg m;
        if (rdmig_received_decode(p, len, &m, &err))
            for (uint32_t i = 0; i < m.n_words; i++)
                (void)rdmig_received_word(&m, i);
        break;
    }
    case 8: {
        uint64_t v;
        rdmig_u64_decode(p, len, &v, "ROUND_END", &err);
        RdmigRoundAck a;
        g_clear_error(&err);
        rdmig_round_ack_decode(p, len, &a, &err);
        break;
    }
    default: {
        /* Feature negotiation over a HELLO's words, as the destination
         * runs it. */
        RdmigHello h = { 0 };
        uint64_t enabled;
        if (rdmig_hello_decode(p, len, &h, &err))
            rdmig_features_negotiate(RDMIG_FEATURES_KNOWN, 0, h.features_supported,
                                     h.features_required, &enabled, &err);
        rdmig_hello_clear(&h);
        break;
    }
    }
    g_clear_error(&err);
    free(p);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/* Secrets derived from the authenticated control channel (link-secrets.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "link-secrets.h"

#include <string.h>

#include "util/be.h"

#define LABEL_TOKEN "EXPORTER-rdmig-data-token"
#define LABEL_SECRET "EXPORTER-rdmig-recovery-secret"
#define LABEL_PROOF "EXPORTER-rdmig-recovery-proof"

static RdmigTls *link_tls(RdmigSession *s) { return s->ctl ? rdmig_control_tls(s->ctl) : NULL; }

uint64_t rdmig_link_data_token(RdmigSession *s, uint64_t clear_token)
{
    RdmigTls *tls = link_tls(s);
    uint8_t b[8];
    if (!tls || !rdmig_tls_export(tls, LABEL_TOKEN, b, sizeof(b)))
        return clear_token;
    return rdmig_get_be64(b);
}

bool rdmig_link_keep_secret(RdmigSession *s, GError **error)
{
    RdmigTls *tls = link_tls(s);
    if (!tls)
        return true;
    if (!rdmig_tls_export(tls, LABEL_SECRET, s->recovery_secret, sizeof(s->recovery_secret))) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "TLS: cannot derive the session's recovery secret");
        return false;
    }
    s->have_recovery_secret = true;
    return true;
}

/* HMAC-SHA256(recovery secret, this link's exported value), truncated. */
static bool proof(RdmigSession *s, RdmigTls *tls, uint8_t out[RDMIG_SESSION_ID_LEN])
{
    uint8_t link[32];
    if (!s->have_recovery_secret || !rdmig_tls_export(tls, LABEL_PROOF, link, sizeof(link)))
        return false;
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, s->recovery_secret, sizeof(s->recovery_secret));
    g_hmac_update(h, link, sizeof(link));
    uint8_t mac[32];
    gsize n = sizeof(mac);
    g_hmac_get_digest(h, mac, &n);
    g_hmac_unref(h);
    memcpy(out, mac, RDMIG_SESSION_ID_LEN);
    return true;
}

void rdmig_link_session_id(RdmigSession *s, bool recovering, uint8_t out[RDMIG_SESSION_ID_LEN])
{
    RdmigTls *tls = link_tls(s);
    if (!tls || !recovering || !proof(s, tls, out))
        memcpy(out, s->session_id, RDMIG_SESSION_ID_LEN);
}

bool rdmig_link_is_own_source(RdmigSession *s, const uint8_t id[RDMIG_SESSION_ID_LEN])
{
    RdmigTls *tls = link_tls(s);
    uint8_t want[RDMIG_SESSION_ID_LEN];
    if (!tls)
        memcpy(want, s->session_id, sizeof(want));
    else if (!proof(s, tls, want))
        return false;
    uint8_t diff = 0;
    for (int i = 0; i < RDMIG_SESSION_ID_LEN; i++)
        diff |= want[i] ^ id[i];
    return diff == 0;
}

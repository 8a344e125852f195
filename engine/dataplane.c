/* SPDX-License-Identifier: MIT */
/* A session's data plane (dataplane.h). */
#define G_LOG_DOMAIN "rdmig-engine"

#include "dataplane.h"

#include <errno.h>

#include "channel.h"
#include "transport/registry.h"

uint32_t rdmig_dataplane_transports(RdmigSession *s, const RdmigTransportOps **out,
                                    uint32_t max, GError **error)
{
    uint32_t n = rdmig_transport_choose(RDMIG_TRANSPORT_CAP_ONESIDED_WRITE, s->params.transport,
                                        out, max, error);
    if (!n)
        g_prefix_error(error, "--transport %s: ", s->params.transport);
    return n;
}

RdmigTransportConfig rdmig_dataplane_config(RdmigSession *s, uint64_t conn_token)
{
    return (RdmigTransportConfig){ .queue_depth = RDMIG_REQS_PER_CONN,
                                   .connect_timeout_ms = s->params.connect_timeout_ms,
                                   .max_io_bytes = RDMIG_IO_PAGES_MAX * 65536u,
                                   .ack_timeout = s->params.rdma_ack_timeout,
                                   .conn_token = conn_token };
}

/* Blocks at least this large get their own registration thread: pinning
 * and mapping pages costs about a second per GiB on hardware RDMA, many
 * times that on soft-RoCE under emulation. */
#define REGISTER_PARALLEL_MIN (64ull << 20)

typedef struct {
    RdmigSession *s;
    RdmigRamBlock *b;
    uint32_t access;
    RdmigRegion **region; /* where it goes: b->region or b->read_region */
    GError *error;
} RegisterJob;

static gpointer register_block(gpointer data)
{
    RegisterJob *j = data;
    if (*j->region)
        return NULL;
    *j->region = j->s->tp->register_region(j->s->transport, j->b->host, j->b->length, j->access,
                                           &j->error);
    if (!*j->region)
        g_prefix_error(&j->error, "registering RAM block '%s'%s: ", j->b->name,
                       j->region == &j->b->read_region ? " readable by the destination" : "");
    return NULL;
}

static gpointer register_thread(gpointer data)
{
    register_block(data);
    rdmig_session_account_thread_cpu(((RegisterJob *)data)->s);
    return NULL;
}

static bool register_all(RdmigSession *s, uint32_t access, bool readable, GError **error)
{
    guint n = s->blocks->len;
    g_autofree RegisterJob *jobs = g_new0(RegisterJob, n);
    g_autofree GThread **threads = g_new0(GThread *, n);
    guint max_threads = MAX(1u, MIN(g_get_num_processors(), 8u));
    guint running = 0;
    for (guint i = 0; i < n; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        jobs[i] = (RegisterJob){ .s = s, .b = b, .access = access,
                                 .region = readable ? &b->read_region : &b->region };
        /* A small block, or no thread to spare: register it right here. */
        if (jobs[i].b->length < REGISTER_PARALLEL_MIN || running + 1 >= max_threads ||
            !(threads[i] = g_thread_try_new("rdmig-register", register_thread, &jobs[i], NULL)))
            register_block(&jobs[i]);
        else
            running++;
    }
    bool ok = true;
    for (guint i = 0; i < n; i++) {
        if (threads[i])
            g_thread_join(threads[i]);
        if (jobs[i].error) {
            if (ok)
                g_propagate_error(error, jobs[i].error);
            else
                g_error_free(jobs[i].error);
            ok = false;
        }
    }
    return ok;
}

bool rdmig_dataplane_register_blocks(RdmigSession *s, uint32_t access, GError **error)
{
    return register_all(s, access, false, error);
}

bool rdmig_dataplane_register_readable(RdmigSession *s, GError **error)
{
    return register_all(s, RDMIG_ACCESS_REMOTE_READ, true, error);
}

RdmigRegions *rdmig_dataplane_peer_keys(RdmigSession *s, const RdmigFrame *f, const char *msg,
                                        GError **error)
{
    g_autofree RdmigRegions *keys = g_new0(RdmigRegions, 1);
    if (!rdmig_regions_decode(f->payload, f->hdr.length, keys, error))
        return NULL;
    if (keys->n_blocks != s->blocks->len) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "%s has keys for %u RAM blocks, we have %u", msg, keys->n_blocks,
                    s->blocks->len);
        return NULL;
    }
    return g_steal_pointer(&keys);
}

/* The peer broke the rules (or asked for what is not there): no network
 * fault, and nothing a new link would mend. */
static bool peer_misbehaved(int err)
{
    return err == EPROTO || err == EACCES || err == EINVAL || err == EFAULT || err == EBADMSG ||
           err == EREMOTEIO;
}

void rdmig_dataplane_conn_failed(RdmigSession *s, uint32_t ci, int err, const char *what,
                                 GError **error)
{
    const char *why = s->conns[ci] ? s->tp->conn_error(s->conns[ci]) : NULL;
    g_set_error(error, RDMIG_ERROR, peer_misbehaved(-err) ? RDMIG_ERROR_PROTOCOL : RDMIG_ERROR_LINK,
                "%sdata connection %u to the %s failed: %s", what, ci,
                s->role == RDMIG_ROLE_SOURCE ? "destination" : "source",
                why ? why : g_strerror(-err));
}

void rdmig_dataplane_close_connections(RdmigSession *s, bool drain)
{
    for (uint32_t i = 0; i < s->nconns; i++) {
        if (!s->conns[i])
            continue;
        s->tp->disconnect(s->conns[i]);
        RdmigIoReq *done[32];
        while (drain && s->tp->poll(s->conns[i], done, G_N_ELEMENTS(done)) > 0)
            ;
        s->tp->conn_close(s->conns[i]);
        s->conns[i] = NULL;
    }
}

/* Deregisters *@r (if any); the first failure goes to @error. */
static void deregister(RdmigSession *s, RdmigRegion **r, const RdmigRamBlock *b, GError **error)
{
    if (!*r)
        return;
    int rc = s->tp->deregister_region(*r);
    *r = NULL;
    if (rc < 0 && error && !*error)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "cannot revoke the peer's access to RAM block '%s': %s (it may still reach "
                    "that memory)", b->name, g_strerror(-rc));
}

bool rdmig_dataplane_deregister_blocks(RdmigSession *s, GError **error)
{
    GError *err = NULL;
    for (guint i = 0; i < s->blocks->len; i++) {
        RdmigRamBlock *b = s->blocks->pdata[i];
        deregister(s, &b->region, b, &err);
        deregister(s, &b->read_region, b, &err);
        deregister(s, &b->alias_region, b, &err);
    }
    if (err)
        g_propagate_error(error, err);
    return !err;
}

void rdmig_dataplane_close(RdmigSession *s, bool drain)
{
    rdmig_dataplane_close_connections(s, drain);
    g_autoptr(GError) err = NULL;
    if (!rdmig_dataplane_deregister_blocks(s, &err))
        g_warning("%s", err->message);
    if (s->transport)
        s->tp->destroy(s->transport);
    s->transport = NULL;
}

void rdmig_session_drop_link(RdmigSession *s)
{
    rdmig_channel_stop_keepalive(s);
    rdmig_dataplane_close(s, true);
    rdmig_channel_close(s);
}

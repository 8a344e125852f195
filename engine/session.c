/* SPDX-License-Identifier: MIT */
/*
 * The common part of a session (session.h): its life, its error, cancel,
 * failures reported by its other threads, and the CPU time they spend.
 */
#define G_LOG_DOMAIN "rdmig-engine"

#include "session.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

bool rdmig_session_init(RdmigSession *s, RdmigRole role, const RdmigParams *params,
                        GError **error)
{
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->side.fd = -1;
    if (s->wake_fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "eventfd: %s", g_strerror(errno));
        return false;
    }
    s->role = role;
    s->params = *params;
    s->blocks = g_ptr_array_new();
    g_mutex_init(&s->lock);
    g_mutex_init(&s->failure_lock);
    g_mutex_init(&s->keepalive_lock);
    g_cond_init(&s->keepalive_cond);
    s->state = RDMIG_STATE_NONE;
    s->stats.state = RDMIG_STATE_NONE;
    return true;
}

static void block_free(RdmigRamBlock *b)
{
    if (b->alias)
        munmap(b->alias, b->length);
    g_free(b->dirty);
    g_free(b->hashes);
    g_free(b->hash_known);
    g_free(b->verified);
    g_free(b->round_hashed);
    g_free(b->needed);
    g_free(b->unrequested);
    g_free(b->received);
    g_free(b->unverified);
    g_free(b->sent_unacked);
    g_free(b);
}

void rdmig_session_clear(RdmigSession *s)
{
    for (guint i = 0; s->blocks && i < s->blocks->len; i++)
        block_free(s->blocks->pdata[i]);
    if (s->blocks)
        g_ptr_array_free(s->blocks, TRUE);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    g_clear_error(&s->error);
    g_clear_error(&s->failure);
    rdmig_tls_creds_unref(s->creds);
    memset(s->recovery_secret, 0, sizeof(s->recovery_secret));
    g_mutex_clear(&s->lock);
    g_mutex_clear(&s->failure_lock);
    g_mutex_clear(&s->keepalive_lock);
    g_cond_clear(&s->keepalive_cond);
}

void rdmig_session_take_error(RdmigSession *s, GError *err)
{
    g_mutex_lock(&s->lock);
    if (!s->error) {
        s->error = err;
        g_strlcpy(s->stats.error, err->message, sizeof(s->stats.error));
    } else {
        g_error_free(err);
    }
    g_mutex_unlock(&s->lock);
}

bool rdmig_session_cancelled(RdmigSession *s) { return g_atomic_int_get(&s->cancel) != 0; }

bool rdmig_session_take_pause(RdmigSession *s, GError **error)
{
    if (!g_atomic_int_compare_and_exchange(&s->pause_asked, 1, 0))
        return false;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_LINK,
                "paused on request (migrate-pause): this side dropped the link; recover it "
                "as after a network failure");
    return true;
}

void rdmig_session_wake(RdmigSession *s)
{
    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof(one)) < 0) {
        /* The counter is saturated: the thread is being woken already. */
    }
}

void rdmig_session_report_failure(RdmigSession *s, GError *err)
{
    g_mutex_lock(&s->failure_lock);
    if (!s->failure)
        s->failure = err;
    else
        g_error_free(err);
    g_mutex_unlock(&s->failure_lock);
    rdmig_session_wake(s);
}

GError *rdmig_session_take_failure(RdmigSession *s)
{
    g_mutex_lock(&s->failure_lock);
    GError *e = s->failure ? g_error_copy(s->failure) : NULL;
    g_mutex_unlock(&s->failure_lock);
    return e;
}

void rdmig_session_clear_failure(RdmigSession *s)
{
    g_mutex_lock(&s->failure_lock);
    g_clear_error(&s->failure);
    g_mutex_unlock(&s->failure_lock);
}

void rdmig_session_account_thread_cpu(RdmigSession *s)
{
    uint64_t us = rdmig_thread_cpu_us();
    RDMIG_STATS_UPDATE(s, s->stats.cpu_time_us += us);
}

void rdmig_set_cancelled(GError **error)
{
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "migration cancelled");
}

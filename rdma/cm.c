/* SPDX-License-Identifier: MIT */
/* rdma_cm: waiting for a connection-manager event with a deadline. */
#define G_LOG_DOMAIN "rdmig-rdma"

#include <errno.h>
#include <poll.h>
#include <string.h>

#include "rdma.h"
#include "rdmig/error.h"

bool rdmig_rdma_wait_event(struct rdma_event_channel *ch, enum rdma_cm_event_type expect,
                           int timeout_ms, struct rdma_cm_id **new_id, void *private_data,
                           size_t pd_len, GError **error)
{
    struct pollfd p = { .fd = ch->fd, .events = POLLIN };
    int n;
    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                    "no %s from rdma_cm within %d ms", rdma_event_str(expect), timeout_ms);
        return false;
    }
    struct rdma_cm_event *ev;
    if (rdma_get_cm_event(ch, &ev)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "rdma_get_cm_event: %s",
                    g_strerror(errno));
        return false;
    }
    enum rdma_cm_event_type got = ev->event;
    int status = ev->status;
    if (new_id)
        *new_id = ev->id;
    if (private_data && got == RDMA_CM_EVENT_CONNECT_REQUEST) {
        memset(private_data, 0, pd_len);
        memcpy(private_data, ev->param.conn.private_data,
               MIN(pd_len, (size_t)ev->param.conn.private_data_len));
    }
    rdma_ack_cm_event(ev);
    if (got != expect) {
        const char *hint = got == RDMA_CM_EVENT_REJECTED ? " (the peer refused the connection)"
                         : got == RDMA_CM_EVENT_UNREACHABLE ? " (the peer is unreachable)"
                         : got == RDMA_CM_EVENT_ADDR_ERROR ? " (no RDMA device has a route there)"
                         : "";
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "rdma_cm: expected %s, got %s%s%s%s",
                    rdma_event_str(expect), rdma_event_str(got), status ? ": " : "",
                    status ? g_strerror(status < 0 ? -status : status) : "", hint);
        return false;
    }
    return true;
}

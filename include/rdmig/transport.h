/* SPDX-License-Identifier: MIT */
/*
 * The data-plane transport ABI.
 *
 * A transport moves guest pages between hosts.  It is a static ops table with
 * capability bits, registered once; the engine picks a transport by the bits
 * it needs (RDMIG_TRANSPORT_CAP_*), never by name.  The registry fills every
 * absent op with a stub that fails with -ENOTSUP (data path) or a GError of
 * code RDMIG_ERROR_UNSUPPORTED (control path), so callers never test for NULL.
 *
 * Object model (after verbs and SPDK):
 *   RdmigTransport   one per session side; owns registered regions (like a PD)
 *   RdmigListener    passive endpoint; accept() yields connections
 *   RdmigConn        one data connection (one QP, one TCP socket)
 *   RdmigRegion      registered local memory; its RdmigRemoteKey is sent to
 *                    the peer over the control channel and names the region
 *                    in the peer's one-sided requests
 *
 * Data path: the caller owns every RdmigIoReq until its completion is reaped
 * by poll(); the transport keeps only a pointer, so posting never allocates.
 * Posting never blocks: -EAGAIN means the connection's queue is full, poll and
 * retry.  Completion means the bytes are placed in the target's memory (a
 * write) or in the local buffer (a read), not merely queued.
 *
 * Threads: one thread at a time per RdmigConn; distinct connections and the
 * regions of one transport may be used from different threads.
 */
#ifndef RDMIG_TRANSPORT_H
#define RDMIG_TRANSPORT_H

#include <glib.h>

#include <rdmig/export.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

G_BEGIN_DECLS

/* Bumped when a member is added to RdmigTransportOps or its semantics change. */
#define RDMIG_TRANSPORT_ABI_VERSION 1

/* Capability bits of a transport. */
#define RDMIG_TRANSPORT_CAP_ONESIDED_WRITE (1u << 0) /* write into a peer region */
#define RDMIG_TRANSPORT_CAP_ONESIDED_READ  (1u << 1) /* read from a peer region */
#define RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU (1u << 2) /* target CPU does no per-page work */

/* Access rights of a registered region, as seen by the peer. */
#define RDMIG_ACCESS_REMOTE_WRITE (1u << 0)
#define RDMIG_ACCESS_REMOTE_READ  (1u << 1)
#define RDMIG_ACCESS_LOCAL_WRITE  (1u << 2) /* local buffer of one-sided reads */

/* Most local buffers one request may gather from or scatter into. */
#define RDMIG_IO_MAX_IOV 16

/* Largest opaque key a transport may hand to its peer. */
#define RDMIG_REMOTE_KEY_MAX 32

typedef struct RdmigTransport RdmigTransport;
typedef struct RdmigListener RdmigListener;
typedef struct RdmigConn RdmigConn;
typedef struct RdmigRegion RdmigRegion;

/* Names a peer's region; travels in the control channel, opaque to the engine. */
typedef struct {
    uint32_t len;                        /* bytes used in @bytes */
    uint8_t bytes[RDMIG_REMOTE_KEY_MAX]; /* transport-defined */
} RdmigRemoteKey;

typedef enum {
    RDMIG_IO_WRITE, /* local iov -> peer region */
    RDMIG_IO_READ,  /* peer region -> local iov */
} RdmigIoOp;

/*
 * One one-sided request.  Filled by the caller, owned by the caller until poll()
 * returns it.  The remote range is contiguous: remote_offset within the region
 * named by @rkey, length the sum of the iov lengths.
 */
typedef struct RdmigIoReq {
    RdmigIoOp op;
    struct iovec iov[RDMIG_IO_MAX_IOV];  /* local buffers; for READ they must lie
                                          * in a region registered locally */
    int iovcnt;                          /* 1..RDMIG_IO_MAX_IOV */
    const RdmigRemoteKey *rkey;          /* peer region; must outlive the request */
    uint64_t remote_offset;              /* byte offset in that region */
    void *user;                          /* caller's cookie, untouched */
    int status;                          /* set at completion: 0 or negative errno */
    /* Transport-private from post until completion. */
    struct RdmigIoReq *tp_next;
    uint64_t tp_priv[4];
} RdmigIoReq;

/* Options for creating a transport. Zero means "the transport's default". */
typedef struct {
    uint32_t queue_depth;     /* outstanding requests per connection */
    uint32_t connect_timeout_ms;
    uint32_t max_io_bytes;    /* largest request the caller will post */
    uint64_t conn_token;      /* connect() presents it, accept() requires it:
                               * keeps strays off a session's data port */
    uint8_t ack_timeout;      /* RDMA: resend after 4.096 us x 2^this (1..31) */
} RdmigTransportConfig;

/*
 * The ops table.  Control-path members return bool or a pointer and set
 * @error on failure; data-path members return >= 0 or a negative errno and
 * never block or allocate.
 */
typedef struct RdmigTransportOps {
    uint32_t abi_version;       /* RDMIG_TRANSPORT_ABI_VERSION at build time */
    uint32_t size;              /* sizeof(RdmigTransportOps) at build time */
    const char *name;           /* "tcp", "rdma": for logs and reports only */
    uint32_t caps;              /* RDMIG_TRANSPORT_CAP_* */

    /* --- control path --- */

    /** Whether this host can use the transport at all (devices, modules).
     *  On false, @error says why. Any thread. */
    bool (*probe)(GError **error);
    /** New transport instance; freed by destroy(). */
    RdmigTransport *(*create)(const RdmigTransportConfig *config, GError **error);
    /** Frees @t; all conns, listeners and regions must be gone. */
    void (*destroy)(RdmigTransport *t);
    /** Listen on @address ("host:port", port 0 picks one). */
    RdmigListener *(*listen)(RdmigTransport *t, const char *address, GError **error);
    /** The address a peer should connect to, with the real port. Owned by @l. */
    const char *(*listener_address)(RdmigListener *l);
    /** Waits up to @timeout_ms for one connection. */
    RdmigConn *(*accept)(RdmigListener *l, int timeout_ms, GError **error);
    void (*listener_close)(RdmigListener *l);
    /** Connects to a listener's address; waits up to the config's timeout. */
    RdmigConn *(*connect)(RdmigTransport *t, const char *address, GError **error);
    /** Flushes outstanding requests with -ECANCELED status (reap them with
     *  poll() before close) and stops the connection. Idempotent. */
    void (*disconnect)(RdmigConn *c);
    /** Frees @c. Outstanding requests are dropped; call disconnect()+poll() first. */
    void (*conn_close)(RdmigConn *c);
    /** Registers [addr, addr+len) for the peer with RDMIG_ACCESS_* rights. */
    RdmigRegion *(*register_region)(RdmigTransport *t, void *addr, size_t len,
                                    uint32_t access, GError **error);
    /** The key a peer uses to name @r. */
    void (*region_key)(RdmigRegion *r, RdmigRemoteKey *key);
    /** Revokes the peer's access to @r and frees it (NULL: 0).  0, or a
     *  negative errno when the revocation may not have taken effect (the
     *  peer may still reach the memory): the caller must not act as if it
     *  could not, e.g. must not run a guest over it. */
    int (*deregister_region)(RdmigRegion *r);

    /* --- data path --- */

    /** Posts @req on @c. 0, -EAGAIN (queue full), -ENOTCONN, -EINVAL. */
    int (*submit)(RdmigConn *c, RdmigIoReq *req);
    /** Makes progress: sends, receives, serves the peer's requests, and
     *  returns up to @max completed requests of this side in @done.
     *  Returns their count, or a negative errno when the connection failed
     *  (outstanding requests are then completed with an error status). */
    int (*poll)(RdmigConn *c, RdmigIoReq **done, int max);
    /** File descriptor to wait on before the next poll(), and in @events the
     *  poll(2) events to wait for (POLLIN, plus POLLOUT while output is queued). */
    int (*conn_fd)(RdmigConn *c, short *events);
    /** Human-readable reason of the last connection failure, or NULL. */
    const char *(*conn_error)(RdmigConn *c);
} RdmigTransportOps;

/** rdmig_transport_register: adds @ops to the registry. Rejects a table whose
 *  abi_version or size this build does not know. Fills absent ops with
 *  -ENOTSUP stubs. Main thread, before sessions start. */
RDMIG_API bool rdmig_transport_register(const RdmigTransportOps *ops, GError **error);

/** rdmig_transport_find: the registered transport with all of @caps that
 *  probes successfully, preferring transports registered later that offer
 *  RDMIG_TRANSPORT_CAP_ZERO_TARGET_CPU. NULL with @error set when none does.
 *  The returned table is complete (no NULL members) and lives forever. */
RDMIG_API const RdmigTransportOps *rdmig_transport_find(uint32_t caps, GError **error);

/** rdmig_transport_lookup: a registered transport by name, or NULL. For the
 *  command line's --transport and for tests only; the engine goes by caps. */
RDMIG_API const RdmigTransportOps *rdmig_transport_lookup(const char *name);

/** rdmig_transport_list: NULL-terminated array of registered tables. */
RDMIG_API const RdmigTransportOps *const *rdmig_transport_list(void);

G_END_DECLS

#endif

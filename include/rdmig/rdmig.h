/* SPDX-License-Identifier: MIT */
/*
 * rdmig: live migration of guest memory over RDMA, with TCP as the fallback.
 *
 * A hypervisor drives one RdmigSession per migration and per side:
 *
 *   source                                   destination
 *   ------                                   -----------
 *   s = rdmig_session_new(SOURCE, &params)   d = rdmig_session_new(DESTINATION, &params)
 *   rdmig_session_add_ram_block(s, ...)      rdmig_session_add_ram_block(d, ...)  same layout
 *   rdmig_session_set_guest_ops(s, ...)      rdmig_session_set_guest_ops(d, ...)
 *                                            rdmig_session_start(d, "0.0.0.0:4444")
 *   rdmig_session_start(s, "dst:4444")
 *   ... rdmig_session_get_stats() from any thread, rdmig_session_cancel() to stop ...
 *   rdmig_session_wait(s)                    rdmig_session_wait(d)
 *
 * start() returns at once; the migration runs on threads of the session.  The
 * callbacks in RdmigGuestOps and RdmigDirtyOps are called on those threads.
 */
#ifndef RDMIG_H
#define RDMIG_H

#include <glib.h>

#include <rdmig/export.h>
#include <stdbool.h>
#include <stdint.h>

#include <rdmig/error.h>

G_BEGIN_DECLS

#define RDMIG_VERSION_STRING "0.1.0"

typedef struct RdmigSession RdmigSession;

typedef enum {
    RDMIG_ROLE_SOURCE,      /* has the running guest, sends its memory */
    RDMIG_ROLE_DESTINATION, /* receives memory, then runs the guest */
} RdmigRole;

/* Migration states, named and meant as QEMU's MigrationStatus. */
typedef enum {
    RDMIG_STATE_NONE,       /* created, not started */
    RDMIG_STATE_SETUP,      /* connecting, handshake, registering memory */
    RDMIG_STATE_CANCELLING, /* cancel requested, tearing down */
    RDMIG_STATE_CANCELLED,  /* cancelled; the source guest runs on */
    RDMIG_STATE_ACTIVE,     /* precopy rounds while the guest runs */
    RDMIG_STATE_DEVICE,     /* guest stopped: last round and device state */
    RDMIG_STATE_COMPLETED,  /* destination has everything and runs the guest */
    RDMIG_STATE_FAILED,     /* failed; the source guest runs on (unless postcopy had begun) */
    RDMIG_STATE_POSTCOPY_ACTIVE, /* the guest runs on the destination, which pulls the rest */
    RDMIG_STATE_POSTCOPY_PAUSED, /* postcopy link lost: both sides keep their half and
                                  * wait for rdmig_session_recover(); the destination's
                                  * guest runs on, threads on missing pages wait */
    RDMIG_STATE_POSTCOPY_RECOVER_SETUP, /* source: connecting to the recovery address */
    RDMIG_STATE_POSTCOPY_RECOVER,       /* both: same session proven, resyncing */
    RDMIG_STATE_PRECOPY_PAUSED,  /* (not QEMU's) precopy link lost with precopy_resume set:
                                  * the source guest runs on; rdmig_session_recover()
                                  * continues where the migration stopped */
    RDMIG_STATE__COUNT
} RdmigState;

/** rdmig_state_str: QEMU's name of @state ("active", "device", ...). */
RDMIG_API const char *rdmig_state_str(RdmigState state);

/* What precopy does when it cannot meet the downtime limit within its limits. */
typedef enum {
    RDMIG_NO_CONVERGE_FAIL,       /* fail; the guest keeps running on the source */
    RDMIG_NO_CONVERGE_SWITCHOVER, /* stop the guest anyway and exceed the limit */
    RDMIG_NO_CONVERGE_POSTCOPY,   /* switch to postcopy (needs params.postcopy) */
} RdmigNoConvergePolicy;

/* Which built-in dirty tracker to use when the caller gives no RdmigDirtyOps. */
typedef enum {
    RDMIG_DIRTY_AUTO,       /* userfaultfd write-protect if the kernel has it, else soft-dirty */
    RDMIG_DIRTY_UFFD_WP,    /* userfaultfd async write-protect + PAGEMAP_SCAN (Linux >= 6.7) */
    RDMIG_DIRTY_SOFT_DIRTY, /* /proc/self/clear_refs + pagemap soft-dirty bit */
} RdmigDirtyMethod;

RDMIG_API const char *rdmig_dirty_method_str(RdmigDirtyMethod method);

/* Tunables. Initialise with rdmig_params_init(), then change what you need. */
typedef struct {
    uint32_t downtime_limit_ms;   /* switchover when the expected downtime fits; default 300 */
    uint64_t max_bandwidth;       /* bytes/s the source may send, 0 = unlimited (default) */
    uint32_t max_rounds;          /* precopy rounds before giving up; default 30 */
    uint32_t max_precopy_ms;      /* precopy time before giving up, 0 = no limit (default) */
    RdmigNoConvergePolicy on_no_converge; /* default RDMIG_NO_CONVERGE_FAIL */
    bool verify;                  /* per-page hash check at completion; default true */
    uint32_t data_connections;    /* parallel data connections (like multifd); default 1 */
    char transport[16];           /* "auto" (default), "tcp" or "rdma" */
    RdmigDirtyMethod dirty_method;/* built-in tracker choice; default AUTO */
    uint32_t keepalive_ms;        /* control-channel keepalive period; default 1000 */
    uint32_t peer_timeout_ms;     /* silence after which the peer counts as gone; default 10000 */
    uint32_t connect_timeout_ms;  /* default 10000 */
    bool postcopy;                /* advise postcopy at the handshake; the destination must
                                   * support it (userfaultfd) or the migration fails before
                                   * the guest stops; default false */
    uint32_t postcopy_after_rounds; /* start postcopy after this many rounds, 0 = not by rounds */
    uint32_t postcopy_after_ms;   /* ... or after this much precopy time, 0 = not by time */
    bool precopy_resume;          /* a broken precopy link pauses (precopy-paused) and
                                   * rdmig_session_recover() continues it, rather than
                                   * failing; both sides must set it; default false */
    bool postcopy_zero_copy;      /* destination: place pulled pages with UFFDIO_CONTINUE
                                   * where a block's memory file was given and the kernel
                                   * has minor faults for it; else copy them in from a
                                   * staging buffer (UFFDIO_COPY); default true */
    uint8_t rdma_ack_timeout;     /* RDMA queue pairs resend an unacknowledged packet after
                                   * 4.096 us x 2^this, 0..31; default 14 (67 ms, as
                                   * perftest); 0 leaves it to rdma_cm, whose RoCE choice
                                   * (~0.5 s) stalls a queue pair that long per lost packet */
    bool insecure;                /* listen on or connect to an address that is not
                                   * loopback without credentials
                                   * (rdmig_session_set_credentials()): whoever reaches
                                   * such an address can write (destination) or read
                                   * (source) the guest's memory; set it only where every
                                   * host that can reach it is trusted
                                   * (docs/security.md); default false */
} RdmigParams;

/** rdmig_params_init: fills @params with the defaults above. */
RDMIG_API void rdmig_params_init(RdmigParams *params);

/*
 * Guest hooks.  All optional; a missing hook does nothing.  Called on the
 * session's migration thread ("rdmig-source", "rdmig-destination"), except
 * in postcopy on the destination: load_device_state() and then resume() run
 * on a thread of their own ("rdmig-guest-start") while the migration thread
 * serves page faults, so that they may read guest RAM that has not arrived
 * yet (a device model reading its rings).  One hook runs at a time.  Each
 * of these threads begins with thread_start() and ends with thread_stop().
 * The state callback (rdmig_session_set_state_func) runs on whichever
 * thread changes the state: these, or the caller's in rdmig_session_start().
 */
typedef struct {
    /** Source: stop the guest's CPUs.  Must return only when no CPU writes
     *  guest RAM any more.  Called at the switchover (state already device
     *  or postcopy-active); with the built-in soft-dirty tracker also around
     *  each dirty sync of precopy (state active), which that tracker needs
     *  to lose no write, and which resume() ends at once. */
    bool (*stop)(void *opaque, GError **error);
    /** Source after a failed or cancelled switchover (or a soft-dirty sync),
     *  destination after completion: let the guest's CPUs run. */
    void (*resume)(void *opaque);
    /** Source, guest stopped: append the device state (opaque blob) to @out. */
    bool (*save_device_state)(void *opaque, GByteArray *out, GError **error);
    /** Destination, before resume: load the blob saved by the source. */
    bool (*load_device_state)(void *opaque, const uint8_t *data, size_t len, GError **error);
    /** First and last on every thread of the session that calls the hooks
     *  above or RdmigDirtyOps ("rdmig-source", "rdmig-destination",
     *  "rdmig-guest-start"; @name is the thread's), before and after any
     *  such call on it: register the thread where the hypervisor needs it
     *  (QEMU: rcu_register_thread(); its main lock is the hook's to take).
     *  rdmig's other threads (data, keepalive, hashing, registration,
     *  verification) never call the caller. */
    void (*thread_start)(void *opaque, const char *name);
    void (*thread_stop)(void *opaque);
} RdmigGuestOps;

/*
 * Caller-provided dirty tracking, for memory rdmig cannot watch itself (a
 * hypervisor passes on what KVM's dirty log says).  If not set, the source
 * uses the built-in tracker (RdmigParams.dirty_method).
 */
typedef struct {
    /** Start logging writes to every RAM block. */
    bool (*start)(void *opaque, GError **error);
    /** OR into @bitmap (one bit per page of block @block, LSB first in each
     *  64-bit word) every page written since the last sync or start, and
     *  reset the log for those pages. */
    bool (*sync)(void *opaque, unsigned block, uint64_t *bitmap, uint64_t npages,
                 GError **error);
    /** Stop logging. */
    void (*stop)(void *opaque);
} RdmigDirtyOps;

/** Called on every state change, on the thread that made it. */
typedef void (*RdmigStateFunc)(void *opaque, RdmigState old_state, RdmigState new_state);

#define RDMIG_FAULT_HIST_BUCKETS 24
#define RDMIG_BLOCKTIME_THREADS 16

/* A snapshot of a session, like QEMU's query-migrate. Times in ms. */
typedef struct {
    RdmigState state;
    char transport[16];           /* data transport in use, "" before setup ends */
    uint32_t data_connections;
    char control_security[96];    /* the control channel's protection: "psk
                                   * (TLS1.3)--(AES-128-GCM)" or "x509 ...", or
                                   * "none" (in clear); "" before it is connected */
    uint64_t total_time_ms;       /* start -> now, or -> end */
    uint64_t setup_time_ms;       /* start -> first round */
    uint64_t downtime_ms;         /* guest stopped on the source -> running on the destination */
    uint64_t expected_downtime_ms;/* sync+transfer+round trips+verify, last decision */
    uint64_t verify_time_ms;      /* part of downtime spent hashing (destination) */
    uint64_t rounds;              /* precopy rounds begun */
    uint64_t dirty_sync_count;
    uint64_t dirty_pages_rate;    /* pages dirtied per second, last round */
    uint64_t bytes_transferred;   /* data-plane bytes completed, plus control */
    uint64_t bandwidth;           /* bytes/s measured over the last round */
    uint64_t first_round_bandwidth; /* bytes/s of round 1, the bulk copy */
    uint64_t throughput;          /* bytes/s over the whole migration so far */
    uint64_t pages_total;
    uint64_t pages_sent;          /* pages sent with contents (all rounds) */
    uint64_t pages_zero;          /* pages sent as zero markers (all rounds) */
    uint64_t pages_untouched;     /* never-touched pages skipped in the first round */
    uint64_t remaining_bytes;     /* dirty bytes not yet sent */
    uint64_t pages_verified;      /* destination: pages whose hash matched */
    uint64_t verify_mismatches;   /* destination: pages whose hash did not match */
    uint64_t cpu_time_us;         /* CPU time of the session's own threads (not the guest's) */
    uint64_t data_cpu_us;         /* of it, moving pages: source main thread from round 1
                                   * to the end of stop-and-copy; destination data-connection
                                   * threads (zero per page with one-sided writes) */
    uint64_t registration_time_ms;/* registering RAM with the data transport (setup) */
    bool forced_switchover;       /* switched over beyond the downtime limit */
    /* Postcopy.  downtime_ms is the switchover's: guest stopped on the source
     * -> running on the destination. */
    bool postcopy;                /* this migration switched to postcopy */
    uint64_t pages_discarded;     /* sent in precopy, dirtied since: pulled again */
    uint64_t pages_on_demand;     /* pulled because the guest faulted on them */
    uint64_t pages_background;    /* pulled by the background sweep */
    uint64_t pages_zero_copy;     /* of the pulled pages, placed with UFFDIO_CONTINUE (no copy) */
    uint64_t faults;              /* guest faults on missing pages (destination) */
    uint64_t faults_zero;         /* of them, served here without a pull: zero at the
                                   * source, or (zero copy) held but not mapped */
    uint64_t blocktime_us;        /* total time guest threads waited for pulled pages */
    uint64_t fault_hist[RDMIG_FAULT_HIST_BUCKETS]; /* pulled-page faults by service time
                                   * (fault read -> page placed): bucket i holds
                                   * [2^i, 2^(i+1)) microseconds (bucket 0: < 2 us) */
    uint64_t fault_median_us, fault_p99_us; /* from the histogram (bucket upper bounds) */
    uint32_t blocktime_threads;   /* entries used in blocktime_per_thread */
    struct { uint32_t tid; uint64_t us; } blocktime_per_thread[RDMIG_BLOCKTIME_THREADS];
    uint64_t postcopy_cpu_us;     /* source: CPU of its threads while the destination pulled */
    /* Postcopy recovery. */
    uint32_t pauses;              /* times postcopy paused on a broken link */
    uint32_t recover_failures;    /* recovery attempts that failed (back to paused) */
    uint64_t paused_ms;           /* time spent paused or recovering, all pauses */
    uint64_t last_recovery_ms;    /* last rdmig_session_recover() -> postcopy-active */
    uint64_t pages_missing;       /* destination: pages still on the source only */
    char pause_reason[256];       /* why the last pause (or failed recovery) happened */
    char dirty_method[16];        /* tracker in use on the source */
    char error[512];              /* why it failed, "" otherwise */
    uint64_t pages_verified_background; /* destination: pages matched in precopy, while the
                                         * guest ran, so not in the downtime */
} RdmigStats;

/** rdmig_session_new: a session for @role, with @params (NULL: defaults). */
RDMIG_API RdmigSession *rdmig_session_new(RdmigRole role, const RdmigParams *params, GError **error);

/** rdmig_session_free: waits for the session's threads (cancelling them if
 *  still running) and frees it. The caller's RAM is left alone. */
RDMIG_API void rdmig_session_free(RdmigSession *s);

/** rdmig_session_add_ram_block: declares one RAM block, before start().
 *  @name unique and at most 255 bytes, @host page-aligned, @length a
 *  multiple of @page_size (a power of two, 4 KiB or more).  Source and
 *  destination must declare the same blocks in the same order. */
RDMIG_API bool rdmig_session_add_ram_block(RdmigSession *s, const char *name, void *host,
                                 uint64_t length, uint32_t page_size, GError **error);

/** rdmig_session_set_ram_block_fd: destination, optional: block @name's
 *  memory is the file @fd (a memfd or tmpfs file) from @offset.  Postcopy
 *  then places pulled pages without copying them: a read lands in the page
 *  cache through a second mapping of the file and UFFDIO_CONTINUE maps it
 *  into the guest (see params.postcopy_zero_copy).  @fd must stay open
 *  until the session is freed. */
RDMIG_API bool rdmig_session_set_ram_block_fd(RdmigSession *s, const char *name, int fd, uint64_t offset,
                                    GError **error);

RDMIG_API void rdmig_session_set_guest_ops(RdmigSession *s, const RdmigGuestOps *ops, void *opaque);
RDMIG_API void rdmig_session_set_dirty_ops(RdmigSession *s, const RdmigDirtyOps *ops, void *opaque);
RDMIG_API void rdmig_session_set_state_func(RdmigSession *s, RdmigStateFunc func, void *opaque);

/** rdmig_session_start_postcopy: source: switch to postcopy at the end of
 *  the current round (postcopy must have been advised in the params and
 *  accepted by the destination).  Thread-safe; fails if the migration is not
 *  in precopy or postcopy was not negotiated. */
RDMIG_API bool rdmig_session_start_postcopy(RdmigSession *s, GError **error);

/** rdmig_session_recover: resumes a migration in postcopy-paused (or
 *  precopy-paused) over a new link.  Destination: listen on @address (port 0 picks one; see
 *  rdmig_session_listen_address()) for the same source to come back; call it
 *  first.  Source: connect to the address the destination listens on.
 *  Returns at once; the session's thread does the rest (states
 *  postcopy-recover-setup (source), postcopy-recover, postcopy-active).  A
 *  failed attempt returns to postcopy-paused (stats.pause_reason says why);
 *  call again as often as needed.  A source of another session is refused. */
RDMIG_API bool rdmig_session_recover(RdmigSession *s, const char *address, GError **error);

/** rdmig_session_pause: like QMP's migrate-pause: this side drops its link
 *  to the peer and both pause (postcopy-paused, or precopy-paused with
 *  precopy_resume), as after a network failure; the guest keeps running
 *  where it runs.  Continue with rdmig_session_recover() on both sides.
 *  For a migration in postcopy-active, or in precopy with precopy_resume;
 *  anything else is refused (RDMIG_ERROR_INVALID).  Any thread; returns at
 *  once, the pause follows. */
RDMIG_API bool rdmig_session_pause(RdmigSession *s, GError **error);

/* Credentials for the control channel's TLS 1.3, in QEMU's layouts
 * (docs/security.md): both ends must use the same kind. */
typedef enum {
    RDMIG_CREDENTIALS_X509, /* a directory: ca-cert.pem, and server-cert.pem +
                             * server-key.pem (destination) or client-cert.pem +
                             * client-key.pem (source); ca-crl.pem if present */
    RDMIG_CREDENTIALS_PSK,  /* a keys.psk file: IDENTITY:HEXKEY lines (psktool) */
} RdmigCredentialKind;

/** rdmig_session_set_credentials: authenticate and encrypt the control
 *  channel (and the recovery listener) with TLS 1.3; data connections
 *  present a token derived from it.  Loads and checks the files now,
 *  naming what is missing or wrong.  Before rdmig_session_start(). */
RDMIG_API bool rdmig_session_set_credentials(RdmigSession *s, RdmigCredentialKind kind,
                                             const char *path, GError **error);

/** rdmig_session_start: source: connect to @address ("host:port") and migrate;
 *  destination: listen on @address (port 0 picks one) and receive.  Returns
 *  once connected (source) or listening (destination); the rest runs on the
 *  session's thread. */
RDMIG_API bool rdmig_session_start(RdmigSession *s, const char *address, GError **error);

/** rdmig_session_listen_address: destination: the bound "host:port" (after
 *  rdmig_session_recover(): the recovery listener's). */
RDMIG_API const char *rdmig_session_listen_address(RdmigSession *s);
RDMIG_API bool rdmig_session_is_destination(RdmigSession *s);

/** rdmig_session_wait: waits for the end. True if completed; otherwise
 *  @error says why (RDMIG_ERROR_CANCELLED after a cancel). */
RDMIG_API bool rdmig_session_wait(RdmigSession *s, GError **error);

/** rdmig_session_cancel: asks the session to stop. Any thread (not from a
 *  signal handler: it may log), any time; the
 *  source guest keeps (or resumes) running with its memory intact.  Refused,
 *  with a warning, in postcopy-active and while recovering (the guest runs
 *  on the destination); in postcopy-paused
 *  it gives up recovery: the session fails, the source keeps its guest
 *  stopped and its memory, and the destination names the pages it lacks. */
RDMIG_API void rdmig_session_cancel(RdmigSession *s);
/** rdmig_session_cancel_refused: true (and @error says why) when a cancel
 *  now would be refused: postcopy-active, postcopy-recover-setup or
 *  postcopy-recover. */
RDMIG_API bool rdmig_session_cancel_refused(RdmigSession *s, GError **error);

/** rdmig_session_get_stats: a consistent snapshot. Any thread. */
RDMIG_API void rdmig_session_get_stats(RdmigSession *s, RdmigStats *out);

/*
 * The built-in dirty tracker, usable on its own: it watches writes to memory
 * of this process.
 */
typedef struct RdmigDirtyTracker RdmigDirtyTracker;

/** rdmig_dirty_tracker_new: a tracker using @method (AUTO picks the best the
 *  kernel supports). Fails with RDMIG_ERROR_UNSUPPORTED naming what is missing. */
RDMIG_API RdmigDirtyTracker *rdmig_dirty_tracker_new(RdmigDirtyMethod method, GError **error);
/** Adds a range to watch (page-aligned), before start(). Returns its index. */
RDMIG_API bool rdmig_dirty_tracker_add(RdmigDirtyTracker *t, void *addr, uint64_t length,
                             uint32_t page_size, unsigned *index, GError **error);
/** Starts watching: writes from now on are recorded. */
RDMIG_API bool rdmig_dirty_tracker_start(RdmigDirtyTracker *t, GError **error);
/** ORs into @bitmap the pages of range @index written since start() or the
 *  previous sync(), and starts watching them again. */
RDMIG_API bool rdmig_dirty_tracker_sync(RdmigDirtyTracker *t, unsigned index, uint64_t *bitmap,
                              GError **error);
RDMIG_API RdmigDirtyMethod rdmig_dirty_tracker_method(RdmigDirtyTracker *t);
/** Stops watching and frees @t. The memory is left writable. */
RDMIG_API void rdmig_dirty_tracker_free(RdmigDirtyTracker *t);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(RdmigSession, rdmig_session_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(RdmigDirtyTracker, rdmig_dirty_tracker_free)

G_END_DECLS

#endif

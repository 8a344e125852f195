/*
 * The rdmig: migration transport.
 *
 * rdmig (librdmig) moves guest RAM: precopy rounds over RDMA or TCP,
 * postcopy with its own userfaultfd pager, recovery of a broken link and a
 * per-page check of what arrived.  QEMU keeps everything else: the RAM
 * block list, its dirty log, the run state, and the device state, which
 * travels as one blob of QEMU's vmstate (the non-RAM sections) on rdmig's
 * control channel.  ram.c's own stream is not used.
 *
 * Threads: rdmig calls the hooks below on its own threads ("rdmig-source",
 * "rdmig-destination", and in postcopy "rdmig-guest-start", which loads the
 * device state while the pager serves faults).  Each registers with RCU in
 * thread_start and takes the BQL where QEMU needs it.  Terminal states are
 * finished in a bottom half on the main loop.
 *
 * Porting to upstream QEMU (10.x): docs/qemu.md in rdmig names every point.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qemu/units.h"
#include "qemu/sockets.h"
#include "qapi/qapi-visit-sockets.h"
#include "qemu/yank.h"
#include "qapi/error.h"
#include "qom/object.h"
#include "qom/object_interfaces.h"
#include "crypto/tlscredspsk.h"
#include "crypto/tlscredsx509.h"
#include "exec/ram_addr.h"
#include "exec/ramblock.h"
#include "exec/exec-all.h"
#include "hw/core/cpu.h"
#include "sysemu/tcg.h"
#include "io/channel-buffer.h"
#include "block/block.h"
#include "sysemu/sysemu.h"
#include "sysemu/runstate.h"
#include "sysemu/cpus.h"
#include "migration/global_state.h"
#include "migration/misc.h"
#include "migration.h"
#include "savevm.h"
#include "qemu-file.h"
#include "ram.h"
#include "rdmig.h"

#include <rdmig/rdmig.h>

typedef struct RdmigMigration {
    RdmigSession *session;
    bool incoming;
    bool vm_was_running;       /* source: the guest ran when it was stopped */
    bool disks_inactive;       /* source: bdrv_inactivate_all() done */
    bool postcopy_began;       /* destination: the guest ran here before the end */
    bool dirty_log_on;         /* source: memory_global_dirty_log_start() done */
    RAMBlock **blocks;         /* in the order declared to rdmig */
    unsigned nblocks;
} RdmigMigration;

static RdmigMigration *rdmig_out;
static RdmigMigration *rdmig_in;

/* ---- options ---------------------------------------------------------- */

typedef struct RdmigUri {
    char *address;             /* HOST:PORT */
    char transport[16];
    unsigned connections;      /* 0: multifd-channels with multifd, else 1 */
    bool insecure;
    bool verify;
} RdmigUri;

static void rdmig_uri_free(RdmigUri *u)
{
    g_free(u->address);
}

/* rdmig:HOST:PORT[,transport=auto|tcp|rdma][,connections=N][,insecure=on]
 * [,verify=off] (the "rdmig:" already stripped). */
static bool rdmig_uri_parse(const char *uri, RdmigUri *u, Error **errp)
{
    g_auto(GStrv) parts = g_strsplit(uri, ",", -1);

    memset(u, 0, sizeof(*u));
    pstrcpy(u->transport, sizeof(u->transport), "auto");
    u->verify = true;
    if (!parts[0] || !*parts[0] || !strrchr(parts[0], ':')) {
        error_setg(errp, "rdmig: the address must be HOST:PORT, got '%s'", uri);
        return false;
    }
    u->address = g_strdup(parts[0]);
    for (int i = 1; parts[i]; i++) {
        const char *v;
        uint64_t n;

        if (strstart(parts[i], "transport=", &v)) {
            if (strcmp(v, "auto") && strcmp(v, "tcp") && strcmp(v, "rdma")) {
                error_setg(errp, "rdmig: transport must be auto, tcp or rdma, "
                           "not '%s'", v);
                goto fail;
            }
            pstrcpy(u->transport, sizeof(u->transport), v);
        } else if (strstart(parts[i], "connections=", &v)) {
            if (qemu_strtou64(v, NULL, 10, &n) || n < 1 || n > 64) {
                error_setg(errp, "rdmig: connections must be 1 to 64, not '%s'",
                           v);
                goto fail;
            }
            u->connections = n;
        } else if (strstart(parts[i], "insecure=", &v) ||
                   strstart(parts[i], "verify=", &v)) {
            bool on = !strcmp(v, "on");

            if (!on && strcmp(v, "off")) {
                error_setg(errp, "rdmig: '%s' takes on or off", parts[i]);
                goto fail;
            }
            if (parts[i][0] == 'i') {
                u->insecure = on;
            } else {
                u->verify = on;
            }
        } else {
            error_setg(errp, "rdmig: unknown option '%s' (transport=, "
                       "connections=, insecure=, verify=)", parts[i]);
            goto fail;
        }
    }
    return true;
fail:
    rdmig_uri_free(u);
    return false;
}

/*
 * What rdmig cannot honour is refused before anything moves: these change
 * QEMU's own RAM stream, which rdmig replaces.
 */
static bool rdmig_check_capabilities(Error **errp)
{
    MigrationState *s = migrate_get_current();
    static const struct {
        MigrationCapability cap;
        const char *why;
    } refused[] = {
        { MIGRATION_CAPABILITY_XBZRLE, "rdmig sends whole pages" },
        { MIGRATION_CAPABILITY_COMPRESS, "rdmig sends whole pages" },
        { MIGRATION_CAPABILITY_X_COLO, "COLO needs QEMU's own stream" },
        { MIGRATION_CAPABILITY_BACKGROUND_SNAPSHOT, "a snapshot is not a "
          "migration" },
        { MIGRATION_CAPABILITY_RELEASE_RAM, "rdmig keeps the source's RAM "
          "until the end, for recovery" },
        { MIGRATION_CAPABILITY_ZERO_COPY_SEND, "rdmig has its own zero-copy "
          "data path" },
        { MIGRATION_CAPABILITY_AUTO_CONVERGE, "rdmig does not throttle the "
          "guest's CPUs" },
        { MIGRATION_CAPABILITY_BLOCK, "block migration travels in QEMU's own "
          "stream" },
        { MIGRATION_CAPABILITY_DIRTY_BITMAPS, "dirty bitmaps travel in QEMU's "
          "own stream" },
        { MIGRATION_CAPABILITY_POSTCOPY_PREEMPT, "rdmig pulls postcopy pages "
          "on connections of their own" },
        { MIGRATION_CAPABILITY_X_IGNORE_SHARED, "rdmig moves every RAM "
          "block" },
    };

    for (size_t i = 0; i < ARRAY_SIZE(refused); i++) {
        if (s->enabled_capabilities[refused[i].cap]) {
            error_setg(errp, "rdmig: capability '%s' is not supported (%s); "
                       "switch it off", MigrationCapability_str(refused[i].cap),
                       refused[i].why);
            return false;
        }
    }
    if (migrate_use_multifd() &&
        migrate_multifd_compression() != MULTIFD_COMPRESSION_NONE) {
        error_setg(errp, "rdmig: multifd-compression must be none: rdmig sends "
                   "whole pages");
        return false;
    }
    return true;
}

static void rdmig_params(const RdmigUri *u, RdmigParams *p)
{
    MigrationState *s = migrate_get_current();

    rdmig_params_init(p);
    p->downtime_limit_ms = MAX(s->parameters.downtime_limit, 1);
    p->max_bandwidth = s->parameters.max_bandwidth;
    /* QEMU's precopy runs until it converges, is cancelled or turns into
     * postcopy (migrate-start-postcopy). */
    p->max_rounds = UINT32_MAX;
    p->postcopy = migrate_postcopy_ram();
    p->verify = u->verify;
    p->insecure = u->insecure;
    p->data_connections = u->connections ? u->connections
                        : migrate_use_multifd() ? migrate_multifd_channels() : 1;
    pstrcpy(p->transport, sizeof(p->transport), u->transport);
}

/* The tls-creds parameter names a tls-creds-x509 or tls-creds-psk object,
 * as for QEMU's own transports; rdmig reads the same files. */
static bool rdmig_set_credentials(RdmigSession *session, Error **errp)
{
    MigrationState *s = migrate_get_current();
    const char *id = s->parameters.tls_creds;
    g_autoptr(GError) gerr = NULL;
    g_autofree char *dir = NULL;
    g_autofree char *path = NULL;
    RdmigCredentialKind kind;
    Object *obj;

    if (!id || !*id) {
        return true;
    }
    obj = object_resolve_path_component(object_get_objects_root(), id);
    if (!obj) {
        error_setg(errp, "rdmig: no object '%s' for tls-creds", id);
        return false;
    }
    if (object_dynamic_cast(obj, TYPE_QCRYPTO_TLS_CREDS_PSK)) {
        kind = RDMIG_CREDENTIALS_PSK;
    } else if (object_dynamic_cast(obj, TYPE_QCRYPTO_TLS_CREDS_X509)) {
        kind = RDMIG_CREDENTIALS_X509;
    } else {
        error_setg(errp, "rdmig: tls-creds '%s' is neither tls-creds-x509 nor "
                   "tls-creds-psk", id);
        return false;
    }
    dir = object_property_get_str(obj, "dir", errp);
    if (!dir) {
        return false;
    }
    path = kind == RDMIG_CREDENTIALS_PSK ? g_build_filename(dir, "keys.psk", NULL)
                                         : g_strdup(dir);
    if (!rdmig_session_set_credentials(session, kind, path, &gerr)) {
        error_setg(errp, "rdmig: tls-creds '%s': %s", id, gerr->message);
        return false;
    }
    return true;
}

/* ---- RAM blocks and the dirty log -------------------------------------- */

static bool rdmig_add_blocks(RdmigMigration *m, Error **errp)
{
    g_autoptr(GError) gerr = NULL;
    RAMBlock *rb;
    unsigned n = 0;

    WITH_RCU_READ_LOCK_GUARD() {
        RAMBLOCK_FOREACH_MIGRATABLE(rb) {
            n++;
        }
        m->blocks = g_new0(RAMBlock *, n);
        RAMBLOCK_FOREACH_MIGRATABLE(rb) {
            if (!rdmig_session_add_ram_block(m->session, qemu_ram_get_idstr(rb),
                                             qemu_ram_get_host_addr(rb),
                                             qemu_ram_get_used_length(rb),
                                             qemu_ram_pagesize(rb), &gerr)) {
                error_setg(errp, "rdmig: RAM block '%s': %s",
                           qemu_ram_get_idstr(rb), gerr->message);
                return false;
            }
            /* A memfd or file: postcopy can place pulled pages without a
             * copy (rdmig's zero-copy placement). */
            if (m->incoming && qemu_ram_get_fd(rb) >= 0 &&
                !rdmig_session_set_ram_block_fd(m->session,
                                                qemu_ram_get_idstr(rb),
                                                qemu_ram_get_fd(rb), 0, &gerr)) {
                error_setg(errp, "rdmig: RAM block '%s': %s",
                           qemu_ram_get_idstr(rb), gerr->message);
                return false;
            }
            m->blocks[m->nblocks++] = rb;
        }
    }
    return true;
}

/*
 * TCG marks a page dirty on its first write through a TLB entry and then
 * lets later writes go by.  7.2's word-aligned sync clears the log without
 * resetting those entries, so writes after a sync are lost (fixed upstream
 * in 2024, "physmem: Fix migration dirty bitmap coherency with TCG memory
 * access").  Resetting them after every sync makes each later write log
 * again.
 */
static void rdmig_tcg_reset_dirty(RAMBlock *rb)
{
#ifdef CONFIG_TCG
    CPUState *cpu;

    if (tcg_enabled()) {
        CPU_FOREACH(cpu) {
            tlb_reset_dirty(cpu, (uintptr_t)qemu_ram_get_host_addr(rb),
                            qemu_ram_get_used_length(rb));
        }
    }
#endif
}

/* Folds QEMU's log (one bit per target page) into rb->bmap, for every
 * block at once, as migration_bitmap_sync() does.  BQL held. */
static void rdmig_log_sync_all(RdmigMigration *m)
{
    memory_global_dirty_log_sync();
    WITH_RCU_READ_LOCK_GUARD() {
        for (unsigned i = 0; i < m->nblocks; i++) {
            cpu_physical_memory_sync_dirty_bitmap(m->blocks[i], 0,
                                        qemu_ram_get_used_length(m->blocks[i]));
            rdmig_tcg_reset_dirty(m->blocks[i]);
        }
    }
}

static bool rdmig_dirty_start(void *opaque, GError **error)
{
    RdmigMigration *m = opaque;

    qemu_mutex_lock_iothread();
    for (unsigned i = 0; i < m->nblocks; i++) {
        RAMBlock *rb = m->blocks[i];

        g_free(rb->bmap);
        rb->bmap = bitmap_new(qemu_ram_get_used_length(rb) >> TARGET_PAGE_BITS);
    }
    memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION);
    m->dirty_log_on = true;
    /* A fresh log says "all dirty"; rdmig's first round sends every page
     * anyway, so that first answer is dropped. */
    rdmig_log_sync_all(m);
    for (unsigned i = 0; i < m->nblocks; i++) {
        RAMBlock *rb = m->blocks[i];

        bitmap_zero(rb->bmap, qemu_ram_get_used_length(rb) >> TARGET_PAGE_BITS);
    }
    qemu_mutex_unlock_iothread();
    return true;
}

/* rdmig syncs block by block, in order: block 0 reads the whole log. */
static bool rdmig_dirty_sync(void *opaque, unsigned block, uint64_t *bitmap,
                             uint64_t npages, GError **error)
{
    RdmigMigration *m = opaque;
    RAMBlock *rb = m->blocks[block];
    uint64_t tpages = qemu_ram_get_used_length(rb) >> TARGET_PAGE_BITS;
    uint64_t ratio = tpages / npages;   /* target pages per rdmig page */

    if (block == 0) {
        qemu_mutex_lock_iothread();
        rdmig_log_sync_all(m);
        qemu_mutex_unlock_iothread();
    }
    for (uint64_t t = find_first_bit(rb->bmap, tpages); t < tpages;
         t = find_next_bit(rb->bmap, tpages, t + 1)) {
        uint64_t page = t / ratio;

        bitmap[page / 64] |= 1ULL << (page % 64);
    }
    bitmap_zero(rb->bmap, tpages);
    return true;
}

static void rdmig_dirty_stop(void *opaque)
{
    RdmigMigration *m = opaque;

    qemu_mutex_lock_iothread();
    if (m->dirty_log_on) {
        memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION);
        m->dirty_log_on = false;
    }
    for (unsigned i = 0; i < m->nblocks; i++) {
        g_clear_pointer(&m->blocks[i]->bmap, g_free);
    }
    qemu_mutex_unlock_iothread();
}

static const RdmigDirtyOps rdmig_dirty_ops = {
    .start = rdmig_dirty_start,
    .sync = rdmig_dirty_sync,
    .stop = rdmig_dirty_stop,
};

/* ---- guest hooks ------------------------------------------------------- */

static void rdmig_thread_start(void *opaque, const char *name)
{
    rcu_register_thread();
}

static void rdmig_thread_stop(void *opaque)
{
    rcu_unregister_thread();
}

/* Source: stop the CPUs as QEMU's migration thread does at switchover. */
static bool rdmig_guest_stop(void *opaque, GError **error)
{
    RdmigMigration *m = opaque;
    int ret;

    qemu_mutex_lock_iothread();
    qemu_system_wakeup_request(QEMU_WAKEUP_REASON_OTHER, NULL);
    m->vm_was_running = runstate_is_running();
    ret = global_state_store();
    if (!ret) {
        ret = vm_stop_force_state(RUN_STATE_FINISH_MIGRATE);
    }
    qemu_mutex_unlock_iothread();
    if (ret < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "QEMU could not stop the guest: %s", strerror(-ret));
        return false;
    }
    return true;
}

/* Source after a failed or cancelled switchover; destination at the end. */
static void rdmig_guest_resume(void *opaque);

static bool rdmig_save_device_state(void *opaque, GByteArray *out,
                                    GError **error)
{
    RdmigMigration *m = opaque;
    QIOChannelBuffer *bioc = qio_channel_buffer_new(64 * KiB);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    int ret;

    qemu_mutex_lock_iothread();
    ret = qemu_save_device_state(f);
    qemu_fflush(f);
    if (!ret) {
        ret = qemu_file_get_error(f);
    }
    /* Shared storage changes hands with the guest, as in
     * qemu_savevm_state_complete_precopy(). */
    if (!ret) {
        ret = bdrv_inactivate_all();
        m->disks_inactive = !ret;
    }
    qemu_mutex_unlock_iothread();
    if (!ret) {
        g_byte_array_append(out, bioc->data, bioc->usage);
    }
    object_ref(OBJECT(bioc));
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
    if (ret) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "QEMU could not save the device state: %s", strerror(-ret));
        return false;
    }
    return true;
}

static bool rdmig_load_device_state(void *opaque, const uint8_t *data,
                                    size_t len, GError **error)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(len);
    QEMUFile *f;
    int ret = -EINVAL;

    memcpy(bioc->data, data, len);
    bioc->usage = len;
    f = qemu_file_new_input(QIO_CHANNEL(bioc));
    qemu_mutex_lock_iothread();
    if (len < 8 || qemu_get_be32(f) != QEMU_VM_FILE_MAGIC ||
        qemu_get_be32(f) != QEMU_VM_FILE_VERSION) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the device state is not QEMU's vmstate (magic or version "
                    "differs)");
    } else {
        cpu_synchronize_all_pre_loadvm();
        ret = qemu_load_device_state(f);
        if (ret < 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "QEMU could not load the device state (%s); see QEMU's "
                        "messages above", strerror(-ret));
        }
    }
    qemu_mutex_unlock_iothread();
    qemu_fclose(f);
    return ret >= 0;
}

/* Destination: process_incoming_migration_bh()'s rules: -S (autostart off)
 * or a source that was paused leaves the guest paused until "cont". */
static void rdmig_incoming_resume(RdmigMigration *m)
{
    MigrationIncomingState *mis = migration_incoming_get_current();
    MigrationState *s = migrate_get_current();
    bool late = s->enabled_capabilities[MIGRATION_CAPABILITY_LATE_BLOCK_ACTIVATE];
    bool run = !global_state_received() ||
               global_state_get_runstate() == RUN_STATE_RUNNING;
    Error *local_err = NULL;

    if (!late || (autostart && run)) {
        bdrv_activate_all(&local_err);
        if (local_err) {
            error_report_err(local_err);
            autostart = false;
        }
    }
    qemu_announce_self(&mis->announce_timer, migrate_announce_params());
    if (run) {
        if (autostart) {
            vm_start();
        } else {
            runstate_set(RUN_STATE_PAUSED);
        }
    } else {
        runstate_set(global_state_get_runstate());
    }
}

static void rdmig_guest_resume(void *opaque)
{
    RdmigMigration *m = opaque;

    qemu_mutex_lock_iothread();
    if (m->incoming) {
        rdmig_incoming_resume(m);
    } else {
        Error *local_err = NULL;

        if (m->disks_inactive) {
            bdrv_activate_all(&local_err);
            if (local_err) {
                error_report_err(local_err);
            }
            m->disks_inactive = false;
        }
        if (m->vm_was_running) {
            if (!runstate_check(RUN_STATE_SHUTDOWN)) {
                vm_start();
            }
        } else if (runstate_check(RUN_STATE_FINISH_MIGRATE)) {
            runstate_set(RUN_STATE_POSTMIGRATE);
        }
    }
    qemu_mutex_unlock_iothread();
}

static const RdmigGuestOps rdmig_guest_ops = {
    .stop = rdmig_guest_stop,
    .resume = rdmig_guest_resume,
    .save_device_state = rdmig_save_device_state,
    .load_device_state = rdmig_load_device_state,
    .thread_start = rdmig_thread_start,
    .thread_stop = rdmig_thread_stop,
};

/* ---- states ------------------------------------------------------------ */

static int rdmig_status(RdmigState state)
{
    switch (state) {
    case RDMIG_STATE_NONE:
        return MIGRATION_STATUS_NONE;
    case RDMIG_STATE_SETUP:
        return MIGRATION_STATUS_SETUP;
    case RDMIG_STATE_CANCELLING:
        return MIGRATION_STATUS_CANCELLING;
    case RDMIG_STATE_CANCELLED:
        return MIGRATION_STATUS_CANCELLED;
    case RDMIG_STATE_DEVICE:
        return MIGRATION_STATUS_DEVICE;
    case RDMIG_STATE_COMPLETED:
        return MIGRATION_STATUS_COMPLETED;
    case RDMIG_STATE_FAILED:
        return MIGRATION_STATUS_FAILED;
    case RDMIG_STATE_POSTCOPY_ACTIVE:
        return MIGRATION_STATUS_POSTCOPY_ACTIVE;
    case RDMIG_STATE_POSTCOPY_PAUSED:
        return MIGRATION_STATUS_POSTCOPY_PAUSED;
    case RDMIG_STATE_POSTCOPY_RECOVER_SETUP:   /* 7.2 has no recover-setup */
    case RDMIG_STATE_POSTCOPY_RECOVER:
        return MIGRATION_STATUS_POSTCOPY_RECOVER;
    case RDMIG_STATE_ACTIVE:
    case RDMIG_STATE_PRECOPY_PAUSED:   /* precopy_resume stays off here */
    default:
        return MIGRATION_STATUS_ACTIVE;
    }
}

static bool rdmig_state_is_terminal(RdmigState state)
{
    return state == RDMIG_STATE_COMPLETED || state == RDMIG_STATE_FAILED ||
           state == RDMIG_STATE_CANCELLED;
}

static void rdmig_set_status(int *status, RdmigState state)
{
    int new_status = rdmig_status(state);
    int old_status = qatomic_read(status);

    if (old_status != new_status) {
        migrate_set_state(status, old_status, new_status);
    }
}

/* Joins the session's threads without the BQL, which they may need. */
static bool rdmig_join(RdmigMigration *m, GError **error)
{
    bool ok;

    qemu_mutex_unlock_iothread();
    ok = rdmig_session_wait(m->session, error);
    qemu_mutex_lock_iothread();
    return ok;
}

static void rdmig_outgoing_finish_bh(void *opaque)
{
    RdmigMigration *m = opaque;
    MigrationState *s = migrate_get_current();
    g_autoptr(GError) gerr = NULL;

    if (rdmig_join(m, &gerr)) {
        if (runstate_check(RUN_STATE_FINISH_MIGRATE)) {
            runstate_set(RUN_STATE_POSTMIGRATE);
        }
    } else if (!g_error_matches(gerr, RDMIG_ERROR, RDMIG_ERROR_CANCELLED)) {
        Error *err = NULL;

        error_setg(&err, "rdmig: %s", gerr->message);
        migrate_set_error(s, err);
        error_report_err(err);
    }
    yank_unregister_instance(MIGRATION_YANK_INSTANCE);
}

static void rdmig_incoming_finish_bh(void *opaque)
{
    RdmigMigration *m = opaque;
    g_autoptr(GError) gerr = NULL;

    if (rdmig_join(m, &gerr)) {
        yank_unregister_instance(MIGRATION_YANK_INSTANCE);
        return;
    }
    error_report("load of migration failed: %s", gerr->message);
    if (!m->postcopy_began) {
        /* As QEMU's own transports: nothing ran here, nothing to keep. */
        exit(EXIT_FAILURE);
    }
}

static void rdmig_state_changed(void *opaque, RdmigState old_state,
                                RdmigState new_state)
{
    RdmigMigration *m = opaque;

    if (m->incoming) {
        if (new_state == RDMIG_STATE_POSTCOPY_ACTIVE) {
            m->postcopy_began = true;
        }
        rdmig_set_status(&migration_incoming_get_current()->state, new_state);
    } else {
        rdmig_set_status(&migrate_get_current()->state, new_state);
    }
    if (rdmig_state_is_terminal(new_state)) {
        aio_bh_schedule_oneshot(qemu_get_aio_context(),
                                m->incoming ? rdmig_incoming_finish_bh
                                            : rdmig_outgoing_finish_bh, m);
    }
}

/* ---- starting ---------------------------------------------------------- */

static RdmigMigration *rdmig_migration_new(bool incoming, const RdmigUri *u,
                                           Error **errp)
{
    RdmigMigration *m = g_new0(RdmigMigration, 1);
    g_autoptr(GError) gerr = NULL;
    RdmigParams params;

    m->incoming = incoming;
    rdmig_params(u, &params);
    m->session = rdmig_session_new(incoming ? RDMIG_ROLE_DESTINATION
                                            : RDMIG_ROLE_SOURCE, &params, &gerr);
    if (!m->session) {
        error_setg(errp, "rdmig: %s", gerr->message);
        g_free(m);
        return NULL;
    }
    if (!rdmig_add_blocks(m, errp) || !rdmig_set_credentials(m->session, errp)) {
        rdmig_session_free(m->session);
        g_free(m->blocks);
        g_free(m);
        return NULL;
    }
    rdmig_session_set_guest_ops(m->session, &rdmig_guest_ops, m);
    if (!incoming) {
        rdmig_session_set_dirty_ops(m->session, &rdmig_dirty_ops, m);
    }
    rdmig_session_set_state_func(m->session, rdmig_state_changed, m);
    return m;
}

static void rdmig_migration_free(RdmigMigration *m)
{
    if (m) {
        qemu_mutex_unlock_iothread();
        rdmig_session_free(m->session);
        qemu_mutex_lock_iothread();
        g_free(m->blocks);
        g_free(m);
    }
}

static bool rdmig_recover(RdmigMigration *m, const char *uri, Error **errp)
{
    g_autoptr(GError) gerr = NULL;
    RdmigUri u;

    if (!rdmig_uri_parse(uri, &u, errp)) {
        return false;
    }
    if (!rdmig_session_recover(m->session, u.address, &gerr)) {
        error_setg(errp, "rdmig: %s", gerr->message);
    } else if (m->incoming) {
        info_report("rdmig: listening for recovery on %s",
                    rdmig_session_listen_address(m->session));
    }
    rdmig_uri_free(&u);
    return !gerr;
}

/* A new migration for @uri (options checked first), started: connected
 * (source) or listening (destination).  NULL with @errp set on failure;
 * a session that failed to start is still kept, for query-migrate. */
static RdmigMigration *rdmig_start(bool incoming, const char *uri, Error **errp)
{
    g_autoptr(GError) gerr = NULL;
    RdmigMigration *m;
    RdmigUri u;

    if (!rdmig_check_capabilities(errp) || !rdmig_uri_parse(uri, &u, errp)) {
        return NULL;
    }
    m = rdmig_migration_new(incoming, &u, errp);
    if (m) {
        *(incoming ? &rdmig_in : &rdmig_out) = m;
        if (!rdmig_session_start(m->session, u.address, &gerr)) {
            error_setg(errp, "rdmig: %s", gerr->message);
            m = NULL;
        }
    }
    rdmig_uri_free(&u);
    return m;
}

void rdmig_start_outgoing_migration(MigrationState *s, const char *uri,
                                    bool resume, Error **errp)
{
    if (!resume) {
        rdmig_start(false, uri, errp);
    } else if (!rdmig_out) {
        error_setg(errp, "rdmig: the paused migration is not an rdmig one");
    } else {
        rdmig_recover(rdmig_out, uri, errp);
    }
}

void rdmig_start_incoming_migration(const char *uri, Error **errp)
{
    MigrationIncomingState *mis = migration_incoming_get_current();
    RdmigMigration *m;
    const char *bound;
    SocketAddress *sa;

    if (rdmig_in && mis->state == MIGRATION_STATUS_POSTCOPY_PAUSED) {
        rdmig_recover(rdmig_in, uri, errp);   /* migrate-recover */
        return;
    }
    m = rdmig_start(true, uri, errp);
    if (!m) {
        return;
    }
    bound = rdmig_session_listen_address(m->session);
    /* query-migrate's socket-address, where a manager asking for port 0
     * finds the port (as with tcp:). */
    sa = socket_parse(bound, NULL);
    if (sa) {
        migrate_add_address(sa);
        qapi_free_SocketAddress(sa);
    }
    info_report("rdmig: listening on %s", bound);
}

/* ---- QMP --------------------------------------------------------------- */

static bool rdmig_out_running(void)
{
    RdmigStats st;

    if (!rdmig_out) {
        return false;
    }
    rdmig_session_get_stats(rdmig_out->session, &st);
    return !rdmig_state_is_terminal(st.state);
}

bool rdmig_migration_cancel(void)
{
    g_autoptr(GError) gerr = NULL;

    if (!rdmig_out_running()) {
        return false;
    }
    if (rdmig_session_cancel_refused(rdmig_out->session, &gerr)) {
        warn_report("rdmig: %s", gerr->message);
        return true;
    }
    rdmig_session_cancel(rdmig_out->session);
    return true;
}

bool rdmig_migration_pause(Error **errp)
{
    RdmigMigration *m = rdmig_out_running() ? rdmig_out : rdmig_in;
    g_autoptr(GError) gerr = NULL;

    if (!m) {
        return false;
    }
    if (!rdmig_session_pause(m->session, &gerr)) {
        error_setg(errp, "rdmig: %s", gerr->message);
    }
    return true;
}

bool rdmig_migration_start_postcopy(Error **errp)
{
    g_autoptr(GError) gerr = NULL;

    if (!rdmig_out_running()) {
        return false;
    }
    if (!rdmig_session_start_postcopy(rdmig_out->session, &gerr)) {
        error_setg(errp, "rdmig: %s", gerr->message);
    }
    return true;
}

void rdmig_outgoing_release(void)
{
    g_clear_pointer(&rdmig_out, rdmig_migration_free);
}

static void rdmig_fill_ram(MigrationInfo *info, const RdmigStats *st)
{
    uint64_t page = TARGET_PAGE_SIZE;

    if (!info->ram) {
        info->has_ram = true;
        info->ram = g_new0(MigrationStats, 1);
        info->ram->total = ram_bytes_total();
    }
    info->ram->transferred = st->bytes_transferred;
    info->ram->remaining = st->remaining_bytes;
    info->ram->duplicate = st->pages_zero;
    info->ram->normal = st->pages_sent;
    info->ram->normal_bytes = st->pages_sent * page;
    info->ram->mbps = st->bandwidth * 8.0 / 1e6;
    info->ram->dirty_sync_count = st->dirty_sync_count;
    info->ram->postcopy_requests = st->pages_on_demand;
    info->ram->page_size = page;
    info->ram->dirty_pages_rate = st->dirty_pages_rate;
    info->ram->pages_per_second = st->bandwidth / page;
}

void rdmig_migration_fill_info(MigrationInfo *info)
{
    RdmigStats st;

    if (rdmig_out) {
        rdmig_session_get_stats(rdmig_out->session, &st);
        info->has_total_time = true;
        info->total_time = st.total_time_ms;
        info->has_setup_time = true;
        info->setup_time = st.setup_time_ms;
        if (st.state == RDMIG_STATE_COMPLETED || st.postcopy) {
            info->has_downtime = true;
            info->downtime = st.downtime_ms;
        }
        if (!rdmig_state_is_terminal(st.state)) {
            info->has_expected_downtime = true;
            info->expected_downtime = st.expected_downtime_ms;
        }
        rdmig_fill_ram(info, &st);
    } else if (rdmig_in) {
        rdmig_session_get_stats(rdmig_in->session, &st);
        /* The destination counts postcopy's requests: with RDMA READ the
         * source never sees them. */
        if (st.postcopy) {
            uint64_t pulled = st.pages_on_demand + st.pages_background;

            info->has_postcopy_blocktime = true;
            info->postcopy_blocktime = st.blocktime_us / 1000;
            rdmig_fill_ram(info, &st);
            info->ram->normal = pulled;
            info->ram->normal_bytes = pulled * TARGET_PAGE_SIZE;
            info->ram->postcopy_bytes = pulled * TARGET_PAGE_SIZE;
        }
    } else {
        return;
    }
    if (st.error[0] && !info->has_error_desc) {
        info->has_error_desc = true;
        info->error_desc = g_strdup(st.error);
    }
}

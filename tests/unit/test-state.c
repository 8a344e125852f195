/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the migration state machine (engine/state.c): QEMU's state
 * names, the complete table of transitions (every allowed edge, and every
 * other pair refused), final states; then the same machine seen through the
 * public API, by a destination that is cancelled while it waits.
 */
#include <string.h>
#include <sys/mman.h>

#include "engine/state.h"
#include "rdmig/error.h"
#include "rdmig/rdmig.h"

static void test_state_names(void)
{
    static const char *const names[RDMIG_STATE__COUNT] = {
        [RDMIG_STATE_NONE] = "none",           [RDMIG_STATE_SETUP] = "setup",
        [RDMIG_STATE_CANCELLING] = "cancelling", [RDMIG_STATE_CANCELLED] = "cancelled",
        [RDMIG_STATE_ACTIVE] = "active",       [RDMIG_STATE_DEVICE] = "device",
        [RDMIG_STATE_COMPLETED] = "completed", [RDMIG_STATE_FAILED] = "failed",
        [RDMIG_STATE_POSTCOPY_ACTIVE] = "postcopy-active",
        [RDMIG_STATE_POSTCOPY_PAUSED] = "postcopy-paused",
        [RDMIG_STATE_POSTCOPY_RECOVER_SETUP] = "postcopy-recover-setup",
        [RDMIG_STATE_POSTCOPY_RECOVER] = "postcopy-recover",
        [RDMIG_STATE_PRECOPY_PAUSED] = "precopy-paused",
    };
    for (int s = 0; s < RDMIG_STATE__COUNT; s++)
        g_assert_cmpstr(rdmig_state_str((RdmigState)s), ==, names[s]);
    /* Out of range: a name that cannot be taken for a state, and no crash. */
    const char *bad[] = { rdmig_state_str(RDMIG_STATE__COUNT), rdmig_state_str((RdmigState)-1),
                          rdmig_state_str((RdmigState)1000) };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_nonnull(bad[i]);
        for (int s = 0; s < RDMIG_STATE__COUNT; s++)
            g_assert_cmpstr(bad[i], !=, names[s]);
    }
}

/* The expected table, written out independently of engine/state.c. */
static const struct {
    RdmigState from, to;
} edges[] = {
    { RDMIG_STATE_NONE, RDMIG_STATE_SETUP },
    { RDMIG_STATE_SETUP, RDMIG_STATE_ACTIVE },
    { RDMIG_STATE_SETUP, RDMIG_STATE_FAILED },
    { RDMIG_STATE_SETUP, RDMIG_STATE_CANCELLING },
    { RDMIG_STATE_ACTIVE, RDMIG_STATE_DEVICE },
    { RDMIG_STATE_ACTIVE, RDMIG_STATE_FAILED },
    { RDMIG_STATE_ACTIVE, RDMIG_STATE_CANCELLING },
    { RDMIG_STATE_ACTIVE, RDMIG_STATE_POSTCOPY_ACTIVE },
    { RDMIG_STATE_POSTCOPY_ACTIVE, RDMIG_STATE_COMPLETED },
    { RDMIG_STATE_POSTCOPY_ACTIVE, RDMIG_STATE_FAILED },
    { RDMIG_STATE_POSTCOPY_ACTIVE, RDMIG_STATE_POSTCOPY_PAUSED },
    { RDMIG_STATE_POSTCOPY_PAUSED, RDMIG_STATE_POSTCOPY_RECOVER_SETUP },
    { RDMIG_STATE_POSTCOPY_PAUSED, RDMIG_STATE_POSTCOPY_RECOVER },
    { RDMIG_STATE_POSTCOPY_PAUSED, RDMIG_STATE_FAILED },
    { RDMIG_STATE_POSTCOPY_RECOVER_SETUP, RDMIG_STATE_POSTCOPY_RECOVER },
    { RDMIG_STATE_POSTCOPY_RECOVER_SETUP, RDMIG_STATE_POSTCOPY_PAUSED },
    { RDMIG_STATE_POSTCOPY_RECOVER, RDMIG_STATE_POSTCOPY_ACTIVE },
    { RDMIG_STATE_POSTCOPY_RECOVER, RDMIG_STATE_POSTCOPY_PAUSED },
    { RDMIG_STATE_POSTCOPY_RECOVER_SETUP, RDMIG_STATE_FAILED },
    { RDMIG_STATE_POSTCOPY_RECOVER, RDMIG_STATE_FAILED },
    { RDMIG_STATE_ACTIVE, RDMIG_STATE_PRECOPY_PAUSED },
    { RDMIG_STATE_PRECOPY_PAUSED, RDMIG_STATE_ACTIVE },
    { RDMIG_STATE_PRECOPY_PAUSED, RDMIG_STATE_FAILED },
    { RDMIG_STATE_PRECOPY_PAUSED, RDMIG_STATE_CANCELLING },
    { RDMIG_STATE_DEVICE, RDMIG_STATE_COMPLETED },
    { RDMIG_STATE_DEVICE, RDMIG_STATE_FAILED },
    { RDMIG_STATE_DEVICE, RDMIG_STATE_CANCELLING },
    { RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED },
    { RDMIG_STATE_CANCELLING, RDMIG_STATE_FAILED },
};

static bool expected(RdmigState from, RdmigState to)
{
    for (size_t i = 0; i < G_N_ELEMENTS(edges); i++)
        if (edges[i].from == from && edges[i].to == to)
            return true;
    return false;
}

static void test_transition_table(void)
{
    unsigned allowed = 0;
    for (int f = 0; f < RDMIG_STATE__COUNT; f++) {
        for (int t = 0; t < RDMIG_STATE__COUNT; t++) {
            bool want = expected((RdmigState)f, (RdmigState)t);
            bool got = rdmig_state_transition_allowed((RdmigState)f, (RdmigState)t);
            if (want != got)
                g_error("%s -> %s: expected %s, table says %s", rdmig_state_str((RdmigState)f),
                        rdmig_state_str((RdmigState)t), want ? "allowed" : "refused",
                        got ? "allowed" : "refused");
            allowed += got;
        }
    }
    g_assert_cmpuint(allowed, ==, G_N_ELEMENTS(edges));

    /* No self-loops: a "change" to the same state is not a change. */
    for (int s = 0; s < RDMIG_STATE__COUNT; s++)
        g_assert_false(rdmig_state_transition_allowed((RdmigState)s, (RdmigState)s));

    /* Out-of-range states are refused, not looked up. */
    for (int s = 0; s < RDMIG_STATE__COUNT; s++) {
        g_assert_false(rdmig_state_transition_allowed(RDMIG_STATE__COUNT, (RdmigState)s));
        g_assert_false(rdmig_state_transition_allowed((RdmigState)s, RDMIG_STATE__COUNT));
        g_assert_false(rdmig_state_transition_allowed((RdmigState)-1, (RdmigState)s));
        g_assert_false(rdmig_state_transition_allowed((RdmigState)s, (RdmigState)-1));
    }
}

static void test_is_final(void)
{
    for (int s = 0; s < RDMIG_STATE__COUNT; s++) {
        bool want = s == RDMIG_STATE_COMPLETED || s == RDMIG_STATE_FAILED ||
                    s == RDMIG_STATE_CANCELLED;
        g_assert_cmpint(rdmig_state_is_final((RdmigState)s), ==, want);
    }
}

/* Consistency of table and finality: final states have no way out, every
 * other state (but NONE) can fail, and every state is reachable from NONE. */
static void test_table_consistency(void)
{
    bool reach[RDMIG_STATE__COUNT] = { [RDMIG_STATE_NONE] = true };
    for (int round = 0; round < RDMIG_STATE__COUNT; round++)
        for (int f = 0; f < RDMIG_STATE__COUNT; f++)
            for (int t = 0; t < RDMIG_STATE__COUNT; t++)
                if (reach[f] && rdmig_state_transition_allowed((RdmigState)f, (RdmigState)t))
                    reach[t] = true;
    for (int s = 0; s < RDMIG_STATE__COUNT; s++) {
        g_assert_true(reach[s]);
        bool out = false;
        for (int t = 0; t < RDMIG_STATE__COUNT; t++)
            out |= rdmig_state_transition_allowed((RdmigState)s, (RdmigState)t);
        g_assert_cmpint(out, ==, !rdmig_state_is_final((RdmigState)s));
        if (s != RDMIG_STATE_NONE && !rdmig_state_is_final((RdmigState)s))
            g_assert_true(rdmig_state_transition_allowed((RdmigState)s, RDMIG_STATE_FAILED));
    }
}

/* ------------------------------------------------------------ through the API */

typedef struct {
    GMutex lock;
    GArray *changes; /* pairs of RdmigState */
} Recorder;

static void record_state(void *opaque, RdmigState old_state, RdmigState new_state)
{
    Recorder *r = opaque;
    g_mutex_lock(&r->lock);
    RdmigState pair[2] = { old_state, new_state };
    g_array_append_vals(r->changes, pair, 2);
    g_mutex_unlock(&r->lock);
}

static void test_destination_cancel(void)
{
    size_t len = 1u << 20;
    void *ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert_true(ram != MAP_FAILED);

    Recorder rec;
    g_mutex_init(&rec.lock);
    rec.changes = g_array_new(FALSE, FALSE, sizeof(RdmigState));

    RdmigParams params;
    rdmig_params_init(&params);
    g_autoptr(GError) err = NULL;
    RdmigSession *s = rdmig_session_new(RDMIG_ROLE_DESTINATION, &params, &err);
    g_assert_no_error(err);
    g_assert_nonnull(s);
    g_assert_true(rdmig_session_add_ram_block(s, "ram", ram, len, 4096, &err));
    rdmig_session_set_state_func(s, record_state, &rec);

    RdmigStats st;
    rdmig_session_get_stats(s, &st);
    g_assert_cmpint(st.state, ==, RDMIG_STATE_NONE);

    g_assert_true(rdmig_session_start(s, "127.0.0.1:0", &err));
    g_assert_no_error(err);
    const char *addr = rdmig_session_listen_address(s);
    g_assert_nonnull(addr);
    g_assert_true(g_str_has_prefix(addr, "127.0.0.1:"));
    g_assert_cmpstr(addr, !=, "127.0.0.1:0");
    rdmig_session_get_stats(s, &st);
    g_assert_cmpint(st.state, ==, RDMIG_STATE_SETUP);

    /* Let the destination thread block waiting for a source, then cancel. */
    g_usleep(100 * 1000);
    rdmig_session_cancel(s);
    g_assert_false(rdmig_session_wait(s, &err));
    g_assert_error(err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED);
    g_clear_error(&err);
    /* wait() may be called again, with the same answer. */
    g_assert_false(rdmig_session_wait(s, &err));
    g_assert_error(err, RDMIG_ERROR, RDMIG_ERROR_CANCELLED);

    rdmig_session_get_stats(s, &st);
    g_assert_cmpint(st.state, ==, RDMIG_STATE_CANCELLED);

    static const RdmigState want[] = { RDMIG_STATE_NONE,       RDMIG_STATE_SETUP,
                                       RDMIG_STATE_SETUP,      RDMIG_STATE_CANCELLING,
                                       RDMIG_STATE_CANCELLING, RDMIG_STATE_CANCELLED };
    g_mutex_lock(&rec.lock);
    GString *seen = g_string_new(NULL);
    for (guint i = 0; i + 1 < rec.changes->len; i += 2)
        g_string_append_printf(seen, "%s->%s ",
                               rdmig_state_str(g_array_index(rec.changes, RdmigState, i)),
                               rdmig_state_str(g_array_index(rec.changes, RdmigState, i + 1)));
    if (rec.changes->len != G_N_ELEMENTS(want) ||
        memcmp(rec.changes->data, want, sizeof(want)) != 0)
        g_error("state changes were: %s", seen->str);
    g_string_free(seen, TRUE);
    g_mutex_unlock(&rec.lock);

    rdmig_session_free(s);
    g_array_free(rec.changes, TRUE);
    g_mutex_clear(&rec.lock);
    munmap(ram, len);
}

/* A source that cannot connect goes NONE -> SETUP -> FAILED, synchronously. */
static void test_source_connect_fails(void)
{
    size_t len = 1u << 20;
    void *ram = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    g_assert_true(ram != MAP_FAILED);
    Recorder rec;
    g_mutex_init(&rec.lock);
    rec.changes = g_array_new(FALSE, FALSE, sizeof(RdmigState));

    RdmigParams params;
    rdmig_params_init(&params);
    params.connect_timeout_ms = 2000;
    g_autoptr(GError) err = NULL;
    RdmigSession *s = rdmig_session_new(RDMIG_ROLE_SOURCE, &params, &err);
    g_assert_nonnull(s);
    g_assert_true(rdmig_session_add_ram_block(s, "ram", ram, len, 4096, &err));
    rdmig_session_set_state_func(s, record_state, &rec);
    g_assert_false(rdmig_session_start(s, "127.0.0.1:1", &err));
    g_assert_error(err, RDMIG_ERROR, RDMIG_ERROR_CONNECT);

    static const RdmigState want[] = { RDMIG_STATE_NONE, RDMIG_STATE_SETUP, RDMIG_STATE_SETUP,
                                       RDMIG_STATE_FAILED };
    g_assert_cmpuint(rec.changes->len, ==, G_N_ELEMENTS(want));
    g_assert_cmpmem(rec.changes->data, sizeof(want), want, sizeof(want));
    RdmigStats st;
    rdmig_session_get_stats(s, &st);
    g_assert_cmpint(st.state, ==, RDMIG_STATE_FAILED);
    g_assert_cmpstr(st.error, !=, "");

    rdmig_session_free(s);
    g_array_free(rec.changes, TRUE);
    g_mutex_clear(&rec.lock);
    munmap(ram, len);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/state/names", test_state_names);
    g_test_add_func("/state/transitions", test_transition_table);
    g_test_add_func("/state/is-final", test_is_final);
    g_test_add_func("/state/consistency", test_table_consistency);
    g_test_add_func("/state/session/destination-cancel", test_destination_cancel);
    g_test_add_func("/state/session/source-connect-fails", test_source_connect_fails);
    return g_test_run();
}

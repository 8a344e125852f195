/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the migration state machine (engine/state.c): QEMU's state
 * names, the complete table of transitions against the one docs/architecture.md
 * specifies (every edge it lists allowed, every other pair refused), final
 * states; then the same machine seen through the public API, by a destination
 * that is cancelled while it waits.
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

/* ------------------------------------------------------------ the documented table */

/*
 * The expected transitions are not written in this file: docs/architecture.md
 * ("State machine") lists them as a markdown table, `| from | to | when |`,
 * one row per allowed edge, with the states named as rdmig_state_str() names
 * them.  The table is read at run time, so the document and engine/state.c
 * cannot drift apart unnoticed.  meson compiles the document's path in
 * (RDMIG_ARCHITECTURE_MD), so the program runs the same under `meson test`
 * and by hand; a first argument that is not an option names another copy.
 */
#ifndef RDMIG_ARCHITECTURE_MD
#error "RDMIG_ARCHITECTURE_MD (the path of docs/architecture.md) is set by tests/unit/meson.build"
#endif
static const char *doc_path = RDMIG_ARCHITECTURE_MD;

typedef struct {
    bool allowed[RDMIG_STATE__COUNT][RDMIG_STATE__COUNT];
    unsigned n_edges;
} DocTable;

#define DOC_ERROR (g_quark_from_static_string("rdmig-test-state-doc"))

/* The state rdmig_state_str() calls @name, or -1: the document must use the
 * names a user sees in logs and JSON. */
static int state_by_name(const char *name)
{
    for (int s = 0; s < RDMIG_STATE__COUNT; s++)
        if (strcmp(rdmig_state_str((RdmigState)s), name) == 0)
            return s;
    return -1;
}

/* The trimmed cells of a table row "| a | b | c |", or NULL if @line is not
 * one (a table ends at the first line that is not). */
static GStrv row_cells(const char *line)
{
    g_autofree char *t = g_strstrip(g_strdup(line));
    size_t n = strlen(t);
    if (n < 2 || t[0] != '|' || t[n - 1] != '|')
        return NULL;
    t[n - 1] = 0;
    GStrv cells = g_strsplit(t + 1, "|", -1);
    for (guint i = 0; cells[i]; i++)
        g_strstrip(cells[i]);
    return cells;
}

static bool is_header(GStrv c)
{
    return c && g_strv_length(c) == 3 && strcmp(c[0], "from") == 0 && strcmp(c[1], "to") == 0 &&
           strcmp(c[2], "when") == 0;
}

/* A markdown separator row: every cell dashes, optionally with alignment colons. */
static bool is_separator(GStrv c)
{
    if (!c || g_strv_length(c) != 3)
        return false;
    for (guint i = 0; c[i]; i++) {
        const char *p = c[i] + (c[i][0] == ':');
        size_t dashes = strspn(p, "-");
        if (dashes < 3 || (p[dashes] && strcmp(p + dashes, ":") != 0))
            return false;
    }
    return true;
}

/* The line index of the one `| from | to | when |` header in @lines, or -1
 * with @error set: none, or two (one of them would be silently ignored). */
static int find_header(GStrv lines, GError **error)
{
    int at = -1;
    for (int i = 0; lines[i]; i++) {
        g_auto(GStrv) c = row_cells(lines[i]);
        if (!is_header(c))
            continue;
        if (at >= 0) {
            g_set_error(error, DOC_ERROR, 0, "two `| from | to | when |` tables, at lines %d "
                        "and %d: which one is the state machine?", at + 1, i + 1);
            return -1;
        }
        at = i;
    }
    if (at < 0)
        g_set_error(error, DOC_ERROR, 0, "no `| from | to | when |` table of state transitions");
    return at;
}

/* Row @c (line @lineno) into @t: two known states, a reason, a new edge. */
static bool add_row(DocTable *t, GStrv c, int lineno, GError **error)
{
    if (g_strv_length(c) != 3) {
        g_set_error(error, DOC_ERROR, 0, "line %d: %u cells, expected 3 (from, to, when)",
                    lineno, g_strv_length(c));
        return false;
    }
    int st[2];
    for (int k = 0; k < 2; k++) {
        st[k] = state_by_name(c[k]);
        if (st[k] < 0) {
            g_set_error(error, DOC_ERROR, 0, "line %d: unknown state \"%s\" (not a name "
                        "rdmig_state_str() prints)", lineno, c[k]);
            return false;
        }
    }
    if (!*c[2]) {
        g_set_error(error, DOC_ERROR, 0, "line %d: %s -> %s says nothing under \"when\"", lineno,
                    c[0], c[1]);
        return false;
    }
    if (t->allowed[st[0]][st[1]]) {
        g_set_error(error, DOC_ERROR, 0, "line %d: %s -> %s is listed twice", lineno, c[0], c[1]);
        return false;
    }
    t->allowed[st[0]][st[1]] = true;
    t->n_edges++;
    return true;
}

/* The transition table of the markdown @text: the rows after its header and
 * separator, up to the first line that is not a table row. */
static bool parse_doc_table(const char *text, DocTable *t, GError **error)
{
    memset(t, 0, sizeof(*t));
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    int header = find_header(lines, error);
    if (header < 0)
        return false;
    g_auto(GStrv) sep = lines[header + 1] ? row_cells(lines[header + 1]) : NULL;
    if (!is_separator(sep)) {
        g_set_error(error, DOC_ERROR, 0, "line %d: the table header is not followed by a "
                    "`|---|---|---|` separator", header + 2);
        return false;
    }
    for (int i = header + 2; lines[i]; i++) {
        g_auto(GStrv) c = row_cells(lines[i]);
        if (!c)
            break;
        if (!add_row(t, c, i + 1, error))
            return false;
    }
    if (t->n_edges == 0) {
        g_set_error(error, DOC_ERROR, 0, "line %d: the transition table has no rows", header + 1);
        return false;
    }
    return true;
}

/* Reads and parses the document, or ends the test run saying why. */
static void load_doc_table(DocTable *t)
{
    g_autofree char *text = NULL;
    g_autoptr(GError) err = NULL;
    if (!g_file_get_contents(doc_path, &text, NULL, &err))
        g_error("cannot read the state machine's specification: %s", err->message);
    if (!parse_doc_table(text, t, &err))
        g_error("%s: %s", doc_path, err->message);
}

static void test_transition_table(void)
{
    DocTable doc;
    load_doc_table(&doc);
    g_autoptr(GString) diff = g_string_new(NULL);
    unsigned allowed = 0;
    for (int f = 0; f < RDMIG_STATE__COUNT; f++) {
        for (int t = 0; t < RDMIG_STATE__COUNT; t++) {
            bool want = doc.allowed[f][t];
            bool got = rdmig_state_transition_allowed((RdmigState)f, (RdmigState)t);
            if (want != got)
                g_string_append_printf(diff, "\n  %s -> %s: %s", rdmig_state_str((RdmigState)f),
                                       rdmig_state_str((RdmigState)t),
                                       want ? "the document allows it, engine/state.c refuses it"
                                            : "engine/state.c allows it, the document does not "
                                              "list it");
            allowed += got;
        }
    }
    if (diff->len)
        g_error("engine/state.c and %s disagree:%s", doc_path, diff->str);
    g_assert_cmpuint(allowed, ==, doc.n_edges);

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

/* The parser must refuse a document it cannot take for the specification,
 * rather than hold the code to an empty or partial table. */
static void test_doc_parser(void)
{
#define HDR "| from | to | when |\n|---|---|---|\n"
    static const struct {
        const char *text, *needle;
    } bad[] = {
        { "# State machine\n\nnone -> setup\n", "no `| from | to | when |` table" },
        { "intro\n\n" HDR "\nprose after an empty table\n", "no rows" },
        { HDR "| none | setpu | start |\n", "unknown state \"setpu\"" },
        { HDR "| none | Setup | start |\n", "unknown state \"Setup\"" },
        { HDR "| invalid | setup | start |\n", "unknown state \"invalid\"" },
        { "| from | to | when |\n| none | setup | start |\n", "separator" },
        { HDR "| none | setup |\n", "2 cells" },
        { HDR "| none | setup | start | extra |\n", "4 cells" },
        { HDR "| none | setup |  |\n", "nothing under \"when\"" },
        { HDR "| none | setup | a |\n| none | setup | b |\n", "listed twice" },
        { HDR "| none | setup | a |\n\n" HDR "| setup | failed | b |\n", "two `| from" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        DocTable t;
        g_autoptr(GError) err = NULL;
        if (parse_doc_table(bad[i].text, &t, &err))
            g_error("case %zu parsed, but must fail with \"%s\"", i, bad[i].needle);
        if (!strstr(err->message, bad[i].needle))
            g_error("case %zu: \"%s\" does not say \"%s\"", i, err->message, bad[i].needle);
    }

    /* Alignment colons are markdown too; the table ends at the first line
     * that is not a row, and a row-like line after that is not an edge. */
    DocTable t;
    g_autoptr(GError) err = NULL;
    g_assert_true(parse_doc_table("text\n\n| from | to | when |\n|:---|---:|:---:|\n"
                                  "| none | setup | start |\n|setup|failed|x|\n\n"
                                  "| active | device | not in the table |\n",
                                  &t, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(t.n_edges, ==, 2);
    g_assert_true(t.allowed[RDMIG_STATE_NONE][RDMIG_STATE_SETUP]);
    g_assert_true(t.allowed[RDMIG_STATE_SETUP][RDMIG_STATE_FAILED]);
    g_assert_false(t.allowed[RDMIG_STATE_ACTIVE][RDMIG_STATE_DEVICE]);
#undef HDR
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
    /* g_test_init() has taken its own options; what is left is ours. */
    if (argc > 1 && argv[1][0] != '-')
        doc_path = argv[1];
    g_test_add_func("/state/names", test_state_names);
    g_test_add_func("/state/doc-parser", test_doc_parser);
    g_test_add_func("/state/transitions", test_transition_table);
    g_test_add_func("/state/is-final", test_is_final);
    g_test_add_func("/state/consistency", test_table_consistency);
    g_test_add_func("/state/session/destination-cancel", test_destination_cancel);
    g_test_add_func("/state/session/source-connect-fails", test_source_connect_fails);
    return g_test_run();
}

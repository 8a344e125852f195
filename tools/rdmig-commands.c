/* SPDX-License-Identifier: MIT */
/*
 * The commands: recv and send (a guest and its session, run to the end and
 * reported), demo (both, as two processes), and recover, send --resume,
 * status and cancel (clients of a running send's or recv's monitor).
 */
#define G_LOG_DOMAIN "rdmig"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/random.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rdmig-commands.h"
#include "rdmig-guest.h"
#include "rdmig-monitor.h"
#include "rdmig-options.h"
#include "rdmig-report.h"
#include "rdmig-run.h"

/* ------------------------------------------------------------------ send and recv */

/* The session for @role with the options' params, and the guest it moves in
 * @gu, declared to it.  NULL, with the reason on stderr, on bad options. */
static RdmigSession *session_setup(RdmigRole role, const char *what, CliGuest *gu)
{
    g_autoptr(GError) err = NULL;
    RdmigParams p;
    if (!cli_options_build_params(&p, &err))
        goto fail;
    gu->g = cli_options_build_guest(role == RDMIG_ROLE_SOURCE ? &p : NULL, &err);
    if (!gu->g)
        goto fail;
    gu->destination = role == RDMIG_ROLE_DESTINATION;
    if (cli_opt.tls_creds && cli_opt.psk_file) {
        g_set_error(&err, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "--tls-creds and --psk-file: give one kind of credentials, not both");
        goto fail;
    }
    gu->s = rdmig_session_new(role, &p, &err);
    if (gu->s && cli_opt.tls_creds &&
        !rdmig_session_set_credentials(gu->s, RDMIG_CREDENTIALS_X509, cli_opt.tls_creds, &err))
        goto fail;
    if (gu->s && cli_opt.psk_file &&
        !rdmig_session_set_credentials(gu->s, RDMIG_CREDENTIALS_PSK, cli_opt.psk_file, &err))
        goto fail;
    gu->blocks = cli_opt.blocks;
    if (gu->s && role == RDMIG_ROLE_SOURCE && cli_opt.dirty_method &&
        !strcmp(cli_opt.dirty_method, "guest"))
        rdmig_session_set_dirty_ops(gu->s, &cli_guest_dirty_ops, gu);
    if (gu->s && cli_guest_add_blocks(gu->s, gu->g, cli_opt.blocks, &err))
        return gu->s;
fail:
    fprintf(stderr, "rdmig %s: %s\n", what, err->message);
    rdmig_session_free(gu->s);
    g_clear_pointer(&gu->g, sg_free);
    gu->s = NULL;
    return NULL;
}

/* Ends what session_setup() made.  The session's thread touches guest RAM:
 * it ends (rdmig_session_free() joins it) before the RAM goes. */
static void session_teardown(CliGuest *gu)
{
    rdmig_session_free(gu->s);
    sg_oracle_free(gu->oracle);
    sg_free(gu->g);
}

/* The guest check (when @gu is given), then the report and exit status. */
static int finish(CliReport *r, CliGuest *gu, int run_ms)
{
    if (gu)
        cli_guest_check(gu, r, run_ms, cli_opt.dirty_rate, cli_opt.oracle_dir);
    return cli_report_finish(r, cli_opt.json);
}

/* The destination after start(): progress, then the report. */
static int recv_run(RdmigSession *s, CliGuest *gu, CliMonitor *mon)
{
    g_autoptr(GError) err = NULL;
    cli_run_set_session(s);
    if (cli_opt.print_address) {
        printf("%s\n", rdmig_session_listen_address(s));
        fflush(stdout);
    }
    if (!cli_opt.quiet)
        fprintf(stderr, "rdmig recv: listening on %s\n", rdmig_session_listen_address(s));
    cli_run_loop(s, mon, cli_opt.quiet);
    CliReport r = { .role = "destination", .blocks = cli_opt.blocks,
                    .memory = sg_memory_name(sg_memory(gu->g)) };
    r.ok = rdmig_session_wait(s, &err);
    cli_run_set_session(NULL);
    cli_monitor_close(mon);
    r.error = err;
    rdmig_session_get_stats(s, &r.st);
    if (!r.ok && r.st.postcopy) {
        /* Guest threads may wait for pages that will not come: stopping
         * them would wait forever, and letting them run would read zeros. */
        _exit(finish(&r, NULL, 0));
    }
    cli_guest_report_threads(gu, &r);
    return finish(&r, r.ok ? gu : NULL, cli_opt.run_after_ms);
}

int cli_cmd_recv(void)
{
    if (!cli_opt.address) {
        fprintf(stderr, "rdmig recv: --listen ADDR is required (e.g. --listen 0.0.0.0:4444)\n");
        return CLI_EXIT_USAGE;
    }
    CliGuest gu = { 0 };
    RdmigSession *s = session_setup(RDMIG_ROLE_DESTINATION, "recv", &gu);
    if (!s)
        return CLI_EXIT_USAGE;
    if (cli_opt.oracle_dir)
        gu.oracle = sg_oracle_new(gu.g);
    rdmig_session_set_guest_ops(s, &cli_guest_ops, &gu);
    if (cli_opt.prealloc)
        sg_prealloc(gu.g);
    int rc = CLI_EXIT_FAILED;
    g_autoptr(GError) err = NULL;
    /* The monitor first: a migration no one could recover or cancel does
     * not start. */
    CliMonitor *mon = cli_monitor_open(cli_opt.monitor, "recv", cli_opt.quiet, &err);
    if (mon && rdmig_session_start(s, cli_opt.address, &err)) {
        rc = recv_run(s, &gu, mon);
    } else {
        fprintf(stderr, "rdmig recv: %s\n", err->message);
        if (g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_INVALID))
            rc = CLI_EXIT_USAGE;
        cli_monitor_close(mon);
    }
    session_teardown(&gu);
    return rc;
}

static gpointer cancel_timer(gpointer data)
{
    RdmigSession *s = data;
    g_usleep((gulong)cli_opt.cancel_after_ms * 1000);
    rdmig_session_cancel(s);
    return NULL;
}

/* The source from start() to its report. */
static int source_run(RdmigSession *s, CliGuest *gu, const char *address)
{
    g_autoptr(GError) err = NULL;
    cli_run_set_session(s);
    CliReport r = { .role = "source", .blocks = cli_opt.blocks,
                    .memory = sg_memory_name(sg_memory(gu->g)) };
    GThread *timer = NULL;
    /* The monitor first: a migration no one could recover or cancel does
     * not start. */
    CliMonitor *mon = cli_monitor_open(cli_opt.monitor, "send", cli_opt.quiet, &err);
    if (mon && rdmig_session_start(s, address, &err)) {
        if (cli_opt.cancel_after_ms > 0)
            timer = g_thread_new("cancel", cancel_timer, s);
        cli_run_loop(s, mon, cli_opt.quiet);
        r.ok = rdmig_session_wait(s, &err);
        cli_monitor_close(mon);
    } else {
        cli_monitor_close(mon);
        fprintf(stderr, "rdmig send: %s\n", err->message);
        if (g_error_matches(err, RDMIG_ERROR, RDMIG_ERROR_INVALID)) {
            /* A malformed address or monitor path is bad usage, not a
             * failed migration. */
            cli_run_set_session(NULL);
            return CLI_EXIT_USAGE;
        }
    }
    cli_run_set_session(NULL);
    if (timer)
        g_thread_join(timer);
    r.error = err;
    rdmig_session_get_stats(s, &r.st);
    /* Completed: the oracle's record of the memory at the final stop. */
    if (r.ok && gu->oracle &&
        !cli_guest_save_oracle(gu->oracle, cli_opt.oracle_dir, "source.oracle", &r))
        r.ok = false;
    cli_guest_report_threads(gu, &r);
    /* After a completion the guest is the destination's: nothing to check here.
     * After a failure it must be running here, with every page intact. */
    return finish(&r, r.ok ? NULL : gu, cli_opt.stop_after_failure_ms);
}

/* Source side of send and demo. */
static int run_source(const char *address)
{
    CliGuest gu = { 0 };
    RdmigSession *s = session_setup(RDMIG_ROLE_SOURCE, "send", &gu);
    if (!s)
        return CLI_EXIT_USAGE;
    sg_fill(gu.g);
    if (cli_opt.oracle_dir)
        gu.oracle = sg_oracle_new(gu.g);
    sg_resume(gu.g);
    rdmig_session_set_guest_ops(s, &cli_guest_ops, &gu);
    int rc = source_run(s, &gu, address);
    session_teardown(&gu);
    return rc;
}

/* ------------------------------------------------------------------ monitor clients */

/* @command (with the argument "address" when @address is set) to the
 * monitor of --monitor: the reply's return value, or NULL after saying why
 * on stderr (*rc: the exit status then). */
static JsonNode *monitor_command(const char *what, const char *command, const char *address,
                                 int *rc)
{
    if (!cli_opt.monitor) {
        fprintf(stderr, "rdmig %s: --monitor PATH is required (the running send or recv "
                "printed it: 'monitor on PATH')\n", what);
        *rc = CLI_EXIT_USAGE;
        return NULL;
    }
    g_autoptr(JsonObject) args = NULL;
    if (address) {
        args = json_object_new();
        json_object_set_string_member(args, "address", address);
    }
    g_autoptr(GError) err = NULL;
    JsonNode *ret = cli_monitor_call(cli_opt.monitor, command, args, &err);
    if (!ret) {
        fprintf(stderr, "rdmig %s: %s\n", what, err->message);
        *rc = CLI_EXIT_FAILED;
    }
    return ret;
}

/* recover and send --resume: prints the address the monitor now uses. */
static int monitor_recover(const char *what)
{
    int rc = CLI_EXIT_OK;
    g_autoptr(JsonNode) ret = monitor_command(what, "recover", cli_opt.address, &rc);
    if (!ret)
        return rc;
    JsonObject *o = JSON_NODE_HOLDS_OBJECT(ret) ? json_node_get_object(ret) : NULL;
    JsonNode *addr = o ? json_object_get_member(o, "address") : NULL;
    if (!addr || !JSON_NODE_HOLDS_VALUE(addr) || json_node_get_value_type(addr) != G_TYPE_STRING) {
        fprintf(stderr, "rdmig %s: the monitor's reply names no address\n", what);
        return CLI_EXIT_FAILED;
    }
    printf("%s\n", json_node_get_string(addr));
    return CLI_EXIT_OK;
}

int cli_cmd_recover(void)
{
    if (!cli_opt.address) {
        fprintf(stderr, "rdmig recover: --listen ADDR is required (where the source is to "
                "reconnect, e.g. --listen 0.0.0.0:4445)\n");
        return CLI_EXIT_USAGE;
    }
    return monitor_recover("recover");
}

int cli_cmd_status(void)
{
    int rc = CLI_EXIT_OK;
    g_autoptr(JsonNode) ret = monitor_command("status", "status", NULL, &rc);
    if (!ret)
        return rc;
    g_autofree char *line = json_to_string(ret, FALSE);
    printf("%s\n", line);
    return CLI_EXIT_OK;
}

/* A monitor command without arguments or answer: "ok", or why not. */
static int plain_command(const char *name)
{
    int rc = CLI_EXIT_OK;
    g_autoptr(JsonNode) ret = monitor_command(name, name, NULL, &rc);
    if (!ret)
        return rc;
    printf("ok\n");
    return CLI_EXIT_OK;
}

int cli_cmd_cancel(void) { return plain_command("cancel"); }

int cli_cmd_pause(void) { return plain_command("pause"); }

int cli_cmd_send(void)
{
    if (cli_opt.resume) {
        if (!cli_opt.address) {
            fprintf(stderr, "rdmig send --resume: --to ADDR is required (the address 'rdmig "
                    "recover' printed)\n");
            return CLI_EXIT_USAGE;
        }
        return monitor_recover("send --resume");
    }
    if (!cli_opt.address) {
        fprintf(stderr, "rdmig send: --to ADDR is required (the address 'rdmig recv' listens "
                "on)\n");
        return CLI_EXIT_USAGE;
    }
    return run_source(cli_opt.address);
}

/* ------------------------------------------------------------------ demo */

/* `@self recv` on loopback with this process's guest and timing options. */
static GPtrArray *demo_recv_argv(const char *self)
{
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(argv, g_strdup(self));
    g_ptr_array_add(argv, g_strdup("recv"));
    g_ptr_array_add(argv, g_strdup("--listen"));
    g_ptr_array_add(argv, g_strdup("127.0.0.1:0"));
    g_ptr_array_add(argv, g_strdup("--print-address"));
    g_ptr_array_add(argv, g_strdup("--quiet"));
    g_ptr_array_add(argv, g_strdup_printf("--ram-size=%s", cli_options_ram_size()));
    g_ptr_array_add(argv, g_strdup_printf("--blocks=%d", cli_opt.blocks));
    g_ptr_array_add(argv, g_strdup_printf("--vcpus=%d", cli_opt.vcpus));
    g_ptr_array_add(argv, g_strdup_printf("--dirty-rate=%g", cli_opt.dirty_rate));
    g_ptr_array_add(argv, g_strdup_printf("--run-after-ms=%d", cli_opt.run_after_ms));
    g_ptr_array_add(argv, g_strdup_printf("--keepalive-ms=%d", cli_opt.keepalive_ms));
    g_ptr_array_add(argv, g_strdup_printf("--peer-timeout-ms=%d", cli_opt.peer_timeout_ms));
    if (cli_opt.transport)
        g_ptr_array_add(argv, g_strdup_printf("--transport=%s", cli_opt.transport));
    if (cli_opt.oracle_dir)
        g_ptr_array_add(argv, g_strdup_printf("--oracle=%s", cli_opt.oracle_dir));
    if (cli_opt.rezero_percent)
        g_ptr_array_add(argv, g_strdup_printf("--rezero-percent=%d", cli_opt.rezero_percent));
    if (cli_opt.memory_str)
        g_ptr_array_add(argv, g_strdup_printf("--memory=%s", cli_opt.memory_str));
    if (cli_opt.prealloc)
        g_ptr_array_add(argv, g_strdup("--prealloc"));
    if (cli_opt.json)
        g_ptr_array_add(argv, g_strdup("--json"));
    if (cli_opt.tls_creds)
        g_ptr_array_add(argv, g_strdup_printf("--tls-creds=%s", cli_opt.tls_creds));
    if (cli_opt.psk_file)
        g_ptr_array_add(argv, g_strdup_printf("--psk-file=%s", cli_opt.psk_file));
    g_ptr_array_add(argv, NULL);
    return argv;
}

/* A key for this demo's two processes only: 32 random bytes in a keys.psk
 * that only this user can read, in a directory of its own (removed after).
 * The demo then shows what an operator runs: an authenticated migration. */
static char *demo_one_time_key(GError **error)
{
    g_autofree char *dir = g_dir_make_tmp("rdmig-demo-XXXXXX", error);
    if (!dir)
        return NULL;
    uint8_t key[32];
    if (getrandom(key, sizeof(key), 0) != sizeof(key)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "getrandom: %s",
                    g_strerror(errno));
        return NULL;
    }
    GString *line = g_string_new("rdmig-demo:");
    for (size_t i = 0; i < sizeof(key); i++)
        g_string_append_printf(line, "%02x", key[i]);
    g_string_append_c(line, '\n');
    memset(key, 0, sizeof(key));
    char *path = g_build_filename(dir, "keys.psk", NULL);
    bool ok = g_file_set_contents_full(path, line->str, (gssize)line->len,
                                       G_FILE_SET_CONTENTS_CONSISTENT, 0600, error);
    memset(line->str, 0, line->len);
    g_string_free(line, TRUE);
    if (!ok) {
        rmdir(dir);
        g_free(path);
        return NULL;
    }
    return path;
}

static void demo_forget_key(char *path)
{
    g_autofree char *dir = g_path_get_dirname(path);
    unlink(path);
    rmdir(dir);
    g_free(path);
}

/* The demo proper: the destination as a child process, the source here. */
static int demo_run(const char *self)
{
    g_autoptr(GPtrArray) argv = demo_recv_argv(self);
    GPid pid;
    int out_fd;
    g_autoptr(GError) err = NULL;
    if (!g_spawn_async_with_pipes(NULL, (char **)argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                                  NULL, NULL, &pid, NULL, &out_fd, NULL, &err)) {
        fprintf(stderr, "rdmig demo: cannot start the destination process: %s\n", err->message);
        return CLI_EXIT_FAILED;
    }
    FILE *out = fdopen(out_fd, "r");
    char line[256];
    if (!fgets(line, sizeof(line), out)) {
        fprintf(stderr, "rdmig demo: the destination process did not start listening\n");
        fclose(out);
        waitpid(pid, NULL, 0);
        return CLI_EXIT_FAILED;
    }
    g_strchomp(line);
    if (!cli_opt.quiet)
        fprintf(stderr, "rdmig demo: destination (pid %d) listening on %s; migrating a %s guest "
                "dirtying %g MiB/s\n", pid, line, cli_options_ram_size(), cli_opt.dirty_rate);
    int rc = run_source(line);
    int status = 0;
    if (rc != CLI_EXIT_OK && rc != CLI_EXIT_USAGE)
        kill(pid, SIGTERM); /* it may still wait for a source that gave up */
    /* Relay the destination's report after ours. */
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), out)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(out);
    waitpid(pid, &status, 0);
    int drc = WIFEXITED(status) ? WEXITSTATUS(status) : CLI_EXIT_FAILED;
    return rc ? rc : drc;
}

int cli_cmd_demo(const char *self)
{
    g_autoptr(GError) err = NULL;
    char *one_time_key = NULL;
    if (!cli_opt.tls_creds && !cli_opt.psk_file && !cli_opt.insecure) {
        one_time_key = demo_one_time_key(&err);
        if (!one_time_key) {
            fprintf(stderr, "rdmig demo: cannot make a one-time key: %s\n", err->message);
            return CLI_EXIT_FAILED;
        }
        cli_opt.psk_file = one_time_key;
    }
    int rc = demo_run(self);
    if (one_time_key) {
        cli_opt.psk_file = NULL;
        demo_forget_key(one_time_key);
    }
    return rc;
}

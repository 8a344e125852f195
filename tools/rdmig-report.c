/* SPDX-License-Identifier: MIT */
/*
 * The progress line, the pause hint and the final report (table or JSON).
 * The JSON report's members, in this order, are what tests and scripts read:
 * change a name or a type only together with them.
 */
#define G_LOG_DOMAIN "rdmig"

#include <sys/resource.h>

#include "rdmig-json.h"
#include "rdmig-options.h"
#include "rdmig-report.h"

char *cli_human_bytes(double b)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    return g_strdup_printf(i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

/* ------------------------------------------------------------------ while it runs */

void cli_report_progress(const RdmigStats *st, bool tty)
{
    g_autofree char *rem = cli_human_bytes((double)st->remaining_bytes);
    g_autofree char *bw = cli_human_bytes((double)st->bandwidth);
    g_autofree char *tot = cli_human_bytes((double)st->bytes_transferred);
    /* Before the first estimate the expected downtime is "infinite". */
    fprintf(stderr, "%s%-10s round %-3" G_GUINT64_FORMAT " remaining %-10s "
            "sent %-10s bandwidth %s/s  expected downtime %" G_GUINT64_FORMAT " ms%s",
            tty ? "\r" : "", rdmig_state_str(st->state), st->rounds, rem, tot, bw,
            st->expected_downtime_ms > 1000000 ? 0 : st->expected_downtime_ms,
            tty ? "   " : "\n");
}

void cli_report_pause_hint(const RdmigStats *st, bool destination, const char *monitor_path)
{
    const char *mon = monitor_path ? monitor_path : "PATH";
    if (st->state == RDMIG_STATE_PRECOPY_PAUSED) {
        fprintf(stderr, "\nrdmig: precopy paused: %s\n", st->pause_reason);
        if (destination)
            fprintf(stderr, "rdmig: waiting for the source to resume.\n"
                    "  recover:  rdmig recover --monitor %s --listen ADDR\n", mon);
        else
            fprintf(stderr, "rdmig: the guest runs on here.\n"
                    "  resume:   rdmig send --resume --monitor %s --to ADDR\n", mon);
        fprintf(stderr, "  give up:  rdmig cancel --monitor %s\n", mon);
        return;
    }
    fprintf(stderr, "\nrdmig: postcopy paused: %s\n", st->pause_reason);
    if (destination)
        fprintf(stderr, "rdmig: the guest runs here; threads touching the %" G_GUINT64_FORMAT
                " missing pages wait.\n  recover:  rdmig recover --monitor %s --listen ADDR\n"
                "  give up:  rdmig cancel --monitor %s (those pages are lost)\n",
                st->pages_missing, mon, mon);
    else
        fprintf(stderr, "rdmig: the guest stays stopped here with its memory.\n"
                "  resume:   rdmig send --resume --monitor %s --to ADDR (after 'rdmig recover' "
                "on the destination)\n", mon);
}

/* ------------------------------------------------------------------ JSON */

/* Who, how it ended, and the precopy counters (QEMU's query-migrate). */
static void json_migration(JsonBuilder *b, const CliReport *r)
{
    const RdmigStats *s = &r->st;
    const GError *e = r->error;
    cli_json_string(b, "role", r->role);
    cli_json_string(b, "result", rdmig_state_str(s->state));
    cli_json_int(b, "blocks", (uint64_t)MAX(r->blocks, 0));
    cli_json_string(b, "error", e ? e->message : "");
    cli_json_string(b, "error_code", e && e->domain == RDMIG_ERROR
                                         ? rdmig_error_code_str((RdmigErrorCode)e->code) : "");
    cli_json_string(b, "oracle", r->oracle);
    cli_json_string(b, "transport", s->transport);
    cli_json_string(b, "dirty_method", s->dirty_method);
    cli_json_int(b, "data_connections", s->data_connections);
    cli_json_string(b, "control_security", s->control_security);
    cli_json_int(b, "hook_threads", (uint64_t)MAX(r->hook_threads, 0));
    cli_json_int(b, "hooks_off_thread", (uint64_t)MAX(r->hooks_off_thread, 0));
    cli_json_int(b, "hooks_unpaired", (uint64_t)MAX(r->hooks_unpaired, 0));
    cli_json_int(b, "total_time_ms", s->total_time_ms);
    cli_json_int(b, "setup_time_ms", s->setup_time_ms);
    cli_json_int(b, "downtime_ms", s->downtime_ms);
    /* Before the first estimate the expected downtime is "infinite". */
    cli_json_int(b, "expected_downtime_ms",
                 s->expected_downtime_ms > 1000000000 ? 0 : s->expected_downtime_ms);
    cli_json_int(b, "verify_time_ms", s->verify_time_ms);
    cli_json_int(b, "rounds", s->rounds);
    cli_json_int(b, "dirty_sync_count", s->dirty_sync_count);
    cli_json_int(b, "dirty_pages_rate", s->dirty_pages_rate);
    cli_json_int(b, "bytes_transferred", s->bytes_transferred);
    cli_json_int(b, "bandwidth", s->bandwidth);
    cli_json_int(b, "first_round_bandwidth", s->first_round_bandwidth);
    cli_json_int(b, "throughput", s->throughput);
    cli_json_int(b, "pages_total", s->pages_total);
    cli_json_int(b, "pages_sent", s->pages_sent);
    cli_json_int(b, "pages_zero", s->pages_zero);
    cli_json_int(b, "pages_untouched", s->pages_untouched);
    cli_json_int(b, "remaining_bytes", s->remaining_bytes);
    cli_json_int(b, "pages_verified", s->pages_verified);
    cli_json_int(b, "pages_verified_background", s->pages_verified_background);
    cli_json_int(b, "verify_mismatches", s->verify_mismatches);
    cli_json_double(b, "migration_cpu_s", s->cpu_time_us / 1e6);
    cli_json_double(b, "data_cpu_s", s->data_cpu_us / 1e6);
    cli_json_int(b, "registration_time_ms", s->registration_time_ms);
    cli_json_bool(b, "forced_switchover", s->forced_switchover);
}

/* "guest": the synthetic guest's own check after the run. */
static void json_guest(JsonBuilder *b, const CliReport *r)
{
    json_builder_set_member_name(b, "guest");
    json_builder_begin_object(b);
    cli_json_bool(b, "checked", r->guest_checked);
    cli_json_bool(b, "intact", r->guest_ok);
    cli_json_bool(b, "running", r->guest_running);
    cli_json_int(b, "pages_checked", r->guest.pages_checked);
    cli_json_int(b, "pages_bad", r->guest.pages_bad);
    cli_json_int(b, "first_bad_page", r->guest.first_bad_page);
    cli_json_int(b, "pages_written", r->guest.pages_written);
    cli_json_int(b, "pages_rezeroed", r->guest.pages_rezeroed);
    cli_json_int(b, "reader_reads", r->guest.reader_reads);
    cli_json_int(b, "reader_max_us", r->guest.reader_max_us);
    cli_json_string(b, "device_state_probe",
                    r->device_state_probe ? r->device_state_probe : "none");
    cli_json_string(b, "memory", r->memory ? r->memory : "none");
    cli_json_int(b, "huge_bytes", r->huge_bytes);
    json_builder_end_object(b);
}

/* "postcopy": pulls, faults, their service times and who waited. */
static void json_postcopy(JsonBuilder *b, const RdmigStats *s)
{
    json_builder_set_member_name(b, "postcopy");
    json_builder_begin_object(b);
    cli_json_bool(b, "active", s->postcopy);
    cli_json_int(b, "pages_discarded", s->pages_discarded);
    cli_json_int(b, "pages_on_demand", s->pages_on_demand);
    cli_json_int(b, "pages_background", s->pages_background);
    cli_json_int(b, "pages_zero_copy", s->pages_zero_copy);
    cli_json_int(b, "faults", s->faults);
    cli_json_int(b, "faults_zero", s->faults_zero);
    cli_json_double(b, "blocktime_ms", s->blocktime_us / 1e3);
    cli_json_int(b, "fault_median_us", s->fault_median_us);
    cli_json_int(b, "fault_p99_us", s->fault_p99_us);
    cli_json_double(b, "source_cpu_s", s->postcopy_cpu_us / 1e6);
    json_builder_set_member_name(b, "fault_hist");
    json_builder_begin_array(b);
    for (int i = 0; i < RDMIG_FAULT_HIST_BUCKETS; i++)
        json_builder_add_int_value(b, (gint64)MIN(s->fault_hist[i], (uint64_t)G_MAXINT64));
    json_builder_end_array(b);
    json_builder_set_member_name(b, "threads");
    json_builder_begin_array(b);
    for (uint32_t i = 0; i < MIN(s->blocktime_threads, RDMIG_BLOCKTIME_THREADS); i++) {
        json_builder_begin_object(b);
        cli_json_int(b, "tid", s->blocktime_per_thread[i].tid);
        cli_json_int(b, "blocktime_us", s->blocktime_per_thread[i].us);
        json_builder_end_object(b);
    }
    json_builder_end_array(b);
    json_builder_end_object(b);
}

/* "recovery": pauses and what they cost. */
static void json_recovery(JsonBuilder *b, const RdmigStats *s)
{
    json_builder_set_member_name(b, "recovery");
    json_builder_begin_object(b);
    cli_json_int(b, "pauses", s->pauses);
    cli_json_int(b, "recover_failures", s->recover_failures);
    cli_json_int(b, "paused_ms", s->paused_ms);
    cli_json_int(b, "last_recovery_ms", s->last_recovery_ms);
    cli_json_int(b, "pages_missing", s->pages_missing);
    cli_json_string(b, "pause_reason", s->pause_reason);
    json_builder_end_object(b);
}

char *cli_report_json(const CliReport *r)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_migration(b, r);
    json_guest(b, r);
    json_postcopy(b, &r->st);
    json_recovery(b, &r->st);
    cli_json_double(b, "cpu_user_s", r->cpu_user);
    cli_json_double(b, "cpu_sys_s", r->cpu_sys);
    json_builder_end_object(b);
    return cli_json_to_line(b);
}

/* ------------------------------------------------------------------ table */

/* The postcopy and registration lines, when they apply. */
static void table_postcopy(const RdmigStats *s, FILE *f)
{
    if (s->postcopy) {
        fprintf(f, "  %-22s %" G_GUINT64_FORMAT " pages discarded, %" G_GUINT64_FORMAT
                " pulled on demand, %" G_GUINT64_FORMAT " in the background\n", "postcopy",
                s->pages_discarded, s->pages_on_demand, s->pages_background);
        if (s->faults)
            fprintf(f, "  %-22s %" G_GUINT64_FORMAT " faults (%" G_GUINT64_FORMAT " zero-filled "
                    "here), blocktime %.1f ms, pulled-page median %" G_GUINT64_FORMAT " us, p99 %"
                    G_GUINT64_FORMAT " us\n", "guest faults", s->faults, s->faults_zero,
                    s->blocktime_us / 1e3, s->fault_median_us, s->fault_p99_us);
        if (s->postcopy_cpu_us)
            fprintf(f, "  %-22s %.3f s\n", "source CPU in postcopy", s->postcopy_cpu_us / 1e6);
    }
    if (s->registration_time_ms)
        fprintf(f, "  %-22s %" G_GUINT64_FORMAT " ms\n", "memory registration",
                s->registration_time_ms);
}

void cli_report_table(const CliReport *r, FILE *f)
{
    const RdmigStats *s = &r->st;
    g_autofree char *bytes = cli_human_bytes((double)s->bytes_transferred);
    g_autofree char *thr = cli_human_bytes((double)s->throughput);
    g_autofree char *bw = cli_human_bytes((double)s->bandwidth);
    fprintf(f, "%s: %s\n", r->role, rdmig_state_str(s->state));
    if (r->error)
        fprintf(f, "  %-22s %s\n", "error", r->error->message);
    fprintf(f, "  %-22s %s x%u\n", "transport", s->transport[0] ? s->transport : "-",
            s->data_connections);
    if (s->control_security[0])
        fprintf(f, "  %-22s %s\n", "control channel", s->control_security);
    if (s->dirty_method[0])
        fprintf(f, "  %-22s %s\n", "dirty tracking", s->dirty_method);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " ms (setup %" G_GUINT64_FORMAT " ms)\n",
            "total time", s->total_time_ms, s->setup_time_ms);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " ms (of which verify %" G_GUINT64_FORMAT " ms)\n",
            "downtime", s->downtime_ms, s->verify_time_ms);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT " dirty syncs)%s\n",
            "rounds", s->rounds, s->dirty_sync_count,
            s->forced_switchover ? ", forced switchover" : "");
    fprintf(f, "  %-22s %s\n", "transferred", bytes);
    fprintf(f, "  %-22s %s/s (last round %s/s)\n", "throughput", thr, bw);
    fprintf(f, "  %-22s %" G_GUINT64_FORMAT " total, %" G_GUINT64_FORMAT " sent, %"
            G_GUINT64_FORMAT " zero, %" G_GUINT64_FORMAT " never touched\n", "pages",
            s->pages_total, s->pages_sent, s->pages_zero, s->pages_untouched);
    if (s->pages_verified || s->verify_mismatches)
        fprintf(f, "  %-22s %" G_GUINT64_FORMAT " verified (%" G_GUINT64_FORMAT " of them before "
                "the downtime), %" G_GUINT64_FORMAT " mismatched\n", "verification",
                s->pages_verified, s->pages_verified_background, s->verify_mismatches);
    if (r->guest_checked)
        fprintf(f, "  %-22s %s, %s, %" G_GUINT64_FORMAT " pages checked, %" G_GUINT64_FORMAT
                " bad\n", "guest", r->guest_running ? "running" : "stopped",
                r->guest_ok ? "intact" : "CORRUPT", r->guest.pages_checked, r->guest.pages_bad);
    fprintf(f, "  %-22s %.2f s migration threads (moving pages %.2f s); process %.2f s user, "
            "%.2f s system\n", "cpu", s->cpu_time_us / 1e6, s->data_cpu_us / 1e6, r->cpu_user,
            r->cpu_sys);
    table_postcopy(s, f);
}

/* ------------------------------------------------------------------ the end */

static void cpu_times(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int cli_report_finish(CliReport *r, bool json)
{
    cpu_times(&r->cpu_user, &r->cpu_sys);
    if (json) {
        g_autofree char *j = cli_report_json(r);
        printf("%s\n", j);
    } else {
        cli_report_table(r, stdout);
    }
    /* The caller may _exit() next: the report must be out. */
    fflush(stdout);
    g_clear_pointer(&r->oracle, g_free);
    if (r->ok && (!r->guest_checked || r->guest_ok))
        return CLI_EXIT_OK;
    if (r->st.state == RDMIG_STATE_CANCELLED)
        return CLI_EXIT_CANCELLED;
    return CLI_EXIT_FAILED;
}

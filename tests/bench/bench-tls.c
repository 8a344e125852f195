/* SPDX-License-Identifier: MIT */
/*
 * bench-tls: what encrypting the TCP data path with TLS would cost, beside
 * plain TCP in the same run (docs/BENCHMARKS.md, "TLS cost").
 *
 *   bench-tls [--mib N] [--runs R]
 *
 * One TCP connection over loopback, one sending and one receiving thread, N
 * MiB (default 1024) in 256 KiB writes; alternately in clear and through a
 * TLS 1.3 session (PSK, the cipher GnuTLS negotiates by default, and with
 * AES-256-GCM pinned).  Reports for each the median of R runs (default 3)
 * of throughput and of CPU seconds per GiB (both threads, both ends).  The
 * receive side of a migration copies into guest RAM as well; this measures
 * the transport alone.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "transport/address.h"
#include "tests/unit/tls-pair.h"
#include "transport/tls.h"

#define CHUNK (256u << 10)

typedef struct {
    int fd;
    RdmigTls *tls;
    uint64_t bytes;
    bool sender;
    bool ok;
} Side;

static double now_s(void) { return g_get_monotonic_time() / 1e6; }

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static bool wait_for(Side *s, short ev)
{
    struct pollfd p = { .fd = s->fd, .events = ev };
    return poll(&p, 1, 10000) > 0;
}

static gpointer run_side(gpointer data)
{
    Side *s = data;
    uint8_t *buf = g_malloc(CHUNK);
    memset(buf, 0x5a, CHUNK);
    uint64_t done = 0;
    s->ok = true;
    while (done < s->bytes && s->ok) {
        size_t want = (size_t)MIN((uint64_t)CHUNK, s->bytes - done);
        ssize_t r;
        if (s->tls)
            r = s->sender ? rdmig_tls_send(s->tls, buf, want) : rdmig_tls_recv(s->tls, buf, want);
        else
            r = s->sender ? send(s->fd, buf, want, MSG_DONTWAIT)
                          : recv(s->fd, buf, want, MSG_DONTWAIT);
        if (r > 0) {
            done += (uint64_t)r;
            continue;
        }
        bool again = s->tls ? r == -EAGAIN : (r < 0 && errno == EAGAIN);
        short ev = s->tls ? rdmig_tls_wants(s->tls) : (s->sender ? POLLOUT : POLLIN);
        s->ok = again && wait_for(s, ev);
    }
    g_free(buf);
    return NULL;
}

static RdmigTlsCreds *client_creds, *server_creds;

/* One transfer of @bytes, in clear or over TLS (@priority NULL: GnuTLS's
 * choice); throughput in MiB/s and CPU s per GiB. */
static bool transfer(bool tls, uint64_t bytes, double *mibs, double *cpu_per_gib, char **cipher)
{
    char *bound = NULL;
    GError *err = NULL;
    int lfd = rdmig_socket_listen("127.0.0.1:0", &bound, &err);
    if (lfd < 0)
        return false;
    int cfd = rdmig_socket_connect(bound, 5000, -1, &err);
    int afd = cfd >= 0 ? rdmig_socket_accept(lfd, 5000, -1, &err) : -1;
    g_free(bound);
    close(lfd);
    if (afd < 0) {
        g_printerr("bench-tls: %s\n", err->message);
        return false;
    }
    Side snd = { .fd = cfd, .bytes = bytes, .sender = true };
    Side rcv = { .fd = afd, .bytes = bytes };
    if (tls) {
        snd.tls = rdmig_tls_new(client_creds, cfd, NULL, &err);
        rcv.tls = rdmig_tls_new(server_creds, afd, NULL, &err);
        /* Over loopback TCP a step may find nothing yet: a few rounds more. */
        bool done = false;
        for (int round = 0; round < 100 && !done; round++)
            done = tls_pair_handshake(snd.tls, cfd, rcv.tls, afd, NULL, NULL);
        if (!done) {
            g_printerr("bench-tls: handshake failed\n");
            return false;
        }
        *cipher = rdmig_tls_describe(snd.tls);
    }
    double t0 = now_s(), c0 = cpu_s();
    GThread *ts = g_thread_new("send", run_side, &snd);
    GThread *tr = g_thread_new("recv", run_side, &rcv);
    g_thread_join(ts);
    g_thread_join(tr);
    double dt = now_s() - t0, dc = cpu_s() - c0;
    *mibs = bytes / 1048576.0 / dt;
    *cpu_per_gib = dc / (bytes / 1073741824.0);
    rdmig_tls_free(snd.tls);
    rdmig_tls_free(rcv.tls);
    close(cfd);
    close(afd);
    return snd.ok && rcv.ok;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int mib = 1024, runs = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--mib"))
            mib = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
    }
    if (mib < 1 || runs < 1 || runs > 99) {
        fprintf(stderr, "usage: bench-tls [--mib N] [--runs R]\n");
        return 2;
    }
    g_autofree char *dir = g_dir_make_tmp("rdmig-bench-tls-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "keys.psk", NULL);
    g_file_set_contents(path, "bench:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
                        -1, NULL);
    chmod(path, 0600);
    client_creds = rdmig_tls_creds_psk(path, RDMIG_TLS_CLIENT, NULL);
    server_creds = rdmig_tls_creds_psk(path, RDMIG_TLS_SERVER, NULL);
    unlink(path);
    rmdir(dir);
    if (!client_creds || !server_creds)
        return 1;
    uint64_t bytes = (uint64_t)mib << 20;
    double thr[2][99], cpu[2][99];
    char *cipher = NULL;
    for (int r = 0; r < runs; r++)
        for (int tls = 0; tls < 2; tls++)
            if (!transfer(tls, bytes, &thr[tls][r], &cpu[tls][r], &cipher))
                return 1;
    printf("| %d MiB over loopback TCP, median of %d | throughput MiB/s | CPU s per GiB |\n",
           mib, runs);
    printf("|---|---:|---:|\n");
    for (int tls = 0; tls < 2; tls++) {
        qsort(thr[tls], runs, sizeof(double), cmp);
        qsort(cpu[tls], runs, sizeof(double), cmp);
        printf("| %s | %.0f | %.2f |\n", tls ? cipher : "plain TCP", thr[tls][runs / 2],
               cpu[tls][runs / 2]);
    }
    g_free(cipher);
    rdmig_tls_creds_unref(client_creds);
    rdmig_tls_creds_unref(server_creds);
    return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * Addresses and sockets for the control channel and the TCP backend.  Every
 * failure names the address and the cause an operator can act on (port in
 * use, host unknown, connection refused, timeout).
 */
#define G_LOG_DOMAIN "rdmig-transport"

#include "address.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "rdmig/error.h"

/* HOST and PORT of "HOST:PORT", "[V6]:PORT" or "tcp:..."; *@host allocated. */
static bool address_split(const char *address, char **host, const char **port, GError **error)
{
    if (!address || !*address) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "empty address: expected HOST:PORT");
        return false;
    }
    const char *a = g_str_has_prefix(address, "tcp:") ? address + 4 : address;
    if (a[0] == '[') {
        const char *close = strchr(a, ']');
        if (!close || close[1] != ':') {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "invalid address '%s': expected [IPV6]:PORT", address);
            return false;
        }
        *host = g_strndup(a + 1, close - a - 1);
        *port = close + 2;
        return true;
    }
    const char *colon = strrchr(a, ':');
    if (!colon || colon == a) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "invalid address '%s': expected HOST:PORT", address);
        return false;
    }
    if (memchr(a, ':', colon - a)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "invalid address '%s': write IPv6 addresses as [ADDR]:PORT", address);
        return false;
    }
    *host = g_strndup(a, colon - a);
    *port = colon + 1;
    return true;
}

char *rdmig_address_host(const char *address)
{
    char *host = NULL;
    const char *port;
    return address_split(address, &host, &port, NULL) ? host : NULL;
}

bool rdmig_address_parse(const char *address, bool allow_port0, struct sockaddr_storage *ss,
                         socklen_t *len, GError **error)
{
    g_autofree char *host = NULL;
    const char *port;
    if (!address_split(address, &host, &port, error))
        return false;
    char *end = NULL;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (!*port || *end || errno || p > 65535 || (p == 0 && !allow_port0)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "invalid port '%s' in address '%s': expected a number in %s..65535", port,
                    address, allow_port0 ? "0" : "1");
        return false;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG };
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME) {
        hints.ai_flags &= ~AI_ADDRCONFIG; /* loopback-only hosts have no "configured" v4/v6 */
        rc = getaddrinfo(host, port, &hints, &res);
    }
    if (rc != 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "cannot resolve host '%s' in '%s': %s",
                    host, address, gai_strerror(rc));
        return false;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

bool rdmig_address_is_loopback(const char *address)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!rdmig_address_parse(address, true, &ss, &len, NULL))
        return true;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

char *rdmig_address_format(const struct sockaddr *sa)
{
    char buf[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof(buf));
        /* A link-local address means nothing without its interface. */
        char ifname[IF_NAMESIZE + 1] = "%";
        if (!s6->sin6_scope_id || !if_indextoname(s6->sin6_scope_id, ifname + 1))
            ifname[0] = 0;
        return g_strdup_printf("[%s%s]:%u", buf, ifname, ntohs(s6->sin6_port));
    }
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof(buf));
    return g_strdup_printf("%s:%u", buf, ntohs(s4->sin_port));
}

static void socket_tune(int fd)
{
    int one = 1;
    /* Small control frames and acks must not wait behind Nagle. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int rdmig_socket_listen(const char *address, char **bound, GError **error)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!rdmig_address_parse(address, true, &ss, &len, error))
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "socket for '%s': %s", address,
                    g_strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        int e = errno;
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "cannot listen on '%s': %s%s",
                    address, g_strerror(e),
                    e == EADDRINUSE ? " (another process holds the port; pick another)" :
                    e == EADDRNOTAVAIL ? " (no local interface has that address)" : "");
        return -1;
    }
    if (listen(fd, 64) < 0) {
        int e = errno;
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "cannot listen on '%s': %s",
                    address, g_strerror(e));
        return -1;
    }
    if (bound) {
        struct sockaddr_storage b;
        socklen_t bl = sizeof(b);
        getsockname(fd, (struct sockaddr *)&b, &bl);
        *bound = rdmig_address_format((struct sockaddr *)&b);
    }
    return fd;
}

static bool wait_fd(int fd, short events, int timeout_ms, int cancel_fd, const char *what,
                    GError **error)
{
    struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = cancel_fd, .events = POLLIN } };
    gint64 deadline = timeout_ms < 0 ? -1 : g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    for (;;) {
        int left = -1;
        if (deadline >= 0) {
            gint64 now = g_get_monotonic_time();
            left = now >= deadline ? 0 : (int)((deadline - now + 999) / 1000);
        }
        int n = poll(p, cancel_fd >= 0 ? 2 : 1, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "poll: %s", g_strerror(errno));
            return false;
        }
        if (n == 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "%s: timed out after %d ms", what,
                        timeout_ms);
            return false;
        }
        if (cancel_fd >= 0 && p[1].revents) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CANCELLED, "%s: cancelled", what);
            return false;
        }
        return true;
    }
}

int rdmig_socket_accept(int listen_fd, int timeout_ms, int cancel_fd, GError **error)
{
    for (;;) {
        if (!wait_fd(listen_fd, POLLIN, timeout_ms, cancel_fd, "waiting for a connection", error))
            return -1;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            socket_tune(fd);
            return fd;
        }
        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
            continue;
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "accept: %s", g_strerror(errno));
        return -1;
    }
}

int rdmig_socket_accept_now(int listen_fd, GError **error)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            socket_tune(fd);
            return fd;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "accept: %s", g_strerror(errno));
        return -1;
    }
}

int rdmig_socket_connect(const char *address, int timeout_ms, int cancel_fd, GError **error)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!rdmig_address_parse(address, false, &ss, &len, error))
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "socket: %s", g_strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "cannot connect to '%s': %s", address,
                    g_strerror(e));
        return -1;
    }
    g_autofree char *what = g_strdup_printf("connecting to '%s'", address);
    if (!wait_fd(fd, POLLOUT, timeout_ms, cancel_fd, what, error)) {
        close(fd);
        return -1;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) {
        close(fd);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT, "cannot connect to '%s': %s%s",
                    address, g_strerror(soerr),
                    soerr == ECONNREFUSED ? " (is 'rdmig recv' listening there?)" : "");
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    socket_tune(fd);
    return fd;
}

/* SPDX-License-Identifier: MIT */
/*
 * The monitor socket, server and client; the protocol is in rdmig-monitor.h.
 *
 * The server runs on the main thread between progress lines: it must never
 * wait long on a client, so every read has a deadline and a size bound, and
 * whatever a client sends gets a reply that says what was wrong with it.
 */
#define G_LOG_DOMAIN "rdmig"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "rdmig-json.h"
#include "rdmig-monitor.h"

/* How long the server waits for a client's request line. */
#define REQUEST_TIMEOUT_MS 1000
/* How long a client waits for the reply, and the longest reply it takes. */
#define REPLY_TIMEOUT_MS 10000
#define REPLY_MAX (64 * 1024)

struct CliMonitor {
    int fd;           /* listening socket */
    char *path;       /* its file, removed at close */
    const char *role; /* "send" or "recv", for messages */
    bool quiet;
};

static bool monitor_addr(const char *path, struct sockaddr_un *sa, GError **error)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "monitor path '%s' is too long", path);
        return false;
    }
    strcpy(sa->sun_path, path);
    return true;
}

/* Reads from @fd into @buf (at most @size bytes) until a newline, EOF,
 * @size bytes or @timeout_ms in all.  @what names the text in errors. */
static bool read_line(int fd, char *buf, size_t size, size_t *len, int timeout_ms,
                      const char *what, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    size_t n = 0;
    while (!memchr(buf, '\n', n)) {
        if (n == size) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                        "%s longer than %zu bytes without a newline", what, size);
            return false;
        }
        int left = (int)((deadline - g_get_monotonic_time()) / 1000);
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = left > 0 ? poll(&p, 1, left) : 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER,
                        "no complete %s line within %d ms", what, timeout_ms);
            return false;
        }
        ssize_t got = r > 0 ? read(fd, buf + n, size - n) : -1;
        if (got == 0)
            break; /* EOF ends the line as well */
        if (got < 0) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "reading the %s: %s", what,
                        g_strerror(errno));
            return false;
        }
        n += (size_t)got;
    }
    char *nl = memchr(buf, '\n', n);
    *len = nl ? (size_t)(nl - buf) : n;
    return true;
}

/* @buf[0..@len) as one JSON object, checked to be text a parser may see. */
static JsonParser *parse_object(const char *buf, size_t len, const char *what, GError **error)
{
    if (memchr(buf, 0, len) || !g_utf8_validate(buf, (gssize)len, NULL)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "%s is not UTF-8 text (or holds a NUL byte)", what);
        return NULL;
    }
    g_autoptr(JsonParser) parser = json_parser_new();
    g_autoptr(GError) perr = NULL;
    if (!json_parser_load_from_data(parser, buf, (gssize)len, &perr)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s is not valid JSON: %s", what,
                    perr->message);
        return NULL;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (!root) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s is empty", what);
        return NULL;
    }
    if (!JSON_NODE_HOLDS_OBJECT(root)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "%s is not a JSON object", what);
        return NULL;
    }
    return g_steal_pointer(&parser);
}

/* Member @name of @o if it is a string, else NULL.  (json-glib's own
 * getters complain about a member of another type, which is the other
 * side's mistake, not ours.) */
static const char *string_member(JsonObject *o, const char *name)
{
    JsonNode *n = o ? json_object_get_member(o, name) : NULL;
    if (!n || !JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(n);
}

/* ------------------------------------------------------------------ server: commands */

/* A command's handler: the reply's "return" value, or NULL with @error. */
typedef JsonNode *(*CommandFunc)(RdmigSession *s, JsonObject *args, GError **error);

/* An empty object: the "return" of a command that only acts. */
static JsonNode *empty_return(void)
{
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(n, json_object_new());
    return n;
}

/* {"state", "transport", "remaining_bytes", "pauses", "recover_failures",
 *  "pages_missing", "listen", "pause_reason"}: what an operator needs to
 * decide about a pause. */
static JsonNode *cmd_status(RdmigSession *s, JsonObject *args, GError **error)
{
    (void)args;
    (void)error;
    RdmigStats st;
    rdmig_session_get_stats(s, &st);
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    cli_json_string(b, "state", rdmig_state_str(st.state));
    cli_json_string(b, "transport", st.transport);
    cli_json_int(b, "remaining_bytes", st.remaining_bytes);
    cli_json_int(b, "pauses", st.pauses);
    cli_json_int(b, "recover_failures", st.recover_failures);
    cli_json_int(b, "pages_missing", st.pages_missing);
    cli_json_string(b, "listen", rdmig_session_listen_address(s));
    cli_json_string(b, "pause_reason", st.pause_reason);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

/* {"address"}: destination: listen there for the source; source: resume
 * toward it.  Returns the address in use (a destination's bound port). */
static JsonNode *cmd_recover(RdmigSession *s, JsonObject *args, GError **error)
{
    const char *addr = string_member(args, "address");
    if (!addr) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "recover needs \"arguments\": {\"address\": \"HOST:PORT\"}");
        return NULL;
    }
    if (!rdmig_session_recover(s, addr, error))
        return NULL;
    const char *bound = rdmig_session_listen_address(s);
    fprintf(stderr, "rdmig: recovering via %s\n", bound ? bound : addr);
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    cli_json_string(b, "address", bound ? bound : addr);
    json_builder_end_object(b);
    return json_builder_get_root(b);
}

/* Cancels, or gives up a pause; refused while the guest's memory is split
 * between the hosts. */
static JsonNode *cmd_cancel(RdmigSession *s, JsonObject *args, GError **error)
{
    (void)args;
    if (rdmig_session_cancel_refused(s, error))
        return NULL;
    rdmig_session_cancel(s);
    return empty_return();
}

/* Either side (QMP's migrate-pause): drop the link; both pause. */
static JsonNode *cmd_pause(RdmigSession *s, JsonObject *args, GError **error)
{
    (void)args;
    return rdmig_session_pause(s, error) ? empty_return() : NULL;
}

/* Source: switch to postcopy at the end of this round. */
static JsonNode *cmd_postcopy(RdmigSession *s, JsonObject *args, GError **error)
{
    (void)args;
    return rdmig_session_start_postcopy(s, error) ? empty_return() : NULL;
}

static const struct {
    const char *name;
    const char *args;   /* the argument names it takes, for checks and errors */
    CommandFunc func;
} commands[] = {
    { "status", "", cmd_status },
    { "recover", "address", cmd_recover },
    { "cancel", "", cmd_cancel },
    { "pause", "", cmd_pause },
    { "postcopy", "", cmd_postcopy },
};

/* ------------------------------------------------------------------ server: requests */

/* The request's command and arguments, checked against the table.  Returns
 * its index, or -1 with @error naming what is wrong. */
static int check_request(JsonObject *req, JsonObject **args, GError **error)
{
    g_autoptr(GList) members = json_object_get_members(req);
    for (GList *l = members; l; l = l->next)
        if (strcmp(l->data, "execute") && strcmp(l->data, "arguments")) {
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "unexpected member \"%s\" in "
                        "the request: it has \"execute\" and \"arguments\"", (char *)l->data);
            return -1;
        }
    const char *name = string_member(req, "execute");
    if (!name) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the request needs \"execute\": a command name (status, recover, cancel, "
                    "pause, postcopy)");
        return -1;
    }
    JsonNode *an = json_object_get_member(req, "arguments");
    if (an && !JSON_NODE_HOLDS_OBJECT(an)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL, "\"arguments\" is an object");
        return -1;
    }
    *args = an ? json_node_get_object(an) : NULL;
    for (int i = 0; i < (int)G_N_ELEMENTS(commands); i++) {
        if (strcmp(name, commands[i].name))
            continue;
        g_autoptr(GList) given = *args ? json_object_get_members(*args) : NULL;
        for (GList *l = given; l; l = l->next)
            if (strcmp(l->data, commands[i].args)) {
                g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "%s takes no argument "
                            "\"%s\"%s%s", name, (char *)l->data, *commands[i].args ? "; it "
                            "takes " : "", commands[i].args);
                return -1;
            }
        return i;
    }
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID, "unknown command \"%.64s\": the "
                "commands are status, recover, cancel, pause and postcopy", name);
    return -1;
}

/* The reply line to the request in @buf[0..@len). */
static char *answer(RdmigSession *s, const char *buf, size_t len, GError **error)
{
    g_autoptr(JsonParser) parser = parse_object(buf, len, "the request", error);
    if (!parser)
        return NULL;
    JsonObject *args = NULL;
    int i = check_request(json_node_get_object(json_parser_get_root(parser)), &args, error);
    if (i < 0)
        return NULL;
    g_autoptr(JsonNode) ret = commands[i].func(s, args, error);
    if (!ret)
        return NULL;
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "return");
    json_builder_add_value(b, g_steal_pointer(&ret));
    json_builder_end_object(b);
    return cli_json_to_line(b);
}

/* {"error": {"class", "desc"}} for @err. */
static char *error_reply(const GError *err)
{
    g_return_val_if_fail(err != NULL, g_strdup("{\"error\":{\"class\":\"invalid\","
                                               "\"desc\":\"internal error\"}}"));
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    json_builder_set_member_name(b, "error");
    json_builder_begin_object(b);
    cli_json_string(b, "class", err->domain == RDMIG_ERROR
                                    ? rdmig_error_code_str((RdmigErrorCode)err->code)
                                    : rdmig_error_code_str(RDMIG_ERROR_INVALID));
    cli_json_string(b, "desc", err->message);
    json_builder_end_object(b);
    json_builder_end_object(b);
    return cli_json_to_line(b);
}

/* Closing a socket with unread bytes resets it, and the client may lose
 * the reply (say, to a request that was too long): drop what has already
 * arrived, without waiting for more. */
static void discard_unread(int c)
{
    char junk[4096];
    shutdown(c, SHUT_WR);
    for (int i = 0; i < 16 && recv(c, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++) {
    }
}

/* Whether the client on @c may use the monitor: the same user as this
 * process, or root.  The socket's mode already keeps others out; this holds
 * even where a caller's --monitor path sits in a shared directory, or the
 * file's mode was changed.  False with @error naming the refusal. */
static bool client_allowed(int c, GError **error)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH, "permission denied: cannot tell who "
                    "the client is (%s)", g_strerror(errno));
        return false;
    }
    if (cred.uid == geteuid() || cred.uid == 0)
        return true;
    g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_AUTH, "permission denied: this monitor answers "
                "only uid %u and root, not uid %u", (unsigned)geteuid(), (unsigned)cred.uid);
    return false;
}

void cli_monitor_serve(CliMonitor *m, RdmigSession *s)
{
    if (!m)
        return;
    int c = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    char buf[CLI_MONITOR_REQUEST_MAX];
    size_t len = 0;
    g_autoptr(GError) err = NULL;
    g_autofree char *reply = NULL;
    if (!client_allowed(c, &err)) {
        if (!m->quiet)
            fprintf(stderr, "rdmig %s: monitor: %s\n", m->role, err->message);
    } else if (read_line(c, buf, sizeof(buf), &len, REQUEST_TIMEOUT_MS, "request", &err)) {
        reply = answer(s, buf, len, &err);
    }
    if (!reply)
        reply = error_reply(err);
    g_autofree char *out = g_strconcat(reply, "\n", NULL);
    /* A reply fits the socket buffer; a client that went away gets none. */
    if (send(c, out, strlen(out), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* Nothing to tell it. */
    }
    discard_unread(c);
    close(c);
}

/* ------------------------------------------------------------------ server: socket */

/* The directory of default monitor sockets: $XDG_RUNTIME_DIR/rdmig, or
 * /run/rdmig; made mode 0700 if missing, and refused unless it is a
 * directory (not a link) of this user that no one else may enter.  A newly
 * allocated path, or NULL with @error. */
static char *private_dir(GError **error)
{
    const char *xdg = g_getenv("XDG_RUNTIME_DIR");
    g_autofree char *dir = xdg && *xdg == '/' ? g_build_filename(xdg, "rdmig", NULL)
                                              : g_strdup("/run/rdmig");
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE,
                    "cannot make the monitor directory %s: %s (set XDG_RUNTIME_DIR, or give "
                    "--monitor PATH)", dir, g_strerror(errno));
        return NULL;
    }
    struct stat st;
    if (lstat(dir, &st) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "monitor directory %s: %s", dir,
                    g_strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                    "monitor directory %s is not private (%s, owner uid %u, mode %04o): it must "
                    "be a directory of uid %u with mode 0700; fix or remove it, or give "
                    "--monitor PATH", dir, S_ISDIR(st.st_mode) ? "a directory" : "not a directory",
                    (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777), (unsigned)geteuid());
        return NULL;
    }
    return g_steal_pointer(&dir);
}

/* Whether @path is a socket of ours that nobody listens on: what a process
 * killed before it could remove its monitor leaves behind.  With process
 * ids reused, a new process can meet its predecessor's file. */
static bool stale_socket(const char *path, const struct sockaddr_un *sa)
{
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_uid != geteuid())
        return false;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool refused = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 &&
                   errno == ECONNREFUSED;
    close(fd);
    return refused;
}

/* Binds @fd at @path; a stale socket of ours there is replaced, anything
 * else is left alone (it may be another process's monitor). */
static int bind_at(int fd, const char *path, const struct sockaddr_un *sa)
{
    if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
        return 0;
    int e = errno;
    if (e == EADDRINUSE && stale_socket(path, sa) && unlink(path) == 0)
        return bind(fd, (const struct sockaddr *)sa, sizeof(*sa));
    errno = e;
    return -1;
}

/* The socket file at @path, bound, mode 0600, listening; -1 with @error.
 * An existing file is never removed, unless it is a socket of ours that
 * nobody listens on. */
static int listen_at(const char *path, GError **error)
{
    struct sockaddr_un sa;
    if (!monitor_addr(path, &sa, error))
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind_at(fd, path, &sa) < 0) {
        if (errno == EADDRINUSE)
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_INVALID,
                        "monitor socket %s already exists and is not a stale socket of this "
                        "user: another rdmig is using it, or it is another program's file; "
                        "give another --monitor PATH", path);
        else
            g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "monitor socket %s: %s", path,
                        g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* Bound: the file is ours now, and removed again on failure. */
    if (chmod(path, 0600) < 0 || listen(fd, 4) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_RESOURCE, "monitor socket %s: %s", path,
                    g_strerror(errno));
        unlink(path);
        close(fd);
        return -1;
    }
    return fd;
}

CliMonitor *cli_monitor_open(const char *path, const char *role, bool quiet, GError **error)
{
    g_autofree char *p = NULL;
    if (path) {
        p = g_strdup(path);
    } else {
        g_autofree char *dir = private_dir(error);
        if (!dir)
            return NULL;
        g_autofree char *name = g_strdup_printf("%d.sock", (int)getpid());
        p = g_build_filename(dir, name, NULL);
    }
    int fd = listen_at(p, error);
    if (fd < 0)
        return NULL;
    if (!quiet)
        fprintf(stderr, "rdmig %s: monitor on %s\n", role, p);
    CliMonitor *m = g_new0(CliMonitor, 1);
    m->fd = fd;
    m->path = g_steal_pointer(&p);
    m->role = role;
    m->quiet = quiet;
    return m;
}

int cli_monitor_fd(const CliMonitor *m)
{
    return m ? m->fd : -1;
}

const char *cli_monitor_path(const CliMonitor *m)
{
    return m ? m->path : NULL;
}

void cli_monitor_close(CliMonitor *m)
{
    if (!m)
        return;
    close(m->fd);
    unlink(m->path);
    g_free(m->path);
    g_free(m);
}

/* ------------------------------------------------------------------ client */

/* Connects to the monitor at @path; -1 with @error. */
static int client_connect(const char *path, GError **error)
{
    struct sockaddr_un sa;
    if (!monitor_addr(path, &sa, error))
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_CONNECT,
                    "cannot reach the monitor at %s: %s (is the rdmig process running?)", path,
                    g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* {"execute": @command, "arguments": @arguments} as a line. */
static char *request_line(const char *command, JsonObject *arguments)
{
    g_autoptr(JsonBuilder) b = json_builder_new();
    json_builder_begin_object(b);
    cli_json_string(b, "execute", command);
    if (arguments) {
        json_builder_set_member_name(b, "arguments");
        json_builder_add_value(b, json_node_init_object(json_node_alloc(), arguments));
    }
    json_builder_end_object(b);
    g_autofree char *line = cli_json_to_line(b);
    return g_strconcat(line, "\n", NULL);
}

/* The reply's "return" value, or NULL with @error from its "error". */
static JsonNode *reply_value(JsonObject *reply, const char *path, GError **error)
{
    JsonNode *ret = json_object_get_member(reply, "return");
    if (ret)
        return json_node_copy(ret);
    JsonNode *en = json_object_get_member(reply, "error");
    JsonObject *e = en && JSON_NODE_HOLDS_OBJECT(en) ? json_node_get_object(en) : NULL;
    const char *cls = string_member(e, "class");
    const char *desc = string_member(e, "desc");
    if (!cls || !desc) {
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PROTOCOL,
                    "the monitor at %s answered neither \"return\" nor \"error\"", path);
        return NULL;
    }
    /* Back to the code by name, whatever codes this build has (names past
     * the last one are "unknown"); a class it does not know is still the
     * peer's error. */
    int code = RDMIG_ERROR_PEER;
    for (int c = 0; c < 64; c++) {
        const char *name = rdmig_error_code_str((RdmigErrorCode)c);
        if (strcmp(name, "unknown") && !strcmp(cls, name)) {
            code = c;
            break;
        }
    }
    g_set_error_literal(error, RDMIG_ERROR, code, desc);
    return NULL;
}

JsonNode *cli_monitor_call(const char *path, const char *command, JsonObject *arguments,
                           GError **error)
{
    int fd = client_connect(path, error);
    if (fd < 0)
        return NULL;
    g_autofree char *line = request_line(command, arguments);
    size_t len = strlen(line), off = 0;
    int send_errno = 0;
    while (off < len && !send_errno) {
        ssize_t n = send(fd, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            send_errno = n < 0 ? errno : EPIPE;
        else
            off += (size_t)n;
    }
    /* A server that refuses a client answers before reading its request
     * and closes: the send fails, and the reply says why. */
    g_autofree char *buf = g_malloc(REPLY_MAX);
    bool ok = read_line(fd, buf, REPLY_MAX, &len, REPLY_TIMEOUT_MS, "reply", error);
    close(fd);
    if (send_errno && (!ok || !len)) {
        g_clear_error(error);
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "sending to the monitor at %s: %s",
                    path, g_strerror(send_errno));
        return NULL;
    }
    if (ok && !len)
        g_set_error(error, RDMIG_ERROR, RDMIG_ERROR_PEER, "no answer");
    g_autoptr(JsonParser) parser = ok && len ? parse_object(buf, len, "the reply", error) : NULL;
    if (!parser) {
        g_prefix_error(error, "the monitor at %s: ", path);
        return NULL;
    }
    return reply_value(json_node_get_object(json_parser_get_root(parser)), path, error);
}

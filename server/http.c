/* http.c — libmicrohttpd glue: read the request (with limits), call the API, send the answer.
 *
 * A small pool of threads (one epoll loop each, MHD's thread pool) serves every connection: no
 * thread per connection to create, switch between or hold. Nothing may block a pool thread
 * while it waits: a log stream with nothing new suspends its connection
 * (MHD_suspend_connection), and the ticker thread resumes the suspended ones every 200 ms to
 * look again. Bodies over the limit are drained and answered 413 (never cut silently).
 * multipart/form-data goes through MHD's post processor into named parts.
 *
 * Slow clients: MHD closes a connection idle for the idle timeout and refuses connections over
 * the per-address limit at accept; the ticker shuts down (shutdown(2)) every connection whose
 * request line and headers are still incomplete header_timeout_s after it opened or its
 * previous request ended, so one sending a byte now and then cannot keep its place. */
#include "http.h"

#include "api.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define JSON_LIMIT (1u << 20)
#define POST_BUFFER 65536

/* One open connection, for the header deadline (MHD's socket context). */
struct watch {
    int fd;
    double since; /* monotonic seconds: opened, or its previous request ended */
    int waiting;  /* 1 until the request line and headers are complete */
    int shut;     /* 1 once the ticker shut it down */
    struct watch *prev, *next;
};

struct ft_http_server {
    struct MHD_Daemon *mhd;
    struct ft_api *api;
    struct ft_http_limits lim;
    int port;
    pthread_mutex_t mu; /* guards watches, waiting, stop, closing */
    pthread_cond_t cv;
    struct watch *watches;
    struct stream *waiting; /* log streams suspended until the next tick */
    int stop, closing, ticker_started;
    pthread_t ticker;
};

/* Per-connection request state (freed by request_completed). */
struct conn {
    struct ft_http_request req;
    struct MHD_PostProcessor *pp;
    size_t limit, received;
    size_t body_cap;
    int too_large;
    int unauthorized; /* 401 decided from the headers: the body is drained, not kept */
    int drop_body;    /* a GET's body: drained, not kept */
    struct ft_error auth_err;
    int bad_multipart;
    char *path, *ctype, *auth, *idem_key; /* owned copies */
};

const char *ft_http_arg(const struct ft_http_request *req, const char *key)
{
    for (int i = 0; i < req->num_args; i++)
        if (strcmp(req->arg_key[i], key) == 0)
            return req->arg_val[i];
    return NULL;
}

const struct ft_http_part *ft_http_part(const struct ft_http_request *req, const char *name)
{
    for (int i = 0; i < req->num_parts; i++)
        if (strcmp(req->parts[i].name, name) == 0)
            return &req->parts[i];
    return NULL;
}

void ft_http_request_clear(struct ft_http_request *req)
{
    free(req->body);
    req->body = NULL;
    for (int i = 0; i < req->num_parts; i++)
        free(req->parts[i].data);
    req->num_parts = 0;
}

void ft_http_response_clear(struct ft_http_response *resp)
{
    free(resp->body);
    free(resp->file_path);
    resp->body = NULL;
    resp->file_path = NULL;
}

/* ---- reading ---- */

static int append(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 4096;
        while (*len + n + 1 > nc)
            nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    struct conn *c = cls;
    struct ft_http_part *p = NULL;
    (void)kind, (void)filename, (void)content_type, (void)transfer_encoding, (void)off;
    /* MHD passes NULL for a part without name=; a name that p->name would cut could not be
     * told from another one with the same start */
    if (!key || strlen(key) >= sizeof c->req.parts[0].name) {
        c->bad_multipart = 1;
        return MHD_NO;
    }
    for (int i = 0; i < c->req.num_parts; i++)
        if (strcmp(c->req.parts[i].name, key) == 0)
            p = &c->req.parts[i];
    /* a part's chunks come in order (off = bytes before); an offset that does not continue
     * the part is a second part of the same name, which must not be glued onto the first */
    if (p && off != p->len) {
        c->bad_multipart = 1;
        return MHD_NO;
    }
    if (!p) {
        if (c->req.num_parts == FT_HTTP_MAX_PARTS) {
            c->bad_multipart = 1;
            return MHD_NO;
        }
        p = &c->req.parts[c->req.num_parts++];
        memset(p, 0, sizeof *p);
        snprintf(p->name, sizeof p->name, "%s", key);
    }
    if (size && append(&p->data, &p->len, &p->cap, data, size) != 0)
        return MHD_NO;
    if (!p->data && append(&p->data, &p->len, &p->cap, "", 0) != 0)
        return MHD_NO;
    return MHD_YES;
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    struct ft_http_request *req = cls;
    (void)kind;
    if (req->num_args < FT_HTTP_MAX_ARGS) {
        req->arg_key[req->num_args] = key;
        req->arg_val[req->num_args++] = value ? value : "";
    }
    return MHD_YES;
}

/* A copy of request header name (new), or NULL when absent. */
static char *header_copy(struct MHD_Connection *mc, const char *name)
{
    const char *v = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, name);
    return v ? strdup(v) : NULL;
}

static struct conn *conn_new(struct ft_http_server *srv, struct MHD_Connection *mc, const char *url,
                             const char *method)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    const char *ct = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Type");
    c->path = strdup(url);
    c->ctype = ct ? strdup(ct) : NULL;
    c->req.method = method;
    c->req.path = c->path;
    c->req.content_type = c->ctype;
    c->auth = header_copy(mc, "Authorization");
    c->idem_key = header_copy(mc, "Idempotency-Key");
    c->req.authorization = c->auth;
    c->req.idempotency_key = c->idem_key;
    MHD_get_connection_values(mc, MHD_GET_ARGUMENT_KIND, collect_arg, &c->req);
    int upload = strcmp(method, "PUT") == 0 && strncmp(url, "/api/v1/datasets/", 17) == 0;
    c->limit = upload ? srv->lim.max_upload : JSON_LIMIT;
    if (ct && strncasecmp(ct, "multipart/form-data", 19) == 0)
        c->pp = MHD_create_post_processor(mc, POST_BUFFER, on_part, c);
    return c;
}

static void conn_free(struct conn *c)
{
    if (!c)
        return;
    if (c->pp)
        MHD_destroy_post_processor(c->pp);
    ft_http_request_clear(&c->req);
    free(c->path);
    free(c->ctype);
    free(c->auth);
    free(c->idem_key);
    free(c);
}

/* Take one chunk of the body. */
static void consume(struct conn *c, const char *data, size_t size)
{
    c->received += size;
    if (c->unauthorized || c->drop_body)
        return;
    if (c->too_large || c->received > c->limit) {
        c->too_large = 1;
        return;
    }
    if (c->pp) {
        if (MHD_post_process(c->pp, data, size) != MHD_YES)
            c->bad_multipart = 1;
        return;
    }
    if (append(&c->req.body, &c->req.body_len, &c->body_cap, data, size) != 0)
        c->too_large = 1;
}

/* ---- answering ---- */

/* A log stream: one per logstream response (the response's content reader state). */
struct stream {
    struct ft_http_server *srv;
    struct MHD_Connection *mc;
    int64_t run_id, last_seq;
    char *pending; /* bytes not yet handed to MHD */
    size_t len, cap, off;
    double last_sent; /* monotonic seconds of the last bytes handed over */
    int done;
    struct stream *next_waiting;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int terminal(const char *status)
{
    return strcmp(status, "CREATED") != 0 && strcmp(status, "STARTED") != 0;
}

/* Look once: put the new log lines as SSE events into s->pending, or the end event when the
 * run has ended (or the daemon stops), or a keepalive comment after 15 s of silence. Leaves
 * s->pending empty when there is nothing to send yet. Never waits. */
static void stream_fill(struct stream *s)
{
    struct ft_api *api = s->srv->api;
    char status[16] = "";
    ft_store_run_status(api->store, s->run_id, status, NULL, NULL);
    char *lines = ft_store_logs_since(api->store, s->run_id, s->last_seq, &s->last_seq);
    s->len = s->off = 0;
    for (char *p = lines; p && *p;) {
        char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        append(&s->pending, &s->len, &s->cap, "data: ", 6);
        append(&s->pending, &s->len, &s->cap, p, n);
        append(&s->pending, &s->len, &s->cap, "\n\n", 2);
        p += n + (nl ? 1 : 0);
    }
    free(lines);
    if (s->len)
        return;
    if (!status[0] || terminal(status) || (api->stopping && *api->stopping)) {
        char end[64];
        snprintf(end, sizeof end, "event: end\ndata: %s\n\n", status[0] ? status : "GONE");
        append(&s->pending, &s->len, &s->cap, end, strlen(end));
        s->done = 1;
    } else if (mono_now() - s->last_sent >= 15.0) {
        append(&s->pending, &s->len, &s->cap, ": keepalive\n\n", 13);
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct stream *s = cls;
    struct ft_http_server *srv = s->srv;
    (void)pos;
    if (s->off == s->len) {
        if (s->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        stream_fill(s);
    }
    if (s->off == s->len) {
        /* nothing yet: park the connection until the ticker resumes it (MHD allows suspending
         * from a content reader; returning 0 then does not spin) */
        pthread_mutex_lock(&srv->mu);
        if (srv->closing) {
            pthread_mutex_unlock(&srv->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        s->next_waiting = srv->waiting;
        srv->waiting = s;
        MHD_suspend_connection(s->mc);
        pthread_mutex_unlock(&srv->mu);
        return 0;
    }
    size_t n = s->len - s->off < max ? s->len - s->off : max;
    memcpy(buf, s->pending + s->off, n);
    s->off += n;
    s->last_sent = mono_now();
    return (ssize_t)n;
}

/* Resume every suspended log stream. Called without srv->mu held, so no lock of ours is held
 * while MHD takes its own; a parked connection cannot end before it is resumed, and nothing
 * of a stream is touched after its resume. */
static void resume_waiting(struct ft_http_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    struct stream *s = srv->waiting;
    srv->waiting = NULL;
    pthread_mutex_unlock(&srv->mu);
    while (s) {
        struct stream *next = s->next_waiting;
        struct MHD_Connection *mc = s->mc;
        s->next_waiting = NULL;
        MHD_resume_connection(mc);
        s = next;
    }
}

static void stream_free(void *cls)
{
    struct stream *s = cls;
    struct ft_http_server *srv = s->srv;
    pthread_mutex_lock(&srv->mu); /* MHD frees a response only with its connection running */
    for (struct stream **pp = &srv->waiting; *pp; pp = &(*pp)->next_waiting) {
        if (*pp == s) {
            *pp = s->next_waiting;
            break;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    free(s->pending);
    free(s);
}

static struct MHD_Response *make_response(struct ft_http_server *srv, struct MHD_Connection *mc,
                                          struct ft_http_response *r)
{
    if (r->kind == FT_BODY_FILE) {
        int fd = open(r->file_path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0)
            return MHD_create_response_from_fd((uint64_t)st.st_size, fd);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (r->kind == FT_BODY_LOGSTREAM) {
        struct stream *s = calloc(1, sizeof *s);
        if (!s)
            return NULL;
        s->srv = srv;
        s->mc = mc;
        s->run_id = r->run_id;
        s->last_sent = mono_now();
        return MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, s,
                                                 stream_free);
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
    if (resp)
        r->body = NULL; /* MHD owns it now */
    return resp;
}

static enum MHD_Result reply(struct MHD_Connection *mc, struct ft_http_server *srv,
                             struct ft_http_response *r)
{
    struct MHD_Response *resp = make_response(srv, mc, r);
    if (!resp) {
        static const char oom[] =
            "{\"error\":{\"code\":\"internal_error\",\"message\":\"could not build the "
            "response\",\"param\":null}}";
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        r->status = 500;
        r->content_type = "application/json";
    }
    MHD_add_response_header(resp, "Content-Type",
                            r->content_type ? r->content_type : "application/json");
    if (r->allow[0])
        MHD_add_response_header(resp, "Allow", r->allow);
    if (r->kind == FT_BODY_LOGSTREAM)
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
    if (r->status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer realm=\"finetunerd\"");
    if (r->replayed)
        MHD_add_response_header(resp, "Idempotent-Replayed", "true");
    enum MHD_Result ret = MHD_queue_response(mc, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *mc, struct ft_http_server *srv,
                                  enum ft_err code, const char *param, const char *msg)
{
    struct ft_error err;
    struct ft_http_response r = {0};
    ft_error_set(&err, code, param, "%s", msg);
    r.status = ft_err_http_status(code);
    r.content_type = "application/json";
    r.body = ft_api_error_body(&err);
    r.body_len = r.body ? strlen(r.body) : 0;
    enum MHD_Result ret = reply(mc, srv, &r);
    ft_http_response_clear(&r);
    return ret;
}

/* ---- slow clients ---- */

/* done = 1: mc's request headers are complete; 0: its request ended, the next one's deadline
 * starts now. */
static void watch_headers_done(struct ft_http_server *srv, struct MHD_Connection *mc, int done)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct watch *w = ci ? ci->socket_context : NULL;
    if (!w)
        return;
    pthread_mutex_lock(&srv->mu);
    w->waiting = !done;
    if (!done)
        w->since = mono_now();
    pthread_mutex_unlock(&srv->mu);
}

/* MHD_OPTION_NOTIFY_CONNECTION: register a new connection, forget a closed one. MHD notifies
 * CLOSED before it closes the socket, so the ticker never shuts down a reused descriptor. */
static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct ft_http_server *srv = cls;
    struct watch *w = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci || !(w = calloc(1, sizeof *w)))
            return; /* not watched: the idle timeout still applies */
        w->fd = ci->connect_fd;
        w->since = mono_now();
        w->waiting = 1;
        pthread_mutex_lock(&srv->mu);
        w->next = srv->watches;
        if (w->next)
            w->next->prev = w;
        srv->watches = w;
        pthread_mutex_unlock(&srv->mu);
        *socket_context = w;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && w) {
        pthread_mutex_lock(&srv->mu);
        if (w->prev)
            w->prev->next = w->next;
        else
            srv->watches = w->next;
        if (w->next)
            w->next->prev = w->prev;
        pthread_mutex_unlock(&srv->mu);
        free(w);
        *socket_context = NULL;
    }
}

/* Every 200 ms: resume the suspended log streams, and shut down the connections past their
 * header deadline (when there is one). */
static void *ticker_main(void *arg)
{
    struct ft_http_server *srv = arg;
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_mutex_lock(&srv->mu);
        if (!srv->stop)
            pthread_cond_timedwait(&srv->cv, &srv->mu, &ts);
        int stop = srv->stop;
        double now = mono_now();
        for (struct watch *w = srv->watches; w && srv->lim.header_timeout_s; w = w->next) {
            if (!w->waiting || w->shut || now - w->since < srv->lim.header_timeout_s)
                continue;
            w->shut = 1;
            shutdown(w->fd, SHUT_RDWR);
            ft_log(FT_LOG_INFO, "http",
                   "closed a connection whose request headers were not complete within %u s",
                   srv->lim.header_timeout_s);
        }
        pthread_mutex_unlock(&srv->mu);
        resume_waiting(srv);
        if (stop)
            return NULL;
    }
}

/* MHD_OPTION_EXTERNAL_LOGGER: libmicrohttpd's messages (a refused connection over a limit, a
 * client gone mid-request) as the daemon's own log lines, at info. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    ft_log(FT_LOG_INFO, "http", "%s", line);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **state)
{
    struct ft_http_server *srv = cls;
    struct conn *c = *state;
    (void)version;
    if (!c) {
        watch_headers_done(srv, mc, 1);
        c = conn_new(srv, mc, url, method);
        if (!c)
            return MHD_NO;
        *state = c;
        /* who asks is known from the headers: an unknown client's upload is not kept. A GET
         * has no body to keep (one sent anyway is dropped): its check is left to
         * ft_api_handle, inside the request's one read transaction */
        if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
            c->drop_body = 1;
        else
            c->unauthorized = ft_api_authorize(srv->api, &c->req, &c->auth_err) != FT_OK;
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > c->limit)
            c->too_large = 1; /* drain, then answer 413 */
        return MHD_YES;
    }
    if (*upload_size) {
        consume(c, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (c->unauthorized)
        return send_error(mc, srv, c->auth_err.code, c->auth_err.param, c->auth_err.message);
    if (c->too_large) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes",
                 c->limit);
        return send_error(mc, srv, FT_ETOO_LARGE, "body", msg);
    }
    if (c->bad_multipart)
        return send_error(mc, srv, FT_EINVAL, "body",
                          "malformed multipart/form-data body (or more than 4 parts, a "
                          "part without a name or with one over 63 bytes, or two parts of "
                          "the same name)");
    struct ft_http_response r = {0};
    ft_api_handle(srv->api, &c->req, &r);
    ft_log(FT_LOG_DEBUG, "http", "%s %s -> %d", method, url, r.status);
    enum MHD_Result ret = reply(mc, srv, &r);
    ft_http_response_clear(&r);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **state,
                         enum MHD_RequestTerminationCode code)
{
    (void)code;
    watch_headers_done(cls, mc, 0); /* the next request on this connection has the deadline */
    conn_free(*state);
    *state = NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s in place, except %00: a NUL would silently cut the name short, so it stays
 * "%00" and the name check rejects it. Returns the new length. */
static size_t unescape(void *cls, struct MHD_Connection *mc, char *s)
{
    char *w = s;
    (void)cls, (void)mc;
    for (const char *r = s; *r; r++) {
        int hi = r[0] == '%' ? hexval(r[1]) : -1, lo = hi >= 0 ? hexval(r[2]) : -1;
        if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

ft_http_server *ft_http_start(struct ft_api *api, const char *host, int port,
                              const struct ft_http_limits *lim)
{
    struct sockaddr_in addr = {0};
    ft_http_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return NULL;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        ft_log(FT_LOG_ERROR, "http", "invalid --host '%s' (an IPv4 address)", host);
        free(srv);
        return NULL;
    }
    srv->api = api;
    srv->lim = *lim;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    srv->mhd = MHD_start_daemon(
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG,
        (uint16_t)port, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_CONNECTION_TIMEOUT,
        lim->idle_timeout_s, MHD_OPTION_CONNECTION_LIMIT, lim->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, lim->per_ip, MHD_OPTION_UNESCAPE_CALLBACK, unescape,
        NULL, MHD_OPTION_THREAD_POOL_SIZE, lim->threads, MHD_OPTION_END);
    if (!srv->mhd) {
        ft_log(FT_LOG_ERROR, "http", "cannot listen on %s:%d: %s", host, port, strerror(errno));
        ft_http_stop(srv);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : port;
    if (pthread_create(&srv->ticker, NULL, ticker_main, srv) != 0) {
        ft_log(FT_LOG_ERROR, "http", "cannot start the ticker thread");
        ft_http_stop(srv);
        return NULL;
    }
    srv->ticker_started = 1;
    return srv;
}

int ft_http_port(const ft_http_server *srv)
{
    return srv->port;
}

void ft_http_stop(ft_http_server *srv)
{
    if (!srv)
        return;
    /* streams end instead of suspending again; the ticker resumes the parked ones as it
     * exits, so MHD stops with no connection suspended */
    pthread_mutex_lock(&srv->mu);
    srv->closing = 1;
    srv->stop = 1;
    pthread_cond_signal(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    if (srv->ticker_started)
        pthread_join(srv->ticker, NULL);
    if (srv->mhd)
        MHD_stop_daemon(srv->mhd);
    pthread_cond_destroy(&srv->cv);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
}

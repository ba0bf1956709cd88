/* fuzz_multipart.c — multipart/form-data uploads through the real HTTP path: libmicrohttpd's
 * post processor feeding server/http.c's part collection, then the API.
 *
 * Why over a socket: MHD_create_post_processor() (libmicrohttpd 0.9.75) takes a struct
 * MHD_Connection * and reads the boundary from that connection's Content-Type header, so the
 * collection cannot be driven without a connection. The target starts the real server once
 * (ft_http_start on 127.0.0.1, port 0, over a store in a temporary directory) and sends each
 * input as one request on a new loopback connection ("Connection: close"; closed with an RST
 * so no TIME_WAIT piles up).
 *
 * Input: line 1 picks the request ("0": PUT /api/v1/datasets/fz, an IDX upload; "1": the same
 * with ?format=csv; anything else: POST /api/v1/experiments, a JSON route that still collects
 * parts), line 2 is the Content-Type (control characters replaced, so the header stays one
 * line), the rest is the body, sent with its Content-Length.
 *
 * The binary is linked with -Wl,--wrap=ft_api_handle: __wrap_ft_api_handle checks what
 * http.c collected (at most FT_HTTP_MAX_PARTS parts, distinct NUL-terminated names, data
 * NUL-terminated at len within cap) before the real handler runs, and deletes a dataset an
 * input managed to create, so the store stays empty. Checked for every response: a status
 * line within 10 s, and no 5xx. */
#define _XOPEN_SOURCE 700 /* nftw */

#include "api.h"
#include "http.h"
#include "log.h"
#include "store.h"

#include "fuzz_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>

void __real_ft_api_handle(struct ft_api *api, const struct ft_http_request *req,
                          struct ft_http_response *resp);
void __wrap_ft_api_handle(struct ft_api *api, const struct ft_http_request *req,
                          struct ft_http_response *resp);

static struct {
    char dir[256];
    ft_store *store;
    struct ft_api api;
    ft_http_server *srv;
    int port;
} F;

static void check_parts(const struct ft_http_request *req)
{
    FZ_CHECK(req->num_parts >= 0 && req->num_parts <= FT_HTTP_MAX_PARTS);
    for (int i = 0; i < req->num_parts; i++) {
        const struct ft_http_part *p = &req->parts[i];
        FZ_CHECK(memchr(p->name, '\0', sizeof p->name) != NULL);
        FZ_CHECK(p->data && p->len < p->cap && p->data[p->len] == '\0');
        for (int j = 0; j < i; j++)
            FZ_CHECK(strcmp(p->name, req->parts[j].name) != 0);
    }
    if (req->num_parts)
        FZ_CHECK(req->body == NULL);
}

void __wrap_ft_api_handle(struct ft_api *api, const struct ft_http_request *req,
                          struct ft_http_response *resp)
{
    check_parts(req);
    __real_ft_api_handle(api, req, resp);
    if (getenv("FUZZ_VERBOSE")) { /* what each input did, e.g. to check a seed corpus */
        fprintf(stderr, "%s %s: %d parts ->%d %.200s\n", req->method, req->path, req->num_parts,
                resp->status, resp->body ? resp->body : "");
        for (int i = 0; i < req->num_parts; i++)
            fprintf(stderr, "  part '%s' %zu bytes\n", req->parts[i].name, req->parts[i].len);
    }
    if (resp->status == 201 && strcmp(req->method, "PUT") == 0) {
        struct ft_http_request del = {.method = "DELETE", .path = req->path};
        struct ft_http_response r = {0};
        __real_ft_api_handle(api, &del, &r);
        FZ_CHECK(r.status == 200);
        ft_http_response_clear(&r);
    }
}

static void stop(void)
{
    ft_http_stop(F.srv);
    ft_store_close(F.store);
    fz_rm_tree(F.dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct ft_error err;
    struct stat st;
    (void)argc, (void)argv;
    ft_log_threshold = FT_LOG_ERROR + 1;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(F.dir, sizeof F.dir, "%s/ft-fuzz-multipart-XXXXXX", base);
    FZ_CHECK(mkdtemp(F.dir));
    FZ_CHECK(ft_store_open(F.dir, &F.store, &err) == FT_OK);
    F.api.store = F.store;
    F.api.max_upload = 1u << 20;
    F.api.max_dataset = 64u << 20;
    struct ft_http_limits lim = {.max_upload = F.api.max_upload,
                                 .threads = 2,
                                 .max_connections = 64,
                                 .per_ip = 64,
                                 .idle_timeout_s = 10,
                                 .header_timeout_s = 10};
    F.srv = ft_http_start(&F.api, "127.0.0.1", 0, &lim);
    FZ_CHECK(F.srv);
    F.port = ft_http_port(F.srv);
    atexit(stop);
    return 0;
}

static int try_connect(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)F.port)};
    struct timeval tv = {10, 0};
    struct linger lg = {1, 0}; /* close() sends RST: no TIME_WAIT per input */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FZ_CHECK(fd >= 0);
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
        return fd;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

/* A new connection to the server. libFuzzer's timer signal may interrupt connect(): then the
 * half-made connection is reset and another one made. */
static int connect_server(void)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = try_connect();
        if (fd >= 0)
            return fd;
        if (errno != EINTR)
            break;
    }
    fprintf(stderr, "connect to 127.0.0.1:%d: %s\n", F.port, strerror(errno));
    abort();
}

/* Send everything; the server may answer (413, 400) and close before the body is all sent. */
static void send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        len -= (size_t)w;
    }
}

/* Read the response until the server closes; returns its status (0 when none came). */
static int read_status(int fd)
{
    char buf[4096];
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fprintf(stderr, "no complete response within 10 s\n");
            abort();
        }
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got == sizeof buf - 1)
            got = 16; /* keep the status line, drop the rest */
    }
    buf[got] = '\0';
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    return status;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const targets[][2] = {{"PUT", "/api/v1/datasets/fz"},
                                             {"PUT", "/api/v1/datasets/fz?format=csv"},
                                             {"POST", "/api/v1/experiments"}};
    struct fz_input in = {data, size};
    char variant[8], ctype[512], head[1024];
    fz_take_line(&in, variant, sizeof variant);
    fz_take_line(&in, ctype, sizeof ctype);
    for (char *c = ctype; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f)
            *c = '_';
    int t = variant[0] == '0' ? 0 : variant[0] == '1' ? 1 : 2;
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     targets[t][0], targets[t][1], ctype, in.n);
    int fd = connect_server();
    send_all(fd, head, (size_t)n);
    send_all(fd, in.p, in.n);
    int status = read_status(fd);
    close(fd);
    if (status < 200 || status >= 500)
        fprintf(stderr, "status %d for %s %s\n", status, targets[t][0], targets[t][1]);
    FZ_CHECK(status >= 200 && status < 500);
    return 0;
}

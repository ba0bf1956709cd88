/* test_limits.c — hostile clients and bodies, end to end against build/finetunerd.
 *
 *  - slow clients: a client that opens connections and trickles its request headers a byte at
 *    a time (slow-loris) is shut down at --header-timeout although it keeps sending; connections
 *    over --max-connections-per-ip from one address are refused while another address (the
 *    whole 127.0.0.0/8 is loopback: sockets bound to 127.0.0.2) is served at once.
 *  - JSON nesting over --max-json-depth is a 400 before any parsing, also for a megabyte of '['.
 *  - two multipart parts of the same name, or a JSON key given twice, are a 400 (not glued
 *    together, not the last one silently).
 * Failing writes are in test_disk_full.c. */
#include "support/daemon.h"
#include "support/http_client.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"

static struct td_daemon D;

/* The slow clients' address: not 127.0.0.1, where td_daemon_start's health checks came from
 * (a closed connection leaves MHD's per-address count a moment later) */
#define SLOW_CLIENT "127.0.0.3"

static void stop_daemon(void)
{
    td_daemon_stop(&D);
}

/* A TCP connection to the daemon from source address src ("127.0.0.1", "127.0.0.2"). */
static int connect_from(const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &a.sin_addr);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0, "bind %s: %s", src, strerror(errno));
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons((uint16_t)D.port)};
    inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&d, sizeof d), 0, "connect: %s", strerror(errno));
    return fd;
}

/* Whether the server closed fd (EOF or reset) within timeout_ms, having sent nothing. */
static int closed_within(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    char b[64];
    ssize_t n = recv(fd, b, sizeof b, 0);
    cr_assert_leq(n, 0, "the server answered instead of closing: %.*s", (int)n, b);
    return 1;
}

/* GET /api/v1/health over a fresh connection from src; returns the HTTP status (0 when the
 * connection was closed without an answer). */
static int health_from(const char *src)
{
    int fd = connect_from(src);
    const char req[] = "GET /api/v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    cr_assert_eq(send(fd, req, sizeof req - 1, MSG_NOSIGNAL), (ssize_t)(sizeof req - 1));
    char buf[256] = "";
    size_t n = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (n < sizeof buf - 1 && poll(&p, 1, 5000) > 0) {
        ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    int status = 0;
    sscanf(buf, "HTTP/1.1 %d", &status);
    return status;
}

/* ---- slow clients ---- */

static void start_slow_daemon(void)
{
    static const char *const args[] = {"--max-connections-per-ip", "4", "--header-timeout", "3",
                                       NULL};
    td_daemon_start(&D, args);
}

TestSuite(slow_clients, .init = start_slow_daemon, .fini = stop_daemon, .timeout = 60);

Test(slow_clients, slow_loris_headers_are_cut_off_at_the_header_timeout)
{
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_from(SLOW_CLIENT);
        const char start[] = "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n";
        cr_assert_eq(send(fds[i], start, sizeof start - 1, MSG_NOSIGNAL),
                     (ssize_t)(sizeof start - 1));
    }
    /* the four keep sending a header byte every 200 ms: never idle, never complete */
    double t0 = td_now_s();
    int open = 4;
    while (open > 0 && td_now_s() - t0 < 8) {
        open = 0;
        for (int i = 0; i < 4; i++) {
            if (fds[i] < 0)
                continue;
            struct pollfd p = {.fd = fds[i], .events = POLLIN};
            if (poll(&p, 1, 0) > 0 || send(fds[i], "X", 1, MSG_NOSIGNAL) != 1) {
                cr_assert(closed_within(fds[i], 0) || 1);
                close(fds[i]);
                fds[i] = -1;
                continue;
            }
            open++;
        }
        td_sleep_ms(200);
    }
    double took = td_now_s() - t0;
    cr_assert_eq(open, 0, "%d slow connection(s) still open after %.1f s", open, took);
    cr_assert_geq(took, 2.5, "closed after %.2f s, before the 3 s header timeout", took);
    cr_assert_lt(took, 6.0, "closed only after %.2f s (header timeout 3 s)", took);
    cr_assert_eq(health_from(SLOW_CLIENT), 200, "the address is served again afterwards");
}

Test(slow_clients, connections_over_the_per_address_limit_are_refused_others_served)
{
    /* five connections from one address with incomplete headers: whichever the daemon accepts
     * last is over the limit of 4 and closed at once, the other four stay open (until the 3 s
     * header timeout) */
    int fds[5], closed = 0;
    const char start[] = "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n";
    for (int i = 0; i < 5; i++) {
        fds[i] = connect_from(SLOW_CLIENT);
        send(fds[i], start, sizeof start - 1, MSG_NOSIGNAL);
    }
    double t0 = td_now_s();
    while (closed == 0 && td_now_s() - t0 < 2.0) {
        for (int i = 0; i < 5; i++) {
            if (fds[i] >= 0 && closed_within(fds[i], 0)) {
                close(fds[i]);
                fds[i] = -1;
                closed++;
            }
        }
        td_sleep_ms(20);
    }
    cr_assert_eq(closed, 1, "%d of 5 connections from one address closed, want the 1 over 4",
                 closed);
    t0 = td_now_s();
    cr_assert_eq(health_from("127.0.0.2"), 200, "another address must be served meanwhile");
    cr_assert_lt(td_now_s() - t0, 3.0);
    for (int i = 0; i < 5; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* ---- JSON nesting, multipart ---- */

static void start_default_daemon(void)
{
    td_daemon_start(&D, NULL);
}

TestSuite(hostile_bodies, .init = start_default_daemon, .fini = stop_daemon, .timeout = 60);

/* POST body to experiments/e/runs; returns the response (caller frees). */
static void post_runs(const char *body, size_t len, struct th_response *r)
{
    int rc =
        th_request("POST", td_url(&D, "/experiments/e/runs"), "application/json", body, len, 30, r);
    cr_assert_eq(rc, 0, "%s", r->error);
}

static const char *error_field(json_t *o, const char *field)
{
    return json_string_value(json_object_get(json_object_get(o, "error"), field));
}

/* {"name": "x", "config": <depth levels of [ ]>} */
static char *nested_body(int depth, size_t *len)
{
    size_t cap = (size_t)depth * 2 + 64, n = 0;
    char *b = malloc(cap);
    n += (size_t)snprintf(b, cap, "{\"name\": \"x\", \"config\": ");
    memset(b + n, '[', (size_t)depth);
    n += (size_t)depth;
    memset(b + n, ']', (size_t)depth);
    n += (size_t)depth;
    b[n++] = '}';
    b[n] = '\0';
    *len = n;
    return b;
}

Test(hostile_bodies, json_nested_deeper_than_the_limit_is_400)
{
    struct th_response r;
    size_t len;
    /* the object plus 31 arrays = 32 levels: within the default limit; fails later, as a bad
     * config, not for its depth */
    char *b = nested_body(31, &len);
    post_runs(b, len, &r);
    free(b);
    json_t *o = th_json(&r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_null(strstr(error_field(o, "message"), "deeper"), "%s", r.body);
    json_decref(o);
    th_response_free(&r);

    b = nested_body(32, &len); /* 33 levels */
    post_runs(b, len, &r);
    free(b);
    o = th_json(&r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_str_eq(error_field(o, "code"), "invalid_argument");
    cr_assert_str_eq(error_field(o, "param"), "body");
    cr_assert_not_null(strstr(error_field(o, "message"), "deeper than 32 levels"), "%s", r.body);
    json_decref(o);
    th_response_free(&r);

    /* brackets inside strings do not count */
    const char in_string[] = "{\"name\": \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}";
    post_runs(in_string, sizeof in_string - 1, &r);
    o = th_json(&r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_null(strstr(error_field(o, "message"), "deeper"), "%s", r.body);
    json_decref(o);
    th_response_free(&r);
}

Test(hostile_bodies, a_megabyte_of_open_brackets_is_a_quick_400)
{
    struct th_response r;
    size_t n = (1u << 20) - 16;
    char *b = malloc(n);
    memset(b, '[', n);
    double t0 = td_now_s();
    post_runs(b, n, &r);
    free(b);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "deeper than 32"), "%s", r.body);
    cr_assert_lt(td_now_s() - t0, 5.0);
    th_response_free(&r);
    cr_assert_eq(health_from("127.0.0.1"), 200);
}

Test(hostile_bodies, two_multipart_parts_of_the_same_name_are_400)
{
    const char body[] =
        "--XyZboundary123\r\nContent-Disposition: form-data; name=\"images\"; "
        "filename=\"a\"\r\n\r\n"
        "AAAA\r\n--XyZboundary123\r\nContent-Disposition: form-data; name=\"images\"; "
        "filename=\"b\"\r\n\r\nBBBB\r\n--XyZboundary123\r\nContent-Disposition: form-data; "
        "name=\"labels\"; filename=\"c\"\r\n\r\nCCCC\r\n--XyZboundary123--\r\n";
    struct th_response r;
    int rc =
        th_request("PUT", td_url(&D, "/datasets/dup"),
                   "multipart/form-data; boundary=XyZboundary123", body, sizeof body - 1, 30, &r);
    cr_assert_eq(rc, 0, "%s", r.error);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "same name"), "%s", r.body);
    th_response_free(&r);
}

Test(hostile_bodies, a_key_given_twice_is_400_not_the_last_one_silently)
{
    const char body[] = "{\"name\": \"twice\", \"config\": {\"model\": {\"name\": \"mlp\"}}, "
                        "\"config\": {}}";
    struct th_response r;
    post_runs(body, sizeof body - 1, &r);
    json_t *o = th_json(&r);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_str_eq(error_field(o, "param"), "body");
    cr_assert_not_null(strstr(error_field(o, "message"), "duplicate"), "%s", r.body);
    json_decref(o);
    th_response_free(&r);
}

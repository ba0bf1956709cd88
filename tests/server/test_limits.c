/* test_limits.c — hostile clients and failing writes, end to end against build/finetunerd.
 *
 *  - slow clients: a client that opens connections and trickles its request headers a byte at
 *    a time (slow-loris) is shut down at --header-timeout although it keeps sending; connections
 *    over --max-connections-per-ip from one address are refused while another address (the
 *    whole 127.0.0.0/8 is loopback: sockets bound to 127.0.0.2) is served at once.
 *  - JSON nesting over --max-json-depth is a 400 before any parsing, also for a megabyte of '['.
 *  - two multipart parts of the same name are a 400, not glued together.
 *  - failing writes: the daemon runs under RLIMIT_FSIZE (a write past it fails with EFBIG, the
 *    same path as a full disk, without needing root or a mount). A dataset too big to store is a
 *    507 insufficient_storage and leaves no dataset and no temporary file; a run whose
 *    checkpoint cannot be written ends FAILED saying so, serves no artifact and leaves no
 *    half-written file; the daemon serves on, and later uploads and runs that fit succeed. */
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"

static struct td_daemon D;

static void stop_daemon(void)
{
    td_daemon_stop(&D);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
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
    static const char *const args[] = {"--max-connections-per-ip", "4", "--header-timeout", "2",
                                       NULL};
    td_daemon_start(&D, args);
}

TestSuite(slow_clients, .init = start_slow_daemon, .fini = stop_daemon, .timeout = 60);

Test(slow_clients, slow_loris_headers_are_cut_off_at_the_header_timeout)
{
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_from("127.0.0.1");
        const char start[] = "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n";
        cr_assert_eq(send(fds[i], start, sizeof start - 1, MSG_NOSIGNAL),
                     (ssize_t)(sizeof start - 1));
    }
    /* the four keep sending a header byte every 200 ms: never idle, never complete */
    double t0 = now_s();
    int open = 4;
    while (open > 0 && now_s() - t0 < 8) {
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
        sleep_ms(200);
    }
    double took = now_s() - t0;
    cr_assert_eq(open, 0, "%d slow connection(s) still open after %.1f s", open, took);
    cr_assert_geq(took, 1.5, "closed after %.2f s, before the 2 s header timeout", took);
    cr_assert_lt(took, 4.0, "closed only after %.2f s (header timeout 2 s)", took);
    cr_assert_eq(health_from("127.0.0.1"), 200, "the address is served again afterwards");
}

Test(slow_clients, connections_over_the_per_address_limit_are_refused_others_served)
{
    int fds[4];
    const char start[] = "GET /api/v1/health HTTP/1.1\r\nHost: t\r\n";
    for (int i = 0; i < 4; i++) {
        fds[i] = connect_from("127.0.0.1");
        cr_assert_eq(send(fds[i], start, sizeof start - 1, MSG_NOSIGNAL),
                     (ssize_t)(sizeof start - 1));
    }
    sleep_ms(200); /* the daemon has accepted the four */
    int extra = connect_from("127.0.0.1");
    cr_assert(closed_within(extra, 1500), "a 5th connection from 127.0.0.1 was not refused");
    close(extra);
    double t0 = now_s();
    cr_assert_eq(health_from("127.0.0.2"), 200, "another address must be served meanwhile");
    cr_assert_lt(now_s() - t0, 3.0);
    for (int i = 0; i < 4; i++)
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
    double t0 = now_s();
    post_runs(b, n, &r);
    free(b);
    cr_assert_eq(r.status, 400, "%s", r.body);
    cr_assert_not_null(strstr(r.body, "deeper than 32"), "%s", r.body);
    cr_assert_lt(now_s() - t0, 5.0);
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

/* ---- failing writes ---- */

#define FSIZE_LIMIT (8L << 20)

/* Start the daemon with RLIMIT_FSIZE = FSIZE_LIMIT (inherited by its workers); this process
 * gets its own limit back at once. */
static void start_small_disk_daemon(void)
{
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = FSIZE_LIMIT;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0, "%s", strerror(errno));
    td_daemon_start(&D, NULL);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
}

TestSuite(failing_writes, .init = start_small_disk_daemon, .fini = stop_daemon, .timeout = 120);

/* How many files under dir (recursively) have infix in their name. */
static int count_leftovers(const char *dir, const char *infix)
{
    int count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            count += count_leftovers(path, infix);
        else if (strstr(e->d_name, infix))
            count++;
    }
    closedir(d);
    return count;
}

static json_t *get_json(const char *path, long status)
{
    struct th_response r;
    cr_assert_eq(th_get(td_url(&D, path), &r), 0, "%s", r.error);
    cr_assert_eq(r.status, status, "GET %s: %ld %s", path, r.status, r.body);
    json_t *o = th_json(&r);
    cr_assert_not_null(o, "%s", r.body);
    th_response_free(&r);
    return o;
}

/* 300 rows of 4 features, 3 labels, as CSV (new string). */
static char *small_csv(size_t *len)
{
    size_t cap = 300 * 64 + 64, n = 0;
    char *b = malloc(cap);
    n += (size_t)snprintf(b, cap, "f1,f2,f3,f4,label\n");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(b + n, cap - n, "%d.%d,%d,%d.5,%d,c%d\n", i % 7, i % 10, i % 3, i % 5,
                              (i * 7) % 11, i % 3);
    *len = n;
    return b;
}

/* Submit run name with an mlp of hidden sizes hidden; 201 expected. */
static void submit(const char *name, const char *hidden)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"name\": \"%s\", \"config\": {\"model\": {\"name\": \"mlp\", \"options\": "
             "{\"hidden_sizes\": %s}}, \"data\": {\"train_data\": \"small\"}, "
             "\"hyper_parameters\": {\"epochs\": 2, \"batch_size\": 60}, \"seed\": 3}}",
             name, hidden);
    struct th_response r;
    post_runs(body, strlen(body), &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    th_response_free(&r);
}

/* Wait (60 s) for run name to end; its status into status, its details returned (new). */
static char *wait_end(const char *name, char *status, size_t cap)
{
    char path[128];
    snprintf(path, sizeof path, "/experiments/e/runs/%s/status", name);
    double t0 = now_s();
    for (;;) {
        json_t *o = get_json(path, 200);
        snprintf(status, cap, "%s", json_string_value(json_object_get(o, "status")));
        const char *d = json_string_value(json_object_get(o, "details"));
        char *details = strdup(d ? d : "");
        json_decref(o);
        if (strcmp(status, "CREATED") != 0 && strcmp(status, "STARTED") != 0)
            return details;
        free(details);
        cr_assert_lt(now_s() - t0, 60, "run %s still %s", name, status);
        sleep_ms(100);
    }
}

Test(failing_writes, a_dataset_that_cannot_be_stored_is_507_and_leaves_nothing)
{
    struct th_response r;
    int rc = th_put_idx_files(td_url(&D, "/datasets/big"), FMNIST_DIR "/train-images-idx3-ubyte.gz",
                              FMNIST_DIR "/train-labels-idx1-ubyte.gz", &r);
    cr_assert_eq(rc, 0, "%s", r.error);
    cr_assert_eq(r.status, 507, "60,000 images (47 MB stored) over an 8 MiB limit: %ld %s",
                 r.status, r.body);
    json_t *o = th_json(&r);
    cr_assert_str_eq(error_field(o, "code"), "insufficient_storage");
    cr_assert_not_null(strstr(error_field(o, "message"), "'big' was not stored"), "%s", r.body);
    cr_assert_null(strstr(r.body, D.data_dir), "the server's paths stay in its log: %s", r.body);
    json_decref(o);
    th_response_free(&r);

    get_json("/datasets/big", 404);
    o = get_json("/datasets", 200);
    cr_assert_eq(json_array_size(json_object_get(o, "datasets")), 0, "%s", json_dumps(o, 0));
    json_decref(o);
    cr_assert_eq(count_leftovers(D.data_dir, ".upload-"), 0, "a temporary upload file was left");
    cr_assert_eq(count_leftovers(D.data_dir, ".tmp"), 0, "a temporary file was left");

    /* the daemon serves on, and what fits is stored */
    size_t len;
    char *csv = small_csv(&len);
    rc = th_request("PUT", td_url(&D, "/datasets/small"), "text/csv", csv, len, 30, &r);
    free(csv);
    cr_assert_eq(r.status, 201, "%s", r.body);
    th_response_free(&r);
}

Test(failing_writes, a_run_whose_checkpoint_cannot_be_written_fails_and_serves_no_file)
{
    struct th_response r;
    size_t len;
    char *csv = small_csv(&len);
    int rc = th_request("PUT", td_url(&D, "/datasets/small"), "text/csv", csv, len, 30, &r);
    free(csv);
    cr_assert_eq(rc, 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "%s", r.body);
    th_response_free(&r);

    /* 4 -> 4096 -> 1024: 4.2 M parameters, 17 MB as float32 (and its Adam state): over 8 MiB */
    submit("huge", "[4096, 1024]");
    char status[32];
    char *details = wait_end("huge", status, sizeof status);
    cr_assert_str_eq(status, "FAILED", "%s", details);
    cr_assert_not_null(strstr(details, "File too large"), "the cause must be said: %s", details);
    free(details);
    json_t *o = get_json("/experiments/e/runs/huge/artifact", 409);
    json_decref(o);
    cr_assert_eq(count_leftovers(D.data_dir, ".tmp"), 0, "a half-written file was left");
    cr_assert_eq(count_leftovers(D.data_dir, "resume.safetensors"), 0);
    cr_assert_eq(count_leftovers(D.data_dir, "model.safetensors"), 0);

    /* a run that fits, after the failure: the data directory and database still work */
    submit("tiny", "[16, 8]");
    details = wait_end("tiny", status, sizeof status);
    cr_assert_str_eq(status, "FINISHED", "%s", details);
    free(details);
    o = get_json("/experiments/e/runs", 200);
    cr_assert_eq(json_array_size(json_object_get(o, "runs")), 2);
    json_decref(o);
}

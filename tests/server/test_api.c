/* test_api.c — the REST API in-process: hand-built requests into ft_api_handle() over a real
 * store in a temporary directory.
 *
 * Every route's happy path and its errors, each error checked for its status and the exact
 * body shape {"error": {"code", "message", "param"}}. No scheduler runs here, so submitted
 * runs stay CREATED (which is what the cancel/delete/conflict cases need). Each test ends by
 * closing everything and, under ASan, asking LeakSanitizer for leaks. */
#include "api.h"
#include "http.h"
#include "log.h"
#include "store.h"
#include "support/daemon.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

static struct {
    char dir[64];
    ft_store *store;
    struct ft_api api;
    int wakes;
    char msg[1024]; /* message of the last expect_error() */
} E;

static void count_wake(void *ctx)
{
    (*(int *)ctx)++;
}

static void setup(void)
{
    struct ft_error err;
    memset(&E, 0, sizeof E);
    ft_log_threshold = FT_LOG_WARN;
    snprintf(E.dir, sizeof E.dir, "/tmp/ft-test-api-XXXXXX");
    cr_assert_not_null(mkdtemp(E.dir));
    cr_assert_eq(ft_store_open(E.dir, &E.store, &err), FT_OK, "%s", err.message);
    E.api.store = E.store;
    E.api.max_upload = 1u << 30;
    E.api.wake = count_wake;
    E.api.wake_ctx = &E.wakes;
}

/* Only cleans up: Criterion 2.4.1 does not fail a test on an assert in its fini. */
static void teardown(void)
{
    ft_store_close(E.store);
    E.store = NULL;
    td_remove_tree(E.dir);
}

/* The last statement of every test: close the store, then (ASan builds) assert that nothing the
 * test allocated is still unreachable. */
static void finish(void)
{
    ft_store_close(E.store);
    E.store = NULL;
#if defined(__SANITIZE_ADDRESS__)
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "LeakSanitizer found leaks (see above)");
#endif
}

TestSuite(api, .init = setup, .fini = teardown);

/* ---- requests ---- */

/* s with every ' turned into " (JSON literals without escapes), in one of 4 static buffers. */
static const char *q(const char *s)
{
    static char bufs[4][4096];
    static int next;
    char *b = bufs[next];
    next = (next + 1) % 4;
    snprintf(b, sizeof bufs[0], "%s", s);
    for (char *p = b; *p; p++)
        if (*p == '\'')
            *p = '"';
    return b;
}

/* Split target's "?a=b&c=d" into req's arguments (pointing into buf). */
static void parse_query(char *buf, struct ft_http_request *req)
{
    char *qs = strchr(buf, '?');
    if (!qs)
        return;
    *qs++ = '\0';
    while (qs && *qs && req->num_args < FT_HTTP_MAX_ARGS) {
        char *amp = strchr(qs, '&');
        if (amp)
            *amp++ = '\0';
        char *eq = strchr(qs, '=');
        if (eq)
            *eq++ = '\0';
        req->arg_key[req->num_args] = qs;
        req->arg_val[req->num_args++] = eq ? eq : "";
        qs = amp;
    }
}

/* One request (target = path with an optional query string; body NULL = none; parts copied).
 * resp is zeroed first; the caller clears it with ft_http_response_clear(). */
static void request_parts(const char *method, const char *target, const char *ctype,
                          const char *body, const struct ft_http_part *parts, int nparts,
                          struct ft_http_response *resp)
{
    struct ft_http_request req = {0};
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", target);
    parse_query(buf, &req);
    req.method = method;
    req.path = buf;
    req.content_type = ctype;
    if (body) {
        req.body = strdup(body);
        req.body_len = strlen(body);
    }
    for (int i = 0; i < nparts; i++) {
        struct ft_http_part *p = &req.parts[req.num_parts++];
        snprintf(p->name, sizeof p->name, "%s", parts[i].name);
        p->data = malloc(parts[i].len + 1);
        memcpy(p->data, parts[i].data, parts[i].len);
        p->data[parts[i].len] = '\0';
        p->len = p->cap = parts[i].len;
    }
    memset(resp, 0, sizeof *resp);
    ft_api_handle(&E.api, &req, resp);
    ft_http_request_clear(&req);
}

static void request(const char *method, const char *target, const char *ctype, const char *body,
                    struct ft_http_response *resp)
{
    request_parts(method, target, ctype, body, NULL, 0, resp);
}

/* Parse a JSON response body; the response is cleared. New reference. */
static json_t *take_json(struct ft_http_response *resp)
{
    json_error_t jerr;
    cr_assert_eq(resp->kind, FT_BODY_BUFFER);
    cr_assert_str_eq(resp->content_type, "application/json");
    json_t *o = json_loadb(resp->body, resp->body_len, 0, &jerr);
    cr_assert_not_null(o, "not JSON (%s): %.*s", jerr.text, (int)resp->body_len, resp->body);
    ft_http_response_clear(resp);
    return o;
}

/* The request must answer status with a JSON body; returns it (new reference). */
static json_t *expect_json(const char *method, const char *target, const char *body, int status)
{
    struct ft_http_response resp;
    request(method, target, body ? "application/json" : NULL, body, &resp);
    cr_assert_eq(resp.status, status, "%s %s: status %d, want %d: %.*s", method, target,
                 resp.status, status, (int)resp.body_len, resp.body ? resp.body : "");
    return take_json(&resp);
}

/* Check resp is the error (status, code, param; param NULL = JSON null); keep the message in
 * E.msg. Clears resp. */
static void check_error(struct ft_http_response *resp, int status, const char *code,
                        const char *param)
{
    cr_assert_eq(resp->status, status, "status %d, want %d: %.*s", resp->status, status,
                 (int)resp->body_len, resp->body ? resp->body : "");
    json_t *o = take_json(resp);
    cr_assert_eq(json_object_size(o), 1, "the error body has only \"error\"");
    json_t *e = json_object_get(o, "error");
    cr_assert(json_is_object(e));
    cr_assert_eq(json_object_size(e), 3, "error has exactly code, message, param");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), code);
    const char *msg = json_string_value(json_object_get(e, "message"));
    cr_assert(msg && msg[0], "the error has a message");
    snprintf(E.msg, sizeof E.msg, "%s", msg);
    json_t *p = json_object_get(e, "param");
    if (param)
        cr_assert_str_eq(json_string_value(p), param, "param (message: %s)", msg);
    else
        cr_assert(json_is_null(p), "param is null");
    json_decref(o);
}

static void expect_error(const char *method, const char *target, const char *body, int status,
                         const char *code, const char *param)
{
    struct ft_http_response resp;
    request(method, target, body ? "application/json" : NULL, body, &resp);
    check_error(&resp, status, code, param);
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static json_int_t jint(json_t *o, const char *key)
{
    cr_assert(json_is_integer(json_object_get(o, key)), "%s is an integer", key);
    return json_integer_value(json_object_get(o, key));
}

/* ---- datasets ---- */

static const char *const CSV3 = "label,a,b\ncat,1,2\ndog,3,4\ncat,5,6\n";

/* PUT a CSV dataset (Content-Type text/csv) and expect 201. */
static void put_csv(const char *name, const char *csv)
{
    char path[256];
    struct ft_http_response resp;
    snprintf(path, sizeof path, "/api/v1/datasets/%s", name);
    request("PUT", path, "text/csv", csv, &resp);
    cr_assert_eq(resp.status, 201, "PUT %s: %d %.*s", path, resp.status, (int)resp.body_len,
                 resp.body);
    json_decref(take_json(&resp));
}

static void check_dataset(json_t *o, const char *name, const char *format, int rows, int dims,
                          int labels)
{
    cr_assert_str_eq(jstr(o, "name"), name);
    cr_assert_str_eq(jstr(o, "format"), format);
    cr_assert_eq(jint(o, "rows"), rows);
    cr_assert_eq(jint(o, "dims"), dims);
    cr_assert_eq(jint(o, "labels"), labels);
    cr_assert_gt(jint(o, "bytes"), 0);
    const char *at = jstr(o, "created_at");
    cr_assert(at && strlen(at) >= 19 && at[4] == '-' && at[10] == 'T', "ISO 8601: %s", at);
}

Test(api, health)
{
    json_t *o = expect_json("GET", "/api/v1/health", NULL, 200);
    cr_assert_str_eq(jstr(o, "status"), "ok");
    cr_assert_str_eq(jstr(o, "version"), "0.1.0");
    json_decref(o);
    finish();
}

Test(api, csv_upload_by_content_type)
{
    struct ft_http_response resp;
    request("PUT", "/api/v1/datasets/pets", "text/csv; charset=utf-8", CSV3, &resp);
    cr_assert_eq(resp.status, 201);
    json_t *o = take_json(&resp);
    check_dataset(o, "pets", "csv", 3, 2, 2);
    json_decref(o);
    finish();
}

Test(api, csv_upload_by_format_argument)
{
    struct ft_http_response resp;
    request("PUT", "/api/v1/datasets/pets?format=csv", NULL, CSV3, &resp);
    cr_assert_eq(resp.status, 201);
    json_t *o = take_json(&resp);
    check_dataset(o, "pets", "csv", 3, 2, 2);
    json_decref(o);
    /* a CSV sent as a multipart file part */
    struct ft_http_part part = {.name = "file", .data = (char *)CSV3, .len = strlen(CSV3)};
    request_parts("PUT", "/api/v1/datasets/pets2?format=csv", "multipart/form-data; boundary=x",
                  NULL, &part, 1, &resp);
    cr_assert_eq(resp.status, 201);
    o = take_json(&resp);
    check_dataset(o, "pets2", "csv", 3, 2, 2);
    json_decref(o);
    finish();
}

Test(api, csv_upload_duplicate_is_409)
{
    struct ft_http_response resp;
    put_csv("pets", CSV3);
    request("PUT", "/api/v1/datasets/pets", "text/csv", CSV3, &resp);
    check_error(&resp, 409, "conflict", "name");
    cr_assert(strstr(E.msg, "pets"), "%s", E.msg);
    finish();
}

/* A bad CSV is 400 param body with a message naming line and column. */
static void expect_bad_csv(const char *csv, const char *where)
{
    struct ft_http_response resp;
    request("PUT", "/api/v1/datasets/bad", "text/csv", csv, &resp);
    check_error(&resp, 400, "invalid_argument", "body");
    cr_assert(strstr(E.msg, where), "message '%s' names '%s'", E.msg, where);
}

Test(api, csv_upload_errors_name_line_and_column)
{
    struct ft_http_response resp;
    expect_bad_csv("label,a,b\ncat,1,2\ndog,3\n", "line 3, column 3");
    expect_bad_csv("label,a,b\ncat,1,2\ndog,3,4,5\n", "line 3, column 4");
    expect_bad_csv("label,a,b\ncat,1,x\n", "line 2, column 3");
    expect_bad_csv("label,a,b\ncat,1,nan\n", "line 2, column 3");
    expect_bad_csv("", "line 1, column 1");
    expect_bad_csv("label,a,b\n", "line 2");
    expect_bad_csv("a,b\n1,2\n", "line 1");
    /* nothing was stored */
    request("GET", "/api/v1/datasets/bad", NULL, NULL, &resp);
    check_error(&resp, 404, "not_found", "dataset");
    finish();
}

Test(api, upload_format_errors)
{
    struct ft_http_response resp;
    request("PUT", "/api/v1/datasets/x?format=xml", "text/csv", CSV3, &resp);
    check_error(&resp, 400, "invalid_argument", "format");
    cr_assert(strstr(E.msg, "xml"), "%s", E.msg);
    request("PUT", "/api/v1/datasets/x", "application/json", CSV3, &resp);
    check_error(&resp, 400, "invalid_argument", "format");
    request("PUT", "/api/v1/datasets/x", NULL, CSV3, &resp);
    check_error(&resp, 400, "invalid_argument", "format");
    finish();
}

Test(api, invalid_dataset_names)
{
    struct ft_http_response resp;
    char longname[160] = "/api/v1/datasets/";
    memset(longname + strlen(longname), 'a', 101);
    request("PUT", "/api/v1/datasets/.hidden", "text/csv", CSV3, &resp);
    check_error(&resp, 400, "invalid_argument", "dataset");
    request("PUT", "/api/v1/datasets/a%20b", "text/csv", CSV3, &resp);
    check_error(&resp, 400, "invalid_argument", "dataset");
    request("PUT", longname, "text/csv", CSV3, &resp);
    check_error(&resp, 400, "invalid_argument", "dataset");
    request("GET", "/api/v1/datasets/bad$name", NULL, NULL, &resp);
    check_error(&resp, 400, "invalid_argument", "dataset");
    request("DELETE", "/api/v1/datasets/.x", NULL, NULL, &resp);
    check_error(&resp, 400, "invalid_argument", "dataset");
    finish();
}

/* ---- IDX ---- */

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Raw IDX images (magic, n x rows x cols u8) into buf; returns the length. */
static size_t idx_images(unsigned char *buf, uint32_t magic, uint32_t n, uint32_t rows,
                         uint32_t cols)
{
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    put_be32(buf + 8, rows);
    put_be32(buf + 12, cols);
    for (uint32_t i = 0; i < n * rows * cols; i++)
        buf[16 + i] = (unsigned char)(i * 37u % 256u);
    return 16 + (size_t)n * rows * cols;
}

/* Raw IDX labels (magic 0x00000801, n labels i % k). */
static size_t idx_labels(unsigned char *buf, uint32_t n, uint32_t k)
{
    put_be32(buf, 0x00000801);
    put_be32(buf + 4, n);
    for (uint32_t i = 0; i < n; i++)
        buf[8 + i] = (unsigned char)(i % k);
    return 8 + (size_t)n;
}

static void put_idx(const char *target, const unsigned char *im, size_t im_len,
                    const unsigned char *lb, size_t lb_len, int nparts,
                    struct ft_http_response *resp)
{
    struct ft_http_part parts[2] = {{.name = "images", .data = (char *)im, .len = im_len},
                                    {.name = "labels", .data = (char *)lb, .len = lb_len}};
    request_parts("PUT", target, "multipart/form-data; boundary=----x", NULL, parts, nparts, resp);
}

Test(api, idx_upload)
{
    unsigned char im[256], lb[64];
    struct ft_http_response resp;
    size_t ni = idx_images(im, 0x00000803, 6, 2, 3);
    size_t nl = idx_labels(lb, 6, 3);
    put_idx("/api/v1/datasets/tiny", im, ni, lb, nl, 2, &resp);
    cr_assert_eq(resp.status, 201, "%.*s", (int)resp.body_len, resp.body);
    json_t *o = take_json(&resp);
    check_dataset(o, "tiny", "idx", 6, 6, 3);
    json_decref(o);
    /* ?format=idx works too */
    put_idx("/api/v1/datasets/tiny2?format=idx", im, ni, lb, nl, 2, &resp);
    cr_assert_eq(resp.status, 201);
    ft_http_response_clear(&resp);
    finish();
}

Test(api, idx_upload_errors)
{
    unsigned char im[256], lb[64];
    struct ft_http_response resp;
    size_t ni = idx_images(im, 0x00000803, 6, 2, 3);
    size_t nl = idx_labels(lb, 6, 3);
    put_idx("/api/v1/datasets/tiny", im, ni, lb, nl, 1, &resp); /* no labels part */
    check_error(&resp, 400, "invalid_argument", "labels");
    put_idx("/api/v1/datasets/tiny", lb, nl, im, ni, 1, &resp); /* a labels-only "images" */
    check_error(&resp, 400, "invalid_argument", "labels");
    size_t bad = idx_images(im, 0x00000802, 6, 2, 3);
    put_idx("/api/v1/datasets/tiny", im, bad, lb, nl, 2, &resp);
    check_error(&resp, 400, "invalid_argument", "images");
    cr_assert(strstr(E.msg, "magic"), "%s", E.msg);
    ni = idx_images(im, 0x00000803, 6, 2, 3);
    nl = idx_labels(lb, 5, 3);
    put_idx("/api/v1/datasets/tiny", im, ni, lb, nl, 2, &resp);
    check_error(&resp, 400, "invalid_argument", "labels");
    cr_assert(strstr(E.msg, "5") && strstr(E.msg, "6"), "%s", E.msg);
    put_idx("/api/v1/datasets/tiny", im, ni - 1, lb, nl, 2, &resp); /* truncated images */
    check_error(&resp, 400, "invalid_argument", "images");
    request("GET", "/api/v1/datasets/tiny", NULL, NULL, &resp);
    check_error(&resp, 404, "not_found", "dataset");
    finish();
}

Test(api, dataset_get_list_delete)
{
    put_csv("b-set", CSV3);
    put_csv("a-set", "label,x\n1,0.5\n2,0.25\n3,1e-3\n4,2\n");
    json_t *o = expect_json("GET", "/api/v1/datasets/a-set", NULL, 200);
    check_dataset(o, "a-set", "csv", 4, 1, 4);
    json_decref(o);
    o = expect_json("GET", "/api/v1/datasets", NULL, 200);
    json_t *list = json_object_get(o, "datasets");
    cr_assert_eq(json_array_size(list), 2);
    cr_assert_str_eq(jstr(json_array_get(list, 0), "name"), "a-set");
    cr_assert_str_eq(jstr(json_array_get(list, 1), "name"), "b-set");
    json_decref(o);
    o = expect_json("DELETE", "/api/v1/datasets/a-set", NULL, 200);
    cr_assert_str_eq(jstr(o, "name"), "a-set");
    cr_assert(json_is_true(json_object_get(o, "deleted")));
    json_decref(o);
    expect_error("GET", "/api/v1/datasets/a-set", NULL, 404, "not_found", "dataset");
    expect_error("DELETE", "/api/v1/datasets/a-set", NULL, 404, "not_found", "dataset");
    expect_error("DELETE", "/api/v1/datasets/never", NULL, 404, "not_found", "dataset");
    o = expect_json("GET", "/api/v1/datasets", NULL, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "datasets")), 1);
    json_decref(o);
    /* the name is free again */
    put_csv("a-set", CSV3);
    finish();
}

/* ---- experiments ---- */

Test(api, experiment_create_is_idempotent)
{
    json_t *o = expect_json("POST", "/api/v1/experiments", q("{'name': 'exp1'}"), 201);
    cr_assert_str_eq(jstr(o, "name"), "exp1");
    cr_assert_eq(jint(o, "num_runs"), 0);
    cr_assert_not_null(jstr(o, "created_at"));
    json_decref(o);
    o = expect_json("POST", "/api/v1/experiments", q("{'name': 'exp1'}"), 200);
    cr_assert_str_eq(jstr(o, "name"), "exp1");
    json_decref(o);
    finish();
}

Test(api, experiment_create_errors)
{
    expect_error("POST", "/api/v1/experiments", q("{'name': 'e', 'color': 'red'}"), 400,
                 "invalid_argument", "color");
    expect_error("POST", "/api/v1/experiments", q("{}"), 400, "invalid_argument", "name");
    expect_error("POST", "/api/v1/experiments", q("{'name': 3}"), 400, "invalid_argument", "name");
    expect_error("POST", "/api/v1/experiments", q("{'name': '.x'}"), 400, "invalid_argument",
                 "name");
    expect_error("POST", "/api/v1/experiments", q("{'name': "), 400, "invalid_argument", "body");
    expect_error("POST", "/api/v1/experiments", q("['e']"), 400, "invalid_argument", "body");
    expect_error("POST", "/api/v1/experiments", NULL, 400, "invalid_argument", "body");
    json_t *o = expect_json("GET", "/api/v1/experiments", NULL, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "experiments")), 0);
    json_decref(o);
    finish();
}

Test(api, experiment_list_get_delete)
{
    json_decref(expect_json("POST", "/api/v1/experiments", q("{'name': 'e1'}"), 201));
    json_decref(expect_json("POST", "/api/v1/experiments", q("{'name': 'e2'}"), 201));
    json_t *o = expect_json("GET", "/api/v1/experiments", NULL, 200);
    json_t *list = json_object_get(o, "experiments");
    cr_assert_eq(json_array_size(list), 2);
    json_decref(o);
    o = expect_json("GET", "/api/v1/experiments/e2", NULL, 200);
    cr_assert_str_eq(jstr(o, "name"), "e2");
    cr_assert_eq(jint(o, "num_runs"), 0);
    json_decref(o);
    expect_error("GET", "/api/v1/experiments/nope", NULL, 404, "not_found", "experiment");
    expect_error("GET", "/api/v1/experiments/.nope", NULL, 400, "invalid_argument", "experiment");
    o = expect_json("DELETE", "/api/v1/experiments/e2", NULL, 200);
    cr_assert_str_eq(jstr(o, "name"), "e2");
    cr_assert(json_is_true(json_object_get(o, "deleted")));
    json_decref(o);
    expect_error("GET", "/api/v1/experiments/e2", NULL, 404, "not_found", "experiment");
    expect_error("DELETE", "/api/v1/experiments/e2", NULL, 404, "not_found", "experiment");
    finish();
}

/* ---- runs ---- */

#define BASE_CONFIG "'model': {'name': 'mlp'}, 'data': {'train_data': 'ds'}"

/* POST a run body to experiment exp; expect 201 and return the run (new reference). */
static json_t *submit(const char *exp, const char *body)
{
    char path[256];
    snprintf(path, sizeof path, "/api/v1/experiments/%s/runs", exp);
    return expect_json("POST", path, q(body), 201);
}

static void expect_submit_error(const char *body, const char *param)
{
    expect_error("POST", "/api/v1/experiments/e/runs", q(body), 400, "invalid_argument", param);
}

Test(api, run_submit_normalises_config)
{
    put_csv("ds", CSV3);
    int wakes = E.wakes;
    json_t *run =
        submit("e", "{'name': 'r1', 'description': 'first', 'config': {" BASE_CONFIG "}}");
    cr_assert_eq(E.wakes, wakes + 1, "submit wakes the scheduler");
    cr_assert_str_eq(jstr(run, "name"), "r1");
    cr_assert_str_eq(jstr(run, "experiment"), "e");
    cr_assert_str_eq(jstr(run, "description"), "first");
    cr_assert_str_eq(jstr(run, "status"), "CREATED");
    cr_assert(json_is_null(json_object_get(run, "details")));
    cr_assert(json_is_null(json_object_get(run, "started_at")));
    cr_assert(json_is_null(json_object_get(run, "finished_at")));
    cr_assert_not_null(jstr(run, "created_at"));
    json_t *cfg = json_object_get(run, "config");
    json_t *hp = json_object_get(cfg, "hyper_parameters");
    json_t *opts = json_object_get(json_object_get(cfg, "model"), "options");
    cr_assert_str_eq(jstr(hp, "optimizer"), "Adam");
    cr_assert_str_eq(jstr(hp, "loss"), "TripletMarginLoss");
    cr_assert_eq(jint(hp, "epochs"), 5);
    cr_assert(json_is_null(json_object_get(hp, "batch_size")), "auto: chosen from the data");
    cr_assert(json_is_null(json_object_get(hp, "scheduler")));
    cr_assert_str_eq(jstr(json_object_get(cfg, "data"), "sampler"), "auto");
    cr_assert_float_eq(json_number_value(json_object_get(hp, "learning_rate")), 1e-3, 1e-12);
    cr_assert_eq(jint(opts, "input_size"), 2, "input_size comes from the dataset");
    cr_assert_eq(json_array_size(json_object_get(opts, "hidden_sizes")), 2);
    cr_assert_str_eq(jstr(json_object_get(cfg, "data"), "train_data"), "ds");
    cr_assert_eq(jint(json_object_get(cfg, "data"), "num_items_per_class"), 4);
    cr_assert_eq(jint(cfg, "seed"), 42);
    cr_assert(json_is_array(json_object_get(cfg, "callbacks")));
    json_decref(run);
    /* the experiment was created and counts the run; an unnamed run gets a name */
    json_t *o = expect_json("GET", "/api/v1/experiments/e", NULL, 200);
    cr_assert_eq(jint(o, "num_runs"), 1);
    json_decref(o);
    run = submit("e", "{'config': {" BASE_CONFIG "}}");
    cr_assert(jstr(run, "name") && strncmp(jstr(run, "name"), "run-", 4) == 0, "%s",
              jstr(run, "name"));
    cr_assert(json_is_null(json_object_get(run, "description")));
    json_decref(run);
    finish();
}

Test(api, run_submit_with_callbacks_and_eval_data)
{
    put_csv("ds", CSV3);
    put_csv("ev", "label,a,b\ncat,0,1\ndog,1,0\n");
    json_t *run = submit(
        "e",
        "{'name': 'full', 'config': {'model': {'name': 'mlp', 'options': {'hidden_sizes': [8]}},"
        " 'data': {'train_data': 'ds', 'eval_data': 'ev'},"
        " 'hyper_parameters': {'optimizer': 'SGD', 'epochs': 2,"
        "   'miner': 'TripletMarginMiner'},"
        " 'callbacks': [{'name': 'EvaluationCallback', 'options': {'query_data': 'ev'}},"
        "  {'name': 'BestModelCheckpoint', 'options': {'monitor': 'val_loss'}},"
        "  {'name': 'EarlyStopping', 'options': {'monitor': 'mlp_precision_at_k',"
        "   'patience': 3}}]}}");
    json_t *cfg = json_object_get(run, "config");
    json_t *hp = json_object_get(cfg, "hyper_parameters");
    cr_assert_str_eq(jstr(hp, "optimizer"), "SGD");
    cr_assert_eq(jint(hp, "epochs"), 2);
    cr_assert_str_eq(jstr(hp, "miner"), "TripletMarginMiner");
    cr_assert_str_eq(jstr(json_object_get(cfg, "data"), "eval_data"), "ev");
    cr_assert_eq(json_array_size(json_object_get(cfg, "callbacks")), 3);
    json_decref(run);
    /* both datasets are now in use */
    expect_error("DELETE", "/api/v1/datasets/ev", NULL, 409, "conflict", "dataset");
    finish();
}

Test(api, runs_the_data_cannot_feed_are_rejected_at_submission)
{
    put_csv("ds", CSV3);
    put_csv("one", "label,a,b\ncat,0,1\ncat,1,0\ncat,1,1\n");
    put_csv("ev", "label,a,b\ncat,0,1\ndog,1,0\n");
    const char *m = "'model': {'name': 'mlp'}";
    char body[512];
    snprintf(body, sizeof body, "{'config': {%s, 'data': {'train_data': 'one'}}}", m);
    expect_submit_error(body, "config.data.train_data");
    snprintf(body, sizeof body,
             "{'config': {%s, 'data': {'train_data': 'ds'}, 'hyper_parameters': {'batch_size': "
             "64}}}",
             m);
    expect_submit_error(body, "config.hyper_parameters.batch_size");
    snprintf(body, sizeof body,
             "{'config': {%s, 'data': {'train_data': 'ds', 'num_items_per_class': 2}, "
             "'hyper_parameters': {'batch_size': 2}}}",
             m);
    expect_submit_error(body, "config.hyper_parameters.batch_size");
    finish();
}

Test(api, run_submit_duplicate_name_is_409)
{
    put_csv("ds", CSV3);
    json_decref(submit("e", "{'name': 'r1', 'config': {" BASE_CONFIG "}}"));
    expect_error("POST", "/api/v1/experiments/e/runs",
                 q("{'name': 'r1', 'config': {" BASE_CONFIG "}}"), 409, "conflict", "name");
    /* the same name in another experiment is fine */
    json_decref(submit("other", "{'name': 'r1', 'config': {" BASE_CONFIG "}}"));
    finish();
}

Test(api, run_submit_body_errors)
{
    put_csv("ds", CSV3);
    expect_submit_error("{'config': ", "body");
    expect_submit_error("[]", "body");
    expect_submit_error("{'config': {" BASE_CONFIG "}, 'priority': 1}", "priority");
    expect_submit_error("{'name': 'r'}", "config");
    expect_submit_error("{'name': '../x', 'config': {" BASE_CONFIG "}}", "name");
    expect_submit_error("{'name': 7, 'config': {" BASE_CONFIG "}}", "name");
    expect_submit_error("{'description': 1, 'config': {" BASE_CONFIG "}}", "description");
    expect_submit_error("{'config': [1]}", "config");
    expect_error("POST", "/api/v1/experiments/.e/runs", q("{'config': {" BASE_CONFIG "}}"), 400,
                 "invalid_argument", "experiment");
    /* nothing was stored */
    expect_error("GET", "/api/v1/experiments/e/runs", NULL, 404, "not_found", "experiment");
    finish();
}

Test(api, run_submit_config_errors)
{
    put_csv("ds", CSV3);
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'epoch': 3}}}",
                        "config.hyper_parameters.epoch");
    cr_assert(strstr(E.msg, "epoch"), "%s", E.msg);
    expect_submit_error("{'config': {" BASE_CONFIG ", 'extra': 1}}", "config.extra");
    expect_submit_error("{'config': {'model': {'name': 'mlp', 'options': {'hidden': [3]}},"
                        " 'data': {'train_data': 'ds'}}}",
                        "config.model.options.hidden");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'epochs': '5'}}}",
                        "config.hyper_parameters.epochs");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'epochs': 0}}}",
                        "config.hyper_parameters.epochs");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'epochs': 2.5}}}",
                        "config.hyper_parameters.epochs");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'learning_rate': -1}}}",
                        "config.hyper_parameters.learning_rate");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'batch_size': 10}}}",
                        "config.hyper_parameters.batch_size");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'loss': 'Hinge'}}}",
                        "config.hyper_parameters.loss");
    cr_assert(strstr(E.msg, "Hinge"), "%s", E.msg);
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'optimizer': 'Lion'}}}",
                        "config.hyper_parameters.optimizer");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'hyper_parameters': {'miner': 'Any'}}}",
                        "config.hyper_parameters.miner");
    expect_submit_error("{'config': {'model': {'name': 'resnet50'}, 'data': {'train_data': 'ds'}}}",
                        "config.model.name");
    expect_submit_error("{'config': {'data': {'train_data': 'ds'}}}", "config.model");
    expect_submit_error("{'config': {'model': {'name': 'mlp'}}}", "config.data.train_data");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'seed': -1}}", "config.seed");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'callbacks': {}}}", "config.callbacks");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'callbacks': [{'name': 'WandBLogger'}]}}",
                        "config.callbacks[0].name");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'callbacks': [{'name': "
                        "'EvaluationCallback', 'options': {'query_data': 'ds', 'k': 3}}]}}",
                        "config.callbacks[0].options.k");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'callbacks': [{'name': "
                        "'EvaluationCallback', 'options': {}}]}}",
                        "config.callbacks[0].options.query_data");
    finish();
}

Test(api, run_submit_missing_datasets)
{
    put_csv("ds", CSV3);
    put_csv("wide", "label,a,b,c\nx,1,2,3\ny,4,5,6\n");
    expect_submit_error("{'config': {'model': {'name': 'mlp'}, 'data': {'train_data': 'nope'}}}",
                        "config.data.train_data");
    cr_assert(strstr(E.msg, "nope"), "%s", E.msg);
    expect_submit_error("{'config': {'model': {'name': 'mlp'}, "
                        "'data': {'train_data': 'ds', 'eval_data': 'nope'}}}",
                        "config.data.eval_data");
    expect_submit_error("{'config': {'model': {'name': 'mlp'}, "
                        "'data': {'train_data': 'ds', 'eval_data': 'wide'}}}",
                        "config.data.eval_data");
    expect_submit_error("{'config': {" BASE_CONFIG ", 'callbacks': [{'name': "
                        "'EvaluationCallback', 'options': {'query_data': 'nope'}}]}}",
                        "config.callbacks[0].options.query_data");
    expect_submit_error("{'config': {'model': {'name': 'mlp', 'options': {'input_size': 3}}, "
                        "'data': {'train_data': 'ds'}}}",
                        "config.model.options.input_size");
    finish();
}

Test(api, run_submit_early_stopping_errors)
{
    put_csv("ds", CSV3);
    put_csv("ev", CSV3);
#define ES_CONFIG(opts)                                                                       \
    "{'config': {'model': {'name': 'mlp'}, 'data': {'train_data': 'ds', 'eval_data': 'ev'}, " \
    "'callbacks': [{'name': 'EarlyStopping', 'options': " opts "}]}}"
    expect_submit_error(ES_CONFIG("{'min_delta': -0.1}"), "config.callbacks[0].options.min_delta");
    expect_submit_error(ES_CONFIG("{'patience': 1.5}"), "config.callbacks[0].options.patience");
    expect_submit_error(ES_CONFIG("{'patience': -1}"), "config.callbacks[0].options.patience");
    expect_submit_error(ES_CONFIG("{'monitor': 'val_mape'}"), "config.callbacks[0].options.mode");
    expect_submit_error(ES_CONFIG("{'mode': 'sideways'}"), "config.callbacks[0].options.mode");
    expect_submit_error(ES_CONFIG("{'monitor': 'val_loss', 'typo': 1}"),
                        "config.callbacks[0].options.typo");
    /* a metric monitor needs an EvaluationCallback */
    expect_submit_error(ES_CONFIG("{'monitor': 'mlp_precision_at_k'}"),
                        "config.callbacks[0].options.monitor");
    /* val_loss needs eval_data (or val_split) */
    expect_submit_error("{'config': {" BASE_CONFIG ", 'callbacks': [{'name': 'EarlyStopping',"
                        " 'options': {'monitor': 'val_loss'}}]}}",
                        "config.callbacks[0].options.monitor");
    cr_assert(strstr(E.msg, "val_loss"), "%s", E.msg);
    /* the same is fine with a val_split */
    json_decref(submit("e", "{'config': {'model': {'name': 'mlp'}, 'data': {'train_data': 'ds', "
                            "'val_split': 0.2}, 'callbacks': [{'name': 'EarlyStopping'}]}}"));
#undef ES_CONFIG
    finish();
}

/* Submit n runs r0..r(n-1) in experiment e over dataset ds. */
static void submit_n(int n)
{
    char body[512];
    for (int i = 0; i < n; i++) {
        snprintf(body, sizeof body, "{'name': 'r%d', 'config': {" BASE_CONFIG "}}", i);
        json_decref(submit("e", body));
    }
}

Test(api, run_list_is_paginated)
{
    put_csv("ds", CSV3);
    submit_n(3);
    json_t *o = expect_json("GET", "/api/v1/experiments/e/runs", NULL, 200);
    cr_assert_eq(jint(o, "total"), 3);
    cr_assert_eq(jint(o, "limit"), 50);
    cr_assert_eq(jint(o, "offset"), 0);
    cr_assert_eq(json_array_size(json_object_get(o, "runs")), 3);
    json_decref(o);
    o = expect_json("GET", "/api/v1/experiments/e/runs?limit=2&offset=0", NULL, 200);
    json_t *runs = json_object_get(o, "runs");
    cr_assert_eq(json_array_size(runs), 2);
    cr_assert_eq(jint(o, "total"), 3);
    cr_assert_eq(jint(o, "limit"), 2);
    cr_assert_str_eq(jstr(json_array_get(runs, 0), "name"), "r0");
    cr_assert_str_eq(jstr(json_array_get(runs, 1), "name"), "r1");
    cr_assert(json_is_object(json_object_get(json_array_get(runs, 0), "config")));
    json_decref(o);
    o = expect_json("GET", "/api/v1/experiments/e/runs?limit=2&offset=2", NULL, 200);
    runs = json_object_get(o, "runs");
    cr_assert_eq(json_array_size(runs), 1);
    cr_assert_str_eq(jstr(json_array_get(runs, 0), "name"), "r2");
    cr_assert_eq(jint(o, "offset"), 2);
    json_decref(o);
    o = expect_json("GET", "/api/v1/experiments/e/runs?offset=10", NULL, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "runs")), 0);
    cr_assert_eq(jint(o, "total"), 3);
    json_decref(o);
    finish();
}

Test(api, run_list_errors)
{
    put_csv("ds", CSV3);
    submit_n(1);
    expect_error("GET", "/api/v1/experiments/e/runs?limit=0", NULL, 400, "invalid_argument",
                 "limit");
    expect_error("GET", "/api/v1/experiments/e/runs?limit=abc", NULL, 400, "invalid_argument",
                 "limit");
    expect_error("GET", "/api/v1/experiments/e/runs?limit=1001", NULL, 400, "invalid_argument",
                 "limit");
    expect_error("GET", "/api/v1/experiments/e/runs?limit=", NULL, 400, "invalid_argument",
                 "limit");
    expect_error("GET", "/api/v1/experiments/e/runs?offset=-1", NULL, 400, "invalid_argument",
                 "offset");
    expect_error("GET", "/api/v1/experiments/e/runs?offset=1x", NULL, 400, "invalid_argument",
                 "offset");
    expect_error("GET", "/api/v1/experiments/none/runs", NULL, 404, "not_found", "experiment");
    finish();
}

Test(api, run_get_status_logs_metrics_before_start)
{
    struct ft_http_response resp;
    put_csv("ds", CSV3);
    submit_n(1);
    json_t *o = expect_json("GET", "/api/v1/experiments/e/runs/r0", NULL, 200);
    cr_assert_str_eq(jstr(o, "name"), "r0");
    cr_assert_str_eq(jstr(o, "status"), "CREATED");
    json_decref(o);
    o = expect_json("GET", "/api/v1/experiments/e/runs/r0/status", NULL, 200);
    cr_assert_eq(json_object_size(o), 2);
    cr_assert_str_eq(jstr(o, "status"), "CREATED");
    cr_assert(json_is_null(json_object_get(o, "details")));
    json_decref(o);
    request("GET", "/api/v1/experiments/e/runs/r0/logs", NULL, NULL, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_eq(resp.kind, FT_BODY_BUFFER);
    cr_assert(strncmp(resp.content_type, "text/plain", 10) == 0);
    cr_assert_eq(resp.body_len, 0);
    ft_http_response_clear(&resp);
    o = expect_json("GET", "/api/v1/experiments/e/runs/r0/metrics", NULL, 200);
    cr_assert(json_is_object(json_object_get(o, "before")));
    cr_assert_eq(json_object_size(json_object_get(o, "before")), 0);
    cr_assert_eq(json_object_size(json_object_get(o, "after")), 0);
    cr_assert(json_is_array(json_object_get(o, "epochs")));
    cr_assert_eq(json_array_size(json_object_get(o, "epochs")), 0);
    json_decref(o);
    request("GET", "/api/v1/experiments/e/runs/r0/logstream", NULL, NULL, &resp);
    cr_assert_eq(resp.status, 200);
    cr_assert_eq(resp.kind, FT_BODY_LOGSTREAM);
    cr_assert_str_eq(resp.content_type, "text/event-stream");
    cr_assert_gt(resp.run_id, 0);
    ft_http_response_clear(&resp);
    expect_error("GET", "/api/v1/experiments/e/runs/r0/artifact", NULL, 409, "conflict", "run");
    cr_assert(strstr(E.msg, "CREATED"), "%s", E.msg);
    finish();
}

Test(api, run_not_found)
{
    put_csv("ds", CSV3);
    submit_n(1);
    static const char *const tails[] = {"",         "/status",   "/logs", "/logstream",
                                        "/metrics", "/artifact", NULL};
    for (int i = 0; tails[i]; i++) {
        char path[128];
        snprintf(path, sizeof path, "/api/v1/experiments/e/runs/nope%s", tails[i]);
        expect_error("GET", path, NULL, 404, "not_found", "run");
        snprintf(path, sizeof path, "/api/v1/experiments/nope/runs/r0%s", tails[i]);
        expect_error("GET", path, NULL, 404, "not_found", "experiment");
        snprintf(path, sizeof path, "/api/v1/experiments/e/runs/.r%s", tails[i]);
        expect_error("GET", path, NULL, 400, "invalid_argument", "run");
    }
    expect_error("POST", "/api/v1/experiments/e/runs/nope/cancel", NULL, 404, "not_found", "run");
    expect_error("DELETE", "/api/v1/experiments/e/runs/nope", NULL, 404, "not_found", "run");
    finish();
}

Test(api, run_cancel_created)
{
    put_csv("ds", CSV3);
    submit_n(1);
    int wakes = E.wakes;
    json_t *o = expect_json("POST", "/api/v1/experiments/e/runs/r0/cancel", NULL, 200);
    cr_assert_str_eq(jstr(o, "status"), "CANCELED");
    cr_assert_not_null(jstr(o, "details"));
    cr_assert_not_null(jstr(o, "finished_at"));
    cr_assert(json_is_null(json_object_get(o, "started_at")));
    json_decref(o);
    cr_assert_eq(E.wakes, wakes + 1, "cancel wakes the scheduler");
    o = expect_json("GET", "/api/v1/experiments/e/runs/r0/status", NULL, 200);
    cr_assert_str_eq(jstr(o, "status"), "CANCELED");
    json_decref(o);
    expect_error("POST", "/api/v1/experiments/e/runs/r0/cancel", NULL, 409, "conflict", "run");
    expect_error("GET", "/api/v1/experiments/e/runs/r0/artifact", NULL, 409, "conflict", "run");
    o = expect_json("GET", "/api/v1/experiments/e/runs/r0/status", NULL, 200);
    cr_assert_str_eq(jstr(o, "status"), "CANCELED");
    json_decref(o);
    finish();
}

Test(api, run_delete)
{
    put_csv("ds", CSV3);
    submit_n(2);
    json_t *o = expect_json("DELETE", "/api/v1/experiments/e/runs/r0", NULL, 200);
    cr_assert_str_eq(jstr(o, "name"), "r0");
    cr_assert(json_is_true(json_object_get(o, "deleted")));
    json_decref(o);
    expect_error("GET", "/api/v1/experiments/e/runs/r0", NULL, 404, "not_found", "run");
    o = expect_json("GET", "/api/v1/experiments/e/runs", NULL, 200);
    cr_assert_eq(jint(o, "total"), 1);
    json_decref(o);
    /* the name can be used again */
    json_decref(submit("e", "{'name': 'r0', 'config': {" BASE_CONFIG "}}"));
    finish();
}

Test(api, dataset_and_experiment_in_use_are_409)
{
    put_csv("ds", CSV3);
    submit_n(1);
    expect_error("DELETE", "/api/v1/datasets/ds", NULL, 409, "conflict", "dataset");
    cr_assert(strstr(E.msg, "r0"), "the message names the run: %s", E.msg);
    expect_error("DELETE", "/api/v1/experiments/e", NULL, 409, "conflict", "experiment");
    json_decref(expect_json("POST", "/api/v1/experiments/e/runs/r0/cancel", NULL, 200));
    json_t *o = expect_json("DELETE", "/api/v1/datasets/ds", NULL, 200);
    json_decref(o);
    o = expect_json("DELETE", "/api/v1/experiments/e", NULL, 200);
    json_decref(o);
    expect_error("GET", "/api/v1/experiments/e/runs/r0", NULL, 404, "not_found", "experiment");
    finish();
}

/* ---- routing ---- */

Test(api, unknown_paths_are_404)
{
    static const char *const paths[] = {"/api/v1/nope",
                                        "/api/v1",
                                        "/api/v1/",
                                        "/api/v2/health",
                                        "/health",
                                        "/",
                                        "/api/v1/health/x",
                                        "/api/v1/experiments/e/runs/r/nope",
                                        "/api/v1/experiments/e/runs/r/status/x",
                                        "/api/v1/a/b/c/d/e/f/g/h/i/j",
                                        NULL};
    for (int i = 0; paths[i]; i++)
        expect_error("GET", paths[i], NULL, 404, "not_found", "path");
    finish();
}

/* method on path must be 405 with Allow = allow. */
static void expect_405(const char *method, const char *path, const char *allow)
{
    struct ft_http_response resp;
    request(method, path, NULL, NULL, &resp);
    cr_assert_str_eq(resp.allow, allow, "%s %s", method, path);
    check_error(&resp, 405, "method_not_allowed", "method");
}

Test(api, wrong_method_is_405_with_allow)
{
    expect_405("DELETE", "/api/v1/health", "GET");
    expect_405("POST", "/api/v1/health", "GET");
    expect_405("POST", "/api/v1/datasets/x", "PUT, GET, DELETE");
    expect_405("PUT", "/api/v1/datasets", "GET");
    expect_405("PATCH", "/api/v1/experiments", "POST, GET");
    expect_405("POST", "/api/v1/experiments/e", "GET, DELETE");
    expect_405("PUT", "/api/v1/experiments/e/runs", "POST, GET");
    expect_405("POST", "/api/v1/experiments/e/runs/r", "GET, DELETE");
    expect_405("POST", "/api/v1/experiments/e/runs/r/status", "GET");
    expect_405("GET", "/api/v1/experiments/e/runs/r/cancel", "POST");
    expect_405("DELETE", "/api/v1/experiments/e/runs/r/artifact", "GET");
    finish();
}

Test(api, hostile_paths_types_and_sizes)
{
    struct ft_http_response resp = {0};
    char path[1200];
    /* a path longer than the router reads is refused, never cut short */
    memset(path, '/', sizeof path - 1);
    memcpy(path, "/api/v1/datasets/x", 18);
    path[sizeof path - 1] = '\0';
    expect_error("DELETE", path, NULL, 414, "uri_too_long", "path");
    /* media types match exactly, case-insensitively */
    request("PUT", "/api/v1/datasets/t1", "text/csvfoo", CSV3, &resp);
    cr_assert_eq(resp.status, 400, "text/csvfoo is not CSV");
    ft_http_response_clear(&resp);
    request("PUT", "/api/v1/datasets/t2", "TEXT/CSV", CSV3, &resp);
    cr_assert_eq(resp.status, 201, "TEXT/CSV is CSV: %s", resp.body);
    ft_http_response_clear(&resp);
    /* a dataset that decodes to more than max_dataset is 413 and not stored */
    E.api.max_dataset = 16;
    request("PUT", "/api/v1/datasets/big", "text/csv", CSV3, &resp);
    cr_assert_eq(resp.status, 413, "%s", resp.body);
    cr_assert(strstr(resp.body, "--max-dataset-mb"), "%s", resp.body);
    ft_http_response_clear(&resp);
    E.api.max_dataset = 0;
    expect_error("GET", "/api/v1/datasets/big", NULL, 404, "not_found", "dataset");
    finish();
}

/* Found by fuzzing (tests/fuzz/fuzz_router.c, fuzz_csv.c): an error message that quoted bytes
 * from the request which are not UTF-8 (a CSV field, the method, the path, or a path cut by
 * "%.200s" inside a character) could not become a JSON string, and the answer was 500
 * "out_of_memory" with the real error lost. Each is now its own error, the bytes as '?'. */
Test(api, errors_quoting_non_utf8_request_bytes)
{
    struct ft_http_response resp;
    char path[260];
    request("PUT", "/api/v1/datasets/bytes", "text/csv", "a,label\n1,x\n\xff,y\n", &resp);
    check_error(&resp, 400, "invalid_argument", "body");
    cr_assert_str_eq(E.msg, "line 3, column 1: \"?\" is not a number");
    expect_error("GET", "/api/v1/\xff\xfe", NULL, 404, "not_found", "path");
    cr_assert(strstr(E.msg, "/api/v1/??"), "%s", E.msg);
    expect_error("\xff", "/api/v1/health", NULL, 405, "method_not_allowed", "method");
    cr_assert(strncmp(E.msg, "? is not allowed", 16) == 0, "%s", E.msg);
    /* 199 bytes, then a 2-byte character that "%.200s" cuts after its first byte */
    memset(path, 'a', sizeof path);
    memcpy(path, "/x/", 3);
    memcpy(path + 199, "\xc3\xa9", 2);
    path[201] = '\0';
    expect_error("GET", path, NULL, 404, "not_found", "path");
    cr_assert(strstr(E.msg, "aaa? (see GET"), "%s", E.msg);
    finish();
}

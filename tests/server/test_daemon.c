/* test_daemon.c — end to end over HTTP on 127.0.0.1 against the real build/finetunerd.
 *
 * Each test starts its own daemon (own free port, own temporary data directory, one worker)
 * and uploads small Fashion-MNIST subsets (t10k rows, as CSV). Covered: health, 404/405/413
 * over the wire, an IDX multipart upload of the real t10k files, a full 2-epoch run with all
 * three callbacks (status, metrics, logs, artifact, SSE log stream), the queue and cancel
 * lifecycle with the one worker busy, and a worker killed with SIGKILL; --max-queued-runs'
 * 429 and a canceled queued run freeing its place (the next run starting as soon as the one
 * worker is free); a non-loopback --host refused without tokens, served with
 * --insecure-no-auth or a token, tokens made and revoked by `finetunerd token` while the
 * daemon runs. Small data and model (600 rows, batch 64, hidden [64, 32]) keep each test to
 * seconds on 2 cores. */
#include "dataset.h"
#include "safetensors.h"
#include "support/daemon.h"
#include "support/http_client.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_IMAGES FMNIST_DIR "/t10k-images-idx3-ubyte.gz"
#define FMNIST_LABELS FMNIST_DIR "/t10k-labels-idx1-ubyte.gz"

static struct td_daemon D;

static void start_daemon(void)
{
    td_daemon_start(&D, NULL);
}

static void stop_daemon(void)
{
    td_daemon_stop(&D);
}

TestSuite(daemon, .init = start_daemon, .fini = stop_daemon, .timeout = 150);

/* ---- helpers ---- */

/* s with every ' turned into " (JSON without escapes); new string. */
static char *q(const char *s)
{
    char *b = strdup(s);
    for (char *p = b; *p; p++)
        if (*p == '\'')
            *p = '"';
    return b;
}

/* method path (under /api/v1) with an optional JSON body; asserts the status and returns the
 * JSON body (new reference). */
static json_t *call(const char *method, const char *path, const char *json_body, long status)
{
    struct th_response r;
    char *body = json_body ? q(json_body) : NULL;
    int rc = th_request(method, td_url(&D, path), body ? "application/json" : NULL, body,
                        body ? strlen(body) : 0, 60, &r);
    free(body);
    cr_assert_eq(rc, 0, "%s %s: %s", method, path, r.error);
    cr_assert_eq(r.status, status, "%s %s: %ld, want %ld: %s", method, path, r.status, status,
                 r.body);
    cr_assert(strncmp(r.content_type, "application/json", 16) == 0, "%s", r.content_type);
    json_t *o = th_json(&r);
    cr_assert_not_null(o, "%s %s: not JSON: %s", method, path, r.body);
    th_response_free(&r);
    return o;
}

/* The error body's code and param must be as given. */
static void check_error_body(const struct th_response *r, const char *code, const char *param)
{
    json_t *o = th_json(r);
    cr_assert_not_null(o, "not JSON: %s", r->body);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), code, "%s", r->body);
    cr_assert_str_eq(json_string_value(json_object_get(e, "param")), param, "%s", r->body);
    cr_assert_not_null(json_string_value(json_object_get(e, "message")));
    json_decref(o);
}

/* Rows [start, start + count) of Fashion-MNIST t10k as CSV text (new string, *len). */
static char *fmnist_csv(int64_t start, int64_t count, size_t *len)
{
    struct ft_error err;
    struct ft_dataset *all = NULL;
    cr_assert_eq(ft_dataset_load_idx_files(FMNIST_IMAGES, FMNIST_LABELS, &all, &err), FT_OK,
                 "%s (apt-get install dataset-fashion-mnist)", err.message);
    int64_t *idx = malloc((size_t)count * sizeof *idx);
    for (int64_t i = 0; i < count; i++)
        idx[i] = start + i;
    struct ft_dataset *ds = ft_dataset_subset(all, idx, count);
    cr_assert_not_null(ds);
    size_t cap = (size_t)count * (size_t)ds->dim * 12 + 16384, n = 0;
    char *buf = malloc(cap);
    n += (size_t)snprintf(buf + n, cap - n, "label");
    for (int j = 0; j < ds->dim; j++)
        n += (size_t)snprintf(buf + n, cap - n, ",p%d", j);
    for (int64_t i = 0; i < ds->n; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "\n%s", ds->label_names[ds->labels[i]]);
        for (int j = 0; j < ds->dim; j++)
            n += (size_t)snprintf(buf + n, cap - n, ",%.6g", ds->x[i * ds->dim + j]);
    }
    n += (size_t)snprintf(buf + n, cap - n, "\n");
    cr_assert_lt(n, cap);
    ft_dataset_free(ds);
    ft_dataset_free(all);
    free(idx);
    *len = n;
    return buf;
}

/* PUT rows [start, start + count) of t10k as CSV dataset name; expect 201 with those rows. */
static void upload_fmnist(const char *name, int64_t start, int64_t count)
{
    char path[128];
    size_t len;
    struct th_response r;
    char *csv = fmnist_csv(start, count, &len);
    snprintf(path, sizeof path, "/datasets/%s", name);
    int rc = th_request("PUT", td_url(&D, path), "text/csv", csv, len, 60, &r);
    free(csv);
    cr_assert_eq(rc, 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "PUT %s: %ld %s", path, r.status, r.body);
    json_t *o = th_json(&r);
    cr_assert_eq(json_integer_value(json_object_get(o, "rows")), count);
    cr_assert_eq(json_integer_value(json_object_get(o, "dims")), 784);
    cr_assert_eq(json_integer_value(json_object_get(o, "labels")), 10);
    cr_assert_str_eq(json_string_value(json_object_get(o, "format")), "csv");
    json_decref(o);
    th_response_free(&r);
}

/* Submit run name in experiment "e" with epochs and the given callbacks (a JSON list, ' for ");
 * expect 201 CREATED. */
static void submit_run(const char *name, int epochs, const char *eval_data, const char *callbacks)
{
    char body[2048];
    snprintf(body, sizeof body,
             "{'name': '%s', 'config': {"
             "'model': {'name': 'mlp', 'options': {'hidden_sizes': [64, 32]}},"
             "'data': {'train_data': 'fm-train'%s%s%s},"
             "'hyper_parameters': {'epochs': %d, 'batch_size': 64, 'learning_rate': 0.001},"
             "'callbacks': %s, 'seed': 7}}",
             name, eval_data ? ", 'eval_data': '" : "", eval_data ? eval_data : "",
             eval_data ? "'" : "", epochs, callbacks);
    json_t *run = call("POST", "/experiments/e/runs", body, 201);
    cr_assert_str_eq(json_string_value(json_object_get(run, "status")), "CREATED");
    json_decref(run);
}

/* Current status of run name; details (may be NULL) gets a new string or NULL. */
static void run_status(const char *name, char *status, size_t cap, char **details)
{
    char path[128];
    snprintf(path, sizeof path, "/experiments/e/runs/%s/status", name);
    json_t *o = call("GET", path, NULL, 200);
    snprintf(status, cap, "%s", json_string_value(json_object_get(o, "status")));
    if (details) {
        const char *d = json_string_value(json_object_get(o, "details"));
        *details = d ? strdup(d) : NULL;
    }
    json_decref(o);
}

/* Poll (every 100 ms) until run name has status want; fails after timeout_s seconds or when
 * the run reaches another terminal status. Returns the seconds it took. */
static double wait_status(const char *name, const char *want, double timeout_s)
{
    char status[32] = "";
    char *details = NULL;
    double t0 = td_now_s();
    for (;;) {
        free(details);
        run_status(name, status, sizeof status, &details);
        if (strcmp(status, want) == 0)
            break;
        int terminal = strcmp(status, "CREATED") != 0 && strcmp(status, "STARTED") != 0;
        cr_assert(!terminal, "run %s is %s (%s), want %s", name, status,
                  details ? details : "no details", want);
        cr_assert_lt(td_now_s() - t0, timeout_s, "run %s still %s after %.0f s, want %s", name,
                     status, timeout_s, want);
        td_sleep_ms(100);
    }
    free(details);
    return td_now_s() - t0;
}

/* GET path as text (status 200); new string. */
static char *get_text(const char *path, const char *content_type_prefix, size_t *len)
{
    struct th_response r;
    int rc = th_request("GET", td_url(&D, path), NULL, NULL, 0, 120, &r);
    cr_assert_eq(rc, 0, "GET %s: %s", path, r.error);
    cr_assert_eq(r.status, 200, "GET %s: %ld %s", path, r.status, r.body);
    cr_assert(strncmp(r.content_type, content_type_prefix, strlen(content_type_prefix)) == 0,
              "GET %s: Content-Type %s", path, r.content_type);
    if (len)
        *len = r.len;
    return r.body; /* taken over */
}

/* The worker process of the daemon (its only child); waits up to 5 s for it. */
static pid_t worker_pid(void)
{
    pid_t kids[8];
    for (int i = 0; i < 100; i++) {
        if (td_daemon_children(&D, kids, 8) == 1)
            return kids[0];
        td_sleep_ms(50);
    }
    cr_assert_fail("the daemon has no single worker child process");
    return 0;
}

static const char *const ALL_CALLBACKS =
    "[{'name': 'EvaluationCallback', 'options': {'query_data': 'fm-eval', 'limit': 20}},"
    " {'name': 'BestModelCheckpoint', 'options': {'monitor': 'val_loss'}},"
    " {'name': 'EarlyStopping', 'options': {'monitor': 'val_loss', 'patience': 2}}]";

/* ---- tests ---- */

Test(daemon, health_and_http_errors)
{
    struct th_response r;
    json_t *o = call("GET", "/health", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "ok");
    cr_assert_str_eq(json_string_value(json_object_get(o, "version")), "0.1.0");
    json_decref(o);
    /* a JSON body over 1 MiB is 413, not cut */
    size_t big = (1u << 20) + 1;
    char *body = malloc(big);
    memset(body, ' ', big);
    body[0] = '{';
    body[big - 1] = '}';
    cr_assert_eq(
        th_request("POST", td_url(&D, "/experiments"), "application/json", body, big, 60, &r), 0,
        "%s", r.error);
    cr_assert_eq(r.status, 413, "%ld %s", r.status, r.body);
    check_error_body(&r, "payload_too_large", "body");
    th_response_free(&r);
    /* the same without a Content-Length (chunked): counted while it arrives */
    static const char *const chunked[] = {"Transfer-Encoding: chunked", NULL};
    cr_assert_eq(th_request_headers("POST", td_url(&D, "/experiments"), chunked, "application/json",
                                    body, big, 60, &r),
                 0, "%s", r.error);
    cr_assert_eq(r.status, 413, "%ld %s", r.status, r.body);
    check_error_body(&r, "payload_too_large", "body");
    th_response_free(&r);
    free(body);
    /* 404, 405 with Allow, and 400 for malformed JSON, over the wire */
    cr_assert_eq(th_get(td_url(&D, "/nope"), &r), 0);
    cr_assert_eq(r.status, 404);
    check_error_body(&r, "not_found", "path");
    th_response_free(&r);
    cr_assert_eq(th_request("DELETE", td_url(&D, "/health"), NULL, NULL, 0, 10, &r), 0);
    cr_assert_eq(r.status, 405);
    cr_assert_str_eq(r.allow, "GET");
    check_error_body(&r, "method_not_allowed", "method");
    th_response_free(&r);
    cr_assert_eq(th_post_json(td_url(&D, "/experiments"), "{\"name\": ", &r), 0);
    cr_assert_eq(r.status, 400);
    check_error_body(&r, "invalid_argument", "body");
    th_response_free(&r);
    o = call("GET", "/health", NULL, 200);
    json_decref(o);
}

static void start_small_daemon(void)
{
    static const char *const args[] = {"--max-upload-mb", "1", NULL};
    td_daemon_start(&D, args);
}

TestSuite(small_upload, .init = start_small_daemon, .fini = stop_daemon, .timeout = 60);

Test(small_upload, dataset_over_max_upload_is_413)
{
    struct th_response r;
    size_t len;
    char *csv = fmnist_csv(0, 300, &len); /* about 1.3 MB */
    cr_assert_gt(len, 1u << 20);
    cr_assert_eq(th_request("PUT", td_url(&D, "/datasets/big"), "text/csv", csv, len, 60, &r), 0,
                 "%s", r.error);
    cr_assert_eq(r.status, 413, "%ld %s", r.status, r.body);
    check_error_body(&r, "payload_too_large", "body");
    th_response_free(&r);
    /* the same over multipart: the t10k images are 4.4 MB */
    cr_assert_eq(th_put_idx_files(td_url(&D, "/datasets/big"), FMNIST_IMAGES, FMNIST_LABELS, &r), 0,
                 "%s", r.error);
    cr_assert_eq(r.status, 413, "%ld %s", r.status, r.body);
    check_error_body(&r, "payload_too_large", "body");
    th_response_free(&r);
    free(csv);
    json_t *o = call("GET", "/datasets", NULL, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "datasets")), 0, "nothing was stored");
    json_decref(o);
    /* a small one still fits under the same name */
    csv = fmnist_csv(0, 20, &len);
    cr_assert_eq(th_request("PUT", td_url(&D, "/datasets/big"), "text/csv", csv, len, 60, &r), 0);
    cr_assert_eq(r.status, 201, "%ld %s", r.status, r.body);
    th_response_free(&r);
    free(csv);
}

Test(daemon, idx_upload_of_the_real_files)
{
    struct th_response r;
    cr_assert_eq(
        th_put_idx_files(td_url(&D, "/datasets/fm-t10k"), FMNIST_IMAGES, FMNIST_LABELS, &r), 0,
        "%s", r.error);
    cr_assert_eq(r.status, 201, "%ld %s", r.status, r.body);
    json_t *o = th_json(&r);
    cr_assert_str_eq(json_string_value(json_object_get(o, "format")), "idx");
    cr_assert_eq(json_integer_value(json_object_get(o, "rows")), 10000);
    cr_assert_eq(json_integer_value(json_object_get(o, "dims")), 784);
    cr_assert_eq(json_integer_value(json_object_get(o, "labels")), 10);
    json_decref(o);
    th_response_free(&r);
    /* the labels file alone is a 400 naming the missing part */
    cr_assert_eq(th_put_idx_files(td_url(&D, "/datasets/x"), FMNIST_LABELS, FMNIST_LABELS, &r), 0);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    check_error_body(&r, "invalid_argument", "images");
    th_response_free(&r);
    o = call("GET", "/datasets", NULL, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "datasets")), 1);
    json_decref(o);
}

/* The metrics object of a finished 2-epoch run with an EvaluationCallback. */
static void check_metrics(json_t *m)
{
    json_t *before = json_object_get(m, "before"), *after = json_object_get(m, "after");
    json_t *epochs = json_object_get(m, "epochs");
    cr_assert(json_is_number(json_object_get(before, "mlp_precision_at_k")), "before: %s",
              "mlp_precision_at_k");
    cr_assert(json_is_number(json_object_get(after, "mlp_average_precision")));
    /* two epochs of triplet training already separate the classes better than raw pixels */
    double p0 = json_number_value(json_object_get(before, "mlp_precision_at_k"));
    double p1 = json_number_value(json_object_get(after, "mlp_precision_at_k"));
    cr_assert_gt(p1, p0, "precision_at_k before %g, after %g", p0, p1);
    cr_assert_eq(json_array_size(epochs), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *e = json_array_get(epochs, i);
        cr_assert_eq(json_integer_value(json_object_get(e, "epoch")), (json_int_t)i + 1);
        double tl = json_number_value(json_object_get(e, "train_loss"));
        cr_assert(json_is_number(json_object_get(e, "train_loss")) && tl >= 0 && tl < 10, "%g", tl);
        cr_assert(json_is_number(json_object_get(e, "val_loss")));
        double p = json_number_value(json_object_get(e, "mlp_precision_at_k"));
        cr_assert(json_is_number(json_object_get(e, "mlp_precision_at_k")) && p > 0 && p <= 1,
                  "precision %g", p);
    }
}

static void check_artifact(const char *run)
{
    char path[128];
    size_t len;
    ft_safetensors *st;
    struct ft_error err;
    struct ft_tensor_view v;
    snprintf(path, sizeof path, "/experiments/e/runs/%s/artifact", run);
    char *bytes = get_text(path, "application/octet-stream", &len);
    cr_assert_eq(ft_safetensors_parse(bytes, len, &st, &err), FT_OK, "%s", err.message);
    free(bytes);
    cr_assert_eq(ft_safetensors_get(st, "linear_0.weight", &v), 0);
    cr_assert_str_eq(v.dtype, "F32");
    cr_assert_eq(v.ndim, 2);
    cr_assert_eq(v.shape[0], 64);
    cr_assert_eq(v.shape[1], 784);
    cr_assert_eq(ft_safetensors_get(st, "linear_1.weight", &v), 0);
    cr_assert_eq(v.shape[0], 32);
    cr_assert_eq(v.shape[1], 64);
    const char *mc =
        json_string_value(json_object_get(ft_safetensors_metadata(st), "model_config"));
    cr_assert_not_null(mc, "metadata model_config");
    json_t *o = json_loads(mc, 0, NULL);
    cr_assert_not_null(o, "model_config is JSON: %s", mc);
    json_decref(o);
    ft_safetensors_free(st);
}

Test(daemon, two_epoch_run_end_to_end)
{
    upload_fmnist("fm-train", 0, 600);
    upload_fmnist("fm-eval", 600, 300);
    submit_run("r1", 2, "fm-eval", ALL_CALLBACKS);
    wait_status("r1", "FINISHED", 120);
    json_t *run = call("GET", "/experiments/e/runs/r1", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(run, "status")), "FINISHED");
    cr_assert_not_null(json_string_value(json_object_get(run, "started_at")));
    cr_assert_not_null(json_string_value(json_object_get(run, "finished_at")));
    cr_assert_not_null(json_string_value(json_object_get(run, "details")));
    json_decref(run);
    json_t *m = call("GET", "/experiments/e/runs/r1/metrics", NULL, 200);
    check_metrics(m);
    json_decref(m);
    char *logs = get_text("/experiments/e/runs/r1/logs", "text/plain", NULL);
    static const char *const want[] = {"Model improved from inf to",
                                       "Metric: 'mlp_average_precision' Value:", "Finetuning took",
                                       "Done", NULL};
    for (int i = 0; want[i]; i++)
        cr_assert(strstr(logs, want[i]), "the log has '%s':\n%s", want[i], logs);
    cr_assert(strcmp(logs + strlen(logs) - 5, "Done\n") == 0, "the log ends with Done");
    check_artifact("r1");
    /* the SSE stream replays the log and ends with the status */
    char *sse = get_text("/experiments/e/runs/r1/logstream", "text/event-stream", NULL);
    cr_assert(strncmp(sse, "data: ", 6) == 0, "%.200s", sse);
    cr_assert(strstr(sse, "data: Done\n\n"), "the stream has the log lines");
    const char *end = "event: end\ndata: FINISHED\n\n";
    cr_assert(strlen(sse) > strlen(end) && strcmp(sse + strlen(sse) - strlen(end), end) == 0,
              "the stream ends with the end event: ...%s", sse + strlen(sse) - 40);
    free(sse);
    free(logs);
    /* a finished run does not hold its datasets; it cannot be canceled */
    struct th_response r;
    cr_assert_eq(
        th_request("POST", td_url(&D, "/experiments/e/runs/r1/cancel"), NULL, NULL, 0, 10, &r), 0);
    cr_assert_eq(r.status, 409);
    check_error_body(&r, "conflict", "run");
    th_response_free(&r);
    json_decref(call("DELETE", "/datasets/fm-eval", NULL, 200));
    json_decref(call("DELETE", "/experiments/e/runs/r1", NULL, 200));
}

Test(daemon, queue_and_cancel_lifecycle)
{
    struct th_response r;
    char status[32];
    char *details;
    upload_fmnist("fm-train", 0, 600);
    submit_run("long", 10000, NULL, "[]");
    wait_status("long", "STARTED", 20);
    submit_run("queued", 2, NULL, "[]");
    td_sleep_ms(1500); /* the scheduler looks at the queue at least every 500 ms */
    run_status("queued", status, sizeof status, NULL);
    cr_assert_str_eq(status, "CREATED", "the one worker is busy");
    /* a STARTED run holds its dataset and cannot be deleted */
    cr_assert_eq(
        th_request("DELETE", td_url(&D, "/experiments/e/runs/long"), NULL, NULL, 0, 10, &r), 0);
    cr_assert_eq(r.status, 409);
    check_error_body(&r, "conflict", "run");
    th_response_free(&r);
    cr_assert_eq(th_request("DELETE", td_url(&D, "/datasets/fm-train"), NULL, NULL, 0, 10, &r), 0);
    cr_assert_eq(r.status, 409);
    check_error_body(&r, "conflict", "dataset");
    th_response_free(&r);
    /* pagination over the wire (query arguments) */
    json_t *o = call("GET", "/experiments/e/runs?limit=1&offset=1", NULL, 200);
    cr_assert_eq(json_integer_value(json_object_get(o, "total")), 2);
    cr_assert_eq(json_array_size(json_object_get(o, "runs")), 1);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(o, "runs"), 0), "name")),
        "queued");
    json_decref(o);
    /* cancel the queued one: it never starts, and its (empty) log stream ends at once */
    o = call("POST", "/experiments/e/runs/queued/cancel", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "CANCELED");
    json_decref(o);
    char *sse = get_text("/experiments/e/runs/queued/logstream", "text/event-stream", NULL);
    cr_assert_str_eq(sse, "event: end\ndata: CANCELED\n\n");
    free(sse);
    /* cancel the running one: CANCELED within a few seconds, with details (the answer shows
     * STARTED while the worker has not stopped yet) */
    o = call("POST", "/experiments/e/runs/long/cancel", NULL, 200);
    const char *st = json_string_value(json_object_get(o, "status"));
    cr_assert(st && (strcmp(st, "STARTED") == 0 || strcmp(st, "CANCELED") == 0), "%s", st);
    json_decref(o);
    double took = wait_status("long", "CANCELED", 10);
    cr_assert_lt(took, 5.0, "cancel took %.1f s", took);
    run_status("long", status, sizeof status, &details);
    cr_assert_not_null(details, "a canceled run says why");
    free(details);
    char *logs = get_text("/experiments/e/runs/long/logs", "text/plain", NULL);
    cr_assert(strstr(logs, "Run canceled"), "%s", logs);
    free(logs);
    td_sleep_ms(1500);
    o = call("GET", "/experiments/e/runs/queued", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "CANCELED");
    cr_assert(json_is_null(json_object_get(o, "started_at")), "it never started");
    json_decref(o);
    pid_t kids[4];
    cr_assert_eq(td_daemon_children(&D, kids, 4), 0, "no worker is left running");
    /* nothing is active any more */
    json_decref(call("DELETE", "/experiments/e/runs/long", NULL, 200));
    json_decref(call("DELETE", "/datasets/fm-train", NULL, 200));
}

Test(daemon, worker_killed_with_sigkill)
{
    char status[32];
    char *details = NULL;
    upload_fmnist("fm-train", 0, 600);
    submit_run("doomed", 10000, NULL, "[]");
    wait_status("doomed", "STARTED", 20);
    pid_t pid = worker_pid();
    td_sleep_ms(300); /* let it train a little */
    cr_assert_eq(kill(pid, SIGKILL), 0);
    double took = wait_status("doomed", "FAILED", 5);
    cr_assert_lt(took, 5.0);
    run_status("doomed", status, sizeof status, &details);
    cr_assert_not_null(details);
    cr_assert(strstr(details, "signal 9"), "details: %s", details);
    free(details);
    char *logs = get_text("/experiments/e/runs/doomed/logs", "text/plain", NULL);
    cr_assert(strstr(logs, "Run failed"), "%s", logs);
    free(logs);
    json_decref(call("GET", "/health", NULL, 200));
    /* the daemon still runs work */
    submit_run("after", 1, NULL, "[]");
    /* follow it live: the stream blocks until the run ends */
    char *sse = get_text("/experiments/e/runs/after/logstream", "text/event-stream", NULL);
    const char *end = "event: end\ndata: FINISHED\n\n";
    cr_assert(strstr(sse, "data: Done\n\n") && strlen(sse) > strlen(end) &&
                  strcmp(sse + strlen(sse) - strlen(end), end) == 0,
              "%s", sse);
    free(sse);
    wait_status("after", "FINISHED", 5);
    json_t *m = call("GET", "/experiments/e/runs/after/metrics", NULL, 200);
    cr_assert_eq(json_array_size(json_object_get(m, "epochs")), 1);
    json_decref(m);
}

Test(daemon, a_run_starts_from_an_earlier_artifact_with_wise_ft)
{
    upload_fmnist("fm-train", 0, 600);
    submit_run("base", 1, NULL, "[]");
    wait_status("base", "FINISHED", 120);
    /* the architecture comes from the artifact; what disagrees is a 400 */
    json_t *run = call("POST", "/experiments/e/runs",
                       "{'name': 'tuned', 'config': {'model': {'artifact': 'e/base'},"
                       " 'data': {'train_data': 'fm-train'},"
                       " 'hyper_parameters': {'epochs': 1, 'batch_size': 64},"
                       " 'callbacks': [{'name': 'WiSEFTCallback', 'options': {'alpha': 0.5}}]}}",
                       201);
    json_t *model = json_object_get(json_object_get(run, "config"), "model");
    cr_assert_str_eq(json_string_value(json_object_get(model, "name")), "mlp");
    cr_assert_str_eq(json_string_value(json_object_get(model, "artifact")), "e/base");
    json_decref(run);
    wait_status("tuned", "FINISHED", 120);
    size_t len;
    char *log = get_text("/experiments/e/runs/tuned/logs", "text/plain", &len);
    cr_assert(strstr(log, "Starting from the model of run 'e/base'"), "%s", log);
    cr_assert(strstr(log, "WiSE-FT: the artifact is 0.5 x the starting model"), "%s", log);
    free(log);
    struct th_response r;
    const char *bad[][2] = {
        {"{'config': {'model': {'artifact': 'e/nope'}, 'data': {'train_data': 'fm-train'}}}",
         "config.model.artifact"},
        {"{'config': {'model': {'artifact': 'e/base', 'name': 'cnn'}, 'data': {'train_data': "
         "'fm-train'}}}",
         "config.model.name"},
        {"{'config': {'model': {'artifact': 'e/base', 'name': 'mlp', 'options': {'hidden_sizes': "
         "[8]}}, 'data': {'train_data': 'fm-train'}}}",
         "config.model.options"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *body = q(bad[i][0]);
        cr_assert_eq(th_request("POST", td_url(&D, "/experiments/e/runs"), "application/json", body,
                                strlen(body), 10, &r),
                     0);
        free(body);
        cr_assert_eq(r.status, 400, "%s: %ld %s", bad[i][0], r.status, r.body);
        check_error_body(&r, "invalid_argument", bad[i][1]);
        th_response_free(&r);
    }
}

Test(daemon, training_checkpoints_are_listed_and_downloadable)
{
    upload_fmnist("fm-train", 0, 600);
    submit_run("ck", 2, NULL, "[{'name': 'TrainingCheckpoint', 'options': {'last_k_epochs': 1}}]");
    wait_status("ck", "FINISHED", 120);
    json_t *list = call("GET", "/experiments/e/runs/ck/checkpoints", NULL, 200);
    json_t *cks = json_object_get(list, "checkpoints");
    cr_assert_eq(json_array_size(cks), 1, "last_k_epochs 1 keeps one");
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(cks, 0), "epoch")), 2);
    json_decref(list);
    size_t len;
    char *file = get_text("/experiments/e/runs/ck/checkpoints/2", "application/octet-stream", &len);
    ft_safetensors *st;
    struct ft_error err;
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_parse(file, len, &st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_safetensors_get(st, "model.params", &v), 0);
    ft_safetensors_free(st);
    free(file);
    struct th_response r;
    cr_assert_eq(th_request("GET", td_url(&D, "/experiments/e/runs/ck/checkpoints/1"), NULL, NULL,
                            0, 10, &r),
                 0);
    cr_assert_eq(r.status, 404, "%s", r.body);
    check_error_body(&r, "not_found", "epoch");
    th_response_free(&r);
}

/* metrics.epochs of run name on daemon d (new reference). */
static json_t *epochs_of(struct td_daemon *d, const char *name)
{
    char path[128];
    struct th_response r;
    snprintf(path, sizeof path, "/experiments/e/runs/%s/metrics", name);
    cr_assert_eq(th_request("GET", td_url(d, path), NULL, NULL, 0, 10, &r), 0);
    json_t *m = th_json(&r);
    th_response_free(&r);
    json_t *e = json_incref(json_object_get(m, "epochs"));
    json_decref(m);
    return e;
}

/* Stop the daemon with sig two epochs into a run, start a new one on the same data directory,
 * and compare the resumed run's epochs with an uninterrupted run of the same config. */
static void interrupt_and_resume(int sig)
{
    static const char *const RUN =
        "{'name': '%s', 'config': {'model': {'name': 'mlp', 'options': {'hidden_sizes': [256, "
        "128], 'l2': true}}, 'data': {'train_data': 'fm-train', 'eval_data': 'fm-eval'},"
        " 'hyper_parameters': {'epochs': 8, 'batch_size': 32, 'learning_rate': 0.001},"
        " 'callbacks': [{'name': 'EvaluationCallback', 'options': {'query_data': 'fm-eval'}},"
        " {'name': 'BestModelCheckpoint', 'options': {'monitor': 'mlp_average_precision'}},"
        " {'name': 'EarlyStopping', 'options': {'monitor': 'mlp_average_precision', 'patience': "
        "8}}], 'seed': 11}}";
    char body[1024], dir[256];
    upload_fmnist("fm-train", 0, 4000);
    upload_fmnist("fm-eval", 4000, 1000);
    snprintf(body, sizeof body, RUN, "resumed");
    json_decref(call("POST", "/experiments/e/runs", body, 201));
    /* kill -9 the daemon once two epochs are done */
    double t0 = td_now_s();
    for (;;) {
        json_t *ep = epochs_of(&D, "resumed");
        size_t n = json_array_size(ep);
        json_decref(ep);
        if (n >= 2)
            break;
        cr_assert_lt(td_now_s() - t0, 120, "two epochs did not finish");
        td_sleep_ms(20);
    }
    int status;
    kill(D.pid, sig);
    waitpid(D.pid, &status, 0);
    D.pid = 0;
    if (sig == SIGTERM) /* a clean stop: workers interrupted, the daemon exits 0 */
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "daemon status %d", status);
    snprintf(dir, sizeof dir, "%s", D.data_dir);
    /* a new daemon on the same data directory (the last --data-dir wins) */
    const char *const args[] = {"--data-dir", dir, NULL};
    td_daemon_start(&D, args);
    wait_status("resumed", "FINISHED", 180);
    size_t len;
    char *log = get_text("/experiments/e/runs/resumed/logs", "text/plain", &len);
    cr_assert(strstr(log, "Resuming from the checkpoint of epoch"), "%s", log);
    free(log);
    /* the same run without an interruption */
    snprintf(body, sizeof body, RUN, "whole");
    json_decref(call("POST", "/experiments/e/runs", body, 201));
    wait_status("whole", "FINISHED", 180);
    json_t *a = epochs_of(&D, "resumed"), *b = epochs_of(&D, "whole");
    cr_assert_eq(json_array_size(a), json_array_size(b), "every epoch listed exactly once");
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *x = json_array_get(a, i), *y = json_array_get(b, i);
        cr_assert_eq(json_integer_value(json_object_get(x, "epoch")), (json_int_t)i + 1);
        const char *keys[] = {"train_loss", "val_loss", "mlp_average_precision"};
        for (int k = 0; k < 3; k++)
            cr_assert_float_eq(json_number_value(json_object_get(x, keys[k])),
                               json_number_value(json_object_get(y, keys[k])), 1e-9, "epoch %zu %s",
                               i + 1, keys[k]);
    }
    json_decref(a);
    json_decref(b);
    td_remove_tree(dir);
}

Test(daemon, kill_9_of_the_daemon_then_a_restart_resumes_the_run_exactly, .timeout = 240)
{
    interrupt_and_resume(SIGKILL);
}

Test(daemon, sigterm_stops_cleanly_and_the_next_start_resumes, .timeout = 240)
{
    interrupt_and_resume(SIGTERM);
}

/* The finetunerd binary the tests run (as tests/support/daemon.c finds it). */
static const char *daemon_binary(void)
{
    static char path[512];
    const char *dir = getenv("FT_BIN_DIR");
    if (!dir || !*dir)
        dir = getenv("BUILD");
    snprintf(path, sizeof path, "%s/finetunerd", dir && *dir ? dir : "build");
    return path;
}

Test(daemon, second_daemon_on_a_data_dir_refuses_to_start, .timeout = 60)
{
    struct td_daemon d;
    struct th_response r;
    td_daemon_start(&d, NULL);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --port 0 --data-dir %s --log-level error 2>/dev/null",
             daemon_binary(), d.data_dir);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "second daemon exit status %d", rc);
    cr_assert_eq(th_request("GET", td_url(&d, "/health"), NULL, NULL, 0, 5, &r), 0);
    cr_assert_eq(r.status, 200, "the first daemon still serves");
    th_response_free(&r);
    td_daemon_stop(&d);
}

Test(daemon, percent_encoded_nul_in_a_name_is_rejected, .timeout = 60)
{
    struct td_daemon d;
    struct th_response r;
    td_daemon_start(&d, NULL);
    const char csv[] = "label,a\nx,1\ny,2\n";
    cr_assert_eq(
        th_request("PUT", td_url(&d, "/datasets/victim"), "text/csv", csv, sizeof csv - 1, 5, &r),
        0);
    cr_assert_eq(r.status, 201, "%s", r.body);
    th_response_free(&r);
    cr_assert_eq(
        th_request("DELETE", td_url(&d, "/datasets/victim%00..%2Fother"), NULL, NULL, 0, 5, &r), 0);
    cr_assert_eq(r.status, 404, "the decoded '/' makes it another path: %ld %s", r.status, r.body);
    th_response_free(&r);
    cr_assert_eq(th_request("DELETE", td_url(&d, "/datasets/victim%00x"), NULL, NULL, 0, 5, &r), 0);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    th_response_free(&r);
    cr_assert_eq(th_request("GET", td_url(&d, "/datasets/victim"), NULL, NULL, 0, 5, &r), 0);
    cr_assert_eq(r.status, 200, "victim is still there");
    th_response_free(&r);
    td_daemon_stop(&d);
}

/* ---- the queue limit and a canceled queued run (--workers 1) ---- */

static void start_queue_daemon(void)
{
    static const char *const args[] = {"--workers", "1", "--max-queued-runs", "2", NULL};
    td_daemon_start(&D, args);
}

TestSuite(queue_limit, .init = start_queue_daemon, .fini = stop_daemon, .timeout = 120);

/* POST a 2-epoch run name; returns the HTTP status (the body is checked for 429). */
static long try_submit(const char *name)
{
    struct th_response r;
    char body[512];
    snprintf(body, sizeof body,
             "{\"name\": \"%s\", \"config\": {\"model\": {\"name\": \"mlp\", \"options\": "
             "{\"hidden_sizes\": [64, 32]}}, \"data\": {\"train_data\": \"fm-train\"}, "
             "\"hyper_parameters\": {\"epochs\": 2, \"batch_size\": 64}}}",
             name);
    cr_assert_eq(th_post_json(td_url(&D, "/experiments/e/runs"), body, &r), 0, "%s", r.error);
    long status = r.status;
    if (status == 429) {
        json_t *o = th_json(&r);
        json_t *e = json_object_get(o, "error");
        cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "too_many_requests");
        cr_assert(json_is_null(json_object_get(e, "param")));
        cr_assert(strstr(json_string_value(json_object_get(e, "message")), "--max-queued-runs"));
        json_decref(o);
    }
    th_response_free(&r);
    return status;
}

Test(queue_limit, a_canceled_queued_run_frees_its_place_and_the_next_one_starts)
{
    upload_fmnist("fm-train", 0, 600);
    submit_run("long", 10000, NULL, "[]");
    wait_status("long", "STARTED", 20);
    cr_assert_eq(try_submit("b"), 201);
    cr_assert_eq(try_submit("c"), 201);
    cr_assert_eq(try_submit("d"), 429, "two runs queued: the limit");
    /* canceling the queued b ends it at once and frees its place at once */
    json_t *o = call("POST", "/experiments/e/runs/b/cancel", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "CANCELED");
    json_decref(o);
    cr_assert_eq(try_submit("d"), 201);
    /* the one worker frees up: c starts next, promptly, and b never does */
    json_decref(call("POST", "/experiments/e/runs/long/cancel", NULL, 200));
    wait_status("long", "CANCELED", 10);
    double took = wait_status("c", "STARTED", 10);
    cr_assert_lt(took, 3.0, "c waited %.1f s after the slot freed", took);
    o = call("GET", "/experiments/e/runs/b", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(o, "status")), "CANCELED");
    cr_assert(json_is_null(json_object_get(o, "started_at")), "b never started");
    json_decref(o);
    wait_status("c", "FINISHED", 60);
    wait_status("d", "FINISHED", 60);
}

/* ---- exposure: a non-loopback host needs tokens ---- */

TestSuite(exposure, .timeout = 60);

/* GET path on d with Authorization "token <token>" (token NULL = none); the status. */
static long get_as(const struct td_daemon *d, const char *path, const char *token)
{
    struct th_response r;
    char auth[128];
    const char *headers[] = {auth, NULL};
    snprintf(auth, sizeof auth, "Authorization: token %s", token ? token : "");
    cr_assert_eq(
        th_request_headers("GET", td_url(d, path), token ? headers : NULL, NULL, NULL, 0, 10, &r),
        0, "%s", r.error);
    long status = r.status;
    if (status == 401) {
        json_t *o = th_json(&r);
        cr_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "code")),
                         "unauthorized");
        json_decref(o);
    }
    th_response_free(&r);
    return status;
}

Test(exposure, a_non_loopback_host_without_tokens_is_refused)
{
    char dir[] = "/tmp/ft-test-exposure-XXXXXX", cmd[2048], err[128], line[512] = "";
    cr_assert_not_null(mkdtemp(dir));
    snprintf(err, sizeof err, "%s/stderr", dir);
    snprintf(cmd, sizeof cmd, "timeout 20 %s --host 0.0.0.0 --port 0 --data-dir %s/data 2>%s",
             daemon_binary(), dir, err);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "exit status %d (124: it served)", rc);
    FILE *f = fopen(err, "r");
    cr_assert_not_null(f);
    size_t n = fread(line, 1, sizeof line - 1, f);
    line[n] = '\0';
    fclose(f);
    cr_assert(strstr(line, "token create") && strstr(line, "--insecure-no-auth"), "%s", line);
    td_remove_tree(dir);
}

Test(exposure, with_insecure_no_auth_it_serves_and_tokens_made_meanwhile_count)
{
    struct td_daemon d;
    char token[128];
    static const char *const args[] = {"--host", "0.0.0.0", "--insecure-no-auth", NULL};
    td_daemon_start(&d, args);
    cr_assert_eq(get_as(&d, "/datasets", NULL), 200, "no tokens: open");
    /* a token made by the CLI while the daemon runs takes effect at once */
    cr_assert_eq(td_token(d.data_dir, "create", "alice", token, sizeof token), 0);
    cr_assert_eq(strlen(token), 64, "%s", token);
    cr_assert_eq(get_as(&d, "/datasets", NULL), 401);
    cr_assert_eq(get_as(&d, "/datasets", token), 200);
    cr_assert_eq(get_as(&d, "/health", NULL), 200);
    /* an upload without a token is refused (its body is drained, not kept) */
    struct th_response r;
    const char csv[] = "label,a\nx,1\ny,2\n";
    cr_assert_eq(
        th_request("PUT", td_url(&d, "/datasets/x"), "text/csv", csv, sizeof csv - 1, 10, &r), 0);
    cr_assert_eq(r.status, 401, "%ld %s", r.status, r.body);
    th_response_free(&r);
    cr_assert_eq(td_token(d.data_dir, "list", NULL, token, sizeof token), 0);
    cr_assert(strncmp(token, "alice\t", 6) == 0, "%s", token);
    cr_assert_eq(td_token(d.data_dir, "revoke", "alice", NULL, 0), 0);
    cr_assert_eq(get_as(&d, "/datasets", NULL), 200, "open again: --insecure-no-auth");
    td_daemon_stop(&d);
}

Test(exposure, a_non_loopback_host_with_a_token_serves_only_with_it)
{
    struct td_daemon d;
    char dir[] = "/tmp/ft-test-exposure-XXXXXX", data[64], token[128];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(data, sizeof data, "%s/data", dir);
    cr_assert_eq(td_token(data, "create", "alice", token, sizeof token), 0);
    const char *const args[] = {"--host", "0.0.0.0", "--data-dir", data, NULL};
    td_daemon_start(&d, args); /* the later --data-dir wins */
    cr_assert_eq(get_as(&d, "/experiments", NULL), 401);
    cr_assert_eq(get_as(&d, "/experiments", token), 200);
    /* revoking the last token closes the API rather than opening it */
    cr_assert_eq(td_token(data, "revoke", "alice", NULL, 0), 0);
    cr_assert_eq(get_as(&d, "/experiments", NULL), 401);
    cr_assert_eq(get_as(&d, "/health", NULL), 200);
    td_daemon_stop(&d);
    td_remove_tree(dir);
}

/* Found by fuzzing (tests/fuzz/fuzz_multipart.c): libmicrohttpd hands the part collector a
 * NULL name for a part whose Content-Disposition has no name=, and strcmp(NULL) killed the
 * daemon with SIGSEGV — one request from any client. Now it is a 400 and the daemon serves
 * on. */
Test(daemon, multipart_part_without_a_name_or_with_a_long_one_is_400, .timeout = 60)
{
    static const char body[] = "--XyZ\r\n"
                               "Content-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
                               "\r\n"
                               "a,label\n\r\n"
                               "--XyZ\r\n"
                               "Content-Dispositionfo: rm-data; filename=\"b\"\r\n"
                               "\r\n"
                               "1,x\n2,y\n\r\n"
                               "--XyZ--\r\n";
    struct td_daemon d;
    struct th_response r;
    td_daemon_start(&d, NULL);
    for (int first_nameless = 0; first_nameless < 2; first_nameless++) {
        /* the nameless part after a named one, then alone */
        const char *b = first_nameless ? strstr(body + 1, "--XyZ") : body;
        cr_assert_eq(th_request("PUT", td_url(&d, "/datasets/x?format=csv"),
                                "multipart/form-data; boundary=XyZ", b, strlen(b), 10, &r),
                     0, "the daemon answers: %s", r.error);
        cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
        check_error_body(&r, "invalid_argument", "body");
        th_response_free(&r);
    }
    /* a name longer than a part name holds (63 bytes) was cut, so two such names became two
     * parts of one name: now it is refused the same way */
    char named[512];
    snprintf(named, sizeof named,
             "--XyZ\r\nContent-Disposition: form-data; name=\"%064d\"\r\n\r\na,label\n1,x\n2,y\n"
             "\r\n--XyZ--\r\n",
             0);
    cr_assert_eq(th_request("PUT", td_url(&d, "/datasets/x?format=csv"),
                            "multipart/form-data; boundary=XyZ", named, strlen(named), 10, &r),
                 0, "%s", r.error);
    cr_assert_eq(r.status, 400, "%ld %s", r.status, r.body);
    check_error_body(&r, "invalid_argument", "body");
    th_response_free(&r);
    cr_assert_eq(th_request("GET", td_url(&d, "/health"), NULL, NULL, 0, 5, &r), 0);
    cr_assert_eq(r.status, 200, "the daemon still serves");
    th_response_free(&r);
    td_daemon_stop(&d);
}

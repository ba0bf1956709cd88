/* test_disk_full.c — writes that fail, end to end against build/finetunerd.
 *
 * The daemon runs under RLIMIT_FSIZE (set in its process only; its workers inherit it): a write
 * past it fails with EFBIG, the same path as a full disk (ENOSPC), without root or a mount. A
 * dataset too big to store is a 507 insufficient_storage and leaves no dataset and no temporary
 * file; a run whose checkpoint cannot be written ends FAILED saying so, serves no artifact and
 * leaves no half-written file; the daemon serves on, and later uploads and runs that fit
 * succeed. (Its own binary: run beside other suites in one Criterion binary, Criterion 2.4.1's
 * runner reported a 48-byte leak of its own under ASan.) */
#include "support/daemon.h"
#include "support/http_client.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FSIZE_LIMIT (8L << 20)

static struct td_daemon D;

static void stop_daemon(void)
{
    td_daemon_stop(&D);
}

static const char *error_field(json_t *o, const char *field)
{
    return json_string_value(json_object_get(json_object_get(o, "error"), field));
}

/* POST body to experiments/e/runs; the response into r (caller frees). */
static void post_runs(const char *body, size_t len, struct th_response *r)
{
    int rc =
        th_request("POST", td_url(&D, "/experiments/e/runs"), "application/json", body, len, 30, r);
    cr_assert_eq(rc, 0, "%s", r->error);
}

/* The daemon (and its workers) with RLIMIT_FSIZE = FSIZE_LIMIT. */
static void start_small_disk_daemon(void)
{
    td_daemon_start_fsize(&D, NULL, FSIZE_LIMIT);
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
    double t0 = td_now_s();
    for (;;) {
        json_t *o = get_json(path, 200);
        snprintf(status, cap, "%s", json_string_value(json_object_get(o, "status")));
        const char *d = json_string_value(json_object_get(o, "details"));
        char *details = strdup(d ? d : "");
        json_decref(o);
        if (strcmp(status, "CREATED") != 0 && strcmp(status, "STARTED") != 0)
            return details;
        free(details);
        cr_assert_lt(td_now_s() - t0, 60, "run %s still %s", name, status);
        td_sleep_ms(100);
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

    json_decref(get_json("/datasets/big", 404));
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

/* test_races.c — terminal statuses never change, whoever races for them.
 *
 * The daemon and a worker hold separate SQLite connections to one database; here two stores
 * on one data directory play them, each from its own thread, released together by a barrier,
 * 200 times per race: cancel vs the worker finishing a STARTED run; the worker's end vs the
 * scheduler marking the run FAILED; cancel vs the scheduler claiming a CREATED run. Each
 * time exactly one terminal status results (or a consistent STARTED + cancel requested), and
 * every later transition attempt leaves it, its details and finished_at as they were. Then
 * the worker side for real (ft_worker_main in-process): a run whose cancel was requested ends
 * CANCELED (stopped at a batch, or as its training ended), consistently with its log and
 * artifact, and stays so; a requeued run
 * whose cancel was requested ends CANCELED instead of queueing again. */
#include "api.h"
#include "http.h"
#include "log.h"
#include "store.h"
#include "support/daemon.h"
#include "worker.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 200

static struct {
    char dir[64];
    ft_store *daemon; /* the daemon's connection (HTTP threads, scheduler) */
    ft_store *worker; /* a worker process's connection */
} E;

static void setup(void)
{
    struct ft_error err;
    memset(&E, 0, sizeof E);
    ft_log_threshold = FT_LOG_ERROR;
    snprintf(E.dir, sizeof E.dir, "/tmp/ft-test-races-XXXXXX");
    cr_assert_not_null(mkdtemp(E.dir));
    cr_assert_eq(ft_store_open(E.dir, &E.daemon, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_store_open(E.dir, &E.worker, &err), FT_OK, "%s", err.message);
}

static void teardown(void)
{
    ft_store_close(E.daemon);
    ft_store_close(E.worker);
    td_remove_tree(E.dir);
}

TestSuite(races, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ---- */

/* A new CREATED run (its config is not read here). */
static int64_t new_run(void)
{
    struct ft_error err;
    struct ft_run_submission sub = {.owner = "", .experiment = "e", .config_json = "{}"};
    int64_t id;
    cr_assert_eq(ft_store_run_insert(E.daemon, &sub, &id, &err), FT_OK, "%s", err.message);
    return id;
}

struct snapshot {
    char status[16];
    char details[256];
    char finished_at[64];
    int cancel_requested;
};

static void snap(int64_t id, struct snapshot *s)
{
    json_t *run;
    char *details = NULL;
    cr_assert_eq(ft_store_run_status(E.daemon, id, s->status, &details, NULL), FT_OK);
    snprintf(s->details, sizeof s->details, "%s", details ? details : "(null)");
    free(details);
    cr_assert_eq(ft_store_run_get(E.daemon, id, &run, NULL), FT_OK);
    const char *f = json_string_value(json_object_get(run, "finished_at"));
    snprintf(s->finished_at, sizeof s->finished_at, "%s", f ? f : "(null)");
    json_decref(run);
    s->cancel_requested = ft_store_run_cancel_requested(E.daemon, id);
}

static int terminal(const char *status)
{
    return strcmp(status, "FINISHED") == 0 || strcmp(status, "FAILED") == 0 ||
           strcmp(status, "CANCELED") == 0;
}

/* Every transition anyone could try on an ended run changes nothing. */
static void assert_frozen(int64_t id)
{
    struct snapshot before, after;
    snap(id, &before);
    cr_assert(terminal(before.status), "%s", before.status);
    cr_assert_str_neq(before.finished_at, "(null)");
    cr_assert_eq(ft_store_run_finish(E.worker, id, "FINISHED", "late"), FT_ECONFLICT);
    cr_assert_eq(ft_store_run_finish(E.daemon, id, "FAILED", "late"), FT_ECONFLICT);
    cr_assert_eq(ft_store_run_finish(E.worker, id, "CANCELED", "late"), FT_ECONFLICT);
    cr_assert_eq(ft_store_run_cancel(E.daemon, id, NULL), FT_ECONFLICT);
    ft_store_run_requeue(E.daemon, id, "late requeue");
    ft_store_runs_requeue_started(E.daemon, "late requeue");
    int64_t other;
    cr_assert_eq(ft_store_run_claim_next(E.daemon, &other, NULL), FT_ENOT_FOUND);
    snap(id, &after);
    cr_assert_str_eq(after.status, before.status);
    cr_assert_str_eq(after.details, before.details);
    cr_assert_str_eq(after.finished_at, before.finished_at);
}

struct side {
    enum { CANCEL, FINISH, FAIL, CLAIM } what;
    ft_store *store;
    int64_t id;
    pthread_barrier_t *go;
    enum ft_err rc;
    int64_t claimed;
};

static void *act(void *arg)
{
    struct side *s = arg;
    pthread_barrier_wait(s->go);
    switch (s->what) {
    case CANCEL:
        s->rc = ft_store_run_cancel(s->store, s->id, NULL);
        break;
    case FINISH:
        s->rc = ft_store_run_finish(s->store, s->id, "FINISHED", "Training finished");
        break;
    case FAIL:
        s->rc = ft_store_run_finish(s->store, s->id, "FAILED", "the worker process died");
        break;
    case CLAIM:
        s->rc = ft_store_run_claim_next(s->store, &s->claimed, NULL);
        break;
    }
    return NULL;
}

/* Run a and b at the same moment on run id. */
static void race(struct side *a, struct side *b, int64_t id)
{
    pthread_barrier_t go;
    pthread_t ta, tb;
    pthread_barrier_init(&go, NULL, 2);
    a->go = b->go = &go;
    a->id = b->id = id;
    pthread_create(&ta, NULL, act, a);
    pthread_create(&tb, NULL, act, b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&go);
}

static int64_t started_run(void)
{
    int64_t id = new_run(), claimed;
    cr_assert_eq(ft_store_run_claim_next(E.daemon, &claimed, NULL), FT_OK);
    cr_assert_eq(claimed, id);
    return id;
}

/* ---- the store ---- */

Test(races, cancel_vs_completion_of_a_started_run)
{
    int cancel_first = 0;
    for (int i = 0; i < ROUNDS; i++) {
        int64_t id = started_run();
        struct side c = {.what = CANCEL, .store = E.daemon};
        struct side f = {.what = FINISH, .store = E.worker};
        race(&c, &f, id);
        struct snapshot s;
        snap(id, &s);
        /* a cancel accepted first (200) ends the run CANCELED even though the worker then
         * finishes it; a cancel coming after the end is a 409 and FINISHED stands */
        cr_assert_eq(f.rc, FT_OK, "round %d", i);
        cr_assert(c.rc == FT_OK || c.rc == FT_ECONFLICT, "round %d: %d", i, c.rc);
        cr_assert_str_eq(s.status, c.rc == FT_OK ? "CANCELED" : "FINISHED", "round %d", i);
        cr_assert_str_eq(s.details,
                         c.rc == FT_OK ? "canceled as its training ended" : "Training finished",
                         "round %d", i);
        cr_assert_eq(s.cancel_requested, c.rc == FT_OK, "round %d", i);
        cancel_first += c.rc == FT_OK;
        assert_frozen(id);
    }
    cr_log_info("cancel came first %d of %d times", cancel_first, ROUNDS);
}

Test(races, the_workers_end_vs_the_scheduler_marking_it_failed)
{
    for (int i = 0; i < ROUNDS; i++) {
        int64_t id = started_run();
        struct side f = {.what = FINISH, .store = E.worker};
        struct side x = {.what = FAIL, .store = E.daemon};
        race(&f, &x, id);
        struct snapshot s;
        snap(id, &s);
        cr_assert_eq((f.rc == FT_OK) + (x.rc == FT_OK), 1, "round %d: exactly one wins", i);
        cr_assert_eq(f.rc == FT_OK ? x.rc : f.rc, FT_ECONFLICT, "round %d", i);
        cr_assert_str_eq(s.status, f.rc == FT_OK ? "FINISHED" : "FAILED", "round %d", i);
        cr_assert_str_eq(s.details,
                         f.rc == FT_OK ? "Training finished" : "the worker process died");
        assert_frozen(id);
    }
}

Test(races, cancel_vs_the_scheduler_claiming_a_created_run)
{
    int claimed_first = 0;
    for (int i = 0; i < ROUNDS; i++) {
        int64_t id = new_run();
        struct side c = {.what = CANCEL, .store = E.daemon};
        struct side k = {.what = CLAIM, .store = E.worker};
        race(&c, &k, id);
        struct snapshot s;
        snap(id, &s);
        cr_assert_eq(c.rc, FT_OK, "round %d: a run not ended can be canceled", i);
        if (k.rc == FT_OK) {
            /* claimed first: it is the worker's to stop, and the cancel is on record */
            cr_assert_eq(k.claimed, id);
            cr_assert_str_eq(s.status, "STARTED", "round %d", i);
            cr_assert(s.cancel_requested, "round %d", i);
            claimed_first++;
            cr_assert_eq(ft_store_run_finish(E.worker, id, "CANCELED", "stopped"), FT_OK);
        } else {
            /* canceled first: never started, and nothing can start it */
            cr_assert_eq(k.rc, FT_ENOT_FOUND, "round %d", i);
            cr_assert_str_eq(s.status, "CANCELED", "round %d", i);
            json_t *run;
            cr_assert_eq(ft_store_run_get(E.daemon, id, &run, NULL), FT_OK);
            cr_assert(json_is_null(json_object_get(run, "started_at")));
            json_decref(run);
        }
        assert_frozen(id);
    }
    cr_log_info("the claim came first %d of %d times", claimed_first, ROUNDS);
}

Test(races, a_requeued_run_whose_cancel_was_requested_ends_canceled)
{
    int64_t id = started_run();
    cr_assert_eq(ft_store_run_cancel(E.daemon, id, NULL), FT_OK);
    cr_assert_eq(ft_store_runs_requeue_started(E.daemon, "daemon stopping"), 1);
    struct snapshot s;
    snap(id, &s);
    cr_assert_str_eq(s.status, "CANCELED", "not queued again to be stopped later");
    assert_frozen(id);
    int64_t id2 = started_run(); /* without a cancel it goes back to the queue */
    ft_store_run_requeue(E.daemon, id2, "worker interrupted");
    snap(id2, &s);
    cr_assert_str_eq(s.status, "CREATED");
}

/* ---- the worker ---- */

static void handle(const char *method, const char *path, const char *ctype, const char *body,
                   int want)
{
    struct ft_api api = {.store = E.daemon, .max_upload = 1u << 30};
    struct ft_http_request req = {.method = method, .path = path, .content_type = ctype};
    struct ft_http_response resp = {0};
    req.body = strdup(body);
    req.body_len = strlen(body);
    ft_api_handle(&api, &req, &resp);
    cr_assert_eq(resp.status, want, "%s %s: %d %s", method, path, resp.status, resp.body);
    ft_http_request_clear(&req);
    ft_http_response_clear(&resp);
}

/* 64 rows x 4 columns, 4 classes, as dataset "d". */
static void put_dataset(void)
{
    char csv[8192];
    size_t n = (size_t)snprintf(csv, sizeof csv, "label,a,b,c,d\n");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(csv + n, sizeof csv - n, "c%d,%d,%.2f,%.2f,1\n", i % 4, i % 4,
                              0.1 * (i % 7), 0.3 * (i % 3));
    handle("PUT", "/api/v1/datasets/d", "text/csv", csv, 201);
}

/* Submit run name with epochs, claim it (STARTED) and request its cancel; returns its id. */
static int64_t started_and_cancel_requested(const char *name, int epochs)
{
    char body[512];
    int64_t id, claimed;
    snprintf(body, sizeof body,
             "{\"name\": \"%s\", \"config\": {\"model\": {\"name\": \"mlp\", \"options\": "
             "{\"hidden_sizes\": [8]}}, \"data\": {\"train_data\": \"d\", \"sampler\": "
             "\"random\"}, \"hyper_parameters\": {\"epochs\": %d, \"batch_size\": 8}}}",
             name, epochs);
    handle("POST", "/api/v1/experiments/e/runs", "application/json", body, 201);
    cr_assert_eq(ft_store_run_find(E.daemon, "", "e", name, &id, NULL), FT_OK);
    cr_assert_eq(ft_store_run_claim_next(E.daemon, &claimed, NULL), FT_OK);
    cr_assert_eq(claimed, id);
    cr_assert_eq(ft_store_run_cancel(E.daemon, id, NULL), FT_OK);
    return id;
}

/* The run ended one way, and its log, details and artifact all say the same. */
static void assert_consistent_end(int64_t id)
{
    struct snapshot s;
    snap(id, &s);
    char *logs = ft_store_logs_since(E.daemon, id, 0, NULL);
    char *artifact = ft_store_artifact_path(E.daemon, id);
    int canceled = strcmp(s.status, "CANCELED") == 0;
    cr_assert(canceled || strcmp(s.status, "FINISHED") == 0, "%s: %s", s.status, s.details);
    cr_assert_eq(strstr(logs, "Run canceled") != NULL, canceled, "%s", logs);
    cr_assert_eq(access(artifact, R_OK) == 0, !canceled, "an artifact only when FINISHED");
    cr_assert_null(strstr(s.details, "cancel requested"), "details are the end's: %s", s.details);
    free(logs);
    free(artifact);
    assert_frozen(id);
}

Test(races, the_worker_stops_a_run_whose_cancel_was_requested)
{
    put_dataset();
    int64_t id = started_and_cancel_requested("long", 10000);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_assert_eq(ft_worker_main(id, E.dir), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct snapshot s;
    snap(id, &s);
    cr_assert_str_eq(s.status, "CANCELED", "%s", s.details);
    cr_assert_lt((double)(t1.tv_sec - t0.tv_sec), 30.0, "stopped at a batch soon after");
    assert_consistent_end(id);
}

Test(races, a_run_that_finishes_as_its_cancel_arrives_ends_one_way)
{
    put_dataset();
    const int epochs[] = {1, 3, 8, 20};
    for (size_t i = 0; i < sizeof epochs / sizeof epochs[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "r%zu", i);
        int64_t id = started_and_cancel_requested(name, epochs[i]);
        cr_assert_eq(ft_worker_main(id, E.dir), 0);
        assert_consistent_end(id);
    }
}

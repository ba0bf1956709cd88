/* test_client.c — libfinetuner and the finetuner CLI against a real build/finetunerd.
 *
 * Each test gets its own daemon (free 127.0.0.1 port, temporary data directory; see
 * tests/support/daemon.h) and its own temporary directory for local files. Covered: health;
 * a transport error; CSV push/list/get/delete with the dataset object; IDX multipart push;
 * server errors passed through with code/message/param/status (ragged CSV, duplicate name,
 * bad config path, bad names); client-side errors (missing file, malformed options JSON); the
 * exact submission body built from struct ft_fit_params (every keyword, unset fields left out);
 * the newer keywords (output_dim, freeze, sampler, standardize, scheduler, loss_optimizer)
 * through a real run with its example queries fetched back; a tiny 2-epoch run followed
 * through the SSE log stream, then status, logs, metrics, artifact, list, cancel-after-end and
 * delete; cancel of a long run; the SSE parser fed byte by byte; and the CLI's exit codes,
 * error line, fit flags and examples command; an access token set on the client or given to
 * the CLI (--token, $FINETUNER_TOKEN) reaching a server that has tokens, and 401 without one.
 * Runs use 160 rows x 8 dims: well under a second.
 *
 * It also includes the server's error and callback headers next to finetuner.h: the public
 * header must not clash with them. */
#include "callbacks.h"
#include "finetuner.h"
#include "fit_config.h"
#include "ft_error.h"
#include "sse.h"
#include "support/daemon.h"
#include "transport.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static struct td_daemon D;
static char tmpdir[256];
static ft_client *C;

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ft-client-test-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    td_daemon_start(&D, NULL);
    C = ft_client_new(D.base_url); /* ".../api/v1": the client accepts it */
    cr_assert_not_null(C);
}

static void teardown(void)
{
    ft_client_free(C);
    C = NULL;
    td_daemon_stop(&D);
    td_remove_tree(tmpdir);
}

TestSuite(client, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---- */

/* tmpdir/name in one of 4 rotating static buffers. */
static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", tmpdir, name);
    return buf[i];
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* 160 rows, 4 classes, 8 features: class l is bright in features l and l + 4. */
static const char *tiny_csv(void)
{
    const char *path = tmp_path("tiny.csv");
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "label,f0,f1,f2,f3,f4,f5,f6,f7\n");
    for (int i = 0; i < 160; i++) {
        int l = i % 4;
        fprintf(f, "c%d", l);
        for (int j = 0; j < 8; j++)
            fprintf(f, ",%.3f", (j % 4 == l ? 1.0 : 0.0) + 0.01 * ((i * 7 + j * 13) % 17));
        fprintf(f, "\n");
    }
    cr_assert_eq(fclose(f), 0);
    return path;
}

static void push_tiny(const char *name)
{
    cr_assert_eq(ft_dataset_push_csv(C, name, tiny_csv()), 0, "%s: %s", ft_client_error_code(C),
                 ft_client_error_message(C));
}

/* The last call failed with code, param (NULL = none) and HTTP status. */
static void assert_error(const char *code, const char *param, long status)
{
    cr_assert_str_eq(ft_client_error_code(C), code, "%s", ft_client_error_message(C));
    if (param)
        cr_assert_str_eq(ft_client_error_param(C) ? ft_client_error_param(C) : "(null)", param,
                         "%s", ft_client_error_message(C));
    else
        cr_assert_null(ft_client_error_param(C), "%s", ft_client_error_param(C));
    cr_assert_eq(ft_client_http_status(C), status);
    cr_assert_neq(ft_client_error_message(C)[0], '\0');
}

static json_t *parse(const char *text)
{
    json_t *o = json_loads(text, 0, NULL);
    cr_assert_not_null(o, "not JSON: %s", text);
    return o;
}

static long long jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    cr_assert(json_is_integer(v), "%s is not an integer", key);
    return (long long)json_integer_value(v);
}

/* A run of tiny (batches of 16) with all three callbacks when callbacks is set. */
static ft_run *fit_tiny(const char *run_name, int epochs, int callbacks)
{
    struct ft_callback cbs[] = {ft_evaluation_callback("tiny", NULL, 5, "cosine"),
                                ft_best_model_checkpoint("val_loss", NULL),
                                ft_early_stopping("val_loss", "min", 3, -1)};
    struct ft_fit_params p = {.model = "mlp",
                              .model_options = "{\"hidden_sizes\": [16]}",
                              .train_data = "tiny",
                              .eval_data = "tiny",
                              .run_name = run_name,
                              .experiment_name = "exp1",
                              .epochs = epochs,
                              .batch_size = 16,
                              .callbacks = cbs,
                              .num_callbacks = callbacks ? 3 : 0,
                              .has_seed = 1,
                              .seed = 7};
    ft_run *run = NULL;
    cr_assert_eq(ft_fit(C, &p, &run), 0, "%s: %s (%s)", ft_client_error_code(C),
                 ft_client_error_message(C), ft_client_error_param(C));
    cr_assert_not_null(run);
    return run;
}

/* ---- health and transport ---- */

Test(client, health)
{
    char *version = NULL;
    cr_assert_eq(ft_client_health(C, &version), 0, "%s", ft_client_error_message(C));
    cr_assert_str_eq(version, "0.1.0");
    cr_assert_str_eq(ft_client_error_code(C), "");
    cr_assert_null(ft_client_error_param(C));
    cr_assert_eq(ft_client_http_status(C), 200);
    free(version);
}

Test(client, transport_error_when_nothing_listens)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", D.port);
    td_daemon_stop(&D);
    ft_client *c = ft_client_new(url);
    cr_assert_not_null(c);
    char *version = (char *)"unset";
    cr_assert_eq(ft_client_health(c, &version), -1);
    cr_assert_null(version);
    cr_assert_str_eq(ft_client_error_code(c), "transport");
    cr_assert_null(ft_client_error_param(c));
    cr_assert_eq(ft_client_http_status(c), 0);
    cr_assert_neq(ft_client_error_message(c)[0], '\0');
    ft_client_free(c);
}

/* ---- datasets ---- */

Test(client, dataset_push_csv_list_get_delete)
{
    push_tiny("tiny");
    json_t *ds = parse(ft_client_last_response(C));
    cr_assert_str_eq(json_string_value(json_object_get(ds, "name")), "tiny");
    cr_assert_str_eq(json_string_value(json_object_get(ds, "format")), "csv");
    cr_assert_eq(jint(ds, "rows"), 160);
    cr_assert_eq(jint(ds, "dims"), 8);
    cr_assert_eq(jint(ds, "labels"), 4);
    cr_assert_gt(jint(ds, "bytes"), 160 * 8 * 4);
    json_decref(ds);

    char *text = NULL;
    cr_assert_eq(ft_dataset_list(C, &text), 0);
    json_t *root = parse(text);
    json_t *list = json_object_get(root, "datasets");
    cr_assert_eq(json_array_size(list), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "name")), "tiny");
    json_decref(root);
    free(text);

    cr_assert_eq(ft_dataset_get(C, "tiny", &text), 0);
    ds = parse(text);
    cr_assert_eq(jint(ds, "rows"), 160);
    json_decref(ds);
    free(text);

    cr_assert_eq(ft_dataset_delete(C, "tiny"), 0);
    cr_assert_eq(ft_dataset_get(C, "tiny", &text), -1);
    cr_assert_null(text);
    cr_assert_str_eq(ft_client_error_code(C), "not_found");
    cr_assert_eq(ft_client_http_status(C), 404);
}

Test(client, ragged_csv_comes_back_as_invalid_argument_naming_the_line)
{
    const char *path = tmp_path("ragged.csv");
    const char *csv = "label,a,b\n1,0.5,0.25\n2,0.5\n";
    write_file(path, csv, strlen(csv));
    cr_assert_eq(ft_dataset_push_csv(C, "ragged", path), -1);
    cr_assert_str_eq(ft_client_error_code(C), "invalid_argument");
    cr_assert_eq(ft_client_http_status(C), 400);
    cr_assert_not_null(strstr(ft_client_error_message(C), "line 3"), "%s",
                       ft_client_error_message(C));
    cr_assert_not_null(ft_client_error_param(C));
}

Test(client, duplicate_dataset_is_a_conflict_on_name)
{
    push_tiny("tiny");
    cr_assert_eq(ft_dataset_push_csv(C, "tiny", tiny_csv()), -1);
    assert_error("conflict", "name", 409);
    cr_assert_not_null(strstr(ft_client_error_message(C), "tiny"));
}

Test(client, local_errors_make_no_request)
{
    cr_assert_eq(ft_dataset_push_csv(C, "x", tmp_path("missing.csv")), -1);
    assert_error("io_error", "path", 0);
    cr_assert_eq(ft_dataset_push_csv(C, "", tiny_csv()), -1);
    assert_error("invalid_argument", "name", 0);
    cr_assert_eq(ft_dataset_push_idx(C, "x", tiny_csv(), tmp_path("nope")), -1);
    assert_error("io_error", "labels_path", 0);
    char *text = NULL;
    cr_assert_eq(ft_dataset_list(C, &text), 0); /* nothing was stored */
    json_t *o = parse(text);
    cr_assert_eq(json_array_size(json_object_get(o, "datasets")), 0);
    json_decref(o);
    free(text);
}

static void put_be32(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

Test(client, dataset_push_idx_multipart)
{
    enum { N = 12, R = 3, COLS = 4 };
    unsigned char images[16 + N * R * COLS], labels[8 + N];
    put_be32(images, 0x00000803);
    put_be32(images + 4, N);
    put_be32(images + 8, R);
    put_be32(images + 12, COLS);
    for (int i = 0; i < N * R * COLS; i++)
        images[16 + i] = (unsigned char)(i * 37);
    put_be32(labels, 0x00000801);
    put_be32(labels + 4, N);
    for (int i = 0; i < N; i++)
        labels[8 + i] = (unsigned char)(i % 3);
    write_file(tmp_path("images.idx"), images, sizeof images);
    write_file(tmp_path("labels.idx"), labels, sizeof labels);
    cr_assert_eq(ft_dataset_push_idx(C, "img", tmp_path("images.idx"), tmp_path("labels.idx")), 0,
                 "%s: %s", ft_client_error_code(C), ft_client_error_message(C));
    json_t *ds = parse(ft_client_last_response(C));
    cr_assert_str_eq(json_string_value(json_object_get(ds, "format")), "idx");
    cr_assert_eq(jint(ds, "rows"), N);
    cr_assert_eq(jint(ds, "dims"), R * COLS);
    cr_assert_eq(jint(ds, "labels"), 3);
    json_decref(ds);

    /* images and labels swapped: the server says which part is wrong */
    cr_assert_eq(ft_dataset_push_idx(C, "img2", tmp_path("labels.idx"), tmp_path("images.idx")),
                 -1);
    cr_assert_str_eq(ft_client_error_code(C), "invalid_argument");
    cr_assert_eq(ft_client_http_status(C), 400);
    cr_assert_not_null(ft_client_error_param(C));
}

/* ---- fit: request body and errors ---- */

Test(client, fit_body_leaves_unset_fields_out)
{
    struct ft_fit_params p = {.model = "mlp", .train_data = "t"};
    char *body = ftc_fit_body(C, &p);
    cr_assert_not_null(body);
    cr_assert_str_eq(body, "{\"config\":{\"model\":{\"name\":\"mlp\"},\"data\":"
                           "{\"train_data\":\"t\"}}}");
    free(body);
}

Test(client, fit_body_mirrors_every_keyword)
{
    struct ft_callback cbs[] = {ft_evaluation_callback("q", "i", 10, "euclidean"),
                                ft_early_stopping(NULL, NULL, 0, -1),
                                {.name = "BestModelCheckpoint", .options = "{\"mode\": \"min\"}"}};
    struct ft_fit_params p = {.model = "mlp",
                              .model_options = "{\"l2\": false}",
                              .output_dim = 16,
                              .has_freeze = 1,
                              .freeze = 1,
                              .model_artifact = "exp0/base",
                              .train_data = "t",
                              .eval_data = "e",
                              .run_name = "r",
                              .description = "d",
                              .loss = "TripletMarginLoss",
                              .loss_options = "{\"margin\": 0.5}",
                              .miner = "TripletMarginMiner",
                              .miner_options = "{\"type_of_triplets\": \"hard\"}",
                              .optimizer = "SGD",
                              .optimizer_options = "{\"momentum\": 0.9}",
                              .loss_optimizer = "AdamW",
                              .loss_optimizer_options = "{\"weight_decay\": 0.5}",
                              .scheduler = "linear",
                              .scheduler_options = "{\"num_warmup_steps\": 4}",
                              .learning_rate = 0.25,
                              .epochs = 3,
                              .batch_size = 32,
                              .num_items_per_class = 2,
                              .sampler = "class",
                              .has_standardize = 1,
                              .standardize_mean = 0.5,
                              .standardize_std = 0.25,
                              .callbacks = cbs,
                              .num_callbacks = 3,
                              .has_seed = 1,
                              .seed = 0};
    char *body = ftc_fit_body(C, &p);
    cr_assert_not_null(body, "%s", ft_client_error_message(C));
    json_t *got = parse(body);
    json_t *want = parse(
        "{\"name\": \"r\", \"description\": \"d\", \"config\": {"
        "\"model\": {\"name\": \"mlp\", \"options\": {\"l2\": false}, \"output_dim\": 16,"
        "\"freeze\": true, \"artifact\": \"exp0/base\"},"
        "\"data\": {\"train_data\": \"t\", \"eval_data\": \"e\", \"num_items_per_class\": 2,"
        "\"sampler\": \"class\", \"standardize\": {\"mean\": 0.5, \"std\": 0.25}},"
        "\"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": "
        "0.5}, \"miner\": \"TripletMarginMiner\", \"miner_options\": {\"type_of_triplets\": "
        "\"hard\"}, \"optimizer\": \"SGD\", \"optimizer_options\": {\"momentum\": 0.9}, "
        "\"loss_optimizer\": \"AdamW\", \"loss_optimizer_options\": {\"weight_decay\": 0.5}, "
        "\"scheduler\": \"linear\", \"scheduler_options\": {\"num_warmup_steps\": 4}, "
        "\"learning_rate\": 0.25, \"epochs\": 3, \"batch_size\": 32},"
        "\"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
        "\"index_data\": \"i\", \"distance\": \"euclidean\", \"limit\": 10}},"
        "{\"name\": \"EarlyStopping\", \"options\": {\"patience\": 0}},"
        "{\"name\": \"BestModelCheckpoint\", \"options\": {\"mode\": \"min\"}}],"
        "\"seed\": 0}}");
    cr_assert(json_equal(got, want), "got %s", body);
    json_decref(got);
    json_decref(want);
    free(body);
}

Test(client, fit_body_sends_an_explicit_false_freeze_and_no_unset_standardize)
{
    struct ft_fit_params p = {.model = "cnn",
                              .train_data = "t",
                              .has_freeze = 1,
                              .standardize_mean = 3,
                              .standardize_std = 2};
    char *body = ftc_fit_body(C, &p);
    cr_assert_not_null(body);
    cr_assert_str_eq(body, "{\"config\":{\"model\":{\"name\":\"cnn\",\"freeze\":false},"
                           "\"data\":{\"train_data\":\"t\"}}}");
    free(body);
}

Test(client, fit_rejects_malformed_options_before_any_request)
{
    struct ft_fit_params p = {.model = "mlp", .train_data = "t", .loss_options = "{margin: 1}"};
    static char dummy;
    ft_run *run = (ft_run *)&dummy; /* must be reset to NULL */
    cr_assert_eq(ft_fit(C, &p, &run), -1);
    cr_assert_null(run);
    assert_error("invalid_argument", "loss_options", 0);

    struct ft_callback cb = {.name = "EarlyStopping", .options = "[1]"};
    struct ft_fit_params q = {.model = "mlp", .callbacks = &cb, .num_callbacks = 1};
    cr_assert_eq(ft_fit(C, &q, &run), -1);
    assert_error("invalid_argument", "callbacks[0].options", 0);

    struct ft_fit_params r = {.model = "mlp", .train_data = "t", .scheduler_options = "7"};
    cr_assert_eq(ft_fit(C, &r, &run), -1);
    assert_error("invalid_argument", "scheduler_options", 0);
    r = (struct ft_fit_params){.model = "mlp", .loss_optimizer_options = "{"};
    cr_assert_eq(ft_fit(C, &r, &run), -1);
    assert_error("invalid_argument", "loss_optimizer_options", 0);
}

Test(client, fit_passes_the_servers_config_errors_through)
{
    push_tiny("tiny");
    struct ft_fit_params p = {.model = "mlp", .train_data = "tiny", .epochs = -1};
    ft_run *run;
    cr_assert_eq(ft_fit(C, &p, &run), -1);
    assert_error("invalid_argument", "config.hyper_parameters.epochs", 400);

    p.epochs = 1;
    p.train_data = "missing";
    cr_assert_eq(ft_fit(C, &p, &run), -1);
    assert_error("invalid_argument", "config.data.train_data", 400);

    p.train_data = "tiny";
    p.experiment_name = "bad name";
    cr_assert_eq(ft_fit(C, &p, &run), -1);
    assert_error("invalid_argument", "experiment", 400);

    cr_assert_eq(ft_get_run(C, "exp1", "nope", &run), -1);
    cr_assert_null(run);
    cr_assert_str_eq(ft_client_error_code(C), "not_found");
    cr_assert_eq(ft_client_http_status(C), 404);
}

/* ---- a whole run ---- */

struct lines {
    int n, training, done;
};

static void count_line(const char *line, void *ctx)
{
    struct lines *l = ctx;
    l->n++;
    l->training += strncmp(line, "Training [", 10) == 0;
    l->done += strcmp(line, "Done") == 0;
    cr_assert_null(strchr(line, '\n'));
}

static void check_metrics(ft_run *run)
{
    char *text = NULL;
    cr_assert_eq(ft_run_metrics(run, &text), 0);
    json_t *m = parse(text);
    json_t *epochs = json_object_get(m, "epochs");
    cr_assert_eq(json_array_size(epochs), 2, "%s", text);
    cr_assert_eq(jint(json_array_get(epochs, 0), "epoch"), 1);
    cr_assert(json_is_number(json_object_get(json_array_get(epochs, 1), "train_loss")));
    cr_assert(json_is_number(json_object_get(json_object_get(m, "after"), "mlp_hit_at_k")));
    json_decref(m);
    free(text);
}

static void check_artifact(ft_run *run)
{
    struct stat st;
    const char *path = tmp_path("model.safetensors");
    cr_assert_eq(ft_run_save_artifact(run, path), 0, "%s", ft_client_error_message(C));
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_gt(st.st_size, 8);
    cr_assert_neq(stat(tmp_path("model.safetensors.tmp"), &st), 0);
    cr_assert_eq(ft_run_save_artifact(run, tmp_path("no/such/dir/m")), -1);
    assert_error("io_error", "path", 0);
}

Test(client, tiny_run_end_to_end)
{
    push_tiny("tiny");
    ft_run *run = fit_tiny("first", 2, 1);
    cr_assert_str_eq(ft_run_name(run), "first");
    cr_assert_str_eq(ft_run_experiment(run), "exp1");
    cr_assert_eq(ft_run_client(run), C);
    json_t *obj = parse(ft_client_last_response(C));
    json_t *cfg = json_object_get(obj, "config");
    cr_assert_eq(jint(cfg, "seed"), 7);
    cr_assert_eq(jint(json_object_get(cfg, "hyper_parameters"), "epochs"), 2);
    cr_assert_eq(json_array_size(json_object_get(cfg, "callbacks")), 3);
    json_decref(obj);

    struct lines l = {0};
    cr_assert_eq(ft_run_stream_logs(run, count_line, &l), 0, "%s", ft_client_error_message(C));
    cr_assert_str_eq(ft_run_last_status(run), "FINISHED");
    cr_assert_gt(l.training, 0);
    cr_assert_eq(l.done, 1);

    char status[FTC_STATUS_MAX];
    char *details = NULL;
    cr_assert_eq(ft_run_status(run, status, &details), 0);
    cr_assert_str_eq(status, "FINISHED");
    cr_assert_not_null(details);
    free(details);
    cr_assert_eq(ft_run_wait(run, 10, status), 0);
    cr_assert_str_eq(status, "FINISHED");

    char *logs = NULL;
    cr_assert_eq(ft_run_logs(run, &logs), 0);
    cr_assert_not_null(strstr(logs, "Training [2/2]"));
    int n = 0;
    for (const char *p = logs; *p; p++)
        n += *p == '\n';
    cr_assert_eq(n, l.n, "the stream gave %d lines, the log has %d", l.n, n);
    free(logs);

    check_metrics(run);
    check_artifact(run);

    char *list = NULL;
    cr_assert_eq(ft_list_runs(C, "exp1", 10, 0, &list), 0);
    json_t *o = parse(list);
    cr_assert_eq(jint(o, "total"), 1);
    cr_assert_eq(jint(o, "limit"), 10);
    json_decref(o);
    free(list);

    cr_assert_eq(ft_run_cancel(run), -1);
    assert_error("conflict", "run", 409);
    cr_assert_eq(ft_delete_run(C, "exp1", "first"), 0);
    ft_run *gone;
    cr_assert_eq(ft_get_run(C, "exp1", "first", &gone), -1);
    cr_assert_str_eq(ft_client_error_code(C), "not_found");
    ft_run_free(run);
}

static json_t *section(json_t *run_obj, const char *name)
{
    return json_object_get(json_object_get(run_obj, "config"), name);
}

/* The normalised config echoes the fields added since finetuner.fit()'s first keywords. */
static void check_new_fields(void)
{
    json_t *o = parse(ft_client_last_response(C));
    json_t *model = section(o, "model"), *data = section(o, "data");
    json_t *hp = section(o, "hyper_parameters");
    cr_assert_eq(jint(model, "output_dim"), 8);
    cr_assert(json_is_true(json_object_get(model, "freeze")));
    cr_assert_str_eq(json_string_value(json_object_get(data, "sampler")), "class");
    json_t *st = json_object_get(data, "standardize");
    cr_assert_float_eq(json_number_value(json_object_get(st, "mean")), 0.5, 1e-12);
    cr_assert_float_eq(json_number_value(json_object_get(st, "std")), 0.25, 1e-12);
    cr_assert_str_eq(json_string_value(json_object_get(hp, "scheduler")), "linear");
    cr_assert_eq(jint(json_object_get(hp, "scheduler_options"), "num_warmup_steps"), 2);
    cr_assert_str_eq(json_string_value(json_object_get(hp, "loss_optimizer")), "SGD");
    cr_assert(json_is_null(json_object_get(hp, "batch_size")), "batch_size is the server's pick");
    json_decref(o);
}

/* Example queries: one gathering EvaluationCallback, 3 queries before and after. */
static void check_examples(ft_run *run)
{
    char *text = NULL;
    cr_assert_eq(ft_run_examples(run, &text), 0, "%s", ft_client_error_message(C));
    json_t *o = parse(text);
    for (int i = 0; i < 2; i++) {
        json_t *list = json_object_get(o, i ? "after" : "before");
        cr_assert_eq(json_array_size(list), 1, "%s", text);
        cr_assert_eq(json_array_size(json_object_get(json_array_get(list, 0), "queries")), 3, "%s",
                     text);
    }
    json_decref(o);
    free(text);
}

Test(client, new_fit_keywords_reach_the_server_and_examples_come_back)
{
    push_tiny("tiny");
    struct ft_callback cb = {.name = "EvaluationCallback",
                             .options = "{\"query_data\": \"tiny\", \"gather_examples\": true, "
                                        "\"num_example_queries\": 3, \"limit\": 4}"};
    struct ft_fit_params p = {.model = "mlp",
                              .model_options = "{\"hidden_sizes\": [16]}",
                              .output_dim = 8,
                              .has_freeze = 1,
                              .freeze = 1,
                              .train_data = "tiny",
                              .experiment_name = "exp2",
                              .run_name = "new",
                              .loss = "ArcFaceLoss",
                              .loss_optimizer = "SGD",
                              .scheduler = "linear",
                              .scheduler_options = "{\"num_warmup_steps\": 2}",
                              .epochs = 1,
                              .sampler = "class",
                              .has_standardize = 1,
                              .standardize_mean = 0.5,
                              .standardize_std = 0.25,
                              .callbacks = &cb,
                              .num_callbacks = 1};
    ft_run *run = NULL;
    cr_assert_eq(ft_fit(C, &p, &run), 0, "%s: %s (%s)", ft_client_error_code(C),
                 ft_client_error_message(C), ft_client_error_param(C));
    check_new_fields();
    char status[FTC_STATUS_MAX];
    cr_assert_eq(ft_run_wait(run, 20, status), 0);
    cr_assert_str_eq(status, "FINISHED");
    check_examples(run);
    ft_run_free(run);

    p.sampler = "sometimes"; /* the server's word on a bad value comes through */
    p.run_name = "bad";
    cr_assert_eq(ft_fit(C, &p, &run), -1);
    assert_error("invalid_argument", "config.data.sampler", 400);
    p.sampler = NULL;
    p.standardize_std = 0;
    cr_assert_eq(ft_fit(C, &p, &run), -1);
    assert_error("invalid_argument", "config.data.standardize.std", 400);
}

Test(client, cancel_a_long_run)
{
    push_tiny("tiny");
    ft_run *run = fit_tiny("long", 10000, 0);
    struct stat st;
    cr_assert_eq(ft_run_save_artifact(run, tmp_path("early")), -1);
    cr_assert_str_eq(ft_client_error_code(C), "conflict");
    cr_assert_eq(ft_client_http_status(C), 409);
    cr_assert_neq(stat(tmp_path("early"), &st), 0);
    cr_assert_neq(stat(tmp_path("early.tmp"), &st), 0);
    cr_assert_eq(ft_run_cancel(run), 0, "%s", ft_client_error_message(C));
    char status[FTC_STATUS_MAX];
    cr_assert_eq(ft_run_wait(run, 20, status), 0);
    cr_assert_str_eq(status, "CANCELED");
    ft_run *again;
    cr_assert_eq(ft_get_run(C, "exp1", "long", &again), 0);
    cr_assert_str_eq(ft_run_last_status(again), "CANCELED");
    cr_assert(ft_run_status_is_terminal(ft_run_last_status(again)));
    cr_assert_not(ft_run_status_is_terminal("STARTED"));
    ft_run_free(again);
    ft_run_free(run);
}

/* ---- the SSE parser ---- */

struct events {
    char log[512];
    int stop_on_end;
};

static int record(void *ctx, const char *event, const char *data)
{
    struct events *e = ctx;
    size_t n = strlen(e->log);
    snprintf(e->log + n, sizeof e->log - n, "[%s|%s]", event, data);
    return e->stop_on_end && strcmp(event, "end") == 0;
}

Test(client, sse_parser_byte_by_byte)
{
    const char *stream = ": keepalive\n\ndata: one\n\ndata:two\r\n\r\ndata: a\ndata: b\n\n"
                         "id: 3\ndata: \n\nevent: end\ndata: FINISHED\n\ndata: after\n\n";
    struct events e = {.stop_on_end = 1};
    struct ftc_sse s;
    ftc_sse_init(&s, record, &e);
    int rc = 0;
    for (size_t i = 0; stream[i] && rc == 0; i++)
        rc = ftc_sse_feed(&s, stream + i, 1);
    ftc_sse_free(&s);
    cr_assert_eq(rc, 1);
    cr_assert_str_eq(e.log, "[message|one][message|two][message|a\nb][message|][end|FINISHED]");
}

/* ---- the CLI ---- */

/* Run the CLI with args (a shell word list); stdout/stderr to tmp files; returns exit code. */
static int cli(const char *args)
{
    char cmd[2048];
    const char *dir = getenv("FT_BIN_DIR");
    if (!dir || !*dir)
        dir = getenv("BUILD");
    if (!dir || !*dir)
        dir = "build";
    snprintf(cmd, sizeof cmd, "%s/finetuner --url http://127.0.0.1:%d %s >%s 2>%s", dir, D.port,
             args, tmp_path("out"), tmp_path("err"));
    int st = system(cmd);
    cr_assert(WIFEXITED(st), "%s", cmd);
    return WEXITSTATUS(st);
}

/* The whole of tmpdir/name (new string). */
static char *slurp(const char *name)
{
    static char buf[8192];
    FILE *f = fopen(tmp_path(name), "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(buf);
}

static void assert_output(const char *name, const char *needle)
{
    char *text = slurp(name);
    cr_assert_not_null(strstr(text, needle), "%s has no '%s': %s", name, needle, text);
    free(text);
}

Test(client, cli_exit_codes_and_error_line)
{
    char args[1024];
    snprintf(args, sizeof args, "dataset push tiny --csv %s", tiny_csv());
    cr_assert_eq(cli(args), 0);
    assert_output("out", "Dataset tiny: 160 rows, 8 dims, 4 labels");
    cr_assert_eq(cli(args), 1);
    assert_output("err", "error: conflict: ");
    assert_output("err", "(param: name)");
    cr_assert_eq(cli("status exp1 nope"), 1);
    assert_output("err", "error: not_found: ");
    cr_assert_eq(cli("status exp1"), 2);
    assert_output("err", "usage: finetuner status EXPERIMENT RUN");
    cr_assert_eq(cli("fit --epochs many"), 2);
    cr_assert_eq(cli("fit --bogus"), 2);
    cr_assert_eq(cli("status --help"), 0);
    cr_assert_eq(cli("fit --train-data tiny --epochs 1 --batch-size 16 --run-name c1 "
                     "--experiment e --callback 'EarlyStopping:{\"monitor\":\"train_loss\"}' "
                     "--seed 3 --follow"),
                 0);
    assert_output("out", "Training [1/1] 10/10 batches");
    assert_output("out", "Run c1 FINISHED");
    cr_assert_eq(cli("fit --train-data tiny --callback 'EarlyStopping:{\"patience\":-1}'"), 1);
    assert_output("err", "error: invalid_argument: ");
    assert_output("err", "(param: config.callbacks[0].options.patience)");
    cr_assert_eq(cli("runs e --json"), 0);
    assert_output("out", "\"total\": 1");
    cr_assert_eq(cli("examples e c1"), 0);
    assert_output("out", "\"before\": []");
    cr_assert_eq(cli("examples e"), 2);
}

Test(client, cli_new_fit_flags)
{
    char args[1024];
    snprintf(args, sizeof args, "dataset push tiny --csv %s", tiny_csv());
    cr_assert_eq(cli(args), 0);
    cr_assert_eq(cli("fit --train-data tiny --standardize 0.5"), 2);
    assert_output("err", "bad value '0.5' for --standardize (MEAN,STD)");
    cr_assert_eq(cli("fit --train-data tiny --standardize 0.5,x"), 2);
    cr_assert_eq(cli("fit --train-data tiny --output-dim 0"), 2);
    cr_assert_eq(cli("fit --train-data tiny --freeze=yes"), 2);
    cr_assert_eq(cli("fit --train-data tiny --freeze"), 1); /* freeze needs output_dim */
    assert_output("err", "(param: config.model.freeze)");
    cr_assert_eq(cli("fit --train-data tiny --model-artifact e/none --sampler random "
                     "--epochs 1 --run-name a1 --experiment e"),
                 1); /* whatever the server says of the artifact, it was sent */
    assert_output("err", "config.model.artifact");
    cr_assert_eq(
        cli("fit --train-data tiny --epochs 1 --run-name c2 --experiment e --output-dim 8 "
            "--freeze --sampler random --standardize 0.5,0.25 --scheduler cosine "
            "--scheduler-options '{\"num_warmup_steps\": 1}' --loss ArcFaceLoss "
            "--loss-optimizer AdamW --loss-optimizer-options '{\"weight_decay\": 0}' "
            "--callback 'EvaluationCallback:{\"query_data\": \"tiny\", \"gather_examples\": "
            "true}' --follow"),
        0);
    assert_output("out", "Run c2 FINISHED");
    cr_assert_eq(cli("examples e c2"), 0);
    assert_output("out", "\"queries\"");
    ft_run *run = NULL;
    cr_assert_eq(ft_get_run(C, "e", "c2", &run), 0);
    json_t *o = parse(ft_client_last_response(C));
    cr_assert_eq(jint(section(o, "model"), "output_dim"), 8);
    cr_assert(json_is_true(json_object_get(section(o, "model"), "freeze")));
    json_t *data = section(o, "data"), *hp = section(o, "hyper_parameters");
    cr_assert_str_eq(json_string_value(json_object_get(data, "sampler")), "random");
    cr_assert_float_eq(
        json_number_value(json_object_get(json_object_get(data, "standardize"), "std")), 0.25,
        1e-12);
    cr_assert_str_eq(json_string_value(json_object_get(hp, "scheduler")), "cosine");
    cr_assert_str_eq(json_string_value(json_object_get(hp, "loss_optimizer")), "AdamW");
    json_decref(o);
    ft_run_free(run);
}

/* ---- access tokens ---- */

Test(client, a_token_from_set_token_or_the_cli_reaches_the_server)
{
    char alice[128], bob[128], *json = NULL;
    cr_assert_eq(td_token(D.data_dir, "create", "alice", alice, sizeof alice), 0);
    cr_assert_eq(td_token(D.data_dir, "create", "bob", bob, sizeof bob), 0);
    cr_assert_eq(ft_client_health(C, NULL), 0, "health needs no token");
    cr_assert_eq(ft_dataset_list(C, &json), -1);
    assert_error("unauthorized", "Authorization", 401);
    cr_assert_eq(ft_client_set_token(C, "two words"), -1);
    cr_assert_str_eq(ft_client_error_code(C), "invalid_argument");
    cr_assert_str_eq(ft_client_error_param(C), "token");
    cr_assert_eq(ft_client_set_token(C, alice), 0);
    push_tiny("tiny");
    cr_assert_eq(ft_dataset_list(C, &json), 0, "%s", ft_client_error_message(C));
    cr_assert_not_null(strstr(json, "\"tiny\""));
    free(json);
    json = NULL;
    /* another user's client does not see alice's dataset */
    ft_client *c2 = ft_client_new(D.base_url);
    cr_assert_eq(ft_client_set_token(c2, bob), 0);
    cr_assert_eq(ft_dataset_get(c2, "tiny", &json), -1);
    cr_assert_str_eq(ft_client_error_code(c2), "not_found");
    cr_assert_eq(ft_client_http_status(c2), 404);
    ft_client_free(c2);
    cr_assert_eq(ft_client_set_token(C, NULL), 0, "no token again");
    cr_assert_eq(ft_dataset_get(C, "tiny", &json), -1);
    assert_error("unauthorized", "Authorization", 401);
    /* the CLI: --token, $FINETUNER_TOKEN, or a 401 error line */
    cr_assert_eq(cli("dataset list"), 1);
    assert_output("err", "error: unauthorized: ");
    char args[256];
    snprintf(args, sizeof args, "--token %s dataset list", alice);
    cr_assert_eq(cli(args), 0);
    assert_output("out", "tiny");
    setenv("FINETUNER_TOKEN", alice, 1);
    cr_assert_eq(cli("dataset list"), 0);
    assert_output("out", "tiny");
    snprintf(args, sizeof args, "--token=%s dataset list", bob);
    cr_assert_eq(cli(args), 0, "the flag wins over the environment");
    char *out = slurp("out");
    cr_assert_null(strstr(out, "tiny"), "%s", out);
    free(out);
    unsetenv("FINETUNER_TOKEN");
}

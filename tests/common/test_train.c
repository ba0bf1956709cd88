/* test_train.c — the training loop in-process on small synthetic clusters: metrics improve,
 * callbacks decide the stop and the artifact, failures carry their reason. */
#include "rng.h"
#include "safetensors.h"
#include "train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIM 16
#define CLASSES 4

/* CLASSES Gaussian clusters in DIM dims (centres far apart relative to noise scale), n rows. */
static struct ft_dataset *clusters(int64_t n, double noise, uint64_t seed)
{
    struct ft_rng rng;
    struct ft_dataset *ds = calloc(1, sizeof *ds);
    ft_rng_seed(&rng, seed);
    ds->n = n;
    ds->dim = DIM;
    ds->x = malloc((size_t)n * DIM * sizeof(float));
    ds->labels = malloc((size_t)n * sizeof(int32_t));
    ds->num_labels = CLASSES;
    ds->label_names = calloc(CLASSES, sizeof(char *));
    for (int c = 0; c < CLASSES; c++) {
        ds->label_names[c] = malloc(16);
        snprintf(ds->label_names[c], 16, "c%d", c);
    }
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(i % CLASSES);
        ds->labels[i] = c;
        for (int d = 0; d < DIM; d++) {
            double centre = (d % CLASSES == c) ? 1.0 : 0.0;
            ds->x[i * DIM + d] = (float)(centre + noise * (ft_rng_uniform(&rng) * 2 - 1));
        }
    }
    return ds;
}

struct capture {
    char log[65536];
    size_t len;
    int metrics_calls, epochs_seen;
    double before_p, after_p;
    int cancel_after; /* cancel once this many batches were asked about; 0 = never */
    int checks;
};

static void on_log(void *ctx, const char *line)
{
    struct capture *c = ctx;
    int n = snprintf(c->log + c->len, sizeof c->log - c->len, "%s\n", line);
    if (n > 0 && c->len + (size_t)n < sizeof c->log)
        c->len += (size_t)n;
}

static void on_metrics(void *ctx, const char *phase, int epoch, json_t *values)
{
    struct capture *c = ctx;
    double p = json_number_value(json_object_get(values, "mlp_precision_at_k"));
    c->metrics_calls++;
    if (strcmp(phase, "before") == 0)
        c->before_p = p;
    else if (strcmp(phase, "after") == 0)
        c->after_p = p;
    else
        c->epochs_seen = epoch;
}

static int on_canceled(void *ctx)
{
    struct capture *c = ctx;
    return c->cancel_after && ++c->checks > c->cancel_after;
}

static void config(struct ft_run_config *cfg, const char *callbacks_json, int epochs)
{
    char text[2048];
    struct ft_error err;
    snprintf(text, sizeof text,
             "{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [32, 8], \"l2\": "
             "true}}, \"data\": {\"train_data\": \"tr\", \"eval_data\": \"ev\"}, "
             "\"hyper_parameters\": {\"epochs\": %d, \"batch_size\": 32, \"learning_rate\": "
             "0.01, \"loss_options\": {\"margin\": 0.2, \"distance\": \"cosine\"}}, "
             "\"callbacks\": %s, \"seed\": 3}",
             epochs, callbacks_json);
    json_t *j = json_loads(text, 0, NULL);
    cr_assert_not_null(j);
    cr_assert_eq(ft_run_config_parse(j, cfg, NULL, &err), FT_OK, "%s", err.message);
    json_decref(j);
}

static char *artifact_path(void)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ft_test_train_%d.safetensors", (int)getpid());
    return path;
}

Test(train, metrics_improve_and_artifact_is_the_best_epoch)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {0};
    struct ft_dataset *tr = clusters(512, 1.6, 1), *ev = clusters(256, 1.6, 2);
    config(&cfg,
           "[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"ev\", "
           "\"limit\": 10}}, {\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
           "\"mlp_precision_at_k\"}}]",
           4);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev}};
    struct ft_train_hooks hooks = {&cap, on_log, on_metrics, on_canceled};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s",
                 err.message);
    cr_assert_eq(res.epochs_completed, 4);
    cr_assert_eq(res.stopped_early, 0);
    cr_assert(res.best_epoch >= 1 && res.best_epoch <= 4);
    cr_assert_eq(cap.metrics_calls, 6, "before + 4 epochs + after");
    cr_assert_gt(cap.after_p, cap.before_p + 0.05, "before %g after %g", cap.before_p, cap.after_p);
    cr_assert(strstr(cap.log, "Model improved from -inf to"), "%s", cap.log);
    cr_assert(strstr(cap.log, "Metric: 'mlp_average_precision' Value: "));
    cr_assert(strstr(cap.log, "Finetuning took 0 days, 0 hours"));
    cr_assert(strstr(cap.log, "Done\n"));

    ft_safetensors *st;
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_open(artifact_path(), &st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_safetensors_get(st, "linear_0.weight", &v), 0);
    cr_assert_eq(v.shape[0], 32);
    cr_assert_eq(v.shape[1], DIM);
    cr_assert_eq(ft_safetensors_get(st, "linear_1.weight", &v), 0);
    cr_assert_eq(v.shape[0], 8);
    json_t *meta = ft_safetensors_metadata(st);
    char want[16];
    snprintf(want, sizeof want, "%d", res.best_epoch);
    cr_assert_str_eq(json_string_value(json_object_get(meta, "best_epoch")), want);
    cr_assert_not_null(json_object_get(meta, "model_config"));
    ft_safetensors_free(st);
    unlink(artifact_path());
    ft_dataset_free(tr);
    ft_dataset_free(ev);
    ft_run_config_clear(&cfg);
}

Test(train, early_stopping_stops_and_says_so)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {0};
    struct ft_dataset *tr = clusters(256, 0.2, 1), *ev = clusters(128, 0.2, 2);
    /* well separated: precision is 1.0 every epoch, so in mode min it never improves after
     * the first epoch and patience 0 stops after epoch 2 */
    config(&cfg,
           "[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"ev\"}}, "
           "{\"name\": \"EarlyStopping\", \"options\": {\"monitor\": \"mlp_precision_at_k\", "
           "\"mode\": \"min\", \"patience\": 0}}]",
           5);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev}};
    struct ft_train_hooks hooks = {&cap, on_log, on_metrics, NULL};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s",
                 err.message);
    cr_assert_eq(res.epochs_completed, 2, "%s", cap.log);
    cr_assert_eq(res.stopped_early, 1);
    cr_assert_eq(res.best_epoch, 0);
    cr_assert(strstr(res.details, "stopped early after epoch 2 of 5"), "%s", res.details);
    cr_assert(strstr(cap.log, "Early stopping after epoch 2"));
    unlink(artifact_path());
    ft_dataset_free(tr);
    ft_dataset_free(ev);
    ft_run_config_clear(&cfg);
}

Test(train, non_finite_loss_fails_with_epoch_and_batch)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct ft_dataset *tr = clusters(256, 0.5, 1);
    for (int64_t i = 0; i < tr->n * DIM; i++) /* finite, but squared distances overflow */
        tr->x[i] *= 1e30f;
    config(&cfg, "[]", 2);
    cfg.eval_data[0] = '\0';
    json_object_set_new(cfg.model_options, "l2", json_false());
    json_object_set_new(cfg.loss_options, "distance", json_string("euclidean"));
    json_object_set_new(cfg.loss_options, "normalize_embeddings", json_false());
    struct ft_train_inputs in = {.train = tr};
    cr_assert_eq(ft_train(&cfg, &in, NULL, artifact_path(), &res, &err), FT_ENUMERIC);
    cr_assert(strstr(err.message, "the loss became NaN at epoch 1, batch 1"), "%s", err.message);
    cr_assert_neq(access(artifact_path(), F_OK), 0, "no artifact for a failed run");
    ft_dataset_free(tr);
    ft_run_config_clear(&cfg);
}

Test(train, cancel_stops_at_the_next_batch)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {.cancel_after = 3};
    struct ft_dataset *tr = clusters(256, 0.5, 1);
    config(&cfg, "[]", 2);
    cfg.eval_data[0] = '\0';
    struct ft_train_inputs in = {.train = tr};
    struct ft_train_hooks hooks = {&cap, on_log, on_metrics, on_canceled};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_ECANCELED);
    cr_assert(strstr(err.message, "canceled at epoch 1, batch 4"), "%s", err.message);
    ft_dataset_free(tr);
    ft_run_config_clear(&cfg);
}

Test(train, same_seed_same_artifact)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct ft_dataset *tr = clusters(256, 1.0, 1);
    char p1[80], p2[80];
    snprintf(p1, sizeof p1, "%s.a", artifact_path());
    snprintf(p2, sizeof p2, "%s.b", artifact_path());
    config(&cfg, "[]", 2);
    cfg.eval_data[0] = '\0';
    struct ft_train_inputs in = {.train = tr};
    cr_assert_eq(ft_train(&cfg, &in, NULL, p1, &res, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_train(&cfg, &in, NULL, p2, &res, &err), FT_OK, "%s", err.message);
    FILE *a = fopen(p1, "rb"), *b = fopen(p2, "rb");
    cr_assert(a && b);
    int ca, cb, same = 1;
    do {
        ca = fgetc(a);
        cb = fgetc(b);
        same &= ca == cb;
    } while (ca != EOF && cb != EOF);
    fclose(a);
    fclose(b);
    cr_assert(same, "two runs with one seed wrote different artifacts");
    unlink(p1);
    unlink(p2);
    ft_dataset_free(tr);
    ft_run_config_clear(&cfg);
}

/* The learning_rate the log reports for epoch e (NAN when absent). */
static double logged_lr(const char *log, int e, int epochs)
{
    char key[64];
    snprintf(key, sizeof key, "Epoch %d/%d: ", e, epochs);
    const char *p = strstr(log, key);
    p = p ? strstr(p, "learning_rate ") : NULL;
    return p ? strtod(p + strlen("learning_rate "), NULL) : NAN;
}

Test(train, scheduler_random_sampler_and_auto_batch_size)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {0};
    struct ft_dataset *tr = clusters(96, 1.0, 1);
    char text[1024];
    snprintf(text, sizeof text,
             "{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [16, 8]}}, "
             "\"data\": {\"train_data\": \"tr\", \"sampler\": \"random\"}, "
             "\"hyper_parameters\": {\"epochs\": 3, \"learning_rate\": 0.01, \"optimizer\": "
             "\"AdamW\", \"scheduler\": \"linear\", \"scheduler_options\": {\"num_warmup_steps\": "
             "1, \"scheduler_step\": \"epoch\"}}}");
    json_t *j = json_loads(text, 0, NULL);
    cr_assert_eq(ft_run_config_parse(j, &cfg, NULL, &err), FT_OK, "%s", err.message);
    json_decref(j);
    struct ft_train_inputs in = {.train = tr};
    struct ft_train_hooks hooks = {&cap, on_log, on_metrics, NULL};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s",
                 err.message);
    /* 96 rows: auto batch size 48 (half the rows), 2 batches an epoch */
    cr_assert(strstr(cap.log, "in 2 batches of 48 (random sampler)"), "%s", cap.log);
    /* per epoch, warm-up 1 of 3 steps: lr(0) = 0, lr(1) = 0.01, lr(2) = 0.005 */
    cr_assert_float_eq(logged_lr(cap.log, 1, 3), 0.0, 1e-12, "%s", cap.log);
    cr_assert_float_eq(logged_lr(cap.log, 2, 3), 0.01, 1e-9);
    cr_assert_float_eq(logged_lr(cap.log, 3, 3), 0.005, 1e-9);
    unlink(artifact_path());
    ft_dataset_free(tr);
    ft_run_config_clear(&cfg);
}

struct phases {
    int steps, examples_before, examples_after;
    json_t *last_epoch; /* new reference */
    json_t *examples;   /* examples_after, new reference */
};

static void on_phase(void *ctx, const char *phase, int epoch, json_t *values)
{
    struct phases *p = ctx;
    (void)epoch;
    if (strcmp(phase, "step") == 0)
        p->steps++;
    else if (strcmp(phase, "examples_before") == 0)
        p->examples_before++;
    else if (strcmp(phase, "examples_after") == 0) {
        p->examples_after++;
        json_decref(p->examples);
        p->examples = json_incref(values);
    } else if (strcmp(phase, "epoch") == 0) {
        json_decref(p->last_epoch);
        p->last_epoch = json_incref(values);
    }
}

Test(train, captions_examples_samples_and_intervals)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct phases ph = {0};
    struct ft_dataset *tr = clusters(256, 1.0, 1), *ev = clusters(128, 1.0, 2);
    config(&cfg,
           "[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"ev\", \"caption\": "
           "\"held-out\", \"limit\": 5, \"gather_examples\": true, \"num_example_queries\": 3}},"
           " {\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"tr\", \"caption\": "
           "\"train\", \"query_sample_size\": 40, \"steps_per_interval\": 4}},"
           " {\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
           "\"mlp_held-out_average_precision\"}}]",
           2);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev, tr}};
    struct ft_train_hooks hooks = {&ph, NULL, on_phase, NULL};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s",
                 err.message);
    /* 256 rows, batch 32: 8 batches an epoch, 16 steps, an interval every 4 */
    cr_assert_eq(ph.steps, 4);
    cr_assert_eq(ph.examples_before, 1);
    cr_assert_eq(ph.examples_after, 1);
    cr_assert_not_null(json_object_get(ph.last_epoch, "mlp_held-out_precision_at_k"));
    cr_assert_not_null(json_object_get(ph.last_epoch, "mlp_train_ndcg_at_k"));
    cr_assert(res.best_epoch >= 1);
    json_t *ex = json_array_get(ph.examples, 0);
    cr_assert_str_eq(json_string_value(json_object_get(ex, "caption")), "held-out");
    json_t *queries = json_object_get(ex, "queries");
    cr_assert_eq(json_array_size(queries), 3);
    json_t *q0 = json_array_get(queries, 0);
    json_t *results = json_object_get(q0, "results");
    cr_assert_eq(json_array_size(results), 5);
    for (size_t i = 0; i < 5; i++) { /* exclude_self: never the query itself */
        json_t *r = json_array_get(results, i);
        cr_assert_neq(json_integer_value(json_object_get(r, "id")),
                      json_integer_value(json_object_get(q0, "id")));
        if (i > 0)
            cr_assert_geq(
                json_number_value(json_object_get(json_array_get(results, i - 1), "score")),
                json_number_value(json_object_get(r, "score")));
    }
    json_decref(ph.last_epoch);
    json_decref(ph.examples);
    unlink(artifact_path());
    ft_dataset_free(tr);
    ft_dataset_free(ev);
    ft_run_config_clear(&cfg);
}

/* Every loss (and a miner of each kind) trains through the loop: no error, and the retrieval
 * metric on held-out clusters does not get worse. */
Test(train, every_loss_trains)
{
    static const char *const hps[] = {
        "\"loss\": \"TripletMarginLoss\", \"miner\": \"BatchHardMiner\"",
        "\"loss\": \"ContrastiveLoss\", \"miner\": \"PairMarginMiner\"",
        "\"loss\": \"SiameseLoss\"",
        "\"loss\": \"NTXentLoss\", \"miner\": \"MultiSimilarityMiner\"",
        "\"loss\": \"MultiSimilarityLoss\"",
        "\"loss\": \"ArcFaceLoss\"",
    };
    struct ft_dataset *tr = clusters(256, 1.4, 1), *ev = clusters(128, 1.4, 2);
    for (size_t i = 0; i < sizeof hps / sizeof hps[0]; i++) {
        struct ft_run_config cfg;
        struct ft_train_result res;
        struct ft_error err = {0};
        struct capture cap = {0};
        char text[1024];
        snprintf(text, sizeof text,
                 "{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [32, 8], \"l2\": "
                 "true}}, \"data\": {\"train_data\": \"tr\", \"eval_data\": \"ev\"}, "
                 "\"hyper_parameters\": {%s, \"epochs\": 3, \"batch_size\": 32, "
                 "\"learning_rate\": 0.01}, \"callbacks\": [{\"name\": \"EvaluationCallback\", "
                 "\"options\": {\"query_data\": \"ev\", \"limit\": 10}}], \"seed\": 5}",
                 hps[i]);
        json_t *j = json_loads(text, 0, NULL);
        cr_assert_eq(ft_run_config_parse(j, &cfg, NULL, &err), FT_OK, "%s: %s", hps[i],
                     err.message);
        json_decref(j);
        struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev}};
        struct ft_train_hooks hooks = {&cap, on_log, on_metrics, NULL};
        cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s: %s",
                     hps[i], err.message);
        cr_assert_geq(cap.after_p, cap.before_p, "%s: before %g after %g", hps[i], cap.before_p,
                      cap.after_p);
        cr_assert(strstr(cap.log, "val_loss"), "%s: %s", hps[i], cap.log);
        unlink(artifact_path());
        ft_run_config_clear(&cfg);
    }
    ft_dataset_free(tr);
    ft_dataset_free(ev);
}

/* n labels of two items each: a random point and a noisy copy (image-text style pairs). */
static struct ft_dataset *pairs(int n, uint64_t seed)
{
    struct ft_rng rng;
    struct ft_dataset *ds = clusters(2 * n, 0.0, seed);
    ft_rng_seed(&rng, seed);
    for (int c = 0; c < CLASSES; c++)
        free(ds->label_names[c]);
    free(ds->label_names);
    ds->num_labels = n;
    ds->label_names = calloc((size_t)n, sizeof(char *));
    for (int l = 0; l < n; l++) {
        ds->label_names[l] = malloc(16);
        snprintf(ds->label_names[l], 16, "p%d", l);
        for (int k = 0; k < 2; k++) {
            int64_t row = 2 * l + k;
            ds->labels[row] = l;
            for (int d = 0; d < DIM; d++)
                ds->x[row * DIM + d] =
                    (float)(k ? ds->x[(row - 1) * DIM + d] + 0.2 * (ft_rng_uniform(&rng) - 0.5)
                              : 2 * ft_rng_uniform(&rng) - 1);
        }
    }
    return ds;
}

Test(train, clip_loss_trains_on_pairs)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {0};
    struct ft_dataset *tr = pairs(128, 1), *ev = pairs(64, 2);
    json_t *j = json_loads(
        "{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [32, 8], \"l2\": "
        "true}}, \"data\": {\"train_data\": \"tr\", \"eval_data\": \"ev\"}, "
        "\"hyper_parameters\": {\"loss\": \"CLIPLoss\", \"epochs\": 3, \"batch_size\": 32, "
        "\"learning_rate\": 0.01}, \"callbacks\": [{\"name\": \"EvaluationCallback\", "
        "\"options\": {\"query_data\": \"ev\", \"limit\": 1}}], \"seed\": 5}",
        0, NULL);
    cr_assert_eq(ft_run_config_parse(j, &cfg, NULL, &err), FT_OK, "%s", err.message);
    json_decref(j);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev}};
    struct ft_train_hooks hooks = {&cap, on_log, on_metrics, NULL};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s",
                 err.message);
    /* 128 pairs, 16 pairs a batch, one pair of a label per epoch: 8 batches */
    cr_assert(strstr(cap.log, "in 8 batches of 32"), "%s", cap.log);
    cr_assert(strstr(cap.log, "val_loss"), "%s", cap.log);
    cr_assert_gt(cap.after_p, 0.5, "the nearest neighbour is the pair: %g", cap.after_p);
    unlink(artifact_path());
    ft_run_config_clear(&cfg);
    ft_dataset_free(tr);
    ft_dataset_free(ev);
}

/* Tensor linear_0.weight of an artifact file (new array) and its element count. */
static float *artifact_weight(const char *path, size_t *n)
{
    ft_safetensors *st;
    struct ft_tensor_view v;
    struct ft_error err;
    cr_assert_eq(ft_safetensors_open(path, &st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_safetensors_get(st, "linear_0.weight", &v), 0);
    *n = (size_t)(v.shape[0] * v.shape[1]);
    float *out = malloc(*n * sizeof *out);
    memcpy(out, v.data, *n * sizeof *out);
    ft_safetensors_free(st);
    return out;
}

Test(train, start_from_an_artifact_and_wise_ft)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {0};
    struct ft_dataset *tr = clusters(256, 1.0, 1);
    char first[96], second[96], text[1024];
    snprintf(first, sizeof first, "%s.first", artifact_path());
    snprintf(second, sizeof second, "%s.second", artifact_path());
    config(&cfg, "[]", 1);
    cfg.eval_data[0] = '\0';
    struct ft_train_inputs in = {.train = tr};
    cr_assert_eq(ft_train(&cfg, &in, NULL, first, &res, &err), FT_OK, "%s", err.message);
    ft_run_config_clear(&cfg);
    for (int alpha = 0; alpha <= 1; alpha++) {
        snprintf(text, sizeof text,
                 "{\"model\": {\"artifact\": \"e/first\", \"name\": \"mlp\"}, \"data\": "
                 "{\"train_data\": \"tr\"}, \"hyper_parameters\": {\"epochs\": 1, \"batch_size\": "
                 "32, \"learning_rate\": 0.01}, \"callbacks\": [{\"name\": \"WiSEFTCallback\", "
                 "\"options\": {\"alpha\": %d}}]}",
                 alpha);
        json_t *j = json_loads(text, 0, NULL);
        cr_assert_eq(ft_run_config_parse(j, &cfg, NULL, &err), FT_OK, "%s", err.message);
        json_decref(j);
        in.start_artifact = first;
        struct ft_train_hooks hooks = {&cap, on_log, NULL, NULL};
        cr_assert_eq(ft_train(&cfg, &in, &hooks, second, &res, &err), FT_OK, "%s", err.message);
        cr_assert(strstr(cap.log, "Starting from the model of run 'e/first'"), "%s", cap.log);
        size_t n1, n2;
        float *w1 = artifact_weight(first, &n1), *w2 = artifact_weight(second, &n2);
        cr_assert_eq(n1, n2);
        int same = memcmp(w1, w2, n1 * sizeof *w1) == 0;
        /* alpha 0 keeps the starting weights; alpha 1 keeps the finetuned ones */
        cr_assert_eq(same, alpha == 0, "alpha %d", alpha);
        free(w1);
        free(w2);
        ft_run_config_clear(&cfg);
    }
    unlink(first);
    unlink(second);
    ft_dataset_free(tr);
}

Test(train, training_checkpoint_keeps_the_last_k_epochs)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct ft_dataset *tr = clusters(256, 1.0, 1), *ev = clusters(128, 1.0, 2);
    char dir[] = "/tmp/ft_ckpt_XXXXXX", path[128];
    cr_assert_not_null(mkdtemp(dir));
    config(&cfg,
           "[{\"name\": \"TrainingCheckpoint\", \"options\": {\"last_k_epochs\": 2}},"
           " {\"name\": \"BestModelCheckpoint\"}]",
           3);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .checkpoint_dir = dir};
    cr_assert_eq(ft_train(&cfg, &in, NULL, artifact_path(), &res, &err), FT_OK, "%s",
                 err.message);
    snprintf(path, sizeof path, "%s/epoch-1.safetensors", dir);
    cr_assert_neq(access(path, F_OK), 0, "epoch 1 is older than the last 2");
    snprintf(path, sizeof path, "%s/epoch-2.safetensors", dir);
    cr_assert_eq(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/epoch-3.safetensors", dir);
    ft_safetensors *st;
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_open(path, &st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_safetensors_get(st, "model.params", &v), 0);
    cr_assert_eq(ft_safetensors_get(st, "optim.v", &v), 0, "Adam's second moments");
    cr_assert_eq(ft_safetensors_get(st, "sampler.order", &v), 0);
    cr_assert_eq(v.shape[0], 256);
    cr_assert_eq(ft_safetensors_get(st, "best.weights", &v), 0);
    json_t *state = json_loads(
        json_string_value(json_object_get(ft_safetensors_metadata(st), "state")), 0, NULL);
    cr_assert_eq(json_integer_value(json_object_get(state, "epoch")), 3);
    cr_assert_eq(json_integer_value(json_object_get(state, "optim_steps")), 24, "8 batches x 3");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(state, "best_checkpoint"),
                                                    "best_epoch")),
                 res.best_epoch);
    json_decref(state);
    ft_safetensors_free(st);
    unlink(path);
    snprintf(path, sizeof path, "%s/epoch-2.safetensors", dir);
    unlink(path);
    rmdir(dir);
    unlink(artifact_path());
    ft_dataset_free(tr);
    ft_dataset_free(ev);
    ft_run_config_clear(&cfg);
}

/* Cancel once this many batches ran (a hook that interrupts like a daemon restart). */
static int cancel_after(void *ctx)
{
    int *left = ctx;
    return --*left < 0;
}

Test(train, a_resumed_run_ends_exactly_as_an_uninterrupted_one)
{
    struct ft_run_config cfg;
    struct ft_train_result whole, part, rest;
    struct ft_error err = {0};
    struct ft_dataset *tr = clusters(256, 1.2, 1), *ev = clusters(128, 1.2, 2);
    char a[96], b[96], state[96];
    snprintf(a, sizeof a, "%s.whole", artifact_path());
    snprintf(b, sizeof b, "%s.resumed", artifact_path());
    snprintf(state, sizeof state, "%s.state", artifact_path());
    const char *cbs = "[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"ev\"}},"
                      " {\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
                      "\"mlp_average_precision\"}},"
                      " {\"name\": \"EarlyStopping\", \"options\": {\"monitor\": \"val_loss\", "
                      "\"patience\": 3}}]";
    config(&cfg, cbs, 5);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev}};
    cr_assert_eq(ft_train(&cfg, &in, NULL, a, &whole, &err), FT_OK, "%s", err.message);
    /* the same run interrupted in epoch 3 (8 batches an epoch), then resumed */
    int left = 8 * 2 + 3;
    struct ft_train_hooks stop = {&left, NULL, NULL, cancel_after};
    in.resume_path = state;
    cr_assert_eq(ft_train(&cfg, &in, &stop, b, &part, &err), FT_ECANCELED);
    in.resume_from = state;
    struct capture cap = {0};
    struct ft_train_hooks hooks = {&cap, on_log, on_metrics, NULL};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, b, &rest, &err), FT_OK, "%s", err.message);
    cr_assert(strstr(cap.log, "Resuming from the checkpoint of epoch 2"), "%s", cap.log);
    cr_assert_gt(whole.epochs_completed, 2);
    cr_assert_eq(cap.metrics_calls, whole.epochs_completed - 2 + 1,
                 "the epochs after 2 and after; no second before: %d", cap.metrics_calls);
    cr_assert_eq(rest.epochs_completed, whole.epochs_completed);
    cr_assert_eq(rest.stopped_early, whole.stopped_early);
    cr_assert_eq(rest.best_epoch, whole.best_epoch);
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    cr_assert(fa && fb);
    int ca, cb, same = 1;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        same &= ca == cb;
    } while (ca != EOF && cb != EOF);
    fclose(fa);
    fclose(fb);
    cr_assert(same, "the resumed run's artifact differs from the uninterrupted one's");
    unlink(a);
    unlink(b);
    unlink(state);
    ft_dataset_free(tr);
    ft_dataset_free(ev);
    ft_run_config_clear(&cfg);
}

/* bench_quality.c — the quality benchmark of issue 3: Fashion-MNIST retrieval after training,
 * through the real training loop (common/train.h), compared with the PyTorch reference numbers.
 *
 *   build/bench_quality [mlp|cnn|transfer|all]
 *
 * Prints one table (recipe, epochs, precision_at_k, average_precision, ndcg_at_k, reference,
 * seconds) and writes it as JSON to build/bench_quality.json. Not a test: the numbers are
 * reported, the reference is a floor to compare with. */
#include "dataset.h"
#include "train.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FM "/usr/share/datasets/fashion-mnist/"

struct result {
    double p, ap, ndcg, secs;
    int epochs;
};

struct capture {
    json_t *after;   /* new reference */
    double before_p; /* precision_at_k before training */
};

static void on_metrics(void *ctx, const char *phase, int epoch, json_t *values)
{
    struct capture *c = ctx;
    (void)epoch;
    if (strcmp(phase, "before") == 0)
        c->before_p = json_number_value(json_object_get(values, "mlp_precision_at_k"));
    if (strcmp(phase, "after") == 0) {
        json_decref(c->after);
        c->after = json_incref(values);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Train config_text on train, evaluate on test (query = index, exclude_self, limit 20). */
static int run(const char *config_text, const struct ft_dataset *train,
               const struct ft_dataset *test, struct result *out)
{
    struct ft_run_config cfg;
    struct ft_error err = {0};
    struct ft_train_result res;
    struct capture cap = {0};
    json_error_t jerr;
    json_t *config = json_loads(config_text, 0, &jerr);
    if (!config || ft_run_config_parse(config, &cfg, NULL, &err) != FT_OK) {
        fprintf(stderr, "bad config: %s %s\n", config ? err.message : jerr.text, err.param);
        json_decref(config);
        return -1;
    }
    struct ft_train_inputs in = {.train = train, .query = {test}, .config = config};
    struct ft_train_hooks hooks = {&cap, NULL, on_metrics, NULL};
    char artifact[64];
    snprintf(artifact, sizeof artifact, "/tmp/bench_quality_%d.safetensors", (int)getpid());
    double t0 = now();
    enum ft_err e = ft_train(&cfg, &in, &hooks, artifact, &res, &err);
    out->secs = now() - t0;
    unlink(artifact);
    ft_run_config_clear(&cfg);
    json_decref(config);
    if (e != FT_OK) {
        fprintf(stderr, "training failed: %s\n", err.message);
        json_decref(cap.after);
        return -1;
    }
    out->epochs = res.epochs_completed;
    out->p = json_number_value(json_object_get(cap.after, "mlp_precision_at_k"));
    out->ap = json_number_value(json_object_get(cap.after, "mlp_average_precision"));
    out->ndcg = json_number_value(json_object_get(cap.after, "mlp_ndcg_at_k"));
    if (!json_object_get(cap.after, "mlp_precision_at_k")) { /* other model names */
        const char *key;
        json_t *v;
        json_object_foreach(cap.after, key, v)
        {
            size_t n = strlen(key);
            if (n > 14 && strcmp(key + n - 14, "precision_at_k") == 0 && key[n - 15] == '_')
                out->p = json_number_value(v);
            if (n > 17 && strcmp(key + n - 17, "average_precision") == 0)
                out->ap = json_number_value(v);
            if (n > 9 && strcmp(key + n - 9, "ndcg_at_k") == 0)
                out->ndcg = json_number_value(v);
        }
    }
    json_decref(cap.after);
    return 0;
}

/* The mlp recipe: 784-256-128 l2, TripletMarginLoss margin 0.2 euclidean over all
 * in-batch triplets with loss > 0, Adam 1e-3, batch 128, random sampler, inputs standardised
 * with mean 0.2860 and std 0.3530, one epoch. PyTorch reference: precision_at_k 0.817,
 * average_precision 0.761, ndcg_at_k 0.820. */
static const char *const MLP_RECIPE =
    "{\"model\": {\"name\": \"mlp\", \"options\": {\"input_size\": 784, \"hidden_sizes\": [256, "
    "128], \"activation\": \"relu\", \"l2\": true}},"
    " \"data\": {\"train_data\": \"train\", \"sampler\": \"random\", \"standardize\": {\"mean\": "
    "0.2860, \"std\": 0.3530}},"
    " \"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": 0.2, "
    "\"distance\": \"euclidean\"}, \"optimizer\": \"Adam\", \"learning_rate\": 0.001, \"epochs\": "
    "1, \"batch_size\": 128},"
    " \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"test\", "
    "\"limit\": 20}}], \"seed\": 42}";

static const char *const CNN_RECIPE =
    "{\"model\": {\"name\": \"cnn\", \"options\": {\"input_shape\": [1, 28, 28], "
    "\"channels\": [32, 64, 128]}},"
    " \"data\": {\"train_data\": \"train\", \"sampler\": \"random\", \"standardize\": "
    "{\"mean\": 0.2860, \"std\": 0.3530}},"
    " \"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": 0.2, "
    "\"distance\": \"euclidean\"}, \"optimizer\": \"Adam\", \"learning_rate\": 0.001, "
    "\"scheduler\": \"cosine\", \"epochs\": 10, \"batch_size\": 128},"
    " \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"test\", "
    "\"limit\": 20}}, {\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
    "\"precision_at_k\"}}, {\"name\": \"EarlyStopping\", \"options\": {\"monitor\": "
    "\"precision_at_k\", \"patience\": 2}}], \"seed\": 42}";

/* Rows of ds whose label id is in [lo, hi] (Fashion-MNIST ids are the class digits). */
static struct ft_dataset *classes(const struct ft_dataset *ds, int lo, int hi)
{
    int64_t *idx = malloc((size_t)ds->n * sizeof *idx), n = 0;
    for (int64_t i = 0; i < ds->n; i++)
        if (ds->labels[i] >= lo && ds->labels[i] <= hi)
            idx[n++] = i;
    struct ft_dataset *out = ft_dataset_subset(ds, idx, n);
    free(idx);
    return out;
}

static const char *const TRANSFER_FIRST =
    "{\"model\": {\"name\": \"mlp\", \"options\": {\"input_size\": 784, \"hidden_sizes\": [256, "
    "128], \"l2\": true}}, \"data\": {\"train_data\": \"a\", \"standardize\": {\"mean\": 0.2860, "
    "\"std\": 0.3530}}, \"hyper_parameters\": {\"loss_options\": {\"margin\": 0.2}, \"epochs\": 2, "
    "\"batch_size\": 128}, \"seed\": 42}";
static const char *const TRANSFER_SECOND =
    "{\"model\": {\"artifact\": \"bench/first\", \"name\": \"mlp\"}, \"data\": {\"train_data\": "
    "\"b\", \"standardize\": {\"mean\": 0.2860, \"std\": 0.3530}}, \"hyper_parameters\": "
    "{\"loss_options\": {\"margin\": 0.2}, \"epochs\": 2, \"batch_size\": 128}, "
    "\"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"test\"}}], "
    "\"seed\": 42}";

/* Transfer: train on classes 0-4, then finetune that artifact on classes 5-9; evaluation on
 * the test images of 5-9 before and after the second run. */
static int transfer(const struct ft_dataset *train, const struct ft_dataset *test, double *before,
                    double *after)
{
    struct ft_dataset *a = classes(train, 0, 4), *b = classes(train, 5, 9);
    struct ft_dataset *tb = classes(test, 5, 9);
    char first[64];
    snprintf(first, sizeof first, "/tmp/bench_transfer_%d.safetensors", (int)getpid());
    int rc = -1;
    struct ft_run_config cfg;
    struct ft_error err = {0};
    struct ft_train_result res;
    json_t *j = json_loads(TRANSFER_FIRST, 0, NULL);
    if (ft_run_config_parse(j, &cfg, NULL, &err) == FT_OK) {
        struct ft_train_inputs in = {.train = a};
        rc = ft_train(&cfg, &in, NULL, first, &res, &err) == FT_OK ? 0 : -1;
        ft_run_config_clear(&cfg);
    }
    json_decref(j);
    j = json_loads(TRANSFER_SECOND, 0, NULL);
    if (rc == 0 && ft_run_config_parse(j, &cfg, NULL, &err) == FT_OK) {
        struct capture cap = {0};
        struct ft_train_inputs in = {.train = b, .query = {tb}, .start_artifact = first};
        struct ft_train_hooks hooks = {&cap, NULL, on_metrics, NULL};
        rc = ft_train(&cfg, &in, &hooks, first, &res, &err) == FT_OK ? 0 : -1;
        *before = cap.before_p;
        *after = json_number_value(json_object_get(cap.after, "mlp_precision_at_k"));
        json_decref(cap.after);
        ft_run_config_clear(&cfg);
    }
    if (rc != 0)
        fprintf(stderr, "transfer failed: %s\n", err.message);
    json_decref(j);
    unlink(first);
    ft_dataset_free(a);
    ft_dataset_free(b);
    ft_dataset_free(tb);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* $BENCH_SEEDS="1,2,3": run the recipe once per seed (replacing its "seed": 42) and report the
 * median of each figure (the machine and the seed both move the numbers). */
static int run_seeds(const char *recipe, const struct ft_dataset *train,
                     const struct ft_dataset *test, struct result *out)
{
    const char *seeds = getenv("BENCH_SEEDS");
    if (!seeds || !*seeds)
        return run(recipe, train, test, out);
    double p[32], ap[32], nd[32], secs[32];
    int n = 0;
    for (const char *s = seeds; *s && n < 32;) {
        long seed = strtol(s, (char **)&s, 10);
        char text[4096];
        const char *at = strstr(recipe, "\"seed\": 42");
        snprintf(text, sizeof text, "%.*s\"seed\": %ld%s", (int)(at - recipe), recipe, seed,
                 at + strlen("\"seed\": 42"));
        if (run(text, train, test, out) != 0)
            return -1;
        printf("  seed %-4ld P@20 %.4f  AP %.4f  nDCG@20 %.4f\n", seed, out->p, out->ap, out->ndcg);
        p[n] = out->p, ap[n] = out->ap, nd[n] = out->ndcg, secs[n] = out->secs;
        n++;
        while (*s == ',' || *s == ' ')
            s++;
    }
    qsort(p, (size_t)n, sizeof *p, cmp_double);
    qsort(ap, (size_t)n, sizeof *ap, cmp_double);
    qsort(nd, (size_t)n, sizeof *nd, cmp_double);
    qsort(secs, (size_t)n, sizeof *secs, cmp_double);
    out->p = p[n / 2], out->ap = ap[n / 2], out->ndcg = nd[n / 2], out->secs = secs[n / 2];
    return 0;
}

struct row {
    const char *name;
    const char *recipe;
    double ref_p, ref_ap, ref_ndcg; /* NAN = none */
    double floor_p;                 /* the goal */
};

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "all";
    struct ft_dataset *train = NULL, *test = NULL;
    struct ft_error err;
    if (ft_dataset_load_idx_files(FM "train-images-idx3-ubyte.gz", FM "train-labels-idx1-ubyte.gz",
                                  &train, &err) != FT_OK ||
        ft_dataset_load_idx_files(FM "t10k-images-idx3-ubyte.gz", FM "t10k-labels-idx1-ubyte.gz",
                                  &test, &err) != FT_OK) {
        fprintf(stderr, "cannot load Fashion-MNIST (apt-get install dataset-fashion-mnist): %s\n",
                err.message);
        return 1;
    }
    const struct row rows[] = {
        {"mlp 1 epoch (issue recipe)", MLP_RECIPE, 0.817, 0.761, 0.820, 0.817},
        {"cnn <= 10 epochs", CNN_RECIPE, NAN, NAN, NAN, 0.85},
    };
    json_t *out = json_array();
    printf("%-28s %6s %10s %10s %10s %12s %8s\n", "recipe", "epochs", "P@20", "AP", "nDCG@20",
           "goal P@20", "seconds");
    int failed = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct result r;
        if (strcmp(which, "all") != 0 && strncmp(rows[i].name, which, strlen(which)) != 0)
            continue;
        if (run_seeds(rows[i].recipe, train, test, &r) != 0) {
            failed = 1;
            continue;
        }
        printf("%-28s %6d %10.4f %10.4f %10.4f %12.3f %8.1f\n", rows[i].name, r.epochs, r.p, r.ap,
               r.ndcg, rows[i].floor_p, r.secs);
        if (!isnan(rows[i].ref_p))
            printf("%-28s %6s %10.4f %10.4f %10.4f\n", "  PyTorch reference", "", rows[i].ref_p,
                   rows[i].ref_ap, rows[i].ref_ndcg);
        json_array_append_new(
            out, json_pack("{s:s, s:i, s:f, s:f, s:f, s:f, s:f}", "recipe", rows[i].name, "epochs",
                           r.epochs, "precision_at_k", r.p, "average_precision", r.ap, "ndcg_at_k",
                           r.ndcg, "goal_precision_at_k", rows[i].floor_p, "seconds", r.secs));
    }
    if (strcmp(which, "all") == 0 || strcmp(which, "transfer") == 0) {
        double before = NAN, after = NAN;
        if (transfer(train, test, &before, &after) != 0)
            failed = 1;
        printf("%-28s %6s %10.4f -> %.4f (P@20 on classes 5-9: before -> after the 2nd run)\n",
               "transfer 0-4 then 5-9", "2+2", before, after);
        json_array_append_new(out, json_pack("{s:s, s:f, s:f}", "recipe", "transfer",
                                             "before_precision_at_k", before,
                                             "after_precision_at_k", after));
    }
    json_dump_file(out, "build/bench_quality.json", JSON_INDENT(2));
    json_decref(out);
    ft_dataset_free(train);
    ft_dataset_free(test);
    return failed;
}

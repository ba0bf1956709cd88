/* bench_quality.c — the quality benchmark of issue 3: Fashion-MNIST retrieval after training,
 * through the real training loop (common/train.h), compared with the PyTorch reference numbers.
 *
 *   build/bench_quality [mlp|cnn|all]
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
    json_t *after; /* new reference */
};

static void on_metrics(void *ctx, const char *phase, int epoch, json_t *values)
{
    struct capture *c = ctx;
    (void)epoch;
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
    "{\"model\": {\"name\": \"cnn\", \"options\": {\"input_shape\": [1, 28, 28]}},"
    " \"data\": {\"train_data\": \"train\", \"standardize\": {\"mean\": 0.2860, \"std\": "
    "0.3530}},"
    " \"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": 0.2, "
    "\"distance\": \"euclidean\"}, \"optimizer\": \"Adam\", \"learning_rate\": 0.001, \"epochs\": "
    "10, \"batch_size\": 128},"
    " \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"test\", "
    "\"limit\": 20}}, {\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
    "\"precision_at_k\"}}, {\"name\": \"EarlyStopping\", \"options\": {\"monitor\": "
    "\"precision_at_k\", \"patience\": 2}}], \"seed\": 42}";

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
        if (run(rows[i].recipe, train, test, &r) != 0) {
            failed = 1;
            continue;
        }
        printf("%-28s %6d %10.4f %10.4f %10.4f %12.3f %8.1f\n", rows[i].name, r.epochs, r.p, r.ap,
               r.ndcg, rows[i].floor_p, r.secs);
        if (!isnan(rows[i].ref_p))
            printf("%-28s %6s %10.4f %10.4f %10.4f\n", "  PyTorch reference", "", rows[i].ref_p,
                   rows[i].ref_ap, rows[i].ref_ndcg);
        json_array_append_new(out, json_pack("{s:s, s:i, s:f, s:f, s:f, s:f, s:f}", "recipe",
                                             rows[i].name, "epochs", r.epochs, "precision_at_k",
                                             r.p, "average_precision", r.ap, "ndcg_at_k", r.ndcg,
                                             "goal_precision_at_k", rows[i].floor_p, "seconds",
                                             r.secs));
    }
    json_dump_file(out, "build/bench_quality.json", JSON_INDENT(2));
    json_decref(out);
    ft_dataset_free(train);
    ft_dataset_free(test);
    return failed;
}

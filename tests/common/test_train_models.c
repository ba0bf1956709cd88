/* test_train_models.c — the run config and the training loop with the layer-stack models: cnn
 * options through ft_run_config_parse, a cnn trained on small synthetic images (the dataset's
 * image_shape), its artifact (conv and batch-norm tensors, model_config that rebuilds it), and
 * freeze training only the output_dim head. */
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CLASSES 4
#define SIDE 8

/* n images 1 x SIDE x SIDE: class c lights up quadrant c, plus uniform noise. */
static struct ft_dataset *images(int64_t n, double noise, uint64_t seed)
{
    struct ft_rng rng;
    struct ft_dataset *ds = calloc(1, sizeof *ds);
    int dim = SIDE * SIDE;
    ft_rng_seed(&rng, seed);
    ds->n = n;
    ds->dim = dim;
    ds->x = malloc((size_t)n * dim * sizeof(float));
    ds->labels = malloc((size_t)n * sizeof(int32_t));
    ds->num_labels = CLASSES;
    ds->label_names = calloc(CLASSES, sizeof(char *));
    ds->image_shape[0] = 1;
    ds->image_shape[1] = ds->image_shape[2] = SIDE;
    for (int c = 0; c < CLASSES; c++) {
        ds->label_names[c] = malloc(16);
        snprintf(ds->label_names[c], 16, "c%d", c);
    }
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(i % CLASSES);
        ds->labels[i] = c;
        for (int p = 0; p < dim; p++) {
            int quadrant = (p / SIDE >= SIDE / 2) * 2 + (p % SIDE >= SIDE / 2);
            double v = (quadrant == c) + noise * ft_rng_uniform(&rng);
            ds->x[i * dim + p] = (float)v;
        }
    }
    return ds;
}

static char *artifact_path(void)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ft_test_train_models_%d.safetensors", (int)getpid());
    return path;
}

static enum ft_err parse(const char *text, struct ft_run_config *cfg, json_t **norm,
                         struct ft_error *err)
{
    json_t *j = json_loads(text, 0, NULL);
    cr_assert_not_null(j, "%s", text);
    enum ft_err e = ft_run_config_parse(j, cfg, norm, err);
    json_decref(j);
    return e;
}

struct capture {
    double before_p, after_p;
};

static void on_metrics(void *ctx, const char *phase, int epoch, json_t *values)
{
    struct capture *c = ctx;
    double p = json_number_value(json_object_get(values, "cnn_precision_at_k"));
    (void)epoch;
    if (strcmp(phase, "before") == 0)
        c->before_p = p;
    else if (strcmp(phase, "after") == 0)
        c->after_p = p;
}

Test(runspec_models, cnn_options_are_normalised_and_checked)
{
    struct ft_run_config cfg;
    struct ft_error err = {0};
    json_t *norm = NULL;
    cr_assert_eq(parse("{\"model\": {\"name\": \"cnn\", \"options\": {\"channels\": [8]}}, "
                       "\"data\": {\"train_data\": \"tr\"}}",
                       &cfg, &norm, &err),
                 FT_OK, "%s", err.message);
    json_t *o = json_object_get(json_object_get(norm, "model"), "options");
    cr_assert_eq(json_integer_value(json_object_get(o, "embedding_dim")), 128);
    cr_assert_str_eq(json_string_value(json_object_get(o, "pooling")), "max");
    cr_assert(json_is_null(json_object_get(o, "input_shape")));
    cr_assert(json_equal(o, cfg.model_options));
    cr_assert(o != cfg.model_options, "the normalised config has its own copy");
    json_decref(norm);
    ft_run_config_clear(&cfg);
    cr_assert_eq(parse("{\"model\": {\"name\": \"cnn\", \"options\": {\"kernel_size\": 2}}, "
                       "\"data\": {\"train_data\": \"tr\"}}",
                       &cfg, NULL, &err),
                 FT_EINVAL);
    cr_assert_str_eq(err.param, "config.model.options.kernel_size");
    cr_assert_eq(parse("{\"model\": {\"name\": \"mlp\", \"options\": {\"dropout\": 1}}, "
                       "\"data\": {\"train_data\": \"tr\"}}",
                       &cfg, NULL, &err),
                 FT_EINVAL);
    cr_assert_str_eq(err.param, "config.model.options.dropout");
}

Test(train_models, cnn_learns_images_and_its_artifact_rebuilds_it)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct capture cap = {0};
    struct ft_dataset *tr = images(256, 1.5, 1), *ev = images(128, 1.5, 2);
    cr_assert_eq(parse("{\"model\": {\"name\": \"cnn\", \"options\": {\"channels\": [4, 8], "
                       "\"embedding_dim\": 8}}, \"data\": {\"train_data\": \"tr\", "
                       "\"eval_data\": \"ev\"}, \"hyper_parameters\": {\"epochs\": 3, "
                       "\"batch_size\": 32, \"learning_rate\": 0.01}, \"callbacks\": [{\"name\": "
                       "\"EvaluationCallback\", \"options\": {\"query_data\": \"ev\"}}], "
                       "\"seed\": 5}",
                       &cfg, NULL, &err),
                 FT_OK, "%s", err.message);
    struct ft_train_inputs in = {.train = tr, .eval = ev, .query = {ev}};
    struct ft_train_hooks hooks = {.ctx = &cap, .metrics = on_metrics};
    cr_assert_eq(ft_train(&cfg, &in, &hooks, artifact_path(), &res, &err), FT_OK, "%s (%s)",
                 err.message, err.param);
    cr_assert_eq(res.epochs_completed, 3);
    cr_assert_gt(cap.after_p, cap.before_p, "before %g after %g", cap.before_p, cap.after_p);

    ft_safetensors *st;
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_open(artifact_path(), &st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_safetensors_get(st, "conv_0.weight", &v), 0);
    cr_assert(v.ndim == 4 && v.shape[0] == 4 && v.shape[1] == 1 && v.shape[2] == 3);
    cr_assert_eq(ft_safetensors_get(st, "bn_1.running_var", &v), 0, "buffers are saved");
    cr_assert_neq(((const float *)v.data)[0], 1.0f, "running statistics were updated");
    ft_model *m = NULL;
    cr_assert_eq(ft_model_from_safetensors(st, &m, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_model_input_dim(m), SIDE * SIDE);
    cr_assert_eq(ft_model_output_dim(m), 8);
    json_t *mc = ft_model_config_json(m);
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(mc, "input_shape"), 1)), SIDE,
                 "the image shape came from the dataset");
    json_decref(mc);
    ft_model_free(m);
    ft_safetensors_free(st);
    unlink(artifact_path());
    ft_run_config_clear(&cfg);
    ft_dataset_free(tr);
    ft_dataset_free(ev);
}

Test(train_models, cnn_on_vector_data_names_input_shape)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct ft_dataset *tr = images(64, 1.0, 3);
    memset(tr->image_shape, 0, sizeof tr->image_shape);
    cr_assert_eq(parse("{\"model\": {\"name\": \"cnn\"}, \"data\": {\"train_data\": \"tr\"}, "
                       "\"hyper_parameters\": {\"epochs\": 1, \"batch_size\": 16}}",
                       &cfg, NULL, &err),
                 FT_OK);
    struct ft_train_inputs in = {.train = tr};
    cr_assert_eq(ft_train(&cfg, &in, NULL, artifact_path(), &res, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "config.model.options.input_shape", "%s", err.message);
    ft_run_config_clear(&cfg);
    ft_dataset_free(tr);
}

/* Float tensor name of the artifact at path (copied; caller frees), *n set. */
static float *artifact_tensor(const char *name, size_t *n)
{
    ft_safetensors *st;
    struct ft_tensor_view v;
    struct ft_error err = {0};
    cr_assert_eq(ft_safetensors_open(artifact_path(), &st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_safetensors_get(st, name, &v), 0, "no %s", name);
    *n = 1;
    for (int k = 0; k < v.ndim; k++)
        *n *= (size_t)v.shape[k];
    float *out = malloc(*n * sizeof *out);
    memcpy(out, v.data, *n * sizeof *out);
    ft_safetensors_free(st);
    return out;
}

Test(train_models, freeze_trains_only_the_head)
{
    struct ft_run_config cfg;
    struct ft_train_result res;
    struct ft_error err = {0};
    struct ft_dataset *tr = images(128, 1.0, 4);
    memset(tr->image_shape, 0, sizeof tr->image_shape); /* vectors for the mlp */
    cr_assert_eq(parse("{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [16, 8], "
                       "\"batch_norm\": true}, \"output_dim\": 4, \"freeze\": true}, \"data\": "
                       "{\"train_data\": \"tr\"}, \"hyper_parameters\": {\"epochs\": 2, "
                       "\"batch_size\": 16, \"learning_rate\": 0.01}, \"seed\": 9}",
                       &cfg, NULL, &err),
                 FT_OK, "%s", err.message);
    struct ft_train_inputs in = {.train = tr};
    cr_assert_eq(ft_train(&cfg, &in, NULL, artifact_path(), &res, &err), FT_OK, "%s", err.message);
    /* the same config and seed build the initial weights */
    json_t *mc =
        json_pack("{s:s, s:O, s:i}", "name", "mlp", "options", cfg.model_options, "output_dim", 4);
    int shape[3] = {1, 1, SIDE * SIDE};
    ft_model *init = NULL;
    cr_assert_eq(ft_model_new(mc, shape, 9, &init, &err), FT_OK, "%s", err.message);
    size_t n0, nh;
    float *w0 = artifact_tensor("linear_0.weight", &n0), *wh = artifact_tensor("head.weight", &nh);
    cr_assert(memcmp(w0, ft_model_params(init), n0 * sizeof *w0) == 0, "frozen layer unchanged");
    cr_assert(memcmp(wh, ft_model_params(init) + ft_model_head_offset(init), nh * sizeof *wh) != 0,
              "the head trained");
    free(w0), free(wh);
    json_decref(mc);
    ft_model_free(init);
    unlink(artifact_path());
    ft_run_config_clear(&cfg);
    ft_dataset_free(tr);
}

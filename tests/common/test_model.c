/* test_model.c — the mlp and cnn models of model.h: the mlp_encoder fixture, central finite
 * differences (in double, on a double reference model built from the documented architecture
 * and the model's own named tensors) for every parameter in training and inference mode with
 * batch norm and dropout (a fixed mask: the same generator state), cnn shapes on 1x28x28,
 * option checking with exact params, the projection head, and save/load round trips. */
#include "model.h"
#include "nn.h"
#include "rng.h"
#include "safetensors.h"
#include "support/fixture.h"
#include "support/nn_ref.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ---- */

static ft_model *new_model(const char *config_text, int c, int h, int w, uint64_t seed)
{
    json_error_t jerr;
    json_t *cfg = json_loads(config_text, 0, &jerr);
    cr_assert_not_null(cfg, "%s: %s", config_text, jerr.text);
    int shape[3] = {c, h, w};
    ft_model *m = NULL;
    struct ft_error err = {0};
    cr_assert_eq(ft_model_new(cfg, shape, seed, &m, &err), FT_OK, "%s (%s)", err.message,
                 err.param);
    json_decref(cfg);
    return m;
}

static int tensor_index(const ft_model *m, const char *name)
{
    for (int i = 0; i < ft_model_num_tensors(m); i++) {
        const char *n;
        ft_model_tensor(m, i, &n, NULL, NULL, NULL, NULL);
        if (strcmp(n, name) == 0)
            return i;
    }
    return -1;
}

/* Offset of parameter tensor name in the parameter buffer; -1 when absent. */
static long param_offset(ft_model *m, const char *name)
{
    int i = tensor_index(m, name), trainable;
    float *data;
    if (i < 0)
        return -1;
    ft_model_tensor(m, i, NULL, NULL, NULL, &data, &trainable);
    return trainable ? data - ft_model_params(m) : -1;
}

static long buffer_offset(ft_model *m, const char *name)
{
    int i = tensor_index(m, name), trainable;
    float *data;
    cr_assert_geq(i, 0, "no tensor %s", name);
    ft_model_tensor(m, i, NULL, NULL, NULL, &data, &trainable);
    cr_assert_eq(trainable, 0);
    return data - ft_model_buffers(m);
}

static float *random_floats(struct ft_rng *rng, size_t n, double scale)
{
    float *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((2.0 * ft_rng_uniform(rng) - 1.0) * scale);
    return v;
}

static void expect_error(enum ft_err got, const struct ft_error *err, const char *param)
{
    cr_assert_eq(got, FT_EINVAL, "expected FT_EINVAL for %s", param);
    cr_assert_str_eq(err->param, param, "%s", err->message);
    cr_assert(err->message[0]);
}

/* ---- the reference model in double ---- */

/* The architecture the test builds (what model.h documents for these options). */
struct arch {
    int cnn;
    int in[3];
    int n, sizes[4];
    int k, bn, pool; /* cnn: kernel; both: batch_norm; pool 0 none, 1 max, 2 avg */
    enum ref_act act;
    double p;
    int emb, head, l2;
};

struct ref_ctx {
    const struct arch *a;
    ft_model *m;
    double *p, *buf; /* parameters (perturbed by check_fd) and running statistics */
    const float *x, *dout;
    int B, training;
    uint64_t rng[4]; /* dropout generator before the forward */
    struct ft_rng drop;
    double *out; /* last reference output (B, output_dim) */
};

static const double *P(struct ref_ctx *c, const char *name)
{
    long off = param_offset(c->m, name);
    return off < 0 ? NULL : c->p + off;
}

/* h (B, width) = linear named prefix; returns the new width. */
static int ref_lin(struct ref_ctx *c, double **h, int width, const char *prefix, int out)
{
    char wn[32], bn[32];
    snprintf(wn, sizeof wn, "%s.weight", prefix);
    snprintf(bn, sizeof bn, "%s.bias", prefix);
    double *o = malloc((size_t)c->B * out * sizeof *o);
    ref_linear(o, *h, P(c, wn), P(c, bn), c->B, width, out);
    free(*h);
    *h = o;
    return out;
}

static void ref_bn(struct ref_ctx *c, double *h, int i, int C, int S)
{
    char n[4][32];
    const char *kinds[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int k = 0; k < 4; k++)
        snprintf(n[k], sizeof n[k], "bn_%d.%s", i, kinds[k]);
    double *o = malloc((size_t)c->B * C * S * sizeof *o);
    ref_batchnorm(o, h, P(c, n[0]), P(c, n[1]), c->buf + buffer_offset(c->m, n[2]),
                  c->buf + buffer_offset(c->m, n[3]), c->B, C, S, c->training);
    memcpy(h, o, (size_t)c->B * C * S * sizeof *o);
    free(o);
}

/* The model's dropout: the same kernel and generator state, so the same mask. */
static void ref_dropout(struct ref_ctx *c, double *h, size_t n)
{
    if (c->a->p <= 0 || !c->training)
        return;
    float *one = calloc(n, sizeof *one), *mask = calloc(n, sizeof *mask);
    for (size_t i = 0; i < n; i++)
        one[i] = 1.0f;
    ft_dropout_forward(one, mask, one, n, (float)c->a->p, &c->drop, 1);
    for (size_t i = 0; i < n; i++)
        h[i] *= mask[i];
    free(one);
    free(mask);
}

static int ref_mlp_body(struct ref_ctx *c, double **h)
{
    const struct arch *a = c->a;
    int width = a->in[0] * a->in[1] * a->in[2];
    for (int i = 0; i < a->n; i++) {
        char prefix[24];
        snprintf(prefix, sizeof prefix, "linear_%d", i);
        width = ref_lin(c, h, width, prefix, a->sizes[i]);
        if (i == a->n - 1)
            break;
        if (a->bn)
            ref_bn(c, *h, i, width, 1);
        ref_act_all(a->act, *h, *h, (size_t)c->B * width);
        ref_dropout(c, *h, (size_t)c->B * width);
    }
    return width;
}

static int ref_cnn_body(struct ref_ctx *c, double **h)
{
    const struct arch *a = c->a;
    int C = a->in[0], H = a->in[1], W = a->in[2];
    for (int i = 0; i < a->n; i++) {
        char wn[32], bn[32];
        struct ft_conv2d_shape s = {c->B, C, H, W, a->sizes[i], a->k, a->k, 1, a->k / 2};
        snprintf(wn, sizeof wn, "conv_%d.weight", i);
        snprintf(bn, sizeof bn, "conv_%d.bias", i);
        C = a->sizes[i];
        double *o = malloc((size_t)c->B * C * H * W * sizeof *o);
        ref_conv2d(o, *h, P(c, wn), P(c, bn), &s);
        free(*h);
        *h = o;
        if (a->bn)
            ref_bn(c, *h, i, C, H * W);
        ref_act_all(a->act, *h, *h, (size_t)c->B * C * H * W);
        if (a->pool) {
            o = malloc((size_t)c->B * C * (H / 2) * (W / 2) * sizeof *o);
            ref_pool(o, *h, c->B, C, H, W, 2, a->pool == 1);
            free(*h);
            *h = o;
            H /= 2;
            W /= 2;
        }
    }
    double *g = malloc((size_t)c->B * C * sizeof *g);
    ref_global_avgpool(g, *h, c->B, C, H * W);
    free(*h);
    *h = g;
    ref_dropout(c, *h, (size_t)c->B * C);
    return ref_lin(c, h, C, "proj", a->emb);
}

/* sum(model(x) * dout) in double; the output is kept in c->out. */
static double ref_objective(void *p)
{
    struct ref_ctx *c = p;
    const struct arch *a = c->a;
    size_t nin = (size_t)c->B * a->in[0] * a->in[1] * a->in[2];
    double *h = fx_to_double(c->x, nin);
    memcpy(c->drop.s, c->rng, sizeof c->rng);
    int width = a->cnn ? ref_cnn_body(c, &h) : ref_mlp_body(c, &h);
    if (a->head)
        width = ref_lin(c, &h, width, "head", a->head);
    if (a->l2)
        ref_l2_normalize(h, h, c->B, width);
    double s = ref_dot(h, c->dout, (size_t)c->B * width);
    free(c->out);
    c->out = h;
    return s;
}

/* Forward (mode training) + backward of m on random data; compare the output with the
 * reference and every parameter gradient with finite differences. */
static void model_fd(ft_model *m, const struct arch *a, int B, int training, uint64_t seed)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    int D = ft_model_input_dim(m), OD = ft_model_output_dim(m);
    size_t n = ft_model_num_params(m);
    float *x = random_floats(&rng, (size_t)B * D, 1.5),
          *dout = random_floats(&rng, (size_t)B * OD, 1);
    float *out = malloc((size_t)B * OD * sizeof *out);
    struct ref_ctx c = {.a = a, .m = m, .x = x, .dout = dout, .B = B, .training = training};
    memcpy(c.rng, ft_model_rng_state(m), sizeof c.rng);
    c.buf = fx_to_double(ft_model_buffers(m), ft_model_num_buffers(m)); /* before the update */
    ft_model_zero_grad(m);
    cr_assert_eq(ft_model_forward(m, x, B, out, training), FT_OK);
    ft_model_backward(m, dout, B);
    c.p = fx_to_double(ft_model_params(m), n);
    ref_objective(&c);
    fx_assert_close("out", out, c.out, (size_t)B * OD, 1e-5, 1e-4);
    fx_check_fd("dparams", ref_objective, &c, c.p, n, ft_model_grads(m));
    free(x), free(dout), free(out), free(c.p), free(c.buf), free(c.out);
}

/* A few training forwards so the running statistics are not the initial 0 / 1. */
static void warm_up(ft_model *m, int B, uint64_t seed)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    int D = ft_model_input_dim(m);
    float *x = random_floats(&rng, (size_t)B * D, 2.0);
    float *out = malloc((size_t)B * ft_model_output_dim(m) * sizeof *out);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ft_model_forward(m, x, B, out, 1), FT_OK);
    free(x), free(out);
}

/* ---- mlp ---- */

Test(mlp, encoder_fixture)
{
    json_t *fx = fx_load("torch/mlp_encoder.json");
    ft_model *m =
        new_model("{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [16, 6], \"l2\": true}}", 1,
                  1, 12, 401);
    static const char *src[4] = {"w1", "b1", "w2", "b2"};
    static const char *dst[4] = {"linear_0.weight", "linear_0.bias", "linear_1.weight",
                                 "linear_1.bias"};
    cr_assert_eq(ft_model_num_tensors(m), 4);
    for (int i = 0; i < 4; i++) {
        size_t n;
        float *v = fx_floats(fx, "inputs", src[i], &n);
        memcpy(ft_model_params(m) + param_offset(m, dst[i]), v, n * sizeof *v);
        free(v);
    }
    float *x = fx_floats(fx, "inputs", "x", NULL), *dout = fx_floats(fx, "inputs", "dout", NULL);
    float out[8 * 6];
    ft_model_zero_grad(m);
    cr_assert_eq(ft_model_forward(m, x, 8, out, 1), FT_OK);
    ft_model_backward(m, dout, 8);
    const char *want[5] = {"out", "dw1", "db1", "dw2", "db2"};
    const float *got[5] = {out};
    for (int i = 0; i < 4; i++)
        got[i + 1] = ft_model_grads(m) + param_offset(m, dst[i]);
    for (int i = 0; i < 5; i++) {
        size_t n;
        double *w = fx_doubles(fx, "expected", want[i], &n);
        fx_assert_close_tol(fx, want[i], got[i], w, n);
        free(w);
    }
    free(x), free(dout);
    ft_model_free(m);
    json_decref(fx);
}

Test(mlp, relu_l2_matches_finite_differences_and_accumulates)
{
    struct arch a = {.in = {1, 1, 3}, .n = 3, .sizes = {5, 4, 3}, .act = REF_RELU, .l2 = 1};
    ft_model *m = new_model("{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [5, 4, 3], "
                            "\"l2\": true}}",
                            1, 1, 3, 7);
    model_fd(m, &a, 4, 1, 14);
    /* a second backward accumulates: the gradients double */
    size_t n = ft_model_num_params(m);
    float *g1 = malloc(n * sizeof *g1);
    memcpy(g1, ft_model_grads(m), n * sizeof *g1);
    struct ft_rng rng;
    ft_rng_seed(&rng, 14);
    float *x = random_floats(&rng, 12, 1.5), *dout = random_floats(&rng, 12, 1), out[12];
    cr_assert_eq(ft_model_forward(m, x, 4, out, 1), FT_OK);
    ft_model_backward(m, dout, 4);
    for (size_t i = 0; i < n; i++)
        cr_assert_float_eq(ft_model_grads(m)[i], 2 * g1[i], 1e-6);
    free(g1), free(x), free(dout);
    ft_model_free(m);
}

static const char *MLP_BN_DROP =
    "{\"name\": \"mlp\", \"output_dim\": 3, \"options\": {\"hidden_sizes\": [6, 5, 4], "
    "\"activation\": \"%s\", \"batch_norm\": true, \"dropout\": 0.3, \"l2\": true}}";

static void mlp_bn_dropout_fd(const char *act, enum ref_act ra, int training)
{
    char cfg[512];
    snprintf(cfg, sizeof cfg, MLP_BN_DROP, act);
    struct arch a = {.in = {1, 1, 4},
                     .n = 3,
                     .sizes = {6, 5, 4},
                     .bn = 1,
                     .act = ra,
                     .p = 0.3,
                     .head = 3,
                     .l2 = 1};
    ft_model *m = new_model(cfg, 1, 1, 4, 21);
    warm_up(m, 6, 22);
    model_fd(m, &a, 6, training, 23);
    ft_model_free(m);
}

Test(mlp, batch_norm_dropout_train_matches_finite_differences)
{
    mlp_bn_dropout_fd("tanh", REF_TANH, 1);
}

Test(mlp, batch_norm_dropout_eval_matches_finite_differences)
{
    mlp_bn_dropout_fd("tanh", REF_TANH, 0);
}

Test(mlp, gelu_and_sigmoid_match_finite_differences)
{
    mlp_bn_dropout_fd("gelu", REF_GELU_ERF, 1);
    mlp_bn_dropout_fd("gelu_tanh", REF_GELU_TANH, 1);
    mlp_bn_dropout_fd("sigmoid", REF_SIGMOID, 0);
}

Test(mlp, dropout_mask_is_seeded_and_off_in_eval)
{
    const char *cfg = "{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [64, 8], "
                      "\"dropout\": 0.5}}";
    ft_model *a = new_model(cfg, 1, 1, 10, 5), *b = new_model(cfg, 1, 1, 10, 5);
    struct ft_rng rng;
    ft_rng_seed(&rng, 6);
    float *x = random_floats(&rng, 40, 1), oa[32], ob[32], oe1[32], oe2[32];
    cr_assert_eq(ft_model_forward(a, x, 4, oa, 1), FT_OK);
    cr_assert_eq(ft_model_forward(b, x, 4, ob, 1), FT_OK);
    cr_assert(memcmp(oa, ob, sizeof oa) == 0, "same seed, same masks");
    uint64_t keep[4];
    memcpy(keep, ft_model_rng_state(a), sizeof keep);
    cr_assert_eq(ft_model_forward(a, x, 4, ob, 1), FT_OK);
    cr_assert(memcmp(oa, ob, sizeof oa) != 0, "a new mask each step");
    memcpy(ft_model_rng_state(a), keep, sizeof keep);
    cr_assert_eq(ft_model_forward(a, x, 4, oa, 1), FT_OK);
    cr_assert(memcmp(oa, ob, sizeof oa) == 0, "restoring the state replays the mask");
    cr_assert_eq(ft_model_forward(a, x, 4, oe1, 0), FT_OK);
    cr_assert_eq(ft_model_forward(a, x, 4, oe2, 0), FT_OK);
    cr_assert(memcmp(oe1, oe2, sizeof oe1) == 0, "no dropout in eval mode");
    free(x);
    ft_model_free(a), ft_model_free(b);
}

Test(mlp, init_is_seeded_and_within_torch_bounds)
{
    const char *cfg = "{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [30, 8]}}";
    ft_model *a = new_model(cfg, 1, 1, 20, 5), *b = new_model(cfg, 1, 1, 20, 5);
    ft_model *c = new_model(cfg, 1, 1, 20, 6);
    size_t n = ft_model_num_params(a);
    cr_assert_eq(n, 20 * 30 + 30 + 30 * 8 + 8);
    cr_assert(memcmp(ft_model_params(a), ft_model_params(b), n * sizeof(float)) == 0);
    cr_assert(memcmp(ft_model_params(a), ft_model_params(c), n * sizeof(float)) != 0);
    for (int t = 0; t < ft_model_num_tensors(a); t++) {
        int64_t shape[4];
        int ndim;
        float *v;
        ft_model_tensor(a, t, NULL, &ndim, shape, &v, NULL);
        double bound = 1.0 / sqrt(t < 2 ? 20.0 : 30.0); /* fan_in of the layer */
        size_t cnt = ndim == 2 ? (size_t)(shape[0] * shape[1]) : (size_t)shape[0];
        double lo = 1.0, hi = -1.0;
        for (size_t i = 0; i < cnt; i++) {
            cr_assert(fabs(v[i]) <= bound, "tensor %d value %g beyond %g", t, v[i], bound);
            lo = fmin(lo, v[i]);
            hi = fmax(hi, v[i]);
        }
        if (cnt >= 30) /* spread over the range, not a constant */
            cr_assert(lo < -bound / 2 && hi > bound / 2);
    }
    ft_model_free(a), ft_model_free(b), ft_model_free(c);
}

Test(mlp, tensor_table_and_config)
{
    ft_model *m = new_model("{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [30, 8], "
                            "\"l2\": true}}",
                            1, 1, 20, 1);
    cr_assert_eq(ft_model_input_dim(m), 20);
    cr_assert_eq(ft_model_output_dim(m), 8);
    cr_assert_eq(ft_model_head_offset(m), ft_model_num_params(m), "no head");
    cr_assert_eq(ft_model_num_buffers(m), 0);
    const char *name;
    int ndim, trainable;
    int64_t shape[4];
    float *data;
    ft_model_tensor(m, 2, &name, &ndim, shape, &data, &trainable);
    cr_assert_str_eq(name, "linear_1.weight");
    cr_assert(ndim == 2 && shape[0] == 8 && shape[1] == 30 && trainable);
    cr_assert_eq(data, ft_model_params(m) + 20 * 30 + 30);
    json_t *j = ft_model_config_json(m);
    char *s = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert_str_eq(s, "{\"input_shape\":[20],\"name\":\"mlp\",\"options\":{\"activation\":"
                        "\"relu\",\"batch_norm\":false,\"bias\":true,\"dropout\":0.0,"
                        "\"hidden_sizes\":[30,8],\"input_size\":20,\"l2\":true},"
                        "\"output_dim\":null}");
    free(s);
    json_decref(j);
    ft_model_free(m);
}

Test(mlp, forward_grows_and_shrinks_batch)
{
    ft_model *m = new_model("{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [30, 8], "
                            "\"batch_norm\": true}}",
                            1, 1, 20, 2);
    struct ft_rng rng;
    ft_rng_seed(&rng, 3);
    float *x = random_floats(&rng, 16 * 20, 1.0), out16[16 * 8], out2[2 * 8];
    cr_assert_eq(ft_model_forward(m, x, 2, out2, 0), FT_OK);
    cr_assert_eq(ft_model_forward(m, x, 16, out16, 0), FT_OK);
    cr_assert_eq(ft_model_forward(m, x, 2, out2, 0), FT_OK);
    for (int i = 0; i < 2 * 8; i++)
        cr_assert_float_eq(out2[i], out16[i], 1e-6);
    free(x);
    ft_model_free(m);
}

Test(mlp, no_bias_no_activation_no_l2)
{
    ft_model *m = new_model("{\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [2], \"bias\": "
                            "false, \"activation\": null}}",
                            1, 1, 3, 1);
    cr_assert_eq(ft_model_num_tensors(m), 1);
    cr_assert_eq(ft_model_num_params(m), 6);
    float x[3] = {1, 2, 3}, out[2];
    const float *w = ft_model_params(m);
    cr_assert_eq(ft_model_forward(m, x, 1, out, 0), FT_OK);
    cr_assert_float_eq(out[0], w[0] + 2 * w[1] + 3 * w[2], 1e-6);
    json_t *j = ft_model_config_json(m);
    json_t *o = json_object_get(j, "options");
    cr_assert(json_is_null(json_object_get(o, "activation")));
    cr_assert(json_is_false(json_object_get(o, "bias")));
    json_decref(j);
    ft_model_free(m);
    ft_model_free(NULL);
}

Test(mlp, output_dim_appends_the_head)
{
    ft_model *m = new_model("{\"name\": \"mlp\", \"output_dim\": 4, \"options\": "
                            "{\"hidden_sizes\": [8, 6], \"l2\": true, \"batch_norm\": true}}",
                            1, 1, 5, 3);
    cr_assert_eq(ft_model_output_dim(m), 4);
    long head = param_offset(m, "head.weight");
    cr_assert_eq((size_t)head, ft_model_head_offset(m));
    cr_assert_eq(ft_model_num_params(m), (size_t)head + 4 * 6 + 4, "the head is last");
    cr_assert_eq(param_offset(m, "head.bias"), head + 4 * 6);
    int64_t shape[4];
    ft_model_tensor(m, tensor_index(m, "head.weight"), NULL, NULL, shape, NULL, NULL);
    cr_assert(shape[0] == 4 && shape[1] == 6);
    /* buffers come after every parameter tensor */
    cr_assert_eq(tensor_index(m, "bn_0.running_mean"), ft_model_num_tensors(m) - 2);
    struct arch a = {
        .in = {1, 1, 5}, .n = 2, .sizes = {8, 6}, .bn = 1, .act = REF_RELU, .head = 4, .l2 = 1};
    model_fd(m, &a, 5, 1, 4);
    ft_model_free(m);
}

/* ---- cnn ---- */

static const char *CNN_SMALL =
    "{\"name\": \"cnn\", \"output_dim\": %s, \"options\": {\"channels\": [3, 4], \"kernel_size\": "
    "%d, \"batch_norm\": %s, \"pooling\": \"%s\", \"activation\": \"%s\", \"embedding_dim\": 5, "
    "\"dropout\": %g, \"l2\": %s}}";

static void cnn_fd(struct arch a, const char *act, int training, uint64_t seed)
{
    static const char *pools[] = {"none", "max", "avg"};
    char cfg[512], head[16] = "null";
    if (a.head)
        snprintf(head, sizeof head, "%d", a.head);
    snprintf(cfg, sizeof cfg, CNN_SMALL, head, a.k, a.bn ? "true" : "false", pools[a.pool], act,
             a.p, a.l2 ? "true" : "false");
    ft_model *m = new_model(cfg, a.in[0], a.in[1], a.in[2], seed);
    cr_assert_eq(param_offset(m, "conv_0.bias") >= 0, !a.bn, "conv bias only without bn");
    warm_up(m, 3, seed + 1);
    model_fd(m, &a, 3, training, seed + 2);
    ft_model_free(m);
}

Test(cnn, bn_maxpool_dropout_head_train_matches_finite_differences)
{
    struct arch a = {.cnn = 1,
                     .in = {2, 6, 5},
                     .n = 2,
                     .sizes = {3, 4},
                     .k = 3,
                     .bn = 1,
                     .pool = 1,
                     .act = REF_RELU,
                     .p = 0.25,
                     .emb = 5,
                     .head = 3,
                     .l2 = 1};
    cnn_fd(a, "relu", 1, 30);
}

Test(cnn, bn_maxpool_dropout_head_eval_matches_finite_differences)
{
    struct arch a = {.cnn = 1,
                     .in = {2, 6, 5},
                     .n = 2,
                     .sizes = {3, 4},
                     .k = 3,
                     .bn = 1,
                     .pool = 1,
                     .act = REF_RELU,
                     .p = 0.25,
                     .emb = 5,
                     .head = 3,
                     .l2 = 1};
    cnn_fd(a, "relu", 0, 33);
}

Test(cnn, bias_avgpool_gelu_matches_finite_differences)
{
    struct arch a = {.cnn = 1,
                     .in = {1, 5, 6},
                     .n = 2,
                     .sizes = {3, 4},
                     .k = 5,
                     .pool = 2,
                     .act = REF_GELU_ERF,
                     .emb = 5};
    cnn_fd(a, "gelu", 1, 36);
}

Test(cnn, no_pooling_tanh_matches_finite_differences)
{
    struct arch a = {.cnn = 1,
                     .in = {2, 3, 4},
                     .n = 2,
                     .sizes = {3, 4},
                     .k = 1,
                     .bn = 1,
                     .act = REF_TANH,
                     .emb = 5,
                     .l2 = 1};
    cnn_fd(a, "tanh", 1, 39);
}

Test(cnn, default_options_on_fashion_mnist_shapes)
{
    ft_model *m = new_model("{\"name\": \"cnn\"}", 1, 28, 28, 42);
    static const char *names[] = {"conv_0.weight",    "bn_0.weight",       "bn_0.bias",
                                  "conv_1.weight",    "bn_1.weight",       "bn_1.bias",
                                  "proj.weight",      "proj.bias",         "bn_0.running_mean",
                                  "bn_0.running_var", "bn_1.running_mean", "bn_1.running_var"};
    static const int64_t shapes[][4] = {{32, 1, 3, 3}, {32},  {32}, {64, 32, 3, 3}, {64}, {64},
                                        {128, 64},     {128}, {32}, {32},           {64}, {64}};
    cr_assert_eq(ft_model_num_tensors(m), 12);
    for (int i = 0; i < 12; i++) {
        const char *n;
        int64_t shape[4];
        int trainable;
        ft_model_tensor(m, i, &n, NULL, shape, NULL, &trainable);
        cr_assert_str_eq(n, names[i]);
        cr_assert(memcmp(shape, shapes[i], sizeof shape) == 0, "shape of %s", n);
        cr_assert_eq(trainable, i < 8);
    }
    cr_assert_eq(ft_model_num_params(m), 288 + 64 + 18432 + 128 + 64 * 128 + 128);
    cr_assert_eq(ft_model_num_buffers(m), 2 * 32 + 2 * 64);
    cr_assert_eq(ft_model_input_dim(m), 784);
    cr_assert_eq(ft_model_output_dim(m), 128);
    struct ft_rng rng;
    ft_rng_seed(&rng, 1);
    float *x = random_floats(&rng, 5 * 784, 1.0), *out = malloc(5 * 128 * sizeof *out);
    float rv = ft_model_buffers(m)[buffer_offset(m, "bn_1.running_var")];
    cr_assert_eq(ft_model_forward(m, x, 5, out, 0), FT_OK);
    cr_assert_eq(ft_model_buffers(m)[buffer_offset(m, "bn_1.running_var")], rv, "eval: fixed");
    cr_assert_eq(ft_model_forward(m, x, 5, out, 1), FT_OK);
    cr_assert_neq(ft_model_buffers(m)[buffer_offset(m, "bn_1.running_var")], rv, "train: updated");
    for (int i = 0; i < 5; i++) {
        double ss = 0;
        for (int k = 0; k < 128; k++)
            ss += out[i * 128 + k] * out[i * 128 + k];
        cr_assert_float_eq(ss, 1.0, 1e-5, "l2 is on by default");
    }
    json_t *j = ft_model_config_json(m);
    char *s = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert_str_eq(s, "{\"input_shape\":[1,28,28],\"name\":\"cnn\",\"options\":{\"activation\":"
                        "\"relu\",\"batch_norm\":true,\"channels\":[32,64],\"dropout\":0.0,"
                        "\"embedding_dim\":128,\"input_shape\":[1,28,28],\"kernel_size\":3,"
                        "\"l2\":true,\"pooling\":\"max\"},\"output_dim\":null}");
    free(s);
    json_decref(j);
    free(x), free(out);
    ft_model_free(m);
}

Test(cnn, output_dim_head_and_offset)
{
    ft_model *m = new_model("{\"name\": \"cnn\", \"output_dim\": 16}", 1, 28, 28, 42);
    cr_assert_eq(ft_model_output_dim(m), 16);
    cr_assert_eq(ft_model_head_offset(m), (size_t)param_offset(m, "head.weight"));
    cr_assert_eq(ft_model_head_offset(m), 288 + 64 + 18432 + 128 + 64 * 128 + 128);
    cr_assert_eq(ft_model_num_params(m), ft_model_head_offset(m) + 128 * 16 + 16);
    ft_model_free(m);
}

/* The whole batch at once (conv in chunks of images when the im2col scratch is large) gives
 * what each image alone gives, forward and (eval mode) summed gradients. */
Test(cnn, batch_equals_single_images_across_conv_chunks)
{
    enum { B = 18 };
    /* 225 x 4096 im2col floats per image: the 64 MB scratch holds 17 images, so 2 chunks */
    ft_model *m = new_model("{\"name\": \"cnn\", \"options\": {\"channels\": [4], "
                            "\"kernel_size\": 15, \"embedding_dim\": 3}}",
                            1, 64, 64, 8);
    warm_up(m, 2, 9);
    struct ft_rng rng;
    ft_rng_seed(&rng, 10);
    size_t n = ft_model_num_params(m);
    float *x = random_floats(&rng, B * 4096, 1.0), *dout = random_floats(&rng, B * 3, 1.0);
    float out[B * 3], one[3];
    float *g = calloc(n, sizeof *g);
    for (int i = 0; i < B; i++) {
        ft_model_zero_grad(m);
        cr_assert_eq(ft_model_forward(m, x + i * 4096, 1, one, 0), FT_OK);
        ft_model_backward(m, dout + i * 3, 1);
        for (size_t k = 0; k < n; k++)
            g[k] += ft_model_grads(m)[k];
        memcpy(out + i * 3, one, sizeof one);
    }
    float batch[B * 3];
    ft_model_zero_grad(m);
    cr_assert_eq(ft_model_forward(m, x, B, batch, 0), FT_OK);
    ft_model_backward(m, dout, B);
    for (int i = 0; i < B * 3; i++)
        cr_assert_float_eq(batch[i], out[i], 1e-5);
    for (size_t k = 0; k < n; k++)
        cr_assert(fabsf(ft_model_grads(m)[k] - g[k]) <= 1e-4f + 1e-3f * fabsf(g[k]),
                  "grad %zu: %g vs %g", k, ft_model_grads(m)[k], g[k]);
    free(x), free(dout), free(g);
    ft_model_free(m);
}

/* ---- options ---- */

static enum ft_err check(const char *name, const char *options, json_t **norm, struct ft_error *err)
{
    json_t *o = options ? json_loads(options, 0, NULL) : NULL;
    cr_assert(!options || o, "%s", options);
    enum ft_err e = ft_model_check_options(name, o, norm, err);
    json_decref(o);
    return e;
}

static void expect_bad(const char *name, const char *options, const char *param)
{
    struct ft_error err = {0};
    json_t *keep = json_object(), *norm = keep;
    expect_error(check(name, options, &norm, &err), &err, param);
    cr_assert_null(norm, "no normalised options on error");
    json_decref(keep);
}

Test(options, defaults_are_normalised)
{
    json_t *norm;
    struct ft_error err = {0};
    cr_assert_eq(check("mlp", NULL, &norm, &err), FT_OK);
    char *s = json_dumps(norm, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert_str_eq(s, "{\"activation\":\"relu\",\"batch_norm\":false,\"bias\":true,"
                        "\"dropout\":0.0,\"hidden_sizes\":[256,128],\"input_size\":null,"
                        "\"l2\":false}");
    free(s);
    json_decref(norm);
    cr_assert_eq(check("cnn", "{\"pooling\": null, \"activation\": \"none\"}", &norm, &err), FT_OK);
    s = json_dumps(norm, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert_str_eq(s, "{\"activation\":null,\"batch_norm\":true,\"channels\":[32,64],"
                        "\"dropout\":0.0,\"embedding_dim\":128,\"input_shape\":null,"
                        "\"kernel_size\":3,\"l2\":true,\"pooling\":\"none\"}");
    free(s);
    json_decref(norm);
    cr_assert_eq(check("mlp", "{\"hidden_sizes\": [4], \"dropout\": 0.5}", NULL, &err), FT_OK);
}

Test(options, bad_options_name_the_param)
{
    expect_bad("resnet", NULL, "config.model.name");
    expect_bad(NULL, NULL, "config.model.name");
    expect_bad("mlp", "[1]", "config.model.options");
    expect_bad("mlp", "{\"hidden\": [1]}", "config.model.options.hidden");
    expect_bad("mlp", "{\"hidden_sizes\": [0]}", "config.model.options.hidden_sizes");
    expect_bad("mlp", "{\"hidden_sizes\": []}", "config.model.options.hidden_sizes");
    expect_bad("mlp", "{\"hidden_sizes\": 8}", "config.model.options.hidden_sizes");
    expect_bad("mlp", "{\"activation\": \"swish\"}", "config.model.options.activation");
    expect_bad("mlp", "{\"activation\": 1}", "config.model.options.activation");
    expect_bad("mlp", "{\"dropout\": 1.0}", "config.model.options.dropout");
    expect_bad("mlp", "{\"dropout\": -0.1}", "config.model.options.dropout");
    expect_bad("mlp", "{\"batch_norm\": 1}", "config.model.options.batch_norm");
    expect_bad("mlp", "{\"bias\": \"yes\"}", "config.model.options.bias");
    expect_bad("mlp", "{\"input_size\": 0}", "config.model.options.input_size");
    expect_bad("mlp", "{\"channels\": [8]}", "config.model.options.channels");
    expect_bad("cnn", "{\"input_size\": 784}", "config.model.options.input_size");
    expect_bad("cnn", "{\"kernel_size\": 4}", "config.model.options.kernel_size");
    expect_bad("cnn", "{\"kernel_size\": 0}", "config.model.options.kernel_size");
    expect_bad("cnn", "{\"pooling\": \"min\"}", "config.model.options.pooling");
    expect_bad("cnn", "{\"channels\": [1, 1, 1, 1, 1, 1, 1, 1, 1]}",
               "config.model.options.channels");
    expect_bad("cnn", "{\"input_shape\": [1, 28]}", "config.model.options.input_shape");
    expect_bad("cnn", "{\"embedding_dim\": 0}", "config.model.options.embedding_dim");
}

static void expect_new_error(const char *config, int c, int h, int w, const char *param)
{
    json_t *cfg = json_loads(config, 0, NULL);
    cr_assert_not_null(cfg, "%s", config);
    int shape[3] = {c, h, w};
    struct ft_error err = {0};
    ft_model *m = (ft_model *)cfg;
    expect_error(ft_model_new(cfg, shape, 1, &m, &err), &err, param);
    cr_assert_null(m);
    json_decref(cfg);
}

Test(options, data_mismatches_name_the_param)
{
    expect_new_error("{\"name\": \"mlp\", \"options\": {\"input_size\": 10}}", 1, 1, 12,
                     "config.model.options.input_size");
    expect_new_error("{\"name\": \"cnn\"}", 1, 1, 784, "config.model.options.input_shape");
    expect_new_error("{\"name\": \"cnn\", \"options\": {\"input_shape\": [1, 28, 28]}}", 1, 1, 100,
                     "config.model.options.input_shape");
    expect_new_error("{\"name\": \"cnn\", \"options\": {\"channels\": [2, 2, 2, 2, 2]}}", 1, 28, 28,
                     "config.model.options.channels");
    expect_new_error("{\"name\": \"mlp\", \"output_dim\": 0}", 1, 1, 4, "config.model.output_dim");
    expect_new_error("{\"name\": \"mlp\", \"input_shape\": [5]}", 1, 1, 4,
                     "config.model.input_shape");
    expect_new_error("{\"name\": \"mlp\", \"options\": {\"dropout\": 2}}", 1, 1, 4,
                     "config.model.options.dropout");
    expect_new_error("[]", 1, 1, 4, "config.model");
    /* a vector reshaped into an image by options.input_shape is fine */
    ft_model *m = new_model("{\"name\": \"cnn\", \"options\": {\"input_shape\": [1, 10, 10], "
                            "\"channels\": [2]}}",
                            1, 1, 100, 1);
    cr_assert_eq(ft_model_input_dim(m), 100);
    ft_model_free(m);
}

/* ---- save / load ---- */

static const char *tmp_path(void)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/ft_test_model_%d.safetensors", (int)getpid());
    return path;
}

/* Write m's tensors (all but skip, NULL = none) with its model_config to tmp_path(). */
static void save(ft_model *m, const char *skip)
{
    int nt = ft_model_num_tensors(m), k = 0;
    struct ft_tensor_view *v = calloc((size_t)nt, sizeof *v);
    for (int i = 0; i < nt; i++) {
        float *data;
        ft_model_tensor(m, i, &v[k].name, &v[k].ndim, v[k].shape, &data, NULL);
        v[k].dtype = "F32";
        v[k].data = data;
        k += !skip || strcmp(v[k].name, skip) != 0;
    }
    json_t *mc = ft_model_config_json(m);
    char *text = json_dumps(mc, JSON_COMPACT);
    json_t *meta = json_pack("{s:s}", "model_config", text);
    struct ft_error err = {0};
    cr_assert_eq(ft_safetensors_write(tmp_path(), v, k, meta, &err), FT_OK, "%s", err.message);
    json_decref(meta), json_decref(mc), free(text), free(v);
}

static ft_safetensors *open_saved(void)
{
    ft_safetensors *st = NULL;
    struct ft_error err = {0};
    cr_assert_eq(ft_safetensors_open(tmp_path(), &st, &err), FT_OK, "%s", err.message);
    return st;
}

Test(load, round_trip_through_safetensors)
{
    const char *cfg = "{\"name\": \"cnn\", \"output_dim\": 6, \"options\": {\"channels\": [3, 4], "
                      "\"embedding_dim\": 5}}";
    ft_model *a = new_model(cfg, 1, 8, 8, 1), *b = new_model(cfg, 1, 8, 8, 2), *c = NULL;
    warm_up(a, 4, 3); /* running statistics away from 0 / 1 */
    save(a, NULL);
    ft_safetensors *st = open_saved();
    struct ft_error err = {0};
    cr_assert_eq(ft_model_load(b, st, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_model_from_safetensors(st, &c, &err), FT_OK, "%s", err.message);
    size_t n = ft_model_num_params(a), nb = ft_model_num_buffers(a);
    for (ft_model *x = b; x; x = x == b ? c : NULL) {
        cr_assert_eq(ft_model_num_params(x), n);
        cr_assert(memcmp(ft_model_params(a), ft_model_params(x), n * sizeof(float)) == 0);
        cr_assert(memcmp(ft_model_buffers(a), ft_model_buffers(x), nb * sizeof(float)) == 0);
    }
    struct ft_rng rng;
    ft_rng_seed(&rng, 4);
    float *x = random_floats(&rng, 3 * 64, 1.0), oa[18], oc[18];
    cr_assert_eq(ft_model_forward(a, x, 3, oa, 0), FT_OK);
    cr_assert_eq(ft_model_forward(c, x, 3, oc, 0), FT_OK);
    cr_assert(memcmp(oa, oc, sizeof oa) == 0, "the loaded model computes the same embeddings");
    free(x);
    ft_safetensors_free(st);
    ft_model_free(a), ft_model_free(b), ft_model_free(c);
    unlink(tmp_path());
}

Test(load, mismatches_name_the_tensor_and_change_nothing)
{
    const char *cfg = "{\"name\": \"cnn\", \"options\": {\"channels\": [3, 4], \"embedding_dim\": "
                      "5}}";
    ft_model *a = new_model(cfg, 1, 8, 8, 1), *b = new_model(cfg, 1, 8, 8, 2);
    ft_model *other = new_model("{\"name\": \"cnn\", \"options\": {\"channels\": [3, 5], "
                                "\"embedding_dim\": 5}}",
                                1, 8, 8, 2);
    size_t n = ft_model_num_params(b);
    float *keep = malloc(n * sizeof *keep);
    memcpy(keep, ft_model_params(b), n * sizeof *keep);
    struct ft_error err = {0};
    save(a, "bn_1.running_var");
    ft_safetensors *st = open_saved();
    expect_error(ft_model_load(b, st, &err), &err, "bn_1.running_var");
    cr_assert(memcmp(keep, ft_model_params(b), n * sizeof *keep) == 0, "nothing loaded");
    ft_safetensors_free(st);
    save(a, NULL);
    st = open_saved();
    expect_error(ft_model_load(other, st, &err), &err, "conv_1.weight");
    ft_safetensors_free(st);
    /* a file without model_config */
    struct ft_tensor_view v = {"x", "F32", 1, {1}, keep};
    cr_assert_eq(ft_safetensors_write(tmp_path(), &v, 1, NULL, &err), FT_OK);
    st = open_saved();
    ft_model *c = (ft_model *)st;
    expect_error(ft_model_from_safetensors(st, &c, &err), &err, "model_config");
    cr_assert_null(c);
    ft_safetensors_free(st);
    free(keep);
    ft_model_free(a), ft_model_free(b), ft_model_free(other);
    unlink(tmp_path());
}

/* test_layers.c — the layer kernels of nn.h beyond linear/relu/l2 (gelu, tanh, sigmoid, batch
 * norm, layer norm, dropout, conv2d, max/avg/global pooling, flatten) against their PyTorch
 * fixtures (tests/fixtures/torch/README.md) and against central finite differences in double
 * of independent double reference implementations on tiny shapes; and the SIMD paths bitwise
 * against the scalar ones: AVX2 of batch norm and max pooling, AVX and AVX-512 of sum_squares
 * and l2_normalize, AVX-512 of relu and the linear bias gradient. */
#include "nn.h"
#include "rng.h"
#include "support/fixture.h"
#include "support/nn_ref.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static void assert_expected(json_t *fx, const char *name, const float *got)
{
    size_t n;
    double *want = fx_doubles(fx, "expected", name, &n);
    fx_assert_close_tol(fx, name, got, want, n);
    free(want);
}

static int param_int(json_t *fx, const char *name)
{
    json_t *v = json_object_get(json_object_get(fx, "params"), name);
    cr_assert(json_is_integer(v), "fixture params.%s", name);
    return (int)json_integer_value(v);
}

static float *random_floats(struct ft_rng *rng, size_t n, double scale)
{
    float *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((2.0 * ft_rng_uniform(rng) - 1.0) * scale);
    return v;
}

static float *zeros(size_t n)
{
    float *v = calloc(n ? n : 1, sizeof *v);
    cr_assert_not_null(v);
    return v;
}

/* ---- element-wise activations ---- */

enum act { A_GELU_ERF, A_GELU_TANH, A_TANH, A_SIGMOID };

static enum ref_act to_ref(enum act a)
{
    static const enum ref_act map[] = {REF_GELU_ERF, REF_GELU_TANH, REF_TANH, REF_SIGMOID};
    return map[a];
}

static void act_forward(enum act a, float *out, const float *x, size_t n)
{
    if (a == A_GELU_ERF || a == A_GELU_TANH)
        ft_gelu_forward(out, x, n, a == A_GELU_ERF ? FT_GELU_ERF : FT_GELU_TANH);
    else if (a == A_TANH)
        ft_tanh_forward(out, x, n);
    else
        ft_sigmoid_forward(out, x, n);
}

/* gelu's backward reads the input, tanh's and sigmoid's the output. */
static void act_backward(enum act a, float *dx, const float *dout, const float *x, const float *out,
                         size_t n)
{
    if (a == A_GELU_ERF || a == A_GELU_TANH)
        ft_gelu_backward(dx, dout, x, n, a == A_GELU_ERF ? FT_GELU_ERF : FT_GELU_TANH);
    else if (a == A_TANH)
        ft_tanh_backward(dx, dout, out, n);
    else
        ft_sigmoid_backward(dx, dout, out, n);
}

static void act_fixture(const char *file, enum act a)
{
    json_t *fx = fx_load(file);
    size_t n;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *out = zeros(n), *dx = zeros(n);
    act_forward(a, out, x, n);
    act_backward(a, dx, dout, x, out, n);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    act_forward(a, x, x, n); /* in place */
    assert_expected(fx, "out", x);
    free(x), free(dout), free(out), free(dx);
    json_decref(fx);
}

Test(gelu, tanh_fixture)
{
    act_fixture("torch/gelu_tanh.json", A_GELU_TANH);
}

Test(gelu, erf_fixture)
{
    act_fixture("torch/gelu_erf.json", A_GELU_ERF);
}

Test(tanh, fixture)
{
    act_fixture("torch/tanh.json", A_TANH);
}

Test(sigmoid, fixture)
{
    act_fixture("torch/sigmoid.json", A_SIGMOID);
}

struct act_ctx {
    enum act a;
    double *x;
    const float *dout;
    size_t n;
};

static double act_objective(void *p)
{
    struct act_ctx *c = p;
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++)
        s += ref_act(to_ref(c->a), c->x[i]) * c->dout[i];
    return s;
}

static void act_fd(enum act a)
{
    enum { N = 40 };
    struct ft_rng rng;
    ft_rng_seed(&rng, 20 + a);
    float *x = random_floats(&rng, N, 4.0), *dout = random_floats(&rng, N, 1.0);
    float out[N], dx[N];
    double ref[N];
    act_forward(a, out, x, N);
    act_backward(a, dx, dout, x, out, N);
    struct act_ctx c = {a, fx_to_double(x, N), dout, N};
    for (int i = 0; i < N; i++)
        ref[i] = ref_act(to_ref(a), c.x[i]);
    fx_assert_close("out", out, ref, N, 2e-6, 1e-5);
    fx_check_fd("dx", act_objective, &c, c.x, N, dx);
    free(x), free(dout), free(c.x);
}

Test(gelu, erf_backward_matches_finite_differences)
{
    act_fd(A_GELU_ERF);
}

Test(gelu, tanh_backward_matches_finite_differences)
{
    act_fd(A_GELU_TANH);
}

Test(tanh, backward_matches_finite_differences)
{
    act_fd(A_TANH);
}

Test(sigmoid, backward_matches_finite_differences)
{
    act_fd(A_SIGMOID);
}

Test(gelu, tails_are_finite_and_exact)
{
    float x[4] = {-30.0f, -10.0f, 10.0f, 30.0f}, out[4], dx[4], dout[4] = {1, 1, 1, 1};
    ft_gelu_forward(out, x, 4, FT_GELU_ERF);
    ft_gelu_backward(dx, dout, x, 4, FT_GELU_ERF);
    for (int i = 0; i < 4; i++)
        cr_assert(isfinite(out[i]) && isfinite(dx[i]));
    cr_assert_float_eq(out[0], 0.0f, 1e-30);
    cr_assert_float_eq(out[3], 30.0f, 1e-6);
    cr_assert_float_eq(dx[3], 1.0f, 1e-7);
    ft_sigmoid_forward(out, x, 4);
    cr_assert(out[0] >= 0.0f && out[0] < 1e-12f && out[3] == 1.0f);
}

/* ---- batch norm ---- */

static void batchnorm_fixture(const char *file, int training, int S)
{
    json_t *fx = fx_load(file);
    size_t n;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *w = fx_floats(fx, "inputs", "weight", NULL), *b = fx_floats(fx, "inputs", "bias", NULL);
    float *rm = fx_floats(fx, "inputs", "running_mean", NULL);
    float *rv = fx_floats(fx, "inputs", "running_var", NULL);
    int N = fx_dim(fx, "inputs", "x", 0), C = fx_dim(fx, "inputs", "x", 1);
    cr_assert_eq((size_t)N * C * S, n);
    float *out = zeros(n), *dx = zeros(n), *dw = zeros(C), *db = zeros(C);
    float *mean = zeros(C), *rstd = zeros(C), *var = zeros(C), rm0 = rm[0], rv0 = rv[0];
    ft_batchnorm_forward(out, mean, rstd, rm, rv, x, w, b, N, C, S, training);
    ft_batchnorm_backward(dx, dw, db, dout, x, mean, rstd, w, N, C, S, training);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    assert_expected(fx, "dweight", dw);
    assert_expected(fx, "dbias", db);
    if (training) {
        for (int c = 0; c < C; c++)
            var[c] = 1.0f / (rstd[c] * rstd[c]) - 1e-5f;
        assert_expected(fx, "batch_mean", mean);
        assert_expected(fx, "batch_var", var);
        assert_expected(fx, "running_mean_new", rm);
        assert_expected(fx, "running_var_new", rv);
    } else {
        cr_assert(rm[0] == rm0 && rv[0] == rv0, "eval mode leaves the running statistics");
    }
    free(x), free(dout), free(w), free(b), free(rm), free(rv), free(out), free(dx), free(dw);
    free(db), free(mean), free(rstd), free(var);
    json_decref(fx);
}

Test(batchnorm, bn1d_train_fixture)
{
    batchnorm_fixture("torch/batchnorm1d_train.json", 1, 1);
}

Test(batchnorm, bn1d_eval_fixture)
{
    batchnorm_fixture("torch/batchnorm1d_eval.json", 0, 1);
}

Test(batchnorm, bn2d_train_fixture)
{
    batchnorm_fixture("torch/batchnorm2d_train.json", 1, 9);
}

struct bn_ctx {
    double *x, *w, *b, *rm, *rv;
    const float *dout;
    int N, C, S, training;
};

static double bn_objective(void *p)
{
    struct bn_ctx *c = p;
    size_t n = (size_t)c->N * c->C * c->S;
    double *out = malloc(n * sizeof *out);
    ref_batchnorm(out, c->x, c->w, c->b, c->rm, c->rv, c->N, c->C, c->S, c->training);
    double s = ref_dot(out, c->dout, n);
    free(out);
    return s;
}

static void batchnorm_fd(int N, int C, int S, int training)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, 30 + training * 2 + (S > 1));
    size_t n = (size_t)N * C * S;
    float *x = random_floats(&rng, n, 2.0), *dout = random_floats(&rng, n, 1.0);
    float *w = random_floats(&rng, C, 1.5), *b = random_floats(&rng, C, 1.0);
    float *rm = random_floats(&rng, C, 0.5), *rv = random_floats(&rng, C, 0.5);
    for (int c = 0; c < C; c++)
        rv[c] += 1.0f; /* positive variances */
    struct bn_ctx ctx = {fx_to_double(x, n),
                         fx_to_double(w, C),
                         fx_to_double(b, C),
                         fx_to_double(rm, C),
                         fx_to_double(rv, C),
                         dout,
                         N,
                         C,
                         S,
                         training};
    float *out = zeros(n), *dx = zeros(n), *dw = zeros(C), *db = zeros(C);
    float *mean = zeros(C), *rstd = zeros(C);
    double *ref = malloc(n * sizeof *ref);
    ref_batchnorm(ref, ctx.x, ctx.w, ctx.b, ctx.rm, ctx.rv, N, C, S, training);
    /* training: no running statistics tracked (NULL); eval reads them */
    ft_batchnorm_forward(out, mean, rstd, training ? NULL : rm, training ? NULL : rv, x, w, b, N, C,
                         S, training);
    ft_batchnorm_backward(dx, dw, db, dout, x, mean, rstd, w, N, C, S, training);
    fx_assert_close("out", out, ref, n, 1e-5, 1e-4);
    fx_check_fd("dx", bn_objective, &ctx, ctx.x, n, dx);
    fx_check_fd("dweight", bn_objective, &ctx, ctx.w, C, dw);
    fx_check_fd("dbias", bn_objective, &ctx, ctx.b, C, db);
    free(x), free(dout), free(w), free(b), free(rm), free(rv), free(out), free(dx), free(dw);
    free(db), free(mean), free(rstd), free(ref);
    free(ctx.x), free(ctx.w), free(ctx.b), free(ctx.rm), free(ctx.rv);
}

Test(batchnorm, bn1d_train_matches_finite_differences)
{
    batchnorm_fd(6, 3, 1, 1);
}

Test(batchnorm, bn1d_eval_matches_finite_differences)
{
    batchnorm_fd(6, 3, 1, 0);
}

Test(batchnorm, bn2d_train_matches_finite_differences)
{
    batchnorm_fd(2, 3, 6, 1);
}

Test(batchnorm, bn2d_eval_matches_finite_differences)
{
    batchnorm_fd(2, 3, 6, 0);
}

Test(batchnorm, running_statistics_use_momentum_and_unbiased_var)
{
    float x[4] = {1, 3, 5, 7}, w[1] = {1}, b[1] = {0}, rm[1] = {2}, rv[1] = {4};
    float out[4], mean[1], rstd[1];
    ft_batchnorm_forward(out, mean, rstd, rm, rv, x, w, b, 4, 1, 1, 1);
    cr_assert_float_eq(mean[0], 4.0f, 1e-6);
    cr_assert_float_eq(rstd[0], 1.0 / sqrt(5.0 + 1e-5), 1e-6);    /* biased var 5 */
    cr_assert_float_eq(rm[0], 0.9 * 2 + 0.1 * 4, 1e-6);           /* 2.2 */
    cr_assert_float_eq(rv[0], 0.9 * 4 + 0.1 * 5.0 * 4 / 3, 1e-6); /* unbiased 20/3 */
}

/* ---- layer norm ---- */

Test(layernorm, fixture)
{
    json_t *fx = fx_load("torch/layernorm.json");
    size_t n;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *w = fx_floats(fx, "inputs", "weight", NULL), *b = fx_floats(fx, "inputs", "bias", NULL);
    int B = fx_dim(fx, "inputs", "x", 0), D = fx_dim(fx, "inputs", "x", 1);
    float *out = zeros(n), *dx = zeros(n), *dw = zeros(D), *db = zeros(D);
    float *mean = zeros(B), *rstd = zeros(B);
    ft_layernorm_forward(out, mean, rstd, x, w, b, B, D);
    ft_layernorm_backward(dx, dw, db, dout, x, mean, rstd, w, B, D);
    assert_expected(fx, "out", out);
    assert_expected(fx, "mean", mean);
    assert_expected(fx, "rstd", rstd);
    assert_expected(fx, "dx", dx);
    assert_expected(fx, "dweight", dw);
    assert_expected(fx, "dbias", db);
    free(x), free(dout), free(w), free(b), free(out), free(dx), free(dw), free(db), free(mean);
    free(rstd);
    json_decref(fx);
}

struct ln_ctx {
    double *x, *w, *b;
    const float *dout;
    int B, D;
};

static double ln_objective(void *p)
{
    struct ln_ctx *c = p;
    double out[64];
    ref_layernorm(out, c->x, c->w, c->b, c->B, c->D);
    return ref_dot(out, c->dout, (size_t)c->B * c->D);
}

Test(layernorm, backward_matches_finite_differences)
{
    enum { B = 3, D = 7 };
    struct ft_rng rng;
    ft_rng_seed(&rng, 40);
    float *x = random_floats(&rng, B * D, 2.0), *dout = random_floats(&rng, B * D, 1.0);
    float *w = random_floats(&rng, D, 1.5), *b = random_floats(&rng, D, 1.0);
    float out[B * D], dx[B * D], dw[D] = {0}, db[D] = {0}, mean[B], rstd[B];
    ft_layernorm_forward(out, mean, rstd, x, w, b, B, D);
    ft_layernorm_backward(dx, dw, db, dout, x, mean, rstd, w, B, D);
    struct ln_ctx c = {fx_to_double(x, B * D), fx_to_double(w, D), fx_to_double(b, D), dout, B, D};
    double ref[B * D];
    ref_layernorm(ref, c.x, c.w, c.b, B, D);
    fx_assert_close("out", out, ref, B * D, 1e-5, 1e-4);
    fx_check_fd("dx", ln_objective, &c, c.x, B * D, dx);
    fx_check_fd("dweight", ln_objective, &c, c.w, D, dw);
    fx_check_fd("dbias", ln_objective, &c, c.b, D, db);
    free(x), free(dout), free(w), free(b), free(c.x), free(c.w), free(c.b);
}

/* ---- dropout ---- */

Test(dropout, seeded_mask_scales_kept_values)
{
    enum { N = 20000 };
    struct ft_rng r1, r2;
    ft_rng_seed(&r1, 50);
    ft_rng_seed(&r2, 50);
    float *x = random_floats(&r1, N, 1.0), *out = zeros(N), *mask = zeros(N);
    float *out2 = zeros(N), *mask2 = zeros(N);
    ft_rng_seed(&r1, 51);
    ft_rng_seed(&r2, 51);
    ft_dropout_forward(out, mask, x, N, 0.25f, &r1, 1);
    ft_dropout_forward(out2, mask2, x, N, 0.25f, &r2, 1);
    cr_assert(memcmp(mask, mask2, N * sizeof *mask) == 0, "same seed, same mask");
    int kept = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(mask[i] == 0.0f || mask[i] == 1.0f / 0.75f);
        cr_assert_float_eq(out[i], x[i] * mask[i], 1e-7);
        kept += mask[i] != 0.0f;
    }
    cr_assert(fabs(kept / (double)N - 0.75) < 0.02, "kept fraction %g", kept / (double)N);
    /* the mask is the gradient */
    float *dx = zeros(N);
    ft_dropout_backward(dx, x, mask, N);
    for (int i = 0; i < N; i++)
        cr_assert_float_eq(dx[i], x[i] * mask[i], 1e-7);
    free(x), free(out), free(mask), free(out2), free(mask2), free(dx);
}

Test(dropout, eval_and_p0_are_identity_without_draws)
{
    float x[5] = {1, -2, 3, -4, 5}, out[5], mask[5];
    struct ft_rng r, before;
    ft_rng_seed(&r, 52);
    before = r;
    ft_dropout_forward(out, mask, x, 5, 0.5f, &r, 0);
    ft_dropout_forward(out, mask, x, 5, 0.0f, &r, 1);
    cr_assert(memcmp(&r, &before, sizeof r) == 0, "no random draws");
    for (int i = 0; i < 5; i++)
        cr_assert(out[i] == x[i] && mask[i] == 1.0f);
}

struct drop_ctx {
    double *x;
    const float *mask, *dout;
    size_t n;
};

static double drop_objective(void *p)
{
    struct drop_ctx *c = p;
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++)
        s += c->x[i] * c->mask[i] * c->dout[i];
    return s;
}

Test(dropout, backward_matches_finite_differences_with_a_fixed_mask)
{
    enum { N = 30 };
    struct ft_rng rng;
    ft_rng_seed(&rng, 53);
    float *x = random_floats(&rng, N, 1.0), *dout = random_floats(&rng, N, 1.0);
    float out[N], mask[N], dx[N];
    ft_dropout_forward(out, mask, x, N, 0.4f, &rng, 1);
    ft_dropout_backward(dx, dout, mask, N);
    struct drop_ctx c = {fx_to_double(x, N), mask, dout, N};
    fx_check_fd("dx", drop_objective, &c, c.x, N, dx);
    free(x), free(dout), free(c.x);
}

/* ---- conv2d ---- */

static void conv_fixture(const char *file)
{
    json_t *fx = fx_load(file);
    float *x = fx_floats(fx, "inputs", "x", NULL), *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *w = fx_floats(fx, "inputs", "weight", NULL), *b = fx_floats(fx, "inputs", "bias", NULL);
    struct ft_conv2d_shape s = {
        fx_dim(fx, "inputs", "x", 0),      fx_dim(fx, "inputs", "x", 1),
        fx_dim(fx, "inputs", "x", 2),      fx_dim(fx, "inputs", "x", 3),
        fx_dim(fx, "inputs", "weight", 0), fx_dim(fx, "inputs", "weight", 2),
        fx_dim(fx, "inputs", "weight", 3), param_int(fx, "stride"),
        param_int(fx, "padding")};
    cr_assert_eq(ft_conv2d_out_h(&s), fx_dim(fx, "inputs", "dout", 2));
    cr_assert_eq(ft_conv2d_out_w(&s), fx_dim(fx, "inputs", "dout", 3));
    size_t nx = (size_t)s.B * s.C * s.H * s.W, nw = (size_t)s.OC * s.C * s.KH * s.KW;
    size_t no = (size_t)s.B * s.OC * ft_conv2d_out_h(&s) * ft_conv2d_out_w(&s);
    float *out = zeros(no), *dx = zeros(nx), *dw = zeros(nw), *db = zeros(s.OC);
    float *scratch = zeros(ft_conv2d_scratch_size(&s));
    ft_conv2d_forward(out, scratch, x, w, b, &s);
    ft_conv2d_backward(dx, dw, db, scratch, dout, x, w, &s);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    assert_expected(fx, "dweight", dw);
    assert_expected(fx, "dbias", db);
    free(x), free(dout), free(w), free(b), free(out), free(dx), free(dw), free(db), free(scratch);
    json_decref(fx);
}

Test(conv2d, s1p1_fixture)
{
    conv_fixture("torch/conv2d_s1p1.json");
}

Test(conv2d, s2p0_fixture)
{
    conv_fixture("torch/conv2d_s2p0.json");
}

struct conv_ctx {
    double *x, *w, *b;
    const float *dout;
    const struct ft_conv2d_shape *s;
    size_t no;
};

static double conv_objective(void *p)
{
    struct conv_ctx *c = p;
    double *out = malloc(c->no * sizeof *out);
    ref_conv2d(out, c->x, c->w, c->b, c->s);
    double r = ref_dot(out, c->dout, c->no);
    free(out);
    return r;
}

static void conv_fd(struct ft_conv2d_shape s, int bias, uint64_t seed)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    size_t nx = (size_t)s.B * s.C * s.H * s.W, nw = (size_t)s.OC * s.C * s.KH * s.KW;
    size_t no = (size_t)s.B * s.OC * ft_conv2d_out_h(&s) * ft_conv2d_out_w(&s);
    float *x = random_floats(&rng, nx, 1.0), *w = random_floats(&rng, nw, 1.0);
    float *b = bias ? random_floats(&rng, s.OC, 1.0) : NULL, *dout = random_floats(&rng, no, 1.0);
    float *out = zeros(no), *dx = zeros(nx), *dw = zeros(nw), *db = zeros(s.OC);
    float *scratch = zeros(ft_conv2d_scratch_size(&s));
    ft_conv2d_forward(out, scratch, x, w, b, &s);
    ft_conv2d_backward(dx, dw, bias ? db : NULL, scratch, dout, x, w, &s);
    struct conv_ctx c = {fx_to_double(x, nx),
                         fx_to_double(w, nw),
                         bias ? fx_to_double(b, s.OC) : NULL,
                         dout,
                         &s,
                         no};
    double *ref = malloc(no * sizeof *ref);
    ref_conv2d(ref, c.x, c.w, c.b, &s);
    fx_assert_close("out", out, ref, no, 1e-5, 1e-4);
    fx_check_fd("dx", conv_objective, &c, c.x, nx, dx);
    fx_check_fd("dweight", conv_objective, &c, c.w, nw, dw);
    if (bias)
        fx_check_fd("dbias", conv_objective, &c, c.b, s.OC, db);
    /* dw and db accumulate; dinp NULL skips the input gradient */
    float *dw1 = malloc(nw * sizeof *dw1);
    memcpy(dw1, dw, nw * sizeof *dw);
    ft_conv2d_backward(NULL, dw, NULL, scratch, dout, x, w, &s);
    for (size_t i = 0; i < nw; i++)
        cr_assert_float_eq(dw[i], 2 * dw1[i], 1e-5);
    free(x), free(w), free(b), free(dout), free(out), free(dx), free(dw), free(db), free(dw1);
    free(scratch), free(ref), free(c.x), free(c.w), free(c.b);
}

Test(conv2d, s1p1_matches_finite_differences)
{
    conv_fd((struct ft_conv2d_shape){2, 2, 5, 4, 3, 3, 3, 1, 1}, 1, 60);
}

Test(conv2d, s2p1_nonsquare_kernel_matches_finite_differences)
{
    conv_fd((struct ft_conv2d_shape){2, 3, 6, 5, 2, 2, 3, 2, 1}, 1, 61);
}

Test(conv2d, s3p0_no_bias_matches_finite_differences)
{
    conv_fd((struct ft_conv2d_shape){1, 2, 7, 8, 3, 3, 2, 3, 0}, 0, 62);
}

Test(conv2d, output_sizes_floor)
{
    struct ft_conv2d_shape s = {1, 1, 28, 28, 1, 3, 3, 1, 1};
    cr_assert_eq(ft_conv2d_out_h(&s), 28);
    s.stride = 2;
    s.pad = 0;
    cr_assert_eq(ft_conv2d_out_h(&s), 13);
    cr_assert_eq(ft_conv2d_scratch_size(&s), (size_t)9 * 169 + 169);
}

/* The bias gradient is each channel's sequential double sum over (n, p), n-major, rounded to
 * float and added to db: exactly that, for 13 channels (a group of eight, then five one by
 * one), with values over 40 binary orders of magnitude and a cancelling 2^60 pair, so any
 * other order shows. */
Test(conv2d, bias_gradient_is_the_sequential_sum)
{
    struct ft_conv2d_shape s = {3, 2, 5, 5, 13, 3, 3, 1, 1};
    int P = ft_conv2d_out_h(&s) * ft_conv2d_out_w(&s);
    size_t nout = (size_t)s.B * s.OC * P, nin = (size_t)s.B * s.C * s.H * s.W;
    size_t nw = (size_t)s.OC * s.C * s.KH * s.KW;
    float *dout = malloc(nout * sizeof *dout), *inp = calloc(nin, sizeof *inp);
    float *w = calloc(nw, sizeof *w), *dw = calloc(nw, sizeof *dw);
    float *scratch = malloc(ft_conv2d_scratch_size(&s) * sizeof *scratch);
    float db[13], want[13];
    unsigned r = 99;
    for (size_t i = 0; i < nout; i++) {
        r = r * 1103515245u + 12345u;
        dout[i] = ldexpf((float)((r >> 8) & 0xffff) / 65536.0f - 0.5f, (int)((r >> 24) % 40) - 20);
    }
    for (int oc = 0; oc < s.OC; oc++) { /* 1, 2^60 first, -2^60 last: in order the 1 is lost */
        dout[(size_t)oc * P] = 1.0f;
        dout[(size_t)oc * P + 1] = 0x1p60f;
        dout[((size_t)(s.B - 1) * s.OC + oc) * P + P - 1] = -0x1p60f;
    }
    for (int oc = 0; oc < s.OC; oc++) {
        double sum = 0.0;
        for (int n = 0; n < s.B; n++)
            for (int p = 0; p < P; p++)
                sum += dout[((size_t)n * s.OC + oc) * P + p];
        db[oc] = 0.25f * (float)oc;
        want[oc] = db[oc] + (float)sum;
    }
    ft_conv2d_backward(NULL, dw, db, scratch, dout, inp, w, &s);
    cr_assert(memcmp(db, want, sizeof db) == 0, "db differs from the sequential sums");
    free(dout);
    free(inp);
    free(w);
    free(dw);
    free(scratch);
}

/* ---- pooling, flatten ---- */

Test(maxpool2d, fixture)
{
    json_t *fx = fx_load("torch/maxpool2d.json");
    size_t n, no, na;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", &no);
    long long *want = fx_ints(fx, "expected", "argmax_flat_hw", &na);
    int B = fx_dim(fx, "inputs", "x", 0), C = fx_dim(fx, "inputs", "x", 1);
    int H = fx_dim(fx, "inputs", "x", 2), W = fx_dim(fx, "inputs", "x", 3);
    int k = param_int(fx, "kernel_size");
    cr_assert_eq(param_int(fx, "stride"), k);
    float *out = zeros(no), *dx = zeros(n);
    int32_t *argmax = malloc(no * sizeof *argmax);
    ft_maxpool2d_forward(out, argmax, x, B, C, H, W, k);
    ft_maxpool2d_backward(dx, dout, argmax, B, C, H, W, k);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    cr_assert_eq(na, no);
    for (size_t i = 0; i < na; i++)
        cr_assert_eq(argmax[i], want[i], "argmax[%zu] %d != %lld", i, argmax[i], want[i]);
    free(x), free(dout), free(want), free(out), free(dx), free(argmax);
    json_decref(fx);
}

Test(avgpool2d, fixture)
{
    json_t *fx = fx_load("torch/avgpool2d.json");
    size_t n, no;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", &no);
    int B = fx_dim(fx, "inputs", "x", 0), C = fx_dim(fx, "inputs", "x", 1);
    int H = fx_dim(fx, "inputs", "x", 2), W = fx_dim(fx, "inputs", "x", 3);
    int k = param_int(fx, "kernel_size");
    float *out = zeros(no), *dx = zeros(n);
    ft_avgpool2d_forward(out, x, B, C, H, W, k);
    ft_avgpool2d_backward(dx, dout, B, C, H, W, k);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    free(x), free(dout), free(out), free(dx);
    json_decref(fx);
}

Test(adaptive_avg_pool2d, fixture)
{
    json_t *fx = fx_load("torch/adaptive_avg_pool2d.json");
    size_t n, no;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", &no);
    int B = fx_dim(fx, "inputs", "x", 0), C = fx_dim(fx, "inputs", "x", 1);
    int S = fx_dim(fx, "inputs", "x", 2) * fx_dim(fx, "inputs", "x", 3);
    float *out = zeros(no), *dx = zeros(n);
    ft_global_avgpool_forward(out, x, B, C, S);
    ft_global_avgpool_backward(dx, dout, B, C, S);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    free(x), free(dout), free(out), free(dx);
    json_decref(fx);
}

Test(flatten, fixture)
{
    json_t *fx = fx_load("torch/flatten.json");
    size_t n, no;
    float *x = fx_floats(fx, "inputs", "x", &n), *dout = fx_floats(fx, "inputs", "dout", &no);
    cr_assert_eq(n, no);
    cr_assert_eq(fx_dim(fx, "expected", "out", 1), 12);
    float *out = zeros(n), *dx = zeros(n);
    ft_flatten_forward(out, x, n);
    ft_flatten_backward(dx, dout, n);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    ft_flatten_forward(x, x, n); /* in place: a no-op */
    assert_expected(fx, "out", x);
    free(x), free(dout), free(out), free(dx);
    json_decref(fx);
}

enum pool { P_MAX, P_AVG, P_GLOBAL };

struct pool_ctx {
    enum pool kind;
    double *x;
    const float *dout;
    int B, C, H, W, k;
};

static double pool_objective(void *p)
{
    struct pool_ctx *c = p;
    size_t no = c->kind == P_GLOBAL ? (size_t)c->B * c->C
                                    : (size_t)c->B * c->C * (c->H / c->k) * (c->W / c->k);
    double *out = malloc(no * sizeof *out);
    if (c->kind == P_GLOBAL)
        ref_global_avgpool(out, c->x, c->B, c->C, c->H * c->W);
    else
        ref_pool(out, c->x, c->B, c->C, c->H, c->W, c->k, c->kind == P_MAX);
    double s = ref_dot(out, c->dout, no);
    free(out);
    return s;
}

static void pool_fd(enum pool kind, int B, int C, int H, int W, int k)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, 70 + kind);
    size_t n = (size_t)B * C * H * W;
    size_t no = kind == P_GLOBAL ? (size_t)B * C : (size_t)B * C * (H / k) * (W / k);
    float *x = random_floats(&rng, n, 1.0), *dout = random_floats(&rng, no, 1.0);
    float *out = zeros(no), *dx = zeros(n);
    int32_t *argmax = malloc(no * sizeof *argmax);
    if (kind == P_MAX) {
        ft_maxpool2d_forward(out, argmax, x, B, C, H, W, k);
        ft_maxpool2d_backward(dx, dout, argmax, B, C, H, W, k);
    } else if (kind == P_AVG) {
        ft_avgpool2d_forward(out, x, B, C, H, W, k);
        ft_avgpool2d_backward(dx, dout, B, C, H, W, k);
    } else {
        ft_global_avgpool_forward(out, x, B, C, H * W);
        ft_global_avgpool_backward(dx, dout, B, C, H * W);
    }
    struct pool_ctx c = {kind, fx_to_double(x, n), dout, B, C, H, W, k};
    fx_check_fd("dx", pool_objective, &c, c.x, n, dx);
    free(x), free(dout), free(out), free(dx), free(argmax), free(c.x);
}

Test(maxpool2d, backward_matches_finite_differences)
{
    pool_fd(P_MAX, 2, 2, 5, 7, 2);
}

Test(maxpool2d, kernel3_matches_finite_differences)
{
    pool_fd(P_MAX, 1, 2, 7, 6, 3);
}

Test(avgpool2d, backward_matches_finite_differences)
{
    pool_fd(P_AVG, 2, 2, 5, 7, 2);
}

Test(adaptive_avg_pool2d, backward_matches_finite_differences)
{
    pool_fd(P_GLOBAL, 2, 3, 3, 4, 1);
}

/* ---- SIMD paths against the scalar ones, bitwise ---- */

/* The kernels with an AVX/AVX2 path (chosen at run time) must give the bits of their scalar
 * path (ft_nn_force_scalar) for every input: sizes that leave tails (not multiples of 4, 8 or 16;
 * N = 1), ties, signed zeros, infinities and NaN of both signs. On a machine without AVX2 both
 * runs take the scalar path and the tests pass trivially. */

static void assert_same_bits(const void *simd, const void *scalar, size_t n, const char *what)
{
    const uint32_t *a = simd, *b = scalar;
    size_t i = 0;
    while (i < n && a[i] == b[i])
        i++;
    cr_assert(memcmp(simd, scalar, n * sizeof *a) == 0,
              "%s: SIMD and scalar paths differ first at word %zu of %zu (0x%08x vs 0x%08x)", what,
              i, n, i < n ? a[i] : 0, i < n ? b[i] : 0);
}

/* n values in [-1, 1] in steps of 0.5 (many ties); when special, about one in six is one of
 * -0, +inf, -inf, NaN, -NaN instead. */
static float *tie_floats(struct ft_rng *rng, size_t n, int special)
{
    static const float odd[] = {-0.0f, INFINITY, -INFINITY, NAN, -NAN};
    float *v = malloc((n ? n : 1) * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ft_rng_below(rng, 30);
        v[i] = special && r < 5 ? odd[r] : (float)((int)ft_rng_below(rng, 5) - 2) * 0.5f;
    }
    return v;
}

/* Batch norm forward (with running statistics rm, rv (C)) and backward in one mode on the
 * current path: all outputs and parameter gradients in one new buffer (free), 2 n + 6 C floats. */
static float *bn_all_outputs(const float *x, const float *dout, const float *w, const float *b,
                             const float *rm0, const float *rv0, int N, int C, int S, int training)
{
    size_t n = (size_t)N * C * S;
    float *all = zeros(2 * n + 6 * (size_t)C);
    float *out = all, *dx = all + n, *mean = dx + n, *rstd = mean + C, *rm = rstd + C;
    float *rv = rm + C, *dw = rv + C, *db = dw + C;
    memcpy(rm, rm0, (size_t)C * sizeof *rm);
    memcpy(rv, rv0, (size_t)C * sizeof *rv);
    for (int c = 0; c < C; c++)
        dw[c] = db[c] = 0.125f; /* backward accumulates */
    ft_batchnorm_forward(out, mean, rstd, rm, rv, x, w, b, N, C, S, training);
    ft_batchnorm_backward(dx, dw, db, dout, x, mean, rstd, w, N, C, S, training);
    return all;
}

/* One batch norm comparison on x (N, C, S) with a mean far from 0 (the deviations matter) and
 * random dout; big values (BIG = 2^40) in about one in four values of each channel: of both x
 * and dout, all positive, where a deviation x - mean taken in float instead of double would show;
 * or cancelling, BIG, -BIG, BIG, ... in the order (n, i), an even number, so that a channel's
 * sums pass through large partial sums and end small and the order of the adds shows: in x (its
 * sum), or in dout with x pinned to 3 there (the sums of dout and of dout xhat).
 * infs > 0: that many values of x and of dout become inf or -inf, and so do some weights and
 * running statistics (every NaN that results is the default one); nan: one value of x becomes
 * NaN. Not both: where two different NaNs meet, the instruction's operand order decides which
 * comes out, and for the scalar code that is the compiler's choice (-O1 and -O2 differ). */
enum bn_big { BIG_NONE, BIG_SAME_SIGN, BIG_CANCEL_X, BIG_CANCEL_DOUT };

struct bn_case {
    int N, C, S;
    enum bn_big big;
    int infs, nan;
};

#define BIG 0x1p40f

/* Sets the big values of v (N, C, S) as above; pin (NULL = none) = 3 where v is set. */
static void add_big(struct ft_rng *rng, float *v, float *pin, const struct bn_case *k, int cancel)
{
    for (int c = 0; c < k->C; c++) {
        size_t open = SIZE_MAX;
        float was = 0.0f;
        for (int n = 0; n < k->N; n++)
            for (int i = 0; i < k->S; i++) {
                size_t j = ((size_t)n * k->C + c) * k->S + i;
                if (ft_rng_below(rng, 4) != 0)
                    continue;
                was = v[j];
                v[j] = open == SIZE_MAX ? BIG : -BIG;
                open = cancel && open == SIZE_MAX ? j : SIZE_MAX;
                if (pin)
                    pin[j] = 3.0f;
            }
        if (open != SIZE_MAX) /* unpaired: undone (its pin stays, harmless) */
            v[open] = was;
    }
}

static float signed_inf(struct ft_rng *rng)
{
    return ft_rng_below(rng, 2) ? INFINITY : -INFINITY;
}

/* Both modes, both paths, bitwise. */
static void batchnorm_simd_case(struct ft_rng *rng, const struct bn_case *k)
{
    int N = k->N, C = k->C, S = k->S;
    size_t n = (size_t)N * C * S, len = 2 * n + 6 * (size_t)C;
    float *x = random_floats(rng, n, 2.0), *dout = random_floats(rng, n, 1.0);
    float *w = random_floats(rng, C, 1.5), *b = random_floats(rng, C, 1.0);
    float *rm = random_floats(rng, C, 0.5), *rv = random_floats(rng, C, 0.5);
    for (size_t i = 0; i < n; i++)
        x[i] += 3.0f;
    for (int c = 0; c < C; c++)
        rv[c] += 1.0f;
    if (k->big == BIG_SAME_SIGN || k->big == BIG_CANCEL_X)
        add_big(rng, x, NULL, k, k->big == BIG_CANCEL_X);
    if (k->big == BIG_SAME_SIGN || k->big == BIG_CANCEL_DOUT)
        add_big(rng, dout, k->big == BIG_CANCEL_DOUT ? x : NULL, k, k->big == BIG_CANCEL_DOUT);
    for (int i = 0; i < k->infs; i++) {
        x[ft_rng_below(rng, n)] = signed_inf(rng);
        dout[ft_rng_below(rng, n)] = signed_inf(rng);
        float *param[] = {w, b, rm, rv};
        if (ft_rng_below(rng, 3) == 0)
            param[ft_rng_below(rng, 4)][ft_rng_below(rng, C)] = signed_inf(rng);
    }
    if (k->nan)
        x[ft_rng_below(rng, n)] = NAN;
    for (int training = 0; training < 2; training++) {
        ft_nn_force_scalar(1);
        float *want = bn_all_outputs(x, dout, w, b, rm, rv, N, C, S, training);
        ft_nn_force_scalar(0);
        float *got = bn_all_outputs(x, dout, w, b, rm, rv, N, C, S, training);
        char what[96];
        snprintf(what, sizeof what, "batchnorm N=%d C=%d S=%d big=%d infs=%d nan=%d training=%d", N,
                 C, S, (int)k->big, k->infs, k->nan, training);
        assert_same_bits(got, want, len, what);
        free(want), free(got);
    }
    free(x), free(dout), free(w), free(b), free(rm), free(rv);
}

Test(batchnorm, simd_matches_scalar_bitwise)
{
    static const int shapes[][3] = {{1, 1, 1},  {1, 3, 5},  {4, 2, 1},  {5, 3, 7},
                                    {8, 2, 13}, {9, 3, 37}, {6, 2, 49}, {7, 2, 100}};
    struct ft_rng rng;
    ft_rng_seed(&rng, 91);
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
        struct bn_case k = {shapes[t][0], shapes[t][1], shapes[t][2], BIG_NONE, 0, 0};
        batchnorm_simd_case(&rng, &k);
    }
}

Test(batchnorm, simd_matches_scalar_bitwise_with_large_values)
{
    static const int shapes[][3] = {{5, 3, 7}, {9, 3, 37}, {6, 2, 49}, {7, 2, 100}};
    struct ft_rng rng;
    ft_rng_seed(&rng, 95);
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++)
        for (int big = BIG_SAME_SIGN; big <= BIG_CANCEL_DOUT; big++) {
            struct bn_case k = {shapes[t][0], shapes[t][1], shapes[t][2], big, 0, 0};
            batchnorm_simd_case(&rng, &k);
        }
}

/* One NaN in x, or 1 to 4 infinities in x, in dout and among the parameters; 200 draws per
 * shape (the small shapes put them in the same sums often). */
Test(batchnorm, simd_matches_scalar_bitwise_with_nan_or_inf)
{
    static const int shapes[][3] = {{4, 1, 8},  {5, 1, 6}, {8, 1, 4},  {5, 3, 13},
                                    {9, 2, 37}, {4, 2, 1}, {8, 2, 49}, {3, 2, 100}};
    struct ft_rng rng;
    ft_rng_seed(&rng, 92);
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++)
        for (int draw = 0; draw < 200; draw++) {
            int nan = draw % 2, infs = nan ? 0 : 1 + draw / 2 % 4;
            struct bn_case k = {shapes[t][0], shapes[t][1], shapes[t][2], BIG_NONE, infs, nan};
            batchnorm_simd_case(&rng, &k);
        }
}

Test(maxpool2d, simd_matches_scalar_bitwise)
{
    static const int shapes[][5] = {{1, 1, 2, 2, 2},  {2, 3, 5, 7, 2},   {1, 2, 9, 33, 2},
                                    {1, 1, 4, 35, 2}, {2, 2, 28, 28, 2}, {3, 2, 14, 14, 2},
                                    {1, 1, 1, 5, 2},  {2, 3, 7, 7, 3},   {1, 2, 10, 11, 3}};
    struct ft_rng rng;
    ft_rng_seed(&rng, 93);
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++) {
        int B = shapes[t][0], C = shapes[t][1], H = shapes[t][2], W = shapes[t][3];
        int k = shapes[t][4];
        size_t n = (size_t)B * C * H * W, no = (size_t)B * C * (H / k) * (W / k);
        for (int special = 0; special < 2; special++) {
            float *x = tie_floats(&rng, n, special), *out[2] = {zeros(no), zeros(no)};
            int32_t *arg[2] = {calloc(no + 1, sizeof(int32_t)), calloc(no + 1, sizeof(int32_t))};
            for (int scalar = 0; scalar < 2; scalar++) {
                ft_nn_force_scalar(scalar);
                ft_maxpool2d_forward(out[scalar], arg[scalar], x, B, C, H, W, k);
            }
            char what[64];
            snprintf(what, sizeof what, "maxpool (%d, %d, %d, %d) k=%d", B, C, H, W, k);
            assert_same_bits(out[0], out[1], no, what);
            assert_same_bits(arg[0], arg[1], no, what);
            free(x), free(out[0]), free(out[1]), free(arg[0]), free(arg[1]);
        }
    }
}

/* ---- every path of the mlp's per-step kernels against the scalar one, bitwise ----
 * sum_squares, l2_normalize, relu and the linear bias gradient have AVX-512F paths, and the
 * first two an AVX one under them (machines without AVX-512): each is run on path 0 (scalar),
 * 1 (AVX/AVX2: ft_nn_force_no_avx512) and 2 (the widest), and paths 1 and 2 must give the bits
 * of path 0. Shapes leave tails of every kind: rows not a multiple of 16 or 8 and fewer than 8,
 * columns not a multiple of 16 or 8 and fewer than 8. */

enum { PATH_SCALAR, PATH_AVX, PATH_WIDEST, PATHS };

static void set_path(int path)
{
    ft_nn_force_scalar(path == PATH_SCALAR);
    ft_nn_force_no_avx512(path == PATH_AVX);
}

/* What wide_floats mixes in: nothing; -0, infinities of both signs (the only NaN that can
 * result is the default one) and huge and subnormal values; or -0, subnormals, NaN and values
 * large but not so large that an infinity can result (x / 1e-12, the norm of a row with NaN):
 * one NaN kind, as where two different NaNs meet, the instruction's operand order decides which
 * comes out, and for the scalar code that is the compiler's choice. */
enum special { SP_NONE, SP_INF, SP_NAN };

/* n floats r 2^e, r uniform in [-1, 1), e in [-20, 20] (sums of them round differently in any
 * other order); about one in eight is a special value instead. */
static float *wide_floats(struct ft_rng *rng, size_t n, enum special sp)
{
    static const float inf_set[] = {-0.0f, INFINITY, -INFINITY, 1e30f, -3e38f, 1e-40f};
    static const float nan_set[] = {-0.0f, NAN, 1e20f, -1e25f, 1e-40f, 0.0f};
    float *v = malloc((n ? n : 1) * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = ldexpf((float)(2.0 * ft_rng_uniform(rng) - 1.0), (int)ft_rng_below(rng, 41) - 20);
        if (sp != SP_NONE && ft_rng_below(rng, 8) == 0)
            v[i] = (sp == SP_INF ? inf_set : nan_set)[ft_rng_below(rng, 6)];
    }
    return v;
}

static const int rows_cases[] = {1, 3, 4, 7, 8, 9, 15, 16, 17, 23, 24, 31, 40, 130};
static const int cols_cases[] = {1, 2, 7, 8, 9, 13, 16, 24, 31, 64, 128, 131};
#define NCASES(a) (sizeof a / sizeof *a)

Test(sum_squares, simd_matches_scalar_bitwise)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, 94);
    for (size_t t = 0; t < NCASES(rows_cases) * NCASES(cols_cases); t++)
        for (int sp = SP_NONE; sp <= SP_NAN; sp++) {
            int B = rows_cases[t / NCASES(cols_cases)], D = cols_cases[t % NCASES(cols_cases)];
            float *x = wide_floats(&rng, (size_t)B * D, sp);
            double ss[PATHS][130];
            for (int path = 0; path < PATHS; path++) {
                set_path(path);
                ft_sum_squares(ss[path], x, B, D);
            }
            set_path(PATH_WIDEST);
            char what[64];
            snprintf(what, sizeof what, "sum_squares B=%d D=%d special=%d", B, D, sp);
            assert_same_bits(ss[PATH_AVX], ss[PATH_SCALAR], 2 * (size_t)B, what);
            assert_same_bits(ss[PATH_WIDEST], ss[PATH_SCALAR], 2 * (size_t)B, what);
            free(x);
        }
}

/* l2_normalize forward and backward (into dinp, and in place) on one path: out (B, D), norms
 * (B), dinp (B, D), in-place dinp (B, D) in one new buffer (free). The backward takes out0 and
 * norms0 (the scalar path's forward), so that each kernel is compared on the same inputs. */
static float *l2_all_outputs(const float *x, const float *dout, const float *out0,
                             const float *norms0, int B, int D)
{
    size_t n = (size_t)B * D;
    float *all = zeros(3 * n + (size_t)B);
    float *out = all, *norms = all + n, *dx = norms + B, *inplace = dx + n;
    ft_l2_normalize_forward(out, norms, x, B, D);
    ft_l2_normalize_backward(dx, dout, out0 ? out0 : out, norms0 ? norms0 : norms, B, D);
    memcpy(inplace, dout, n * sizeof *inplace);
    ft_l2_normalize_backward(inplace, inplace, out0 ? out0 : out, norms0 ? norms0 : norms, B, D);
    return all;
}

/* Each row of dout has 2^60 and -2^60 where the row of x has two equal values: their products
 * with out cancel exactly and the terms between are absorbed, so that the order of the
 * backward's dot <out_i, dout_i> shows even after its rounding to float. */
Test(l2_normalize, simd_matches_scalar_bitwise)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, 96);
    for (size_t t = 0; t < NCASES(rows_cases) * NCASES(cols_cases); t++)
        for (int sp = SP_NONE; sp <= SP_NAN; sp++) {
            int B = rows_cases[t / NCASES(cols_cases)], D = cols_cases[t % NCASES(cols_cases)];
            size_t n = (size_t)B * D;
            float *x = wide_floats(&rng, n, sp), *dout = wide_floats(&rng, n, sp);
            for (int i = 0; D >= 2 && i < B; i++) { /* an exactly cancelling pair, see above */
                size_t k1 = ft_rng_below(&rng, (uint64_t)D - 1);
                size_t k2 = k1 + 1 + ft_rng_below(&rng, (uint64_t)D - 1 - k1);
                x[(size_t)i * D + k2] = x[(size_t)i * D + k1];
                dout[(size_t)i * D + k1] = 0x1p60f;
                dout[(size_t)i * D + k2] = -0x1p60f;
            }
            if (B > 2) /* a zero row: its norm is the eps */
                memset(x + (size_t)(B / 2) * D, 0, (size_t)D * sizeof *x);
            set_path(PATH_SCALAR);
            float *want = l2_all_outputs(x, dout, NULL, NULL, B, D);
            for (int path = PATH_AVX; path < PATHS; path++) {
                set_path(path);
                float *got = l2_all_outputs(x, dout, want, want + n, B, D);
                char what[80];
                snprintf(what, sizeof what, "l2_normalize B=%d D=%d special=%d path=%d", B, D, sp,
                         path);
                assert_same_bits(got, want, 3 * n + (size_t)B, what);
                free(got);
            }
            set_path(PATH_WIDEST);
            free(x), free(dout), free(want);
        }
}

/* relu forward and backward (into new buffers, and in place) on one path: 4 n floats in one new
 * buffer (free). */
static float *relu_all_outputs(const float *x, const float *dout, size_t n)
{
    float *all = zeros(4 * n);
    ft_relu_forward(all, x, n);
    memcpy(all + n, x, n * sizeof *all);
    ft_relu_forward(all + n, all + n, n);
    ft_relu_backward(all + 2 * n, dout, x, n);
    memcpy(all + 3 * n, dout, n * sizeof *all);
    ft_relu_backward(all + 3 * n, all + 3 * n, x, n);
    return all;
}

/* Ties at 0 of both signs, infinities, NaNs of both signs and one with a payload (kept as they
 * are: relu moves bits, it does no arithmetic), subnormals. */
Test(relu, simd_matches_scalar_bitwise)
{
    static const size_t sizes[] = {1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 100, 1000, 32771};
    struct ft_rng rng;
    ft_rng_seed(&rng, 97);
    for (size_t t = 0; t < NCASES(sizes); t++)
        for (int special = 0; special < 2; special++) {
            size_t n = sizes[t];
            float *x = tie_floats(&rng, n, special), *dout = tie_floats(&rng, n, special);
            for (size_t i = 0; special && i < n; i += 7) {
                uint32_t payload_nan = 0xffa00001u;
                memcpy(&x[i], &payload_nan, sizeof x[i]);
                x[(i * 3 + 1) % n] = (i % 2 ? -1.0f : 1.0f) * 1e-40f;
            }
            set_path(PATH_SCALAR);
            float *want = relu_all_outputs(x, dout, n);
            for (int path = PATH_AVX; path < PATHS; path++) {
                set_path(path);
                float *got = relu_all_outputs(x, dout, n);
                char what[64];
                snprintf(what, sizeof what, "relu n=%zu special=%d path=%d", n, special, path);
                assert_same_bits(got, want, 4 * n, what);
                free(got);
            }
            set_path(PATH_WIDEST);
            free(x), free(dout), free(want);
        }
}

/* The bias gradient db (OC) += column sums of dout (B, OC), each summed row by row in float:
 * OC leaves tails after blocks of 256, 128, 32 and 16 columns. */
Test(linear, bias_gradient_simd_matches_scalar_bitwise)
{
    static const int rows[] = {1, 5, 128};
    static const int cols[] = {1, 7, 16, 17, 33, 100, 128, 130, 256, 300, 431, 600};
    struct ft_rng rng;
    ft_rng_seed(&rng, 98);
    for (size_t t = 0; t < NCASES(rows) * NCASES(cols); t++)
        for (int sp = SP_NONE; sp <= SP_NAN; sp++) {
            int B = rows[t / NCASES(cols)], OC = cols[t % NCASES(cols)], C = 3;
            float *dout = wide_floats(&rng, (size_t)B * OC, sp);
            float *inp = random_floats(&rng, (size_t)B * C, 1.0);
            float *w = random_floats(&rng, (size_t)OC * C, 1.0), *dw = zeros((size_t)OC * C);
            float *db[PATHS];
            for (int path = 0; path < PATHS; path++) {
                set_path(path);
                db[path] = zeros((size_t)OC);
                for (int o = 0; o < OC; o++)
                    db[path][o] = 0.25f * (float)o; /* backward accumulates */
                ft_linear_backward(NULL, dw, db[path], dout, inp, w, B, C, OC);
            }
            set_path(PATH_WIDEST);
            char what[64];
            snprintf(what, sizeof what, "linear db B=%d OC=%d special=%d", B, OC, sp);
            assert_same_bits(db[PATH_AVX], db[PATH_SCALAR], (size_t)OC, what);
            assert_same_bits(db[PATH_WIDEST], db[PATH_SCALAR], (size_t)OC, what);
            for (int path = 0; path < PATHS; path++)
                free(db[path]);
            free(dout), free(inp), free(w), free(dw);
        }
}

/* test_nn.c — the linear, relu and l2_normalize kernels (and the mlp_encoder kernel chain)
 * against the PyTorch fixtures and central finite differences in double on independent double
 * reference implementations. The other kernels, and the SIMD paths of these bitwise against
 * their scalar ones: test_layers.c; the models: test_model.c. */
#include "nn.h"
#include "rng.h"
#include "support/fixture.h"

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

static float *random_floats(struct ft_rng *rng, size_t n, double scale)
{
    float *v = malloc(n * sizeof *v);
    cr_assert_not_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((2.0 * ft_rng_uniform(rng) - 1.0) * scale);
    return v;
}

/* ---- double reference implementations ---- */

static void ref_linear(double *out, const double *x, const double *w, const double *b, int B, int C,
                       int OC)
{
    for (int i = 0; i < B; i++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0;
            for (int k = 0; k < C; k++)
                s += x[i * C + k] * w[o * C + k];
            out[i * OC + o] = s;
        }
}

static void ref_l2_normalize(double *out, const double *x, int B, int D)
{
    for (int i = 0; i < B; i++) {
        double ss = 0.0;
        for (int k = 0; k < D; k++)
            ss += x[i * D + k] * x[i * D + k];
        double n = fmax(sqrt(ss), 1e-12);
        for (int k = 0; k < D; k++)
            out[i * D + k] = x[i * D + k] / n;
    }
}

static double dot_d(const double *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---- fixtures ---- */

static void linear_fixture(const char *file, int has_bias)
{
    json_t *fx = fx_load(file);
    float *x = fx_floats(fx, "inputs", "x", NULL);
    float *w = fx_floats(fx, "inputs", "weight", NULL);
    float *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *b = has_bias ? fx_floats(fx, "inputs", "bias", NULL) : NULL;
    int B = fx_dim(fx, "inputs", "x", 0), C = fx_dim(fx, "inputs", "x", 1);
    int OC = fx_dim(fx, "inputs", "weight", 0);
    float *out = calloc((size_t)B * OC, sizeof *out), *dx = calloc((size_t)B * C, sizeof *dx);
    float *dw = calloc((size_t)OC * C, sizeof *dw), *db = calloc((size_t)OC, sizeof *db);
    ft_linear_forward(out, x, w, b, B, C, OC);
    ft_linear_backward(dx, dw, has_bias ? db : NULL, dout, x, w, B, C, OC);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    assert_expected(fx, "dweight", dw);
    if (has_bias)
        assert_expected(fx, "dbias", db);
    free(x), free(w), free(dout), free(b), free(out), free(dx), free(dw), free(db);
    json_decref(fx);
}

Test(linear, fixture_with_bias)
{
    linear_fixture("torch/linear.json", 1);
}

Test(linear, fixture_without_bias)
{
    linear_fixture("torch/linear_nobias.json", 0);
}

Test(linear, backward_accumulates_parameter_grads)
{
    float x[2 * 3] = {1, 2, 3, -1, 0.5f, 2}, w[2 * 3] = {0.1f, 0.2f, 0.3f, -0.4f, 0.5f, 0.6f};
    float dout[2 * 2] = {1, -2, 0.5f, 3};
    float dw1[6] = {0}, db1[2] = {0}, dw2[6] = {0}, db2[2] = {0}, dx[6];
    ft_linear_backward(dx, dw1, db1, dout, x, w, 2, 3, 2);
    ft_linear_backward(NULL, dw2, db2, dout, x, w, 2, 3, 2);
    ft_linear_backward(NULL, dw2, db2, dout, x, w, 2, 3, 2);
    for (int i = 0; i < 6; i++)
        cr_assert_float_eq(dw2[i], 2 * dw1[i], 1e-6);
    for (int i = 0; i < 2; i++)
        cr_assert_float_eq(db2[i], 2 * db1[i], 1e-6);
}

Test(relu, fixture)
{
    json_t *fx = fx_load("torch/relu.json");
    size_t n;
    float *x = fx_floats(fx, "inputs", "x", &n);
    float *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *out = malloc(n * sizeof *out), *dx = malloc(n * sizeof *dx);
    ft_relu_forward(out, x, n);
    ft_relu_backward(dx, dout, x, n);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    ft_relu_forward(x, x, n); /* in place */
    assert_expected(fx, "out", x);
    free(x), free(dout), free(out), free(dx);
    json_decref(fx);
}

Test(l2_normalize, fixture)
{
    json_t *fx = fx_load("torch/l2_normalize.json");
    size_t n;
    float *x = fx_floats(fx, "inputs", "x", &n);
    float *dout = fx_floats(fx, "inputs", "dout", NULL);
    int B = fx_dim(fx, "inputs", "x", 0), D = fx_dim(fx, "inputs", "x", 1);
    float *out = malloc(n * sizeof *out), *dx = malloc(n * sizeof *dx);
    float *norms = malloc((size_t)B * sizeof *norms);
    ft_l2_normalize_forward(out, norms, x, B, D);
    ft_l2_normalize_backward(dx, dout, out, norms, B, D);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    free(x), free(dout), free(out), free(dx), free(norms);
    json_decref(fx);
}

Test(l2_normalize, zero_row_stays_finite)
{
    float x[4] = {0, 0, 3, 4}, out[4], norms[2], dout[4] = {1, 1, 1, 1}, dx[4];
    ft_l2_normalize_forward(out, norms, x, 2, 2);
    ft_l2_normalize_backward(dx, dout, out, norms, 2, 2);
    for (int i = 0; i < 4; i++)
        cr_assert(isfinite(out[i]) && isfinite(dx[i]));
    cr_assert_float_eq(out[2], 0.6f, 1e-7);
    cr_assert_float_eq(out[3], 0.8f, 1e-7);
}

Test(mlp_encoder, kernel_chain_matches_fixture)
{
    json_t *fx = fx_load("torch/mlp_encoder.json");
    float *x = fx_floats(fx, "inputs", "x", NULL), *dout = fx_floats(fx, "inputs", "dout", NULL);
    float *w1 = fx_floats(fx, "inputs", "w1", NULL), *b1 = fx_floats(fx, "inputs", "b1", NULL);
    float *w2 = fx_floats(fx, "inputs", "w2", NULL), *b2 = fx_floats(fx, "inputs", "b2", NULL);
    float h1_pre[8 * 16], h1[8 * 16], z[8 * 6], out[8 * 6], norms[8];
    float dz[8 * 6], dh1[8 * 16], dx[8 * 12];
    float dw1[16 * 12] = {0}, db1[16] = {0}, dw2[6 * 16] = {0}, db2[6] = {0};
    ft_linear_forward(h1_pre, x, w1, b1, 8, 12, 16);
    ft_relu_forward(h1, h1_pre, 8 * 16);
    ft_linear_forward(z, h1, w2, b2, 8, 16, 6);
    ft_l2_normalize_forward(out, norms, z, 8, 6);
    ft_l2_normalize_backward(dz, dout, out, norms, 8, 6);
    ft_linear_backward(dh1, dw2, db2, dz, h1, w2, 8, 16, 6);
    ft_relu_backward(dh1, dh1, h1_pre, 8 * 16);
    ft_linear_backward(dx, dw1, db1, dh1, x, w1, 8, 12, 16);
    assert_expected(fx, "h1_pre", h1_pre);
    assert_expected(fx, "h1", h1);
    assert_expected(fx, "z", z);
    assert_expected(fx, "out", out);
    assert_expected(fx, "dx", dx);
    assert_expected(fx, "dw1", dw1);
    assert_expected(fx, "db1", db1);
    assert_expected(fx, "dw2", dw2);
    assert_expected(fx, "db2", db2);
    free(x), free(dout), free(w1), free(b1), free(w2), free(b2);
    json_decref(fx);
}

/* ---- finite differences ---- */

struct linear_ctx {
    double *x, *w, *b;
    const float *dout;
    int B, C, OC;
};

static double linear_objective(void *p)
{
    struct linear_ctx *c = p;
    double out[64];
    ref_linear(out, c->x, c->w, c->b, c->B, c->C, c->OC);
    return dot_d(out, c->dout, (size_t)c->B * c->OC);
}

Test(linear, backward_matches_finite_differences)
{
    enum { B = 3, C = 4, OC = 5 };
    struct ft_rng rng;
    ft_rng_seed(&rng, 11);
    float *x = random_floats(&rng, B * C, 1.0), *w = random_floats(&rng, OC * C, 1.0);
    float *b = random_floats(&rng, OC, 1.0), *dout = random_floats(&rng, B * OC, 1.0);
    float out[B * OC], dx[B * C], dw[OC * C] = {0}, db[OC] = {0};
    ft_linear_forward(out, x, w, b, B, C, OC);
    ft_linear_backward(dx, dw, db, dout, x, w, B, C, OC);
    struct linear_ctx c = {
        fx_to_double(x, B * C), fx_to_double(w, OC * C), fx_to_double(b, OC), dout, B, C, OC};
    double ref[B * OC];
    ref_linear(ref, c.x, c.w, c.b, B, C, OC);
    fx_assert_close("out", out, ref, B * OC, 1e-6, 1e-5);
    fx_check_fd("dx", linear_objective, &c, c.x, B * C, dx);
    fx_check_fd("dw", linear_objective, &c, c.w, OC * C, dw);
    fx_check_fd("db", linear_objective, &c, c.b, OC, db);
    free(x), free(w), free(b), free(dout), free(c.x), free(c.w), free(c.b);
}

struct relu_ctx {
    double *x;
    const float *dout;
    size_t n;
};

static double relu_objective(void *p)
{
    struct relu_ctx *c = p;
    double s = 0.0;
    for (size_t i = 0; i < c->n; i++)
        s += (c->x[i] > 0.0 ? c->x[i] : 0.0) * c->dout[i];
    return s;
}

Test(relu, backward_matches_finite_differences)
{
    enum { N = 24 };
    struct ft_rng rng;
    ft_rng_seed(&rng, 12);
    float *x = random_floats(&rng, N, 1.0), *dout = random_floats(&rng, N, 1.0), dx[N];
    for (int i = 0; i < N; i++)
        if (fabsf(x[i]) < 1e-3f)
            x[i] = 0.5f; /* keep away from the kink */
    ft_relu_backward(dx, dout, x, N);
    struct relu_ctx c = {fx_to_double(x, N), dout, N};
    fx_check_fd("dx", relu_objective, &c, c.x, N, dx);
    free(x), free(dout), free(c.x);
}

struct l2_ctx {
    double *x;
    const float *dout;
    int B, D;
};

static double l2_objective(void *p)
{
    struct l2_ctx *c = p;
    double out[64];
    ref_l2_normalize(out, c->x, c->B, c->D);
    return dot_d(out, c->dout, (size_t)c->B * c->D);
}

Test(l2_normalize, backward_matches_finite_differences)
{
    enum { B = 3, D = 5 };
    struct ft_rng rng;
    ft_rng_seed(&rng, 13);
    float *x = random_floats(&rng, B * D, 2.0), *dout = random_floats(&rng, B * D, 1.0);
    float out[B * D], norms[B], dx[B * D];
    ft_l2_normalize_forward(out, norms, x, B, D);
    ft_l2_normalize_backward(dx, dout, out, norms, B, D);
    struct l2_ctx c = {fx_to_double(x, B * D), dout, B, D};
    double ref[B * D];
    ref_l2_normalize(ref, c.x, B, D);
    fx_assert_close("out", out, ref, B * D, 1e-6, 1e-5);
    fx_check_fd("dx", l2_objective, &c, c.x, B * D, dx);
    free(x), free(dout), free(c.x);
}

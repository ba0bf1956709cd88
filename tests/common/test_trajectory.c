/* test_trajectory.c — the 10-step training trajectory of tests/fixtures/torch/
 * train_trajectory.json, end to end through the same pieces the trainer uses: the mlp model
 * (Linear(12,16)-ReLU-Linear(16,6)-L2Normalize), TripletMarginLoss (margin 0.2, cosine, every
 * triplet, AvgNonZero) and Adam (lr 1e-2): step-0 gradients, the parameters after step 1, the
 * ten losses and non-zero counts, and the final parameters. */
#include "loss.h"
#include "model.h"
#include "optim.h"
#include "support/fixture.h"

#include <criterion/criterion.h>
#include <string.h>

static const char *const PARAMS[4] = {"linear_0.weight", "linear_0.bias", "linear_1.weight",
                                      "linear_1.bias"};
static const char *const FIX[4] = {"w1", "b1", "w2", "b2"};

/* Index of tensor name in m. */
static int tensor(const ft_model *m, const char *name)
{
    for (int i = 0; i < ft_model_num_tensors(m); i++) {
        const char *n;
        int ndim, trainable;
        int64_t shape[4];
        float *data;
        ft_model_tensor(m, i, &n, &ndim, shape, &data, &trainable);
        if (strcmp(n, name) == 0)
            return i;
    }
    cr_assert_fail("no tensor %s", name);
    return -1;
}

/* data pointer of tensor name; its gradient (same offset in the gradient buffer) in *grad. */
static float *param(ft_model *m, const char *name, float **grad, size_t *count)
{
    const char *n;
    int ndim, trainable;
    int64_t shape[4];
    float *data;
    ft_model_tensor(m, tensor(m, name), &n, &ndim, shape, &data, &trainable);
    *count = (size_t)shape[0] * (size_t)(ndim > 1 ? shape[1] : 1);
    if (grad)
        *grad = ft_model_grads(m) + (data - ft_model_params(m));
    return data;
}

static void expect_params(json_t *fx, ft_model *m, const char *prefix, int grads)
{
    for (int p = 0; p < 4; p++) {
        char key[64];
        size_t count, n;
        float *g;
        float *v = param(m, PARAMS[p], &g, &count);
        snprintf(key, sizeof key, "%s%s%s", prefix, grads ? "d" : "", FIX[p]);
        double *want = fx_doubles(fx, "expected", key, &n);
        cr_assert_eq(n, count, "%s size", key);
        fx_assert_close_tol(fx, key, grads ? g : v, want, n);
        free(want);
    }
}

Test(trajectory, ten_adam_steps_match_pytorch)
{
    json_t *fx = fx_load("torch/train_trajectory.json");
    struct ft_error err = {0};
    int shape[3] = {1, 1, 12};
    json_t *mc = json_loads("{\"name\": \"mlp\", \"options\": {\"input_size\": 12, "
                            "\"hidden_sizes\": [16, 6], \"activation\": \"relu\", \"l2\": true}}",
                            0, NULL);
    ft_model *m;
    cr_assert_eq(ft_model_new(mc, shape, 1, &m, &err), FT_OK, "%s", err.message);
    json_decref(mc);
    for (int p = 0; p < 4; p++) { /* the fixture's initial weights */
        char key[32];
        size_t count, n;
        float *v = param(m, PARAMS[p], NULL, &count);
        snprintf(key, sizeof key, "%s_init", FIX[p]);
        float *init = fx_floats(fx, "inputs", key, &n);
        cr_assert_eq(n, count);
        memcpy(v, init, n * sizeof *v);
        free(init);
    }
    json_t *lo = json_loads("{\"margin\": 0.2, \"distance\": \"cosine\"}", 0, NULL);
    ft_loss *loss;
    cr_assert_eq(ft_loss_new("TripletMarginLoss", lo, NULL, NULL, 6, 3, 1, &loss, &err), FT_OK,
                 "%s", err.message);
    json_decref(lo);
    struct ft_optim_opts oo;
    ft_optim_opts_default(&oo, FT_OPTIM_ADAM);
    ft_optim *opt;
    cr_assert_eq(ft_optim_new(&oo, ft_model_num_params(m), &opt, &err), FT_OK);

    size_t nx, nl, nb;
    float *X = fx_floats(fx, "inputs", "X", &nx);
    long long *labels = fx_ints(fx, "inputs", "labels", &nl);
    long long *batches = fx_ints(fx, "inputs", "batches", &nb);
    double *losses = fx_doubles(fx, "expected", "losses", NULL);
    long long *nonzero = fx_ints(fx, "expected", "num_nonzero", NULL);
    float xb[12 * 12], emb[12 * 6], demb[12 * 6];
    int32_t yb[12];
    for (int s = 0; s < 10; s++) {
        for (int i = 0; i < 12; i++) {
            long long row = batches[s * 12 + i];
            memcpy(xb + i * 12, X + row * 12, 12 * sizeof(float));
            yb[i] = (int32_t)labels[row];
        }
        float value;
        struct ft_loss_stats st;
        cr_assert_eq(ft_model_forward(m, xb, 12, emb, 1), FT_OK);
        cr_assert_eq(ft_loss_compute(loss, emb, yb, 12, 6, &value, demb, &st), FT_OK);
        fx_assert_close_tol(fx, "losses", &value, losses + s, 1);
        cr_assert_eq(st.num_nonzero, nonzero[s], "step %d non-zero triplets", s);
        ft_model_zero_grad(m);
        ft_model_backward(m, demb, 12);
        if (s == 0)
            expect_params(fx, m, "step0_", 1);
        ft_optim_step(opt, ft_model_params(m), ft_model_grads(m), 1e-2);
        if (s == 0)
            expect_params(fx, m, "after_step1_", 0);
    }
    expect_params(fx, m, "final_", 0);
    free(X);
    free(labels);
    free(batches);
    free(losses);
    free(nonzero);
    ft_optim_free(opt);
    ft_loss_free(loss);
    ft_model_free(m);
    json_decref(fx);
}

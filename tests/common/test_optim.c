/* test_optim.c — SGD (plain, momentum, Nesterov), Adam (with and without L2 weight decay) and
 * AdamW against 5 steps of torch.optim 1.13 (tests/fixtures/torch/optim_*.json), the options
 * going through the run-config path (ft_optim_check -> ft_optim_opts_from_json); resuming from
 * saved state (ft_optim_set_steps); option validation with the exact error params. */
#include "optim.h"
#include "support/fixture.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { N = 8, STEPS = 5 };

static double param_or(json_t *fx, const char *key, double dflt)
{
    json_t *v = json_object_get(json_object_get(fx, "params"), key);
    return v ? json_number_value(v) : dflt;
}

/* The fixture's params minus optimizer/lr, through ft_optim_check and its normalised object. */
static void opts_from_fixture(json_t *fx, struct ft_optim_opts *o)
{
    json_t *params = json_object_get(fx, "params");
    const char *name = json_string_value(json_object_get(params, "optimizer"));
    cr_assert_not_null(name);
    json_t *options = json_deep_copy(params);
    json_object_del(options, "optimizer");
    json_object_del(options, "lr");
    json_t *norm = NULL;
    struct ft_error err;
    cr_assert_eq(ft_optim_check(name, options, &norm, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_optim_opts_from_json(name, norm, o), FT_OK);
    json_decref(norm);
    json_decref(options);
}

/* Row k of expected[name] (STEPS, N) against got. */
static void assert_row(json_t *fx, const char *name, int k, const float *got)
{
    double *want = fx_doubles(fx, "expected", name, NULL);
    char label[64];
    snprintf(label, sizeof label, "%s step %d", name, k + 1);
    fx_assert_close_tol(fx, label, got, want + (size_t)k * N, N);
    free(want);
}

/* Steps [from, to) of the fixture on p with opt, asserting params and state after each. */
static void run_steps(json_t *fx, ft_optim *opt, float *p, int from, int to, const char *m_name,
                      const char *v_name)
{
    double lr = param_or(fx, "lr", 0.0);
    float *g = fx_floats(fx, "inputs", "grads", NULL);
    for (int k = from; k < to; k++) {
        ft_optim_step(opt, p, g + (size_t)k * N, lr);
        cr_assert_eq(ft_optim_steps(opt), k + 1);
        float *m, *v;
        ft_optim_state(opt, &m, &v);
        assert_row(fx, "params", k, p);
        if (m_name)
            assert_row(fx, m_name, k, m);
        if (v_name)
            assert_row(fx, v_name, k, v);
    }
    free(g);
}

static void run_fixture(const char *file, const char *m_name, const char *v_name)
{
    json_t *fx = fx_load(file);
    struct ft_optim_opts o;
    opts_from_fixture(fx, &o);
    float *p = fx_floats(fx, "inputs", "param0", NULL);
    ft_optim *opt = NULL;
    cr_assert_eq(ft_optim_new(&o, N, &opt, NULL), FT_OK);
    run_steps(fx, opt, p, 0, STEPS, m_name, v_name);
    ft_optim_free(opt);
    free(p);
    json_decref(fx);
}

/* 2 steps, then a fresh optimizer given the saved moments and step count does steps 3..5 exactly
 * as the uninterrupted run (bias correction continues from t = 2). */
static void run_resumed(const char *file, const char *m_name, const char *v_name)
{
    json_t *fx = fx_load(file);
    struct ft_optim_opts o;
    opts_from_fixture(fx, &o);
    float *p = fx_floats(fx, "inputs", "param0", NULL);
    ft_optim *a = NULL, *b = NULL;
    cr_assert_eq(ft_optim_new(&o, N, &a, NULL), FT_OK);
    cr_assert_eq(ft_optim_new(&o, N, &b, NULL), FT_OK);
    run_steps(fx, a, p, 0, 2, m_name, v_name);
    float *am, *av, *bm, *bv;
    ft_optim_state(a, &am, &av);
    ft_optim_state(b, &bm, &bv);
    if (am)
        memcpy(bm, am, N * sizeof *bm);
    if (av)
        memcpy(bv, av, N * sizeof *bv);
    ft_optim_set_steps(b, ft_optim_steps(a));
    ft_optim_free(a);
    run_steps(fx, b, p, 2, STEPS, m_name, v_name);
    ft_optim_free(b);
    free(p);
    json_decref(fx);
}

Test(optim, sgd)
{
    run_fixture("torch/optim_sgd.json", NULL, NULL);
}

Test(optim, sgd_momentum)
{
    run_fixture("torch/optim_sgd_momentum.json", "momentum_buffer", NULL);
}

Test(optim, sgd_nesterov)
{
    run_fixture("torch/optim_sgd_nesterov.json", "momentum_buffer", NULL);
}

Test(optim, adam)
{
    run_fixture("torch/optim_adam.json", "exp_avg", "exp_avg_sq");
}

Test(optim, adam_weight_decay)
{
    run_fixture("torch/optim_adam_wd.json", "exp_avg", "exp_avg_sq");
}

Test(optim, adamw)
{
    run_fixture("torch/optim_adamw.json", "exp_avg", "exp_avg_sq");
}

Test(optim, resumed_adamw_continues_bias_correction)
{
    run_resumed("torch/optim_adamw.json", "exp_avg", "exp_avg_sq");
}

Test(optim, resumed_sgd_continues_momentum)
{
    run_resumed("torch/optim_sgd_nesterov.json", "momentum_buffer", NULL);
}

/* A NaN or an infinity anywhere in the gradient (the SIMD body or the scalar tail) makes the
 * step return 0, for every optimizer; finite gradients return 1. */
Test(optim, non_finite_gradient_is_reported)
{
    enum { LEN = 37 }; /* two 16-wide blocks, a tail of 5 */
    const enum ft_optim_kind kinds[] = {FT_OPTIM_SGD, FT_OPTIM_ADAM, FT_OPTIM_ADAMW};
    const float bad[] = {NAN, -NAN, INFINITY, -INFINITY};
    const int at[] = {0, 7, 15, 16, 31, 32, 36};
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        struct ft_optim_opts o;
        ft_optim_opts_default(&o, kinds[k]);
        o.momentum = kinds[k] == FT_OPTIM_SGD ? 0.9 : 0.0;
        float p[LEN], g[LEN];
        for (int i = 0; i < LEN; i++) {
            p[i] = 0.5f - (float)i / LEN;
            g[i] = i % 3 ? 3e38f : -1e-30f; /* finite extremes: g * g overflows, g - g does not */
        }
        ft_optim *opt = NULL;
        cr_assert_eq(ft_optim_new(&o, LEN, &opt, NULL), FT_OK);
        cr_assert_eq(ft_optim_step(opt, p, g, 1e-3), 1, "optimizer %zu: finite gradient", k);
        for (size_t b = 0; b < sizeof bad / sizeof *bad; b++)
            for (size_t j = 0; j < sizeof at / sizeof *at; j++) {
                float keep = g[at[j]];
                g[at[j]] = bad[b];
                cr_assert_eq(ft_optim_step(opt, p, g, 1e-3), 0, "optimizer %zu, %f at %d", k,
                             (double)bad[b], at[j]);
                g[at[j]] = keep;
            }
        ft_optim_free(opt);
    }
}

Test(optim, adamw_default_weight_decay_is_torchs)
{
    struct ft_optim_opts o;
    ft_optim_opts_default(&o, FT_OPTIM_ADAMW);
    cr_assert_eq(o.weight_decay, 0.01);
    ft_optim_opts_default(&o, FT_OPTIM_ADAM);
    cr_assert_eq(o.weight_decay, 0.0);
}

Test(optim, plain_sgd_keeps_no_state)
{
    struct ft_optim_opts o;
    ft_optim_opts_default(&o, FT_OPTIM_SGD);
    ft_optim *opt = NULL;
    cr_assert_eq(ft_optim_new(&o, 3, &opt, NULL), FT_OK);
    float *m = (float *)&o, *v = (float *)&o;
    ft_optim_state(opt, &m, &v);
    cr_assert_null(m);
    cr_assert_null(v);
    ft_optim_free(opt);
    ft_optim_free(NULL);
}

Test(optim, bad_options_are_einval)
{
    struct ft_optim_opts o;
    struct ft_error err;
    ft_optim *opt = NULL;
    ft_optim_opts_default(&o, FT_OPTIM_SGD);
    o.nesterov = 1;
    cr_assert_eq(ft_optim_new(&o, 3, &opt, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "nesterov");
    cr_assert_null(opt);
    ft_optim_opts_default(&o, FT_OPTIM_SGD);
    o.momentum = -0.1;
    cr_assert_eq(ft_optim_new(&o, 3, &opt, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "momentum");
    ft_optim_opts_default(&o, FT_OPTIM_ADAM);
    o.weight_decay = -1;
    cr_assert_eq(ft_optim_new(&o, 3, &opt, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "weight_decay");
    ft_optim_opts_default(&o, FT_OPTIM_ADAM);
    o.beta2 = 1.0;
    cr_assert_eq(ft_optim_new(&o, 3, &opt, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "betas");
}

/* ---- run-config options ----------------------------------------------------------------- */

static void assert_normalized(const char *name, const char *options, const char *want)
{
    json_t *in = options ? json_loads(options, 0, NULL) : NULL;
    json_t *norm = NULL, *expected = json_loads(want, 0, NULL);
    struct ft_error err;
    cr_assert_not_null(expected);
    cr_assert_eq(ft_optim_check(name, in, &norm, &err), FT_OK, "%s", err.message);
    char *got = json_dumps(norm, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(json_equal(norm, expected), "%s %s: got %s, want %s", name, options, got, want);
    free(got);
    json_decref(norm);
    json_decref(expected);
    json_decref(in);
}

Test(optim_check, defaults_are_filled)
{
    assert_normalized("Adam", NULL,
                      "{\"betas\": [0.9, 0.999], \"eps\": 1e-8, \"weight_decay\": 0.0}");
    assert_normalized("AdamW", "{}",
                      "{\"betas\": [0.9, 0.999], \"eps\": 1e-8, \"weight_decay\": 0.01}");
    assert_normalized("SGD", "null",
                      "{\"momentum\": 0.0, \"nesterov\": false, \"weight_decay\": 0.0}");
    assert_normalized("AdamW", "{\"betas\": [0, 0.5], \"weight_decay\": 0}",
                      "{\"betas\": [0.0, 0.5], \"eps\": 1e-8, \"weight_decay\": 0.0}");
    assert_normalized("SGD", "{\"momentum\": 0.5, \"nesterov\": true}",
                      "{\"momentum\": 0.5, \"nesterov\": true, \"weight_decay\": 0.0}");
}

Test(optim_check, opts_from_normalized_json)
{
    json_t *norm = NULL;
    json_t *in = json_loads("{\"eps\": 1e-6, \"betas\": [0.8, 0.99]}", 0, NULL);
    struct ft_optim_opts o;
    cr_assert_eq(ft_optim_check("AdamW", in, &norm, NULL), FT_OK);
    cr_assert_eq(ft_optim_opts_from_json("AdamW", norm, &o), FT_OK);
    cr_assert_eq(o.kind, FT_OPTIM_ADAMW);
    cr_assert_eq(o.beta1, 0.8);
    cr_assert_eq(o.beta2, 0.99);
    cr_assert_eq(o.eps, 1e-6);
    cr_assert_eq(o.weight_decay, 0.01);
    cr_assert_eq(ft_optim_opts_from_json("Adagrad", norm, &o), FT_EINVAL);
    cr_assert_eq(ft_optim_opts_from_json("SGD", norm, &o), FT_EINVAL);
    cr_assert_eq(ft_optim_check("Adam", in, NULL, NULL), FT_OK);
    json_decref(norm);
    json_decref(in);
}

static void assert_rejected(const char *name, const char *options, const char *param)
{
    json_t *in = options ? json_loads(options, JSON_DECODE_ANY, NULL) : NULL;
    json_t *norm = json_true(); /* any non-NULL value: must come back NULL */
    struct ft_error err;
    cr_assert(!options || in, "bad test JSON %s", options);
    cr_assert_eq(ft_optim_check(name, in, &norm, &err), FT_EINVAL, "%s %s accepted", name, options);
    cr_assert_null(norm);
    cr_assert_str_eq(err.param, param, "%s %s: param %s, want %s", name, options, err.param, param);
    cr_assert_neq(err.message[0], '\0');
    json_decref(in);
}

#define OPT "config.hyper_parameters.optimizer_options"

Test(optim_check, bad_names_and_shapes)
{
    assert_rejected("Adagrad", NULL, "config.hyper_parameters.optimizer");
    assert_rejected("adam", NULL, "config.hyper_parameters.optimizer");
    assert_rejected(NULL, NULL, "config.hyper_parameters.optimizer");
    assert_rejected("Adam", "[0.9, 0.999]", OPT);
    assert_rejected("SGD", "\"momentum\"", OPT);
}

Test(optim_check, unknown_and_unsupported_keys)
{
    assert_rejected("Adam", "{\"amsgrad\": true}", OPT ".amsgrad");
    assert_rejected("AdamW", "{\"amsgrad\": false}", OPT ".amsgrad");
    assert_rejected("SGD", "{\"dampening\": 0.1}", OPT ".dampening");
    assert_rejected("SGD", "{\"betas\": [0.9, 0.999]}", OPT ".betas");
    assert_rejected("Adam", "{\"momentum\": 0.9}", OPT ".momentum");
    assert_rejected("AdamW", "{\"lr\": 0.1}", OPT ".lr");
}

Test(optim_check, bad_adam_values)
{
    assert_rejected("Adam", "{\"betas\": [0.9]}", OPT ".betas");
    assert_rejected("Adam", "{\"betas\": [0.9, 0.999, 0.1]}", OPT ".betas");
    assert_rejected("Adam", "{\"betas\": [0.9, 1.0]}", OPT ".betas");
    assert_rejected("AdamW", "{\"betas\": [-0.1, 0.999]}", OPT ".betas");
    assert_rejected("AdamW", "{\"betas\": [\"0.9\", 0.999]}", OPT ".betas");
    assert_rejected("Adam", "{\"betas\": 0.9}", OPT ".betas");
    assert_rejected("Adam", "{\"eps\": -1e-8}", OPT ".eps");
    assert_rejected("Adam", "{\"eps\": \"1e-8\"}", OPT ".eps");
    assert_rejected("AdamW", "{\"weight_decay\": -0.01}", OPT ".weight_decay");
    assert_rejected("AdamW", "{\"weight_decay\": true}", OPT ".weight_decay");
}

Test(optim_check, bad_sgd_values)
{
    assert_rejected("SGD", "{\"momentum\": 1.0}", OPT ".momentum");
    assert_rejected("SGD", "{\"momentum\": -0.1}", OPT ".momentum");
    assert_rejected("SGD", "{\"momentum\": \"high\"}", OPT ".momentum");
    assert_rejected("SGD", "{\"nesterov\": true}", OPT ".nesterov");
    assert_rejected("SGD", "{\"nesterov\": true, \"momentum\": 0}", OPT ".nesterov");
    assert_rejected("SGD", "{\"nesterov\": 1, \"momentum\": 0.9}", OPT ".nesterov");
    assert_rejected("SGD", "{\"weight_decay\": -1}", OPT ".weight_decay");
}

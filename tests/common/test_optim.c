/* test_optim.c — SGD (plain, momentum, Nesterov) and Adam (with and without L2 weight decay)
 * against 5 steps of torch.optim 1.13 (tests/fixtures/torch/optim_*.json). */
#include "optim.h"
#include "support/fixture.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

enum { N = 8, STEPS = 5 };

static double param_or(json_t *fx, const char *key, double dflt)
{
    json_t *v = json_object_get(json_object_get(fx, "params"), key);
    return v ? json_number_value(v) : dflt;
}

static void opts_from_fixture(json_t *fx, struct ft_optim_opts *o)
{
    const char *name =
        json_string_value(json_object_get(json_object_get(fx, "params"), "optimizer"));
    cr_assert_not_null(name);
    ft_optim_opts_default(o, strcmp(name, "Adam") == 0 ? FT_OPTIM_ADAM : FT_OPTIM_SGD);
    o->weight_decay = param_or(fx, "weight_decay", 0.0);
    o->momentum = param_or(fx, "momentum", 0.0);
    o->eps = param_or(fx, "eps", o->eps);
    json_t *nesterov = json_object_get(json_object_get(fx, "params"), "nesterov");
    o->nesterov = json_is_true(nesterov);
    json_t *betas = json_object_get(json_object_get(fx, "params"), "betas");
    if (betas) {
        o->beta1 = json_number_value(json_array_get(betas, 0));
        o->beta2 = json_number_value(json_array_get(betas, 1));
    }
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

static void run_fixture(const char *file, const char *m_name, const char *v_name)
{
    json_t *fx = fx_load(file);
    struct ft_optim_opts o;
    opts_from_fixture(fx, &o);
    double lr = param_or(fx, "lr", 0.0);
    float *p = fx_floats(fx, "inputs", "param0", NULL);
    float *g = fx_floats(fx, "inputs", "grads", NULL);
    ft_optim *opt = NULL;
    cr_assert_eq(ft_optim_new(&o, N, &opt, NULL), FT_OK);
    for (int k = 0; k < STEPS; k++) {
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
    ft_optim_free(opt);
    free(p), free(g);
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

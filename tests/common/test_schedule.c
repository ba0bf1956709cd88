/* test_schedule.c — learning-rate schedules against Hugging Face get_scheduler values
 * (tests/fixtures/torch/schedule_*.json: lr and lambda for s = 0..20), the options going through
 * ft_schedule_check's normalised object into ft_schedule_init; "auto" num_training_steps; edge
 * steps; validation errors with their exact params. */
#include "schedule.h"
#include "support/fixture.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OPTS "config.hyper_parameters.scheduler_options"

static void assert_close(const char *label, long long step, double got, double want, double atol,
                         double rtol)
{
    cr_assert(fabs(got - want) <= atol + rtol * fabs(want), "%s s=%lld: got %.12g, want %.12g",
              label, step, got, want);
}

/* The fixture's scheduler options (every params key but name and base_lr). */
static json_t *fixture_options(json_t *params)
{
    json_t *o = json_deep_copy(params);
    json_object_del(o, "name");
    json_object_del(o, "base_lr");
    return o;
}

static void check_fixture(const char *file)
{
    char rel[128];
    snprintf(rel, sizeof rel, "torch/%s", file);
    json_t *fx = fx_load(rel);
    json_t *params = json_object_get(fx, "params");
    const char *name = json_string_value(json_object_get(params, "name"));
    double base_lr = json_number_value(json_object_get(params, "base_lr"));
    json_t *tol = json_object_get(fx, "tolerance");
    double atol = json_number_value(json_object_get(tol, "atol"));
    double rtol = json_number_value(json_object_get(tol, "rtol"));
    json_t *options = fixture_options(params), *norm = NULL;
    struct ft_error err;
    struct ft_schedule s;
    cr_assert_eq(ft_schedule_check(name, options, &norm, &err), FT_OK, "%s: %s", file, err.message);
    cr_assert_eq(ft_schedule_init(&s, name, norm, 1, 1, base_lr, &err), FT_OK, "%s: %s", file,
                 err.message);
    cr_assert_eq(s.num_warmup_steps, 3);
    cr_assert_eq(s.num_training_steps, 20);
    size_t n;
    long long *steps = fx_ints(fx, "inputs", "step", &n);
    double *lr = fx_doubles(fx, "expected", "lr", NULL);
    double *lambda = fx_doubles(fx, "expected", "lambda", NULL);
    cr_assert_eq(n, 21);
    for (size_t i = 0; i < n; i++) {
        assert_close(file, steps[i], ft_schedule_lambda(&s, steps[i]), lambda[i], atol, rtol);
        assert_close(file, steps[i], ft_schedule_lr(&s, base_lr, steps[i]), lr[i], atol, rtol);
    }
    free(steps), free(lr), free(lambda);
    json_decref(norm), json_decref(options), json_decref(fx);
}

Test(schedule, every_fixture)
{
    size_t count, checked = 0;
    char **files = fx_list("torch", &count);
    for (size_t i = 0; i < count; i++) {
        if (strncmp(files[i], "schedule_", 9) == 0) {
            check_fixture(files[i]);
            checked++;
        }
    }
    fx_free_list(files, count);
    cr_assert_eq(checked, 6, "expected 6 schedule fixtures, found %zu", checked);
}

/* ft_schedule_check(name, options) succeeds and normalises to want. */
static void assert_normalized(const char *name, const char *options, const char *want)
{
    json_t *in = options ? json_loads(options, 0, NULL) : NULL;
    json_t *expected = json_loads(want, 0, NULL), *norm = NULL;
    struct ft_error err;
    cr_assert_not_null(expected);
    cr_assert_eq(ft_schedule_check(name, in, &norm, &err), FT_OK, "%s %s: %s", name, options,
                 err.message);
    char *got = json_dumps(norm, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(json_equal(norm, expected), "%s %s: got %s, want %s", name, options, got, want);
    free(got);
    json_decref(norm), json_decref(expected), json_decref(in);
}

Test(schedule, defaults_are_filled)
{
    const char *base = "\"num_warmup_steps\": 0, \"num_training_steps\": \"auto\", "
                       "\"scheduler_step\": \"batch\"";
    char want[256];
    assert_normalized(NULL, NULL, "{}");
    assert_normalized(NULL, "{}", "{}");
    snprintf(want, sizeof want, "{%s}", base);
    assert_normalized("linear", NULL, want);
    assert_normalized("constant", "{}", want);
    assert_normalized("constant_with_warmup", "null", want);
    snprintf(want, sizeof want, "{%s, \"num_cycles\": 0.5}", base);
    assert_normalized("cosine", NULL, want);
    snprintf(want, sizeof want, "{%s, \"num_cycles\": 1.0}", base);
    assert_normalized("cosine_with_restarts", NULL, want);
    snprintf(want, sizeof want, "{%s, \"power\": 1.0, \"lr_end\": 1e-7}", base);
    assert_normalized("polynomial", NULL, want);
    assert_normalized("linear",
                      "{\"num_warmup_steps\": 5, \"num_training_steps\": 5, "
                      "\"scheduler_step\": \"epoch\"}",
                      "{\"num_warmup_steps\": 5, \"num_training_steps\": 5, "
                      "\"scheduler_step\": \"epoch\"}");
}

static void init_from(struct ft_schedule *s, const char *name, const char *options, int epochs,
                      long long batches, double base_lr, enum ft_err want_rc, const char *param)
{
    json_t *in = options ? json_loads(options, 0, NULL) : NULL;
    struct ft_error err;
    ft_error_clear(&err);
    cr_assert_eq(ft_schedule_init(s, name, in, epochs, batches, base_lr, &err), want_rc,
                 "%s %s: %s", name, options, err.message);
    if (param)
        cr_assert_str_eq(err.param, param);
    json_decref(in);
}

Test(schedule, auto_training_steps)
{
    struct ft_schedule s;
    init_from(&s, "linear", "{\"num_training_steps\": \"auto\"}", 5, 7, 0.01, FT_OK, NULL);
    cr_assert_eq(s.num_training_steps, 35);
    cr_assert(s.step_per_batch);
    init_from(&s, "cosine", "{\"scheduler_step\": \"epoch\", \"num_warmup_steps\": 1}", 5, 7, 0.01,
              FT_OK, NULL);
    cr_assert_eq(s.num_training_steps, 5);
    cr_assert(!s.step_per_batch);
    cr_assert_eq(ft_schedule_lambda(&s, 0), 0.0);
    cr_assert_eq(ft_schedule_lambda(&s, 1), 1.0);
    cr_assert_eq(ft_schedule_lambda(&s, 5), 0.0);
    /* an explicit T is kept whatever the data */
    init_from(&s, "linear", "{\"num_training_steps\": 100}", 5, 7, 0.01, FT_OK, NULL);
    cr_assert_eq(s.num_training_steps, 100);
    /* the resolved T is shorter than the warm-up */
    init_from(&s, "linear", "{\"num_warmup_steps\": 36}", 5, 7, 0.01, FT_EINVAL,
              OPTS ".num_warmup_steps");
    init_from(&s, "linear", "{\"num_warmup_steps\": 6, \"scheduler_step\": \"epoch\"}", 5, 7, 0.01,
              FT_EINVAL, OPTS ".num_warmup_steps");
    init_from(&s, "linear", NULL, 5, 0, 0.01, FT_EINVAL, OPTS ".num_training_steps");
    init_from(&s, "linear", NULL, 0, 7, 0.01, FT_EINVAL, OPTS ".num_training_steps");
}

Test(schedule, no_scheduler_is_constant)
{
    struct ft_schedule s;
    init_from(&s, NULL, NULL, 0, 0, 0.0, FT_OK, NULL);
    cr_assert_eq(s.kind, FT_SCHED_NONE);
    cr_assert_eq(ft_schedule_lambda(&s, 0), 1.0);
    cr_assert_eq(ft_schedule_lambda(&s, 1000000), 1.0);
    cr_assert_eq(ft_schedule_lr(&s, 0.01, 7), 0.01);
    /* HF's constant ignores a warm-up */
    init_from(&s, "constant", "{\"num_warmup_steps\": 2, \"num_training_steps\": 4}", 1, 1, 0.01,
              FT_OK, NULL);
    cr_assert_eq(ft_schedule_lambda(&s, 0), 1.0);
    cr_assert_eq(ft_schedule_lambda(&s, 99), 1.0);
}

Test(schedule, past_the_end_and_edges)
{
    struct ft_schedule s;
    init_from(&s, "linear", "{\"num_training_steps\": 10}", 1, 1, 0.01, FT_OK, NULL);
    cr_assert_eq(ft_schedule_lambda(&s, 0), 1.0); /* no warm-up: the first step uses base_lr */
    cr_assert_eq(ft_schedule_lambda(&s, 10), 0.0);
    cr_assert_eq(ft_schedule_lambda(&s, 15), 0.0);
    init_from(&s, "cosine_with_restarts", "{\"num_training_steps\": 10}", 1, 1, 0.01, FT_OK, NULL);
    assert_close("restarts(1 cycle)", 5, ft_schedule_lambda(&s, 5), 0.5, 1e-15, 0);
    cr_assert_eq(ft_schedule_lambda(&s, 10), 0.0);
    cr_assert_eq(ft_schedule_lambda(&s, 12), 0.0);
    init_from(&s, "polynomial", "{\"num_training_steps\": 10, \"lr_end\": 0.001, \"power\": 2}", 1,
              1, 0.01, FT_OK, NULL);
    assert_close("poly", 5, ft_schedule_lr(&s, 0.01, 5), 0.009 * 0.25 + 0.001, 1e-15, 1e-12);
    assert_close("poly", 10, ft_schedule_lr(&s, 0.01, 10), 0.001, 1e-15, 1e-12);
    assert_close("poly", 11, ft_schedule_lambda(&s, 11), 0.1, 1e-15, 1e-12);
    /* warm-up as long as training: HF divides by T - W = 0 at s = T; we end at lr_end */
    init_from(&s, "polynomial", "{\"num_warmup_steps\": 4, \"num_training_steps\": 4}", 1, 1, 0.01,
              FT_OK, NULL);
    assert_close("poly W=T", 3, ft_schedule_lambda(&s, 3), 0.75, 0, 1e-15);
    assert_close("poly W=T", 4, ft_schedule_lambda(&s, 4), 1e-5, 0, 1e-12);
    init_from(&s, "linear", "{\"num_warmup_steps\": 4, \"num_training_steps\": 4}", 1, 1, 0.01,
              FT_OK, NULL);
    cr_assert_eq(ft_schedule_lambda(&s, 4), 0.0);
    init_from(&s, "constant_with_warmup", "{\"num_warmup_steps\": 1}", 1, 1, 0.01, FT_OK, NULL);
    cr_assert_eq(ft_schedule_lambda(&s, 0), 0.0);
    cr_assert_eq(ft_schedule_lambda(&s, 1), 1.0);
}

Test(schedule, init_needs_a_usable_learning_rate)
{
    struct ft_schedule s;
    init_from(&s, "polynomial", "{\"lr_end\": 0.01}", 1, 5, 0.01, FT_EINVAL, OPTS ".lr_end");
    init_from(&s, "polynomial", "{\"lr_end\": 0.1}", 1, 5, 0.01, FT_EINVAL, OPTS ".lr_end");
    init_from(&s, "linear", NULL, 1, 5, 0.0, FT_EINVAL, "config.hyper_parameters.learning_rate");
    init_from(&s, "linear", "{\"num_cycles\": 2}", 1, 5, 0.01, FT_EINVAL, OPTS ".num_cycles");
}

/* ft_schedule_check(name, options) fails with FT_EINVAL naming param; *normalized NULL. */
static void assert_rejected(const char *name, const char *options, const char *param)
{
    json_t *in = options ? json_loads(options, JSON_DECODE_ANY, NULL) : NULL;
    json_t *norm = json_true(); /* any non-NULL value: must come back NULL */
    struct ft_error err;
    cr_assert(!options || in, "bad test JSON %s", options);
    cr_assert_eq(ft_schedule_check(name, in, &norm, &err), FT_EINVAL, "%s %s accepted", name,
                 options);
    cr_assert_null(norm);
    cr_assert_str_eq(err.param, param, "%s %s: param %s, want %s", name, options, err.param, param);
    cr_assert_neq(err.message[0], '\0');
    json_decref(in);
}

Test(schedule_check, names_and_shapes)
{
    assert_rejected("step", NULL, "config.hyper_parameters.scheduler");
    assert_rejected("Linear", NULL, "config.hyper_parameters.scheduler");
    assert_rejected("", NULL, "config.hyper_parameters.scheduler");
    assert_rejected("linear", "[1, 2]", OPTS);
    assert_rejected("cosine", "\"auto\"", OPTS);
    assert_rejected(NULL, "{\"num_warmup_steps\": 3}", OPTS);
    assert_rejected(NULL, "7", OPTS);
}

Test(schedule_check, unknown_keys)
{
    assert_rejected("linear", "{\"num_cycles\": 0.5}", OPTS ".num_cycles");
    assert_rejected("cosine", "{\"power\": 2}", OPTS ".power");
    assert_rejected("polynomial", "{\"num_cycles\": 1}", OPTS ".num_cycles");
    assert_rejected("constant_with_warmup", "{\"lr_end\": 0}", OPTS ".lr_end");
    assert_rejected("cosine_with_restarts", "{\"warmup_steps\": 3}", OPTS ".warmup_steps");
}

Test(schedule_check, bad_values)
{
    assert_rejected("linear", "{\"num_warmup_steps\": -1}", OPTS ".num_warmup_steps");
    assert_rejected("linear", "{\"num_warmup_steps\": 1.5}", OPTS ".num_warmup_steps");
    assert_rejected("linear", "{\"num_warmup_steps\": \"3\"}", OPTS ".num_warmup_steps");
    assert_rejected("linear", "{\"num_training_steps\": 0}", OPTS ".num_training_steps");
    assert_rejected("linear", "{\"num_training_steps\": 20.0}", OPTS ".num_training_steps");
    assert_rejected("linear", "{\"num_training_steps\": \"full\"}", OPTS ".num_training_steps");
    assert_rejected("linear", "{\"scheduler_step\": \"step\"}", OPTS ".scheduler_step");
    assert_rejected("linear", "{\"scheduler_step\": 1}", OPTS ".scheduler_step");
    assert_rejected("cosine", "{\"num_cycles\": 0}", OPTS ".num_cycles");
    assert_rejected("cosine_with_restarts", "{\"num_cycles\": -1}", OPTS ".num_cycles");
    assert_rejected("cosine", "{\"num_cycles\": \"half\"}", OPTS ".num_cycles");
    assert_rejected("polynomial", "{\"power\": 0}", OPTS ".power");
    assert_rejected("polynomial", "{\"lr_end\": -1e-7}", OPTS ".lr_end");
    assert_rejected("polynomial", "{\"lr_end\": true}", OPTS ".lr_end");
}

Test(schedule_check, warmup_longer_than_training)
{
    assert_rejected("linear", "{\"num_warmup_steps\": 30, \"num_training_steps\": 20}",
                    OPTS ".num_warmup_steps");
    assert_rejected("constant_with_warmup",
                    "{\"num_warmup_steps\": 21, \"num_training_steps\": 20}",
                    OPTS ".num_warmup_steps");
    /* equal is fine, and "auto" is only checked once resolved */
    assert_normalized("linear", "{\"num_warmup_steps\": 20, \"num_training_steps\": 20}",
                      "{\"num_warmup_steps\": 20, \"num_training_steps\": 20, "
                      "\"scheduler_step\": \"batch\"}");
    assert_normalized("linear", "{\"num_warmup_steps\": 1000}",
                      "{\"num_warmup_steps\": 1000, \"num_training_steps\": \"auto\", "
                      "\"scheduler_step\": \"batch\"}");
}

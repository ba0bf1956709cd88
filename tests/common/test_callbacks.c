/* test_callbacks.c — ft_callbacks_parse, ft_early_stopping_update and
 * ft_best_checkpoint_update against every scenario in tests/fixtures/callbacks/cases (spec:
 * its README.md), plus parse-error unit tests. */
#include <criterion/criterion.h>

#include "callbacks.h"
#include "support/fixture.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A fixture value: null = missing, "NaN" / "Infinity" / "-Infinity", or a number. Returns
 * has_value and sets *v. */
static int decode_value(json_t *j, double *v)
{
    const char *s = json_string_value(j);
    if (json_is_null(j))
        return 0;
    if (s && strcmp(s, "NaN") == 0)
        *v = NAN;
    else if (s && strcmp(s, "Infinity") == 0)
        *v = INFINITY;
    else if (s && strcmp(s, "-Infinity") == 0)
        *v = -INFINITY;
    else if (json_is_number(j))
        *v = json_number_value(j);
    else
        cr_assert_fail("bad monitored value");
    return 1;
}

static int same_double(double a, double b)
{
    return (isnan(a) && isnan(b)) || a == b;
}

/* got (has, v) equals the fixture value want (null, number or encoded non-finite). */
static void assert_value(const char *what, int has, double v, json_t *want)
{
    double w = 0;
    int want_has = decode_value(want, &w);
    cr_assert_eq(has, want_has, "%s: presence %d, want %d", what, has, want_has);
    if (has)
        cr_assert(same_double(v, w), "%s: %.17g, want %.17g", what, v, w);
}

static void assert_invalid(const char *name, json_t *fx, enum ft_err rc, const struct ft_error *err)
{
    json_t *want = json_object_get(fx, "expected");
    char prefix[64];
    snprintf(prefix, sizeof prefix, "callbacks[%d].",
             (int)json_integer_value(json_object_get(want, "callback_index")));
    const char *param = json_string_value(json_object_get(want, "param"));
    size_t lp = strlen(err->param), lw = strlen(param);
    cr_assert_eq(rc, FT_EINVAL, "%s: expected invalid", name);
    cr_assert_eq(strncmp(err->param, prefix, strlen(prefix)), 0, "%s: param %s", name, err->param);
    cr_assert(lp >= lw && strcmp(err->param + lp - lw, param) == 0, "%s: param %s, want ...%s",
              name, err->param, param);
    cr_assert_gt(strlen(err->message), 0);
}

static void assert_modes(const char *name, const struct ft_callbacks *cb, json_t *modes)
{
    static const char *const mode_name[] = {"min", "max"};
    cr_assert_eq(json_object_size(modes),
                 (size_t)(cb->has_early_stopping + cb->has_best_checkpoint), "%s", name);
    if (cb->has_early_stopping)
        cr_assert_str_eq(mode_name[cb->early_stopping.mode],
                         json_string_value(json_object_get(modes, "EarlyStopping")), "%s", name);
    if (cb->has_best_checkpoint)
        cr_assert_str_eq(mode_name[cb->best_checkpoint.mode],
                         json_string_value(json_object_get(modes, "BestModelCheckpoint")), "%s",
                         name);
}

/* One epoch of EarlyStopping checked against trace entry t; returns the stop flag. */
static int es_epoch(const char *name, struct ft_early_stopping *es, int epoch, json_t *val,
                    json_t *t)
{
    double v = 0;
    int has = decode_value(val, &v);
    int improved = -1;
    int stop = ft_early_stopping_update(es, has, v, &improved);
    cr_assert_not_null(t, "%s: no trace entry for epoch %d", name, epoch);
    cr_assert_eq(json_integer_value(json_object_get(t, "epoch")), epoch);
    assert_value("trace value", has, v, json_object_get(t, "value"));
    cr_assert_eq(improved, json_is_true(json_object_get(t, "improved")), "%s: epoch %d improved",
                 name, epoch);
    assert_value("trace ref", es->has_ref, es->ref, json_object_get(t, "ref"));
    cr_assert_eq(es->wait, json_integer_value(json_object_get(t, "wait")), "%s: epoch %d wait %d",
                 name, epoch, es->wait);
    return stop;
}

static void bmc_epoch(const char *name, struct ft_best_checkpoint *b, int epoch, json_t *val,
                      json_t *t)
{
    double v = 0;
    int has = decode_value(val, &v);
    int is_best = ft_best_checkpoint_update(b, epoch, has, v);
    cr_assert_eq(is_best, b->best_epoch == epoch);
    cr_assert_not_null(t, "%s: no best_epoch_trace entry for epoch %d", name, epoch);
    if (json_is_null(t))
        cr_assert_eq(b->best_epoch, 0, "%s: epoch %d best %d, want null", name, epoch,
                     b->best_epoch);
    else
        cr_assert_eq(b->best_epoch, json_integer_value(t), "%s: epoch %d best %d", name, epoch,
                     b->best_epoch);
}

static void assert_int_or_null(const char *what, int has, int v, json_t *want)
{
    if (json_is_null(want))
        cr_assert(!has, "%s: %d, want null", what, v);
    else
        cr_assert(has && v == json_integer_value(want), "%s: %d (has %d), want %lld", what, v, has,
                  (long long)json_integer_value(want));
}

/* Run the epoch loop as the worker does: every callback sees the epoch's values; stop after
 * the epoch when EarlyStopping says so. */
static void simulate(const char *name, json_t *fx, struct ft_callbacks *cb)
{
    json_t *want = json_object_get(fx, "expected");
    json_t *values = json_object_get(fx, "monitored_values");
    json_t *trace = json_object_get(want, "trace");
    json_t *btrace = json_object_get(want, "best_epoch_trace");
    struct ft_early_stopping *es = &cb->early_stopping;
    struct ft_best_checkpoint *b = &cb->best_checkpoint;
    int epochs = (int)json_integer_value(json_object_get(fx, "epochs"));
    int epoch = 0, stop = 0;
    cr_assert_eq(json_is_null(trace), !cb->has_early_stopping, "%s", name);
    cr_assert_eq(json_is_null(btrace), !cb->has_best_checkpoint, "%s", name);
    while (!stop && epoch < epochs) {
        epoch++;
        if (cb->has_early_stopping)
            stop = es_epoch(name, es, epoch,
                            json_array_get(json_object_get(values, es->monitor), epoch - 1),
                            json_array_get(trace, epoch - 1));
        if (cb->has_best_checkpoint)
            bmc_epoch(name, b, epoch,
                      json_array_get(json_object_get(values, b->monitor), epoch - 1),
                      json_array_get(btrace, epoch - 1));
    }
    cr_assert_eq(epoch, json_integer_value(json_object_get(want, "epochs_completed")), "%s: ran %d",
                 name, epoch);
    cr_assert_eq(stop, json_is_true(json_object_get(want, "stopped_early")), "%s", name);
    assert_int_or_null("stop_epoch", stop, epoch, json_object_get(want, "stop_epoch"));
    if (cb->has_early_stopping)
        cr_assert_eq(json_array_size(trace), (size_t)epoch, "%s: trace length", name);
    if (cb->has_best_checkpoint)
        cr_assert_eq(json_array_size(btrace), (size_t)epoch, "%s: best trace length", name);
    int has_best = cb->has_best_checkpoint && b->best_epoch > 0;
    assert_int_or_null("best_epoch", has_best, b->best_epoch, json_object_get(want, "best_epoch"));
    assert_value("best_value", has_best, b->best_value, json_object_get(want, "best_value"));
    cr_assert_eq(has_best ? b->best_epoch : epoch,
                 json_integer_value(json_object_get(want, "artifact_epoch")), "%s: artifact", name);
}

static void run_scenario(const char *file)
{
    char rel[512];
    snprintf(rel, sizeof rel, "callbacks/cases/%s", file);
    json_t *fx = fx_load(rel);
    json_t *want = json_object_get(fx, "expected");
    struct ft_callbacks cb;
    struct ft_error err;
    ft_error_clear(&err);
    enum ft_err rc = ft_callbacks_parse(json_object_get(fx, "callbacks"), &cb, &err);
    if (json_object_get(want, "error")) {
        assert_invalid(file, fx, rc, &err);
    } else {
        cr_assert_eq(rc, FT_OK, "%s: %s (%s)", file, err.message, err.param);
        assert_modes(file, &cb, json_object_get(want, "resolved_modes"));
        simulate(file, fx, &cb);
    }
    json_decref(fx);
}

Test(callbacks, fixture_scenarios)
{
    size_t count;
    char **files = fx_list("callbacks/cases", &count);
    cr_assert_geq(count, 65, "expected 65 callback scenarios, found %zu", count);
    for (size_t i = 0; i < count; i++)
        run_scenario(files[i]);
    fx_free_list(files, count);
}

/* ---- parse errors and defaults ---------------------------------------------------------- */

/* Parse text (a JSON array); returns the code, err filled. */
static enum ft_err parse_text(const char *text, struct ft_callbacks *cb, struct ft_error *err)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    cr_assert_not_null(j, "bad test JSON: %s", jerr.text);
    ft_error_clear(err);
    enum ft_err rc = ft_callbacks_parse(j, cb, err);
    json_decref(j);
    return rc;
}

static void expect_invalid(const char *text, const char *param)
{
    struct ft_callbacks cb;
    struct ft_error err;
    cr_assert_eq(parse_text(text, &cb, &err), FT_EINVAL, "%s: accepted", text);
    cr_assert_str_eq(err.param, param, "%s", text);
    cr_assert_gt(strlen(err.message), 0);
    cr_assert_eq(cb.num_eval + cb.has_early_stopping + cb.has_best_checkpoint, 0);
}

Test(callbacks, unknown_callback_name)
{
    expect_invalid("[{\"name\": \"EarlyStopping\"}, {\"name\": \"ReduceLROnPlateau\"}]",
                   "callbacks[1].name");
    expect_invalid("[{\"name\": 3}]", "callbacks[0].name");
    expect_invalid("[{\"options\": {}}]", "callbacks[0].name");
}

Test(callbacks, unknown_option_and_key)
{
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"patient\": 2}}]",
                   "callbacks[0].options.patient");
    expect_invalid("[{\"name\": \"BestModelCheckpoint\", \"options\": {\"min_delta\": 0.1}}]",
                   "callbacks[0].options.min_delta");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
                   "\"top_k\": 5}}]",
                   "callbacks[0].options.top_k");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"opts\": {}}]", "callbacks[0].opts");
}

Test(callbacks, wrong_types)
{
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"patience\": \"2\"}}]",
                   "callbacks[0].options.patience");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"patience\": true}}]",
                   "callbacks[0].options.patience");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"patience\": 2.0}}]",
                   "callbacks[0].options.patience");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"monitor\": 1}}]",
                   "callbacks[0].options.monitor");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"baseline\": \"0.5\"}}]",
                   "callbacks[0].options.baseline");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": []}]", "callbacks[0].options");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
                   "\"exclude_self\": 1}}]",
                   "callbacks[0].options.exclude_self");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
                   "\"limit\": 0}}]",
                   "callbacks[0].options.limit");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
                   "\"batch_size\": 0}}]",
                   "callbacks[0].options.batch_size");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
                   "\"distance\": \"manhattan\"}}]",
                   "callbacks[0].options.distance");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"q\", "
                   "\"index_data\": 7}}]",
                   "callbacks[0].options.index_data");
    expect_invalid("[3]", "callbacks[0]");
}

Test(callbacks, negative_min_delta_and_patience)
{
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"min_delta\": -0.01}}]",
                   "callbacks[0].options.min_delta");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"patience\": -1}}]",
                   "callbacks[0].options.patience");
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"patience\": 1.5}}]",
                   "callbacks[0].options.patience");
}

Test(callbacks, missing_query_data)
{
    expect_invalid("[{\"name\": \"EvaluationCallback\"}]", "callbacks[0].options.query_data");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"\"}}]",
                   "callbacks[0].options.query_data");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": null}}]",
                   "callbacks[0].options.query_data");
}

Test(callbacks, modes_and_monitors)
{
    expect_invalid("[{\"name\": \"EarlyStopping\", \"options\": {\"mode\": \"sideways\"}}]",
                   "callbacks[0].options.mode");
    expect_invalid("[{\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
                   "\"mlp_val_loss\"}}]",
                   "callbacks[0].options.mode");
    expect_invalid("[{\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": \"val_mape\", "
                   "\"mode\": \"min\"}}]",
                   "callbacks[0].options.monitor");
    enum ft_mode mode;
    enum ft_monitor_kind kind;
    int metric;
    struct ft_error err;
    cr_assert_eq(ft_monitor_resolve("train_loss", "auto", &mode, &kind, &metric, &err), FT_OK);
    cr_assert(mode == FT_MODE_MIN && kind == FT_MON_TRAIN_LOSS);
    cr_assert_eq(ft_monitor_resolve("mlp_r_precision", "auto", &mode, &kind, &metric, &err), FT_OK);
    cr_assert(mode == FT_MODE_MAX && kind == FT_MON_METRIC && metric == FT_METRIC_R_PRECISION);
    cr_assert_eq(ft_monitor_resolve("val_loss", "max", &mode, &kind, &metric, &err), FT_OK);
    cr_assert(mode == FT_MODE_MAX && kind == FT_MON_VAL_LOSS);
    cr_assert_eq(ft_monitor_resolve("val_mape", "auto", &mode, NULL, NULL, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "mode");
}

Test(callbacks, duplicates_and_limits)
{
    expect_invalid("[{\"name\": \"EarlyStopping\"}, {\"name\": \"EarlyStopping\"}]",
                   "callbacks[1].name");
    expect_invalid("[{\"name\": \"BestModelCheckpoint\"}, {\"name\": \"EarlyStopping\"}, "
                   "{\"name\": \"BestModelCheckpoint\"}]",
                   "callbacks[2].name");
    char text[1024];
    size_t off = 0;
    off += snprintf(text + off, sizeof text - off, "[");
    for (int i = 0; i <= FT_MAX_EVAL_CALLBACKS; i++)
        off += snprintf(text + off, sizeof text - off,
                        "%s{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": "
                        "\"q%d\"}}",
                        i ? ", " : "", i);
    snprintf(text + off, sizeof text - off, "]");
    char param[64];
    snprintf(param, sizeof param, "callbacks[%d].name", FT_MAX_EVAL_CALLBACKS);
    expect_invalid(text, param);
    expect_invalid("{\"name\": \"EarlyStopping\"}", "callbacks");
}

Test(callbacks, defaults)
{
    struct ft_callbacks cb;
    struct ft_error err;
    cr_assert_eq(parse_text("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": "
                            "\"eval-query\", \"index_data\": null}}, {\"name\": "
                            "\"EarlyStopping\"}, {\"name\": \"BestModelCheckpoint\", "
                            "\"options\": null}]",
                            &cb, &err),
                 FT_OK, "%s", err.message);
    cr_assert_eq(cb.num_eval, 1);
    cr_assert_str_eq(cb.eval[0].query_data, "eval-query");
    cr_assert_str_eq(cb.eval[0].index_data, "");
    cr_assert_eq(cb.eval[0].limit, 20);
    cr_assert_eq(cb.eval[0].distance, FT_SCORE_COSINE);
    cr_assert_eq(cb.eval[0].exclude_self, 1);
    cr_assert_eq(cb.eval[0].batch_size, 8);
    cr_assert_str_eq(cb.early_stopping.monitor, "val_loss");
    cr_assert_eq(cb.early_stopping.mode, FT_MODE_MIN);
    cr_assert_eq(cb.early_stopping.patience, 2);
    cr_assert_eq(cb.early_stopping.min_delta, 0.0);
    cr_assert_eq(cb.early_stopping.has_baseline, 0);
    cr_assert_eq(cb.early_stopping.has_ref, 0);
    cr_assert_str_eq(cb.best_checkpoint.monitor, "val_loss");
    cr_assert_eq(cb.best_checkpoint.best_epoch, 0);
    cr_assert_eq(ft_callbacks_parse(NULL, &cb, &err), FT_OK);
    cr_assert_eq(cb.num_eval + cb.has_early_stopping + cb.has_best_checkpoint, 0);
}

Test(callbacks, explicit_eval_options)
{
    struct ft_callbacks cb;
    struct ft_error err;
    cr_assert_eq(parse_text("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": "
                            "\"q\", \"index_data\": \"idx\", \"limit\": 5, \"distance\": "
                            "\"euclidean\", \"exclude_self\": false, \"batch_size\": 64}}]",
                            &cb, &err),
                 FT_OK, "%s", err.message);
    cr_assert_str_eq(cb.eval[0].index_data, "idx");
    cr_assert_eq(cb.eval[0].limit, 5);
    cr_assert_eq(cb.eval[0].distance, FT_SCORE_EUCLIDEAN);
    cr_assert_eq(cb.eval[0].exclude_self, 0);
    cr_assert_eq(cb.eval[0].batch_size, 64);
}

Test(callbacks, patience_zero_stops_at_first_non_improvement)
{
    struct ft_callbacks cb;
    struct ft_error err;
    cr_assert_eq(
        parse_text("[{\"name\": \"EarlyStopping\", \"options\": {\"patience\": 0}}]", &cb, &err),
        FT_OK);
    int improved;
    cr_assert_eq(ft_early_stopping_update(&cb.early_stopping, 1, 1.0, &improved), 0);
    cr_assert_eq(improved, 1);
    cr_assert_eq(ft_early_stopping_update(&cb.early_stopping, 0, 0.0, &improved), 0);
    cr_assert_eq(improved, 0);
    cr_assert_eq(ft_early_stopping_update(&cb.early_stopping, 1, 0.5, NULL), 0);
    cr_assert_eq(ft_early_stopping_update(&cb.early_stopping, 1, 0.5, &improved), 1);
    cr_assert_eq(improved, 0);
}

Test(callbacks, captions_tell_evaluation_callbacks_apart)
{
    struct ft_callbacks cb;
    struct ft_error err;
    const char *two = "[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"a\", "
                      "\"caption\": \"train\", \"gather_examples\": true, \"num_example_queries\": "
                      "3, \"query_sample_size\": 100, \"steps_per_interval\": 50}},"
                      " {\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"b\", "
                      "\"caption\": \"test\"}},"
                      " {\"name\": \"EarlyStopping\", \"options\": {\"monitor\": "
                      "\"mlp_test_ndcg_at_k\"}},"
                      " {\"name\": \"BestModelCheckpoint\", \"options\": {\"monitor\": "
                      "\"train_precision_at_k\"}}]";
    cr_assert_eq(parse_text(two, &cb, &err), FT_OK, "%s (%s)", err.message, err.param);
    cr_assert_eq(cb.num_eval, 2);
    cr_assert_str_eq(cb.eval[0].caption, "train");
    cr_assert_eq(cb.eval[0].gather_examples, 1);
    cr_assert_eq(cb.eval[0].num_example_queries, 3);
    cr_assert_eq(cb.eval[0].query_sample_size, 100);
    cr_assert_eq(cb.eval[0].steps_per_interval, 50);
    cr_assert_eq(cb.eval[1].num_example_queries, 5, "default");
    cr_assert_eq(cb.early_stopping.eval_index, 1);
    cr_assert_eq(cb.early_stopping.mode, FT_MODE_MAX);
    cr_assert_eq(cb.best_checkpoint.eval_index, 0);
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"a\"}},"
                   " {\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"b\"}}]",
                   "callbacks");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"a\", "
                   "\"caption\": \"x\"}}, {\"name\": \"EarlyStopping\", \"options\": "
                   "{\"monitor\": \"mlp_y_ndcg_at_k\"}}]",
                   "callbacks[1].options.monitor");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"a\", "
                   "\"caption\": \"a b\"}}]",
                   "callbacks[0].options.caption");
    expect_invalid("[{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": \"a\", "
                   "\"limit\": 0}}]",
                   "callbacks[0].options.limit");
}

Test(callbacks, training_checkpoint_and_wiseft)
{
    struct ft_callbacks cb;
    struct ft_error err;
    cr_assert_eq(parse_text("[{\"name\": \"TrainingCheckpoint\"}, {\"name\": \"WiSEFTCallback\"}]",
                            &cb, &err),
                 FT_OK, "%s", err.message);
    cr_assert_eq(cb.has_training_checkpoint, 1);
    cr_assert_eq(cb.training_checkpoint.last_k_epochs, 1);
    cr_assert_eq(cb.has_wiseft, 1);
    cr_assert_float_eq(cb.wiseft.alpha, 0.4, 1e-12);
    cr_assert_eq(parse_text("[{\"name\": \"TrainingCheckpoint\", \"options\": {\"last_k_epochs\": "
                            "3}}, {\"name\": \"WiSEFTCallback\", \"options\": {\"alpha\": 1}}]",
                            &cb, &err),
                 FT_OK, "%s", err.message);
    cr_assert_eq(cb.training_checkpoint.last_k_epochs, 3);
    cr_assert_float_eq(cb.wiseft.alpha, 1.0, 1e-12);
    expect_invalid("[{\"name\": \"TrainingCheckpoint\", \"options\": {\"last_k_epochs\": 0}}]",
                   "callbacks[0].options.last_k_epochs");
    expect_invalid("[{\"name\": \"WiSEFTCallback\", \"options\": {\"alpha\": 1.5}}]",
                   "callbacks[0].options.alpha");
    expect_invalid("[{\"name\": \"WiSEFTCallback\", \"options\": {\"beta\": 1}}]",
                   "callbacks[0].options.beta");
}

/* schedule.c — Hugging Face get_scheduler learning-rate multipliers and their run-config options.
 *
 * The lambdas re-implement transformers/optimization.py (_get_*_lr_lambda) in double, operation
 * by operation, so the values match Python's float64 to the last bits; see schedule.h for the
 * formulas. Options are parsed once into struct ft_schedule (num_training_steps 0 = "auto"
 * while unresolved); ft_schedule_check writes the normalised JSON back from that struct and
 * ft_schedule_init re-parses it and resolves "auto". Nothing is allocated but the normalised
 * object. */
#include "schedule.h"
#include "options.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define SCHED_PARAM "config.hyper_parameters.scheduler"
#define SCHED_OPTS "config.hyper_parameters.scheduler_options"
#define AUTO 0 /* num_training_steps while "auto" */

static const double pi = 3.141592653589793; /* Python's math.pi */

#define TRY(x)                \
    do {                      \
        enum ft_err e_ = (x); \
        if (e_ != FT_OK)      \
            return e_;        \
    } while (0)

static const char *const kind_names[] = {
    [FT_SCHED_LINEAR] = "linear",
    [FT_SCHED_COSINE] = "cosine",
    [FT_SCHED_COSINE_WITH_RESTARTS] = "cosine_with_restarts",
    [FT_SCHED_POLYNOMIAL] = "polynomial",
    [FT_SCHED_CONSTANT] = "constant",
    [FT_SCHED_CONSTANT_WITH_WARMUP] = "constant_with_warmup",
};
#define NUM_KINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

static const char *const common_keys[] = {"num_warmup_steps", "num_training_steps",
                                          "scheduler_step", NULL};
static const char *const cosine_keys[] = {"num_warmup_steps", "num_training_steps",
                                          "scheduler_step", "num_cycles", NULL};
static const char *const poly_keys[] = {
    "num_warmup_steps", "num_training_steps", "scheduler_step", "power", "lr_end", NULL};

static const char *const *keys_of(enum ft_schedule_kind kind)
{
    if (kind == FT_SCHED_COSINE || kind == FT_SCHED_COSINE_WITH_RESTARTS)
        return cosine_keys;
    return kind == FT_SCHED_POLYNOMIAL ? poly_keys : common_keys;
}

static enum ft_err bad_option(const char *key, struct ft_error *err, const char *what)
{
    char p[128];
    snprintf(p, sizeof p, "%s.%s", SCHED_OPTS, key);
    return ft_error_set(err, FT_EINVAL, p, "%s %s", p, what);
}

/* Defaults of kind; num_training_steps "auto". */
static void set_defaults(struct ft_schedule *s, enum ft_schedule_kind kind)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->num_training_steps = AUTO;
    s->num_cycles = kind == FT_SCHED_COSINE_WITH_RESTARTS ? 1.0 : 0.5;
    s->power = 1.0;
    s->lr_end = 1e-7;
    s->lr_init = 0.0;
    s->step_per_batch = 1;
}

static enum ft_err kind_of(const char *name, enum ft_schedule_kind *kind, struct ft_error *err)
{
    *kind = FT_SCHED_NONE;
    if (!name)
        return FT_OK;
    for (int i = 1; i < NUM_KINDS; i++) {
        if (strcmp(name, kind_names[i]) == 0) {
            *kind = (enum ft_schedule_kind)i;
            return FT_OK;
        }
    }
    return ft_error_set(err, FT_EINVAL, SCHED_PARAM,
                        "unknown scheduler '%s' (known: linear, cosine, cosine_with_restarts, "
                        "polynomial, constant, constant_with_warmup)",
                        name);
}

static enum ft_err check_known(json_t *options, enum ft_schedule_kind kind, struct ft_error *err)
{
    const char *key = ft_options_unknown_key(options, keys_of(kind));
    char what[96];
    if (!key)
        return FT_OK;
    snprintf(what, sizeof what, "is not an option of %s", kind_names[kind]);
    return bad_option(key, err, what);
}

/* options[key] as an integer >= lo; absent or null keeps *dst. */
static enum ft_err get_count(json_t *options, const char *key, int64_t lo, int64_t *dst,
                             struct ft_error *err)
{
    json_t *v = json_object_get(options, key);
    if (!v || json_is_null(v))
        return FT_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo)
        return bad_option(key, err, lo ? "must be an integer > 0" : "must be an integer >= 0");
    *dst = json_integer_value(v);
    return FT_OK;
}

/* options[key] as a finite number, > 0 (positive) or >= 0; absent or null keeps *dst. */
static enum ft_err get_real(json_t *options, const char *key, int positive, double *dst,
                            struct ft_error *err)
{
    json_t *v = json_object_get(options, key);
    if (!v || json_is_null(v))
        return FT_OK;
    double x = json_number_value(v);
    if (!json_is_number(v) || !isfinite(x) || x < 0.0 || (positive && x == 0.0))
        return bad_option(key, err, positive ? "must be a number > 0" : "must be a number >= 0");
    *dst = x;
    return FT_OK;
}

static enum ft_err get_training_steps(json_t *options, struct ft_schedule *s, struct ft_error *err)
{
    json_t *v = json_object_get(options, "num_training_steps");
    if (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0)
        return FT_OK;
    if (v && !json_is_null(v) && !json_is_integer(v))
        return bad_option("num_training_steps", err, "must be an integer > 0 or \"auto\"");
    return get_count(options, "num_training_steps", 1, &s->num_training_steps, err);
}

static enum ft_err get_step_unit(json_t *options, struct ft_schedule *s, struct ft_error *err)
{
    json_t *v = json_object_get(options, "scheduler_step");
    if (!v || json_is_null(v))
        return FT_OK;
    const char *unit = json_string_value(v);
    if (unit && strcmp(unit, "batch") == 0)
        s->step_per_batch = 1;
    else if (unit && strcmp(unit, "epoch") == 0)
        s->step_per_batch = 0;
    else
        return bad_option("scheduler_step", err, "must be \"batch\" or \"epoch\"");
    return FT_OK;
}

/* Warm-up longer than training; T may still be AUTO (then nothing to compare). */
static enum ft_err check_warmup(const struct ft_schedule *s, struct ft_error *err)
{
    if (s->num_training_steps == AUTO || s->num_warmup_steps <= s->num_training_steps)
        return FT_OK;
    char what[160];
    snprintf(what, sizeof what, "(%lld) must be <= num_training_steps (%lld)",
             (long long)s->num_warmup_steps, (long long)s->num_training_steps);
    return bad_option("num_warmup_steps", err, what);
}

/* Defaults of name, then options over them, each checked; T stays AUTO for "auto". */
static enum ft_err parse_options(const char *name, json_t *options, struct ft_schedule *s,
                                 struct ft_error *err)
{
    enum ft_schedule_kind kind;
    TRY(kind_of(name, &kind, err));
    set_defaults(s, kind);
    if (!options || json_is_null(options))
        return FT_OK;
    if (!json_is_object(options))
        return ft_error_set(err, FT_EINVAL, SCHED_OPTS, "%s must be an object", SCHED_OPTS);
    if (kind == FT_SCHED_NONE && json_object_size(options) > 0)
        return ft_error_set(err, FT_EINVAL, SCHED_OPTS,
                            "scheduler_options given without a scheduler");
    TRY(check_known(options, kind, err));
    TRY(get_count(options, "num_warmup_steps", 0, &s->num_warmup_steps, err));
    TRY(get_training_steps(options, s, err));
    TRY(get_step_unit(options, s, err));
    TRY(get_real(options, "num_cycles", 1, &s->num_cycles, err));
    TRY(get_real(options, "power", 1, &s->power, err));
    TRY(get_real(options, "lr_end", 0, &s->lr_end, err));
    return check_warmup(s, err);
}

/* The normalised options of s (new reference; NULL when out of memory). */
static json_t *normalized_json(const struct ft_schedule *s)
{
    if (s->kind == FT_SCHED_NONE)
        return json_object();
    json_t *t =
        s->num_training_steps == AUTO ? json_string("auto") : json_integer(s->num_training_steps);
    json_t *o =
        json_pack("{s:I, s:o, s:s}", "num_warmup_steps", (json_int_t)s->num_warmup_steps,
                  "num_training_steps", t, "scheduler_step", s->step_per_batch ? "batch" : "epoch");
    int rc = 0;
    if (o && keys_of(s->kind) == cosine_keys)
        rc = json_object_set_new(o, "num_cycles", json_real(s->num_cycles));
    if (o && s->kind == FT_SCHED_POLYNOMIAL)
        rc = json_object_set_new(o, "power", json_real(s->power)) ||
             json_object_set_new(o, "lr_end", json_real(s->lr_end));
    if (rc) {
        json_decref(o);
        return NULL;
    }
    return o;
}

enum ft_err ft_schedule_check(const char *name, json_t *options, json_t **normalized,
                              struct ft_error *err)
{
    struct ft_schedule s;
    if (normalized)
        *normalized = NULL;
    TRY(parse_options(name, options, &s, err));
    if (!normalized)
        return FT_OK;
    *normalized = normalized_json(&s);
    if (!*normalized)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory normalising scheduler_options");
    return FT_OK;
}

/* num_training_steps "auto" = epochs x batches_per_epoch (per batch) or epochs (per epoch). */
static enum ft_err resolve_auto(struct ft_schedule *s, int epochs, int64_t batches_per_epoch,
                                struct ft_error *err)
{
    if (s->num_training_steps != AUTO)
        return FT_OK;
    if (epochs < 1 || batches_per_epoch < 1)
        return bad_option("num_training_steps", err,
                          "\"auto\" needs epochs >= 1 and at least one batch per epoch");
    s->num_training_steps = s->step_per_batch ? (int64_t)epochs * batches_per_epoch : epochs;
    return FT_OK;
}

enum ft_err ft_schedule_init(struct ft_schedule *s, const char *name, json_t *options, int epochs,
                             int64_t batches_per_epoch, double base_lr, struct ft_error *err)
{
    TRY(parse_options(name, options, s, err));
    if (s->kind == FT_SCHED_NONE) {
        s->num_training_steps = 1;
        return FT_OK;
    }
    TRY(resolve_auto(s, epochs, batches_per_epoch, err));
    TRY(check_warmup(s, err));
    if (!(base_lr > 0.0) || !isfinite(base_lr))
        return ft_error_set(err, FT_EINVAL, "config.hyper_parameters.learning_rate",
                            "a learning-rate schedule needs learning_rate > 0");
    if (s->kind == FT_SCHED_POLYNOMIAL && !(s->lr_end < base_lr))
        return bad_option("lr_end", err, "must be smaller than learning_rate");
    s->lr_init = base_lr;
    return FT_OK;
}

/* ---- the multipliers (transformers/optimization.py) ---------------------------------------- */

static double warmup(int64_t step, int64_t w)
{
    return (double)step / (double)(w > 1 ? w : 1);
}

static double progress(const struct ft_schedule *s, int64_t step)
{
    int64_t span = s->num_training_steps - s->num_warmup_steps;
    return (double)(step - s->num_warmup_steps) / (double)(span > 1 ? span : 1);
}

static double linear(const struct ft_schedule *s, int64_t step)
{
    int64_t span = s->num_training_steps - s->num_warmup_steps;
    double x = (double)(s->num_training_steps - step) / (double)(span > 1 ? span : 1);
    return fmax(0.0, x);
}

static double cosine(const struct ft_schedule *s, int64_t step)
{
    double p = progress(s, step);
    return fmax(0.0, 0.5 * (1.0 + cos(pi * s->num_cycles * 2.0 * p)));
}

static double cosine_with_restarts(const struct ft_schedule *s, int64_t step)
{
    double p = progress(s, step);
    if (p >= 1.0)
        return 0.0;
    return fmax(0.0, 0.5 * (1.0 + cos(pi * fmod(s->num_cycles * p, 1.0))));
}

/* HF divides by T - W unguarded (ZeroDivisionError at s = T = W); that step is the end: lr_end. */
static double polynomial(const struct ft_schedule *s, int64_t step)
{
    int64_t decay_steps = s->num_training_steps - s->num_warmup_steps;
    if (step > s->num_training_steps || decay_steps == 0)
        return s->lr_end / s->lr_init;
    double lr_range = s->lr_init - s->lr_end;
    double pct_remaining = 1.0 - (double)(step - s->num_warmup_steps) / (double)decay_steps;
    return (lr_range * pow(pct_remaining, s->power) + s->lr_end) / s->lr_init;
}

double ft_schedule_lambda(const struct ft_schedule *s, int64_t step)
{
    FT_ASSERT(step >= 0);
    if (s->kind == FT_SCHED_NONE || s->kind == FT_SCHED_CONSTANT)
        return 1.0;
    if (step < s->num_warmup_steps)
        return warmup(step, s->num_warmup_steps);
    switch (s->kind) {
    case FT_SCHED_LINEAR:
        return linear(s, step);
    case FT_SCHED_COSINE:
        return cosine(s, step);
    case FT_SCHED_COSINE_WITH_RESTARTS:
        return cosine_with_restarts(s, step);
    case FT_SCHED_POLYNOMIAL:
        return polynomial(s, step);
    default:
        return 1.0; /* constant_with_warmup after the warm-up */
    }
}

double ft_schedule_lr(const struct ft_schedule *s, double base_lr, int64_t step)
{
    return base_lr * ft_schedule_lambda(s, step);
}

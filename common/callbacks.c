/* callbacks.c — parse the options of EvaluationCallback, EarlyStopping, BestModelCheckpoint,
 * TrainingCheckpoint and WiSEFTCallback, and run the per-epoch state of EarlyStopping and
 * BestModelCheckpoint (spec: tests/fixtures/callbacks/README.md).
 *
 * Parsing is strict: each callback's options are first collected into a table of known keys
 * (an unknown key is an error naming it), then validated in a fixed order — monitor, mode
 * (resolved), patience, min_delta, baseline — so errors match the reference generator's.
 * Every error is FT_EINVAL with param "callbacks[i].name" or "callbacks[i].options.<key>".
 * State lives in the public structs (no allocation), so a worker can persist and resume it. */
#include "callbacks.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_BATCH_SIZE 65536

/* ---- monitors --------------------------------------------------------------------------- */

/* Which series monitor names: 0 and *kind / *metric, or -1 when none. */
static int monitor_series(const char *monitor, enum ft_monitor_kind *kind, int *metric)
{
    int m = ft_metric_lookup(monitor);
    *metric = -1;
    if (strcmp(monitor, "train_loss") == 0)
        *kind = FT_MON_TRAIN_LOSS;
    else if (strcmp(monitor, "val_loss") == 0)
        *kind = FT_MON_VAL_LOSS;
    else if (m >= 0)
        *kind = FT_MON_METRIC;
    else
        return -1;
    *metric = m;
    return 0;
}

enum ft_err ft_monitor_resolve(const char *monitor, const char *mode, enum ft_mode *mode_out,
                               enum ft_monitor_kind *kind, int *metric, struct ft_error *err)
{
    enum ft_monitor_kind k = FT_MON_VAL_LOSS;
    int m = -1;
    int known = monitor && monitor_series(monitor, &k, &m) == 0;
    if (!mode ||
        (strcmp(mode, "auto") != 0 && strcmp(mode, "min") != 0 && strcmp(mode, "max") != 0))
        return ft_error_set(err, FT_EINVAL, "mode", "mode must be 'auto', 'min' or 'max'");
    if (!known && strcmp(mode, "auto") == 0)
        return ft_error_set(err, FT_EINVAL, "mode",
                            "mode 'auto' cannot infer a direction for monitor '%s'; pass 'min' "
                            "or 'max'",
                            monitor ? monitor : "");
    if (!known)
        return ft_error_set(err, FT_EINVAL, "monitor",
                            "monitor '%s' names no known series; use 'train_loss', 'val_loss' "
                            "or a metric such as 'mlp_ndcg_at_k'",
                            monitor ? monitor : "");
    if (strcmp(mode, "auto") == 0)
        *mode_out = k == FT_MON_METRIC ? FT_MODE_MAX : FT_MODE_MIN;
    else
        *mode_out = strcmp(mode, "max") == 0 ? FT_MODE_MAX : FT_MODE_MIN;
    if (kind)
        *kind = k;
    if (metric)
        *metric = m;
    return FT_OK;
}

/* ---- option tables ---------------------------------------------------------------------- */

struct opt_slot {
    const char *key;
    json_t *val; /* borrowed; NULL = absent (default) */
};

/* Where errors point: "callbacks[i]" and the callback's name. */
struct cb_ctx {
    int index;
    const char *name;
    struct ft_error *err;
};

/* FT_EINVAL with param "callbacks[i].options.<key>" and a printf-style message. */
static enum ft_err opt_error(const struct cb_ctx *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum ft_err opt_error(const struct cb_ctx *c, const char *key, const char *fmt, ...)
{
    char param[128];
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(param, sizeof param, "callbacks[%d].options.%s", c->index, key);
    return ft_error_set(c->err, FT_EINVAL, param, "%s", msg);
}

/* Fill slots from options (object or NULL); an unknown key is FT_EINVAL naming it. */
static enum ft_err collect_options(const struct cb_ctx *c, json_t *options, struct opt_slot *slots,
                                   int nslots, const char *known)
{
    const char *key;
    json_t *val;
    json_object_foreach(options, key, val)
    {
        int i = 0;
        while (i < nslots && strcmp(slots[i].key, key) != 0)
            i++;
        if (i == nslots)
            return opt_error(c, key, "%s has no option '%s'; known options: %s", c->name, key,
                             known);
        slots[i].val = val;
    }
    return FT_OK;
}

/* A non-empty string shorter than size into dst; absent leaves dst as is. */
static enum ft_err opt_string(const struct cb_ctx *c, const struct opt_slot *s, char *dst,
                              size_t size)
{
    if (!s->val)
        return FT_OK;
    const char *v = json_string_value(s->val);
    if (!v || !*v || strlen(v) >= size)
        return opt_error(c, s->key,
                         "%s option '%s' must be a non-empty string of at most %zu "
                         "characters",
                         c->name, s->key, size - 1);
    snprintf(dst, size, "%s", v);
    return FT_OK;
}

/* An integer in [lo, hi] (JSON integer, not bool, not real); absent leaves *dst. */
static enum ft_err opt_int(const struct cb_ctx *c, const struct opt_slot *s, long long lo,
                           long long hi, const char *range, int *dst)
{
    if (!s->val)
        return FT_OK;
    if (!json_is_integer(s->val) || json_integer_value(s->val) < lo ||
        json_integer_value(s->val) > hi)
        return opt_error(c, s->key, "%s option '%s' must be an integer %s", c->name, s->key, range);
    *dst = (int)json_integer_value(s->val);
    return FT_OK;
}

/* A finite number >= 0; absent leaves *dst. */
static enum ft_err opt_nonneg(const struct cb_ctx *c, const struct opt_slot *s, double *dst)
{
    if (!s->val)
        return FT_OK;
    if (!json_is_number(s->val) || !(json_number_value(s->val) >= 0) ||
        !isfinite(json_number_value(s->val)))
        return opt_error(c, s->key, "%s option '%s' must be a number >= 0", c->name, s->key);
    *dst = json_number_value(s->val);
    return FT_OK;
}

static enum ft_err opt_bool(const struct cb_ctx *c, const struct opt_slot *s, int *dst)
{
    if (!s->val)
        return FT_OK;
    if (!json_is_boolean(s->val))
        return opt_error(c, s->key, "%s option '%s' must be true or false", c->name, s->key);
    *dst = json_is_true(s->val);
    return FT_OK;
}

/* monitor (string) and mode (string, resolved) into the callback's fields. */
static enum ft_err opt_monitor_mode(const struct cb_ctx *c, const struct opt_slot *mon,
                                    const struct opt_slot *mode, char *monitor,
                                    enum ft_monitor_kind *kind, int *metric, enum ft_mode *out)
{
    char mode_str[FT_NAME_MAX] = "auto";
    enum ft_err rc = opt_string(c, mon, monitor, FT_NAME_MAX);
    if (rc == FT_OK)
        rc = opt_string(c, mode, mode_str, sizeof mode_str);
    if (rc != FT_OK)
        return rc;
    struct ft_error e;
    if (ft_monitor_resolve(monitor, mode_str, out, kind, metric, &e) == FT_OK)
        return FT_OK;
    return opt_error(c, e.param, "%s", e.message);
}

/* ---- the three callbacks ---------------------------------------------------------------- */

/* caption: letters, digits, '-' and '.', so metric names stay "<model>_<caption>_<metric>". */
static enum ft_err opt_caption(const struct cb_ctx *c, const struct opt_slot *s, char *dst,
                               size_t size)
{
    enum ft_err rc = s->val && json_is_null(s->val) ? FT_OK : opt_string(c, s, dst, size);
    for (const char *p = dst; rc == FT_OK && *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.'))
            rc = opt_error(c, s->key,
                           "%s option 'caption' may hold only letters, digits, '-' "
                           "and '.' (it becomes part of metric names)",
                           c->name);
    return rc;
}

static enum ft_err parse_eval_extras(const struct cb_ctx *c, struct opt_slot *s,
                                     struct ft_eval_callback *ev)
{
    enum ft_err rc = opt_caption(c, &s[0], ev->caption, sizeof ev->caption);
    if (rc == FT_OK)
        rc = opt_bool(c, &s[1], &ev->gather_examples);
    if (rc == FT_OK)
        rc = opt_int(c, &s[2], 1, 100, "between 1 and 100", &ev->num_example_queries);
    if (rc == FT_OK && s[3].val && !json_is_null(s[3].val))
        rc = opt_int(c, &s[3], 1, INT_MAX, ">= 1", &ev->query_sample_size);
    if (rc == FT_OK && s[4].val && !json_is_null(s[4].val))
        rc = opt_int(c, &s[4], 1, INT_MAX, ">= 1", &ev->steps_per_interval);
    return rc;
}

static enum ft_err parse_eval(const struct cb_ctx *c, json_t *options, struct ft_eval_callback *ev)
{
    struct opt_slot s[] = {
        {"query_data", NULL},        {"index_data", NULL},        {"limit", NULL},
        {"distance", NULL},          {"exclude_self", NULL},      {"batch_size", NULL},
        {"caption", NULL},           {"gather_examples", NULL},   {"num_example_queries", NULL},
        {"query_sample_size", NULL}, {"steps_per_interval", NULL}};
    *ev = (struct ft_eval_callback){.limit = 20,
                                    .distance = FT_SCORE_COSINE,
                                    .exclude_self = 1,
                                    .batch_size = 8,
                                    .num_example_queries = 5};
    enum ft_err rc = collect_options(c, options, s, 11,
                                     "query_data, index_data, limit, distance, exclude_self, "
                                     "batch_size, caption, gather_examples, num_example_queries, "
                                     "query_sample_size, steps_per_interval");
    if (rc != FT_OK)
        return rc;
    if (!s[0].val)
        return opt_error(c, "query_data",
                         "%s needs option 'query_data' (the name of the query dataset)", c->name);
    rc = opt_string(c, &s[0], ev->query_data, sizeof ev->query_data);
    if (rc == FT_OK && !json_is_null(s[1].val))
        rc = opt_string(c, &s[1], ev->index_data, sizeof ev->index_data);
    if (rc == FT_OK)
        rc = opt_int(c, &s[2], 1, 10000, "between 1 and 10000", &ev->limit);
    if (rc == FT_OK && s[3].val && ft_score_parse(json_string_value(s[3].val), &ev->distance))
        rc = opt_error(c, "distance",
                       "%s option 'distance' must be 'cosine', 'euclidean', 'sqeuclidean' or "
                       "'inner_product'",
                       c->name);
    if (rc == FT_OK)
        rc = opt_bool(c, &s[4], &ev->exclude_self);
    if (rc == FT_OK)
        rc = opt_int(c, &s[5], 1, MAX_BATCH_SIZE, "between 1 and 65536", &ev->batch_size);
    if (rc == FT_OK)
        rc = parse_eval_extras(c, s + 6, ev);
    return rc;
}

static enum ft_err parse_training_checkpoint(const struct cb_ctx *c, json_t *options,
                                             struct ft_training_checkpoint *t)
{
    struct opt_slot s[] = {{"last_k_epochs", NULL}};
    t->last_k_epochs = 1;
    enum ft_err rc = collect_options(c, options, s, 1, "last_k_epochs");
    if (rc == FT_OK)
        rc = opt_int(c, &s[0], 1, 1000, "between 1 and 1000", &t->last_k_epochs);
    return rc;
}

static enum ft_err parse_wiseft(const struct cb_ctx *c, json_t *options, struct ft_wiseft *w)
{
    struct opt_slot s[] = {{"alpha", NULL}};
    w->alpha = 0.4;
    enum ft_err rc = collect_options(c, options, s, 1, "alpha");
    if (rc == FT_OK)
        rc = opt_nonneg(c, &s[0], &w->alpha);
    if (rc == FT_OK && w->alpha > 1)
        rc = opt_error(c, "alpha", "%s option 'alpha' must be in [0, 1]", c->name);
    return rc;
}

static enum ft_err parse_early_stopping(const struct cb_ctx *c, json_t *options,
                                        struct ft_early_stopping *es)
{
    struct opt_slot s[] = {{"monitor", NULL},
                           {"mode", NULL},
                           {"patience", NULL},
                           {"min_delta", NULL},
                           {"baseline", NULL}};
    *es = (struct ft_early_stopping){.monitor = "val_loss", .patience = 2};
    enum ft_err rc =
        collect_options(c, options, s, 5, "monitor, mode, patience, min_delta, baseline");
    if (rc == FT_OK)
        rc = opt_monitor_mode(c, &s[0], &s[1], es->monitor, &es->kind, &es->metric, &es->mode);
    if (rc == FT_OK)
        rc = opt_int(c, &s[2], 0, INT_MAX, ">= 0", &es->patience);
    if (rc == FT_OK)
        rc = opt_nonneg(c, &s[3], &es->min_delta);
    if (rc != FT_OK || !s[4].val || json_is_null(s[4].val))
        return rc;
    if (!json_is_number(s[4].val))
        return opt_error(c, "baseline", "%s option 'baseline' must be a number or null", c->name);
    es->has_baseline = 1;
    es->baseline = json_number_value(s[4].val);
    es->has_ref = 1; /* the baseline is the fixed reference for the whole run */
    es->ref = es->baseline;
    return FT_OK;
}

static enum ft_err parse_best_checkpoint(const struct cb_ctx *c, json_t *options,
                                         struct ft_best_checkpoint *b)
{
    struct opt_slot s[] = {{"monitor", NULL}, {"mode", NULL}};
    *b = (struct ft_best_checkpoint){.monitor = "val_loss"};
    enum ft_err rc = collect_options(c, options, s, 2, "monitor, mode");
    if (rc == FT_OK)
        rc = opt_monitor_mode(c, &s[0], &s[1], b->monitor, &b->kind, &b->metric, &b->mode);
    return rc;
}

/* FT_EINVAL with param "callbacks[i]" or "callbacks[i].<what>" and a printf-style message. */
static enum ft_err entry_error(struct ft_error *err, int i, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum ft_err entry_error(struct ft_error *err, int i, const char *what, const char *fmt, ...)
{
    char param[128];
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(param, sizeof param, "callbacks[%d]%s%s", i, *what ? "." : "", what);
    return ft_error_set(err, FT_EINVAL, param, "%s", msg);
}

/* Check the shape {"name": string, "options": object|null}; *name and *options borrowed. */
static enum ft_err entry_shape(json_t *cb, int i, const char **name, json_t **options,
                               struct ft_error *err)
{
    const char *key;
    json_t *val;
    if (!json_is_object(cb))
        return entry_error(err, i, "", "a callback must be an object %s",
                           "{\"name\": ..., \"options\": {...}}");
    json_object_foreach(cb, key, val)
    {
        if (strcmp(key, "name") != 0 && strcmp(key, "options") != 0)
            return entry_error(err, i, key,
                               "unknown key '%s' in a callback; use 'name' and "
                               "'options'",
                               key);
    }
    *name = json_string_value(json_object_get(cb, "name"));
    if (!*name)
        return entry_error(err, i, "name", "callback name must be a string: %s",
                           "EvaluationCallback, EarlyStopping or BestModelCheckpoint");
    *options = json_object_get(cb, "options");
    if (*options && !json_is_null(*options) && !json_is_object(*options))
        return entry_error(err, i, "options", "callback options must be %s", "an object or null");
    return FT_OK;
}

static enum ft_err too_many(struct ft_error *err, int i, const char *name)
{
    char msg[96];
    if (strcmp(name, "EvaluationCallback") == 0)
        snprintf(msg, sizeof msg, "at most %d EvaluationCallback entries are allowed",
                 FT_MAX_EVAL_CALLBACKS);
    else
        snprintf(msg, sizeof msg, "at most one %s is allowed", name);
    return entry_error(err, i, "name", "%s", msg);
}

/* Parse callback i (name already checked for shape) into out. */
static enum ft_err parse_one(json_t *cb, int i, struct ft_callbacks *out, struct ft_error *err)
{
    const char *name = NULL;
    json_t *options = NULL;
    enum ft_err rc = entry_shape(cb, i, &name, &options, err);
    if (rc != FT_OK)
        return rc;
    struct cb_ctx c = {i, name, err};
    if (strcmp(name, "EvaluationCallback") == 0) {
        if (out->num_eval == FT_MAX_EVAL_CALLBACKS)
            return too_many(err, i, name);
        return parse_eval(&c, options, &out->eval[out->num_eval++]);
    }
    if (strcmp(name, "EarlyStopping") == 0) {
        if (out->has_early_stopping)
            return too_many(err, i, name);
        out->has_early_stopping = 1;
        return parse_early_stopping(&c, options, &out->early_stopping);
    }
    if (strcmp(name, "BestModelCheckpoint") == 0) {
        if (out->has_best_checkpoint)
            return too_many(err, i, name);
        out->has_best_checkpoint = 1;
        return parse_best_checkpoint(&c, options, &out->best_checkpoint);
    }
    if (strcmp(name, "TrainingCheckpoint") == 0) {
        if (out->has_training_checkpoint)
            return too_many(err, i, name);
        out->has_training_checkpoint = 1;
        return parse_training_checkpoint(&c, options, &out->training_checkpoint);
    }
    if (strcmp(name, "WiSEFTCallback") == 0) {
        if (out->has_wiseft)
            return too_many(err, i, name);
        out->has_wiseft = 1;
        return parse_wiseft(&c, options, &out->wiseft);
    }
    return entry_error(err, i, "name",
                       "unknown callback '%s'; expected EvaluationCallback, EarlyStopping, "
                       "BestModelCheckpoint, TrainingCheckpoint or WiSEFTCallback",
                       name);
}

int ft_monitor_eval_index(const struct ft_callbacks *cb, const char *monitor)
{
    int m = ft_metric_lookup(monitor);
    if (m < 0)
        return -1;
    size_t len = strlen(monitor) - strlen(ft_metric_name(m)); /* prefix incl. its '_' */
    int uncaptioned = -1;
    for (int i = 0; i < cb->num_eval; i++) {
        size_t cl = strlen(cb->eval[i].caption);
        if (!cl) {
            uncaptioned = uncaptioned < 0 ? i : uncaptioned;
            continue;
        }
        /* prefix is "<caption>_" or ends with "_<caption>_" */
        if (len >= cl + 1 && strncmp(monitor + len - cl - 1, cb->eval[i].caption, cl) == 0 &&
            (len == cl + 1 || monitor[len - cl - 2] == '_'))
            return i;
    }
    return uncaptioned;
}

/* Captions tell EvaluationCallbacks apart; metric monitors must find theirs. */
static enum ft_err check_eval_links(json_t *callbacks, struct ft_callbacks *out,
                                    struct ft_error *err)
{
    for (int i = 0; i < out->num_eval; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(out->eval[i].caption, out->eval[j].caption) == 0)
                return ft_error_set(err, FT_EINVAL, "callbacks",
                                    "several EvaluationCallbacks need distinct 'caption' options "
                                    "(two have caption '%s')",
                                    out->eval[i].caption);
    for (size_t i = 0; i < json_array_size(callbacks); i++) {
        const char *name = json_string_value(json_object_get(json_array_get(callbacks, i), "name"));
        int es = name && strcmp(name, "EarlyStopping") == 0;
        int bc = name && strcmp(name, "BestModelCheckpoint") == 0;
        struct ft_early_stopping *e = es ? &out->early_stopping : NULL;
        struct ft_best_checkpoint *b = bc ? &out->best_checkpoint : NULL;
        if (!(e && e->kind == FT_MON_METRIC) && !(b && b->kind == FT_MON_METRIC))
            continue;
        const char *monitor = e ? e->monitor : b->monitor;
        int idx = out->num_eval ? ft_monitor_eval_index(out, monitor) : 0;
        if (idx < 0)
            return entry_error(err, (int)i, "options.monitor",
                               "monitor '%s' matches the caption of no EvaluationCallback",
                               monitor);
        if (e)
            e->eval_index = idx;
        else
            b->eval_index = idx;
    }
    return FT_OK;
}

enum ft_err ft_callbacks_parse(json_t *callbacks, struct ft_callbacks *out, struct ft_error *err)
{
    memset(out, 0, sizeof *out);
    if (!callbacks || json_is_null(callbacks))
        return FT_OK;
    if (!json_is_array(callbacks))
        return ft_error_set(err, FT_EINVAL, "callbacks",
                            "callbacks must be an array of "
                            "{\"name\", \"options\"} objects");
    for (size_t i = 0; i < json_array_size(callbacks); i++) {
        enum ft_err rc = parse_one(json_array_get(callbacks, i), (int)i, out, err);
        if (rc != FT_OK) {
            memset(out, 0, sizeof *out);
            return rc;
        }
    }
    enum ft_err rc = check_eval_links(callbacks, out, err);
    if (rc != FT_OK)
        memset(out, 0, sizeof *out);
    return rc;
}

/* ---- per-epoch state -------------------------------------------------------------------- */

/* improvement(cur, ref): false for NaN/inf; true without a ref; strict, in double. */
static int improves(double cur, int has_ref, double ref, enum ft_mode mode, double min_delta)
{
    if (!isfinite(cur))
        return 0;
    if (!has_ref)
        return 1;
    return mode == FT_MODE_MIN ? cur < ref - min_delta : cur > ref + min_delta;
}

int ft_early_stopping_update(struct ft_early_stopping *es, int has_value, double value,
                             int *improved)
{
    int imp = has_value && improves(value, es->has_ref, es->ref, es->mode, es->min_delta);
    if (improved)
        *improved = imp;
    if (!has_value)
        return 0;
    if (!imp) {
        es->wait++;
        return es->wait >= es->patience;
    }
    es->wait = 0;
    if (!es->has_baseline) {
        es->has_ref = 1;
        es->ref = value;
    }
    return 0;
}

int ft_best_checkpoint_update(struct ft_best_checkpoint *b, int epoch, int has_value, double value)
{
    if (!has_value || !improves(value, b->best_epoch > 0, b->best_value, b->mode, 0.0))
        return 0;
    b->best_epoch = epoch;
    b->best_value = value;
    return 1;
}

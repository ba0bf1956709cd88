/* fit_config.c — the run config of finetuner.fit(), built from struct ft_fit_params.
 *
 * Shape (common/runspec.h): {"name", "description", "config": {"model": {"name", "options",
 * "output_dim", "freeze", "artifact"}, "data": {..., "sampler", "standardize": {"mean",
 * "std"}}, "hyper_parameters": {..., "loss_optimizer", "scheduler", ...}, "callbacks": [...],
 * "seed"}}. Only the
 * fields the caller set are written, and a section left empty is left out; the server
 * validates everything and fills defaults, so
 * the client does not duplicate its rules. Options texts are parsed here only to embed them
 * as JSON (and to name the field when one is malformed). Also the callback constructors. */
#include "fit_config.h"

#include "transport.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ft_callback ft_evaluation_callback(const char *query_data, const char *index_data, int limit,
                                          const char *distance)
{
    return (struct ft_callback){.name = "EvaluationCallback",
                                .query_data = query_data,
                                .index_data = index_data,
                                .limit = limit,
                                .distance = distance,
                                .patience = -1,
                                .min_delta = -1};
}

struct ft_callback ft_best_model_checkpoint(const char *monitor, const char *mode)
{
    return (struct ft_callback){.name = "BestModelCheckpoint",
                                .monitor = monitor,
                                .mode = mode,
                                .patience = -1,
                                .min_delta = -1};
}

struct ft_callback ft_early_stopping(const char *monitor, const char *mode, int patience,
                                     double min_delta)
{
    return (struct ft_callback){.name = "EarlyStopping",
                                .monitor = monitor,
                                .mode = mode,
                                .patience = patience,
                                .min_delta = min_delta};
}

/* ---- building blocks: each returns -1 on failure with the client's error set ---------- */

static int oom(ft_client *c)
{
    return ftc_fail(c, "out_of_memory", NULL, "out of memory");
}

/* o[key] = v (stolen; v NULL = out of memory). */
static int put(ft_client *c, json_t *o, const char *key, json_t *v)
{
    return json_object_set_new(o, key, v) == 0 ? 0 : oom(c);
}

static int put_str(ft_client *c, json_t *o, const char *key, const char *s)
{
    return s ? put(c, o, key, json_string(s)) : 0;
}

/* o[key] = the JSON object parsed from text (NULL = skip); param names the field on error. */
static int put_options(ft_client *c, json_t *o, const char *key, const char *text,
                       const char *param)
{
    json_error_t jerr;
    if (!text)
        return 0;
    json_t *v = json_loads(text, 0, &jerr);
    if (!v)
        return ftc_fail(c, "invalid_argument", param, "%s is not valid JSON: %s (column %d)", param,
                        jerr.text, jerr.column);
    if (!json_is_object(v)) {
        json_decref(v);
        return ftc_fail(c, "invalid_argument", param, "%s must be a JSON object", param);
    }
    return put(c, o, key, v);
}

static json_t *new_object(ft_client *c)
{
    json_t *o = json_object();
    if (!o)
        oom(c);
    return o;
}

/* o[key] = section (stolen) when fill succeeded and section is not empty; else drop it. */
static int attach(ft_client *c, json_t *o, const char *key, json_t *section, int fill_rc)
{
    if (fill_rc != 0 || json_object_size(section) == 0) {
        json_decref(section);
        return fill_rc;
    }
    return put(c, o, key, section);
}

/* ---- sections ---------------------------------------------------------------------------- */

static int put_int(ft_client *c, json_t *o, const char *key, int v)
{
    return v != 0 ? put(c, o, key, json_integer(v)) : 0;
}

static int fill_model(ft_client *c, json_t *m, const struct ft_fit_params *p)
{
    if (put_str(c, m, "name", p->model) != 0 ||
        put_options(c, m, "options", p->model_options, "model_options") != 0 ||
        put_int(c, m, "output_dim", p->output_dim) != 0)
        return -1;
    if (p->has_freeze && put(c, m, "freeze", json_boolean(p->freeze)) != 0)
        return -1;
    return put_str(c, m, "artifact", p->model_artifact);
}

/* data.standardize {"mean", "std"} when has_standardize. */
static int add_standardize(ft_client *c, json_t *d, const struct ft_fit_params *p)
{
    if (!p->has_standardize)
        return 0;
    json_t *st = new_object(c);
    if (!st || put(c, d, "standardize", st) != 0)
        return -1;
    if (put(c, st, "mean", json_real(p->standardize_mean)) != 0)
        return -1;
    return put(c, st, "std", json_real(p->standardize_std));
}

static int fill_data(ft_client *c, json_t *d, const struct ft_fit_params *p)
{
    if (put_str(c, d, "train_data", p->train_data) != 0 ||
        put_str(c, d, "eval_data", p->eval_data) != 0)
        return -1;
    if (p->val_split != 0 && put(c, d, "val_split", json_real(p->val_split)) != 0)
        return -1;
    if (put_int(c, d, "num_items_per_class", p->num_items_per_class) != 0 ||
        put_str(c, d, "sampler", p->sampler) != 0)
        return -1;
    return add_standardize(c, d, p);
}

static int add_numbers(ft_client *c, json_t *hp, const struct ft_fit_params *p)
{
    if (p->learning_rate != 0 && put(c, hp, "learning_rate", json_real(p->learning_rate)) != 0)
        return -1;
    if (put_int(c, hp, "epochs", p->epochs) != 0 ||
        put_int(c, hp, "batch_size", p->batch_size) != 0)
        return -1;
    return 0;
}

/* name and name_options (param = the field's name in struct ft_fit_params). */
static int put_named(ft_client *c, json_t *hp, const char *key, const char *name,
                     const char *opts_key, const char *opts)
{
    if (put_str(c, hp, key, name) != 0)
        return -1;
    return put_options(c, hp, opts_key, opts, opts_key);
}

static int fill_hyper(ft_client *c, json_t *hp, const struct ft_fit_params *p)
{
    if (put_named(c, hp, "loss", p->loss, "loss_options", p->loss_options) != 0 ||
        put_named(c, hp, "miner", p->miner, "miner_options", p->miner_options) != 0 ||
        put_named(c, hp, "optimizer", p->optimizer, "optimizer_options", p->optimizer_options) !=
            0 ||
        put_named(c, hp, "loss_optimizer", p->loss_optimizer, "loss_optimizer_options",
                  p->loss_optimizer_options) != 0 ||
        put_named(c, hp, "scheduler", p->scheduler, "scheduler_options", p->scheduler_options) != 0)
        return -1;
    return add_numbers(c, hp, p);
}

/* The typed options of cb into opts. */
static int typed_options(ft_client *c, json_t *opts, const struct ft_callback *cb)
{
    if (put_str(c, opts, "query_data", cb->query_data) != 0 ||
        put_str(c, opts, "index_data", cb->index_data) != 0 ||
        put_str(c, opts, "distance", cb->distance) != 0 ||
        put_str(c, opts, "monitor", cb->monitor) != 0 || put_str(c, opts, "mode", cb->mode) != 0)
        return -1;
    if (cb->limit > 0 && put(c, opts, "limit", json_integer(cb->limit)) != 0)
        return -1;
    if (cb->patience >= 0 && strcmp(cb->name, "EarlyStopping") == 0 &&
        put(c, opts, "patience", json_integer(cb->patience)) != 0)
        return -1;
    if (cb->min_delta >= 0 && strcmp(cb->name, "EarlyStopping") == 0 &&
        put(c, opts, "min_delta", json_real(cb->min_delta)) != 0)
        return -1;
    return 0;
}

static int add_callback(ft_client *c, json_t *list, const struct ft_callback *cb, size_t i)
{
    char param[64];
    snprintf(param, sizeof param, "callbacks[%zu].options", i);
    if (!cb->name || !cb->name[0])
        return ftc_fail(c, "invalid_argument", "callbacks", "callbacks[%zu] has no name", i);
    json_t *entry = new_object(c);
    if (!entry || json_array_append_new(list, entry) != 0)
        return entry ? oom(c) : -1;
    if (put_str(c, entry, "name", cb->name) != 0)
        return -1;
    if (cb->options)
        return put_options(c, entry, "options", cb->options, param);
    json_t *opts = new_object(c);
    if (!opts || put(c, entry, "options", opts) != 0)
        return -1;
    return typed_options(c, opts, cb);
}

static int add_callbacks(ft_client *c, json_t *cfg, const struct ft_fit_params *p)
{
    if (p->num_callbacks == 0)
        return 0;
    json_t *list = json_array();
    if (!list || put(c, cfg, "callbacks", list) != 0)
        return -1;
    for (size_t i = 0; i < p->num_callbacks; i++)
        if (add_callback(c, list, &p->callbacks[i], i) != 0)
            return -1;
    return 0;
}

/* cfg[key] = a section filled by fill, left out when empty. */
static int add_section(ft_client *c, json_t *cfg, const char *key,
                       int (*fill)(ft_client *, json_t *, const struct ft_fit_params *),
                       const struct ft_fit_params *p)
{
    json_t *section = new_object(c);
    if (!section)
        return -1;
    return attach(c, cfg, key, section, fill(c, section, p));
}

static int add_config(ft_client *c, json_t *body, const struct ft_fit_params *p)
{
    json_t *cfg = new_object(c);
    if (!cfg || put(c, body, "config", cfg) != 0)
        return -1;
    if (add_section(c, cfg, "model", fill_model, p) != 0 ||
        add_section(c, cfg, "data", fill_data, p) != 0 ||
        add_section(c, cfg, "hyper_parameters", fill_hyper, p) != 0 ||
        add_callbacks(c, cfg, p) != 0)
        return -1;
    if (p->has_seed && put(c, cfg, "seed", json_integer((json_int_t)p->seed)) != 0)
        return -1;
    return 0;
}

char *ftc_fit_body(ft_client *c, const struct ft_fit_params *p)
{
    if (p->num_callbacks && !p->callbacks) {
        ftc_fail(c, "invalid_argument", "callbacks", "num_callbacks is %zu but callbacks is NULL",
                 p->num_callbacks);
        return NULL;
    }
    json_t *body = new_object(c);
    char *text = NULL;
    if (body && put_str(c, body, "name", p->run_name) == 0 &&
        put_str(c, body, "description", p->description) == 0 && add_config(c, body, p) == 0) {
        text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (!text)
            oom(c);
    }
    json_decref(body);
    return text;
}

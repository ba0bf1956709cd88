/* runspec.c — strict parsing of the run config into struct ft_run_config plus the normalised
 * JSON (every default filled in). Each section is checked for unknown keys first, so a typo is
 * a 400 naming the key rather than a silently ignored option. */
#include "runspec.h"
#include "options.h"

#include "schedule.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define P(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)

/* Reject keys of obj not in allowed (NULL-terminated). */
static enum ft_err check_keys(json_t *obj, const char *const *allowed, const char *path,
                              struct ft_error *err)
{
    const char *key = ft_options_unknown_key(obj, allowed);
    char p[256];
    if (!key)
        return FT_OK;
    P(p, "%s.%s", path, key);
    return ft_error_set(err, FT_EINVAL, p, "unknown field '%s' in %s", key, path);
}

/* obj[key] as an object (NULL when absent or null); FT_EINVAL when another type. */
static enum ft_err get_object(json_t *obj, const char *key, const char *path, json_t **out,
                              struct ft_error *err)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return FT_OK;
    if (!json_is_object(v)) {
        char p[256];
        P(p, "%s.%s", path, key);
        return ft_error_set(err, FT_EINVAL, p, "%s must be an object", p);
    }
    *out = v;
    return FT_OK;
}

static enum ft_err get_string(json_t *obj, const char *key, const char *path, char *dst, size_t cap,
                              int required, struct ft_error *err)
{
    json_t *v = json_object_get(obj, key);
    char p[256];
    P(p, "%s.%s", path, key);
    if (!v || json_is_null(v)) {
        if (required)
            return ft_error_set(err, FT_EINVAL, p, "%s is required", p);
        return FT_OK;
    }
    if (!json_is_string(v))
        return ft_error_set(err, FT_EINVAL, p, "%s must be a string", p);
    if (json_string_length(v) == 0 || json_string_length(v) >= cap)
        return ft_error_set(err, FT_EINVAL, p, "%s must be 1 to %zu characters", p, cap - 1);
    snprintf(dst, cap, "%s", json_string_value(v));
    return FT_OK;
}

/* A number in [lo, hi] (inclusive); absent keeps *dst. */
static enum ft_err get_number(json_t *obj, const char *key, const char *path, double lo, double hi,
                              double *dst, struct ft_error *err)
{
    json_t *v = json_object_get(obj, key);
    char p[256];
    if (!v || json_is_null(v))
        return FT_OK;
    P(p, "%s.%s", path, key);
    if (!json_is_number(v))
        return ft_error_set(err, FT_EINVAL, p, "%s must be a number", p);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return ft_error_set(err, FT_EINVAL, p, "%s must be in [%g, %g], got %g", p, lo, hi, x);
    *dst = x;
    return FT_OK;
}

static enum ft_err get_int(json_t *obj, const char *key, const char *path, long lo, long hi,
                           int *dst, struct ft_error *err)
{
    json_t *v = json_object_get(obj, key);
    char p[256];
    if (!v || json_is_null(v))
        return FT_OK;
    P(p, "%s.%s", path, key);
    if (!json_is_integer(v))
        return ft_error_set(err, FT_EINVAL, p, "%s must be an integer", p);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return ft_error_set(err, FT_EINVAL, p, "%s must be in [%ld, %ld], got %lld", p, lo, hi,
                            (long long)x);
    *dst = (int)x;
    return FT_OK;
}

static enum ft_err get_bool(json_t *obj, const char *key, const char *path, int *dst,
                            struct ft_error *err)
{
    json_t *v = json_object_get(obj, key);
    char p[256];
    if (!v || json_is_null(v))
        return FT_OK;
    P(p, "%s.%s", path, key);
    if (!json_is_boolean(v))
        return ft_error_set(err, FT_EINVAL, p, "%s must be true or false", p);
    *dst = json_is_true(v);
    return FT_OK;
}

#define TRY(x)                \
    do {                      \
        enum ft_err e_ = (x); \
        if (e_ != FT_OK)      \
            return e_;        \
    } while (0)

/* model.artifact "EXPERIMENT/RUN": an earlier run whose artifact the run starts from. */
static enum ft_err parse_artifact(json_t *model, struct ft_run_config *c, struct ft_error *err)
{
    char exp[FT_NAME_MAX];
    TRY(get_string(model, "artifact", "config.model", c->model_artifact, sizeof c->model_artifact,
                   0, err));
    if (!c->model_artifact[0])
        return FT_OK;
    const char *slash = strchr(c->model_artifact, '/');
    size_t n = slash ? (size_t)(slash - c->model_artifact) : 0;
    if (!slash || n == 0 || n >= sizeof exp || !slash[1] || strchr(slash + 1, '/'))
        return ft_error_set(err, FT_EINVAL, "config.model.artifact",
                            "artifact must be \"EXPERIMENT/RUN\", the run whose model to start "
                            "from");
    return FT_OK;
}

static enum ft_err parse_model(json_t *model, struct ft_run_config *c, struct ft_error *err)
{
    static const char *const keys[] = {"name", "options", "output_dim", "freeze", "artifact", NULL};
    json_t *opts;
    if (!model)
        return ft_error_set(err, FT_EINVAL, "config.model", "config.model is required");
    TRY(check_keys(model, keys, "config.model", err));
    TRY(parse_artifact(model, c, err));
    /* with an artifact the architecture comes from its metadata (the server fills it in) */
    TRY(get_string(model, "name", "config.model", c->model_name, sizeof c->model_name,
                   !c->model_artifact[0], err));
    TRY(get_object(model, "options", "config.model", &opts, err));
    if (c->model_name[0])
        TRY(ft_model_check_options(c->model_name, opts, &c->model_options, err));
    else if (opts)
        return ft_error_set(err, FT_EINVAL, "config.model.options",
                            "options describe a model: give its name too");
    TRY(get_int(model, "output_dim", "config.model", 1, 65536, &c->output_dim, err));
    TRY(get_bool(model, "freeze", "config.model", &c->freeze, err));
    if (c->freeze && !c->output_dim && !c->model_artifact[0])
        return ft_error_set(err, FT_EINVAL, "config.model.freeze",
                            "freeze trains only the projection head: set model.output_dim too");
    return FT_OK;
}

/* data.standardize {"mean", "std"}: every feature becomes (x - mean) / std. */
static enum ft_err parse_standardize(json_t *data, struct ft_run_config *c, struct ft_error *err)
{
    static const char *const keys[] = {"mean", "std", NULL};
    const char *path = "config.data.standardize";
    json_t *st;
    TRY(get_object(data, "standardize", "config.data", &st, err));
    if (!st)
        return FT_OK;
    TRY(check_keys(st, keys, path, err));
    if (!json_object_get(st, "mean") || !json_object_get(st, "std"))
        return ft_error_set(err, FT_EINVAL, path, "standardize needs both mean and std");
    TRY(get_number(st, "mean", path, -1e6, 1e6, &c->standardize_mean, err));
    TRY(get_number(st, "std", path, 1e-12, 1e6, &c->standardize_std, err));
    c->standardize = 1;
    return FT_OK;
}

static enum ft_err parse_data(json_t *data, struct ft_run_config *c, struct ft_error *err)
{
    static const char *const keys[] = {
        "train_data", "eval_data",   "val_split", "num_items_per_class",
        "sampler",    "standardize", NULL};
    if (!data)
        return ft_error_set(err, FT_EINVAL, "config.data.train_data",
                            "config.data.train_data is required");
    TRY(check_keys(data, keys, "config.data", err));
    TRY(get_string(data, "train_data", "config.data", c->train_data, sizeof c->train_data, 1, err));
    TRY(get_string(data, "eval_data", "config.data", c->eval_data, sizeof c->eval_data, 0, err));
    TRY(get_number(data, "val_split", "config.data", 0.0, 0.99, &c->val_split, err));
    TRY(get_int(data, "num_items_per_class", "config.data", 2, 1024, &c->num_items_per_class, err));
    TRY(get_string(data, "sampler", "config.data", c->sampler, sizeof c->sampler, 0, err));
    if (strcmp(c->sampler, "auto") && strcmp(c->sampler, "class") && strcmp(c->sampler, "random"))
        return ft_error_set(err, FT_EINVAL, "config.data.sampler",
                            "sampler must be \"auto\", \"class\" or \"random\"");
    TRY(parse_standardize(data, c, err));
    if (c->eval_data[0] && c->val_split > 0)
        return ft_error_set(err, FT_EINVAL, "config.data.val_split",
                            "val_split holds out part of train_data for val_loss; it cannot be "
                            "combined with eval_data");
    return FT_OK;
}

static enum ft_err parse_loss(json_t *hp, struct ft_run_config *c, struct ft_error *err)
{
    json_t *lo = json_object_get(hp, "loss_options"), *mo = json_object_get(hp, "miner_options");
    TRY(get_string(hp, "loss", "config.hyper_parameters", c->loss, sizeof c->loss, 0, err));
    TRY(get_string(hp, "miner", "config.hyper_parameters", c->miner, sizeof c->miner, 0, err));
    TRY(ft_loss_check(c->loss, json_is_null(lo) ? NULL : lo, c->miner[0] ? c->miner : NULL,
                      json_is_null(mo) ? NULL : mo, &c->loss_options, &c->miner_options, err));
    return FT_OK;
}

/* loss_optimizer for a loss with parameters (ArcFaceLoss's class weights): by default the
 * run's optimizer with its options. */
static enum ft_err parse_loss_optimizer(json_t *hp, struct ft_run_config *c, struct ft_error *err)
{
    json_t *oo = json_object_get(hp, "loss_optimizer_options");
    TRY(get_string(hp, "loss_optimizer", "config.hyper_parameters", c->loss_optimizer,
                   sizeof c->loss_optimizer, 0, err));
    if (!c->loss_optimizer[0]) {
        if (oo && !json_is_null(oo))
            return ft_error_set(err, FT_EINVAL, "config.hyper_parameters.loss_optimizer_options",
                                "loss_optimizer_options given without a loss_optimizer");
        snprintf(c->loss_optimizer, sizeof c->loss_optimizer, "%s", c->optimizer);
        c->loss_optimizer_options = json_deep_copy(c->optimizer_options);
    } else {
        enum ft_err e = ft_optim_check(c->loss_optimizer, json_is_null(oo) ? NULL : oo,
                                       &c->loss_optimizer_options, err);
        if (e != FT_OK) { /* name the loss optimizer's fields, not the optimizer's */
            if (err && strncmp(err->param, "config.hyper_parameters.optimizer", 33) == 0) {
                char p[sizeof err->param];
                snprintf(p, sizeof p, "config.hyper_parameters.loss_%.90s", err->param + 24);
                snprintf(err->param, sizeof err->param, "%s", p);
                ft_utf8_sanitize(err->param); /* the cut may split a character */
            }
            return e;
        }
    }
    return ft_optim_opts_from_json(c->loss_optimizer, c->loss_optimizer_options, &c->loss_optim);
}

static enum ft_err parse_optimizer(json_t *hp, struct ft_run_config *c, struct ft_error *err)
{
    json_t *oo = json_object_get(hp, "optimizer_options");
    TRY(get_string(hp, "optimizer", "config.hyper_parameters", c->optimizer, sizeof c->optimizer, 0,
                   err));
    TRY(ft_optim_check(c->optimizer, json_is_null(oo) ? NULL : oo, &c->optimizer_options, err));
    return ft_optim_opts_from_json(c->optimizer, c->optimizer_options, &c->optim);
}

static enum ft_err parse_scheduler(json_t *hp, struct ft_run_config *c, struct ft_error *err)
{
    json_t *so = json_object_get(hp, "scheduler_options");
    TRY(get_string(hp, "scheduler", "config.hyper_parameters", c->scheduler, sizeof c->scheduler, 0,
                   err));
    return ft_schedule_check(c->scheduler[0] ? c->scheduler : NULL, json_is_null(so) ? NULL : so,
                             &c->scheduler_options, err);
}

static enum ft_err parse_hyper(json_t *hp, struct ft_run_config *c, struct ft_error *err)
{
    static const char *const keys[] = {"loss",           "loss_options",
                                       "miner",          "miner_options",
                                       "optimizer",      "optimizer_options",
                                       "loss_optimizer", "loss_optimizer_options",
                                       "scheduler",      "scheduler_options",
                                       "learning_rate",  "epochs",
                                       "batch_size",     NULL};
    const char *path = "config.hyper_parameters";
    json_t *empty = json_object();
    if (!hp)
        hp = empty;
    enum ft_err e = check_keys(hp, keys, path, err);
    if (e == FT_OK)
        e = parse_loss(hp, c, err);
    if (e == FT_OK)
        e = parse_optimizer(hp, c, err);
    if (e == FT_OK)
        e = parse_loss_optimizer(hp, c, err);
    if (e == FT_OK)
        e = parse_scheduler(hp, c, err);
    if (e == FT_OK)
        e = get_number(hp, "learning_rate", path, 1e-12, 10.0, &c->learning_rate, err);
    if (e == FT_OK)
        e = get_int(hp, "epochs", path, 1, 10000, &c->epochs, err);
    if (e == FT_OK)
        e = get_int(hp, "batch_size", path, 2, 65536, &c->batch_size, err);
    json_decref(empty);
    if (e == FT_OK && c->batch_size && strcmp(c->sampler, "random") != 0 &&
        c->batch_size % c->num_items_per_class != 0)
        e = ft_error_set(err, FT_EINVAL, "config.hyper_parameters.batch_size",
                         "batch_size (%d) must be a multiple of data.num_items_per_class (%d)",
                         c->batch_size, c->num_items_per_class);
    return e;
}

static void set_defaults(struct ft_run_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->loss, sizeof c->loss, "TripletMarginLoss");
    snprintf(c->optimizer, sizeof c->optimizer, "Adam");
    ft_optim_opts_default(&c->optim, FT_OPTIM_ADAM);
    c->learning_rate = 1e-3;
    c->epochs = 5;
    c->batch_size = 0; /* auto: chosen from the data by the trainer */
    c->num_items_per_class = 4;
    snprintf(c->sampler, sizeof c->sampler, "auto");
    c->seed = 42;
}

static json_t *normalized_json(const struct ft_run_config *c, json_t *config)
{
    json_t *model =
        json_pack("{s:s, s:o, s:o, s:b, s:s?}", "name", c->model_name, "options",
                  c->model_options ? json_deep_copy(c->model_options) : json_null(), "output_dim",
                  c->output_dim ? json_integer(c->output_dim) : json_null(), "freeze", c->freeze,
                  "artifact", c->model_artifact[0] ? c->model_artifact : NULL);
    json_t *data = json_pack("{s:s, s:s?, s:f, s:i, s:s, s:o}", "train_data", c->train_data,
                             "eval_data", c->eval_data[0] ? c->eval_data : NULL, "val_split",
                             c->val_split, "num_items_per_class", c->num_items_per_class, "sampler",
                             c->sampler, "standardize",
                             c->standardize ? json_pack("{s:f, s:f}", "mean", c->standardize_mean,
                                                        "std", c->standardize_std)
                                            : json_null());
    json_t *hp = json_pack(
        "{s:s, s:O, s:s?, s:O, s:s, s:O, s:s?, s:O, s:f, s:i, s:o}", "loss", c->loss,
        "loss_options", c->loss_options, "miner", c->miner[0] ? c->miner : NULL, "miner_options",
        c->miner_options, "optimizer", c->optimizer, "optimizer_options", c->optimizer_options,
        "scheduler", c->scheduler[0] ? c->scheduler : NULL, "scheduler_options",
        c->scheduler_options, "learning_rate", c->learning_rate, "epochs", c->epochs, "batch_size",
        c->batch_size ? json_integer(c->batch_size) : json_null());
    if (hp && strcmp(c->loss, "ArcFaceLoss") == 0) {
        json_object_set_new(hp, "loss_optimizer", json_string(c->loss_optimizer));
        json_object_set(hp, "loss_optimizer_options", c->loss_optimizer_options);
    }
    json_t *cbs = json_object_get(config, "callbacks");
    cbs = cbs && !json_is_null(cbs) ? json_incref(cbs) : json_array();
    return json_pack("{s:o, s:o, s:o, s:o, s:I}", "model", model, "data", data, "hyper_parameters",
                     hp, "callbacks", cbs, "seed", (json_int_t)c->seed);
}

/* CLIPLoss learns from pairs: batches of exactly two items per label. */
static enum ft_err check_loss_data(struct ft_run_config *c, json_t *data, struct ft_error *err)
{
    if (strcmp(c->loss, "CLIPLoss") != 0)
        return FT_OK;
    if (json_object_get(data, "num_items_per_class") && c->num_items_per_class != 2)
        return ft_error_set(err, FT_EINVAL, "config.data.num_items_per_class",
                            "CLIPLoss learns from pairs: num_items_per_class must be 2");
    if (strcmp(c->sampler, "random") == 0)
        return ft_error_set(err, FT_EINVAL, "config.data.sampler",
                            "CLIPLoss needs the class sampler (two items per label in a batch)");
    c->num_items_per_class = 2;
    return FT_OK;
}

static enum ft_err parse_all(json_t *config, struct ft_run_config *c, struct ft_error *err)
{
    static const char *const keys[] = {"model",     "data", "hyper_parameters",
                                       "callbacks", "seed", NULL};
    json_t *model, *data, *hp;
    if (!json_is_object(config))
        return ft_error_set(err, FT_EINVAL, "config", "config must be an object");
    TRY(check_keys(config, keys, "config", err));
    TRY(get_object(config, "model", "config", &model, err));
    TRY(get_object(config, "data", "config", &data, err));
    TRY(get_object(config, "hyper_parameters", "config", &hp, err));
    TRY(parse_model(model, c, err));
    TRY(parse_data(data, c, err));
    TRY(parse_hyper(hp, c, err));
    TRY(check_loss_data(c, data, err));
    json_t *seed = json_object_get(config, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed) || json_integer_value(seed) < 0)
            return ft_error_set(err, FT_EINVAL, "config.seed",
                                "seed must be a non-negative integer");
        c->seed = (uint64_t)json_integer_value(seed);
    }
    json_t *cbs = json_object_get(config, "callbacks");
    if (cbs && !json_is_null(cbs) && !json_is_array(cbs))
        return ft_error_set(err, FT_EINVAL, "config.callbacks", "callbacks must be a list");
    enum ft_err e = ft_callbacks_parse(cbs && json_is_array(cbs) ? cbs : NULL, &c->callbacks, err);
    if (e != FT_OK) {
        if (err) {
            char p[sizeof err->param];
            snprintf(p, sizeof p, "config.%.119s", err->param);
            snprintf(err->param, sizeof err->param, "%s", p);
            ft_utf8_sanitize(err->param); /* the cut may split a character */
        }
        return e;
    }
    if (c->callbacks.has_wiseft && !c->model_artifact[0])
        return ft_error_set(err, FT_EINVAL, "config.callbacks",
                            "WiSEFTCallback interpolates between the starting and the finetuned "
                            "model: it needs model.artifact (a run to start from)");
    return ft_run_config_check_monitors(c, config, err);
}

void ft_run_config_clear(struct ft_run_config *c)
{
    json_decref(c->loss_options);
    json_decref(c->miner_options);
    json_decref(c->loss_optimizer_options);
    c->loss_options = c->miner_options = c->loss_optimizer_options = NULL;
    json_decref(c->model_options);
    c->model_options = NULL;
    json_decref(c->optimizer_options);
    json_decref(c->scheduler_options);
    c->optimizer_options = NULL;
    c->scheduler_options = NULL;
}

enum ft_err ft_run_config_parse(json_t *config, struct ft_run_config *out, json_t **normalized,
                                struct ft_error *err)
{
    set_defaults(out);
    if (normalized)
        *normalized = NULL;
    enum ft_err e = parse_all(config, out, err);
    if (e != FT_OK) {
        ft_run_config_clear(out);
        return e;
    }
    if (normalized) {
        *normalized = normalized_json(out, config);
        if (!*normalized)
            return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    }
    return FT_OK;
}

static int add_name(const char **names, int n, int cap, const char *name)
{
    if (!name || !name[0] || n >= cap)
        return n;
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return n;
    names[n] = name;
    return n + 1;
}

int ft_run_config_datasets(const struct ft_run_config *cfg, const char **names, int cap)
{
    int n = add_name(names, 0, cap, cfg->train_data);
    n = add_name(names, n, cap, cfg->eval_data);
    for (int i = 0; i < cfg->callbacks.num_eval; i++) {
        n = add_name(names, n, cap, cfg->callbacks.eval[i].query_data);
        n = add_name(names, n, cap, cfg->callbacks.eval[i].index_data);
    }
    return n;
}

/* The index of the first callback named name in the config's list (for the error param). */
static int callback_index(json_t *config, const char *name)
{
    json_t *cbs = json_object_get(config, "callbacks");
    for (size_t i = 0; i < json_array_size(cbs); i++) {
        const char *n = json_string_value(json_object_get(json_array_get(cbs, i), "name"));
        if (n && strcmp(n, name) == 0)
            return (int)i;
    }
    return 0;
}

static enum ft_err check_series(const struct ft_run_config *cfg, json_t *config, const char *cbname,
                                enum ft_monitor_kind kind, const char *monitor,
                                struct ft_error *err)
{
    char p[128];
    snprintf(p, sizeof p, "config.callbacks[%d].options.monitor", callback_index(config, cbname));
    if (kind == FT_MON_VAL_LOSS && !cfg->eval_data[0] && cfg->val_split <= 0)
        return ft_error_set(err, FT_EINVAL, p,
                            "%s monitors val_loss, which needs data.eval_data or data.val_split",
                            cbname);
    if (kind == FT_MON_METRIC && cfg->callbacks.num_eval == 0)
        return ft_error_set(err, FT_EINVAL, p,
                            "%s monitors '%s', which needs an EvaluationCallback", cbname, monitor);
    return FT_OK;
}

enum ft_err ft_run_config_check_monitors(const struct ft_run_config *cfg, json_t *config,
                                         struct ft_error *err)
{
    const struct ft_callbacks *cb = &cfg->callbacks;
    if (cb->has_early_stopping)
        TRY(check_series(cfg, config, "EarlyStopping", cb->early_stopping.kind,
                         cb->early_stopping.monitor, err));
    if (cb->has_best_checkpoint)
        TRY(check_series(cfg, config, "BestModelCheckpoint", cb->best_checkpoint.kind,
                         cb->best_checkpoint.monitor, err));
    return FT_OK;
}

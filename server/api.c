/* api.c — route table and handlers of the REST API (see api.h and the README's API table).
 *
 * The router first finds the request's owner (auth.h) and wraps the two creating routes in
 * their Idempotency-Key; handlers then pass the owner to every store call by name. Handlers are
 * small: check the path's names, parse the body strictly, call the store, and answer JSON.
 * Dataset uploads parse into memory (common/dataset.c), write the stored file under a
 * temporary name, then publish metadata and file together. */
#include "api.h"

#include "auth.h"
#include "dataset.h"
#include "log.h"
#include "runspec.h"
#include "safetensors.h"

#include <dirent.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define API_PREFIX "/api/v1"
#define MAX_SEGS 8

/* rows and labels of the last dataset check_dataset looked at */
struct ds_shape {
    int64_t rows;
    int labels;
};

struct ctx {
    struct ft_api *api;
    const struct ft_http_request *req;
    struct ft_http_response *resp;
    const char *cap[MAX_SEGS]; /* captured "*" segments */
    struct ds_shape shape;     /* set by check_dataset */
    char owner[FT_OWNER_MAX];  /* who makes the request (auth.h) */
    char segbuf[1024];
};

typedef void (*handler_fn)(struct ctx *c);

/* ---- responses ---- */

static void respond_json(struct ctx *c, int status, json_t *body)
{
    c->resp->status = status;
    c->resp->content_type = "application/json";
    c->resp->kind = FT_BODY_BUFFER;
    c->resp->body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(10));
    c->resp->body_len = c->resp->body ? strlen(c->resp->body) : 0;
    json_decref(body);
}

char *ft_api_error_body(const struct ft_error *err)
{
    char message[sizeof err->message], param[sizeof err->param];
    /* valid UTF-8 even when a caller edited err after ft_error_set (json_pack rejects less) */
    snprintf(message, sizeof message, "%s",
             err->message[0] ? err->message : ft_err_message(err->code));
    snprintf(param, sizeof param, "%s", err->param);
    ft_utf8_sanitize(message);
    ft_utf8_sanitize(param);
    json_t *o = json_pack("{s:{s:s, s:s, s:s?}}", "error", "code", ft_err_name(err->code),
                          "message", message, "param", param[0] ? param : NULL);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void respond_error(struct ctx *c, const struct ft_error *err)
{
    c->resp->status = ft_err_http_status(err->code);
    c->resp->content_type = "application/json";
    c->resp->kind = FT_BODY_BUFFER;
    c->resp->body = ft_api_error_body(err);
    c->resp->body_len = c->resp->body ? strlen(c->resp->body) : 0;
}

static void fail(struct ctx *c, enum ft_err code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct ctx *c, enum ft_err code, const char *param, const char *fmt, ...)
{
    struct ft_error err;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ft_error_set(&err, code, param, "%s", msg);
    respond_error(c, &err);
}

static void respond_deleted(struct ctx *c, const char *name)
{
    respond_json(c, 200, json_pack("{s:s, s:b}", "name", name, "deleted", 1));
}

/* Check a name from the path; answers 400 and returns 0 when invalid. */
static int check_name(struct ctx *c, const char *name, const char *param)
{
    if (ft_store_valid_name(name))
        return 1;
    const char *what = strcmp(param, "name") == 0 ? "" : param; /* not "invalid name name" */
    fail(c, FT_EINVAL, param,
         "invalid %s%sname '%.100s': use 1 to 100 of A-Z a-z 0-9 . _ - (not starting with .)", what,
         *what ? " " : "", name);
    return 0;
}

/* Whether the JSON text s[0..n) nests arrays/objects deeper than max (brackets inside strings
 * do not count). Checked before parsing, so a deep body costs a scan, not a tree. */
static int json_too_deep(const char *s, size_t n, int max)
{
    int depth = 0, in_string = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = 0;
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max)
                return 1;
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return 0;
}

/* Parse the body as a JSON object; answers 400 and returns NULL otherwise. */
static json_t *body_object(struct ctx *c)
{
    json_error_t jerr;
    if (!c->req->body || c->req->body_len == 0) {
        fail(c, FT_EINVAL, "body", "the request needs a JSON object body");
        return NULL;
    }
    int max_depth = c->api->max_json_depth;
    if (max_depth > 0 && json_too_deep(c->req->body, c->req->body_len, max_depth)) {
        fail(c, FT_EINVAL, "body", "the JSON body nests arrays/objects deeper than %d levels",
             max_depth);
        return NULL;
    }
    /* a key given twice would silently keep the last: ask which one is meant */
    json_t *o = json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        fail(c, FT_EINVAL, "body", "malformed JSON at line %d, column %d: %s", jerr.line,
             jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        fail(c, FT_EINVAL, "body", "the body must be a JSON object");
        return NULL;
    }
    return o;
}

/* ---- health, datasets ---- */

static void h_health(struct ctx *c)
{
    respond_json(c, 200, json_pack("{s:s, s:s}", "status", "ok", "version", "0.1.0"));
}

static void h_dataset_list(struct ctx *c)
{
    json_t *list = ft_store_dataset_list(c->api->store, c->owner);
    if (!list)
        return fail(c, FT_EDB, NULL, "could not list datasets");
    respond_json(c, 200, json_pack("{s:o}", "datasets", list));
}

static void h_dataset_get(struct ctx *c)
{
    struct ft_error err;
    json_t *o;
    if (!check_name(c, c->cap[0], "dataset"))
        return;
    if (ft_store_dataset_get(c->api->store, c->owner, c->cap[0], &o, &err) != FT_OK)
        return respond_error(c, &err);
    respond_json(c, 200, o);
}

static void h_dataset_delete(struct ctx *c)
{
    struct ft_error err;
    if (!check_name(c, c->cap[0], "dataset"))
        return;
    if (ft_store_dataset_delete(c->api->store, c->owner, c->cap[0], &err) != FT_OK)
        return respond_error(c, &err);
    respond_deleted(c, c->cap[0]);
}

/* Is the media type of Content-Type ct (before any ';' parameters) type, case-insensitively? */
static int media_type_is(const char *ct, const char *type)
{
    size_t n = strlen(type);
    return strncasecmp(ct, type, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* "csv" | "idx" from ?format= or the Content-Type; NULL after answering 400. */
static const char *upload_format(struct ctx *c)
{
    const char *f = ft_http_arg(c->req, "format");
    const char *ct = c->req->content_type ? c->req->content_type : "";
    if (f && (strcmp(f, "csv") == 0 || strcmp(f, "idx") == 0))
        return f;
    if (f) {
        fail(c, FT_EINVAL, "format", "unknown format '%.32s' (known: csv, idx)", f);
        return NULL;
    }
    if (media_type_is(ct, "text/csv"))
        return "csv";
    if (media_type_is(ct, "multipart/form-data"))
        return "idx";
    fail(c, FT_EINVAL, "format",
         "cannot tell the dataset format: pass ?format=csv|idx or Content-Type text/csv or "
         "multipart/form-data (got '%.64s')",
         ct);
    return NULL;
}

static enum ft_err parse_upload(struct ctx *c, const char *format, struct ft_dataset **ds,
                                struct ft_error *err)
{
    if (strcmp(format, "csv") == 0) {
        const struct ft_http_part *p = ft_http_part(c->req, "file");
        if (c->req->num_parts && !p)
            p = &c->req->parts[0];
        if (p)
            return ft_dataset_parse_csv(p->data, p->len, ds, err);
        return ft_dataset_parse_csv(c->req->body ? c->req->body : "", c->req->body_len, ds, err);
    }
    const struct ft_http_part *im = ft_http_part(c->req, "images");
    const struct ft_http_part *lb = ft_http_part(c->req, "labels");
    if (!im || !lb)
        return ft_error_set(err, FT_EINVAL, im ? "labels" : "images",
                            "an idx upload is multipart/form-data with parts 'images' and "
                            "'labels' (curl -F images=@...-images-idx3-ubyte.gz -F "
                            "labels=@...-labels-idx1-ubyte.gz)");
    return ft_dataset_parse_idx(im->data, im->len, lb->data, lb->len, ds, err);
}

/* Save ds under a temporary name, publish the metadata, then rename into place. */
static enum ft_err store_upload(struct ctx *c, const char *name, const char *format,
                                const struct ft_dataset *ds, struct ft_error *err)
{
    static int counter;
    char *path = ft_store_dataset_path(c->api->store, c->owner, name);
    char tmp[1200];
    struct ft_dataset_info info = {0};
    if (!path)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    snprintf(tmp, sizeof tmp, "%s.upload-%d-%d", path, (int)getpid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_SEQ_CST));
    enum ft_err e = ft_dataset_save(ds, tmp, err);
    if (e != FT_OK) { /* the operator's log has the path; the client gets the cause */
        ft_log(FT_LOG_ERROR, "api", "dataset %s of owner '%s' not stored: %s", name, c->owner,
               err->message);
        ft_error_set(err, e, NULL, "dataset '%s' was not stored: %s", name,
                     e == FT_ENOSPACE ? ft_err_message(e) : "the file could not be written");
    }
    FILE *f = e == FT_OK ? fopen(tmp, "rb") : NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        info.bytes = ftell(f);
        fclose(f);
    }
    snprintf(info.name, sizeof info.name, "%s", name);
    snprintf(info.format, sizeof info.format, "%s", format);
    info.rows = ds->n;
    info.dims = ds->dim;
    info.labels = ds->num_labels;
    if (e == FT_OK)
        e = ft_store_dataset_insert(c->api->store, c->owner, &info, err);
    if (e == FT_OK && rename(tmp, path) != 0)
        e = ft_error_set(err, FT_EIO, NULL, "could not store the dataset file");
    if (e != FT_OK)
        unlink(tmp);
    free(path);
    return e;
}

/* A small upload can decode into a large dataset (gzip): limit what is stored. Label names
 * live in the stored file's header, which readers cap at 100 MB: keep them well below. */
static enum ft_err check_upload_size(struct ctx *c, const struct ft_dataset *ds,
                                     struct ft_error *err)
{
    double bytes = (double)ds->n * (double)ds->dim * sizeof(float);
    size_t label_bytes = 0;
    if (c->api->max_dataset && bytes > (double)c->api->max_dataset)
        return ft_error_set(err, FT_ETOO_LARGE, "body",
                            "the dataset decodes to %.0f MiB (%lld rows x %d columns as float32), "
                            "more than the limit of %zu MiB (--max-dataset-mb)",
                            bytes / 1048576.0, (long long)ds->n, ds->dim,
                            c->api->max_dataset >> 20);
    for (int i = 0; i < ds->num_labels; i++) {
        size_t n = strlen(ds->label_names[i]);
        if (n > 1024)
            return ft_error_set(err, FT_EINVAL, "body",
                                "label %d is %zu bytes long; labels are at most 1024 bytes", i, n);
        label_bytes += n;
    }
    if (label_bytes > (16u << 20))
        return ft_error_set(err, FT_EINVAL, "body",
                            "the %d distinct labels take %zu bytes; at most 16 MiB are allowed",
                            ds->num_labels, label_bytes);
    return FT_OK;
}

static void h_dataset_put(struct ctx *c)
{
    struct ft_error err;
    struct ft_dataset *ds = NULL;
    const char *name = c->cap[0];
    json_t *existing;
    if (!check_name(c, name, "dataset"))
        return;
    const char *format = upload_format(c);
    if (!format)
        return;
    if (ft_store_dataset_get(c->api->store, c->owner, name, &existing, &err) == FT_OK) {
        json_decref(existing);
        return fail(c, FT_ECONFLICT, "name",
                    "dataset '%s' already exists; delete it first or pick another name", name);
    }
    enum ft_err e = parse_upload(c, format, &ds, &err);
    if (e == FT_OK)
        e = check_upload_size(c, ds, &err);
    if (e == FT_OK)
        e = store_upload(c, name, format, ds, &err);
    ft_dataset_free(ds);
    if (e != FT_OK)
        return respond_error(c, &err);
    ft_log(FT_LOG_INFO, "api", "dataset=%s format=%s stored", name, format);
    if (ft_store_dataset_get(c->api->store, c->owner, name, &existing, &err) != FT_OK)
        return respond_error(c, &err);
    respond_json(c, 201, existing);
}

/* ---- experiments ---- */

static void h_experiment_create(struct ctx *c)
{
    struct ft_error err;
    int created = 0;
    json_t *body = body_object(c), *o;
    if (!body)
        return;
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "name") != 0) {
            fail(c, FT_EINVAL, key, "unknown field '%s' (an experiment has a name)", key);
            json_decref(body); /* after fail(): key points into body */
            return;
        }
    }
    const char *name = json_string_value(json_object_get(body, "name"));
    if (!name) {
        json_decref(body);
        return fail(c, FT_EINVAL, "name", "name (a string) is required");
    }
    enum ft_err e = check_name(c, name, "name") ? FT_OK : FT_EINVAL;
    if (e == FT_OK)
        e = ft_store_experiment_ensure(c->api->store, c->owner, name, &created, &err);
    if (e == FT_OK)
        e = ft_store_experiment_get(c->api->store, c->owner, name, &o, &err);
    json_decref(body);
    if (e == FT_EINVAL)
        return; /* answered by check_name */
    if (e != FT_OK)
        return respond_error(c, &err);
    respond_json(c, created ? 201 : 200, o);
}

static void h_experiment_list(struct ctx *c)
{
    json_t *list = ft_store_experiment_list(c->api->store, c->owner);
    if (!list)
        return fail(c, FT_EDB, NULL, "could not list experiments");
    respond_json(c, 200, json_pack("{s:o}", "experiments", list));
}

static void h_experiment_get(struct ctx *c)
{
    struct ft_error err;
    json_t *o;
    if (!check_name(c, c->cap[0], "experiment"))
        return;
    if (ft_store_experiment_get(c->api->store, c->owner, c->cap[0], &o, &err) != FT_OK)
        return respond_error(c, &err);
    respond_json(c, 200, o);
}

static void h_experiment_delete(struct ctx *c)
{
    struct ft_error err;
    if (!check_name(c, c->cap[0], "experiment"))
        return;
    if (ft_store_experiment_delete(c->api->store, c->owner, c->cap[0], &err) != FT_OK)
        return respond_error(c, &err);
    respond_deleted(c, c->cap[0]);
}

/* ---- runs ---- */

/* Check that dataset name exists and has dims columns (dims 0 = any); fills *found_dims. */
static enum ft_err check_dataset(struct ctx *c, const char *name, const char *param,
                                 int *found_dims, struct ft_error *err)
{
    json_t *o;
    if (!ft_store_valid_name(name) ||
        ft_store_dataset_get(c->api->store, c->owner, name, &o, err) != FT_OK)
        return ft_error_set(err, FT_EINVAL, param,
                            "dataset '%s' does not exist; upload it with PUT "
                            "/api/v1/datasets/%s",
                            name, ft_store_valid_name(name) ? name : "<name>");
    *found_dims = (int)json_integer_value(json_object_get(o, "dims"));
    c->shape.rows = json_integer_value(json_object_get(o, "rows"));
    c->shape.labels = (int)json_integer_value(json_object_get(o, "labels"));
    json_decref(o);
    return FT_OK;
}

/* What the data must hold for the batches the config asks for: two labels to learn from, and
 * with a fixed batch_size enough training and eval rows to fill one batch. */
static enum ft_err check_batches(const struct ft_run_config *cfg, struct ds_shape train,
                                 struct ds_shape eval, struct ft_error *err)
{
    int k = strcmp(cfg->sampler, "random") == 0 ? 1 : cfg->num_items_per_class;
    int64_t rows = train.rows - (int64_t)((double)train.rows * cfg->val_split);
    if (train.labels < 2)
        return ft_error_set(err, FT_EINVAL, "config.data.train_data",
                            "train_data '%s' has %d label; metric learning needs at least two",
                            cfg->train_data, train.labels);
    if (cfg->batch_size && k > 1 && cfg->batch_size < 2 * k)
        return ft_error_set(err, FT_EINVAL, "config.hyper_parameters.batch_size",
                            "batch_size %d holds a single class of num_items_per_class %d: a "
                            "batch needs at least two classes (batch_size >= %d)",
                            cfg->batch_size, k, 2 * k);
    if (cfg->batch_size && cfg->batch_size > rows)
        return ft_error_set(err, FT_EINVAL, "config.hyper_parameters.batch_size",
                            "batch_size %d is larger than the %lld training rows of '%s'",
                            cfg->batch_size, (long long)rows, cfg->train_data);
    if (cfg->batch_size && eval.rows && cfg->batch_size > eval.rows)
        return ft_error_set(err, FT_EINVAL, "config.data.eval_data",
                            "eval_data '%s' has %lld rows, fewer than one batch of %d",
                            cfg->eval_data, (long long)eval.rows, cfg->batch_size);
    return FT_OK;
}

/* The model's input against the train data's dims: mlp input_size (filled in the normalised
 * config when absent), cnn input_shape when given (else the worker takes the stored dataset's
 * image shape). */
static enum ft_err check_model_input(const struct ft_run_config *cfg, json_t *norm, int tdims,
                                     struct ft_error *err)
{
    json_t *opts = json_object_get(json_object_get(norm, "model"), "options");
    json_t *size = json_object_get(opts, "input_size"),
           *shape = json_object_get(opts, "input_shape");
    long n = 1;
    if (json_is_integer(size) && json_integer_value(size) != tdims)
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_size",
                            "input_size is %lld but train_data '%s' has %d columns",
                            (long long)json_integer_value(size), cfg->train_data, tdims);
    for (size_t i = 0; i < json_array_size(shape); i++)
        n *= (long)json_integer_value(json_array_get(shape, i));
    if (json_array_size(shape) && n != tdims)
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_shape",
                            "input_shape has %ld values but train_data '%s' has %d columns", n,
                            cfg->train_data, tdims);
    if (strcmp(cfg->model_name, "mlp") == 0)
        json_object_set_new(opts, "input_size", json_integer(tdims));
    return FT_OK;
}

/* The architecture of a run that starts from an earlier artifact comes from the artifact's
 * model_config; what the user wrote must agree with it. Fills cfg and the normalised config. */
static enum ft_err artifact_model(struct ctx *c, const char *ref, json_t **mc, struct ft_error *err)
{
    char exp[FT_NAME_MAX], status[16];
    const char *slash = strchr(ref, '/');
    int64_t id;
    snprintf(exp, sizeof exp, "%.*s", (int)(slash - ref), ref);
    if (!ft_store_valid_name(exp) || !ft_store_valid_name(slash + 1) ||
        ft_store_run_find(c->api->store, c->owner, exp, slash + 1, &id, err) != FT_OK)
        return ft_error_set(err, FT_EINVAL, "config.model.artifact", "run '%s' does not exist",
                            ref);
    ft_store_run_status(c->api->store, id, status, NULL, err);
    if (strcmp(status, "FINISHED") != 0)
        return ft_error_set(err, FT_EINVAL, "config.model.artifact",
                            "run '%s' is %s; only a FINISHED run has an artifact", ref, status);
    char *path = ft_store_artifact_path(c->api->store, id);
    ft_safetensors *st = NULL;
    enum ft_err e = path ? ft_safetensors_open(path, &st, err) : FT_ENOMEM;
    free(path);
    const char *text =
        st ? json_string_value(json_object_get(ft_safetensors_metadata(st), "model_config")) : NULL;
    *mc = text ? json_loads(text, 0, NULL) : NULL;
    ft_safetensors_free(st);
    if (e != FT_OK || !*mc)
        return ft_error_set(err, FT_EINVAL, "config.model.artifact",
                            "the artifact of run '%s' cannot be read", ref);
    return FT_OK;
}

static enum ft_err resolve_artifact(struct ctx *c, struct ft_run_config *cfg, json_t *user_model,
                                    json_t *norm, struct ft_error *err)
{
    json_t *mc = NULL;
    if (!cfg->model_artifact[0])
        return FT_OK;
    enum ft_err e = artifact_model(c, cfg->model_artifact, &mc, err);
    if (e != FT_OK)
        return e;
    const char *name = json_string_value(json_object_get(mc, "name"));
    json_t *opts = json_object_get(mc, "options");
    int out_dim = (int)json_integer_value(json_object_get(mc, "output_dim"));
    if (cfg->model_name[0] && strcmp(cfg->model_name, name ? name : "") != 0)
        e = ft_error_set(err, FT_EINVAL, "config.model.name",
                         "the artifact of '%s' is a %s model, not %s", cfg->model_artifact, name,
                         cfg->model_name);
    else if (json_object_get(user_model, "options") && !json_equal(cfg->model_options, opts))
        e = ft_error_set(err, FT_EINVAL, "config.model.options",
                         "the options differ from the artifact's architecture; leave them out "
                         "to take the artifact's");
    else if (cfg->output_dim && cfg->output_dim != out_dim)
        e = ft_error_set(err, FT_EINVAL, "config.model.output_dim",
                         "the artifact of '%s' has output_dim %d", cfg->model_artifact, out_dim);
    else if (cfg->freeze && !out_dim)
        e = ft_error_set(err, FT_EINVAL, "config.model.freeze",
                         "freeze trains only the projection head, and the artifact of '%s' has "
                         "none",
                         cfg->model_artifact);
    if (e == FT_OK) {
        json_t *m = json_object_get(norm, "model");
        snprintf(cfg->model_name, sizeof cfg->model_name, "%s", name ? name : "");
        json_decref(cfg->model_options);
        cfg->model_options = json_deep_copy(opts);
        cfg->output_dim = out_dim;
        json_object_set_new(m, "name", json_string(cfg->model_name));
        json_object_set_new(m, "options", json_deep_copy(opts));
        json_object_set_new(m, "output_dim", out_dim ? json_integer(out_dim) : json_null());
    }
    json_decref(mc);
    return e;
}

/* Every dataset the config reads exists and has the train data's columns; fills input_size in
 * the normalised config. */
static enum ft_err check_run_datasets(struct ctx *c, struct ft_run_config *cfg, json_t *norm,
                                      struct ft_error *err)
{
    int tdims, dims;
    struct ds_shape train = {0}, eval = {0};
    enum ft_err e = check_dataset(c, cfg->train_data, "config.data.train_data", &tdims, err);
    if (e != FT_OK)
        return e;
    train = c->shape;
    e = check_model_input(cfg, norm, tdims, err);
    if (e != FT_OK)
        return e;
    if (cfg->eval_data[0]) {
        e = check_dataset(c, cfg->eval_data, "config.data.eval_data", &dims, err);
        if (e == FT_OK && dims != tdims)
            e = ft_error_set(err, FT_EINVAL, "config.data.eval_data",
                             "eval_data '%s' has %d columns, train_data %d", cfg->eval_data, dims,
                             tdims);
        eval = c->shape;
    }
    if (e == FT_OK)
        e = check_batches(cfg, train, eval, err);
    for (int i = 0; e == FT_OK && i < cfg->callbacks.num_eval; i++) {
        const struct ft_eval_callback *cb = &cfg->callbacks.eval[i];
        for (int k = 0; k < 2 && e == FT_OK; k++) {
            const char *n = k ? cb->index_data : cb->query_data;
            char param[96];
            if (!n[0])
                continue;
            int idx = 0, seen = 0;
            json_t *list = json_object_get(norm, "callbacks");
            for (size_t j = 0; j < json_array_size(list); j++) {
                const char *nm =
                    json_string_value(json_object_get(json_array_get(list, j), "name"));
                if (nm && strcmp(nm, "EvaluationCallback") == 0 && seen++ == i)
                    idx = (int)j;
            }
            snprintf(param, sizeof param, "config.callbacks[%d].options.%s", idx,
                     k ? "index_data" : "query_data");
            e = check_dataset(c, n, param, &dims, err);
            if (e == FT_OK && dims != tdims)
                e = ft_error_set(err, FT_EINVAL, param,
                                 "dataset '%s' has %d columns, "
                                 "train_data %d",
                                 n, dims, tdims);
        }
    }
    return e;
}

static enum ft_err parse_submission(json_t *body, const char **name, const char **desc,
                                    json_t **config, struct ft_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "name") && strcmp(key, "description") && strcmp(key, "config"))
            return ft_error_set(err, FT_EINVAL, key,
                                "unknown field '%s' (a run has name, description, config)", key);
    }
    v = json_object_get(body, "name");
    if (v && !json_is_null(v) && (!json_is_string(v) || !ft_store_valid_name(json_string_value(v))))
        return ft_error_set(err, FT_EINVAL, "name",
                            "name must be 1 to 100 of A-Z a-z 0-9 . _ - (not starting with .)");
    *name = json_string_value(v);
    v = json_object_get(body, "description");
    if (v && !json_is_null(v) && (!json_is_string(v) || json_string_length(v) > 10000))
        return ft_error_set(err, FT_EINVAL, "description",
                            "description must be a string of at most 10000 characters");
    *desc = json_string_value(v);
    *config = json_object_get(body, "config");
    if (!*config)
        return ft_error_set(err, FT_EINVAL, "config", "config is required");
    return FT_OK;
}

static void h_run_submit(struct ctx *c)
{
    struct ft_error err = {0};
    struct ft_run_config cfg = {0};
    json_t *body, *config = NULL, *norm = NULL, *run = NULL;
    const char *name = NULL, *desc = NULL, *dsn[2 + 2 * FT_MAX_EVAL_CALLBACKS];
    int64_t id;
    if (!check_name(c, c->cap[0], "experiment") || !(body = body_object(c)))
        return;
    enum ft_err e = parse_submission(body, &name, &desc, &config, &err);
    if (e == FT_OK)
        e = ft_run_config_parse(config, &cfg, &norm, &err);
    if (e == FT_OK)
        e = resolve_artifact(c, &cfg, json_object_get(config, "model"), norm, &err);
    if (e == FT_OK)
        e = check_run_datasets(c, &cfg, norm, &err);
    if (e == FT_OK) {
        char *text = json_dumps(norm, JSON_COMPACT);
        struct ft_run_submission sub = {
            .owner = c->owner,
            .experiment = c->cap[0],
            .name = name,
            .description = desc,
            .config_json = text,
            .datasets = dsn,
            .num_datasets = ft_run_config_datasets(&cfg, dsn, (int)(sizeof dsn / sizeof dsn[0])),
            .max_queued = c->api->max_queued_runs,
        };
        e = text ? ft_store_run_insert(c->api->store, &sub, &id, &err)
                 : ft_error_set(&err, FT_ENOMEM, NULL, "out of memory");
        free(text);
    }
    if (e == FT_OK)
        e = ft_store_run_get(c->api->store, id, &run, &err);
    ft_run_config_clear(&cfg);
    json_decref(norm);
    json_decref(body);
    if (e != FT_OK)
        return respond_error(c, &err);
    ft_log(FT_LOG_INFO, "api", "experiment=%s run=%s queued", c->cap[0],
           json_string_value(json_object_get(run, "name")));
    if (c->api->wake)
        c->api->wake(c->api->wake_ctx);
    respond_json(c, 201, run);
}

/* Parse ?name= as an integer in [lo, hi] with default def; -1 after answering 400. */
static long int_arg(struct ctx *c, const char *name, long def, long lo, long hi)
{
    const char *s = ft_http_arg(c->req, name);
    char *end;
    if (!s)
        return def;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        fail(c, FT_EINVAL, name, "%s must be an integer in [%ld, %ld]", name, lo, hi);
        return -1;
    }
    return v;
}

static void h_run_list(struct ctx *c)
{
    struct ft_error err;
    json_t *o;
    if (!check_name(c, c->cap[0], "experiment"))
        return;
    long limit = int_arg(c, "limit", 50, 1, 1000);
    long offset = limit < 0 ? -1 : int_arg(c, "offset", 0, 0, 1L << 30);
    if (limit < 0 || offset < 0)
        return;
    if (ft_store_run_list(c->api->store, c->owner, c->cap[0], (int)limit, (int)offset, &o, &err) !=
        FT_OK)
        return respond_error(c, &err);
    respond_json(c, 200, o);
}

/* Resolve the run of the path (cap[0] experiment, cap[1] run); 0 after answering. */
static int find_run(struct ctx *c, int64_t *id)
{
    struct ft_error err;
    if (!check_name(c, c->cap[0], "experiment") || !check_name(c, c->cap[1], "run"))
        return 0;
    if (ft_store_run_find(c->api->store, c->owner, c->cap[0], c->cap[1], id, &err) != FT_OK) {
        respond_error(c, &err);
        return 0;
    }
    return 1;
}

static void h_run_get(struct ctx *c)
{
    struct ft_error err;
    int64_t id;
    json_t *o;
    if (!find_run(c, &id))
        return;
    if (ft_store_run_get(c->api->store, id, &o, &err) != FT_OK)
        return respond_error(c, &err);
    respond_json(c, 200, o);
}

static void h_run_status(struct ctx *c)
{
    struct ft_error err;
    int64_t id;
    char status[16];
    char *details = NULL;
    if (!find_run(c, &id))
        return;
    if (ft_store_run_status(c->api->store, id, status, &details, &err) != FT_OK)
        return respond_error(c, &err);
    respond_json(c, 200, json_pack("{s:s, s:s?}", "status", status, "details", details));
    free(details);
}

static void h_run_logs(struct ctx *c)
{
    int64_t id;
    if (!find_run(c, &id))
        return;
    char *text = ft_store_logs_since(c->api->store, id, 0, NULL);
    if (!text)
        return fail(c, FT_ENOMEM, NULL, "out of memory");
    c->resp->status = 200;
    c->resp->content_type = "text/plain; charset=utf-8";
    c->resp->kind = FT_BODY_BUFFER;
    c->resp->body = text;
    c->resp->body_len = strlen(text);
}

static void h_run_logstream(struct ctx *c)
{
    int64_t id;
    if (!find_run(c, &id))
        return;
    c->resp->status = 200;
    c->resp->content_type = "text/event-stream";
    c->resp->kind = FT_BODY_LOGSTREAM;
    c->resp->run_id = id;
}

static void h_run_metrics(struct ctx *c)
{
    int64_t id;
    if (!find_run(c, &id))
        return;
    json_t *m = ft_store_metrics_get(c->api->store, id);
    if (!m)
        return fail(c, FT_EDB, NULL, "could not read metrics");
    respond_json(c, 200, m);
}

static void h_run_examples(struct ctx *c)
{
    int64_t id;
    if (!find_run(c, &id))
        return;
    json_t *ex = ft_store_examples_get(c->api->store, id);
    if (!ex)
        return fail(c, FT_EDB, NULL, "could not read examples");
    respond_json(c, 200, ex);
}

/* TrainingCheckpoint's files: <run dir>/checkpoints/epoch-<e>.safetensors. */
static void h_run_checkpoints(struct ctx *c)
{
    int64_t id;
    if (!find_run(c, &id))
        return;
    char *dir = ft_store_run_dir(c->api->store, id);
    char path[1200];
    snprintf(path, sizeof path, "%s/checkpoints", dir ? dir : "");
    free(dir);
    json_t *list = json_array();
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        int epoch;
        char tail[32];
        struct stat st;
        char file[1500];
        if (sscanf(de->d_name, "epoch-%d.%31s", &epoch, tail) != 2 ||
            strcmp(tail, "safetensors") != 0)
            continue;
        snprintf(file, sizeof file, "%s/%s", path, de->d_name);
        if (stat(file, &st) == 0)
            json_array_append_new(
                list, json_pack("{s:i, s:I}", "epoch", epoch, "bytes", (json_int_t)st.st_size));
    }
    if (d)
        closedir(d);
    respond_json(c, 200, json_pack("{s:o}", "checkpoints", list));
}

static void h_run_checkpoint(struct ctx *c)
{
    int64_t id;
    char *end;
    if (!find_run(c, &id))
        return;
    long epoch = strtol(c->cap[2], &end, 10);
    if (*end || epoch < 1 || epoch > 1000000)
        return fail(c, FT_EINVAL, "epoch", "the checkpoint is named by its epoch (an integer)");
    char *dir = ft_store_run_dir(c->api->store, id);
    char path[1200];
    snprintf(path, sizeof path, "%s/checkpoints/epoch-%ld.safetensors", dir ? dir : "", epoch);
    free(dir);
    if (access(path, R_OK) != 0)
        return fail(c, FT_ENOT_FOUND, "epoch",
                    "run '%s' has no checkpoint of epoch %ld (see .../checkpoints)", c->cap[1],
                    epoch);
    c->resp->status = 200;
    c->resp->content_type = "application/octet-stream";
    c->resp->kind = FT_BODY_FILE;
    c->resp->file_path = strdup(path);
}

static void h_run_artifact(struct ctx *c)
{
    struct ft_error err;
    int64_t id;
    char status[16];
    if (!find_run(c, &id))
        return;
    if (ft_store_run_status(c->api->store, id, status, NULL, &err) != FT_OK)
        return respond_error(c, &err);
    if (strcmp(status, "FINISHED") != 0)
        return fail(c, FT_ECONFLICT, "run",
                    "run '%s' is %s; its artifact exists once it is FINISHED", c->cap[1], status);
    char *path = ft_store_artifact_path(c->api->store, id);
    if (!path || access(path, R_OK) != 0) {
        free(path);
        return fail(c, FT_EINTERNAL, "run", "the artifact of run '%s' is missing", c->cap[1]);
    }
    c->resp->status = 200;
    c->resp->content_type = "application/octet-stream";
    c->resp->kind = FT_BODY_FILE;
    c->resp->file_path = path;
}

static void h_run_cancel(struct ctx *c)
{
    struct ft_error err;
    int64_t id;
    json_t *o;
    if (!find_run(c, &id))
        return;
    if (ft_store_run_cancel(c->api->store, id, &err) != FT_OK)
        return respond_error(c, &err);
    if (c->api->wake)
        c->api->wake(c->api->wake_ctx);
    if (ft_store_run_get(c->api->store, id, &o, &err) != FT_OK)
        return respond_error(c, &err);
    respond_json(c, 200, o);
}

static void h_run_delete(struct ctx *c)
{
    struct ft_error err;
    int64_t id;
    if (!find_run(c, &id))
        return;
    if (ft_store_run_delete(c->api->store, id, &err) != FT_OK)
        return respond_error(c, &err);
    respond_deleted(c, c->cap[1]);
}

/* ---- routing ---- */

struct route {
    const char *method;
    const char *pattern; /* after /api/v1; "*" matches one segment */
    handler_fn fn;
    int idempotent; /* honours Idempotency-Key */
};

static const struct route routes[] = {
    {"GET", "/health", h_health, 0},
    {"GET", "/datasets", h_dataset_list, 0},
    {"PUT", "/datasets/*", h_dataset_put, 1},
    {"GET", "/datasets/*", h_dataset_get, 0},
    {"DELETE", "/datasets/*", h_dataset_delete, 0},
    {"POST", "/experiments", h_experiment_create, 0},
    {"GET", "/experiments", h_experiment_list, 0},
    {"GET", "/experiments/*", h_experiment_get, 0},
    {"DELETE", "/experiments/*", h_experiment_delete, 0},
    {"POST", "/experiments/*/runs", h_run_submit, 1},
    {"GET", "/experiments/*/runs", h_run_list, 0},
    {"GET", "/experiments/*/runs/*", h_run_get, 0},
    {"DELETE", "/experiments/*/runs/*", h_run_delete, 0},
    {"GET", "/experiments/*/runs/*/status", h_run_status, 0},
    {"GET", "/experiments/*/runs/*/logs", h_run_logs, 0},
    {"GET", "/experiments/*/runs/*/logstream", h_run_logstream, 0},
    {"GET", "/experiments/*/runs/*/metrics", h_run_metrics, 0},
    {"GET", "/experiments/*/runs/*/examples", h_run_examples, 0},
    {"GET", "/experiments/*/runs/*/checkpoints", h_run_checkpoints, 0},
    {"GET", "/experiments/*/runs/*/checkpoints/*", h_run_checkpoint, 0},
    {"GET", "/experiments/*/runs/*/artifact", h_run_artifact, 0},
    {"POST", "/experiments/*/runs/*/cancel", h_run_cancel, 0},
};

/* ---- access and idempotency ---- */

/* GET /health needs no token (any method: a wrong one is a 405 to anyone). */
static int is_health(const char *path)
{
    return strcmp(path, API_PREFIX "/health") == 0 || strcmp(path, API_PREFIX "/health/") == 0;
}

enum ft_err ft_api_authorize(struct ft_api *api, const struct ft_http_request *req,
                             struct ft_error *err)
{
    char owner[FT_OWNER_MAX];
    if (is_health(req->path))
        return FT_OK;
    return ft_auth_owner(api->store, req->authorization, api->require_token, owner, err);
}

/* Find the request's owner; answers 401 (or 500) and returns 0 when there is none. */
static int authenticate(struct ctx *c)
{
    struct ft_error err;
    if (ft_auth_owner(c->api->store, c->req->authorization, c->api->require_token, c->owner,
                      &err) == FT_OK)
        return 1;
    respond_error(c, &err);
    return 0;
}

/* One length-prefixed field of a fingerprint (so "ab"+"c" and "a"+"bc" differ). */
static void hash_field(ft_sha256 *h, const void *data, size_t len)
{
    uint64_t n = len;
    ft_sha256_update(h, &n, sizeof n);
    ft_sha256_update(h, data, len);
}

void ft_api_fingerprint(const struct ft_http_request *req, char out[FT_SHA256_HEX])
{
    ft_sha256 *h = ft_sha256_begin();
    hash_field(h, req->method, strlen(req->method));
    hash_field(h, req->path, strlen(req->path));
    for (int i = 0; i < req->num_args; i++) {
        hash_field(h, req->arg_key[i], strlen(req->arg_key[i]));
        hash_field(h, req->arg_val[i], strlen(req->arg_val[i]));
    }
    hash_field(h, req->body ? req->body : "", req->body ? req->body_len : 0);
    for (int i = 0; i < req->num_parts; i++) {
        hash_field(h, req->parts[i].name, strlen(req->parts[i].name));
        hash_field(h, req->parts[i].data ? req->parts[i].data : "", req->parts[i].len);
    }
    ft_sha256_end(h, out);
}

/* Idempotency-Key values: 1 to 255 printable ASCII characters. */
static int valid_key(const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < n; i++)
        if (key[i] < ' ' || key[i] > '~')
            return 0;
    return n >= 1 && n <= 255;
}

/* Answer the stored response of an Idempotency-Key (body stolen). */
static void replay(struct ctx *c, int status, char *body)
{
    c->resp->status = status;
    c->resp->content_type = "application/json";
    c->resp->kind = FT_BODY_BUFFER;
    c->resp->body = body;
    c->resp->body_len = strlen(body);
    c->resp->replayed = 1;
}

/* Run fn under the request's Idempotency-Key (see api.h); fn alone when there is none. */
static void run_idempotent(struct ctx *c, handler_fn fn)
{
    const char *key = c->req->idempotency_key;
    struct ft_error err;
    char fp[FT_SHA256_HEX];
    int status;
    char *body;
    if (!key)
        return fn(c);
    if (!valid_key(key))
        return fail(c, FT_EINVAL, "Idempotency-Key",
                    "the Idempotency-Key must be 1 to 255 printable ASCII characters");
    ft_api_fingerprint(c->req, fp);
    if (!fp[0])
        return fail(c, FT_ENOMEM, NULL, "out of memory");
    if (ft_store_idempotency_begin(c->api->store, c->owner, key, fp, &status, &body, &err) != FT_OK)
        return respond_error(c, &err);
    if (status > 0)
        return replay(c, status, body);
    fn(c);
    if (c->resp->status >= 200 && c->resp->status < 300 && c->resp->kind == FT_BODY_BUFFER &&
        c->resp->body)
        ft_store_idempotency_finish(c->api->store, c->owner, key, c->resp->status, c->resp->body);
    else
        ft_store_idempotency_release(c->api->store, c->owner, key);
}

/* Split path into segments (in c->segbuf); returns the count, -1 when too many. */
static int split(struct ctx *c, const char *path, const char **segs)
{
    int n = 0;
    snprintf(c->segbuf, sizeof c->segbuf, "%s", path);
    for (char *p = c->segbuf; *p;) {
        while (*p == '/')
            *p++ = '\0';
        if (!*p)
            break;
        if (n == MAX_SEGS)
            return -1;
        segs[n++] = p;
        while (*p && *p != '/')
            p++;
    }
    return n;
}

/* Does pattern match segs? Fills c->cap. */
static int match(struct ctx *c, const char *pattern, const char **segs, int n)
{
    char buf[128];
    const char *pseg[MAX_SEGS];
    int pn = 0, ncap = 0;
    snprintf(buf, sizeof buf, "%s", pattern);
    for (char *tok = buf; *tok && pn < MAX_SEGS;) {
        while (*tok == '/')
            *tok++ = '\0';
        pseg[pn++] = tok;
        while (*tok && *tok != '/')
            tok++;
    }
    if (pn != n)
        return 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(pseg[i], "*") == 0)
            c->cap[ncap++] = segs[i];
        else if (strcmp(pseg[i], segs[i]) != 0)
            return 0;
    }
    return 1;
}

static void route(struct ctx *c)
{
    const char *segs[MAX_SEGS];
    const char *path = c->req->path;
    size_t plen = strlen(API_PREFIX);
    int n = -1;
    if (strlen(path) >= sizeof c->segbuf)
        return fail(c, FT_EURI_TOO_LONG, "path", "the path is longer than %zu bytes",
                    sizeof c->segbuf - 1);
    if (strncmp(path, API_PREFIX, plen) == 0 && (path[plen] == '/' || path[plen] == '\0'))
        n = split(c, path + plen, segs);
    if (!is_health(c->req->path) && !authenticate(c))
        return;
    int path_found = 0;
    for (size_t i = 0; n >= 0 && i < sizeof routes / sizeof routes[0]; i++) {
        if (!match(c, routes[i].pattern, segs, n))
            continue;
        if (strcmp(routes[i].method, c->req->method) == 0)
            return routes[i].idempotent ? run_idempotent(c, routes[i].fn) : routes[i].fn(c);
        size_t len = strlen(c->resp->allow);
        snprintf(c->resp->allow + len, sizeof c->resp->allow - len, "%s%s", len ? ", " : "",
                 routes[i].method);
        path_found = 1;
    }
    if (path_found)
        return fail(c, FT_EMETHOD_NOT_ALLOWED, "method", "%s is not allowed on %s (allowed: %s)",
                    c->req->method, path, c->resp->allow);
    fail(c, FT_ENOT_FOUND, "path",
         "no such endpoint: %.200s (see GET /api/v1/health and the "
         "README's API table)",
         path);
}

void ft_api_handle(struct ft_api *api, const struct ft_http_request *req,
                   struct ft_http_response *resp)
{
    struct ctx c = {0};
    c.api = api;
    c.req = req;
    c.resp = resp;
    /* a GET only reads: its auth check, lookups and reads share one read transaction */
    int reads_only = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (reads_only)
        ft_store_read_begin(api->store);
    route(&c);
    if (reads_only)
        ft_store_read_end(api->store);
    if (resp->kind == FT_BODY_BUFFER && !resp->body) {
        resp->status = 500;
        resp->content_type = "application/json";
        resp->body = strdup("{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of "
                            "memory\",\"param\":null}}");
        resp->body_len = resp->body ? strlen(resp->body) : 0;
    }
}

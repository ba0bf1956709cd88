/* model.c — embedding models ("mlp", "cnn") as a stack of layers over the kernels of nn.h.
 *
 * Options: each model's options are checked and normalised into a struct spec (every default
 * filled), the same code for submission (ft_model_check_options) and construction.
 * Construction appends layers (linear, conv, batch norm, activation, dropout, pooling, global
 * average pooling, L2) with their per-example input/output shapes and lays out one contiguous
 * parameter buffer (gradients: same layout), one buffer array (batch-norm running statistics)
 * and the named tensor table over both.
 * Memory: one activation block grown to the largest batch seen holds every layer's output and
 * saved statistics, the input copy, two backward ping-pong buffers and the conv im2col scratch
 * (sized for conv_chunk images: convolutions run in chunks of images so the scratch stays under
 * CONV_SCRATCH_FLOATS). Nothing is allocated by forward/backward once the block is grown.
 * Formulas: tests/fixtures/torch/README.md; init: torch.nn.Linear/Conv2d reset_parameters. */
#include "model.h"

#include "nn.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SIZES 16  /* hidden_sizes / channels entries */
#define MAX_LAYERS 96 /* 16 hidden x (linear, bn, act, dropout) + head + l2 */
#define MAX_TENSORS 160
#define MAX_DIM 65536                         /* any one size */
#define MAX_VALUES (1L << 26)                 /* values per example of any layer */
#define CONV_SCRATCH_FLOATS ((size_t)1 << 24) /* 64 MB of im2col per chunk of images */
#define ALIGN_FLOATS 16                       /* 64-byte alignment of each carved array */

enum kind { MLP, CNN };
enum act { ACT_NONE, ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_TANH, ACT_SIGMOID };
enum pool { POOL_NONE, POOL_MAX, POOL_AVG };

static const char *const act_names[] = {"none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid"};
static const char *const pool_names[] = {"none", "max", "avg"};

/* Normalised options of either model. */
struct spec {
    enum kind kind;
    int input_size;     /* mlp; 0 = from the data */
    int input_shape[3]; /* cnn; 0s = from the data */
    int num_sizes;      /* hidden_sizes (mlp) or channels (cnn) */
    int sizes[MAX_SIZES];
    int bias, l2, batch_norm;
    enum act act;
    double dropout;
    int kernel_size;   /* cnn */
    enum pool pooling; /* cnn */
    int embedding_dim; /* cnn */
};

enum ltype { L_LINEAR, L_CONV, L_BN, L_ACT, L_DROPOUT, L_MAXPOOL, L_AVGPOOL, L_GAP, L_L2 };

struct layer {
    enum ltype type;
    int ic, ih, iw; /* input per example; a vector of D is (D, 1, 1) */
    int oc, oh, ow; /* output per example */
    enum act act;
    int k, pad;      /* conv kernel (square, stride 1) or pooling window (= stride) */
    float p;         /* dropout probability */
    long w, b;       /* parameter offsets (-1 = none) */
    long rm, rv;     /* buffer offsets of running mean / var (bn) */
    float *out;      /* (cap_B, out size) */
    float *stat;     /* bn: mean (oc), rstd (oc); l2: norms (cap_B); dropout: mask like out */
    int32_t *argmax; /* maxpool: like out */
};

struct tensor {
    char name[40];
    int ndim;
    int64_t shape[4];
    size_t offset;
    int trainable; /* 1: in params; 0: in buffers */
};

struct ft_model {
    struct spec spec;
    int output_dim; /* head size; 0 = no head */
    int in_shape[3];
    int num_layers;
    struct layer layers[MAX_LAYERS];
    size_t num_params, num_buffers, head_offset;
    float *params, *grads, *buffers;
    int num_tensors;
    struct tensor tensors[MAX_TENSORS];
    struct ft_rng drop_rng;
    int last_B, last_training;
    /* activation block, grown to cap_B */
    int cap_B, conv_chunk;
    float *acts;
    int32_t *iacts;
    float *x, *dbuf[2], *scratch;
};

/* ---- options ---- */

static enum ft_err opt_error(struct ft_error *err, const char *key, const char *fmt,
                             const char *what)
{
    char p[96];
    snprintf(p, sizeof p, "config.model.options.%s", key);
    return ft_error_set(err, FT_EINVAL, p, fmt, key, what);
}

#define TRY(x)                \
    do {                      \
        enum ft_err e_ = (x); \
        if (e_ != FT_OK)      \
            return e_;        \
    } while (0)

/* opts[key] (NULL when absent or null). */
static json_t *opt(json_t *opts, const char *key)
{
    json_t *v = json_object_get(opts, key);
    return v && !json_is_null(v) ? v : NULL;
}

static enum ft_err opt_bool(json_t *opts, const char *key, int *dst, struct ft_error *err)
{
    json_t *v = opt(opts, key);
    if (v && !json_is_boolean(v))
        return opt_error(err, key, "%s must be %s", "true or false");
    if (v)
        *dst = json_is_true(v);
    return FT_OK;
}

static enum ft_err opt_int(json_t *opts, const char *key, int lo, int hi, int *dst,
                           struct ft_error *err)
{
    json_t *v = opt(opts, key);
    char range[64];
    snprintf(range, sizeof range, "an integer in [%d, %d]", lo, hi);
    if (v && (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi))
        return opt_error(err, key, "%s must be %s", range);
    if (v)
        *dst = (int)json_integer_value(v);
    return FT_OK;
}

/* A probability in [0, 1). */
static enum ft_err opt_prob(json_t *opts, const char *key, double *dst, struct ft_error *err)
{
    json_t *v = opt(opts, key);
    if (v && (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) < 1)))
        return opt_error(err, key, "%s must be %s", "a number in [0, 1)");
    if (v)
        *dst = json_number_value(v);
    return FT_OK;
}

/* A list of min..max integers in [1, MAX_DIM] into dst; *n set. */
static enum ft_err opt_list(json_t *opts, const char *key, int min, int max, int *dst, int *n,
                            struct ft_error *err)
{
    json_t *v = opt(opts, key);
    char what[96];
    if (min == max)
        snprintf(what, sizeof what, "a list of %d integers in [1, %d]", min, MAX_DIM);
    else
        snprintf(what, sizeof what, "a list of %d to %d integers in [1, %d]", min, max, MAX_DIM);
    if (!v)
        return FT_OK;
    size_t len = json_array_size(v);
    if (!json_is_array(v) || len < (size_t)min || len > (size_t)max)
        return opt_error(err, key, "%s must be %s", what);
    for (size_t i = 0; i < len; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > MAX_DIM)
            return opt_error(err, key, "%s must be %s", what);
        dst[i] = (int)json_integer_value(e);
    }
    *n = (int)len;
    return FT_OK;
}

/* One of names[0..count); an explicit null selects names[0] ("none"). */
static enum ft_err opt_choice(json_t *opts, const char *key, const char *const *names, int count,
                              int *dst, struct ft_error *err)
{
    json_t *v = json_object_get(opts, key);
    char what[128] = "";
    for (int i = 0; i < count; i++) {
        size_t len = strlen(what);
        snprintf(what + len, sizeof what - len, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    if (v && json_is_null(v)) {
        *dst = 0;
        return FT_OK;
    }
    if (!v)
        return FT_OK;
    for (int i = 0; json_is_string(v) && i < count; i++)
        if (strcmp(json_string_value(v), names[i]) == 0) {
            *dst = i;
            return FT_OK;
        }
    return opt_error(err, key, "%s must be one of %s or null", what);
}

static enum ft_err check_keys(json_t *opts, const char *const *keys, const char *model,
                              struct ft_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(opts, key, v)
    {
        int ok = 0;
        for (int i = 0; keys[i]; i++)
            ok |= strcmp(key, keys[i]) == 0;
        if (!ok)
            return opt_error(err, key, "unknown option '%s' for model %s", model);
    }
    (void)v;
    return FT_OK;
}

static enum ft_err parse_mlp(json_t *o, struct spec *s, struct ft_error *err)
{
    static const char *const keys[] = {"input_size", "hidden_sizes", "bias",    "activation",
                                       "l2",         "batch_norm",   "dropout", NULL};
    int act = ACT_RELU;
    *s = (struct spec){.kind = MLP, .num_sizes = 2, .sizes = {256, 128}, .bias = 1};
    TRY(check_keys(o, keys, "mlp", err));
    TRY(opt_int(o, "input_size", 1, 1 << 26, &s->input_size, err));
    TRY(opt_list(o, "hidden_sizes", 1, MAX_SIZES, s->sizes, &s->num_sizes, err));
    TRY(opt_bool(o, "bias", &s->bias, err));
    TRY(opt_choice(o, "activation", act_names, 6, &act, err));
    TRY(opt_bool(o, "l2", &s->l2, err));
    TRY(opt_bool(o, "batch_norm", &s->batch_norm, err));
    TRY(opt_prob(o, "dropout", &s->dropout, err));
    s->act = (enum act)act;
    return FT_OK;
}

static enum ft_err parse_cnn(json_t *o, struct spec *s, struct ft_error *err)
{
    static const char *const keys[] = {"input_shape", "channels",   "kernel_size",   "batch_norm",
                                       "pooling",     "activation", "embedding_dim", "l2",
                                       "dropout",     NULL};
    int act = ACT_RELU, pool = POOL_MAX, n = 0;
    *s = (struct spec){.kind = CNN,
                       .num_sizes = 2,
                       .sizes = {32, 64},
                       .bias = 1,
                       .l2 = 1,
                       .batch_norm = 1,
                       .kernel_size = 3,
                       .embedding_dim = 128};
    TRY(check_keys(o, keys, "cnn", err));
    TRY(opt_list(o, "input_shape", 3, 3, s->input_shape, &n, err));
    TRY(opt_list(o, "channels", 1, 8, s->sizes, &s->num_sizes, err));
    TRY(opt_int(o, "kernel_size", 1, 15, &s->kernel_size, err));
    if (s->kernel_size % 2 == 0)
        return opt_error(err, "kernel_size", "%s must be %s", "odd (padding is kernel_size/2)");
    TRY(opt_bool(o, "batch_norm", &s->batch_norm, err));
    TRY(opt_choice(o, "pooling", pool_names, 3, &pool, err));
    TRY(opt_choice(o, "activation", act_names, 6, &act, err));
    TRY(opt_int(o, "embedding_dim", 1, MAX_DIM, &s->embedding_dim, err));
    TRY(opt_bool(o, "l2", &s->l2, err));
    TRY(opt_prob(o, "dropout", &s->dropout, err));
    s->act = (enum act)act;
    s->pooling = (enum pool)pool;
    return FT_OK;
}

static enum ft_err parse_spec(const char *name, json_t *options, struct spec *s,
                              struct ft_error *err)
{
    json_t *empty = NULL;
    enum ft_err e;
    if (!name || (strcmp(name, "mlp") != 0 && strcmp(name, "cnn") != 0))
        return ft_error_set(err, FT_EINVAL, "config.model.name",
                            "unknown model '%s' (known: mlp, cnn)", name ? name : "(none)");
    if (options && !json_is_null(options) && !json_is_object(options))
        return ft_error_set(err, FT_EINVAL, "config.model.options",
                            "config.model.options must be an object");
    if (!options || json_is_null(options))
        options = empty = json_object();
    e = strcmp(name, "mlp") == 0 ? parse_mlp(options, s, err) : parse_cnn(options, s, err);
    json_decref(empty);
    return e;
}

static json_t *int_list(const int *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

static json_t *act_json(enum act a)
{
    return a == ACT_NONE ? json_null() : json_string(act_names[a]);
}

/* The normalised options object of s. New reference. */
static json_t *spec_json(const struct spec *s)
{
    if (s->kind == MLP)
        return json_pack("{s:o, s:o, s:b, s:o, s:b, s:b, s:f}", "input_size",
                         s->input_size ? json_integer(s->input_size) : json_null(), "hidden_sizes",
                         int_list(s->sizes, s->num_sizes), "bias", s->bias, "activation",
                         act_json(s->act), "l2", s->l2, "batch_norm", s->batch_norm, "dropout",
                         s->dropout);
    return json_pack("{s:o, s:o, s:i, s:b, s:s, s:o, s:i, s:b, s:f}", "input_shape",
                     s->input_shape[0] ? int_list(s->input_shape, 3) : json_null(), "channels",
                     int_list(s->sizes, s->num_sizes), "kernel_size", s->kernel_size, "batch_norm",
                     s->batch_norm, "pooling", pool_names[s->pooling], "activation",
                     act_json(s->act), "embedding_dim", s->embedding_dim, "l2", s->l2, "dropout",
                     s->dropout);
}

enum ft_err ft_model_check_options(const char *name, json_t *options, json_t **normalized,
                                   struct ft_error *err)
{
    struct spec s;
    if (normalized)
        *normalized = NULL;
    TRY(parse_spec(name, options, &s, err));
    if (!normalized)
        return FT_OK;
    *normalized = spec_json(&s);
    return *normalized ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
}

/* ---- building the layer stack ---- */

static size_t layer_in(const struct layer *L)
{
    return (size_t)L->ic * L->ih * L->iw;
}

static size_t layer_out(const struct layer *L)
{
    return (size_t)L->oc * L->oh * L->ow;
}

/* Append a layer reading the previous layer's output (or the model input); output = input
 * shape until the caller changes it. */
static struct layer *push(ft_model *m, enum ltype type)
{
    FT_ASSERT(m->num_layers < MAX_LAYERS);
    struct layer *L = &m->layers[m->num_layers];
    const struct layer *prev = m->num_layers ? &m->layers[m->num_layers - 1] : NULL;
    *L = (struct layer){.type = type, .w = -1, .b = -1, .rm = -1, .rv = -1};
    L->ic = L->oc = prev ? prev->oc : m->in_shape[0];
    L->ih = L->oh = prev ? prev->oh : m->in_shape[1];
    L->iw = L->ow = prev ? prev->ow : m->in_shape[2];
    m->num_layers++;
    return L;
}

static long add_tensor(ft_model *m, const char *prefix, const char *kind, int ndim,
                       const int64_t *shape, int trainable)
{
    FT_ASSERT(m->num_tensors < MAX_TENSORS);
    struct tensor *t = &m->tensors[m->num_tensors++];
    size_t count = 1, *total = trainable ? &m->num_params : &m->num_buffers;
    snprintf(t->name, sizeof t->name, "%s.%s", prefix, kind);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        count *= (size_t)(t->shape[i] = shape[i]);
    t->offset = *total;
    t->trainable = trainable;
    *total += count;
    return (long)t->offset;
}

static void add_linear(ft_model *m, const char *prefix, int out, int bias)
{
    struct layer *L = push(m, L_LINEAR);
    int64_t shape[2] = {out, (int64_t)layer_in(L)};
    L->oc = out;
    L->oh = L->ow = 1;
    L->w = add_tensor(m, prefix, "weight", 2, shape, 1);
    if (bias)
        L->b = add_tensor(m, prefix, "bias", 1, shape, 1);
}

static void add_conv(ft_model *m, const char *prefix, int out, int k, int bias)
{
    struct layer *L = push(m, L_CONV);
    int64_t shape[4] = {out, L->ic, k, k};
    L->oc = out;
    L->k = k;
    L->pad = k / 2; /* odd k: same size */
    L->w = add_tensor(m, prefix, "weight", 4, shape, 1);
    if (bias)
        L->b = add_tensor(m, prefix, "bias", 1, shape, 1);
}

static void add_bn(ft_model *m, const char *prefix)
{
    struct layer *L = push(m, L_BN);
    int64_t shape[1] = {L->ic};
    L->w = add_tensor(m, prefix, "weight", 1, shape, 1);
    L->b = add_tensor(m, prefix, "bias", 1, shape, 1);
}

static void add_simple(ft_model *m, enum ltype type, enum act act, float p)
{
    if ((type == L_ACT && act == ACT_NONE) || (type == L_DROPOUT && p <= 0.0f))
        return;
    struct layer *L = push(m, type);
    L->act = act;
    L->p = p;
    if (type == L_GAP)
        L->oh = L->ow = 1;
}

static void add_pool(ft_model *m, enum pool pool)
{
    if (pool == POOL_NONE)
        return;
    struct layer *L = push(m, pool == POOL_MAX ? L_MAXPOOL : L_AVGPOOL);
    L->k = 2;
    L->oh = L->ih / 2;
    L->ow = L->iw / 2;
}

/* Batch-norm running statistics (buffers, after every parameter tensor). */
static void add_bn_buffers(ft_model *m)
{
    int bn = 0;
    for (int l = 0; l < m->num_layers; l++) {
        struct layer *L = &m->layers[l];
        char prefix[24];
        int64_t shape[1] = {L->ic};
        if (L->type != L_BN)
            continue;
        snprintf(prefix, sizeof prefix, "bn_%d", bn++);
        L->rm = add_tensor(m, prefix, "running_mean", 1, shape, 0);
        L->rv = add_tensor(m, prefix, "running_var", 1, shape, 0);
    }
}

static void build_mlp(ft_model *m)
{
    const struct spec *s = &m->spec;
    for (int i = 0; i < s->num_sizes; i++) {
        char prefix[24];
        snprintf(prefix, sizeof prefix, "linear_%d", i);
        add_linear(m, prefix, s->sizes[i], s->bias);
        if (i == s->num_sizes - 1)
            break;
        snprintf(prefix, sizeof prefix, "bn_%d", i);
        if (s->batch_norm)
            add_bn(m, prefix);
        add_simple(m, L_ACT, s->act, 0);
        add_simple(m, L_DROPOUT, ACT_NONE, (float)s->dropout);
    }
}

/* Conv stages; FT_EINVAL when pooling shrinks the image to nothing. */
static enum ft_err build_cnn(ft_model *m, struct ft_error *err)
{
    const struct spec *s = &m->spec;
    for (int i = 0; i < s->num_sizes; i++) {
        char prefix[24];
        snprintf(prefix, sizeof prefix, "conv_%d", i);
        add_conv(m, prefix, s->sizes[i], s->kernel_size, !s->batch_norm);
        snprintf(prefix, sizeof prefix, "bn_%d", i);
        if (s->batch_norm)
            add_bn(m, prefix);
        add_simple(m, L_ACT, s->act, 0);
        add_pool(m, s->pooling);
        const struct layer *L = &m->layers[m->num_layers - 1];
        if (L->oh < 1 || L->ow < 1)
            return ft_error_set(err, FT_EINVAL, "config.model.options.channels",
                                "%d stages of 2x2 pooling shrink the %dx%d input to nothing: use "
                                "fewer channels entries or pooling \"none\"",
                                s->num_sizes, m->in_shape[1], m->in_shape[2]);
    }
    add_simple(m, L_GAP, ACT_NONE, 0);
    add_simple(m, L_DROPOUT, ACT_NONE, (float)s->dropout);
    add_linear(m, "proj", s->embedding_dim, 1);
    return FT_OK;
}

static enum ft_err build_layers(ft_model *m, struct ft_error *err)
{
    if (m->spec.kind == MLP)
        build_mlp(m);
    else
        TRY(build_cnn(m, err));
    m->head_offset = m->num_params;
    if (m->output_dim)
        add_linear(m, "head", m->output_dim, 1);
    if (m->spec.l2)
        add_simple(m, L_L2, ACT_NONE, 0);
    add_bn_buffers(m);
    for (int l = 0; l < m->num_layers; l++)
        if (layer_in(&m->layers[l]) > MAX_VALUES || layer_out(&m->layers[l]) > MAX_VALUES)
            return ft_error_set(err, FT_EINVAL, "config.model.options",
                                "a layer of this model has more than %ld values per example",
                                MAX_VALUES);
    return FT_OK;
}

/* U(-bound, bound) draws for n values. */
static void uniform_fill(struct ft_rng *rng, float *v, size_t n, double bound)
{
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((2.0 * ft_rng_uniform(rng) - 1.0) * bound);
}

/* torch.nn.Linear / Conv2d reset_parameters: kaiming_uniform(a = sqrt(5)) gives
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the same bound for the bias; batch
 * norm weight 1, bias 0, running mean 0, running var 1. Layers in order, weight then bias. */
static void init_params(ft_model *m, uint64_t seed)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    for (int l = 0; l < m->num_layers; l++) {
        const struct layer *L = &m->layers[l];
        if (L->type == L_LINEAR || L->type == L_CONV) {
            size_t fan_in = L->type == L_CONV ? (size_t)L->ic * L->k * L->k : layer_in(L);
            double bound = 1.0 / sqrt((double)fan_in);
            uniform_fill(&rng, m->params + L->w, (size_t)L->oc * fan_in, bound);
            if (L->b >= 0)
                uniform_fill(&rng, m->params + L->b, (size_t)L->oc, bound);
        } else if (L->type == L_BN) {
            for (int c = 0; c < L->ic; c++) {
                m->params[L->w + c] = 1.0f;
                m->params[L->b + c] = 0.0f;
                m->buffers[L->rm + c] = 0.0f;
                m->buffers[L->rv + c] = 1.0f;
            }
        }
    }
}

/* ---- construction ---- */

/* config[key] as 1 or 3 positive integers into shape (0s when absent). */
static enum ft_err config_shape(json_t *config, int shape[3], struct ft_error *err)
{
    json_t *v = json_object_get(config, "input_shape");
    size_t n = json_array_size(v);
    shape[0] = shape[1] = shape[2] = 0;
    if (!v || json_is_null(v))
        return FT_OK;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > MAX_VALUES)
            n = 0;
    }
    if (n != 1 && n != 3)
        return ft_error_set(err, FT_EINVAL, "config.model.input_shape",
                            "input_shape must be [D] or [C, H, W] of positive integers");
    for (size_t i = 0; i < 3; i++)
        shape[i] = n == 1 ? (i == 2 ? (int)json_integer_value(json_array_get(v, 0)) : 1)
                          : (int)json_integer_value(json_array_get(v, i));
    return FT_OK;
}

static long shape_prod(const int s[3])
{
    return (long)s[0] * s[1] * s[2];
}

/* The mlp's input: a vector of the data's (or the config's) size, checked against input_size. */
static enum ft_err resolve_mlp_input(ft_model *m, const int *data, const int cfg[3],
                                     struct ft_error *err)
{
    long d = data ? shape_prod(data) : cfg[0] ? shape_prod(cfg) : m->spec.input_size;
    if (d <= 0 || d > MAX_VALUES)
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_size",
                            "the input size is unknown: set options.input_size");
    if (m->spec.input_size && m->spec.input_size != d)
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_size",
                            "input_size %d does not match the data's %ld values per row",
                            m->spec.input_size, d);
    if (cfg[0] && shape_prod(cfg) != d)
        return ft_error_set(err, FT_EINVAL, "config.model.input_shape",
                            "input_shape has %ld values, the data %ld", shape_prod(cfg), d);
    m->spec.input_size = (int)d;
    m->in_shape[0] = (int)d;
    m->in_shape[1] = m->in_shape[2] = 1;
    return FT_OK;
}

/* The cnn's image shape: options.input_shape, else config.input_shape, else the data's. */
static enum ft_err resolve_cnn_input(ft_model *m, const int *data, const int cfg[3],
                                     struct ft_error *err)
{
    int *s = m->spec.input_shape;
    if (!s[0] && cfg[0])
        memcpy(s, cfg, 3 * sizeof *s);
    if (!s[0] && data && (data[0] > 1 || data[1] > 1))
        memcpy(s, data, 3 * sizeof *s);
    if (!s[0])
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_shape",
                            "cnn needs an image shape: the data has none (%ld values per row); "
                            "set options.input_shape [C, H, W]",
                            data ? shape_prod(data) : 0L);
    if (data && shape_prod(s) != shape_prod(data))
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_shape",
                            "input_shape [%d, %d, %d] has %ld values, the data %ld per row", s[0],
                            s[1], s[2], shape_prod(s), shape_prod(data));
    if (shape_prod(s) > MAX_VALUES)
        return ft_error_set(err, FT_EINVAL, "config.model.options.input_shape",
                            "input_shape is too large");
    memcpy(m->in_shape, s, sizeof m->in_shape);
    return FT_OK;
}

/* name, options, output_dim and input_shape of config into m->spec / m->output_dim. */
static enum ft_err parse_config(ft_model *m, json_t *config, const int *data, struct ft_error *err)
{
    int cfg[3];
    if (!json_is_object(config))
        return ft_error_set(err, FT_EINVAL, "config.model", "config.model must be an object");
    TRY(parse_spec(json_string_value(json_object_get(config, "name")),
                   json_object_get(config, "options"), &m->spec, err));
    json_t *od = json_object_get(config, "output_dim");
    if (od && !json_is_null(od) &&
        (!json_is_integer(od) || json_integer_value(od) < 1 || json_integer_value(od) > MAX_DIM))
        return ft_error_set(err, FT_EINVAL, "config.model.output_dim",
                            "output_dim must be an integer in [1, %d] or null", MAX_DIM);
    m->output_dim = od && json_is_integer(od) ? (int)json_integer_value(od) : 0;
    TRY(config_shape(config, cfg, err));
    if (m->spec.kind == MLP)
        return resolve_mlp_input(m, data, cfg, err);
    return resolve_cnn_input(m, data, cfg, err);
}

enum ft_err ft_model_new(json_t *config, const int input_shape[3], uint64_t seed, ft_model **out,
                         struct ft_error *err)
{
    *out = NULL;
    ft_model *m = calloc(1, sizeof *m);
    if (!m)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the model");
    enum ft_err e = parse_config(m, config, input_shape, err);
    if (e == FT_OK)
        e = build_layers(m, err);
    if (e != FT_OK) {
        ft_model_free(m);
        return e;
    }
    m->params = malloc((m->num_params ? m->num_params : 1) * sizeof *m->params);
    m->grads = calloc(m->num_params ? m->num_params : 1, sizeof *m->grads);
    m->buffers = malloc((m->num_buffers ? m->num_buffers : 1) * sizeof *m->buffers);
    if (!m->params || !m->grads || !m->buffers) {
        size_t n = m->num_params;
        ft_model_free(m);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating %zu parameters", n);
    }
    init_params(m, seed);
    ft_rng_seed(&m->drop_rng, seed ^ 0xd1b54a32d192ed03ULL);
    *out = m;
    return FT_OK;
}

void ft_model_free(ft_model *m)
{
    if (!m)
        return;
    free(m->params);
    free(m->grads);
    free(m->buffers);
    free(m->acts);
    free(m->iacts);
    free(m);
}

enum ft_err ft_model_from_safetensors(const ft_safetensors *st, ft_model **out,
                                      struct ft_error *err)
{
    const char *text =
        json_string_value(json_object_get(ft_safetensors_metadata(st), "model_config"));
    json_t *config = text ? json_loads(text, 0, NULL) : NULL;
    *out = NULL;
    if (!config)
        return ft_error_set(err, FT_EINVAL, "model_config",
                            "the file has no model_config metadata (a JSON object)");
    enum ft_err e = ft_model_new(config, NULL, 0, out, err);
    json_decref(config);
    if (e == FT_OK)
        e = ft_model_load(*out, st, err);
    if (e != FT_OK) {
        ft_model_free(*out);
        *out = NULL;
    }
    return e;
}

/* ---- accessors ---- */

json_t *ft_model_config_json(const ft_model *m)
{
    json_t *shape = m->spec.kind == MLP ? int_list(m->in_shape, 1) : int_list(m->in_shape, 3);
    return json_pack("{s:s, s:o, s:o, s:o}", "name", m->spec.kind == MLP ? "mlp" : "cnn", "options",
                     spec_json(&m->spec), "output_dim",
                     m->output_dim ? json_integer(m->output_dim) : json_null(), "input_shape",
                     shape);
}

int ft_model_input_dim(const ft_model *m)
{
    return (int)shape_prod(m->in_shape);
}

int ft_model_output_dim(const ft_model *m)
{
    return (int)layer_out(&m->layers[m->num_layers - 1]);
}

size_t ft_model_num_params(const ft_model *m)
{
    return m->num_params;
}

float *ft_model_params(ft_model *m)
{
    return m->params;
}

float *ft_model_grads(ft_model *m)
{
    return m->grads;
}

void ft_model_zero_grad(ft_model *m)
{
    memset(m->grads, 0, m->num_params * sizeof *m->grads);
}

size_t ft_model_head_offset(const ft_model *m)
{
    return m->head_offset;
}

size_t ft_model_num_buffers(const ft_model *m)
{
    return m->num_buffers;
}

float *ft_model_buffers(ft_model *m)
{
    return m->buffers;
}

int ft_model_num_tensors(const ft_model *m)
{
    return m->num_tensors;
}

void ft_model_tensor(const ft_model *m, int i, const char **name, int *ndim, int64_t shape[4],
                     float **data, int *trainable)
{
    FT_ASSERT(i >= 0 && i < m->num_tensors);
    const struct tensor *t = &m->tensors[i];
    if (name)
        *name = t->name;
    if (ndim)
        *ndim = t->ndim;
    for (int k = 0; shape && k < 4; k++)
        shape[k] = k < t->ndim ? t->shape[k] : 0;
    if (data)
        *data = (t->trainable ? m->params : m->buffers) + t->offset;
    if (trainable)
        *trainable = t->trainable;
}

uint64_t *ft_model_rng_state(ft_model *m)
{
    return m->drop_rng.s;
}

/* ---- loading ---- */

static size_t tensor_count(const struct tensor *t)
{
    size_t n = 1;
    for (int k = 0; k < t->ndim; k++)
        n *= (size_t)t->shape[k];
    return n;
}

/* st's tensor named like t, checked for dtype and shape. */
static enum ft_err find_tensor(const ft_safetensors *st, const struct tensor *t,
                               struct ft_tensor_view *v, struct ft_error *err)
{
    if (ft_safetensors_get(st, t->name, v) != 0)
        return ft_error_set(err, FT_EINVAL, t->name, "tensor '%s' is missing from the file",
                            t->name);
    if (strcmp(v->dtype, "F32") != 0)
        return ft_error_set(err, FT_EINVAL, t->name, "tensor '%s' is %s, the model needs F32",
                            t->name, v->dtype);
    int same = v->ndim == t->ndim;
    for (int k = 0; same && k < t->ndim; k++)
        same = v->shape[k] == t->shape[k];
    if (!same)
        return ft_error_set(err, FT_EINVAL, t->name,
                            "tensor '%s' has %d dims [%lld, ...] in the file, the model needs %d "
                            "[%lld, ...]",
                            t->name, v->ndim, v->ndim ? (long long)v->shape[0] : 0LL, t->ndim,
                            (long long)t->shape[0]);
    return FT_OK;
}

enum ft_err ft_model_load(ft_model *m, const ft_safetensors *st, struct ft_error *err)
{
    struct ft_tensor_view v;
    for (int i = 0; i < m->num_tensors; i++) /* check everything before changing anything */
        TRY(find_tensor(st, &m->tensors[i], &v, err));
    for (int i = 0; i < m->num_tensors; i++) {
        const struct tensor *t = &m->tensors[i];
        float *dst;
        find_tensor(st, t, &v, NULL);
        ft_model_tensor(m, i, NULL, NULL, NULL, &dst, NULL);
        memcpy(dst, v.data, tensor_count(t) * sizeof *dst);
    }
    return FT_OK;
}

/* ---- activation memory ---- */

static size_t align_up(size_t n)
{
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

/* Floats of saved statistics of L for B examples. */
static size_t stat_size(const struct layer *L, size_t B)
{
    if (L->type == L_BN)
        return 2 * (size_t)L->oc;
    if (L->type == L_L2)
        return B;
    if (L->type == L_DROPOUT)
        return B * layer_out(L);
    return 0;
}

/* Images per conv chunk for a batch of B, and the scratch floats that needs. */
static size_t conv_scratch(const ft_model *m, int B, int *chunk)
{
    size_t per = 0;
    for (int l = 0; l < m->num_layers; l++) {
        const struct layer *L = &m->layers[l];
        struct ft_conv2d_shape s = {1, L->ic, L->ih, L->iw, L->oc, L->k, L->k, 1, L->pad};
        if (L->type == L_CONV && ft_conv2d_scratch_size(&s) > per)
            per = ft_conv2d_scratch_size(&s);
    }
    size_t c = per ? CONV_SCRATCH_FLOATS / per : 0;
    c = c < 1 ? 1 : c > (size_t)B ? (size_t)B : c;
    *chunk = (int)c;
    return per * c;
}

/* Lay out (or, with base NULL, measure) the activation block for B examples; returns floats
 * used. */
static size_t carve(ft_model *m, float *base, int32_t *ibase, size_t B, size_t *ints)
{
    size_t off = 0, ioff = 0, maxw = layer_in(&m->layers[0]);
    int chunk;
#define TAKE(ptr, n)            \
    do {                        \
        if (base)               \
            (ptr) = base + off; \
        off += align_up(n);     \
    } while (0)
    TAKE(m->x, B * layer_in(&m->layers[0]));
    for (int l = 0; l < m->num_layers; l++) {
        struct layer *L = &m->layers[l];
        TAKE(L->out, B * layer_out(L));
        if (stat_size(L, B))
            TAKE(L->stat, stat_size(L, B));
        if (L->type == L_MAXPOOL) {
            if (ibase)
                L->argmax = ibase + ioff;
            ioff += B * layer_out(L);
        }
        maxw = layer_out(L) > maxw ? layer_out(L) : maxw;
    }
    TAKE(m->dbuf[0], B * maxw);
    TAKE(m->dbuf[1], B * maxw);
    size_t scratch = conv_scratch(m, (int)B, &chunk);
    if (scratch)
        TAKE(m->scratch, scratch);
    if (base)
        m->conv_chunk = chunk;
#undef TAKE
    *ints = ioff;
    return off;
}

static enum ft_err grow(ft_model *m, int B)
{
    size_t ints;
    if (B <= m->cap_B)
        return FT_OK;
    size_t n = carve(m, NULL, NULL, (size_t)B, &ints);
    float *acts = aligned_alloc(ALIGN_FLOATS * sizeof(float), n * sizeof(float));
    int32_t *iacts = malloc((ints ? ints : 1) * sizeof *iacts);
    if (!acts || !iacts) {
        free(acts);
        free(iacts);
        return FT_ENOMEM;
    }
    free(m->acts);
    free(m->iacts);
    m->acts = acts;
    m->iacts = iacts;
    m->cap_B = B;
    carve(m, acts, iacts, (size_t)B, &ints);
    return FT_OK;
}

/* ---- forward / backward ---- */

#define P(off) (m->params + (off))
#define G(off) (m->grads + (off))

static void act_forward(const struct layer *L, const float *in, size_t n)
{
    switch (L->act) {
    case ACT_RELU:
        ft_relu_forward(L->out, in, n);
        break;
    case ACT_GELU:
    case ACT_GELU_TANH:
        ft_gelu_forward(L->out, in, n, L->act == ACT_GELU ? FT_GELU_ERF : FT_GELU_TANH);
        break;
    case ACT_TANH:
        ft_tanh_forward(L->out, in, n);
        break;
    case ACT_SIGMOID:
        ft_sigmoid_forward(L->out, in, n);
        break;
    case ACT_NONE:
        FT_ASSERT(0);
    }
}

static void act_backward(const struct layer *L, float *dinp, const float *d, const float *in,
                         size_t n)
{
    switch (L->act) {
    case ACT_RELU:
        ft_relu_backward(dinp, d, in, n);
        break;
    case ACT_GELU:
    case ACT_GELU_TANH:
        ft_gelu_backward(dinp, d, in, n, L->act == ACT_GELU ? FT_GELU_ERF : FT_GELU_TANH);
        break;
    case ACT_TANH:
        ft_tanh_backward(dinp, d, L->out, n);
        break;
    case ACT_SIGMOID:
        ft_sigmoid_backward(dinp, d, L->out, n);
        break;
    case ACT_NONE:
        FT_ASSERT(0);
    }
}

/* Conv over the batch in chunks of conv_chunk images; backward when dout is non-NULL. */
static void conv_run(ft_model *m, const struct layer *L, const float *in, int B, float *dinp,
                     const float *dout)
{
    size_t ni = layer_in(L), no = layer_out(L);
    for (int n0 = 0; n0 < B; n0 += m->conv_chunk) {
        int nb = B - n0 < m->conv_chunk ? B - n0 : m->conv_chunk;
        struct ft_conv2d_shape s = {nb, L->ic, L->ih, L->iw, L->oc, L->k, L->k, 1, L->pad};
        const float *x = in + (size_t)n0 * ni;
        if (!dout) {
            ft_conv2d_forward(L->out + (size_t)n0 * no, m->scratch, x, P(L->w),
                              L->b >= 0 ? P(L->b) : NULL, &s);
            continue;
        }
        ft_conv2d_backward(dinp ? dinp + (size_t)n0 * ni : NULL, G(L->w),
                           L->b >= 0 ? G(L->b) : NULL, m->scratch, dout + (size_t)n0 * no, x,
                           P(L->w), &s);
    }
}

static void layer_forward(ft_model *m, struct layer *L, const float *in, int B, int training)
{
    size_t n = (size_t)B * layer_out(L);
    switch (L->type) {
    case L_LINEAR:
        ft_linear_forward(L->out, in, P(L->w), L->b >= 0 ? P(L->b) : NULL, B, (int)layer_in(L),
                          L->oc);
        break;
    case L_CONV:
        conv_run(m, L, in, B, NULL, NULL);
        break;
    case L_BN:
        ft_batchnorm_forward(L->out, L->stat, L->stat + L->oc, m->buffers + L->rm,
                             m->buffers + L->rv, in, P(L->w), P(L->b), B, L->oc, L->oh * L->ow,
                             training);
        break;
    case L_ACT:
        act_forward(L, in, n);
        break;
    case L_DROPOUT:
        ft_dropout_forward(L->out, L->stat, in, n, L->p, &m->drop_rng, training);
        break;
    case L_MAXPOOL:
        ft_maxpool2d_forward(L->out, L->argmax, in, B, L->ic, L->ih, L->iw, L->k);
        break;
    case L_AVGPOOL:
        ft_avgpool2d_forward(L->out, in, B, L->ic, L->ih, L->iw, L->k);
        break;
    case L_GAP:
        ft_global_avgpool_forward(L->out, in, B, L->ic, L->ih * L->iw);
        break;
    case L_L2:
        ft_l2_normalize_forward(L->out, L->stat, in, B, L->oc);
        break;
    }
}

/* dinp (B, in size) from d (B, out size); parameter gradients accumulate. dinp may be NULL
 * for the first layer (linear or conv). */
static void layer_backward(ft_model *m, const struct layer *L, float *dinp, const float *d,
                           const float *in, int B, int training)
{
    size_t n = (size_t)B * layer_out(L);
    switch (L->type) {
    case L_LINEAR:
        ft_linear_backward(dinp, G(L->w), L->b >= 0 ? G(L->b) : NULL, d, in, P(L->w), B,
                           (int)layer_in(L), L->oc);
        break;
    case L_CONV:
        conv_run(m, L, in, B, dinp, d);
        break;
    case L_BN:
        ft_batchnorm_backward(dinp, G(L->w), G(L->b), d, in, L->stat, L->stat + L->oc, P(L->w), B,
                              L->oc, L->oh * L->ow, training);
        break;
    case L_ACT:
        act_backward(L, dinp, d, in, n);
        break;
    case L_DROPOUT:
        ft_dropout_backward(dinp, d, L->stat, n);
        break;
    case L_MAXPOOL:
        ft_maxpool2d_backward(dinp, d, L->argmax, B, L->ic, L->ih, L->iw, L->k);
        break;
    case L_AVGPOOL:
        ft_avgpool2d_backward(dinp, d, B, L->ic, L->ih, L->iw, L->k);
        break;
    case L_GAP:
        ft_global_avgpool_backward(dinp, d, B, L->ic, L->ih * L->iw);
        break;
    case L_L2:
        ft_l2_normalize_backward(dinp, d, L->out, L->stat, B, L->oc);
        break;
    }
}

float *ft_model_input(ft_model *m, int B)
{
    return B > 0 && grow(m, B) == FT_OK ? m->x : NULL;
}

enum ft_err ft_model_forward(ft_model *m, const float *x, int B, float *out, int training)
{
    /* x (B, input_dim), out (B, output_dim) */
    if (B <= 0)
        return FT_OK;
    if (grow(m, B) != FT_OK)
        return FT_ENOMEM;
    if (x != m->x) /* else the caller filled ft_model_input() */
        memcpy(m->x, x, (size_t)B * ft_model_input_dim(m) * sizeof *x);
    const float *in = m->x;
    for (int l = 0; l < m->num_layers; l++) {
        layer_forward(m, &m->layers[l], in, B, training);
        in = m->layers[l].out;
    }
    memcpy(out, in, (size_t)B * ft_model_output_dim(m) * sizeof *out);
    m->last_B = B;
    m->last_training = training;
    return FT_OK;
}

void ft_model_backward(ft_model *m, const float *dout, int B)
{
    /* dout (B, output_dim) */
    FT_ASSERT(B == m->last_B && B <= m->cap_B);
    const float *d = dout;
    int cur = 0;
    for (int l = m->num_layers - 1; l >= 0; l--) {
        const struct layer *L = &m->layers[l];
        float *dinp = l > 0 ? m->dbuf[cur] : NULL;
        layer_backward(m, L, dinp, d, l > 0 ? m->layers[l - 1].out : m->x, B, m->last_training);
        d = dinp;
        cur ^= 1;
    }
}

/* optim.c — SGD (momentum, Nesterov, weight decay), Adam (L2 weight decay) and AdamW (decoupled
 * weight decay) over one contiguous parameter buffer, plus the run config's optimizer options.
 *
 * Follows torch 1.13's single-tensor code (torch/optim/sgd.py, adam.py) operation by operation,
 * in float with the scalar coefficients computed in double as Python does:
 *   SGD:  d = g + wd p; buf = d (first step) | buf = momentum buf + d;
 *         p += -lr (nesterov ? d + momentum buf : buf)   (p += -lr d without momentum)
 *   Adam: g' = g + wd p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g' g';
 *         p += -(lr / (1-b1^t)) m / (sqrt(v) / sqrt(1-b2^t) + eps)
 *   AdamW (torch/optim/adamw.py): p *= 1 - lr wd; then Adam with g' = g.
 * The optimizer owns its moment buffers (n floats each; SGD keeps one only with momentum).
 * Adam's loop runs sixteen elements at a time with AVX-512, eight with AVX, when the CPU has
 * them (no FMA: the same IEEE operations in the same order, so the same bits as the scalar
 * loop). */
#include "optim.h"
#include "options.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ft_optim {
    struct ft_optim_opts opts;
    size_t n;
    int64_t t;
    float *m; /* SGD momentum buffer or Adam exp_avg (NULL for plain SGD) */
    float *v; /* Adam exp_avg_sq */
};

void ft_optim_opts_default(struct ft_optim_opts *opts, enum ft_optim_kind kind)
{
    opts->kind = kind;
    opts->beta1 = 0.9;
    opts->beta2 = 0.999;
    opts->eps = 1e-8;
    opts->weight_decay = kind == FT_OPTIM_ADAMW ? 0.01 : 0.0;
    opts->momentum = 0.0;
    opts->nesterov = 0;
}

static enum ft_err check_opts(const struct ft_optim_opts *o, struct ft_error *err)
{
    if (o->kind != FT_OPTIM_SGD && o->kind != FT_OPTIM_ADAM && o->kind != FT_OPTIM_ADAMW)
        return ft_error_set(err, FT_EINVAL, "optimizer", "unknown optimizer");
    if (!(o->weight_decay >= 0.0))
        return ft_error_set(err, FT_EINVAL, "weight_decay", "weight_decay must be >= 0");
    if (o->kind == FT_OPTIM_SGD) {
        if (!(o->momentum >= 0.0))
            return ft_error_set(err, FT_EINVAL, "momentum", "momentum must be >= 0");
        if (o->nesterov && !(o->momentum > 0.0))
            return ft_error_set(err, FT_EINVAL, "nesterov", "nesterov requires momentum > 0");
        return FT_OK;
    }
    if (!(o->beta1 >= 0.0 && o->beta1 < 1.0) || !(o->beta2 >= 0.0 && o->beta2 < 1.0))
        return ft_error_set(err, FT_EINVAL, "betas", "betas must be in [0, 1)");
    if (!(o->eps >= 0.0))
        return ft_error_set(err, FT_EINVAL, "eps", "eps must be >= 0");
    return FT_OK;
}

enum ft_err ft_optim_new(const struct ft_optim_opts *opts, size_t n, ft_optim **out,
                         struct ft_error *err)
{
    *out = NULL;
    enum ft_err rc = check_opts(opts, err);
    if (rc != FT_OK)
        return rc;
    ft_optim *o = calloc(1, sizeof *o);
    if (!o)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the optimizer");
    o->opts = *opts;
    o->n = n;
    int need_v = opts->kind != FT_OPTIM_SGD;
    int need_m = need_v || opts->momentum > 0.0;
    o->m = need_m ? calloc(n ? n : 1, sizeof *o->m) : NULL;
    o->v = need_v ? calloc(n ? n : 1, sizeof *o->v) : NULL;
    if ((need_m && !o->m) || (need_v && !o->v)) {
        ft_optim_free(o);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating optimizer state");
    }
    *out = o;
    return FT_OK;
}

/* Returns 1 when every g was finite (see ft_optim_step). */
static int sgd_step(ft_optim *o, float *p, const float *g, double lr)
{
    const float wd = (float)o->opts.weight_decay;
    const float mom = (float)o->opts.momentum;
    const float neg_lr = (float)-lr;
    const int first = o->t == 1;
    float fin = 0.0f;
    for (size_t i = 0; i < o->n; i++) {
        fin += g[i] - g[i];
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        if (o->m) {
            o->m[i] = first ? d : o->m[i] * mom + d;
            d = o->opts.nesterov ? d + mom * o->m[i] : o->m[i];
        }
        p[i] += neg_lr * d;
    }
    return !isnan(fin);
}

/* Adam's constants for one step (torch 1.13 _single_tensor_adam / _single_tensor_adamw). */
struct adam_coef {
    float wd;    /* L2 decay added to the gradient (Adam); 0 for AdamW */
    float decay; /* AdamW's p *= 1 - lr wd */
    float b1, one_minus_b1, b2, one_minus_b2;
    float neg_step; /* -(lr / (1 - b1^t)) */
    float bc2_sqrt; /* sqrt(1 - b2^t) */
    float eps;
};

/* Elements [i, n) one at a time; returns 1 when all their g were finite. */
static int adam_scalar(float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, size_t i, size_t n, const struct adam_coef *c,
                       int decoupled)
{
    float fin = 0.0f;
    for (; i < n; i++) {
        fin += g[i] - g[i];
        if (decoupled)
            p[i] *= c->decay;
        float gi = c->wd != 0.0f ? g[i] + c->wd * p[i] : g[i];
        m[i] = m[i] * c->b1 + c->one_minus_b1 * gi;
        v[i] = v[i] * c->b2 + c->one_minus_b2 * (gi * gi);
        float denom = sqrtf(v[i]) / c->bc2_sqrt + c->eps;
        p[i] += c->neg_step * (m[i] / denom);
    }
    return !isnan(fin);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The first n - n % 8 elements, 8 at a time (AVX, no FMA): the scalar loop's IEEE operations in
 * the same order, so the results are bitwise the same; returns how many were done. */
__attribute__((target("avx"))) static size_t adam_avx(float *p, const float *g, float *m, float *v,
                                                      size_t n, const struct adam_coef *c,
                                                      int decoupled, int *finite)
{
    const __m256 wd = _mm256_set1_ps(c->wd), decay = _mm256_set1_ps(c->decay);
    const __m256 b1 = _mm256_set1_ps(c->b1), omb1 = _mm256_set1_ps(c->one_minus_b1);
    const __m256 b2 = _mm256_set1_ps(c->b2), omb2 = _mm256_set1_ps(c->one_minus_b2);
    const __m256 step = _mm256_set1_ps(c->neg_step), bc2 = _mm256_set1_ps(c->bc2_sqrt);
    const __m256 eps = _mm256_set1_ps(c->eps);
    __m256 fin = _mm256_setzero_ps(); /* sums g - g: 0, or NaN after an infinity or NaN */
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 pi = _mm256_loadu_ps(p + i), gi = _mm256_loadu_ps(g + i);
        fin = _mm256_add_ps(fin, _mm256_sub_ps(gi, gi));
        if (decoupled)
            pi = _mm256_mul_ps(pi, decay);
        if (c->wd != 0.0f)
            gi = _mm256_add_ps(gi, _mm256_mul_ps(wd, pi));
        __m256 mi =
            _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(m + i), b1), _mm256_mul_ps(omb1, gi));
        __m256 vi = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + i), b2),
                                  _mm256_mul_ps(omb2, _mm256_mul_ps(gi, gi)));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
        pi = _mm256_add_ps(pi, _mm256_mul_ps(step, _mm256_div_ps(mi, denom)));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, pi);
    }
    *finite = _mm256_movemask_ps(_mm256_cmp_ps(fin, fin, _CMP_UNORD_Q)) == 0;
    return i;
}

#if defined(__STRICT_ANSI__) || defined(__clang__)
/* As adam_avx, 16 at a time (AVX-512F). AVX-512F has FMA instructions: the mul + add pairs stay
 * two roundings because ISO C mode (-std=c11) turns GCC's contraction off and clang does not
 * contract across intrinsics; other modes keep to adam_avx. */
#define HAVE_ADAM_AVX512 1
__attribute__((target("avx512f"))) static size_t adam_avx512(float *p, const float *g, float *m,
                                                             float *v, size_t n,
                                                             const struct adam_coef *c,
                                                             int decoupled, int *finite)
{
    const __m512 wd = _mm512_set1_ps(c->wd), decay = _mm512_set1_ps(c->decay);
    const __m512 b1 = _mm512_set1_ps(c->b1), omb1 = _mm512_set1_ps(c->one_minus_b1);
    const __m512 b2 = _mm512_set1_ps(c->b2), omb2 = _mm512_set1_ps(c->one_minus_b2);
    const __m512 step = _mm512_set1_ps(c->neg_step), bc2 = _mm512_set1_ps(c->bc2_sqrt);
    const __m512 eps = _mm512_set1_ps(c->eps);
    __m512 fin = _mm512_setzero_ps(); /* sums g - g: 0, or NaN after an infinity or NaN */
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 pi = _mm512_loadu_ps(p + i), gi = _mm512_loadu_ps(g + i);
        fin = _mm512_add_ps(fin, _mm512_sub_ps(gi, gi));
        if (decoupled)
            pi = _mm512_mul_ps(pi, decay);
        if (c->wd != 0.0f)
            gi = _mm512_add_ps(gi, _mm512_mul_ps(wd, pi));
        __m512 mi =
            _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(m + i), b1), _mm512_mul_ps(omb1, gi));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), b2),
                                  _mm512_mul_ps(omb2, _mm512_mul_ps(gi, gi)));
        __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), bc2), eps);
        pi = _mm512_add_ps(pi, _mm512_mul_ps(step, _mm512_div_ps(mi, denom)));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(p + i, pi);
    }
    *finite = _mm512_cmp_ps_mask(fin, fin, _CMP_UNORD_Q) == 0;
    return i;
}
#endif

static size_t adam_simd(float *p, const float *g, float *m, float *v, size_t n,
                        const struct adam_coef *c, int decoupled, int *finite)
{
#ifdef HAVE_ADAM_AVX512
    if (__builtin_cpu_supports("avx512f"))
        return adam_avx512(p, g, m, v, n, c, decoupled, finite);
#endif
    *finite = 1;
    return __builtin_cpu_supports("avx") ? adam_avx(p, g, m, v, n, c, decoupled, finite) : 0;
}
#else
static size_t adam_simd(float *p, const float *g, float *m, float *v, size_t n,
                        const struct adam_coef *c, int decoupled, int *finite)
{
    (void)p, (void)g, (void)m, (void)v, (void)n, (void)c, (void)decoupled;
    *finite = 1;
    return 0;
}
#endif

/* Adam, or AdamW when decoupled: the decay multiplies p before the moments and the gradient is
 * left alone (torch 1.13 _single_tensor_adam / _single_tensor_adamw). */
static int adam_step(ft_optim *o, float *p, const float *g, double lr, int decoupled)
{
    const struct ft_optim_opts *op = &o->opts;
    const double bc1 = 1.0 - pow(op->beta1, (double)o->t);
    const double bc2 = 1.0 - pow(op->beta2, (double)o->t);
    const struct adam_coef c = {
        .wd = decoupled ? 0.0f : (float)op->weight_decay,
        .decay = (float)(1.0 - lr * op->weight_decay),
        .b1 = (float)op->beta1,
        .one_minus_b1 = (float)(1.0 - op->beta1),
        .b2 = (float)op->beta2,
        .one_minus_b2 = (float)(1.0 - op->beta2),
        .neg_step = (float)(-(lr / bc1)),
        .bc2_sqrt = (float)sqrt(bc2),
        .eps = (float)op->eps,
    };
    int finite;
    size_t done = adam_simd(p, g, o->m, o->v, o->n, &c, decoupled, &finite);
    return adam_scalar(p, g, o->m, o->v, done, o->n, &c, decoupled) && finite;
}

int ft_optim_step(ft_optim *o, float *params, const float *grads, double lr)
{
    o->t++;
    if (o->opts.kind != FT_OPTIM_SGD)
        return adam_step(o, params, grads, lr, o->opts.kind == FT_OPTIM_ADAMW);
    return sgd_step(o, params, grads, lr);
}

int64_t ft_optim_steps(const ft_optim *o)
{
    return o->t;
}

void ft_optim_set_steps(ft_optim *o, int64_t steps)
{
    FT_ASSERT(steps >= 0);
    o->t = steps;
}

void ft_optim_free(ft_optim *o)
{
    if (!o)
        return;
    free(o->m);
    free(o->v);
    free(o);
}

void ft_optim_state(ft_optim *o, float **m, float **v)
{
    if (m)
        *m = o->m;
    if (v)
        *v = o->v;
}

/* ---- run config: optimizer / optimizer_options ------------------------------------------ */

#define OPT_PATH "config.hyper_parameters.optimizer_options"

static const struct {
    const char *name;
    enum ft_optim_kind kind;
} optim_names[] = {{"Adam", FT_OPTIM_ADAM}, {"AdamW", FT_OPTIM_ADAMW}, {"SGD", FT_OPTIM_SGD}};

static const char *const adam_keys[] = {"betas", "eps", "weight_decay", NULL};
static const char *const sgd_keys[] = {"momentum", "nesterov", "weight_decay", NULL};

static int kind_of(const char *name, enum ft_optim_kind *kind)
{
    for (size_t i = 0; name && i < sizeof optim_names / sizeof optim_names[0]; i++) {
        if (strcmp(name, optim_names[i].name) == 0) {
            *kind = optim_names[i].kind;
            return 1;
        }
    }
    return 0;
}

/* Reject a key of options not in keys (NULL-terminated); param OPT_PATH.<key>. */
static enum ft_err check_known(json_t *options, const char *name, const char *const *keys,
                               struct ft_error *err)
{
    const char *key = ft_options_unknown_key(options, keys);
    char p[128];
    if (!key)
        return FT_OK;
    snprintf(p, sizeof p, "%s.%s", OPT_PATH, key);
    return ft_error_set(
        err, FT_EINVAL, p, "%s %s '%s' in %s (%s takes %s)", name,
        strcmp(key, "amsgrad") == 0 || strcmp(key, "dampening") == 0 ? "does not support"
                                                                     : "has no option",
        key, OPT_PATH, name,
        keys == sgd_keys ? "momentum, nesterov, weight_decay" : "betas, eps, weight_decay");
}

/* ft_error_set with param OPT_PATH.key and message "OPT_PATH.key must be <what>". */
static enum ft_err bad_option(const char *key, const char *what, struct ft_error *err)
{
    char p[128];
    snprintf(p, sizeof p, "%s.%s", OPT_PATH, key);
    return ft_error_set(err, FT_EINVAL, p, "%s must be %s", p, what);
}

/* options[key] as a finite number in [lo, hi) (hi = INFINITY for no bound); absent or null
 * keeps *dst. */
static enum ft_err get_range(json_t *options, const char *key, double lo, double hi,
                             const char *what, double *dst, struct ft_error *err)
{
    json_t *v = json_object_get(options, key);
    if (!v || json_is_null(v))
        return FT_OK;
    double x = json_number_value(v);
    if (!json_is_number(v) || !isfinite(x) || x < lo || x >= hi)
        return bad_option(key, what, err);
    *dst = x;
    return FT_OK;
}

static enum ft_err get_betas(json_t *options, struct ft_optim_opts *o, struct ft_error *err)
{
    json_t *b = json_object_get(options, "betas");
    if (!b || json_is_null(b))
        return FT_OK;
    json_t *b1 = json_array_get(b, 0), *b2 = json_array_get(b, 1);
    double x1 = json_number_value(b1), x2 = json_number_value(b2);
    if (json_array_size(b) != 2 || !json_is_number(b1) || !json_is_number(b2) || !(x1 >= 0.0) ||
        !(x1 < 1.0) || !(x2 >= 0.0) || !(x2 < 1.0))
        return bad_option("betas", "[beta1, beta2], each a number in [0, 1)", err);
    o->beta1 = x1;
    o->beta2 = x2;
    return FT_OK;
}

static enum ft_err get_sgd(json_t *options, struct ft_optim_opts *o, struct ft_error *err)
{
    enum ft_err rc =
        get_range(options, "momentum", 0.0, 1.0, "a number in [0, 1)", &o->momentum, err);
    if (rc != FT_OK)
        return rc;
    json_t *nesterov = json_object_get(options, "nesterov");
    if (nesterov && !json_is_null(nesterov)) {
        if (!json_is_boolean(nesterov))
            return bad_option("nesterov", "true or false", err);
        o->nesterov = json_is_true(nesterov);
    }
    if (o->nesterov && !(o->momentum > 0.0))
        return ft_error_set(err, FT_EINVAL, OPT_PATH ".nesterov",
                            "nesterov needs momentum > 0 (set optimizer_options.momentum)");
    return FT_OK;
}

#define TRY(x)                \
    do {                      \
        enum ft_err e_ = (x); \
        if (e_ != FT_OK)      \
            return e_;        \
    } while (0)

/* Defaults for name, then options over them, each checked. */
static enum ft_err parse_options(const char *name, json_t *options, struct ft_optim_opts *o,
                                 struct ft_error *err)
{
    enum ft_optim_kind kind;
    if (!kind_of(name, &kind))
        return ft_error_set(err, FT_EINVAL, "config.hyper_parameters.optimizer",
                            "unknown optimizer '%s' (known: Adam, AdamW, SGD)", name ? name : "");
    ft_optim_opts_default(o, kind);
    if (!options || json_is_null(options))
        return FT_OK;
    if (!json_is_object(options))
        return ft_error_set(err, FT_EINVAL, OPT_PATH, "%s must be an object", OPT_PATH);
    TRY(check_known(options, name, kind == FT_OPTIM_SGD ? sgd_keys : adam_keys, err));
    TRY(get_range(options, "weight_decay", 0.0, INFINITY, "a number >= 0", &o->weight_decay, err));
    if (kind == FT_OPTIM_SGD)
        return get_sgd(options, o, err);
    TRY(get_range(options, "eps", 0.0, INFINITY, "a number >= 0", &o->eps, err));
    return get_betas(options, o, err);
}

enum ft_err ft_optim_check(const char *name, json_t *options, json_t **normalized,
                           struct ft_error *err)
{
    struct ft_optim_opts o;
    if (normalized)
        *normalized = NULL;
    enum ft_err rc = parse_options(name, options, &o, err);
    if (rc != FT_OK || !normalized)
        return rc;
    if (o.kind == FT_OPTIM_SGD)
        *normalized = json_pack("{s:f, s:b, s:f}", "momentum", o.momentum, "nesterov", o.nesterov,
                                "weight_decay", o.weight_decay);
    else
        *normalized = json_pack("{s:[f, f], s:f, s:f}", "betas", o.beta1, o.beta2, "eps", o.eps,
                                "weight_decay", o.weight_decay);
    if (!*normalized)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory normalising optimizer_options");
    return FT_OK;
}

enum ft_err ft_optim_opts_from_json(const char *name, json_t *options, struct ft_optim_opts *out)
{
    return parse_options(name, options, out, NULL);
}
